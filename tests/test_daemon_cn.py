"""A station of the national geohazard IoT convention against a real Mosquitto and a real
daemon (issue 15, "In"): device topic and $dp, framed and unframed, frame types 1 and 2, a
Beijing-time clock; type 3 and 4 frames dead-lettered with their reasons; S1_ZT_1 status kept.

Golden values are what the test publishes; times are worked out from T0 by hand (+8 h for the
Beijing clock), never read back from the code under test.
"""

from __future__ import annotations

import json
import time

import pytest

from daemonproc import Daemon, Recorder, publisher

pytestmark = pytest.mark.slow

CODE = "SK11E80D1307426AZ"
# Whole seconds, two days back: in the past, and well inside the future-skew check.
T0 = int(time.time()) - 2 * 86400

SITES = f"""
[[sites]]
site = "SP"
name = "树坪滑坡 Shuping landslide"
admin = "420527"
lat = 30.99
lon = 110.61

[[sites.devices]]
device = "SP-U1"
code = "{CODE}"
clock_offset_s = 28800
ignore = ["L1_QJ_1.AZI", "L1_QJ_1.Y", "L1_QJ_1.Z", "L1_QJ_1.angle"]
channels = [
  {{ channel = "crack", kind = "crack", source = "L1_LF_1" }},
  {{ channel = "tilt_x", kind = "tilt", unit = "deg", source = "L1_QJ_1.X" }},
  {{ channel = "rain", kind = "rain", source = "L3_YL_1.value" }},
]
"""


def beijing_z(t: int) -> str:
    """The firmware's Beijing wall time written with a Z, as the misconfigured clock does."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t + 8 * 3600))


def body(channels: dict) -> bytes:
    return json.dumps({CODE: channels}).encode()


def frame(kind: int, payload: bytes) -> bytes:
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


def test_a_national_convention_station_reaches_the_journal(tmp_path, mosquitto):
    sites = tmp_path / "sites.toml"
    sites.write_text(SITES, encoding="utf-8")
    d = Daemon(tmp_path / "data", mosquitto.url, extra_env={
        "GEOWARN_SITES": str(sites),
        "GEOWARN_CN_TOPICS": "$dp,/sys/+/{code}/thing/property/post",
    })
    d.start()
    dead = Recorder(mosquitto.url, ["geowarn/deadletter"])
    pub = publisher(mosquitto.url)
    try:
        before_ms = int(time.time() * 1000)
        msgs = [
            # unframed, time layer, on $dp (the first row, with a Beijing clock)
            ("$dp", body({"L1_LF_1": {beijing_z(T0): {"value": 0.0305}}})),
            # framed type 2 on the device's own topic
            ("geowarn/SP/SP-U1/data", frame(2, body({"L1_LF_1": {beijing_z(T0 + 600): {"value": 0.0412}}}))),
            # unframed on the device topic, a comma-separated tilt (AZI never a reading)
            ("geowarn/SP/SP-U1/data", body({"L1_QJ_1": {beijing_z(T0): "-0.0376,-0.0567,-0.0292,83.0074,-8.6772"}})),
            # framed type 2 on $dp, a numeric string
            ("$dp", frame(2, body({"L3_YL_1": {beijing_z(T0): {"value": "1.6"}}}))),
            # framed type 1 (no time layer: the receive time) on a vendor topic naming the code
            (f"/sys/pk1/{CODE}/thing/property/post", frame(1, body({"L3_YL_1": {"value": 0.4}}))),
            # status beside nothing else, on $dp
            ("$dp", body({"S1_ZT_1": {beijing_z(T0): {"battery_volt": 12.6, "solar_volt": "18.2", "temp": 21.5, "signal_4g": -71,
                                                      "sw_version": "V2.3.1", "sound_state": 0, "sensor_state": {"L1_LF_1": 0}, "vendor_x": 7}}})),
            # files and firmware are not readings
            ("$dp", frame(3, b"photo.jpg\x00\xff\xd8\xff\xe0")),
            ("geowarn/SP/SP-U1/data", frame(4, b"\x00\x01firmware-block")),
        ]
        for topic, payload in msgs:
            pub.publish(topic, payload, qos=1).wait_for_publish(10)
        d.wait_until(lambda: d.count("readings") >= 5 and d.count("deadletters") >= 2 and d.count("device_status") >= 1,
                     message="5 readings, 2 dead letters and a status")
        after_ms = int(time.time() * 1000)
        rows = d.readings()
        received = [r for r in rows if r[2] == "rain" and r[4] == 0.4]
        assert len(received) == 1 and before_ms - 1000 <= received[0][3] <= after_ms  # the receive time
        assert [r for r in rows if r not in received] == [
            ("SP", "SP-U1", "crack", T0 * 1000, 0.0305),
            ("SP", "SP-U1", "crack", (T0 + 600) * 1000, 0.0412),
            ("SP", "SP-U1", "rain", T0 * 1000, 1.6),
            ("SP", "SP-U1", "tilt_x", T0 * 1000, -0.0376),
        ]
        reasons = sorted(r for (r,) in d.query("SELECT reason FROM deadletters"))
        assert reasons == ["cn_file", "cn_firmware"]
        got = sorted((g["reason"], g["topic"]) for g in (json.loads(p) for _, p, _ in dead.take(2)))
        assert got == [("cn_file", "$dp"), ("cn_firmware", "geowarn/SP/SP-U1/data")]
        ((site, device, t_ms, status),) = d.query("SELECT site, device, t_ms, status FROM device_status")
        assert (site, device, t_ms) == ("SP", "SP-U1", T0 * 1000)
        assert json.loads(status) == {"battery_v": 12.6, "solar_v": 18.2, "temp_c": 21.5, "signal_4g": -71, "fw": "V2.3.1",
                                      "siren_state": 0, "sensor_state": {"L1_LF_1": 0}, "unknown": {"vendor_x": 7}, "t": float(T0)}
        assert d.terminate() < 5.0
    finally:
        pub.loop_stop()
        dead.close()
        d.close()
