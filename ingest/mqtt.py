"""The daemon's MQTT link: paho-mqtt 2.x wrapped so that paho's thread only hands messages over.

- ``CallbackAPIVersion.VERSION2``, QoS 1 subscriptions, a persistent session with a stable
  client id (MQTT 3.1.1 ``clean_session=False``; MQTT 5 ``clean_start=False`` with a
  session-expiry interval, without which MQTT 5 keeps nothing).
- Manual acknowledgement: ``ack()`` is called by the pipeline only after the message's readings
  are committed to the journal. A message that arrived on an earlier connection is never acked
  on a later one: the broker redelivers it with the same packet id, and acking the stale copy
  could acknowledge a different message that reuses the id.
- paho reconnects by itself with exponential backoff (1 s to 30 s) after a broker restart.
- A session taken over: another client connecting with our client id makes the broker drop
  us, we reconnect and drop it, and the two swap the session (and its queued messages) about
  once a second. MQTT 5 says so (DISCONNECT reason 142, "Session taken over"); on MQTT 3.1.1
  the broker only closes the socket, so ``TAKEOVER_DROPS`` losses within ``TAKEOVER_SPAN_S``,
  each shortly after a successful connect, count as one. Either is logged as an ERROR that
  names the likely cause (at most every ``TAKEOVER_LOG_EVERY_S``), not only as reconnects.
- A lost session: a reconnect answered with session-present false after an earlier connect
  of the same persistent session means the broker forgot it (crashed before saving, or runs
  without persistence) and what it queued for us; an ERROR "possible loss" and
  ``sessions_lost`` say so.
- The inbox is bounded. When it is full paho's thread waits (TCP back-pressure to the broker)
  rather than dropping: with manual acks the broker's in-flight window bounds the wait anyway,
  and ``Inbox.waits`` counts it so an operator can see it. It is a deque and an event rather
  than a ``queue.Queue``: the hand-over runs once per message and the Queue's locks cost more
  than the rest of paho's callback.
"""

from __future__ import annotations

import logging
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from geowarn.config.settings import MqttTarget
from geowarn.core.logfields import kv

log = logging.getLogger(__name__)


class Inbound(NamedTuple):
    topic: bytes
    payload: bytes
    mid: int
    qos: int
    generation: int


