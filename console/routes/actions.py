"""Action routes: acknowledge a warning, submit a quick report, shelve and unshelve a site or
one of its devices.

Every action is checked against the caller's jurisdiction, sent to the detection worker as the
same MQTT request ``geowarn ack`` publishes (``Context.act``), and audited with its outcome.
The request bodies are validated here: a name or note a person must write cannot be blank.
The request's ``by`` is the caller's token name, the identity the API vouches for when it
signs the request (alerts/control.py); the name typed in the body travels as ``name`` and is
kept with the note, never as ``by``.
"""

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, Field

from geowarn.console.routes.context import Auth, Ctx

router = APIRouter(tags=["actions"])


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be blank")
    return v.strip()


#: A name or note a person must actually write: blank or spaces-only is refused, edges trimmed.
NonBlank = Annotated[str, AfterValidator(_not_blank)]


class AckIn(BaseModel):
    name: NonBlank = Field(min_length=1, max_length=200, description="who acknowledges, kept with the note (the ack is signed with the token's name)")
    note: NonBlank = Field(min_length=1, max_length=2000, description="what is being done about it")
    level: int | None = Field(default=None, ge=1, le=4, description="the level acknowledged (default: the one announced)")


class ReportIn(BaseModel):
    name: NonBlank = Field(min_length=1, max_length=200)
    note: str = Field(default="", max_length=4000, description="the quick report's content or where it was filed")


class ShelveIn(BaseModel):
    name: NonBlank = Field(min_length=1, max_length=200)
    note: NonBlank = Field(min_length=1, max_length=2000, description="why (e.g. which device is being serviced)")
    until: float | str | None = Field(default=None, description="epoch seconds or RFC 3339; or give minutes")
    minutes: float | None = Field(default=None, gt=0, le=7 * 24 * 60)
    device: str | None = Field(default=None, max_length=64, description="one device of the site under maintenance (its readings are stored, not judged; its silence raises nothing) instead of the whole site")


class UnshelveIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    note: str = Field(default="", max_length=2000)
    device: str | None = Field(default=None, max_length=64, description="end one device's maintenance instead of the site's shelving")


@router.post("/api/warnings/{warning_id}/ack")
def ack(warning_id: str, body: AckIn, request: Request, token: Auth, ctx: Ctx) -> JSONResponse:
    """Acknowledge a warning: stops its escalation at the acknowledged level."""
    ctx.warning_or_404(request, token, warning_id)
    doc: dict[str, Any] = {"id": warning_id, "by": token.name, "name": body.name, "note": body.note}
    if body.level is not None:
        doc["level"] = body.level
    return ctx.act(request, token, "ack", warning_id, doc)


@router.post("/api/reports/{task_id}/submit")
def report_submit(task_id: str, body: ReportIn, request: Request, token: Auth, ctx: Ctx) -> JSONResponse:
    """Mark a quick report (速报) as submitted: stops its reminders and escalation."""
    w = ctx.views.find_task(task_id)
    if w is None:
        ctx.audit(request, token, task_id, "refused", "unknown quick-report task")
        raise HTTPException(404, f"no quick-report task {task_id!r}")
    ctx.require(request, token, w.admin, task_id)
    return ctx.act(request, token, "report", task_id, {"task_id": task_id, "by": token.name, "name": body.name, "note": body.note})


@router.post("/api/sites/{site}/shelve")
def shelve(site: str, body: ShelveIn, request: Request, token: Auth, ctx: Ctx) -> JSONResponse:
    """Shelve a site for maintenance until a time: its level is followed, nothing is
    announced or escalated until then (or until unshelved)."""
    ctx.site_or_404(request, token, site)
    until: float | str | None = body.until
    if until is None:
        if body.minutes is None:
            ctx.audit(request, token, site, "refused", "shelve without until or minutes")
            raise HTTPException(422, "give until (epoch seconds or RFC 3339) or minutes")
        until = ctx.now() + body.minutes * 60.0
    doc = {"site": site, "by": token.name, "name": body.name, "until": until, "note": body.note}
    if body.device:
        doc["device"] = body.device
    return ctx.act(request, token, "shelve", site if not body.device else f"{site}/{body.device}", doc)


@router.post("/api/sites/{site}/unshelve")
def unshelve(site: str, body: UnshelveIn, request: Request, token: Auth, ctx: Ctx) -> JSONResponse:
    ctx.site_or_404(request, token, site)
    doc = {"site": site, "by": token.name, "name": body.name.strip(), "note": body.note}
    if body.device:
        doc["device"] = body.device
    return ctx.act(request, token, "unshelve", site if not body.device else f"{site}/{body.device}", doc)
