"""Warning routes: the warnings in the caller's jurisdiction, the alert-event history, one
warning and its timeline (engine history and every notification's delivery)."""

from typing import Any

from fastapi import APIRouter, Request

from geowarn.console.routes.context import Auth, Ctx

router = APIRouter(tags=["warnings"])


@router.get("/api/warnings")
def warnings(token: Auth, ctx: Ctx, active: bool = False) -> list[dict[str, Any]]:
    """Warnings in the token's jurisdiction: active first, unacknowledged first, then by
    level. Each: id, site, admin, level, colour, since (raised), status, evidence, forecast."""
    return [w.doc for w in ctx.views.warnings() if token.covers(w.admin) and (w.doc["active"] or not active)]


# Declared before /api/warnings/{warning_id}, or "history" would be taken for a warning id.
@router.get("/api/warnings/history")
def history(token: Auth, ctx: Ctx, limit: int = 200) -> list[dict[str, Any]]:
    """Alert events (raise, upgrade, downgrade, lift, nodata…) from alerts.jsonl, newest first."""
    limit = max(1, min(limit, 5000))
    out = []
    for ev in ctx.views.history(limit * 4):
        card = ctx.registry.sites.get(str(ev.get("site")))
        if card is not None and token.covers(card.admin):
            out.append({**ev, "admin": card.admin})
            if len(out) >= limit:
                break
    return out


@router.get("/api/warnings/{warning_id}")
def warning(warning_id: str, request: Request, token: Auth, ctx: Ctx) -> dict[str, Any]:
    return ctx.warning_or_404(request, token, warning_id).doc


@router.get("/api/warnings/{warning_id}/timeline")
def timeline(warning_id: str, request: Request, token: Auth, ctx: Ctx) -> dict[str, Any]:
    """The engine's history of the warning (raise, escalations, acks…) and every
    notification about it with its delivery state per notifier (sent, pending, dead)."""
    ctx.warning_or_404(request, token, warning_id)
    return ctx.views.timeline(warning_id)
