"""The channels Chinese duty offices use: WeCom (企业微信), DingTalk (钉钉) and Feishu/Lark (飞书)
group robots, and Aliyun (阿里云) and Tencent Cloud (腾讯云) SMS, each speaking its provider's
documented request format and signature.

This module owns those five notifiers, their signing functions (pure, so tests check them
against the providers' published examples) and how a roster entry becomes one
(``build_provider_notifier``, called by ``alerts.notifiers.build_notifiers``). Retries,
timeouts and counting stay the dispatcher's, as for every notifier.

What each one sends, and the documentation followed:

- **WeCom group robot** — ``POST {url}?key={token}``, JSON ``{"msgtype": "markdown",
  "markdown": {"content": …}}`` (content at most 4096 bytes of UTF-8); success is
  ``{"errcode": 0}``. No signature: the key in the URL is the credential, so it is a secret.
  群机器人配置说明, https://developer.work.weixin.qq.com/document/path/91770
  (work.weixin.qq.com/api/doc/90000/90136/91770).
- **DingTalk signed robot** — ``POST {url}?access_token={token}&timestamp={ms}&sign={sign}``,
  ``sign = urlEncode(base64(HmacSHA256(key=secret, msg=timestamp + "\\n" + secret)))``, the
  timestamp in milliseconds within an hour of DingTalk's clock; JSON ``{"msgtype": "markdown",
  "markdown": {"title": …, "text": …}}``; success is ``{"errcode": 0}``. 自定义机器人安全设置 — 加签
  (its Java and Python examples), https://open.dingtalk.com/document/robots/customize-robot-security-settings,
  read as mirrored at https://apifox.com/apidoc/docs-site/467052/doc-3550006.
- **Feishu/Lark group robot** — ``POST {url}/{token}``, JSON ``{"timestamp": "<seconds>",
  "sign": …, "msg_type": "text", "content": {"text": …}}`` with ``sign =
  base64(HmacSHA256(key=timestamp + "\\n" + secret, msg=""))`` — the string to sign is the
  *key* and the message is empty, unlike DingTalk (the official SignDemo does
  ``mac.init(stringToSign)``, ``doFinal(new byte[]{})``); success is ``{"code": 0}``, a bad
  signature ``{"code": 19021}``. 自定义机器人使用指南 — 签名校验,
  https://open.feishu.cn/document/client-docs/bot-v3/add-custom-bot (its SignDemo, as quoted in
  github.com/electricbubble/feishu-bot-api ``api.go`` and the open-lark crate). Lark: the same API on
  ``https://open.larksuite.com/open-apis/bot/v2/hook`` (set ``url``).
- **Aliyun SMS** — Dysmsapi 2017-05-25 ``SendSms``, an RPC-style API: ``POST
  {url}/?PhoneNumbers=…&SignName=…&TemplateCode=…&TemplateParam=<JSON>`` with an empty body,
  signed with **signature V3, ACS3-HMAC-SHA256** (Alibaba Cloud's current method; its guide asks
  V2/HMAC-SHA1 users to switch): headers ``host``, ``x-acs-action: SendSms``, ``x-acs-version:
  2017-05-25``, ``x-acs-date`` (UTC, ``yyyy-MM-ddTHH:mm:ssZ``), ``x-acs-signature-nonce``,
  ``x-acs-content-sha256`` (hex SHA-256 of the body); ``CanonicalRequest = method \\n "/" \\n
  sorted RFC 3986-encoded query \\n "name:value\\n"… \\n signed header names joined by ";" \\n
  hashed body``, ``StringToSign = "ACS3-HMAC-SHA256\\n" + hex(SHA256(CanonicalRequest))``,
  ``Signature = hex(HMAC-SHA256(AccessKeySecret, StringToSign))``, ``Authorization:
  ACS3-HMAC-SHA256 Credential=<AccessKeyId>,SignedHeaders=…,Signature=…``; success is
  ``{"Code": "OK"}``. V3版本请求体&签名机制 / "Request syntax and signature method V3",
  https://help.aliyun.com/zh/sdk/product-overview/v3-request-structure-and-signature, and SendSms,
  https://help.aliyun.com/document_detail/55284.html. The guide's worked example (RunInstances,
  ``YourAccessKeySecret``, nonce ``3156853299f313e23d1673dc12e1703d`` → ``06563a9e…3283c0``) is a
  test of ``acs3_signature``.
- **Tencent Cloud SMS** — ``SendSms`` 2021-01-11 on ``sms.tencentcloudapi.com``: ``POST /``,
  JSON ``{"PhoneNumberSet": ["+86…"], "SmsSdkAppId", "SignName", "TemplateId",
  "TemplateParamSet": [...]}``, headers ``X-TC-Action: SendSms``, ``X-TC-Version: 2021-01-11``,
  ``X-TC-Timestamp``, ``X-TC-Region`` and ``Authorization: TC3-HMAC-SHA256
  Credential=<SecretId>/<UTC date>/sms/tc3_request, SignedHeaders=content-type;host,
  Signature=<hex>`` (signature method v3: canonical request over content-type and host and the
  body's SHA-256, a key derived by HMAC-SHA256 from ``"TC3" + SecretKey`` through date, service and
  ``tc3_request``); success is a ``SendStatusSet`` whose every ``Code`` is ``"Ok"``, failure a
  ``Response.Error``. "Signature v3" (the same page in every product's API docs, e.g.
  https://www.tencentcloud.com/document/product/1026/31038), SMS common parameters,
  https://www.tencentcloud.com/document/product/382/40466, SendSms,
  https://www.tencentcloud.com/document/api/382/40536, and Tencent's own demo,
  github.com/TencentCloud/signature-process-demo ``sms/signature-v3/python/demo.py``. The
  guide's worked example (DescribeInstances at 1551113065 → ``72e494ea…525168``) is a test of
  ``tc3_signature``.

Credentials come from the environment or a file (``env:NAME`` / ``file:/path`` in the roster,
``config.roster.secret_value``), read once when the notifier is built. Timestamps are the wall
clock's (``now``), whatever clock the chain runs on: a provider refuses a signature more than a
few minutes off its own time.

Errors: a provider refusing the message itself (HTTP 4xx; a code that names a bad parameter,
phone or template) is permanent; refused credentials or signatures are not — the message is
fine and goes out once the secret is fixed, while the dispatcher alarms the operators, as the
email notifier does for a refused login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx

from geowarn.alerts.errors import NotifierError
from geowarn.config.roster import Notify, secret_value
from geowarn.core.levels import LEVELS
from geowarn.core.timefmt import rfc3339

if TYPE_CHECKING:
    from geowarn.alerts.notifiers import Outgoing

__all__ = [
    "ALIYUN_SMS_URL",
    "AliyunSmsNotifier",
    "DINGTALK_URL",
    "DingTalkRobot",
    "FEISHU_URL",
    "FeishuRobot",
    "TENCENT_SMS_URL",
    "TencentSmsNotifier",
    "WECOM_URL",
    "WeComRobot",
    "acs3_authorization",
    "acs3_canonical_request",
    "acs3_signature",
    "build_provider_notifier",
    "dingtalk_sign",
    "feishu_sign",
    "rfc3986",
    "tc3_authorization",
    "tc3_signature",
    "template_values",
]

#: The providers' production endpoints; a roster ``url`` replaces them (a proxy, Lark, a test).
WECOM_URL = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
DINGTALK_URL = "https://oapi.dingtalk.com/robot/send"
FEISHU_URL = "https://open.feishu.cn/open-apis/bot/v2/hook"
ALIYUN_SMS_URL = "https://dysmsapi.aliyuncs.com"
TENCENT_SMS_URL = "https://sms.tencentcloudapi.com"

ALIYUN_SMS_VERSION = "2017-05-25"
TENCENT_SMS_VERSION = "2021-01-11"
TENCENT_DEFAULT_REGION = "ap-guangzhou"
ACS3 = "ACS3-HMAC-SHA256"
TC3 = "TC3-HMAC-SHA256"
TC3_CONTENT_TYPE = "application/json; charset=utf-8"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"

WECOM_MARKDOWN_MAX_BYTES = 4096  # documented
# Not documented as a number for these two; Feishu bounds the whole request at 20 KB. A warning
# is far shorter, so this only keeps a runaway text from being refused outright.
ROBOT_TEXT_MAX_BYTES = 18_000
ALIYUN_MAX_PHONES = 1000  # per SendSms request, documented
TENCENT_MAX_PHONES = 200  # per SendSms request, documented

_COLOUR_ZH = {0: "", 1: "蓝色", 2: "黄色", 3: "橙色", 4: "红色"}
EXERCISE_MARK = "【演练】"

# Provider codes that name the message itself (a bad phone, parameter or template): permanent.
_ALIYUN_MESSAGE_CODES = frozenset(
    {
        "isv.INVALID_PARAMETERS", "isv.MOBILE_NUMBER_ILLEGAL", "isv.TEMPLATE_MISSING_PARAMETERS",
        "isv.TEMPLATE_PARAMS_ILLEGAL", "isv.INVALID_JSON_PARAM", "isv.PARAM_LENGTH_LIMIT", "isv.MOBILE_COUNT_OVER_LIMIT",
    }
)
_TENCENT_MESSAGE_PREFIXES = ("InvalidParameter", "MissingParameter", "UnsupportedOperation")


# -- signatures -----------------------------------------------------------------------------


def _hmac256(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def dingtalk_sign(secret: str, timestamp_ms: str) -> str:
    """DingTalk's ``sign`` before URL-encoding: base64(HMAC-SHA256(key=secret, msg="<ms>\\n<secret>"))."""
    return base64.b64encode(_hmac256(secret.encode(), f"{timestamp_ms}\n{secret}".encode())).decode("ascii")


