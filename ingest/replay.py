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
from config.roster import Roster
from detectors.fusion import LevelChange, SiteFusion
from ingest.feeds import FeedReject, FeedRow


@dataclass
class ReplaySummary:
    readings: int = 0
    rejected: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    highest: dict[str, int] = field(default_factory=dict)


def replay_rows(
    rows: list[FeedRow],
    registry: Registry,
    out_dir: Path,
    *,
    drill: bool = False,
    rejects: list[FeedReject] | None = None,
    roster: Roster | None = None,
    plots: bool = True,
) -> ReplaySummary:
    """Fusion and the response chain over ``rows`` in event time: ``alerts.jsonl`` (fusion's
    level changes), and from the chain ``notifications.jsonl``, ``cap/*.xml`` and
    ``commands.jsonl`` (nobody acknowledges, so warnings escalate at their deadlines), and
    with ``plots`` a PNG per site in ``plots/``.
    ``roster`` defaults to the example roster."""
    from alerts.chain import ResponseChain
    from config.roster import load_roster
    from config.settings import example_path

    out_dir.mkdir(parents=True, exist_ok=True)
    alerts_path = out_dir / "alerts.jsonl"
    alerts_path.write_text("")
    summary = ReplaySummary()
    rejects = list(rejects or [])
    log = AlertLog(alerts_path, None)
    fusion = SiteFusion(registry)
    ordered = sorted(rows, key=lambda r: r.t)
    clock = ManualClock(ordered[0].t if ordered else 0.0)
    chain = ResponseChain(
        registry, roster if roster is not None else load_roster(example_path("roster.example.toml")), out_dir, drill=drill,
        zero_stats=_feed_zero_stats(ordered, registry),
    )

    def emit(changes: list[LevelChange]) -> None:
        for change in changes:
            event = log.emit(change, registry.sites[change.site].admin)
            summary.events.append(event)
            if not change.exercise:
                summary.highest[change.site] = max(summary.highest.get(change.site, 0), change.level)
            chain.feed(change)

    for r in ordered:
        info = registry.channel(r.site, r.device, r.channel)
        if info is None:
            rejects.append(FeedReject(0, f"{r.site}/{r.device}/{r.channel} is not in the registry", ""))
            continue
        # Timers due before this reading fire first, at their own time: fusion's and the
        # chain's in time order (fusion first on a tie, so a lift beats an escalation).
        while True:
            f_due, c_due = fusion.next_deadline(), chain.next_deadline()
            if f_due is not None and f_due <= r.t and (c_due is None or f_due <= c_due):
                clock.set(max(clock.now(), f_due))
                emit(fusion.tick(clock.now()))
            elif c_due is not None and c_due <= r.t:
                clock.set(max(clock.now(), c_due))
                chain.tick(clock.now())
            else:
                break
        clock.set(r.t)
        summary.readings += 1
        emit(fusion.update_all(info, r.t, r.value, drill or r.drill))
    if ordered:
        chain.run_until(clock.now())
    summary.rejected = len(rejects)
    if plots and ordered:
        # A PNG per site (simulators.plots): displacement, velocity, inverse velocity, rain, levels.
        from simulators.plots import plot_replay

        plot_replay(ordered, registry, summary.events, out_dir / "plots")
    if rejects:
        with open(out_dir / "rejects.jsonl", "w", encoding="utf-8") as fh:
            for rej in rejects:
                fh.write(json.dumps({"line": rej.line, "reason": rej.reason, "text": rej.text}, ensure_ascii=False) + "\n")
    return summary


def _feed_zero_stats(ordered: list[FeedRow], registry: Registry) -> Any:
    """The zero reports' figures from the feed itself: readings and devices with a reading in
    the window, for the sites under an admin unit."""
    from bisect import bisect_left

    from config.roster import chain_of

    times: dict[tuple[str, str], list[float]] = {}
    for r in ordered:  # already in time order
        times.setdefault((r.site, r.device), []).append(r.t)

    def stats(admin: str, since: float, until: float) -> dict[str, int]:
        sites = {code for code, site in registry.sites.items() if any(a == admin for _, a in chain_of(site.admin))}
        devices = [(code, d.device) for code in sites for d in registry.sites[code].devices]
        counts = [bisect_left(times.get(key, []), until) - bisect_left(times.get(key, []), since) for key in devices]
        return {"readings": sum(counts), "devices": len(devices), "devices_online": sum(1 for c in counts if c > 0)}

    return stats
