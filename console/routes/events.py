"""The live-update route: ``/api/events``, server-sent events with the caller's warnings and
site levels whenever they (or a notification's delivery state) change."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from geowarn.console.routes.context import Auth, Context, Ctx
from geowarn.console.tokens import Token

#: How often a stream looks for changes (a PRAGMA on an open connection: cheap).
EVENTS_POLL_S = 1.0
#: A comment line keeps idle streams (and proxies in between) from timing out.
EVENTS_PING_S = 15.0

router = APIRouter()


def _levels(ctx: Context, token: Token) -> dict[str, int]:
    sites = ctx.registry.sites
    return {k: v for k, v in ctx.views.site_levels().items() if k in sites and token.covers(sites[k].admin)}


def _snapshot(ctx: Context, token: Token, levels: dict[str, int]) -> dict[str, Any]:
    return {"warnings": [w.doc for w in ctx.views.warnings() if token.covers(w.admin)], "levels": levels}


async def _stream(ctx: Context, request: Request, token: Token) -> AsyncIterator[bytes]:
    watch = ctx.views.outbox_watch()
    seen: tuple[int, dict[str, int]] | None = None
    last_text = ""
    last_sent = time.monotonic()
    try:
        while not ctx.stopping.is_set() and not await request.is_disconnected():
            if not await asyncio.to_thread(ctx.tokens.is_live, token.id):
                break  # revoked while listening: the stream ends, reconnecting gets 401
            version = await asyncio.to_thread(watch.version)
            # Site levels are one small row of the journal; the warnings are re-read only
            # when the outbox file (states, deliveries) or the levels have changed.
            lv = await asyncio.to_thread(_levels, ctx, token)
            if seen != (version, lv):
                seen = (version, lv)
                # The outbox version rides along so that an open timeline refreshes when a
                # notification's delivery state changes too.
                doc = {**await asyncio.to_thread(_snapshot, ctx, token, lv), "outbox_version": version}
                text = json.dumps(doc, ensure_ascii=False, sort_keys=True)
                if text != last_text:
                    last_text, last_sent = text, time.monotonic()
                    yield f"event: update\ndata: {text}\n\n".encode()
            if time.monotonic() - last_sent >= EVENTS_PING_S:
                last_sent = time.monotonic()
                yield b": ping\n\n"
            await asyncio.sleep(EVENTS_POLL_S)  # polling SQLite files: there is nothing to wait on
    finally:
        watch.close()


@router.get("/api/events", tags=["warnings"])
async def events(request: Request, token: Auth, ctx: Ctx) -> StreamingResponse:
    """Server-sent events: ``update`` with the token's warnings and site levels whenever
    they (or a notification's delivery state) change; a comment line every 15 s."""
    return StreamingResponse(_stream(ctx, request, token), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
