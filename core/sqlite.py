"""The one way GeoWarn opens an SQLite file.

This module owns how a store's file is opened — WAL, the synchronous mode the store asks for,
a busy timeout — and how its schema evolves: a store declares a ``Schema`` (its name and an
ordered list of migrations), the file's version is kept in ``PRAGMA user_version``, and the
opener applies the migrations the file has not seen, all in one transaction. A file written by
a newer GeoWarn (a version higher than the code knows) is refused with ``NewerSchemaError``
naming the file, rather than read or written with the wrong idea of its tables.

Migration 1 of every store is the schema as it was before versions were kept, written
idempotently (``CREATE … IF NOT EXISTS``): a file from that time has ``user_version`` 0 and
its tables already there, and migrating it only stamps the version.

Readers (the console, metrics, ``geowarn export``) open the same files read-only with
``open_readonly``: they never create, migrate or write another stage's file. ``ChangeWatch``
tells a poller whether a file has changed since it last looked.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["ChangeWatch", "NewerSchemaError", "Schema", "SchemaError", "Sync", "open_db", "open_readonly", "reading", "user_version"]

Sync = Literal["full", "normal"]

#: How long a connection waits for another process's write lock before giving up. Long: a
#: store worker catching up holds the journal's lock for whole batches, and giving up would
#: drop a reading or a notification.
BUSY_TIMEOUT_S = 30.0


class SchemaError(Exception):
    """A database file cannot be used with this version of GeoWarn; the message says why."""


class NewerSchemaError(SchemaError):
    """The file's schema version is newer than the code knows (written by a newer GeoWarn)."""


@dataclass(frozen=True)
class Schema:
    """A store's schema: its name (for messages) and its migrations, oldest first.

    Migration ``n`` (1-based) is ``migrations[n - 1]``, an SQL script; a file at version ``n``
    has had the first ``n`` applied. Append new migrations, never edit a released one: files
    in the field have already run it.
    """

    name: str
    migrations: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.migrations:
            raise ValueError(f"schema {self.name!r}: give at least one migration (the initial schema)")

    @property
    def version(self) -> int:
        return len(self.migrations)


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _statements(script: str) -> list[str]:
    """The statements of an SQL script, so they can run inside one transaction
    (``executescript`` would commit first). ``sqlite3.complete_statement`` decides where one
    ends, so a ``;`` inside a comment or a string does not split a statement."""
    out: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                out.append(pending)
            pending = ""
    if pending.strip(" \t\r\n;"):
        raise ValueError(f"an SQL migration ends in an unfinished statement: {pending.strip()[:80]!r}")
    return out


def _refuse_newer(path: Path, schema: Schema, found: int) -> None:
    if found > schema.version:
        raise NewerSchemaError(
            f"{path}: {schema.name} schema version {found} is newer than this GeoWarn knows ({schema.version}); "
            "it was written by a newer GeoWarn — run that version, or restore a copy of the file made by this one"
        )


def _migrate(conn: sqlite3.Connection, path: Path, schema: Schema) -> None:
    found = user_version(conn)
    _refuse_newer(path, schema, found)
    if found == schema.version:
        return
    # IMMEDIATE: several processes open the journal at start; the first to take the write lock
    # migrates, the others wait, re-read the version inside the transaction and find it done.
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = user_version(conn)
        _refuse_newer(path, schema, found)
        for script in schema.migrations[found:]:
            for statement in _statements(script):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {schema.version:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _set_wal(conn: sqlite3.Connection, deadline: float) -> None:
    """WAL mode, which stays with the file once set. Switching a new file to it while another
    process does the same can fail at once with "database is locked" — SQLite does not call
    the busy handler there — so that one step is retried until the busy timeout's deadline."""
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.005)  # nothing to wait on: SQLite offers no notification for this lock


def open_db(path: str | Path, schema: Schema, *, sync: Sync = "full", busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """A read-write connection to a store's file, created if missing and migrated to ``schema``.

    Autocommit mode (``isolation_level=None``): stores begin their transactions explicitly,
    so a batch is one commit and one fsync. ``check_same_thread=False``: a store that shares
    its connection between threads guards it with its own lock.
    """
    if sync not in ("full", "normal"):
        raise ValueError(f"sync {sync!r} must be 'full' or 'normal'")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(p, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000):d}")
        _set_wal(conn, time.monotonic() + busy_timeout_s)
        conn.execute(f"PRAGMA synchronous = {sync.upper()}")
        _migrate(conn, p, schema)
    except BaseException:
        conn.close()
        raise
    return conn


def open_readonly(path: str | Path, schema: Schema, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """A read-only connection to an existing store file (``FileNotFoundError`` when there is
    none). It never creates, migrates or writes: a reader must not change another stage's
    file. A file older than the code is read as it is (its owner migrates it when it next
    opens it); a newer one is refused."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no {schema.name} database at {p}")
    # A URI, so mode=ro can be asked for; as_uri() escapes a '?' or '#' in the path.
    conn = sqlite3.connect(f"{p.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000):d}")
        _refuse_newer(p, schema, user_version(conn))
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def reading(path: str | Path, schema: Schema, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> Iterator[sqlite3.Connection | None]:
    """One reader call's connection: read-only, closed on leaving; ``None`` while the file does
    not exist yet (a store its owner has not created is empty, not an error)."""
    try:
        conn = open_readonly(path, schema, busy_timeout_s=busy_timeout_s)
    except FileNotFoundError:
        yield None
        return
    try:
        yield conn
    finally:
        conn.close()


class ChangeWatch:
    """Whether a store file has changed since the last look, for pollers (the console's event
    stream). ``PRAGMA data_version`` changes whenever another connection commits to the file:
    one cheap query per poll on a connection kept open between polls. Used by one poller at a
    time; ``close`` it when done."""

    def __init__(self, path: str | Path, schema: Schema) -> None:
        self.path = Path(path)
        self.schema = schema
        self._conn: sqlite3.Connection | None = None

    def version(self) -> int:
        """A number that differs after any other connection's commit; -1 while the file does
        not exist."""
        if self._conn is None:
            try:
                self._conn = open_readonly(self.path, self.schema, busy_timeout_s=10.0)
            except FileNotFoundError:
                return -1
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
