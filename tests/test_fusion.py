"""Site fusion: confirmation policy, suspect readings, and resuming from a snapshot."""

from __future__ import annotations

import json

from geowarn.config.registry import parse_registry
from geowarn.detectors.fusion import SiteFusion

DAY = 86400.0
T0 = 1.7e9


def _registry(**policy):
    devices = [
        {"device": "G1", "channels": [{"channel": "e", "kind": "gnss_e"}]},
        {"device": "G2", "channels": [{"channel": "e", "kind": "gnss_e"}]},
        {"device": "X1", "channels": [{"channel": "d", "kind": "displacement"}]},
    ]
    site = {"site": "S", "name": "s", "admin": "420527", "lat": 30.0, "lon": 110.0, "devices": devices}
    if policy:
        site["policy"] = policy
    return parse_registry({"sites": [site]}, "<test>")


def _ramp(fusion, reg, devices, rate_mm_day, start, n, step=600.0):
    events = []
    for i in range(n):
        t = start + i * step
        for dev, ch in devices:
            info = reg.channel("S", dev, ch)
            events += fusion.update_all(info, t, rate_mm_day * (t - T0) / DAY)
    return events


def test_one_device_at_red_is_held_at_yellow_and_says_why():
    reg = _registry(confirm_devices=2, forecast_confirms_s=0.0)
    f = SiteFusion(reg)
    # 200 mm/day on one extensometer only, steady (no acceleration, so no forecast)
    events = _ramp(f, reg, [("X1", "d")], 200.0, T0, 100)
    assert f.level("S") == 2
    assert "not confirmed (only X1): held at yellow" in events[-1].reason


def test_two_devices_at_red_confirm_red():
    reg = _registry(confirm_devices=2, forecast_confirms_s=0.0)
    f = SiteFusion(reg)
    events = _ramp(f, reg, [("X1", "d"), ("G1", "e")], 200.0, T0, 100)
    assert f.level("S") == 4
    assert "confirmed by 2 devices (G1, X1)" in events[-1].reason


def test_a_spike_never_raises_the_site():
    reg = _registry()
    f = SiteFusion(reg)
    info = reg.channel("S", "X1", "d")
    events = []
    for i in range(300):
        t = T0 + i * 600.0
        v = 5000.0 if i == 250 else 0.01 * i  # one absurd jump
        events += f.update_all(info, t, v)
    assert f.level("S") <= 1 and not [e for e in events if e.level >= 2]
    assert f.quality.get("spike", 0) + f.quality.get("range", 0) >= 1


def test_snapshot_and_restore_mid_stream_gives_the_same_events():
    reg = _registry()
    whole = SiteFusion(reg)
    devices = [("X1", "d"), ("G1", "e"), ("G2", "e")]
    a = _ramp(whole, reg, devices, 150.0, T0, 400)

    first = SiteFusion(reg)
    b = _ramp(first, reg, devices, 150.0, T0, 230)
    state = json.loads(json.dumps(first.snapshot()))
    second = SiteFusion(reg)
    second.restore(state)
    b += _ramp(second, reg, devices, 150.0, T0 + 230 * 600.0, 170)
    assert [(e.t, e.level, e.previous, e.reason) for e in a] == [(e.t, e.level, e.previous, e.reason) for e in b]
    assert second.level("S") == whole.level("S") == 4


def _voight_extensometer(fusion, reg):
    """One extensometer (0.1 mm noise) on an α = 2 failure; the site's events up to 20 h before."""
    import numpy as np

    from geowarn.simulators.slope import VoightFailure

    slope = VoightFailure.reaching(T0, T0 + 10 * DAY, alpha=2.0)
    rng = np.random.default_rng(1)
    info = reg.channel("S", "X1", "d")
    events = []
    t = T0
    while t < slope.t_f - 20 * 3600.0:
        events += fusion.update_all(info, t, float(slope.displacement(t)) + 0.1 * float(rng.standard_normal()))
        t += 600.0
    return events


def test_a_clean_forecast_confirms_one_device():
    # A real approach to failure on a precise extensometer keeps to the inverse-velocity line
    # (R² close to 1): its forecast within 66 h stands in for the second device.
    reg = _registry(confirm_devices=2)
    f = SiteFusion(reg)
    events = _voight_extensometer(f, reg)
    assert f.level("S") >= 3
    assert any("confirmed by a failure forecast" in e.reason for e in events if e.level >= 3)


def test_a_forecast_below_the_r2_bar_confirms_nothing_and_says_why():
    # The same slope with the bar set above any real fit (R² 1 exactly: noisy data never get
    # there): the forecast still raises its channel to orange or above, the site stays at yellow.
    reg = _registry(confirm_devices=2, forecast_confirm_r2=1.0)
    f = SiteFusion(reg)
    events = _voight_extensometer(f, reg)
    assert f.level("S") == 2
    assert max(e.level for e in events) == 2
    assert f.snapshot()["sites"]["S|0"]["channels"]["X1/d"]["levels"]["forecast"] >= 3


def test_a_latched_level_the_new_policy_no_longer_has_still_comes_down():
    # A snapshot latched blue; the site's policy then dropped blue. The latch must go on
    # judging (down to 0, or up), not fail on the level it no longer knows.
    from geowarn.detectors.latch import LevelLatch

    old = LevelLatch([(1, 1.0), (2, 3.0), (3, 72.0), (4, 120.0)])
    assert old.update(0.0, 2.0) == 1
    new = LevelLatch([(2, 3.0), (3, 72.0), (4, 120.0)])
    new.restore(old.snapshot())
    assert new.update(10.0, 0.5) == 0
    assert new.update(20.0, 5.0) == 2


def test_a_forecast_snapshot_from_before_the_alpha_trend_restores():
    # Snapshots saved before the forecast kept its velocities since the onset ("trend_t",
    # "trend_v") must still restore: the daemon resumes from them after an upgrade.
    from geowarn.detectors.inverse_velocity import InverseVelocityDetector

    state = InverseVelocityDetector().snapshot()
    del state["trend_t"], state["trend_v"]
    d = InverseVelocityDetector()
    d.restore(state)
    assert d.snapshot()["trend_t"] == InverseVelocityDetector().snapshot()["trend_t"]