class Inbox:
    """Hand-over from paho's thread (one producer) to the pipeline (one consumer)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.waits = 0
        self._q: deque[Inbound] = deque()
        self._ready = threading.Event()

    def put(self, item: Inbound, stopping: Callable[[], bool]) -> None:
        q = self._q
        if len(q) >= self.maxsize:
            self.waits += 1
            while len(q) >= self.maxsize and not stopping():
                time.sleep(0.005)  # back-pressure on the broker; only while the pipeline is far behind
        q.append(item)  # deque.append is atomic under the GIL
        self._ready.set()

    def take(self, max_items: int, timeout: float) -> list[Inbound]:
        """Up to ``max_items`` messages, waiting up to ``timeout`` for the first."""
        q = self._q
        if not q:
            self._ready.wait(timeout)
            self._ready.clear()  # an item appended after this sets the event again: no lost wake-up
        out: list[Inbound] = []
        pop = q.popleft
        while q and len(out) < max_items:
            out.append(pop())
        return out

    def qsize(self) -> int:
        return len(self._q)


#: A PUBACK: fixed header 0x40, remaining length 2, packet id (MQTT 3.1.1 §3.4, MQTT 5 §3.4:
#: without a reason code it means success). paho's ``_send_command_with_mid`` packs the same.
_PUBACK_HEADER = 0x40
_PUBACK = struct.Struct("!BBH")


def check_paho_surface() -> None:
    """Fail loudly, at start, if the installed paho-mqtt no longer has what ``ack_many`` uses:
    ``Client._packet_queue(command, packet, mid, qos, info=None)`` and PUBACK = 0x40."""
    import inspect

    params = list(inspect.signature(mqtt.Client._packet_queue).parameters)
    if params[:5] != ["self", "command", "packet", "mid", "qos"] or mqtt.PUBACK != _PUBACK_HEADER:
        raise RuntimeError(
            f"paho-mqtt {getattr(mqtt, '__version__', '?')} changed Client._packet_queue {params} or PUBACK: "
            "MqttLink.ack_many (ingest/mqtt.py) must be adapted to it"
        )


#: MQTT 5 DISCONNECT reason: another connection with the same client id took the session.
SESSION_TAKEN_OVER = 142
#: On MQTT 3.1.1: this many connections lost, each within ``TAKEOVER_AFTER_CONNECT_S`` of
#: being made, within ``TAKEOVER_SPAN_S``, look like a takeover rather than a flaky network.
TAKEOVER_DROPS = 3
TAKEOVER_AFTER_CONNECT_S = 5.0
TAKEOVER_SPAN_S = 60.0
TAKEOVER_LOG_EVERY_S = 300.0


class TakeoverWatch:
    """Tells a session takeover from ordinary reconnects (pure: times are passed in)."""

    def __init__(self) -> None:
        self._connected_at: float | None = None
        self._quick_drops: deque[float] = deque()
        self._logged_at = -float("inf")
        self.takeovers = 0

    def connected(self, now: float) -> None:
        self._connected_at = now

    def dropped(self, now: float, reason: int | None) -> bool:
        """A connection was lost (not by us); True when this should be reported as a takeover now."""
        since, self._connected_at = self._connected_at, None
        suspect = reason == SESSION_TAKEN_OVER
        if not suspect and since is not None and now - since <= TAKEOVER_AFTER_CONNECT_S:
            q = self._quick_drops
            q.append(now)
            while q and now - q[0] > TAKEOVER_SPAN_S:
                q.popleft()
            suspect = len(q) >= TAKEOVER_DROPS
        if not suspect:
            return False
        self.takeovers += 1
        if now - self._logged_at < TAKEOVER_LOG_EVERY_S:
            return False
        self._logged_at = now
        return True


class MqttLink:
    def __init__(
        self,
        target: MqttTarget,
        *,
        client_id: str,
        subscriptions: Sequence[str],
        protocol: str = "3.1.1",
        session_expiry_s: int = 7 * 24 * 3600,
        keepalive_s: int = 30,
        ca_file: str | None = None,
        inbox_size: int = 50_000,
        receive_maximum: int = 1000,
        presence_topic: str | None = None,
        clean_session: bool = False,
        expect_session: bool = False,
    ) -> None:
        check_paho_surface()
        self.target = target
        self.subscriptions = list(subscriptions)
        self.inbox = Inbox(inbox_size)
        self.connected = threading.Event()
        #: Monotonic time since when the link has had no connection (None while connected), and
        #: the connection attempts that failed meanwhile (the daemon says so, with the fix).
        self.disconnected_since: float | None = time.monotonic()
        self.connect_failures = 0
        #: Set when the broker has confirmed this connection's subscriptions.
        self.subscribed = threading.Event()
        self.generation = 0
        #: Held while an ack is checked against the generation and queued, and while paho's
        #: thread moves the generation on at a disconnect: a PUBACK for a message of a lost
        #: connection must never reach the next one (its packet ids may name other messages
        #: if the broker lost the session). Reentrant: queueing may run paho's disconnect
        #: callback on this same thread.
        self._ack_lock = threading.RLock()
        self.connects = 0
        self._stopping = False
        self._v5 = protocol == "5"
        self.client_id = client_id
        self.takeover = TakeoverWatch()
        #: Connects on which the broker had forgotten our persistent session (possible loss),
        #: and the wall time of the last one.
        self.sessions_lost = 0
        self.session_lost_at: float | None = None
        #: The broker held a session for this client id before this link was made (a daemon
        #: restarting on the same data dir): the first connect must find it too.
        self.expect_session = expect_session
        self._persistent = (session_expiry_s > 0) if protocol == "5" else not clean_session
        self._keepalive = keepalive_s
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        if self._v5:
            self.client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
            )
        else:
            self.client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session, protocol=mqtt.MQTTv311, manual_ack=True
            )
        if target.username is not None:
            self.client.username_pw_set(target.username, target.password)
        if target.tls:
            self.client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(1, 30)
        # Operators (and tests) see whether the daemon is up: "online" retained on connect,
        # "offline" from the broker when the daemon vanishes or stops.
        self.presence_topic = presence_topic
        if presence_topic:
            self.client.will_set(presence_topic, b"offline", qos=1, retain=True)
        # Our own publishes (alerts, dead letters) may queue while the broker is away.
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    # -- paho's thread -----------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.connect_failures += 1
            log.error("broker refused the connection", extra=kv(broker=self.target.redacted(), reason=reason_code))
            return
        self.disconnected_since = None
        self.connect_failures = 0
        self.generation += 1
        self.connects += 1
        self.takeover.connected(time.monotonic())
        present = getattr(flags, "session_present", None)
        log.info("connected to the broker", extra=kv(broker=self.target.redacted(), session_present=present))
        if self._persistent and (self.connects > 1 or self.expect_session) and present is False:
            # The broker had our session a moment ago and now does not: it crashed before saving
            # it, or runs without persistence. What it had queued for us is gone.
            self.sessions_lost += 1
            self.session_lost_at = time.time()
            log.error(
                "the broker lost this link's persistent session (session present false where it should be true): possible loss "
                "of the messages it held for us; run Mosquitto with persistence and autosave_on_changes "
                "(`geowarn broker-config`, README: Broker settings)",
                extra=kv(broker=self.target.redacted(), client_id=self.client_id, sessions_lost=self.sessions_lost),
            )
        if self.subscriptions:
            client.subscribe([(t, 1) for t in self.subscriptions])
        if self.presence_topic:
            client.publish(self.presence_topic, b"online", qos=1, retain=True)
        self.connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        self.subscribed.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this when it cannot open the connection at all (refused, unreachable, DNS);
        # it keeps retrying with its backoff.
        self.connect_failures += 1

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._ack_lock:
            # The messages of the connection just lost are not acked from now on, not only
            # once the next CONNACK is handled: paho sends the next CONNECT before that, and a
            # PUBACK queued in between would go out on the new connection.
            self.generation += 1
        if self.connected.is_set() or self.disconnected_since is None:
            self.disconnected_since = time.monotonic()
        self.connected.clear()
        self.subscribed.clear()
        if not self._stopping:
            log.warning("lost the broker; reconnecting with backoff", extra=kv(broker=self.target.redacted(), reason=reason_code))
            value = getattr(reason_code, "value", None)
            if self.takeover.dropped(time.monotonic(), value if isinstance(value, int) else None):
                log.error(
                    "the broker keeps handing this link's session to another client: something else connects with "
                    "the same client id (a second daemon on this configuration, or anyone on an open broker) and takes "
                    "the messages meant for it; lock the broker down with `geowarn broker-config` "
                    "(README: Securing the broker), and give each daemon its own GEOWARN_MQTT_CLIENT_ID",
                    extra=kv(broker=self.target.redacted(), client_id=self.client_id, reason=reason_code, takeovers=self.takeover.takeovers),
                )

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # The raw topic bytes: paho's .topic raises on invalid UTF-8, and the pipeline
        # dead-letters such a topic instead of losing it in paho's thread.
        self.inbox.put(Inbound(msg._topic, bytes(msg.payload), msg.mid, msg.qos, self.generation), self._is_stopping)

    def _is_stopping(self) -> bool:
        return self._stopping

    # -- the pipeline's side -----------------------------------------------------------------

    def start(self) -> None:
        # Silence is counted from the first attempt, not from construction (the workers may
        # take a while to start before the link does).
        self.disconnected_since = time.monotonic()
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._session_expiry_s
            props.ReceiveMaximum = self._receive_maximum
            self.client.connect_async(
                self.target.host, self.target.port, self._keepalive, clean_start=False, properties=props
            )
        else:
            self.client.connect_async(self.target.host, self.target.port, self._keepalive)
        self.client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def ack(self, item: Inbound) -> bool:
        """Acknowledge a message once it is durable; False if it came on an earlier connection."""
        if item.qos == 0:
            return True
        with self._ack_lock:
            if item.generation != self.generation:
                return False
            self.client.ack(item.mid, item.qos)
        return True

    def ack_many(self, items: Sequence[Inbound]) -> int:
        """Acknowledge a batch of messages once they are all durable, waking paho's thread once
        for the batch instead of once per message; returns how many came on an earlier
        connection and were not acked (see ``ack``).

        paho's ``Client.ack`` queues one PUBACK and writes one wake-up byte to paho's socket
        pair per call: with a batch of 2000 that was 2000 ``send()`` calls from the pipeline and
        as many wake-ups of paho's ``select()``. Here the batch's QoS 1 PUBACKs (4 bytes each,
        exactly what paho's ``_send_puback`` packs, valid on MQTT 3.1.1 and 5) go into paho's
        outgoing queue as ONE packet through paho's own ``_packet_queue``, which writes one
        wake-up byte (and, with no paho thread, writes the packet at once); paho's thread
        then sends them with one ``send()``. A QoS 2 message (never one of ours: every
        subscription is QoS 1) goes through ``Client.ack``. ``_packet_queue`` is paho's
        protected surface: ``check_paho_surface`` and tests/test_ack_batch.py fail loudly when
        a paho upgrade changes it."""
        stale = 0
        packets: list[bytes] = []
        pack = _PUBACK.pack
        with self._ack_lock:  # the generation checked is the one the packets are queued under
            gen = self.generation
            for it in items:
                if it.qos == 0:
                    continue
                if it.generation != gen:
                    stale += 1
                elif it.qos == 1:
                    packets.append(pack(_PUBACK_HEADER, 2, it.mid))
                else:
                    self.client.ack(it.mid, it.qos)
            if packets:
                self.client._packet_queue(_PUBACK_HEADER, b"".join(packets), items[-1].mid, 1)
        return stale

    def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def publish_confirmed(self, topic: str, payload: bytes, retain: bool = False, timeout_s: float = 10.0) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK; raise when it does not come (the
        outbox retries a notification that raised)."""
        if not self.connected.is_set():
            raise ConnectionError(f"not connected to {self.target.redacted()}")
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise TimeoutError(f"no PUBACK from {self.target.redacted()} within {timeout_s:.0f} s")

    def stop(self) -> None:
        self._stopping = True
        try:
            if self.presence_topic and self.connected.is_set():
                self.client.publish(self.presence_topic, b"offline", qos=1, retain=True).wait_for_publish(2.0)
            self.client.disconnect()
        finally:
            self.client.loop_stop()
