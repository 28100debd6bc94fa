"""A fresh-eyes attack on parked channels (commit 5dffb17, issue 17 item 1).

The claim under attack: parking a channel (its levels, verdicts, guard and detectors kept only
as the compressed text of its saved row) changes nothing but memory: every event, level and
saved or snapshot state is the same as a fusion's that never parks, live, in replay and across
restarts; a damaged parked text starts that one channel afresh and is reported.

What holds (tests that pass): a fuzzed two-site fleet of every channel kind (NaN, infinite
and -0.0 readings, spikes, duplicates and conflicting duplicates, readings out of order and
stamped ahead, drills, sensors reported faulty and cleared) parked after every reading; the
same fleet restarted from packed rows against one restarted from plain rows at the same
points, and under a registry that changed a channel's kind, removed a channel and a stage;
detection itself (real SQLite journals, ManualClock and EventClock, small batches) parking at
every save and crashing, against one that never parks and never stops; hostile ``z`` values
of every type; no memory left behind by a channel woken and parked again and again.

What breaks (tests named ``test_DEFECT_...`` FAIL on 5dffb17, each a defect):
- a parked text that decompresses to JSON nested deeply, or with a level of ``Infinity``,
  raises out of the reading (RecursionError, OverflowError) instead of starting the channel
  afresh; a level out of 0-4, or a forecast that is not a mapping, is taken, and fusion then
  raises (KeyError, AttributeError) on it: the worker dies at that reading after every restart;
- ``snapshot()`` of a channel restored parked under a registry that dropped one of its stages
  still shows the stage, where the same state restored unparked does not;
- ``saved_state()`` (diagnosis) raises on one damaged ``z`` instead of reporting it;
- a site's fusion wakes every parked sibling into its saved form, about twice the memory of
  the live channel it stands for, until the site's next save.
"""

from __future__ import annotations

import base64
import copy
import gc
import json
import math
import random
import tracemalloc
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from geowarn.config.registry import parse_registry
from geowarn.config.settings import example_path, load_all
from geowarn.core.clock import EventClock, ManualClock
from geowarn.detectors import compact
from geowarn.detectors.fusion import SiteFusion
from geowarn.ingest.journal import Journal, JournalReader
from geowarn.service import detection
from test_state_fuzz import _norm as _norm_detection

T0 = 1.7e9


# -- a fleet of every kind -----------------------------------------------------------------------


def _fleet() -> Any:
    """Two sites with a channel of every kind (thresholds on some, so that levels move)."""
    thr = {"yellow": 5, "orange": 10, "red": 20}
    devices = [
        ("D1", [{"channel": "disp", "kind": "displacement", "unit": "mm", "interval_s": 600, "thresholds": {"yellow": 40, "orange": 80, "red": 120}}]),
        ("D2", [{"channel": "crack", "kind": "crack", "unit": "mm", "interval_s": 600}]),
        ("G1", [{"channel": "e", "kind": "gnss_e", "unit": "mm", "interval_s": 600}, {"channel": "u", "kind": "gnss_u", "unit": "mm", "interval_s": 600}]),
        ("T1", [{"channel": "tx", "kind": "tilt", "unit": "mrad", "interval_s": 600}]),
        ("R1", [{"channel": "rain", "kind": "rain", "unit": "mm", "interval_s": 600}]),
        ("P1", [{"channel": "pp", "kind": "pore_pressure", "unit": "kPa", "interval_s": 600, "thresholds": {"yellow": 150, "orange": 200, "red": 250}}]),
        ("W1", [{"channel": "gw", "kind": "groundwater", "unit": "m", "interval_s": 600},
                {"channel": "mud", "kind": "mud_level", "unit": "m", "interval_s": 600},
                {"channel": "sp", "kind": "seepage_pressure", "unit": "kPa", "interval_s": 600}]),
        ("A1", [{"channel": "acc", "kind": "acceleration", "unit": "mg", "interval_s": 600, "thresholds": thr},
                {"channel": "vib", "kind": "vibration", "unit": "mm/s", "interval_s": 600, "thresholds": thr},
                {"channel": "st", "kind": "stress", "unit": "kPa", "interval_s": 600, "thresholds": thr},
                {"channel": "temp", "kind": "soil_temperature", "unit": "degC", "interval_s": 600},
                {"channel": "sm", "kind": "soil_moisture", "unit": "%", "interval_s": 600},
                {"channel": "bat", "kind": "battery", "unit": "V", "interval_s": 600},
                {"channel": "dd", "kind": "deep_displacement", "unit": "mm", "interval_s": 600}]),
    ]
    sites = []
    for name, prefix in (("S", ""), ("S2", "B")):
        sites.append({"site": name, "name": name, "admin": "420527", "lat": 30.0, "lon": 110.0,
                      "policy": {"velocity_per_day": {"blue": 1.0, "yellow": 3.0, "orange": 20.0, "red": 60.0}, "velocity_window_s": 21600, "hold_s": 7200},
                      "devices": [{"device": prefix + d, "channels": json.loads(json.dumps(c))} for d, c in devices]})
    _FLEET_SOURCE.clear()
    _FLEET_SOURCE.update({"sites": sites})
    return parse_registry(json.loads(json.dumps(_FLEET_SOURCE)), "<attack fleet>")


