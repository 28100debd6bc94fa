"""Commands in the national convention's own form (issue 15 item 6) and simulated convention
devices (item 7): translation and answer parsing against the firmware's documented examples,
the outbox's matching of answers to commands, and end to end a simulated slope of convention
devices through a real Mosquitto and a real daemon to red, its devices switched to accelerated
sampling by ``$cmd=setsensortime`` on ``$creq/{code}/cmd`` and their ``result=succ`` recorded.

Golden strings are the firmware's own comments (a public universal-device firmware,
``cigemPacket.c``/``cigemPacket.h``): ``$cmd=setsensortime&sensor_id=L3_TW_2&sample_intv=300&upload_intv=900&plus_intv=600``,
``&apikey=e7eb73db9cc982caeb1f&msgid=B6ZmaDbzA`` appended by the platform, answers
``$cmd=settime&result=succ`` plus ``&apikey=6767377eb9e5ee17385e&msgid=1N9V4h_hR``.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from geowarn.alerts.live import COMMAND_KEY, OutboxSink
from geowarn.alerts.model import SetSampling
from geowarn.alerts.outbox import Outbox
from geowarn.config.registry import load_registry
from geowarn.ingest.commands_cn import CommandError, msgid_for, parse_answer, setsensortime
from geowarn.simulators.engine import Simulation
from geowarn.simulators.publish import LiveRun, live_start
from geowarn.simulators.scenario import load_scenario

from daemonproc import Daemon

SITES = """
[[sites]]
site = "SP"
name = "树坪"
admin = "420527"
lat = 30.99
lon = 110.61

[[sites.devices]]
device = "SP-U1"
code = "SK11E80D1307426AZ"
channels = [
  { channel = "crack", kind = "crack", interval_s = 600, source = "L1_LF_1" },
  { channel = "tilt_x", kind = "tilt", unit = "deg", interval_s = 1800, source = "L1_QJ_1.X" },
  { channel = "tilt_y", kind = "tilt", unit = "deg", interval_s = 1800, source = "L1_QJ_1.Y" },
]

