"""``geowarn broker-config`` (issue 12, items 1 and 3) against a real Mosquitto 2.0 started with the
generated configuration, as ``mosquitto -c DIR/mosquitto.conf``, on free loopback ports.

What an attacker who can only reach the broker tried (the issue's list) is tried again here:
anonymous access, one device speaking for another, a device publishing requests, a device
reading the duty officers' notifications, a client taking the daemon's client id. Then the
daemon runs end to end on its generated credentials over TLS, and ``run`` / ``check-config``
say loudly when a broker is open.

Expected values come from the registry and roster examples and Mosquitto's documented
password format (PBKDF2-HMAC-SHA512, computed here with hashlib), not from the generator.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import queue
import signal
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from daemonproc import REPO, Daemon, Recorder, publisher
from services import Mosquitto, free_port

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
#: Registry and roster: the shipped examples (BSH has BSH-GNSS1, BSH-EXT1…; county 420527).
EXAMPLE_DEVICES = {"BSH-GNSS1", "BSH-GNSS2", "BSH-EXT1", "BSH-RG1", "BSH-PZ1", "BZM-GNSS1", "BZM-EXT1", "BZM-RG1", "XK-TLT1", "XK-CRK1", "XK-RG1"}
UNITS = {"420527", "420526", "420500", "420000", "100000"}
SECRET_FILES = ["passwd", "acl", "devices.csv", "accounts.csv", "geowarn.env", "operator.env", "tls/ca.key", "tls/server.key"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GEOWARN_")}
    env.update(extra)
    return env


def broker_config(out: Path, *args: str, umask: int | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # As root, Mosquitto 2 drops to the "mosquitto" user, which cannot enter pytest's private
    # tmp folders: the test broker keeps root (a real install keeps the default user).
    user = ["--broker-user", "root"] if os.geteuid() == 0 else []
    run = subprocess.run(
        [sys.executable, "-m", "geowarn.service.cli", "broker-config", "--out", str(out), *user, *args],
        cwd=REPO, env=env or _clean_env(), capture_output=True, text=True, timeout=120,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,  # noqa: PLW1509 - test only
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def read_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v
    return out


def devices(out: Path) -> dict[str, str]:
    with open(out / "devices.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["device"] == r["username"] for r in rows)
    return {r["device"]: r["password"] for r in rows}


def accounts(out: Path) -> dict[str, str]:
    with open(out / "accounts.csv", newline="") as fh:
        return {r["username"]: r["password"] for r in csv.DictReader(fh)}


@dataclass
class Locked:
    out: Path
    broker: Mosquitto
    plain: int
    tls: int
    env: dict[str, str]  # geowarn.env

    def url(self, user: str, password: str) -> str:
        return f"mqtt://{user}:{password}@{HOST}:{self.plain}"

    @property
    def service_password(self) -> str:
        return accounts(self.out)["geowarn-ingest"]

    def device_url(self, device: str) -> str:
        return self.url(device, devices(self.out)[device])


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Locked]:
    plain, tls = free_port(), free_port()
    out = tmp_path / "broker"
    broker_config(out, "--listen", f"{HOST}:{plain}", "--tls-listen", f"{HOST}:{tls}")
    broker = Mosquitto(out, port=plain, config_file=out / "mosquitto.conf")
    broker.start()
    try:
        yield Locked(out, broker, plain, tls, read_env(out / "geowarn.env"))
    finally:
        broker.stop()


# -- a small synchronous client -----------------------------------------------------------------


class Client:
    """paho with what a test needs: the CONNACK reason, messages in a queue, disconnects seen."""

    def __init__(self, port: int, username: str | None, password: str | None, client_id: str = "", *,
                 clean_session: bool = True, tls_ca: str | None = None, reconnect: bool = False) -> None:
        self.connacks: queue.Queue[Any] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.disconnects = 0
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
        if username is not None:
            self.c.username_pw_set(username, password)
        if tls_ca:
            self.c.tls_set(ca_certs=tls_ca, cert_reqs=ssl.CERT_REQUIRED)
        self.c.on_connect = lambda c, u, f, rc, p: self.connacks.put(rc)
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(list(rcs))
        self.c.on_disconnect = self._on_disconnect
        self.c.connect(HOST, port, 30)
        self.c.loop_start()
        self.rc = self.connacks.get(timeout=10)
        if not reconnect and self.rc.is_failure:
            self.close()

    def _on_disconnect(self, *args: Any) -> None:
        self.disconnects += 1

    def subscribe(self, *topics: str) -> None:
        self.c.subscribe([(t, 1) for t in topics])
        self.subacks.get(timeout=10)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def until(self, topic: str, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        """Every message up to and including the first on ``topic``."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"nothing on {topic} within {timeout} s; got {got}")
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                continue
            if got[-1][0] == topic:
                return got

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _reading(device: str, value: float, seq: int = 0, t: float | None = None) -> bytes:
    return json.dumps({"v": 1, "device": device, "seq": seq, "readings": [{"ch": "disp", "t": t or time.time() - 60, "v": value}]}).encode()


