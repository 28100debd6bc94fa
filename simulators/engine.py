"""The vectorised simulation engine behind ``geowarn simulate``.

A ``Simulation`` turns a ``Scenario`` and a site registry into the messages its devices
send: native JSON v1 data messages (several buffered readings per message) and status
heartbeats, with the scenario's faults injected (``simulators.faults``). It never touches a
broker, a file or a clock: ``emit_until(t)`` returns every message due up to event time
``t``, in the order the broker would see them; ``set_sampling`` changes a device's interval
from the next sample on (devices obey ``set_sampling`` commands). File writing, live
publishing and pacing live in ``simulators.publish``.

Speed: a pass (``emit_until``) computes the readings of every due device together
(``_Batch``): each device draws its noise from its own generator, then one numpy expression
per channel model covers all readings of the pass, with one call per site into its slope and
rain; Python then touches each sample once, to write it into its payload with one
%-formatting (payload templates are shared by devices of the same template), and the rows
of CSV feeds are only written out when asked for. Randomness: each site, channel and
device-fault stream has its own generator seeded from (seed, names) by a stable hash, so the
same seed gives byte-identical output (for the same passes: a device's draws per pass
depend on how many of its samples the pass holds).
"""

from __future__ import annotations

import bisect
import gc
import heapq
import json
import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from geowarn.core.timefmt import rfc3339
from geowarn.config.registry import Channel, Kind, Registry
from geowarn.simulators.convention import ConventionDevices
from geowarn.simulators.devices import RAIN_TIP_MM
from geowarn.simulators.seeds import stable_rng
from geowarn.simulators.scenario import Scenario, SlopeSpec, StormSpec, WeatherSpec
from geowarn.simulators.slope import DAY, SeasonalSlope, Slope, StableSlope, VoightFailure

FloatArray = NDArray[np.float64]
FIRMWARE = "geowarn-sim-2"
_SPIN_UP_S = 14 * DAY
"""Rain starts before the run so groundwater and soil moisture are not bone dry at start."""
BATTERY_CUTOFF_V = 10.5


# -- rain ----------------------------------------------------------------------------------


class Rain:
    """A site's rain as piecewise-constant segments: random storms plus design storms.

    Every query is vectorised and exact for the piecewise-constant rate: cumulative rain is
    piecewise linear between breakpoints (``np.interp``), and the linear-reservoir response
    (pore pressure, groundwater) is propagated exactly from breakpoint to breakpoint.
    """

    def __init__(self, rng: np.random.Generator, t_from: float, t_to: float, spec: WeatherSpec, storms: list[tuple[float, StormSpec]]) -> None:
        starts: list[float] = []
        ends: list[float] = []
        rates: list[float] = []  # mm/s
        if spec.storms_per_day > 0:
            t = t_from + float(rng.exponential(DAY / spec.storms_per_day))
            while t < t_to:
                dur = float(rng.exponential(spec.mean_storm_h * 3600.0))
                rate = float(rng.exponential(spec.mean_intensity_mm_h / 3600.0))
                starts.append(t)
                ends.append(t + dur)
                rates.append(rate)
                t = t + dur + float(rng.exponential(DAY / spec.storms_per_day))
        for at, storm in storms:
            # Triangular hyetograph, cut into 12 constant pieces; the mean intensity is kept.
            d = storm.duration_h * 3600.0
            n = 12
            shapes = []
            for k in range(n):
                mid = (k + 0.5) / n
                if mid < storm.peak:
                    shapes.append(mid / storm.peak)
                else:
                    shapes.append((1.0 - mid) / (1.0 - storm.peak) if storm.peak < 1 else mid)
            # Scaled so the storm's depth is exactly mean intensity × duration.
            norm = storm.mean_intensity_mm_h / 3600.0 / (sum(shapes) / n)
            for k in range(n):
                starts.append(at + d * k / n)
                ends.append(at + d * (k + 1) / n)
                rates.append(norm * shapes[k])
        self.t_from = float(t_from)
        self.storms = [(s, e, r * 3600.0) for s, e, r in zip(starts, ends, rates)]
        bp = np.unique(np.asarray([t_from, t_to, *starts, *ends], dtype=np.float64))
        total = np.zeros(len(bp))  # rate from bp[k] to bp[k+1]
        for s, e, r in zip(starts, ends, rates):
            total[(bp >= s) & (bp < e)] += r
        self._bp = bp
        self._rate = total
        self._cum = np.concatenate([[0.0], np.cumsum(total[:-1] * np.diff(bp))])
        self._stored: dict[float, FloatArray] = {}
        self._bp_list = bp.tolist()
        self._rate_list = total.tolist()

    def cumulative(self, t: FloatArray) -> FloatArray:
        """Rain (mm) fallen since ``t_from``."""
        k = np.maximum(np.searchsorted(self._bp, t, side="right") - 1, 0)
        return self._cum[k] + self._rate[k] * np.maximum(0.0, t - self._bp[k])

    def intensity(self, t: FloatArray) -> FloatArray:
        """Rain rate (mm/h)."""
        k = np.searchsorted(self._bp, t, side="right") - 1
        return np.where(k >= 0, self._rate[np.maximum(k, 0)] * 3600.0, 0.0)

    def intensity_at(self, t: float) -> float:
        """``intensity`` for one time (no numpy call: heartbeats ask one at a time)."""
        k = bisect.bisect_right(self._bp_list, t) - 1
        return self._rate_list[k] * 3600.0 if k >= 0 else 0.0

    def stored(self, t: FloatArray, timescale_s: float) -> FloatArray:
        """Rain (mm) weighted by exp(−age/timescale): ds/dt = r − s/τ, exact per segment."""
        at_bp = self._stored.get(timescale_s)
        if at_bp is None:
            decay = np.exp(-np.diff(self._bp) / timescale_s)
            vals = [0.0]
            for i in range(len(decay)):
                vals.append(vals[-1] * decay[i] + self._rate[i] * timescale_s * (1.0 - decay[i]))
            at_bp = np.asarray(vals)
            self._stored[timescale_s] = at_bp
        idx = np.maximum(np.searchsorted(self._bp, t, side="right") - 1, 0)
        dt = np.maximum(0.0, t - self._bp[idx])
        e = np.exp(-dt / timescale_s)
        return at_bp[idx] * e + self._rate[idx] * timescale_s * (1.0 - e)


