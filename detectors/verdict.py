"""The value every detector returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Verdict:
    """A detector's judgement after one reading: level 0 (nothing) to 4 (red)."""

    level: int
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    warming_up: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.level <= 4:
            raise ValueError(f"level must be 0-4, got {self.level}")

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "reason": self.reason, "evidence": self.evidence, "warming_up": self.warming_up}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Verdict":
        return cls(int(d["level"]), str(d["reason"]), dict(d["evidence"]), bool(d["warming_up"]))


QUIET = Verdict(0)
