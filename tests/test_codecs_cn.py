"""The national geohazard IoT convention (ingest/codecs_cn.py): frames, device-code-keyed
bodies, time layers, the device clock, rain counters and S1_ZT status.

Golden times are worked out with ``calendar.timegm`` on calendar fields (never with the code
under test); frames are built from the documented layout (type byte, big-endian 16-bit length,
JSON); rain amounts are the differences of the counters written here.
"""

from __future__ import annotations

import calendar
import json

import pytest

from geowarn.config.errors import ConfigError
from geowarn.config.registry import Registry, parse_registry
from geowarn.config.settings import Settings
from geowarn.ingest.codecs import PayloadError
from geowarn.ingest.codecs_cn import CnCodec, topic_filter

CODE = "SK11E80D1307426AZ"
CODE_UTC = "SK22UTC0000000001"


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))


T = utc(2026, 3, 31, 4, 5, 55)  # the documented example's 2026-03-31T04:05:55.000Z
NOW = utc(2026, 3, 31, 4, 10, 0)

SITES = {
    "sites": [
        {
            "site": "SP", "name": "树坪滑坡 Shuping landslide", "admin": "420527", "lat": 30.99, "lon": 110.61,
            "devices": [
                {
                    "device": "SP-U1", "code": CODE, "clock_offset_s": 28800, "ignore": ["L1_QJ_1.AZI", "L1_QJ_1.Z", "L1_QJ_1.angle", "L1_JS_1"],
                    "channels": [
                        {"channel": "crack", "kind": "crack", "source": "L1_LF_1"},
                        {"channel": "tilt_x", "kind": "tilt", "unit": "deg", "source": "L1_QJ_1.X"},
                        {"channel": "tilt_y", "kind": "tilt", "unit": "deg", "source": "L1_QJ_1.Y"},
                        {"channel": "rain_total", "kind": "rain", "source": "L3_YL_1.totalValue"},
                        {"channel": "rain", "kind": "rain", "source": "L3_YL_2.value"},
                        {"channel": "battery", "kind": "battery", "source": "S1_ZT_1.battery_volt"},
                    ],
                },
                {
                    "device": "SP-G1", "code": CODE_UTC,
                    "channels": [
                        {"channel": "disp_e", "kind": "gnss_e", "source": "L1_GP_1.gpsTotalX"},
                        {"channel": "disp_n", "kind": "gnss_n", "source": "L1_GP_1.gpsTotalY"},
                    ],
                },
            ],
        }
    ]
}


@pytest.fixture
def registry() -> Registry:
    return parse_registry(json.loads(json.dumps(SITES)), "test")


@pytest.fixture
def codec(registry: Registry) -> CnCodec:
    return CnCodec(registry, topics=["$dp", "/sys/+/{code}/thing/property/post"])


def body(channels: dict, code: str = CODE) -> bytes:
    return json.dumps({code: channels}).encode()


def frame(kind: int, payload: bytes) -> bytes:
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


def got(d) -> list[tuple[str, float, float]]:
    return [(info.channel, t, v) for info, t, v in d.readings]


# -- frames and topics -----------------------------------------------------------------------

def test_the_documented_example_on_dp_with_a_beijing_clock(codec):
    # The device writes Beijing time with Z: 12:05:55 "Z" is 04:05:55 UTC with an 8 h offset.
    d = codec.decode("$dp", body({"L1_LF_1": {"2026-03-31T12:05:55.000Z": {"value": 0.0305}}}), NOW)
    assert (d.site, d.device, d.kind) == ("SP", "SP-U1", "data")
    assert got(d) == [("crack", T, 0.0305)] and d.rejects == []


def test_a_utc_device_is_taken_as_written(codec):
    d = codec.decode("$dp", body({"L1_GP_1": {"2026-03-31T04:05:55.000Z": {"gpsTotalX": 1.5, "gpsTotalY": "-2.25"}}}, CODE_UTC), NOW)
    assert got(d) == [("disp_e", T, 1.5), ("disp_n", T, -2.25)]