# -- sites and channels --------------------------------------------------------------------


class SiteState:
    """The truth of one site: slope, sliding direction, rain, sun."""

    def __init__(self, code: str, lon: float, slope: Slope, rain: Rain, azimuth_deg: float, dip_deg: float, index: int = 0) -> None:
        self.code = code
        self.index = index  # in the Simulation's list of sites
        self.lon = lon
        self.slope = slope
        self.rain = rain
        self.azimuth_deg = azimuth_deg
        az, dip = math.radians(azimuth_deg), math.radians(dip_deg)
        self.enu = (math.cos(dip) * math.sin(az), math.cos(dip) * math.cos(az), -math.sin(dip))

    def sun(self, t: FloatArray) -> FloatArray:
        h = (t / 3600.0 + self.lon / 15.0) % 24.0
        s = np.maximum(0.0, np.sin(np.pi * (h - 6.0) / 12.0))
        return s * np.where(self.rain.intensity(t) > 0, 0.3, 1.0)

    def battery_v(self, t: FloatArray, rest_v: float) -> FloatArray:
        # Same physics as simulators.devices.Power: sag through the night, charge by day.
        h = (t / 3600.0 + self.lon / 15.0) % 24.0
        night_h = np.where((h >= 6.0) & (h < 18.0), 0.0, (h - 18.0) % 24.0)
        return rest_v - 0.02 * night_h + 1.6 * self.sun(t)

    def sun_at(self, t: float) -> float:
        h = (t / 3600.0 + self.lon / 15.0) % 24.0
        s = max(0.0, math.sin(math.pi * (h - 6.0) / 12.0))
        return s * (0.3 if self.rain.intensity_at(t) > 0 else 1.0)

    def battery_at(self, t: float, rest_v: float) -> float:
        h = (t / 3600.0 + self.lon / 15.0) % 24.0
        night_h = 0.0 if 6.0 <= h < 18.0 else (h - 18.0) % 24.0
        return rest_v - 0.02 * night_h + 1.6 * self.sun_at(t)

    def temp_c(self, t: float) -> float:
        h = (t / 3600.0 + self.lon / 15.0) % 24.0
        return 16.0 + 7.0 * math.sin(2.0 * math.pi * (h - 9.0) / 24.0)

    def heartbeat(self, t: float, rest_v: float) -> tuple[float, float, float]:
        """(``battery_at``, ``sun_at``, ``temp_c``) at ``t``, computed together."""
        h = (t / 3600.0 + self.lon / 15.0) % 24.0
        s = max(0.0, math.sin(math.pi * (h - 6.0) / 12.0))
        sun = s * (0.3 if self.rain.intensity_at(t) > 0 else 1.0)
        night_h = 0.0 if 6.0 <= h < 18.0 else (h - 18.0) % 24.0
        return rest_v - 0.02 * night_h + 1.6 * sun, sun, 16.0 + 7.0 * math.sin(2.0 * math.pi * (h - 9.0) / 24.0)


_TILT_SCALE = {"mrad": 1.0, "urad": 1000.0, "deg": 180.0 / math.pi / 1000.0}
_TILT_DECIMALS = {"mrad": 4, "urad": 1, "deg": 6}


_LINEAR, _GNSS, _STORED, _SOIL, _BATTERY, _RAIN = range(6)


