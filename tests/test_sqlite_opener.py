"""The SQLite opener (core/sqlite.py) on real files: migrations run once and all-or-nothing,
a file from a newer GeoWarn is refused, files from before versions were kept open and keep
working, and the readers never write."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from geowarn.alerts.notifiers import Outgoing
from geowarn.alerts.outbox import OUTBOX_SCHEMA, Outbox, OutboxReader
from geowarn.console.tokens import TOKENS_SCHEMA, TokenStore
from geowarn.core.sqlite import ChangeWatch, NewerSchemaError, Schema, open_db, open_readonly, user_version
from geowarn.ingest.journal import JOURNAL_SCHEMA, Journal, JournalReader
from geowarn.ingest.messagelog import MESSAGES_SCHEMA, MessageLog

V1 = "CREATE TABLE IF NOT EXISTS site (code TEXT PRIMARY KEY);"
# Not idempotent on purpose: run twice, it would fail (duplicate column) or count twice.
V2 = "ALTER TABLE site ADD COLUMN name TEXT; CREATE TABLE runs (n INTEGER); INSERT INTO runs VALUES (2);"


def _version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def test_a_new_file_gets_every_migration_and_wal(tmp_path):
    path = tmp_path / "sub" / "x.sqlite"
    conn = open_db(path, Schema("x", (V1, V2)), sync="normal")
    try:
        assert user_version(conn) == 2
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
        assert conn.execute("SELECT n FROM runs").fetchall() == [(2,)]
    finally:
        conn.close()


def test_migrations_are_applied_once_and_only_the_missing_ones(tmp_path):
    path = tmp_path / "x.sqlite"
    conn = open_db(path, Schema("x", (V1,)))
    conn.execute("INSERT INTO site (code) VALUES ('S1')")
    conn.close()
    assert _version(path) == 1

    for _ in range(3):  # the upgrade, then two ordinary opens
        conn = open_db(path, Schema("x", (V1, V2)))
        conn.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT n FROM runs").fetchall() == [(2,)]
        assert raw.execute("SELECT code, name FROM site").fetchall() == [("S1", None)]
    assert _version(path) == 2


def test_a_failing_migration_changes_nothing(tmp_path):
    path = tmp_path / "x.sqlite"
    open_db(path, Schema("x", (V1,))).close()
    broken = "CREATE TABLE half (n INTEGER); INSERT INTO no_such_table VALUES (1);"
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        open_db(path, Schema("x", (V1, broken)))
    assert _version(path) == 1
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0


def test_openers_racing_on_a_new_file_migrate_it_once(tmp_path):
    path = tmp_path / "x.sqlite"
    schema = Schema("x", (V1, V2))
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def opener() -> None:
        try:
            start.wait()
            open_db(path, schema).close()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_a_file_from_a_newer_geowarn_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "journal.sqlite"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE future (x)")
        raw.execute("PRAGMA user_version = 7")
    for opening in (lambda: open_db(path, Schema("journal", (V1,))), lambda: open_readonly(path, Schema("journal", (V1,)))):
        with pytest.raises(NewerSchemaError) as info:
            opening()
        message = str(info.value)
        assert str(path) in message and "7" in message and "newer" in message
    with pytest.raises(NewerSchemaError):
        Journal(path)
    assert JournalReader(path).readable() is False  # the console's /healthz says so, not a 500
    assert _version(path) == 7
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM sqlite_master WHERE name = 'site'").fetchone()[0] == 0


def test_a_migration_script_with_a_semicolon_in_a_comment_is_split_right(tmp_path):
    script = "-- one; two\nCREATE TABLE a (x TEXT DEFAULT ';');\n/* ; */ CREATE TABLE b (y);\n"
    conn = open_db(tmp_path / "x.sqlite", Schema("x", (script,)))
    try:
        assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master")} == {"a", "b"}
        conn.execute("INSERT INTO a DEFAULT VALUES")
        assert conn.execute("SELECT x FROM a").fetchone()[0] == ";"
    finally:
        conn.close()


def test_a_schema_without_migrations_is_a_mistake():
    with pytest.raises(ValueError, match="at least one migration"):
        Schema("x", ())


# -- files made by the previous version (user_version 0, tables present) -----------------------

# The journal's tables exactly as GeoWarn created them before versions were kept (ef11b90).
OLD_JOURNAL = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, site TEXT NOT NULL, device TEXT NOT NULL, channel TEXT NOT NULL,
    kind TEXT NOT NULL, admin TEXT NOT NULL, UNIQUE (site, device, channel));
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY, series INTEGER NOT NULL REFERENCES series(id), t_ms INTEGER NOT NULL,
    value REAL NOT NULL, drill INTEGER NOT NULL DEFAULT 0, received_ms INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS readings_key ON readings (series, t_ms);
CREATE TABLE IF NOT EXISTS deadletters (
    id INTEGER PRIMARY KEY, received_ms INTEGER NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL,
    detail TEXT NOT NULL, payload BLOB);
CREATE TABLE IF NOT EXISTS device_status (
    id INTEGER PRIMARY KEY, site TEXT NOT NULL, device TEXT NOT NULL, t_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO series VALUES (1, 'S1', 'D1', 'disp', 'displacement', '420527');
INSERT INTO readings VALUES (1, 1, 1000, 1.5, 0, 1100), (2, 1, 2000, 2.5, 0, 2100), (3, 1, 3000, 9.0, 1, 3100);
INSERT INTO deadletters VALUES (1, 500, 'geowarn/x', 'schema', 'bad', NULL);
INSERT INTO device_status VALUES (1, 'S1', 'D1', 900, 950, '{"battery": 3.9}');
INSERT INTO state VALUES ('fusion.site_levels', '{"S1": 2}');
"""


