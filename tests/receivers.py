"""Real receivers for the notifier tests: an HTTP server (webhook / SMS gateway) and an SMTP sink.

``HttpReceiver`` is a ``ThreadingHTTPServer`` on 127.0.0.1, port 0, in a thread. It records
every request (method, path, headers, body) and answers as programmed: a queue of one-off
answers (``fail_next``), a standing answer (``answer``), or hanging until ``release()``
(``hang``). ``wait_for(n)`` waits on a condition, not a sleep.

``SmtpSink`` is aiosmtpd's ``Controller`` on 127.0.0.1 and a free port, recording each
message parsed with the modern email policy (so headers come back decoded), optionally with
a login (AUTH without TLS, loopback only), STARTTLS, and recipients it refuses with 550.

Fixtures ``http_receiver`` and ``smtp_sink`` are defined here; test modules import them.
"""

from __future__ import annotations

import email
import email.policy
import json
import ssl
import subprocess
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from services import free_port

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    HANG = -1

    def __init__(self, hang_limit_s: float = 30.0) -> None:
        self.requests: list[Request] = []
        self._plan: deque[int] = deque()
        self._answer = 200
        self._cond = threading.Condition()
        self._release = threading.Event()
        self._release.set()
        self.hang_limit_s = hang_limit_s  # a hung handler gives up eventually, so stop() never blocks
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                req = Request("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                status = receiver._record(req)
                if status == HttpReceiver.HANG:
                    receiver._release.wait(receiver.hang_limit_s)
                    status = 200
                payload = b'{"ok": true}' if status < 300 else b'{"error": "programmed failure"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # keep pytest output quiet
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="http-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def start(self) -> "HttpReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    # -- programming ------------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 500) -> None:
        """The next ``n`` requests get ``status``; then the standing answer again."""
        with self._cond:
            self._plan.extend([status] * n)

    def plan(self, *statuses: int) -> None:
        """The next requests get these statuses, in order; then the standing answer again."""
        with self._cond:
            self._plan.extend(statuses)

    def answer(self, status: int) -> None:
        """The standing answer from now on."""
        with self._cond:
            self._answer = status

    def hang(self) -> None:
        """Requests from now on block until ``release()`` (then answer 200)."""
        self._release.clear()
        self.answer(self.HANG)

    def release(self) -> None:
        self.answer(200)
        self._release.set()

    def _record(self, req: Request) -> int:
        with self._cond:
            self.requests.append(req)
            status = self._plan.popleft() if self._plan else self._answer
            self._cond.notify_all()
            return status

    # -- reading ----------------------------------------------------------------------------
    def wait_for(self, n: int, timeout: float = 10.0) -> list[Request]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"{len(self.requests)} of {n} requests reached {self.url} within {timeout} s")
            return list(self.requests)

    def ids(self) -> list[str]:
        with self._cond:
            return [r.headers["x-geowarn-id"] for r in self.requests]


@dataclass(frozen=True)
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes


class _SmtpHandler:
    def __init__(self, sink: "SmtpSink") -> None:
        self.sink = sink

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if address in self.sink.refuse:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        with self.sink._cond:
            self.sink.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), msg, raw))
            self.sink.authenticated.append(session.authenticated)
            self.sink._cond.notify_all()
        return "250 Message accepted for delivery"


class SmtpSink:
    def __init__(self, *, users: dict[str, str] | None = None, tls_context: ssl.SSLContext | None = None) -> None:
        self.mails: list[Mail] = []
        self.authenticated: list[bool] = []
        self.refuse: set[str] = set()
        self.users = users or {}
        self._cond = threading.Condition()
        self.port = free_port()
        kwargs: dict[str, Any] = {}
        if self.users:
            kwargs.update(authenticator=self._authenticate, auth_require_tls=tls_context is not None, auth_required=True)
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=True)
        self._controller = Controller(_SmtpHandler(self), hostname=HOST, port=self.port, **kwargs)

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            if self.users.get(auth_data.login.decode()) == auth_data.password.decode():
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def url(self, scheme: str = "smtp", userinfo: str = "", query: str = "") -> str:
        return f"{scheme}://{userinfo + '@' if userinfo else ''}{HOST}:{self.port}{'?' + query if query else ''}"

    def start(self) -> "SmtpSink":
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Mail]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.mails) >= n, timeout):
                raise TimeoutError(f"{len(self.mails)} of {n} mails reached the SMTP sink on port {self.port} within {timeout} s")
            return list(self.mails)


def make_cert(d: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI): (cert.pem, key.pem)."""
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.pem",
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        cwd=d, check=True, capture_output=True,
    )
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    rx = HttpReceiver().start()
    try:
        yield rx
    finally:
        rx.stop()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    try:
        yield sink
    finally:
        sink.stop()
