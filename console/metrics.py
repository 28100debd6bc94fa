"""``/metrics``: the daemon's Prometheus metrics, read from its SQLite files at scrape time.

This module owns the metric names and how each is computed. ``GeoWarnCollector`` is a
prometheus-client custom collector (the one-method ``collect`` protocol): nothing is counted
twice in memory, each scrape reads the durable truth the processes already keep —

- the main process's own counters (messages received and acknowledged, store lag, forwarder
  lag), handed in as a callable because they live in that process's memory;
- the journal (``JournalReader``): readings stored, dead letters by reason, device online
  ratio, detection's checkpointed figures; the message log (``MessageLogReader``): store lag;
- the outbox (``OutboxReader``): notifications by notifier and delivery state, escalations,
  open warnings by level (the response chain's persisted site states), devices' answers to
  commands (succ / fail);
- devices' latest status heartbeats (journal): how many report a low battery or a faulty
  sensor — counts over the fleet, never a label per device (a national fleet has 250k).

The store and detection workers are other processes; reading their files instead of their
memory means a worker restart never resets a metric. The collector is registered in a
registry the caller passes (``make_registry``), never the global one, so tests and several
daemons in one process do not collide.

Every file is read through its owner's reader, never with SQL of our own. A file that does
not exist yet (a daemon that has just started) gives zeros, not an error.

A scrape runs a fixed number of queries whatever the size of the fleet (issue 17: one query
per channel took 6.8 s a scrape at 250k devices). The per-device figures are kept in this
collector, in arrays, and brought up to date from what the journal stored since the last
scrape, so they are exact, never stale: each channel's newest reading by event time and its
arrival (for devices online) from the readings stored since (a range of ids), each device's
latest status (battery, sensors) from the status rows stored since. Only the first look reads
them all (one seek per channel in one statement, each device's newest status: about 5 s at
250k devices, BENCHMARKS.md); ``make_registry`` has it done on a thread of its
own at start, so that the first scrape does not wait for it. The store's write path is not
touched. What comes from the registry alone (devices, reporting windows) is computed once per
registry.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The response chain keeps each site's alert state in the outbox under this prefix (alerts/live.py).
from geowarn.alerts.live import STATE_PREFIX as ALERT_STATE_PREFIX
from geowarn.alerts.outbox import OUTBOX_FILE, OutboxReader
from geowarn.config.registry import BATTERY_LOW_PERCENT, BATTERY_LOW_V, Device, Registry
from geowarn.console.views import battery_low
from geowarn.core.logfields import kv
from geowarn.core.sqlite import SchemaError
from geowarn.ingest.journal import (
    DETECTION_STATS_KEY,
    JOURNAL_FILE,
    Arrivals,
    JournalReader,
)
from geowarn.ingest.messagelog import MESSAGES_FILE, MessageLogReader
from geowarn.ingest.store import POSITION_KEY as STORE_POSITION_KEY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger(__name__)

__all__ = ["GeoWarnCollector", "MainStats", "make_registry"]

#: A device is online when its newest reading arrived within this many of its shortest
#: reporting intervals: the no-data rule of DESIGN §5 (silent for three intervals).
ONLINE_INTERVALS = 3.0
#: A battery is low below this charge, where the device reports one (``battery_percent``),
#: else below this voltage, unless the device's registry entry sets its own
#: (``battery_low_percent``, ``battery_low_v``; console.views.battery_low).
LOW_BATTERY_PERCENT = BATTERY_LOW_PERCENT
LOW_BATTERY_V = BATTERY_LOW_V


@dataclass(frozen=True)
class MainStats:
    """The main daemon process's counters at the time of a scrape."""

    messages_received: int = 0
    messages_acked: int = 0
    forwarder_enabled: bool = False
    forwarder_lag_readings: int = 0
    forwarder_lag_s: float = 0.0
    worker_restarts: int = 0
    # Degraded mode (service/daemon.py): each part that writes ("ack", "store", "detection")
    # with why it cannot write ("" when it can), and the data directory's free space (None:
    # not measured).
    degraded: tuple[tuple[str, str], ...] = ()
    disk_free_bytes: int | None = None
    disk_total_bytes: int | None = None
    disk_warn_below_bytes: int | None = None
    # Persistent sessions the broker was found to have lost (possible loss of what it queued
    # for us), over the data dir's life, and the time of the last.
    broker_sessions_lost: int = 0
    broker_session_lost_at: float | None = None
    # The broker link: connected now (None: not known), to what (password redacted), and
    # whether the daemon has finished starting (its parts up, the ack loop running).
    mqtt_connected: bool | None = None
    broker: str = ""
    started: bool = False


