"""The site registry: hazard sites with their 防灾明白卡 fields, their devices and channels.

A site is a hazard point; a device belongs to exactly one site; a channel is one measured
quantity of a device with a kind, a unit and an expected reporting interval. The registry is
loaded once at start, validated as a whole (every problem named with file and key), and then
only read: the ingest hot path looks devices and channels up in plain dicts built here.

At national scale (250,000 devices, issue 17) the registry is kept compact: the frozen parts
that repeat (a channel spec shared by every device of a model, a site policy) are validated
once and shared, and a registry crosses to a worker process as its sites alone, the lookups
rebuilt there (``Registry.__reduce__``). Every process holds a whole registry, so each byte per
device counts three times: the loaded sites and devices are made again with their fields in
key-sharing instance values (``_Compact``), a ``ChannelInfo`` holds only its key and facts its
spec shares, and a device's channel dict shares its keys with its model's (``_ChannelTables``):
the same values to every reader, about half the memory. ``benchmarks/registry_memory.py``
measures it.
"""

from __future__ import annotations

import ctypes
import gc
import math
import pickle
import re
import tomllib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from geowarn.config.errors import ConfigError, ConfigProblem, problems_from_validation


class Kind(str, Enum):
    """What a channel measures. The kind decides units, detectors and the InfluxDB measurement."""

    displacement = "displacement"
    crack = "crack"
    tilt = "tilt"
    gnss_e = "gnss_e"
    gnss_n = "gnss_n"
    gnss_u = "gnss_u"
    rain = "rain"
    pore_pressure = "pore_pressure"
    groundwater = "groundwater"
    soil_moisture = "soil_moisture"
    battery = "battery"
    # Kinds of China's universal (普适型) devices (issue 15; ../shared/DEVICES-CN.md):
    deep_displacement = "deep_displacement"  # in-place inclinometer, 深部位移 (L1_SW)
    acceleration = "acceleration"  # peak change of acceleration in a sampling period (L1_JS)
    vibration = "vibration"  # vibration amplitude or frequency (L1_ZD)
    stress = "stress"  # stress / earth pressure, 应力/土压力 (L2_YL)
    mud_level = "mud_level"  # debris-flow mud level, 泥(水)位 (L3_NW)
    seepage_pressure = "seepage_pressure"  # 渗压 (L3_SY), a piezometer's water pressure
    soil_temperature = "soil_temperature"  # 土壤温度 (L3_TW)


#: Units accepted per kind; the first is the one assumed when a channel names none.
UNITS: dict[Kind, tuple[str, ...]] = {
    Kind.displacement: ("mm",),
    Kind.crack: ("mm",),
    Kind.tilt: ("deg", "mrad", "urad"),
    Kind.gnss_e: ("mm",),
    Kind.gnss_n: ("mm",),
    Kind.gnss_u: ("mm",),
    Kind.rain: ("mm",),
    Kind.pore_pressure: ("kPa",),
    Kind.groundwater: ("m",),
    Kind.soil_moisture: ("%",),
    Kind.battery: ("V",),
    Kind.deep_displacement: ("mm",),
    Kind.acceleration: ("mg", "g"),
    Kind.vibration: ("mm", "mm/s", "Hz"),
    Kind.stress: ("kN", "kPa", "MPa"),
    Kind.mud_level: ("m",),
    Kind.seepage_pressure: ("kPa",),
    Kind.soil_temperature: ("degC",),
}

#: Kinds whose value is a position: velocity and acceleration detectors apply to them.
DISPLACEMENT_LIKE = frozenset(
    {Kind.displacement, Kind.crack, Kind.tilt, Kind.gnss_e, Kind.gnss_n, Kind.gnss_u, Kind.deep_displacement}
)

#: Kinds judged on their rate of rise (detectors/rise.py) besides any thresholds: water and
#: mud that rise before a slope or a gully fails.
RISE_KINDS = frozenset({Kind.pore_pressure, Kind.groundwater, Kind.seepage_pressure, Kind.mud_level})

#: Kinds whose reading is a peak within the sampling period, signed by its axis: thresholds
#: judge its magnitude (a -250 mg shake is as strong as a +250 mg one).
PEAK_KINDS = frozenset({Kind.acceleration, Kind.vibration})

#: Kinds whose channels may state a reading noise (the rate detectors read it).
NOISE_KINDS = DISPLACEMENT_LIKE | RISE_KINDS

#: A device's battery is low below this charge (battery_percent) where its status reports one,
#: else below this voltage: the low-voltage zone of the 12 V solar-charged batteries field
#: stations run on (lead-acid and LiFePO4 both sag under 11.5 V within a day or two of empty).
#: A device's ``battery_low_percent`` / ``battery_low_v`` override them.
BATTERY_LOW_PERCENT = 20.0
BATTERY_LOW_V = 11.5

#: Plausible physical range per kind; a value outside it is a device fault, not a hazard.
DEFAULT_RANGE: dict[Kind, tuple[float, float]] = {
    Kind.displacement: (-1e5, 1e5),
    Kind.crack: (-1e4, 1e4),
    Kind.tilt: (-1e6, 1e6),
    Kind.gnss_e: (-1e6, 1e6),
    Kind.gnss_n: (-1e6, 1e6),
    Kind.gnss_u: (-1e6, 1e6),
    Kind.rain: (0.0, 500.0),
    Kind.pore_pressure: (-100.0, 1e4),
    Kind.groundwater: (-1e4, 1e4),
    Kind.soil_moisture: (0.0, 100.0),
    Kind.battery: (0.0, 60.0),
    Kind.deep_displacement: (-1e5, 1e5),
    Kind.acceleration: (-1e5, 1e5),  # mg: ±100 g, beyond any MEMS accelerometer's range
    Kind.vibration: (-1e5, 1e5),
    Kind.stress: (-1e6, 1e6),
    Kind.mud_level: (-100.0, 1000.0),
    Kind.seepage_pressure: (-100.0, 1e4),
    Kind.soil_temperature: (-60.0, 100.0),
}

