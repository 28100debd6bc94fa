"""The journal: the SQLite (WAL) file that makes a reading durable before it is acknowledged.

It is the embedded default store (``geowarn export`` reads it), the buffer in front of
InfluxDB (the forwarder keeps its position here), and the home of dead letters, device status
and small pieces of persisted state. A reading is identified by site + device + channel + time:
storing it twice stores it once.

One ``Journal`` object is one SQLite connection and belongs to one thread; the daemon opens one
for the pipeline and one for the forwarder (WAL lets them work side by side).

The journal's SQL lives here and nowhere else: other stages read it through ``JournalReader``
(the console, metrics), which opens a short-lived read-only connection per call. The file's
name (``JOURNAL_FILE``) and the state keys other processes read are defined here too.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from geowarn.config.registry import ChannelInfo, Registry
from geowarn.core.sqlite import Schema, SchemaError, Sync, open_db, open_readonly, reading, user_version

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id      INTEGER PRIMARY KEY,
    site    TEXT NOT NULL,
    device  TEXT NOT NULL,
    channel TEXT NOT NULL,
    kind    TEXT NOT NULL,
    admin   TEXT NOT NULL,
    UNIQUE (site, device, channel)
);
CREATE TABLE IF NOT EXISTS readings (
    id          INTEGER PRIMARY KEY,      -- arrival order: the forwarder's position
    series      INTEGER NOT NULL REFERENCES series(id),
    t_ms        INTEGER NOT NULL,         -- event time, epoch milliseconds
    value       REAL    NOT NULL,
    drill       INTEGER NOT NULL DEFAULT 0,
    received_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS readings_key ON readings (series, t_ms);
CREATE TABLE IF NOT EXISTS deadletters (
    id          INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    topic       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    payload     BLOB
);
CREATE TABLE IF NOT EXISTS device_status (
    id          INTEGER PRIMARY KEY,
    site        TEXT NOT NULL,
    device      TEXT NOT NULL,
    t_ms        INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    status      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

#: Retention prunes by arrival time in small batches; a device's newest status must stay
#: findable without a scan.
MIGRATION_2 = """
CREATE INDEX IF NOT EXISTS deadletters_received ON deadletters (received_ms);
CREATE INDEX IF NOT EXISTS device_status_received ON device_status (received_ms);
CREATE INDEX IF NOT EXISTS device_status_device ON device_status (site, device, id);
"""

#: Where a device status stands among the readings: the id of the last reading stored before
#: it (in the order the messages arrived). Arrival times in whole milliseconds tie when
#: messages come together, and a status's ``sensor_state`` must apply exactly from where it
#: arrived (a "sensor healthy again" applied a millisecond early lets the faulty readings
#: before it count). NULL in rows from before this migration: those are ordered by arrival time.
MIGRATION_3 = """
ALTER TABLE device_status ADD COLUMN after_reading INTEGER;
"""

#: Detection's state, one row per site (issue 17): saved a few sites at a time, only those
#: that changed, each with the journal positions (readings, statuses) it reflects, so that no
#: save stops detection for long, no value comes near SQLite's limit, and a restart reads
#: each site's row and replays only what came after it (service/detection.py).
MIGRATION_4 = """
CREATE TABLE IF NOT EXISTS site_state (
    site            TEXT PRIMARY KEY,
    position        INTEGER NOT NULL,
    status_position INTEGER NOT NULL,
    body            TEXT NOT NULL
);
"""

#: Each site's fused level, one row a site (issue 17): the detection worker writes the rows
#: of the sites whose level changed, where it wrote every site's level as one value on every
#: change (~40 ms at 50,000 sites, in the way of the next warning). The one value of before
#: (state ``fusion.site_levels``) is moved into the rows once; a damaged one (not a JSON object,
#: a level not a number) is dropped rather than stopping the journal from opening: detection
#: writes every site's level at its start.
MIGRATION_5 = """
CREATE TABLE IF NOT EXISTS site_level (
    site  TEXT PRIMARY KEY,
    level INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO site_level (site, level)
    SELECT key, CAST(value AS INTEGER) FROM json_each((
        SELECT value FROM state WHERE key = 'fusion.site_levels' AND json_valid(value) AND json_type(value) = 'object'
    )) WHERE type IN ('integer', 'real');
DELETE FROM state WHERE key = 'fusion.site_levels';
"""

#: Each channel's saved detectors (issue 17), apart from its site's row: a channel's packed
#: text (zlib of its JSON body: ``SiteFusion.site_rows``) written when it changed, and read
#: back alone when it is needed again, so that a quiet channel keeps nothing of it in memory
#: and a site's save writes the channels that spoke, not every channel of the site again.
#: ``key``: ``"<0|1>:<device>/<channel>"`` (1: the site's drill state).
MIGRATION_6 = """
CREATE TABLE IF NOT EXISTS channel_state (
    site TEXT NOT NULL,
    key  TEXT NOT NULL,
    z    BLOB NOT NULL,
    PRIMARY KEY (site, key)
) WITHOUT ROWID;
"""

#: The journal's file in the data directory.
JOURNAL_FILE = "journal.sqlite"
#: Migration 1 is the schema from before versions were kept (idempotent, so a file of that
#: time migrates by being stamped). Append new migrations; never edit a released one.
JOURNAL_SCHEMA = Schema("journal", (SCHEMA, MIGRATION_2, MIGRATION_3, MIGRATION_4, MIGRATION_5, MIGRATION_6))

#: State keys written by the detection worker (service/detection.py) and read by the console
#: and metrics, which may not import the service: one spelling, kept by the file's owner.
#: (Sites' levels were the state key "fusion.site_levels" before migration 5: see ``site_level``.)
DETECTION_STATS_KEY = "detection.stats"

#: The dead-letter reason of a reading stored with another value (ingest/store.py ``CONFLICT``),
#: and the count of such readings in a multi-reading dead letter's detail.
CONFLICT_REASON = "conflict"
_CONFLICT_TALLY = re.compile(r"^\d+ of \d+ readings rejected \((?:[^()]*, )?conflict (\d+)[,)]")

#: How much of a rejected payload the dead-letter table keeps.
DEADLETTER_KEEP_BYTES = 64 * 1024

#: The bytes a row of a pruned table is counted as: its text and blob bytes plus a fixed
#: allowance for the integers, the record header and its index entries. An estimate of what
#: the row occupies in the file, cheap to compute for the rows of one id range.
ROW_OVERHEAD = 48
ROW_SIZE = {
    "deadletters": f"({ROW_OVERHEAD} + length(CAST(topic AS BLOB)) + length(CAST(reason AS BLOB)) "
                   "+ length(CAST(detail AS BLOB)) + coalesce(length(payload), 0))",
    "device_status": f"({ROW_OVERHEAD} + 2 * (length(CAST(site AS BLOB)) + length(CAST(device AS BLOB))) "
                     "+ length(CAST(status AS BLOB)))",
}

_INSERT_READING = "INSERT OR IGNORE INTO readings (series, t_ms, value, drill, received_ms) VALUES (?, ?, ?, ?, ?)"
_INSERT_DEADLETTER = "INSERT INTO deadletters (received_ms, topic, reason, detail, payload) VALUES (?, ?, ?, ?, ?)"
_INSERT_STATUS = "INSERT INTO device_status (site, device, t_ms, received_ms, status, after_reading) VALUES (?, ?, ?, ?, ?, ?)"
_LAST_READING = "SELECT coalesce(max(id), 0) FROM readings"


@dataclass(frozen=True)
class Pruned:
    """What one pruning transaction deleted (rows, their bytes as ``ROW_SIZE`` counts them)
    and the newest id left in the table (0 when empty)."""

    rows: int
    bytes: int
    newest_id: int


def to_ms(t: float) -> int:
    return int(round(t * 1000.0))


class Journal:
    def __init__(self, path: str | Path, *, sync: Sync = "full", readonly: bool = False) -> None:
        self.path = Path(path)
        # readonly: ``geowarn export`` and the demo read a journal a daemon may be writing.
        self.conn = open_readonly(self.path, JOURNAL_SCHEMA) if readonly else open_db(self.path, JOURNAL_SCHEMA, sync=sync)

    def close(self) -> None:
        self.conn.close()

    # -- series ----------------------------------------------------------------------------

    def series_ids(self, registry: Registry) -> dict[ChannelInfo, int]:
        """The series id of every channel of the registry, creating those not seen before.

        The series table is read once, not one query per channel: at 250,000 devices that is a
        million channels, and the store worker's start waited on them. It is read a row at a
        time into the result, not first into a table of its own: a million rows' strings held
        at once took the store worker from ~500 MB to ~950 MB at every restart of a national
        fleet (freed, but not given back to the system)."""
        out: dict[ChannelInfo, int] = {}
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            changed: list[tuple[str, str, int]] = []
            channel = registry.channel
            for sid, site, device, name, kind, admin in self.conn.execute("SELECT id, site, device, channel, kind, admin FROM series"):
                info = channel(site, device, name)
                if info is None:
                    continue  # a channel no longer in the registry: its readings stay
                out[info] = sid
                if (kind, admin) != (info.kind, info.admin):
                    changed.append((info.kind, info.admin, sid))
            # The registry changed a channel's kind or a site's county: later readings are
            # forwarded with the new tags.
            self.conn.executemany("UPDATE series SET kind=?, admin=? WHERE id=?", changed)
            for chans in registry.channels.values():
                for info in chans.values():
                    if info not in out:
                        cur = self.conn.execute(
                            "INSERT INTO series (site, device, channel, kind, admin) VALUES (?, ?, ?, ?, ?)",
                            (info.site, info.device, info.channel, info.kind, info.admin),
                        )
                        out[info] = int(cur.lastrowid or 0)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return out

    # -- the write path --------------------------------------------------------------------

    def append(
        self,
        readings: list[tuple[int, int, float, int, int]],
        deadletters: Iterable[tuple[int, str, str, str, bytes]] = (),
        statuses: Iterable[tuple[str, str, int, int, str] | tuple[str, str, int, int, str, int]] = (),
        state: Mapping[str, Any] | None = None,
    ) -> int:
        """Store a batch in one transaction; returns how many readings were new.

        readings: (series id, t_ms, value, drill 0/1, received_ms); duplicates are ignored.
        statuses: (site, device, t_ms, received_ms, status text[, k]): the status stands before
        ``readings[k]`` (the batch's readings from messages after it; default 0: before them
        all), and its row records the last reading id stored before it (``MIGRATION_3``).
        state: keys to set in the same transaction (the store stage's position in the message log).
        """
        conn = self.conn
        conn.execute("BEGIN")
        try:
            inserted = self._insert_ordered(readings, list(statuses))
            conn.executemany(_INSERT_DEADLETTER, deadletters)
            for key, value in (state or {}).items():
                self.set_state(key, value)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return inserted

    #: Readings per INSERT statement of ``_insert_readings`` (5 parameters each: 500, under
    #: SQLite's oldest default limit of 999 variables).
    _ROWS_PER_INSERT = 100
    _INSERT_READINGS = _INSERT_READING + ", (?, ?, ?, ?, ?)" * (_ROWS_PER_INSERT - 1)

    def _insert_readings(self, readings: list[tuple[int, int, float, int, int]]) -> int:
        """``INSERT OR IGNORE`` the readings, in order (inside the caller's transaction); how
        many were new. A hundred rows per statement: each row is still inserted or ignored on
        its own, with the same ids in the same order, but the per-statement work of Python's
        sqlite3 (step, reset, one call per row) is paid once per hundred rows, which makes a
        reading's insert about a third cheaper."""
        conn = self.conn
        mark = conn.total_changes
        k = self._ROWS_PER_INSERT
        full = len(readings) - len(readings) % k
        if full:
            conn.executemany(self._INSERT_READINGS, (tuple(chain.from_iterable(readings[i:i + k])) for i in range(0, full, k)))
        if full < len(readings):
            conn.executemany(_INSERT_READING, readings[full:])
        return conn.total_changes - mark

    def _insert_ordered(self, readings: list[tuple[int, int, float, int, int]], statuses: list[Any]) -> int:
        """Readings and statuses in the order they arrived (inside the caller's transaction);
        how many readings were new. Without statuses, one ``_insert_readings``."""
        conn = self.conn
        inserted = 0
        done = 0
        for st in sorted(statuses, key=lambda x: x[5] if len(x) > 5 else 0):
            k = min(len(readings), st[5] if len(st) > 5 else 0)
            if k > done:
                inserted += self._insert_readings(readings[done:k])
                done = k
            conn.execute(_INSERT_STATUS, (*st[:5], conn.execute(_LAST_READING).fetchone()[0]))
        if done < len(readings):
            inserted += self._insert_readings(readings[done:] if done else readings)
        return inserted

    def append_each(
        self,
        parts: Sequence[tuple[list[tuple[int, int, float, int, int]], list[tuple[int, str, str, str, bytes]], list[tuple[str, str, int, int, str]]]],
        state: Mapping[str, Any] | None,
        refuse: Callable[[int, Exception], tuple[int, str, str, str, bytes]],
    ) -> int:
        """``append`` for a batch that failed as a whole: each message's part (readings, dead
        letters, statuses) in its own savepoint, one transaction for all. A part that cannot be
        written is rolled back and replaced by the dead letter ``refuse(index, exception)``, so
        one message the journal cannot take does not stop the batch. Errors of the database
        itself (disk full, locked: ``sqlite3.OperationalError``) are not the message's fault
        and are raised. Returns how many readings were new."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            inserted = 0
            for i, (readings, deadletters, statuses) in enumerate(parts):
                conn.execute("SAVEPOINT message")
                try:
                    # A message's status stands before its own readings (see append).
                    new = self._insert_ordered(readings, [(*x[:5], 0) for x in statuses])
                    conn.executemany(_INSERT_DEADLETTER, deadletters)
                    inserted += new
                except sqlite3.OperationalError:
                    raise
                except Exception as exc:
                    conn.execute("ROLLBACK TO message")
                    conn.execute(_INSERT_DEADLETTER, refuse(i, exc))
                conn.execute("RELEASE message")
            for key, value in (state or {}).items():
                self.set_state(key, value)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return inserted

    # -- retention -------------------------------------------------------------------------
    #
    # Each call is one short transaction (BEGIN IMMEDIATE: take the write lock at once rather
    # than fail to upgrade a read), so the store stage's own appends, detection's and the
    # forwarder's state writes never wait behind more than ``limit`` rows. Deleting frees pages
    # that later inserts reuse: the file stops growing at its high-water mark, it does not
    # shrink (no VACUUM: it would hold the writer for the whole file).

    def _delete_ids(self, table: str, select: str, args: Sequence[Any], excess_bytes: int | None = None) -> Pruned:
        """Delete the rows ``select`` yields as (id, size), oldest first, in one transaction;
        with ``excess_bytes``, only until that many bytes have gone. ``table`` is one of ours."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids: list[tuple[int]] = []
            gone = 0
            for rid, size in conn.execute(select, args):
                if excess_bytes is not None and gone >= excess_bytes:
                    break
                ids.append((int(rid),))
                gone += int(size)
            if ids:
                conn.executemany(f"DELETE FROM {table} WHERE id = ?", ids)
            newest = conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return Pruned(len(ids), gone, int(newest))

    def table_size(self, table: str, after_id: int) -> tuple[int, int, int]:
        """(rows, bytes, newest id) of the rows of ``deadletters`` or ``device_status`` with
        an id above ``after_id``: a rowid range, so measuring what arrived since the last look
        reads only that. Bytes as ``ROW_SIZE`` estimates them."""
        row = self.conn.execute(
            f"SELECT count(*), coalesce(sum({ROW_SIZE[table]}), 0), coalesce(max(id), 0) FROM {table} WHERE id > ?", (after_id,)
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def prune_deadletters(self, older_than_ms: int, limit: int) -> Pruned:
        """Delete up to ``limit`` of the oldest dead letters that arrived before
        ``older_than_ms``, in one short transaction."""
        return self._delete_ids(
            "deadletters",
            f"SELECT id, {ROW_SIZE['deadletters']} FROM deadletters WHERE received_ms < ? ORDER BY received_ms LIMIT ?",
            (older_than_ms, limit),
        )

    def prune_deadletters_by_size(self, excess_bytes: int, limit: int) -> Pruned:
        """Delete the oldest dead letters (by arrival: id) until ``excess_bytes`` have gone,
        at most ``limit`` rows, in one short transaction."""
        return self._delete_ids(
            "deadletters", f"SELECT id, {ROW_SIZE['deadletters']} FROM deadletters ORDER BY id LIMIT ?", (limit,), excess_bytes
        )

    #: A status row that is not its device's newest (the console shows that one however old).
    _NOT_NEWEST = "EXISTS (SELECT 1 FROM device_status n WHERE n.site = d.site AND n.device = d.device AND n.id > d.id)"

    def prune_statuses(self, older_than_ms: int, limit: int) -> Pruned:
        """Delete up to ``limit`` of the oldest device status rows that arrived before
        ``older_than_ms``, except each device's newest; one short transaction."""
        return self._delete_ids(
            "device_status",
            f"SELECT d.id, {ROW_SIZE['device_status']} FROM device_status d WHERE d.received_ms < ? AND {self._NOT_NEWEST} "
            "ORDER BY d.received_ms LIMIT ?",
            (older_than_ms, limit),
        )

    def prune_statuses_by_size(self, excess_bytes: int, limit: int) -> Pruned:
        """Delete the oldest device status rows (by arrival) until ``excess_bytes`` have gone,
        except each device's newest; at most ``limit`` rows, one short transaction."""
        return self._delete_ids(
            "device_status",
            f"SELECT d.id, {ROW_SIZE['device_status']} FROM device_status d WHERE {self._NOT_NEWEST} ORDER BY d.id LIMIT ?",
            (limit,), excess_bytes,
        )

    def first_reading_id(self) -> int:
        row = self.conn.execute("SELECT min(id) FROM readings").fetchone()
        return int(row[0] or 0)

    def prune_readings(self, after_id: int, upto_id: int, older_than_ms: int, horizon_ms: int) -> tuple[int, int]:
        """Delete the readings with ``after_id < id <= upto_id`` that arrived before
        ``older_than_ms`` — stopping at the first that did not — except those within
        ``horizon_ms`` of their series' newest event time (what detection re-reads when it
        starts without a snapshot). One short transaction; returns (rows deleted, the id the
        range was worked up to: ``upto_id`` unless a young reading ended it)."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            young = conn.execute(
                "SELECT min(id) FROM readings WHERE id > ? AND id <= ? AND received_ms >= ?", (after_id, upto_id, older_than_ms)
            ).fetchone()[0]
            end = upto_id if young is None else int(young) - 1
            cur = conn.execute(
                "DELETE FROM readings WHERE id > ? AND id <= ? AND "
                "t_ms < (SELECT max(m.t_ms) FROM readings m WHERE m.series = readings.series) - ?",
                (after_id, end, horizon_ms),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return int(cur.rowcount), end

    # -- state -----------------------------------------------------------------------------

    def get_state(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_state(self, key: str, value: Any) -> None:
        self.conn.execute(
            "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, json.dumps(value)),
        )

    # -- detection's state, per site ---------------------------------------------------------

    def save_site_states(self, rows: Iterable[tuple[str, int, int, str]], delete: Iterable[str] = (), state: Mapping[str, Any] | None = None,
                         channels: Iterable[tuple[str, str, bytes]] = (), drop_channels: Iterable[tuple[str, str]] = ()) -> None:
        """Write site rows (site, position, status position, JSON body) and channel rows (site,
        key, packed text: ``MIGRATION_6``), delete other sites' rows (and their channels') and
        channel rows (site, key) no row refers to any more, and set state keys, in one
        transaction: what was saved before stays whole until this commits."""
        conn = self.conn
        delete = list(delete)
        conn.execute("BEGIN")
        try:
            conn.executemany(
                "INSERT INTO site_state (site, position, status_position, body) VALUES (?, ?, ?, ?) ON CONFLICT(site) DO UPDATE SET "
                "position=excluded.position, status_position=excluded.status_position, body=excluded.body",
                rows,
            )
            conn.executemany("INSERT INTO channel_state (site, key, z) VALUES (?, ?, ?) ON CONFLICT(site, key) DO UPDATE SET z=excluded.z", channels)
            conn.executemany("DELETE FROM site_state WHERE site=?", ((s,) for s in delete))
            conn.executemany("DELETE FROM channel_state WHERE site=?", ((s,) for s in delete))
            conn.executemany("DELETE FROM channel_state WHERE site=? AND key=?", drop_channels)
            for key, value in (state or {}).items():
                if value is None:
                    conn.execute("DELETE FROM state WHERE key=?", (key,))
                else:
                    self.set_state(key, value)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def site_states(self) -> Iterator[tuple[str, int, int, str]]:
        """Every saved site row: (site, position, status position, JSON body)."""
        for site, pos, spos, body in self.conn.execute("SELECT site, position, status_position, body FROM site_state"):
            yield str(site), int(pos), int(spos), str(body)

    def channel_keys(self, site: str) -> set[str]:
        """The keys of a site's saved channel texts (``save_site_states``' channels)."""
        return {str(k) for (k,) in self.conn.execute("SELECT key FROM channel_state WHERE site=?", (site,))}

    def channel_text(self, site: str, key: str) -> bytes | None:
        """A channel's saved packed text (``save_site_states``' channels), or None: what detection
        reads a spilled channel back from (``SiteFusion.text_source``)."""
        try:
            row = self.conn.execute("SELECT z FROM channel_state WHERE site=? AND key=?", (site, key)).fetchone()
        except sqlite3.OperationalError:
            raise  # locked, I/O: the file's or the machine's trouble, not this channel's
        except sqlite3.DatabaseError as exc:  # a damaged page: that channel's text is lost
            raise ValueError(f"its saved text cannot be read: {exc}") from exc
        if row is None:
            return None
        if not isinstance(row[0], bytes):  # a hand edit: an INTEGER 2**62 would make bytes() allocate it
            raise ValueError(f"its saved text is {type(row[0]).__name__}, not a blob")
        return row[0]

    # -- sites' fused levels (for the console and a restart without saved state) -------------

    def site_levels(self) -> dict[str, int]:
        return {str(site): int(level) for site, level in self.conn.execute("SELECT site, level FROM site_level")}

    def save_site_levels(self, levels: Mapping[str, int], drop: Iterable[str] = ()) -> None:
        """Set the levels of the sites given and forget those of ``drop``, in one transaction."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            conn.executemany(
                "INSERT INTO site_level (site, level) VALUES (?, ?) ON CONFLICT(site) DO UPDATE SET level=excluded.level", levels.items()
            )
            conn.executemany("DELETE FROM site_level WHERE site=?", ((s,) for s in drop))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- reads -----------------------------------------------------------------------------

    def read_after(self, position: int, limit: int) -> list[tuple[int, str, str, str, str, str, int, float, int]]:
        """Readings in arrival order after ``position``: (id, kind, site, device, channel, admin, t_ms, value, drill)."""
        return self.conn.execute(
            "SELECT r.id, s.kind, s.site, s.device, s.channel, s.admin, r.t_ms, r.value, r.drill "
            "FROM readings r JOIN series s ON s.id = r.series WHERE r.id > ? ORDER BY r.id LIMIT ?",
            (position, limit),
        ).fetchall()

    def read_after_received(self, position: int, limit: int) -> list[tuple[int, str, str, str, int, float, int, int]]:
        """Readings in arrival order after ``position`` for detection:
        (id, site, device, channel, t_ms, value, drill, received_ms)."""
        return self.conn.execute(
            "SELECT r.id, s.site, s.device, s.channel, r.t_ms, r.value, r.drill, r.received_ms "
            "FROM readings r JOIN series s ON s.id = r.series WHERE r.id > ? ORDER BY r.id LIMIT ?",
            (position, limit),
        ).fetchall()

    def last_id(self) -> int:
        row = self.conn.execute("SELECT max(id) FROM readings").fetchone()
        return int(row[0] or 0)

    def statuses_after(self, position: int, limit: int) -> list[tuple[int, str, str, int, int, str, int | None]]:
        """Device status rows in arrival order after ``position``, for detection:
        (id, site, device, t_ms, received_ms, raw status text, id of the last reading stored
        before it — None for a row from before ``MIGRATION_3``)."""
        rows = self.conn.execute(
            "SELECT id, site, device, t_ms, received_ms, status, after_reading FROM device_status WHERE id > ? ORDER BY id LIMIT ?",
            (position, limit),
        ).fetchall()
        return [(int(i), str(a), str(b), int(t), int(r), str(st), None if ar is None else int(ar)) for i, a, b, t, r, st, ar in rows]

    def newest_statuses(self) -> list[tuple[str, str, int, str]]:
        """Each device's newest status row (by arrival), for detection starting without a
        snapshot: (site, device, t_ms, raw status text)."""
        rows = self.conn.execute(
            "SELECT d.site, d.device, d.t_ms, d.status FROM device_status d "
            "JOIN (SELECT max(id) AS id FROM device_status GROUP BY site, device) m ON d.id = m.id"
        ).fetchall()
        return [(str(a), str(b), int(t), str(st)) for a, b, t, st in rows]

    def last_status_id(self) -> int:
        row = self.conn.execute("SELECT max(id) FROM device_status").fetchone()
        return int(row[0] or 0)

    def received_ms_of(self, reading_id: int) -> int | None:
        row = self.conn.execute("SELECT received_ms FROM readings WHERE id=?", (reading_id,)).fetchone()
        return None if row is None else int(row[0])

    def _where(self, site: str | None, since: float | None, until: float | None, drill: bool) -> tuple[str, list[Any]]:
        clauses = ["r.drill = ?"]
        args: list[Any] = [1 if drill else 0]
        if site is not None:
            clauses.append("s.site = ?")
            args.append(site)
        if since is not None:
            clauses.append("r.t_ms >= ?")
            args.append(to_ms(since))
        if until is not None:
            clauses.append("r.t_ms < ?")
            args.append(to_ms(until))
        return " AND ".join(clauses), args

    def export(
        self, site: str | None = None, since: float | None = None, until: float | None = None, *, drill: bool = False
    ) -> Iterator[tuple[str, str, str, int, float]]:
        """(site, device, channel, t_ms, value), by series then time."""
        where, args = self._where(site, since, until, drill)
        yield from self.conn.execute(
            "SELECT s.site, s.device, s.channel, r.t_ms, r.value FROM readings r JOIN series s ON s.id = r.series "
            f"WHERE {where} ORDER BY s.site, s.device, s.channel, r.t_ms",
            args,
        )

    def count(self, site: str | None = None, since: float | None = None, until: float | None = None, *, drill: bool = False) -> int:
        where, args = self._where(site, since, until, drill)
        row = self.conn.execute(
            f"SELECT count(*) FROM readings r JOIN series s ON s.id = r.series WHERE {where}", args
        ).fetchone()
        return int(row[0])

    def recent(self, series: int, since_ms: int) -> list[tuple[int, float]]:
        """(t_ms, value) of one series from ``since_ms`` on, in time order (to warm detectors)."""
        return self.conn.execute(
            "SELECT t_ms, value FROM readings WHERE series=? AND t_ms >= ? AND drill = 0 ORDER BY t_ms", (series, since_ms)
        ).fetchall()

    def latest_t_ms(self, series: int) -> int | None:
        row = self.conn.execute("SELECT max(t_ms) FROM readings WHERE series=? AND drill = 0", (series,)).fetchone()
        return None if row[0] is None else int(row[0])

    def newest_t_ms(self, series: int) -> int | None:
        """The newest event time stored for a series, drills included (they share the key)."""
        row = self.conn.execute("SELECT max(t_ms) FROM readings WHERE series=?", (series,)).fetchone()
        return None if row[0] is None else int(row[0])

    def stored_value(self, series: int, t_ms: int) -> float | None:
        """The value stored under a reading's key, if any: tells a repeated reading (a
        redelivery, harmless) from a conflicting one (same key, another value)."""
        row = self.conn.execute("SELECT value FROM readings WHERE series=? AND t_ms=?", (series, t_ms)).fetchone()
        return None if row is None else float(row[0])

    def readings_by_device(self, sites: Iterable[str], since: float, until: float) -> dict[tuple[str, str], int]:
        """Real (not drill) readings with event time in [since, until), by (site, device), for
        the zero reports (``alerts.chain.ReadingCounts``; a replay counts its feed the same way)."""
        sites = list(sites)
        if not sites:
            return {}
        rows = self.conn.execute(
            f"SELECT s.site, s.device, count(*) FROM readings r JOIN series s ON s.id = r.series "
            f"WHERE s.site IN ({','.join('?' * len(sites))}) AND r.t_ms >= ? AND r.t_ms < ? AND r.drill = 0 GROUP BY s.site, s.device",
            (*sites, to_ms(since), to_ms(until)),
        ).fetchall()
        return {(site, device): int(n) for site, device, n in rows}


