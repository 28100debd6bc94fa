"""A daily zero report names the unit's devices whose clock looks wrong, in its text as in its
figures, and replay's zero reports carry them as live ones do (issue 13, item 2).

A device's clock looks wrong once CLOCK_TROUBLE_AT = 3 of its last 50 readings came out of
order, ahead of their arrival or as conflicting duplicates (detectors/clockhealth.py). In
replay (event time, the feed sorted, no arrival times) only conflicting duplicates in the feed
can do that: a reading whose device, channel and time repeat an earlier one with another value.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from geowarn.alerts.chain import ReplayFiles, ResponseChain
from geowarn.alerts.zero_reports import CLOCK_TROUBLE_NAMED, with_clock_health
from geowarn.config.roster import load_roster
from geowarn.config.settings import example_path, load_all
from geowarn.core.events import LevelChange
from geowarn.ingest.feeds import FeedRow, registry_from_rows
from geowarn.service.replay import replay_rows

DAY = 86400.0
T0 = 1.7e9  # 2023-11-14T22:13:20Z; the county's report is due 2023-11-15T01:00Z (09:00 +08)
LINE = "devices whose clock may be wrong 时钟异常"


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _chain_reports(tmp_path: Path, health: dict | None) -> list[dict]:
    rows = [FeedRow("S1", "D1", "displacement", T0 + i * 600.0, float(i)) for i in range(3)]
    reg = registry_from_rows(rows)  # S1 in county 999999, city 999900, province 990000

    def stats(admin: str, since: float, until: float) -> dict[str, int]:
        return {"readings": 144, "devices": 2, "devices_online": 1}

    chain = ResponseChain(reg, load_roster(example_path("roster.example.toml")), ReplayFiles(tmp_path),
                          zero_stats=with_clock_health(stats, reg, lambda: health))
    chain.feed(LevelChange("S1", T0, 1, 0, "test: blue"))
    chain.run_until(T0 + 6 * 3600.0)
    return [n for n in _lines(tmp_path / "notifications.jsonl") if n["kind"] == "zero_report"]


def test_the_zero_report_text_names_the_devices_whose_clock_may_be_wrong(tmp_path):
    # CLOCK_TROUBLE_NAMED + 2 devices in trouble, one whose clock is right again.
    names = [f"D{k:02d}" for k in range(CLOCK_TROUBLE_NAMED + 2)]
    health = {"devices": {**{d: {"site": "S1", "trouble": True} for d in names}, "OK1": {"site": "S1", "trouble": False}}}
    zero = _chain_reports(tmp_path, health)
    assert [n["admin"] for n in zero] == ["999999", "999900", "990000"]
    for n in zero:
        assert n["zero"]["devices_clock_trouble"] == CLOCK_TROUBLE_NAMED + 2
        [line] = [x for x in n["text"].splitlines() if x.startswith(LINE)]
        assert line == f"{LINE}: {CLOCK_TROUBLE_NAMED + 2} ({', '.join(names[:CLOCK_TROUBLE_NAMED])} and 2 more)"
        # After the devices online, before the warnings, as the figures come.
        text = n["text"].splitlines()
        assert text.index(line) == 3 and text[2].startswith("devices online") and text[4].startswith("warnings in 24 h")
    # A clean day (nothing saved yet, or every clock right again): no line, the report as before.
    for clean in (None, {"devices": {"D1": {"site": "S1", "trouble": False}}}):
        out = tmp_path / ("none" if clean is None else "clean")
        zero = _chain_reports(out, clean)
        assert zero and all(LINE not in n["text"] and "devices_clock_trouble" not in n["zero"] for n in zero)


def test_replay_zero_reports_name_a_device_whose_clock_looks_wrong(tmp_path):
    """BSH's extensometer (Zigui, 420527) reports every 10 min from 22:00 UTC; at 22:10, 22:20
    and 22:30 a second reading repeats the time with another value. The third makes its clock
    look wrong; the county's report at 01:00 UTC (09:00 in Asia/Shanghai), its city's at 02:00
    and its province's at 04:00 name it, in figures and text, as a live daemon's would."""
    base = load_all()
    start = (int(time.time() // DAY) - 3) * DAY - 2 * 3600.0
    rows = [FeedRow("BSH", "BSH-EXT1", "disp", start + i * 600.0, 0.01 * i) for i in range(7 * 6)]
    rows += [FeedRow("BSH", "BSH-EXT1", "disp", start + i * 600.0, 5.0 + i) for i in (1, 2, 3)]
    out = tmp_path / "replay"
    replay_rows(rows, base.registry, out, roster=base.roster, plots=False)
    [clock] = [e for e in _lines(out / "alerts.jsonl") if e["kind"] == "clock"]
    assert clock["evidence"]["device"] == "BSH-EXT1" and clock["evidence"]["conflict"] == 3
    zero = {n["admin"]: n for n in _lines(out / "notifications.jsonl") if n["kind"] == "zero_report"}
    day = datetime.fromtimestamp(start + 3 * 3600, timezone.utc).date().isoformat()
    for admin in ("420527", "420500", "420000"):
        n = zero[admin]
        assert n["id"] == f"zero-{admin}-{day}"
        assert (n["zero"]["devices_clock_trouble"], n["zero"]["clock_trouble"]) == (1, ["BSH-EXT1"])
        assert f"{LINE}: 1 (BSH-EXT1)" in n["text"].splitlines()
    # Xingshan's county report: not its device.
    assert "devices_clock_trouble" not in zero["420526"]["zero"]
