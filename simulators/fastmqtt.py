"""A pipelining MQTT 3.1.1 publisher for simulated fleets: QoS 1 at the speed of the socket.

This module owns ``FastPublisher``, the fast twin of ``simulators.publish.Publisher`` (same
interface: ``publish``, ``pump``, ``wait_acked``, ``close``, ``commands``, ``published`` /
``acked``), which ``LiveRun`` and ``replay_feed`` use with ``fast=True``
(``geowarn simulate --fast``).

Why not paho: profiled on this machine, paho-mqtt 2.2 spends its time per message around the
wire, not on it — an MQTT 5 ``Properties`` object and a ``ReasonCode`` built for every 3.1.1
publish and PUBACK, a message-info object and an in-flight dict entry, one ``send`` system
call per packet and one ``recv`` pass per PUBACK. Here a PUBLISH is a few bytes joined to the
payload in one buffer (the topic's header is built once per topic), the buffer goes out in
one ``send`` per 64 KiB, and the PUBACKs that arrived meanwhile are read in one ``recv`` and
counted in a tight loop. Nothing else changes: QoS 1, a packet id per message, every PUBACK
matched to a message in flight, a bounded in-flight window (back-pressure, not an unbounded
queue), keep-alive pings while idle, and subscribed commands (QoS 1, acknowledged) handed over
on ``commands``. Any protocol surprise (a refused CONNECT or SUBSCRIBE, a PUBACK for no
message in flight, an unknown packet, the connection closing) raises ``PublishError`` at once.

Deliberately left out: TLS (plain TCP on a trusted network or loopback; use the paho publisher
for ``mqtts://``), QoS 2, MQTT 5, reconnection and session resumption (a simulation run that
loses its broker fails loudly; it is rerun, not resumed).
"""

from __future__ import annotations

import queue
import selectors
import socket
import time

from geowarn.config.settings import MqttTarget

#: Packet types (MQTT 3.1.1 §2.2.1), as the first byte's high nibble.
_CONNACK, _PUBLISH, _PUBACK, _SUBACK, _PINGRESP = 2, 3, 4, 9, 13
#: The buffer goes to the socket once it holds this much.
FLUSH_BYTES = 64 * 1024
_CONNACK_REFUSED = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class PublishError(Exception):
    """The broker could not be reached, refused us, broke the protocol or went away."""