def test_without_the_offset_beijing_time_is_eight_hours_ahead_and_refused(registry):
    sites = json.loads(json.dumps(SITES))
    del sites["sites"][0]["devices"][0]["clock_offset_s"]
    codec = CnCodec(parse_registry(sites, "test"), topics=["$dp"])
    d = codec.decode("$dp", body({"L1_LF_1": {"2026-03-31T12:05:55.000Z": {"value": 0.0305}}}), NOW)
    assert d.readings == [] and [r.reason for r in d.rejects] == ["bad_time"]
    assert "in the future" in d.rejects[0].detail


def test_an_explicit_zone_wins_over_the_offset_and_no_zone_uses_it(codec):
    d = codec.decode("$dp", body({"L1_LF_1": {"2026-03-31T12:05:55+08:00": 1.0, "2026-03-31 12:05:56": 2.0}}), NOW)
    assert got(d) == [("crack", T, 1.0), ("crack", T + 1, 2.0)]


def test_a_zone_less_time_is_refused_when_the_device_clock_is_not_set(codec):
    d = codec.decode("$dp", body({"L1_GP_1": {"2026-03-31 04:05:55": {"gpsTotalX": 1.0}}}, CODE_UTC), NOW)
    assert d.readings == [] and d.rejects[0].reason == "bad_time" and "clock_offset_s" in d.rejects[0].detail


def test_framed_type_1_takes_the_receive_time_and_type_2_its_time_layer(codec):
    d1 = codec.decode("$dp", frame(1, body({"L1_LF_1": {"value": 0.5}, "L3_YL_2": "1.2"})), NOW)
    assert got(d1) == [("crack", NOW, 0.5), ("rain", NOW, 1.2)]
    d2 = codec.decode("$dp", frame(2, body({"L1_LF_1": {"2026-03-31T12:05:55.000Z": {"value": 0.0305}}})), NOW)
    assert got(d2) == [("crack", T, 0.0305)]


def test_a_hand_built_frame_header(codec):
    payload = b'{"SK11E80D1307426AZ":{"L1_LF_1":0.25}}'
    # counted: '{' 1, the quoted code 19, ':' 1, '{' 1, '"L1_LF_1"' 9, ':' 1, '0.25' 4, '}}' 2 = 38 = 0x0026
    assert len(payload) == 38
    d = codec.decode("$dp", b"\x01\x00\x26" + payload, NOW)
    assert got(d) == [("crack", NOW, 0.25)]


@pytest.mark.parametrize(
    "payload, reason",
    [
        (frame(3, b"photo.jpg\x00\xff\xd8\xff"), "cn_file"),
        (frame(4, b"\x00\x01firmware"), "cn_firmware"),
        (b"\x02\x00\x05" + body({"L1_LF_1": 1.0}), "cn_frame"),  # says 5 bytes follow
        (b"\x01\x00", "cn_frame"),
        (b"\x07garbage", "not_json"),
        (json.dumps({"header": {"appId": "x"}, "bodies": {"body": "AAAA"}}).encode(), "cn_encrypted"),
        (json.dumps({CODE: {}, CODE_UTC: {}}).encode(), "bad_shape"),
        (json.dumps([1, 2]).encode(), "bad_shape"),
        (body({"L1_LF_1": 1.0}, "NOPE0001"), "unknown_device"),
        (body({"L1_LF_1": 1.0}, "SK\ud800"), "unknown_device"),
        (b"[" * 200_000, "too_deep"),
    ],
)
def test_whole_message_refusals_have_their_reason(codec, payload, reason):
    with pytest.raises(PayloadError) as exc:
        codec.decode("$dp", payload, NOW)
    assert exc.value.reason == reason
    exc.value.detail.encode("utf-8")  # no lone surrogate reaches SQLite or MQTT


