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

import copy
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geowarn.core.timefmt import rfc3339
from geowarn.config.settings import Loaded
from geowarn.ingest.codecs import PayloadError, Reject, clean
from geowarn.ingest.codecs_cn import CnCodec
from geowarn.ingest.journal import DEADLETTER_KEEP_BYTES, Journal, to_ms
from geowarn.ingest.messagelog import Logged, MessageLog
from geowarn.ingest.retention import Policy, Retention
from geowarn.core.logfields import kv

log = logging.getLogger(__name__)

#: The journal key of the store stage's position in the message log.
POSITION_KEY = "store.message_position"
#: Journal state key prefix of a rain counter's last total (``{prefix}{site}/{device}/{channel}``),
#: written in the transaction of the batch that moved it, so a restart resumes the difference.
COUNTER_KEY_PREFIX = "store.counter/"
#: The identity of the message log that position is in.
LOG_ID_KEY = "store.message_log_id"
#: Message-log batches (of up to 2000 messages each) per journal transaction.
BATCH = 4
#: A dead letter on MQTT carries at most this much of the payload.
DEADLETTER_MQTT_BYTES = 1024
#: How often the message log, dead letters and device status are pruned.
PRUNE_EVERY_S = 10.0
#: Rows (message-log batches: ids) one pruning transaction deletes at most, and how many such
#: transactions one pass runs: the writers of those files (the ack path, the forwarder and
#: detection) never wait long, and a large backlog is worked off over several passes.
PRUNE_ROWS = 500
PRUNE_LOG_IDS = 100
PRUNE_TRANSACTIONS = 20
#: How many of a message's rejected readings its dead letter quotes (items and details).
DEADLETTER_QUOTE = 5
#: The reason of a message that failed processing itself (a bug, or a row the journal refused).
POISON = "poison"
#: How many times a message whose processing raises is tried before it is quarantined.
POISON_TRIES = 3
#: The reason of a reading whose key (device, channel, time) is stored with another value.
CONFLICT = "conflict"
#: At most this many decoded topics are remembered (one per device in a sane fleet).
TOPIC_CACHE = 200_000

_Part = tuple[list[tuple[int, int, float, int, int]], list[tuple[int, str, str, str, bytes]], list[tuple[str, str, int, int, str]]]


