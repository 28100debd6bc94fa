"""``FloatRing`` behaves as ``collections.deque`` of floats does, operation for operation."""

from __future__ import annotations

import random
from collections import deque

import pytest

from geowarn.detectors.ring import FloatRing


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("maxlen", [None, 0, 1, 3, 40])
def test_a_ring_matches_a_deque_over_random_operations(seed: int, maxlen: int | None) -> None:
    rng = random.Random(seed)
    ring, ref = FloatRing(maxlen=maxlen), deque(maxlen=maxlen)
    for step in range(3000):
        op = rng.random()
        if op < 0.55:
            x = rng.choice([rng.uniform(-1e9, 1e9), 1.7e9 + step * 600.0, 0.1, -0.0, float("inf")])
            ring.append(x)
            ref.append(x)
        elif op < 0.8:
            if ref:
                assert ring.popleft() == ref.popleft()
            else:
                with pytest.raises(IndexError):
                    ring.popleft()
        elif op < 0.9:
            if ref:
                assert ring.pop() == ref.pop()
            else:
                with pytest.raises(IndexError):
                    ring.pop()
        elif op < 0.92:
            ring.clear()
            ref.clear()
        assert len(ring) == len(ref) and bool(ring) == bool(ref)
        if ref:
            i = rng.randrange(-len(ref), len(ref))
            assert ring[i] == ref[i] and ring[0] == ref[0] and ring[-1] == ref[-1]
        for bad in (len(ref), -len(ref) - 1):
            with pytest.raises(IndexError):
                ring[bad]
        if step % 97 == 0:
            assert ring.tolist() == list(ref) == list(ring)
            assert ring.full == (maxlen is not None and len(ref) == maxlen)


def test_a_long_lived_ring_stays_about_twice_its_window() -> None:
    ring = FloatRing()
    for i in range(100_000):
        ring.append(float(i))
        if len(ring) > 50:
            ring.popleft()
    assert len(ring._a) <= 2 * 50 + 20
    assert ring.tolist() == [float(i) for i in range(100_000 - 50, 100_000)]


def test_a_bad_maxlen_is_refused_with_its_value() -> None:
    with pytest.raises(ValueError, match="maxlen must be an integer >= 0 or None, got -1"):
        FloatRing(maxlen=-1)
