"""Tests of the slope models, device models and simulated fleets (simulators/).

Golden values are worked out independently of the code under test: by hand from Voight's
law, from the closed forms written out here in the A-parametrisation of the literature, by
scipy quadrature, or from the DESIGN §3 contract.
"""

from __future__ import annotations

import copy
import json
import math
import tomllib

import numpy as np
import pytest
from scipy.integrate import quad

from geowarn.config.registry import DEFAULT_RANGE, Channel, Kind, load_registry, parse_registry
from geowarn.config.settings import example_path
from geowarn.simulators.devices import (
    RAIN_TIP_MM,
    GnssComponent,
    Power,
    RainGauge,
    SiteEnvironment,
    Weather,
    channel_model,
)
from geowarn.simulators.fleet import Fleet
from geowarn.simulators.slope import DAY, StableSlope, VoightFailure

T0 = 1_764_374_400.0  # 2025-11-29T00:00:00Z
HOUR = 3600.0


@pytest.fixture
def registry():
    return load_registry(example_path("sites.example.toml"))


def _payloads(msgs):
    return [(topic, json.loads(body)) for topic, body in msgs]


# -- Voight failure ------------------------------------------------------------------


def test_voight_alpha2_hand_values():
    # v0 = 0.5 mm/day at t0, 240 days to failure: v·τ is constant for α = 2, so
    # 1 day before failure v = 0.5·240 = 120, 40 h before v = 120·24/40 = 72.
    s = VoightFailure(T0, T0 + 240 * DAY, alpha=2.0, v0_mm_day=0.5, creep_mm_day=0.0)
    assert s.velocity(T0) == pytest.approx(0.5, rel=1e-12)
    assert s.velocity(s.t_f - DAY) == pytest.approx(120.0, rel=1e-12)
    assert s.velocity(s.t_f - 40 * HOUR) == pytest.approx(72.0, rel=1e-12)
    # A = 1/(v0·τ0) = 1/120 day/mm; D = ln(τ0/τ)/A = 120·ln 240 one day before failure.
    assert s.A == pytest.approx(1 / 120, rel=1e-12)
    assert s.displacement(s.t_f - DAY) == pytest.approx(120 * math.log(240), rel=1e-12)
    assert s.displacement(T0) == 0.0


def test_voight_alpha2_inverse_velocity_is_linear_and_recovers_failure_time():
    t_f = T0 + 30 * DAY
    s = VoightFailure(T0, t_f, alpha=2.0, v0_mm_day=2.0, creep_mm_day=0.0)
    t = np.linspace(T0, t_f - HOUR, 500)
    inv_v = 1.0 / s.velocity(t)
    b, a = np.polyfit(t, inv_v, 1)
    assert np.max(np.abs(np.polyval([b, a], t) - inv_v)) < 1e-9 * np.max(inv_v)
    assert abs(-a / b - t_f) < 0.01 * (t_f - T0)
    assert np.polyval([b, a], t_f) == pytest.approx(0.0, abs=1e-9)


def test_voight_fukuzono_with_creep_over_the_last_week():
    # With steady creep added 1/v is no longer exactly linear, but near failure the
    # accelerating term dominates and the fit still lands within 1 % of the horizon.
    t_f = T0 + 60 * DAY
    s = VoightFailure(T0, t_f)
    t = np.linspace(t_f - 7 * DAY, t_f - HOUR, 300)
    b, a = np.polyfit(t, 1.0 / s.velocity(t), 1)
    assert abs(-a / b - t_f) < 0.01 * (t_f - T0)


