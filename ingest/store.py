"""The store stage: message log → decode and validate → journal (readings, dead letters, status).

Stages 1–2 of DESIGN §1 after the ack: the daemon's ack path has made each raw message durable
in the message log (``ingest/messagelog.py``); this stage, in its own process, reads the log
from its saved position, decodes every message with the codec, keeps every good reading in the
journal (idempotent on series + time, so a redelivered or repeated message is stored once),
and dead-letters the rest with its reason (the dead-letter table and ``{prefix}/deadletter``).
The position moves in the same transaction as the readings it covers, so a crash at any point
neither loses nor doubles a reading. Detection and the forwarder read the journal after it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geowarn.core.timefmt import rfc3339
from geowarn.config.settings import Loaded
from geowarn.ingest.codecs import Codec, PayloadError
from geowarn.ingest.journal import DEADLETTER_KEEP_BYTES, Journal, to_ms
from geowarn.ingest.messagelog import Logged, MessageLog
from geowarn.core.logfields import kv

log = logging.getLogger(__name__)

#: The journal key of the store stage's position in the message log.
POSITION_KEY = "store.message_position"
#: The identity of the message log that position is in.
LOG_ID_KEY = "store.message_log_id"
#: Message-log batches (of up to 2000 messages each) per journal transaction.
BATCH = 4
#: A dead letter on MQTT carries at most this much of the payload.
DEADLETTER_MQTT_BYTES = 1024
#: How often the message log is pruned.
PRUNE_EVERY_S = 10.0


@dataclass
class Counters:
    messages: int = 0
    readings_stored: int = 0
    readings_duplicate: int = 0
    deadletters: int = 0
    statuses: int = 0
    seq_gaps: int = 0  # a device's seq jumped: messages lost between device and broker
    deadletter_reasons: dict[str, int] = field(default_factory=dict)


class Pipeline:
    """Decode, validate and store a batch of logged messages; dead-letter the rest. Owns the
    journal writer."""

    def __init__(self, loaded: Loaded, journal: Journal, publish: Any) -> None:
        s = loaded.settings
        self.registry = loaded.registry
        self.journal = journal
        self.publish = publish
        self.prefix = s.topic_prefix
        self.codec = Codec(
            loaded.registry, s.topic_prefix, max_skew_s=s.max_future_skew_s, max_bytes=s.max_payload_bytes, max_readings=s.max_readings_per_message
        )
        self.series = journal.series_ids(loaded.registry)
        self.counters = Counters()
        self.last_seq: dict[str, int] = {}

    def _deadletter(self, now_ms: int, topic: str, reason: str, detail: str, payload: bytes, size: int, item: Any = None) -> tuple[int, str, str, str, bytes]:
        self.counters.deadletters += 1
        self.counters.deadletter_reasons[reason] = self.counters.deadletter_reasons.get(reason, 0) + 1
        doc: dict[str, Any] = {"topic": topic, "reason": reason, "detail": detail, "received": rfc3339(now_ms / 1000.0)}
        if item is not None:
            doc["reading"] = item
            doc["payload"] = json.dumps(item)[:DEADLETTER_MQTT_BYTES]
        else:
            doc["payload"] = payload[:DEADLETTER_MQTT_BYTES].decode("utf-8", "replace")
            doc["truncated"] = size > DEADLETTER_MQTT_BYTES
        try:
            self.publish(f"{self.prefix}/deadletter", json.dumps(doc, ensure_ascii=False).encode(), False)
        except Exception as exc:  # the table keeps it; the MQTT copy is a courtesy
            log.warning("could not publish a dead letter", extra=kv(error=exc))
        return (now_ms, topic, reason, detail, payload[:DEADLETTER_KEEP_BYTES] if item is None else json.dumps(item).encode())

    def process(self, messages: list[Logged]) -> int:
        """Store a batch and move the position past it, in one transaction; returns how many
        readings were new. Future-skew is judged against each message's arrival time."""
        rows: list[tuple[int, int, float, int, int]] = []
        dls: list[tuple[int, str, str, str, bytes]] = []
        statuses: list[tuple[str, str, int, int, str]] = []
        series = self.series
        for m in messages:
            now_ms = m.received_ms
            topic = m.topic.decode("utf-8", "replace")
            try:
                d = self.codec.decode(topic, m.payload, now_ms / 1000.0, m.size)
            except PayloadError as exc:
                dls.append(self._deadletter(now_ms, topic, exc.reason, exc.detail, m.payload, m.size))
                continue
            except Exception as exc:  # a codec bug must not stop ingest: keep the payload, say why
                log.exception("codec failed", extra=kv(topic=topic))
                dls.append(self._deadletter(now_ms, topic, "internal_error", f"{type(exc).__name__}: {exc}", m.payload, m.size))
                continue
            if d.kind == "status" and d.status is not None:
                statuses.append((d.site, d.device, to_ms(d.status["t"]), now_ms, json.dumps(d.status)))
            drill = 1 if d.drill else 0
            for info, t, v in d.readings:
                rows.append((series[info], int(round(t * 1000.0)), v, drill, now_ms))
            for r in d.rejects:
                dls.append(self._deadletter(now_ms, topic, r.reason, r.detail, m.payload, m.size, r.item))
            if d.seq is not None:
                last = self.last_seq.get(d.device)
                if last is not None and d.seq > last + 1:
                    self.counters.seq_gaps += 1
                self.last_seq[d.device] = d.seq if last is None else max(last, d.seq)
        state = {POSITION_KEY: messages[-1].id} if messages else None
        inserted = self.journal.append(rows, dls, statuses, state)
        c = self.counters
        c.messages += len(messages)
        c.readings_stored += inserted
        c.readings_duplicate += len(rows) - inserted
        c.statuses += len(statuses)
        return inserted


