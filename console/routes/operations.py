"""Operations routes: ``/healthz`` and ``/metrics`` (no token: a load balancer and Prometheus
scrape them), and ``/api/me`` (who the console is logged in as)."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from geowarn.console.routes.context import Auth, Ctx

router = APIRouter()

#: /healthz says "lagging" (503) past these: message-log batches (up to 2,000 messages each) not
#: yet decoded into the journal, and stored readings detection has not judged yet. A daemon
#: catching up after an outage is lagging too, and says so until it has caught up.
LAG_MAX_BATCHES = 50
LAG_MAX_READINGS = 200_000


def _lag(ctx: Ctx) -> list[str]:
    """Reasons the pipeline is behind (cheap: three indexed reads of the stores' positions)."""
    from geowarn.ingest.journal import DETECTION_STATS_KEY
    from geowarn.ingest.messagelog import MESSAGES_FILE, MessageLogReader
    from geowarn.ingest.store import POSITION_KEY

    journal = ctx.views.journal
    out: list[str] = []
    try:
        batches = MessageLogReader(ctx.views.data_dir / MESSAGES_FILE).last_id() - int(journal.state(POSITION_KEY, 0) or 0)
        det = journal.state(DETECTION_STATS_KEY) or {}
        readings = journal.readings_stored() - int(det.get("position", 0)) if det else 0
    except Exception:  # an unreadable store is reported by the rest of the health check
        return out
    if batches > LAG_MAX_BATCHES:
        out.append(f"lagging: {batches} message-log batches not yet stored in the journal")
    if readings > LAG_MAX_READINGS:
        out.append(f"resuming: detection, restarted, is judging again the {readings} readings stored after its saved state; "
                   "warnings resume when it has caught up" if det.get("resuming") else
                   f"lagging: {readings} stored readings not yet judged by detection (warnings come late)")
    return out


@router.get("/healthz", tags=["operations"], responses={503: {"description": "degraded: a part of the daemon cannot write, or no broker connection"}})
def healthz(ctx: Ctx, request: Request) -> Any:
    """Health: the API answers and can read the journal (no token needed).

    503 while the daemon is degraded (a part cannot write: disk full, I/O error), with each
    part's reason in ``degraded``, while it has no connection to the MQTT broker (it then
    receives nothing), or while it is lagging (``lagging``: more than LAG_MAX_BATCHES
    message-log batches not stored, or LAG_MAX_READINGS readings not judged); all the reasons
    in ``reason``. ``disk`` tells the data directory's free
    space (low space alone is a warning, not a 503)."""
    # A requester that cannot tell (a test's) counts as connected.
    connected = getattr(ctx.requester, "connected", True)
    body: dict[str, Any] = {"ok": ctx.views.healthy(), "mqtt": bool(connected), "t": ctx.now()}
    main = getattr(request.app.state, "geowarn_main", None)
    if main is None:  # an API without a daemon behind it (tests, tools)
        return body
    m = main()
    degraded = {part: reason for part, reason in m.degraded if reason}
    body["degraded"] = degraded
    if m.broker_sessions_lost:
        # Not a 503 (it is over), but a possible loss someone should look into.
        body["broker_sessions_lost"] = {
            "count": m.broker_sessions_lost,
            "last": m.broker_session_lost_at,
            "meaning": "the broker had forgotten the daemon's persistent session: messages it queued meanwhile may be lost",
        }
    if m.disk_free_bytes is not None:
        body["disk"] = {
            "free_bytes": m.disk_free_bytes,
            "total_bytes": m.disk_total_bytes,
            "warn_below_bytes": m.disk_warn_below_bytes,
            "low": m.disk_warn_below_bytes is not None and m.disk_free_bytes < m.disk_warn_below_bytes,
        }
    reasons = [f"{part} cannot write: {reason}" for part, reason in degraded.items()]
    lag = _lag(ctx)
    if lag:
        body["lagging"] = lag
    reasons += lag
    if m.mqtt_connected is not None:
        body["mqtt"] = m.mqtt_connected
        if not m.mqtt_connected:
            # Not the broker's URL: this answer needs no token, and the URL carries the account.
            reasons.append("no connection to the MQTT broker: nothing is received; start the broker or fix GEOWARN_MQTT_URL (the daemon's log names it)")
    if reasons:
        body["ok"] = False
        body["reason"] = "; ".join(reasons)
        return JSONResponse(body, status_code=503)
    return body


@router.get("/readyz", tags=["operations"], responses={503: {"description": "still starting, not connected, or degraded"}})
def readyz(ctx: Ctx, request: Request) -> Any:
    """Readiness for an orchestrator (no token needed): 200 once the daemon has started (store,
    detection and the ack loop running), is connected to the broker and can write; 503 with
    ``reason`` otherwise. A console served without a daemon behind it is ready when it can read."""
    main = getattr(request.app.state, "geowarn_main", None)
    if main is None:
        ok = ctx.views.healthy()
        return {"ready": ok} if ok else JSONResponse({"ready": False, "reason": "cannot read the journal"}, status_code=503)
    m = main()
    reasons = []
    if not m.started:
        reasons.append("starting")
    if m.mqtt_connected is False:
        reasons.append("no connection to the MQTT broker")
    reasons += [f"{part} cannot write: {reason}" for part, reason in m.degraded if reason]
    if not ctx.views.healthy():
        reasons.append("cannot read the journal")
    if reasons:
        return JSONResponse({"ready": False, "reason": "; ".join(reasons)}, status_code=503)
    return {"ready": True}


@router.get("/metrics", tags=["operations"], response_class=Response)
def metrics(ctx: Ctx) -> Response:
    """Prometheus text format (no token needed)."""
    return Response(generate_latest(ctx.metrics), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/me", tags=["auth"])
def me(token: Auth, ctx: Ctx) -> dict[str, Any]:
    """The token's name, tier and admin unit (``admin_name`` from the roster); what the console
    shows with it: ``timezone`` (GEOWARN_TIMEZONE, every time is shown in it, named), ``units``
    (the names of the admin units its sites' warnings go to) and ``map_tile_url`` (None: the
    map draws the sites alone)."""
    units = ctx.views.unit_names()
    return {
        "name": token.name, "tier": token.tier, "admin": token.admin, "admin_name": ctx.views.unit_name(token.admin),
        "timezone": ctx.timezone, "units": units, "map_tile_url": ctx.map_tile_url,
    }
