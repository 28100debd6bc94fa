"""Live memory of the sliding slope and the level latch (issue 17), and that the compact forms
answer exactly as before.

Golden values come from numpy's least squares (``np.polyfit``) over the readings a window
holds, and from the thresholds themselves, never from the code under test.
"""

from __future__ import annotations

import gc
import json
import math
import tracemalloc
from array import array

import numpy as np
import pytest
from geowarn.detectors.latch import LevelLatch
from geowarn.detectors.rise import RiseRateDetector
from geowarn.detectors.slope import DAY, SlidingSlope, SlopeWindows
from geowarn.detectors.threshold import ThresholdDetector

T0 = 1_700_000_000.0


def _live_bytes(make, n: int = 500) -> float:
    """Bytes still allocated per object after making ``n`` of them (one made first, so
    imports and caches are not counted)."""
    keep = [make()]
    gc.collect()
    tracemalloc.start()
    keep = [make() for _ in range(n)]
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(keep) == n
    return held / n


# -- the level latch -----------------------------------------------------------------------------


def test_latches_with_the_same_thresholds_share_their_tables_read_only():
    a = LevelLatch([(2, 10.0), (3, 20.0), (4, 30.0)], 0.1, 600.0)
    b = LevelLatch([[2, 10.0], [3, 20.0], [4, 30.0]], 0.2, 0.0)  # lists, as a config file gives
    assert a.thresholds is b.thresholds and a._bands is b._bands
    assert a.thresholds == ((2, 10.0), (3, 20.0), (4, 30.0))
    with pytest.raises(TypeError):
        a._bands[1] = (0.0, 1.0)  # type: ignore[index]
    # Each keeps its own state: a level reached by one is not the other's.
    assert (a.update(0.0, 25.0), b.update(0.0, 5.0)) == (3, 0)
    assert (a.level, b.level) == (3, 0)


def test_a_latch_costs_its_state_not_its_thresholds():
    thresholds = [(1, 1.0), (2, 3.0), (3, 72.0), (4, 120.0)]
    per_latch = _live_bytes(lambda: LevelLatch(thresholds, 0.1, 3600.0))
    # The object: 7 slots and headers, 88 bytes; before, a list and a dict of band tuples each.
    assert per_latch < 120, per_latch


@pytest.mark.parametrize(("first", "second"), [((2, 10), (2, 10.0)), ((2, 0.0), (2, -0.0))])
def test_equal_thresholds_of_another_type_or_sign_keep_their_own_values(first, second):
    # 10 == 10.0 and 0.0 == -0.0, yet each detector must report the threshold it was given
    # ("10" and "10.0", "0.0" and "-0.0" in the evidence's JSON).
    for thr, text in ((first, json.dumps(first[1])), (second, json.dumps(second[1]))):
        det = ThresholdDetector([thr, (4, 50.0)], unit="mm")
        v = det.update(T0, 20.0)
        assert v.level == 2
        assert json.dumps(v.evidence["threshold"]) == text
    assert json.dumps(first[1]) != json.dumps(second[1])


def test_a_restored_level_the_thresholds_lack_comes_down_through_the_hold():
    # A level from an older policy (3 here; these thresholds have 2 and 4) has no band: the
    # value is judged afresh, and a lower one waits out the hold before the level drops.
    latch = LevelLatch([(2, 10.0), (4, 20.0)], hysteresis=0.1, hold_s=60.0)
    latch.restore({"level": 3, "below_since": None})
    assert [latch.update(t, 12.0) for t in (0.0, 30.0, 60.0, 61.0)] == [3, 3, 2, 2]


# -- the sliding slope ---------------------------------------------------------------------------


def _polyfit_per_day(ts: list[float], vs: list[float]) -> float:
    t = np.asarray(ts) - ts[0]
    return float(np.polyfit(t, np.asarray(vs), 1)[0]) * DAY


def test_windows_hold_unboxed_readings_and_little_more_than_the_longest_window():
    w = SlopeWindows()
    short, long = w.view(6 * 3600.0), w.view(12 * 3600.0)
    ts_obj = w.ts
    rng = np.random.default_rng(3)
    t, kept = T0, []
    for i in range(3000):
        t += 600.0 if i % 400 else 9 * 3600.0  # now and then a gap longer than the short window
        w.push(t, float(rng.normal(0.0, 3.0)) + 0.001 * i)
        kept.append(len(w.ts))
        assert long.n <= len(w.ts) <= long.n + 16 + long.n // 7 + 1
    assert isinstance(w.ts, array) and w.ts.typecode == "d" and w.ts is ts_obj
    assert max(kept) <= 73 + 16 + 11
    # Both windows still agree with a least-squares line through what they hold.
    for view in (short, long):
        k = view.lo - w.base
        expect = _polyfit_per_day(w.ts[k:].tolist(), w.vs[k:].tolist())
        assert view.fit()[0] == pytest.approx(expect, rel=1e-9, abs=1e-9)


def test_a_window_restored_from_its_snapshot_answers_as_the_original():
    rng = np.random.default_rng(5)
    times = T0 + np.cumsum(rng.choice([60.0, 60.0, 600.0, 7200.0], 4000))
    values = np.cumsum(rng.normal(0.01, 0.5, 4000))
    a = SlidingSlope(3600.0)
    b = None
    for i, (t, v) in enumerate(zip(times.tolist(), values.tolist())):
        a.push(t, v)
        if i == 2000:
            b = SlidingSlope(3600.0)
            b.restore(json.loads(json.dumps(a.snapshot())))
        elif b is not None:
            b.push(t, v)
            assert b.fit() == a.fit() and b.points() == a.points()
    x, y = a.points()
    assert isinstance(x, list) and a.fit()[0] == pytest.approx(_polyfit_per_day(x, y), rel=1e-9)


def test_a_piezometer_rise_detector_is_small():
    def fed() -> RiseRateDetector:
        det = RiseRateDetector.for_kind("pore_pressure", interval_s=600.0)
        for i in range(300):
            det.update(T0 + 600.0 * i, 120.0 + 0.01 * math.sin(i))
        return det

    # 37 readings of 6 h unboxed in two arrays, the sums, the latch and the last verdict:
    # ~2.4 KB; it was ~6.1 KB with the readings as float objects in lists and a deque.
    assert _live_bytes(fed, 100) < 3000
