"""The duty-officer API against the real daemon and a real Mosquitto.

A yellow warning at BSH (county 420527 Zigui) escalates while nobody acknowledges it. Without
a token the API answers 401; a Xingshan (420526) county token neither sees it nor may
acknowledge it (403); both refusals are in the audit table (the 403s at once, the 401s as the
one row of their burst of failed token attempts, tests/test_api_security.py). The Zigui county token
acknowledges it through the API, which sends the same MQTT request as ``geowarn ack``, and the
escalation stops. /metrics carries values worked out from what the test published.

Deadlines are shortened through GEOWARN_ALERT_POLICY so the test takes seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from geowarn.console.tokens import TokenStore, hash_secret
from daemonproc import REPO, Daemon, publisher
from services import free_port

pytestmark = pytest.mark.slow

ACK_S = 8.0
POLICY = json.dumps({"ack_deadline_s": {"1": None, "2": ACK_S, "3": ACK_S, "4": ACK_S}})
SLOPE_MESSAGES = 73


def yellow_slope(url: str) -> None:
    """BSH's extensometer creeps 10 mm/day for 12 h (73 messages, one reading each): yellow
    (3-72 mm/day) from one device. Event times two days back, as a delayed feed."""
    pub = publisher(url, client_id=f"slope-{time.monotonic_ns()}")
    try:
        start = int(time.time()) - 2 * 86400 - 12 * 3600
        for i in range(SLOPE_MESSAGES):
            doc = {"v": 1, "device": "BSH-EXT1", "seq": i, "readings": [{"ch": "disp", "t": start + i * 600, "v": 10.0 * i * 600 / 86400}]}
            pub.publish("geowarn/BSH/BSH-EXT1/data", json.dumps(doc).encode(), qos=1).wait_for_publish(10)
    finally:
        pub.disconnect()
        pub.loop_stop()


def create_token(data_dir: Path, tier: str, admin: str, name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "geowarn.service.cli", "token", "create", "--tier", tier, "--admin", admin, "--name", name, "--data-dir", str(data_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


def wait_for(what: Callable[[], Any], timeout: float, message: str, daemon: Daemon | None = None) -> Any:
    """Poll an HTTP view of the daemon's state with a deadline (nothing to subscribe to)."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}" + (f"; daemon log:\n{daemon.log_tail()}" if daemon else ""))
        time.sleep(0.2)


class Console:
    """A daemon with its HTTP API on a free loopback port, and the tokens of the test."""

    def __init__(self, daemon: Daemon, base: str) -> None:
        self.daemon = daemon
        self.base = base
        self.zigui = create_token(daemon.data_dir, "county", "420527", "zigui-duty")
        self.xingshan = create_token(daemon.data_dir, "county", "420526", "xingshan-duty")

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30)

    def audit(self) -> list[Any]:
        with TokenStore(self.daemon.data_dir / "tokens.sqlite") as store:
            return store.audit_entries()


@pytest.fixture
def console(tmp_path, mosquitto) -> Iterator[Console]:
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    daemon = Daemon(data, mosquitto.url, extra_env={"GEOWARN_ALERT_POLICY": POLICY, "GEOWARN_HTTP": f"127.0.0.1:{port}", "GEOWARN_SNAPSHOT_INTERVAL_S": "1"})
    con = Console(daemon, f"http://127.0.0.1:{port}")  # tokens first: the daemon reads the same file
    daemon.start()
    try:
        wait_for(lambda: httpx.get(con.base + "/healthz", timeout=5).status_code == 200, 20, "the API", daemon)
        yield con
    finally:
        daemon.close()


def _timeline(c: httpx.Client, wid: str) -> dict[str, Any]:
    r = c.get(f"/api/warnings/{wid}/timeline")
    assert r.status_code == 200, r.text
    return r.json()


def _escalations(tl: dict[str, Any]) -> list[str]:
    return [n["admin"] for n in tl["notifications"] if n["kind"] == "escalation"]


