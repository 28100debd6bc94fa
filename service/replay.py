"""``geowarn replay``: the live daemon's judge (service/judge.py: detectors, fusion, alert log,
response chain) over a recorded feed, in event time, as fast as it can.

This module owns the replay's source and sinks: feed rows in event-time order (a feed may hold
a channel's readings out of order; the replay sorts them, which is what the live daemon would
have seen had every device's clock and link been perfect), an ack script as timed input, the
chain's files (``alerts.chain.ReplayFiles``), the zero reports' counts from the feed itself
(``FeedCounts``, with the devices whose clock looks wrong as live), plots and rejects. Timers
run on a clock set to event time.
"""

from __future__ import annotations

import json
import logging
from bisect import bisect_left
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geowarn.alerts.chain import ResponseChain
from geowarn.alerts.log import ALERTS_FILE, AlertLog
from geowarn.config.registry import Registry
from geowarn.config.roster import Roster
from geowarn.core.clock import EventClock
from geowarn.core.events import LevelChange
from geowarn.core.timefmt import rfc3339
from geowarn.ingest.feeds import FeedError, FeedReject, FeedRow, FeedStatus
from geowarn.service.judge import Judge

log = logging.getLogger(__name__)


#: Scripted acks may lie this far before the first or after the last reading of the feed.
ACK_MARGIN_S = 86400.0


@dataclass(frozen=True)
class ScriptedAck:
    """One line of an ack script: at ``t`` (event time), ``by`` acknowledges the current
    warning of ``site`` (or the warning ``id``)."""

    t: float
    by: str
    site: str = ""
    id: str = ""
    note: str = ""
    level: int | None = None
    exercise: bool | None = None  # None: the replay's own (--drill)


def read_ack_script(path: str | Path) -> list[ScriptedAck]:
    """An ack script: JSONL, one ``{"t": epoch|RFC 3339, "site" or "id", "by", "note"?,
    "level"?}`` a line; ``FeedError`` names the line and what is wrong."""
    from geowarn.core.timefmt import parse_time

    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            if not isinstance(doc, dict):
                raise ValueError("a line is a JSON object")
            by = doc.get("by")
            if not isinstance(by, str) or not by.strip():
                raise ValueError("by (who acknowledges) is required")
            if not (isinstance(doc.get("site"), str) or isinstance(doc.get("id"), str)):
                raise ValueError("give site (its current warning) or id (a warning id)")
            level = doc.get("level")
            if level is not None and (not isinstance(level, int) or not 1 <= level <= 4):
                raise ValueError("level must be 1-4")
            ex = doc.get("exercise")
            out.append(ScriptedAck(parse_time(doc.get("t")), by.strip(), doc.get("site", ""), doc.get("id", ""), str(doc.get("note", "")), level,
                                   ex if isinstance(ex, bool) else None))
        except ValueError as exc:
            raise FeedError(f"{path}:{n}: {exc}") from None
    return out