class SimChannel:
    """One channel: its kind's model with device-specific constants, and its sample clock.

    Every displacement-like kind reads ``baseline + gain · slope displacement + σ·noise``
    (GNSS projects the motion on its axis and adds multipath outliers; a tiltmeter turns it
    into rotation); pore pressure and groundwater read ``baseline + gain · stored rain``.
    """

    __slots__ = ("name", "kind", "unit", "decimals", "interval_s", "normal_s", "anchor", "k", "model", "gain", "baseline", "sigma", "timescale_s", "outlier_prob", "fmt", "scale", "uid", "col")

    def __init__(self, ch: Channel, site: SiteState, rng: np.random.Generator, *, axis: int, heading_deg: float) -> None:
        self.name = ch.channel
        self.kind = ch.kind
        self.unit = ch.unit or ""
        self.interval_s = float(ch.interval_s)
        self.normal_s = float(ch.interval_s)
        self.anchor = 0.0
        self.k = 0
        self.gain = 1.0
        self.baseline = 0.0
        self.sigma = 0.0
        self.timescale_s = 1.0
        self.outlier_prob = 0.0
        self.model = _LINEAR
        kind = ch.kind
        if kind in (Kind.gnss_e, Kind.gnss_n, Kind.gnss_u):
            axis_i = {Kind.gnss_e: 0, Kind.gnss_n: 1, Kind.gnss_u: 2}[kind]
            self.model = _GNSS
            self.gain = site.enu[axis_i]
            # 3 mm horizontal, twice that vertical: the usual GNSS ratio.
            self.sigma = 3.0 * (2.0 if kind is Kind.gnss_u else 1.0)
            self.outlier_prob = 0.002
            self.decimals = 2
        elif kind is Kind.displacement:
            self.sigma, self.decimals = 0.1, 2
        elif kind is Kind.crack:
            # A crack meter reads the crack's width, not a displacement from zero.
            self.baseline, self.sigma, self.decimals = round(float(rng.uniform(5.0, 25.0)), 2), 0.1, 2
        elif kind is Kind.tilt:
            unit = ch.unit or "mrad"
            scale = _TILT_SCALE[unit]
            self.gain = 0.1 * math.cos(math.radians(heading_deg + 90.0 * axis - site.azimuth_deg)) * scale
            self.sigma = 0.002 * scale
            self.decimals = _TILT_DECIMALS[unit]
        elif kind is Kind.rain:
            self.model, self.decimals = _RAIN, 1
        elif kind is Kind.pore_pressure:
            # About 1 m of head (9.81 kPa) per 100 mm of rain (specific yield ~0.1).
            self.model = _STORED
            self.baseline, self.gain, self.timescale_s, self.sigma, self.decimals = float(rng.uniform(90.0, 130.0)), 0.1, 2 * DAY, 0.2, 2
        elif kind is Kind.groundwater:
            self.model = _STORED
            self.baseline, self.gain, self.timescale_s, self.sigma, self.decimals = float(rng.uniform(5.0, 20.0)), 0.01, 5 * DAY, 0.005, 3
        elif kind is Kind.soil_moisture:
            self.model = _SOIL
            self.baseline, self.gain, self.timescale_s, self.sigma, self.decimals = 18.0, 45.0, 2 * DAY, 0.3, 1
        elif kind is Kind.battery:
            self.model = _BATTERY
            self.baseline, self.sigma, self.decimals = float(rng.uniform(12.3, 12.6)), 0.01, 2
        elif kind is Kind.deep_displacement:
            # An in-place inclinometer above the slip surface moves with the slope.
            self.sigma, self.decimals = 0.3, 2
        elif kind is Kind.seepage_pressure:
            self.model = _STORED
            self.baseline, self.gain, self.timescale_s, self.sigma, self.decimals = float(rng.uniform(90.0, 130.0)), 0.1, 2 * DAY, 0.2, 2
        elif kind is Kind.mud_level:
            # A gully's flow depth: a few cm of base flow, rising with the rain of the last hours.
            self.model = _STORED
            self.baseline, self.gain, self.timescale_s, self.sigma, self.decimals = 0.05, 0.005, 3 * 3600.0, 0.005, 3
        elif kind is Kind.stress:
            self.model = _STORED
            self.baseline, self.gain, self.timescale_s, self.sigma, self.decimals = float(rng.uniform(50.0, 150.0)), 0.05, 5 * DAY, 0.2, 2
        elif kind in (Kind.acceleration, Kind.vibration, Kind.soil_temperature):
            # Quiet sensors: their level and noise only (gain 0: the slope does not move them).
            self.gain = 0.0
            self.baseline, self.sigma, self.decimals = {
                Kind.acceleration: (0.0, 0.3, 4), Kind.vibration: (0.02, 0.005, 3), Kind.soil_temperature: (float(rng.uniform(12.0, 18.0)), 0.05, 2)
            }[kind]
        else:  # pragma: no cover - Kind is closed
            raise ValueError(f"no simulator model for channel kind {kind!r}")
        self.fmt = f"%.{self.decimals}f"
        self.scale = 10.0**self.decimals
        #: Index in the Simulation's table of channel constants (``_ChannelTable``).
        self.uid = 0
        #: (name, value format): how the channel's readings are written.
        self.col = (self.name, self.fmt)

    def next_sample(self) -> float:
        return self.anchor + self.k * self.interval_s

    def retime(self, interval_s: float, now: float) -> None:
        """Sample every ``interval_s`` from the next sample on (the one due keeps its time)."""
        nxt = self.next_sample()
        self.anchor, self.k, self.interval_s = nxt if nxt > now else now + interval_s, 0, interval_s


def _grouped(keys: NDArray[np.intp], fn: Callable[[int, NDArray[np.intp]], FloatArray]) -> FloatArray:
    """``fn(key, idx)`` once per distinct key, ``idx`` the positions holding it; the results
    scattered back to those positions (one call per site instead of one per device)."""
    n = len(keys)
    out = np.empty(n)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    cut = (np.flatnonzero(sk[1:] != sk[:-1]) + 1).tolist()
    for a, b in zip([0, *cut], [*cut, n]):
        idx = order[a:b]
        out[idx] = fn(int(sk[a]), idx)
    return out


class _ChannelTable:
    """The constants of every channel of a Simulation as arrays, indexed by ``SimChannel.uid``."""

    def __init__(self, chans: list[SimChannel]) -> None:
        for i, c in enumerate(chans):
            c.uid = i
        self.chans = chans  # their intervals change (set_sampling): read when needed
        self.model = np.asarray([c.model for c in chans], dtype=np.intp)
        self.baseline = np.asarray([c.baseline for c in chans], dtype=np.float64)
        self.gain = np.asarray([c.gain for c in chans], dtype=np.float64)
        self.sigma = np.asarray([c.sigma for c in chans], dtype=np.float64)
        self.timescale_s = np.asarray([c.timescale_s for c in chans], dtype=np.float64)
        self.scale = np.asarray([c.scale for c in chans], dtype=np.float64)
        self.outlier_prob = max((c.outlier_prob for c in chans if c.model == _GNSS), default=0.0)