# -- generated files ------------------------------------------------------------------------------


def test_files_are_private_from_creation_and_rerun_keeps_passwords_rotate_changes_one(tmp_path: Path) -> None:
    out = tmp_path / "broker"
    # umask 0: a file created with default permissions would come out world-readable.
    broker_config(out, "--listen", f"{HOST}:{free_port()}", "--tls-listen", f"{HOST}:{free_port()}", umask=0)
    for name in SECRET_FILES:
        mode = stat.S_IMODE((out / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"
    first_devices, first_accounts = devices(out), accounts(out)
    assert set(first_devices) == EXAMPLE_DEVICES
    assert set(first_accounts) == {"geowarn-ingest", "geowarn-operator"} | {f"geowarn-notify-{u}" for u in UNITS}
    passwords = list(first_devices.values()) + list(first_accounts.values())
    assert len(set(passwords)) == len(passwords) and all(len(p) >= 24 for p in passwords)

    # The password file verifies every password in Mosquitto's $7$ format (PBKDF2-HMAC-SHA512).
    hashes = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines())
    service = first_accounts["geowarn-ingest"]
    expected = {**first_devices, **first_accounts, **{f"geowarn-ingest{s}": service for s in ("-store", "-detection", "-api", "-cli")}}
    assert set(hashes) == set(expected)
    for user, password in expected.items():
        _, seven, iterations, salt, dk = hashes[user].split("$")
        assert seven == "7"
        assert base64.b64decode(dk) == hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations)), user

    env = read_env(out / "geowarn.env")
    assert env["GEOWARN_MQTT_URL"].startswith(f"mqtts://geowarn-ingest:{service}@{HOST}:")
    assert env["GEOWARN_MQTT_CA_FILE"] == str(out / "tls" / "ca.crt") and env["GEOWARN_MQTT_CLIENT_ID"] == "geowarn-ingest"
    ca_before = (out / "tls" / "ca.crt").read_bytes()

    # Again: same passwords (the stations in the field keep working), same CA.
    broker_config(out, "--listen", f"{HOST}:1883", "--tls-listen", f"{HOST}:8883")
    assert devices(out) == first_devices and accounts(out) == first_accounts
    assert (out / "tls" / "ca.crt").read_bytes() == ca_before

    # Rotate one station: only its password changes.
    run = broker_config(out, "--listen", f"{HOST}:1883", "--tls-listen", f"{HOST}:8883", "--rotate", "BSH-EXT1")
    after = devices(out)
    assert after["BSH-EXT1"] != first_devices["BSH-EXT1"]
    assert {d: p for d, p in after.items() if d != "BSH-EXT1"} == {d: p for d, p in first_devices.items() if d != "BSH-EXT1"}
    assert accounts(out) == first_accounts
    assert "BSH-EXT1" in run.stdout
    for name in SECRET_FILES:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name


