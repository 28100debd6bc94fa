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
from pathlib import Path

import pytest
from daemonproc import Daemon
from geowarn.alerts.live import COMMAND_KEY, OutboxSink
from geowarn.alerts.model import SetSampling
from geowarn.alerts.outbox import Outbox
from geowarn.config.registry import load_registry
from geowarn.ingest.commands_cn import (
    CommandError,
    msgid_for,
    parse_answer,
    setsensortime,
)
from geowarn.simulators.engine import Simulation
from geowarn.simulators.publish import LiveRun, live_start
from geowarn.simulators.scenario import load_scenario

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
    # After each device's setsensortime, its work mode: plus (2) when accelerating, run (0) back
    # (the firmware's enum workmode; the mode right after "setworkmode&mode=", where it reads it).
    wm1, wm2 = cmds[f"w1/SP-U1/workmode/{COMMAND_KEY}"], cmds[f"w2/SP-U1/workmode/{COMMAND_KEY}"]
    assert wm1.body["payload"] == f"$cmd=setworkmode&mode=2&msgid={msgid_for(f'w1/SP-U1/workmode/{COMMAND_KEY}')}"
    assert wm2.body["payload"].startswith("$cmd=setworkmode&mode=0&msgid=") and wm2.body["topic"] == "$creq/SK11E80D1307426AZ/cmd"
    assert [i.id for i in outbox.items() if i.id.startswith("w1/SP-U1/")][-1] == f"w1/SP-U1/workmode/{COMMAND_KEY}"  # after the sensors'
    assert len(cmds) == 8
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

    # The console shows each sensor's latest command and its answer (None: not answered yet),
    # and the device's work mode: the restore (w2) replaced the red commands, none answered.
    from geowarn.console.views import Views

    views = Views(tmp_path, registry)
    devices: dict = {"SP-U1": {}, "SP-EXT": {}}
    views._add_commands("SP", devices, 2000.0)
    got = {(c["sensor_id"], c["cmd"], c["interval_s"], c.get("mode"), c["result"], c["answer"]) for c in devices["SP-U1"]["commands"]}
    assert got == {("L1_LF_1", "setsensortime", 600.0, None, None, "waiting"), ("L1_QJ_1", "setsensortime", 1800.0, None, None, "waiting"),
                   (None, "setworkmode", None, "0", None, "waiting")}
    assert devices["SP-U1"]["last_command"]["cmd"] == "setworkmode"
    assert devices["SP-EXT"]["last_command"]["cmd"] == "set_sampling" and devices["SP-EXT"]["last_command"]["answer"] is None


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


# -- the device's apikey, and its work mode (the firmware: cigemRxdataTask, cigemPacketAckapikey, enum workmode) --

FIRMWARE_KEY = "e7eb73db9cc982caeb1f"  # the firmware comment's example apikey


def test_the_apikey_goes_where_the_platform_puts_it_and_is_never_shown():
    from geowarn.ingest.commands_cn import redact, setworkmode, with_apikey

    # The firmware's comment: "&apikey=e7eb73db9cc982caeb1f&msgid=B6ZmaDbzA" after the parameters.
    assert with_apikey("$cmd=reqtime&msgid=B6ZmaDbzA", FIRMWARE_KEY) == "$cmd=reqtime&apikey=e7eb73db9cc982caeb1f&msgid=B6ZmaDbzA"
    assert (with_apikey(setsensortime("L3_TW_2", 300, 900, 600, "B6ZmaDbzA"), FIRMWARE_KEY)
            == "$cmd=setsensortime&sensor_id=L3_TW_2&sample_intv=300&upload_intv=900&plus_intv=600&apikey=e7eb73db9cc982caeb1f&msgid=B6ZmaDbzA")
    # setworkmode: the mode right after "setworkmode&mode=", where the firmware reads one character.
    assert with_apikey(setworkmode("2", "m1"), FIRMWARE_KEY) == "$cmd=setworkmode&mode=2&apikey=e7eb73db9cc982caeb1f&msgid=m1"
    for bad in ("3", "plus", ""):
        with pytest.raises(ValueError):
            setworkmode(bad, "m")
    for bad_key in ("a&b", "a b", "", "x" * 49):
        with pytest.raises(ValueError):
            with_apikey("$cmd=reqtime&msgid=m", bad_key)
    assert redact("$cmd=settime&result=succ&apikey=6767377eb9e5ee17385e&msgid=1N9V4h_hR") == "$cmd=settime&result=succ&apikey=***&msgid=1N9V4h_hR"


