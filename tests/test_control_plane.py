"""The authenticated control plane (alerts/control.py) on an open, anonymous broker.

Unit part: the control key file (0600, refused when others may read it or when it is not 256
bits) and the detection worker's gate (unsigned, altered, wrong-kind, stale and replayed
requests refused; the nonces it remembers survive a restart through the journal's state).

Daemon part, with a real Mosquitto that lets anyone connect and publish, and the real daemon:
a yellow warning at BSH escalates while an anonymous client forges an unsigned ack (refused,
audited, and the province is still told); a signed request from outside the 5-minute window
is refused; a client that answers the API's ack first on the result topic with a forged
refusal changes nothing (the API answers 200 and audits "ok"); the API's signed request,
captured off the bus and published again, is refused as a replay. ``geowarn ack`` signs as
the OS user, and its request replayed after a daemon restart is still refused.
"""

from __future__ import annotations

import json
import os
import pwd
import queue
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from daemonproc import REPO, Daemon
from geowarn.alerts.control import KEY_FILE, ControlKey, Gate, Refused, load_key, load_or_create_key
from geowarn.config.errors import ConfigError
from geowarn.config.settings import MqttTarget
from geowarn.console.tokens import TokenStore
from geowarn.ingest.journal import Journal
from geowarn.service.detection import NONCES_KEY
from services import free_port
from test_api import ACK_S, POLICY, Console, _escalations, _timeline, wait_for, yellow_slope


# -- the key file --------------------------------------------------------------------------------


def test_the_key_is_made_0600_once_and_a_readable_or_short_key_is_refused(tmp_path):
    old = os.umask(0)  # the most permissive umask: the key must still be private
    try:
        key = load_or_create_key(tmp_path / "data")
    finally:
        os.umask(old)
    path = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(bytes.fromhex(path.read_text().strip())) == 32
    assert load_or_create_key(tmp_path / "data").secret == key.secret  # made once, then read
    assert key.secret.hex() not in repr(key)
    assert [p.name for p in (tmp_path / "data").iterdir()] == [KEY_FILE]  # no temporary left

    path.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644: group or others may read it"):
        load_key(path)
    path.chmod(0o600)
    path.write_text("00ff" * 8 + "\n")  # 128 bits
    with pytest.raises(ConfigError, match="must be 64 hex digits"):
        load_or_create_key(tmp_path / "data")
    path.write_text("zz" * 32)
    with pytest.raises(ConfigError, match="must be 64 hex digits"):
        load_key(path)
    with pytest.raises(FileNotFoundError):
        load_key(tmp_path / "nowhere" / KEY_FILE)


