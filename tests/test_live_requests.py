"""LiveChain in-process: requests (ack by warning or notification id, quick report, shelve),
persistence across a restart, and what lands in the outbox. Real SQLite files, no broker."""

from __future__ import annotations

import json

import pytest

from geowarn.alerts.live import CAP_KEY, COMMAND_KEY, LiveChain, Request
from geowarn.alerts.outbox import Outbox
from geowarn.config.registry import load_registry
from geowarn.config.roster import load_roster
from geowarn.config.settings import example_path
from geowarn.core.events import LevelChange

T0 = 1_764_400_000.0  # 2025-11-29T07:06:40Z


@pytest.fixture
def parts(tmp_path):
    reg = load_registry(example_path("sites.example.toml"))
    roster = load_roster(example_path("roster.example.toml"))
    return reg, roster, tmp_path


def _chain(parts) -> LiveChain:
    reg, roster, tmp = parts
    return LiveChain(reg, roster, Outbox(tmp / "outbox.sqlite"), tmp, zero_stats=None)


def _req(kind: str, **doc) -> Request:
    return Request.parse(kind, json.dumps(doc).encode())


def test_a_warning_queues_notifications_cap_and_commands_and_an_ack_by_notification_id_stops_escalation(parts):
    chain = _chain(parts)
    chain.chain.feed(LevelChange("BSH", T0, 2, 0, "velocity 10 mm/day"))
    items = chain.outbox.items()
    kinds = {(i.msg.notifier, i.msg.kind) for i in items}
    # Yellow: county and city (mqtt + jsonl each, example roster), one CAP, a command per BSH device.
    assert {("420527/mqtt/0", "warning"), ("420527/jsonl/0", "warning"), ("420500/mqtt/0", "warning"), ("420500/jsonl/0", "warning")} <= kinds
    assert sum(1 for i in items if i.msg.notifier == CAP_KEY) == 1
    assert sorted(i.msg.body["topic"] for i in items if i.msg.notifier == COMMAND_KEY) == [
        f"geowarn/BSH/{d}/cmd" for d in sorted(["BSH-GNSS1", "BSH-GNSS2", "BSH-EXT1", "BSH-RG1", "BSH-PZ1"])
    ]
    assert list((parts[2] / "cap").glob("*.xml"))
    note = next(i for i in items if i.msg.notifier == "420527/mqtt/0")
    wid = note.msg.body["warning_id"]
    assert chain.chain.next_deadline() == pytest.approx(T0 + 3600.0)

    refused = chain.handle(_req("ack", id="nope", by="Wang"), T0 + 60)
    assert not refused.ok and "neither a current warning" in refused.detail
    done = chain.handle(_req("ack", id=note.id.split("/", 1)[0], by="zigui-duty", name="王值班 Wang", note="patrol sent", request="r1"), T0 + 120)
    assert done.ok and done.rule == "ack" and done.warning_id == wid and done.request_id == "r1"
    # by is the signer's identity; the name typed travels with the note.
    assert done.detail == "ack: by zigui-duty at level 2: 王值班 Wang: patrol sent"
    assert chain.chain.next_deadline() is None or chain.chain.next_deadline() > T0 + 86400 / 2  # no ack deadline left

    # A restart: a new LiveChain on the same outbox has the acknowledged state, queues nothing new.
    before = len(chain.outbox.items())
    chain.outbox.close()
    again = _chain(parts)
    assert again.chain.states[("BSH", False)].status == "acknowledged" and again.chain.states[("BSH", False)].warning_id == wid
    again.chain.run_until(T0 + 2 * 3600.0)
    assert len([i for i in again.outbox.items() if i.msg.kind == "escalation"]) == 0
    assert len(again.outbox.items()) == before


def test_bad_requests_are_refused_with_a_reason(parts):
    for kind, payload, reason in [
        ("ack", b"not json", "not JSON"),
        ("ack", b'{"by": "x"}', "missing the id"),
        ("ack", b'{"id": "w", "by": " "}', "missing by"),
        ("shelve", b'{"site": "BSH", "by": "x"}', "until"),
        ("reboot", b'{"id": "w", "by": "x"}', "unknown request"),
    ]:
        with pytest.raises(ValueError, match=reason):
            Request.parse(kind, payload)


