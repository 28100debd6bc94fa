"""Site fusion: every channel's quality guard and detectors, and one level per site.

Per reading: the channel's quality guard looks first; a suspect reading (out of range, spike,
stuck, replayed) is counted and goes no further, so a suspect reading never raises a site.
Otherwise every detector of the channel judges it; a warming-up verdict carries no
information, so the channel keeps what its detectors last said (no data, or a restart of
smoothing after a gap, never lowers a level).

The site level is the highest channel level, under a confirmation policy: orange and red
need two independent devices at orange or above, or one plus a clean failure forecast within
66 hours (fit R² ≥ 0.95; all configurable per site). An unconfirmed orange or red is held at
yellow, and the explanation says so.

Why a forecast must be clean to confirm: it stands in for a second device, and it is the
one detector that can raise a channel on a fitted trend rather than a measured rate, so
without the bar it would confirm its own orange. The inverse-velocity line fits any stretch
of rising velocity; a real approach to failure keeps to the line ever closer (on the
extensometers of the simulated failures in ACCURACY.md: R² about 0.95 or more from 2–3 days
before failure, 0.99 or more at the first red), while a passing wobble of a slope already
moving fast — a reservoir-drawdown step at ~10 mm/day that levels off again — fits it only
roughly (R² 0.84–0.94 in the bundled `seasonal` scenario). Such a forecast still raises its
channel (and is reported), but confirms nothing. A channel held for want of confirmation
asks again at each of its readings, since a forecast may turn clean with no level changing.

Drills are judged apart from real data, so an exercise can never raise or lower a real
warning.

No data is a timer, not a reading: ``tick(now)`` reports devices that fell silent (and their
return) as their own events; they never change a level.
"""

from __future__ import annotations

from typing import Any

from geowarn.config.registry import DISPLACEMENT_LIKE, ChannelInfo, Kind, Registry
from geowarn.core.events import LevelChange
from geowarn.core.levels import LEVELS
from geowarn.detectors.contract import Detector
from geowarn.detectors.nodata import NoDataMonitor
from geowarn.detectors.quality import QualityGuard
from geowarn.detectors.slope import SharedWindows, SlopeWindows
from geowarn.detectors.threshold import ThresholdDetector
from geowarn.detectors.velocity import VelocityDetector
from geowarn.detectors.verdict import Verdict


def _name(level: int) -> str:
    """A level's colour in an explanation; level 0 reads "normal" there, not "none"."""
    return "normal" if level == 0 else LEVELS[level].colour


#: Typical reading noise (1 sigma, in the kind's default unit) of each displacement-like kind:
#: it sets the noise floors of the tangent angle and the forecast's reference velocity.
NOISE: dict[Kind, float] = {
    Kind.gnss_e: 3.0,
    Kind.gnss_n: 3.0,
    Kind.gnss_u: 6.0,
    Kind.displacement: 0.3,
    Kind.crack: 0.1,
    Kind.tilt: 0.01,
}
#: Persistence filters count time, not readings: half an hour of agreeing evaluations at
#: 10-minute sampling, a single one for daily or monthly readings.
PERSIST_S = 1800.0


