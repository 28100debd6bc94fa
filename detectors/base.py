"""The shape every streaming detector shares (river's ``DriftDetector`` habit), and its checks.

Public parameters, private state. A detector's constructor validates its parameters once —
a ``ValueError`` that names the parameter and its valid values (the ``check_*`` helpers below
word the common ones alike everywhere) — and keeps each as a public attribute of the same
name. All mutable state is created by one ``_reset()``, which ``__init__`` calls last and
``restore`` starts from, so a reset detector is a fresh one.

The base adds nothing to the per-reading path: ``update`` is each detector's own, tuned code,
and the base has no ``__init__``, no instance attributes and empty ``__slots__``.

>>> class Counter(StreamingDetector):
...     def __init__(self, limit: int = 3) -> None:
...         check_int("limit", limit, 1)
...         self.limit = limit
...         self._reset()
...     def _reset(self) -> None:
...         self._n = 0
>>> Counter(5).params()
{'limit': 5}
>>> Counter(0)
Traceback (most recent call last):
...
ValueError: limit must be an integer >= 1, got 0
"""

from __future__ import annotations

import inspect
from typing import Any

from geowarn.detectors.verdict import Verdict


class StreamingDetector:
    """Base of the streaming detectors: ``update``/``snapshot``/``restore`` over one ``_reset``."""

    __slots__ = ()

    def _reset(self) -> None:
        """Create all mutable state, as a fresh detector has it."""
        raise NotImplementedError

    def update(self, t: float, value: float) -> Verdict:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    def restore(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The constructor's parameters the detector keeps as public attributes, by name.

        A shared resource handed in (``windows``: a channel's ``SlopeWindows``) is state,
        not a parameter, and is private."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {p: getattr(self, p) for p in names if hasattr(self, p)}


def check_int(name: str, value: Any, lo: int) -> None:
    """``value`` must be an integer (not a bool) >= ``lo``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


def check_window(name: str, value: float) -> None:
    """A length of event time: > 0."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_latch(hysteresis: float, hold_s: float) -> None:
    """The ``LevelLatch`` parameters a detector passes through."""
    if not 0 <= hysteresis < 1:
        raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis}")
    if not hold_s >= 0:
        raise ValueError(f"hold_s must be >= 0, got {hold_s}")


def check_channel(interval_s: float, window_s: float, noise_mm: float) -> None:
    """A ``for_channel`` constructor's channel: reporting interval, velocity window and noise, each > 0."""
    if not interval_s > 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    if not window_s > 0:
        raise ValueError(f"window_s must be > 0, got {window_s}")
    if not noise_mm > 0:
        raise ValueError(f"noise_mm must be > 0, got {noise_mm}")


def check_slope(min_span: float, z: float) -> None:
    """The sliding slope's coverage (``min_span`` of its window) and significance (``z``)."""
    if not 0 < min_span <= 1:
        raise ValueError(f"min_span must be in (0, 1], got {min_span}")
    if not z >= 0:
        raise ValueError(f"z must be >= 0, got {z}")


def ring_values(rb: list[float], rn: int, ri: int) -> list[float]:
    """The values of a persistence ring (``rb``: its slots, ``rn`` filled, ``ri`` the next to
    write), oldest first: what a ``deque(maxlen=len(rb))`` of them would list.

    >>> ring_values([4.0, 5.0, 3.0], 3, 2), ring_values([1.0, 0.0, 0.0], 1, 1)
    ([3.0, 4.0, 5.0], [1.0])
    """
    return rb[:rn] if rn < len(rb) else rb[ri:] + rb[:ri]


def ring_restore(rb: list[float], values: list[Any]) -> tuple[int, int, int]:
    """Fill a persistence ring's slots ``rb`` with the newest of ``values`` (as a deque with
    ``maxlen=len(rb)`` keeps them); returns (filled, next slot, how many of the newest are not 0).

    >>> rb = [0.0] * 3
    >>> ring_restore(rb, [9, 0.0, 2.0, 5.0]), rb
    ((3, 0, 2), [0.0, 2.0, 5.0])
    """
    p = len(rb)
    recent = [float(x) for x in values][-p:]
    rn = len(recent)
    rb[:rn] = recent
    rz = 0
    while rz < rn and recent[rn - 1 - rz] != 0.0:
        rz += 1
    return rn, rn % p, rz
