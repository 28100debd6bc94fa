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
- **Failed token attempts** (``FailedTokenLimiter``): per client address, at most ``limit``
  unknown or revoked tokens per ``window_s``; beyond that the answer is 429 with Retry-After.
  The attempts of one burst (failures no more than ``window_s`` apart, at most ``max_burst_s``
  long) become ONE audit row when the burst ends, instead of an fsync'd row per attempt: a
  flood of bad tokens must neither fill the disk nor hide the actions the audit is for.

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
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from geowarn.core.timefmt import rfc3339

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "FAILED_TOKEN_LIMIT",
    "FAILED_TOKEN_WINDOW_S",
    "SECURITY_HEADERS",
    "Burst",
    "FailedTokenLimiter",
    "Network",
    "SecurityHeaders",
    "client_address",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Failed token attempts one client address may make per window before the answer is 429.
FAILED_TOKEN_LIMIT = 10
FAILED_TOKEN_WINDOW_S = 60.0
#: A burst that never pauses is still audited this often.
FAILED_TOKEN_MAX_BURST_S = 600.0

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


class SecurityHeaders:
    """ASGI middleware: sets ``SECURITY_HEADERS`` on every HTTP response (replacing any a route
    set, so there is one policy to read)."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in _RAW_NAMES]
                message["headers"] = headers + list(_RAW_HEADERS)
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


@dataclass
class Burst:
    """Failed token attempts of one client address, no more than the limiter's window apart."""

    client: str
    first: float
    last: float
    failures: int = 0
    limited: int = 0  # of which answered 429
    paths: dict[str, int] = field(default_factory=dict)

    def summary(self, limit: int, window_s: float) -> str:
        paths = ", ".join(f"{p} ×{n}" for p, n in sorted(self.paths.items(), key=lambda kv: (-kv[1], kv[0]))[:5])
        more = len(self.paths) - 5
        return (
            f"{self.failures} failed token attempt{'s' if self.failures != 1 else ''} (unknown or revoked) "
            f"from {rfc3339(self.first)} to {rfc3339(self.last)}; {self.limited} answered 429 "
            f"(limit {limit} per {window_s:g} s); paths: {paths}" + (f" and {more} more" if more > 0 else "")
        )


@dataclass
class _Client:
    window_start: float
    in_window: int
    burst: Burst


class FailedTokenLimiter:
    """Counts failed token attempts per client address; thread-safe (the API's request threads
    share it). ``failure`` says whether to answer 429; ``closed`` hands over the bursts that
    have ended, each exactly once, for the audit."""

    def __init__(
        self,
        limit: int = FAILED_TOKEN_LIMIT,
        window_s: float = FAILED_TOKEN_WINDOW_S,
        max_burst_s: float = FAILED_TOKEN_MAX_BURST_S,
        max_clients: int = 10_000,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if not (window_s > 0 and math.isfinite(window_s)):
            raise ValueError(f"window_s must be a positive number of seconds, got {window_s}")
        if max_burst_s < window_s:
            raise ValueError(f"max_burst_s ({max_burst_s}) must be at least window_s ({window_s})")
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, got {max_clients}")
        self.limit = limit
        self.window_s = window_s
        self.max_burst_s = max_burst_s
        self.max_clients = max_clients
        self._reset()

    def _reset(self) -> None:
        self._clients: dict[str, _Client] = {}
        self._done: list[Burst] = []
        self._lock = threading.Lock()

    def failure(self, client: str, path: str, now: float) -> int | None:
        """Record one failed attempt; the Retry-After seconds when it is over the limit (429),
        else None (401)."""
        with self._lock:
            c = self._clients.get(client)
            if c is not None and (now - c.burst.last > self.window_s or now - c.burst.first > self.max_burst_s):
                self._done.append(c.burst)
                c.burst = Burst(client, now, now)
            if c is None:
                if len(self._clients) >= self.max_clients:
                    # Evict the quietest client: its burst is audited now rather than never.
                    oldest = min(self._clients, key=lambda k: self._clients[k].burst.last)
                    self._done.append(self._clients.pop(oldest).burst)
                c = self._clients[client] = _Client(now, 0, Burst(client, now, now))
            if now - c.window_start >= self.window_s:
                c.window_start, c.in_window = now, 0
            c.in_window += 1
            b = c.burst
            b.failures += 1
            b.last = now
            b.paths[path] = b.paths.get(path, 0) + 1
            if c.in_window <= self.limit:
                return None
            b.limited += 1
            return max(1, math.ceil(c.window_start + self.window_s - now))

    def failures_in_window(self, client: str) -> int:
        """How many attempts the client has failed in its current window (limit + 1: the
        first one refused with 429)."""
        with self._lock:
            c = self._clients.get(client)
            return 0 if c is None else c.in_window

    def closed(self, now: float | None = None) -> list[Burst]:
        """The bursts that have ended by ``now`` (quiet for a window, or as long as
        ``max_burst_s``); with ``now=None``, every burst (the server is stopping)."""
        with self._lock:
            out, self._done = self._done, []
            for key, c in list(self._clients.items()):
                if now is None or now - c.burst.last > self.window_s:
                    out.append(c.burst)
                    del self._clients[key]
                elif now - c.burst.first > self.max_burst_s:
                    # Still going: audit what it did so far; its window (the 429s) goes on.
                    out.append(c.burst)
                    c.burst = Burst(key, now, now)
            # A successor nobody joined has nothing to say.
            return [b for b in out if b.failures > 0]
