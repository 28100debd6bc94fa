"""Per-channel thresholds on the reading itself (pore pressure, groundwater, crack opening…).

A peak kind (acceleration, vibration: the largest change within a sampling period, signed by
its axis) is judged on its magnitude, ``magnitude=True``: a -300 mg shake is as strong as a
+300 mg one.

>>> det = ThresholdDetector([(2, 100.0), (3, 250.0)], unit="mg", magnitude=True)
>>> det.update(0.0, -312.0).reason
'peak 312.00 mg (≥ orange threshold 250 mg, or held)'
"""

from __future__ import annotations

from typing import Any

from geowarn.core.levels import LEVELS
from geowarn.detectors.base import StreamingDetector
from geowarn.detectors.latch import LevelLatch
from geowarn.detectors.verdict import QUIET, Verdict


class ThresholdDetector(StreamingDetector):
    """Level of the value against ascending thresholds, with hysteresis and a hold time."""

    __slots__ = ("_latch", "hold_s", "hysteresis", "magnitude", "thresholds", "unit")

    def __init__(
        self, thresholds: list[tuple[int, float]], *, hysteresis: float = 0.1, hold_s: float = 0.0, unit: str = "", magnitude: bool = False
    ) -> None:
        self.thresholds = thresholds
        self.hysteresis = hysteresis
        self.hold_s = hold_s
        self.unit = unit
        self.magnitude = magnitude
        self._reset()  # the latch validates the thresholds, the hysteresis and the hold time

    def _reset(self) -> None:
        self._latch = LevelLatch(self.thresholds, self.hysteresis, self.hold_s)

    def update(self, t: float, value: float) -> Verdict:
        if self.magnitude:
            peak = abs(value)
            level = self._latch.update(t, peak)
            if level == 0:
                return QUIET
            thr = dict(self._latch.thresholds)[level]
            return Verdict(
                level,
                f"peak {peak:.2f} {self.unit} (≥ {LEVELS[level].colour} threshold {thr:g} {self.unit}, or held)".replace("  ", " "),
                {"value": value, "peak": peak, "threshold": thr},
            )
        level = self._latch.update(t, value)
        if level == 0:
            return QUIET
        thr = dict(self._latch.thresholds)[level]
        return Verdict(
            level,
            f"value {value:.2f} {self.unit} (≥ {LEVELS[level].colour} threshold {thr:g} {self.unit}, or held)".replace("  ", " "),
            {"value": value, "threshold": thr},
        )

    def snapshot(self) -> dict[str, Any]:
        return {"latch": self._latch.snapshot()}

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        self._latch.restore(state["latch"])
