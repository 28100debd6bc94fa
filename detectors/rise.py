"""Rate of rise of pore pressure or groundwater, and its level.

This module owns the rise-rate detector of piezometer and groundwater channels. The rate is
the least-squares slope of the readings over a sliding event-time window (as in
``detectors/velocity.py``): a difference of two readings 10 minutes apart turns 0.2 kPa of
sensor noise into ±40 kPa/day, while a 6-hour regression slope of 36 readings is steady to
about ±0.5 kPa/day. A slope is judged only when it is significant — larger than ``z``
standard errors of the regression slope — and a level needs ``persist`` consecutive judged
slopes, so noise alone never warns.

Only a rise warns. Rain-induced failure goes with rising pore pressure (falling effective
stress); falling water is recovery and judged here as no movement (rate 0), which may let a
level come down. Rapid drawdown of a reservoir or river, which destabilises bank slopes, is
a different hazard with its own thresholds and is not covered here. The value must grow as
the water rises: a level or a pressure head, not a depth below ground.

Default levels (per-site settings, ``RiseRateDetector.for_kind``):

- groundwater: yellow 0.5, orange 1, red 2 m/day. The water table rises by the net
  infiltration divided by the specific yield; with a specific yield of 0.1 (silty to sandy
  colluvium) a day of rainstorm rain (50 mm, the 暴雨 class of GB/T 28592-2012 and our 24 h
  yellow) raises it by 0.5 m, a heavy-rainstorm day (100 mm, our 24 h orange) by 1 m, and
  2 m/day is beyond what a day of rain feeds — water from upslope, a burst pipe or a blocked
  drain. So the ladder mirrors the rain ladder for a typical slope.
- pore pressure and seepage pressure (渗压, the convention's L3_SY): yellow 5, orange 10,
  red 20 kPa/day: the same heads (1 m of water is 9.81 kPa), so a piezometer and a
  water-level logger in the same borehole agree.
- mud level (泥位 of a debris-flow gully, L3_NW): yellow 0.5, orange 1, red 2 m/h (12, 24,
  48 m/day) over a 1 h window. A gully's flow rises within the hour of a storm and a debris
  flow's surge by metres in minutes, so a day-scale window would see it too late; half a
  metre an hour is a flood wave beyond what base flow does, 2 m/h a surge. These are
  starting values: the absolute mud level against the gully's own marks (``thresholds``)
  is the primary warning, and a gully with a survey sets its own rates.

A gap in the data longer than the window restarts the smoothing (warm-up again; the level
latch keeps its level so a gap never lowers a level by itself). While warming up the level
is 0. Running sums make each update O(1); they are re-anchored at the oldest point in the
window every few window-lengths of time (an O(window) recomputation, amortised O(1)) so
that the sums of t − t0 stay small and precise however long the detector runs.

>>> det = RiseRateDetector.for_kind("groundwater", interval_s=600.0)
>>> t0 = 1_700_000_000.0
>>> # a water table rising 1.2 m/day, read every 10 minutes for 12 hours
>>> levels = [det.update(t0 + 600.0 * i, 10.0 + 1.2 * i / 144).level for i in range(72)]
>>> levels[0], levels[-1]
(0, 3)
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

from geowarn.core.levels import LEVELS
from geowarn.detectors.base import (
    StreamingDetector,
    check_int,
    check_latch,
    check_slope,
    check_window,
)
from geowarn.detectors.latch import LevelLatch
from geowarn.detectors.slope import SlopeView, SlopeWindows
from geowarn.detectors.verdict import Verdict

DAY = 86400.0
HOUR = 3600.0

#: Default rise-rate levels (unit/day) and units per channel kind; see the module docstring.
DEFAULT_RISE_PER_DAY: dict[str, tuple[tuple[tuple[int, float], ...], str]] = {
    "groundwater": (((2, 0.5), (3, 1.0), (4, 2.0)), "m"),
    "pore_pressure": (((2, 5.0), (3, 10.0), (4, 20.0)), "kPa"),
    "seepage_pressure": (((2, 5.0), (3, 10.0), (4, 20.0)), "kPa"),
    "mud_level": (((2, 12.0), (3, 24.0), (4, 48.0)), "m"),
}
#: Windows per kind where the default 6 h is too slow (see the module docstring).
DEFAULT_WINDOW_S: dict[str, float] = {"mud_level": 3600.0}

_WARMING = "warming up: too few readings in the window to judge a slope"


class RiseRateDetector(StreamingDetector):
    """Level of the significant rate of rise (unit/day) over a sliding window.

    ``thresholds_per_day`` is [(level, rate)] ascending. ``min_points`` readings spanning at
    least ``min_span`` of the window are needed before the detector judges; until then it
    is warming up and says level 0. Late or repeated readings (t at or before the last one)
    and non-finite values are ignored: the previous verdict is returned and nothing changes.
    """

    __slots__ = (
        "_last",
        "_latch",
        "_recent",
        "_smooth",
        "_windows",
        "hold_s",
        "hysteresis",
        "min_points",
        "min_span",
        "persist",
        "thresholds_per_day",
        "unit",
        "window_s",
        "z",
    )

    def __init__(
        self,
        thresholds_per_day: Sequence[tuple[int, float]],
        *,
        window_s: float = 6 * HOUR,
        hysteresis: float = 0.1,
        hold_s: float = 0.0,
        min_points: int = 6,
        min_span: float = 0.5,
        z: float = 5.0,
        persist: int = 3,
        unit: str = "",
    ) -> None:
        thresholds = [(int(lvl), float(x)) for lvl, x in thresholds_per_day]
        if not thresholds or any(not x > 0 for _, x in thresholds):
            raise ValueError(f"thresholds_per_day must be [(level, rate > 0)], got {thresholds}")
        # The latch validates levels 1-4, ascending; its threshold pairs are shared by every
        # detector with the same levels (the same values, types and order as ``thresholds``).
        shared = LevelLatch(thresholds).thresholds
        check_window("window_s", window_s)
        check_latch(hysteresis, hold_s)
        check_int("min_points", min_points, 3)
        check_slope(min_span, z)
        check_int("persist", persist, 1)
        self.thresholds_per_day = shared
        self.window_s = window_s
        self.hysteresis = hysteresis
        self.hold_s = hold_s
        self.min_points = min_points
        self.min_span = min_span
        self.z = z
        self.persist = persist
        self.unit = unit
        self._reset()

    @classmethod
    def for_kind(cls, kind: str, *, interval_s: float = 600.0, hold_s: float = 6 * HOUR, window_s: float | None = None) -> RiseRateDetector:
        """The default detector of a ``pore_pressure`` or ``seepage_pressure`` (kPa),
        ``groundwater`` or ``mud_level`` (m) channel.

        The window (6 h; 1 h for a mud level, unless ``window_s`` says otherwise) is never
        shorter than six reporting intervals, so an hourly logger still fits a slope to six
        readings.
        """
        if kind not in DEFAULT_RISE_PER_DAY:
            raise ValueError(f"kind must be one of {sorted(DEFAULT_RISE_PER_DAY)}, got {kind!r}")
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        levels, unit = DEFAULT_RISE_PER_DAY[kind]
        if window_s is None:
            window_s = DEFAULT_WINDOW_S.get(kind, 6 * HOUR)
        return cls(levels, window_s=max(window_s, 6 * interval_s), hold_s=hold_s, unit=unit)

    def _reset(self) -> None:
        self._latch = LevelLatch(self.thresholds_per_day, self.hysteresis, self.hold_s)
        self._last = Verdict(0, _WARMING, {}, True)
        self._restart()

    def _restart(self) -> None:
        """Forget the window (start or a gap); the latch keeps its level."""
        self._windows = SlopeWindows()
        self._smooth: SlopeView = self._windows.view(float(self.window_s))
        # The last judged slopes, at most ``persist`` (unboxed: a deque costs ~600 bytes).
        self._recent = array("d")

    def fit(self) -> tuple[float, float] | None:
        """(rate, its standard error), both per day; None until three points span time."""
        f = self._smooth.fit()
        return None if f is None else (f[0], f[1])

    def update(self, t: float, value: float) -> Verdict:
        windows = self._windows
        last_t = windows.last_t
        if last_t is not None and not t > last_t:
            return self._last  # late, repeated or NaN time: judged in arrival order, so ignored
        if not (abs(value) < float("inf") and abs(t) < float("inf")):
            return self._last  # NaN or infinite: not a reading
        windows._append(t, value, last_t)
        smooth = self._smooth
        if smooth.restarted:
            del self._recent[:]  # a slope across a gap longer than the window says nothing now
        n = smooth.n
        if n < self.min_points or t - smooth.first < self.min_span * self.window_s:  # the span: t is the newest
            self._last = Verdict(0, _WARMING, {"points": n}, True)
            return self._last
        f = smooth.fit()
        if f is None:
            return self._last
        rate, se, _ = f
        # Only a significant rise counts; a fall or an insignificant slope counts as 0.
        recent = self._recent
        recent.append(rate if rate > self.z * se else 0.0)
        persist = self.persist
        if len(recent) > persist:
            del recent[0]
        # A level needs `persist` judged slopes in a row: until then the rise counts as 0.
        level = self._latch.update(t, min(recent) if len(recent) == persist else 0.0)
        evidence: dict[str, Any] = {"rate_per_day": rate, "stderr_per_day": se, "points": smooth.n, "window_s": self.window_s}
        if level == 0:
            self._last = Verdict(0, "", evidence)
        else:
            thr = dict(self.thresholds_per_day)[level]
            evidence["threshold_per_day"] = thr
            u = f"{self.unit}/day" if self.unit else "/day"
            self._last = Verdict(
                level,
                f"rising {rate:.2f} {u} (≥ {LEVELS[level].colour} {thr:g} {u} over {self.window_s / 3600:g} h, or held)",
                evidence,
            )
        return self._last

    def snapshot(self) -> dict[str, Any]:
        return {
            "smooth": self._windows.snapshot(),
            "recent": self._recent.tolist(),
            "latch": self._latch.snapshot(),
            "last": self._last.to_dict(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        self._windows.restore(state["smooth"])
        recent = self._recent
        recent.extend(float(r) for r in state["recent"])
        if len(recent) > self.persist:  # as a deque(maxlen=persist) took them
            del recent[: len(recent) - self.persist]
        self._latch.restore(state["latch"])
        self._last = Verdict.from_dict(state["last"])
