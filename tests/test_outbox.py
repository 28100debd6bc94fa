"""The SQLite outbox: idempotent enqueue across restarts, one commit with the caller's state,
due selection, delivery states."""

from __future__ import annotations

import sqlite3

import pytest

from geowarn.alerts.notifiers import Outgoing
from geowarn.alerts.outbox import Outbox

T0 = 1_764_408_600.0


def _msg(i: int, notifier: str = "420527/webhook/0", t: float = T0) -> Outgoing:
    return Outgoing(
        id=f"n{i}/{notifier}", notifier=notifier, kind="warning", admin="420527", site="S1", level=2,
        subject=f"黄色警示级 S1 #{i}", text="位移 displacement", body={"n": i, "中文": "是"}, t=t + i,
    )


def test_enqueue_is_idempotent_across_a_restart(tmp_path):
    path = tmp_path / "outbox.sqlite"
    msgs = [_msg(i) for i in range(5)]
    ob = Outbox(path)
    assert ob.enqueue(msgs) == 5
    assert ob.enqueue(msgs[:3]) == 0
    ob.mark_sent(msgs[0].id, T0 + 10)
    ob.close()

    ob = Outbox(path)
    assert ob.enqueue(msgs + [_msg(5)]) == 1
    assert ob.counts() == {"pending": 5, "sent": 1, "dead": 0}
    item = ob.get(msgs[0].id)
    assert item is not None and item.state == "sent" and item.sent_at == T0 + 10 and item.attempts == 1
    assert ob.get(msgs[1].id).msg == msgs[1]  # the payload round-trips, Chinese included
    ob.close()


def test_the_file_is_wal_and_synchronous_full(tmp_path):
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as ob:
        with ob.transaction() as db:
            assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {"outbox", "state"}
    db.close()


def test_caller_state_commits_with_the_enqueue_or_not_at_all(tmp_path):
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path)
    with ob.transaction():
        ob.set_state("site/S1", {"level": 2, "warning": "S1-1"})
        ob.enqueue([_msg(1)])
    with pytest.raises(RuntimeError, match="crash"):
        with ob.transaction():
            ob.set_state("site/S1", {"level": 3, "warning": "S1-1"})
            ob.enqueue([_msg(2)])
            raise RuntimeError("crash between the state and the commit")
    ob.close()

    ob = Outbox(path)  # what is on disk
    assert ob.get_state("site/S1") == {"level": 2, "warning": "S1-1"}
    assert [i.id for i in ob.items()] == [_msg(1).id]
    assert ob.get_state("missing", default="d") == "d"
    ob.close()


def test_due_per_notifier_limit_order_and_skip(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite")
    ob.enqueue([_msg(i, "a") for i in range(5)] + [_msg(i, "b") for i in range(2)])
    due = ob.due(T0 + 100, limit=3)
    # Oldest first; at most 3 of "a" so that "b" is never starved by a's backlog.
    assert [i.id for i in due] == ["n0/a", "n0/b", "n1/a", "n1/b", "n2/a"]
    assert [i.id for i in ob.due(T0 + 100, limit=10, skip={"a"})] == ["n0/b", "n1/b"]
    assert [i.id for i in ob.due(T0 + 1, limit=10)] == ["n0/a", "n0/b", "n1/a", "n1/b"]  # created at T0+i
    assert ob.due(T0 - 1) == []
    ob.close()


def test_failed_dead_sent_and_requeue(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite")
    ob.enqueue([_msg(1), _msg(2), _msg(3, "c")], now=T0)
    a, b, c = (m.id for m in (_msg(1), _msg(2), _msg(3, "c")))
    ob.mark_failed(a, T0, "HTTP 503", next_try=T0 + 2)
    assert [i.id for i in ob.due(T0 + 1)] == [b, c]
    assert [i.id for i in ob.due(T0 + 2)] == [a, b, c]
    item = ob.get(a)
    assert (item.attempts, item.last_error, item.next_try, item.state) == (1, "HTTP 503", T0 + 2, "pending")
    ob.mark_dead(b, T0 + 3, "HTTP 400")
    ob.mark_sent(c, T0 + 3)
    assert ob.counts() == {"pending": 1, "sent": 1, "dead": 1}
    assert [i.id for i in ob.pending_for("420527/webhook/0")] == [a]
    assert ob.pending_for("c") == []
    assert ob.next_due() == T0 + 2
    assert [i.id for i in ob.items("dead")] == [b]
    ob.requeue(b, T0 + 5)
    item = ob.get(b)
    assert (item.state, item.attempts, item.next_try) == ("pending", 0, T0 + 5)
    with pytest.raises(KeyError, match="no message"):
        ob.mark_sent("nope", T0)
    ob.close()


def test_prune_removes_only_old_sent_messages(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite")
    ob.enqueue([_msg(1), _msg(2), _msg(3)])
    ob.mark_sent(_msg(1).id, T0 + 10)
    ob.mark_sent(_msg(2).id, T0 + 20)
    assert ob.prune(sent_before=T0 + 15) == 1
    assert [i.id for i in ob.items()] == [_msg(2).id, _msg(3).id]
    ob.close()
