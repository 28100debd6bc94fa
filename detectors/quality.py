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
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, cast

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

    __slots__ = ("_t", "_v", "max_gap_s")

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
            same = value == self._v or (value != value and self._v != self._v)  # noqa: PLR0124 (NaN again is the same NaN)
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


def _check_range(low: float, high: float) -> None:
    if not (low < high) or math.isnan(low) or math.isnan(high):
        raise ValueError(f"range must be low < high, got low={low!r}, high={high!r}")


def _out_of_range(value: float, low: float, high: float) -> Verdict:
    return _suspect(
        "range",
        f"value {value:g} outside the plausible range [{low:g}, {high:g}]",
        value=value if math.isfinite(value) else str(value),
        low=low,
        high=high,
    )


class RangeGuard(StreamingDetector):
    """A value outside [low, high] — or NaN/inf — is a device fault, not a hazard.

    Stateless, so it judges every reading whatever its t.

    >>> RangeGuard(0.0, 500.0).update(0, 999.0).evidence
    {'suspect': True, 'flag': 'range', 'value': 999.0, 'low': 0.0, 'high': 500.0}
    """

    __slots__ = ("high", "low")

    def __init__(self, low: float, high: float) -> None:
        _check_range(low, high)
        self.low = low
        self.high = high

    def _reset(self) -> None:  # nothing to reset: kept for the uniform detector shape
        pass

    def update(self, t: float, value: float) -> Verdict:
        value = float(value)
        if self.low <= value <= self.high:
            return _OK
        return _out_of_range(value, self.low, self.high)


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

    __slots__ = ("_hi", "_last", "_lo", "_n", "_since", "_t", "stuck_n", "tolerance")

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
# A trailing window and hold-and-accept: shared by the two guards that keep a reference they
# must not let spikes move
# --------------------------------------------------------------------------------------------


def _blank(size: int) -> list[float]:
    """An empty window's list: ``size`` ring slots, room reserved for ``size`` sorted values.

    ``[x] * n`` allocates exactly n slots, and a list cut to no less than half its allocation
    keeps it, so a window never reallocates."""
    w = [0.0] * (2 * size)
    del w[size:]
    return w


def _negative_zero(x: Any) -> bool:
    # -0.0 == 0.0 is one key to a cache: a parameter of -0.0 gets a spec of its own.
    return type(x) is float and x == 0.0 and math.copysign(1.0, x) < 0.0


#: A windowed guard's parameters and what they imply, shared by every guard built with the
#: same ones: (window, k, min_mad, min_points, accept_after, max_gap_s, sure), sure being
#: the distance from the median below which a value is fine whatever the MAD (skip the MAD).
_WindowedSpec = tuple[int, float, float, int, int, "float | None", float]


def _windowed_spec(window: int, k: float, min_mad: float, min_points: int, accept_after: int, max_gap_s: float | None) -> _WindowedSpec:
    """Validate a windowed guard's parameters (ValueError naming the valid values), once for
    every guard with the same ones: they share the one immutable spec."""
    if _negative_zero(min_mad):
        return _make_windowed_spec.__wrapped__(window, k, min_mad, min_points, accept_after, max_gap_s)
    return _make_windowed_spec(window, k, min_mad, min_points, accept_after, max_gap_s)


@lru_cache(maxsize=256, typed=True)  # typed: 15.0 must not pass as an already-checked 15
def _make_windowed_spec(window: int, k: float, min_mad: float, min_points: int, accept_after: int, max_gap_s: float | None) -> _WindowedSpec:
    check_int("window", window, 3)
    check_int("min_points", min_points, 3)
    if min_points > window:
        raise ValueError(f"min_points must be <= window ({window}), got {min_points}")
    if not (k > 0 and math.isfinite(k)):
        raise ValueError(f"k must be a finite number > 0, got {k!r}")
    _check_nonneg("min_mad", min_mad)
    check_int("accept_after", accept_after, 2)
    _check_positive_or_none("max_gap_s", max_gap_s)
    return (window, k, min_mad, min_points, accept_after, max_gap_s, k * MAD_SCALE * min_mad)