def test_rotating_an_unknown_device_fails_and_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "broker"
    broker_config(out)
    before = devices(out)
    run = subprocess.run(
        [sys.executable, "-m", "geowarn.service.cli", "broker-config", "--out", str(out), "--rotate", "NO-SUCH-DEVICE"],
        cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2 and "NO-SUCH-DEVICE" in run.stderr
    assert devices(out) == before


# -- the locked broker --------------------------------------------------------------------------


def test_anonymous_and_wrong_passwords_are_refused(locked: Locked) -> None:
    anonymous = Client(locked.plain, None, None)
    assert anonymous.rc.is_failure and "authori" in str(anonymous.rc).lower()
    wrong = Client(locked.plain, "BSH-GNSS1", "not-the-password")
    assert wrong.rc.is_failure
    # The TLS listener too, with the CA the generator wrote.
    ca = str(locked.out / "tls" / "ca.crt")
    assert Client(locked.tls, None, None, tls_ca=ca).rc.is_failure
    ok = Client(locked.tls, "BSH-GNSS1", devices(locked.out)["BSH-GNSS1"], tls_ca=ca)
    assert not ok.rc.is_failure
    ok.close()


def test_a_device_speaks_only_for_itself_and_reads_only_its_commands(locked: Locked) -> None:
    pw = devices(locked.out)
    spy = Client(locked.plain, "geowarn-ingest", locked.service_password, "geowarn-ingest")
    spy.subscribe("geowarn/#")

    # As another device, and any request or result: denied (Mosquitto 2.0 acknowledges a denied
    # publish and closes the connection). Each attempt on its own connection, then a marker on
    # the device's own topic: the spy sees the marker and nothing before it.
    for topic, payload in [
        ("geowarn/BSH/BSH-GNSS2/data", _reading("BSH-GNSS2", 1.0)),
        ("geowarn/BZM/BSH-GNSS1/data", _reading("BSH-GNSS1", 1.0)),
        ("geowarn/ack", b'{"id": "x", "by": "mallory"}'),
        ("geowarn/report", b'{"task_id": "x.report", "by": "mallory"}'),
        ("geowarn/shelve", b'{"site": "BSH", "by": "mallory"}'),
        ("geowarn/ack/result", b'{"request": "x", "ok": false}'),
        ("geowarn/alerts/420527/BSH", b"forged"),
        ("geowarn/BSH/BSH-GNSS2/cmd", b'{"cmd": "set_sampling", "interval_s": 86400}'),
        ("geowarn/daemon/geowarn-ingest/state", b"offline"),
    ]:
        attacker = Client(locked.plain, "BSH-GNSS1", pw["BSH-GNSS1"])
        attacker.publish(topic, payload, retain=True)
        attacker.close()
    own = Client(locked.plain, "BSH-GNSS1", pw["BSH-GNSS1"])
    own.publish("geowarn/BSH/BSH-GNSS1/data", _reading("BSH-GNSS1", 2.0))
    assert [t for t, _ in spy.until("geowarn/BSH/BSH-GNSS1/data")] == ["geowarn/BSH/BSH-GNSS1/data"]

    # Reading: the notifications (contacts of the duty officers) and other devices' commands
    # never reach a device; its own command does.
    listener = Client(locked.plain, "BSH-GNSS1", pw["BSH-GNSS1"])
    listener.subscribe("geowarn/notify/#", "geowarn/#")
    svc = Client(locked.plain, "geowarn-ingest-detection", locked.service_password)
    svc.publish("geowarn/notify/420527", b'{"contacts": "+86 717 000 1000"}')
    svc.publish("geowarn/cap/420527", b"<alert/>")
    svc.publish("geowarn/BSH/BSH-GNSS2/cmd", b'{"cmd": "set_sampling"}')
    svc.publish("geowarn/BSH/BSH-GNSS1/cmd", b'{"cmd": "set_sampling", "interval_s": 60}')
    assert [t for t, _ in listener.until("geowarn/BSH/BSH-GNSS1/cmd")] == ["geowarn/BSH/BSH-GNSS1/cmd"]

    # A unit's subscriber reads its own notifications and CAP, not another unit's.
    unit = Client(locked.plain, "geowarn-notify-420527", accounts(locked.out)["geowarn-notify-420527"])
    unit.subscribe("geowarn/notify/#", "geowarn/cap/#")
    svc.publish("geowarn/notify/420526", b"{}")
    svc.publish("geowarn/cap/420526", b"<alert/>")
    svc.publish("geowarn/notify/420527", b"{}")
    svc.publish("geowarn/cap/420527", b"<alert/>")
    assert [t for t, _ in unit.until("geowarn/cap/420527")] == ["geowarn/notify/420527", "geowarn/cap/420527"]
    for c in (spy, own, listener, svc, unit):
        c.close()


def test_a_stolen_service_client_id_gets_nothing_and_disturbs_nothing(locked: Locked) -> None:
    pw = devices(locked.out)
    # The daemon's ingest session: persistent, subscribed to the readings.
    service = Client(locked.plain, "geowarn-ingest", locked.service_password, "geowarn-ingest", clean_session=False)
    service.subscribe("geowarn/+/+/data")

    # A device connects with the service's client id and a persistent session: the broker gives
    # the connection its username as client id, so it neither takes over nor kicks the service.
    thief = Client(locked.plain, "BSH-GNSS1", pw["BSH-GNSS1"], "geowarn-ingest", clean_session=False)
    assert not thief.rc.is_failure
    thief.subscribe("geowarn/+/+/data")
    sender = Client(locked.plain, "BSH-EXT1", pw["BSH-EXT1"])
    sender.publish("geowarn/BSH/BSH-EXT1/data", _reading("BSH-EXT1", 3.0))
    assert [t for t, _ in service.until("geowarn/BSH/BSH-EXT1/data")] == ["geowarn/BSH/BSH-EXT1/data"]
    assert thief.messages.empty()  # a device may read no data topic, and it has not the service's session
    assert service.disconnects == 0
    log = locked.broker.log_tail(200)
    assert "as BSH-GNSS1 (p2, c0" in log, log  # the thief's client id is its username

    # The service's name with a device's password: refused outright.
    assert Client(locked.plain, "geowarn-ingest", pw["BSH-GNSS1"], "geowarn-ingest").rc.is_failure
    assert service.disconnects == 0
    for c in (service, thief, sender):
        c.close()


# -- the daemon on its generated credentials over TLS ----------------------------------------------


T0 = float(int(time.time()) - 2 * 86400)


def test_the_daemon_runs_end_to_end_on_generated_credentials_over_tls(tmp_path: Path, locked: Locked) -> None:
    env = locked.env
    assert env["GEOWARN_MQTT_URL"].startswith("mqtts://geowarn-ingest:")
    operator = accounts(locked.out)["geowarn-operator"]
    daemon = Daemon(
        tmp_path / "data", env["GEOWARN_MQTT_URL"], client_id=env["GEOWARN_MQTT_CLIENT_ID"],
        presence_url=locked.url("geowarn-operator", operator),
        extra_env={"GEOWARN_MQTT_CA_FILE": env["GEOWARN_MQTT_CA_FILE"], "GEOWARN_HTTP": f"{HOST}:{free_port()}"},
    )
    notes = Recorder(locked.url("geowarn-notify-420527", accounts(locked.out)["geowarn-notify-420527"]), ["geowarn/notify/420527"])
    daemon.start(timeout=60)
    try:
        # Device BSH-EXT1 tries to speak for BSH-GNSS1 first: denied, never stored.
        forger = Client(locked.plain, "BSH-EXT1", devices(locked.out)["BSH-EXT1"])
        forged = json.dumps({"v": 1, "device": "BSH-GNSS1", "seq": 1, "readings": [{"ch": "disp_e", "t": T0, "v": 999.0}]})
        forger.publish("geowarn/BSH/BSH-GNSS1/data", forged.encode())
        forger.close()

        # BSH's extensometer creeps 10 mm/day for 12 h: yellow (3-72 mm/day) to county 420527.
        pub = publisher(locked.device_url("BSH-EXT1"), client_id="ignored-by-the-broker")
        start = T0 - 12 * 3600
        for i in range(73):
            doc = {"v": 1, "device": "BSH-EXT1", "seq": i, "readings": [{"ch": "disp", "t": start + i * 600, "v": 10.0 * i * 600 / 86400}]}
            pub.publish("geowarn/BSH/BSH-EXT1/data", json.dumps(doc).encode(), qos=1).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()

        daemon.wait_until(lambda: daemon.count() >= 73, 60, "73 readings stored")
        topic, payload, _ = notes.take(1, timeout=60)[0]
        note = json.loads(payload)
        assert topic == "geowarn/notify/420527" and note["level"] == 2 and note["site"] == "BSH"
        assert {row[1] for row in daemon.readings()} == {"BSH-EXT1"}  # nothing stored for BSH-GNSS1
        # `geowarn ack` on the operator's account (operator.env) is answered over the broker; so is
        # one on the daemon's host with geowarn.env (the {id}-cli account). Both sign with the
        # control key of DATA_DIR.
        op_env = read_env(locked.out / "operator.env")
        ack = _cli(["ack", note["id"].split("/", 1)[0], "--note", "patrol sent", "--wait", "30"],
                   {**op_env, "GEOWARN_DATA_DIR": str(daemon.data_dir)})
        assert ack.returncode == 0 and ack.stdout.startswith("accepted"), ack.stdout + ack.stderr
        again = _cli(["ack", "no-such-warning", "--wait", "30"], {**env, "GEOWARN_DATA_DIR": str(daemon.data_dir)})
        assert again.returncode == 1 and again.stdout.startswith("refused"), again.stdout + again.stderr
        daemon.wait_until(lambda: "refuses anonymous" in daemon.log_tail(400), 20, "the anonymous probe's verdict")
        log = daemon.log_tail(400)
        assert "ANONYMOUS" not in log
        assert "refused the connection" not in log and "connection refused" not in log.lower(), log
    finally:
        notes.close()
        daemon.close()


# -- run and check-config warn on an open broker --------------------------------------------------


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geowarn.service.cli", *args], cwd=REPO, env=_clean_env(**env),
                          capture_output=True, text=True, timeout=90)


