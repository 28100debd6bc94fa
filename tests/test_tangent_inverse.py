"""Tests of the improved tangent angle (detectors/tangent.py) and the inverse-velocity failure
forecast (detectors/inverse_velocity.py).

Golden values come from closed forms worked out here: the angle arctan(v / v_steady) of a
piecewise-linear displacement, the white-noise standard error of a regression slope, and
Voight's law — for α = 2 the inverse velocity is exactly linear in time, for any α the
quantity v^(1−α) is, so Fukuzono's straight line must find t_f on noise-free data. The
contract checks of ``tests/test_detector_contract.py`` are repeated here for these cases.
"""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geowarn.detectors import inverse_velocity
from geowarn.detectors.compact import unpack
from geowarn.detectors.inverse_velocity import InverseVelocityDetector
from geowarn.detectors.tangent import (
    SlidingSlope,
    SlopeWindows,
    TangentAngleDetector,
    white_noise_velocity_se,
)
from geowarn.simulators.slope import StableSlope, VoightFailure
from oracles import inverse_velocity as inverse_velocity_oracle
from oracles import tangent as tangent_oracle
from oracles.inverse_velocity import forecast_batch, voight_gnss
from oracles.tangent import tangent_batch

DAY = 86400.0
HOUR = 3600.0
T0 = 1_764_374_400.0  # 2025-11-29T00:00:00Z
STEP = 600.0


def feed(det, t, v):
    return [det.update(float(a), float(b)) for a, b in zip(t, v)]


def piecewise(rates_per_day, durations_days, *, wiggle=0.5):
    """Readings every 10 min of a displacement moving at each rate for each duration, with
    a ±``wiggle`` mm alternating reading error (so slopes have a non-zero standard error)."""
    t, d, x, now = [], [], 0.0, T0
    for rate, dur in zip(rates_per_day, durations_days):
        for _ in range(int(round(dur * DAY / STEP))):
            t.append(now)
            d.append(x + wiggle * (-1) ** len(t))
            now += STEP
            x += rate * STEP / DAY
    return np.array(t), np.array(d)


def gnss_noise(rng, n, sigma, outliers=True):
    e = sigma * rng.standard_normal(n)
    if outliers:  # multipath: 5-15 σ either way, 0.2 % of readings (as simulators/devices.py)
        hit = rng.random(n) < 0.002
        e[hit] += rng.uniform(5, 15, hit.sum()) * sigma * np.sign(rng.standard_normal(hit.sum()))
    return e


# -- the sliding slope -----------------------------------------------------------------------


def test_sliding_slope_matches_a_fresh_regression_after_many_window_turns():
    rng = np.random.default_rng(1)
    s = SlidingSlope(6 * HOUR)
    t = T0 + STEP * np.arange(3000)  # ~20 days: the sums are re-anchored many times
    y = 1e4 + 0.3 * np.arange(3000) + rng.standard_normal(3000)
    for a, b in zip(t, y):
        s.push(float(a), float(b))
    w = t >= t[-1] - 6 * HOUR
    slope = np.polyfit(t[w] - t[w][0], y[w], 1)[0] * DAY
    v, se, tbar = s.fit()
    assert v == pytest.approx(slope, rel=1e-9)
    assert tbar == pytest.approx(t[w].mean(), abs=1e-3)
    assert s.n == w.sum() == 37


def test_white_noise_velocity_se_closed_form():
    # 72 readings 600 s apart: Σ(t − t̄)² = 72·(72² − 1)/12 · 600² = 1.11942e10 s²
    assert white_noise_velocity_se(3.0, 12 * HOUR, STEP) == pytest.approx(3.0 / math.sqrt(72 * 5183 / 12 * 600.0**2) * DAY)
    assert white_noise_velocity_se(3.0, 12 * HOUR, STEP) == pytest.approx(2.4497, abs=1e-4)


# -- tangent angle: golden angles ----------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "level"),
    [(1.5, 2), (2.0, 2), (5.0, 2), (6.0, 3), (11.0, 3), (15.0, 4), (30.0, 4)],
)
def test_tangent_angle_of_a_speed_up_is_arctan_of_the_ratio(ratio, level):
    # 20 mm/day for 3.5 days (the reference learns 20), then ratio × 20 mm/day for a day:
    # α = arctan(ratio): 1.5 → 56.3°, 2 → 63.4°, 5 → 78.7° (yellow), 6 → 80.5°, 11 → 84.8°
    # (orange), 15 → 86.2°, 30 → 88.1° (red).
    t, d = piecewise([20.0, 20.0 * ratio], [3.5, 1.0])
    out = feed(TangentAngleDetector(), t, d)
    last = out[-1]
    assert last.evidence["v_steady_per_day"] == pytest.approx(20.0, rel=1e-3)
    assert last.evidence["velocity_per_day"] == pytest.approx(20.0 * ratio, rel=1e-3)
    assert last.evidence["alpha_point_deg"] == pytest.approx(math.degrees(math.atan(ratio)), abs=0.05)
    assert last.evidence["alpha_deg"] <= last.evidence["alpha_point_deg"]  # the judged lower bound
    assert last.level == level
    # steady creep at the learned rate is 45° at most, never a level
    steady = [x for x, a in zip(out, t) if 3 * DAY <= a - T0 < 3.5 * DAY]
    assert steady and all(x.level == 0 and x.evidence["alpha_deg"] < 45.0 for x in steady)