@pytest.mark.parametrize("alpha", [1.7, 2.0, 2.5])
def test_voight_displacement_equals_quadrature_of_literature_velocity(alpha):
    v0, creep = 0.8, 0.3
    tau0 = 20.0  # days
    s = VoightFailure(T0, T0 + tau0 * DAY, alpha=alpha, v0_mm_day=v0, creep_mm_day=creep)
    # Voight's law in the literature form: v = [A(α−1)(t_f − t)]^(−1/(α−1)), A from v(t0) = v0.
    A = v0 ** (1 - alpha) / ((alpha - 1) * tau0)

    def v_lit(t_days: float) -> float:  # t in days since t0
        return (A * (alpha - 1) * (tau0 - t_days)) ** (-1 / (alpha - 1)) + creep

    for t_days in (0.5, 5.0, 15.0, 19.0, 19.9, 19.99):
        expected, err = quad(v_lit, 0.0, t_days, epsabs=1e-12, epsrel=1e-12, limit=200)
        assert s.displacement(T0 + t_days * DAY) == pytest.approx(expected, rel=1e-8)
        assert s.velocity(T0 + t_days * DAY) == pytest.approx(v_lit(t_days), rel=1e-10)


def test_voight_closed_form_in_A_parametrisation():
    alpha, v0, creep, tau0 = 1.7, 0.6, 0.0, 50.0
    s = VoightFailure(T0, T0 + tau0 * DAY, alpha=alpha, v0_mm_day=v0, creep_mm_day=creep)
    A = v0 ** (1 - alpha) / ((alpha - 1) * tau0)
    e = (alpha - 2) / (alpha - 1)
    for tau in (49.0, 10.0, 1.0, 0.01):
        expected = (A * (alpha - 1)) ** (-1 / (alpha - 1)) * (alpha - 1) / (alpha - 2) * (tau0**e - tau**e)
        assert s.displacement(s.t_f - tau * DAY) == pytest.approx(expected, rel=1e-10)


def test_voight_alpha_above_2_converges_before_failure():
    # For α > 2 the displacement to failure is finite: v0·τ0·(α−1)/(α−2) = 3·v0·τ0 at α = 2.5.
    s = VoightFailure(T0, T0 + 100 * DAY, alpha=2.5, v0_mm_day=0.4, creep_mm_day=0.0)
    limit = 3 * 0.4 * 100
    final = s.displacement(s.t_f + DAY)
    assert 0.97 * limit < final < limit


def test_voight_defaults_quiet_at_start_red_about_a_day_before():
    # Defaults: v0 0.5 + creep 0.2 mm/day at t0. For α = 2 the accelerating part reaches
    # 120 − 0.2 mm/day at τ = τ0·0.5/119.8: with τ0 = 240 days that is 24.04 h before t_f,
    # and orange (72) at τ0·0.5/71.8 days = 40.11 h before.
    s = VoightFailure(T0, T0 + 240 * DAY)
    assert s.velocity(T0) < 1.0
    red_h = (s.t_f - s.time_at_velocity(120.0)) / HOUR
    orange_h = (s.t_f - s.time_at_velocity(72.0)) / HOUR
    assert red_h == pytest.approx(240 * 24 * 0.5 / 119.8, rel=1e-9)
    assert orange_h == pytest.approx(240 * 24 * 0.5 / 71.8, rel=1e-9)
    assert 20 < red_h < 28 and orange_h > red_h
    t = np.linspace(T0, s.t_f - 2 * s.clamp_s, 200_001)
    v = s.velocity(t)
    assert np.all(np.diff(v) > 0)
    first_red = t[np.argmax(v >= 120.0)]
    assert abs(first_red - s.time_at_velocity(120.0)) <= t[1] - t[0]


@pytest.mark.parametrize("alpha", [1.5, 2.0, 2.5])
def test_voight_reaching_hits_the_velocity_at_the_lead(alpha):
    s = VoightFailure.reaching(T0, T0 + 14 * DAY, v_mm_day=120.0, lead_s=DAY, alpha=alpha)
    assert s.velocity(s.t_f - DAY) == pytest.approx(120.0, rel=1e-12)
    assert s.velocity(s.t_f - 2 * DAY) < 120.0 < s.velocity(s.t_f - 0.5 * DAY)


