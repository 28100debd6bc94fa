"""benchmarks/national_scale.py end to end in its --quick mode: a real Mosquitto, a real
``geowarn run`` subprocess, publisher processes and probes; start, steady load, a burst, the
recovery, a SIGKILL and a clean stop with their restarts.

The figures are timings of a shared machine, so only what must hold whatever the machine's
load is asserted: every figure of the row is there and finite, the counts add up (the journal
holds four readings per acknowledged message plus one per probe, nothing lost across the two
restarts), the rates are what was asked within reason, and the order of percentiles is right.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.timeout(180)
def test_quick_run_reports_a_consistent_row(tmp_path: Path) -> None:
    out, md = tmp_path / "run.json", tmp_path / "run.md"
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "national_scale.py"), "--quick", "--json", str(out), "--markdown", str(md)],
        cwd=REPO, capture_output=True, text=True, timeout=170, check=False,
    )
    # Exit 0: no reading lost, every probe raised its site, no background site raised, the lag
    # recovered after the burst, both restarts came online, no site announced twice.
    assert r.returncode == 0, f"benchmark failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-3000:]}"
    doc = json.loads(out.read_text())
    assert len(doc["results"]) == 1
    res = doc["results"][0]
    f = res["figures"]
    assert res["problems"] == []
    assert f["devices"] == 500 and f["channels"] == 2000 and f["sites"] == 100

    for key in ("start_s", "restart_after_kill_s", "caught_up_after_kill_s", "stop_s", "restart_after_stop_s", "caught_up_after_stop_s", "drain_s",
                "steady_published_msg_s", "steady_stored_msg_s", "burst_published_msg_s", "burst_stored_msg_s",
                "steady_lag_s_max", "steady_lag_s_final", "burst_lag_s_max", "burst_recovery_s", "burst_store_caught_up_s",
                "recovery_bound_s", "restart_replay_readings"):
        assert finite(f[key]) and f[key] >= 0, (key, f[key])
    assert 0 < f["start_s"] < 60 and 0 < f["restart_after_kill_s"] < 60 and 0 < f["restart_after_stop_s"] < 60
    assert f["caught_up_after_kill_s"] >= f["restart_after_kill_s"]
    assert f["caught_up_after_stop_s"] >= f["restart_after_stop_s"]

    # Each process of the tree measured, twice, and the total is their sum (an MB or more each).
    for when in ("rss_start", "rss_steady"):
        rss = f[when]
        assert {"main", "store", "detection"} <= set(rss), rss
        assert all(finite(b) and b > 2**20 for b in rss.values()), rss
    assert f["rss_peak_mb"] * 2**20 >= 0.9 * sum(f["rss_start"].values())

    # Rates: steady asked 50 msg/s (ramping up in its first second), the burst 1000 msg/s; the
    # journal kept up in steady state (stored within 20 % of published).
    assert 30 <= f["steady_published_msg_s"] <= 55
    assert abs(f["steady_stored_msg_s"] - f["steady_published_msg_s"]) <= 0.2 * f["steady_published_msg_s"]
    assert 300 <= f["burst_published_msg_s"] <= 1100
    assert f["burst_published_msgs"] > 6 * 300

    # Counts add up: four readings per acknowledged message, one per probe; nothing lost.
    assert f["published_msgs"] == f["acked_msgs"] > f["burst_published_msgs"]
    assert f["readings_expected"] == 4 * f["acked_msgs"] + f["probes_acked"]
    assert f["probes_acked"] == f["probes"] > 0
    assert f["readings_stored"] == f["readings_expected"]
    assert f["readings_lost"] == 0 and f["readings_lost_after_restarts"] == 0
    assert f["sites_raised_twice"] == 0 and f["background_sites_raised"] == 0 and f["probes_without_level_change"] == 0

    # Lag: the burst left readings to judge; warnings were current again within the limit, and
    # not before the journal had caught up with the broker (a probe goes through the journal).
    assert f["burst_lag_readings_max"] > 0 and f["steady_lag_readings_max"] >= 0
    assert f["burst_recovery_s"] <= 20 and f["recovery_bound_s"] >= 2.0
    assert f["burst_store_caught_up_s"] <= f["burst_recovery_s"] + 2 * f["recovery_bound_s"] + 1
    # What the restart had to judge again is part of what had been stored.
    assert 0 <= f["restart_replay_readings"] <= f["readings_stored"]

    # Latency percentiles from the probes: counts match the probes, p50 <= p99 <= max.
    assert sum(f[f"latency_{ph}_n"] for ph in ("steady", "burst", "recovery")) == f["probes"]
    for ph in ("steady", "burst"):
        assert f[f"latency_{ph}_n"] >= 3, ph
        p50, p99, mx = f[f"latency_{ph}_p50_s"], f[f"latency_{ph}_p99_s"], f[f"latency_{ph}_max_s"]
        assert all(finite(x) for x in (p50, p99, mx)), ph
        assert 0 < p50 <= p99 <= mx < 30, (ph, p50, p99, mx)

    # The markdown row: the command, the header and this size's figures.
    text = md.read_text()
    assert "python3 benchmarks/national_scale.py --quick" in text
    assert "| devices (channels) | start to online |" in text
    row = next(line for line in text.splitlines() if line.startswith("| 500 (2,000) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 11 and "–" not in row, row
    assert cells[1] == f"{f['start_s']:,.1f} s"
    assert cells[-1] == "0"