def _sites_with(tmp_path, **device) -> Path:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in device.items())
    text = SITES.replace('code = "SK11E80D1307426AZ"\n', 'code = "SK11E80D1307426AZ"\n' + extra, 1)
    path = tmp_path / "sites.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_devices_apikey_is_a_reference_read_at_start_and_its_battery_marks_are_validated(tmp_path, monkeypatch):
    from geowarn.config.errors import ConfigError
    from geowarn.config.settings import device_apikeys

    # Written in plain text: refused, and the value is not echoed.
    with pytest.raises(ConfigError) as exc:
        load_registry(_sites_with(tmp_path, apikey=FIRMWARE_KEY))
    (p,) = exc.value.problems
    assert p.key == "sites[0].devices[0].apikey" and "env:NAME" in p.reason and FIRMWARE_KEY not in str(exc.value)
    # A reference to an unset variable: the start stops naming the file, the key and why.
    monkeypatch.delenv("GW_TEST_NO_SUCH_KEY", raising=False)
    path = _sites_with(tmp_path, apikey="env:GW_TEST_NO_SUCH_KEY")
    with pytest.raises(ConfigError) as exc:
        device_apikeys(load_registry(path))
    (p,) = exc.value.problems
    assert (p.file, p.key) == (str(path), "sites[0].devices[0].apikey") and "GW_TEST_NO_SUCH_KEY is not set" in p.reason
    # ... a missing file, likewise; a key that cannot travel in a key=value command too.
    with pytest.raises(ConfigError, match="cannot read the secret file"):
        device_apikeys(load_registry(_sites_with(tmp_path, apikey=f"file:{tmp_path / 'nope'}")))
    (tmp_path / "bad.key").write_text("abc&def\n")
    with pytest.raises(ConfigError) as exc:
        device_apikeys(load_registry(_sites_with(tmp_path, apikey=f"file:{tmp_path / 'bad.key'}")))
    assert "abc&def" not in str(exc.value)
    # Read from the environment or a file (trailing newline dropped), by device code.
    monkeypatch.setenv("GW_TEST_U1_KEY", FIRMWARE_KEY)
    reg = load_registry(_sites_with(tmp_path, apikey="env:GW_TEST_U1_KEY"))
    assert device_apikeys(reg) == {"SK11E80D1307426AZ": FIRMWARE_KEY}
    assert FIRMWARE_KEY not in json.dumps(reg.to_json())
    (tmp_path / "u1.key").write_text(FIRMWARE_KEY + "\n")
    assert device_apikeys(load_registry(_sites_with(tmp_path, apikey=f"file:{tmp_path / 'u1.key'}"))) == {"SK11E80D1307426AZ": FIRMWARE_KEY}

    # Battery marks: 20 % and 11.5 V by default, the device's own where it sets them, validated.
    dev = load_registry(_sites_with(tmp_path)).sites["SP"].devices[0]
    assert (dev.battery_low_percent, dev.battery_low_v) == (20.0, 11.5)
    dev = load_registry(_sites_with(tmp_path, battery_low_v=3.4, battery_low_percent=30)).sites["SP"].devices[0]
    assert (dev.battery_low_percent, dev.battery_low_v) == (30.0, 3.4)
    for bad in ({"battery_low_v": 0}, {"battery_low_v": 100}, {"battery_low_percent": 100}, {"battery_low_percent": -5}, {"battery_low_v": "low"}):
        with pytest.raises(ConfigError) as exc:
            load_registry(_sites_with(tmp_path, **bad))
        assert exc.value.problems[0].key == f"sites[0].devices[0].{next(iter(bad))}"