@dataclass
class ReplaySummary:
    readings: int = 0
    rejected: int = 0
    #: Device statuses applied (``FeedStatus``: their ``sensor_state``).
    statuses: int = 0
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
    acks: list["ScriptedAck"] | None = None,
    statuses: list[FeedStatus] | None = None,
) -> ReplaySummary:
    """The judge over ``rows`` in event time: ``alerts.jsonl`` (fusion's level changes), and
    from the chain ``notifications.jsonl``, ``cap/*.xml`` and ``commands.jsonl`` (nobody
    acknowledges, so warnings escalate at their deadlines), and with ``plots`` a PNG per site
    in ``plots/``. The chain's clock starts at the first reading, as a daemon's starts when it
    does: the daily zero reports are due from there on.
    ``roster`` defaults to the example roster. ``acks`` (an ack script) acknowledge at their
    own event time; each outcome goes to ``acks.jsonl``.
    ``statuses``: the devices' statuses of the same feed (``read_feed(..., statuses=)``), each
    given to the judge as live gives it (``Judge.status``: a sensor its device reports faulty
    raises nothing) before the readings that follow it in the feed (``sequence``)."""
    from geowarn.alerts.chain import ReplayFiles, zero_stats_of
    from geowarn.alerts.zero_reports import with_availability, with_clock_health
    from geowarn.config.roster import load_roster
    from geowarn.config.settings import example_path

    out_dir.mkdir(parents=True, exist_ok=True)
    alerts_path = out_dir / ALERTS_FILE
    alerts_path.write_text("")
    summary = ReplaySummary()
    rejects = list(rejects or [])
    items = sequence(rows, statuses or [])
    ordered = [r for r in items if isinstance(r, FeedRow)]
    counts = FeedCounts(ordered)
    judge: Judge | None = None
    chain = ResponseChain(
        registry, roster if roster is not None else load_roster(example_path("roster.example.toml")), ReplayFiles(out_dir), drill=drill,
        # As live (service/detection.py): the unit's devices whose clock looks wrong, from the
        # judge's fusion at the report's time (live reads what detection last saved of it), and
        # the online rate and the month's transmission availability over the month so far, as
        # a daemon that started with the feed would count them (nothing received before it).
        zero_stats=with_availability(
            with_clock_health(zero_stats_of(registry, counts), registry, lambda: judge.fusion.clock_health() if judge is not None else None),
            registry, counts.readings_by_device, "Asia/Shanghai",  # the chain's zone: a replay sets none
        ),
    )

    def announced(change: LevelChange, event: dict[str, Any]) -> None:
        summary.events.append(event)
        if not change.exercise:
            summary.highest[change.site] = max(summary.highest.get(change.site, 0), change.level)

    script = sorted(acks or [], key=lambda a: a.t)
    acks_path = out_dir / "acks.jsonl"
    if script:
        acks_path.write_text("")
    if script and ordered:
        # An ack far outside the feed is a typo (milliseconds for seconds, a wrong year):
        # refused, or the replay would run timers for centuries to reach it.
        lo, hi = ordered[0].t - ACK_MARGIN_S, ordered[-1].t + ACK_MARGIN_S
        with open(acks_path, "a", encoding="utf-8") as fh:
            for a in [a for a in script if not lo <= a.t <= hi]:
                fh.write(json.dumps({"t": a.t, "site": a.site, "warning_id": a.id or None, "by": a.by, "note": a.note, "ok": False, "rule": "refused",
                                     "detail": "outside the feed's time span (± 1 day)"}, ensure_ascii=False) + "\n")
        script = [a for a in script if lo <= a.t <= hi]

    clock = EventClock(ordered[0].t if ordered else 0.0)
    scripted = AckScript(script, chain, acks_path, drill)
    judge = Judge(registry, AlertLog(alerts_path, None), clock, chain, announced=announced, timers=scripted)
    if ordered:
        judge.start(silence_from_now=False)
    for r in items:
        if isinstance(r, FeedStatus):
            summary.statuses += 1
            judge.status(r.site, r.device, r.status, r.t)
            continue
        info = registry.channel(r.site, r.device, r.channel)
        if info is None:
            rejects.append(FeedReject(0, f"{r.site}/{r.device}/{r.channel} is not in the registry", ""))
            continue
        judge.at(r.t)
        summary.readings += 1
        judge.reading(info, r.t, r.value, drill or r.drill)
    if ordered:
        judge.at(max([clock.now()] + [a.t for a in scripted.script]))
    summary.rejected = len(rejects)
    if plots and ordered:
        # A PNG per site (simulators.plots): displacement, velocity, inverse velocity, rain, levels.
        # matplotlib is the optional extra "plots": without it the replay is the same, unplotted.
        try:
            from geowarn.simulators.plots import plot_replay
        except ImportError as exc:
            log.warning("replay plots skipped: %s (pip install 'geowarn[plots]')", exc)
        else:
            plot_replay(ordered, registry, summary.events, out_dir / "plots")
    if rejects:
        with open(out_dir / "rejects.jsonl", "w", encoding="utf-8") as fh:
            for rej in rejects:
                fh.write(json.dumps({"line": rej.line, "reason": rej.reason, "text": rej.text}, ensure_ascii=False) + "\n")
    return summary


