"""Real-network tests of geowarn.service.broker.EmbeddedBroker (amqtt) with paho-mqtt 2.x clients.

No mocks: every test starts an amqtt broker on 127.0.0.1:<free port> and talks
MQTT 3.1.1 to it.  Waiting is done on queues/events with timeouts.  Where a test
needs to know what the *broker* has done (a DISCONNECT processed, PUBACKs
consumed) it inspects amqtt's state on the broker's own loop through
``_broker_state`` / ``_wait_on_broker`` (white-box, private attributes of our
own class).

Some tests pin down amqtt 0.12 behaviour that differs from the MQTT 3.1.1 spec
(documented in each test).  If an amqtt upgrade fixes one of them, the test
fails on purpose: update the test and the module docstring of service/broker.py.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
import pytest

from geowarn.service.broker import EmbeddedBroker

TIMEOUT = 10.0  # generous upper bound for any single wait on a 2-core CI box
DATA_FILTER = "geowarn/+/+/data"


# --------------------------------------------------------------------------- helpers


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int


class Peer:
    """A paho-mqtt 2.x client whose callbacks feed queues/events."""

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        clean_session: bool,
        manual_ack: bool = False,
        with_credentials: bool = True,
    ) -> None:
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        self.host, self.port = parts.hostname, parts.port
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        if with_credentials:
            assert parts.username is not None and parts.password is not None
            self.client.username_pw_set(unquote(parts.username), unquote(parts.password))
        self.client.manual_ack_set(manual_ack)
        self.messages: queue.Queue[Received] = queue.Queue()
        self.connacks: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.disconnected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self._loop_running = False

    # paho callbacks (run on paho's network thread)
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self.connacks.put((bool(flags.session_present), reason_code))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        self.subacks.put(list(reason_codes))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid))

    def _on_disconnect(self, *args: Any) -> None:
        self.disconnected.set()

    # actions
    def connect(self) -> tuple[bool, Any]:
        """Connect and return (session_present, reason_code) from the CONNACK."""
        self.disconnected.clear()
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self._loop_running = True
        return self.connacks.get(timeout=TIMEOUT)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        result, _mid = self.client.subscribe(topic, qos=qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        granted = self.subacks.get(timeout=TIMEOUT)
        assert [rc.value for rc in granted] == [qos], granted

    def publish_all(self, items: list[tuple[str, bytes]], qos: int = 1) -> None:
        """Publish in order; return once the broker has PUBACKed every message."""
        infos = [self.client.publish(topic, payload, qos=qos) for topic, payload in items]
        for info in infos:
            info.wait_for_publish(timeout=TIMEOUT)
            assert info.is_published(), f"no PUBACK for mid {info.mid}"

    def receive(self, n: int) -> list[Received]:
        return [self.messages.get(timeout=TIMEOUT) for _ in range(n)]

    def disconnect(self) -> None:
        """Clean DISCONNECT; returns once paho has closed the socket."""
        self.client.disconnect()
        assert self.disconnected.wait(TIMEOUT)
        self.stop_loop()

    def stop_loop(self) -> None:
        if self._loop_running:
            # After a refused CONNACK or a lost broker, paho's network thread
            # sits in its reconnect back-off; disconnect() ends that at once.
            if not self.client.is_connected():
                self.client.disconnect()
            self.client.loop_stop()
            self._loop_running = False

    def close(self) -> None:
        if self.client.is_connected():
            self.client.disconnect()
            self.disconnected.wait(TIMEOUT)
        self.stop_loop()


def _broker_state(broker: EmbeddedBroker, fn: Callable[[Any], Any]) -> Any:
    """Run ``fn(amqtt_broker)`` on the broker's event loop and return its result."""

    async def call() -> Any:
        return fn(broker._broker)

    assert broker._loop is not None
    return asyncio.run_coroutine_threadsafe(call(), broker._loop).result(TIMEOUT)


def _wait_on_broker(broker: EmbeddedBroker, predicate: Callable[[Any], bool], what: str) -> None:
    """Block until ``predicate(amqtt_broker)`` holds, evaluated on the broker's loop."""

    async def until() -> None:
        while not predicate(broker._broker):
            await asyncio.sleep(0.005)

    assert broker._loop is not None
    future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(until(), TIMEOUT), broker._loop)
    try:
        future.result(TIMEOUT + 1)
    except TimeoutError:
        pytest.fail(f"broker never reached state: {what}")


