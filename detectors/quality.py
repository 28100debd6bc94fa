"""Data-quality guards for one channel: is this reading fit to be judged at all?

This module owns the guards that stand in front of the level detectors. A guard never raises a
warning level — its verdict is always level 0. It marks a reading *suspect* with
``evidence={"suspect": True, "flag": <flag>, ...}`` and a reason, or passes it with
``evidence={"suspect": False}``. The site pipeline does not feed suspect readings to the level
detectors and reports quality conditions apart from levels, so a suspect reading never raises
a site alone (DESIGN.md §6).

Flags, in the order ``QualityGuard`` checks them (the first one wins):

======================  =======  ===========================================================
flag                    suspect  meaning
======================  =======  ===========================================================
``out_of_order``        yes      t earlier than the last accepted t (clock skew, late message)
``duplicate``           yes      same t and same value again (benign: MQTT QoS 1 redelivery)
``duplicate_conflict``  yes      same t, different value: two truths for one instant
``range``               yes      value outside [low, high] of the channel, or not finite
``stuck``               yes      the same value (within ``tolerance``) ``stuck_n`` times running
``step_back``           yes      a sudden jump back into the range a cumulative displacement
                                 has already travelled (a replayed earlier value)
``spike``               yes      Hampel outlier against the trailing window
``nonfinite``           yes      NaN/inf reaching a guard that has no range (standalone use)
``gap``                 no       the reading is fine, but ``evidence["gap_s"]`` says the time
                                 since the previous one exceeded ``max_gap_s``: reset
                                 smoothing and mark the channel warming up
======================  =======  ===========================================================

Spikes: the Hampel identifier (Hampel 1974; Pearson 2002, "Outliers in process modeling and
identification", IEEE TCST 10(1)) — a reading is an outlier when it lies more than
``k · 1.4826 · MAD`` from the median of a window; 1.4826 makes the MAD a consistent estimate of
the Gaussian σ, and k = 3.5 is the usual robust-z cut (Iglewicz & Hoaglin 1993). The window is
*trailing* (the previous ``window`` accepted readings) because a stream cannot look ahead. A
floor ``min_mad`` on the MAD, in the channel's unit, keeps a perfectly flat series (MAD = 0)
from calling every last-digit change a spike.

A spike never enters the window, or a burst of spikes would become the new normal. But a
genuine level shift — or the first readings of a real acceleration — looks exactly like a
spike at first, and an early-warning guard must never hide real movement for long. So:
``accept_after`` consecutive outliers *on the same side of the reference median* are accepted
as a new level: the window is reseeded from them and the guard says so
(``evidence["accepted_shift"]``, with the held readings in ``evidence["release"]`` so the
pipeline can hand them to the level detectors late rather than never). Agreement is "same
side", deliberately not "close to each other": a real acceleration is a ramp, not a plateau,
and a guard that waited for a plateau would suppress the very movement we warn about. The
price is a delay of ``accept_after - 1`` readings at the onset of a sudden real change.

A steady trend inside the window is never a spike: its MAD grows with the trend (for a ramp of
slope s the next reading lies (w/2 + 1)·s from the median while the cut is about
3.5 · 1.4826 · (w/4)·s ≈ 1.3·w·s).

Replays (``step_back``): the Three Gorges Baishuihe GPS record repeats the 2008-01 row as
2011-03 — a value "seen long before" that differs from the recent ones. Remembering all past
values to look the replay up is unbounded state, but a cumulative displacement is a continuous
path: it has passed through every value between its origin and its furthest point. So "equals
an old value" is, for this channel, "lands back inside the range already travelled", which
costs two floats. The guard flags a step that goes back against the long-run direction of
travel by more than ``k`` robust spreads of the recent steps (1.4826 · MAD of the steps around
their median, floored by ``min_mad``), landing inside the travelled range. A point that has not
travelled further than one such step (a stable point moving only in noise) is not judged — a
replay there is indistinguishable from noise, and harmless. Abnormal steps forward are held
out of the reference too (else the return from a forward spike would look like a step back) but
are not flagged: forward movement is the spike guard's business. ``accept_after`` consecutive
abnormal steps the same way are accepted as real movement, like a level shift.

On the Baishuihe record (``tests/test_quality_nodata.py``) this flags all nine 2011-03 readings
of the moving points (DX-01, ZG93, ZG118 × dX, dY, dF) and nine other readings of 2166: six
are DX-03 2010-01/02, whose 2010-01…10 rows are an exact copy of 2009-01…10 (a second replay,
not in the data's README; after three readings the guard accepts it as a level), three are
noise on stable points. The 2011-03 copies on the stable points lie within their GPS noise.

Coarse channels: the Hampel check assumes the signal hardly moves within the window compared
with its noise. Read once a day or less often, one reading carries days of real movement, so
``for_kind`` switches the spike check off there (see ``SPIKE_MAX_INTERVAL_S``).

Stuck values: a GNSS solution always varies with noise, so a run of identical solutions is a
frozen receiver or logger; a rain gauge legitimately reads 0 for weeks, so its stuck check is
off. ``QualityGuard.for_kind`` holds the per-kind defaults.

Out-of-order and repeated t: the level detectors silently ignore them (contract); this is the
one place they are *reported*. The stateful guards other than ``ClockGuard`` follow the
contract when used alone: a reading with t <= the last t returns the previous verdict
unchanged and is ignored. ``RangeGuard`` is stateless and judges every reading.

Every guard has a batch reference for its flags, written with numpy apart from the streaming
code and using only the guard's parameters; only tests use them, so they live with the tests
(``tests/oracles/quality.py``).

>>> g = SpikeGuard(window=5, k=3.5, min_mad=0.0)
>>> [g.update(i, x).evidence.get("flag") for i, x in enumerate([10, 10.1, 9.9, 10, 10.2, 50, 10.1])]
[None, None, None, None, None, 'spike', None]
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Sequence
from typing import Any

from geowarn.detectors.base import StreamingDetector, check_int
from geowarn.detectors.compact import pack, unpack
from geowarn.detectors.verdict import Verdict

#: 1/Φ⁻¹(3/4): scales a MAD to a consistent estimate of the Gaussian standard deviation.
MAD_SCALE = 1.4826

# Shared, never mutated: the hot path returns these instead of allocating a verdict per reading.
_OK = Verdict(0, "", {"suspect": False})
_WARMING = Verdict(0, "warming up", {"suspect": False}, warming_up=True)

#: Flags that mark a reading suspect (``gap`` is information, not suspicion).
SUSPECT_FLAGS = frozenset(
    {"out_of_order", "duplicate", "duplicate_conflict", "range", "stuck", "step_back", "spike", "nonfinite"}
)

KINDS = (
    "displacement",
    "crack",
    "tilt",
    "gnss_e",
    "gnss_n",
    "gnss_u",
    "rain",
    "pore_pressure",
    "groundwater",
    "soil_moisture",
    "battery",
    "deep_displacement",
    "acceleration",
    "vibration",
    "stress",
    "mud_level",
    "seepage_pressure",
    "soil_temperature",
)


def _suspect(flag: str, reason: str, **evidence: Any) -> Verdict:
    return Verdict(0, reason, {"suspect": True, "flag": flag, **evidence})


def _median_sorted(s: Sequence[float]) -> float:
    n = len(s)
    h = n // 2
    return s[h] if n % 2 else (s[h - 1] + s[h]) / 2.0


class _Window:
    """The last ``size`` values in arrival order, kept sorted alongside for an O(1) median.

    Insert and remove are a bisect and a memmove of at most ``size`` pointers; the MAD costs a
    sort and is only asked for when the median alone cannot decide (see the fast paths).
    """

    __slots__ = ("size", "order", "sorted")

    def __init__(self, size: int) -> None:
        self.size = size
        self.order: deque[float] = deque()
        self.sorted: list[float] = []

    def append(self, x: float) -> None:
        order = self.order
        if len(order) == self.size:
            old = order.popleft()
            del self.sorted[bisect_left(self.sorted, old)]
        order.append(x)
        insort(self.sorted, x)

    def clear(self) -> None:
        self.order.clear()
        self.sorted.clear()

    def mad(self, med: float) -> float:
        return _median_sorted(sorted([abs(x - med) for x in self.sorted]))


def _verdict_state(v: Verdict) -> dict[str, Any] | str:
    # The two shared verdicts go in by name: most snapshots hold nothing else.
    if v == _OK:
        return "ok"
    if v == _WARMING:
        return "warming"
    return {"reason": v.reason, "evidence": v.evidence, "warming_up": v.warming_up}


def _verdict_from(state: dict[str, Any] | str) -> Verdict:
    if isinstance(state, str):
        return {"ok": _OK, "warming": _WARMING}[state]
    return Verdict(0, state["reason"], dict(state["evidence"]), bool(state["warming_up"]))


def _flag_of(v: Verdict) -> str | None:
    return v.evidence.get("flag")


def _check_positive_or_none(name: str, value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, or None for off, got {value!r}")


def _check_nonneg(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


# --------------------------------------------------------------------------------------------
# Clock: out of order, duplicates, gaps
# --------------------------------------------------------------------------------------------


class ClockGuard(StreamingDetector):
    """Time travel and gaps, judged against the last accepted t.

    A reading with t earlier than the last accepted t is ``out_of_order``; the same t again is
    ``duplicate`` (same value) or ``duplicate_conflict`` (different value). None of these moves
    the clock. A forward jump of more than ``max_gap_s`` (None: never) is a ``gap``: not
    suspect, but ``evidence["gap_s"]`` tells the pipeline to restart smoothing.

    >>> c = ClockGuard(max_gap_s=1800)
    >>> [c.update(t, v).evidence.get("flag") for t, v in [(0, 1.0), (600, 1.0), (300, 2.0), (600, 1.0), (600, 5.0), (4200, 1.0)]]
    [None, None, 'out_of_order', 'duplicate', 'duplicate_conflict', 'gap']
    """

    def __init__(self, max_gap_s: float | None = None) -> None:
        _check_positive_or_none("max_gap_s", max_gap_s)
        self.max_gap_s = max_gap_s
        self._reset()

    def _reset(self) -> None:
        self._t: float | None = None
        self._v: float | None = None

    def update(self, t: float, value: float) -> Verdict:
        t = float(t)
        value = float(value)
        last = self._t
        if last is not None and t <= last:
            if t < last:
                return _suspect("out_of_order", f"t {t:g} is {last - t:g} s before the last accepted reading", last_t=last)
            same = value == self._v or (value != value and self._v != self._v)
            if same:
                return _suspect("duplicate", f"t {t:g} received again with the same value", last_t=last)
            return _suspect(
                "duplicate_conflict",
                f"t {t:g} received again with a different value ({value:g} after {self._v:g})",
                last_t=last,
                first_value=self._v,
            )
        self._t, self._v = t, value
        if last is not None and self.max_gap_s is not None and t - last > self.max_gap_s:
            gap = t - last
            return Verdict(0, f"gap of {gap:g} s (> {self.max_gap_s:g} s) before this reading", {"suspect": False, "flag": "gap", "gap_s": gap})
        return _OK


    def snapshot(self) -> dict[str, Any]:
        return {"t": self._t, "v": self._v}

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        self._t, self._v = state["t"], state["v"]


# --------------------------------------------------------------------------------------------
# Range
# --------------------------------------------------------------------------------------------


class RangeGuard(StreamingDetector):
    """A value outside [low, high] — or NaN/inf — is a device fault, not a hazard.

    Stateless, so it judges every reading whatever its t.

    >>> RangeGuard(0.0, 500.0).update(0, 999.0).evidence
    {'suspect': True, 'flag': 'range', 'value': 999.0, 'low': 0.0, 'high': 500.0}
    """

    def __init__(self, low: float, high: float) -> None:
        if not (low < high) or math.isnan(low) or math.isnan(high):
            raise ValueError(f"range must be low < high, got low={low!r}, high={high!r}")
        self.low = low
        self.high = high

    def _reset(self) -> None:  # nothing to reset: kept for the uniform detector shape
        pass

    def update(self, t: float, value: float) -> Verdict:
        value = float(value)
        if self.low <= value <= self.high:
            return _OK
        return _suspect(
            "range",
            f"value {value:g} outside the plausible range [{self.low:g}, {self.high:g}]",
            value=value if math.isfinite(value) else str(value),
            low=self.low,
            high=self.high,
        )


    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass


# --------------------------------------------------------------------------------------------
# Stuck value
# --------------------------------------------------------------------------------------------


class StuckGuard(StreamingDetector):
    """The same value, within ``tolerance``, for ``stuck_n`` consecutive readings.

    A run is a stretch whose values all lie within a band of width ``tolerance``
    (max − min <= tolerance, so a slow drift is not "the same value"); a reading that breaks the
    band starts a new run. The ``stuck_n``-th reading of a run and every later one are flagged:
    the first ones cannot be, since a stream cannot know the run will last.

    >>> g = StuckGuard(stuck_n=3)
    >>> [g.update(i, x).evidence.get("flag") for i, x in enumerate([1.0, 2.0, 2.0, 2.0, 2.0, 3.0])]
    [None, None, None, 'stuck', 'stuck', None]
    """

    def __init__(self, stuck_n: int, tolerance: float = 0.0) -> None:
        check_int("stuck_n", stuck_n, 2)
        _check_nonneg("tolerance", tolerance)
        self.stuck_n = stuck_n
        self.tolerance = tolerance
        self._reset()

    def _reset(self) -> None:
        self._t: float | None = None
        self._lo = self._hi = 0.0
        self._n = 0
        self._since: float | None = None
        self._last: Verdict = _OK

    def update(self, t: float, value: float) -> Verdict:
        t = float(t)
        value = float(value)
        last_t = self._t
        if last_t is not None and t <= last_t:
            return self._last  # out of order or repeated: ignored (ClockGuard reports it)
        if not math.isfinite(value):
            self._t = t
            self._last = _suspect("nonfinite", f"value {value} is not a number")
            return self._last
        return self._judge(t, value, last_t)

    def _judge(self, t: float, value: float, last_t: float | None) -> Verdict:
        """A finite reading after the last one (``QualityGuard`` has checked both)."""
        self._t = t
        lo = self._lo
        hi = self._hi
        if value < lo:
            lo = value
        elif value > hi:
            hi = value
        if self._n and hi - lo <= self.tolerance:
            self._lo, self._hi = lo, hi
            self._n += 1
        else:
            self._lo = self._hi = value
            self._n = 1
            self._since = t
        if self._n >= self.stuck_n:
            self._last = _suspect(
                "stuck",
                f"stuck: value {value:g} unchanged (within {self.tolerance:g}) for {self._n} readings since t {self._since:g}",
                run=self._n,
                since_t=self._since,
                value=value,
            )
        else:
            self._last = _OK
        return self._last


    def snapshot(self) -> dict[str, Any]:
        return {"t": self._t, "lo": self._lo, "hi": self._hi, "n": self._n, "since": self._since, "last": _verdict_state(self._last)}

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        self._t, self._lo, self._hi = state["t"], state["lo"], state["hi"]
        self._n, self._since = int(state["n"]), state["since"]
        self._last = _verdict_from(state["last"])


# --------------------------------------------------------------------------------------------
# Hold-and-accept: shared by the two guards that keep a reference they must not let spikes move
# --------------------------------------------------------------------------------------------


class _Held:
    """Consecutive flagged readings that may yet turn out to be a real change."""

    __slots__ = ("items", "side")

    def __init__(self) -> None:
        self.items: list[list[float]] = []
        self.side = 0


# --------------------------------------------------------------------------------------------
# Spike: Hampel on a trailing window
# --------------------------------------------------------------------------------------------


class SpikeGuard(StreamingDetector):
    """Hampel identifier on the trailing window of accepted readings.

    A reading is a ``spike`` when |value − median| > k · 1.4826 · max(MAD, ``min_mad``) over the
    previous ``window`` accepted readings. Spikes do not enter the window; ``accept_after``
    consecutive spikes on the same side of the median are a real shift and are accepted (the
    window is reseeded from them; ``evidence["release"]`` lists the earlier held readings as
    [t, value] pairs). The guard judges once the window holds ``min_points`` readings, and
    starts over (warming up) after a jump in t longer than ``max_gap_s``.

    The hand-worked case: window [10, 10.1, 9.9, 10, 10.2] has median 10 and MAD 0.1, so the
    cut is 3.5 · 1.4826 · 0.1 = 0.52; 50 is 40 away.

    >>> g = SpikeGuard(window=5, min_mad=0.0)
    >>> for i, x in enumerate([10, 10.1, 9.9, 10, 10.2]):
    ...     _ = g.update(i, x)
    >>> e = g.update(5, 50.0).evidence
    >>> e["flag"], e["median"], round(e["threshold"], 4)
    ('spike', 10.0, 0.5189)
    """

    def __init__(
        self,
        window: int = 15,
        k: float = 3.5,
        min_mad: float = 0.0,
        *,
        min_points: int = 5,
        accept_after: int = 3,
        max_gap_s: float | None = None,
    ) -> None:
        check_int("window", window, 3)
        check_int("min_points", min_points, 3)
        if min_points > window:
            raise ValueError(f"min_points must be <= window ({window}), got {min_points}")
        if not (k > 0 and math.isfinite(k)):
            raise ValueError(f"k must be a finite number > 0, got {k!r}")
        _check_nonneg("min_mad", min_mad)
        check_int("accept_after", accept_after, 2)
        _check_positive_or_none("max_gap_s", max_gap_s)
        self.window = window
        self.k = k
        self.min_mad = min_mad
        self.min_points = min_points
        self.accept_after = accept_after
        self.max_gap_s = max_gap_s
        self._reset()

    def _reset(self) -> None:
        self._win = _Window(self.window)
        # Below this distance from the median a reading is fine whatever the MAD: skip the MAD.
        self._sure = self.k * MAD_SCALE * self.min_mad
        self._held = _Held()
        self._t: float | None = None
        self._last: Verdict = _WARMING

    def update(self, t: float, value: float) -> Verdict:
        t = float(t)
        value = float(value)
        last_t = self._t
        if last_t is not None and t <= last_t:
            return self._last  # out of order or repeated: ignored (ClockGuard reports it)
        if not math.isfinite(value):
            self._t = t
            self._last = _suspect("nonfinite", f"value {value} is not a number")
            return self._last
        return self._judge(t, value, last_t)

    def _judge(self, t: float, value: float, last_t: float | None) -> Verdict:
        """A finite reading after the last one (``QualityGuard`` has checked both)."""
        self._t = t
        win = self._win
        held = self._held
        if self.max_gap_s is not None and last_t is not None and t - last_t > self.max_gap_s:
            win.clear()  # the old reference says nothing about the level after an outage
            held.items.clear()
        n = len(win.order)
        if n < self.min_points:
            win.append(value)
            held.items.clear()
            self._last = _WARMING
            return _WARMING
        srt = win.sorted
        h = n // 2
        med = srt[h] if n % 2 else (srt[h - 1] + srt[h]) / 2.0
        dev = value - med
        if -self._sure <= dev <= self._sure:
            order = win.order  # _Window.append, inline (the usual reading)
            if len(order) == win.size:
                del srt[bisect_left(srt, order.popleft())]
            order.append(value)
            insort(srt, value)
            if held.items:
                held.items = []
            self._last = _OK
            return _OK
        mad = win.mad(med)
        thr = self.k * MAD_SCALE * max(mad, self.min_mad)
        if abs(dev) <= thr:
            win.append(value)
            held.items.clear()
            self._last = _OK
            return _OK
        side = 1 if dev > 0 else -1
        if held.items and held.side == side:
            held.items.append([t, value])
        else:
            held.items = [[t, value]]
            held.side = side
        if len(held.items) >= self.accept_after:
            release = held.items[:-1]
            win.clear()
            for _, x in held.items:
                win.append(x)
            held.items = []
            self._last = Verdict(
                0,
                f"{self.accept_after} consecutive readings {'above' if side > 0 else 'below'} the old median {med:g}: accepted as a new level",
                {"suspect": False, "accepted_shift": "spike", "release": release, "old_median": med},
            )
            return self._last
        self._last = _suspect(
            "spike",
            f"spike: value {value:g} is {abs(dev):g} from the median {med:g} of the last {n} readings (cut {thr:.3g})",
            value=value,
            median=med,
            mad=mad,
            threshold=thr,
            held=len(held.items),
        )
        return self._last


    def snapshot(self) -> dict[str, Any]:
        return {
            "window": pack(self._win.order),
            "held": [list(x) for x in self._held.items],
            "side": self._held.side,
            "t": self._t,
            "last": _verdict_state(self._last),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        for x in unpack(state["window"]):
            self._win.append(x)
        self._held.items = [list(x) for x in state["held"]]
        self._held.side = int(state["side"])
        self._t = state["t"]
        self._last = _verdict_from(state["last"])


# --------------------------------------------------------------------------------------------
# Step back: a cumulative displacement jumping back to where it has already been
# --------------------------------------------------------------------------------------------


class StepBackGuard(StreamingDetector):
    """A jump back into the range a cumulative displacement has already travelled.

    Steps are differences of consecutive accepted readings. Once ``min_points`` steps are known,
    a step is *abnormal* when it deviates from the median recent step by more than
    k · 1.4826 · max(MAD of the recent steps, ``min_mad``). An abnormal step is a ``step_back``
    when it goes against the direction of travel (last accepted value minus the first, the
    origin), the channel has travelled further than that cut, and the value lands inside
    [min, max] of the values accepted so far — the range the path has already covered.

    Abnormal steps in either direction stay out of the reference (a forward spike accepted as
    the last value would make the return to normal look like a step back); only step-backs are
    flagged — a big forward step may be real movement, and it is the spike guard's business.
    ``accept_after`` consecutive abnormal steps the same way are real movement: the reference
    moves to them and their steps join the spread. A gap longer than ``max_gap_s`` clears the
    steps (the origin and the travelled range are kept: they are the long memory this guard
    exists for).

    >>> g = StepBackGuard(window=5, min_points=3, min_mad=1.0)
    >>> [g.update(i, x).evidence.get("flag") for i, x in enumerate([0, 10, 20, 30, 40, 50, 12, 60])]
    [None, None, None, None, None, None, 'step_back', None]
    """

    def __init__(
        self,
        window: int = 12,
        k: float = 5.0,
        min_mad: float = 0.0,
        *,
        min_points: int = 4,
        accept_after: int = 3,
        max_gap_s: float | None = None,
    ) -> None:
        check_int("window", window, 3)
        check_int("min_points", min_points, 3)
        if min_points > window:
            raise ValueError(f"min_points must be <= window ({window}), got {min_points}")
        if not (k > 0 and math.isfinite(k)):
            raise ValueError(f"k must be a finite number > 0, got {k!r}")
        _check_nonneg("min_mad", min_mad)
        check_int("accept_after", accept_after, 2)
        _check_positive_or_none("max_gap_s", max_gap_s)
        self.window = window
        self.k = k
        self.min_mad = min_mad
        self.min_points = min_points
        self.accept_after = accept_after
        self.max_gap_s = max_gap_s
        self._reset()

    def _reset(self) -> None:
        self._steps = _Window(self.window)
        self._sure = self.k * MAD_SCALE * self.min_mad  # see SpikeGuard
        self._held = _Held()
        self._t: float | None = None
        self._v: float | None = None  # last accepted value
        self._origin = self._lo = self._hi = 0.0
        self._last: Verdict = _WARMING

    def _accept(self, value: float) -> None:
        self._v = value
        if value < self._lo:
            self._lo = value
        elif value > self._hi:
            self._hi = value

    def update(self, t: float, value: float) -> Verdict:
        t = float(t)
        value = float(value)
        last_t = self._t
        if last_t is not None and t <= last_t:
            return self._last  # out of order or repeated: ignored (ClockGuard reports it)
        if not math.isfinite(value):
            self._t = t
            self._last = _suspect("nonfinite", f"value {value} is not a number")
            return self._last
        return self._judge(t, value, last_t)

    def _judge(self, t: float, value: float, last_t: float | None) -> Verdict:
        """A finite reading after the last one (``QualityGuard`` has checked both)."""
        self._t = t
        held = self._held
        if self._v is None:
            self._origin = self._lo = self._hi = self._v = value
            self._last = _WARMING
            return _WARMING
        steps = self._steps
        if self.max_gap_s is not None and last_t is not None and t - last_t > self.max_gap_s:
            # The step across an outage holds the movement of the whole outage: not a sample
            # of the step spread. Start the steps over from this reading.
            steps.clear()
            held.items.clear()
            self._accept(value)
            self._last = _WARMING
            return _WARMING
        step = value - self._v
        n = len(steps.order)
        if n < self.min_points:
            steps.append(step)
            held.items.clear()
            self._accept(value)
            self._last = _WARMING
            return _WARMING
        srt = steps.sorted
        h = n // 2
        med = srt[h] if n % 2 else (srt[h - 1] + srt[h]) / 2.0
        dev = step - med
        thr = self._sure
        if not -thr <= dev <= thr:
            thr = self.k * MAD_SCALE * max(steps.mad(med), self.min_mad)
        if -thr <= dev <= thr:
            order = steps.order  # _Window.append, inline (the usual reading)
            if len(order) == steps.size:
                del srt[bisect_left(srt, order.popleft())]
            order.append(step)
            insort(srt, step)
            if held.items:
                held.items = []
            self._v = value
            if value < self._lo:
                self._lo = value
            elif value > self._hi:
                self._hi = value
            self._last = _OK
            return _OK
        # An abnormal step in either direction stays out of the reference: a forward spike
        # accepted as the new last value would make the return to normal look like a step back.
        travel = self._v - self._origin
        side = 1 if dev > 0 else -1
        flagged = abs(travel) > thr and side != (1 if travel > 0 else -1) and self._lo <= value <= self._hi
        if held.items and held.side == side:
            held.items.append([t, value, flagged])
        else:
            held.items = [[t, value, flagged]]
            held.side = side
        if len(held.items) >= self.accept_after:
            # Accepted as real movement: the held steps are samples of it and join the spread.
            prev = self._v
            for _, x, _ in held.items:
                steps.append(x - prev)
                self._accept(x)
                prev = x
            release = [[tt, x] for tt, x, f in held.items[:-1] if f]
            held.items = []
            if not release and not flagged:
                self._last = _OK
                return _OK
            self._last = Verdict(
                0,
                f"{self.accept_after} consecutive abnormal steps the same way: accepted as real movement",
                {"suspect": False, "accepted_shift": "step_back", "release": release},
            )
            return self._last
        if not flagged:
            self._last = _OK  # abnormal but not backwards: held out of the reference, not flagged
            return _OK
        self._last = _suspect(
            "step_back",
            f"step back: value {value:g} jumps back {abs(step):g} (cut {thr:.3g}) into the range already travelled "
            f"[{self._lo:g}, {self._hi:g}]: a replayed earlier value?",
            value=value,
            step=step,
            threshold=thr,
            last_value=self._v,
            origin=self._origin,
            travelled=[self._lo, self._hi],
            held=len(held.items),
        )
        return self._last


    def snapshot(self) -> dict[str, Any]:
        return {
            "steps": pack(self._steps.order),
            "held": [list(x) for x in self._held.items],
            "side": self._held.side,
            "t": self._t,
            "v": self._v,
            "origin": self._origin,
            "lo": self._lo,
            "hi": self._hi,
            "last": _verdict_state(self._last),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        for x in unpack(state["steps"]):
            self._steps.append(x)
        self._held.items = [list(x) for x in state["held"]]
        # The side of the held steps (absent in snapshots of before: the held list's own, or none).
        self._held.side = int(state.get("side", 0))
        self._t, self._v = state["t"], state["v"]
        self._origin, self._lo, self._hi = state["origin"], state["lo"], state["hi"]
        self._last = _verdict_from(state["last"])


# --------------------------------------------------------------------------------------------
# The combined guard of one channel
# --------------------------------------------------------------------------------------------

#: Per-kind defaults, in the kind's default unit (config.registry.UNITS, first entry).
#: stuck_s: how long one value may repeat before the channel is called stuck (None: never —
#: rain reads 0 for weeks). min_mad: the MAD floor of the spike and step-back guards, about the
#: sensor's noise MAD, so a quiet channel does not call last-digit changes spikes.
#: spike: whether a Hampel check makes sense (rain is bursty by nature: its median is 0).
#: step_back: cumulative displacement kinds only (tilt swings back with temperature).
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "displacement": {"stuck_s": 24 * 3600.0, "min_mad": 0.5, "spike": True, "step_back": True},
    "crack": {"stuck_s": 24 * 3600.0, "min_mad": 0.05, "spike": True, "step_back": True},
    "tilt": {"stuck_s": 24 * 3600.0, "min_mad": 0.002, "spike": True, "step_back": False},
    "gnss_e": {"stuck_s": 3600.0, "min_mad": 2.0, "spike": True, "step_back": True},
    "gnss_n": {"stuck_s": 3600.0, "min_mad": 2.0, "spike": True, "step_back": True},
    "gnss_u": {"stuck_s": 3600.0, "min_mad": 4.0, "spike": True, "step_back": True},
    "rain": {"stuck_s": None, "min_mad": 0.0, "spike": False, "step_back": False},
    "pore_pressure": {"stuck_s": 24 * 3600.0, "min_mad": 0.5, "spike": True, "step_back": False},
    "groundwater": {"stuck_s": 72 * 3600.0, "min_mad": 0.02, "spike": True, "step_back": False},
    "soil_moisture": {"stuck_s": 72 * 3600.0, "min_mad": 0.5, "spike": True, "step_back": False},
    "battery": {"stuck_s": 72 * 3600.0, "min_mad": 0.05, "spike": True, "step_back": False},
    # An in-place inclinometer's cumulative displacement: as a wire extensometer.
    "deep_displacement": {"stuck_s": 24 * 3600.0, "min_mad": 0.2, "spike": True, "step_back": True},
    # Peaks within a sampling period are bursty by nature (a shake is one reading far from the
    # median): no spike check, or the very event would be called a fault; and a quiet sensor's
    # peak may read the same last digits for days (no stuck check).
    "acceleration": {"stuck_s": None, "min_mad": 0.0, "spike": False, "step_back": False},
    "vibration": {"stuck_s": None, "min_mad": 0.0, "spike": False, "step_back": False},
    "stress": {"stuck_s": 72 * 3600.0, "min_mad": 0.5, "spike": True, "step_back": False},
    # A dry gully reads 0 m for weeks (no stuck check); a surge is a real jump (no spike check).
    "mud_level": {"stuck_s": None, "min_mad": 0.0, "spike": False, "step_back": False},
    "seepage_pressure": {"stuck_s": 24 * 3600.0, "min_mad": 0.5, "spike": True, "step_back": False},
    # Soil temperature a metre down moves by tenths of a degree a day: a week before stuck.
    "soil_temperature": {"stuck_s": 7 * 86400.0, "min_mad": 0.05, "spike": True, "step_back": False},
}

#: A gap is what the no-data monitor would also call silence: this many expected intervals.
GAP_FACTOR = 3.0

#: The Hampel check assumes the signal hardly moves within the window compared with the noise.
#: A channel read once a day or less often carries days of real movement per reading
#: (Baishuihe ZG93: +356 mm in July 2007), so there a "spike" is mostly real movement: on the
#: Baishuihe monthly record the spike check flags ~250 readings, nearly all of them seasonal
#: accelerations. Such channels keep the range, clock, stuck and step-back checks only.
SPIKE_MAX_INTERVAL_S = 86400.0

#: Even a coarse channel needs this many equal readings in a row to be called stuck: with
#: integer-mm values, three equal monthly readings of a stable point happen by chance.
STUCK_MIN_READINGS = 5


class QualityGuard(StreamingDetector):
    """All guards of one channel in a fixed order; the first flag wins.

    Order: clock (out_of_order / duplicate / duplicate_conflict) → range → stuck → step_back →
    spike. Readings the clock or the range rejects reach no other guard (garbage must not enter
    any window). The stuck, step-back and spike guards all see every other reading, so their
    references stay in step with each other; the first of them that flags decides the verdict.
    A ``gap`` rides along in ``evidence["gap_s"]`` whatever the verdict.

    When a spike or step-back run is accepted as a real change, the first verdict that is no
    longer suspect carries ``evidence["release"]``: the readings ([t, value], in time order)
    that were held back as suspect and now turn out to be real. The pipeline may feed them to
    the level detectors before the current reading, so a real change loses no readings, only
    ``accept_after - 1`` readings of latency.

    A parameter set to None switches its guard off.

    >>> g = QualityGuard.for_kind("rain", interval_s=600, low=0.0, high=500.0)
    >>> g.stuck is None, g.spike is None, g.step_back is None
    (True, True, True)
    >>> [g.update(t, x).evidence.get("flag") for t, x in [(0, 0.0), (600, 0.0), (300, 0.0), (1200, 900.0), (4800, 2.5)]]
    [None, None, 'out_of_order', 'range', 'gap']
    """

    def __init__(
        self,
        low: float,
        high: float,
        *,
        max_gap_s: float | None = None,
        stuck_n: int | None = None,
        stuck_tolerance: float = 0.0,
        spike_window: int | None = 15,
        spike_k: float = 3.5,
        min_mad: float = 0.0,
        spike_min_points: int = 5,
        step_back_window: int | None = None,
        step_back_k: float = 5.0,
        step_back_min_points: int = 4,
        accept_after: int = 3,
    ) -> None:
        self.low = low
        self.high = high
        self.max_gap_s = max_gap_s
        self.stuck_n = stuck_n
        self.stuck_tolerance = stuck_tolerance
        self.spike_window = spike_window
        self.spike_k = spike_k
        self.min_mad = min_mad
        self.spike_min_points = spike_min_points
        self.step_back_window = step_back_window
        self.step_back_k = step_back_k
        self.step_back_min_points = step_back_min_points
        self.accept_after = accept_after
        # Sub-guards validate their own parameters (ValueError naming the valid values).
        self.clock = ClockGuard(max_gap_s)
        self.range = RangeGuard(low, high)
        self.stuck = None if stuck_n is None else StuckGuard(stuck_n, stuck_tolerance)
        self.step_back = (
            None
            if step_back_window is None
            else StepBackGuard(
                step_back_window, step_back_k, min_mad, min_points=step_back_min_points, accept_after=accept_after, max_gap_s=max_gap_s
            )
        )
        self.spike = (
            None
            if spike_window is None
            else SpikeGuard(spike_window, spike_k, min_mad, min_points=spike_min_points, accept_after=accept_after, max_gap_s=max_gap_s)
        )
        self._judges: list[StuckGuard | StepBackGuard | SpikeGuard] = [g for g in (self.stuck, self.step_back, self.spike) if g is not None]
        self._max_step = math.inf if max_gap_s is None else max_gap_s
        self._reset()

    @classmethod
    def for_kind(cls, kind: str, interval_s: float, low: float, high: float) -> QualityGuard:
        """The guard of a channel of ``kind`` reporting every ``interval_s`` seconds.

        Stuck after ``stuck_s`` of the kind (at least ``STUCK_MIN_READINGS`` readings); a gap
        after more than 3 intervals (the no-data monitor's default factor, so a no-data episode
        ends in a gap flag); windows of 15 readings for spikes (off when ``interval_s`` exceeds
        ``SPIKE_MAX_INTERVAL_S``) and 12 steps for step-backs; a new level accepted after 3
        agreeing readings. Values are in the kind's default unit (tilt: degrees).
        """
        kind = str(getattr(kind, "value", kind))
        if kind not in _KIND_DEFAULTS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        if not (interval_s > 0 and math.isfinite(interval_s)):
            raise ValueError(f"interval_s must be a finite number > 0, got {interval_s!r}")
        d = _KIND_DEFAULTS[kind]
        stuck_n = None if d["stuck_s"] is None else max(STUCK_MIN_READINGS, math.ceil(d["stuck_s"] / interval_s))
        return cls(
            low,
            high,
            max_gap_s=GAP_FACTOR * interval_s,
            stuck_n=stuck_n,
            spike_window=15 if d["spike"] and interval_s <= SPIKE_MAX_INTERVAL_S else None,
            min_mad=d["min_mad"],
            step_back_window=12 if d["step_back"] else None,
        )

    def _reset(self) -> None:
        self.clock._reset()
        for g in self._judges:
            g._reset()
        self._pending: dict[float, float] = {}  # held readings a sub-guard has accepted as real

    def update(self, t: float, value: float) -> Verdict:
        t = float(t)
        value = float(value)
        clock = self.clock
        last = clock._t
        if last is not None and t > last and t - last <= self._max_step:
            clock._t, clock._v = t, value  # the usual reading, in order and without a gap: ClockGuard's _OK
            c = _OK
        else:
            c = clock.update(t, value)
            if c.evidence["suspect"]:
                return c
        ce = c.evidence
        if not self.low <= value <= self.high:
            r = self.range.update(t, value)
            return r if c is _OK else Verdict(0, r.reason, {**r.evidence, "gap_s": ce["gap_s"]})
        # The clock has put t after every sub-guard's last reading; a finite value may skip
        # their own order and finiteness checks (an infinite one passes only an infinite range).
        finite = value - value == 0.0  # x − x is NaN for ±inf (and NaN)
        first: Verdict | None = None
        warming = False
        accepted: Verdict | None = None
        for g in self._judges:
            v = g._judge(t, value, g._t) if finite else g.update(t, value)
            if v is _OK:
                continue
            e = v.evidence
            if e["suspect"]:
                if first is None:
                    first = v
            elif "release" in e:
                accepted = v
                for tt, vv in e["release"]:
                    self._pending[tt] = vv
                self._pending[t] = value  # in case another guard still holds this reading
            warming = warming or v.warming_up
        if first is not None:
            return first if c is _OK else Verdict(0, first.reason, {**first.evidence, "gap_s": ce["gap_s"]})
        if c is _OK and not self._pending:
            return _WARMING if warming else _OK
        ev: dict[str, Any] = {"suspect": False}
        reason = ""
        if c is not _OK:
            ev.update(ce)
            reason = c.reason
        if self._pending:
            release = sorted([tt, vv] for tt, vv in self._pending.items() if tt < t)
            self._pending.clear()
            if release:
                ev["release"] = release
            if accepted is not None:
                ev["accepted_shift"] = accepted.evidence["accepted_shift"]
                reason = "; ".join(x for x in (reason, accepted.reason) if x)
        return Verdict(0, reason, ev, warming)

    def snapshot(self) -> dict[str, Any]:
        return {
            "clock": self.clock.snapshot(),
            "stuck": None if self.stuck is None else self.stuck.snapshot(),
            "step_back": None if self.step_back is None else self.step_back.snapshot(),
            "spike": None if self.spike is None else self.spike.snapshot(),
            "pending": sorted([t, v] for t, v in self._pending.items()),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        self.clock.restore(state["clock"])
        for name in ("stuck", "step_back", "spike"):
            g = getattr(self, name)
            if g is not None:
                g.restore(state[name])
        self._pending = {t: v for t, v in state["pending"]}