def _old_file(path: Path, script: str) -> None:
    with sqlite3.connect(path) as raw:
        raw.executescript(script)
    assert _version(path) == 0


def test_an_old_journal_opens_keeps_its_data_and_takes_writes(tmp_path):
    path = tmp_path / "journal.sqlite"
    _old_file(path, OLD_JOURNAL)

    # A reader first (the console may start before the store worker): it reads, never stamps.
    reader = JournalReader(path)
    assert reader.site_levels() == {"S1": 2}
    assert reader.readings_stored() == 3
    assert _version(path) == 0

    journal = Journal(path)
    try:
        # Stamped as migration 1 (the schema of its time) and migrated on to the newest.
        assert _version(path) == len(JOURNAL_SCHEMA.migrations) == 6
        # Detection's per-site state (migration 4) and its channels' texts (6) start empty: the
        # old file's state is read as it was.
        assert list(journal.site_states()) == []
        assert journal.channel_text("S1", "0:D1/disp") is None
        # A status of the old file does not know where it stood among the readings (migration
        # 3): detection orders it by arrival time, as before.
        assert [row[6] for row in journal.statuses_after(0, 10)] == [None] * len(journal.statuses_after(0, 10))
        assert journal.count() == 2 and journal.count(drill=True) == 1
        # The sites' levels moved from one state value into a row a site (migration 5).
        assert journal.site_levels() == reader.site_levels() == {"S1": 2}
        assert journal.get_state("fusion.site_levels") is None
        assert journal.append([(1, 4000, 3.5, 0, 4100)], state={"k": 1}) == 1
        assert journal.recent(1, 0) == [(1000, 1.5), (2000, 2.5), (4000, 3.5)]
    finally:
        journal.close()
    assert reader.deadletter_counts() == {"schema": 1}
    assert reader.latest_statuses("S1", ["D1", "D2"]) == {"D1": ('{"battery": 3.9}', 900)}


@pytest.mark.parametrize("schema", [OUTBOX_SCHEMA, TOKENS_SCHEMA, MESSAGES_SCHEMA], ids=lambda s: s.name)
def test_migration_1_of_every_store_is_idempotent_over_its_old_tables(tmp_path, schema):
    # Migration 1 is the previous version's script, byte for byte: run over a file that
    # already has the tables, it must add nothing and fail on nothing.
    path = tmp_path / "old.sqlite"
    _old_file(path, schema.migrations[0])
    with sqlite3.connect(path) as raw:
        before = sorted(raw.execute("SELECT type, name, sql FROM sqlite_master").fetchall())
    open_db(path, schema).close()
    with sqlite3.connect(path) as raw:
        assert sorted(raw.execute("SELECT type, name, sql FROM sqlite_master").fetchall()) == before
    assert _version(path) == 1


