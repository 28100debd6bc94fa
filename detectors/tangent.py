"""The improved tangent angle of the displacement-time curve, and its level.

This module owns the tangent-angle detector (Xu Qiang et al. 2009, "Study on the improved
tangent angle of displacement-time curve of landslide and its application") and the
sliding-window slope and frozen reference rate that both this detector and
``detectors/inverse_velocity.py`` use.

The raw tangent angle of a displacement-time plot depends on the axis scales. Xu Qiang's
improvement divides the displacement by the steady (constant-velocity, secondary) creep rate
``v_steady``, which turns displacement into time units, so the angle becomes

    α = arctan(v / v_steady)

and is comparable between slopes: 45° is steady creep, less is decelerating, more is
accelerating. Xu Qiang's warning levels, followed here (``thresholds_deg``):

    α < 45°        no warning (level 0)      steady or decelerating creep
    45° ≤ α < 80°  yellow (2), 初加速         initial acceleration
    80° ≤ α < 85°  orange (3), 中加速         medium acceleration
    α ≥ 85°        red (4), 加加速/临滑       imminent failure

Xu Qiang also calls the steady stage itself "attention" (blue); every creeping slope is in it,
so by default there is no blue here: a level means the slope moves faster than it used to.
A site that wants blue passes e.g. ``((1, 40.0), (2, 45.0), (3, 80.0), (4, 85.0))``.

Choices, and why:

- ``v`` is the least-squares slope over a sliding event-time window (12 h by default), never a
  difference of raw readings: with 3 mm of GNSS noise a 10-minute difference swings by
  hundreds of mm/day, a 12-hour regression slope by about 2.5 mm/day.
- The level judges the angle of the lower confidence bound |v| − ``z``·se (se: the standard
  error of the regression slope). This is the significance test of ``detectors/velocity.py``
  generalised: an insignificant slope gives α = 0, and a slope creeping at exactly its steady
  rate — α = 45° on the point estimate, the edge of yellow — cannot flap into yellow on
  noise; it must be faster than v_steady by z standard errors. Evidence carries both the
  judged ``alpha_deg`` and the point estimate ``alpha_point_deg``.
- ``v_steady`` is the least-squares slope of all readings of the first ``reference_s``
  (3 days by default), learned once and then FROZEN: a running mean would chase the very
  acceleration we want to detect, and the angle would drift back to 45°.
- The noise floor ``min_v_steady`` (10 mm/day by default): on a stable point v_steady ≈ 0 and
  the ratio explodes, so the denominator is never below the floor. 10 mm/day is four
  standard errors of a 12-hour slope of a point with 3 mm white noise read every 10 minutes
  (see ``white_noise_velocity_se``), a margin for the coloured (multipath, atmospheric) noise
  that real GNSS adds and the significance test does not know about. Below the floor the
  levels become absolute: yellow at 10, orange at 57, red at 114 mm/day (plus z standard
  errors, ~12 mm/day for 3 mm GNSS) — close to the velocity ladder's orange 72 and red
  120 mm/day. A precise sensor (extensometer, 0.1 mm) deserves a lower floor:
  ``for_channel(noise_mm=...)`` scales it.
- With a noise figure (``noise``; ``for_channel`` and site fusion give one, see
  ``detectors/noise.py``) the floor and the standard errors follow the channel's real noise:
  the window's standard error is never below the figure's, a smoothed or interpolated series
  (published daily data) is recognised and its errors widened by sqrt(n/n_eff), and the
  reference must be meaningful — significant, or resolved below the floor — before any
  level; until then the verdict says "not yet meaningful" (``ReferenceRate``). On a smoothed
  series the steady rate had been learned as ~0.00 mm/day and a 0.1–0.2 mm/day wobble read
  87–89° (red).
- A daily signal is not noise to the standard error: on a slope creeping faster than the
  floor, a 1 mm daily thermal or multipath wobble plus an outlier can lift a 12 h slope past
  v_steady + z·se for a while (seen in simulation as a rare yellow). A site with a strong
  daily signal should smooth over whole days (``window_s`` = 24 h).
- Magnitudes: α uses |v| and |v_steady|. The sign of a displacement channel is an installation
  convention (a GNSS east component of a slope sliding west is negative).
- A level is reached only when the angle has supported it for ``persist`` consecutive
  evaluations (noise peaks are brief, real acceleration persists); it comes down through the
  ``LevelLatch`` band (``hysteresis`` is relative to the angle threshold: the default 0.02 is
  0.9° at 45° and 1.7° at 85° — the velocity ladder's 0.1 would hold red down to 76.5°, below
  orange) after ``hold_s`` of event time.
- A gap in the data longer than the window restarts the smoothing (warming up again, level 0,
  the persistence memory cleared) but keeps v_steady: the slope's steady rate does not change
  because a radio link was down. The latch keeps its level across the gap, so a gap never
  lowers a level by itself.
- Late or repeated readings (t at or before the last accepted one) and non-finite readings are
  ignored: the previous verdict is returned and nothing changes.

Running sums make each update O(1); they are re-anchored every few window lengths (an
O(window) recomputation, amortised O(1)) so they stay precise however long the detector runs.

>>> det = TangentAngleDetector()
>>> t0 = 1_700_000_000.0
>>> # 3.5 days of steady creep at 20 mm/day, then 300 mm/day (15x: arctan 15 = 86.2°),
>>> # read every 10 minutes with ±1 mm of noise
>>> ts = [t0 + 600.0 * i for i in range(720)]
>>> d = [(20 * (t - t0) / DAY if t - t0 < 3.5 * DAY else 70 + 300 * (t - t0 - 3.5 * DAY) / DAY) + (-1) ** i for i, t in enumerate(ts)]
>>> vs = [det.update(t, x) for t, x in zip(ts, d)]
>>> vs[0].warming_up, vs[431].warming_up, vs[432].warming_up, vs[503].level, vs[-1].level
(True, True, False, 0, 4)
>>> round(vs[-1].evidence["alpha_point_deg"], 1), round(vs[-1].evidence["v_steady_per_day"], 1)
(86.2, 20.0)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from math import atan, degrees
from types import MappingProxyType
from typing import Any

from geowarn.core.levels import LEVELS
from geowarn.detectors.base import (
    StreamingDetector,
    check_channel,
    check_int,
    check_latch,
    check_slope,
    check_window,
    ring_restore,
    ring_values,
)
from geowarn.detectors.compact import pack, unpack
from geowarn.detectors.latch import LevelLatch
from geowarn.detectors.noise import MIN_INCREMENTS, NoiseFigure, Smoothness, inflation
from geowarn.detectors.slope import SlidingSlope, SlopeWindows, white_noise_velocity_se
from geowarn.detectors.verdict import Verdict

__all__ = ["ReferenceRate", "SlidingSlope", "SlopeWindows", "TangentAngleDetector", "white_noise_velocity_se"]

DAY = 86400.0
HOUR = 3600.0
_WARMING = "warming up: learning the steady creep rate or filling the smoothing window"
_WARMING_VERDICT = Verdict(0, _WARMING, {}, True)
_new = tuple.__new__  # a Verdict without the level check: levels here come from a LevelLatch
#: The verdict on a slope whose velocity is within z standard errors of zero (the judged
#: angle is 0), nothing latched: a stable point's usual reading. One shared value rather
#: than the evidence of every such reading (building it was a fifth of a channel's cost).
_STILL = Verdict(0, "", {"alpha_deg": 0.0, "significant": False}, False)

#: Xu Qiang's levels: yellow from 45°, orange from 80°, red from 85°.
XU_QIANG_DEG: tuple[tuple[int, float], ...] = ((2, 45.0), (3, 80.0), (4, 85.0))

# What every detector with the same parameters derives alike is made once and shared, read-only
# (issue 17: a national fleet has a million channels, most of them with the same parameters).


@functools.lru_cache(maxsize=1024)
def _angles(thresholds: tuple[tuple[int, float], ...]) -> tuple[tuple[tuple[int, float], ...], MappingProxyType[int, tuple[float, str]]]:
    """The thresholds (plain ints and floats, as ``__init__`` makes them), validated, and the
    constant part of each level's reason."""
    LevelLatch(list(thresholds))  # validates: levels distinct, ascending, 1-4; angles rising
    return thresholds, MappingProxyType({lvl: (thr, f"≥ {LEVELS[lvl].colour} {thr:g}°, or held)") for lvl, thr in thresholds})


