"""The console's door hardening: response headers, who the client is behind a proxy, and the
limit on failed token attempts.

This module owns three small rules of the HTTP surface (issue 12, item 5):

- **Headers on every response** (``SecurityHeaders``, a plain ASGI middleware, so streamed
  event responses and static files get them too): a Content-Security-Policy under which the
  page can load only its own files and talk only to its own origin — the console holds a bearer
  token in the tab, and a script from anywhere else could read it — plus ``nosniff``, no
  framing and no referrer.
- **The client address** (``client_address``): the TCP peer, unless the peer is one of
  ``GEOWARN_TRUSTED_PROXIES``; only then is ``X-Forwarded-For`` read, right to left, skipping
  the trusted hops. Anybody can send the header; only a proxy we run may be believed.
- **Failed token attempts** (``FailedTokenLimiter``): per client (an IPv4 address, an IPv6
  /64: ``limiter_key``), at most ``limit`` requests without a token or with an unknown or
  revoked one per ``window_s``; beyond that the answer is 429 with Retry-After. The attempts
  of one burst (failures no more than ``window_s`` apart, at most ``max_burst_s`` long) become
  ONE audit row when the burst ends, instead of an fsync'd row per attempt: a flood of bad
  tokens must neither fill the disk nor hide the actions the audit is for. What the limiter
  keeps is bounded too (clients, targets per burst, text length, rows per audit round), since
  it lives in the ingest process.

A live token is never refused because its address is rate-limited: secrets are 256-bit
random strings, so the limit protects the disk and the audit, not the secrets, and a duty
officer behind the same NAT as a misbehaving client must still be able to acknowledge a red
warning.

No I/O here: the limiter hands finished bursts to ``console.routes.context``, which writes them.
"""

from __future__ import annotations

import ipaddress
import math
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from geowarn.core.timefmt import rfc3339

__all__ = [
    "AUDIT_TEXT_CHARS",
    "BURST_PATHS",
    "CONTENT_SECURITY_POLICY",
    "FAILED_TOKEN_LIMIT",
    "FAILED_TOKEN_WINDOW_S",
    "SECURITY_HEADERS",
    "Burst",
    "FailedTokenLimiter",
    "MANY",
    "Network",
    "SecurityHeaders",
    "bounded",
    "client_address",
    "limiter_key",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Failed token attempts one client address may make per window before the answer is 429.
FAILED_TOKEN_LIMIT = 10
FAILED_TOKEN_WINDOW_S = 60.0
#: A burst that never pauses is still audited this often.
FAILED_TOKEN_MAX_BURST_S = 600.0
#: A path (or any text a caller puts in a URL) is kept at most this long, in the audit and in
#: the limiter's memory: a URL may be 8 KB, and the audit is a record, not a copy of the attack.
AUDIT_TEXT_CHARS = 200
#: Distinct targets one burst remembers; attempts on any further one are only counted.
BURST_PATHS = 20
#: Clients an aggregate burst names in its audit row.
BURST_SAMPLE = 5
#: The ``client`` of an aggregate burst (many addresses merged).
MANY = "*"

#: Only our own files, only our own origin. No 'unsafe-inline': the page has no inline script or
#: style (app.js sets colours through the CSSOM, which CSP does not govern). img-src allows
#: data: for nothing we ship today but what a browser may synthesise (e.g. a favicon fallback).
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)
_RAW_HEADERS = tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS)
_RAW_NAMES = frozenset(k for k, _ in _RAW_HEADERS)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def headers_with_tiles(tile_origin: str | None) -> tuple[tuple[bytes, bytes], ...]:
    """``SECURITY_HEADERS`` as raw ASGI headers; with a map tile server's origin
    (GEOWARN_MAP_TILE_URL), images from that origin are allowed too, and nothing else is."""
    if not tile_origin:
        return _RAW_HEADERS
    csp = CONTENT_SECURITY_POLICY.replace("img-src 'self' data:", f"img-src 'self' data: {tile_origin}")
    return tuple((k, csp.encode("latin-1") if k == b"content-security-policy" else v) for k, v in _RAW_HEADERS)


