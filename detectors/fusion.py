"""Site fusion: every channel's quality guard and detectors, and one level per site.

Per reading: the channel's quality guard looks first; a suspect reading (out of range, spike,
stuck, replayed) is counted and goes no further, so a suspect reading never raises a site.
Otherwise every detector of the channel judges it; a warming-up verdict carries no
information, so the channel keeps what its detectors last said (no data, or a restart of
smoothing after a gap, never lowers a level).

The site level is the highest channel level, under a confirmation policy: orange and red
need two independent devices at orange or above, or one plus a clean failure forecast within
66 hours (fit R² ≥ 0.95; all configurable per site). Each level is confirmed on its own
evidence: two devices confirm the level both of them reach, a forecast the level its time to
failure reaches (red only within ``forecast_red_s``, 15 h; orange within 66 h), so a crack
meter at red with a forecast 60 h away makes the site orange, not red — on slopes failing by
Voight's law the first orange had been the red itself (issue 14 item 5). An unconfirmed orange
or red is held at the highest confirmed level, at least yellow, and the explanation says so,
with the confirming forecast's uncertainty. Once confirmed, a level holds while its evidence does:
it is not dropped because the second device or the forecast stops confirming while a channel
still stands at it, only once no channel is at it any more — after each channel's own hold —
and the reason of a level that comes down says first, in plain words, why ("back to yellow:
no device above the orange threshold for 6 h").

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

Sensors their device reports faulty. A device of the national convention says per sensor in
its status whether it is healthy (``sensor_state`` 0) or not (negative: -2 is the firmware's
CHANNEL_DATA_ERR); ``sensor_state(...)`` tells fusion. A reading of a channel whose sensor
is reported faulty is stored but judged like a suspect one: counted
(``quality["sensor_fault"]``), kept out of every detector's window, so it can never raise
the site. The channel keeps the level it had (a fault is no data, and no data never lowers
a level) but lends it to no raise and no confirmation: the site may stand at that level, not
above it for that channel's sake; every level change of the site names the faulty sensors
("sensor reported faulty (sensor_state -2) since …"). When the device reports 0 again the
channel counts again from its next reading. Positive or non-numeric codes have no documented
meaning and change nothing. The faults are part of the snapshot.

No data is a timer, not a reading: ``tick(now)`` reports devices that fell silent (and their
return) as their own events; they never change a level.

Clocks (live only, when ``arrived`` is given). The quality guard judges order against the
last accepted event time, so one reading stamped ahead of the true time — anything up to the
codec's future-skew allowance (300 s) — would make every true reading stamped before it "out
of order": a store-and-forward backlog, or a feed published with backdated times, would go
unjudged and the slope behind it stay at level 0. So a reading stamped more than
``AHEAD_TOLERANCE_S`` ahead of its arrival is *held* and judged only once the clock reaches
its time (``tick`` at that deadline, or the first reading that arrives after it): the true
readings stamped before it are judged first, in order, and the held one is then judged like
any other (the spike and step-back guards see it, in its place). It can delay, never blind.
Held readings are bounded per channel (``held_limit``: what a clock at the full allowance
needs; past it, the reading stamped furthest ahead is refused and counted,
``quality["ahead_overflow"]``) and are part of the snapshot,
so a restart loses none. Replay (``arrived`` None) judges in event time exactly as before.
The normal reading costs one float comparison (and one dict lookup for its device's health).

Clock health. A device whose readings keep arriving out of order, stamped ahead of their
arrival, or as conflicting duplicates has a clock (or a logger) that is wrong, and a duty
officer should hear of it once: when ``CLOCK_TROUBLE_AT`` of its last ``CLOCK_WINDOW``
readings were such, fusion reports a ``clock`` event, and ``clock_ok`` once its last
``CLOCK_WINDOW`` readings are clean again. They change no level. They are timed in event
time (the channel's last accepted time; for a reading held for being early, its arrival),
so live and replay agree on everything but "ahead", which only a live daemon can see. Per
device counts (``clock_health()``) go to the console, ``/metrics`` and the zero report; only
devices that ever had a bad time stamp take any memory.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import math
import zlib
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from types import MappingProxyType
from typing import Any, cast

from geowarn.config.registry import (
    DISPLACEMENT_LIKE,
    PEAK_KINDS,
    RISE_KINDS,
    ChannelInfo,
    Kind,
    Registry,
)
from geowarn.core.events import LevelChange
from geowarn.core.levels import LEVELS
from geowarn.core.timefmt import rfc3339
from geowarn.detectors.clockhealth import CLOCK_FAULTS, CLOCK_TROUBLE_AT, CLOCK_WINDOW
from geowarn.detectors.contract import Detector
from geowarn.detectors.inverse_velocity import InverseVelocityDetector
from geowarn.detectors.nodata import NoDataMonitor
from geowarn.detectors.noise import noise_for
from geowarn.detectors.quality import QualityGuard
from geowarn.detectors.rain import RainDetector, RainThresholds
from geowarn.detectors.rise import RiseRateDetector
from geowarn.detectors.slope import SharedWindows, SlopeWindows
from geowarn.detectors.tangent import TangentAngleDetector
from geowarn.detectors.threshold import ThresholdDetector
from geowarn.detectors.velocity import VelocityDetector
from geowarn.detectors.verdict import Verdict


def _forecast_words(f: dict[str, Any], t: float) -> str:
    """A forecast as a confirmation names it: time to failure, its uncertainty and its fit."""
    unc = f.get("uncertainty_s")
    pm = "" if unc is None else f" ± {unc / 3600:.0f} h"
    return f"a failure forecast in {(f['failure_time'] - t) / 3600:.0f} h{pm} (R² {f.get('r2', float('nan')):.2f})"


def _state_code(raw: Any) -> float | None:
    """A ``sensor_state`` code as a number (a JSON number or a numeric string); None otherwise."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        return float(raw) if math.isfinite(raw) else None
    if isinstance(raw, str) and len(raw) <= 16:
        try:
            v = float(raw)
        except ValueError:
            return None
        return v if math.isfinite(v) else None
    return None


def _name(level: int) -> str:
    """A level's colour in an explanation; level 0 reads "normal" there, not "none"."""
    return "normal" if level == 0 else LEVELS[level].colour


#: A reading stamped more than this ahead of its arrival is held until the clock reaches its
#: time (see the module docstring). Small: a reading judged at once can put at most this much
#: of a backlog behind it out of order; an NTP-synced logger's clock is well within it.
AHEAD_TOLERANCE_S = 2.0
#: Readings held per channel at most: a channel whose clock runs at the codec's full
#: allowance (``AHEAD_SKEW_S``) holds ``AHEAD_SKEW_S / interval`` of them, so the bound is that
#: (plus a margin, at least ``MIN_HELD``, at most ``MAX_HELD``): a fast-reporting channel with a
#: fast clock loses none of its readings, and a flood of early readings cannot grow memory.
AHEAD_SKEW_S = 300.0
MIN_HELD = 16
MAX_HELD = 512
#: A reading held for being early counts against its device's clock only when it is this far
#: ahead: a logger a few seconds fast is held those seconds, and is not "a wrong clock".
CLOCK_AHEAD_REPORT_S = 30.0
#: A device's clock events (``clock`` after ``clock_ok`` or a ``clock`` after the last one) are
#: at least this far apart in event time: a device flapping around the threshold, or a message
#: of 10,000 readings built to, cannot flood the alert log.
CLOCK_EVENT_EVERY_S = 3600.0
# Clock health thresholds (CLOCK_WINDOW, CLOCK_TROUBLE_AT) and names: detectors/clockhealth.py.
_FAULT_OF_FLAG = {"out_of_order": 0, "duplicate_conflict": 2}
_WINDOW_MASK = (1 << CLOCK_WINDOW) - 1

#: Persistence filters count time, not readings: half an hour of agreeing evaluations at
#: 10-minute sampling, a single one for daily or monthly readings.
PERSIST_S = 1800.0
#: ...and a velocity level must also hold across windows for this long at most (half a window).
PERSIST_ACROSS_S = 3 * 3600.0


