"""No data per device: which devices have fallen silent, judged from their expected interval.

This module owns the silence timer of every device. A device is *in no-data* once its last
reading is older than ``factor × interval_s`` (its smallest channel interval; default factor 3,
the usual "three missed reports" rule of heartbeat monitors — alerta's heartbeats call the
same states OK / expired). Each silence is reported once (``kind="nodata"``) and its end once
(``kind="nodata_end"``) when a newer reading arrives.

The monitor never changes a level: no data never lowers a level (DESIGN.md §6, STYLE habit 5).
Site fusion holds the level and raises its own condition from these events.

Time: ``seen`` takes the reading's event time; ``due`` and ``next_deadline`` take ``now``,
which the caller passes in — the clock object's time when live, event time in replay. The
monitor never reads a clock. ``next_deadline()`` says when ``due`` must next be called (the
runtime's ``notify_at``; ``due`` is its ``on_notify``), so a live runtime sleeps until then and a
replay calls ``due(next_deadline())`` before feeding any reading later than that deadline.

Devices that never report: silence is counted from ``start`` — given, or else the first time
seen by ``seen`` (its t) or ``due`` (its ``now``). Until then ``next_deadline`` is None for them,
so a live runtime should call ``due(clock.now())`` once at start.

>>> m = NoDataMonitor({"gnss-1": 600.0, "rain-1": 300.0}, start=0.0)
>>> m.next_deadline()
900.0
>>> m.seen("gnss-1", 1000.0), m.seen("rain-1", 1000.0)
(None, None)
>>> m.next_deadline(), m.due(1800.0)
(1900.0, [])
>>> [(e.device, e.kind, e.silent_s) for e in m.due(2900.0)]
[('rain-1', 'nodata', 1900.0), ('gnss-1', 'nodata', 1900.0)]
>>> m.due(5000.0)
[]
>>> m.seen("gnss-1", 5000.0)
NoDataEvent(device='gnss-1', kind='nodata_end', t=5000.0, last_seen=1000.0, silent_s=4000.0)
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class NoDataEvent:
    """A device fell silent (``nodata``, t = when declared) or spoke again (``nodata_end``,
    t = the event time of the reading that ended it). ``last_seen`` is the event time of the
    last reading before the silence (None: never seen since ``start``); ``silent_s`` is t minus
    ``last_seen`` (or minus ``start``)."""

    device: str
    kind: str
    t: float
    last_seen: float | None
    silent_s: float


class NoDataMonitor:
    """Per-device silence timers on one heap keyed by deadline.

    ``intervals``: device → expected reporting interval in seconds (use the smallest channel
    interval of the device: the fastest channel is the first to miss). ``factor``: how many
    intervals of silence make no-data (> 1, so that one late reading is not an outage).

    Cost: ``seen`` is O(1) — it only records the time; the heap holds at most one entry per
    device, and a stale entry is pushed forward lazily when it reaches the top, so ``due`` and
    ``next_deadline`` are O(log n) per device whose timer moved.
    """

    def __init__(self, intervals: Mapping[str, float], factor: float = 3.0, *, start: float | None = None) -> None:
        bad = {d: i for d, i in intervals.items() if not (isinstance(i, (int, float)) and i > 0 and math.isfinite(i))}
        if bad:
            raise ValueError(f"intervals must be finite numbers > 0 (seconds); bad: {bad}")
        if not (factor > 1 and math.isfinite(factor)):
            raise ValueError(f"factor must be a finite number > 1 (intervals of silence), got {factor!r}")
        if start is not None and not math.isfinite(start):
            raise ValueError(f"start must be a finite event time or None, got {start!r}")
        self.intervals = dict(intervals)
        self.factor = factor
        self.start = start
        self._limit = {d: factor * i for d, i in self.intervals.items()}
        self._reset()

    def _reset(self) -> None:
        self._start: float | None = self.start
        self._last: dict[str, float] = {}  # device -> event time of its newest reading
        self._silent: set[str] = set()  # devices reported and not yet back
        self._heap: list[tuple[float, str]] = []  # at most one entry per device not in _silent
        if self._start is not None:
            self._arm_all()

    def _arm_all(self) -> None:
        self._heap = [(self._deadline(d), d) for d in self.intervals if d not in self._silent]
        heapq.heapify(self._heap)

    def _deadline(self, device: str) -> float:
        base = self._last.get(device, self._start)
        assert base is not None  # armed only once start is known; not an input check
        return base + self._limit[device]

    def _begin(self, t: float) -> None:
        if self._start is None:
            self._start = t
            self._arm_all()

    def seen(self, device: str, t: float) -> NoDataEvent | None:
        """A reading of ``device`` at event time ``t``; the end of its silence, if it was silent.

        Only a reading newer than the last one ends a silence: a late copy of an old reading
        says nothing about whether the device is measuring now.
        """
        if device not in self._limit:
            raise ValueError(f"device {device!r} has no expected interval (known devices: {len(self._limit)})")
        t = float(t)
        self._begin(t)
        last = self._last.get(device)
        if last is not None and t <= last:
            return None
        self._last[device] = t
        if device not in self._silent:
            return None  # its heap entry is now early; it is pushed forward when it surfaces
        self._silent.discard(device)
        heapq.heappush(self._heap, (t + self._limit[device], device))
        base = self._start if last is None else last
        assert base is not None
        return NoDataEvent(device, "nodata_end", t, last, t - base)

    def _settle(self) -> None:
        """Push forward stale entries at the top until the top is a true deadline."""
        heap = self._heap
        while heap:
            key, device = heap[0]
            true = self._deadline(device)
            if true <= key:
                return
            heapq.heapreplace(heap, (true, device))

    def due(self, now: float) -> list[NoDataEvent]:
        """Devices whose silence reached ``factor × interval`` by ``now``, each reported once,
        in order of their deadlines (then device name)."""
        now = float(now)
        self._begin(now)
        out: list[NoDataEvent] = []
        heap = self._heap
        while heap:
            self._settle()
            if not heap or heap[0][0] > now:
                break
            _, device = heapq.heappop(heap)
            self._silent.add(device)
            last = self._last.get(device)
            base = self._start if last is None else last
            assert base is not None
            out.append(NoDataEvent(device, "nodata", now, last, now - base))
        return out

    def next_deadline(self) -> float | None:
        """When ``due`` must next be called; None if no timer runs (all silent, or no start yet)."""
        self._settle()
        return self._heap[0][0] if self._heap else None

    def silent(self) -> list[str]:
        """Devices currently in no-data, sorted."""
        return sorted(self._silent)

    def snapshot(self) -> dict[str, Any]:
        return {"start": self._start, "last": dict(sorted(self._last.items())), "silent": sorted(self._silent)}

    def snapshot_of(self, devices: Iterable[str]) -> dict[str, Any]:
        """``snapshot()``'s "last" and "silent" for these devices only (a site's share)."""
        last, silent = self._last, self._silent
        return {"last": {d: last[d] for d in devices if d in last}, "silent": sorted(d for d in devices if d in silent)}

    def start_time(self) -> float | None:
        """When the timers started (``snapshot()``'s "start")."""
        return self._start

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a snapshot; devices no longer configured are dropped, new ones start
        counting from the snapshot's start."""
        self._reset()
        self._start = state["start"]
        self._last = {d: float(t) for d, t in state["last"].items() if d in self._limit}
        self._silent = {d for d in state["silent"] if d in self._limit}
        if self._start is not None:
            self._arm_all()
        else:
            self._heap = []
