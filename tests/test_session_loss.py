"""The daemon notices when the broker lost its persistent session (issue 13, item 7).

A Mosquitto that crashes without having saved (or runs without persistence) comes back with
no memory of our session: the messages queued for us are gone, and the only sign is
session-present false on the reconnect. That must be an ERROR naming the client id and a
counter, not a quiet INFO line.
"""

from __future__ import annotations

import time

import pytest

from daemonproc import Daemon
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
