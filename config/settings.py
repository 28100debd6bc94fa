"""Daemon settings: a TOML file plus GEOWARN_* environment variables (the environment wins).

The TOML keys are the environment names without the prefix, in lower case:
``GEOWARN_MQTT_URL`` ↔ ``mqtt_url = "…"``. A bad value stops the start with the file (or the
environment variable), the key and the reason.
"""

from __future__ import annotations

import ipaddress
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from geowarn.config.errors import ConfigError, ConfigProblem, problems_from_validation
from geowarn.config.registry import Registry, load_registry, read_toml
from geowarn.config.roster import Roster, cross_check, load_roster, secret_value

ENV_PREFIX = "GEOWARN_"


def example_path(name: str) -> Path:
    """A config file shipped inside the package (the defaults when no file is given)."""
    return Path(str(resources.files(__package__).joinpath(name)))


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> IPNetwork:
    """An address (a /32 or /128) or a CIDR network; ``ValueError`` naming the entry."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8, ::1)") from None


class MqttTarget:
    """A parsed broker URL: mqtt://[user:password@]host[:port] or mqtts://…"""

    __slots__ = ("tls", "host", "port", "username", "password")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"{url!r} must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"{url!r} names no host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{url!r} has an invalid port") from None
        self.tls = parts.scheme == "mqtts"
        self.host = parts.hostname
        self.port = port or (8883 if self.tls else 1883)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None

    def redacted(self) -> str:
        cred = f"{self.username}:***@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{cred}{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL again, credentials included (for a command that takes a URL)."""
        cred = ""
        if self.username is not None:
            cred = quote(self.username, safe="") + (":" + quote(self.password, safe="") if self.password is not None else "") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{cred}{host}:{self.port}"

    def with_username(self, username: str) -> "MqttTarget":
        other = MqttTarget.__new__(MqttTarget)
        other.tls, other.host, other.port, other.password = self.tls, self.host, self.port, self.password
        other.username = username
        return other


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", case_sensitive=False)

    mqtt_url: str = "mqtt://127.0.0.1:1883"
    # It is also a topic level of the presence topic: no '/', '+', '#' or spaces.
    mqtt_client_id: str = Field(default="geowarn-ingest", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    mqtt_protocol: Literal["3.1.1", "5"] = "3.1.1"
    # MQTT 5 keeps no session unless the client asks for one: a week covers a long outage.
    mqtt_session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    mqtt_keepalive_s: int = Field(default=30, ge=5, le=3600)
    mqtt_ca_file: Path | None = None
    topic_prefix: str = Field(default="geowarn", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")

    data_dir: Path = Path("geowarn-data")
    sites: Path | None = None
    roster: Path | None = None

    influx_url: str | None = None
    influx_token: str = ""
    influx_org: str = ""
    influx_bucket: str = ""
    forward_batch: int = Field(default=5000, ge=1, le=100_000)
    # How often the daemon logs its counters and the forwarder's lag.
    stats_interval_s: float = Field(default=60.0, gt=0)
    # How often detector state is snapshotted (and at every clean stop); after a crash the
    # journal readings stored since the snapshot are replayed into the detectors.
    snapshot_interval_s: float = Field(default=60.0, gt=0)
    # A channel whose readings come this far apart (by their arrival times) is parked once
    # judged, and one not judged a reading for this long when its site is next saved: its
    # detectors kept as their compressed saved text, in the journal only once saved (a few
    # hundred bytes of memory instead of ~6-8 KB of live objects), until its next reading
    # unpacks them. 0: at every save; inf: never, once judged (a burst that wakes the whole
    # fleet pays ~0.15 ms a channel).
    park_after_s: float = Field(default=30.0, ge=0)
    # The most channels detection keeps live (their detectors built, ~7 KB each) at once: past
    # it the least recently judged are parked whatever their rhythm, so a storm in which every
    # device reports each minute slows detection (each reading wakes its channel, ~0.3 ms)
    # instead of exhausting memory. 0: a quarter of the memory (the machine's, or the lowest
    # limit of its cgroups) at 8 KB a channel, at least 10,000.
    live_channels_max: int = Field(default=0, ge=0)
    # A worker told to stop with a backlog goes on with it this long, then leaves the rest to
    # the next start (the daemon gives a worker 60 s to stop: the checkpoint needs the rest).
    stop_drain_s: float = Field(default=30.0, gt=0, le=50)

    max_future_skew_s: float = Field(default=300.0, ge=0)
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024)
    max_readings_per_message: int = Field(default=10_000, ge=1)
    # "full" fsyncs every commit (survives power loss); "normal" survives process crashes only.
    journal_sync: Literal["full", "normal"] = "full"
    # Raw messages stay in the message log this long after the store stage has expanded them
    # (the evidence of exactly what a device sent); 0 prunes as soon as they are expanded.
    message_keep_s: float = Field(default=3600.0, ge=0)
    # Dead letters and device status rows are kept this many days after arrival, then pruned
    # by the store stage a few hundred rows per transaction (a device's newest status stays).
    deadletter_keep_days: float = Field(default=30.0, gt=0, le=36500)
    status_keep_days: float = Field(default=30.0, gt=0, le=36500)
    # A warning (log, /metrics geowarn_disk_low, /healthz "disk") when the data directory's
    # free space falls below the smaller of these: a percentage of its file system and a
    # number of bytes (0 in either: never warn). When the disk is full the daemon stops
    # acknowledging messages (the broker keeps them) until it can write again.
    disk_warn_free_percent: float = Field(default=5.0, ge=0, le=100)
    disk_warn_free_bytes: int = Field(default=500 * 1024 * 1024, ge=0)
    # ... and, oldest first, while their table is over this size (estimated from the rows'
    # bytes; a flood of bad messages must not fill the disk). A device's newest status stays.
    deadletter_keep_mb: float = Field(default=256.0, ge=1, le=1_000_000)
    status_keep_mb: float = Field(default=64.0, ge=1, le=1_000_000)
    # Readings stay in the journal forever unless this is set (e.g. when InfluxDB keeps them):
    # then they go this many days after arrival, but never before the forwarder has sent them
    # nor before detection has judged them and snapshotted past them, and never the readings
    # within a site's velocity window of its channel's newest one. At least 2 days: the zero
    # reports count yesterday's readings from the journal.
    journal_keep_days: float | None = Field(default=None, ge=2, le=36500)
    # The API's audit trail (DATA_DIR/tokens.sqlite) is evidence: kept this long, and pruned,
    # oldest first, while the file's used pages are over audit_keep_mb.
    audit_keep_days: float = Field(default=400.0, ge=1, le=36500)
    audit_keep_mb: float = Field(default=256.0, ge=1, le=1_000_000)

    # Devices of the national geohazard IoT convention (ingest/codecs_cn.py) may also publish
    # outside {topic_prefix}/: each entry is an MQTT topic the daemon subscribes to, where one
    # level may be "{code}" (the device code, checked against the payload's) and levels may be
    # "+", e.g. ["$dp", "/sys/+/{code}/thing/property/post"]. A comma-separated list in
    # GEOWARN_CN_TOPICS. Empty: only {topic_prefix}/{site}/{device}/data|status.
    # (Kept as text, like trusted_proxies: the environment gives no JSON; `cn_topic_list` reads it.)
    cn_topics: str = ""

    @field_validator("cn_topics", mode="before")
    @classmethod
    def _cn_topics_text(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            if not all(isinstance(t, str) for t in v):
                raise ValueError("cn_topics is a list of topics (strings)")
            return ",".join(t.strip() for t in v)
        return v

    @field_validator("cn_topics")
    @classmethod
    def _cn_topics(cls, text: str) -> str:
        v = [t.strip() for t in text.split(",") if t.strip()]
        if len(v) > 32:
            raise ValueError("at most 32 cn topics")
        for topic in v:
            levels = topic.split("/")
            if not topic or len(topic) > 256 or "#" in topic or any(c in topic for c in " \t\n\x00"):
                raise ValueError(f"cn topic {topic[:80]!r} must be an MQTT topic without '#' or spaces (e.g. $dp)")
            if any(("+" in lv and lv != "+") or ("{" in lv and lv != "{code}") for lv in levels):
                raise ValueError(f"cn topic {topic!r}: '+' and '{{code}}' stand for a whole level")
            if levels.count("{code}") > 1:
                raise ValueError(f"cn topic {topic!r} names {{code}} more than once")
        return ",".join(v)

    @property
    def cn_topic_list(self) -> list[str]:
        return [t for t in self.cn_topics.split(",") if t]

    @field_validator("cap_sender")
    @classmethod
    def _cap_sender(cls, v: str) -> str:
        if not v or any(c in v for c in ' ,<>&"\'') or not v.isprintable():
            raise ValueError(f"{v!r}: a CAP sender may not be empty or contain spaces, commas or < > & \" '")
        return v

    @field_validator("journal_keep_days", mode="before")
    @classmethod
    def _journal_keep_days(cls, v: Any) -> Any:
        # "off" (or empty) keeps readings forever, as leaving the key out does.
        if isinstance(v, str):
            if v.strip().lower() in ("", "off"):
                return None
            try:
                return float(v)
            except ValueError:
                raise ValueError(f"{v!r} must be a number of days (at least 2) or off") from None
        return v

    # The response chain. smtp_url: where email notifiers send (smtp[s]://[user:pass@]host[:port]
    # [?starttls=1]); timezone: the zero reports' local hours (county 09:00, city 10:00,
    # province 12:00); alert_policy: overrides of geowarn.alerts.policy.AlertPolicy (first tiers, ack
    # deadlines, sampling, report deadlines), checked when the daemon starts.
    smtp_url: str | None = None
    smtp_from: str = "geowarn@localhost"
    # CAP <sender>: globally unique for this deployment, e.g. "geowarn@dizai.hubei.gov.cn"
    # (CAP 1.2: no spaces, commas or restricted characters). The default is a placeholder that
    # `geowarn run` warns about.
    cap_sender: str = "geowarn@example.invalid"
    # Run on the bundled example registry and roster (example sites, example phone numbers)
    # when no `sites` / `roster` is set; without it `geowarn run` refuses (--allow-example).
    allow_example: bool = False
    timezone: str = "Asia/Shanghai"
    alert_policy: dict[str, Any] = Field(default_factory=dict)
    # Seconds a notifier may take for one message before it counts as failed.
    notify_timeout_s: float = Field(default=30.0, gt=0)
    # The duty-officer API and console (console/api.py): "host:port" to listen on, or "off".
    # Loopback by default: put a TLS-terminating reverse proxy in front to reach it from outside.
    http: str = "127.0.0.1:8080"
    # Reverse proxies whose X-Forwarded-For the API believes: comma-separated addresses or
    # CIDRs (a TOML list also works). Default none: the TCP peer is the client.
    trusted_proxies: str = ""
    # The console's map (console/web/app.js) draws the sites on their own, fetching nothing. A
    # tile server may be named to draw under them, "https://tiles.example.org/{z}/{x}/{y}.png";
    # the console's Content-Security-Policy then allows images from that origin only. Off by
    # default: a duty office's network may reach no outside server, and must not need to.
    map_tile_url: str | None = None

    @field_validator("map_tile_url")
    @classmethod
    def _map_tile_url(cls, v: str | None) -> str | None:
        v = (v or "").strip()
        if v.lower() in ("", "off"):
            return None
        if urlsplit(v).scheme not in ("http", "https") or not all(k in v for k in ("{z}", "{x}", "{y}")):
            raise ValueError(f"{v!r} must be an http(s) URL with {{z}}, {{x}} and {{y}} (or off)")
        return v

    @field_validator("http")
    @classmethod
    def _http(cls, v: str) -> str:
        v = v.strip()
        if v.lower() in ("off", ""):
            return "off"
        host, sep, port = v.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{v!r} must be host:port (e.g. 127.0.0.1:8080, [::1]:8080) or off")
        return v

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _trusted_proxies(cls, v: Any) -> str:
        items = [str(x) for x in v] if isinstance(v, (list, tuple)) else str(v or "").split(",")
        return ",".join(str(parse_network(x)) for x in items if x.strip())

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as Asia/Shanghai)") from None
        return v

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, v: str | None) -> str | None:
        if v and urlsplit(v).scheme not in ("smtp", "smtps"):
            raise ValueError("smtp_url must start with smtp:// or smtps://")
        return v or None

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, v: str) -> str:
        MqttTarget(v)
        return v

    @field_validator("influx_url")
    @classmethod
    def _influx_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} must start with http:// or https://")
        return v

    @model_validator(mode="after")
    def _cn_topics_outside_prefix(self) -> "Settings":
        for topic in self.cn_topic_list:
            if topic.split("/")[0] in (self.topic_prefix.split("/")[0], "+"):
                raise ValueError(f"cn topic {topic!r} would overlap {self.topic_prefix}/…: device topics there are read already")
        return self

    @model_validator(mode="after")
    def _influx_complete(self) -> "Settings":
        if self.influx_url and not self.influx_bucket:
            raise ValueError("influx_url is set but influx_bucket is empty (set GEOWARN_INFLUX_BUCKET)")
        return self

    @property
    def mqtt(self) -> MqttTarget:
        return MqttTarget(self.mqtt_url)

    @property
    def trusted_proxy_networks(self) -> tuple[IPNetwork, ...]:
        return tuple(parse_network(x) for x in self.trusted_proxies.split(",") if x)

    def mqtt_for(self, client_id: str) -> MqttTarget:
        """The broker target for one of the daemon's connections (``{id}-store``, ``{id}-api``…).

        A broker from ``geowarn broker-config`` binds client ids to usernames
        (``use_username_as_clientid``), so each connection must log in as its own client id.
        When the URL's username is ``mqtt_client_id`` each connection does, with the URL's
        password; any other URL (another username, or none) is used as it is.
        """
        target = self.mqtt
        if target.username is not None and target.username == self.mqtt_client_id:
            return target.with_username(client_id)
        return target

    @property
    def sites_path(self) -> Path:
        return self.sites if self.sites is not None else example_path("sites.example.toml")

    @property
    def roster_path(self) -> Path:
        return self.roster if self.roster is not None else example_path("roster.example.toml")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)


