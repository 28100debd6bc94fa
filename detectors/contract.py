"""The detector contract, and the cases the shared contract suite runs over every detector.

A detector is a small stateful object:

    update(t, value) -> Verdict     one reading, in event time (seconds); never reads a clock
    snapshot() -> dict              JSON-serialisable state
    restore(dict) -> None           continue exactly where the snapshot was taken

Rules every detector keeps (``tests/test_detector_contract.py`` checks them):

- public parameters are constructor arguments, validated with ``ValueError`` naming the valid
  values; private state is created by one ``_reset()`` that ``__init__`` calls;
- no mutable default arguments;
- while ``warming_up`` the level is 0: a detector that does not yet know enough says nothing;
- the same input gives the same verdicts (no randomness, no clock);
- a snapshot taken after any reading, restored into a fresh detector, gives the same later
  verdicts as the uninterrupted detector;
- a batch reference (numpy/scipy, written independently of the streaming code) gives the
  same levels as streaming, however the input is chunked;
- evidence is a flat-ish dict of JSON-serialisable values (it ends up in alerts.jsonl).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from geowarn.detectors.verdict import Verdict


class Detector(Protocol):
    def update(self, t: float, value: float) -> Verdict: ...

    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


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