def feishu_sign(secret: str, timestamp_s: str) -> str:
    """Feishu's ``sign``: base64(HMAC-SHA256(key="<seconds>\\n<secret>", msg=b""))."""
    return base64.b64encode(_hmac256(f"{timestamp_s}\n{secret}".encode(), b"")).decode("ascii")


def rfc3986(s: str) -> str:
    """Percent-encoding as Alibaba Cloud's V3 signature asks: all but ``A-Za-z0-9-_.~``, UTF-8
    (space is ``%20``, ``*`` is ``%2A``, ``~`` stays)."""
    return quote(s, safe="-_.~")


def acs3_canonical_query(query: Mapping[str, str]) -> str:
    return "&".join(f"{rfc3986(k)}={rfc3986(v)}" for k, v in sorted(query.items()))


def acs3_canonical_request(method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes) -> tuple[str, str]:
    """(CanonicalRequest, SignedHeaders) of an ACS3 request: every ``x-acs-*``, ``host`` and
    ``content-type`` header is signed, names lower-cased and sorted, values trimmed."""
    signed = {k.lower(): v.strip() for k, v in headers.items() if k.lower().startswith("x-acs-") or k.lower() in ("host", "content-type")}
    names = sorted(signed)
    canonical_headers = "".join(f"{n}:{signed[n]}\n" for n in names)
    signed_headers = ";".join(names)
    canonical = "\n".join(
        [method.upper(), path, acs3_canonical_query(query), canonical_headers, signed_headers, hashlib.sha256(body).hexdigest()]
    )
    return canonical, signed_headers