def test_voight_alpha_1_5_demo_profile():
    # v_acc ∝ τ^−2 for α = 1.5: 119.8·(1/14)² + 0.2 ≈ 0.81 mm/day at the start of a 14-day run.
    s = VoightFailure.reaching(T0, T0 + 14 * DAY, alpha=1.5)
    assert s.velocity(T0) == pytest.approx(119.8 / 196 + 0.2, rel=1e-12)
    # 3 mm/day when 119.8/τ² = 2.8 → τ = √(119.8/2.8) days.
    assert (s.t_f - s.time_at_velocity(3.0)) / DAY == pytest.approx(math.sqrt(119.8 / 2.8), rel=1e-12)


def test_voight_clamps_after_failure():
    s = VoightFailure(T0, T0 + 10 * DAY, v0_mm_day=1.0)
    held = s.displacement(s.t_f - s.clamp_s)
    assert s.displacement(s.t_f) == held
    assert s.displacement(s.t_f + 30 * DAY) == held
    assert s.velocity(s.t_f + HOUR) == 0.0
    t = np.linspace(T0, s.t_f + DAY, 10_001)
    d = s.displacement(t)
    assert np.all(np.isfinite(d)) and np.all(np.diff(d) >= 0)


def test_slope_return_types_follow_the_input():
    s = VoightFailure(T0, T0 + 10 * DAY)
    st = StableSlope(T0)
    for model in (s, st):
        assert type(model.displacement(T0 + 5.0)) is float
        assert type(model.displacement(np.float64(T0 + 5.0))) is float
        assert type(model.velocity(T0 + 5.0)) is float
        out = model.displacement(np.array([[T0, T0 + 1.0], [T0 + 2.0, T0 + 3.0]]))
        assert isinstance(out, np.ndarray) and out.shape == (2, 2) and out.dtype == np.float64
        assert isinstance(model.velocity([T0, T0 + 1.0]), np.ndarray)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"alpha": 1.0}, "alpha"),
        ({"v0_mm_day": 0.0}, "v0_mm_day"),
        ({"creep_mm_day": -1.0}, "creep_mm_day"),
        ({"t_f": T0}, "after t0"),
        ({"clamp_s": 0.0}, "clamp_s"),
    ],
)
def test_voight_rejects_bad_parameters(kwargs, fragment):
    args = {"t0": T0, "t_f": T0 + DAY} | kwargs
    with pytest.raises(ValueError, match=fragment):
        VoightFailure(**args)


# -- stable slope --------------------------------------------------------------------


def test_stable_slope_is_quiet_and_consistent():
    s = StableSlope(T0, creep_mm_day=0.05, seasonal_phase=1.0, thermal_phase=2.0)
    assert s.displacement(T0) == pytest.approx(0.0, abs=1e-12)
    t = T0 + np.arange(0, 365 * DAY, 600.0)
    v = s.velocity(t)
    # Peak speed by hand: creep + 2π·0.05 (daily) + 2π·1/365.25 (yearly) mm/day.
    bound = 0.05 + 2 * math.pi * 0.05 + 2 * math.pi / 365.25
    assert np.max(np.abs(v)) <= bound + 1e-12 and np.max(np.abs(v)) < 1.0
    d = s.displacement(t)
    v_num = np.gradient(d, t / DAY)
    assert np.max(np.abs(v_num[1:-1] - v[1:-1])) < 1e-3
    # Over whole years the oscillations cancel and only the creep is left.
    assert s.displacement(T0 + 4 * 365.25 * DAY) == pytest.approx(0.05 * 4 * 365.25, abs=0.05 + 1e-9)


# -- device models -------------------------------------------------------------------


def _env(slope=None, *, storms_per_day=0.2, seed=1, lon=110.5):
    slope = slope if slope is not None else StableSlope(T0)
    return SiteEnvironment("S", slope, Weather(np.random.default_rng(seed), T0, storms_per_day=storms_per_day), lon=lon, azimuth_deg=120.0, dip_deg=30.0)


