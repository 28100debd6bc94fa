"""Batch references and contract cases of the quality guards (``geowarn.detectors.quality``).

Every guard's flags have a batch reference here (``batch_*_flags``), written with numpy apart
from the streaming code and using only the guard's parameters; ``batch_flags(guard, t, v)``
picks the one of a guard. ``contract_cases()`` exposes them in ``extra["batch_flags"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from geowarn.detectors.quality import MAD_SCALE, ClockGuard, QualityGuard, RangeGuard, SpikeGuard, StepBackGuard, StuckGuard
from oracles.contract import ContractCase


def batch_flags(g: Any, t: np.ndarray, v: np.ndarray) -> list[str | None]:
    """The flags a fresh guard with the parameters of ``g`` gives, by the batch reference.

    Only the parameters of ``g`` are read, never its state or its streaming methods."""
    if isinstance(g, QualityGuard):
        return batch_quality_flags(t, v, g)
    if isinstance(g, ClockGuard):
        return batch_clock_flags(t, v, g.max_gap_s)
    if isinstance(g, RangeGuard):
        return batch_range_flags(t, v, g.low, g.high)
    if isinstance(g, StuckGuard):
        return batch_stuck_flags(t, v, g.stuck_n, g.tolerance)
    if isinstance(g, SpikeGuard):
        return batch_spike_flags(t, v, g.window, g.k, g.min_mad, min_points=g.min_points, accept_after=g.accept_after, max_gap_s=g.max_gap_s)
    if isinstance(g, StepBackGuard):
        return batch_step_back_flags(
            t, v, g.window, g.k, g.min_mad, min_points=g.min_points, accept_after=g.accept_after, max_gap_s=g.max_gap_s
        )
    raise TypeError(f"no batch reference for {type(g).__name__}")


def batch_clock_flags(t: np.ndarray, v: np.ndarray, max_gap_s: float | None = None) -> list[str | None]:
    """Batch reference of ``ClockGuard``.

    Flagged readings never move the clock and are never later than it, so the last accepted t
    before reading i is simply the running maximum of t[:i].
    """
    t = np.asarray(t, dtype=float)
    v = np.asarray(v, dtype=float)
    n = len(t)
    if n == 0:
        return []
    prev_max = np.concatenate([[-np.inf], np.maximum.accumulate(t)[:-1]])
    # The value belonging to the last accepted t: the first reading that reached that maximum.
    first_at = np.maximum.accumulate(np.where(t > prev_max, np.arange(n), 0))
    ref_v = np.concatenate([[np.nan], v[first_at[:-1]]])
    out: list[str | None] = [None] * n
    earlier = t < prev_max
    again = t == prev_max
    same = (v == ref_v) | (np.isnan(v) & np.isnan(ref_v))
    gap = np.zeros(n, dtype=bool)
    if max_gap_s is not None:
        gap = (t > prev_max) & np.isfinite(prev_max) & (t - prev_max > max_gap_s)
    for i in np.flatnonzero(earlier).tolist():
        out[i] = "out_of_order"
    for i in np.flatnonzero(again).tolist():
        out[i] = "duplicate" if same[i] else "duplicate_conflict"
    for i in np.flatnonzero(gap).tolist():
        out[i] = "gap"
    return out


def batch_range_flags(t: np.ndarray, v: np.ndarray, low: float, high: float) -> list[str | None]:
    """Batch reference of ``RangeGuard`` (vectorised; NaN compares false, so it is out)."""
    v = np.asarray(v, dtype=float)
    bad = ~((v >= low) & (v <= high))
    return ["range" if b else None for b in bad.tolist()]


def batch_stuck_flags(t: np.ndarray, v: np.ndarray, stuck_n: int, tolerance: float = 0.0) -> list[str | None]:
    """Batch reference of ``StuckGuard``: greedy band runs, then the run position of each reading."""
    t = np.asarray(t, dtype=float)
    v = np.asarray(v, dtype=float)
    out: list[str | None] = []
    t_last = -np.inf
    prev: str | None = None
    start = None  # index where the current run starts
    idx: list[int] = []  # indices of judged readings
    for i in range(len(t)):
        if t[i] <= t_last:
            out.append(prev)
            continue
        t_last = t[i]
        if not np.isfinite(v[i]):
            prev = "nonfinite"
            out.append(prev)
            continue
        idx.append(i)
        if start is None:
            start = len(idx) - 1
        else:
            band = v[np.array(idx[start:])]
            if band.max() - band.min() > tolerance:
                start = len(idx) - 1
        prev = "stuck" if len(idx) - start >= stuck_n else None
        out.append(prev)
    return out


def batch_spike_flags(
    t: np.ndarray,
    v: np.ndarray,
    window: int = 15,
    k: float = 3.5,
    min_mad: float = 0.0,
    *,
    min_points: int = 5,
    accept_after: int = 3,
    max_gap_s: float | None = None,
) -> list[str | None]:
    """Batch reference of ``SpikeGuard``: numpy medians over the list of accepted indices.

    The reference a reading is judged against depends on which earlier readings were accepted,
    so this walks the series once; each step is a numpy median/MAD of explicit index slices.
    """
    t = np.asarray(t, dtype=float)
    v = np.asarray(v, dtype=float)
    out: list[str | None] = []
    accepted: list[int] = []  # indices in the reference since the last reset/reseed
    run: list[int] = []  # consecutive spike indices on one side
    run_side = 0
    t_last = None
    prev: str | None = None
    for i in range(len(t)):
        if t_last is not None and t[i] <= t_last:
            out.append(prev)
            continue
        gap = t_last is not None and max_gap_s is not None and t[i] - t_last > max_gap_s
        t_last = t[i]
        if not np.isfinite(v[i]):
            prev = "nonfinite"
            out.append(prev)
            continue
        if gap:
            accepted, run = [], []
        ref = v[np.array(accepted[-window:], dtype=int)]
        if len(ref) < min_points:
            accepted.append(i)
            run = []
            prev = None
        else:
            med = float(np.median(ref))
            mad = float(np.median(np.abs(ref - med)))
            thr = k * MAD_SCALE * max(mad, min_mad)
            if abs(v[i] - med) <= thr:
                accepted.append(i)
                run = []
                prev = None
            else:
                side = int(np.sign(v[i] - med))
                run = run + [i] if run and side == run_side else [i]
                run_side = side
                if len(run) >= accept_after:
                    accepted, run = list(run), []
                    prev = None
                else:
                    prev = "spike"
        out.append(prev)
    return out


def batch_step_back_flags(
    t: np.ndarray,
    v: np.ndarray,
    window: int = 12,
    k: float = 5.0,
    min_mad: float = 0.0,
    *,
    min_points: int = 4,
    accept_after: int = 3,
    max_gap_s: float | None = None,
) -> list[str | None]:
    """Batch reference of ``StepBackGuard``: one pass over the accepted indices, numpy statistics."""
    t = np.asarray(t, dtype=float)
    v = np.asarray(v, dtype=float)
    out: list[str | None] = []
    acc: list[int] = []  # accepted indices, all time (origin and travelled range come from here)
    steps: list[float] = []
    run: list[int] = []  # consecutive abnormal steps on one side
    run_side = 0
    t_last = None
    prev: str | None = None
    for i in range(len(t)):
        if t_last is not None and t[i] <= t_last:
            out.append(prev)
            continue
        gap = t_last is not None and max_gap_s is not None and t[i] - t_last > max_gap_s
        t_last = t[i]
        if not np.isfinite(v[i]):
            prev = "nonfinite"
            out.append(prev)
            continue
        prev = None
        if not acc or gap:
            if gap:
                steps = []
            run = []
            acc.append(i)
            out.append(prev)
            continue
        step = v[i] - v[acc[-1]]
        recent = np.array(steps[-window:])
        if len(recent) < min_points:
            steps.append(step)
            run = []
            acc.append(i)
            out.append(prev)
            continue
        med = float(np.median(recent))
        mad = float(np.median(np.abs(recent - med)))
        thr = k * MAD_SCALE * max(mad, min_mad)
        if abs(step - med) <= thr:
            steps.append(step)
            run = []
            acc.append(i)
            out.append(prev)
            continue
        seen = v[np.array(acc)]
        travel = seen[-1] - seen[0]
        side = int(np.sign(step - med))
        backwards = side == -int(np.sign(travel)) if travel != 0 else side == 1
        flagged = abs(travel) > thr and backwards and seen.min() <= v[i] <= seen.max()
        run = run + [i] if run and side == run_side else [i]
        run_side = side
        if len(run) >= accept_after:
            steps.extend(np.diff(v[np.array([acc[-1]] + run)]).tolist())
            acc.extend(run)
            run = []
        elif flagged:
            prev = "step_back"
        out.append(prev)
    return out


def batch_quality_flags(t: np.ndarray, v: np.ndarray, g: QualityGuard) -> list[str | None]:
    """Batch reference of ``QualityGuard``: each guard's batch flags on the readings it sees.

    Only the parameters of ``g`` are used, never its state or its streaming methods.
    """
    t = np.asarray(t, dtype=float)
    v = np.asarray(v, dtype=float)
    clock = batch_clock_flags(t, v, g.max_gap_s)
    out: list[str | None] = list(clock)
    ok = np.array([f is None or f == "gap" for f in clock], dtype=bool)
    rng = batch_range_flags(t, v, g.low, g.high)
    for i in np.flatnonzero(ok):
        if rng[i] is not None:
            out[i] = rng[i]
            ok[i] = False
    idx = np.flatnonzero(ok)
    tt, vv = t[idx], v[idx]
    per_guard: list[list[str | None]] = []
    if g.stuck_n is not None:
        per_guard.append(batch_stuck_flags(tt, vv, g.stuck_n, g.stuck_tolerance))
    if g.step_back_window is not None:
        per_guard.append(
            batch_step_back_flags(
                tt, vv, g.step_back_window, g.step_back_k, g.min_mad,
                min_points=g.step_back_min_points, accept_after=g.accept_after, max_gap_s=g.max_gap_s,
            )
        )
    if g.spike_window is not None:
        per_guard.append(
            batch_spike_flags(
                tt, vv, g.spike_window, g.spike_k, g.min_mad,
                min_points=g.spike_min_points, accept_after=g.accept_after, max_gap_s=g.max_gap_s,
            )
        )
    for j, i in enumerate(idx):
        for flags in per_guard:
            if flags[j] is not None:
                out[i] = flags[j]
                break
    return out


# --------------------------------------------------------------------------------------------
# Contract cases
# --------------------------------------------------------------------------------------------


def _zeros(t: np.ndarray, v: np.ndarray) -> list[int]:
    return [0] * len(t)


def _gnss_series(seed: int, n: int = 1500, interval: float = 600.0) -> tuple[np.ndarray, np.ndarray]:
    """A creeping GNSS component with noise, spikes, a replayed old value, a frozen stretch,
    a real level shift and an outage: every guard has something to say."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) * interval + rng.uniform(-30, 30, n)
    t[0] = 0.0
    t = np.sort(t)
    v = 0.02 * np.arange(n) + rng.normal(0, 3.0, n)  # 2.9 mm/day creep, 3 mm noise
    for i in rng.choice(np.arange(50, n - 50), 8, replace=False):
        v[i] += rng.choice([-1, 1]) * rng.uniform(40, 120)
    v[900:920] = v[900]  # frozen receiver
    v[1100:] += 150.0  # antenna moved: a real level shift to accept
    v[1200] = v[300]  # a replayed reading from days before
    t[1300:] += 6 * 3600.0  # a six-hour outage
    return t, np.round(v, 1)


