"""Scenarios: what a simulation run shows, as a TOML file (bundled ones in ``scenarios/``).

A scenario names the sites (a registry file, the example one by default, or a template of
synthetic devices for ``--stations N``), the slope model of each site (Voight failure,
seasonal step-like motion, stable), the weather (random storms plus design storms with an
intensity–duration structure), how devices sample and report, and the faults to inject.
Times inside a scenario are offsets from its ``start`` ("90s", "6h", "13.5d"); the start is a
fixed instant, so a scenario and a seed reproduce a run byte for byte.

Everything is validated by pydantic when the file is loaded: a bad scenario fails with the
file, the key and the reason (``config.errors.ConfigError``), never in the middle of a run.
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from geowarn.core.timefmt import parse_instant
from geowarn.config.errors import ConfigError, problems_from_validation
from geowarn.config.registry import Kind, Registry, load_registry, parse_registry

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(min|s|m|h|d|w)?\s*")


def parse_duration(raw: object) -> float:
    """Seconds from ``3600``, ``"90s"``, ``"30m"``, ``"6h"``, ``"14d"``, ``"1d 12h"``.

    >>> parse_duration("1d 12h")
    129600.0
    """
    if isinstance(raw, bool):
        raise ValueError(f"duration {raw!r} is not a number of seconds")
    if isinstance(raw, (int, float)):
        total = float(raw)
    elif isinstance(raw, str):
        pos, total, text = 0, 0.0, raw.strip()
        if not text:
            raise ValueError("empty duration")
        while pos < len(text):
            m = _DURATION.match(text, pos)
            if not m or m.end() == pos:
                raise ValueError(f"duration {raw!r}: use seconds or a number with s, m, h, d or w (e.g. 3600, 6h, 14d)")
            total += float(m.group(1)) * _UNITS[m.group(2) or ""]
            pos = m.end()
    else:
        raise ValueError(f"duration {raw!r} is not a number of seconds or a string like '6h'")
    if not total >= 0 or total != total or total == float("inf"):
        raise ValueError(f"duration {raw!r} must be finite and >= 0")
    return total


Seconds = Annotated[float, BeforeValidator(parse_duration)]
Instant = Annotated[float, BeforeValidator(parse_instant)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceDefaults(_Strict):
    """How devices sample and report. Sampling follows each channel's registry ``interval_s``
    unless ``sampling_s`` overrides it; a device sends one message every
    ``readings_per_message`` samples of its fastest channel (it buffers in between)."""

    sampling_s: Seconds | None = Field(default=None, gt=0)
    readings_per_message: int = Field(default=1, ge=1, le=1000)
    status_s: Seconds = Field(default=3600.0, gt=0, description="heartbeat interval on the status topic")
    #: Devices of a failed site are destroyed with it: they stop reporting at t_f.
    silent_after_failure: bool = True


class WeatherSpec(_Strict):
    """Random storms (Poisson arrivals, exponential durations and rates)."""

    storms_per_day: float = Field(default=0.2, ge=0)
    mean_storm_h: float = Field(default=6.0, gt=0)
    mean_intensity_mm_h: float = Field(default=2.5, gt=0)


class StormSpec(_Strict):
    """A design storm: mean intensity from the intensity–duration law I = a·D^−b (I in mm/h,
    D in h) unless ``intensity_mm_h`` is given, falling with a triangular hyetograph that
    peaks at ``peak`` of its duration (0.4: a front-loaded convective storm)."""

    site: str = "*"
    at: Seconds
    duration_h: float = Field(gt=0, le=24 * 30)
    a: float = Field(default=40.0, gt=0)
    b: float = Field(default=0.6, ge=0, lt=1)
    intensity_mm_h: float | None = Field(default=None, gt=0)
    peak: float = Field(default=0.4, ge=0, le=1)

    @property
    def mean_intensity_mm_h(self) -> float:
        return self.intensity_mm_h if self.intensity_mm_h is not None else self.a * self.duration_h ** (-self.b)


class SlopeSpec(_Strict):
    """The slope model of one site ("*": every site not named elsewhere).

    - ``voight``: creep, then accelerating creep to failure at ``failure_at`` (Voight's law,
      ``alpha``); the velocity passes ``red_mm_day`` ``red_lead`` before failure.
    - ``seasonal``: step-like motion of a reservoir landslide: a slow base creep, plus motion
      driven by stored rain and by reservoir drawdown (Three Gorges: 175 m in winter, drawn
      down to 145 m in May–June for the flood season).
    - ``stable``: tiny creep with seasonal and thermal oscillation.
    """

    site: str = "*"
    model: Literal["voight", "seasonal", "stable"] = "stable"
    failure_at: Seconds | None = None
    alpha: float = Field(default=2.0, gt=1.0, lt=10.0)
    creep_mm_day: float = Field(default=0.2, ge=0)
    red_mm_day: float = Field(default=120.0, gt=0)
    red_lead: Seconds = Field(default=86400.0, gt=0)
    # seasonal
    base_mm_day: float = Field(default=0.3, ge=0)
    rain_gain_mm_day_per_mm: float = Field(default=0.08, ge=0)
    rain_timescale: Seconds = Field(default=5 * 86400.0, gt=0)
    drawdown_gain_mm_per_m: float = Field(default=25.0, ge=0)
    reservoir_high_m: float = 175.0
    reservoir_low_m: float = 145.0
    #: Day of year at which the drawdown begins (about 1 May) and how long it lasts.
    drawdown_start_doy: float = Field(default=120.0, ge=0, lt=366)
    drawdown_days: float = Field(default=45.0, gt=0, lt=180)
    # stable
    seasonal_amp_mm: float = Field(default=1.0, ge=0)
    thermal_amp_mm: float = Field(default=0.05, ge=0)

    @model_validator(mode="after")
    def _failure(self) -> "SlopeSpec":
        if self.model == "voight" and self.failure_at is None:
            raise ValueError("a voight slope needs failure_at (offset from the scenario start, e.g. '13d 12h')")
        return self


FaultKind = Literal[
    "dropout",
    "duplicates",
    "out_of_order",
    "clock_skew",
    "stuck",
    "spikes",
    "battery_death",
    "malformed",
    "impersonation",
]
FAULT_KINDS: tuple[str, ...] = FaultKind.__args__  # type: ignore[attr-defined]


class FaultSpec(_Strict):
    """One injected fault (see ``simulators.faults``): on one device, or on ``device = "*"``
    (every device of the fleet, each affected with ``fraction``), between ``start`` and ``end``
    (offsets from the scenario start; ``end`` defaults to the end of the run)."""

    kind: FaultKind
    device: str = "*"
    channel: str | None = None
    start: Seconds = 0.0
    end: Seconds | None = None
    fraction: float = Field(default=1.0, gt=0, le=1, description="share of the fleet hit when device = '*'")
    probability: float = Field(default=0.1, gt=0, le=1, description="per message (duplicates, out_of_order, malformed, impersonation) or per reading (spikes)")
    skew_s: float = 0.0
    drift_ppm: float = 0.0
    magnitude: float = Field(default=50.0, description="spike size, in the channel's unit")
    delay_messages: int = Field(default=3, ge=1)
    hours_to_empty: float = Field(default=12.0, gt=0)

    @model_validator(mode="after")
    def _window(self) -> "FaultSpec":
        if self.end is not None and not self.end > self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        if self.kind == "clock_skew" and self.skew_s == 0 and self.drift_ppm == 0:
            raise ValueError("a clock_skew fault needs skew_s or drift_ppm")
        return self


class TemplateChannel(_Strict):
    channel: str
    kind: Kind
    unit: str | None = None
    interval_s: float = Field(default=600.0, gt=0)


def _default_template_channels() -> list[TemplateChannel]:
    return [
        TemplateChannel(channel="disp_e", kind=Kind.gnss_e, unit="mm"),
        TemplateChannel(channel="disp_n", kind=Kind.gnss_n, unit="mm"),
        TemplateChannel(channel="disp_u", kind=Kind.gnss_u, unit="mm"),
        TemplateChannel(channel="battery", kind=Kind.battery, unit="V"),
    ]


class Template(_Strict):
    """The device every ``--stations N`` device is built from; sites of ``devices_per_site``."""

    devices_per_site: int = Field(default=10, ge=1)
    admin: str = "420527"
    lat: float = 30.99
    lon: float = 110.53
    channels: list[TemplateChannel] = Field(default_factory=_default_template_channels, min_length=1)


class Scenario(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    start: Instant = 1_764_374_400.0  # 2025-11-29T00:00:00Z
    duration: Seconds = Field(default=86400.0, gt=0)
    seed: int = Field(default=0, ge=0)
    sites: str = "example"
    topic_prefix: str = "geowarn"
    devices: DeviceDefaults = DeviceDefaults()
    weather: WeatherSpec = WeatherSpec()
    storms: list[StormSpec] = Field(default_factory=list)
    slopes: list[SlopeSpec] = Field(default_factory=list)
    faults: list[FaultSpec] = Field(default_factory=list)
    template: Template = Template()
    #: Where the file came from (for relative ``sites`` paths); not a TOML key.
    source: str = Field(default="<memory>", exclude=True)

    def slope_for(self, site: str) -> SlopeSpec:
        for s in self.slopes:
            if s.site == site:
                return s
        for s in self.slopes:
            if s.site == "*":
                return s
        return SlopeSpec()

    def registry(self, stations: int | None = None) -> Registry:
        """The sites this scenario runs: its registry file, or ``stations`` synthetic devices."""
        if stations is not None:
            return parse_registry(synthetic_sites(self.template, stations), f"<{stations} synthetic stations>")
        if self.sites == "example":
            from geowarn.config.settings import example_path

            return load_registry(example_path("sites.example.toml"))
        path = Path(self.sites)
        if not path.is_absolute() and self.source not in ("<memory>",) and not self.source.startswith("<"):
            path = Path(self.source).parent / path
        return load_registry(path)


def synthetic_sites(template: Template, stations: int) -> dict[str, Any]:
    """A registry document of ``stations`` devices built from ``template`` (sites S0001…,
    devices S0001-D001…). It is valid for ``geowarn check-config`` and ``replay --sites``."""
    if stations < 1:
        raise ValueError(f"stations must be >= 1, got {stations}")
    per = template.devices_per_site
    n_sites = (stations + per - 1) // per
    width = max(4, len(str(n_sites)))
    sites: list[dict[str, Any]] = []
    for i in range(n_sites):
        code = f"S{i + 1:0{width}d}"
        count = min(per, stations - i * per)
        sites.append(
            {
                "site": code,
                "name": f"synthetic site {code}",
                "admin": template.admin,
                "lat": round(template.lat + 0.001 * (i % 100), 6),
                "lon": round(template.lon + 0.001 * (i // 100 % 100), 6),
                "devices": [
                    {
                        "device": f"{code}-D{j + 1:03d}",
                        "channels": [c.model_dump(mode="json", exclude_none=True) for c in template.channels],
                    }
                    for j in range(count)
                ],
            }
        )
    return {"sites": sites}


def sites_toml(doc: dict[str, Any]) -> str:
    """TOML text of a registry document (sites, their devices with any device keys — a
    convention device's ``code``, ``clock_offset_s``, ``ignore`` — and channels)."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} as TOML")

    lines = ["# Synthetic site registry written by `geowarn simulate --stations N`.", ""]
    for site in doc["sites"]:
        lines.append("[[sites]]")
        lines += [f"{k} = {val(v)}" for k, v in site.items() if k != "devices"]
        for dev in site["devices"]:
            lines += ["", "[[sites.devices]]", f"device = {val(dev['device'])}"]
            lines += [f"{k} = {val(v)}" for k, v in dev.items() if k not in ("device", "channels")]
            lines.append("channels = [")
            lines += [f"  {val(ch)}," for ch in dev["channels"]]
            lines.append("]")
        lines.append("")
    return "\n".join(lines)


# -- loading -----------------------------------------------------------------------------


def _bundled_dir() -> Path:
    return Path(str(resources.files(__package__).joinpath("scenarios")))


def bundled_scenarios() -> dict[str, Path]:
    """Name → file of every scenario shipped with the package. A site registry kept beside the
    scenarios that use it (``cn_sites.toml``: a ``[[sites]]`` list, no scenario ``name``) is not
    a scenario, and ``--list`` used to show it as an invalid one."""
    import tomllib

    out = {}
    for p in sorted(_bundled_dir().glob("*.toml")):
        try:
            doc = tomllib.loads(p.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            doc = {}  # listed: load_scenario says what is wrong with it
        if isinstance(doc.get("sites"), list) and "name" not in doc:
            continue
        out[p.stem] = p
    return out


def parse_scenario(data: dict[str, Any], source: str) -> Scenario:
    try:
        return Scenario.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigError(problems_from_validation(source, exc)) from None


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A bundled scenario by name, or a scenario TOML file by path."""
    raw = str(name_or_path)
    bundled = bundled_scenarios()
    path = bundled[raw] if raw in bundled else Path(raw)
    if not path.is_file():
        raise ConfigError.single(raw, "", f"no such scenario file, and not a bundled scenario (bundled: {', '.join(bundled)})")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError.single(path, "", f"not valid TOML: {exc}") from None
    return parse_scenario(data, str(path))