#: Where a settings file is looked for when none is named (``--config``, ``GEOWARN_CONFIG``):
#: the working directory, then the system's. Every command resolves it the same way, so
#: ``geowarn token create`` writes where ``geowarn run`` reads.
DEFAULT_CONFIG_FILES = (Path("geowarn.toml"), Path("/etc/geowarn/geowarn.toml"))


def config_file_in_use(config_file: str | Path | None = None) -> Path | None:
    """The settings file a command uses: the one named, else ``GEOWARN_CONFIG``, else the first
    of ``DEFAULT_CONFIG_FILES`` that exists; None: defaults and the environment only."""
    if config_file is not None:
        return Path(config_file)
    if os.environ.get(ENV_PREFIX + "CONFIG"):
        return Path(os.environ[ENV_PREFIX + "CONFIG"])
    return next((p for p in DEFAULT_CONFIG_FILES if p.is_file()), None)


def load_settings(config_file: str | Path | None = None, *, find_file: bool = True) -> Settings:
    """Settings from a TOML file and the environment, or a ConfigError naming the culprit.

    The file is ``config_file_in_use(config_file)``: the one given, else ``GEOWARN_CONFIG``,
    else ``./geowarn.toml``, else ``/etc/geowarn/geowarn.toml``; the environment overrides it.
    """
    if find_file:
        config_file = config_file_in_use(config_file)
    file_values: dict[str, Any] = {}
    source = "<defaults>"
    if config_file is not None:
        source = str(config_file)
        file_values = read_toml(Path(config_file), "settings")
    env_keys = {k[len(ENV_PREFIX):].lower() for k in os.environ if k.upper().startswith(ENV_PREFIX)}
    try:
        return Settings(**file_values)
    except ValidationError as exc:
        problems = []
        for p in problems_from_validation(source, exc):
            top = p.key.split(".")[0].split("[")[0]
            if top in env_keys:
                problems.append(ConfigProblem("environment", ENV_PREFIX + top.upper(), p.reason))
            else:
                problems.append(p)
        raise ConfigError(problems) from None


