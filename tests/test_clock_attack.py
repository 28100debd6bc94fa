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
import time

import pytest

from geowarn.config.registry import parse_registry
from geowarn.detectors.fusion import CLOCK_EVENT_EVERY_S, CLOCK_TROUBLE_AT, CLOCK_WINDOW, SiteFusion, held_limit

DAY = 86400.0
T0 = 1.7e9
STEP = 600.0
YELLOW = 2


def _registry(interval_s: float = STEP):
    devices = [{"device": "X1", "channels": [{"channel": "d", "kind": "displacement", "interval_s": interval_s}]}]
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
    limit = held_limit(info.interval_s)
    assert limit == 16  # a 10-minute channel: one early reading at a time is all a clock needs
    # limit + 4 readings, stamped from now+290 down to now+290-(limit+3)·10, all
    # arriving at now: the four stamped furthest ahead are refused, the rest held.
    for k in range(limit + 4):
        t = now + 290.0 - (limit + 3 - k) * 10.0
        f.update_all(info, t, _disp(t), arrived=now)
    assert f.clock_health()["held"] == limit
    assert f.quality["ahead_overflow"] == 4
    held_times = sorted(t for t, *_ in f._held)
    assert held_times[-1] == now + 290.0 - 4 * 10.0
    f.tick(now + 300.0)
    assert f.clock_health()["held"] == 0
    assert f.quality.get("out_of_order", 0) == 0


def test_a_fast_reporting_channel_whose_clock_is_299_s_ahead_loses_no_reading():
    """Every 10 s, 299 s fast: 30 readings wait at any moment, and each is judged when its
    time comes; the bound follows the channel's interval (a review found 47 % refused)."""
    reg = _registry(10.0)
    info = reg.channel("S", "X1", "d")
    assert held_limit(10.0) >= 300 / 10
    f = SiteFusion(reg)
    now = T0 + DAY
    for i in range(360):  # an hour
        arrived = now + 10.0 * i
        t = arrived + 299.0
        f.update_all(info, t, _disp(t), arrived=arrived)
    assert f.quality.get("ahead_overflow", 0) == 0
    assert f.clock_health()["held"] == 30
    f.tick(now + 3600 + 300)
    assert f.clock_health()["held"] == 0 and f.quality.get("out_of_order", 0) == 0


def test_drill_and_real_early_readings_are_held_apart_and_never_stop_judging():
    """A drill's held readings and the real channel's are counted apart; a review crashed the
    detection worker for good (max() of nothing) by filling one with the other's readings."""
    reg = _registry()
    info = reg.channel("S", "X1", "d")
    f = SiteFusion(reg)
    now = T0 + DAY
    _backlog(f, info, now - 10.0, days=1.0)
    limit = held_limit(info.interval_s)
    for k in range(limit):  # the drill's channel full
        t = now + 200.0 + k
        f.update_all(info, t, _disp(t), exercise=True, arrived=now)
    for k in range(2 * limit):  # then the real one, stamped closer
        t = now + 10.0 + k
        f.update_all(info, t, _disp(t), arrived=now)
    f.update_all(info, now + 60.0, _disp(now + 60.0), exercise=True, arrived=now + 1.0)  # crashed here
    held = f._held
    real = sum(1 for e in held if not e[4])
    drill = sum(1 for e in held if e[4])
    assert real == limit and drill == limit  # each bounded by its own count, neither evicted the other
    assert all(ch.held >= 0 for st in f._sites.values() for ch in st.channels.values())
    f.tick(now + 400.0)
    assert f.clock_health()["held"] == 0


def test_a_logger_a_few_seconds_fast_is_held_those_seconds_but_not_called_a_wrong_clock():
    reg = _registry()
    info = reg.channel("S", "X1", "d")
    f = SiteFusion(reg)
    now = T0 + DAY
    events = []
    for i in range(200):
        arrived = now + STEP * i
        t = arrived + 3.0
        events += f.update_all(info, t, _disp(t), arrived=arrived)
    assert not [e for e in events if e.kind in ("clock", "clock_ok")]
    assert f.clock_health()["devices_in_trouble"] == 0


def test_a_device_flapping_around_the_threshold_makes_at_most_two_clock_events_an_hour():
    """3 readings out of order, then 50 in order, over and over: one message of 10,000 such
    readings made ~380 events (each an fsynced alert-log line and a retained MQTT message)."""
    reg = _registry()
    info = reg.channel("S", "X1", "d")
    f = SiteFusion(reg)
    events = []
    t = T0
    step = 6.0  # 10,600 readings over ~17.7 h of event time
    for cycle in range(200):
        for _ in range(CLOCK_TROUBLE_AT):
            events += f.update_all(info, t - 100.0, 0.0)  # older than the last: out of order
        for _ in range(CLOCK_WINDOW):
            t += step
            events += f.update_all(info, t, 0.0)
    clock = [e for e in events if e.kind in ("clock", "clock_ok")]
    hours = (t - T0) / 3600.0
    assert 2 <= len(clock) <= 2 * (hours * 3600 / CLOCK_EVENT_EVERY_S + 1)
    raised = [e.t for e in clock if e.kind == "clock"]
    assert all(b - a >= CLOCK_EVENT_EVERY_S for a, b in zip(raised, raised[1:]))


