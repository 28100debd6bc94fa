"""Smoothed velocity of a displacement-like channel, and its level.

The velocity is the least-squares slope of the readings over a sliding event-time window:
with GNSS noise of a few mm a difference of two readings 10 minutes apart swings by hundreds
of mm/day, while a 6-hour regression slope of 36 readings is steady to a few mm/day.
Running sums make each update O(1).

A slope is judged only when it is significant: |v| must exceed ``z`` standard errors of the
regression slope. This is the noise floor that keeps a stable GNSS point (3 mm noise: a
6-hour slope wobbles by ~7 mm/day) from ever reaching yellow on noise alone, while a real
120 mm/day movement is dozens of standard errors away from zero. A level must also be
supported by ``persist`` consecutive evaluations before it is reached: noise peaks are brief,
real movement persists.

With a noise figure (``noise``: ``detectors/noise.py``; site fusion always gives one) the
standard error is never below what that figure allows, σ/sqrt(Σ(t − t̄)²): the window's own
residuals are an estimate of the noise, and a smoothed or interpolated series (whose residuals
are nearly zero) would otherwise make every wobble significant. Evidence then says which
figure it was (``noise``, ``noise_source``).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from geowarn.core.levels import LEVELS
from geowarn.detectors.base import StreamingDetector, check_int, check_slope, check_window
from geowarn.detectors.latch import LevelLatch
from geowarn.detectors.noise import NoiseFigure
from geowarn.detectors.slope import SlopeWindows
from geowarn.detectors.verdict import Verdict

_new = tuple.__new__  # a Verdict without the level check: levels here come from a LevelLatch
#: The verdict on a slope within z standard errors of zero, nothing latched: a stable
#: point's usual reading. One shared value rather than new evidence for every such reading.
_STILL = Verdict(0, "", {"significant": False}, False)

DAY = 86400.0


class VelocityDetector(StreamingDetector):
    """Level of |velocity| (unit/day) over a sliding window, with hysteresis and hold time.

    ``min_points`` readings spanning at least ``min_span`` of the window are needed before
    the detector judges; until then it is warming up and says level 0.

    ``windows``: the channel's shared ``SlopeWindows`` (site fusion passes one to every rate
    detector of a channel, and snapshots it once); None gives the detector windows of its
    own, which its snapshot then carries.

    Evidence: ``velocity_per_day`` and ``stderr_per_day``, and from blue up ``threshold``,
    ``window_s`` and ``points``; with a noise figure also ``noise`` and ``noise_source``
    (which figure, and where from). A level-0 reading whose slope is not significant gets only
    ``significant`` = False (one shared verdict: a stable point's usual reading).
    """

    def __init__(
        self,
        thresholds_per_day: list[tuple[int, float]],
        *,
        window_s: float = 6 * 3600.0,
        hysteresis: float = 0.1,
        hold_s: float = 0.0,
        min_points: int = 6,
        min_span: float = 0.5,
        z: float = 5.0,
        persist: int = 3,
        unit: str = "mm",
        windows: SlopeWindows | None = None,
        noise: NoiseFigure | None = None,
    ) -> None:
        check_window("window_s", window_s)
        check_int("min_points", min_points, 3)
        check_slope(min_span, z)
        check_int("persist", persist, 1)
        LevelLatch(thresholds_per_day, hysteresis, hold_s)  # validates the levels, hysteresis and hold time
        self.thresholds_per_day = thresholds_per_day
        self.window_s = window_s
        self.hysteresis = hysteresis
        self.hold_s = hold_s
        self.min_points = min_points
        self.min_span = min_span
        self._min_span_s = min_span * window_s
        self.z = z
        self.persist = persist
        self.unit = unit
        self.noise = noise
        self._sig = 0.0 if noise is None else noise.sigma * DAY
        self._noise_ev = {} if noise is None else noise.evidence()
        # The constant part of each level's reason, made once rather than per reading.
        self._said = {
            lvl: (thr, f" {unit}/day (≥ {LEVELS[lvl].colour} {thr:g} {unit}/day over {window_s / 3600:g} h, or held)") for lvl, thr in thresholds_per_day
        }
        self._own = windows is None
        self._windows = SlopeWindows() if windows is None else windows
        self._ts = self._windows.ts  # the same list for the windows' lifetime
        self._smooth = self._windows.view(window_s)
        self._reset()

    def _reset(self) -> None:
        if self._own:
            self._windows.clear()
        self._recent: deque[float] = deque(maxlen=self.persist)
        self._latch = LevelLatch(self.thresholds_per_day, self.hysteresis, self.hold_s)
        self._last_t: float | None = None
        self._last: Verdict = Verdict(0, "warming up", warming_up=True)

    def fit(self) -> tuple[float, float] | None:
        """(velocity, its standard error), both per day; None until three points span time."""
        f = self._smooth.fit()
        return None if f is None else (f[0], f[1])

    def velocity_per_day(self) -> float | None:
        f = self.fit()
        return None if f is None else f[0]

    def update(self, t: float, value: float) -> Verdict:
        last_t = self._last_t
        if last_t is not None and not t > last_t:
            return self._last  # late or repeated: judged in arrival order, ignored
        if not (t - t == 0.0 and value - value == 0.0):
            return self._last  # NaN or infinite (x − x is 0 only for a finite x): not a reading
        self._last_t = t
        ts = self._ts
        if not ts or t > ts[-1]:  # else another detector of the channel has pushed this reading
            self._windows.push(t, value)
        smooth = self._smooth
        if smooth.restarted:
            self._recent.clear()  # a gap longer than the window: the old slope says nothing now
        n = smooth.n
        f = smooth.fit() if n >= self.min_points and t - smooth.first >= self._min_span_s else None
        if f is None:
            self._last = _new(Verdict, (0, "warming up", {"points": n}, True))
            return self._last
        v, se, _ = f
        if self._sig:
            floor_se = self._sig / math.sqrt(smooth.stt - smooth.st * smooth.st / n)
            if se < floor_se:
                se = floor_se
        # An insignificant slope counts as no movement (it may still let a level come down).
        recent = self._recent
        speed = v if v >= 0.0 else -v
        significant = speed > self.z * se
        recent.append(speed if significant else 0.0)
        x = min(recent)
        latch = self._latch
        # The latch's own quiet path, inline: nothing latched and x below every threshold.
        level = 0 if latch.level == 0 and x < latch._lowest else latch.update(t, x)
        if level == 0:
            if not significant:
                self._last = _STILL  # the slope is within its noise: nothing to tell
                return _STILL
            self._last = _new(Verdict, (0, "", {"velocity_per_day": v, "stderr_per_day": se, **self._noise_ev}, False))
        else:
            thr, tail = self._said[level]
            self._last = _new(
                Verdict,
                (
                    level,
                    f"velocity {v:.1f}{tail}",
                    {"velocity_per_day": v, "stderr_per_day": se, "threshold": thr, "window_s": self.window_s, "points": n, **self._noise_ev},
                    False,
                ),
            )
        return self._last

    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {"recent": list(self._recent), "latch": self._latch.snapshot(), "last_t": self._last_t, "last": self._last.to_dict()}
        if self._own:
            state["smooth"] = self._windows.snapshot()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        if self._own:
            self._windows.restore(state["smooth"])
        self._recent.extend(float(r) for r in state["recent"])
        self._latch.restore(state["latch"])
        self._last_t = state["last_t"]
        self._last = Verdict.from_dict(state["last"])
