"""The registry's compact loading (issue 17): repeated channel specs and policies are validated
once and shared, the lookups are built from them, and the registry crosses to a worker process
as its sites only. None of it may change what a reader sees: every test compares with the
plain whole-document validation (``_RegistryFile``) and the plain ``ChannelInfo`` constructor,
which is how the registry was built before."""

from __future__ import annotations

import math
import pickle
import tomllib
from pathlib import Path
from typing import Any

import pytest
from geowarn.config.errors import ConfigError
from geowarn.config.registry import (
    ChannelInfo,
    Registry,
    _RegistryFile,
    load_registry,
    parse_registry,
)
from geowarn.config.settings import example_path
from geowarn.simulators.scenario import Template, sites_toml, synthetic_sites

SCENARIOS = Path(__file__).resolve().parents[1] / "simulators" / "scenarios"
INFO_FIELDS = ("site", "admin", "device", "channel", "kind", "unit", "interval_s", "low", "high", "spec")


def _plain(path: Path) -> list[Any]:
    """The sites as the whole-document validation makes them, unshared."""
    with open(path, "rb") as fh:
        return _RegistryFile.model_validate(tomllib.load(fh)).sites


def _fields_sets(sites: list[Any]) -> list[Any]:
    return [(s.model_fields_set, [(d.model_fields_set, [c.model_fields_set for c in d.channels]) for d in s.devices]) for s in sites]


def _assert_same_as_plain(reg: Registry, plain: list[Any]) -> None:
    loaded = list(reg.sites.values())
    assert [s.model_dump() for s in loaded] == [s.model_dump() for s in plain]
    assert [repr(s) for s in loaded] == [repr(s) for s in plain]  # types and signs too: 1 vs 1.0, -0.0
    assert _fields_sets(loaded) == _fields_sets(plain)
    n = 0
    for s in plain:
        for d in s.devices:
            assert reg.device_site[d.device] == s.site
            assert list(reg.channels[(s.site, d.device)]) == [c.channel for c in d.channels]
            for c in d.channels:
                got, want = reg.channel(s.site, d.device, c.channel), ChannelInfo(s, d, c)
                assert got is not None
                assert {f: getattr(got, f) for f in INFO_FIELDS} == {f: getattr(want, f) for f in INFO_FIELDS}
                n += 1
    assert n == sum(len(chans) for chans in reg.channels.values())
    assert len(reg.device_site) == sum(len(s.devices) for s in plain)


@pytest.mark.parametrize("path", [example_path("sites.example.toml"), SCENARIOS / "cn_sites.toml"], ids=["example", "cn_sites"])
def test_bundled_registries_load_as_the_plain_validation_makes_them(path: Path) -> None:
    _assert_same_as_plain(load_registry(path), _plain(path))


def test_a_fleet_shares_its_channel_specs_and_stays_the_same(tmp_path: Path) -> None:
    path = tmp_path / "sites.toml"
    path.write_text(sites_toml(synthetic_sites(Template(devices_per_site=5), 500)), encoding="utf-8")
    reg = load_registry(path)
    _assert_same_as_plain(reg, _plain(path))
    specs = {id(info.spec) for chans in reg.channels.values() for info in chans.values()}
    assert len(specs) == len(Template().channels)  # one spec per template channel, not 2000
    policies = {id(s.policy) for s in reg.sites.values()}
    assert len(policies) == 1