def test_a_frame_on_the_device_topic_and_a_body_there_too(codec):
    topic = "geowarn/SP/SP-U1/data"
    d = codec.decode(topic, frame(2, body({"L1_LF_1": {"2026-03-31T12:05:55.000Z": {"value": 0.0305}}})), NOW)
    assert got(d) == [("crack", T, 0.0305)]
    d = codec.decode(topic, body({"L1_LF_1": {"2026-03-31T12:05:55.000Z": {"value": 0.0305}}}), NOW)
    assert got(d) == [("crack", T, 0.0305)]
    with pytest.raises(PayloadError) as exc:  # a device cannot speak for another on its topic
        codec.decode(topic, body({"L1_GP_1": {"gpsTotalX": 1.0}}, CODE_UTC), NOW)
    assert exc.value.reason == "device_mismatch"
    with pytest.raises(PayloadError) as exc:
        codec.decode(topic, frame(3, b"x"), NOW)
    assert exc.value.reason == "cn_file"


def test_native_payloads_are_unchanged(codec):
    native = {"v": 1, "device": "SP-G1", "readings": [{"ch": "disp_e", "t": T, "v": 1.0}]}
    d = codec.decode("geowarn/SP/SP-G1/data", json.dumps(native).encode(), NOW)
    assert got(d) == [("disp_e", T, 1.0)]
    with pytest.raises(PayloadError) as exc:
        codec.decode("geowarn/SP/SP-G1/data", json.dumps({"device": "SP-G1"}).encode(), NOW)
    assert exc.value.reason == "bad_version"


def test_a_vendor_topic_names_the_device_and_must_agree_with_the_payload(codec):
    d = codec.decode(f"/sys/pk1/{CODE}/thing/property/post", body({"L1_LF_1": 0.5}), NOW)
    assert got(d) == [("crack", NOW, 0.5)]
    with pytest.raises(PayloadError) as exc:
        codec.decode(f"/sys/pk1/{CODE_UTC}/thing/property/post", body({"L1_LF_1": 0.5}), NOW)
    assert exc.value.reason == "device_mismatch"
    with pytest.raises(PayloadError) as exc:
        codec.decode("/sys/pk1/thing/property/post", body({"L1_LF_1": 0.5}), NOW)
    assert exc.value.reason == "bad_topic"
    assert topic_filter("/sys/+/{code}/thing/property/post") == "/sys/+/+/thing/property/post"


def test_dp_is_bad_topic_when_not_configured(registry):
    with pytest.raises(PayloadError) as exc:
        CnCodec(registry).decode("$dp", body({"L1_LF_1": 0.5}), NOW)
    assert exc.value.reason == "bad_topic"


def test_the_size_bound_holds_on_dp(registry):
    codec = CnCodec(registry, topics=["$dp"], max_bytes=1024)
    with pytest.raises(PayloadError) as exc:
        codec.decode("$dp", body({"L1_LF_1": 0.5}), NOW, size=2000)
    assert exc.value.reason == "too_large"


def test_the_entry_bound_holds(registry):
    codec = CnCodec(registry, topics=["$dp"], max_readings=3)
    layer = {f"2026-03-31T04:0{i}:00Z": i for i in range(4)}
    with pytest.raises(PayloadError) as exc:
        codec.decode("$dp", body({"L1_GP_1": layer}, CODE_UTC), NOW)
    assert exc.value.reason == "too_many_readings"


# -- values ----------------------------------------------------------------------------------

def test_comma_separated_tilt_in_the_field_tables_order_and_azi_never_a_reading(codec):
    d = codec.decode("$dp", body({"L1_QJ_1": {"2026-03-31T12:05:55.000Z": "-0.0376,-0.0567,-0.0292,83.0074,-8.6772"}}), NOW)
    assert got(d) == [("tilt_x", T, -0.0376), ("tilt_y", T, -0.0567)] and d.rejects == []


def test_an_object_of_fields_with_azi_ignored(codec):
    d = codec.decode("$dp", body({"L1_QJ_1": {"2026-03-31T12:05:55.000Z": {"AZI": -8.6772, "X": -0.0376, "Y": -0.0567, "Z": -0.0292, "angle": 83.0074}},
                                  "L1_JS_1": {"2026-03-31T12:05:55.000Z": {"gX": -0.2396, "gY": -1.1563, "gZ": -0.3125}}}), NOW)
    assert got(d) == [("tilt_x", T, -0.0376), ("tilt_y", T, -0.0567)] and d.rejects == []