def test_a_simulated_device_with_an_apikey_drops_what_lacks_it_and_switches_work_mode(tmp_path, monkeypatch):
    from geowarn.config.settings import device_apikeys

    sc = load_scenario("cn_failure")
    sites = (Path(sc.source).parent / sc.sites).read_text(encoding="utf-8")
    sites = sites.replace('code = "SK11E80D1307426AZ"\n', 'code = "SK11E80D1307426AZ"\napikey = "env:GW_TEST_SIM_KEY"\n', 1)
    (tmp_path / "sites.toml").write_text(sites, encoding="utf-8")
    monkeypatch.setenv("GW_TEST_SIM_KEY", FIRMWARE_KEY)
    registry = load_registry(tmp_path / "sites.toml")
    sim = Simulation(sc, registry, duration_s=6 * 3600.0)
    conv = sim.convention
    topic = "$creq/SK11E80D1307426AZ/cmd"
    cmd = "$cmd=setsensortime&sensor_id=L1_LF_1&sample_intv=60&upload_intv=60&plus_intv=120"
    # No key, a wrong key: dropped, unanswered, as the firmware does.
    for text, why in ((f"{cmd}&msgid=a", "no apikey"), (f"{cmd}&apikey=6767377eb9e5ee17385e&msgid=b", "wrong apikey")):
        _, reply, entry = conv.obey(sim, topic, text.encode(), sim.t0)
        assert reply is None and entry["dropped"] == why and not entry["ok"]
        assert FIRMWARE_KEY not in json.dumps(entry)
    # Its key: done, and the answer ends "&apikey=<its key>&msgid=…" as cigemPacketAckapikey writes it.
    _, reply, entry = conv.obey(sim, topic, f"{cmd}&apikey={FIRMWARE_KEY}&msgid=c".encode(), sim.t0)
    assert reply == f"$cmd=setsensortime&result=succ&apikey={FIRMWARE_KEY}&msgid=c".encode() and entry["interval_s"] == 60.0
    # The msgid it has just executed again: dropped.
    _, reply, entry = conv.obey(sim, topic, f"{cmd}&apikey={FIRMWARE_KEY}&msgid=c".encode(), sim.t0)
    assert reply is None and entry["dropped"] == "msgid already executed"
    # Plus mode: the crack meter samples at its plus interval (120 s); run mode: back to 60 s.
    _, reply, entry = conv.obey(sim, topic, f"$cmd=setworkmode&mode=2&apikey={FIRMWARE_KEY}&msgid=d".encode(), sim.t0)
    assert reply == f"$cmd=setworkmode&result=succ&apikey={FIRMWARE_KEY}&msgid=d".encode() and entry["mode"] == "2"
    n_plus = sum(1 for m in sim.emit_until(sim.t0 + 3600.0) if m.kind == "data" and b"L1_LF_1" in m.payload)
    _, reply, _ = conv.obey(sim, topic, f"$cmd=setworkmode&mode=0&apikey={FIRMWARE_KEY}&msgid=e".encode(), sim.t0 + 3600.0)
    n_run = sum(1 for m in sim.emit_until(sim.t0 + 7200.0) if m.kind == "data" and b"L1_LF_1" in m.payload)
    # (a new interval starts from the next sample due: up to one old interval later)
    assert 3000 / 120 <= n_plus <= 3600 / 120 + 1 and 3480 / 60 <= n_run <= 3600 / 60 + 1, (n_plus, n_run)
    # A mode the firmware does not know: fail.
    _, reply, _ = conv.obey(sim, topic, f"$cmd=setworkmode&mode=7&apikey={FIRMWARE_KEY}&msgid=f".encode(), sim.t0)
    assert reply == f"$cmd=setworkmode&result=fail&apikey={FIRMWARE_KEY}&msgid=f".encode()
    # The other device has no apikey in the registry: it checks none.
    assert device_apikeys(registry) == {"SK11E80D1307426AZ": FIRMWARE_KEY}
    _, reply, _ = conv.obey(sim, "$creq/SK11E80D1307427GP/cmd", b"$cmd=setworkmode&mode=2&msgid=g", sim.t0)
    assert reply == b"$cmd=setworkmode&result=succ&msgid=g"


