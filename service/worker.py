"""Worker processes of the daemon: the store stage and detection each run in their own process.

What they share lives here: spawning (paho threads and fork do not mix), a file lock so that a
second worker of the same kind (say, the orphan of a killed daemon) never works on the same
files at once, a ready event the daemon waits for, a stop event, and exit when the parent
daemon is gone. Each worker has its own MQTT link for what it publishes (dead letters, alert
events, notifications); a worker that also takes requests (acks) subscribes with a persistent
session of its own, so requests sent while it restarts wait for it at the broker.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import IO, Any, Protocol

from geowarn.config.settings import Loaded
from geowarn.service.logs import configure_logging
from geowarn.core.logfields import kv

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], None]

#: Scheduling priority of worker processes relative to the daemon (higher = yields more).
WORKER_NICENESS = 10


class Job(Protocol):
    """What a worker process runs: ``step()`` does one round and says how much it did (0: idle);
    ``checkpoint()`` saves state (periodically and at the stop); ``close()`` releases files."""

    def step(self) -> int: ...
    def checkpoint(self) -> None: ...
    def close(self) -> None: ...


#: Builds the job inside the worker process: (loaded settings, MQTT link, *args) -> Job.
JobFactory = Callable[..., Job]


def take_lock(path: Path, wait_s: float = 30.0) -> IO[str] | None:
    lock = open(path, "w")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.close()
                return None
            time.sleep(0.05)  # an orphaned worker is finishing its last batch


def _worker_main(
    name: str,
    factory: JobFactory,
    loaded: Loaded,
    args: tuple[Any, ...],
    subscriptions: list[str],
    stop: MpEvent,
    ready: MpEvent,
    parent: int,
    log_level: int,
) -> None:
    """The worker process: lock, build the job, step until told to stop (or orphaned), checkpoint."""
    from geowarn.ingest.mqtt import MqttLink

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon stops us through `stop`
    # What a worker writes (journal, outbox, notify/*.jsonl, CAP files) is the daemon's user's
    # alone, even when the daemon was built without `geowarn run` (its umask is inherited too).
    os.umask(0o077)
    # The ack path comes first: when the CPUs are saturated (a backlog after an outage), the
    # workers lag a little behind the message log rather than the broker's queue growing.
    os.nice(WORKER_NICENESS)
    configure_logging(log_level)  # the daemon checked GEOWARN_LOG_FORMAT before spawning us
    s = loaded.settings
    # An orphan of a killed daemon finishes its batch and exits when it sees its parent gone.
    lock = take_lock(Path(s.data_dir) / f"{name}.lock", wait_s=120.0)
    if lock is None:
        log.error("another worker of this kind holds the lock; giving up", extra=kv(worker=name, lock=Path(s.data_dir) / f"{name}.lock"))
        return
    link = MqttLink(s.mqtt_for(f"{s.mqtt_client_id}-{name}"), client_id=f"{s.mqtt_client_id}-{name}", subscriptions=subscriptions, protocol="3.1.1", keepalive_s=s.mqtt_keepalive_s,
                    ca_file=str(s.mqtt_ca_file) if s.mqtt_ca_file else None, clean_session=not subscriptions)
    link.start()
    job = factory(loaded, link, *args)
    ready.set()
    next_checkpoint = time.monotonic() + s.snapshot_interval_s
    clean = False
    try:
        while True:
            # Read the stop flag before the step: a step that finds nothing after the stop was
            # asked for has seen everything committed before it.
            stopping = stop.is_set() or os.getppid() != parent
            n = job.step()
            if time.monotonic() >= next_checkpoint:
                job.checkpoint()
                next_checkpoint = time.monotonic() + s.snapshot_interval_s
            if n == 0:
                if stopping:
                    break
                stop.wait(0.05)
        clean = True
    finally:
        try:
            if clean:  # after an exception the job's state may be half a step ahead of its position
                job.checkpoint()
        finally:
            job.close()
            link.stop()
            lock.close()


class WorkerProcess:
    """Starts and stops one worker process (spawned: paho threads and fork do not mix)."""

    def __init__(self, name: str, factory: JobFactory, loaded: Loaded, *args: Any, subscriptions: list[str] | None = None) -> None:
        self.name = name
        self._subscriptions = list(subscriptions or [])
        self._factory = factory
        self._loaded = loaded
        self._args = args
        self.restarts = 0
        self._spawn()

    def _spawn(self) -> None:
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._ready = ctx.Event()
        self.process = ctx.Process(
            target=_worker_main,
            args=(self.name, self._factory, self._loaded, self._args, self._subscriptions, self._stop, self._ready, os.getpid(), logging.getLogger().getEffectiveLevel()),
            name=f"geowarn-{self.name}",
            daemon=True,
        )

    def start(self, timeout: float = 120.0) -> None:
        """Start the worker and wait until it has resumed its state."""
        self.process.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if not self.process.is_alive():
                raise RuntimeError(f"the {self.name} worker exited with code {self.process.exitcode} while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} worker did not start within {timeout:.0f} s")

    def alive(self) -> bool:
        return self.process.is_alive()

    def restart(self) -> None:
        """Start a new worker after this one died, without waiting for it to be ready (the
        caller's loop must not stall): it resumes from its own saved position."""
        log.error("worker died; starting a new one", extra=kv(worker=self.name, exit_code=self.process.exitcode, restart=self.restarts + 1))
        self.restarts += 1
        self._spawn()
        self.process.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the worker to finish what is committed, checkpoint and exit."""
        self._stop.set()
        self.process.join(timeout)
        if self.process.is_alive():
            log.error("worker did not stop in time; terminating it", extra=kv(worker=self.name, timeout_s=timeout))
            self.process.terminate()
            self.process.join(5)