#: What the national convention's channels measure (DEVICES-CN.md's channel table, after the
#: platform's 2.1 监测类型定义): method -> the kinds a channel reading it may have. A ``source``
#: of another kind is a mistake the start names (a mud level read as rain would warn in mm of
#: rain); methods not listed (and S1_ZT status fields) are mapped only as the registry says.
#: GNSS X/Y are not tied to east/north: on Chinese grids X is often north.
CONVENTION_KINDS: dict[str, frozenset[Kind]] = {
    "L1_LF": frozenset({Kind.crack, Kind.displacement}),
    "L1_GP": frozenset({Kind.gnss_e, Kind.gnss_n, Kind.gnss_u, Kind.displacement}),
    "L1_SW": frozenset({Kind.deep_displacement, Kind.displacement}),
    "L1_JS": frozenset({Kind.acceleration}),
    "L1_QJ": frozenset({Kind.tilt}),
    "L1_ZD": frozenset({Kind.vibration}),
    "L2_YL": frozenset({Kind.stress}),
    "L3_YL": frozenset({Kind.rain}),
    "L3_HS": frozenset({Kind.soil_moisture}),
    "L3_TW": frozenset({Kind.soil_temperature}),
    "L3_SY": frozenset({Kind.seepage_pressure, Kind.pore_pressure}),
    "L3_DX": frozenset({Kind.groundwater}),
    "L3_NW": frozenset({Kind.mud_level}),
}
#: The unit a method's fields are sent in, where the convention fixes one and the kind allows
#: several (GeoWarn converts no unit: the channel must say what the device sends).
CONVENTION_UNITS: dict[str, str] = {"L1_JS": "mg", "L1_QJ": "deg"}

HazardType = Annotated[str, Field(pattern=r"^(landslide|collapse|debris_flow|ground_fissure|subsidence|unstable_slope)$")]
ScaleClass = Annotated[str, Field(pattern=r"^(small|medium|large|extra_large)$")]

