"""The dispatcher: from the outbox to the notifiers, with isolation, retries and counters.

This module owns how delivery is attempted: which due messages go to which notifier, what a
failure means for a message (retry later with backoff, or dead-letter), per-notifier counters,
and the alarm raised when a notifier keeps failing. It sends nothing itself (``Notifier.send``
does) and stores nothing itself (the ``Outbox`` does).

Isolation: each notifier has its own lane, a small worker thread that sends that notifier's
due messages oldest first. ``run_once`` starts the lanes that have work and waits at most
``timeout_s`` (real time) for them; a lane that is still running stays busy and is skipped
until it finishes, so a receiver that hangs blocks only its own lane. A send still running
after ``timeout_s`` counts as a failure (the notifier's own timeout should have fired).

Retries: a transient failure puts the message back with a delay of ``base · factor^(n−1)``
capped at ``max_s``, shortened by a jitter fraction derived from the id (deterministic, so
tests can work it out; different ids still spread out). The lane then rests until that
message is due, rather than hammering a receiver that is down with the rest of its backlog.
A permanent failure (the receiver rejected that message) dead-letters it at once; so do
``max_attempts`` attempts or a message older than ``max_age_s``.

Alarm: a notifier failing without a success for ``alarm_after_s`` (clock time) or
``alarm_after_failures`` attempts in a row is escalated to the operators once per failure
episode: a ``notifier_failing`` message to every other healthy notifier of the national unit
plus the JSONL audit, and an ERROR log line; its first success afterwards sends
``notifier_recovered``. Episodes are kept in the outbox's state table, in the same commit as
the alarm messages, so a restart neither repeats nor forgets an alarm.

Time: ``clock`` (injected) for due times, backoff and alarm ages; ``time.monotonic`` only to
measure how long a real send has been blocking.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from geowarn.core.clock import Clock
from geowarn.alerts.notifiers import Notifier, NotifierError, Outgoing, operator_keys
from geowarn.alerts.outbox import Outbox, OutboxItem
from geowarn.config.roster import NATIONAL
from geowarn.core.logfields import kv

__all__ = ["Backoff", "Dispatcher", "DispatcherThread", "NotifierStats"]

log = logging.getLogger(__name__)

#: A lane that could not record an outcome in the outbox rests this long (clock seconds).
UNRECORDED_RETRY_S = 5.0


@dataclass(frozen=True)
class Backoff:
    """Retry delays: ``min(max_s, base_s · factor^(attempt−1)) · (1 − jitter · u)`` where
    ``u ∈ [0, 1)`` comes from SHA-256 of ``"<id>|<attempt>"``."""

    base_s: float = 2.0
    factor: float = 2.0
    max_s: float = 600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not self.base_s > 0 or not self.factor >= 1 or not self.max_s >= self.base_s:
            raise ValueError(f"Backoff needs base_s > 0, factor >= 1 and max_s >= base_s, got {self}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"Backoff jitter is a fraction in [0, 1), got {self.jitter}")

    def delay(self, attempt: int, key: str) -> float:
        """Seconds to wait after the ``attempt``-th failed attempt (from 1) of ``key``."""
        raw = min(self.max_s, self.base_s * self.factor ** min(max(attempt - 1, 0), 64))
        u = int.from_bytes(hashlib.sha256(f"{key}|{attempt}".encode()).digest()[:8], "big") / 2.0**64
        return raw * (1.0 - self.jitter * u)


@dataclass
class NotifierStats:
    """One notifier's counters (``Dispatcher.counters()`` gives them as dicts)."""

    sent: int = 0
    failed: int = 0
    dead: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_sent_at: float | None = None
    #: Clock time of the first failure of the current run of failures (None: healthy).
    failing_since: float | None = None
    in_flight: bool = False
    #: Operators have been told it is failing (and not yet that it recovered).
    alarmed: bool = False
    #: How many failure episodes were escalated, ever (persisted).
    episode: int = 0


