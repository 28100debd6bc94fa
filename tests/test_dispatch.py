"""The dispatcher against real receivers: backoff on a ManualClock, isolation from a hanging
receiver, dead letters, exactly-once ids across a restart, and the alarm about a failing
notifier (once per episode)."""

from __future__ import annotations

import hashlib
import json
import logging
import time

import httpx
import pytest

from geowarn.core.logfields import fields_of
from geowarn.core.clock import ManualClock
from geowarn.alerts.dispatch import Backoff, Dispatcher, DispatcherThread
from geowarn.alerts.notifiers import AUDIT_KEY, JsonlNotifier, Outgoing, WebhookNotifier
from geowarn.alerts.outbox import Outbox
from receivers import HttpReceiver, http_receiver  # noqa: F401  (fixture)

T0 = 1_764_408_600.0
SECRET = "k"
COUNTY = "420527/webhook/0"
NATIONAL = "100000/webhook/0"


def _msg(i: int, notifier: str = COUNTY) -> Outgoing:
    return Outgoing(
        id=f"n{i}/{notifier}", notifier=notifier, kind="warning", admin=notifier.split("/")[0], site="S1", level=3,
        subject=f"橙色警戒级 S1 #{i}", text="S1 orange", body={"n": i}, t=T0,
    )


def _u(key: str, attempt: int) -> float:
    """The documented jitter fraction, worked out here from SHA-256 directly."""
    return int(hashlib.sha256(f"{key}|{attempt}".encode()).hexdigest()[:16], 16) / 2**64


@pytest.fixture
def client():
    with httpx.Client(timeout=10.0) as c:
        yield c


@pytest.fixture
def outbox(tmp_path):
    ob = Outbox(tmp_path / "outbox.sqlite")
    yield ob
    ob.close()


def test_backoff_doubles_from_two_seconds_up_to_ten_minutes():
    plain = Backoff(jitter=0.0)
    assert [plain.delay(n, "x") for n in range(1, 12)] == [2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]
    b = Backoff()
    assert b.delay(3, "id-a") == pytest.approx(8 * (1 - 0.2 * _u("id-a", 3)))
    assert b.delay(3, "id-a") == b.delay(3, "id-a")  # deterministic
    assert len({b.delay(3, f"id-{i}") for i in range(20)}) == 20  # yet spread across ids
    assert all(480 <= b.delay(1000, f"k{i}") <= 600 for i in range(20))
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=1.0)


def test_retries_with_backoff_until_the_receiver_recovers(http_receiver, client, outbox):
    clock = ManualClock(T0)
    d = Dispatcher(outbox, {COUNTY: WebhookNotifier(http_receiver.url, SECRET, client)}, clock, timeout_s=5)
    m = _msg(1)
    outbox.enqueue([m], now=T0)
    http_receiver.fail_next(2, 503)
    first = 2 * (1 - 0.2 * _u(m.id, 1))
    second = 4 * (1 - 0.2 * _u(m.id, 2))

    assert d.run_once() == 0
    assert len(http_receiver.requests) == 1
    clock.set(T0 + first - 0.01)
    assert d.run_once() == 0
    assert len(http_receiver.requests) == 1  # not before its time
    clock.set(T0 + first)
    assert d.run_once() == 0
    assert len(http_receiver.requests) == 2
    item = outbox.get(m.id)
    assert (item.state, item.attempts, item.next_try) == ("pending", 2, pytest.approx(T0 + first + second))
    assert "HTTP 503" in item.last_error
    clock.set(T0 + first + second - 0.01)
    assert d.run_once() == 0
    clock.set(T0 + first + second)
    assert d.run_once() == 1

    assert http_receiver.ids() == [m.id] * 3  # the same id every time: the receiver can dedupe
    item = outbox.get(m.id)
    assert (item.state, item.attempts, item.sent_at) == ("sent", 3, T0 + first + second)
    c = d.counters()[COUNTY]
    assert (c["sent"], c["failed"], c["dead"], c["consecutive_failures"], c["pending"]) == (1, 2, 0, 0, 0)
    assert "HTTP 503" in c["last_error"] and c["failing_since"] is None and not c["alarmed"]


