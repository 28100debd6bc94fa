"""The loaded registry kept compact (issue 17, item 1: "the registry as compact records") and
still the same to every reader.

A loaded registry's sites and devices are made again field by field so that CPython keeps their
fields in key-sharing values, a ``ChannelInfo`` holds only its (site, device) key and facts
shared by its spec, and a device's channel dict shares its keys with the devices of the same
channels (``config/registry.py``). Every reader must see what it saw before: each test compares
with pydantic's own validation of each site table (``Site.model_validate``, nothing of the
registry's loading) and with a ``ChannelInfo``'s fields worked out here from the channel spec.
The problems of a bad registry are the ones the tree before the change names (run against it,
8a94f35, they are the same). The memory test is the one the tree before fails (≈ 1,520 B per
device there, ≈ 825 B now, at 2,000 devices).
"""

from __future__ import annotations

import gc
import pickle
import tomllib
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from geowarn.config.errors import ConfigError
from geowarn.config.registry import DEFAULT_RANGE, ChannelInfo, Device, Registry, Site, load_registry
from geowarn.config.settings import example_path
from geowarn.simulators.scenario import Template, sites_toml, synthetic_sites

SCENARIOS = Path(__file__).resolve().parents[1] / "simulators" / "scenarios"

# Every field a device or site can state, devices with the same channels and with others, a
# channel list repeated across sites, a policy, a zero of each sign, 600 and 600.0.
VARIED = """
[[sites]]
site = "XK"
name = "Xiangjiaba slope"
hazard = "collapse"
scale = "large"
admin = "420527"
lat = 30.95
lon = 110.61
threatened_people = 120
threatened_households = 31
evacuation_route = "north road to the school"
shelter = "village school"
responsible = "Li Ming"
phone = "+86 717 000 0000"
policy = { hold_s = 0.0, confirm_devices = 3, velocity_per_day = { yellow = 3.0, red = 120.0 }, rain = { sum_24h = { yellow = 50.0, red = 150.0 }, calibrated = "2010-2020" } }

[[sites.devices]]
device = "XK-CN1"
model = "universal crack meter"
code = "SK11E80D1307426AZ"
clock_offset_s = 28800
ignore = ["L1_QJ_1.AZI"]
apikey = "env:XK_CN1_KEY"
battery_low_percent = 30.0
battery_low_v = 3.4
channels = [
  { channel = "crack", kind = "crack", source = "L1_LF_1", interval_s = 600 },
  { channel = "tilt_x", kind = "tilt", unit = "deg", source = "L1_QJ_1.X", noise = 0.01, noise_source = "estimated" },
]

[[sites.devices]]
device = "XK-GNSS1"
model = "GNSS receiver"
channels = [
  { channel = "disp_e", kind = "gnss_e", range = [-0.0, 500.0], thresholds = { yellow = 50.0, red = 200.0 } },
  { channel = "disp_n", kind = "gnss_n" },
  { channel = "battery", kind = "battery", interval_s = 600.0 },
]

[[sites.devices]]
device = "XK-GNSS2"
model = "GNSS receiver"
channels = [
  { channel = "disp_e", kind = "gnss_e", range = [0.0, 500.0], thresholds = { yellow = 50.0, red = 200.0 } },
  { channel = "disp_n", kind = "gnss_n" },
  { channel = "battery", kind = "battery", interval_s = 600 },
]

[[sites]]
site = "BSH"
name = "Baishuihe"
admin = "420527"
lat = 30.98
lon = 110.53
policy = { hold_s = -0.0 }

[[sites.devices]]
device = "BSH-GNSS1"
model = "GNSS receiver"
channels = [
  { channel = "disp_e", kind = "gnss_e", range = [-0.0, 500.0], thresholds = { yellow = 50.0, red = 200.0 } },
  { channel = "disp_n", kind = "gnss_n" },
  { channel = "battery", kind = "battery", interval_s = 600.0 },
]

[[sites.devices]]
device = "BSH-RG"
channels = [{ channel = "rain", kind = "rain", unit = "mm", interval_s = 300 }]
"""

DEVICE_FIELDS = ("device", "model", "code", "clock_offset_s", "ignore", "apikey", "battery_low_percent", "battery_low_v", "channels")


def _same(got: Any, want: Any, what: str) -> None:
    # The type and the repr too: 600 is not 600.0, -0.0 is not 0.0, though they are equal.
    assert type(got) is type(want), what
    assert got == want, what
    assert repr(got) == repr(want), what


def _pydantic_sites(path: Path) -> list[Site]:
    """The sites as pydantic validates each table of the file on its own."""
    with open(path, "rb") as fh:
        doc = tomllib.load(fh)
    return [Site.model_validate(raw) for raw in doc["sites"]]


