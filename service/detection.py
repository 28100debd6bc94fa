"""Detection as a journal consumer in its own process (stages 3–5 of DESIGN §1).

The ingest pipeline makes readings durable and acknowledges them; this worker is the journal
source of the event-time judge (service/judge.py, the same judge ``geowarn replay`` runs): it
reads the journal after its saved position and hands each reading to the judge, which runs
site fusion (quality guards, detectors, no-data timers), writes alert events and drives the
response chain. Running in a separate process it has the second core to itself, so the cost
of the detectors never slows acknowledgement, and a burst only makes detection lag for a
moment (its lag is logged).

What is live-only stays here: devices under maintenance, the fusion snapshot and positions,
people's requests (``DetectionJob``) and the wiring of the outbox, notifiers and dispatcher.
Requests pass the control gate first (alerts/control.py): unsigned, stale or replayed ones
are refused, answered (signed) and audited in the API's audit table; the nonces seen are
kept in the journal's state (``NONCES_KEY``) so a restart forgets none.

Each reading goes to the judge with its arrival time (``received_ms``): fusion holds a reading
stamped ahead of its arrival until the clock reaches its time (a fusion timer, run by
``judge.at(now)`` after each batch), so a reading stamped early cannot blind its channel; held
readings are in the snapshot. Devices' clock health (``SiteFusion.clock_health()``) is saved in
the journal's state under ``CLOCK_HEALTH_KEY`` for the console, ``/metrics`` and the zero
report, at each snapshot and whenever a device's clock health changes.

Devices' status reaches detection too: each status row whose ``sensor_state`` names sensors
(the national convention's ``S1_ZT``) tells fusion which channels' sensors their device
reports faulty (``SiteFusion.sensor_state``; such a channel's readings are stored but raise
nothing). Status rows are read in arrival order beside the readings, each applied before the
readings that arrived with or after it, and their position is saved with the snapshot; the
channels reported faulty are in the journal's state under ``SENSOR_FAULTS_KEY``. Without a
snapshot, each device's latest status says.

Its state is saved site by site (issue 17): a site whose state changed is written again, as
one row of the journal's ``site_state`` table with the journal positions (readings, statuses)
it reflects, once it has been changed for ``snapshot_interval_s``, a few sites per step
(``SAVE_BUDGET_S``), oldest change first, and whatever changed at each checkpoint within
``CHECKPOINT_BUDGET_S`` (``STOP_BUDGET_S`` at the stop). No save stops detection for long and
no value grows with the fleet. A header (``STATE_KEY``) written with every save names the floor: the positions
before the oldest change not yet saved. After a crash the rows are put together again, and
the journal is read from the floor on, each site taking only what came after its own row;
so it neither repeats nor forgets a warning. A file lock keeps a second worker (say, an
orphan of a killed daemon) from judging the same journal at once.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from geowarn.alerts.chain import ResponseChain
from geowarn.alerts.log import ALERTS_FILE, AlertLog
from geowarn.alerts.outbox import OUTBOX_FILE
from geowarn.config.settings import Loaded
from geowarn.core.clock import Clock, EventClock, WallClock
from geowarn.core.events import LevelChange
from geowarn.core.timefmt import rfc3339
from geowarn.detectors.clockhealth import CLOCK_HEALTH_KEY, CLOCK_KINDS
from geowarn.detectors.fusion import SiteFusion
from geowarn.ingest.commands_cn import REPLY_TOPIC
from geowarn.ingest.journal import DETECTION_STATS_KEY, Journal
from geowarn.service.judge import Judge
from geowarn.service.worker import WorkerProcess
from geowarn.core.logfields import kv

log = logging.getLogger(__name__)

#: The state of before per-site rows (one value for the whole fleet): read once, then deleted.
SNAPSHOT_KEY = "fusion.snapshot.v2"
#: The per-site state's header: {"floor", "status_floor", "position", "status_position",
#: "globals"} (see the module docstring).
STATE_KEY = "fusion.state.v3"
#: Time a step may spend saving sites changed for ``snapshot_interval_s`` or longer.
SAVE_BUDGET_S = 0.02
#: Saving the sites of channels parked in memory (for the live budget; restored from old rows),
#: per step: in a storm it follows the wakes, so their texts do not pile up in memory waiting
#: for the age-ordered saves.
SPILL_SOON_BUDGET_S = 0.1
#: Time a step may spend saving the sites of changes a timer announced (see ``step``).
LOOSE_BUDGET_S = 0.5
#: Time a checkpoint may spend saving the sites changed since their last save: periodic
#: (a warning must not wait behind it), and at the stop; what is left is replayed from the
#: journal by the next start.
CHECKPOINT_BUDGET_S = 0.05
STOP_BUDGET_S = 2.0
EMITTED_KEY = "fusion.emitted_through"
#: The channels whose device reports their sensor faulty (``SiteFusion.sensor_faults()``).
SENSOR_FAULTS_KEY = "detection.sensor_faults"
#: Status rows read at most per batch of readings.
STATUS_BATCH = 1000
#: Devices under maintenance: {device: [since, until, by, note]} (times by the daemon's clock).
MAINTENANCE_KEY = "detection.maintenance"
#: The control gate's nonces seen within its window: {nonce: ts}.
NONCES_KEY = "control.nonces"
#: Audit rows a minute for refused requests; beyond, one row counts the rest (a flood of
#: forgeries must not become a flood of fsync'd rows).
AUDIT_PER_MINUTE = 20
#: Requests answered per step at most, and about how long they may take: requests share the
#: detection worker's loop with the judging of readings, which must go on during a flood.
REQUESTS_PER_STEP = 20
REQUEST_BUDGET_S = 0.2
BATCH = 5000



#: The keys of a site's saved state (``SiteFusion.site_state``).
_PART_KEYS = frozenset({"sites", "nodata", "held", "health", "faults"})


def _status_before(status: tuple[int, str, str, int, int, str, int | None], reading_id: int, received_ms: int) -> bool:
    """Whether a journal status row stands before the reading: by the id of the last reading
    stored before it (exact), or, for a row from before that was recorded, by arrival time."""
    after = status[6]
    return after < reading_id if after is not None else status[4] <= received_ms

class Detection:
    """The judge over the journal. Used in-process by tests and by the worker process below."""

    def __init__(self, loaded: Loaded, journal: Journal, publish: Any, clock: Clock, chain: ResponseChain | None = None) -> None:
        s = loaded.settings
        self.registry = loaded.registry
        self.journal = journal
        self.clock = clock
        #: With an event clock (the demo, a recorded feed into a live daemon) timers run before
        #: each reading, as in a replay; with the wall clock after each batch.
        self.event_time = isinstance(clock, EventClock)
        #: ``chain`` (alerts.live.LiveChain.chain) is fed every level change; None: alerts.jsonl only.
        self.judge = Judge(
            loaded.registry, AlertLog(Path(s.data_dir) / ALERTS_FILE, publish, s.topic_prefix), clock, chain,
            held=self._held, announced=self._log_change,
        )
        self.fusion = self.judge.fusion
        self.position = 0
        #: The last device status row applied (its ``sensor_state``).
        self.status_position = 0
        #: device -> (since, until): its readings (by arrival) are stored but not judged, and its
        #: silence raises nothing, while a technician works on it.
        self.maintenance: dict[str, tuple[float, float]] = {
            d: (float(v[0]), float(v[1])) for d, v in (self.journal.get_state(MAINTENANCE_KEY) or {}).items()
        }
        saved = self.journal.get_state(DETECTION_STATS_KEY) or {}
        self.judged = int(saved.get("readings", 0))  # cumulative across restarts, as a counter should be
        self.judging_s = float(saved.get("seconds", 0.0))
        #: Sites are saved once changed for this long (the journal has what came since).
        self.save_after_s = float(s.snapshot_interval_s)
        self.fusion.park_after_s = float(s.park_after_s)
        self.fusion.live_max = live_budget(s.live_channels_max)
        #: Sites whose parked channels hold their texts in memory (parked for the budget,
        #: ``SiteFusion.park_over_budget``; restored from rows of before ``channel_state``), to
        #: be saved soon, so that the texts are spilled.
        self._spill_soon: OrderedDict[str, None] = OrderedDict()
        #: Sites whose saved texts may include some their row no longer names (a channel gone
        #: from the registry; the site started afresh, its row unreadable): those go with the
        #: site's next row.
        self._tidy: set[str] = set()
        # Channels' texts are saved apart from their sites' rows, and parked ones kept saved
        # only (issue 17: a national fleet's quiet channels in hundreds of bytes each, not the
        # 1-2 KB of their text; a site's save writes the channels that spoke, not all again).
        self.fusion.text_source = journal.channel_text
        #: While a restart reads on from the floor: site -> (position, status position) of its
        #: row; its readings and statuses up to there are in the row already.
        self._skip: dict[str, tuple[int, int]] = {}
        self._skip_upto = (0, 0)
        #: Rows of sites no longer in the registry, deleted by the next full save.
        self._stale_rows: list[str] = []
        self._levels: dict[str, int] = {}  # each site's level as its row in the journal has it
        #: Sites whose state came from before per-site rows (the one-value snapshot) or from a
        #: rebuild out of the journal's recent readings: neither can be rebuilt by reading on
        #: from a floor, so no header is written until each has a row of its own (a restart
        #: meanwhile starts as this one did).
        self._initial: set[str] = set()
        self._legacy = False
        #: Changes announced outside a batch's readings (timers, statuses on their own): their
        #: sites are saved at once, or a restart would announce them again.
        self._loose: set[str] = set()
        #: Changes of held readings judged as a status arrived (``_statuses``), for the batch.
        self._released: list[LevelChange] = []
        #: While the start reads on from the saved floor (``_resume_step``): (the position up
        #: to which changes were announced before, so judged silently; the journal's newest
        #: at the start, judged and announced before fusion's timers start). None: running.
        self.resuming: tuple[int, int] | None = None
        #: Whether the last batch left readings (or statuses) in the journal unjudged: then
        #: fusion's timers wait (``step``).
        self._behind = False
        self._resume_started = (0.0, 0)
        self._persisted: dict[str, int] = {}
        self._mark()
        self._resume()

    # -- start -------------------------------------------------------------------------------

    def _resume(self) -> None:
        """From the last snapshot (exact), or without one from the recent journal.

        With a snapshot: the readings judged before the crash (up to the position whose
        changes were last announced, EMITTED_KEY) are replayed silently to rebuild the state;
        every reading after it is judged anew and its changes announced, so a lift or a raise
        that happened while detection was down comes out with its own reason and evidence.
        """
        persisted = self.journal.site_levels()
        self._levels = dict(persisted)
        header = self.journal.get_state(STATE_KEY)
        if header is not None and not (isinstance(header, dict) and isinstance(header.get("floor"), int)
                                       and isinstance(header.get("status_floor"), int) and isinstance(header.get("globals", {}), dict)):
            log.error("detection's saved state header is unreadable; rebuilding from the journal's recent readings", extra=kv(header=str(header)[:200]))
            header = None
        snap: dict[str, Any] | None = self.journal.get_state(SNAPSHOT_KEY) if header is None else None
        if header is not None or snap is not None:
            if header is not None:
                self._restore_sites(header)
            elif snap is not None:  # the one-value state of before: restored, then saved per site and deleted
                self.fusion.restore(snap["state"])
                self._log_failed("the site starts afresh")  # (no floor of its own to read on from: from here)
                self.position = int(snap["position"])
                if "status_position" in snap:
                    self.status_position = int(snap["status_position"])
                else:  # a snapshot from before statuses were read: each device's latest says
                    self._latest_statuses()
                self._legacy = True
                self._mark()
                self.fusion.dirty.update((site, self.fusion.dirty_mark) for site in self.registry.sites)
                self._initial = set(self.registry.sites)
            # The journal is read on by step(), a batch at a time (see ``resuming``): the
            # daemon is online meanwhile, and a national fleet's replay does not hold it up.
            self.resuming = (int(self.journal.get_state(EMITTED_KEY, 0) or 0), self.journal.last_id())
            self._resume_started = (time.monotonic(), self.position)
            self._persisted = persisted
            log.info("detection resuming: reading on from the saved floor",
                     extra=kv(floor=self.position, silent_until=self.resuming[0], catch_up_to=self.resuming[1]))
            return
        else:
            self._latest_statuses()
            horizon_s = max(site.policy.velocity_window_s for site in self.registry.sites.values())
            series = {sid: info for info, sid in self.journal.series_ids(self.registry).items()}
            for sid, info in series.items():
                latest = self.journal.latest_t_ms(sid)
                if latest is None:
                    continue
                for t_ms, value in self.journal.recent(sid, latest - int(horizon_s * 1000) - 1):
                    self.fusion.update_all(info, t_ms / 1000.0, value)
                self._soon(self.fusion.park_over_budget())  # (a national fleet's channels do not fit at once)
            self.position = self.journal.last_id()
            self._mark()
            self.fusion.dirty.update((site, self.fusion.dirty_mark) for site in self.registry.sites)
            self._initial = set(self.registry.sites)
            for site, level in persisted.items():
                if site in self.registry.sites and self.fusion.level(site) < level:
                    # Without a snapshot the recent window is all we know: keep what was
                    # announced; the detectors lower it in their own time.
                    self.fusion.set_level(site, level)
            for site in self.registry.sites:
                level, before = self.fusion.level(site), int(persisted.get(site, 0))
                if level > before:
                    self.judge.announce(LevelChange(site, self.clock.now(), level, before, "recomputed from the journal after a restart"))
        self._started(persisted)

    def _started(self, persisted: dict[str, int]) -> None:
        """The end of the start: the journal is judged up to where it stood at the start."""
        # The chain's clock starts (if the replay's steps have not ticked it already): its
        # timers and zero reports run from now. Timers due now
        # (devices silent while detection was down, held readings come due) are announced, not
        # dropped; the levels they moved are saved with the rest, and their sites at once (no
        # position says they were announced: a crash would announce them again).
        ticked = self.judge.start(fusion_timers=not self._behind)  # (behind: at the head, by step)
        # Held readings come due while detection was down built their channels again.
        self._soon(self.fusion.park_over_budget())
        self._save_levels(self.registry.sites, drop=[s for s in persisted if s not in self.registry.sites])
        self.save_sites(None, only={c.site for c in ticked})

    def resume(self) -> None:
        """The whole of the start's reading on at once (what ``step`` does a batch at a time)."""
        while self.resuming is not None:
            self._resume_step()

    def _resume_step(self) -> int:
        """One batch of the start's reading on from the floor: silently up to the position
        whose changes were announced before the stop, then judged and announced up to where
        the journal stood at the start; then the start ends (``_started``)."""
        assert self.resuming is not None
        silent_until, catch_up_to = self.resuming
        if not self.event_time:
            # The response chain's timers run meanwhile: its warnings are all restored, and an
            # escalation due must not wait a national fleet's replay. Fusion's wait for the
            # end (they judge what has not come, and the replay is not done).
            self.judge.at(self.clock.now(), fusion_timers=False)
        # The replay builds every channel's detectors anew, many objects a reading: the cyclic
        # collector, run as often as that allocates, scanned the growing heap again and again
        # (a fifth of a 10,000-device replay). Off for the step; it runs between steps.
        collecting = gc.isenabled()
        gc.disable()
        try:
            if self.position < silent_until and (n := self._consume(emit=False, upto=silent_until)):
                return n
            # Judged and announced until the journal runs out (statuses after the last reading
            # too), or one more batch once past where it stood at the start: a stream that goes
            # on arriving faster than it is judged must not keep the start from ever ending.
            at_start_head = self.position >= catch_up_to
            if self._consume() and not at_start_head:
                return 1
        finally:
            if collecting:
                gc.enable()
            self._soon(self.fusion.park_over_budget())  # (saved once started: see step)
        took, floor = time.monotonic() - self._resume_started[0], self._resume_started[1]
        self.resuming = None
        self._started(self._persisted)
        self._persisted = {}
        oldest = next(iter(self.fusion.dirty.values()), None)
        self.save_stats(self.position if oldest is None else oldest[0])
        log.info("detection resumed", extra=kv(replayed=self.position - floor, seconds=round(took, 1), position=self.position))
        return 1  # come back at once: what arrived meanwhile is judged as usual

    # -- the loop ----------------------------------------------------------------------------

    def _restore_sites(self, header: dict[str, Any]) -> None:
        """The fusion state from the site rows, read on from the header's floor."""
        skip: dict[str, tuple[int, int]] = {}
        inline: set[str] = set()

        def parts() -> Iterator[dict[str, Any]]:  # a row at a time, parsed and restored, not all at once
            for site, pos, spos, body in self.journal.site_states():
                if site not in self.registry.sites:
                    self._stale_rows.append(site)
                    continue
                try:
                    part = json.loads(body)
                    if not (isinstance(part, dict) and _PART_KEYS <= part.keys() and isinstance(part["sites"], dict)):
                        raise ValueError("not a site's saved state")
                except ValueError as exc:
                    # A damaged row (the disk, a hand edit) must not keep detection from starting:
                    # the site starts afresh from the floor, the others exactly where they were.
                    log.error("a site's saved detector state is unreadable; the site starts afresh from the journal",
                              extra=kv(site=site, error=str(exc)[:200]))
                    self._tidy.add(site)
                    continue
                skip[site] = (pos, spos)
                if '"z":' in body or '"guard":' in body:  # texts inline, or the parts parsed (rows of before): in memory
                    inline.add(site)
                yield part

        self.fusion.restore_parts(header.get("globals", {}), parts())
        self._log_failed("the site starts afresh from the journal")  # an entry of its row unreadable: from the floor
        for site in self.fusion.failed:
            skip.pop(site, None)
        self._tidy |= self.fusion.failed | self.fusion.dropped
        self.position, self.status_position = int(header["floor"]), int(header["status_floor"])
        self._skip = {site: p for site, p in skip.items() if p[0] > self.position or p[1] > self.status_position}
        self._skip_upto = (max((p[0] for p in self._skip.values()), default=0), max((p[1] for p in self._skip.values()), default=0))
        self._mark()
        # Rows of before hold their texts in memory: saved soon, the texts go to ``channel_state``
        # (after an upgrade a national fleet's would otherwise stay, 1-2 KB a channel, until each
        # site next changes). The texts of channels gone from the registry go soon too.
        for site in (inline | self.fusion.dropped) - self.fusion.failed:
            self.fusion.dirty.setdefault(site, self.fusion.dirty_mark)
            self._spill_soon[site] = None
        if self._skip:
            log.info("detection state restored", extra=kv(sites=len(skip), replay_from=self.position, replay_sites_until=self._skip_upto[0]))

    def _log_failed(self, what: str) -> None:
        """Log the sites the restore could not read an entry of (``SiteFusion.failed``)."""
        for site in self.fusion.failed:
            error = next((u[4] for u in self.fusion.unreadable if u[0] == site and u[3] == "row"), "")
            log.error(f"a site's saved detector state is unreadable; {what}", extra=kv(site=site, error=error))

    def _mark(self) -> None:
        """What a site changed from now on is saved against: the positions judged so far."""
        self.fusion.dirty_mark = (self.position, self.status_position, time.monotonic())

    @property
    def emitted(self) -> int:
        return self.judge.emitted

    def _consume(self, emit: bool = True, upto: int | None = None) -> int:
        """Judge the next batch of journal readings (up to id ``upto``); returns how many were read."""
        limit = BATCH if upto is None else max(0, min(BATCH, upto - self.position))
        rows = self.journal.read_after_received(self.position, limit) if limit else []
        # Statuses that arrived with or before these readings go first (all of them when no
        # reading is waiting): a sensor reported faulty judges none of its readings after it.
        statuses = self.journal.statuses_after(self.status_position, STATUS_BATCH)
        if not rows:
            self._behind = len(statuses) == STATUS_BATCH
            if upto is None and statuses:
                self._mark()
                self._statuses(statuses, None, emit=emit)
                released, self._released = self._released, []
                # No reading's position says these were announced: their sites are saved at once.
                self._loose.update(c.site for c in released)
                self._counted(released, emit)
            return 0
        pending = 0
        self._behind = len(rows) == limit
        event_time = self.event_time
        judge = self.judge
        announced = clock = False
        changed: set[str] = set()  # sites whose announced level may have moved
        maintenance = self.maintenance
        skip = self._skip
        self._mark()
        # A full page of statuses may have more behind it: once it is used up, the readings after
        # it wait for the next page (a status must never come after a reading it stood before).
        more = len(statuses) == STATUS_BATCH
        judged = len(rows)
        for i, (_id, site, device, channel, t_ms, value, drill, received_ms) in enumerate(rows):
            if pending < len(statuses) and _status_before(statuses[pending], _id, received_ms):
                pending = self._statuses(statuses, (_id, received_ms), pending, emit=emit)
                if more and pending == len(statuses):
                    judged = i
                    self._behind = True
                    break
            info = self.registry.channel(site, device, channel)
            if info is None:
                continue
            t = t_ms / 1000.0
            if maintenance and device in maintenance:
                since, until = maintenance[device]
                if since <= (t if event_time else received_ms / 1000.0) < until:
                    continue  # a technician is moving it: stored, not judged
            if event_time:
                # Every reading moves event time, a drill's too, exactly as replay does: a drill
                # feed's warnings escalate at their own deadlines, not all at the feed's start.
                if emit:
                    ticked = judge.at(t)
                    if ticked:
                        announced = True
                        changed.update(c.site for c in ticked if not c.exercise and c.kind is None)
                        clock = clock or any(c.kind in CLOCK_KINDS for c in ticked)
                else:
                    # Judged before a restart: its timers' effects on fusion are rebuilt as they
                    # were (a silence declared then is not declared again at the start).
                    judge.replay_fusion_timers(t)
                    self.clock.observe(t)  # type: ignore[attr-defined]
            if skip and site in skip and _id <= skip[site][0]:
                # A restart reading on from the floor: this site's saved row has the reading, but
                # its arrival still moves the held readings of every site on, as it did.
                changes = () if event_time else judge.arrived(received_ms / 1000.0, announce=emit)
            else:
                changes = judge.reading(info, t, value, bool(drill), None if event_time else received_ms / 1000.0, announce=emit)
            for change in changes:
                if emit:
                    announced = True
                    if not change.exercise and change.kind is None:
                        changed.add(change.site)
                clock = clock or change.kind in CLOCK_KINDS
        released, self._released = self._released, []  # held readings judged as statuses arrived
        if emit:
            # A status may stand after every reading of this batch, where no saved position
            # follows it: the sites of what it released are saved at once.
            self._loose.update(c.site for c in released)
        if judged == 0:
            self._counted(released, emit)
            return 1  # only statuses this time: come back at once for the rest
        announced = announced or (emit and bool(released))
        self.position = rows[judged - 1][0]
        if skip and self.position >= self._skip_upto[0] and self.status_position >= self._skip_upto[1]:
            self._skip = {}
        self._counted(released, emit, changed, clock)
        if announced:
            # How far changes have been announced: a restart replays silently only up to here.
            self.journal.set_state(EMITTED_KEY, self.position)
        return judged

    def _counted(self, changes: list[LevelChange], emit: bool, changed: set[str] | None = None, clock: bool = False) -> None:
        """What the changes of a batch (and the sites ``changed`` and ``clock`` already found)
        make the console read again: the sites' levels, the devices' clock health."""
        changed = set() if changed is None else changed
        for change in changes:
            if emit and not change.exercise and change.kind is None:
                changed.add(change.site)
            clock = clock or change.kind in CLOCK_KINDS
        if changed:
            self._save_levels(changed)
        if clock:
            self.save_clock_health()

    def _statuses(self, rows: list[tuple[int, str, str, int, int, str, int | None]], before: tuple[int, int] | None, start: int = 0, *,
                  emit: bool = True) -> int:
        """Apply the status rows from ``start`` that stand before the reading ``before`` (its
        id and arrival ms; None: all), in order; returns the index of the first left."""
        i, changed = start, False
        while i < len(rows) and (before is None or _status_before(rows[i], *before)):
            sid, site, device, t_ms, received_ms, text, _after = rows[i]
            if not self.event_time:
                # Held readings its arrival reaches are judged before it, as a reading arriving
                # then would do: the same order live and in a restart's replay, whatever the
                # wall clock's timers did in between (the caller counts their changes).
                self._released.extend(self.judge.arrived(received_ms / 1000.0, announce=emit))
            if not (self._skip and site in self._skip and sid <= self._skip[site][1]):
                changed = self._apply_status(site, device, text, t_ms / 1000.0) or changed
            self.status_position = sid
            i += 1
        if changed:
            self.journal.set_state(SENSOR_FAULTS_KEY, self.fusion.sensor_faults())
        return i

    def _latest_statuses(self) -> None:
        """The sensors each device's latest status reports faulty hold from now on."""
        self.status_position = self.journal.last_status_id()
        for site, device, t_ms, text in self.journal.newest_statuses():
            self._apply_status(site, device, text, t_ms / 1000.0)
        self.journal.set_state(SENSOR_FAULTS_KEY, self.fusion.sensor_faults())

    def _apply_status(self, site: str, device: str, text: str, t: float) -> bool:
        if '"sensor_state"' not in text or (site, device) not in self.registry.channels:
            return False  # most statuses say nothing of their sensors: no JSON parsed
        try:
            doc = json.loads(text)
        except ValueError:
            return False
        # The judge's reading of a status, the one replay uses too.
        return self.judge.status(site, device, doc if isinstance(doc, dict) else None, t)

    def step(self) -> int:
        """One round: a batch of readings, then the timers due by the clock. Returns readings judged."""
        if self.resuming is not None:
            return self._resume_step()
        t0 = time.perf_counter()
        # At the journal's head, a channel reporting minutes apart is parked as soon as it is
        # judged (SiteFusion.eager); not while a backlog is read.
        self.fusion.eager = not self._behind
        n = self._consume()
        if n:
            self.judged += n
            self.judging_s += time.perf_counter() - t0
        unreadable, self.fusion.unreadable = self.fusion.unreadable, []
        for site, device, channel, part, error in unreadable:
            log.error("a channel's saved detector state could not be restored; it starts afresh",
                      extra=kv(site=site, device=device, channel=channel, part=part, error=error))
        self._mark()
        # Fusion's timers (a device silent, a held reading come due) judge what has not come:
        # by the clock only once every stored reading has been judged. While detection is
        # behind, a silent device's readings may be waiting in the journal, and which of them
        # a timer had seen would depend on where batches happen to end, which a restart
        # changes: announced twice, or never (tests/test_state_fuzz.py). The chain's timers
        # run regardless: an escalation never waits behind a backlog.
        ticked = self.judge.at(self.clock.now(), fusion_timers=not self._behind)
        self.fusion.park_judged()  # (after the timers: a held reading they judged too)
        self._soon(self.fusion.park_over_budget())
        self._loose.update(c.site for c in ticked)
        self._counted(ticked, True)  # a held reading judged by its timer may move its site's level
        if self._loose:
            # Announced by a timer or a status on its own, not by a reading: no position says
            # it was, so its site is saved now (a crash before would announce it again).
            self.save_sites(LOOSE_BUDGET_S, only=self._loose)
            # Those the budget left for the next step stay (a crash would announce them again).
            self._loose = {site for site in self._loose if site in self.fusion.dirty}
        if self._spill_soon:  # saved soon, so their texts are spilled: parked for memory's sake
            self.save_sites(SPILL_SOON_BUDGET_S, only=self._spill_soon)
            soon, dirty = self._spill_soon, self.fusion.dirty
            while soon and next(iter(soon)) not in dirty:  # saved (oldest first): what this step did, no more
                soon.popitem(last=False)
        self.save_sites(SAVE_BUDGET_S, older_than_s=self.save_after_s)
        return n

    def _soon(self, sites: Iterable[str]) -> None:
        for site in sites:
            self._spill_soon[site] = None

    def save_sites(self, budget_s: float | None, older_than_s: float = 0.0, only: Iterable[str] | None = None) -> int:
        """Save the sites changed ``older_than_s`` ago or more (or those of ``only`` that
        changed), oldest change first, until ``budget_s`` of work (None: all of them), with the
        header, in one transaction; returns how many. Between batches only: the rows reflect
        the positions judged so far."""
        dirty = self.fusion.dirty
        if not dirty and not self._stale_rows:
            return 0
        now = time.monotonic()
        start = time.perf_counter()
        rows: list[tuple[str, int, int, str]] = []
        texts: list[tuple[str, str, bytes]] = []
        skip = self._skip
        for site in (dirty if only is None else (x for x in only if x in dirty)):  # (only as far as the budget goes)
            mark = dirty[site]
            if only is None and mark is not None and now - mark[2] < older_than_s:
                break  # oldest first: the rest changed later still
            if skip and site in skip and (skip[site][0] > self.position or skip[site][1] > self.status_position):
                # Reading on from the floor, not yet past this site's row: its state holds readings
                # after the position it would be saved against, and a restart would count them
                # twice. (Nothing read in that range changes such a site today: its readings and
                # statuses are skipped, its held readings come due in the same order as before.
                # This keeps it so.)
                continue
            row, packed = self.fusion.site_rows(site)
            rows.append((site, self.position, self.status_position, row))
            texts.extend((site, key, text) for key, text in packed)
            if budget_s is not None and time.perf_counter() - start >= budget_s:
                break
        if not rows and not self._stale_rows:
            return 0
        for site, *_ in rows:
            del dirty[site]
            self._initial.discard(site)
        state: dict[str, Any] = {}
        if not self._initial:
            state[STATE_KEY] = self._header()
            if self._legacy:  # the one value of before goes once every site is in a row of its own
                state[SNAPSHOT_KEY] = None
                self._legacy = False
        gone: list[tuple[str, str]] = []
        if self._tidy:
            for site, *_ in rows:
                if site in self._tidy:
                    self._tidy.discard(site)
                    gone += [(site, key) for key in self.journal.channel_keys(site) - self.fusion.text_keys(site)]
        self.journal.save_site_states(rows, self._stale_rows, state, texts, gone)
        self._stale_rows = []
        self.fusion.spill(site for site, *_ in rows)  # their parked channels' texts are saved now
        return len(rows)

    def _header(self) -> dict[str, Any]:
        """Where a restart reads on from: before the oldest change not saved (or here)."""
        oldest = next(iter(self.fusion.dirty.values()), None)
        floor = (self.position, self.status_position) if oldest is None else (oldest[0], oldest[1])
        return {"floor": floor[0], "status_floor": floor[1], "position": self.position, "status_position": self.status_position,
                "globals": self.fusion.globals_state(), "saved": time.time()}

    def save_snapshot(self, budget_s: float | None = None) -> None:
        """Save the sites changed since their last save (within ``budget_s``; None: all), the
        header, the counters and the devices' clock health."""
        self.save_sites(budget_s)
        header = self._header()
        if not self._initial:  # (else a restart must start as this one did: see _initial)
            self.journal.set_state(STATE_KEY, header)  # the floor moves on to here when nothing is left
        self.save_stats(header["floor"])
        self.save_clock_health()

    def save_stats(self, floor: int) -> None:
        """For /metrics and /healthz: how far detection has judged, how much a restart now
        would judge again, and whether a start is still reading on from its saved floor."""
        self.journal.set_state(DETECTION_STATS_KEY, {"readings": self.judged, "seconds": self.judging_s, "position": self.position,
                                                     "unsaved_sites": len(self.fusion.dirty), "floor": floor,
                                                     "live_channels": self.fusion.live,
                                                     "resuming": self.resuming is not None})

    def save_clock_health(self) -> None:
        """Devices' clock health for the console, ``/metrics`` and the zero report (they read it
        from the journal's state: this worker is another process)."""
        self.journal.set_state(CLOCK_HEALTH_KEY, self.fusion.clock_health())

    def _save_levels(self, sites: Iterable[str], drop: Iterable[str] = ()) -> None:
        """The levels of ``sites`` that differ from what was saved, one row a site: a batch's
        changes cost their sites, not the whole registry (``drop``: rows of sites gone)."""
        fusion, saved = self.fusion, self._levels
        moved = {s: lvl for s in sites if saved.get(s) != (lvl := fusion.level(s))}
        drop = list(drop)
        if moved or drop:
            self.journal.save_site_levels(moved, drop)
            saved.update(moved)
            for s in drop:
                saved.pop(s, None)

    def under_maintenance(self, device: str, now: float) -> bool:
        span = self.maintenance.get(device)
        return span is not None and span[0] <= now < span[1]

    def set_maintenance(self, site: str, device: str, now: float, until: float | None, by: str, note: str) -> str:
        """Put ``device`` under maintenance until ``until`` (None: end it now); returns what
        was done. ``ValueError`` when the device is not at the site."""
        if (site, device) not in self.registry.channels:
            raise ValueError(f"device {device!r} is not at site {site!r}")
        if until is None:
            if self.maintenance.pop(device, None) is None:
                return f"{device} was not under maintenance"
            done = f"{device} back in service by {by}: {note}".rstrip(": ")
        else:
            if not until > now:
                raise ValueError("until must be in the future")
            self.maintenance[device] = (now, until)
            done = f"{device} under maintenance by {by} until {rfc3339(until)}: {note}".rstrip(": ")
        self.journal.set_state(MAINTENANCE_KEY, {d: [a, b] for d, (a, b) in self.maintenance.items()})
        log.warning("maintenance changed", extra=kv(site=site, device=device, by=by, until=rfc3339(until) if until else None, note=note))
        return done

    def _held(self, change: LevelChange, now: float) -> bool:
        # A device switched off for maintenance is silent on purpose; its clock may be reset.
        return change.kind in ("nodata", "nodata_end", *CLOCK_KINDS) and self.under_maintenance(str(change.evidence.get("device", "")), now)

    @staticmethod
    def _log_change(change: LevelChange, event: dict[str, Any]) -> None:
        log.warning(
            "site level changed",
            extra=kv(t=event["t"], kind=event["kind"], site=change.site, level=change.level, colour=event["colour"], exercise=change.exercise, reason=change.reason),
        )