def test_a_hanging_receiver_does_not_block_the_audit(http_receiver, client, outbox, tmp_path):
    clock = ManualClock(T0)
    audit = tmp_path / "audit.jsonl"
    d = Dispatcher(outbox, {COUNTY: WebhookNotifier(http_receiver.url, SECRET, client), AUDIT_KEY: JsonlNotifier(audit)}, clock, timeout_s=0.5)
    http_receiver.hang()
    outbox.enqueue([_msg(1), _msg(1, AUDIT_KEY)], now=T0)

    started = time.monotonic()
    assert d.run_once() == 1
    assert time.monotonic() - started < 5  # waited about timeout_s, not for the hung receiver
    assert [json.loads(line)["id"] for line in audit.read_text().splitlines()] == [_msg(1, AUDIT_KEY).id]
    http_receiver.wait_for(1)
    c = d.counters()[COUNTY]
    assert c["in_flight"] is True and c["failed"] == 1 and c["consecutive_failures"] == 1
    assert "running for more than 0.5 s" in c["last_error"]

    # Still hung: the webhook's lane is skipped (no second request), the audit goes on.
    outbox.enqueue([_msg(2, AUDIT_KEY), _msg(2)], now=T0 + 1)
    clock.set(T0 + 1)
    started = time.monotonic()
    assert d.run_once() == 1
    assert time.monotonic() - started < 0.5 + 4
    assert len(audit.read_text().splitlines()) == 2
    assert len(http_receiver.requests) == 1

    http_receiver.release()
    assert d.wait_idle(10)
    assert outbox.get(_msg(1).id).state == "sent"
    assert d.counters()[COUNTY]["consecutive_failures"] == 0
    clock.set(T0 + 2)
    assert d.run_once() == 1  # the backlog follows
    assert http_receiver.ids() == [_msg(1).id, _msg(2).id]
    c = d.counters()[COUNTY]
    assert (c["sent"], c["failed"], c["in_flight"]) == (2, 1, False)


def test_a_permanent_rejection_is_dead_lettered(http_receiver, client, outbox, caplog):
    clock = ManualClock(T0)
    d = Dispatcher(outbox, {COUNTY: WebhookNotifier(http_receiver.url, SECRET, client)}, clock)
    http_receiver.answer(400)
    outbox.enqueue([_msg(1), _msg(2)], now=T0)
    with caplog.at_level(logging.ERROR, logger="geowarn.alerts.dispatch"):
        assert d.run_once() == 0
    # Rejected messages do not stop the lane: both tried once, both dead.
    assert http_receiver.ids() == [_msg(1).id, _msg(2).id]
    for i in (1, 2):
        item = outbox.get(_msg(i).id)
        assert (item.state, item.attempts) == ("dead", 1) and "HTTP 400" in item.last_error
    assert sum("dead-lettered" in r.getMessage() for r in caplog.records) == 2
    clock.advance(3600)
    assert d.run_once() == 0
    assert len(http_receiver.requests) == 2
    c = d.counters()[COUNTY]
    assert (c["dead"], c["failed"], c["sent"], c["pending"]) == (2, 2, 0, 0)
    assert outbox.counts() == {"pending": 0, "sent": 0, "dead": 2}


def test_out_of_attempts_is_dead_lettered(http_receiver, client, outbox):
    clock = ManualClock(T0)
    d = Dispatcher(outbox, {COUNTY: WebhookNotifier(http_receiver.url, SECRET, client)}, clock, max_attempts=3, alarm_after_failures=100)
    http_receiver.answer(503)
    outbox.enqueue([_msg(1)], now=T0)
    for _ in range(3):
        d.run_once()
        clock.advance(600)
    assert len(http_receiver.requests) == 3
    item = outbox.get(_msg(1).id)
    assert item.state == "dead" and item.attempts == 3 and "gave up after 3 attempts" in item.last_error