def test_floor_replaces_a_zero_steady_rate():
    # a stable point (v_steady ≈ 0) that starts moving at 60 mm/day: 60 / 10 = 6 → 80.5°,
    # orange, and never the infinite angle of 60 / 0
    t, d = piecewise([0.0, 60.0], [3.5, 1.0])
    last = feed(TangentAngleDetector(), t, d)[-1]
    assert last.evidence["steady_fit_per_day"] == pytest.approx(0.0, abs=0.05)
    assert last.evidence["v_steady_per_day"] == 10.0
    assert last.evidence["alpha_point_deg"] == pytest.approx(math.degrees(math.atan(6.0)), abs=0.05)
    assert last.level == 3


def test_v_steady_is_frozen_after_the_reference():
    # the rate doubles every day after the reference: a running mean would follow it and
    # keep α near 45°; the frozen reference keeps saying 20 and α climbs
    t, d = piecewise([20.0, 40.0, 80.0, 160.0, 320.0], [3.0, 1.0, 1.0, 1.0, 1.0])
    out = feed(TangentAngleDetector(), t, d)
    judged = [x for x in out if not x.warming_up]
    assert {x.evidence["v_steady_per_day"] for x in judged} == {judged[0].evidence["v_steady_per_day"]}
    assert judged[0].evidence["v_steady_per_day"] == pytest.approx(20.0, rel=1e-3)
    assert [x.level for x in out][-1] == 4
    assert max(x.evidence["alpha_deg"] for x in judged) > 85.0


def test_tangent_warm_up_is_the_reference_period():
    t, d = piecewise([20.0], [4.0])
    out = feed(TangentAngleDetector(reference_s=2 * DAY), t, d)
    first_judged = next(i for i, x in enumerate(out) if not x.warming_up)
    assert t[first_judged] - T0 == 2 * DAY  # the reading that completes 2 days of reference
    assert all(x.level == 0 for x in out[:first_judged])


@pytest.mark.parametrize("sigma", [3.0, 6.0])
@pytest.mark.parametrize("creep", [0.0, 2.0, 5.0])
def test_stable_gnss_point_never_alarms(sigma, creep):
    # 60 days of a stable point: 3 mm (horizontal) or 6 mm (vertical) white noise, multipath
    # outliers, a 1 mm daily thermal wobble and a seasonal swing, creeping below the floor
    t = T0 + STEP * np.arange(int(60 * DAY / STEP))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        s = StableSlope(T0, creep_mm_day=creep, seasonal_amp_mm=5.0, thermal_amp_mm=1.0)
        d = s.displacement(t) + gnss_noise(rng, len(t), sigma)
        for det in (TangentAngleDetector(), TangentAngleDetector.for_channel()):
            assert max(x.level for x in feed(det, t, d)) == 0


def test_gap_restarts_smoothing_but_keeps_v_steady_and_the_level():
    # 20 mm/day, then 150 mm/day (7.5×: 82.4°, orange); a 1-day silence; then 150 again
    t, d = piecewise([20.0, 150.0], [3.5, 1.0])
    t2 = t[-1] + DAY + STEP * np.arange(1, 100)
    d2 = d[-1] + 150.0 * (t2 - t[-1]) / DAY
    det = TangentAngleDetector(hold_s=2 * HOUR)
    before = feed(det, t, d)
    assert before[-1].level == 3
    steady = before[-1].evidence["v_steady_per_day"]
    after = feed(det, t2, d2)
    warm = [x for x in after if x.warming_up]
    assert warm and after[0].warming_up and all(x.level == 0 for x in warm)
    # 12 readings (min_points) are not enough: they must span min_span · window = 6 h, so
    # readings 1-36 after the gap warm up and the 37th (36 · 600 s = 6 h) is judged
    assert len(warm) == 36 and not after[36].warming_up
    judged = [x for x in after if not x.warming_up]
    assert judged[0].level == 3  # the latch kept its level over the gap: no data lowers nothing
    assert judged[-1].evidence["v_steady_per_day"] == steady