@dataclass
class _Lane:
    """One notifier's worker and what the dispatcher knows about it."""

    key: str
    notifier: Notifier
    stats: NotifierStats = field(default_factory=NotifierStats)
    done: threading.Event = field(default_factory=threading.Event)
    running: bool = False
    send_started: float | None = None  # time.monotonic() of the send in progress
    stuck_counted: bool = False  # the send in progress has already been counted as a failure
    retry_at: float | None = None  # clock time before which the lane rests after a failure
    recovered: bool = False  # succeeded while alarmed: announce the recovery

    def __post_init__(self) -> None:
        self.done.set()  # "done" means idle: a lane that never ran is idle


def _state_key(notifier: str) -> str:
    return f"dispatch/alarm/{notifier}"


class Dispatcher:
    def __init__(
        self,
        outbox: Outbox,
        notifiers: Mapping[str, Notifier],
        clock: Clock,
        *,
        timeout_s: float = 30.0,
        backoff: Backoff = Backoff(),
        max_attempts: int = 50,
        max_age_s: float = 24 * 3600.0,
        alarm_after_s: float = 600.0,
        alarm_after_failures: int = 5,
        operators: Sequence[str] | None = None,
        batch: int = 100,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_attempts < 1 or alarm_after_failures < 1 or batch < 1:
            raise ValueError("max_attempts, alarm_after_failures and batch must be >= 1")
        self.outbox = outbox
        self.clock = clock
        self.timeout_s = timeout_s
        self.backoff = backoff
        self.max_attempts = max_attempts
        self.max_age_s = max_age_s
        self.alarm_after_s = alarm_after_s
        self.alarm_after_failures = alarm_after_failures
        self.batch = batch
        #: Who hears about a failing notifier: by default the national unit's notifiers and
        #: the audit (``operator_keys``).
        self.operators = list(operators) if operators is not None else operator_keys(notifiers)
        unknown = [k for k in self.operators if k not in notifiers]
        if unknown:
            raise ValueError(f"operators {unknown} are not among the notifiers {sorted(notifiers)}")
        self._lanes = {key: _Lane(key, n) for key, n in notifiers.items()}
        self._lock = threading.Lock()  # lanes and stats; never held while calling the outbox
        self._run_lock = threading.Lock()
        self._orphans: set[str] = set()  # notifier keys in the outbox that nothing sends to
        #: Delivered messages the outbox could not mark as sent yet: id -> when.
        self._unrecorded: dict[str, float] = {}
        self._stopping = False
        #: Called (from a lane's thread) when a lane finishes: the DispatcherThread's wake.
        self.on_lane_done: Callable[[], None] | None = None
        for key, lane in self._lanes.items():
            saved = outbox.get_state(_state_key(key))
            if saved:
                lane.stats.alarmed = bool(saved.get("alarmed"))
                lane.stats.episode = int(saved.get("episode", 0))

    # -- the public surface -------------------------------------------------------------------

    def run_once(self, now: float | None = None, *, wait: bool = True) -> int:
        """Send what is due at ``now`` (default: the clock's now); with ``wait``, wait at most
        ``timeout_s`` for it (the background thread does not wait: a slow lane must not hold
        new work for idle ones); raise or clear alarms. Returns how many messages were
        delivered meanwhile."""
        with self._run_lock:
            at = self.clock.now() if now is None else now
            before = self._total_sent()
            self._record_unrecorded()
            items = [i for i in self.outbox.due(at, self.batch, skip=self._skip(at)) if i.id not in self._unrecorded]
            groups: dict[str, list[OutboxItem]] = {}
            for item in items:
                groups.setdefault(item.notifier, []).append(item)
            started = []
            for key, group in groups.items():
                lane = self._lanes.get(key)
                if lane is None:
                    self._orphan(key)
                    continue
                self._start(lane, group)
                started.append(lane)
            deadline = time.monotonic() + self.timeout_s
            for lane in started if wait else ():
                lane.done.wait(max(0.0, deadline - time.monotonic()))
            self._count_stuck(at)
            self._alarms(self.clock.now() if now is None else now)
            return self._total_sent() - before

    def counters(self) -> dict[str, dict[str, Any]]:
        """Per notifier: sent, failed, dead, consecutive_failures, last_error, last_error_at,
        last_sent_at, failing_since, in_flight, alarmed, episode; plus pending (outbox)."""
        pending = {key: 0 for key in self._lanes}
        for item in self.outbox.items("pending"):
            pending[item.notifier] = pending.get(item.notifier, 0) + 1
        with self._lock:
            out = {key: {**asdict(lane.stats), "in_flight": lane.running} for key, lane in self._lanes.items()}
        for key, n in pending.items():
            out.setdefault(key, {})["pending"] = n
        return out

    def next_wait(self, max_s: float) -> float:
        """Seconds until something may be due (0: now), at most ``max_s``."""
        at = self.clock.now()
        skip = self._skip(at)
        times = [t for t in (self.outbox.next_due(skip=skip),) if t is not None]
        with self._lock:
            times += [lane.retry_at for lane in self._lanes.values() if lane.retry_at is not None and not lane.running]
        if not times:
            return max_s
        return min(max_s, max(0.0, min(times) - at))

    def wait_idle(self, timeout: float) -> bool:
        """Wait (real time) until no lane is sending; False if some still is after ``timeout``."""
        deadline = time.monotonic() + timeout
        for lane in list(self._lanes.values()):
            if not lane.done.wait(max(0.0, deadline - time.monotonic())) and lane.running:
                return False
        return True

    def close(self) -> None:
        """Start no more sends; lanes finish the send in progress and stop (their threads are
        daemons, so a hung receiver never blocks the process from exiting)."""
        self._stopping = True

    # -- lanes ----------------------------------------------------------------------------------

    def _skip(self, at: float) -> set[str]:
        with self._lock:
            skip = {k for k, lane in self._lanes.items() if lane.running or (lane.retry_at is not None and lane.retry_at > at)}
        return skip | self._orphans

    def _orphan(self, key: str) -> None:
        if key not in self._orphans:
            self._orphans.add(key)
            log.warning("outbox holds messages for a notifier that is not configured (roster changed?); they stay pending", extra=kv(notifier=key))

    def _start(self, lane: _Lane, items: list[OutboxItem]) -> None:
        with self._lock:
            lane.running = True
            lane.retry_at = None
            lane.done.clear()
        threading.Thread(target=self._work, args=(lane, items), name=f"notify {lane.key}", daemon=True).start()

    def _work(self, lane: _Lane, items: list[OutboxItem]) -> None:
        try:
            for item in items:
                if self._stopping:
                    break
                with self._lock:
                    lane.send_started = time.monotonic()
                    lane.stuck_counted = False
                try:
                    lane.notifier.send(item.msg)
                except NotifierError as exc:
                    if self._failed(lane, item, str(exc), exc.permanent):
                        break
                except Exception as exc:
                    # A bug in a notifier must not take the dispatcher down with it: logged with
                    # its traceback, counted, and retried like any transient failure.
                    log.exception("notifier crashed", extra=kv(notifier=lane.key, message=item.id))
                    if self._failed(lane, item, f"notifier bug: {exc!r}", False):
                        break
                else:
                    try:
                        self._sent(lane, item)
                    except Exception:
                        # Delivered but not recorded (disk full, database locked): never send
                        # it again from this process; record it when the outbox works again.
                        log.exception("delivered but could not record it in the outbox", extra=kv(message=item.id))
                        with self._lock:
                            self._unrecorded[item.id] = self.clock.now()
                            lane.retry_at = self.clock.now() + UNRECORDED_RETRY_S
                        break
        except Exception:
            # _failed could not record a failure: rest the lane instead of looping on the item.
            log.exception("notifier lane could not record an outcome in the outbox", extra=kv(notifier=lane.key))
            with self._lock:
                lane.retry_at = self.clock.now() + UNRECORDED_RETRY_S
        finally:
            with self._lock:
                lane.send_started = None
                lane.running = False
                lane.done.set()
            callback = self.on_lane_done
            if callback is not None:
                callback()

    def _record_unrecorded(self) -> None:
        for msg_id, t in list(self._unrecorded.items()):
            try:
                self.outbox.mark_sent(msg_id, t)
            except Exception as exc:  # still failing: keep it in memory, try next round
                log.error("still cannot record a message as sent", extra=kv(message=msg_id, error=exc))
                return
            del self._unrecorded[msg_id]

    def _sent(self, lane: _Lane, item: OutboxItem) -> None:
        now = self.clock.now()
        self.outbox.mark_sent(item.id, now)
        with self._lock:
            s = lane.stats
            s.sent += 1
            s.last_sent_at = now
            s.consecutive_failures = 0
            s.failing_since = None
            lane.retry_at = None
            if s.alarmed:
                lane.recovered = True

    def _failed(self, lane: _Lane, item: OutboxItem, error: str, permanent: bool) -> bool:
        """Record a failed attempt; True when the lane should stop and rest (transient)."""
        now = self.clock.now()
        attempts = item.attempts + 1
        with self._lock:
            s = lane.stats
            if not lane.stuck_counted:  # a send that overran timeout_s was counted already
                s.failed += 1
                s.consecutive_failures += 1
                if s.failing_since is None:
                    s.failing_since = now
            s.last_error = error
            s.last_error_at = now
            consecutive = s.consecutive_failures
        if permanent:
            self._dead(lane, item, now, f"rejected: {error}")
            return False
        if attempts >= self.max_attempts or now - item.created >= self.max_age_s:
            self._dead(lane, item, now, f"gave up after {attempts} attempts over {now - item.created:.0f} s: {error}")
            rest = now + self.backoff.delay(consecutive, lane.key)
        else:
            rest = now + self.backoff.delay(attempts, item.id)
            self.outbox.mark_failed(item.id, now, error, rest)
            log.warning("delivery attempt failed", extra=kv(notifier=lane.key, message=item.id, attempt=attempts, retry_in_s=round(rest - now, 1), error=error))
        with self._lock:
            lane.retry_at = rest
        return True

    def _dead(self, lane: _Lane, item: OutboxItem, now: float, error: str) -> None:
        self.outbox.mark_dead(item.id, now, error)
        with self._lock:
            lane.stats.dead += 1
        log.error("message dead-lettered; requeue it once the cause is fixed", extra=kv(notifier=lane.key, message=item.id, kind=item.msg.kind, site=item.msg.site, error=error))

    def _count_stuck(self, at: float) -> None:
        tick = time.monotonic()
        with self._lock:
            for lane in self._lanes.values():
                if lane.running and lane.send_started is not None and not lane.stuck_counted and tick - lane.send_started >= self.timeout_s:
                    lane.stuck_counted = True
                    s = lane.stats
                    s.failed += 1
                    s.consecutive_failures += 1
                    if s.failing_since is None:
                        s.failing_since = at
                    s.last_error = f"a send has been running for more than {self.timeout_s:g} s; its own timeout did not fire (hung receiver?)"
                    s.last_error_at = at
                    log.warning("notifier stuck", extra=kv(notifier=lane.key, error=s.last_error))

    def _total_sent(self) -> int:
        with self._lock:
            return sum(lane.stats.sent for lane in self._lanes.values())

    # -- alarms ---------------------------------------------------------------------------------

    def _alarms(self, now: float) -> None:
        to_raise: list[tuple[str, NotifierStats]] = []
        to_clear: list[tuple[str, NotifierStats]] = []
        with self._lock:
            for key, lane in self._lanes.items():
                s = lane.stats
                if lane.recovered:
                    lane.recovered = False
                    to_clear.append((key, NotifierStats(**asdict(s))))
                elif not s.alarmed and s.failing_since is not None and (
                    s.consecutive_failures >= self.alarm_after_failures or now - s.failing_since >= self.alarm_after_s
                ):
                    to_raise.append((key, NotifierStats(**asdict(s))))
        for key, snap in to_raise:
            self._escalate(key, snap, now, failing=True)
        for key, snap in to_clear:
            self._escalate(key, snap, now, failing=False)

    def _healthy_operators(self, failing: str) -> list[str]:
        with self._lock:
            return [k for k in self.operators if k != failing and not self._lanes[k].stats.alarmed]

    def _escalate(self, key: str, snap: NotifierStats, now: float, *, failing: bool) -> None:
        kind = "notifier_failing" if failing else "notifier_recovered"
        pending = len(self.outbox.pending_for(key))
        targets = self._healthy_operators(key)
        with self.outbox.transaction():
            saved = self.outbox.get_state(_state_key(key)) or {"episode": 0, "alarmed": False}
            if bool(saved.get("alarmed")) == failing:
                # Already recorded (an alarm raised before a restart): nothing to repeat.
                episode = int(saved.get("episode", 0))
                new = False
            else:
                episode = int(saved.get("episode", 0)) + (1 if failing else 0)
                new = True
                self.outbox.enqueue([self._alarm_msg(kind, key, episode, op, snap, pending, now) for op in targets], now=now)
                self.outbox.set_state(_state_key(key), {"episode": episode, "alarmed": failing, "since": snap.failing_since, "at": now})
        with self._lock:
            lane = self._lanes[key]
            lane.stats.alarmed = failing
            lane.stats.episode = episode
        if not new:
            return
        if failing:
            log.error(
                "notifier is failing; operators told",
                extra=kv(notifier=key, attempts_in_a_row=snap.consecutive_failures, failing_since=snap.failing_since, error=snap.last_error,
                         waiting=pending, told_via=", ".join(targets) or "nobody (no healthy operator notifier!)"),
            )
        else:
            log.warning("notifier recovered", extra=kv(notifier=key, episode=episode, waiting=pending))

    @staticmethod
    def _alarm_msg(kind: str, key: str, episode: int, op: str, s: NotifierStats, pending: int, now: float) -> Outgoing:
        if kind == "notifier_failing":
            subject = f"通知通道故障 notifier failing: {key}"
            text = (
                f"Notifier {key} has failed {s.consecutive_failures} times in a row since t={s.failing_since}; "
                f"last error: {s.last_error}. {pending} messages are waiting for it. "
                "Warnings for its unit may not be arriving: reach the unit another way and fix the channel."
            )
        else:
            subject = f"通知通道恢复 notifier recovered: {key}"
            text = f"Notifier {key} delivers again (failure episode {episode}); {pending} messages still waiting will follow."
        body = {
            "type": kind,
            "notifier": key,
            "episode": episode,
            "failing_since": s.failing_since,
            "consecutive_failures": s.consecutive_failures,
            "last_error": s.last_error,
            "pending": pending,
            "t": now,
        }
        return Outgoing(
            id=f"{kind}/{key}/{episode}/{op}",
            notifier=op,
            kind=kind,
            admin=NATIONAL,
            site=None,
            level=0,
            subject=subject,
            text=text,
            body=body,
            t=now,
            exercise=False,
        )


class DispatcherThread:
    """Runs ``dispatcher.run_once`` in a background thread: again at once while work is due,
    otherwise when the next message or lane becomes due, at the latest after ``max_idle_s``,
    or as soon as ``wake()`` is called (after an enqueue)."""

    def __init__(self, dispatcher: Dispatcher, *, max_idle_s: float = 5.0, name: str = "geowarn-dispatch") -> None:
        self.dispatcher = dispatcher
        self.max_idle_s = max_idle_s
        self.name = name
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        dispatcher.on_lane_done = self.wake

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop; in-flight sends finish on their own (daemon lanes)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("dispatcher thread did not stop in time", extra=kv(thread=self.name, timeout_s=timeout))
            self._thread = None
        self.dispatcher.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.dispatcher.run_once(wait=False)
                wait = self.dispatcher.next_wait(self.max_idle_s)
            except Exception:
                # The outbox file may be briefly unavailable (disk full, locked); keep the thread
                # alive and try again, loudly.
                log.exception("dispatch round failed; retrying", extra=kv(thread=self.name, retry_in_s=self.max_idle_s))
                wait = self.max_idle_s
            self._wake.wait(wait)
