"""``geowarn replay``: the same detectors and fusion as the daemon, over recorded feeds."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from geowarn.config.registry import load_registry
from geowarn.config.settings import example_path
from daemonproc import REPO
from geowarn.ingest.feeds import FeedError, read_feed, registry_from_rows
from geowarn.service.replay import replay_rows
from geowarn.simulators.fleet import Fleet

DAY = 86400.0
T0 = 1.7e9


def _fleet_feed(path, days=14.0, seed=3, failing="BSH"):
    reg = load_registry(example_path("sites.example.toml"))
    t_f = T0 + days * DAY
    fleet = Fleet(reg, t0=T0, seed=seed, failures={failing: t_f}, failure_alpha=1.5)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["site", "device", "channel", "t", "value"])
        t = T0
        while t < t_f - 1800:
            for topic, payload in fleet.messages(t):
                doc = json.loads(payload)
                site = topic.split("/")[1]
                for r in doc["readings"]:
                    w.writerow([site, doc["device"], r["ch"], r["t"], r["v"]])
            t += 600.0
    return reg, t_f


def test_replay_of_a_failing_slope_reaches_red_before_failure_and_stable_sites_stay_quiet(tmp_path):
    feed = tmp_path / "feed.csv"
    reg, t_f = _fleet_feed(feed)
    rows = list(read_feed(feed))
    summary = replay_rows(rows, reg, tmp_path / "out")
    events = [json.loads(x) for x in (tmp_path / "out" / "alerts.jsonl").read_text().splitlines()]
    assert events == summary.events
    bsh = [e for e in events if e["site"] == "BSH" and e["kind"] in ("raise", "upgrade")]
    assert max(e["level"] for e in bsh) == 4
    first_red = min(e["t"] for e in bsh if e["level"] == 4)
    assert first_red < _rfc(t_f - 12 * 3600), "red must come at least 12 h before the failure"
    # Stable slopes: rain may make them yellow (caution), never orange or red.
    assert summary.highest.get("BZM", 0) <= 2 and summary.highest.get("XK", 0) <= 2


def _rfc(t: float) -> str:
    from geowarn.core.timefmt import rfc3339

    return rfc3339(t)


def test_replay_is_the_same_whatever_the_row_order(tmp_path):
    feed = tmp_path / "feed.csv"
    reg, _ = _fleet_feed(feed, days=6.0)
    rows = list(read_feed(feed))
    a = replay_rows(rows, reg, tmp_path / "a")
    shuffled = list(rows)
    np.random.default_rng(0).shuffle(shuffled)
    b = replay_rows(shuffled, reg, tmp_path / "b")
    assert a.events == b.events


def test_registry_from_a_feed_takes_kinds_from_names_and_intervals_from_data(tmp_path):
    feed = tmp_path / "f.csv"
    lines = ["site,device,channel,t,value"]
    for i in range(10):
        lines.append(f"S1,D1,displacement,{T0 + i * 30 * DAY},{i * 2.0}")  # monthly
        lines.append(f"S1,D2,rain.gauge2,{T0 + i * 60},{0.2}")  # every minute
    feed.write_text("\n".join(lines) + "\n")
    reg = registry_from_rows(list(read_feed(feed)))
    d1 = reg.channel("S1", "D1", "displacement")
    d2 = reg.channel("S1", "D2", "rain.gauge2")
    assert d1 is not None and d1.kind == "displacement" and d1.interval_s == 30 * DAY
    assert d2 is not None and d2.kind == "rain" and d2.interval_s == 60.0


def test_a_channel_name_without_a_kind_is_a_clear_error(tmp_path):
    feed = tmp_path / "f.csv"
    feed.write_text("site,device,channel,t,value\nS1,D1,disp_e,1700000000,1.0\n")
    with pytest.raises(FeedError, match="disp_e"):
        registry_from_rows(list(read_feed(feed)))


def test_bad_rows_are_reported_with_line_numbers_and_the_rest_replayed(tmp_path):
    feed = tmp_path / "f.csv"
    feed.write_text(
        "site,device,channel,t,value\n"
        f"S1,D1,displacement,{T0},1.0\n"
        "S1,D1,displacement,not-a-time,2.0\n"
        f"S1,D1,displacement,{T0 + 600},abc\n"
        f"S1,D1,displacement,{T0 + 1200},nan\n"
        "S1,D1\n"
        f"S1,D1,displacement,{T0 + 1800},4.0\n"
    )
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "geowarn.service.cli", "replay", str(feed), "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "replayed 2 readings (4 rejected)" in proc.stdout
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [3, 4, 5, 6]
    assert (out / "alerts.jsonl").exists()


def test_replay_cli_with_sites_and_drill_marks_every_event_as_exercise(tmp_path):
    feed = tmp_path / "feed.csv"
    _fleet_feed(feed, days=8.0)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "geowarn.service.cli", "replay", str(feed), "--out", str(out), "--sites", str(example_path("sites.example.toml")), "--drill"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in (out / "alerts.jsonl").read_text().splitlines()]
    assert events, "the failing slope must raise something"
    assert all(e["exercise"] is True for e in events)


def test_no_data_is_reported_and_never_lowers_a_level(tmp_path):
    """A device that falls silent raises its own nodata event; its site's level holds."""
    feed = tmp_path / "f.csv"
    lines = ["site,device,channel,t,value"]
    t = T0
    for i in range(200):  # 200 readings, 10-min apart, 200 mm/day: red
        lines.append(f"S1,D1,displacement,{t},{200.0 * (t - T0) / DAY}")
        lines.append(f"S1,D2,displacement,{t},{200.0 * (t - T0) / DAY}")
        lines.append(f"S1,D3,rain,{t},0")
        t += 600
    for i in range(30):  # then only the rain gauge reports, for 5 hours
        lines.append(f"S1,D3,rain,{t},0")
        t += 600
    feed.write_text("\n".join(lines) + "\n")
    rows = list(read_feed(feed))
    s = replay_rows(rows, registry_from_rows(rows), tmp_path / "out")
    kinds = [(e["kind"], e["level"]) for e in s.events]
    assert ("nodata", 4) in kinds
    nodata = [e for e in s.events if e["kind"] == "nodata"]
    assert {e["evidence"]["device"] for e in nodata} == {"D1", "D2"}
    assert s.events[-1]["level"] == 4 and not any(e["kind"] in ("downgrade", "lift") for e in s.events)


def test_noise_estimated_from_a_feed_matches_the_noise_put_in():
    from geowarn.ingest.feeds import estimate_noise

    rng = np.random.default_rng(5)
    t = np.arange(2000) * 600.0
    x = 0.5 * t / DAY + rng.normal(0.0, 3.0, len(t))  # a steady creep plus 3 mm white noise
    sigma = estimate_noise(x.tolist())
    assert sigma is not None and abs(sigma - 3.0) < 0.3
    assert estimate_noise([1.0, 2.0, 3.0]) is None  # too short to say
