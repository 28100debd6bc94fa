"""The journal's series ids: stable across starts, new channels added, a changed kind or county
written down, and nothing kept per channel by the journal itself (a national registry has a
million channels, issue 17)."""

from __future__ import annotations

import gc
import sqlite3
import tracemalloc

from geowarn.config.registry import parse_registry
from geowarn.ingest.journal import Journal


def _registry(admin: str, kind: str, extra: bool = False):
    chans = [{"channel": "d", "kind": kind}] + ([{"channel": "t", "kind": "displacement"}] if extra else [])
    sites = [{"site": f"S{i}", "name": "s", "admin": admin, "lat": 30.0, "lon": 110.0,
              "devices": [{"device": f"S{i}-X", "channels": chans}]} for i in range(300)]
    return parse_registry({"sites": sites}, "<test>")


def test_ids_stay_new_channels_come_and_changed_tags_are_written(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    first = {(c.site, c.device, c.channel): sid for c, sid in j.series_ids(_registry("420527", "crack")).items()}
    assert len(first) == 300 and len(set(first.values())) == 300
    j.close()
    j = Journal(tmp_path / "j.sqlite")
    again = {(c.site, c.device, c.channel): sid for c, sid in j.series_ids(_registry("420528", "displacement", extra=True)).items()}
    j.close()
    assert {k: again[k] for k in first} == first  # the same ids
    assert len(again) == 600 and len(set(again.values())) == 600
    rows = sqlite3.connect(tmp_path / "j.sqlite").execute("SELECT site, device, channel, kind, admin FROM series").fetchall()
    assert len(rows) == 600
    assert {(r[3], r[4]) for r in rows} == {("displacement", "420528")}


def test_the_journal_keeps_nothing_per_channel(tmp_path):
    reg = _registry("420527", "crack", extra=True)
    Journal(tmp_path / "j.sqlite").series_ids(reg)  # the rows exist: the usual start
    gc.collect()
    tracemalloc.start()
    j = Journal(tmp_path / "j.sqlite")
    ids = j.series_ids(reg)
    del ids
    gc.collect()
    kept, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    j.close()
    assert kept < 20 * 600, kept  # under 20 bytes a channel: the connection, no map of the series


def test_a_restart_reads_the_series_without_holding_them_all_twice(tmp_path):
    """A restart finds every series in the table. Read into a map of their own first, a
    national fleet's million rows took the store worker from ~500 to ~950 MB for good
    (BENCHMARKS.md, "National scale", row G: freed, but not given back to the system); read a
    row at a time, what is allocated beyond the result is a fraction of it."""
    reg = _registry("420527", "crack", extra=True)
    j = Journal(tmp_path / "j.sqlite")
    first = {(c.site, c.device, c.channel): sid for c, sid in j.series_ids(reg).items()}
    gc.collect()
    tracemalloc.start()
    try:
        again = j.series_ids(reg)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    j.close()
    assert {(c.site, c.device, c.channel): sid for c, sid in again.items()} == first
    assert peak - current < current // 4, (peak, current)
