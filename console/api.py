"""The duty-officer HTTP API and web console, served by the daemon on ``GEOWARN_HTTP``.

This module owns the assembly of the HTTP surface (DESIGN §2, console): ``create_api`` builds
the FastAPI app from the route modules in ``console/routes/`` (operations, sites, warnings,
actions, events) and the console's static files, and ``ApiServer`` is the uvicorn thread the
daemon starts. The parts live beside it: the read side in ``console/views.py``, the action
path in ``console/requester.py``, tokens and audit in ``console/tokens.py``, the door rules
in ``console/routes/context.py``.

Two rules shape it:

- **Reads come from the files, writes go through MQTT.** Everything shown is read from the
  files the pipeline already keeps, through each store's reader (the journal: readings,
  device status, fused levels; the outbox: each site's persisted engine state and every
  notification with its delivery state; ``alerts.jsonl``: the history). Every action (ack,
  quick-report submission, shelve, unshelve) is published as the same request ``geowarn ack``
  publishes, on ``{prefix}/{kind}``, and the detection worker's answer on
  ``{prefix}/{kind}/result`` is returned. One path for every actor: the engine never learns
  whether a person used the CLI, the console or another MQTT client, and the API holds no
  state of its own that could disagree with the engine's.
- **Scope and audit at the door.** Every ``/api`` request needs a bearer token
  (console/tokens.py); lists are filtered to the token's jurisdiction, and reaching for
  something outside it is 403. Every action and every refused attempt is written to the audit
  table (who, when, what, from where, outcome) before the answer goes out — except failed
  token attempts, one row per burst of them (console/security.py), so a flood costs no fsync
  per request.

``/healthz`` and ``/metrics`` need no token (a load balancer and Prometheus scrape them);
the console's static files neither (they hold no data; the page asks for a token).

Every response carries the headers of ``console/security.py`` (a Content-Security-Policy
under which the page loads nothing from elsewhere, nosniff, no framing, no referrer). There
is no Swagger UI at ``/docs``: it runs a CDN's script on the origin whose pages hold the
officers' tokens, and a duty network may have no internet; ``/openapi.json`` stays.

Exceptions: ``RequestUnavailable`` (the broker is unreachable) becomes 503 at the boundary;
``TokenError`` never reaches HTTP (tokens are created by the CLI).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client.registry import CollectorRegistry

from geowarn.config.settings import Loaded
from geowarn.core.sqlite import SchemaError
from geowarn.console.metrics import MainStats, make_registry
from geowarn.alerts.control import load_or_create_key
from geowarn.console.requester import MqttRequester, Requester, RequestUnavailable
from geowarn.console.routes import actions, events, operations, sites, warnings
from geowarn.console.routes.context import Context
from geowarn.console.security import SECURITY_HEADERS, Network, SecurityHeaders
from geowarn.console.tokens import TOKENS_FILE, TokenStore
from geowarn.console.views import Views
from geowarn.core.logfields import kv

log = logging.getLogger(__name__)

__all__ = ["ApiServer", "MqttRequester", "RequestUnavailable", "Requester", "Views", "create_api"]

#: How long an action waits for the detection worker's answer before it reports "queued".
ANSWER_WAIT_S = 15.0
WEB_DIR = "web"
#: How often ended bursts of failed token attempts are written to the audit.
FAILED_TOKEN_AUDIT_S = 5.0


def create_api(
    loaded: Loaded,
    data_dir: Path,
    requester: Requester,
    tokens: TokenStore,
    registry_metrics: CollectorRegistry,
    *,
    now: Callable[[], float] = time.time,
    stopping: threading.Event | None = None,
    answer_wait_s: float = ANSWER_WAIT_S,
    trusted_proxies: Sequence[Network] = (),
    main: Callable[[], MainStats] | None = None,
) -> FastAPI:
    """The FastAPI app: the API under ``/api``, the console at ``/``, ``/healthz``, ``/metrics``.

    ``trusted_proxies``: the peers whose ``X-Forwarded-For`` names the client (default none).
    ``main``: the daemon's own figures, whose degraded parts make ``/healthz`` answer 503."""
    app = FastAPI(
        title="GeoWarn duty-officer API",
        version="1",
        description="Warnings, sites and the response chain of a GeoWarn daemon. Every /api call needs "
        "`Authorization: Bearer <token>` (create one with `geowarn token create`).",
        docs_url=None,
        redoc_url=None,
    )
    tiles = loaded.settings.map_tile_url
    app.add_middleware(SecurityHeaders, tile_origin="{0.scheme}://{0.netloc}".format(urlsplit(tiles)) if tiles else None)

    # An unhandled error is answered outside every middleware: give it the headers itself.
    async def internal_error(request: Request, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse("Internal Server Error", status_code=500, headers=dict(SECURITY_HEADERS))

    app.add_exception_handler(Exception, internal_error)

    # A store this GeoWarn cannot read (one written by a newer version after a downgrade) is an
    # operator's problem with a clear cause: say which file and why, as /healthz does, not a 500.
    async def unreadable_store(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    app.add_exception_handler(SchemaError, unreadable_store)

    # A refused action is audited whatever refused it (README: every refused attempt is); an
    # invalid body (a blank name, a level of 9) is refused by validation before the route runs,
    # so it is audited here, under the token that sent it. Without a live token there is
    # nobody to audit it under: the token check answers those.
    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if request.method == "POST" and request.url.path.startswith("/api/"):
            ctx = app.state.geowarn
            scheme, _, secret = request.headers.get("authorization", "").partition(" ")
            token = ctx.tokens.verify(secret.strip()) if scheme.lower() == "bearer" and secret.strip() else None
            if token is not None:
                target = next(iter(request.path_params.values()), request.url.path)
                why = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors())
                await run_in_threadpool(ctx.audit, request, token, str(target), "refused", f"invalid request: {why}"[:500])
        return await request_validation_exception_handler(request, exc)

    app.add_exception_handler(RequestValidationError, invalid_request)
    # The routes' one shared object, handed to them by the Ctx dependency.
    app.state.geowarn = Context(
        registry=loaded.registry,
        views=Views(Path(data_dir), loaded.registry, loaded.roster, loaded.settings.timezone),
        requester=requester,
        tokens=tokens,
        metrics=registry_metrics,
        now=now,
        stopping=stopping or threading.Event(),
        answer_wait_s=answer_wait_s,
        trusted_proxies=tuple(trusted_proxies),
        timezone=loaded.settings.timezone,
        map_tile_url=loaded.settings.map_tile_url,
    )
    # The daemon's health for /healthz (console/routes/operations.py), read at each request.
    app.state.geowarn_main = main
    # In this order: it is the order of the OpenAPI document and of route matching.
    for module in (operations, sites, warnings, actions, events):
        app.include_router(module.router)

    web = Path(str(resources.files(__package__).joinpath(WEB_DIR)))
    app.mount("/static", StaticFiles(directory=web), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(web / "index.html", headers={"Cache-Control": "no-store"})

    return app


# -- the server thread the daemon runs ------------------------------------------------------


def parse_bind(http: str) -> tuple[str, int]:
    host, _, port = http.rpartition(":")
    return host.strip("[]"), int(port)


class ApiServer:
    """uvicorn in a thread of the daemon's main process, with its own event loop.

    The socket is bound here, in the caller's thread, so a port in use is known at once
    (``start`` returns False and logs why) instead of dying inside uvicorn's thread. uvicorn
    installs signal handlers only in the main thread, so the daemon's SIGTERM handling stays
    the daemon's.
    """

    def __init__(self, loaded: Loaded, data_dir: Path, main: Callable[[], MainStats], now: Callable[[], float] = time.time) -> None:
        import uvicorn

        s = loaded.settings
        self.bind = s.http
        self.data_dir = Path(data_dir)
        self.stopping = threading.Event()
        self.tokens = TokenStore(self.data_dir / TOKENS_FILE, keep_days=s.audit_keep_days, keep_mb=s.audit_keep_mb)  # prunes the audit
        self.requester = MqttRequester(s.mqtt_for(f"{s.mqtt_client_id}-api"), s.topic_prefix, f"{s.mqtt_client_id}-api", str(s.mqtt_ca_file) if s.mqtt_ca_file else None, key=load_or_create_key(self.data_dir))
        self.metrics = make_registry(self.data_dir, loaded.registry, main, now)
        self.app = create_api(
            loaded, self.data_dir, self.requester, self.tokens, self.metrics, now=now, stopping=self.stopping,
            trusted_proxies=s.trusted_proxy_networks, main=main,
        )
        # log_config=None: keep the daemon's logging as it is; access_log off: the audit table
        # records what matters, and request lines would drown the daemon's own log.
        # proxy_headers off: uvicorn would believe X-Forwarded-For from any loopback peer;
        # the API decides that itself, from GEOWARN_TRUSTED_PROXIES (console/security.py).
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=3, proxy_headers=False
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._auditor: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def _audit_failed_tokens(self, final: bool = False) -> None:
        ctx: Context = self.app.state.geowarn
        try:
            ctx.audit_failed_tokens(final)
        except Exception:  # a full disk must not end the auditor; logged with its traceback
            log.exception("could not write failed token attempts to the audit")

    def _audit_loop(self) -> None:
        while not self.stopping.wait(FAILED_TOKEN_AUDIT_S):
            self._audit_failed_tokens()

    def start(self, timeout: float = 10.0) -> bool:
        host, port = parse_bind(self.bind)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a quick restart must not wait out TIME_WAIT
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            # The console must never keep warnings from being raised: ingest goes on without it.
            log.error("duty-officer API NOT started: cannot listen; set GEOWARN_HTTP to a free host:port", extra=kv(bind=self.bind, error=exc))
            return False
        sock.listen(128)
        sock.set_inheritable(False)
        self._sock = sock
        self.requester.start()
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="geowarn-http", daemon=True)
        self._thread.start()
        self._auditor = threading.Thread(target=self._audit_loop, name="geowarn-http-audit", daemon=True)
        self._auditor.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                log.error("duty-officer API did not start", extra=kv(bind=self.bind))
                return False
            time.sleep(0.02)  # uvicorn offers no event for "started"; poll its flag with a deadline
        log.info("duty-officer API and console listening (OpenAPI at /openapi.json)", extra=kv(url=f"http://{self.bind}/"))
        return True

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()  # event streams end at their next poll
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._auditor is not None:
            self._auditor.join(timeout)
        if self._sock is not None:
            self._sock.close()
        self.requester.stop()
        self._audit_failed_tokens(final=True)  # no burst is lost at a clean stop
        self.tokens.close()
