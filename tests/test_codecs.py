"""The station-facing contract (DESIGN §3): what ``ingest.codecs.Codec`` accepts and rejects.

Every golden time below is worked out with ``calendar.timegm`` on the calendar fields, never
with the code under test. The registry is the shipped example (three Yichang sites); ``NOW``
is the ingest clock of every decode: 2026-11-29T10:00:00Z.
"""

from __future__ import annotations

import calendar
import json
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from geowarn.config.registry import Registry, load_registry
from geowarn.config.settings import example_path
from geowarn.ingest.codecs import EARLIEST_T, Codec, Decoded, PayloadError, Reject

NOW = 1795946400.0  # 2026-11-29T10:00:00Z, checked against timegm below


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    """Epoch seconds of a UTC calendar time, independently of the codec."""
    return float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))


T0930 = utc(2026, 11, 29, 9, 30)  # the DESIGN example time, half an hour before NOW

GNSS = "geowarn/BSH/BSH-GNSS1/data"
GNSS_STATUS = "geowarn/BSH/BSH-GNSS1/status"
TILT = "geowarn/XK/XK-TLT1/data"
BN_GNSS = "urn:dev:geowarn:BSH-GNSS1:"
BN_TILT = "urn:dev:geowarn:XK-TLT1:"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(example_path("sites.example.toml"))


@pytest.fixture(scope="module")
def codec(registry: Registry) -> Codec:
    return Codec(registry)


def enc(doc: object) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def native(readings: list, **extra: object) -> bytes:
    doc = {"v": 1, "device": "BSH-GNSS1", "seq": 7, "drill": False, "readings": readings}
    doc.update(extra)
    return enc(doc)


def triples(d: Decoded) -> list[tuple[str, float, float]]:
    return [(info.channel, t, v) for info, t, v in d.readings]


def reasons(d: Decoded) -> list[str]:
    return [r.reason for r in d.rejects]


def payload_error(codec: Codec, topic: str, payload: bytes) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        codec.decode(topic, payload, NOW)
    return info.value


GOOD = {"ch": "disp_e", "t": T0930, "v": 1.25}


def test_now_is_the_documented_instant() -> None:
    assert NOW == utc(2026, 11, 29, 10, 0, 0)
    assert EARLIEST_T == utc(2000, 1, 1)


# -- native JSON v1: good messages ----------------------------------------------------------


def test_native_design_example_gives_exact_triples(codec: Codec) -> None:
    payload = native(
        [
            {"ch": "disp_e", "t": 1795944600.0, "v": 12.31},
            {"ch": "disp_n", "t": "2026-11-29T09:30:00Z", "v": -3.02},
            {"ch": "disp_u", "t": "2026-11-29T17:30:00+08:00", "v": 0.5},
            {"ch": "disp_e", "t": 1795944000, "v": 7},  # JSON integers are numbers too
        ],
        seq=1042,
    )
    d = codec.decode(GNSS, payload, NOW)
    assert (d.kind, d.site, d.device, d.seq, d.drill) == ("data", "BSH", "BSH-GNSS1", 1042, False)
    assert triples(d) == [
        ("disp_e", T0930, 12.31),
        ("disp_n", T0930, -3.02),
        ("disp_u", T0930, 0.5),
        ("disp_e", T0930 - 600, 7.0),
    ]
    assert all(type(t) is float and type(v) is float for _, t, v in d.readings)
    assert d.rejects == []
    info = d.readings[1][0]
    assert (info.site, info.device, info.channel, info.kind, info.unit, info.admin) == (
        "BSH", "BSH-GNSS1", "disp_n", "gnss_n", "mm", "420527"
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-29T09:30:00Z", utc(2026, 11, 29, 9, 30)),
        ("2026-11-29T09:30:00z", utc(2026, 11, 29, 9, 30)),
        ("2026-11-29t09:30:00Z", utc(2026, 11, 29, 9, 30)),
        ("2026-11-29 09:30:00Z", utc(2026, 11, 29, 9, 30)),  # RFC 3339 §5.6 note
        ("2026-11-29T17:30:00+08:00", utc(2026, 11, 29, 9, 30)),
        ("2026-11-30T01:15:00+16:00", utc(2026, 11, 29, 9, 15)),
        ("2026-11-29T04:00:00-05:30", utc(2026, 11, 29, 9, 30)),
        ("2026-11-29T09:30:00+00:00", utc(2026, 11, 29, 9, 30)),
        ("2026-11-29T09:30:00-00:00", utc(2026, 11, 29, 9, 30)),
        ("2026-11-29T09:30:00.250Z", utc(2026, 11, 29, 9, 30) + 0.25),
        ("2026-11-29T09:30:00.5+08:00", utc(2026, 11, 29, 1, 30) + 0.5),
        ("2026-11-29T00:30:00+08:00", utc(2026, 11, 28, 16, 30)),  # crosses midnight backwards
        ("2024-02-29T12:00:00Z", utc(2024, 2, 29, 12)),  # leap day
        ("2000-01-01T00:00:00Z", utc(2000, 1, 1)),  # the earliest accepted instant
        ("2000-01-01T08:00:00+08:00", utc(2000, 1, 1)),
    ],
)
def test_native_rfc3339_times(codec: Codec, text: str, expected: float) -> None:
    d = codec.decode(GNSS, native([{"ch": "disp_e", "t": text, "v": 1.0}]), NOW)
    assert d.rejects == []
    assert triples(d) == [("disp_e", expected, 1.0)]