class SecurityHeaders:
    """ASGI middleware: sets ``SECURITY_HEADERS`` on every HTTP response (replacing any a route
    set, so there is one policy to read). ``tile_origin``: a map tile server's
    ``scheme://host[:port]`` whose images the page may load (None: none)."""

    def __init__(self, app: App, tile_origin: str | None = None) -> None:
        self.app = app
        self.raw_headers = headers_with_tiles(tile_origin)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in _RAW_NAMES]
                message["headers"] = headers + list(self.raw_headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- the client address ------------------------------------------------------------------------


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("["):  # [v6]:port or [v6]
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return addr


def _trusted(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: Sequence[Network]) -> bool:
    return any(addr.version == net.version and addr in net for net in trusted)


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: Sequence[Network]) -> str:
    """The address to audit and rate-limit: ``peer`` unless it is a trusted proxy.

    From a trusted peer, ``X-Forwarded-For`` (every occurrence of the header, in order) is read
    from the right: each trusted hop is skipped, and the first address that is not trusted is
    the client. An entry that is not an address stops the walk at the last address known good,
    so garbage cannot be passed off as a client; a chain of trusted hops only gives the
    leftmost one.
    """
    if not peer:
        return "-"
    addr = _ip(peer)
    if addr is None or not trusted or not _trusted(addr, trusted):
        return peer
    hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
    current = addr
    for hop in reversed(hops):
        nxt = _ip(hop)
        if nxt is None:
            break
        current = nxt
        if not _trusted(current, trusted):
            break
    return str(current)


# -- failed token attempts -------------------------------------------------------------------


