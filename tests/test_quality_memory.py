"""The quality guards' and the noise module's compact state (issue 17): slots, windows in one
list, parameters shared by every channel alike, exact snapshots, and the state GeoWarn wrote
before the change still restores."""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import random
import statistics
import tracemalloc

import pytest
from geowarn.detectors import quality as quality_module
from geowarn.detectors.noise import NoiseFigure, Smoothness, noise_for
from geowarn.detectors.quality import (
    ClockGuard,
    QualityGuard,
    RangeGuard,
    SpikeGuard,
    StepBackGuard,
    StuckGuard,
)

T0 = 1_700_000_000.0


def _gnss() -> QualityGuard:
    return QualityGuard.for_kind("gnss_e", 600.0, -1e6, 1e6)


def test_no_instance_dicts_and_shared_parameters_but_private_state() -> None:
    a, b = _gnss(), _gnss()
    for obj in (a, a.clock, a.range, a.stuck, a.step_back, a.spike, Smoothness(), noise_for("gnss_e", "mm")):
        assert not hasattr(obj, "__dict__"), type(obj).__name__
    for cls in (ClockGuard, RangeGuard, StuckGuard, SpikeGuard, StepBackGuard, QualityGuard, Smoothness, NoiseFigure):
        assert "__dict__" not in dir(cls), cls.__name__
    # What equal parameters derive alike is one immutable object...
    assert a._sp is b._sp and isinstance(a._sp, tuple)
    assert a.spike is not None and b.spike is not None and a.spike._sp is b.spike._sp
    assert a.step_back is not None and b.step_back is not None and a.step_back._sp is b.step_back._sp
    assert noise_for("gnss_e", "mm") is noise_for("gnss_e", "mm")
    with pytest.raises(dataclasses.FrozenInstanceError):
        noise_for("gnss_e", "mm").sigma = 1.0  # type: ignore[misc]
    # ...and every piece of state is the channel's own.
    assert a.clock is not b.clock and a.stuck is not b.stuck
    assert a.spike._w is not b.spike._w and a.step_back._w is not b.step_back._w
    fresh = json.dumps(b.snapshot())
    for i, x in enumerate([1.0, 2.0, 1.5, 2.5, 1.0, 2.0, 1.5, 90.0, 91.0]):
        a.update(T0 + 600.0 * i, x)
    assert a.update(T0 + 600.0 * 9, 92.0).evidence.get("accepted_shift") == "spike"
    assert json.dumps(b.snapshot()) == fresh
    # The parameters are still public attributes of their own names.
    assert a.params() == {
        "low": -1e6, "high": 1e6, "max_gap_s": 1800.0, "stuck_n": 6, "stuck_tolerance": 0.0, "spike_window": 15,
        "spike_k": 3.5, "min_mad": 2.0, "spike_min_points": 5, "step_back_window": 12, "step_back_k": 5.0,
        "step_back_min_points": 4, "accept_after": 3,
    }
    assert a.spike.params() == {"window": 15, "k": 3.5, "min_mad": 2.0, "min_points": 5, "accept_after": 3, "max_gap_s": 1800.0}
    rain = QualityGuard.for_kind("rain", 600.0, 0.0, 500.0)
    assert rain._judges == () and rain.stuck is None and rain.spike is None and rain.step_back is None


def test_shared_parameters_keep_their_type_and_sign_and_are_always_checked() -> None:
    SpikeGuard(window=15)
    with pytest.raises(ValueError, match="window must be an integer"):
        SpikeGuard(window=15.0)  # type: ignore[arg-type]  # equal to an accepted 15, still not an int
    with pytest.raises(ValueError, match="min_points must be <= window"):
        SpikeGuard(window=5, min_points=6)
    for first, second in ((0.0, -0.0), (-0.0, 0.0)):
        g, h = StepBackGuard(min_mad=first), StepBackGuard(min_mad=second)
        assert math.copysign(1.0, g.min_mad) == math.copysign(1.0, first)
        assert math.copysign(1.0, h.min_mad) == math.copysign(1.0, second)
        q = QualityGuard(-1.0, 1.0, stuck_n=3, stuck_tolerance=second, min_mad=second)
        assert math.copysign(1.0, q.stuck_tolerance) == math.copysign(1.0, q.min_mad) == math.copysign(1.0, second)
    assert type(QualityGuard(-1.0, 1.0, min_mad=1).min_mad) is int
    assert type(QualityGuard(-1.0, 1.0, min_mad=1.0).min_mad) is float
    for _ in range(2):  # an error is never remembered as checked
        with pytest.raises(ValueError, match="kind must be one of"):
            QualityGuard.for_kind("magma", 600.0, 0.0, 1.0)
        with pytest.raises(ValueError, match="interval_s must be"):
            QualityGuard.for_kind("gnss_e", math.nan, 0.0, 1.0)
        with pytest.raises(ValueError, match="range must be low < high"):
            QualityGuard.for_kind("gnss_e", 600.0, 1.0, 1.0)
        with pytest.raises(ValueError, match="stuck_n must be an integer"):
            QualityGuard(0.0, 1.0, stuck_n=1)