def test_native_time_at_the_skew_limit_is_kept(codec: Codec) -> None:
    d = codec.decode(GNSS, native([{"ch": "disp_e", "t": NOW + 300.0, "v": 1.0}]), NOW)
    assert triples(d) == [("disp_e", NOW + 300.0, 1.0)]


def test_native_optional_fields_and_drill(codec: Codec) -> None:
    d = codec.decode(GNSS, enc({"v": 1, "device": "BSH-GNSS1", "readings": [GOOD]}), NOW)
    assert (d.seq, d.drill) == (None, False)
    d = codec.decode(GNSS, native([GOOD], drill=True, seq=0), NOW)
    assert (d.seq, d.drill) == (0, True)
    assert triples(d) == [("disp_e", T0930, 1.25)]


def test_native_empty_readings_is_a_valid_message(codec: Codec) -> None:
    d = codec.decode(GNSS, native([]), NOW)
    assert (d.readings, d.rejects) == ([], [])


def test_native_payload_with_surrounding_whitespace(codec: Codec) -> None:
    d = codec.decode(GNSS, b"  \n" + native([GOOD]) + b"\n", NOW)
    assert triples(d) == [("disp_e", T0930, 1.25)]


def test_negative_max_skew_is_refused(registry: Registry) -> None:
    with pytest.raises(ValueError, match="max_skew_s"):
        Codec(registry, max_skew_s=-1)


# -- SenML (RFC 8428) --------------------------------------------------------------------------


def test_senml_base_values_and_relative_times(codec: Codec) -> None:
    pack = [
        # bt < 2**28: relative to now (RFC 8428 §4.5.3); bv is added to every later v.
        {"bn": BN_GNSS, "bt": -600, "bu": "mm", "bv": 100.0, "n": "disp_e", "v": 1.5},
        {"n": "disp_n", "t": 300, "v": -2.0},  # bt + t = -300 -> now - 300
        {"n": "disp_u", "u": "mm", "t": -60.5, "v": 0},  # -660.5 -> now - 660.5
    ]
    d = codec.decode(GNSS, enc(pack), NOW)
    assert d.rejects == []
    assert triples(d) == [
        ("disp_e", NOW - 600, 101.5),
        ("disp_n", NOW - 300, 98.0),
        ("disp_u", NOW - 660.5, 100.0),
    ]
    assert (d.kind, d.site, d.device) == ("data", "BSH", "BSH-GNSS1")


def test_senml_absolute_base_time(codec: Codec) -> None:
    pack = [
        {"bn": BN_GNSS, "bt": T0930, "n": "disp_e", "u": "mm", "v": 12.31},
        {"n": "disp_e", "u": "mm", "t": 60, "v": 12.4},
        {"n": "disp_n", "u": "mm", "t": -1800, "v": -3.0},
        {"bt": utc(2026, 11, 29, 9, 0)},  # a base-only record changes bt for what follows
        {"n": "disp_u", "u": "mm", "v": 4.0},
    ]
    d = codec.decode(GNSS, enc(pack), NOW)
    assert d.rejects == []
    assert triples(d) == [
        ("disp_e", T0930, 12.31),
        ("disp_e", T0930 + 60, 12.4),
        ("disp_n", utc(2026, 11, 29, 9, 0), -3.0),
        ("disp_u", utc(2026, 11, 29, 9, 0), 4.0),
    ]


def test_senml_without_time_is_now(codec: Codec) -> None:
    d = codec.decode(GNSS, enc([{"bn": BN_GNSS, "n": "disp_e", "u": "mm", "v": 2.0}]), NOW)
    assert triples(d) == [("disp_e", NOW, 2.0)]


def test_senml_unit_from_bu_and_tilt_units(codec: Codec) -> None:
    pack = [
        {"bn": BN_TILT, "bu": "mrad", "n": "tilt_x", "v": 0.12, "t": -10},
        {"n": "tilt_y", "v": -0.05, "t": -10},
        {"n": "tilt_y", "u": "deg", "v": 0.1, "t": -5},  # a unit of kind tilt, but not this channel's
        {"n": "tilt_x", "u": "mm", "v": 0.1, "t": -5},
    ]
    d = codec.decode(TILT, enc(pack), NOW)
    assert triples(d) == [("tilt_x", NOW - 10, 0.12), ("tilt_y", NOW - 10, -0.05)]
    assert reasons(d) == ["unit_mismatch", "unit_mismatch"]
    assert [r.item for r in d.rejects] == [pack[2], pack[3]]


def test_senml_record_without_unit_is_a_mismatch(codec: Codec) -> None:
    # "u must match the registry's unit": a record with no u and no bu carries no unit.
    d = codec.decode(GNSS, enc([{"bn": BN_GNSS, "n": "disp_e", "v": 1.0}]), NOW)
    assert (triples(d), reasons(d)) == ([], ["unit_mismatch"])


def test_senml_string_bool_and_data_values_are_not_numeric(codec: Codec) -> None:
    pack = [
        {"bn": BN_GNSS, "bu": "mm", "n": "disp_e", "vs": "12.3"},
        {"n": "disp_n", "vb": True},
        {"n": "disp_u", "vd": "AAAA"},
        {"n": "disp_e", "v": "12.3"},
        {"n": "disp_e", "v": True},
        {"n": "disp_e", "v": None},
        {"n": "disp_n", "v": 3.5, "t": -1},
    ]
    d = codec.decode(GNSS, enc(pack), NOW)
    assert reasons(d) == ["not_numeric"] * 6
    assert triples(d) == [("disp_n", NOW - 1, 3.5)]


