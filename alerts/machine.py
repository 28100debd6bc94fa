"""The alert engine: one site's warning, from a fused level to the people who must act.
This module owns the per-site alert state machine of DESIGN §5 and nothing else. It is a pure
function, ``step(state, event, policy, now) -> Transition``: no I/O, no globals, no clock. The
runtime (daemon or replay) feeds it events, carries out the actions it returns (notifications,
CAP messages, sampling commands), persists the new state, and calls it again with ``Tick(now)``
when ``next_deadline(state)`` has passed.

Level and status are kept apart, as in ISA-18.2 (and alerta's isa_18_2 model):

- ``level`` is what the evidence says (0 normal … 4 red). It rises immediately and comes down
  only when fusion reports a lower level; no data never lowers it. Fusion already holds a
  level for ``hold_s`` after its evidence has gone (detector hold, hysteresis, confirmation),
  so the engine adds no second hold by default (``lower_hold_s = 0``). A site that wants one
  (for instance against a flapping forecast confirmation) sets it: a lower level then takes
  effect only if no report at the current level arrives for that long.
- ``status`` is what people have done about it: normal, unacknowledged, acknowledged,
  returned-to-normal-unacknowledged, shelved (maintenance, with an expiry), out of service.
  While shelved or out of service the level is still followed but nothing is announced and
  nothing escalates; on return the announcement catches up with the level.

Sampling follows the level (``AlertPolicy.sampling_s``), but is never relaxed while a device's
own level — fusion's ``raw_level``, before confirmation — is at or above
``keep_sampling_from_level`` (orange): the site may come down a level on another channel's word,
or stand at yellow for want of a second device, while one device still says orange, and the
readings that decide whether the slope is failing must not come slower then.

A warning is announced to the first tiers of its level (county → city → province → national
from the site's GB/T 2260 county code); an unacknowledged warning escalates one tier when its
ack deadline passes, carrying its history; an acknowledgement stops escalation at that level,
and a later rise re-alarms. Orange and red open a quick-report (速报) task with a deadline by
the site's scale class, a reminder and tier-by-tier escalation when it passes unreported.

Every transition is named by a rule (``Transition.rule``, all of them in ``Transition.rules``)
and recorded in the state's history. The daily zero reports are a separate pure function,
``zero_report_due``.

"""

from __future__ import annotations

import math
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any


from geowarn.core.levels import LEVELS
from geowarn.config.roster import TIERS, chain_of
from geowarn.alerts.model import (
    ACKED,
    Ack,
    AckInfo,
    Action,
    Cap,
    CapType,
    DataBack,
    Entry,
    Event,
    LevelIn,
    NOOP,
    NORMAL,
    NoData,
    Notice,
    Notify,
    NotifyKind,
    OUT_OF_SERVICE,
    OutOfService,
    RTN_UNACK,
    ReportSubmitted,
    ReportTask,
    ReturnToService,
    SHELVED,
    SetSampling,
    Shelve,
    SiteAlert,
    Status,
    Tick,
    Transition,
    UNACK,
    Unshelve,
    _ID_NS,
    _SUPPRESSED,
    warning_id_for,
)
from geowarn.alerts.policy import (
    AlertPolicy,
)

# -- the machine ----------------------------------------------------------------------------