class DetectionJob:
    """The detection worker's job (service/worker.py runs it in its own process): fusion over the
    journal, the response chain with its outbox and notifiers, and people's requests (acks,
    quick reports) from ``{prefix}/ack`` and ``{prefix}/report``."""

    from geowarn.alerts.live import REQUEST_KINDS as REQUESTS

    def __init__(self, loaded: Loaded, link: Any, journal_path: str, event_time: bool, start_t: float) -> None:
        import httpx

        from geowarn.alerts.chain import zero_stats_of
        from geowarn.alerts.zero_reports import with_availability, with_clock_health
        from geowarn.alerts.dispatch import Dispatcher, DispatcherThread
        from geowarn.alerts.live import CAP_KEY, COMMAND_KEY, LiveChain, TopicNotifier
        from geowarn.alerts.notifiers import build_notifiers
        from geowarn.alerts.outbox import Outbox

        s = loaded.settings
        self.link = link
        self.prefix = s.topic_prefix
        self.journal = Journal(journal_path)
        self.clock: Clock = EventClock(start_t) if event_time else WallClock()
        data_dir = Path(s.data_dir)
        from geowarn.alerts.control import Gate, load_or_create_key

        # Made here on the first start unless the API made it first (both read the same file).
        self.gate = Gate(load_or_create_key(data_dir), lambda: self.journal.get_state(NONCES_KEY), lambda v: self.journal.set_state(NONCES_KEY, v))
        from geowarn.console.tokens import TOKENS_FILE

        self.tokens_path = data_dir / TOKENS_FILE  # refusals go to the API's audit table
        self._tokens: Any = None
        self._audit_minute: tuple[float, int, int] = (0.0, 0, 0)  # (start, rows written, rows counted only)
        self.outbox = Outbox(data_dir / OUTBOX_FILE)
        self.http = httpx.Client(timeout=s.notify_timeout_s)
        notifiers = build_notifiers(
            loaded.roster, publish=link.publish_confirmed, smtp_url=s.smtp_url, sender=s.smtp_from, data_dir=data_dir,
            client=self.http, prefix=s.topic_prefix, smtp_timeout=s.notify_timeout_s, clock=self.clock,
        )
        notifiers[CAP_KEY] = TopicNotifier(link.publish_confirmed, CAP_KEY)
        # Commands to devices of the national convention carry their apikey, inserted as they
        # go out: the outbox never holds it (ingest/commands_cn.py).
        notifiers[COMMAND_KEY] = TopicNotifier(link.publish_confirmed, COMMAND_KEY, loaded.apikeys)
        self.dispatcher = Dispatcher(self.outbox, notifiers, self.clock, timeout_s=s.notify_timeout_s)
        self.dispatch_thread = DispatcherThread(self.dispatcher)
        self.chain = LiveChain(
            loaded.registry, loaded.roster, self.outbox, data_dir, alert_policy(loaded),
            prefix=s.topic_prefix, tz=s.timezone,
            # Readings and devices online, the devices whose clock looks wrong, the online rate
            # and the month's transmission availability (alerts/zero_reports.py).
            zero_stats=with_availability(
                with_clock_health(zero_stats_of(loaded.registry, self.journal), loaded.registry, lambda: self.journal.get_state(CLOCK_HEALTH_KEY)),
                loaded.registry, self.journal.readings_by_device, s.timezone,
            ),
            wake=self.dispatch_thread.wake,
            sender=s.cap_sender,
        )
        self.detection = Detection(loaded, self.journal, lambda topic, payload, retain: link.publish(topic, payload, retain), self.clock, self.chain.chain)
        # A start without saved state recomputed every site's level from the journal and
        # announced it: a snapshot now, or a crash before the first periodic one announces it
        # all again. (With saved state the journal is read on by the steps, and the sites of
        # what the start's timers announce are saved as it ends: ``Detection._started``.)
        self.detection.save_snapshot()
        self.dispatch_thread.start()

    @classmethod
    def subscriptions(cls, prefix: str, registry: Any = None) -> list[str]:
        """The request topics, and ``$dr`` (the answers of devices of the national convention
        to their commands) when the registry has such devices."""
        from geowarn.ingest.commands_cn import REPLY_TOPIC

        cn = registry is not None and any(d.code for site in registry.sites.values() for d in site.devices)
        return [f"{prefix}/{kind}" for kind in cls.REQUESTS] + ([REPLY_TOPIC] if cn else [])

    def step(self) -> int:
        # Requests are answered while detection is still resuming too: the chain was restored
        # with every warning announced before the stop (those the replay announces anew are
        # new to everyone), and a request left waiting through a national fleet's replay
        # would outlive the control gate's window.
        return self.detection.step() + self._requests()

    def _requests(self) -> int:
        """Answer the requests waiting, at most ``REQUESTS_PER_STEP`` of them or
        ``REQUEST_BUDGET_S`` of work, so that a flood on an open broker delays the judging of
        readings by a step at most: the rest wait in the inbox for the next step."""
        from geowarn.alerts.control import Refused, decode_request, request_id_of
        from geowarn.alerts.live import Result

        deadline = time.perf_counter() + REQUEST_BUDGET_S
        handled = 0
        while handled < REQUESTS_PER_STEP and (handled == 0 or time.perf_counter() < deadline):
            items = self.link.inbox.take(1, 0.0)
            if not items:
                break
            it = items[0]
            handled += 1
            if it.topic == REPLY_TOPIC.encode():
                self._device_answer(it.payload)
                self.link.ack(it)
                continue
            kind = it.topic.decode("utf-8", "replace").rsplit("/", 1)[-1]
            # The control plane's window is wall time, whatever clock the chain runs on (the
            # demo's event clock): the signer stamps its request with its wall clock.
            now = time.time()
            doc: Any = None
            try:
                doc = decode_request(it.payload)  # bounded, and parsed once for all below
                admitted = self.gate.admit_doc(kind, doc, now)
            except Refused as refusal:
                result = Result(request_id_of(doc), False, f"{kind} request refused: {refusal.reason}", f"refused_{refusal.code}")
                reply_to, by = refusal.reply_to, "-"
                self._audit_refusal(kind, _target_of(kind, doc), result.detail, now)
            else:
                reply_to = admitted.mac
                result, by = self._apply(kind, admitted.doc)
            log.warning("request accepted" if result.ok else "request REFUSED", extra=kv(kind=kind, by=by, detail=result.detail))
            # Signed, and bound to the request it answers only when that one was authentic,
            # fresh and new: the asker trusts nothing else (alerts/control.py).
            answer = self.gate.key.sign_result(kind, {**result.to_json(), "reply_to": reply_to}, now)
            self.link.publish(f"{self.prefix}/{kind}/result", json.dumps(answer, ensure_ascii=False).encode(), False)
            self.link.ack(it)  # after the chain committed what the request changed
        return handled

    def _device_answer(self, payload: bytes) -> None:
        """A convention device's ``result=succ|fail``, recorded against the command whose msgid
        it echoes (not a request: it changes no alert state, so it passes no control gate)."""
        from geowarn.ingest.commands_cn import CommandError, parse_answer

        try:
            ans = parse_answer(payload)
        except CommandError as exc:
            log.warning("device answer not understood", extra=kv(topic=REPLY_TOPIC, reason=str(exc)))
            return
        command_id = self.outbox.record_answer(ans.msgid, ans.cmd, ans.result, time.time())
        if command_id is None:
            log.warning("device answer matches no command", extra=kv(cmd=ans.cmd, result=ans.result, msgid=(ans.msgid or "")[:48]))
        else:
            (log.info if ans.ok else log.warning)("device answered a command", extra=kv(command=command_id, cmd=ans.cmd, result=ans.result))

    def _apply(self, kind: str, doc: dict[str, Any]) -> tuple[Any, str]:
        """Carry out an admitted request: its Result and who asked."""
        from geowarn.alerts.live import Request, Result

        try:
            req = Request.from_doc(kind, doc)
        except ValueError as exc:
            return Result(str(doc.get("request", "")), False, f"bad {kind} request: {exc}"), "-"
        try:
            if req.kind in ("shelve", "unshelve") and req.device:
                try:
                    done = self.detection.set_maintenance(req.target, req.device, self.clock.now(), req.until if req.kind == "shelve" else None, req.by, req.signed_note)
                    return Result(req.request_id, True, done, f"device_{req.kind}", req.target), req.by
                except ValueError as exc:
                    return Result(req.request_id, False, str(exc), "", req.target), req.by
            return self.chain.handle(req, self.clock.now()), req.by
        except Exception as exc:  # a request must never crash-loop the worker: refuse it, say why
            log.exception("request failed", extra=kv(kind=kind))
            from geowarn.service.worker import describe_error, is_write_error

            if is_write_error(exc):
                # Disk full or the like: nothing was recorded (the chain commits before it
                # changes its state). Said so plainly: the asker sends it again (a new nonce).
                return Result(req.request_id, False, f"{kind} not recorded: GeoWarn cannot write its data right now "
                              f"({describe_error(exc)}); nothing changed, try again in a minute", "retry"), req.by
            return Result(req.request_id, False, f"{kind} failed: {type(exc).__name__}: {exc}"), req.by

    def _audit_refusal(self, kind: str, target: str, detail: str, now: float) -> None:
        """A row in the API's audit table (console/tokens.py) for a request the gate refused:
        who "-" (nobody proved who they are), client "mqtt". Past AUDIT_PER_MINUTE a minute
        refusals are counted and written as one row when the next minute starts."""
        from geowarn.console.tokens import TokenStore

        start, written, counted = self._audit_minute
        try:
            if self._tokens is None:
                self._tokens = TokenStore(self.tokens_path)
            if now - start >= 60.0:
                if counted:
                    self._tokens.audit(now, None, f"MQTT {self.prefix}/*", "-", "mqtt", "refused",
                                       f"{counted} more requests refused in the minute from {rfc3339(start)}; the daemon's log has each")
                start, written, counted = now, 0, 0
            if written < AUDIT_PER_MINUTE:
                self._tokens.audit(now, None, f"MQTT {self.prefix}/{kind}", target, "mqtt", "refused", detail)
                written += 1
            else:
                counted += 1
        except Exception:  # the refusal stands and is logged; a broken audit file must not stop requests
            log.exception("could not audit a refused request", extra=kv(kind=kind))
        self._audit_minute = (start, written, counted)

    def checkpoint(self, final: bool = False) -> None:
        # What is not saved within the budget is replayed from the journal by the next start
        # (the header's floor): neither a warning nor a stop waits on it. At the stop more
        # time, so the next start replays less.
        self.detection.save_snapshot(STOP_BUDGET_S if final else CHECKPOINT_BUDGET_S)

    def close(self) -> None:
        # Let sends in flight finish and be recorded before the outbox closes: a delivered
        # message left pending would be sent again by the next start.
        self.dispatcher.close()
        self.dispatcher.wait_idle(self.dispatcher.timeout_s)
        self.dispatch_thread.stop()
        self.outbox.close()
        self.http.close()
        self.journal.close()
        if self._tokens is not None:
            self._tokens.close()


