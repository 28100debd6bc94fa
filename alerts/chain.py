"""The response chain: fusion's level changes through the alert engine to actions.

``ResponseChain`` holds one engine state (``SiteAlert``) per site and per exercise flag (a drill
never touches a real warning), feeds it fusion's ``LevelChange``s, people's acks and report
submissions and timer ticks, and produces the daily zero reports of every watched county,
city and province. What the actions do is not the chain's: it hands every transition to a
``ChainSink``. The daemon's sink is ``alerts.live.OutboxSink`` (outbox, notifiers, MQTT, state
persisted with the messages); the replay's is ``ReplayFiles`` below (files in ``out_dir``):

- ``notifications.jsonl``: one line per ``Notify``, with the recipients from the duty roster
  (the contacts of the unit for that tier's admin code; ``[]`` when the roster has no unit);
- ``cap/NNNN-<identifier>.xml``: one CAP 1.2 message per ``Cap``, numbered in order, each
  validated against the OASIS schema before it is written (an invalid one raises ``CapError``);
- ``commands.jsonl``: one line per ``SetSampling``.

The zero reports' figures come from ``zero_stats_of`` over any ``ReadingCounts`` (the journal
live, the feed in a replay), so both count the same way.

Nothing here acknowledges on its own. Time is the caller's (event time in a replay).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from geowarn.alerts.cap import DEFAULT_SENDER, CapError, CapSchema, CnProfile, Reference, build_cap, cap_identifier, cap_profile_for, cap_reference
from geowarn.alerts.zero_reports import ZERO_REPORT_TIMES, next_zero_report, zero_report_due
from geowarn.alerts.model import (
    Ack,
    Action,
    Cap,
    Event,
    Notify,
    ReportSubmitted,
    SetSampling,
    SiteAlert,
    Tick,
    Transition,
    event_from_change,
)
from geowarn.alerts.policy import AlertPolicy
from geowarn.alerts.machine import next_deadline, step
from geowarn.core.levels import LEVELS
from geowarn.core.timefmt import rfc3339
from geowarn.alerts.reports import quick_report_draft
from geowarn.config.registry import Registry
from geowarn.config.roster import Roster, Tier, chain_of
from geowarn.core.events import LevelChange


def cap_event(action: Cap) -> dict[str, Any]:
    """The alert-event dict ``build_cap`` expects, for the engine's ``Cap`` action.

    The engine's identifier (``<warning id>.<n>``) stands in for the event id, so the CAP
    identifier is ``geowarn-<warning id>.<n>`` (``geowarn-exercise-…`` for drills), stable
    across replays; msgType maps back to the event kind build_cap derives it from.
    """
    if action.msg_type == "Alert":
        kind = "raise"
    elif action.msg_type == "Cancel":
        kind = "lift"
    else:
        kind = "upgrade" if action.level > action.previous else "downgrade"
    return {
        "id": action.identifier,
        "t": rfc3339(action.t),
        "site": action.site,
        "level": action.level,
        "previous_level": action.previous,
        "kind": kind,
        "reason": action.reason,
        "forecast": action.evidence.get("forecast"),
        "exercise": action.exercise,
        "evidence": dict(action.evidence),
        "warning_id": action.warning_id,
    }


def cap_references(action: Cap, sender: str = DEFAULT_SENDER, profile: CnProfile | None = None) -> list[Reference]:
    """The engine's (identifier, sent) references as CAP (sender, identifier, sent) triples."""
    return [
        cap_reference({"id": ident, "t": rfc3339(sent), "exercise": action.exercise}, sender=sender, profile=profile)
        for ident, sent in action.references
    ]


#: Zero-report statistics of one admin unit over a window: (admin, since, until) -> figures.
ZeroStats = Callable[[str, float, float], Mapping[str, Any]]


class ReadingCounts(Protocol):
    """Where the readings are counted for a zero report: the journal live, the feed in a replay."""

    def readings_by_device(self, sites: Collection[str], since: float, until: float) -> Mapping[tuple[str, str], int]:
        """Real (not drill) readings with event time in [since, until), by (site, device)."""
        ...