def device_apikeys(registry: Registry) -> dict[str, str]:
    """The apikeys of the registry's convention devices by device code, read from the secrets
    their ``apikey`` references (``config.roster.secret_value``, the roster's resolver).
    ConfigError naming the file, the key and why (never the value) when one cannot be read:
    the start stops, rather than send commands every such device would drop."""
    keys: dict[str, str] = {}
    problems: list[ConfigProblem] = []
    for i, site in enumerate(registry.sites.values()):
        for j, dev in enumerate(site.devices):
            if dev.apikey is None:
                continue
            where = f"sites[{i}].devices[{j}].apikey"
            if not dev.code:
                problems.append(ConfigProblem(registry.source, where, "an apikey is for a device of the national convention: give the device its code too"))
                continue
            try:
                value = secret_value(dev.apikey)
            except ValueError as exc:
                problems.append(ConfigProblem(registry.source, where, str(exc)))
                continue
            if not re.fullmatch(r"[A-Za-z0-9_.~-]{1,48}", value):
                # It travels in '&apikey=…' of a key=value command (the firmware keeps 48 bytes).
                problems.append(ConfigProblem(registry.source, where, "the apikey read must be 1-48 letters, digits, '_', '.', '~' or '-' "
                                              "(it travels in a key=value command)"))
                continue
            keys[dev.code] = value
    if problems:
        raise ConfigError(problems)
    return keys