_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""Site, device and channel codes travel in MQTT topics: no '/', '+', '#', spaces or empties."""


#: A channel of the national geohazard IoT convention (L{group}_{method}_{n}, S1_ZT_{n} for
#: status) with an optional field: "L1_GP_1.gpsTotalX".
_SOURCE = re.compile(r"(L[0-9]_[A-Z]{2}|S1_ZT)_[0-9]{1,3}(\.[A-Za-z][A-Za-z0-9_]{0,31})?")


def _check_code(value: str, what: str) -> str:
    if not _CODE.fullmatch(value):
        raise ValueError(
            f"{what} code {value!r} must be 1-64 characters of letters, digits, '_', '.', '-' "
            "(it is used as an MQTT topic level)"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LevelThresholds(_Strict):
    """Thresholds per warning level, ascending; a level is reached at value >= its threshold."""

    blue: float | None = None
    yellow: float | None = None
    orange: float | None = None
    red: float | None = None

    @model_validator(mode="after")
    def _ascending(self) -> "LevelThresholds":
        seen: list[tuple[str, float]] = [
            (name, v) for name in ("blue", "yellow", "orange", "red") if (v := getattr(self, name)) is not None
        ]
        for (n1, v1), (n2, v2) in zip(seen, seen[1:]):
            if not v2 > v1:
                raise ValueError(f"thresholds must rise with the level: {n2} ({v2}) must be above {n1} ({v1})")
        return self

    def as_list(self) -> list[tuple[int, float]]:
        """[(level number, threshold)] for the levels that are set, ascending."""
        return [
            (lvl, v)
            for lvl, name in ((1, "blue"), (2, "yellow"), (3, "orange"), (4, "red"))
            if (v := getattr(self, name)) is not None
        ]


class RainPolicy(_Strict):
    """A site's own rain thresholds (``[sites.policy.rain]``), for every rain channel of the site.

    Each key left out keeps the default of ``detectors/rain.py`` (whose docstring gives their
    sources): the 1 h / 24 h / 72 h sums' ladders in mm, the intensity–duration curve
    I = id_a·D^(−id_b) (mm/h, h; Caine 1980: 14.82, 0.39) and the multiples of it per level,
    the effective rain's ladder in mm, its decay K and its days. ``calibrated`` is the span of
    the record ``geowarn rain-calibrate`` proposed them from; the detectors' reasons and evidence
    then say "calibrated from <span>", else "set in the registry".

    Per site and not per channel: the landslide dates they are calibrated against belong to the
    site, and every gauge of the site then warns alike.
    """

    sum_1h: LevelThresholds | None = None
    sum_24h: LevelThresholds | None = None
    sum_72h: LevelThresholds | None = None
    id_a: float | None = Field(default=None, gt=0, allow_inf_nan=False, description="mm/h at D = 1 h")
    id_b: float | None = Field(default=None, ge=0, lt=2, allow_inf_nan=False)
    id_multiples: LevelThresholds | None = None
    effective: LevelThresholds | None = None
    effective_k: float | None = Field(default=None, gt=0, lt=1, allow_inf_nan=False)
    effective_days: int | None = Field(default=None, ge=1, le=366)
    calibrated: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("sum_1h", "sum_24h", "sum_72h", "id_multiples", "effective")
    @classmethod
    def _positive_ladder(cls, v: LevelThresholds | None) -> LevelThresholds | None:
        if v is None:
            return v
        if not v.as_list():
            raise ValueError("give at least one level's threshold, e.g. { yellow = 100.0 }")
        bad = [f"{name} = {x}" for name in ("blue", "yellow", "orange", "red") if (x := getattr(v, name)) is not None and not 0 < x < math.inf]
        if bad:
            raise ValueError(f"rain thresholds must be positive finite numbers, got {', '.join(bad)}")
        return v

    def detector_args(self) -> dict[str, Any]:
        """The keyword arguments of ``detectors.rain.RainThresholds`` (detectors are a floor above)."""
        windows = tuple(
            (w, tuple(ladder.as_list())) for w, ladder in ((3600.0, self.sum_1h), (86400.0, self.sum_24h), (259200.0, self.sum_72h)) if ladder is not None
        )
        return {
            "windows": windows,
            "id_a": self.id_a,
            "id_b": self.id_b,
            "id_levels": None if self.id_multiples is None else tuple(self.id_multiples.as_list()),
            "effective_levels": None if self.effective is None else tuple(self.effective.as_list()),
            "k": self.effective_k,
            "days": self.effective_days,
            "source": f"calibrated from {self.calibrated}" if self.calibrated else "set in the registry",
        }


class Policy(_Strict):
    """Per-site warning policy; every field has a default taken from published practice."""

    # Velocity levels in mm/day (unit/day for tilt), after the Preonzo 2012 early-warning
    # scheme (Loew et al. 2017): yellow from a few mm/day, orange 72, red 120.
    velocity_per_day: LevelThresholds = LevelThresholds(blue=1.0, yellow=3.0, orange=72.0, red=120.0)
    # Time window of the smoothed velocity (least-squares slope over the window, robust to
    # GNSS noise of a few mm where a raw difference of two readings is not).
    velocity_window_s: float = Field(default=6 * 3600.0, gt=0)
    # A level comes down only when the value has left the band by this fraction...
    hysteresis: float = Field(default=0.1, ge=0, lt=1)
    # ...and stayed below it for this long (event time).
    hold_s: float = Field(default=6 * 3600.0, ge=0)
    # Site fusion: from this level up a warning needs confirmation — `confirm_devices`
    # independent devices at that level, or a failure forecast within `forecast_confirms_s`.
    confirm_from_level: int = Field(default=3, ge=1, le=5)
    confirm_devices: int = Field(default=2, ge=1)
    forecast_confirms_s: float = Field(default=66 * 3600.0, ge=0)
    # ...and only a clean forecast confirms: its fit's R² at least this. A forecast stands in
    # for a second device, so it must show a clear tertiary-creep trend; a passing wobble of a
    # slope already moving fast (a reservoir-drawdown step) fits a line only roughly (R² ≤ 0.94
    # in the bundled `seasonal` scenario) and may still raise the channel, but not the site.
    # A noisy GNSS fit rarely reaches 0.95 even near failure: a GNSS-only site is then
    # confirmed by two devices (or lower this).
    forecast_confirm_r2: float = Field(default=0.95, ge=0, le=1)
    # Inverse-velocity forecast: levels by time to failure. Orange and red carry a margin over
    # the 48 h / 12 h they aim at, because a straight line through 1/v forecasts late when
    # Voight's alpha is above 2 (ACCURACY.md shows the bias per alpha).
    forecast_yellow_s: float = Field(default=7 * 86400.0, gt=0)
    forecast_orange_s: float = Field(default=66 * 3600.0, gt=0)
    forecast_red_s: float = Field(default=15 * 3600.0, gt=0)
    # Voight's alpha for the forecast (2: Fukuzono's straight line in 1/v). A site with a
    # back-analysed alpha should set it: the forecast is then unbiased.
    voight_alpha: float = Field(default=2.0, gt=1.0, lt=10.0)
    # The site's own rain thresholds (RainPolicy); absent: the defaults of detectors/rain.py.
    rain: RainPolicy | None = None

    @model_validator(mode="after")
    def _forecast_order(self) -> "Policy":
        if not self.forecast_yellow_s > self.forecast_orange_s > self.forecast_red_s:
            raise ValueError("forecast horizons must shrink with the level: forecast_yellow_s > forecast_orange_s > forecast_red_s")
        return self


class Channel(_Strict):
    channel: str
    kind: Kind
    unit: str | None = None
    interval_s: float = Field(default=600.0, gt=0, description="expected reporting interval")
    thresholds: LevelThresholds | None = None
    velocity_per_day: LevelThresholds | None = None
    range: tuple[float, float] | None = None
    # Typical reading noise (1 sigma, in `unit`) when it differs from the kind's usual
    # (e.g. monthly GPS positions written as kind displacement): sets the detectors' noise floors.
    # Stated here ("registry") it overrides the kind's physical floor (detectors/noise.py);
    # `noise_source = "estimated"` marks a figure worked out from the data (a registry built
    # from a feed): the floor then still holds under it.
    noise: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    noise_source: Literal["registry", "estimated"] = "registry"

    @field_validator("channel")
    @classmethod
    def _code(cls, v: str) -> str:
        return _check_code(v, "channel")

    @field_validator("unit")
    @classmethod
    def _unit_of_kind(cls, v: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")  # absent when kind itself is invalid
        if v is not None and kind is not None and v not in UNITS[kind]:
            raise ValueError(f"unit {v!r} is not a unit of kind {kind.value} (use one of {', '.join(UNITS[kind])})")
        return v

    @model_validator(mode="after")
    def _unit(self) -> "Channel":
        allowed = UNITS[self.kind]
        if self.unit is None:
            object.__setattr__(self, "unit", allowed[0])
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError(f"range {list(self.range)} must be [low, high] with low < high")
        if self.velocity_per_day is not None and self.kind not in DISPLACEMENT_LIKE:
            raise ValueError(f"velocity_per_day applies to displacement-like kinds only, not {self.kind.value}")
        return self

    @field_validator("noise")
    @classmethod
    def _noise_of_kind(cls, v: float | None, info: ValidationInfo) -> float | None:
        kind = info.data.get("kind")
        if v is not None and kind is not None and kind not in NOISE_KINDS:
            raise ValueError(
                f"noise (the reading noise the rate detectors judge with) applies to kinds {', '.join(sorted(k.value for k in NOISE_KINDS))}, "
                f"not {kind.value}"
            )
        return v

    @field_validator("noise_source")
    @classmethod
    def _noise_source_needs_noise(cls, v: str, info: ValidationInfo) -> str:
        # An invalid noise is absent from info.data and reported on its own key already.
        if v == "estimated" and "noise" in info.data and info.data["noise"] is None:
            raise ValueError('noise_source = "estimated" needs the estimated figure in noise')
        return v

    # The national convention's channel(.field) this channel reads, e.g. "L1_GP_1.gpsTotalX",
    # "L1_LF_1" (field `value`), "L3_YL_1.totalValue" (a rain counter: differenced, resets
    # detected) or "S1_ZT_1.battery_volt". Only devices speaking the convention use it.
    source: str | None = None

    @field_validator("source")
    @classmethod
    def _source(cls, v: str | None) -> str | None:
        if v is not None and not _SOURCE.fullmatch(v):
            raise ValueError(f"source {v!r} must be a channel of the national convention with an optional field, e.g. 'L1_GP_1.gpsTotalX' or 'L3_YL_1'")
        return v

    @model_validator(mode="after")
    def _source_kind(self) -> "Channel":
        if self.source is None:
            return self
        field = self.source.partition(".")[2]
        if field == "AZI":
            # An azimuth wraps at 360°: read as a position it would make 359° -> 1° a landslide.
            raise ValueError("source field AZI is an azimuth (0-360° from magnetic north, it wraps): it is never judged; list it in the device's ignore instead")
        if field == "totalValue" and self.kind is not Kind.rain:
            raise ValueError("source field totalValue is a rain counter: it needs kind rain (it is differenced into rain per reading)")
        method = self.source[:5]
        kinds = CONVENTION_KINDS.get(method)
        if kinds is not None and self.kind not in kinds:
            raise ValueError(
                f"source {self.source} is a channel of method {method}, which measures {' or '.join(sorted(k.value for k in kinds))}, not {self.kind.value}"
            )
        unit = CONVENTION_UNITS.get(method)
        if unit is not None and self.unit != unit:
            raise ValueError(f"source {self.source}: method {method} sends {unit}; the channel's unit must be {unit!r} (GeoWarn converts no unit)")
        return self

    @property
    def valid_range(self) -> tuple[float, float]:
        return self.range if self.range is not None else DEFAULT_RANGE[self.kind]


class Device(_Strict):
    device: str
    model: str = ""
    channels: list[Channel] = Field(min_length=1)
    # Devices of the national geohazard IoT convention (ingest/codecs_cn.py):
    # `code` is the device code their payloads are keyed by (e.g. "SK11E80D1307426AZ");
    # `clock_offset_s` is how far the device's clock runs ahead of UTC when it writes a time
    # with "Z" or with no zone (28800 for a firmware writing Beijing time with "Z"); unset,
    # its "Z" times are taken as UTC and zone-less ones are refused; `ignore` lists the
    # convention's channels or channel.fields it sends that are dropped on purpose (e.g.
    # "L1_QJ_1.AZI"); any other field no channel maps is dead-lettered as unknown_channel.
    code: str | None = None
    clock_offset_s: float | None = Field(default=None, ge=-86400, le=86400, allow_inf_nan=False)
    ignore: tuple[str, ...] = Field(default=(), max_length=256)
    # The device's apikey (the national platform issues one per device; its firmware drops a
    # command that does not carry it: ingest/commands_cn.py), only as a reference to a secret,
    # 'env:NAME' or 'file:/path', as the roster's notifier secrets (config.roster.secret_value);
    # resolved at start (config.settings.device_apikeys), never kept in the registry nor shown.
    apikey: str | None = None
    # The device's battery is low below this charge where its status reports one
    # (battery_percent), else below this voltage (console, /metrics): the defaults suit the 12 V
    # solar-charged lead-acid or LiFePO4 batteries of field stations; a 3.7 V cell sets its own.
    battery_low_percent: float = Field(default=BATTERY_LOW_PERCENT, gt=0, lt=100, allow_inf_nan=False)
    battery_low_v: float = Field(default=BATTERY_LOW_V, gt=0, le=60, allow_inf_nan=False)

    @field_validator("device")
    @classmethod
    def _code(cls, v: str) -> str:
        return _check_code(v, "device")

    @field_validator("apikey")
    @classmethod
    def _apikey_ref(cls, v: str | None) -> str | None:
        if v is None:
            return v
        kind, _, where = v.partition(":")
        if kind not in ("env", "file") or not where:
            # Never echo the value: it may be the key itself, written in plain text.
            raise ValueError("apikey must be a reference to the secret, 'env:NAME' (an environment variable of the daemon) or "
                             "'file:/path' (a file only GeoWarn can read), never the key itself")
        return v

    @field_validator("code")
    @classmethod
    def _device_code(cls, v: str | None) -> str | None:
        return None if v is None else _check_code(v, "device")

    @field_validator("ignore")
    @classmethod
    def _ignore(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for item in v:
            if not _SOURCE.fullmatch(item):
                raise ValueError(f"ignore entry {item!r} is not a channel of the national convention, e.g. 'L1_QJ_1' or 'L1_QJ_1.AZI'")
        return v



class Site(_Strict):
    """A hazard point and its 防灾明白卡 (disaster-prevention card)."""

    site: str
    name: str = Field(min_length=1)
    hazard: HazardType = "landslide"
    scale: ScaleClass = "medium"
    admin: str = Field(description="6-digit GB/T 2260 county code")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    threatened_people: int = Field(default=0, ge=0)
    threatened_households: int = Field(default=0, ge=0)
    evacuation_route: str = ""
    shelter: str = ""
    responsible: str = ""
    phone: str = ""
    policy: Policy = Policy()
    devices: list[Device] = Field(min_length=1)

    @field_validator("site")
    @classmethod
    def _code(cls, v: str) -> str:
        return _check_code(v, "site")

    @field_validator("admin")
    @classmethod
    def _admin(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9]{6}", v):
            raise ValueError(f"admin {v!r} must be a 6-digit GB/T 2260 county code, e.g. '420527'")
        if v.endswith("00"):
            raise ValueError(f"admin {v!r} is a city or province code; a site belongs to a county (last two digits not 00)")
        return v


#: Where ``_model_state`` puts a device's channels and a site's devices.
_DEVICE_CHANNELS = list(Device.model_fields).index("channels")
_SITE_DEVICES = list(Site.model_fields).index("devices")


def _share_keys(cls: type[BaseModel]) -> None:
    """Give ``cls``'s instances their shared keys now, the fields in their order (``_Compact``).
    CPython sets a class's shared keys aside for the first names set on an instance, but every
    instance made meanwhile shrinks the room left (3.11: one slot per instance), and pydantic
    makes many before ``_Compact`` makes its first: after about 30 validated devices there would
    be no room and every compact device would get a dict of its own again. Done at import, no
    instance has been made yet."""
    m = cls.__new__(cls)
    for name in cls.model_fields:
        object.__setattr__(m, name, None)


_share_keys(Device)
_share_keys(Site)


class _ChannelFacts:
    """What every ``ChannelInfo`` of one channel spec in one county says besides its site and
    device: made once per (county, spec) and shared by all of them. A fleet has a few specs and
    a county a few hundred devices, so this is a few objects, not one per channel (issue 17)."""

    __slots__ = ("admin", "channel", "kind", "unit", "interval_s", "low", "high", "spec")

    def __init__(self, admin: str, ch: Channel) -> None:
        self.admin = admin
        self.channel = ch.channel
        self.kind = ch.kind.value
        self.unit = ch.unit
        self.interval_s = ch.interval_s
        self.low, self.high = ch.valid_range
        self.spec = ch


class ChannelInfo:
    """What the ingest hot path needs to know about one channel, precomputed once.

    Read-only. It holds only the (site, device) key its registry looks the device up by and the
    facts its spec shares with every channel of that spec in the county: 48 bytes a channel
    instead of 112 with every field of its own, four per device (issue 17). Identity is kept:
    the registry hands out the same object for a channel every time (the journal keys by it)."""

    __slots__ = ("_key", "_facts")

    _key: tuple[str, str]
    _facts: _ChannelFacts

    def __init__(self, site: Site, device: Device, ch: Channel) -> None:
        self._key = (site.site, device.device)
        self._facts = _ChannelFacts(site.admin, ch)

    @classmethod
    def _of(cls, key: tuple[str, str], facts: _ChannelFacts) -> ChannelInfo:
        """``ChannelInfo(site, device, ch)`` from the registry's (site, device) key and the facts
        ``Registry`` works out once per county and distinct channel spec."""
        info = cls.__new__(cls)
        info._key = key
        info._facts = facts
        return info

    @property
    def site(self) -> str:
        return self._key[0]

    @property
    def device(self) -> str:
        return self._key[1]

    @property
    def admin(self) -> str:
        return self._facts.admin

    @property
    def channel(self) -> str:
        return self._facts.channel

    @property
    def kind(self) -> str:
        return self._facts.kind

    @property
    def unit(self) -> str | None:
        return self._facts.unit

    @property
    def interval_s(self) -> float:
        return self._facts.interval_s

    @property
    def low(self) -> float:
        return self._facts.low

    @property
    def high(self) -> float:
        return self._facts.high

    @property
    def spec(self) -> Channel:
        return self._facts.spec


class _ChannelTables:
    """Makes a device's {channel: ChannelInfo} dicts, those of devices with the same channels
    sharing their keys (issue 17: the dict was 184 bytes per device, its keys and hashes alone
    120; now ≈ 110).

    Such a dict is the attribute dict of a throwaway object: CPython keeps the attribute names
    of a class's instances once, in the class, and each instance's dict holds only its values.
    One class per distinct list of channel names (a device model, typically), set in that order:
    the dict is a plain ``dict`` in every way, in the same order, only smaller."""

    #: Past this many distinct channel lists (a registry of devices each with channels of its
    #: own) the dicts are plain ones: a class per device would cost more than it saves.
    MAX_CLASSES = 256

    def __init__(self) -> None:
        self.classes: dict[tuple[str, ...], type] = {}

    def table(self, names: list[str], infos: list[ChannelInfo]) -> dict[str, ChannelInfo]:
        layout = tuple(names)
        cls = self.classes.get(layout)
        if cls is None:
            # CPython shares at most 30 names, and a name twice would not be a plain dict's order.
            if len(self.classes) >= self.MAX_CLASSES or len(layout) > 30 or len(set(layout)) != len(layout):
                return dict(zip(names, infos))
            cls = self.classes[layout] = type("_Channels", (), {})
            first = cls()  # the names go into the class's shared keys in this order, once
            for name in layout:
                object.__setattr__(first, name, None)
        holder = cls()
        for name, info in zip(names, infos):
            object.__setattr__(holder, name, info)
        table: dict[str, ChannelInfo] = holder.__dict__  # outlives its holder: it is the registry's
        return table


class Registry:
    """The loaded, validated registry with the lookups ingest and detectors need."""

    def __init__(self, sites: list[Site], source: str = "<memory>") -> None:
        self.source = source
        self.sites: dict[str, Site] = {s.site: s for s in sites}
        #: (site, device) -> {channel: ChannelInfo}
        self.channels: dict[tuple[str, str], dict[str, ChannelInfo]] = {}
        #: device -> site, devices are unique across the registry
        self.device_site: dict[str, str] = {}
        # What a channel spec gives every ChannelInfo, worked out once per county and distinct
        # spec (the specs of a fleet's devices are shared objects: parse_registry's _Shared).
        # Keyed by the spec's id: the specs stay alive in the sites as long as the registry.
        facts: dict[tuple[str, int], _ChannelFacts] = {}
        admins: dict[str, str] = {}
        tables = _ChannelTables()
        of = ChannelInfo._of
        for s in sites:
            code = s.site
            admin = admins.setdefault(s.admin, s.admin)  # one string per county, not per site
            for d in s.devices:
                self.device_site[d.device] = code
                key = (code, d.device)
                infos: list[ChannelInfo] = []
                for c in d.channels:
                    f = facts.get((admin, id(c)))
                    if f is None:
                        f = facts[(admin, id(c))] = _ChannelFacts(admin, c)
                    infos.append(of(key, f))
                self.channels[key] = tables.table([c.channel for c in d.channels], infos)

    def __reduce__(self) -> tuple[Any, ...]:
        # A registry crosses to a worker process (spawned: its arguments are pickled) as its
        # validated sites only, in one pickle of their own: the channel specs and policies they
        # share go once, the lookups are rebuilt there rather than unpickled, and the worker
        # unpickles them without the collector walking the growing heap (issue 17: 933 bytes
        # and 16 s per 50k devices before, to every worker). The sites go as their fields'
        # values (``_model_state``), not as pydantic pickles: those would read every model's
        # ``__dict__``, which makes CPython build a dict for each compact model (``_Compact``).
        return (_unpickle_registry, (_pickle_sites(self.sites.values()), self.source))

    def channel(self, site: str, device: str, channel: str) -> ChannelInfo | None:
        chans = self.channels.get((site, device))
        return None if chans is None else chans.get(channel)

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {
                "site": s.site,
                "name": s.name,
                "admin": s.admin,
                "lat": s.lat,
                "lon": s.lon,
                "hazard": s.hazard,
                "scale": s.scale,
                "threatened_people": s.threatened_people,
                "devices": [
                    {
                        "device": d.device,
                        "channels": [
                            {"channel": c.channel, "kind": c.kind.value, "unit": c.unit, "interval_s": c.interval_s}
                            for c in d.channels
                        ],
                    }
                    for d in s.devices
                ],
            }
            for s in self.sites.values()
        ]


def _unpickle_registry(sites: bytes, source: str) -> Registry:
    with _no_gc():
        registry = Registry(_Compact().sites(pickle.loads(sites)), source)
    _release_freed_memory()
    return registry


def _release_freed_memory() -> None:
    """Give the C heap's free memory back to the system (glibc's ``malloc_trim``). A load frees
    far more than it keeps (the TOML document, pydantic's working memory, the pickle and the
    states it is made from), and glibc keeps what was freed below its heap's last live block:
    about 500 bytes per device of a process's RSS that nothing uses (issue 17). Elsewhere than
    glibc there is no such call and nothing is done."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return
    trim(0)


