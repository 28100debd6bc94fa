"""A sensor its device reports faulty raises no level (issue 15 item 4's guard).

The convention's status body S1_ZT_1 carries ``sensor_state`` per sensor: 0 healthy,
negative a fault (-2: CHANNEL_DATA_ERR; ../shared/DEVICES-CN.md, simulators/convention.py).
While a sensor is reported faulty its readings are stored but judged by nothing, it
confirms nothing, and every level change of its site names it; reported 0 again, it counts
again. Golden levels are the thresholds the tests set; the end-to-end test goes through a
real Mosquitto and a real daemon, killed (SIGKILL) and restarted in between.
"""

from __future__ import annotations

import json
import time

import pytest

from geowarn.config.registry import parse_registry
from geowarn.core.timefmt import rfc3339
from geowarn.detectors.fusion import SiteFusion

T0 = 1.7e9
THR = {"yellow": 1.0, "orange": 2.0, "red": 3.0}


def _registry(**policy):
    site = {
        "site": "S", "name": "s", "admin": "420527", "lat": 30.0, "lon": 110.0,
        "devices": [
            {"device": "A", "code": "CNA00000000000001", "channels": [
                {"channel": "mud", "kind": "mud_level", "source": "L3_NW_1", "thresholds": THR},
                {"channel": "seep", "kind": "seepage_pressure", "source": "L3_SY_1", "thresholds": {"yellow": 150.0, "orange": 200.0}},
            ]},
            {"device": "B", "channels": [{"channel": "mud", "kind": "mud_level", "thresholds": THR}]},
        ],
    }
    if policy:
        site["policy"] = policy
    return parse_registry({"sites": [site]}, "<test>")


def _read(f, reg, device, channel, t, v):
    return f.update_all(reg.channel("S", device, channel), t, v)


def test_a_faulty_sensor_cannot_raise_its_site_and_counts_again_once_healthy():
    reg = _registry(confirm_from_level=5)
    f = SiteFusion(reg)
    assert f.sensor_state("S", "A", {"L3_NW_1": -2, "L3_SY_1": 0}, T0) is True
    events = []
    for i in range(6):  # 2.5 m: orange, were it believed
        events += _read(f, reg, "A", "mud", T0 + 600 * (i + 1), 2.5)
    assert events == [] and f.level("S") == 0
    assert f.quality["sensor_fault"] == 6
    assert f.sensor_faults() == {"S/A/mud": {"sensor_state": -2.0, "since": T0}}
    # The healthy sensor of the same device still warns, and the change names the faulty one.
    (ev,) = _read(f, reg, "A", "seep", T0 + 4000, 160.0)
    assert (ev.level, ev.evidence["channel"]) == (2, "A/seep")
    assert f"A/mud: sensor reported faulty (sensor_state -2) since {rfc3339(T0)}, its readings raise no level" in ev.reason
    assert ev.evidence["sensor_faults"] == {"A/mud": {"sensor_state": -2.0, "since": T0, "level": 0}}
    # Another code keeps the fault's start; a status that does not name the sensor changes nothing.
    assert f.sensor_state("S", "A", {"L3_NW_1": "-3"}, T0 + 5000) is True
    assert f.sensor_state("S", "A", {"L1_LF_1": 0}, T0 + 5100) is False
    assert f.sensor_faults() == {"S/A/mud": {"sensor_state": -3.0, "since": T0}}
    # Healthy again: its next reading counts.
    assert f.sensor_state("S", "A", {"L3_NW_1": 0}, T0 + 6000) is True
    (ev,) = _read(f, reg, "A", "mud", T0 + 6600, 2.5)
    assert (ev.level, ev.evidence["channel"], ev.evidence["detector"]) == (3, "A/mud", "threshold")
    assert "sensor_faults" not in ev.evidence and f.sensor_faults() == {}


