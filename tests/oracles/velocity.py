"""Batch reference and contract case of ``geowarn.detectors.velocity``."""

from __future__ import annotations

import numpy as np

from geowarn.detectors.velocity import DAY, VelocityDetector
from oracles.contract import ContractCase, reference_latch


# -- batch reference -------------------------------------------------------------------------


def batch_velocity(
    t: np.ndarray, v: np.ndarray, window_s: float, min_points: int, min_span: float
) -> list[tuple[float, float] | None]:
    """Batch reference of the windowed regression: (velocity/day, stderr/day) per reading, or None
    while warming up. numpy.polyfit per window, gaps longer than the window restart the window."""
    out: list[tuple[float, float] | None] = []
    seg_start = 0
    for i in range(len(t)):
        if i > 0 and t[i] - t[i - 1] > window_s:
            seg_start = i
        lo = seg_start + int(np.searchsorted(t[seg_start : i + 1], t[i] - window_s, side="left"))
        tt, vv = t[lo : i + 1], v[lo : i + 1]
        if len(tt) < min_points or t[i] - tt[0] < min_span * window_s:
            out.append(None)
            continue
        (b, a), cov = np.polyfit(tt - tt[0], vv, 1, cov="unscaled")
        resid = vv - (a + b * (tt - tt[0]))
        s2 = float(resid @ resid) / (len(tt) - 2)
        out.append((float(b) * DAY, float(np.sqrt(cov[0, 0] * s2)) * DAY))
    return out


def contract_cases() -> list[ContractCase]:
    levels = [(1, 1.0), (2, 3.0), (3, 72.0), (4, 120.0)]
    window_s, min_points, min_span = 6 * 3600.0, 6, 0.5

    def make() -> VelocityDetector:
        return VelocityDetector(
            levels, window_s=window_s, min_points=min_points, min_span=min_span, hysteresis=0.1, hold_s=3 * 3600.0, z=5.0, persist=3
        )

    def series(seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        t = 1.7e9 + np.arange(0, 6 * DAY, 600.0)
        t = np.delete(t, np.arange(300, 345))  # a 7.5 h gap: the window restarts
        rate = np.where(t < 1.7e9 + 3 * DAY, 0.0, np.where(t < 1.7e9 + 5 * DAY, 150.0, 10.0))  # mm/day
        disp = np.concatenate([[0.0], np.cumsum(rate[1:] * np.diff(t) / DAY)])
        return t, disp + rng.normal(0.0, 3.0, len(t))

    def batch(t: np.ndarray, v: np.ndarray) -> list[int]:
        fits = batch_velocity(t, v, window_s, min_points, min_span)
        x: list[float | None] = []
        recent: list[float] = []
        for i, f in enumerate(fits):
            if i > 0 and t[i] - t[i - 1] > window_s:
                recent = []
            if f is None:
                x.append(None)
                continue
            vel, se = f
            recent = (recent + [abs(vel) if abs(vel) > 5.0 * se else 0.0])[-3:]
            x.append(min(recent))
        return reference_latch(t, x, levels, 0.1, 3 * 3600.0)

    return [ContractCase("velocity", make, series, batch, reaches=4)]
