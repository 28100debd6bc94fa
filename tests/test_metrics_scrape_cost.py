"""A ``/metrics`` scrape runs the same number of SQL statements whatever the size of the fleet
(issue 17: one query per channel took 6.8 s a scrape at 250k devices), and still counts devices
online and devices' health as before. Real journals written by the store's own writer
(``Journal.append``), the real collector; every statement the readers' connections run is
counted by a trace callback on each connection the readers open. Expected figures follow from
how the test builds each device's readings and statuses."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from geowarn.config.registry import Registry, parse_registry
from geowarn.console.metrics import GeoWarnCollector, MainStats, make_registry
from geowarn.core import sqlite as core_sqlite
from geowarn.ingest.journal import JOURNAL_FILE, Journal, JournalReader
from geowarn.simulators.scenario import Template, synthetic_sites
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

MIN = 60_000
HOUR = 3_600_000


def _fleet(devices: int) -> Registry:
    # Sites of 5 devices, 4 channels each, every channel reporting each 600 s: a device is
    # online when its newest reading arrived within 30 min.
    return parse_registry(synthetic_sites(Template(devices_per_site=5), devices), f"<{devices} devices>")


def _write(data: Path, registry: Registry, now_ms: int) -> None:
    """Device i (in registry order): i % 3 == 0 silent for 2 h (but a reading for an older
    event time arrived just now: by event time its newest reading is still the old one);
    i % 3 == 1 one channel heard a minute ago, the others 2 h ago; i % 3 == 2 all heard 5 min ago.
    Statuses: i % 5 == 0 none; else i % 4 == 0 low battery (10.0 V), i % 4 == 1 a faulty
    sensor, else healthy."""
    j = Journal(data / JOURNAL_FILE, sync="normal")
    try:
        ids = j.series_ids(registry)
        readings: list[tuple[int, int, float, int, int]] = []
        statuses = []
        for i, ((site, device), chans) in enumerate(registry.channels.items()):
            sids = [ids[info] for info in chans.values()]
            for k, sid in enumerate(sids):
                if i % 3 == 0:
                    readings.append((sid, now_ms - 2 * HOUR, 1.0, 0, now_ms - 2 * HOUR))
                    readings.append((sid, now_ms - 3 * HOUR, 1.0, 0, now_ms - MIN))
                elif i % 3 == 1:
                    received = now_ms - MIN if k == 0 else now_ms - 2 * HOUR
                    readings.append((sid, received, 1.0, 0, received))
                else:
                    readings.append((sid, now_ms - 5 * MIN, 1.0, 0, now_ms - 5 * MIN))
            if i % 5 == 0:
                continue
            status = {"battery_v": 10.0} if i % 4 == 0 else {"battery_v": 12.8, "sensor_state": {"L1_LF_1": -2}} if i % 4 == 1 else {"battery_v": 12.8}
            statuses.append((site, device, now_ms - HOUR, now_ms - HOUR, json.dumps(status)))
        j.append(readings, statuses=statuses)
    finally:
        j.close()


class _Counted:
    """Every SQL statement run on the connections the readers open (the real opener, with a
    trace callback set on what it returns)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.statements: list[str] = []
        real = core_sqlite.open_readonly

        def opener(*args, **kwargs) -> sqlite3.Connection:
            conn = real(*args, **kwargs)
            conn.set_trace_callback(self.statements.append)
            return conn

        monkeypatch.setattr(core_sqlite, "open_readonly", opener)

    def scrape(self, reg) -> dict[str, float]:
        self.statements.clear()
        text = generate_latest(reg).decode()
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def _expected(registry: Registry) -> tuple[int, int, int, int]:
    n = len(registry.channels)
    online = sum(1 for i in range(n) if i % 3 != 0)
    reporting = sum(1 for i in range(n) if i % 5 != 0)
    low = sum(1 for i in range(n) if i % 5 != 0 and i % 4 == 0)
    faulty = sum(1 for i in range(n) if i % 5 != 0 and i % 4 == 1)
    return online, reporting, low, faulty


