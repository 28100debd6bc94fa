"""The ingest daemon end to end, against a real Mosquitto and a real VictoriaMetrics.

Golden values are the readings the tests themselves publish; nothing is read back from the
code under test to build an expectation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemonproc import REPO, Daemon, Recorder, publisher

pytestmark = pytest.mark.slow

# Whole seconds, recent enough to pass the future-skew check and old enough to be in the past.
T0 = float(int(time.time()) - 2 * 86400)


def native(device: str, readings: list[tuple[str, object, object]], seq: int = 0, **extra: object) -> bytes:
    doc = {"v": 1, "device": device, "seq": seq, "readings": [{"ch": c, "t": t, "v": v} for c, t, v in readings]}
    doc.update(extra)
    return json.dumps(doc).encode()


@pytest.fixture
def daemon(tmp_path, mosquitto):
    d = Daemon(tmp_path / "data", mosquitto.url)
    d.start()
    yield d
    d.close()


def test_mixed_good_and_bad_payloads_give_exact_rows_and_dead_letters(tmp_path, mosquitto, victoria):
    d = Daemon(
        tmp_path / "data",
        mosquitto.url,
        extra_env={
            "GEOWARN_INFLUX_URL": victoria.url,
            "GEOWARN_INFLUX_TOKEN": "t",
            "GEOWARN_INFLUX_ORG": "geowarn",
            "GEOWARN_INFLUX_BUCKET": "geowarn",
        },
    )
    d.start()
    dead = Recorder(mosquitto.url, ["geowarn/deadletter"])
    pub = publisher(mosquitto.url)
    try:
        msgs = [
            # good native, epoch and RFC 3339 times; one bad reading (unknown channel) inside
            ("geowarn/BSH/BSH-GNSS1/data", native("BSH-GNSS1", [("disp_e", T0, 12.31), ("disp_n", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0)), -3.02), ("disp_x", T0, 1.0)])),
            # good SenML
            ("geowarn/BZM/BZM-EXT1/data", json.dumps([{"bn": "urn:dev:geowarn:BZM-EXT1:", "bt": T0, "n": "disp", "u": "mm", "v": 4.5}, {"n": "disp", "u": "mm", "t": 600, "v": 4.75}]).encode()),
            # whole-message rejects
            ("geowarn/BSH/BSH-GNSS1/data", b"not json at all"),
            ("geowarn/BSH/BSH-GNSS1/data", native("BSH-GNSS2", [("disp_e", T0, 1.0)])),  # speaks for another device
            ("geowarn/BZM/BSH-GNSS1/data", native("BSH-GNSS1", [("disp_e", T0, 1.0)])),  # wrong site
            ("geowarn/NOPE/X1/data", native("X1", [("disp_e", T0, 1.0)])),
            ("geowarn/BSH/BSH-GNSS1/data", b"[" * 200_000),  # deeply nested
            # a failed sensor's NaN literal: that reading is refused, the message's good one kept
            ("geowarn/BSH/BSH-GNSS1/data", b'{"v": 1, "device": "BSH-GNSS1", "readings": [{"ch": "disp_e", "t": %d, "v": NaN}, {"ch": "disp_u", "t": %d, "v": 0.5}]}' % (T0, T0)),
            # per-reading rejects next to a good reading
            ("geowarn/BSH/BSH-RG1/data", native("BSH-RG1", [("rain", T0, "12.3"), ("rain", T0 + 86400 * 10, 0.2), ("rain", T0 + 600, 0.4)])),
            # a repeat of the first good message stores nothing new
            ("geowarn/BSH/BSH-GNSS1/data", native("BSH-GNSS1", [("disp_e", T0, 12.31)])),
        ]
        for topic, payload in msgs:
            pub.publish(topic, payload, qos=1).wait_for_publish(10)
        expected = [
            ("BSH", "BSH-GNSS1", "disp_e", int(T0 * 1000), 12.31),
            ("BSH", "BSH-GNSS1", "disp_n", int(T0 * 1000), -3.02),
            ("BSH", "BSH-GNSS1", "disp_u", int(T0 * 1000), 0.5),
            ("BSH", "BSH-RG1", "rain", int(T0 * 1000) + 600_000, 0.4),
            ("BZM", "BZM-EXT1", "disp", int(T0 * 1000), 4.5),
            ("BZM", "BZM-EXT1", "disp", int(T0 * 1000) + 600_000, 4.75),
        ]
        # The rain gauge's message is one dead letter for its two bad readings (named by the
        # first of the commonest reasons), not one per reading.
        d.wait_until(lambda: d.count("deadletters") >= 8, message="8 dead letters")
        assert d.readings() == expected
        reasons = sorted(r for (r,) in d.query("SELECT reason FROM deadletters"))
        assert reasons == sorted(
            ["unknown_channel", "not_json", "device_mismatch", "wrong_site", "unknown_site", "too_deep", "not_finite", "not_numeric"]
        )
        got = [json.loads(p) for _, p, _ in dead.take(8)]
        assert sorted(g["reason"] for g in got) == reasons
        assert all(g["topic"].startswith("geowarn/") and "payload" in g for g in got)
        rain = next(g for g in got if g["reason"] == "not_numeric")
        assert rain["rejected"] == {"not_numeric": 1, "bad_time": 1} and rain["reading"]["v"] == "12.3"
        assert "2 of 3 readings rejected" in rain["detail"]
        deep = next(g for g in got if g["reason"] == "too_deep")
        assert deep["payload"] == "[" * 1024 and deep["truncated"] is True

        # The same readings reach VictoriaMetrics with the tags of DESIGN §7.
        series = victoria.wait_for_samples('{__name__=~"gnss_.*_value|displacement_value|rain_value"}', 6, timeout=30)
        samples = sorted(
            (s["metric"]["__name__"], s["metric"]["site"], s["metric"]["device"], s["metric"]["channel"], s["metric"]["admin"], ts, v)
            for s in series
            for ts, v in zip(s["timestamps"], s["values"])
        )
        assert samples == sorted(
            [
                ("gnss_e_value", "BSH", "BSH-GNSS1", "disp_e", "420527", int(T0 * 1000), 12.31),
                ("gnss_n_value", "BSH", "BSH-GNSS1", "disp_n", "420527", int(T0 * 1000), -3.02),
                ("gnss_u_value", "BSH", "BSH-GNSS1", "disp_u", "420527", int(T0 * 1000), 0.5),
                ("rain_value", "BSH", "BSH-RG1", "rain", "420527", int(T0 * 1000) + 600_000, 0.4),
                ("displacement_value", "BZM", "BZM-EXT1", "disp", "420527", int(T0 * 1000), 4.5),
                ("displacement_value", "BZM", "BZM-EXT1", "disp", "420527", int(T0 * 1000) + 600_000, 4.75),
            ]
        )
        assert d.terminate() < 5.0
    finally:
        pub.loop_stop()
        dead.close()
        d.close()


def test_mosquitto_pub_in_both_formats_shows_up_in_export(daemon, mosquitto):
    native_payload = json.dumps({"v": 1, "device": "XK-CRK1", "seq": 1, "readings": [{"ch": "crack", "t": T0, "v": 7.25}]})
    senml_payload = json.dumps([{"bn": "urn:dev:geowarn:XK-TLT1:", "n": "tilt_x", "u": "mrad", "t": T0, "v": 0.125}])
    for topic, payload in (("geowarn/XK/XK-CRK1/data", native_payload), ("geowarn/XK/XK-TLT1/data", senml_payload)):
        subprocess.run(
            ["mosquitto_pub", "-h", mosquitto.host, "-p", str(mosquitto.port), "-q", "1", "-t", topic, "-m", payload], check=True, timeout=10
        )
    daemon.wait_until(lambda: daemon.count() == 2, message="2 readings")
    env = dict(daemon.env)
    out = subprocess.run(
        [sys.executable, "-m", "geowarn.service.cli", "export", "--format", "csv", "--site", "XK"], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(T0))
    assert out.splitlines() == ["site,device,channel,t,value", f"XK,XK-CRK1,crack,{stamp},7.25", f"XK,XK-TLT1,tilt_x,{stamp},0.125"]
    jl = subprocess.run(
        [sys.executable, "-m", "geowarn.service.cli", "export", "--format", "jsonl", "--since", str(T0), "--until", str(T0 + 1)], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert [json.loads(line) for line in jl.splitlines()] == [
        {"site": "XK", "device": "XK-CRK1", "channel": "crack", "t": stamp, "value": 7.25},
        {"site": "XK", "device": "XK-TLT1", "channel": "tilt_x", "t": stamp, "value": 0.125},
    ]
    count = subprocess.run([sys.executable, "-m", "geowarn.service.cli", "export", "--count", "--site", "BSH"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert count.stdout.strip() == "0"


def test_sigkill_while_publishing_stores_every_reading_exactly_once(tmp_path, mosquitto):
    d = Daemon(tmp_path / "data", mosquitto.url)
    d.start()
    pub = publisher(mosquitto.url)
    n = 4000
    try:
        infos = []
        for i in range(n):
            infos.append(pub.publish("geowarn/BSH/BSH-EXT1/data", native("BSH-EXT1", [("disp", T0 + i, float(i))], seq=i), qos=1))
            if i == n // 3:
                d.wait_until(lambda: d.count() > 0, message="first readings")
                d.kill()  # mid-stream, while messages are in flight and unacked
        for info in infos:
            info.wait_for_publish(30)
        d.start()
        d.wait_until(lambda: d.count() >= n, timeout=60, message=f"{n} readings")
        rows = d.query("SELECT r.t_ms, r.value FROM readings r ORDER BY r.t_ms")
        assert rows == [(int((T0 + i) * 1000), float(i)) for i in range(n)]
        assert d.terminate() < 5.0
    finally:
        pub.loop_stop()
        d.close()


def test_broker_restart_daemon_reconnects_and_continues(daemon, mosquitto):
    pub = publisher(mosquitto.url, "pub-a")
    pub.publish("geowarn/BZM/BZM-EXT1/data", native("BZM-EXT1", [("disp", T0, 1.0)]), qos=1).wait_for_publish(10)
    daemon.wait_until(lambda: daemon.count() == 1, message="first reading")
    pub.loop_stop()
    mosquitto.restart()
    pub = publisher(mosquitto.url, "pub-b")
    try:
        for i in range(1, 50):
            pub.publish("geowarn/BZM/BZM-EXT1/data", native("BZM-EXT1", [("disp", T0 + i, 1.0 + i)], seq=i), qos=1).wait_for_publish(10)
        daemon.wait_until(lambda: daemon.count() == 50, timeout=60, message="50 readings after the broker restart")
        assert [v for _, _, _, _, v in daemon.readings()] == [1.0 + i for i in range(50)]
    finally:
        pub.loop_stop()


def test_forwarder_catches_up_after_victoriametrics_outage_nothing_lost_or_doubled(tmp_path, mosquitto):
    from services import VictoriaMetrics

    # Deduplication off: a batch written twice would show up twice here.
    vm = VictoriaMetrics(tmp_path / "vm", extra_args=["-dedup.minScrapeInterval=0s"])
    vm.start()
    d = Daemon(
        tmp_path / "data",
        mosquitto.url,
        extra_env={"GEOWARN_INFLUX_URL": vm.url, "GEOWARN_INFLUX_BUCKET": "b", "GEOWARN_INFLUX_ORG": "o", "GEOWARN_FORWARD_BATCH": "50", "GEOWARN_STATS_INTERVAL_S": "0.5"},
    )
    pub = publisher(mosquitto.url)
    try:
        d.start()
        for i in range(100):
            pub.publish("geowarn/BSH/BSH-EXT1/data", native("BSH-EXT1", [("disp", T0 + i, float(i))], seq=i), qos=1).wait_for_publish(10)
        vm.wait_for_samples("displacement_value", 100, timeout=30)
        vm.stop()
        for i in range(100, 600):
            pub.publish("geowarn/BSH/BSH-EXT1/data", native("BSH-EXT1", [("disp", T0 + i, float(i))], seq=i), qos=1).wait_for_publish(10)
        d.wait_until(lambda: d.count() == 600, message="600 readings in the journal")
        # The forwarder fails against the stopped server and reports its lag.
        d.wait_until(lambda: "InfluxDB write failed" in d.log_tail(200), message="a failed write")
        d.wait_until(lambda: "forwarder_lag_readings=500" in d.log_tail(200), message="the lag reported")
        vm.start()
        series = vm.wait_for_samples("displacement_value", 600, timeout=60)
        assert len(series) == 1
        assert series[0]["timestamps"] == [int((T0 + i) * 1000) for i in range(600)]
        assert series[0]["values"] == [float(i) for i in range(600)]
    finally:
        pub.loop_stop()
        d.close()
        vm.stop()


def test_a_moving_slope_raises_an_alert_on_mqtt_and_in_alerts_jsonl(daemon, mosquitto):
    rec = Recorder(mosquitto.url, ["geowarn/alerts/#"])
    pub = publisher(mosquitto.url)
    try:
        # The extensometer and a GNSS receiver move 200 mm/day for 12 h at 10-min readings:
        # above red (120 mm/day), confirmed by two independent devices.
        start = T0 - 12 * 3600
        for i in range(73):
            t = start + i * 600
            d = 200.0 * i * 600 / 86400
            pub.publish("geowarn/BSH/BSH-EXT1/data", native("BSH-EXT1", [("disp", t, d)], seq=i), qos=1).wait_for_publish(10)
            pub.publish("geowarn/BSH/BSH-GNSS1/data", native("BSH-GNSS1", [("disp_e", t, d * 0.8)], seq=i), qos=1).wait_for_publish(10)
        daemon.wait_until(lambda: daemon.count() == 146, message="146 readings")
        # The readings are two days old by the wall clock, so the devices are also reported
        # silent (kind nodata); the level events are what this test is about.
        event = {}
        while event.get("kind") != "raise":
            topic, payload, _ = rec.take(1)[0]
            event = json.loads(payload)
        assert topic == "geowarn/alerts/420527/BSH"
        assert event["site"] == "BSH" and event["kind"] == "raise" and event["previous_level"] == 0
        assert event["exercise"] is False
        # Detection runs in its own process: wait for it to judge the last readings.
        alerts = daemon.data_dir / "alerts.jsonl"
        daemon.wait_until(lambda: '"colour": "red"' in alerts.read_text(), message="the red event")
        lines = [json.loads(x) for x in alerts.read_text().splitlines()]
        assert any(x["id"] == event["id"] for x in lines)
        lines = [x for x in lines if x["kind"] not in ("nodata", "nodata_end")]
        assert max(x["level"] for x in lines) == 4 and lines[-1]["colour"] == "red"
        assert "confirmed by 2 devices (BSH-EXT1, BSH-GNSS1)" in lines[-1]["reason"]
        assert set(lines[0]) >= {"id", "t", "site", "level", "colour", "previous_level", "kind", "reason", "forecast", "exercise"}
    finally:
        pub.loop_stop()
        rec.close()


HOSTILE = [
    b"",
    b"\xff\xfe\x00garbage",
    b"null",
    b"42",
    b'"a string"',
    b"{}",
    b"[1]",
    b'{"v": 2, "device": "BSH-EXT1", "readings": []}',
    b'{"v": true, "device": "BSH-EXT1", "readings": []}',
    b'{"v": 1, "device": "BSH-EXT1", "readings": {"ch": "disp"}}',
    b'{"v": 1, "device": "BSH-EXT1", "readings": [], "seq": -1}',
    b'{"v": 1, "device": "BSH-EXT1", "readings": [], "drill": "yes"}',
    b'{"v": 1, "device": "BSH-EXT1", "readings": [{"ch": "disp", "t": 1e999, "v": 1}]}',
    b'{"v": 1, "device": "BSH-EXT1", "readings": [{"ch": "disp", "t": 1764408600, "v": 1e999}]}',
    b'{"v": 1, "device": "BSH-EXT1", "readings": [{"ch": "disp", "t": 1764408600, "v": ' + b"9" * 5000 + b"}]}",
    b'{"v": 1, "device": "BSH-EXT1", "readings": [{"ch": "disp", "t": "yesterday", "v": 1}]}',
    b'{"v": 1, "device": "BSH-EXT1", "readings": [{"ch": "disp", "t": "2026-11-29T09:30:00", "v": 1}]}',
    b'{"v": 1, "device": "BSH-EXT1", "readings": [{"ch": "disp", "t": 0, "v": 1}]}',
    b'{"v": 1, "device": "BSH-EXT1", "readings": [{"ch": ["disp"], "t": 1764408600, "v": 1}]}',
    b'{"v": 1, "device": "BSH-EXT1", "readings": [{"ch": "disp", "t": 1764408600, "v": null}]}',
    b'{"v": 1, "device": "BSH-EXT1", "readings": [{"ch": "disp", "t": 1764408600, "v": false}]}',
    b'{"v": 1, "device": "BSH-EXT1", "readings": [[1, 2, 3]]}',
    b'[{"n": "disp", "v": 1}]',
    b'[{"bn": "urn:dev:geowarn:BSH-GNSS1:", "n": "disp", "u": "mm", "v": 1}]',
    b'[{"bn": "urn:dev:geowarn:BSH-EXT1:", "n": "disp", "u": "m", "v": 1}]',
    b'[{"bn": "urn:dev:geowarn:BSH-EXT1:", "n": "disp", "u": "mm", "vs": "1"}]',
    b'{"a": ' * 30_000 + b"1" + b"}" * 30_000,  # deep, and under the size limit
    b"[" * 200_000,
    b'{"v": 1, "device": "BSH-EXT1", "readings": [' + b",".join([b"{}"] * 10_001) + b"]}",
    b" " * 2_000_000,  # over the size limit: rejected unread
]


def test_hostile_payloads_are_all_dead_lettered_and_the_daemon_keeps_going(daemon, mosquitto):
    pub = publisher(mosquitto.url)
    try:
        for payload in HOSTILE:
            pub.publish("geowarn/BSH/BSH-EXT1/data", payload, qos=1).wait_for_publish(10)
        # Hostile topics too: unknown site and device, wrong last level, extra levels.
        for topic in ("geowarn/BSH/BSH-EXT1/data/more", "geowarn/BSH/BSH-EXT1/nonsense", "geowarn/ZZZ/BSH-EXT1/status"):
            pub.publish(topic, native("BSH-EXT1", [("disp", T0, 1.0)]), qos=1).wait_for_publish(10)
        pub.publish("geowarn/BSH/BSH-EXT1/status", b'{"device": "BSH-EXT1", "battery_v": "12.4"}', qos=1).wait_for_publish(10)
        pub.publish("geowarn/BSH/BSH-EXT1/data", native("BSH-EXT1", [("disp", T0, 42.0)]), qos=1).wait_for_publish(10)
        daemon.wait_until(lambda: daemon.count() == 1, timeout=60, message="the good reading after the hostile ones")
        # Dead letters: one per hostile data payload (the 10 001-reading message is rejected
        # whole, not reading by reading), plus the status one. The subscriptions only cover
        # .../data and .../status, so the two malformed topics never reach the daemon;
        # ZZZ is an unknown site.
        assert daemon.count("deadletters") == len(HOSTILE) + 2
        assert daemon.readings() == [("BSH", "BSH-EXT1", "disp", int(T0 * 1000), 42.0)]
        reasons = {r for (r,) in daemon.query("SELECT reason FROM deadletters")}
        assert reasons >= {"not_json", "bad_shape", "bad_version", "bad_time", "not_numeric", "too_deep", "too_large", "too_many_readings", "unit_mismatch", "device_mismatch", "unknown_site", "bad_senml"}
        assert "poison" not in reasons and "internal_error" not in reasons
        assert daemon.terminate() < 5.0
    finally:
        pub.loop_stop()


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_a_restart_mid_warning_neither_repeats_nor_forgets_a_warning(tmp_path, mosquitto, stop):
    """The same readings through a daemon that is stopped halfway give the same level events
    as an uninterrupted replay of them (the replay shares the fusion code; restart
    invariance is what is tested)."""
    from geowarn.config.settings import load_all
    from geowarn.ingest.feeds import FeedRow
    from geowarn.service.replay import replay_rows

    d = Daemon(tmp_path / "data", mosquitto.url, extra_env={"GEOWARN_SNAPSHOT_INTERVAL_S": "0.5"})
    d.start()
    pub = publisher(mosquitto.url)
    start = T0 - 20 * 3600
    rows = []
    try:
        for i in range(121):
            t = start + i * 600
            disp = 200.0 * i * 600 / 86400
            for dev, ch in (("BSH-EXT1", "disp"), ("BSH-GNSS1", "disp_e")):
                rows.append(FeedRow("BSH", dev, ch, t, disp))
                pub.publish(f"geowarn/BSH/{dev}/data", native(dev, [(ch, t, disp)], seq=i), qos=1).wait_for_publish(10)
            if i == 60:
                d.wait_until(lambda: d.count() == 122, message="half the readings")
                if stop == "sigterm":
                    d.terminate()
                else:
                    d.kill()
                d.start()
        d.wait_until(lambda: d.count() == 242, message="all readings")
        d.terminate()
    finally:
        pub.loop_stop()
        d.close()
    live = [json.loads(x) for x in (d.data_dir / "alerts.jsonl").read_text().splitlines()]
    live = [(e["t"], e["kind"], e["level"]) for e in live if e["kind"] not in ("nodata", "nodata_end")]
    ref = replay_rows(rows, load_all().registry, tmp_path / "replay")
    expected = [(e["t"], e["kind"], e["level"]) for e in ref.events if e["kind"] not in ("nodata", "nodata_end")]
    assert live == expected
    assert max(level for _, _, level in live) == 4
