"""A fresh-eyes review of the live channels' budget and the saves that follow it
(``Detection._spill_soon``, ``SiteFusion._live``): regressions that hold. What it found is
mended (each step's saves of the sites to spill cost what they save, not every waiting site;
rows of before ``z`` are saved soon; a site started afresh leaves no text its row does not
name; timer-announced sites the loose budget leaves are saved by the next steps), but for
the one strict xfail left: a crash in the very step after such an announcement."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from geowarn.detectors.fusion import SiteFusion
from test_parking import _readings, _Rows, _save


def _built(f: SiteFusion) -> set[int]:
    return {id(ch) for st in f._sites.values() for ch in st.channels.values() if ch.guard is not None}


@pytest.mark.parametrize("seed", range(4))
def test_live_counts_exactly_the_built_channels_through_parks_saves_snapshots_and_restores(seed: int) -> None:
    """``SiteFusion._live`` holds exactly the channels whose detectors are built, whatever mix
    of budget parks, rhythm parks (``park_after_s``), eager parks, saves with spills,
    ``snapshot()`` (which builds a never-built channel) and restores the stream goes through."""
    reg, rows = _readings("faults")
    rng = random.Random(seed)
    saved = _Rows()
    f = saved.attach(SiteFusion(reg))
    settings = (rng.choice([1, 2, 3, 5]), rng.choice([None, 0.0, 600.0]), rng.random() < 0.5)

    def configured(g: SiteFusion) -> SiteFusion:
        g.live_max, g.park_after_s, g.eager = settings
        return g

    configured(f)
    for i, (info, t, v, arrived, drill) in enumerate(rows):
        f.update_all(info, t, v, False, arrived)
        if drill:
            f.update_all(info, t, v, True, arrived)
        f.tick(arrived)
        f.park_judged()
        r = rng.random()
        if r < 0.3:
            f.park_over_budget()
        if r < 0.1:
            _save(f, info.site)
        if r < 0.003:
            f.snapshot()
        if r < 0.005:
            import json

            for s in reg.sites:
                _save(f, s)
            g = configured(saved.attach(SiteFusion(reg)))
            g.restore_parts(f.globals_state(), [json.loads(saved[s]) for s in reg.sites if s in saved])
            f = g
        assert {id(ch) for ch in f._live} == _built(f), f"row {i}"
        if f.live_max is not None and r < 0.3:
            assert f.live <= f.live_max


def _one_device_sites(tmp_path: Path, n_sites: int) -> Any:
    """The settings and a registry of ``n_sites`` one-device sites (the national template)."""
    from geowarn.config.settings import example_path, load_all
    from geowarn.simulators.scenario import Template, sites_toml, synthetic_sites

    spath = tmp_path / "sites.toml"
    spath.write_text(sites_toml(synthetic_sites(Template(devices_per_site=1, admin="420527"), n_sites)))
    loaded = load_all(None, sites_path=spath, roster_path=example_path("roster.example.toml"), find_file=False)
    loaded.settings = loaded.settings.model_copy(update={"data_dir": tmp_path / "data"})
    return loaded


def _fleet_detection(tmp_path: Path, n_sites: int) -> tuple[Any, Path, Any]:
    """A journal with one reading for each of ``n_sites`` one-device sites, judged and saved;
    then every site's row rewritten as rows were before ``channel_state`` (texts inline, ``z``)."""
    from geowarn.core.clock import ManualClock
    from geowarn.ingest.journal import Journal
    from geowarn.service import detection

    ts = 1_700_000_000_000
    loaded = _one_device_sites(tmp_path, n_sites)
    path = tmp_path / "journal.sqlite"
    j = Journal(path)
    ids = j.series_ids(loaded.registry)
    j.append([(sid, ts + 600_000, 1.0, 0, ts + 605_000) for sid in ids.values()])
    det = detection.Detection(loaded, j, lambda *a, **k: None, ManualClock(ts / 1000 + 700))
    det.resume()
    while det.step():
        pass
    det.save_snapshot(None)
    # The rows as an older GeoWarn wrote them: each channel's text inline.
    det.fusion.text_source = lambda site, key: j.channel_text(site, key)
    inline = [(det.fusion.site_row(site), site) for site in loaded.registry.sites]
    j.close()
    with sqlite3.connect(path) as conn:
        conn.executemany("UPDATE site_state SET body=? WHERE site=?", inline)
        conn.execute("DELETE FROM channel_state")
    return loaded, path, ts


