"""Conflicting duplicates per device, for the console (issue 13, item 2).

The store stage refuses a reading whose device, channel and time are stored with another value
(a dead letter of reason ``conflict``) before detection sees it, so a device's clock health
never counts it. The console counts them per device from the dead letters of a recent window,
at a bounded cost however many dead letters there are.

Expected counts come from the messages sent: each reading that repeats a stored key with
another value is one conflict; a message's one dead letter may hold several, or hold them
under another reason when other rejects are more common.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from geowarn.config.settings import Loaded, load_all
from geowarn.console.views import CONFLICT_WINDOW_S, Views
from geowarn.ingest.journal import JournalReader
from geowarn.ingest.messagelog import MessageLog
from geowarn.ingest.store import Store

T0 = float(int(time.time()) - 86400)
EXT = b"geowarn/BSH/BSH-EXT1/data"
GNSS = b"geowarn/BSH/BSH-GNSS1/data"


def _loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Loaded:
    monkeypatch.setenv("GEOWARN_DATA_DIR", str(tmp_path / "data"))
    return load_all()


def _msg(device: str, seq: int, readings: list[tuple[str, float, float]]) -> bytes:
    return json.dumps({"v": 1, "device": device, "seq": seq, "readings": [{"ch": c, "t": t, "v": v} for c, t, v in readings]}).encode()


def _store_all(loaded: Loaded, batches: list[tuple[list[tuple[bytes, bytes]], int]]) -> None:
    data = Path(loaded.settings.data_dir)
    log = MessageLog(data / "messages.sqlite")
    for messages, received_ms in batches:
        log.append(messages, received_ms=received_ms)
    log.close()
    store = Store(loaded, lambda t, p, r: None, data / "journal.sqlite", data / "messages.sqlite")
    while store.step():
        pass
    store.close()


def _conflicts_fixture(loaded: Loaded, now_ms: int) -> None:
    """BSH-EXT1 stores 10 readings, then sends: one conflict alone; a message of 3 conflicts,
    1 repeat and 1 unknown channel (dead letter ``conflict``, 3 in its tally); a message of 1
    conflict and 2 unknown channels (dead letter ``unknown_channel``, its conflict in the
    tally). BSH-GNSS1: 1 conflict. EXT1: 1 + 3 + 1 = 5 conflicts, GNSS1: 1."""
    ext = [("disp", T0 + 60 * k, float(k)) for k in range(10)]
    gnss = [("disp_e", T0, 0.5)]
    later = [
        (EXT, _msg("BSH-EXT1", 2, [("disp", T0, 100.0)])),
        (EXT, _msg("BSH-EXT1", 3, [("disp", T0 + 60, 101.0), ("disp", T0 + 120, 102.0), ("disp", T0 + 180, 103.0),
                                   ("disp", T0 + 240, 4.0), ("nope", T0, 1.0)])),
        (EXT, _msg("BSH-EXT1", 4, [("disp", T0 + 300, 105.0), ("nope", T0, 1.0), ("nope2", T0, 1.0)])),
        (GNSS, _msg("BSH-GNSS1", 2, [("disp_e", T0, 0.75)])),
    ]
    _store_all(loaded, [([(EXT, _msg("BSH-EXT1", 1, ext)), (GNSS, _msg("BSH-GNSS1", 1, gnss))], now_ms), (later, now_ms)])


def test_conflicts_refused_by_the_store_are_counted_per_device(tmp_path, monkeypatch):
    loaded = _loaded(tmp_path, monkeypatch)
    data = Path(loaded.settings.data_dir)
    now = time.time()
    now_ms = int(now * 1000)
    _conflicts_fixture(loaded, now_ms)
    reader = JournalReader(data / "journal.sqlite")
    # The three dead letters of EXT1 under two reasons, as the store stage wrote them.
    assert reader.deadletter_counts() == {"conflict": 3, "unknown_channel": 1}

    got = reader.refused_conflicts(now_ms - 1000, 100)
    assert got.by_device == {("BSH", "BSH-EXT1"): 5, ("BSH", "BSH-GNSS1"): 1}
    assert got.complete
    # The window: dead letters that arrived before it are not counted.
    assert reader.refused_conflicts(now_ms + 1, 100).by_device == {}

    # The site's device health, as /api/sites/{site} shows it.
    views = Views(data, loaded.registry)
    devices = {d["device"]: d for d in views.site_summary("BSH", now, conflicts=True)["devices"]}
    assert devices["BSH-EXT1"]["conflicts_refused"] == 5
    assert devices["BSH-GNSS1"]["conflicts_refused"] == 1
    assert {d["conflicts_refused"] for name, d in devices.items() if name not in ("BSH-EXT1", "BSH-GNSS1")} == {0}
    # The list of every site reads no dead letters.
    assert all("conflicts_refused" not in d for d in views.site_summary("BSH", now)["devices"])
    # A week later the window has passed them.
    assert views.refused_conflicts(now + CONFLICT_WINDOW_S + 60).by_device == {}


def test_counting_conflicts_reads_a_bounded_number_of_dead_letters(tmp_path, monkeypatch):
    """A flood of dead letters newer than the conflicts: only the newest ``max_deadletters``
    are read, and the answer says it is not complete."""
    loaded = _loaded(tmp_path, monkeypatch)
    data = Path(loaded.settings.data_dir)
    now_ms = int(time.time() * 1000)
    _conflicts_fixture(loaded, now_ms - 60_000)
    # 300 malformed messages after them: 300 dead letters of another reason, none a conflict.
    _store_all(loaded, [([(EXT, b"{not json")] * 300, now_ms)])
    reader = JournalReader(data / "journal.sqlite")
    assert sum(reader.deadletter_counts().values()) == 304

    bounded = reader.refused_conflicts(now_ms - 3_600_000, 300)
    assert (bounded.by_device, bounded.complete) == ({}, False)
    whole = reader.refused_conflicts(now_ms - 3_600_000, 304 + 1)
    assert (whole.by_device, whole.complete) == ({("BSH", "BSH-EXT1"): 5, ("BSH", "BSH-GNSS1"): 1}, True)


@pytest.mark.slow
def test_the_console_shows_each_devices_refused_conflicts(tmp_path, mosquitto):
    """A real daemon: BSH-EXT1 sends a reading, then two messages contradicting it and the one
    after it (3 conflicting readings, 2 dead letters). /api/clock lists the device with its 3
    refused conflicts though its clock health saw none; the site's device health shows them;
    another county's token sees nothing."""
    import httpx

    from daemonproc import Daemon, publisher
    from services import free_port
    from test_api import create_token, wait_for

    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    daemon = Daemon(data, mosquitto.url, extra_env={"GEOWARN_HTTP": f"127.0.0.1:{port}"})
    token = create_token(data, "county", "420527", "zigui-duty")
    other = create_token(data, "county", "420526", "xingshan-duty")
    base = f"http://127.0.0.1:{port}"
    daemon.start()
    pub = publisher(mosquitto.url, client_id="conflict-counts")
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    try:
        wait_for(lambda: httpx.get(base + "/healthz", timeout=5).status_code == 200, 20, "the API", daemon)
        t = float(int(time.time()) - 600)
        for payload in (_msg("BSH-EXT1", 1, [("disp", t, 1.0), ("disp", t + 60, 2.0)]),
                        _msg("BSH-EXT1", 2, [("disp", t, 1.5)]),
                        _msg("BSH-EXT1", 3, [("disp", t, 1.75), ("disp", t + 60, 2.5), ("disp", t + 120, 3.0)])):
            pub.publish(EXT.decode(), payload, qos=1).wait_for_publish(10)
        daemon.wait_until(lambda: daemon.count() == 3 and daemon.count("deadletters") == 2, 30, "three readings and two dead letters")

        doc = api.get("/api/clock").json()
        [dev] = doc["devices"]
        assert (dev["device"], dev["site"], dev["trouble"], dev["conflicts_refused"]) == ("BSH-EXT1", "BSH", False, 3)
        assert doc["devices_in_trouble"] == 0 and doc["conflicts_complete"] is True
        assert doc["conflicts_window_days"] == CONFLICT_WINDOW_S / 86400.0
        assert doc["deadletters_conflict"] == 2
        site = api.get("/api/sites/BSH").json()
        refused = {d["device"]: d["conflicts_refused"] for d in site["devices"]}
        assert refused["BSH-EXT1"] == 3 and all(n == 0 for d, n in refused.items() if d != "BSH-EXT1")
        assert httpx.get(base + "/api/clock", headers={"Authorization": f"Bearer {other}"}, timeout=30).json()["devices"] == []
        daemon.terminate()
    finally:
        pub.disconnect()
        pub.loop_stop()
        api.close()
        daemon.close()
