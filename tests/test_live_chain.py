"""The response chain in the running daemon, against a real Mosquitto: a yellow warning reaches
county and city, escalates to the province when nobody acknowledges, survives a daemon restart
in the middle of its escalation without repeating a notification, reaches national, and stops
escalating once a duty officer acknowledges it with ``geowarn ack``.

Deadlines are shortened through GEOWARN_ALERT_POLICY so the test takes seconds, not hours.
Expected tiers and admin codes come from DESIGN §5 and the example roster, by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from lxml import etree

from geowarn.alerts.cap import CAP_NS, CapSchema
from daemonproc import REPO, Daemon, Recorder, publisher

pytestmark = pytest.mark.slow

ACK_S = 8.0
POLICY = json.dumps({"ack_deadline_s": {"1": None, "2": ACK_S, "3": ACK_S, "4": ACK_S}})
T0 = float(int(time.time()) - 2 * 86400)


def _yellow_slope(pub) -> None:
    """BSH's extensometer creeps 10 mm/day for 12 h: yellow (3-72 mm/day), one device is enough."""
    start = T0 - 12 * 3600
    for i in range(73):
        t = start + i * 600
        doc = {"v": 1, "device": "BSH-EXT1", "seq": i, "readings": [{"ch": "disp", "t": t, "v": 10.0 * i * 600 / 86400}]}
        pub.publish("geowarn/BSH/BSH-EXT1/data", json.dumps(doc).encode(), qos=1).wait_for_publish(10)


class Notes:
    """The notifications seen on geowarn/notify/#, by id (a repeat would be a duplicate)."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.seen: list[dict] = []
        self.other: list[tuple[str, bytes]] = []

    def until(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond(self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; seen {[(n['kind'], n['admin']) for n in self.seen]}")
            try:
                topic, payload, _ = self.rec.take(1, timeout=left)[0]
            except TimeoutError:
                continue
            if topic.startswith("geowarn/notify/"):
                self.seen.append(json.loads(payload))
            else:
                self.other.append((topic, payload))

    def warning_notes(self) -> list[tuple[str, str]]:
        return [(n["kind"], n["admin"]) for n in self.seen if n["body"]["warning_id"] and n["kind"] in ("warning", "escalation")]


def _ack(daemon: Daemon, mqtt_url: str, ident: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geowarn.service.cli", "ack", ident, "--by", "王值班 Wang (county duty)", "--note", "patrol sent, residents warned", "--wait", "20"],
        cwd=REPO, env={**daemon.env, "GEOWARN_MQTT_URL": mqtt_url}, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_a_warning_escalates_until_acknowledged_and_a_restart_repeats_nothing(tmp_path, mosquitto, stop):
    daemon = Daemon(tmp_path / "data", mosquitto.url, extra_env={"GEOWARN_ALERT_POLICY": POLICY})
    daemon.start()
    rec = Recorder(mosquitto.url, ["geowarn/notify/#", "geowarn/cap/#", "geowarn/BSH/+/cmd"])
    notes = Notes(rec)
    pub = publisher(mosquitto.url)
    try:
        _yellow_slope(pub)
        notes.until(lambda s: {("warning", "420500"), ("warning", "420527")} <= {(n["kind"], n["admin"]) for n in s}, 60, "the yellow warning to county and city")
        first = [n for n in notes.seen if n["kind"] == "warning"]
        assert sorted(n["admin"] for n in first) == ["420500", "420527"]  # yellow: county + city first
        assert all(n["level"] == 2 and n["site"] == "BSH" and not n["exercise"] for n in first)
        warning_id = first[0]["body"]["warning_id"]
        assert warning_id and all(n["body"]["warning_id"] == warning_id for n in first)
        raised = time.monotonic()

        # Nobody acknowledges: the province is told when the ack deadline passes.
        notes.until(lambda s: ("escalation", "420000") in [(n["kind"], n["admin"]) for n in s], ACK_S + 20, "escalation to the province")
        assert time.monotonic() - raised >= ACK_S * 0.8

        # A restart in the middle of the escalation: nothing repeated, the next step still comes.
        # SIGKILL: the daemon's workers notice their parent is gone and exit; the new ones
        # resume from what was committed (the engine state with the escalation recorded).
        daemon.terminate() if stop == "sigterm" else daemon.kill()
        daemon.start(timeout=60)
        notes.until(lambda s: ("escalation", "100000") in [(n["kind"], n["admin"]) for n in s], ACK_S + 30, "escalation to national")

        # The county acknowledges by the id of the notification it received.
        county_note = next(n for n in first if n["admin"] == "420527")
        notify_id = county_note["id"].split("/", 1)[0]
        done = _ack(daemon, mosquitto.url, notify_id)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith("accepted: ack")
        # An unknown id is refused with a reason, exit code 1.
        bad = _ack(daemon, mosquitto.url, "no-such-warning")
        assert bad.returncode == 1 and "refused" in bad.stdout

        # Quiet for longer than a deadline: escalation has stopped.
        count = len(notes.warning_notes())
        deadline = time.monotonic() + ACK_S * 1.5
        while time.monotonic() < deadline:
            try:
                topic, payload, _ = rec.take(1, timeout=0.5)[0]
                if topic.startswith("geowarn/notify/"):
                    notes.seen.append(json.loads(payload))
                else:
                    notes.other.append((topic, payload))
            except TimeoutError:
                pass
        assert len(notes.warning_notes()) == count

        ids = [n["id"] for n in notes.seen]
        assert len(ids) == len(set(ids)), "a notification was delivered twice"
        # County and city first (their order depends on which notifier lane is faster), then
        # province and national, each exactly once.
        seen = notes.warning_notes()
        assert sorted(seen[:2]) == [("warning", "420500"), ("warning", "420527")]
        assert seen[2:] == [("escalation", "420000"), ("escalation", "100000")]

        # CAP Alert on the county's topic and in DATA_DIR/cap, valid against the OASIS schema.
        caps = [p for t, p in notes.other if t == "geowarn/cap/420527"]
        assert caps, notes.other
        schema = CapSchema.load()
        schema.validate(caps[0])
        root = etree.fromstring(caps[0])
        assert root.findtext(f"{{{CAP_NS}}}msgType") == "Alert" and root.findtext(f"{{{CAP_NS}}}status") == "Actual"
        assert list((daemon.data_dir / "cap").glob("*.xml"))
        # Accelerated sampling for every BSH device (yellow: 300 s by default).
        cmds = {t: json.loads(p) for t, p in notes.other if t.endswith("/cmd")}
        assert set(cmds) == {f"geowarn/BSH/{d}/cmd" for d in ("BSH-GNSS1", "BSH-GNSS2", "BSH-EXT1", "BSH-RG1", "BSH-PZ1")}
        assert all(c["cmd"] == "set_sampling" and c["interval_s"] == 300.0 for c in cmds.values())
        # The units' JSONL notifiers (example roster: mqtt + jsonl) logged the same notifications.
        county_log = [json.loads(x) for x in (daemon.data_dir / "notify" / "420527.jsonl").read_text().splitlines()]
        assert any(x["kind"] == "warning" and x["body"]["warning_id"] == warning_id for x in county_log)
    finally:
        pub.loop_stop()
        rec.close()
        daemon.close()
