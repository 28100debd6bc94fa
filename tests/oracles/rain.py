"""Batch references and contract cases of ``geowarn.detectors.rain``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from geowarn.detectors.rain import (
    CAINE_A,
    CAINE_B,
    DAY,
    DEFAULT_EFFECTIVE_LEVELS,
    DEFAULT_ID_LEVELS,
    DEFAULT_WINDOWS,
    HOUR,
    AntecedentRain,
    IntensityDuration,
    RainDetector,
    RainSums,
)
from oracles.contract import ContractCase


# -- batch references ------------------------------------------------------------------------
# Written from the definitions with numpy (cumulative sums, searchsorted), not from the
# streaming classes; only the level latch is a loop, since hysteresis is sequential.


def _accepted(t: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Indices of the readings a detector takes: finite, and later than every earlier one."""
    ok = np.isfinite(t) & np.isfinite(v)
    tt = np.where(ok, t, -np.inf)
    prev = np.concatenate(([-np.inf], np.maximum.accumulate(tt)[:-1])) if len(t) else tt
    return np.flatnonzero(ok & (t > prev))


def _prelude(t: Any, v: Any, max_interval_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(accepted indices, t, interval start, hundredths of a mm, n) for the accepted readings."""
    t = np.asarray(t, dtype=float)
    v = np.asarray(v, dtype=float)
    idx = _accepted(t, v)
    ta = t[idx]
    q = np.maximum(np.rint(v[idx] * 100.0), 0).astype(np.int64)
    if len(ta):
        q[0] = 0  # the first reading opens the record
        ts = np.maximum(np.concatenate(([ta[0]], ta[:-1])), ta - max_interval_s)
    else:
        ts = ta.copy()
    return idx, ta, ts, q, len(t)


def latch_batch(t: np.ndarray, x: np.ndarray, thresholds: Sequence[tuple[int, float]], hysteresis: float, hold_s: float) -> np.ndarray:
    """Levels of the hysteresis-and-hold rule: up at once; down to the level the value
    still supports within the dead band, once it has stayed below the current level's band
    for ``hold_s``."""
    lv = np.array([lvl for lvl, _ in thresholds])
    thr = np.array([x for _, x in thresholds], dtype=float)
    x = np.asarray(x, dtype=float)
    raw_hit = x[:, None] >= thr[None, :]
    band_hit = x[:, None] >= (thr - hysteresis * np.abs(thr))[None, :]
    raw = np.where(raw_hit.any(1), lv[np.where(raw_hit, np.arange(len(lv)), -1).max(1)], 0)
    band = np.where(band_hit.any(1), lv[np.where(band_hit, np.arange(len(lv)), -1).max(1)], 0)
    out = np.zeros(len(x), dtype=int)
    level, since = 0, None
    for j in range(len(x)):
        if raw[j] >= level:
            level, since = int(raw[j]), None
        elif band[j] >= level:
            since = None
        else:
            if since is None:
                since = t[j]
            if t[j] - since >= hold_s:
                level = int(band[j])
                since = None if band[j] == raw[j] else t[j]
        out[j] = level
    return out


def _spread_levels(idx: np.ndarray, judged: np.ndarray, n: int) -> np.ndarray:
    """Levels of the accepted readings (the first is 0) carried onto every reading."""
    full = np.zeros(n, dtype=int)
    if len(idx) == 0:
        return full
    full[idx[1:]] = judged
    pos = np.where(np.isin(np.arange(n), idx), np.arange(n), -1)
    pos = np.maximum.accumulate(pos)
    return np.where(pos >= 0, full[np.maximum(pos, 0)], 0)


def rolling_rain_mm(t: Any, v: Any, window_s: float, *, max_interval_s: float = DAY) -> np.ndarray:
    """Rain (mm) in (t − window_s, t] after each accepted reading, rain spread over intervals."""
    _, ta, ts, q, _ = _prelude(t, v, max_interval_s)
    c = np.concatenate(([0], np.cumsum(q)))
    h = ta - window_s
    f = np.searchsorted(ta, h, side="right")  # first reading whose interval ends after h
    full = c[1:] - c[f]
    qf, tf, tsf = q[f], ta[f], ts[f]
    with np.errstate(divide="ignore", invalid="ignore"):
        part = (full - qf) + qf * ((tf - h) / (tf - tsf))
    return np.where(tsf < h, part, full) / 100


def rain_sums_batch(t: Any, v: Any, windows: Sequence[tuple[float, Sequence[tuple[int, float]]]] = DEFAULT_WINDOWS,
                    *, hysteresis: float = 0.1, hold_s: float = 0.0, max_interval_s: float = DAY) -> np.ndarray:
    """Batch reference of ``RainSums``: the level after each reading."""
    idx, ta, _, _, n = _prelude(t, v, max_interval_s)
    top = np.zeros(max(len(ta) - 1, 0), dtype=int)
    for w, ladder in windows:
        x = rolling_rain_mm(t, v, w, max_interval_s=max_interval_s)
        top = np.maximum(top, latch_batch(ta[1:], x[1:], ladder, hysteresis, hold_s))
    return _spread_levels(idx, top, n)


def id_ratio_batch(t: Any, v: Any, *, a: float = CAINE_A, b: float = CAINE_B, dry_gap_s: float = DAY, d_min_h: float = 1.0 / 6.0,
                   d_max_h: float = 500.0, max_interval_s: float = DAY) -> np.ndarray:
    """I / (a·D^−b) of the open rain event after each accepted reading (0: none, or too short)."""
    _, ta, ts, q, _ = _prelude(t, v, max_interval_s)
    m = len(ta)
    wet = q > 0
    last_end = np.maximum.accumulate(np.where(wet, ta, -np.inf)) if m else ta
    before = np.concatenate(([-np.inf], last_end[:-1])) if m else ta
    starts = wet & (ts - before >= dry_gap_s)
    si = np.maximum.accumulate(np.where(starts, np.arange(m), -1)) if m else np.zeros(0, int)
    sic = np.maximum(si, 0)
    c = np.cumsum(q)
    total = c - c[sic] + q[sic]
    open_ = (si >= 0) & (wet | (ta - last_end < dry_gap_s))
    with np.errstate(divide="ignore", invalid="ignore"):
        d_h = (last_end - ts[sic]) / 3600
        judged = open_ & (d_h >= d_min_h)
        ratio = (total / 100 / d_h) / (a * np.minimum(d_h, d_max_h) ** (-b))
    return np.where(judged, ratio, 0.0)


def intensity_duration_batch(t: Any, v: Any, *, a: float = CAINE_A, b: float = CAINE_B, levels: Sequence[tuple[int, float]] = DEFAULT_ID_LEVELS,
                             dry_gap_s: float = DAY, d_min_h: float = 1.0 / 6.0, d_max_h: float = 500.0,
                             hysteresis: float = 0.1, hold_s: float = 0.0, max_interval_s: float = DAY) -> np.ndarray:
    """Batch reference of ``IntensityDuration``: the level after each reading."""
    idx, ta, _, _, n = _prelude(t, v, max_interval_s)
    r = id_ratio_batch(t, v, a=a, b=b, dry_gap_s=dry_gap_s, d_min_h=d_min_h, d_max_h=d_max_h, max_interval_s=max_interval_s)
    return _spread_levels(idx, latch_batch(ta[1:], r[1:], levels, hysteresis, hold_s), n)


def effective_rain_batch(t: Any, v: Any, *, k: float = 0.84, days: int = 15, day_offset_s: float = 0.0, max_interval_s: float = DAY) -> np.ndarray:
    """R₀ + Σ Kⁱ·Rᵢ (mm) after each accepted reading, from daily totals.

    Each reading's hundredths are split over the days its interval (ts, t] overlaps, in
    proportion to the overlap, floored per day, the remainder on its last day; the sum is then
    taken afresh after every reading over the days [day(t) − days, day(t)] of everything booked
    so far (no running state: a different route to the same definition)."""
    _, ta, ts, q, _ = _prelude(t, v, max_interval_s)
    if len(ta) == 0:
        return np.zeros(0)
    day = (np.ceil((ta - day_offset_s) / DAY) - 1).astype(np.int64)
    w = np.array([k**i for i in range(days + 1)])
    booked: dict[int, int] = {}
    out = np.zeros(len(ta))
    for i in range(len(ta)):
        last = int(day[i])
        if q[i] and ta[i] > ts[i]:
            span = ta[i] - ts[i]
            edges = day_offset_s + DAY * np.arange(int(np.floor((ts[i] - day_offset_s) / DAY)), last + 2)
            lo = np.maximum(edges[:-1], ts[i])
            hi = np.minimum(edges[1:], ta[i])
            shares = np.floor(q[i] * np.clip(hi - lo, 0, None) / span).astype(np.int64)
            shares[-1] = q[i] - shares[:-1].sum()
            first = last + 1 - len(shares)
            for j, share in enumerate(shares):
                booked[first + j] = booked.get(first + j, 0) + int(share)
        elif q[i]:
            booked[last] = booked.get(last, 0) + int(q[i])
        out[i] = sum(w[j] * booked.get(last - j, 0) for j in range(days + 1)) / 100
    return out


def antecedent_batch(t: Any, v: Any, thresholds: Sequence[tuple[int, float]] = DEFAULT_EFFECTIVE_LEVELS, *, k: float = 0.84, days: int = 15,
                     day_offset_s: float = 0.0, hysteresis: float = 0.1, hold_s: float = 0.0, max_interval_s: float = DAY) -> np.ndarray:
    """Batch reference of ``AntecedentRain``: the level after each reading."""
    idx, ta, _, _, n = _prelude(t, v, max_interval_s)
    x = effective_rain_batch(t, v, k=k, days=days, day_offset_s=day_offset_s, max_interval_s=max_interval_s)
    return _spread_levels(idx, latch_batch(ta[1:], x[1:], thresholds, hysteresis, hold_s), n)


def rain_detector_batch(t: Any, v: Any, interval_s: float, *, hold_s: float | None = None, hysteresis: float = 0.1) -> np.ndarray:
    """Batch reference of ``RainDetector.for_channel(interval_s, ...)``: the highest method level."""
    hold = DAY if hold_s is None else hold_s
    mi = max(DAY, float(interval_s))
    windows = [w for w in DEFAULT_WINDOWS if w[0] >= interval_s] or [DEFAULT_WINDOWS[-1]]
    return np.maximum.reduce([
        rain_sums_batch(t, v, windows, hysteresis=hysteresis, hold_s=hold, max_interval_s=mi),
        intensity_duration_batch(t, v, hysteresis=hysteresis, hold_s=hold, max_interval_s=mi),
        antecedent_batch(t, v, hysteresis=hysteresis, hold_s=hold, max_interval_s=mi),
    ])


# -- contract cases --------------------------------------------------------------------------

T0 = 1_700_000_000.0


def _gauge_series(seed: int, *, days: float, step_s: float, storm_mm_h: float, storm_h: float, storm_at_day: float) -> tuple[np.ndarray, np.ndarray]:
    """Tipping-bucket readings (0.2 mm tips) at jittered times: drizzle spells plus one storm."""
    rng = np.random.default_rng(seed)
    n = int(days * DAY / step_s)
    jitter = rng.uniform(-0.2, 0.2, n) * step_s
    t = T0 + np.arange(n) * step_s + jitter
    hours = (t - T0) / HOUR
    rate = np.where(rng.random(n) < 0.15, rng.exponential(1.5, n), 0.0)  # mm/h, showers
    rate = rate * (np.sin(hours / 24.0 * 2 * np.pi / 3.0) > 0)  # wet and dry spells
    s0 = storm_at_day * 24.0 + rng.uniform(-3.0, 3.0)
    in_storm = (hours >= s0) & (hours < s0 + storm_h)
    rate = rate + in_storm * storm_mm_h * rng.uniform(0.6, 1.4, n)
    dt = np.diff(np.concatenate(([t[0] - step_s], t))) / HOUR
    tips = np.floor(rate * dt / 0.2)
    return t, np.round(tips * 0.2, 1)


def _daily_series(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 120
    t = T0 - (T0 % DAY) + DAY * np.arange(1, n + 1)  # each total closes its day at midnight
    v = np.round(np.where(rng.random(n) < 0.4, rng.gamma(0.8, 15.0, n), 0.0), 1)
    v[60:63] = np.round(rng.uniform(80.0, 150.0, 3), 1)
    return t, v


def contract_cases() -> list[ContractCase]:
    ten_min = {"days": 10.0, "step_s": 600.0, "storm_mm_h": 25.0, "storm_h": 5.0, "storm_at_day": 6.0}
    hourly = {"days": 40.0, "step_s": 3600.0, "storm_mm_h": 8.0, "storm_h": 30.0, "storm_at_day": 25.0}
    return [
        ContractCase(
            "rain_sums_10min",
            make=lambda: RainSums(hold_s=3 * HOUR),
            series=lambda seed: _gauge_series(seed, **ten_min),
            batch=lambda t, v: rain_sums_batch(t, v, hold_s=3 * HOUR).tolist(),
            reaches=3,
        ),
        ContractCase(
            "intensity_duration_10min",
            make=lambda: IntensityDuration(hold_s=2 * HOUR),
            series=lambda seed: _gauge_series(seed, **ten_min),
            batch=lambda t, v: intensity_duration_batch(t, v, hold_s=2 * HOUR).tolist(),
            reaches=3,
        ),
        ContractCase(
            "antecedent_rain_hourly",
            make=lambda: AntecedentRain(hold_s=DAY, day_offset_s=-8 * HOUR),
            series=lambda seed: _gauge_series(seed, **hourly),
            batch=lambda t, v: antecedent_batch(t, v, hold_s=DAY, day_offset_s=-8 * HOUR).tolist(),
            reaches=2,
        ),
        ContractCase(
            "rain_detector_10min",
            make=lambda: RainDetector.for_channel(600.0),
            series=lambda seed: _gauge_series(seed, **ten_min),
            batch=lambda t, v: rain_detector_batch(t, v, 600.0).tolist(),
            reaches=3,
        ),
        ContractCase(
            "rain_detector_daily",
            make=lambda: RainDetector.for_channel(DAY),
            series=_daily_series,
            batch=lambda t, v: rain_detector_batch(t, v, DAY).tolist(),
            reaches=3,
        ),
    ]