def test_a_faulty_sensor_confirms_nothing_and_holds_without_raising():
    # Default policy: orange needs two devices. B reads orange while faulty: A's orange is not
    # confirmed by it; once B is healthy and reads orange again, the site is orange.
    reg = _registry()
    f = SiteFusion(reg)
    f.sensor_state("S", "B", {"mud": -2}, T0)  # a native device names its channel
    events = _read(f, reg, "B", "mud", T0 + 600, 2.5) + _read(f, reg, "A", "mud", T0 + 700, 2.5)
    assert [e.level for e in events] == [2]  # A's orange, unconfirmed: yellow
    assert "not confirmed (only A)" in events[0].reason and "B/mud: sensor reported faulty" in events[0].reason
    f.sensor_state("S", "B", {"mud": 0}, T0 + 800)
    events = _read(f, reg, "B", "mud", T0 + 1200, 2.5)
    assert [e.level for e in events] == [3] and "orange confirmed by 2 devices (A, B)" in events[0].reason
    # Faulty now, at orange: the site is not lowered by the fault (no data never lowers a
    # level), and B's red is not believed.
    f.sensor_state("S", "B", {"mud": -2}, T0 + 1300)
    events = _read(f, reg, "B", "mud", T0 + 1800, 3.5) + _read(f, reg, "A", "mud", T0 + 1900, 3.5)
    assert events == [] and f.level("S") == 3


def test_the_fault_survives_a_snapshot_and_unknown_codes_change_nothing():
    reg = _registry(confirm_from_level=5)
    f = SiteFusion(reg)
    f.sensor_state("S", "A", {"L3_NW_1": -2}, T0)
    g = SiteFusion(reg)
    g.restore(json.loads(json.dumps(f.snapshot())))
    assert _read(g, reg, "A", "mud", T0 + 600, 2.5) == [] and g.level("S") == 0
    # Positive, boolean or non-numeric codes have no documented meaning: the state stands.
    for code in (2, True, "ERR", None, float("nan")):
        assert g.sensor_state("S", "A", {"L3_NW_1": code}, T0 + 700) is False
    assert g.sensor_faults() == {"S/A/mud": {"sensor_state": -2.0, "since": T0}}
    assert g.sensor_state("S", "A", "not a dict", T0 + 800) is False


# -- end to end: status through a real broker into the daemon, across a SIGKILL ---------------

CODE = "CNGUARD0000000001"
E2E_T0 = int(time.time()) - 2 * 86400

SITES = f"""
[[sites]]
site = "NW"
name = "泥石流沟 gully"
hazard = "debris_flow"
admin = "420527"
lat = 30.9
lon = 110.6
policy = {{ confirm_from_level = 5 }}

[[sites.devices]]
device = "NW-U1"
code = "{CODE}"
channels = [
  {{ channel = "mud", kind = "mud_level", source = "L3_NW_1", thresholds = {{ yellow = 1.0, orange = 2.0 }} }},
  {{ channel = "seep", kind = "seepage_pressure", source = "L3_SY_1", thresholds = {{ yellow = 150.0 }} }},
]
"""