def _check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geowarn.service.cli", "check-config"], cwd=REPO, env=_clean_env(**env),
                          capture_output=True, text=True, timeout=60)


def test_check_config_and_run_warn_on_an_anonymous_broker(tmp_path: Path, mosquitto: Mosquitto) -> None:
    run = _check_config({"GEOWARN_MQTT_URL": mosquitto.url})
    assert run.returncode == 0, run.stderr
    assert "warning:" in run.stderr and "ANONYMOUS" in run.stderr, run.stderr

    daemon = Daemon(tmp_path / "data", mosquitto.url, extra_env={"GEOWARN_HTTP": "off"})
    daemon.start(timeout=60)
    try:
        daemon.wait_until(lambda: "ANONYMOUS" in daemon.log_tail(400), 20, "the anonymous warning")
        line = next(line for line in daemon.log_tail(400).splitlines() if "ANONYMOUS" in line)
        assert "WARNING" in line, line
    finally:
        daemon.close()


def test_check_config_is_quiet_on_the_locked_broker(locked: Locked) -> None:
    run = _check_config(locked.env)
    assert run.returncode == 0, run.stderr
    assert "ANONYMOUS" not in run.stderr and "ANONYMOUS" not in run.stdout
    assert "refuses anonymous" in run.stdout, run.stdout


