"""Clocks can't blind a channel (issue 13, item 2).

One reading stamped ahead of the true time — anything the codec's 300 s future-skew allowance
lets in — used to make every true reading stamped before it "out of order": the quality guard
judges order against the last accepted time. A device draining a store-and-forward backlog (or
a feed published with backdated times, as the original report did) then had its whole backlog
set aside, and a slope moving 10 mm/day stayed at level 0, silently. Live, a reading stamped
ahead of its arrival is now held until the clock reaches its time; the devices whose readings
keep coming out of order or ahead get a ``clock`` health event once, and ``clock_ok`` once
their clock is right again.

Expected levels come from the default policy (DESIGN §5): velocity yellow from 3 mm/day,
orange from 72 mm/day; 10 mm/day is yellow (level 2), and nothing but a raise to yellow can
come from a steady 10 mm/day slope. The clock event's counts are worked out from the inputs:
a reading held for being early is one "ahead", a reading older than the last judged one of its
channel is one "out of order".
"""

from __future__ import annotations

import json

from geowarn.config.registry import parse_registry
from geowarn.detectors.fusion import CLOCK_TROUBLE_AT, CLOCK_WINDOW, MAX_HELD, SiteFusion

DAY = 86400.0
T0 = 1.7e9
STEP = 600.0
YELLOW = 2


def _registry():
    devices = [{"device": "X1", "channels": [{"channel": "d", "kind": "displacement"}]}]
    site = {"site": "S", "name": "s", "admin": "420527", "lat": 30.0, "lon": 110.0, "devices": devices}
    return parse_registry({"sites": [site]}, "<test>")


def _disp(t: float) -> float:
    return 10.0 * (t - T0) / DAY  # 10 mm/day


def _levels(events) -> list[int]:
    return [e.level for e in events if e.kind is None]


def _backlog(fusion, info, now: float, days: float = 3.0):
    """The device's store-and-forward backlog (or a feed backdated to end now): ``days`` of
    10-minute readings of a 10 mm/day slope, all published within a few seconds of ``now``."""
    events = []
    n = int(days * DAY / STEP)
    for i in range(n + 1):
        t = now - days * DAY + i * STEP
        events += fusion.update_all(info, t, _disp(t), arrived=now + 1.0 + i * 0.005)
    return events


def test_a_backlog_behind_one_reading_stamped_290_s_ahead_still_raises_yellow():
    reg = _registry()
    info = reg.channel("S", "X1", "d")
    now = T0 + 3 * DAY
    f = SiteFusion(reg)
    # The worst case: the early reading comes first, and every true reading after it is
    # stamped before it (a backlog, or a feed backdated to end at the true now).
    events = f.update_all(info, now + 290.0, _disp(now + 290.0), arrived=now)
    events += _backlog(f, info, now)
    assert YELLOW in _levels(events), f"the slope was blinded: {events}"
    assert f.quality.get("out_of_order", 0) == 0
    # The early reading is judged, in its place, once the clock reaches its time.
    assert f.next_deadline() == now + 290.0
    events += f.tick(now + 290.0)
    assert f.clock_health()["held"] == 0
    assert f.quality.get("out_of_order", 0) == 0
    assert f.level("S") == YELLOW