class _Shape:
    """What devices built from one template share about a sample group: how many channels,
    which are GNSS, and how its readings are written."""

    __slots__ = ("m", "gnss", "cols", "parts")

    def __init__(self, chans: list[SimChannel]) -> None:
        self.m = len(chans)
        self.gnss = [j for j, c in enumerate(chans) if c.model == _GNSS]
        #: (name, value format) per channel, for the rows of CSV feeds.
        self.cols: _Cols = tuple(c.col for c in chans)
        #: One sample's readings in a native v1 payload as a %-template of the values, split
        #: where the time goes: ``time_text.join(parts) % values``.
        text = ", ".join('{"ch": "' + name.replace("%", "%%") + '", "t": \x00, "v": ' + fmt + "}" for name, fmt in self.cols)
        self.parts = text.split("\x00")


class _Group:
    """Channels of one device on one sample clock: they are sampled together."""

    __slots__ = ("chans", "uids", "shape")

    def __init__(self, chans: list[SimChannel], shape: _Shape) -> None:
        self.chans = chans
        self.uids = [c.uid for c in chans]
        self.shape = shape


class _Batch:
    """The readings of one ``emit_until`` pass, computed for every due device at once.

    Each device adds its sample groups (channels on one sample clock: ``n`` samples × ``m``
    channels) in turn and draws their noise and multipath outliers from its own generator,
    in the order it always has, so a device's readings never depend on which other devices
    are due. ``compute`` then evaluates every reading in one vectorised pass: one numpy
    expression per channel model over all readings, and per site only the calls into its
    slope and rain. Readings are laid out group by group, each sample-major (an ``n × m``
    matrix), so a group's readings are ``values[r_ofs : r_ofs + n·m]``.
    """

    __slots__ = ("anchor", "k", "interval", "gn", "gm", "gsite", "uids", "z", "bump_at", "bump", "pending", "samples", "readings", "t")

    def __init__(self) -> None:
        # Per group: its sample clock (anchor, k, interval), samples n, channels m, site.
        self.anchor: list[float] = []
        self.k: list[int] = []
        self.interval: list[float] = []
        self.gn: list[int] = []
        self.gm: list[int] = []
        self.gsite: list[int] = []
        self.uids: list[int] = []  # the groups' channels, in order
        self.z: list[FloatArray] = []  # the groups' noise, in reading order
        self.bump_at: list[NDArray[np.intp]] = []
        self.bump: list[FloatArray] = []
        self.pending: list[tuple[np.random.Generator, FloatArray, list[SimChannel], list[int], int, int]] = []
        self.samples = 0
        self.readings = 0
        #: Every group's true sample times, in order (set by ``compute``).
        self.t: FloatArray = np.empty(0)

    def add(self, site: int, g: _Group, anchor: float, k: int, interval: float, n: int, rng: np.random.Generator, *, last: bool) -> tuple[int, int]:
        """Register ``n`` samples of group ``g`` at true times ``anchor + (k + i)·interval``;
        returns (sample offset, reading offset). ``last``: nothing else is drawn from ``rng``
        until ``compute`` (the device's last group)."""
        sh = g.shape
        m = sh.m
        t_ofs, r_ofs = self.samples, self.readings
        self.anchor.append(anchor)
        self.k.append(k)
        self.interval.append(interval)
        self.gn.append(n)
        self.gm.append(m)
        self.gsite.append(site)
        self.uids += g.uids
        self.z.append(rng.standard_normal(n * m))
        if sh.gnss:
            u = rng.random((n, len(sh.gnss)))
            if last:
                self.pending.append((rng, u, g.chans, sh.gnss, r_ofs, m))
            else:
                self._outliers(rng, u, g.chans, sh.gnss, r_ofs, m)
        self.samples += n
        self.readings += n * m
        return t_ofs, r_ofs

    def _outliers(self, rng: np.random.Generator, u: FloatArray, chans: list[SimChannel], gnss: list[int], r_ofs: int, m: int) -> None:
        for col, j in enumerate(gnss):
            hit = u[:, col] < chans[j].outlier_prob
            if hit.any():
                # Multipath: an outlier of 5-15 sigma either way.
                w = rng.random(int(hit.sum()))
                self.bump_at.append(r_ofs + np.flatnonzero(hit) * m + j)
                self.bump.append((5.0 + 10.0 * np.abs(2.0 * w - 1.0)) * chans[j].sigma * np.where(w >= 0.5, 1.0, -1.0))

    def resolve(self, top: float) -> None:
        """The outliers of the groups left pending: one test over all of them (``top``: the
        highest outlier probability), then the draws of each hit from its device's generator,
        as if drawn right after its group."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        u = np.concatenate([p[1].ravel() for p in pending])
        low = np.flatnonzero(u < top)
        if not len(low):
            return
        ends = np.cumsum([p[1].size for p in pending])
        for e in sorted(set(np.searchsorted(ends, low, side="right").tolist())):
            self._outliers(*pending[e])

    def compute(self, table: _ChannelTable, sites: list[SiteState]) -> FloatArray:
        """Every reading added, quantised per channel (in the layout described above)."""
        self.resolve(table.outlier_prob)
        if not self.readings:
            return np.empty(0)
        gn = np.asarray(self.gn, dtype=np.intp)
        gm = np.asarray(self.gm, dtype=np.intp)
        t_ofs = np.cumsum(gn) - gn
        # The sample times, exactly as anchor + (k + np.arange(n)) * interval per group.
        rep = np.repeat(np.arange(len(gn)), gn)
        i_t = (np.arange(self.samples) - t_ofs[rep]).astype(np.float64)
        T = np.asarray(self.anchor)[rep] + (np.asarray(self.k, dtype=np.float64)[rep] + i_t) * np.asarray(self.interval)[rep]
        self.t = T
        Z = np.concatenate(self.z)
        size = gn * gm
        gid = np.repeat(np.arange(len(gn)), size)
        local = np.arange(self.readings) - (np.cumsum(size) - size)[gid]
        m_r = gm[gid]
        i_r = local // m_r
        t_all = T[t_ofs[gid] + i_r]
        uid_all = np.asarray(self.uids, dtype=np.intp)[(np.cumsum(gm) - gm)[gid] + (local - i_r * m_r)]
        s_all = np.asarray(self.gsite, dtype=np.intp)[gid]
        model = table.model[uid_all]
        out = np.empty(self.readings)
        for kind in np.unique(model).tolist():
            sel = np.flatnonzero(model == kind)
            uid = uid_all[sel]
            ts = t_all[sel]
            at = s_all[sel]
            if kind == _RAIN:  # whole tips of the bucket since the previous sample
                prev = ts - np.asarray([table.chans[i].interval_s for i in uid.tolist()], dtype=np.float64)
                cum = _grouped(at, lambda s, i: sites[s].rain.cumulative(ts[i]))
                cum_prev = _grouped(at, lambda s, i: sites[s].rain.cumulative(prev[i]))
                tips = np.floor(cum / RAIN_TIP_MM + 1e-9) - np.floor(cum_prev / RAIN_TIP_MM + 1e-9)
                out[sel] = np.maximum(tips, 0.0) * RAIN_TIP_MM
                continue
            baseline = table.baseline[uid]
            noise = table.sigma[uid] * Z[sel]
            if kind == _LINEAR or kind == _GNSS:
                disp = _grouped(at, lambda s, i: sites[s].slope.displacement(ts[i]))
                out[sel] = baseline + table.gain[uid] * disp + noise
            elif kind == _BATTERY:
                out[sel] = _grouped(at, lambda s, i: sites[s].battery_v(ts[i], baseline[i])) + noise
            else:  # stored rain: pore pressure, groundwater, soil moisture
                uniq, inv = np.unique(table.timescale_s[uid], return_inverse=True)
                taus = uniq.tolist()
                nt = len(taus)
                stored = _grouped(at * nt + inv.reshape(-1), lambda k, i: sites[k // nt].rain.stored(ts[i], taus[k % nt]))
                gain = table.gain[uid]
                if kind == _STORED:
                    out[sel] = baseline + gain * stored + noise
                else:
                    out[sel] = np.clip(baseline + (gain - baseline) * (1.0 - np.exp(-stored / 20.0)) + noise, 0.0, 100.0)
        if self.bump:
            hit = np.concatenate(self.bump_at)
            out[hit] += np.concatenate(self.bump)
        scale = table.scale[uid_all]
        return np.round(out * scale) / scale


# -- devices and messages ------------------------------------------------------------------


_Cols = tuple[tuple[str, str], ...]
"""A sample group's channels as (name, %-format of the value)."""
_Samples = list[tuple[_Cols, str, tuple[float, ...]]]
"""A data message's samples, unformatted: (channels, reading time text, values)."""


