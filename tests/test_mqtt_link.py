"""The daemon's broker connection: TLS with username/password from the URL, and MQTT 5
persistent sessions (session expiry) surviving a SIGKILL."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from daemonproc import Daemon, publisher
from services import Mosquitto, free_port

pytestmark = pytest.mark.slow

T0 = float(int(time.time()) - 2 * 86400)


def _reading(i: int) -> bytes:
    return json.dumps({"v": 1, "device": "BSH-EXT1", "seq": i, "readings": [{"ch": "disp", "t": T0 + i, "v": float(i)}]}).encode()


def _make_certs(d):
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    d.mkdir()
    run = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=GeoWarn test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return d / "ca.pem", d / "server.pem", d / "server.key"


class _TlsMosquitto(Mosquitto):
    """A plain anonymous listener (for the test's own clients) plus a TLS listener that needs
    a password."""

    def __init__(self, data_dir, ca, cert, key, passwd):
        super().__init__(data_dir)
        self.tls_port = free_port()
        self._tls = (ca, cert, key, passwd)

    def config_text(self) -> str:
        ca, cert, key, passwd = self._tls
        text = super().config_text()
        return "per_listener_settings true\n" + text + (
            f"\nlistener {self.tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
            f"allow_anonymous false\npassword_file {passwd}\n"
        )


def test_mqtts_with_password_from_the_url(tmp_path):
    ca, cert, key = _make_certs(tmp_path / "certs")
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "geo warn", "s3cret@:/"], check=True)
    broker = _TlsMosquitto(tmp_path / "m", ca, cert, key, passwd)
    broker.start()
    # user and password percent-escaped in the URL, as RFC 3986 wants
    url = f"mqtts://geo%20warn:s3cret%40%3A%2F@127.0.0.1:{broker.tls_port}"
    d = Daemon(tmp_path / "data", url, presence_url=broker.url, extra_env={"GEOWARN_MQTT_CA_FILE": str(ca)})
    pub = publisher(broker.url)
    try:
        d.start()
        pub.publish("geowarn/BSH/BSH-EXT1/data", _reading(0), qos=1).wait_for_publish(10)
        d.wait_until(lambda: d.count() == 1, message="one reading over TLS")
        assert d.terminate() < 5.0
    finally:
        pub.loop_stop()
        d.close()
        broker.stop()


def test_mqtts_with_a_wrong_password_is_refused_and_logged(tmp_path):
    ca, cert, key = _make_certs(tmp_path / "certs")
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "geowarn", "right"], check=True)
    broker = _TlsMosquitto(tmp_path / "m", ca, cert, key, passwd)
    broker.start()
    d = Daemon(tmp_path / "data", f"mqtts://geowarn:wrong@127.0.0.1:{broker.tls_port}", presence_url=broker.url, extra_env={"GEOWARN_MQTT_CA_FILE": str(ca)})
    try:
        with pytest.raises(RuntimeError, match="not online"):
            d.start(timeout=5)
        assert "refused the connection" in d.log_tail(100)
    finally:
        d.close()
        broker.stop()


def test_mqtt5_session_expiry_keeps_the_backlog_across_a_sigkill(tmp_path, mosquitto):
    d = Daemon(tmp_path / "data", mosquitto.url, extra_env={"GEOWARN_MQTT_PROTOCOL": "5", "GEOWARN_MQTT_SESSION_EXPIRY_S": "3600"})
    d.start()
    d.kill()
    pub = publisher(mosquitto.url)
    try:
        for i in range(500):
            pub.publish("geowarn/BSH/BSH-EXT1/data", _reading(i), qos=1).wait_for_publish(10)
        d.start()
        d.wait_until(lambda: d.count() == 500, message="the 500 readings queued while the daemon was dead")
        assert d.query("SELECT count(DISTINCT t_ms) FROM readings") == [(500,)]
        assert d.terminate() < 5.0
    finally:
        pub.loop_stop()
        d.close()


# -- session takeover ------------------------------------------------------------------------


def _rival(url: str, client_id: str, protocol: int) -> "mqtt.Client":
    """Someone on an open broker connecting with our client id, reconnecting when dropped (as
    paho does by itself): the two clients take the session from each other over and over."""
    import paho.mqtt.client as mqtt

    from geowarn.config.settings import MqttTarget

    target = MqttTarget(url)
    kwargs = {"clean_session": False} if protocol == mqtt.MQTTv311 else {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs)
    c.reconnect_delay_set(1, 1)
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("geowarn/+", 1)
    c.connect_async(target.host, target.port, 30)
    c.loop_start()
    return c


def test_a_client_taking_the_detection_workers_session_is_reported_as_an_error(tmp_path, mosquitto):
    """The tester's steal.py: a client with ``{mqtt_client_id}-detection`` swallowed signed
    requests while the daemon logged only reconnects (MQTT 3.1.1: the broker just closes)."""
    import paho.mqtt.client as mqtt

    d = Daemon(tmp_path / "data", mosquitto.url, client_id="geowarn-test")
    d.start()
    rival = _rival(mosquitto.url, "geowarn-test-detection", mqtt.MQTTv311)
    try:
        deadline = time.monotonic() + 45
        while "same client id" not in d.log_tail(400) and time.monotonic() < deadline:
            time.sleep(0.5)
        errors = [line for line in d.log_tail(400).splitlines() if "same client id" in line]
        assert len(errors) == 1, d.log_tail(60)  # said once, not once a second
        assert " ERROR " in errors[0] and "geowarn broker-config" in errors[0] and "client_id=geowarn-test-detection" in errors[0], errors
    finally:
        rival.disconnect()
        rival.loop_stop()
        d.close()


def test_an_mqtt5_session_taken_over_is_reported_at_once(mosquitto, caplog):
    import logging

    import paho.mqtt.client as mqtt

    from geowarn.config.settings import MqttTarget
    from geowarn.ingest.mqtt import MqttLink

    link = MqttLink(MqttTarget(mosquitto.url), client_id="geowarn-v5", subscriptions=["geowarn/ack"], protocol="5")
    caplog.set_level(logging.WARNING, logger="geowarn.ingest.mqtt")
    link.start()
    rival = None
    try:
        assert link.wait_connected(10)
        rival = _rival(mosquitto.url, "geowarn-v5", mqtt.MQTTv5)
        deadline = time.monotonic() + 15
        # By its words: the rival's clean start also wiped the session, a "possible loss" ERROR of its own.
        takeover = lambda: [r for r in caplog.records if r.levelno == logging.ERROR and "same client id" in r.getMessage()]  # noqa: E731
        while not takeover() and time.monotonic() < deadline:
            time.sleep(0.1)
        errors = takeover()
        assert errors and "geowarn broker-config" in errors[0].getMessage()
    finally:
        if rival is not None:
            rival.disconnect()
            rival.loop_stop()
        link.stop()


def test_takeover_watch_tells_a_takeover_from_a_flaky_network():
    from geowarn.ingest.mqtt import SESSION_TAKEN_OVER, TakeoverWatch

    w = TakeoverWatch()
    # Drops long after each connect (a broker restart now and then): never a takeover.
    t = 0.0
    for _ in range(10):
        w.connected(t)
        assert not w.dropped(t + 30.0, 128)
        t += 31.0
    # Three drops within a minute, each a second after connecting: reported once...
    w.connected(t)
    assert not w.dropped(t + 1, 128)
    w.connected(t + 2)
    assert not w.dropped(t + 3, 128)
    w.connected(t + 4)
    assert w.dropped(t + 5, 128)
    w.connected(t + 6)
    assert not w.dropped(t + 7, 128)  # ... not again within 5 minutes
    assert w.takeovers == 2
    # MQTT 5 says so: reported at the first drop (after the quiet period).
    w2 = TakeoverWatch()
    w2.connected(0.0)
    assert w2.dropped(100.0, SESSION_TAKEN_OVER)
