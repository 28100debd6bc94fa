"""The duty-officer HTTP API and web console, served by the daemon on ``GEOWARN_HTTP``.

This module owns the HTTP surface (DESIGN §2, ``alerts/``): the FastAPI app
(``create_api``), the long-lived MQTT client that carries people's actions to the detection
worker (``MqttRequester``), the read side over the daemon's SQLite files (``Views``) and the
uvicorn thread the daemon starts (``ApiServer``).

Two rules shape it:

- **Reads come from the files, writes go through MQTT.** Everything shown is read from the
  SQLite files the pipeline already keeps (``journal.sqlite``: readings, device status, fused
  levels; ``outbox.sqlite``: each site's persisted engine state and every notification with
  its delivery state; ``alerts.jsonl``: the history), through read-only connections. Every
  action (ack, quick-report submission, shelve, unshelve) is published as the same request
  ``geowarn ack`` publishes, on ``{prefix}/{kind}``, and the detection worker's answer on
  ``{prefix}/{kind}/result`` is returned. One path for every actor: the engine never learns
  whether a person used the CLI, the console or another MQTT client, and the API holds no
  state of its own that could disagree with the engine's.
- **Scope and audit at the door.** Every ``/api`` request needs a bearer token
  (alerts/tokens.py); lists are filtered to the token's jurisdiction, and reaching for
  something outside it is 403. Every action and every refused attempt is written to the audit
  table (who, when, what, from where, outcome) before the answer goes out.

``/healthz`` and ``/metrics`` need no token (a load balancer and Prometheus scrape them);
the console's static files neither (they hold no data; the page asks for a token).

Exceptions: ``RequestUnavailable`` (the broker is unreachable) becomes 503 at the boundary;
``TokenError`` never reaches HTTP (tokens are created by the CLI).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route functions'
# annotations at run time, and those name ``Auth``, local to ``create_api``.
import asyncio
import json
import logging
import os
import queue
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Protocol

import paho.mqtt.client as mqtt
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from pydantic import AfterValidator, BaseModel, Field

from geowarn.core.levels import LEVELS
from geowarn.console.metrics import MainStats, make_registry, open_ro
from geowarn.console.tokens import Outcome, Token, TokenStore
from geowarn.config.registry import Registry
from geowarn.config.settings import Loaded, MqttTarget

log = logging.getLogger(__name__)

__all__ = ["ApiServer", "MqttRequester", "RequestUnavailable", "Requester", "Views", "create_api"]

#: How long an action waits for the detection worker's answer before it reports "queued".
ANSWER_WAIT_S = 15.0
#: How often an SSE stream looks for changes (a PRAGMA on an open connection: cheap).
EVENTS_POLL_S = 1.0
#: A comment line keeps idle SSE streams (and proxies in between) from timing out.
EVENTS_PING_S = 15.0
#: Points per channel sent to the charts (the console draws SVG; more would not be visible).
MAX_POINTS = 600
#: Kinds drawn as displacement (their velocity and inverse velocity too).
DISPLACEMENT_KINDS = ("displacement", "crack", "gnss_e", "gnss_n", "gnss_u", "tilt")

TOKENS_FILE = "tokens.sqlite"
WEB_DIR = "web"


class RequestUnavailable(Exception):
    """An action cannot be sent now (the broker is unreachable); answered with 503."""


# -- the action path: MQTT requests ---------------------------------------------------------


class Requester(Protocol):
    def request(self, kind: str, doc: dict[str, Any], wait_s: float) -> dict[str, Any] | None:
        """Publish one request; the worker's answer, or None when none came within ``wait_s``."""
        ...


