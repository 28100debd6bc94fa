"""The hand-over from detection to the response chain: one event per site level move.

Detection (site fusion) produces it, the alert engine consumes it; it lives on the ground floor
so that the pure engine can be imported without loading numpy and the detector bank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class LevelChange:
    """A site's fused level moved, or (kind nodata/nodata_end) one of its devices went silent."""

    site: str
    t: float
    level: int
    previous: int
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    exercise: bool = False
    kind: str | None = None  # None: raise/upgrade/downgrade/lift, derived from the levels
