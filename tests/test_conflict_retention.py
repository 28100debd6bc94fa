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


# -- retention --------------------------------------------------------------------------------


class FakeClock:
    """Wall and monotonic time the test moves by hand."""

    def __init__(self, wall: float) -> None:
        self.wall, self.mono = wall, 1000.0

    def advance(self, s: float) -> None:
        self.wall += s
        self.mono += s


def _status(device: str, t: float) -> tuple[bytes, bytes]:
    return f"geowarn/BSH/{device}/status".encode(), json.dumps({"device": device, "t": t, "battery_v": 12.4}).encode()


def test_dead_letters_and_statuses_are_pruned_by_age_in_small_batches(tmp_path, monkeypatch):
    from geowarn.ingest import store as store_mod

    monkeypatch.setattr(store_mod, "PRUNE_ROWS", 100)
    monkeypatch.setattr(store_mod, "PRUNE_TRANSACTIONS", 3)
    loaded = _loaded(tmp_path, monkeypatch, GEOWARN_DEADLETTER_KEEP_DAYS="30", GEOWARN_STATUS_KEEP_DAYS="7")
    data = Path(loaded.settings.data_dir)
    journal = data / "journal.sqlite"
    log = MessageLog(data / "messages.sqlite")
    now = time.time()
    old, mid, young = int((now - 40 * 86400) * 1000), int((now - 10 * 86400) * 1000), int((now - 3600) * 1000)
    log.append([(TOPIC, b"not json %d" % i) for i in range(700)], received_ms=old)  # 700 dead letters, 40 days old
    log.append([_status("BSH-EXT1", now - 40 * 86400 + k) for k in range(5)], received_ms=old)
    log.append([_status("BSH-GNSS1", now - 40 * 86400)], received_ms=old)  # its only status: kept however old
    log.append([(TOPIC, b"not json either")] + [_status("BSH-EXT1", now - 10 * 86400)], received_ms=mid)
    log.append([(TOPIC, b"young")] + [_status("BSH-EXT1", now - 3600)], received_ms=young)
    clock = FakeClock(now)
    store = _store(loaded, clock=lambda: clock.wall, monotonic=lambda: clock.mono)
    _drain(store)
    assert _query(journal, "SELECT count(*) FROM deadletters") == [(702,)]
    assert _query(journal, "SELECT count(*) FROM device_status") == [(8,)]

    assert store.step() == 0  # not yet time to prune
    assert _query(journal, "SELECT count(*) FROM deadletters") == [(702,)]
    counts = []
    for _ in range(4):
        clock.advance(store_mod.PRUNE_EVERY_S)
        store.step()
        counts.append(_query(journal, "SELECT count(*) FROM deadletters")[0][0])
    # At most 3 transactions of 100 rows per pass: the 700 old ones go over three passes.
    assert counts == [402, 102, 2, 2]
    assert _query(journal, "SELECT detail FROM deadletters ORDER BY id")[1][0].startswith("payload is not JSON")
    statuses = _query(journal, "SELECT device, received_ms FROM device_status ORDER BY id")
    # EXT1: older than 7 days gone but its newest; GNSS1's only (40-day-old) status stays.
    assert statuses == [("BSH-GNSS1", old), ("BSH-EXT1", young)]

    # A month later the young dead letters go too; a device's newest status never does.
    clock.advance(31 * 86400)
    store.step()
    assert _query(journal, "SELECT count(*) FROM deadletters") == [(0,)]
    assert _query(journal, "SELECT count(*) FROM device_status") == [(2,)]
    store.close()
    log.close()


def test_the_message_log_is_pruned_a_few_ids_per_transaction(tmp_path, monkeypatch):
    from geowarn.ingest import store as store_mod

    monkeypatch.setattr(store_mod, "PRUNE_LOG_IDS", 50)
    monkeypatch.setattr(store_mod, "PRUNE_TRANSACTIONS", 2)
    loaded = _loaded(tmp_path, monkeypatch, GEOWARN_MESSAGE_KEEP_S="60")
    data = Path(loaded.settings.data_dir)
    log = MessageLog(data / "messages.sqlite")
    now = time.time()
    for i in range(250):
        log.append([(TOPIC, _msg(i, [(T0 + 60 * i, 1.0)]))], received_ms=int((now - 3600) * 1000))
    clock = FakeClock(now)
    store = _store(loaded, clock=lambda: clock.wall, monotonic=lambda: clock.mono)
    _drain(store)
    assert store.position == 250
    left = []
    for _ in range(3):
        clock.advance(store_mod.PRUNE_EVERY_S)
        store.step()
        left.append(len(log.read_after(0, 1000)))
    assert left == [150, 50, 1]  # 100 ids a pass; the newest row always stays
    # A new batch: the old last one is no longer the newest and goes; the young one stays.
    log.append([(TOPIC, _msg(300, [(T0 + 60 * 300, 1.0)]))], received_ms=int(clock.wall * 1000))
    clock.advance(store_mod.PRUNE_EVERY_S)
    store.step()
    assert [m.id for m in log.read_after(0, 1000)] == [251]
    log.append([(TOPIC, _msg(301, [(T0 + 60 * 301, 1.0)]))], received_ms=int(clock.wall * 1000))
    clock.advance(store_mod.PRUNE_EVERY_S)
    store.step()
    assert [m.id for m in log.read_after(0, 1000)] == [251, 252]  # younger than message_keep_s
    store.close()
    log.close()
    assert _query(data / "journal.sqlite", "SELECT count(*) FROM readings") == [(252,)]


@pytest.mark.parametrize("key", ["GEOWARN_DEADLETTER_KEEP_DAYS", "GEOWARN_STATUS_KEEP_DAYS"])
def test_keep_days_must_be_positive(tmp_path, monkeypatch, key):
    from geowarn.config.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        _loaded(tmp_path, monkeypatch, **{key: "0"})
    assert key in str(err.value)


@pytest.mark.slow
def test_the_daemon_dead_letters_a_conflict_and_ignores_a_repeat(tmp_path, mosquitto):
    from daemonproc import Daemon, Recorder, publisher

    d = Daemon(tmp_path / "data", mosquitto.url)
    d.start()
    dead = Recorder(mosquitto.url, ["geowarn/deadletter"])
    pub = publisher(mosquitto.url)
    try:
        for payload in (_msg(1, [(T0, 1.5)]), _msg(1, [(T0, 1.5)]), _msg(2, [(T0, 7.25), (T0 + 60, 2.0)])):
            pub.publish(TOPIC.decode(), payload, qos=1).wait_for_publish(10)
        d.wait_until(lambda: d.count() == 2 and d.count("deadletters") == 1, message="two readings and one dead letter")
        [(topic, raw, _)] = dead.take(1)
        doc = json.loads(raw)
        assert doc["reason"] == "conflict" and "1.5" in doc["detail"] and "7.25" in doc["detail"]
        assert [(t, v) for *_, t, v in d.readings()] == [(int(T0 * 1000), 1.5), (int(T0 * 1000) + 60_000, 2.0)]
        assert d.query("SELECT reason FROM deadletters") == [("conflict",)]
    finally:
        pub.disconnect()
        pub.loop_stop()
        dead.close()
        d.close()