def _session(amqtt_broker: Any, client_id: str) -> Any:
    return amqtt_broker.sessions.get(client_id, (None, None))[0]


def _session_state(client_id: str) -> Callable[[Any], str | None]:
    def state(amqtt_broker: Any) -> str | None:
        session = _session(amqtt_broker, client_id)
        return None if session is None else session.transitions.state

    return state


def _inflight_out(client_id: str) -> Callable[[Any], list[int]]:
    """Packet ids the broker has sent to ``client_id`` and not yet seen a PUBACK for."""

    def inflight(amqtt_broker: Any) -> list[int]:
        return list(_session(amqtt_broker, client_id).inflight_out)

    return inflight


def _payload(i: int) -> bytes:
    # text prefix + arbitrary binary tail of varying length (0..16 bytes, incl. 0x00/0xff)
    return f"seq={i:05d};".encode() + bytes((i * 37 + k) % 256 for k in range(i % 17))


class _LogWaiter(logging.Handler):
    """Sets an event when a record containing ``needle`` is logged."""

    def __init__(self, needle: str) -> None:
        super().__init__(level=logging.WARNING)
        self.needle = needle
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.seen.set()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def peers(broker: EmbeddedBroker) -> Iterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def make(client_id: str, **kwargs: Any) -> Peer:
        peer = Peer(broker.url, client_id, **kwargs)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


# --------------------------------------------------------------------------- tests


def test_url_carries_credentials_and_address(broker: EmbeddedBroker) -> None:
    parts = urlsplit(broker.url)
    assert parts.scheme == "mqtt"
    assert (parts.username, parts.password) == (broker.username, broker.password) == ("geowarn", "geowarn")
    assert (parts.hostname, parts.port) == ("127.0.0.1", broker.port)
    assert broker.running


def test_200_qos1_messages_arrive_exact_and_in_order(broker: EmbeddedBroker, peers: Callable[..., Peer]) -> None:
    sub = peers("sub1", clean_session=False)
    session_present, rc = sub.connect()
    assert not rc.is_failure and session_present is False
    sub.subscribe(DATA_FILTER, qos=1)

    pub = peers("pub1", clean_session=True)
    assert not pub.connect()[1].is_failure
    expected = [(f"geowarn/site{i % 4}/sensor{i % 3}/data", _payload(i)) for i in range(200)]
    # Interleave messages the filter must NOT match (wrong depth / wrong leaf).
    noise = [("geowarn/site0/sensor0/status", b"no"), ("geowarn/site0/data", b"no"), ("geowarn/a/b/data/x", b"no")]
    to_send = []
    for i, item in enumerate(expected):
        to_send.append(item)
        if i % 50 == 0:
            to_send.extend(noise)
    pub.publish_all(to_send, qos=1)

    got = sub.receive(200)
    assert [(m.topic, m.payload) for m in got] == expected
    assert all(m.qos == 1 for m in got)
    assert all(m.retain is False for m in got)
    # Delivery to one subscriber is ordered, so any matched noise would have
    # arrived before the last expected message.
    assert sub.messages.empty()


def test_manual_ack_defers_puback_until_ack(
    broker: EmbeddedBroker, peers: Callable[..., Peer], caplog: pytest.LogCaptureFixture
) -> None:
    sub = peers("sub-ack", clean_session=False, manual_ack=True)
    assert not sub.connect()[1].is_failure
    sub.subscribe(DATA_FILTER, qos=1)
    pub = peers("pub-ack", clean_session=True)
    pub.connect()
    items = [(f"geowarn/s1/tilt/data", _payload(i)) for i in range(20)]
    pub.publish_all(items)

    got = sub.receive(20)
    assert [m.payload for m in got] == [p for _, p in items]
    assert all(m.qos == 1 for m in got)

    # Not acked yet: the broker is still waiting for all 20 PUBACKs.
    _wait_on_broker(broker, lambda b: len(_inflight_out("sub-ack")(b)) == 20, "20 messages in flight to sub-ack")
    assert sorted(_broker_state(broker, _inflight_out("sub-ack"))) == sorted(m.mid for m in got)

    for m in got:
        assert sub.client.ack(m.mid, m.qos) == mqtt.MQTT_ERR_SUCCESS

    _wait_on_broker(broker, lambda b: not _inflight_out("sub-ack")(b), "all PUBACKs from sub-ack consumed")
    assert sub.messages.empty()  # acking did not cause redelivery
    amqtt_warnings = [r.getMessage() for r in caplog.records if r.name.startswith("amqtt") and r.levelno >= logging.WARNING]
    assert amqtt_warnings == []


