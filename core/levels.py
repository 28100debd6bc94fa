"""The four warning levels of DESIGN §5. Logic keys on the number; names and colours are presentation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LevelInfo:
    number: int
    colour: str
    zh: str
    en: str
    ack_deadline_s: float | None
    cap_severity: str
    cap_urgency: str
    cap_certainty: str
    cap_response: str


LEVELS: dict[int, LevelInfo] = {
    0: LevelInfo(0, "none", "正常", "Normal", None, "Unknown", "Unknown", "Unknown", "None"),
    1: LevelInfo(1, "blue", "注意级", "Attention", None, "Minor", "Future", "Possible", "Monitor"),
    2: LevelInfo(2, "yellow", "警示级", "Caution", 60 * 60.0, "Moderate", "Expected", "Possible", "Prepare"),
    3: LevelInfo(3, "orange", "警戒级", "Warning", 15 * 60.0, "Severe", "Expected", "Likely", "Prepare"),
    4: LevelInfo(4, "red", "警报级", "Alarm", 5 * 60.0, "Extreme", "Immediate", "Likely", "Evacuate"),
}
