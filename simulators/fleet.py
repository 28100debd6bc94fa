"""Simulated fleets: every device of a site registry, publishing native JSON v1 messages.

A ``Fleet`` owns one ``SiteEnvironment`` per site (a slope model, weather, sun) and one
channel model per registry channel. It produces MQTT (topic, payload) pairs for an event time
and never touches a broker or a clock: callers choose the times (accelerated, replayed or
live) and where the messages go.

Reproducibility: every site, its weather and every device draw from their own generator,
seeded from (``seed``, site code, device code) through a stable hash. The same seed and the
same calls give byte-identical messages, and adding or removing a device does not change the
readings of the others.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from geowarn.config.registry import Kind, Registry
from geowarn.simulators.devices import ChannelModel, Draws, Power, SiteEnvironment, Weather, channel_model
from geowarn.simulators.slope import DAY, Slope, StableSlope, VoightFailure

FIRMWARE = "geowarn-sim-1"
_WEATHER_SPIN_UP_S = 14 * DAY
"""Weather starts before t0 so groundwater and soil moisture are not bone dry at the start."""


def _rng(seed: int, *parts: str) -> np.random.Generator:
    # Python's hash() is salted per process; blake2b is stable across runs and machines.
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


class _SimDevice:
    __slots__ = ("site", "device", "data_topic", "status_topic", "models", "power", "seq", "signal_dbm", "sampling_s", "draws")

    def __init__(self, site: str, device: str, prefix: str, models: list[ChannelModel], power: Power, signal_dbm: float, sampling_s: float, draws: Draws) -> None:
        self.site = site
        self.device = device
        self.data_topic = f"{prefix}/{site}/{device}/data"
        self.status_topic = f"{prefix}/{site}/{device}/status"
        self.models = models
        self.power = power
        self.seq = 0
        self.signal_dbm = signal_dbm
        self.sampling_s = sampling_s
        self.draws = draws


class Fleet:
    """All devices of ``registry``, with the sites in ``failures`` heading for failure.

    ``failures`` maps a site code to its failure time (epoch s, after ``t0``); such a site
    gets ``VoightFailure.reaching(t0, t_f, alpha=failure_alpha)``: its velocity passes
    120 mm/day (red) one day before t_f whatever the run length. Every other site gets a
    ``StableSlope``. ``slopes`` replaces the model of any site outright (its ``t_f``, if it
    has one, then counts as that site's failure in ``truth``).

    >>> from geowarn.config.registry import load_registry
    >>> from geowarn.config.settings import example_path
    >>> fleet = Fleet(load_registry(example_path("sites.example.toml")), t0=1.7e9, failures={"BSH": 1.7e9 + 20 * DAY})
    >>> topic, payload = fleet.messages(1.7e9)[0]
    >>> topic
    'geowarn/BSH/BSH-GNSS1/data'
    """

    def __init__(
        self,
        registry: Registry,
        *,
        t0: float,
        seed: int = 0,
        failures: dict[str, float] | None = None,
        drill: bool = False,
        topic_prefix: str = "geowarn",
        failure_alpha: float = 2.0,
        slopes: Mapping[str, Slope] | None = None,
    ) -> None:
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not math.isfinite(t0):
            raise ValueError(f"t0 must be finite epoch seconds, got {t0}")
        if not topic_prefix or any(c in topic_prefix for c in "+#") or topic_prefix.startswith("/") or topic_prefix.endswith("/"):
            raise ValueError(f"topic_prefix {topic_prefix!r} must be non-empty, without '+', '#' or a leading/trailing '/'")
        failures = dict(failures or {})
        slopes = dict(slopes or {})
        known = ", ".join(sorted(registry.sites))
        for code in (*failures, *slopes):
            if code not in registry.sites:
                raise ValueError(f"site {code!r} is not in the registry (sites: {known})")
        both = sorted(set(failures) & set(slopes))
        if both:
            raise ValueError(f"site(s) {', '.join(both)} given both a failure time and a slope model; give one")
        for code, t_f in failures.items():
            if not (math.isfinite(t_f) and t_f > t0):
                raise ValueError(f"failure time of site {code!r} ({t_f}) must be after t0 ({t0})")

        self.t0 = float(t0)
        self.seed = int(seed)
        self.drill = bool(drill)
        self.topic_prefix = topic_prefix
        self._envs: dict[str, SiteEnvironment] = {}
        self._failures: dict[str, float] = {}
        self._devices: list[_SimDevice] = []

        for code, site in registry.sites.items():
            rng = _rng(self.seed, "site", code)
            creep = float(rng.uniform(0.005, 0.05))
            azimuth = float(rng.uniform(0.0, 360.0))
            dip = float(rng.uniform(15.0, 35.0))
            seasonal_phase = float(rng.uniform(0.0, 2 * math.pi))
            slope: Slope
            if code in slopes:
                slope = slopes[code]
            elif code in failures:
                slope = VoightFailure.reaching(self.t0, float(failures[code]), alpha=failure_alpha, creep_mm_day=0.2)
            else:
                # Thermal expansion peaks mid-afternoon local solar time (15:00).
                h0 = (self.t0 / 3600.0 + site.lon / 15.0) % 24.0
                thermal_phase = math.pi / 2 - 2 * math.pi * (15.0 - h0) / 24.0
                slope = StableSlope(self.t0, creep, seasonal_phase=seasonal_phase, thermal_phase=thermal_phase)
            fails_at: float | None = getattr(slope, "t_f", None)
            if fails_at is not None:
                self._failures[code] = float(fails_at)
            weather = Weather(_rng(self.seed, "weather", code), self.t0 - _WEATHER_SPIN_UP_S)
            env = SiteEnvironment(code, slope, weather, lon=site.lon, azimuth_deg=azimuth, dip_deg=dip)
            self._envs[code] = env

            for dev in site.devices:
                drng = _rng(self.seed, "device", code, dev.device)
                power = Power(site.lon, weather, rest_v=float(drng.uniform(12.3, 12.6)))
                signal = float(drng.uniform(-95.0, -65.0))
                heading = float(drng.uniform(0.0, 360.0))
                seen: dict[Kind, int] = {}
                models: list[ChannelModel] = []
                for ch in dev.channels:
                    axis = seen.get(ch.kind, 0)
                    seen[ch.kind] = axis + 1
                    # Channels share their device's generator: each draws its own blocks from
                    # it, so a device's stream depends only on that device's channels.
                    models.append(channel_model(ch, env, drng, axis=axis, heading_deg=heading, power=power))
                sampling = min(ch.interval_s for ch in dev.channels)
                self._devices.append(_SimDevice(code, dev.device, topic_prefix, models, power, signal, sampling, Draws(drng)))

    def messages(self, t: float) -> list[tuple[str, bytes]]:
        """One native JSON v1 data message per device (registry order), all readings at ``t``."""
        t = float(t)
        drill = self.drill
        out: list[tuple[str, bytes]] = []
        for d in self._devices:
            payload = {
                "v": 1,
                "device": d.device,
                "seq": d.seq,
                "drill": drill,
                "readings": [{"ch": m.channel, "t": t, "v": m.value(t)} for m in d.models],
            }
            d.seq += 1
            out.append((d.data_topic, json.dumps(payload).encode()))
        return out

    def status_messages(self, t: float) -> list[tuple[str, bytes]]:
        """One heartbeat per device on ``…/status`` with its state of health at ``t``."""
        t = float(t)
        out: list[tuple[str, bytes]] = []
        for d in self._devices:
            p, r = d.power, d.draws
            solar = p.solar_v(t)
            payload = {
                "device": d.device,
                "t": t,
                "battery_v": round(p.battery_v(t) + 0.01 * r.normal(), 2),
                "solar_v": round(max(0.0, solar + 0.05 * r.normal()) if solar > 0 else 0.0, 2),
                "signal_dbm": int(round(d.signal_dbm + 3.0 * r.normal())),
                "temp_c": round(p.temp_c(t) + 0.3 * r.normal(), 1),
                "sampling_s": d.sampling_s,
                "fw": FIRMWARE,
            }
            out.append((d.status_topic, json.dumps(payload).encode()))
        return out

    @property
    def truth(self) -> dict[str, Any]:
        """What the run is meant to show: ``{"failures": {site: t_f}, "t0": t0, "seed": seed}``."""
        return {"failures": dict(self._failures), "t0": self.t0, "seed": self.seed}

    def slope(self, site: str) -> Slope:
        """The true slope model of ``site`` (for plotting truth next to detections)."""
        return self.environment(site).slope

    def environment(self, site: str) -> SiteEnvironment:
        """The simulated site state: slope, sliding direction, weather, sun."""
        try:
            return self._envs[site]
        except KeyError:
            raise KeyError(f"site {site!r} is not in this fleet (sites: {', '.join(self._envs)})") from None

    @property
    def devices(self) -> list[tuple[str, str]]:
        """(site, device) of every simulated device, in message order."""
        return [(d.site, d.device) for d in self._devices]