# -- operations: rotation on a running broker, persistence across a crash ---------------------------


def test_a_rotated_password_is_refused_after_the_broker_reloads(locked: Locked) -> None:
    old = devices(locked.out)["BSH-GNSS1"]
    assert not Client(locked.plain, "BSH-GNSS1", old).rc.is_failure
    broker_config(locked.out, "--listen", f"{HOST}:{locked.plain}", "--tls-listen", f"{HOST}:{locked.tls}", "--rotate", "BSH-GNSS1")
    new = devices(locked.out)["BSH-GNSS1"]
    assert new != old
    assert locked.broker.pid is not None
    os.kill(locked.broker.pid, signal.SIGHUP)  # README: kill -HUP reloads passwd and acl
    deadline = time.monotonic() + 10
    while not Client(locked.plain, "BSH-GNSS1", old).rc.is_failure:
        assert time.monotonic() < deadline, "the old password still works after SIGHUP"
    ok = Client(locked.plain, "BSH-GNSS1", new)
    assert not ok.rc.is_failure
    ok.close()
    # Everybody else is unaffected.
    other = Client(locked.plain, "BSH-EXT1", devices(locked.out)["BSH-EXT1"])
    assert not other.rc.is_failure
    other.close()


def test_queued_messages_survive_a_broker_crash(tmp_path: Path) -> None:
    plain = free_port()
    out = tmp_path / "broker"
    broker_config(out, "--listen", f"{HOST}:{plain}", "--autosave-changes", "1")
    assert "autosave_on_changes true" in (out / "mosquitto.conf").read_text()
    broker = Mosquitto(out, port=plain, config_file=out / "mosquitto.conf")
    broker.start()
    try:
        service_pw = accounts(out)["geowarn-ingest"]
        session = Client(plain, "geowarn-ingest", service_pw, "geowarn-ingest", clean_session=False)
        session.subscribe("geowarn/+/+/data")
        session.close()  # the daemon is away: the broker queues for its session
        dev = Client(plain, "BSH-EXT1", devices(out)["BSH-EXT1"])
        for i in range(6):
            dev.publish("geowarn/BSH/BSH-EXT1/data", _reading("BSH-EXT1", float(i), seq=i))
        dev.close()
        # SIGKILL: no clean save. Mosquitto saves at the top of its loop once a change is counted,
        # so the loop that took message 5 first saved 0-4; 5 itself may be lost (the documented
        # bound: the changes since the last save).
        broker.kill()
        broker.start()
        back = Client(plain, "geowarn-ingest", service_pw, "geowarn-ingest", clean_session=False)
        got = [back.messages.get(timeout=10) for _ in range(5)]
        assert [json.loads(p)["seq"] for _, p in got] == [0, 1, 2, 3, 4]
        back.close()
    finally:
        broker.stop()