class _Windowed(StreamingDetector):
    """What the spike and step-back guards share: the last ``window`` values in arrival order,
    kept sorted alongside for an O(1) median, and the run of consecutive flagged readings that
    may yet turn out to be a real change (``_held``, its side ``_side``).

    Both orders live in one list, of the same float objects (issue 17: a deque, whose first
    block alone is ~600 bytes, and a list cost ~1.2 KB a window): ``_w[:window]`` is a ring in
    arrival order (filled from 0; once full the oldest value is at ``_h``), ``_w[window:]``
    the ``_n`` values sorted. Insert and remove are a bisect and a memmove of at most
    ``window`` pointers; the MAD costs a sort and is only asked for when the median alone
    cannot decide (see the fast paths). The held run is a list while it holds readings, else
    the shared empty tuple. (An ``array('d')`` would save the boxed floats, but bisect and
    insort on it cost ~3× the list's C fast paths, and a guard runs on every reading.)

    The parameters are one spec (``_WindowedSpec``) shared by every guard built with the same
    ones, and read through properties of their own names.
    """

    __slots__ = ("_h", "_held", "_last", "_n", "_side", "_sp", "_t", "_w")

    def __init__(
        self,
        window: int,
        k: float,
        min_mad: float = 0.0,
        *,
        min_points: int = 5,
        accept_after: int = 3,
        max_gap_s: float | None = None,
    ) -> None:
        self._sp = _windowed_spec(window, k, min_mad, min_points, accept_after, max_gap_s)
        self._reset()

    @classmethod
    def _of(cls, sp: _WindowedSpec) -> Any:
        """A fresh guard of an already validated spec (``QualityGuard``'s way to build one)."""
        g = object.__new__(cls)
        g._sp = sp
        g._reset()
        return g

    @property
    def window(self) -> int:
        return self._sp[0]

    @property
    def k(self) -> float:
        return self._sp[1]

    @property
    def min_mad(self) -> float:
        return self._sp[2]

    @property
    def min_points(self) -> int:
        return self._sp[3]

    @property
    def accept_after(self) -> int:
        return self._sp[4]

    @property
    def max_gap_s(self) -> float | None:
        return self._sp[5]

    def _reset(self) -> None:
        self._w = _blank(self._sp[0])
        self._n = 0
        self._h = 0
        self._held: Sequence[list[Any]] = ()
        self._side = 0
        self._t: float | None = None
        self._last: Verdict = _WARMING

    def _push(self, x: float) -> None:
        """Append ``x`` to the window, dropping the oldest value when it is full."""
        w = self._w
        size = self._sp[0]
        n = self._n
        if n == size:
            h = self._h
            old = w[h]
            w[h] = x
            self._h = h + 1 if h + 1 < size else 0
            del w[bisect_left(w, old, size)]
        else:
            w[n] = x
            self._n = n + 1
        insort(w, x, size)

    def _clear(self) -> None:
        del self._w[self._sp[0] :]
        self._n = 0
        self._h = 0

    def _mad(self, med: float) -> float:
        return _median_sorted(sorted([abs(x - med) for x in self._w[self._sp[0] :]]))

    def _order(self) -> list[float]:
        """The window in arrival order."""
        w = self._w
        h = self._h
        return w[h : self._n] + w[:h] if h else w[: self._n]

    def _load(self, values: list[float]) -> None:
        """As ``_push`` of each of ``values`` into the empty window, in one go: the sorted part
        of a window is always the stable sort of its arrival order (insort puts a value after
        its equals, and the oldest of equals is the first one bisect_left finds)."""
        size = self._sp[0]
        if len(values) > size:
            values = values[-size:]
        n = len(values)
        w = self._w
        w[:n] = values
        w.extend(sorted(values))
        self._n = n
        self._h = 0


# --------------------------------------------------------------------------------------------
# Spike: Hampel on a trailing window
# --------------------------------------------------------------------------------------------