# -- end to end: a real daemon on a real Mosquitto --------------------------------------------


def _publish(pub, seq: int, t: float, v: float) -> None:
    doc = {"v": 1, "device": "BSH-EXT1", "seq": seq, "readings": [{"ch": "disp", "t": t, "v": v}]}
    pub.publish("geowarn/BSH/BSH-EXT1/data", json.dumps(doc).encode(), qos=1).wait_for_publish(10)


def _alert_events(data) -> list[dict]:
    path = data / "alerts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_the_daemon_raises_yellow_behind_an_early_reading_and_reports_the_clock(tmp_path, mosquitto):
    """One reading of BSH's extensometer stamped now+290 s, then its store-and-forward backlog:
    12 h of a 10 mm/day slope ending now (73 readings, published in a few seconds). Before the
    fix the whole backlog was out of order and BSH stayed at level 0. Then the device's clock
    stays ahead: three more readings stamped 290 s ahead. Its last CLOCK_WINDOW = 50 readings
    are then 47 of the backlog and those 3 (the first early one has left the window): 3 wrong
    in time, CLOCK_TROUBLE_AT, and the clock event reaches the alert log, the console's API and
    /metrics, where 4 readings ahead are counted in all."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from daemonproc import Daemon, publisher
    from services import free_port
    from test_api import create_token, wait_for

    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    daemon = Daemon(data, mosquitto.url, extra_env={"GEOWARN_HTTP": f"127.0.0.1:{port}", "GEOWARN_SNAPSHOT_INTERVAL_S": "1"})
    token = create_token(data, "county", "420527", "zigui-duty")
    base = f"http://127.0.0.1:{port}"
    daemon.start()
    pub = publisher(mosquitto.url, client_id="clock-attack")
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    try:
        wait_for(lambda: httpx.get(base + "/healthz", timeout=5).status_code == 200, 20, "the API", daemon)
        now = float(int(time.time()))
        start = now - 72 * 600.0
        rate = 10.0 / DAY  # mm per second

        _publish(pub, 0, now + 290.0, rate * (now + 290.0 - start))
        for i in range(73):
            t = start + i * 600.0
            _publish(pub, 1 + i, t, rate * (t - start))
        daemon.wait_until(lambda: daemon.count() == 74, 30, "74 readings stored")

        def yellow():
            return [e for e in _alert_events(data) if e["site"] == "BSH" and e["kind"] == "raise" and e["level"] == YELLOW]

        [raised] = wait_for(yellow, 60, "BSH raised to yellow", daemon)
        assert raised["evidence"]["channel"] == "BSH-EXT1/disp"
        assert not [e for e in _alert_events(data) if e["kind"] == "clock"]  # one early reading: not yet a pattern

        # The device's clock stays ahead: its next readings, a second apart, 291 s and more
        # ahead of the true now (each a time of its own, or the store would take it for a repeat).
        for k in range(3):
            t = now + 291.0 + k
            _publish(pub, 74 + k, t, rate * (t - start))
        daemon.wait_until(lambda: daemon.count() == 77, 30, "77 readings stored")

        def clock_events():
            return [e for e in _alert_events(data) if e["kind"] == "clock"]

        [ev] = wait_for(clock_events, 30, "the clock event in the alert log", daemon)
        assert ev["site"] == "BSH" and ev["evidence"]["device"] == "BSH-EXT1"
        assert (ev["evidence"]["ahead"], ev["evidence"]["out_of_order"], ev["evidence"]["readings"]) == (3, 0, 50)
        assert ev["reason"].startswith("BSH-EXT1: 3 of its last 50 readings") and "clock may be wrong" in ev["reason"]
        assert ev["level"] == ev["previous_level"] == YELLOW  # a clock event changes no level

        def in_api():
            doc = api.get("/api/clock").json()
            return doc if doc["devices_in_trouble"] == 1 else None

        doc = wait_for(in_api, 30, "BSH-EXT1 in /api/clock", daemon)
        [dev] = doc["devices"]
        assert dev["device"] == "BSH-EXT1" and dev["trouble"] is True
        assert dev["total"] == {"out_of_order": 0, "ahead": 4, "conflict": 0}
        assert dev["recent"] == {"out_of_order": 0, "ahead": 3, "conflict": 0}
        site = api.get("/api/sites/BSH").json()
        clocks = {d["device"]: d["clock"] for d in site["devices"]}
        assert clocks["BSH-EXT1"]["trouble"] is True
        assert all(c is None for d, c in clocks.items() if d != "BSH-EXT1")
        # Another county's token does not see Zigui's devices.
        other = create_token(data, "county", "420526", "xingshan-duty")
        assert httpx.get(base + "/api/clock", headers={"Authorization": f"Bearer {other}"}, timeout=30).json()["devices"] == []

        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(httpx.get(base + "/metrics", timeout=30).text)
            for s in fam.samples
        }
        assert samples[("geowarn_devices_clock_trouble", ())] == 1.0
        assert samples[("geowarn_clock_faults_total", (("kind", "ahead"),))] == 4.0
        assert samples[("geowarn_clock_faults_total", (("kind", "out_of_order"),))] == 0.0
        assert samples[("geowarn_readings_held", ())] >= 3.0  # the three just sent wait for their time
        assert "BSH-EXT1" not in httpx.get(base + "/metrics", timeout=30).text  # no label per device
        daemon.terminate()
    finally:
        pub.disconnect()
        pub.loop_stop()
        api.close()
        daemon.close()


def test_a_zero_report_names_the_units_devices_whose_clock_looks_wrong_and_no_others():
    from geowarn.alerts.zero_reports import with_clock_health

    reg = _registry()  # site S in county 420527 (Zigui), city 420500 (Yichang)
    plain = {"readings": 7, "devices": 1, "devices_online": 1}

    def stats(admin, since, until):
        return dict(plain)

    doc = {"devices": {"X1": {"site": "S", "trouble": True}, "GONE": {"site": "NOWHERE", "trouble": True}}}
    figures = with_clock_health(stats, reg, lambda: doc)
    assert figures("420527", 0.0, DAY) == {**plain, "devices_clock_trouble": 1, "clock_trouble": ["X1"]}
    assert figures("420500", 0.0, DAY) == {**plain, "devices_clock_trouble": 1, "clock_trouble": ["X1"]}
    assert figures("420526", 0.0, DAY) == plain  # Xingshan: not its device
    # A clock that recovered, or nothing saved yet: the report is as it always was.
    assert with_clock_health(stats, reg, lambda: {"devices": {"X1": {"site": "S", "trouble": False}}})("420527", 0.0, DAY) == plain
    assert with_clock_health(stats, reg, lambda: None)("420527", 0.0, DAY) == plain


@pytest.mark.slow
def test_a_held_reading_survives_a_killed_daemon_and_is_judged_when_its_time_comes(tmp_path, mosquitto):
    """A reading stamped 20 s ahead is held; the daemon is SIGKILLed while it waits. After the
    restart it is still waiting (not lost, not judged early), and once its time has come the
    channel's guard has judged it, with nothing out of order: a reading stored never vanishes
    from judgment."""
    from daemonproc import Daemon, publisher

    data = tmp_path / "data"
    daemon = Daemon(data, mosquitto.url, extra_env={"GEOWARN_HTTP": "off", "GEOWARN_SNAPSHOT_INTERVAL_S": "1"})
    daemon.start()
    pub = publisher(mosquitto.url, client_id="clock-restart")

    def state(key):
        rows = daemon.query("SELECT value FROM state WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    from geowarn.ingest.journal import JournalReader
    from geowarn.service.detection import saved_state

    def channel():
        snap = saved_state(JournalReader(data / "journal.sqlite"))
        return None if snap is None else snap["state"]["sites"].get("BSH|0", {}).get("channels", {}).get("BSH-EXT1/disp")

    try:
        now = float(int(time.time()))
        _publish(pub, 0, now - 600.0, 1.0)
        _publish(pub, 1, now + 20.0, 1.0)
        daemon.wait_until(lambda: (state("detection.clock_health") or {}).get("held") == 1 and channel() is not None, 15, "the early reading held, in a snapshot")
        assert channel()["guard"]["clock"]["t"] == now - 600.0
        daemon.kill()
        daemon.start()
        assert (state("detection.clock_health") or {}).get("held") == 1, "the held reading was lost in the restart"
        assert time.time() < now + 20.0, "the test was too slow to see the reading still held"
        daemon.wait_until(lambda: (channel() or {}).get("guard", {}).get("clock", {}).get("t") == now + 20.0, 40, "the held reading judged after its time")
        snap = saved_state(JournalReader(data / "journal.sqlite"))["state"]
        assert snap["held"] == [] and snap["quality"].get("out_of_order", 0) == 0
        daemon.terminate()
    finally:
        pub.disconnect()
        pub.loop_stop()
        daemon.close()
