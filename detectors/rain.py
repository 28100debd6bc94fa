"""Rainfall detectors of a rain-gauge channel: rolling sums, intensity–duration, effective rain.

This module owns how GeoWarn turns rain-gauge readings into warning levels, by three
methods and one detector that combines them:

- ``RainSums``: rolling rain totals over event-time windows (default 1 h, 24 h, 72 h), each
  with its own thresholds;
- ``IntensityDuration``: the mean intensity I and duration D of the current rain event
  against the curve I = a·D^(−b) (Caine 1980) and multiples of it;
- ``AntecedentRain``: the effective rainfall R = Σ Kⁱ·Rᵢ over the daily totals of the last
  days (the antecedent daily rainfall model of Crozier & Eyles 1980; Glade et al. 2000);
- ``RainDetector``: all three on one channel; its level is the highest of the three and its
  evidence carries all three. ``RainDetector.for_channel`` is what site fusion builds.

The reading model
-----------------
A reading (t, x) of a tipping-bucket gauge says that x mm fell in the interval ending at t,
which began at the gauge's previous reading; the interval is capped at ``max_interval_s``
(default one day: a daily total is the coarsest reading understood). The rain of a reading
is spread uniformly over its interval. So a daily total of 120 mm adds 120 mm to the 24 h and
72 h sums, but only 5 mm (its mean hourly rate) to the 1 h sum: a daily total says nothing
about the wettest hour, and attributing the whole day to one instant would make the 1 h sum
fire on a fabricated intensity. Windows shorter than the reading interval therefore give the
mean rate and never the peak; ``RainDetector.for_channel`` does not judge them at all. The
amount of a reading is never lost, only placed in time. With readings every 10 minutes and
hourly windows the spreading changes nothing except at jittered timestamps.

The first reading only opens the record: its interval is unknown, so its rain is not
counted and the verdict is warming up. No further warm-up is needed: every quantity here
is a sum of rain, so one computed on a record shorter than its window is a lower bound, and a
level it reaches is earned. Missing data counts as no rain, for the same reason.

Rain is counted in integers of 0.01 mm, so running sums are exact (no float drift however
long the detector runs) and a batch cumulative sum gives bit-identical values. Negative
readings count as 0; non-finite readings, and readings at or before the last accepted time
(late or repeated), are ignored: the previous verdict is returned and nothing changes.

Default thresholds (per-site settings; calibrate them on the site's own rain and landslide
record — see Guzzetti et al. 2008 on why thresholds are local):

- 1 h: yellow 30, orange 50, red 70 mm — the Hong Kong Observatory's amber, red and black
  rainstorm signals (hourly rain exceeding 30, 50, 70 mm); 70 mm/h is also where Brand et al.
  (1984) saw Hong Kong landslides become numerous.
- 24 h: yellow 50, orange 100, red 150 mm — 50 and 100 mm are the lower bounds of the 暴雨
  (rainstorm) and 大暴雨 (heavy rainstorm) day totals of GB/T 28592-2012 (Grade of
  precipitation); 150 mm is our choice, half-way into the heavy-rainstorm class and about
  1.5× Caine's curve at 24 h (103 mm).
- 72 h: yellow 100, orange 200, red 300 mm — twice the 24 h ladder: rain depth grows roughly
  as duration^0.5–0.7 on depth–duration–frequency curves, and 3^0.63 ≈ 2.
- Intensity–duration: Caine (1980) I = 14.82·D^(−0.39) (I mm/h, D h, fitted for
  10 min < D < 500 h) is the lower envelope of worldwide rain that triggered shallow
  landslides and debris flows. Above 1× → yellow, 2× → orange, 4× → red (equal steps of 0.3
  decade in the log–log plane where such curves are drawn). At D = 1 h these are 14.8, 29.6
  and 59 mm/h: close to the 16 mm/h hourly 暴雨 class of GB/T 28592, the HKO amber signal
  (30 mm/h), and between the red and black signals (50, 70 mm/h).
- Effective rain: K = 0.84 over 15 days (0.84^15 ≈ 0.07: older rain barely counts).
  K = 0.84 is the decay constant of Crozier & Eyles' (1980) antecedent daily rainfall model
  and a usual choice in Chinese effective-rainfall (有效降雨量) studies; Glade et al. (2000)
  derive K per region from storm-hydrograph recession. Levels: yellow 100, orange 150,
  red 200 mm — a rainstorm day on a wet week is yellow; a heavy-rainstorm day on top of a wet
  fortnight is red.

Per-site thresholds: ``RainThresholds`` (the registry's ``[sites.policy.rain]``) replaces
any of these for one site — the 1 h / 24 h / 72 h ladders, the I–D curve's a and b and its
multiples, the effective-rain ladder, K and days; what it leaves out keeps the default.
``geowarn rain-calibrate`` proposes them from the site's own record
(``detectors/rain_calibration.py``). A method judged with the site's thresholds says so in
its reason, and the combined verdict's evidence ``thresholds`` names, per method, "defaults"
or where the site's came from (e.g. "calibrated from 2000-01-01…2007-12-31").

A rain event (intensity–duration) starts with rain after a dry spell of at least
``dry_gap_s`` (default 24 h) and ends when a dry spell reaches ``dry_gap_s``; its duration
runs from the start of the first wet interval to the end of the last. 24 h because a shorter
gap cannot be resolved from daily totals (one dry day is the shortest gap they show), while a
longer gap merges separate storms and dilutes the mean intensity; catalogues use 24–96 h
(e.g. Melillo et al. 2015 use 48 h in summer and 96 h in winter). The curve is judged only
from D = 10 min (Caine's range; a shorter event is not judged yet); beyond 500 h the curve is
not extrapolated: its value at 500 h is used.

References: Caine N. (1980) The rainfall intensity–duration control of shallow landslides and
debris flows, Geogr. Ann. 62A:23–27. Crozier M.J., Eyles R.J. (1980) Assessing the
probability of rapid mass movement, Proc. 3rd Australia–New Zealand Conf. Geomechanics.
Glade T., Crozier M., Smith P. (2000) Applying probability determination to refine
landslide-triggering rainfall thresholds using an empirical "Antecedent Daily Rainfall
Model", Pure Appl. Geophys. 157:1059–1079. Guzzetti F. et al. (2008) The rainfall
intensity–duration control of shallow landslides and debris flows: an update, Landslides
5:3–17. Brand E.W., Premchitt J., Phillipson H.B. (1984) Relationship between rainfall and
landslides in Hong Kong, Proc. 4th Int. Symp. Landslides. Melillo M. et al. (2015) An
algorithm for the objective reconstruction of rainfall events responsible for landslides,
Landslides 12:311–320. GB/T 28592-2012 降水量等级 (Grade of precipitation).

>>> det = RainDetector.for_channel(interval_s=3600.0)
>>> t0 = 1_700_000_000.0
>>> [det.update(t0 + 3600.0 * i, mm).level for i, mm in enumerate([0.0, 10.0, 45.0, 20.0])]
[0, 0, 3, 3]
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from geowarn.core.levels import LEVELS
from geowarn.detectors.base import StreamingDetector, check_latch
from geowarn.detectors.latch import LevelLatch
from geowarn.detectors.verdict import Verdict, new_verdict

HOUR = 3600.0
DAY = 86400.0

Ladder = tuple[tuple[int, float], ...]

#: (window_s, [(level, mm)]) — see the module docstring for the sources.
DEFAULT_WINDOWS: tuple[tuple[float, Ladder], ...] = (
    (HOUR, ((2, 30.0), (3, 50.0), (4, 70.0))),
    (DAY, ((2, 50.0), (3, 100.0), (4, 150.0))),
    (3 * DAY, ((2, 100.0), (3, 200.0), (4, 300.0))),
)
#: Caine (1980), I in mm/h and D in h.
CAINE_A = 14.82
CAINE_B = 0.39
#: Multiples of the I–D curve per level.
DEFAULT_ID_LEVELS: Ladder = ((2, 1.0), (3, 2.0), (4, 4.0))
#: Effective rain (mm) per level.
DEFAULT_EFFECTIVE_LEVELS: Ladder = ((2, 100.0), (3, 150.0), (4, 200.0))

_FIRST = "warming up: the first reading opens the record (its interval is unknown)"
#: The threshold source of a method judged with GeoWarn's defaults.
DEFAULTS = "defaults"


def _own(source: str) -> str:
    """What a method's reason adds when it judges with the site's own thresholds."""
    return "" if source == DEFAULTS else f"; the site's thresholds ({source})"


@dataclass(frozen=True, slots=True)
class RainThresholds:
    """One site's own rain thresholds; a field left None (or a window not listed) keeps the
    default. ``windows`` overrides the ladders of default windows by length (3600, 86400 or
    259200 s); ``id_a``/``id_b`` the I–D curve I = a·D^(−b) and ``id_levels`` its multiples;
    ``effective_levels``, ``k`` and ``days`` the effective rain. ``source`` says where they
    came from, for the reasons and evidence ("set in the registry", "calibrated from …").
    The detectors' constructors validate the values."""

    windows: tuple[tuple[float, Ladder], ...] = ()
    id_a: float | None = None
    id_b: float | None = None
    id_levels: Ladder | None = None
    effective_levels: Ladder | None = None
    k: float | None = None
    days: int | None = None
    source: str = "set in the registry"

    def __post_init__(self) -> None:
        known = {w for w, _ in DEFAULT_WINDOWS}
        odd = [w for w, _ in self.windows if w not in known]
        if odd:
            raise ValueError(f"windows: only the default windows {sorted(known)} s can be overridden, got {odd}")
        if not self.source or self.source == DEFAULTS:
            raise ValueError(f"source must say where the site's thresholds came from, got {self.source!r}")