def _spike_series(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 800
    t = np.arange(n) * 600.0
    v = 20.0 + np.cumsum(rng.normal(0, 0.05, n)) + rng.normal(0, 0.3, n)
    for i in rng.choice(np.arange(20, n - 20), 12, replace=False):
        v[i] += rng.choice([-1, 1]) * rng.uniform(5, 20)
    v[500:] += 8.0  # a real shift
    return t, v


def _stuck_series(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 400
    t = np.arange(n) * 600.0
    v = np.round(rng.normal(0, 3.0, n), 1)
    for a in rng.choice(np.arange(10, n - 40), 4, replace=False):
        v[a : a + rng.integers(3, 30)] = v[a]
    return t, v


def _clock_series(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 300
    dt = np.where(rng.random(n) < 0.03, rng.uniform(3000, 20000, n), rng.uniform(550, 650, n))
    return np.cumsum(dt), rng.normal(0, 1, n)


def _range_series(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 300
    v = rng.uniform(-20, 620, n)
    return np.arange(n) * 600.0, v


def _step_back_series(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 300
    t = np.arange(n) * 86400.0 * 30
    v = np.cumsum(np.abs(rng.normal(5, 4, n)) + np.where(rng.random(n) < 0.05, rng.uniform(50, 300, n), 0))
    for i in rng.choice(np.arange(30, n), 5, replace=False):
        v[i] = v[rng.integers(0, i - 20)]  # replay an old value
    v[200:] -= 400.0  # and one genuine reversal (a re-levelled benchmark) to accept
    return t, np.round(v, 1)


def _case(name: str, make: Callable[[], Any], series: Callable[[int], tuple[np.ndarray, np.ndarray]]) -> ContractCase:
    # The batch flags come from the guard's parameters only (a fresh instance is never fed).
    return ContractCase(name=name, make=make, series=series, batch=_zeros, reaches=0, extra={"batch_flags": lambda t, v: batch_flags(make(), t, v)})


def contract_cases() -> list[ContractCase]:
    """One case per guard. Guards never raise a level, so ``batch`` is all zeros and
    ``reaches`` is 0; ``extra["batch_flags"]`` is the batch reference of the flags."""
    return [
        _case("ClockGuard", lambda: ClockGuard(max_gap_s=1800.0), _clock_series),
        _case("RangeGuard", lambda: RangeGuard(0.0, 500.0), _range_series),
        _case("StuckGuard", lambda: StuckGuard(6, 0.0), _stuck_series),
        _case("SpikeGuard", lambda: SpikeGuard(15, 3.5, 0.2, accept_after=3, max_gap_s=3600.0), _spike_series),
        _case("StepBackGuard", lambda: StepBackGuard(12, 5.0, 1.0), _step_back_series),
        _case("QualityGuard.gnss_e", lambda: QualityGuard.for_kind("gnss_e", 600.0, -1e6, 1e6), _gnss_series),
        _case("QualityGuard.displacement.monthly", lambda: QualityGuard.for_kind("displacement", 30 * 86400.0, -1e5, 1e5), _step_back_series),
    ]
