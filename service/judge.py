"""The event-time judge: the one place where readings become level changes and the response
chain's actions, live and in replay (DESIGN §1 stages 3–5).

``Judge`` owns the order of things. A reading goes through site fusion; every level change it
causes is written to the alert log (alerts.jsonl and the retained MQTT event) and fed to the
response chain. Timers — fusion's no-data timers, the chain's ack, report and zero-report
deadlines, and any timed input a source brings (a replay's ack script, ``Timers``) — run by
``next_deadline``, each at its own time, in deadline order, fusion first on a tie (so a lift
beats an escalation that falls at the same instant).

What differs between live and replay is plugged in, not composed twice:

- the source: the detection worker (service/detection.py) reads journal rows, ``geowarn
  replay`` (service/replay.py) reads feed rows; each calls ``at(t)`` and ``reading(...)``,
  and ``status(...)`` for a device's status (its ``sensor_state``) before the readings that
  came with or after it;
- the sink: the chain's (``alerts.live.OutboxSink`` or ``alerts.chain.ReplayFiles``) and the
  alert log's publisher;
- the clock. With an ``EventClock`` (replay; a live daemon fed a recorded feed, the demo) the
  judge moves the clock itself, to each timer's deadline and then to the reading, so a timer
  acts at its own event time. With the wall clock the source calls ``at(now)`` after each
  batch (so a reading in hand is seen before its device is declared silent); no-data events
  then carry the clock's now and the chain's timers still fire each at its own deadline.

Live, the source passes each reading's arrival time: fusion holds a reading stamped ahead of
its arrival until the clock reaches its time (a fusion timer like no data), so one early
time stamp cannot put the true readings behind it out of order. Replay passes none and
judges in event time. Clock health events (``clock``, ``clock_ok``: a device whose readings
keep arriving out of order or ahead) go to the alert log like no-data events, but not to the
response chain: they change no level.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from geowarn.alerts.chain import ResponseChain
from geowarn.alerts.log import AlertLog
from geowarn.config.registry import ChannelInfo, Registry
from geowarn.core.clock import Clock, EventClock
from geowarn.core.events import LevelChange
from geowarn.core.logfields import kv
from geowarn.detectors.clockhealth import CLOCK_KINDS
from geowarn.detectors.fusion import SiteFusion

log = logging.getLogger(__name__)


class Timers(Protocol):
    """A source's own timed input, run in deadline order with fusion's and the chain's timers."""

    def next_deadline(self) -> float | None: ...

    def fire(self, now: float) -> None:
        """Act on what is due at ``now`` (the earliest deadline, at least)."""
        ...


