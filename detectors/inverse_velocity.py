"""Failure-time forecast by the inverse-velocity method, and its level.

This module owns the inverse-velocity detector (Fukuzono 1985, "A new method for predicting
the failure time of a slope", Proc. 4th Int. Conf. Field Workshop on Landslides, Tokyo,
145-150; Voight 1989, "A relation to describe rate-dependent material failure", Science 243,
200-203). In tertiary creep the velocity obeys Voight's law dv/dt = A·v^α; for α = 2 the
inverse velocity falls linearly in time, 1/v = A·(t_f − t), and reaches zero at failure. So a
straight line 1/v = a + b·t fitted since the onset of acceleration forecasts the failure time
t_f = −a/b (b < 0). For another α, v^(1−α) is the straight line (Voight's generalisation;
``alpha``); leave it at 2 unless back-analysis of the site gave its own α.

How the detector goes about it, and why:

1. Velocity: the least-squares slope over a sliding window (``SlidingSlope`` of
   ``detectors/tangent.py``; never raw differences of GNSS readings). Each smoothed velocity
   is placed at the mean time of its window, not at the newest reading: a regression slope
   estimates the velocity at the window's centre (exactly, for a quadratic path), and placing
   it at the end would push every forecast late by half a window — 25 % of the remaining
   time at 12 h before failure with a 6 h window.
2. Reference: the velocity of the first ``reference_s`` (a long regression), frozen — a
   running mean would chase the acceleration. A noise floor ``min_v_ref`` keeps a stable
   point's reference from being ~0.
3. Onset: the velocity is significant (> ``z`` standard errors), above ``onset_factor`` × the
   reference, and above the velocity one ``accel_lag_s`` earlier (positive acceleration),
   for ``onset_persist`` consecutive readings. The onset is the first of them.
4. Fit: from the onset on, each reading adds (window mean time, |v|^(1−α)) to a least-squares
   line over the last ``fit_window_s`` (a bounded deque with running sums: O(1) per reading).
   t_f = t̄ − ȳ/b; R² is the fit quality; the uncertainty is the delta-method standard error
   of the t-intercept, σ_tf² = s²/b²·(1/n + (t_f − t̄)²/Σ(t−t̄)²), inflated by the number of
   readings sharing one smoothing window, because neighbouring smoothed velocities are
   nearly the same number and are not independent points. That inflation is an upper bound:
   on 90 simulated failures (3 mm noise) the error at the first red was within one stated
   uncertainty 90 % of the time and within two always. It covers noise only, not the model
   error below. A fit also needs ``min_fit_span_s`` (two windows) of time, not only points:
   a few hours of correlated velocities can line up into a confident, wrong, steep line.
5. Deceleration: when the velocity falls back to ``release`` × the reference, or the fitted
   slope is no longer negative (b ≥ 0 once the fit has its points and span), the forecast is
   dropped and the detector looks for an onset again.
6. Level: only a forecast with ``min_fit_points`` points and R² ≥ ``r2_min`` counts; the level
   follows the time to failure t_f − t (``horizons_s``: yellow ≤ 7 days, orange ≤ 48 h, red
   ≤ 12 h by default — red leaves half a day to evacuate, orange two days to prepare; a
   forecast already in the past is red). A level needs ``persist`` consecutive counting
   forecasts (the least urgent of them decides), and comes down through ``LevelLatch``: the
   time to failure must exceed the horizon by ``hysteresis`` for ``hold_s``.

Accuracy. Noise-free α = 2 (creep 0): within 1 % of the remaining time from 16 h before
failure; closer in, the smoothing window's curvature bias (the velocity is overestimated by
W²/(20τ²) for α = 2, i.e. the forecast is early) grows to 1.3 % at 12 h with the 6 h window.
With 3 mm GNSS noise at 10-minute readings and α known, the first forecast that makes red
is within 25 % of the remaining time in ~95 % of simulated failures (median error under
10 %; the misses are early).

Known bias (Rose & Hungr 2007, IJRMMS 44:308-320; Carlà et al. 2017, Landslides 14:517-534):
for α ≠ 2 the inverse velocity is curved — convex for α < 2, concave for α > 2 — and even a
perfect tangent to it hits zero at (α − 1)·(t_f − t) instead of t_f − t: the straight line is
early by 2 − α of the remaining time for α < 2 (the safe side) and late by α − 2 for α > 2,
and a fit over a window of the past adds to both. Measured with α = 2 assumed, 3 mm noise,
median error of the first red forecast over 10 failures: α 1.7: −55 %, 1.8: −42 %, 1.9: −21 %,
2.0: −1 %, 2.1: +25 %, 2.2: +61 % (red then comes ~7.5 h instead of 12 h before failure).

Estimating α (``estimate_alpha``, on by default). Voight's law integrates to
v^(1−α) = A·(α − 1)·(t_f − t): for the right α that is a straight line. α is a property of the
material's tertiary creep and holds from the onset of acceleration to failure (Voight 1989:
one α describes a whole accelerating sequence; Bell, Naylor & Main 2011, GJI 185:718-723 and
Bell & Kilburn 2012, Bull. Volcanol. 74:325-339: fit the whole sequence since the onset,
weighting each point by its own error, not a recent window of the linearised rates; Segalini,
Valletta & Carri 2018, Landslides 15:707-715: the fit starts at the onset of acceleration,
found from the velocities themselves). So α is read from the velocities since the onset, not
from the 1-day fit window: a day of velocities changes by a factor 1.2-1.5 at 2-3 days before
failure, too little to show the curvature that α is, while the stretch since the onset
spans a factor of several. The stretch keeps one velocity per ``window_s``/6 (``_keep``;
neighbours share most of a smoothing window anyway), back at most ``alpha_window_s`` (5 fit
windows), and leaves out velocities from a lopsided smoothing window (``lopsided``: a data gap
off the window's centre, where the slope is the velocity at a time other than the window's
mean and would sway α); the fit itself keeps them, its line barely notices. Once the α = 2
line has made a forecast (enough points, span and R²), each α of a grid (1.3–3.0 by 0.05)
gets its line through those velocities, fitted and judged in velocity (weights v^(2α): a
smoothed velocity's error is the same at any speed, so the slow start of the stretch must not
lead, as it would in 1/v); the best grid point is refined by the parabola through its
neighbours, and the curvature of that parabola gives α's standard error (inflated by the 6
kept velocities per smoothing window). The α–t_f trade-off is flat on noisy data, so the
estimate is combined with a prior centred on ``alpha`` (2, Fukuzono's, unless the site knows
better) with spread ``alpha_prior_sd`` (0.3), by precision weighting: a poorly determined α
(a GNSS point with 3 mm of noise, or the first hours after an onset) leans back to the
Fukuzono line, a sharp one (a 0.1 mm extensometer two days before failure: ± 0.01–0.05)
overrules it. When the best α lies on the grid's edge, or the profile is not curved there, α
is not determined and the forecast stays the ``alpha`` line. The forecast then comes from the
line at the combined α through the fit window (the last day: it follows a change of trend);
its uncertainty adds the spread of t_f over α's combined standard error to the line's own.
Evidence says which (``forecast["method"]``: "fukuzono", "voight (alpha given)" or "voight
(alpha estimated)", with ``alpha``, ``alpha_estimate`` and ``alpha_stderr``). On the 40
simulated failures of ACCURACY.md (α 1.7-2.2, gaps of 1-6 h) the forecast at the first red is
within 5 % of the remaining time (it was within 35 % from the fit window alone, whose α a
gap made it give up on). The extra work (a 35 × stretch numpy pass, ≤ 30 velocities a day)
is done only while a forecast stands.

What counts as a forecast (issue 14 item 3). A straight line through a few days of 1/v can be
drawn through any rise of velocity: on a reservoir slope moving 0.2 mm/day a wobble of the
smoothed series gave "failure in 26–36 h" at R² 0.99. So besides ``min_fit_points``, the span
and ``r2_min``, a forecast counts only when the velocity now is at or above ``min_velocity``
(site fusion: the channel's yellow velocity — a slope slower than that is not failing within
days, whatever its line says) and, with a noise figure, when the acceleration is more than a
wobble within the noise: the displacement gained since the onset beyond the reference rate
must exceed ``wobble_sigmas`` (3) times the reading noise (its figure, widened on a smoothed
series). A fit held back so says why in ``forecast_withheld`` (and gives no level). Every
forecast carries its own uncertainty (``uncertainty_s``), which the reasons show.

Gaps: a gap longer than the smoothing window restarts the smoothing (warming up, level 0;
the lag history, any onset run and the persistence memory are cleared), but keeps the
reference, an established fit and α's velocities — they age out of ``fit_window_s`` and
``alpha_window_s`` by themselves; a shorter gap only leaves α's velocities out while it lies
off the centre of the smoothing window.
The latch keeps its level, so a gap never lowers a level by itself. Late or repeated
readings (t at or before the last accepted one) and non-finite readings are ignored: the
previous verdict is returned and nothing changes.

>>> t0 = 1_700_000_000.0
>>> t_f = t0 + 10 * DAY
>>> def displacement(t):  # Voight's law, α = 2, 5 mm/day at t0: v0·τ0·ln(τ0/τ) mm (τ in days)
...     return 5.0 * 10.0 * math.log((t_f - t0) / (t_f - t))
>>> det = InverseVelocityDetector()
>>> for i in range(1333):   # 10-minute readings, no noise, up to 18 h before failure
...     verdict = det.update(t0 + 600.0 * i, displacement(t0 + 600.0 * i))
>>> f = verdict.evidence["forecast"]
>>> verdict.level, abs(f["failure_time"] - t_f) < 0.02 * 18 * HOUR, f["r2"] > 0.999
(3, True, True)
>>> f["method"], round(f["alpha"], 2)
('voight (alpha estimated)', 2.0)
"""

