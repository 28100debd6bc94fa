"""Level latching: up at once, down only after leaving the band (hysteresis) for a hold time.

Every channel of a kind has latches with the same thresholds, so what a latch derives from
its thresholds (the threshold pairs, the band of each level, the lowest threshold) is built
once per distinct set of thresholds and shared, read-only, by all of them; a latch holds
only its level, its pending hold and references (issue 17: ~0.3-0.5 KB a latch before).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from types import MappingProxyType
from typing import Any

_NO_BAND = (math.inf, -math.inf)  # contains no value


def _exact(x: Any) -> tuple[Any, ...]:
    """A key part equal only for values that are the same type, value and sign (0.0 vs -0.0),
    so a shared table hands every latch the very values it was given."""
    return (type(x), x, math.copysign(1.0, x)) if x == 0 else (type(x), x)


#: (threshold pairs, level -> band, lowest threshold): what a latch derives from its thresholds.
_Tables = tuple[tuple[tuple[int, float], ...], Mapping[int, tuple[float, float]], float]


@lru_cache(maxsize=4096)
def _tables(key: tuple[tuple[tuple[Any, ...], tuple[Any, ...]], ...]) -> _Tables:
    """(threshold pairs, level -> band, lowest threshold) of the thresholds ``key`` spells
    out (see ``_exact``), validated; immutable, so latches can share them."""
    thresholds = tuple((lvl[1], thr[1]) for lvl, thr in key)
    return _build(thresholds)


#: id -> (thresholds, their tables) for thresholds given as a tuple of (int, float) tuples,
#: which cannot change: a detector passes its own such tuple to every latch it makes (a restore
#: makes them again), and finds the tables without spelling out the key (issue 17). Holding the
#: tuple keeps its id from being reused; at most ``_BY_OBJECT_MAX`` are held.
_BY_OBJECT: dict[int, tuple[Any, _Tables]] = {}
_BY_OBJECT_MAX = 4096


def _tables_of(thresholds: Sequence[tuple[int, float]]) -> _Tables:
    try:
        tables = _tables(tuple((_exact(lvl), _exact(thr)) for lvl, thr in thresholds))
    except TypeError:  # an unhashable threshold: this latch builds its own tables
        return _build(tuple((lvl, thr) for lvl, thr in thresholds))
    if type(thresholds) is tuple and all(
        type(p) is tuple and len(p) == 2 and type(p[0]) is int and type(p[1]) is float for p in thresholds
    ):
        if len(_BY_OBJECT) >= _BY_OBJECT_MAX:
            _BY_OBJECT.clear()
        _BY_OBJECT[id(thresholds)] = (thresholds, tables)
    return tables


def _build(thresholds: tuple[tuple[int, float], ...]) -> _Tables:
    levels = [lvl for lvl, _ in thresholds]
    if levels != sorted(set(levels)) or any(not 1 <= lvl <= 4 for lvl in levels):
        raise ValueError(f"threshold levels must be distinct, ascending and within 1-4, got {levels}")
    values = [thr for _, thr in thresholds]
    if values != sorted(values) or len(set(values)) != len(values):
        raise ValueError(f"thresholds must rise with the level, got {values}")
    # The values at which each level is exactly what the thresholds say (raw == level):
    # there a reading keeps the level and clears any pending hold, whatever came before.
    bounds = [-math.inf, *values, math.inf]
    bands = MappingProxyType({lvl: (bounds[i], bounds[i + 1]) for i, lvl in enumerate([0, *levels])})
    return thresholds, bands, values[0] if values else math.inf


class LevelLatch:
    """Maps a scalar to a level 0-4 with a dead band and a hold time, in event time.

    ``thresholds`` is [(level, threshold)] ascending; a level is reached at x >= threshold.
    To come down from level L the value must fall below ``threshold_L - hysteresis*|threshold_L|``
    and stay there for ``hold_s`` seconds of event time. ``thresholds`` is kept as a tuple of
    (level, threshold) pairs, shared with every latch given the same thresholds.

    >>> latch = LevelLatch([(2, 10.0), (4, 20.0)], hysteresis=0.1, hold_s=60)
    >>> latch.update(0, 25.0), latch.update(10, 19.0), latch.update(30, 17.0), latch.update(91, 17.0)
    (4, 4, 4, 2)
    >>> LevelLatch([[2, 10.0], [4, 20.0]])._bands is latch._bands, latch.thresholds
    (True, ((2, 10.0), (4, 20.0)))
    """

    __slots__ = ("_bands", "_below_since", "_lowest", "hold_s", "hysteresis", "level", "thresholds")

    def __init__(self, thresholds: Sequence[tuple[int, float]], hysteresis: float = 0.1, hold_s: float = 0.0) -> None:
        mine = _BY_OBJECT.get(id(thresholds))
        if mine is not None and mine[0] is thresholds:  # a detector's own thresholds tuple again
            tables = mine[1]
        else:
            tables = _tables_of(thresholds)
        if not 0 <= hysteresis < 1:
            raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis}")
        if hold_s < 0:
            raise ValueError(f"hold_s must be >= 0, got {hold_s}")
        self.thresholds, self._bands, self._lowest = tables
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
        try:
            lo, hi = self._bands[level]
        except KeyError:  # a restored level the thresholds no longer have (the policy changed)
            lo, hi = _NO_BAND
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