def test_tangent_persistence_needs_consecutive_evaluations():
    t, d = piecewise([20.0, 400.0], [3.5, 0.3], wiggle=0.0)
    for persist in (1, 3, 6):
        out = feed(TangentAngleDetector(persist=persist, window_s=HOUR, min_points=3), t, d)
        alphas = [x.evidence.get("alpha_deg", 0.0) for x in out]
        first_over = next(i for i, a in enumerate(alphas) if a >= 45.0)
        first_level = next(i for i, x in enumerate(out) if x.level >= 2)
        assert first_level == first_over + persist - 1


def test_tangent_ignores_late_repeated_and_non_finite_readings():
    t, d = piecewise([20.0, 150.0], [3.5, 0.5])
    det = TangentAngleDetector()
    out = feed(det, t, d)
    state = json.dumps(det.snapshot(), sort_keys=True)
    assert det.update(float(t[10]), 1e6) is out[-1]
    assert det.update(float(t[-1]), 1e6) is out[-1]
    assert det.update(float(t[-1]) + STEP, math.nan) is out[-1]
    assert det.update(math.nan, 1.0) is out[-1]
    assert json.dumps(det.snapshot(), sort_keys=True) == state


def test_tangent_for_channel():
    ten_min = TangentAngleDetector.for_channel(window_s=6 * HOUR, interval_s=STEP)
    assert ten_min.window_s == 12 * HOUR and ten_min.reference_s == 3 * DAY
    assert ten_min.min_v_steady == pytest.approx(4 * 2.4497, abs=1e-3)
    monthly = TangentAngleDetector.for_channel(window_s=180 * DAY, interval_s=30 * DAY)
    assert monthly.window_s == 180 * DAY and monthly.reference_s == 360 * DAY and monthly.min_points == 6
    assert monthly.min_v_steady < 0.2  # a 6-point, half-year slope resolves ~0.02 mm/day


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"thresholds_deg": ((2, 45.0), (3, 95.0))}, "angle in"),
        ({"thresholds_deg": ((3, 45.0), (2, 80.0))}, "ascending"),
        ({"thresholds_deg": ()}, "thresholds_deg"),
        ({"min_v_steady": 0.0}, "min_v_steady"),
        ({"window_s": 0.0}, "window_s"),
        ({"reference_s": -1.0}, "reference_s"),
        ({"persist": 0}, "persist"),
        ({"hysteresis": 1.0}, "hysteresis"),
        ({"min_points": 2}, "min_points"),
        ({"min_span": 0.0}, "min_span"),
    ],
)
def test_tangent_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TangentAngleDetector(**kwargs)


# -- inverse velocity: Voight's law ------------------------------------------------------------


def run_to_forecasts(det, slope, *, noise=None):
    """(t, verdict) for 10-minute readings of ``slope`` up to its clamp."""
    t = T0 + STEP * np.arange(int((slope.t_f - T0) / STEP))
    t = t[t < slope.t_clamp]
    d = slope.displacement(t) + (0.0 if noise is None else noise(len(t)))
    return t, feed(det, t, d)


def test_noise_free_alpha_2_recovers_the_failure_time():
    # creep 0, α = 2: 1/v = A·(t_f − t) exactly. The forecast must recover t_f to 1 % of the
    # remaining time; what is left is the smoothing window's curvature bias, W²/(20 τ²) of
    # the velocity for α = 2 (early, the safe side): under 1 % from 16 h before failure.
    slope = VoightFailure(T0, T0 + 10 * DAY, alpha=2.0, v0_mm_day=5.0, creep_mm_day=0.0)
    t, out = run_to_forecasts(InverseVelocityDetector(estimate_alpha=False), slope)
    made = [(a, x.evidence["forecast"]) for a, x in zip(t, out) if x.evidence.get("forecast")]
    assert made and made[0][1]["onset"] < slope.t_f - 2 * DAY
    for a, f in made:
        tau = slope.t_f - a
        if tau >= 16 * HOUR:
            assert abs(f["failure_time"] - slope.t_f) <= 0.01 * tau
            assert f["r2"] > 0.9999
    red = next((a, x) for a, x in zip(t, out) if x.level == 4)
    tau = slope.t_f - red[0]
    assert 11 * HOUR <= tau <= 12 * HOUR
    assert abs(red[1].evidence["forecast"]["failure_time"] - slope.t_f) <= 0.015 * tau
    # with a 3 h smoothing window the bias is a quarter: within 1 % down to 8 h
    t, out = run_to_forecasts(InverseVelocityDetector(window_s=3 * HOUR, estimate_alpha=False), slope)
    for a, x in zip(t, out):
        f = x.evidence.get("forecast")
        if f and slope.t_f - a >= 8 * HOUR:
            assert abs(f["failure_time"] - slope.t_f) <= 0.01 * (slope.t_f - a)