def test_senml_unknown_channel_and_bad_records_keep_the_good_ones(codec: Codec) -> None:
    pack = [
        {"bn": BN_GNSS, "bu": "mm"},
        {"n": "disp_e", "v": 1.0, "t": -30},
        {"n": "nope", "v": 1.0},
        17,
        {"n": "disp_n", "v": 2.0, "t": "2026-11-29T09:30:00Z"},  # SenML t is a number
        {"n": "disp_u", "v": 8.125e7},  # becomes 1e999 below: json.dumps cannot write it
        {"n": "disp_u", "v": 3.0, "t": 301},  # beyond max_skew_s
        {"n": "disp_u", "v": 3.0, "t": 300},
        {"v": 4.0},  # no n: no channel
        {"n": "disp_n", "v": 5.0, "t": -30},
    ]
    payload = enc(pack).replace(b"81250000.0", b"1e999")
    assert b"1e999" in payload
    d = codec.decode(GNSS, payload, NOW)
    assert triples(d) == [("disp_e", NOW - 30, 1.0), ("disp_u", NOW + 300, 3.0), ("disp_n", NOW - 30, 5.0)]
    assert reasons(d) == ["unknown_channel", "bad_shape", "bad_time", "not_finite", "bad_time", "bad_senml"]
    assert [r.item for r in d.rejects] == [pack[2], pack[3], pack[4], {"n": "disp_u", "v": math.inf}, pack[6], pack[8]]


def test_senml_absolute_time_from_2_pow_28_on(codec: Codec) -> None:
    # bt + t == 2**28 is an absolute time (1978-07-04), which is before 2000: clock not set.
    pack = [{"bn": BN_GNSS, "bu": "mm", "bt": 2**28, "n": "disp_e", "v": 1.0}]
    d = codec.decode(GNSS, enc(pack), NOW)
    assert (triples(d), reasons(d)) == ([], ["bad_time"])


def test_senml_bad_base_field_rejects_only_that_record(codec: Codec) -> None:
    pack = [
        {"bn": BN_GNSS, "bu": "mm"},
        {"bt": "yesterday", "n": "disp_e", "v": 1.0},
        {"bv": True, "n": "disp_e", "v": 1.0},
        {"bu": 5, "n": "disp_e", "v": 1.0},
        {"n": "disp_n", "v": 2.0, "t": -5},
    ]
    d = codec.decode(GNSS, enc(pack), NOW)
    assert reasons(d) == ["bad_senml", "bad_senml", "bad_senml"]
    assert triples(d) == [("disp_n", NOW - 5, 2.0)]


@pytest.mark.parametrize(
    "pack, reason",
    [
        pytest.param([{"bn": "urn:dev:geowarn:BSH-GNSS2:", "n": "disp_e", "u": "mm", "v": 1}], "device_mismatch", id="bn-other-device"),
        pytest.param([{"bn": "urn:dev:geowarn:XK-TLT1:", "n": "tilt_x", "u": "mrad", "v": 1}], "device_mismatch", id="bn-device-of-other-site"),
        pytest.param(
            [{"bn": BN_GNSS, "n": "disp_e", "u": "mm", "v": 1}, {"bn": "urn:dev:geowarn:BSH-GNSS2:", "n": "disp_e", "u": "mm", "v": 1}],
            "device_mismatch",
            id="bn-switches-device-mid-pack",
        ),
        pytest.param([{"n": "disp_e", "u": "mm", "v": 1}], "bad_senml", id="no-bn"),
        pytest.param([{"bt": -5}, {"n": "disp_e", "u": "mm", "v": 1}], "bad_senml", id="no-bn-after-base-record"),
        pytest.param([{"bn": "urn:dev:mac:0024befffe804ff1:", "n": "disp_e", "u": "mm", "v": 1}], "bad_senml", id="bn-other-urn"),
        pytest.param([{"bn": "urn:dev:geowarn:BSH-GNSS1", "n": "disp_e", "u": "mm", "v": 1}], "bad_senml", id="bn-no-colon"),
        pytest.param([{"bn": "urn:dev:geowarn:BSH-GNSS1:extra:", "n": "disp_e", "u": "mm", "v": 1}], "bad_senml", id="bn-extra-level"),
    ],
)
def test_senml_whole_pack_rejections(codec: Codec, pack: list, reason: str) -> None:
    assert payload_error(codec, GNSS, enc(pack)).reason == reason


def test_senml_empty_pack_and_base_only_pack(codec: Codec) -> None:
    for pack in ([], [{"bn": BN_GNSS, "bt": -5, "bu": "mm"}]):
        d = codec.decode(GNSS, enc(pack), NOW)
        assert (d.readings, d.rejects) == ([], [])


# -- whole-message rejections ----------------------------------------------------------------