@pytest.mark.parametrize("kind, sigma", [(Kind.gnss_e, 3.0), (Kind.gnss_n, 3.0), (Kind.gnss_u, 6.0)])
def test_gnss_noise_matches_sigma_on_a_stable_slope(kind, sigma):
    env = _env()
    m = GnssComponent(Channel(channel="c", kind=kind), env, np.random.default_rng(7), outlier_prob=0.0)
    t = T0 + 600.0 * np.arange(20_000)
    resid = np.array([m.value(x) - m.truth(x) for x in t])
    assert abs(resid.std() - sigma) < 0.2 * sigma
    assert abs(resid.mean()) < 0.1 * sigma


def test_gnss_multipath_outliers_occur_at_their_rate():
    env = _env()
    m = GnssComponent(Channel(channel="e", kind=Kind.gnss_e), env, np.random.default_rng(3), outlier_prob=0.05)
    t = T0 + 600.0 * np.arange(20_000)
    resid = np.array([m.value(x) - m.truth(x) for x in t])
    big = np.abs(resid) > 4.0 * 3.0  # outliers are 5–15 σ; pure noise beyond 4 σ is 6e-5
    assert 0.04 < big.mean() < 0.06
    assert np.max(np.abs(resid)) < (15.0 + 5.0) * 3.0  # largest outlier plus a 5 σ noise draw


def test_gnss_components_are_the_projection_of_slope_motion():
    # Whatever the azimuth and dip, e² + n² + u² is the slope displacement squared.
    slope = VoightFailure(T0, T0 + 10 * DAY, v0_mm_day=5.0)
    env = _env(slope)
    rng = np.random.default_rng(0)
    comps = [GnssComponent(Channel(channel=k.value, kind=k), env, rng, sigma_h_mm=0.0) for k in (Kind.gnss_e, Kind.gnss_n, Kind.gnss_u)]
    t = slope.t_f - 2 * HOUR
    e, n, u = (c.truth(t) for c in comps)
    assert math.sqrt(e * e + n * n + u * u) == pytest.approx(slope.displacement(t), rel=1e-12)
    # Dip 30° below horizontal: the vertical is −D·sin 30°.
    assert u == pytest.approx(-0.5 * slope.displacement(t), rel=1e-12)


def test_rain_gauge_reports_whole_tips_and_loses_no_rain():
    env = _env(storms_per_day=0.5)
    gauge = RainGauge(Channel(channel="rain", kind=Kind.rain), env, np.random.default_rng(0))
    times = T0 + 600.0 * np.arange(1, 365 * 144)
    values = np.array([gauge.value(float(t)) for t in times])
    assert np.all(values >= 0)
    tips = values / RAIN_TIP_MM
    assert np.all(np.abs(tips - np.round(tips)) < 1e-9)
    # The sum of the readings is the whole tips of the rain since the first interval began.
    total = env.weather.cumulative(times[-1]) - env.weather.cumulative(times[0] - 600.0)
    assert abs(values.sum() - total) < RAIN_TIP_MM + 1e-9
    assert 1000 < values.sum() < 4500  # 0.5 storms/day × 15 mm ≈ 2700 mm a year
    assert (values > 0).mean() > 0.02


def test_weather_reservoir_equals_numerical_convolution():
    w = Weather(np.random.default_rng(11), T0, storms_per_day=1.0)
    k = 2 * DAY
    t_end = T0 + 20 * DAY
    grid = np.linspace(T0, t_end, 200_001)
    cum = np.array([w.cumulative(float(s)) for s in grid])
    mids = 0.5 * (grid[1:] + grid[:-1])
    expected = float(np.sum(np.diff(cum) * np.exp(-(t_end - mids) / k)))
    assert expected > 1.0
    assert w.stored(t_end, k) == pytest.approx(expected, rel=1e-4)


def test_battery_follows_the_sun():
    env = _env(storms_per_day=0.0, lon=120.0)  # solar noon at 04:00 UTC
    p = Power(env.power.lon, env.weather)
    noon = T0 + 4 * HOUR
    midnight = T0 + 16 * HOUR
    assert p.battery_v(noon) - p.battery_v(midnight) > 1.0
    assert p.solar_v(midnight) == 0.0 and p.solar_v(noon) > 15.0