def test_persistent_session_queues_qos1_while_offline(broker: EmbeddedBroker, peers: Callable[..., Peer]) -> None:
    """clean_session=False: subscription and QoS 1 messages survive a disconnect.

    amqtt 0.12 quirk pinned here: messages queued while the client was offline
    are replayed with the RETAIN flag set (MQTT-3.3.1-9 says it must be 0 for
    messages that are not sent because of a new subscription).  Consumers must
    not treat retain=True as "stale retained value" on this broker.
    """
    sub = peers("sub-persist", clean_session=False)
    session_present, rc = sub.connect()
    assert not rc.is_failure and session_present is False
    sub.subscribe(DATA_FILTER, qos=1)
    sub.disconnect()
    # paho reports the disconnect when *its* socket is closed; wait until the
    # broker has processed the DISCONNECT too, otherwise amqtt would still
    # "deliver" to the dying connection (and those messages are lost).
    _wait_on_broker(broker, lambda b: _session_state("sub-persist")(b) == "disconnected", "sub-persist disconnected")

    pub = peers("pub-persist", clean_session=True)
    pub.connect()
    items = [(f"geowarn/s{i % 2}/strain/data", _payload(i)) for i in range(10)]
    pub.publish_all(items)  # all PUBACKed by the broker while sub-persist is offline
    _wait_on_broker(
        broker,
        lambda b: _session(b, "sub-persist").retained_messages.qsize() == 10,
        "10 messages queued for offline sub-persist",
    )

    # Same client id, new paho object, no re-subscribe: the broker kept the subscription.
    back = peers("sub-persist", clean_session=False)
    session_present, rc = back.connect()
    assert not rc.is_failure
    assert session_present is True
    got = back.receive(10)
    assert [(m.topic, m.payload) for m in got] == items
    assert all(m.qos == 1 for m in got)
    assert all(m.retain is True for m in got), "amqtt fixed the RETAIN-flag quirk: update docs/tests"

    # Live delivery after reconnect works through the kept subscription, flag clear.
    pub.publish_all([("geowarn/s9/strain/data", b"live")])
    (live,) = back.receive(1)
    assert (live.payload, live.retain) == (b"live", False)


def test_unacked_inflight_messages_are_not_redelivered_after_reconnect(
    broker: EmbeddedBroker, peers: Callable[..., Peer]
) -> None:
    """Documents an amqtt 0.12 limitation (MQTT-4.4.0-1 says: resend unacked PUBLISH on reconnect).

    A clean_session=False subscriber receives QoS 1 messages, does not ack them
    (manual ack), disconnects and reconnects with the same client id: amqtt
    does NOT resend them -- they are lost.  The session itself (subscription)
    survives.  At-least-once processing via manual ack therefore does not
    survive a consumer restart on the embedded broker.
    """
    sub = peers("sub-unacked", clean_session=False, manual_ack=True)
    sub.connect()
    sub.subscribe(DATA_FILTER, qos=1)
    pub = peers("pub-unacked", clean_session=True)
    pub.connect()
    pub.publish_all([("geowarn/s1/gnss/data", _payload(i)) for i in range(5)])
    assert len(sub.receive(5)) == 5  # received, never acked
    _wait_on_broker(broker, lambda b: len(_inflight_out("sub-unacked")(b)) == 5, "5 unacked in flight")

    sub.disconnect()
    _wait_on_broker(broker, lambda b: _session_state("sub-unacked")(b) == "disconnected", "sub-unacked disconnected")

    back = peers("sub-unacked", clean_session=False)
    session_present, _ = back.connect()
    assert session_present is True
    # Barrier: anything amqtt resends on reconnect is sent before it processes
    # new publishes, so the first message we get tells us whether it resent.
    pub.publish_all([("geowarn/s1/gnss/data", b"marker")])
    first = back.receive(1)[0]
    assert first.payload == b"marker", f"amqtt now redelivers unacked messages ({first.payload!r}): update docs"
    assert back.messages.empty()


