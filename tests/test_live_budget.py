"""The live channels' budget (issue 17: a storm must not exhaust memory): past
``SiteFusion.live_max`` built channels, the least recently judged are parked whatever their
rhythm, and that changes nothing but memory and CPU.

The reference is a fusion without a budget fed the same readings (tests/test_parking.py's
scenarios, whose readings come minutes apart or less, so ``park_after_s`` alone would keep
them live): every event and the final state must be the same.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
from geowarn.detectors.fusion import SiteFusion
from test_parking import _events, _norm, _readings, _Rows, _save, _spilled


def _fed(f: SiteFusion, rows: list[Any], saved: _Rows | None, start: int = 0, stop: int | None = None,
         every: int = 1, sizes: list[int] | None = None) -> list[Any]:
    """Feed ``rows`` (``every`` readings a batch); after each batch park over the budget and
    save the sites that parked (detection's ``step``), recording how many channels were live
    then in ``sizes``."""

    def batch_done(i: int) -> None:
        if i % every == every - 1:
            for site in sorted(f.park_over_budget()):
                if saved is not None:
                    _save(f, site)
            if sizes is not None:
                sizes.append(f.live)

    return _events(f, rows, start=start, stop=stop, after=batch_done)


@pytest.mark.parametrize("spill", [False, True], ids=["parked", "spilled"])
@pytest.mark.parametrize("name,days,cap,every", [("failure", None, 2, 1), ("faults", None, 3, 4), ("storm", 2.0, 5, 1), ("cn_failure", 6.0, 4, 7)])
def test_a_budget_smaller_than_the_fleet_changes_no_event_and_no_state(name: str, days: float | None, cap: int, every: int, spill: bool) -> None:
    reg, rows = _readings(name, days)
    ref, budgeted = SiteFusion(reg), SiteFusion(reg)
    saved = _Rows() if spill else None
    if saved is not None:
        saved.attach(budgeted)
    budgeted.live_max = cap
    wakes = []
    wake = budgeted._wake
    budgeted._wake = lambda ch, bank=True: (wakes.append(ch.info), wake(ch, bank))[1]  # type: ignore[method-assign]
    expected = _fed(ref, rows, None)
    sizes: list[int] = []
    got = _fed(budgeted, rows, saved, every=every, sizes=sizes)
    channels = sum(len(st.channels) for st in ref._sites.values())
    assert channels > cap, "the budget must be smaller than the channels for the test to mean anything"
    assert ref.live == channels  # without a budget every channel judged stays live here
    assert len(expected) > 3 and got == expected
    # Never more than the budget once parked over it; the channels were woken again and again.
    assert sizes and max(sizes) <= cap and len(wakes) > len(rows) / (4 * every)
    assert _norm(budgeted) == _norm(ref) and budgeted.unreadable == []
    if spill:  # saved, the channels parked over the budget keep their texts in the rows only
        assert _spilled(budgeted)
    if name == "failure":
        assert max(e.level for e in expected) == 4


def test_restored_mid_stream_with_a_budget_continues_exactly() -> None:
    """Rows saved by a fusion under a budget restore into one, which continues as the
    reference does; the restored fusion's own budget holds from its first batch."""
    reg, rows = _readings("failure")
    ref = SiteFusion(reg)
    half = len(rows) * 3 // 4
    _fed(ref, rows, None, stop=half)
    expected_after = _fed(ref, rows, None, start=half)
    saved = _Rows()
    a = saved.attach(SiteFusion(reg))
    a.live_max = 3
    _fed(a, rows, saved, stop=half)
    for site in reg.sites:
        _save(a, site)
    b = saved.attach(SiteFusion(reg))
    b.restore_parts(a.globals_state(), (json.loads(saved[site]) for site in reg.sites))
    assert b.live == 0  # restored parked: nothing built until a reading needs it
    b.live_max = 3
    sizes: list[int] = []
    assert _fed(b, rows, saved, start=half, sizes=sizes) == expected_after
    assert max(sizes) <= 3 and _norm(b) == _norm(ref)


def test_without_a_budget_nothing_is_parked_for_it() -> None:
    reg, rows = _readings("failure")
    f = SiteFusion(reg)
    _fed(f, rows, None)
    assert f.live == sum(len(st.channels) for st in f._sites.values()) > 2
    assert f.park_over_budget() == set()
    f.live_max = f.live
    assert f.park_over_budget() == set()  # at the budget, not over it
    f.live_max = 2
    sites = f.park_over_budget()
    assert f.live == 2 - 2 // 10 and sites and all(site in f.dirty for site in sites)


def test_the_budget_follows_the_setting_or_the_memory() -> None:
    from geowarn.service.detection import live_budget

    assert live_budget(123) == 123
    assert live_budget(0, memory=8 << 30) == (8 << 30) // 4 // 8192 == 262_144
    assert live_budget(0, memory=64 << 20) == 10_000  # a tiny machine: at least this many
    assert live_budget(0) >= 10_000  # this machine's memory (or its cgroup's limit)


def test_detection_keeps_its_budget_over_a_real_journal(tmp_path: Any, monkeypatch: Any) -> None:
    """The daemon's detection with ``GEOWARN_LIVE_CHANNELS_MAX`` below its fleet's channels and
    readings ten seconds apart (``park_after_s`` alone keeps them all live): at most the
    budget is live after each step, the parked ones are saved and spilled, and a restart from
    the journal continues with the same levels as detection without a budget."""
    from geowarn.config.settings import example_path, load_all
    from geowarn.core.clock import ManualClock
    from geowarn.ingest.journal import Journal
    from geowarn.service import detection

    ts = 1_700_000_000_000

    def run(budget: int, name: str) -> tuple[detection.Detection, Journal, list[int], Any]:
        monkeypatch.setenv("GEOWARN_LIVE_CHANNELS_MAX", str(budget))
        loaded = load_all(None, sites_path=example_path("sites.example.toml"), roster_path=example_path("roster.example.toml"), find_file=False)
        loaded.settings = loaded.settings.model_copy(update={"data_dir": tmp_path / name})
        assert loaded.settings.live_channels_max == budget
        j = Journal(tmp_path / f"{name}.sqlite")
        ids = {(c.site, c.device, c.channel): i for c, i in j.series_ids(loaded.registry).items()}
        clock = ManualClock(ts / 1000)
        det = detection.Detection(loaded, j, lambda *a, **k: None, clock)
        det.resume()
        sizes = []
        for k in range(1, 120):  # ten seconds apart (a storm's rhythm), rising: thresholds are crossed
            j.append([(sid, ts + 10_000 * k, float(k) * 5.0, 0, ts + 10_000 * k + 2_000) for sid in ids.values()])
            clock.set(ts / 1000 + 10 * k + 2)
            while det.step():
                sizes.append(det.fusion.live)
        det.save_sites(None)
        return det, j, sizes, loaded

    free, jf, _, _ = run(100_000, "free")
    ids = {(c.site, c.device, c.channel): i for c, i in jf.series_ids(free.registry).items()}
    channels = sum(len(st.channels) for st in free.fusion._sites.values())
    assert free.fusion.live == channels > 8
    cap = channels // 3
    det, j, sizes, loaded = run(cap, "budget")
    assert det.fusion.live_max == cap and max(sizes) <= cap
    levels = {site: det.fusion.level(site) for site in loaded.registry.sites}
    assert levels == {site: free.fusion.level(site) for site in loaded.registry.sites}
    assert max(levels.values()) >= 1  # the rising readings raised something: the comparison means something
    assert len(_spilled(det.fusion)) >= channels - cap
    det.save_stats(0)  # what /metrics reads as geowarn_detection_live_channels
    from geowarn.ingest.journal import DETECTION_STATS_KEY
    assert j.get_state(DETECTION_STATS_KEY)["live_channels"] == det.fusion.live <= cap
    with sqlite3.connect(tmp_path / "budget.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM channel_state").fetchone()[0] >= channels - cap
    # A restart reads on from the rows through readings stored since (the start's replay
    # keeps the budget too), and ends in the same state as detection without a budget.
    more = [(sid, ts + 10_000 * k, float(k) * 5.0, 0, ts + 10_000 * k + 2_000) for k in range(120, 160) for sid in ids.values()]
    jf.append(more)
    while free.step():
        pass
    jf.close()
    j.append(more)  # stored, and the detection stops before judging them
    j.close()
    j2 = Journal(tmp_path / "budget.sqlite")
    det2 = detection.Detection(loaded, j2, lambda *a, **k: None, ManualClock(ts / 1000 + 161 * 10))
    det2.resume()
    assert det2.fusion.live <= cap and det2._spill_soon
    assert _norm(det2.fusion) == _norm(free.fusion)
    det2.step()  # saved once started, and spilled
    assert not det2._spill_soon and len(_spilled(det2.fusion)) >= channels - cap
    j2.close()


@pytest.mark.parametrize("v", [1, 2])
def test_the_automatic_budget_follows_the_lowest_limit_of_the_process_cgroups(tmp_path: Any, monkeypatch: Any, v: int) -> None:
    """A systemd unit's ``MemoryMax=`` or a container's limit, on a parent of the process's
    cgroup (v2) or on its memory cgroup (v1): the files redirected into a temporary folder."""
    from pathlib import Path

    from geowarn.service import detection

    unit = "system.slice/geowarn.service"
    if v == 2:
        (tmp_path / "proc").mkdir()
        (tmp_path / "proc" / "cgroup").write_text(f"0::/{unit}\n")
        (tmp_path / "cg" / unit).mkdir(parents=True)
        (tmp_path / "cg" / "memory.max").write_text("max\n")
        (tmp_path / "cg" / "system.slice" / "memory.max").write_text(f"{3 << 30}\n")
        (tmp_path / "cg" / unit / "memory.max").write_text("max\n")
    else:
        (tmp_path / "proc").mkdir()
        (tmp_path / "proc" / "cgroup").write_text(f"5:devices:/\n4:memory:/{unit}\n0::/\n")
        (tmp_path / "cg" / "memory" / unit).mkdir(parents=True)
        (tmp_path / "cg" / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
        (tmp_path / "cg" / "memory" / unit / "memory.limit_in_bytes").write_text(f"{3 << 30}\n")
    real = Path

    def redirected(p: Any, *rest: Any) -> Path:
        text = str(p).replace("/proc/self", str(tmp_path / "proc")).replace("/sys/fs/cgroup", str(tmp_path / "cg"))
        return real(text, *rest)

    monkeypatch.setattr(detection, "Path", redirected)
    assert detection._memory_limit() == 3 << 30
    assert detection.live_budget(0) == (3 << 30) // 4 // 8192