def test_restart_delivers_each_id_exactly_once(http_receiver, client, tmp_path):
    path = tmp_path / "outbox.sqlite"
    clock = ManualClock(T0)
    msgs = [_msg(i) for i in range(6)]
    hook = WebhookNotifier(http_receiver.url, SECRET, client)

    ob = Outbox(path)
    assert ob.enqueue(msgs, now=T0) == 6
    d = Dispatcher(ob, {COUNTY: hook}, clock, batch=3)
    assert d.run_once() == 3  # half
    d.close()
    ob.close()

    ob = Outbox(path)  # the restart: the runtime re-enqueues what its state says it owes
    assert ob.enqueue(msgs, now=T0) == 0
    d = Dispatcher(ob, {COUNTY: hook}, clock, batch=3)
    assert d.run_once() == 3
    assert d.run_once() == 0
    ids = http_receiver.ids()
    assert sorted(ids) == sorted(m.id for m in msgs) and len(ids) == 6
    assert ob.counts() == {"pending": 0, "sent": 6, "dead": 0}
    ob.close()


def _kinds(outbox: Outbox, kind: str) -> list[str]:
    return [i.id for i in outbox.items() if i.msg.kind == kind]


def test_a_failing_notifier_is_escalated_once_per_episode(http_receiver, client, outbox, tmp_path, caplog):
    national = HttpReceiver().start()
    try:
        clock = ManualClock(T0)
        audit = tmp_path / "audit.jsonl"
        notifiers = {
            COUNTY: WebhookNotifier(http_receiver.url, SECRET, client),
            NATIONAL: WebhookNotifier(national.url, SECRET, client),
            AUDIT_KEY: JsonlNotifier(audit),
        }

        def dispatcher() -> Dispatcher:
            return Dispatcher(outbox, notifiers, clock, alarm_after_failures=3, alarm_after_s=1e9)

        def fail_rounds(d: Dispatcher, n: int, m: Outgoing) -> None:
            for _ in range(n):
                d.run_once()
                clock.set(outbox.get(m.id).next_try)

        d = dispatcher()
        http_receiver.answer(503)
        m1 = _msg(1)
        outbox.enqueue([m1], now=T0)
        with caplog.at_level(logging.ERROR, logger="geowarn.alerts.dispatch"):
            fail_rounds(d, 2, m1)
            assert _kinds(outbox, "notifier_failing") == []
            fail_rounds(d, 1, m1)
        ep1 = [f"notifier_failing/{COUNTY}/1/{NATIONAL}", f"notifier_failing/{COUNTY}/1/{AUDIT_KEY}"]
        assert sorted(_kinds(outbox, "notifier_failing")) == sorted(ep1)
        assert any(r.levelno == logging.ERROR and "notifier is failing" in r.getMessage() and fields_of(r)["notifier"] == COUNTY for r in caplog.records)
        assert d.counters()[COUNTY]["alarmed"] is True

        fail_rounds(d, 4, m1)  # still failing: no second alarm
        assert sorted(_kinds(outbox, "notifier_failing")) == sorted(ep1)
        assert national.ids() == [ep1[0]]
        (line,) = audit.read_text().splitlines()
        alarm = json.loads(line)
        assert alarm["kind"] == "notifier_failing" and alarm["admin"] == "100000"
        assert alarm["body"]["notifier"] == COUNTY and "HTTP 503" in alarm["body"]["last_error"] and alarm["body"]["pending"] == 1

        d.close()
        d = dispatcher()  # a restart in the middle of the episode remembers the alarm
        fail_rounds(d, 4, m1)
        assert sorted(_kinds(outbox, "notifier_failing")) == sorted(ep1)

        http_receiver.answer(200)  # recovery
        d.run_once()
        assert outbox.get(m1.id).state == "sent"
        assert sorted(_kinds(outbox, "notifier_recovered")) == [f"notifier_recovered/{COUNTY}/1/{NATIONAL}", f"notifier_recovered/{COUNTY}/1/{AUDIT_KEY}"]
        d.run_once()
        assert national.ids() == [ep1[0], f"notifier_recovered/{COUNTY}/1/{NATIONAL}"]
        assert d.counters()[COUNTY]["alarmed"] is False

        http_receiver.answer(503)  # a new episode gets its own alarm
        m2 = _msg(2)
        outbox.enqueue([m2], now=clock.now())
        fail_rounds(d, 3, m2)
        assert f"notifier_failing/{COUNTY}/2/{NATIONAL}" in _kinds(outbox, "notifier_failing")
        assert len(_kinds(outbox, "notifier_failing")) == 4
        d.run_once()  # sends the alarm (and the county's 4th attempt fails)
        assert national.ids()[-1] == f"notifier_failing/{COUNTY}/2/{NATIONAL}"
        c = d.counters()  # counters are this process's (since the restart above)
        assert c[COUNTY]["episode"] == 2 and c[COUNTY]["sent"] == 1 and c[COUNTY]["consecutive_failures"] == 4
        assert c[COUNTY]["failed"] == 4 + 4 and c[COUNTY]["alarmed"] is True
        assert (c[NATIONAL]["failed"], c[NATIONAL]["sent"]) == (0, 2)
    finally:
        national.stop()