def acs3_signature(secret: str, canonical_request: str) -> str:
    string_to_sign = f"{ACS3}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
    return hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def acs3_authorization(key_id: str, secret: str, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes) -> str:
    canonical, signed_headers = acs3_canonical_request(method, path, query, headers, body)
    return f"{ACS3} Credential={key_id},SignedHeaders={signed_headers},Signature={acs3_signature(secret, canonical)}"


def tc3_signature(secret_key: str, date: str, service: str, string_to_sign: str) -> str:
    k_date = _hmac256(f"TC3{secret_key}".encode(), date.encode())
    k_service = _hmac256(k_date, service.encode())
    k_signing = _hmac256(k_service, b"tc3_request")
    return hmac.new(k_signing, string_to_sign.encode(), hashlib.sha256).hexdigest()


def tc3_authorization(secret_id: str, secret_key: str, service: str, host: str, timestamp: int, payload: bytes, content_type: str = TC3_CONTENT_TYPE) -> str:
    """The ``Authorization`` header of a TencentCloud API 3.0 POST (signature v3), signing
    ``content-type`` and ``host``."""
    date = datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d")
    canonical = "\n".join(
        ["POST", "/", "", f"content-type:{content_type.lower().strip()}\nhost:{host.lower().strip()}\n", "content-type;host", hashlib.sha256(payload).hexdigest()]
    )
    scope = f"{date}/{service}/tc3_request"
    string_to_sign = f"{TC3}\n{timestamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = tc3_signature(secret_key, date, service, string_to_sign)
    return f"{TC3} Credential={secret_id}/{scope}, SignedHeaders=content-type;host, Signature={signature}"


# -- what a message says --------------------------------------------------------------------


def _message(msg: "Outgoing") -> Mapping[str, Any]:
    """The structured words alerts/texts.py rendered for the unit ({} for a message queued
    without them)."""
    message = msg.body.get("message")
    return message if isinstance(message, Mapping) else {}


