"""Per-channel thresholds on the reading itself (pore pressure, groundwater, crack opening…)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geowarn.detectors.latch import LevelLatch
from geowarn.detectors.verdict import QUIET, Verdict

if TYPE_CHECKING:
    from geowarn.detectors.contract import ContractCase

_NAMES = {1: "blue", 2: "yellow", 3: "orange", 4: "red"}


class ThresholdDetector:
    """Level of the value against ascending thresholds, with hysteresis and a hold time."""

    def __init__(self, thresholds: list[tuple[int, float]], *, hysteresis: float = 0.1, hold_s: float = 0.0, unit: str = "") -> None:
        self.unit = unit
        self._latch = LevelLatch(thresholds, hysteresis, hold_s)

    def update(self, t: float, value: float) -> Verdict:
        level = self._latch.update(t, value)
        if level == 0:
            return QUIET
        thr = dict(self._latch.thresholds)[level]
        return Verdict(
            level,
            f"value {value:.2f} {self.unit} (≥ {_NAMES[level]} threshold {thr:g} {self.unit}, or held)".replace("  ", " "),
            {"value": value, "threshold": thr},
        )

    def snapshot(self) -> dict[str, Any]:
        return {"latch": self._latch.snapshot()}

    def restore(self, state: dict[str, Any]) -> None:
        self._latch.restore(state["latch"])


def contract_cases() -> list["ContractCase"]:
    import numpy as np

    from geowarn.detectors.contract import ContractCase, reference_latch

    levels = [(2, 180.0), (3, 220.0), (4, 260.0)]

    def make() -> ThresholdDetector:
        return ThresholdDetector(levels, hysteresis=0.05, hold_s=7200.0, unit="kPa")

    def series(seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        t = 1.7e9 + np.arange(0, 4 * 86400.0, 600.0)
        base = 150.0 + 130.0 * np.sin(np.pi * (t - t[0]) / (t[-1] - t[0]))  # up to 280 and back
        return t, base + rng.normal(0.0, 4.0, len(t))

    def batch(t: "np.ndarray", v: "np.ndarray") -> list[int]:
        return reference_latch(t, list(v), levels, 0.05, 7200.0)

    return [ContractCase("threshold", make, series, batch, reaches=4)]