def _persist_s(window_s: float, interval_s: float) -> float:
    """How long a velocity level must be supported before it is reached (issue 14 item 4):
    half the window, at most ``PERSIST_ACROSS_S`` — the hours over which GNSS noise stays
    correlated, not a count of readings (three half-hourly epochs are only 1.5 h). 0 (the
    count ``persist`` alone) when that is not longer than one reporting interval: a daily or
    monthly series is judged reading by reading, as before."""
    p = min(window_s / 2, PERSIST_ACROSS_S)
    return p if p > interval_s else 0.0


def held_limit(interval_s: float) -> int:
    """How many early readings one channel may hold (see ``MIN_HELD``)."""
    if not interval_s > 0:
        return MIN_HELD
    return max(MIN_HELD, min(MAX_HELD, math.ceil(AHEAD_SKEW_S / interval_s) + 4))


def detector_names(info: ChannelInfo, registry: Registry) -> tuple[str, ...]:
    """The names of the stages ``detectors_for`` gives a channel, in its order, building none
    (a restore keeps only the saved verdicts of stages the channel still has)."""
    policy = registry.sites[info.site].policy
    spec = info.spec
    names = ["threshold"] if spec.thresholds is not None and spec.thresholds.as_list() else []
    if spec.kind in DISPLACEMENT_LIKE:
        names.append("windows")
        if (spec.velocity_per_day or policy.velocity_per_day).as_list():
            names.append("velocity")
        names += ["tangent", "forecast"]
    elif spec.kind is Kind.rain:
        names.append("rain")
    elif spec.kind in RISE_KINDS:
        names.append("rise")
    return tuple(names)


def detectors_for(info: ChannelInfo, registry: Registry) -> list[tuple[str, Detector]]:
    """The detector set of one channel, from its kind, its spec and its site's policy.

    Windows and hold times never go below a few reporting intervals, so a monthly-sampled
    feed gets a velocity over months rather than a window that never holds two readings.

    A displacement-like channel's rate detectors share one ``SlopeWindows`` (the readings are
    kept, and each window's sums updated, once per channel); it comes first in the list as the
    stage ``"windows"``, which pushes the reading, never judges, and snapshots the windows.

    The reading noise the rate detectors judge with is ``detectors.noise.noise_for``: the
    channel's ``noise`` as the registry states it, or an estimated one (``noise_source`` =
    "estimated", e.g. a registry built from a feed) never below the kind's physical floor, or
    that floor; their evidence says which.
    """
    policy = registry.sites[info.site].policy
    spec = info.spec
    interval = info.interval_s
    hold = max(policy.hold_s, 2 * interval)
    names = detector_names(info, registry)
    out: list[tuple[str, Detector]] = []
    if "threshold" in names and spec.thresholds is not None:
        out.append(
            (
                "threshold",
                ThresholdDetector(spec.thresholds.as_list(), hysteresis=policy.hysteresis, hold_s=hold, unit=info.unit or "", magnitude=spec.kind in PEAK_KINDS),
            )
        )
    kind = spec.kind
    if "windows" in names:
        window = max(policy.velocity_window_s, 6 * interval)
        persist = max(1, round(PERSIST_S / interval))
        unit = info.unit or ""
        estimated = spec.noise_source == "estimated"
        noise = noise_for(kind, unit or None, stated=None if estimated else spec.noise, estimated=spec.noise if estimated else None)
        levels = (spec.velocity_per_day or policy.velocity_per_day).as_list()
        shared = SlopeWindows()
        out.append(("windows", SharedWindows(shared)))
        if "velocity" in names:
            out.append(
                (
                    "velocity",
                    VelocityDetector.alike(
                        levels,
                        window_s=window,
                        hysteresis=policy.hysteresis,
                        hold_s=hold,
                        unit=unit,
                        persist=persist,
                        windows=shared,
                        noise=noise,
                        persist_s=_persist_s(window, interval),
                    ),
                )
            )
        out.append(
            (
                "tangent",
                TangentAngleDetector.for_channel(
                    window_s=window, interval_s=interval, hold_s=hold, unit=unit, persist=persist, windows=shared, noise=noise
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
                    noise=noise,
                    unit=unit,
                    horizons_s=horizons,
                    alpha=policy.voight_alpha,
                    persist=persist,
                    windows=shared,
                    # A forecast only for a slope at least at the yellow velocity (issue 14 item 3).
                    min_velocity=dict(levels).get(2, 0.0),
                ),
            )
        )
    elif "rain" in names:
        own = None if policy.rain is None else RainThresholds(**policy.rain.detector_args())
        out.append(("rain", RainDetector.for_channel(interval_s=interval, thresholds=own)))
    elif "rise" in names:
        out.append(("rise", RiseRateDetector.for_kind(kind.value, interval_s=interval, hold_s=hold)))
    # Acceleration and vibration (PEAK_KINDS), stress and soil temperature are judged by their
    # thresholds only, when the registry sets them: the quality guard still watches them.
    return out


#: What a saved part a detector cannot restore raises (the registry changed the channel's
#: kind so that its guard has other checks; a hand-edited or damaged row).
_UNREADABLE = (KeyError, TypeError, ValueError, IndexError, AttributeError)


class _Channel:
    """A channel's detectors and what fusion keeps of their verdicts.

    A channel is in one of three forms. *Live*: its guard and detectors are built (``guard``
    set). *Saved*: restored from an old row, it keeps its guard's and detectors' saved parts
    as parsed JSON (``saved``) and builds them on its first reading (``SiteFusion._unpack``).
    *Parked*: ``text`` holds its levels, verdicts, guard and detectors as compressed JSON (the
    ``z`` of its saved row, ``SiteFusion.site_row``), and nothing else of them is in memory; a
    reading, or its site's fusion needing its verdicts, unparks it (``SiteFusion._wake``).
    *Spilled*: parked, and its text saved (the journal's ``channel_state``): ``text`` is
    ``_SPILLED``, and the text is read back when the channel is needed (``SiteFusion._fetch``).
    Only ``level``, ``suspect``, ``held``, ``touched`` and ``gap`` stay live in every form: a quiet
    channel of the national fleet costs its compressed text (~1–2 KB) parked, and its
    ``_Channel`` alone (~150 bytes) spilled, instead of its live objects (~6–8 KB)."""

    __slots__ = ("detectors", "gap", "guard", "held", "info", "level", "levels", "saved", "suspect", "text", "touched", "verdicts")

    def __init__(self, info: ChannelInfo, guard: QualityGuard | None, detectors: list[tuple[str, Detector]], saved: dict[str, Any] | None = None) -> None:
        self.info = info
        self.guard = guard  # None while ``saved`` or ``text`` holds the bank
        self.detectors = detectors
        self.saved = saved
        self.text: bytes | None = None  # parked: zlib of the JSON body (see the class docstring)
        self.levels: dict[str, int] = {}
        self.verdicts: dict[str, Verdict] = {}
        self.level = 0
        self.suspect = 0
        self.held = 0  # readings of this channel waiting in SiteFusion._held
        #: When it was last judged a reading (its arrival, or its time in event time): parking
        #: (``SiteFusion.park_after_s``) goes by it, so a replay parks as the live run did.
        self.touched = -math.inf
        self.gap = math.inf  # from its reading before to its last (inf: one reading so far)

    def forecast(self) -> dict[str, Any] | None:
        v = self.verdicts.get("forecast")
        return None if v is None else v.evidence.get("forecast")

    def lead(self) -> tuple[str, Verdict] | None:
        best = None
        for name, v in self.verdicts.items():
            if best is None or self.levels.get(name, 0) > self.levels.get(best[0], 0):
                best = (name, v)
        return best


#: What unpacking a parked channel's text raises on a damaged row (besides _UNREADABLE).
_UNPARKABLE = (zlib.error, binascii.Error, UnicodeDecodeError, RecursionError, OverflowError) + _UNREADABLE


#: The most a parked channel's text may inflate to: a minute-sampled channel's body is ~100 KB;
#: a hand-made row that inflates to gigabytes is refused like any damaged one.
_MAX_BODY = 64 * 2**20