def test_the_window_is_the_trailing_accepted_values_from_scratch() -> None:
    """Arrival order and the sorted half of the one list, and the median a spike is judged
    against, equal a trailing window rebuilt from the verdicts with ``statistics``."""
    rng = random.Random(11)
    g = SpikeGuard(window=7, min_mad=0.0, min_points=4, accept_after=3, max_gap_s=5000.0)
    accepted: list[float] = []
    t = T0
    for i in range(3000):
        t += 6000.0 if rng.random() < 0.01 else 600.0
        x = rng.choice([-0.0, 0.0, 1.0]) if i % 500 < 50 else rng.gauss(10.0, 1.0) + (rng.choice([-30, 30]) if rng.random() < 0.1 else 0)
        gap = g._t is not None and t - g._t > 5000.0
        v = g.update(t, x)
        e = v.evidence
        if gap:
            accepted = []
        if e.get("flag") == "spike":
            assert e["median"] == statistics.median(accepted[-7:])
        elif "accepted_shift" in e:
            accepted = [xx for _, xx in e["release"]] + [x]
        else:
            accepted.append(x)
        window = accepted[-7:]
        assert g._order() == window
        assert g._w[7:] == sorted(window)
        assert [math.copysign(1.0, a) for a in g._order()] == [math.copysign(1.0, a) for a in window]


def test_the_steps_window_moves_by_each_accepted_step() -> None:
    """A reading the step-back guard takes as its new last value adds exactly its step to the
    arrival order, the oldest step drops out past ``window``, and the sorted half follows."""
    rng = random.Random(4)
    g = StepBackGuard(window=5, min_points=3, min_mad=0.5)
    checked = 0
    for i in range(2000):
        x = i + rng.gauss(0.0, 0.2) - (15.0 if i % 41 in (30, 31) else 0.0) + (40.0 if i % 97 == 50 else 0.0)
        before, last_v = g._order(), g._v
        e = g.update(T0 + 600.0 * i, x).evidence
        order = g._order()
        assert g._w[5:] == sorted(order) and len(order) <= 5
        if last_v is not None and g._v is x and "accepted_shift" not in e:
            assert order == (before + [x - last_v])[-5:]
            checked += 1
        elif g._v is last_v:
            assert order == before  # held out of the reference: the steps did not move
    assert 1500 < checked < 2000


# A GNSS east component's guard as GeoWarn wrote it before issue 17
# (QualityGuard.for_kind("gnss_e", 600.0, -1e6, 1e6) fed 40 readings creeping 0.5 mm a reading
# with a ±2 mm wobble, then a jump of +60 mm held twice by the spike and step-back guards), and
# what that code said for the next five readings [182.5, 183.0, 117.5, 183.5, 184.0].
OLD_STATE = json.loads(
    '{"clock": {"t": 1700024600.0, "v": 181.5}, "stuck": {"t": 1700024600.0, "lo": 181.5, "hi": 181.5, "n'
    '": 1, "since": 1700024600.0, "last": "ok"}, "step_back": {"steps": "rzeNpjYACDAxCKxwFC/7CH0BxQcRaoOO'
    'nqAHAdB6s=", "held": [[1700024000.0, 180.5, false], [1700024600.0, 181.5, false]], "side": 1, "t": 1'
    '700024600.0, "v": 120.5, "origin": 102.0, "lo": 99.0, "hi": 120.5, "last": "ok"}, "spike": {"window"'
    ': "rzeNpjYACCBTEOIIrhQTSEboDyGWDiUNohFlVeAcqH6W+A8h/EosofiEXVrxDnAADTrRAt", "held": [[1700024000.0, '
    '180.5], [1700024600.0, 181.5]], "side": 1, "t": 1700024600.0, "last": {"reason": "spike: value 181.5'
    ' is 65 from the median 116.5 of the last 15 readings (cut 10.4)", "evidence": {"suspect": true, "fla'
    'g": "spike", "value": 181.5, "median": 116.5, "mad": 2.0, "threshold": 10.3782, "held": 2}, "warming'
    '_up": false}}, "pending": []}'
)
OLD_NEXT = json.loads(
    '[["3 consecutive readings above the old median 116.5: accepted as a new level", {"suspect": false, "'
    'release": [[1700024000.0, 180.5], [1700024600.0, 181.5]], "accepted_shift": "spike"}, false], ["warm'
    'ing up", {"suspect": false}, true], ["step back: value 117.5 jumps back 65.5 (cut 14.8) into the ran'
    'ge already travelled [99, 183]: a replayed earlier value?", {"suspect": true, "flag": "step_back", "'
    'value": 117.5, "step": -65.5, "threshold": 14.825999999999999, "last_value": 183.0, "origin": 102.0,'
    ' "travelled": [99.0, 183.0], "held": 1}, false], ["", {"suspect": false}, false], ["", {"suspect": f'
    'alse}, false]]'
)
# A Smoothness fed 0.1·i + (0.3, −0.2, 0.1)[i % 3] for i < 23 before issue 17, and its
# (variance ratio, rho) after each of the next seven values.
OLD_SMOOTHNESS = json.loads('[0.3, [1.4000000000000001, 1.8, 2.1, 1.7], 22, 1.7, 3.030000000000001, 19, 7.100000000000001, 5.17]')
OLD_RHO = json.loads('[[0.2527605629502989, 0.010921666240847117], [0.2515624999999998, 0.006211181603703153], [0.2524944567627492, 0.009879262999220373], [0.25212027617587085, 0.008409785434650985], [0.2512077294685986, 0.004807692839222], [0.2519754170324842, 0.007839725002213527], [0.2516798870853913, 0.006674699361155945]]')


