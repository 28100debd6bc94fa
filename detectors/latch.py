"""Level latching: up at once, down only after leaving the band (hysteresis) for a hold time."""

from __future__ import annotations

import math
from typing import Any


_NO_BAND = (math.inf, -math.inf)  # contains no value


class LevelLatch:
    """Maps a scalar to a level 0-4 with a dead band and a hold time, in event time.

    ``thresholds`` is [(level, threshold)] ascending; a level is reached at x >= threshold.
    To come down from level L the value must fall below ``threshold_L - hysteresis*|threshold_L|``
    and stay there for ``hold_s`` seconds of event time.

    >>> latch = LevelLatch([(2, 10.0), (4, 20.0)], hysteresis=0.1, hold_s=60)
    >>> latch.update(0, 25.0), latch.update(10, 19.0), latch.update(30, 17.0), latch.update(91, 17.0)
    (4, 4, 4, 2)
    """

    __slots__ = ("thresholds", "hysteresis", "hold_s", "level", "_below_since", "_lowest", "_bands")

    def __init__(self, thresholds: list[tuple[int, float]], hysteresis: float = 0.1, hold_s: float = 0.0) -> None:
        levels = [lvl for lvl, _ in thresholds]
        if levels != sorted(set(levels)) or any(not 1 <= lvl <= 4 for lvl in levels):
            raise ValueError(f"threshold levels must be distinct, ascending and within 1-4, got {levels}")
        values = [thr for _, thr in thresholds]
        if values != sorted(values) or len(set(values)) != len(values):
            raise ValueError(f"thresholds must rise with the level, got {values}")
        if not 0 <= hysteresis < 1:
            raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis}")
        if hold_s < 0:
            raise ValueError(f"hold_s must be >= 0, got {hold_s}")
        self.thresholds = list(thresholds)
        self._lowest = values[0] if values else math.inf
        # The values at which each level is exactly what the thresholds say (raw == level):
        # there a reading keeps the level and clears any pending hold, whatever came before.
        bounds = [-math.inf, *values, math.inf]
        self._bands = {lvl: (bounds[i], bounds[i + 1]) for i, lvl in enumerate([0, *levels])}
        self.hysteresis = hysteresis
        self.hold_s = hold_s
        self._reset()

    def _reset(self) -> None:
        self.level = 0
        self._below_since: float | None = None

    def raw(self, x: float) -> int:
        level = 0
        for lvl, thr in self.thresholds:
            if x >= thr:
                level = lvl
        return level

    def _held(self, x: float) -> int:
        """The highest level the value still supports inside the dead band."""
        level = 0
        for lvl, thr in self.thresholds:
            if x >= thr - self.hysteresis * abs(thr):
                level = lvl
        return level

    def update(self, t: float, x: float) -> int:
        level = self.level
        # A restored level the thresholds no longer have (the policy changed) has no band.
        lo, hi = self._bands.get(level, _NO_BAND)
        if lo <= x < hi:
            # The usual case: the value is in the current level's own band (quiet and staying
            # quiet, or holding steady at a level), so raw == level and nothing is pending.
            self._below_since = None
            return level
        raw = self.raw(x)
        if raw >= self.level:
            self.level = raw
            self._below_since = None
            return self.level
        held = self._held(x)
        if held >= self.level:
            self._below_since = None
            return self.level
        if self._below_since is None:
            self._below_since = t
        if t - self._below_since >= self.hold_s:
            self.level = held
            self._below_since = None if held == raw else t
        return self.level

    def snapshot(self) -> dict[str, Any]:
        return {"level": self.level, "below_since": self._below_since}

    def restore(self, state: dict[str, Any]) -> None:
        self.level = int(state["level"])
        self._below_since = state["below_since"]