def test_a_device_whose_clock_runs_290_s_ahead_is_judged_late_not_never_and_reported_once():
    reg = _registry()
    info = reg.channel("S", "X1", "d")
    f = SiteFusion(reg)
    events = []
    # Every reading is stamped 290 s after it arrives; the judge's clock (its tick) runs on.
    n = int(2 * DAY / STEP)
    for i in range(n):
        arrived = T0 + i * STEP
        t = arrived + 290.0
        events += f.tick(arrived)
        events += f.update_all(info, t, _disp(t), arrived=arrived)
    events += f.tick(T0 + n * STEP)
    assert YELLOW in _levels(events)
    clock = [e for e in events if e.kind in ("clock", "clock_ok")]
    assert [e.kind for e in clock] == ["clock"]
    ev = clock[0]
    # Raised at the arrival of the CLOCK_TROUBLE_AT-th early reading, saying so.
    assert ev.t == T0 + (CLOCK_TROUBLE_AT - 1) * STEP
    assert ev.evidence["ahead"] == CLOCK_TROUBLE_AT and ev.evidence["out_of_order"] == 0
    assert ev.evidence["device"] == "X1" and ev.level == ev.previous
    assert ev.reason.startswith(f"X1: {CLOCK_TROUBLE_AT} of its last {CLOCK_TROUBLE_AT} readings")
    assert "clock may be wrong" in ev.reason and f"{CLOCK_TROUBLE_AT} stamped ahead of their arrival" in ev.reason
    # The clock is fixed: once CLOCK_WINDOW readings in a row came on time, one clock_ok.
    start = T0 + (n + 1) * STEP
    more = []
    for i in range(CLOCK_WINDOW + 10):
        t = start + i * STEP
        more += f.tick(t)
        more += f.update_all(info, t, _disp(t), arrived=t + 0.5)
    ok = [e for e in more if e.kind in ("clock", "clock_ok")]
    assert [e.kind for e in ok] == ["clock_ok"]
    # The window held CLOCK_WINDOW readings, the last early one among them, when it was
    # still in trouble: the event comes with the CLOCK_WINDOW-th on-time reading.
    assert ok[0].t == start + (CLOCK_WINDOW - 1) * STEP
    health = f.clock_health()
    assert health["devices"]["X1"]["total"]["ahead"] == n
    assert health["devices_in_trouble"] == 0


def test_replay_judges_in_event_time_as_before_and_reports_readings_out_of_order():
    reg = _registry()
    info = reg.channel("S", "X1", "d")
    now = T0 + 3 * DAY
    f = SiteFusion(reg)
    events = f.update_all(info, now + 290.0, _disp(now + 290.0))
    for i in range(10):
        t = now - 10 * STEP + i * STEP
        events += f.update_all(info, t, _disp(t))
    # Without arrival times nothing is held: each later reading is out of order, as it always was.
    assert f.quality["out_of_order"] == 10
    clock = [e for e in events if e.kind == "clock"]
    assert len(clock) == 1
    # The third reading out of order raises it, timed at the channel's last accepted time.
    assert clock[0].t == now + 290.0 and clock[0].evidence["out_of_order"] == CLOCK_TROUBLE_AT


def test_a_held_reading_survives_a_snapshot_and_is_judged_after_the_restore():
    reg = _registry()
    info = reg.channel("S", "X1", "d")
    now = T0 + 3 * DAY

    def run(split: bool):
        f = SiteFusion(reg)
        events = f.update_all(info, now + 290.0, _disp(now + 290.0), arrived=now)
        events += _backlog(f, info, now, days=1.0)
        if split:
            state = json.loads(json.dumps(f.snapshot()))
            f = SiteFusion(reg)
            f.restore(state)
            assert f.clock_health()["held"] == 1
        events += f.tick(now + 300.0)
        t = now + 600.0
        events += f.update_all(info, t, _disp(t), arrived=t + 1.0)
        return events, f

    whole, f1 = run(False)
    resumed, f2 = run(True)
    assert [(e.t, e.level, e.kind) for e in whole] == [(e.t, e.level, e.kind) for e in resumed]
    assert f2.snapshot() == f1.snapshot()
    # The held reading was judged after the restore: the channel's guard has passed its time.
    assert f2.snapshot()["held"] == []
    assert f2.quality.get("out_of_order", 0) == 0


def test_a_flood_of_early_readings_is_bounded_and_refuses_the_furthest_ahead():
    reg = _registry()
    info = reg.channel("S", "X1", "d")
    now = T0 + DAY
    f = SiteFusion(reg)
    _backlog(f, info, now - 10.0, days=1.0)
    # MAX_HELD + 4 readings, stamped from now+290 down to now+290-(MAX_HELD+3)·10, all
    # arriving at now: the four stamped furthest ahead are refused, the rest held.
    for k in range(MAX_HELD + 4):
        t = now + 290.0 - (MAX_HELD + 3 - k) * 10.0
        f.update_all(info, t, _disp(t), arrived=now)
    assert f.clock_health()["held"] == MAX_HELD
    assert f.quality["ahead_overflow"] == 4
    held_times = sorted(t for t, *_ in f._held)
    assert held_times[-1] == now + 290.0 - 4 * 10.0
    f.tick(now + 300.0)
    assert f.clock_health()["held"] == 0
    assert f.quality.get("out_of_order", 0) == 0
