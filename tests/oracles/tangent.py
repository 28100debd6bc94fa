"""Batch reference and contract cases of ``geowarn.detectors.tangent`` (the tangent angle).

The batch smoother, the frozen reference and the plain-loop latch here are also the pieces
the inverse-velocity reference (``oracles.inverse_velocity``) is built from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from geowarn.detectors.tangent import DAY, HOUR, XU_QIANG_DEG, TangentAngleDetector
from geowarn.simulators.slope import VoightFailure
from oracles.contract import ContractCase


# -- batch reference -------------------------------------------------------------------------
# Written apart from the streaming classes: each window's regression is computed afresh from
# centred numpy arrays, the reference with numpy.polyfit, and the latch as a plain loop.


def accepted_readings(t: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Indices of the readings a streaming detector takes: finite, and later than all before."""
    ok = np.isfinite(t) & np.isfinite(v)
    best = np.maximum.accumulate(np.where(ok, t, -np.inf)) if len(t) else t
    before = np.concatenate(([-np.inf], best[:-1])) if len(t) else t
    return np.flatnonzero(ok & (t > before))


def batch_smoothed(ta: np.ndarray, va: np.ndarray, window_s: float, min_points: int, min_span: float) -> dict[str, np.ndarray]:
    """Sliding-window least-squares velocity of accepted readings (strictly increasing t).

    Returns arrays: ``v`` and ``se`` (per day), ``tbar`` (mean time of the window), ``count``
    (readings in the window), ``ready`` (enough readings spanning enough of the window) and
    ``restart`` (the reading after a gap longer than the window).
    """
    n = len(ta)
    restart = np.zeros(n, dtype=bool)
    if n:
        restart[1:] = np.diff(ta) > window_s
    seg_start = np.maximum.accumulate(np.where(restart | (np.arange(n) == 0), np.arange(n), 0)) if n else np.zeros(0, int)
    lo = np.maximum(np.searchsorted(ta, ta - window_s, side="left"), seg_start)
    v = np.full(n, np.nan)
    se = np.full(n, np.nan)
    tbar = np.full(n, np.nan)
    count = np.arange(n) - lo + 1
    ready = np.zeros(n, dtype=bool)
    for j in range(n):
        x = ta[lo[j] : j + 1]
        y = va[lo[j] : j + 1]
        m = len(x)
        if m < 3:
            continue
        xm = x.mean()
        xc = x - xm
        yc = y - y.mean()
        sxx = float(xc @ xc)
        if not sxx > 0:
            continue
        b = float(xc @ yc) / sxx
        resid = yc - b * xc
        v[j] = b * DAY
        se[j] = math.sqrt(float(resid @ resid) / (m - 2) / sxx) * DAY
        tbar[j] = xm
        ready[j] = m >= min_points and x[-1] - x[0] >= min_span * window_s
    return {"v": v, "se": se, "tbar": tbar, "count": count, "ready": ready, "restart": restart}


def batch_reference_rate(ta: np.ndarray, va: np.ndarray, reference_s: float, min_points: int) -> tuple[int, float] | None:
    """(index of the reading that freezes the reference, its rate per day), or None."""
    if not len(ta):
        return None
    idx = np.flatnonzero((ta - ta[0] >= reference_s) & (np.arange(len(ta)) + 1 >= max(3, min_points)))
    if not len(idx):
        return None
    r = int(idx[0])
    slope = np.polyfit(ta[: r + 1] - ta[0], va[: r + 1] - va[0], 1)[0]
    return r, float(slope) * DAY


def batch_latch(t: float, x: float, state: list[Any], thresholds: Sequence[tuple[int, float]], hysteresis: float, hold_s: float) -> int:
    """One step of a level latch kept in ``state`` = [level, below_since]: up at once, down
    after leaving the band for ``hold_s``. A plain re-statement of the LevelLatch rules."""
    raw = max([lvl for lvl, thr in thresholds if x >= thr], default=0)
    band = max([lvl for lvl, thr in thresholds if x >= thr - hysteresis * abs(thr)], default=0)
    level, since = state
    if raw >= level:
        state[:] = [raw, None]
    elif band >= level:
        state[1] = None
    else:
        since = t if since is None else since
        if t - since >= hold_s:
            state[:] = [band, None if band == raw else t]
        else:
            state[1] = since
    return int(state[0])


