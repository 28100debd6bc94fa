"""``/metrics``: the daemon's Prometheus metrics, read from its SQLite files at scrape time.

This module owns the metric names and how each is computed. ``GeoWarnCollector`` is a
prometheus-client custom collector (the one-method ``collect`` protocol): nothing is counted
twice in memory, each scrape reads the durable truth the processes already keep —

- the main process's own counters (messages received and acknowledged, store lag, forwarder
  lag), handed in as a callable because they live in that process's memory;
- ``journal.sqlite``: readings stored, dead letters by reason, device online ratio;
- ``outbox.sqlite``: notifications by notifier and delivery state, escalations, open
  warnings by level (the response chain's persisted site states).

The store and detection workers are other processes; reading their files instead of their
memory means a worker restart never resets a metric. The collector is registered in a
registry the caller passes (``make_registry``), never the global one, so tests and several
daemons in one process do not collide.

A file that does not exist yet (a daemon that has just started) gives zeros, not an error.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from geowarn.config.registry import Registry

log = logging.getLogger(__name__)

__all__ = ["GeoWarnCollector", "MainStats", "make_registry", "open_ro"]

#: The journal key of the store stage's position in the message log (ingest/store.py).
STORE_POSITION_KEY = "store.message_position"
DETECTION_STATS_KEY = "detection.stats"  # ingest/detection.py STATS_KEY
#: A device is online when its newest reading arrived within this many of its shortest
#: reporting intervals: the no-data rule of DESIGN §5 (silent for three intervals).
ONLINE_INTERVALS = 3.0


@dataclass(frozen=True)
class MainStats:
    """The main daemon process's counters at the time of a scrape."""

    messages_received: int = 0
    messages_acked: int = 0
    forwarder_enabled: bool = False
    forwarder_lag_readings: int = 0
    forwarder_lag_s: float = 0.0
    worker_restarts: int = 0


def open_ro(path: Path) -> sqlite3.Connection | None:
    """A read-only connection (None when the file does not exist yet). Read-only so that the
    API and the metrics can never write into another stage's file."""
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


