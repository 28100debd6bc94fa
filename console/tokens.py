"""API tokens and the audit trail of the duty-officer API (``DATA_DIR/tokens.sqlite``).

This module owns who may use the API and the record of what they did:

- ``tokens``: one row per token, bound to a tier and an admin unit (GB/T 2260), with a name,
  when it was created and when it was revoked. Only the SHA-256 of the secret is stored: a
  copy of the file (a backup, a support bundle) gives nobody a working token. The secret is
  shown once, by ``geowarn token create``.
- the scope rule (``Token.covers``): a county token covers its county, a city token the
  counties whose code starts with its first four digits, a province token its first two,
  the national token everything — the same walk as ``config.roster.chain_of``, read upwards.
- ``audit``: every action taken through the API and every refused attempt (no token, a
  revoked or unknown one, another jurisdiction's), with who (token name), when, what, from
  where (client address) and the outcome. Rows are only ever appended; a store opened with
  ``keep_days`` / ``keep_mb`` (the daemon's API: ``audit_keep_days``, ``audit_keep_mb``) prunes
  the oldest — older than the keep days, or while the file's used pages exceed the cap — in a
  bounded pass when it opens and at most every ``AUDIT_PRUNE_EVERY_S`` as it writes.

The secrets are 256-bit random strings, so a plain (unsalted, fast) hash is enough: there is
nothing to brute-force, unlike a password. Lookups compare hashes, never secrets.

Errors: ``TokenError`` (and its subclass ``UnknownToken``) with a message an operator can act
on; the CLI and the API convert them at their boundary.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from geowarn.config.roster import NATIONAL, TIERS, Tier, tier_of
from geowarn.core.logfields import kv
from geowarn.core.sqlite import Schema, open_db

log = logging.getLogger(__name__)

__all__ = ["AuditEntry", "TOKENS_FILE", "TOKENS_SCHEMA", "Token", "TokenError", "TokenStore", "UnknownToken", "covers", "hash_secret"]

#: The tokens' file in the data directory (the daemon's API and ``geowarn token`` share it).
TOKENS_FILE = "tokens.sqlite"

#: Every secret starts with this, so a leaked one is recognisable in logs and by scanners.
SECRET_PREFIX = "gwt_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id      INTEGER PRIMARY KEY,
    name    TEXT NOT NULL,
    hash    TEXT NOT NULL UNIQUE,      -- SHA-256 hex of the secret; the secret is never stored
    tier    TEXT NOT NULL CHECK (tier IN ('county', 'city', 'province', 'national')),
    admin   TEXT NOT NULL,
    created REAL NOT NULL,
    revoked REAL
);
-- A name identifies one live token (revoke by name); a revoked token's name may be reused.
CREATE UNIQUE INDEX IF NOT EXISTS tokens_live_name ON tokens (name) WHERE revoked IS NULL;
CREATE TABLE IF NOT EXISTS audit (
    id       INTEGER PRIMARY KEY,
    t        REAL NOT NULL,
    who      TEXT NOT NULL,           -- the token's name, or '-' when none was valid
    token_id INTEGER,
    action   TEXT NOT NULL,           -- e.g. 'POST /api/warnings/{id}/ack'
    target   TEXT NOT NULL,           -- warning id, site, task id, path
    client   TEXT NOT NULL,           -- client address as the server saw it
    outcome  TEXT NOT NULL,           -- ok | refused | failed | unauthorised | forbidden
    detail   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_t ON audit (t);
"""
#: Migration 1 is the schema from before versions were kept (idempotent).
TOKENS_SCHEMA = Schema("tokens", (_SCHEMA,))

#: Audit retention: a pass runs when the store opens and then at most this often, on a write;
#: it deletes at most AUDIT_PRUNE_TRANSACTIONS × AUDIT_PRUNE_ROWS rows, one short transaction
#: (and one hold of the store's lock) at a time, so a request thread is delayed a few ms.
AUDIT_PRUNE_EVERY_S = 60.0
AUDIT_PRUNE_ROWS = 500
AUDIT_PRUNE_TRANSACTIONS = 10

Outcome = Literal["ok", "refused", "failed", "unauthorised", "forbidden"]
#: Outcomes anyone can cause without a right (no valid token; an unsigned or forged request).
NOBODYS_OUTCOMES = ("unauthorised", "refused")


class TokenError(ValueError):
    """A token cannot be created, found or revoked; the message says why."""


