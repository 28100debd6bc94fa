"""The response chain at run time: fusion's level changes through the alert engine to files.

``ResponseChain`` holds one engine state (``SiteAlert``) per site and per exercise flag (a drill
never touches a real warning), feeds it fusion's ``LevelChange``s and timer ticks, and carries
out the engine's actions as files in ``out_dir`` (the replay's runtime; the daemon's notifiers
and outbox are a separate concern):

- ``notifications.jsonl``: one line per ``Notify``, with the recipients from the duty roster
  (the contacts of the unit for that tier's admin code; ``[]`` when the roster has no unit);
- ``cap/NNNN-<identifier>.xml``: one CAP 1.2 message per ``Cap``, numbered in order, each
  validated against the OASIS schema before it is written (an invalid one raises ``CapError``);
- ``commands.jsonl``: one line per ``SetSampling``.

Nothing here acknowledges: in a replay nobody answers, so warnings escalate at the engine's
deadlines. Time is the caller's (event time in a replay).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alerts.cap import DEFAULT_SENDER, CapSchema, Reference, build_cap, cap_identifier, cap_reference
from alerts.engine import AlertPolicy, Cap, Notify, SetSampling, SiteAlert, Tick, Transition, event_from_change, next_deadline, step
from alerts.log import rfc3339
from config.registry import Registry
from config.roster import Roster
from detectors.fusion import LevelChange


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


def cap_references(action: Cap, sender: str = DEFAULT_SENDER) -> list[Reference]:
    """The engine's (identifier, sent) references as CAP (sender, identifier, sent) triples."""
    return [cap_reference({"id": ident, "t": rfc3339(sent), "exercise": action.exercise}, sender=sender) for ident, sent in action.references]


class ResponseChain:
    """One alert state per (site, exercise); engine actions become files in ``out_dir``."""

    def __init__(
        self,
        registry: Registry,
        roster: Roster,
        out_dir: Path,
        policy: AlertPolicy | None = None,
        *,
        schema: CapSchema | None = None,
        sender: str = DEFAULT_SENDER,
    ) -> None:
        self.registry = registry
        self.roster = roster
        self.out_dir = Path(out_dir)
        self.policy = policy if policy is not None else AlertPolicy()
        self.schema = schema if schema is not None else CapSchema.load()
        self.sender = sender
        self.states: dict[tuple[str, bool], SiteAlert] = {}
        self.cap_count = 0
        self.notifications = 0
        self.commands = 0
        self.cap_dir = self.out_dir / "cap"
        self.cap_dir.mkdir(parents=True, exist_ok=True)
        for old in self.cap_dir.glob("*.xml"):  # a replay into the same directory starts afresh
            old.unlink()
        self.notifications_path = self.out_dir / "notifications.jsonl"
        self.commands_path = self.out_dir / "commands.jsonl"
        self.notifications_path.write_text("")
        self.commands_path.write_text("")

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
        """Apply one fusion change at its own time (any timer of that state due first)."""
        key = (change.site, change.exercise)
        s = self.state(change.site, change.exercise, change.t)
        due = next_deadline(s)
        while due is not None and due <= change.t:
            self._apply(key, step(s, Tick(due), self.policy, due))
            s = self.states[key]
            nxt = next_deadline(s)
            due = nxt if nxt is not None and nxt > due else None
        return self._apply(key, step(s, event_from_change(change), self.policy, change.t))

    def tick(self, now: float) -> list[Transition]:
        """Fire every timer due at ``now``, in site order."""
        out = []
        for key in sorted(self.states):
            d = next_deadline(self.states[key])
            if d is not None and d <= now:
                out.append(self._apply(key, step(self.states[key], Tick(now), self.policy, now)))
        return out

    def next_deadline(self) -> float | None:
        times = [d for d in (next_deadline(s) for s in self.states.values()) if d is not None]
        return min(times, default=None)

    def run_until(self, t: float) -> None:
        """Tick every timer due up to ``t``, in time order, each at its own time."""
        d = self.next_deadline()
        while d is not None and d <= t:
            self.tick(d)
            nxt = self.next_deadline()
            if nxt is not None and nxt <= d:  # the engine must move its timers on; never spin
                raise RuntimeError(f"response chain: timer at {d} did not move on after a tick")
            d = nxt

    # -- outputs --------------------------------------------------------------------------

    def _apply(self, key: tuple[str, bool], tr: Transition) -> Transition:
        self.states[key] = tr.state
        for action in tr.actions:
            if isinstance(action, Notify):
                self._notify(action)
            elif isinstance(action, Cap):
                self._cap(action)
            elif isinstance(action, SetSampling):
                self._append(self.commands_path, {**action.to_dict(), "t": rfc3339(action.t), "t_epoch": action.t})
                self.commands += 1
        return tr

    def recipients(self, admin: str) -> list[dict[str, str]]:
        unit = self.roster.units.get(admin)
        if unit is None:
            return []
        return [{"name": c.name, "role": c.role, "email": c.email, "phone": c.phone} for c in unit.contacts]

    def _notify(self, n: Notify) -> None:
        line: dict[str, Any] = {
            "id": n.id,
            "t": rfc3339(n.t),
            "site": n.site,
            "level": n.level,
            "tier": n.tier,
            "kind": n.kind,
            "recipients": self.recipients(n.admin),
            "exercise": n.exercise,
            "warning_id": n.warning_id,
            "admin": n.admin,
            "text": n.text,
            "previous": n.previous,
            "deadline": None if n.deadline is None else rfc3339(n.deadline),
            "task_id": n.task_id,
            "device": n.device,
            "history": [[rfc3339(e.t), e.rule, e.level, e.status, e.detail] for e in n.history],
        }
        self._append(self.notifications_path, line)
        self.notifications += 1

    def _cap(self, action: Cap) -> None:
        event = cap_event(action)
        xml = build_cap(event, self.registry.sites[action.site], sender=self.sender, references=cap_references(action, self.sender) or None)
        self.schema.validate(xml)  # raises CapError: an invalid message is a bug, never sent
        self.cap_count += 1
        ident = cap_identifier(event)
        (self.cap_dir / f"{self.cap_count:04d}-{ident}.xml").write_bytes(xml)

    @staticmethod
    def _append(path: Path, doc: Mapping[str, Any]) -> None:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