class Loaded:
    """Everything configuration gives the daemon: settings, registry, roster and warnings."""

    def __init__(self, settings: Settings, registry: Registry, roster: Roster, warnings: list[ConfigProblem],
                 apikeys: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.roster = roster
        self.warnings = warnings
        #: Convention devices' apikeys by device code, read at start from the registry's
        #: references (config.registry.device_apikeys); only in memory, never shown.
        self.apikeys: dict[str, str] = dict(apikeys or {})

    def __repr__(self) -> str:  # never the apikeys
        return f"Loaded(registry={self.registry.source!r}, roster={self.roster.source!r}, apikeys={len(self.apikeys)})"


def load_all(
    config_file: str | Path | None = None, *, sites_path: str | Path | None = None, roster_path: str | Path | None = None,
    find_file: bool = True,
) -> Loaded:
    """Settings, registry and roster, validated together; every error found is raised at once.

    ``sites_path`` / ``roster_path`` override the files the settings name; ``find_file=False``
    reads no settings file that was not named (the demo: never a deployment's configuration).
    """
    settings = load_settings(config_file, find_file=find_file)
    problems: list[ConfigProblem] = []
    registry: Registry | None = None
    roster: Roster | None = None
    apikeys: dict[str, str] = {}
    try:
        registry = load_registry(sites_path or settings.sites_path)
        apikeys = device_apikeys(registry)
    except ConfigError as exc:
        problems += exc.problems
    try:
        roster = load_roster(roster_path or settings.roster_path)
    except ConfigError as exc:
        problems += exc.problems
    warnings: list[ConfigProblem] = []
    if registry is not None and roster is not None:
        errors, warnings = cross_check(registry, roster)
        problems += errors
    if roster is not None and not settings.smtp_url:
        for unit in roster.units.values():
            for i, cfg in enumerate(unit.notify):
                if cfg.type == "email":
                    problems.append(ConfigProblem(roster.source, f"units[admin={unit.admin}].notify[{i}]",
                                                  "an email notifier needs GEOWARN_SMTP_URL (smtp_url = 'smtp://host:port') in the settings"))
    if problems or registry is None or roster is None:
        raise ConfigError(problems)
    return Loaded(settings, registry, roster, warnings, apikeys)
