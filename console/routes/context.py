"""What every route of the duty-officer API shares, and the dependencies that hand it over.

This module owns the door rules (DESIGN §2, console): who the caller is (``auth``: a bearer
token, else 401), what they may reach (``Context.require``: their jurisdiction, else 403), and
the audit row written for every action and every refused attempt before the answer goes out.
Who "the caller" is on the network is ``client_of``: the TCP peer, or the address a trusted
proxy forwarded (console/security.py). Failed token attempts — no token, or an unknown or
revoked one — are counted per client (429 beyond the limit) and audited as one row per burst
(``Context.audit_failed_tokens``). Whatever a caller puts in a URL reaches the audit as a route
template or cut to ``AUDIT_TEXT_CHARS``.
``Context`` is built once per app by ``create_api`` and kept on ``app.state``; routes take it
as the ``Ctx`` dependency and the caller's token as ``Auth``, so they are plain functions with
no closures over the app.
"""

# No ``from __future__ import annotations``: FastAPI reads the dependencies' annotations at
# run time.
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from prometheus_client.registry import CollectorRegistry

from geowarn.config.registry import Registry
from geowarn.console.requester import Requester, RequestUnavailable
from geowarn.console.security import FailedTokenLimiter, Network, bounded, client_address, limiter_key
from geowarn.console.tokens import Outcome, Token, TokenStore
from geowarn.console.views import Views, WarningView
from geowarn.core.logfields import kv

__all__ = ["Auth", "Context", "Ctx", "auth", "context"]


log = logging.getLogger(__name__)


def client_of(request: Request, trusted: Sequence[Network] = ()) -> str:
    """The client's address: the TCP peer, or what a proxy in ``trusted`` forwarded."""
    peer = request.client.host if request.client is not None else None
    return client_address(peer, request.headers.getlist("x-forwarded-for"), trusted)


@dataclass(frozen=True)
class Context:
    """One app's shared parts. ``stopping`` ends the event streams when the server stops;
    ``answer_wait_s`` is how long an action waits for the detection worker's answer;
    ``trusted_proxies`` are the peers whose X-Forwarded-For is believed; ``failed_tokens``
    counts failed token attempts per client."""

    registry: Registry
    views: Views
    requester: Requester
    tokens: TokenStore
    metrics: CollectorRegistry
    now: Callable[[], float]
    stopping: threading.Event
    answer_wait_s: float
    trusted_proxies: tuple[Network, ...] = ()
    failed_tokens: FailedTokenLimiter = field(default_factory=FailedTokenLimiter)
    #: GEOWARN_TIMEZONE: the zone every time in the console is shown in, named.
    timezone: str = "Asia/Shanghai"
    #: GEOWARN_MAP_TILE_URL: a tile server the console's map may draw under the sites
    #: ("https://…/{z}/{x}/{y}.png"); None (the default) draws the sites alone, fetching nothing.
    map_tile_url: str | None = None

    def client(self, request: Request) -> str:
        return client_of(request, self.trusted_proxies)

    @staticmethod
    def action(request: Request) -> str:
        """"GET /api/sites/{site}": the route's template, not the URL (the audit groups by
        action, and a URL may be kilobytes an attacker chose)."""
        route = request.scope.get("route")
        return f"{request.method} {bounded(getattr(route, 'path', request.url.path))}"

    def audit(self, request: Request, token: Token | None, target: str, outcome: Outcome, detail: str = "") -> None:
        # target is often a path parameter, as long as the caller made it: cut.
        self.tokens.audit(self.now(), token, self.action(request), bounded(target), self.client(request), outcome, detail)

    def audit_failed_tokens(self, final: bool = False) -> int:
        """One audit row per burst of failed token attempts that has ended (all of them when
        ``final``: the server is stopping); the number of rows written."""
        lim = self.failed_tokens
        bursts = lim.closed(None if final else self.now())
        for b in bursts:
            self.tokens.audit(b.first, None, "failed tokens", b.target(), b.client, "unauthorised", b.summary(lim.limit, lim.window_s))
        return len(bursts)

    def require(self, request: Request, token: Token, county: str, target: str) -> None:
        if not token.covers(county):
            self.audit(request, token, target, "forbidden", f"{token.tier} {token.admin} does not cover county {county}")
            raise HTTPException(403, f"token {token.name!r} ({token.tier} {token.admin}) does not cover {target} in county {county}")

    def site_or_404(self, request: Request, token: Token, site: str) -> str:
        card = self.registry.sites.get(site)
        if card is None:
            self.audit(request, token, site, "refused", "unknown site")
            raise HTTPException(404, f"no site {site!r}")
        self.require(request, token, card.admin, site)
        return card.admin

    def warning_or_404(self, request: Request, token: Token, warning_id: str) -> WarningView:
        w = self.views.find_warning(warning_id)
        if w is None:
            self.audit(request, token, warning_id, "refused", "unknown warning")
            raise HTTPException(404, f"no warning {warning_id!r} (it may belong to a site's earlier warning)")
        self.require(request, token, w.admin, warning_id)
        return w

    def act(self, request: Request, token: Token, kind: str, target: str, doc: dict[str, Any]) -> JSONResponse:
        """Send one action over MQTT, audit its outcome, and answer: 200 accepted, 409 refused
        by the engine, 202 queued (no answer in time), 503 broker unreachable."""
        try:
            answer = self.requester.request(kind, doc, self.answer_wait_s)
        except RequestUnavailable as exc:
            self.audit(request, token, target, "failed", str(exc))
            raise HTTPException(503, str(exc)) from None
        if answer is None:
            # Not "it will apply": on a broker anyone may join, a client holding the worker's
            # client id can take the request off the queue. Only the warning's state can tell.
            detail = (
                f"no answer from the detection worker within {self.answer_wait_s:g} s: the request is queued at the broker but NOT confirmed; "
                "check the warning's (or site's) state before relying on it (the worker refuses it as stale once it is 5 minutes old)"
            )
            self.audit(request, token, target, "failed", "queued: " + detail)
            return JSONResponse({"ok": None, "queued": True, "detail": detail}, status_code=202)
        ok = bool(answer.get("ok"))
        self.audit(request, token, target, "ok" if ok else "refused", str(answer.get("detail", "")))
        body = {k: answer.get(k) for k in ("ok", "detail", "rule", "site", "warning_id")}
        return JSONResponse(body, status_code=200 if ok else 409)


