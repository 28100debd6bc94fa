"""Batch reference and contract cases of ``geowarn.detectors.inverse_velocity`` (the forecast)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from geowarn.detectors.inverse_velocity import ALPHA_FIT_WINDOWS, ALPHA_PRIOR_SD, DAY, HORIZONS_S, HOUR, InverseVelocityDetector
from geowarn.simulators.slope import VoightFailure
from oracles.contract import ContractCase
from oracles.tangent import accepted_readings, batch_latch, batch_reference_rate, batch_smoothed


# -- batch reference -------------------------------------------------------------------------
# Written apart from the streaming class: velocities from the batch smoother of
# detectors/tangent.py (fresh centred regressions), the onset and the fit re-done from plain
# lists with numpy at every reading, the latch as a plain loop.


def forecast_batch(
    t: Any,
    v: Any,
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
) -> tuple[np.ndarray, list[float | None]]:
    """Batch reference of ``InverseVelocityDetector``: (level, forecast failure time or None)
    after each reading."""
    t = np.asarray(t, dtype=float)
    v = np.asarray(v, dtype=float)
    lag = window_s if accel_lag_s is None else accel_lag_s
    fit_span = 2 * window_s if min_fit_span_s is None else min_fit_span_s
    alpha_span = ALPHA_FIT_WINDOWS * fit_window_s if alpha_window_s is None else alpha_window_s
    idx = accepted_readings(t, v)
    ta, va = t[idx], v[idx]
    sm = batch_smoothed(ta, va, window_s, min_points, min_span)
    ref = batch_reference_rate(ta, va, reference_s, min_points)
    judged = sm["ready"].copy()
    judged[: (ref[0] if ref else len(ta))] = False
    v_ref = max(abs(ref[1]), min_v_ref) if ref else math.inf
    speed = np.abs(sm["v"])
    thresholds = [(lvl, -h) for lvl, h in horizons_s]

    levels = np.zeros(len(t), dtype=int)
    failure: list[float | None] = [None] * len(t)
    take = np.zeros(len(t), dtype=bool)
    take[idx] = True
    pos = np.full(len(t), -1)
    pos[idx] = np.arange(len(idx))
    latch: list[Any] = [0, None]
    hist_t: list[float] = []
    hist_v: list[float] = []
    run: list[tuple[float, float]] = []
    onset: float | None = None
    pts: list[tuple[float, float, float]] = []  # (t̄, y, |v|) in the fit
    kept: list[tuple[float, float]] = []  # (t̄, |v|) since the onset, for α
    recent: list[float | None] = []
    said, said_tf = 0, None
    for j in range(len(t)):
        if not take[j]:
            levels[j], failure[j] = said, said_tf
            continue
        k = pos[j]
        if sm["restart"][k]:
            hist_t, hist_v, run, recent = [], [], [], []
        if not judged[k]:
            levels[j], failure[j] = said, said_tf = 0, None
            continue
        now, av, xbar_w = ta[k], float(speed[k]), float(sm["tbar"][k])
        y_now = 1.0 / av if alpha == 2.0 else av ** (1.0 - alpha)
        hist_t.append(now)
        hist_v.append(av)
        i_lag = int(np.searchsorted(hist_t, now - lag, side="right")) - 1
        if onset is None:
            rising = i_lag >= 0 and av > hist_v[i_lag]
            if av > z * sm["se"][k] and av > onset_factor * v_ref and rising:
                run.append((now, xbar_w))
                if len(run) >= onset_persist:
                    onset = run[0][0]
                    for rt, rx in run:
                        sp = float(speed[np.searchsorted(ta, rt)])
                        pts.append((rx, 1.0 / sp if alpha == 2.0 else sp ** (1.0 - alpha), sp))
                    run = []
            else:
                run = []
        elif av <= release * v_ref:
            onset, pts, kept = None, [], []
        else:
            pts.append((xbar_w, y_now, av))
            # α's velocities: a window's first reading is count − 1 readings back; its mean time
            # must sit near the midpoint of its first and last reading (no gap off its centre)
            w_first = float(ta[k - int(sm["count"][k]) + 1])
            centred = abs(xbar_w - (w_first + now) / 2) <= 0.03 * (now - w_first)
            if centred and (not kept or xbar_w >= kept[-1][0] + window_s / 6):
                kept = [q for q in kept if q[0] >= xbar_w - alpha_span] + [(xbar_w, av)]
        # the fit window: a gap in t̄ longer than it starts afresh; older points leave it
        if pts:
            xs = np.array([p[0] for p in pts])
            breaks = np.flatnonzero(np.diff(xs) > fit_window_s)
            first = int(breaks[-1]) + 1 if len(breaks) else 0
            keep = [p for p in pts[first:] if p[0] >= pts[-1][0] - fit_window_s]
            pts = keep
        tf: float | None = None
        if onset is not None and len(pts) >= min_fit_points and pts[-1][0] - pts[0][0] >= fit_span:
            x = np.array([p[0] for p in pts])
            y = np.array([p[1] for p in pts])
            xc = x - x.mean()
            yc = y - y.mean()
            b = float(xc @ yc) / float(xc @ xc)
            if not b < 0:
                onset, pts, kept = None, [], []
            else:
                r2 = float(xc @ yc) ** 2 / (float(xc @ xc) * float(yc @ yc))
                if r2 >= r2_min:
                    tf = float(x.mean() - y.mean() / b)
                    if estimate_alpha:
                        sp_pts = np.array([p[2] for p in pts])
                        kx = np.array([q[0] for q in kept])
                        kv = np.array([q[1] for q in kept])
                        tf = _batch_voight_tf(x, sp_pts, kx, kv, alpha, alpha_prior_sd, tf)
        recent = (recent + [None if tf is None else tf - now])[-persist:]
        if len(recent) < persist:
            said = int(latch[0])
        else:
            worst = -math.inf if any(r is None for r in recent) else -max(r for r in recent if r is not None)
            said = batch_latch(now, worst, latch, thresholds, hysteresis, hold_s)
        levels[j], failure[j] = said, tf
        said_tf = tf
    return levels, failure


def _batch_voight_tf(x: np.ndarray, sp: np.ndarray, kx: np.ndarray, kv: np.ndarray, alpha0: float, prior_sd: float, fallback: float) -> float:
    """Batch restatement of the α estimate and the forecast it gives: α from the velocities
    kept since the onset (``kx``, ``kv``) by a plain loop of ``numpy.polyfit`` lines over the
    grid, a quadratic through the best three, the precision-weighted mean with the prior;
    then a last ``polyfit`` at that α through the fit window's velocities (``x``, ``sp``)."""
    if len(kx) < 4:
        return fallback
    grid = [1.3 + 0.05 * i for i in range(35)]
    sse = []
    for a in grid:
        # polyfit's w multiplies the residuals: 1/σ of v^(1−α), σ_v the same for every velocity
        b, c = np.polyfit(kx, kv ** (1.0 - a), 1, w=(kv / kv.max()) ** a)
        line = c + b * kx
        if b >= 0 or np.any(line <= 0):
            sse.append(math.inf)
            continue
        resid = kv - line ** (-1.0 / (a - 1.0))  # v − v̂
        sse.append(float(resid @ resid))
    k = int(np.argmin(sse))
    if k in (0, len(grid) - 1) or not all(math.isfinite(e) for e in sse[k - 1 : k + 2]):
        return fallback
    q2, q1, _ = np.polyfit(grid[k - 1 : k + 2], sse[k - 1 : k + 2], 2)
    if not q2 > 0:
        return fallback
    a_hat = -q1 / (2 * q2)
    var = sse[k] / (len(kx) - 3) / q2 * 6  # 2·s²/SSE'' with SSE'' = 2·q2; 6 kept per smoothing window
    a = (a_hat / var + alpha0 / prior_sd**2) / (1 / var + 1 / prior_sd**2)
    fits = [np.polyfit(x, sp ** (1.0 - aa), 1) for aa in (a, a - 0.05, a + 0.05)]
    if any(not f[0] < 0 for f in fits):
        return fallback
    return float(-fits[0][1] / fits[0][0])