def bounded(text: str, limit: int = AUDIT_TEXT_CHARS) -> str:
    """``text`` cut to ``limit`` characters (the cut marked with …): what a caller put in a URL
    reaches the audit and the limiter's memory at most this long."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def limiter_key(client: str) -> str:
    """The address the limit counts: an IPv4 address itself, an IPv6 address its /64.

    One IPv6 subscriber routinely holds a whole /64 (SLAAC, privacy addresses), so counting
    single IPv6 addresses would give one client 2^64 fresh allowances. Anything that is not an
    address (a Unix socket, ``-``) counts as itself, cut to a bounded length."""
    addr = _ip(client)
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    if addr is not None:
        return str(addr)
    return bounded(client, 100)


@dataclass
class Burst:
    """Failed token attempts of one client (``limiter_key``), no more than the limiter's window
    apart — or, with ``client`` ``MANY``, the merged bursts of ``addresses`` clients that a
    flood pushed out of the limiter's table or past one audit round's rows.

    ``paths`` counts attempts per target ("GET /api/sites/{site}": the route template, not
    the URL), at most ``BURST_PATHS`` distinct ones, each at most ``AUDIT_TEXT_CHARS`` long;
    attempts on any further target are counted in ``other_paths``. A burst's memory is bounded
    whatever the URLs were."""

    client: str
    first: float
    last: float
    failures: int = 0
    missing: int = 0  # of which sent no token at all
    limited: int = 0  # of which answered 429
    paths: dict[str, int] = field(default_factory=dict)
    other_paths: int = 0
    addresses: int = 1
    sample: list[str] = field(default_factory=list)  # a few of the merged clients (MANY only)

    def count(self, path: str, n: int = 1) -> None:
        if path in self.paths or len(self.paths) < BURST_PATHS:
            self.paths[path] = self.paths.get(path, 0) + n
        else:
            self.other_paths += n

    def absorb(self, other: Burst) -> None:
        """Merge ``other`` into this aggregate."""
        self.first, self.last = min(self.first, other.first), max(self.last, other.last)
        self.failures += other.failures
        self.missing += other.missing
        self.limited += other.limited
        self.addresses += other.addresses
        for path, n in other.paths.items():
            self.count(path, n)
        self.other_paths += other.other_paths
        for client in other.sample or [other.client]:
            if len(self.sample) < BURST_SAMPLE and client not in self.sample:
                self.sample.append(client)

    def target(self) -> str:
        """The target attempted most often (what the audit row's ``target`` shows)."""
        return max(self.paths, key=self.paths.__getitem__) if self.paths else "-"  # a tie: the first seen

    def summary(self, limit: int, window_s: float) -> str:
        paths = ", ".join(f"{p} ×{n}" for p, n in sorted(self.paths.items(), key=lambda kv: (-kv[1], kv[0]))[:5])
        rest = sum(sorted(self.paths.values(), reverse=True)[5:]) + self.other_paths
        who = ""
        if self.client == MANY:
            who = (
                f"from {self.addresses} client addresses (e.g. {', '.join(self.sample)}) whose bursts were merged: "
                f"more at once than the limiter tracks or one audit round writes; "
            )
        return (
            f"{self.failures} failed token attempt{'s' if self.failures != 1 else ''} "
            f"({self.missing} without a token, {self.failures - self.missing} unknown or revoked) {who}"
            f"from {rfc3339(self.first)} to {rfc3339(self.last)}; {self.limited} answered 429 "
            f"(limit {limit} per {window_s:g} s); paths: {paths}" + (f" and {rest} attempts on others" if rest > 0 else "")
        )


@dataclass
class _Client:
    window_start: float
    in_window: int
    burst: Burst


class FailedTokenLimiter:
    """Counts failed token attempts (no token, or an unknown or revoked one) per client
    (``limiter_key``: an IPv4 address, an IPv6 /64); thread-safe (the API's request threads
    share it). ``failure`` says whether to answer 429; ``closed`` hands over the bursts that
    have ended, each exactly once, for the audit.

    Everything it holds is bounded, since it lives in the ingest process and a flood is what it
    is for: at most ``max_clients`` clients (the one that failed longest ago is evicted), each
    burst's paths as ``Burst`` says, and at most ``max_rows`` bursts per ``closed`` call. Evicted
    bursts, and ended ones beyond ``max_rows``, are merged into one aggregate burst (client
    ``MANY``), handed over like a burst of its own: a flood from many addresses is a few audit
    rows, not one per address."""

    def __init__(
        self,
        limit: int = FAILED_TOKEN_LIMIT,
        window_s: float = FAILED_TOKEN_WINDOW_S,
        max_burst_s: float = FAILED_TOKEN_MAX_BURST_S,
        max_clients: int = 10_000,
        max_rows: int = 50,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if not (window_s > 0 and math.isfinite(window_s)):
            raise ValueError(f"window_s must be a positive number of seconds, got {window_s}")
        if max_burst_s < window_s:
            raise ValueError(f"max_burst_s ({max_burst_s}) must be at least window_s ({window_s})")
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, got {max_clients}")
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.limit = limit
        self.window_s = window_s
        self.max_burst_s = max_burst_s
        self.max_clients = max_clients
        self.max_rows = max_rows
        self._reset()

    def _reset(self) -> None:
        # Least recently failed first: eviction takes the front in O(1), not a scan per request.
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._done: list[Burst] = []
        self._merged: Burst | None = None
        # When the aggregate was opened: its own clock for max_burst_s, since the bursts merged
        # into it may have begun long before.
        self._merged_since = 0.0
        self._lock = threading.Lock()

    def _merge(self, burst: Burst, now: float) -> None:
        if self._merged is None:
            self._merged = Burst(MANY, burst.first, burst.last, addresses=0)
            self._merged_since = now
        self._merged.absorb(burst)

    def _retire(self, burst: Burst, now: float) -> None:
        if burst.failures == 0:  # a successor nobody joined has nothing to say
            return
        if len(self._done) < self.max_rows:
            self._done.append(burst)
        else:
            self._merge(burst, now)

    def failure(self, client: str, path: str, now: float, missing: bool = False) -> int | None:
        """Record one failed attempt on ``path`` (cut to ``AUDIT_TEXT_CHARS``; give the route
        template), ``missing`` when no token was sent; the Retry-After seconds when it is over
        the limit (429), else None (401)."""
        key = limiter_key(client)
        path = bounded(path)
        with self._lock:
            c = self._clients.get(key)
            if c is not None:
                self._clients.move_to_end(key)
                if now - c.burst.last > self.window_s or now - c.burst.first > self.max_burst_s:
                    self._retire(c.burst, now)
                    c.burst = Burst(key, now, now)
            else:
                if len(self._clients) >= self.max_clients:
                    # More clients failing at once than the table holds: a flood from many
                    # addresses. The evicted one's burst joins the aggregate, not a row of its own.
                    _, evicted = self._clients.popitem(last=False)
                    self._merge(evicted.burst, now)
                c = self._clients[key] = _Client(now, 0, Burst(key, now, now))
            if now - c.window_start >= self.window_s:
                c.window_start, c.in_window = now, 0
            c.in_window += 1
            b = c.burst
            b.failures += 1
            b.missing += missing
            b.last = now
            b.count(path)
            if c.in_window <= self.limit:
                return None
            b.limited += 1
            return max(1, math.ceil(c.window_start + self.window_s - now))

    def failures_in_window(self, client: str) -> int:
        """How many attempts the client has failed in its current window (limit + 1: the
        first one refused with 429)."""
        with self._lock:
            c = self._clients.get(limiter_key(client))
            return 0 if c is None else c.in_window

    def tracked(self) -> int:
        """How many clients the limiter holds now (at most ``max_clients``)."""
        with self._lock:
            return len(self._clients)

    def closed(self, now: float | None = None) -> list[Burst]:
        """The bursts that have ended by ``now`` (quiet for a window, or as long as
        ``max_burst_s``), at most ``max_rows`` plus the aggregate; with ``now=None``, every
        burst (the server is stopping)."""
        with self._lock:
            at = math.inf if now is None else now
            for key, c in list(self._clients.items()):
                if now is None or now - c.burst.last > self.window_s:
                    self._retire(c.burst, at)
                    del self._clients[key]
                elif now - c.burst.first > self.max_burst_s:
                    # Still going: audit what it did so far; its window (the 429s) goes on.
                    self._retire(c.burst, at)
                    c.burst = Burst(key, now, now)
            out, self._done = self._done, []
            m = self._merged
            if m is not None and (now is None or now - m.last > self.window_s or now - self._merged_since > self.max_burst_s):
                out.append(m)
                self._merged = None
            return out