def sequence(rows: list[FeedRow], statuses: list[FeedStatus]) -> list[FeedRow | FeedStatus]:
    """The readings in event time (stable: readings of one time keep the feed's order), each
    status among them where the feed has it: after every reading that came before it in the
    file and before every later one of the same or a later time. Live applies a status by
    arrival, before the readings that arrived with or after it; in a feed in time order this
    is exactly that order. In a feed that is not, a status stands at the latest time the feed
    had reached (the readings before it in the file), so it never reaches back before a reading
    it followed."""
    if not statuses:  # the readings alone: sorted as they always were
        return [*sorted(rows, key=lambda r: r.t)]
    keyed: list[tuple[float, int, int, FeedRow | FeedStatus]] = []
    latest = float("-inf")
    marks = sorted(range(len(statuses)), key=lambda k: statuses[k].after)  # stable: file order
    j = 0
    for i, r in enumerate(rows):
        while j < len(marks) and statuses[marks[j]].after <= i:
            keyed.append((latest, 2 * i, j, statuses[marks[j]]))
            j += 1
        keyed.append((r.t, 2 * i + 1, 0, r))
        latest = max(latest, r.t)
    for k in marks[j:]:
        keyed.append((latest, 2 * len(rows), k, statuses[k]))
    keyed.sort(key=lambda x: x[:3])
    return [x[3] for x in keyed]


class AckScript:
    """An ack script as the judge's timed input: each ack at its own event time, its outcome
    appended to ``acks.jsonl``."""

    def __init__(self, script: list[ScriptedAck], chain: ResponseChain, path: Path, drill: bool) -> None:
        self.script = list(script)  # in time order
        self.chain = chain
        self.path = path
        self.drill = drill

    def next_deadline(self) -> float | None:
        return self.script[0].t if self.script else None

    def fire(self, now: float) -> None:
        a = self.script.pop(0)
        chain = self.chain
        exercise = self.drill if a.exercise is None else a.exercise
        state = chain.states.get((a.site, exercise)) if a.site else None
        wid = a.id or (state.warning_id if state is not None else None)
        if wid is None:
            outcome = {"ok": False, "rule": "refused", "detail": f"no warning at {a.site} to acknowledge"}
        else:
            try:
                tr = chain.ack(wid, a.by, a.note, a.t, a.level)
                outcome = {"ok": tr.rule != "ignored", "rule": tr.rule, "detail": tr.state.history[-1].detail if tr.state.history else ""}
            except KeyError as exc:
                outcome = {"ok": False, "rule": "refused", "detail": str(exc).strip("'\"")}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"t": rfc3339(a.t), "site": a.site, "warning_id": wid, "by": a.by, "note": a.note, **outcome}, ensure_ascii=False) + "\n")


class FeedCounts:
    """The feed's readings counted for the zero reports (``alerts.chain.ReadingCounts``), as
    the journal counts them live: real readings by (site, device) in an event-time window."""

    def __init__(self, ordered: list[FeedRow]) -> None:
        self._times: dict[tuple[str, str], list[float]] = {}
        for r in ordered:  # already in time order
            if not r.drill:
                self._times.setdefault((r.site, r.device), []).append(r.t)

    def readings_by_device(self, sites: Collection[str], since: float, until: float) -> Mapping[tuple[str, str], int]:
        wanted = set(sites)
        out = {}
        for key, times in self._times.items():
            if key[0] in wanted:
                n = bisect_left(times, until) - bisect_left(times, since)
                if n:
                    out[key] = n
        return out