_FLEET_SOURCE: dict[str, Any] = {}


def _ops(reg: Any, seed: int, steps: int) -> list[tuple[Any, ...]]:
    """Readings (random walks whose rate changes now and then, rain bursts), with NaN, inf,
    -0.0 and spikes among them, gaps, duplicates (some conflicting), readings out of order and
    stamped minutes ahead of their arrival, drills, sensor states (faulty, cleared) and ticks."""
    rng = random.Random(seed)
    infos = [i for chans in reg.channels.values() for i in chans.values()]
    value = {id(i): 0.0 for i in infos}
    rate = {id(i): rng.choice([0.0, 0.0, 0.01, 0.05, 0.2, 1.0]) for i in infos}
    ops: list[tuple[Any, ...]] = []
    for k in range(steps):
        t = T0 + 600 * k
        if rng.random() < 0.01:
            for i in infos:
                rate[id(i)] = rng.choice([0.0, 0.01, 0.05, 0.2, 1.0, 3.0])
        for i in infos:
            if rng.random() < 0.05:
                continue
            kind = getattr(i.kind, "value", i.kind)
            if kind == "rain":
                v = rng.choice([0.0] * 8 + [0.2, 1.0, 5.0, 20.0])
            elif kind == "battery":
                v = 12.6 + rng.gauss(0, 0.01)
            else:
                value[id(i)] += rate[id(i)] * (1 + rng.gauss(0, 0.2)) + rng.gauss(0, 0.3)
                v = value[id(i)]
            r = rng.random()
            v = math.nan if r < 0.003 else math.inf if r < 0.006 else -0.0 if r < 0.009 else v + 1000.0 if r < 0.012 else v
            tt = t + rng.uniform(0, 5)
            arrived = tt + rng.uniform(0, 30)
            if rng.random() < 0.02:
                arrived = tt - rng.uniform(60, 400)  # stamped ahead: held
            if rng.random() < 0.01:
                tt -= 1200  # out of order
            ops.append(("r", i, tt, v, False, arrived))
            if rng.random() < 0.01:
                ops.append(("r", i, tt, v + rng.choice([0.0, 0.5]), False, arrived + 1))
            if rng.random() < 0.08:
                ops.append(("r", i, tt, v, True, arrived))
            if rng.random() < 0.004:
                ops.append(("s", i.site, i.device, {i.channel: rng.choice([-2, -1, 0, 0])}, tt))
        ops.append(("tick", t + 300))
    return ops


def _play(f: SiteFusion, ops: list[tuple[Any, ...]], *, park_each: bool = False, restart_at: frozenset[int] = frozenset(),
          packed: bool = True) -> tuple[SiteFusion, list[Any]]:
    """Feed ``ops``; ``park_each``: write the site's row after each reading; ``restart_at``: a
    new fusion restored from every site's row (``packed``) or plain ``site_state`` there."""
    out: list[Any] = []
    reg = f.registry
    for n, op in enumerate(ops):
        if n in restart_at:
            parts = [json.loads(f.site_row(s)) if packed else json.loads(json.dumps(f.site_state(s))) for s in reg.sites]
            g = SiteFusion(reg)
            g.park_after_s = f.park_after_s
            g.restore(SiteFusion.assemble(f.globals_state(), parts))
            f = g
        if op[0] == "r":
            _, info, t, v, ex, arrived = op
            out += f.update_all(info, t, v, ex, arrived)
            if park_each:
                f.site_row(info.site)
        elif op[0] == "s":
            f.sensor_state(op[1], op[2], op[3], op[4])
        else:
            out += f.tick(op[1])
    return f, out


