"""Clocks for timers. Live mode reads the wall clock here and only here; replay and tests use
a clock they set, so nothing waits for real time to pass."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class WallClock:
    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to: tests set and advance it."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = start

    def now(self) -> float:
        return self._t

    def set(self, t: float) -> None:
        if t < self._t:
            raise ValueError(f"a clock does not run backwards ({t} < {self._t})")
        self._t = t

    def advance(self, dt: float) -> None:
        self.set(self._t + dt)


class EventClock:
    """Event time as the data tells it: the latest reading time observed so far.

    For accelerated runs (the demo, a replay into a live daemon) where the wall clock says
    nothing about how much simulated time has passed.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._t = start

    def now(self) -> float:
        return self._t

    def observe(self, t: float) -> None:
        if t > self._t:
            self._t = t
