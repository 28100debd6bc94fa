"""The message log and the store stage: what the ack path logs is decoded into the journal
exactly once, whatever stops where; a dead store worker is replaced by the daemon.

Expected rows are the readings the tests write themselves.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from geowarn.config.settings import Loaded, load_all
from daemonproc import publisher
from geowarn.service.daemon import build_app
from geowarn.ingest.messagelog import MessageLog
from geowarn.ingest.store import POSITION_KEY, Store

T0 = float(int(time.time()) - 86400)
TOPIC = b"geowarn/BSH/BSH-EXT1/data"


def _loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Loaded:
    monkeypatch.setenv("GEOWARN_DATA_DIR", str(tmp_path / "data"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return load_all()


def _msg(i: int, n: int = 1) -> bytes:
    return json.dumps({"v": 1, "device": "BSH-EXT1", "seq": i, "readings": [{"ch": "disp", "t": T0 + 60 * (i * n + k), "v": 1.0 + k} for k in range(n)]}).encode()


def _rows(journal_path: Path) -> list[tuple[int, float]]:
    conn = sqlite3.connect(f"file:{journal_path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT t_ms, value FROM readings ORDER BY t_ms").fetchall()
    finally:
        conn.close()


def _deadletters(journal_path: Path) -> list[tuple[str, bytes]]:
    conn = sqlite3.connect(f"file:{journal_path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT reason, payload FROM deadletters ORDER BY id").fetchall()
    finally:
        conn.close()


def test_the_message_log_keeps_raw_bytes_and_cuts_only_oversized_payloads(tmp_path):
    log = MessageLog(tmp_path / "m.sqlite", max_payload_bytes=2048, keep_bytes=100)
    big = b"x" * 5000
    log.append([(b"a/\xff/b", b"{}"), (TOPIC, big), (TOPIC, b"")], received_ms=1234)
    log.append([(TOPIC, b"second batch")], received_ms=1300)
    rows = log.read_after(0, 10)
    assert [(r.id, r.topic, r.payload, r.size, r.received_ms) for r in rows] == [
        (1, b"a/\xff/b", b"{}", 2, 1234),
        (1, TOPIC, b"x" * 100, 5000, 1234),
        (1, TOPIC, b"", 0, 1234),
        (2, TOPIC, b"second batch", 12, 1300),
    ]
    assert log.read_after(0, 1) == rows[:3]  # whole batches only
    assert log.read_after(1, 10) == rows[3:]


def test_pruning_keeps_the_newest_row_so_positions_never_point_past_new_ids(tmp_path):
    log = MessageLog(tmp_path / "m.sqlite")
    for payload in (b"1", b"2", b"3"):
        log.append([(TOPIC, payload)], received_ms=1000)
    assert log.prune(upto_id=3, older_than_ms=2000) == 2
    log.append([(TOPIC, b"4")], received_ms=3000)
    # A reader at position 3 sees exactly the new message: ids went on from 3, not from 1.
    assert [r.payload for r in log.read_after(3, 10)] == [b"4"]
    # Not yet expanded (id > upto), too recent, or the newest: kept.
    assert log.prune(upto_id=2, older_than_ms=5000) == 0
    assert log.prune(upto_id=3, older_than_ms=500) == 0
    assert log.prune(upto_id=3, older_than_ms=5000) == 1  # 3 is no longer the newest
    assert log.prune(upto_id=4, older_than_ms=5000) == 0
    assert [r.payload for r in log.read_after(0, 10)] == [b"4"]


def test_store_stage_decodes_the_log_into_the_journal_and_resumes_exactly(tmp_path, monkeypatch):
    loaded = _loaded(tmp_path, monkeypatch, GEOWARN_MAX_PAYLOAD_BYTES="2048")
    data = Path(loaded.settings.data_dir)
    published: list[tuple[str, bytes, bool]] = []
    log = MessageLog(data / "messages.sqlite", max_payload_bytes=2048)
    log.append([(TOPIC, _msg(i)) for i in range(5)], received_ms=int(time.time() * 1000))
    log.append([(TOPIC, b"{" + b" " * 100_000 + b"}")], received_ms=int(time.time() * 1000))  # too large: logged cut
    store = Store(loaded, lambda t, p, r: published.append((t, p, r)), data / "journal.sqlite", data / "messages.sqlite")
    assert store.step() == 6  # messages
    assert store.step() == 0
    store.close()
    assert _rows(data / "journal.sqlite") == [(int((T0 + 60 * i) * 1000), 1.0) for i in range(5)]
    dls = _deadletters(data / "journal.sqlite")
    assert [r for r, _ in dls] == ["too_large"] and len(dls[0][1]) == 64 * 1024  # its head is kept as evidence
    assert [json.loads(p)["reason"] for t, p, _ in published if t == "geowarn/deadletter"] == ["too_large"]

    # More messages, one a repeat of an old one; a new Store resumes from its position.
    log.append([(TOPIC, _msg(2)), (TOPIC, _msg(7))], received_ms=int(time.time() * 1000))
    store = Store(loaded, lambda t, p, r: None, data / "journal.sqlite", data / "messages.sqlite")
    assert store.position == 2  # batches
    assert store.step() == 2
    assert store.pipeline.counters.readings_stored == 1 and store.pipeline.counters.readings_duplicate == 1
    assert store.journal.get_state(POSITION_KEY) == 3
    store.close()
    assert _rows(data / "journal.sqlite") == [(int((T0 + 60 * i) * 1000), 1.0) for i in (0, 1, 2, 3, 4, 7)]
    assert len(_deadletters(data / "journal.sqlite")) == 1  # the too-large message was not judged twice
    log.close()


@pytest.mark.slow
def test_a_killed_store_worker_is_replaced_and_nothing_is_lost(tmp_path, monkeypatch, mosquitto):
    loaded = _loaded(tmp_path, monkeypatch, GEOWARN_MQTT_URL=mosquitto.url, GEOWARN_MQTT_CLIENT_ID="geowarn-store-test")
    app = build_app(loaded)
    stop = threading.Event()
    thread = threading.Thread(target=app.run, args=(stop,))
    thread.start()
    pub = publisher(mosquitto.url)
    try:
        assert app.ready.wait(60)
        assert app.link.subscribed.wait(20)  # a new session: what is published before the SUBACK is not for us
        for i in range(50):
            pub.publish(TOPIC.decode(), _msg(i, 3), qos=1).wait_for_publish(10)
        _wait(lambda: len(_rows(app.journal_path)) == 150, "the first 150 readings stored")
        first = app.store.process.pid
        app.store.process.kill()
        for i in range(50, 100):
            pub.publish(TOPIC.decode(), _msg(i, 3), qos=1).wait_for_publish(10)
        _wait(lambda: len(_rows(app.journal_path)) == 300, "all 300 readings stored after the store worker was killed")
        assert app.counters.worker_restarts == 1 and app.store.process.pid != first
        assert app.counters.messages == 100
    finally:
        stop.set()
        thread.join(60)
        pub.disconnect()
        pub.loop_stop()
    assert not thread.is_alive()
    assert _rows(app.journal_path) == [(int((T0 + 60 * k) * 1000), 1.0 + k % 3) for k in range(300)]


def _wait(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_new_message_log_is_decoded_from_the_start_not_skipped(tmp_path, monkeypatch):
    loaded = _loaded(tmp_path, monkeypatch)
    data = Path(loaded.settings.data_dir)
    log = MessageLog(data / "messages.sqlite")
    for i in range(5):
        log.append([(TOPIC, _msg(i))], received_ms=int(time.time() * 1000))
    log.close()
    store = Store(loaded, lambda t, p, r: None, data / "journal.sqlite", data / "messages.sqlite")
    while store.step():
        pass
    assert store.position == 5
    store.close()
    # The log file is lost (or restored from an old backup): its ids start again from 1.
    for name in ("messages.sqlite", "messages.sqlite-wal", "messages.sqlite-shm"):
        (data / name).unlink(missing_ok=True)
    log = MessageLog(data / "messages.sqlite")
    for i in range(5, 8):
        log.append([(TOPIC, _msg(i))], received_ms=int(time.time() * 1000))
    store = Store(loaded, lambda t, p, r: None, data / "journal.sqlite", data / "messages.sqlite")
    assert store.position == 0
    assert store.step() == 3
    store.close()
    log.close()
    assert _rows(data / "journal.sqlite") == [(int((T0 + 60 * i) * 1000), 1.0) for i in range(8)]


# -- a message whose processing fails: retried, then quarantined (issue 13, item 1) ------------


class _Failing:
    """The real codec, failing the way a bug met by one message would: for a payload holding
    ``marker`` the first ``failures`` decodes (every one when None) raise RuntimeError after
    handing over the message's first reading — so the store has already seen its key."""

    def __init__(self, codec, marker: bytes, failures: int | None = None) -> None:
        self.codec, self.marker, self.failures = codec, marker, failures
        self.tries = 0

    def __getattr__(self, name):  # the rest (the rain counters' state, saved and put back per batch) is the codec's
        return getattr(self.codec, name)

    def decode(self, topic, payload, now, size):
        d = self.codec.decode(topic, payload, now, size)
        if self.marker not in payload:
            return d
        self.tries += 1
        if self.failures is not None and self.tries > self.failures:
            return d

        def first_then_fail():
            yield d.readings[0]
            raise RuntimeError("a bug met by this message")

        return dataclasses.replace(d, readings=first_then_fail())


