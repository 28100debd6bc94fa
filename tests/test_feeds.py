"""Reading recorded feeds (ingest/feeds.py): a JSONL payload is held to the daemon's rule that a
device cannot speak for another (DESIGN §3).

Expected rows and rejects are written out by hand from the lines each test writes, or taken
from the `faults` scenario's truth file (which sequence numbers were impersonations).
"""

from __future__ import annotations

import json
from pathlib import Path

from geowarn.ingest.feeds import FeedReject, read_feed
from geowarn.simulators.engine import Simulation
from geowarn.simulators.publish import write_feed, write_truth
from geowarn.simulators.scenario import load_scenario


def _line(topic: str, payload: object) -> str:
    return json.dumps({"topic": topic, "payload": payload}) + "\n"


def test_a_payload_naming_another_device_is_rejected_not_counted_for_the_topic(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_text(
        _line("geowarn/XK/XK-RG1/data", {"v": 1, "device": "XK-RG1", "seq": 0, "readings": [{"ch": "rain", "t": 1764374400.0, "v": 0.2}]})
        # XK-RG1's topic speaking as BSH-GNSS1 (another site's device): the live daemon dead-letters it.
        + _line("geowarn/XK/XK-RG1/data", {"v": 1, "device": "BSH-GNSS1", "seq": 1, "readings": [{"ch": "rain", "t": 1764375000.0, "v": 0.4}]})
        # No device at all: the daemon's codec rejects that too (payload device None != topic device).
        + _line("geowarn/XK/XK-RG1/data", {"v": 1, "seq": 2, "readings": [{"ch": "rain", "t": 1764375600.0, "v": 0.6}]})
        + _line("geowarn/XK/XK-RG1/data", {"v": 1, "device": "XK-RG1", "seq": 3, "readings": [{"ch": "rain", "t": 1764376200.0, "v": 0.8}]}),
        encoding="utf-8",
    )
    rejects: list[FeedReject] = []
    rows = list(read_feed(feed, rejects))
    assert [(r.site, r.device, r.channel, r.t, r.value) for r in rows] == [
        ("XK", "XK-RG1", "rain", 1764374400.0, 0.2),
        ("XK", "XK-RG1", "rain", 1764376200.0, 0.8),
    ]
    assert [(r.line, r.reason.split(":")[0]) for r in rejects] == [(2, "device_mismatch"), (3, "device_mismatch")]
    assert "'BSH-GNSS1'" in rejects[0].reason and "'XK-RG1'" in rejects[0].reason
    assert '"seq": 1' in rejects[0].text


def test_the_faults_scenario_impersonations_are_exactly_the_device_mismatch_rejects(tmp_path: Path) -> None:
    sc = load_scenario("faults")
    sim = Simulation(sc, sc.registry(), duration_s=12 * 3600.0)
    feed = tmp_path / "faults.jsonl"
    write_feed(sim, feed)
    truth = json.loads(write_truth(sim, feed).read_text())
    imp = next(f for f in truth["faults"] if f["kind"] == "impersonation")
    assert imp["seqs"], "12 h of the faults scenario should hold impersonations"
    rejects: list[FeedReject] = []
    rows = list(read_feed(feed, rejects))
    lines = feed.read_text(encoding="utf-8").splitlines()
    mismatched = [json.loads(lines[r.line - 1])["payload"] for r in rejects if r.reason.startswith("device_mismatch")]
    # The fleet-wide duplicates may send an impersonating message twice: each copy is rejected.
    assert sorted({p["seq"] for p in mismatched}) == sorted(imp["seqs"])
    assert {p["device"] for p in mismatched} == {imp["as_device"]}
    # None of the impersonating readings is counted for the topic's device or the victim.
    fake_times = {r["t"] for p in mismatched for r in p["readings"]}
    good_times = {r.t for r in rows if r.device == imp["device"]}
    assert not fake_times & good_times
    assert not [r for r in rows if r.site == imp["site"] and r.device == imp["as_device"]]