def live_budget(configured: int, memory: int | None = None) -> int:
    """The live channels' budget (``SiteFusion.live_max``): ``GEOWARN_LIVE_CHANNELS_MAX``, or
    for 0 a quarter of the memory this process may use (the machine's, or its cgroup's limit
    if lower) at 8 KB a live channel, at least 10,000."""
    if configured:
        return configured
    if memory is None:
        memory = _memory_limit()
    return max(10_000, memory // 4 // 8192)


def _memory_limit() -> int:
    """The memory this process may use: the machine's, or the lowest limit of its memory
    cgroup or any cgroup above it (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``;
    a systemd unit's ``MemoryMax=``, a container's limit)."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        memory = 4 << 30  # (not a POSIX system that says: assume a small machine)
    for limit in _cgroup_limit_files():
        try:
            text = Path(limit).read_text().strip()  # "max" (v2) or a huge number (v1): none
        except OSError:
            continue
        if text.isdigit():
            memory = min(memory, int(text))
    return memory


def _cgroup_limit_files() -> list[str]:
    """The memory limit files of this process's cgroups, from its own up to the root."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    out = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]  # (a container's own root)
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            base, name = "/sys/fs/cgroup", "memory.max"  # v2
        elif "memory" in controllers.split(","):
            base, name = "/sys/fs/cgroup/memory", "memory.limit_in_bytes"  # v1
        else:
            continue
        parts = [p for p in path.split("/") if p and p != ".."]
        out += [f"{base}/{'/'.join(parts[:n])}/{name}" for n in range(len(parts), 0, -1)]
    return out


