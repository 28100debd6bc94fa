"""The kinds of China's universal devices (issue 15 item 3): deep displacement, acceleration,
vibration, stress / earth pressure, mud level, seepage pressure, soil temperature.

Units are the convention's (../shared/DEVICES-CN.md, channel table: L1_SW mm, L1_JS mg, L1_ZD
amplitude mm, L2_YL kN, L3_NW m, L3_SY kPa, L3_TW °C). Golden levels come from the thresholds
the test sets and the rates it makes, worked out by hand; the end-to-end test publishes
through a real Mosquitto into a real daemon and reads back its journal and alerts.jsonl.
"""

from __future__ import annotations

import json
import math
import time

import pytest

from geowarn.config.errors import ConfigError
from geowarn.config.registry import Kind, parse_registry
from geowarn.detectors.fusion import SiteFusion, detectors_for
from geowarn.ingest.codecs_cn import CnCodec

T0 = 1.7e9
DAY = 86400.0


def _site(site: str, devices: list[dict], **policy) -> dict:
    doc = {"site": site, "name": site, "admin": "420527", "lat": 30.0, "lon": 110.0, "devices": devices}
    if policy:
        doc["policy"] = policy
    return doc


def _one(channels: list[dict], code: str = "CN0000000000000001", **device) -> object:
    return parse_registry({"sites": [_site("S", [{"device": "D", "code": code, "channels": channels, **device}])]}, "<test>")


# -- the registry -------------------------------------------------------------------------------


def test_each_new_kind_takes_the_unit_its_convention_channel_sends():
    reg = _one([
        {"channel": "deep", "kind": "deep_displacement", "source": "L1_SW_1.dispsX"},
        {"channel": "acc", "kind": "acceleration", "source": "L1_JS_1.gX"},
        {"channel": "vib", "kind": "vibration", "source": "L1_ZD_1.value"},
        {"channel": "stress", "kind": "stress", "source": "L2_YL_1"},
        {"channel": "mud", "kind": "mud_level", "source": "L3_NW_1"},
        {"channel": "seep", "kind": "seepage_pressure", "source": "L3_SY_1"},
        {"channel": "soil_t", "kind": "soil_temperature", "source": "L3_TW_1"},
    ])
    units = {c: reg.channel("S", "D", c).unit for c in ("deep", "acc", "vib", "stress", "mud", "seep", "soil_t")}
    # DEVICES-CN.md's channel table, column "unit" ("degC" for °C, ASCII for TOML and topics).
    assert units == {"deep": "mm", "acc": "mg", "vib": "mm", "stress": "kN", "mud": "m", "seep": "kPa", "soil_t": "degC"}


@pytest.mark.parametrize(
    "channel, words",
    [
        ({"channel": "x", "kind": "rain", "source": "L3_NW_1"}, "L3_NW, which measures mud_level, not rain"),
        ({"channel": "x", "kind": "displacement", "source": "L1_JS_1.gX"}, "measures acceleration, not displacement"),
        ({"channel": "x", "kind": "groundwater", "source": "L3_SY_1"}, "pore_pressure or seepage_pressure, not groundwater"),
        ({"channel": "x", "kind": "acceleration", "unit": "g", "source": "L1_JS_1.gX"}, "method L1_JS sends mg"),
        ({"channel": "x", "kind": "tilt", "source": "L1_QJ_1.AZI"}, "azimuth"),
        ({"channel": "x", "kind": "soil_temperature", "unit": "K"}, "not a unit of kind soil_temperature"),
    ],
)
def test_a_channel_that_misreads_its_source_stops_the_start_naming_the_key(channel, words):
    with pytest.raises(ConfigError) as exc:
        _one([channel])
    text = str(exc.value)
    assert words in text and "channels[0]" in text


def test_each_kind_gets_the_detectors_it_can_be_judged_by():
    thr = {"yellow": 1.0, "orange": 2.0}
    reg = _one([
        {"channel": "deep", "kind": "deep_displacement"},
        {"channel": "mud", "kind": "mud_level", "thresholds": thr},
        {"channel": "seep", "kind": "seepage_pressure"},
        {"channel": "acc", "kind": "acceleration", "thresholds": thr},
        {"channel": "vib", "kind": "vibration"},
        {"channel": "stress", "kind": "stress", "thresholds": thr},
        {"channel": "soil_t", "kind": "soil_temperature"},
    ])
    names = {c: [n for n, _ in detectors_for(reg.channel("S", "D", c), reg)] for c in ("deep", "mud", "seep", "acc", "vib", "stress", "soil_t")}
    assert names == {
        "deep": ["windows", "velocity", "tangent", "forecast"],  # displacement-like
        "mud": ["threshold", "rise"],
        "seep": ["rise"],
        "acc": ["threshold"],  # a peak: its thresholds only
        "vib": [],  # no thresholds set: stored and quality-checked, never a level
        "stress": ["threshold"],
        "soil_t": [],
    }