@functools.lru_cache(maxsize=256)
def _per_day(unit: str) -> str:
    return f"{unit}/day"


@functools.lru_cache(maxsize=1024)
def _product(a: float, b: float) -> float:
    return a * b


@functools.lru_cache(maxsize=1024)
def _channel_params(window_s: float, interval_s: float, noise_mm: float) -> tuple[float, int, float, float]:
    """``for_channel``'s (window, min_points, reference_s, min_v_steady)."""
    window = max(window_s, min(2 * window_s, 12 * HOUR))
    min_points = max(3, min(12, int(window / interval_s)))
    return window, min_points, max(3 * DAY, 12 * interval_s), 4.0 * white_noise_velocity_se(noise_mm, window, interval_s)


@functools.lru_cache(maxsize=256)
def _max_reference(reference_s: float) -> float:
    """By default up to 10 references or 90 days, whichever is shorter (never below one)."""
    return max(reference_s, min(10.0 * reference_s, 90 * DAY))


class ReferenceRate:
    """Least-squares slope of the first ``reference_s`` of readings, then frozen.

    It freezes at the first reading at least ``reference_s`` after the first one, provided
    ``min_points`` readings were seen (a sparse feed keeps learning until it has them). Gaps do
    not matter: one long regression spans them.

    With a ``noise`` figure (``detectors/noise.py``; site fusion always gives one) the
    reference must also be *meaningful* before it freezes — a steady rate learned as ~0 from
    a smoothed series made every wobble read 87–89°:

    - its standard error is never below what the noise figure allows (σ/sqrt(Σ(t − t̄)²)),
      and is widened by sqrt((1 + ρ)/(1 − ρ)) when the series is smoothed (``Smoothness``:
      lag-1 autocorrelation ρ of the increments ≥ 0.5; the noise figure then never below the
      kind's floor);
    - it needs ``MIN_INCREMENTS`` (60) readings to tell a smoothed series from a raw one
      (or ``max_reference_s``, when it makes do with what it has);
    - it is meaningful when the fit is significant (|rate| ≥ ``z``·se: the steady rate is the
      fitted one, or the floor if that is larger) or when it resolves the rate to below the
      floor (|rate| + ``z``·se ≤ floor: the floor is the steady rate, a safe stand-in). The
      floor itself is scaled with the figure and the widening, so it never lies below what the
      noise can resolve;
    - otherwise it keeps learning (``pending`` says why, and the detectors give no level
      meanwhile) until ``max_reference_s`` (default: 10 references or 90 days, whichever is
      shorter); if it is still not meaningful then, it freezes at
      the upper confidence bound |rate| + z·se (``basis`` "upper bound": an angle against it
      can only be too low, never a false alarm from a reference too small).

    Without a noise figure it freezes as soon as it has the span and points (the plain
    detector, as the batch references in tests/oracles have it).
    """

    __slots__ = (
        "basis",
        "figure",
        "max_reference_s",
        "min_points",
        "n",
        "noise",
        "pending",
        "rate",
        "reference_s",
        "rho",
        "smooth",
        "st",
        "stderr",
        "steady",
        "stt",
        "stv",
        "sv",
        "svv",
        "t0",
        "v0",
        "widen",
        "z",
    )

    def __init__(
        self, reference_s: float, min_points: int, *, noise: NoiseFigure | None = None, z: float = 3.0, max_reference_s: float | None = None
    ) -> None:
        self.reference_s = float(reference_s)
        self.min_points = int(min_points)
        self.noise = noise
        self.z = float(z)
        # By default up to 10 references or 90 days, whichever is shorter (never below one).
        self.max_reference_s = (_max_reference(self.reference_s) if self.reference_s > 0 else max(self.reference_s, min(10.0 * self.reference_s, 90 * DAY))) if max_reference_s is None else float(max_reference_s)
        self.t0 = self.v0 = 0.0
        self.n = 0
        self.st = self.sv = self.stt = self.stv = self.svv = 0.0
        self.rate: float | None = None  # per day, once frozen
        self.stderr: float | None = None
        self.smooth = Smoothness() if noise is not None else None
        self.figure: NoiseFigure | None = noise  # after the smoothed-series rule, once frozen
        self.rho: float | None = None
        self.widen = 1.0  # sqrt(n / n_eff) of a smoothed series, else 1
        self.basis: str | None = None  # "fit", "floor" or "upper bound", once frozen with a noise figure
        self.steady: float | None = None  # the denominator, once frozen
        self.pending: str | None = None  # why a long enough reference is not yet meaningful

    def add(self, t: float, value: float, floor: float = 0.0) -> None:
        if self.n == 0:
            self.t0, self.v0 = t, value
        x = t - self.t0
        y = value - self.v0
        self.n += 1
        self.st += x
        self.sv += y
        self.stt += x * x
        self.stv += x * y
        self.svv += y * y
        if self.smooth is not None:
            self.smooth.add(y)
        n = self.n
        if x >= self.reference_s and n >= self.min_points and n >= 3:
            sxx = self.stt - self.st * self.st / n
            if sxx > 0:
                sxy = self.stv - self.st * self.sv / n
                b = sxy / sxx
                sse = self.svv - self.sv * self.sv / n - b * sxy
                rate = b * DAY
                stderr = math.sqrt(sse / (n - 2) / sxx) * DAY if sse > 0 else 0.0
                if self.noise is None:
                    self.rate, self.stderr = rate, stderr
                    self.steady = max(abs(rate), floor)
                    self._frozen()
                else:
                    self._judge(rate, stderr, sxx, x, floor)

    def _judge(self, rate: float, stderr: float, sxx: float, span: float, floor: float) -> None:
        noise = self.noise
        assert noise is not None and self.smooth is not None
        smooth = self.smooth
        if not smooth.known() and span < self.max_reference_s:
            self.pending = (
                f"no level: the steady creep rate is not yet meaningful ({smooth.m} of the {MIN_INCREMENTS} increments needed "
                "to tell whether the series is smoothed or interpolated)"
            )
            return
        rho = smooth.rho()
        widen = inflation(rho)
        fig = noise.for_smoothed() if widen > 1.0 else noise
        se = max(stderr, fig.sigma / math.sqrt(sxx) * DAY) * widen
        # The steady rate's floor, for the figure actually used and widened like the errors.
        floor_eff = floor * (fig.sigma / noise.sigma) * widen
        ar = abs(rate)
        z = self.z
        if ar >= z * se:
            basis, steady = "fit", max(ar, floor_eff)
        elif ar + z * se <= floor_eff:
            basis, steady = "floor", floor_eff
        elif span >= self.max_reference_s:
            basis, steady = "upper bound", max(ar + z * se, floor_eff)
        else:
            self.pending = (
                f"no level: the steady creep rate is not yet meaningful ({rate:.3g} ± {se:.2g} /day over {span / DAY:.3g} days, "
                f"neither {z:g} standard errors from 0 nor resolved below the noise floor {floor_eff:.3g} /day)"
            )
            return
        self.rate, self.stderr, self.rho, self.widen, self.figure = rate, se, rho, widen, fig
        self.basis, self.steady, self.pending = basis, steady, None
        self._frozen()

    def _frozen(self) -> None:
        """Once frozen the sums and the smoothness are done with (a frozen snapshot leaves them
        out): let them go, they are a few hundred bytes a channel."""
        self.smooth = None
        self.n = 0
        self.t0 = self.v0 = self.st = self.sv = self.stt = self.stv = self.svv = 0.0

    def learn(self, t: float, value: float, floor: float) -> float | None:
        """Add a reading while still learning; once frozen, the denominator the tangent angle
        and the forecast compare a velocity with: max(|rate|, ``floor``) — with a noise figure,
        as the class docstring says (they cache it: it never changes again)."""
        if self.rate is None:
            self.add(t, value, floor)
            if self.rate is None:
                return None
        if self.steady is None:  # restored from a snapshot of before the steady rate was kept
            self.steady = max(abs(self.rate), floor)
        return self.steady

    def evidence(self) -> dict[str, Any]:
        """What the frozen reference was judged with (noise figure, smoothing, basis)."""
        fig = self.figure
        if fig is None:
            return {}
        return {**fig.evidence(), "lag1_autocorrelation": self.rho, "smoothed": self.widen > 1.0, "reference_basis": self.basis}

    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any]
        if self.rate is not None:  # frozen: the sums are done with
            state = {"rate": self.rate, "stderr": self.stderr, "steady": self.steady}
            if self.noise is not None:
                fig = self.figure
                assert fig is not None
                state.update(rho=self.rho, widen=self.widen, basis=self.basis, figure=[fig.sigma, fig.source])
            return state
        state = {"sums": pack([self.t0, self.v0, self.n, self.st, self.sv, self.stt, self.stv, self.svv]), "rate": None, "stderr": None}
        if self.smooth is not None:
            state["smoothness"] = self.smooth.snapshot()
            state["pending"] = self.pending
        return state

    def restore(self, state: dict[str, Any]) -> None:
        if "sums" in state:
            self.t0, self.v0, n, self.st, self.sv, self.stt, self.stv, self.svv = unpack(state["sums"])
            self.n = int(n)
        self.rate = None if state["rate"] is None else float(state["rate"])
        self.stderr = None if state["stderr"] is None else float(state["stderr"])
        self.steady = None if state.get("steady") is None else float(state["steady"])
        if self.noise is not None and self.smooth is None and self.rate is None:
            self.smooth = Smoothness()  # learning again (frozen, this one had let its own go)
        if self.smooth is not None and "smoothness" in state:
            self.smooth.restore(state["smoothness"])
            self.pending = state.get("pending")
        if self.noise is not None and "figure" in state:
            sigma, source = state["figure"]
            self.figure = NoiseFigure(float(sigma), str(source), self.noise.floor, self.noise.floor_source)
            self.rho = None if state["rho"] is None else float(state["rho"])
            self.widen, self.basis = float(state["widen"]), state["basis"]
        if self.rate is not None:
            self._frozen()


