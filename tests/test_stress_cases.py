"""Issue 14's stress cases (items 3, 4 and 5), replayed through the real judge.

The readings come from ``tests/stress_cases.py``, which makes them from their own definitions
(numpy and Voight's law written out there), not from ``geowarn.simulators``; the expected
values are the issue's targets ("Done when"), not outputs of the code:

- item 4: ≤ 8 yellow raises in 8 stable GNSS site-years (30-minute epochs, σ 2–4 mm, 0.5 %
  outliers of 8 σ, seasonal ±4 mm, 0.02 mm/day creep) — with white noise as the issue words
  it, and with half the noise variance correlated over 1–6 h, as real GNSS noise is;
- item 5: on slopes failing by Voight's law (α 1.8–2.2; one GNSS receiver σ 2–5 mm with
  outliers and gaps, plus a crack meter σ 0.1 mm), an orange that is not yet red at least
  24 h before failure, red 6 h–7 days before, and the forecast at the first red within 30 %
  of the time remaining; over three kinds of approach (14 days at 120 mm/day a day before
  failure; 30 days, so the reference is learned while the slope is slow; 30 days at 40 mm/day);
- item 3: a point creeping at 0.2 mm/day with a wobble gets no failure forecast, and no
  forecast confirms anything on it; a confirmation by a forecast shows its uncertainty.

Seeds are fixed; several per case, none chosen for passing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import stress_cases as sc
from geowarn.detectors.inverse_velocity import InverseVelocityDetector
from geowarn.detectors.noise import noise_for

HOUR = sc.HOUR
DAY = sc.DAY

# -- item 4: stable GNSS ------------------------------------------------------------------------


def _yellow_raises(seeds: range, coloured: float) -> list[str]:
    raised = []
    for seed in seeds:
        case = sc.stable_gnss(seed, coloured=coloured)
        for e in sc.yellow_raises(sc.replay(case)):
            raised.append(f"{e['t']} σ {case.truth['sigma']:.1f}: {e['reason'][:160]}")
    return raised


@pytest.mark.slow
def test_eight_stable_gnss_site_years_with_white_noise_raise_at_most_eight_yellows() -> None:
    raised = _yellow_raises(range(1, 9), 0.0)
    assert len(raised) <= 8, f"{len(raised)} yellow raises in 8 site-years: {raised[:10]}"


@pytest.mark.slow
def test_eight_stable_gnss_site_years_with_correlated_noise_raise_at_most_eight_yellows() -> None:
    raised = _yellow_raises(range(11, 19), 0.5)
    assert len(raised) <= 8, f"{len(raised)} yellow raises in 8 site-years: {raised[:10]}"


# -- item 5: orange before red ------------------------------------------------------------------

SLOPES = [(1.8, 2.0), (1.9, 2.75), (2.0, 3.5), (2.1, 4.25), (2.2, 5.0)]  # (α, GNSS σ mm)
APPROACHES = [(14.0, 120.0), (30.0, 120.0), (30.0, 40.0)]  # (days to failure, mm/day a day before)


@pytest.mark.parametrize("days,v1d", APPROACHES)
@pytest.mark.parametrize("alpha,sigma", SLOPES)
@pytest.mark.parametrize("seed", [1, 2])
def test_voight_slope_goes_orange_a_day_ahead_then_red_with_a_good_forecast(alpha: float, sigma: float, days: float, v1d: float, seed: int) -> None:
    case = sc.voight_slope(alpha, sigma, seed, days=days, v1d=v1d)
    events = sc.replay(case)
    r = sc.failure_score(case, events)
    said = [f"{(case.truth['t_f'] - sc.event_time(e)) / HOUR:.1f} h before: {e['level']} {e['reason'][:200]}" for e in events if e["level"] >= 3]
    assert r["orange_h"] is not None, "never orange"
    assert r["orange_stage"], f"the first orange was already red: {said[:3]}"
    assert r["orange_h"] >= 24.0, f"orange only {r['orange_h']:.1f} h before failure: {said[:3]}"
    assert r["red_h"] is not None, "never red before the failure"
    assert 6.0 <= r["red_h"] <= 7 * 24.0, f"red {r['red_h']:.1f} h before failure: {said[:4]}"
    assert r["forecast_err"] is not None, "no failure forecast at the first red"
    assert r["forecast_err"] <= 0.30, f"forecast at the first red off by {100 * r['forecast_err']:.0f} % of the remaining {r['red_h']:.1f} h"
    for e in events:
        if "confirmed by a failure forecast" in e["reason"]:
            assert "±" in e["reason"].split("confirmed by a failure forecast", 1)[1], e["reason"]


# -- item 3: a forecast only for a real acceleration -------------------------------------------


def _wobble(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """40 days of a precise displacement sensor (σ 0.02 mm, 10-minute readings) on a point
    creeping at 0.2 mm/day with a wobble of 0.3–0.6 mm over 3–8 days: its velocity swings
    between about −0.4 and 0.8 mm/day, far below yellow, and each rise fits a falling 1/v."""
    rng = np.random.default_rng(np.random.SeedSequence([14_3, 7, seed]))
    t = 1.7e9 + 600.0 * np.arange(int(40 * DAY / 600.0))
    amp, period = float(rng.uniform(0.3, 0.6)), float(rng.uniform(3.0, 8.0)) * DAY
    x = 0.2 * (t - t[0]) / DAY + amp * np.sin(2 * math.pi * (t - t[0]) / period + rng.uniform(0, 2 * math.pi)) + rng.normal(0.0, 0.02, len(t))
    return t, x


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_a_wobble_of_a_slow_point_gets_no_failure_forecast(seed: int) -> None:
    t, x = _wobble(seed)
    det = InverseVelocityDetector.for_channel(interval_s=600.0, noise=noise_for("displacement", "mm", stated=0.02), min_velocity=3.0)
    forecasts = []
    for a, b in zip(t, x):
        v = det.update(float(a), float(b))
        f = v.evidence.get("forecast")
        if f:
            forecasts.append(((f["failure_time"] - a) / HOUR, f["r2"], v.evidence["velocity_per_day"]))
        assert v.level == 0, f"level {v.level} on a point moving {v.evidence.get('velocity_per_day'):.2f} mm/day: {v.reason}"
    assert not forecasts, f"{len(forecasts)} forecasts, e.g. (h to failure, R², mm/day) {forecasts[:3]}"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_smoothed_daily_series_of_a_slow_point_is_never_confirmed_by_a_forecast(seed: int) -> None:
    case = sc.wobble_point(seed)
    events = sc.replay(case)
    assert max((e["level"] for e in events), default=0) <= 2, [e["reason"] for e in events if e["level"] > 2]
    assert not [e for e in events if "confirmed by a failure forecast" in e["reason"]]


# Two harder kinds of site: the crack opens by only 0.3 of the slope's displacement (the crack
# meter is slower than the slope), or the receiver reports every 30 minutes. Orange must still
# come before red, red 6 h–7 days ahead with a forecast within 30 %. (The ≥ 24 h orange lead is
# not asserted here: with the crack at 0.3 and 40 mm/day a day before failure, GNSS never
# reaches the orange velocity and the forecast reaches R² 0.95 only ~21–23 h before failure on
# 2 of these 20 slopes; the report of issue 14 says so.)
VARIANTS = [(0.3, 1), (1.0, 3)]  # (crack fraction, GNSS every n × 10 minutes)


@pytest.mark.parametrize("crack_fraction,gnss_every", VARIANTS)
@pytest.mark.parametrize("days,v1d", APPROACHES[1:])
@pytest.mark.parametrize("alpha,sigma", SLOPES)
@pytest.mark.parametrize("seed", [1, 2])
def test_voight_slope_with_a_slow_crack_or_sparse_gnss_goes_orange_before_red(
    alpha: float, sigma: float, days: float, v1d: float, seed: int, crack_fraction: float, gnss_every: int
) -> None:
    case = sc.voight_slope(alpha, sigma, seed, days=days, v1d=v1d, crack_fraction=crack_fraction, gnss_every=gnss_every)
    events = sc.replay(case)
    r = sc.failure_score(case, events)
    said = [f"{(case.truth['t_f'] - sc.event_time(e)) / HOUR:.1f} h before: {e['level']} {e['reason'][:200]}" for e in events if e["level"] >= 3]
    assert r["orange_h"] is not None and r["orange_stage"], f"no orange before red: {said[:3]}"
    assert r["red_h"] is not None and 6.0 <= r["red_h"] <= 7 * 24.0, f"red at {r['red_h']} h before failure: {said[:4]}"
    assert r["forecast_err"] is not None and r["forecast_err"] <= 0.30, f"forecast at the first red off by {r['forecast_err']}"