def _norm(f: SiteFusion) -> dict[str, Any]:
    snap = f.snapshot()
    snap["nodata"].pop("start")
    return snap


def _levels_moved(events: list[Any]) -> set[int]:
    return {e.level for e in events if e.kind is None}


def test_a_fleet_of_every_kind_parked_after_every_reading_makes_the_same_events_and_state() -> None:
    reg = _fleet()
    ops = _ops(reg, 3, 260)
    ref, expected = _play(SiteFusion(reg), ops)
    f = SiteFusion(reg)
    f.park_after_s = 0.0
    f, got = _play(f, ops, park_each=True)
    assert {2, 3, 4} <= _levels_moved(expected), "the feed must move levels for the comparison to mean anything"
    assert sum(1 for op in ops if op[0] == "s") > 5 and sum(1 for op in ops if op[0] == "r" and op[4]) > 100
    assert got == expected
    assert _norm(f) == _norm(ref)
    assert f.unreadable == []
    # Every verdict's evidence survives JSON as it is (a tuple or a number key would not):
    # the parked fusion's events above carry round-tripped evidence of the channels woken.
    for st in ref._sites.values():
        for ch in st.channels.values():
            for v in ch.verdicts.values():
                assert json.loads(json.dumps(v.evidence)) == v.evidence or "nan" in json.dumps(v.evidence).lower()


def test_restarts_from_packed_rows_continue_as_restarts_from_plain_rows() -> None:
    """Both restart at the same readings (a restart's own effects, ``st.held``, the replay of
    what ``touched`` was, are then the same on both sides): only parking differs."""
    reg = _fleet()
    ops = _ops(reg, 11, 220)
    rng = random.Random(5)
    at = frozenset(rng.sample(range(len(ops)), 6))
    plain, expected = _play(SiteFusion(reg), ops, restart_at=at, packed=False)
    f = SiteFusion(reg)
    f.park_after_s = 0.0
    f, got = _play(f, ops, park_each=True, restart_at=at)
    assert {2, 3} <= _levels_moved(expected)
    assert got == expected
    assert _norm(f) == _norm(plain)
    assert f.unreadable == []