def test_a_scrape_runs_as_many_statements_at_200_devices_as_at_20(tmp_path, monkeypatch) -> None:
    counted = _Counted(monkeypatch)
    now_ms = int(time.time() * 1000)
    per_size: dict[int, tuple[int, int]] = {}
    for devices in (20, 200):
        data = tmp_path / f"d{devices}"
        data.mkdir()
        registry = _fleet(devices)
        _write(data, registry, now_ms)
        # No warm-up thread here: its statements would land in whichever scrape runs meanwhile.
        reg = make_registry(data, registry, MainStats, time.time, warm_up=False)
        warmed = GeoWarnCollector(data, registry, MainStats, time.time)
        warmed.warm()
        warmed_reg = CollectorRegistry(auto_describe=False)
        warmed_reg.register(warmed)

        first = counted.scrape(reg)
        n_first = len(counted.statements)
        # The first scrape after the warm-up reads nothing more than a later one would.
        assert counted.scrape(warmed_reg) == first
        assert len(counted.statements) < n_first
        online, reporting, low, faulty = _expected(registry)
        assert first["geowarn_devices"] == devices
        assert first["geowarn_devices_online"] == online
        assert first["geowarn_device_online_ratio"] == pytest.approx(online / devices)
        assert first["geowarn_devices_status_reporting"] == reporting
        assert first["geowarn_devices_battery_low"] == low
        assert first["geowarn_devices_sensor_faulty"] == faulty

        # New heartbeats: every low battery charged again, one more device reports (a faulty
        # sensor), one device's status is not JSON (it no longer counts as reporting).
        keys = list(registry.channels)
        recovered = [k for i, k in enumerate(keys) if i % 5 != 0 and i % 4 == 0]
        fresh = (keys[0], {"battery_v": 12.9, "sensor_state": {"L1_QJ_1": -1}})
        broken = keys[2]
        # Readings: device 3 (silent) sends a reading of an older event time: still silent;
        # device 6 (silent) is heard again.
        j = Journal(data / JOURNAL_FILE, sync="normal")
        try:
            ids = j.series_ids(registry)
            ch3, ch6 = (next(iter(ids[info] for info in registry.channels[keys[k]].values())) for k in (3, 6))
            j.append([(ch3, now_ms - 4 * HOUR, 1.0, 0, now_ms), (ch6, now_ms, 1.0, 0, now_ms)], statuses=[(s, d, now_ms, now_ms, json.dumps({"battery_v": 12.9})) for s, d in recovered]
                     + [(*fresh[0], now_ms, now_ms, json.dumps(fresh[1])), (*broken, now_ms, now_ms, "{not json")])
        finally:
            j.close()
        second = counted.scrape(reg)
        n_second = len(counted.statements)
        assert second["geowarn_devices_battery_low"] == 0
        assert second["geowarn_devices_sensor_faulty"] == faulty + 1
        assert second["geowarn_devices_status_reporting"] == reporting + 1 - 1  # keys[0] new, keys[2] broken
        assert second["geowarn_devices_online"] == online + 1
        per_size[devices] = (n_first, n_second)

    assert per_size[20] == per_size[200], per_size
    assert max(per_size[200]) < 60, per_size