def detectors_for(info: ChannelInfo, registry: Registry) -> list[tuple[str, Detector]]:
    """The detector set of one channel, from its kind, its spec and its site's policy.

    Windows and hold times never go below a few reporting intervals, so a monthly-sampled
    feed gets a velocity over months rather than a window that never holds two readings.

    A displacement-like channel's rate detectors share one ``SlopeWindows`` (the readings are
    kept, and each window's sums updated, once per channel); it comes first in the list as the
    stage ``"windows"``, which pushes the reading, never judges, and snapshots the windows.
    """
    from geowarn.detectors.inverse_velocity import InverseVelocityDetector
    from geowarn.detectors.rain import RainDetector
    from geowarn.detectors.rise import RiseRateDetector
    from geowarn.detectors.tangent import TangentAngleDetector

    policy = registry.sites[info.site].policy
    spec = info.spec
    interval = info.interval_s
    hold = max(policy.hold_s, 2 * interval)
    out: list[tuple[str, Detector]] = []
    if spec.thresholds is not None and spec.thresholds.as_list():
        out.append(("threshold", ThresholdDetector(spec.thresholds.as_list(), hysteresis=policy.hysteresis, hold_s=hold, unit=info.unit or "")))
    kind = spec.kind
    if kind in DISPLACEMENT_LIKE:
        window = max(policy.velocity_window_s, 6 * interval)
        persist = max(1, round(PERSIST_S / interval))
        noise = spec.noise if spec.noise is not None else NOISE[kind]
        unit = info.unit or ""
        levels = (spec.velocity_per_day or policy.velocity_per_day).as_list()
        shared = SlopeWindows()
        out.append(("windows", SharedWindows(shared)))
        if levels:
            out.append(
                (
                    "velocity",
                    VelocityDetector(levels, window_s=window, hysteresis=policy.hysteresis, hold_s=hold, unit=unit, persist=persist, windows=shared),
                )
            )
        out.append(
            (
                "tangent",
                TangentAngleDetector.for_channel(
                    window_s=window, interval_s=interval, hold_s=hold, noise_mm=noise, unit=unit, persist=persist, windows=shared
                ),
            )
        )
        horizons = ((2, policy.forecast_yellow_s), (3, policy.forecast_orange_s), (4, policy.forecast_red_s))
        out.append(
            (
                "forecast",
                InverseVelocityDetector.for_channel(
                    window_s=window,
                    interval_s=interval,
                    noise_mm=noise,
                    unit=unit,
                    horizons_s=horizons,
                    alpha=policy.voight_alpha,
                    persist=persist,
                    windows=shared,
                ),
            )
        )
    elif kind is Kind.rain:
        out.append(("rain", RainDetector.for_channel(interval_s=interval)))
    elif kind in (Kind.pore_pressure, Kind.groundwater):
        out.append(("rise", RiseRateDetector.for_kind(kind.value, interval_s=interval, hold_s=hold)))
    return out


class _Channel:
    __slots__ = ("info", "guard", "detectors", "levels", "verdicts", "level", "suspect")

    def __init__(self, info: ChannelInfo, guard: QualityGuard, detectors: list[tuple[str, Detector]]) -> None:
        self.info = info
        self.guard = guard
        self.detectors = detectors
        self.levels: dict[str, int] = {}
        self.verdicts: dict[str, Verdict] = {}
        self.level = 0
        self.suspect = 0

    def forecast(self) -> dict[str, Any] | None:
        v = self.verdicts.get("forecast")
        return None if v is None else v.evidence.get("forecast")

    def lead(self) -> tuple[str, Verdict] | None:
        best = None
        for name, v in self.verdicts.items():
            if best is None or self.levels.get(name, 0) > self.levels.get(best[0], 0):
                best = (name, v)
        return best


class _Site:
    __slots__ = ("level", "channels", "held")

    def __init__(self) -> None:
        self.level = 0
        self.channels: dict[str, _Channel] = {}
        self.held = False  # a channel is above the site level, for want of confirmation