def _varint(n: int) -> bytes:
    """The remaining-length encoding (MQTT 3.1.1 §2.2.3)."""
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _text(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 65535:
        raise ValueError(f"MQTT string of {len(b)} bytes exceeds 65535")
    return len(b).to_bytes(2, "big") + b


class FastPublisher:
    """QoS 1 publishing from the caller's thread over one plain TCP connection.

    ``max_unacked`` bounds the messages in flight (at most 65 535: one packet id each).
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        subscribe: list[str] | None = None,
        max_unacked: int = 20000,
        connect_timeout: float = 10.0,
        keepalive_s: int = 30,
    ) -> None:
        target = MqttTarget(url)
        if target.tls:
            raise PublishError(f"the fast publisher speaks plain MQTT over TCP, not TLS ({target.redacted()}); publish without --fast")
        if not 1 <= max_unacked <= 65535:
            raise ValueError(f"max_unacked must be 1..65535 (one packet id per message in flight), got {max_unacked}")
        self.target = target
        self.commands: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.max_unacked = max_unacked
        self.keepalive_s = keepalive_s
        self.published = 0
        self.acked = 0
        self._in_flight = bytearray(65536)  # 1 where that packet id awaits its PUBACK
        self._next_id = 1
        self._out = bytearray()
        self._in = bytearray()
        self._topics: dict[str, bytes] = {}
        self._last_send = time.monotonic()
        self._connack = False
        self._suback: int | None = None
        self._closed = False
        try:
            self.sock = socket.create_connection((target.host, target.port), timeout=connect_timeout)
        except OSError as exc:
            raise PublishError(f"cannot connect to the broker at {target.redacted()}: {exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ)
        try:
            self._handshake(client_id, list(subscribe or []), connect_timeout)
        except BaseException:
            self._shutdown()
            raise

    # -- connection ------------------------------------------------------------------------

    def _handshake(self, client_id: str, topics: list[str], timeout: float) -> None:
        t = self.target
        flags = 0x02  # clean session: a simulation run starts afresh
        payload = _text(client_id)
        if t.username is not None:
            flags |= 0x80
            payload += _text(t.username)
            if t.password is not None:
                flags |= 0x40
                payload += _text(t.password)
        var = _text("MQTT") + bytes((4, flags)) + self.keepalive_s.to_bytes(2, "big")
        self._out += b"\x10" + _varint(len(var) + len(payload)) + var + payload
        deadline = time.monotonic() + timeout
        while not self._connack:
            self._wait_io(deadline, "CONNACK")
        if topics:
            body = (65535).to_bytes(2, "big") + b"".join(_text(f) + b"\x01" for f in topics)
            self._out += b"\x82" + _varint(len(body)) + body
            while self._suback is None:
                self._wait_io(deadline, "SUBACK")
            if self._suback == 0x80:
                raise PublishError(f"the broker at {t.redacted()} refused the subscription to {', '.join(topics)}")

    def _wait_io(self, deadline: float, what: str) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PublishError(f"the broker at {self.target.redacted()} sent no {what} in time")
        self._io(min(left, 0.5))

    def _shutdown(self) -> None:
        self._closed = True
        try:
            self._sel.close()
        finally:
            self.sock.close()

    # -- the wire --------------------------------------------------------------------------

    def _io(self, timeout: float) -> None:
        """Send what is buffered and read what arrived, waiting up to ``timeout`` for either."""
        if self._closed:
            raise PublishError("the publisher is closed")
        self._send()
        self._sel.modify(self.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if self._out else 0))
        for _, events in self._sel.select(timeout):
            if events & selectors.EVENT_READ:
                self._recv()
            if events & selectors.EVENT_WRITE:
                self._send()

    def _send(self) -> None:
        out = self._out
        while out:
            try:
                n = self.sock.send(out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                raise PublishError(f"connection to the broker at {self.target.redacted()} lost: {exc}") from None
            del out[:n]
            self._last_send = time.monotonic()

    def _recv(self) -> None:
        try:
            data = self.sock.recv(1 << 18)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            raise PublishError(f"connection to the broker at {self.target.redacted()} lost: {exc}") from None
        if not data:
            raise PublishError(f"the broker at {self.target.redacted()} closed the connection ({self.published - self.acked} messages unacknowledged)")
        buf = self._in
        buf += data
        pos, end = 0, len(buf)
        in_flight = self._in_flight
        acked = 0
        while pos < end:
            first = buf[pos]
            if first == 0x40 and pos + 4 <= end:
                # The hot path: a PUBACK (fixed length 2).
                if buf[pos + 1] != 2:
                    raise PublishError(f"malformed PUBACK from {self.target.redacted()}")
                pid = (buf[pos + 2] << 8) | buf[pos + 3]
                if not in_flight[pid]:
                    raise PublishError(f"PUBACK for packet id {pid}, which is not in flight")
                in_flight[pid] = 0
                acked += 1
                pos += 4
                continue
            # Any other packet: decode its remaining length, wait for all of it.
            length, mult, i = 0, 1, pos + 1
            while True:
                if i >= end:
                    length = -1
                    break
                b = buf[i]
                length += (b & 0x7F) * mult
                i += 1
                if not b & 0x80:
                    break
                mult *= 128
                if mult > 128**3:
                    raise PublishError(f"malformed remaining length from {self.target.redacted()}")
            if length < 0 or i + length > end:
                break
            self._packet(first, bytes(buf[i : i + length]))
            pos = i + length
        del buf[:pos]
        self.acked += acked

    def _packet(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == _CONNACK:
            if len(body) != 2 or body[1] != 0:
                rc = body[1] if len(body) == 2 else -1
                raise PublishError(f"the broker at {self.target.redacted()} refused the connection: {_CONNACK_REFUSED.get(rc, f'code {rc}')}")
            self._connack = True
        elif kind == _PUBLISH:
            qos = (first >> 1) & 3
            n = int.from_bytes(body[:2], "big")
            topic = body[2 : 2 + n].decode("utf-8", "replace")
            pos = 2 + n
            if qos:
                self._out += bytes((0x40, 2)) + body[pos : pos + 2]  # acknowledge the command
                pos += 2
            self.commands.put((topic, body[pos:]))
        elif kind == _SUBACK:
            self._suback = max(body[2:]) if len(body) > 2 else 0x80
        elif kind == _PINGRESP:
            pass
        elif kind == _PUBACK:
            raise PublishError(f"malformed PUBACK from {self.target.redacted()}")
        else:
            raise PublishError(f"unexpected MQTT packet type {kind} from {self.target.redacted()}")

    # -- the Publisher interface -----------------------------------------------------------

    def pump(self, timeout: float = 0.0) -> None:
        """Send what is buffered, process acks and commands, waiting up to ``timeout``."""
        if time.monotonic() - self._last_send > self.keepalive_s / 2 and not self._out:
            self._out += b"\xc0\x00"  # PINGREQ: quiet while pacing, still alive
        self._io(max(0.0, timeout))

    def publish(self, topic: str, payload: bytes) -> None:
        """Queue one QoS 1 PUBLISH; blocks (reading acks) while ``max_unacked`` are in flight."""
        if self._closed:
            raise PublishError("the publisher is closed")
        if self.published - self.acked >= self.max_unacked:
            deadline = time.monotonic() + 30.0
            while self.published - self.acked >= self.max_unacked:
                if time.monotonic() > deadline:
                    raise PublishError(f"the broker acknowledged nothing for 30 s ({self.published - self.acked} messages unacknowledged)")
                self._io(0.05)
        pid = self._next_id
        in_flight = self._in_flight
        while in_flight[pid]:  # only when acks come back out of order: skip ids still in flight
            pid = pid % 65535 + 1
        in_flight[pid] = 1
        self._next_id = pid % 65535 + 1
        head = self._topics.get(topic)
        if head is None:
            head = self._topics[topic] = _text(topic)
        out = self._out
        out += b"\x32"  # PUBLISH, QoS 1, no retain, no dup
        out += _varint(len(head) + 2 + len(payload))
        out += head
        out += pid.to_bytes(2, "big")
        out += payload
        self.published += 1
        if len(out) >= FLUSH_BYTES:
            self._io(0.0)

    def wait_acked(self, timeout: float = 60.0) -> bool:
        """Wait until the broker has acknowledged every message published so far."""
        deadline = time.monotonic() + timeout
        while self.acked < self.published or self._out:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._io(min(left, 0.1))
        return True

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._out += b"\xe0\x00"  # DISCONNECT: a clean goodbye, no will
            self._send()
        except PublishError:
            pass  # closing anyway; a lost connection was already reported by the caller's path
        finally:
            self._shutdown()
