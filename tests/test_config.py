"""Configuration (DESIGN §4, §8 check-config): the shipped examples, the errors a person gets
for a bad site registry, roster or settings file, and ``geowarn check-config``.

A configuration error must name the file, the exact key and the reason, so the tests compare
(file, key) exactly and look for the telling words of the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from geowarn.config.errors import ConfigError, ConfigProblem
from geowarn.config.registry import DISPLACEMENT_LIKE, Kind, Registry, load_registry
from geowarn.config.roster import Roster, chain_of, cross_check, load_roster, tier_of
from geowarn.config.settings import MqttTarget, Settings, example_path, load_settings

REPO = Path(__file__).resolve().parents[1]

EXAMPLE_SITES = example_path("sites.example.toml")
EXAMPLE_ROSTER = example_path("roster.example.toml")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GEOWARN_* variable of the developer's shell may leak into a test."""
    for name in list(os.environ):
        if name.upper().startswith("GEOWARN_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(exc: pytest.ExceptionInfo[ConfigError]) -> list[tuple[str, str]]:
    return [(p.file, p.key) for p in exc.value.problems]


# -- the shipped examples --------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_registry() -> Registry:
    return load_registry(EXAMPLE_SITES)


@pytest.fixture(scope="module")
def example_roster() -> Roster:
    return load_roster(EXAMPLE_ROSTER)


def test_example_files_ship_with_the_package() -> None:
    assert EXAMPLE_SITES.is_file() and EXAMPLE_ROSTER.is_file()
    assert EXAMPLE_SITES.parent.name == "config"


def test_example_registry_has_three_sites_in_two_counties_of_one_city(example_registry: Registry) -> None:
    by_city: dict[str, list[str]] = defaultdict(list)
    for site in example_registry.sites.values():
        assert len(site.admin) == 6 and site.admin.isascii() and site.admin.isdigit()
        assert not site.admin.endswith("00"), f"{site.site}: {site.admin} is not a county code"
        by_city[site.admin[:4]].append(site.admin)
    assert any(len(admins) >= 3 and len(set(admins)) >= 2 for admins in by_city.values()), dict(by_city)


@pytest.mark.parametrize("field", ["name", "hazard", "scale", "admin", "evacuation_route", "shelter", "responsible", "phone"])
def test_example_sites_fill_the_text_fields_of_the_card(example_registry: Registry, field: str) -> None:
    for site in example_registry.sites.values():
        value = getattr(site, field)
        assert isinstance(value, str) and value.strip(), f"{site.site}.{field} is empty"


def test_example_sites_fill_the_numbers_of_the_card(example_registry: Registry) -> None:
    for site in example_registry.sites.values():
        # China lies within about 3-54 N, 73-136 E; 0/0 would mean "not filled in".
        assert 3 < site.lat < 54 and 73 < site.lon < 136, site.site
        assert site.threatened_people > 0 and site.threatened_households > 0, site.site
        assert site.threatened_households <= site.threatened_people, site.site


def test_example_devices_are_of_several_kinds(example_registry: Registry) -> None:
    device_kinds = {
        frozenset(c.kind for c in d.channels) for s in example_registry.sites.values() for d in s.devices
    }
    channel_kinds = {c.kind for s in example_registry.sites.values() for d in s.devices for c in d.channels}
    assert len(device_kinds) >= 4, device_kinds
    assert Kind.rain in channel_kinds  # rainfall detectors need a gauge
    assert len(channel_kinds & DISPLACEMENT_LIKE) >= 3
    assert len(channel_kinds - DISPLACEMENT_LIKE) >= 3


def test_example_sites_have_two_displacement_like_channels(example_registry: Registry) -> None:
    for site in example_registry.sites.values():
        n = sum(1 for d in site.devices for c in d.channels if c.kind in DISPLACEMENT_LIKE)
        assert n >= 2, f"{site.site} has {n} displacement-like channels"


def test_example_roster_covers_every_site_chain(example_registry: Registry, example_roster: Roster) -> None:
    assert cross_check(example_registry, example_roster) == ([], [])
    for site in example_registry.sites.values():
        chain = example_roster.chain(site.admin)
        assert [tier for tier, _ in chain] == ["county", "city", "province", "national"]
        assert all(unit is not None and unit.contacts and unit.notify for _, unit in chain), site.site
    for admin, unit in example_roster.units.items():
        assert unit.tier == tier_of(admin)


def test_registry_lookups(example_registry: Registry) -> None:
    info = example_registry.channel("XK", "XK-TLT1", "tilt_x")
    assert info is not None
    assert (info.site, info.device, info.channel, info.kind, info.unit, info.admin) == (
        "XK", "XK-TLT1", "tilt_x", "tilt", "mrad", "420526"
    )
    assert example_registry.channel("XK", "XK-TLT1", "nope") is None
    assert example_registry.channel("BSH", "XK-TLT1", "tilt_x") is None
    assert example_registry.device_site["BSH-GNSS2"] == "BSH"
    assert example_registry.source == str(EXAMPLE_SITES)


def test_admin_chain() -> None:
    assert chain_of("420527") == [
        ("county", "420527"), ("city", "420500"), ("province", "420000"), ("national", "100000")
    ]
    assert [tier_of(c) for c in ("420527", "420500", "420000", "100000")] == ["county", "city", "province", "national"]


# -- a small registry of our own, and what breaks it -------------------------------------------

SITES = """\
[[sites]]
site = "S1"
name = "Test slope one"
admin = "420527"
lat = 30.99
lon = 110.53
threatened_people = 10

[[sites.devices]]
device = "S1-GNSS"
channels = [
  { channel = "disp_e", kind = "gnss_e", unit = "mm", interval_s = 600 },
  { channel = "disp_n", kind = "gnss_n", unit = "mm", interval_s = 600 },
]

[[sites.devices]]
device = "S1-EXT"
channels = [
  { channel = "disp", kind = "displacement", thresholds = { yellow = 10.0, orange = 20.0, red = 40.0 } },
  { channel = "tilt", kind = "tilt", unit = "mrad" },
]

[[sites]]
site = "S2"
name = "Test slope two"
hazard = "collapse"
scale = "small"
admin = "420526"
lat = 31.12
lon = 110.80

[[sites.devices]]
device = "S2-CRK"
channels = [
  { channel = "crack", kind = "crack", interval_s = 300 },
]
"""

ROSTER = """\
[[units]]
admin = "420527"
name = "Zigui County"
tier = "county"
notify = [{ type = "mqtt" }]

[[units]]
admin = "420526"
name = "Xingshan County"

[[units]]
admin = "420500"
name = "Yichang City"
tier = "city"

[[units]]
admin = "420000"
name = "Hubei Province"

[[units]]
admin = "100000"
name = "National"
tier = "national"
"""


def mutate(base: str, old: str, new: str) -> str:
    assert base.count(old) == 1, f"{old!r} must occur exactly once in the base file"
    return base.replace(old, new)


def test_own_registry_loads_with_defaults(tmp_path: Path) -> None:
    reg = load_registry(write(tmp_path, "sites.toml", SITES))
    assert list(reg.sites) == ["S1", "S2"]
    crack = reg.channel("S2", "S2-CRK", "crack")
    disp = reg.channel("S1", "S1-EXT", "disp")
    assert crack is not None and disp is not None
    assert (crack.unit, crack.interval_s) == ("mm", 300.0)  # unit defaults to the kind's first
    assert (disp.unit, disp.interval_s) == ("mm", 600.0)  # interval defaults to 10 min
    assert disp.spec.thresholds is not None
    assert disp.spec.thresholds.as_list() == [(2, 10.0), (3, 20.0), (4, 40.0)]
    s2 = reg.sites["S2"]
    assert (s2.hazard, s2.scale, s2.threatened_people) == ("collapse", "small", 0)
    assert reg.sites["S1"].hazard == "landslide"


REGISTRY_CASES = [
    # (id, old, new, key, words of the reason)
    ("admin-5-digits", 'admin = "420527"', 'admin = "42052"', "sites[0].admin", "6-digit"),
    ("admin-7-digits", 'admin = "420526"', 'admin = "4205261"', "sites[1].admin", "6-digit"),
    ("admin-letter", 'admin = "420527"', 'admin = "42O527"', "sites[0].admin", "6-digit"),
    ("admin-number", 'admin = "420527"', "admin = 420527", "sites[0].admin", "string"),
    ("admin-fullwidth-digits", 'admin = "420527"', 'admin = "４２０５２７"', "sites[0].admin", "6-digit"),
    ("admin-city-code", 'admin = "420527"', 'admin = "420500"', "sites[0].admin", "county"),
    ("admin-province-code", 'admin = "420526"', 'admin = "420000"', "sites[1].admin", "county"),
    ("admin-national-code", 'admin = "420526"', 'admin = "100000"', "sites[1].admin", "county"),
    ("duplicate-site", 'site = "S2"', 'site = "S1"', "sites[1].site", "twice"),
    ("duplicate-device-across-sites", 'device = "S2-CRK"', 'device = "S1-GNSS"', "sites[1].devices[0].device", "S1"),
    ("duplicate-device-in-site", 'device = "S1-EXT"', 'device = "S1-GNSS"', "sites[0].devices[1].device", "S1"),
    ("duplicate-channel", '{ channel = "tilt", kind = "tilt"', '{ channel = "disp", kind = "tilt"', "sites[0].devices[1].channels[1].channel", "disp"),
    ("unknown-site-key", "threatened_people = 10", "treatened_people = 10", "sites[0].treatened_people", "unknown key"),
    ("unknown-channel-key", '{ channel = "crack", kind = "crack", interval_s', '{ channel = "crack", kind = "crack", intervall_s', "sites[1].devices[0].channels[0].intervall_s", "unknown key"),
    ("unknown-top-key", "[[sites]]\nsite = \"S1\"", "site_count = 2\n[[sites]]\nsite = \"S1\"", "site_count", "unknown key"),
    ("unknown-kind", 'kind = "gnss_e"', 'kind = "gnss_x"', "sites[0].devices[0].channels[0].kind", "gnss_e"),
    ("bad-unit-gnss", '{ channel = "disp_n", kind = "gnss_n", unit = "mm"', '{ channel = "disp_n", kind = "gnss_n", unit = "m"', "sites[0].devices[0].channels[1].unit", "'m'"),
    ("bad-unit-tilt", 'kind = "tilt", unit = "mrad"', 'kind = "tilt", unit = "mm"', "sites[0].devices[1].channels[1].unit", "mrad"),
    ("thresholds-descending", "orange = 20.0", "orange = 5.0", "sites[0].devices[1].channels[0].thresholds", "rise"),
    ("thresholds-equal", "red = 40.0", "red = 20.0", "sites[0].devices[1].channels[0].thresholds", "rise"),
    ("interval-zero", "interval_s = 300", "interval_s = 0", "sites[1].devices[0].channels[0].interval_s", "greater than 0"),
    ("lat-too-high", "lat = 30.99", "lat = 90.5", "sites[0].lat", "90"),
    ("lat-too-low", "lat = 31.12", "lat = -91", "sites[1].lat", "-90"),
    ("lon-out-of-range", "lon = 110.80", "lon = 190.0", "sites[1].lon", "180"),
    ("lat-string", "lat = 30.99", 'lat = "30.99N"', "sites[0].lat", "number"),
    ("hazard-unknown", 'hazard = "collapse"', 'hazard = "flood"', "sites[1].hazard", "pattern"),
    ("scale-unknown", 'scale = "small"', 'scale = "tiny"', "sites[1].scale", "pattern"),
    ("people-negative", "threatened_people = 10", "threatened_people = -1", "sites[0].threatened_people", "0"),
    ("name-missing", 'name = "Test slope two"\n', "", "sites[1].name", "required"),
    ("name-empty", 'name = "Test slope two"', 'name = ""', "sites[1].name", "at least 1"),
    ("site-code-slash", 'site = "S1"', 'site = "S1/a"', "sites[0].site", "topic"),
    ("site-code-plus", 'site = "S2"', 'site = "S+2"', "sites[1].site", "topic"),
    ("site-code-hash", 'site = "S2"', 'site = "S#"', "sites[1].site", "topic"),
    ("site-code-space", 'site = "S2"', 'site = "S 2"', "sites[1].site", "topic"),
    ("site-code-empty", 'site = "S2"', 'site = ""', "sites[1].site", "topic"),
    ("site-code-newline", 'site = "S2"', 'site = "S2\\n"', "sites[1].site", "topic"),
    ("device-code-plus", 'device = "S2-CRK"', 'device = "S2+CRK"', "sites[1].devices[0].device", "topic"),
    ("device-code-slash", 'device = "S1-GNSS"', 'device = "S1/GNSS"', "sites[0].devices[0].device", "topic"),
    ("channel-code-slash", 'channel = "disp_e"', 'channel = "disp/e"', "sites[0].devices[0].channels[0].channel", "topic"),
    ("channel-code-too-long", 'channel = "crack"', 'channel = "' + "c" * 65 + '"', "sites[1].devices[0].channels[0].channel", "1-64"),
    ("no-channels", '  { channel = "crack", kind = "crack", interval_s = 300 },\n', "", "sites[1].devices[0].channels", "at least 1"),
]


@pytest.mark.parametrize("old, new, key, words", [c[1:] for c in REGISTRY_CASES], ids=[c[0] for c in REGISTRY_CASES])
def test_bad_registry_names_file_key_and_reason(tmp_path: Path, old: str, new: str, key: str, words: str) -> None:
    path = write(tmp_path, "sites.toml", mutate(SITES, old, new))
    with pytest.raises(ConfigError) as exc:
        load_registry(path)
    assert problems(exc) == [(str(path), key)]
    assert words in exc.value.problems[0].reason
    assert str(path) in str(exc.value) and key in str(exc.value)


def test_bad_registry_reports_every_problem_at_once(tmp_path: Path) -> None:
    text = mutate(mutate(SITES, "lat = 30.99", "lat = 95"), 'admin = "420526"', 'admin = "420500"')
    path = write(tmp_path, "sites.toml", text)
    with pytest.raises(ConfigError) as exc:
        load_registry(path)
    assert sorted(problems(exc)) == [(str(path), "sites[0].lat"), (str(path), "sites[1].admin")]


def test_registry_without_sites(tmp_path: Path) -> None:
    for text in ("", "sites = []\n"):
        path = write(tmp_path, "sites.toml", text)
        with pytest.raises(ConfigError) as exc:
            load_registry(path)
        assert problems(exc) == [(str(path), "sites")]


@pytest.mark.parametrize(
    "content, words",
    [
        ("this is not toml at all", "not valid TOML"),
        ('[[sites]]\nsite = "S1"\nsite = "S2"\n', "not valid TOML"),  # a key defined twice
        ("{\"sites\": []}", "not valid TOML"),  # JSON is not TOML
    ],
)
def test_registry_not_toml(tmp_path: Path, content: str, words: str) -> None:
    path = write(tmp_path, "sites.toml", content)
    with pytest.raises(ConfigError) as exc:
        load_registry(path)
    assert problems(exc) == [(str(path), "")]
    assert words in exc.value.problems[0].reason


def test_registry_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "sites.toml"
    path.write_bytes('name = "白水河"\n'.encode("gb18030"))
    with pytest.raises(ConfigError) as exc:
        load_registry(path)
    assert problems(exc) == [(str(path), "")]


def test_registry_missing_file_or_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as exc:
        load_registry(missing)
    assert problems(exc) == [(str(missing), "")]
    assert "not found" in exc.value.problems[0].reason
    with pytest.raises(ConfigError) as exc:
        load_registry(tmp_path)
    assert problems(exc) == [(str(tmp_path), "")]
    assert "directory" in exc.value.problems[0].reason


def test_config_problem_reads_as_file_key_reason() -> None:
    assert str(ConfigProblem("a.toml", "sites[0].lat", "too far north")) == "a.toml: sites[0].lat: too far north"
    assert str(ConfigProblem("a.toml", "", "not found")) == "a.toml: not found"


# -- the roster ------------------------------------------------------------------------------


def test_own_roster_loads_and_fills_tiers(tmp_path: Path) -> None:
    roster = load_roster(write(tmp_path, "roster.toml", ROSTER))
    assert {a: u.tier for a, u in roster.units.items()} == {
        "420527": "county", "420526": "county", "420500": "city", "420000": "province", "100000": "national"
    }
    assert [u.admin if u else None for _, u in roster.chain("420526")] == ["420526", "420500", "420000", "100000"]
    assert roster.to_json()["units"][0] == {
        "admin": "420527", "tier": "county", "name": "Zigui County", "contacts": [], "notify": ["mqtt"]
    }


ROSTER_CASES = [
    ("tier-county-as-city", 'tier = "county"', 'tier = "city"', "units[0].tier", "county code"),
    ("tier-city-as-province", 'tier = "city"', 'tier = "province"', "units[2].tier", "city code"),
    ("tier-national-as-province", 'tier = "national"', 'tier = "province"', "units[4].tier", "national code"),
    ("tier-unknown", 'tier = "county"', 'tier = "village"', "units[0].tier", "county"),
    ("admin-short", 'admin = "420527"', 'admin = "4205"', "units[0].admin", "6-digit"),
    ("admin-duplicate", 'admin = "420526"', 'admin = "420527"', "units[1].admin", "twice"),
    ("unknown-key", 'name = "Hubei Province"', 'name = "Hubei Province"\nphnoe = "1"', "units[3].phnoe", "unknown key"),
    ("notify-unknown-type", '{ type = "mqtt" }', '{ type = "pager" }', "units[0].notify[0].type", "mqtt"),
]


@pytest.mark.parametrize("old, new, key, words", [c[1:] for c in ROSTER_CASES], ids=[c[0] for c in ROSTER_CASES])
def test_bad_roster_names_file_key_and_reason(tmp_path: Path, old: str, new: str, key: str, words: str) -> None:
    path = write(tmp_path, "roster.toml", mutate(ROSTER, old, new))
    with pytest.raises(ConfigError) as exc:
        load_roster(path)
    assert problems(exc) == [(str(path), key)]
    assert words in exc.value.problems[0].reason


@pytest.mark.parametrize(
    "notify, words",
    [
        ('{ type = "webhook" }', "url"),
        ('{ type = "sms", url = "ftp://gw" }', "url"),
        ('{ type = "email" }', "to"),
    ],
)
def test_roster_notifier_needs_its_address(tmp_path: Path, notify: str, words: str) -> None:
    path = write(tmp_path, "roster.toml", mutate(ROSTER, '{ type = "mqtt" }', notify))
    with pytest.raises(ConfigError) as exc:
        load_roster(path)
    [problem] = exc.value.problems
    assert problem.file == str(path)
    assert problem.key.startswith("units[0].notify[0]")
    assert words in problem.reason


WEBHOOK_CASES = [
    ("no-secret", '{ type = "webhook", url = "https://hooks.example.org/geowarn" }', ["https://hooks.example.org/geowarn", "no secret", "secret = ", "unsigned = true"]),
    ("empty-secret", '{ type = "webhook", url = "https://hooks.example.org/geowarn", secret = "" }', ["no secret", "unsigned = true"]),
    ("unsigned-and-secret", '{ type = "webhook", url = "https://hooks.example.org/geowarn", secret = "s3cret", unsigned = true }', ["contradict"]),
    ("unsigned-not-a-webhook", '{ type = "mqtt", unsigned = true }', ["webhooks only", "mqtt"]),
]


@pytest.mark.parametrize("notify, words", [c[1:] for c in WEBHOOK_CASES], ids=[c[0] for c in WEBHOOK_CASES])
def test_a_webhook_without_a_secret_is_refused_unless_the_roster_says_unsigned(tmp_path: Path, notify: str, words: list[str]) -> None:
    path = write(tmp_path, "roster.toml", mutate(ROSTER, '{ type = "mqtt" }', notify))
    with pytest.raises(ConfigError) as exc:
        load_roster(path)
    # The file, the unit (by its admin code, as the other notifier errors name it) and the reason.
    assert problems(exc) == [(str(path), "units[admin=420527].notify[0]")]
    for word in words:
        assert word in exc.value.problems[0].reason


@pytest.mark.parametrize(
    "notify, unsigned, secret",
    [
        ('{ type = "webhook", url = "https://hooks.example.org/geowarn", secret = "s3cret" }', False, "s3cret"),
        ('{ type = "webhook", url = "https://hooks.example.org/geowarn", unsigned = true }', True, ""),
    ],
)
def test_a_signed_or_deliberately_unsigned_webhook_loads(tmp_path: Path, notify: str, unsigned: bool, secret: str) -> None:
    roster = load_roster(write(tmp_path, "roster.toml", mutate(ROSTER, '{ type = "mqtt" }', notify)))
    (n,) = roster.units["420527"].notify
    assert (n.type, n.unsigned, n.secret) == ("webhook", unsigned, secret)


def test_roster_not_toml_and_missing(tmp_path: Path) -> None:
    path = write(tmp_path, "roster.toml", "units = [")
    with pytest.raises(ConfigError) as exc:
        load_roster(path)
    assert problems(exc) == [(str(path), "")]
    with pytest.raises(ConfigError) as exc:
        load_roster(tmp_path / "none.toml")
    assert problems(exc) == [(str(tmp_path / "none.toml"), "")]


def _drop_unit(admin: str) -> str:
    block = next(b for b in ROSTER.split("\n\n") if f'admin = "{admin}"' in b)
    return mutate(ROSTER, block, "")


def test_cross_check_missing_county_is_an_error(tmp_path: Path) -> None:
    sites = write(tmp_path, "sites.toml", SITES)
    roster_path = write(tmp_path, "roster.toml", _drop_unit("420526"))
    errors, warnings = cross_check(load_registry(sites), load_roster(roster_path))
    assert [(p.file, p.key) for p in errors] == [(str(sites), "sites[1].admin")]
    assert "420526" in errors[0].reason and "S2" in errors[0].reason and str(roster_path) in errors[0].reason
    assert warnings == []


def test_cross_check_missing_province_is_a_warning(tmp_path: Path) -> None:
    sites = write(tmp_path, "sites.toml", SITES)
    roster_path = write(tmp_path, "roster.toml", _drop_unit("420000"))
    errors, warnings = cross_check(load_registry(sites), load_roster(roster_path))
    assert errors == []
    assert [(p.file, p.key) for p in warnings] == [(str(sites), "sites[0].admin"), (str(sites), "sites[1].admin")]
    assert all("province 420000" in w.reason for w in warnings)


def test_cross_check_missing_city_and_nation_are_warnings(tmp_path: Path) -> None:
    sites = write(tmp_path, "sites.toml", SITES)
    text = mutate(_drop_unit("420500"), '[[units]]\nadmin = "100000"\nname = "National"\ntier = "national"\n', "")
    errors, warnings = cross_check(load_registry(sites), load_roster(write(tmp_path, "roster.toml", text)))
    assert errors == []
    assert len(warnings) == 4
    assert sum("city 420500" in w.reason for w in warnings) == 2
    assert sum("national 100000" in w.reason for w in warnings) == 2


# -- settings --------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    s = load_settings()
    assert s.mqtt_url == "mqtt://127.0.0.1:1883"
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.tls) == ("127.0.0.1", 1883, False)
    assert s.influx_url is None
    assert s.sites_path == EXAMPLE_SITES and s.roster_path == EXAMPLE_ROSTER


