"""Real servers for tests: Mosquitto and VictoriaMetrics as plain subprocesses.

Each server listens on a free 127.0.0.1 port and keeps all of its state (config,
data, log) in a folder the caller owns, normally pytest's ``tmp_path``. Nothing here
uses the system services or their default ports (1883, 8428).

The binaries come from the Debian packages ``mosquitto`` and ``victoria-metrics``;
``./scripts/test`` installs them when missing. A missing binary is an error, never a
skip: a test suite that silently skips its real-service tests proves nothing.

Only the standard library is used, so this module has no dependencies of its own.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from pathlib import Path
from typing import Any, Iterable

__all__ = ["free_port", "Mosquitto", "VictoriaMetrics"]

HOST = "127.0.0.1"
_INSTALL_HINT = (
    "run ./scripts/test, which installs the Debian packages "
    "mosquitto, mosquitto-clients and victoria-metrics"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _find_binary(name: str, *fallbacks: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in fallbacks:
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"the {name!r} binary was not found (PATH, {', '.join(fallbacks)}); {_INSTALL_HINT}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"(log {path} is empty)"


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


_live: "weakref.WeakSet[_Server]" = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    # Safety net for servers a crashed test never stopped.
    for server in list(_live):
        server.kill()


class _Server:
    """A subprocess with a log file in ``data_dir``, on a fixed loopback port."""

    name = "server"
    start_timeout = 20.0
    stop_timeout = 30.0

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._port = port if port is not None else free_port()
        self.log_path = self.data_dir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public API -------------------------------------------------------------------
    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and wait until it is ready; raise RuntimeError if it is not."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self._proc.pid})")
        argv = self._argv()
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # keep terminal signals (Ctrl-C) away from it
            )
        _live.add(self)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError(
                    f"{self.name} exited with code {code} during start-up on port {self.port}; "
                    f"log tail ({self.log_path}):\n{_tail(self.log_path)}"
                )
            if self._ready():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"{self.name} was not ready on {self.host}:{self.port} after "
                    f"{self.start_timeout:.0f}s; log tail ({self.log_path}):\n{_tail(self.log_path)}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM and wait for a clean exit (which is when the server saves its state).

        A no-op when it is not running. Falls back to SIGKILL after ``stop_timeout``.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self._proc = None
                raise RuntimeError(
                    f"{self.name} ignored SIGTERM for {self.stop_timeout:.0f}s and was killed; "
                    f"log tail:\n{_tail(self.log_path)}"
                ) from None
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: a crash. Whatever was not yet saved is lost. No-op if not running."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._proc = None

    def restart(self) -> None:
        """Clean stop, then start again on the same port with the same data."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self._proc.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state} {self.data_dir}>"

    # -- subclass hooks ---------------------------------------------------------------
    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError


