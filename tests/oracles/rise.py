"""Batch reference and contract cases of ``geowarn.detectors.rise`` (the rise rate)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from geowarn.detectors.rise import DAY, DEFAULT_RISE_PER_DAY, HOUR, RiseRateDetector
from oracles.contract import ContractCase


# -- batch reference -------------------------------------------------------------------------


def _accepted(t: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Indices of the readings a detector takes: finite, and later than every earlier one."""
    ok = np.isfinite(t) & np.isfinite(v)
    tt = np.where(ok, t, -np.inf)
    prev = np.concatenate(([-np.inf], np.maximum.accumulate(tt)[:-1])) if len(t) else tt
    return np.flatnonzero(ok & (t > prev))


def rise_rate_batch(t: Any, v: Any, *, window_s: float = 6 * HOUR, min_points: int = 6, min_span: float = 0.5, z: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """(rate, judged) after each reading: rate is the significant rise per day (else 0);
    judged is False while warming up and for ignored readings. Each window's regression is
    computed afresh from centred values."""
    t = np.asarray(t, dtype=float)
    v = np.asarray(v, dtype=float)
    idx = _accepted(t, v)
    ta, va = t[idx], v[idx]
    seg = np.concatenate(([0], np.cumsum(np.diff(ta) > window_s))) if len(ta) else np.zeros(0, int)
    seg_start = np.searchsorted(seg, seg, side="left")
    lo = np.maximum(np.searchsorted(ta, ta - window_s, side="left"), seg_start)
    rate = np.zeros(len(t))
    judged = np.zeros(len(t), dtype=bool)
    for j in range(len(ta)):
        x = ta[lo[j] : j + 1]
        y = va[lo[j] : j + 1]
        m = len(x)
        if m < min_points or x[-1] - x[0] < min_span * window_s:
            continue
        xc = x - x.mean()
        yc = y - y.mean()
        sxx = float(xc @ xc)
        sxy = float(xc @ yc)
        b = sxy / sxx
        se = (max(0.0, float(yc @ yc) - b * sxy) / (m - 2) / sxx) ** 0.5
        judged[idx[j]] = True
        rate[idx[j]] = b * DAY if b > z * se else 0.0
    return rate, judged


def rise_batch(t: Any, v: Any, thresholds_per_day: Sequence[tuple[int, float]], *, window_s: float = 6 * HOUR, hysteresis: float = 0.1,
               hold_s: float = 0.0, min_points: int = 6, min_span: float = 0.5, z: float = 5.0, persist: int = 3) -> np.ndarray:
    """Batch reference of ``RiseRateDetector``: the level after each reading."""
    t = np.asarray(t, dtype=float)
    v = np.asarray(v, dtype=float)
    rate, judged = rise_rate_batch(t, v, window_s=window_s, min_points=min_points, min_span=min_span, z=z)
    accepted = np.zeros(len(t), dtype=bool)
    accepted[_accepted(t, v)] = True
    lv = [lvl for lvl, _ in thresholds_per_day]
    thr = [x for _, x in thresholds_per_day]
    out = np.zeros(len(t), dtype=int)
    level, since, prev_t, said = 0, None, None, 0
    recent: list[float] = []
    for j in range(len(t)):
        if not accepted[j]:
            out[j] = said  # an ignored reading gets the previous verdict
            continue
        if prev_t is not None and t[j] - prev_t > window_s:
            recent = []  # the persistence memory goes with the window
        prev_t = t[j]
        if not judged[j]:
            out[j] = said = 0  # warming up says nothing
            continue
        recent = (recent + [float(rate[j])])[-persist:]
        x = min(recent) if len(recent) == persist else 0.0
        raw = max([lv[i] for i in range(len(lv)) if x >= thr[i]], default=0)
        band = max([lv[i] for i in range(len(lv)) if x >= thr[i] - hysteresis * abs(thr[i])], default=0)
        if raw >= level:
            level, since = raw, None
        elif band < level:
            since = t[j] if since is None else since
            if t[j] - since >= hold_s:
                level, since = band, (None if band == raw else t[j])
        else:
            since = None
        out[j] = said = level
    return out


# -- contract cases --------------------------------------------------------------------------

T0 = 1_700_000_000.0


def _storm_response(seed: int, *, base: float, peak_rate: float, sigma: float, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """10-minute readings over 4 days: flat, one rise (a smooth bump peaking at peak_rate
    per day), a slow recession, and one 10-hour data gap."""
    rng = np.random.default_rng(seed)
    n = 4 * 144
    t = T0 + 600.0 * np.arange(n) + rng.uniform(-60, 60, n)
    keep = (t < T0 + 2.6 * DAY) | (t > T0 + 2.6 * DAY + 10 * HOUR)
    t = t[keep]
    d = (t - T0) / DAY
    on = 1.0 + rng.uniform(-0.1, 0.1)
    width = 0.5
    # rise: a raised-cosine bump of the rate; level = its integral
    s = np.clip((d - on) / width, 0.0, 1.0)
    rise = peak_rate * width * (s - np.sin(2 * np.pi * s) / (2 * np.pi)) / 2
    fall = np.where(d > on + width, -0.2 * peak_rate * (d - on - width), 0.0)
    v = base + rise + fall + sigma * rng.standard_normal(len(t))
    return t, np.round(v, decimals)


def contract_cases() -> list[ContractCase]:
    pore, _ = DEFAULT_RISE_PER_DAY["pore_pressure"]
    gw, _ = DEFAULT_RISE_PER_DAY["groundwater"]
    return [
        ContractCase(
            "rise_pore_pressure_10min",
            make=lambda: RiseRateDetector.for_kind("pore_pressure", interval_s=600.0, hold_s=2 * HOUR),
            series=lambda seed: _storm_response(seed, base=110.0, peak_rate=30.0, sigma=0.2, decimals=2),
            batch=lambda t, v: rise_batch(t, v, pore, hold_s=2 * HOUR).tolist(),
            reaches=4,
        ),
        ContractCase(
            "rise_groundwater_10min",
            make=lambda: RiseRateDetector.for_kind("groundwater", interval_s=600.0, hold_s=2 * HOUR),
            series=lambda seed: _storm_response(seed, base=12.0, peak_rate=1.5, sigma=0.005, decimals=3),
            batch=lambda t, v: rise_batch(t, v, gw, hold_s=2 * HOUR).tolist(),
            reaches=3,
        ),
    ]
