"""Real receivers for the notifier tests: an HTTP server (webhook / SMS gateway), emulators of the
Chinese providers (group robots, cloud SMS) that answer through it, and an SMTP sink.

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
from collections.abc import Callable, Iterator
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

    def __init__(self, hang_limit_s: float = 30.0, responder: "Callable[[Request], tuple[int, Any]] | None" = None) -> None:
        self.requests: list[Request] = []
        #: Answers each request instead of the plan: (status, JSON document), e.g. a provider's
        #: emulator (``provider_receiver``) that checks the request as the provider documents it.
        self.responder = responder
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
                if receiver.responder is not None:
                    status, doc = receiver.responder(req)
                    payload = json.dumps(doc, ensure_ascii=False).encode()
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


# -- the providers of Chinese duty offices: emulators that check what each documents ----------
#
# Each emulator answers an HttpReceiver (``responder``) as its provider does, after checking the
# path, the headers, the body's shape and the signature exactly as the provider's documentation
# describes them (the documents are cited in alerts/notifiers_cn.py). They are written from the
# documents, not from GeoWarn's code, and the two with a published worked example (ACS3, TC3)
# are themselves tested against it. ``accepted`` and ``rejected`` (request, reason) say what
# each made of every request.


def _raw_query(path: str) -> tuple[str, list[tuple[str, str]]]:
    """(path, [(name, value)]) with %-escapes decoded exactly once and "+" left a "+"."""
    from urllib.parse import unquote

    route, _, query = path.partition("?")
    pairs = []
    for part in query.split("&") if query else []:
        k, _, v = part.partition("=")
        pairs.append((unquote(k), unquote(v)))
    return route, pairs


class ProviderEmulator:
    name = "provider"

    def __init__(self, now: Callable[[], float] | None = None) -> None:
        import time as _time

        self.now = now or _time.time
        self.accepted: list[Request] = []
        self.rejected: list[tuple[Request, str]] = []
        self._lock = threading.Lock()

    def __call__(self, req: Request) -> tuple[int, Any]:
        try:
            verdict = self.check(req)
        except _Refuse as refusal:
            with self._lock:
                self.rejected.append((req, refusal.reason))
            return refusal.status, refusal.doc
        with self._lock:
            self.accepted.append(req)
        return verdict

    def check(self, req: Request) -> tuple[int, Any]:
        raise NotImplementedError


class _Refuse(Exception):
    def __init__(self, reason: str, status: int, doc: Any) -> None:
        super().__init__(reason)
        self.reason, self.status, self.doc = reason, status, doc


def _json_body(req: Request, refuse: Callable[[str], _Refuse]) -> dict[str, Any]:
    if not req.headers.get("content-type", "").startswith("application/json"):
        raise refuse(f"content-type {req.headers.get('content-type')!r} is not JSON")
    try:
        doc = json.loads(req.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise refuse(f"body is not UTF-8 JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise refuse("body is not a JSON object")
    return doc


class WeComEmulator(ProviderEmulator):
    """群机器人: POST /cgi-bin/webhook/send?key=KEY, {"msgtype": "markdown"|"text", …}."""

    name = "wecom"

    def __init__(self, key: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.key = key

    def check(self, req: Request) -> tuple[int, Any]:
        route, q = _raw_query(req.path)
        if route != "/cgi-bin/webhook/send":
            raise _Refuse(f"path {route}", 404, {"errcode": 404, "errmsg": "not found"})
        if dict(q).get("key") != self.key:
            raise _Refuse("wrong key", 200, {"errcode": 93000, "errmsg": "invalid webhook url"})
        doc = _json_body(req, lambda why: _Refuse(why, 200, {"errcode": 40008, "errmsg": why}))
        kind = doc.get("msgtype")
        content = (doc.get(kind) or {}).get("content") if kind in ("markdown", "text") else None
        if not isinstance(content, str) or not content:
            raise _Refuse("no content", 200, {"errcode": 44004, "errmsg": "empty content"})
        limit = 4096 if kind == "markdown" else 2048
        if len(content.encode("utf-8")) > limit:
            raise _Refuse("content too long", 200, {"errcode": 40058, "errmsg": "content exceed max length"})
        return 200, {"errcode": 0, "errmsg": "ok"}


class DingTalkEmulator(ProviderEmulator):
    """加签 robot: POST /robot/send?access_token=T&timestamp=MS&sign=urlEncode(base64(HmacSHA256(
    key=secret, msg=timestamp+"\\n"+secret))), timestamp within one hour."""

    name = "dingtalk"

    def __init__(self, access_token: str, secret: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.access_token, self.secret = access_token, secret

    def check(self, req: Request) -> tuple[int, Any]:
        import base64
        import hashlib
        import hmac as _hmac

        route, pairs = _raw_query(req.path)
        q = dict(pairs)
        if route != "/robot/send":
            raise _Refuse(f"path {route}", 404, {"errcode": 404, "errmsg": "not found"})
        if q.get("access_token") != self.access_token:
            raise _Refuse("wrong access_token", 200, {"errcode": 300001, "errmsg": "token is not exist"})
        ts, sign = q.get("timestamp", ""), q.get("sign", "")
        if not ts.isdigit() or abs(self.now() * 1000 - int(ts)) > 3600 * 1000:
            raise _Refuse("timestamp missing or more than an hour off", 200, {"errcode": 310000, "errmsg": "invalid timestamp"})
        # The document's Python example, verbatim in substance.
        string_to_sign = "{}\n{}".format(ts, self.secret)
        expected = base64.b64encode(_hmac.new(self.secret.encode("utf-8"), string_to_sign.encode("utf-8"), digestmod=hashlib.sha256).digest()).decode()
        if not _hmac.compare_digest(sign, expected):
            raise _Refuse("sign not match", 200, {"errcode": 310000, "errmsg": "sign not match"})
        doc = _json_body(req, lambda why: _Refuse(why, 200, {"errcode": 40035, "errmsg": why}))
        md = doc.get("markdown") if doc.get("msgtype") == "markdown" else None
        if not (isinstance(md, dict) and isinstance(md.get("title"), str) and md["title"] and isinstance(md.get("text"), str) and md["text"]):
            raise _Refuse("not a markdown message with title and text", 200, {"errcode": 40035, "errmsg": "缺少参数 markdown"})
        return 200, {"errcode": 0, "errmsg": "ok"}


class FeishuEmulator(ProviderEmulator):
    """签名校验 robot: POST /open-apis/bot/v2/hook/TOKEN, {"timestamp": "S", "sign":
    base64(HmacSHA256(key=timestamp+"\\n"+secret, msg="")), "msg_type": "text", …}."""

    name = "feishu"

    def __init__(self, hook_token: str, secret: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.hook_token, self.secret = hook_token, secret

    def check(self, req: Request) -> tuple[int, Any]:
        import base64
        import hashlib
        import hmac as _hmac

        route, _ = _raw_query(req.path)
        if route != f"/open-apis/bot/v2/hook/{self.hook_token}":
            raise _Refuse(f"path {route}", 200, {"code": 19001, "msg": "param invalid: incoming webhook access token invalid", "data": {}})
        doc = _json_body(req, lambda why: _Refuse(why, 400, {"code": 9499, "msg": why, "data": {}}))
        ts, sign = doc.get("timestamp"), doc.get("sign")
        fail = {"code": 19021, "msg": "sign match fail or timestamp is not within one hour from current time", "data": {}}
        if not (isinstance(ts, str) and ts.isdigit()) or abs(self.now() - int(ts)) > 3600:
            raise _Refuse("timestamp not a string of seconds within an hour", 200, fail)
        key = f"{ts}\n{self.secret}".encode("utf-8")
        expected = base64.b64encode(_hmac.new(key, b"", hashlib.sha256).digest()).decode()
        if not (isinstance(sign, str) and _hmac.compare_digest(sign, expected)):
            raise _Refuse("sign match fail", 200, fail)
        content = doc.get("content")
        if doc.get("msg_type") != "text" or not (isinstance(content, dict) and isinstance(content.get("text"), str) and content["text"]):
            raise _Refuse("not a text message", 200, {"code": 9499, "msg": "Bad Request", "data": {}})
        return 200, {"code": 0, "msg": "success", "data": {}}


def acs3_expected(secret: str, method: str, route: str, query: list[tuple[str, str]], headers: dict[str, str], signed: list[str], body: bytes) -> str:
    """The ACS3-HMAC-SHA256 signature as Alibaba Cloud's "V3 request syntax and signature"
    describes it, from the request as received."""
    import hashlib
    import hmac as _hmac
    from urllib.parse import quote

    def enc(s: str) -> str:  # RFC 3986: unreserved characters stay, the rest %XX of UTF-8
        return quote(s, safe="-_.~")

    canonical_query = "&".join(f"{k}={v}" for k, v in sorted((enc(k), enc(v)) for k, v in query))
    canonical_headers = "".join(f"{h}:{headers[h].strip()}\n" for h in signed)
    canonical = f"{method}\n{route}\n{canonical_query}\n{canonical_headers}\n{';'.join(signed)}\n{hashlib.sha256(body).hexdigest()}"
    string_to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return _hmac.new(secret.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


class AliyunSmsEmulator(ProviderEmulator):
    """Dysmsapi 2017-05-25 SendSms, RPC style, parameters in the query, signature V3."""

    name = "aliyun_sms"

    def __init__(self, access_key_id: str, access_key_secret: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.key_id, self.secret = access_key_id, access_key_secret
        self.nonces: set[str] = set()

    def check(self, req: Request) -> tuple[int, Any]:
        import hashlib
        import hmac as _hmac
        import re as _re
        from datetime import datetime, timezone

        rid = {"RequestId": "F655A8D5-B967-440B-8683-DAD6FF8DE990"}
        route, query = _raw_query(req.path)
        h = req.headers
        if route != "/":
            raise _Refuse(f"path {route}", 404, {"Code": "InvalidAction.NotFound", "Message": route, **rid})
        if h.get("x-acs-action") != "SendSms" or h.get("x-acs-version") != "2017-05-25":
            raise _Refuse("action or version", 400, {"Code": "InvalidAction.NotFound", "Message": "action/version", **rid})
        m = _re.fullmatch(r"ACS3-HMAC-SHA256 Credential=([^,]+),SignedHeaders=([^,]+),Signature=([0-9a-f]{64})", h.get("authorization", ""))
        if not m:
            raise _Refuse("Authorization malformed", 400, {"Code": "IncompleteSignature", "Message": h.get("authorization", ""), **rid})
        key_id, signed, signature = m.group(1), m.group(2).split(";"), m.group(3)
        if key_id != self.key_id:
            raise _Refuse("unknown AccessKeyId", 404, {"Code": "InvalidAccessKeyId.NotFound", "Message": "Specified access key is not found.", **rid})
        must = sorted(k for k in h if k.startswith("x-acs-") or k in ("host", "content-type"))
        if signed != must:
            raise _Refuse(f"SignedHeaders {signed} != the headers to sign {must}", 400, {"Code": "IncompleteSignature", "Message": "signed headers", **rid})
        if h.get("x-acs-content-sha256") != hashlib.sha256(req.body).hexdigest():
            raise _Refuse("x-acs-content-sha256", 400, {"Code": "IncompleteSignature", "Message": "content sha256", **rid})
        try:
            date = datetime.strptime(h.get("x-acs-date", ""), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            raise _Refuse("x-acs-date", 400, {"Code": "InvalidTimeStamp.Format", "Message": "date", **rid}) from None
        if abs(self.now() - date) > 15 * 60:
            raise _Refuse("x-acs-date more than 15 min off", 400, {"Code": "InvalidTimeStamp.Expired", "Message": "expired", **rid})
        nonce = h.get("x-acs-signature-nonce", "")
        if not nonce or nonce in self.nonces:
            raise _Refuse("nonce missing or used", 400, {"Code": "SignatureNonceUsed", "Message": "nonce", **rid})
        expected = acs3_expected(self.secret, "POST", "/", query, h, signed, req.body)
        if not _hmac.compare_digest(signature, expected):
            raise _Refuse("signature", 400, {"Code": "SignatureDoesNotMatch", "Message": "Specified signature does not match our calculation.", **rid})
        self.nonces.add(nonce)
        q = dict(query)
        if not all(q.get(k) for k in ("PhoneNumbers", "SignName", "TemplateCode")):
            raise _Refuse("PhoneNumbers, SignName and TemplateCode are required", 400, {"Code": "MissingParameter", "Message": "missing", **rid})
        try:
            params = json.loads(q.get("TemplateParam", "{}"))
        except ValueError:
            raise _Refuse("TemplateParam is not JSON", 200, {"Code": "isv.INVALID_JSON_PARAM", "Message": "JSON参数不合法", **rid}) from None
        if not (isinstance(params, dict) and all(isinstance(v, str) for v in params.values())):
            raise _Refuse("TemplateParam not an object of strings", 200, {"Code": "isv.TEMPLATE_PARAMS_ILLEGAL", "Message": "模板变量", **rid})
        return 200, {"Code": "OK", "Message": "OK", "BizId": "9006197469364984400^0", **rid}


def tc3_expected(secret_key: str, service: str, headers: dict[str, str], signed: list[str], payload: bytes, timestamp: int) -> str:
    """The TC3-HMAC-SHA256 signature of a POST / as Tencent Cloud's "Signature v3" describes it."""
    import hashlib
    import hmac as _hmac
    from datetime import datetime, timezone

    date = datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d")
    canonical_headers = "".join(f"{k}:{headers[k].strip().lower()}\n" for k in signed)
    canonical = f"POST\n/\n\n{canonical_headers}\n{';'.join(signed)}\n{hashlib.sha256(payload).hexdigest()}"
    string_to_sign = f"TC3-HMAC-SHA256\n{timestamp}\n{date}/{service}/tc3_request\n{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"

    def sign(key: bytes, msg: str) -> bytes:
        return _hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()

    secret_signing = sign(sign(sign(("TC3" + secret_key).encode("utf-8"), date), service), "tc3_request")
    return _hmac.new(secret_signing, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


class TencentSmsEmulator(ProviderEmulator):
    """SendSms 2021-01-11 on sms.tencentcloudapi.com, signature v3; ``refuse_phones`` answer a
    per-phone failure (``FailedOperation.PhoneNumberInBlacklist``)."""

    name = "tencent_sms"

    def __init__(self, secret_id: str, secret_key: str, app_id: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.secret_id, self.secret_key, self.app_id = secret_id, secret_key, app_id
        self.refuse_phones: set[str] = set()

    def check(self, req: Request) -> tuple[int, Any]:
        import hmac as _hmac
        import re as _re
        from datetime import datetime, timezone

        def error(code: str, message: str) -> dict[str, Any]:
            return {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": "ed93f3cb-f35e-473f-b9f3-0d451b8b79c6"}}

        h = req.headers
        if req.path != "/":
            raise _Refuse(f"path {req.path}", 404, error("InvalidAction", req.path))
        if h.get("x-tc-action") != "SendSms" or h.get("x-tc-version") != "2021-01-11" or not h.get("x-tc-region"):
            raise _Refuse("action, version or region", 200, error("InvalidAction", "action"))
        if h.get("content-type") != "application/json; charset=utf-8":
            raise _Refuse(f"content-type {h.get('content-type')!r}", 200, error("AuthFailure.SignatureFailure", "content-type"))
        ts = h.get("x-tc-timestamp", "")
        if not ts.isdigit() or abs(self.now() - int(ts)) > 300:
            raise _Refuse("timestamp more than 5 min off", 200, error("AuthFailure.SignatureExpire", "expired"))
        m = _re.fullmatch(r"TC3-HMAC-SHA256 Credential=([^/]+)/(\d{4}-\d{2}-\d{2})/sms/tc3_request, SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})", h.get("authorization", ""))
        if not m:
            raise _Refuse("Authorization malformed", 200, error("AuthFailure.InvalidAuthorization", h.get("authorization", "")))
        secret_id, date, signed, signature = m.group(1), m.group(2), m.group(3).split(";"), m.group(4)
        if secret_id != self.secret_id:
            raise _Refuse("unknown SecretId", 200, error("AuthFailure.SecretIdNotFound", "secret id"))
        if date != datetime.fromtimestamp(int(ts), timezone.utc).strftime("%Y-%m-%d") or not {"content-type", "host"} <= set(signed):
            raise _Refuse("credential date or signed headers", 200, error("AuthFailure.InvalidAuthorization", "scope"))
        if not _hmac.compare_digest(signature, tc3_expected(self.secret_key, "sms", h, signed, req.body, int(ts))):
            raise _Refuse("signature", 200, error("AuthFailure.SignatureFailure", "The provided credentials could not be validated."))
        doc = json.loads(req.body)
        phones = doc.get("PhoneNumberSet")
        if doc.get("SmsSdkAppId") != self.app_id:
            raise _Refuse("SmsSdkAppId", 200, error("InvalidParameterValue.SdkAppIdNotExist", "app id"))
        if not (isinstance(phones, list) and phones and all(isinstance(p, str) and _re.fullmatch(r"\+\d{6,15}", p) for p in phones)):
            raise _Refuse("PhoneNumberSet not E.164", 200, error("InvalidParameterValue.IncorrectPhoneNumber", str(phones)))
        if not (doc.get("SignName") and doc.get("TemplateId")):
            raise _Refuse("SignName and TemplateId", 200, error("MissingParameter", "SignName/TemplateId"))
        params = doc.get("TemplateParamSet", [])
        if not (isinstance(params, list) and all(isinstance(p, str) for p in params)):
            raise _Refuse("TemplateParamSet", 200, error("InvalidParameterValue.TemplateParameterFormatError", "params"))
        statuses = [
            {"SerialNo": f"2645:{i}", "PhoneNumber": p, "Fee": 1, "SessionContext": "", "IsoCode": "CN",
             **({"Code": "FailedOperation.PhoneNumberInBlacklist", "Message": "blacklist"} if p in self.refuse_phones else {"Code": "Ok", "Message": "send success"})}
            for i, p in enumerate(phones)
        ]
        return 200, {"Response": {"SendStatusSet": statuses, "RequestId": "a0aabda6-cf91-4f3e-a81f-9198114a2279"}}


@pytest.fixture
def provider_receiver() -> Iterator[Callable[[ProviderEmulator], HttpReceiver]]:
    """A factory: an HttpReceiver answering as the given emulator; all stopped at the end."""
    started: list[HttpReceiver] = []

    def make(emulator: ProviderEmulator) -> HttpReceiver:
        rx = HttpReceiver(responder=emulator).start()
        started.append(rx)
        return rx

    try:
        yield make
    finally:
        for rx in started:
            rx.stop()