class GeoWarnCollector(Collector):
    def __init__(self, data_dir: Path, registry: Registry, main: Callable[[], MainStats], now: Callable[[], float]) -> None:
        self.data_dir = Path(data_dir)
        self.registry = registry
        self.main = main
        self.now = now

    def describe(self) -> list[Metric]:
        # Custom collectors are described by running collect() unless this says otherwise;
        # an empty description keeps registration from reading the files.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._main()
        try:
            yield from self._journal()
            yield from self._outbox()
        except sqlite3.Error as exc:
            # A scrape during a schema change or a locked file: report it instead of failing
            # the whole scrape, so the main process's metrics still arrive.
            log.warning("metrics: reading the SQLite files failed: %s", exc)
            g = GaugeMetricFamily("geowarn_metrics_read_errors", "1 when the last scrape could not read a GeoWarn SQLite file")
            g.add_metric([], 1.0)
            yield g

    # -- main process ----------------------------------------------------------------------

    def _main(self) -> Iterator[Metric]:
        m = self.main()
        yield CounterMetricFamily("geowarn_messages_received", "MQTT data/status messages received and logged by the ack path", value=m.messages_received)
        yield CounterMetricFamily("geowarn_messages_acked", "MQTT messages acknowledged to the broker after they were durable", value=m.messages_acked)
        yield CounterMetricFamily("geowarn_worker_restarts", "store/detection worker processes restarted after dying", value=m.worker_restarts)
        if m.forwarder_enabled:
            yield GaugeMetricFamily("geowarn_forwarder_lag_readings", "journal readings not yet accepted by InfluxDB", value=m.forwarder_lag_readings)
            yield GaugeMetricFamily("geowarn_forwarder_lag_seconds", "age of the oldest reading not yet forwarded", value=m.forwarder_lag_s)

    # -- journal ---------------------------------------------------------------------------

    def _journal(self) -> Iterator[Metric]:
        conn = open_ro(self.data_dir / "journal.sqlite")
        stored = CounterMetricFamily("geowarn_readings_stored", "readings stored in the journal (duplicates stored once)")
        dead = CounterMetricFamily("geowarn_deadletters", "messages or readings rejected, by reason", labels=["reason"])
        devices = GaugeMetricFamily("geowarn_devices", "devices in the site registry")
        online = GaugeMetricFamily("geowarn_devices_online", f"devices whose newest reading arrived within {ONLINE_INTERVALS:g} reporting intervals")
        ratio = GaugeMetricFamily("geowarn_device_online_ratio", "devices online / devices in the registry")
        # Detection's own figures, saved by its worker at each checkpoint (snapshot interval).
        judged = CounterMetricFamily("geowarn_detection_readings", "readings judged by the detectors and fusion (as of the last checkpoint)")
        judging = CounterMetricFamily("geowarn_detection_seconds", "time spent judging readings: detectors, fusion and the response chain (as of the last checkpoint)")
        behind = GaugeMetricFamily("geowarn_detection_lag_readings", "journal readings after detection's last checkpoint")
        total = sum(len(s.devices) for s in self.registry.sites.values())
        n_online = stored_batch = last_batch = 0
        if conn is None:
            stored.add_metric([], 0.0)
        else:
            try:
                # readings.id is the arrival order and rows are never deleted: max(id) is the
                # count without scanning the table.
                stored.add_metric([], float(conn.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0]))
                for reason, n in conn.execute("SELECT reason, count(*) FROM deadletters GROUP BY reason ORDER BY reason"):
                    dead.add_metric([str(reason)], float(n))
                n_online = self._online(conn)
                row = conn.execute("SELECT value FROM state WHERE key = ?", (STORE_POSITION_KEY,)).fetchone()
                stored_batch = int(json.loads(row[0])) if row else 0
                row = conn.execute("SELECT value FROM state WHERE key = ?", (DETECTION_STATS_KEY,)).fetchone()
                if row:
                    det = json.loads(row[0])
                    judged.add_metric([], float(det.get("readings", 0)))
                    judging.add_metric([], float(det.get("seconds", 0.0)))
                    behind.add_metric([], float(max(0, int(conn.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0]) - int(det.get("position", 0)))))
            finally:
                conn.close()
        log_conn = open_ro(self.data_dir / "messages.sqlite")
        if log_conn is not None:
            try:
                last_batch = int(log_conn.execute("SELECT coalesce(max(id), 0) FROM batches").fetchone()[0])
            finally:
                log_conn.close()
        lag = GaugeMetricFamily("geowarn_store_lag_batches", "message-log batches (of up to 2000 messages) not yet decoded into the journal")
        lag.add_metric([], float(max(0, last_batch - stored_batch)))
        devices.add_metric([], float(total))
        online.add_metric([], float(n_online))
        ratio.add_metric([], n_online / total if total else 0.0)
        yield from (stored, dead, lag, devices, online, ratio, judged, judging, behind)

    def _online(self, conn: sqlite3.Connection) -> int:
        """Devices with a channel whose newest reading (by event time, through the readings_key
        index: one seek per series) arrived recently. Arrival time, not event time, so a
        device replaying a backlog counts as online."""
        now_ms = self.now() * 1000.0
        series = {(site, device, channel): sid for sid, site, device, channel in conn.execute("SELECT id, site, device, channel FROM series")}
        n = 0
        for (site, device), chans in self.registry.channels.items():
            window_ms = ONLINE_INTERVALS * min(c.interval_s for c in chans.values()) * 1000.0
            for ch in chans:
                sid = series.get((site, device, ch))
                if sid is None:
                    continue
                row = conn.execute("SELECT received_ms FROM readings WHERE series = ? ORDER BY t_ms DESC LIMIT 1", (sid,)).fetchone()
                if row is not None and now_ms - row[0] <= window_ms:
                    n += 1
                    break
        return n

    # -- outbox ----------------------------------------------------------------------------

    def _outbox(self) -> Iterator[Metric]:
        conn = open_ro(self.data_dir / "outbox.sqlite")
        notes = GaugeMetricFamily("geowarn_notifications", "outbox messages by notifier and delivery state (pending, sent, dead)", labels=["notifier", "state"])
        esc = CounterMetricFamily("geowarn_escalations", "warnings escalated to the next tier for want of an acknowledgement, by level", labels=["level"])
        open_w = GaugeMetricFamily("geowarn_open_warnings", "real (not exercise) warnings currently announced, by level", labels=["level"])
        unacked = GaugeMetricFamily("geowarn_unacknowledged_warnings", "real warnings waiting for an acknowledgement, by level", labels=["level"])
        by_level = {lvl: 0 for lvl in (1, 2, 3, 4)}
        un_level = {lvl: 0 for lvl in (1, 2, 3, 4)}
        esc_level = {lvl: 0 for lvl in (1, 2, 3, 4)}
        if conn is not None:
            try:
                for notifier, state, n in conn.execute("SELECT notifier, state, count(*) FROM outbox GROUP BY notifier, state ORDER BY notifier, state"):
                    notes.add_metric([str(notifier), str(state)], float(n))
                # One escalation is one engine notification, delivered by several notifiers
                # (ids "<notify id>/<notifier>"): count the distinct notification ids.
                for level, n in conn.execute(
                    "SELECT json_extract(payload, '$.level'), count(DISTINCT substr(id, 1, instr(id, '/') - 1)) FROM outbox "
                    "WHERE json_extract(payload, '$.kind') = 'escalation' AND json_extract(payload, '$.exercise') = 0 GROUP BY 1"
                ):
                    if level in esc_level:
                        esc_level[int(level)] = int(n)
                for key, value in conn.execute("SELECT key, value FROM state WHERE key >= 'alert/' AND key < 'alert0'"):
                    if not str(key).endswith("|real"):
                        continue
                    s = json.loads(value)
                    announced = int(s.get("announced", 0))
                    if announced in by_level:
                        by_level[announced] += 1
                        if s.get("status") in ("unacknowledged", "rtn_unacknowledged"):
                            un_level[announced] += 1
            finally:
                conn.close()
        for lvl in (1, 2, 3, 4):
            open_w.add_metric([str(lvl)], float(by_level[lvl]))
            unacked.add_metric([str(lvl)], float(un_level[lvl]))
            esc.add_metric([str(lvl)], float(esc_level[lvl]))
        yield from (notes, esc, open_w, unacked)


def make_registry(data_dir: Path, registry: Registry, main: Callable[[], MainStats], now: Callable[[], float]) -> CollectorRegistry:
    """A fresh registry holding the GeoWarn collector (never the process-global one)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(GeoWarnCollector(data_dir, registry, main, now))
    return reg