def test_specs_that_differ_only_in_type_or_sign_are_not_conflated(tmp_path: Path) -> None:
    # Equal in Python (0.0 == -0.0, 600 == 600.0) but not the same text: each keeps its own.
    path = tmp_path / "sites.toml"
    path.write_text(
        """
[[sites]]
site = "A"
name = "a"
admin = "420527"
lat = 30.0
lon = 110.0
policy = { hold_s = 0.0, velocity_per_day = { yellow = 3.0, red = 120.0 } }

[[sites.devices]]
device = "A-1"
channels = [
  { channel = "x", kind = "displacement", range = [-0.0, 5.0], interval_s = 600 },
  { channel = "y", kind = "displacement", range = [0.0, 5.0], interval_s = 600.0 },
]

[[sites.devices]]
device = "A-2"
channels = [
  { channel = "x", kind = "displacement", range = [0.0, 5.0], interval_s = 600.0 },
  { channel = "y", kind = "displacement", range = [-0.0, 5.0], interval_s = 600 },
]

[[sites]]
site = "B"
name = "b"
admin = "420527"
lat = 30.0
lon = 110.0
policy = { hold_s = -0.0, velocity_per_day = { yellow = 3.0, red = 120.0 } }

[[sites.devices]]
device = "B-1"
channels = [{ channel = "x", kind = "displacement", range = [-0.0, 5.0], interval_s = 600 }]
""",
        encoding="utf-8",
    )
    reg = load_registry(path)
    _assert_same_as_plain(reg, _plain(path))
    low = {(d, c): math.copysign(1.0, info.low) for (_, d), chans in reg.channels.items() for c, info in chans.items()}
    assert low == {("A-1", "x"): -1.0, ("A-1", "y"): 1.0, ("A-2", "x"): 1.0, ("A-2", "y"): -1.0, ("B-1", "x"): -1.0}
    assert math.copysign(1.0, reg.sites["A"].policy.hold_s) == 1.0
    assert math.copysign(1.0, reg.sites["B"].policy.hold_s) == -1.0
    # The same text is one spec: A-1.x and B-1.x. A-1.x and A-2.x (other sign, other type) are not.
    spec = {(d, c): info.spec for (_, d), chans in reg.channels.items() for c, info in chans.items()}
    assert spec[("A-1", "x")] is spec[("B-1", "x")]
    assert spec[("A-1", "x")] is not spec[("A-2", "x")]


def _doc_with_bad_channel() -> dict[str, Any]:
    doc = synthetic_sites(Template(devices_per_site=2), 6)
    doc["sites"][2]["devices"][1]["channels"][3]["unit"] = "mm"  # a battery channel in mm
    doc["sites"][0]["devices"][0]["channels"][0]["colour"] = "red"
    return doc


def test_problems_are_named_as_before() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_registry(_doc_with_bad_channel(), "sites.toml")
    assert [(p.file, p.key) for p in exc.value.problems] == [
        ("sites.toml", "sites[0].devices[0].channels[0].colour"),
        ("sites.toml", "sites[2].devices[1].channels[3].unit"),
    ]
    assert exc.value.problems[0].reason == "unknown key (check its spelling)"
    assert exc.value.problems[1].reason == "unit 'mm' is not a unit of kind battery (use one of V)"


def test_a_registry_pickles_as_its_sites_and_comes_back_the_same(tmp_path: Path) -> None:
    # A spawned worker receives the daemon's configuration pickled (service/worker.py).
    path = tmp_path / "sites.toml"
    path.write_text(sites_toml(synthetic_sites(Template(devices_per_site=5), 200)), encoding="utf-8")
    reg = load_registry(path)
    blob = pickle.dumps(reg)
    back = pickle.loads(blob)
    assert back.source == reg.source == str(path)
    _assert_same_as_plain(back, _plain(path))
    assert len({id(info.spec) for chans in back.channels.values() for info in chans.values()}) == len(Template().channels)
    # The lookups are rebuilt, not sent: far less than a ChannelInfo per channel.
    assert len(blob) < 200 * 4 * 100


def test_a_registry_built_from_sites_directly_pickles_too() -> None:
    reg = load_registry(example_path("sites.example.toml"))
    only = Registry([s for s in reg.sites.values() if s.admin == "420527"])
    back = pickle.loads(pickle.dumps(only))
    assert back.source == "<memory>"
    assert list(back.sites) == list(only.sites)
    assert back.device_site == only.device_site
    assert back.channels.keys() == only.channels.keys()


def test_a_spawned_process_gets_the_same_registry(tmp_path: Path) -> None:
    # As WorkerProcess starts the store and detection workers: spawned, the registry an argument.
    import multiprocessing as mp

    path = tmp_path / "sites.toml"
    path.write_text(sites_toml(synthetic_sites(Template(devices_per_site=5), 50)), encoding="utf-8")
    reg = load_registry(path)
    with mp.get_context("spawn").Pool(1) as pool:
        # getattr runs in the spawned process on the registry it unpickled; its answer comes back.
        device_site = pool.apply(getattr, (reg, "device_site"))
        channels = pool.apply(getattr, (reg, "channels"))
        source = pool.apply(getattr, (reg, "source"))
    assert source == str(path)
    assert device_site == reg.device_site
    assert channels.keys() == reg.channels.keys()
    for key, chans in reg.channels.items():
        assert [{f: getattr(i, f) for f in INFO_FIELDS} for i in channels[key].values()] == [{f: getattr(i, f) for f in INFO_FIELDS} for i in chans.values()]