@pytest.mark.parametrize("alpha", [1.7, 2.2])
def test_noise_free_voight_generalisation(alpha):
    # v^(1−α) = A(α−1)·(t_f − t) is the straight line for any α: with alpha given, t_f again
    slope = VoightFailure(T0, T0 + 10 * DAY, alpha=alpha, v0_mm_day=5.0, creep_mm_day=0.0)
    t, out = run_to_forecasts(InverseVelocityDetector(alpha=alpha, estimate_alpha=False), slope)
    made = [(a, x.evidence["forecast"]) for a, x in zip(t, out) if x.evidence.get("forecast") and slope.t_f - a >= 16 * HOUR]
    assert len(made) > 50
    for a, f in made:
        assert abs(f["failure_time"] - slope.t_f) <= 0.02 * (slope.t_f - a)


def first_red_error(det, t, d, t_f):
    """(t_f forecast − t_f) / (t_f − t) at the first red, or None if red never came."""
    for a, b in zip(t.tolist(), d.tolist()):
        x = det.update(a, b)
        if x.level == 4:
            return (x.evidence["forecast"]["failure_time"] - t_f) / (t_f - a)
    return None


@pytest.mark.parametrize("alpha", [1.7, 1.85, 2.0, 2.2])
def test_noisy_first_red_within_25_percent_when_alpha_is_known(alpha):
    # 3 mm GNSS noise, 10-min readings, a failure on day 10 at 120 mm/day a day before
    errs = []
    for seed in range(20):
        t, d, t_f = voight_gnss(seed, alpha=alpha)
        e = first_red_error(InverseVelocityDetector(alpha=alpha, estimate_alpha=False), t, d, t_f)
        assert e is not None, f"seed {seed}: red never came"
        errs.append(e)
    errs = np.array(errs)
    assert np.mean(np.abs(errs) <= 0.25) >= 0.9
    assert np.median(np.abs(errs)) <= 0.12
    assert errs.max() <= 0.25  # never late by more than a quarter of the remaining time


def test_noisy_fukuzono_default_on_alpha_2():
    errs = [first_red_error(InverseVelocityDetector(estimate_alpha=False), *voight_gnss(seed, alpha=2.0)) for seed in range(20)]
    assert all(e is not None and abs(e) <= 0.25 for e in errs[:10])
    assert np.mean(np.abs(errs) <= 0.25) >= 0.9


@pytest.mark.parametrize("alpha", [1.7, 2.2])
def test_fukuzono_bias_follows_the_sign_of_alpha_minus_2(alpha):
    # A straight line through a curved 1/v: even its tangent reaches zero at (α − 1)·τ, so
    # the linear forecast is early for α < 2 (at least 30 % at 1.7) and late for α > 2.
    errs = np.array([first_red_error(InverseVelocityDetector(estimate_alpha=False), *voight_gnss(seed, alpha=alpha)) for seed in range(8)])
    if alpha < 2:
        assert np.all(errs < -(2 - alpha) + 0.05)
    else:
        assert np.median(errs) > alpha - 2 - 0.05


def test_uncertainty_is_conservative():
    # at the first red, the forecast error is within the stated uncertainty most of the time
    # and within twice it always (it is inflated for the overlap of smoothing windows)
    z = []
    for alpha in (1.8, 2.0, 2.2):
        for seed in range(10):
            t, d, t_f = voight_gnss(seed, alpha=alpha)
            det = InverseVelocityDetector(alpha=alpha, estimate_alpha=False)
            for a, b in zip(t.tolist(), d.tolist()):
                x = det.update(a, b)
                if x.level == 4:
                    f = x.evidence["forecast"]
                    z.append((f["failure_time"] - t_f) / f["uncertainty_s"])
                    break
    z = np.abs(np.array(z))
    assert len(z) == 30 and np.all(z < 2.0) and np.mean(z < 1.0) >= 0.8


@pytest.mark.parametrize("sigma", [3.0, 6.0])
@pytest.mark.parametrize("creep", [0.0, 5.0, 40.0])
def test_stable_noisy_series_never_forecasts(sigma, creep):
    t = T0 + STEP * np.arange(int(30 * DAY / STEP))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        s = StableSlope(T0, creep_mm_day=creep, seasonal_amp_mm=5.0, thermal_amp_mm=1.0)
        d = s.displacement(t) + gnss_noise(rng, len(t), sigma)
        for det in (InverseVelocityDetector(), InverseVelocityDetector.for_channel()):
            out = feed(det, t, d)
            assert all(x.evidence.get("forecast") is None and x.level == 0 for x in out)