class Judge:
    """Fusion → alert log → response chain, in event time.

    ``chain`` None: level changes go to the alert log only. ``held(change, now)`` True keeps a
    change from being announced (a device under maintenance is silent on purpose).
    ``announced(change, event)`` is told of every change announced (the replay's summary, the
    daemon's log line).
    """

    def __init__(
        self,
        registry: Registry,
        alerts: AlertLog,
        clock: Clock,
        chain: ResponseChain | None = None,
        *,
        held: Callable[[LevelChange, float], bool] | None = None,
        announced: Callable[[LevelChange, dict[str, Any]], None] | None = None,
        timers: Timers | None = None,
    ) -> None:
        self.registry = registry
        self.fusion = SiteFusion(registry)
        self.alerts = alerts
        self.clock = clock
        self.chain = chain
        self.held = held
        self.announced = announced
        self.timers = timers
        #: Level changes announced (written to the alert log) since this judge was made.
        self.emitted = 0

    # -- time ----------------------------------------------------------------------------------

    def _move(self, t: float) -> None:
        if isinstance(self.clock, EventClock):
            self.clock.observe(t)

    def start(self, *, silence_from_now: bool = True, fusion_timers: bool = True) -> list[LevelChange]:
        """Start the chain's clock (its zero reports are watched from now) and announce the
        no-data timers already due (devices silent while nobody judged); returns those.
        ``fusion_timers`` False: readings stored are still to be judged; fusion's timers run
        once they have been (``Detection.step``).

        ``silence_from_now``: a daemon starting counts a device it never hears from as silent
        from now; a replay (False) from its first real reading, so a drill feed never declares
        the real devices silent.
        """
        now = self.clock.now()
        if self.chain is not None:
            self.chain.tick(now)
        if not (silence_from_now and fusion_timers):
            return []
        ticked = self.fusion.tick(now)
        for change in ticked:
            self.announce(change)
        return ticked

    def replay_fusion_timers(self, t: float) -> None:
        """Fusion's timers due by ``t``, each at its own time, announcing nothing: what ``at``
        did to fusion's state while the readings up to ``t`` were judged before, for a restart
        replaying them silently in event time (the chain keeps its own state)."""
        fusion = self.fusion
        while (due := fusion.next_deadline()) is not None and due <= t:
            self._move(due)
            fusion.tick(self.clock.now())

    def at(self, t: float, *, fusion_timers: bool = True) -> list[LevelChange]:
        """Run every timer due up to ``t``, each at its own time, then (event time) move the
        clock to ``t``. Returns the changes fusion's timers announced (held readings judged,
        devices silent). ``fusion_timers`` False: the response chain's and the others' only
        (a restarted detection still replaying: ``Detection._resume_step``)."""
        fusion, chain, timers = self.fusion, self.chain, self.timers
        ticked: list[LevelChange] = []
        while True:
            f_due = fusion.next_deadline() if fusion_timers else None
            c_due = chain.next_deadline() if chain is not None else None
            x_due = timers.next_deadline() if timers is not None else None
            first = min((d for d in (f_due, c_due, x_due) if d is not None), default=None)
            if first is None or first > t:
                break
            self._move(first)
            when = self.clock.now()
            if f_due == first:
                for change in fusion.tick(when):
                    self.announce(change)
                    ticked.append(change)
            elif c_due == first:
                assert chain is not None
                # At its own deadline even when the wall clock is past it: after an outage each
                # overdue escalation goes out in turn, as it would have on time.
                chain.tick(first)
                nxt = chain.next_deadline()
                if nxt is not None and nxt <= first:  # the engine must move its timers on; never spin
                    raise RuntimeError(f"response chain: timer at {first} did not move on after a tick")
            else:
                assert timers is not None
                timers.fire(when)
        self._move(t)
        return ticked

    # -- readings ------------------------------------------------------------------------------

    def reading(
        self, info: ChannelInfo, t: float, value: float, exercise: bool = False, arrived: float | None = None, *, announce: bool = True
    ) -> list[LevelChange]:
        """Judge one reading; returns the changes it caused. ``announce`` False rebuilds state
        only (readings already judged before a restart). ``arrived``: see ``SiteFusion.update_all``."""
        changes = self.fusion.update_all(info, t, value, exercise, arrived)
        if announce:
            for change in changes:
                self.announce(change)
        return changes

    def arrived(self, now: float, *, announce: bool = True) -> list[LevelChange]:
        """Time ``now`` (an arrival) has come without a reading to judge: the held readings it
        reaches are judged (``SiteFusion.release``); returns the changes they caused."""
        changes = self.fusion.release(now)
        if announce:
            for change in changes:
                self.announce(change)
        return changes

    def status(self, site: str, device: str, status: Mapping[str, Any] | None, t: float) -> bool:
        """A device's status as its codec decoded it (``Decoded.status``), at ``t`` (the status's
        own time): its ``sensor_state`` tells fusion which of the device's sensors it reports
        faulty (``SiteFusion.sensor_state``). The source applies each status before the readings
        that arrived with or after it (live: by arrival; replay: in the feed's order). True when
        a channel's state changed; a status naming no sensors, or of a device not in the
        registry, changes nothing."""
        states = status.get("sensor_state") if isinstance(status, Mapping) else None
        if states is None or (site, device) not in self.registry.channels:
            return False
        changed = self.fusion.sensor_state(site, device, states, t)
        if changed:
            log.warning("sensor state changed", extra=kv(site=site, device=device, sensor_state=json.dumps(states, default=str)[:300]))
        return changed

    def announce(self, change: LevelChange) -> dict[str, Any] | None:
        """Write one change to the alert log and feed it to the chain; the event, or None when held."""
        now = self.clock.now()
        if self.held is not None and self.held(change, now):
            return None
        event = self.alerts.emit(change, self.registry.sites[change.site].admin)
        self.emitted += 1
        # A device's clock health is news for the duty officer's log and console, not a
        # warning: the alert engine has no event for it, and it changes no level.
        if self.chain is not None and change.kind not in CLOCK_KINDS:
            # The chain's timers (ack deadlines) run on the judge's clock: a level raised live
            # by a backlog of old readings gets its full ack deadline from now, not from the
            # past. In event time the two are the same instant. (The engine treats a clock
            # behind its state's time as standing still.)
            self.chain.feed(change if change.t == now else dataclasses.replace(change, t=now))
        if self.announced is not None:
            self.announced(change, event)
        return event