def _remapped(reg: Any, ops: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    out = []
    for op in ops:
        if op[0] == "r":
            info = reg.channel(op[1].site, op[1].device, op[1].channel)
            if info is not None:
                out.append((op[0], info, *op[2:]))
        else:
            out.append(op)
    return out


def test_under_a_changed_registry_packed_rows_continue_as_plain_rows() -> None:
    """Channels' kinds changed (a rain gauge now a groundwater gauge: its guard cannot restore,
    reported), a channel removed, a
    stage removed: restored from packed rows or from plain ones, the same events, the same
    reports, and (once every channel was read again) the same state."""
    reg = _fleet()
    ops = _ops(reg, 21, 200)
    half = len(ops) // 2
    f = SiteFusion(reg)
    f.park_after_s = 0.0
    f, _ = _play(f, ops[:half], park_each=True)
    packed = [json.loads(f.site_row(s)) for s in reg.sites]
    plain = [json.loads(json.dumps(SiteFusion.unpacked(json.loads(f.site_row(s))))) for s in reg.sites]
    raw = json.loads(json.dumps(_FLEET_SOURCE))
    s = raw["sites"][0]
    dev = {d["device"]: d for d in s["devices"]}
    dev["D2"]["channels"][0].update(kind="tilt", unit="mrad")
    dev["R1"]["channels"][0].update(kind="groundwater", unit="m")
    dev["W1"]["channels"] = [c for c in dev["W1"]["channels"] if c["channel"] != "gw"]
    dev["D1"]["channels"][0]["velocity_per_day"] = {}
    reg2 = parse_registry(raw, "<changed fleet>")
    a, b = SiteFusion(reg2), SiteFusion(reg2)
    a.park_after_s = 0.0
    a.restore(SiteFusion.assemble(f.globals_state(), packed))
    b.restore(SiteFusion.assemble(f.globals_state(), plain))
    rest = _remapped(reg2, ops[half:])
    a, got = _play(a, rest, park_each=True)
    b, expected = _play(b, rest)
    assert expected and got == expected
    assert a.unreadable == b.unreadable and any(u[1:3] == ("R1", "rain") for u in b.unreadable), b.unreadable
    assert _norm(a) == _norm(b)


# -- detection end to end ------------------------------------------------------------------------

TS = 1_700_000_000_000


def _a_round(rng: random.Random, step: int, keys: Any, ids: Any, value: dict[Any, float], devices: Any,
             late: bool = False) -> tuple[int, list[Any], list[Any]]:
    """One round of the attack's feed (also tests/test_spill_attack.py's): 1-6 ten-minute steps
    of readings, some missing, some stamped ahead of their arrival (held) and, with ``late``,
    some stamped up to an hour before (a backlog); spikes, drills, sensor-fault statuses; now
    and then a silence after. Returns (step, readings, statuses)."""
    readings: list[Any] = []
    statuses: list[Any] = []
    for _ in range(rng.randint(1, 6)):
        step += 1
        t = TS + step * 600_000
        for k in keys:
            if rng.random() < 0.15:
                continue
            v = value[k] + (0.05 * math.exp(step / 18.0) if k[0] == "BSH" and k[2] in ("disp", "disp_e") else rng.gauss(0.0, 0.5))
            value[k] = v
            drill = 1 if rng.random() < 0.1 else 0
            r = rng.random()
            stamped = t + rng.randint(10, 900) * 1000 if r < 0.08 else t - rng.randint(60, 3600) * 1000 if late and r < 0.11 else t
            readings.append((ids[k], stamped, v + (80.0 if rng.random() < 0.02 else 0.0) + 50 * drill, drill, t + 5_000))
        if rng.random() < 0.3:
            s, dv = rng.choice(devices)
            chans = [c for (a, b, c) in keys if a == s and b == dv]
            statuses.append((s, dv, t, t + 5_000, json.dumps({"sensor_state": {rng.choice(chans): rng.choice([-2, 0, 0])}}), rng.randint(0, len(readings))))
    if rng.random() < 0.15:
        step += rng.randint(3, 12)  # a silence
    return step, readings, statuses



def _detections(tmp: Path, seed: int, rounds: int, event_time: bool = False) -> tuple[list[str], Counter, Counter, int, int, set[int]]:
    """A detection parking at every save (park_after_s 0, sites saved after every step), crashed
    at random, against one that never parks (``park_after_s`` None) and never stops, each on a
    real journal of its own with the same rows (cf. tests/test_state_fuzz.py)."""
    rng = random.Random(seed)
    base = load_all(None, sites_path=example_path("sites.example.toml"), roster_path=example_path("roster.example.toml"), find_file=False)
    parking = copy.copy(base)
    parking.settings = base.settings.model_copy(update={"data_dir": tmp / "data", "park_after_s": 0.0})
    never = copy.copy(base)
    never.settings = base.settings.model_copy(update={"data_dir": tmp / "data_ref", "park_after_s": 1e18})
    j, jr = Journal(tmp / "journal.sqlite"), Journal(tmp / "reference.sqlite")
    clk: Any = EventClock(TS / 1000) if event_time else ManualClock(TS / 1000)
    clk_ref: Any = EventClock(TS / 1000) if event_time else ManualClock(TS / 1000)
    ids = {(c.site, c.device, c.channel): i for c, i in j.series_ids(base.registry).items()}
    assert ids == {(c.site, c.device, c.channel): i for c, i in jr.series_ids(base.registry).items()}
    keys = sorted(ids)
    devices = sorted({(s, d) for s, d, _ in keys})
    value = {k: 0.0 for k in keys}
    said: dict[str, list[Any]] = {"ref": [], "test": []}
    parked_seen = [0]

    def build(who: str) -> detection.Detection:
        def log_change(change: Any, event: Any) -> None:
            said[who].append((change.site, round(change.t, 3), change.level, change.previous, change.kind, change.exercise, change.reason))

        plain = detection.Detection.__dict__["_log_change"]
        detection.Detection._log_change = staticmethod(log_change)  # type: ignore[method-assign]
        try:
            d = detection.Detection(never if who == "ref" else parking, jr if who == "ref" else j, lambda *a, **k: None,
                                    clk_ref if who == "ref" else clk)
        finally:
            detection.Detection._log_change = plain  # type: ignore[method-assign]
        if who == "ref":
            d.fusion.park_after_s = None  # never, not even a channel never judged
        else:
            d.save_after_s = 0.0
        return d

    ref, det = build("ref"), build("test")
    det.save_snapshot(None)
    step = crashes = 0
    for _ in range(rounds):
        step, readings, statuses = _a_round(rng, step, keys, ids, value, devices)
        now = (TS + step * 600_000 + 5_000) / 1000
        j.append(readings, statuses=statuses)
        jr.append(readings, statuses=statuses)
        if not event_time:
            clk_ref.set(max(clk_ref.now(), now))
            clk.set(max(clk.now(), now))
        while ref.step():
            pass
        ref.step()
        while True:
            n = det.step()
            det.save_sites(None)
            parked_seen[0] = max(parked_seen[0], sum(ch.text is not None for st in det.fusion._sites.values() for ch in st.channels.values()))
            if rng.random() < 0.1:
                crashes += 1
                det = build("test")
            if n == 0:
                break
        if rng.random() < 0.35:
            crashes += 1
            det = build("test")
            while det.step():
                pass
            det.step()
    for d in (det, ref):
        while d.step():
            pass
        d.step()

    a, b = _norm_detection(det), _norm_detection(ref)
    problems = [] if a == b else [k for k in sorted(set(a["sites"]) | set(b["sites"])) if a["sites"].get(k) != b["sites"].get(k)] or ["(outside sites)"]
    test, reference = Counter(said["test"]), Counter(said["ref"])
    ref_parked = sum(ch.text is not None for st in ref.fusion._sites.values() for ch in st.channels.values())
    j.close()
    jr.close()
    levels = {e[2] for e in said["ref"] if e[4] is None and not e[5]}
    return problems, test - reference, reference - test, crashes, parked_seen[0] - ref_parked, levels


@pytest.mark.parametrize("seed,event_time", [(0, False), (4, False), (13, False), (31, False), (1, True), (5, True)])
def test_detection_parking_at_every_save_and_crashing_ends_as_one_that_never_parks_nor_stops(tmp_path: Path, seed: int, event_time: bool) -> None:
    problems, twice, missing, crashes, parked, levels = _detections(tmp_path, seed, rounds=30, event_time=event_time)
    assert crashes > 5 and parked > 30, (crashes, parked)
    assert {2, 3, 4} <= levels, levels
    assert not problems, problems[:5]
    assert not twice, f"announced twice: {list(twice)[:3]}"
    assert not missing, f"never announced: {list(missing)[:3]}"


def test_detection_parking_with_small_batches_crashing_between_them_ends_as_one_that_never_parks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detection, "BATCH", 9)  # crashes fall between the batches of a round
    problems, twice, missing, crashes, parked, levels = _detections(tmp_path, 3, rounds=20)
    assert crashes > 5 and parked > 30 and 4 in levels, (crashes, parked, levels)
    assert not problems and not twice and not missing, (problems[:3], list(twice)[:2], list(missing)[:2])