class _CountingDirty(dict):  # type: ignore[type-arg]
    """``SiteFusion.dirty`` as it is, counting the look-ups of a site in it."""

    looked = 0

    def __contains__(self, key: object) -> bool:
        _CountingDirty.looked += 1
        return dict.__contains__(self, key)


def test_a_step_of_the_spill_soon_saves_costs_the_sites_it_saves_not_all_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from geowarn.core.clock import ManualClock
    from geowarn.ingest.journal import Journal
    from geowarn.service import detection

    n = 400
    loaded, path, ts = _fleet_detection(tmp_path, n)
    j = Journal(path)
    det = detection.Detection(loaded, j, lambda *a, **k: None, ManualClock(ts / 1000 + 800))
    det.resume()
    assert len(det._spill_soon) == n  # every old inline row: saved soon
    # A budget that saves one site a step stands for a national fleet's 250,000 sites against
    # the ~1,000 that 0.1 s saves.
    monkeypatch.setattr(detection, "SPILL_SOON_BUDGET_S", 0.0)
    det.fusion.dirty = _CountingDirty(det.fusion.dirty)
    _CountingDirty.looked = 0
    det.step()
    saved = n - len(det._spill_soon)
    looked = _CountingDirty.looked
    j.close()
    assert 1 <= saved <= 5
    assert looked <= 20 * saved + 50, f"{looked} look-ups in dirty for {saved} sites saved of {n} waiting"


def test_a_device_gone_while_its_site_row_is_inline_leaves_no_text_and_the_rest_spilled(tmp_path: Path) -> None:
    """The two halves together: a site whose row is of before ``channel_state`` (texts inline)
    and lost a device meanwhile is saved at the next step, its texts moved to
    ``channel_state`` and nothing kept for the device gone; every row refers only to texts
    that exist."""
    import json

    from geowarn.core.clock import ManualClock
    from geowarn.ingest.journal import Journal
    from geowarn.service import detection

    loaded, path, ts = _fleet_detection(tmp_path, 6)
    j = Journal(path)
    det = detection.Detection(loaded, j, lambda *a, **k: None, ManualClock(ts / 1000 + 800))
    det.resume()
    det.step()
    assert not det._spill_soon
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT site, body FROM site_state").fetchall()
        texts = set(conn.execute("SELECT site, key FROM channel_state").fetchall())
    j.close()
    referred = set()
    for site, body in rows:
        assert '"z":' not in body
        for skey, sd in json.loads(body)["sites"].items():
            for key, cd in sd["channels"].items():
                if "t" in cd:
                    referred.add((site, f"{skey.rpartition('|')[2]}:{key}"))
    assert referred and referred == texts


def test_a_site_restarted_afresh_leaves_no_text_its_new_row_does_not_refer_to(tmp_path: Path) -> None:
    import json

    from geowarn.core.clock import ManualClock
    from geowarn.ingest.journal import Journal
    from geowarn.service import detection

    ts = 1_700_000_000_000
    loaded = _one_device_sites(tmp_path, 3)
    path = tmp_path / "journal.sqlite"
    j = Journal(path)
    ids = {(c.site, c.device, c.channel): i for c, i in j.series_ids(loaded.registry).items()}
    j.append([(sid, ts + 600_000, 1.0, 0, ts + 605_000) for sid in ids.values()])
    det = detection.Detection(loaded, j, lambda *a, **k: None, ManualClock(ts / 1000 + 700))
    det.resume()
    while det.step():
        pass
    det.save_snapshot(None)
    j.close()
    victim = sorted(loaded.registry.sites)[0]
    with sqlite3.connect(path) as conn:  # its row damaged (the disk, a hand edit)
        conn.execute("UPDATE site_state SET body='{' WHERE site=?", (victim,))
        assert conn.execute("SELECT count(*) FROM channel_state WHERE site=?", (victim,)).fetchone()[0] == 4
    # One of its channels speaks again: the site, afresh, is saved with that channel only.
    j = Journal(path)
    speaks = next(k for k in ids if k[0] == victim)
    j.append([(ids[speaks], ts + 1_200_000, 1.0, 0, ts + 1_205_000)])
    det = detection.Detection(loaded, j, lambda *a, **k: None, ManualClock(ts / 1000 + 1_300))
    det.resume()
    while det.step():
        pass
    det.save_snapshot(None)
    j.close()
    with sqlite3.connect(path) as conn:
        body = conn.execute("SELECT body FROM site_state WHERE site=?", (victim,)).fetchone()[0]
        texts = {k for (k,) in conn.execute("SELECT key FROM channel_state WHERE site=?", (victim,))}
    referred = {f"{skey.rpartition('|')[2]}:{key}" for skey, sd in json.loads(body)["sites"].items()
                for key, cd in sd["channels"].items() if "t" in cd}
    assert referred, "the site was saved again"
    assert texts <= referred, f"texts no row refers to: {sorted(texts - referred)}"


