"""Detection as a journal consumer in its own process (stages 3–5 of DESIGN §1).

The ingest pipeline makes readings durable and acknowledges them; this worker reads the
journal after its saved position, runs site fusion (quality guards, detectors, no-data
timers) and emits alert events. Running in a separate process it has the second core to
itself, so the cost of the detectors never slows acknowledgement, and a burst only makes
detection lag for a moment (its lag is logged).

Its state is a fusion snapshot saved with the journal position it reflects, every
``snapshot_interval_s`` and at every stop; after a crash it restores the snapshot and reads
on from that position, so it neither repeats nor forgets a warning. A file lock keeps a
second worker (say, an orphan of a killed daemon) from judging the same journal at once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alerts.clock import Clock, EventClock, WallClock
from alerts.log import AlertLog
from config.settings import Loaded
from detectors.fusion import LevelChange, SiteFusion
from ingest.journal import Journal
from ingest.worker import WorkerProcess

log = logging.getLogger("geowarn.detection")

SITE_LEVELS_KEY = "fusion.site_levels"
SNAPSHOT_KEY = "fusion.snapshot"
BATCH = 5000


class Detection:
    """Fusion over the journal. Used in-process by tests and by the worker process below."""

    def __init__(self, loaded: Loaded, journal: Journal, publish: Any, clock: Clock) -> None:
        s = loaded.settings
        self.registry = loaded.registry
        self.journal = journal
        self.clock = clock
        self.fusion = SiteFusion(loaded.registry)
        self.alerts = AlertLog(Path(s.data_dir) / "alerts.jsonl", publish, s.topic_prefix)
        self.emitted = 0
        self.position = 0
        self._resume()

    # -- start -------------------------------------------------------------------------------

    def _resume(self) -> None:
        """From the last snapshot (exact), or without one from the recent journal; then
        reconcile with the levels already announced."""
        persisted: dict[str, int] = self.journal.get_state(SITE_LEVELS_KEY, {}) or {}
        snap = self.journal.get_state(SNAPSHOT_KEY)
        if snap is not None:
            self.fusion.restore(snap["state"])
            self.position = int(snap["position"])
            while self._consume(emit=False):
                pass
        else:
            horizon_s = max(site.policy.velocity_window_s for site in self.registry.sites.values())
            series = {sid: info for info, sid in self.journal.series_ids(self.registry).items()}
            for sid, info in series.items():
                latest = self.journal.latest_t_ms(sid)
                if latest is None:
                    continue
                for t_ms, value in self.journal.recent(sid, latest - int(horizon_s * 1000) - 1):
                    self.fusion.update_all(info, t_ms / 1000.0, value)
            self.position = self.journal.last_id()
        for site, level in persisted.items():
            if site in self.registry.sites and self.fusion.level(site) < level:
                # Keep what was announced; the detectors lower it in their own time.
                self.fusion.set_level(site, level)
        # A level the journal supports but never announced (a crash between commit and alert).
        for site in self.registry.sites:
            level, before = self.fusion.level(site), int(persisted.get(site, 0))
            if level > before:
                self._emit(LevelChange(site, self.clock.now(), level, before, "recomputed from the journal after a restart"))
        self._save_levels()
        self.fusion.nodata.due(self.clock.now())  # start the timers: a device that never reports is noticed too

    # -- the loop ----------------------------------------------------------------------------

    def _consume(self, emit: bool = True) -> int:
        """Judge the next batch of journal readings; returns how many were read."""
        rows = self.journal.read_after_received(self.position, BATCH)
        if not rows:
            return 0
        wall = not isinstance(self.clock, EventClock)
        changed = False
        for _id, site, device, channel, t_ms, value, drill, received_ms in rows:
            info = self.registry.channel(site, device, channel)
            if info is None:
                continue
            t = t_ms / 1000.0
            if not wall and not drill:
                self.clock.observe(t)  # type: ignore[attr-defined]
            for change in self.fusion.update_all(info, t, value, bool(drill), received_ms / 1000.0 if wall else None):
                if emit:
                    self._emit(change)
                    changed = changed or (not change.exercise and change.kind is None)
        self.position = rows[-1][0]
        if changed:
            self._save_levels()
        return len(rows)

    def step(self) -> int:
        """One round: a batch of readings, then the timers. Returns readings judged."""
        n = self._consume()
        now = self.clock.now()
        deadline = self.fusion.next_deadline()
        if deadline is not None and now >= deadline:
            for change in self.fusion.tick(now):
                self._emit(change)
        return n

    def save_snapshot(self) -> None:
        self.journal.set_state(SNAPSHOT_KEY, {"position": self.position, "state": self.fusion.snapshot()})

    def _save_levels(self) -> None:
        self.journal.set_state(SITE_LEVELS_KEY, {s: self.fusion.level(s) for s in self.registry.sites})

    def _emit(self, change: LevelChange) -> None:
        event = self.alerts.emit(change, self.registry.sites[change.site].admin)
        self.emitted += 1
        log.warning(
            "%s %s %s level %d (%s)%s: %s",
            event["t"], event["kind"].upper(), change.site, change.level, event["colour"], " [EXERCISE]" if change.exercise else "", change.reason,
        )


class DetectionJob:
    """The detection worker's job (ingest/worker.py runs it in its own process)."""

    def __init__(self, loaded: Loaded, publish: Any, journal_path: str, event_time: bool, start_t: float) -> None:
        self.journal = Journal(journal_path)
        clock: Clock = EventClock(start_t) if event_time else WallClock()
        self.detection = Detection(loaded, self.journal, publish, clock)

    def step(self) -> int:
        return self.detection.step()

    def checkpoint(self) -> None:
        self.detection.save_snapshot()

    def close(self) -> None:
        self.journal.close()


def detection_process(loaded: Loaded, journal_path: Path, *, event_time: bool = False, start_t: float = 0.0) -> WorkerProcess:
    return WorkerProcess("detection", DetectionJob, loaded, str(journal_path), event_time, start_t)