#: No override: every method at its default (what a site without ``[sites.policy.rain]`` gets).
RAIN_DEFAULTS = RainThresholds()


def intensity_threshold(duration_h: float, a: float = CAINE_A, b: float = CAINE_B) -> float:
    """The I–D curve I = a·D^(−b) in mm/h at a duration in hours (Caine 1980 by default).

    >>> round(intensity_threshold(10.0), 2), round(intensity_threshold(1.0), 2)
    (6.04, 14.82)
    """
    return a * duration_h ** (-b)


def _hundredths(value: float) -> int | None:
    """Rain in whole 0.01 mm (None if not a number): integer sums never drift."""
    if not math.isfinite(value):
        return None
    q = round(value * 100.0)
    return q if q > 0 else 0  # noqa: FURB136 (per reading: a conditional is cheaper than max())


def _label(window_s: float) -> str:
    h = window_s / HOUR
    return f"{h:g}h" if h == int(h) else f"{window_s:g}s"


_R = TypeVar("_R")


def _shared(cached: Callable[..., _R], build: Callable[..., _R], key: Any, *args: Any) -> _R:
    """``build(key, *args)``, from ``cached`` (an ``lru_cache`` of ``build``) when the key is
    hashable: what every channel with the same parameters derives alike (ladders, labels, keys,
    weights) is built once and shared. Only immutable values are built so (tuples, strings,
    floats); a key that cannot be hashed (a list given as a parameter) builds its own."""
    try:
        hash(key)
    except TypeError:
        return build(key, *args)
    return cached(key, *args)