# -- judging (site fusion) ----------------------------------------------------------------------


def _feed(f: SiteFusion, reg, channel: str, values: list[float], step: float = 600.0, start: float = T0) -> list:
    info = reg.channel("S", "D", channel)
    out = []
    for i, v in enumerate(values):
        out += f.update_all(info, start + i * step, v)
    return out


def test_a_negative_acceleration_peak_past_its_threshold_raises_the_site():
    reg = _one([{"channel": "acc", "kind": "acceleration", "source": "L1_JS_1.gZ", "thresholds": {"yellow": 100.0, "orange": 300.0}}])
    f = SiteFusion(reg)
    events = _feed(f, reg, "acc", [-0.3, 0.2, -150.0])
    assert [(e.level, e.previous) for e in events] == [(2, 0)]
    assert "peak 150.00 mg (≥ yellow threshold 100 mg" in events[0].reason
    assert events[0].evidence["value"] == -150.0


def test_mud_level_and_seepage_pressure_warn_on_their_thresholds():
    for kind, source, thr, value in (("mud_level", "L3_NW_1", {"yellow": 1.0}, 1.2), ("seepage_pressure", "L3_SY_1", {"yellow": 150.0}, 151.0)):
        reg = _one([{"channel": "x", "kind": kind, "source": source, "thresholds": thr}])
        f = SiteFusion(reg)
        events = _feed(f, reg, "x", [value])  # one reading: the rise detector is still warming up
        assert [(e.level, e.evidence["detector"]) for e in events] == [(2, "threshold")], kind


def test_a_mud_level_rising_half_a_metre_an_hour_is_yellow_without_thresholds():
    # 0.6 m/h = 14.4 m/day: above the mud level's yellow rise (12 m/day), below orange (24).
    reg = _one([{"channel": "mud", "kind": "mud_level", "source": "L3_NW_1"}])
    f = SiteFusion(reg)
    values = [0.05 + (0.6 / 6) * i + (0.004 if i % 2 else -0.004) for i in range(12)]  # every 10 min, ±4 mm ripple
    events = _feed(f, reg, "mud", values)
    assert [e.level for e in events] == [2]
    assert events[0].evidence["detector"] == "rise"
    assert 12.0 <= events[0].evidence["rate_per_day"] < 24.0


def test_deep_displacement_accelerating_reaches_the_yellow_velocity():
    # x = 10·t² mm (t in days): the velocity grows by 20 mm/day per day, through the yellow
    # band (3-72 mm/day) and nowhere near orange within the day fed.
    reg = _one([{"channel": "deep", "kind": "deep_displacement", "source": "L1_SW_1.dispsX"}])
    f = SiteFusion(reg)
    values = [round(10.0 * (i * 600 / DAY) ** 2 + 0.3 * math.sin(1.7 * i), 2) for i in range(145)]
    events = _feed(f, reg, "deep", values)
    assert [e.level for e in events] == [2]
    assert events[0].evidence["detector"] == "velocity"
    assert 3.0 <= events[0].evidence["velocity_per_day"] < 72.0
    assert f.snapshot()["sites"]["S|0"]["channels"]["D/deep"]["levels"]["velocity"] == 2


def test_soil_temperature_stress_and_vibration_without_thresholds_never_warn():
    reg = _one([
        {"channel": "soil_t", "kind": "soil_temperature", "source": "L3_TW_1"},
        {"channel": "stress", "kind": "stress", "source": "L2_YL_1"},
        {"channel": "vib", "kind": "vibration", "source": "L1_ZD_1.value"},
    ])
    f = SiteFusion(reg)
    events = []
    for ch, base, slope in (("soil_t", 15.0, 2.0), ("stress", 100.0, 50.0), ("vib", 0.02, 5.0)):
        events += _feed(f, reg, ch, [base + slope * i for i in range(50)])  # steep climbs, all of them
    assert events == [] and f.level("S") == 0