# -- damaged and hostile rows --------------------------------------------------------------------


def _two_channels(velocity: bool = True) -> Any:
    ch: dict[str, Any] = {"channel": "d", "kind": "displacement", "interval_s": 600}
    if not velocity:
        ch["velocity_per_day"] = {}
    site = {"site": "S", "name": "s", "admin": "420527", "lat": 30.0, "lon": 110.0,
            "devices": [{"device": "X1", "channels": [ch]}, {"device": "X2", "channels": [dict(ch)]}]}
    return parse_registry({"sites": [site]}, "<two channels>")


def _moving(reg: Any, steps: int = 400) -> SiteFusion:
    """Two extensometers at 20 mm/day for ``steps`` readings: velocity at yellow on both."""
    f = SiteFusion(reg)
    f.park_after_s = 0.0
    for i in range(steps):
        for dev in ("X1", "X2"):
            f.update_all(reg.channel("S", dev, "d"), T0 + 600 * i, 20.0 * i / 144, False, T0 + 600 * i)
    return f


def _z(body: Any) -> str:
    return base64.b64encode(zlib.compress(body if isinstance(body, bytes) else json.dumps(body).encode())).decode()


def _with_x1(f: SiteFusion, z: Any) -> tuple[SiteFusion, dict[str, Any]]:
    """A fusion restored from ``f``'s row, X1's ``z`` replaced by ``z``."""
    part = json.loads(f.site_row("S"))
    part["sites"]["S|0"]["channels"]["X1/d"]["z"] = z
    g = SiteFusion(f.registry)
    g.restore(SiteFusion.assemble(f.globals_state(), [part]))
    return g, part


