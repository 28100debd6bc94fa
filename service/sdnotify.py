"""systemd's notify protocol: readiness, watchdog keep-alives, status and stopping.

``deploy/systemd/geowarn.service`` runs the daemon as ``Type=notify`` with ``WatchdogSec``:
systemd counts the daemon started only when it says ``READY=1`` (its parts are up and the ack
path is taking messages), and kills and restarts it when the keep-alives stop, i.e. when the
ack loop hangs rather than dies. The protocol is one datagram per message on the unix socket
named by ``$NOTIFY_SOCKET`` (``@name`` is Linux's abstract namespace); see sd_notify(3) and
sd_watchdog_enabled(3). It is a dozen lines, so no library: ``python-systemd`` needs
libsystemd headers to build, and ``sdnotify`` on PyPI has seen no release since 2017.

Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing. A failed send is logged once
and never raised: a supervisor that went away must not stop the ingest path.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET`` (read once, at construction)."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self._sock: socket.socket | None = None
        self._failed = False
        #: Half the watchdog period (sd_watchdog_enabled(3) asks for keep-alives at least that
        #: often), or None when systemd set no watchdog for this process.
        self.keepalive_s = _watchdog_interval(env, os.getpid())
        self._next_keepalive = 0.0

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (``ready=1`` → ``READY=1``); True when a datagram went out."""
        if self._address is None or self._failed:
            return False
        text = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode("utf-8"), self._address)
            return True
        except OSError as exc:
            self._failed = True
            log.warning("systemd notify socket unusable; no more readiness or watchdog messages", extra={"error": str(exc)})
            return False

    def ready(self, status: str) -> None:
        self.send(ready=1, status=status, mainpid=os.getpid())

    def status(self, status: str) -> None:
        self.send(status=status)

    def stopping(self) -> None:
        self.send(stopping=1, status="stopping")

    def keepalive(self, now: float | None = None) -> None:
        """``WATCHDOG=1`` when due; call it from the loop whose hang should restart the daemon."""
        if self.keepalive_s is None:
            return
        now = time.monotonic() if now is None else now
        if now >= self._next_keepalive:
            self.send(watchdog=1)
            self._next_keepalive = now + self.keepalive_s

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    return None  # vsock and other forms: not for us


def _watchdog_interval(env: dict[str, str] | os._Environ[str], pid: int) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if owner and owner != str(pid):
        return None  # the watchdog is meant for another process of the unit
    return int(usec) / 1e6 / 2