def test_an_unmapped_field_is_reported_and_the_good_ones_kept(codec):
    d = codec.decode("$dp", body({"L1_LF_1": 0.5, "L1_LF_2": 0.7, "L1_GP_1": {"gpsTotalZ": 3.0}, "XX": 1}), NOW)
    assert got(d) == [("crack", NOW, 0.5)]
    assert sorted(r.reason for r in d.rejects) == ["unknown_channel"] * 3
    assert any("L1_LF_2.value" in r.detail for r in d.rejects)


@pytest.mark.parametrize(
    "value, reason",
    [("abc", "not_numeric"), (True, "not_numeric"), (None, "not_numeric"), ({"value": [1]}, "not_numeric"),
     ("1,2", "bad_shape"), ("1e999", "not_finite")],
)
def test_bad_values_are_refused_alone(codec, value, reason):
    d = codec.decode("$dp", body({"L1_LF_1": value, "L3_YL_2": 0.2}), NOW)
    assert got(d) == [("rain", NOW, 0.2)]
    assert [r.reason for r in d.rejects] == [reason]


def test_mixed_time_keys_and_fields_are_refused(codec):
    d = codec.decode("$dp", body({"L1_LF_1": {"2026-03-31T12:05:55Z": 1.0, "value": 2.0}}), NOW)
    assert d.readings == [] and [r.reason for r in d.rejects] == ["bad_shape"]


# -- rain from a counter ---------------------------------------------------------------------

def test_rain_from_total_value_with_a_reset(codec):
    def send(h: int, total: float):
        return codec.decode("$dp", body({"L3_YL_1": {f"2026-03-31T{h:02d}:00:00Z": {"totalValue": total}}}), utc(2026, 3, 31, 12))

    assert send(9, 10.0).readings == []  # primes the counter: no interval yet
    assert got(send(10, 10.4)) == [("rain_total", utc(2026, 3, 31, 2), pytest.approx(0.4))]
    # the same message again (a redelivery) books the same reading, not zero
    assert got(send(10, 10.4)) == [("rain_total", utc(2026, 3, 31, 2), pytest.approx(0.4))]
    assert got(send(11, 10.4)) == [("rain_total", utc(2026, 3, 31, 3), 0.0)]
    # the counter restarted from 0 and has counted 0.2 since: 0.2, never 0.2 - 10.4
    assert got(send(12, 0.2)) == [("rain_total", utc(2026, 3, 31, 4), pytest.approx(0.2))]
    assert got(send(13, 0.5)) == [("rain_total", utc(2026, 3, 31, 5), pytest.approx(0.3))]
    late = send(11, 10.4)
    assert late.readings == [] and [r.reason for r in late.rejects] == ["bad_time"]


def test_several_totals_in_one_message_are_differenced_in_time_order(codec):
    layer = {"2026-03-31T10:00:00Z": {"totalValue": 5.5}, "2026-03-31T09:00:00Z": {"totalValue": 5.0}}
    d = codec.decode("$dp", body({"L3_YL_1": layer}), utc(2026, 3, 31, 12))
    assert got(d) == [("rain_total", utc(2026, 3, 31, 2), pytest.approx(0.5))]


# -- status ----------------------------------------------------------------------------------