def test_an_azimuth_that_wraps_never_becomes_a_reading():
    reg = _one(
        [{"channel": "tilt_x", "kind": "tilt", "unit": "deg", "source": "L1_QJ_1.X"}],
        ignore=["L1_QJ_1.Y", "L1_QJ_1.Z", "L1_QJ_1.angle", "L1_QJ_1.AZI"],
    )
    codec = CnCodec(reg, topics=["$dp"])
    now = T0 + 3600
    f = SiteFusion(reg)
    events = []
    for i, azi in enumerate([358.0, 359.5, 0.5, 2.0, 359.0, 1.0]):
        t = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(T0 + 600 * i))
        doc = {"CN0000000000000001": {"L1_QJ_1": {t: {"X": 0.0100, "Y": 0.02, "Z": 0.0, "angle": 83.0, "AZI": azi}}}}
        d = codec.decode("$dp", json.dumps(doc).encode(), now)
        assert d.rejects == [] and [(i.channel, v) for i, _, v in d.readings] == [("tilt_x", 0.01)]
        for info, tt, v in d.readings:
            events += f.update_all(info, tt, v)
    assert events == [] and f.level("S") == 0
    # Not listed in ignore, AZI is refused with the reason, never mapped by guess.
    codec = CnCodec(_one([{"channel": "tilt_x", "kind": "tilt", "unit": "deg", "source": "L1_QJ_1.X"}]), topics=["$dp"])
    d = codec.decode("$dp", json.dumps({"CN0000000000000001": {"L1_QJ_1": {"X": 0.01, "AZI": 359.9}}}).encode(), now)
    assert [r.reason for r in d.rejects] == ["unknown_channel"] and "L1_QJ_1.AZI" in d.rejects[0].detail
    assert [(i.channel, v) for i, _, v in d.readings] == [("tilt_x", 0.01)]


def test_an_unmapped_field_of_a_known_method_says_which_kind_to_map_it_as():
    codec = CnCodec(_one([{"channel": "mud", "kind": "mud_level", "source": "L3_NW_1"}]), topics=["$dp"])
    d = codec.decode("$dp", json.dumps({"CN0000000000000001": {"L3_NW_1": 0.4, "L3_SY_2": 12.0}}).encode(), T0)
    assert [(i.channel, v) for i, _, v in d.readings] == [("mud", 0.4)]
    assert len(d.rejects) == 1 and "kind pore_pressure or seepage_pressure" in d.rejects[0].detail


def test_every_kind_has_a_unit_a_range_and_a_quality_guard():
    from geowarn.config.registry import DEFAULT_RANGE, UNITS
    from geowarn.detectors.quality import QualityGuard

    for kind in Kind:
        assert UNITS[kind] and DEFAULT_RANGE[kind][0] < DEFAULT_RANGE[kind][1], kind
        QualityGuard.for_kind(kind.value, interval_s=600.0, low=DEFAULT_RANGE[kind][0], high=DEFAULT_RANGE[kind][1])


# -- end to end: a real broker and a real daemon ------------------------------------------------

# Whole seconds, two days back: in the past, and well inside the future-skew check.
E2E_T0 = int(time.time()) - 2 * 86400
CODES = {"MUD": "CNMUD000000000001", "SEEP": "CNSEEP00000000001", "ACC": "CNACC000000000001", "DEEP": "CNDEEP00000000001", "QUIET": "CNQUIET0000000001"}

