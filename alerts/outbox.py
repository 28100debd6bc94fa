"""The notification outbox: an SQLite file that makes delivery at-least-once and restart-safe.

This module owns the ``outbox`` table (one row per ``Outgoing`` message, keyed by its stable
id, with its delivery state pending → sent | dead, attempts, next try and last error) and a
small ``state`` key/value table beside it, so a caller can commit its own progress (alert
states, the dispatcher's alarm episodes) in the same transaction as the messages that progress
produced. Either both are on disk or neither is: a crash in between cannot lose a
notification or send it twice from a re-run.

``enqueue`` is idempotent (``INSERT OR IGNORE`` on the id): re-enqueuing the same messages
after a restart adds nothing. Rows that were sent stay (that is what makes the id a
deduplication key); ``prune`` removes old ones once nobody can re-enqueue them.

The file is its own (WAL, ``synchronous=FULL``: a notification accepted here survives a power
cut). One connection is shared by the caller's thread and the dispatcher's, behind a lock.
Times are the caller's clock; nothing here reads one.

The outbox's SQL lives here and nowhere else: other stages (the console, metrics) read the file
through ``OutboxReader`` — read-only, one short-lived connection per call.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from geowarn.alerts.notifiers import Outgoing
from geowarn.core.sqlite import ChangeWatch, Schema, open_db, reading

__all__ = ["ANSWER_INDEX", "ANSWER_PREFIX", "DeliveryState", "OUTBOX_FILE", "OUTBOX_SCHEMA", "Outbox", "OutboxItem", "OutboxReader"]

DeliveryState = Literal["pending", "sent", "dead"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    notifier TEXT NOT NULL,
    created REAL NOT NULL,
    payload TEXT NOT NULL,          -- Outgoing.to_json(), JSON
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    last_error TEXT,
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_try);
CREATE INDEX IF NOT EXISTS outbox_notifier ON outbox (notifier, state);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL             -- JSON
);
"""

#: State keys: a command's msgid -> its id; a command's id -> the device's answer.
ANSWER_INDEX = "cmd.msgid/"
ANSWER_PREFIX = "cmd.answer/"
#: The outbox's file in the data directory.
OUTBOX_FILE = "outbox.sqlite"
#: Migration 1 is the schema from before versions were kept (idempotent).
OUTBOX_SCHEMA = Schema("outbox", (_SCHEMA,))


@dataclass(frozen=True)
class OutboxItem:
    """A message and where its delivery stands."""

    msg: Outgoing
    state: DeliveryState
    attempts: int
    created: float
    next_try: float
    last_error: str | None
    sent_at: float | None

    @property
    def id(self) -> str:
        return self.msg.id

    @property
    def notifier(self) -> str:
        return self.msg.notifier


_COLUMNS = "payload, state, attempts, created, next_try, last_error, sent_at"
_STATES = "SELECT key, value FROM state WHERE key >= ? AND key < ? ORDER BY key"


def _item(row: tuple[Any, ...]) -> OutboxItem:
    payload, state, attempts, created, next_try, last_error, sent_at = row
    return OutboxItem(Outgoing.from_json(json.loads(payload)), state, int(attempts), float(created), float(next_try), last_error, sent_at)


