"""The value every detector returns.

A ``Verdict`` is an immutable named tuple rather than a frozen dataclass: every detector makes
one per reading, and building a frozen dataclass (four guarded ``object.__setattr__`` calls and
a validation hook) cost ~1.5 µs of the ~30 µs a displacement channel's bank then spent per
reading. Detectors build theirs with ``new_verdict(...)``, which skips the level check they do not
need (their level comes from a ``LevelLatch`` and is 0-4 by construction); ``Verdict(...)``
still checks.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class _Fields(NamedTuple):
    level: int
    reason: str
    evidence: dict[str, Any]
    warming_up: bool


class Verdict(_Fields):
    """A detector's judgement after one reading: level 0 (nothing) to 4 (red).

    >>> Verdict(2, "velocity 5 mm/day", {"velocity_per_day": 5.0})
    Verdict(level=2, reason='velocity 5 mm/day', evidence={'velocity_per_day': 5.0}, warming_up=False)
    >>> Verdict(5)
    Traceback (most recent call last):
    ...
    ValueError: level must be 0-4, got 5
    """

    __slots__ = ()

    def __new__(cls, level: int, reason: str = "", evidence: dict[str, Any] | None = None, warming_up: bool = False) -> Verdict:
        if not 0 <= level <= 4:
            raise ValueError(f"level must be 0-4, got {level}")
        return tuple.__new__(cls, (level, reason, {} if evidence is None else evidence, warming_up))

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "reason": self.reason, "evidence": self.evidence, "warming_up": self.warming_up}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        level, reason, evidence, warming_up = int(d["level"]), str(d["reason"]), dict(d["evidence"]), bool(d["warming_up"])
        if cls is not Verdict:
            return cls(level, reason, evidence, warming_up)
        # ``Verdict(...)``'s check without its call (a woken channel reads six verdicts).
        if not 0 <= level <= 4:
            raise ValueError(f"level must be 0-4, got {level}")
        return _new(cls, (level, reason, evidence, warming_up))


_new = tuple.__new__


def new_verdict(level: int, reason: str, evidence: dict[str, Any], warming_up: bool = False) -> Verdict:
    """A verdict without the level check: for detectors whose level is 0-4 by construction."""
    return _new(Verdict, (level, reason, evidence, warming_up))


QUIET = Verdict(0)
