"""A daemon started before its broker says so (issue 16, rough edge 1).

``geowarn run`` with no broker used to log "daemon running" and then nothing, while
``/healthz`` answered 200. Now: an ERROR naming the broker and the fix, repeated while it
lasts; ``/healthz`` and ``/readyz`` 503 with the reason; ``geowarn_mqtt_connected 0``. Once a
real Mosquitto comes up on that port, the daemon connects by itself and all turn healthy.
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from daemonproc import REPO, Daemon
from services import Mosquitto, free_port

pytestmark = pytest.mark.slow


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None


def _until(pred, timeout: float, what: str, log) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)  # polling another process's HTTP answers and log: nothing to wait on
    raise AssertionError(f"{what} not within {timeout} s:\n{log()}")


def test_no_broker_is_said_loudly_and_healthz_is_503_until_one_comes(tmp_path):
    mqtt_port, http_port = free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    d = Daemon(tmp_path / "data", f"mqtt://127.0.0.1:{mqtt_port}", extra_env={"GEOWARN_HTTP": f"127.0.0.1:{http_port}"})
    log = open(d.log_path, "ab")
    d.proc = subprocess.Popen([sys.executable, "-m", "geowarn.service.cli", "run"], cwd=REPO, env=d.env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    broker = Mosquitto(tmp_path / "broker", mqtt_port)
    try:
        _until(lambda: (r := _get(base + "/healthz")) is not None and r.status_code == 503, 30, "/healthz 503", d.log_tail)
        health = httpx.get(base + "/healthz", timeout=5)
        assert health.json()["mqtt"] is False and "no connection to the MQTT broker" in health.json()["reason"], health.json()
        assert f"127.0.0.1:{mqtt_port}" not in health.text  # no token needed: no broker URL (it carries the account)
        ready = httpx.get(base + "/readyz", timeout=5)
        assert ready.status_code == 503 and "MQTT broker" in ready.json()["reason"], ready.json()
        assert "geowarn_mqtt_connected 0.0" in httpx.get(base + "/metrics", timeout=5).text

        # Said within ~10 s, with the broker and the fix, and said again while it lasts.
        def errors() -> list[str]:
            return [x for x in d.log_path.read_text(errors="replace").splitlines() if "no connection to the MQTT broker" in x]

        _until(lambda: len(errors()) >= 2, 60, "the broker error twice", d.log_tail)
        first = errors()[0]
        assert "ERROR" in first and f"127.0.0.1:{mqtt_port}" in first and "mosquitto" in first.lower(), first
        assert d.proc.poll() is None, "the daemon must wait for its broker, not exit"

        broker.start()
        _until(lambda: (r := _get(base + "/healthz")) is not None and r.status_code == 200, 60, "/healthz 200 after the broker came", d.log_tail)
        assert httpx.get(base + "/healthz", timeout=5).json()["mqtt"] is True
        ready = httpx.get(base + "/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json() == {"ready": True}, ready.text
        assert "geowarn_mqtt_connected 1.0" in httpx.get(base + "/metrics", timeout=5).text
        n = len(errors())
        time.sleep(3)  # connected: no more broker errors (the repeat period is 30 s, so this only checks a burst)
        assert len(errors()) == n
        d.terminate()
    finally:
        d.close()
        broker.stop()


def test_healthz_says_lagging_when_the_stores_fall_behind(tmp_path):
    """Issue 16 item 1: /healthz is 503 while lagging — message-log batches not stored, or
    stored readings not judged — with the numbers. Real stores; the health check's own reader."""
    from types import SimpleNamespace

    from geowarn.config.registry import load_registry
    from geowarn.config.settings import example_path
    from geowarn.console.routes import operations
    from geowarn.console.views import Views
    from geowarn.ingest.journal import DETECTION_STATS_KEY, Journal
    from geowarn.ingest.messagelog import MessageLog

    reg = load_registry(example_path("sites.example.toml"))
    data = tmp_path / "data"
    j = Journal(data / "journal.sqlite")
    series = list(j.series_ids(reg).values())
    log = MessageLog(data / "messages.sqlite")
    ctx = SimpleNamespace(views=Views(data, reg))
    assert operations._lag(ctx) == []  # empty stores: nothing behind
    for k in range(operations.LAG_MAX_BATCHES + 5):
        log.append([(b"geowarn/BSH/BSH-EXT1/data", b"{}")], 1_700_000_000_000 + k)
    lag = operations._lag(ctx)
    assert len(lag) == 1 and f"{operations.LAG_MAX_BATCHES + 5} message-log batches" in lag[0], lag
    n = operations.LAG_MAX_READINGS + 10
    j.append([(series[i % len(series)], 1_700_000_000_000 + i * 1000, 1.0, 0, 0) for i in range(n)],
             state={"store.message_position": operations.LAG_MAX_BATCHES + 5, DETECTION_STATS_KEY: {"position": 5}})
    lag = operations._lag(ctx)
    assert len(lag) == 1 and f"{n - 5} stored readings not yet judged" in lag[0], lag
    j.set_state(DETECTION_STATS_KEY, {"position": n})
    assert operations._lag(ctx) == []
    j.close()
    log.close()