def _settings_file(tmp_path: Path) -> Path:
    return write(
        tmp_path,
        "geowarn.toml",
        f"""\
mqtt_url = "mqtt://file-broker:1884"
data_dir = {json.dumps(str(tmp_path / "file-data"))}
sites = {json.dumps(str(tmp_path / "file-sites.toml"))}
roster = {json.dumps(str(tmp_path / "file-roster.toml"))}
influx_url = "http://file-influx:8086"
influx_token = "file-token"
influx_org = "file-org"
influx_bucket = "file-bucket"
mqtt_keepalive_s = 60
""",
    )


def test_settings_from_file(tmp_path: Path) -> None:
    s = load_settings(_settings_file(tmp_path))
    assert s.mqtt_url == "mqtt://file-broker:1884"
    assert (s.mqtt.host, s.mqtt.port) == ("file-broker", 1884)
    assert s.data_dir == tmp_path / "file-data"
    assert s.sites_path == tmp_path / "file-sites.toml"
    assert s.roster_path == tmp_path / "file-roster.toml"
    assert (s.influx_url, s.influx_token, s.influx_org, s.influx_bucket) == (
        "http://file-influx:8086", "file-token", "file-org", "file-bucket"
    )
    assert s.mqtt_keepalive_s == 60


def test_settings_from_environment_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOWARN_MQTT_URL", "mqtts://env-broker")
    monkeypatch.setenv("GEOWARN_DATA_DIR", str(tmp_path / "env-data"))
    monkeypatch.setenv("GEOWARN_INFLUX_URL", "https://env-influx:8086")
    monkeypatch.setenv("GEOWARN_INFLUX_BUCKET", "env-bucket")
    s = load_settings()
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.tls) == ("env-broker", 8883, True)
    assert s.data_dir == tmp_path / "env-data"
    assert (s.influx_url, s.influx_bucket) == ("https://env-influx:8086", "env-bucket")


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _settings_file(tmp_path)
    env = {
        "GEOWARN_MQTT_URL": "mqtt://env-broker:1999",
        "GEOWARN_DATA_DIR": str(tmp_path / "env-data"),
        "GEOWARN_SITES": str(tmp_path / "env-sites.toml"),
        "GEOWARN_ROSTER": str(tmp_path / "env-roster.toml"),
        "GEOWARN_INFLUX_URL": "https://env-influx",
        "GEOWARN_INFLUX_TOKEN": "env-token",
        "GEOWARN_INFLUX_ORG": "env-org",
        "GEOWARN_INFLUX_BUCKET": "env-bucket",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = load_settings(path)
    assert (s.mqtt.host, s.mqtt.port) == ("env-broker", 1999)
    assert s.data_dir == tmp_path / "env-data"
    assert s.sites_path == tmp_path / "env-sites.toml"
    assert s.roster_path == tmp_path / "env-roster.toml"
    assert (s.influx_url, s.influx_token, s.influx_org, s.influx_bucket) == (
        "https://env-influx", "env-token", "env-org", "env-bucket"
    )
    assert s.mqtt_keepalive_s == 60  # not in the environment: the file's value stays


def test_geowarn_config_names_the_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOWARN_CONFIG", str(_settings_file(tmp_path)))
    assert load_settings().mqtt_url == "mqtt://file-broker:1884"


@pytest.mark.parametrize(
    "url, tls, host, port, user, password",
    [
        ("mqtt://broker", False, "broker", 1883, None, None),
        ("mqtt://broker:1884", False, "broker", 1884, None, None),
        ("mqtts://broker", True, "broker", 8883, None, None),
        ("mqtts://broker:8884", True, "broker", 8884, None, None),
        ("mqtt://127.0.0.1:1883", False, "127.0.0.1", 1883, None, None),
        ("mqtt://[::1]:1883", False, "::1", 1883, None, None),
        ("mqtt://ingest:s3cret@broker", False, "broker", 1883, "ingest", "s3cret"),
        ("mqtts://ingest%40yichang:p%40ss%3Aw%2Fd%25@broker.example.org:8883", True, "broker.example.org", 8883, "ingest@yichang", "p@ss:w/d%"),
        ("mqtt://%E7%8E%8B:%E5%AF%86@broker", False, "broker", 1883, "王", "密"),
        ("mqtt://onlyuser@broker", False, "broker", 1883, "onlyuser", None),
    ],
)
def test_mqtt_url_parsing(url: str, tls: bool, host: str, port: int, user: str | None, password: str | None) -> None:
    m = MqttTarget(url)
    assert (m.tls, m.host, m.port, m.username, m.password) == (tls, host, port, user, password)
    if password:
        assert password not in m.redacted()
    assert Settings(mqtt_url=url).mqtt.port == port


@pytest.mark.parametrize(
    "url", ["http://broker", "tcp://broker:1883", "broker:1883", "mqtt://", "mqtt://:1883", "mqtt://broker:99999", "mqtt://broker:port", ""]
)
def test_mqtt_url_rejected(url: str) -> None:
    with pytest.raises(ValueError):
        MqttTarget(url)


def test_redacted_url_hides_the_password() -> None:
    assert MqttTarget("mqtts://u:secret@h").redacted() == "mqtts://u:***@h:8883"
    assert MqttTarget("mqtt://h").redacted() == "mqtt://h:1883"


@pytest.mark.parametrize(
    "line, key, words",
    [
        ('mqtt_url = "http://broker"', "mqtt_url", "mqtt://"),
        ('mqtt_url = "mqtt://broker:0x"', "mqtt_url", "port"),
        ("mqtt_keepalive_s = 1", "mqtt_keepalive_s", "greater than or equal to 5"),
        ('mqtt_protocol = "4"', "mqtt_protocol", "3.1.1"),
        ('topic_prefix = "geowarn/#"', "topic_prefix", "pattern"),
        ('influx_url = "influx:8086"\ninflux_bucket = "b"', "influx_url", "http://"),
        ('journal_sync = "sometimes"', "journal_sync", "full"),
        ("max_payload_bytes = 10", "max_payload_bytes", "1024"),
        ('mqtt_urll = "mqtt://broker"', "mqtt_urll", "unknown key"),
    ],
)
def test_bad_settings_file_names_file_and_key(tmp_path: Path, line: str, key: str, words: str) -> None:
    path = write(tmp_path, "geowarn.toml", line + "\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert problems(exc) == [(str(path), key)]
    assert words in exc.value.problems[0].reason


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("GEOWARN_MQTT_URL", "tcp://broker", "mqtt://"),
        ("GEOWARN_MQTT_URL", "mqtt://broker:99999", "port"),
        ("GEOWARN_MQTT_KEEPALIVE_S", "soon", "integer"),
        ("GEOWARN_INFLUX_URL", "influx:8086", "http://"),
        ("GEOWARN_JOURNAL_SYNC", "never", "full"),
    ],
)
def test_bad_environment_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, words: str) -> None:
    monkeypatch.setenv(name, value)
    monkeypatch.setenv("GEOWARN_INFLUX_BUCKET", "b")
    # The file's value of the same key is fine: the environment's is the one that counts.
    path = write(tmp_path, "geowarn.toml", 'mqtt_url = "mqtt://file-broker"\n')
    for source in (None, path):
        with pytest.raises(ConfigError) as exc:
            load_settings(source)
        [problem] = exc.value.problems
        assert problem.key == name
        assert problem.file == "environment"
        assert words in problem.reason
        assert name in str(exc.value)