def test_deceleration_drops_the_forecast_and_a_new_onset_is_found():
    # Voight acceleration (α = 2, failure due on day 10) that stalls 18 h before the failure,
    # decelerates to creep over half a day, creeps for 4 days, then accelerates again.
    a1 = VoightFailure.reaching(T0, T0 + 10 * DAY)
    stall = a1.t_f - 0.75 * DAY
    v_stall = a1.velocity(stall)
    second = stall + 4 * DAY
    a2 = VoightFailure.reaching(second, second + 4 * DAY, creep_mm_day=0.0)
    t = T0 + STEP * np.arange(int((a2.t_clamp - T0) / STEP))
    tau = 0.5 * DAY
    after = np.clip(t - stall, 0.0, None)
    d = np.where(t < stall, a1.displacement(np.minimum(t, stall)), a1.displacement(stall) + v_stall / DAY * tau * (1 - np.exp(-after / tau)))
    d = d + np.where(t > second, a2.displacement(np.maximum(t, second)), 0.0)
    d = d + 3.0 * np.random.default_rng(4).standard_normal(len(t))
    det = InverseVelocityDetector(hold_s=3 * HOUR)
    out = feed(det, t, d)
    fc = [x.evidence.get("forecast") for x in out]
    before = [i for i, f in enumerate(fc) if f is not None and t[i] < stall]
    assert before, "the first acceleration gets a forecast"
    assert max(out[i].level for i in before) >= 3
    first_onset = fc[before[-1]]["onset"]
    dropped = next(i for i in range(before[-1], len(t)) if not out[i].evidence["accelerating"])
    assert t[dropped] < stall + DAY
    quiet = [x for a, x in zip(t, out) if stall + 1.5 * DAY <= a < second]
    assert quiet and all(x.level == 0 and x.evidence["forecast"] is None for x in quiet)
    later = [f for a, f in zip(t, fc) if f is not None and a > second]
    assert later and later[-1]["onset"] > second > first_onset
    assert out[-1].level == 4


def test_plateau_drops_the_forecast():
    # acceleration, then a constant 120 mm/day (above the reference, so not a release):
    # 1/v stops falling, the fitted slope turns ≥ 0 and the forecast goes
    a1 = VoightFailure.reaching(T0, T0 + 10 * DAY)
    stop = a1.t_f - DAY
    t = T0 + STEP * np.arange(int(14 * DAY / STEP))
    d = np.where(t < stop, a1.displacement(np.minimum(t, stop)), a1.displacement(stop) + a1.velocity(stop) * (t - stop) / DAY)
    d = d + 3.0 * np.random.default_rng(5).standard_normal(len(t))
    out = feed(InverseVelocityDetector(), t, d)
    tail = [x for a, x in zip(t, out) if a > stop + 2 * DAY]
    assert any(x.evidence.get("forecast") for x in out)
    assert all(x.evidence["forecast"] is None and x.level == 0 for x in tail)
    assert all(x.evidence["velocity_per_day"] > 100 for x in tail)


def test_forecast_evidence_shape():
    t, d, _ = voight_gnss(0)
    out = feed(InverseVelocityDetector(), t, d)
    fs = [x.evidence["forecast"] for x in out if x.evidence.get("forecast")]
    assert fs
    for f in fs:
        assert set(f) == {"failure_time", "r2", "uncertainty_s", "points", "onset", "alpha", "alpha_estimate", "alpha_stderr", "method", "interval_90"}
        # The 90 % interval: ± Student's t(0.95) standard errors, wider than the normal ± 1.645 σ
        # (few independent windows), and at most the one-dof t (6.314, from any t table).
        lo, hi = f["interval_90"]
        half = (hi - lo) / 2
        assert abs((lo + hi) / 2 - f["failure_time"]) < 1e-6 * max(1.0, abs(f["failure_time"]))
        assert 1.645 * f["uncertainty_s"] < half <= 6.314 * f["uncertainty_s"] * 1.0001
        assert all(type(f[k]) is float for k in ("failure_time", "r2", "uncertainty_s", "onset", "alpha")) and type(f["points"]) is int
        assert f["points"] >= 18 and 0.8 <= f["r2"] <= 1.0 and f["uncertainty_s"] > 0
        if f["method"] == "voight (alpha estimated)":
            assert type(f["alpha_estimate"]) is float and f["alpha_stderr"] > 0 and 1.3 <= f["alpha"] <= 3.0
        else:
            assert f["method"] == "fukuzono" and f["alpha"] == 2.0 and f["alpha_estimate"] is None
    for x in out:
        json.loads(json.dumps(x.evidence, allow_nan=False))
        if x.level:
            assert x.evidence["forecast"] is not None or "held" in x.reason


