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