def test_s1_zt_status_keeps_every_field(codec):
    fields = {
        "ext_power_volt": 0, "solar_volt": "18.2", "battery_volt": 12.6, "battery_dump_energy": 87,
        "supply_power": 1.5, "consume_power": 0.4, "temp": 21.5, "humidity": 60, "temp_out": 18, "humidity_out": 75,
        "lon": "110.6123", "lat": "30.9876", "signal_4g": -71, "signal_NB": "", "signal_bd": 3,
        "sw_version": "V2.3.1", "pa_state": 0, "sound_state": 1,
        "sensor_state": {"L1_LF_1": 0, "L1_QJ_1": 2}, "vendor_x": "abc",
    }
    d = codec.decode("$dp", body({"S1_ZT_1": {"2026-03-31T12:05:55.000Z": fields}}), NOW)
    assert d.kind == "status" and (d.site, d.device) == ("SP", "SP-U1")
    assert d.status == {
        "ext_power_v": 0, "solar_v": 18.2, "battery_v": 12.6, "battery_percent": 87, "supply_power": 1.5,
        "consume_power": 0.4, "temp_c": 21.5, "humidity": 60, "temp_out_c": 18, "humidity_out": 75,
        "lon": 110.6123, "lat": 30.9876, "signal_4g": -71, "signal_bd": 3, "fw": "V2.3.1", "pa_state": 0,
        "siren_state": 1, "sensor_state": {"L1_LF_1": 0, "L1_QJ_1": 2},
        "invalid": {"signal_NB": ""}, "unknown": {"vendor_x": "abc"}, "t": T,
    }
    # a status field a channel maps is a reading as well
    assert got(d) == [("battery", T, 12.6)] and d.rejects == []


def test_status_beside_data_and_on_the_status_topic(codec):
    d = codec.decode("$dp", body({"L1_LF_1": 0.5, "S1_ZT_1": {"battery_volt": 12.0}}), NOW)
    assert d.kind == "data" and got(d) == [("crack", NOW, 0.5), ("battery", NOW, 12.0)]
    assert d.status == {"battery_v": 12.0, "t": NOW}
    d = codec.decode("geowarn/SP/SP-U1/status", body({"S1_ZT_1": {"temp": 30}}), NOW)
    assert d.kind == "status" and d.status == {"temp_c": 30, "t": NOW}


def test_status_unknown_fields_are_bounded(codec):
    fields = {f"f{i}": "x" * 500 for i in range(40)}
    d = codec.decode("$dp", body({"S1_ZT_1": fields}), NOW)
    assert len(d.status["unknown"]) == 32 and d.status["unknown_dropped"] == 8
    assert all(len(v) == 64 for v in d.status["unknown"].values())


# -- registry and settings -------------------------------------------------------------------

def _with_channel(ch: dict) -> dict:
    sites = json.loads(json.dumps(SITES))
    sites["sites"][0]["devices"][1]["channels"].append(ch)
    return sites


@pytest.mark.parametrize(
    "channel, words",
    [
        ({"channel": "azi", "kind": "tilt", "unit": "deg", "source": "L1_QJ_1.AZI"}, "azimuth"),
        ({"channel": "tot", "kind": "crack", "source": "L3_YL_1.totalValue"}, "kind rain"),
        ({"channel": "bad", "kind": "crack", "source": "L1_LF"}, "national convention"),
        ({"channel": "dup", "kind": "gnss_e", "source": "L1_GP_1.gpsTotalX"}, "already read"),
    ],
)
def test_registry_refuses_wrong_sources(channel, words):
    with pytest.raises(ConfigError) as exc:
        parse_registry(_with_channel(channel), "test")
    assert words in str(exc.value)


def test_registry_refuses_a_code_naming_two_devices():
    sites = json.loads(json.dumps(SITES))
    sites["sites"][0]["devices"][1]["code"] = CODE
    with pytest.raises(ConfigError) as exc:
        parse_registry(sites, "test")
    assert "also names device" in str(exc.value)


def test_cn_topics_setting(monkeypatch):
    monkeypatch.setenv("GEOWARN_CN_TOPICS", "$dp, /sys/+/{code}/thing/property/post")
    assert Settings().cn_topic_list == ["$dp", "/sys/+/{code}/thing/property/post"]
    monkeypatch.delenv("GEOWARN_CN_TOPICS")
    assert Settings().cn_topic_list == [] and Settings(cn_topics=["$dp"]).cn_topic_list == ["$dp"]
    for bad in ("a/#", "a/b{code}", "geowarn/x/y", "{code}/{code}"):
        with pytest.raises(ValueError):
            Settings(cn_topics=bad)


# -- a rain counter across store restarts and a batch written again ---------------------------