def _pickle_sites(sites: Iterable[Site]) -> bytes:
    with _no_gc():
        return pickle.dumps([_site_state(s) for s in sites], protocol=pickle.HIGHEST_PROTOCOL)


_ModelState = tuple[type[BaseModel], tuple[Any, ...], set[str], "dict[str, Any] | None", "dict[str, Any] | None"]


def _model_state(m: BaseModel, **replace: Any) -> _ModelState:
    """What makes ``m`` again (``_Compact.make``): its class, its fields' values in the fields'
    order, and pydantic's own slots. Read field by field, never through ``m.__dict__``."""
    cls = type(m)
    values = tuple([replace[n] if n in replace else getattr(m, n) for n in cls.model_fields])
    return (cls, values, m.__pydantic_fields_set__, m.__pydantic_extra__, m.__pydantic_private__)


def _site_state(s: Site) -> _ModelState:
    return _model_state(s, devices=[_model_state(d) for d in s.devices])


class _Compact:
    """Makes validated sites again, the same values in less memory (issue 17: a device was
    ≈ 760 bytes of pydantic models in every process).

    A pydantic model keeps its fields in a dict of its own, keys and all: nine fields are a
    ≈ 360-byte dict per device. Made by setting its fields one by one in their declared order
    (``object.__setattr__``, what ``copy`` does for a slotted object), a model's fields live in
    CPython's key-sharing instance values instead: the field names once per class, eight bytes
    a value per instance. Also shared: a device's channel list with every device whose channels
    are the same spec objects, equal strings (a device model's name, a county code, repeated
    once per device in the TOML text), and the fields-set sets. The models are frozen, so a
    reader sees the same values, equality, dumps and reprs as from pydantic's own validation;
    only ``is`` between two devices' channel lists tells.

    A model's ``__dict__`` read once (pydantic's ``==``, ``model_dump``, its pickling) makes
    CPython build the dict after all, for that model only: the registry's own paths avoid it
    (``Registry.__reduce__`` sends ``_model_state``s)."""

    def __init__(self) -> None:
        self.strings: dict[str, str] = {}
        self.lists: dict[tuple[int, ...], list[Any]] = {}
        self.fields_sets: dict[frozenset[str], set[str]] = {}

    def make(self, state: _ModelState) -> Any:
        cls, values, fields_set, extra, private = state
        m = cls.__new__(cls)
        strings = self.strings
        for name, v in zip(cls.model_fields, values):
            if type(v) is str:
                v = strings.setdefault(v, v)
            object.__setattr__(m, name, v)
        object.__setattr__(m, "__pydantic_fields_set__", self.fields_sets.setdefault(frozenset(fields_set), fields_set))
        object.__setattr__(m, "__pydantic_extra__", extra)
        object.__setattr__(m, "__pydantic_private__", private)
        return m

    def device(self, state: _ModelState) -> Any:
        cls, values, fields_set, extra, private = state
        i = _DEVICE_CHANNELS
        chans = values[i]
        # The channel specs are shared objects (_Shared), kept alive by the lists: their ids
        # name a list of them for as long as this table lives.
        shared = self.lists.setdefault(tuple(map(id, chans)), chans)
        if shared is not chans:
            values = values[:i] + (shared,) + values[i + 1:]
        return self.make((cls, values, fields_set, extra, private))

    def sites(self, states: Iterable[_ModelState]) -> list[Site]:
        out: list[Site] = []
        i = _SITE_DEVICES
        for cls, values, fields_set, extra, private in states:
            devices = [self.device(d) for d in values[i]]
            out.append(self.make((cls, values[:i] + (devices,) + values[i + 1:], fields_set, extra, private)))
        return out