#: One never-fed detector of each parameter set ``TangentAngleDetector.for_channel`` was asked
#: for: key -> (its noise figure, the detector), at most ``_ALIKE_MAX`` of them.
_ALIKE: dict[tuple[type, str], tuple[NoiseFigure | None, TangentAngleDetector]] = {}
_ALIKE_MAX = 256


class TangentAngleDetector(StreamingDetector):
    """Level of Xu Qiang's improved tangent angle α = arctan(|v| / max(|v_steady|, floor)).

    ``v`` is the least-squares velocity over ``window_s``, judged by its lower bound
    |v| − z·se; ``v_steady`` is learned over the first ``reference_s`` and frozen;
    ``min_v_steady`` (unit/day) is the noise floor of the denominator. Warming up (level 0)
    until v_steady is learned and the window holds ``min_points`` readings spanning
    ``min_span`` of it. See the module docstring.

    Evidence (judged readings): ``alpha_deg`` (the judged angle, the one the level follows),
    ``alpha_point_deg``, ``velocity_per_day`` (signed), ``stderr_per_day``,
    ``v_steady_per_day`` (the denominator, after the floor), ``steady_fit_per_day`` (the
    learned rate, signed, before the floor) and, from yellow up, ``threshold_deg``; with a
    noise figure also ``noise`` and ``noise_source`` (the figure judged with, and where it
    came from), ``lag1_autocorrelation``, ``smoothed`` and ``reference_basis`` ("fit",
    "floor" or "upper bound"); while such a reference is not yet meaningful, the warming-up
    verdict says why (``reference_pending``). A reading
    at level 0 whose velocity is not significant (|v| ≤ z·se, so the judged angle is 0) gets
    only ``alpha_deg`` = 0 and ``significant`` = False: a stable point's usual reading has
    nothing more to tell, and that verdict is one shared value.
    """

    __slots__ = (
        "_last",
        "_last_t",
        "_latch",
        "_min_span_s",
        "_own",
        "_rb",
        "_ref",
        "_ri",
        "_rn",
        "_rz",
        "_said",
        "_sig",
        "_smooth",
        "_steady",
        "_ts",
        "_u",
        "_widen",
        "_windows",
        "hold_s",
        "hysteresis",
        "max_reference_s",
        "min_points",
        "min_span",
        "min_v_steady",
        "noise",
        "persist",
        "reference_s",
        "reference_z",
        "thresholds_deg",
        "unit",
        "window_s",
        "z",
    )

    def __init__(
        self,
        *,
        thresholds_deg: Sequence[tuple[int, float]] = XU_QIANG_DEG,
        window_s: float = 12 * HOUR,
        reference_s: float = 3 * DAY,
        min_v_steady: float = 10.0,
        z: float = 5.0,
        persist: int = 3,
        hysteresis: float = 0.02,
        hold_s: float = 0.0,
        min_points: int = 12,
        min_span: float = 0.5,
        unit: str = "mm",
        windows: SlopeWindows | None = None,
        noise: NoiseFigure | None = None,
        reference_z: float = 3.0,
        max_reference_s: float | None = None,
    ) -> None:
        thresholds = [(int(lvl), float(a)) for lvl, a in thresholds_deg]
        if not thresholds or any(not 0 < a < 90 for _, a in thresholds):
            raise ValueError(f"thresholds_deg must be [(level 1-4, angle in (0, 90) degrees)] ascending, got {thresholds}")
        canon, said = _angles(tuple(thresholds))  # validates: levels distinct, ascending, 1-4; angles rising
        check_window("window_s", window_s)
        check_window("reference_s", reference_s)
        if not min_v_steady > 0:
            raise ValueError(f"min_v_steady must be > 0 (it keeps a stable point's ratio finite), got {min_v_steady}")
        check_int("persist", persist, 1)
        check_latch(hysteresis, hold_s)
        check_int("min_points", min_points, 3)
        check_slope(min_span, z)
        if not reference_z > 0:
            raise ValueError(f"reference_z must be > 0 (standard errors a steady rate must be from 0, or below the floor), got {reference_z}")
        if max_reference_s is not None and not max_reference_s >= reference_s:
            raise ValueError(f"max_reference_s must be >= reference_s={reference_s} (None: 10 x reference_s up to 90 days), got {max_reference_s}")
        self.noise = noise
        self.reference_z = float(reference_z)
        self.max_reference_s = None if max_reference_s is None else float(max_reference_s)
        self.thresholds_deg = canon
        self.window_s = float(window_s)
        self.reference_s = float(reference_s)
        self.min_v_steady = float(min_v_steady)
        self.z = float(z)
        self.persist = persist
        self.hysteresis = float(hysteresis)
        self.hold_s = float(hold_s)
        self.min_points = min_points
        self.min_span = float(min_span)
        self._min_span_s = _product(self.min_span, self.window_s)
        self.unit = unit
        self._u = _per_day(unit) if type(unit) is str else f"{unit}/day"
        self._said = said
        self._own = windows is None
        self._windows = SlopeWindows() if windows is None else windows
        self._ts = self._windows.ts  # the same list for the windows' lifetime
        self._smooth = self._windows.view(self.window_s)
        self._reset()

    @classmethod
    def for_channel(
        cls,
        *,
        window_s: float = 6 * HOUR,
        interval_s: float = 600.0,
        hold_s: float = 0.0,
        noise_mm: float = 3.0,
        unit: str = "mm",
        persist: int = 3,
        windows: SlopeWindows | None = None,
        noise: NoiseFigure | None = None,
    ) -> TangentAngleDetector:
        """The default detector of a displacement-like channel read every ``interval_s``.

        ``window_s`` is the channel's velocity window; the tangent smooths over twice that, up
        to 12 h (never less than ``window_s``): the steady-creep comparison needs a steadier
        velocity than the velocity ladder. The reference spans max(3 days, 12 intervals); the
        floor is four white-noise standard errors of the smoothed velocity for ``noise_mm``
        (3 mm: horizontal GNSS; pass ~0.1 for an extensometer). ``noise``, a figure from
        ``detectors/noise.py`` (site fusion's), replaces ``noise_mm`` and turns on the noise
        rules: standard errors never below the figure's, smoothed series recognised, and a
        reference that must be meaningful (``ReferenceRate``).
        """
        if noise is not None:
            noise_mm = noise.sigma
        # Site fusion builds one for every channel of a kind and policy, and again for every
        # parked channel it wakes: the first of each parameter set is built (and checked) in
        # full and kept, never fed; the others copy its parameters and start afresh (~6 µs of
        # checks and derived values saved). Keyed by the parameters' repr (3 and 3.0, 0.0 and
        # -0.0 apart) and the noise figure by identity (``noise_for`` hands out one per figure).
        key = (cls, repr((window_s, interval_s, hold_s, noise_mm, unit, persist)))
        hit = _ALIKE.get(key)
        if hit is None or hit[0] is not noise:
            check_channel(interval_s, window_s, noise_mm)
            window, min_points, reference_s, min_v_steady = _channel_params(window_s, interval_s, noise_mm)
            proto = cls(
                window_s=window,
                reference_s=reference_s,
                min_v_steady=min_v_steady,
                hold_s=hold_s,
                min_points=min_points,
                unit=unit,
                persist=persist,
                windows=SlopeWindows(),
                noise=noise,
            )
            if len(_ALIKE) >= _ALIKE_MAX:
                _ALIKE.clear()
            _ALIKE[key] = hit = (noise, proto)
        return hit[1]._alike(windows)

    def _alike(self, windows: SlopeWindows | None) -> TangentAngleDetector:
        """A fresh detector with this one's parameters over ``windows`` (None: its own)."""
        d = object.__new__(type(self))
        d.noise = self.noise
        d.reference_z = self.reference_z
        d.max_reference_s = self.max_reference_s
        d.thresholds_deg = self.thresholds_deg
        d.window_s = self.window_s
        d.reference_s = self.reference_s
        d.min_v_steady = self.min_v_steady
        d.z = self.z
        d.persist = self.persist
        d.hysteresis = self.hysteresis
        d.hold_s = self.hold_s
        d.min_points = self.min_points
        d.min_span = self.min_span
        d._min_span_s = self._min_span_s
        d.unit = self.unit
        d._u = self._u
        d._said = self._said
        d._own = windows is None
        d._windows = SlopeWindows() if windows is None else windows
        d._ts = d._windows.ts
        d._smooth = d._windows.view(self.window_s)
        d._reset()
        return d

    def _reset(self) -> None:
        if self._own:
            self._windows.clear()
        self._ref = ReferenceRate(self.reference_s, self.min_points, noise=self.noise, z=self.reference_z, max_reference_s=self.max_reference_s)
        self._sig = 0.0  # σ·DAY of the noise figure once the reference froze (0: no floor)
        self._widen = 1.0
        # The last ``persist`` judged angles (a list, not a deque: a deque costs ~1.3 KB however
        # few values it holds), a ring of ``persist`` slots: the next one to write (``_ri``),
        # how many are filled (``_rn``) and how many of the newest are not 0 (``_rz``: while a
        # 0 is among them, their minimum is 0 without a look; no angle is negative).
        self._rb = [0.0] * self.persist
        self._ri = self._rn = self._rz = 0
        self._latch = LevelLatch(self.thresholds_deg, self.hysteresis, self.hold_s)  # a tuple: its tables are found by identity
        self._steady: float | None = None  # the denominator, once the reference is frozen
        self._last_t: float | None = None
        self._last = _WARMING_VERDICT

    def steady_rate(self) -> float | None:
        """The denominator (unit/day): max(|learned v_steady|, min_v_steady) — with a noise
        figure, as ``ReferenceRate`` says; None until learned."""
        r = self._ref
        if r.rate is None:
            return None
        return r.steady if r.steady is not None else max(abs(r.rate), self.min_v_steady)

    def update(self, t: float, value: float) -> Verdict:
        last_t = self._last_t
        if last_t is not None and not t > last_t:
            return self._last  # late, repeated or NaN time: judged in arrival order, so ignored
        if not (t - t == 0.0 and value - value == 0.0):
            return self._last  # NaN or infinite (x − x is 0 only for a finite x): not a reading
        self._last_t = t
        ts = self._ts
        if not ts or t > ts[-1]:  # else another detector of the channel has pushed this reading
            self._windows.push(t, value)
        smooth = self._smooth
        if smooth.restarted:
            self._ri = self._rn = self._rz = 0  # the persistence memory goes with the window
        steady = self._steady
        if steady is None:
            ref = self._ref
            steady = self._steady = ref.learn(t, value, self.min_v_steady)
            if steady is None:
                if ref.pending is not None:
                    self._last = _new(Verdict, (0, ref.pending, {"reference_pending": True, **(self.noise.evidence() if self.noise else {})}, True))
                    return self._last
                self._last = _WARMING_VERDICT
                return _WARMING_VERDICT
            if ref.figure is not None:
                self._sig, self._widen = _product(ref.figure.sigma, DAY), ref.widen
        f = smooth.fit() if smooth.n >= self.min_points and t - smooth.first >= self._min_span_s else None
        if f is None:
            self._last = _WARMING_VERDICT
            return _WARMING_VERDICT
        v, se, _ = f
        if self._sig:
            # The window's own residuals never claim less noise than the channel's figure, and
            # a smoothed series' correlated readings count for fewer (ReferenceRate).
            n = smooth.n
            sxx = smooth.stt - smooth.st * smooth.st / n
            floor_se = self._sig / math.sqrt(sxx)
            se = (se if se > floor_se else floor_se) * self._widen  # noqa: FURB136 (max() costs a call per reading)
        av = v if v >= 0.0 else -v
        # Judge the lower confidence bound |v| - z·se: an insignificant slope gives 0, and a
        # slope creeping at its steady rate cannot flap around 45° on noise.
        low = av - self.z * se
        # A level needs `persist` judged angles in a row; until then the latch is not asked.
        rb = self._rb
        i = self._ri
        p = self.persist
        if low > 0:
            rb[i] = alpha = degrees(atan(low / steady))
            rz = self._rz
            if rz < p:
                self._rz = rz = rz + 1
        else:
            rb[i] = alpha = 0.0
            self._rz = rz = 0
        i += 1
        self._ri = 0 if i == p else i
        latch = self._latch
        rn = self._rn
        if rn < p:
            self._rn = rn = rn + 1
        if rn < p:
            level = latch.level
        else:
            # The minimum of the ring: 0 while one of its angles is 0 (none is negative).
            x = 0.0 if rz < p else min(rb)
            # The latch's own quiet path, inline: nothing latched and x below every threshold.
            level = 0 if latch.level == 0 and x < latch._lowest else latch.update(t, x)
        if level == 0 and low <= 0:
            self._last = _STILL  # the slope is within its noise: nothing to tell
            return _STILL
        evidence: dict[str, Any] = {
            "alpha_deg": alpha,
            "alpha_point_deg": degrees(atan(av / steady)),
            "velocity_per_day": v,
            "stderr_per_day": se,
            "v_steady_per_day": steady,
            "steady_fit_per_day": self._ref.rate,
        }
        if self._sig:
            evidence.update(self._ref.evidence())
        if level == 0:
            self._last = _new(Verdict, (0, "", evidence, False))
        else:
            thr, tail = self._said[level]
            evidence["threshold_deg"] = thr
            u = self._u
            self._last = _new(
                Verdict,
                (level, f"tangent angle {alpha:.1f}° (velocity {v:.1f} {u}, {av / steady:.1f}× the steady {steady:.2f} {u}; {tail}", evidence, False),
            )
        return self._last

    def _recent(self) -> list[float]:
        """The last ``persist`` judged angles, oldest first."""
        return ring_values(self._rb, self._rn, self._ri)

    def snapshot(self) -> dict[str, Any]:
        state = {
            "reference": self._ref.snapshot(),
            "recent": self._recent(),
            "latch": self._latch.snapshot(),
            "last_t": self._last_t,
            "last": self._last.to_dict(),
        }
        if self._own:
            state["smooth"] = self._windows.snapshot()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        if self._own:
            self._windows.restore(state["smooth"])
        self._ref.restore(state["reference"])
        self._rn, self._ri, self._rz = ring_restore(self._rb, state["recent"])
        self._latch.restore(state["latch"])
        self._last_t = None if state["last_t"] is None else float(state["last_t"])
        self._last = Verdict.from_dict(state["last"])
