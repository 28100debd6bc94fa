"""The alert policy: ack deadlines, escalation, quick-report deadlines by scale class,
accelerated sampling by level, hold times. One pydantic model, validated once at start."""

from __future__ import annotations


from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from geowarn.core.levels import LEVELS
from geowarn.config.roster import TIERS
from geowarn.alerts.model import (
    SCALES,
)

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
    #: Sampling is never relaxed while a device's own level (before confirmation) is at or
    #: above this: the readings that decide whether the slope is failing come no slower
    #: while one device still says orange (5: follow the site level only).
    keep_sampling_from_level: int = Field(default=3, ge=1, le=5)
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
