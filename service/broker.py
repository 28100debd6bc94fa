"""Embedded MQTT broker for ``geowarn demo``.

This module owns exactly one thing: :class:`EmbeddedBroker`, a throw-away MQTT
broker that runs inside the GeoWarn process when no external broker is
configured, so that ``pip install -e . && geowarn demo`` works with nothing else
installed.

Why amqtt: it is a pure-Python asyncio MQTT broker that installs from PyPI like
any other dependency -- no system Mosquitto, no Docker, no compiled extension.
Its limits are acceptable for a demo and are documented here so nobody mistakes
it for the production broker:

* MQTT 3.1.1 only (no MQTT 5 properties, no session-expiry negotiation).
* Everything is in memory; sessions and queued messages die with the broker.
* Anonymous sessions never get offline queuing, so the broker is configured
  with ``AnonymousAuthPlugin(allow_anonymous=False)``: any client that sends
  *a* username (any password) is accepted and gets a real, non-anonymous
  session; clients without a username are refused (CONNACK 5) instead of
  silently losing their persistent session.  :attr:`EmbeddedBroker.url`
  carries the demo credentials.
* Offline messages for a ``clean_session=False`` client are replayed on
  reconnect with the RETAIN flag set (an amqtt quirk; the spec says 0).
* amqtt waits at most 5 s for a PUBACK, then gives up on that message; QoS 1
  messages that are in flight (sent, not yet acknowledged) when a subscriber
  disconnects are not redelivered when it reconnects.

The broker runs on its own asyncio event loop in its own thread, so callers
can be plain synchronous code (paho-mqtt, the CLI).  ``stop()`` shuts amqtt
down, closes the loop and joins the thread.

Logging: ``start()`` lowers the ``amqtt`` logger to WARNING unless the
application already set a level on it.  amqtt's state machines (the
``transitions`` package) log every client connect/disconnect at INFO on the
``transitions`` logger; that logger is left alone here -- the application's
logging setup should raise it to WARNING if it logs at INFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from geowarn.core.logfields import kv
from geowarn.service.brokerprobe import connack_code, probe_client_id
from types import TracebackType
from typing import Any

__all__ = ["EmbeddedBroker"]

log = logging.getLogger(__name__)

# Seconds stop() waits for the broker thread.  amqtt's own shutdown waits up to
# 5 s for in-flight broadcasts, so leave room for that.
_STOP_JOIN_TIMEOUT = 20.0
# Seconds the broker thread gives amqtt's shutdown() before cancelling it.
_SHUTDOWN_TIMEOUT = 15.0
# How long a cancelled-but-still-running amqtt task gets before it is cancelled
# again during shutdown (see _shutdown_amqtt).
_RECANCEL_INTERVAL = 0.1
# Attempts at binding an automatically chosen port (another process may grab
# the port between choosing it and amqtt binding it).
_AUTO_PORT_ATTEMPTS = 5


class EmbeddedBroker:
    """Runs an amqtt broker in its own thread with its own asyncio loop on 127.0.0.1:<free port>.

    Usage::

        with EmbeddedBroker() as broker:
            print(broker.url)   # mqtt://geowarn:geowarn@127.0.0.1:45123

    Any username with any password is accepted; :attr:`username` /
    :attr:`password` are the ones put into :attr:`url`.  With ``port=None`` a
    free port is chosen on every ``start()``.  An instance can be started
    again after ``stop()``; the broker's state (sessions, queued messages) does
    not survive a stop.
    """

    USERNAME = "geowarn"
    PASSWORD = "geowarn"

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535 or None, got {port!r}")
        self._host = host
        self._requested_port = port
        self._port: int | None = port
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._broker: Any = None  # amqtt.broker.Broker, only touched from the broker thread

    # ------------------------------------------------------------------ API

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("EmbeddedBroker has no port yet: call start() first")
        return self._port

    @property
    def username(self) -> str:
        return self.USERNAME

    @property
    def password(self) -> str:
        return self.PASSWORD

    @property
    def url(self) -> str:
        """``mqtt://user:password@host:port`` of the running (or last started) broker."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"mqtt://{self.USERNAME}:{self.PASSWORD}@{host}:{self.port}"

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker; return once it accepts MQTT connections on :attr:`port`.

        Raises ``RuntimeError`` if it is already running, if amqtt fails to
        start (e.g. the requested port is in use), or if it is not serving
        within ``timeout`` seconds.  On failure nothing is left running.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"EmbeddedBroker already started on {self._host}:{self._port}")
            self._quiet_amqtt_logging()
            self._ready.clear()
            self._startup_error = None
            self._port = self._requested_port
            self._loop = asyncio.new_event_loop()
            self._stop_requested = asyncio.Event()
            self._thread = threading.Thread(
                target=self._thread_main,
                name="geowarn-embedded-mqtt-broker",
                daemon=True,  # never keep the interpreter alive; stop() joins it anyway
            )
            self._thread.start()

        where = f"{self._host}:{self._requested_port or '<auto>'}"
        if not self._ready.wait(timeout=max(0.0, deadline - time.monotonic())):
            self._stop_quietly()
            raise RuntimeError(f"embedded MQTT broker (amqtt) did not start on {where} within {timeout:g} s")
        if self._startup_error is not None:
            err = self._startup_error
            self._stop_quietly()
            raise RuntimeError(f"embedded MQTT broker (amqtt) failed to start on {where}: {_describe(err)}") from err
        try:
            self._mqtt_probe(max(0.5, deadline - time.monotonic()))
        except (OSError, RuntimeError) as exc:
            self._stop_quietly()
            raise RuntimeError(
                f"embedded MQTT broker (amqtt) started on {self._host}:{self._port} "
                f"but does not accept MQTT connections: {exc}"
            ) from exc

    def stop(self) -> None:
        """Shut the broker down and join its thread.  Idempotent."""
        with self._lock:
            thread, loop, stop_requested = self._thread, self._loop, self._stop_requested
            if thread is None:
                return
            if loop is not None and stop_requested is not None:
                # The loop closes itself when the thread ends; if that already
                # happened (startup failure) there is nothing to signal.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(stop_requested.set)
            thread.join(_STOP_JOIN_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError(
                    f"embedded MQTT broker thread did not stop within {_STOP_JOIN_TIMEOUT:g} s"
                )
            self._thread = None
            self._loop = None
            self._stop_requested = None
            self._broker = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedBroker {self._host}:{self._port or '<auto>'} {state}>"

    # ------------------------------------------------------------ internals

    def _amqtt_config(self, port: int) -> dict[str, Any]:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            # Explicit plugin list: no $SYS plugin (psutil deprecation warning,
            # extra traffic), no packet/event logger plugins.
            "plugins": {
                # allow_anonymous=False: accept any client that presents a
                # username (password not checked), refuse clients without one.
                # Such sessions are not "anonymous", so amqtt keeps their
                # subscriptions and queues QoS 1/2 messages while offline.
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False},
            },
        }

    @staticmethod
    def _quiet_amqtt_logging() -> None:
        # amqtt logs every connection at INFO.  Only touch its own logger, and
        # only if nobody has configured it explicitly.
        amqtt_logger = logging.getLogger("amqtt")
        if amqtt_logger.level == logging.NOTSET:
            amqtt_logger.setLevel(logging.WARNING)

    def _thread_main(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)  # thread-local: only the broker thread sees it
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start() or logged
            if not self._ready.is_set():
                self._startup_error = exc
            else:
                log.exception("embedded MQTT broker crashed")
        finally:
            self._ready.set()
            try:
                _cancel_remaining_tasks(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _serve(self) -> None:
        from amqtt.broker import Broker  # imported lazily: only the demo needs amqtt

        stop_requested = self._stop_requested
        assert stop_requested is not None
        attempts = 1 if self._requested_port is not None else _AUTO_PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port or _pick_free_port(self._host)
            broker = Broker(self._amqtt_config(port))
            try:
                await broker.start()
            except Exception as exc:
                if attempt < attempts and _is_addr_in_use(exc):
                    continue
                raise
            break
        self._broker = broker
        self._port = port
        self._ready.set()
        try:
            await stop_requested.wait()
        finally:
            await _shutdown_amqtt(broker)

    def _stop_quietly(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            log.warning("embedded MQTT broker did not stop after a failed start", exc_info=True)

    def _mqtt_probe(self, timeout: float) -> None:
        """CONNECT, expect CONNACK 0, DISCONNECT: proves the broker serves MQTT.

        (A bare TCP connect/close would make amqtt log an ERROR and leak a socket.)
        """
        with socket.create_connection((self._host, self.port), timeout=timeout) as sock:
            try:
                code = connack_code(sock, probe_client_id(), self.USERNAME, self.PASSWORD, keepalive_s=30)
            except (ValueError, ConnectionError) as exc:
                raise RuntimeError(str(exc)) from None
            if code != 0:
                raise RuntimeError(f"CONNACK refused the probe, return code {code}")


async def _shutdown_amqtt(broker: Any) -> None:
    """``await broker.shutdown()``, working around a CPython 3.11 cancellation bug.

    amqtt's shutdown cancels each client's reader task and waits for it to
    finish.  The reader sits in ``asyncio.wait_for(read...)``; on Python < 3.12
    ``wait_for`` swallows a cancellation that arrives in the same loop
    iteration as data from the client (CPython gh-86296).  The reader then
    keeps waiting for the client's *next* packet and shutdown hangs until the
    client's keep-alive fires -- easy to hit when stopping while clients are
    publishing or acking.  Such a task still reports ``cancelling() > 0``, so
    while shutdown is in progress cancel it again.  Only tasks on the broker's
    private loop are touched.
    """
    shutdown = asyncio.ensure_future(broker.shutdown())
    deadline = time.monotonic() + _SHUTDOWN_TIMEOUT
    while not shutdown.done():
        await asyncio.wait({shutdown}, timeout=_RECANCEL_INTERVAL)
        if shutdown.done():
            break
        if time.monotonic() > deadline:
            log.warning("embedded MQTT broker did not shut down in time; cancelling", extra=kv(timeout_s=_SHUTDOWN_TIMEOUT))
            shutdown.cancel()
            await asyncio.gather(shutdown, return_exceptions=True)
            return
        current = asyncio.current_task()
        for task in asyncio.all_tasks():
            if task is not current and task is not shutdown and not task.done() and task.cancelling():
                task.cancel()
    try:
        shutdown.result()
    except Exception:  # noqa: BLE001 - shutting down anyway
        log.warning("embedded MQTT broker did not shut down cleanly", exc_info=True)


def _describe(exc: BaseException) -> str:
    parts = [f"{type(exc).__name__}: {exc}"]
    cause = exc.__cause__
    while cause is not None and len(parts) < 4:
        if str(cause) not in parts[-1]:  # amqtt repeats the cause's text in its own message
            parts.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__
    return " <- ".join(parts)


def _is_addr_in_use(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in {98, 48, 10048}:  # Linux, macOS, Windows
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _pick_free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _cancel_remaining_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