def context(request: Request) -> Context:
    """The app's ``Context`` (set by ``create_api``)."""
    ctx: Context = request.app.state.geowarn
    return ctx


Ctx = Annotated[Context, Depends(context)]


def auth(request: Request, ctx: Ctx) -> Token:
    """The caller's live token, from ``Authorization: Bearer …``; else 401, or 429 once the
    client has failed too often.

    A request without a bearer token (no header, ``Bearer`` with nothing after it, another
    scheme) and one with an unknown or revoked token are the same failure: counted against the
    client (``limiter_key``) and audited with the rest of its burst
    (``Context.audit_failed_tokens``), under the route's template. Neither costs an fsync per
    attempt, and neither is stored as the URL it came with. A live token always passes, even
    from a limited address.
    """
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    secret = secret.strip()
    token = ctx.tokens.verify(secret) if scheme.lower() == "bearer" and secret else None
    if token is not None:
        return token
    missing = scheme.lower() != "bearer" or not secret
    client = limiter_key(ctx.client(request))
    retry_after = ctx.failed_tokens.failure(client, ctx.action(request), ctx.now(), missing=missing)
    if retry_after is not None:
        if ctx.failed_tokens.failures_in_window(client) == ctx.failed_tokens.limit + 1:
            log.warning("too many failed token attempts: answering 429", extra=kv(client=client, retry_after_s=retry_after))
        raise HTTPException(
            429,
            f"too many failed token attempts from {client}; try again in {retry_after} s",
            headers={"Retry-After": str(retry_after), "WWW-Authenticate": "Bearer"},
        )
    if missing:
        raise HTTPException(401, "no bearer token: send Authorization: Bearer <token> (geowarn token create)", headers={"WWW-Authenticate": "Bearer"})
    raise HTTPException(401, "unknown or revoked token: send Authorization: Bearer <token> (geowarn token create)", headers={"WWW-Authenticate": "Bearer"})


Auth = Annotated[Token, Depends(auth)]