@pytest.mark.parametrize("steps", [
    pytest.param(1, marks=pytest.mark.xfail(strict=True, reason=(
        "DEFECT (older than 27a080a, narrowed): sites whose timers announced something are saved within "
        "LOOSE_BUDGET_S a step; those the budget leaves wait for the next steps (they used to wait for the "
        "age-ordered saves, a minute). A crash before those steps announces them again. Saving them all at "
        "once would stall detection for seconds in a national outage; announcing no more than can be saved "
        "is the fix, not done."))),
    5,
])
def test_silences_announced_by_a_timer_are_not_announced_again_after_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    from geowarn.core.clock import ManualClock
    from geowarn.ingest.journal import Journal
    from geowarn.service import detection

    ts = 1_700_000_000_000
    loaded = _one_device_sites(tmp_path, 4)
    path = tmp_path / "journal.sqlite"
    j = Journal(path)
    ids = j.series_ids(loaded.registry)
    j.append([(sid, ts + 600_000 * k, 1.0, 0, ts + 600_000 * k + 5_000) for k in (1, 2) for sid in ids.values()])
    published: list[bytes] = []

    def publish(topic: str, payload: bytes, *a: Any, **k: Any) -> None:
        published.append(payload)

    clock = ManualClock(ts / 1000 + 1_300)
    det = detection.Detection(loaded, j, publish, clock)
    det.resume()
    while det.step():
        pass
    det.save_snapshot(None)
    assert published == []
    # Every device falls silent at once (a network outage): a budget that saves one site stands
    # for 0.5 s against the thousands of sites of a national fleet's outage.
    monkeypatch.setattr(detection, "LOOSE_BUDGET_S", 0.0)
    clock.set(clock.now() + 3 * 86400)
    for _ in range(steps):
        det.step()
    first = [p for p in published if b'"kind": "nodata"' in p]
    assert len(first) == 4
    j.close()  # the process dies here, before the age-ordered saves
    published.clear()
    j2 = Journal(path)
    det2 = detection.Detection(loaded, j2, publish, ManualClock(clock.now() + 1))
    det2.resume()
    while det2.step():
        pass
    j2.close()
    again = [p for p in published if b'"kind": "nodata"' in p]
    assert again == [], f"{len(again)} silences announced a second time"


def test_rows_of_before_z_are_saved_soon_after_a_restore_and_their_channels_spilled(tmp_path: Path) -> None:
    import json

    from geowarn.core.clock import ManualClock
    from geowarn.ingest.journal import Journal
    from geowarn.service import detection

    loaded, path, ts = _fleet_detection(tmp_path, 6)
    # Rewritten as the per-site rows of before parking wrote them: bodies inline, unpacked.
    j = Journal(path)
    det = detection.Detection(loaded, j, lambda *a, **k: None, ManualClock(ts / 1000 + 800))
    det.resume()
    old = [(json.dumps(det.fusion.site_state(site)), site) for site in loaded.registry.sites]
    j.close()
    assert all('"z":' not in body and '"detectors":' in body for body, _ in old)
    with sqlite3.connect(path) as conn:
        conn.executemany("UPDATE site_state SET body=? WHERE site=?", old)
    j = Journal(path)
    det = detection.Detection(loaded, j, lambda *a, **k: None, ManualClock(ts / 1000 + 800))
    det.resume()
    det.step()
    det.step()
    kept = [ch.info for st in det.fusion._sites.values() for ch in st.channels.values() if ch.saved is not None]
    j.close()
    assert kept == [], f"{len(kept)} channels still hold their parsed bodies after the first steps"