def template_values(msg: "Outgoing", text_limit: int = 70) -> dict[str, str]:
    """The values an SMS template parameter may name (``config.roster.SMS_TEMPLATE_FIELDS``):
    the unit's own words (names, the card, the deadline, times in its zone with the zone shown)
    where the message has them, else what the message itself says (times in UTC)."""
    info = LEVELS.get(msg.level)
    message = _message(msg)
    fields = message.get("fields")
    words: Mapping[str, Any] = fields if isinstance(fields, Mapping) else {}
    short = message.get("sms")
    text = short.strip() if isinstance(short, str) and short.strip() else f"{msg.subject} {msg.text}".strip()

    def word(key: str, default: str = "") -> str:
        v = words.get(key)
        return v if isinstance(v, str) else default

    return {
        "site_name": word("site_name", msg.site or ""),
        "unit_name": word("unit_name", msg.admin),
        "grade": word("grade"),
        "level_name": word("level_name"),
        "action": word("action"),
        "action_short": word("action_short"),
        "deadline": word("deadline"),
        "time_utc": rfc3339(msg.t),
        "people": word("people"),
        "route": word("route"),
        "shelter": word("shelter"),
        "responsible": word("responsible"),
        "phone": word("phone"),
        "site": msg.site or "",
        "level": str(msg.level),
        "colour": info.colour if info else "",
        "colour_zh": _COLOUR_ZH.get(msg.level, ""),
        "level_zh": info.zh if info else "",
        "level_en": info.en if info else "",
        "kind": msg.kind,
        "admin": msg.admin,
        "time": word("time", rfc3339(msg.t)),
        "warning_id": str(msg.body.get("warning_id") or ""),
        "id": msg.id,
        "subject": msg.subject,
        "text": text if len(text) <= text_limit else text[: text_limit - 1] + "…",
        "exercise": EXERCISE_MARK if msg.exercise else "",
    }


def _fill_params(template: Sequence[str] | Mapping[str, str], msg: "Outgoing") -> Any:
    """The template's parameters for ``msg``. A drill whose parameters do not show it (neither
    ``{exercise}`` nor ``{subject}``) gets the exercise mark before its first parameter, so no
    SMS of an exercise can read as a real warning."""
    values = template_values(msg)
    raw = list(template.values()) if isinstance(template, Mapping) else list(template)
    mark = msg.exercise and not any("{exercise}" in t or "{subject}" in t for t in raw)
    filled = [t.format_map(values) for t in raw]
    if mark and filled:
        filled[0] = EXERCISE_MARK + filled[0]
    if isinstance(template, Mapping):
        return dict(zip(template.keys(), filled))
    return filled


def _clip_utf8(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - len("…".encode())].decode("utf-8", "ignore") + "…"


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _robot_markdown(msg: "Outgoing") -> str:
    """Markdown both WeCom and DingTalk render: the subject in bold, then the headline, each
    fact of the 防灾明白卡 on its own paragraph with its label in bold, and the deadline in bold
    (paragraphs, not lists or tables: WeCom's markdown has neither). A unit's own text
    template, or a message without structured words, is sent as its text."""
    message = _message(msg)
    facts = message.get("facts")
    if message.get("custom_text") or not isinstance(facts, list) or not facts:
        return f"**{msg.subject}**\n\n{msg.text}"
    zh = message.get("lang") == "zh"
    blocks = [f"**{msg.subject}**"]
    if msg.exercise:
        blocks.append(f"**{EXERCISE_MARK}这是一次演练，不是真实预警。**" if zh else "**[EXERCISE 演练] This is an exercise, not a real warning.**")
    blocks.append(str(message.get("headline", "")))
    blocks += [f"**{k}**{'：' if zh else ': '}{v}" for k, v in facts]
    if message.get("deadline_line"):
        blocks.append(f"**{message['deadline_line']}**")
    return "\n\n".join(b for b in blocks if b)


# -- HTTP and the providers' answers -------------------------------------------------------


