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


def test_a_restore_builds_no_detector_until_a_channel_reads_and_then_continues_exactly():
    # A restart reads a whole fleet's saved state: each channel's guard and detectors are built
    # from their saved parts on its first reading, not at the restore (issue 17: a million
    # banks took minutes). Until then the channel saves exactly what it was restored from.
    reg = _registry()
    whole = SiteFusion(reg)
    devices = [("X1", "d"), ("G1", "e"), ("G2", "e")]
    _ramp(whole, reg, devices, 150.0, T0, 200)
    state = json.loads(json.dumps(whole.snapshot()))
    later = SiteFusion(reg)
    later.restore(state)
    channels = later._sites[("S", False)].channels
    assert all(ch.guard is None and ch.detectors == [] for ch in channels.values())
    assert json.loads(json.dumps(later.snapshot())) == state
    # One device reads: only its channel is built; the others still save their parts as restored.
    a = _ramp(whole, reg, [("X1", "d")], 150.0, T0 + 200 * 600.0, 50)
    b = _ramp(later, reg, [("X1", "d")], 150.0, T0 + 200 * 600.0, 50)
    assert channels["X1/d"].guard is not None and channels["G1/e"].guard is None
    assert [(e.t, e.level, e.reason) for e in a] == [(e.t, e.level, e.reason) for e in b]
    assert json.dumps(later.snapshot(), sort_keys=True) == json.dumps(whole.snapshot(), sort_keys=True)
    a = _ramp(whole, reg, devices, 150.0, T0 + 250 * 600.0, 150)
    b = _ramp(later, reg, devices, 150.0, T0 + 250 * 600.0, 150)
    assert [(e.t, e.level, e.reason) for e in a] == [(e.t, e.level, e.reason) for e in b]
    assert later.level("S") == whole.level("S") == 4
    assert json.dumps(later.snapshot(), sort_keys=True) == json.dumps(whole.snapshot(), sort_keys=True)


def test_a_restored_channel_drops_a_detector_its_new_policy_no_longer_gives_it():
    reg = _registry()
    f = SiteFusion(reg)
    _ramp(f, reg, [("X1", "d")], 150.0, T0, 200)
    state = json.loads(json.dumps(f.snapshot()))
    assert "velocity" in state["sites"]["S|0"]["channels"]["X1/d"]["levels"]
    calm = _registry(velocity_per_day={})  # the site's policy no longer judges velocity
    g = SiteFusion(calm)
    g.restore(state)
    _ramp(g, calm, [("X1", "d")], 150.0, T0 + 200 * 600.0, 3)
    chan = g.snapshot()["sites"]["S|0"]["channels"]["X1/d"]
    assert "velocity" not in chan["levels"] and "velocity" not in chan["verdicts"] and "velocity" not in chan["detectors"]
    assert "tangent" in chan["detectors"]


def test_a_saved_part_that_cannot_be_restored_starts_afresh_and_is_reported():
    # The registry changed the channel's kind (its guard now has other checks), or a row was
    # damaged: the channel's first reading after the restart must not raise (detection would
    # crash-loop on it); the part starts afresh and fusion lists it for the service to log.
    def registry(kind):
        ch = {"channel": "d", "kind": kind} | ({"unit": "kPa", "thresholds": {"yellow": 1000.0}} if kind == "stress" else {})
        return parse_registry({"sites": [{"site": "S", "name": "s", "admin": "420527", "lat": 30.0, "lon": 110.0,
                                          "devices": [{"device": "X", "channels": [ch]}]}]}, "<t>")

    stress, disp = registry("stress"), registry("displacement")
    f = SiteFusion(stress)
    for i in range(30):
        f.update_all(stress.channel("S", "X", "d"), T0 + 600 * i, 10.0 + 0.01 * i)
    g = SiteFusion(disp)
    g.restore(json.loads(json.dumps(f.snapshot())))
    g.update_all(disp.channel("S", "X", "d"), T0 + 600 * 31, 10.5)
    assert [(site, dev, ch, part) for site, dev, ch, part, _ in g.unreadable] == [("S", "X", "d", "guard")]

    reg = _registry()
    h = SiteFusion(reg)
    _ramp(h, reg, [("X1", "d")], 150.0, T0, 100)
    state = json.loads(json.dumps(h.snapshot()))
    state["sites"]["S|0"]["channels"]["X1/d"]["detectors"]["tangent"] = {"damaged": True}
    k = SiteFusion(reg)
    k.restore(state)
    _ramp(k, reg, [("X1", "d")], 150.0, T0 + 100 * 600.0, 1)
    assert [(part, error.split(":")[0]) for *_, part, error in k.unreadable] == [("tangent", "KeyError")]
    # The rate detectors share their windows: all of them started afresh (warming up, no level yet).
    assert "velocity" in state["sites"]["S|0"]["channels"]["X1/d"]["levels"]
    assert k.snapshot()["sites"]["S|0"]["channels"]["X1/d"]["levels"] == {}


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


