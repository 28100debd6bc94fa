"""No single message stops the store stage (issue 13, poison handling).

A lone surrogate in a SenML name, a codec that raises, a row the journal cannot bind, and a
message of 10 000 bad readings: each is one dead letter with its reason, and the messages
behind it are stored. Expected rows are the readings the tests publish themselves.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from daemonproc import REPO, Daemon, Recorder, publisher
from geowarn.config.settings import Loaded, load_all
from geowarn.ingest.codecs import PayloadError, Reject, clean
from geowarn.ingest.messagelog import MessageLog
from geowarn.ingest.store import Store

T0 = float(int(time.time()) - 86400)
TOPIC = b"geowarn/BSH/BSH-EXT1/data"
# JSON text with the escape, as an attacker sends it: valid UTF-8, a lone surrogate once parsed.
SURROGATE_SENML = b'[{"bn":"urn:dev:geowarn:BSH-EXT1:","n":"\\ud800","vs":"x"}]'
SURROGATE_SENML_V = b'[{"bn":"urn:dev:geowarn:BSH-EXT1:","n":"\\ud800","v":1}]'


def _loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Loaded:
    monkeypatch.setenv("GEOWARN_DATA_DIR", str(tmp_path / "data"))
    return load_all()


def _good(i: int, n: int = 1) -> bytes:
    return json.dumps({"v": 1, "device": "BSH-EXT1", "seq": i, "readings": [{"ch": "disp", "t": T0 + 60 * (i * n + k), "v": float(k)} for k in range(n)]}).encode()


def _store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payloads: list[bytes]) -> tuple[Store, list[tuple[str, bytes, bool]]]:
    loaded = _loaded(tmp_path, monkeypatch)
    data = Path(loaded.settings.data_dir)
    log = MessageLog(data / "messages.sqlite")
    log.append([(TOPIC, p) for p in payloads], received_ms=int(time.time() * 1000))
    log.close()
    published: list[tuple[str, bytes, bool]] = []
    return Store(loaded, lambda t, p, r: published.append((t, p, r)), data / "journal.sqlite", data / "messages.sqlite"), published


def _table(store: Store, sql: str) -> list[tuple[Any, ...]]:
    return store.journal.conn.execute(sql).fetchall()


def test_clean_escapes_lone_surrogates_and_keeps_everything_else():
    assert clean("\ud800") == "\\ud800"
    assert clean("a\udfffb") == "a\\udfffb"
    assert clean("Rüfe ⚠ 𝛼") == "Rüfe ⚠ 𝛼"
    assert PayloadError("bad_topic", "x\ud800").detail == "x\\ud800"
    assert Reject("unknown_channel", "\ud800", None).detail == "\\ud800"


@pytest.mark.parametrize("payload", [SURROGATE_SENML, SURROGATE_SENML_V])
def test_a_lone_surrogate_channel_name_is_a_dead_letter_not_a_crash(tmp_path, monkeypatch, payload):
    store, published = _store(tmp_path, monkeypatch, [payload, _good(1)])
    assert store.step() == 2
    assert _table(store, "SELECT value FROM readings") == [(0.0,)]
    [(reason, detail, topic)] = _table(store, "SELECT reason, detail, topic FROM deadletters")
    assert reason in ("not_numeric", "unknown_channel") and "\\ud800" in detail and topic == TOPIC.decode()
    [doc] = [json.loads(p) for t, p, _ in published if t == "geowarn/deadletter"]  # published, not lost to an encode error
    assert doc["reason"] == reason
    store.close()


def test_a_codec_that_raises_dead_letters_the_message_as_poison_and_moves_on(tmp_path, monkeypatch):
    store, published = _store(tmp_path, monkeypatch, [_good(0), b"boom", _good(2)])
    decode = store.pipeline.codec.decode

    def flaky(topic: str, payload: bytes, now: float, size: int | None = None) -> Any:
        if payload == b"boom":
            raise KeyError("a codec bug")
        return decode(topic, payload, now, size)

    monkeypatch.setattr(store.pipeline.codec, "decode", flaky)
    assert store.step() == 3
    assert _table(store, "SELECT value FROM readings") == [(0.0,), (0.0,)]
    [(reason, detail, payload)] = _table(store, "SELECT reason, detail, payload FROM deadletters")
    assert (reason, payload) == ("poison", b"boom") and "KeyError" in detail
    assert [json.loads(p)["reason"] for t, p, _ in published if t == "geowarn/deadletter"] == ["poison"]
    store.close()


def test_a_message_the_journal_cannot_write_is_poison_and_the_rest_of_its_batch_is_stored(tmp_path, monkeypatch):
    store, published = _store(tmp_path, monkeypatch, [_good(0), b"unbindable", _good(2)])
    decode = store.pipeline.codec.decode

    def unbindable(topic: str, payload: bytes, now: float, size: int | None = None) -> Any:
        if payload == b"unbindable":
            d = decode(topic, _good(1), now, size)
            d.readings = [(info, t, object()) for info, t, _ in d.readings]  # type: ignore[misc]  # sqlite cannot bind it
            return d
        return decode(topic, payload, now, size)

    monkeypatch.setattr(store.pipeline.codec, "decode", unbindable)
    assert store.step() == 3
    assert _table(store, "SELECT t_ms FROM readings ORDER BY t_ms") == [(int(T0 * 1000),), (int((T0 + 120) * 1000),)]
    [(reason, detail, payload)] = _table(store, "SELECT reason, detail, payload FROM deadletters")
    assert reason == "poison" and payload == b"unbindable" and "Error" in detail
    assert store.step() == 0  # the position moved past the batch
    store.close()


def test_a_message_of_many_bad_readings_is_one_dead_letter_and_its_good_readings_are_kept(tmp_path, monkeypatch):
    bad = [{"ch": f"nope{k}", "t": T0, "v": 1.0} for k in range(9_997)]
    mixed = bad + [{"ch": "disp", "t": T0, "v": "1"}, {"ch": "disp", "t": T0 + 60, "v": 2.5}, {"ch": "disp", "t": T0 + 120, "v": 3.5}]
    payload = json.dumps({"v": 1, "device": "BSH-EXT1", "readings": mixed}).encode()
    monkeypatch.setenv("GEOWARN_MAX_PAYLOAD_BYTES", str(len(payload)))
    store, published = _store(tmp_path, monkeypatch, [payload])
    store.step()
    assert _table(store, "SELECT value FROM readings ORDER BY t_ms") == [(2.5,), (3.5,)]
    [(reason, detail, kept)] = _table(store, "SELECT reason, detail, payload FROM deadletters")
    assert reason == "unknown_channel"  # the commonest reason names the row
    assert "9998 of 10000 readings rejected" in detail and "not_numeric 1" in detail and "unknown_channel 9997" in detail
    assert len(detail) < 2000 and len(kept) < 2000
    docs = [json.loads(p) for t, p, _ in published if t == "geowarn/deadletter"]
    assert len(docs) == 1
    doc = docs[0]
    assert doc["rejected"] == {"unknown_channel": 9997, "not_numeric": 1}
    assert doc["reading"] == bad[0] and json.loads(doc["payload"]) == bad[0]  # the fields of a one-reading dead letter stay
    assert len(doc["readings"]) == 5
    assert store.pipeline.counters.deadletters == 1
    store.close()


# -- a real broker and daemon ------------------------------------------------------------


@pytest.mark.slow
def test_after_a_surrogate_message_and_a_surrogate_ack_request_the_daemon_stores_what_follows(tmp_path, mosquitto):
    d = Daemon(tmp_path / "data", mosquitto.url)
    d.start()
    dead = Recorder(mosquitto.url, ["geowarn/deadletter"])
    pub = publisher(mosquitto.url)
    try:
        pub.publish("geowarn/BSH/BSH-EXT1/data", SURROGATE_SENML, qos=1).wait_for_publish(10)
        pub.publish("geowarn/ack", b'{"request":"\\ud800"}', qos=1).wait_for_publish(10)
        for i in range(50):
            pub.publish("geowarn/BSH/BSH-EXT1/data", _good(i), qos=1).wait_for_publish(10)
        d.wait_until(lambda: d.count() == 50, timeout=15, message="the 50 good readings behind the poison")
        d.wait_until(lambda: d.count("deadletters") >= 1, timeout=5, message="the dead letter")
        [(reason, detail)] = d.query("SELECT reason, detail FROM deadletters")
        assert reason == "not_numeric" and "\\ud800" in detail
        [(_, p, _)] = dead.take(1)
        assert json.loads(p)["reason"] == "not_numeric"
        # The detection worker still answers requests: an ack of an unknown id gets its refusal.
        env = {**os.environ, "GEOWARN_MQTT_URL": mosquitto.url, "GEOWARN_DATA_DIR": str(d.data_dir)}
        done = subprocess.run(
            [sys.executable, "-m", "geowarn.service.cli", "ack", "no-such-warning", "--wait", "20"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode not in (0, 3), done.stdout + done.stderr  # 3: no answer came
        assert "refused" in (done.stdout + done.stderr).lower(), done.stdout + done.stderr
        time.sleep(2.0)  # a crash-looping worker would be restarted within this (restart back-off is ~1 s)
        log = d.log_path.read_text(errors="replace")
        assert "worker died" not in log, d.log_tail()
        assert d.terminate() < 5.0
    finally:
        pub.loop_stop()
        dead.close()
        d.close()


@pytest.mark.slow
def test_fifty_messages_of_ten_thousand_unknown_channels_make_fifty_dead_letters(tmp_path, mosquitto):
    d = Daemon(tmp_path / "data", mosquitto.url)
    d.start()
    dead = Recorder(mosquitto.url, ["geowarn/deadletter"])
    pub = publisher(mosquitto.url)
    try:
        for i in range(50):
            # SenML keeps 10 000 records under the 256 KiB limit.
            pack: list[dict[str, Any]] = [{"bn": "urn:dev:geowarn:BSH-EXT1:", "bt": T0, "n": "x", "v": 1}]
            pack += [{"n": "x", "v": 1}] * 9_998 + [{"n": "disp", "u": "mm", "t": 60 * i, "v": i}]
            pub.publish("geowarn/BSH/BSH-EXT1/data", json.dumps(pack, separators=(",", ":")).encode(), qos=1).wait_for_publish(10)
        d.wait_until(lambda: d.count() == 50, timeout=60, message="the 50 good readings")
        d.wait_until(lambda: d.count("deadletters") >= 50, timeout=10, message="50 dead letters")
        time.sleep(0.5)
        assert d.count("deadletters") == 50
        assert {r for (r,) in d.query("SELECT reason FROM deadletters")} == {"unknown_channel"}
        assert len(dead.take(50)) == 50
        with pytest.raises(TimeoutError):
            dead.take(1, timeout=1.0)
        assert d.terminate() < 5.0
    finally:
        pub.loop_stop()
        dead.close()
        d.close()