class UnknownToken(TokenError):
    pass


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def covers(tier: Tier, admin: str, county: str) -> bool:
    """Whether a unit (tier, admin code) is responsible for a county, by GB/T 2260 prefixes."""
    if tier == "national":
        return True
    if tier == "province":
        return county[:2] == admin[:2]
    if tier == "city":
        return county[:4] == admin[:4]
    return county == admin


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    name: str
    tier: Tier
    admin: str
    created: float
    revoked: float | None = None

    def covers(self, county: str) -> bool:
        return covers(self.tier, self.admin, county)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "tier": self.tier, "admin": self.admin, "created": self.created, "revoked": self.revoked}


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    t: float
    who: str
    token_id: int | None
    action: str
    target: str
    client: str
    outcome: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "t": self.t, "who": self.who, "token_id": self.token_id, "action": self.action,
            "target": self.target, "client": self.client, "outcome": self.outcome, "detail": self.detail,
        }


def check_unit(tier: str, admin: str) -> Tier:
    """The tier, after checking that the admin code is of that tier; ``TokenError`` if not."""
    if tier not in TIERS:
        raise TokenError(f"tier {tier!r} must be one of {', '.join(TIERS)}")
    if not re.fullmatch(r"[0-9]{6}", admin):
        raise TokenError(f"admin {admin!r} must be a 6-digit GB/T 2260 code (national: {NATIONAL})")
    shape = tier_of(admin)
    if shape != tier:
        raise TokenError(f"admin {admin} is a {shape} code, not a {tier} one (county: 6 digits, city: xxxx00, province: xx0000, national: {NATIONAL})")
    return shape


_TOKEN_COLS = "id, name, tier, admin, created, revoked"


def _token(row: tuple[Any, ...]) -> Token:
    return Token(int(row[0]), str(row[1]), row[2], str(row[3]), float(row[4]), None if row[5] is None else float(row[5]))


