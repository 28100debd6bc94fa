"""The contract suite's case type, and the batch reference of ``LevelLatch``.

The contract itself (what a detector is) is ``geowarn.detectors.contract``; the suite that
checks it is ``tests/test_detector_contract.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geowarn.detectors.contract import Detector


@dataclass(frozen=True)
class ContractCase:
    """One detector configuration for the contract suite.

    ``make`` builds a fresh detector; ``series(seed)`` returns (t, value) arrays, t strictly
    increasing, that drive the detector through warm-up and up to at least level ``reaches``;
    ``batch(t, value)`` is the batch reference: the level after each reading.
    """

    name: str
    make: Callable[[], Detector]
    series: Callable[[int], tuple[np.ndarray, np.ndarray]]
    batch: Callable[[np.ndarray, np.ndarray], Sequence[int] | np.ndarray]
    reaches: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def reference_latch(
    t: Sequence[float] | np.ndarray, x: Sequence[float | None] | np.ndarray, thresholds: Sequence[tuple[int, float]], hysteresis: float, hold_s: float
) -> list[int]:
    """Batch reference of ``LevelLatch``, written apart from it: the level after each sample.

    ``x[i] is None`` means "no judgement at i" (warming up): the output is 0 there and the
    latch's state is untouched, matching a detector that skips the latch while warming up.
    """
    thr = sorted(thresholds, key=lambda p: p[1])

    def supported(value: float, band: float) -> int:
        ok = [lvl for lvl, th in thr if value >= th - band * abs(th)]
        return max(ok, default=0)

    out: list[int] = []
    level, since = 0, None
    for ti, xi in zip(t, x):
        if xi is None:
            out.append(0)
            continue
        up, held = supported(xi, 0.0), supported(xi, hysteresis)
        if up >= level:
            level, since = up, None
        elif held >= level:
            since = None
        else:
            since = ti if since is None else since
            if ti - since >= hold_s:
                level = held
                since = None if held == up else ti
        out.append(level)
    return out

