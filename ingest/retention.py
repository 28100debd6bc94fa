"""Retention of the journal: how long and how much of dead letters, device status and
(optionally) readings it keeps.

The store stage runs one pass every few seconds (``Store.prune``); each pass works in short
transactions of at most ``rows`` rows, at most ``transactions`` of them per table, so the
writers sharing the file (the store stage itself, detection's and the forwarder's state) never
wait long, and a backlog goes over several passes.

- **Dead letters** go after ``deadletter_keep_days``, and the oldest go first while the table
  is over ``deadletter_keep_mb`` (a flood of bad messages must not fill the disk).
- **Device status** likewise (``status_keep_days``, ``status_keep_mb``), except each device's
  newest row, which the console shows however old.
- **Readings** are kept forever unless ``journal_keep_days`` is set. Then a reading goes once
  it is that old by arrival *and* the forwarder has sent it (when forwarding is configured) *and*
  detection has judged it and saved a snapshot past it (detection replays the readings after
  its snapshot when it restarts) *and* it is older than the detectors' longest window before its
  series' newest reading (what detection re-reads when it starts without a snapshot). The
  newest reading always stays: its id would be handed out again, behind every saved position.

Measuring a table's size must not scan the table. Each table's size is a running total kept
here: measured once (the first pass), then each pass adds the rows with an id above the last
one seen (a rowid range: only what arrived since) and subtracts what it deleted (summed in the
deleting transaction). Sizes are ``journal.ROW_SIZE`` estimates — text and blob bytes plus a
fixed allowance per row — not pages: SQLite's ``dbstat`` would walk every page of the table,
and the file's page count mixes all tables. Deleted pages are reused by later inserts, so the
file stops growing; it does not shrink (``auto_vacuum`` is off, and turning it on needs a VACUUM
that holds the writer for the whole file).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from geowarn.core.logfields import kv
from geowarn.ingest.journal import DETECTION_STATS_KEY, Journal, Pruned

log = logging.getLogger(__name__)

#: The forwarder's saved position (``ingest/forwarder.py``'s POSITION_KEY; that module imports
#: the InfluxDB client, which the store stage need not load; tests check the two agree).
FORWARDER_POSITION_KEY = "forwarder.influx.position"
#: How often the readings scan starts again from the oldest reading: readings kept for their
#: series' detection window become prunable once newer ones arrive.
READINGS_RESCAN_MS = 3_600_000

DAY_MS = 86_400_000
MB = 1024 * 1024


@dataclass(frozen=True)
class Policy:
    """What the journal keeps (from the settings; None: no limit of that kind)."""

    deadletter_keep_ms: int
    deadletter_keep_bytes: int
    status_keep_ms: int
    status_keep_bytes: int
    readings_keep_ms: int | None = None
    #: Per series, readings within this of its newest event time stay (detection's window).
    readings_horizon_ms: int = 0
    #: Forwarding to InfluxDB is configured: unsent readings stay.
    forwarding: bool = False

    @classmethod
    def from_settings(cls, s: Any, horizon_s: float) -> "Policy":
        keep_days = s.journal_keep_days
        return cls(
            deadletter_keep_ms=int(s.deadletter_keep_days * DAY_MS),
            deadletter_keep_bytes=int(s.deadletter_keep_mb * MB),
            status_keep_ms=int(s.status_keep_days * DAY_MS),
            status_keep_bytes=int(s.status_keep_mb * MB),
            readings_keep_ms=None if keep_days is None else int(keep_days * DAY_MS),
            readings_horizon_ms=int(horizon_s * 1000),
            forwarding=bool(s.influx_url),
        )


@dataclass
class _Size:
    """A table's running size: rows and bytes up to id ``seen``."""

    rows: int = 0
    bytes: int = 0
    seen: int = 0
    measured: bool = False