def _assert_readers_see_the_same(reg: Registry, plain: list[Site]) -> None:
    assert list(reg.sites) == [s.site for s in plain]
    devices = 0
    for want in plain:
        got = reg.sites[want.site]
        assert type(got) is Site
        for name in Site.model_fields:
            if name != "devices":
                _same(getattr(got, name), getattr(want, name), f"{want.site}.{name}")
        assert got.model_fields_set == want.model_fields_set
        assert len(got.devices) == len(want.devices)
        for gd, wd in zip(got.devices, want.devices):
            assert type(gd) is Device
            for name in DEVICE_FIELDS:
                _same(getattr(gd, name), getattr(wd, name), f"{wd.device}.{name}")
            assert gd.model_fields_set == wd.model_fields_set
            assert reg.device_site[wd.device] == want.site
            chans = reg.channels[(want.site, wd.device)]
            assert type(chans) is dict
            assert list(chans) == [c.channel for c in wd.channels]
            for c in wd.channels:
                info = reg.channel(want.site, wd.device, c.channel)
                assert isinstance(info, ChannelInfo)
                assert info is chans[c.channel] is reg.channels.get((want.site, wd.device), {}).get(c.channel)
                low, high = c.range if c.range is not None else DEFAULT_RANGE[c.kind]
                expected = {"site": want.site, "admin": want.admin, "device": wd.device, "channel": c.channel, "kind": c.kind.value,
                            "unit": c.unit, "interval_s": c.interval_s, "low": low, "high": high}
                for name, value in expected.items():
                    _same(getattr(info, name), value, f"{wd.device}/{c.channel}.{name}")
                _same(info.spec, c, f"{wd.device}/{c.channel}.spec")
            devices += 1
        # Read last: pydantic's ==, dump and repr read the models' __dict__.
        assert got == want
        assert got.model_dump() == want.model_dump()
        assert repr(got) == repr(want)
    assert len(reg.device_site) == len(reg.channels) == devices
    assert reg.to_json() == Registry(plain).to_json()


def _registries(tmp_path: Path) -> list[Path]:
    varied = tmp_path / "varied.toml"
    varied.write_text(VARIED, encoding="utf-8")
    fleet = tmp_path / "fleet.toml"  # like devices: the compact path of load_registry
    fleet.write_text(sites_toml(synthetic_sites(Template(devices_per_site=5), 300)), encoding="utf-8")
    return [varied, fleet, example_path("sites.example.toml"), SCENARIOS / "cn_sites.toml"]


def test_readers_see_what_pydantic_validation_makes(tmp_path: Path) -> None:
    for path in _registries(tmp_path):
        _assert_readers_see_the_same(load_registry(path), _pydantic_sites(path))


def test_a_registry_comes_back_from_a_pickle_the_same(tmp_path: Path) -> None:
    # As a spawned worker receives it (service/worker.py pickles the daemon's configuration).
    for path in _registries(tmp_path):
        back = pickle.loads(pickle.dumps(load_registry(path)))
        assert back.source == str(path)
        _assert_readers_see_the_same(back, _pydantic_sites(path))
        # And once more: a worker's registry pickles as the main process's does.
        _assert_readers_see_the_same(pickle.loads(pickle.dumps(back)), _pydantic_sites(path))


def test_a_registry_of_plain_sites_is_left_as_given(tmp_path: Path) -> None:
    # Registry(sites) from code (tests, the demo) keeps the very objects it was given.
    plain = _pydantic_sites(example_path("sites.example.toml"))
    reg = Registry(plain)
    assert all(reg.sites[s.site] is s for s in plain)
    _assert_readers_see_the_same(reg, _pydantic_sites(example_path("sites.example.toml")))


def test_a_devices_channel_dict_is_a_plain_dict() -> None:
    reg = load_registry(example_path("sites.example.toml"))
    key, chans = next(iter(reg.channels.items()))
    copy = dict(chans)
    assert copy == chans and list(copy.items()) == list(chans.items())
    assert pickle.loads(pickle.dumps(chans)).keys() == chans.keys()
    assert "nope" not in chans and chans.get("nope") is None
    with pytest.raises(KeyError):
        chans["nope"]


def test_channel_info_is_read_only() -> None:
    reg = load_registry(example_path("sites.example.toml"))
    info = next(iter(next(iter(reg.channels.values())).values()))
    with pytest.raises(AttributeError):
        info.kind = "rain"  # type: ignore[misc]
    # The one the plain constructor makes reads the same.
    site = reg.sites[info.site]
    device = next(d for d in site.devices if d.device == info.device)
    plain = ChannelInfo(site, device, info.spec)
    fields = ("site", "admin", "device", "channel", "kind", "unit", "interval_s", "low", "high", "spec")
    assert {f: getattr(plain, f) for f in fields} == {f: getattr(info, f) for f in fields}