def _counter_store(tmp_path, monkeypatch):
    from geowarn.config.settings import load_all
    from geowarn.ingest.store import Store
    from geowarn.simulators.scenario import sites_toml

    sites = tmp_path / "sites.toml"
    sites.write_text(sites_toml(json.loads(json.dumps(SITES))), encoding="utf-8")
    monkeypatch.setenv("GEOWARN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GEOWARN_SITES", str(sites))
    monkeypatch.setenv("GEOWARN_CN_TOPICS", "$dp")
    loaded = load_all()
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return lambda: Store(loaded, lambda t, p, r: None, data / "journal.sqlite", data / "messages.sqlite"), data


def _total(h: int, total: float) -> bytes:
    return body({"L3_YL_1": {f"2026-03-31T{h:02d}:00:00+08:00": {"totalValue": total}}})


def _rain_rows(data) -> list[tuple[int, float]]:
    import sqlite3

    conn = sqlite3.connect(f"file:{data / 'journal.sqlite'}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT r.t_ms, r.value FROM readings r JOIN series s ON s.id = r.series WHERE s.channel = 'rain_total' ORDER BY r.t_ms"
        ).fetchall()
    finally:
        conn.close()


def test_a_rain_counter_resumes_its_difference_after_a_store_restart(tmp_path, monkeypatch):
    """5.0 mm counted by 09:00, 5.5 by 10:00 (Beijing time, explicit +08:00): 0.5 mm fell in
    between, whether or not the store stage restarted in between."""
    from geowarn.ingest.messagelog import MessageLog

    make, data = _counter_store(tmp_path, monkeypatch)
    received = int(utc(2026, 3, 31, 4) * 1000)
    log = MessageLog(data / "messages.sqlite")
    log.append([(b"$dp", _total(9, 5.0))], received_ms=received)
    store = make()
    store.step()
    store.close()  # a restart between the two totals
    log.append([(b"$dp", _total(10, 5.5))], received_ms=received)
    store = make()
    store.step()
    store.close()
    log.close()
    assert _rain_rows(data) == [(int(utc(2026, 3, 31, 2) * 1000), 0.5)]


def test_a_batch_written_again_after_a_write_error_books_its_counter_once(tmp_path, monkeypatch):
    """The batch's first write fails (a full disk); the stage writes it again later. The totals
    its first decoding moved must not make the second see them as already counted."""
    import sqlite3

    from geowarn.ingest.messagelog import MessageLog

    make, data = _counter_store(tmp_path, monkeypatch)
    received = int(utc(2026, 3, 31, 4) * 1000)
    log = MessageLog(data / "messages.sqlite")
    log.append([(b"$dp", _total(9, 5.0))], received_ms=received)
    store = make()
    store.step()
    log.append([(b"$dp", _total(10, 5.5)), (b"$dp", _total(11, 6.5))], received_ms=received)
    real = store.journal.append
    calls = {"n": 0}

    def full_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return real(*args, **kwargs)

    monkeypatch.setattr(store.journal, "append", full_once)
    with pytest.raises(sqlite3.OperationalError):
        store.step()
    store.step()
    store.close()
    log.close()
    assert _rain_rows(data) == [(int(utc(2026, 3, 31, 2) * 1000), 0.5), (int(utc(2026, 3, 31, 3) * 1000), 1.0)]


def test_a_shared_topic_accepts_only_declared_codes_not_a_device_id(codec):
    """On ``$dp`` (every device's topic) a payload keyed by a registry device id — SP-G1 has a
    code, so its id is not one — is refused: otherwise anyone on ``$dp`` could write a native
    device's status (battery, faulty sensors) by its id. Its declared code works."""
    with pytest.raises(PayloadError) as exc:
        codec.decode("$dp", body({"S1_ZT_1": {"battery_volt": 2.1}}, code="SP-G1"), NOW)
    assert exc.value.reason == "unknown_device"
    d = codec.decode("$dp", body({"L1_GP_1": {"2026-03-31T04:05:55Z": {"gpsTotalX": 1.5}}}, code=CODE_UTC), NOW)
    assert [(i.device, i.channel) for i, _, _ in d.readings] == [("SP-G1", "disp_e")]
