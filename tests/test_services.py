"""The real-service fixtures work: Mosquitto keeps persistent sessions across a restart,
VictoriaMetrics accepts InfluxDB line protocol and deduplicates repeated points."""

from __future__ import annotations

import queue
import shutil
import socket

import httpx
import paho.mqtt.client as mqtt
import pytest

import services
from services import Mosquitto, VictoriaMetrics, free_port

TIMEOUT = 10.0  # seconds for any single thing we wait on


class MqttClient:
    """A paho 2.x client with its events in queues, so tests wait on them, not sleep."""

    def __init__(self, broker: Mosquitto, client_id: str, *, clean_session: bool) -> None:
        self.broker = broker
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        self.connacks: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connacks.put(
            (rc, flags.session_present)
        )
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put(rcs)
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)

    def connect(self) -> bool:
        """Connect and wait for CONNACK; return the session-present flag."""
        self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()
        rc, session_present = self.connacks.get(timeout=TIMEOUT)
        assert not rc.is_failure, f"CONNACK {rc}"
        return session_present

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.client.subscribe(topic, qos=qos)
        (granted,) = self.subacks.get(timeout=TIMEOUT)
        assert not granted.is_failure and granted.value == qos, f"SUBACK {granted}"

    def publish_all(self, topic: str, payloads: list[bytes], qos: int = 1) -> None:
        """Publish and wait until the broker acknowledged every message."""
        infos = [self.client.publish(topic, p, qos=qos) for p in payloads]
        for info in infos:
            info.wait_for_publish(timeout=TIMEOUT)
            assert info.is_published(), f"message {info.mid} not acknowledged"

    def receive(self, n: int) -> list[mqtt.MQTTMessage]:
        return [self.messages.get(timeout=TIMEOUT) for _ in range(n)]

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _offline_subscriber(broker: Mosquitto, client_id: str, topic: str) -> MqttClient:
    """Create a persistent session subscribed to ``topic``, then go offline."""
    sub = MqttClient(broker, client_id, clean_session=False)
    sub.connect()
    sub.subscribe(topic, qos=1)
    sub.disconnect()
    return sub


# -- Mosquitto -------------------------------------------------------------------------
def test_mosquitto_fixture_basics(mosquitto: Mosquitto) -> None:
    assert mosquitto.host == "127.0.0.1"
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert mosquitto.port != 1883
    assert mosquitto.running
    with socket.create_connection((mosquitto.host, mosquitto.port), timeout=TIMEOUT):
        pass
    config = mosquitto.config_path.read_text()
    assert "max_queued_messages 0\n" in config
    assert "max_inflight_messages 100\n" in config


def test_mosquitto_queued_qos1_message_survives_restart(mosquitto: Mosquitto) -> None:
    sub = _offline_subscriber(mosquitto, "geowarn-test-sub", "geowarn/test/#")

    pub = MqttClient(mosquitto, "geowarn-test-pub", clean_session=True)
    pub.connect()
    pub.publish_all("geowarn/test/site1", [b"queued while offline"])
    pub.disconnect()

    old_pid = mosquitto.pid
    mosquitto.restart()
    assert mosquitto.pid != old_pid
    assert mosquitto.persistence_path.exists()

    sub2 = MqttClient(mosquitto, "geowarn-test-sub", clean_session=False)
    assert sub2.connect() is True, "persistent session was lost by the restart"
    try:
        (msg,) = sub2.receive(1)
        assert msg.topic == "geowarn/test/site1"
        assert msg.payload == b"queued while offline"
        assert msg.qos == 1
    finally:
        sub2.disconnect()


def test_mosquitto_backlog_beyond_default_queue_limit_survives_restart(
    mosquitto: Mosquitto,
) -> None:
    # Mosquitto's default max_queued_messages is 1000; the fixture sets no limit.
    n = 3000
    _offline_subscriber(mosquitto, "geowarn-test-backlog", "geowarn/backlog")

    pub = MqttClient(mosquitto, "geowarn-test-backlog-pub", clean_session=True)
    pub.connect()
    pub.publish_all("geowarn/backlog", [str(i).encode() for i in range(n)])
    pub.disconnect()

    mosquitto.restart()

    sub = MqttClient(mosquitto, "geowarn-test-backlog", clean_session=False)
    assert sub.connect() is True
    try:
        got = {int(m.payload) for m in sub.receive(n)}
        assert got == set(range(n))
    finally:
        sub.disconnect()


def test_missing_mosquitto_binary_is_an_error_not_a_skip(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(services.os, "access", lambda path, mode: False)
    with pytest.raises(RuntimeError, match=r"\./scripts/test"):
        Mosquitto(tmp_path)
    with pytest.raises(RuntimeError, match=r"\./scripts/test"):
        VictoriaMetrics(tmp_path)


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# -- VictoriaMetrics -------------------------------------------------------------------
LINE = "displacement,site=S1,device=D1 value=1.5 1764408600000"


def _write(victoria: VictoriaMetrics, body: str) -> None:
    resp = httpx.post(
        f"{victoria.url}/api/v2/write",
        params={"org": "o", "bucket": "b", "precision": "ms"},
        content=body.encode(),
        timeout=TIMEOUT,
    )
    assert resp.status_code == 204, resp.text


def test_victoria_line_protocol_write_and_export(victoria: VictoriaMetrics) -> None:
    assert victoria.url == f"http://127.0.0.1:{victoria.port}"
    _write(victoria, LINE)

    series = victoria.wait_for_samples("displacement_value", 1)

    assert series == [
        {
            "metric": {"__name__": "displacement_value", "site": "S1", "device": "D1"},
            "values": [1.5],
            "timestamps": [1764408600000],
        }
    ]


def test_victoria_same_point_written_twice_is_stored_once(victoria: VictoriaMetrics) -> None:
    _write(victoria, LINE)
    _write(victoria, LINE)
    # A later point as a marker: once it is visible, both earlier writes are too.
    _write(victoria, "displacement,site=S1,device=D1 value=2.0 1764408601000")

    (series,) = victoria.wait_for_samples("displacement_value", 2)
    victoria.flush()
    (series,) = victoria.export("displacement_value")

    assert series["timestamps"] == [1764408600000, 1764408601000]
    assert series["values"] == [1.5, 2.0]


def test_victoria_data_survives_restart(victoria: VictoriaMetrics) -> None:
    victoria.write_lines([LINE, "displacement,site=S2,device=D9 value=-0.25 1764408600000"])
    victoria.wait_for_samples("displacement_value", 2)

    victoria.restart()

    series = victoria.export('displacement_value{site="S2"}')
    assert [(s["metric"]["device"], s["values"], s["timestamps"]) for s in series] == [
        ("D9", [-0.25], [1764408600000])
    ]
    assert victoria.wait_for_samples("displacement_value", 2)
