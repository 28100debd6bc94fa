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

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Any, Literal, NamedTuple, TypeAlias
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alerts.levels import LEVELS
from config.roster import TIERS, Tier, chain_of, tier_of
from detectors.fusion import LevelChange

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


# -- policy ---------------------------------------------------------------------------------


class AlertPolicy(BaseModel):
    """How the engine answers levels. Defaults are DESIGN §5 and the national plans.

    Per-level tables are keyed by the level number (1 blue … 4 red); TOML keys "1".."4" work.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: How many tiers, from the county up, a new warning (or a rise) reaches first.
    first_tiers: dict[int, int] = Field(default_factory=lambda: {1: 1, 2: 2, 3: 3, 4: 4})
    #: Ack deadline per level, seconds; None (or absent): no deadline, no escalation.
    ack_deadline_s: dict[int, float | None] = Field(default_factory=lambda: {n: LEVELS[n].ack_deadline_s for n in (1, 2, 3, 4)})
    #: The engine's own down-hold on top of fusion's. 0: a lower fused level takes effect at once.
    lower_hold_s: float = Field(default=0.0, ge=0)
    #: Accelerated sampling interval from a level up (the highest key at or below the level
    #: applies); below the lowest key the devices' normal interval is restored.
    sampling_s: dict[int, float] = Field(default_factory=lambda: {2: 300.0, 3: 120.0, 4: 60.0})
    #: From this level up a quick report (速报) is required.
    report_from_level: int = Field(default=3, ge=1, le=4)
    #: Quick-report deadline by the site's scale class.
    report_due_s: dict[str, float] = Field(
        default_factory=lambda: {"extra_large": 4 * 3600.0, "large": 4 * 3600.0, "medium": 12 * 3600.0, "small": 12 * 3600.0}
    )
    #: A reminder this long before the report is due (0: none).
    report_remind_before_s: float = Field(default=3600.0, ge=0)
    #: An overdue report goes one tier further up every so often until it reaches national.
    report_escalate_s: float = Field(default=3600.0, gt=0)
    #: Entries of the current warning's history kept in the state (oldest dropped first).
    history_max: int = Field(default=200, ge=10)

    @field_validator("first_tiers")
    @classmethod
    def _first_tiers(cls, v: dict[int, int]) -> dict[int, int]:
        if set(v) != {1, 2, 3, 4}:
            raise ValueError(f"first_tiers needs levels 1, 2, 3 and 4, got {sorted(v)}")
        counts = [v[n] for n in (1, 2, 3, 4)]
        if any(not 1 <= c <= len(TIERS) for c in counts):
            raise ValueError(f"first_tiers values count tiers from the county up: 1 to {len(TIERS)}")
        if counts != sorted(counts):
            raise ValueError("first_tiers must not reach fewer tiers at a higher level")
        return v

    @field_validator("ack_deadline_s")
    @classmethod
    def _ack(cls, v: dict[int, float | None]) -> dict[int, float | None]:
        for lvl, d in v.items():
            if lvl not in (1, 2, 3, 4):
                raise ValueError(f"ack_deadline_s: level {lvl} is not 1-4")
            if d is not None and not d > 0:
                raise ValueError(f"ack_deadline_s[{lvl}] must be > 0 seconds (or absent for no deadline)")
        return v

    @field_validator("sampling_s")
    @classmethod
    def _sampling(cls, v: dict[int, float]) -> dict[int, float]:
        for lvl, s in v.items():
            if lvl not in (1, 2, 3, 4):
                raise ValueError(f"sampling_s: level {lvl} is not 1-4")
            if not s > 0:
                raise ValueError(f"sampling_s[{lvl}] must be > 0 seconds")
        return v

    @field_validator("report_due_s")
    @classmethod
    def _report_due(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != set(SCALES):
            raise ValueError(f"report_due_s needs exactly the scale classes {', '.join(SCALES)}")
        if any(not d > 0 for d in v.values()):
            raise ValueError("report_due_s values must be > 0 seconds")
        return v

    @model_validator(mode="after")
    def _remind(self) -> "AlertPolicy":
        if self.report_remind_before_s >= min(self.report_due_s.values()):
            raise ValueError("report_remind_before_s must be shorter than every report deadline")
        return self

    def ack_s(self, level: int) -> float | None:
        return self.ack_deadline_s.get(level)

    def sampling_for(self, level: int) -> float | None:
        best = None
        for lvl in sorted(self.sampling_s):
            if lvl <= level:
                best = self.sampling_s[lvl]
        return best


# -- events (inputs) ------------------------------------------------------------------------


def _check_t(t: float, what: str) -> None:
    if not isinstance(t, (int, float)) or t != t:
        raise ValueError(f"{what}: t must be a number of seconds, got {t!r}")


@dataclass(frozen=True, slots=True)
class LevelIn:
    """The fused site level from detectors (fusion's LevelChange)."""

    t: float
    level: int
    reason: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_t(self.t, "LevelIn")
        if not 0 <= self.level <= 4:
            raise ValueError(f"LevelIn: level must be 0-4, got {self.level}")
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
    return LevelIn(change.t, change.level, change.reason, change.evidence)


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


# -- the machine ----------------------------------------------------------------------------


def _iso(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _name(level: int) -> str:
    info = LEVELS[level]
    return f"{info.colour} (level {level}, {info.en})"


def warning_id_for(site: str, raised: float, exercise: bool = False, n: int = 1) -> str:
    """A warning's id: the site and its raise time (UTC), e.g. ``S1-20231114T221320Z``; the
    n-th warning raised within the same second gets ``-n``; drills end in ``~drill``."""
    stamp = datetime.fromtimestamp(raised, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{site}-{stamp}" + (f"-{n}" if n > 1 else "") + ("~drill" if exercise else "")


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
        shown = self.shown_deadline(level) if status == UNACK else None
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
    run.set(reason=ev.reason, evidence=ev.evidence)
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


# -- daily zero reports ---------------------------------------------------------------------

#: Local time of the daily zero report per tier (national relief plan); national has none.
ZERO_REPORT_TIMES: Mapping[Tier, time] = {"county": time(9, 0), "city": time(10, 0), "province": time(12, 0)}


class ZeroReportDue(NamedTuple):
    tier: Tier
    admin: str
    due: float


def _zone(tz: str | tzinfo) -> tzinfo:
    return ZoneInfo(tz) if isinstance(tz, str) else tz


def _slot(day: date, at: time, zone: tzinfo) -> float:
    return datetime.combine(day, at, tzinfo=zone).timestamp()


def _latest_slot(now: float, at: time, zone: tzinfo) -> float:
    today = datetime.fromtimestamp(now, zone).date()
    slot = _slot(today, at, zone)
    return slot if slot <= now else _slot(today - timedelta(days=1), at, zone)


def zero_report_due(
    last_sent: Mapping[str, float | None],
    now: float,
    tz: str | tzinfo = "Asia/Shanghai",
    times: Mapping[Tier, time] = ZERO_REPORT_TIMES,
) -> list[ZeroReportDue]:
    """The daily zero reports due at ``now``: [(tier, admin, due time)], sorted by admin.

    ``last_sent`` maps each watched admin code to when its last zero report went out (seed it
    with the time the unit came under watch; None means never, so the latest slot is due).
    Only the latest missed slot is reported: after a long outage one report, not a backlog.
    """
    zone = _zone(tz)
    out = []
    for admin in sorted(last_sent):
        tier = tier_of(admin)
        if tier not in times:
            continue
        slot = _latest_slot(now, times[tier], zone)
        last = last_sent[admin]
        if last is None or last < slot:
            out.append(ZeroReportDue(tier, admin, slot))
    return out


def next_zero_report(
    last_sent: Mapping[str, float | None],
    now: float,
    tz: str | tzinfo = "Asia/Shanghai",
    times: Mapping[Tier, time] = ZERO_REPORT_TIMES,
) -> float | None:
    """When ``zero_report_due`` next returns something (≤ now if something is due already)."""
    zone = _zone(tz)
    best: float | None = None
    for admin, last in last_sent.items():
        tier = tier_of(admin)
        if tier not in times:
            continue
        slot = _latest_slot(now, times[tier], zone)
        if last is None or last < slot:
            t = slot
        else:
            day = datetime.fromtimestamp(slot, zone).date() + timedelta(days=1)
            t = _slot(day, times[tier], zone)
        best = t if best is None else min(best, t)
    return best