def zero_stats_of(registry: Registry, counts: ReadingCounts) -> ZeroStats:
    """The one way a zero report's figures are worked out, live and in a replay: readings
    received and devices online (at least one reading) over the window, for the registry's
    devices of the sites under ``admin`` (a device no longer in the registry is not counted)."""

    def stats(admin: str, since: float, until: float) -> dict[str, int]:
        sites = [code for code, site in registry.sites.items() if any(a == admin for _, a in chain_of(site.admin))]
        devices = [(code, d.device) for code in sites for d in registry.sites[code].devices]
        by_device = counts.readings_by_device(sites, since, until) if sites else {}
        n = [by_device.get(key, 0) for key in devices]
        return {"readings": sum(n), "devices": len(devices), "devices_online": sum(1 for c in n if c > 0)}

    return stats


class ChainSink(Protocol):
    """What carries out a transition's actions: the runtime's part of the chain."""

    def carry_out(
        self,
        chain: "ResponseChain",
        key: tuple[str, bool] | None,
        state: SiteAlert | None,
        actions: tuple[Action, ...],
        extras: Mapping[str, Mapping[str, Any]],
    ) -> None:
        """Carry out ``actions`` (and persist ``key``'s new ``state``, where the runtime
        persists; ``key`` is None for a zero report). ``extras`` adds fields to the
        notification with that id (a zero report's figures, a quick report's draft). The
        chain keeps the new state only once this returns: a failure leaves memory where the
        disk is."""
        ...


