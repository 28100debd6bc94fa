"""Quality guards and the no-data monitor.

Golden values are worked out by hand in the comments (Hampel: median, MAD, 3.5 · 1.4826 · MAD),
or come from an independent reference: the numpy batch flags for the guards, a brute-force scan
for the no-data monitor. The real-data test reads the Three Gorges Baishuihe GPS record and
skips when ../shared/data is absent.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geowarn.detectors import nodata, quality
from geowarn.detectors.nodata import NoDataEvent, NoDataMonitor
from geowarn.detectors.quality import (
    ClockGuard,
    QualityGuard,
    RangeGuard,
    SpikeGuard,
    StepBackGuard,
    StuckGuard,
)
from oracles import quality as quality_oracle
from oracles.quality import batch_flags, batch_quality_flags

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "three_gorges_baishuihe_bazimen"


def flags(guard, series):
    return [guard.update(t, v).evidence.get("flag") for t, v in series]


def feed(guard, values, t0=0.0, dt=600.0):
    return [guard.update(t0 + i * dt, v) for i, v in enumerate(values)]


# -- spike (Hampel) ---------------------------------------------------------------------------


def test_hampel_golden_window():
    # Window [10, 10.1, 9.9, 10, 10.2]: sorted 9.9 10 10 10.1 10.2 -> median 10.
    # |x - 10| = 0.1 0 0 0.1 0.2 -> sorted 0 0 0.1 0.1 0.2 -> MAD 0.1.
    # Cut = 3.5 * 1.4826 * 0.1 = 0.51891; 50 is 40 away.
    g = SpikeGuard(window=5, k=3.5, min_mad=0.0)
    warm = feed(g, [10, 10.1, 9.9, 10, 10.2])
    assert all(v.warming_up and v.level == 0 for v in warm)
    v = g.update(5 * 600.0, 50.0)
    assert v.level == 0 and v.evidence["suspect"] is True and v.evidence["flag"] == "spike"
    assert v.evidence["median"] == pytest.approx(10.0)
    assert v.evidence["mad"] == pytest.approx(0.1)
    assert v.evidence["threshold"] == pytest.approx(0.51891)
    assert "spike" in v.reason
    # The spike did not enter the window: the same reference judges the next readings.
    assert g.update(6 * 600.0, 10.5).evidence == {"suspect": False}  # 0.5 < 0.51891
    # Window now [10.1, 9.9, 10, 10.2, 10.5]: median 10.1, |dev| 0 .2 .1 .1 .4 -> MAD 0.1.
    # 10.1 + 0.51891 = 10.61891: 10.6 passes, 10.7 does not.
    assert g.update(7 * 600.0, 10.6).evidence.get("flag") is None
    # Window [9.9, 10, 10.2, 10.5, 10.6]: median 10.2, |dev| .3 .2 0 .3 .4 -> MAD 0.3, cut 1.5567.
    assert g.update(8 * 600.0, 11.7).evidence.get("flag") is None  # 1.5 away
    assert g.update(9 * 600.0, 8.6).evidence["flag"] == "spike"  # window [10,10.2,10.5,10.6,11.7]: median 10.5, MAD 0.3; 1.9 away


def test_mad_floor_keeps_flat_series_quiet():
    flat = [5.0] * 10
    # MAD 0 and no floor: the cut is 0, any change is a spike.
    g = SpikeGuard(window=10, min_mad=0.0)
    feed(g, flat)
    assert g.update(6000, 5.1).evidence["flag"] == "spike"
    # Floor 0.05: cut = 3.5 * 1.4826 * 0.05 = 0.259455.
    g = SpikeGuard(window=10, min_mad=0.05)
    feed(g, flat)
    assert g.update(6000, 5.25).evidence == {"suspect": False}
    assert g.update(6600, 5.27).evidence["flag"] == "spike"


def test_spike_burst_accepted_as_level_after_accept_after():
    g = SpikeGuard(window=5, min_mad=0.1, accept_after=3)
    feed(g, [10, 10.1, 9.9, 10, 10.2])
    a = g.update(3000, 50.0)
    b = g.update(3600, 50.2)
    c = g.update(4200, 49.9)
    assert [a.evidence["flag"], b.evidence["flag"]] == ["spike", "spike"]
    assert b.evidence["held"] == 2
    assert c.evidence["suspect"] is False and c.evidence["accepted_shift"] == "spike"
    assert c.evidence["release"] == [[3000.0, 50.0], [3600.0, 50.2]]
    # Reseeded from [50, 50.2, 49.9]: fewer than min_points=5, so warming up again...
    assert g.update(4800, 50.1).warming_up and g.update(5400, 50.0).warming_up
    # ...then [50, 50.2, 49.9, 50.1, 50.0]: median 50, MAD 0.1 -> cut 0.519; the old level is a spike.
    assert g.update(6000, 10.0).evidence["flag"] == "spike"
    assert g.update(6600, 50.3).evidence.get("flag") is None


def test_spikes_of_alternating_sign_never_become_a_level():
    g = SpikeGuard(window=5, min_mad=0.1, accept_after=2)
    feed(g, [10, 10.1, 9.9, 10, 10.2])
    out = flags(g, [(3000 + 600 * i, x) for i, x in enumerate([50, -30, 50, -30, 50])])
    assert out == ["spike"] * 5


def test_steady_ramp_is_never_a_spike():
    # Window of 15 on a ramp of slope s: median 7s behind the newest, MAD 4s (|i-7| for i in
    # 0..14 has median 4) -> cut 3.5*1.4826*4s = 20.8s, while the next reading is 8s away.
    for slope in (0.01, 1.0, 250.0):
        g = SpikeGuard(window=15, min_mad=0.0)
        out = feed(g, [slope * i for i in range(300)])
        assert all(v.evidence.get("flag") is None for v in out)


def test_spike_gap_restarts_warm_up():
    g = SpikeGuard(window=5, min_mad=0.1, max_gap_s=1800)
    feed(g, [10, 10.1, 9.9, 10, 10.2])
    v = g.update(3000 + 7200, 80.0)  # after a 2-hour outage: the old level says nothing
    assert v.warming_up and v.evidence == {"suspect": False}


# -- stuck ------------------------------------------------------------------------------------


def test_stuck_band_and_drift():
    g = StuckGuard(stuck_n=3, tolerance=0.1)
    # band 1.0..1.05 (0.05), then 0.98 -> band 0.07 <= 0.1: the third reading is stuck.
    assert flags(g, [(0, 1.0), (1, 1.05), (2, 0.98), (3, 1.02), (4, 2.0)]) == [None, None, "stuck", "stuck", None]
    g = StuckGuard(stuck_n=3, tolerance=0.1)
    # a slow drift of 0.06 per reading: 1.0..1.12 is 0.12 wide at the third reading -> not stuck
    assert flags(g, [(i, 1.0 + 0.06 * i) for i in range(10)]) == [None] * 10
    v = StuckGuard(stuck_n=2).update(0, 3.0)
    assert v.evidence == {"suspect": False}


def test_stuck_evidence():
    g = StuckGuard(stuck_n=4)
    out = feed(g, [7.0, 7.0, 7.0, 7.0, 7.0], t0=100.0)
    assert out[3].evidence == {"suspect": True, "flag": "stuck", "run": 4, "since_t": 100.0, "value": 7.0}
    assert out[4].evidence["run"] == 5


# -- clock ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seq, expected",
    [
        ([(0, 1.0), (600, 2.0), (1200, 3.0)], [None, None, None]),
        ([(0, 1.0), (600, 2.0), (599, 3.0), (1200, 3.0)], [None, None, "out_of_order", None]),
        ([(0, 1.0), (600, 2.0), (600, 2.0)], [None, None, "duplicate"]),
        ([(0, 1.0), (600, 2.0), (600, 2.5), (600, 2.0)], [None, None, "duplicate_conflict", "duplicate"]),
        ([(0, 1.0), (1800, 2.0), (3601, 3.0)], [None, None, "gap"]),  # 1800 is not > 1800; 1801 is
        ([(0, math.nan), (0, math.nan)], [None, "duplicate"]),
    ],
)
def test_clock_sequences(seq, expected):
    g = ClockGuard(max_gap_s=1800.0)
    out = [g.update(t, v) for t, v in seq]
    assert [v.evidence.get("flag") for v in out] == expected
    assert quality_oracle.batch_clock_flags(np.array([t for t, _ in seq], float), np.array([v for _, v in seq], float), 1800.0) == expected
    for v in out:
        assert v.level == 0
        assert v.evidence["suspect"] is (v.evidence.get("flag") in quality.SUSPECT_FLAGS)


def test_clock_gap_evidence():
    g = ClockGuard(max_gap_s=1800.0)
    g.update(0, 1.0)
    v = g.update(5400.0, 1.0)
    assert v.evidence == {"suspect": False, "flag": "gap", "gap_s": 5400.0}


# -- range ------------------------------------------------------------------------------------


def test_range_bounds_inclusive_and_nonfinite():
    g = RangeGuard(0.0, 500.0)
    assert [g.update(0, x).evidence.get("flag") for x in (0.0, 500.0, -0.1, 500.1, math.nan, math.inf)] == [
        None,
        None,
        "range",
        "range",
        "range",
        "range",
    ]
    json.dumps(g.update(0, math.inf).evidence)
    with pytest.raises(ValueError, match="low < high"):
        RangeGuard(5.0, 5.0)


# -- step back --------------------------------------------------------------------------------


def test_step_back_golden():
    # Steps 10, 10, 10, 10, 10: median 10, MAD 0 -> floor 1.0 -> cut 5 * 1.4826 * 1 = 7.413.
    # 50 -> 12 is a step of -38: 48 against the direction of travel (+50), inside [0, 50].
    g = StepBackGuard(window=5, min_points=3, min_mad=1.0)
    out = feed(g, [0, 10, 20, 30, 40, 50, 12, 60])
    v = out[6]
    assert v.evidence["flag"] == "step_back"
    assert v.evidence["step"] == -38.0
    assert v.evidence["threshold"] == pytest.approx(7.413)
    assert v.evidence["travelled"] == [0.0, 50.0]
    assert out[7].evidence == {"suspect": False}  # 60 - 50 = 10: back to normal


def test_forward_spike_is_not_a_step_back_nor_its_return():
    g = StepBackGuard(window=5, min_points=3, min_mad=1.0)
    out = feed(g, [0, 10, 20, 30, 40, 50, 200, 60, 70])
    assert [v.evidence.get("flag") for v in out[5:]] == [None, None, None, None]


def test_step_back_outside_travelled_range_or_on_a_stable_point_is_not_judged():
    g = StepBackGuard(window=5, min_points=3, min_mad=1.0)
    out = feed(g, [0, 10, 20, 30, 40, 50, -30])  # back beyond the origin: not a replayed value
    assert out[-1].evidence.get("flag") is None
    g = StepBackGuard(window=5, min_points=3, min_mad=1.0)
    # Travel stays within one cut (7.4) of the origin: direction means nothing, nothing judged.
    out = feed(g, [0, 2, -1, 1, 3, 0, 2, -5])
    assert all(v.evidence.get("flag") is None for v in out)


def test_step_back_genuine_reversal_accepted():
    g = StepBackGuard(window=5, min_points=3, min_mad=1.0, accept_after=3)
    out = feed(g, [0, 10, 20, 30, 40, 50, 12, 13, 14, 15])
    assert [v.evidence.get("flag") for v in out[6:8]] == ["step_back", "step_back"]
    assert out[8].evidence["accepted_shift"] == "step_back"
    assert out[8].evidence["release"] == [[3600.0, 12.0], [4200.0, 13.0]]
    assert out[9].evidence == {"suspect": False}


# -- the combined guard -----------------------------------------------------------------------


def test_for_kind_defaults():
    rain = QualityGuard.for_kind("rain", interval_s=600.0, low=0.0, high=500.0)
    assert rain.stuck is None and rain.spike is None and rain.step_back is None
    assert rain.max_gap_s == 1800.0
    # a month of zeros is fine for a rain gauge
    assert all(v.evidence == {"suspect": False} for v in feed(rain, [0.0] * 4320))

    gnss = QualityGuard.for_kind("gnss_e", 600.0, -1e6, 1e6)
    assert gnss.stuck is not None and gnss.stuck.stuck_n == 6  # one hour of identical solutions
    assert gnss.spike is not None and (gnss.spike.window, gnss.spike.k, gnss.spike.min_mad) == (15, 3.5, 2.0)
    assert gnss.step_back is not None and gnss.accept_after == 3
    assert QualityGuard.for_kind("gnss_u", 600.0, -1e6, 1e6).min_mad == 4.0

    disp = QualityGuard.for_kind("displacement", 600.0, -1e5, 1e5)
    assert disp.stuck is not None and disp.stuck.stuck_n == 144  # 24 h
    assert QualityGuard.for_kind("tilt", 600.0, -1e6, 1e6).step_back is None  # tilt swings back
    assert QualityGuard.for_kind("battery", 600.0, 0, 60).stuck.stuck_n == 432  # 72 h

    monthly = QualityGuard.for_kind("displacement", 30 * 86400.0, -1e5, 1e5)
    assert monthly.spike is None  # a month of real movement per reading is not a spike
    assert monthly.stuck.stuck_n == 5 and monthly.step_back is not None


def test_for_kind_kinds_match_the_registry():
    from geowarn.config.registry import Kind

    assert set(quality.KINDS) == {k.value for k in Kind}
    for k in Kind:
        QualityGuard.for_kind(k, 600.0, -1.0, 1.0)  # the enum itself is accepted too
    with pytest.raises(ValueError, match="displacement, crack, tilt"):
        QualityGuard.for_kind("rainfall", 600.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="interval_s"):
        QualityGuard.for_kind("rain", 0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SpikeGuard(window=2), "window"),
        (lambda: SpikeGuard(window=5, min_points=6), "min_points"),
        (lambda: SpikeGuard(k=0), "k must"),
        (lambda: SpikeGuard(min_mad=-1), "min_mad"),
        (lambda: SpikeGuard(accept_after=1), "accept_after"),
        (lambda: SpikeGuard(max_gap_s=0), "max_gap_s"),
        (lambda: StuckGuard(1), "stuck_n"),
        (lambda: StuckGuard(3, tolerance=-0.1), "tolerance"),
        (lambda: StepBackGuard(window=3, min_points=4), "min_points"),
        (lambda: ClockGuard(max_gap_s=-5), "max_gap_s"),
        (lambda: QualityGuard(0.0, 1.0, stuck_n=1), "stuck_n"),
    ],
)
def test_constructor_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_fixed_order_and_garbage_enters_no_window():
    g = QualityGuard(-100.0, 100.0, max_gap_s=1800.0, stuck_n=2, spike_window=5, min_mad=0.1, step_back_window=5)
    feed(g, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # t = 0 … 3000
    # A sentinel repeated: range every time, never stuck (it never reached the stuck guard).
    assert flags(g, [(3600.0, -9999.0), (4200.0, -9999.0)]) == ["range", "range"]
    # out of order beats range
    assert g.update(100.0, -9999.0).evidence["flag"] == "out_of_order"
    # The spike window still holds 2…6 (median 4, MAD 1, cut 5.19): 50 is a spike, not a
    # warming-up reading of a window the sentinels had reset or filled.
    assert g.update(4800.0, 50.0).evidence["flag"] == "spike"
    assert g.update(5400.0, 7.0).evidence.get("flag") is None


def test_gap_rides_along_with_any_verdict():
    g = QualityGuard(0.0, 100.0, max_gap_s=1800.0, stuck_n=3, spike_window=None)
    feed(g, [5.0, 5.0])
    v = g.update(600.0 + 7200.0, 5.0)
    assert v.evidence == {"suspect": True, "flag": "stuck", "run": 3, "since_t": 0.0, "value": 5.0, "gap_s": 7200.0}
    v = g.update(20000.0, 500.0)
    assert v.evidence["flag"] == "range" and v.evidence["gap_s"] == 20000.0 - 7800.0
    v = g.update(30000.0, 7.0)
    assert v.evidence == {"suspect": False, "flag": "gap", "gap_s": 10000.0}


def test_combined_release_of_a_real_shift():
    g = QualityGuard.for_kind("gnss_n", 600.0, -1e6, 1e6)
    base = [0.0, 2.0, -1.0, 1.0, -2.0, 0.5, 1.5, -0.5, 0.0, 1.0, -1.5, 2.5, 0.0, -1.0, 1.0]
    feed(g, base)
    n = len(base)
    a, b, c, d = (g.update((n + i) * 600.0, x) for i, x in enumerate([150.0, 152.0, 149.0, 151.0]))
    assert a.evidence["flag"] == "spike" and b.evidence["flag"] == "spike"
    assert c.evidence["suspect"] is False and c.evidence["accepted_shift"] == "spike"
    assert c.evidence["release"] == [[n * 600.0, 150.0], [(n + 1) * 600.0, 152.0]]
    assert "release" not in d.evidence


def test_replayed_value_on_creeping_gnss():
    g = QualityGuard.for_kind("gnss_e", 600.0, -1e6, 1e6)
    rng = np.random.default_rng(7)
    v = np.round(0.5 * np.arange(400) + rng.normal(0, 3.0, 400), 1)  # 72 mm/day creep
    v[300] = v[100]  # 100 mm back: a replayed reading
    out = feed(g, v.tolist())
    assert out[300].evidence["flag"] == "step_back"
    assert out[301].evidence.get("flag") is None
    assert sum(1 for x in out if x.evidence["suspect"]) <= 3


# -- contract ---------------------------------------------------------------------------------


CASES = quality_oracle.contract_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_contract_case(case):
    for seed in (0, 1, 2):
        t, v = case.series(seed)
        assert np.all(np.diff(t) > 0)
        det = case.make()
        out = [det.update(a, b) for a, b in zip(t, v)]
        # levels: always 0, and the batch reference agrees
        assert [o.level for o in out] == list(case.batch(t, v)) == [0] * len(t)
        assert max(o.level for o in out) >= case.reaches
        # flags: streaming equals the independent batch reference
        got = [o.evidence.get("flag") for o in out]
        assert got == case.extra["batch_flags"](t, v)
        # the batch reference is causal: a prefix gives the prefix
        for k in (len(t) // 3, len(t) // 2):
            assert case.extra["batch_flags"](t[:k], v[:k]) == got[:k]
        # determinism
        det2 = case.make()
        assert [det2.update(a, b) for a, b in zip(t, v)] == out
        for o in out:
            json.dumps(o.evidence)
            assert o.evidence["suspect"] is (o.evidence.get("flag") in quality.SUSPECT_FLAGS)
            if o.warming_up:
                assert o.level == 0
        # snapshot / restore through JSON at several cut points
        for cut in (1, len(t) // 4, len(t) // 2, len(t) - 1):
            a, b = case.make(), case.make()
            for x, y in zip(t[:cut], v[:cut]):
                a.update(x, y)
            b.restore(json.loads(json.dumps(a.snapshot())))
            assert [a.update(x, y) for x, y in zip(t[cut:], v[cut:])] == [b.update(x, y) for x, y in zip(t[cut:], v[cut:])]
    flagged = Counter(f for f in got if f)
    assert flagged, f"{case.name}: the series should give the guard something to flag"


@pytest.mark.parametrize("cls", [ClockGuard, RangeGuard, StuckGuard, SpikeGuard, StepBackGuard, QualityGuard, NoDataMonitor])
def test_no_mutable_defaults(cls):
    for p in inspect.signature(cls.__init__).parameters.values():
        assert not isinstance(p.default, (list, dict, set)), f"{cls.__name__}.{p.name}"


@pytest.mark.parametrize("make", [lambda: StuckGuard(3), lambda: SpikeGuard(5, min_mad=0.1), lambda: StepBackGuard(5, min_points=3, min_mad=1.0)])
def test_standalone_guards_ignore_late_readings(make):
    g = make()
    out = feed(g, [0, 10, 20, 30, 40, 50, 5, 70, 70, 70])
    state = json.dumps(g.snapshot())
    assert g.update(600.0, 1e9) == out[-1]  # t earlier than the last: previous verdict, ignored
    assert g.update(9 * 600.0, -1e9) == out[-1]  # t repeated
    assert json.dumps(g.snapshot()) == state


_readings = st.lists(
    st.tuples(
        st.sampled_from(["next", "next", "next", "next", "late", "same_t", "gap"]),
        st.one_of(st.floats(-50, 250, allow_nan=False), st.just(math.nan), st.just(-9999.0), st.just(0.0)),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(_readings, st.sampled_from(["gnss_e", "displacement", "rain", "battery"]))
def test_streaming_flags_equal_batch_flags_on_hostile_input(ops, kind):
    t, v, now = [], [], 0.0
    for op, x in ops:
        if op == "next":
            now += 600.0
        elif op == "gap":
            now += 10 * 3600.0
        tt = now - 300.0 if op == "late" else now
        t.append(tt)
        v.append(x)
    make = lambda: QualityGuard.for_kind(kind, 600.0, -1000.0, 1000.0)  # noqa: E731
    g = make()
    got = [g.update(a, b) for a, b in zip(t, v)]
    assert [o.evidence.get("flag") for o in got] == batch_quality_flags(np.array(t), np.array(v), make())
    assert all(o.level == 0 for o in got)
    for o in got:
        json.dumps(o.evidence)


@settings(max_examples=60, deadline=None)
@given(_readings)
def test_standalone_guards_streaming_equals_batch_on_hostile_input(ops):
    t, v, now = [], [], 0.0
    for op, x in ops:
        now += {"next": 600.0, "gap": 36000.0}.get(op, 0.0)
        t.append(now - 300.0 if op == "late" else now)
        v.append(x)
    for make in (
        lambda: ClockGuard(1800.0),
        lambda: RangeGuard(-1000.0, 1000.0),
        lambda: StuckGuard(3, 0.5),
        lambda: SpikeGuard(6, 3.5, 0.5, min_points=3, accept_after=2, max_gap_s=1800.0),
        lambda: StepBackGuard(6, 4.0, 0.5, min_points=3, accept_after=2, max_gap_s=1800.0),
    ):
        g = make()
        got = [g.update(a, b).evidence.get("flag") for a, b in zip(t, v)]
        assert got == batch_flags(make(), np.array(t), np.array(v)), type(g).__name__


# -- real data: Three Gorges Baishuihe monthly GPS --------------------------------------------

MONTH = 30.44 * 86400.0
_CHANNEL_KIND = {"dX": "gnss_n", "dY": "gnss_e", "dF": "displacement"}


def _baishuihe():
    path = DATA / "baishuihe_gps_monthly_cumulative_displacement.csv"
    if not path.exists():
        pytest.skip(f"real data not present: {path} (the shared data directory is optional)")
    by_point: dict[str, list[tuple[str, dict[str, float]]]] = defaultdict(list)
    with path.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["dF"] == "":
                continue  # a month without a survey: no reading arrived
            by_point[row["point"]].append((row["date"], {c: float(row[c]) for c in _CHANNEL_KIND}))
    return by_point


def test_baishuihe_2011_03_replay_is_flagged():
    """README: the 2011-03 row of every Baishuihe point is an exact copy of the 2008-01 row.

    On the moving points (DX-01, ZG93, ZG118) the copy jumps back 150-1000 mm into the range
    already travelled: every channel is flagged step_back. On the stable points (ZG91, ZG92,
    ZG94, ZG119, ZG120) the copied value lies within the ±10-30 mm GPS noise of the current
    ones — indistinguishable by value, and harmless. Other flags are few: DX-03's 2010-01/02
    (its 2010-01…10 rows are an exact copy of 2009-01…10 — a second replay not in the README;
    after 3 readings the guard accepts the copy as a new level) and a handful on stable points.
    """
    by_point = _baishuihe()
    flagged: dict[tuple[str, str, str], str] = {}
    total = 0
    for point, rows in sorted(by_point.items()):
        y0, m0 = map(int, rows[0][0].split("-"))
        for ch, kind in _CHANNEL_KIND.items():
            g = QualityGuard.for_kind(kind, interval_s=MONTH, low=-1e5, high=1e5)
            for date, vals in rows:
                y, m = map(int, date.split("-"))
                v = g.update(((y - y0) * 12 + m - m0) * MONTH, vals[ch])
                total += 1
                if v.evidence["suspect"]:
                    flagged[(point, ch, date)] = v.evidence["flag"]
    moving = ("DX-01", "ZG93", "ZG118")
    for p in moving:
        for ch in _CHANNEL_KIND:
            assert flagged.get((p, ch, "2011-03")) == "step_back", (p, ch)
            assert (p, ch, "2011-04") not in flagged  # the reference was not moved by the copy
    replay = {k for k in flagged if k[2] == "2011-03"}
    others = {k: f for k, f in flagged.items() if k[2] != "2011-03"}
    print(f"\nBaishuihe: {total} readings, 2011-03 flagged {len(replay)}, others flagged {len(others)}: {sorted(others)}")
    assert len(replay) == 9
    assert ("DX-03", "dF", "2010-01") in others  # the second replay
    assert len(others) <= 12  # of 2166 readings: ≈0.5 %


def test_baishuihe_bazimen_quiet():
    """Bazimen has no known replay: slow creep with one large step (2012-07)."""
    path = DATA / "bazimen_gps_monthly_cumulative_displacement.csv"
    if not path.exists():
        pytest.skip(f"real data not present: {path}")
    rows: dict[str, list[tuple[str, float]]] = defaultdict(list)
    with path.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["dF"]:
                rows[row["point"]].append((row["date"], float(row["dF"])))
    n = suspect = 0
    for point, series in rows.items():
        g = QualityGuard.for_kind("displacement", MONTH, -1e5, 1e5)
        for i, (_, x) in enumerate(series):
            n += 1
            suspect += g.update(i * MONTH, x).evidence["suspect"]
    print(f"\nBazimen: {suspect} of {n} dF readings suspect")
    assert suspect <= 3


# -- no data ----------------------------------------------------------------------------------


def test_nodata_sequence():
    # gnss-1 every 600 s: silence is 1800 s; rain-1 every 300 s: 900 s.
    m = NoDataMonitor({"gnss-1": 600.0, "rain-1": 300.0})
    assert m.next_deadline() is None  # nothing known yet
    assert m.seen("gnss-1", 0.0) is None  # start = 0: rain-1 is counted from here too
    assert m.next_deadline() == 900.0
    assert m.due(899.0) == []
    assert m.due(900.0) == [NoDataEvent("rain-1", "nodata", 900.0, None, 900.0)]
    assert m.due(950.0) == []  # reported once
    assert m.next_deadline() == 1800.0
    assert m.seen("gnss-1", 1200.0) is None
    assert m.next_deadline() == 3000.0
    assert m.seen("rain-1", 1000.0) == NoDataEvent("rain-1", "nodata_end", 1000.0, None, 1000.0)
    assert m.next_deadline() == 1900.0
    assert m.due(3100.0) == [
        NoDataEvent("rain-1", "nodata", 3100.0, 1000.0, 2100.0),
        NoDataEvent("gnss-1", "nodata", 3100.0, 1200.0, 1900.0),
    ]
    assert m.next_deadline() is None and m.silent() == ["gnss-1", "rain-1"]
    assert m.seen("gnss-1", 1100.0) is None  # a late copy of an old reading ends nothing
    assert m.seen("gnss-1", 4000.0) == NoDataEvent("gnss-1", "nodata_end", 4000.0, 1200.0, 2800.0)
    assert m.next_deadline() == 5800.0


def test_nodata_start_and_validation():
    m = NoDataMonitor({"a": 60.0}, factor=2.0, start=1000.0)
    assert m.next_deadline() == 1120.0
    assert m.due(1120.0)[0].silent_s == 120.0
    with pytest.raises(ValueError, match="factor"):
        NoDataMonitor({"a": 60.0}, factor=1.0)
    with pytest.raises(ValueError, match="intervals"):
        NoDataMonitor({"a": 0.0})
    with pytest.raises(ValueError, match="no expected interval"):
        m.seen("ghost", 5.0)
    ev = m.due(2000.0)
    assert ev == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        NoDataEvent("a", "nodata", 0.0, None, 0.0).t = 1.0  # type: ignore[misc]


def _brute_due(intervals, factor, start, last, silent, now):
    """Reference model: scan every device."""
    out = []
    for d, i in intervals.items():
        base = last.get(d, start)
        if d not in silent and base is not None and base + factor * i <= now:
            out.append((base + factor * i, d))
    return [d for _, d in sorted(out)]


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abcdefgh"), st.sampled_from([60.0, 300.0, 600.0, 3600.0]), min_size=1),
    st.lists(st.tuples(st.booleans(), st.sampled_from("abcdefgh"), st.floats(0, 4000)), max_size=80),
    st.integers(0, 80),
)
def test_nodata_matches_brute_force_and_survives_restore(intervals, ops, cut):
    m = NoDataMonitor(intervals)
    start = None
    last: dict[str, float] = {}
    silent: set[str] = set()
    now = 0.0
    for k, (is_due, dev, dt) in enumerate(ops):
        if k == cut:
            fresh = NoDataMonitor(intervals)
            fresh.restore(json.loads(json.dumps(m.snapshot())))
            m = fresh
        now += dt
        if dev not in intervals:
            continue
        if is_due:
            start = now if start is None else start
            expected = _brute_due(intervals, 3.0, start, last, silent, now)
            got = m.due(now)
            assert [e.device for e in got] == expected
            for e in got:
                assert e.kind == "nodata" and e.t == now
                assert e.silent_s >= 3.0 * intervals[e.device]
            silent |= set(expected)
        else:
            start = now if start is None else start
            ev = m.seen(dev, now)
            newer = dev not in last or now > last[dev]
            if newer and dev in silent:
                assert ev is not None and ev.kind == "nodata_end" and ev.last_seen == last.get(dev)
                silent.discard(dev)
            else:
                assert ev is None
            if newer:
                last[dev] = now
        nd = m.next_deadline()
        pending = [last.get(d, start) + 3.0 * i for d, i in intervals.items() if d not in silent and start is not None]
        assert nd == (min(pending) if pending else None)
    assert len(m._heap) <= len(intervals)


def test_modules_have_docstrings_that_run():
    import doctest

    for mod in (quality, nodata):
        assert mod.__doc__ and len(mod.__doc__) > 200
        res = doctest.testmod(mod)
        assert res.failed == 0 and res.attempted > 0