class MqttRequester:
    """One MQTT connection for the life of the API (``ingest.requests.send_request`` does
    the same per call, for the CLI): subscribed to every ``…/result`` topic, it routes each
    answer to the waiting request by its ``request`` id. paho's thread only hands answers
    over; nothing blocks in its callbacks."""

    KINDS = ("ack", "report", "shelve", "unshelve")

    def __init__(self, target: MqttTarget, prefix: str, client_id: str, ca_file: str | None = None) -> None:
        self.prefix = prefix
        self._target = target
        self._waiting: dict[str, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if target.username is not None:
            self._client.username_pw_set(target.username, target.password)
        if target.tls:
            self._client.tls_set(ca_certs=ca_file)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 30)

    def start(self) -> None:
        # connect_async: a broker that is down at start is retried by paho's loop, and the
        # API answers 503 for actions meanwhile instead of failing the daemon's start.
        self._client.connect_async(self._target.host, self._target.port, 30)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._subscribed.is_set()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.error("API MQTT connection refused: %s", rc)
            return
        client.subscribe([(f"{self.prefix}/{k}/result", 1) for k in self.KINDS])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        self._subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._subscribed.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            answer = json.loads(msg.payload)
        except ValueError:
            return  # not an answer of ours; other clients share the topic
        if not isinstance(answer, dict):
            return
        with self._lock:
            q = self._waiting.get(str(answer.get("request", "")))
        if q is not None:
            q.put(answer)

    def request(self, kind: str, doc: dict[str, Any], wait_s: float) -> dict[str, Any] | None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown request kind {kind!r}")
        # Subscribed before asking, or the answer could pass by unseen.
        if not self._subscribed.wait(min(wait_s, 5.0)):
            raise RequestUnavailable(f"the MQTT broker {self._target.redacted()} is not reachable; nothing was sent, try again")
        request_id = doc.setdefault("request", uuid.uuid4().hex)
        answers: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._waiting[request_id] = answers
        try:
            info = self._client.publish(f"{self.prefix}/{kind}", json.dumps(doc, ensure_ascii=False).encode(), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise RequestUnavailable(f"publishing the {kind} request failed ({mqtt.error_string(info.rc)}); nothing was sent, try again")
            try:
                return answers.get(timeout=wait_s)
            except queue.Empty:
                return None
        finally:
            with self._lock:
                self._waiting.pop(request_id, None)


# -- the read side ----------------------------------------------------------------------------


def _colour(level: int) -> str:
    return LEVELS[level].colour if level in LEVELS else "none"


@dataclass(frozen=True)
class WarningView:
    """One site's current (or last) warning, as the console shows it."""

    doc: dict[str, Any]
    admin: str


class Views:
    """Read-only views over the daemon's files; every method opens its own short-lived
    read-only connection, so request threads share nothing and never write."""

    def __init__(self, data_dir: Path, registry: Registry) -> None:
        self.data_dir = Path(data_dir)
        self.registry = registry
        self.journal_path = self.data_dir / "journal.sqlite"
        self.outbox_path = self.data_dir / "outbox.sqlite"
        self.alerts_path = self.data_dir / "alerts.jsonl"

    # -- engine states -------------------------------------------------------------------

    def states(self) -> list[dict[str, Any]]:
        """Every persisted site state (``SiteAlert.to_dict()``), real and exercise."""
        conn = open_ro(self.outbox_path)
        if conn is None:
            return []
        try:
            rows = conn.execute("SELECT value FROM state WHERE key >= 'alert/' AND key < 'alert0' ORDER BY key").fetchall()
        except sqlite3.OperationalError:
            return []  # the worker has not created its tables yet
        finally:
            conn.close()
        return [json.loads(r[0]) for r in rows]

    def site_levels(self) -> dict[str, int]:
        conn = open_ro(self.journal_path)
        if conn is None:
            return {}
        try:
            row = conn.execute("SELECT value FROM state WHERE key = 'fusion.site_levels'").fetchone()
        except sqlite3.OperationalError:
            return {}
        finally:
            conn.close()
        return {str(k): int(v) for k, v in json.loads(row[0]).items()} if row else {}

    def warning_doc(self, s: Mapping[str, Any]) -> dict[str, Any]:
        announced = int(s.get("announced", 0))
        level = int(s.get("level", 0))
        shown = announced or level
        site = self.registry.sites.get(str(s["site"]))
        status = str(s.get("status", "normal"))
        evidence = dict(s.get("evidence") or {})
        notices = s.get("notices") or []
        return {
            "id": s.get("warning_id"),
            "site": s["site"],
            "site_name": site.name if site else s["site"],
            "admin": s["admin"],
            "exercise": bool(s.get("exercise")),
            "level": shown,
            "current_level": level,
            "announced": announced,
            "colour": _colour(shown),
            "label_zh": LEVELS[shown].zh if shown in LEVELS else "",
            "label_en": LEVELS[shown].en if shown in LEVELS else "",
            "since": s.get("raised"),
            "level_since": s.get("since"),
            "status": status,
            "active": announced > 0 or status == "rtn_unacknowledged",
            "acknowledged": status == "acknowledged" or (announced > 0 and int(s.get("acked_level", 0)) >= announced),
            "ack_deadline": s.get("ack_deadline"),
            "reason": s.get("reason", ""),
            "evidence": evidence,
            "forecast": evidence.get("forecast"),
            "notified": [{"tier": n[0], "admin": n[1], "level": n[2], "t": n[3], "deadline": n[4], "kind": n[5]} for n in notices],
            "acks": [{"by": a[0], "note": a[1], "t": a[2], "level": a[3]} for a in (s.get("acks") or [])],
            "reports": list(s.get("reports") or []),
            "shelved_until": s.get("shelved_until"),
            "silent_devices": list(s.get("silent") or []),
        }

    def warnings(self) -> list[WarningView]:
        """Every site state that has had a warning: active first, unacknowledged first, then by
        level (highest first), then the most recently raised."""
        out = [WarningView(self.warning_doc(s), str(s["admin"])) for s in self.states() if s.get("warning_id")]
        out.sort(key=lambda w: (not w.doc["active"], w.doc["acknowledged"], -w.doc["level"], -(w.doc["since"] or 0.0)))
        return out

    def find_warning(self, warning_id: str) -> WarningView | None:
        return next((w for w in self.warnings() if w.doc["id"] == warning_id), None)

    def find_task(self, task_id: str) -> WarningView | None:
        return next((w for w in self.warnings() if any(r.get("task_id") == task_id for r in w.doc["reports"])), None)

    def history(self, limit: int) -> list[dict[str, Any]]:
        """The last alert events of ``alerts.jsonl`` (newest first), read from the end."""
        if not self.alerts_path.exists():
            return []
        with open(self.alerts_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            chunk = min(size, max(64 * 1024, limit * 2048))
            fh.seek(size - chunk)
            lines = fh.read().splitlines()
        if chunk < size:
            lines = lines[1:]  # the first line is probably cut
        out = []
        for line in reversed(lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line being written right now
            if len(out) >= limit:
                break
        return out

    # -- timeline ------------------------------------------------------------------------

    def timeline(self, warning_id: str) -> dict[str, Any]:
        """The engine's history of a warning and every notification about it, grouped by
        notification (one engine notification, delivered by each notifier of the unit)."""
        w = self.find_warning(warning_id)
        history = []
        if w is not None:
            for s in self.states():
                if s.get("warning_id") == warning_id:
                    history = [{"t": e[0], "rule": e[1], "level": e[2], "status": e[3], "detail": e[4]} for e in s.get("history") or []]
        notes: dict[str, dict[str, Any]] = {}
        conn = open_ro(self.outbox_path)
        if conn is not None:
            try:
                rows = conn.execute(
                    "SELECT id, payload, state, attempts, last_error, sent_at FROM outbox "
                    "WHERE json_extract(payload, '$.body.warning_id') = ? ORDER BY created, id",
                    (warning_id,),
                ).fetchall()
            except sqlite3.OperationalError:
                rows = []
            finally:
                conn.close()
            for ident, payload, state, attempts, last_error, sent_at in rows:
                msg = json.loads(payload)
                body = msg.get("body") or {}
                key = str(ident).split("/", 1)[0]
                n = notes.setdefault(key, {
                    "id": key, "t": msg["t"], "kind": msg["kind"], "tier": body.get("tier"), "admin": msg["admin"],
                    "level": msg["level"], "subject": msg["subject"], "text": msg["text"], "deadline": body.get("deadline"),
                    "deliveries": [],
                })
                n["deliveries"].append({"notifier": msg["notifier"], "state": state, "attempts": attempts, "last_error": last_error, "sent_at": sent_at})
        return {
            "warning": w.doc if w is not None else None,
            "history": history,
            "notifications": sorted(notes.values(), key=lambda n: (n["t"], n["id"])),
        }

    # -- sites, readings, devices --------------------------------------------------------

    def _series(self, conn: sqlite3.Connection, site: str) -> list[tuple[int, str, str, str]]:
        return conn.execute("SELECT id, device, channel, kind FROM series WHERE site = ? ORDER BY device, channel", (site,)).fetchall()

    def site_summary(self, site: str, now: float) -> dict[str, Any]:
        """Readings and device health of one site: per device its newest reading (event time and
        arrival), online by the no-data rule, and its latest status heartbeat."""
        card = self.registry.sites[site]
        conn = open_ro(self.journal_path)
        devices: dict[str, dict[str, Any]] = {
            d.device: {"device": d.device, "model": d.model, "channels": [c.channel for c in d.channels], "last_t": None,
                       "last_received": None, "online": False, "status": None, "status_t": None,
                       "interval_s": min(c.interval_s for c in d.channels)}
            for d in card.devices
        }
        readings_24h = 0
        last_t: float | None = None
        if conn is not None:
            try:
                for sid, device, _channel, _kind in self._series(conn, site):
                    row = conn.execute("SELECT t_ms, received_ms FROM readings WHERE series = ? AND drill = 0 ORDER BY t_ms DESC LIMIT 1", (sid,)).fetchone()
                    if row is None or device not in devices:
                        continue
                    d = devices[device]
                    t, rec = row[0] / 1000.0, row[1] / 1000.0
                    d["last_t"] = max(d["last_t"] or t, t)
                    d["last_received"] = max(d["last_received"] or rec, rec)
                    last_t = max(last_t or t, t)
                    # Counted back from the site's newest reading, so a replayed feed shows its data too.
                    readings_24h += int(conn.execute("SELECT count(*) FROM readings WHERE series = ? AND t_ms > ? AND drill = 0", (sid, row[0] - 86_400_000)).fetchone()[0])
                for device, d in devices.items():
                    st = conn.execute("SELECT status, t_ms FROM device_status WHERE site = ? AND device = ? ORDER BY id DESC LIMIT 1", (site, device)).fetchone()
                    if st is not None:
                        try:
                            d["status"] = json.loads(st[0])
                        except ValueError:
                            d["status"] = {"raw": st[0]}
                        d["status_t"] = st[1] / 1000.0
                    d["online"] = d["last_received"] is not None and now - d["last_received"] <= 3 * d["interval_s"]
            except sqlite3.OperationalError:
                pass  # no tables yet: a daemon that has just started
            finally:
                conn.close()
        return {"readings_24h": readings_24h, "last_t": last_t, "devices": list(devices.values()),
                "devices_online": sum(1 for d in devices.values() if d["online"])}

    def card(self, site: str) -> dict[str, Any]:
        s = self.registry.sites[site]
        return {
            "site": s.site, "name": s.name, "hazard": s.hazard, "scale": s.scale, "admin": s.admin, "lat": s.lat, "lon": s.lon,
            "threatened_people": s.threatened_people, "threatened_households": s.threatened_households,
            "evacuation_route": s.evacuation_route, "shelter": s.shelter, "responsible": s.responsible, "phone": s.phone,
            "velocity_window_s": s.policy.velocity_window_s,
        }

    def series(self, site: str, hours: float) -> dict[str, Any]:
        """Each channel's readings over the last ``hours`` before the site's newest reading,
        thinned to at most MAX_POINTS (every n-th: the charts only show the shape)."""
        conn = open_ro(self.journal_path)
        out: list[dict[str, Any]] = []
        if conn is not None:
            try:
                series = self._series(conn, site)
                newest = 0
                for sid, *_ in series:
                    row = conn.execute("SELECT max(t_ms) FROM readings WHERE series = ? AND drill = 0", (sid,)).fetchone()
                    newest = max(newest, int(row[0] or 0))
                since = newest - int(hours * 3_600_000)
                for sid, device, channel, kind in series:
                    n = int(conn.execute("SELECT count(*) FROM readings WHERE series = ? AND drill = 0 AND t_ms >= ?", (sid, since)).fetchone()[0])
                    if n == 0:
                        continue
                    stride = max(1, -(-n // MAX_POINTS))
                    rows = conn.execute(
                        "SELECT t_ms, value FROM (SELECT t_ms, value, row_number() OVER (ORDER BY t_ms) AS rn FROM readings "
                        "WHERE series = ? AND drill = 0 AND t_ms >= ?) WHERE (rn - 1) % ? = 0 OR rn = ? ORDER BY t_ms",
                        (sid, since, stride, n),
                    ).fetchall()
                    info = self.registry.channel(site, device, channel)
                    out.append({"device": device, "channel": channel, "kind": kind, "unit": info.unit if info else "",
                                "points": [[t / 1000.0, v] for t, v in rows]})
            except sqlite3.OperationalError:
                pass
            finally:
                conn.close()
        return {"site": site, "hours": hours, "channels": out}

    # -- change detection for the event stream --------------------------------------------

    def outbox_version(self, conn: sqlite3.Connection | None) -> tuple[sqlite3.Connection | None, int]:
        """``PRAGMA data_version`` changes whenever another connection commits to the file:
        one cheap query per poll says whether anything needs re-reading."""
        if conn is None:
            conn = open_ro(self.outbox_path)
            if conn is None:
                return None, -1
        return conn, int(conn.execute("PRAGMA data_version").fetchone()[0])


# -- the app --------------------------------------------------------------------------------


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be blank")
    return v.strip()


#: A name or note a person must actually write: blank or spaces-only is refused, edges trimmed.
NonBlank = Annotated[str, AfterValidator(_not_blank)]


class AckIn(BaseModel):
    name: NonBlank = Field(min_length=1, max_length=200, description="who acknowledges (signed into the warning's history)")
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


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "-"


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
) -> FastAPI:
    """The FastAPI app: the API under ``/api``, the console at ``/``, ``/healthz``, ``/metrics``."""
    registry = loaded.registry
    views = Views(Path(data_dir), registry)
    stop = stopping or threading.Event()
    app = FastAPI(
        title="GeoWarn duty-officer API",
        version="1",
        description="Warnings, sites and the response chain of a GeoWarn daemon. Every /api call needs "
        "`Authorization: Bearer <token>` (create one with `geowarn token create`).",
    )

    def audit(request: Request, token: Token | None, target: str, outcome: Outcome, detail: str = "") -> None:
        route = request.scope.get("route")
        action = f"{request.method} {getattr(route, 'path', request.url.path)}"
        tokens.audit(now(), token, action, target, _client(request), outcome, detail)

    def auth(request: Request) -> Token:
        scheme, _, secret = request.headers.get("authorization", "").partition(" ")
        token = tokens.verify(secret.strip()) if scheme.lower() == "bearer" else None
        if token is None:
            reason = "no bearer token" if not secret else "unknown or revoked token"
            audit(request, None, request.url.path, "unauthorised", reason)
            raise HTTPException(401, f"{reason}: send Authorization: Bearer <token> (geowarn token create)", headers={"WWW-Authenticate": "Bearer"})
        return token

    Auth = Annotated[Token, Depends(auth)]

    def require(request: Request, token: Token, county: str, target: str) -> None:
        if not token.covers(county):
            audit(request, token, target, "forbidden", f"{token.tier} {token.admin} does not cover county {county}")
            raise HTTPException(403, f"token {token.name!r} ({token.tier} {token.admin}) does not cover {target} in county {county}")

    def site_or_404(request: Request, token: Token, site: str) -> str:
        card = registry.sites.get(site)
        if card is None:
            audit(request, token, site, "refused", "unknown site")
            raise HTTPException(404, f"no site {site!r}")
        require(request, token, card.admin, site)
        return card.admin

    def act(request: Request, token: Token, kind: str, target: str, doc: dict[str, Any]) -> JSONResponse:
        """Send one action over MQTT, audit its outcome, and answer: 200 accepted, 409 refused
        by the engine, 202 queued (no answer in time), 503 broker unreachable."""
        try:
            answer = requester.request(kind, doc, answer_wait_s)
        except RequestUnavailable as exc:
            audit(request, token, target, "failed", str(exc))
            raise HTTPException(503, str(exc)) from None
        if answer is None:
            detail = f"no answer from the detection worker within {answer_wait_s:g} s; the request is queued at the broker and applies when it runs"
            audit(request, token, target, "failed", "queued: " + detail)
            return JSONResponse({"ok": None, "queued": True, "detail": detail}, status_code=202)
        ok = bool(answer.get("ok"))
        audit(request, token, target, "ok" if ok else "refused", str(answer.get("detail", "")))
        body = {k: answer.get(k) for k in ("ok", "detail", "rule", "site", "warning_id")}
        return JSONResponse(body, status_code=200 if ok else 409)

    def signed(name: str, token: Token) -> str:
        # The engine's history names the person and the token they used: the ack is traceable
        # to a credential even when a name is mistyped.
        return f"{name} [{token.name}]"

    # -- public ----------------------------------------------------------------------------

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, Any]:
        """Liveness: the API answers and can read the journal (no token needed)."""
        conn = open_ro(views.journal_path)
        ok = True
        if conn is not None:
            try:
                conn.execute("SELECT 1 FROM state LIMIT 1").fetchall()
            except sqlite3.Error:
                ok = False
            finally:
                conn.close()
        connected = getattr(requester, "connected", True)
        return {"ok": ok, "mqtt": bool(connected), "t": now()}

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def metrics() -> Response:
        """Prometheus text format (no token needed)."""
        return Response(generate_latest(registry_metrics), media_type=CONTENT_TYPE_LATEST)

    # -- reads -----------------------------------------------------------------------------

    @app.get("/api/me", tags=["auth"])
    def me(token: Auth) -> dict[str, Any]:
        """The token's name, tier and admin unit."""
        return {"name": token.name, "tier": token.tier, "admin": token.admin}

    @app.get("/api/sites", tags=["sites"])
    def sites(token: Auth) -> list[dict[str, Any]]:
        """Sites in the token's jurisdiction with their latest level, warning status, readings
        summary (last 24 h of data) and devices online."""
        levels = views.site_levels()
        states = {str(s["site"]): s for s in views.states() if not s.get("exercise")}
        t = now()
        out = []
        for code, card in registry.sites.items():
            if not token.covers(card.admin):
                continue
            st = states.get(code, {})
            lvl = max(int(levels.get(code, 0)), int(st.get("level", 0)))
            summary = views.site_summary(code, t)
            out.append({
                **views.card(code), "level": lvl, "colour": _colour(lvl), "status": st.get("status", "normal"),
                "warning_id": st.get("warning_id") if int(st.get("announced", 0)) > 0 else None,
                "readings_24h": summary["readings_24h"], "last_t": summary["last_t"],
                "devices": len(card.devices), "devices_online": summary["devices_online"],
            })
        out.sort(key=lambda s: (-s["level"], s["site"]))
        return out

    @app.get("/api/sites/{site}", tags=["sites"])
    def site_detail(site: str, request: Request, token: Auth) -> dict[str, Any]:
        """The site's 防灾明白卡, device health and its current warning (real and exercise)."""
        site_or_404(request, token, site)
        warnings = [w.doc for w in views.warnings() if w.doc["site"] == site]
        levels = views.site_levels()
        return {"card": views.card(site), "level": levels.get(site, 0), **views.site_summary(site, now()), "warnings": warnings}

    @app.get("/api/sites/{site}/series", tags=["sites"])
    def site_series(site: str, request: Request, token: Auth, hours: float = 72.0) -> dict[str, Any]:
        """Each channel's readings over the last ``hours`` before its newest one (for charts)."""
        site_or_404(request, token, site)
        return views.series(site, max(1.0, min(hours, 24 * 90.0)))

    @app.get("/api/warnings", tags=["warnings"])
    def warnings(token: Auth, active: bool = False) -> list[dict[str, Any]]:
        """Warnings in the token's jurisdiction: active first, unacknowledged first, then by
        level. Each: id, site, admin, level, colour, since (raised), status, evidence, forecast."""
        return [w.doc for w in views.warnings() if token.covers(w.admin) and (w.doc["active"] or not active)]

    @app.get("/api/warnings/history", tags=["warnings"])
    def history(token: Auth, limit: int = 200) -> list[dict[str, Any]]:
        """Alert events (raise, upgrade, downgrade, lift, nodata…) from alerts.jsonl, newest first."""
        limit = max(1, min(limit, 5000))
        out = []
        for ev in views.history(limit * 4):
            card = registry.sites.get(str(ev.get("site")))
            if card is not None and token.covers(card.admin):
                out.append({**ev, "admin": card.admin})
                if len(out) >= limit:
                    break
        return out

    def warning_or_404(request: Request, token: Token, warning_id: str) -> WarningView:
        w = views.find_warning(warning_id)
        if w is None:
            audit(request, token, warning_id, "refused", "unknown warning")
            raise HTTPException(404, f"no warning {warning_id!r} (it may belong to a site's earlier warning)")
        require(request, token, w.admin, warning_id)
        return w

    @app.get("/api/warnings/{warning_id}", tags=["warnings"])
    def warning(warning_id: str, request: Request, token: Auth) -> dict[str, Any]:
        return warning_or_404(request, token, warning_id).doc

    @app.get("/api/warnings/{warning_id}/timeline", tags=["warnings"])
    def timeline(warning_id: str, request: Request, token: Auth) -> dict[str, Any]:
        """The engine's history of the warning (raise, escalations, acks…) and every
        notification about it with its delivery state per notifier (sent, pending, dead)."""
        warning_or_404(request, token, warning_id)
        return views.timeline(warning_id)

    # -- actions ---------------------------------------------------------------------------

    @app.post("/api/warnings/{warning_id}/ack", tags=["actions"])
    def ack(warning_id: str, body: AckIn, request: Request, token: Auth) -> JSONResponse:
        """Acknowledge a warning: stops its escalation at the acknowledged level."""
        warning_or_404(request, token, warning_id)
        doc: dict[str, Any] = {"id": warning_id, "by": signed(body.name, token), "note": body.note}
        if body.level is not None:
            doc["level"] = body.level
        return act(request, token, "ack", warning_id, doc)

    @app.post("/api/reports/{task_id}/submit", tags=["actions"])
    def report_submit(task_id: str, body: ReportIn, request: Request, token: Auth) -> JSONResponse:
        """Mark a quick report (速报) as submitted: stops its reminders and escalation."""
        w = views.find_task(task_id)
        if w is None:
            audit(request, token, task_id, "refused", "unknown quick-report task")
            raise HTTPException(404, f"no quick-report task {task_id!r}")
        require(request, token, w.admin, task_id)
        return act(request, token, "report", task_id, {"task_id": task_id, "by": signed(body.name, token), "note": body.note})

    @app.post("/api/sites/{site}/shelve", tags=["actions"])
    def shelve(site: str, body: ShelveIn, request: Request, token: Auth) -> JSONResponse:
        """Shelve a site for maintenance until a time: its level is followed, nothing is
        announced or escalated until then (or until unshelved)."""
        site_or_404(request, token, site)
        until: float | str | None = body.until
        if until is None:
            if body.minutes is None:
                audit(request, token, site, "refused", "shelve without until or minutes")
                raise HTTPException(422, "give until (epoch seconds or RFC 3339) or minutes")
            until = now() + body.minutes * 60.0
        doc = {"site": site, "by": signed(body.name, token), "until": until, "note": body.note}
        if body.device:
            doc["device"] = body.device
        return act(request, token, "shelve", site if not body.device else f"{site}/{body.device}", doc)

    @app.post("/api/sites/{site}/unshelve", tags=["actions"])
    def unshelve(site: str, body: UnshelveIn, request: Request, token: Auth) -> JSONResponse:
        site_or_404(request, token, site)
        doc = {"site": site, "by": signed(body.name, token), "note": body.note}
        if body.device:
            doc["device"] = body.device
        return act(request, token, "unshelve", site if not body.device else f"{site}/{body.device}", doc)

    # -- live updates ----------------------------------------------------------------------

    @app.get("/api/events", tags=["warnings"])
    async def events(request: Request, token: Auth) -> StreamingResponse:
        """Server-sent events: ``update`` with the token's warnings and site levels whenever
        they (or a notification's delivery state) change; a comment line every 15 s."""

        def levels() -> dict[str, int]:
            return {k: v for k, v in views.site_levels().items() if k in registry.sites and token.covers(registry.sites[k].admin)}

        def snapshot(lv: dict[str, int]) -> dict[str, Any]:
            return {"warnings": [w.doc for w in views.warnings() if token.covers(w.admin)], "levels": lv}

        async def stream() -> AsyncIterator[bytes]:
            conn: sqlite3.Connection | None = None
            seen: tuple[int, dict[str, int]] | None = None
            last_text = ""
            last_sent = time.monotonic()
            try:
                while not stop.is_set() and not await request.is_disconnected():
                    if not await asyncio.to_thread(tokens.is_live, token.id):
                        break  # revoked while listening: the stream ends, reconnecting gets 401
                    conn, version = await asyncio.to_thread(views.outbox_version, conn)
                    # Site levels are one small row of the journal; the warnings are re-read only
                    # when the outbox file (states, deliveries) or the levels have changed.
                    lv = await asyncio.to_thread(levels)
                    if seen != (version, lv):
                        seen = (version, lv)
                        # The outbox version rides along so that an open timeline refreshes when a
                        # notification's delivery state changes too.
                        doc = {**await asyncio.to_thread(snapshot, lv), "outbox_version": version}
                        text = json.dumps(doc, ensure_ascii=False, sort_keys=True)
                        if text != last_text:
                            last_text, last_sent = text, time.monotonic()
                            yield f"event: update\ndata: {text}\n\n".encode()
                    if time.monotonic() - last_sent >= EVENTS_PING_S:
                        last_sent = time.monotonic()
                        yield b": ping\n\n"
                    await asyncio.sleep(EVENTS_POLL_S)  # polling SQLite files: there is nothing to wait on
            finally:
                if conn is not None:
                    conn.close()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # -- the console -------------------------------------------------------------------------

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
        self.tokens = TokenStore(self.data_dir / TOKENS_FILE)
        self.requester = MqttRequester(s.mqtt, s.topic_prefix, f"{s.mqtt_client_id}-api", str(s.mqtt_ca_file) if s.mqtt_ca_file else None)
        self.metrics = make_registry(self.data_dir, loaded.registry, main, now)
        self.app = create_api(loaded, self.data_dir, self.requester, self.tokens, self.metrics, now=now, stopping=self.stopping)
        # log_config=None: keep the daemon's logging as it is; access_log off: the audit table
        # records what matters, and request lines would drown the daemon's own log.
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=3)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

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
            log.error("duty-officer API NOT started: cannot listen on %s (%s); set GEOWARN_HTTP to a free host:port", self.bind, exc)
            return False
        sock.listen(128)
        sock.set_inheritable(False)
        self._sock = sock
        self.requester.start()
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="geowarn-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                log.error("duty-officer API did not start on %s", self.bind)
                return False
            time.sleep(0.02)  # uvicorn offers no event for "started"; poll its flag with a deadline
        log.info("duty-officer API and console on http://%s/ (OpenAPI at /docs)", self.bind)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()  # event streams end at their next poll
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
        self.requester.stop()
        self.tokens.close()