from __future__ import annotations

import functools
import math
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import sqrt
from operator import attrgetter
from typing import Any

import numpy as np

from geowarn.core.levels import LEVELS
from geowarn.detectors.base import StreamingDetector, check_channel, check_int, check_latch, check_slope, check_window
from geowarn.detectors.compact import pack, pack_times, unpack, unpack_into
from geowarn.detectors.latch import LevelLatch
from geowarn.detectors.noise import NoiseFigure
from geowarn.detectors.tangent import ReferenceRate, SlidingSlope, SlopeWindows, white_noise_velocity_se
from geowarn.detectors.verdict import Verdict, new_verdict

DAY = 86400.0
HOUR = 3600.0
_WARMING = "warming up: learning the reference velocity or filling the smoothing window"
_WARMING_VERDICT = Verdict(0, _WARMING, {}, True)
_new = tuple.__new__  # a Verdict without the level check: levels here come from a LevelLatch
#: The verdict on a slope within z standard errors of zero, with no acceleration being
#: fitted and nothing latched: a stable point's usual reading. One shared value rather than
#: new evidence for every such reading.
_STILL = Verdict(0, "", {"significant": False, "accelerating": False, "forecast": None, "time_to_failure_s": None}, False)

#: Default time-to-failure horizons (seconds): yellow within 7 days, orange 48 h, red 12 h.
HORIZONS_S: tuple[tuple[int, float], ...] = ((2, 7 * DAY), (3, 2 * DAY), (4, 12 * HOUR))


@functools.lru_cache(maxsize=256)
def _t90(dof: int) -> float:
    """Student's t quantile for a two-sided 90 % interval (scipy.stats)."""
    # Imported here, when a forecast first needs it: scipy costs every process that loads the
    # detectors (the daemon's main process, for the registry and the console) ~60 MB of RSS.
    from scipy import stats

    return float(stats.t.ppf(0.95, dof))