class Message:
    """One MQTT message: ``t`` is when the device sends it (event time).

    ``device`` is the index in ``Simulation.devices`` (for ordering), ``kind`` "data" or
    "status". ``rows``: for data messages, the readings as (channel, t text, value text), for
    CSV feeds; built on first use (publishing never needs them).
    """

    __slots__ = ("t", "topic", "payload", "device", "kind", "_rows", "_samples", "site", "device_code", "malformed")

    def __init__(
        self,
        t: float,
        topic: str,
        payload: bytes,
        device: int,
        kind: str,
        rows: list[tuple[str, str, str]] | None = None,
        site: str = "",
        device_code: str = "",
        malformed: bool = False,
        *,
        samples: _Samples | None = None,
    ) -> None:
        self.t = t
        self.topic = topic
        self.payload = payload
        self.device = device
        self.kind = kind
        self._rows = rows
        self._samples = samples
        self.site = site
        self.device_code = device_code
        self.malformed = malformed

    @property
    def rows(self) -> list[tuple[str, str, str]]:
        if self._rows is None:
            samples = self._samples or []
            self._rows = [(name, tt, fmt % v) for cols, tt, vs in samples for (name, fmt), v in zip(cols, vs)]
            self._samples = None
        return self._rows

    @rows.setter
    def rows(self, rows: list[tuple[str, str, str]]) -> None:
        self._rows, self._samples = rows, None

    def __repr__(self) -> str:
        return f"Message(t={self.t!r}, topic={self.topic!r}, kind={self.kind!r}, payload={self.payload[:60]!r}...)"