# -- contract cases --------------------------------------------------------------------------


def voight_gnss(seed: int, *, alpha: float = 2.0, days: float = 10.0, sigma_mm: float = 3.0, interval_s: float = 600.0) -> tuple[np.ndarray, np.ndarray, float]:
    """A GNSS component (``sigma_mm`` white noise) of a Voight failure on day ``days``, at the
    red velocity (120 mm/day) one day before: (t, displacement, t_f)."""
    rng = np.random.default_rng(seed)
    t0 = 1_764_374_400.0
    s = VoightFailure.reaching(t0, t0 + days * DAY, alpha=alpha)
    t = t0 + interval_s * np.arange(int(days * DAY / interval_s), dtype=np.float64)
    t = t[t < s.t_clamp]
    return t, np.round(s.displacement(t) + sigma_mm * rng.standard_normal(len(t)), 2), s.t_f


def _failing(seed: int) -> tuple[np.ndarray, np.ndarray]:
    t, d, _ = voight_gnss(seed, alpha=(1.8, 2.0, 2.2)[seed % 3])
    return t, d


def _stall(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Voight acceleration that stalls 18 h before the would-be failure and decelerates back
    to creep (exponentially, over half a day): the forecast must come and go."""
    t, d, t_f = voight_gnss(seed, days=10.0, sigma_mm=0.0)
    rng = np.random.default_rng(seed + 1000)
    stall = t_f - 0.75 * DAY
    keep = t < stall
    v_stall = (d[keep][-1] - d[keep][-40]) / (t[keep][-1] - t[keep][-40])  # mm/s at the stall
    tt = np.concatenate([t[keep], stall + 600.0 * np.arange(1, int(4 * DAY / 600.0))])
    tau = 0.5 * DAY
    after = tt > stall
    dd = np.empty(len(tt))
    dd[~after] = d[keep]
    dt = tt[after] - stall
    dd[after] = d[keep][-1] + v_stall * tau * (1 - np.exp(-dt / tau)) + 0.2 * dt / DAY
    return tt, np.round(dd + 3.0 * rng.standard_normal(len(tt)), 2)


def contract_cases() -> list[ContractCase]:
    return [
        ContractCase(
            "inverse_velocity/voight-failure",
            InverseVelocityDetector,
            _failing,
            lambda t, v: forecast_batch(t, v)[0],
            reaches=4,
        ),
        ContractCase(
            "inverse_velocity/stall",
            lambda: InverseVelocityDetector(hold_s=3 * HOUR),
            _stall,
            lambda t, v: forecast_batch(t, v, hold_s=3 * HOUR)[0],
            reaches=2,
        ),
    ]