def _inflate(text: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(text, _MAX_BODY)
    if d.unconsumed_tail:
        raise ValueError(f"inflates past {_MAX_BODY} bytes")
    if not d.eof:
        raise ValueError("truncated")
    return out


def _level(v: Any) -> int:
    lv = int(v)
    if not 0 <= lv <= 4:
        raise ValueError(f"level must be 0-4, got {lv}")
    return lv


def _opened(body: Any, names: Collection[str]) -> tuple[dict[str, Any], dict[str, int], dict[str, Verdict]]:
    """A channel's saved body (a parked text's, or a channel of a row from before ``z``),
    checked: (saved bank, levels, verdicts) of the stages in ``names``."""
    saved = {"guard": body["guard"], "detectors": {n: d for n, d in body["detectors"].items() if n in names}}
    levels = {n: _level(v) for n, v in body["levels"].items() if n in names}
    verdicts = {n: Verdict.from_dict(v) for n, v in body["verdicts"].items() if n in names}
    fv = verdicts.get("forecast")
    fc = None if fv is None else fv.evidence.get("forecast")
    if fc is not None:
        if not isinstance(fc, dict):
            raise TypeError("forecast evidence is not a mapping")
        for k in ("failure_time", "r2", "uncertainty_s"):
            if fc.get(k) is not None and (isinstance(fc[k], bool) or not isinstance(fc[k], (int, float))):
                raise TypeError(f"forecast {k} is not a number")
    return saved, levels, verdicts

#: A parked channel's detectors, levels and verdicts: shared and read-only, so that a path
#: which forgot to unpark fails loudly instead of writing into every parked channel at once.
_NO_DETECTORS = cast("list[tuple[str, Detector]]", ())
_NO_LEVELS = cast("dict[str, int]", MappingProxyType({}))
_NO_VERDICTS = cast("dict[str, Verdict]", MappingProxyType({}))

_JSON = json.JSONEncoder(separators=(",", ":"), check_circular=False, ensure_ascii=False).encode


#: The ``text`` of a spilled channel (``_Channel``): compared by identity only.
_SPILLED = b"(saved)"


def _park(ch: _Channel, text: bytes) -> None:
    ch.text, ch.guard, ch.detectors, ch.saved = text, None, _NO_DETECTORS, None
    ch.levels, ch.verdicts = _NO_LEVELS, _NO_VERDICTS


class _Health:
    """One device's recent time stamps: per kind of fault a bit per reading (1: that fault),
    newest in the lowest bit, ``CLOCK_WINDOW`` bits."""

    __slots__ = ("counts", "last_event", "masks", "seen", "site", "trouble")

    def __init__(self, site: str) -> None:
        self.site = site
        self.masks = [0, 0, 0]  # by CLOCK_FAULTS
        self.seen = 0  # readings since tracking began, up to CLOCK_WINDOW
        self.trouble = False
        self.counts = [0, 0, 0]  # cumulative, by CLOCK_FAULTS
        self.last_event = -math.inf  # event time of its last clock / clock_ok event

    def in_window(self) -> list[int]:
        return [m.bit_count() for m in self.masks]

    def bad(self) -> int:
        m0, m1, m2 = self.masks
        return (m0 | m1 | m2).bit_count()

    def to_json(self) -> dict[str, Any]:
        return {"site": self.site, "masks": list(self.masks), "seen": self.seen, "trouble": self.trouble, "counts": list(self.counts),
                "last_event": None if self.last_event == -math.inf else self.last_event}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Health:
        h = cls(str(d["site"]))
        h.masks = [int(x) & _WINDOW_MASK for x in d["masks"]]
        h.seen, h.trouble = int(d["seen"]), bool(d["trouble"])
        h.counts = [int(x) for x in d["counts"]]
        last = d.get("last_event")
        h.last_event = -math.inf if last is None else float(last)
        return h


class _Site:
    __slots__ = ("channels", "confirmed", "held", "level", "quality")

    def __init__(self) -> None:
        self.level = 0
        self.channels: dict[str, _Channel] = {}
        self.quality: dict[str, int] = {}  # suspect readings by flag
        self.held = False  # a channel is above the site level, for want of confirmation
        #: The highest level confirmed since the channels last stood below the confirmation
        #: level (0: none): it stays confirmed while the evidence does (see ``_fuse``).
        self.confirmed = 0


class SiteFusion:
    """Feeds readings to channel guards and detectors; reports each change of a site's level."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._sites: dict[tuple[str, bool], _Site] = {}
        #: Suspect readings by flag counted before counts were kept per site (an old snapshot).
        self._quality_base: dict[str, int] = {}
        #: Sites whose state changed since it was last saved (``site_state``), oldest change
        #: first: site -> ``dirty_mark`` as it was when the site changed. The saver sets the
        #: mark (service/detection.py: the journal positions before the batch being judged).
        self.dirty: dict[str, Any] = {}
        self.dirty_mark: Any = None
        self._site_devices: dict[str, list[str]] = {}
        intervals: dict[str, float] = {}
        for (site, device), chans in registry.channels.items():
            self._site_devices.setdefault(site, []).append(device)
            for info in chans.values():
                intervals[info.device] = min(intervals.get(info.device, info.interval_s), info.interval_s)
        self.nodata = NoDataMonitor(intervals)
        #: Readings stamped ahead of their arrival, waiting for the clock to reach their time:
        #: a heap of (t, seq, info, value, exercise, arrived); seq keeps arrival order on a tie.
        self._held: list[tuple[float, int, ChannelInfo, float, bool, float]] = []
        self._held_next = math.inf  # the earliest held t (inf: none), one comparison per reading
        self._seq = 0
        #: Clock health of the devices that ever sent a bad time stamp (see the module docstring).
        self._health: dict[str, _Health] = {}
        #: Sensors their device reports faulty: (site, device, channel) -> (sensor_state, since t).
        self._faults: dict[tuple[str, str, str], tuple[float, float]] = {}
        #: Saved parts a restored channel could not restore and started afresh instead: (site,
        #: device, channel, part, error), for the service to report (this room does no I/O).
        self.unreadable: list[tuple[str, str, str, str, str]] = []
        #: Sites whose saved entry the last restore could not read: they start afresh.
        self.failed: set[str] = set()
        #: Sites of which the last restore dropped a channel with a text saved apart (the
        #: registry no longer has it): the service deletes such texts with the sites' next rows
        #: (``text_keys``).
        self.dropped: set[str] = set()
        #: Park a channel (``_Channel``) not judged a reading for this long, by the readings'
        #: own arrival (event) times, when its site's row is written (``site_row``); None: never.
        self.park_after_s: float | None = None
        self._newest = -math.inf  # the latest ``touched`` of any channel
        #: A channel's packed text as last saved, by (site, key) (``site_rows``), or None: set
        #: by the service that saves them, it lets parked channels be spilled (``spill``): their
        #: text is then kept saved only, and read back when needed (``_fetch``).
        self.text_source: Callable[[str, str], bytes | None] | None = None
        #: Park a channel whose readings come ``park_after_s`` apart or more right after its
        #: reading (``park_judged``), not at its site's next save: what a service at the head of
        #: its stream sets (a ten-minute channel then holds its text, not its live objects,
        #: until its site is saved); a replay or a backlog leaves it off, its channels' next
        #: readings being moments away.
        self.eager = False
        self._judged: list[_Channel] = []
        #: The most channels kept live (built) at once, or None: no limit. Past it, the least
        #: recently judged are parked (``park_over_budget``), whatever their rhythm: a storm
        #: that has every device of a national fleet report each minute makes detection
        #: slower (a reading of a parked channel wakes it), never run out of memory.
        self.live_max: int | None = None
        #: The live channels, least recently judged first (a channel's reading moves it last).
        self._live: OrderedDict[_Channel, None] = OrderedDict()

    @property
    def quality(self) -> dict[str, int]:
        """Suspect readings by flag, all sites (counted per site, so a site's saved state holds its own)."""
        out = dict(self._quality_base)
        for st in self._sites.values():
            for flag, n in st.quality.items():
                out[flag] = out.get(flag, 0) + n
        return out

    # -- levels ------------------------------------------------------------------------------

    def level(self, site: str, exercise: bool = False) -> int:
        st = self._sites.get((site, exercise))
        return 0 if st is None else st.level

    def raw_level(self, site: str, exercise: bool = False) -> int:
        """The highest channel level of a site, before confirmation (what the devices say)."""
        st = self._sites.get((site, exercise))
        return max((c.level for c in st.channels.values()), default=0) if st is not None else 0

    def set_level(self, site: str, level: int, exercise: bool = False) -> None:
        """Restore a persisted site level (after a restart) without reporting a change. A
        level at or above the confirmation level was confirmed when it was reached."""
        st = self._site(site, exercise)
        st.level = level
        if level >= self.registry.sites[site].policy.confirm_from_level:
            st.confirmed = max(st.confirmed, level)

    def _site(self, site: str, exercise: bool) -> _Site:
        if site not in self.dirty:  # whoever asks for a site's state may change it
            self.dirty[site] = self.dirty_mark
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
            self._live[ch] = None
        return ch

    def _wake(self, ch: _Channel, bank: bool = True) -> None:
        """Unpark a channel: its levels and verdicts back, its bank's saved parts kept to be
        built on its next reading (``_unpack``). A stage the registry no longer gives it is
        dropped with its level and verdict (a row written before the registry changed); a text
        that cannot be read starts the channel afresh, reported in ``unreadable``."""
        info, text = ch.info, ch.text
        assert text is not None
        if text is _SPILLED:
            text = self._fetch(ch)
            if text is None:  # it could not be read back: started afresh, reported
                return
        try:
            saved, levels, verdicts = _opened(json.loads(_inflate(text)), detector_names(info, self.registry))
        except _UNPARKABLE as exc:
            self.unreadable.append((info.site, info.device, info.channel, "parked", f"{type(exc).__name__}: {exc}"[:200]))
            ch.text, ch.saved, ch.levels, ch.verdicts = None, None, {}, {}
            return
        if not bank:  # levels and verdicts only (the site's fusion): the text (kept, or saved) holds them all
            ch.levels, ch.verdicts = levels, verdicts
            return
        ch.text, ch.saved, ch.levels, ch.verdicts = None, saved, levels, verdicts

    def _text_key(self, ch: _Channel) -> str:
        """A channel's key among its site's saved texts: ``"<0|1>:<device>/<channel>"``."""
        key = f"{ch.info.device}/{ch.info.channel}"
        st = self._sites.get((ch.info.site, False))
        return f"{0 if st is not None and st.channels.get(key) is ch else 1}:{key}"

    def _fetch(self, ch: _Channel) -> bytes | None:
        """A spilled channel's text read back (it stays spilled), or None: then it could not be
        (none saved, or ``text_source`` failing on a damaged file) and the channel starts
        afresh, reported in ``unreadable`` as a damaged parked text is."""
        info = ch.info
        try:
            if self.text_source is None:
                raise ValueError("no saved texts to read it back from")
            text = self.text_source(info.site, self._text_key(ch))
            if text is None:
                raise ValueError("its saved text is gone")
            return text
        except _UNPARKABLE as exc:
            self.unreadable.append((info.site, info.device, info.channel, "spilled", f"{type(exc).__name__}: {exc}"[:200]))
        ch.text, ch.saved, ch.levels, ch.verdicts = None, None, {}, {}
        return None

    def park_judged(self) -> int:
        """Park the channels ``eager`` marked as their readings were judged (see ``eager``);
        returns how many. Their texts are saved with their sites' rows (``site_rows``)."""
        n = 0
        for ch in self._judged:
            if ch.text is None:
                self._park_live(ch, zlib.compress(_JSON(self._body(ch)).encode(), 1))
                n += 1
        self._judged = []
        return n

    def _park_live(self, ch: _Channel, text: bytes) -> None:
        """Park a channel, and count it live no more."""
        _park(ch, text)
        self._live.pop(ch, None)

    @property
    def live(self) -> int:
        """How many channels are live (their detectors built)."""
        return len(self._live)

    def park_over_budget(self) -> set[str]:
        """Past ``live_max`` live channels, park the least recently judged until a tenth of
        the budget is free (so this is not paid again at the next reading); returns their
        sites, marked changed: their texts go with the sites' next rows (``site_rows``), and
        are spilled once saved. Between batches, as ``park_judged``."""
        cap, live = self.live_max, self._live
        if cap is None or len(live) <= cap:
            return set()
        sites: set[str] = set()
        target = cap - cap // 10
        while len(live) > target:
            ch, _ = live.popitem(last=False)
            if ch.text is not None or ch.guard is None:
                continue  # parked or reset meanwhile (a damaged text): nothing built to park
            site = ch.info.site
            key = f"{ch.info.device}/{ch.info.channel}"
            if not any((st := self._sites.get((site, ex))) is not None and st.channels.get(key) is ch for ex in (False, True)):
                continue  # a site restored afresh since: the channel is gone with it
            _park(ch, zlib.compress(_JSON(self._body(ch)).encode(), 1))
            if site not in self.dirty:
                self.dirty[site] = self.dirty_mark
            sites.add(site)
        return sites

    def spill(self, sites: Iterable[str]) -> None:
        """The parked channels of these sites, whose texts (``site_rows``) were just saved, keep
        them saved only (see ``_Channel``). Nothing without a ``text_source``."""
        if self.text_source is None:
            return
        for site in sites:
            for ex in (False, True):
                st = self._sites.get((site, ex))
                if st is not None:
                    for ch in st.channels.values():
                        if ch.text is not None:  # (spilled already: the levels its fusion opened go)
                            _park(ch, _SPILLED)

    def _unpack(self, ch: _Channel) -> QualityGuard:
        """Build a restored channel's guard and detectors from its saved parts (see ``_Channel``);
        a detector the registry no longer gives it is dropped with its level and verdict."""
        if ch.text is not None:
            self._wake(ch)
        info, saved = ch.info, ch.saved or {}
        guard = QualityGuard.for_kind(info.kind, interval_s=info.interval_s, low=info.low, high=info.high)
        detectors = detectors_for(info, self.registry)
        try:
            if "guard" in saved:
                guard.restore(saved["guard"])
        except _UNREADABLE as exc:
            self.unreadable.append((info.site, info.device, info.channel, "guard", f"{type(exc).__name__}: {exc}"[:200]))
            guard = QualityGuard.for_kind(info.kind, interval_s=info.interval_s, low=info.low, high=info.high)
        states = saved.get("detectors", {})
        try:
            for name, det in detectors:
                if name in states:
                    det.restore(states[name])
        except _UNREADABLE as exc:
            # The rate detectors share their windows: the channel's detectors start afresh together.
            self.unreadable.append((info.site, info.device, info.channel, name, f"{type(exc).__name__}: {exc}"[:200]))
            detectors, ch.levels, ch.verdicts = detectors_for(info, self.registry), {}, {}
        ch.guard, ch.detectors, ch.saved = guard, detectors, None
        self._live[ch] = None
        return guard

    # -- readings ----------------------------------------------------------------------------

    def update_all(
        self, info: ChannelInfo, t: float, value: float, exercise: bool = False, arrived: float | None = None
    ) -> list[LevelChange]:
        """Judge one reading; returns the events it causes (a device back from silence, a level
        change, a clock health event; a held reading judged now that the clock has passed it).

        ``arrived``: when the reading reached the daemon (live). Silence is judged by arrival,
        so a device draining a store-and-forward backlog is not silent; a reading stamped more
        than ``AHEAD_TOLERANCE_S`` after its arrival is held until the clock reaches its time.
        Replay (None) judges by event time.
        """
        out: list[LevelChange] = []
        if arrived is not None:
            if arrived >= self._held_next:
                self._release(arrived, out)
            if t > arrived + AHEAD_TOLERANCE_S:
                self._hold(info, t, value, exercise, arrived, out)
                return out
        self._judge(info, t, value, exercise, arrived, out, False)
        return out

    def _seen(self, info: ChannelInfo, t: float, when: float, out: list[LevelChange]) -> None:
        back = self.nodata.seen(info.device, when)
        if back is not None:
            lvl = self.level(info.site)
            out.append(
                LevelChange(info.site, t, lvl, lvl, f"{info.device}: data again after {back.silent_s / 3600:.1f} h of silence", {"device": info.device, "silent_s": back.silent_s}, False, "nodata_end")
            )

    def _judge(
        self, info: ChannelInfo, t: float, value: float, exercise: bool, arrived: float | None, out: list[LevelChange], tallied: bool
    ) -> None:
        """The guards, then the detectors, then fusion. ``tallied``: the reading's clock health
        was counted already (a held reading, counted as "ahead" when it arrived)."""
        if not exercise:
            self._seen(info, t, t if arrived is None else max(t, arrived), out)
        st = self._site(info.site, exercise)
        ch = self._channel(st, info)
        when = t if arrived is None else arrived  # the daemon's clock, not the device's
        ch.gap, ch.touched = when - ch.touched, when
        if self.eager and self.park_after_s is not None and ch.gap >= self.park_after_s:
            self._judged.append(ch)
        self._newest = max(self._newest, when)
        if self._faults and (info.site, info.device, info.channel) in self._faults:
            # Stored, never judged: a faulty sensor's numbers enter no window (see the docstring).
            ch.suspect += 1
            st.quality["sensor_fault"] = st.quality.get("sensor_fault", 0) + 1
            return
        if ch.guard is None:
            g = self._unpack(ch).update(t, value)  # (live from here on, the last to be parked)
        else:
            self._live.move_to_end(ch)
            g = ch.guard.update(t, value)
        if g.evidence.get("suspect"):
            ch.suspect += 1
            flag = str(g.evidence.get("flag", "suspect"))
            st.quality[flag] = st.quality.get(flag, 0) + 1
            if not exercise and not tallied:
                fault = _FAULT_OF_FLAG.get(flag)
                # Timed at the channel's last accepted time: event time, as in a replay.
                self._tally(info, fault, float(g.evidence.get("last_t", t)) if fault is not None else t, out)
            return
        if self._health and not exercise and not tallied:
            self._tally(info, None, t, out)
        changed = False
        for name, det in ch.detectors:
            v = det.update(t, value)
            if v.warming_up:
                continue
            if ch.levels.get(name) != v.level or name == "forecast":
                changed = changed or ch.levels.get(name) != v.level
                ch.levels[name] = v.level
            ch.verdicts[name] = v
        # No level yet from its detectors (a channel started afresh: its saved state damaged, its
        # stages gone with a registry change): it keeps the level it had until they judge, so a
        # damaged disk page does not lift a warning ("all channels back to normal").
        new_ch = max(ch.levels.values()) if ch.levels else ch.level
        # While a channel is held above its site for want of confirmation, every reading of
        # the site asks again: a forecast that turns clean (or comes within the window), on
        # this channel or another, confirms without any level changing.
        if new_ch == ch.level and not changed and not st.held:
            return
        ch.level = new_ch
        change = self._fuse(info.site, st, t, exercise, ch)
        if change is not None:
            out.append(change)

    # -- clocks ------------------------------------------------------------------------------

    def _hold(self, info: ChannelInfo, t: float, value: float, exercise: bool, arrived: float, out: list[LevelChange]) -> None:
        """Keep a reading stamped ahead of its arrival until the clock reaches its time."""
        if not exercise:
            self._seen(info, arrived, arrived, out)  # the device is talking: not silent
            self._tally(info, 1 if t > arrived + CLOCK_AHEAD_REPORT_S else None, arrived, out)
        st = self._site(info.site, exercise)
        ch = self._channel(st, info)
        if ch.held >= held_limit(info.interval_s):
            # A flood of early readings: refuse the one stamped furthest ahead (the least
            # credible), counted, never the true readings it would have put out of order.
            st.quality["ahead_overflow"] = st.quality.get("ahead_overflow", 0) + 1
            ch.suspect += 1
            # This channel's own (a drill's and the real channel's are apart, as their counts).
            mine = [i for i, e in enumerate(self._held) if e[2] == info and e[4] == exercise]
            far = max(mine, key=lambda i: self._held[i][0], default=None)
            if far is None or self._held[far][0] <= t:
                return
            self._held[far] = self._held[-1]
            self._held.pop()
            heapq.heapify(self._held)
            ch.held -= 1
        self._seq += 1
        heapq.heappush(self._held, (t, self._seq, info, value, exercise, arrived))
        ch.held += 1
        st.quality["ahead"] = st.quality.get("ahead", 0) + 1
        self._held_next = self._held[0][0]

    def release(self, now: float) -> list[LevelChange]:
        """Judge the held readings whose time ``now`` (an arrival time) has reached: what a
        reading arriving at ``now`` does before it is judged itself. For a restart that skips
        a reading (its site's saved state has it) but must still move the held readings on."""
        out: list[LevelChange] = []
        if now >= self._held_next:
            self._release(now, out)
        return out

    def _release(self, now: float, out: list[LevelChange]) -> None:
        """Judge the held readings whose time the clock has reached, in time order."""
        held = self._held
        while held and held[0][0] <= now:
            t, _, info, value, exercise, arrived = heapq.heappop(held)
            self._channel(self._site(info.site, exercise), info).held -= 1
            self._judge(info, t, value, exercise, arrived, out, True)
        self._held_next = held[0][0] if held else math.inf

    def _tally(self, info: ChannelInfo, fault: int | None, t: float, out: list[LevelChange]) -> None:
        """Count one reading of ``info.device`` (``fault``: its index in CLOCK_FAULTS, None:
        a good time stamp); report the device's clock trouble when it starts and ends."""
        device = info.device
        h = self._health.get(device)
        if h is None:
            if fault is None:
                return
            h = self._health[device] = _Health(info.site)
        masks = h.masks
        if fault is None and not h.trouble and not (masks[0] or masks[1] or masks[2]):
            return  # a clean window stays clean: nothing to shift (and CLOCK_WINDOW readings were seen)
        for i in range(3):
            masks[i] = ((masks[i] << 1) | (i == fault)) & _WINDOW_MASK
        if h.seen < CLOCK_WINDOW:
            h.seen += 1
        if fault is not None:
            h.counts[fault] += 1
        bad = h.bad()
        if not h.trouble and bad >= CLOCK_TROUBLE_AT and t - h.last_event >= CLOCK_EVENT_EVERY_S:
            h.trouble, h.last_event = True, t
            out.append(self._clock_event(device, h, t, bad, "clock"))
        elif h.trouble and bad == 0:
            h.trouble, h.last_event = False, t
            out.append(self._clock_event(device, h, t, bad, "clock_ok"))

    def _clock_event(self, device: str, h: _Health, t: float, bad: int, kind: str) -> LevelChange:
        n = h.in_window()
        evidence = {"device": device, "readings": h.seen, **dict(zip(CLOCK_FAULTS, n))}
        if kind == "clock":
            words = (f"{n[0]} out of order", f"{n[1]} stamped ahead of their arrival", f"{n[2]} conflicting with a reading already stored")
            parts = ", ".join(w for w, k in zip(words, n) if k)
            reason = (
                f"{device}: {bad} of its last {h.seen} readings came with a wrong time ({parts}) — its clock may be wrong. "
                "Readings stamped ahead are judged when their time comes; readings out of order are not judged"
            )
        else:
            reason = f"{device}: its last {CLOCK_WINDOW} readings came in order and on time — its clock looks right again"
        lvl = self.level(h.site)
        return LevelChange(h.site, t, lvl, lvl, reason, evidence, False, kind)

    def clock_health(self) -> dict[str, Any]:
        """Per device with any bad time stamp: its counts (cumulative and in the window) and
        whether it is in clock trouble; totals over all devices; readings held right now."""
        devices: dict[str, Any] = {}
        totals = dict.fromkeys(CLOCK_FAULTS, 0)
        for device, h in sorted(self._health.items()):
            counts = dict(zip(CLOCK_FAULTS, h.counts))
            for k, v in counts.items():
                totals[k] += v
            devices[device] = {"site": h.site, "trouble": h.trouble, "total": counts, "recent": dict(zip(CLOCK_FAULTS, h.in_window())), "readings": h.seen}
        return {
            "totals": totals,
            "devices_in_trouble": sum(1 for h in self._health.values() if h.trouble),
            "held": len(self._held),
            "devices": devices,
        }

    def _fuse(self, site: str, st: _Site, t: float, exercise: bool, cause: _Channel | None = None) -> LevelChange | None:
        """The site level from its channels' levels; a change, or None. ``cause``: the channel
        whose reading asked (it names the hold of a level that came down).

        A confirmed level holds while its evidence does: once orange (or red) is confirmed,
        the site keeps it for as long as some channel still stands at or above it, even when
        the second device or the forecast that confirmed it no longer does — a forecast drifts
        across its 66 h horizon, a second device's own level comes down after its hold, while
        the slope keeps moving at orange. Dropping to yellow then (and relaxing the devices'
        sampling, and telling every tier to stand down) for want of a *second* confirmation
        would break the README's promise that a level comes down only after its evidence has
        left the band for the hold time. A higher level on one channel still needs its own
        confirmation (a confirmed orange with one device at red stays orange). The episode
        ends when no channel is at the confirmation level any more (each channel's latch has
        held it for its hold time first); a new one needs confirming again.
        """
        policy = self.registry.sites[site].policy
        # A sensor its device reports faulty raises and confirms nothing (module docstring).
        # A view, not a copy: this runs for every reading that changes a channel's level, and a
        # list is needed only when some sensor is faulty.
        chans: Collection[_Channel] = st.channels.values()
        faulty: list[_Channel] = []
        if self._faults:
            faulty = [c for c in chans if (site, c.info.device, c.info.channel) in self._faults]
            if faulty:
                chans = [c for c in chans if c not in faulty]
        for c in chans:
            if c.text is not None and c.verdicts is _NO_VERDICTS:  # its forecast and verdicts are asked for below
                self._wake(c, bank=False)
        raw = max((c.level for c in chans), default=0)
        lead_ch = max(chans, key=lambda c: c.level) if chans else None
        level = raw
        notes: list[str] = []
        evidence: dict[str, Any] = {}
        # The earliest clean forecast decides confirmation (the safe side among those that may
        # confirm; see the module docstring); the one with the smallest stated uncertainty is
        # the one reported (a noisy GNSS fit is not the best estimate).
        forecast = best = rough = None
        for c in chans:
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
            devices = sorted({c.info.device for c in chans if c.level >= policy.confirm_from_level})
            soon = forecast is not None and forecast["failure_time"] - t <= policy.forecast_confirms_s
            # Each level is confirmed on its own (issue 14 item 5: orange before red): devices
            # confirm the level that `confirm_devices` of them reach, a forecast the level its
            # time to failure reaches (red within forecast_red_s, orange within
            # forecast_confirms_s) — a crack meter at red with a forecast 60 h away is orange.
            by_device: dict[str, int] = {}
            for c in chans:
                if c.level > by_device.get(c.info.device, 0):
                    by_device[c.info.device] = c.level
            ranked = sorted(by_device.values(), reverse=True)
            dev_level = ranked[policy.confirm_devices - 1] if len(ranked) >= policy.confirm_devices else 0
            fc_level = 0
            if soon and forecast is not None:
                ttf = forecast["failure_time"] - t
                fc_level = 4 if ttf <= policy.forecast_red_s else policy.confirm_from_level
            conf = min(raw, max(dev_level, fc_level))
            if conf >= policy.confirm_from_level:
                if dev_level >= fc_level:
                    top = sorted(d for d, lv in by_device.items() if lv >= conf)
                    notes.append(f"{_name(conf)} confirmed by {len(top)} devices ({', '.join(top)})")
                else:
                    assert forecast is not None
                    notes.append(f"{_name(conf)} confirmed by {_forecast_words(forecast, t)}")
                st.confirmed = max(st.confirmed, conf)
                level = max(conf, min(raw, st.confirmed))
                if level < raw:
                    notes.append(
                        f"{_name(raw)} not confirmed (needs {policy.confirm_devices} devices at {_name(raw)}"
                        + (f" or a failure forecast within {policy.forecast_red_s / 3600:g} h" if raw >= 4 else "")
                        + f"): held at {_name(level)}"
                    )
            else:
                level = max(policy.confirm_from_level - 1, min(raw, st.confirmed))
                notes.append(f"{_name(raw)} not confirmed (only {', '.join(devices)}): held at {_name(level)}")
                if level >= policy.confirm_from_level:
                    notes[-1] += ", as confirmed before"
                if rough is not None and rough["failure_time"] - t <= policy.forecast_confirms_s:
                    notes.append(
                        f"the failure forecast in {(rough['failure_time'] - t) / 3600:.0f} h fits its line too roughly to confirm "
                        f"(R² {rough['r2']:.2f} < {policy.forecast_confirm_r2:g})"
                    )
            evidence["devices_at_or_above"] = devices
        else:
            st.confirmed = 0
        if faulty:
            # Held where it stood, never raised: a faulty sensor is no data.
            floor = min(st.level, max(c.level for c in faulty))
            if level < floor:
                level = floor
                notes.append(f"held at {_name(floor)}: the sensors at it are reported faulty")
        if self._faults:
            # Every faulty sensor of the site, judged yet or not (one never read has level 0).
            faults: dict[str, Any] = {}
            for (f_site, f_dev, f_ch), (code, since) in sorted(self._faults.items()):
                if f_site != site:
                    continue
                name = f"{f_dev}/{f_ch}"
                notes.append(f"{name}: sensor reported faulty (sensor_state {code:g}) since {rfc3339(since)}, its readings raise no level")
                held_ch = st.channels.get(name)
                faults[name] = {"sensor_state": code, "since": since, "level": 0 if held_ch is None else held_ch.level}
            if faults:
                evidence["sensor_faults"] = faults
        st.held = raw > level
        if level == st.level:
            return None
        previous, st.level = st.level, level
        evidence["raw_level"] = raw
        if lead_ch is not None and lead_ch.level > 0:
            lead = lead_ch.lead()
            name, v = lead if lead is not None else ("", Verdict(0))
            reason = f"{lead_ch.info.device}/{lead_ch.info.channel} {name}: {v.reason}"
            evidence.update({"channel": f"{lead_ch.info.device}/{lead_ch.info.channel}", "detector": name, **v.evidence})
        else:
            reason = "all channels back to normal"
        if notes:
            reason += "; " + "; ".join(notes)
        if 0 < level < previous:
            reason = f"{self._why_down(policy, previous, level, raw, cause)}; now {reason}"
        if best is not None:
            evidence["forecast"] = best
        return LevelChange(site, t, level, previous, reason, evidence, exercise)

    @staticmethod
    def _why_down(policy: Any, previous: int, level: int, raw: int, cause: _Channel | None) -> str:
        """Why a site came down, first and in a duty officer's words (the detectors' own
        reasons follow): the evidence for the higher level went, and for how long."""
        if raw < previous:
            # Every channel's level comes down only after its value stayed out of the band for
            # its hold (the policy's, or two reporting intervals of a slow channel).
            hold = policy.hold_s if cause is None else max(policy.hold_s, 2 * cause.info.interval_s)
            return f"back to {_name(level)}: no device above the {_name(previous)} threshold for {hold / 3600:g} h"
        return f"back to {_name(level)}: {_name(previous)} is no longer confirmed by a second device or a failure forecast"

    # -- sensors reported faulty ---------------------------------------------------------------

    def sensor_state(self, site: str, device: str, states: Any, t: float) -> bool:
        """A device's ``sensor_state`` ({sensor: code}) from its status at event time ``t``:
        a sensor is named by the convention channel its channels read (``L1_LF_1``) or by a
        channel's own name. A negative code marks its channels faulty (since ``t``, or since
        the fault began), 0 clears them; sensors not named keep their state. True when a
        channel's state changed."""
        chans = self.registry.channels.get((site, device))
        if not chans or not isinstance(states, dict):
            return False
        changed = False
        if site not in self.dirty:
            self.dirty[site] = self.dirty_mark
        for info in chans.values():
            src = info.spec.source
            code = states.get(src.partition(".")[0]) if src is not None else None
            if code is None:
                code = states.get(info.channel)
            c = _state_code(code)
            if c is None:
                continue
            key = (site, device, info.channel)
            before = self._faults.get(key)
            if c < 0:
                if before is None or before[0] != c:
                    self._faults[key] = (c, t if before is None else before[1])
                    changed = True
            elif c == 0 and before is not None:
                del self._faults[key]
                changed = True
                # It counts again: the site's next reading works its level out anew.
                for ex in (False, True):
                    sst = self._sites.get((site, ex))
                    if sst is not None:
                        sst.held = True
        return changed

    def sensor_faults(self) -> dict[str, Any]:
        """The channels whose sensor is reported faulty: {"site/device/channel": {sensor_state, since}}."""
        return {f"{s}/{d}/{c}": {"sensor_state": code, "since": since} for (s, d, c), (code, since) in sorted(self._faults.items())}

    # -- timers ------------------------------------------------------------------------------

    def tick(self, now: float) -> list[LevelChange]:
        """Held readings whose time has come, then no-data events due at ``now`` (clock time
        live, event time in replay)."""
        out: list[LevelChange] = []
        if now >= self._held_next:
            self._release(now, out)
        for ev in self.nodata.due(now):
            site = self.registry.device_site.get(ev.device)
            if site is None:
                continue
            if site not in self.dirty:  # its device is silent now
                self.dirty[site] = self.dirty_mark
            lvl = self.level(site)
            out.append(
                LevelChange(site, ev.t, lvl, lvl, f"{ev.device}: no data for {ev.silent_s / 3600:.1f} h (level held)", {"device": ev.device, "last_seen": ev.last_seen}, False, "nodata")
            )
        return out

    def next_deadline(self) -> float | None:
        due = self.nodata.next_deadline()
        if self._held and (due is None or self._held_next < due):
            return self._held_next
        return due

    # -- persistence -------------------------------------------------------------------------

    def _body(self, ch: _Channel) -> dict[str, Any]:
        """A channel's levels, verdicts, guard and detectors, as saved (live or saved form)."""
        if ch.guard is not None:
            guard, dets = ch.guard.snapshot(), {n: d.snapshot() for n, d in ch.detectors}
        elif ch.saved is not None:
            guard, dets = ch.saved["guard"], ch.saved["detectors"]
        else:  # never built, or started afresh after an unreadable part: a fresh bank
            self._unpack(ch)
            assert ch.guard is not None
            guard, dets = ch.guard.snapshot(), {n: d.snapshot() for n, d in ch.detectors}
        return {"levels": dict(ch.levels), "verdicts": {n: v.to_dict() for n, v in ch.verdicts.items()}, "guard": guard, "detectors": dets}

    def _site_json(self, st: _Site, packed: bool, ex: int = 0, texts: list[tuple[str, bytes]] | None = None) -> dict[str, Any]:
        """``texts`` (``site_rows``): the packed channels' texts go there, by key (``ex``: the
        drill state's), not into the entries (``"t": 1`` says so); spilled ones are there already."""
        channels: dict[str, Any] = {}
        after = self.park_after_s
        for key, ch in st.channels.items():
            entry: dict[str, Any] = {"level": ch.level, "suspect": ch.suspect}
            text = ch.text
            if packed:
                if text is _SPILLED:
                    if texts is not None:
                        entry["t"] = 1
                        channels[key] = entry
                        continue
                    text = self._fetch(ch)  # into the row's own ``z`` (a fresh bank if it is gone)
                if text is None:
                    text = zlib.compress(_JSON(self._body(ch)).encode(), 1)
                # Idle, or reporting at least that far apart: a ten-minute channel saved 20 s
                # after its reading is parked then, not left live until its site's next change.
                if after is not None and (ch.touched <= self._newest - after or ch.gap >= after):
                    self._park_live(ch, text)  # (also one whose verdicts the site's fusion opened)
                if texts is not None:
                    texts.append((f"{ex}:{key}", text))
                    entry["t"] = 1
                else:
                    entry["z"] = base64.b64encode(text).decode("ascii")
            else:
                if text is _SPILLED:
                    text = self._fetch(ch)  # (looked at, not kept: it stays spilled)
                if text is not None:
                    try:
                        saved, levels, verdicts = _opened(json.loads(_inflate(text)), detector_names(ch.info, self.registry))
                        entry.update({"levels": levels, "verdicts": {n: v.to_dict() for n, v in verdicts.items()}, **saved})
                        channels[key] = entry
                        continue
                    except _UNPARKABLE:
                        self._wake(ch)  # reported; the channel starts afresh
                entry.update(self._body(ch))
            channels[key] = entry
        return {"level": st.level, "confirmed": st.confirmed, "quality": dict(st.quality), "channels": channels}

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue exactly here after a restart (JSON-serialisable).
        ``quality`` is the total; each site's entry carries its own share. The same as the sites'
        ``site_state`` put together by ``assemble``, which is what a restart reads."""
        return self.assemble(self.globals_state(), (self.site_state(site) for site in self.registry.sites))

    def site_state(self, site: str, packed: bool = False, texts: list[tuple[str, bytes]] | None = None) -> dict[str, Any]:
        """One site's part of ``snapshot()`` (its real and drill state, its devices' silence
        timers and clock health, its held readings and faulty sensors): saved site by site,
        and put together again by ``assemble``. ``packed``: each channel's levels, verdicts,
        guard and detectors as ``z``, their JSON compressed (what ``site_row`` saves), or in
        ``texts`` (what ``site_rows`` saves)."""
        sites = {}
        for exercise in (False, True):
            st = self._sites.get((site, exercise))
            if st is not None:
                sites[f"{site}|{int(exercise)}"] = self._site_json(st, packed, int(exercise), texts)
        devices = self._site_devices.get(site, [])
        # The site's own held readings, then sorted (not the whole fleet's heap for each site).
        held = [[info.site, int(exercise), info.device, info.channel, t, value, arrived]
                for t, _, info, value, exercise, arrived in sorted([e for e in self._held if e[2].site == site])] if self._held else []
        health = {d: self._health[d].to_json() for d in devices if d in self._health} if self._health else {}
        faults = [[s, d, c, code, since] for (s, d, c), (code, since) in self._faults.items() if s == site] if self._faults else []
        return {"sites": sites, "nodata": self.nodata.snapshot_of(devices), "held": held, "health": health, "faults": faults}

    def site_row(self, site: str) -> str:
        """The JSON text of a site's saved row: ``site_state(site, packed=True)``. Writing it
        parks the site's channels idle for ``park_after_s`` (their compressed text is made for
        the row anyway); a parked channel's text goes into the row as it is, so a save of a
        site of which one device spoke packs that device's channels only."""
        return _JSON(self.site_state(site, packed=True))

    def site_rows(self, site: str) -> tuple[str, list[tuple[str, bytes]]]:
        """A site's saved row as ``site_row``, but with its channels' packed texts apart, by
        key (the journal's ``channel_state``): only those packed or parked since they were last
        saved; a spilled channel's saved text stands (``"t": 1`` in the row says where it is).
        Once they are saved, ``spill`` lets the parked ones go from memory."""
        texts: list[tuple[str, bytes]] = []
        return _JSON(self.site_state(site, packed=True, texts=texts)), texts

    @staticmethod
    def unpacked(part: dict[str, Any], texts: Callable[[str], bytes | None] | None = None) -> dict[str, Any]:
        """A saved site part (``site_row``, or ``site_rows`` with ``texts``: key -> its saved
        text) with its channels' ``z`` opened, as ``site_state`` gives it: for diagnosis and
        tests (a restart restores the packed form directly)."""
        for skey, sd in part.get("sites", {}).items():
            for key, cd in sd.get("channels", {}).items():
                if isinstance(cd, dict) and ("z" in cd or "t" in cd):
                    try:
                        text = base64.b64decode(cd["z"], validate=True) if "z" in cd else None if texts is None else texts(f"{skey.rpartition('|')[2]}:{key}")
                        if text is None:
                            raise ValueError("its saved text is gone")
                        body = json.loads(_inflate(text))
                    except _UNPARKABLE as exc:
                        body = {"unreadable": f"{type(exc).__name__}: {exc}"[:200]}
                    sd["channels"][key] = {"level": cd["level"], "suspect": cd["suspect"], **body}
        return part

    def globals_state(self) -> dict[str, Any]:
        """What ``site_state`` leaves out: the silence timers' start and old uncounted quality."""
        return {"nodata_start": self.nodata.start_time(), "quality_base": dict(self._quality_base)}

    @staticmethod
    def assemble(globals_: dict[str, Any], parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """A ``snapshot()`` from ``globals_state()`` and sites' ``site_state()``s."""
        sites: dict[str, Any] = {}
        last: dict[str, float] = {}
        silent: list[str] = []
        held: list[Any] = []
        health: dict[str, Any] = {}
        faults: list[Any] = []
        quality = dict(globals_.get("quality_base", {}))
        for part in parts:
            sites.update(part["sites"])
            for sd in part["sites"].values():
                for flag, n in sd.get("quality", {}).items():
                    quality[flag] = quality.get(flag, 0) + int(n)
            last.update(part["nodata"]["last"])
            silent.extend(part["nodata"]["silent"])
            held.extend(part["held"])
            health.update(part["health"])
            faults.extend(part["faults"])
        held.sort(key=lambda h: h[4])
        nodata = {"start": globals_.get("nodata_start"), "last": last, "silent": sorted(silent)}
        return {"sites": sites, "quality": quality, "nodata": nodata, "held": held, "health": health, "faults": faults}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a snapshot. Sites, channels and detectors no longer in the registry
        are dropped; new ones start fresh (the registry may have changed between runs). A
        channel whose text was saved apart (``site_rows``) is restored spilled, read back from
        ``text_source`` when it is needed."""
        self._cleared()
        per_site: dict[str, int] = {}
        self._restore_sites(state.get("sites", {}), per_site)
        self._restore_rest(state, per_site)

    def restore_parts(self, globals_: dict[str, Any], parts: Iterable[dict[str, Any]]) -> None:
        """``restore(assemble(globals_, parts))``, each part's sites restored as it comes and
        dropped: a restart of a national fleet does not hold every site's parsed row at once
        (issue 17: hundreds of megabytes at 250,000 devices, kept by the allocator after)."""
        self._cleared()
        per_site: dict[str, int] = {}

        def rest_of(part: dict[str, Any]) -> dict[str, Any]:
            self._restore_sites(part["sites"], per_site)
            return {**part, "sites": {k: {"quality": sd.get("quality", {})} for k, sd in part["sites"].items() if isinstance(sd, dict)}}

        self._restore_rest(self.assemble(globals_, (rest_of(p) for p in parts)), per_site)

    def _cleared(self) -> None:
        """Before a restore: no site, and nothing said of the last restore."""
        self._sites.clear()
        self._live.clear()
        self.failed.clear()
        self.dropped.clear()

    def text_keys(self, site: str) -> set[str]:
        """The keys of a site's channels as its saved row names their texts (``site_rows``)."""
        return {f"{int(ex)}:{key}" for ex in (False, True) if (st := self._sites.get((site, ex))) is not None for key in st.channels}

    def _restore_sites(self, sites: dict[str, Any], per_site: dict[str, int]) -> None:
        for skey, sd in sites.items():
            site, _, ex = skey.rpartition("|")
            if site not in self.registry.sites or site in self.failed:
                continue
            try:
                self._restore_site(site, ex == "1", sd, per_site)
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
                # A damaged entry (the disk, a hand edit) must not keep detection from starting:
                # the site's state starts afresh, and the service reads its readings again
                # (``failed``) rather than taking its row's position for them.
                for exercise in (False, True):  # (its real and drill state go together)
                    st = self._sites.pop((site, exercise), None)
                    for flag, n in (st.quality if st is not None else {}).items():
                        per_site[flag] -= n
                self.failed.add(site)
                self.unreadable.append((site, "-", "-", "row", f"{type(exc).__name__}: {exc}"[:200]))

    def _restore_site(self, site: str, exercise: bool, sd: Any, per_site: dict[str, int]) -> None:
        st = self._site(site, exercise)
        st.level = int(sd["level"])
        # A snapshot from before confirmations were kept: a level at or above the
        # confirmation level was confirmed, or the site would not have reached it.
        policy = self.registry.sites[site].policy
        st.confirmed = int(sd.get("confirmed", st.level if st.level >= policy.confirm_from_level else 0))
        st.held = True  # not in the snapshot: the first reading works it out again
        quality = {str(f): int(n) for f, n in sd.get("quality", {}).items()}
        for key, cd in sd["channels"].items():
            device, _, channel = key.partition("/")
            info = self.registry.channel(site, device, channel)
            if info is None:
                if isinstance(cd, dict) and "t" in cd:  # its text, saved apart, is for the service to drop
                    self.dropped.add(site)
                continue
            if "z" in cd or "t" in cd:  # parked as saved (``site_row``): not even parsed until needed
                ch = st.channels[f"{device}/{channel}"] = _Channel(info, None, _NO_DETECTORS)
                ch.level, ch.suspect = int(cd["level"]), int(cd["suspect"])
                if "z" not in cd:  # spilled (``site_rows``): (a restore without them starts it afresh)
                    _park(ch, _SPILLED)
                    if self.text_source is None:
                        self._fetch(ch)
                    continue
                try:
                    _park(ch, base64.b64decode(cd["z"], validate=True))
                except (binascii.Error, TypeError, ValueError) as exc:
                    self.unreadable.append((site, device, channel, "parked", f"{type(exc).__name__}: {exc}"[:200]))
                continue
            # Built on its first reading (``_unpack``): a restart does not build every bank.
            # The stages it still has (the others are dropped), checked as a parked text is.
            ch = st.channels[f"{device}/{channel}"] = _Channel(info, None, [])
            ch.level, ch.suspect = int(cd["level"]), int(cd["suspect"])
            try:
                ch.saved, ch.levels, ch.verdicts = _opened(cd, detector_names(info, self.registry))
            except _UNPARKABLE as exc:
                self.unreadable.append((site, device, channel, "saved", f"{type(exc).__name__}: {exc}"[:200]))
        st.quality = quality  # (counted once the whole entry has been read)
        for flag, n in quality.items():
            per_site[flag] = per_site.get(flag, 0) + n

    def _restore_rest(self, state: dict[str, Any], per_site: dict[str, int]) -> None:
        if "nodata" in state:
            self.nodata.restore(state["nodata"])
        self._held, self._seq = [], 0
        failed = self.failed  # (their readings are judged again, held ones too)
        for site, ex, device, channel, t, value, arrived in state.get("held", []):
            info = self.registry.channel(site, device, channel)
            if info is None or site in failed:
                continue
            self._seq += 1
            self._held.append((float(t), self._seq, info, float(value), bool(ex), float(arrived)))
            self._channel(self._site(site, bool(ex)), info).held += 1
        heapq.heapify(self._held)
        self._held_next = self._held[0][0] if self._held else math.inf
        # The total less what the sites carry: all of it from a snapshot of before per-site counts.
        self._quality_base = {f: int(n) - per_site.get(f, 0) for f, n in state.get("quality", {}).items() if int(n) - per_site.get(f, 0)}
        self.dirty.clear()  # as saved
        self._health = {d: _Health.from_json(h) for d, h in state.get("health", {}).items()
                        if d in self.registry.device_site and self.registry.device_site[d] not in failed}
        self._faults = {
            (str(s), str(d), str(c)): (float(code), float(since))
            for s, d, c, code, since in state.get("faults", [])
            if self.registry.channel(str(s), str(d), str(c)) is not None and str(s) not in failed
        }