class _Fleet:
    """What a scrape needs of the registry, computed once per registry, compact (a national
    registry has 250k devices): each device's index, its online window (``ONLINE_INTERVALS``
    of its shortest reporting interval) and its entry (battery limits)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        # The registry's own key tuples, so the index adds no strings of its own.
        self.index: dict[tuple[str, str], int] = {key: i for i, key in enumerate(registry.channels)}
        self.windows_ms = np.fromiter(
            (ONLINE_INTERVALS * min((c.interval_s for c in chans.values()), default=0.0) * 1000.0 for chans in registry.channels.values()),
            dtype=np.float64, count=len(self.index),
        )
        self.devices: list[Device | None] = [None] * len(self.index)
        for code, site in registry.sites.items():
            for d in site.devices:
                self.devices[self.index[(code, d.device)]] = d
        self.max_window_ms = float(self.windows_ms.max(initial=0.0))
        self.total = sum(len(site.devices) for site in registry.sites.values())


#: No reading yet (a channel's newest arrival).
_NEVER = np.iinfo(np.int64).min


class _Arrivals:
    """Each journal series' newest reading by event time (t_ms) and when it arrived, and its
    device's index in the fleet (-1: not a channel of the registry), by series id; brought up
    to date from the readings stored after ``after_reading``."""

    def __init__(self, fleet: _Fleet, file_id: tuple[int, int] | None) -> None:
        self.fleet = fleet
        self.file_id = file_id
        self.after_series = 0
        self.after_reading = 0
        self.device = np.full(1, -1, dtype=np.int32)
        self.t_ms = np.full(1, _NEVER, dtype=np.int64)
        self.received_ms = np.full(1, _NEVER, dtype=np.int64)

    def update(self, got: Arrivals) -> None:
        if got.series:
            n = got.last_series + 1
            if n > len(self.device):
                grow = n - len(self.device)
                self.device = np.concatenate([self.device, np.full(grow, -1, dtype=np.int32)])
                self.t_ms = np.concatenate([self.t_ms, np.full(grow, _NEVER, dtype=np.int64)])
                self.received_ms = np.concatenate([self.received_ms, np.full(grow, _NEVER, dtype=np.int64)])
            index, chans = self.fleet.index, self.fleet.registry.channels
            for sid, site, device, channel, t, received in got.series:
                key = (site, device)
                i = index.get(key)
                # Only the registry's channels count, as the device's windows are theirs.
                self.device[sid] = -1 if i is None or channel not in chans[key] else i
                if t is not None and received is not None:
                    self.t_ms[sid], self.received_ms[sid] = t, received
        if got.readings:
            rows = np.array(got.readings, dtype=np.int64)
            rs, rt, rr = rows[:, 0], rows[:, 1], rows[:, 2]
            # Each series' newest by event time among the new readings (the last of its run
            # once sorted by series then time), where it is not older than the one known.
            order = np.lexsort((rt, rs))
            rs, rt, rr = rs[order], rt[order], rr[order]
            last = np.ones(len(rs), dtype=bool)
            last[:-1] = rs[1:] != rs[:-1]
            rs, rt, rr = rs[last], rt[last], rr[last]
            newer = rt >= self.t_ms[rs]
            self.t_ms[rs[newer]] = rt[newer]
            self.received_ms[rs[newer]] = rr[newer]
        self.after_series = got.last_series
        self.after_reading = got.last_reading

    def online(self, now_ms: float) -> int:
        """Devices with a registry channel whose newest reading arrived within the device's
        window."""
        recent = np.flatnonzero((self.received_ms >= now_ms - self.fleet.max_window_ms) & (self.device >= 0))
        dev = self.device[recent]
        heard = now_ms - self.received_ms[recent] <= self.fleet.windows_ms[dev]
        seen = np.zeros(len(self.fleet.index), dtype=bool)
        seen[dev[heard]] = True
        return int(np.count_nonzero(seen))


#: A device's latest status as counted, one byte per registry device: it reports its health,
#: its battery is low, a sensor is faulty.
_REPORTING, _LOW, _FAULTY = 1, 2, 4
#: Status rows taken at a time (a national fleet's first look has 250k): bounds the memory.
STATUS_CHUNK = 20_000


@dataclass
class _Health:
    """Each registry device's latest status as counted (``_REPORTING | _LOW | _FAULTY``), the
    totals, and the last status row read: brought up to date with the rows after it."""

    fleet: _Fleet
    file_id: tuple[int, int] | None
    codes: bytearray
    after_id: int = 0
    #: During the first look: the newest status row when it began (each device's newest row up
    #: to it is read, in chunks); None once done.
    first_look_upto: int | None = None
    reporting: int = 0
    low: int = 0
    faulty: int = 0


class GeoWarnCollector(Collector):
    def __init__(self, data_dir: Path, registry: Registry, main: Callable[[], MainStats], now: Callable[[], float]) -> None:
        self.data_dir = Path(data_dir)
        self.registry = registry
        self.main = main
        self.now = now
        # Scrapes may come on several server threads at once (and the warm-up): the figures
        # kept between scrapes are shared.
        self._lock = threading.RLock()
        self._fleet_cache: _Fleet | None = None
        self._status_counts: _Health | None = None
        self._arrivals: _Arrivals | None = None

    def _fleet(self) -> _Fleet:
        with self._lock:
            if self._fleet_cache is None or self._fleet_cache.registry is not self.registry:
                self._fleet_cache = _Fleet(self.registry)
            return self._fleet_cache

    def warm(self) -> None:
        """Take the first look at the journal (every channel's newest reading, every device's
        latest status) now rather than in the first scrape; a scrape meanwhile waits for it."""
        try:
            with self._lock:
                fleet = self._fleet()
                self._follow_arrivals(JournalReader(self.data_dir / JOURNAL_FILE), fleet)
                self._update_health(fleet)
        except (sqlite3.Error, SchemaError, OSError) as exc:
            # The scrape tries again, and reports what fails.
            log.warning("metrics: the first look at the journal failed", extra=kv(error=exc))

    def describe(self) -> list[Metric]:
        # Custom collectors are described by running collect() unless this says otherwise;
        # an empty description keeps registration from reading the files.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._main()
        try:
            yield from self._journal()
            yield from self._outbox()
            yield from self._clock()
            yield from self._devices_health()
        except (sqlite3.Error, SchemaError) as exc:
            # A scrape during a schema change or a locked file: report it instead of failing
            # the whole scrape, so the main process's metrics still arrive.
            log.warning("metrics: reading the SQLite files failed", extra=kv(error=exc))
            g = GaugeMetricFamily("geowarn_metrics_read_errors", "1 when the last scrape could not read a GeoWarn SQLite file")
            g.add_metric([], 1.0)
            yield g

    # -- main process ----------------------------------------------------------------------

    def _main(self) -> Iterator[Metric]:
        m = self.main()
        yield CounterMetricFamily("geowarn_messages_received", "MQTT data/status messages received and logged by the ack path", value=m.messages_received)
        yield CounterMetricFamily("geowarn_messages_acked", "MQTT messages acknowledged to the broker after they were durable", value=m.messages_acked)
        if m.mqtt_connected is not None:
            yield GaugeMetricFamily("geowarn_mqtt_connected", "1 while the ack path is connected to the MQTT broker", value=1.0 if m.mqtt_connected else 0.0)
        yield CounterMetricFamily("geowarn_worker_restarts", "store/detection worker processes restarted after dying", value=m.worker_restarts)
        yield CounterMetricFamily(
            "geowarn_broker_sessions_lost",
            "times the broker had forgotten the daemon's persistent session (what it queued for us may be lost), over the data dir's life",
            value=m.broker_sessions_lost,
        )
        if m.broker_session_lost_at is not None:
            yield GaugeMetricFamily("geowarn_broker_session_lost_timestamp_seconds", "when the broker was last found to have lost the session", value=m.broker_session_lost_at)
        yield from self._health(m)
        if m.forwarder_enabled:
            yield GaugeMetricFamily("geowarn_forwarder_lag_readings", "journal readings not yet accepted by InfluxDB", value=m.forwarder_lag_readings)
            yield GaugeMetricFamily("geowarn_forwarder_lag_seconds", "age of the oldest reading not yet forwarded", value=m.forwarder_lag_s)

    @staticmethod
    def _health(m: MainStats) -> Iterator[Metric]:
        """Degraded mode and free space: alert on ``max(geowarn_degraded) > 0`` (nothing is
        being acknowledged or stored) and on ``geowarn_disk_low`` (it soon will not be)."""
        degraded = GaugeMetricFamily("geowarn_degraded", "1 while a part of the daemon cannot write (disk full, I/O error) and retries; "
                                     "the ack part then acknowledges nothing", labels=["part"])
        for part, reason in m.degraded:
            degraded.add_metric([part], 1.0 if reason else 0.0)
        yield degraded
        if m.disk_free_bytes is not None:
            yield GaugeMetricFamily("geowarn_disk_free_bytes", "free space of the data directory's file system", value=m.disk_free_bytes)
            yield GaugeMetricFamily("geowarn_disk_total_bytes", "size of the data directory's file system", value=m.disk_total_bytes or 0)
            low = m.disk_warn_below_bytes is not None and m.disk_free_bytes < m.disk_warn_below_bytes
            yield GaugeMetricFamily("geowarn_disk_low", "1 while the data directory's free space is below the warning threshold", value=1.0 if low else 0.0)

    # -- journal ---------------------------------------------------------------------------

    def _journal(self) -> Iterator[Metric]:
        stored = CounterMetricFamily("geowarn_readings_stored", "readings stored in the journal (duplicates stored once)")
        dead = CounterMetricFamily("geowarn_deadletters", "messages or readings rejected, by reason", labels=["reason"])
        devices = GaugeMetricFamily("geowarn_devices", "devices in the site registry")
        online = GaugeMetricFamily("geowarn_devices_online", f"devices whose newest reading arrived within {ONLINE_INTERVALS:g} reporting intervals")
        ratio = GaugeMetricFamily("geowarn_device_online_ratio", "devices online / devices in the registry")
        # Detection's own figures, saved by its worker at each checkpoint (snapshot interval).
        judged = CounterMetricFamily("geowarn_detection_readings", "readings judged by the detectors and fusion (as of the last checkpoint)")
        judging = CounterMetricFamily("geowarn_detection_seconds", "time spent judging readings: detectors, fusion and the response chain (as of the last checkpoint)")
        behind = GaugeMetricFamily("geowarn_detection_lag_readings", "journal readings after detection's last checkpoint")
        unsaved = GaugeMetricFamily("geowarn_detection_unsaved_sites", "sites whose detector state changed since it was last saved (as of the last checkpoint)")
        replay = GaugeMetricFamily("geowarn_detection_restart_replay_readings", "journal readings a restart now would judge again to rebuild detector state not yet saved")
        live = GaugeMetricFamily("geowarn_detection_live_channels", "channels whose detectors are built in memory (at most GEOWARN_LIVE_CHANNELS_MAX; the rest parked), as of the last checkpoint")
        resuming = GaugeMetricFamily("geowarn_detection_resuming", "1 while detection, just started, reads the journal on from its saved state (no warnings until it is done)")
        fleet = self._fleet()
        total = fleet.total
        journal = JournalReader(self.data_dir / JOURNAL_FILE)
        n_stored = journal.readings_stored()
        stored.add_metric([], float(n_stored))
        for reason, n in journal.deadletter_counts().items():
            dead.add_metric([reason], float(n))
        n_online = self._online(journal, fleet)
        stored_batch = int(journal.state(STORE_POSITION_KEY, 0) or 0)
        det = journal.state(DETECTION_STATS_KEY)
        if det:
            judged.add_metric([], float(det.get("readings", 0)))
            judging.add_metric([], float(det.get("seconds", 0.0)))
            behind.add_metric([], float(max(0, n_stored - int(det.get("position", 0)))))
            if "unsaved_sites" in det:
                unsaved.add_metric([], float(det["unsaved_sites"]))
                replay.add_metric([], float(max(0, n_stored - int(det.get("floor", 0)))))
            if "live_channels" in det:
                live.add_metric([], float(det["live_channels"]))
            resuming.add_metric([], 1.0 if det.get("resuming") else 0.0)
        last_batch = MessageLogReader(self.data_dir / MESSAGES_FILE).last_id()
        lag = GaugeMetricFamily("geowarn_store_lag_batches", "message-log batches (of up to 2000 messages) not yet decoded into the journal")
        lag.add_metric([], float(max(0, last_batch - stored_batch)))
        devices.add_metric([], float(total))
        online.add_metric([], float(n_online))
        ratio.add_metric([], n_online / total if total else 0.0)
        yield from (stored, dead, lag, devices, online, ratio, judged, judging, behind, unsaved, replay, live, resuming)

    def _online(self, journal: JournalReader, fleet: _Fleet) -> int:
        """Registry devices with a channel whose newest reading (by event time) arrived within
        the device's window. Arrival time, not event time, so a device replaying a backlog
        counts as online. Reads only the readings stored since the last scrape."""
        with self._lock:
            return self._follow_arrivals(journal, fleet).online(self.now() * 1000.0)

    def _follow_arrivals(self, journal: JournalReader, fleet: _Fleet) -> _Arrivals:
        """Each series' newest reading, brought up to date."""
        file_id = _file_id(journal.path)
        with self._lock:
            a = self._arrivals
            if a is None or a.file_id != file_id or a.fleet is not fleet:
                a = self._arrivals = _Arrivals(fleet, file_id)
            while True:
                got = journal.arrivals_since(a.after_series, a.after_reading)
                if got.last_reading < a.after_reading or got.last_series < a.after_series:
                    a = self._arrivals = _Arrivals(fleet, file_id)
                    continue
                a.update(got)
                if not got.more:
                    return a

    # -- outbox ----------------------------------------------------------------------------

    def _outbox(self) -> Iterator[Metric]:
        outbox = OutboxReader(self.data_dir / OUTBOX_FILE)
        notes = GaugeMetricFamily("geowarn_notifications", "outbox messages by notifier and delivery state (pending, sent, dead)", labels=["notifier", "state"])
        esc = CounterMetricFamily("geowarn_escalations", "warnings escalated to the next tier for want of an acknowledgement, by level", labels=["level"])
        open_w = GaugeMetricFamily("geowarn_open_warnings", "real (not exercise) warnings currently announced, by level", labels=["level"])
        unacked = GaugeMetricFamily("geowarn_unacknowledged_warnings", "real warnings waiting for an acknowledgement, by level", labels=["level"])
        # Each registry site's announced level (0: no warning), for a levels-over-time panel.
        site_level = GaugeMetricFamily("geowarn_site_warning_level", "the level of each site's real (not exercise) warning as announced: "
                                       "0 none, 1 blue, 2 yellow, 3 orange, 4 red", labels=["site"])
        site_levels = dict.fromkeys(self.registry.sites, 0)
        by_level = {lvl: 0 for lvl in (1, 2, 3, 4)}
        un_level = {lvl: 0 for lvl in (1, 2, 3, 4)}
        esc_level = {lvl: 0 for lvl in (1, 2, 3, 4)}
        for (notifier, state), n in outbox.counts_by_notifier().items():
            notes.add_metric([notifier, state], float(n))
        for level, n in outbox.notifications_by_level("escalation").items():
            if level in esc_level:
                esc_level[level] = n
        for key, st in outbox.states(ALERT_STATE_PREFIX):
            if st.get("exercise"):
                continue
            announced = int(st.get("announced", 0))
            site = key[len(ALERT_STATE_PREFIX):].rpartition("|")[0]
            if site in site_levels:
                site_levels[site] = announced
            if announced in by_level:
                by_level[announced] += 1
                if st.get("status") in ("unacknowledged", "rtn_unacknowledged"):
                    un_level[announced] += 1
        for lvl in (1, 2, 3, 4):
            open_w.add_metric([str(lvl)], float(by_level[lvl]))
            unacked.add_metric([str(lvl)], float(un_level[lvl]))
            esc.add_metric([str(lvl)], float(esc_level[lvl]))
        for site, lvl in site_levels.items():
            site_level.add_metric([site], float(lvl))
        yield from (notes, esc, open_w, unacked, site_level)

    # -- devices' clocks (detection's clock health, issue 13 item 2) -------------------------

    def _clock(self) -> Iterator[Metric]:
        """Readings with a wrong time, by kind (three labels, not one per device: a national
        fleet has 250k devices), the devices whose clock looks wrong now, and the readings held
        for being stamped ahead of their arrival. As of detection's last checkpoint."""
        from geowarn.detectors.clockhealth import CLOCK_FAULTS, CLOCK_HEALTH_KEY

        doc = JournalReader(self.data_dir / JOURNAL_FILE).state(CLOCK_HEALTH_KEY) or {}
        totals = doc.get("totals", {})
        faults = CounterMetricFamily("geowarn_clock_faults", "readings whose time stamp was wrong, by kind (out_of_order, ahead of arrival, conflict)", labels=["kind"])
        for kind in CLOCK_FAULTS:
            faults.add_metric([kind], float(totals.get(kind, 0)))
        yield faults
        yield GaugeMetricFamily("geowarn_devices_clock_trouble", "devices whose recent readings came out of order or ahead of their arrival too often (clock health event raised)", value=float(doc.get("devices_in_trouble", 0)))
        yield GaugeMetricFamily("geowarn_readings_held", "readings stamped ahead of their arrival, held until the clock reaches their time", value=float(doc.get("held", 0)))


    # -- devices' status and commands (issue 15 item 4) -------------------------------------------

    def _devices_health(self) -> Iterator[Metric]:
        """Registry devices whose latest status reports a low battery or a faulty sensor
        (``sensor_state`` not 0), and devices' answers to commands by result: fleet counts."""
        with self._lock:
            reporting, low, faulty = self._update_health(self._fleet())
        yield GaugeMetricFamily("geowarn_devices_status_reporting", "registry devices that have sent a status heartbeat", value=float(reporting))
        yield GaugeMetricFamily(
            "geowarn_devices_battery_low",
            f"devices whose latest status reports a low battery (below the device's battery_low_percent, default {LOW_BATTERY_PERCENT:g} %, "
            f"or its battery_low_v, default {LOW_BATTERY_V:g} V, where no charge is reported)",
            value=float(low),
        )
        yield GaugeMetricFamily("geowarn_devices_sensor_faulty", "devices whose latest status marks at least one sensor faulty (sensor_state not 0)", value=float(faulty))
        answers = CounterMetricFamily("geowarn_command_answers", "devices' answers to sampling commands of the national convention, by result (succ, fail)", labels=["result"])
        results = {"succ": 0, "fail": 0}
        for ans in OutboxReader(self.data_dir / OUTBOX_FILE).command_answers().values():
            r = str(ans.get("result"))
            if r in results:
                results[r] += 1
        for r, n in results.items():
            answers.add_metric([r], float(n))
        yield answers

    def _update_health(self, fleet: _Fleet) -> tuple[int, int, int]:
        """(reporting, low battery, faulty) over the registry's devices, from each one's latest
        status: the status rows stored since the last scrape are read and counted in place of
        their devices' earlier ones. Read again from the start for another registry or another
        journal file (restored from a backup: a new file, or ids that went back)."""
        path = self.data_dir / JOURNAL_FILE
        file_id = _file_id(path)
        h = self._status_counts
        reader = JournalReader(path)
        newest = reader.status_last_id()
        if h is None or h.file_id != file_id or h.fleet is not fleet or newest < h.after_id:
            # A first look: each device's newest status up to now, then the rows after it.
            h = self._status_counts = _Health(fleet, file_id, bytearray(len(fleet.index)), first_look_upto=newest)
        if h.first_look_upto is not None:
            # Counting a device twice (a first look that failed half-way, taken again) is
            # harmless: its newest status replaces the one counted.
            for rows in reader.newest_statuses_upto(h.first_look_upto, STATUS_CHUNK):
                self._count_statuses(h, rows)
            h.after_id, h.first_look_upto = h.first_look_upto, None
        while newest > h.after_id:
            rows = reader.statuses_after(h.after_id, STATUS_CHUNK)
            self._count_statuses(h, rows)
            if len(rows) < STATUS_CHUNK:
                break
        return h.reporting, h.low, h.faulty

    @staticmethod
    def _count_statuses(h: _Health, rows: list[tuple[int, str, str, str]]) -> None:
        """Count each row's device by it in place of its earlier status; move past them."""
        from geowarn.console.views import device_health

        fleet = h.fleet
        index, devices, codes = fleet.index, fleet.devices, h.codes
        for rid, site, device, raw in rows:
            h.after_id = rid
            i = index.get((site, device))
            spec = None if i is None else devices[i]
            if i is None or spec is None:
                continue
            try:
                health = device_health(json.loads(raw))
            except ValueError:
                health = None
            code = 0 if health is None else (
                _REPORTING
                | (_LOW if battery_low(health, spec.battery_low_percent, spec.battery_low_v) else 0)
                | (_FAULTY if health.get("faulty_sensors") else 0)
            )
            was = codes[i]
            codes[i] = code
            h.reporting += (code & _REPORTING) - (was & _REPORTING)
            h.low += bool(code & _LOW) - bool(was & _LOW)
            h.faulty += bool(code & _FAULTY) - bool(was & _FAULTY)


def _file_id(path: Path) -> tuple[int, int] | None:
    """Which file is at ``path`` (another one after a restore from a backup)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def make_registry(
    data_dir: Path, registry: Registry, main: Callable[[], MainStats], now: Callable[[], float], *, warm_up: bool = True
) -> CollectorRegistry:
    """A fresh registry holding the GeoWarn collector (never the process-global one); with
    ``warm_up``, the collector's first look at the journal starts at once on a thread."""
    reg = CollectorRegistry(auto_describe=False)
    collector = GeoWarnCollector(data_dir, registry, main, now)
    reg.register(collector)
    if warm_up:
        threading.Thread(target=collector.warm, name="metrics-warm-up", daemon=True).start()
    return reg
