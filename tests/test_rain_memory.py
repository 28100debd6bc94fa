"""The rain detectors' compact state (issue 17): unboxed windows, shared configuration, exact
snapshots, and the state GeoWarn wrote before the change still restores."""

from __future__ import annotations

import gc
import json
import random
import tracemalloc

import pytest
from geowarn.detectors import rain as rain_module
from geowarn.detectors.rain import (
    AntecedentRain,
    IntensityDuration,
    RainDetector,
    RainSums,
    RainThresholds,
)

T0 = 1_700_000_000.0


def _brute_sums(readings: list[tuple[float, float, int]], t: float, window: float) -> float:
    """The rain (mm) of (t - window, t] from every wet interval (a, b] with q hundredths spread
    uniformly over it: the module docstring's reading model, summed from scratch."""
    h = t - window
    total = 0.0
    for a, b, q in readings:
        if b <= h:
            continue
        total += q if a >= h else q * (b - h) / (b - a)
    return total / 100


def test_window_sums_match_a_sum_from_scratch_through_long_storms() -> None:
    """Minute sampling with jitter and gaps: thousands of entries per window, windows emptied
    and refilled, the start of a window inside a reading's interval."""
    rng = random.Random(17)
    det = RainDetector.for_channel(interval_s=60.0)
    readings: list[tuple[float, float, int]] = []
    t_last = None
    t = T0
    for i in range(7000):
        t += rng.choice([60.0, 60.0, 60.0, 17.5, 150.0]) if not 3000 < i < 3100 else 4 * 3600.0
        storm = i < 2500 or 4500 < i < 5200
        x = round(rng.expovariate(2.0), 1) if storm and rng.random() < 0.7 else 0.0
        v = det.update(t, x)
        if t_last is not None:
            q = round(x * 100)
            if q:
                readings.append((max(t_last, t - det.max_interval_s), t, q))
        t_last = t
        if i % 97 == 0 and i:
            for label, w in (("1h", 3600.0), ("24h", 86400.0), ("72h", 259200.0)):
                assert v.evidence[f"sum_{label}_mm"] == pytest.approx(_brute_sums(readings, t, w), rel=1e-12, abs=1e-9)
            # The unboxed store holds the entries of the longest window, plus at most as many
            # dropped ones waiting for one cut.
            live = sum(1 for _, b, _ in readings if b > t - 259200.0)
            assert len(det.sums._qb) - det.sums._win[-2] == live  # the longest window's head
            assert len(det.sums._qb) <= 2 * live + 17
            assert len(det.sums._tb) == 2 * len(det.sums._qb)


def test_no_instance_dicts_and_shared_configuration_but_private_state() -> None:
    a = RainDetector.for_channel(interval_s=600.0)
    b = RainDetector.for_channel(interval_s=600.0)
    for det in (a, a.sums, a.intensity, a.antecedent, RainThresholds()):
        assert not hasattr(det, "__dict__"), type(det).__name__
    # What equal parameters derive alike is one object...
    assert a.sums.windows is b.sums.windows
    assert a.sums._keys is b.sums._keys
    assert a.antecedent._w is b.antecedent._w
    assert a.intensity.levels is b.intensity.levels
    # ...and immutable; every piece of state is the channel's own.
    assert isinstance(a.sums.windows, tuple) and isinstance(a.antecedent._w, tuple)
    for name in ("_latches", "_win", "_x", "_levels", "_tb", "_qb"):
        assert getattr(a.sums, name) is not getattr(b.sums, name), name
    assert a.antecedent._hist is not b.antecedent._hist
    assert a._sources is not b._sources and a._sources == b._sources
    a.update(T0, 0.0)
    a.update(T0 + 600.0, 80.0)
    assert a.level == 4 and b.level == 0
    # A verdict's evidence is its own: changing it changes nothing the next verdict is made of.
    v = a.update(T0 + 1200.0, 1.0)
    v.evidence["event_total_mm"] = -1.0
    v.evidence["thresholds"] = {}
    w = a.update(T0 + 1800.0, 2.0).evidence
    assert (w["sum_1h_mm"], w["event_total_mm"]) == (83.0, 83.0)
    assert w["thresholds"] == b._sources


