"""A first-in-first-out window of floats in one flat ``array('d')``: 8 bytes a value.

The detectors' windows were ``collections.deque``s of Python floats or of ``(t, value)``
tuples: a float costs 24 bytes plus an 8-byte slot, a tuple of two 104, and every deque at
least one 64-slot block (~600 bytes) however few values it holds. At a national fleet's
million channels with a dozen windows each that is most of the memory (issue 17). A
``FloatRing`` keeps its values unboxed in one ``array('d')``; the values dropped from the left
are cut off in blocks (amortised O(1), as ``SlopeWindows`` does with its lists), so the array
is at most about twice the live window plus a small constant.

A ``maxlen`` ring drops from the left on append when full, as ``deque(maxlen=...)`` does.
Values go in and come out as Python floats (an ``array('d')`` stores IEEE doubles exactly),
so a detector's arithmetic, its verdicts and its snapshots are the same bit for bit.

>>> r = FloatRing()
>>> for x in (1.0, 2.0, 3.0):
...     r.append(x)
>>> r.popleft(), len(r), r[0], r[-1], list(r)
(1.0, 2, 2.0, 3.0, [2.0, 3.0])
>>> r.pop(), r.tolist()
(3.0, [2.0])
>>> m = FloatRing(maxlen=2)
>>> for x in (1.0, 2.0, 3.0):
...     m.append(x)
>>> m.tolist(), m.full
([2.0, 3.0], True)
>>> FloatRing([0.5, -1.0]).tolist(), bool(FloatRing())
([0.5, -1.0], False)
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator

_SLACK = 16  # dropped values kept before the first cut, so short windows never shuffle


class FloatRing:
    """A deque of floats (append/popleft/pop, indexing from either end) stored unboxed."""

    __slots__ = ("_a", "_h", "maxlen")

    def __init__(self, values: Iterable[float] = (), maxlen: int | None = None) -> None:
        if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 0):
            raise ValueError(f"maxlen must be an integer >= 0 or None, got {maxlen!r}")
        self.maxlen = maxlen
        self._a = array("d")
        self._h = 0  # index in _a of the leftmost live value
        for x in values:
            self.append(x)

    def __len__(self) -> int:
        return len(self._a) - self._h

    def __bool__(self) -> bool:
        return len(self._a) > self._h

    @property
    def full(self) -> bool:
        return self.maxlen is not None and len(self._a) - self._h >= self.maxlen

    def append(self, x: float) -> None:
        a = self._a
        m = self.maxlen
        if m is not None and len(a) - self._h >= m:
            if m == 0:
                return
            self._drop(1)
        a.append(x)

    def _drop(self, k: int) -> None:
        h = self._h + k
        a = self._a
        if h > _SLACK and 2 * h > len(a):
            del a[:h]  # one memmove for many drops
            h = 0
        self._h = h

    def popleft(self) -> float:
        h = self._h
        a = self._a
        if h >= len(a):
            raise IndexError("pop from an empty FloatRing")
        x = a[h]
        self._drop(1)
        return x

    def pop(self) -> float:
        if self._h >= len(self._a):
            raise IndexError("pop from an empty FloatRing")
        x = self._a.pop()
        if self._h == len(self._a):
            self.clear()
        return x

    def clear(self) -> None:
        del self._a[:]
        self._h = 0

    def __getitem__(self, i: int) -> float:
        a = self._a
        h = self._h
        if i < 0:
            if -i > len(a) - h:
                raise IndexError("FloatRing index out of range")
            return a[i]
        i += h
        if i >= len(a):
            raise IndexError("FloatRing index out of range")
        return a[i]

    def __iter__(self) -> Iterator[float]:
        return iter(self._a[self._h :])  # a copy: appending while iterating is safe

    def tolist(self) -> list[float]:
        return self._a[self._h :].tolist() if self._h else self._a.tolist()

    def __repr__(self) -> str:
        return f"FloatRing({self.tolist()!r}, maxlen={self.maxlen!r})"