# -- the read side for other stages ------------------------------------------------------------


@dataclass(frozen=True)
class ChannelActivity:
    """A channel's newest real (not drill) reading and how many readings it had in a window
    before it; ``last_t_ms`` is None when the channel has none."""

    device: str
    channel: str
    kind: str
    last_t_ms: int | None
    last_received_ms: int | None
    recent: int


@dataclass(frozen=True)
class ChannelPoints:
    """A channel's real readings over a window, thinned for a chart: (t_ms, value)."""

    device: str
    channel: str
    kind: str
    points: list[tuple[int, float]]


@dataclass(frozen=True)
class RefusedConflicts:
    """Readings refused as conflicting duplicates per (site, device), arrived since
    ``since_ms``; ``complete`` False: the window held more dead letters than were read."""

    by_device: dict[tuple[str, str], int]
    since_ms: int
    complete: bool


@dataclass(frozen=True)
class Arrivals:
    """``JournalReader.arrivals_since``: ``series`` (id, site, device, channel, newest reading's
    t_ms, its received_ms; None without readings) created since the last look, ``readings``
    (series, t_ms, received_ms) stored since; the series and reading ids covered, where the
    next look starts (lower than asked: another file); ``more``: not all read yet."""

    series: list[tuple[int, str, str, str, int | None, int | None]]
    readings: list[tuple[int, int, int]]
    last_series: int
    last_reading: int
    more: bool


