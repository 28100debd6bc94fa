"""Stable random streams: one generator per (seed, names), the same in every process and run,
so a scenario's devices, faults and weather draw the same numbers however the run is split."""

from __future__ import annotations

import hashlib

import numpy as np


def stable_rng(seed: int, *parts: str) -> np.random.Generator:
    """A generator seeded from ``seed`` and names (blake2b: stable across processes)."""
    digest = hashlib.blake2b("\x1f".join((str(seed), *parts)).encode(), digest_size=16).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest, "little")))
