"""Device models: how a site's true state becomes the readings of its channels.

This module owns the per-site environment (slope truth, sliding direction, weather and sun)
and one model per channel kind, picked by ``channel_model`` from a registry ``Channel`` so any
registry can be simulated. A ``ChannelModel`` has ``value(t) -> float``: the reading as the
instrument reports it at event time ``t``, already quantised to the instrument's resolution
(tipping-bucket rain in 0.2 mm steps, positions in 0.01 mm, ...). Models carry state (their
random stream, the rain gauge's last read time), so call them in event-time order.

Randomness comes only from the ``numpy.random.Generator`` handed in; nothing is global.
"""

from __future__ import annotations

import bisect
import math
from types import MappingProxyType
from typing import Protocol

import numpy as np

from geowarn.config.registry import Channel, Kind
from geowarn.simulators.slope import DAY, Slope

RAIN_TIP_MM = 0.2
"""Volume of one tipping-bucket tip; rain readings are whole multiples of it."""

_BLOCK = 512
"""Random numbers are drawn in blocks: one numpy call per block instead of per reading."""


class Draws:
    """Buffered standard normals and uniforms from one Generator (cheap per-reading draws)."""

    __slots__ = ("_rng", "_normals", "_ni", "_uniforms", "_ui")

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._normals: list[float] = []
        self._ni = 0
        self._uniforms: list[float] = []
        self._ui = 0

    def normal(self) -> float:
        if self._ni >= len(self._normals):
            self._normals = self._rng.standard_normal(_BLOCK).tolist()
            self._ni = 0
        x = self._normals[self._ni]
        self._ni += 1
        return x

    def uniform(self) -> float:
        if self._ui >= len(self._uniforms):
            self._uniforms = self._rng.random(_BLOCK).tolist()
            self._ui = 0
        x = self._uniforms[self._ui]
        self._ui += 1
        return x


# -- the site environment ------------------------------------------------------------