@pytest.mark.parametrize(
    "payload, reason",
    [
        pytest.param(b"hello", "not_json", id="not-json"),
        pytest.param(b"", "not_json", id="empty"),
        pytest.param(b'{"v": 1, "device": "BSH-GNSS1", "readings": [', "not_json", id="truncated"),
        pytest.param(b"{'v': 1}", "not_json", id="single-quotes"),
        pytest.param(b'{"v":1,"device":"BSH-GNSS1","readings":[]} {}', "not_json", id="two-documents"),
        pytest.param(native([{"ch": "disp_e", "t": T0930, "v": 1.0}]).replace(b"1.0", b"1" * 4301), "not_json", id="int-4301-digits"),
        pytest.param(native([], seq=0).replace(b'"seq": 0', b'"seq": ' + b"9" * 5000), "not_json", id="seq-5000-digits"),
        pytest.param(b"42", "bad_shape", id="top-level-number"),
        pytest.param(b'"readings"', "bad_shape", id="top-level-string"),
        pytest.param(b"null", "bad_shape", id="top-level-null"),
        pytest.param(b"true", "bad_shape", id="top-level-bool"),
        pytest.param(enc({"v": 2, "device": "BSH-GNSS1", "readings": [GOOD]}), "bad_version", id="v2"),
        pytest.param(enc({"v": "1", "device": "BSH-GNSS1", "readings": [GOOD]}), "bad_version", id="v-string"),
        pytest.param(enc({"v": True, "device": "BSH-GNSS1", "readings": [GOOD]}), "bad_version", id="v-true"),
        pytest.param(enc({"v": None, "device": "BSH-GNSS1", "readings": [GOOD]}), "bad_version", id="v-null"),
        pytest.param(enc({"device": "BSH-GNSS1", "readings": [GOOD]}), "bad_version", id="v-missing"),
        pytest.param(b'{"v": 1e999, "device": "BSH-GNSS1", "readings": []}', "bad_version", id="v-1e999"),
        pytest.param(native([GOOD], device="BSH-GNSS2"), "device_mismatch", id="device-other-of-same-site"),
        pytest.param(native([GOOD], device="XK-TLT1"), "device_mismatch", id="device-of-other-site"),
        pytest.param(native([GOOD], device="bsh-gnss1"), "device_mismatch", id="device-case"),
        pytest.param(native([GOOD], device=None), "device_mismatch", id="device-null"),
        pytest.param(enc({"v": 1, "readings": [GOOD]}), "device_mismatch", id="device-missing"),
        pytest.param(native([GOOD], seq=-1), "bad_shape", id="seq-negative"),
        pytest.param(native([GOOD], seq=3.0), "bad_shape", id="seq-float"),
        pytest.param(native([GOOD], seq="3"), "bad_shape", id="seq-string"),
        pytest.param(native([GOOD], seq=True), "bad_shape", id="seq-bool"),
        pytest.param(native([GOOD], drill="true"), "bad_shape", id="drill-string"),
        pytest.param(native([GOOD], drill=1), "bad_shape", id="drill-int"),
        pytest.param(native([GOOD], drill=None), "bad_shape", id="drill-null"),
        pytest.param(enc({"v": 1, "device": "BSH-GNSS1"}), "bad_shape", id="readings-missing"),
        pytest.param(native({"ch": "disp_e", "t": T0930, "v": 1.0}), "bad_shape", id="readings-object"),  # type: ignore[arg-type]
        pytest.param(native(None), "bad_shape", id="readings-null"),  # type: ignore[arg-type]
        pytest.param(b"[" * 100_000, "too_deep", id="deep-arrays"),
        pytest.param(b'{"a":' * 50_000, "too_deep", id="deep-objects"),
        pytest.param(b'{"v":1,"device":"BSH-GNSS1","readings":[' + b"[" * 100_000, "too_deep", id="deep-readings"),
    ],
)
def test_native_whole_message_rejections(codec: Codec, payload: bytes, reason: str) -> None:
    err = payload_error(codec, GNSS, payload)
    assert err.reason == reason
    assert err.detail  # something a person can read


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"v": 1, "device": "BSH-GNSS1\xff", "readings": []}', id="0xff"),
        pytest.param(b'{"v": 1, "device": "\xc3(", "readings": []}', id="bad-continuation"),
        pytest.param(b'{"v": 1, "device": "\xc0\xaf", "readings": []}', id="overlong"),
        # A UTF-8-encoded surrogate (CESU-8) is not UTF-8 (RFC 3629 §3).
        pytest.param(b'{"v": 1, "device": "BSH-GNSS1", "readings": [], "x": "\xed\xa0\x80"}', id="encoded-surrogate"),
        # UTF-16 with its BOM starts with 0xFF 0xFE, which never occurs in UTF-8 (RFC 8259 §8.1).
        pytest.param(json.dumps({"v": 1, "device": "BSH-GNSS1", "readings": [GOOD]}).encode("utf-16"), id="utf-16"),
        pytest.param(json.dumps({"v": 1, "device": "BSH-GNSS1", "readings": [GOOD]}).encode("utf-32"), id="utf-32"),
    ],
)
def test_invalid_utf8_is_not_json(codec: Codec, payload: bytes) -> None:
    with pytest.raises(UnicodeDecodeError):
        payload.decode("utf-8")  # the premise: these bytes are not UTF-8
    assert payload_error(codec, GNSS, payload).reason == "not_json"


@pytest.mark.parametrize(
    "topic, reason",
    [
        ("other/BSH/BSH-GNSS1/data", "bad_topic"),
        ("geowarnx/BSH/BSH-GNSS1/data", "bad_topic"),
        ("/geowarn/BSH/BSH-GNSS1/data", "bad_topic"),
        ("GeoWarn/BSH/BSH-GNSS1/data", "bad_topic"),
        ("geowarn", "bad_topic"),
        ("geowarn/BSH/data", "bad_topic"),
        ("geowarn/BSH-GNSS1/data", "bad_topic"),
        ("geowarn/BSH/BSH-GNSS1", "bad_topic"),
        ("geowarn/BSH/BSH-GNSS1/data/extra", "bad_topic"),
        ("geowarn/BSH/BSH-GNSS1/data/", "bad_topic"),
        ("geowarn/x/BSH/BSH-GNSS1/data", "bad_topic"),
        ("geowarn/BSH/BSH-GNSS1/cmd", "bad_topic"),
        ("geowarn/BSH/BSH-GNSS1/Data", "bad_topic"),
        ("geowarn/BSH/BSH-GNSS1/", "bad_topic"),
        ("geowarn/NOPE/BSH-GNSS1/data", "unknown_site"),
        ("geowarn/bsh/BSH-GNSS1/data", "unknown_site"),
        ("geowarn//BSH-GNSS1/data", "unknown_site"),
        ("geowarn/BSH/BSH-NOPE/data", "unknown_device"),
        ("geowarn/BSH//data", "unknown_device"),
        ("geowarn/BSH/XK-TLT1/data", "wrong_site"),
        ("geowarn/XK/BSH-GNSS1/status", "wrong_site"),
        ("geowarn/BZM/BSH-EXT1/data", "wrong_site"),
    ],
)
def test_topic_rejections(codec: Codec, topic: str, reason: str) -> None:
    # The payload itself is right for BSH-GNSS1: only the topic is wrong.
    assert payload_error(codec, topic, native([GOOD])).reason == reason


