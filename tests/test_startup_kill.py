"""Start-up survives SIGKILL at any instant (issue 13, item 3).

A daemon killed while it starts (its workers spawning, taking their locks, resuming) must
leave nothing behind: no worker hangs on as an orphan holding its lock, and the next daemon
on the same data dir is online within 30 s. The kill moments are random but seeded, so a
failure can be replayed.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time

import psutil
import pytest

from daemonproc import REPO, Daemon

pytestmark = pytest.mark.slow

KILLS = 8
READY_WITHIN_S = 30.0


def _orphans_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    """The processes among ``pids`` still alive (not zombies) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        alive = set()
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.add(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)  # other processes' exits: nothing to wait on from here


def test_sigkill_at_random_moments_of_start_up_leaves_a_daemon_that_restarts(tmp_path, mosquitto):
    rnd = random.Random(13)
    d = Daemon(tmp_path / "data", mosquitto.url)
    d.start()  # a first start creates the files; later starts resume from them
    d.terminate()
    seen: set[int] = set()
    try:
        for i in range(KILLS):
            delay = rnd.uniform(0.0, 3.0)
            log = open(d.log_path, "ab")
            proc = subprocess.Popen([sys.executable, "-m", "geowarn.service.cli", "run"], cwd=REPO, env=d.env, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            deadline = time.monotonic() + delay
            children: set[int] = set()
            while time.monotonic() < deadline:
                try:
                    children |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
                except psutil.NoSuchProcess:
                    break
                time.sleep(0.02)  # sampling the process tree while it forms
            try:
                children |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
            except psutil.NoSuchProcess:
                pass
            proc.kill()
            proc.wait(10)
            seen |= children
            left = _orphans_gone(children)
            assert not left, f"kill {i} after {delay:.2f} s left processes {left}:\n{d.log_tail()}"
            t0 = time.monotonic()
            d.start(timeout=READY_WITHIN_S)  # raises unless online within 30 s
            took = time.monotonic() - t0
            assert took < READY_WITHIN_S, f"kill {i}: ready after {took:.1f} s"
            d.terminate()
        assert not _orphans_gone(seen, timeout=5.0)
    finally:
        d.close()


# -- the two ways a start-up kill left an orphan, each forced ----------------------------


def _stuck_job(loaded, link, *args):
    """A job factory that never returns: a worker killed daemon-less inside its start-up."""
    time.sleep(3600)


_PARENT = """
import sys, time
sys.path.insert(0, {tests!r})
from geowarn.config.settings import Loaded, Settings, load_registry, load_roster, example_path
from geowarn.service.worker import WorkerProcess
from test_startup_kill import _stuck_job
loaded = Loaded(Settings(mqtt_url={url!r}, data_dir={data!r}), load_registry(example_path("sites.example.toml")),
                load_roster(example_path("roster.example.toml")), [])
w = WorkerProcess("detection", _stuck_job, loaded)
w.process.start()
print(w.process.pid, flush=True)
time.sleep(3600)
"""


def test_a_worker_dies_with_its_daemon_even_inside_its_start_up(tmp_path, mosquitto):
    data = tmp_path / "data"
    data.mkdir()
    code = _PARENT.format(tests=str(REPO / "tests"), url=mosquitto.url, data=str(data))
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        # wait until the worker is inside its job factory (it holds its lock by then)
        lock = data / "detection.lock"
        deadline = time.monotonic() + 20
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        parent.kill()
        parent.wait(10)
        assert not _orphans_gone({worker}, timeout=5.0), "the worker outlived its daemon"
    finally:
        parent.kill()
        parent.wait(10)
        try:
            psutil.Process(worker).kill()
        except (psutil.NoSuchProcess, NameError, UnboundLocalError):
            pass


_ORPHAN = """
import fcntl, os, sys, time
if os.fork():
    os._exit(0)  # the "daemon" dies at once: the holder below is an orphan
time.sleep(0.2)
f = open({lock!r}, "a+")
fcntl.flock(f, fcntl.LOCK_EX)
st = open(f"/proc/{{os.getpid()}}/stat").read()
start = st[st.rindex(")") + 2:].split()[19]
f.seek(0); f.truncate(); f.write(f"{{os.getpid()}} {{start}} {parent}\\n"); f.flush()
print(os.getpid(), flush=True)
time.sleep(3600)
"""


def test_a_lock_held_by_an_orphaned_worker_is_taken_back(tmp_path, mosquitto):
    """An orphan (its daemon gone) holding detection.lock used to make every restart die after
    120 s; the next daemon now sees from the lock file that its holder's daemon is gone."""
    d = Daemon(tmp_path / "data", mosquitto.url)
    d.start()
    d.terminate()
    holder = subprocess.Popen([sys.executable, "-c", _ORPHAN.format(lock=str(d.data_dir / "detection.lock"), parent=1_000_000_000)],
                              stdout=subprocess.PIPE)
    assert holder.stdout is not None
    orphan = int(holder.stdout.readline())
    holder.wait(10)
    try:
        d.start(timeout=READY_WITHIN_S)
        d.terminate()
        assert not _orphans_gone({orphan}, timeout=5.0)
    finally:
        d.close()
        try:
            psutil.Process(orphan).kill()
        except psutil.NoSuchProcess:
            pass


# -- a snapshot right after start-up catch-up (issue 13, item 6) ---------------------------


def _nodata_events(d: Daemon) -> list[str]:
    import json

    path = d.data_dir / "alerts.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        ev = json.loads(line)
        if ev.get("kind") == "nodata":
            out.append(str(ev.get("evidence", {}).get("device") or ev.get("device") or ev))
    return out


def test_a_crash_after_start_up_catch_up_does_not_announce_no_data_again(tmp_path, mosquitto):
    """Devices fell silent while the daemon was down: the start announces no data for each, once.
    A SIGKILL before the first periodic snapshot used to make the next start announce it all
    again (12 extra notifications)."""
    import re

    from geowarn.config.settings import example_path

    sites = tmp_path / "sites.toml"  # every device due every 5 s: silent after 15 s
    sites.write_text(re.sub(r"interval_s = \d+", "interval_s = 5", example_path("sites.example.toml").read_text()))
    d = Daemon(tmp_path / "data", mosquitto.url, extra_env={"GEOWARN_SITES": str(sites), "GEOWARN_SNAPSHOT_INTERVAL_S": "600"})
    try:
        d.start()
        d.terminate()  # a clean stop saves a snapshot: every device still in time
        assert _nodata_events(d) == []
        time.sleep(16)  # the daemon is down while the devices fall silent
        d.start()
        d.wait_until(lambda: len(_nodata_events(d)) > 0, timeout=10, message="no data announced by the start")
        time.sleep(1.0)  # let the start's announcements finish being written
        first = sorted(_nodata_events(d))
        assert len(first) == len(set(first)), first
        # A crash of the whole daemon, workers included (power loss, OOM, systemd's SIGKILL of
        # the control group), long before the periodic snapshot (600 s).
        assert d.proc is not None
        tree = [psutil.Process(d.proc.pid), *psutil.Process(d.proc.pid).children(recursive=True)]
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:  # a worker already gone with its daemon
                pass
        d.proc.wait(10)
        d.proc = None
        d.start()
        time.sleep(3.0)  # the start's catch-up announces at once; give it ample time
        again = sorted(_nodata_events(d))
        assert again == first, f"no data announced again after the crash: {len(again) - len(first)} extra"
        d.terminate()
    finally:
        d.close()