class Retention:
    """The journal's retention passes, over the store stage's journal connection."""

    def __init__(self, journal: Journal, policy: Policy) -> None:
        self.journal = journal
        self.policy = policy
        self.sizes = {"deadletters": _Size(), "device_status": _Size()}
        self._readings_from: int | None = None  # readings below this were looked at this round
        self._readings_round_ms = 0

    def size(self, table: str) -> _Size:
        """The table's running size, brought up to date with the rows added since the last look."""
        s = self.sizes[table]
        rows, nbytes, newest = self.journal.table_size(table, s.seen)
        s.rows, s.bytes, s.seen, s.measured = s.rows + rows, s.bytes + nbytes, max(s.seen, newest), True
        return s

    def _deleted(self, table: str, p: Pruned) -> None:
        s = self.sizes[table]
        s.rows, s.bytes = max(0, s.rows - p.rows), max(0, s.bytes - p.bytes)
        # The newest row deleted: SQLite hands its id out again, so look from what is left.
        s.seen = min(s.seen, p.newest_id)

    def _table(self, table: str, now_ms: int, rows: int, transactions: int) -> tuple[int, int]:
        """Age, then size, within one budget of transactions; (rows by age, rows by size)."""
        j, p = self.journal, self.policy
        by_age, by_size = (
            (j.prune_deadletters, j.prune_deadletters_by_size) if table == "deadletters" else (j.prune_statuses, j.prune_statuses_by_size)
        )
        keep_ms, keep_bytes = (p.deadletter_keep_ms, p.deadletter_keep_bytes) if table == "deadletters" else (p.status_keep_ms, p.status_keep_bytes)
        aged = sized = 0
        budget = transactions
        self.size(table)
        while budget > 0:
            budget -= 1
            pruned = by_age(now_ms - keep_ms, rows)
            self._deleted(table, pruned)
            aged += pruned.rows
            if pruned.rows < rows:
                break
        while budget > 0:
            excess = self.size(table).bytes - keep_bytes
            if excess <= 0:
                break
            budget -= 1
            pruned = by_size(excess, rows)
            self._deleted(table, pruned)
            sized += pruned.rows
            if pruned.rows == 0:
                break  # only devices' newest statuses are left
        return aged, sized

    def readings_bound(self) -> int:
        """The highest reading id retention may delete: judged and snapshotted by detection,
        sent by the forwarder (when forwarding), and below the newest reading."""
        j = self.journal
        stats = j.get_state(DETECTION_STATS_KEY) or {}
        # Detection saves its position with each snapshot (after the snapshot itself), and the
        # floor a restart would read on from (older while sites wait to be saved, and while a
        # restart is still replaying): nothing above either may go. No snapshot yet: none.
        bound = 0
        if isinstance(stats, dict):
            bound = int(stats.get("position", 0) or 0)
            if isinstance(stats.get("floor"), int):
                bound = min(bound, stats["floor"])
        if self.policy.forwarding:
            bound = min(bound, int(j.get_state(FORWARDER_POSITION_KEY, 0) or 0))
        return min(bound, j.last_id() - 1)

    def _readings(self, now_ms: int, rows: int, transactions: int) -> int:
        p = self.policy
        if p.readings_keep_ms is None:
            return 0
        if self._readings_from is None or now_ms - self._readings_round_ms >= READINGS_RESCAN_MS:
            self._readings_from, self._readings_round_ms = self.journal.first_reading_id() - 1, now_ms
        bound = self.readings_bound()
        total = 0
        for _ in range(transactions):
            start = self._readings_from
            if start >= bound:
                break
            upto = min(bound, start + rows)
            n, end = self.journal.prune_readings(start, upto, now_ms - p.readings_keep_ms, p.readings_horizon_ms)
            total += n
            self._readings_from = end
            if end < upto:
                break  # a young reading: the rest are younger still
        return total

    def run(self, now_ms: int, rows: int, transactions: int) -> dict[str, int]:
        """One pass; how many rows went, per table and why."""
        dl_age, dl_size = self._table("deadletters", now_ms, rows, transactions)
        st_age, st_size = self._table("device_status", now_ms, rows, transactions)
        readings = self._readings(now_ms, rows, transactions)
        out = {"deadletters": dl_age + dl_size, "statuses": st_age + st_size, "readings": readings}
        if dl_size or st_size:
            log.info("pruned the journal to its size caps", extra=kv(
                deadletters=dl_size, deadletter_mb=round(self.sizes["deadletters"].bytes / MB, 1),
                statuses=st_size, status_mb=round(self.sizes["device_status"].bytes / MB, 1)))
        return out
