"""A device under maintenance (geowarn/shelve with a device): its readings are stored but not
judged, its silence raises nothing, and its end brings it back. Real daemon, real Mosquitto."""

from __future__ import annotations

import json
import time

import pytest

from daemonproc import Daemon, publisher
from geowarn.alerts.control import KEY_FILE, load_key
from geowarn.service.requests import send_request

pytestmark = pytest.mark.slow

T0 = float(int(time.time()) - 2 * 86400)


def _events(daemon: Daemon) -> list[dict]:
    path = daemon.data_dir / "alerts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _judged_through(daemon: Daemon) -> int:
    """The journal position detection has judged through (its checkpoint, every 0.2 s here)."""
    rows = daemon.query("SELECT value FROM state WHERE key = 'detection.stats'")
    return int(json.loads(rows[0][0])["position"]) if rows else 0


def test_a_device_under_maintenance_is_stored_not_judged(tmp_path, mosquitto):
    daemon = Daemon(tmp_path / "data", mosquitto.url, extra_env={"GEOWARN_HTTP": "off", "GEOWARN_SNAPSHOT_INTERVAL_S": "0.2"})
    daemon.start()
    pub = publisher(mosquitto.url)
    key = load_key(daemon.data_dir / KEY_FILE)  # made by the detection worker at its first start
    try:
        ok = send_request(mosquitto.url, "geowarn", "shelve", {"site": "BSH", "device": "BSH-EXT1", "by": "技术员 Liu", "until": time.time() + 3600,
                                                              "note": "re-anchoring the extensometer"}, 20, key=key)
        assert ok is not None and ok["ok"] and ok["rule"] == "device_shelve" and "BSH-EXT1 under maintenance" in ok["detail"]
        bad = send_request(mosquitto.url, "geowarn", "shelve", {"site": "BSH", "device": "XK-CRK1", "by": "Liu", "until": time.time() + 3600}, 20, key=key)
        assert bad is not None and not bad["ok"] and "not at site" in bad["detail"]

        # While it is being moved, the extensometer shows 10 mm/day for 12 h: yellow if judged.
        def creep(first: int, n: int) -> None:
            for i in range(first, first + n):
                doc = {"v": 1, "device": "BSH-EXT1", "seq": i, "readings": [{"ch": "disp", "t": T0 + i * 600, "v": 10.0 * i * 600 / 86400}]}
                pub.publish("geowarn/BSH/BSH-EXT1/data", json.dumps(doc).encode(), qos=1).wait_for_publish(10)

        creep(0, 73)
        daemon.wait_until(lambda: daemon.count() == 73, message="73 readings stored")
        daemon.wait_until(lambda: _judged_through(daemon) >= 73, message="detection past the 73 readings")
        assert not [e for e in _events(daemon) if e["kind"] not in ("nodata", "nodata_end")]

        back = send_request(mosquitto.url, "geowarn", "unshelve", {"site": "BSH", "device": "BSH-EXT1", "by": "Liu"}, 20, key=key)
        assert back is not None and back["ok"] and "back in service" in back["detail"]
        again = send_request(mosquitto.url, "geowarn", "unshelve", {"site": "BSH", "device": "BSH-EXT1", "by": "Liu"}, 20, key=key)
        assert again is not None and "was not under maintenance" in again["detail"]
        # Back in service, the same creep goes on for 12 h more and is judged: yellow.
        creep(73, 73)
        daemon.wait_until(lambda: any(e["kind"] == "raise" for e in _events(daemon)), message="the yellow raise after maintenance")
        raised = next(e for e in _events(daemon) if e["kind"] == "raise")
        assert raised["site"] == "BSH" and raised["level"] == 2 and "BSH-EXT1" in raised["reason"]
    finally:
        pub.loop_stop()
        daemon.close()