def _ladder_key(levels: Any) -> Any:
    """The (hashable, when its parts are) key of a ladder given as any sequence of pairs."""
    try:
        return tuple(tuple(p) for p in levels)
    except TypeError:
        return levels  # not pairs: the build below says what is wrong


def _ladder(levels: Sequence[tuple[int, float]], what: str) -> Ladder:
    """The validated ladder ((level, threshold), ...), shared by the channels that give equal
    ones (equal pairs convert to the same ints and floats, so the cache cannot mix types)."""
    return _shared(_ladder_cached, _build_ladder, _ladder_key(levels), what)


def _build_ladder(levels: Sequence[tuple[int, float]], what: str) -> Ladder:
    out = tuple((int(lvl), float(x)) for lvl, x in levels)
    if not out:
        raise ValueError(f"{what}: at least one (level, threshold) pair is needed")
    if any(not x > 0 for _, x in out):
        raise ValueError(f"{what}: thresholds must be > 0, got {[x for _, x in out]}")
    LevelLatch(list(out))  # validates levels 1-4, ascending
    return out


_ladder_cached = lru_cache(maxsize=1024)(_build_ladder)


def _check_common(hysteresis: float, hold_s: float, max_interval_s: float) -> None:
    check_latch(hysteresis, hold_s)
    if not max_interval_s > 0:
        raise ValueError(f"max_interval_s must be > 0, got {max_interval_s}")


def _verdict_state(v: Verdict) -> dict[str, Any]:
    return {"level": v.level, "reason": v.reason, "evidence": v.evidence, "warming_up": v.warming_up}


class _RainMethod(StreamingDetector):
    """The reading model shared by the rain detectors: order, first reading, intervals, counts.

    Subclasses implement ``_reset_state``, ``_step(t, ts, q) -> level`` for a reading of q
    hundredths of a mm over (ts, t] (it sets ``_dirty`` when its evidence may have changed),
    ``_build_evidence()``, ``_reason()``, ``_state()`` and ``_set_state()``.

    Most readings of a rain gauge are dry and change nothing a verdict shows; such a reading
    returns the previous verdict (an equal, immutable value) instead of building a new one.
    """

    __slots__ = ("_dirty", "_ev", "_last", "_t_first", "_t_last", "max_interval_s")

    max_interval_s: float

    def _reset(self) -> None:
        self._t_last: float | None = None
        self._t_first: float | None = None
        # The verdict before any reading is made when first asked for: the methods inside a
        # RainDetector never are, and need not carry one each.
        self._last: Verdict | None = None
        self._dirty = True
        self._ev: dict[str, Any] | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        raise NotImplementedError

    def _step(self, t: float, ts: float, q: int) -> int:
        raise NotImplementedError

    def _build_evidence(self) -> dict[str, Any]:
        raise NotImplementedError

    def _reason(self) -> str:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _evidence(self) -> dict[str, Any]:
        """The method's evidence, rebuilt only after a step that may have changed it."""
        if self._dirty or self._ev is None:
            self._ev = self._build_evidence()
        return self._ev

    def _verdict_evidence(self) -> dict[str, Any]:
        """A new verdict's evidence: a copy of the cached one (callers may change theirs)."""
        return dict(self._evidence())

    def _opening(self) -> Verdict:
        """The current verdict; before any reading, the warming-up one."""
        last = self._last
        if last is None:
            self._last = last = Verdict(0, _FIRST, {}, True)
        return last

    @property
    def level(self) -> int:
        last = self._last
        return 0 if last is None else last.level

    def update(self, t: float, value: float) -> Verdict:
        t_last = self._t_last
        if t_last is None:
            if not math.isfinite(t) or _hundredths(value) is None:
                return self._opening()
            self._t_first = self._t_last = t
            self._last = first = Verdict(0, _FIRST, {}, True)
            return first
        last = self._last  # None only in a method inside a RainDetector, if fed directly
        if not t > t_last:
            # Late, repeated or NaN time: judged in arrival order, so ignored.
            return self._opening() if last is None else last
        q = _hundredths(value)
        if q is None:
            return self._opening() if last is None else last
        ts = t - self.max_interval_s
        if ts < t_last:  # noqa: PLR1730 (per reading: cheaper than max())
            ts = t_last
        self._t_last = t
        level = self._step(t, ts, q)  # (a step never changes _last)
        if not self._dirty and last is not None and level == last.level and not last.warming_up:
            return last
        self._last = last = new_verdict(level, self._reason() if level else "", self._verdict_evidence())
        return last

    def snapshot(self) -> dict[str, Any]:
        return {"t_last": self._t_last, "t_first": self._t_first, "last": _verdict_state(self._opening()), **self._state()}

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        self._t_last = state["t_last"]
        self._t_first = state["t_first"]
        self._last = Verdict(**state["last"])
        self._set_state(state)