@contextmanager
def _no_gc() -> Iterator[None]:
    """No cyclic garbage collection while millions of objects are made that all stay: each full
    collection would walk all of them again (loading a large registry spent about half its time
    there). What the block makes is collected as usual afterwards."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _RegistryFile(_Strict):
    sites: list[Site] = Field(min_length=1)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Read a TOML file, turning every way it can fail into a ConfigError naming the file."""
    try:
        with open(path, "rb") as fh, _no_gc():
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError.single(path, "", f"{what} file not found") from None
    except IsADirectoryError:
        raise ConfigError.single(path, "", f"{what} path is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError.single(path, "", f"{what} file is not readable (permission denied)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError.single(path, "", f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError.single(path, "", f"not UTF-8 text: {exc}") from None


def _value_key(v: Any) -> Any:
    """A hashable key of a TOML value that tells apart what validation could tell apart: the
    type (1 and 1.0 and True are equal in Python), the sign of a zero, nested tables and arrays.
    Raises TypeError for a value it cannot key (the caller then validates without sharing)."""
    t = type(v)
    if t is str or t is bool or t is int:
        return (t, v)
    if t is float:
        return (t, v.hex()) if v == 0.0 or math.isnan(v) else (t, v)
    if t is dict:
        return (dict, tuple([(k, _value_key(x)) for k, x in v.items()]))
    if t is list:
        return (list, tuple([_value_key(x) for x in v]))
    hash(v)  # datetimes and the like: keyed as themselves when hashable
    return (t, v)


def _table_key(raw: Any) -> Any:
    """``_value_key(raw)``, faster for the common table of plain values: its items with their
    types (a zero, whose sign the items would not tell, goes the long way)."""
    if type(raw) is dict:
        values = raw.values()
        if 0 not in values:
            key = (tuple(raw.items()), tuple(map(type, values)))
            try:
                hash(key)
                return key
            except TypeError:  # an inline table or an array inside
                pass
    return _value_key(raw)


class _Shared:
    """Validates the parts of a registry that repeat (a channel spec is the same for every device
    of a model, a policy for every site that states the same one) once, and shares the frozen
    result. The objects are immutable, so sharing one changes nothing a reader can see; at
    250,000 devices it is a million channel models fewer (issue 17)."""

    def __init__(self) -> None:
        self.channels: dict[Any, Channel] = {}
        self.policies: dict[Any, Policy] = {}
        self.fields_sets: dict[frozenset[str], set[str]] = {}

    def channel(self, raw: Any) -> Channel:
        key = _table_key(raw)
        ch = self.channels.get(key)
        if ch is None:
            ch = self.channels[key] = Channel.model_validate(raw)
        return ch

    def policy(self, raw: Any) -> Policy:
        key = _value_key(raw)
        p = self.policies.get(key)
        if p is None:
            p = self.policies[key] = Policy.model_validate(raw)
        return p

    def share_fields_set(self, model: BaseModel) -> None:
        # Which fields were given is a set per model (pydantic copies it on model_copy and
        # never changes it on a frozen model): one set per distinct combination, not per device.
        fs = model.__pydantic_fields_set__
        shared = self.fields_sets.setdefault(frozenset(fs), fs)
        if shared is not fs:
            object.__setattr__(model, "__pydantic_fields_set__", shared)

    def site(self, raw: Any) -> Site:
        if type(raw) is not dict or type(raw.get("devices")) is not list:
            raise TypeError("not a table with an array of devices")
        devices: list[Device] = []
        for d in raw["devices"]:
            if type(d) is not dict or type(d.get("channels")) is not list:
                raise TypeError("not a table with an array of channels")
            dev = Device.model_validate({**d, "channels": [self.channel(c) for c in d["channels"]]})
            self.share_fields_set(dev)
            devices.append(dev)
        given = {**raw, "devices": devices}
        if "policy" in raw:
            given["policy"] = self.policy(raw["policy"])
        site = Site.model_validate(given)
        self.share_fields_set(site)
        return site


def _validate_sites(data: Any) -> list[Site]:
    """The registry's sites, validated as ``_RegistryFile`` validates them but with every repeated
    channel spec and policy validated once and shared (``_Shared``). Anything unusual or invalid
    is validated whole by ``_RegistryFile``, so problems are reported exactly as before."""
    if type(data) is dict and data.keys() == {"sites"} and type(data["sites"]) is list and data["sites"]:
        shared = _Shared()
        try:
            return [shared.site(raw) for raw in data["sites"]]
        except (ValidationError, TypeError, ValueError):
            pass  # the whole-file validation below names every problem with its key
    return _RegistryFile.model_validate(data).sites


def parse_registry(data: dict[str, Any], source: str) -> Registry:
    with _no_gc():
        return _parse_registry(data, source)


def _parse_registry(data: dict[str, Any], source: str) -> Registry:
    try:
        sites = _validate_sites(data)
    except ValidationError as exc:
        raise ConfigError(problems_from_validation(source, exc)) from None
    problems: list[ConfigProblem] = []
    seen_sites: dict[str, int] = {}
    seen_devices: dict[str, str] = {}
    seen_codes: dict[str, str] = {}
    for i, s in enumerate(sites):
        if s.site in seen_sites:
            problems.append(ConfigProblem(source, f"sites[{i}].site", f"site {s.site!r} is defined twice (also sites[{seen_sites[s.site]}])"))
        seen_sites.setdefault(s.site, i)
        for j, d in enumerate(s.devices):
            if d.device in seen_devices:
                problems.append(
                    ConfigProblem(source, f"sites[{i}].devices[{j}].device", f"device {d.device!r} already belongs to site {seen_devices[d.device]}; a device belongs to one site")
                )
            seen_devices.setdefault(d.device, s.site)
            # A payload of the national convention names its device by code (or by its id).
            for key in {d.code or d.device, d.device}:
                other = seen_codes.setdefault(key, d.device)
                if other != d.device:
                    problems.append(ConfigProblem(source, f"sites[{i}].devices[{j}].code", f"device code {key!r} also names device {other}; payloads are routed by it"))
            seen_sources: dict[str, str] = {}
            for k, c in enumerate(d.channels):
                if c.source is not None:
                    src = c.source if "." in c.source else c.source + ".value"
                    if src in seen_sources:
                        problems.append(ConfigProblem(source, f"sites[{i}].devices[{j}].channels[{k}].source", f"source {c.source!r} is already read by channel {seen_sources[src]}"))
                    seen_sources.setdefault(src, c.channel)
            seen_channels: dict[str, int] = {}
            for k, c in enumerate(d.channels):
                if c.channel in seen_channels:
                    problems.append(
                        ConfigProblem(source, f"sites[{i}].devices[{j}].channels[{k}].channel", f"channel {c.channel!r} is defined twice in device {d.device} (also channels[{seen_channels[c.channel]}])")
                    )
                seen_channels.setdefault(c.channel, k)
    if problems:
        raise ConfigError(problems)
    return Registry(_Compact().sites([_site_state(s) for s in sites]), source)


def load_registry(path: str | Path) -> Registry:
    path = Path(path)
    loaded = parse_registry(read_toml(path, "site registry"), str(path))
    # The TOML document and the validation's leftovers are garbage now, but the registry's
    # objects were made in between them, so the memory they held stays with the process (the
    # allocator returns only whole free arenas): about 3.4 KB per device, twice what the registry
    # itself needs. Made again from one pickle, after the rest is freed, its objects fill arenas
    # of their own (issue 17). The pickle is the one a worker process receives.
    # Worth it only when the channels share their specs (a fleet of like devices): a registry of
    # calibrated devices, each spec its own, would pay the rebuild's time and a peak with both
    # copies for nothing (found by review).
    specs = [info.spec for chans in loaded.channels.values() for info in chans.values()]
    if len({id(x) for x in specs}) > len(specs) // 2:
        del specs
        _release_freed_memory()
        return loaded
    sites = _pickle_sites(loaded.sites.values())
    del loaded, specs
    registry = _unpickle_registry(sites, str(path))
    del sites  # a few MB, in the heap: once more
    _release_freed_memory()
    return registry