def test_environment_fixes_a_bad_file_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "geowarn.toml", 'mqtt_url = "http://broker"\n')
    monkeypatch.setenv("GEOWARN_MQTT_URL", "mqtt://broker")
    assert load_settings(path).mqtt.host == "broker"


def test_influx_url_without_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "geowarn.toml", 'influx_url = "http://influx:8086"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    [problem] = exc.value.problems
    assert problem.file == str(path)
    assert "influx_bucket" in str(problem)
    monkeypatch.setenv("GEOWARN_INFLUX_URL", "http://influx:8086")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "influx_bucket" in str(exc.value)
    monkeypatch.setenv("GEOWARN_INFLUX_BUCKET", "geowarn")
    assert load_settings(path).influx_bucket == "geowarn"


def test_empty_influx_url_means_no_influx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOWARN_INFLUX_URL", "")
    assert load_settings().influx_url is None


def test_settings_file_not_toml_or_missing(tmp_path: Path) -> None:
    path = write(tmp_path, "geowarn.toml", "mqtt_url = mqtt://broker\n")  # unquoted string
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert problems(exc) == [(str(path), "")]
    assert "TOML" in exc.value.problems[0].reason
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path / "absent.toml")
    assert problems(exc) == [(str(tmp_path / "absent.toml"), "")]