@pytest.mark.slow
def test_puback_later_than_5s_is_dropped_by_amqtt(broker: EmbeddedBroker, peers: Callable[..., Peer]) -> None:
    """Documents amqtt 0.12's hard-coded 5 s PUBACK timeout.

    If a manual-ack subscriber takes longer than 5 s to ack, amqtt logs
    "Timeout waiting for PUBACK", forgets the message (no retry) and later logs
    "Received PUBACK for unknown pending message" when the ack arrives; it also
    logs the timed-out delivery task as an ERROR with traceback.
    """
    waiter = _LogWaiter("Timeout waiting for PUBACK")
    amqtt_logger = logging.getLogger("amqtt")
    amqtt_logger.addHandler(waiter)
    try:
        sub = peers("sub-slow", clean_session=False, manual_ack=True)
        sub.connect()
        sub.subscribe(DATA_FILTER, qos=1)
        pub = peers("pub-slow", clean_session=True)
        pub.connect()
        pub.publish_all([("geowarn/s1/rain/data", b"slow")])
        (msg,) = sub.receive(1)
        assert waiter.seen.wait(TIMEOUT), "amqtt no longer times out PUBACKs after 5 s: update docs"
        assert _broker_state(broker, _inflight_out("sub-slow")) == []  # given up, not retried
        sub.client.ack(msg.mid, msg.qos)
        pub.publish_all([("geowarn/s1/rain/data", b"marker")])
        assert sub.receive(1)[0].payload == b"marker"  # "slow" was not resent
    finally:
        amqtt_logger.removeHandler(waiter)


def test_client_without_username_is_refused(broker: EmbeddedBroker) -> None:
    """Anonymous clients would get no offline queuing from amqtt, so they are refused outright."""
    anon = Peer(broker.url, "anon", clean_session=False, with_credentials=False)
    try:
        _, rc = anon.connect()
        assert rc.is_failure
        assert rc == "Not authorized"
    finally:
        anon.stop_loop()


def test_any_username_and_password_are_accepted(broker: EmbeddedBroker) -> None:
    url = broker.url.replace("geowarn:geowarn@", "someone:wrong@")
    peer = Peer(url, "other-user", clean_session=True)
    try:
        assert not peer.connect()[1].is_failure
    finally:
        peer.close()


def _roundtrip(broker: EmbeddedBroker, tag: str) -> tuple[Peer, Peer]:
    sub = Peer(broker.url, f"sub-{tag}", clean_session=False)
    assert not sub.connect()[1].is_failure
    sub.subscribe(DATA_FILTER)
    pub = Peer(broker.url, f"pub-{tag}", clean_session=True)
    assert not pub.connect()[1].is_failure
    pub.publish_all([("geowarn/s/x/data", tag.encode())])
    assert sub.receive(1)[0].payload == tag.encode()
    return sub, pub


def test_start_stop_twice_leaves_no_threads_or_loops() -> None:
    baseline = set(threading.enumerate())

    # Same instance, started twice; clients are still connected when stop() runs.
    broker = EmbeddedBroker()
    loops = []
    for run in range(2):
        broker.start()
        assert broker.running
        loops.append(broker._loop)
        sub, pub = _roundtrip(broker, f"same{run}")
        broker.stop()
        assert sub.disconnected.wait(TIMEOUT)  # the broker really went away
        sub.stop_loop()
        pub.disconnected.wait(TIMEOUT)
        pub.stop_loop()
        assert not broker.running
        broker.stop()  # idempotent
    assert all(loop is not None and loop.is_closed() and not loop.is_running() for loop in loops)

    # Two fresh instances in a row, via the context manager.
    for run in range(2):
        with EmbeddedBroker() as other:
            sub, pub = _roundtrip(other, f"ctx{run}")
            sub.close()
            pub.close()
        assert not other.running

    leftover = set(threading.enumerate()) - baseline
    assert leftover == set(), f"threads left behind: {leftover}"
    assert [t for t in threading.enumerate() if not t.daemon] == [threading.main_thread()]


def test_start_errors_are_clear_and_leave_nothing_running() -> None:
    baseline = set(threading.enumerate())
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy_port = blocker.getsockname()[1]
        broker = EmbeddedBroker(port=busy_port)
        with pytest.raises(RuntimeError, match=rf"failed to start on 127\.0\.0\.1:{busy_port}.*in use"):
            broker.start()
        assert not broker.running

    with EmbeddedBroker() as running:
        with pytest.raises(RuntimeError, match="already started"):
            running.start()
    assert set(threading.enumerate()) - baseline == set()