def test_topic_prefix_is_configurable(registry: Registry) -> None:
    codec = Codec(registry, prefix="prov/hubei/")
    d = codec.decode("prov/hubei/BSH/BSH-GNSS1/data", native([GOOD]), NOW)
    assert triples(d) == [("disp_e", T0930, 1.25)]
    assert payload_error(codec, GNSS, native([GOOD])).reason == "bad_topic"


def test_payload_size_limit(registry: Registry) -> None:
    codec = Codec(registry, max_bytes=200)
    base = native([GOOD])
    assert len(base) < 200
    exact = base + b" " * (200 - len(base))  # JSON allows trailing whitespace
    assert triples(codec.decode(GNSS, exact, NOW)) == [("disp_e", T0930, 1.25)]
    err = payload_error(codec, GNSS, exact + b" ")
    assert err.reason == "too_large"
    assert "201" in err.detail


def test_payload_size_limit_is_checked_before_parsing(registry: Registry) -> None:
    codec = Codec(registry, max_bytes=1000)
    assert payload_error(codec, GNSS, b"[" * 1001).reason == "too_large"


def test_reading_count_limit(registry: Registry) -> None:
    codec = Codec(registry, max_readings=3)
    three = [{"ch": "disp_e", "t": T0930 + i, "v": float(i)} for i in range(3)]
    assert len(codec.decode(GNSS, native(three), NOW).readings) == 3
    four = three + [{"ch": "disp_e", "t": T0930 + 3, "v": 3.0}]
    assert payload_error(codec, GNSS, native(four)).reason == "too_many_readings"
    # A SenML pack counts records, base-only records included.
    pack = [{"bn": BN_GNSS, "bu": "mm"}] + [{"n": "disp_e", "t": -i, "v": 1.0} for i in range(3)]
    assert payload_error(codec, GNSS, enc(pack)).reason == "too_many_readings"
    merged = [{"bn": BN_GNSS, "bu": "mm", "n": "disp_e", "t": 0, "v": 1.0}] + pack[2:]
    assert len(codec.decode(GNSS, enc(merged), NOW).readings) == 3


def test_default_limits_carry_a_full_message(codec: Codec) -> None:
    readings = [{"ch": "disp_e", "t": T0930 - i, "v": i / 8} for i in range(2000)]
    d = codec.decode(GNSS, native(readings), NOW)
    assert len(d.readings) == 2000
    assert d.readings[-1][1:] == (T0930 - 1999, 1999 / 8)


# -- reading-level rejections: the reading goes, the message stays ------------------------------