class Weather:
    """A site's rain: storms arriving at random (Poisson), each with its own duration and rate.

    Storms never overlap and are generated lazily in time order, so the rain falling in any
    interval is a fixed function of time for a given Generator, whoever asks and how often.
    The defaults (one storm every 5 days, 6 h long, 2.5 mm/h on average, ~15 mm a storm)
    give about 1100 mm a year, the order of the Three Gorges region.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        t_start: float,
        *,
        storms_per_day: float = 0.2,
        mean_storm_h: float = 6.0,
        mean_intensity_mm_h: float = 2.5,
    ) -> None:
        if not storms_per_day >= 0:
            raise ValueError(f"storms_per_day must be >= 0, got {storms_per_day}")
        if not (mean_storm_h > 0 and mean_intensity_mm_h > 0):
            raise ValueError("mean_storm_h and mean_intensity_mm_h must be > 0")
        self._rng = rng
        self.t_start = float(t_start)
        self.storms_per_day = storms_per_day
        self.mean_storm_s = mean_storm_h * 3600.0
        self.mean_rate = mean_intensity_mm_h / 3600.0  # mm/s
        self._starts: list[float] = []
        self._ends: list[float] = []
        self._rates: list[float] = []
        self._cum_at_start: list[float] = []  # rain since t_start when each storm begins
        self._horizon = self.t_start  # storms are known up to here
        self._next_start = self._draw_gap(self.t_start)

    def _draw_gap(self, after: float) -> float:
        if self.storms_per_day == 0:
            return math.inf
        return after + float(self._rng.exponential(DAY / self.storms_per_day))

    def _extend(self, t: float) -> None:
        while self._next_start <= t:
            start = self._next_start
            end = start + float(self._rng.exponential(self.mean_storm_s))
            rate = float(self._rng.exponential(self.mean_rate))
            cum = 0.0
            if self._starts:
                cum = self._cum_at_start[-1] + self._rates[-1] * (self._ends[-1] - self._starts[-1])
            self._starts.append(start)
            self._ends.append(end)
            self._rates.append(rate)
            self._cum_at_start.append(cum)
            self._next_start = self._draw_gap(end)

    def cumulative(self, t: float) -> float:
        """Rain (mm) fallen between ``t_start`` and ``t``."""
        self._extend(t)
        i = bisect.bisect_right(self._starts, t) - 1
        if i < 0:
            return 0.0
        return self._cum_at_start[i] + self._rates[i] * (min(t, self._ends[i]) - self._starts[i])

    def intensity(self, t: float) -> float:
        """Rain rate at ``t`` in mm/h (0 between storms)."""
        self._extend(t)
        i = bisect.bisect_right(self._starts, t) - 1
        if i < 0 or t >= self._ends[i]:
            return 0.0
        return self._rates[i] * 3600.0

    def stored(self, t: float, timescale_s: float) -> float:
        """Rain (mm) weighted by exp(−age/timescale): a linear reservoir that fills and drains.

        Pore pressure, groundwater and soil moisture all respond to rain this way, each with
        its own timescale.
        """
        self._extend(t)
        i = bisect.bisect_right(self._starts, t) - 1
        total = 0.0
        horizon = 12.0 * timescale_s  # older storms contribute < e^-12 of their depth
        while i >= 0:
            start, end = self._starts[i], self._ends[i]
            if t - end > horizon:
                break
            total += self._rates[i] * timescale_s * (
                math.exp(-(t - min(t, end)) / timescale_s) - math.exp(-(t - start) / timescale_s)
            )
            i -= 1
        return total


class Power:
    """A station's solar panel and 12 V lead-acid battery, following the sun at the site.

    Local solar time comes from the longitude; clouds (rain) cut the charge. Deterministic:
    instrument noise is added by the channel model or the heartbeat.
    """

    def __init__(self, lon: float, weather: Weather, *, rest_v: float = 12.4, charge_v: float = 1.6) -> None:
        self.lon = float(lon)
        self.weather = weather
        self.rest_v = rest_v
        self.charge_v = charge_v

    def solar_hour(self, t: float) -> float:
        return (t / 3600.0 + self.lon / 15.0) % 24.0

    def sun(self, t: float) -> float:
        """Irradiance 0..1: a half sine from 06:00 to 18:00 local solar time, dimmed by rain."""
        h = self.solar_hour(t)
        s = max(0.0, math.sin(math.pi * (h - 6.0) / 12.0))
        return s * (0.3 if self.weather.intensity(t) > 0 else 1.0)

    def solar_v(self, t: float) -> float:
        s = self.sun(t)
        return 0.0 if s <= 0 else 16.0 + 5.0 * s

    def battery_v(self, t: float) -> float:
        # The battery sags slowly through the night and is charged back by day.
        h = self.solar_hour(t)
        night_h = (h - 18.0) % 24.0 if not 6.0 <= h < 18.0 else 0.0
        return self.rest_v - 0.02 * night_h + self.charge_v * self.sun(t)

    def temp_c(self, t: float) -> float:
        h = self.solar_hour(t)
        return 16.0 + 7.0 * math.sin(2.0 * math.pi * (h - 9.0) / 24.0) - (3.0 if self.weather.intensity(t) > 0 else 0.0)


class SiteEnvironment:
    """The true state of one site that its devices observe.

    ``slope`` moves along a sliding direction given by ``azimuth_deg`` (clockwise from north,
    the downslope direction) and ``dip_deg`` (below horizontal). Devices sit on the moving
    mass, so every displacement-like channel sees the same slope displacement; the
    displacement of the last asked time is kept because a site's several channels ask for
    the same ``t`` in a row.
    """

    def __init__(
        self,
        site: str,
        slope: Slope,
        weather: Weather,
        *,
        lon: float = 110.0,
        azimuth_deg: float = 135.0,
        dip_deg: float = 25.0,
    ) -> None:
        if not 0.0 <= dip_deg <= 90.0:
            raise ValueError(f"dip_deg must be in [0, 90], got {dip_deg}")
        self.site = site
        self.slope = slope
        self.weather = weather
        self.power = Power(lon, weather)
        self.azimuth_deg = float(azimuth_deg) % 360.0
        self.dip_deg = float(dip_deg)
        az, dip = math.radians(self.azimuth_deg), math.radians(self.dip_deg)
        #: Unit vector of the sliding direction in east/north/up (down the slope: up < 0).
        self.enu = (math.cos(dip) * math.sin(az), math.cos(dip) * math.cos(az), -math.sin(dip))
        self._last_t = math.nan
        self._last_d = 0.0

    def displacement(self, t: float) -> float:
        if t != self._last_t:
            self._last_d = float(self.slope.displacement(float(t)))
            self._last_t = t
        return self._last_d


# -- channel models ------------------------------------------------------------------


class ChannelModel(Protocol):
    """One channel of one device: ``value(t)`` is its reading at event time ``t``."""

    channel: str
    kind: Kind
    unit: str

    def value(self, t: float) -> float: ...


class _Base:
    __slots__ = ("channel", "kind", "unit", "decimals", "_draws")

    def __init__(self, ch: Channel, rng: np.random.Generator, decimals: int) -> None:
        self.channel = ch.channel
        self.kind = ch.kind
        self.unit = ch.unit or ""
        self.decimals = decimals
        self._draws = Draws(rng)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.channel!r}, {self.kind.value})"


class GnssComponent(_Base):
    """One GNSS coordinate (east, north or up) in mm relative to the reference epoch.

    Noise is Gaussian (σ horizontal, twice that vertical, the usual GNSS ratio); with
    probability ``outlier_prob`` a reading carries a multipath outlier of 5–15 σ either way.
    """

    __slots__ = ("_env", "_factor", "sigma_mm", "outlier_prob")

    def __init__(
        self,
        ch: Channel,
        env: SiteEnvironment,
        rng: np.random.Generator,
        *,
        sigma_h_mm: float = 3.0,
        outlier_prob: float = 0.002,
    ) -> None:
        super().__init__(ch, rng, 2)
        if not sigma_h_mm >= 0 or not 0 <= outlier_prob <= 1:
            raise ValueError(f"sigma_h_mm must be >= 0 and outlier_prob in [0, 1], got {sigma_h_mm}, {outlier_prob}")
        axis = {Kind.gnss_e: 0, Kind.gnss_n: 1, Kind.gnss_u: 2}[ch.kind]
        self._env = env
        self._factor = env.enu[axis]
        self.sigma_mm = sigma_h_mm * (2.0 if ch.kind is Kind.gnss_u else 1.0)
        self.outlier_prob = outlier_prob

    def truth(self, t: float) -> float:
        return self._factor * self._env.displacement(t)

    def value(self, t: float) -> float:
        d = self._draws
        v = self._factor * self._env.displacement(t) + self.sigma_mm * d.normal()
        if d.uniform() < self.outlier_prob:
            # uniform() in [0,1): the lower half picks a negative sign.
            u = d.uniform()
            v += (5.0 + 10.0 * abs(2.0 * u - 1.0)) * self.sigma_mm * (1.0 if u >= 0.5 else -1.0)
        return round(v, 2)


class Extensometer(_Base):
    """Wire extensometer or crack meter (mm): baseline + slope displacement + σ noise."""

    __slots__ = ("_env", "baseline_mm", "sigma_mm")

    def __init__(self, ch: Channel, env: SiteEnvironment, rng: np.random.Generator, *, baseline_mm: float = 0.0, sigma_mm: float = 0.1) -> None:
        super().__init__(ch, rng, 2)
        self._env = env
        self.baseline_mm = baseline_mm
        self.sigma_mm = sigma_mm

    def truth(self, t: float) -> float:
        return self.baseline_mm + self._env.displacement(t)

    def value(self, t: float) -> float:
        return round(self.baseline_mm + self._env.displacement(t) + self.sigma_mm * self._draws.normal(), 2)


_TILT_PER_MRAD = MappingProxyType({"mrad": 1.0, "urad": 1000.0, "deg": 180.0 / math.pi / 1000.0})
_TILT_DECIMALS = MappingProxyType({"mrad": 4, "urad": 1, "deg": 6})


class Tiltmeter(_Base):
    """One tilt axis: rotation proportional to slope displacement, projected on the axis.

    ``mrad_per_mm`` 0.1 is a block about 10 m tall toppling about its foot. Axis ``i`` of a
    device points ``heading + i·90°``; the reading is the rotation's component on it.
    """

    __slots__ = ("_env", "_gain", "_sigma", "_scale")

    def __init__(
        self,
        ch: Channel,
        env: SiteEnvironment,
        rng: np.random.Generator,
        *,
        heading_deg: float = 0.0,
        mrad_per_mm: float = 0.1,
        sigma_mrad: float = 0.002,
    ) -> None:
        unit = ch.unit or "mrad"
        super().__init__(ch, rng, _TILT_DECIMALS[unit])
        self._env = env
        self._scale = _TILT_PER_MRAD[unit]
        self._gain = mrad_per_mm * math.cos(math.radians(heading_deg - env.azimuth_deg)) * self._scale
        self._sigma = sigma_mrad * self._scale

    def truth(self, t: float) -> float:
        return self._gain * self._env.displacement(t)

    def value(self, t: float) -> float:
        return round(self._gain * self._env.displacement(t) + self._sigma * self._draws.normal(), self.decimals)


class RainGauge(_Base):
    """Tipping-bucket rain gauge: whole tips (0.2 mm each) since the previous reading.

    The bucket counts tips of the cumulative rain, so the remainder below one tip carries
    over to the next reading instead of being lost. The first reading covers one reporting
    interval; a reading at or before the previous one reports 0.
    """

    __slots__ = ("_weather", "_interval_s", "_last_t")

    def __init__(self, ch: Channel, env: SiteEnvironment, rng: np.random.Generator) -> None:
        super().__init__(ch, rng, 1)
        self._weather = env.weather
        self._interval_s = ch.interval_s
        self._last_t: float | None = None

    def _tips(self, t: float) -> int:
        return math.floor(self._weather.cumulative(t) / RAIN_TIP_MM + 1e-9)

    def value(self, t: float) -> float:
        last = t - self._interval_s if self._last_t is None else self._last_t
        if t <= last:
            return 0.0
        self._last_t = t
        return round((self._tips(t) - self._tips(last)) * RAIN_TIP_MM, 1)


class RainResponse(_Base):
    """Pore pressure (kPa) or groundwater level (m): baseline + gain × stored rain + noise."""

    __slots__ = ("_weather", "baseline", "gain", "timescale_s", "sigma")

    def __init__(
        self,
        ch: Channel,
        env: SiteEnvironment,
        rng: np.random.Generator,
        *,
        baseline: float,
        gain: float,
        timescale_s: float,
        sigma: float,
        decimals: int,
    ) -> None:
        super().__init__(ch, rng, decimals)
        self._weather = env.weather
        self.baseline = baseline
        self.gain = gain
        self.timescale_s = timescale_s
        self.sigma = sigma

    def truth(self, t: float) -> float:
        return self.baseline + self.gain * self._weather.stored(t, self.timescale_s)

    def value(self, t: float) -> float:
        return round(self.truth(t) + self.sigma * self._draws.normal(), self.decimals)


class SoilMoisture(_Base):
    """Volumetric water content (%): rises towards saturation with stored rain, dries out."""

    __slots__ = ("_weather", "dry_pct", "sat_pct", "ref_mm", "timescale_s", "sigma")

    def __init__(
        self,
        ch: Channel,
        env: SiteEnvironment,
        rng: np.random.Generator,
        *,
        dry_pct: float = 18.0,
        sat_pct: float = 45.0,
        ref_mm: float = 20.0,
        timescale_s: float = 2 * DAY,
        sigma: float = 0.3,
    ) -> None:
        super().__init__(ch, rng, 1)
        self._weather = env.weather
        self.dry_pct, self.sat_pct, self.ref_mm = dry_pct, sat_pct, ref_mm
        self.timescale_s, self.sigma = timescale_s, sigma

    def truth(self, t: float) -> float:
        s = self._weather.stored(t, self.timescale_s)
        return self.dry_pct + (self.sat_pct - self.dry_pct) * (1.0 - math.exp(-s / self.ref_mm))

    def value(self, t: float) -> float:
        return round(min(100.0, max(0.0, self.truth(t) + self.sigma * self._draws.normal())), 1)


class Battery(_Base):
    """Battery voltage (V) of the station's solar power system, with ADC noise."""

    __slots__ = ("_power", "sigma_v")

    def __init__(self, ch: Channel, env: SiteEnvironment, rng: np.random.Generator, *, power: Power | None = None, sigma_v: float = 0.01) -> None:
        super().__init__(ch, rng, 2)
        self._power = power if power is not None else env.power
        self.sigma_v = sigma_v

    def value(self, t: float) -> float:
        return round(self._power.battery_v(t) + self.sigma_v * self._draws.normal(), 2)