def test_old_outbox_tokens_and_message_log_files_keep_working(tmp_path):
    msg = Outgoing(id="n1/420527/webhook/0", notifier="420527/webhook/0", kind="escalation", admin="420527", site="S1",
                   level=3, subject="橙色 S1", text="t", body={"warning_id": "W1"}, t=10.0)
    ob_path = tmp_path / "outbox.sqlite"
    _old_file(ob_path, OUTBOX_SCHEMA.migrations[0])
    with sqlite3.connect(ob_path) as raw:
        raw.execute("INSERT INTO outbox (id, notifier, created, payload, next_try) VALUES (?, ?, 10, ?, 10)",
                    (msg.id, msg.notifier, '{"id": "n1/420527/webhook/0", "notifier": "420527/webhook/0", "kind": "escalation", '
                     '"admin": "420527", "site": "S1", "level": 3, "subject": "橙色 S1", "text": "t", '
                     '"body": {"warning_id": "W1"}, "t": 10.0, "exercise": false}'))
    with Outbox(ob_path) as ob:
        assert ob.enqueue([msg]) == 0  # already there: the old row is the same message
        ob.mark_sent(msg.id, 11.0)
    reader = OutboxReader(ob_path)
    assert [i.msg for i in reader.about_warning("W1")] == [msg]
    assert reader.counts_by_notifier() == {("420527/webhook/0", "sent"): 1}
    assert reader.notifications_by_level("escalation") == {3: 1}

    tok_path = tmp_path / "tokens.sqlite"
    _old_file(tok_path, TOKENS_SCHEMA.migrations[0])
    with TokenStore(tok_path) as store:
        token, secret = store.create("county", "420527", "zigui-duty", 1.0)
        assert store.verify(secret) == token
    assert _version(tok_path) == 1

    log_path = tmp_path / "messages.sqlite"
    _old_file(log_path, MESSAGES_SCHEMA.migrations[0])
    log = MessageLog(log_path)
    try:
        log.append([(b"geowarn/data/S1/D1", b"{}")], 5)
        assert [m.payload for m in log.read_after(0, 10)] == [b"{}"]
    finally:
        log.close()


# -- readers ---------------------------------------------------------------------------------


def test_readers_of_missing_files_answer_empty_and_create_nothing(tmp_path):
    reader = JournalReader(tmp_path / "journal.sqlite")
    assert reader.readable() is True
    assert (reader.site_levels(), reader.readings_stored(), reader.deadletter_counts()) == ({}, 0, {})
    assert reader.site_activity("S1", 1000) == [] and reader.site_points("S1", 1000, 10) == []
    outbox = OutboxReader(tmp_path / "outbox.sqlite")
    assert outbox.states("alert/") == [] and outbox.about_warning("W1") == [] and outbox.counts_by_notifier() == {}
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="journal"):
        Journal(tmp_path / "journal.sqlite", readonly=True)


def test_a_read_only_connection_cannot_write(tmp_path):
    path = tmp_path / "x?#.sqlite"  # characters a file: URI must escape
    open_db(path, Schema("x", (V1,))).close()
    conn = open_readonly(path, Schema("x", (V1,)))
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("INSERT INTO site (code) VALUES ('S9')")
    finally:
        conn.close()


def test_site_points_are_thinned_to_every_nth_and_the_last(tmp_path):
    path = tmp_path / "journal.sqlite"
    _old_file(path, OLD_JOURNAL)
    journal = Journal(path)
    try:
        # 10 more real readings at t = 10 s … 19 s: with the two old ones, 12 in the window.
        journal.append([(1, 10_000 + 1000 * i, float(i), 0, 20_000) for i in range(10)])
    finally:
        journal.close()
    [ch] = JournalReader(path).site_points("S1", window_ms=60_000, max_points=5)
    # Real readings by rank: 1 s, 2 s, then 10 s … 19 s (ranks 3 … 12); at most 5 wanted:
    # stride ceil(12/5) = 3 -> ranks 1, 4, 7, 10 (1 s, 11 s, 14 s, 17 s) and the last (19 s).
    assert [t for t, _ in ch.points] == [1000, 11_000, 14_000, 17_000, 19_000]
    [act] = JournalReader(path).site_activity("S1", window_ms=5_000)
    # Newest real reading at 19 s; readings after 14 s: 15, 16, 17, 18, 19 s.
    assert (act.last_t_ms, act.last_received_ms, act.recent) == (19_000, 20_000, 5)


def test_change_watch_sees_another_connections_commit(tmp_path):
    path = tmp_path / "outbox.sqlite"
    watch = ChangeWatch(path, OUTBOX_SCHEMA)
    try:
        assert watch.version() == -1
        ob = Outbox(path)
        first = watch.version()
        assert first == watch.version()  # nothing committed in between
        ob.set_state("alert/S1|real", {"level": 1})
        assert watch.version() != first
        ob.close()
    finally:
        watch.close()