def tangent_batch(
    t: Any,
    v: Any,
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
) -> np.ndarray:
    """Batch reference of ``TangentAngleDetector``: the level after each reading."""
    t = np.asarray(t, dtype=float)
    v = np.asarray(v, dtype=float)
    out = np.zeros(len(t), dtype=int)
    idx = accepted_readings(t, v)
    ta, va = t[idx], v[idx]
    sm = batch_smoothed(ta, va, window_s, min_points, min_span)
    ref = batch_reference_rate(ta, va, reference_s, min_points)
    judged = sm["ready"].copy()
    judged[: (ref[0] if ref else len(ta))] = False
    steady = max(abs(ref[1]), min_v_steady) if ref else np.inf
    low = np.abs(sm["v"]) - z * sm["se"]
    alpha = np.where(judged & (low > 0), np.degrees(np.arctan(np.maximum(low, 0.0) / steady)), 0.0)
    thresholds = [(int(a), float(b)) for a, b in thresholds_deg]
    take = np.zeros(len(t), dtype=bool)
    take[idx] = True
    pos = np.full(len(t), -1)
    pos[idx] = np.arange(len(idx))
    state: list[Any] = [0, None]
    recent: list[float] = []
    said = 0
    for j in range(len(t)):
        if not take[j]:
            out[j] = said  # an ignored reading gets the previous verdict
            continue
        k = pos[j]
        if sm["restart"][k]:
            recent = []
        if not judged[k]:
            out[j] = said = 0
            continue
        recent = (recent + [float(alpha[k])])[-persist:]
        said = batch_latch(ta[k], min(recent), state, thresholds, hysteresis, hold_s) if len(recent) == persist else int(state[0])
        out[j] = said
    return out


# -- contract cases --------------------------------------------------------------------------


def _creep_then_failure(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A GNSS component (3 mm noise, 10-min readings, rare multipath outliers) of a slope
    creeping at 10 mm/day plus Voight accelerating creep (α = 1.5) failing on day 8, at
    400 mm/day half a day before."""
    rng = np.random.default_rng(seed)
    t0 = 1_764_374_400.0
    s = VoightFailure.reaching(t0, t0 + 8 * DAY, v_mm_day=400.0, lead_s=DAY / 2, alpha=1.5, creep_mm_day=10.0)
    t = t0 + 600.0 * np.arange(int(8 * DAY / 600.0) - 1, dtype=np.float64)
    d = s.displacement(t) + 3.0 * rng.standard_normal(len(t))
    hit = rng.random(len(t)) < 0.002
    d[hit] += 30.0 * np.sign(rng.standard_normal(hit.sum()))
    return t, np.round(d, 2)


def _gappy_stable(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 20 mm/day creep with a 1-day data gap, then a jump to ~150 mm/day (ratio 7.5: 82.4°)."""
    rng = np.random.default_rng(seed)
    t0 = 1_764_374_400.0
    t = t0 + 600.0 * np.arange(int(7 * DAY / 600.0))
    t = t[(t - t0 < 4 * DAY) | (t - t0 >= 5 * DAY)]
    rate = np.where(t - t0 < 5.5 * DAY, 20.0, 150.0)
    d = np.cumsum(np.concatenate(([0.0], rate[1:] * np.diff(t) / DAY))) + 3.0 * rng.standard_normal(len(t))
    return t, d


def contract_cases() -> list[ContractCase]:
    return [
        ContractCase("tangent/creep-to-failure", TangentAngleDetector, _creep_then_failure, tangent_batch, reaches=4),
        ContractCase(
            "tangent/gap-then-orange",
            lambda: TangentAngleDetector(window_s=6 * HOUR, hold_s=2 * HOUR, persist=2),
            _gappy_stable,
            lambda t, v: tangent_batch(t, v, window_s=6 * HOUR, hold_s=2 * HOUR, persist=2),
            reaches=3,
        ),
    ]
