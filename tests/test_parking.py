"""Parked channels (issue 17 item 1): a channel not heard from keeps its detectors as the
compressed text of its saved row, and that changes nothing but memory.

The reference is a fusion that never parks, fed the same readings: every event and the final
state must be the same when every channel is parked after every message, and when the state
is saved in rows and restored in the middle.
"""

from __future__ import annotations

import base64
import gc
import json
import random
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from geowarn.config.registry import parse_registry
from geowarn.detectors import compact, fusion
from geowarn.detectors.fusion import SiteFusion
from geowarn.simulators.engine import Simulation
from geowarn.simulators.scenario import load_scenario


def _readings(name: str, days: float | None = None) -> tuple[Any, list[tuple[Any, float, float, float | None, bool]]]:
    """A bundled scenario's readings as fusion takes them: (info, t, value, arrived, drill).
    Arrivals are late by up to a minute, now and then early by two to ten minutes (a clock
    ahead: fusion holds those); one reading in twenty is also judged as a drill's."""
    sc = load_scenario(name)
    reg = sc.registry()
    sim = Simulation(sc, reg, duration_s=None if days is None else days * 86400.0)
    rng = random.Random(name)
    out = []
    for m in sim.emit_until(sim.t_end) + sim.flush():
        for ch, t, v in m.rows:
            info = reg.channel(m.site, m.device_code, ch)
            if info is None:  # a channel the faults scenario sends unregistered: the store's business
                continue
            t = float(t)
            arrived = t - rng.uniform(120.0, 600.0) if rng.random() < 0.02 else t + rng.uniform(0.0, 60.0)
            out.append((info, t, float(v), arrived, rng.random() < 0.05))
    return reg, out


def _events(f: SiteFusion, rows: list[Any], park: int = 0, start: int = 0, stop: int | None = None,
            after: Callable[[int], None] | None = None) -> list[Any]:
    """Feed ``rows``; with ``park``, write the site's row after every ``park``-th reading (which
    parks every channel of the site if ``park_after_s`` is 0; spills them with a ``_Rows``);
    ``after(i)``: called after the ``i``-th reading's (tests/test_live_budget.py)."""
    out = []
    for i, (info, t, v, arrived, drill) in enumerate(rows[start:stop]):
        out += f.update_all(info, t, v, False, arrived)
        if drill:
            out += f.update_all(info, t, v, True, arrived)
        out += f.tick(arrived)
        f.park_judged()  # (with ``eager``, as detection after each batch at the head)
        if park and i % park == 0:
            _save(f, info.site)
        if after is not None:
            after(i)
    return out