def _post(client: httpx.Client, what: str, url: str, msg: "Outgoing", timeout: float | None, **kwargs: Any) -> httpx.Response:
    if timeout is not None:
        kwargs["timeout"] = timeout
    try:
        return client.post(url, **kwargs)
    except httpx.TimeoutException as exc:
        raise NotifierError(f"{what} {_where(url)} timed out for {msg.id} ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise NotifierError(f"{what} {_where(url)} unreachable for {msg.id}: {exc!r}") from exc


def _where(url: str) -> str:
    """A URL fit for an error message, a log line and the console: without its query (WeCom's
    key, DingTalk's access_token and sign) and with a token in the path (Feishu's
    ``/hook/<token>``) replaced by ``***``."""
    p = urlsplit(url)
    parts = p.path.split("/")
    for i in range(1, len(parts)):
        if parts[i - 1] == "hook" and parts[i]:
            parts[i] = "***"
    return f"{p.scheme}://{p.netloc}{'/'.join(parts)}"


def _answer(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _http_failure(what: str, msg: "Outgoing", url: str, resp: httpx.Response, code: str = "") -> NotifierError:
    status = resp.status_code
    snippet = resp.text[:200].replace("\n", " ") if resp.content else ""
    # 401/403: credentials, not the message; 408/429 and 5xx: later. Any other 4xx: never.
    permanent = 400 <= status < 500 and status not in (401, 403, 408, 429)
    hint = "the provider rejected this message" if permanent else "will retry"
    return NotifierError(f"{what} {_where(url)} answered HTTP {status} {code} for {msg.id}: {snippet!r} ({hint})".replace("  ", " "), permanent=permanent)


class _Robot:
    what = "robot"

    def __init__(self, url: str, token: str, client: httpx.Client, *, timeout: float | None, now: Callable[[], float] | None, name: str) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{self.what} url must be http:// or https://, got {url!r}")
        if not token:
            raise ValueError(f"a {self.what} needs its token")
        self.url = url.rstrip("/")
        self.token = token
        self.client = client
        self.timeout = timeout
        self.now: Callable[[], float] = now if now is not None else time.time
        self.name = name

    def _check(self, msg: "Outgoing", url: str, resp: httpx.Response, code_key: str) -> None:
        doc = _answer(resp)
        if not resp.is_success:
            raise _http_failure(self.what, msg, url, resp)
        code = doc.get(code_key) if isinstance(doc, dict) else None
        if code is None and isinstance(doc, dict):
            code = doc.get("StatusCode")  # Feishu's older field, kept for compatibility
        if code != 0:
            # Key, signature, keyword, rate limit: retried (the dispatcher alarms meanwhile).
            raise NotifierError(f"{self.what} {_where(url)} refused {msg.id}: {str(doc)[:200]!r} (will retry; check its token and secret)")


class WeComRobot(_Robot):
    """A WeCom (企业微信) group robot: markdown, the key as the ``key`` query parameter."""

    what = "WeCom robot"

    def __init__(self, url: str, key: str, client: httpx.Client, *, timeout: float | None = None, now: Callable[[], float] | None = None, name: str = "wecom") -> None:
        super().__init__(url, key, client, timeout=timeout, now=now, name=name)

    def payload(self, msg: "Outgoing") -> dict[str, Any]:
        return {"msgtype": "markdown", "markdown": {"content": _clip_utf8(_robot_markdown(msg), WECOM_MARKDOWN_MAX_BYTES)}}

    def send(self, msg: "Outgoing") -> None:
        url = f"{self.url}?key={quote(self.token, safe='')}"
        resp = _post(self.client, self.what, url, msg, self.timeout, content=_dumps(self.payload(msg)), headers={"Content-Type": JSON_CONTENT_TYPE})
        self._check(msg, url, resp, "errcode")


class DingTalkRobot(_Robot):
    """A DingTalk (钉钉) group robot with 加签: markdown, ``access_token``, ``timestamp`` (ms) and
    ``sign`` as query parameters."""

    what = "DingTalk robot"

    def __init__(self, url: str, access_token: str, secret: str, client: httpx.Client, *, timeout: float | None = None, now: Callable[[], float] | None = None, name: str = "dingtalk") -> None:
        super().__init__(url, access_token, client, timeout=timeout, now=now, name=name)
        if not secret:
            raise ValueError("a DingTalk robot needs the secret of its 加签 setting (SEC…)")
        self.secret = secret

    def payload(self, msg: "Outgoing") -> dict[str, Any]:
        return {"msgtype": "markdown", "markdown": {"title": msg.subject, "text": _clip_utf8(_robot_markdown(msg), ROBOT_TEXT_MAX_BYTES)}}

    def send(self, msg: "Outgoing") -> None:
        ts = str(int(self.now() * 1000))
        sign = quote(dingtalk_sign(self.secret, ts), safe="")
        url = f"{self.url}?access_token={quote(self.token, safe='')}&timestamp={ts}&sign={sign}"
        resp = _post(self.client, self.what, url, msg, self.timeout, content=_dumps(self.payload(msg)), headers={"Content-Type": JSON_CONTENT_TYPE})
        self._check(msg, url, resp, "errcode")


class FeishuRobot(_Robot):
    """A Feishu/Lark (飞书) group robot with 签名校验: text, ``timestamp`` (s) and ``sign`` in the
    body, the hook token as the last path segment."""

    what = "Feishu robot"

    def __init__(self, url: str, hook_token: str, secret: str, client: httpx.Client, *, timeout: float | None = None, now: Callable[[], float] | None = None, name: str = "feishu") -> None:
        super().__init__(url, hook_token, client, timeout=timeout, now=now, name=name)
        if not secret:
            raise ValueError("a Feishu robot needs the secret of its 签名校验 setting")
        self.secret = secret

    def payload(self, msg: "Outgoing", timestamp: str) -> dict[str, Any]:
        text = _clip_utf8(f"{msg.subject}\n\n{msg.text}", ROBOT_TEXT_MAX_BYTES)
        return {"timestamp": timestamp, "sign": feishu_sign(self.secret, timestamp), "msg_type": "text", "content": {"text": text}}

    def send(self, msg: "Outgoing") -> None:
        url = f"{self.url}/{quote(self.token, safe='')}"
        body = _dumps(self.payload(msg, str(int(self.now()))))
        resp = _post(self.client, self.what, url, msg, self.timeout, content=body, headers={"Content-Type": JSON_CONTENT_TYPE})
        self._check(msg, url, resp, "code")


# -- cloud SMS ------------------------------------------------------------------------------


_SEPARATORS = re.compile(r"[\s().-]")


def tencent_phone(phone: str) -> str:
    """E.164 as Tencent asks (``+86…``): separators dropped, ``00`` read as ``+``, a number
    without a country code taken as mainland China's."""
    p = _SEPARATORS.sub("", phone)
    if p.startswith("00"):
        p = "+" + p[2:]
    return p if p.startswith("+") else "+86" + p


def aliyun_phone(phone: str) -> str:
    """A number as Aliyun's PhoneNumbers lists it: separators dropped; ``+``/``00`` removed, so
    ``+86…`` becomes the documented ``86…`` form and other countries' numbers read as
    country code + number."""
    p = _SEPARATORS.sub("", phone)
    if p.startswith("00"):
        return p[2:]
    return p.removeprefix("+")


class _CloudSms:
    what = "SMS"

    def __init__(self, url: str, key_id: str, secret: str, client: httpx.Client, phones: Sequence[str], *, sign_name: str, template: str,
                 template_params: Sequence[str] | Mapping[str, str], timeout: float | None, now: Callable[[], float] | None, name: str) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{self.what} url must be http:// or https://, got {url!r}")
        if not (key_id and secret):
            raise ValueError(f"{self.what} needs its key id and secret")
        if not phones:
            raise ValueError(f"an {self.what} notifier needs to = ['+86…'] or contacts with a phone")
        if not (sign_name and template):
            raise ValueError(f"{self.what} needs sign_name and template")
        self.url = url.rstrip("/")
        self.host = urlsplit(self.url).netloc
        self.phones = list(phones)
        self.key_id = key_id
        self.secret = secret
        self.client = client
        self.sign_name = sign_name
        self.template = template
        self.template_params = template_params
        self.timeout = timeout
        self.now: Callable[[], float] = now if now is not None else time.time
        self.name = name


class AliyunSmsNotifier(_CloudSms):
    """Aliyun SMS (阿里云短信服务) SendSms, signed with ACS3-HMAC-SHA256: one request for all the
    unit's phones (up to 1000), the template's variables as the JSON ``TemplateParam``."""

    what = "Aliyun SMS"

    def __init__(self, url: str, access_key_id: str, access_key_secret: str, client: httpx.Client, phones: Sequence[str], *, sign_name: str,
                 template_code: str, template_params: Mapping[str, str] | None = None, timeout: float | None = None,
                 now: Callable[[], float] | None = None, nonce: Callable[[], str] | None = None, name: str = "aliyun_sms") -> None:
        params = template_params if template_params is not None else {"site": "{site_name}", "level": "{colour_zh}{level_zh}", "time": "{time}"}
        super().__init__(url, access_key_id, access_key_secret, client, [aliyun_phone(p) for p in phones], sign_name=sign_name,
                         template=template_code, template_params=params, timeout=timeout, now=now, name=name)
        if len(self.phones) > ALIYUN_MAX_PHONES:
            raise ValueError(f"Aliyun SendSms takes at most {ALIYUN_MAX_PHONES} phones, got {len(self.phones)}")
        self.nonce: Callable[[], str] = nonce if nonce is not None else (lambda: secrets.token_hex(16))

    def query(self, msg: "Outgoing") -> dict[str, str]:
        q = {"PhoneNumbers": ",".join(self.phones), "SignName": self.sign_name, "TemplateCode": self.template}
        params = _fill_params(self.template_params, msg)
        if params:
            q["TemplateParam"] = json.dumps(params, ensure_ascii=False, separators=(",", ":"))
        return q

    def request(self, msg: "Outgoing") -> tuple[str, dict[str, str]]:
        """(URL, headers) of the signed request for ``msg`` now."""
        query = self.query(msg)
        headers = {
            "host": self.host,
            "x-acs-action": "SendSms",
            "x-acs-version": ALIYUN_SMS_VERSION,
            "x-acs-date": datetime.fromtimestamp(int(self.now()), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "x-acs-signature-nonce": self.nonce(),
            "x-acs-content-sha256": hashlib.sha256(b"").hexdigest(),
        }
        headers["Authorization"] = acs3_authorization(self.key_id, self.secret, "POST", "/", query, headers, b"")
        return f"{self.url}/?{acs3_canonical_query(query)}", headers

    def send(self, msg: "Outgoing") -> None:
        url, headers = self.request(msg)
        resp = _post(self.client, self.what, url, msg, self.timeout, content=b"", headers=headers)
        doc = _answer(resp)
        code = str(doc.get("Code", "")) if isinstance(doc, dict) else ""
        if code == "OK" and resp.is_success:
            return
        detail = f"{code}: {doc.get('Message', '')}" if isinstance(doc, dict) else resp.text[:200]
        if code in _ALIYUN_MESSAGE_CODES:
            raise NotifierError(f"{self.what} refused {msg.id}: {detail} (the message or a phone is wrong; check the template and its parameters)", permanent=True)
        if not resp.is_success and not code:
            raise _http_failure(self.what, msg, url, resp)
        # Signature, AccessKey, clock, flow control, an unapproved sign name: not this message's fault.
        raise NotifierError(f"{self.what} {_where(url)} refused {msg.id} (HTTP {resp.status_code}): {detail} (will retry; check the AccessKey, sign name and template)")


class TencentSmsNotifier(_CloudSms):
    """Tencent Cloud SMS (腾讯云短信) SendSms 2021-01-11, signed with TC3-HMAC-SHA256: up to 200
    phones a request, ``TemplateParamSet`` in the template's order. Phones the provider served
    are not texted again when the message is retried after others failed (within this process)."""

    what = "Tencent SMS"

    def __init__(self, url: str, secret_id: str, secret_key: str, client: httpx.Client, phones: Sequence[str], *, app_id: str, sign_name: str,
                 template_id: str, template_params: Sequence[str] | None = None, region: str = TENCENT_DEFAULT_REGION,
                 timeout: float | None = None, now: Callable[[], float] | None = None, name: str = "tencent_sms", remember: int = 10_000) -> None:
        params = list(template_params) if template_params is not None else ["{site_name}", "{colour_zh}{level_zh}", "{time}"]
        super().__init__(url, secret_id, secret_key, client, [tencent_phone(p) for p in phones], sign_name=sign_name,
                         template=template_id, template_params=params, timeout=timeout, now=now, name=name)
        if not app_id:
            raise ValueError("Tencent SMS needs app_id (the SmsSdkAppId)")
        self.app_id = app_id
        self.region = region or TENCENT_DEFAULT_REGION
        self._remember = remember
        self._served: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def body(self, msg: "Outgoing", phones: Sequence[str]) -> dict[str, Any]:
        return {
            "PhoneNumberSet": list(phones),
            "SmsSdkAppId": self.app_id,
            "SignName": self.sign_name,
            "TemplateId": self.template,
            "TemplateParamSet": _fill_params(self.template_params, msg),
        }

    def request(self, msg: "Outgoing", phones: Sequence[str]) -> tuple[bytes, dict[str, str]]:
        payload = _dumps(self.body(msg, phones))
        ts = int(self.now())
        headers = {
            "Content-Type": TC3_CONTENT_TYPE,
            "Host": self.host,
            "X-TC-Action": "SendSms",
            "X-TC-Version": TENCENT_SMS_VERSION,
            "X-TC-Timestamp": str(ts),
            "X-TC-Region": self.region,
            "Authorization": tc3_authorization(self.key_id, self.secret, "sms", self.host, ts, payload),
        }
        return payload, headers

    def send(self, msg: "Outgoing") -> None:
        with self._lock:
            todo = [p for p in self.phones if (msg.id, p) not in self._served]
        failures: list[NotifierError] = []
        for i in range(0, len(todo), TENCENT_MAX_PHONES):
            chunk = todo[i : i + TENCENT_MAX_PHONES]
            try:
                served, failure = self._send_chunk(msg, chunk)
            except NotifierError as exc:
                failures.append(exc)
                continue
            with self._lock:
                for p in served:
                    self._served[(msg.id, p)] = None
                while len(self._served) > self._remember:
                    self._served.popitem(last=False)
            if failure is not None:
                failures.append(failure)
        if failures:
            raise NotifierError("; ".join(str(f) for f in failures), permanent=all(f.permanent for f in failures))

    def _send_chunk(self, msg: "Outgoing", phones: list[str]) -> tuple[list[str], NotifierError | None]:
        """(the phones served, why the others were not); raises when the request as a whole
        was refused."""
        url = self.url + "/"
        payload, headers = self.request(msg, phones)
        resp = _post(self.client, self.what, url, msg, self.timeout, content=payload, headers=headers)
        doc = _answer(resp)
        response = doc.get("Response") if isinstance(doc, dict) else None
        if not resp.is_success or not isinstance(response, dict):
            raise _http_failure(self.what, msg, url, resp)
        error = response.get("Error")
        if isinstance(error, dict):
            code = str(error.get("Code", ""))
            permanent = code.startswith(_TENCENT_MESSAGE_PREFIXES)
            hint = "the message or a phone is wrong; check the template and its parameters" if permanent else "will retry; check SecretId/SecretKey, app_id and sign name"
            raise NotifierError(f"{self.what} refused {msg.id}: {code}: {error.get('Message', '')} ({hint})", permanent=permanent)
        statuses = response.get("SendStatusSet") or []
        served = [str(s.get("PhoneNumber")) for s in statuses if isinstance(s, dict) and s.get("Code") == "Ok"]
        refused = [s for s in statuses if isinstance(s, dict) and s.get("Code") != "Ok"]
        missing = [p for p in phones if p not in served and not any(s.get("PhoneNumber") == p for s in refused)]
        if not (refused or missing):
            return served, None
        codes = [str(s.get("Code", "")) for s in refused]
        return served, NotifierError(
            f"{self.what} did not text {[s.get('PhoneNumber') for s in refused] + missing} for {msg.id}: {codes}",
            permanent=bool(codes) and not missing and all(c.startswith(_TENCENT_MESSAGE_PREFIXES) for c in codes),
        )


# -- roster → notifier ----------------------------------------------------------------------


def build_provider_notifier(cfg: Notify, client: httpx.Client, *, phones: Sequence[str], name: str,
                            timeout: float | None = None, now: Callable[[], float] | None = None) -> Any:
    """The notifier of a provider roster entry, its secrets read now. ValueError with a reason
    (a secret that cannot be read, an SMS with no phone): the caller names the file and key."""

    def secret(key: str, *, plain_ok: bool = False) -> str:
        value = getattr(cfg, key)
        if plain_ok and not value.startswith(("env:", "file:")):
            return str(value)
        try:
            return secret_value(value)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None

    kw: dict[str, Any] = {"timeout": timeout, "now": now, "name": name}
    if cfg.type == "wecom":
        return WeComRobot(cfg.url or WECOM_URL, secret("token"), client, **kw)
    if cfg.type == "dingtalk":
        return DingTalkRobot(cfg.url or DINGTALK_URL, secret("token"), secret("secret"), client, **kw)
    if cfg.type == "feishu":
        return FeishuRobot(cfg.url or FEISHU_URL, secret("token"), secret("secret"), client, **kw)
    if not phones:
        raise ValueError(f"a {cfg.type} notifier needs to = ['+86…'] or contacts with a phone")
    if cfg.type == "aliyun_sms":
        params = cfg.template_params if isinstance(cfg.template_params, dict) else None
        return AliyunSmsNotifier(cfg.url or ALIYUN_SMS_URL, secret("key_id", plain_ok=True), secret("secret"), client, phones,
                                 sign_name=cfg.sign_name, template_code=cfg.template, template_params=params, **kw)
    if cfg.type == "tencent_sms":
        params_list = cfg.template_params if isinstance(cfg.template_params, list) else None
        return TencentSmsNotifier(cfg.url or TENCENT_SMS_URL, secret("key_id", plain_ok=True), secret("secret"), client, phones,
                                  app_id=cfg.app_id, sign_name=cfg.sign_name, template_id=cfg.template, template_params=params_list,
                                  region=cfg.region or TENCENT_DEFAULT_REGION, **kw)
    raise ValueError(f"{cfg.type} is not a provider notifier")