CN_SITES = """
[[sites]]
site = "SP"
name = "树坪滑坡"
admin = "420527"
lat = 30.99
lon = 110.61

[[sites.devices]]
device = "SP-U1"
code = "SK11E80D1307426AZ"
channels = [{ channel = "crack", kind = "crack", source = "L1_LF_1" }]

[[sites.devices]]
device = "SP-U2"
code = "SK11E80D1307426BB"
channels = [{ channel = "crack", kind = "crack", source = "L1_LF_1" }]
"""


def test_devices_of_the_national_convention_get_their_own_topics_under_the_locked_broker(tmp_path: Path) -> None:
    """``#`` never matches a ``$`` topic: without their own ACL lines the convention's devices
    could not publish on ``$dp`` or read ``$creq``, and the daemon heard nothing (a review found
    it). Each device: ``$dp``, its own vendor topic, its own commands, answers on ``$dr``."""
    sites = tmp_path / "sites.toml"
    sites.write_text(CN_SITES, encoding="utf-8")
    plain = free_port()
    out = tmp_path / "broker"
    broker_config(out, "--listen", f"{HOST}:{plain}",
                  env=_clean_env(GEOWARN_SITES=str(sites), GEOWARN_CN_TOPICS="$dp,/sys/{code}/post"))
    broker = Mosquitto(out, port=plain, config_file=out / "mosquitto.conf")
    broker.start()
    try:
        pw, svc_pw = devices(out), accounts(out)["geowarn-ingest"]
        daemon = Client(plain, "geowarn-ingest", svc_pw, "geowarn-ingest")
        daemon.subscribe("$dp", "$dr", "/sys/+/post")
        # Another device's vendor topic: denied (Mosquitto 2.0 closes that connection). (One
        # connection per device at a time: the username is the client id.)
        attacker = Client(plain, "SP-U1", pw["SP-U1"])
        attacker.publish("/sys/SK11E80D1307426BB/post", b'{"SK11E80D1307426BB": {}}')
        attacker.close()
        u1b = Client(plain, "SP-U1", pw["SP-U1"])
        u1b.publish("/sys/SK11E80D1307426AZ/post", b'{"SK11E80D1307426AZ": {"L1_LF_1": 1}}')
        assert [t for t, _ in daemon.until("/sys/SK11E80D1307426AZ/post")] == ["/sys/SK11E80D1307426AZ/post"]
        u1b.publish("$dp", b'{"SK11E80D1307426AZ": {"L1_LF_1": 1}}')
        assert [t for t, _ in daemon.until("$dp")] == ["$dp"]
        # Commands: the daemon's reach the device; another device's do not.
        u1 = u1b
        u1.subscribe("$creq/SK11E80D1307426AZ/+")
        svc = Client(plain, "geowarn-ingest-detection", svc_pw)
        svc.publish("$creq/SK11E80D1307426BB/cmd", b"$cmd=setsensortime&sensor_id=L1_LF_1&sample_intv=60")
        svc.publish("$creq/SK11E80D1307426AZ/cmd", b"$cmd=setsensortime&sensor_id=L1_LF_1&sample_intv=60")
        assert [t for t, _ in u1.until("$creq/SK11E80D1307426AZ/cmd")] == ["$creq/SK11E80D1307426AZ/cmd"]
        u1b.publish("$dr", b"$cmd=setsensortime&result=succ&msgid=x")
        assert [t for t, _ in daemon.until("$dr")] == ["$dr"]
        for c in (daemon, u1, svc):
            c.close()
        acl = (out / "acl").read_text()
        assert "topic write $creq/+/cmd" in acl and "topic read $creq/SK11E80D1307426AZ/+" in acl
    finally:
        broker.stop()
