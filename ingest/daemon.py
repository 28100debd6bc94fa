"""The ingest daemon: the one composition root that wires the pipeline of DESIGN §1.

    paho thread ──inbox──▶ pipeline thread: decode → journal commit → ack
                                             └─▶ dead letters (table + MQTT)
    detection process: journal → quality guards, detectors, fusion → alerts, from its position
    forwarder thread:  journal → InfluxDB, from its saved position

``build_app(loaded)`` builds everything from configuration; tests build their own apps with
their own data dirs and brokers. Nothing here is a module-level singleton.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alerts.clock import Clock, WallClock
from alerts.log import rfc3339
from config.settings import Loaded
from ingest.codecs import Codec, PayloadError
from ingest.detection import DetectionProcess
from ingest.forwarder import Forwarder
from ingest.journal import DEADLETTER_KEEP_BYTES, Journal, to_ms
from ingest.mqtt import Inbound, MqttLink

log = logging.getLogger("geowarn.daemon")

#: At most this many messages share one journal transaction (and one fsync).
MAX_BATCH = 2000
#: A dead letter on MQTT carries at most this much of the payload.
DEADLETTER_MQTT_BYTES = 1024


@dataclass
class Counters:
    messages: int = 0
    readings_stored: int = 0
    readings_duplicate: int = 0
    deadletters: int = 0
    statuses: int = 0
    stale_acks: int = 0
    seq_gaps: int = 0  # a device's seq jumped: messages lost between device and broker
    deadletter_reasons: dict[str, int] = field(default_factory=dict)


class Pipeline:
    """Decode, validate and store a batch of inbound messages; dead-letter the rest. Owns the
    journal writer. Detection reads the journal in its own process (ingest/detection.py)."""

    def __init__(
        self,
        loaded: Loaded,
        journal: Journal,
        publish: Any,
        clock: Clock,
        on_committed: Any = None,
    ) -> None:
        s = loaded.settings
        self.registry = loaded.registry
        self.journal = journal
        self.publish = publish
        self.clock = clock
        self.prefix = s.topic_prefix
        self.codec = Codec(
            loaded.registry, s.topic_prefix, max_skew_s=s.max_future_skew_s, max_bytes=s.max_payload_bytes, max_readings=s.max_readings_per_message
        )
        self.series = journal.series_ids(loaded.registry)
        self.counters = Counters()
        self.on_committed = on_committed
        self.last_seq: dict[str, int] = {}

    def _deadletter(self, now_ms: int, topic: str, reason: str, detail: str, payload: bytes, item: Any = None) -> tuple[int, str, str, str, bytes]:
        self.counters.deadletters += 1
        self.counters.deadletter_reasons[reason] = self.counters.deadletter_reasons.get(reason, 0) + 1
        doc: dict[str, Any] = {"topic": topic, "reason": reason, "detail": detail, "received": rfc3339(now_ms / 1000.0)}
        if item is not None:
            doc["reading"] = item
            doc["payload"] = json.dumps(item)[:DEADLETTER_MQTT_BYTES]
        else:
            doc["payload"] = payload[:DEADLETTER_MQTT_BYTES].decode("utf-8", "replace")
            doc["truncated"] = len(payload) > DEADLETTER_MQTT_BYTES
        try:
            self.publish(f"{self.prefix}/deadletter", json.dumps(doc, ensure_ascii=False).encode(), False)
        except Exception as exc:  # the table keeps it; the MQTT copy is a courtesy
            log.warning("could not publish a dead letter: %s", exc)
        return (now_ms, topic, reason, detail, payload[:DEADLETTER_KEEP_BYTES] if item is None else json.dumps(item).encode())

    def process(self, items: list[Inbound]) -> int:
        """Make a batch durable; returns how many readings were new."""
        now = self.clock.now()
        now_ms = to_ms(now)
        rows: list[tuple[int, int, float, int, int]] = []
        dls: list[tuple[int, str, str, str, bytes]] = []
        statuses: list[tuple[str, str, int, int, str]] = []
        series = self.series
        for it in items:
            topic = it.topic.decode("utf-8", "replace")
            try:
                d = self.codec.decode(topic, it.payload, now)
            except PayloadError as exc:
                dls.append(self._deadletter(now_ms, topic, exc.reason, exc.detail, it.payload))
                continue
            except Exception as exc:  # a codec bug must not stop ingest: keep the payload, say why
                log.exception("codec failed on %s", topic)
                dls.append(self._deadletter(now_ms, topic, "internal_error", f"{type(exc).__name__}: {exc}", it.payload))
                continue
            if d.kind == "status" and d.status is not None:
                statuses.append((d.site, d.device, to_ms(d.status["t"]), now_ms, json.dumps(d.status)))
            drill = 1 if d.drill else 0
            for info, t, v in d.readings:
                rows.append((series[info], int(round(t * 1000.0)), v, drill, now_ms))
            for r in d.rejects:
                dls.append(self._deadletter(now_ms, topic, r.reason, r.detail, it.payload, r.item))
            if d.seq is not None:
                last = self.last_seq.get(d.device)
                if last is not None and d.seq > last + 1:
                    self.counters.seq_gaps += 1
                self.last_seq[d.device] = d.seq if last is None else max(last, d.seq)
        inserted = self.journal.append(rows, dls, statuses)
        c = self.counters
        c.messages += len(items)
        c.readings_stored += inserted
        c.readings_duplicate += len(rows) - inserted
        c.statuses += len(statuses)
        if self.on_committed is not None and inserted:
            self.on_committed()
        return inserted


class App:
    """The running daemon. ``run(stop)`` blocks until ``stop`` is set, then shuts down cleanly.

    ``event_time_start``: for accelerated runs (the demo) the detection worker's timers follow
    the readings' event time from this instant instead of the wall clock.
    """

    def __init__(self, loaded: Loaded, clock: Clock | None = None, event_time_start: float | None = None) -> None:
        s = loaded.settings
        self.loaded = loaded
        self.clock = clock or WallClock()
        data_dir = Path(s.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.journal_path = data_dir / "journal.sqlite"
        self.journal = Journal(self.journal_path, sync=s.journal_sync)
        prefix = s.topic_prefix
        self.link = MqttLink(
            s.mqtt,
            client_id=s.mqtt_client_id,
            subscriptions=[f"{prefix}/+/+/data", f"{prefix}/+/+/status"],
            protocol=s.mqtt_protocol,
            session_expiry_s=s.mqtt_session_expiry_s,
            keepalive_s=s.mqtt_keepalive_s,
            ca_file=str(s.mqtt_ca_file) if s.mqtt_ca_file else None,
            presence_topic=f"{prefix}/daemon/{s.mqtt_client_id}/state",
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
        self.pipeline = Pipeline(
            loaded,
            self.journal,
            lambda topic, payload, retain: self.link.publish(topic, payload, retain),
            self.clock,
            on_committed=self.forwarder.wake if self.forwarder else None,
        )
        self.detection = DetectionProcess(
            loaded, self.journal_path, event_time=event_time_start is not None, start_t=event_time_start or 0.0
        )
        self.ready = threading.Event()

    def _handle(self, items: list[Inbound]) -> None:
        self.pipeline.process(items)
        for it in items:
            if not self.link.ack(it):
                self.pipeline.counters.stale_acks += 1

    def stats_line(self) -> str:
        c = self.pipeline.counters
        line = (
            f"messages {c.messages}, readings stored {c.readings_stored} (duplicates {c.readings_duplicate}), "
            f"dead letters {c.deadletters}, seq gaps {c.seq_gaps}, inbox {self.link.inbox.qsize()}"
        )
        if self.forwarder is not None:
            f = self.forwarder.status()
            lag = "none" if f.lag_readings == 0 else f"{f.lag_readings} readings, {f.lag_s or 0:.0f} s"
            line += f"; forwarder lag {lag}" + (f", last error {f.last_error}" if f.last_error else "")
        return line

    def run(self, stop: threading.Event, drain_s: float = 3.0) -> None:
        stats_every_s = self.loaded.settings.stats_interval_s
        self.detection.start()
        if self.forwarder is not None:
            self.forwarder.start()
        self.link.start()
        self.ready.set()
        log.info("geowarn daemon running: broker %s, data dir %s", self.loaded.settings.mqtt.redacted(), self.loaded.settings.data_dir)
        inbox = self.link.inbox
        next_stats = time.monotonic() + stats_every_s
        try:
            while not stop.is_set():
                if time.monotonic() >= next_stats:
                    log.info("%s", self.stats_line())
                    next_stats += stats_every_s
                items = inbox.take(MAX_BATCH, 0.2)
                if items:
                    self._handle(items)
            # Stop: finish what is already in hand (commit + ack) while the link is still up.
            deadline = time.monotonic() + drain_s
            while time.monotonic() < deadline:
                items = inbox.take(MAX_BATCH, 0.0)
                if not items:
                    break
                self._handle(items)
        finally:
            self.link.stop()
            if self.forwarder is not None:
                self.forwarder.stop()
            # Detection judges everything committed, snapshots and exits.
            self.detection.stop()
            self.journal.close()
            log.info("geowarn daemon stopped: %s", self.stats_line())


def build_app(loaded: Loaded, clock: Clock | None = None, event_time_start: float | None = None) -> App:
    return App(loaded, clock, event_time_start)