E2E_SITES = f"""
[[sites]]
site = "MUD"
name = "泥石流沟 debris-flow gully"
hazard = "debris_flow"
admin = "420527"
lat = 30.9
lon = 110.6
[[sites.devices]]
device = "MUD-U1"
code = "{CODES['MUD']}"
channels = [{{ channel = "mud", kind = "mud_level", source = "L3_NW_1", thresholds = {{ yellow = 1.0, orange = 2.0 }} }}]

[[sites]]
site = "SEEP"
name = "渗压 seepage"
admin = "420527"
lat = 30.9
lon = 110.6
[[sites.devices]]
device = "SEEP-U1"
code = "{CODES['SEEP']}"
channels = [{{ channel = "seep", kind = "seepage_pressure", source = "L3_SY_1", thresholds = {{ yellow = 150.0 }} }}]

[[sites]]
site = "ACC"
name = "加速度 acceleration"
admin = "420527"
lat = 30.9
lon = 110.6
[[sites.devices]]
device = "ACC-U1"
code = "{CODES['ACC']}"
ignore = ["L1_JS_1.gY", "L1_JS_1.gZ"]
channels = [{{ channel = "acc_x", kind = "acceleration", source = "L1_JS_1.gX", thresholds = {{ yellow = 100.0 }} }}]

[[sites]]
site = "DEEP"
name = "深部位移 deep displacement"
admin = "420527"
lat = 30.9
lon = 110.6
[[sites.devices]]
device = "DEEP-U1"
code = "{CODES['DEEP']}"
ignore = ["L1_SW_1.dispsY"]
channels = [{{ channel = "deep", kind = "deep_displacement", source = "L1_SW_1.dispsX" }}]

[[sites]]
site = "QUIET"
name = "无阈值 no thresholds"
admin = "420527"
lat = 30.9
lon = 110.6
[[sites.devices]]
device = "QUIET-U1"
code = "{CODES['QUIET']}"
ignore = ["L1_QJ_1.Y", "L1_QJ_1.Z", "L1_QJ_1.angle", "L1_QJ_1.AZI"]
channels = [
  {{ channel = "tilt_x", kind = "tilt", unit = "deg", source = "L1_QJ_1.X" }},
  {{ channel = "vib", kind = "vibration", source = "L1_ZD_1.value" }},
  {{ channel = "stress", kind = "stress", source = "L2_YL_1" }},
  {{ channel = "soil_t", kind = "soil_temperature", source = "L3_TW_1" }},
]
"""