@pytest.mark.slow
def test_commands_carry_each_devices_apikey_a_wrong_one_goes_unanswered_and_the_key_is_stored_nowhere(tmp_path, mosquitto, monkeypatch):
    """A real Mosquitto, a real daemon and the simulated cn_failure slope to red. SP-U1's key is
    the same in the daemon and the device: its red setsensortime and setworkmode are done
    (succ). SP-G1's device holds another key than the daemon: it drops every command, nothing
    is recorded for them, and the console shows them unanswered once the answer window has
    passed. Neither key is in any file of the data folder (journal, outbox, alerts, logs) nor in
    the console's JSON."""
    import httpx
    from geowarn.console.views import Views
    from geowarn.simulators.convention import ConventionDevices
    from services import free_port
    from test_api import create_token

    key_u1, key_g1, key_g1_device = "e7eb73db9cc982caeb1f", "6767377eb9e5ee17385e", "0000aaaa1111bbbb2222"
    sc0 = load_scenario("cn_failure")
    sites_text = (Path(sc0.source).parent / sc0.sites).read_text(encoding="utf-8")
    sites_text = sites_text.replace('code = "SK11E80D1307426AZ"\n', 'code = "SK11E80D1307426AZ"\napikey = "env:GW_TEST_KEY_U1"\n', 1)
    sites_text = sites_text.replace('code = "SK11E80D1307427GP"\n', 'code = "SK11E80D1307427GP"\napikey = "file:' + str(tmp_path / "g1.key") + '"\n', 1)
    sites = tmp_path / "sites.toml"
    sites.write_text(sites_text, encoding="utf-8")
    scenario_file = tmp_path / "cn_keys.toml"
    scenario_file.write_text(Path(sc0.source).read_text(encoding="utf-8").replace('sites = "cn_sites.toml"', f'sites = "{sites}"'), encoding="utf-8")
    # The daemon reads G1's key from the file; the simulated device is given another one.
    (tmp_path / "g1.key").write_text(key_g1 + "\n")
    monkeypatch.setenv("GW_TEST_KEY_U1", key_u1)
    sc = load_scenario(str(scenario_file))
    registry = sc.registry()
    duration = 14 * 86400.0
    speed = duration / 120.0
    sim = Simulation(sc, registry, t0=live_start(duration, speed), duration_s=duration)
    sim.convention = ConventionDevices(registry, {"SK11E80D1307426AZ": key_u1, "SK11E80D1307427GP": key_g1_device})
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    token = create_token(data, "county", "420527", "zigui-duty")
    daemon = Daemon(data, mosquitto.url, extra_env={"GEOWARN_SITES": str(sites), "GEOWARN_CN_TOPICS": "$dp", "GW_TEST_KEY_U1": key_u1,
                                                    "GEOWARN_HTTP": f"127.0.0.1:{port}"})
    daemon.start()
    run = LiveRun(sim, mosquitto.url, speed=speed, progress=False, client_id="cn-keys")
    done = threading.Event()
    th = threading.Thread(target=lambda: (run.run(), done.set()), daemon=True)
    th.start()
    outbox = data / "outbox.sqlite"

    def red_commands() -> list[tuple[str, str, str | None]]:
        if not outbox.exists():
            return []
        with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
            return db.execute(
                "SELECT o.id, o.state, json_extract(s.value, '$.result') FROM outbox o LEFT JOIN state s ON s.key = 'cmd.answer/' || o.id "
                "WHERE o.notifier = 'mqtt/cmd' AND o.id LIKE (SELECT substr(id, 1, instr(id, '/')) FROM outbox "
                "  WHERE notifier = 'mqtt/cmd' AND json_extract(payload, '$.body.interval_s') = 60 LIMIT 1) || '%'"
            ).fetchall()

    try:
        daemon.wait_until(lambda: sum(1 for _, _, r in red_commands() if r == "succ") >= 2, timeout=200, message="SP-U1's answers to the red commands")
        assert done.wait(60)
        got = {cid.split("/", 1)[1].rsplit("/mqtt/cmd", 1)[0]: (state, result) for cid, state, result in red_commands()}
        assert got == {"SP-U1/L1_LF_1": ("sent", "succ"), "SP-U1/workmode": ("sent", "succ"),
                       "SP-G1/L1_GP_1": ("sent", None), "SP-G1/workmode": ("sent", None)}, got
        # What the devices saw: U1 executed the red ones with its key; G1 dropped every command.
        u1 = [c for c in run.stats.commands if c.get("device") == "SP-U1" and c.get("ok")]
        assert {c["cmd"] for c in u1} >= {"setsensortime", "setworkmode"} and any(c.get("mode") == "2" for c in u1)
        g1 = [c for c in run.stats.commands if c.get("device") == "SP-G1"]
        assert g1 and all(c.get("dropped") == "wrong apikey" for c in g1)
        # The console: G1's commands wait for an answer, and are unanswered once the window passed.
        sent_at = max(i.sent_at or 0.0 for i in Views(data, registry).outbox.commands("SP"))
        views = Views(data, registry)
        devices: dict = {"SP-U1": {}, "SP-G1": {}}
        views._add_commands("SP", devices, sent_at + 2 * 600 + 1)
        assert {c["answer"] for c in devices["SP-G1"]["commands"]} == {"none"}
        api = httpx.get(f"http://127.0.0.1:{port}/api/sites/SP", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert api.status_code == 200, api.text
        live = {d["device"]: d for d in api.json()["devices"]}
        assert {c["answer"] for c in live["SP-G1"]["commands"]} <= {"waiting", "none"}
        assert {c["cmd"]: c["answer"] for c in live["SP-U1"]["commands"] if c["cmd"] == "setworkmode"} in ({"setworkmode": "succ"}, {"setworkmode": "waiting"})
    finally:
        daemon.close()
    # The keys are nowhere GeoWarn writes: no file of the data folder, not its log, not the API.
    texts = [api.text, daemon.log_path.read_bytes().decode("utf-8", "replace")]
    for f in data.rglob("*"):
        if f.is_file():
            texts.append(f.read_bytes().decode("latin-1"))
    for key in (key_u1, key_g1):
        assert not any(key in t for t in texts), key
