"""The message log: where a message becomes durable before it is acknowledged to the broker.

The ack path does the least it can: the batch of MQTT messages it took from the inbox (topics,
payloads, arrival time) is appended as ONE row to its own SQLite file in WAL mode, one
transaction and one fsync per batch, then the PUBACKs. One row per batch rather than per
message: a row insert costs several microseconds, the framing of a message a fraction of one. Decoding, validation, dead letters and the per-reading journal are the store stage's
work (``ingest/store.py``), in another process, from its saved position in this log. So the
broker's message rate is bounded by an append of raw bytes, not by JSON parsing and one index
update per reading, and a crash anywhere loses nothing: what was acked is in this file, what
was not the broker redelivers.

It has its own file, not a table in the journal, so that the ack path is the only writer that
matters here and never waits for the store stage's reading inserts (SQLite has one writer per
file). The store stage prunes what it has expanded once it is older than ``keep_s``.

One ``MessageLog`` is one SQLite connection and belongs to one thread. Other stages read the
log through ``MessageLogReader`` (read-only, short-lived connections), never its SQL.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from geowarn.core.sqlite import Schema, Sync, open_db, open_readonly

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id          INTEGER PRIMARY KEY,      -- arrival order: the store stage's position
    received_ms INTEGER NOT NULL,
    count       INTEGER NOT NULL,         -- messages in the batch
    data        BLOB    NOT NULL          -- the messages, framed (see _frame)
);
"""

#: The message log's file in the data directory.
MESSAGES_FILE = "messages.sqlite"
#: Migration 1 is the schema from before versions were kept (idempotent).
MESSAGES_SCHEMA = Schema("message log", (SCHEMA,))

_INSERT = "INSERT INTO batches (received_ms, count, data) VALUES (?, ?, ?)"
#: Per message: topic length, stored payload length, size on the wire; then topic and payload.
_HEADER = struct.Struct("<III")


class Logged(NamedTuple):
    id: int  # the batch's id: positions move by whole batches
    received_ms: int
    topic: bytes  # raw bytes: an invalid UTF-8 topic is dead-lettered later, not lost here
    payload: bytes  # cut to keep_bytes when it was larger than max_payload_bytes
    size: int  # the payload's size on the wire


def _unframe(batch_id: int, received_ms: int, data: bytes) -> list[Logged]:
    out: list[Logged] = []
    add = out.append
    # A NamedTuple's own constructor is a Python function (about 0.7 µs a message); the
    # tuple's is not, and makes the same object.
    make = tuple.__new__
    pos, end, header, unpack = 0, len(data), _HEADER.size, _HEADER.unpack_from
    while pos < end:
        lt, lp, size = unpack(data, pos)
        pos += header
        topic = data[pos:pos + lt]
        pos += lt
        add(make(Logged, (batch_id, received_ms, topic, data[pos:pos + lp], size)))
        pos += lp
    return out


class MessageLog:
    def __init__(self, path: str | Path, *, sync: Sync = "full", max_payload_bytes: int = 1 << 20, keep_bytes: int = 64 * 1024) -> None:
        self.path = Path(path)
        self.max_payload_bytes = max_payload_bytes
        self.keep_bytes = keep_bytes
        self.conn = open_db(self.path, MESSAGES_SCHEMA, sync=sync)
        # An identity for this log file: a reader's saved position means nothing in a new
        # file (deleted, restored from a backup), whose ids start again from 1.
        self.conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('log_id', ?)", (uuid.uuid4().hex,))
        self.log_id = str(self.conn.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()[0])

    def close(self) -> None:
        self.conn.close()

    def append(self, messages: Sequence[tuple[bytes, bytes]], received_ms: int) -> None:
        """Make (topic, payload) messages durable in one transaction, or raise and keep none of
        them (``sqlite3.OperationalError`` on a full disk: the caller holds them and retries).

        An oversized payload is kept only in part (enough for its dead letter): it will be
        rejected anyway, and it must not make the log grow by whatever a client sends.
        """
        if not messages:
            return
        limit, keep, pack = self.max_payload_bytes, self.keep_bytes, _HEADER.pack
        parts: list[bytes] = []
        add = parts.append
        for topic, payload in messages:
            size = len(payload)
            if size > limit:
                payload = payload[:keep]
            add(pack(len(topic), len(payload), size))
            add(topic)
            add(payload)
        conn = self.conn
        conn.execute("BEGIN")
        try:
            conn.execute(_INSERT, (received_ms, len(messages), b"".join(parts)))
            conn.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (disk full) may have ended the transaction already: a ROLLBACK
            # then raises "no transaction is active" and would hide the real cause.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def read_after(self, position: int, max_batches: int) -> list[Logged]:
        """The messages of the next whole batches after ``position`` (a batch id), in order."""
        out: list[Logged] = []
        for batch_id, received_ms, data in self.conn.execute(
            "SELECT id, received_ms, data FROM batches WHERE id > ? ORDER BY id LIMIT ?", (position, max_batches)
        ):
            out += _unframe(batch_id, received_ms, data)
        return out

    def last_id(self) -> int:
        row = self.conn.execute("SELECT max(id) FROM batches").fetchone()
        return int(row[0] or 0)

    def prune(self, upto_id: int, older_than_ms: int) -> int:
        """Forget batches the store stage has expanded (id ≤ ``upto_id``) that arrived before
        ``older_than_ms``; the newest row is always kept so ids never restart."""
        last = self.last_id()
        cur = self.conn.execute(
            "DELETE FROM batches WHERE id <= ? AND id < ? AND received_ms < ?", (upto_id, last, older_than_ms)
        )
        return cur.rowcount


class MessageLogReader:
    """What other stages (metrics) may know of the message log: read-only, one short-lived
    connection per call, and empty answers while the file does not exist yet."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def last_id(self) -> int:
        """The newest batch's id (0: none yet): how far the ack path has logged."""
        try:
            conn = open_readonly(self.path, MESSAGES_SCHEMA, busy_timeout_s=10.0)
        except FileNotFoundError:
            return 0
        try:
            return int(conn.execute("SELECT coalesce(max(id), 0) FROM batches").fetchone()[0])
        finally:
            conn.close()