def _z(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def _body(site: str, channels: dict) -> bytes:
    return json.dumps({CODES[site]: channels}).encode()


@pytest.mark.slow
def test_convention_devices_of_each_new_kind_reach_the_journal_and_their_levels(tmp_path, mosquitto):
    from daemonproc import Daemon, publisher

    sites = tmp_path / "sites.toml"
    sites.write_text(E2E_SITES, encoding="utf-8")
    d = Daemon(tmp_path / "data", mosquitto.url, extra_env={"GEOWARN_SITES": str(sites), "GEOWARN_CN_TOPICS": "$dp"})
    d.start()
    pub = publisher(mosquitto.url)
    t0 = E2E_T0
    # The quiet site first: it must have been judged by the time the others' warnings are out
    # (detection judges in arrival order). Its azimuth wraps 359.5 -> 0.5 -> 359; all steep.
    quiet = {
        "L1_QJ_1": {_z(t0 + 600 * i): {"X": 0.01, "Y": 0.02, "Z": 0.0, "angle": 83.0, "AZI": azi} for i, azi in enumerate([359.5, 0.5, 359.0, 1.0])},
        "L1_ZD_1": {_z(t0 + 600 * i): {"value": 0.02 + 5.0 * i} for i in range(4)},
        "L2_YL_1": {_z(t0 + 600 * i): {"value": 100.0 + 50.0 * i} for i in range(4)},
        "L3_TW_1": {_z(t0 + 600 * i): str(15.0 + 2.0 * i) for i in range(4)},  # numeric strings, as some platforms send
    }
    deep = {_z(t0 + 600 * i): {"dispsX": round(10.0 * (i * 600 / DAY) ** 2 + 0.3 * math.sin(1.7 * i), 2), "dispsY": 0.0} for i in range(145)}
    msgs = [
        _body("QUIET", quiet),
        _body("MUD", {"L3_NW_1": {_z(t0): {"value": 1.4}}}),
        _body("SEEP", {"L3_SY_1": {_z(t0): 160.5}}),
        _body("ACC", {"L1_JS_1": {_z(t0): {"gX": -180.0, "gY": 3.0, "gZ": -0.5}}}),
        _body("DEEP", {"L1_SW_1": deep}),
    ]
    try:
        for payload in msgs:
            pub.publish("$dp", payload, qos=1).wait_for_publish(10)
        alerts = tmp_path / "data" / "alerts.jsonl"

        def events() -> list[dict]:
            return [json.loads(line) for line in alerts.read_text().splitlines()] if alerts.exists() else []

        d.wait_until(lambda: {e["site"] for e in events()} >= {"MUD", "SEEP", "ACC", "DEEP"}, timeout=60, message="the four warnings")
        rows = d.readings()
        got = {(s, ch): [v for (s2, _, ch2, _, v) in rows if (s2, ch2) == (s, ch)] for (s, _, ch, _, _) in rows}
        assert got[("QUIET", "tilt_x")] == [0.01] * 4
        assert got[("QUIET", "vib")] == [0.02, 5.02, 10.02, 15.02]
        assert got[("QUIET", "stress")] == [100.0, 150.0, 200.0, 250.0]
        assert got[("QUIET", "soil_t")] == [15.0, 17.0, 19.0, 21.0]
        assert got[("MUD", "mud")] == [1.4] and got[("SEEP", "seep")] == [160.5] and got[("ACC", "acc_x")] == [-180.0]
        assert len(got[("DEEP", "deep")]) == 145
        assert d.count("deadletters") == 0
        # The series carry their kinds (the InfluxDB measurement names).
        kinds = dict(((s, ch), k) for s, ch, k in d.query("SELECT site, channel, kind FROM series"))
        assert kinds[("MUD", "mud")] == "mud_level" and kinds[("DEEP", "deep")] == "deep_displacement"
        assert kinds[("QUIET", "soil_t")] == "soil_temperature"
        first = {e["site"]: e for e in reversed(events())}
        assert "QUIET" not in first  # the wrapping azimuth and the unthresholded kinds raised nothing
        assert [(first[s]["level"], first[s]["evidence"]["detector"]) for s in ("MUD", "SEEP", "ACC")] == [(2, "threshold")] * 3
        assert "peak 180.00 mg" in first["ACC"]["reason"]
        assert (first["DEEP"]["level"], first["DEEP"]["evidence"]["channel"], first["DEEP"]["evidence"]["detector"]) == (2, "DEEP-U1/deep", "velocity")
        assert d.terminate() < 10.0
    finally:
        pub.loop_stop()
        d.close()


# -- the simulators ---------------------------------------------------------------------------

SIM_SITES = """
[[sites]]
site = "SIM"
name = "simulated universal devices"
admin = "420527"
lat = 30.9
lon = 110.6
[[sites.devices]]
device = "SIM-U1"
code = "CNSIM000000000001"
channels = [
  { channel = "deep", kind = "deep_displacement", source = "L1_SW_1.dispsX" },
  { channel = "acc", kind = "acceleration", source = "L1_JS_1.gX" },
  { channel = "vib", kind = "vibration", source = "L1_ZD_1.value" },
  { channel = "stress", kind = "stress", source = "L2_YL_1" },
  { channel = "mud", kind = "mud_level", source = "L3_NW_1" },
  { channel = "seep", kind = "seepage_pressure", source = "L3_SY_1" },
  { channel = "soil_t", kind = "soil_temperature", source = "L3_TW_1" },
]
"""

SIM_SCENARIO = """
name = "cn_kinds"
description = "a universal device with a sensor of each new kind"
sites = "sites.toml"
start = "2025-11-29T00:00:00Z"
duration = "6h"
seed = 3
"""


def test_the_simulator_makes_readings_of_every_new_kind_within_its_range(tmp_path):
    import subprocess
    import sys

    from geowarn.config.registry import DEFAULT_RANGE
    from geowarn.ingest.feeds import read_feed

    (tmp_path / "sites.toml").write_text(SIM_SITES, encoding="utf-8")
    (tmp_path / "cn_kinds.toml").write_text(SIM_SCENARIO, encoding="utf-8")
    feed = tmp_path / "feed.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "geowarn.service.cli", "simulate", "--scenario", str(tmp_path / "cn_kinds.toml"), "--out", str(feed), "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rejects: list = []
    rows = list(read_feed(feed, rejects))
    assert rejects == []
    kinds = {"deep": Kind.deep_displacement, "acc": Kind.acceleration, "vib": Kind.vibration, "stress": Kind.stress,
             "mud": Kind.mud_level, "seep": Kind.seepage_pressure, "soil_t": Kind.soil_temperature}
    seen = {r.channel for r in rows}
    assert seen == set(kinds)
    for r in rows:
        low, high = DEFAULT_RANGE[kinds[r.channel]]
        assert low <= r.value <= high, r


def test_a_peak_reads_in_chinese():
    from geowarn.alerts.texts import evidence_zh

    assert evidence_zh("ACC-U1/acc_x threshold: peak 180.00 mg (≥ yellow threshold 100 mg, or held)").startswith(
        "ACC-U1/acc_x 峰值 180.00 mg，达到黄色阈值 100 mg。"
    )
