"""The daemon's processes yield the CPU in order: the ack path first, the store worker next,
detection last (service/worker.py ``STORE_NICENESS``, ``WORKER_NICENESS``).

On a saturated machine (a backlog after an outage) the broker's queue must not grow (the ack
path), readings must become queryable (the store: a fifth of the CPU a reading costs to judge),
and detection takes what is left. Read from the running processes, not from the constants.
"""

from __future__ import annotations

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
        assert store.nice() == min(19, base + STORE_NICENESS)
        assert detection.nice() == min(19, base + WORKER_NICENESS)
        assert base < store.nice() < detection.nice()
    finally:
        d.terminate()