def _read_both(g: SiteFusion, step: int = 400) -> None:
    for dev in ("X1", "X2"):
        g.update_all(g.registry.channel("S", dev, "d"), T0 + 600 * step, 20.0 * step / 144, False, T0 + 600 * step)


@pytest.mark.parametrize("z", [5, None, ["a"], {"z": 1}, "é", "", "%%%", base64.b64encode(b"garbage").decode(),
                               _z(b"null"), _z(b"[1, 2]"), _z(b'{"levels": {}}'), _z(b"\xff\xfe"),
                               _z({"levels": {"velocity": "x"}, "verdicts": {}, "guard": {}, "detectors": {}}),
                               _z({"levels": {}, "verdicts": {"velocity": {"level": 7, "reason": "", "evidence": {}, "warming_up": False}}, "guard": {}, "detectors": {}}),
                               _z({"levels": {}, "verdicts": {"velocity": {"level": 1, "reason": "", "evidence": 5, "warming_up": False}}, "guard": {}, "detectors": {}})],
                         ids=["int", "None", "list", "dict", "non-ascii", "empty", "not-base64", "not-zlib", "json-null", "json-list",
                              "no-guard", "not-utf8", "level-not-a-number", "verdict-level-7", "evidence-not-a-mapping"])
def test_a_hostile_z_starts_only_that_channel_afresh_reported_and_the_other_continues_exactly(z: Any) -> None:
    reg = _two_channels()
    f = _moving(reg)
    g, _ = _with_x1(f, z)
    _read_both(g)
    _read_both(f)
    assert [(u[1], u[2], u[3]) for u in g.unreadable][:1] == [("X1", "d", "parked")], g.unreadable
    fresh = SiteFusion(reg)
    fresh.update_all(reg.channel("S", "X1", "d"), T0 + 600 * 400, 20.0 * 400 / 144, False, T0 + 600 * 400)
    x1 = g.site_state("S")["sites"]["S|0"]["channels"]["X1/d"]
    assert x1["detectors"] == fresh.site_state("S")["sites"]["S|0"]["channels"]["X1/d"]["detectors"]
    assert g.site_state("S")["sites"]["S|0"]["channels"]["X2/d"] == f.site_state("S")["sites"]["S|0"]["channels"]["X2/d"]


@pytest.mark.parametrize("body", ["deep", "infinite-level"])
def test_DEFECT_a_parked_text_that_reads_but_cannot_be_a_channel_starts_it_afresh_instead_of_raising(body: str) -> None:
    """FAILS on 5dffb17: ``_wake`` catches the errors of decoding, not RecursionError (JSON
    nested past the interpreter's limit: a few hundred compressed bytes) nor OverflowError
    (``int(Infinity)`` of a level). Either is raised out of the reading that wakes the channel:
    the detection worker dies, and dies again at the same reading after every restart."""
    reg = _two_channels()
    f = _moving(reg)
    text: Any = b"[" * 100_000 if body == "deep" else {"levels": {"velocity": math.inf}, "verdicts": {}, "guard": {}, "detectors": {}}
    g, _ = _with_x1(f, _z(text))
    _read_both(g)  # raises on 5dffb17
    assert [(u[1], u[3]) for u in g.unreadable] == [("X1", "parked")]


