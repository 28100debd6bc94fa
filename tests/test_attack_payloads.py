"""Property-based attack on ingest: hostile batches against a real Mosquitto and daemon (issue 13, item 8).

Hypothesis builds batches for the data topics of the example registry that mix good native
JSON v1 and SenML readings with hostile ones: lone surrogates (escaped in the JSON text),
deep nesting, huge and tiny numbers, wrong types, NaN/Infinity literals (a failed sensor's
value, refused alone as the README says), far-future and
pre-2000 times, unknown devices and channels, wrong units, truncated JSON, invalid UTF-8 and
empty payloads. The oracle here is our own reading of the README's station contract and a
hand copy of config/sites.example.toml; it never asks the codec what is good.

Properties, per batch: every good reading is in the journal exactly once (and nothing else);
every message with a refused reading, or refused whole, is exactly one dead letter with a
documented reason (in the journal and on MQTT); the daemon stays up and no worker restarts.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from daemonproc import Daemon, Recorder, publisher
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

# Hand copy of config/sites.example.toml: (site, device) -> {channel: unit}.
REGISTRY: dict[tuple[str, str], dict[str, str]] = {
    ("BSH", "BSH-GNSS1"): {"disp_e": "mm", "disp_n": "mm", "disp_u": "mm"},
    ("BSH", "BSH-GNSS2"): {"disp_e": "mm", "disp_n": "mm", "disp_u": "mm"},
    ("BSH", "BSH-EXT1"): {"disp": "mm", "battery": "V"},
    ("BSH", "BSH-RG1"): {"rain": "mm"},
    ("BSH", "BSH-PZ1"): {"pore_pressure": "kPa"},
    ("BZM", "BZM-GNSS1"): {"disp_e": "mm", "disp_n": "mm", "disp_u": "mm"},
    ("BZM", "BZM-EXT1"): {"disp": "mm"},
    ("BZM", "BZM-RG1"): {"rain": "mm"},
    ("XK", "XK-CRK1"): {"crack": "mm"},
    ("XK", "XK-TLT1"): {"tilt_x": "mrad", "tilt_y": "mrad"},
    ("XK", "XK-RG1"): {"rain": "mm", "soil_moisture": "%"},
}
DEVICES = sorted(REGISTRY)
# The README's reason codes; "poison" is not among them: a payload the contract describes must
# get its own reason, not crash the stage.
REASONS = {
    "device_mismatch", "wrong_site", "unknown_device", "unknown_site", "bad_topic", "not_json", "bad_shape",
    "bad_version", "bad_senml", "too_large", "too_deep", "too_many_readings", "unknown_channel", "not_numeric",
    "not_finite", "unit_mismatch", "bad_time",
    # A payload whose first byte is 1-4 reads as the national convention's frame header.
    "cn_frame", "cn_file", "cn_firmware", "cn_encrypted",
}  # fmt: skip
FENCE = ("XK", "XK-RG1", "soil_moisture")

SURROGATE = (
    '"\\ud800"'  # JSON text: valid UTF-8 on the wire, a lone surrogate once parsed
)
NOW = int(time.time())
T0 = (
    NOW - 5 * 86400
)  # good readings: whole seconds in the past, one second apart, never reused
FUTURE = NOW + 86400  # far beyond the 300 s skew allowance
PRE_2000 = 946684799  # 1999-12-31T23:59:59Z
HUGE_INT = "9" * 5000  # a JSON number; Python's json refuses integers over 4300 digits


def rfc3339(t: int, offset_h: int = 0) -> str:
    sign = "+" if offset_h >= 0 else "-"
    zone = "Z" if offset_h == 0 else f"{sign}{abs(offset_h):02d}:00"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t + 3600 * offset_h)) + zone


# Verdicts of one reading, and what they mean for its message.
GOOD, BAD, FATAL, MAYBE_FATAL = "good", "bad", "fatal", "maybe_fatal"


@dataclass
class Message:
    topic: str
    payload: bytes
    rows: set[tuple[Any, ...]] = field(default_factory=set)  # must be stored
    maybe_rows: set[tuple[Any, ...]] = field(default_factory=set)  # may be stored
    dead_letter: bool = False


class Batch:
    """Draws one batch; ``clock`` hands out unique good times across the whole test."""

    def __init__(self, data: st.DataObject, clock: itertools.count[int]) -> None:
        self.data = data
        self.clock = clock

    def draw(self, strategy: st.SearchStrategy[Any], label: str) -> Any:
        return self.data.draw(strategy, label=label)

    def good_time(self, native: bool) -> tuple[str, int]:
        t = T0 + next(self.clock)
        # SenML times are numbers (RFC 8428); native ones may also be RFC 3339 with a zone.
        fmt = self.draw(
            st.sampled_from(
                ["int", "float", "z", "offset"] if native else ["int", "float"]
            ),
            "time format",
        )
        token = {
            "int": str(t),
            "float": f"{t}.0",
            "z": json.dumps(rfc3339(t)),
            "offset": json.dumps(rfc3339(t, 8)),
        }[fmt]
        return token, t * 1000

    def good_value(self) -> tuple[str, float]:
        kind = self.draw(st.sampled_from(["float", "int", "literal"]), "value kind")
        if kind == "float":
            v = self.draw(st.floats(allow_nan=False, allow_infinity=False), "value")
            return json.dumps(v), v
        if kind == "int":
            i = self.draw(st.integers(-(10**15), 10**15), "value")
            return str(i), float(i)
        text, v = self.draw(
            st.sampled_from(
                [
                    ("-0", 0.0),
                    ("1e-400", 0.0),
                    ("5e-324", 5e-324),
                    ("1.7976931348623157e308", 1.7976931348623157e308),
                    ("1E2", 100.0),
                    ("-0.0", 0.0),
                ]
            ),
            "value literal",
        )
        return text, v

    def bad_field(self, native: bool) -> tuple[str, str, str | None, str]:
        """One hostile (field, token) for a reading; returns (field, token, unit override, verdict)."""
        options: list[tuple[str, str, str]] = [
            ("ch", '"no_such_channel"', BAD), ("ch", SURROGATE, BAD), ("ch", "7", BAD), ("ch", "null", BAD),
            ("v", '"12.3"', BAD), ("v", "true", BAD), ("v", "null", BAD), ("v", "[1]", BAD), ("v", '{"a": 1}', BAD),
            ("v", SURROGATE, BAD), ("v", "1e400", BAD), ("v", "-1e400", BAD), ("v", "9" * 401, BAD),
            ("v", "[" * 20 + "]" * 20, BAD),
            ("v", "NaN", BAD), ("v", "Infinity", BAD), ("v", "-Infinity", BAD), ("t", "NaN", BAD),
            ("v", HUGE_INT, MAYBE_FATAL), ("t", HUGE_INT, MAYBE_FATAL),
            ("t", str(FUTURE), BAD), ("t", str(PRE_2000), BAD), ("t", "1e400", BAD), ("t", "true", BAD), ("t", "null", BAD),
        ]  # fmt: skip
        if native:
            options += [
                ("t", json.dumps(rfc3339(FUTURE)), BAD), ("t", json.dumps(rfc3339(PRE_2000)), BAD),
                ("t", json.dumps(rfc3339(T0)[:-1]), BAD),  # no zone
                ("t", SURROGATE, BAD), ("t", '"yesterday"', BAD), ("t", "[]", BAD),
                ("t", "-0", BAD),  # 1970 (in SenML it would be a relative time: now)
                ("ch", "missing", BAD), ("v", "missing", BAD), ("t", "missing", BAD),
            ]  # fmt: skip
        else:
            options += [
                ("u", '"cm"', BAD), ("u", SURROGATE, BAD), ("u", "missing", BAD), ("u", "null", BAD),
                ("t", json.dumps(rfc3339(T0)), BAD),  # SenML times are numbers
                ("v", "vs", BAD),  # a string value instead of a number
            ]  # fmt: skip
        fld, token, verdict = self.draw(st.sampled_from(options), "hostile field")
        return fld, token, None, verdict

    def reading(
        self, site: str, device: str, native: bool, drill: bool
    ) -> tuple[str, str, tuple[Any, ...] | None]:
        """JSON text of one reading or SenML record, its verdict and its row if good."""
        chans = REGISTRY[(site, device)]
        ch = self.draw(st.sampled_from(sorted(chans)), "channel")
        t_tok, t_ms = self.good_time(native)
        v_tok, v = self.good_value()
        fields: dict[str, str] = {
            "ch" if native else "n": json.dumps(ch),
            "t": t_tok,
            "v": v_tok,
        }
        if not native:
            fields["u"] = json.dumps(chans[ch])
        if self.draw(st.booleans(), "extra member with a surrogate"):
            fields["note"] = (
                SURROGATE  # unknown members are not part of the contract's checks
            )
        verdict = GOOD
        if self.draw(st.integers(0, 2), "hostile?") == 0:
            fld, token, _, verdict = self.bad_field(native)
            key = {"ch": "ch" if native else "n"}.get(fld, fld)
            if token == "missing":
                fields.pop(key, None)
            elif token == "vs":
                fields.pop("v")
                fields["vs"] = '"12.3"'
            else:
                fields[key] = token
        text = "{" + ", ".join(f'"{k}": {tok}' for k, tok in fields.items()) + "}"
        row = (
            (site, device, ch, t_ms, v, int(drill))
            if verdict in (GOOD, MAYBE_FATAL)
            else None
        )
        return text, verdict, row

    def message(self) -> Message:
        site, device = self.draw(st.sampled_from(DEVICES), "device")
        native = self.draw(st.booleans(), "native?")
        drill = native and self.draw(st.booleans(), "drill")
        n = self.draw(st.integers(1, 5), "readings")
        parts = [self.reading(site, device, native, drill) for _ in range(n)]
        texts = [p[0] for p in parts]
        verdicts = {p[1] for p in parts}
        if native:
            head = f'"v": 1, "device": {json.dumps(device)}, "seq": 1, "drill": {json.dumps(drill)}'
            if self.draw(st.booleans(), "top-level surrogate member"):
                head += f', "note": {SURROGATE}'
            payload = "{" + head + ', "readings": [' + ", ".join(texts) + "]}"
        else:
            texts[0] = '{"bn": "urn:dev:geowarn:' + device + ':", ' + texts[0][1:]
            payload = "[" + ", ".join(texts) + "]"
        msg = Message(f"geowarn/{site}/{device}/data", payload.encode())
        rows = {p[2] for p in parts if p[1] == GOOD and p[2] is not None}
        msg.dead_letter = verdicts != {GOOD}
        if FATAL in verdicts:
            return msg  # the whole message is refused
        if MAYBE_FATAL in verdicts:
            msg.maybe_rows = rows  # a 5000-digit integer is JSON, but a reader may refuse the message
            return msg
        # Whole-message attacks on an otherwise well-formed message.
        attack = self.draw(
            st.sampled_from(
                ["none"] * 6
                + [
                    "truncate",
                    "bad_utf8",
                    "empty",
                    "deep",
                    "topic_device",
                    "topic_site",
                    "wrong_site",
                    "payload_device",
                    "bad_version",
                ]
            ),
            "message attack",
        )
        if attack == "none":
            msg.rows = rows
            return msg
        msg.dead_letter = True
        raw = msg.payload
        if attack == "truncate":
            msg.payload = raw[: self.draw(st.integers(0, len(raw) - 1), "cut at")]
        elif attack == "bad_utf8":
            at = self.draw(st.integers(0, len(raw)), "at")
            msg.payload = (
                raw[:at]
                + self.draw(
                    st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]),
                    "bytes",
                )
                + raw[at:]
            )
        elif attack == "empty":
            msg.payload = b""
        elif attack == "deep":
            msg.payload = (
                (b'{"v": 1, "device": "%s", "readings": ' % device.encode())
                + b"[" * 100_000
                + b"]" * 100_000
                + b"}"
            )
        elif attack == "topic_device":
            msg.topic = f"geowarn/{site}/{site}-NOPE/data"
        elif attack == "topic_site":
            msg.topic = f"geowarn/ZZZ/{device}/data"
        elif attack == "wrong_site":
            other = next(s for s, _ in DEVICES if s != site)
            msg.topic = f"geowarn/{other}/{device}/data"
        elif attack == "payload_device":
            if native:
                msg.payload = raw.replace(
                    f'"device": "{device}"'.encode(),
                    b'"device": ' + SURROGATE.encode(),
                    1,
                )
            else:
                msg.payload = raw.replace(
                    f"urn:dev:geowarn:{device}:".encode(),
                    b"urn:dev:geowarn:\\ud800:",
                    1,
                )
        elif attack == "bad_version":
            msg.payload = (
                raw.replace(b'"v": 1, "device"', b'"v": "1", "device"', 1)
                if native
                else b'{"v": 2, "readings": []}'
            )
        return msg


def test_hostile_batches_store_every_good_reading_once_and_dead_letter_every_bad_message(
    tmp_path, mosquitto
):
    d = Daemon(tmp_path / "data", mosquitto.url)
    d.start()
    dead = Recorder(mosquitto.url, ["geowarn/deadletter"])
    pub = publisher(mosquitto.url)
    clock = itertools.count()
    want: set[tuple[Any, ...]] = set()
    maybe: set[tuple[Any, ...]] = set()
    want_dead: Counter[str] = Counter()
    mqtt_dead: list[dict[str, Any]] = []

    def stored() -> list[tuple[Any, ...]]:
        return d.query(
            "SELECT s.site, s.device, s.channel, r.t_ms, r.value, r.drill FROM readings r JOIN series s ON s.id = r.series"
        )

    @settings(
        max_examples=15,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[
            Phase.explicit,
            Phase.generate,
        ],  # one daemon carries state across examples: no shrinking
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def attack(data: st.DataObject) -> None:
        batch = Batch(data, clock)
        msgs = [
            batch.message()
            for _ in range(data.draw(st.integers(1, 39), label="messages"))
        ]
        fence_t = (T0 + next(clock)) * 1000
        fence = Message(
            f"geowarn/{FENCE[0]}/{FENCE[1]}/data",
            json.dumps(
                {
                    "v": 1,
                    "device": FENCE[1],
                    "readings": [{"ch": FENCE[2], "t": fence_t / 1000, "v": 1.5}],
                }
            ).encode(),
        )
        fence.rows = {(*FENCE, fence_t, 1.5, 0)}
        for m in [*msgs, fence]:
            pub.publish(m.topic, m.payload, qos=1).wait_for_publish(10)
            want.update(m.rows)
            maybe.update(m.maybe_rows)
            want_dead[m.topic] += m.dead_letter
        # The fence is the last message; messages are stored in order.
        d.wait_until(
            lambda: (*FENCE, fence_t, 1.5, 0) in set(stored()),
            timeout=20,
            message="the fence reading",
        )
        d.wait_until(
            lambda: d.count("deadletters") >= sum(want_dead.values()),
            timeout=5,
            message="the dead letters",
        )
        time.sleep(0.2)  # a stray extra row or dead letter would show up here
        rows = stored()
        assert len(rows) == len(set(rows))
        assert want - set(rows) == set(), (
            f"good readings not stored: {sorted(want - set(rows))[:5]}"
        )
        assert set(rows) - want - maybe == set(), (
            f"stored but not good: {sorted(set(rows) - want - maybe)[:5]}"
        )
        letters = d.query("SELECT topic, reason, detail FROM deadletters")
        assert Counter(t for t, _, _ in letters) == +want_dead
        assert {r for _, r, _ in letters} <= REASONS, [
            x for x in letters if x[1] not in REASONS
        ][:3]
        assert all(detail for _, _, detail in letters)
        while True:
            try:
                mqtt_dead.extend(
                    json.loads(p) for _, p, _ in dead.take(1, timeout=0.05)
                )
            except TimeoutError:
                break
        assert len(mqtt_dead) == sum(want_dead.values())
        assert all(doc["reason"] in REASONS for doc in mqtt_dead)
        assert d.proc is not None and d.proc.poll() is None, d.log_tail()

    try:
        attack()
        assert "worker died" not in d.log_path.read_text(errors="replace"), d.log_tail()
        assert d.terminate() < 5.0
    finally:
        pub.loop_stop()
        dead.close()
        d.close()