class ResponseChain:
    """One alert state per (site, exercise), the daily zero reports, acks and report
    submissions; what the engine's actions do is the ``sink``'s.

    Time is the caller's: the replay's event time or the daemon's clock. ``zero_stats`` gives
    the figures of a zero report (readings received, devices online); the chain adds the
    warnings it raised itself. ``zero_reports=False`` turns the daily reports off; ``drill``
    marks them as exercises (a drill replay).
    """

    def __init__(
        self,
        registry: Registry,
        roster: Roster,
        sink: ChainSink,
        policy: AlertPolicy | None = None,
        *,
        schema: CapSchema | None = None,
        sender: str = DEFAULT_SENDER,
        tz: str = "Asia/Shanghai",
        zero_reports: bool = True,
        zero_stats: ZeroStats | None = None,
        drill: bool = False,
    ) -> None:
        self.registry = registry
        self.sink = sink
        self.drill = drill  # a drill run: its zero reports are exercises too
        self.roster = roster
        self.policy = policy if policy is not None else AlertPolicy()
        self.schema = schema if schema is not None else CapSchema.load()
        self.sender = sender
        self.tz = tz
        self.zero_reports = zero_reports
        self.zero_stats = zero_stats
        self.states: dict[tuple[str, bool], SiteAlert] = {}
        #: China-profile CAP identifiers allocated (engine identifier -> GB/T 35965.1 one) and
        #: taken (``_cn_identifier``).
        self._cn_ids: dict[str, str] = {}
        self._cn_used: set[str] = set()
        #: When each watched admin unit (counties with sites, their cities and provinces) last
        #: had its zero report; empty until the chain first sees a time.
        self.zero_last: dict[str, float | None] = {}
        #: (t, site, admin, level, warning id) of the real warnings raised or raised higher.
        self.raised: list[tuple[float, str, str, int, str]] = []
        self.now: float | None = None
        self._watching = False
        #: (zero_last as it was, the now asked at, the answer): see ``_next_zero_report``.
        self._zero_next: tuple[dict[str, float | None], float, float] | None = None

    # -- time -----------------------------------------------------------------------------

    def _advance(self, t: float) -> None:
        if not self._watching and self.zero_reports:
            # Every unit with sites is under watch; one added since the last run (a new county
            # in the registry) from now on: its next slot is its first report.
            for site in self.registry.sites.values():
                for tier, admin in chain_of(site.admin):
                    if tier in ZERO_REPORT_TIMES:
                        self.zero_last.setdefault(admin, t)
            self._watching = True
        self.now = t if self.now is None else max(self.now, t)

    # -- inputs ---------------------------------------------------------------------------

    def state(self, site: str, exercise: bool, t: float = 0.0) -> SiteAlert:
        key = (site, exercise)
        s = self.states.get(key)
        if s is None:
            card = self.registry.sites[site]
            s = SiteAlert.new(site, card.admin, card.scale, exercise, t)
            self.states[key] = s
        return s

    def feed(self, change: LevelChange) -> Transition:
        """Apply one fusion change at its own time (any timer due before it first)."""
        self._advance(change.t)
        self.run_until(change.t)
        key = (change.site, change.exercise)
        s = self.state(change.site, change.exercise, change.t)
        return self._apply(key, step(s, event_from_change(change), self.policy, change.t))

    def event(self, site: str, exercise: bool, ev: Event, now: float) -> Transition:
        """Apply a person's event (Ack, ReportSubmitted, Shelve, …) to one site's state."""
        self._advance(now)
        key = (site, exercise)
        return self._apply(key, step(self.state(site, exercise, now), ev, self.policy, now))

    def find_warning(self, warning_id: str) -> tuple[str, bool] | None:
        """The (site, exercise) whose current warning is ``warning_id``."""
        for key, s in self.states.items():
            if s.warning_id == warning_id:
                return key
        return None

    def find_task(self, task_id: str) -> tuple[str, bool] | None:
        for key, s in self.states.items():
            if s.report(task_id) is not None:
                return key
        return None

    def ack(self, warning_id: str, by: str, note: str, now: float, level: int | None = None) -> Transition:
        """Acknowledge a warning; ``KeyError`` when no site has it as its current warning."""
        key = self.find_warning(warning_id)
        if key is None:
            raise KeyError(f"no current warning {warning_id!r}")
        return self.event(key[0], key[1], Ack(now, by, note, warning_id, level), now)

    def submit_report(self, task_id: str, by: str, now: float) -> Transition:
        key = self.find_task(task_id)
        if key is None:
            raise KeyError(f"no quick-report task {task_id!r}")
        return self.event(key[0], key[1], ReportSubmitted(now, by, task_id), now)

    def tick(self, now: float) -> list[Transition]:
        """Fire every timer due at ``now``, in site order, then the zero reports due."""
        self._advance(now)
        out = []
        for key in sorted(self.states):
            d = next_deadline(self.states[key])
            if d is not None and d <= now:
                out.append(self._apply(key, step(self.states[key], Tick(now), self.policy, now)))
        if self.zero_last:
            for due in zero_report_due(self.zero_last, now, self.tz):
                self._zero_report(due.tier, due.admin, due.due)
        return out

    def next_deadline(self) -> float | None:
        times = [d for d in (next_deadline(s) for s in self.states.values()) if d is not None]
        if self.zero_last and self.now is not None:
            z = self._next_zero_report(self.now)
            if z is not None:
                times.append(z)
        return min(times, default=None)

    def _next_zero_report(self, now: float) -> float | None:
        """``next_zero_report`` remembered: the judge asks before every reading, and each ask
        costs local-time arithmetic per watched unit (thousands on a national roster). The
        answer holds while no unit's report is sent and ``now`` stays before it."""
        cached = self._zero_next
        if cached is not None and cached[1] <= now < cached[2] and cached[0] == self.zero_last:
            return cached[2]
        z = next_zero_report(self.zero_last, now, self.tz)
        self._zero_next = (dict(self.zero_last), now, z) if z is not None and z > now else None
        return z

    def run_until(self, t: float) -> None:
        """Tick every timer due up to ``t``, in time order, each at its own time."""
        d = self.next_deadline()
        while d is not None and d <= t:
            self.tick(d)
            nxt = self.next_deadline()
            if nxt is not None and nxt <= d:  # the engine must move its timers on; never spin
                raise RuntimeError(f"response chain: timer at {d} did not move on after a tick")
            d = nxt

    # -- zero reports -----------------------------------------------------------------------

    def _zero_report(self, tier: Tier, admin: str, due: float) -> None:
        since = due - 86400.0
        counties = [c for c in {site.admin for site in self.registry.sites.values()} if any(a == admin for _, a in chain_of(c))]
        warnings = [w for w in self.raised if since <= w[0] < due and w[2] in counties]
        figures: dict[str, Any] = dict(self.zero_stats(admin, since, due)) if self.zero_stats is not None else {}
        sites = sorted(code for code, site in self.registry.sites.items() if site.admin in counties)
        day = datetime.fromtimestamp(due, ZoneInfo(self.tz)).date().isoformat()
        lines = [f"{admin} daily zero report 零报告 {day}: {len(sites)} monitored sites ({', '.join(sites)})"]
        if "readings" in figures:
            lines.append(f"readings received in 24 h: {figures['readings']}")
        if "devices" in figures:
            lines.append(f"devices online: {figures.get('devices_online', 0)} of {figures['devices']}")
        if "online_rate" in figures:
            lines.append(f"online rate 在线率: {100 * figures['online_rate']:.1f} %")
        if "availability" in figures:
            # alerts.zero_reports.with_availability: readings received / expected this month.
            month = datetime.fromtimestamp(figures["availability_since"], ZoneInfo(self.tz)).strftime("%Y-%m-%d %H:%M")
            lines.append(f"transmission availability this month 月到报率: {100 * figures['availability']:.1f} % (since {month} {self.tz})")
        if figures.get("devices_low_availability"):
            named = [f"{device} {100 * a:.1f} %" for device, a in figures.get("low_availability") or []]
            more = int(figures["devices_low_availability"]) - len(named)
            lines.append(
                f"devices below {100 * figures.get('availability_threshold', 0):.0f} % availability 到报率不足: {figures['devices_low_availability']} "
                f"({', '.join(named)}{f' and {more} more' if more > 0 else ''})"
            )
        if figures.get("devices_clock_trouble"):
            # Only when there are some (alerts.zero_reports.with_clock_health): at most
            # CLOCK_TROUBLE_NAMED are named, the count is whole.
            named = list(figures.get("clock_trouble") or [])
            more = int(figures["devices_clock_trouble"]) - len(named)
            lines.append(f"devices whose clock may be wrong 时钟异常: {figures['devices_clock_trouble']} ({', '.join(named)}{f' and {more} more' if more > 0 else ''})")
        if warnings:
            lines.append("warnings in 24 h: " + "; ".join(f"{site} {LEVELS[lvl].colour} at {rfc3339(t)}" for t, site, _, lvl, _ in warnings))
        else:
            lines.append("warnings in 24 h: none 无险情")
        text = "\n".join(lines)
        if self.drill:
            text = "[EXERCISE] " + text
        n = Notify(tier, admin, "zero_report", 0, None, text, "", due, self.drill, id=f"zero-{admin}-{day}" + ("-exercise" if self.drill else ""))
        self.zero_last[admin] = due
        self.sink.carry_out(self, None, None, (n,), {n.id: {"zero": {"admin": admin, "day": day, "sites": sites, "warnings": len(warnings), **figures}}})

    # -- outputs --------------------------------------------------------------------------

    def _apply(self, key: tuple[str, bool], tr: Transition) -> Transition:
        extras: dict[str, Mapping[str, Any]] = {}
        for action in tr.actions:
            if not isinstance(action, Notify):
                continue
            if action.kind in ("warning", "realarm") and not action.exercise and action.tier == "county":
                self.raised.append((action.t, action.site, tr.state.admin, action.level, action.warning_id or ""))
            if action.kind in ("report_due", "report_overdue") and action.task_id is not None:
                task = tr.state.report(action.task_id)
                if task is not None:
                    extras[action.id] = {"draft": quick_report_draft(self.registry.sites[action.site], tr.state, task)}
        del self.raised[: max(0, len(self.raised) - 10_000)]
        self.sink.carry_out(self, key, tr.state, tr.actions, extras)
        # Only once the sink has carried the actions out (live: committed them with the
        # state): a failure leaves memory where the disk is.
        self.states[key] = tr.state
        return tr

    def recipients(self, admin: str) -> list[dict[str, str]]:
        unit = self.roster.units.get(admin)
        if unit is None:
            return []
        return [{"name": c.name, "role": c.role, "email": c.email, "phone": c.phone} for c in unit.contacts]

    def cap_xml(self, action: Cap) -> tuple[str, bytes]:
        """(identifier, XML) of a CAP action, validated (an invalid message is a bug, never sent).
        The roster's unit for the site's county picks the profile (``cap_profile_for``)."""
        event = cap_event(action)
        profile = cap_profile_for(self.roster, action.admin)
        if profile is None:
            refs = cap_references(action, self.sender, profile)
            xml = build_cap(event, self.registry.sites[action.site], sender=self.sender, references=refs or None, profile=profile)
            self.schema.validate(xml)  # raises CapError
            return cap_identifier(event, profile), xml
        ident = self._cn_identifier(action, event, profile)
        refs = [(ref[0], self._cn_ids.get(eid, ref[1]), ref[2]) for (eid, _), ref in zip(action.references, cap_references(action, self.sender, profile))]
        xml = build_cap(event, self.registry.sites[action.site], sender=self.sender, references=refs or None, profile=profile, identifier=ident)
        self.schema.validate(xml)  # raises CapError
        return ident, xml

    def _cn_identifier(self, action: Cap, event: Mapping[str, Any], profile: CnProfile) -> str:
        """The China profile's identifier of this message: its unit code and second, and N the
        first digit not yet taken by another message of the unit in that second — starting from
        the event's own (a hash of its id), so a message alone in its second keeps the
        identifier it always had. Two sites of a county changing level in one second used to
        share it, and the outbox kept only the first. Kept per message for the references of
        later Updates (within this process: after a restart a reference is worked out from the
        event again, which is the allocated one unless that message had to move)."""
        known = self._cn_ids.get(action.identifier)
        if known is not None:
            return known
        ident = cap_identifier(event, profile)
        if ident in self._cn_used:
            stem, first = ident[:-1], int(ident[-1])
            free = [stem + str((first + k) % 10) for k in range(1, 10) if stem + str((first + k) % 10) not in self._cn_used]
            if not free:
                raise CapError(f"more than 10 CAP messages of {profile.sender_code} in one second: GB/T 35965.1's N is one digit")
            ident = free[0]
        self._cn_ids[action.identifier] = ident
        self._cn_used.add(ident)
        if len(self._cn_ids) > 200_000:  # bounded: the oldest go (their warnings are long over)
            for eid in list(self._cn_ids)[:100_000]:
                self._cn_used.discard(self._cn_ids.pop(eid))
        return ident