@pytest.mark.parametrize(
    "bad, reason",
    [
        pytest.param({"ch": "nope", "t": T0930, "v": 1.0}, "unknown_channel", id="unknown-channel"),
        pytest.param({"ch": "tilt_x", "t": T0930, "v": 1.0}, "unknown_channel", id="channel-of-another-device"),
        pytest.param({"ch": "DISP_E", "t": T0930, "v": 1.0}, "unknown_channel", id="channel-case"),
        pytest.param({"ch": 5, "t": T0930, "v": 1.0}, "bad_shape", id="channel-not-string"),
        pytest.param({"ch": "disp_e", "t": T0930, "v": "12.3"}, "not_numeric", id="numeric-string"),
        pytest.param({"ch": "disp_e", "t": T0930, "v": True}, "not_numeric", id="bool-true"),
        pytest.param({"ch": "disp_e", "t": T0930, "v": False}, "not_numeric", id="bool-false"),
        pytest.param({"ch": "disp_e", "t": T0930, "v": None}, "not_numeric", id="null"),
        pytest.param({"ch": "disp_e", "t": T0930, "v": [1.0]}, "not_numeric", id="list"),
        pytest.param({"ch": "disp_e", "t": T0930, "v": {"value": 1.0}}, "not_numeric", id="object"),
        pytest.param({"ch": "disp_e", "t": T0930}, "bad_shape", id="missing-v"),
        pytest.param({"ch": "disp_e", "v": 1.0}, "bad_shape", id="missing-t"),
        pytest.param({"t": T0930, "v": 1.0}, "bad_shape", id="missing-ch"),
        pytest.param({}, "bad_shape", id="empty-object"),
        pytest.param(12.3, "bad_shape", id="reading-number"),
        pytest.param("disp_e", "bad_shape", id="reading-string"),
        pytest.param(["disp_e", T0930, 1.0], "bad_shape", id="reading-array"),
        pytest.param(None, "bad_shape", id="reading-null"),
        pytest.param({"ch": "disp_e", "t": "yesterday", "v": 1.0}, "bad_time", id="t-unparseable"),
        pytest.param({"ch": "disp_e", "t": "2026-11-29T09:30:00", "v": 1.0}, "bad_time", id="t-no-zone"),
        pytest.param({"ch": "disp_e", "t": "2026-11-29", "v": 1.0}, "bad_time", id="t-date-only"),
        pytest.param({"ch": "disp_e", "t": "2026-11-29T09:30Z", "v": 1.0}, "bad_time", id="t-no-seconds"),
        pytest.param({"ch": "disp_e", "t": "20261129T093000Z", "v": 1.0}, "bad_time", id="t-basic-format"),
        pytest.param({"ch": "disp_e", "t": "2026-11-29T09:30:00+0800", "v": 1.0}, "bad_time", id="t-offset-no-colon"),
        pytest.param({"ch": "disp_e", "t": "2026-02-30T09:30:00Z", "v": 1.0}, "bad_time", id="t-feb-30"),
        pytest.param({"ch": "disp_e", "t": "2026-11-29T25:00:00Z", "v": 1.0}, "bad_time", id="t-hour-25"),
        pytest.param({"ch": "disp_e", "t": " 2026-11-29T09:30:00Z", "v": 1.0}, "bad_time", id="t-leading-space"),
        pytest.param({"ch": "disp_e", "t": "1795944600", "v": 1.0}, "bad_time", id="t-numeric-string"),
        pytest.param({"ch": "disp_e", "t": True, "v": 1.0}, "bad_time", id="t-bool"),
        pytest.param({"ch": "disp_e", "t": None, "v": 1.0}, "bad_time", id="t-null"),
        pytest.param({"ch": "disp_e", "t": [T0930], "v": 1.0}, "bad_time", id="t-list"),
        pytest.param({"ch": "disp_e", "t": NOW + 300.001, "v": 1.0}, "bad_time", id="t-just-beyond-skew"),
        pytest.param({"ch": "disp_e", "t": NOW + 86400, "v": 1.0}, "bad_time", id="t-tomorrow"),
        pytest.param({"ch": "disp_e", "t": "2026-11-29T10:05:01Z", "v": 1.0}, "bad_time", id="t-rfc3339-beyond-skew"),
        pytest.param({"ch": "disp_e", "t": "2026-11-29T18:05:01+08:00", "v": 1.0}, "bad_time", id="t-offset-beyond-skew"),
        pytest.param({"ch": "disp_e", "t": NOW * 1000, "v": 1.0}, "bad_time", id="t-milliseconds"),
        pytest.param({"ch": "disp_e", "t": "1999-12-31T23:59:59Z", "v": 1.0}, "bad_time", id="t-before-2000"),
        pytest.param({"ch": "disp_e", "t": utc(2000, 1, 1) - 0.001, "v": 1.0}, "bad_time", id="t-epoch-before-2000"),
        pytest.param({"ch": "disp_e", "t": 0, "v": 1.0}, "bad_time", id="t-zero"),
        pytest.param({"ch": "disp_e", "t": -1.0, "v": 1.0}, "bad_time", id="t-negative"),
        pytest.param({"ch": "disp_e", "t": "0001-01-01T00:00:00+08:00", "v": 1.0}, "bad_time", id="t-year-1"),
        pytest.param({"ch": "disp_e", "t": "9999-12-31T23:59:59-08:00", "v": 1.0}, "bad_time", id="t-year-9999"),
    ],
)
def test_reading_rejections_keep_the_good_readings(codec: Codec, bad: object, reason: str) -> None:
    before = {"ch": "disp_n", "t": T0930, "v": -3.02}
    after = {"ch": "disp_u", "t": T0930 + 600, "v": 0.5}
    d = codec.decode(GNSS, native([before, bad, after]), NOW)
    assert triples(d) == [("disp_n", T0930, -3.02), ("disp_u", T0930 + 600, 0.5)]
    assert reasons(d) == [reason]
    assert d.rejects[0].item == bad
    assert d.rejects[0].detail


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_a_nan_or_infinity_literal_refuses_its_reading_and_keeps_the_others(codec: Codec, literal: bytes) -> None:
    """Not JSON (RFC 8259), but what a firmware writes for a failed sensor (Python's json.dumps
    does): the README promises ``not_finite`` for that reading, the message's good ones kept."""
    payload = (
        b'{"v": 1, "device": "BSH-GNSS1", "readings": [{"ch": "disp_e", "t": 1795944600, "v": ' + literal + b"}, "
        b'{"ch": "disp_n", "t": ' + literal + b', "v": 2.0}, {"ch": "disp_u", "t": 1795944600, "v": 3.5}]}'
    )
    d = codec.decode("geowarn/BSH/BSH-GNSS1/data", payload, NOW)
    assert [(i.channel, t, v) for i, t, v in d.readings] == [("disp_u", 1795944600.0, 3.5)]
    assert reasons(d) == ["not_finite", "bad_time"]


def test_value_1e999_overflows_to_inf_and_is_rejected(codec: Codec) -> None:
    payload = b'{"v": 1, "device": "BSH-GNSS1", "readings": [' \
        b'{"ch": "disp_e", "t": 1795944600, "v": 1e999}, ' \
        b'{"ch": "disp_n", "t": 1e999, "v": 1.0}, ' \
        b'{"ch": "disp_u", "t": 1795944600, "v": -1e999}, ' \
        b'{"ch": "disp_u", "t": 1795944600, "v": 2.5}]}'
    d = codec.decode(GNSS, payload, NOW)
    assert reasons(d) == ["not_finite", "bad_time", "not_finite"]
    assert triples(d) == [("disp_u", T0930, 2.5)]