# -- geowarn check-config ----------------------------------------------------------------------
#
# Each case is one real `python -m geowarn.service.cli check-config` process. They are independent, so the
# module fixture starts them all at once and the tests read their results: interpreter start-up
# dominates, and running them side by side keeps this suite fast.


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class CheckConfig:
    dir: Path
    files: dict[str, Path]
    runs: dict[str, Run]


@pytest.fixture(scope="module")
def check_config(tmp_path_factory: pytest.TempPathFactory) -> CheckConfig:
    d = tmp_path_factory.mktemp("check-config")
    f = {
        "sites": write(d, "sites.toml", SITES),
        "roster": write(d, "roster.toml", ROSTER),
        "roster_no_province": write(d, "roster-no-province.toml", _drop_unit("420000")),
        "roster_no_county": write(d, "roster-no-county.toml", _drop_unit("420526")),
        "bad_sites": write(d, "bad-sites.toml", mutate(SITES, "lat = 30.99", "lat = 95")),
        "not_toml": write(d, "junk.toml", "this is not toml"),
        "webhook_no_secret": write(d, "roster-webhook.toml", mutate(ROSTER, '{ type = "mqtt" }', '{ type = "webhook", url = "https://hooks.example.org/geowarn" }')),
    }
    f["settings"] = write(d, "settings.toml", f"sites = {json.dumps(str(f['sites']))}\nroster = {json.dumps(str(f['roster']))}\n")
    f["bad_settings"] = write(d, "bad-geowarn.toml", f"mqtt_keepalive_s = 1\nsites = {json.dumps(str(f['sites']))}\n")
    cases: dict[str, tuple[list[str], dict[str, str]]] = {
        "default": (["--json"], {}),
        "sites": ([str(f["sites"]), "--json"], {}),
        "roster_no_province": ([str(f["roster_no_province"]), "--json"], {}),
        "settings": ([str(f["settings"]), "--json"], {}),
        "bad_sites": ([str(f["bad_sites"]), "--json"], {}),
        "roster_no_county": ([str(f["roster_no_county"]), "--json"], {}),
        "not_toml": ([str(f["not_toml"]), "--json"], {}),
        "webhook_no_secret": ([str(f["webhook_no_secret"]), "--json"], {}),
        # A bad file value and a bad environment value: both reported, each by its own name.
        "bad_settings": ([str(f["bad_settings"]), "--json"], {"GEOWARN_MQTT_URL": "tcp://broker"}),
    }
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("GEOWARN_")}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "geowarn.service.cli", "check-config", *args],
            cwd=d, env={**clean, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
        )
        for name, (args, env) in cases.items()
    }
    runs = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        runs[name] = Run(proc.returncode, out, err)
    return CheckConfig(d, f, runs)