def test_the_forecast_interval_uses_students_t_with_the_independent_windows():
    from geowarn.detectors.inverse_velocity import interval_90

    # Golden values from a printed t table: t(0.95; 10) = 1.812, t(0.95; 1) = 6.314.
    lo, hi = interval_90(1000.0, 10.0, points=120, per_window=10)  # 12 windows - 2 = 10 dof
    assert (round(hi - 1000.0, 2), round(1000.0 - lo, 2)) == (18.12, 18.12)
    lo, hi = interval_90(0.0, 1.0, points=25, per_window=10)  # 2 windows: at least 1 dof
    assert round(hi, 3) == 6.314


def test_snapshot_restore_mid_forecast():
    t, d, _ = voight_gnss(1)
    whole = feed(InverseVelocityDetector(), t, d)
    cut = next(i for i, x in enumerate(whole) if x.evidence.get("forecast")) + 5
    det = InverseVelocityDetector()
    feed(det, t[:cut], d[:cut])
    state = json.loads(json.dumps(det.snapshot()))
    assert state["onset"] is not None and unpack(state["fit"]["v"])  # mid-fit, not between fits
    again = InverseVelocityDetector()
    again.restore(state)
    assert feed(again, t[cut:], d[cut:]) == whole[cut:]


def test_inverse_velocity_ignores_late_repeated_and_non_finite_readings():
    t, d, _ = voight_gnss(2)
    det = InverseVelocityDetector()
    out = feed(det, t[:-50], d[:-50])
    state = json.dumps(det.snapshot(), sort_keys=True)
    assert det.update(float(t[3]), 1e6) is out[-1]
    assert det.update(float(t[-51]), 1e6) is out[-1]
    assert det.update(float(t[-50]), math.inf) is out[-1]
    assert json.dumps(det.snapshot(), sort_keys=True) == state


def test_inverse_velocity_for_channel():
    ten_min = InverseVelocityDetector.for_channel(window_s=6 * HOUR, interval_s=STEP)
    assert (ten_min.onset_persist, ten_min.min_fit_points, ten_min.fit_window_s, ten_min.hold_s) == (6, 18, DAY, 6 * HOUR)
    assert ten_min.min_v_ref == pytest.approx(white_noise_velocity_se(3.0, 6 * HOUR, STEP))
    hourly = InverseVelocityDetector.for_channel(window_s=6 * HOUR, interval_s=HOUR)
    assert (hourly.onset_persist, hourly.min_fit_points, hourly.fit_window_s, hourly.min_points) == (2, 6, 36 * HOUR, 6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"horizons_s": ((2, HOUR), (4, DAY))}, "shrink"),
        ({"horizons_s": ((4, DAY), (2, HOUR))}, "ascending"),
        ({"alpha": 1.0}, "alpha"),
        ({"onset_factor": 0.5}, "onset_factor"),
        ({"release": 5.0}, "release"),
        ({"r2_min": 1.5}, "r2_min"),
        ({"min_fit_points": 2}, "min_fit_points"),
        ({"min_fit_span_s": 2 * DAY}, "min_fit_span_s"),
        ({"accel_lag_s": 0.0}, "accel_lag_s"),
        ({"min_v_ref": 0.0}, "min_v_ref"),
    ],
)
def test_inverse_velocity_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InverseVelocityDetector(**kwargs)


# -- hostile input: streaming equals batch -----------------------------------------------------

_ops = st.lists(
    st.tuples(st.sampled_from(["next"] * 30 + ["late", "same_t", "gap", "nan"]), st.integers(-3, 3), st.integers(-4, 2)),
    min_size=40,
    max_size=400,
)


def _hostile(ops):
    """Readings every 5 min of a displacement creeping for 2.5 h, then changing speed (5 %
    slower to 7 % faster each reading), with late, repeated-time, NaN readings and 3-hour gaps
    mixed in."""
    t, v, now, x, rate = [], [], T0, 0.0, 1.0
    for i, (op, noise, accel) in enumerate(ops):
        if op == "late":
            tt = now - 900.0
        elif op == "same_t":
            tt = now
        else:
            now += 3 * HOUR if op == "gap" else 300.0
            tt = now
        if i >= 30:
            rate *= 1.03 + 0.02 * accel
        x += rate
        t.append(tt)
        v.append(math.nan if op == "nan" else x + 0.5 * noise)
    return np.array(t), np.array(v)


