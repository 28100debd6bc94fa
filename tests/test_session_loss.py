"""The daemon notices when the broker lost its persistent session (issue 13, item 7).

A Mosquitto that crashes without having saved (or runs without persistence) comes back with
no memory of our session: the messages queued for us are gone, and the only sign is
session-present false on the reconnect. That must be an ERROR naming the client id and a
counter, not a quiet INFO line.
"""

from __future__ import annotations

import time

import httpx
import pytest

from daemonproc import Daemon
from services import free_port
from geowarn.config.settings import MqttTarget
from geowarn.ingest.mqtt import MqttLink

pytestmark = pytest.mark.slow


def _wait(what, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)  # paho's thread reconnects on its own schedule


def _crash_and_forget(broker) -> None:
    """A hard broker crash with nothing saved: the restarted broker has no sessions."""
    broker.kill()
    broker.persistence_path.unlink(missing_ok=True)
    broker.start()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_lost_persistent_session_is_counted(mosquitto, protocol, caplog):
    link = MqttLink(MqttTarget(mosquitto.url), client_id=f"loss-{protocol}", subscriptions=["geowarn/+/+/data"], protocol=protocol)
    link.start()
    try:
        _wait(link.subscribed.is_set)
        mosquitto.restart()  # a clean restart: the session was saved and comes back
        _wait(lambda: link.connects == 2 and link.subscribed.is_set())
        assert link.sessions_lost == 0
        _crash_and_forget(mosquitto)
        _wait(lambda: link.connects == 3)
        assert link.sessions_lost == 1
        errors = [r for r in caplog.records if r.levelname == "ERROR" and "possible loss" in r.getMessage()]
        assert len(errors) == 1
        assert errors[0].__dict__.get("client_id") == f"loss-{protocol}" or f"loss-{protocol}" in str(errors[0].__dict__)
    finally:
        link.stop()


def test_the_daemon_logs_a_lost_session(tmp_path, mosquitto):
    d = Daemon(tmp_path / "data", mosquitto.url, extra_env={"GEOWARN_STATS_INTERVAL_S": "1"})
    try:
        d.start()
        _crash_and_forget(mosquitto)
        _wait(lambda: "possible loss" in d.log_path.read_text(errors="replace"))
        line = next(x for x in d.log_path.read_text().splitlines() if "possible loss" in x)
        assert "ERROR" in line and "geowarn-test" in line
        _wait(lambda: "sessions_lost=1" in d.log_path.read_text(errors="replace") or '"sessions_lost": 1' in d.log_path.read_text(errors="replace"), 15)
        d.terminate()
    finally:
        d.close()


def _lost(base: str) -> tuple[int, str]:
    """(count in /healthz, the /metrics line) of lost broker sessions."""
    health = httpx.get(base + "/healthz", timeout=10).json()
    metric = next((x for x in httpx.get(base + "/metrics", timeout=10).text.splitlines() if x.startswith("geowarn_broker_sessions_lost_total ")), "")
    return int(health.get("broker_sessions_lost", {}).get("count", 0)), metric


def test_a_lost_session_shows_on_healthz_and_metrics_and_is_caught_across_a_daemon_restart(tmp_path, mosquitto):
    """Running, and while the daemon itself was down: the broker forgetting our session is a
    possible loss that /healthz and /metrics keep showing (across restarts), while a clean
    daemon restart on a broker that kept the session shows nothing."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    d = Daemon(tmp_path / "data", mosquitto.url, extra_env={"GEOWARN_HTTP": f"127.0.0.1:{port}"})
    try:
        d.start()
        assert _lost(base) == (0, "geowarn_broker_sessions_lost_total 0.0")
        d.terminate()
        d.start()  # the broker kept our session: nothing lost
        time.sleep(1.5)  # the daemon records what it found once a second; nothing to wait on
        assert _lost(base)[0] == 0
        _crash_and_forget(mosquitto)  # while the daemon runs
        _wait(lambda: _lost(base)[0] == 1)
        assert _lost(base)[1] == "geowarn_broker_sessions_lost_total 1.0"
        health = httpx.get(base + "/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["broker_sessions_lost"]["last"] > time.time() - 60
        d.terminate()
        _crash_and_forget(mosquitto)  # while the daemon is down: its first connect must notice
        d.start()
        _wait(lambda: _lost(base)[0] == 2)
        assert _lost(base)[1] == "geowarn_broker_sessions_lost_total 2.0"
        d.terminate()
    finally:
        d.close()
