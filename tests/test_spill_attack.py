"""A fresh-eyes attack on spilled channels (issue 17, commits 1af0564..414a745).

The claim under attack: a channel's text saved apart from its site's row (the journal's
``channel_state``), and a parked channel then keeping no text in memory (``_SPILLED``, read
back by key when it is needed), changes no event and no end state against a detection that
never parks, across crashes at any point and restarts with other parking settings and other
registries; a missing or damaged text starts that one channel afresh and is reported.

Everything here runs detection over real SQLite journal files; the reference is a detection on
a journal of its own with the same rows that never parks (``park_after_s`` None) and never
crashes (it restarts only where the registry changes, as the one under test does).

What holds (tests that pass): detection crashed between steps, in the middle of a restart's
reading on, and right after ``save_site_states`` committed but before ``spill``, restarted with
``park_after_s`` 0 / 30 / 600 / inf chosen anew each time, with drills, readings stamped ahead
(held), spikes and sensor states among the readings, ends as the reference with the same
announcements; ``saved_state()`` of its journal is its own snapshot; after a full save no
spilled channel keeps its verdicts and ``_judged`` never grows during a backlog; a device
removed and re-added, a channel's kind changed and a site removed and re-added between
restarts change nothing against the reference, and a removed site's channel texts leave the
journal with its row; an old journal (inline ``z`` rows, no ``channel_state``) is migrated and
continues exactly; a channel_state value that is a zlib bomb, truncated, not zlib, a small
integer, text, or gone starts that channel afresh and is logged.

Defects it found, fixed since (each test here failed before): a channel_state value that is a
huge INTEGER (MemoryError out of the reading), or TEXT (saved_state raised); a damaged page of
channel_state (sqlite3.DatabaseError out of the reading); a site row with a damaged channel entry
(detection could not start); a damaged text lifting the warning its channel stood at (its level
dropped to 0 at its next reading, "all channels back to normal"); a channel judged by its timer
parked by the next step's ``park_judged`` after its site was saved, so its text stayed in memory
until the site next changed.

What breaks still (``xfail(strict=True)``, reason starting "DEFECT"), older than this session and
not caused by parking (seen by the crash harness): a detection crashed after a step's save announces at its
restart a device's silence ending that never began (event time), or a raise naming a sensor
fault the one never stopped applied only after it.

Seen, not pinned: a text of another channel of the same kind is taken without a word (texts
carry no identity). A device removed from the registry left its channel_state rows for good
(only a removed site's went); they now go with the site's next row (tests/test_parking.py).
Rows restored from an old journal (inline ``z``) kept their texts in memory until their site
next changed and was saved; they are now saved by the first steps (the migration test checks
it).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import sqlite3
import tomllib
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from geowarn.config.registry import parse_registry
from geowarn.config.settings import example_path, load_all
from geowarn.core.clock import EventClock, ManualClock
from geowarn.core.logfields import fields_of
from geowarn.detectors import fusion as fusion_mod
from geowarn.ingest.journal import Journal, JournalReader
from geowarn.service import detection
from test_parking_attack import _a_round
from test_state_fuzz import _diff, _norm

TS = 1_700_000_000_000
SPILLED = fusion_mod._SPILLED


class _Crash(Exception):
    """The process dies here: the Detection object is dropped without another word."""


def _base() -> Any:
    return load_all(None, sites_path=example_path("sites.example.toml"), roster_path=example_path("roster.example.toml"), find_file=False)


def _with_registry(base: Any, raw: dict[str, Any], name: str) -> Any:
    out = copy.copy(base)
    out.registry = parse_registry(raw, name)
    return out


def _raw() -> dict[str, Any]:
    return tomllib.loads(Path(example_path("sites.example.toml")).read_text())


def _changed_raw() -> dict[str, Any]:
    """The example registry with BSH's rain gauge removed, BZM's extensometer a crack meter now,
    and the site XK removed."""
    raw = _raw()
    sites = {s["site"]: s for s in raw["sites"]}
    sites["BSH"]["devices"] = [d for d in sites["BSH"]["devices"] if d["device"] != "BSH-RG1"]
    for d in sites["BZM"]["devices"]:
        if d["device"] == "BZM-EXT1":
            d["channels"][0].update(kind="crack")
    raw["sites"] = [s for s in raw["sites"] if s["site"] != "XK"]
    return raw


def _texts_in_memory(det: Any) -> tuple[int, int]:
    """(channels holding a packed text in memory, spilled channels holding opened verdicts)."""
    resident = opened = 0
    for st in det.fusion._sites.values():
        for ch in st.channels.values():
            if ch.text is not None and ch.text is not SPILLED:
                resident += 1
            if ch.text is SPILLED and ch.verdicts is not fusion_mod._NO_VERDICTS:
                opened += 1
    return resident, opened


def _run(tmp: Path, seed: int, rounds: int, *, event_time: bool = False, parks: tuple[float | None, ...] = (0.0, 30.0, 600.0, math.inf),
         spill_crash: float = 0.08, resume_crash: float = 0.3, phases: dict[int, Any] | None = None,
         crash_filter: Any = None) -> dict[str, Any]:
    """A detection parking with a setting drawn anew at each (re)start, crashed at random
    (between steps, right after a save committed but before its spill, in the middle of a
    restart's reading on), against one that never parks and never crashes. ``phases``: round ->
    Loaded: both restart with that registry there, fully caught up and saved."""
    rng = random.Random(seed)
    base = _base()
    current = {"loaded": base}
    j, jr = Journal(tmp / "journal.sqlite"), Journal(tmp / "reference.sqlite")
    clk: Any = EventClock(TS / 1000) if event_time else ManualClock(TS / 1000)
    clk_ref: Any = EventClock(TS / 1000) if event_time else ManualClock(TS / 1000)
    ids = {(c.site, c.device, c.channel): i for c, i in j.series_ids(base.registry).items()}
    assert ids == {(c.site, c.device, c.channel): i for c, i in jr.series_ids(base.registry).items()}
    keys = sorted(ids)
    devices = sorted({(s, d) for s, d, _ in keys})
    value = {k: 0.0 for k in keys}
    said: dict[str, list[Any]] = {"ref": [], "test": []}
    stats: Counter[str] = Counter()
    crash_p = {"spill": spill_crash}

    def build(who: str) -> Any:
        def log_change(change: Any, event: Any) -> None:
            said[who].append((change.site, round(change.t, 3), change.level, change.previous, change.kind, change.exercise, change.reason))

        park = rng.choice(parks) if who == "test" else None
        loaded = copy.copy(current["loaded"])
        loaded.settings = base.settings.model_copy(update={"data_dir": tmp / ("data_ref" if who == "ref" else "data"),
                                                           "park_after_s": 1e18 if park is None else park})
        plain = detection.Detection.__dict__["_log_change"]
        detection.Detection._log_change = staticmethod(log_change)  # type: ignore[method-assign]
        try:
            d = detection.Detection(loaded, jr if who == "ref" else j, lambda *a, **k: None, clk_ref if who == "ref" else clk)
        finally:
            detection.Detection._log_change = plain  # type: ignore[method-assign]
        if park is None:
            d.fusion.park_after_s = None  # never, not even a channel never judged
        if who == "test":
            d.save_after_s = rng.choice([0.0, 0.0, 3600.0])
            real = d.fusion.spill

            def spill(sites: Any) -> None:
                sites = list(sites)
                if sites and rng.random() < crash_p["spill"] and (crash_filter is None or crash_filter()):
                    stats["spill_crashes"] += 1
                    raise _Crash  # save_site_states has committed: the texts are saved, still in memory
                real(sites)

            d.fusion.spill = spill  # type: ignore[method-assign]
            stats["builds"] += 1
        return d

    def rebuild() -> Any:
        while True:
            try:
                d = build("test")
                if rng.random() < resume_crash and d.resuming is not None:
                    for _ in range(rng.randint(0, 3)):  # part of the reading on, then the process dies
                        if d.resuming is None:
                            break
                        d.step()
                        assert d.fusion._judged == [], "a restart's reading on parks nothing as judged"
                    stats["resume_crashes"] += 1
                    continue
                return d
            except _Crash:
                continue

    def full_save(d: Any) -> Any:
        while True:
            try:
                d.save_snapshot(None)
                return d
            except _Crash:
                d = settle(rebuild())

    def settle(d: Any) -> Any:
        """Every stored reading judged, timers run (a crash meanwhile: restarted)."""
        while True:
            try:
                while d.step():
                    if d.resuming is not None or d._behind:
                        assert len(d.fusion._judged) <= sum(len(st.channels) for st in d.fusion._sites.values())
                d.step()
                return d
            except _Crash:
                d = rebuild()

    ref = build("ref")
    det = full_save(rebuild())
    step = 0
    max_resident = max_opened = max_judged = 0
    for r in range(rounds):
        if phases and r in phases:
            ref, det = settle(ref), settle(det)
            ref.save_snapshot(None)
            det = full_save(det)
            current["loaded"] = phases[r]
            ref = settle(build("ref"))
            det = full_save(settle(rebuild()))
            ref.save_snapshot(None)
            stats["phases"] += 1
        # Readings stamped ahead of their arrival (held), and late: a backlog stamped up to an hour before.
        step, readings, statuses = _a_round(rng, step, keys, ids, value, devices, late=True)
        now = (TS + step * 600_000 + 5_000) / 1000
        j.append(readings, statuses=statuses)
        jr.append(readings, statuses=statuses)
        if not event_time:
            clk_ref.set(max(clk_ref.now(), now))
            clk.set(max(clk.now(), now))
        ref = settle(ref)
        while True:
            try:
                n = det.step()
                max_judged = max(max_judged, len(det.fusion._judged))
                if rng.random() < 0.5:
                    det.save_sites(None)
                    resident, opened = _texts_in_memory(det)
                    max_resident, max_opened = max(max_resident, resident), max(max_opened, opened)
                elif rng.random() < 0.1:
                    det.save_snapshot(rng.choice([0.0, None]))
                    if rng.random() < 0.5:
                        det = settle(rebuild())  # a crash right after a full checkpoint
            except _Crash:
                det = settle(rebuild())
                continue
            if rng.random() < 0.1:
                det = settle(rebuild())  # (settled: a crash at the head before its timers ran is a known defect apart)
            if n == 0:
                break
        if rng.random() < 0.35:
            det = settle(rebuild())
    ref, det = settle(ref), settle(det)
    problems = _diff(_norm(det), _norm(ref))
    test, reference = Counter(said["test"]), Counter(said["ref"])
    # The diagnosis path reads the same state from the journal's rows and texts.
    crash_p["spill"] = 0.0
    det.save_snapshot(None)
    saved = detection.saved_state(JournalReader(tmp / "journal.sqlite"))
    live = _norm(det)
    j.close()
    jr.close()
    assert saved is not None
    state = saved["state"]
    state["nodata"].pop("start")
    state["held"] = sorted(state["held"], key=lambda h: (h[4], h[0], h[2], h[3], h[5], h[1]))
    state["faults"] = sorted(state["faults"])
    spilled = sum(ch.text is SPILLED for st in det.fusion._sites.values() for ch in st.channels.values())
    return {"problems": problems, "twice": test - reference, "missing": reference - test, "saved_vs_live": _diff(state, live),
            "levels": {e[2] for e in said["ref"] if e[4] is None and not e[5]}, "stats": stats, "resident": max_resident,
            "opened": max_opened, "judged": max_judged, "spilled": spilled}


def _check(out: dict[str, Any]) -> None:
    assert not out["problems"], out["problems"][:5]
    assert not out["twice"], f"announced twice: {list(out['twice'])[:3]}"
    assert not out["missing"], f"never announced: {list(out['missing'])[:3]}"
    assert not out["saved_vs_live"], out["saved_vs_live"][:5]
    assert out["opened"] == 0, "a spilled channel kept the verdicts its site's fusion opened past a full save"
    assert out["resident"] == 0, "a parked channel kept its text in memory past a full save"


@pytest.mark.parametrize("seed,event_time,batch", [(0, False, None), (13, False, 9), (5, True, None)])
def test_spilling_detection_crashed_anywhere_with_any_parking_ends_as_one_that_never_parks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any, seed: int, event_time: bool, batch: int | None) -> None:
    if batch is not None:
        monkeypatch.setattr(detection, "BATCH", batch)  # restarts read on in several batches: crashes fall between them
    with caplog.at_level(logging.ERROR):
        out = _run(tmp_path, seed, rounds=30, event_time=event_time)
    stats = out["stats"]
    assert stats["builds"] > 8 and stats["spill_crashes"] >= 2 and stats["resume_crashes"] >= 1, stats
    assert 2 in out["levels"] and max(out["levels"]) == 4, out["levels"]
    assert out["spilled"] > 10
    _check(out)
    assert not [r for r in caplog.records if "could not be restored" in r.getMessage()], "a text saved by detection could not be read back"


def test_registry_changes_between_restarts_change_nothing_against_a_detection_that_never_parks(tmp_path: Path, caplog: Any) -> None:
    """A device removed then re-added, a channel's kind changed and back, a site removed and
    re-added: both restart there; the one under test also parks, spills and crashes."""
    base = _base()
    changed = _with_registry(base, _changed_raw(), "<changed>")
    again = _with_registry(base, _raw(), "<again>")
    with caplog.at_level(logging.ERROR):
        out = _run(tmp_path, 3, rounds=24, phases={8: changed, 16: again})
    assert out["stats"]["phases"] == 2
    _check(out)
    # The removed site's rows went, its channels' texts with them (then it came back: its own again).
    with sqlite3.connect(tmp_path / "journal.sqlite") as conn:
        sites = {s for (s,) in conn.execute("SELECT DISTINCT site FROM channel_state")}
        bad = conn.execute("SELECT count(*) FROM channel_state WHERE key NOT LIKE '0:%' AND key NOT LIKE '1:%'").fetchone()[0]
    assert sites == {"BSH", "BZM", "XK"} and bad == 0


def test_a_removed_sites_channel_texts_are_deleted_with_its_row(tmp_path: Path) -> None:
    base = _base()
    j = Journal(tmp_path / "journal.sqlite")
    ids = {(c.site, c.device, c.channel): i for c, i in j.series_ids(base.registry).items()}
    j.append([(sid, TS + 600_000 * k, float(k % 3), 0, TS + 600_000 * k + 5_000) for k in range(1, 10) for sid in ids.values()])
    base.settings = base.settings.model_copy(update={"data_dir": tmp_path / "data"})
    det = detection.Detection(base, j, lambda *a, **k: None, ManualClock(TS / 1000 + 10 * 600))
    det.resume()
    while det.step():
        pass
    det.save_snapshot(None)
    assert j.channel_text("XK", "0:XK-CRK1/crack") is not None
    changed = _with_registry(base, _changed_raw(), "<changed>")
    det2 = detection.Detection(changed, j, lambda *a, **k: None, ManualClock(TS / 1000 + 11 * 600))
    det2.resume()
    det2.save_snapshot(None)
    assert [r[0] for r in j.site_states() if r[0] == "XK"] == []
    assert j.conn.execute("SELECT count(*) FROM channel_state WHERE site='XK'").fetchone()[0] == 0
    j.close()


# -- an old journal ----------------------------------------------------------------------------


def test_an_old_journal_with_inline_texts_is_migrated_and_continues_exactly(tmp_path: Path, caplog: Any) -> None:
    """Rows with each channel's ``z`` inline and no ``channel_state`` table (user_version 5),
    opened by the new code: migration 6, then on as the reference never stopped."""
    base = _base()
    loaded = copy.copy(base)
    loaded.settings = base.settings.model_copy(update={"data_dir": tmp_path / "data", "park_after_s": 0.0})
    ref_loaded = copy.copy(base)
    ref_loaded.settings = base.settings.model_copy(update={"data_dir": tmp_path / "data_ref"})
    path = tmp_path / "journal.sqlite"
    j, jr = Journal(path), Journal(tmp_path / "reference.sqlite")
    ids = {(c.site, c.device, c.channel): i for c, i in j.series_ids(base.registry).items()}
    jr.series_ids(base.registry)
    rng = random.Random(2)
    said: dict[str, list[Any]] = {"ref": [], "test": []}

    def build(who: str, journal: Journal, ld: Any, clock: Any) -> Any:
        def log_change(change: Any, event: Any) -> None:
            said[who].append((change.site, round(change.t, 3), change.level, change.previous, change.kind, change.exercise))

        plain = detection.Detection.__dict__["_log_change"]
        detection.Detection._log_change = staticmethod(log_change)  # type: ignore[method-assign]
        try:
            return detection.Detection(ld, journal, lambda *a, **k: None, clock)
        finally:
            detection.Detection._log_change = plain  # type: ignore[method-assign]

    clk, clk_ref = ManualClock(TS / 1000), ManualClock(TS / 1000)
    ref = build("ref", jr, ref_loaded, clk_ref)
    ref.fusion.park_after_s = None
    det = build("test", j, loaded, clk)
    det.save_snapshot(None)
    level = {k: 0.0 for k in ids}

    def feed(k0: int, k1: int) -> None:
        rows = []
        for k in range(k0, k1):
            for key, sid in ids.items():
                level[key] += 0.05 * math.exp(k / 18.0) if key[0] == "BSH" and key[2] in ("disp", "disp_e") else rng.gauss(0, 0.5)
                drill = 1 if rng.random() < 0.1 else 0
                rows.append((sid, TS + 600_000 * k, level[key] + 50 * drill, drill, TS + 600_000 * k + 5_000))
        j.append(rows)
        jr.append(rows)
        clk.set((TS + 600_000 * k1) / 1000)
        clk_ref.set((TS + 600_000 * k1) / 1000)

    def run(d: Any) -> None:
        while d.step():
            pass
        d.step()

    feed(1, 40)
    run(ref)
    run(det)
    det.save_snapshot(None)
    # Made old: each row with its texts inline (what site_row writes), no channel_state table.
    rows = [(site, pos, spos, det.fusion.site_row(site)) for site, pos, spos, _ in j.site_states()]
    assert all("z" in cd for _, _, _, body in rows for sd in json.loads(body)["sites"].values() for cd in sd["channels"].values())
    j.save_site_states(rows)
    j.conn.execute("DROP TABLE channel_state")
    j.conn.execute("PRAGMA user_version = 5")
    j.close()
    del det
    j = Journal(path)
    assert j.conn.execute("PRAGMA user_version").fetchone()[0] == 6
    assert j.conn.execute("SELECT count(*) FROM channel_state").fetchone()[0] == 0
    with caplog.at_level(logging.ERROR):
        det = build("test", j, loaded, clk)
        run(det)
        # With no new reading, the restored texts are moved to channel_state by the first
        # steps' saves and let go: after an upgrade a national fleet's would otherwise stay in
        # memory (1-2 KB a channel) until each site next changes.
        assert _texts_in_memory(det)[0] == 0
        assert j.conn.execute("SELECT count(*) FROM channel_state WHERE key LIKE '0:%'").fetchone()[0] == len(ids)
        feed(40, 70)
        run(ref)
        run(det)
        det.save_snapshot(None)
    assert not _diff(_norm(det), _norm(ref)), _diff(_norm(det), _norm(ref))[:5]
    assert Counter(said["test"]) == Counter(said["ref"]) and said["ref"]
    assert not [r for r in caplog.records if "could not be restored" in r.getMessage()]
    bodies = [json.loads(b) for _, _, _, b in j.site_states()]
    assert all("z" not in cd for b in bodies for sd in b["sites"].values() for cd in sd["channels"].values())
    resident, opened = _texts_in_memory(det)
    assert resident == 0 and opened == 0
    j.close()
    jr.close()


# -- hostile channel_state values --------------------------------------------------------------


def _spilled_journal(tmp: Path) -> tuple[Any, Path, dict[tuple[str, str, str], int]]:
    """A journal whose detection saved every channel's text apart (all spilled)."""
    base = _base()
    base.settings = base.settings.model_copy(update={"data_dir": tmp / "data", "park_after_s": 0.0})
    path = tmp / "journal.sqlite"
    j = Journal(path)
    ids = {(c.site, c.device, c.channel): i for c, i in j.series_ids(base.registry).items()}
    j.append([(sid, TS + 600_000 * k, 0.3 * k, 0, TS + 600_000 * k + 5_000) for k in range(1, 40) for sid in ids.values()])
    det = detection.Detection(base, j, lambda *a, **k: None, ManualClock(TS / 1000 + 40 * 600))
    det.resume()
    while det.step():
        pass
    det.save_snapshot(None)
    assert all(ch.text is SPILLED for st in det.fusion._sites.values() for ch in st.channels.values())
    j.close()
    return base, path, ids


def _restart_and_read(base: Any, path: Path, ids: dict[tuple[str, str, str], int], caplog: Any) -> list[dict[str, Any]]:
    """The next start, a reading on every channel: the unreadable channels it logged."""
    j = Journal(path)
    try:
        det = detection.Detection(base, j, lambda *a, **k: None, ManualClock(TS / 1000 + 41 * 600))
        det.resume()
        j.append([(sid, TS + 600_000 * 40, 12.0, 0, TS + 600_000 * 40 + 5_000) for sid in ids.values()])
        with caplog.at_level(logging.ERROR):
            while det.step():
                pass
            det.step()
            det.save_snapshot(None)
    finally:
        j.close()
    return [fields_of(r) for r in caplog.records if "could not be restored" in r.getMessage()]


VICTIM = ("BSH", "0:BSH-EXT1/disp")


@pytest.mark.parametrize("damage", ["bomb", "truncated", "not-zlib", "small-integer", "text", "gone", "empty"])
def test_a_hostile_channel_state_value_starts_that_channel_afresh_and_is_logged(tmp_path: Path, caplog: Any, damage: str) -> None:
    base, path, ids = _spilled_journal(tmp_path)
    with sqlite3.connect(path) as conn:
        good = conn.execute("SELECT z FROM channel_state WHERE site=? AND key=?", VICTIM).fetchone()[0]
        value: Any = {"bomb": zlib.compress(b" " * (80 << 20), 9), "truncated": good[: len(good) // 2], "not-zlib": b"damaged on disk",
                      "small-integer": 12, "text": "not a blob", "empty": b""}.get(damage)
        if damage == "gone":
            conn.execute("DELETE FROM channel_state WHERE site=? AND key=?", VICTIM)
        else:
            conn.execute("UPDATE channel_state SET z=? WHERE site=? AND key=?", (value, *VICTIM))
    bad = _restart_and_read(base, path, ids, caplog)
    assert [(b["site"], f"0:{b['device']}/{b['channel']}") for b in bad] == [VICTIM], bad
    # And its next save wrote a good text for it again.
    j = Journal(path)
    assert zlib.decompress(j.channel_text(*VICTIM) or b"")
    j.close()


def test_a_channel_state_value_that_is_a_huge_integer_starts_that_channel_afresh_and_is_logged(tmp_path: Path, caplog: Any) -> None:
    base, path, ids = _spilled_journal(tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE channel_state SET z=? WHERE site=? AND key=?", (2**62, *VICTIM))
    bad = _restart_and_read(base, path, ids, caplog)  # MemoryError
    assert [(b["site"], f"0:{b['device']}/{b['channel']}") for b in bad] == [VICTIM], bad


def test_saved_state_names_a_channel_state_value_that_is_not_a_blob_and_opens_the_rest(tmp_path: Path) -> None:
    _, path, _ = _spilled_journal(tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE channel_state SET z=? WHERE site=? AND key=?", ("not a blob", *VICTIM))
    saved = detection.saved_state(JournalReader(path))  # TypeError
    assert saved is not None
    chans = saved["state"]["sites"]["BSH|0"]["channels"]
    assert "unreadable" in chans["BSH-EXT1/disp"] and sum("unreadable" in cd for cd in chans.values()) == 1


def test_a_damaged_page_of_channel_state_starts_its_channels_afresh_and_is_logged(tmp_path: Path, caplog: Any) -> None:
    base, path, ids = _spilled_journal(tmp_path)
    with sqlite3.connect(path) as conn:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='channel_state'").fetchone()[0]
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "r+b") as f:  # the table's root page overwritten: every lookup in it reads a damaged page
        f.seek((root - 1) * page)
        f.write(bytes(random.Random(1).randrange(256) for _ in range(page)))
    with sqlite3.connect(path) as conn:
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute("SELECT z FROM channel_state WHERE site=? AND key=?", VICTIM).fetchone()
        assert conn.execute("SELECT count(*) FROM site_state").fetchone()[0] == 3  # the rest of the file reads
    # Reading a text back from the damaged table: that channel afresh, logged. Writing into it (the
    # save) is the file's trouble, not a channel's: it stops the worker with SQLite's own error,
    # as a damaged site_state does (the journal needs repairing: restore a backup).
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):
        _restart_and_read(base, path, ids, caplog)
    bad = [fields_of(r) for r in caplog.records if "could not be restored" in r.getMessage()]
    assert bad and all(b["part"] == "spilled" and "cannot be read" in b["error"] for b in bad)


# -- memory ------------------------------------------------------------------------------------


def test_at_the_head_a_long_run_keeps_no_texts_in_memory_after_full_saves_and_judged_stays_small(tmp_path: Path) -> None:
    """Ten-minute channels at the journal's head (eager): after each full save every parked
    channel is spilled (none holds its text nor opened verdicts), and ``_judged`` is emptied
    by each step; a backlog read at a restart parks nothing as judged."""
    base = _base()
    base.settings = base.settings.model_copy(update={"data_dir": tmp_path / "data", "park_after_s": 30.0})
    j = Journal(tmp_path / "journal.sqlite")
    ids = {(c.site, c.device, c.channel): i for c, i in j.series_ids(base.registry).items()}
    clk = ManualClock(TS / 1000)
    det = detection.Detection(base, j, lambda *a, **k: None, clk)
    det.save_after_s = 0.0
    rng = random.Random(4)
    worst = (0, 0)
    n_chans = len(ids)
    for k in range(1, 150):
        rows = []
        for sid in ids.values():
            ahead = 60_000 if rng.random() < 0.03 else 0  # stamped a minute ahead: held, judged by the timer
            rows.append((sid, TS + 600_000 * k + ahead, rng.gauss(0, 0.5), 1 if rng.random() < 0.05 else 0, TS + 600_000 * k + 2_000))
        j.append(rows)
        clk.set((TS + 600_000 * k + 3_000) / 1000)
        while det.step():
            assert len(det.fusion._judged) <= 2 * n_chans
        det.save_sites(None)
        resident, opened = _texts_in_memory(det)
        worst = (max(worst[0], resident), max(worst[1], opened))
    assert sum(ch.text is SPILLED for st in det.fusion._sites.values() for ch in st.channels.values()) > n_chans // 2
    assert worst == (0, 0), f"after full saves: {worst[0]} channels still held their texts, {worst[1]} spilled ones their verdicts"
    # A backlog read at a restart (eager off): nothing is marked as judged.
    det.save_snapshot(None)
    j.append([(sid, TS + 600_000 * k, 0.0, 0, TS + 600_000 * k + 2_000) for k in range(150, 400) for sid in ids.values()])
    det2 = detection.Detection(base, j, lambda *a, **k: None, clk)
    assert det2.resuming is not None
    peak = 0
    while det2.resuming is not None:
        det2.step()
        peak = max(peak, len(det2.fusion._judged))
    assert peak == 0
    j.close()


# -- a site row whose channel entries are damaged ------------------------------------------------


@pytest.mark.parametrize("damage", ["no-level", "entry-a-string", "channels-a-list"])
def test_a_site_row_with_a_damaged_channel_entry_starts_that_site_afresh_not_the_worker_dead(tmp_path: Path, caplog: Any, damage: str) -> None:
    base, path, ids = _spilled_journal(tmp_path)
    j = Journal(path)
    site, pos, spos, body = next(r for r in j.site_states() if r[0] == "BSH")
    part = json.loads(body)
    chans = part["sites"]["BSH|0"]["channels"]
    if damage == "no-level":
        del chans["BSH-EXT1/disp"]["level"]
    elif damage == "entry-a-string":
        chans["BSH-EXT1/disp"] = "t"
    else:
        part["sites"]["BSH|0"]["channels"] = list(chans)
    j.save_site_states([(site, pos, spos, json.dumps(part))])
    j.close()
    _restart_and_read(base, path, ids, caplog)  # raises out of Detection(...)


def test_a_damaged_text_does_not_lift_the_warning_its_channel_stood_at(tmp_path: Path) -> None:
    base = _base()
    base.settings = base.settings.model_copy(update={"data_dir": tmp_path / "data", "park_after_s": 0.0})
    path = tmp_path / "journal.sqlite"
    j = Journal(path)
    ids = {(c.site, c.device, c.channel): i for c, i in j.series_ids(base.registry).items()}
    ext = ids[("BSH", "BSH-EXT1", "disp")]
    # The extensometer alone creeps at 43 mm/day (yellow by its velocity); every other channel is still.
    j.append([(sid, TS + 600_000 * k, 0.3 * k if sid == ext else 0.0, 0, TS + 600_000 * k + 5_000) for k in range(1, 80) for sid in ids.values()])
    det = detection.Detection(base, j, lambda *a, **k: None, ManualClock(TS / 1000 + 80 * 600))
    while det.step():
        pass
    det.save_snapshot(None)
    assert det.fusion.level("BSH") == 2
    j.conn.execute("UPDATE channel_state SET z=? WHERE site=? AND key=?", (b"damaged on disk", *VICTIM))
    j.close()
    j = Journal(path)
    det = detection.Detection(base, j, lambda *a, **k: None, ManualClock(TS / 1000 + 81 * 600))
    det.resume()
    j.append([(ext, TS + 600_000 * 80, 0.3 * 80, 0, TS + 600_000 * 80 + 5_000)])
    while det.step():
        pass
    level = det.fusion.level("BSH")
    j.close()
    assert level == 2, f"the site went from yellow to {level} on a damaged text"


def test_a_channel_judged_by_its_timer_is_not_left_parked_in_memory_after_a_full_save(tmp_path: Path) -> None:
    base = _base()
    base.settings = base.settings.model_copy(update={"data_dir": tmp_path / "data", "park_after_s": 30.0})
    j = Journal(tmp_path / "journal.sqlite")
    ids = {(c.site, c.device, c.channel): i for c, i in j.series_ids(base.registry).items()}
    clk = ManualClock(TS / 1000)
    det = detection.Detection(base, j, lambda *a, **k: None, clk)
    det.save_after_s = 0.0
    for k in range(1, 6):
        j.append([(sid, TS + 600_000 * k, 0.0, 0, TS + 600_000 * k + 5_000) for sid in ids.values()])
        clk.set((TS + 600_000 * k + 6_000) / 1000)
        while det.step():
            pass
        det.save_sites(None)
    ext = ids[("BSH", "BSH-EXT1", "disp")]
    a1 = TS + 600_000 * 6
    # Two readings stamped five minutes ahead of their arrivals, ten seconds apart: both held.
    j.append([(ext, a1 + 300_000, 0.0, 0, a1), (ext, a1 + 310_000, 0.0, 0, a1 + 10_000)])
    clk.set((a1 + 20_000) / 1000)
    while det.step():
        pass
    det.save_sites(None)
    ch = det.fusion._sites[("BSH", False)].channels["BSH-EXT1/disp"]
    assert ch.held == 2
    clk.set((a1 + 400_000) / 1000)  # their time has come: the timer judges them
    det.step()
    det.save_sites(None)
    det.step()  # nothing new
    det.save_sites(None)
    resident, _ = _texts_in_memory(det)
    j.close()
    assert ch.held == 0
    assert ch.text is None or ch.text is SPILLED, "the extensometer keeps its packed text in memory after a full save"
    assert resident == 0, f"{resident} channel(s) keep their packed text in memory after a full save"


@pytest.mark.xfail(strict=True, reason=(
    "DEFECT (older than this session, not caused by parking: the same runs with park_after_s None on both sides, "
    "and the code of 1af0564~1 under the same crashes, do it too): batches of 9, a detection crashed right after a "
    "step's save committed. Seed 100 (event clock): while its restart reads on it announces 'BSH-EXT1: data "
    "again after 0.1 h of silence' (nodata_end; BSH-GNSS1 too) with no 'no data' before it, which the detection "
    "never stopped does not (the restored silence timers, moved by judge.replay_fusion_timers, hold a device "
    "silent that never was). Seed 214 (wall clock): BSH's raise to yellow at 1700025313 (a held reading) names "
    "BSH-PZ1's sensor fault, which the one never stopped applied only after it (a held reading and a status "
    "ordered otherwise after the restart: the family of tests/test_state_fuzz.py's known timer defect). "
    "Mechanisms not pinned further; seed-dependent reproductions."))
@pytest.mark.parametrize("seed,event_time", [(100, True), (214, False)])
def test_a_detection_crashed_after_a_steps_save_announces_what_the_one_never_stopped_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, event_time: bool) -> None:
    monkeypatch.setattr(detection, "BATCH", 9)
    out = _run(tmp_path, seed, rounds=24, event_time=event_time, parks=(None,), resume_crash=0.0 if seed == 100 else 0.3)
    assert out["stats"]["spill_crashes"] > 3
    assert not out["problems"]
    assert not out["twice"] and not out["missing"], (list(out["twice"])[:1], list(out["missing"])[:1])