def assert_check_config_shape(doc: dict) -> None:
    assert set(doc) == {"sites", "roster"}
    for site in doc["sites"]:
        assert {"site", "name", "admin", "lat", "lon", "devices"} <= set(site)
        assert isinstance(site["lat"], float) and isinstance(site["lon"], float)
        for device in site["devices"]:
            assert {"device", "channels"} <= set(device)
            for ch in device["channels"]:
                assert {"channel", "kind", "unit", "interval_s"} <= set(ch)
    assert isinstance(doc["roster"], dict) and doc["roster"]["units"]


def ok_json(run: Run) -> dict:
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)  # warnings go to stderr, never into the JSON
    assert_check_config_shape(doc)
    return doc


def test_check_config_defaults_to_the_examples(check_config: CheckConfig) -> None:
    doc = ok_json(check_config.runs["default"])
    assert [s["site"] for s in doc["sites"]] == ["BSH", "BZM", "XK"]
    bsh = doc["sites"][0]
    assert (bsh["name"], bsh["admin"], bsh["lat"], bsh["lon"]) == ("白水河滑坡 Baishuihe landslide", "420527", 30.9946, 110.5351)
    assert bsh["devices"][0]["channels"][0] == {"channel": "disp_e", "kind": "gnss_e", "unit": "mm", "interval_s": 600.0}
    assert {u["admin"] for u in doc["roster"]["units"]} == {"420527", "420526", "420500", "420000", "100000"}
    assert check_config.runs["default"].stderr == ""