def test_huge_integer_value_is_a_reject_not_a_crash(codec: Codec) -> None:
    # 10**400 has 401 digits: a valid JSON integer under Python's 4300-digit limit, but no float
    # can hold it. Like 1e999 it must become a reject, never an OverflowError.
    big = b"1" + b"0" * 400
    payload = b'{"v": 1, "device": "BSH-GNSS1", "readings": [' \
        b'{"ch": "disp_e", "t": 1795944600, "v": ' + big + b'}, ' \
        b'{"ch": "disp_u", "t": 1795944600, "v": 2.5}]}'
    d = codec.decode(GNSS, payload, NOW)
    assert reasons(d) == ["not_finite"]
    assert triples(d) == [("disp_u", T0930, 2.5)]


def test_huge_integer_time_is_a_reject_not_a_crash(codec: Codec) -> None:
    big = b"1" + b"0" * 400
    payload = b'{"v": 1, "device": "BSH-GNSS1", "readings": [' \
        b'{"ch": "disp_e", "t": ' + big + b', "v": 1.0}, ' \
        b'{"ch": "disp_u", "t": 1795944600, "v": 2.5}]}'
    d = codec.decode(GNSS, payload, NOW)
    assert reasons(d) == ["bad_time"]
    assert triples(d) == [("disp_u", T0930, 2.5)]


@pytest.mark.parametrize(
    "record, reason",
    [
        pytest.param('{"bt": %s, "n": "disp_e", "v": 1}', "bad_senml", id="bt"),
        pytest.param('{"bv": %s, "n": "disp_e", "v": 1}', "bad_senml", id="bv"),
        pytest.param('{"n": "disp_e", "v": %s}', "not_finite", id="v"),
        pytest.param('{"n": "disp_e", "t": %s, "v": 1}', "bad_time", id="t"),
    ],
)
def test_senml_huge_integers_are_rejects_not_crashes(codec: Codec, record: str, reason: str) -> None:
    big = "1" + "0" * 400
    payload = f'[{{"bn": "{BN_GNSS}", "bu": "mm"}}, {record % big}, {{"n": "disp_n", "t": -5, "v": 2.5}}]'
    d = codec.decode(GNSS, payload.encode(), NOW)
    assert reasons(d) == [reason]
    assert triples(d) == [("disp_n", NOW - 5, 2.5)]


def test_mixed_message_keeps_exactly_the_good_readings(codec: Codec) -> None:
    readings = [
        {"ch": "disp_e", "t": "2026-11-29T09:30:00Z", "v": 12.31},
        {"ch": "rain", "t": T0930, "v": 0.2},  # rain is a channel of BSH-RG1, not of this device
        {"ch": "disp_n", "t": "2026-11-29T17:30:00+08:00", "v": -3.02},
        {"ch": "disp_u", "t": T0930, "v": "4.1"},
        {"ch": "disp_u", "t": "2026-11-29T09:30:00", "v": 4.1},
        {"ch": "disp_u", "t": NOW + 3600, "v": 4.1},
        {"ch": "disp_e"},
        "disp_e=12.5",
        {"ch": "disp_u", "t": T0930 + 60, "v": 4.2},
    ]
    d = codec.decode(GNSS, native(readings, seq=9, drill=True), NOW)
    assert triples(d) == [("disp_e", T0930, 12.31), ("disp_n", T0930, -3.02), ("disp_u", T0930 + 60, 4.2)]
    assert d.rejects == [
        Reject("unknown_channel", d.rejects[0].detail, readings[1]),
        Reject("not_numeric", d.rejects[1].detail, readings[3]),
        Reject("bad_time", d.rejects[2].detail, readings[4]),
        Reject("bad_time", d.rejects[3].detail, readings[5]),
        Reject("bad_shape", d.rejects[4].detail, readings[6]),
        Reject("bad_shape", d.rejects[5].detail, readings[7]),
    ]
    assert (d.seq, d.drill) == (9, True)
    assert "rain" in d.rejects[0].detail


def test_skew_limit_follows_the_codec_setting(registry: Registry) -> None:
    strict = Codec(registry, max_skew_s=0.0)
    d = strict.decode(GNSS, native([{"ch": "disp_e", "t": NOW, "v": 1.0}, {"ch": "disp_e", "t": NOW + 0.5, "v": 2.0}]), NOW)
    assert triples(d) == [("disp_e", NOW, 1.0)]
    assert reasons(d) == ["bad_time"]


# -- status ----------------------------------------------------------------------------------


def test_status_good(codec: Codec) -> None:
    doc = {
        "device": "BSH-GNSS1",
        "battery_v": 12.6,
        "solar_v": 18.1,
        "signal_dbm": -85,
        "temp_c": -4.5,
        "sampling_s": 600,
        "fw": "1.4.2",
        "t": "2026-11-29T17:59:00+08:00",
        "uptime_s": 12345,  # not part of the contract: ignored
    }
    d = codec.decode(GNSS_STATUS, enc(doc), NOW)
    assert (d.kind, d.site, d.device, d.readings, d.rejects) == ("status", "BSH", "BSH-GNSS1", [], [])
    assert d.status == {
        "battery_v": 12.6,
        "solar_v": 18.1,
        "signal_dbm": -85,
        "temp_c": -4.5,
        "sampling_s": 600,
        "fw": "1.4.2",
        "t": utc(2026, 11, 29, 9, 59),
    }


def test_status_minimal_takes_the_ingest_time(codec: Codec) -> None:
    d = codec.decode(GNSS_STATUS, b"{}", NOW)
    assert d.status == {"t": NOW}
    d = codec.decode(GNSS_STATUS, enc({"battery_v": 3, "fw": 142}), NOW)
    assert d.status == {"battery_v": 3, "fw": "142", "t": NOW}


