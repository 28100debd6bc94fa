"""The response chain in a replay: fusion → alert engine → notifications, CAP and commands."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lxml import etree

from geowarn.alerts.cap import CAP_NS, CapSchema
from geowarn.alerts.chain import ReplayFiles, ResponseChain
from geowarn.config.registry import load_registry
from geowarn.config.roster import load_roster
from geowarn.config.settings import example_path
from geowarn.core.events import LevelChange
from geowarn.ingest.feeds import FeedRow, read_feed, registry_from_rows
from geowarn.service.replay import replay_rows
from geowarn.simulators.fleet import Fleet
from geowarn.simulators.slope import VoightFailure

DAY = 86400.0
T0 = 1.7e9


class _Stops:
    """A slope heading for failure that stops moving at ``t_stop``: accelerates, peaks, stops."""

    def __init__(self, inner: VoightFailure, t_stop: float) -> None:
        self.inner, self.t_stop = inner, t_stop

    def displacement(self, t: Any) -> Any:
        a = np.minimum(np.asarray(t, dtype=float), self.t_stop)
        return self.inner.displacement(a) if a.ndim else float(self.inner.displacement(float(a)))

    def velocity(self, t: Any) -> Any:
        a = np.asarray(t, dtype=float)
        v = np.where(a < self.t_stop, self.inner.velocity(np.minimum(a, self.t_stop)), 0.0)
        return v if a.ndim else float(v)


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> list[FeedRow]:
    reg = load_registry(example_path("sites.example.toml"))
    t_f = T0 + 6 * DAY
    t_stop = t_f - 0.5 * DAY
    fleet = Fleet(reg, t0=T0, seed=3, slopes={"BSH": _Stops(VoightFailure.reaching(T0, t_f, alpha=1.5, creep_mm_day=0.2), t_stop)})
    path = tmp_path_factory.mktemp("chain") / "feed.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["site", "device", "channel", "t", "value"])
        t = T0
        while t < t_stop + 1.5 * DAY:
            for topic, payload in fleet.messages(t):
                doc = json.loads(payload)
                for r in doc["readings"]:
                    w.writerow([topic.split("/")[1], doc["device"], r["ch"], r["t"], r["v"]])
            t += 600.0
    return list(read_feed(path))


@pytest.fixture(scope="module")
def schema() -> CapSchema:
    return CapSchema.load()


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _caps(out: Path) -> list[tuple[str, etree._Element]]:
    files = sorted((out / "cap").glob("*.xml"))
    return [(f.name, etree.fromstring(f.read_bytes())) for f in files]


def _text(root: etree._Element, tag: str) -> str:
    el = root.find(f"{{{CAP_NS}}}{tag}")
    return "" if el is None or el.text is None else el.text


def test_replay_of_a_slope_that_accelerates_peaks_and_stops_runs_the_chain(feed, schema, tmp_path):
    reg = load_registry(example_path("sites.example.toml"))
    out = tmp_path / "out"
    replay_rows(feed, reg, out)
    notes = [n for n in _lines(out / "notifications.jsonl") if n["site"] == "BSH"]
    assert [n["t"] for n in notes] == sorted(n["t"] for n in notes), "notifications come in event time"
    first_wid = next(n["warning_id"] for n in notes if n["kind"] == "warning")
    first = [n for n in notes if n["warning_id"] == first_wid]

    # All four tiers of Zigui's chain, each with its duty unit's contacts from the roster.
    by_tier = {n["tier"]: n for n in first}
    assert set(by_tier) == {"county", "city", "province", "national"}
    assert {t: n["admin"] for t, n in by_tier.items()} == {"county": "420527", "city": "420500", "province": "420000", "national": "100000"}
    assert all(n["recipients"] and n["recipients"][0]["name"] for n in first)
    assert by_tier["county"]["recipients"][0]["email"] == "duty@zigui.example.org"

    # Nobody acknowledges: the yellow warning escalates one tier per ack deadline (1 h).
    raised = min(n["t"] for n in first if n["kind"] == "warning")
    esc = [n for n in first if n["kind"] == "escalation"]
    assert [n["tier"] for n in esc][:2] == ["province", "national"]
    def ts(x: str) -> float:
        return datetime.fromisoformat(x.replace("Z", "+00:00")).timestamp()

    assert ts(esc[0]["t"]) - ts(raised) == pytest.approx(3600.0)
    assert ts(esc[1]["t"]) - ts(esc[0]["t"]) == pytest.approx(3600.0)
    assert esc[0]["history"], "an escalation carries the warning's history"
    assert {"report_due", "cancel"} <= {n["kind"] for n in first}
    assert not any(n["exercise"] for n in notes)

    # CAP: Alert → Update(s) → Cancel for the first warning, every one valid, each Update and
    # the Cancel referencing all earlier messages of the warning.
    caps = _caps(out)
    assert caps, "no CAP messages written"
    for name, root in caps:
        schema.validate((out / "cap" / name).read_bytes())
        assert _text(root, "status") == "Actual"
    mine = [(n, r) for n, r in caps if first_wid in _text(r, "identifier")]
    types = [_text(r, "msgType") for _, r in mine]
    assert types[0] == "Alert" and types[-1] == "Cancel" and "Update" in types and set(types[1:-1]) == {"Update"}
    for i, (_, root) in enumerate(mine[1:], start=1):
        refs = [r.split(",")[1] for r in _text(root, "references").split()]
        assert refs == [_text(r, "identifier") for _, r in mine[:i]]
    assert [int(n[:4]) for n, _ in caps] == list(range(1, len(caps) + 1))

    cmds = _lines(out / "commands.jsonl")
    bsh = [c["interval_s"] for c in cmds if c["site"] == "BSH"]
    assert bsh[:3] == [300.0, 120.0, 60.0], "yellow, orange and red accelerate sampling"
    lifted = next(n["t"] for n in first if n["kind"] == "cancel")
    assert any(c["site"] == "BSH" and c["interval_s"] is None and c["t"] == lifted for c in cmds), "the lift restores normal sampling"

    # Daily zero reports, every day of the feed, for both counties, their city and province,
    # at 09:00 / 10:00 / 12:00 Shanghai time (01:00 / 02:00 / 04:00 UTC).
    zero = [n for n in _lines(out / "notifications.jsonl") if n["kind"] == "zero_report"]
    days = {n["t"][:10] for n in zero}
    assert len(days) >= 2
    whole = [day for day in sorted(days)[1:-1]]  # days wholly inside the feed
    assert whole
    for day in whole:
        mine_today = {(n["admin"], n["t"][11:19]) for n in zero if n["t"][:10] == day}
        assert mine_today == {("420527", "01:00:00"), ("420526", "01:00:00"), ("420500", "02:00:00"), ("420000", "04:00:00")}
    assert all("readings received in 24 h" in n["text"] for n in zero)


def test_the_same_replay_as_a_drill_is_only_exercise(feed, schema, tmp_path):
    reg = load_registry(example_path("sites.example.toml"))
    out = tmp_path / "drill"
    replay_rows(feed, reg, out, drill=True)
    notes = _lines(out / "notifications.jsonl")
    assert notes and all(n["exercise"] for n in notes)
    assert {"county", "city", "province", "national"} <= {n["tier"] for n in notes}
    assert any(n["kind"] == "escalation" for n in notes)
    caps = _caps(out)
    assert caps and _text(caps[0][1], "msgType") == "Alert"
    for name, root in caps:
        schema.validate((out / "cap" / name).read_bytes())
        assert _text(root, "status") == "Exercise"
        assert _text(root, "identifier").startswith("geowarn-exercise-")
    assert all(c["exercise"] for c in _lines(out / "commands.jsonl"))


def test_a_site_with_no_roster_unit_is_still_notified_up_its_chain_with_no_recipients(tmp_path):
    rows = [FeedRow("S1", "D1", "displacement", T0 + i * 600.0, float(i)) for i in range(3)]
    reg = registry_from_rows(rows)
    chain = ResponseChain(reg, load_roster(example_path("roster.example.toml")), ReplayFiles(tmp_path), zero_reports=False)
    chain.feed(LevelChange("S1", T0, 2, 0, "test: yellow"))
    assert chain.next_deadline() == T0 + 3600.0
    chain.run_until(T0 + 3 * 3600.0)
    notes = _lines(tmp_path / "notifications.jsonl")
    assert [(n["tier"], n["admin"], n["kind"]) for n in notes] == [
        ("county", "999999", "warning"),
        ("city", "999900", "warning"),
        ("province", "990000", "escalation"),
        ("national", "100000", "escalation"),
    ]
    assert [bool(n["recipients"]) for n in notes] == [False, False, False, True]
    assert chain.next_deadline() is None
    assert [p.name for p in sorted((tmp_path / "cap").glob("*.xml"))] == ["0001-geowarn-S1-20231114T221320Z.1.xml"]


def test_daily_zero_reports_go_to_county_city_and_province_at_their_local_hours(tmp_path):
    # T0 is 2023-11-14T22:13:20Z = 2023-11-15 06:13:20 in Asia/Shanghai (UTC+8, no DST).
    rows = [FeedRow("S1", "D1", "displacement", T0 + i * 600.0, float(i)) for i in range(3)]
    reg = registry_from_rows(rows)
    seen: list[tuple[str, float, float]] = []

    def stats(admin: str, since: float, until: float) -> dict[str, int]:
        seen.append((admin, since, until))
        return {"readings": 144, "devices": 2, "devices_online": 1}

    chain = ResponseChain(reg, load_roster(example_path("roster.example.toml")), ReplayFiles(tmp_path), zero_stats=stats)
    chain.feed(LevelChange("S1", T0, 1, 0, "test: blue"))
    chain.run_until(T0 + 30 * 3600.0)  # to 2023-11-16 12:13:20 local
    zero = [n for n in _lines(tmp_path / "notifications.jsonl") if n["kind"] == "zero_report"]
    day1 = datetime(2023, 11, 15, tzinfo=timezone.utc)
    expected = [
        ("999999", "county", day1 + timedelta(hours=1)),  # 09:00 +08
        ("999900", "city", day1 + timedelta(hours=2)),  # 10:00 +08
        ("990000", "province", day1 + timedelta(hours=4)),  # 12:00 +08
    ]
    expected += [(a, tier, t + timedelta(days=1)) for a, tier, t in expected]
    assert [(n["admin"], n["tier"], n["t"]) for n in zero] == [(a, tier, t.strftime("%Y-%m-%dT%H:%M:%S.000Z")) for a, tier, t in expected]
    assert [n["id"] for n in zero[:3]] == ["zero-999999-2023-11-15", "zero-999900-2023-11-15", "zero-990000-2023-11-15"]
    assert all(n["level"] == 0 and not n["exercise"] for n in zero)
    # The first county report covers the blue warning of 06:13; the next day's reports none.
    assert "S1 blue" in zero[0]["text"] and "devices online: 1 of 2" in zero[0]["text"] and "144" in zero[0]["text"]
    assert "none" in zero[3]["text"]
    assert seen[0] == ("999999", day1.timestamp() + 3600 - 86400, day1.timestamp() + 3600)


def test_an_ack_script_acknowledges_at_its_event_time_and_stops_that_escalation(feed, tmp_path):
    reg = load_registry(example_path("sites.example.toml"))
    plain = tmp_path / "plain"
    replay_rows(feed, reg, plain, plots=False)
    notes = [n for n in _lines(plain / "notifications.jsonl") if n["site"] == "BSH"]
    first = next(n for n in notes if n["kind"] == "warning")
    wid = first["warning_id"]
    escalated = [n for n in notes if n["warning_id"] == wid and n["kind"] == "escalation" and n["level"] == first["level"]]
    assert escalated, "without an ack the first level escalates"

    def ts(x: str) -> float:
        return datetime.fromisoformat(x.replace("Z", "+00:00")).timestamp()

    at = ts(first["t"]) + 600.0  # ten minutes after the warning, well within its 1 h deadline
    script = tmp_path / "acks.jsonl"
    script.write_text(
        json.dumps({"t": at, "site": "BSH", "by": "王值班", "note": "patrol sent"}) + "\n"
        + json.dumps({"t": at, "site": "XK", "by": "王值班"}) + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "acked"
    from geowarn.service.replay import read_ack_script

    replay_rows(feed, reg, out, plots=False, acks=read_ack_script(script))
    outcomes = _lines(out / "acks.jsonl")
    assert [(o["site"], o["ok"], o["rule"]) for o in outcomes] == [("BSH", True, "ack"), ("XK", False, "refused")]
    assert outcomes[0]["warning_id"] == wid
    after = [n for n in _lines(out / "notifications.jsonl") if n["warning_id"] == wid]
    assert not [n for n in after if n["kind"] == "escalation" and n["level"] == first["level"]]


def test_a_bad_ack_script_names_the_line(tmp_path):
    from geowarn.ingest.feeds import FeedError
    from geowarn.service.replay import read_ack_script

    script = tmp_path / "acks.jsonl"
    script.write_text('{"t": 1764400000, "site": "BSH", "by": "a"}\n{"t": 1764400000, "site": "BSH"}\n', encoding="utf-8")
    with pytest.raises(FeedError, match=r"acks.jsonl:2: by \(who acknowledges\) is required"):
        read_ack_script(script)