class JournalReader:
    """What other stages (the console, metrics) may know of a journal, without its SQL.

    Every call opens its own short-lived read-only connection, so request threads share
    nothing and can never write. While the file does not exist yet (a daemon that has just
    started) calls give empty answers; other SQLite errors reach the caller, which decides
    whether a half-read page or a scrape should say so.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection | None]:
        with reading(self.path, JOURNAL_SCHEMA, busy_timeout_s=10.0) as conn:
            yield conn

    def readable(self) -> bool:
        """The file can be opened and queried (True while it does not exist yet: nothing is
        wrong with a journal the store worker has not created; False for one written by a
        newer GeoWarn)."""
        try:
            with self._read() as conn:
                if conn is not None:
                    conn.execute("SELECT 1 FROM state LIMIT 1").fetchall()
        except (sqlite3.Error, SchemaError):
            return False
        return True

    def state(self, key: str, default: Any = None) -> Any:
        with self._read() as conn:
            row = None if conn is None else conn.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def site_states(self, header_key: str) -> tuple[Any, list[tuple[str, int, int, str]], dict[tuple[str, str], bytes]]:
        """Detection's per-site state rows with their header (state ``header_key``) and their
        channels' texts ((site, key) -> text), read in one transaction so that they belong together."""
        with self._read() as conn:
            if conn is None:
                return None, [], {}
            conn.execute("BEGIN")
            try:
                row = conn.execute("SELECT value FROM state WHERE key=?", (header_key,)).fetchone()
                rows = conn.execute("SELECT site, position, status_position, body FROM site_state").fetchall()
                texts = conn.execute("SELECT site, key, z FROM channel_state").fetchall() if user_version(conn) >= 6 else []
            finally:
                conn.execute("COMMIT")
        return ((None if row is None else json.loads(row[0])), [(str(a), int(b), int(c), str(d)) for a, b, c, d in rows],
                {(str(a), str(b)): z for a, b, z in texts if isinstance(z, bytes)})  # (others: named unreadable)

    def site_levels(self) -> dict[str, int]:
        """Each site's fused level as the detection worker last saved it (a file the store
        worker has not migrated yet keeps them in one state value, as before migration 5)."""
        with self._read() as conn:
            if conn is None:
                return {}
            conn.execute("BEGIN")  # the version and the rows it says where to find, together
            try:
                if user_version(conn) >= 5:
                    return {str(k): int(v) for k, v in conn.execute("SELECT site, level FROM site_level")}
                row = conn.execute("SELECT value FROM state WHERE key = 'fusion.site_levels'").fetchone()
            finally:
                conn.execute("COMMIT")
        try:
            old = json.loads(row[0]) if row is not None else None
            return {str(k): int(v) for k, v in old.items()} if isinstance(old, dict) else {}
        except (ValueError, TypeError):
            return {}  # damaged: detection writes every site's level at its start

    def readings_stored(self) -> int:
        """Readings stored so far: ``readings.id`` is the arrival order and retention never
        deletes the newest reading (its id would be given again), so max(id) is the count
        ever stored, without scanning the table."""
        with self._read() as conn:
            return 0 if conn is None else int(conn.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0])

    def deadletter_counts(self) -> dict[str, int]:
        """Dead letters by reason, reasons in order."""
        with self._read() as conn:
            if conn is None:
                return {}
            return {str(r): int(n) for r, n in conn.execute("SELECT reason, count(*) FROM deadletters GROUP BY reason ORDER BY reason")}

    def refused_conflicts(self, since_ms: int, max_deadletters: int) -> RefusedConflicts:
        """Per (site, device): its readings the store stage refused as conflicting duplicates
        (same device, channel and time as a stored reading, another value; dead-lettered with
        reason ``conflict``) that arrived at or after ``since_ms``.

        The cost is bounded whatever the table holds: at most the newest ``max_deadletters``
        dead letters of the window are read, newest first through the ``deadletters_received``
        index; ``complete`` is False when older ones of the window were left unread."""
        with self._read() as conn:
            if conn is None:
                return RefusedConflicts({}, since_ms, True)
            rows = conn.execute(
                "SELECT topic, reason, detail FROM deadletters WHERE received_ms >= ? ORDER BY received_ms DESC LIMIT ?",
                (since_ms, max_deadletters),
            ).fetchall()
        counts: dict[tuple[str, str], int] = {}
        for topic, reason, detail in rows:
            # The store's dead letter of a message's rejected readings carries the commonest
            # reason and, for more than one, a tally in its detail ("N of M readings rejected
            # (bad_value 3, conflict 2); ..."): conflicts are counted from the tally.
            m = _CONFLICT_TALLY.search(str(detail))
            n = int(m.group(1)) if m else 1 if reason == CONFLICT_REASON else 0
            # A conflict is found only on a device's data topic, {prefix}/{site}/{device}/data;
            # the prefix may itself hold slashes, so the names are taken from the right.
            parts = str(topic).split("/")
            if n == 0 or len(parts) < 4:
                continue
            key = (parts[-3], parts[-2])
            counts[key] = counts.get(key, 0) + n
        return RefusedConflicts(counts, since_ms, len(rows) < max_deadletters)

    def newest_arrivals_ms(self) -> dict[tuple[str, str, str], int]:
        """Per (site, device, channel): when its newest reading by event time (drill or not)
        arrived. One seek per series through the readings_key index, one query each: what
        ``/metrics`` ran each scrape before it followed ``arrivals_since`` (issue 17); kept for
        ``benchmarks/metrics_cost.py``, which runs that collector side by side."""
        with self._read() as conn:
            if conn is None:
                return {}
            out: dict[tuple[str, str, str], int] = {}
            for sid, site, device, channel in conn.execute("SELECT id, site, device, channel FROM series").fetchall():
                row = conn.execute("SELECT received_ms FROM readings WHERE series = ? ORDER BY t_ms DESC LIMIT 1", (sid,)).fetchone()
                if row is not None:
                    out[(site, device, channel)] = int(row[0])
            return out

    def arrivals_since(self, after_series: int, after_reading: int, limit: int = 100_000) -> Arrivals:
        """What a follower of every series' newest reading needs since it last looked, read in
        one snapshot, at most ``limit`` rows (``more``: call again from where it ends).

        First the series created after ``after_series``, each with its newest reading by event
        time (one seek per series, in one statement); once none is left, the readings stored
        after ``after_reading`` (a range of ``readings.id``: only what arrived since) of the
        series known. On the first look (both 0) the readings stored so far are in the seeks,
        so the reading position starts at the newest. Applying a reading twice is harmless
        (the newest by event time wins). Retention never deletes a series' newest reading, so
        following these keeps each series' newest."""
        with self._read() as conn:
            if conn is None:
                return Arrivals([], [], 0, 0, False)
            conn.execute("BEGIN")
            try:
                last_reading = int(conn.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0])
                last_series = int(conn.execute("SELECT coalesce(max(id), 0) FROM series").fetchone()[0])
                if last_reading < after_reading or last_series < after_series:
                    # Another file (restored from a backup): the follower starts again.
                    return Arrivals([], [], last_series, last_reading, False)
                if after_series == 0 and after_reading == 0:
                    after_reading = last_reading
                series: list[tuple[int, str, str, str, int | None, int | None]] = []
                if last_series > after_series:
                    series = conn.execute(
                        "SELECT s.id, s.site, s.device, s.channel, r.t_ms, r.received_ms FROM series s LEFT JOIN readings r ON r.id = "
                        "(SELECT m.id FROM readings m WHERE m.series = s.id ORDER BY m.t_ms DESC LIMIT 1) "
                        "WHERE s.id > ? ORDER BY s.id LIMIT ?",
                        (after_series, limit),
                    ).fetchall()
                    if len(series) == limit:
                        return Arrivals(series, [], int(series[-1][0]), after_reading, True)
                readings: list[tuple[int, int, int]] = []
                more = False
                if last_reading > after_reading:
                    rows = conn.execute(
                        "SELECT id, series, t_ms, received_ms FROM readings WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                        (after_reading, last_reading, limit),
                    ).fetchall()
                    readings = [(int(sid), int(t), int(r)) for _i, sid, t, r in rows]
                    more = len(rows) == limit
                    after_reading = int(rows[-1][0]) if more else last_reading
            finally:
                conn.execute("COMMIT")
            return Arrivals(series, readings, last_series, after_reading, more)

    def status_last_id(self) -> int:
        """The newest device status row's id (0: none; lower than before: another file)."""
        with self._read() as conn:
            return 0 if conn is None else int(conn.execute("SELECT coalesce(max(id), 0) FROM device_status").fetchone()[0])

    def newest_statuses_upto(self, upto_id: int, chunk: int) -> Iterator[list[tuple[int, str, str, str]]]:
        """A first look at devices' statuses: each device's newest row among those up to
        ``upto_id`` (id, site, device, raw status), in lists of up to ``chunk`` rows, read as
        they are taken (one query, one pass over the device_status_device index); the rows
        stored after ``upto_id`` are for ``statuses_after``."""
        with self._read() as conn:
            if conn is None:
                return
            cur = conn.execute(
                "SELECT d.id, d.site, d.device, d.status FROM device_status d "
                "JOIN (SELECT max(id) AS id FROM device_status WHERE id <= ? GROUP BY site, device) m ON d.id = m.id",
                (upto_id,),
            )
            while rows := cur.fetchmany(chunk):
                yield [(int(i), str(a), str(b), str(st)) for i, a, b, st in rows]

    def statuses_after(self, after_id: int, limit: int) -> list[tuple[int, str, str, str]]:
        """Device status rows stored after row ``after_id`` (id, site, device, raw status), the
        first ``limit`` in arrival order. Retention never deletes a device's newest status, so
        following these rows keeps every device's latest one."""
        with self._read() as conn:
            if conn is None:
                return []
            rows = conn.execute(
                "SELECT id, site, device, status FROM device_status WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        return [(int(i), str(a), str(b), str(st)) for i, a, b, st in rows]

    def site_activity(self, site: str, window_ms: int) -> list[ChannelActivity]:
        """Each channel of a site (by device, channel) with its newest real reading and the
        count of real readings in the ``window_ms`` before that one — counted back from the
        channel's own newest reading, so a replayed feed shows its data too."""
        with self._read() as conn:
            if conn is None:
                return []
            out = []
            for sid, device, channel, kind in self._series(conn, site):
                row = conn.execute("SELECT t_ms, received_ms FROM readings WHERE series = ? AND drill = 0 ORDER BY t_ms DESC LIMIT 1", (sid,)).fetchone()
                if row is None:
                    out.append(ChannelActivity(device, channel, kind, None, None, 0))
                    continue
                n = conn.execute("SELECT count(*) FROM readings WHERE series = ? AND t_ms > ? AND drill = 0", (sid, row[0] - window_ms)).fetchone()[0]
                out.append(ChannelActivity(device, channel, kind, int(row[0]), int(row[1]), int(n)))
            return out

    def latest_statuses(self, site: str, devices: Iterable[str]) -> dict[str, tuple[str, int]]:
        """Each device's latest status heartbeat as stored: (raw status text, t_ms)."""
        with self._read() as conn:
            if conn is None:
                return {}
            out = {}
            for device in devices:
                # Newest first by arrival (id): one short backward scan per device.
                row = conn.execute("SELECT status, t_ms FROM device_status WHERE site = ? AND device = ? ORDER BY id DESC LIMIT 1", (site, device)).fetchone()
                if row is not None:
                    out[device] = (str(row[0]), int(row[1]))
            return out

    def all_latest_statuses(self) -> dict[tuple[str, str], str]:
        """Every device's latest status heartbeat as stored (raw status text), by (site, device):
        one pass over the device_status_device index, then one row per device. What
        ``/metrics`` read and parsed each scrape before it followed ``statuses_after`` (issue
        17); kept for ``benchmarks/metrics_cost.py``, which runs that collector side by side."""
        with self._read() as conn:
            if conn is None:
                return {}
            rows = conn.execute(
                "SELECT d.site, d.device, d.status FROM device_status d "
                "JOIN (SELECT max(id) AS id FROM device_status GROUP BY site, device) m ON d.id = m.id"
            ).fetchall()
            return {(str(site), str(device)): str(status) for site, device, status in rows}

    def site_points(self, site: str, window_ms: int, max_points: int) -> list[ChannelPoints]:
        """Each channel's real readings over the ``window_ms`` before the site's newest one,
        thinned to at most about ``max_points`` (every n-th, and the last): a chart only
        shows the shape. Channels without readings in the window are left out."""
        with self._read() as conn:
            if conn is None:
                return []
            series = self._series(conn, site)
            newest = 0
            for sid, *_ in series:
                row = conn.execute("SELECT max(t_ms) FROM readings WHERE series = ? AND drill = 0", (sid,)).fetchone()
                newest = max(newest, int(row[0] or 0))
            since = newest - window_ms
            out = []
            for sid, device, channel, kind in series:
                n = int(conn.execute("SELECT count(*) FROM readings WHERE series = ? AND drill = 0 AND t_ms >= ?", (sid, since)).fetchone()[0])
                if n == 0:
                    continue
                stride = max(1, -(-n // max_points))
                rows = conn.execute(
                    "SELECT t_ms, value FROM (SELECT t_ms, value, row_number() OVER (ORDER BY t_ms) AS rn FROM readings "
                    "WHERE series = ? AND drill = 0 AND t_ms >= ?) WHERE (rn - 1) % ? = 0 OR rn = ? ORDER BY t_ms",
                    (sid, since, stride, n),
                ).fetchall()
                out.append(ChannelPoints(device, channel, kind, [(int(t), float(v)) for t, v in rows]))
            return out

    @staticmethod
    def _series(conn: sqlite3.Connection, site: str) -> list[tuple[int, str, str, str]]:
        return conn.execute("SELECT id, device, channel, kind FROM series WHERE site = ? ORDER BY device, channel", (site,)).fetchall()
