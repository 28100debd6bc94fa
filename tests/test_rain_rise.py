"""Rain detectors (rolling sums, intensity–duration, effective rain) and the rise-rate detector.

Golden values are worked out by hand in the comments (or come from the literature), never
copied from the output. The contract checks at the bottom repeat, for these modules only, what
the shared suite ``tests/test_detector_contract.py`` checks, so they hold on their own.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest

from geowarn.detectors.rain import (
    DAY,
    HOUR,
    AntecedentRain,
    IntensityDuration,
    RainDetector,
    RainSums,
    intensity_threshold,
)
from geowarn.detectors.rise import RiseRateDetector
from oracles import rain, rise
from oracles.rain import rolling_rain_mm
from oracles.rise import rise_rate_batch

T0 = 1_700_000_000.0
MIDNIGHT = 1_699_920_000.0  # 2023-11-14 00:00 UTC, a whole number of days since the epoch


def feed(det, t, v):
    return [det.update(float(a), float(b)) for a, b in zip(t, v)]


# -- the I–D curve -----------------------------------------------------------------------------


def test_caine_curve_by_hand():
    # 10^0.39 = 10^0.4 / 10^0.01 = 2.511886 / 1.023293 = 2.454709 → 14.82 / 2.454709 = 6.0374 mm/h
    # (not 6.05: the value quoted in the brief is off by 0.01).
    assert intensity_threshold(10.0) == pytest.approx(6.0374, abs=5e-4)
    assert intensity_threshold(1.0) == 14.82
    # 24^0.39 = e^(0.39 × 3.17805) = e^1.23944 = 3.4536 → 4.2912 mm/h, i.e. 103 mm in a day.
    assert intensity_threshold(24.0) * 24 == pytest.approx(103.0, abs=0.1)


# -- rolling sums ------------------------------------------------------------------------------


def test_24h_sum_crosses_yellow_then_orange_at_the_known_readings():
    # Hourly readings of 5 mm; the first only opens the record. After reading i (i <= 24)
    # the 24 h sum is 5·i: 50 mm (yellow) at i = 10, 100 mm (orange) at i = 20.
    det = RainSums([(DAY, ((2, 50.0), (3, 100.0)))])
    t = T0 + HOUR * np.arange(31)
    out = feed(det, t, np.full(31, 5.0))
    assert out[0].warming_up and out[0].level == 0
    assert [v.level for v in out] == [0] * 10 + [2] * 10 + [3] * 11
    assert out[20].evidence["sum_24h_mm"] == 100.0
    assert out[30].evidence["sum_24h_mm"] == 120.0  # 24 readings of 5 mm
    assert out[20].evidence["sum_window"] == "24h" and out[20].evidence["sum_threshold_mm"] == 100.0
    assert "24h rain 100.0 mm" in out[20].reason and "orange" in out[20].reason


def test_levels_come_down_through_the_dead_band():
    # 30 wet hours of 5 mm, then dry hours. k hours after the last rain the 24 h sum is
    # 5·(24 − k). Orange (100) holds until the sum is below 90 (k = 7: 85 mm), then yellow
    # (85 ≥ 50) until below 45 (k = 16: 40 mm), then nothing.
    det = RainSums([(DAY, ((2, 50.0), (3, 100.0)))], hysteresis=0.1)
    t = T0 + HOUR * np.arange(31 + 20)
    v = np.r_[np.full(31, 5.0), np.zeros(20)]
    levels = [x.level for x in feed(det, t, v)]
    after = levels[31:]  # k = 1, 2, ...
    assert after[:6] == [3] * 6
    assert after[6:15] == [2] * 9
    assert after[15:] == [0] * 5


def test_a_reading_straddling_the_window_start_counts_in_proportion():
    # 6 mm over (T0, T0+600]; at T0+3900 the 1 h window is (T0+300, T0+3900]: half of that
    # interval is inside, so 3 mm.
    det = RainSums()
    feed(det, [T0, T0 + 600.0, T0 + 3900.0], [0.0, 6.0, 0.0])
    assert det._last.evidence["sum_1h_mm"] == 3.0
    assert det._last.evidence["sum_24h_mm"] == 6.0


def test_a_daily_total_is_spread_over_its_day():
    # 120 mm over a day: 120 in the 24 h and 72 h windows, 120/24 = 5 mm in the 1 h window.
    det = RainSums()
    out = feed(det, [MIDNIGHT, MIDNIGHT + DAY], [0.0, 120.0])[-1]
    assert out.evidence["sum_1h_mm"] == 5.0
    assert out.evidence["sum_24h_mm"] == 120.0
    assert out.evidence["sum_72h_mm"] == 120.0
    assert out.level == 3  # 24 h orange (100); 5 mm/h is nothing on the 1 h scale


def test_a_reading_after_a_long_silence_covers_at_most_max_interval():
    # 30 mm three days after the previous reading: taken to cover the last day only.
    det = RainSums()
    out = feed(det, [T0, T0 + 3 * DAY], [0.0, 30.0])[-1]
    assert out.evidence["sum_1h_mm"] == 1.25  # 30 / 24
    assert out.evidence["sum_24h_mm"] == 30.0


def test_sums_do_not_drift_over_many_readings():
    # 0.2 mm every minute: a float running sum of 0.2s drifts within a few hundred readings;
    # integer hundredths keep the 1 h sum at exactly 60 × 0.2 = 12.0 mm.
    det = RainSums()
    n = 20_000
    out = feed(det, T0 + 60.0 * np.arange(n), np.full(n, 0.2))
    assert out[-1].evidence["sum_1h_mm"] == 12.0
    assert out[-1].evidence["sum_24h_mm"] == 288.0
    assert out[-1].evidence["sum_72h_mm"] == 864.0


def test_rolling_batch_matches_hand_values():
    t = np.array([T0, T0 + 600.0, T0 + 3900.0])
    assert rolling_rain_mm(t, [0.0, 6.0, 0.0], HOUR).tolist() == [0.0, 6.0, 3.0]


# -- intensity–duration -----------------------------------------------------------------------


def test_event_crosses_caine_at_the_seventh_hour():
    # Hourly readings of 7 mm: after k wet hours I = 7 mm/h, D = k h; Caine's curve is
    # 14.82·k^-0.39: k = 6: 6^0.39 = e^0.698786 = 2.01131 → 7.368 mm/h (ratio 0.950);
    # k = 7: 7^0.39 = e^0.758905 = 2.13594 → 6.938 mm/h (ratio 1.0089) → yellow.
    det = IntensityDuration()
    t = T0 + HOUR * np.arange(11)
    out = feed(det, t, np.r_[0.0, np.full(10, 7.0)])
    assert [v.level for v in out] == [0] * 7 + [2] * 4
    assert out[6].evidence["id_ratio"] == pytest.approx(0.9500, abs=2e-4)
    assert out[7].evidence["id_ratio"] == pytest.approx(1.0089, abs=2e-4)
    assert out[7].evidence["event_duration_h"] == 7.0
    assert out[7].evidence["event_total_mm"] == 49.0
    assert out[7].evidence["id_threshold_mm_h"] == pytest.approx(6.938, abs=1e-3)
    assert out[7].evidence["event_start"] == T0


def test_event_ends_after_the_dry_gap_and_a_new_one_starts_fresh():
    # 10 wet hours of 13 mm (ratio at 10 h: 13 / 6.0374 = 2.153 → orange), then dry hours:
    # the event stays open (and its level with it) until 24 h after the last rain.
    det = IntensityDuration()
    t = T0 + HOUR * np.arange(40)
    v = np.r_[0.0, np.full(10, 13.0), np.zeros(29)]
    out = feed(det, t, v)
    assert out[10].level == 3 and out[10].evidence["id_ratio"] == pytest.approx(2.153, abs=1e-3)
    assert out[33].level == 3 and out[33].evidence["event_start"] == T0  # 23 h after the rain
    assert out[34].level == 0 and out[34].evidence["event_start"] is None  # 24 h: over
    nxt = det.update(T0 + 40 * HOUR, 1.0)
    assert nxt.evidence["event_start"] == T0 + 39 * HOUR and nxt.evidence["event_total_mm"] == 1.0


def test_a_dry_spell_shorter_than_the_gap_keeps_one_event():
    # 5 mm, 23 dry hours, 5 mm: one event from T0 to T0+25 h, 10 mm.
    det = IntensityDuration()
    t = T0 + HOUR * np.arange(26)
    v = np.r_[0.0, 5.0, np.zeros(23), 5.0]
    out = feed(det, t, v)[-1]
    assert out.evidence["event_start"] == T0
    assert out.evidence["event_duration_h"] == 25.0
    assert out.evidence["event_total_mm"] == 10.0


def test_events_shorter_than_ten_minutes_are_not_judged():
    # 1 mm a minute: at 9 min not judged; at 10 min I = 60 mm/h against 14.82·6^0.39 = 29.81
    # mm/h: ratio 2.013 → orange.
    det = IntensityDuration()
    out = feed(det, T0 + 60.0 * np.arange(11), np.r_[0.0, np.full(10, 1.0)])
    assert out[9].level == 0 and out[9].evidence["event_intensity_mm_h"] is None
    assert out[10].level == 3
    assert out[10].evidence["id_ratio"] == pytest.approx(2.013, abs=1e-3)


def test_the_curve_is_not_extrapolated_beyond_500_hours():
    # 500^0.39 = e^(0.39 × 6.214608) = e^2.423697 = e^2.4 · e^0.023697 = 11.023176 × 1.023980
    # = 11.2875 → 14.82 / 11.2875 = 1.3130 mm/h.
    det = IntensityDuration()
    out = feed(det, T0 + HOUR * np.arange(602), np.r_[0.0, np.full(601, 0.2)])
    assert out[500].evidence["id_threshold_mm_h"] == pytest.approx(1.3130, abs=1e-4)
    assert out[601].evidence["event_duration_h"] == 601.0
    assert out[601].evidence["id_threshold_mm_h"] == out[500].evidence["id_threshold_mm_h"]


# -- effective (antecedent) rain ---------------------------------------------------------------


def test_effective_rain_by_hand():
    # Daily totals closing each day at midnight: (opening), 50, 0, 80 mm.
    # Day 1: 50; day 2: 0.84·50 = 42; day 3: 80 + 0.84²·50 = 80 + 35.28 = 115.28 → yellow.
    det = AntecedentRain()
    out = feed(det, MIDNIGHT + DAY * np.arange(1, 5), [0.0, 50.0, 0.0, 80.0])
    assert [v.evidence.get("effective_rain_mm") for v in out[1:]] == pytest.approx([50.0, 42.0, 115.28])
    assert [v.level for v in out] == [0, 0, 0, 2]
    assert out[3].evidence["effective_threshold_mm"] == 100.0


def test_effective_rain_forgets_beyond_its_days():
    # days = 2: 100 mm, then 84, 70.56, and on the third day after it is out of reach.
    det = AntecedentRain(days=2)
    out = feed(det, MIDNIGHT + DAY * np.arange(1, 6), [0.0, 100.0, 0.0, 0.0, 0.0])
    assert [v.evidence["effective_rain_mm"] for v in out[1:]] == pytest.approx([100.0, 84.0, 70.56, 0.0])


def test_a_reading_at_midnight_closes_the_day_before():
    # Readings at 01:00..05:00 of 10 mm and one at 24:00 of 10 mm are one day (60 mm);
    # a reading at 01:00 next day of 5 mm starts a new one: 5 + 0.84·60 = 55.4.
    det = AntecedentRain()
    t = MIDNIGHT + HOUR * np.array([0, 1, 2, 3, 4, 5, 24, 25])
    out = feed(det, t, [0, 10, 10, 10, 10, 10, 10, 5])
    assert out[6].evidence["today_mm"] == 60.0
    assert out[7].evidence["today_mm"] == 5.0
    assert out[7].evidence["effective_rain_mm"] == pytest.approx(55.4)


def test_day_offset_moves_the_day_boundary():
    # With days starting at 20:00 UTC (offset −4 h), readings at 21:00 and 23:00 are in the
    # same day, and 19:00 next day still is; 21:00 next day is a new day. Its reading covers
    # 19:00–21:00, half on each side of the 20:00 boundary: 5 mm to each day.
    det = AntecedentRain(day_offset_s=-4 * HOUR, k=0.5, days=3)
    t = MIDNIGHT + HOUR * np.array([20.5, 21, 23, 43, 45])
    out = feed(det, t, [0, 10, 10, 10, 10])
    assert [v.evidence["today_mm"] for v in out[1:]] == [10.0, 20.0, 30.0, 5.0]
    assert out[-1].evidence["effective_rain_mm"] == pytest.approx(5.0 + 0.5 * 35.0)


def test_a_multi_day_reading_is_booked_over_its_days():
    """An 11-day total of 110 mm is 10 mm a day for 11 days, not 110 mm on the last one
    (Lamosano's manual gauge): R = 10 + Σ_{i=1..10} 0.84^i · 10, by hand."""
    det = AntecedentRain(k=0.84, days=15, max_interval_s=30 * DAY)
    out = feed(det, MIDNIGHT + DAY * np.array([0.0, 11.0]), [0, 110])
    assert out[-1].evidence["today_mm"] == 10.0
    assert out[-1].evidence["effective_rain_mm"] == pytest.approx(10 + sum(10 * 0.84**i for i in range(1, 11)))
    # A quarter-day more: 110/11.25 mm on each whole day, the rest today; nothing lost.
    det = AntecedentRain(k=0.5, days=15, max_interval_s=30 * DAY)
    out = feed(det, MIDNIGHT + DAY * np.array([0.0, 11.25]), [0, 110])
    whole = int(11000 / 11.25) / 100  # hundredths, floored per day
    assert out[-1].evidence["today_mm"] == pytest.approx(110 - 11 * whole)
    assert out[-1].evidence["effective_rain_mm"] == pytest.approx((110 - 11 * whole) + sum(whole * 0.5**i for i in range(1, 12)))


# -- the combined detector ---------------------------------------------------------------------


def test_combined_detector_takes_the_highest_method_and_carries_all_evidence():
    det = RainDetector.for_channel(600.0)
    # 10 min readings of 6 mm for 1 h (36 mm/h): 1 h sum 36 → yellow; I–D at D = 1 h:
    # 36 / 14.82 = 2.43 → orange.
    out = feed(det, T0 + 600.0 * np.arange(7), np.r_[0.0, np.full(6, 6.0)])[-1]
    assert out.level == 3
    assert out.evidence["levels"] == {"sums": 2, "intensity_duration": 3, "antecedent": 0}
    assert out.evidence["sum_1h_mm"] == 36.0
    assert out.evidence["id_ratio"] == pytest.approx(36 / 14.82)
    assert out.evidence["effective_rain_mm"] == 36.0
    assert out.evidence["record_start_t"] == T0
    assert out.reason.startswith("rain event 1.0 h at 36.0 mm/h") and "; 1h rain 36.0 mm" in out.reason


def test_for_channel_does_not_judge_windows_shorter_than_the_interval():
    det = RainDetector.for_channel(DAY)
    out = feed(det, [MIDNIGHT, MIDNIGHT + DAY], [0.0, 60.0])[-1]
    assert "sum_1h_mm" not in out.evidence
    assert out.evidence["sum_24h_mm"] == 60.0 and out.level == 2


def test_daily_warning_is_held_for_a_day():
    # for_channel holds a level for one day. 120 mm on day 1, then dry days:
    # day 1: 24 h 120 → orange; 72 h 120, I–D 5/4.29 = 1.17×, effective 120 → yellow.
    # day 2: 24 h 0 but orange held (hold starts now); effective 0.84·120 = 100.8 → yellow.
    # day 3: orange released (a day below); 72 h still 120 → yellow; effective 84.7 < 90
    #        starts its hold.
    # day 4: 72 h 0, yellow held (a day); effective released. day 5: nothing left.
    det = RainDetector.for_channel(DAY)
    out = feed(det, MIDNIGHT + DAY * np.arange(1, 7), [0.0, 120.0, 0.0, 0.0, 0.0, 0.0])
    assert [v.level for v in out] == [0, 3, 3, 2, 2, 0]
    assert out[2].evidence["effective_rain_mm"] == pytest.approx(100.8)
    assert out[3].evidence["sum_72h_mm"] == 120.0 and out[4].evidence["sum_72h_mm"] == 0.0


def test_methods_must_share_the_reading_model():
    with pytest.raises(ValueError, match="max_interval_s"):
        RainDetector(sums=RainSums(max_interval_s=HOUR))


# -- reading hygiene -------------------------------------------------------------------------


@pytest.mark.parametrize("make", [RainSums, IntensityDuration, AntecedentRain, lambda: RainDetector.for_channel(600.0)])
def test_late_repeated_and_nan_readings_change_nothing(make):
    det = make()
    t = T0 + 600.0 * np.arange(20)
    last = feed(det, t, np.full(20, 1.0))[-1]
    before = json.dumps(det.snapshot(), sort_keys=True)
    assert det.update(t[5], 99.0) is last
    assert det.update(t[-1], 99.0) is last
    assert det.update(t[-1] + 600.0, math.nan) is last
    assert det.update(math.nan, 1.0) is last
    assert json.dumps(det.snapshot(), sort_keys=True) == before


def test_negative_rain_counts_as_none():
    det = RainSums()
    out = feed(det, [T0, T0 + 600, T0 + 1200], [0.0, -3.0, 1.0])[-1]
    assert out.evidence["sum_1h_mm"] == 1.0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RainSums([]), "at least one"),
        (lambda: RainSums([(HOUR, ((2, 30.0),)), (3600.0, ((2, 40.0),))]), "distinct"),
        (lambda: RainSums([(HOUR, ((2, 30.0), (3, 20.0)))]), "rise with the level"),
        (lambda: RainSums([(HOUR, ((5, 30.0),))]), "1-4"),
        (lambda: RainSums(hysteresis=1.0), r"hysteresis must be in \[0, 1\)"),
        (lambda: IntensityDuration(a=0.0), "a must be > 0"),
        (lambda: IntensityDuration(d_min_h=600.0), "d_min_h < d_max_h"),
        (lambda: IntensityDuration(dry_gap_s=0.0), "dry_gap_s must be > 0"),
        (lambda: AntecedentRain(k=1.0), r"k must be in \(0, 1\)"),
        (lambda: AntecedentRain(days=0), "days must be an integer in 1-366"),
        (lambda: RainDetector.for_channel(0.0), "interval_s must be > 0"),
        (lambda: RiseRateDetector.for_kind("rain"), r"kind must be one of \['groundwater', 'mud_level', 'pore_pressure', 'seepage_pressure'\]"),
        (lambda: RiseRateDetector([(2, -1.0)]), "rate > 0"),
        (lambda: RiseRateDetector([(2, 1.0)], min_points=2), "min_points must be an integer >= 3"),
        (lambda: RiseRateDetector([(2, 1.0)], persist=0), "persist must be an integer >= 1"),
    ],
)
def test_constructor_validation_names_the_valid_values(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# -- rise rate --------------------------------------------------------------------------------


def test_rise_warms_up_then_needs_three_judged_slopes():
    # 10 min readings, 6 h window: judged from a span of 3 h (reading 18); with persist 3 the
    # first level is possible at reading 20. A clean rise of 1.2 m/day is orange (≥ 1).
    det = RiseRateDetector.for_kind("groundwater", interval_s=600.0)
    t = T0 + 600.0 * np.arange(30)
    out = feed(det, t, 10.0 + 1.2 * (t - T0) / DAY)
    assert all(v.warming_up and v.level == 0 for v in out[:18])
    assert not out[18].warming_up and out[18].level == 0 and out[19].level == 0
    assert [v.level for v in out[20:]] == [3] * 10
    assert out[-1].evidence["rate_per_day"] == pytest.approx(1.2, rel=1e-9)
    assert out[-1].evidence["points"] == 30  # 29 × 10 min = 4.8 h < 6 h: all still in the window
    assert "rising 1.20 m/day" in out[-1].reason


def test_a_fall_is_not_a_warning():
    det = RiseRateDetector.for_kind("pore_pressure", interval_s=600.0)
    t = T0 + 600.0 * np.arange(60)
    out = feed(det, t, 200.0 - 30.0 * (t - T0) / DAY)  # falling 30 kPa/day
    assert max(v.level for v in out) == 0
    assert out[-1].evidence["rate_per_day"] == pytest.approx(-30.0, rel=1e-9)


def test_noise_alone_never_warns():
    # 0.2 kPa of noise, 10 min readings, 6 h window (37 readings, both ends included): the
    # slope's standard error is 0.2 / sqrt(Σ(x − x̄)²), Σ = 37·(37² − 1)/12·600² s² =
    # 1.5185e9 s² → 5.13e-6 kPa/s = 0.44 kPa/day; z = 5 puts the noise floor at ~2.2
    # kPa/day, yellow is 5.
    rng = np.random.default_rng(7)
    det = RiseRateDetector.for_kind("pore_pressure", interval_s=600.0)
    t = T0 + 600.0 * np.arange(14 * 144)
    out = feed(det, t, 120.0 + 0.2 * rng.standard_normal(len(t)))
    assert max(v.level for v in out) == 0
    se = [v.evidence["stderr_per_day"] for v in out if not v.warming_up]
    assert np.median(se) == pytest.approx(0.44, rel=0.15)


def test_a_gap_longer_than_the_window_restarts_the_smoothing():
    det = RiseRateDetector.for_kind("groundwater", interval_s=600.0, hold_s=0.0)
    t = T0 + 600.0 * np.arange(40)
    feed(det, t, 10.0 + 3.0 * (t - T0) / DAY)
    assert det._last.level == 4  # 3 m/day ≥ red 2
    t2 = t[-1] + 7 * HOUR + 600.0 * np.arange(25)
    out = feed(det, t2, 20.0 + 3.0 * (t2 - T0) / DAY)
    assert all(v.warming_up and v.level == 0 for v in out[:18])  # judged again from 3 h
    assert out[18].level == 0 and out[19].level == 0  # persistence restarts too
    assert out[20].level == 4


def test_a_level_is_held_for_hold_s_after_the_rise_stops():
    # 3 m/day for 8 h, then flat. The 6 h slope falls as flat readings enter the window and
    # drops below red's band (1.8 m/day) once; from then the level waits hold_s = 2 h.
    det = RiseRateDetector.for_kind("groundwater", interval_s=600.0, hold_s=2 * HOUR)
    t = T0 + 600.0 * np.arange(120)
    v = 10.0 + 3.0 * np.minimum(t - T0, 8 * HOUR) / DAY
    levels = [x.level for x in feed(det, t, v)]
    first_red = levels.index(4)
    last_red = len(levels) - 1 - levels[::-1].index(4)
    # Flat from reading 48; the fitted slope stays above 1.8 m/day while enough of the
    # window still rises; after it leaves the band, 12 more readings (2 h) stay red.
    det2 = RiseRateDetector.for_kind("groundwater", interval_s=600.0, hold_s=0.0)
    levels0 = [x.level for x in feed(det2, t, v)]
    last_red0 = len(levels0) - 1 - levels0[::-1].index(4)
    assert first_red == 20 and last_red == last_red0 + 12


def test_rise_rate_survives_long_runs_without_drift():
    # 30 days of a 0.3 m/day rise with re-anchoring: the streaming slope equals the exact
    # slope, and the batch (fresh centred regression per window) agrees.
    det = RiseRateDetector.for_kind("groundwater", interval_s=600.0)
    t = T0 + 600.0 * np.arange(30 * 144)
    v = 15.0 + 0.3 * (t - T0) / DAY
    out = feed(det, t, v)
    assert out[-1].evidence["rate_per_day"] == pytest.approx(0.3, rel=1e-9)
    assert det._smooth.t0 > t[-1] - 5 * det.window_s  # the anchor moved with the data
    rate, judged = rise_rate_batch(t, v)
    assert rate[-1] == pytest.approx(0.3, rel=1e-9) and judged[-1]


def test_rise_late_and_nan_readings_change_nothing():
    det = RiseRateDetector.for_kind("pore_pressure")
    t = T0 + 600.0 * np.arange(40)
    last = feed(det, t, 100.0 + 0.1 * np.arange(40))[-1]
    before = json.dumps(det.snapshot(), sort_keys=True)
    assert det.update(t[3], 1e6) is last
    assert det.update(t[-1], 1e6) is last
    assert det.update(t[-1] + 600, math.nan) is last
    assert det.update(math.inf, 1.0) is last
    assert json.dumps(det.snapshot(), sort_keys=True) == before


def test_for_kind_window_is_at_least_six_intervals():
    assert RiseRateDetector.for_kind("groundwater", interval_s=3 * HOUR).window_s == 18 * HOUR
    assert RiseRateDetector.for_kind("pore_pressure", interval_s=600.0).window_s == 6 * HOUR


# -- contract checks (the shared suite's, for these modules) -----------------------------------

CASES = rain.contract_cases() + rise.contract_cases()
IDS = [c.name for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_contract_streaming_equals_batch(case, seed):
    t, v = case.series(seed)
    assert np.all(np.diff(t) > 0)
    verdicts = feed(case.make(), t, v)
    assert [x.level for x in verdicts] == list(case.batch(t, v))
    assert max(x.level for x in verdicts) >= case.reaches
    assert all(x.level == 0 for x in verdicts if x.warming_up)
    assert verdicts[0].level == 0


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 5])
def test_contract_snapshot_restore_at_cut_points(case, seed):
    t, v = case.series(seed)
    whole = feed(case.make(), t, v)
    rng = np.random.default_rng(seed + 100)
    cuts = sorted(set(rng.integers(1, len(t) - 1, size=8).tolist()))
    det, got, start = case.make(), [], 0
    for cut in [*cuts, len(t)]:
        got += feed(det, t[start:cut], v[start:cut])
        state = json.loads(json.dumps(det.snapshot()))
        det = case.make()
        det.restore(state)
        start = cut
    assert got == whole
    # a late reading right after a restore gets the verdict the uninterrupted detector gave
    assert det.update(float(t[0]), 1.0) == whole[-1]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_contract_determinism_json_and_defaults(case):
    t, v = case.series(3)
    a = feed(case.make(), t, v)
    assert a == feed(case.make(), t, v)
    for x in a:
        json.dumps(x.evidence)
        assert isinstance(x.reason, str)
    det = case.make()
    for cls in type(det).__mro__:
        init = cls.__dict__.get("__init__")
        if init is not None:
            for p in inspect.signature(init).parameters.values():
                assert not isinstance(p.default, (list, dict, set)), f"{cls.__name__}.{p.name}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_contract_streaming_equals_batch_with_late_and_bad_readings(case):
    # The batch references also model ignored readings: late, repeated and NaN ones.
    t, v = case.series(1)
    rng = np.random.default_rng(9)
    t, v = t.astype(float).copy(), v.astype(float).copy()
    pick = rng.choice(np.arange(5, len(t)), size=len(t) // 20, replace=False)
    t[pick[: len(pick) // 2]] = t[pick[: len(pick) // 2] - 3]  # late
    v[pick[len(pick) // 2 :]] = np.nan
    assert [x.level for x in feed(case.make(), t, v)] == list(case.batch(t, v))


# -- real data (not in the repository; skipped when absent) ------------------------------------

CUBATAO = Path(__file__).resolve().parents[2] / "shared" / "data" / "cubatao_brazil_rain_landslides" / "cubatao_hb_rain_daily_long.csv"


@pytest.mark.skipif(not CUBATAO.exists(), reason="Cubatão rain record not present")
def test_streaming_equals_batch_on_17_years_of_daily_rain():
    import datetime as dt

    rows = [line.split(",") for line in CUBATAO.read_text().splitlines()[1:]]
    t = np.array([dt.datetime.fromisoformat(d).replace(tzinfo=dt.timezone.utc).timestamp() + DAY for d, _ in rows])
    v = np.array([float(x) if x.strip() else math.nan for _, x in rows])
    levels = [x.level for x in feed(RainDetector.for_channel(DAY), t, v)]
    assert levels == rain.rain_detector_batch(t, v, DAY).tolist()
    assert max(levels) == 4  # 302 mm in a day
