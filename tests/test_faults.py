"""Fault injection: each kind shows in the feed as designed and is on record in the truth.

The `faults` scenario is written to real JSONL and CSV files; every check reads the files
back, the way a scorer or the daemon would see them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from geowarn.core.timefmt import parse_time
from geowarn.ingest.feeds import FeedReject, read_feed
from geowarn.simulators.engine import BATTERY_CUTOFF_V, Simulation
from geowarn.simulators.publish import write_feed, write_truth
from geowarn.simulators.scenario import FAULT_KINDS, load_scenario, parse_scenario


@pytest.fixture(scope="module")
def feeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    out = {}
    for fmt in ("jsonl", "csv"):
        sc = load_scenario("faults")
        sim = Simulation(sc, sc.registry())
        path = d / f"faults.{fmt}"
        write_feed(sim, path)
        write_truth(sim, path)
        out[fmt] = path
    truth = json.loads((d / "faults.jsonl.truth.json").read_text())
    lines = [json.loads(x) for x in out["jsonl"].read_text().splitlines()]
    return {"truth": truth, "lines": lines, "csv": out["csv"], "jsonl": out["jsonl"]}


def _faults(truth: dict[str, Any], kind: str, device: str | None = None) -> list[dict[str, Any]]:
    return [f for f in truth["faults"] if f["kind"] == kind and (device is None or f["device"] == device)]


def _data(lines: list[dict[str, Any]], device: str) -> list[dict[str, Any]]:
    return [x["payload"] for x in lines if x["topic"].endswith(f"/{device}/data") and isinstance(x["payload"], dict)]


def test_every_fault_kind_is_in_the_scenario_and_on_record(feeds):
    kinds = {f["kind"] for f in feeds["truth"]["faults"]}
    assert kinds == set(FAULT_KINDS)
    # faults.toml ends with the fleet-wide 1 % duplicates: one record per device (11).
    named, fleet = feeds["truth"]["faults"][:-11], feeds["truth"]["faults"][-11:]
    for f in named:
        assert f["count"] > 0, f"{f['kind']} on {f['device']} never happened"
    assert {f["kind"] for f in fleet} == {"duplicates"} and sum(f["count"] for f in fleet) > 0


def test_dropout_is_a_gap_with_a_jump_in_seq(feeds):
    f = _faults(feeds["truth"], "dropout", "BSH-GNSS2")[0]
    start, end = parse_time(f["start"]), parse_time(f["end"])
    msgs = _data(feeds["lines"], "BSH-GNSS2")
    times = [max(r["t"] for r in p["readings"]) for p in msgs]
    assert not any(start <= t < end for t in times)
    seqs = [p["seq"] for p in msgs]
    missing = sorted(set(range(max(seqs) + 1)) - set(seqs))
    assert missing == f["seqs"] and len(missing) == 36  # 6 h of 10-min messages
    status = [x for x in feeds["lines"] if x["topic"] == "geowarn/BSH/BSH-GNSS2/status"]
    assert not any(start <= x["payload"]["t"] < end for x in status)


def test_duplicates_are_the_same_message_twice(feeds):
    f = _faults(feeds["truth"], "duplicates", "BSH-EXT1")[0]
    msgs = _data(feeds["lines"], "BSH-EXT1")
    counts: dict[int, int] = defaultdict(int)
    for p in msgs:
        counts[p["seq"]] += 1
    twice = sorted(s for s, n in counts.items() if n >= 2)  # the fleet's duplicates may hit it too
    fleet = [x for x in _faults(feeds["truth"], "duplicates") if x["device"] == "BSH-EXT1" and x is not f]
    assert set(f["seqs"]) <= set(twice) and set(twice) <= set(f["seqs"]) | {s for x in fleet for s in x["seqs"]}
    by_seq = defaultdict(list)
    for p in msgs:
        by_seq[p["seq"]].append(p)
    assert all(all(p == by_seq[s][0] for p in by_seq[s]) for s in twice)


def test_out_of_order_messages_arrive_after_later_ones(feeds):
    f = _faults(feeds["truth"], "out_of_order", "BZM-GNSS1")[0]
    seqs = [p["seq"] for p in _data(feeds["lines"], "BZM-GNSS1")]
    seen_max = np.maximum.accumulate(seqs)
    late = [s for i, s in enumerate(seqs) if i and s < seen_max[i - 1]]
    # A message held back near the end has no later one to arrive behind: it comes last.
    tail = {s for s in f["seqs"] if s > max(seqs) - f["delay_messages"]}
    assert set(late) <= set(f["seqs"]) and set(f["seqs"]) - set(late) <= tail
    # Each arrives after later messages (behind the one `delay_messages` later, or behind a
    # later one that was itself held back).
    for s in set(f["seqs"]) - tail:
        i = len(seqs) - 1 - seqs[::-1].index(s)  # the late copy (a fleet duplicate may be on time)
        assert seen_max[i - 1] > s
    # Nothing is lost: every sequence number arrives.
    assert sorted(set(seqs)) == list(range(max(seqs) + 1))


def test_clock_skew_and_drift_shift_reading_times(feeds):
    t0 = parse_time(feeds["truth"]["start"])
    skew = _faults(feeds["truth"], "clock_skew", "BZM-EXT1")[0]
    start = parse_time(skew["start"])
    msgs = _data(feeds["lines"], "BZM-EXT1")
    before = {round((r["t"] - t0) % 600, 3) for p in msgs for r in p["readings"] if r["t"] < start}
    after = {round((r["t"] - t0) % 600, 3) for p in msgs for r in p["readings"] if r["t"] >= start + 900}
    assert len(before) == 1 and after == {(before.pop() + 900) % 600}
    drift = _faults(feeds["truth"], "clock_skew", "XK-CRK1")[0]
    ts = np.unique([r["t"] for p in _data(feeds["lines"], "XK-CRK1") for r in p["readings"]])  # the fleet duplicates some
    assert np.allclose(np.diff(ts), 600 * (1 + drift["drift_ppm"] * 1e-6), atol=1e-3)


def test_stuck_sensor_repeats_one_value_in_its_window(feeds):
    f = _faults(feeds["truth"], "stuck", "XK-TLT1")[0]
    start, end = parse_time(f["start"]), parse_time(f["end"])
    vals = [(r["t"], r["v"]) for p in _data(feeds["lines"], "XK-TLT1") for r in p["readings"] if r["ch"] == "tilt_x"]
    inside = {v for t, v in vals if start <= t < end}
    outside = [v for t, v in vals if not start <= t < end]
    assert len(inside) == 1 and len(set(outside)) > 10
    assert len(f["times"]) == len({t for t, _ in vals if start <= t < end})


def test_spikes_stand_out_by_their_magnitude(feeds):
    f = _faults(feeds["truth"], "spikes", "BSH-GNSS1")[0]
    vals = {r["t"]: r["v"] for p in _data(feeds["lines"], "BSH-GNSS1") for r in p["readings"] if r["ch"] == "disp_e"}
    ts = sorted(vals)
    med = float(np.median([vals[t] for t in ts]))
    for t in f["times"]:
        assert abs(vals[t] - med) > 0.6 * f["magnitude"]


def test_battery_death_drains_to_the_cutoff_then_silence(feeds):
    f = _faults(feeds["truth"], "battery_death", "BSH-EXT1")[0]
    start, dead = parse_time(f["start"]), parse_time(f["dead_at"])
    batt = [(r["t"], r["v"]) for p in _data(feeds["lines"], "BSH-EXT1") for r in p["readings"] if r["ch"] == "battery"]
    assert max(t for t, _ in batt) < dead
    last = [v for t, v in batt if t > dead - 1800]
    assert last and max(last) < BATTERY_CUTOFF_V + 0.3
    assert min(v for t, v in batt if t < start) > 12.0
    status = [x["payload"] for x in feeds["lines"] if x["topic"] == "geowarn/BSH/BSH-EXT1/status"]
    assert max(s["t"] for s in status) < dead


def test_malformed_payloads_are_not_json_and_csv_rows_not_numbers(feeds):
    f = _faults(feeds["truth"], "malformed", "BZM-RG1")[0]
    bad = [x for x in feeds["lines"] if x["topic"] == "geowarn/BZM/BZM-RG1/data" and isinstance(x["payload"], str)]
    assert len({x["payload"] for x in bad}) == len(f["seqs"])  # some also duplicated by the fleet
    for x in bad:
        with pytest.raises(json.JSONDecodeError):
            json.loads(x["payload"])
    rejects: list[FeedReject] = []
    list(read_feed(feeds["csv"], rejects))
    assert len({r.text for r in rejects if "#ERR" in r.text}) == len(f["seqs"])
    rejects = []
    list(read_feed(feeds["jsonl"], rejects))
    assert len({r.text for r in rejects if r.reason.startswith("bad line")}) == len(f["seqs"])


def test_impersonation_puts_another_device_in_the_payload(feeds):
    f = _faults(feeds["truth"], "impersonation", "XK-RG1")[0]
    assert f["as_site"] != "XK"  # a device of another site: rejected even from a CSV feed
    lines = [x for x in feeds["lines"] if x["topic"] == "geowarn/XK/XK-RG1/data" and isinstance(x["payload"], dict)]
    fake = [x["payload"] for x in lines if x["payload"]["device"] != "XK-RG1"]
    assert len({p["seq"] for p in fake}) == len(f["seqs"]) > 0
    assert {p["device"] for p in fake} == {f["as_device"]}
    rows = [r for r in read_feed(feeds["csv"]) if r.site == "XK" and r.device == f["as_device"]]
    assert rows


def test_fleet_faults_pick_a_share_of_the_devices_by_seed():
    doc = {"name": "fleet", "duration": "6h", "faults": [{"kind": "dropout", "device": "*", "fraction": 0.5, "start": "1h", "end": "2h"}]}
    sc = parse_scenario(doc, "<test>")
    reg = sc.registry(200)
    picked = [f["device"] for f in Simulation(sc, reg, strict_sites=False).fault_truth]
    again = [f["device"] for f in Simulation(sc, reg, strict_sites=False).fault_truth]
    assert picked == again and 60 < len(picked) < 140


def test_a_fault_on_an_unknown_device_is_a_clear_error():
    sc = parse_scenario({"name": "x", "faults": [{"kind": "stuck", "device": "NOPE"}]}, "<test>")
    with pytest.raises(ValueError, match="NOPE"):
        Simulation(sc, sc.registry())