def test_check_config_with_a_sites_file(check_config: CheckConfig) -> None:
    doc = ok_json(check_config.runs["sites"])
    assert [s["site"] for s in doc["sites"]] == ["S1", "S2"]
    assert doc["sites"][1]["devices"] == [
        {"device": "S2-CRK", "channels": [{"channel": "crack", "kind": "crack", "unit": "mm", "interval_s": 300.0}]}
    ]
    assert {u["admin"] for u in doc["roster"]["units"]} == {"420527", "420526", "420500", "420000", "100000"}


def test_check_config_with_a_roster_file_warns_of_missing_tiers(check_config: CheckConfig) -> None:
    run = check_config.runs["roster_no_province"]
    doc = ok_json(run)
    assert [s["site"] for s in doc["sites"]] == ["BSH", "BZM", "XK"]
    assert {u["admin"] for u in doc["roster"]["units"]} == {"420527", "420526", "420500", "100000"}
    assert "warning:" in run.stderr and "province 420000" in run.stderr


def test_check_config_with_a_settings_file(check_config: CheckConfig) -> None:
    run = check_config.runs["settings"]
    doc = ok_json(run)
    assert [s["site"] for s in doc["sites"]] == ["S1", "S2"]
    assert [u["admin"] for u in doc["roster"]["units"]] == ["420527", "420526", "420500", "420000", "100000"]
    assert run.stderr == ""


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("bad_sites", ["{bad_sites}: sites[0].lat: ", "90"]),
        ("roster_no_county", [f"{EXAMPLE_SITES}: sites[2].admin: ", "420526", "{roster_no_county}", "nobody"]),
        ("not_toml", ["{not_toml}: ", "TOML"]),
        ("webhook_no_secret", ["{webhook_no_secret}: units[admin=420527].notify[0]: ", "no secret", "unsigned = true"]),
        ("bad_settings", ["{bad_settings}: mqtt_keepalive_s: ", "environment: GEOWARN_MQTT_URL: ", "mqtt://"]),
    ],
)
def test_check_config_bad_input_exits_2_with_file_key_reason(check_config: CheckConfig, case: str, fragments: list[str]) -> None:
    run = check_config.runs[case]
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert run.stdout == ""
    for fragment in fragments:
        assert fragment.format(**{k: str(v) for k, v in check_config.files.items()}) in run.stderr, run.stderr