class SpikeGuard(_Windowed):
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

    __slots__ = ()

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
        super().__init__(window, k, min_mad, min_points=min_points, accept_after=accept_after, max_gap_s=max_gap_s)

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
        size, k, min_mad, min_points, accept_after, max_gap_s, sure = self._sp
        if max_gap_s is not None and last_t is not None and t - last_t > max_gap_s:
            self._clear()  # the old reference says nothing about the level after an outage
            self._held = ()
        n = self._n
        if n < min_points:
            self._push(value)
            self._held = ()
            self._last = _WARMING
            return _WARMING
        w = self._w
        i = size + (n >> 1)
        med = w[i] if n & 1 else (w[i - 1] + w[i]) / 2.0
        dev = value - med
        if -sure <= dev <= sure:
            if n == size:  # _push, inline (the usual reading)
                h = self._h
                old = w[h]
                w[h] = value
                self._h = h + 1 if h + 1 < size else 0
                del w[bisect_left(w, old, size)]
            else:
                w[n] = value
                self._n = n + 1
            insort(w, value, size)
            if self._held:
                self._held = ()
            self._last = _OK
            return _OK
        mad = self._mad(med)
        thr = k * MAD_SCALE * max(mad, min_mad)
        if abs(dev) <= thr:
            self._push(value)
            self._held = ()
            self._last = _OK
            return _OK
        side = 1 if dev > 0 else -1
        held = self._held
        if held and self._side == side:
            held = [*held, [t, value]]
        else:
            held = [[t, value]]
            self._side = side
        if len(held) >= accept_after:
            release = held[:-1]
            self._clear()
            for _, x in held:
                self._push(x)
            self._held = ()
            self._last = Verdict(
                0,
                f"{accept_after} consecutive readings {'above' if side > 0 else 'below'} the old median {med:g}: accepted as a new level",
                {"suspect": False, "accepted_shift": "spike", "release": release, "old_median": med},
            )
            return self._last
        self._held = held
        self._last = _suspect(
            "spike",
            f"spike: value {value:g} is {abs(dev):g} from the median {med:g} of the last {n} readings (cut {thr:.3g})",
            value=value,
            median=med,
            mad=mad,
            threshold=thr,
            held=len(held),
        )
        return self._last


    def snapshot(self) -> dict[str, Any]:
        return {
            "window": pack(self._order()),
            "held": [list(x) for x in self._held],
            "side": self._side,
            "t": self._t,
            "last": _verdict_state(self._last),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        self._load(unpack(state["window"]))
        self._held = [list(x) for x in state["held"]] or ()
        self._side = int(state["side"])
        self._t = state["t"]
        self._last = _verdict_from(state["last"])


# --------------------------------------------------------------------------------------------
# Step back: a cumulative displacement jumping back to where it has already been
# --------------------------------------------------------------------------------------------


class StepBackGuard(_Windowed):
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

    __slots__ = ("_hi", "_lo", "_origin", "_v")

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
        super().__init__(window, k, min_mad, min_points=min_points, accept_after=accept_after, max_gap_s=max_gap_s)

    def _reset(self) -> None:
        super()._reset()  # the window of recent steps, the held run, t, the last verdict
        self._v: float | None = None  # last accepted value
        self._origin = self._lo = self._hi = 0.0

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
        last_v = self._v
        if last_v is None:
            self._origin = self._lo = self._hi = self._v = value
            self._last = _WARMING
            return _WARMING
        size, k, min_mad, min_points, accept_after, max_gap_s, thr = self._sp
        if max_gap_s is not None and last_t is not None and t - last_t > max_gap_s:
            # The step across an outage holds the movement of the whole outage: not a sample
            # of the step spread. Start the steps over from this reading.
            self._clear()
            self._held = ()
            self._accept(value)
            self._last = _WARMING
            return _WARMING
        step = value - last_v
        n = self._n
        if n < min_points:
            self._push(step)
            self._held = ()
            self._accept(value)
            self._last = _WARMING
            return _WARMING
        w = self._w
        i = size + (n >> 1)
        med = w[i] if n & 1 else (w[i - 1] + w[i]) / 2.0
        dev = step - med
        if not -thr <= dev <= thr:  # thr: the spec's sure distance, else the cut from the MAD
            thr = k * MAD_SCALE * max(self._mad(med), min_mad)
        if -thr <= dev <= thr:
            if n == size:  # _push, inline (the usual reading)
                h = self._h
                old = w[h]
                w[h] = step
                self._h = h + 1 if h + 1 < size else 0
                del w[bisect_left(w, old, size)]
            else:
                w[n] = step
                self._n = n + 1
            insort(w, step, size)
            if self._held:
                self._held = ()
            self._v = value
            if value < self._lo:
                self._lo = value
            elif value > self._hi:
                self._hi = value
            self._last = _OK
            return _OK
        # An abnormal step in either direction stays out of the reference: a forward spike
        # accepted as the new last value would make the return to normal look like a step back.
        travel = last_v - self._origin
        side = 1 if dev > 0 else -1
        flagged = abs(travel) > thr and side != (1 if travel > 0 else -1) and self._lo <= value <= self._hi
        held = self._held
        if held and self._side == side:
            held = [*held, [t, value, flagged]]
        else:
            held = [[t, value, flagged]]
            self._side = side
        if len(held) >= accept_after:
            # Accepted as real movement: the held steps are samples of it and join the spread.
            prev = last_v
            for _, x, _ in held:
                self._push(x - prev)
                self._accept(x)
                prev = x
            release = [[tt, x] for tt, x, f in held[:-1] if f]
            self._held = ()
            if not release and not flagged:
                self._last = _OK
                return _OK
            self._last = Verdict(
                0,
                f"{accept_after} consecutive abnormal steps the same way: accepted as real movement",
                {"suspect": False, "accepted_shift": "step_back", "release": release},
            )
            return self._last
        self._held = held
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
            last_value=last_v,
            origin=self._origin,
            travelled=[self._lo, self._hi],
            held=len(held),
        )
        return self._last


    def snapshot(self) -> dict[str, Any]:
        return {
            "steps": pack(self._order()),
            "held": [list(x) for x in self._held],
            "side": self._side,
            "t": self._t,
            "v": self._v,
            "origin": self._origin,
            "lo": self._lo,
            "hi": self._hi,
            "last": _verdict_state(self._last),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        self._load(unpack(state["steps"]))
        self._held = [list(x) for x in state["held"]] or ()
        # The side of the held steps (absent in snapshots of before: the held list's own, or none).
        self._side = int(state.get("side", 0))
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

    Memory (issue 17): the guard and its sub-guards have ``__slots__``, the windows are unboxed
    (``_Windowed``), and what every channel of a kind and interval has alike (the defaults
    ``for_kind`` derives, the checked parameters) is worked out once and shared.

    >>> g = QualityGuard.for_kind("rain", interval_s=600, low=0.0, high=500.0)
    >>> g.stuck is None, g.spike is None, g.step_back is None
    (True, True, True)
    >>> [g.update(t, x).evidence.get("flag") for t, x in [(0, 0.0), (600, 0.0), (300, 0.0), (1200, 900.0), (4800, 2.5)]]
    [None, None, 'out_of_order', 'range', 'gap']
    """

    __slots__ = ("_judges", "_pending", "_sp", "clock", "high", "low")

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
        # Validated in the order of the sub-guards (clock, range, stuck, step back, spike), each
        # a ValueError naming the valid values; all but the range once per parameter set.
        _check_positive_or_none("max_gap_s", max_gap_s)
        _check_range(low, high)
        sp = _quality_spec(
            max_gap_s, stuck_n, stuck_tolerance, spike_window, spike_k, min_mad, spike_min_points,
            step_back_window, step_back_k, step_back_min_points, accept_after,
        )  # fmt: skip
        self._build(low, high, sp)

    def _build(self, low: float, high: float, sp: _QualitySpec) -> None:
        self.low = low
        self.high = high
        self._sp = sp
        self.clock = ClockGuard(sp[0])
        stuck = None if sp[1] is None else StuckGuard(sp[1], sp[2])
        step_back = None if sp[12] is None else StepBackGuard._of(sp[12])
        spike = None if sp[13] is None else SpikeGuard._of(sp[13])
        # The judges in their order; ``stuck``, ``step_back`` and ``spike`` are looked up here.
        self._judges: tuple[StuckGuard | StepBackGuard | SpikeGuard, ...] = tuple(g for g in (stuck, step_back, spike) if g is not None)
        # Held readings a sub-guard has accepted as real; None (no dict kept) while there are none.
        self._pending: dict[float, float] | None = None

    @classmethod
    def for_kind(cls, kind: str, interval_s: float, low: float, high: float) -> QualityGuard:
        """The guard of a channel of ``kind`` reporting every ``interval_s`` seconds.

        Stuck after ``stuck_s`` of the kind (at least ``STUCK_MIN_READINGS`` readings); a gap
        after more than 3 intervals (the no-data monitor's default factor, so a no-data episode
        ends in a gap flag); windows of 15 readings for spikes (off when ``interval_s`` exceeds
        ``SPIKE_MAX_INTERVAL_S``) and 12 steps for step-backs; a new level accepted after 3
        agreeing readings. Values are in the kind's default unit (tilt: degrees).
        """
        sp = _kind_spec(str(getattr(kind, "value", kind)), interval_s)
        if cls is not QualityGuard:  # a subclass may have an __init__ of its own
            kw: dict[str, Any] = dict(zip(_PARAMS, sp))
            return cls(low, high, **kw)
        _check_range(low, high)
        g = object.__new__(cls)
        g._build(low, high, sp)
        return g

    # The parameters, shared by every guard built with the same ones (``_QualitySpec``).

    @property
    def max_gap_s(self) -> float | None:
        return self._sp[0]

    @property
    def stuck_n(self) -> int | None:
        return self._sp[1]

    @property
    def stuck_tolerance(self) -> float:
        return self._sp[2]

    @property
    def spike_window(self) -> int | None:
        return self._sp[3]

    @property
    def spike_k(self) -> float:
        return self._sp[4]

    @property
    def min_mad(self) -> float:
        return self._sp[5]

    @property
    def spike_min_points(self) -> int:
        return self._sp[6]

    @property
    def step_back_window(self) -> int | None:
        return self._sp[7]

    @property
    def step_back_k(self) -> float:
        return self._sp[8]

    @property
    def step_back_min_points(self) -> int:
        return self._sp[9]

    @property
    def accept_after(self) -> int:
        return self._sp[10]

    # The sub-guards: None when switched off.

    @property
    def stuck(self) -> StuckGuard | None:
        return None if self._sp[1] is None else cast(StuckGuard, self._judges[0])

    @property
    def step_back(self) -> StepBackGuard | None:
        return None if self._sp[12] is None else cast(StepBackGuard, self._judges[self._sp[14]])

    @property
    def spike(self) -> SpikeGuard | None:
        return None if self._sp[13] is None else cast(SpikeGuard, self._judges[-1])

    @property
    def range(self) -> RangeGuard:
        """The range check (stateless, so made on demand rather than kept per channel)."""
        return RangeGuard(self.low, self.high)

    def _reset(self) -> None:
        self.clock._reset()
        for g in self._judges:
            g._reset()
        self._pending = None

    def update(self, t: float, value: float) -> Verdict:
        t = float(t)
        value = float(value)
        clock = self.clock
        last = clock._t
        if last is not None and t > last and t - last <= self._sp[11]:
            clock._t, clock._v = t, value  # the usual reading, in order and without a gap: ClockGuard's _OK
            c = _OK
        else:
            c = clock.update(t, value)
            if c.evidence["suspect"]:
                return c
        ce = c.evidence
        if not self.low <= value <= self.high:
            r = _out_of_range(value, self.low, self.high)
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
                pending = self._pending
                if pending is None:
                    pending = self._pending = {}
                for tt, vv in e["release"]:
                    pending[tt] = vv
                pending[t] = value  # in case another guard still holds this reading
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
            self._pending = None
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
            "pending": sorted([t, v] for t, v in self._pending.items()) if self._pending else [],
        }

    def restore(self, state: dict[str, Any]) -> None:
        # Each sub-guard's restore starts from its own reset: no reset of the whole first.
        self.clock.restore(state["clock"])
        for name in ("stuck", "step_back", "spike"):
            g = getattr(self, name)
            if g is not None:
                g.restore(state[name])
        self._pending = {t: v for t, v in state["pending"]} or None


#: ``QualityGuard``'s keyword parameters, in the order its spec starts with them.
_PARAMS = (
    "max_gap_s", "stuck_n", "stuck_tolerance", "spike_window", "spike_k", "min_mad", "spike_min_points",
    "step_back_window", "step_back_k", "step_back_min_points", "accept_after",
)  # fmt: skip

#: A ``QualityGuard``'s parameters and what they imply, shared by every guard built with the
#: same ones: the 11 keyword parameters in the constructor's order, then the longest step in t
#: that is not a gap, the step-back and spike guards' specs (None: off) and the step-back
#: guard's place among the judges.
_QualitySpec = tuple[
    "float | None", "int | None", float, "int | None", float, float, int, "int | None", float, int, int,
    float, "_WindowedSpec | None", "_WindowedSpec | None", int,
]  # fmt: skip


def _quality_spec(
    max_gap_s: float | None, stuck_n: int | None, stuck_tolerance: float, spike_window: int | None, spike_k: float, min_mad: float,
    spike_min_points: int, step_back_window: int | None, step_back_k: float, step_back_min_points: int, accept_after: int,
) -> _QualitySpec:  # fmt: skip
    args = (max_gap_s, stuck_n, stuck_tolerance, spike_window, spike_k, min_mad, spike_min_points, step_back_window, step_back_k, step_back_min_points, accept_after)
    if _negative_zero(stuck_tolerance) or _negative_zero(min_mad):
        return _make_quality_spec.__wrapped__(*args)
    return _make_quality_spec(*args)


@lru_cache(maxsize=256, typed=True)  # typed: 15.0 must not pass as an already-checked 15
def _make_quality_spec(
    max_gap_s: float | None, stuck_n: int | None, stuck_tolerance: float, spike_window: int | None, spike_k: float, min_mad: float,
    spike_min_points: int, step_back_window: int | None, step_back_k: float, step_back_min_points: int, accept_after: int,
) -> _QualitySpec:  # fmt: skip
    _check_positive_or_none("max_gap_s", max_gap_s)
    if stuck_n is not None:  # as StuckGuard checks them
        check_int("stuck_n", stuck_n, 2)
        _check_nonneg("tolerance", stuck_tolerance)
    step_back = (
        None
        if step_back_window is None
        else _windowed_spec(step_back_window, step_back_k, min_mad, step_back_min_points, accept_after, max_gap_s)
    )
    spike = None if spike_window is None else _windowed_spec(spike_window, spike_k, min_mad, spike_min_points, accept_after, max_gap_s)
    return (
        max_gap_s, stuck_n, stuck_tolerance, spike_window, spike_k, min_mad, spike_min_points,
        step_back_window, step_back_k, step_back_min_points, accept_after,
        math.inf if max_gap_s is None else max_gap_s, step_back, spike, 0 if stuck_n is None else 1,
    )  # fmt: skip


@lru_cache(maxsize=256, typed=True)
def _kind_spec(kind: str, interval_s: float) -> _QualitySpec:
    """``for_kind``'s parameters of a kind and interval, shared by every channel alike. A call
    that raises (an unknown kind, a bad interval) is never cached."""
    if kind not in _KIND_DEFAULTS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise ValueError(f"interval_s must be a finite number > 0, got {interval_s!r}")
    d = _KIND_DEFAULTS[kind]
    stuck_n = None if d["stuck_s"] is None else max(STUCK_MIN_READINGS, math.ceil(d["stuck_s"] / interval_s))
    return _quality_spec(
        GAP_FACTOR * interval_s, stuck_n, 0.0, 15 if d["spike"] and interval_s <= SPIKE_MAX_INTERVAL_S else None, 3.5,
        d["min_mad"], 5, 12 if d["step_back"] else None, 5.0, 4, 3,
    )  # fmt: skip
