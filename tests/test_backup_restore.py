"""``geowarn backup`` / ``geowarn restore`` (issue 16, item 4): a running daemon's stores copied
while readings keep arriving, restored into a new data directory, and a daemon started on it
resumes with nothing lost — every reading stored before the backup began is there, and every
message the backed-up message log holds is stored once (none twice).

Real parts: a ``geowarn run`` subprocess, a real Mosquitto broker, the real CLI commands.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from daemonproc import REPO, Daemon, publisher
from geowarn.service.backup import BackupError, restore, verify

pytestmark = pytest.mark.slow

T0 = float(int(time.time()) - 86400)
TOPIC = "geowarn/BSH/BSH-EXT1/data"


def _message(seq: int) -> bytes:
    readings = [{"ch": "disp", "t": T0 + seq * 10 + k, "v": round(1.0 + (seq * 10 + k) / 1000.0, 3)} for k in range(10)]
    return json.dumps({"v": 1, "device": "BSH-EXT1", "seq": seq, "readings": readings}).encode()


def _geowarn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geowarn.service.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _keys(d: Daemon) -> list[tuple[str, str, str, int]]:
    return [(s, dev, ch, t) for s, dev, ch, t, _v in d.readings()]


def test_backup_of_a_running_daemon_restores_with_nothing_lost(tmp_path, mosquitto):
    d = Daemon(tmp_path / "data", mosquitto.url)
    pub = publisher(mosquitto.url)
    seq = 0
    stop = threading.Event()

    def keep_publishing() -> None:
        nonlocal seq
        while not stop.is_set():
            pub.publish(TOPIC, _message(seq), qos=1).wait_for_publish(10)
            seq += 1
            time.sleep(0.005)  # a steady trickle while the backup runs, not a flood

    try:
        d.start()
        for _ in range(100):
            pub.publish(TOPIC, _message(seq), qos=1).wait_for_publish(10)
            seq += 1
        d.wait_until(lambda: d.count() == 1000, 30, "the first 1000 readings stored")
        before = set(_keys(d))
        writer = threading.Thread(target=keep_publishing)
        writer.start()
        time.sleep(0.5)
        r = _geowarn("backup", str(tmp_path / "backups"), "--data-dir", str(d.data_dir))
        time.sleep(0.5)
        stop.set()
        writer.join(30)
        assert r.returncode == 0, r.stderr
        folder = next((tmp_path / "backups").glob("geowarn-backup-*"))
        assert str(folder) in r.stdout
        d.wait_until(lambda: d.count() == seq * 10, 30, "everything published stored in the original")
        d.terminate()
    finally:
        pub.loop_stop()
        d.close()

    manifest = verify(folder)
    names = [f["name"] for f in manifest["files"]]
    assert manifest["order"][:1] == ["journal.sqlite"] and manifest["order"][-1] == "messages.sqlite", manifest["order"]
    assert {"journal.sqlite", "messages.sqlite", "outbox.sqlite", "control.key"} <= set(names)
    journal = next(f for f in manifest["files"] if f["name"] == "journal.sqlite")
    assert journal["schema"] == "journal" and journal["version"] >= 1 and journal["rows"]["readings"] >= 1000

    # The restore command refuses a data directory that has stores, then restores into a new one.
    refused = _geowarn("restore", str(folder), "--data-dir", str(tmp_path / "data"))
    assert refused.returncode == 1 and "not empty" in refused.stderr, refused.stderr
    ok = _geowarn("restore", str(folder), "--data-dir", str(tmp_path / "restored"))
    assert ok.returncode == 0, ok.stderr

    # What the backed-up message log holds is what the restored daemon must end with.
    import sqlite3

    conn = sqlite3.connect(f"file:{folder / 'messages.sqlite'}?mode=ro", uri=True)
    logged = int(conn.execute("SELECT coalesce(sum(count), 0) FROM batches").fetchone()[0])
    conn.close()
    # The backup was taken mid-stream: after the first 100 messages, before the last.
    assert 100 < logged < seq, (logged, seq)
    r2 = Daemon(tmp_path / "restored", mosquitto.url, client_id="geowarn-restored")
    try:
        r2.start()
        r2.wait_until(lambda: r2.count() >= logged * 10, 30, "the restored daemon to store the backed-up message log")
        time.sleep(1.0)  # then nothing more may come (no duplicates): settle, not a wait for an event
        keys = _keys(r2)
        r2.terminate()
    finally:
        r2.close()
    assert len(keys) == len(set(keys)), "a reading stored twice"
    assert before <= set(keys), f"{len(before - set(keys))} readings stored before the backup are missing"
    assert len(keys) == logged * 10, (len(keys), logged)


def test_a_damaged_backup_is_refused_before_anything_is_written(tmp_path, mosquitto):
    d = Daemon(tmp_path / "data", mosquitto.url)
    try:
        d.start()
        r = _geowarn("backup", str(tmp_path / "b"), "--data-dir", str(d.data_dir))
        assert r.returncode == 0, r.stderr
        # A daemon is using the directory: restore refuses even with --force.
        folder = next((tmp_path / "b").glob("geowarn-backup-*"))
        busy = _geowarn("restore", str(folder), "--data-dir", str(d.data_dir), "--force")
        assert busy.returncode == 1 and "daemon is using" in busy.stderr, busy.stderr
        d.terminate()
    finally:
        d.close()
    with (folder / "journal.sqlite").open("r+b") as fh:
        fh.seek(200)
        fh.write(b"\xff")
    target = tmp_path / "new"
    with pytest.raises(BackupError, match="differs from the manifest"):
        restore(folder, target)
    assert not target.exists() or not any(target.iterdir())
    v = _geowarn("restore", str(folder), "--verify-only")
    assert v.returncode == 1 and "journal.sqlite" in v.stderr


def test_force_moves_the_old_stores_aside_instead_of_deleting_them(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    from geowarn.ingest.journal import Journal

    Journal(src / "journal.sqlite").close()
    (src / "control.key").write_text("k")
    from geowarn.service.backup import backup

    folder = backup(src, tmp_path / "b")
    target = tmp_path / "data"
    target.mkdir()
    (target / "journal.sqlite").write_bytes(b"old")
    moved = restore(folder, target, force=True)
    assert moved is not None and (moved / "journal.sqlite").read_bytes() == b"old"
    assert (target / "control.key").read_text() == "k"
    assert Path(target / "journal.sqlite").read_bytes()[:16] == b"SQLite format 3\x00"


def test_a_big_journal_with_a_writer_committing_every_20_ms_is_backed_up(tmp_path):
    """An online backup in small steps restarts at every commit of another connection: on a
    year-sized journal with the store worker writing, it never finished (review of issue 16).
    One read transaction copies it while the writer goes on."""
    import random

    from geowarn.config.registry import load_registry
    from geowarn.config.settings import example_path
    from geowarn.ingest.journal import Journal
    from geowarn.service.backup import backup

    data = tmp_path / "data"
    j = Journal(data / "journal.sqlite", sync="normal")
    series = list(j.series_ids(load_registry(example_path("sites.example.toml"))).values())
    rnd = random.Random(3)
    t0 = 1_767_225_600_000
    for b in range(60):  # 1.2 M readings, ~65 MB
        j.append([(series[i % len(series)], t0 + (b * 20_000 + i) * 1000, rnd.random(), 0, t0) for i in range(20_000)])
    size = (data / "journal.sqlite").stat().st_size + (data / "journal.sqlite-wal").stat().st_size
    assert size > 40e6, size
    stop = threading.Event()
    commits = 0

    def writer() -> None:
        nonlocal commits
        w = Journal(data / "journal.sqlite", sync="normal")
        k = 0
        while not stop.is_set():
            w.append([(series[0], t0 + 10**13 + k * 1000, 1.0, 0, t0)])
            k += 1
            commits += 1
            time.sleep(0.02)  # the store worker's pace under a steady trickle
        w.close()

    th = threading.Thread(target=writer)
    th.start()
    t = time.monotonic()
    try:
        folder = backup(data, tmp_path / "b")
    finally:
        stop.set()
        th.join(10)
        j.close()
    took = time.monotonic() - t
    assert commits > 3, "the writer did not run during the backup"
    manifest = verify(folder)
    rows = next(f for f in manifest["files"] if f["name"] == "journal.sqlite")["rows"]["readings"]
    assert rows >= 1_200_000, rows
    assert took < 60, f"backup took {took:.0f} s"


def test_backups_keep_notify_logs_refuse_the_data_directory_and_restore_as_the_directory_owner(tmp_path):
    import os

    from geowarn.ingest.journal import Journal
    from geowarn.service.backup import backup

    src = tmp_path / "src"
    Journal(src / "journal.sqlite").close()
    (src / "notify").mkdir()
    (src / "notify" / "audit.jsonl").write_text('{"a": 1}\n{"b": 2}\n{"half')  # a line being written
    (src / "cap").mkdir()
    (src / "cap" / "x.xml.tmp").write_text("<half")
    with pytest.raises(BackupError, match="inside the data directory"):
        backup(src, src / "backups")
    assert not (src / "backups").exists()
    folder = backup(src, tmp_path / "b")
    assert (folder / "notify" / "audit.jsonl").read_text() == '{"a": 1}\n{"b": 2}\n'
    assert not (folder / "cap" / "x.xml.tmp").exists()
    assert not list((tmp_path / "b").glob(".*partial"))
    if os.geteuid() != 0:
        return
    target = tmp_path / "svc"
    target.mkdir()
    os.chown(target, 65534, 65534)  # the service's user, not root who runs the restore
    restore(folder, target)
    for p in [target / "journal.sqlite", target / "notify", target / "notify" / "audit.jsonl"]:
        assert (p.stat().st_uid, p.stat().st_gid) == (65534, 65534), p


def test_a_malformed_manifest_is_refused_with_a_reason_not_a_traceback(tmp_path):
    import json

    from geowarn.ingest.journal import Journal
    from geowarn.service.backup import backup

    src = tmp_path / "src"
    Journal(src / "journal.sqlite").close()
    folder = backup(src, tmp_path / "b")
    manifest = json.loads((folder / "manifest.json").read_text())
    for files in ([{"size": 1}], ["journal.sqlite"], [{"name": "../../etc/passwd", "size": 1, "sha256": "x"}], None):
        (folder / "manifest.json").write_text(json.dumps({**manifest, "files": files}))
        with pytest.raises(BackupError, match="malformed|leaves the backup folder"):
            verify(folder)
        r = _geowarn("restore", str(folder), "--verify-only")
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