def interval_90(failure_time: float, uncertainty_s: float, points: int, per_window: int) -> list[float]:
    """A 90 % interval of the failure time: ± t(0.95, dof) standard errors, where the degrees of
    freedom are the fit's independent points (neighbouring smoothed velocities share a
    window: ``points / per_window``) less the line's two parameters, at least one. With few
    independent points the interval is much wider than ± 1.645 σ, which is what a duty
    officer should see on a forecast of a dozen windows."""
    dof = max(1, int(points // max(1, per_window)) - 2)
    half = _t90(dof) * uncertainty_s
    return [failure_time - half, failure_time + half]


def _check_horizons(horizons_s: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    hs = [(int(lvl), float(h)) for lvl, h in horizons_s]
    levels = [lvl for lvl, _ in hs]
    times = [h for _, h in hs]
    if not hs or levels != sorted(set(levels)) or any(not 1 <= lvl <= 4 for lvl in levels):
        raise ValueError(f"horizons_s levels must be distinct, ascending and within 1-4, got {levels}")
    if any(not h > 0 for h in times) or times != sorted(set(times), reverse=True):
        raise ValueError(f"horizons_s must be > 0 and shrink as the level rises (red is the shortest), got {times}")
    return hs


#: Voight's α is searched on this grid (Voight 1989 and later back-analyses: mostly 1.5–2.5)...
ALPHA_GRID = np.round(np.arange(1.3, 3.0 + 1e-9, 0.05), 10)
ALPHA_STEP = 0.05
#: ...and believed with this spread around the given α (2, Fukuzono's) before the data speak:
#: a poorly determined estimate leans back to it, a sharp one (a precise extensometer near
#: failure: ± 0.02–0.1) overrules it.
ALPHA_PRIOR_SD = 0.3
#: α is read from the velocities since the onset, one kept per 1/ALPHA_PER_WINDOW of the
#: smoothing window (their standard error is inflated by this count: they overlap)...
ALPHA_PER_WINDOW = 6
#: ...over at most this many fit windows (``alpha_window_s``, by default)...
ALPHA_FIT_WINDOWS = 5
#: ...leaving out a velocity whose window is lopsided in time (a data gap inside it, off its
#: centre): the window's mean time is off the midpoint of its first and last reading by more
#: than this fraction of their span.
SKEW_TOL = 0.03


def voight_line(x: np.ndarray, v: np.ndarray, alpha: float) -> tuple[float, float, float] | None:
    """Least-squares line of v^(1−α) on x: (t_f, its delta-method standard error, R²), or None
    when the line does not fall (no failure ahead)."""
    y = v ** (1.0 - alpha)
    n = len(x)
    xm, ym = float(x.mean()), float(y.mean())
    xc, yc = x - xm, y - ym
    sxx, sxy, syy = float(xc @ xc), float(xc @ yc), float(yc @ yc)
    if not (sxx > 0 and syy > 0 and n > 2):
        return None
    b = sxy / sxx
    if not b < 0:
        return None
    t_f = xm - ym / b
    s2 = max(0.0, syy - b * sxy) / (n - 2)
    var = s2 / (b * b) * (1.0 / n + (t_f - xm) ** 2 / sxx)
    return t_f, math.sqrt(var), sxy * sxy / (sxx * syy)


def lopsided(tbar: float, first: float, last: float) -> bool:
    """Whether a smoothing window with readings from ``first`` to ``last`` and mean time
    ``tbar`` is lopsided: a data gap inside it, off its centre.

    A regression slope over readings spread evenly (or symmetrically) about their mean time
    is the velocity at that time, exactly for a quadratic path; with a gap off the centre it
    is the velocity at a time off the mean (by the readings' third moment over twice their
    second), a curve is then misread, and α, read from the curvature, swings (a 2.3 h gap on
    a simulated α = 2.03 failure took an estimate from one day of velocities to 2.25 and the
    forecast 29 % early). The mean's distance from the midpoint shows such a gap (a gap of
    length g at one end moves it by g/2), and costs nothing to compute. Such velocities are
    left out of the α estimate; the line through them barely notices, so they stay in the fit.
    """
    return abs(tbar - 0.5 * (first + last)) > SKEW_TOL * (last - first)


def estimate_alpha(x: np.ndarray, v: np.ndarray, per_window: int) -> tuple[float, float] | None:
    """Voight's α from velocities ``v`` at times ``x``: (estimate, standard error), or None.

    For each α of ``ALPHA_GRID`` the line v^(1−α) = a + b·x is fitted and judged by its
    residuals in velocity, v − v̂ (one scale for every α). A smoothed velocity's error is
    about the same at any speed (white reading noise through a fixed window), so the line is
    fitted by weighted least squares with the weights that make its residuals velocity
    residuals to first order, v^(2α) (var v^(1−α) = (α−1)²·v^(−2α)·σ_v²): an unweighted line
    in v^(1−α) would lean on the slow, relatively noisy start of a long stretch (for α = 2,
    1/v of a GNSS velocity that is 5 standard errors above zero is ±20 %). The minimum is
    refined by the parabola through its neighbours, whose curvature gives the standard error
    (inflated by ``per_window``, the velocities that share one smoothing window). None when
    the minimum lies on the grid's edge or the profile is not curved upwards there: α is not
    determined.
    """
    n = len(x)
    if n < 4:
        return None
    g = ALPHA_GRID[:, None]
    u = v / float(v.max())  # weights are relative: scaled to stay within floating point
    y = v[None, :] ** (1.0 - g)
    w = u[None, :] ** (2.0 * g)
    sw = w.sum(axis=1)
    xm = (w @ x) / sw
    ym = (w * y).sum(axis=1) / sw
    xc = x[None, :] - xm[:, None]
    b = (w * xc * (y - ym[:, None])).sum(axis=1) / (w * xc * xc).sum(axis=1)
    pred = ym[:, None] + b[:, None] * xc
    ok = (b < 0) & (pred > 0).all(axis=1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        r = v[None, :] - np.where(pred > 0, pred, 1.0) ** (1.0 / (1.0 - g))
    sse = np.where(ok, (r * r).sum(axis=1), np.inf)
    k = int(np.argmin(sse))
    if k == 0 or k == len(ALPHA_GRID) - 1 or not np.isfinite(sse[k - 1 : k + 2]).all():
        return None
    s0, s1, s2 = float(sse[k - 1]), float(sse[k]), float(sse[k + 1])
    curv = (s0 - 2.0 * s1 + s2) / (ALPHA_STEP * ALPHA_STEP)
    if not curv > 0:
        return None
    a_hat = float(ALPHA_GRID[k]) - ALPHA_STEP * (s2 - s0) / (2.0 * (s0 - 2.0 * s1 + s2))
    var = 2.0 * (s1 / (n - 3)) / curv * per_window
    return a_hat, math.sqrt(var)


@dataclass(frozen=True, slots=True)
class _Params:
    """The validated parameters of an ``InverseVelocityDetector`` and what follows from them:
    one shared, immutable object for every channel built with the same parameters (``_params``),
    rather than ~30 attributes on each of a million detectors."""

    horizons_s: tuple[tuple[int, float], ...]
    window_s: float
    reference_s: float
    min_v_ref: float
    onset_factor: float
    onset_persist: int
    accel_lag_s: float
    release: float
    fit_window_s: float
    min_fit_points: int
    min_fit_span_s: float
    r2_min: float
    alpha: float
    estimate_alpha: bool
    alpha_prior_sd: float
    alpha_window_s: float
    z: float
    persist: int
    hysteresis: float
    hold_s: float
    min_points: int
    min_span: float
    unit: str
    min_velocity: float
    wobble_sigmas: float
    alpha_step_s: float  # one velocity kept for α per this much time
    min_span_s: float  # the smoothing window's coverage a velocity needs
    latch_thresholds: tuple[tuple[int, float], ...]  # the latch judges x = −(time to failure)
    horizon_of: tuple[float | None, ...]  # the horizon by level (0-4)
    quiet: tuple[None, ...]  # `persist` readings in a row without a forecast


#: The public parameters, each read through to the shared ``_Params``.
_PUBLIC = (
    "horizons_s", "window_s", "reference_s", "min_v_ref", "onset_factor", "onset_persist", "accel_lag_s", "release",
    "fit_window_s", "min_fit_points", "min_fit_span_s", "r2_min", "alpha", "estimate_alpha", "alpha_prior_sd",
    "alpha_window_s", "z", "persist", "hysteresis", "hold_s", "min_points", "min_span", "unit", "min_velocity", "wobble_sigmas",
)  # fmt: skip


@functools.lru_cache(maxsize=1024, typed=True)  # typed: True is no `persist` of 1
def _params(
    horizons_s: Sequence[tuple[int, float]],
    window_s: float,
    reference_s: float,
    min_v_ref: float,
    onset_factor: float,
    onset_persist: int,
    accel_lag_s: float | None,
    release: float,
    fit_window_s: float,
    min_fit_points: int,
    min_fit_span_s: float | None,
    r2_min: float,
    alpha: float,
    estimate_alpha: bool,
    alpha_prior_sd: float,
    alpha_window_s: float | None,
    z: float,
    persist: int,
    hysteresis: float,
    hold_s: float,
    min_points: int,
    min_span: float,
    unit: str,
    min_velocity: float,
    wobble_sigmas: float,
) -> _Params:
    """The constructor's checks and the values derived from its parameters, once per set of
    parameters (a bad one raises every time: errors are not cached)."""
    hs = _check_horizons(horizons_s)
    if not min_velocity >= 0:
        raise ValueError(f"min_velocity must be >= 0 (unit/day; 0: no gate), got {min_velocity}")
    if not wobble_sigmas >= 0:
        raise ValueError(f"wobble_sigmas must be >= 0, got {wobble_sigmas}")
    check_window("window_s", window_s)
    check_window("reference_s", reference_s)
    if not min_v_ref > 0:
        raise ValueError(f"min_v_ref must be > 0, got {min_v_ref}")
    if not onset_factor >= 1:
        raise ValueError(f"onset_factor must be >= 1 (an onset is faster than the reference), got {onset_factor}")
    check_int("onset_persist", onset_persist, 1)
    lag = window_s if accel_lag_s is None else accel_lag_s
    if not lag > 0:
        raise ValueError(f"accel_lag_s must be > 0 (or None: the smoothing window), got {accel_lag_s}")
    if not 0 < release <= onset_factor:
        raise ValueError(f"release must be in (0, onset_factor={onset_factor}], got {release}")
    check_window("fit_window_s", fit_window_s)
    check_int("min_fit_points", min_fit_points, 3)
    fit_span = 2 * window_s if min_fit_span_s is None else min_fit_span_s
    if not 0 <= fit_span < fit_window_s:
        raise ValueError(f"min_fit_span_s must be in [0, fit_window_s={fit_window_s}) (None: twice window_s), got {fit_span} (min_fit_span_s={min_fit_span_s})")
    if not 0 <= r2_min <= 1:
        raise ValueError(f"r2_min must be in [0, 1], got {r2_min}")
    if not 1 < alpha < 10:
        raise ValueError(f"alpha must be in (1, 10) (Voight's law accelerates to failure only for alpha > 1), got {alpha}")
    if not alpha_prior_sd > 0:
        raise ValueError(f"alpha_prior_sd must be > 0 (the spread of α around `alpha` before the data speak), got {alpha_prior_sd}")
    alpha_span = ALPHA_FIT_WINDOWS * fit_window_s if alpha_window_s is None else alpha_window_s
    if not alpha_span >= fit_window_s:
        raise ValueError(f"alpha_window_s must be >= fit_window_s={fit_window_s} (None: {ALPHA_FIT_WINDOWS} fit windows), got {alpha_window_s}")
    check_int("persist", persist, 1)
    check_latch(hysteresis, hold_s)
    check_int("min_points", min_points, 3)
    check_slope(min_span, z)
    horizon_of: list[float | None] = [None] * 5
    for lvl, h in hs:
        horizon_of[lvl] = h
    return _Params(
        horizons_s=tuple(hs),
        window_s=float(window_s),
        reference_s=float(reference_s),
        min_v_ref=float(min_v_ref),
        onset_factor=float(onset_factor),
        onset_persist=onset_persist,
        accel_lag_s=float(lag),
        release=float(release),
        fit_window_s=float(fit_window_s),
        min_fit_points=min_fit_points,
        min_fit_span_s=float(fit_span),
        r2_min=float(r2_min),
        alpha=float(alpha),
        estimate_alpha=bool(estimate_alpha),
        alpha_prior_sd=float(alpha_prior_sd),
        alpha_window_s=float(alpha_span),
        z=float(z),
        persist=persist,
        hysteresis=float(hysteresis),
        hold_s=float(hold_s),
        min_points=min_points,
        min_span=float(min_span),
        unit=unit,
        min_velocity=float(min_velocity),
        wobble_sigmas=float(wobble_sigmas),
        alpha_step_s=float(window_s) / ALPHA_PER_WINDOW,
        min_span_s=float(min_span) * float(window_s),
        latch_thresholds=tuple((lvl, -h) for lvl, h in hs),
        horizon_of=tuple(horizon_of),
        quiet=(None,) * persist,
    )


@functools.lru_cache(maxsize=1024, typed=True)
def _channel_params(
    window_s: float,
    interval_s: float,
    hold_s: float,
    noise_mm: float,
    unit: str,
    horizons_s: Sequence[tuple[int, float]],
    alpha: float,
    estimate_alpha: bool,
    persist: int,
    min_velocity: float,
) -> _Params:
    """``InverseVelocityDetector.for_channel``'s parameters, derived and checked once per set."""
    check_channel(interval_s, window_s, noise_mm)
    return _cached(
        _params,
        horizons_s,
        window_s,
        max(3 * DAY, 12 * interval_s),  # reference_s
        white_noise_velocity_se(noise_mm, window_s, interval_s),  # min_v_ref
        # 2x the reference: a slope already accelerating when instrumented learns a high
        # reference, and 3x then came only ~2 days before failure (ACCURACY.md).
        2.0,  # onset_factor
        max(2, min(6, round(HOUR / interval_s))),  # onset_persist
        None,  # accel_lag_s
        1.0,  # release
        max(DAY, 36 * interval_s, 4 * window_s),  # fit_window_s
        max(6, min(18, round(3 * HOUR / interval_s))),  # min_fit_points
        None,  # min_fit_span_s
        0.8,  # r2_min
        alpha,
        estimate_alpha,
        ALPHA_PRIOR_SD,
        None,  # alpha_window_s
        5.0,  # z
        persist,
        0.1,  # hysteresis
        hold_s,
        max(3, min(6, int(window_s / interval_s))),  # min_points
        0.5,  # min_span
        unit,
        min_velocity,
        3.0,  # wobble_sigmas
    )


def _cached(build: Callable[..., _Params], *args: Any) -> _Params:
    """``build(*args)`` from its cache; an unhashable argument (horizons as lists, say) is
    checked all the same, only not cached (a check's own TypeError is raised again)."""
    try:
        return build(*args)
    except TypeError:
        uncached: Callable[..., _Params] = build.__wrapped__  # type: ignore[attr-defined]
        return uncached(*args)


_EMPTY: array[float] = array("d")  # an empty pair array to read (never written)
_NO_TIMES, _NO_VALUES = pack_times(()), pack(())  # an empty window, packed


def _interleave(a: Sequence[float], b: Sequence[float]) -> array[float]:
    """[a0, b0, a1, b1, ...] unboxed, up to the shorter of the two (as ``zip``)."""
    n = min(len(a), len(b))
    out = [0.0] * (2 * n)
    out[0::2] = a[:n]
    out[1::2] = b[:n]
    return array("d", out)


def _unpacked_pairs(ts: Any, vs: Any) -> array[float]:
    """``_interleave(unpack(ts), unpack(vs))`` of two packed strings, read straight into arrays
    (no float object of each value): the lag history, every time a parked channel is woken. A
    part that is not a string goes the old way, to fail as it did."""
    if type(ts) is not str or type(vs) is not str:
        return _interleave(unpack(ts), unpack(vs))
    a = array("d")
    unpack_into(a, ts)
    b = array("d")
    unpack_into(b, vs)
    n = min(len(a), len(b))
    out = array("d", bytes(16 * n))
    out[0::2] = a if len(a) == n else a[:n]
    out[1::2] = b if len(b) == n else b[:n]
    return out


@functools.lru_cache(maxsize=64)
def _fresh_fit_state(window_s: float) -> dict[str, Any]:
    """The snapshot of an empty fit of ``window_s`` (shared: handed out only as a copy, ``_fresh_fit_copy``)."""
    return SlidingSlope(window_s).snapshot()


@functools.lru_cache(maxsize=64)
def _fresh_latch_state(thresholds: tuple[tuple[int, float], ...], hysteresis: float, hold_s: float) -> dict[str, Any]:
    """The snapshot of a fresh latch (shared: handed out only as a copy; its values are immutable)."""
    return LevelLatch(list(thresholds), hysteresis, hold_s).snapshot()


def _fresh_fit_copy(window_s: float) -> dict[str, Any]:
    """A copy of ``_fresh_fit_state``: strings, and a dict of strings (``SlopeWindows.snapshot``),
    copied as such, not walked (most forecasts have no fit: this is in every save)."""
    state = _fresh_fit_state(window_s)
    return {k: dict(v) if type(v) is dict else v for k, v in state.items()}


class InverseVelocityDetector(StreamingDetector):
    """Failure-time forecast from the inverse velocity since the onset of acceleration.

    Evidence: ``velocity_per_day``, ``stderr_per_day``, ``v_ref_per_day`` (the reference
    after its floor), ``accelerating`` (an onset is being followed), ``fit_r2``/``fit_points``
    (the current fit, or None), ``time_to_failure_s`` and ``forecast`` — None, or
    {"failure_time", "r2", "uncertainty_s", "points", "onset", "alpha", "alpha_estimate",
    "alpha_stderr", "method"} (epoch seconds) when the fit has enough points and span and
    R² ≥ ``r2_min``; from yellow up also ``horizon_s``.
    Warming-up verdicts carry no evidence. A level-0 reading with no acceleration followed
    and a slope within its noise (|v| ≤ z·se) gets one shared verdict: ``significant`` =
    False, ``accelerating`` = False, ``forecast`` and ``time_to_failure_s`` None.
    See the module docstring.

    Memory (issue 17): a national fleet holds a million of these, so the parameters live in
    one ``_Params`` shared by every detector built with the same ones (read-only public
    attributes read through to it); the lag history and α's velocities are (t, v) pairs
    unboxed in one ``array('d')`` each, with a head index; the fit and the latch are made
    only when an onset or a forecast first needs them (a fresh one and an absent one
    snapshot alike).
    """

    __slots__ = (
        "_anchor",
        "_fit",
        "_hh",
        "_hist",
        "_last",
        "_last_t",
        "_latch",
        "_onset",
        "_own",
        "_p",
        "_recent",
        "_ref",
        "_run",
        "_sig",
        "_smooth",
        "_th",
        "_trend",
        "_ts",
        "_v_ref",
        "_widen",
        "_windows",
        "noise",
    )  # fmt: skip

    horizons_s = property(attrgetter("_p.horizons_s"))
    window_s = property(attrgetter("_p.window_s"))
    reference_s = property(attrgetter("_p.reference_s"))
    min_v_ref = property(attrgetter("_p.min_v_ref"))
    onset_factor = property(attrgetter("_p.onset_factor"))
    onset_persist = property(attrgetter("_p.onset_persist"))
    accel_lag_s = property(attrgetter("_p.accel_lag_s"))
    release = property(attrgetter("_p.release"))
    fit_window_s = property(attrgetter("_p.fit_window_s"))
    min_fit_points = property(attrgetter("_p.min_fit_points"))
    min_fit_span_s = property(attrgetter("_p.min_fit_span_s"))
    r2_min = property(attrgetter("_p.r2_min"))
    alpha = property(attrgetter("_p.alpha"))
    estimate_alpha = property(attrgetter("_p.estimate_alpha"))
    alpha_prior_sd = property(attrgetter("_p.alpha_prior_sd"))
    alpha_window_s = property(attrgetter("_p.alpha_window_s"))
    z = property(attrgetter("_p.z"))
    persist = property(attrgetter("_p.persist"))
    hysteresis = property(attrgetter("_p.hysteresis"))
    hold_s = property(attrgetter("_p.hold_s"))
    min_points = property(attrgetter("_p.min_points"))
    min_span = property(attrgetter("_p.min_span"))
    unit = property(attrgetter("_p.unit"))
    min_velocity = property(attrgetter("_p.min_velocity"))
    wobble_sigmas = property(attrgetter("_p.wobble_sigmas"))

    def __init__(
        self,
        *,
        horizons_s: Sequence[tuple[int, float]] = HORIZONS_S,
        window_s: float = 6 * HOUR,
        reference_s: float = 3 * DAY,
        min_v_ref: float = 7.0,
        onset_factor: float = 3.0,
        onset_persist: int = 6,
        accel_lag_s: float | None = None,
        release: float = 1.0,
        fit_window_s: float = DAY,
        min_fit_points: int = 18,
        min_fit_span_s: float | None = None,
        r2_min: float = 0.8,
        alpha: float = 2.0,
        estimate_alpha: bool = True,
        alpha_prior_sd: float = ALPHA_PRIOR_SD,
        alpha_window_s: float | None = None,
        z: float = 5.0,
        persist: int = 3,
        hysteresis: float = 0.1,
        hold_s: float = 0.0,
        min_points: int = 6,
        min_span: float = 0.5,
        unit: str = "mm",
        windows: SlopeWindows | None = None,
        noise: NoiseFigure | None = None,
        min_velocity: float = 0.0,
        wobble_sigmas: float = 3.0,
    ) -> None:
        p = _cached(
            _params,
            horizons_s if isinstance(horizons_s, tuple) else tuple(horizons_s),
            window_s, reference_s, min_v_ref, onset_factor, onset_persist, accel_lag_s, release, fit_window_s,
            min_fit_points, min_fit_span_s, r2_min, alpha, estimate_alpha, alpha_prior_sd, alpha_window_s, z, persist,
            hysteresis, hold_s, min_points, min_span, unit, min_velocity, wobble_sigmas,
        )  # fmt: skip
        self._init(p, windows, noise)

    def _init(self, p: _Params, windows: SlopeWindows | None, noise: NoiseFigure | None) -> None:
        self._p = p
        self.noise = noise
        self._own = windows is None
        self._windows = SlopeWindows() if windows is None else windows
        self._ts = self._windows.ts  # the same list for the windows' lifetime
        self._smooth = self._windows.view(p.window_s)
        self._reset()

    @classmethod
    def for_channel(
        cls,
        *,
        window_s: float = 6 * HOUR,
        interval_s: float = 600.0,
        hold_s: float = 6 * HOUR,
        noise_mm: float = 3.0,
        unit: str = "mm",
        horizons_s: Sequence[tuple[int, float]] = HORIZONS_S,
        alpha: float = 2.0,
        estimate_alpha: bool = True,
        persist: int = 3,
        windows: SlopeWindows | None = None,
        noise: NoiseFigure | None = None,
        min_velocity: float = 0.0,
    ) -> InverseVelocityDetector:
        """The default detector of a displacement-like channel read every ``interval_s``.

        Smooths over ``window_s`` (the channel's velocity window); the reference spans
        max(3 days, 12 intervals) with a floor of one white-noise standard error of the
        smoothed velocity for ``noise_mm``; the onset needs an hour of readings (at least
        two), a forecast three hours of them (at least six) spanning two windows, within a
        fit window of max(1 day, 36 intervals, 4 windows).
        A level is held ``hold_s`` (6 h) after its forecast goes: a failure forecast is not
        withdrawn on one poor fit.
        ``noise``, a figure from ``detectors/noise.py`` (site fusion's), replaces ``noise_mm``
        and turns on the noise rules of the tangent angle's reference (``ReferenceRate``): the
        velocity's standard error never below the figure's, widened on a smoothed series, and
        the reference velocity meaningful before the detector judges, and the wobble test.
        ``min_velocity`` (the channel's yellow velocity, from site fusion): no forecast below it.
        Every channel with the same parameters shares their checks and derived values.
        """
        if noise is not None:
            noise_mm = noise.sigma
        p = _cached(
            _channel_params,
            window_s, interval_s, hold_s, noise_mm, unit,
            horizons_s if isinstance(horizons_s, tuple) else tuple(horizons_s),
            alpha, estimate_alpha, persist, min_velocity,
        )  # fmt: skip
        det = cls.__new__(cls)
        det._init(p, windows, noise)
        return det

    def _reset(self) -> None:
        if self._own:
            self._windows.clear()
        p = self._p
        self._ref = ReferenceRate(p.reference_s, p.min_points, noise=self.noise)
        self._sig = 0.0  # σ·DAY of the noise figure once the reference froze (0: no floor)
        self._widen = 1.0
        # (window mean time, |v|^(1−α)) since the onset: made at the onset (None: empty).
        self._fit: SlidingSlope | None = None
        self._latch: LevelLatch | None = None  # made when a forecast first needs it (None: fresh)
        self._onset: float | None = None
        self._anchor: tuple[float, float] | None = None  # (t̄, window mean value) at the onset
        # t̄, |v|, t̄, |v|... since the onset, for α, from index _th on (None: none yet)
        self._trend: array[float] | None = None
        self._th = 0
        self._v_ref: float | None = None  # max(|reference rate|, floor), once the reference is frozen
        self._last_t: float | None = None
        self._last = _WARMING_VERDICT
        self._restart()

    def _restart(self) -> None:
        """Forget what a gap breaks: the lag history, an onset run, the persistence memory."""
        self._hist = array("d")  # t, |v|, t, |v|... of judged readings, from index _hh on
        self._hh = 0
        self._run: tuple[tuple[float, float, float], ...] = ()  # (t, t̄, y) of the current onset run
        # Time to failure, or None: the last `persist` (no forecast in any: the shared p.quiet).
        self._recent: tuple[float | None, ...] = ()

    def _new_fit(self) -> SlidingSlope:
        fit = self._fit = SlidingSlope(self._p.fit_window_s)
        return fit

    def _new_latch(self) -> LevelLatch:
        p = self._p
        latch = self._latch = LevelLatch(p.latch_thresholds, p.hysteresis, p.hold_s)
        return latch

    def _y(self, av: float) -> float:
        alpha = self._p.alpha
        return 1.0 / av if alpha == 2.0 else av ** (1.0 - alpha)

    def _drop(self) -> None:
        self._onset = None
        self._anchor = None
        self._fit = None  # a cleared fit is a fresh one
        self._trend = None
        self._th = 0

    def _keep(self, tbar: float, av: float, first: float, last: float) -> None:
        """Keep a velocity since the onset for α: one per ``window_s / ALPHA_PER_WINDOW``, none
        from a lopsided window, none older than ``alpha_window_s``."""
        trend = self._trend
        h = self._th
        p = self._p
        if lopsided(tbar, first, last) or (trend is not None and tbar < trend[-2] + p.alpha_step_s):
            return
        if trend is None:
            trend = self._trend = array("d")
        trend.append(tbar)
        trend.append(av)
        while trend[h] < tbar - p.alpha_window_s:
            h += 2
        if h >= 32 and 4 * h >= len(trend):
            del trend[:h]  # one memmove for many dropped
            h = 0
        self._th = h

    def _voight(self, fit: SlidingSlope, per_window: int) -> dict[str, Any] | None:
        """The forecast with α estimated from the velocities since the onset, or None to keep
        the given α.

        See "Estimating α" in the module docstring. ``per_window``: readings per smoothing
        window, the inflation of the fit window's line for neighbouring velocities that are
        not independent.
        """
        trend, h = self._trend or _EMPTY, self._th
        est = estimate_alpha(np.array(trend[h::2]), np.array(trend[h + 1 :: 2]), ALPHA_PER_WINDOW)
        if est is None:
            return None
        p = self._p
        x, y = fit.points()
        v = np.asarray(y) ** (-1.0 / (p.alpha - 1.0))  # back to |v| (per day)
        a_hat, a_sd = est
        w_data, w_prior = 1.0 / (a_sd * a_sd), 1.0 / (p.alpha_prior_sd * p.alpha_prior_sd)
        a = (a_hat * w_data + p.alpha * w_prior) / (w_data + w_prior)
        a_post_sd = 1.0 / math.sqrt(w_data + w_prior)
        line = voight_line(np.asarray(x), v, a)
        lo, hi = voight_line(np.asarray(x), v, a - ALPHA_STEP), voight_line(np.asarray(x), v, a + ALPHA_STEP)
        if line is None or lo is None or hi is None:
            return None
        t_f, tf_sd, r2 = line
        dtf = (hi[0] - lo[0]) / (2 * ALPHA_STEP)
        return {
            "failure_time": t_f,
            "r2": r2,
            "uncertainty_s": math.sqrt(tf_sd * tf_sd * per_window + (dtf * a_post_sd) ** 2),
            "alpha": a,
            "alpha_estimate": a_hat,
            "alpha_stderr": a_sd,
            "method": "voight (alpha estimated)",
        }

    def _withheld(self, av: float, v_ref: float, tbar: float, smooth: Any) -> str | None:
        """Why a fitted forecast does not count (see "What counts as a forecast"), or None."""
        p = self._p
        if av < p.min_velocity:
            return f"velocity {av:.3g} {p.unit}/day below the yellow velocity {p.min_velocity:g}: no failure within days"
        anchor = self._anchor
        if self.noise is not None and anchor is not None and p.wobble_sigmas > 0:
            fig = self._ref.figure or self.noise
            sigma = fig.sigma * self._widen
            gained = abs(smooth.v0 + smooth.sv / smooth.n - anchor[1]) - v_ref * (tbar - anchor[0]) / DAY
            if gained < p.wobble_sigmas * sigma:
                return (
                    f"{gained:.3g} {p.unit} gained beyond the reference rate since the onset, within "
                    f"{p.wobble_sigmas:g} × the reading noise {sigma:.3g} {p.unit}: a wobble, not an acceleration"
                )
        return None

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
            self._restart()
        p = self._p
        v_ref = self._v_ref
        if v_ref is None:
            ref = self._ref
            v_ref = self._v_ref = ref.learn(t, value, p.min_v_ref)
            if v_ref is None:
                if ref.pending is not None:
                    self._last = new_verdict(0, ref.pending, {"reference_pending": True, **(self.noise.evidence() if self.noise else {})}, True)
                    return self._last
                self._last = _WARMING_VERDICT
                return _WARMING_VERDICT
            if ref.figure is not None:
                self._sig, self._widen = ref.figure.sigma * DAY, ref.widen
        f = smooth.fit() if smooth.n >= p.min_points and t - smooth.first >= p.min_span_s else None
        if f is None:
            self._last = _WARMING_VERDICT
            return _WARMING_VERDICT
        v, se, tbar = f
        if self._sig:
            # Never less noise than the channel's figure; a smoothed series' readings count
            # for fewer (see ReferenceRate in detectors/tangent.py).
            sxx = smooth.stt - smooth.st * smooth.st / smooth.n
            floor_se = self._sig / sqrt(sxx)
            se = (se if se > floor_se else floor_se) * self._widen  # noqa: FURB136 (max() costs a call per reading)
        av = v if v >= 0.0 else -v

        # The lag history: (t, |v|) pairs from index h on; the first is the newest at or
        # before the horizon (while there is a newer one).
        hist = self._hist
        hist.append(t)
        hist.append(av)
        horizon = t - p.accel_lag_s
        h = self._hh
        if h + 2 < len(hist) and hist[h + 2] <= horizon:
            newest = len(hist) - 2
            h += 2
            while h < newest and hist[h + 2] <= horizon:
                h += 2
            if h >= 16 and 8 * h >= len(hist):
                del hist[:h]  # one memmove for many dropped
                h = 0
            self._hh = h
        fit = self._fit
        significant = av > p.z * se
        if self._onset is None:
            if significant and av > p.onset_factor * v_ref and hist[h] <= horizon and av > hist[h + 1]:
                run = self._run = (*self._run, (t, tbar, self._y(av)))
                if len(run) >= p.onset_persist:
                    self._onset = run[0][0]
                    self._anchor = (tbar, smooth.v0 + smooth.sv / smooth.n)
                    if fit is None:
                        fit = self._new_fit()
                    for _, x, y in run:
                        fit.push(x, y)
                    self._run = ()
            elif self._run:
                self._run = ()
            if self._onset is None and not significant and self._recent is p.quiet and self._latch is None:
                # A stable point's usual reading, in short: no onset, no forecast now nor in
                # the last `persist`, nothing latched, the slope within its noise.
                self._last = _STILL
                return _STILL
        elif av <= p.release * v_ref:
            self._drop()  # back to the reference: the acceleration is over
        else:
            if fit is None:
                fit = self._new_fit()
            fit.push(tbar, self._y(av))
            self._keep(tbar, av, smooth.first, t)

        forecast: dict[str, Any] | None = None
        withheld_forecast: dict[str, Any] | None = None
        ttf: float | None = None
        r2: float | None = None
        n = 0 if self._onset is None or fit is None else fit.n
        # Neighbouring smoothed velocities share most of their window, so a fit needs a span
        # of time as well as a count of points before its slope says anything.
        if n >= p.min_fit_points and fit is not None and fit.span() >= p.min_fit_span_s:
            n, xbar, ybar, sxx, sxy, syy = fit.centred()
            b = sxy / sxx if sxx > 0 else 0.0
            if not b < 0:
                self._drop()  # 1/v no longer falls: decelerating or steady
                n = 0
            else:
                r2 = sxy * sxy / (sxx * syy) if syy > 0 else 1.0
                if r2 >= p.r2_min:
                    t_f = xbar - ybar / b
                    s2 = max(0.0, syy - b * sxy) / (n - 2)
                    var = s2 / (b * b) * (1.0 / n + (t_f - xbar) ** 2 / sxx) * smooth.n
                    forecast = {
                        "failure_time": t_f,
                        "r2": r2,
                        "uncertainty_s": math.sqrt(var),
                        "points": n,
                        "onset": self._onset,
                        "alpha": p.alpha,
                        "alpha_estimate": None,
                        "alpha_stderr": None,
                        "method": "fukuzono" if p.alpha == 2.0 else "voight (alpha given)",
                    }
                    if p.estimate_alpha:
                        voight = self._voight(fit, smooth.n)
                        if voight is not None:
                            forecast.update(voight)
                    forecast["interval_90"] = interval_90(forecast["failure_time"], forecast["uncertainty_s"], n, smooth.n)
                    withheld = self._withheld(av, v_ref, tbar, smooth)
                    if withheld is not None:
                        forecast["withheld"] = withheld
                        withheld_forecast = forecast
                        forecast = None
                    else:
                        ttf = forecast["failure_time"] - t

        recent = self._recent
        quiet = p.quiet
        if ttf is not None or recent is not quiet:  # else no forecast again: nothing changes
            recent = (*recent, ttf) if len(recent) < p.persist else (*recent[1:], ttf)
            self._recent = recent = quiet if recent == quiet else recent
        latch = self._latch
        if len(recent) < p.persist:
            level = 0 if latch is None else latch.level  # a level needs `persist` forecasts in a row; until then no change
        elif ttf is None and (latch is None or latch.level == 0):
            level = 0  # no forecast now, nothing latched: the latch would say 0 (quiet path)
        else:
            worst = -math.inf if None in recent else -max(r for r in recent if r is not None)
            level = (self._new_latch() if latch is None else latch).update(t, worst)
        accelerating = self._onset is not None
        if level == 0 and not accelerating and not significant:
            self._last = _STILL  # the slope is within its noise: nothing to tell
            return _STILL
        evidence: dict[str, Any] = {
            "velocity_per_day": v,
            "stderr_per_day": se,
            "v_ref_per_day": v_ref,
            "accelerating": accelerating,
            "fit_r2": r2,
            "fit_points": n if accelerating else 0,
            "time_to_failure_s": ttf,
            "forecast": forecast,
        }
        if withheld_forecast is not None:
            evidence["forecast_withheld"] = withheld_forecast["withheld"]
            evidence["withheld_failure_time"] = withheld_forecast["failure_time"]
        if self._sig:
            evidence.update(self._ref.evidence())
        if level == 0:
            self._last = _new(Verdict, (0, "", evidence, False))
            return self._last
        h_s = p.horizon_of[level]
        assert h_s is not None  # the latch's levels are the horizons'
        evidence["horizon_s"] = h_s
        if forecast is None:
            why = f"failure forecast withdrawn or not yet confirmed; {LEVELS[level].colour} held"
        else:
            why = (
                f"inverse-velocity failure forecast in {ttf / HOUR:.1f} h (± {forecast['uncertainty_s'] / HOUR:.1f} h, "  # type: ignore[operator]
                f"R² {forecast['r2']:.2f}, {forecast['points']} points since the onset; ≤ {LEVELS[level].colour} {h_s / HOUR:g} h, or held)"
            )
        self._last = new_verdict(level, why, evidence)
        return self._last

    def snapshot(self) -> dict[str, Any]:
        p = self._p
        trend, th = self._trend, self._th
        hist, hh = self._hist, self._hh
        fit, latch = self._fit, self._latch
        state = {
            "reference": self._ref.snapshot(),
            "fit": _fresh_fit_copy(p.fit_window_s) if fit is None else fit.snapshot(),
            "onset": self._onset,
            "anchor": None if self._anchor is None else list(self._anchor),
            "trend_t": _NO_TIMES if trend is None else pack_times(trend[th::2]),
            "trend_v": _NO_VALUES if trend is None else pack(trend[th + 1 :: 2]),
            "hist_t": pack_times(hist[hh::2]),
            "hist_v": pack(hist[hh + 1 :: 2]),
            "run": [list(r) for r in self._run],
            "recent": list(self._recent),
            "latch": dict(_fresh_latch_state(p.latch_thresholds, p.hysteresis, p.hold_s)) if latch is None else latch.snapshot(),
            "last_t": self._last_t,
            "last": self._last.to_dict(),
        }
        if self._own:
            state["smooth"] = self._windows.snapshot()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        p = self._p
        if self._own:
            self._windows.restore(state["smooth"])
        self._ref.restore(state["reference"])
        self._onset = None if state["onset"] is None else float(state["onset"])
        if self._onset is not None or state["fit"] != _fresh_fit_state(p.fit_window_s):
            self._new_fit().restore(state["fit"])
        anchor = state.get("anchor")  # a snapshot from before the wobble test has none: no test
        self._anchor = None if anchor is None else (float(anchor[0]), float(anchor[1]))
        # A snapshot from before α was read since the onset has no trend; most have an empty one.
        if "trend_t" in state and (state["trend_t"] != _NO_TIMES or state["trend_v"] != _NO_VALUES):
            trend = _unpacked_pairs(state["trend_t"], state["trend_v"])
            self._trend = trend if trend else None
        self._hist = _unpacked_pairs(state["hist_t"], state["hist_v"])
        self._run = tuple((float(a), float(b), float(c)) for a, b, c in state["run"])
        recent = tuple(None if r is None else float(r) for r in state["recent"])[-p.persist :]
        self._recent = p.quiet if recent == p.quiet else recent
        if state["latch"] != _fresh_latch_state(p.latch_thresholds, p.hysteresis, p.hold_s):
            self._new_latch().restore(state["latch"])
        self._last_t = None if state["last_t"] is None else float(state["last_t"])
        self._last = Verdict.from_dict(state["last"])