class ReplayFiles:
    """The replay's sink: engine actions become files in ``out_dir`` (notifications.jsonl,
    cap/NNNN-<identifier>.xml, commands.jsonl). A replay into the same directory starts afresh."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.cap_count = 0
        self.notifications = 0
        self.commands = 0
        self.cap_dir = self.out_dir / "cap"
        self.cap_dir.mkdir(parents=True, exist_ok=True)
        for old in self.cap_dir.glob("*.xml"):
            old.unlink()
        self.notifications_path = self.out_dir / "notifications.jsonl"
        self.commands_path = self.out_dir / "commands.jsonl"
        self.notifications_path.write_text("")
        self.commands_path.write_text("")

    def carry_out(
        self,
        chain: ResponseChain,
        key: tuple[str, bool] | None,
        state: SiteAlert | None,
        actions: tuple[Action, ...],
        extras: Mapping[str, Mapping[str, Any]],
    ) -> None:
        for action in actions:
            if isinstance(action, Notify):
                self._notify(chain, action, extras.get(action.id, {}))
            elif isinstance(action, Cap):
                ident, xml = chain.cap_xml(action)
                self.cap_count += 1
                (self.cap_dir / f"{self.cap_count:04d}-{ident}.xml").write_bytes(xml)
            elif isinstance(action, SetSampling):
                self._append(self.commands_path, {**action.to_dict(), "t": rfc3339(action.t), "t_epoch": action.t})
                self.commands += 1

    def _notify(self, chain: ResponseChain, n: Notify, extra: Mapping[str, Any]) -> None:
        line: dict[str, Any] = {
            "id": n.id,
            "t": rfc3339(n.t),
            "site": n.site,
            "level": n.level,
            "tier": n.tier,
            "kind": n.kind,
            "recipients": chain.recipients(n.admin),
            "exercise": n.exercise,
            "warning_id": n.warning_id,
            "admin": n.admin,
            "text": n.text,
            "previous": n.previous,
            "deadline": None if n.deadline is None else rfc3339(n.deadline),
            "task_id": n.task_id,
            "device": n.device,
            "history": [[rfc3339(e.t), e.rule, e.level, e.status, e.detail] for e in n.history],
            **extra,
        }
        self._append(self.notifications_path, line)
        self.notifications += 1

    @staticmethod
    def _append(path: Path, doc: Mapping[str, Any]) -> None:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