@pytest.mark.parametrize("damage", ["level-9", "forecast-not-a-mapping"])
def test_DEFECT_a_parked_text_fusion_cannot_use_is_refused_when_woken(damage: str) -> None:
    """FAILS on 5dffb17: ``_wake`` takes ``levels`` through ``int()`` only; a level of 9 for a
    stage still warming up after the restart becomes the channel's level, and ``_fuse`` raises
    KeyError naming it (verdicts are checked 0-4 by ``Verdict``; levels are not). A forecast
    verdict whose evidence "forecast" is not a mapping makes ``_fuse`` raise AttributeError.
    (The same content in an old, unpacked row fails the same way: the check belongs where both
    are read.)"""
    reg = _two_channels()
    f = _moving(reg)
    part = json.loads(f.site_row("S"))
    body = json.loads(zlib.decompress(base64.b64decode(part["sites"]["S|0"]["channels"]["X1/d"]["z"])))
    if damage == "level-9":
        body["levels"]["tangent"] = 9  # a stage the channel has, that judges nothing on the next reading
    else:
        body["verdicts"]["forecast"] = {"level": 0, "reason": "", "evidence": {"forecast": "soon"}, "warming_up": False}
    g, _ = _with_x1(f, _z(body))
    _read_both(g)  # raises KeyError: 9 / AttributeError on 5dffb17
    assert g.level("S") <= 4
    assert [(u[1], u[3]) for u in g.unreadable] == [("X1", "parked")]


def test_DEFECT_snapshot_of_a_channel_restored_parked_under_a_smaller_registry_drops_the_stage_it_no_longer_has() -> None:
    """FAILS on 5dffb17: the same state restored unparked (an old row, or ``site_state``) drops a
    stage the registry no longer gives the channel; restored parked, ``snapshot()`` (and every
    ``site_row`` until the channel's next reading) still carries its detector, level and
    verdict: ``_site_json(packed=False)`` opens the text without ``_wake``'s filter."""
    f = _moving(_two_channels(True))
    packed = json.loads(f.site_row("S"))
    plain = json.loads(json.dumps(f.site_state("S")))
    smaller = _two_channels(False)  # no velocity any more
    a, b = SiteFusion(smaller), SiteFusion(smaller)
    a.restore(SiteFusion.assemble(f.globals_state(), [packed]))
    b.restore(SiteFusion.assemble(f.globals_state(), [plain]))
    assert "velocity" not in b.snapshot()["sites"]["S|0"]["channels"]["X1/d"]["detectors"]
    assert a.snapshot() == b.snapshot()


def test_DEFECT_saved_state_reports_one_damaged_parked_channel_and_opens_the_rest(tmp_path: Path) -> None:
    """FAILS on 5dffb17: ``saved_state`` (the diagnosis path) opens every ``z`` with
    ``SiteFusion.unpacked``, which raises zlib.error on one damaged channel, so nothing of the
    saved state can be read. The restore itself starts that channel afresh and reports it."""
    loaded = load_all(None, sites_path=example_path("sites.example.toml"), roster_path=example_path("roster.example.toml"), find_file=False)
    loaded.settings = loaded.settings.model_copy(update={"data_dir": tmp_path / "data"})
    j = Journal(tmp_path / "journal.sqlite")
    ids = {(c.site, c.device, c.channel): i for c, i in j.series_ids(loaded.registry).items()}
    rows = [(sid, TS + 600_000 * k, float(k), 0, TS + 600_000 * k + 5_000) for k in range(1, 20) for sid in ids.values()]
    j.append(rows)
    det = detection.Detection(loaded, j, lambda *a, **k: None, ManualClock(TS / 1000 + 20 * 600))
    det.resume()
    while det.step():
        pass
    det.save_snapshot(None)
    site, pos, spos, body = next(r for r in j.site_states() if r[0] == "BSH")
    part = json.loads(body)
    chans = part["sites"]["BSH|0"]["channels"]
    key = min(chans)
    chans[key]["z"] = base64.b64encode(b"damaged on disk").decode()
    j.save_site_states([(site, pos, spos, json.dumps(part))])
    j.close()
    saved = detection.saved_state(JournalReader(tmp_path / "journal.sqlite"))  # raises on 5dffb17
    assert saved is not None and {"BSH|0", "BZM|0", "XK|0"} <= set(saved["state"]["sites"])


