"""Contract case of ``geowarn.detectors.threshold``; its batch reference is the plain latch."""

from __future__ import annotations

import numpy as np

from geowarn.detectors.threshold import ThresholdDetector
from oracles.contract import ContractCase, reference_latch


def contract_cases() -> list[ContractCase]:
    levels = [(2, 180.0), (3, 220.0), (4, 260.0)]

    def make() -> ThresholdDetector:
        return ThresholdDetector(levels, hysteresis=0.05, hold_s=7200.0, unit="kPa")

    def series(seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        t = 1.7e9 + np.arange(0, 4 * 86400.0, 600.0)
        base = 150.0 + 130.0 * np.sin(np.pi * (t - t[0]) / (t[-1] - t[0]))  # up to 280 and back
        return t, base + rng.normal(0.0, 4.0, len(t))

    def batch(t: np.ndarray, v: np.ndarray) -> list[int]:
        return reference_latch(t, list(v), levels, 0.05, 7200.0)

    return [ContractCase("threshold", make, series, batch, reaches=4)]
