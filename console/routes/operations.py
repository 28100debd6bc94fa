"""Operations routes: ``/healthz`` and ``/metrics`` (no token: a load balancer and Prometheus
scrape them), and ``/api/me`` (who the console is logged in as)."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from geowarn.console.routes.context import Auth, Ctx

router = APIRouter()


@router.get("/healthz", tags=["operations"])
def healthz(ctx: Ctx) -> dict[str, Any]:
    """Liveness: the API answers and can read the journal (no token needed)."""
    # A requester that cannot tell (a test's) counts as connected.
    connected = getattr(ctx.requester, "connected", True)
    return {"ok": ctx.views.healthy(), "mqtt": bool(connected), "t": ctx.now()}


@router.get("/metrics", tags=["operations"], response_class=Response)
def metrics(ctx: Ctx) -> Response:
    """Prometheus text format (no token needed)."""
    return Response(generate_latest(ctx.metrics), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/me", tags=["auth"])
def me(token: Auth) -> dict[str, Any]:
    """The token's name, tier and admin unit."""
    return {"name": token.name, "tier": token.tier, "admin": token.admin}
