"""The store stage's fast paths (issue 17, item 4) judge exactly what the full checks judge.

The native codec takes the common reading (known channel, numeric time and value, time in
range) without a call per reading, and the store stage takes a reading after its series'
newest without a conflict lookup. These tests sit on the edges where a reading leaves the
fast path: expected readings and reasons are written out by hand from the contract (README,
DESIGN §3), not computed by the code under test. Real SQLite files, real codec and store.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from geowarn.config.registry import load_registry
from geowarn.config.settings import example_path, load_all
from geowarn.ingest.codecs import EARLIEST_T, Codec
from geowarn.ingest.messagelog import MessageLog
from geowarn.ingest.store import Store

NOW = 1795946400.0  # 2026-11-29T10:00:00Z
GNSS = "geowarn/BSH/BSH-GNSS1/data"


def _decode(readings: list[object]) -> tuple[list[tuple[str, float, float]], list[str]]:
    codec = Codec(load_registry(example_path("sites.example.toml")), "geowarn", max_skew_s=300.0)
    d = codec.decode(GNSS, json.dumps({"v": 1, "device": "BSH-GNSS1", "readings": readings}).encode(), NOW)
    return [(i.channel, t, v) for i, t, v in d.readings], [r.reason for r in d.rejects]


def test_the_edges_of_the_fast_path_keep_and_refuse_as_the_contract_says():
    readings, reasons = _decode([
        {"ch": "disp_e", "t": EARLIEST_T, "v": 1.0},  # the earliest time allowed: kept
        {"ch": "disp_e", "t": EARLIEST_T - 0.001, "v": 1.0},  # before 2000: bad_time
        {"ch": "disp_n", "t": NOW + 300.0, "v": 2},  # at the skew limit, integer value: kept, as a float
        {"ch": "disp_n", "t": NOW + 300.001, "v": 2.0},  # beyond it: bad_time
        {"ch": "disp_u", "t": 1795944600, "v": 2**1000, "extra": "ignored"},  # a huge int that fits a float: kept
        {"ch": "disp_u", "t": 1795944601, "v": 10**400},  # an int no float holds: not_finite
        {"ch": "disp_u", "t": 1795944602, "v": True},  # a bool is not a number: not_numeric
        {"ch": "disp_u", "t": 10**400, "v": 1.0},  # a time no float holds: bad_time
        {"ch": "nope", "t": 1795944603, "v": 1.0},  # unknown_channel
        {"ch": "disp_u", "t": "2026-11-29T09:30:00Z", "v": -0.5},  # RFC 3339 time: kept
    ])
    assert readings == [
        ("disp_e", EARLIEST_T, 1.0),
        ("disp_n", NOW + 300.0, 2.0),
        ("disp_u", 1795944600.0, float(2**1000)),
        ("disp_u", 1795944600.0, -0.5),
    ]
    assert all(type(v) is float and type(t) is float for _, t, v in readings)
    assert reasons == ["bad_time", "bad_time", "not_finite", "not_numeric", "bad_time", "unknown_channel"]


def _msg(seq: int, readings: list[tuple[float, float]]) -> bytes:
    return json.dumps({"v": 1, "device": "BSH-EXT1", "seq": seq, "readings": [{"ch": "disp", "t": t, "v": v} for t, v in readings]}).encode()


def test_conflicts_are_found_in_and_across_batches_whatever_the_order(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOWARN_DATA_DIR", str(tmp_path / "data"))
    loaded = load_all()
    data = Path(loaded.settings.data_dir)
    t0 = float(int(time.time()) - 86400)
    log = MessageLog(data / "messages.sqlite")
    now_ms = int(time.time() * 1000)
    topic = b"geowarn/BSH/BSH-EXT1/data"
    # One batch: in order, then the same key again (same value: a repeat; another value: a
    # conflict), then an older time not seen before (stored), then its conflicting twin.
    log.append([
        (topic, _msg(0, [(t0, 1.0), (t0 + 60, 2.0), (t0 + 120, 3.0)])),
        (topic, _msg(1, [(t0 + 60, 2.0), (t0 + 120, 9.0)])),
        (topic, _msg(2, [(t0 - 60, 0.5), (t0 - 60, 0.7), (t0 + 180, 4.0)])),
    ], now_ms)
    published: list[tuple[str, bytes, bool]] = []
    store = Store(loaded, lambda t, p, r: published.append((t, p, r)), data / "journal.sqlite", data / "messages.sqlite")
    assert store.step() == 3
    # A later batch: a key stored in the first (another value: conflict), and new ones after.
    log.append([(topic, _msg(3, [(t0 + 180, 4.5), (t0 + 240, 5.0), (t0 + 240, 5.0)]))], now_ms)
    assert store.step() == 1
    store.close()
    log.close()
    conn = sqlite3.connect(f"file:{data / 'journal.sqlite'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT t_ms, value FROM readings ORDER BY t_ms").fetchall()
        dead = conn.execute("SELECT reason, detail FROM deadletters ORDER BY id").fetchall()
    finally:
        conn.close()
    ms = lambda t: round(t * 1000)
    assert rows == [(ms(t0 - 60), 0.5), (ms(t0), 1.0), (ms(t0 + 60), 2.0), (ms(t0 + 120), 3.0), (ms(t0 + 180), 4.0), (ms(t0 + 240), 5.0)]
    assert [r for r, _ in dead] == ["conflict", "conflict", "conflict"]
    assert "stored 3.0, new 9.0" in dead[0][1] and "stored 0.5, new 0.7" in dead[1][1] and "stored 4.0, new 4.5" in dead[2][1]


@pytest.mark.parametrize("raw", [b"geowarn/BSH/BSH-EXT1/data", b"geowarn/BSH/\xff/data"])
def test_a_topic_seen_before_is_judged_as_the_first_time(tmp_path, monkeypatch, raw):
    """The store remembers each raw topic's text; an invalid UTF-8 topic is dead-lettered every
    time it comes, a good one stored every time."""
    monkeypatch.setenv("GEOWARN_DATA_DIR", str(tmp_path / "data"))
    loaded = load_all()
    data = Path(loaded.settings.data_dir)
    t0 = float(int(time.time()) - 86400)
    log = MessageLog(data / "messages.sqlite")
    store = Store(loaded, lambda t, p, r: None, data / "journal.sqlite", data / "messages.sqlite")
    for i in range(3):
        log.append([(raw, _msg(i, [(t0 + i, 1.0)]))], int(time.time() * 1000))
        assert store.step() == 1
    c = store.pipeline.counters
    if b"\xff" in raw:
        assert (c.readings_stored, c.deadletters) == (0, 3)
    else:
        assert (c.readings_stored, c.deadletters) == (3, 0)
    store.close()
    log.close()
