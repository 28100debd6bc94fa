"""Degrade, don't die (issue 13, item 4): a real ``geowarn run`` whose data directory is a small
tmpfs that the test fills to the last page, fed by a real Mosquitto broker at QoS 1.

While the disk is full the daemon must stay up, acknowledge nothing it could not make
durable (the broker keeps the rest), keep serving the console, and say it is degraded on
``/healthz`` (503 with the reason) and ``/metrics``; once the filler file is deleted it must
resume by itself — same process, no worker restart — with every reading published stored
exactly once.

Mounting a tmpfs needs root (or CAP_SYS_ADMIN). Without it this test FAILS and says so: a
full disk cannot be made otherwise without lying to SQLite (RLIMIT_FSIZE kills the writer
with SIGXFSZ or fails only the file that grows, not the file system).

Expected readings are the ones the test writes itself.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemonproc import Daemon, publisher
from services import free_port

T0 = float(int(time.time()) - 86400)
TOPIC = "geowarn/BSH/BSH-EXT1/data"
DISK_MB = 32


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A DISK_MB tmpfs mounted at ``tmp_path/data``, unmounted after the test."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0700", "tmpfs", str(data)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(
            f"this test needs to mount a small tmpfs (root or CAP_SYS_ADMIN) to fill a disk for real, and could not: "
            f"`mount -t tmpfs` said {r.stderr.strip() or r.returncode!r}. Run it as root, or in a container with --privileged."
        )
    try:
        yield data
    finally:
        if subprocess.run(["umount", str(data)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(data)], capture_output=True)  # a process still holds a file: detach it


def _fill(directory: Path) -> Path:
    """Write a filler file until the file system has no page left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 12):
            buf = b"\0" * size
            while True:
                try:
                    if os.write(fd, buf) < size:
                        continue  # a short write: the next one says ENOSPC
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    st = os.statvfs(directory)
    assert st.f_bavail * st.f_frsize < 64 * 1024, "the filler did not fill the disk"
    return filler


def _message(seq: int, start: int, n: int) -> bytes:
    readings = [{"ch": "disp", "t": T0 + start + k, "v": round(1.0 + (start + k) / 1000.0, 3)} for k in range(n)]
    return json.dumps({"v": 1, "device": "BSH-EXT1", "seq": seq, "readings": readings}).encode()


def _metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(base + "/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


def _logged_messages(data: Path) -> int:
    conn = sqlite3.connect(f"file:{data / 'messages.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT coalesce(sum(count), 0) FROM batches").fetchone()[0])
    finally:
        conn.close()


def test_a_full_disk_degrades_the_daemon_and_it_resumes_losing_and_duplicating_nothing(small_disk, mosquitto):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Snapshots every second: the detection worker meets the full disk too.
    daemon = Daemon(small_disk, mosquitto.url, extra_env={"GEOWARN_HTTP": f"127.0.0.1:{port}", "GEOWARN_SNAPSHOT_INTERVAL_S": "1"})
    pub = publisher(mosquitto.url)
    expected: dict[int, float] = {}
    published = 0

    def publish(start: int, n: int) -> None:
        nonlocal published
        payload = _message(published, start, n)
        for k in range(n):
            expected[int(round((T0 + start + k) * 1000))] = round(1.0 + (start + k) / 1000.0, 3)
        pub.publish(TOPIC, payload, qos=1).wait_for_publish(10)
        published += 1

    def stored() -> dict[int, float]:
        return {t_ms: v for _s, _d, _c, t_ms, v in daemon.readings()}

    try:
        daemon.start()
        daemon.wait_until(lambda: _get(base + "/healthz") == 200, 20, "the API")
        for i in range(2):
            publish(10 * i, 10)
        daemon.wait_until(lambda: len(stored()) == 20, 30, "the first readings")

        filler = _fill(small_disk)
        # ~45 kB messages: the message log's write-ahead log has to grow, and cannot.
        for i in range(30):
            publish(1000 + 1000 * i, 1000)
        daemon.wait_until(lambda: _get(base + "/healthz") == 503, 30, "/healthz to say degraded")

        health = httpx.get(base + "/healthz", timeout=10)
        assert health.status_code == 503
        doc = health.json()
        assert doc["ok"] is False
        assert "ack" in doc["degraded"] and "full" in doc["degraded"]["ack"], doc
        assert "full" in doc["reason"], doc
        assert doc["disk"]["low"] is True and doc["disk"]["free_bytes"] < 64 * 1024, doc
        # The console still serves.
        assert httpx.get(base + "/", timeout=10).status_code == 200
        m = _metrics(base)
        assert m[("geowarn_degraded", (("part", "ack"),))] == 1.0
        assert m[("geowarn_disk_free_bytes", ())] < 64 * 1024
        assert m[("geowarn_disk_low", ())] == 1.0
        # Nothing acknowledged that is not durable: only the two messages from before.
        assert m[("geowarn_messages_acked_total", ())] == 2.0
        # Degraded for a while: still up, still one process, nothing restarted.
        time.sleep(3)  # the state under test is "nothing happens"; there is no event to wait on
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log_tail()
        assert _metrics(base)[("geowarn_worker_restarts_total", ())] == 0.0
        assert len(stored()) == 20

        filler.unlink()
        daemon.wait_until(lambda: len(stored()) == len(expected), 90, "every reading after the disk was freed")
        daemon.wait_until(lambda: _get(base + "/healthz") == 200, 60, "/healthz back to 200")
        # And it goes on as before.
        publish(50_000, 10)
        daemon.wait_until(lambda: len(stored()) == len(expected), 30, "a reading published after the recovery")

        assert stored() == expected
        assert daemon.count("deadletters") == 0
        assert _logged_messages(small_disk) == published, "a message was logged twice (or lost) by the ack path"
        m = _metrics(base)
        assert m[("geowarn_degraded", (("part", "ack"),))] == 0.0
        assert m[("geowarn_worker_restarts_total", ())] == 0.0
        assert m[("geowarn_messages_acked_total", ())] == float(published)
        assert daemon.starts == 1 and daemon.proc is not None and daemon.proc.poll() is None
        log_text = daemon.log_path.read_text(errors="replace")
        assert "DEGRADED" in log_text and "no longer degraded" in log_text
        daemon.terminate(30)
    finally:
        pub.disconnect()
        pub.loop_stop()
        daemon.close()


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0