[[sites.devices]]
device = "SP-EXT"
channels = [{ channel = "disp", kind = "displacement", interval_s = 300 }]
"""


def test_setsensortime_is_written_as_the_firmware_reads_it():
    assert (
        setsensortime("L3_TW_2", 300, 900, 600, "B6ZmaDbzA", "e7eb73db9cc982caeb1f")
        == "$cmd=setsensortime&sensor_id=L3_TW_2&sample_intv=300&upload_intv=900&plus_intv=600&apikey=e7eb73db9cc982caeb1f&msgid=B6ZmaDbzA"
    )
    # Whole seconds, rounded up, within the firmware's ranges (1-86400, upload up to 259200).
    assert setsensortime("L1_LF_1", 59.2, 300000, 0.2, "m") == "$cmd=setsensortime&sensor_id=L1_LF_1&sample_intv=60&upload_intv=259200&plus_intv=1&msgid=m"
    with pytest.raises(ValueError):
        setsensortime("S1_ZT_1", 60, 60, 60, "m")
    # 32 hex digits of the SHA-256 of the command's id: stable, and short enough for the
    # firmware's 47-character msgid buffer.
    assert msgid_for("a/b") == hashlib.sha256(b"a/b").hexdigest()[:32]


def test_answers_are_parsed_and_anything_else_refused():
    a = parse_answer(b"$cmd=settime&result=succ&apikey=6767377eb9e5ee17385e&msgid=1N9V4h_hR")
    assert (a.cmd, a.result, a.msgid, a.ok) == ("settime", "succ", "1N9V4h_hR", True)
    b = parse_answer("$cmd=setsensortime&result=fail")
    assert (b.cmd, b.ok, b.msgid) == ("setsensortime", False, None)
    for bad in [b"", b"{}", b"$cmd=reqtime&time=2026-01-01 00:00:00", b"$cmd=x&result=maybe", b"\xff\xfe", b"$cmd=x&result=succ&" + b"k=v&" * 40,
                b"$cmd=x&bad key=1&result=succ", b"$cmd=" + b"x" * 3000]:
        with pytest.raises(CommandError):
            parse_answer(bad)


def test_a_convention_device_gets_its_own_form_and_its_answer_is_matched(tmp_path):
    sites = tmp_path / "sites.toml"
    sites.write_text(SITES, encoding="utf-8")
    registry = load_registry(sites)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    sink = OutboxSink(outbox, tmp_path / "cap")

    class Chain:
        pass

    chain = Chain()
    chain.registry, chain.zero_last, chain.raised = registry, {}, []
    sink.carry_out(chain, None, None, (SetSampling("SP", 60.0, "warning red", 1000.0, False, "w1"),), {})  # type: ignore[arg-type]
    sink.carry_out(chain, None, None, (SetSampling("SP", None, "lifted", 2000.0, False, "w2"),), {})  # type: ignore[arg-type]
    cmds = {i.id: i.msg for i in outbox.items() if i.notifier == COMMAND_KEY}
    lf, qj = cmds[f"w1/SP-U1/L1_LF_1/{COMMAND_KEY}"], cmds[f"w1/SP-U1/L1_QJ_1/{COMMAND_KEY}"]
    m_lf = msgid_for(f"w1/SP-U1/L1_LF_1/{COMMAND_KEY}")
    assert lf.body["topic"] == "$creq/SK11E80D1307426AZ/cmd"
    assert lf.body["payload"] == f"$cmd=setsensortime&sensor_id=L1_LF_1&sample_intv=60&upload_intv=60&plus_intv=60&msgid={m_lf}"
    assert qj.body["payload"].startswith("$cmd=setsensortime&sensor_id=L1_QJ_1&sample_intv=60&")
    # Back: each sensor to its own channels' normal interval (the crack meter 600 s, the
    # tiltmeter 1800 s, not the device's fastest); plus_intv at most the firmware's 300 s.
    back = cmds[f"w2/SP-U1/L1_LF_1/{COMMAND_KEY}"]
    assert back.body["payload"].startswith("$cmd=setsensortime&sensor_id=L1_LF_1&sample_intv=600&upload_intv=600&plus_intv=300&msgid=")
    back_qj = cmds[f"w2/SP-U1/L1_QJ_1/{COMMAND_KEY}"]
    assert back_qj.body["payload"].startswith("$cmd=setsensortime&sensor_id=L1_QJ_1&sample_intv=1800&upload_intv=1800&plus_intv=300&msgid=")
    # A drill sends the convention device nothing (its command cannot say "drill"); the native
    # device gets its drill-marked JSON.
    sink.carry_out(chain, None, None, (SetSampling("SP", 60.0, "drill red", 3000.0, True, "d1"),), {})  # type: ignore[arg-type]
    drill = [i.id for i in outbox.items() if i.id.startswith("d1/")]
    assert drill == [f"d1/SP-EXT/{COMMAND_KEY}"]
    # The native device keeps GeoWarn's JSON on its own topic.
    native = cmds[f"w1/SP-EXT/{COMMAND_KEY}"]
    assert native.body["topic"] == "geowarn/SP/SP-EXT/cmd" and json.loads(native.body["payload"])["cmd"] == "set_sampling"
    assert len(cmds) == 6
    # The answer of another command that echoes our msgid is not this command's.
    assert outbox.record_answer(m_lf, "reboot", "succ", 1000.5) is None

    # An answer is recorded against the command whose msgid it echoes; an unknown msgid is not.
    assert outbox.record_answer(m_lf, "setsensortime", "succ", 1001.0) == f"w1/SP-U1/L1_LF_1/{COMMAND_KEY}"
    assert outbox.record_answer("nobody", "setsensortime", "succ", 1001.0) is None
    assert outbox.record_answer(None, "setsensortime", "succ", 1001.0) is None
    from geowarn.alerts.outbox import OutboxReader

    answers = OutboxReader(tmp_path / "outbox.sqlite").command_answers()
    assert answers == {f"w1/SP-U1/L1_LF_1/{COMMAND_KEY}": {"cmd": "setsensortime", "result": "succ", "t": 1001.0, "msgid": m_lf}}
    outbox.close()

    # The console shows each device's latest command and its answer (None: not answered yet).
    from geowarn.console.views import Views

    views = Views(tmp_path, registry)
    devices: dict = {"SP-U1": {}, "SP-EXT": {}}
    views._add_commands("SP", devices)
    assert devices["SP-U1"]["last_command"]["cmd"] == "setsensortime" and devices["SP-U1"]["last_command"]["interval_s"] in (600.0, 1800.0)
    assert devices["SP-U1"]["last_command"]["result"] is None  # the restore was not answered
    assert devices["SP-EXT"]["last_command"]["cmd"] == "set_sampling" and devices["SP-EXT"]["last_command"]["result"] is None


def test_device_health_names_faulty_sensors():
    from geowarn.console.views import device_health

    status = {"battery_v": 12.6, "solar_v": 18.2, "temp_c": 21.5, "signal_4g": -71, "fw": "V2.3.1", "siren_state": 0,
              "sensor_state": {"L1_LF_1": 0, "L1_QJ_1": -2}, "unknown": {"vendor_x": 7}, "t": 1.0}
    assert device_health(status) == {"battery_v": 12.6, "solar_v": 18.2, "temp_c": 21.5, "signal_4g": -71, "fw": "V2.3.1",
                                     "siren_state": 0, "faulty_sensors": ["L1_QJ_1"]}
    assert device_health(None) is None


def test_a_simulated_convention_device_obeys_and_answers(tmp_path):
    sc = load_scenario("cn_failure")
    sim = Simulation(sc, sc.registry(), duration_s=6 * 3600.0)
    sim.emit_until(sim.t0 + 3600.0)
    conv = sim.convention
    topic, reply, entry = conv.obey(sim, "$creq/SK11E80D1307426AZ/cmd", b"$cmd=setsensortime&sensor_id=L1_LF_1&sample_intv=60&upload_intv=60&plus_intv=60&msgid=abc", sim.t0 + 3600.0)
    assert (topic, reply) == ("$dr", b"$cmd=setsensortime&result=succ&msgid=abc")
    assert entry["ok"] and entry["device"] == "SP-U1" and entry["interval_s"] == 60.0
    later = [m for m in sim.emit_until(sim.t0 + 7200.0) if m.kind == "data" and b"L1_LF_1" in m.payload]
    assert len(later) >= 50  # one a minute now, not one in ten
    _, bad, e2 = conv.obey(sim, "$creq/SK11E80D1307426AZ/cmd", b"$cmd=setsensortime&sensor_id=L1_QJ_9&sample_intv=60&upload_intv=60&plus_intv=60&msgid=d", sim.t0)
    assert bad == b"$cmd=setsensortime&result=fail&msgid=d" and not e2["ok"]


@pytest.mark.slow
def test_a_simulated_convention_slope_reaches_red_and_its_devices_answer_setsensortime(tmp_path, mosquitto):
    sc = load_scenario("cn_failure")
    registry = sc.registry()
    sites = Path(sc.source).parent / sc.sites
    duration = 14 * 86400.0
    speed = duration / 120.0  # 14 days in two minutes of wall time
    sim = Simulation(sc, registry, t0=live_start(duration, speed), duration_s=duration)
    daemon = Daemon(tmp_path / "data", mosquitto.url, extra_env={"GEOWARN_SITES": str(sites), "GEOWARN_CN_TOPICS": "$dp"})
    daemon.start()
    run = LiveRun(sim, mosquitto.url, speed=speed, progress=False, client_id="cn-slope")
    done = threading.Event()
    th = threading.Thread(target=lambda: (run.run(), done.set()), daemon=True)
    th.start()
    outbox = tmp_path / "data" / "outbox.sqlite"

    def answered_red() -> list[tuple[str, str]]:
        if not outbox.exists():
            return []
        with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
            return db.execute(
                "SELECT o.id, json_extract(s.value, '$.result') FROM outbox o JOIN state s ON s.key = 'cmd.answer/' || o.id "
                "WHERE o.notifier = 'mqtt/cmd' AND json_extract(o.payload, '$.body.interval_s') = 60"
            ).fetchall()

    try:
        daemon.wait_until(lambda: len(answered_red()) >= 2, timeout=200, message="both devices' answers to the red-level setsensortime")
        assert done.wait(60)
        got = dict(answered_red())
        assert set(got.values()) == {"succ"}
        assert {i.split("/")[1] + "/" + i.split("/")[2] for i in got} >= {"SP-U1/L1_LF_1", "SP-G1/L1_GP_1"}
        with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
            sent = [json.loads(p)["body"] for (p,) in db.execute("SELECT payload FROM outbox WHERE notifier = 'mqtt/cmd' AND state = 'sent'")]
        red = [b for b in sent if b.get("interval_s") == 60]
        assert {b["topic"] for b in red} == {"$creq/SK11E80D1307426AZ/cmd", "$creq/SK11E80D1307427GP/cmd"}
        assert all(b["payload"].startswith(f"$cmd=setsensortime&sensor_id={b['sensor_id']}&sample_intv=60&upload_intv=60&plus_intv=60&msgid=") for b in red)
        # The level reached red on the way (alerts.jsonl), and the simulated devices obeyed.
        levels = [json.loads(line)["level"] for line in (tmp_path / "data" / "alerts.jsonl").read_text().splitlines()]
        assert 4 in levels
        obeyed = [c for c in run.stats.commands if c.get("cmd") == "setsensortime"]
        assert obeyed and all(c["ok"] for c in obeyed) and any(c.get("interval_s") == 60.0 for c in obeyed)
        assert not math.isnan(sim.t0)
    finally:
        daemon.close()