BAD_FIELDS = """
[[sites]]
site = "A"
name = "a"
admin = "420527"
lat = 30.0
lon = 110.0

[[sites.devices]]
device = "A/1"
channels = [{ channel = "x", kind = "displacement" }]

[[sites.devices]]
device = "A-2"
apikey = "s3cret"
battery_low_v = 0
channels = [{ channel = "x", kind = "battery", unit = "mm", colour = "red" }]

[[sites]]
site = "B"
name = "b"
admin = "420500"
lat = 30.0
lon = 110.0
devices = []
"""

BAD_WHOLE = """
[[sites]]
site = "A"
name = "a"
admin = "420527"
lat = 30.0
lon = 110.0

[[sites.devices]]
device = "D-1"
code = "SK1"
channels = [{ channel = "x", kind = "displacement" }, { channel = "x", kind = "crack" }]

[[sites]]
site = "A"
name = "a again"
admin = "420527"
lat = 30.0
lon = 110.0

[[sites.devices]]
device = "D-1"
channels = [{ channel = "x", kind = "displacement" }]

[[sites.devices]]
device = "D-2"
code = "SK1"
channels = [{ channel = "x", kind = "displacement" }]
"""


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        (BAD_FIELDS, [
            ("sites[0].devices[0].device", "device code 'A/1' must be 1-64 characters of letters, digits, '_', '.', '-' (it is used as an MQTT topic level)"),
            ("sites[0].devices[1].channels[0].unit", "unit 'mm' is not a unit of kind battery (use one of V)"),
            ("sites[0].devices[1].channels[0].colour", "unknown key (check its spelling)"),
            ("sites[0].devices[1].apikey", "apikey must be a reference to the secret, 'env:NAME' (an environment variable of the daemon) or "
                                           "'file:/path' (a file only GeoWarn can read), never the key itself"),
            ("sites[0].devices[1].battery_low_v", "Input should be greater than 0"),
            ("sites[1].admin", "admin '420500' is a city or province code; a site belongs to a county (last two digits not 00)"),
            ("sites[1].devices", "List should have at least 1 item after validation, not 0"),
        ]),
        (BAD_WHOLE, [
            ("sites[0].devices[0].channels[1].channel", "channel 'x' is defined twice in device D-1 (also channels[0])"),
            ("sites[1].site", "site 'A' is defined twice (also sites[0])"),
            ("sites[1].devices[0].device", "device 'D-1' already belongs to site A; a device belongs to one site"),
            ("sites[1].devices[1].code", "device code 'SK1' also names device D-1; payloads are routed by it"),
        ]),
    ],
    ids=["fields", "whole"],
)
def test_a_bad_registry_is_named_with_file_key_and_reason_as_before(tmp_path: Path, text: str, problems: list[tuple[str, str]]) -> None:
    path = tmp_path / "sites.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_registry(path)
    assert [(p.file, p.key, p.reason) for p in exc.value.problems] == [(str(path), key, reason) for key, reason in problems]


# -- memory -------------------------------------------------------------------------------

DEVICES = 2000
#: Bytes a loaded registry may keep per device (tracemalloc) at 2,000 devices of 4 channels:
#: ≈ 825 now, ≈ 1,520 before (issue 17). Code strings and a ChannelInfo per channel stay.
CEILING_B = 1000


def _fleet(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(sites_toml(synthetic_sites(Template(devices_per_site=5), DEVICES)), encoding="utf-8")
    return path


def _traced(make: Any) -> tuple[Any, int]:
    gc.collect()
    tracemalloc.start()
    try:
        made = make()
        gc.collect()
        return made, tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def test_a_loaded_registry_keeps_under_the_ceiling_per_device(tmp_path: Path) -> None:
    path = _fleet(tmp_path)
    load_registry(path)  # once untraced: whatever a first load makes once per process
    reg, kept = _traced(lambda: load_registry(path))
    assert len(reg.device_site) == DEVICES
    assert kept / DEVICES < CEILING_B, f"{kept / DEVICES:.0f} B per device"


def test_a_workers_registry_keeps_under_the_ceiling_per_device(tmp_path: Path) -> None:
    blob = pickle.dumps(load_registry(_fleet(tmp_path)))
    gc.collect()
    back, kept = _traced(lambda: pickle.loads(blob))
    assert len(back.device_site) == DEVICES
    assert kept / DEVICES < CEILING_B, f"{kept / DEVICES:.0f} B per device"
    # Readers reading every field keep it so (a model's __dict__ read would build a dict).
    devices = [d for s in back.sites.values() for d in s.devices]
    _, read = _traced(lambda: [[getattr(d, f) for f in DEVICE_FIELDS] for d in devices] and None)
    assert read / DEVICES < 8