def test_shelving_a_site_silences_it_until_unshelved_and_an_orange_opens_a_quick_report(parts):
    chain = _chain(parts)
    shelved = chain.handle(_req("shelve", site="BSH", by="Li", until=T0 + 7200, note="replacing the GNSS antenna"), T0)
    assert shelved.ok and shelved.rule == "shelve"
    assert not chain.handle(_req("shelve", site="NOPE", by="Li", until=T0 + 7200), T0).ok
    n = len(chain.outbox.items())
    chain.chain.feed(LevelChange("BSH", T0 + 60, 2, 0, "velocity"))
    assert not [i for i in chain.outbox.items()[n:] if i.msg.kind == "warning"], "a shelved site announces nothing"
    assert chain.handle(_req("unshelve", site="BSH", by="Li"), T0 + 120).ok

    (parts[2] / "x").mkdir()
    other = _chain((parts[0], parts[1], parts[2] / "x"))
    other.chain.feed(LevelChange("BZM", T0, 3, 0, "velocity 80 mm/day, confirmed"))
    task = other.chain.states[("BZM", False)].reports[0]
    assert task.due == pytest.approx(T0 + 12 * 3600.0)  # BZM is medium: 12 h
    # The report_due notification carries a draft from the site card (config/sites.example.toml).
    due = next(i for i in other.outbox.items() if i.msg.kind == "report_due" and i.msg.notifier == "420527/mqtt/0")
    draft = due.msg.body["draft"]
    assert draft["task_id"] == task.task_id and draft["site"] == "BZM" and draft["scale"] == "medium"
    assert draft["threatened"] == {"people": 156, "households": 41}
    assert draft["shelter"] == "归州镇文化广场 Guizhou town square" and draft["responsible"]["phone"] == "+86 717 000 0202"
    assert draft["trigger_and_trend"] == "velocity 80 mm/day, confirmed" and draft["colour"] == "orange"
    other.handle(_req("ack", id=task.warning_id, by="Zhao", note="road closed"), T0 + 1800)
    ok = other.handle(_req("report", task_id=task.task_id, by="County office"), T0 + 3600)
    from geowarn.alerts.reports import quick_report_draft

    later = quick_report_draft(parts[0].sites["BZM"], other.chain.states[("BZM", False)], task)
    assert later["measures_taken"] == ["2025-11-29T07:36:40.000Z Zhao: road closed"]
    assert ok.ok and other.chain.states[("BZM", False)].report(task.task_id).submitted == pytest.approx(T0 + 3600)
    assert not other.handle(_req("report", task_id="no-task", by="x"), T0 + 3700).ok


def test_a_county_added_to_the_registry_later_gets_its_zero_reports(parts, tmp_path):
    from geowarn.config.registry import Registry

    reg, roster, tmp = parts
    only_zigui = Registry([site for site in reg.sites.values() if site.admin == "420527"])
    first = LiveChain(only_zigui, roster, Outbox(tmp / "outbox.sqlite"), tmp)
    first.chain.tick(T0)
    assert "420526" not in first.chain.zero_last
    first.outbox.close()
    # Xingshan (420526, site XK) joins; the chain resumes and watches it from now on.
    again = LiveChain(reg, roster, Outbox(tmp / "outbox.sqlite"), tmp)
    again.chain.tick(T0 + 60)  # the daemon starts the chain's clock at its start
    again.chain.run_until(T0 + 2 * 86400.0)
    zero = {(i.msg.admin, i.msg.body.get("zero", {}).get("day")) for i in again.outbox.items() if i.msg.kind == "zero_report"}
    assert ("420526", "2025-11-30") in zero and ("420527", "2025-11-30") in zero


def test_a_shelve_until_beyond_year_9999_is_refused_not_crashing(parts):
    for until in ("1e20", "1e400", "Infinity", "-5"):
        with pytest.raises(ValueError, match="until"):
            Request.parse("shelve", ('{"site": "BSH", "by": "x", "until": ' + until + "}").encode())
    assert Request.request_id_of(b'{"request": "r9", "until": 1e400}') == "r9"
    assert Request.request_id_of(b"[1]") == ""


def test_an_ack_of_a_lower_level_than_the_warning_is_not_an_acknowledgement(parts):
    """Issue 16, rough edge 9: `geowarn ack --level 2` on a red warning exited 0. It is recorded
    (who saw what), but it did not stop the escalation, so the requester is told it failed."""
    chain = _chain(parts)
    chain.chain.feed(LevelChange("BSH", T0, 4, 0, "forecast 10 h"))
    wid = next(i for i in chain.outbox.items() if i.msg.notifier == "420527/mqtt/0").msg.body["warning_id"]
    stale = chain.handle(_req("ack", id=wid, by="zigui-duty", note="saw yellow", level=2), T0 + 60)
    assert not stale.ok and stale.rule == "ack_stale" and "escalation goes on" in stale.detail
    assert chain.chain.states[("BSH", False)].status == "unacknowledged"
    right = chain.handle(_req("ack", id=wid, by="zigui-duty", note="evacuating", level=4), T0 + 120)
    assert right.ok and right.rule == "ack"


def test_a_notification_names_an_ack_deadline_only_when_it_has_one(parts):
    """Issue 16, rough edge 9: red's notification said "acknowledge by …" while its deadline
    was null. Every level's warning text and its deadline field agree."""
    for level in (1, 2, 3, 4):
        sub = parts[2] / f"l{level}"
        sub.mkdir()
        chain = _chain((parts[0], parts[1], sub))
        chain.chain.feed(LevelChange("BSH", T0, level, 0, "test"))
        checked = 0
        for item in chain.outbox.items():
            body = item.msg.body
            if item.msg.kind != "warning" or not isinstance(body, dict) or "deadline" not in body:
                continue
            text = json.dumps(body, ensure_ascii=False)
            says = "Acknowledge by" in text or "前确认" in text
            assert says == (body["deadline"] is not None), (level, item.msg.notifier, body["deadline"], text[:400])
            checked += 1
        assert checked >= 2, f"level {level}: no warning notification with a deadline field"
        chain.outbox.close()