def test_the_daemon_and_the_cli_refuse_to_start_with_a_key_others_may_read(tmp_path):
    data = tmp_path / "data"
    key_path = Path(load_or_create_key(data).path)
    key_path.chmod(0o604)
    env = {**os.environ, "GEOWARN_DATA_DIR": str(data), "GEOWARN_MQTT_URL": "mqtt://127.0.0.1:9", "GEOWARN_HTTP": "off", "GEOWARN_ALLOW_EXAMPLE": "1"}
    for argv in (["run"], ["ack", "W1", "--wait", "1"]):
        done = subprocess.run([sys.executable, "-m", "geowarn.service.cli", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        assert f"{key_path}" in done.stderr and "mode 0604: group or others may read it" in done.stderr, done.stderr


# -- the gate ------------------------------------------------------------------------------------


def _journal_gate(path: Path, key: ControlKey) -> tuple[Journal, Gate]:
    journal = Journal(path)
    return journal, Gate(key, lambda: journal.get_state(NONCES_KEY), lambda v: journal.set_state(NONCES_KEY, v))


def _refusal(gate: Gate, kind: str, doc: Any, now: float) -> Refused:
    with pytest.raises(Refused) as caught:
        gate.admit(kind, json.dumps(doc).encode() if not isinstance(doc, bytes) else doc, now)
    return caught.value


def test_the_gate_refuses_unsigned_altered_stale_and_replayed_requests_across_a_restart(tmp_path):
    key = load_or_create_key(tmp_path)
    other = ControlKey(bytes(32))
    now = 1_800_000_000.0
    journal, gate = _journal_gate(tmp_path / "journal.sqlite", key)
    signed = key.sign_request("ack", {"id": "W1", "by": "zigui-duty", "note": "patrol", "request": "r1"}, now)

    admitted = gate.admit("ack", json.dumps(signed).encode(), now + 1)
    assert admitted.doc["by"] == "zigui-duty" and admitted.mac == signed["mac"]

    r = _refusal(gate, "ack", {"id": "W1", "by": "mallory", "request": "r2"}, now)
    assert (r.code, r.reply_to) == ("unsigned", "")
    r = _refusal(gate, "ack", {**signed, "by": "mallory"}, now)
    assert (r.code, r.reply_to) == ("forged", "")  # the signature covers by
    r = _refusal(gate, "shelve", signed, now)
    assert r.code == "forged"  # an ack's signature is not a shelve's
    r = _refusal(gate, "ack", other.sign_request("ack", {"id": "W1", "by": "x"}, now), now)
    assert r.code == "forged"  # another installation's key
    r = _refusal(gate, "ack", b"[1, 2]", now)
    assert r.code == "bad"
    for ts in (10**400, "now", True):  # signed, but no usable time: refused, not a crash
        doc = {"id": "W1", "by": "x", "ts": ts, "nonce": "ab" * 16}
        doc["mac"] = key._mac("request", "ack", doc)
        assert _refusal(gate, "ack", doc, now).code == "bad"
    # Infinity cannot be encoded canonically (allow_nan=False), so no MAC can cover it.
    assert _refusal(gate, "ack", b'{"id": "W1", "by": "x", "ts": 1e400, "nonce": "abababababababababab", "mac": "00"}', now).code == "forged"

    # Five minutes and one second either way: stale, and the refusal answers its (authentic) asker.
    late = key.sign_request("ack", {"id": "W1", "by": "x", "request": "r3"}, now - 301)
    r = _refusal(gate, "ack", late, now)
    assert (r.code, r.reply_to) == ("stale", late["mac"]) and "allowed ±300 s" in r.reason
    early = key.sign_request("ack", {"id": "W1", "by": "x"}, now + 301)
    assert _refusal(gate, "ack", early, now).code == "stale"
    assert gate.admit("ack", json.dumps(key.sign_request("ack", {"id": "W1", "by": "x"}, now - 299)).encode(), now).mac

    r = _refusal(gate, "ack", signed, now + 2)
    assert (r.code, r.reply_to) == ("replayed", "")

    # A restart inside the window: the nonce is still known.
    journal.close()
    journal, again = _journal_gate(tmp_path / "journal.sqlite", key)
    assert _refusal(again, "ack", signed, now + 200).code == "replayed"
    # Past the window the request is stale anyway, and its nonce is forgotten at the next admit.
    assert _refusal(again, "ack", signed, now + 301).code == "stale"
    again.admit("ack", json.dumps(key.sign_request("ack", {"id": "W2", "by": "x"}, now + 700)).encode(), now + 700)
    assert signed["nonce"] not in journal.get_state(NONCES_KEY)
    journal.close()


def test_a_request_forgotten_by_the_gate_is_not_admitted_again_when_the_clock_is_set_back(tmp_path):
    # The tester's scenario: admitted at T, its nonce pruned when another request comes at
    # T+301, then the worker's wall clock is stepped back 10 s (NTP): T+291 is inside T's window.
    key = ControlKey(os.urandom(32))
    T = 1_800_000_000.0
    journal, gate = _journal_gate(tmp_path / "journal.sqlite", key)
    first = key.sign_request("ack", {"id": "W1", "by": "alice"}, T)
    assert gate.admit("ack", json.dumps(first).encode(), T).mac == first["mac"]
    gate.admit("ack", json.dumps(key.sign_request("ack", {"id": "W2", "by": "alice"}, T + 301)).encode(), T + 301)
    assert first["nonce"] not in gate.nonces  # forgotten: the case the clock step exploits
    r = _refusal(gate, "ack", first, T + 291)
    assert (r.code, r.reply_to) == ("stale", first["mac"]) and "set back" in r.reason
    # ... and after a restart (what was forgotten is saved with the nonces).
    journal.close()
    journal, again = _journal_gate(tmp_path / "journal.sqlite", key)
    assert _refusal(again, "ack", first, T + 291).code == "stale"
    # A new request signed after the step back is let through: the clock going back does not
    # lock people out, and a clock that ran ahead for a while did not either.
    fresh = key.sign_request("ack", {"id": "W1", "by": "alice"}, T + 292)
    assert again.admit("ack", json.dumps(fresh).encode(), T + 292).mac == fresh["mac"]
    journal.close()


def test_the_gate_refuses_an_oversized_payload_unread_and_echoes_only_a_sane_request_id():
    from geowarn.alerts.control import MAX_REQUEST_BYTES, decode_request, request_id_of

    key = ControlKey(os.urandom(32))
    gate = Gate(key, dict, lambda v: None)
    big = json.dumps({"request": "R" * 1_000_000, "id": "W1", "mac": "0" * 64}).encode()
    r = _refusal(gate, "ack", big, 1_800_000_000.0)
    assert r.code == "too_large" and str(MAX_REQUEST_BYTES) in r.reason and r.reply_to == ""
    with pytest.raises(Refused) as caught:
        decode_request(b"x" * (MAX_REQUEST_BYTES + 1))
    assert caught.value.code == "too_large"
    # A signed request of ordinary size (a long note) still passes.
    doc = key.sign_request("ack", {"id": "W1", "by": "x", "note": "n" * 8000}, 1_800_000_000.0)
    assert gate.admit_doc("ack", decode_request(json.dumps(doc).encode()), 1_800_000_000.0).mac == doc["mac"]
    assert request_id_of({"request": "0f" * 16}) == "0f" * 16
    assert request_id_of({"request": "forged-1"}) == "forged-1"
    for bad in ("R" * 65, "", "a b", "x\n", 5, None, ["r"]):
        assert request_id_of({"request": bad}) == ""
    assert request_id_of([1]) == ""


def test_results_are_trusted_only_when_signed_and_bound_to_the_request(tmp_path):
    key = load_or_create_key(tmp_path)
    now = time.time()
    req = key.sign_request("ack", {"id": "W1", "by": "zigui-duty", "request": "r1"}, now)
    real = key.sign_result("ack", {"request": "r1", "ok": True, "detail": "ack", "reply_to": req["mac"]}, now)
    assert key.answers("ack", real, req)
    forged = {**real, "ok": False, "detail": "refused by mallory"}
    assert not key.answers("ack", forged, req)  # altered after signing
    unbound = key.sign_result("ack", {"request": "r1", "ok": False, "detail": "replayed", "reply_to": ""}, now)
    assert not key.answers("ack", unbound, req)  # the worker's refusal of a copy is not the answer
    assert not key.answers("shelve", real, req) and not key.answers("ack", real, {**req, "request": "r2"})
    assert not key.answers("ack", {"request": "r1", "ok": False, "reply_to": req["mac"]}, req)  # unsigned


# -- on an open broker, with the real daemon -------------------------------------------------------


class Bus:
    """An anonymous client on the open broker: what anyone on the station network can do."""

    def __init__(self, url: str, topics: list[str], client_id: str) -> None:
        target = MqttTarget(url)
        self.messages: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.on_request: Any = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        subscribed: queue.Queue[bool] = queue.Queue()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.put(True)
        self.client.on_message = self._on_message
        self.client.connect(target.host, target.port, 30)
        self.client.loop_start()
        subscribed.get(timeout=10)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        if self.on_request is not None and not msg.topic.endswith("/result"):
            self.on_request(msg.topic, doc)  # the forger answers from paho's thread: as fast as it gets
        self.seen.append((msg.topic, doc))
        self.messages.put((msg.topic, doc))

    def publish(self, topic: str, doc: dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(doc).encode(), qos=1).wait_for_publish(10)

    def wait(self, pred: Any, timeout: float, what: str) -> tuple[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; seen: {self.seen[-10:]}")
            try:
                topic, doc = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if pred(topic, doc):
                return topic, doc

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def console(tmp_path, mosquitto) -> Iterator[Console]:
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    daemon = Daemon(data, mosquitto.url, extra_env={"GEOWARN_ALERT_POLICY": POLICY, "GEOWARN_HTTP": f"127.0.0.1:{port}", "GEOWARN_SNAPSHOT_INTERVAL_S": "1"})
    con = Console(daemon, f"http://127.0.0.1:{port}")
    daemon.start()
    try:
        import httpx

        wait_for(lambda: httpx.get(con.base + "/healthz", timeout=5).status_code == 200, 20, "the API", daemon)
        yield con
    finally:
        daemon.close()


def _audit(console: Console) -> list[Any]:
    with TokenStore(console.daemon.data_dir / "tokens.sqlite") as store:
        return store.audit_entries()


@pytest.mark.slow
def test_on_an_open_broker_forged_stale_and_replayed_requests_and_forged_results_change_nothing(console, mosquitto):
    zigui = console.client(console.zigui)
    key = load_key(console.daemon.data_dir / KEY_FILE)
    assert stat.S_IMODE((console.daemon.data_dir / KEY_FILE).stat().st_mode) == 0o600
    bus = Bus(mosquitto.url, ["geowarn/ack", "geowarn/ack/result"], "mallory")
    try:
        yellow_slope(mosquitto.url)
        wid = wait_for(lambda: zigui.get("/api/warnings").json(), 60, "the BSH warning", console.daemon)[0]["id"]

        # 1. An unsigned ack "by mallory", in the very format the console used to send.
        bus.publish("geowarn/ack", {"id": wid, "by": "王值班 Wang [zigui-duty]", "note": "all clear", "request": "forged-1"})
        _, refusal = bus.wait(lambda t, d: t.endswith("/result") and d.get("request") == "forged-1", 20, "the refusal of the forged ack")
        assert refusal["ok"] is False and refusal["rule"] == "refused_unsigned" and "unsigned" in refusal["detail"]
        assert key.verify_result("ack", refusal) and refusal["reply_to"] == ""  # signed, bound to nothing
        # The warning keeps escalating: the province is told when the ack deadline passes.
        tl = wait_for(lambda: (t := _timeline(zigui, wid)) and "420000" in _escalations(t) and t, ACK_S + 30, "escalation to the province", console.daemon)
        assert [h["rule"] for h in tl["history"]][:2] == ["raise", "escalate_unacked"]
        assert not any(h["rule"] == "ack" for h in tl["history"])

        # 2. A signed request from outside the window (as if held back for 10 minutes).
        stale = key.sign_request("ack", {"id": wid, "by": "zigui-duty", "note": "old", "request": "stale-1"}, time.time() - 600)
        bus.publish("geowarn/ack", stale)
        _, refusal = bus.wait(lambda t, d: t.endswith("/result") and d.get("request") == "stale-1", 20, "the refusal of the stale ack")
        assert refusal["ok"] is False and refusal["rule"] == "refused_stale" and "stale" in refusal["detail"]
        assert key.verify_result("ack", refusal)

        # 3. The API acknowledges while mallory answers first on the result topic with a forged
        # refusal, copying the request id and even its MAC as reply_to.
        forged_results: list[str] = []

        def forge(topic: str, doc: dict[str, Any]) -> None:
            if topic == "geowarn/ack" and doc.get("by") == "zigui-duty":
                rid = str(doc.get("request"))
                forged_results.append(rid)
                fake = {"request": rid, "ok": False, "detail": "refused: warning already lifted", "rule": "ignored", "site": "BSH",
                        "warning_id": wid, "reply_to": doc.get("mac"), "ts": time.time(), "nonce": "0" * 32, "mac": "0" * 64}
                bus.client.publish("geowarn/ack/result", json.dumps(fake).encode(), qos=1)

        bus.on_request = forge
        done = zigui.post(f"/api/warnings/{wid}/ack", json={"name": "王值班 Wang", "note": "patrol sent"})
        bus.on_request = None
        assert done.status_code == 200, done.text
        assert done.json()["ok"] is True and done.json()["rule"] == "ack" and done.json()["warning_id"] == wid
        assert len(forged_results) == 1
        rid = forged_results[0]
        bus.wait(lambda t, d: t.endswith("/result") and d.get("request") == rid and d.get("ok") is True, 10, "the real answer on the bus")
        answers = [d for t, d in bus.seen if t == "geowarn/ack/result" and d.get("request") == rid]
        assert answers[0]["mac"] == "0" * 64, "the forged result did not arrive first: the test proves nothing"
        assert len(answers) == 2 and answers[1]["ok"] is True and key.verify_result("ack", answers[1])
        assert zigui.get(f"/api/warnings/{wid}").json()["status"] == "acknowledged"
        tl = _timeline(zigui, wid)
        acks = [h for h in tl["history"] if h["rule"] == "ack"]
        assert len(acks) == 1 and acks[0]["detail"].startswith("by zigui-duty at level 2: 王值班 Wang: patrol sent"), acks

        # 4. The API's signed request, captured off the bus and published again: refused.
        captured = next(d for t, d in bus.seen if t == "geowarn/ack" and d.get("request") == rid)
        assert captured["by"] == "zigui-duty" and captured["mac"]
        bus.publish("geowarn/ack", captured)
        _, refusal = bus.wait(lambda t, d: t.endswith("/result") and d.get("request") == rid and "replayed" in str(d.get("detail")), 20, "the refusal of the replay")
        assert refusal["ok"] is False and refusal["reply_to"] == "" and key.verify_result("ack", refusal)
        assert len([h for h in _timeline(zigui, wid)["history"] if h["rule"] == "ack"]) == 1

        # The audit trail: the API's ack as ok (not the forged refusal), the worker's refusals.
        rows = _audit(console)
        mine = [(a.who, a.outcome) for a in rows if a.action == "POST /api/warnings/{warning_id}/ack" and a.target == wid]
        assert mine == [("zigui-duty", "ok")], mine
        refused = {(a.action, a.target, a.client, a.outcome, a.detail.split(":")[0]) for a in rows if a.action == "MQTT geowarn/ack"}
        assert ("MQTT geowarn/ack", wid, "mqtt", "refused", "ack request refused") in refused
        details = " | ".join(a.detail for a in rows if a.action == "MQTT geowarn/ack")
        assert "unsigned" in details and "stale" in details and "replayed" in details
    finally:
        bus.close()


@pytest.mark.slow
def test_the_cli_acks_as_the_os_user_and_its_request_replayed_after_a_restart_is_refused(console, mosquitto):
    zigui = console.client(console.zigui)
    daemon = console.daemon
    bus = Bus(mosquitto.url, ["geowarn/ack", "geowarn/ack/result"], "sniffer")
    try:
        yellow_slope(mosquitto.url)
        wid = wait_for(lambda: zigui.get("/api/warnings").json(), 60, "the BSH warning", daemon)[0]["id"]
        env = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}  # by is then the login itself
        env.update({"GEOWARN_MQTT_URL": mosquitto.url, "GEOWARN_DATA_DIR": str(daemon.data_dir)})
        done = subprocess.run(
            [sys.executable, "-m", "geowarn.service.cli", "ack", wid, "--by", "王值班 Wang", "--note", "patrol sent"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith("accepted: ack: by ")
        user = pwd.getpwuid(os.getuid()).pw_name
        acks = [h for h in _timeline(zigui, wid)["history"] if h["rule"] == "ack"]
        assert len(acks) == 1 and acks[0]["detail"].startswith(f"by {user} at level 2: 王值班 Wang: patrol sent"), acks

        captured = next(d for t, d in bus.seen if t == "geowarn/ack" and d.get("id") == wid)
        assert captured["by"] == user and captured["name"] == "王值班 Wang"

        # Another installation's key (another data dir): the daemon refuses the request, and the
        # CLI cannot verify that answer either, so it reports no answer and says why.
        other = {**env, "GEOWARN_DATA_DIR": str(daemon.data_dir.parent / "elsewhere")}
        foreign = subprocess.run(
            [sys.executable, "-m", "geowarn.service.cli", "ack", wid, "--note", "from elsewhere", "--wait", "3"],
            cwd=REPO, env=other, capture_output=True, text=True, timeout=60,
        )
        assert foreign.returncode == 3, foreign.stdout + foreign.stderr
        assert "did not verify" in foreign.stderr and "signature does not verify" in foreign.stderr, foreign.stderr
        assert len([h for h in _timeline(zigui, wid)["history"] if h["rule"] == "ack"]) == 1
        # A restart inside the window: the nonces come back from the journal.
        daemon.terminate()
        daemon.start()
        bus.publish("geowarn/ack", captured)
        _, refusal = bus.wait(lambda t, d: t.endswith("/result") and d.get("request") == captured["request"] and d.get("rule") == "refused_replayed",
                              30, "the refusal of the replay")
        assert refusal["ok"] is False and refusal["rule"] == "refused_replayed"
        assert len([h for h in _timeline(zigui, wid)["history"] if h["rule"] == "ack"]) == 1
    finally:
        bus.close()


@pytest.mark.slow
def test_a_flood_of_hostile_requests_neither_delays_a_real_request_nor_stops_judging(tmp_path, mosquitto):
    """The tester's stall: 6 MB unsigned acks (a 1 MB request id, 200k keys) and small
    hostile ones ahead of a real signed request and of readings that raise a warning."""
    data = tmp_path / "data"
    daemon = Daemon(data, mosquitto.url, extra_env={"GEOWARN_ALERT_POLICY": POLICY, "GEOWARN_HTTP": "off"})
    daemon.start()
    bus = Bus(mosquitto.url, ["geowarn/ack/result", "geowarn/shelve/result", "geowarn/alerts/#"], "flood-watch")
    flood = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="atk-stall")
    flood.connect(MqttTarget(mosquitto.url).host, MqttTarget(mosquitto.url).port, 30)
    flood.loop_start()
    try:
        key = load_key(data / KEY_FILE)
        huge = {f"k{i:07d}": [i, "x"] for i in range(200_000)}
        huge.update(mac="0" * 64, request="R" * 1_000_000, id="BSH-20261206T205156Z-4")
        payload = json.dumps(huge).encode()
        hostile = [payload] * 10 + [b"[" * 8000 + b"]" * 8000] * 20 + [json.dumps({"request": "Q" * 5000, "id": "x"}).encode()] * 20
        infos = [flood.publish("geowarn/ack", p, qos=1) for p in hostile]
        for info in infos:
            info.wait_for_publish(30)
        real = key.sign_request("shelve", {"site": "XK", "by": "tester", "until": time.time() + 3600, "request": "real-1"}, time.time())
        t0 = time.monotonic()
        bus.publish("geowarn/shelve", real)
        yellow_slope(mosquitto.url)
        _, answer = bus.wait(lambda t, d: t == "geowarn/shelve/result" and d.get("request") == "real-1", 30, "the answer to the real request")
        answered_s = time.monotonic() - t0
        assert answer["ok"] is True and answer["reply_to"] == real["mac"] and key.verify_result("shelve", answer)
        assert answered_s < 5.0, f"the real request waited {answered_s:.1f} s behind the flood"
        # The readings published after it are judged: BSH's yellow is announced.
        wait_for(lambda: any(t == "geowarn/alerts/420527/BSH" and d.get("level") == 2 for t, d in bus.seen), 60, "BSH's yellow from the readings", daemon)
        refusals = [d for t, d in bus.seen if t == "geowarn/ack/result"]
        assert len(refusals) == len(hostile), daemon.log_tail()
        assert sum(1 for d in refusals if d["rule"] == "refused_too_large") == 10
        # No refusal echoes a huge id back onto the bus.
        assert all(d["request"] == "" for d in refusals)
        assert max(len(json.dumps(d)) for d in refusals) < 1000
    finally:
        flood.disconnect()
        flood.loop_stop()
        bus.close()
        daemon.close()
