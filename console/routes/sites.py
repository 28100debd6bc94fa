"""Site routes: the sites in the caller's jurisdiction, one site's card and device health, and
its readings for the charts; the devices whose clocks look wrong."""

from typing import Any

from fastapi import APIRouter, Request

from geowarn.console.routes.context import Auth, Ctx
from geowarn.console.views import CONFLICT_WINDOW_S, colour

router = APIRouter(tags=["sites"])


@router.get("/api/sites")
def sites(token: Auth, ctx: Ctx) -> list[dict[str, Any]]:
    """Sites in the token's jurisdiction with their latest level, warning status, readings
    summary (last 24 h of data) and devices online."""
    views = ctx.views
    levels = views.site_levels()
    all_states = views.states()
    states = {str(s["site"]): s for s in all_states if not s.get("exercise")}
    # A drill's level is shown beside the real one, marked, never instead of it.
    drills = {str(s["site"]): int(s.get("announced", 0)) for s in all_states if s.get("exercise") and int(s.get("announced", 0)) > 0}
    t = ctx.now()
    out = []
    for code, card in ctx.registry.sites.items():
        if not token.covers(card.admin):
            continue
        st = states.get(code, {})
        lvl = max(int(levels.get(code, 0)), int(st.get("level", 0)))
        summary = views.site_summary(code, t)
        out.append({
            **views.card(code), "level": lvl, "colour": colour(lvl), "status": st.get("status", "normal"),
            "warning_id": st.get("warning_id") if int(st.get("announced", 0)) > 0 else None,
            "readings_24h": summary["readings_24h"], "last_t": summary["last_t"],
            "devices": len(card.devices), "devices_online": summary["devices_online"],
            "drill_level": drills.get(code, 0),
        })
    out.sort(key=lambda s: (-s["level"], s["site"]))
    return out


@router.get("/api/sites/{site}")
def site_detail(site: str, request: Request, token: Auth, ctx: Ctx) -> dict[str, Any]:
    """The site's 防灾明白卡, device health and its current warning (real and exercise)."""
    ctx.site_or_404(request, token, site)
    views = ctx.views
    warnings = [w.doc for w in views.warnings() if w.doc["site"] == site]
    levels = views.site_levels()
    return {"card": views.card(site), "level": levels.get(site, 0), **views.site_summary(site, ctx.now(), conflicts=True), "warnings": warnings}


@router.get("/api/sites/{site}/series")
def site_series(site: str, request: Request, token: Auth, ctx: Ctx, hours: float = 72.0) -> dict[str, Any]:
    """Each channel's readings over the last ``hours`` before its newest one (for charts)."""
    ctx.site_or_404(request, token, site)
    return ctx.views.series(site, max(1.0, min(hours, 24 * 90.0)))


@router.get("/api/clock")
def clock_health(token: Auth, ctx: Ctx) -> dict[str, Any]:
    """Devices in the token's jurisdiction that sent readings out of order, stamped ahead of
    their arrival or conflicting with a stored one: per device its counts, in total and among
    its recent readings, and ``trouble`` while its clock looks wrong (a ``clock`` event was
    raised and not yet cleared). ``conflicts_refused``: its readings the store stage refused
    as conflicting duplicates over the last ``conflicts_window_days`` (detection never sees
    those; ``conflicts_complete`` false: only the newest dead letters were read). Messages
    refused for a conflict, all devices and all time: ``deadletters_conflict`` (and ``/metrics``)."""
    views = ctx.views
    doc = views.clock_health()
    refused = views.refused_conflicts(ctx.now())
    sites = ctx.registry.sites
    devices: dict[str, dict[str, Any]] = {
        d: {"device": d, **h, "conflicts_refused": refused.by_device.get((h["site"], d), 0)}
        for d, h in doc.get("devices", {}).items() if h.get("site") in sites and token.covers(sites[h["site"]].admin)
    }
    for (site, device), n in refused.by_device.items():
        if device not in devices and site in sites and token.covers(sites[site].admin) and any(d.device == device for d in sites[site].devices):
            devices[device] = {"device": device, "site": site, "trouble": False, "conflicts_refused": n}
    return {
        "devices": sorted(devices.values(), key=lambda h: (not h.get("trouble"), h["device"])),
        "devices_in_trouble": sum(1 for h in devices.values() if h.get("trouble")),
        "conflicts_window_days": CONFLICT_WINDOW_S / 86400.0,
        "conflicts_complete": refused.complete,
        "deadletters_conflict": views.deadletters_conflict(),
    }