@dataclass
class Counters:
    messages: int = 0
    readings_stored: int = 0
    readings_duplicate: int = 0
    deadletters: int = 0
    statuses: int = 0
    seq_gaps: int = 0  # a device's seq jumped: messages lost between device and broker
    readings_conflict: int = 0  # same key as a stored reading, another value: dead-lettered
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
        # Native and SenML on {prefix}/…, and the national convention there and on cn_topics.
        self.codec = CnCodec(
            loaded.registry, s.topic_prefix, topics=s.cn_topic_list,
            max_skew_s=s.max_future_skew_s, max_bytes=s.max_payload_bytes, max_readings=s.max_readings_per_message,
        )
        self.series = journal.series_ids(loaded.registry)
        self.counters = Counters()
        self.last_seq: dict[str, int] = {}
        # Per series, an event time at or above the newest stored one: a reading after it
        # cannot repeat a stored one, so the in-order stream costs no lookup. Never too low
        # (raised before a batch is written), so no conflict is missed.
        self._newest: dict[int, int] = {}
        # The keys and values of the batch being processed (not in the journal yet).
        self._batch: dict[tuple[int, int], float] = {}
        # Raw topic -> its text: one per device, repeated in every message.
        self._topics: dict[bytes, str] = {}

    def _deadletter(self, now_ms: int, topic: str, reason: str, detail: str, payload: bytes, size: int,
                    items: list[Any] | None = None, rejected: dict[str, int] | None = None) -> tuple[int, str, str, str, bytes]:
        """One dead letter: a whole message (``items`` None) or the rejected readings of one
        (the first few ``items``, the count per reason in ``rejected``)."""
        topic, reason, detail = clean(topic), clean(reason), clean(detail)
        self.counters.deadletters += 1
        self.counters.deadletter_reasons[reason] = self.counters.deadletter_reasons.get(reason, 0) + 1
        doc: dict[str, Any] = {"topic": topic, "reason": reason, "detail": detail, "received": rfc3339(now_ms / 1000.0)}
        if items:
            kept = json.dumps(items[0] if len(items) == 1 else items).encode()[:DEADLETTER_KEEP_BYTES]
            doc["reading"] = items[0]
            doc["payload"] = json.dumps(items[0])[:DEADLETTER_MQTT_BYTES]
            doc["rejected"] = rejected or {reason: 1}
            doc["readings"] = items
        else:
            kept = payload[:DEADLETTER_KEEP_BYTES]
            doc["payload"] = payload[:DEADLETTER_MQTT_BYTES].decode("utf-8", "replace")
            doc["truncated"] = size > DEADLETTER_MQTT_BYTES
        try:
            # backslashreplace: a lone surrogate in a quoted reading becomes its JSON escape.
            self.publish(f"{self.prefix}/deadletter", json.dumps(doc, ensure_ascii=False).encode("utf-8", "backslashreplace"), False)
        except Exception as exc:  # the table keeps it; the MQTT copy is a courtesy
            log.warning("could not publish a dead letter", extra=kv(error=exc))
        return (now_ms, topic, reason, detail, kept)

    def _rejects(self, now_ms: int, topic: str, m: Logged, rejects: list[Reject], good: int) -> tuple[int, str, str, str, bytes]:
        """The one dead letter of a message's rejected readings, however many: the cost of a
        bad message is bounded, not one row and one MQTT message per bad reading."""
        counts: dict[str, int] = {}
        for r in rejects:
            counts[r.reason] = counts.get(r.reason, 0) + 1
        reason = max(counts, key=counts.__getitem__)  # the commonest; the first seen on a tie
        if len(rejects) == 1:
            detail = rejects[0].detail
        else:
            tally = ", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kn: -kn[1]))
            quoted = "; ".join(r.detail for r in rejects[:DEADLETTER_QUOTE])
            detail = f"{len(rejects)} of {len(rejects) + good} readings rejected ({tally}); first: {quoted}"[:2000]
        return self._deadletter(now_ms, topic, reason, detail, m.payload, m.size, [r.item for r in rejects[:DEADLETTER_QUOTE]], counts)

    def _poison(self, m: Logged, topic: str, exc: Exception, tries: int = 1) -> tuple[int, str, str, str, bytes]:
        after = f" (after {tries} tries)" if tries > 1 else ""
        return self._deadletter(m.received_ms, topic, POISON, f"{type(exc).__name__}{after}: {str(exc)[:500]}", m.payload, m.size)

    def _conflict(self, row: tuple[int, int, float, int, int], channel: str, t: float) -> Reject | None:
        """A reading whose key is already taken by another value (in the journal or earlier
        in this batch) as a reject; None when it is new or an exact repeat, which the
        journal's idempotent insert ignores: a redelivery must not make dead letters."""
        sid, t_ms, value = row[0], row[1], row[2]
        key = (sid, t_ms)
        stored = self._batch.get(key)
        if stored is None:
            newest = self._newest.get(sid)
            if newest is None:
                newest = self.journal.newest_t_ms(sid)
                newest = -(1 << 62) if newest is None else newest
            if t_ms <= newest:
                stored = self.journal.stored_value(sid, t_ms)
            self._newest[sid] = max(newest, t_ms)
        if stored is None:
            self._batch[key] = value
            return None
        if stored == value:
            return None
        self.counters.readings_conflict += 1
        return Reject(CONFLICT, f"{channel} at {rfc3339(t)}: stored {stored!r}, new {value!r}; the stored value is kept",
                      {"ch": channel, "t": rfc3339(t), "v": value})

    def _message(self, m: Logged, topic: str) -> _Part:
        """One message's readings, dead letters and status. Raises only on a bug."""
        rows: list[tuple[int, int, float, int, int]] = []
        statuses: list[tuple[str, str, int, int, str]] = []
        now_ms = m.received_ms
        try:
            d = self.codec.decode(topic, m.payload, now_ms / 1000.0, m.size)
        except PayloadError as exc:
            return rows, [self._deadletter(now_ms, topic, exc.reason, exc.detail, m.payload, m.size)], statuses
        if d.status is not None:  # a status topic's, or a national-convention body's S1_ZT channel
            statuses.append((d.site, d.device, to_ms(d.status["t"]), now_ms, json.dumps(d.status)))
        drill = 1 if d.drill else 0
        series = self.series
        rejects = list(d.rejects)
        newest_of, batch = self._newest, self._batch
        keep = rows.append
        for info, t, v in d.readings:
            sid, t_ms = series[info], round(t * 1000.0)
            newest = newest_of.get(sid)
            if newest is not None and t_ms > newest:
                # After everything stored and everything earlier in the batch for this series
                # (every key in the batch is at or below ``newest``): new, no lookup. This is
                # _conflict's own first branch, without the call.
                newest_of[sid] = t_ms
                batch[(sid, t_ms)] = v
                keep((sid, t_ms, v, drill, now_ms))
                continue
            row = (sid, t_ms, v, drill, now_ms)
            conflict = self._conflict(row, info.channel, t)
            if conflict is None:
                keep(row)
            else:
                rejects.append(conflict)
        dls = [self._rejects(now_ms, topic, m, rejects, len(rows))] if rejects else []
        if d.seq is not None:
            last = self.last_seq.get(d.device)
            if last is not None and d.seq > last + 1:
                self.counters.seq_gaps += 1
            self.last_seq[d.device] = d.seq if last is None else max(last, d.seq)
        return rows, dls, statuses

    def process(self, messages: list[Logged]) -> int:
        """Store a batch and move the position past it, in one transaction; returns how many
        readings were new. Future-skew is judged against each message's arrival time.

        A message whose processing raises is tried ``POISON_TRIES`` times, then quarantined (a
        ``poison`` dead letter naming the exception); one the journal refuses is quarantined
        and the batch decoded again without it, so that neither leaves keys behind that make
        a later reading a false ``conflict``. Dead letters go out on MQTT only once they are
        committed. ``sqlite3.OperationalError`` (disk full, I/O error: the database's trouble,
        not a message's) is raised with nothing written, for the caller to retry the batch."""
        quarantined: dict[int, tuple[Exception, int]] = {}  # message index -> (last error, tries)
        counters = copy.deepcopy(self.counters)
        # Rain counters' last totals move as messages are decoded: every decoding of the batch
        # starts from where the last committed batch left them, and what moved is committed
        # with the batch (a batch written again after a disk-full must not see its own totals).
        codec = self.codec
        while True:
            outgoing: list[tuple[str, bytes, bool]] = []
            codec.undo_totals()
            parts = self._decode(messages, quarantined, outgoing)
            rows = [r for p in parts for r in p[0]]
            state: dict[str, Any] | None = {POSITION_KEY: messages[-1].id} if messages else None
            if state is not None:
                for key, value in codec.moved_totals().items():
                    state[COUNTER_KEY_PREFIX + "/".join(key)] = [None if v != v else v for v in value]
            try:
                inserted = self.journal.append(rows, [x for p in parts for x in p[1]], _placed_statuses(parts), state)
                break
            except sqlite3.OperationalError:
                self.counters = counters
                codec.undo_totals()
                raise
            except Exception:
                log.exception("a batch could not be written; looking for the message the journal refuses")
            # One message the journal cannot take: find it (each message in its own savepoint,
            # all rolled back at the first refusal), quarantine it and decode the batch again.
            try:
                inserted = self.journal.append_each(parts, state, _refuse)
                break  # it went in this time, message by message
            except sqlite3.OperationalError:
                self.counters = counters
                codec.undo_totals()
                raise
            except _Refused as refused:
                i = refused.index
                log.error("a message could not be written; quarantined as poison", extra=kv(topic=clean(messages[i].topic.decode("utf-8", "replace")), error=type(refused.error).__name__))
                quarantined[i] = (refused.error, 1)
                self.counters = copy.deepcopy(counters)
        codec.moved_totals(settle=True)  # committed with the batch
        for topic, payload, retain in outgoing:
            try:
                self.publish(topic, payload, retain)
            except Exception as exc:  # the table keeps it; the MQTT copy is a courtesy
                log.warning("could not publish a dead letter", extra=kv(error=exc))
        c = self.counters
        c.messages += len(messages)
        c.readings_stored += inserted
        c.readings_duplicate += len(rows) - inserted
        c.statuses += sum(len(p[2]) for p in parts)
        return inserted

    def _decode(self, messages: list[Logged], quarantined: dict[int, tuple[Exception, int]], outgoing: list[tuple[str, bytes, bool]]) -> list[_Part]:
        """Each message's part of the batch; what would be published is collected in ``outgoing``."""
        publish, self.publish = self.publish, lambda topic, payload, retain: outgoing.append((topic, payload, retain))
        try:
            parts: list[_Part] = []
            self._batch = {}
            topics = self._topics
            for i, m in enumerate(messages):
                topic = topics.get(m.topic)
                if topic is None:
                    if len(topics) >= TOPIC_CACHE:
                        topics.clear()  # a flood of distinct topics must not grow memory
                    topic = topics[m.topic] = clean(m.topic.decode("utf-8", "replace"))
                if i in quarantined:
                    exc, tries = quarantined[i]
                    parts.append(([], [self._poison(m, topic, exc, tries)], []))
                    continue
                for tries in range(1, POISON_TRIES + 1):
                    keys, sent = len(self._batch), len(outgoing)
                    try:
                        parts.append(self._message(m, topic))
                        break
                    except sqlite3.OperationalError:
                        raise  # reading the journal failed: not this message's fault
                    except Exception as exc:  # a bug met by one message must not stop the stage (no restart loop)
                        # Undo the try: its keys in the batch (a later reading of one would be a
                        # false conflict) and its dead letters.
                        for key in list(self._batch)[keys:]:
                            del self._batch[key]
                        del outgoing[sent:]
                        if tries < POISON_TRIES:
                            log.warning("a message could not be processed; trying it again", extra=kv(topic=topic, error=type(exc).__name__, tries=tries))
                            continue
                        log.exception("a message still could not be processed; quarantined as poison", extra=kv(topic=topic, error=type(exc).__name__, tries=tries))
                        quarantined[i] = (exc, tries)
                        parts.append(([], [self._poison(m, topic, exc, tries)], []))
            return parts
        finally:
            self.publish = publish


