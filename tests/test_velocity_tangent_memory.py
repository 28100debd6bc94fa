"""Velocity and tangent-angle detectors kept small (issue 17): no deques, no per-instance tables,
``__slots__`` — and still the same verdicts, the same snapshots, and restores of old ones.

The detectors are built as site fusion builds them for a GNSS component read every 10 minutes
(one ``SlopeWindows`` shared through a ``SharedWindows`` stage, the kind's noise figure, a
persistence of 3 readings and of half the window) and fed a slope that is still for days and
then accelerates, with a radio gap longer than the window, repeated and non-finite readings.
"""

from __future__ import annotations

import json
import math
import random
import tracemalloc
from typing import Any

import pytest
from geowarn.detectors.noise import noise_for
from geowarn.detectors.slope import SharedWindows, SlopeWindows
from geowarn.detectors.tangent import TangentAngleDetector
from geowarn.detectors.velocity import VelocityDetector

DAY = 86400.0
HOUR = 3600.0
STEP = 600.0
LEVELS = [(2, 10.0), (3, 72.0), (4, 120.0)]


def _bank(levels: list[tuple[int, float]] = LEVELS) -> list[Any]:
    shared = SlopeWindows()
    noise = noise_for("gnss_e", "mm")
    return [
        SharedWindows(shared),
        VelocityDetector(levels, window_s=6 * HOUR, hold_s=2 * STEP, unit="mm", persist=3, windows=shared, noise=noise, persist_s=3 * HOUR),
        TangentAngleDetector.for_channel(window_s=6 * HOUR, interval_s=STEP, hold_s=2 * STEP, unit="mm", persist=3, windows=shared, noise=noise),
    ]


def _series(seed: int, n: int = 1500) -> list[tuple[float, float]]:
    """Still (3 mm noise) for 4 days, then creeping ever faster (up to hundreds of mm/day);
    a 9-hour gap on day 6, a repeated time, a reading back in time and a NaN."""
    rng = random.Random(seed)
    out = []
    t0 = 1.7e9
    for i in range(n):
        t = t0 + i * STEP + (9 * HOUR if i >= 900 else 0.0)
        age = max(0.0, (t - t0) / DAY - 4.0)
        out.append((t, 40.0 * age**3 + rng.gauss(0.0, 3.0)))
        if i == 700:
            out.append((t, 5.0))  # repeated time
        if i == 701:
            out.append((t - 3 * STEP, 1.0))  # back in time
        if i == 702:
            out.append((t + 1.0, math.nan))
    return out


def _feed(bank: list[Any], readings: list[tuple[float, float]]) -> list[list[dict[str, Any]]]:
    return [[d.update(t, v).to_dict() for d in bank[1:]] for t, v in readings]


@pytest.mark.parametrize("seed", [1, 2])
def test_a_restore_anywhere_continues_exactly_as_the_uninterrupted_detectors(seed: int) -> None:
    readings = _series(seed)
    whole = _bank()
    expected = _feed(whole, readings)
    # The levels really move (the persistence windows see positive speeds and angles), so the
    # cuts below fall on still, rising, gapped and latched stretches alike.
    assert {v[0]["level"] for v in expected} >= {0, 2, 4} and {v[1]["level"] for v in expected} >= {0, 2}
    for cut in (5, 40, 433, 600, 703, 905, 1100, 1300, len(readings) - 1):
        first = _bank()
        _feed(first, readings[:cut])
        states = json.loads(json.dumps([d.snapshot() for d in first]))
        second = _bank()
        for d, s in zip(second, states):
            d.restore(s)
        assert [d.snapshot() for d in second] == states
        assert _feed(second, readings[cut:]) == expected[cut:], cut
        assert json.dumps([d.snapshot() for d in second]) == json.dumps([d.snapshot() for d in whole])