class _Rows(dict[str, str]):
    """The sites' saved rows and their channels' texts, as the journal's ``site_state`` and
    ``channel_state`` tables keep them for detection (service/detection.py): what a spilling
    fusion reads its parked channels back from."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: dict[tuple[str, str], bytes] = {}

    def text(self, site: str, key: str) -> bytes | None:
        return self.texts.get((site, key))

    def attach(self, f: SiteFusion) -> SiteFusion:
        f.text_source = self.text
        return f


def _save(f: SiteFusion, site: str) -> str:
    """Write a site's row, as detection's save does: its channels' texts apart, into the rows
    a spilling fusion reads back from (then spilled), else only made."""
    rows = getattr(f.text_source, "__self__", None)
    if not isinstance(rows, _Rows):
        return f.site_row(site)
    text, texts = f.site_rows(site)
    rows[site] = text
    rows.texts.update(((site, key), t) for key, t in texts)
    f.spill([site])
    return text


def _spilled(f: SiteFusion) -> list[Any]:
    return [ch for st in f._sites.values() for ch in st.channels.values() if ch.text is fusion._SPILLED]


def _norm(f: SiteFusion) -> dict[str, Any]:
    snap = f.snapshot()
    snap["nodata"].pop("start")
    return snap


@pytest.mark.parametrize("spill", [False, True], ids=["parked", "spilled"])
@pytest.mark.parametrize("name,days,every", [("failure", None, 16), ("faults", None, 1), ("storm", 2.0, 1), ("cn_failure", 6.0, 1)])
def test_parking_channels_again_and_again_changes_no_event_and_no_state(name: str, days: float | None, every: int, spill: bool) -> None:
    reg, rows = _readings(name, days)
    ref, parked = SiteFusion(reg), SiteFusion(reg)
    parked.park_after_s = 0.0
    if spill:
        _Rows().attach(parked)
        parked.eager = every > 1  # parked as judged too, between the saves
    wakes = []
    wake = parked._wake
    parked._wake = lambda ch, bank=True: (wakes.append(ch.info), wake(ch, bank))[1]  # type: ignore[method-assign]
    expected = _events(ref, rows)
    got = _events(parked, rows, park=every)
    assert len(wakes) > len(rows) / every / 2, "channels were parked and unparked again and again"
    assert len(expected) > 3, "the scenario must make events for the comparison to mean anything"
    assert got == expected
    assert _norm(parked) == _norm(ref)
    assert parked.unreadable == []
    # And it did park: every channel is parked after its site's row was written.
    for site in reg.sites:
        _save(parked, site)
    chans = [ch for st in parked._sites.values() for ch in st.channels.values()]
    assert chans and all(ch.text is not None and ch.guard is None for ch in chans)
    # Spilled, their texts are in the rows only, and a look at the state leaves them so.
    assert len(_spilled(parked)) == (len(chans) if spill else 0)
    assert _norm(parked) == _norm(ref)
    assert len(_spilled(parked)) == (len(chans) if spill else 0)
    if name == "failure":
        assert max(e.level for e in expected) == 4  # the slope fails: red, with its forecast


def test_rows_written_with_parked_channels_restore_mid_stream_and_continue_exactly() -> None:
    reg, rows = _readings("failure")
    ref = SiteFusion(reg)
    half = len(rows) * 3 // 4  # the slope is accelerating: forecasts and latches are live
    expected_after = _events(ref, rows, stop=half)
    expected_after = _events(ref, rows, start=half)
    a = SiteFusion(reg)
    a.park_after_s = 600.0  # some channels parked, some live, when the rows are written
    _events(a, rows, stop=half)
    texts = [a.site_row(site) for site in reg.sites]
    parts = [json.loads(x) for x in texts]
    zs = [cd for p in parts for sd in p["sites"].values() for cd in sd["channels"].values()]
    assert zs and all(set(cd) == {"level", "suspect", "z"} for cd in zs)
    b = SiteFusion(reg)
    b.restore(SiteFusion.assemble(a.globals_state(), parts))
    assert all(ch.text is not None for st in b._sites.values() for ch in st.channels.values())
    assert _events(b, rows, start=half) == expected_after
    assert _events(a, rows, start=half) == expected_after
    assert _norm(b) == _norm(ref) == _norm(a)
    # unpacked() opens the rows into what site_state gives (the diagnosis path, saved_state).
    c = SiteFusion(reg)
    _events(c, rows, stop=half)
    assert [SiteFusion.unpacked(json.loads(c.site_row(s))) for s in reg.sites] == [c.site_state(s) for s in reg.sites]


def test_spilled_rows_restore_mid_stream_without_their_texts_and_continue_exactly() -> None:
    """A restart restores spilled channels from the rows, which hold no texts (a national
    fleet's would all be in memory at once), and reads each text back when it is needed."""
    reg, rows = _readings("failure")
    ref = SiteFusion(reg)
    half = len(rows) * 3 // 4
    _events(ref, rows, stop=half)
    expected_after = _events(ref, rows, start=half)
    saved = _Rows()
    a = saved.attach(SiteFusion(reg))
    a.park_after_s, a.eager = 600.0, True  # ten-minute channels parked as judged, the rest at the saves
    _events(a, rows, stop=half, park=7)
    for site in reg.sites:
        _save(a, site)
    parts = [json.loads(saved[site]) for site in reg.sites]
    assert all(set(cd) == {"level", "suspect", "t"} for p in parts for sd in p["sites"].values() for cd in sd["channels"].values())
    at_half, texts_at_half, globals_at_half = dict(saved), dict(saved.texts), a.globals_state()
    b = saved.attach(SiteFusion(reg))
    b.restore(SiteFusion.assemble(a.globals_state(), parts))
    assert len(_spilled(b)) == sum(len(st.channels) for st in b._sites.values()) > 10
    b.park_after_s, b.eager = 600.0, True
    assert _events(b, rows, start=half, park=5) == expected_after
    assert _norm(b) == _norm(ref) and b.unreadable == []
    # A row at a time (what detection's start does: restore_parts), the same as all at once.
    for how in ("parts", "assembled"):
        again = _Rows()
        again.update(at_half)
        again.texts.update(texts_at_half)
        c = again.attach(SiteFusion(reg))
        if how == "parts":
            c.restore_parts(globals_at_half, (json.loads(again[site]) for site in reg.sites))
        else:
            c.restore(SiteFusion.assemble(globals_at_half, [json.loads(again[site]) for site in reg.sites]))
        assert len(_spilled(c)) == sum(len(st.channels) for st in c._sites.values()) > 10, how
        c.park_after_s = 600.0
        assert _events(c, rows, start=half) == expected_after, how
        assert _norm(c) == _norm(ref) and c.unreadable == [], how


def test_a_spilled_channel_whose_text_is_gone_or_damaged_starts_afresh_and_is_reported() -> None:
    reg = _two_channel_registry(True)
    saved = _Rows()
    f = saved.attach(SiteFusion(reg))
    f.park_after_s = 0.0
    t0 = 1.7e9
    for i in range(300):
        for dev in ("X1", "X2"):
            f.update_all(reg.channel("S", dev, "d"), t0 + 600 * i, 20.0 * i / 144, False, t0 + 600 * i)
    _save(f, "S")
    assert len(_spilled(f)) == 2 and set(saved.texts) == {("S", "0:X1/d"), ("S", "0:X2/d")}
    level = f.level("S")
    assert level >= 1  # the velocity stands at a level: a channel afresh shows
    t = t0 + 600 * 300
    good = saved.texts[("S", "0:X2/d")]

    def source(damage: bytes | None) -> Any:
        def text(site: str, key: str) -> bytes | None:
            if key == "0:X1/d" and damage == b"raise":
                raise ValueError("a damaged page")  # what the journal's read may raise
            return damage if key == "0:X1/d" else good
        return text

    for damage, why in [(None, "gone"), (b"not zlib", "error"), (zlib.compress(b'{"levels": {'), "JSONDecodeError"), (b"raise", "damaged page")]:
        g = SiteFusion(reg)
        g.text_source = source(damage)
        g.restore(SiteFusion.assemble(f.globals_state(), [json.loads(saved["S"])]))
        g.update_all(reg.channel("S", "X1", "d"), t, 20.0 * 300 / 144, False, t)  # no exception: reported
        assert [(u[1], u[3]) for u in g.unreadable] in ([("X1", "spilled")], [("X1", "parked")]), damage
        assert why in g.unreadable[0][4], (why, g.unreadable)
        fresh = SiteFusion(reg)
        fresh.update_all(reg.channel("S", "X1", "d"), t, 20.0 * 300 / 144, False, t)
        got = g.site_state("S")["sites"]["S|0"]["channels"]
        assert got["X1/d"]["detectors"] == fresh.site_state("S")["sites"]["S|0"]["channels"]["X1/d"]["detectors"]
        assert got["X2/d"] == f.site_state("S")["sites"]["S|0"]["channels"]["X2/d"]  # the other one as saved
    # The texts as saved give both back: no report, and the level goes on from where it was.
    h = saved.attach(SiteFusion(reg))
    h.restore(SiteFusion.assemble(f.globals_state(), [json.loads(saved["S"])]))
    h.update_all(reg.channel("S", "X1", "d"), t, 20.0 * 300 / 144, False, t)
    assert h.unreadable == [] and h.level("S") == level and len(_spilled(h)) == 1
    # Rows with their texts apart, restored without them (no text_source): afresh, reported.
    k = SiteFusion(reg)
    k.restore(SiteFusion.assemble(f.globals_state(), [json.loads(saved["S"])]))
    assert sorted((u[1], u[3]) for u in k.unreadable) == [("X1", "spilled"), ("X2", "spilled")]


def _two_channel_registry(velocity: bool) -> Any:
    ch = {"channel": "d", "kind": "displacement", "interval_s": 600}
    if not velocity:
        ch["velocity_per_day"] = {}
    site = {"site": "S", "name": "s", "admin": "420527", "lat": 30.0, "lon": 110.0,
            "devices": [{"device": "X1", "channels": [ch]}, {"device": "X2", "channels": [dict(ch)]}]}
    return parse_registry({"sites": [site]}, "<test>")


def test_a_damaged_parked_text_starts_that_channel_afresh_and_is_reported() -> None:
    reg = _two_channel_registry(True)
    f = SiteFusion(reg)
    f.park_after_s = 0.0
    for i in range(300):
        for dev in ("X1", "X2"):
            f.update_all(reg.channel("S", dev, "d"), 1.7e9 + 600 * i, 0.5 * i, False, 1.7e9 + 600 * i)
    part = json.loads(f.site_row("S"))
    chans = part["sites"]["S|0"]["channels"]
    good = chans["X1/d"]["z"]
    chans["X1/d"]["z"] = base64.b64encode(zlib.compress(b'{"levels": {')).decode()  # truncated JSON
    chans["X2/d"]["z"] = base64.b64encode(b"not zlib at all").decode()
    g = SiteFusion(reg)
    g.restore(SiteFusion.assemble(f.globals_state(), [part]))
    g.update_all(reg.channel("S", "X1", "d"), 1.7e9 + 600 * 300, 150.0, False, 1.7e9 + 600 * 300)
    g.update_all(reg.channel("S", "X2", "d"), 1.7e9 + 600 * 300, 150.0, False, 1.7e9 + 600 * 300)
    assert [(u[1], u[3]) for u in g.unreadable] == [("X1", "parked"), ("X2", "parked")]
    assert all("Error" in u[4] for u in g.unreadable)
    fresh = SiteFusion(reg)
    fresh.update_all(reg.channel("S", "X1", "d"), 1.7e9 + 600 * 300, 150.0, False, 1.7e9 + 600 * 300)
    assert g.site_state("S")["sites"]["S|0"]["channels"]["X1/d"]["detectors"] == fresh.site_state("S")["sites"]["S|0"]["channels"]["X1/d"]["detectors"]
    # A text that would inflate to more than a channel's body ever is (a hand-made row): refused.
    chans["X1/d"]["z"] = good
    chans["X2/d"]["z"] = base64.b64encode(zlib.compress(b" " * (80 << 20), 9)).decode()
    bomb = SiteFusion(reg)
    bomb.restore(SiteFusion.assemble(f.globals_state(), [part]))
    bomb.update_all(reg.channel("S", "X2", "d"), 1.7e9 + 600 * 300, 150.0, False, 1.7e9 + 600 * 300)
    assert [(u[1], u[3]) for u in bomb.unreadable] == [("X2", "parked")] and "inflates past" in bomb.unreadable[0][4]
    # A row that is not even base64: reported at the restore, the channel fresh as well.
    part["sites"]["S|0"]["channels"]["X1/d"]["z"] = "%%%"
    h = SiteFusion(reg)
    h.restore(SiteFusion.assemble(f.globals_state(), [part]))
    assert h.unreadable and h.unreadable[0][1:4] == ("X1", "d", "parked")


def test_a_parked_channel_restored_under_a_registry_without_its_velocity_drops_it() -> None:
    reg = _two_channel_registry(True)
    f = SiteFusion(reg)
    f.park_after_s = 0.0
    for i in range(400):  # 20 mm/day: velocity at a level, and verdicts for every stage
        f.update_all(reg.channel("S", "X1", "d"), 1.7e9 + 600 * i, 20.0 * i / 144, False, 1.7e9 + 600 * i)
    row = json.loads(f.site_row("S"))
    assert "velocity" in SiteFusion.unpacked(json.loads(json.dumps(row)))["sites"]["S|0"]["channels"]["X1/d"]["detectors"]
    reg2 = _two_channel_registry(False)
    g = SiteFusion(reg2)
    g.restore(SiteFusion.assemble(f.globals_state(), [row]))
    g.update_all(reg2.channel("S", "X1", "d"), 1.7e9 + 600 * 400, 20.0 * 400 / 144, False, 1.7e9 + 600 * 400)
    cd = g.site_state("S")["sites"]["S|0"]["channels"]["X1/d"]
    assert "velocity" not in cd["detectors"] and "velocity" not in cd["levels"] and "velocity" not in cd["verdicts"]
    assert g.unreadable == []


def test_a_parked_channel_costs_a_fraction_of_a_live_one() -> None:
    """Live bytes of a week of ten-minute GNSS and battery readings, live against parked
    (tracemalloc: the objects themselves, not the process's RSS)."""
    import tomllib

    from geowarn.simulators.scenario import Template, sites_toml, synthetic_sites

    reg = parse_registry(tomllib.loads(sites_toml(synthetic_sites(Template(devices_per_site=5, admin="420527"), 10))), "<fleet>")
    infos = [info for chans in reg.channels.values() for info in chans.values()]
    rng = random.Random(1)

    def fed(steps: int) -> SiteFusion:
        f = SiteFusion(reg)
        for k in range(steps):
            t = 1.7e9 + 600 * k
            for info in infos:
                v = 12.6 + rng.gauss(0, 0.01) if info.channel == "battery" else rng.gauss(0, 0.5)
                f.update_all(info, t + rng.random(), round(v, 2), False, t + 1.0)
        return f

    fed(20)  # the shared parameter tables and caches, which no channel pays for
    gc.collect()
    tracemalloc.start()
    f = fed(1008)
    gc.collect()
    live = tracemalloc.get_traced_memory()[0] / len(infos)
    f.park_after_s = 0.0
    for site in reg.sites:
        f.site_row(site)
    compact._ZIPPED.clear()  # the packer's bounded cache (at most ~150 KB for the whole fleet)
    gc.collect()
    parked = tracemalloc.get_traced_memory()[0] / len(infos)
    saved = _Rows()
    saved.attach(f)
    for site in reg.sites:
        _save(f, site)
    f.text_source = saved = None  # type: ignore[assignment]  # the rows and texts are the journal's, on disk
    gc.collect()
    spilled = tracemalloc.get_traced_memory()[0] / len(infos)
    tracemalloc.stop()
    assert live > 4000  # a sanity bound: the detectors' windows are full after a week
    assert parked < live / 3, (live, parked)
    assert len(_spilled(f)) == len(infos)
    # Issue 17: hundreds of bytes a quiet channel (~420 here: the channel, its key, its
    # device's share of the silence timers and of its site), against ~2,400 parked.
    assert spilled < min(600, parked / 4), (live, parked, spilled)


def test_a_row_from_before_parking_with_a_damaged_channel_starts_that_channel_afresh_and_is_reported() -> None:
    """Rows written before ``z`` hold each channel's body in the open; they go through the same
    checks as a parked text (a level 9 made the site's fusion raise KeyError before)."""
    reg = _two_channel_registry(True)
    f = SiteFusion(reg)
    for i in range(400):
        for dev in ("X1", "X2"):
            f.update_all(reg.channel("S", dev, "d"), 1.7e9 + 600 * i, 20.0 * i / 144, False, 1.7e9 + 600 * i)
    old = f.site_state("S")  # the open form, as rows were written before
    chans = old["sites"]["S|0"]["channels"]
    assert chans["X1/d"]["levels"]
    chans["X1/d"]["levels"] = {name: 9 for name in chans["X1/d"]["levels"]}
    g, ref = SiteFusion(reg), SiteFusion(reg)
    g.restore(SiteFusion.assemble(f.globals_state(), [json.loads(json.dumps(old))]))
    ref.restore(SiteFusion.assemble(f.globals_state(), [json.loads(json.dumps(f.site_state("S")))]))
    assert [(u[1], u[3]) for u in g.unreadable] == [("X1", "saved")]
    t = 1.7e9 + 600 * 400
    for dev in ("X1", "X2"):
        g.update_all(reg.channel("S", dev, "d"), t, 20.0 * 400 / 144, False, t)
        ref.update_all(reg.channel("S", dev, "d"), t, 20.0 * 400 / 144, False, t)
    x2 = g.site_state("S")["sites"]["S|0"]["channels"]["X2/d"]
    assert x2 == ref.site_state("S")["sites"]["S|0"]["channels"]["X2/d"]  # the other channel goes on exactly
    fresh = SiteFusion(reg)
    fresh.update_all(reg.channel("S", "X1", "d"), t, 20.0 * 400 / 144, False, t)
    assert g.site_state("S")["sites"]["S|0"]["channels"]["X1/d"]["detectors"] == fresh.site_state("S")["sites"]["S|0"]["channels"]["X1/d"]["detectors"]


REAL = ["three_gorges_baishuihe_bazimen", "lamosano_italy", "cubatao_brazil_rain_landslides"]


@pytest.mark.parametrize("name,how", [(name, "parked") for name in REAL] + [(name, "budget") for name in REAL[:2]])  # (Cubatão: one channel)
def test_parking_changes_nothing_on_real_monitoring_data(name: str, how: str) -> None:
    """Data GeoWarn did not generate (../shared/data: Three Gorges GPS, Lamosano displacement,
    Cubatão rain), parked after every reading (or, ``budget``, spilled past a live budget of
    one channel: tests/test_live_budget.py), against a fusion that never parks."""
    import itertools
    import statistics

    from test_accuracy import acc

    if not (acc.DATA / name).is_dir():
        pytest.skip(f"real data absent: {acc.DATA / name} (../shared/data next to the repository)")
    ds = getattr(acc.vd, f"load_{name}")(acc.vd.locate(name))
    rows = sorted(acc.series_rows(ds.series), key=lambda r: r.t)
    times = sorted({r.t for r in rows})
    reg = acc.stated_registry(rows, statistics.median(b - a for a, b in itertools.pairwise(times)), name)
    ref, parked = SiteFusion(reg), SiteFusion(reg)
    if how == "parked":
        parked.park_after_s = 0.0
    else:
        _Rows().attach(parked)
        parked.live_max = 1
    expected, got = [], []
    for r in rows:
        info = reg.channel(r.site, r.device, r.channel)
        expected += ref.update_all(info, r.t, r.value) + ref.tick(r.t)
        got += parked.update_all(info, r.t, r.value) + parked.tick(r.t)
        if how == "parked":
            parked.site_row(r.site)
        else:
            for site in parked.park_over_budget():
                _save(parked, site)
            assert parked.live <= 1
    if how == "budget":  # parked past the budget again and again: the comparison means something
        assert len(_spilled(parked)) >= len({(r.site, r.device, r.channel) for r in rows}) - 1 >= 1
    assert len(expected) >= 3 and max(e.level for e in expected) >= 2  # the data raise warnings: the comparison means something
    assert got == expected
    assert _norm(parked) == _norm(ref) and parked.unreadable == []


def _judged_journal(path: Any, loaded: Any, ts: int, rounds: int) -> tuple[Any, Any, dict[tuple[str, str, str], int]]:
    """A real journal with ``rounds`` ten-minute readings of every channel of ``loaded``'s
    registry, judged by the daemon's detection and saved in full: (journal, detection, ids)."""
    from geowarn.core.clock import ManualClock
    from geowarn.ingest.journal import Journal
    from geowarn.service import detection

    j = Journal(path)
    ids = {(c.site, c.device, c.channel): i for c, i in j.series_ids(loaded.registry).items()}
    j.append([(sid, ts + 600_000 * k, float(k), 0, ts + 600_000 * k + 5_000) for k in range(1, rounds + 1) for sid in ids.values()])
    det = detection.Detection(loaded, j, lambda *a, **k: None, ManualClock(ts / 1000 + (rounds + 1) * 600))
    det.resume()
    while det.step():
        pass
    det.save_snapshot(None)
    return j, det, ids


def test_detection_saves_texts_apart_and_a_damaged_one_is_one_channel_afresh(tmp_path: Any, caplog: Any) -> None:
    """The daemon's detection over a real journal file: site rows hold no texts, the channels'
    are in ``channel_state``, parked ones are spilled, and one damaged on disk is that channel
    started afresh (logged) at the next start, and named by ``saved_state``, the rest as saved."""
    import logging
    import sqlite3

    from geowarn.config.settings import example_path, load_all
    from geowarn.core.clock import ManualClock
    from geowarn.core.logfields import fields_of
    from geowarn.ingest.journal import Journal, JournalReader
    from geowarn.service import detection

    ts = 1_700_000_000_000
    loaded = load_all(None, sites_path=example_path("sites.example.toml"), roster_path=example_path("roster.example.toml"), find_file=False)
    loaded.settings = loaded.settings.model_copy(update={"data_dir": tmp_path / "data"})
    path = tmp_path / "journal.sqlite"
    j, det, ids = _judged_journal(path, loaded, ts, rounds=19)
    chans = [ch for st in det.fusion._sites.values() for ch in st.channels.values()]
    assert len(chans) == len(ids) and all(ch.text is fusion._SPILLED for ch in chans)  # ten-minute channels: parked as judged
    bodies = [json.loads(body) for _, _, _, body in j.site_states()]
    entries = [cd for b in bodies for sd in b["sites"].values() for cd in sd["channels"].values()]
    assert entries and all(set(cd) == {"level", "suspect", "t"} for cd in entries)
    with sqlite3.connect(path) as conn:
        keys = conn.execute("SELECT site, key FROM channel_state").fetchall()
        assert sorted(keys) == sorted((s, f"0:{d}/{c}") for s, d, c in ids)
        victim = min(keys)
        conn.execute("UPDATE channel_state SET z=? WHERE site=? AND key=?", (b"damaged on disk", *victim))
    j.close()
    saved = detection.saved_state(JournalReader(path))
    assert saved is not None
    site_chans = saved["state"]["sites"][f"{victim[0]}|0"]["channels"]
    assert "unreadable" in site_chans[victim[1][2:]] and sum("unreadable" in cd for cd in site_chans.values()) == 1
    # The next start: the damaged channel afresh and logged, the others as they were.
    j2 = Journal(path)
    det2 = detection.Detection(loaded, j2, lambda *a, **k: None, ManualClock(ts / 1000 + 21 * 600))
    det2.resume()
    j2.append([(sid, ts + 600_000 * 20, 20.0, 0, ts + 600_000 * 20 + 5_000) for sid in ids.values()])
    with caplog.at_level(logging.ERROR):
        while det2.step():
            pass
    bad = [fields_of(r) for r in caplog.records if "could not be restored" in r.getMessage()]
    assert len(bad) == 1 and bad[0]["part"] == "parked" and (bad[0]["site"], f"0:{bad[0]['device']}/{bad[0]['channel']}") == victim, bad
    j2.close()


def test_a_device_gone_from_the_registry_has_its_saved_texts_deleted_with_its_sites_row(tmp_path: Any) -> None:
    """Its channels' texts in ``channel_state`` went on for good (only a removed site's were
    deleted): the next start drops them with the site's next row, and leaves the others."""
    import sqlite3
    import tomllib

    from geowarn.config.settings import example_path, load_all
    from geowarn.core.clock import ManualClock
    from geowarn.ingest.journal import Journal
    from geowarn.service import detection
    from geowarn.simulators.scenario import Template, sites_toml, synthetic_sites

    ts = 1_700_000_000_000
    fleet = tomllib.loads(sites_toml(synthetic_sites(Template(devices_per_site=3, admin="420527"), 9)))

    def loaded_with(sites: dict[str, Any], name: str) -> Any:
        path = tmp_path / f"{name}.toml"
        path.write_text(sites_toml(sites))
        ld = load_all(None, sites_path=path, roster_path=example_path("roster.example.toml"), find_file=False)
        ld.settings = ld.settings.model_copy(update={"data_dir": tmp_path / "data"})
        return ld

    loaded = loaded_with(fleet, "all")
    path = tmp_path / "journal.sqlite"
    j, _, ids = _judged_journal(path, loaded, ts, rounds=5)
    j.close()

    def keys() -> set[tuple[str, str]]:
        with sqlite3.connect(path) as conn:
            return set(conn.execute("SELECT site, key FROM channel_state WHERE key LIKE '0:%'").fetchall())

    before = keys()
    assert before == {(s, f"0:{d}/{c}") for s, d, c in ids}
    gone = fleet["sites"][1]["devices"].pop()["device"]  # (a device of the second site out of the registry)
    j2 = Journal(path)
    det2 = detection.Detection(loaded_with(fleet, "fewer"), j2, lambda *a, **k: None, ManualClock(ts / 1000 + 7 * 600))
    det2.resume()
    det2.step()  # no new reading: the site's row is saved all the same
    after = keys()
    j2.close()
    assert after == {(s, k) for s, k in before if not k.startswith(f"0:{gone}/")}
    assert len(before) - len(after) == sum(1 for s, d, _ in ids if d == gone) > 0