def _z(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def _body(channels: dict) -> bytes:
    return json.dumps({CODE: channels}).encode()


@pytest.mark.slow
def test_a_sensor_reported_faulty_stays_unheard_across_a_crash_until_it_reports_healthy(tmp_path, mosquitto):
    from daemonproc import Daemon, publisher

    sites = tmp_path / "sites.toml"
    sites.write_text(SITES, encoding="utf-8")
    d = Daemon(tmp_path / "data", mosquitto.url, extra_env={"GEOWARN_SITES": str(sites), "GEOWARN_CN_TOPICS": "$dp"})
    alerts = tmp_path / "data" / "alerts.jsonl"

    def events() -> list[dict]:
        return [json.loads(line) for line in alerts.read_text().splitlines()] if alerts.exists() else []

    t0 = E2E_T0
    d.start()
    pub = publisher(mosquitto.url)
    try:
        # Status and an orange mud level in one body: the status is taken first.
        status = {_z(t0): {"battery_volt": 12.5, "sensor_state": {"L3_NW_1": -2, "L3_SY_1": 0}}}
        pub.publish("$dp", _body({"S1_ZT_1": status, "L3_NW_1": {_z(t0): 2.5}}), qos=1).wait_for_publish(10)
        pub.publish("$dp", _body({"L3_NW_1": {_z(t0 + 600): 2.6}}), qos=1).wait_for_publish(10)
        d.wait_until(lambda: d.count("readings") == 2 and d.count("device_status") == 1, message="2 readings and the status")
        d.kill()  # whatever detection had judged or saved
        d.start()
        pub.publish("$dp", _body({"L3_NW_1": {_z(t0 + 1200): 2.7}}), qos=1).wait_for_publish(10)
        # The healthy sensor beside it: its warning comes after the mud readings were judged.
        pub.publish("$dp", _body({"L3_SY_1": {_z(t0 + 1500): 160.0}}), qos=1).wait_for_publish(10)
        d.wait_until(lambda: len(events()) >= 1, timeout=60, message="the seepage warning")
        (ev,) = events()
        assert (ev["site"], ev["level"], ev["evidence"]["channel"]) == ("NW", 2, "NW-U1/seep")
        assert f"NW-U1/mud: sensor reported faulty (sensor_state -2) since {rfc3339(float(t0))}" in ev["reason"]
        assert ev["evidence"]["sensor_faults"]["NW-U1/mud"]["sensor_state"] == -2
        # Every mud reading is stored, faulty or not.
        assert [v for (_, _, ch, _, v) in d.readings() if ch == "mud"] == [2.5, 2.6, 2.7]
        # Healthy again: the next orange mud level counts.
        pub.publish("$dp", _body({"S1_ZT_1": {_z(t0 + 1800): {"sensor_state": {"L3_NW_1": 0, "L3_SY_1": 0}}}}), qos=1).wait_for_publish(10)
        pub.publish("$dp", _body({"L3_NW_1": {_z(t0 + 2400): 2.5}}), qos=1).wait_for_publish(10)
        d.wait_until(lambda: len(events()) >= 2, timeout=60, message="the mud level's orange")
        ev = events()[1]
        assert (ev["level"], ev["evidence"]["channel"], ev["evidence"]["detector"]) == (3, "NW-U1/mud", "threshold")
        assert "sensor_faults" not in ev["evidence"]
        assert d.terminate() < 10.0
    finally:
        pub.loop_stop()
        d.close()


def test_the_chinese_evidence_names_the_faulty_sensor():
    from geowarn.alerts.texts import evidence_zh

    reg = _registry(confirm_from_level=5)
    f = SiteFusion(reg)
    f.sensor_state("S", "A", {"L3_NW_1": -2}, T0)
    (ev,) = _read(f, reg, "A", "seep", T0 + 600, 160.0)
    zh = evidence_zh(ev.reason)
    assert zh.startswith(f"A/seep 监测值 160.00 kPa，达到黄色阈值 150 kPa；A/mud 设备报告传感器故障（sensor_state -2，自 {rfc3339(T0)} 起），其数据不参与升级。")


def test_statuses_beyond_one_page_still_come_before_the_readings_after_them(tmp_path, monkeypatch):
    """Detection reads statuses a page at a time (STATUS_BATCH). When a page is used up before
    the readings it stands among, the readings after it must wait for the next page: a fault
    reported in the third status of a batch must keep the reading after it out, even with a page
    of two (before, that reading was judged first)."""
    from pathlib import Path

    import geowarn.service.detection as detection
    from geowarn.config.settings import example_path, load_all
    from geowarn.core.clock import WallClock
    from geowarn.ingest.journal import Journal

    monkeypatch.setattr(detection, "STATUS_BATCH", 2)
    sites = Path(__file__).resolve().parents[1] / "simulators" / "scenarios" / "cn_sites.toml"
    loaded = load_all(None, sites_path=sites, roster_path=example_path("roster.example.toml"), find_file=False)
    loaded.settings = loaded.settings.model_copy(update={"data_dir": tmp_path / "data"})  # its alerts.jsonl, not the cwd's
    j = Journal(tmp_path / "journal.sqlite")
    ids = {(c.device, c.channel): i for c, i in j.series_ids(loaded.registry).items()}
    crack, east = ids[("SP-U1", "crack")], ids[("SP-G1", "disp_e")]
    t0 = 1_764_400_000_000
    healthy = json.dumps({"sensor_state": {"L1_GP_1": 0}})
    faulty = json.dumps({"sensor_state": {"L1_LF_1": -2}})
    # Detection running first (a start reads each device's newest status), then the batch:
    # r1 (east), three statuses (two of SP-G1, healthy; SP-U1's crack faulty), r2 (crack).
    det = detection.Detection(loaded, j, lambda *a, **k: None, WallClock())
    j.append([(east, t0, 1.0, 0, t0), (crack, t0 + 1000, 500.0, 0, t0 + 1000)],
             statuses=[("SP", "SP-G1", t0, t0, healthy, 1), ("SP", "SP-G1", t0, t0, healthy, 1), ("SP", "SP-U1", t0, t0, faulty, 1)])
    while det._consume():
        pass
    assert det.fusion.quality.get("sensor_fault") == 1, det.fusion.quality
    assert det.position == j.last_id() and det.status_position == 3
    j.close()
