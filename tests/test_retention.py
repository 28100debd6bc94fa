"""Retention by size and the optional journal retention, on real SQLite files.

Dead letters and device status stay under their size caps after a flood, the oldest going
first (a device's newest status never); the audit trail is pruned by age and by the file's
used pages where it is written; readings are pruned only when ``journal_keep_days`` is set,
and then never one the forwarder has not sent, detection has not judged and snapshotted past,
or detection would re-read on a start without a snapshot. Bad settings stop the start with
the key and the reason. Clocks are injected: time moves, nobody sleeps.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from geowarn.config.errors import ConfigError
from geowarn.config.settings import Loaded, load_all
from geowarn.ingest.journal import DETECTION_STATS_KEY, Journal
from geowarn.ingest.messagelog import MessageLog
from geowarn.ingest.store import Store

TOPIC = b"geowarn/BSH/BSH-EXT1/data"
DAY_MS = 86_400_000
MB = 1024 * 1024


def _loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Loaded:
    monkeypatch.setenv("GEOWARN_DATA_DIR", str(tmp_path / "data"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return load_all()


def _query(path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


class FakeClock:
    def __init__(self, wall: float) -> None:
        self.wall, self.mono = wall, 1000.0

    def advance(self, s: float) -> None:
        self.wall += s
        self.mono += s


def _store(loaded: Loaded, clock: FakeClock) -> Store:
    data = Path(loaded.settings.data_dir)
    return Store(loaded, lambda t, p, r: None, data / "journal.sqlite", data / "messages.sqlite",
                 clock=lambda: clock.wall, monotonic=lambda: clock.mono)


def _pass(store: Store, clock: FakeClock) -> None:
    from geowarn.ingest import store as store_mod

    clock.advance(store_mod.PRUNE_EVERY_S)
    while store.step():
        pass


def _flood_message(seq: int, n: int = 10_000) -> bytes:
    """One message of ``n`` readings on a channel the registry does not know."""
    t0 = time.time() - 3600
    return json.dumps({"v": 1, "device": "BSH-EXT1", "seq": seq,
                       "readings": [{"ch": "nope", "t": t0 + i, "v": float(i)} for i in range(n)]}).encode()


def _dead_bytes(journal: Path) -> int:
    """The dead letters' bytes, counted here independently of the code's estimate."""
    return sum(len(t.encode()) + len(r.encode()) + len(d.encode()) + len(p or b"")
               for t, r, d, p in _query(journal, "SELECT topic, reason, detail, payload FROM deadletters"))


def test_dead_letters_stay_under_their_size_cap_after_a_flood_oldest_first(tmp_path, monkeypatch):
    loaded = _loaded(tmp_path, monkeypatch, GEOWARN_DEADLETTER_KEEP_MB="1")
    data = Path(loaded.settings.data_dir)
    journal = data / "journal.sqlite"
    log = MessageLog(data / "messages.sqlite")
    clock = FakeClock(time.time())
    store = _store(loaded, clock)
    sizes = []
    for wave in range(2):
        # 50 messages of 10,000 unknown-channel readings each: too large for the default
        # max_payload_bytes, so each is one dead letter keeping 64 KiB of its payload.
        for i in range(50):
            log.append([(TOPIC, _flood_message(wave * 50 + i))], received_ms=int(clock.wall * 1000))
            if i % 10 == 9:
                _pass(store, clock)
        _pass(store, clock)
        sizes.append(journal.stat().st_size)
    ids = [r[0] for r in _query(journal, "SELECT id FROM deadletters ORDER BY id")]
    assert _dead_bytes(journal) <= 1 * MB
    # The newest stay, contiguous up to the last one: only the oldest went, and no more than
    # needed (each is ~64 KiB: a 1 MiB cap keeps about 15 of them).
    assert ids == list(range(ids[0], 101)) and 13 <= len(ids) <= 16, ids
    assert store.retention.sizes["deadletters"].rows == len(ids)
    # Freed pages are reused: the second flood does not grow the file much.
    assert sizes[1] <= sizes[0] * 1.2 + 256 * 1024, sizes
    store.close()
    log.close()


def test_the_running_size_matches_a_recount_after_age_pruning_empties_the_table(tmp_path, monkeypatch):
    # Deleting the newest row makes SQLite reuse its id: the running size must still count
    # the rows that arrive after that.
    loaded = _loaded(tmp_path, monkeypatch, GEOWARN_DEADLETTER_KEEP_DAYS="1", GEOWARN_DEADLETTER_KEEP_MB="1")
    data = Path(loaded.settings.data_dir)
    journal = data / "journal.sqlite"
    log = MessageLog(data / "messages.sqlite")
    clock = FakeClock(time.time())
    store = _store(loaded, clock)
    log.append([(TOPIC, b"x" * 60_000 + b"%d" % i) for i in range(10)], received_ms=int(clock.wall * 1000))
    _pass(store, clock)
    assert len(_query(journal, "SELECT id FROM deadletters")) == 10
    clock.advance(2 * 86400)
    _pass(store, clock)
    assert _query(journal, "SELECT count(*) FROM deadletters") == [(0,)]
    log.append([(TOPIC, b"y" * 60_000 + b"%d" % i) for i in range(30)], received_ms=int(clock.wall * 1000))
    for _ in range(3):
        _pass(store, clock)
    left = _query(journal, "SELECT id FROM deadletters ORDER BY id")
    assert _dead_bytes(journal) <= MB and 14 <= len(left) <= 17 and left[-1] == (30,), left
    store.close()
    log.close()


def test_status_stays_under_its_size_cap_and_each_devices_newest_stays(tmp_path, monkeypatch):
    loaded = _loaded(tmp_path, monkeypatch, GEOWARN_STATUS_KEEP_MB="1")
    data = Path(loaded.settings.data_dir)
    journal_path = data / "journal.sqlite"
    clock = FakeClock(time.time())
    store = _store(loaded, clock)
    now_ms = int(clock.wall * 1000)
    j = Journal(journal_path)
    big = json.dumps({"battery_v": 12.4, "note": "z" * 2000})
    j.append([], statuses=[("BSH", "BSH-GNSS1", now_ms - 5000, now_ms - 5000, big)])  # its only status
    for k in range(20):
        j.append([], statuses=[("BSH", "BSH-EXT1", now_ms + i, now_ms + i, big) for i in range(k * 100, k * 100 + 100)])
    j.close()
    for _ in range(3):
        _pass(store, clock)
    rows = _query(journal_path, "SELECT id, device, length(status) FROM device_status ORDER BY id")
    assert sum(n for *_, n in rows) <= MB
    assert rows[0][:2] == (1, "BSH-GNSS1")  # the oldest row of all, but GNSS1's newest
    ext = [r[0] for r in rows[1:]]
    assert ext == list(range(ext[0], 2002)) and len(ext) >= 400, ext  # the newest of EXT1, contiguous
    store.close()


# -- the optional journal retention -----------------------------------------------------------------


def _readings_setup(tmp_path, monkeypatch, **env: str):
    loaded = _loaded(tmp_path, monkeypatch, **env)
    data = Path(loaded.settings.data_dir)
    clock = FakeClock(time.time())
    store = _store(loaded, clock)
    series = {(i.device, i.channel): sid for i, sid in store.journal.series_ids(loaded.registry).items()}
    active, silent = series[("BSH-EXT1", "disp")], series[("BSH-GNSS1", "disp_e")]
    now_ms = int(clock.wall * 1000)
    old = now_ms - 10 * DAY_MS
    rows = []
    # The silent channel: 48 hourly readings ending 20 days ago; arrived then.
    for h in range(48):
        t = now_ms - 22 * DAY_MS + h * 3_600_000
        rows.append((silent, t, 1.0, 0, t))
    # The active channel: a reading an hour for 10 days, arrived on time; then young ones.
    for h in range(10 * 24 + 1):
        t = old + h * 3_600_000
        rows.append((active, t, float(h), 0, t))
    j = Journal(data / "journal.sqlite")
    j.append(rows)
    j.close()
    return loaded, data / "journal.sqlite", store, clock, active, silent


def _recent(path: Path, sid: int, horizon_ms: int) -> list[tuple]:
    """What detection re-reads for a series when it starts without a snapshot."""
    latest = _query(path, "SELECT max(t_ms) FROM readings WHERE series=?", (sid,))[0][0]
    return _query(path, "SELECT t_ms, value FROM readings WHERE series=? AND t_ms >= ? ORDER BY t_ms", (sid, latest - horizon_ms - 1))


def test_readings_are_kept_forever_by_default(tmp_path, monkeypatch):
    loaded, path, store, clock, *_ = _readings_setup(tmp_path, monkeypatch)
    n = _query(path, "SELECT count(*) FROM readings")[0][0]
    store.journal.set_state(DETECTION_STATS_KEY, {"position": n})
    _pass(store, clock)
    assert _query(path, "SELECT count(*) FROM readings") == [(n,)]
    store.close()


def test_journal_retention_keeps_what_is_unjudged_unforwarded_young_or_in_detections_window(tmp_path, monkeypatch):
    from geowarn.ingest import store as store_mod
    from geowarn.ingest.forwarder import POSITION_KEY

    monkeypatch.setattr(store_mod, "PRUNE_ROWS", 50)
    loaded, path, store, clock, active, silent = _readings_setup(
        tmp_path, monkeypatch, GEOWARN_JOURNAL_KEEP_DAYS="3",
        GEOWARN_INFLUX_URL="http://127.0.0.1:9", GEOWARN_INFLUX_BUCKET="b",
    )
    horizon_ms = int(max(site.policy.velocity_window_s for site in loaded.registry.sites.values()) * 1000)
    assert horizon_ms == 6 * 3_600_000  # the example sites' velocity window, which the ids below assume
    before = {sid: _recent(path, sid, horizon_ms) for sid in (active, silent)}
    all_ids = [r[0] for r in _query(path, "SELECT id FROM readings ORDER BY id")]
    n = len(all_ids)

    # No snapshot yet (detection has not saved its position): nothing goes.
    _pass(store, clock)
    assert _query(path, "SELECT count(*) FROM readings") == [(n,)]

    # Detection has snapshotted everything, the forwarder has sent only up to id 100.
    store.journal.set_state(DETECTION_STATS_KEY, {"position": n})
    store.journal.set_state(POSITION_KEY, 100)
    for _ in range(3):
        _pass(store, clock)
    left = [r[0] for r in _query(path, "SELECT id FROM readings ORDER BY id")]
    # Of ids 1..100: the silent channel's last 6 hours stay (ids 42..48 are within 6 h of its
    # newest reading at id 48); everything above the forwarder's position stays.
    assert left == [i for i in all_ids if i > 100 or 42 <= i <= 48]

    # The forwarder catches up; detection has snapshotted only to id 200.
    store.journal.set_state(POSITION_KEY, n)
    store.journal.set_state(DETECTION_STATS_KEY, {"position": 200})
    for _ in range(3):
        _pass(store, clock)
    left = [r[0] for r in _query(path, "SELECT id FROM readings ORDER BY id")]
    assert left == [i for i in all_ids if i > 200 or 42 <= i <= 48]

    # Everything judged and sent: what arrived within 3 days stays, older goes, and the
    # detectors' window of every series is what it was.
    store.journal.set_state(DETECTION_STATS_KEY, {"position": n})
    for _ in range(4):
        _pass(store, clock)
    rows = _query(path, "SELECT id, series, received_ms FROM readings ORDER BY id")
    cutoff = int(clock.wall * 1000) - 3 * DAY_MS
    assert all(r[2] >= cutoff for r in rows if r[1] == active)
    # The active channel's readings arrived hourly over 10 days up to now: 3 days' worth (72
    # hours, both ends counted) are young.
    assert sum(1 for r in rows if r[1] == active) in (72, 73)
    assert rows[-1][0] == n  # the newest reading stays: its id must never be handed out again
    assert {sid: _recent(path, sid, horizon_ms) for sid in (active, silent)} == before
    store.close()


def test_journal_retention_without_forwarding_waits_only_for_detection_and_keeps_the_newest(tmp_path, monkeypatch):
    loaded, path, store, clock, active, silent = _readings_setup(tmp_path, monkeypatch, GEOWARN_JOURNAL_KEEP_DAYS="2")
    n = _query(path, "SELECT count(*) FROM readings")[0][0]
    store.journal.set_state(DETECTION_STATS_KEY, {"position": n})
    clock.advance(30 * 86400)  # every reading is old now
    for _ in range(3):
        _pass(store, clock)
    rows = _query(path, "SELECT id, series FROM readings ORDER BY id")
    # Each series keeps its newest 6 hours (7 hourly readings), and the newest id stays.
    assert [r[0] for r in rows] == list(range(42, 49)) + list(range(n - 6, n + 1))
    # The next reading gets the next id: the saved positions still mean what they meant.
    store.journal.append([(active, int(clock.wall * 1000), 1.0, 0, int(clock.wall * 1000))])
    assert store.journal.last_id() == n + 1
    store.close()


def test_the_forwarders_position_key_is_the_one_retention_honours():
    from geowarn.ingest.forwarder import POSITION_KEY
    from geowarn.ingest.retention import FORWARDER_POSITION_KEY

    assert FORWARDER_POSITION_KEY == POSITION_KEY


# -- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("GEOWARN_DEADLETTER_KEEP_MB", "0", "greater than or equal to 1"),
    ("GEOWARN_STATUS_KEEP_MB", "-5", "greater than or equal to 1"),
    ("GEOWARN_AUDIT_KEEP_DAYS", "0.5", "greater than or equal to 1"),
    ("GEOWARN_AUDIT_KEEP_MB", "lots", "valid number"),
    ("GEOWARN_JOURNAL_KEEP_DAYS", "1", "greater than or equal to 2"),
    ("GEOWARN_JOURNAL_KEEP_DAYS", "forever", "number of days (at least 2) or off"),
])
def test_a_bad_retention_setting_stops_the_start_with_key_and_reason(tmp_path, monkeypatch, key, value, reason):
    with pytest.raises(ConfigError) as err:
        _loaded(tmp_path, monkeypatch, **{key: value})
    assert key in str(err.value) and reason in str(err.value)


def test_a_bad_retention_setting_in_the_file_names_the_file_and_key(tmp_path, monkeypatch):
    cfg = tmp_path / "geowarn.toml"
    cfg.write_text("audit_keep_days = -1\n")
    monkeypatch.setenv("GEOWARN_CONFIG", str(cfg))
    with pytest.raises(ConfigError) as err:
        _loaded(tmp_path, monkeypatch)
    assert str(cfg) in str(err.value) and "audit_keep_days" in str(err.value) and "greater than or equal to 1" in str(err.value)


def test_retention_defaults(tmp_path, monkeypatch):
    s = _loaded(tmp_path, monkeypatch).settings
    assert (s.deadletter_keep_mb, s.status_keep_mb, s.audit_keep_days, s.audit_keep_mb, s.journal_keep_days) == (256.0, 64.0, 400.0, 256.0, None)
    assert _loaded(tmp_path, monkeypatch, GEOWARN_JOURNAL_KEEP_DAYS="off").settings.journal_keep_days is None


# -- across processes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_daemon_caps_dead_letters_in_its_store_worker_and_prunes_the_audit_in_its_api(tmp_path, mosquitto):
    from daemonproc import Daemon, publisher
    from services import free_port

    from geowarn.console.tokens import TokenStore

    data = tmp_path / "data"
    now = time.time()
    with TokenStore(data / "tokens.sqlite") as tokens:  # an audit from before retention existed
        for days in (700, 600, 500):
            tokens.audit(now - days * 86400, None, "POST /api/x", "t", "127.0.0.1", "ok")
        tokens.audit(now - 86400, None, "POST /api/x", "t", "127.0.0.1", "ok")
    d = Daemon(data, mosquitto.url, extra_env={"GEOWARN_DEADLETTER_KEEP_MB": "1", "GEOWARN_HTTP": f"127.0.0.1:{free_port()}"})
    d.start()
    pub = publisher(mosquitto.url)
    try:
        audit = sqlite3.connect(f"file:{data / 'tokens.sqlite'}?mode=ro", uri=True)
        assert [round((now - t) / 86400) for (t,) in audit.execute("SELECT t FROM audit ORDER BY id")] == [1]
        audit.close()
        for i in range(50):
            pub.publish(TOPIC.decode(), _flood_message(i), qos=1).wait_for_publish(10)

        def capped() -> bool:
            newest = d.query("SELECT coalesce(max(id), 0) FROM deadletters")[0][0]
            size = d.query("SELECT coalesce(sum(length(payload) + length(detail) + length(topic) + length(reason)), 0) FROM deadletters")[0][0]
            return newest == 50 and size <= 1024 * 1024

        d.wait_until(capped, timeout=60, message="50 dead letters, the oldest pruned to 1 MB")
        ids = [r[0] for r in d.query("SELECT id FROM deadletters ORDER BY id")]
        assert ids == list(range(ids[0], 51)) and len(ids) >= 13, ids
    finally:
        pub.disconnect()
        pub.loop_stop()
        d.close()
