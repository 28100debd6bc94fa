"""The alert engine: sequence tables for every named rule, restarts, zero reports, and a
Hypothesis state machine for the invariants.

Expected values in the tables are worked out by hand from DESIGN §5 and the policy defaults:
first tiers blue 1, yellow 2, orange 3, red 4; ack deadlines yellow 60 min, orange 15, red 5;
quick report 12 h (medium) or 4 h (large) with a reminder 1 h before and one tier further up
every hour once overdue; sampling yellow 300 s, orange 120 s, red 60 s.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from geowarn.alerts.model import (
    ACKED,
    NORMAL,
    OUT_OF_SERVICE,
    RTN_UNACK,
    RULES,
    SHELVED,
    UNACK,
    Ack,
    Cap,
    DataBack,
    LevelIn,
    NoData,
    Notify,
    OutOfService,
    ReportSubmitted,
    ReturnToService,
    SetSampling,
    Shelve,
    SiteAlert,
    Tick,
    Transition,
    Unshelve,
    event_from_change,
    warning_id_for,
)
from geowarn.alerts.policy import AlertPolicy
from geowarn.alerts.machine import next_deadline, step
from geowarn.alerts.zero_reports import next_zero_report, zero_report_due
from geowarn.config.roster import TIERS, chain_of
from geowarn.core.events import LevelChange

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
MIN = 60.0
WID = "S1-20231114T221320Z"  # raised at T0
WID_20 = "S1-20231114T223320Z"  # raised at T0 + 20 min
WID_60 = "S1-20231114T231320Z"  # raised at T0 + 60 min
WID_95 = "S1-20231114T234820Z"  # raised at T0 + 95 min
ADMIN = "420527"  # Zigui county; city 420500, province 420000


# -- helpers --------------------------------------------------------------------------------

EventAt = Callable[[float], object]


def L(level: int, reason: str = "velocity") -> EventAt:
    return lambda t: LevelIn(t, level, reason, {"channel": "G1/e"})


def TICK(t: float) -> Tick:
    return Tick(t)


def ACK(by: str = "Wang", warning_id: str = WID, level: int | None = None, note: str = "seen, patrol sent") -> EventAt:
    return lambda t: Ack(t, by, note, warning_id, level)


def SHELVE(until_min: float, by: str = "Zhao") -> EventAt:
    return lambda t: Shelve(t, by, T0 + until_min * MIN, "extensometer maintenance")


def summary(action: object) -> str:
    if isinstance(action, Notify):
        return f"{action.kind} {action.tier}"
    if isinstance(action, Cap):
        return f"cap {action.msg_type}"
    if isinstance(action, SetSampling):
        return "sampling normal" if action.interval_s is None else f"sampling {action.interval_s:g}"
    raise AssertionError(action)


def new_state(scale: str = "medium", exercise: bool = False) -> SiteAlert:
    return SiteAlert.new("S1", ADMIN, scale, exercise, t=T0 - 3600)


Row = tuple[float, EventAt, int, str, tuple[str, ...], list[str], float | None]


def run_table(rows: list[Row], policy: AlertPolicy, scale: str = "medium") -> list[Transition]:
    state = new_state(scale)
    out = []
    for i, (minute, make, level, status, rules, actions, deadline) in enumerate(rows):
        now = T0 + minute * MIN
        tr = step(state, make(now), policy, now)  # type: ignore[arg-type]
        where = f"row {i} (t = {minute} min)"
        assert tr.state.level == level, where
        assert tr.state.status == status, where
        assert tr.rules == rules, where
        assert tr.rule == rules[0], where
        assert [summary(a) for a in tr.actions] == actions, where
        want = None if deadline is None else T0 + deadline * MIN
        assert next_deadline(tr.state) == want, where
        out.append(tr)
        state = tr.state
    return out


# -- sequence tables ------------------------------------------------------------------------

ESCALATE_ACK_REALARM: list[Row] = [
    (0, L(2), 2, UNACK, ("raise",), ["warning county", "warning city", "cap Alert", "sampling 300"], 60),
    (60, TICK, 2, UNACK, ("escalate_unacked",), ["escalation province"], 120),
    (61, ACK(level=2), 2, ACKED, ("ack",), [], None),
    (120, TICK, 2, ACKED, ("noop",), [], None),
    (
        130,
        L(3),
        3,
        UNACK,
        ("upgrade_realarm", "report_opened"),
        ["realarm county", "realarm city", "realarm province", "cap Update", "report_due county", "sampling 120"],
        145,
    ),
    # province was the highest tier: national is next, and the last
    (145, TICK, 3, UNACK, ("escalate_unacked",), ["escalation national"], 130 + 720 - 60),
    (146, ACK(), 3, ACKED, ("ack",), [], 790),
    (
        150,
        L(4),
        4,
        UNACK,
        ("upgrade_realarm",),
        ["realarm county", "realarm city", "realarm province", "realarm national", "cap Update", "sampling 60"],
        790,
    ),
    (160, ACK(level=4), 4, ACKED, ("ack",), [], 790),
    (170, ACK(by="Li"), 4, ACKED, ("ack_again",), [], 790),
]

RISE_WHILE_UNACKED: list[Row] = [
    (0, L(2), 2, UNACK, ("raise",), ["warning county", "warning city", "cap Alert", "sampling 300"], 60),
    # yellow's deadline (60) is sooner than orange's 15 min from minute 50 (65): a rise never
    # postpones an escalation
    (
        50,
        L(3),
        3,
        UNACK,
        ("upgrade", "report_opened"),
        ["warning county", "warning city", "warning province", "cap Update", "report_due county", "sampling 120"],
        60,
    ),
    (59, TICK, 3, UNACK, ("noop",), [], 60),
    (60, TICK, 3, UNACK, ("escalate_unacked",), ["escalation national"], 50 + 720 - 60),
]

RISE_SHORTENS_THE_DEADLINE: list[Row] = [
    (0, L(2), 2, UNACK, ("raise",), ["warning county", "warning city", "cap Alert", "sampling 300"], 60),
    # orange's 15 min from minute 10 (25) is sooner than yellow's 60
    (10, L(3), 3, UNACK, ("upgrade", "report_opened"), ["warning county", "warning city", "warning province", "cap Update", "report_due county", "sampling 120"], 25),
    (25, TICK, 3, UNACK, ("escalate_unacked",), ["escalation national"], 10 + 720 - 60),
]

DOWN_LIFT_AND_ACKS: list[Row] = [
    (
        0,
        L(3),
        3,
        UNACK,
        ("raise", "report_opened"),
        ["warning county", "warning city", "warning province", "cap Alert", "report_due county", "sampling 120"],
        15,
    ),
    # down as fusion says; the orange ack deadline (sooner) still holds
    (5, L(2), 2, UNACK, ("downgrade",), ["downgrade county", "downgrade city", "downgrade province", "cap Update", "sampling 300"], 15),
    (6, ACK(level=1), 2, UNACK, ("ack_stale",), [], 15),
    (7, ACK(warning_id="S1-19990101T000000Z"), 2, UNACK, ("ignored",), [], 15),
    (8, ACK(), 2, ACKED, ("ack",), [], 660),
    (9, ACK(by="Li"), 2, ACKED, ("ack_again",), [], 660),
    (10, L(0), 0, NORMAL, ("lift",), ["cancel county", "cancel city", "cancel province", "cap Cancel", "sampling normal"], 660),
    (20, L(1), 1, UNACK, ("raise",), ["warning county", "cap Alert"], 660),
    (30, L(0), 0, RTN_UNACK, ("lift", "rtn_unack"), ["cancel county", "cap Cancel"], 660),
    (31, ACK(warning_id=WID_20), 0, NORMAL, ("ack_rtn",), [], 660),
    (32, ACK(warning_id=WID_20), 0, NORMAL, ("ignored",), [], 660),
    (33, lambda t: ReportSubmitted(t, "Wang", f"{WID}.report"), 0, NORMAL, ("report_submitted",), [], None),
    (34, lambda t: ReportSubmitted(t, "Wang", f"{WID}.report"), 0, NORMAL, ("ignored",), [], None),
]

LOWER_HOLD: list[Row] = [
    (
        0,
        L(3),
        3,
        UNACK,
        ("raise", "report_opened"),
        ["warning county", "warning city", "warning province", "cap Alert", "report_due county", "sampling 120"],
        15,
    ),
    (5, ACK(), 3, ACKED, ("ack",), [], 660),
    (10, L(2), 3, ACKED, ("lower_held",), [], 40),
    (20, L(3), 3, ACKED, ("lower_cancelled",), [], 660),
    (25, L(1), 3, ACKED, ("lower_held",), [], 55),
    # a second lower report moves the target, not the end of the hold
    (30, L(2), 3, ACKED, ("lower_held",), [], 55),
    (54, TICK, 3, ACKED, ("noop",), [], 55),
    (55, TICK, 2, ACKED, ("downgrade_after_hold",), ["downgrade county", "downgrade city", "downgrade province", "cap Update", "sampling 300"], 660),
    (60, L(0), 2, ACKED, ("lower_held",), [], 90),
    (90, TICK, 0, NORMAL, ("lift_after_hold",), ["cancel county", "cancel city", "cancel province", "cap Cancel", "sampling normal"], 660),
    (95, L(2), 2, UNACK, ("raise",), ["warning county", "warning city", "cap Alert", "sampling 300"], 155),
    (100, L(0), 2, UNACK, ("lower_held",), [], 130),
    # a rise ends the hold; red reaches national, so nothing is left to escalate to
    (
        105,
        L(4),
        4,
        UNACK,
        ("upgrade", "report_opened"),
        ["warning county", "warning city", "warning province", "warning national", "cap Update", "report_due county", "sampling 60"],
        660,
    ),
]

NO_DATA: list[Row] = [
    (
        0,
        L(3),
        3,
        UNACK,
        ("raise", "report_opened"),
        ["warning county", "warning city", "warning province", "cap Alert", "report_due county", "sampling 120"],
        15,
    ),
    (5, lambda t: NoData(t, "G1", "no data for 1.0 h"), 3, UNACK, ("nodata_hold",), ["nodata county"], 15),
    (6, lambda t: NoData(t, "G1"), 3, UNACK, ("noop",), [], 15),
    (7, lambda t: NoData(t, "G2"), 3, UNACK, ("nodata_hold",), ["nodata county"], 15),
    (8, lambda t: DataBack(t, "G1"), 3, UNACK, ("data_back",), ["data_back county"], 15),
    (9, lambda t: DataBack(t, "G1"), 3, UNACK, ("noop",), [], 15),
]

REPORT_LARGE_SITE: list[Row] = [
    (
        0,
        L(3),
        3,
        UNACK,
        ("raise", "report_opened"),
        ["warning county", "warning city", "warning province", "cap Alert", "report_due county", "sampling 120"],
        15,
    ),
    (15, TICK, 3, UNACK, ("escalate_unacked",), ["escalation national"], 180),
    (16, ACK(), 3, ACKED, ("ack",), [], 180),
    (180, TICK, 3, ACKED, ("report_reminder",), ["report_due county"], 240),
    (240, TICK, 3, ACKED, ("report_overdue",), ["report_overdue city"], 300),
    (300, TICK, 3, ACKED, ("report_overdue",), ["report_overdue province"], 360),
    (360, TICK, 3, ACKED, ("report_overdue",), ["report_overdue national"], None),
    (400, lambda t: ReportSubmitted(t, "Wang", f"{WID}.report"), 3, ACKED, ("report_submitted",), [], None),
]

SHELVE_RISE_UNSHELVE: list[Row] = [
    (0, L(2), 2, UNACK, ("raise",), ["warning county", "warning city", "cap Alert", "sampling 300"], 60),
    (10, SHELVE(70), 2, SHELVED, ("shelve",), ["shelved county", "shelved city"], 70),
    # followed (and sampled faster) but not announced while shelved
    (20, L(3), 3, SHELVED, ("suppressed_level",), ["sampling 120"], 70),
    # back: unacknowledged, yellow's deadline restarts (90), orange's from now is sooner (45)
    (
        30,
        lambda t: Unshelve(t, "Zhao"),
        3,
        UNACK,
        ("unshelve", "upgrade", "report_opened"),
        ["warning county", "warning city", "warning province", "cap Update", "report_due county"],
        45,
    ),
    (31, lambda t: Unshelve(t, "Zhao"), 3, UNACK, ("ignored",), [], 45),
    (45, TICK, 3, UNACK, ("escalate_unacked",), ["escalation national"], 30 + 660),
]

SHELVE_EXPIRES: list[Row] = [
    (0, L(2), 2, UNACK, ("raise",), ["warning county", "warning city", "cap Alert", "sampling 300"], 60),
    (1, ACK(), 2, ACKED, ("ack",), [], None),
    (5, SHELVE(40), 2, SHELVED, ("shelve",), ["shelved county", "shelved city"], 40),
    (10, L(0), 0, SHELVED, ("suppressed_level",), ["sampling normal"], 40),
    (40, TICK, 0, NORMAL, ("shelve_expired", "lift"), ["cancel county", "cancel city", "cap Cancel"], None),
    # an operator's shelve that arrives after its own end
    (41, lambda t: Shelve(t - 10 * MIN, "Zhao", t - 5 * MIN), 0, NORMAL, ("ignored",), [], None),
]

RAISE_WHILE_SHELVED: list[Row] = [
    (0, SHELVE(60), 0, SHELVED, ("shelve",), [], 60),
    (10, L(2), 2, SHELVED, ("suppressed_level",), ["sampling 300"], 60),
    (60, TICK, 2, UNACK, ("shelve_expired", "raise"), ["warning county", "warning city", "cap Alert"], 120),
]

OUT_OF_SERVICE_ROWS: list[Row] = [
    (0, L(2), 2, UNACK, ("raise",), ["warning county", "warning city", "cap Alert", "sampling 300"], 60),
    (5, lambda t: OutOfService(t, "Zhao", "GNSS receiver replaced"), 2, OUT_OF_SERVICE, ("out_of_service",), ["out_of_service county", "out_of_service city"], None),
    (6, lambda t: OutOfService(t, "Zhao"), 2, OUT_OF_SERVICE, ("ignored",), [], None),
    (7, SHELVE(100), 2, OUT_OF_SERVICE, ("ignored",), [], None),
    (60, TICK, 2, OUT_OF_SERVICE, ("noop",), [], None),
    (70, lambda t: ReturnToService(t, "Zhao"), 2, UNACK, ("return_to_service",), ["return_to_service county", "return_to_service city"], 130),
    (71, lambda t: ReturnToService(t, "Zhao"), 2, UNACK, ("ignored",), [], 130),
    (130, TICK, 2, UNACK, ("escalate_unacked",), ["escalation province"], 190),
]

TABLES: dict[str, tuple[list[Row], AlertPolicy, str]] = {
    "escalate_ack_realarm": (ESCALATE_ACK_REALARM, AlertPolicy(), "medium"),
    "rise_while_unacked": (RISE_WHILE_UNACKED, AlertPolicy(), "small"),
    "rise_shortens_the_deadline": (RISE_SHORTENS_THE_DEADLINE, AlertPolicy(), "medium"),
    "down_lift_and_acks": (DOWN_LIFT_AND_ACKS, AlertPolicy(), "medium"),
    "lower_hold": (LOWER_HOLD, AlertPolicy(lower_hold_s=30 * MIN), "medium"),
    "no_data": (NO_DATA, AlertPolicy(), "medium"),
    "report_large_site": (REPORT_LARGE_SITE, AlertPolicy(), "large"),
    "shelve_rise_unshelve": (SHELVE_RISE_UNSHELVE, AlertPolicy(), "medium"),
    "shelve_expires": (SHELVE_EXPIRES, AlertPolicy(), "medium"),
    "raise_while_shelved": (RAISE_WHILE_SHELVED, AlertPolicy(), "medium"),
    "out_of_service": (OUT_OF_SERVICE_ROWS, AlertPolicy(), "medium"),
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_sequence_table(name):
    rows, policy, scale = TABLES[name]
    run_table(rows, policy, scale)


def test_the_tables_name_every_rule():
    named = {r for rows, _, _ in TABLES.values() for row in rows for r in row[4]}
    assert named == set(RULES)


# -- details the tables do not show ---------------------------------------------------------


def test_raise_notifies_the_chain_of_the_county_with_deadline_and_id():
    tr = step(new_state(), LevelIn(T0, 3, "two devices at orange"), AlertPolicy(), T0)
    notes = [a for a in tr.actions if isinstance(a, Notify) and a.kind == "warning"]
    assert [(n.tier, n.admin) for n in notes] == [("county", "420527"), ("city", "420500"), ("province", "420000")]
    assert all(n.warning_id == WID and n.level == 3 and n.deadline == T0 + 15 * MIN for n in notes)
    assert len({n.id for n in tr.actions if isinstance(n, Notify)}) == 4  # three warnings and the report
    assert tr.state.warning_id == WID and tr.state.raised == T0 and tr.state.since == T0
    (cap,) = [a for a in tr.actions if isinstance(a, Cap)]
    assert (cap.msg_type, cap.identifier, cap.references, cap.level, cap.admin) == ("Alert", f"{WID}.1", (), 3, ADMIN)
    task = tr.state.reports[0]
    assert (task.task_id, task.due, task.remind_at) == (f"{WID}.report", T0 + 12 * 3600, T0 + 11 * 3600)


def test_updates_and_cancel_reference_every_earlier_cap_message():
    p = AlertPolicy()
    s = step(new_state(), LevelIn(T0, 2), p, T0).state
    s = step(s, LevelIn(T0 + 60, 3), p, T0 + 60).state
    tr = step(s, LevelIn(T0 + 120, 0), p, T0 + 120)
    (cap,) = [a for a in tr.actions if isinstance(a, Cap)]
    assert cap.msg_type == "Cancel" and cap.identifier == f"{WID}.3"
    assert cap.references == ((f"{WID}.1", T0), (f"{WID}.2", T0 + 60))


def test_escalation_carries_the_history():
    p = AlertPolicy()
    s = step(new_state(), LevelIn(T0, 2, "5 mm/day"), p, T0).state
    tr = step(s, Tick(T0 + 3600), p, T0 + 3600)
    (n,) = tr.actions
    assert isinstance(n, Notify) and (n.kind, n.tier, n.admin, n.level) == ("escalation", "province", "420000", 2)
    assert [(e.t, e.rule) for e in n.history] == [(T0, "raise"), (T0 + 3600, "escalate_unacked")]
    assert n.deadline == T0 + 2 * 3600
    assert [(x.tier, x.kind) for x in tr.state.notices] == [("county", "warning"), ("city", "warning"), ("province", "escalation")]


def test_first_tiers_and_deadlines_are_configurable():
    p = AlertPolicy(first_tiers={1: 1, 2: 1, 3: 2, 4: 3}, ack_deadline_s={1: 600, 2: 1200})
    tr = step(new_state(), LevelIn(T0, 1), p, T0)
    assert [summary(a) for a in tr.actions] == ["warning county", "cap Alert"]
    assert next_deadline(tr.state) == T0 + 600  # blue escalates under this policy
    tr = step(tr.state, LevelIn(T0 + 60, 4), p, T0 + 60)
    assert [summary(a) for a in tr.actions if isinstance(a, Notify)][:3] == ["warning county", "warning city", "warning province"]
    assert tr.state.ack_deadline is None  # no ack deadline for red under this policy


def test_an_ack_stops_escalation_but_only_at_its_level():
    p = AlertPolicy()
    s = step(new_state(), LevelIn(T0, 2), p, T0).state
    s = step(s, Ack(T0 + 60, "Wang", "seen", WID, 2), p, T0 + 60).state
    for minutes in (60, 120, 600):
        tr = step(s, Tick(T0 + minutes * MIN), p, T0 + minutes * MIN)
        assert tr.actions == () and tr.rule == "noop"
    assert s.acks[0].by == "Wang" and s.acks[0].level == 2 and s.acks[0].note == "seen"


def test_no_data_never_changes_the_level_or_status():
    p = AlertPolicy()
    s = step(new_state(), LevelIn(T0, 4), p, T0).state
    for i, ev in enumerate([NoData(T0 + 1, "G1"), NoData(T0 + 2, "G2"), DataBack(T0 + 3, "G1")]):
        tr = step(s, ev, p, T0 + 1 + i)
        assert (tr.state.level, tr.state.status, tr.state.announced) == (4, UNACK, 4)
        s = tr.state
    assert s.silent == ("G2",)


def test_no_data_outside_a_warning_names_no_warning():
    p = AlertPolicy()
    (n,) = step(new_state(), NoData(T0, "G1"), p, T0).actions
    assert isinstance(n, Notify) and (n.kind, n.tier, n.warning_id, n.device, n.level) == ("nodata", "county", None, "G1", 0)
    s = step(new_state(), LevelIn(T0, 2), p, T0).state
    (n,) = step(s, NoData(T0 + 1, "G1"), p, T0 + 1).actions
    assert isinstance(n, Notify) and (n.warning_id, n.level) == (WID, 2)


def test_action_ids_differ_when_a_level_flaps_within_one_second():
    p = AlertPolicy()
    s, ids = new_state(), []
    for level in (2, 0, 2, 0, 2):
        tr = step(s, LevelIn(T0, level), p, T0)
        ids += [a.id for a in tr.actions]
        s = tr.state
    assert len(ids) == len(set(ids))


def test_step_leaves_its_input_alone():
    p = AlertPolicy()
    s = step(new_state(), LevelIn(T0, 3, "x", {"forecast": {"failure_time": T0 + 86400}}), p, T0).state
    before = json.dumps(s.to_dict(), sort_keys=True)
    for ev in [Tick(T0 + 900), Ack(T0 + 1, "W", "n", WID), LevelIn(T0 + 2, 0), Shelve(T0 + 3, "Z", T0 + 99)]:
        step(s, ev, p, ev.t)
    assert json.dumps(s.to_dict(), sort_keys=True) == before


def test_a_clock_that_steps_back_is_taken_as_standing_still():
    p = AlertPolicy()
    s = step(new_state(), LevelIn(T0, 2), p, T0).state
    tr = step(s, LevelIn(T0 - 600, 3), p, T0 - 600)  # now behind the state's time
    assert tr.state.t == T0
    assert [e.t for e in tr.state.history] == [T0, T0, T0]
    assert next_deadline(tr.state) == T0 + 15 * MIN


def test_drills_are_exercises_throughout():
    p = AlertPolicy()
    tr = step(new_state(exercise=True), LevelIn(T0, 3), p, T0)
    assert tr.state.warning_id == WID + "~drill"
    assert all(a.exercise for a in tr.actions)
    assert all(a.text.startswith("[EXERCISE] ") for a in tr.actions if isinstance(a, Notify))


def test_a_new_warning_in_the_same_second_gets_its_own_id():
    p = AlertPolicy()
    s = step(new_state(), LevelIn(T0, 2), p, T0).state
    s = step(s, LevelIn(T0, 0), p, T0).state
    s = step(s, LevelIn(T0, 2), p, T0).state
    assert s.warning_id == WID + "-2"
    s = step(s, LevelIn(T0, 0), p, T0).state
    s = step(s, LevelIn(T0 + 0.5, 2), p, T0 + 0.5).state
    assert s.warning_id == WID + "-3"
    s = step(s, LevelIn(T0 + 1, 0), p, T0 + 1).state
    s = step(s, LevelIn(T0 + 1, 2), p, T0 + 1).state
    assert s.warning_id == "S1-20231114T221321Z"


def test_warning_id_is_site_and_raise_time():
    assert warning_id_for("S1", T0) == WID
    assert warning_id_for("S1", T0 + 95 * MIN) == WID_95
    assert warning_id_for("S1", T0, exercise=True) == WID + "~drill"


def test_events_from_fusion_changes():
    assert event_from_change(LevelChange("S1", T0, 3, 2, "r", {"channel": "G1/e"})) == LevelIn(T0, 3, "r", {"channel": "G1/e"})
    assert event_from_change(LevelChange("S1", T0, 3, 3, "silent", {"device": "G1"}, kind="nodata")) == NoData(T0, "G1", "silent")
    assert event_from_change(LevelChange("S1", T0, 3, 3, "back", {"device": "G1"}, kind="nodata_end")) == DataBack(T0, "G1")


@pytest.mark.parametrize(
    "make",
    [
        lambda: LevelIn(T0, 5),
        lambda: LevelIn(T0, -1),
        lambda: LevelIn(T0, 2, "", {"x": object()}),
        lambda: Ack(T0, " ", "", WID),
        lambda: Ack(T0, "W", "", WID, 0),
        lambda: Shelve(T0, "Z", T0),
        lambda: NoData(T0, ""),
        lambda: SiteAlert.new("S1", "420500"),  # a city code, not a county
        lambda: SiteAlert.new("S1", ADMIN, "huge"),
        lambda: AlertPolicy(first_tiers={1: 1, 2: 2, 3: 3}),
        lambda: AlertPolicy(first_tiers={1: 2, 2: 1, 3: 3, 4: 4}),
        lambda: AlertPolicy(ack_deadline_s={2: 0}),
        lambda: AlertPolicy(sampling_s={5: 60}),
        lambda: AlertPolicy(report_due_s={"small": 1.0}),
        lambda: AlertPolicy(report_remind_before_s=5 * 3600, report_due_s={"extra_large": 4 * 3600.0, "large": 4 * 3600.0, "medium": 12 * 3600.0, "small": 12 * 3600.0}),
    ],
)
def test_bad_input_is_refused_with_valueerror(make):
    with pytest.raises(ValueError):
        make()


def test_policy_reads_toml_style_string_keys():
    p = AlertPolicy.model_validate({"first_tiers": {"1": 1, "2": 1, "3": 2, "4": 4}, "ack_deadline_s": {"2": 1800}})
    assert p.first_tiers == {1: 1, 2: 1, 3: 2, 4: 4} and p.ack_s(2) == 1800 and p.ack_s(3) is None


# -- restart --------------------------------------------------------------------------------


def _script() -> list[tuple[float, object]]:
    """A long run through most rules, as (now, event)."""
    m = MIN
    return [
        (T0, LevelIn(T0, 2, "velocity 5 mm/day", {"channel": "G1/e", "forecast": {"failure_time": T0 + 9 * 86400}})),
        (T0 + 60 * m, Tick(T0 + 60 * m)),
        (T0 + 70 * m, LevelIn(T0 + 70 * m, 3, "confirmed by 2 devices")),
        (T0 + 85 * m, Tick(T0 + 85 * m)),
        (T0 + 86 * m, NoData(T0 + 86 * m, "G2")),
        (T0 + 90 * m, Ack(T0 + 90 * m, "Wang", "evacuation prepared", WID, 3)),
        (T0 + 95 * m, LevelIn(T0 + 95 * m, 4, "forecast failure in 10 h")),
        (T0 + 96 * m, Shelve(T0 + 96 * m, "Zhao", T0 + 120 * m)),
        (T0 + 100 * m, LevelIn(T0 + 100 * m, 3, "slowing")),
        (T0 + 120 * m, Tick(T0 + 120 * m)),
        (T0 + 125 * m, DataBack(T0 + 125 * m, "G2")),
        (T0 + 130 * m, Ack(T0 + 130 * m, "Li", "patrol on site", WID)),
        (T0 + 70 * m + 11 * 3600, Tick(T0 + 70 * m + 11 * 3600)),
        (T0 + 70 * m + 12 * 3600, Tick(T0 + 70 * m + 12 * 3600)),
        (T0 + 70 * m + 13 * 3600, Tick(T0 + 70 * m + 13 * 3600)),
        (T0 + 14 * 3600, ReportSubmitted(T0 + 14 * 3600, "Wang", f"{WID}.report")),
        (T0 + 15 * 3600, LevelIn(T0 + 15 * 3600, 0, "all channels back to normal")),
    ]


def _run(state: SiteAlert, script, policy: AlertPolicy, restart_at: int | None = None):
    actions = []
    for i, (now, ev) in enumerate(script):
        if i == restart_at:
            state = SiteAlert.from_dict(json.loads(json.dumps(state.to_dict())))
        tr = step(state, ev, policy, now)
        actions.extend(a.to_dict() for a in tr.actions)
        state = tr.state
    return state, actions


@pytest.mark.parametrize("restart_at", range(1, 17))
def test_a_restart_anywhere_repeats_and_loses_nothing(restart_at):
    p = AlertPolicy()
    script = _script()
    whole_state, whole = _run(new_state(), script, p)
    state, resumed = _run(new_state(), script, p, restart_at)
    assert resumed == whole
    assert state == whole_state
    kinds = [a.get("kind") or a.get("msg_type") or a["type"] for a in whole]
    assert kinds.count("escalation") == 2 and kinds.count("Cancel") == 1 and kinds.count("report_overdue") == 2


def test_state_survives_json_mid_escalation_without_renotifying():
    p = AlertPolicy()
    s = step(new_state(), LevelIn(T0, 2), p, T0).state
    s = step(s, Tick(T0 + 3600), p, T0 + 3600).state  # province notified
    restored = SiteAlert.from_dict(json.loads(json.dumps(s.to_dict())))
    assert restored == s
    # Nothing is due again until the province's own deadline; then national, once.
    assert step(restored, Tick(T0 + 3600 + 59 * MIN), p, T0 + 3600 + 59 * MIN).actions == ()
    tr = step(restored, Tick(T0 + 2 * 3600), p, T0 + 2 * 3600)
    assert [summary(a) for a in tr.actions] == ["escalation national"]
    assert next_deadline(tr.state) is None


# -- daily zero reports ---------------------------------------------------------------------

# 2023-11-15 00:00 UTC is 1700006400; Asia/Shanghai is UTC+8 all year.
MIDNIGHT_15_UTC = 1_700_006_400.0
H = 3600.0


def test_zero_reports_due_at_local_times():
    now = MIDNIGHT_15_UTC + 1.5 * H  # 09:30 on the 15th in Shanghai
    last = {
        "420527": MIDNIGHT_15_UTC - 3 * H,  # sent before today's 09:00 (01:00 UTC) → due
        "420500": MIDNIGHT_15_UTC - 20 * H,  # sent after yesterday's 10:00 (14th 02:00 UTC) → not due yet today
        "420000": None,  # never → its latest slot, yesterday 12:00 (14th 04:00 UTC)
        "100000": None,  # the nation gets no zero report
    }
    assert zero_report_due(last, now) == [
        ("province", "420000", MIDNIGHT_15_UTC - 20 * H),
        ("county", "420527", MIDNIGHT_15_UTC + 1 * H),
    ]


def test_zero_report_due_once_a_day_even_when_nothing_happened():
    last: dict[str, float | None] = {"420527": MIDNIGHT_15_UTC + 1 * H}  # today's just sent
    assert zero_report_due(last, MIDNIGHT_15_UTC + 20 * H) == []
    assert zero_report_due(last, MIDNIGHT_15_UTC + 25 * H) == [("county", "420527", MIDNIGHT_15_UTC + 25 * H)]
    # after three days without sending, one report, not three
    assert zero_report_due(last, MIDNIGHT_15_UTC + 3 * 24 * H + 2 * H) == [("county", "420527", MIDNIGHT_15_UTC + 3 * 24 * H + H)]


def test_next_zero_report_and_other_time_zones():
    last: dict[str, float | None] = {"420527": MIDNIGHT_15_UTC + 1 * H + 100, "420500": MIDNIGHT_15_UTC - 20 * H, "420000": MIDNIGHT_15_UTC - 19 * H}
    now = MIDNIGHT_15_UTC + 1.5 * H
    assert next_zero_report(last, now) == MIDNIGHT_15_UTC + 2 * H  # the city at 10:00 local
    assert next_zero_report({}, now) is None
    # 09:00 UTC for the county in UTC; a custom time too
    assert zero_report_due({"420527": None}, MIDNIGHT_15_UTC + 9.5 * H, "UTC") == [("county", "420527", MIDNIGHT_15_UTC + 9 * H)]
    assert zero_report_due({"420527": None}, MIDNIGHT_15_UTC + 9.5 * H, "UTC", {"county": time(8, 30)}) == [
        ("county", "420527", MIDNIGHT_15_UTC + 8.5 * H)
    ]


# -- invariants (Hypothesis) ----------------------------------------------------------------

CHAIN = chain_of(ADMIN)


def _timers(s: SiteAlert) -> dict[str, float | None]:
    out: dict[str, float | None] = {"ack": s.ack_deadline, "lower": s.lower_deadline, "shelved": s.shelved_until}
    for r in s.reports:
        out[f"{r.task_id}/due"] = r.due
        out[f"{r.task_id}/remind"] = r.remind_at
        out[f"{r.task_id}/next"] = r.next_escalation
    return out


class AlertMachine(RuleBasedStateMachine):
    policy = AlertPolicy()
    scale = "medium"

    def __init__(self) -> None:
        super().__init__()
        self.state = new_state(self.scale)
        self.now = T0
        self.evidence = 0  # the level of the last LevelIn
        self.ids: set[str] = set()  # every action id so far: distinct actions, distinct ids

    # -- driving ---------------------------------------------------------------------------

    def apply(self, event, now: float) -> Transition:
        before = self.state
        snapshot = json.dumps(before.to_dict(), sort_keys=True)
        tr = step(before, event, self.policy, now)
        assert json.dumps(before.to_dict(), sort_keys=True) == snapshot, "step changed its input"
        # a restart before this step would have done exactly the same
        restored = SiteAlert.from_dict(json.loads(snapshot))
        again = step(restored, event, self.policy, now)
        assert again == tr
        self.check(before, event, tr, now)
        ids = [a.id for a in tr.actions]
        assert len(set(ids)) == len(ids) and not self.ids.intersection(ids)
        self.ids.update(ids)
        self.state = tr.state
        return tr

    def advance(self, dt: int) -> None:
        target = self.now + dt
        while (d := next_deadline(self.state)) is not None and d <= target:
            self.now = max(self.now, d)
            tr = self.apply(Tick(self.now), self.now)
            nd = next_deadline(tr.state)
            assert nd is None or nd > self.now, "a Tick left a timer due"
        self.now = target

    @rule(level=st.integers(0, 4), above=st.integers(0, 4), dt=st.integers(0, 2 * 3600))
    def level_in(self, level, above, dt):
        # ``above``: how far a device stands above the fused level, for want of confirmation.
        self.advance(dt)
        self.apply(LevelIn(self.now, level, f"fused {level}", raw_level=min(4, level + above)), self.now)
        self.evidence = level

    @rule(dt=st.integers(0, 6 * 3600))
    def wait(self, dt):
        self.advance(dt)

    @rule(device=st.sampled_from(["G1", "G2"]), back=st.booleans(), dt=st.integers(0, 3600))
    def no_data(self, device, back, dt):
        self.advance(dt)
        self.apply(DataBack(self.now, device) if back else NoData(self.now, device), self.now)

    @rule(right=st.booleans(), level=st.none() | st.integers(1, 4), dt=st.integers(0, 3600))
    def ack(self, right, level, dt):
        self.advance(dt)
        wid = (self.state.warning_id or "none") if right else "S9-20000101T000000Z"
        self.apply(Ack(self.now, "Wang", "note", wid, level), self.now)

    @rule(dur=st.integers(1, 4 * 3600), dt=st.integers(0, 3600))
    def shelve(self, dur, dt):
        self.advance(dt)
        self.apply(Shelve(self.now, "Zhao", self.now + dur), self.now)

    @rule(dt=st.integers(0, 3600))
    def unshelve(self, dt):
        self.advance(dt)
        self.apply(Unshelve(self.now, "Zhao"), self.now)

    @rule(back=st.booleans(), dt=st.integers(0, 3600))
    def service(self, back, dt):
        self.advance(dt)
        self.apply(ReturnToService(self.now, "Zhao") if back else OutOfService(self.now, "Zhao"), self.now)

    @precondition(lambda self: any(r.submitted is None for r in self.state.reports))
    @rule(dt=st.integers(0, 6 * 3600))
    def submit(self, dt):
        self.advance(dt)
        open_ = [r for r in self.state.reports if r.submitted is None]
        if open_:
            self.apply(ReportSubmitted(self.now, "Wang", open_[0].task_id), self.now)

    # -- what must hold after every step ----------------------------------------------------

    def check(self, before: SiteAlert, event, tr: Transition, now: float) -> None:
        after = tr.state
        at = max(now, before.t)
        # A level drops only on a lower report from fusion, or when the engine's own hold
        # on such a report runs out; never below the level fusion last reported.
        if after.level < before.level:
            if isinstance(event, LevelIn):
                assert event.level == after.level and self.policy.lower_hold_s == 0
            else:
                assert isinstance(event, Tick) and before.lower_to == after.level and before.lower_deadline is not None
        if isinstance(event, LevelIn):
            assert after.level >= event.level
        elif not isinstance(event, Tick):
            assert after.level == before.level  # no data, acks, shelving… never move a level
        # Escalations: never of a warning acknowledged at that level; always the next tier up.
        for a in tr.actions:
            if isinstance(a, Notify) and a.kind == "escalation":
                assert isinstance(event, Tick)
                assert a.warning_id == before.warning_id
                assert before.acked_level < a.level
                assert before.status == UNACK
                nxt = before.top_tier + 1
                assert (a.tier, a.admin) == CHAIN[nxt]
        # Time never runs backwards in the history, nor in the state.
        times = [e.t for e in after.history]
        assert times == sorted(times)
        assert after.t >= before.t
        assert all(e.t <= after.t for e in after.history)
        # Timers a step sets lie after it.
        old = _timers(before)
        for k, v in _timers(after).items():
            if v is not None and old.get(k) != v:
                assert v > at, (k, v, at)

    @invariant()
    def announcement_follows_the_level(self):
        s = self.state
        assert s.level >= self.evidence
        if s.status not in (SHELVED, OUT_OF_SERVICE):
            assert s.announced == s.level
        if s.status in (UNACK, ACKED):
            assert s.announced > 0
        if s.status in (NORMAL, RTN_UNACK):
            assert s.announced == 0
        if s.status == ACKED:
            assert s.acked_level >= s.announced and s.ack_deadline is None
        # Sampling follows the level, except that it is never relaxed while a device stands
        # at orange or above: then it may be faster than the level's, never slower.
        want = self.policy.sampling_for(s.level)
        if s.raw_level >= self.policy.keep_sampling_from_level:
            assert s.sampling_s == want or (s.sampling_s is not None and (want is None or s.sampling_s < want))
        else:
            assert s.sampling_s == want

    @invariant()
    def tiers_are_notified_bottom_up(self):
        tiers = sorted({TIERS.index(n.tier) for n in self.state.notices})
        assert tiers == list(range(len(tiers)))

    @invariant()
    def survives_json(self):
        s = self.state
        assert SiteAlert.from_dict(json.loads(json.dumps(s.to_dict()))) == s


class AlertMachineWithHold(AlertMachine):
    policy = AlertPolicy(lower_hold_s=45 * MIN)
    scale = "large"


_settings = settings(max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TestAlertMachine = AlertMachine.TestCase
TestAlertMachine.settings = _settings
TestAlertMachineWithHold = AlertMachineWithHold.TestCase
TestAlertMachineWithHold.settings = _settings


# -- sampling while a device stands high (issue 14, item 6) ---------------------------------------


def _sampling_after(steps: list[LevelIn], policy: AlertPolicy | None = None) -> list[tuple[float | None, list[str]]]:
    """The commanded interval after each step, and the sampling commands it sent."""
    policy = policy or AlertPolicy()
    state, out = new_state(), []
    for ev in steps:
        tr = step(state, ev, policy, ev.t)
        state = tr.state
        out.append((state.sampling_s, [summary(a) for a in tr.actions if isinstance(a, SetSampling)]))
    return out


def test_sampling_is_never_relaxed_while_a_device_stands_at_orange_or_above():
    # Red (60 s); the site comes down to orange and then yellow while one device still says
    # orange: sampling stays at 60 s. Only once no device is at orange does it follow the level.
    steps = [
        LevelIn(T0, 4, "red", {}, raw_level=4),
        LevelIn(T0 + 600, 3, "back to orange", {}, raw_level=3),
        LevelIn(T0 + 1200, 2, "orange not confirmed", {}, raw_level=3),
        LevelIn(T0 + 1800, 2, "back to yellow", {}, raw_level=2),
        LevelIn(T0 + 2400, 0, "all channels back to normal", {}, raw_level=0),
    ]
    assert _sampling_after(steps) == [
        (60.0, ["sampling 60"]),
        (60.0, []),
        (60.0, []),
        (300.0, ["sampling 300"]),
        (None, ["sampling normal"]),
    ]
    # keep_sampling_from_level = 5: sampling follows the site level alone, as before.
    assert [s for s, _ in _sampling_after(steps, AlertPolicy(keep_sampling_from_level=5))] == [60.0, 120.0, 300.0, 300.0, None]


def test_the_raw_level_comes_from_fusion_and_survives_a_restart():
    ev = event_from_change(LevelChange("S1", T0, 3, 4, "back to orange", {"raw_level": 3}))
    assert isinstance(ev, LevelIn) and ev.raw_level == 3
    state = step(new_state(), LevelIn(T0, 4, "red", {}, raw_level=4), AlertPolicy(), T0).state
    state = step(state, ev, AlertPolicy(), T0 + 60).state
    assert state.raw_level == 3 and state.sampling_s == 60.0
    d = json.loads(json.dumps(state.to_dict()))
    assert SiteAlert.from_dict(d) == state
    # A state saved before the raw level was kept restores it as the level.
    del d["raw_level"]
    assert SiteAlert.from_dict(d).raw_level == 3
    with pytest.raises(ValueError, match="raw_level"):
        LevelIn(T0, 2, "x", {}, raw_level=5)


def test_a_rise_tells_the_deadline_that_acts_not_a_later_one():
    """Yellow at 10:00 (ack within 60 min: escalation at 11:00); orange at 10:50 would give
    11:05 (15 min), but a rise never postpones an escalation already due sooner — and the
    warning text must say the same 11:00, not a time after the escalation."""
    policy = AlertPolicy()
    tr = step(new_state(), LevelIn(T0, 2, "velocity"), policy, T0)
    assert tr.state.ack_deadline == T0 + 60 * MIN
    tr = step(tr.state, LevelIn(T0 + 50 * MIN, 3, "velocity"), policy, T0 + 50 * MIN)
    assert tr.state.ack_deadline == T0 + 60 * MIN
    notes = [a for a in tr.actions if isinstance(a, Notify) and a.kind == "warning"]
    assert notes and all(n.deadline == T0 + 60 * MIN for n in notes)