class TokenStore:
    """The token table and the audit trail. Thread-safe (one connection behind a lock): the
    API's request threads share it."""

    def __init__(self, path: str | os.PathLike[str], *, keep_days: float | None = None, keep_mb: float | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """``keep_days`` / ``keep_mb``: the audit's retention (None: keep). Only the process
        that owns the file's writing for the daemon (the API) passes them; ``geowarn token``
        and the detection worker's refusals just append."""
        self.path = os.fspath(path)
        # An audit row must survive a power cut as surely as the action it records: FULL.
        self._db = open_db(self.path, TOKENS_SCHEMA, sync="full")
        self._lock = threading.Lock()
        self.keep_s = None if keep_days is None else keep_days * 86400.0
        self.keep_bytes = None if keep_mb is None else int(keep_mb * 1024 * 1024)
        self._monotonic = monotonic
        self._next_prune = monotonic() + AUDIT_PRUNE_EVERY_S
        if self.keep_s is not None or self.keep_bytes is not None:
            self.prune_audit(time.time())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "TokenStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tokens ------------------------------------------------------------------------------

    def create(self, tier: str, admin: str, name: str, now: float) -> tuple[Token, str]:
        """A new token and its secret (shown once; only its hash is kept)."""
        name = name.strip()
        if not name:
            raise TokenError("a token needs a name (who or what uses it, e.g. 'zigui-duty')")
        if name.isdigit():
            raise TokenError(f"name {name!r} would be mistaken for a token id; use letters too")
        checked = check_unit(tier, admin)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            try:
                cur = self._db.execute(
                    "INSERT INTO tokens (name, hash, tier, admin, created) VALUES (?, ?, ?, ?, ?)",
                    (name, hash_secret(secret), checked, admin, now),
                )
            except sqlite3.IntegrityError:
                raise TokenError(f"a live token named {name!r} exists already; revoke it first or choose another name") from None
        return Token(int(cur.lastrowid or 0), name, checked, admin, now), secret

    def verify(self, secret: str) -> Token | None:
        """The live token with this secret (None: unknown or revoked)."""
        if not secret:
            return None
        with self._lock:
            row = self._db.execute(f"SELECT {_TOKEN_COLS} FROM tokens WHERE hash = ? AND revoked IS NULL", (hash_secret(secret),)).fetchone()
        return None if row is None else _token(row)

    def is_live(self, token_id: int) -> bool:
        """Still valid (long-lived streams re-check their token with this)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM tokens WHERE id = ? AND revoked IS NULL", (token_id,)).fetchone() is not None

    def list_tokens(self, include_revoked: bool = True) -> list[Token]:
        where = "" if include_revoked else "WHERE revoked IS NULL"
        with self._lock:
            rows = self._db.execute(f"SELECT {_TOKEN_COLS} FROM tokens {where} ORDER BY id").fetchall()
        return [_token(r) for r in rows]

    def revoke(self, name_or_id: str, now: float) -> Token:
        """Revoke the live token with this name (or id); ``UnknownToken`` when there is none."""
        with self._lock:
            if name_or_id.isdigit():
                row = self._db.execute(f"SELECT {_TOKEN_COLS} FROM tokens WHERE id = ? AND revoked IS NULL", (int(name_or_id),)).fetchone()
            else:
                row = self._db.execute(f"SELECT {_TOKEN_COLS} FROM tokens WHERE name = ? AND revoked IS NULL", (name_or_id,)).fetchone()
            if row is None:
                raise UnknownToken(f"no live token with name or id {name_or_id!r} (see geowarn token list)")
            self._db.execute("UPDATE tokens SET revoked = ? WHERE id = ?", (now, row[0]))
        t = _token(row)
        return Token(t.id, t.name, t.tier, t.admin, t.created, now)

    # -- audit -------------------------------------------------------------------------------

    def audit(self, t: float, token: Token | None, action: str, target: str, client: str, outcome: Outcome, detail: str = "") -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO audit (t, who, token_id, action, target, client, outcome, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (t, token.name if token else "-", token.id if token else None, action, target, client, outcome, detail),
            )
            due = (self.keep_s is not None or self.keep_bytes is not None) and self._monotonic() >= self._next_prune
            if due:
                self._next_prune = self._monotonic() + AUDIT_PRUNE_EVERY_S
        if due:
            try:
                self.prune_audit(t)
            except sqlite3.Error:  # the row is written; retention tries again next time
                log.exception("could not prune the audit trail")

    def used_bytes(self) -> int:
        """The bytes of the file's pages in use (not on the free list): the audit is nearly all
        of this file, and SQLite keeps both counts in the header, so this reads no table."""
        with self._lock:
            return self._used_bytes()

    def _used_bytes(self) -> int:
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0]) - int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return pages * int(self._db.execute("PRAGMA page_size").fetchone()[0])

    def _delete_oldest(self, before: float | None, outcomes: tuple[str, ...] | None = None) -> int:
        """One transaction: up to AUDIT_PRUNE_ROWS of the oldest rows (older than ``before``,
        when given; of those ``outcomes``, when given); never the newest row, whose id SQLite
        would hand out again."""
        only = f" AND outcome IN ({', '.join('?' * len(outcomes))})" if outcomes else ""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    f"DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE id < (SELECT max(id) FROM audit) AND t < ?{only} ORDER BY id LIMIT ?)",
                    (float("inf") if before is None else before, *(outcomes or ()), AUDIT_PRUNE_ROWS),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return int(cur.rowcount)

    def prune_audit(self, now: float) -> tuple[int, int]:
        """One bounded retention pass: rows older than ``keep_days``, then the oldest while
        the file's used pages exceed ``keep_mb``. Returns the rows deleted (by age, by size);
        what is left waits for the next pass."""
        by_age = by_size = 0
        budget = AUDIT_PRUNE_TRANSACTIONS
        if self.keep_s is not None:
            while budget > 0:
                budget -= 1
                n = self._delete_oldest(now - self.keep_s)
                by_age += n
                if n < AUDIT_PRUNE_ROWS:
                    break
        if self.keep_bytes is not None:
            # Anyone can make refusals (a request without a valid token or signature): over the
            # cap they go first, so a flood of them cannot push the officers' actions out.
            for outcomes in (NOBODYS_OUTCOMES, None):
                while budget > 0 and self.used_bytes() > self.keep_bytes:
                    budget -= 1
                    n = self._delete_oldest(None, outcomes)
                    by_size += n
                    if n == 0:
                        break
        if by_age or by_size:
            log.info("pruned the audit trail", extra=kv(by_age=by_age, by_size=by_size, used_mb=round(self.used_bytes() / 1048576, 1)))
        return by_age, by_size

    def audit_entries(self, limit: int = 1000, since: float | None = None) -> list[AuditEntry]:
        """The latest entries, oldest first."""
        args: tuple[Any, ...] = (since if since is not None else float("-inf"), limit)
        with self._lock:
            rows = self._db.execute(
                "SELECT id, t, who, token_id, action, target, client, outcome, detail FROM audit WHERE t >= ? ORDER BY id DESC LIMIT ?", args
            ).fetchall()
        return [AuditEntry(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8]) for r in reversed(rows)]