@pytest.mark.parametrize(
    "payload, reason",
    [
        pytest.param(enc({"device": "BSH-GNSS1", "battery_v": "12.6"}), "not_numeric", id="battery-string"),
        pytest.param(enc({"battery_v": True}), "not_numeric", id="battery-bool"),
        pytest.param(enc({"signal_dbm": None}), "not_numeric", id="signal-null"),
        pytest.param(enc({"sampling_s": [600]}), "not_numeric", id="sampling-list"),
        pytest.param(b'{"temp_c": 1e999}', "not_numeric", id="temp-inf"),
        pytest.param(b'{"solar_v": NaN}', "not_numeric", id="solar-NaN"),
        pytest.param(b'{"battery_v": 1' + b"0" * 400 + b"}", "not_numeric", id="battery-huge-int"),
        pytest.param(enc({"device": "BSH-GNSS2", "battery_v": 12.6}), "device_mismatch", id="device-other"),
        pytest.param(enc({"device": "XK-TLT1"}), "device_mismatch", id="device-other-site"),
        pytest.param(enc({"device": None}), "device_mismatch", id="device-null"),
        pytest.param(enc({"t": NOW + 3600}), "bad_time", id="t-future"),
        pytest.param(enc({"t": "2026-11-29T09:30:00"}), "bad_time", id="t-no-zone"),
        pytest.param(enc([{"battery_v": 12.6}]), "bad_shape", id="array"),
        pytest.param(b"12.6", "bad_shape", id="scalar"),
        pytest.param(b"not json", "not_json", id="not-json"),
    ],
)
def test_status_rejections(codec: Codec, payload: bytes, reason: str) -> None:
    assert payload_error(codec, GNSS_STATUS, payload).reason == reason


# -- property: nothing but PayloadError escapes, and every reading is finite ---------------------

_HUGE = 10**400  # fits under the 4300-digit limit, overflows a float

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([_HUGE, -_HUGE, 2**28, 2**63, -1, 0, 1e308, -1e308]),
    st.floats(),  # includes nan/inf: json.dumps writes them as NaN/Infinity literals
    st.floats(min_value=NOW - 86400, max_value=NOW + 600),  # plausible epoch times
    st.floats(min_value=-3600.0, max_value=3600.0),  # plausible SenML relative times
    st.text(max_size=8),
    st.sampled_from(["disp_e", "mm", "12.3", "2026-11-29T09:30:00Z", "2026-11-29T17:30:00+08:00", BN_GNSS]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
channel_names = st.sampled_from(["disp_e", "disp_n", "disp_u", "rain", "tilt_x", ""])
native_readings = st.fixed_dictionaries(
    {}, optional={"ch": channel_names | json_scalars, "t": json_scalars, "v": json_scalars}
)
native_docs = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, True, "1", None, 1.0]), "readings": st.lists(native_readings, max_size=4)},
    optional={
        "device": st.sampled_from(["BSH-GNSS1", "BSH-GNSS1", "BSH-GNSS2", ""]),
        "seq": json_scalars,
        "drill": json_scalars,
    },
)
senml_records = st.fixed_dictionaries(
    {},
    optional={
        "bn": st.sampled_from([BN_GNSS, BN_GNSS, "urn:dev:geowarn:BSH-GNSS2:", "x"]) | json_scalars,
        "bt": json_scalars,
        "bu": st.sampled_from(["mm", "m"]),
        "bv": json_scalars,
        "n": channel_names,
        "u": st.sampled_from(["mm", "mrad"]) | json_scalars,
        "t": json_scalars,
        "v": json_scalars,
        "vs": json_scalars,
        "vb": json_scalars,
    },
)
status_docs = st.fixed_dictionaries(
    {},
    optional={k: json_scalars for k in ("device", "battery_v", "signal_dbm", "fw", "t")},
)
topics = st.sampled_from([GNSS, GNSS, GNSS_STATUS, TILT, "geowarn/BSH/XK-TLT1/data", "geowarn/BSH/BSH-GNSS1"])


def _dump(doc: object) -> bytes:
    # surrogatepass: st.text may produce lone surrogates, which the codec must survive too.
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(_dump),
    native_docs.map(_dump),
    st.lists(senml_records, min_size=1, max_size=4).map(_dump),
    status_docs.map(_dump),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=topics, payload=payloads)
@example(topic=GNSS, payload=b'{"v":1,"device":"BSH-GNSS1","readings":[{"ch":"disp_e","t":1795944600,"v":1' + b"0" * 400 + b"}]}")
@example(topic=GNSS, payload=b'[{"bn":"urn:dev:geowarn:BSH-GNSS1:","bt":1' + b"0" * 400 + b',"n":"disp_e","u":"mm","v":1}]')
@example(topic=GNSS_STATUS, payload=b'{"battery_v":1' + b"0" * 400 + b"}")
def test_decode_raises_only_payload_error_and_yields_finite_readings(
    codec: Codec, topic: str, payload: bytes
) -> None:
    try:
        d = codec.decode(topic, payload, NOW)
    except PayloadError as exc:
        assert exc.reason and exc.detail
        return
    for info, t, v in d.readings:
        assert type(t) is float and type(v) is float
        assert math.isfinite(t) and math.isfinite(v)
        assert EARLIEST_T <= t <= NOW + codec.max_skew_s
        assert codec.registry.channel(d.site, d.device, info.channel) is info
    for r in d.rejects:
        assert r.reason and r.detail
    if d.kind == "status":
        assert d.readings == [] and d.status is not None