class Outbox:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        # Autocommit mode: transactions are begun explicitly (BEGIN IMMEDIATE), so a caller's
        # own writes and the enqueue land in one commit.
        self._db = open_db(self.path, OUTBOX_SCHEMA, sync="full")
        self._lock = threading.RLock()
        self._depth = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One commit for everything inside, including ``enqueue``/``set_state`` calls and the
        caller's own statements on the yielded connection. Nested use joins the outer one;
        an exception rolls the whole of it back."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._db
            except BaseException:
                self._depth = 0
                self._db.execute("ROLLBACK")
                raise
            self._depth = 0
            self._db.execute("COMMIT")

    # -- the caller's state ---------------------------------------------------------------

    def get_state(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def states(self, prefix: str) -> list[tuple[str, Any]]:
        """Every (key, value) of the state table whose key starts with ``prefix``."""
        with self._lock:
            rows = self._db.execute(_STATES, (prefix, prefix + "\uffff")).fetchall()
        return [(k, json.loads(v)) for k, v in rows]

    def first_with_prefix(self, prefix: str) -> "OutboxItem | None":
        """The first message (by id) whose id starts with ``prefix``."""
        with self._lock:
            row = self._db.execute("SELECT id FROM outbox WHERE id >= ? AND id < ? ORDER BY id LIMIT 1", (prefix, prefix + "\uffff")).fetchone()
        return None if row is None else self.get(row[0])

    def set_state(self, key: str, value: Any) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value, ensure_ascii=False)),
            )

    # -- devices' answers to commands ------------------------------------------------------

    def expect_answer(self, msgid: str, command_id: str, cmd: str = "setsensortime") -> None:
        """Remember that an answer with ``msgid`` to ``cmd`` answers the command ``command_id``
        (a device of the national convention echoes the msgid; ingest/commands_cn.py)."""
        self.set_state(ANSWER_INDEX + msgid, {"id": command_id, "cmd": cmd})

    def record_answer(self, msgid: str | None, cmd: str, result: str, now: float) -> str | None:
        """Record a device's ``result=succ|fail`` against the command it answers; the command's
        id, or None when no command of ours has that msgid (nothing is recorded then). A repeated
        answer replaces the earlier one (the device retains its last answer on ``$dr``)."""
        if not msgid:
            return None
        with self.transaction():
            expected = self.get_state(ANSWER_INDEX + msgid)
            if isinstance(expected, dict):
                # The answer of another command that happens to echo our msgid (a reboot's, a
                # hostile one) is not this command's.
                if expected.get("cmd") != cmd:
                    return None
                command_id = expected.get("id")
            else:
                command_id = expected  # written before the command name was kept
            if not isinstance(command_id, str):
                return None
            self.set_state(ANSWER_PREFIX + command_id, {"cmd": cmd, "result": result, "t": now, "msgid": msgid})
        return command_id

    # -- messages -------------------------------------------------------------------------

    def enqueue(self, msgs: Iterable[Outgoing], now: float | None = None, *, due: float | None = None) -> int:
        """Add messages not seen before; return how many were new. ``now`` (default: each
        message's own ``t``) is when they were created and, unless ``due`` says otherwise,
        when they become due."""
        rows = []
        for m in msgs:
            created = m.t if now is None else now
            rows.append((m.id, m.notifier, created, json.dumps(m.to_json(), ensure_ascii=False), created if due is None else due))
        with self.transaction():
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO outbox (id, notifier, created, payload, next_try) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            return self._db.total_changes - before

    def get(self, id: str) -> OutboxItem | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE id = ?", (id,)).fetchone()
        return None if row is None else _item(row)

    def due(self, now: float, limit: int = 100, skip: Collection[str] = ()) -> list[OutboxItem]:
        """Pending messages whose next try is at or before ``now``: at most ``limit`` per
        notifier (so one notifier's backlog cannot starve the others), oldest first, and none
        for the notifiers in ``skip`` (busy or backing off)."""
        skip_list = list(skip)
        marks = ",".join("?" * len(skip_list))
        not_in = f"AND notifier NOT IN ({marks})" if skip_list else ""
        sql = f"""
            SELECT {_COLUMNS} FROM (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY notifier ORDER BY created, id) AS rn
                FROM outbox WHERE state = 'pending' AND next_try <= ? {not_in}
            ) WHERE rn <= ? ORDER BY created, id
        """
        with self._lock:
            rows = self._db.execute(sql, (now, *skip_list, limit)).fetchall()
        return [_item(r) for r in rows]

    def next_due(self, skip: Collection[str] = ()) -> float | None:
        """The earliest next try of any pending message (None: nothing pending)."""
        skip_list = list(skip)
        not_in = f"AND notifier NOT IN ({','.join('?' * len(skip_list))})" if skip_list else ""
        with self._lock:
            row = self._db.execute(f"SELECT MIN(next_try) FROM outbox WHERE state = 'pending' {not_in}", skip_list).fetchone()
        return None if row[0] is None else float(row[0])

    def _update(self, sql: str, args: tuple[Any, ...]) -> None:
        with self.transaction():
            cur = self._db.execute(sql, args)
            if cur.rowcount != 1:
                raise KeyError(f"outbox {self.path}: no message with id {args[-1]!r}")

    def mark_sent(self, id: str, now: float) -> None:
        self._update("UPDATE outbox SET state = 'sent', attempts = attempts + 1, sent_at = ?, last_error = NULL WHERE id = ?", (now, id))

    def mark_failed(self, id: str, now: float, error: str, next_try: float) -> None:
        """A failed attempt; the message stays pending until ``next_try``. (``now``, when the
        attempt failed, is taken for symmetry with the other marks; the row keeps no column
        for it.)"""
        self._update("UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_try = ? WHERE id = ?", (error, next_try, id))

    def mark_dead(self, id: str, now: float, error: str) -> None:
        """A message that will not be delivered (rejected, or out of attempts): kept, with the
        reason, for an operator to inspect and ``requeue``."""
        self._update("UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ?, next_try = ? WHERE id = ?", (error, now, id))

    def requeue(self, id: str, now: float) -> None:
        """Give a dead (or pending) message a fresh start: due at ``now``, attempts reset."""
        self._update("UPDATE outbox SET state = 'pending', attempts = 0, next_try = ? WHERE id = ? AND state != 'sent'", (now, id))

    def counts(self) -> dict[str, int]:
        """Messages per delivery state (every state present, 0 when none)."""
        out = {"pending": 0, "sent": 0, "dead": 0}
        with self._lock:
            for state, n in self._db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
                out[state] = int(n)
        return out

    def pending_for(self, notifier: str) -> list[OutboxItem]:
        """The pending messages of one notifier, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE notifier = ? AND state = 'pending' ORDER BY created, id", (notifier,)
            ).fetchall()
        return [_item(r) for r in rows]

    def items(self, state: DeliveryState | None = None) -> list[OutboxItem]:
        """Every message (or those in one state), oldest first: for inspection and tests."""
        where, args = ("WHERE state = ?", (state,)) if state is not None else ("", ())
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM outbox {where} ORDER BY created, id", args).fetchall()
        return [_item(r) for r in rows]

    def prune(self, sent_before: float) -> int:
        """Delete messages sent before ``sent_before``; return how many. Only safe for ids that
        can no longer be enqueued again (their source state has moved on), or they would be
        sent a second time."""
        with self.transaction():
            cur = self._db.execute("DELETE FROM outbox WHERE state = 'sent' AND sent_at < ?", (sent_before,))
            return cur.rowcount


class OutboxReader:
    """What other stages (the console, metrics) may know of an outbox, without its SQL.

    Every call opens its own short-lived read-only connection (request threads share
    nothing, and nothing here can write); while the file does not exist yet, calls give
    empty answers. Other SQLite errors reach the caller.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection | None]:
        with reading(self.path, OUTBOX_SCHEMA, busy_timeout_s=10.0) as conn:
            yield conn

    def watch(self) -> ChangeWatch:
        """A poller's view of whether the file changed (any state, message or delivery
        change is a commit to it); the caller closes it."""
        return ChangeWatch(self.path, OUTBOX_SCHEMA)

    def states(self, prefix: str) -> list[tuple[str, Any]]:
        """Every (key, value) of the callers' state table whose key starts with ``prefix``
        (the response chain keeps each site's alert state under one)."""
        with self._read() as conn:
            rows = [] if conn is None else conn.execute(_STATES, (prefix, prefix + "\uffff")).fetchall()
        return [(k, json.loads(v)) for k, v in rows]

    def command_answers(self) -> dict[str, dict[str, Any]]:
        """Devices' answers by command id: ``{"cmd", "result" (succ|fail), "t", "msgid"}``."""
        return {k[len(ANSWER_PREFIX):]: v for k, v in self.states(ANSWER_PREFIX)}

    def commands(self, site: str) -> list[OutboxItem]:
        """Device commands of a site (set_sampling, in either form), oldest first."""
        with self._read() as conn:
            rows = [] if conn is None else conn.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE notifier = 'mqtt/cmd' AND json_extract(payload, '$.site') = ? ORDER BY created, id", (site,)
            ).fetchall()
        return [_item(r) for r in rows]

    def about_warning(self, warning_id: str) -> list[OutboxItem]:
        """Every message whose body names this warning, oldest first."""
        with self._read() as conn:
            rows = [] if conn is None else conn.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE json_extract(payload, '$.body.warning_id') = ? ORDER BY created, id", (warning_id,)
            ).fetchall()
        return [_item(r) for r in rows]

    def counts_by_notifier(self) -> dict[tuple[str, str], int]:
        """Messages per (notifier, delivery state), in that order; absent pairs are absent."""
        with self._read() as conn:
            if conn is None:
                return {}
            rows = conn.execute("SELECT notifier, state, count(*) FROM outbox GROUP BY notifier, state ORDER BY notifier, state").fetchall()
        return {(str(notifier), str(state)): int(n) for notifier, state, n in rows}

    def notifications_by_level(self, kind: str, *, exercise: bool = False) -> dict[int, int]:
        """Engine notifications of one kind per level. One notification is delivered by
        several notifiers (ids ``<notify id>/<notifier>``), so distinct notification ids are
        counted, not outbox rows."""
        with self._read() as conn:
            if conn is None:
                return {}
            rows = conn.execute(
                "SELECT json_extract(payload, '$.level'), count(DISTINCT substr(id, 1, instr(id, '/') - 1)) FROM outbox "
                "WHERE json_extract(payload, '$.kind') = ? AND json_extract(payload, '$.exercise') = ? GROUP BY 1",
                (kind, 1 if exercise else 0),
            ).fetchall()
        return {int(level): int(n) for level, n in rows if level is not None}
