"""The daemon's processes yield the CPU in order: the ack path first, the store worker next,
detection last (service/worker.py ``STORE_NICENESS``, ``WORKER_NICENESS``).

On a saturated machine (a backlog after an outage) the broker's queue must not grow (the ack
path), readings must become queryable (the store: a fifth of the CPU a reading costs to judge),
and detection takes what is left. Read from the running processes, not from the constants.
"""

from __future__ import annotations

import subprocess
import sys

import psutil

from daemonproc import Daemon
from geowarn.service.worker import STORE_NICENESS, WORKER_NICENESS


def _lock_pid(path) -> int:
    return int(path.read_text().split()[0])


def test_the_store_worker_runs_ahead_of_detection_and_both_behind_the_ack_path(tmp_path, mosquitto):
    d = Daemon(tmp_path / "data", mosquitto.url)
    d.start()
    try:
        main = psutil.Process(d.proc.pid)
        store = psutil.Process(_lock_pid(d.data_dir / "store.lock"))
        detection = psutil.Process(_lock_pid(d.data_dir / "detection.lock"))
        assert {store.pid, detection.pid} <= {c.pid for c in main.children(recursive=True)}
        base = main.nice()
        assert store.nice() == min(19, base + STORE_NICENESS)  # niceness stops at 19
        assert detection.nice() == min(19, base + WORKER_NICENESS)
        if base + WORKER_NICENESS <= 19:
            assert base < store.nice() < detection.nice()
    finally:
        d.terminate()


def test_the_daemons_processes_load_no_scipy_until_a_forecast_needs_it():
    # scipy (~60 MB of RSS a process) serves one figure, the forecast's 90 % interval. The
    # daemon's main process and its workers load the detectors for the registry and the
    # console; each paid for scipy while a module imported it at load time.
    code = ("import sys, geowarn.service.daemon, geowarn.service.detection, geowarn.detectors.fusion, "
            "geowarn.console.api; print(sorted(m for m in sys.modules if m == 'scipy' or m.startswith('scipy.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout[:300]
