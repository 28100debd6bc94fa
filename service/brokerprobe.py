"""Does the configured broker let anybody in? One short anonymous MQTT CONNECT tells.

This module owns that question for ``geowarn run`` and ``geowarn check-config`` (issue 12):
an open broker lets anyone publish readings as any device, take over the daemon's session by
its client id, or read the notifications. The probe sends an MQTT 3.1.1 CONNECT with no
username (over TLS when the URL says ``mqtts://``, verified with ``GEOWARN_MQTT_CA_FILE``),
reads the CONNACK and disconnects; it never waits longer than its timeout. The answer is
``"open"``, ``"closed"`` or ``"unknown"`` (broker unreachable, TLS failed, not MQTT), with why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import ssl
import struct
import threading
from typing import NamedTuple

from geowarn.config.settings import MqttTarget, Settings
from geowarn.core.logfields import kv

log = logging.getLogger(__name__)

__all__ = ["Probe", "probe_anonymous", "warn_if_anonymous", "warn_in_background", "ANONYMOUS_WARNING"]

ANONYMOUS_WARNING = (
    "the MQTT broker accepts ANONYMOUS connections: anyone who reaches it can publish "
    "readings as any device, take over the daemon's session by its client id, read the "
    "notifications and forge requests; lock it down with `geowarn broker-config` "
    "(README: Securing the broker)"
)


class Probe(NamedTuple):
    verdict: str  # "open" | "closed" | "unknown"
    detail: str


def _mqtt_str(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def _remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer (7 bits a byte, high bit = more)."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"the broker closed the connection after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def connack_code(sock: socket.socket, client_id: str, username: str | None = None, password: str | None = None, keepalive_s: int = 10) -> int:
    """Send an MQTT 3.1.1 CONNECT (clean session) on ``sock`` and return the CONNACK's return
    code; on 0 say DISCONNECT, so the broker logs a clean goodbye. ValueError when the answer
    is not a CONNACK; ConnectionError when the broker just closes the socket.

    Hand-written rather than through paho: a probe must be one short, synchronous exchange
    (the daemon's start, the embedded broker's readiness), with no network thread to stop."""
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _mqtt_str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive_s) + _mqtt_str(client_id)
    if username is not None:
        body += _mqtt_str(username)
    if password is not None:
        body += _mqtt_str(password)
    sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
    connack = _recv_exact(sock, 4)
    if connack[:2] != b"\x20\x02":
        raise ValueError(f"not an MQTT CONNACK: {connack.hex()}")
    if connack[3] == 0:
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    return connack[3]


def probe_client_id() -> str:
    return f"geowarn-probe-{os.getpid()}-{secrets.token_hex(4)}"


def probe_anonymous(target: MqttTarget, ca_file: str | None = None, timeout_s: float = 2.0) -> Probe:
    """CONNECT without a username; CONNACK 0 means the broker is open."""
    try:
        raw = socket.create_connection((target.host, target.port), timeout=timeout_s)
    except OSError as exc:
        return Probe("unknown", f"cannot reach {target.host}:{target.port}: {exc}")
    try:
        sock: socket.socket = raw
        if target.tls:
            ctx = ssl.create_default_context(cafile=ca_file)
            sock = ctx.wrap_socket(raw, server_hostname=target.host)
        sock.settimeout(timeout_s)
        code = connack_code(sock, probe_client_id())
        if code == 0:
            return Probe("open", "CONNACK 0 to a CONNECT without username")
        return Probe("closed", f"CONNACK return code {code} to a CONNECT without username")
    except ValueError as exc:
        return Probe("unknown", str(exc))
    except ConnectionError as exc:
        # Mosquitto may also just close the socket on a refused client.
        return Probe("closed", str(exc)) if "closed" in str(exc) else Probe("unknown", f"{type(exc).__name__}: {exc}")
    except (OSError, ssl.SSLError) as exc:
        return Probe("unknown", f"{type(exc).__name__}: {exc}")
    finally:
        raw.close()


def warn_if_anonymous(settings: Settings, timeout_s: float = 2.0) -> Probe:
    """Probe the configured broker and log a WARNING when it is open (the daemon's start)."""
    target = settings.mqtt
    result = probe_anonymous(target, str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None, timeout_s)
    if result.verdict == "open":
        log.warning(ANONYMOUS_WARNING, extra=kv(broker=target.redacted(), probe=result.detail))
    elif result.verdict == "closed":
        log.info("the MQTT broker refuses anonymous connections", extra=kv(broker=target.redacted()))
    else:
        log.info("could not check the broker for anonymous access", extra=kv(broker=target.redacted(), reason=result.detail))
    return result


def warn_in_background(settings: Settings) -> threading.Thread:
    """The daemon's start never waits for the probe."""
    t = threading.Thread(target=warn_if_anonymous, args=(settings,), name="geowarn-broker-probe", daemon=True)
    t.start()
    return t