def test_state_written_before_the_change_restores_and_continues_alike() -> None:
    g = _gnss()
    g.restore(json.loads(json.dumps(OLD_STATE)))
    assert json.loads(json.dumps(g.snapshot())) == OLD_STATE
    last = 1_700_024_600.0
    got = []
    for i, x in enumerate([182.5, 183.0, 117.5, 183.5, 184.0], start=1):
        v = g.update(last + 600.0 * i, x)
        got.append([v.reason, v.evidence, v.warming_up])
    assert json.loads(json.dumps(got)) == OLD_NEXT
    s = Smoothness()
    s.restore(OLD_SMOOTHNESS)
    assert s.snapshot() == OLD_SMOOTHNESS and (s.x0, s.m, s.m4) == (0.3, 22, 19)
    rho = []
    for i in range(23, 30):
        s.add(0.1 * i + (0.3, -0.2, 0.1)[i % 3])
        rho.append([s.variance_ratio(), s.rho()])
    assert rho == OLD_RHO


def test_a_smoothness_state_add_cannot_write_is_refused_and_changes_nothing() -> None:
    s = Smoothness()
    s.restore(OLD_SMOOTHNESS)
    for bad in (
        [0.3, [1.4, 1.8], 22, 1.7, 3.03, 19, 7.1, 5.17],  # too few recent values for 22 increments
        [None, [1.0], 0, 0.0, 0.0, 0, 0.0, 0.0],  # values but no anchor
        [0.3, [1.4, 1.8, 2.1, 1.7], 22, 1.7, 3.03, 5, 7.1, 5.17],  # lag-4 count off
    ):
        with pytest.raises(ValueError, match="not a Smoothness state"):
            s.restore(bad)
    assert s.snapshot() == OLD_SMOOTHNESS
    fresh = Smoothness()
    assert fresh.snapshot() == [None, [], 0, 0.0, 0.0, 0, 0.0, 0.0]
    fresh.restore(fresh.snapshot())
    assert fresh.x0 is None and fresh.recent == []


def test_a_week_of_a_gnss_channel_stays_small() -> None:
    """Live bytes the quality module allocates per GNSS channel after a week of 10-minute
    readings (issue 17: ~4.8 KB before), and a reference rate's Smoothness (~570 B before)."""
    rng = random.Random(3)
    series = [(T0 + 600.0 * i, rng.gauss(0.0, 3.0)) for i in range(1008)]
    n = 50
    gc.collect()
    tracemalloc.start()
    guards = []
    for _ in range(n):
        g = _gnss()
        for t, x in series:
            g.update(t, x)
        guards.append(g)
    gc.collect()
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, quality_module.__file__)])
    tracemalloc.stop()
    per_channel = sum(s.size for s in snap.statistics("filename")) / n
    assert per_channel < 1600, per_channel
    assert len({json.dumps(g.snapshot()) for g in guards}) == 1
    values = [x for _, x in series]
    gc.collect()
    tracemalloc.start()
    smooth = []
    for _ in range(n):
        s = Smoothness()
        for x in values:
            s.add(x)
        smooth.append(s)
    gc.collect()
    per_smoothness = tracemalloc.get_traced_memory()[0] / n
    tracemalloc.stop()
    assert per_smoothness < 420, per_smoothness


def test_for_kind_of_a_subclass_runs_its_init() -> None:
    class Counted(QualityGuard):
        __slots__ = ("built",)

        def __init__(self, low: float, high: float, **kw: object) -> None:
            super().__init__(low, high, **kw)  # type: ignore[arg-type]
            self.built = True

    g = Counted.for_kind("gnss_e", 600.0, -1e6, 1e6)
    assert isinstance(g, Counted) and g.built
    ref = _gnss().params()
    assert {name: getattr(g, name) for name in ref} == ref and g._sp is _gnss()._sp
