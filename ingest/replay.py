"""``geowarn replay``: the live daemon's detectors, fusion and alert path over a recorded feed,
in event time, as fast as it can.

Readings are replayed in event-time order (a feed may hold a channel's readings out of order;
the replay sorts them, which is what the live daemon would have seen had every device's clock
and link been perfect). Timers (no data) run on a clock set to event time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alerts.clock import ManualClock
from alerts.log import AlertLog
from config.registry import Registry
from detectors.fusion import LevelChange, SiteFusion
from ingest.feeds import FeedReject, FeedRow


@dataclass
class ReplaySummary:
    readings: int = 0
    rejected: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    highest: dict[str, int] = field(default_factory=dict)


def replay_rows(rows: list[FeedRow], registry: Registry, out_dir: Path, *, drill: bool = False, rejects: list[FeedReject] | None = None) -> ReplaySummary:
    out_dir.mkdir(parents=True, exist_ok=True)
    alerts_path = out_dir / "alerts.jsonl"
    alerts_path.write_text("")
    summary = ReplaySummary()
    rejects = list(rejects or [])
    log = AlertLog(alerts_path, None)
    fusion = SiteFusion(registry)
    ordered = sorted(rows, key=lambda r: r.t)
    clock = ManualClock(ordered[0].t if ordered else 0.0)

    def emit(changes: list[LevelChange]) -> None:
        for change in changes:
            event = log.emit(change, registry.sites[change.site].admin)
            summary.events.append(event)
            if not change.exercise:
                summary.highest[change.site] = max(summary.highest.get(change.site, 0), change.level)

    for r in ordered:
        info = registry.channel(r.site, r.device, r.channel)
        if info is None:
            rejects.append(FeedReject(0, f"{r.site}/{r.device}/{r.channel} is not in the registry", ""))
            continue
        # Timers due before this reading fire first, at their own time.
        deadline = fusion.next_deadline()
        while deadline is not None and deadline <= r.t:
            clock.set(max(clock.now(), deadline))
            emit(fusion.tick(clock.now()))
            deadline = fusion.next_deadline()
        clock.set(r.t)
        summary.readings += 1
        emit(fusion.update_all(info, r.t, r.value, drill or r.drill))
    summary.rejected = len(rejects)
    if rejects:
        with open(out_dir / "rejects.jsonl", "w", encoding="utf-8") as fh:
            for rej in rejects:
                fh.write(json.dumps({"line": rej.line, "reason": rej.reason, "text": rej.text}, ensure_ascii=False) + "\n")
    return summary