class SimDevice:
    """A device: channels, sample and report clocks, heartbeat clock, faults, sequence."""

    def __init__(
        self,
        index: int,
        site: SiteState,
        code: str,
        channels: list[SimChannel],
        *,
        prefix: str,
        phase: float,
        readings_per_message: int,
        status_s: float,
        signal_dbm: float,
        silent_at: float | None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.index = index
        self.site = site
        self.code = code
        self.code_json = json.dumps(code)
        self.channels = channels
        self.data_topic = f"{prefix}/{site.code}/{code}/data"
        self.status_topic = f"{prefix}/{site.code}/{code}/status"
        self.rpm = readings_per_message
        self.status_s = status_s
        self.signal_dbm = signal_dbm
        self.silent_at = silent_at
        self.seq = 0
        self.phase = phase
        self.next_report = 0.0
        self.next_status = 0.0
        self.rest_v = next((c.baseline for c in channels if c.kind is Kind.battery), 12.45)
        self.faults: list[Any] = []  # simulators.faults.DeviceFault
        self.held: list[tuple[int, Message]] = []
        #: Channels grouped by sample clock (None: to be worked out again, after a retime).
        self.clock_groups: list[_Group] | None = None
        #: The device's own random stream (noise, outliers, heartbeats).
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self._sampling_s = 0.0
        self._report_s = 0.0
        self.retimed()

    @property
    def sampling_s(self) -> float:
        """The fastest channel's interval (what the heartbeat reports as ``sampling_s``)."""
        return self._sampling_s

    @property
    def report_s(self) -> float:
        return self._report_s

    def retimed(self) -> None:
        self.clock_groups = None
        self._sampling_s = min(c.interval_s for c in self.channels)
        self._report_s = self.rpm * self._sampling_s

    def next_due(self) -> float:
        return min(self.next_report, self.next_status)


_Plan = tuple[list[float], list[tuple[_Group, int, int, int]]]
"""A device's part of one pass: its report times and its sample groups (group, samples,
offsets of the samples and readings in the pass's ``_Batch``)."""
_SEND_ORDER = operator.attrgetter("t", "device", "kind")


class Simulation:
    """Every device of a registry under a scenario, from ``t0`` for ``duration_s``."""

    def __init__(
        self,
        scenario: Scenario,
        registry: Registry,
        *,
        seed: int | None = None,
        t0: float | None = None,
        duration_s: float | None = None,
        drill: bool = False,
        strict_sites: bool = True,
    ) -> None:
        from geowarn.simulators.faults import resolve_faults

        self.scenario = scenario
        self.registry = registry
        self.seed = scenario.seed if seed is None else int(seed)
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        self.t0 = scenario.start if t0 is None else float(t0)
        self.duration_s = scenario.duration if duration_s is None else float(duration_s)
        if not self.duration_s > 0:
            raise ValueError(f"duration must be > 0 s, got {self.duration_s}")
        self.t_end = self.t0 + self.duration_s
        self.drill = drill
        self.prefix = scenario.topic_prefix
        self._drill_text = "true" if drill else "false"
        self._drill_tail = ', "drill": true}' if drill else "}"
        known = set(registry.sites)
        self.strict_sites = strict_sites
        if strict_sites:
            for named in [s.site for s in scenario.slopes] + [s.site for s in scenario.storms]:
                if named != "*" and named not in known:
                    raise ValueError(f"scenario {scenario.name!r} names site {named!r}, which is not in the registry ({', '.join(sorted(known))})")
        self.sites: dict[str, SiteState] = {}
        self.failures: dict[str, float] = {}
        self.devices: list[SimDevice] = []
        self._site_list: list[SiteState] = []
        dd = scenario.devices
        for code, site in registry.sites.items():
            rng = stable_rng(self.seed, "site", code)
            azimuth = float(rng.uniform(0.0, 360.0))
            dip = float(rng.uniform(15.0, 35.0))
            storms = [(self.t0 + s.at, s) for s in scenario.storms if s.site in ("*", code)]
            rain = Rain(stable_rng(self.seed, "weather", code), self.t0 - _SPIN_UP_S, self.t_end + DAY, scenario.weather, storms)
            spec = scenario.slope_for(code)
            slope = self._slope(spec, rng, site.lon, rain)
            fails = getattr(slope, "t_f", None)
            if fails is not None:
                self.failures[code] = float(fails)
            state = SiteState(code, site.lon, slope, rain, azimuth, dip, index=len(self._site_list))
            self.sites[code] = state
            self._site_list.append(state)
            silent_at = float(fails) if fails is not None and dd.silent_after_failure else None
            for dev in site.devices:
                drng = stable_rng(self.seed, "device", code, dev.device)
                heading = float(drng.uniform(0.0, 360.0))
                signal = float(drng.uniform(-95.0, -65.0))
                seen: dict[Kind, int] = {}
                chans: list[SimChannel] = []
                for ch in dev.channels:
                    axis = seen.get(ch.kind, 0)
                    seen[ch.kind] = axis + 1
                    if dd.sampling_s is not None:
                        ch = ch.model_copy(update={"interval_s": dd.sampling_s})
                    chans.append(SimChannel(ch, state, drng, axis=axis, heading_deg=heading))
                fastest = min(c.interval_s for c in chans)
                # Devices are not synchronised: each starts at its own whole second.
                phase = float(math.floor(drng.uniform(0.0, fastest)))
                d = SimDevice(len(self.devices), state, dev.device, chans, prefix=self.prefix, phase=phase, readings_per_message=dd.readings_per_message, status_s=dd.status_s, signal_dbm=signal, silent_at=silent_at, rng=drng)
                for c in chans:
                    c.anchor, c.k = self.t0 + phase, 0
                d.next_report = self.t0 + phase + (d.rpm - 1) * fastest
                d.next_status = self.t0 + phase
                self.devices.append(d)
        self._by_code = {(d.site.code, d.code): d for d in self.devices}
        #: Devices of the national convention: their messages in its form (simulators/convention.py).
        self.convention = ConventionDevices(registry)
        self._table = _ChannelTable([c for d in self.devices for c in d.channels])
        self._shapes: dict[tuple[tuple[tuple[str, str], int], ...], _Shape] = {}
        self.fault_truth = resolve_faults(self, scenario.faults)
        self._heap = [(d.next_due(), d.index) for d in self.devices]
        heapq.heapify(self._heap)

    def _slope(self, spec: SlopeSpec, rng: np.random.Generator, lon: float, rain: Rain) -> Slope:
        creep = float(rng.uniform(0.005, 0.05))
        seasonal_phase = float(rng.uniform(0.0, 2 * math.pi))
        if spec.model == "voight":
            assert spec.failure_at is not None  # validated by SlopeSpec
            t_f = self.t0 + spec.failure_at
            return VoightFailure.reaching(self.t0, t_f, v_mm_day=spec.red_mm_day, lead_s=spec.red_lead, alpha=spec.alpha, creep_mm_day=spec.creep_mm_day)
        if spec.model == "seasonal":
            return SeasonalSlope(
                self.t0,
                self.t_end + DAY,
                rain.stored,
                base_mm_day=spec.base_mm_day,
                rain_gain_mm_day_per_mm=spec.rain_gain_mm_day_per_mm,
                rain_timescale_s=spec.rain_timescale,
                drawdown_gain_mm_per_m=spec.drawdown_gain_mm_per_m,
                reservoir={"high_m": spec.reservoir_high_m, "low_m": spec.reservoir_low_m, "drawdown_start_doy": spec.drawdown_start_doy, "drawdown_days": spec.drawdown_days},
            )
        # Thermal expansion peaks mid-afternoon local solar time (15:00).
        h0 = (self.t0 / 3600.0 + lon / 15.0) % 24.0
        thermal_phase = math.pi / 2 - 2 * math.pi * (15.0 - h0) / 24.0
        return StableSlope(self.t0, creep, spec.seasonal_amp_mm, spec.thermal_amp_mm, seasonal_phase=seasonal_phase, thermal_phase=thermal_phase)

    # -- commands ---------------------------------------------------------------------------

    def device(self, site: str, device: str) -> SimDevice | None:
        return self._by_code.get((site, device))

    def set_sampling(self, site: str, device: str, interval_s: float | None, now: float, *, channels: list[str] | None = None) -> SimDevice:
        """Obey ``set_sampling``: every channel (or only those named in ``channels``) samples
        every ``interval_s`` (None: back to its normal interval) from its next sample on;
        reports follow the new pace."""
        d = self._by_code.get((site, device))
        if d is None:
            raise KeyError(f"no simulated device {site}/{device}")
        if interval_s is not None and not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s must be > 0 s, got {interval_s}")
        for c in d.channels:
            if channels is not None and c.name not in channels:
                continue
            c.retime(c.normal_s if interval_s is None else float(interval_s), now)
        d.retimed()
        nxt = min(c.next_sample() for c in d.channels)
        d.next_report = max(now, nxt + (d.rpm - 1) * d.sampling_s)
        # The device confirms at once with a heartbeat carrying its new interval.
        d.next_status = now
        heapq.heappush(self._heap, (d.next_due(), d.index))
        return d

    # -- messages ---------------------------------------------------------------------------

    def next_due(self) -> float:
        """Event time of the next message (inf when every device is done)."""
        while self._heap:
            t, i = self._heap[0]
            if t == self.devices[i].next_due():
                return t
            heapq.heappop(self._heap)  # stale entry
        return math.inf

    def emit_until(self, t: float) -> list[Message]:
        """Every message due up to event time ``t`` (and not after the run's end), in send order."""
        t = min(t, self.t_end)
        out: list[Message] = []
        due: list[SimDevice] = []
        seen: set[int] = set()
        while self._heap and self._heap[0][0] <= t:
            tt, i = heapq.heappop(self._heap)
            d = self.devices[i]
            if tt != d.next_due() or d.index in seen:
                continue  # a stale entry, or a device already taken
            seen.add(d.index)
            due.append(d)
        # The pass makes many small objects that all live on: the cycle collector would only
        # walk the whole heap over and over (half the time of a large pass), so it waits.
        paused = gc.isenabled()
        gc.disable()
        try:
            # Three steps: every due device plans its reports and draws its noise, all the
            # readings are computed at once, then each device's messages are put together.
            batch = _Batch()
            plans = [self._plan(d, t, batch) for d in due]
            values = batch.compute(self._table, self._site_list)
            t_list = batch.t.tolist()
            t_text = [repr(x) for x in np.round(batch.t, 3).tolist()]
            v_all = tuple(values.tolist())
            for d, plan in zip(due, plans):
                if plan is not None:
                    self._reports(d, plan, batch.t, t_list, t_text, values, v_all, out)
                self._statuses(d, t, out)
                nd = d.next_due()
                if nd <= self.t_end:
                    heapq.heappush(self._heap, (nd, d.index))
            out.sort(key=_SEND_ORDER)
        finally:
            if paused:
                gc.enable()
        return self.convention.convert(out) if self.convention else out

    def flush(self) -> list[Message]:
        """Messages still held back (out-of-order delivery) at the end of the run."""
        out = [m for d in self.devices for _, m in d.held]
        for d in self.devices:
            d.held.clear()
        out.sort(key=lambda m: (m.t, m.device))
        return self.convention.convert(out) if self.convention else out

    def _plan(self, d: SimDevice, t: float, batch: _Batch) -> _Plan | None:
        """Advance ``d``'s report and sample clocks to ``t``; its samples go into ``batch``."""
        reports: list[float] = []
        while d.next_report <= t:
            reports.append(d.next_report)
            d.next_report += d.report_s
        if not reports:
            return None
        t_last = reports[-1]
        silent_at = d.silent_at
        if d.faults:
            from geowarn.simulators.faults import battery_dead_at

            dead = battery_dead_at(d)
            if dead is not None and (silent_at is None or dead < silent_at):
                silent_at = dead
        groups: list[tuple[_Group, int, int, int]] = []
        clock_groups = d.clock_groups
        if clock_groups is None:
            # Channels on the same sample clock are computed together. They stay together
            # until the device is retimed: they advance by the same number of samples.
            clocks: dict[tuple[float, int, float], list[SimChannel]] = {}
            for c in d.channels:
                clocks.setdefault((c.anchor, c.k, c.interval_s), []).append(c)
            clock_groups = d.clock_groups = [_Group(chans, self._shape(chans)) for chans in clocks.values()]
        last = len(clock_groups) == 1
        site = d.site.index
        for g in clock_groups:
            c0 = g.chans[0]
            anchor, k, interval = c0.anchor, c0.k, c0.interval_s
            first = anchor + k * interval
            if first > t_last:
                continue
            n = int(math.floor((t_last - first) / interval + 1e-9)) + 1
            for c in g.chans:
                c.k += n
            if silent_at is not None:
                # The samples before the device fell silent (a prefix: times only grow).
                n = int(np.count_nonzero(anchor + (k + np.arange(n, dtype=np.float64)) * interval < silent_at))
                if not n:
                    continue
            t_ofs, r_ofs = batch.add(site, g, anchor, k, interval, n, d.rng, last=last)
            groups.append((g, n, t_ofs, r_ofs))
        return reports, groups

    def _shape(self, chans: list[SimChannel]) -> _Shape:
        key = tuple((c.col, c.model) for c in chans)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = _Shape(chans)
        return shape

    def _reports(self, d: SimDevice, plan: _Plan, t_all: FloatArray, t_list: list[float], t_text: list[str], values: FloatArray, v_all: tuple[float, ...], out: list[Message]) -> None:
        """``d``'s data messages of this pass, with its faults applied, into ``out``."""
        reports, groups = plan
        texts: list[list[str]] = [[] for _ in reports]
        samples: list[_Samples] = [[] for _ in reports]
        one = len(reports) == 1
        for g, n, t_ofs, r_ofs in groups:
            m, cols, parts = g.shape.m, g.shape.cols, g.shape.parts
            if d.faults:
                from geowarn.simulators.faults import apply_reading_faults

                t_rep, vs = apply_reading_faults(d, g.chans, t_all[t_ofs : t_ofs + n], values[r_ofs : r_ofs + n * m].reshape(n, m))
                tt_text = [repr(x) for x in np.round(t_rep, 3).tolist()]
                vals: tuple[float, ...] = tuple(vs.ravel().tolist())
                pos, tpos = 0, 0
            else:
                tt_text, vals, pos, tpos = t_text, v_all, r_ofs, t_ofs
            for i in range(n):
                row = vals[pos : pos + m]
                pos += m
                tt = tt_text[tpos + i]
                # The sample belongs to the first report at or after it.
                j = 0 if one else bisect.bisect_left(reports, t_list[t_ofs + i] - 1e-6)
                texts[j].append(tt.join(parts) % row)
                samples[j].append((cols, tt, row))
        head = f'{{"v": 1, "device": "{d.code}", "seq": '
        tail = f', "drill": {self._drill_text}, "readings": ['
        for T, text, sample in zip(reports, texts, samples):
            if not text:
                continue
            seq = d.seq
            d.seq += 1
            payload = f"{head}{seq}{tail}{text[0] if len(text) == 1 else ', '.join(text)}]}}".encode()
            if not d.faults:
                out.append(Message(T, d.data_topic, payload, d.index, "data", None, d.site.code, d.code, samples=sample))
                continue
            from geowarn.simulators.faults import apply_message_faults, offline

            if offline(d, T, seq):
                continue  # a gap: lost on the way, the sequence number shows it
            msg = Message(T, d.data_topic, payload, d.index, "data", None, d.site.code, d.code, samples=sample)
            apply_message_faults(self, d, msg, seq, out)

    def _statuses(self, d: SimDevice, t: float, out: list[Message]) -> None:
        """``d``'s heartbeats due up to ``t`` into ``out``."""
        site = d.site
        while d.next_status <= t:
            ts_ = d.next_status
            # Heartbeats stay on their own grid even after an extra confirmation heartbeat.
            grid = self.t0 + d.phase
            d.next_status = grid + d.status_s * (math.floor((ts_ - grid) / d.status_s + 1e-9) + 1)
            if d.silent_at is not None and ts_ >= d.silent_at:
                continue
            batt, sun, temp = site.heartbeat(ts_, d.rest_v)
            if d.faults:
                from geowarn.simulators.faults import offline, status_battery

                fault_batt = status_battery(d, ts_)
                if fault_batt is None or offline(d, ts_):
                    continue
                batt = fault_batt
            # Exactly what json.dumps gives for the heartbeat's dict (these keys in this
            # order, floats by repr), written out directly: this is a hot path.
            z0, z1, z2 = d.rng.standard_normal(3).tolist()
            solar = round(16.0 + 5.0 * sun + 0.05 * z0, 2) if sun > 0 else 0.0
            text = (
                f'{{"device": {d.code_json}, "t": {round(ts_, 3)!r}, "battery_v": {round(batt, 2)!r}, "solar_v": {solar!r}, '
                f'"signal_dbm": {int(round(d.signal_dbm + 3.0 * z1))}, "temp_c": {round(temp + 0.3 * z2, 1)!r}, "sampling_s": {d.sampling_s!r}, '
                f'"fw": "{FIRMWARE}"{self._drill_tail}'
            )
            out.append(Message(ts_, d.status_topic, text.encode(), d.index, "status", [], site.code, d.code))

    # -- ground truth -----------------------------------------------------------------------

    def truth(self) -> dict[str, Any]:
        """The ground truth of the run: failure times, injected faults, the run's frame."""
        return {
            "scenario": self.scenario.name,
            "seed": self.seed,
            "start": rfc3339(self.t0),
            "end": rfc3339(self.t_end),
            "drill": self.drill,
            "failures": {site: rfc3339(t) for site, t in sorted(self.failures.items())},
            "failures_epoch": dict(sorted(self.failures.items())),
            "faults": self.fault_truth,
            "sites": {code: type(s.slope).__name__ for code, s in self.sites.items()},
            "devices": len(self.devices),
        }