class RainSums(_RainMethod):
    """Rolling rain totals over event-time windows (t − W, t], each with its own thresholds.

    ``windows`` is a sequence of (window_s, [(level, mm)]). A reading's rain is spread over
    its interval, so the reading straddling the window's start counts in proportion to its
    overlap. Each window has its own level latch (hysteresis, hold time); the level is the
    highest. O(1) amortised per reading: the wet readings still overlapping the longest window
    (dry readings are never stored) are kept once, unboxed (``_tb``: start and end of each
    interval, ``_qb``: its hundredths), each window reads them from its own head index, and
    keeps an integer running sum.
    """

    __slots__ = (
        "_idle",
        "_iwl",
        "_keys",
        "_labels",
        "_latches",
        "_levels",
        "_qb",
        "_src_keys",
        "_tb",
        "_w",
        "_win",
        "_x",
        "hold_s",
        "hysteresis",
        "sources",
        "windows",
    )

    def __init__(
        self,
        windows: Sequence[tuple[float, Sequence[tuple[int, float]]]] = DEFAULT_WINDOWS,
        *,
        hysteresis: float = 0.1,
        hold_s: float = 0.0,
        max_interval_s: float = DAY,
        sources: dict[float, str] | None = None,
    ) -> None:
        try:
            key: Any = tuple(tuple(p) for p in windows)
        except TypeError:
            key = windows  # not pairs: the build says what is wrong
        ws, self._w, self._keys, self._labels, self._iwl, self._src_keys = _shared(_sums_plan_cached, _sums_plan, key)
        _check_common(hysteresis, hold_s, max_interval_s)
        self.windows = ws
        #: Where each window's ladder came from (by window length; absent: the defaults).
        self.sources = {float(w): src for w, src in (sources or {}).items() if src != DEFAULTS}
        self.hysteresis = hysteresis
        self.hold_s = hold_s
        self.max_interval_s = max_interval_s
        self._reset()

    def _reset_state(self) -> None:
        latches = getattr(self, "_latches", None)
        if latches is None:
            self._latches = [LevelLatch(lv, self.hysteresis, self.hold_s) for _, lv in self.windows]
        else:
            for la in latches:  # a reset (the combined detector's, a restore): as new, not rebuilt
                la._reset()
        n = len(self.windows)
        self._x = [0.0] * n
        self._levels = [0] * n
        # Per window, at 3·i: its integer sum, its head (the first entry still overlapping
        # it) and the start of that entry (+inf: none). One list, not three.
        self._win: list[Any] = [0, 0, _INF] * n
        # Entries (ts, t, q) of the wet readings, oldest first: starts and ends interleaved in
        # _tb, hundredths in _qb. Plain lists instead when a value would not round-trip through
        # the arrays (a time that is not a float, hundredths beyond 64 bits), so snapshots and
        # sums stay exact whatever the caller passes.
        self._tb: array[float] | list[float] = array("d")
        self._qb: array[int] | list[int] = array("q")
        self._idle = True  # no rain in any window and every level 0: a dry reading changes nothing

    def _store(self, ts: float, t: float, q: int) -> None:
        """Append the entry (ts, t, q); the first entry of an empty window is its head."""
        tb, qb, win = self._tb, self._qb, self._win
        n = len(qb)
        if (type(ts) is not float or type(t) is not float) and type(tb) is array:
            self._tb = tb = tb.tolist()  # keep an int (or other) time as given, for the snapshot
        tb.append(ts)
        tb.append(t)
        try:
            qb.append(q)
        except OverflowError:
            self._qb = qb = list(qb)
            qb.append(q)
        for j in range(0, len(win), 3):
            win[j] += q
            if win[j + 1] == n:
                win[j + 2] = ts

    def _step(self, t: float, ts: float, q: int) -> int:
        if not q and self._idle:
            self._dirty = False
            return 0
        xs, levels, win = self._x, self._levels, self._win
        if q:
            self._store(ts, t, q)
        tb, qb = self._tb, self._qb
        n = len(qb)
        top = 0
        dirty = False
        latches = self._latches
        popped = False
        for i, j, w, low in self._iwl:
            latch = latches[i]
            h = t - w
            s = win[j]
            if h <= win[j + 2]:
                # The window starts at or before its oldest entry's start: none leaves it
                # and none straddles its start (an empty window's lo is +inf).
                x = s / 100
            else:
                k = win[j + 1]
                while k < n and tb[2 * k + 1] <= h:
                    s -= qb[k]
                    k += 1
                win[j] = s
                win[j + 1] = k
                popped = True
                if k < n:
                    a = win[j + 2] = tb[2 * k]
                    if a < h:
                        b = tb[2 * k + 1]
                        qf = qb[k]
                        x = ((s - qf) + qf * ((b - h) / (b - a))) / 100
                    else:
                        x = s / 100
                else:
                    win[j + 2] = _INF
                    x = s / 100
            if x != xs[i]:
                xs[i] = x
                dirty = True
            # Below the lowest threshold at level 0 the latch cannot move: skip the call.
            lvl = latch.update(t, x) if (latch.level or x >= low) else 0
            if lvl != levels[i]:
                levels[i] = lvl
                dirty = True
            if lvl > top:  # noqa: PLR1730 (per reading: cheaper than max())
                top = lvl
        # The longest window's head is the lowest: entries before it are in no window.
        k = win[-2]
        if popped and k and (k == n or (k > _SLACK and 2 * k > n)):
            del tb[: 2 * k]  # one memmove for many entries; all of them when the rain is gone
            del qb[:k]
            for j in range(1, len(win), 3):
                win[j] -= k
        self._idle = top == 0 and not qb
        self._dirty = dirty
        return top

    def _lead(self) -> int | None:
        top = max(self._levels)
        return None if top == 0 else self._levels.index(top)

    def _build_evidence(self) -> dict[str, Any]:
        ev: dict[str, Any] = dict(zip(self._keys, self._x))
        i = self._lead()
        ev["sum_window"] = None if i is None else self._labels[i]
        ev["sum_threshold_mm"] = None if i is None else dict(self.windows[i][1])[self._levels[i]]
        return ev

    def _reason(self) -> str:
        i = self._lead()
        if i is None:
            return ""
        lvl = self._levels[i]
        thr = dict(self.windows[i][1])[lvl]
        own = _own(self.sources.get(self._w[i], DEFAULTS))
        return f"{self._labels[i]} rain {self._x[i]:.1f} mm (≥ {LEVELS[lvl].colour} {thr:g} mm, or held{own})"

    def _state(self) -> dict[str, Any]:
        # The longest window's entries include every entry the shorter ones hold.
        tb, qb = self._tb, self._qb
        return {
            "entries": [[tb[2 * k], tb[2 * k + 1], qb[k]] for k in range(self._win[-2], len(qb))],
            "x": list(self._x),
            "latches": [la.snapshot() for la in self._latches],
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        entries = [(float(a), float(b), int(q)) for a, b, q in state["entries"]]
        t = self._t_last
        keep = entries if t is None else [e for e in entries if e[1] > t - self._w[-1]]
        n = len(keep)
        self._tb = array("d", [x for a, b, _ in keep for x in (a, b)])
        qs = [q for _, _, q in keep]
        try:
            self._qb = array("q", qs)
        except OverflowError:
            self._qb = qs
        ends = [b for _, b, _ in keep]
        for i, w in enumerate(self._w):
            k = 0
            if t is not None:
                # The window's entries (those ending after its start) follow those it dropped.
                h = t - w
                while k < n and ends[k] <= h:
                    k += 1
                if any(b <= h for b in ends[k:]):
                    raise ValueError("rain sums state: the entries are not in time order")
            self._win[3 * i : 3 * i + 3] = [sum(qs[k:]), k, keep[k][0] if k < n else _INF]
        self._x = [float(x) for x in state["x"]]
        for i, (la, s) in enumerate(zip(self._latches, state["latches"])):
            la.restore(s)
            self._levels[i] = la.level
        self._idle = max(self._levels) == 0 and not keep


_SLACK = 16  # entries dropped before the first cut, so short windows never shuffle
_INF = math.inf


def _sums_plan(
    windows: Sequence[tuple[float, Sequence[tuple[int, float]]]],
) -> tuple[tuple[tuple[float, Ladder], ...], tuple[float, ...], tuple[str, ...], tuple[str, ...], tuple[tuple[int, int, float, float], ...], tuple[str, ...]]:
    """What ``RainSums`` derives from its windows, alike for every channel given equal ones:
    (windows sorted, lengths, evidence keys, labels, (index, index in ``_win``, length, lowest
    threshold) per window, threshold-source keys)."""
    ws = sorted(((float(w), _ladder(lv, f"window {w:g} s")) for w, lv in windows), key=lambda p: p[0])
    if not ws:
        raise ValueError("windows: at least one (window_s, thresholds) is needed, e.g. ((3600, ((2, 30.0),)),)")
    if any(not w > 0 for w, _ in ws):
        raise ValueError(f"window lengths must be > 0 s, got {[w for w, _ in ws]}")
    labels = [_label(w) for w, _ in ws]
    if len(set(labels)) != len(labels):
        raise ValueError(f"window lengths must be distinct, got {labels}")
    return (
        tuple(ws),
        tuple(w for w, _ in ws),
        tuple(f"sum_{lab}_mm" for lab in labels),
        tuple(labels),
        tuple((i, 3 * i, w, lv[0][1]) for i, (w, lv) in enumerate(ws)),
        tuple(f"sum_{lab}" for lab in labels),
    )


_sums_plan_cached = lru_cache(maxsize=1024)(_sums_plan)


class IntensityDuration(_RainMethod):
    """The current rain event's mean intensity against I = a·D^(−b) and multiples of it.

    The level is the latched ratio I / (a·D^(−b)) against ``levels`` [(level, multiple)].
    While an event is open (less than ``dry_gap_s`` since its last rain) its point stays
    where it is; when the event ends the ratio is 0 and the level comes down by the latch.
    """

    __slots__ = (
        "_curve",
        "_d_h",
        "_end",
        "_i",
        "_latch",
        "_low",
        "_ratio",
        "_start",
        "_total",
        "a",
        "b",
        "d_max_h",
        "d_min_h",
        "dry_gap_s",
        "hold_s",
        "hysteresis",
        "levels",
        "source",
    )

    def __init__(
        self,
        *,
        a: float = CAINE_A,
        b: float = CAINE_B,
        levels: Sequence[tuple[int, float]] = DEFAULT_ID_LEVELS,
        dry_gap_s: float = DAY,
        d_min_h: float = 1.0 / 6.0,
        d_max_h: float = 500.0,
        hysteresis: float = 0.1,
        hold_s: float = 0.0,
        max_interval_s: float = DAY,
        source: str = DEFAULTS,
    ) -> None:
        if not (a > 0 and math.isfinite(a)):
            raise ValueError(f"a must be > 0 (mm/h at D = 1 h), got {a}")
        if not (b >= 0 and math.isfinite(b)):
            raise ValueError(f"b must be >= 0 (I = a·D^-b falls with duration), got {b}")
        if not dry_gap_s > 0:
            raise ValueError(f"dry_gap_s must be > 0, got {dry_gap_s}")
        if not 0 < d_min_h < d_max_h:
            raise ValueError(f"need 0 < d_min_h < d_max_h, got {d_min_h}, {d_max_h}")
        _check_common(hysteresis, hold_s, max_interval_s)
        self.a = a
        self.b = b
        self.source = source
        self.levels = _ladder(levels, "levels")
        self.dry_gap_s = dry_gap_s
        self.d_min_h = d_min_h
        self.d_max_h = d_max_h
        self.hysteresis = hysteresis
        self.hold_s = hold_s
        self.max_interval_s = max_interval_s
        self._low = self.levels[0][1]
        self._reset()

    def _reset_state(self) -> None:
        latch = getattr(self, "_latch", None)
        if latch is None:
            self._latch = LevelLatch(self.levels, self.hysteresis, self.hold_s)
        else:
            latch._reset()  # a reset (the combined detector's, a restore): as new, not rebuilt
        self._start: float | None = None  # None: no open event
        self._end = 0.0  # end of the last wet interval
        self._total = 0  # hundredths of a mm
        self._d_h = 0.0
        self._i = 0.0
        self._curve = 0.0
        self._ratio = 0.0

    def _step(self, t: float, ts: float, q: int) -> int:
        latch = self._latch
        before = latch.level
        if not q and self._start is None and not before:
            self._dirty = False
            return 0
        dirty = bool(q)
        if q:
            if self._start is None or ts - self._end >= self.dry_gap_s:
                self._start = ts
                self._total = q
            else:
                self._total += q
            self._end = t
        elif self._start is not None and t - self._end >= self.dry_gap_s:
            self._start = None
            dirty = True
        ratio = 0.0
        if self._start is not None:
            d_h = (self._end - self._start) / 3600
            self._d_h = d_h
            if d_h >= self.d_min_h:
                self._i = self._total / 100 / d_h
                self._curve = self.a * min(d_h, self.d_max_h) ** (-self.b)
                ratio = self._i / self._curve
        self._ratio = ratio
        level = latch.update(t, ratio) if (before or ratio >= self._low) else 0
        self._dirty = dirty or level != before
        return level

    def _judged(self) -> bool:
        return self._start is not None and self._d_h >= self.d_min_h

    def _build_evidence(self) -> dict[str, Any]:
        ev: dict[str, Any] = {}
        self._add_evidence(ev)
        return ev

    def _add_evidence(self, ev: dict[str, Any]) -> None:
        """Put the method's evidence into ``ev`` (the combined detector's, or its own)."""
        if self._start is None:
            ev.update(_NO_EVENT)
            return
        judged = self._d_h >= self.d_min_h
        ev["event_start"] = self._start
        ev["event_duration_h"] = self._d_h
        ev["event_total_mm"] = self._total / 100
        ev["event_intensity_mm_h"] = self._i if judged else None
        ev["id_threshold_mm_h"] = self._curve if judged else None
        ev["id_ratio"] = self._ratio

    def _reason(self) -> str:
        lvl = self._latch.level
        mult = dict(self.levels)[lvl]
        if not self._judged():
            return f"I–D level {LEVELS[lvl].colour} held: a recent rain event was above {mult:g}× the I–D threshold{_own(self.source)}"
        return (
            f"rain event {self._d_h:.1f} h at {self._i:.1f} mm/h = {self._ratio:.2f}× the I–D threshold "
            f"{self._curve:.1f} mm/h (≥ {LEVELS[lvl].colour} {mult:g}×, or held{_own(self.source)})"
        )

    def _state(self) -> dict[str, Any]:
        return {
            "event": [self._start, self._end, self._total, self._d_h, self._i, self._curve, self._ratio],
            "latch": self._latch.snapshot(),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        start, end, total, d_h, i, curve, ratio = state["event"]
        self._start = start
        self._end = float(end)
        self._total = int(total)
        self._d_h, self._i, self._curve, self._ratio = float(d_h), float(i), float(curve), float(ratio)
        self._latch.restore(state["latch"])


#: The I–D evidence with no open event (copied into each evidence, never handed out).
_NO_EVENT: dict[str, Any] = {
    "event_start": None,
    "event_duration_h": None,
    "event_total_mm": None,
    "event_intensity_mm_h": None,
    "id_threshold_mm_h": None,
    "id_ratio": 0.0,
}


class AntecedentRain(_RainMethod):
    """Effective rain R = R₀ + Σ_{i=1..days} Kⁱ·Rᵢ over daily totals, with level thresholds.

    R₀ is today's rain so far and Rᵢ the total of the i-th day before; a day with no
    reading counts as dry. Days run from ``day_offset_s`` after midnight UTC (e.g. −8 h for
    Beijing midnight, 12 h for the 20:00 Beijing climatological day); a reading's rain is
    spread over the days its interval overlaps, in proportion to the overlap (a reading at
    exactly the boundary closes the day before), so a multi-day total counts on its days and
    not all on the last. The antecedent part is recomputed only when a day ends, from integer
    daily totals, so each reading costs O(1) (O(days) when one spans days) and nothing drifts.
    """

    __slots__ = (
        "_day",
        "_hist",
        "_latch",
        "_low",
        "_past",
        "_today",
        "_w",
        "_x",
        "day_offset_s",
        "days",
        "hold_s",
        "hysteresis",
        "k",
        "source",
        "thresholds",
    )

    def __init__(
        self,
        thresholds: Sequence[tuple[int, float]] = DEFAULT_EFFECTIVE_LEVELS,
        *,
        k: float = 0.84,
        days: int = 15,
        day_offset_s: float = 0.0,
        hysteresis: float = 0.1,
        hold_s: float = 0.0,
        max_interval_s: float = DAY,
        source: str = DEFAULTS,
    ) -> None:
        if not 0 < k < 1:
            raise ValueError(f"k must be in (0, 1), got {k}")
        if not (isinstance(days, int) and 1 <= days <= 366):
            raise ValueError(f"days must be an integer in 1-366, got {days!r}")
        if not math.isfinite(day_offset_s):
            raise ValueError(f"day_offset_s must be finite, got {day_offset_s}")
        _check_common(hysteresis, hold_s, max_interval_s)
        self.thresholds = _ladder(thresholds, "thresholds")
        self.k = k
        self.days = days
        self.source = source
        self.day_offset_s = day_offset_s
        self.hysteresis = hysteresis
        self.hold_s = hold_s
        self.max_interval_s = max_interval_s
        self._w = _shared(_weights_cached, _weights, k, days)
        self._low = self.thresholds[0][1]
        self._reset()

    def _reset_state(self) -> None:
        latch = getattr(self, "_latch", None)
        if latch is None:
            self._latch = LevelLatch(self.thresholds, self.hysteresis, self.hold_s)
        else:
            latch._reset()  # a reset (the combined detector's, a restore): as new, not rebuilt
        self._day: int | None = None
        self._today = 0  # hundredths of a mm
        # Daily totals, [0] is yesterday, at most ``days`` of them; a list instead of the
        # array if a total ever exceeds 64 bits (ints stay exact either way).
        self._hist: array[int] | list[int] = array("q")
        self._past = 0.0  # Σ Kⁱ·Rᵢ in hundredths of a mm
        self._x = 0.0

    def _roll(self, day: int, between: dict[int, int] | None = None) -> None:
        """Close today and open ``day``; ``between`` holds the rain of the days in between
        (by day number; absent days were dry)."""
        if self._day is not None:
            gap = day - self._day
            self._push(self._today)
            # Only the last days + 1 of a long gap can still be in the window.
            for d in range(max(self._day + 1, day - self.days - 1), day):
                self._push(between.get(d, 0) if between else 0)
            assert gap >= 1
            hist = self._hist
            past = 0.0
            w = self._w
            for i, r in enumerate(hist, 1):
                past += w[i] * r
            self._past = past
        self._day = day
        self._today = 0

    def _push(self, r: int) -> None:
        """Yesterday's total in front; the oldest beyond ``days`` drops out."""
        hist = self._hist
        try:
            hist.insert(0, r)
        except OverflowError:
            self._hist = hist = list(hist)
            hist.insert(0, r)
        if len(hist) > self.days:
            hist.pop()

    def _spread(self, ts: float, t: float, q: int, first: int, last: int) -> dict[int, int]:
        """The hundredths of a reading over (ts, t] per day ``first``..``last``, in proportion
        to the time each day overlaps it; the rounding remainder goes to the last day, so the
        parts add up to ``q`` exactly."""
        off, span = self.day_offset_s, t - ts
        parts: dict[int, int] = {}
        given = 0
        for d in range(first, last):
            lo = max(ts, off + d * DAY)
            hi = min(t, off + (d + 1) * DAY)
            if hi > lo:
                share = int(q * (hi - lo) / span)
                if share:
                    parts[d] = share
                    given += share
        parts[last] = q - given
        return parts

    def _step(self, t: float, ts: float, q: int) -> int:
        day = math.ceil((t - self.day_offset_s) / DAY) - 1
        dirty = False
        if day != self._day:
            if q and t > ts:
                # A reading whose interval spans days (a daily or an 11-day total) is booked
                # over its days, as the sums spread it over their windows: an 11-day total is
                # not one day's rain.
                start = math.floor((ts - self.day_offset_s) / DAY)
                if self._day is None:
                    self._day = min(start, day)  # the record opens with this reading's interval
                if self._day < day:
                    parts = self._spread(ts, t, q, max(self._day, start), day)
                    self._today += parts.pop(self._day, 0)
                    q = parts.pop(day)
                    self._roll(day, parts)
            else:
                self._roll(day)
            dirty = True
        if q:
            self._today += q
            dirty = True
        if dirty:
            self._x = (self._today + self._past) / 100
        x = self._x
        latch = self._latch
        before = latch.level
        level = latch.update(t, x) if (before or x >= self._low) else 0
        self._dirty = dirty or level != before
        return level

    def _build_evidence(self) -> dict[str, Any]:
        ev: dict[str, Any] = {}
        self._add_evidence(ev)
        return ev

    def _add_evidence(self, ev: dict[str, Any]) -> None:
        """Put the method's evidence into ``ev`` (the combined detector's, or its own)."""
        lvl = self._latch.level
        ev["effective_rain_mm"] = self._x
        ev["today_mm"] = self._today / 100
        ev["effective_threshold_mm"] = dict(self.thresholds)[lvl] if lvl else None

    def _reason(self) -> str:
        lvl = self._latch.level
        thr = dict(self.thresholds)[lvl]
        return f"effective rain {self._x:.1f} mm (Σ {self.k:g}^i·R_i over {self.days} days; ≥ {LEVELS[lvl].colour} {thr:g} mm, or held{_own(self.source)})"

    def _state(self) -> dict[str, Any]:
        return {"day": self._day, "today": self._today, "hist": list(self._hist), "past": self._past, "x": self._x, "latch": self._latch.snapshot()}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._day = state["day"]
        self._today = int(state["today"])
        hist = [int(r) for r in state["hist"]][-self.days :]  # the newest days, as the old bounded deque kept them
        try:
            self._hist = array("q", hist)
        except OverflowError:
            self._hist = hist
        self._past = float(state["past"])
        self._x = float(state["x"])
        self._latch.restore(state["latch"])


def _weights(k: float, days: int) -> tuple[float, ...]:
    """Kⁱ for i = 0..days."""
    return tuple(k**i for i in range(days + 1))


# Typed: a k of another type equal to a float (a Fraction) gets its own powers.
_weights_cached = lru_cache(maxsize=256, typed=True)(_weights)


class RainDetector(_RainMethod):
    """Rolling sums, intensity–duration and effective rain on one rain channel.

    The level is the highest of the three methods; the evidence carries all three (their keys
    are distinct) plus ``levels`` by method, ``record_start_t`` (the first reading: sums
    over a record shorter than their window are lower bounds) and ``thresholds``: per sum
    window and method, "defaults" or where the site's own came from. The combined detector owns
    the reading model (order, first reading, ``max_interval_s``); the methods given must use
    the same ``max_interval_s``.
    """

    __slots__ = ("_levels", "_sources", "antecedent", "intensity", "sums")

    def __init__(
        self,
        sums: RainSums | None = None,
        intensity: IntensityDuration | None = None,
        antecedent: AntecedentRain | None = None,
        *,
        max_interval_s: float = DAY,
    ) -> None:
        _check_common(0.0, 0.0, max_interval_s)
        self.max_interval_s = max_interval_s
        self.sums = RainSums(max_interval_s=max_interval_s) if sums is None else sums
        self.intensity = IntensityDuration(max_interval_s=max_interval_s) if intensity is None else intensity
        self.antecedent = AntecedentRain(max_interval_s=max_interval_s) if antecedent is None else antecedent
        for name, m, cls in (("sums", self.sums, RainSums), ("intensity", self.intensity, IntensityDuration), ("antecedent", self.antecedent, AntecedentRain)):
            if not isinstance(m, cls):
                raise ValueError(f"{name} must be a {cls.__name__} or None, got {type(m).__name__}")  # noqa: TRY004 (a ValueError, as every bad parameter)
            if m.max_interval_s != max_interval_s:
                raise ValueError(f"{name}.max_interval_s is {m.max_interval_s}, the detector's is {max_interval_s}: they must agree")
        self._reset()

    @classmethod
    def for_channel(
        cls, interval_s: float, *, hold_s: float | None = None, hysteresis: float = 0.1, thresholds: RainThresholds | None = None
    ) -> RainDetector:
        """The detector for a gauge reporting every ``interval_s`` seconds, with the site's own
        ``thresholds`` where it has them and the defaults elsewhere.

        Windows shorter than the reporting interval are not judged (a daily total has no
        hourly peak; the longest window is always kept). Readings may cover up to
        max(1 day, interval). A level is held for ``hold_s`` (default one day) after its
        evidence is gone: slopes react to rain with a lag (landslide dates in rain catalogues
        often trail the peak by a day), so the warning should outlast the rain a little.
        """
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        hold = DAY if hold_s is None else hold_s
        mi = max(DAY, float(interval_s))
        own = RAIN_DEFAULTS if thresholds is None else thresholds
        src = DEFAULTS if thresholds is None else thresholds.source
        site_windows = dict(own.windows)
        windows = [w for w in DEFAULT_WINDOWS if w[0] >= interval_s] or [DEFAULT_WINDOWS[-1]]
        windows = [(w, site_windows.get(w, lv)) for w, lv in windows]
        id_src = src if (own.id_a, own.id_b, own.id_levels) != (None, None, None) else DEFAULTS
        eff_src = src if (own.effective_levels, own.k, own.days) != (None, None, None) else DEFAULTS
        return cls(
            RainSums(windows, hysteresis=hysteresis, hold_s=hold, max_interval_s=mi, sources={w: src for w in site_windows}),
            IntensityDuration(
                a=CAINE_A if own.id_a is None else own.id_a,
                b=CAINE_B if own.id_b is None else own.id_b,
                levels=DEFAULT_ID_LEVELS if own.id_levels is None else own.id_levels,
                hysteresis=hysteresis,
                hold_s=hold,
                max_interval_s=mi,
                source=id_src,
            ),
            AntecedentRain(
                DEFAULT_EFFECTIVE_LEVELS if own.effective_levels is None else own.effective_levels,
                k=0.84 if own.k is None else own.k,
                days=15 if own.days is None else own.days,
                hysteresis=hysteresis,
                hold_s=hold,
                max_interval_s=mi,
                source=eff_src,
            ),
            max_interval_s=mi,
        )

    def _reset_state(self) -> None:
        self.sums._reset()
        self.intensity._reset()
        self.antecedent._reset()
        self._levels = (0, 0, 0)
        # Where each method's thresholds came from (configuration, not state).
        sums = self.sums
        src = sums.sources
        sources = dict(zip(sums._src_keys, [src.get(w, DEFAULTS) for w in sums._w]))
        sources["intensity_duration"] = self.intensity.source
        sources["antecedent"] = self.antecedent.source
        self._sources = sources

    def _step(self, t: float, ts: float, q: int) -> int:
        s, i, a = self.sums, self.intensity, self.antecedent
        levels = (s._step(t, ts, q), i._step(t, ts, q), a._step(t, ts, q))
        self._dirty = s._dirty or i._dirty or a._dirty
        self._levels = levels
        return max(levels)

    def _build_evidence(self) -> dict[str, Any]:
        # Built whole each time a verdict changes, into one new dict: no per-method copies
        # are kept between readings (they were most of a quiet gauge's memory).
        ev = self.sums._build_evidence()
        self.intensity._add_evidence(ev)
        self.antecedent._add_evidence(ev)
        s, i, a = self._levels
        ev["levels"] = {"sums": s, "intensity_duration": i, "antecedent": a}
        ev["record_start_t"] = self._t_first
        ev["thresholds"] = self._sources
        return ev

    # Already a new dict: nothing cached to protect, no copy.
    _verdict_evidence = _build_evidence

    def _reason(self) -> str:
        methods = (self.sums, self.intensity, self.antecedent)
        # Highest level first; among equals, in method order.
        order = sorted((k for k, lvl in enumerate(self._levels) if lvl), key=lambda k: -self._levels[k])
        return "; ".join(methods[k]._reason() for k in order)

    def _state(self) -> dict[str, Any]:
        return {"sums": self.sums._state(), "intensity_duration": self.intensity._state(), "antecedent": self.antecedent._state()}

    def _set_state(self, state: dict[str, Any]) -> None:
        for name, m in (("sums", self.sums), ("intensity_duration", self.intensity), ("antecedent", self.antecedent)):
            m._t_last, m._t_first = self._t_last, self._t_first
            m._set_state(state[name])
        self._levels = (max(self.sums._levels), self.intensity._latch.level, self.antecedent._latch.level)
