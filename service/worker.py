"""Worker processes of the daemon: the store stage and detection each run in their own process.

What they share lives here: spawning (paho threads and fork do not mix), a file lock so that a
second worker of the same kind never works on the same files at once (its file names the
holder, so an orphan of a killed daemon is found and killed), ready and stop pipes (a daemon
killed at any instant leaves nothing the worker can block on), and death with the daemon
(``PR_SET_PDEATHSIG`` on Linux, and the orphan check). Each worker has its own MQTT link for what it publishes (dead letters, alert
events, notifications); a worker that also takes requests (acks) subscribes with a persistent
session of its own, so requests sent while it restarts wait for it at the broker.

A write error (disk full, I/O error: ``is_write_error``) does not end a worker: it closes its
job and link, waits, and builds them again from their saved positions — what a restart would
do, without the crash loop — until writing works again. Meanwhile it tells the daemon it is
degraded through a health pipe (not a file: the disk may be full), and the daemon says so on
``/healthz`` and ``/metrics``.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import multiprocessing as mp
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any, Protocol

from geowarn.config.settings import Loaded
from geowarn.service.logs import configure_logging
from geowarn.core.logfields import kv

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], None]

#: Scheduling priority of worker processes relative to the daemon (higher = yields more).
WORKER_NICENESS = 10
#: The store worker's: ahead of detection, behind the ack path. Decoding into the journal costs
#: a fifth of judging a reading, and detection, the console and /metrics all read the journal:
#: on a saturated machine (a backlog after an outage) readings become queryable first and are
#: judged after, instead of both crawling at an equal share of the CPU.
STORE_NICENESS = 5
#: While a worker builds its job (resuming its state: long at a national fleet) it says so
#: this often; the daemon waits as long as it does, instead of giving up after a fixed time.
START_HEARTBEAT_S = 5.0
#: A worker that has said nothing for this long while starting is given up.
START_SILENCE_S = 60.0
#: And one that has not started after this long plus this much per registry channel, even if
#: it says it is at it (the heartbeat shows the process alive, not that it gets anywhere): a
#: resume judges the journal after its saved state, about 0.3 ms a channel at worst.
START_LIMIT_S = 120.0
START_LIMIT_PER_CHANNEL_S = 0.002
#: After a write error a worker rebuilds its job after this pause, doubled up to the maximum.
WRITE_RETRY_FIRST_S = 1.0
WRITE_RETRY_MAX_S = 10.0
#: While a worker stays degraded it logs this often (the first error is logged at once).
DEGRADED_LOG_EVERY_S = 60.0

#: OS errors that mean "the storage refuses writes", not a bug: no space, quota, I/O error,
#: read-only file system, file too large.
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})


def is_write_error(exc: BaseException) -> bool:
    """The storage's trouble rather than the code's: SQLite's operational errors (disk full,
    disk I/O error, locked, read-only, cannot open) and OS errors of ``_STORAGE_ERRNOS``.
    What raises one of these is retried later, never dropped and never a reason to exit."""
    if isinstance(exc, sqlite3.OperationalError):
        return True
    if type(exc) is sqlite3.DatabaseError:  # "database disk image is malformed" and the like
        return True
    return isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS


def describe_error(exc: BaseException) -> str:
    """A short, one-line cause for logs and ``/healthz``."""
    return f"{type(exc).__name__}: {str(exc)[:300]}".replace("\n", " ")


class Job(Protocol):
    """What a worker process runs: ``step()`` does one round and says how much it did (0: idle);
    ``checkpoint()`` saves state (periodically, and with ``final`` at the stop, where it may take
    longer: nothing waits behind it); ``close()`` releases files."""

    def step(self) -> int: ...
    def checkpoint(self, final: bool = False) -> None: ...
    def close(self) -> None: ...


#: Builds the job inside the worker process: (loaded settings, MQTT link, *args) -> Job.
JobFactory = Callable[..., Job]


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with the
    PID it names one process, never a later one that reuses the PID. None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _stale_holder(lock: IO[str]) -> tuple[int, str] | None:
    """The holder recorded in a held lock file, and why it should not hold it, if it should not:
    its parent (the daemon that started it) is gone, so nothing will ever stop it."""
    lock.seek(0)
    try:
        pid, start, parent = (int(x) for x in lock.read().split()[:3])
    except ValueError:
        return None  # the holder has not written its record yet
    if pid == os.getpid() or _start_time(pid) != start:
        return None  # the recorded process is gone: whoever holds the lock now writes its record next
    if _parent_of(pid) != parent:
        return pid, f"its daemon (pid {parent}) is gone"
    return None


def take_lock(path: Path, wait_s: float = 30.0) -> IO[str] | None:
    """Take the worker's lock, waiting up to ``wait_s`` for another worker of this kind to
    finish; a holder whose daemon is gone is killed (an orphan that would hold it forever).
    The holder writes "PID start-time parent-PID" into the file, so the next one can tell."""
    # Opened without truncating: the holder's record must survive a contender opening the file.
    lock = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
    deadline = time.monotonic() + wait_s
    killed: set[int] = set()
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stale = _stale_holder(lock)
            if stale is not None and stale[0] not in killed:
                killed.add(stale[0])
                log.error("an orphaned worker holds the lock; killing it", extra=kv(lock=path, pid=stale[0], why=stale[1]))
                try:
                    os.kill(stale[0], signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                lock.close()
                return None
            time.sleep(0.05)  # an orphaned worker is finishing its last batch
            continue
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()} {_start_time(os.getpid()) or 0} {os.getppid()}\n")
        lock.flush()
        return lock


DAEMON_LOCK = "daemon.lock"


class DataDirBusy(Exception):
    """Another daemon is using the data directory; the message says which and what to do."""


def claim_data_dir(data_dir: Path) -> IO[str]:
    """Hold ``data_dir/daemon.lock`` for this process's life, or raise DataDirBusy at once.

    A second ``geowarn run`` on the same data directory used to wait silently on its workers'
    locks (up to two minutes) before failing; it is refused now, naming the holder. The lock is
    the main process's own (spawned workers do not inherit it), so a daemon that died, even by
    SIGKILL, releases it with its file descriptors."""
    path = Path(data_dir) / DAEMON_LOCK
    lock = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().split()
        lock.close()
        pid = f" (pid {holder[0]})" if holder and holder[0].isdigit() else ""
        raise DataDirBusy(
            f"{data_dir} is in use by another geowarn daemon{pid}: two daemons on one data directory would take each "
            "other's messages. Stop that one first, or give this one its own GEOWARN_DATA_DIR (and GEOWARN_MQTT_CLIENT_ID)"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


#: prctl(2) option: the signal this process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _parent_death_signal(sig: int) -> None:
    """``prctl(PR_SET_PDEATHSIG, sig)``: the kernel sends ``sig`` when the parent dies (0: none)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed; relying on the orphan check", extra=kv(errno=ctypes.get_errno()))
    except (OSError, AttributeError):
        log.warning("no prctl; relying on the orphan check")


