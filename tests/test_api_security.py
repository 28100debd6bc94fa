"""The duty-officer API's door hardening (issue 12, item 5), over real HTTP against the real
daemon (started as tests/test_api.py starts it) and a real Mosquitto.

- Every response — the console's HTML and script, JSON, event streams, and errors (401, 403,
  404, 422, 429) — carries a Content-Security-Policy under which the page loads nothing from
  another origin, ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` and
  ``Referrer-Policy: no-referrer``; the page itself has no inline script or style.
- ``X-Forwarded-For`` is believed only from a peer in ``GEOWARN_TRUSTED_PROXIES``. The daemon
  trusts 127.0.0.2 here; the test's clients bind their own loopback source address
  (127.0.0.1, 127.0.0.2, …), so "untrusted peer" and "trusted proxy" are real TCP peers.
- Failed token attempts — no token, ``Bearer`` with nothing after it, or an unknown or revoked
  token — from one client (an IPv4 address, an IPv6 /64): the first ``FAILED_TOKEN_LIMIT`` per
  window are 401, then 429 with Retry-After; a live token from the same address still works;
  the burst is ONE audit row (written when the burst ends — here, when the daemon stops), which
  names each attempt by its route's template, never by its URL (the tester's 8 KB paths).
- What the limiter keeps is bounded (targets per burst, their length, clients, rows per audit
  round); a flood from more addresses than it tracks is one aggregate row, not a row each.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from html.parser import HTMLParser

import httpx
import pytest

from daemonproc import Daemon
from geowarn.console.security import (
    AUDIT_TEXT_CHARS,
    BURST_PATHS,
    FAILED_TOKEN_LIMIT,
    FAILED_TOKEN_WINDOW_S,
    MANY,
    FailedTokenLimiter,
    client_address,
    limiter_key,
)
from services import free_port
from test_api import Console, wait_for

pytestmark = pytest.mark.slow

PROXY = "127.0.0.2"
EXPECTED = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}


@pytest.fixture
def secured(tmp_path, mosquitto) -> Iterator[Console]:
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    daemon = Daemon(data, mosquitto.url, extra_env={"GEOWARN_HTTP": f"127.0.0.1:{port}", "GEOWARN_TRUSTED_PROXIES": f"{PROXY}/32, 10.0.0.0/8"})
    con = Console(daemon, f"http://127.0.0.1:{port}")
    daemon.start()
    try:
        wait_for(lambda: httpx.get(con.base + "/healthz", timeout=5).status_code == 200, 20, "the API", daemon)
        yield con
    finally:
        daemon.close()


def from_address(con: Console, source: str, token: str | None = None) -> httpx.Client:
    """A client whose TCP connections leave from ``source`` (any 127/8 address is local)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=con.base, headers=headers, timeout=30, transport=httpx.HTTPTransport(local_address=source))