class Store:
    """The store stage over one message log and one journal. Used in-process by tests and by
    the worker process below."""

    def __init__(self, loaded: Loaded, publish: Any, journal_path: str | Path, log_path: str | Path) -> None:
        s = loaded.settings
        self.journal = Journal(journal_path, sync=s.journal_sync)
        self.messages = MessageLog(log_path, sync=s.journal_sync, max_payload_bytes=s.max_payload_bytes, keep_bytes=DEADLETTER_KEEP_BYTES)
        self.pipeline = Pipeline(loaded, self.journal, publish)
        self.position = int(self.journal.get_state(POSITION_KEY, 0) or 0)
        saved_log = self.journal.get_state(LOG_ID_KEY)
        last = self.messages.last_id()
        if (saved_log is not None and saved_log != self.messages.log_id) or self.position > last:
            # A different or rolled-back message log: its ids started again. Decode all of it
            # (storing is idempotent) rather than skip what lies below the old position.
            log.error("the message log is not the one the journal's position refers to; decoding it from the start",
                      extra=kv(log=self.messages.log_id, position=self.position, position_log=saved_log, last_id=last))
            self.position = 0
        self.journal.set_state(LOG_ID_KEY, self.messages.log_id)
        self.journal.set_state(POSITION_KEY, self.position)
        self.keep_ms = int(s.message_keep_s * 1000)
        self.stats_every_s = s.stats_interval_s
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        self._next_stats = time.monotonic() + self.stats_every_s

    @classmethod
    def in_worker(cls, loaded: Loaded, link: Any, journal_path: str, log_path: str) -> "Store":
        return cls(loaded, lambda topic, payload, retain: link.publish(topic, payload, retain), journal_path, log_path)

    def step(self) -> int:
        """Store the next batch of logged messages; returns how many messages were read."""
        batch = self.messages.read_after(self.position, BATCH)
        if batch:
            self.pipeline.process(batch)
            self.position = batch[-1].id
        now = time.monotonic()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_S
            self.messages.prune(self.position, int(time.time() * 1000) - self.keep_ms)
        if now >= self._next_stats:
            self._next_stats = now + self.stats_every_s
            log.info("store figures", extra=kv(**self.stats()))
        return len(batch)

    def lag(self) -> int:
        """Messages logged but not yet stored."""
        return max(0, self.messages.last_id() - self.position)

    def stats(self) -> dict[str, int]:
        """The store stage's figures so far, as log fields."""
        c = self.pipeline.counters
        return {"messages": c.messages, "readings_stored": c.readings_stored, "duplicates": c.readings_duplicate,
                "dead_letters": c.deadletters, "seq_gaps": c.seq_gaps, "lag_messages": self.lag()}

    def checkpoint(self) -> None:
        pass  # the position is committed with every batch

    def close(self) -> None:
        log.info("store stopped", extra=kv(**self.stats()))
        self.messages.close()
        self.journal.close()


def stored_position(journal: Journal) -> int:
    """How far the store stage has got in the message log (for the daemon's catch-up checks)."""
    return int(journal.get_state(POSITION_KEY, 0) or 0)