# -- memory --------------------------------------------------------------------------------------


def _gnss_site(devices: int) -> Any:
    chans = [{"channel": c, "kind": k, "unit": "mm", "interval_s": 600} for c, k in (("e", "gnss_e"), ("n", "gnss_n"), ("u", "gnss_u"))]
    devs = [{"device": "EXT", "channels": [{"channel": "disp", "kind": "displacement", "unit": "mm", "interval_s": 600,
                                            "thresholds": {"yellow": 40, "orange": 80, "red": 120}}]}]
    devs += [{"device": f"G{i}", "channels": json.loads(json.dumps(chans))} for i in range(devices)]
    site = {"site": "S", "name": "s", "admin": "420527", "lat": 30.0, "lon": 110.0, "devices": devs}
    return parse_registry({"sites": [site]}, "<gnss site>")


def _week(reg: Any, f: SiteFusion, seed: int = 1, steps: int = 1008) -> None:
    rng = random.Random(seed)
    infos = [i for chans in reg.channels.values() for i in chans.values()]
    for k in range(steps):
        t = T0 + 600 * k
        for info in infos:
            v = 39.0 * k / steps if info.device == "EXT" else round(rng.gauss(0, 0.5), 2)  # EXT creeps up to below yellow
            f.update_all(info, t + rng.random(), v, False, t + 1.0)


def _traced(build: Any) -> tuple[Any, int]:
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    obj = build()
    compact._ZIPPED.clear()
    gc.collect()
    return obj, tracemalloc.get_traced_memory()[0] - before


def test_a_channel_woken_and_parked_again_and_again_leaves_nothing_behind() -> None:
    reg = _gnss_site(4)
    f = SiteFusion(reg)
    f.park_after_s = 0.0
    _week(reg, f, steps=300)
    f.site_row("S")
    infos = [i for chans in reg.channels.values() for i in chans.values()]
    tracemalloc.start()
    try:
        sizes = []
        for k in range(300, 360):
            for info in infos:
                f.update_all(info, T0 + 600 * k, 0.1, False, T0 + 600 * k + 1)
            f.site_row("S")
            if k in (310, 359):
                compact._ZIPPED.clear()
                gc.collect()
                sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert all(ch.text is not None for st in f._sites.values() for ch in st.channels.values())
    assert sizes[1] - sizes[0] < 200 * len(infos), sizes  # no growth per cycle beyond noise


def test_DEFECT_a_sites_fusion_waking_its_parked_channels_costs_no_more_than_never_parking() -> None:
    """FAILS on 5dffb17: ``_fuse`` needs only the channels' levels and verdicts, but ``_wake``
    parses each parked sibling's whole body into its saved form (guard and detectors as parsed
    JSON), about twice the memory of the live channel it stands for, and it stays so until the
    site's next save (or the channel's next reading). One extensometer crossing its threshold
    then makes a site of parked GNSS receivers cost more than the same site never parked.
    Proposed: ``_fuse`` reads levels and verdicts from the text and leaves the channel parked
    (its text is still exact: nothing of it changed)."""
    reg = _gnss_site(4)
    ext = reg.channel("S", "EXT", "disp")
    tracemalloc.start()
    try:
        never, live = _traced(lambda: (_week(reg, f := SiteFusion(reg)), f)[1])
        never.update_all(ext, T0 + 600 * 1008, 40.5, False, T0 + 600 * 1008 + 1)  # its threshold at yellow: the site's fusion runs
        del never
        gc.collect()

        def parked_then_fused() -> SiteFusion:
            f = SiteFusion(reg)
            _week(reg, f)
            f.park_after_s = 0.0
            f.site_row("S")
            f.update_all(ext, T0 + 600 * 1008, 40.5, False, T0 + 600 * 1008 + 1)
            return f

        woken, cost = _traced(parked_then_fused)
    finally:
        tracemalloc.stop()
    assert woken.level("S") == 2 and woken._sites[("S", False)].channels["EXT/disp"].levels["threshold"] == 2
    assert cost <= live, f"a parked site after its fusion ran: {cost} B; never parked: {live} B"