def test_every_kind_has_a_model_with_plausible_values():
    env = _env(VoightFailure(T0, T0 + 30 * DAY))
    rng = np.random.default_rng(5)
    channels = [Channel(channel=k.value, kind=k) for k in Kind]
    channels += [Channel(channel="tilt_deg", kind=Kind.tilt, unit="deg"), Channel(channel="tilt_urad", kind=Kind.tilt, unit="urad")]
    for ch in channels:
        model = channel_model(ch, env, rng)
        assert model.channel == ch.channel and model.kind is ch.kind
        lo, hi = DEFAULT_RANGE[ch.kind]
        for t in (T0, T0 + 10 * DAY, T0 + 29 * DAY):
            v = model.value(t)
            assert type(v) is float and math.isfinite(v) and lo <= v <= hi, (ch, v)


def test_tilt_units_scale_the_same_rotation():
    slope = VoightFailure(T0, T0 + 10 * DAY, v0_mm_day=5.0)
    env = _env(slope)
    t = T0 + 9 * DAY
    mrad = channel_model(Channel(channel="a", kind=Kind.tilt, unit="mrad"), env, np.random.default_rng(0), heading_deg=10.0)
    urad = channel_model(Channel(channel="b", kind=Kind.tilt, unit="urad"), env, np.random.default_rng(0), heading_deg=10.0)
    assert urad.truth(t) == pytest.approx(1000.0 * mrad.truth(t), rel=1e-12)
    # 0.1 mrad per mm along the sliding azimuth (120°), seen by an axis heading 10°.
    assert mrad.truth(t) == pytest.approx(0.1 * slope.displacement(t) * math.cos(math.radians(10.0 - 120.0)), rel=1e-12)


# -- fleet ---------------------------------------------------------------------------


def test_fleet_payloads_follow_the_native_v1_contract(registry):
    fleet = Fleet(registry, t0=T0, seed=4, failures={"BSH": T0 + 20 * DAY}, drill=True, topic_prefix="gw/test")
    expected_devices = [(s.site, d.device) for s in registry.sites.values() for d in s.devices]
    assert fleet.devices == expected_devices
    for step in range(3):
        t = T0 + 600.0 * step
        msgs = _payloads(fleet.messages(t))
        assert [(tp.split("/")[2], tp.split("/")[3]) for tp, _ in msgs] == expected_devices
        for topic, p in msgs:
            prefix1, prefix2, site, device, leaf = topic.split("/")
            assert (prefix1, prefix2, leaf) == ("gw", "test", "data")
            assert list(p) == ["v", "device", "seq", "drill", "readings"]
            assert p["v"] == 1 and p["device"] == device and p["drill"] is True
            assert registry.device_site[device] == site
            assert p["seq"] == step
            dev = next(d for d in registry.sites[site].devices if d.device == device)
            assert [r["ch"] for r in p["readings"]] == [c.channel for c in dev.channels]
            for r in p["readings"]:
                assert set(r) == {"ch", "t", "v"}
                assert r["t"] == t and isinstance(r["v"], float) and math.isfinite(r["v"])
                assert registry.channel(site, device, r["ch"]) is not None


def test_fleet_status_heartbeats(registry):
    fleet = Fleet(registry, t0=T0)
    msgs = _payloads(fleet.status_messages(T0 + 6 * HOUR))
    assert len(msgs) == len(fleet.devices)
    for topic, p in msgs:
        assert topic.endswith(f"/{p['device']}/status") and topic.startswith("geowarn/")
        assert list(p) == ["device", "t", "battery_v", "solar_v", "signal_dbm", "temp_c", "sampling_s", "fw"]
        assert p["t"] == T0 + 6 * HOUR
        assert 11.0 < p["battery_v"] < 15.0 and 0.0 <= p["solar_v"] < 25.0
        assert isinstance(p["signal_dbm"], int) and -120 < p["signal_dbm"] < -40
        assert p["sampling_s"] == 600.0


def test_fleet_is_reproducible(registry):
    def run(seed):
        f = Fleet(registry, t0=T0, seed=seed, failures={"BSH": T0 + 10 * DAY})
        out = []
        for i in range(200):
            t = T0 + 600.0 * i
            out += f.messages(t)
            if i % 6 == 0:
                out += f.status_messages(t)
        return out

    a, b, c = run(7), run(7), run(8)
    assert a == b
    assert a != c


