"""Conflicting duplicates and retention in the store stage, on real SQLite files.

A reading is identified by device + channel + time. The same reading again (a redelivery, a
replayed backlog) is a silent no-op; the same key with another value is a conflict: the first
value stays and the message gets its one dead letter, reason ``conflict``. Dead letters and
device status rows are pruned by age, in small batches, against an injected clock.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from geowarn.config.settings import Loaded, load_all
from geowarn.ingest.messagelog import MessageLog
from geowarn.ingest.store import Store

T0 = float(int(time.time()) - 86400)
TOPIC = b"geowarn/BSH/BSH-EXT1/data"
DAY_MS = 86_400_000


def _loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Loaded:
    monkeypatch.setenv("GEOWARN_DATA_DIR", str(tmp_path / "data"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return load_all()


def _msg(seq: int, readings: list[tuple[float, float]], ch: str = "disp") -> bytes:
    return json.dumps({"v": 1, "device": "BSH-EXT1", "seq": seq, "readings": [{"ch": ch, "t": t, "v": v} for t, v in readings]}).encode()


def _query(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _store(loaded: Loaded, published: list | None = None, **kw) -> Store:
    data = Path(loaded.settings.data_dir)
    sink = published if published is not None else []
    return Store(loaded, lambda t, p, r: sink.append((t, p, r)), data / "journal.sqlite", data / "messages.sqlite", **kw)


def _drain(store: Store) -> None:
    while store.step():
        pass


def test_a_conflicting_duplicate_is_dead_lettered_once_and_the_first_value_kept(tmp_path, monkeypatch):
    loaded = _loaded(tmp_path, monkeypatch)
    data = Path(loaded.settings.data_dir)
    log = MessageLog(data / "messages.sqlite")
    now = int(time.time() * 1000)
    t1, t2, t3 = T0, T0 + 60, T0 + 120
    log.append([(TOPIC, _msg(1, [(t1, 1.0), (t2, 2.0)]))], received_ms=now)
    # Later batch: t1 again with another value (conflict), t2 exactly again (no-op), t3 new.
    log.append([(TOPIC, _msg(2, [(t1, 9.5), (t2, 2.0), (t3, 3.0)]))], received_ms=now)
    # Two messages in one batch disagreeing about t3+60: the first one stored wins.
    log.append([(TOPIC, _msg(3, [(T0 + 180, 4.0)])), (TOPIC, _msg(4, [(T0 + 180, 4.25), (T0 + 240, 5.0)]))], received_ms=now)
    published: list = []
    store = _store(loaded, published)
    _drain(store)
    c = store.pipeline.counters
    store.close()
    rows = _query(data / "journal.sqlite", "SELECT t_ms, value FROM readings ORDER BY t_ms")
    assert rows == [(int(T0 * 1000) + 60_000 * k, v) for k, v in enumerate([1.0, 2.0, 3.0, 4.0, 5.0])]
    dls = _query(data / "journal.sqlite", "SELECT reason, detail FROM deadletters ORDER BY id")
    assert [r for r, _ in dls] == ["conflict", "conflict"]
    first, second = dls[0][1], dls[1][1]
    # The detail names the channel, the time, the stored and the new value.
    assert "disp" in first and "1.0" in first and "9.5" in first
    assert time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t1)) in first
    assert "4.0" in second and "4.25" in second
    mqtt = [json.loads(p) for t, p, _ in published if t == "geowarn/deadletter"]
    assert [d["reason"] for d in mqtt] == ["conflict", "conflict"]
    assert c.readings_stored == 5 and c.deadletter_reasons == {"conflict": 2}


def test_a_message_with_conflicts_and_other_rejects_has_one_dead_letter(tmp_path, monkeypatch):
    loaded = _loaded(tmp_path, monkeypatch)
    data = Path(loaded.settings.data_dir)
    log = MessageLog(data / "messages.sqlite")
    now = int(time.time() * 1000)
    log.append([(TOPIC, _msg(1, [(T0 + 60 * k, 1.0) for k in range(10)]))], received_ms=now)
    bad = json.loads(_msg(2, [(T0 + 60 * k, 2.0) for k in range(10)]))
    bad["readings"] += [{"ch": "nope", "t": T0, "v": 1.0}]
    log.append([(TOPIC, json.dumps(bad).encode())], received_ms=now)
    store = _store(loaded)
    _drain(store)
    store.close()
    dls = _query(data / "journal.sqlite", "SELECT reason, detail FROM deadletters")
    assert len(dls) == 1 and dls[0][0] == "conflict"
    assert "11 readings rejected" in dls[0][1] and "conflict 10" in dls[0][1]
    assert _query(data / "journal.sqlite", "SELECT DISTINCT value FROM readings") == [(1.0,)]


def test_redelivery_after_a_crash_makes_no_dead_letters(tmp_path, monkeypatch):
    loaded = _loaded(tmp_path, monkeypatch)
    data = Path(loaded.settings.data_dir)
    log = MessageLog(data / "messages.sqlite")
    now = int(time.time() * 1000)
    msgs = [(TOPIC, _msg(i, [(T0 + 60 * (3 * i + k), float(k)) for k in range(3)])) for i in range(20)]
    log.append(msgs, received_ms=now)
    store = _store(loaded)
    _drain(store)
    store.close()
    # The broker redelivers everything (the acks were lost), and the position is lost too.
    log.append(msgs, received_ms=now)
    conn = sqlite3.connect(data / "journal.sqlite")
    conn.execute("UPDATE state SET value='0' WHERE key='store.message_position'")
    conn.commit()
    conn.close()
    store = _store(loaded)
    _drain(store)
    c = store.pipeline.counters
    store.close()
    assert _query(data / "journal.sqlite", "SELECT count(*) FROM deadletters") == [(0,)]
    assert c.readings_stored == 0 and c.readings_duplicate == 120
    assert _query(data / "journal.sqlite", "SELECT count(*) FROM readings") == [(60,)]
