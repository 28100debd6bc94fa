"""The ingest daemon: the one composition root that wires the pipeline of DESIGN §1.

    paho thread ──inbox──▶ ack thread: message log commit (raw messages) → PUBACKs
    store process:     message log → decode, validate → journal (readings, dead letters + MQTT)
    detection process: journal → quality guards, detectors, fusion → alerts, from its position
    forwarder thread:  journal → InfluxDB, from its saved position

Each stage keeps its own position in what it reads and moves it in the same transaction as
what it writes, so any process may die at any moment and the next one resumes exactly. A
worker process that dies is started again (and logged); the ack path never waits for it.

Degrade, don't die: when the message log cannot be written (disk full, I/O error) the ack
thread keeps the messages it took in hand, unacknowledged, takes no more (the broker keeps
them: its in-flight window stops the flow), and retries writing them until it can; the
workers do the same on their side (service/worker.py) and report it. Meanwhile the console
keeps serving, ``/healthz`` answers 503 with the reasons, ``geowarn_degraded`` is 1 and a log
line says so every minute. The data directory's free space is watched and a warning raised
before it runs out (``disk_warn_free_percent`` / ``disk_warn_free_bytes``).

``build_app(loaded)`` builds everything from configuration; tests build their own apps with
their own data dirs and brokers. Nothing here is a module-level singleton.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geowarn.core.clock import Clock, WallClock
from geowarn.config.settings import Loaded
from geowarn.service.detection import alert_policy, detection_process
from geowarn.ingest.codecs_cn import topic_filter
from geowarn.ingest.forwarder import Forwarder
from geowarn.ingest.journal import DEADLETTER_KEEP_BYTES, JOURNAL_FILE, Journal, to_ms
from geowarn.ingest.messagelog import MESSAGES_FILE, MessageLog
from geowarn.ingest.mqtt import Inbound, MqttLink
from geowarn.ingest.store import Store, stored_position
from geowarn.service.sdnotify import Notifier
from geowarn.service.worker import START_SILENCE_S as WORKER_START_SILENCE_S
from geowarn.service.worker import STORE_NICENESS, WorkerProcess, describe_error, is_write_error
from geowarn.core.logfields import kv

log = logging.getLogger(__name__)

#: At most this many messages share one message-log transaction (and one fsync).
MAX_BATCH = 2000
#: ... and at most about this many payload bytes.
MAX_BATCH_BYTES = 64 * 1024 * 1024
#: How often the daemon checks that its worker processes are alive.
WATCH_EVERY_S = 1.0
#: After a failed message-log write the messages in hand are written again after this pause,
#: doubled up to the maximum.
WRITE_RETRY_FIRST_S = 0.5
WRITE_RETRY_MAX_S = 5.0
#: While degraded the daemon says so in its log this often.
DEGRADED_LOG_EVERY_S = 60.0
#: Without a broker connection for this long the daemon says so (and how to fix it), and
#: repeats it this often while it lasts.
BROKER_SILENT_AFTER_S = 10.0
BROKER_LOG_EVERY_S = 30.0
#: How often the data directory's free space is measured, and how often a low-space warning
#: is repeated while it lasts.
DISK_CHECK_EVERY_S = 5.0
DISK_LOG_EVERY_S = 600.0
#: Journal state keys: the broker session this data dir holds (broker and client id), and the
#: sessions the broker was found to have lost (count and time of the last), kept across restarts.
SESSION_KEY = "mqtt.session"
SESSION_LOST_KEY = "mqtt.sessions_lost"
#: The parts that report whether they can write, in the order /healthz and /metrics list them.
PARTS = ("ack", "store", "detection")


@dataclass
class Counters:
    messages: int = 0  # durable in the message log and acknowledged
    stale_acks: int = 0  # arrived on an earlier connection: the broker redelivers them
    worker_restarts: int = 0
    write_errors: int = 0  # message-log writes that failed (the messages were kept and retried)


@dataclass(frozen=True)
class Disk:
    """The data directory's file system at the last look."""

    free_bytes: int
    total_bytes: int
    warn_below_bytes: int

    @property
    def low(self) -> bool:
        return self.free_bytes < self.warn_below_bytes


