"""Slope models: the true displacement (mm) of a hazard site over time.

A slope model is deterministic once its parameters are set; simulated fleets draw those
parameters from their seed, so a seed reproduces the whole run. Two models live here:

- ``VoightFailure``: steady creep plus accelerating (tertiary) creep that ends in failure at
  ``t_f``, following Voight's law dv/dt = A·v^α.
- ``StableSlope``: tiny creep plus a seasonal and a daily (thermal) oscillation.
- ``SeasonalSlope``: step-like motion of a reservoir landslide, driven by stored rain and
  reservoir drawdown (``reservoir_level``).

Conventions shared by every model:

- Time ``t`` is event time in epoch seconds; displacement is in mm relative to ``t0``
  (``displacement(t0) == 0``); velocity is in mm/day, the unit the warning thresholds use.
- Return type follows the input's dimensionality, never a flag: a scalar (Python or numpy,
  0-d) gives a Python ``float``; anything array-like (list, tuple, ndarray of any shape) gives
  a float64 ``ndarray`` of the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

DAY = 86400.0
YEAR = 365.25 * DAY

FloatArray = NDArray[np.float64]


class Slope(Protocol):
    """What device models need from a slope: its true motion along the sliding direction."""

    t0: float

    @overload
    def displacement(self, t: float) -> float: ...
    @overload
    def displacement(self, t: FloatArray) -> FloatArray: ...
    def displacement(self, t: ArrayLike) -> float | FloatArray: ...

    @overload
    def velocity(self, t: float) -> float: ...
    @overload
    def velocity(self, t: FloatArray) -> FloatArray: ...
    def velocity(self, t: ArrayLike) -> float | FloatArray: ...


def _to_array(t: ArrayLike) -> tuple[FloatArray, bool]:
    arr = np.asarray(t, dtype=np.float64)
    return arr, arr.ndim == 0


def _out(values: FloatArray, scalar: bool) -> float | FloatArray:
    return float(values) if scalar else values


class VoightFailure:
    """Steady creep plus Voight accelerating creep, failing at ``t_f``.

    Velocity (mm/day) is ``creep_mm_day + v_acc(t)`` where ``v_acc`` solves Voight's law
    dv/dt = A·v^α with ``v_acc → ∞`` at ``t_f``. With τ = t_f − t (days) and p = 1/(α−1):

        v_acc(τ) = [A(α−1)τ]^(−p) = v0 · (τ0/τ)^p,   A = v0^(1−α) / ((α−1)·τ0),

    so ``v0_mm_day`` is the accelerating part's velocity at ``t0`` (τ0 = t_f − t0): one
    intuitive number instead of A. For α = 2, 1/v_acc = A·τ is linear in time and reaches 0
    at t_f (Fukuzono's inverse-velocity method recovers t_f exactly when creep is 0).

    Displacement integrates the velocity analytically, with q = (α−2)/(α−1):

        α ≠ 2:  D_acc(t) = v0·τ0·(1 − (τ/τ0)^q) / q
                         = (A(α−1))^(−p) · (α−1)/(α−2) · (τ0^q − τ^q)
        α = 2:  D_acc(t) = v0·τ0·ln(τ0/τ) = ln(τ0/τ) / A

    As t → t_f the displacement stays finite only for α > 2 (limit v0·τ0/q); it diverges
    logarithmically for α = 2 and as a power law for α < 2.

    After failure: a failed slope no longer creeps and its sensors are lost, so from
    ``t_f − clamp_s`` on, displacement holds its value at that instant and velocity is 0.
    ``clamp_s`` (default 60 s) keeps the last reading finite for α ≤ 2 while staying well
    inside one reporting interval of ``t_f``.

    >>> s = VoightFailure(0.0, 240 * DAY, v0_mm_day=0.5, creep_mm_day=0.0)
    >>> round(s.velocity(239 * DAY), 9)   # 0.5 mm/day · 240 days / 1 day
    120.0
    """

    def __init__(
        self,
        t0: float,
        t_f: float,
        alpha: float = 2.0,
        v0_mm_day: float = 0.5,
        creep_mm_day: float = 0.2,
        *,
        clamp_s: float = 60.0,
    ) -> None:
        if not math.isfinite(t0) or not math.isfinite(t_f) or not t_f > t0:
            raise ValueError(f"failure time t_f ({t_f}) must be finite and after t0 ({t0})")
        if not (math.isfinite(alpha) and alpha > 1.0):
            raise ValueError(f"alpha must be > 1 (Voight's law accelerates to failure only then), got {alpha}")
        if not (math.isfinite(v0_mm_day) and v0_mm_day > 0):
            raise ValueError(f"v0_mm_day must be > 0, got {v0_mm_day}")
        if not (math.isfinite(creep_mm_day) and creep_mm_day >= 0):
            raise ValueError(f"creep_mm_day must be >= 0, got {creep_mm_day}")
        if not 0 < clamp_s < t_f - t0:
            raise ValueError(f"clamp_s must be in (0, t_f - t0 = {t_f - t0}), got {clamp_s}")
        self.t0 = float(t0)
        self.t_f = float(t_f)
        self.alpha = float(alpha)
        self.v0_mm_day = float(v0_mm_day)
        self.creep_mm_day = float(creep_mm_day)
        self.clamp_s = float(clamp_s)
        self._tau0 = (self.t_f - self.t0) / DAY
        self._p = 1.0 / (self.alpha - 1.0)
        self._q = (self.alpha - 2.0) / (self.alpha - 1.0)
        #: Voight's A in (mm/day)^(1−α) per day, for reference and reporting.
        self.A = self.v0_mm_day ** (1.0 - self.alpha) / ((self.alpha - 1.0) * self._tau0)

    @classmethod
    def reaching(
        cls,
        t0: float,
        t_f: float,
        *,
        v_mm_day: float = 120.0,
        lead_s: float = DAY,
        alpha: float = 2.0,
        creep_mm_day: float = 0.2,
        clamp_s: float = 60.0,
    ) -> "VoightFailure":
        """The failure whose total velocity reaches ``v_mm_day`` exactly ``lead_s`` before t_f.

        The default (120 mm/day, the red threshold, one day ahead) fixes the warning lead
        time regardless of how long the run is; the start velocity then follows from α and
        t_f − t0 (for α = 2 it is creep + 120·1 day / (t_f − t0 in days)).
        """
        if not lead_s > 0:
            raise ValueError(f"lead_s must be > 0, got {lead_s}")
        if not v_mm_day > creep_mm_day:
            raise ValueError(f"v_mm_day ({v_mm_day}) must exceed creep_mm_day ({creep_mm_day})")
        if not t_f > t0:
            raise ValueError(f"failure time t_f ({t_f}) must be after t0 ({t0})")
        if not alpha > 1.0:
            raise ValueError(f"alpha must be > 1 (Voight's law accelerates to failure only then), got {alpha}")
        p = 1.0 / (alpha - 1.0)
        v0 = (v_mm_day - creep_mm_day) * (lead_s / (t_f - t0)) ** p
        return cls(t0, t_f, alpha, v0, creep_mm_day, clamp_s=clamp_s)

    @property
    def t_clamp(self) -> float:
        """The instant from which displacement is frozen (the slope has failed)."""
        return self.t_f - self.clamp_s

    @overload
    def velocity(self, t: float) -> float: ...
    @overload
    def velocity(self, t: FloatArray) -> FloatArray: ...
    def velocity(self, t: ArrayLike) -> float | FloatArray:
        """Velocity in mm/day; 0 from ``t_clamp`` on."""
        arr, scalar = _to_array(t)
        live = arr < self.t_clamp
        tau = np.where(live, (self.t_f - arr) / DAY, 1.0)
        v = np.where(live, self.creep_mm_day + self.v0_mm_day * (self._tau0 / tau) ** self._p, 0.0)
        return _out(v, scalar)

    @overload
    def displacement(self, t: float) -> float: ...
    @overload
    def displacement(self, t: FloatArray) -> FloatArray: ...
    def displacement(self, t: ArrayLike) -> float | FloatArray:
        """Displacement in mm since ``t0``; held constant from ``t_clamp`` on."""
        arr, scalar = _to_array(t)
        tc = np.minimum(arr, self.t_clamp)
        tau = (self.t_f - tc) / DAY
        log_x = np.log(tau / self._tau0)
        if self.alpha == 2.0:
            acc = -self.v0_mm_day * self._tau0 * log_x
        else:
            # expm1 keeps (1 − x^q)/q accurate when α is close to 2 (q → 0).
            acc = -self.v0_mm_day * self._tau0 * np.expm1(self._q * log_x) / self._q
        d = self.creep_mm_day * (tc - self.t0) / DAY + acc
        return _out(d, scalar)

    def time_at_velocity(self, v_mm_day: float) -> float:
        """Epoch seconds at which the velocity reaches ``v_mm_day`` (it only rises until t_f).

        The law is extrapolated backwards, so the answer precedes ``t0`` when ``v_mm_day`` is
        below the start velocity.
        """
        if not v_mm_day > self.creep_mm_day:
            raise ValueError(f"v_mm_day ({v_mm_day}) must exceed creep_mm_day ({self.creep_mm_day}); below it the slope never gets there")
        tau = self._tau0 * (self.v0_mm_day / (v_mm_day - self.creep_mm_day)) ** (self.alpha - 1.0)
        return self.t_f - tau * DAY

    def __repr__(self) -> str:
        return (
            f"VoightFailure(t0={self.t0}, t_f={self.t_f}, alpha={self.alpha}, v0_mm_day={self.v0_mm_day:.6g}, "
            f"creep_mm_day={self.creep_mm_day}, clamp_s={self.clamp_s})"
        )


class StableSlope:
    """A slope that is not going anywhere: tiny creep, a yearly and a daily oscillation.

    displacement = creep·Δt + A_s·(sin(ω_s Δt + φ_s) − sin φ_s) + A_t·(sin(ω_t Δt + φ_t) − sin φ_t)

    with Δt = t − t0, ω_s one cycle a year, ω_t one a day; subtracting sin φ keeps
    ``displacement(t0) == 0``. The defaults keep the velocity below 0.5 mm/day, i.e. under the
    lowest (blue, 1 mm/day) velocity threshold: the daily term's peak velocity is
    2π·A_t per day, which is why its default amplitude is small.
    """

    def __init__(
        self,
        t0: float,
        creep_mm_day: float = 0.0,
        seasonal_amp_mm: float = 1.0,
        thermal_amp_mm: float = 0.05,
        *,
        seasonal_phase: float = 0.0,
        thermal_phase: float = 0.0,
    ) -> None:
        for name, value in (("creep_mm_day", creep_mm_day), ("seasonal_amp_mm", seasonal_amp_mm), ("thermal_amp_mm", thermal_amp_mm)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        self.t0 = float(t0)
        self.creep_mm_day = float(creep_mm_day)
        self.seasonal_amp_mm = float(seasonal_amp_mm)
        self.thermal_amp_mm = float(thermal_amp_mm)
        self.seasonal_phase = float(seasonal_phase)
        self.thermal_phase = float(thermal_phase)
        self._ws = 2.0 * math.pi / YEAR
        self._wt = 2.0 * math.pi / DAY

    @overload
    def displacement(self, t: float) -> float: ...
    @overload
    def displacement(self, t: FloatArray) -> FloatArray: ...
    def displacement(self, t: ArrayLike) -> float | FloatArray:
        arr, scalar = _to_array(t)
        dt = arr - self.t0
        d = (
            self.creep_mm_day * dt / DAY
            + self.seasonal_amp_mm * (np.sin(self._ws * dt + self.seasonal_phase) - math.sin(self.seasonal_phase))
            + self.thermal_amp_mm * (np.sin(self._wt * dt + self.thermal_phase) - math.sin(self.thermal_phase))
        )
        return _out(d, scalar)

    @overload
    def velocity(self, t: float) -> float: ...
    @overload
    def velocity(self, t: FloatArray) -> FloatArray: ...
    def velocity(self, t: ArrayLike) -> float | FloatArray:
        """Velocity in mm/day (signed: the oscillations move both ways)."""
        arr, scalar = _to_array(t)
        dt = arr - self.t0
        v = (
            self.creep_mm_day
            + self.seasonal_amp_mm * self._ws * DAY * np.cos(self._ws * dt + self.seasonal_phase)
            + self.thermal_amp_mm * self._wt * DAY * np.cos(self._wt * dt + self.thermal_phase)
        )
        return _out(v, scalar)

    def __repr__(self) -> str:
        return (
            f"StableSlope(t0={self.t0}, creep_mm_day={self.creep_mm_day}, seasonal_amp_mm={self.seasonal_amp_mm}, "
            f"thermal_amp_mm={self.thermal_amp_mm})"
        )


def reservoir_level(t: ArrayLike, *, high_m: float = 175.0, low_m: float = 145.0, drawdown_start_doy: float = 120.0, drawdown_days: float = 45.0) -> FloatArray:
    """Water level (m a.s.l.) of a Three Gorges-like reservoir on day-of-year of ``t``.

    Piecewise linear over the year: full (``high_m``) after the autumn impoundment, a slow
    winter release to mid-level by ``drawdown_start_doy``, the fast flood-season drawdown to
    ``low_m`` over ``drawdown_days``, low through the summer floods, and refilling in
    September–October (as in ../shared/data three_gorges_baishuihe_bazimen).
    """
    arr = np.asarray(t, dtype=np.float64)
    doy = (arr / DAY) % 365.25
    ds = min(drawdown_start_doy, 200.0)
    de = min(ds + drawdown_days, 240.0)
    mid = low_m + 0.5 * (high_m - low_m)
    knots_x = [0.0, 30.0, ds, de, 245.0, 300.0, 365.25]
    knots_y = [high_m - 2.0, high_m - 4.0, mid, low_m, low_m, high_m, high_m - 2.0]
    return np.interp(doy, knots_x, knots_y)


class SeasonalSlope:
    """Step-like motion of a reservoir landslide (Baishuihe, Bazimen): fast in the flood
    season, nearly still in winter.

    velocity (mm/day) = base + rain_gain · stored rain (mm, a linear reservoir of
    ``rain_timescale_s``) + drawdown_gain · max(0, −dh/dt) (m/day of reservoir drawdown).

    Displacement integrates the velocity on a ``step_s`` grid from ``t0`` to ``t_end``
    (trapezoids; beyond ``t_end`` it continues at the last velocity). ``stored_rain`` is the
    site's rain reservoir: a vectorised function of time.
    """

    def __init__(
        self,
        t0: float,
        t_end: float,
        stored_rain: Callable[[FloatArray, float], FloatArray],
        *,
        base_mm_day: float = 0.3,
        rain_gain_mm_day_per_mm: float = 0.08,
        rain_timescale_s: float = 5 * DAY,
        drawdown_gain_mm_per_m: float = 25.0,
        reservoir: dict[str, float] | None = None,
        step_s: float = 600.0,
    ) -> None:
        if not t_end > t0:
            raise ValueError(f"t_end ({t_end}) must be after t0 ({t0})")
        for name, value in (("base_mm_day", base_mm_day), ("rain_gain_mm_day_per_mm", rain_gain_mm_day_per_mm), ("drawdown_gain_mm_per_m", drawdown_gain_mm_per_m)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        self.t0 = float(t0)
        self.t_end = float(t_end)
        self.base_mm_day = base_mm_day
        self.rain_gain = rain_gain_mm_day_per_mm
        self.rain_timescale_s = rain_timescale_s
        self.drawdown_gain = drawdown_gain_mm_per_m
        self._stored = stored_rain
        self._res = dict(reservoir or {})
        n = max(2, int(math.ceil((self.t_end - self.t0) / step_s)) + 1)
        self._grid = np.linspace(self.t0, self.t0 + (n - 1) * step_s, n)
        v = self._velocity_raw(self._grid)
        dt_day = np.diff(self._grid) / DAY
        self._disp = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * dt_day)])
        self._v = v

    def level(self, t: ArrayLike) -> FloatArray:
        return reservoir_level(t, **self._res)

    def _velocity_raw(self, t: FloatArray) -> FloatArray:
        h1 = self.level(t - 0.5 * DAY)
        h2 = self.level(t + 0.5 * DAY)
        drawdown = np.maximum(0.0, h1 - h2)  # m/day
        return self.base_mm_day + self.rain_gain * self._stored(t, self.rain_timescale_s) + self.drawdown_gain * drawdown

    @overload
    def displacement(self, t: float) -> float: ...
    @overload
    def displacement(self, t: FloatArray) -> FloatArray: ...
    def displacement(self, t: ArrayLike) -> float | FloatArray:
        arr, scalar = _to_array(t)
        d = np.interp(arr, self._grid, self._disp, left=0.0)
        beyond = arr > self._grid[-1]
        if np.any(beyond):
            d = np.where(beyond, self._disp[-1] + self._v[-1] * (arr - self._grid[-1]) / DAY, d)
        return _out(d, scalar)

    @overload
    def velocity(self, t: float) -> float: ...
    @overload
    def velocity(self, t: FloatArray) -> FloatArray: ...
    def velocity(self, t: ArrayLike) -> float | FloatArray:
        arr, scalar = _to_array(t)
        return _out(np.interp(arr, self._grid, self._v), scalar)

    def __repr__(self) -> str:
        return f"SeasonalSlope(t0={self.t0}, t_end={self.t_end}, base_mm_day={self.base_mm_day}, drawdown_gain_mm_per_m={self.drawdown_gain})"