def test_following_arrivals_keeps_each_series_newest_reading_by_event_time(tmp_path) -> None:
    """``JournalReader.arrivals_since``: the first look gives every series' newest reading by
    event time (drill or not); later looks give only what was stored since, and a series
    created since comes with its newest reading. An older event time arriving later, and a
    duplicate, are what the follower must not take as newer."""
    path = tmp_path / JOURNAL_FILE
    registry = _fleet(2)
    j = Journal(path, sync="normal")
    try:
        ids = sorted(j.series_ids(registry).values())
        a, b, c = ids[0], ids[1], ids[4]
        j.append([(a, 1000, 1.0, 0, 5000), (a, 3000, 1.0, 1, 4000), (a, 2000, 1.0, 0, 9000), (b, 500, 1.0, 0, 4500)])
        reader = JournalReader(path)
        first = reader.arrivals_since(0, 0)
        newest = {sid: (t, r) for sid, _s, _d, _c, t, r in first.series}
        assert newest[a] == (3000, 4000) and newest[b] == (500, 4500) and newest[c] == (None, None)
        assert first.readings == [] and first.last_reading == 4 and first.last_series == max(ids)

        j.append([(c, 200, 1.0, 0, 7000), (a, 2500, 1.0, 0, 8000)])
        j.append([(c, 200, 2.0, 0, 30_000)])  # the same key again: not stored
        later = reader.arrivals_since(first.last_series, first.last_reading)
        assert later.series == [] and sorted(later.readings) == [(a, 2500, 8000), (c, 200, 7000)]
        assert reader.arrivals_since(later.last_series, later.last_reading).readings == []
        # A follower that knew fewer series gets the new ones with their newest reading only.
        partial = reader.arrivals_since(a, first.last_reading)
        assert [(sid, t, r) for sid, _s, _d, _c, t, r in partial.series if sid == c] == [(c, 200, 7000)]
        assert sorted(partial.readings) == [(a, 2500, 8000), (c, 200, 7000)]  # applied twice: harmless

        # In pages of 3 rows: the series first, then the readings; the same newest readings.
        paged: dict[int, tuple[int | None, int | None]] = {}
        after_series = after_reading = pages = 0
        while True:
            got = reader.arrivals_since(after_series, after_reading, limit=3)
            pages += 1
            paged.update({sid: (t, r) for sid, _s, _d, _c, t, r in got.series})
            assert not got.readings  # the first look's seeks saw them all
            after_series, after_reading = got.last_series, got.last_reading
            if not got.more:
                break
        assert pages == -(-len(ids) // 3) + (len(ids) % 3 == 0)
        assert paged[a] == (3000, 4000) and paged[c] == (200, 7000) and after_reading == later.last_reading
        j.append([(a, 9000, 1.0, 0, 40_000), (b, 9000, 1.0, 0, 41_000), (c, 9000, 1.0, 0, 42_000), (a, 9500, 1.0, 0, 43_000)])
        pages_of_readings = []
        while True:
            got = reader.arrivals_since(after_series, after_reading, limit=3)
            pages_of_readings.append(got.readings)
            after_series, after_reading = got.last_series, got.last_reading
            if not got.more:
                break
        assert pages_of_readings == [[(a, 9000, 40_000), (b, 9000, 41_000), (c, 9000, 42_000)], [(a, 9500, 43_000)]]
    finally:
        j.close()


def test_statuses_are_read_in_chunks_with_the_same_figures(tmp_path, monkeypatch) -> None:
    """The first look and the follow read devices' statuses a chunk at a time (a national
    fleet's first look has 250k): the figures do not depend on the chunk."""
    from geowarn.console import metrics

    monkeypatch.setattr(metrics, "STATUS_CHUNK", 7)
    data = tmp_path / "data"
    data.mkdir()
    registry = _fleet(100)
    now_ms = int(time.time() * 1000)
    _write(data, registry, now_ms)
    j = Journal(data / JOURNAL_FILE, sync="normal")
    try:
        # A newer status of every device: the first look must take it, not the earlier ones.
        j.append([], statuses=[(s, d, now_ms - 2 * HOUR, now_ms - 2 * HOUR, json.dumps({"battery_v": 1.0})) for s, d in registry.channels])
    finally:
        j.close()
    reg = make_registry(data, registry, MainStats, time.time, warm_up=False)
    counted = _Counted(monkeypatch)
    first = counted.scrape(reg)
    n = len(registry.channels)
    # Every device's newest status is now the one just written (low: 1.0 V), which arrived last.
    assert first["geowarn_devices_status_reporting"] == n
    assert first["geowarn_devices_battery_low"] == n
    assert first["geowarn_devices_sensor_faulty"] == 0
    j = Journal(data / JOURNAL_FILE, sync="normal")
    try:
        j.append([], statuses=[(s, d, now_ms, now_ms, json.dumps({"battery_v": 12.9})) for s, d in list(registry.channels)[:30]])
    finally:
        j.close()
    second = counted.scrape(reg)
    assert second["geowarn_devices_battery_low"] == n - 30
