"""Batched PUBACKs (issue 17, item 4): a committed batch is acknowledged with one wake-up of
paho's thread, and nothing is acknowledged before it is committed.

Real Mosquitto, real paho-mqtt, the real ``MqttLink`` and the real daemon ``App``. The only
instrument is a counter on paho's wake-up socket (the socket pair its ``select()`` loop
watches): it forwards every byte to the real socket and counts the ``send()`` calls. What
the broker still holds is asked of the broker itself, by connecting to the session again.

``MqttLink.ack_many`` uses paho's protected ``Client._packet_queue``; these tests are what
fails when a paho upgrade changes it (``check_paho_surface`` also stops the daemon's start).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from daemonproc import publisher
from geowarn.config.settings import MqttTarget, load_all
from geowarn.ingest.mqtt import MqttLink, check_paho_surface
from geowarn.service.daemon import build_app
from services import Mosquitto

pytestmark = pytest.mark.slow

T0 = float(int(time.time()) - 2 * 86400)
TOPIC = "geowarn/BSH/BSH-EXT1/data"


class CountingSocket:
    """paho's wake-up socket, counting the ``send()`` calls made on it."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.sends = 0
        self.lock = threading.Lock()

    def send(self, data: bytes) -> int:
        with self.lock:
            self.sends += 1
        return int(self._sock.send(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _count_wakeups(client: mqtt.Client) -> CountingSocket:
    counter = CountingSocket(client._sockpairW)
    client._sockpairW = counter  # type: ignore[assignment]
    return counter


def _wait(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _msg(i: int) -> bytes:
    return json.dumps({"v": 1, "device": "BSH-EXT1", "seq": i, "readings": [{"ch": "disp", "t": T0 + i, "v": 1.0 + i % 5}]}).encode()


def _broker(tmp_path: Path) -> Mosquitto:
    # A window larger than the batches, so that the broker sends a whole batch unacknowledged.
    broker = Mosquitto(tmp_path / "mosquitto", max_inflight_messages=1000)
    broker.start()
    return broker


def _link(broker: Mosquitto, client_id: str) -> MqttLink:
    link = MqttLink(MqttTarget(broker.url), client_id=client_id, subscriptions=["geowarn/+/+/data"])
    link.start()
    assert link.wait_connected(10) and link.subscribed.wait(10)
    return link


def _publish(broker: Mosquitto, n: int) -> None:
    pub = publisher(broker.url, "ack-batch-publisher")
    try:
        for i in range(n):
            info = pub.publish(TOPIC, _msg(i), qos=1)
        info.wait_for_publish(30)
        assert info.is_published()
    finally:
        pub.disconnect()
        pub.loop_stop()


def test_the_installed_paho_has_what_ack_many_uses():
    check_paho_surface()  # raises RuntimeError naming what changed


def test_a_batch_is_acked_with_one_wakeup_and_nothing_before_ack_many(tmp_path):
    n = 500
    broker = _broker(tmp_path)
    try:
        link = _link(broker, "ack-batch")
        _publish(broker, n)
        _wait(lambda: link.inbox.qsize() == n, f"{n} messages in the inbox")
        link.stop()  # received, not acknowledged

        # The broker kept every one of them: receiving is not acknowledging.
        link = _link(broker, "ack-batch")
        _wait(lambda: link.inbox.qsize() == n, f"all {n} messages delivered again")
        time.sleep(0.3)
        items = link.inbox.take(n + 10, 0.0)
        assert len(items) == n and sorted(json.loads(it.payload)["seq"] for it in items) == list(range(n))
        wakeups = _count_wakeups(link.client)
        assert link.ack_many(items) == 0  # none stale
        assert wakeups.sends == 1  # one wake-up for the whole batch, not one per message
        _wait(lambda: not link.client.want_write(), "the PUBACKs written to the broker")
        time.sleep(0.3)
        link.stop()

        # The broker got all n PUBACKs: nothing is delivered again.
        link = _link(broker, "ack-batch")
        time.sleep(1.0)
        assert link.inbox.qsize() == 0
        link.stop()
    finally:
        broker.stop()


def test_ack_many_does_not_ack_what_came_on_an_earlier_connection(tmp_path):
    broker = _broker(tmp_path)
    try:
        link = _link(broker, "ack-stale")
        _publish(broker, 20)
        _wait(lambda: link.inbox.qsize() == 20, "20 messages in the inbox")
        items = link.inbox.take(100, 0.0)
        link.client.reconnect()  # a new connection: the broker sends the 20 again, same packet ids
        _wait(lambda: link.generation == 2 and link.inbox.qsize() == 20, "the 20 messages delivered again")
        assert link.ack_many(items) == 20  # stale: not acked (an id may now mean another message)
        again = link.inbox.take(100, 0.0)
        assert link.ack_many(again) == 0
        _wait(lambda: not link.client.want_write(), "the PUBACKs written")
        time.sleep(0.3)
        link.stop()
        link = _link(broker, "ack-stale")
        time.sleep(1.0)
        assert link.inbox.qsize() == 0
        link.stop()
    finally:
        broker.stop()


def test_the_daemon_acks_each_committed_batch_with_one_wakeup_and_none_before_its_commit(tmp_path, monkeypatch):
    """A backlog queued for the daemon's session, drained by the real App: every message-log
    commit sees no acknowledgement of its own batch while it commits, each commit is followed
    by exactly one wake-up (however many messages it held), and afterwards the broker holds
    nothing and the message log everything."""
    n = 3000
    broker = _broker(tmp_path)
    client_id = "geowarn-ack-batch"
    monkeypatch.setenv("GEOWARN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GEOWARN_MQTT_URL", broker.url)
    monkeypatch.setenv("GEOWARN_MQTT_CLIENT_ID", client_id)
    monkeypatch.setenv("GEOWARN_HTTP", "off")
    try:
        # The daemon's persistent session exists (its subscriptions) and a backlog waits in it.
        link = _link(broker, client_id)
        link.stop()
        _publish(broker, n)

        app = build_app(load_all())
        counter: list[CountingSocket] = []
        commits: list[tuple[int, int, int]] = []  # (messages, wake-ups at the commit's start, at its end)
        append = app.messages.append

        def observed_append(messages: Any, received_ms: int) -> None:
            before = counter[0].sends
            append(messages, received_ms)
            commits.append((len(messages), before, counter[0].sends))

        app.messages.append = observed_append  # type: ignore[method-assign]
        start = app.link.start

        def start_counting() -> None:
            start()  # loop_start() has made paho's socket pair
            counter.append(_count_wakeups(app.link.client))

        app.link.start = start_counting  # type: ignore[method-assign]
        stop = threading.Event()
        thread = threading.Thread(target=app.run, args=(stop,))
        thread.start()
        try:
            _wait(lambda: app.counters.messages == n, f"{n} messages committed and acked", 60)
            time.sleep(0.5)
            wakeups_at_the_end = counter[0].sends  # before the stop publishes "offline"
        finally:
            stop.set()
            thread.join(120)
        assert not thread.is_alive()
        assert sum(k for k, _, _ in commits) == n
        assert max(k for k, _, _ in commits) > 1, "the backlog came in batches of several messages"
        for (k, before, after), nxt in zip(commits, commits[1:] + [None]):
            assert after == before, "an acknowledgement went out while its batch was being committed"
            # After each commit, before the next one (or the end): this batch's one wake-up (the
            # daemon's link publishes nothing else meanwhile). Had a batch been acked before its
            # commit, the last commit would be followed by none.
            later = nxt[1] if nxt is not None else wakeups_at_the_end
            assert later - after == 1, f"a batch of {k} messages woke paho {later - after} times after its commit"
        conn = sqlite3.connect(f"file:{app.log_path}?mode=ro", uri=True)
        try:
            assert conn.execute("SELECT sum(count) FROM batches").fetchone()[0] == n
        finally:
            conn.close()
        # The broker holds nothing more for the daemon's session: every message was acked.
        link = _link(broker, client_id)
        time.sleep(1.0)
        assert link.inbox.qsize() == 0
        link.stop()
    finally:
        broker.stop()


def test_a_puback_queued_while_the_link_reconnects_never_reaches_the_new_connection(tmp_path):
    """paho sends the next CONNECT before our connect callback runs; an ack for a message of
    the lost connection queued in between would go out on the new one, where its packet id
    may name another message (a broker that lost the session). The generation moves on at
    the disconnect, under the same lock as the check and the queueing."""
    import socket

    broker = _broker(tmp_path)
    try:
        link = _link(broker, "ack-window")
        _publish(broker, 5)
        _wait(lambda: link.inbox.qsize() == 5, "5 messages in the inbox")
        items = link.inbox.take(100, 0.0)
        before = link.generation
        entered = threading.Event()
        original = link._on_connect

        def slow_connect(*a: Any) -> None:  # the CONNACK's round trip, made long
            entered.set()
            time.sleep(0.5)
            original(*a)

        link.client.on_connect = slow_connect
        link.client._sock.shutdown(socket.SHUT_RDWR)  # the connection lost under paho: it reconnects
        assert entered.wait(15), "paho did not reconnect"
        # The window: a new connection, our connect callback not run yet.
        assert link.ack_many(items) == 5 and link.generation > before
        assert not any(p["command"] == 0x40 for p in list(link.client._out_packet)), "a PUBACK queued for the new connection"
        link.stop()
    finally:
        broker.stop()
