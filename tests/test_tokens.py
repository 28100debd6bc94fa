"""API tokens (console/tokens.py) and ``geowarn token create|list|revoke``.

The scope table is worked out by hand from GB/T 2260 (county 420527 Zigui and 420526
Xingshan are in city 420500 Yichang, province 420000 Hubei; 110105 is Beijing Chaoyang).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from geowarn.console.tokens import SECRET_PREFIX, TokenError, TokenStore, UnknownToken, covers, hash_secret
from daemonproc import REPO


@pytest.mark.parametrize(
    ("tier", "admin", "county", "expected"),
    [
        ("county", "420527", "420527", True),
        ("county", "420526", "420527", False),
        ("city", "420500", "420527", True),
        ("city", "420500", "420526", True),
        ("city", "420600", "420527", False),
        ("province", "420000", "420527", True),
        ("province", "420000", "110105", False),
        ("national", "100000", "110105", True),
        ("national", "100000", "420527", True),
    ],
)
def test_scope_follows_the_admin_code_prefixes(tier, admin, county, expected):
    assert covers(tier, admin, county) is expected


def test_only_the_hash_is_stored_and_revoked_tokens_stop_working(tmp_path):
    path = tmp_path / "tokens.sqlite"
    with TokenStore(path) as store:
        token, secret = store.create("county", "420527", "zigui-duty", 1000.0)
        assert secret.startswith(SECRET_PREFIX) and len(secret) > 40
        assert store.verify(secret) == token
        assert store.verify(secret + "x") is None and store.verify("") is None
        other, other_secret = store.create("city", "420500", "yichang-duty", 1001.0)
        assert other_secret != secret
    # Neither the file nor its WAL holds a secret; the table holds its SHA-256.
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert secret.encode() not in raw and other_secret.encode() not in raw
    conn = sqlite3.connect(path)
    assert {r[0] for r in conn.execute("SELECT hash FROM tokens")} == {hash_secret(secret), hash_secret(other_secret)}
    conn.close()

    with TokenStore(path) as store:
        revoked = store.revoke("zigui-duty", 2000.0)
        assert revoked.revoked == 2000.0
        assert store.verify(secret) is None
        assert store.verify(other_secret) is not None
        store.revoke(str(other.id), 2001.0)  # by id
        assert store.verify(other_secret) is None
        with pytest.raises(UnknownToken):
            store.revoke("zigui-duty", 2002.0)
        # A revoked name can be given to a new token.
        again, _ = store.create("county", "420527", "zigui-duty", 3000.0)
        assert [t.name for t in store.list_tokens(include_revoked=False)] == ["zigui-duty"] and again.id != token.id


@pytest.mark.parametrize(
    ("tier", "admin", "name", "message"),
    [
        ("city", "420527", "a", "is a county code, not a city one"),
        ("county", "420500", "a", "is a city code, not a county one"),
        ("national", "420000", "a", "is a province code"),
        ("county", "42052", "a", "6-digit"),
        ("mayor", "420527", "a", "tier 'mayor' must be one of"),
        ("county", "420527", "  ", "needs a name"),
        ("county", "420527", "42", "mistaken for a token id"),
    ],
)
def test_bad_tokens_are_refused_with_the_reason(tmp_path, tier, admin, name, message):
    with TokenStore(tmp_path / "tokens.sqlite") as store, pytest.raises(TokenError, match=message):
        store.create(tier, admin, name, 0.0)


def test_duplicate_live_names_are_refused(tmp_path):
    with TokenStore(tmp_path / "tokens.sqlite") as store:
        store.create("county", "420527", "duty", 0.0)
        with pytest.raises(TokenError, match="exists already"):
            store.create("county", "420526", "duty", 1.0)


def test_audit_rows_are_appended_in_order(tmp_path):
    with TokenStore(tmp_path / "tokens.sqlite") as store:
        token, _ = store.create("county", "420527", "zigui-duty", 0.0)
        store.audit(10.0, None, "GET /api/warnings", "/api/warnings", "127.0.0.1", "unauthorised", "no bearer token")
        store.audit(11.0, token, "POST /api/warnings/{warning_id}/ack", "W1", "127.0.0.1", "ok", "ack")
        rows = store.audit_entries()
    assert [(r.who, r.token_id, r.outcome, r.target) for r in rows] == [("-", None, "unauthorised", "/api/warnings"), ("zigui-duty", token.id, "ok", "W1")]


def _cli(data_dir, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geowarn.service.cli", "token", *args, "--data-dir", str(data_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_cli_create_prints_the_token_last_and_list_never_shows_it(tmp_path):
    done = _cli(tmp_path, "create", "--tier", "county", "--admin", "420527", "--name", "zigui-duty")
    assert done.returncode == 0, done.stderr
    secret = done.stdout.split()[-1]
    assert secret.startswith(SECRET_PREFIX)
    with TokenStore(tmp_path / "tokens.sqlite") as store:
        token = store.verify(secret)
        assert token is not None and (token.tier, token.admin, token.name) == ("county", "420527", "zigui-duty")

    listed = _cli(tmp_path, "list")
    assert listed.returncode == 0 and "zigui-duty" in listed.stdout and "420527" in listed.stdout
    assert secret not in listed.stdout

    bad = _cli(tmp_path, "create", "--tier", "city", "--admin", "420527", "--name", "x")
    assert bad.returncode == 1 and "county code, not a city one" in bad.stderr

    assert _cli(tmp_path, "revoke", "zigui-duty").returncode == 0
    again = _cli(tmp_path, "revoke", "zigui-duty")
    assert again.returncode == 1 and "no live token" in again.stderr
    with TokenStore(tmp_path / "tokens.sqlite") as store:
        assert store.verify(secret) is None


# -- audit retention ---------------------------------------------------------------------------


class _Mono:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _audit_rows(path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, t FROM audit ORDER BY id").fetchall()
    finally:
        conn.close()


def test_the_audit_is_pruned_by_age_when_the_api_opens_it_and_as_it_writes(tmp_path):
    import time

    from geowarn.console import tokens as tokens_mod

    path = tmp_path / "tokens.sqlite"
    now = time.time()
    with TokenStore(path) as plain:  # geowarn token, the detection worker: they only append
        for days in (500, 450, 401, 399, 10):
            plain.audit(now - days * 86400, None, "POST /api/x", "t", "127.0.0.1", "ok")
        plain.audit(now - 402 * 86400, None, "POST /api/x", "t", "127.0.0.1", "ok")  # newest by id, old by time
    assert len(_audit_rows(path)) == 6
    mono = _Mono()
    with TokenStore(path, keep_days=400, keep_mb=256, monotonic=mono) as api:
        # Opening prunes what is older than 400 days, except the newest row (its id would be
        # handed out again): 500, 450 and 401 days go.
        assert [round((now - t) / 86400) for _, t in _audit_rows(path)] == [399, 10, 402]
        api.audit(now, None, "POST /api/y", "t", "127.0.0.1", "ok")
        assert len(_audit_rows(path)) == 4  # not yet due
        mono.t += tokens_mod.AUDIT_PRUNE_EVERY_S
        # Two days on: the 399-day row is 401 days old, and the 402-day one no longer the newest.
        api.audit(now + 2 * 86400, None, "POST /api/y", "t", "127.0.0.1", "ok")
        assert [round((now - t) / 86400) for _, t in _audit_rows(path)] == [10, 0, -2]
    # A store opened without retention never prunes.
    with TokenStore(path) as plain:
        plain.audit(now + 900 * 86400, None, "POST /api/z", "t", "127.0.0.1", "ok")
    assert len(_audit_rows(path)) == 4


def test_the_audit_file_stays_under_its_size_cap_oldest_first(tmp_path):
    import time

    from geowarn.console import tokens as tokens_mod

    path = tmp_path / "tokens.sqlite"
    now = time.time()
    mono = _Mono()
    detail = "refused: " + "d" * 1000
    with TokenStore(path, keep_days=400, keep_mb=1, monotonic=mono) as api:
        for i in range(6000):  # ~6 MB of young rows
            api.audit(now + i, None, "POST /api/warnings/{id}/ack", f"w{i}", "10.0.0.1", "refused", detail)
            if i % 500 == 499:
                mono.t += tokens_mod.AUDIT_PRUNE_EVERY_S
        for _ in range(3):
            mono.t += tokens_mod.AUDIT_PRUNE_EVERY_S
            api.audit(now + 6000, None, "GET /api/audit", "-", "10.0.0.1", "ok")
        conn = sqlite3.connect(path)
        pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size"))
        conn.close()
        assert (pages - free) * size <= 1024 * 1024
        ids = [i for i, _ in _audit_rows(path)]
        # The newest stay, contiguous up to the last: the oldest went first, and ~1 MB of
        # 1 kB rows is several hundred of them.
        assert ids == list(range(ids[0], 6004)) and len(ids) > 500, (ids[:3], len(ids))


def test_a_flood_of_refusals_cannot_push_the_officers_actions_out_of_the_audit(tmp_path):
    """Anyone can make "unauthorised" rows (a request with no valid token): over the size
    cap they go first, and the officers' acknowledgements written before the flood stay."""
    import time

    from geowarn.console import tokens as tokens_mod

    path = tmp_path / "tokens.sqlite"
    now = time.time()
    mono = _Mono()
    with TokenStore(path, keep_days=400, keep_mb=1, monotonic=mono) as api:
        for i in range(20):  # the evidence: officers' actions, oldest of all
            api.audit(now + i, None, "POST /api/warnings/{id}/ack", f"w{i}", "10.0.0.9", "ok", "acknowledged by an officer")
        junk = "x" * 1000
        for i in range(6000):  # ~6 MB of refusals anyone could send
            api.audit(now + 100 + i, None, "POST /api/warnings/{id}/ack", f"j{i}", "203.0.113.7", "unauthorised", junk)
            if i % 500 == 499:
                mono.t += tokens_mod.AUDIT_PRUNE_EVERY_S
        for _ in range(3):
            mono.t += tokens_mod.AUDIT_PRUNE_EVERY_S
            api.audit(now + 7000, None, "GET /api/audit", "-", "10.0.0.9", "ok")
        conn = sqlite3.connect(path)
        pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size"))
        kept_ok = conn.execute("SELECT count(*) FROM audit WHERE outcome = 'ok' AND target LIKE 'w%'").fetchone()[0]
        kept_junk = conn.execute("SELECT count(*) FROM audit WHERE outcome = 'unauthorised'").fetchone()[0]
        conn.close()
        assert (pages - free) * size <= 1024 * 1024
        assert kept_ok == 20
        assert 0 < kept_junk < 6000
