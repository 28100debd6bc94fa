"""What every route of the duty-officer API shares, and the dependencies that hand it over.

This module owns the door rules (DESIGN §2, console): who the caller is (``auth``: a bearer
token, else 401), what they may reach (``Context.require``: their jurisdiction, else 403), and
the audit row written for every action and every refused attempt before the answer goes out.
``Context`` is built once per app by ``create_api`` and kept on ``app.state``; routes take it
as the ``Ctx`` dependency and the caller's token as ``Auth``, so they are plain functions with
no closures over the app.
"""

# No ``from __future__ import annotations``: FastAPI reads the dependencies' annotations at
# run time.
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from prometheus_client.registry import CollectorRegistry

from geowarn.config.registry import Registry
from geowarn.console.requester import Requester, RequestUnavailable
from geowarn.console.tokens import Outcome, Token, TokenStore
from geowarn.console.views import Views, WarningView

__all__ = ["Auth", "Context", "Ctx", "auth", "context"]


def client_of(request: Request) -> str:
    return request.client.host if request.client is not None else "-"


@dataclass(frozen=True)
class Context:
    """One app's shared parts. ``stopping`` ends the event streams when the server stops;
    ``answer_wait_s`` is how long an action waits for the detection worker's answer."""

    registry: Registry
    views: Views
    requester: Requester
    tokens: TokenStore
    metrics: CollectorRegistry
    now: Callable[[], float]
    stopping: threading.Event
    answer_wait_s: float

    def audit(self, request: Request, token: Token | None, target: str, outcome: Outcome, detail: str = "") -> None:
        # The route's template (…/{warning_id}/ack), not the URL: the audit groups by action.
        route = request.scope.get("route")
        action = f"{request.method} {getattr(route, 'path', request.url.path)}"
        self.tokens.audit(self.now(), token, action, target, client_of(request), outcome, detail)

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
            detail = f"no answer from the detection worker within {self.answer_wait_s:g} s; the request is queued at the broker and applies when it runs"
            self.audit(request, token, target, "failed", "queued: " + detail)
            return JSONResponse({"ok": None, "queued": True, "detail": detail}, status_code=202)
        ok = bool(answer.get("ok"))
        self.audit(request, token, target, "ok" if ok else "refused", str(answer.get("detail", "")))
        body = {k: answer.get(k) for k in ("ok", "detail", "rule", "site", "warning_id")}
        return JSONResponse(body, status_code=200 if ok else 409)

    @staticmethod
    def signed(name: str, token: Token) -> str:
        # The engine's history names the person and the token they used: the ack is traceable
        # to a credential even when a name is mistyped.
        return f"{name} [{token.name}]"


def context(request: Request) -> Context:
    """The app's ``Context`` (set by ``create_api``)."""
    ctx: Context = request.app.state.geowarn
    return ctx


Ctx = Annotated[Context, Depends(context)]


def auth(request: Request, ctx: Ctx) -> Token:
    """The caller's live token, from ``Authorization: Bearer …``; 401 (audited) without one."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    token = ctx.tokens.verify(secret.strip()) if scheme.lower() == "bearer" else None
    if token is None:
        reason = "no bearer token" if not secret else "unknown or revoked token"
        ctx.audit(request, None, request.url.path, "unauthorised", reason)
        raise HTTPException(401, f"{reason}: send Authorization: Bearer <token> (geowarn token create)", headers={"WWW-Authenticate": "Bearer"})
    return token


Auth = Annotated[Token, Depends(auth)]