def test_alarm_after_a_long_time_failing(http_receiver, client, outbox, tmp_path):
    clock = ManualClock(T0)
    notifiers = {COUNTY: WebhookNotifier(http_receiver.url, SECRET, client), AUDIT_KEY: JsonlNotifier(tmp_path / "audit.jsonl")}
    d = Dispatcher(outbox, notifiers, clock, alarm_after_failures=1000, alarm_after_s=600)
    http_receiver.answer(503)
    outbox.enqueue([_msg(1)], now=T0)
    d.run_once()
    clock.set(T0 + 599)
    d.run_once()
    assert len(http_receiver.requests) == 2 and _kinds(outbox, "notifier_failing") == []
    clock.set(T0 + 600)
    d.run_once()  # resting after the last failure, but failing for 600 s now
    assert len(http_receiver.requests) == 2
    assert _kinds(outbox, "notifier_failing") == [f"notifier_failing/{COUNTY}/1/{AUDIT_KEY}"]


def test_messages_for_an_unconfigured_notifier_wait_without_blocking_others(http_receiver, client, outbox):
    clock = ManualClock(T0)
    d = Dispatcher(outbox, {COUNTY: WebhookNotifier(http_receiver.url, SECRET, client)}, clock)
    outbox.enqueue([_msg(1, "420599/webhook/0"), _msg(2)], now=T0)
    assert d.run_once() == 1
    assert outbox.get(_msg(1, "420599/webhook/0").id).state == "pending"
    assert d.counters()["420599/webhook/0"]["pending"] == 1


def test_dispatcher_thread_sends_when_woken(http_receiver, client, outbox):
    clock = ManualClock(T0)
    d = Dispatcher(outbox, {COUNTY: WebhookNotifier(http_receiver.url, SECRET, client)}, clock)
    thread = DispatcherThread(d, max_idle_s=30)
    outbox.enqueue([_msg(1)], now=T0)
    thread.start()
    try:
        http_receiver.wait_for(1)
        outbox.enqueue([_msg(2)], now=T0)
        thread.wake()  # without it the thread would sleep max_idle_s
        assert [r.headers["x-geowarn-id"] for r in http_receiver.wait_for(2, timeout=10)] == [_msg(1).id, _msg(2).id]
    finally:
        thread.stop()
    assert d.wait_idle(10)
    assert outbox.counts() == {"pending": 0, "sent": 2, "dead": 0}