def test_equal_parameters_of_other_types_do_not_share_derived_values() -> None:
    """A Fraction k equal to a float gets its own powers (the cache is typed)."""
    from fractions import Fraction

    f = AntecedentRain(k=0.5, days=3)
    g = AntecedentRain(k=Fraction(1, 2), days=3)
    assert [type(w) for w in f._w] == [float] * 4
    assert g._w == (1, Fraction(1, 2), Fraction(1, 4), Fraction(1, 8))


def test_parameters_given_as_lists_still_build_and_validate() -> None:
    s = RainSums([[3600, [[2, 5], [3, 9.5]]]])
    assert s.windows == ((3600.0, ((2, 5.0), (3, 9.5))),)
    i = IntensityDuration(levels=[[2, 1.0]])
    assert i.levels == ((2, 1.0),)
    with pytest.raises(ValueError, match="thresholds must be > 0"):
        RainSums([(3600.0, ((2, 0.0),))])
    with pytest.raises(ValueError, match="rise with the level"):
        AntecedentRain([[2, 10.0], [3, 5.0]])


def test_int_times_and_huge_amounts_snapshot_exactly() -> None:
    det = RainDetector.for_channel(interval_s=600)
    for i, x in enumerate([0.0, 1.0, 1e17, 0.0]):
        det.update(1_700_000_000 + 600 * i, x)
    entries = det.snapshot()["sums"]["entries"]
    # Times as the caller gave them (ints), hundredths beyond 64 bits exact: 1e17 mm = 10**19.
    assert entries == [[1_700_000_000, 1_700_000_600, 100], [1_700_000_600, 1_700_001_200, 10**19]]
    assert det.snapshot()["antecedent"]["today"] == 100 + 10**19
    copy = RainDetector.for_channel(interval_s=600)
    copy.restore(json.loads(json.dumps(det.snapshot())))
    assert copy.update(1_700_002_400, 0.0).evidence["sum_24h_mm"] == (100 + 10**19) / 100


# The state of a gauge as GeoWarn wrote it before issue 17 (RainDetector.for_channel(600.0),
# fed rain [0, 2, 0, 5.5, 12, 0, 0, 30, 8, 0] + 20 dry readings + [1, 0, 0.4] every 10
# minutes from T0), and what that code then said for the next five readings.
OLD_STATE = json.loads(
    '{"t_last": 1700019200.0, "t_first": 1700000000.0, "last": {"level": 3, "reason": "1h rain 1.4 mm (\\u2265 orange 50 mm, '
    'or held); rain event 5.3 h at 11.0 mm/h = 1.43\\u00d7 the I\\u2013D threshold 7.7 mm/h (\\u2265 orange 2\\u00d7, or held)", '
    '"evidence": {"sum_1h_mm": 1.4, "sum_24h_mm": 58.9, "sum_72h_mm": 58.9, "sum_window": "1h", "sum_threshold_mm": 50.0, '
    '"event_start": 1700000000.0, "event_duration_h": 5.333333333333333, "event_total_mm": 58.9, "event_intensity_mm_h": '
    '11.043750000000001, "id_threshold_mm_h": 7.714693913137401, "id_ratio": 1.4315214737416257, "effective_rain_mm": 49.7, '
    '"today_mm": 1.4, "effective_threshold_mm": null, "levels": {"sums": 3, "intensity_duration": 3, "antecedent": 0}, '
    '"record_start_t": 1700000000.0, "thresholds": {"sum_1h": "defaults", "sum_24h": "defaults", "sum_72h": "defaults", '
    '"intensity_duration": "defaults", "antecedent": "defaults"}}, "warming_up": false}, "sums": {"entries": '
    "[[1700000000.0, 1700000600.0, 200], [1700001200.0, 1700001800.0, 550], [1700001800.0, 1700002400.0, 1200], "
    "[1700003600.0, 1700004200.0, 3000], [1700004200.0, 1700004800.0, 800], [1700017400.0, 1700018000.0, 100], "
    '[1700018600.0, 1700019200.0, 40]], "x": [1.4, 58.9, 58.9], "latches": [{"level": 3, "below_since": 1700006000.0}, '
    '{"level": 2, "below_since": null}, {"level": 0, "below_since": null}]}, "intensity_duration": {"event": [1700000000.0, '
    '1700019200.0, 5890, 5.333333333333333, 11.043750000000001, 7.714693913137401, 1.4315214737416257], "latch": {"level": 3, '
    '"below_since": 1700018000.0}}, "antecedent": {"day": 19676, "today": 140, "hist": [5750], "past": 4830.0, "x": 49.7, '
    '"latch": {"level": 0, "below_since": null}}}'
)
OLD_NEXT = [
    (3, 4.4, 61.9, 52.7, 1.4764583652881687),
    (3, 4.4, 61.9, 52.7, 1.4764583652881687),
    (3, 4.4, 61.9, 52.7, 1.4764583652881687),
    (3, 43.4, 101.9, 92.7, 2.3049086493195765),
    (3, 43.4, 101.9, 92.7, 2.3049086493195765),
]