def test_old_snapshots_restore_as_their_deques_kept_them() -> None:
    """The old detectors kept ``recent`` in a deque(maxlen=persist) and ``since`` as (t, speed)
    pairs; a snapshot they wrote (here by hand, as they wrote it) restores to the same lists."""
    _, vel, tan = _bank()
    last = {"level": 0, "reason": "", "evidence": {"significant": False}, "warming_up": False}
    t = 1.7e9
    vel.restore(
        {
            "recent": [9.0, 0.0, 12.5, 14.0, 15.5],  # longer than persist = 3: the deque kept the last 3
            "latch": {"level": 2, "below_since": None},
            "last_t": t,
            "last": last,
            "since": [[t - 3 * HOUR - STEP, 0.0], [t - 2 * HOUR, 12.5], [t - HOUR, 14.0], [t, 15.5]],
            "residuals": [60.0, 2.0, 9.0, 1.0, -0.5],
        }
    )
    got = vel.snapshot()
    assert got["recent"] == [12.5, 14.0, 15.5]
    assert got["since"] == [[t - 3 * HOUR - STEP, 0.0], [t - 2 * HOUR, 12.5], [t - HOUR, 14.0], [t, 15.5]]
    assert got["residuals"] == [60.0, 2.0, 9.0, 1.0, -0.5] and got["latch"] == {"level": 2, "below_since": None}
    state = tan.snapshot()
    state.update(recent=[1.0, 47.5], last_t=t, last=last)
    tan.restore(state)
    assert tan.snapshot()["recent"] == [1.0, 47.5]
    # A later reading goes to the end of the restored window, the oldest leaving it.
    _, vel2, _ = _bank()
    vel2.restore({"recent": [0.0, 3.0], "latch": {"level": 0, "below_since": None}, "last_t": None, "last": last})
    assert vel2.snapshot()["recent"] == [0.0, 3.0]


def test_detectors_with_the_same_parameters_share_their_tables_read_only() -> None:
    a, b = _bank()[1:], _bank()[1:]
    assert a[0]._said is b[0]._said and a[1]._said is b[1]._said and a[1].thresholds_deg is b[1].thresholds_deg
    with pytest.raises(TypeError):
        a[0]._said[2] = (1.0, "x")  # type: ignore[index]
    for d in a + b:
        assert not hasattr(d, "__dict__")


def test_a_threshold_of_3_and_one_of_3_point_0_each_say_their_own() -> None:
    """Equal but differently typed thresholds must not share a table: the evidence (and its
    JSON) says the threshold as the registry gave it."""
    readings = [(1.7e9 + i * STEP, 2.0 * i) for i in range(60)]  # 288 mm/day, no noise
    said = {}
    for thr in (3, 3.0):
        vel = VelocityDetector([(2, thr)], window_s=6 * HOUR, persist=1)
        ev = [vel.update(t, v) for t, v in readings][-1]
        assert ev.level == 2
        said[type(thr)] = json.dumps(ev.evidence["threshold"]), ev.reason
    assert said[int][0] == "3" and said[float][0] == "3.0"
    assert said[int][1] == said[float][1] == "velocity 288.0 mm/day (≥ yellow 3 mm/day over 6 h, or held)"


def test_a_frozen_reference_lets_its_learning_state_go() -> None:
    _, _, tan = bank = _bank()
    _feed(bank, _series(3, n=3 * 144 + 10))
    ref = tan._ref
    assert ref.rate is not None and ref.smooth is None and ref.n == 0
    again = _bank()[2]
    again.restore(json.loads(json.dumps(tan.snapshot())))
    assert again._ref.smooth is None and again.snapshot() == tan.snapshot()


def test_live_memory_per_channel_is_a_fraction_of_what_deques_cost() -> None:
    """Bytes the two detector modules hold per channel after 7 days of 10-minute readings of
    this accelerating slope. With deques, (t, speed) tuples, per-instance label tables and
    instance dicts they held 13.0 KB here (velocity 8.4 KB, tangent 4.6 KB: this same count
    run against the code before issue 17); 4.1 KB now, the most of it the latest verdicts'
    evidence and the positive speeds of the persistence window."""
    readings = _series(4, n=1008)
    _feed(_bank(), readings)  # caches and interned values made once, outside the count
    tracemalloc.start(1)
    banks = []
    for _ in range(40):
        bank = _bank()
        _feed(bank, readings)
        banks.append(bank)
    snap = tracemalloc.take_snapshot()
    tracemalloc.stop()
    mine = sum(s.size for s in snap.statistics("filename") if s.traceback[0].filename.endswith(("detectors/velocity.py", "detectors/tangent.py")))
    assert mine / len(banks) < 5000