_SMALL_T = {"window_s": HOUR, "reference_s": 2 * HOUR, "min_v_steady": 1.0, "min_points": 3, "z": 2.0, "persist": 2, "hold_s": 900.0}
_SMALL_IV = {
    "window_s": HOUR, "reference_s": 2 * HOUR, "min_v_ref": 1.0, "min_points": 3, "z": 2.0, "persist": 2, "hold_s": 900.0,
    "onset_persist": 2, "fit_window_s": 4 * HOUR, "min_fit_points": 4, "min_fit_span_s": 0.0, "r2_min": 0.5,
    "horizons_s": ((2, 2 * DAY), (3, 6 * HOUR), (4, HOUR)),
}  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(_ops)
def test_streaming_equals_batch_on_hostile_input(ops):
    t, v = _hostile(ops)
    assert [x.level for x in feed(TangentAngleDetector(**_SMALL_T), t, v)] == list(tangent_batch(t, v, **_SMALL_T))
    assert [x.level for x in feed(InverseVelocityDetector(**_SMALL_IV), t, v)] == list(forecast_batch(t, v, **_SMALL_IV)[0])


# -- the shared contract checks, for these modules ---------------------------------------------

CASES = tangent_oracle.contract_cases() + inverse_velocity_oracle.contract_cases()
IDS = [c.name for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_contract_streaming_equals_batch_and_reaches(case, seed):
    t, v = case.series(seed)
    assert np.all(np.diff(t) > 0)
    verdicts = feed(case.make(), t, v)
    assert [x.level for x in verdicts] == list(case.batch(t, v))
    assert max(x.level for x in verdicts) >= case.reaches
    assert all(x.level == 0 for x in verdicts if x.warming_up)
    assert verdicts[0].warming_up and verdicts[0].level == 0


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
    assert det.update(float(t[0]), 1.0) == whole[-1]  # a late reading after a restore


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_contract_determinism_json_and_defaults(case):
    t, v = case.series(3)
    a = feed(case.make(), t, v)
    assert a == feed(case.make(), t, v)
    for x in a:
        json.dumps(x.evidence, allow_nan=False)
        assert isinstance(x.reason, str)
    det = case.make()
    json.dumps(det.snapshot(), allow_nan=False)
    for cls in type(det).__mro__:
        init = cls.__dict__.get("__init__")
        if init is not None:
            for p in inspect.signature(init).parameters.values():
                assert not isinstance(p.default, (list, dict, set)), f"{cls.__name__}.{p.name}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_contract_late_and_repeated_readings_are_ignored(case):
    t, v = case.series(0)
    det = case.make()
    mid = len(t) // 2
    feed(det, t[:mid], v[:mid])
    before = json.dumps(det.snapshot(), sort_keys=True)
    det.update(float(t[mid // 2]), float(v[mid // 2]) + 1e6)
    det.update(float(t[mid - 1]), float(v[mid - 1]) + 1e6)
    assert json.dumps(det.snapshot(), sort_keys=True) == before


# -- shared windows and Voight's α estimated ---------------------------------------------------


def test_shared_windows_give_each_view_a_fresh_regression_of_its_own_window():
    # two views over one store of readings, through gaps longer than the short window only
    rng = np.random.default_rng(7)
    t = T0 + STEP * np.arange(2000, dtype=float)
    t[700:] += 8 * HOUR  # restarts the 6 h view, not the 12 h one
    t[1400:] += 13 * HOUR  # restarts both
    y = 50.0 + 0.02 * np.arange(2000) + rng.standard_normal(2000)
    w = SlopeWindows()
    short, long_ = w.view(6 * HOUR), w.view(12 * HOUR)
    for i, (a, b) in enumerate(zip(t.tolist(), y.tolist())):
        assert w.push(a, b) and not w.push(a, b + 1.0)  # a second push of the same t is a no-op
        for view, width in ((short, 6 * HOUR), (long_, 12 * HOUR)):
            seg = np.flatnonzero(np.diff(t[: i + 1]) > width)
            start = int(seg[-1]) + 1 if len(seg) else 0
            sel = np.arange(start, i + 1)
            sel = sel[t[sel] >= a - width]
            assert view.n == len(sel)
            if len(sel) >= 3 and i % 37 == 0:
                assert view.fit()[0] == pytest.approx(np.polyfit(t[sel] - t[sel][0], y[sel], 1)[0] * DAY, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("alpha", [1.7, 2.2])
def test_noise_free_alpha_is_estimated_and_the_forecast_follows_it(alpha):
    # The default detector is not told α: noise-free Voight failures with α 1.7 and 2.2, where
    # the α = 2 line is 30 % early or 20 % late, are forecast within 4 % of the remaining time
    # from 12 h before failure, and the estimate lands within 0.05 of α (the smoothing
    # window's curvature bias is what is left).
    slope = VoightFailure(T0, T0 + 10 * DAY, alpha=alpha, v0_mm_day=5.0, creep_mm_day=0.0)
    t, out = run_to_forecasts(InverseVelocityDetector(), slope)
    made = [(a, x.evidence["forecast"]) for a, x in zip(t, out) if x.evidence.get("forecast") and slope.t_f - a >= 12 * HOUR]
    assert len(made) > 50
    for a, f in made:
        assert f["method"] == "voight (alpha estimated)"
        assert abs(f["failure_time"] - slope.t_f) <= 0.04 * (slope.t_f - a)
    assert abs(made[-1][1]["alpha"] - alpha) < 0.05


def test_noisy_gnss_alpha_stays_near_the_fukuzono_line():
    # 3 mm GNSS noise on α = 2 failures: the combined α never strays far from 2 (the prior
    # holds a poorly determined estimate), and the first red is within 25 % of the remaining
    # time, as with the line alone (test_noisy_fukuzono_default_on_alpha_2)
    errs = []
    for seed in range(10):
        t, d, t_f = voight_gnss(seed, alpha=2.0)
        out = feed(InverseVelocityDetector(), t, d)
        fs = [x.evidence["forecast"] for x in out if x.evidence.get("forecast")]
        assert fs and all(abs(f["alpha"] - 2.0) <= 0.3 for f in fs)
        errs.append(first_red_error(InverseVelocityDetector(), t, d, t_f))
    assert all(e is not None for e in errs) and np.mean(np.abs(errs) <= 0.25) >= 0.9


def test_lopsided_windows_by_hand():
    # Readings every 10 min over 6 h: mean time = midpoint, not lopsided.
    ts = [600.0 * i for i in range(37)]
    assert not inverse_velocity.lopsided(sum(ts) / len(ts), ts[0], ts[-1])
    # A 2 h gap at the window's end: 25 readings over 0–4 h and one at 6 h; mean 2.23 h against
    # a midpoint of 3 h, 13 % of the span off (tolerance 3 %).
    ts = [600.0 * i for i in range(25)] + [6 * HOUR]
    assert inverse_velocity.lopsided(sum(ts) / len(ts), ts[0], ts[-1])
    # The same gap in the middle (2–4 h): symmetric, the regression slope is still the velocity
    # at the mean time, not lopsided.
    ts = [600.0 * i for i in range(13)] + [4 * HOUR + 600.0 * i for i in range(13)]
    assert not inverse_velocity.lopsided(sum(ts) / len(ts), ts[0], ts[-1])


def test_alpha_from_the_stretch_since_the_onset_survives_a_gap():
    # An extensometer (0.1 mm) on an α = 1.75 failure, silent for 3 h a day and a half before
    # failure. The α = 2 line would be ~25 % early (2 − α of the remaining time), and an α from
    # the last day alone was given up while the gap lay in it. α read from the velocities since
    # the onset (here ~3.5 days before failure), without those whose window straddles the gap
    # off-centre, keeps the forecast within 10 % of the remaining time, with α within 0.1 of the
    # truth once two days of them are in: from 40 h before failure, through the gap and its
    # aftermath, down to the red horizon.
    rng = np.random.default_rng(5)
    slope = VoightFailure.reaching(T0, T0 + 12 * DAY, alpha=1.75)
    t = T0 + STEP * np.arange(int(12 * DAY / STEP))
    t = t[(t < slope.t_clamp) & ~((t >= slope.t_f - 36 * HOUR) & (t < slope.t_f - 33 * HOUR))]
    out = feed(InverseVelocityDetector(), t, slope.displacement(t) + 0.1 * rng.standard_normal(len(t)))
    made = [(a, x.evidence["forecast"]) for a, x in zip(t, out) if x.evidence.get("forecast") and 12 * HOUR <= slope.t_f - a <= 40 * HOUR]
    assert len(made) > 120
    for a, f in made:
        assert f["method"] == "voight (alpha estimated)"
        assert abs(f["alpha"] - 1.75) <= 0.1
        assert abs(f["failure_time"] - slope.t_f) <= 0.1 * (slope.t_f - a)


def test_snapshot_carries_alphas_velocities():
    t, d, _ = voight_gnss(3, alpha=1.8, sigma_mm=0.1)
    det = InverseVelocityDetector()
    out = feed(det, t[:-200], d[:-200])
    assert out[-1].evidence["accelerating"]
    state = json.loads(json.dumps(det.snapshot()))
    assert len(unpack(state["trend_t"])) == len(unpack(state["trend_v"])) > 20
    again = InverseVelocityDetector()
    again.restore(state)
    assert again.snapshot() == state
    assert feed(again, t[-200:], d[-200:]) == feed(det, t[-200:], d[-200:])
