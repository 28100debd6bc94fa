"""A daemon stopped while detection works through a backlog stops in time and loses nothing
(issue 17, item 2).

Before, a stopping worker judged everything in hand before it checkpointed: with a backlog of
a million readings the daemon's 60 s stop deadline passed and the worker was killed, losing
its last save. Now it goes on for ``GEOWARN_STOP_DRAIN_S``, saves where it is, and the next
start judges the rest, announcing each change once.
"""

from __future__ import annotations

import json
import time

import pytest

from daemonproc import Daemon, publisher

READINGS = 200_000
PER_MESSAGE = 5_000


def _messages(t0: float) -> list[bytes]:
    out = []
    for m in range(READINGS // PER_MESSAGE):
        readings = []
        for k in range(PER_MESSAGE):
            i = m * PER_MESSAGE + k
            # Still for most of the record, then moving faster and faster: levels rise late.
            v = 0.0 if i < READINGS - 20_000 else 0.05 * (i - (READINGS - 20_000))
            readings.append({"ch": "disp", "t": t0 + 60.0 * i, "v": v})
        out.append(json.dumps({"v": 1, "device": "BSH-EXT1", "seq": m, "readings": readings}).encode())
    return out


@pytest.mark.slow
def test_a_stop_during_a_detection_backlog_is_quick_and_the_next_start_judges_the_rest(tmp_path, mosquitto):
    data = tmp_path / "data"
    daemon = Daemon(data, mosquitto.url, extra_env={"GEOWARN_HTTP": "off", "GEOWARN_SNAPSHOT_INTERVAL_S": "1", "GEOWARN_STOP_DRAIN_S": "1"})
    daemon.start()
    pub = publisher(mosquitto.url, client_id="backlog-stop")
    t0 = float(int(time.time())) - 60.0 * READINGS
    try:
        for payload in _messages(t0):
            pub.publish("geowarn/BSH/BSH-EXT1/data", payload, qos=1).wait_for_publish(30)
        daemon.wait_until(lambda: daemon.count() == READINGS, 120, "the backlog stored")

        def judged() -> int:
            rows = daemon.query("SELECT value FROM state WHERE key = 'detection.stats'")
            return int(json.loads(rows[0][0]).get("position", 0)) if rows else 0

        assert judged() < READINGS, "detection had no backlog left: the test did not test a stop with one"
        took = daemon.terminate(timeout=45.0)
        assert took < 30.0, f"the stop took {took:.1f} s"
        log = daemon.log_path.read_text(errors="replace")
        assert "worker did not stop in time" not in log
        assert "stopping with work in hand" in log and "worker=detection" in log.split("stopping with work in hand", 1)[1].splitlines()[0]
        stopped_at = judged()
        assert 0 < stopped_at < READINGS, stopped_at

        daemon.start(timeout=60.0)
        daemon.wait_until(lambda: judged() == READINGS, 180, "every reading judged after the restart")
        daemon.terminate(timeout=45.0)
        events = [json.loads(line) for line in (data / "alerts.jsonl").read_text().splitlines() if line.strip()]
        changes = [(e["site"], e["t"], e["kind"], e["level"]) for e in events if e.get("site") == "BSH"]
        assert any(e["level"] >= 1 for e in events if e.get("site") == "BSH"), "the moving slope raised no level"
        assert len(changes) == len(set(changes)), "an event was announced twice"
    finally:
        pub.disconnect()
        pub.loop_stop()
        daemon.close()