def saved_state(reader: Any) -> dict[str, Any] | None:
    """The detection state a restart would start from, put together from the site rows of a
    journal (``JournalReader``): the header's fields and ``state``, a ``SiteFusion.snapshot()``
    (for tests and diagnosis; None before the first save)."""
    header, rows, texts = reader.site_states(STATE_KEY)
    if header is None:
        return None
    state = SiteFusion.assemble(header.get("globals", {}), [SiteFusion.unpacked(json.loads(body), partial(_text_of, texts, site)) for site, _, _, body in rows])
    return {**header, "sites": {site: [pos, spos] for site, pos, spos, _ in rows}, "state": state}


def _text_of(texts: dict[tuple[str, str], bytes], site: str, key: str) -> bytes | None:
    return texts.get((site, key))


def _target_of(kind: str, doc: Any) -> str:
    """What a (refused) request was about, for its audit row: warning, task or site ("-" for
    a payload that was not a JSON object, or not read at all)."""
    if not isinstance(doc, dict):
        return "-"
    value = {"ack": doc.get("id"), "report": doc.get("task_id", doc.get("id"))}.get(kind, doc.get("site"))
    device = doc.get("device") if kind in ("shelve", "unshelve") else None
    target = str(value)[:200] if isinstance(value, str) and value else "-"
    return f"{target}/{device[:64]}" if isinstance(device, str) and device else target


def alert_policy(loaded: Loaded) -> Any:
    """The AlertPolicy from the settings' ``alert_policy`` overrides; ConfigError naming the key."""
    from pydantic import ValidationError

    from geowarn.alerts.policy import AlertPolicy
    from geowarn.config.errors import ConfigError, problems_from_validation

    try:
        return AlertPolicy(**loaded.settings.alert_policy)
    except ValidationError as exc:
        raise ConfigError(problems_from_validation("settings (GEOWARN_ALERT_POLICY / [alert_policy])", exc, "alert_policy")) from None


def detection_process(loaded: Loaded, journal_path: Path, *, event_time: bool = False, start_t: float = 0.0) -> WorkerProcess:
    from geowarn.alerts.control import load_or_create_key

    # The control key is made (or a bad one refused, ConfigError) here, at the daemon's start,
    # not inside the worker where the error would only show as a worker that failed to start.
    load_or_create_key(loaded.settings.data_dir)
    return WorkerProcess(
        "detection", DetectionJob, loaded, str(journal_path), event_time, start_t, subscriptions=DetectionJob.subscriptions(loaded.settings.topic_prefix, loaded.registry)
    )