def test_fleet_devices_do_not_perturb_each_other(registry):
    with open(example_path("sites.example.toml"), "rb") as fh:
        data = tomllib.load(fh)
    smaller = copy.deepcopy(data)
    del smaller["sites"][0]["devices"][1]  # BSH-GNSS2
    full = Fleet(parse_registry(data, "full"), t0=T0, seed=3)
    part = Fleet(parse_registry(smaller, "part"), t0=T0, seed=3)
    for i in range(20):
        t = T0 + 600.0 * i
        a = {tp: body for tp, body in full.messages(t)}
        b = {tp: body for tp, body in part.messages(t)}
        assert "geowarn/BSH/BSH-GNSS2/data" in a and "geowarn/BSH/BSH-GNSS2/data" not in b
        assert {tp: a[tp] for tp in b} == b


def test_fleet_truth_and_failing_site(registry):
    t_f = T0 + 14 * DAY
    fleet = Fleet(registry, t0=T0, seed=2, failures={"BSH": t_f})
    assert fleet.truth == {"failures": {"BSH": t_f}, "t0": T0, "seed": 2}
    fleet.truth["failures"]["XK"] = 0.0  # a copy: the fleet's truth stays put
    assert fleet.truth["failures"] == {"BSH": t_f}
    slope = fleet.slope("BSH")
    assert isinstance(slope, VoightFailure) and isinstance(fleet.slope("XK"), StableSlope)
    assert slope.velocity(t_f - DAY) == pytest.approx(120.0, rel=1e-9)

    # The extensometer reads the slope's displacement with 0.1 mm noise; fit its velocity by
    # least squares over 6 h windows, as the detectors do.
    times = np.arange(T0, t_f, 600.0)
    ext = []
    for t in times:
        body = dict(_payloads(fleet.messages(float(t))))["geowarn/BSH/BSH-EXT1/data"]
        ext.append(body["readings"][0]["v"])
    ext = np.array(ext)
    assert np.max(np.abs(ext - slope.displacement(times))) < 0.6

    def window_velocity(end):
        sel = (times > end - 6 * HOUR) & (times <= end)
        return np.polyfit(times[sel] / DAY, ext[sel], 1)[0]

    assert window_velocity(T0 + 6 * HOUR) < 15.0
    assert window_velocity(t_f - 12 * HOUR) > 120.0


def test_fleet_gnss_noise_on_stable_site(registry):
    fleet = Fleet(registry, t0=T0, seed=9)
    steps = 4000
    series = {"disp_e": [], "disp_n": [], "disp_u": []}
    for i in range(steps):
        body = dict(_payloads(fleet.messages(T0 + 600.0 * i)))["geowarn/BZM/BZM-GNSS1/data"]
        for r in body["readings"]:
            series[r["ch"]].append(r["v"])
    for ch, sigma in (("disp_e", 3.0), ("disp_n", 3.0), ("disp_u", 6.0)):
        diffs = np.diff(np.array(series[ch]))
        # Robust σ of successive differences: immune to the rare multipath outliers.
        robust = 1.4826 * np.median(np.abs(diffs - np.median(diffs))) / math.sqrt(2)
        assert abs(robust - sigma) < 0.2 * sigma, (ch, robust)


def test_fleet_rejects_bad_arguments(registry):
    with pytest.raises(ValueError, match="not in the registry.*BSH, BZM, XK"):
        Fleet(registry, t0=T0, failures={"NOPE": T0 + DAY})
    with pytest.raises(ValueError, match="after t0"):
        Fleet(registry, t0=T0, failures={"BSH": T0 - 1})
    with pytest.raises(ValueError, match="topic_prefix"):
        Fleet(registry, t0=T0, topic_prefix="geo/#")
    with pytest.raises(ValueError, match="seed"):
        Fleet(registry, t0=T0, seed=-1)
