"""The alert engine's model: statuses, rule names, the events it takes, the per-site state it
keeps and the actions it returns.

Level and status are kept apart, as in ISA-18.2 (and alerta's isa_18_2 model): ``level`` is what
the evidence says (0 normal … 4 red); ``status`` is what people have done about it (normal,
unacknowledged, acknowledged, returned-to-normal-unacknowledged, shelved, out of service).
Every value here is frozen or copied on change; nothing does I/O.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, TypeAlias


from geowarn.config.roster import TIERS, Tier, tier_of
from geowarn.core.events import LevelChange

# -- status and rule names ------------------------------------------------------------------

Status = Literal["normal", "unacknowledged", "acknowledged", "rtn_unacknowledged", "shelved", "out_of_service"]
NORMAL: Status = "normal"
UNACK: Status = "unacknowledged"
ACKED: Status = "acknowledged"
RTN_UNACK: Status = "rtn_unacknowledged"
SHELVED: Status = "shelved"
OUT_OF_SERVICE: Status = "out_of_service"
STATUSES: tuple[Status, ...] = (NORMAL, UNACK, ACKED, RTN_UNACK, SHELVED, OUT_OF_SERVICE)
_SUPPRESSED = (SHELVED, OUT_OF_SERVICE)

#: Every rule a transition can be named by. "noop" is returned (and not recorded) when an
#: event changes nothing worth recording.
RULES: tuple[str, ...] = (
    "raise",
    "upgrade",
    "upgrade_realarm",
    "downgrade",
    "downgrade_after_hold",
    "lift",
    "lift_after_hold",
    "rtn_unack",
    "lower_held",
    "lower_cancelled",
    "suppressed_level",
    "ack",
    "ack_again",
    "ack_stale",
    "ack_rtn",
    "escalate_unacked",
    "nodata_hold",
    "data_back",
    "report_opened",
    "report_reminder",
    "report_overdue",
    "report_submitted",
    "shelve",
    "unshelve",
    "shelve_expired",
    "out_of_service",
    "return_to_service",
    "ignored",
    "noop",
)
NOOP = "noop"

NotifyKind = Literal[
    "warning",
    "realarm",
    "escalation",
    "downgrade",
    "cancel",
    "report_due",
    "report_overdue",
    "nodata",
    "data_back",
    "shelved",
    "unshelved",
    "out_of_service",
    "return_to_service",
    "zero_report",
]
CapType = Literal["Alert", "Update", "Cancel"]
ScaleClass = Literal["small", "medium", "large", "extra_large"]
SCALES: tuple[str, ...] = ("small", "medium", "large", "extra_large")

_ID_NS = uuid.UUID("0b7c3f5e-2a64-4d1c-9f0e-5d2b8e6a41c7")

# -- events (inputs) ------------------------------------------------------------------------


def _check_t(t: float, what: str) -> None:
    if not isinstance(t, (int, float)) or t != t:
        raise ValueError(f"{what}: t must be a number of seconds, got {t!r}")


@dataclass(frozen=True, slots=True)
class LevelIn:
    """The fused site level from detectors (fusion's LevelChange).

    ``raw_level``: the highest channel level before confirmation (fusion's evidence
    ``raw_level``); None: the same as ``level``. It keeps sampling fast (``AlertPolicy.
    keep_sampling_from_level``) while a device still stands high."""

    t: float
    level: int
    reason: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)
    raw_level: int | None = None

    def __post_init__(self) -> None:
        _check_t(self.t, "LevelIn")
        if not 0 <= self.level <= 4:
            raise ValueError(f"LevelIn: level must be 0-4, got {self.level}")
        if self.raw_level is not None and not 0 <= self.raw_level <= 4:
            raise ValueError(f"LevelIn: raw_level must be 0-4, got {self.raw_level}")
        try:
            # Normalised to plain JSON types so that a state restored from JSON equals this one.
            object.__setattr__(self, "evidence", json.loads(json.dumps(dict(self.evidence))))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"LevelIn: evidence must be JSON-serialisable ({exc})") from None


@dataclass(frozen=True, slots=True)
class NoData:
    t: float
    device: str
    reason: str = ""

    def __post_init__(self) -> None:
        _check_t(self.t, "NoData")
        if not self.device:
            raise ValueError("NoData: device must be named")


@dataclass(frozen=True, slots=True)
class DataBack:
    t: float
    device: str

    def __post_init__(self) -> None:
        _check_t(self.t, "DataBack")
        if not self.device:
            raise ValueError("DataBack: device must be named")


@dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledgement of a warning (``geowarn ack ID --by NAME --note TEXT``, ``geowarn/ack``).

    ``level`` is the level the person acknowledges (None: the level currently announced).
    """

    t: float
    by: str
    note: str
    warning_id: str
    level: int | None = None

    def __post_init__(self) -> None:
        _check_t(self.t, "Ack")
        if not self.by.strip():
            raise ValueError("Ack: an acknowledgement needs the name of who gives it (--by NAME)")
        if self.level is not None and not 1 <= self.level <= 4:
            raise ValueError(f"Ack: level must be 1-4, got {self.level}")


@dataclass(frozen=True, slots=True)
class Shelve:
    """Shelved for maintenance until ``until``: the level is followed, nothing is announced."""

    t: float
    by: str
    until: float
    note: str = ""

    def __post_init__(self) -> None:
        _check_t(self.t, "Shelve")
        if not self.by.strip():
            raise ValueError("Shelve: needs the name of who shelves")
        if not self.until > self.t:
            raise ValueError(f"Shelve: until ({self.until}) must be after t ({self.t})")


@dataclass(frozen=True, slots=True)
class Unshelve:
    t: float
    by: str

    def __post_init__(self) -> None:
        _check_t(self.t, "Unshelve")


@dataclass(frozen=True, slots=True)
class OutOfService:
    """Taken out of service (no expiry) until ``ReturnToService``."""

    t: float
    by: str
    note: str = ""

    def __post_init__(self) -> None:
        _check_t(self.t, "OutOfService")
        if not self.by.strip():
            raise ValueError("OutOfService: needs the name of who takes the site out of service")


@dataclass(frozen=True, slots=True)
class ReturnToService:
    t: float
    by: str

    def __post_init__(self) -> None:
        _check_t(self.t, "ReturnToService")


@dataclass(frozen=True, slots=True)
class Tick:
    """Timers: call when ``next_deadline(state) <= now``. Like every event, it is judged at
    ``now``; its own ``t`` is informational."""

    t: float

    def __post_init__(self) -> None:
        _check_t(self.t, "Tick")


@dataclass(frozen=True, slots=True)
class ReportSubmitted:
    t: float
    by: str
    task_id: str

    def __post_init__(self) -> None:
        _check_t(self.t, "ReportSubmitted")


Event: TypeAlias = LevelIn | NoData | DataBack | Ack | Shelve | Unshelve | OutOfService | ReturnToService | Tick | ReportSubmitted


def event_from_change(change: LevelChange) -> LevelIn | NoData | DataBack:
    """The engine event for a fusion LevelChange (choose the state by ``change.exercise``)."""
    if change.kind == "nodata":
        return NoData(change.t, str(change.evidence.get("device", "?")), change.reason)
    if change.kind == "nodata_end":
        return DataBack(change.t, str(change.evidence.get("device", "?")))
    raw = change.evidence.get("raw_level")
    return LevelIn(change.t, change.level, change.reason, change.evidence, None if raw is None else int(raw))


# -- state ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a warning's history: the rule that fired, and the level and status after it."""

    t: float
    rule: str
    level: int
    status: Status
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Notice:
    """A tier notified of the current warning, with the ack deadline it was given."""

    tier: Tier
    admin: str
    level: int
    t: float
    deadline: float | None
    kind: NotifyKind


@dataclass(frozen=True, slots=True)
class AckInfo:
    by: str
    note: str
    t: float
    level: int


@dataclass(frozen=True, slots=True)
class ReportTask:
    """A quick report (速报) owed by the county for one warning."""

    task_id: str
    warning_id: str
    level: int
    opened: float
    due: float
    remind_at: float | None
    reminded: bool = False
    #: Tiers above the county told it is overdue (0: not overdue yet; 1: city; …).
    escalated: int = 0
    next_escalation: float | None = None
    submitted: float | None = None
    submitted_by: str | None = None


@dataclass(frozen=True, slots=True)
class SiteAlert:
    """One site's alert state (one for real data, one for drills)."""

    site: str
    admin: str  # the site's GB/T 2260 county code
    scale: str = "medium"
    exercise: bool = False
    t: float = 0.0  # engine time of the last step; never runs backwards
    level: int = 0
    status: Status = NORMAL
    since: float | None = None  # when the current level began
    reason: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)
    #: The current (or last) warning; kept after a lift so a late ack can still find it.
    warning_id: str | None = None
    raised: float | None = None
    raised_n: int = 0  # how many warnings were raised within the second of ``raised``
    #: The level last announced (notified and published); 0 when no warning is out.
    announced: int = 0
    acked_level: int = 0
    ack_deadline: float | None = None  # escalation timer (None: nothing to escalate)
    notices: tuple[Notice, ...] = ()
    acks: tuple[AckInfo, ...] = ()
    lower_to: int | None = None  # a lower level waiting out lower_hold_s
    lower_deadline: float | None = None
    shelved_until: float | None = None
    suppressed_by: str | None = None
    sampling_s: float | None = None  # accelerated interval commanded (None: normal)
    raw_level: int = 0  # the highest channel level fusion last reported, before confirmation
    silent: tuple[str, ...] = ()  # devices without data
    reports: tuple[ReportTask, ...] = ()
    cap_refs: tuple[tuple[str, float], ...] = ()  # (identifier, sent) of this warning's CAP messages
    history: tuple[Entry, ...] = ()

    def __post_init__(self) -> None:
        if len(self.admin) != 6 or not self.admin.isdigit() or tier_of(self.admin) != "county":
            raise ValueError(f"SiteAlert: admin {self.admin!r} must be a 6-digit GB/T 2260 county code")
        if self.scale not in SCALES:
            raise ValueError(f"SiteAlert: scale {self.scale!r} must be one of {', '.join(SCALES)}")
        if self.status not in STATUSES:
            raise ValueError(f"SiteAlert: status {self.status!r} must be one of {', '.join(STATUSES)}")

    @classmethod
    def new(cls, site: str, admin: str, scale: str = "medium", exercise: bool = False, t: float = 0.0) -> "SiteAlert":
        return cls(site=site, admin=admin, scale=scale, exercise=exercise, t=t)

    @property
    def key(self) -> str:
        return self.site + ("~drill" if self.exercise else "")

    @property
    def top_tier(self) -> int:
        """Index in TIERS of the highest tier notified of the current warning (-1: none)."""
        return max((TIERS.index(n.tier) for n in self.notices), default=-1)

    def report(self, task_id: str) -> ReportTask | None:
        return next((r for r in self.reports if r.task_id == task_id), None)

    # -- persistence ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable; ``from_dict`` gives back an equal state."""
        return {
            "v": 1,
            "site": self.site,
            "admin": self.admin,
            "scale": self.scale,
            "exercise": self.exercise,
            "t": self.t,
            "level": self.level,
            "status": self.status,
            "since": self.since,
            "reason": self.reason,
            "evidence": dict(self.evidence),
            "warning_id": self.warning_id,
            "raised": self.raised,
            "raised_n": self.raised_n,
            "announced": self.announced,
            "acked_level": self.acked_level,
            "ack_deadline": self.ack_deadline,
            "notices": [[n.tier, n.admin, n.level, n.t, n.deadline, n.kind] for n in self.notices],
            "acks": [[a.by, a.note, a.t, a.level] for a in self.acks],
            "lower_to": self.lower_to,
            "lower_deadline": self.lower_deadline,
            "shelved_until": self.shelved_until,
            "suppressed_by": self.suppressed_by,
            "sampling_s": self.sampling_s,
            "raw_level": self.raw_level,
            "silent": list(self.silent),
            "reports": [
                {
                    "task_id": r.task_id,
                    "warning_id": r.warning_id,
                    "level": r.level,
                    "opened": r.opened,
                    "due": r.due,
                    "remind_at": r.remind_at,
                    "reminded": r.reminded,
                    "escalated": r.escalated,
                    "next_escalation": r.next_escalation,
                    "submitted": r.submitted,
                    "submitted_by": r.submitted_by,
                }
                for r in self.reports
            ],
            "cap_refs": [[i, t] for i, t in self.cap_refs],
            "history": [[e.t, e.rule, e.level, e.status, e.detail] for e in self.history],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SiteAlert":
        if d.get("v") != 1:
            raise ValueError(f"SiteAlert.from_dict: unknown state version {d.get('v')!r}")

        def opt(x: Any) -> float | None:
            return None if x is None else float(x)

        return cls(
            site=str(d["site"]),
            admin=str(d["admin"]),
            scale=str(d["scale"]),
            exercise=bool(d["exercise"]),
            t=float(d["t"]),
            level=int(d["level"]),
            status=d["status"],
            since=opt(d["since"]),
            reason=str(d["reason"]),
            evidence=dict(d["evidence"]),
            warning_id=d["warning_id"],
            raised=opt(d["raised"]),
            raised_n=int(d["raised_n"]),
            announced=int(d["announced"]),
            acked_level=int(d["acked_level"]),
            ack_deadline=opt(d["ack_deadline"]),
            notices=tuple(Notice(n[0], str(n[1]), int(n[2]), float(n[3]), opt(n[4]), n[5]) for n in d["notices"]),
            acks=tuple(AckInfo(str(a[0]), str(a[1]), float(a[2]), int(a[3])) for a in d["acks"]),
            lower_to=None if d["lower_to"] is None else int(d["lower_to"]),
            lower_deadline=opt(d["lower_deadline"]),
            shelved_until=opt(d["shelved_until"]),
            suppressed_by=d["suppressed_by"],
            sampling_s=opt(d["sampling_s"]),
            raw_level=int(d.get("raw_level", d["level"])),  # states saved before it: the level
            silent=tuple(str(x) for x in d["silent"]),
            reports=tuple(
                ReportTask(
                    task_id=str(r["task_id"]),
                    warning_id=str(r["warning_id"]),
                    level=int(r["level"]),
                    opened=float(r["opened"]),
                    due=float(r["due"]),
                    remind_at=opt(r["remind_at"]),
                    reminded=bool(r["reminded"]),
                    escalated=int(r["escalated"]),
                    next_escalation=opt(r["next_escalation"]),
                    submitted=opt(r["submitted"]),
                    submitted_by=r["submitted_by"],
                )
                for r in d["reports"]
            ),
            cap_refs=tuple((str(i), float(t)) for i, t in d["cap_refs"]),
            history=tuple(Entry(float(e[0]), str(e[1]), int(e[2]), e[3], str(e[4])) for e in d["history"]),
        )


# -- actions (outputs) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notify:
    """Tell one tier's duty unit something. ``id`` is stable: the same content gives the same id."""

    tier: Tier
    admin: str
    kind: NotifyKind
    level: int
    warning_id: str | None
    text: str
    site: str
    t: float
    exercise: bool
    previous: int = 0
    #: The ack deadline given (warning, realarm, escalation) or the report deadline (report_*).
    deadline: float | None = None
    task_id: str | None = None
    device: str | None = None
    #: The warning's history so far (escalations and re-alarms carry it).
    history: tuple[Entry, ...] = ()
    id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "notify",
            "id": self.id,
            "t": self.t,
            "site": self.site,
            "tier": self.tier,
            "admin": self.admin,
            "kind": self.kind,
            "level": self.level,
            "previous": self.previous,
            "warning_id": self.warning_id,
            "text": self.text,
            "exercise": self.exercise,
            "deadline": self.deadline,
            "task_id": self.task_id,
            "device": self.device,
            "history": [[e.t, e.rule, e.level, e.status, e.detail] for e in self.history],
        }