def test_state_written_before_the_change_restores_and_continues_alike() -> None:
    det = RainDetector.for_channel(interval_s=600.0)
    det.restore(OLD_STATE)
    assert json.loads(json.dumps(det.snapshot())) == OLD_STATE
    got = []
    for i, x in enumerate([3.0, 0.0, 0.0, 40.0, 0.0]):
        v = det.update(T0 + 600.0 * (33 + i), x)
        e = v.evidence
        got.append((v.level, e["sum_1h_mm"], e["sum_24h_mm"], e["effective_rain_mm"], e["id_ratio"]))
    assert got == OLD_NEXT


def test_a_week_of_a_rain_gauge_stays_small() -> None:
    """Live bytes the rain module allocates per channel after a week of 10-minute readings
    (issue 17: ~12.7 KB before; latches and verdicts are counted in their own modules)."""
    rng = random.Random(3)
    series = [(T0 + 600.0 * i, round(rng.expovariate(1.0), 1) if rng.random() < 0.05 else 0.0) for i in range(1008)]
    n = 50
    gc.collect()
    tracemalloc.start()
    dets = []
    for _ in range(n):
        det = RainDetector.for_channel(interval_s=600.0)
        for t, x in series:
            det.update(t, x)
        dets.append(det)
    gc.collect()
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, rain_module.__file__)])
    tracemalloc.stop()
    per_channel = sum(s.size for s in snap.statistics("filename")) / n
    assert per_channel < 6000, per_channel
    assert all(d.level == dets[0].level for d in dets)


def test_reused_methods_and_repeated_restores_start_from_scratch() -> None:
    """The latches are reset in place, not rebuilt: a method that judged rain before joins a
    combined detector fresh, and a detector restored twice equals one restored once."""
    rng = random.Random(5)
    series = [(T0 + 600.0 * i, round(rng.expovariate(0.2), 1) if rng.random() < 0.3 else 0.0) for i in range(600)]
    used = RainSums(hold_s=3600.0)
    for t, x in series:
        used.update(t, x)
    assert used.level > 0
    fresh = RainDetector(RainSums(hold_s=3600.0))
    reused = RainDetector(used)
    assert reused.snapshot() == fresh.snapshot()
    assert [reused.update(t, x) for t, x in series] == [fresh.update(t, x) for t, x in series]
    state = json.loads(json.dumps(fresh.snapshot()))
    twice = RainDetector.for_channel(interval_s=600.0, hold_s=3600.0)
    for t, x in series[:300]:
        twice.update(t, x)
    twice.restore(state)
    once = RainDetector.for_channel(interval_s=600.0, hold_s=3600.0)
    once.restore(state)
    assert twice.snapshot() == once.snapshot() == state
    more = [(T0 + 600.0 * (600 + i), x) for i, (_, x) in enumerate(series[:200])]
    assert [twice.update(t, x) for t, x in more] == [once.update(t, x) for t, x in more]