def die_with_parent(parent: int) -> None:
    """Be killed by the kernel the moment the parent daemon dies, whatever this process is doing
    (blocked on a lock, starting up); on Linux only. Exits now if the parent is already gone
    (it may have died before this line ran). Disarmed once the worker is running: see
    ``_worker_main``."""
    _parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)


def _worker_main(
    name: str,
    factory: JobFactory,
    loaded: Loaded,
    args: tuple[Any, ...],
    subscriptions: list[str],
    stop: Connection,
    ready: Connection,
    parent: int,
    log_level: int,
    health: Connection,
    niceness: int = WORKER_NICENESS,
) -> None:
    """The worker process: lock, build the job, step until told to stop (or orphaned), checkpoint.

    ``stop`` and ``ready`` are pipes, not multiprocessing events: an event is a semaphore the
    daemon holds while it waits or sets, and a daemon killed inside one left the worker blocked
    on it forever (holding its lock). A pipe only breaks: ``stop`` becomes readable when the
    daemon asks us to stop (a byte) or dies (end of file)."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon stops us through `stop`
    # What a worker writes (journal, outbox, notify/*.jsonl, CAP files) is the daemon's user's
    # alone, even when the daemon was built without `geowarn run` (its umask is inherited too).
    os.umask(0o077)
    # The ack path comes first: when the CPUs are saturated (a backlog after an outage), the
    # workers lag a little behind the message log rather than the broker's queue growing.
    os.nice(niceness)
    configure_logging(log_level)  # the daemon checked GEOWARN_LOG_FORMAT before spawning us
    s = loaded.settings
    # An orphan of a killed daemon finishes its batch and exits when it sees its parent gone.
    lock = take_lock(Path(s.data_dir) / f"{name}.lock", wait_s=120.0)
    if lock is None:
        log.error("another worker of this kind holds the lock; giving up", extra=kv(worker=name, lock=Path(s.data_dir) / f"{name}.lock"))
        return

    def connect() -> Any:
        from geowarn.ingest.mqtt import MqttLink

        link = MqttLink(s.mqtt_for(f"{s.mqtt_client_id}-{name}"), client_id=f"{s.mqtt_client_id}-{name}", subscriptions=subscriptions, protocol="3.1.1", keepalive_s=s.mqtt_keepalive_s,
                        ca_file=str(s.mqtt_ca_file) if s.mqtt_ca_file else None, clean_session=not subscriptions)
        link.start()
        return link

    link: Any = connect()
    building = threading.Event()

    def heartbeat() -> None:
        while not building.wait(START_HEARTBEAT_S):
            try:
                ready.send_bytes(b"p")  # still resuming: not stuck
            except OSError:  # the daemon is gone
                return

    beat = threading.Thread(target=heartbeat, name=f"{name}-starting", daemon=True)
    beat.start()
    try:
        job: Job | None = factory(loaded, link, *args)
    finally:
        building.set()
        beat.join()
    try:
        ready.send_bytes(b"r")
    except OSError:  # the daemon is gone
        pass
    ready.close()
    # Running, an orphan must not be killed mid-batch: between a batch's announcements
    # (alerts.jsonl, the outbox) and the position saved after them, a kill would make the next
    # worker announce them again. From here the daemon's death is end of file on `stop`, and
    # the loop below finishes its batch, checkpoints and exits.
    _parent_death_signal(0)
    next_checkpoint = time.monotonic() + s.snapshot_interval_s
    drain_until: float | None = None  # set when told to stop with work in hand
    clean = False
    degraded: Degraded | None = None
    try:
        while True:
            # Read the stop flag before the step: a step that finds nothing after the stop was
            # asked for has seen everything committed before it.
            stopping = stop.poll() or os.getppid() != parent
            try:
                if job is None:  # degraded: dropped after a write error
                    if stopping:
                        break  # nothing in hand: what is not written is in the message log or at the broker
                    if degraded is not None and not degraded.due():
                        stop.poll(min(0.5, degraded.wait()))
                        continue
                    link = connect()
                    job = factory(loaded, link, *args)
                n = job.step()
                if time.monotonic() >= next_checkpoint:
                    job.checkpoint()
                    next_checkpoint = time.monotonic() + s.snapshot_interval_s
            except Exception as exc:
                if not is_write_error(exc):
                    raise
                # The job's state may be half a step ahead of its saved position: drop it and
                # build it again from what is durable, as a new process would.
                if degraded is None:
                    degraded = Degraded(name, health)
                degraded.failed(exc)
                job, link = _discard(job, link)
                continue
            if degraded is not None:
                degraded.recovered()
                degraded = None
            if n == 0:
                if stopping:
                    break
                stop.poll(0.05)
            elif stopping:
                # Work in hand at the stop (a backlog): on with it for a while, then the rest is
                # left where it is durable (the message log, the journal) for the next start,
                # which goes on from the saved position; the daemon's stop never has to kill.
                if drain_until is None:
                    drain_until = time.monotonic() + s.stop_drain_s
                elif time.monotonic() >= drain_until:
                    log.warning("stopping with work in hand; the next start goes on from the saved position",
                                extra=kv(worker=name, drained_s=s.stop_drain_s))
                    break
        clean = True
    except BaseException:
        # The cause of the restart that follows, in the daemon's log (the daemon logs the exit).
        log.exception("worker failed; exiting (the daemon starts a new one)", extra=kv(worker=name))
        raise
    finally:
        try:
            if clean and job is not None:  # after an exception the job's state may be half a step ahead of its position
                try:
                    job.checkpoint(final=True)
                except Exception as exc:
                    if not is_write_error(exc):
                        raise
                    log.error("could not checkpoint at the stop; the next start resumes from the last saved position",
                              extra=kv(worker=name, error=describe_error(exc)))
        finally:
            _discard(job, link)
            lock.close()
            health.close()


def _discard(job: Job | None, link: Any) -> tuple[None, None]:
    """Close a job and its link after a write error, whatever they raise on the way."""
    if job is not None:
        try:
            job.close()
        except Exception as exc:  # closing files on a full disk may fail too; the next build reopens them
            log.warning("closing the job failed", extra=kv(error=describe_error(exc)))
    if link is not None:
        try:
            link.stop()
        except Exception as exc:
            log.warning("stopping the MQTT link failed", extra=kv(error=describe_error(exc)))
    return None, None


class Degraded:
    """A worker that cannot write: when to try again, what to log, and what the daemon is told
    through the health pipe (the reason, or an empty message when writing works again)."""

    def __init__(self, name: str, health: Connection) -> None:
        self.name = name
        self.health = health
        self.since = time.monotonic()
        self.pause = WRITE_RETRY_FIRST_S
        self.retry_at = 0.0
        self.next_log = 0.0
        self.failures = 0

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        reason = describe_error(exc)
        self.failures += 1
        if self.failures == 1:
            log.error("worker cannot write; degraded, retrying until it can (nothing is acknowledged that is not durable)",
                      extra=kv(worker=self.name, error=reason))
            self.next_log = now + DEGRADED_LOG_EVERY_S
        elif now >= self.next_log:
            log.error("worker still cannot write; degraded", extra=kv(worker=self.name, error=reason, for_s=round(now - self.since), tries=self.failures))
            self.next_log = now + DEGRADED_LOG_EVERY_S
        self._tell(reason)
        self.retry_at = now + self.pause
        self.pause = min(self.pause * 2, WRITE_RETRY_MAX_S)

    def due(self) -> bool:
        return time.monotonic() >= self.retry_at

    def wait(self) -> float:
        return max(0.0, self.retry_at - time.monotonic())

    def recovered(self) -> None:
        log.warning("worker writes again; no longer degraded", extra=kv(worker=self.name, degraded_s=round(time.monotonic() - self.since), tries=self.failures))
        self._tell("")

    def _tell(self, reason: str) -> None:
        try:
            self.health.send_bytes(reason.encode("utf-8", "backslashreplace"))
        except OSError:  # the daemon is gone; the orphan check ends us
            pass


class WorkerProcess:
    """Starts and stops one worker process (spawned: paho threads and fork do not mix)."""

    def __init__(self, name: str, factory: JobFactory, loaded: Loaded, *args: Any, subscriptions: list[str] | None = None,
                 niceness: int = WORKER_NICENESS) -> None:
        self.name = name
        self.niceness = niceness
        self._subscriptions = list(subscriptions or [])
        self._factory = factory
        self._loaded = loaded
        self._args = args
        self.restarts = 0
        #: Why the worker cannot write (its last report on the health pipe); None: it can.
        self.degraded: str | None = None
        self._spawn()

    def _spawn(self) -> None:
        ctx = mp.get_context("spawn")
        # Each end stays with one process: the worker sees end of file on `stop` when we die.
        self._stop_r, self._stop = ctx.Pipe(duplex=False)
        self._ready, self._ready_w = ctx.Pipe(duplex=False)
        self._health, self._health_w = ctx.Pipe(duplex=False)
        self.degraded = None
        self.process = ctx.Process(
            target=_worker_main,
            args=(self.name, self._factory, self._loaded, self._args, self._subscriptions, self._stop_r, self._ready_w, os.getpid(), logging.getLogger().getEffectiveLevel(),
                  self._health_w, self.niceness),
            name=f"geowarn-{self.name}",
            daemon=True,
        )

    def start(self, timeout: float = START_SILENCE_S, progress: Callable[[float], None] | None = None, limit_s: float | None = None) -> None:
        """Start the worker and wait until it has resumed its state, as long as it says it is
        still at it (a heartbeat every START_HEARTBEAT_S): a national fleet's state takes
        time; a worker silent for ``timeout`` seconds, or not started after ``limit_s``
        (default: START_LIMIT_S and START_LIMIT_PER_CHANNEL_S for its registry), is given up.
        ``progress(elapsed_s)`` is called on each heartbeat (the daemon tells systemd to
        extend its start timeout)."""
        self._launch()
        started = time.monotonic()
        if limit_s is None:
            channels = sum(len(c) for c in self._loaded.registry.channels.values())
            limit_s = START_LIMIT_S + START_LIMIT_PER_CHANNEL_S * channels
        deadline = started + timeout
        said = started
        while True:
            if self._ready.poll(0.1):
                try:
                    if self._ready.recv_bytes() == b"p":
                        now = time.monotonic()
                        deadline = min(now + timeout, started + limit_s)
                        if progress is not None:
                            progress(now - started)
                        if now - said >= 30.0:
                            said = now
                            log.info("worker still starting (resuming its state)", extra=kv(worker=self.name, elapsed_s=round(now - started)))
                        continue
                    return
                except EOFError:  # it closed its end without saying ready: it exited
                    self.process.join(5)
                    raise RuntimeError(f"the {self.name} worker exited with code {self.process.exitcode} while starting") from None
            if not self.process.is_alive():
                raise RuntimeError(f"the {self.name} worker exited with code {self.process.exitcode} while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} worker did not start: silent for {timeout:.0f} s, or still starting after "
                                   f"{time.monotonic() - started:.0f} s (limit {limit_s:.0f} s for its registry)")

    def _launch(self) -> None:
        self.process.start()
        self._stop_r.close()  # the worker's ends, now that it has its own copies
        self._ready_w.close()
        self._health_w.close()

    def alive(self) -> bool:
        return self.process.is_alive()

    def health(self) -> str | None:
        """Read what the worker reported since the last call (never blocks): why it cannot
        write, or None when it can."""
        try:
            while self._health.poll():
                self.degraded = self._health.recv_bytes().decode("utf-8", "replace") or None
        except (EOFError, OSError):  # the worker is gone: the restart says so
            pass
        return self.degraded

    def exit_cause(self) -> str:
        """Why the process ended, in words: its exit code or the signal that killed it."""
        code = self.process.exitcode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}" + (" (an unhandled error: its traceback is logged above)" if code == 1 else "")

    def restart(self) -> None:
        """Start a new worker after this one died, without waiting for it to be ready (the
        caller's loop must not stall): it resumes from its own saved position."""
        log.error("worker died; starting a new one", extra=kv(worker=self.name, cause=self.exit_cause(), exit_code=self.process.exitcode,
                                                              degraded=self.degraded, restart=self.restarts + 1))
        self.restarts += 1
        self._spawn()
        self._launch()

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the worker to finish what is committed, checkpoint and exit."""
        try:
            self._stop.send_bytes(b"s")
        except OSError:  # the worker is gone already
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            log.error("worker did not stop in time; terminating it", extra=kv(worker=self.name, timeout_s=timeout))
            self.process.terminate()
            self.process.join(5)
