"""The journal: the SQLite (WAL) file that makes a reading durable before it is acknowledged.

It is the embedded default store (``geowarn export`` reads it), the buffer in front of
InfluxDB (the forwarder keeps its position here), and the home of dead letters, device status
and small pieces of persisted state. A reading is identified by site + device + channel + time:
storing it twice stores it once.

One ``Journal`` object is one SQLite connection and belongs to one thread; the daemon opens one
for the pipeline and one for the forwarder (WAL lets them work side by side).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from geowarn.config.registry import ChannelInfo, Registry

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

#: How much of a rejected payload the dead-letter table keeps.
DEADLETTER_KEEP_BYTES = 64 * 1024

_INSERT_READING = "INSERT OR IGNORE INTO readings (series, t_ms, value, drill, received_ms) VALUES (?, ?, ?, ?, ?)"
_INSERT_DEADLETTER = "INSERT INTO deadletters (received_ms, topic, reason, detail, payload) VALUES (?, ?, ?, ?, ?)"
_INSERT_STATUS = "INSERT INTO device_status (site, device, t_ms, received_ms, status) VALUES (?, ?, ?, ?, ?)"


def to_ms(t: float) -> int:
    return int(round(t * 1000.0))


class Journal:
    def __init__(self, path: str | Path, *, sync: Literal["full", "normal"] = "full", readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no journal at {self.path}")
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout = 30000")
        if not readonly:
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute(f"PRAGMA synchronous = {sync.upper()}")
            self.conn.executescript(SCHEMA)
        self._series: dict[tuple[str, str, str], int] = {}

    def close(self) -> None:
        self.conn.close()

    # -- series ----------------------------------------------------------------------------

    def series_ids(self, registry: Registry) -> dict[ChannelInfo, int]:
        """The series id of every channel of the registry, creating those not seen before."""
        out: dict[ChannelInfo, int] = {}
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for chans in registry.channels.values():
                for info in chans.values():
                    key = (info.site, info.device, info.channel)
                    row = self.conn.execute(
                        "SELECT id, kind, admin FROM series WHERE site=? AND device=? AND channel=?", key
                    ).fetchone()
                    if row is None:
                        cur = self.conn.execute(
                            "INSERT INTO series (site, device, channel, kind, admin) VALUES (?, ?, ?, ?, ?)",
                            (*key, info.kind, info.admin),
                        )
                        sid = int(cur.lastrowid or 0)
                    else:
                        sid = row[0]
                        if (row[1], row[2]) != (info.kind, info.admin):
                            # The registry changed a channel's kind or a site's county: later
                            # readings are forwarded with the new tags.
                            self.conn.execute("UPDATE series SET kind=?, admin=? WHERE id=?", (info.kind, info.admin, sid))
                    out[info] = sid
                    self._series[key] = sid
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
        statuses: Iterable[tuple[str, str, int, int, str]] = (),
        state: Mapping[str, Any] | None = None,
    ) -> int:
        """Store a batch in one transaction; returns how many readings were new.

        readings: (series id, t_ms, value, drill 0/1, received_ms); duplicates are ignored.
        state: keys to set in the same transaction (the store stage's position in the message log).
        """
        conn = self.conn
        conn.execute("BEGIN")
        try:
            before = conn.total_changes
            if readings:
                conn.executemany(_INSERT_READING, readings)
            inserted = conn.total_changes - before
            conn.executemany(_INSERT_DEADLETTER, deadletters)
            conn.executemany(_INSERT_STATUS, statuses)
            for key, value in (state or {}).items():
                self.set_state(key, value)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return inserted

    # -- state -----------------------------------------------------------------------------

    def get_state(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_state(self, key: str, value: Any) -> None:
        self.conn.execute(
            "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, json.dumps(value)),
        )

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