@pytest.mark.parametrize("bad", ["geo+warn", "geo#warn", "geo/warn", "geo warn"])
def test_a_client_id_that_would_break_the_presence_topic_is_refused(monkeypatch, bad):
    from geowarn.config.errors import ConfigError
    from geowarn.config.settings import load_settings

    monkeypatch.setenv("GEOWARN_MQTT_CLIENT_ID", bad)
    with pytest.raises(ConfigError, match="GEOWARN_MQTT_CLIENT_ID"):
        load_settings(None)


def test_an_email_notifier_without_smtp_url_is_a_config_error_naming_the_unit(tmp_path, monkeypatch):
    from geowarn.config.errors import ConfigError
    from geowarn.config.settings import example_path, load_all

    roster = tmp_path / "roster.toml"
    text = example_path("roster.example.toml").read_text(encoding="utf-8")
    roster.write_text(text.replace('notify = [{ type = "mqtt" }, { type = "jsonl" }]', 'notify = [{ type = "email", to = ["duty@example.org"] }]', 1), encoding="utf-8")
    monkeypatch.delenv("GEOWARN_SMTP_URL", raising=False)
    with pytest.raises(ConfigError) as err:
        load_all(roster_path=roster)
    assert [(p.file, p.key) for p in err.value.problems] == [(str(roster), "units[admin=420527].notify[0]")]
    assert "GEOWARN_SMTP_URL" in err.value.problems[0].reason
    monkeypatch.setenv("GEOWARN_SMTP_URL", "smtp://127.0.0.1:2525")
    assert load_all(roster_path=roster).settings.smtp_url == "smtp://127.0.0.1:2525"


def test_a_bad_alert_policy_or_time_zone_stops_the_daemon_start_with_key_and_reason(tmp_path):
    env = {**os.environ, "GEOWARN_DATA_DIR": str(tmp_path / "d"), "GEOWARN_MQTT_URL": "mqtt://127.0.0.1:1",
           "GEOWARN_ALERT_POLICY": '{"ack_deadline_s": {"2": -5}}', "GEOWARN_ALLOW_EXAMPLE": "1"}
    run = subprocess.run([sys.executable, "-m", "geowarn.service.cli", "run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert "alert_policy.ack_deadline_s" in run.stderr and "must be > 0" in run.stderr
    env["GEOWARN_ALERT_POLICY"] = "{}"
    env["GEOWARN_TIMEZONE"] = "Mars/Olympus"
    run = subprocess.run([sys.executable, "-m", "geowarn.service.cli", "run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "GEOWARN_TIMEZONE" in run.stderr and "Mars/Olympus" in run.stderr, run.stderr