def _reading(seq: int, t: float, v: float) -> bytes:
    return json.dumps({"v": 1, "device": "BSH-EXT1", "seq": seq, "readings": [{"ch": "disp", "t": t, "v": v}]}).encode()


def _store_with(tmp_path, monkeypatch, messages: list[bytes], marker: bytes, failures: int | None):
    loaded = _loaded(tmp_path, monkeypatch)
    data = Path(loaded.settings.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    log = MessageLog(data / "messages.sqlite")
    log.append([(TOPIC, m) for m in messages], received_ms=int(time.time() * 1000))
    log.close()
    published: list[tuple[str, bytes, bool]] = []
    store = Store(loaded, lambda t, p, r: published.append((t, p, r)), data / "journal.sqlite", data / "messages.sqlite")
    codec = _Failing(store.pipeline.codec, marker, failures)
    store.pipeline.codec = codec
    return store, codec, published, data / "journal.sqlite"


def test_a_message_that_fails_once_is_tried_again_not_quarantined(tmp_path, monkeypatch):
    messages = [_reading(1, T0, 1.0), _reading(2, T0 + 60, 2.0), _reading(3, T0 + 120, 3.0)]
    store, codec, published, journal = _store_with(tmp_path, monkeypatch, messages, b'"seq": 2', failures=2)
    assert store.step() == 3
    store.close()
    assert codec.tries == 3
    assert _rows(journal) == [(int(T0 * 1000), 1.0), (int((T0 + 60) * 1000), 2.0), (int((T0 + 120) * 1000), 3.0)]
    assert _deadletters(journal) == [] and published == []


def test_a_message_that_keeps_failing_is_quarantined_once_as_poison_and_the_stage_moves_on(tmp_path, monkeypatch):
    messages = [_reading(1, T0, 1.0), _reading(2, T0 + 60, 2.0), _reading(3, T0 + 120, 3.0)]
    store, codec, published, journal = _store_with(tmp_path, monkeypatch, messages, b'"seq": 2', failures=None)
    assert store.step() == 3
    assert store.step() == 0  # the position moved past it: never tried again
    store.close()
    assert codec.tries == 3  # POISON_TRIES, each in this one step: the stage did not stall
    assert _rows(journal) == [(int(T0 * 1000), 1.0), (int((T0 + 120) * 1000), 3.0)]
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        dls = conn.execute("SELECT reason, detail FROM deadletters").fetchall()
    finally:
        conn.close()
    assert len(dls) == 1 and dls[0][0] == "poison" and dls[0][1].startswith("RuntimeError"), dls
    sent = [json.loads(p) for t, p, _ in published if t == "geowarn/deadletter"]
    assert [d["reason"] for d in sent] == ["poison"]


def test_a_quarantined_message_leaves_no_key_behind_to_make_a_later_reading_a_conflict(tmp_path, monkeypatch):
    # The poison message hands over its reading at T0 (value 9.0) before it fails; the next
    # message of the same batch has the true reading at T0. It must be stored, not refused as
    # a conflict with a value that was never stored.
    messages = [_reading(1, T0, 9.0), _reading(2, T0, 1.0)]
    store, codec, published, journal = _store_with(tmp_path, monkeypatch, messages, b'"v": 9.0', failures=None)
    assert store.step() == 2
    store.close()
    assert _rows(journal) == [(int(T0 * 1000), 1.0)]
    assert [r for r, _ in _deadletters(journal)] == ["poison"]
    assert store.pipeline.counters.readings_conflict == 0


def test_a_worker_restart_is_logged_with_its_cause_and_counted_on_metrics(tmp_path, mosquitto):
    """Worker restarts are a rare event to alert on (issue 13, item 1): the daemon logs each at
    error level with why the worker ended, and /metrics counts them."""
    import os
    import signal

    import httpx

    from daemonproc import Daemon
    from services import free_port

    port = free_port()
    data = tmp_path / "data"
    daemon = Daemon(data, mosquitto.url, extra_env={"GEOWARN_HTTP": f"127.0.0.1:{port}"})
    try:
        daemon.start()
        pid = int((data / "store.lock").read_text().split()[0])  # the holder's record: "PID start parent"
        os.kill(pid, signal.SIGKILL)
        daemon.wait_until(lambda: "worker died; starting a new one" in daemon.log_path.read_text(errors="replace"), 30, "the restart")
        line = next(x for x in daemon.log_path.read_text(errors="replace").splitlines() if "worker died; starting a new one" in x)
        assert " ERROR " in line and "worker=store" in line and 'cause="killed by SIGKILL"' in line, line

        def restarts() -> float:
            for x in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
                if x.startswith("geowarn_worker_restarts_total "):
                    return float(x.split()[1])
            return -1.0

        daemon.wait_until(lambda: restarts() == 1.0, 10, "geowarn_worker_restarts_total 1")
        daemon.terminate(30)
    finally:
        daemon.close()