def csp_directives(value: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            out[words[0].lower()] = words[1:]
    return out


def assert_locked_down(resp: httpx.Response) -> None:
    where = f"{resp.request.method} {resp.request.url.path} → {resp.status_code}"
    for name, value in EXPECTED.items():
        assert resp.headers.get(name) == value, f"{where}: {name} is {resp.headers.get(name)!r}"
    policy = resp.headers.get("content-security-policy")
    assert policy, f"{where}: no Content-Security-Policy"
    d = csp_directives(policy)
    assert d.get("default-src") == ["'none'"], (where, policy)
    for directive in ("script-src", "style-src", "connect-src", "img-src", "font-src"):
        # Only the page's own origin (and data: images): nothing external, nothing inline.
        assert set(d.get(directive, ["'none'"])) <= {"'self'", "'none'", "data:"}, (where, directive, policy)
    assert d.get("frame-ancestors") == ["'none'"] and d.get("base-uri") == ["'none'"], (where, policy)
    assert "unsafe" not in policy and "http:" not in policy and "https:" not in policy and "*" not in policy, (where, policy)


class _PageScan(HTMLParser):
    """What of a page CSP would block without 'unsafe-inline', or load from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"inline handler {name} on <{tag}>")
            if name == "style":
                self.problems.append(f"inline style on <{tag}>")
            if name in ("src", "href") and value and re.match(r"^\s*(?:[a-z][a-z0-9+.-]*:|//)", value, re.I) and not value.startswith("#"):
                self.problems.append(f"<{tag} {name}={value!r}> points outside the origin")
        if tag == "style":
            self.problems.append("inline <style>")
        if tag == "script":
            self._in_script = True
            if not a.get("src"):
                self.problems.append("inline <script>")
            else:
                self.scripts.append(str(a["src"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline script text")


def test_every_kind_of_response_carries_the_security_headers(secured: Console) -> None:
    anon, zigui = secured.client(None), secured.client(secured.zigui)
    responses = {
        "html": anon.get("/"),
        "script": anon.get("/static/app.js"),
        "style": anon.get("/static/style.css"),
        "health": anon.get("/healthz"),
        "metrics": anon.get("/metrics"),
        "openapi": anon.get("/openapi.json"),
        "json": zigui.get("/api/sites"),
        "me": zigui.get("/api/me"),
        "401": anon.get("/api/warnings"),
        "401-bad-token": secured.client("gwt_wrong").get("/api/warnings"),
        "403": secured.client(secured.xingshan).get("/api/sites/BSH"),
        "404-api": zigui.get("/api/sites/NOPE"),
        "404-path": anon.get("/no/such/page"),
        "404-static": anon.get("/static/nothing.js"),
        "405": anon.delete("/healthz"),
        "422": zigui.post("/api/sites/BSH/shelve", json={"name": "x"}),
    }
    expected_status = {"html": 200, "script": 200, "style": 200, "health": 200, "metrics": 200, "openapi": 200, "json": 200, "me": 200,
                       "401": 401, "401-bad-token": 401, "403": 403, "404-api": 404, "404-path": 404, "404-static": 404, "405": 405, "422": 422}
    assert {k: r.status_code for k, r in responses.items()} == expected_status
    assert responses["html"].headers["content-type"].startswith("text/html")
    assert responses["json"].headers["content-type"].startswith("application/json")
    for r in responses.values():
        assert_locked_down(r)
    # The event stream, which is sent in pieces, has them on its first (and only) head.
    with zigui.stream("GET", "/api/events") as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        assert_locked_down(stream)
    # Swagger UI would run a CDN's script on the origin that keeps the officers' tokens: gone;
    # the OpenAPI document stays.
    assert anon.get("/docs").status_code == 404 and anon.get("/redoc").status_code == 404
    assert "/api/warnings/{warning_id}/ack" in responses["openapi"].json()["paths"]


def test_the_console_page_needs_nothing_inline_and_nothing_external(secured: Console) -> None:
    """The policy forbids inline script and style: the served page must not depend on them
    (the browser test proves the page works under the policy)."""
    scan = _PageScan()
    scan.feed(httpx.get(secured.base + "/", timeout=10).text)
    assert scan.problems == []
    assert scan.scripts == ["/static/app.js"]
    script = httpx.get(secured.base + "/static/app.js", timeout=10).text
    # No string-to-code, and no style attribute written from script (CSP blocks those too).
    for pattern in (r"\beval\s*\(", r"new\s+Function\s*\(", r"setTimeout\s*\(\s*[\"'`]", r"\.innerHTML\s*=", r"[{,]\s*[\"']?style[\"']?\s*:", r"setAttribute\(\s*[\"']style"):
        assert not re.search(pattern, script), pattern


def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(secured: Console) -> None:
    spoof = {"X-Forwarded-For": "203.0.113.7"}
    # No token: refused, and counted (then audited) under the address the server believes.
    assert from_address(secured, "127.0.0.1").get("/api/warnings/probe-direct", headers=spoof).status_code == 401
    assert from_address(secured, PROXY).get("/api/warnings/probe-proxied", headers=spoof).status_code == 401
    # Through two proxies we trust (the nearest one is the peer): the hop before them is the client.
    two_hops = {"X-Forwarded-For": "198.51.100.23, 10.1.2.3"}
    assert from_address(secured, PROXY).get("/api/warnings/probe-two-hops", headers=two_hops).status_code == 401
    # A client that puts its own entry first cannot pass it off: only the rightmost untrusted counts.
    forged = {"X-Forwarded-For": "192.0.2.99, 203.0.113.8"}
    assert from_address(secured, PROXY).get("/api/warnings/probe-forged", headers=forged).status_code == 401
    # An action refused for jurisdiction is audited with the same address.
    xingshan = from_address(secured, PROXY, secured.xingshan)
    assert xingshan.post("/api/sites/BSH/shelve", json={"name": "李", "note": "n", "minutes": 5}, headers=spoof).status_code == 403
    untrusted_xingshan = from_address(secured, "127.0.0.5", secured.xingshan)
    assert untrusted_xingshan.post("/api/sites/BSH/shelve", json={"name": "李", "note": "n", "minutes": 5}, headers=spoof).status_code == 403

    rows = {(a.target, a.client, a.outcome) for a in secured.audit()}
    assert ("BSH", "203.0.113.7", "forbidden") in rows and ("BSH", "127.0.0.5", "forbidden") in rows
    # The token-less probes are one burst per believed client, audited when the bursts end.
    secured.daemon.terminate()
    bursts = {a.client: a for a in secured.audit() if a.action == "failed tokens"}
    assert sorted(bursts) == ["127.0.0.1", "198.51.100.23", "203.0.113.7", "203.0.113.8"]
    for b in bursts.values():
        assert (b.target, b.outcome) == ("GET /api/warnings/{warning_id}", "unauthorised")
        assert "1 failed token attempt (1 without a token, 0 unknown or revoked)" in b.detail, b.detail


def test_failed_tokens_are_rate_limited_per_address_and_audited_once_per_burst(secured: Console) -> None:
    attacker = from_address(secured, "127.0.0.3", "gwt_guess")
    n = FAILED_TOKEN_LIMIT + 4
    answers = [attacker.get(f"/api/sites/guess-{i % 3}") for i in range(n)]
    assert [r.status_code for r in answers] == [401] * FAILED_TOKEN_LIMIT + [429] * 4
    for r in answers[FAILED_TOKEN_LIMIT:]:
        assert 1 <= int(r.headers["retry-after"]) <= FAILED_TOKEN_WINDOW_S, r.headers
        assert "too many failed token attempts" in r.json()["detail"]
        assert_locked_down(r)
    # Only that address is limited ...
    assert from_address(secured, "127.0.0.4", "gwt_other").get("/api/sites").status_code == 401
    # ... and a live token from it still works: a duty officer behind the same NAT must be
    # able to acknowledge a warning (secrets are 256-bit: there is nothing to brute-force).
    assert from_address(secured, "127.0.0.3", secured.zigui).get("/api/me").json()["name"] == "zigui-duty"
    # Behind a trusted proxy the limit is per real client, not per proxy.
    proxied = from_address(secured, PROXY, "gwt_guess")
    assert [proxied.get("/api/me", headers={"X-Forwarded-For": "198.51.100.50"}).status_code for _ in range(2)] == [401, 401]

    # Not one fsync'd row per attempt: none so far (the bursts are still open) ...
    assert [a for a in secured.audit() if a.client in ("127.0.0.3", "127.0.0.4", "198.51.100.50")] == []
    # ... and one per burst once it ends; a clean stop ends them all.
    secured.daemon.terminate()
    rows = [a for a in secured.audit() if a.client == "127.0.0.3"]
    assert len(rows) == 1, rows
    (row,) = rows
    assert (row.who, row.token_id, row.outcome) == ("-", None, "unauthorised")
    assert f"{n} failed token attempts" in row.detail and "4 answered 429" in row.detail, row.detail
    assert row.target == "GET /api/sites/{site}" and f"GET /api/sites/{{site}} ×{n}" in row.detail, row.detail
    assert "guess" not in row.detail  # the route's template, not the URLs the client chose
    others = sorted((a.client, a.outcome) for a in secured.audit() if a.client in ("127.0.0.4", "198.51.100.50"))
    assert others == [("127.0.0.4", "unauthorised"), ("198.51.100.50", "unauthorised")]
    assert "2 failed token attempts" in next(a.detail for a in secured.audit() if a.client == "198.51.100.50")


def test_requests_without_a_token_are_limited_and_audited_per_burst_not_per_request(secured: Console) -> None:
    """The tester's flood: no Authorization header, or ``Bearer`` with nothing after it (or
    another scheme), on unique 8 KB paths. Each used to be an fsync'd audit row holding its URL."""
    flooder = from_address(secured, "127.0.0.6")
    before = len(secured.audit())
    headers = [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic Z2Vvd2Fybg=="}]  # not a bearer token either
    n = FAILED_TOKEN_LIMIT + 30
    answers = [flooder.get(f"/api/warnings/{i}-{'A' * 8000}", headers=headers[i % 3]) for i in range(n)]
    assert [r.status_code for r in answers] == [401] * FAILED_TOKEN_LIMIT + [429] * 30
    assert answers[0].json()["detail"].startswith("no bearer token")
    for r in answers[FAILED_TOKEN_LIMIT:]:
        assert 1 <= int(r.headers["retry-after"]) <= FAILED_TOKEN_WINDOW_S and r.headers["www-authenticate"] == "Bearer"
        assert_locked_down(r)
    # A token-less POST counts against the same address.
    assert flooder.post("/api/warnings/x/ack", json={"name": "a", "note": "b"}).status_code == 429
    # Not one row while the burst goes on ...
    assert len(secured.audit()) == before
    # ... a live token from the same address still works ...
    assert from_address(secured, "127.0.0.6", secured.zigui).get("/api/me").status_code == 200
    # ... and the burst is one row once it ends, with every attempt counted and no URL kept.
    secured.daemon.terminate()
    (row,) = [a for a in secured.audit() if a.client == "127.0.0.6"]
    assert (row.who, row.action, row.target, row.outcome) == ("-", "failed tokens", "GET /api/warnings/{warning_id}", "unauthorised")
    assert f"{n + 1} failed token attempts ({n + 1} without a token, 0 unknown or revoked)" in row.detail, row.detail
    assert "31 answered 429" in row.detail and f"GET /api/warnings/{{warning_id}} ×{n}" in row.detail, row.detail
    assert "POST /api/warnings/{warning_id}/ack ×1" in row.detail and "AAAA" not in row.detail
    assert max(len(a.target) + len(a.detail) for a in secured.audit()) < 1000


def test_ipv6_clients_are_limited_per_64_not_per_address(secured: Console) -> None:
    """Rotating addresses inside one /64 (what any IPv6 subscriber can do) gains nothing. The
    IPv6 clients come through the trusted proxy, as from a dual-stack front end."""
    proxy = from_address(secured, PROXY, "gwt_guess")
    rotating = [proxy.get("/api/sites", headers={"X-Forwarded-For": f"2001:db8:7:7:{i:x}::{i + 1:x}"}) for i in range(FAILED_TOKEN_LIMIT + 3)]
    assert [r.status_code for r in rotating] == [401] * FAILED_TOKEN_LIMIT + [429] * 3
    assert "from 2001:db8:7:7::/64" in rotating[-1].json()["detail"]
    # The next /64 is another client.
    assert proxy.get("/api/sites", headers={"X-Forwarded-For": "2001:db8:7:8::1"}).status_code == 401
    secured.daemon.terminate()
    bursts = {a.client: a.detail for a in secured.audit() if a.action == "failed tokens"}
    assert sorted(bursts) == ["2001:db8:7:7::/64", "2001:db8:7:8::/64"]
    assert f"{FAILED_TOKEN_LIMIT + 3} failed token attempts" in bursts["2001:db8:7:7::/64"] and "3 answered 429" in bursts["2001:db8:7:7::/64"]


# -- the rules underneath, with exact times -----------------------------------------------------


def test_a_burst_ends_after_a_quiet_window_or_at_its_maximum_length() -> None:
    lim = FailedTokenLimiter(limit=2, window_s=10.0, max_burst_s=30.0)
    assert [lim.failure("a", "/p", t) for t in (0.0, 1.0, 2.0, 9.5)] == [None, None, 8, 1]
    assert lim.failure("a", "/p", 10.0) is None  # a new window: two more are 401
    assert lim.closed(19.9) == []  # quiet for 9.9 s: still the same burst
    (b,) = lim.closed(20.1)
    assert (b.client, b.first, b.last, b.failures, b.limited) == ("a", 0.0, 10.0, 5, 2)
    assert lim.closed(100.0) == []  # handed over once
    # A client that never stops is audited every max_burst_s, not never.
    for t in range(0, 35, 5):
        lim.failure("b", "/p", float(t))
    assert [(x.first, x.last, x.failures) for x in lim.closed(31.0)] == [(0.0, 30.0, 7)]
    for t in (35.0, 40.0):
        lim.failure("b", "/p", t)
    assert [(x.first, x.failures) for x in lim.closed(None)] == [(31.0, 2)]  # a stop ends every burst
    with pytest.raises(ValueError, match="limit"):
        FailedTokenLimiter(limit=0)


def test_a_burst_keeps_a_bounded_number_of_bounded_paths() -> None:
    """6000 attempts on distinct 12 KB paths (the tester grew the ingest process by 72 MB so):
    the burst keeps 20 targets of at most 200 characters and counts the rest."""
    import tracemalloc

    lim = FailedTokenLimiter(limit=10_000)
    tracemalloc.start()
    try:
        held = tracemalloc.get_traced_memory()[0]
        for i in range(6000):
            lim.failure("192.0.2.1", f"GET /{i}/" + "A" * 12_000, i * 0.001)
        grown = tracemalloc.get_traced_memory()[0] - held
    finally:
        tracemalloc.stop()
    assert grown < 100_000, grown  # unbounded: 6000 × 12 KB = 72 MB
    (b,) = lim.closed(None)
    assert (b.failures, len(b.paths), b.other_paths) == (6000, BURST_PATHS, 6000 - BURST_PATHS)
    assert {len(p) for p in b.paths} == {AUDIT_TEXT_CHARS} and all(p.endswith("…") for p in b.paths)
    assert list(b.paths)[:2] == ["GET /0/" + "A" * (AUDIT_TEXT_CHARS - 8) + "…", "GET /1/" + "A" * (AUDIT_TEXT_CHARS - 8) + "…"]
    assert b.target() == list(b.paths)[0]  # a tie: the first seen
    summary = b.summary(lim.limit, lim.window_s)
    assert summary.endswith(f" and {6000 - 5} attempts on others") and len(summary) < 6 * AUDIT_TEXT_CHARS + 400, summary


def test_a_flood_from_many_addresses_is_one_aggregate_row_not_one_per_address() -> None:
    lim = FailedTokenLimiter(limit=2, window_s=10.0, max_burst_s=30.0, max_clients=3, max_rows=2)
    for i in range(10):
        lim.failure(f"198.51.100.{i}", "GET /api/sites", float(i), missing=True)
    assert lim.tracked() == 3  # .7, .8, .9; the seven before them were evicted
    lim.failure("198.51.100.7", "GET /api/me", 9.5)
    lim.failure("198.51.100.10", "GET /api/sites", 9.6, missing=True)  # evicts .8, which failed longest ago
    assert lim.tracked() == 3
    assert lim.closed(15.0) == []  # nobody quiet for a window yet, the aggregate neither
    # At 20 all three tracked bursts have ended: two rows (max_rows), the third joins the
    # aggregate of the evicted, which is handed over as one more row.
    out = lim.closed(20.0)
    assert [(b.client, b.failures, b.missing, b.addresses) for b in out] == [
        ("198.51.100.9", 1, 1, 1),
        ("198.51.100.7", 2, 1, 1),
        (MANY, 9, 9, 9),
    ]
    merged = out[-1]
    assert (merged.first, merged.last, merged.paths) == (0.0, 9.6, {"GET /api/sites": 9})
    assert merged.sample == [f"198.51.100.{i}" for i in range(5)]
    assert "9 failed token attempts (9 without a token, 0 unknown or revoked) from 9 client addresses (e.g. 198.51.100.0, " in merged.summary(2, 10.0)
    assert lim.closed(100.0) == [] and lim.tracked() == 0
    # A flood that never pauses is still one aggregate row per max_burst_s.
    for t in range(0, 40):
        lim.failure(f"203.0.113.{t}", "GET /api/sites", 200.0 + t)
        if t == 35:
            (agg,) = [b for b in lim.closed(235.0) if b.client == MANY]
            assert (agg.addresses, agg.first) == (33, 200.0)  # opened at 203 (the first eviction), handed over 32 s later
    with pytest.raises(ValueError, match="max_rows"):
        FailedTokenLimiter(max_rows=0)


def test_ipv6_clients_are_keyed_by_their_64() -> None:
    assert limiter_key("2001:db8:1:2:aaaa::5") == limiter_key("2001:db8:1:2::ffff") == "2001:db8:1:2::/64"
    assert limiter_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert limiter_key("::ffff:192.0.2.1") == limiter_key("192.0.2.1") == "192.0.2.1"
    assert limiter_key("-") == "-"
    lim = FailedTokenLimiter(limit=3)
    assert [lim.failure(f"2001:db8:1:2::{i}", "GET /api/me", float(i)) is None for i in range(5)] == [True, True, True, False, False]
    assert lim.failure("2001:db8:1:3::1", "GET /api/me", 5.0) is None
    assert lim.failure("192.0.2.1", "GET /api/me", 5.0) is None and lim.failure("192.0.2.2", "GET /api/me", 5.0) is None


def test_client_address_walks_forwarded_for_from_the_right() -> None:
    trusted = [ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
    assert client_address("127.0.0.1", ["203.0.113.7"], trusted) == "127.0.0.1"
    assert client_address("127.0.0.2", ["203.0.113.7"], trusted) == "203.0.113.7"
    assert client_address("127.0.0.2", ["203.0.113.7", "10.0.0.1"], trusted) == "203.0.113.7"  # two header lines
    assert client_address("127.0.0.2", ["not-an-address"], trusted) == "127.0.0.2"
    assert client_address("127.0.0.2", ["203.0.113.7, garbage, 10.9.9.9"], trusted) == "10.9.9.9"
    assert client_address("127.0.0.2", [], trusted) == "127.0.0.2"
    assert client_address("::ffff:127.0.0.2", ["[2001:db8::1]:443"], trusted) == "2001:db8::1"
    assert client_address("fd00::5", ["203.0.113.9:5000"], trusted) == "203.0.113.9"
    assert client_address("127.0.0.2", ["203.0.113.7"], []) == "127.0.0.2"


def test_the_settings_validate_trusted_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    from geowarn.config.errors import ConfigError
    from geowarn.config.settings import Settings, load_settings

    for name in [k for k in os.environ if k.upper().startswith("GEOWARN_")]:
        monkeypatch.delenv(name)
    assert Settings().trusted_proxy_networks == ()
    s = Settings(trusted_proxies="127.0.0.1, 10.0.0.0/8 ,::1")
    assert [str(n) for n in s.trusted_proxy_networks] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    assert Settings(trusted_proxies=["192.168.1.0/24"]).trusted_proxy_networks == (ipaddress.ip_network("192.168.1.0/24"),)
    monkeypatch.setenv("GEOWARN_TRUSTED_PROXIES", "127.0.0.1,proxy.example.org")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    (p,) = exc.value.problems
    assert (p.file, p.key) == ("environment", "GEOWARN_TRUSTED_PROXIES") and "proxy.example.org" in p.reason



def test_a_journal_from_a_newer_geowarn_is_a_503_naming_the_file_not_a_500(tmp_path) -> None:
    """After a downgrade the console cannot read the journal: every page says why."""
    import sqlite3
    import time

    from geowarn.config.settings import Loaded, load_all
    from geowarn.console.api import ApiServer
    from geowarn.console.metrics import MainStats
    from geowarn.console.tokens import TOKENS_FILE, TokenStore
    from geowarn.ingest.journal import JOURNAL_FILE, Journal

    data = tmp_path / "data"
    data.mkdir()
    Journal(data / JOURNAL_FILE).close()
    with sqlite3.connect(data / JOURNAL_FILE) as raw:
        raw.execute("PRAGMA user_version = 99")
    store = TokenStore(data / TOKENS_FILE)
    _, secret = store.create("county", "420527", "zigui-duty", time.time())
    port = free_port()
    base = load_all()
    loaded = Loaded(base.settings.model_copy(update={"data_dir": data, "http": f"127.0.0.1:{port}", "mqtt_url": "mqtt://127.0.0.1:9"}),
                    base.registry, base.roster, base.warnings)
    server = ApiServer(loaded, data, MainStats)
    assert server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {secret}"}, timeout=30) as c:
            assert c.get("/healthz").json()["ok"] is False  # the liveness probe's own contract
            for path in ("/api/sites", "/api/sites/BSH"):
                r = c.get(path)
                assert r.status_code == 503, (path, r.status_code, r.text)
                assert str(data / JOURNAL_FILE) in r.json()["detail"] and "newer" in r.json()["detail"]
                assert r.headers["X-Content-Type-Options"] == "nosniff"
    finally:
        server.stop()
