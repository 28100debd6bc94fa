"""The daily zero report's online rate and monthly transmission availability (issue 15 item 4).

A device's transmission availability over the month = readings received (real, every channel)
/ readings expected (per channel, the whole registry intervals in [start of the month in local
time, the report's time)), at most 1 per device; the unit's = Σ received (capped) / Σ expected.
Golden values worked out by hand below from the example registry (every Zigui channel every
600 s) and the counts the test hands in.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from geowarn.alerts import zero_reports
from geowarn.alerts.chain import ReplayFiles, ResponseChain
from geowarn.alerts.zero_reports import month_start, with_availability
from geowarn.config.registry import load_registry
from geowarn.config.roster import load_roster
from geowarn.config.settings import example_path
from geowarn.core.events import LevelChange

# The county's report of 2026-03-03 is due at 09:00 Beijing time = 01:00Z. The month began
# 2026-03-01 00:00 Beijing = 2026-02-28 16:00Z: 57 h = 205 200 s, 342 intervals of 600 s.
DUE = datetime(2026, 3, 3, 1, 0, tzinfo=timezone.utc).timestamp()
MONTH = datetime(2026, 2, 28, 16, 0, tzinfo=timezone.utc).timestamp()
# Expected per device: GNSS 3 channels × 342 = 1026, BSH-EXT1 2 × 342 = 684, others 342.
# Σ expected = 3 × 1026 + 684 + 4 × 342 = 5130.
RECEIVED = {
    ("BSH", "BSH-GNSS1"): 1026,  # 100 %
    ("BSH", "BSH-GNSS2"): 1200,  # more than expected: counts as 1026, 100 %
    ("BSH", "BSH-EXT1"): 342,    # 342 / 684 = 50 %
    # BSH-RG1 sent nothing: 0 %
    ("BSH", "BSH-PZ1"): 324,     # 324 / 342 = 94.7 %: above 90 %
    ("BZM", "BZM-GNSS1"): 918,   # 918 / 1026 = 0.894736… → 0.8947
    ("BZM", "BZM-EXT1"): 342,    # 100 %
    ("BZM", "BZM-RG1"): 307,     # 307 / 342 = 0.897660… → 0.8977
    ("XK", "XK-CRK1"): 5,        # Xingshan: not Zigui's
}
# Σ received, capped = 1026 + 1026 + 342 + 0 + 324 + 918 + 342 + 307 = 4285; 4285 / 5130 = 0.835282… → 0.8353.


def _figures(**kw):
    reg = load_registry(example_path("sites.example.toml"))
    calls = []

    def readings(sites, since, until):
        calls.append((sorted(sites), since, until))
        return {k: n for k, n in RECEIVED.items() if k[0] in sites}

    def stats(admin, since, until):
        return {"readings": 999, "devices": 8, "devices_online": 6}

    return with_availability(stats, reg, readings, "Asia/Shanghai", **kw), calls, reg


def test_month_start_is_local_midnight_of_the_first():
    assert month_start(DUE, "Asia/Shanghai") == MONTH
    # 2026-03-31 20:00Z is already 1 April in Beijing.
    assert month_start(datetime(2026, 3, 31, 20, tzinfo=timezone.utc).timestamp(), "Asia/Shanghai") == datetime(2026, 3, 31, 16, tzinfo=timezone.utc).timestamp()


def test_unit_availability_online_rate_and_the_devices_below_the_threshold_worst_first():
    figures, calls, _ = _figures()
    f = figures("420527", DUE - 86400, DUE)
    assert calls == [(["BSH", "BZM"], MONTH, DUE)]
    assert f["online_rate"] == 0.75  # 6 of 8
    assert f["availability"] == 0.8353
    assert f["availability_since"] == MONTH
    assert f["availability_threshold"] == 0.9
    assert f["devices_low_availability"] == 4
    assert f["low_availability"] == [["BSH-RG1", 0.0], ["BSH-EXT1", 0.5], ["BZM-GNSS1", 0.8947], ["BZM-RG1", 0.8977]]
    assert f["readings"] == 999  # what it wraps is kept


def test_the_named_devices_are_capped_and_a_replay_starts_its_window_at_its_first_reading(monkeypatch):
    monkeypatch.setattr(zero_reports, "AVAILABILITY_NAMED", 2)
    figures, _, _ = _figures()
    f = figures("420527", DUE - 86400, DUE)
    assert f["devices_low_availability"] == 4 and f["low_availability"] == [["BSH-RG1", 0.0], ["BSH-EXT1", 0.5]]
    # From 2026-03-02 01:00Z: 24 h, 144 intervals a channel; BSH-EXT1's 342 cap at 288 → 100 %.
    figures, calls, _ = _figures(not_before=DUE - 86400)
    f = figures("420527", DUE - 86400, DUE)
    assert calls[-1][1] == DUE - 86400 and f["availability_since"] == DUE - 86400
    assert ["BSH-EXT1", 0.5] not in f["low_availability"] and ["BSH-RG1", 0.0] in f["low_availability"]


def test_the_zero_report_says_online_rate_availability_and_names_the_devices_below(tmp_path: Path):
    figures, _, reg = _figures()
    chain = ResponseChain(reg, load_roster(example_path("roster.example.toml")), ReplayFiles(tmp_path), zero_stats=figures)
    chain.feed(LevelChange("BSH", DUE - 3600, 0, 0, "test: normal"))  # the chain starts watching: the county's 09:00 report is next
    chain.run_until(DUE + 60)
    notes = [json.loads(x) for x in (tmp_path / "notifications.jsonl").read_text().splitlines() if x.strip()]
    [county] = [n for n in notes if n["kind"] == "zero_report" and n["admin"] == "420527"]
    lines = county["text"].splitlines()
    assert "online rate 在线率: 75.0 %" in lines
    assert "transmission availability this month 月到报率: 83.5 % (since 2026-03-01 00:00 Asia/Shanghai)" in lines
    assert "devices below 90 % availability 到报率不足: 4 (BSH-RG1 0.0 %, BSH-EXT1 50.0 %, BZM-GNSS1 89.5 %, BZM-RG1 89.8 %)" in lines
    assert county["zero"]["availability"] == 0.8353


def test_a_replay_counts_availability_over_the_month_as_a_daemon_started_with_the_feed_would(tmp_path: Path):
    """BSH-EXT1 alone reports, its displacement every 10 min from 2026-03-09 22:00Z (its battery
    channel never). The county's report is due 2026-03-10 01:00Z; the month began 2026-03-01
    00:00 Beijing = 2026-02-28 16:00Z: 225 h, 1350 intervals a channel. BSH-EXT1 sent 18 in
    the window, of 2 × 1350: 0.00667 → 0.0067; Zigui expects 15 channels × 1350 = 20 250 and
    got 18: 0.00089 → 0.0009; one of 8 devices online: 0.125. Live counts the same way (the
    journal holds nothing before the feed), so live and replay agree (tests/test_judge.py)."""
    from geowarn.config.settings import load_all
    from geowarn.ingest.feeds import FeedRow
    from geowarn.service.replay import replay_rows

    base = load_all()
    start = datetime(2026, 3, 9, 22, 0, tzinfo=timezone.utc).timestamp()
    rows = [FeedRow("BSH", "BSH-EXT1", "disp", start + i * 600.0, 0.01 * i) for i in range(42)]
    out = tmp_path / "replay"
    replay_rows(rows, base.registry, out, roster=base.roster, plots=False)
    notes = [json.loads(x) for x in (out / "notifications.jsonl").read_text().splitlines() if x.strip()]
    [county] = [n for n in notes if n["kind"] == "zero_report" and n["admin"] == "420527"]
    z = county["zero"]
    assert z["availability_since"] == datetime(2026, 2, 28, 16, 0, tzinfo=timezone.utc).timestamp()
    assert (z["online_rate"], z["availability"], z["devices_low_availability"]) == (0.125, 0.0009, 8)
    assert z["low_availability"][-1] == ["BSH-EXT1", 0.0067] and [d for d, a in z["low_availability"][:-1]] == [
        "BSH-GNSS1", "BSH-GNSS2", "BSH-PZ1", "BSH-RG1", "BZM-EXT1", "BZM-GNSS1", "BZM-RG1"]
    assert "transmission availability this month 月到报率: 0.1 % (since 2026-03-01 00:00 Asia/Shanghai)" in county["text"].splitlines()


def test_live_detection_wires_the_availability_into_its_zero_reports():
    import inspect

    from geowarn.service import detection

    assert "with_availability(" in inspect.getsource(detection)  # the daemon's chain (a daemon test would take minutes)