class Mosquitto(_Server):
    """A Mosquitto 2.x broker with persistence in ``data_dir``.

    * anonymous access on ``127.0.0.1:port`` only;
    * persistent sessions and their queued QoS 1/2 messages survive ``stop()``/``start()``
      and ``restart()`` (saved on SIGTERM and every ``autosave_interval`` seconds, so
      ``kill()`` loses at most that much);
    * ``max_queued_messages 0`` and ``max_queued_bytes 0``: no limit on the per-client
      queue, so a large backlog for an offline subscriber is not dropped;
    * ``max_inflight_messages`` is configurable (mosquitto's own default is 20).

    ``extra_config`` lines are appended to the generated ``mosquitto.conf``.

    ``config_file``: run that configuration as it is instead (e.g. one ``geowarn broker-config``
    wrote: its own accounts, ACL, TLS and persistence); ``port`` must be one of its listeners,
    the one readiness is checked on. The other options are then unused.
    """

    name = "mosquitto"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        max_inflight_messages: int = 100,
        autosave_interval: int = 1,
        extra_config: str = "",
        config_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.binary = _find_binary("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
        if config_file is not None and port is None:
            raise ValueError("a given config_file needs the port of one of its listeners")
        self.config_file = Path(config_file).resolve() if config_file is not None else None
        super().__init__(data_dir, port)
        self.max_inflight_messages = max_inflight_messages
        self.autosave_interval = autosave_interval
        self.extra_config = extra_config
        self.config_path = self.config_file or self.data_dir / "mosquitto.conf"
        self.persistence_path = self.data_dir / "mosquitto.db"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def config_text(self) -> str:
        for path in (self.data_dir, self.log_path):
            if any(ch.isspace() for ch in str(path)):
                raise RuntimeError(f"mosquitto.conf cannot hold paths with whitespace: {path}")
        lines = [
            "# Generated by tests/services.py",
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.data_dir}",
            f"persistence_file {self.persistence_path.name}",
            f"autosave_interval {self.autosave_interval}",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            f"max_inflight_messages {self.max_inflight_messages}",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            # As root mosquitto drops to the "mosquitto" user, which cannot write to a
            # private temp folder; "user root" keeps the current user.
            lines.append("user root")
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def _argv(self) -> list[str]:
        if self.config_file is None:
            self.config_path.write_text(self.config_text())
        return [self.binary, "-c", str(self.config_path)]

    def _ready(self) -> bool:
        return _port_accepts(self.host, self.port)


class VictoriaMetrics(_Server):
    """A single-node VictoriaMetrics with its storage in ``data_dir/data``.

    Flags: ``-retentionPeriod=100y`` (old fixture timestamps are kept),
    ``-dedup.minScrapeInterval=1ms`` (the same series + timestamp written twice is stored
    once, as in InfluxDB), ``-search.disableCache`` and ``-search.latencyOffset=0s``
    (queries see freshly written and back-filled points). ``extra_args`` are appended
    and, being later on the command line, override these.

    Dedup caveat (VictoriaMetrics 1.79): points with the same series and timestamp
    collapse to one sample, but when their values differ, which value survives is not
    guaranteed (it is not InfluxDB's "last write wins").

    Writes: InfluxDB line protocol to ``{url}/api/v2/write`` (or ``write_lines``).
    Reads: ``export``/``wait_for_samples`` (raw samples), or PromQL at ``{url}/api/v1/...``.
    """

    name = "victoria-metrics"
    http_timeout = 10.0

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        extra_args: Iterable[str] = (),
    ) -> None:
        self.binary = _find_binary("victoria-metrics", "/usr/bin/victoria-metrics")
        super().__init__(data_dir, port)
        self.storage_path = self.data_dir / "data"
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _argv(self) -> list[str]:
        return [
            self.binary,
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.storage_path}",
            "-retentionPeriod=100y",
            "-dedup.minScrapeInterval=1ms",
            "-search.disableCache",
            "-search.latencyOffset=0s",
            *self.extra_args,
        ]

    def _ready(self) -> bool:
        try:
            status, _ = self._request("GET", "/health", timeout=1.0)
        except OSError:
            return False
        return status == 200

    # -- HTTP helpers -----------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        params: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        req = urllib.request.Request(url, data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.http_timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def _checked(self, method: str, path: str, **kwargs: Any) -> bytes:
        status, body = self._request(method, path, **kwargs)
        if status // 100 != 2:
            raise RuntimeError(
                f"{method} {path} -> HTTP {status}: {body.decode(errors='replace')[:2000]}"
            )
        return body

    def flush(self) -> None:
        """Make everything written so far searchable now (GET /internal/force_flush)."""
        self._checked("GET", "/internal/force_flush")

    def write_lines(self, lines: str | Iterable[str], precision: str = "ms") -> None:
        """POST InfluxDB line protocol to /api/v2/write (as the service does)."""
        text = lines if isinstance(lines, str) else "\n".join(lines)
        self._checked(
            "POST",
            "/api/v2/write",
            params=[("org", "o"), ("bucket", "b"), ("precision", precision)],
            body=text.encode(),
        )

    def export(self, match: str, start: str | None = None, end: str | None = None) -> list[dict]:
        """Raw samples of every series matching ``match`` (a series selector such as
        ``displacement_value`` or ``{__name__=~"displacement_.*",site="S1"}``).

        Returns one dict per series: ``{"metric": {...labels}, "values": [...],
        "timestamps": [...ms]}`` as /api/v1/export gives them (deduplicated, sorted by
        time within a series; the order of series is unspecified).
        """
        params = [("match[]", match)]
        if start is not None:
            params.append(("start", start))
        if end is not None:
            params.append(("end", end))
        body = self._checked(
            "POST",
            "/api/v1/export",
            body=urllib.parse.urlencode(params).encode(),
        )
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]

    def wait_for_samples(self, match: str, n: int, timeout: float = 10.0) -> list[dict]:
        """Poll flush + export until the series matching ``match`` hold at least ``n``
        samples in total; return those series. TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.flush()
            series = self.export(match)
            count = sum(len(s["values"]) for s in series)
            if count >= n:
                return series
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{match!r}: {count} of {n} samples after {timeout}s in {self.url}; "
                    f"series: {json.dumps(series)[:2000]}"
                )
            time.sleep(0.05)