# -- a confirmed level holds (issue 14, item 6) ---------------------------------------------------


class _Slope:
    """Displacement of each channel, moved on at a rate per day that can change mid-stream;
    GNSS readings carry 2 mm of noise (so a GNSS that stops moving is not a stuck value)."""

    def __init__(self, fusion, reg, seed=3):
        import numpy as np

        self.f, self.reg, self.t = fusion, reg, T0
        self.pos: dict[tuple[str, str], float] = {}
        self.rng = np.random.default_rng(seed)
        self.events = []

    def run(self, rates: dict[tuple[str, str], float], hours: float, step: float = 600.0):
        for _ in range(round(hours * 3600 / step)):
            self.t += step
            for (dev, ch), rate in rates.items():
                x = self.pos[(dev, ch)] = self.pos.get((dev, ch), 0.0) + rate * step / DAY
                noise = 2.0 * float(self.rng.standard_normal()) if dev.startswith("G") else 0.0
                self.events += self.f.update_all(self.reg.channel("S", dev, ch), self.t, x + noise)
        return self


def _confirmed_orange(**policy):
    # 90 mm/day is orange on the default velocity ladder (72-120); two devices confirm it.
    reg = _registry(confirm_devices=2, forecast_confirms_s=0.0, **policy)
    f = SiteFusion(reg)
    s = _Slope(f, reg).run({("X1", "d"): 90.0, ("G1", "e"): 90.0}, 18)
    assert f.level("S") == 3 and "confirmed by 2 devices (G1, X1)" in s.events[-1].reason
    return reg, f, s


def _channel_level(f, key):
    return f.snapshot()["sites"]["S|0"]["channels"][key]["level"]


def test_a_confirmed_orange_is_not_dropped_when_its_second_device_comes_down():
    # The GNSS stops moving; once its own hold has passed it is no longer at orange, but the
    # extensometer still is: the orange the two of them confirmed stays (it was never "only
    # one device"), and no event says otherwise.
    reg, f, s = _confirmed_orange()
    n = len(s.events)
    s.run({("X1", "d"): 90.0, ("G1", "e"): 0.0}, 24)
    assert _channel_level(f, "G1/e") < 3 <= _channel_level(f, "X1/d")
    assert f.level("S") == 3
    assert [e.level for e in s.events[n:]] == []


def test_a_red_on_one_device_after_a_confirmed_orange_is_held_at_orange_not_yellow():
    # The GNSS comes down first (as above), then the extensometer alone reaches red.
    reg, f, s = _confirmed_orange()
    n = len(s.events)
    s.run({("X1", "d"): 90.0, ("G1", "e"): 0.0}, 24)
    s.run({("X1", "d"): 200.0, ("G1", "e"): 0.0}, 12)
    assert _channel_level(f, "X1/d") == 4 and _channel_level(f, "G1/e") < 3
    assert f.level("S") == 3 and s.events[n:] == []


def test_a_confirmed_orange_held_across_a_restart():
    reg, f, s = _confirmed_orange()
    s.run({("X1", "d"): 90.0, ("G1", "e"): 0.0}, 2)  # the GNSS stops, still within its hold
    restored = SiteFusion(reg)
    restored.restore(json.loads(json.dumps(f.snapshot())))
    s.f = restored
    n = len(s.events)
    s.run({("X1", "d"): 90.0, ("G1", "e"): 0.0}, 24)
    assert _channel_level(restored, "G1/e") < 3
    assert restored.level("S") == 3 and s.events[n:] == []


def test_a_confirmed_orange_comes_down_after_its_hold_and_says_why_in_plain_words():
    # Both devices slow to 10 mm/day (yellow): after the velocity window and the 6 h hold the
    # site comes down, and the reason a duty officer reads starts with why.
    reg, f, s = _confirmed_orange()
    n = len(s.events)
    s.run({("X1", "d"): 10.0, ("G1", "e"): 10.0}, 24)
    down = [e for e in s.events[n:] if e.level < e.previous]
    assert [(e.previous, e.level) for e in down] == [(3, 2)]
    assert down[0].reason.startswith("back to yellow: no device above the orange threshold for 6 h"), down[0].reason
    # The episode is over: one device back at orange needs confirming again.
    n = len(s.events)
    s.run({("X1", "d"): 90.0, ("G1", "e"): 10.0}, 18)
    assert _channel_level(f, "X1/d") == 3 and f.level("S") == 2 and s.events[n:] == []