def channel_model(
    ch: Channel,
    env: SiteEnvironment,
    rng: np.random.Generator,
    *,
    axis: int = 0,
    heading_deg: float | None = None,
    power: Power | None = None,
) -> ChannelModel:
    """The model for a registry channel, chosen by its kind; device-specific constants
    (crack baseline, tilt heading, piezometer baseline) are drawn from ``rng``.

    ``axis`` is the channel's index among the device's channels of the same kind (the
    second tilt channel is the perpendicular axis); ``power`` shares one power system between
    a device's battery channel and its heartbeat.
    """
    kind = ch.kind
    if kind in (Kind.gnss_e, Kind.gnss_n, Kind.gnss_u):
        return GnssComponent(ch, env, rng)
    if kind is Kind.displacement:
        return Extensometer(ch, env, rng, baseline_mm=0.0, sigma_mm=0.1)
    if kind is Kind.crack:
        # A crack meter reads the crack's width, not a displacement from zero.
        return Extensometer(ch, env, rng, baseline_mm=round(float(rng.uniform(5.0, 25.0)), 2), sigma_mm=0.1)
    if kind is Kind.tilt:
        heading = float(rng.uniform(0.0, 360.0)) if heading_deg is None else heading_deg
        return Tiltmeter(ch, env, rng, heading_deg=heading + 90.0 * axis)
    if kind is Kind.rain:
        return RainGauge(ch, env, rng)
    if kind is Kind.pore_pressure:
        # About 1 m of head (9.81 kPa) per 100 mm of rain (specific yield ~0.1): a 50 mm/day
        # storm raises it ~5 kPa/day, the rise detector's yellow. Baselines sit well under the
        # example thresholds (yellow 180 kPa).
        return RainResponse(ch, env, rng, baseline=float(rng.uniform(90.0, 130.0)), gain=0.1, timescale_s=2 * DAY, sigma=0.2, decimals=2)
    if kind is Kind.groundwater:
        return RainResponse(ch, env, rng, baseline=float(rng.uniform(5.0, 20.0)), gain=0.01, timescale_s=5 * DAY, sigma=0.005, decimals=3)
    if kind is Kind.soil_moisture:
        return SoilMoisture(ch, env, rng)
    if kind is Kind.battery:
        return Battery(ch, env, rng, power=power)
    if kind is Kind.deep_displacement:
        return Extensometer(ch, env, rng, baseline_mm=0.0, sigma_mm=0.3)
    if kind is Kind.seepage_pressure:
        return RainResponse(ch, env, rng, baseline=float(rng.uniform(90.0, 130.0)), gain=0.1, timescale_s=2 * DAY, sigma=0.2, decimals=2)
    if kind is Kind.mud_level:
        return RainResponse(ch, env, rng, baseline=0.05, gain=0.005, timescale_s=3 * 3600.0, sigma=0.005, decimals=3)
    if kind is Kind.stress:
        return RainResponse(ch, env, rng, baseline=float(rng.uniform(50.0, 150.0)), gain=0.05, timescale_s=5 * DAY, sigma=0.2, decimals=2)
    if kind is Kind.acceleration:
        return RainResponse(ch, env, rng, baseline=0.0, gain=0.0, timescale_s=DAY, sigma=0.3, decimals=4)
    if kind is Kind.vibration:
        return RainResponse(ch, env, rng, baseline=0.02, gain=0.0, timescale_s=DAY, sigma=0.005, decimals=3)
    if kind is Kind.soil_temperature:
        return RainResponse(ch, env, rng, baseline=float(rng.uniform(12.0, 18.0)), gain=0.0, timescale_s=DAY, sigma=0.05, decimals=2)
    raise ValueError(f"no simulator model for channel kind {kind!r}; known kinds: {', '.join(k.value for k in Kind)}")