def test_scoped_ack_through_the_api_stops_escalation_and_everything_is_audited(console, mosquitto):
    anon, zigui, xingshan = console.client(None), console.client(console.zigui), console.client(console.xingshan)

    # No token: 401 for reads and actions; health and metrics are open.
    assert anon.get("/api/warnings").status_code == 401
    r = anon.post("/api/warnings/whatever/ack", json={"name": "x", "note": "y"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert console.client("gwt_not-a-token").get("/api/sites").status_code == 401
    assert anon.get("/healthz").json()["ok"] is True
    assert anon.get("/openapi.json").json()["paths"]["/api/warnings/{warning_id}/ack"]["post"]

    yellow_slope(mosquitto.url)
    bad = publisher(mosquitto.url, client_id="bad-publisher")
    bad.publish("geowarn/BSH/BSH-EXT1/data", b"{not json", qos=1).wait_for_publish(10)
    bad.disconnect()
    bad.loop_stop()

    warnings = wait_for(lambda: zigui.get("/api/warnings").json(), 60, "the BSH warning in the API", console.daemon)
    w = warnings[0]
    assert (w["site"], w["admin"], w["level"], w["colour"], w["status"], w["active"]) == ("BSH", "420527", 2, "yellow", "unacknowledged", True)
    assert w["since"] is not None and w["evidence"]["channel"] == "BSH-EXT1/disp" and "forecast" in w
    wid = w["id"]

    # Xingshan's token: the warning is not in its list, and it may neither read nor ack it.
    assert xingshan.get("/api/warnings").json() == []
    assert [s["site"] for s in xingshan.get("/api/sites").json()] == ["XK"]
    assert xingshan.get(f"/api/warnings/{wid}/timeline").status_code == 403
    refused = xingshan.post(f"/api/warnings/{wid}/ack", json={"name": "李 Li", "note": "not mine"})
    assert refused.status_code == 403, refused.text
    assert xingshan.post("/api/sites/BZM/shelve", json={"name": "李 Li", "note": "maintenance", "minutes": 30}).status_code == 403

    # Nobody acknowledges: the province is told when the deadline passes.
    tl = wait_for(lambda: (t := _timeline(zigui, wid)) and "420000" in _escalations(t) and t, ACK_S + 30, "escalation to the province", console.daemon)
    assert [n["admin"] for n in tl["notifications"] if n["kind"] == "warning"] and "100000" not in _escalations(tl)
    assert all(d["state"] in ("sent", "pending") for n in tl["notifications"] for d in n["deliveries"])
    assert [h["rule"] for h in tl["history"]][:2] == ["raise", "escalate_unacked"]

    # Name and note are both required.
    assert zigui.post(f"/api/warnings/{wid}/ack", json={"name": "王", "note": " "}).status_code == 422
    done = zigui.post(f"/api/warnings/{wid}/ack", json={"name": "王值班 Wang", "note": "patrol sent, residents warned"})
    assert done.status_code == 200, done.text
    assert done.json()["rule"] == "ack" and done.json()["warning_id"] == wid
    assert zigui.get(f"/api/warnings/{wid}").json()["status"] == "acknowledged"

    # Quiet for longer than a deadline: no escalation to national.
    time.sleep(ACK_S * 1.5)  # waiting for something NOT to happen: only time can tell
    tl = _timeline(zigui, wid)
    assert _escalations(tl) == ["420000"], tl["notifications"]
    # by is the token's name (the identity the API signs for); the typed name is kept with the note.
    assert tl["history"][-1]["rule"] == "ack" and tl["history"][-1]["detail"].startswith("by zigui-duty at level 2: 王值班 Wang: patrol sent")

    # Shelve and unshelve a site of the county for maintenance (same MQTT request path).
    shelved = zigui.post("/api/sites/BZM/shelve", json={"name": "王", "note": "GNSS1 antenna replaced", "minutes": 30})
    assert shelved.status_code == 200 and shelved.json()["rule"] == "shelve", shelved.text
    unshelved = zigui.post("/api/sites/BZM/unshelve", json={"name": "王"})
    assert unshelved.status_code == 200 and unshelved.json()["rule"] == "unshelve", unshelved.text
    # An unknown quick-report task is 404 (orange and red open them; this warning is yellow).
    assert zigui.post("/api/reports/nope/submit", json={"name": "王"}).status_code == 404

    # Live updates: the first event carries the county's warnings.
    with zigui.stream("GET", "/api/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == "event: update"
        doc = json.loads(next(lines).removeprefix("data: "))
    assert [x["id"] for x in doc["warnings"]] == [wid] and doc["levels"]["BSH"] == 2

    # The audit trail: every action and every refusal, with who, what, from where.
    rows = [(a.who, a.action, a.target, a.client, a.outcome) for a in console.audit()]
    assert ("xingshan-duty", "GET /api/warnings/{warning_id}/timeline", wid, "127.0.0.1", "forbidden") in rows
    assert ("xingshan-duty", "POST /api/warnings/{warning_id}/ack", wid, "127.0.0.1", "forbidden") in rows
    assert ("xingshan-duty", "POST /api/sites/{site}/shelve", "BZM", "127.0.0.1", "forbidden") in rows
    assert ("zigui-duty", "POST /api/warnings/{warning_id}/ack", wid, "127.0.0.1", "ok") in rows
    # ... the 422 too (a blank note, refused by validation before the route ran; issue 16).
    invalid = [a for a in console.audit() if a.outcome == "refused" and a.who == "zigui-duty" and a.detail.startswith("invalid request")]
    assert [(a.action, a.target) for a in invalid] == [("POST /api/warnings/{warning_id}/ack", wid)], invalid
    assert "body.note" in invalid[0].detail, invalid[0].detail
    assert ("zigui-duty", "POST /api/sites/{site}/shelve", "BZM", "127.0.0.1", "ok") in rows
    assert all(a.t > 0 for a in console.audit())

    # Tokens are stored only as hashes.
    raw = b"".join(p.read_bytes() for p in console.daemon.data_dir.glob("tokens.sqlite*"))
    for secret in (console.zigui, console.xingshan):
        assert secret.encode() not in raw and hash_secret(secret).encode() in raw

    # /metrics, values from what was published: 73 slope messages + 1 bad one; 73 readings;
    # one not_json dead letter; one level-2 escalation; one open yellow warning, acknowledged;
    # 11 devices in the example registry, of which BSH-EXT1 alone reports.
    text = anon.get("/metrics").text
    fam = {f.name: f for f in text_string_to_metric_families(text)}

    def value(name: str, **labels: str) -> float:
        samples = [s for f in fam.values() for s in f.samples if s.name == name and s.labels == labels]
        assert len(samples) == 1, (name, labels, [s for f in fam.values() for s in f.samples if s.name == name])
        return samples[0].value

    assert value("geowarn_messages_received_total") == SLOPE_MESSAGES + 1
    assert value("geowarn_messages_acked_total") == SLOPE_MESSAGES + 1
    assert value("geowarn_readings_stored_total") == SLOPE_MESSAGES
    assert value("geowarn_deadletters_total", reason="not_json") == 1
    assert value("geowarn_escalations_total", level="2") == 1
    assert value("geowarn_escalations_total", level="3") == 0
    assert value("geowarn_open_warnings", level="2") == 1
    assert value("geowarn_unacknowledged_warnings", level="2") == 0
    assert value("geowarn_devices") == 11 and value("geowarn_devices_online") == 1
    assert value("geowarn_device_online_ratio") == pytest.approx(1 / 11)
    # Yellow reaches county and city first, then the province: one message per unit notifier.
    for unit in ("420527", "420500", "420000"):
        assert value("geowarn_notifications", notifier=f"{unit}/mqtt/0", state="sent") >= 1
    assert value("geowarn_store_lag_batches") == 0
    # Detection's figures come from its checkpoint (every second here): every stored reading judged.
    assert value("geowarn_detection_readings_total") == SLOPE_MESSAGES
    assert value("geowarn_detection_seconds_total") > 0
    assert value("geowarn_detection_lag_readings") == 0
    # Every site's state saved by the checkpoint: a restart would judge nothing again.
    assert value("geowarn_detection_unsaved_sites") == 0
    assert value("geowarn_detection_restart_replay_readings") == 0
    assert value("geowarn_detection_resuming") == 0  # a first start: nothing to read on from

    # The three refused requests at the start (two without a token, one with a wrong one) are
    # ONE audit row, their burst's, written when it ends (a minute of quiet, or the clean stop):
    # each attempt is counted under its route's template, never as the URL it came with.
    console.daemon.terminate()
    (burst,) = [a for a in console.audit() if a.outcome == "unauthorised"]
    assert (burst.who, burst.token_id, burst.action, burst.target, burst.client) == ("-", None, "failed tokens", "GET /api/warnings", "127.0.0.1")
    assert "3 failed token attempts (2 without a token, 1 unknown or revoked)" in burst.detail, burst.detail
    for attempt in ("GET /api/warnings ×1", "POST /api/warnings/{warning_id}/ack ×1", "GET /api/sites ×1"):
        assert attempt in burst.detail, burst.detail
    assert not any("whatever" in a.target + a.detail for a in console.audit())


def test_the_api_server_starts_stops_and_a_busy_port_does_not_stop_the_daemon(tmp_path, mosquitto):
    """ApiServer in-process: a port in use is reported (start() is False) instead of killing
    ingest; on a free port it serves, and stop() ends it and its open event streams."""
    import socket
    import threading

    from geowarn.console.api import ApiServer
    from geowarn.console.metrics import MainStats
    from geowarn.config.registry import load_registry
    from geowarn.config.roster import load_roster
    from geowarn.config.settings import Loaded, Settings, example_path

    registry, roster = load_registry(example_path("sites.example.toml")), load_roster(example_path("roster.example.toml"))

    def loaded(http: str) -> Loaded:
        return Loaded(Settings(mqtt_url=mosquitto.url, data_dir=tmp_path / "data", http=http), registry, roster, [])

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        server = ApiServer(loaded(f"127.0.0.1:{busy.getsockname()[1]}"), tmp_path / "data", MainStats)
        assert server.start() is False
        server.stop()
    finally:
        busy.close()

    port = free_port()
    server = ApiServer(loaded(f"127.0.0.1:{port}"), tmp_path / "data", lambda: MainStats(messages_received=5, messages_acked=4))
    assert server.start() is True
    with TokenStore(tmp_path / "data" / "tokens.sqlite") as store:
        _, secret = store.create("national", "100000", "ops", time.time())
        _, revoked = store.create("province", "420000", "hubei", time.time())

    def listen(token: str, opened: threading.Event) -> None:
        with httpx.stream("GET", f"http://127.0.0.1:{port}/api/events", headers={"Authorization": f"Bearer {token}"}, timeout=30) as r:
            for _ in r.iter_lines():
                opened.set()

    opened, opened_revoked = threading.Event(), threading.Event()
    reader = threading.Thread(target=listen, args=(secret, opened), daemon=True)
    doomed = threading.Thread(target=listen, args=(revoked, opened_revoked), daemon=True)
    reader.start()
    doomed.start()
    try:
        assert opened.wait(10) and opened_revoked.wait(10), "no event from /api/events"
        with TokenStore(tmp_path / "data" / "tokens.sqlite") as store:
            store.revoke("hubei", time.time())
        doomed.join(10)
        assert not doomed.is_alive(), "a revoked token's event stream went on"
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "geowarn_messages_received_total 5.0" in metrics and "geowarn_messages_acked_total 4.0" in metrics
        assert httpx.get(f"http://127.0.0.1:{port}/").text.startswith("<!doctype html>")
    finally:
        t0 = time.monotonic()
        server.stop()
        reader.join(10)
    assert not reader.is_alive() and time.monotonic() - t0 < 8, "stop() left an event stream open"


def test_an_action_the_worker_does_not_answer_is_202_queued_and_not_confirmed(tmp_path, mosquitto):
    """No detection worker on the broker: the action is published but nobody answers. The API
    must not promise it applies (on an open broker a client holding the worker's client id can
    swallow it): 202, "queued", NOT confirmed, and audited as such."""
    import dataclasses

    from geowarn.console.api import ApiServer
    from geowarn.console.metrics import MainStats
    from geowarn.config.registry import load_registry
    from geowarn.config.roster import load_roster
    from geowarn.config.settings import Loaded, Settings, example_path

    port = free_port()
    settings = Settings(mqtt_url=mosquitto.url, data_dir=tmp_path / "data", http=f"127.0.0.1:{port}")
    loaded = Loaded(settings, load_registry(example_path("sites.example.toml")), load_roster(example_path("roster.example.toml")), [])
    server = ApiServer(loaded, tmp_path / "data", MainStats)
    server.app.state.geowarn = dataclasses.replace(server.app.state.geowarn, answer_wait_s=1.0)  # not 15 s of waiting
    assert server.start() is True
    try:
        with TokenStore(tmp_path / "data" / "tokens.sqlite") as store:
            _, secret = store.create("county", "420527", "zigui-duty", time.time())
        r = httpx.post(f"http://127.0.0.1:{port}/api/sites/BSH/shelve", json={"name": "王", "note": "antenna", "minutes": 5},
                       headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    finally:
        server.stop()
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["ok"], body["queued"]) == (None, True)
    assert "queued at the broker but NOT confirmed" in body["detail"] and "check the warning's (or site's) state" in body["detail"]
    assert "applies" not in body["detail"]
    with TokenStore(tmp_path / "data" / "tokens.sqlite") as store:
        (row,) = [a for a in store.audit_entries() if a.action == "POST /api/sites/{site}/shelve"]
    assert (row.who, row.target, row.outcome) == ("zigui-duty", "BSH", "failed") and row.detail == "queued: " + body["detail"]