@dataclass(frozen=True, slots=True)
class Cap:
    """Publish a CAP 1.2 message. ``references`` are (identifier, sent) of earlier messages."""

    msg_type: CapType
    references: tuple[tuple[str, float], ...]
    identifier: str
    site: str
    admin: str
    warning_id: str
    level: int
    previous: int
    t: float
    reason: str
    evidence: Mapping[str, Any]
    exercise: bool

    @property
    def id(self) -> str:
        return self.identifier

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "cap",
            "id": self.identifier,
            "msg_type": self.msg_type,
            "references": [[i, t] for i, t in self.references],
            "site": self.site,
            "admin": self.admin,
            "warning_id": self.warning_id,
            "level": self.level,
            "previous": self.previous,
            "t": self.t,
            "reason": self.reason,
            "evidence": dict(self.evidence),
            "exercise": self.exercise,
        }


@dataclass(frozen=True, slots=True)
class SetSampling:
    """Command the site's devices to sample every ``interval_s`` (None: their normal interval)."""

    site: str
    interval_s: float | None
    reason: str
    t: float
    exercise: bool
    id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": "set_sampling", "id": self.id, "site": self.site, "interval_s": self.interval_s, "reason": self.reason, "t": self.t, "exercise": self.exercise}


Action: TypeAlias = Notify | Cap | SetSampling


@dataclass(frozen=True, slots=True)
class Transition:
    state: SiteAlert
    actions: tuple[Action, ...]
    rule: str
    #: Every rule that fired in this step, ``rule`` first (e.g. ("raise", "report_opened")).
    rules: tuple[str, ...] = ()



def warning_id_for(site: str, raised: float, exercise: bool = False, n: int = 1) -> str:
    """A warning's id: the site and its raise time (UTC), e.g. ``S1-20231114T221320Z``; the
    n-th warning raised within the same second gets ``-n``; drills end in ``~drill``."""
    stamp = datetime.fromtimestamp(raised, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{site}-{stamp}" + (f"-{n}" if n > 1 else "") + ("~drill" if exercise else "")