def _placed_statuses(parts: list[_Part]) -> list[tuple[str, str, int, int, str, int]]:
    """The batch's statuses, each with the number of the batch's readings before it: the
    readings of the messages that came before its own (a message's status stands before its
    own readings, as detection has always applied it)."""
    out: list[tuple[str, str, int, int, str, int]] = []
    n = 0
    for readings, _dls, statuses in parts:
        out += [(*st, n) for st in statuses]
        n += len(readings)
    return out


class _Refused(Exception):
    """The journal refused message ``index`` of a batch (raised from ``append_each``'s refuse
    callback: the whole transaction is rolled back)."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


def _refuse(i: int, exc: Exception) -> tuple[int, str, str, str, bytes]:
    raise _Refused(i, exc)


class Store:
    """The store stage over one message log and one journal. Used in-process by tests and by
    the worker process below."""

    def __init__(self, loaded: Loaded, publish: Any, journal_path: str | Path, log_path: str | Path, *,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        s = loaded.settings
        self.clock, self.monotonic = clock, monotonic
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
        # Rain counters resume from their last committed totals (a position reset starts them
        # afresh, with the decoding).
        codec = self.pipeline.codec
        for site in loaded.registry.sites.values():
            for dev in site.devices:
                for ch in dev.channels:
                    if not (ch.source or "").endswith(".totalValue"):
                        continue
                    key = (site.site, dev.device, ch.channel)
                    saved = self.journal.get_state(COUNTER_KEY_PREFIX + "/".join(key)) if self.position else None
                    if saved is not None:
                        t, total, rain = saved
                        codec.totals[key] = (float(t), float(total), math.nan if rain is None else float(rain))
        self.keep_ms = int(s.message_keep_s * 1000)
        # Dead letters, status and readings; a readings retention keeps each series' longest
        # detection window, which detection re-reads when it starts without a snapshot.
        horizon_s = max((site.policy.velocity_window_s for site in loaded.registry.sites.values()), default=0.0)
        self.retention = Retention(self.journal, Policy.from_settings(s, horizon_s))
        self.stats_every_s = s.stats_interval_s
        self._next_prune = monotonic() + PRUNE_EVERY_S
        self._next_stats = monotonic() + self.stats_every_s

    @classmethod
    def in_worker(cls, loaded: Loaded, link: Any, journal_path: str, log_path: str) -> "Store":
        return cls(loaded, lambda topic, payload, retain: link.publish(topic, payload, retain), journal_path, log_path)

    def step(self) -> int:
        """Store the next batch of logged messages; returns how many messages were read."""
        batch = self.messages.read_after(self.position, BATCH)
        if batch:
            self.pipeline.process(batch)
            self.position = batch[-1].id
        now = self.monotonic()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_S
            self.prune(int(self.clock() * 1000))
        if now >= self._next_stats:
            self._next_stats = now + self.stats_every_s
            log.info("store figures", extra=kv(**self.stats()))
        return len(batch)

    def prune(self, now_ms: int) -> dict[str, int]:
        """One retention pass: expanded raw messages older than ``message_keep_s``; dead
        letters and device status by age and size, and readings when ``journal_keep_days`` is
        set (``ingest/retention.py`` says what may go). At most ``PRUNE_TRANSACTIONS`` short
        transactions per table; what is left waits for the next pass. Returns how many rows
        went, per table."""
        out = {"messages": self._prune_log(now_ms - self.keep_ms)}
        out.update(self.retention.run(now_ms, PRUNE_ROWS, PRUNE_TRANSACTIONS))
        if out["deadletters"] or out["statuses"] or out["readings"]:
            log.info("pruned the journal", extra=kv(**out))
        return out

    def _prune_log(self, older_than_ms: int) -> int:
        """The message log's part, ``PRUNE_LOG_IDS`` batch ids per transaction from its oldest
        row: its file is the ack path's, whose append must not wait behind one long DELETE.
        Pruning always takes a prefix of the ids (arrival order), so the rows left are
        contiguous and a transaction that deletes less than its range has met the young ones."""
        first = self.messages.read_after(0, 1)
        if not first:
            return 0
        upto, total = first[0].id - 1, 0
        for _ in range(PRUNE_TRANSACTIONS):
            if upto >= self.position:
                break
            start, upto = upto, min(self.position, upto + PRUNE_LOG_IDS)
            n = self.messages.prune(upto, older_than_ms)
            total += n
            if n < upto - start:
                break
        return total

    def lag(self) -> int:
        """Messages logged but not yet stored."""
        return max(0, self.messages.last_id() - self.position)

    def stats(self) -> dict[str, int]:
        """The store stage's figures so far, as log fields."""
        c = self.pipeline.counters
        return {"messages": c.messages, "readings_stored": c.readings_stored, "duplicates": c.readings_duplicate,
                "dead_letters": c.deadletters, "conflicts": c.readings_conflict, "seq_gaps": c.seq_gaps, "lag_messages": self.lag()}

    def checkpoint(self, final: bool = False) -> None:
        pass  # the position is committed with every batch

    def close(self) -> None:
        log.info("store stopped", extra=kv(**self.stats()))
        self.messages.close()
        self.journal.close()


def stored_position(journal: Journal) -> int:
    """How far the store stage has got in the message log (for the daemon's catch-up checks)."""
    return int(journal.get_state(POSITION_KEY, 0) or 0)