def _iso(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _name(level: int) -> str:
    info = LEVELS[level]
    return f"{info.colour} (level {level}, {info.en})"



class _Run:
    """One step's scratch: a working copy of the state, and the actions and rules collected."""

    def __init__(self, state: SiteAlert, policy: AlertPolicy, at: float) -> None:
        self.s = state
        self.p = policy
        self.at = at
        self.chain = chain_of(state.admin)
        self.actions: list[Action] = []
        self.rules: list[str] = []
        self.history: list[Entry] = list(state.history)
        self.first_entry = len(self.history)  # entries from here on are this step's

    def set(self, **changes: Any) -> None:
        self.s = replace(self.s, **changes)

    def rule(self, name: str, detail: str = "") -> None:
        self.rules.append(name)
        self.history.append(Entry(self.at, name, self.s.level, self.s.status, detail))

    def done(self) -> Transition:
        history = tuple(self.history[-self.p.history_max :])
        state = replace(self.s, t=self.at, history=history)
        rules = tuple(self.rules) or (NOOP,)
        return Transition(state, tuple(self.actions), rules[0], rules)

    # -- helpers -----------------------------------------------------------------------------

    def ack_timer(self, level: int, top: int) -> float | None:
        """When an unacknowledged warning at ``level`` whose highest tier is ``top`` escalates."""
        d = self.p.ack_s(level)
        if d is None or top >= len(TIERS) - 1:
            return None
        return self.at + d

    def shown_deadline(self, level: int) -> float | None:
        d = self.p.ack_s(level)
        return None if d is None else self.at + d

    def notify(
        self,
        tier_index: int,
        kind: NotifyKind,
        text: str,
        *,
        level: int | None = None,
        previous: int = 0,
        deadline: float | None = None,
        task_id: str | None = None,
        device: str | None = None,
        warning_id: str | None = None,
        about_warning: bool = True,
        with_history: bool = False,
        record: bool = False,
    ) -> None:
        s = self.s
        tier, admin = self.chain[tier_index]
        lvl = s.announced if level is None else level
        wid = (s.warning_id if warning_id is None else warning_id) if about_warning else None
        # Same content at the same moment, same id (a re-run after a crash is deduplicated by
        # the outbox); the step's position and the history length keep distinct notices apart.
        key = f"{s.key}|{wid}|{kind}|{tier}|{lvl}|{previous}|{self.at!r}|{task_id}|{device}|{len(self.actions)}|{len(self.history)}"
        text = ("[EXERCISE] " if s.exercise else "") + text
        history = tuple(self.history) if with_history else ()
        self.actions.append(
            Notify(tier, admin, kind, lvl, wid, text, s.site, self.at, s.exercise, previous, deadline, task_id, device, history, str(uuid.uuid5(_ID_NS, key)))
        )
        if record:
            self.set(notices=s.notices + (Notice(tier, admin, lvl, self.at, deadline, kind),))

    def cap(self, msg_type: CapType, level: int, previous: int) -> None:
        s = self.s
        if s.warning_id is None:
            raise RuntimeError("engine bug: a CAP message without a warning")
        identifier = f"{s.warning_id}.{len(s.cap_refs) + 1}"
        self.actions.append(
            Cap(msg_type, s.cap_refs, identifier, s.site, s.admin, s.warning_id, level, previous, self.at, s.reason, s.evidence, s.exercise)
        )
        self.set(cap_refs=s.cap_refs + ((identifier, self.at),))

    def sampling(self) -> None:
        want = self.p.sampling_for(self.s.level)
        if want == self.s.sampling_s:
            return
        now = self.s.sampling_s
        if now is not None and (want is None or want > now) and self.s.raw_level >= self.p.keep_sampling_from_level:
            # A device still stands at orange or above (the site came down a level on another
            # channel's word, or that device alone does not confirm its level): relaxing now
            # would slow the very readings that show whether the slope is failing.
            return
        if want is None:
            reason = f"level {self.s.level}: normal sampling restored"
        else:
            reason = f"level {self.s.level} {LEVELS[self.s.level].colour}: accelerated sampling every {want:g} s"
        key = f"{self.s.key}|{self.s.warning_id}|sampling|{want}|{self.at!r}|{len(self.history)}"
        self.actions.append(SetSampling(self.s.site, want, reason, self.at, self.s.exercise, str(uuid.uuid5(_ID_NS, key))))
        self.set(sampling_s=want)

    # -- announcement: make what people were told match the level ------------------------------

    def level_changed(self, t_event: float, after_hold: bool = False) -> None:
        if self.s.status in _SUPPRESSED:
            self.rule("suppressed_level", f"level {self.s.level} not announced while {self.s.status}")
            return
        self.announce(t_event, after_hold)

    def announce(self, t_event: float, after_hold: bool = False) -> None:
        s = self.s
        level, announced = s.level, s.announced
        if level == announced:
            return
        if announced == 0:
            self._raise(t_event)
        elif level == 0:
            self._lift(after_hold)
        elif level > announced:
            self._upgrade()
        else:
            self._downgrade(after_hold)

    def _raise(self, t_event: float) -> None:
        s = self.s
        level = s.level
        # Ids are stable (the same readings give the same id) and unique: a second warning
        # raised within the same second is numbered.
        n = s.raised_n + 1 if s.raised is not None and math.floor(s.raised) == math.floor(t_event) else 1
        wid = warning_id_for(s.site, t_event, s.exercise, n)
        while wid == s.warning_id or any(r.warning_id == wid for r in s.reports):
            n += 1
            wid = warning_id_for(s.site, t_event, s.exercise, n)
        first = self.p.first_tiers[level]
        # The history of a warning starts at the step that raised it.
        self.history = self.history[self.first_entry :]
        self.first_entry = 0
        self.set(
            warning_id=wid,
            raised=t_event,
            raised_n=n,
            announced=level,
            acked_level=0,
            acks=(),
            notices=(),
            cap_refs=(),
            status=UNACK,
            ack_deadline=self.ack_timer(level, first - 1),
            reports=tuple(r for r in s.reports if r.submitted is None),
        )
        self.rule("raise", f"{_name(level)} to {', '.join(self.chain[i][0] for i in range(first))}: {s.reason}")
        shown = self.shown_deadline(level)
        text = f"{s.site} {_name(level)} warning {wid}: {s.reason}." + (f" Acknowledge by {_iso(shown)}." if shown is not None else "")
        for i in range(first):
            self.notify(i, "warning", text, deadline=shown, record=True)
        self.cap("Alert", level, 0)
        self.open_report()

    def _upgrade(self) -> None:
        s = self.s
        level, previous = s.level, s.announced
        top = s.top_tier
        reach = max(self.p.first_tiers[level], top + 1)
        realarm = s.status == ACKED and s.acked_level < level
        if realarm:
            status: Status = UNACK
            deadline = self.ack_timer(level, reach - 1)
            kind: NotifyKind = "realarm"
            rule = "upgrade_realarm"
        elif s.status == UNACK:
            status = UNACK
            new = self.ack_timer(level, reach - 1)
            # A rise never postpones an escalation already due sooner.
            deadline = new if (new is None or s.ack_deadline is None) else min(new, s.ack_deadline)
            kind, rule = "warning", "upgrade"
        else:  # acknowledged at this level or above already (it came down and went back up)
            status, deadline, kind, rule = s.status, None, "warning", "upgrade"
        self.set(announced=level, status=status, ack_deadline=deadline)
        self.rule(rule, f"{_name(previous)} → {_name(level)}: {s.reason}")
        # The deadline people are told is the one that acts: a rise never postpones an
        # escalation already due sooner, so neither may the text (a review found "by 11:20"
        # sent while the escalation came at 11:00).
        shown = (deadline if deadline is not None else self.shown_deadline(level)) if status == UNACK else None
        verb = "rose again after acknowledgement" if realarm else "raised"
        text = f"{s.site} warning {s.warning_id} {verb} to {_name(level)} from {LEVELS[previous].colour}: {s.reason}." + (
            f" Acknowledge by {_iso(shown)}." if shown is not None else ""
        )
        for i in range(reach):
            self.notify(i, kind, text, previous=previous, deadline=shown, with_history=realarm, record=True)
        self.cap("Update", level, previous)
        self.open_report()

    def _downgrade(self, after_hold: bool) -> None:
        s = self.s
        level, previous = s.level, s.announced
        top = s.top_tier
        if s.acked_level >= level:
            status: Status = ACKED
            deadline = None
        else:
            status = UNACK
            d = self.ack_timer(level, top)
            deadline = s.ack_deadline if (d is not None and s.ack_deadline is not None) else d
        self.set(announced=level, status=status, ack_deadline=deadline)
        self.rule("downgrade_after_hold" if after_hold else "downgrade", f"{_name(previous)} → {_name(level)}: {s.reason}")
        text = f"{s.site} warning {s.warning_id} lowered to {_name(level)} from {LEVELS[previous].colour}: {s.reason}."
        for i in range(top + 1):
            self.notify(i, "downgrade", text, previous=previous)
        self.cap("Update", level, previous)

    def _lift(self, after_hold: bool) -> None:
        s = self.s
        previous = s.announced
        unacked = s.status == UNACK
        self.set(announced=0, status=RTN_UNACK if unacked else NORMAL, ack_deadline=None)
        self.rule("lift_after_hold" if after_hold else "lift", f"{_name(previous)} lifted: {s.reason}")
        if unacked:
            self.rule("rtn_unack", f"warning {s.warning_id} lifted before anyone acknowledged it")
        text = f"{s.site} warning {s.warning_id} lifted (was {LEVELS[previous].colour}): {s.reason}."
        for i in range(s.top_tier + 1):
            self.notify(i, "cancel", text, level=0, previous=previous)
        self.cap("Cancel", 0, previous)

    def open_report(self) -> None:
        s = self.s
        if s.announced < self.p.report_from_level or s.warning_id is None:
            return
        if any(r.warning_id == s.warning_id for r in s.reports):
            return
        due = self.at + self.p.report_due_s[s.scale]
        remind = due - self.p.report_remind_before_s if self.p.report_remind_before_s > 0 else None
        task = ReportTask(f"{s.warning_id}.report", s.warning_id, s.announced, self.at, due, remind if remind is not None and remind > self.at else None)
        self.set(reports=s.reports + (task,))
        self.rule("report_opened", f"quick report {task.task_id} due {_iso(due)} ({s.scale})")
        self.notify(0, "report_due", f"{s.site}: quick report {task.task_id} on warning {s.warning_id} due by {_iso(due)}.", deadline=due, task_id=task.task_id)

    def resume(self, rule: str, detail: str) -> None:
        """Back from shelved / out of service: status from the acks, then catch up on the level."""
        s = self.s
        if s.announced > 0:
            status: Status = ACKED if s.acked_level >= s.announced else UNACK
            deadline = self.ack_timer(s.announced, s.top_tier) if status == UNACK else None
        else:
            status, deadline = NORMAL, None
        self.set(status=status, ack_deadline=deadline, shelved_until=None, suppressed_by=None)
        self.rule(rule, detail)
        if s.announced > 0 and s.level == s.announced:  # otherwise announce() below tells them
            kind: NotifyKind = "unshelved" if rule != "return_to_service" else "return_to_service"
            text = f"{s.site} warning {s.warning_id} ({LEVELS[self.s.level].colour} now) is {status} again: {detail}."
            for i in range(s.top_tier + 1):
                self.notify(i, kind, text, deadline=deadline)
        self.announce(self.at)

    # -- timers -----------------------------------------------------------------------------

    def escalate(self) -> None:
        s = self.s
        top = s.top_tier
        nxt = top + 1
        level = s.announced
        if nxt >= len(TIERS):  # nobody above (the roster's first tiers changed since)
            self.set(ack_deadline=None)
            return
        shown = self.shown_deadline(level)
        self.set(ack_deadline=self.ack_timer(level, nxt))
        tier, admin = self.chain[nxt]
        self.rule("escalate_unacked", f"{TIERS[top]} did not acknowledge {_name(level)} by {_iso(s.ack_deadline)}; {tier} {admin} notified")
        text = (
            f"{s.site} {_name(level)} warning {s.warning_id} raised {_iso(s.raised)} has not been acknowledged "
            f"by {TIERS[top]}; escalated to {tier}: {s.reason}." + (f" Acknowledge by {_iso(shown)}." if shown is not None else "")
        )
        self.notify(nxt, "escalation", text, deadline=shown, with_history=True, record=True)

    def reports_due(self) -> None:
        tasks = list(self.s.reports)
        for i, r in enumerate(tasks):
            if r.submitted is not None:
                continue
            if r.escalated == 0 and r.due <= self.at:
                nxt = 1
            elif r.next_escalation is not None and r.next_escalation <= self.at:
                nxt = r.escalated + 1
            elif not r.reminded and r.remind_at is not None and r.remind_at <= self.at:
                tasks[i] = replace(r, reminded=True)
                self.set(reports=tuple(tasks))
                self.rule("report_reminder", f"quick report {r.task_id} due {_iso(r.due)}")
                self.notify(0, "report_due", f"Reminder: {self.s.site} quick report {r.task_id} due by {_iso(r.due)}.", level=r.level, warning_id=r.warning_id, deadline=r.due, task_id=r.task_id)
                continue
            else:
                continue
            later = self.at + self.p.report_escalate_s if nxt < len(TIERS) - 1 else None
            tasks[i] = replace(r, reminded=True, escalated=nxt, next_escalation=later)
            self.set(reports=tuple(tasks))
            tier, admin = self.chain[nxt]
            self.rule("report_overdue", f"quick report {r.task_id} due {_iso(r.due)} not submitted; {tier} {admin} notified")
            self.notify(
                nxt,
                "report_overdue",
                f"{self.s.site} quick report {r.task_id} was due {_iso(r.due)} and has not been submitted by {TIERS[0]}.",
                level=r.level,
                warning_id=r.warning_id,
                deadline=r.due,
                task_id=r.task_id,
            )


def step(state: SiteAlert, event: Event, policy: AlertPolicy, now: float) -> Transition:
    """The next state and the actions for one event at ``now`` (the runtime's clock; event
    time in a replay). A clock behind the state's time is taken as standing still, so time in
    a state never runs backwards. ``state`` is not modified."""
    at = max(float(now), state.t)
    run = _Run(state, policy, at)
    s = state
    if isinstance(event, LevelIn):
        _level_in(run, event)
    elif isinstance(event, Tick):
        _tick(run)
    elif isinstance(event, Ack):
        _ack(run, event)
    elif isinstance(event, NoData):
        if event.device not in s.silent:
            run.set(silent=s.silent + (event.device,))
            run.rule("nodata_hold", f"{event.device} silent; level {s.level} held")
            run.notify(0, "nodata", f"{s.site}: no data from {event.device}; level held at {LEVELS[s.level].colour}. {event.reason}".rstrip(), level=s.level, device=event.device, about_warning=s.announced > 0)
    elif isinstance(event, DataBack):
        if event.device in s.silent:
            run.set(silent=tuple(d for d in s.silent if d != event.device))
            run.rule("data_back", f"{event.device} reporting again")
            run.notify(0, "data_back", f"{s.site}: {event.device} is reporting again.", level=s.level, device=event.device, about_warning=s.announced > 0)
    elif isinstance(event, Shelve):
        _shelve(run, event)
    elif isinstance(event, Unshelve):
        if s.status != SHELVED:
            run.rule("ignored", f"unshelve by {event.by}: not shelved ({s.status})")
        else:
            run.resume("unshelve", f"unshelved by {event.by}")
    elif isinstance(event, OutOfService):
        if s.status == OUT_OF_SERVICE:
            run.rule("ignored", f"out of service by {event.by}: already out of service")
        else:
            run.set(status=OUT_OF_SERVICE, ack_deadline=None, shelved_until=None, suppressed_by=event.by)
            run.rule("out_of_service", f"by {event.by}: {event.note}")
            for i in range(s.top_tier + 1 if s.announced > 0 else 0):
                run.notify(i, "out_of_service", f"{s.site} taken out of service by {event.by}: warning {s.warning_id} no longer escalates. {event.note}".rstrip())
    elif isinstance(event, ReturnToService):
        if s.status != OUT_OF_SERVICE:
            run.rule("ignored", f"return to service by {event.by}: not out of service ({s.status})")
        else:
            run.resume("return_to_service", f"returned to service by {event.by}")
    elif isinstance(event, ReportSubmitted):
        task = s.report(event.task_id)
        if task is None or task.submitted is not None:
            run.rule("ignored", f"report {event.task_id} by {event.by}: no open quick report with that id")
        else:
            run.set(reports=tuple(replace(r, submitted=event.t, submitted_by=event.by) if r is task else r for r in s.reports))
            run.rule("report_submitted", f"{event.task_id} by {event.by}")
    else:
        raise TypeError(f"step: not an engine event: {event!r}")
    run.sampling()
    return run.done()


def _level_in(run: _Run, ev: LevelIn) -> None:
    s = run.s
    run.set(reason=ev.reason, evidence=ev.evidence, raw_level=ev.level if ev.raw_level is None else max(ev.level, ev.raw_level))
    if ev.level > s.level:
        run.set(level=ev.level, since=ev.t, lower_to=None, lower_deadline=None)
        run.level_changed(ev.t)
    elif ev.level == s.level:
        if s.lower_deadline is not None:
            run.set(lower_to=None, lower_deadline=None)
            run.rule("lower_cancelled", f"evidence for level {s.level} again: {ev.reason}")
    elif run.p.lower_hold_s == 0:
        run.set(level=ev.level, since=ev.t)
        run.level_changed(ev.t)
    else:
        deadline = s.lower_deadline if s.lower_deadline is not None else run.at + run.p.lower_hold_s
        run.set(lower_to=ev.level, lower_deadline=deadline)
        run.rule("lower_held", f"level {ev.level} reported; {s.level} held until {_iso(deadline)}")


def _tick(run: _Run) -> None:
    # Order matters when several timers are due at once: returning from shelving first (it
    # decides whether anything may be announced), then a pending lower level (a lift makes an
    # escalation pointless), then the escalation, then the reports.
    s = run.s
    if s.status == SHELVED and s.shelved_until is not None and s.shelved_until <= run.at:
        run.resume("shelve_expired", f"shelving by {s.suppressed_by} expired at {_iso(s.shelved_until)}")
    s = run.s
    if s.lower_deadline is not None and s.lower_to is not None and s.lower_deadline <= run.at:
        run.set(level=s.lower_to, since=run.at, lower_to=None, lower_deadline=None)
        run.level_changed(run.at, after_hold=True)
    s = run.s
    if s.status == UNACK and s.ack_deadline is not None and s.ack_deadline <= run.at:
        run.escalate()
    run.reports_due()


def _ack(run: _Run, ev: Ack) -> None:
    s = run.s
    if s.warning_id is None or ev.warning_id != s.warning_id:
        run.rule("ignored", f"ack by {ev.by} for {ev.warning_id}: not this site's current warning ({s.warning_id})")
        return
    if s.status == RTN_UNACK:
        last = max((n.level for n in s.notices), default=0)
        run.set(status=NORMAL, acks=s.acks + (AckInfo(ev.by, ev.note, ev.t, last if ev.level is None else ev.level),))
        run.rule("ack_rtn", f"by {ev.by}: {ev.note}")
        return
    if s.announced == 0:
        run.rule("ignored", f"ack by {ev.by}: warning {s.warning_id} already lifted")
        return
    level = s.announced if ev.level is None else ev.level
    run.set(acks=s.acks + (AckInfo(ev.by, ev.note, ev.t, level),))
    if level < s.announced:
        run.rule("ack_stale", f"by {ev.by} at level {level}, but the warning is at {s.announced} now; escalation goes on")
        return
    run.set(acked_level=max(s.acked_level, s.announced))
    if s.status == UNACK:
        run.set(status=ACKED, ack_deadline=None)
        run.rule("ack", f"by {ev.by} at level {s.announced}: {ev.note}")
    elif s.status == ACKED:
        run.rule("ack_again", f"by {ev.by}: {ev.note}")
    else:  # shelved / out of service: remembered for when it returns
        run.rule("ack", f"by {ev.by} at level {s.announced} while {s.status}: {ev.note}")


def _shelve(run: _Run, ev: Shelve) -> None:
    s = run.s
    if s.status == OUT_OF_SERVICE:
        run.rule("ignored", f"shelve by {ev.by}: out of service")
        return
    if ev.until <= run.at:
        run.rule("ignored", f"shelve by {ev.by}: until {_iso(ev.until)} has already passed")
        return
    was = s.status
    run.set(status=SHELVED, shelved_until=ev.until, suppressed_by=ev.by, ack_deadline=None)
    run.rule("shelve", f"by {ev.by} until {_iso(ev.until)}: {ev.note}")
    if s.announced > 0 and was != SHELVED:
        text = f"{s.site} shelved by {ev.by} until {_iso(ev.until)}: warning {s.warning_id} no longer escalates. {ev.note}".rstrip()
        for i in range(s.top_tier + 1):
            run.notify(i, "shelved", text)


def next_deadline(state: SiteAlert) -> float | None:
    """When the runtime must call ``step(state, Tick(t), …)`` next (None: no timer)."""
    times: list[float] = []
    if state.status == UNACK and state.ack_deadline is not None:
        times.append(state.ack_deadline)
    if state.lower_deadline is not None:
        times.append(state.lower_deadline)
    if state.status == SHELVED and state.shelved_until is not None:
        times.append(state.shelved_until)
    for r in state.reports:
        if r.submitted is not None:
            continue
        if r.escalated == 0:
            times.append(r.due)
        elif r.next_escalation is not None:
            times.append(r.next_escalation)
        if not r.reminded and r.remind_at is not None:
            times.append(r.remind_at)
    return min(times, default=None)