class SiteFusion:
    """Feeds readings to channel guards and detectors; reports each change of a site's level."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._sites: dict[tuple[str, bool], _Site] = {}
        self.quality: dict[str, int] = {}  # suspect readings by flag
        intervals: dict[str, float] = {}
        for chans in registry.channels.values():
            for info in chans.values():
                intervals[info.device] = min(intervals.get(info.device, info.interval_s), info.interval_s)
        self.nodata = NoDataMonitor(intervals)

    # -- levels ------------------------------------------------------------------------------

    def level(self, site: str, exercise: bool = False) -> int:
        st = self._sites.get((site, exercise))
        return 0 if st is None else st.level

    def set_level(self, site: str, level: int, exercise: bool = False) -> None:
        """Restore a persisted site level (after a restart) without reporting a change."""
        self._site(site, exercise).level = level

    def _site(self, site: str, exercise: bool) -> _Site:
        st = self._sites.get((site, exercise))
        if st is None:
            st = self._sites[(site, exercise)] = _Site()
        return st

    def _channel(self, st: _Site, info: ChannelInfo) -> _Channel:
        key = f"{info.device}/{info.channel}"
        ch = st.channels.get(key)
        if ch is None:
            guard = QualityGuard.for_kind(info.kind, interval_s=info.interval_s, low=info.low, high=info.high)
            ch = st.channels[key] = _Channel(info, guard, detectors_for(info, self.registry))
        return ch

    # -- readings ----------------------------------------------------------------------------

    def update_all(
        self, info: ChannelInfo, t: float, value: float, exercise: bool = False, arrived: float | None = None
    ) -> list[LevelChange]:
        """Judge one reading; returns the events it causes (a device back from silence, a level change).

        ``arrived``: when the reading reached the daemon (live). Silence is judged by arrival,
        so a device draining a store-and-forward backlog is not silent; replay judges by event
        time.
        """
        out: list[LevelChange] = []
        if not exercise:
            back = self.nodata.seen(info.device, t if arrived is None else max(t, arrived))
            if back is not None:
                lvl = self.level(info.site)
                out.append(
                    LevelChange(info.site, t, lvl, lvl, f"{info.device}: data again after {back.silent_s / 3600:.1f} h of silence", {"device": info.device, "silent_s": back.silent_s}, False, "nodata_end")
                )
        st = self._site(info.site, exercise)
        ch = self._channel(st, info)
        g = ch.guard.update(t, value)
        if g.evidence.get("suspect"):
            ch.suspect += 1
            flag = str(g.evidence.get("flag", "suspect"))
            self.quality[flag] = self.quality.get(flag, 0) + 1
            return out
        changed = False
        for name, det in ch.detectors:
            v = det.update(t, value)
            if v.warming_up:
                continue
            if ch.levels.get(name) != v.level or name == "forecast":
                changed = changed or ch.levels.get(name) != v.level
                ch.levels[name] = v.level
            ch.verdicts[name] = v
        new_ch = max(ch.levels.values(), default=0)
        # While a channel is held above its site for want of confirmation, every reading of
        # the site asks again: a forecast that turns clean (or comes within the window), on
        # this channel or another, confirms without any level changing.
        if new_ch == ch.level and not changed and not st.held:
            return out
        ch.level = new_ch
        change = self._fuse(info.site, st, t, exercise)
        if change is not None:
            out.append(change)
        return out

    def _fuse(self, site: str, st: _Site, t: float, exercise: bool) -> LevelChange | None:
        policy = self.registry.sites[site].policy
        raw = max((c.level for c in st.channels.values()), default=0)
        lead_ch = max(st.channels.values(), key=lambda c: c.level) if st.channels else None
        level = raw
        notes: list[str] = []
        evidence: dict[str, Any] = {}
        # The earliest clean forecast decides confirmation (the safe side among those that may
        # confirm; see the module docstring); the one with the smallest stated uncertainty is
        # the one reported (a noisy GNSS fit is not the best estimate).
        forecast = best = rough = None
        for c in st.channels.values():
            f = c.forecast()
            if f is None or f.get("failure_time") is None:
                continue
            if best is None or f.get("uncertainty_s", float("inf")) < best.get("uncertainty_s", float("inf")):
                best = f
            if not f.get("r2", 0.0) >= policy.forecast_confirm_r2:
                if rough is None or f["failure_time"] < rough["failure_time"]:
                    rough = f
            elif forecast is None or f["failure_time"] < forecast["failure_time"]:
                forecast = f
        if raw >= policy.confirm_from_level:
            devices = sorted({c.info.device for c in st.channels.values() if c.level >= policy.confirm_from_level})
            soon = forecast is not None and forecast["failure_time"] - t <= policy.forecast_confirms_s
            if len(devices) >= policy.confirm_devices:
                notes.append(f"confirmed by {len(devices)} devices ({', '.join(devices)})")
            elif soon and forecast is not None:
                notes.append(f"confirmed by a failure forecast in {(forecast['failure_time'] - t) / 3600:.0f} h")
            else:
                level = policy.confirm_from_level - 1
                notes.append(f"{_name(raw)} not confirmed (only {', '.join(devices)}): held at {_name(level)}")
                if rough is not None and rough["failure_time"] - t <= policy.forecast_confirms_s:
                    notes.append(
                        f"the failure forecast in {(rough['failure_time'] - t) / 3600:.0f} h fits its line too roughly to confirm "
                        f"(R² {rough['r2']:.2f} < {policy.forecast_confirm_r2:g})"
                    )
            evidence["devices_at_or_above"] = devices
        st.held = raw > level
        if level == st.level:
            return None
        previous, st.level = st.level, level
        if lead_ch is not None and lead_ch.level > 0:
            lead = lead_ch.lead()
            name, v = lead if lead is not None else ("", Verdict(0))
            reason = f"{lead_ch.info.device}/{lead_ch.info.channel} {name}: {v.reason}"
            evidence.update({"channel": f"{lead_ch.info.device}/{lead_ch.info.channel}", "detector": name, **v.evidence})
        else:
            reason = "all channels back to normal"
        if notes:
            reason += "; " + "; ".join(notes)
        if best is not None:
            evidence["forecast"] = best
        return LevelChange(site, t, level, previous, reason, evidence, exercise)

    # -- timers ------------------------------------------------------------------------------

    def tick(self, now: float) -> list[LevelChange]:
        """No-data events due at ``now`` (clock time live, event time in replay)."""
        out = []
        for ev in self.nodata.due(now):
            site = self.registry.device_site.get(ev.device)
            if site is None:
                continue
            lvl = self.level(site)
            out.append(
                LevelChange(site, ev.t, lvl, lvl, f"{ev.device}: no data for {ev.silent_s / 3600:.1f} h (level held)", {"device": ev.device, "last_seen": ev.last_seen}, False, "nodata")
            )
        return out

    def next_deadline(self) -> float | None:
        return self.nodata.next_deadline()

    # -- persistence -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue exactly here after a restart (JSON-serialisable)."""
        sites: dict[str, Any] = {}
        for (site, exercise), st in self._sites.items():
            sites[f"{site}|{int(exercise)}"] = {
                "level": st.level,
                "channels": {
                    key: {
                        "level": ch.level,
                        "suspect": ch.suspect,
                        "levels": dict(ch.levels),
                        "verdicts": {n: v.to_dict() for n, v in ch.verdicts.items()},
                        "guard": ch.guard.snapshot(),
                        "detectors": {n: d.snapshot() for n, d in ch.detectors},
                    }
                    for key, ch in st.channels.items()
                },
            }
        return {"sites": sites, "quality": dict(self.quality), "nodata": self.nodata.snapshot()}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a snapshot. Sites, channels and detectors no longer in the registry
        are dropped; new ones start fresh (the registry may have changed between runs)."""
        self._sites.clear()
        self.quality = dict(state.get("quality", {}))
        for skey, sd in state.get("sites", {}).items():
            site, _, ex = skey.rpartition("|")
            if site not in self.registry.sites:
                continue
            st = self._site(site, ex == "1")
            st.level = int(sd["level"])
            st.held = True  # not in the snapshot: the first reading works it out again
            for key, cd in sd["channels"].items():
                device, _, channel = key.partition("/")
                info = self.registry.channel(site, device, channel)
                if info is None:
                    continue
                ch = self._channel(st, info)
                ch.level = int(cd["level"])
                ch.suspect = int(cd["suspect"])
                ch.guard.restore(cd["guard"])
                names = {n for n, _ in ch.detectors}
                ch.levels = {n: int(v) for n, v in cd["levels"].items() if n in names}
                ch.verdicts = {n: Verdict.from_dict(v) for n, v in cd["verdicts"].items() if n in names}
                for name, det in ch.detectors:
                    if name in cd["detectors"]:
                        det.restore(cd["detectors"][name])
        if "nodata" in state:
            self.nodata.restore(state["nodata"])