def disk_of(path: Path, warn_percent: float, warn_bytes: int) -> Disk:
    """Free space for unprivileged writers (``f_bavail``) and the warning threshold: the smaller
    of ``warn_percent`` of the file system and ``warn_bytes`` (either 0: never warn)."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    return Disk(st.f_bavail * st.f_frsize, total, int(min(total * warn_percent / 100.0, warn_bytes)))


def private_data_dir(data_dir: Path) -> None:
    """Make ``data_dir`` mode 0700 when it does not exist yet; warn when an existing one may be
    read by group or others. It holds the outbox (duty officers' phones and e-mails), the
    notifications, the audit and the control key."""
    import stat

    try:
        data_dir.mkdir(mode=0o700, parents=True)
        data_dir.chmod(0o700)  # whatever the umask of whoever started us
        return
    except FileExistsError:
        pass
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "the data directory may be read by group or others: it holds duty officers' phone numbers and e-mail "
            "addresses (outbox), notifications and the audit; chmod -R go= it (the daemon makes new files private)",
            extra=kv(data_dir=data_dir, mode=f"{mode:04o}"),
        )


class App:
    """The running daemon. ``run(stop)`` blocks until ``stop`` is set, then shuts down cleanly.

    ``event_time_start``: for accelerated runs (the demo) the detection worker's timers follow
    the readings' event time from this instant instead of the wall clock.
    """

    def __init__(self, loaded: Loaded, clock: Clock | None = None, event_time_start: float | None = None) -> None:
        s = loaded.settings
        alert_policy(loaded)  # a bad [alert_policy] stops the start here, not inside the worker
        self.loaded = loaded
        self.clock = clock or WallClock()
        data_dir = Path(s.data_dir)
        private_data_dir(data_dir)
        self.journal_path = data_dir / JOURNAL_FILE
        self.log_path = data_dir / MESSAGES_FILE
        self.messages = MessageLog(self.log_path, sync=s.journal_sync, max_payload_bytes=s.max_payload_bytes, keep_bytes=DEADLETTER_KEEP_BYTES)
        self.journal = Journal(self.journal_path, sync=s.journal_sync)  # created here, written by the store worker
        self.counters = Counters()
        prefix = s.topic_prefix
        # The broker session this data dir had: a daemon restarting on it must find it again,
        # or the broker lost what it queued for us while we were down (item 7 of issue 13).
        self._session_identity = {"broker": s.mqtt.redacted(), "client_id": s.mqtt_client_id}
        had_session = self.journal.get_state(SESSION_KEY) == self._session_identity
        lost = self.journal.get_state(SESSION_LOST_KEY) or {}
        self._sessions_lost_total = int(lost.get("count", 0))
        self._next_broker_log = 0.0
        self._session_lost_at: float | None = lost.get("t")
        self._sessions_lost_seen = 0
        self._session_recorded = False
        self.link = MqttLink(
            s.mqtt,
            client_id=s.mqtt_client_id,
            # cn_topics: the national convention's device topics ($dp, vendor topics); a "$…"
            # topic needs its own subscription, '#' never matches it.
            subscriptions=[f"{prefix}/+/+/data", f"{prefix}/+/+/status", *(topic_filter(t) for t in s.cn_topic_list)],
            protocol=s.mqtt_protocol,
            session_expiry_s=s.mqtt_session_expiry_s,
            keepalive_s=s.mqtt_keepalive_s,
            ca_file=str(s.mqtt_ca_file) if s.mqtt_ca_file else None,
            presence_topic=f"{prefix}/daemon/{s.mqtt_client_id}/state",
            expect_session=had_session,
        )
        self.forwarder: Forwarder | None = None
        if s.influx_url:
            self.forwarder = Forwarder(
                self.journal_path,
                url=s.influx_url,
                token=s.influx_token,
                org=s.influx_org,
                bucket=s.influx_bucket,
                batch=s.forward_batch,
                now=self.clock.now,
            )
        self.store = WorkerProcess("store", Store.in_worker, loaded, str(self.journal_path), str(self.log_path), niceness=STORE_NICENESS)
        self.detection = detection_process(
            loaded, self.journal_path, event_time=event_time_start is not None, start_t=event_time_start or 0.0
        )
        self.ready = threading.Event()
        # Degraded mode (see the module's docstring). The ack thread owns these; the HTTP
        # thread reads only ``_health``, a tuple replaced whole.
        self._pending: list[Inbound] = []  # taken from the inbox, not yet durable, not acked
        self._pending_ms = 0
        self._retry_at = 0.0
        self._retry_pause = WRITE_RETRY_FIRST_S
        self._ack_error: str | None = None
        self._degraded_since: float | None = None
        self._next_degraded_log = 0.0
        self._disk: Disk | None = None
        self._next_disk = 0.0
        self._next_disk_log = 0.0
        self._health: tuple[tuple[tuple[str, str], ...], Disk | None] = (tuple((p, "") for p in PARTS), None)
        self._restart_at: dict[str, float] = {}
        self._restart_pause: dict[str, float] = {}
        self._last_restart: dict[str, float] = {}
        # The duty-officer API and console (console/api.py) run here as a uvicorn thread: they
        # read the SQLite files and send people's actions over MQTT like any client, so they
        # need none of the workers' memory and never touch the ack loop below.
        self.http: Any = None
        if s.http != "off":
            from geowarn.console.api import ApiServer

            self.http = ApiServer(loaded, data_dir, self.main_stats, self.clock.now)

    def _handle(self, items: list[Inbound]) -> None:
        """Make a batch taken from the inbox durable and acknowledge it; what cannot be written
        now stays in hand (``_pending``) for ``_flush`` to retry."""
        self._pending = items
        self._pending_ms = to_ms(self.clock.now())
        self._flush()

    def _flush(self) -> bool:
        """Write the messages in hand to the message log and acknowledge them, chunk by chunk
        (each chunk is acknowledged once it is durable, so a retry never logs it twice). On a
        write error the rest stays in hand, unacknowledged, and False is returned."""
        gen = self.link.generation
        # One that came on an earlier connection was not acknowledged; the broker sends it
        # again on this one (persistent session), so logging our copy too would log it twice.
        pending = [it for it in self._pending if it.qos == 0 or it.generation == gen]
        c = self.counters
        ack_many = self.link.ack_many
        while pending:
            n, size = 0, 0
            for it in pending:
                # A row stays far below SQLite's 1 GB blob limit whatever max_payload_bytes says.
                if n and size + len(it.payload) > MAX_BATCH_BYTES:
                    break
                n += 1
                size += len(it.payload)
            chunk = pending[:n]
            try:
                self.messages.append([(it.topic, it.payload) for it in chunk], self._pending_ms)
            except Exception as exc:
                if not is_write_error(exc):
                    raise
                self._pending = pending
                self._write_failed(exc)
                return False
            del pending[:n]
            c.messages += len(chunk)
            # Only now that the chunk is durable: its PUBACKs, with one wake-up of paho's thread.
            c.stale_acks += ack_many(chunk)
        self._pending = []
        if self._ack_error is not None:
            log.warning("the message log is written again; acknowledging messages again", extra=kv(retries=c.write_errors))
            self._ack_error = None
            self._retry_pause = WRITE_RETRY_FIRST_S
            self._update_health()
        if self.forwarder is not None:
            self.forwarder.wake()
        return True

    def _write_failed(self, exc: BaseException) -> None:
        reason = describe_error(exc)
        self.counters.write_errors += 1
        if self._ack_error is None:
            log.error("cannot write the message log; holding the messages unacknowledged (the broker keeps them) and retrying",
                      extra=kv(error=reason, held=len(self._pending)))
        self._ack_error = reason
        self._retry_at = time.monotonic() + self._retry_pause
        self._retry_pause = min(self._retry_pause * 2, WRITE_RETRY_MAX_S)
        self._check_disk(force=True)
        self._update_health()

    # -- health: degraded parts and free space -------------------------------------------------

    def degraded(self) -> dict[str, str]:
        """The parts that cannot write now, with why (empty: all can)."""
        return {part: reason for part, reason in self._health[0] if reason}

    def _update_health(self) -> None:
        """Gather the ack path's and the workers' reports; log the change, and every minute
        while degraded."""
        reasons = {"ack": self._ack_error or "", "store": self.store.degraded or "", "detection": self.detection.degraded or ""}
        self._health = (tuple((p, reasons[p]) for p in PARTS), self._disk)
        now = time.monotonic()
        bad = {p: r for p, r in reasons.items() if r}
        if bad and self._degraded_since is None:
            self._degraded_since = now
            self._next_degraded_log = now + DEGRADED_LOG_EVERY_S
            log.error("daemon DEGRADED: cannot write; /healthz answers 503 until it can", extra=kv(**bad, **self._disk_fields()))
        elif bad and now >= self._next_degraded_log:
            self._next_degraded_log = now + DEGRADED_LOG_EVERY_S
            log.error("daemon still DEGRADED: cannot write", extra=kv(for_s=round(now - (self._degraded_since or now)), held=len(self._pending),
                                                                     **bad, **self._disk_fields()))
        elif not bad and self._degraded_since is not None:
            log.warning("daemon no longer degraded: writing works again", extra=kv(degraded_s=round(now - self._degraded_since)))
            self._degraded_since = None

    def _disk_fields(self) -> dict[str, Any]:
        d = self._disk
        return {} if d is None else {"disk_free_bytes": d.free_bytes, "disk_total_bytes": d.total_bytes}

    def _check_disk(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_disk:
            return
        self._next_disk = now + DISK_CHECK_EVERY_S
        s = self.loaded.settings
        try:
            disk = disk_of(Path(s.data_dir), s.disk_warn_free_percent, s.disk_warn_free_bytes)
        except OSError as exc:
            log.warning("cannot measure the data directory's free space", extra=kv(error=exc))
            return
        was_low = self._disk is not None and self._disk.low
        self._disk = disk
        if disk.low and (not was_low or now >= self._next_disk_log):
            self._next_disk_log = now + DISK_LOG_EVERY_S
            log.warning("the data directory is running out of space: free some, or the daemon stops acknowledging messages when it is full",
                        extra=kv(data_dir=s.data_dir, free_bytes=disk.free_bytes, total_bytes=disk.total_bytes, warn_below_bytes=disk.warn_below_bytes))
        elif was_low and not disk.low:
            log.info("the data directory has enough free space again", extra=kv(data_dir=s.data_dir, free_bytes=disk.free_bytes))

    def stored_position(self) -> int:
        """How many logged messages the store stage has put into the journal (by log id)."""
        return stored_position(self.journal)

    def caught_up(self) -> bool:
        """Everything logged so far is in the journal."""
        return self.stored_position() >= self.messages.last_id()

    def stats(self) -> dict[str, Any]:
        """The ack path's figures so far (and the forwarder's, when there is one), as log fields."""
        c = self.counters
        out: dict[str, Any] = {
            "messages_acked": c.messages,
            "store_lag_messages": max(0, self.messages.last_id() - self.stored_position()),
            "stale_acks": c.stale_acks,
            "inbox": self.link.inbox.qsize(),
            "sessions_lost": self._sessions_lost_total,
        }
        if self._pending:
            out["held_unacked"] = len(self._pending)
        if c.write_errors:
            out["write_errors"] = c.write_errors
        if self.forwarder is not None:
            f = self.forwarder.status()
            out.update(forwarder_lag_readings=f.lag_readings, forwarder_lag_s=round(f.lag_s or 0.0))
            if f.last_error:
                out["forwarder_error"] = f.last_error
        return out

    def main_stats(self) -> Any:
        """This process's counters for /metrics, called from the HTTP thread: plain values only,
        never the ack path's SQLite connections (console/metrics.py reads them through the stores' readers)."""
        from geowarn.console.metrics import MainStats

        c, f = self.counters, self.forwarder.status() if self.forwarder is not None else None
        parts, disk = self._health
        return MainStats(c.messages, c.messages - c.stale_acks, f is not None, f.lag_readings if f else 0,
                         (f.lag_s or 0.0) if f else 0.0, c.worker_restarts, degraded=parts,
                         disk_free_bytes=disk.free_bytes if disk else None, disk_total_bytes=disk.total_bytes if disk else None,
                         disk_warn_below_bytes=disk.warn_below_bytes if disk else None,
                         broker_sessions_lost=self._sessions_lost_total, broker_session_lost_at=self._session_lost_at,
                         mqtt_connected=self.link.connected.is_set(), broker=self.loaded.settings.mqtt.redacted(),
                         started=self.ready.is_set())

    def _watch_broker(self, now: float) -> None:
        """Say, loudly and again every BROKER_LOG_EVERY_S, that no broker is reachable: a
        daemon without one receives nothing, and "running" alone would hide it."""
        since = self.link.disconnected_since
        if since is None or now - since < BROKER_SILENT_AFTER_S or now < self._next_broker_log:
            return
        self._next_broker_log = now + BROKER_LOG_EVERY_S
        log.error(
            "no connection to the MQTT broker: nothing is being received or stored. Start the broker "
            "(Debian: `apt install mosquitto`; a ready configuration: `geowarn broker-config`) or point "
            "GEOWARN_MQTT_URL / [mqtt] url at it; retrying",
            extra=kv(broker=self.loaded.settings.mqtt.redacted(), for_s=round(now - since), failed_attempts=self.link.connect_failures),
        )

    def _watch_session(self) -> None:
        """Record the broker session once it exists, and every session the broker lost, in the
        journal: a lost session is a possible loss of data that /healthz and /metrics report
        until someone has looked (the count survives restarts)."""
        link = self.link
        try:
            if not self._session_recorded and link.connects:
                self.journal.set_state(SESSION_KEY, self._session_identity)
                self._session_recorded = True
            if link.sessions_lost > self._sessions_lost_seen:
                total = self._sessions_lost_total + link.sessions_lost - self._sessions_lost_seen
                at = link.session_lost_at
                self.journal.set_state(SESSION_LOST_KEY, {"count": total, "t": at})
                self._sessions_lost_total, self._session_lost_at = total, at
                self._sessions_lost_seen = link.sessions_lost
        except sqlite3.Error as exc:  # degraded (disk full): tried again at the next watch
            log.warning("could not record the broker session in the journal", extra=kv(error=exc))

    def _watch_workers(self) -> None:
        """Replace a dead worker, without waiting for it and with a growing pause between
        restarts of a worker that keeps dying (a crash loop must not spin or stop ingest)."""
        now = time.monotonic()
        for worker in (self.store, self.detection):
            if worker.alive() or now < self._restart_at.get(worker.name, 0.0):
                continue
            pause = self._restart_pause.get(worker.name, 1.0)
            self._restart_pause[worker.name] = min(pause * 2, 60.0) if now - self._last_restart.get(worker.name, -1e9) < 120 else 1.0
            self._last_restart[worker.name] = now
            self._restart_at[worker.name] = now + self._restart_pause[worker.name]
            self.counters.worker_restarts += 1
            try:
                worker.restart()
            except Exception:  # spawning failed (no memory, no processes): try again later
                log.exception("could not restart a worker", extra=kv(worker=worker.name))
        for worker in (self.store, self.detection):
            worker.health()
        self._check_disk()
        self._update_health()

    def run(self, stop: threading.Event, drain_s: float = 3.0) -> None:
        stats_every_s = self.loaded.settings.stats_interval_s
        notify = Notifier()

        def starting(worker: str) -> Any:
            # A worker resuming a national fleet's state says it is still at it: systemd's
            # start timeout is extended as long as it does (TimeoutStartSec would kill us).
            return lambda elapsed: notify.send(status=f"starting: the {worker} worker is resuming its state ({elapsed:.0f} s)",
                                               extend_timeout_usec=int(2 * WORKER_START_SILENCE_S * 1e6))

        self.store.start(progress=starting("store"))
        self.detection.start(progress=starting("detection"))
        if self.forwarder is not None:
            self.forwarder.start()
        # Free space and health first: the first scrape, which may come as soon as the link is
        # up (and "online" published), must already see them (geowarn_disk_low, an alert rule's input).
        self._check_disk(force=True)
        self._update_health()
        self.link.start()
        if self.http is not None:
            self.http.start()
        self.ready.set()
        log.info("geowarn daemon running", extra=kv(broker=self.loaded.settings.mqtt.redacted(), data_dir=self.loaded.settings.data_dir))
        # Under systemd (Type=notify): started once the parts are up; the keep-alives come from
        # this loop, so a hung ack loop is killed and restarted by WatchdogSec.
        notify.ready(f"running; data {self.loaded.settings.data_dir}")
        inbox = self.link.inbox
        next_stats = time.monotonic() + stats_every_s
        next_watch = time.monotonic() + WATCH_EVERY_S
        try:
            while not stop.is_set():
                now = time.monotonic()
                notify.keepalive(now)
                if now >= next_stats:
                    log.info("daemon figures", extra=kv(**self.stats()))
                    next_stats += stats_every_s
                if now >= next_watch:
                    self._watch_workers()
                    self._watch_session()
                    self._watch_broker(now)
                    next_watch = now + WATCH_EVERY_S
                if self._pending:
                    # Degraded: take nothing more until what is in hand is durable.
                    wait = self._retry_at - time.monotonic()
                    if wait > 0:
                        stop.wait(min(wait, 0.2))
                    else:
                        self._flush()
                    continue
                items = inbox.take(MAX_BATCH, 0.2)
                if items:
                    self._handle(items)
            # Stop: finish what is already in hand (commit + ack) while the link is still up;
            # what cannot be written stays unacknowledged at the broker.
            notify.stopping()
            deadline = time.monotonic() + drain_s
            while time.monotonic() < deadline and (not self._pending or self._flush()):
                items = inbox.take(MAX_BATCH, 0.0)
                if not items:
                    break
                self._handle(items)
        finally:
            if self.http is not None:
                self.http.stop()
            self.link.stop()
            # The store stage stores everything logged, then detection judges everything
            # stored, snapshots and exits; the forwarder sends what it can until then.
            self.store.stop()
            self.detection.stop()
            if self.forwarder is not None:
                self.forwarder.stop()
            log.info("geowarn daemon stopped", extra=kv(**self.stats()))
            notify.close()
            self.messages.close()
            self.journal.close()


def build_app(loaded: Loaded, clock: Clock | None = None, event_time_start: float | None = None) -> App:
    return App(loaded, clock, event_time_start)
