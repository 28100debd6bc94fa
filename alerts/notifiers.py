"""Notification delivery: one small protocol, the notifiers behind it, and the routing from
the alert engine's ``Notify`` action to a unit's configured channels.

This module owns what one delivery attempt is (``Notifier.send``), the message handed to it
(``Outgoing``, frozen and JSON round-trippable so the outbox can store it), the five channels
of the duty roster (MQTT, webhook, email, SMS gateway, JSONL audit), and the naming of each
unit's channels (``"<admin>/<type>/<n>"``); the providers' own channels (WeCom, DingTalk and
Feishu robots, Aliyun and Tencent Cloud SMS) are alerts/notifiers_cn.py's, built here. It does
not retry, time out or count: that is the dispatcher's business (``alerts/dispatch.py``), and
durability is the outbox's (``alerts/outbox.py``).

What leaves the box is each channel's own: email, SMS and the unit's webhook get the full
message (the contacts included: they are the unit's own channels), while the MQTT notifier
publishes ``public_payload`` — no phone numbers, no e-mail addresses — because a broker topic
is read by whoever may subscribe to it, and the outbox may hold messages queued before that
rule existed.

A notifier either returns (delivered) or raises ``NotifierError``
with a message a duty officer or engineer can act on; ``permanent=True`` says a retry cannot
help (the receiver rejected this very message), so the dispatcher dead-letters it.

Each notifier's timeout is its own: the injected httpx client's (or the ``timeout`` given),
smtplib's ``timeout``. The dispatcher only guards against a notifier that ignores it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import smtplib
import ssl
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from geowarn.core.clock import Clock, WallClock
from geowarn.alerts.model import Notify as NotifyAction
from geowarn.core.levels import LEVELS
from geowarn.config.errors import ConfigError, ConfigProblem
from geowarn.alerts.errors import NotifierError
from geowarn.alerts.notifiers_cn import build_provider_notifier
from geowarn.alerts.texts import EXERCISE_MARKS, local_time, render
from geowarn.core.timefmt import parse_time, rfc3339
from geowarn.config.registry import Registry
from geowarn.config.roster import CLOUD_SMS_TYPES, NATIONAL, PROVIDER_TYPES, Notify, Roster, Unit

__all__ = [
    "AUDIT_KEY",
    "EXERCISE_PREFIX",
    "EmailNotifier",
    "JsonlNotifier",
    "MqttNotifier",
    "Notifier",
    "NotifierError",
    "Outgoing",
    "SmsNotifier",
    "WebhookNotifier",
    "build_notifiers",
    "notifier_key",
    "outgoing_for",
    "public_payload",
    "route",
    "sign",
    "unit_notifiers",
]

#: Every subject of a drill starts with this (or, in a Chinese unit's messages, with 【演练】:
#: ``EXERCISE_MARKS``), so nobody mistakes an exercise for a warning.
EXERCISE_PREFIX = EXERCISE_MARKS["en"]  # "[EXERCISE 演练]"
#: The service-wide JSONL audit notifier: every notification that reaches nobody else, and the
#: dispatcher's own alarms about failing notifiers, are written here.
AUDIT_KEY = "audit/jsonl"
SMS_MAX_CHARS = 280

_COLOUR_ZH = {0: "", 1: "蓝色", 2: "黄色", 3: "橙色", 4: "红色"}


@dataclass(frozen=True)
class Outgoing:
    """One message for one notifier. ``id`` is stable (``"<notify id>/<notifier key>"``): the
    outbox deduplicates on it and receivers can too (webhook ``X-GeoWarn-Id``, email
    Message-ID)."""

    id: str
    notifier: str
    kind: str
    admin: str
    site: str | None
    level: int
    subject: str
    text: str
    body: Mapping[str, Any] = field(hash=False)
    t: float
    exercise: bool = False

    def __post_init__(self) -> None:
        if not self.id or not self.notifier:
            raise ValueError("Outgoing: id and notifier must be non-empty")
        if "\n" in self.subject or "\r" in self.subject:
            raise ValueError(f"Outgoing {self.id}: the subject must be one line")
        if self.exercise and not self.subject.startswith(tuple(EXERCISE_MARKS.values())):
            raise ValueError(f"Outgoing {self.id}: an exercise subject must start with {EXERCISE_PREFIX!r} or {EXERCISE_MARKS['zh']!r}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["body"] = dict(self.body)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Outgoing":
        return cls(
            id=str(d["id"]),
            notifier=str(d["notifier"]),
            kind=str(d["kind"]),
            admin=str(d["admin"]),
            site=None if d.get("site") is None else str(d["site"]),
            level=int(d["level"]),
            subject=str(d["subject"]),
            text=str(d["text"]),
            body=dict(d["body"]),
            t=float(d["t"]),
            exercise=bool(d.get("exercise", False)),
        )

    def dumps(self) -> bytes:
        """The canonical JSON bytes (sorted keys, UTF-8): what the webhook posts and signs."""
        return json.dumps(self.to_json(), ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


@runtime_checkable
class Notifier(Protocol):
    """One way to deliver a message. ``send`` returns once the message is delivered (as far as
    the channel can tell) or raises ``NotifierError``."""

    name: str

    def send(self, msg: Outgoing) -> None: ...


# -- MQTT ---------------------------------------------------------------------------------


# A key that names contact data is dropped with its value: any key containing one of these
# (case-insensitive: PhoneNumber, contact_phone, e_mail, 手机, 电话, 邮箱) or made of one of the
# short words ("tel", "fax": as whole words only, not "hotel" or "telemetry").
_CONTACT_KEY_PARTS = ("phone", "mobile", "mail", "手机", "电话", "邮箱", "座机", "联系方式")
_CONTACT_KEY_WORDS = frozenset({"tel", "fax", "cell"})
_KEY_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
# Keys whose values GeoWarn makes (ids, signatures): never redacted, whatever digits they hold.
_ID_KEYS = frozenset({"id", "identifier", "mac", "nonce", "reply_to", "request"})
# Free text (an ack note, a reason) may carry contact data too, matched after NFKC (full-width
# digits, "＠", "＋" count as their ASCII forms). E-mail: anything@domain.tld, letters of any
# script (值班@例子.中国). Phones: a run of 7 or more digits, separators ( .-()+) allowed
# between them, that does not touch a Latin letter, digit or "_" on either side (nor follows
# "letter-" or "letter."): so ids such as BSH-20261202T220000Z-4, hex ids and times such as
# 2026-12-02T22:00:00Z survive, while 138 0013 8000, (0717)6251234 and +86.717.000.1000 do
# not. A mobile number glued to a word (x13800138000) is caught by its own shape.
_EMAIL = re.compile(r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(
    r"(?<![A-Za-z0-9_])(?<![A-Za-z0-9_][.-])[+(]?\d(?:[ .()+-]{0,2}\d)+(?![A-Za-z0-9_])"
    r"|(?<![0-9])(?:86)?1[3-9]\d{9}(?![A-Za-z0-9_])"
)
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}(?!\d)")
_DECIMAL = re.compile(r"\d+\.\d+")
MIN_PHONE_DIGITS = 7
REDACTED = "[redacted]"


def _contact_key(key: Any) -> bool:
    k = str(key)
    low = k.lower()
    if any(part in low for part in _CONTACT_KEY_PARTS):
        return True
    return any(w.lower() in _CONTACT_KEY_WORDS for w in _KEY_WORD.findall(k))


def _id_key(key: Any) -> bool:
    k = str(key).lower()
    return k in _ID_KEYS or k.endswith("_id")


def _phone_like(run: str) -> bool:
    digits = sum(c.isdigit() for c in run)
    if digits < MIN_PHONE_DIGITS:
        return False
    if _DATE.match(run) or _DECIMAL.fullmatch(run):
        return False  # 2026-12-02 22, 1234567.5: a time or a measurement, not a number to call
    return True


def _normalised(text: str) -> tuple[str, list[int]]:
    """``text`` in NFKC, character by character, with each output position's index in ``text``."""
    out: list[str] = []
    where: list[int] = []
    for i, c in enumerate(text):
        n = unicodedata.normalize("NFKC", c) if not c.isascii() else c
        out.append(n)
        where.extend([i] * len(n))
    return "".join(out), where


def redact_text(text: str) -> str:
    """``text`` with e-mail addresses and phone numbers replaced by ``[redacted]``; the rest of
    it as it was (full-width punctuation included)."""
    norm, where = _normalised(text)
    spans = [m.span() for m in _EMAIL.finditer(norm)]
    spans += [m.span() for m in _PHONE.finditer(norm) if _phone_like(m.group())]
    if not spans:
        return text
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        a, b = where[a], where[b - 1] + 1  # back to the original's positions
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    out, last = [], 0
    for a, b in merged:
        out += [text[last:a], REDACTED]
        last = b
    out.append(text[last:])
    return "".join(out)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: (v if _id_key(k) and isinstance(v, str) else _scrub(v)) for k, v in value.items() if not _contact_key(k)}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


def public_payload(msg: Outgoing) -> bytes:
    """The message as published on MQTT: no personal contact data.

    The body's ``contacts`` keep each contact's name and role only (the unit sees who is on
    duty, as on its own roster; a name alone reaches nobody), ``delivery.to`` keeps those
    names, and every key that names contact data (``phone``, ``PhoneNumber``, ``contact_phone``,
    ``email``, ``tel``, ``手机``, ``电话``, ``邮箱``…; e.g. the site's responsible person in a quick
    report draft) is dropped; e-mail addresses and phone numbers in free text, in any width or
    script, are replaced by ``[redacted]``. Ids (``id``, ``*_id``, ``identifier``) are left as
    they are. Email, SMS and webhooks still get the full message.
    """
    body = dict(msg.body)
    if "contacts" in body:
        body["contacts"] = [
            {"name": str(c.get("name", "")), "role": str(c.get("role", ""))} for c in body["contacts"] if isinstance(c, Mapping)
        ]
    doc = _scrub({**msg.to_json(), "body": body})
    return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


class MqttNotifier:
    """Publishes the message as JSON to ``{prefix}/notify/{admin}``, not retained, without
    personal contact data (``public_payload``).

    ``publish(topic, payload, retain)`` is the daemon's MQTT link (QoS 1 and waiting for the
    broker's PUBACK are its business); it should raise when the message was not accepted.
    """

    def __init__(self, publish: Callable[[str, bytes, bool], None], prefix: str = "geowarn", name: str = "mqtt") -> None:
        self.publish = publish
        self.prefix = prefix
        self.name = name

    def topic(self, admin: str) -> str:
        return f"{self.prefix}/notify/{admin}"

    def send(self, msg: Outgoing) -> None:
        topic = self.topic(msg.admin)
        try:
            self.publish(topic, public_payload(msg), False)
        except Exception as exc:  # paho and the link raise many types; converted at this boundary
            raise NotifierError(f"MQTT publish of {msg.id} to {topic} failed: {exc!r}; is the broker reachable?") from exc


# -- webhook ------------------------------------------------------------------------------


#: The scheme label of ``X-GeoWarn-Signature``. Until 2026-12 the header was
#: ``sha256=<HMAC of the body>``, which a recorded delivery could replay for ever.
SIGNATURE_SCHEME = "v1"


def sign(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """The ``X-GeoWarn-Signature`` value: ``v1=<hex HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>``.

    Id and timestamp are the ``X-GeoWarn-Id`` and ``X-GeoWarn-Timestamp`` headers, exactly as
    sent; the body is the exact bytes posted. Signing the timestamp lets a receiver reject an
    old (replayed) delivery; signing the id ties the signature to the message it dedups on.
    """
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return f"{SIGNATURE_SCHEME}=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def _http_error(what: str, msg: Outgoing, url: str, resp: httpx.Response) -> NotifierError:
    status = resp.status_code
    snippet = resp.text[:200].replace("\n", " ") if resp.content else ""
    if 300 <= status < 400:
        return NotifierError(
            f"{what} {url} answered {status} (redirect to {resp.headers.get('location', '?')}) for {msg.id}: configure the final URL",
            permanent=True,
        )
    # 408 and 429 say "later"; any other 4xx says this request will never be accepted.
    permanent = 400 <= status < 500 and status not in (408, 429)
    hint = "the receiver rejected this message; check its URL, secret and payload format" if permanent else "will retry"
    return NotifierError(f"{what} {url} answered HTTP {status} for {msg.id}: {snippet!r} ({hint})", permanent=permanent)


class WebhookNotifier:
    """POSTs the message JSON, signed with HMAC-SHA256 so the receiver can check it came from us.

    Headers: ``X-GeoWarn-Id`` (the stable id: a retried delivery carries the same one, so the
    receiver can drop duplicates), ``X-GeoWarn-Timestamp`` (epoch seconds of this attempt) and
    ``X-GeoWarn-Signature: v1=<hex>`` over ``<id>.<timestamp>.<body>`` (``sign``), so the
    receiver can reject a delivery older than a few minutes. Without a secret nothing is signed,
    which the roster must ask for (``unsigned = true``). A 2xx answer is delivery; anything
    else raises.
    """

    def __init__(
        self,
        url: str,
        secret: str,
        client: httpx.Client,
        *,
        timeout: float | None = None,
        clock: Clock | None = None,
        name: str = "webhook",
        unsigned: bool = False,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must be http:// or https://, got {url!r}")
        if not secret and not unsigned:
            raise ValueError(f"webhook {url}: no secret to sign with; pass unsigned=True to send unsigned bodies on purpose")
        if secret and unsigned:
            raise ValueError(f"webhook {url}: unsigned=True and a secret contradict each other")
        self.url = url
        self.secret = secret
        self.client = client
        self.timeout = timeout
        self.clock: Clock = clock if clock is not None else WallClock()
        self.name = name

    def send(self, msg: Outgoing) -> None:
        body = msg.dumps()
        timestamp = str(int(self.clock.now()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-GeoWarn-Id": msg.id,
            "X-GeoWarn-Timestamp": timestamp,
        }
        if self.secret:
            headers["X-GeoWarn-Signature"] = sign(self.secret, msg.id, timestamp, body)
        kwargs: dict[str, Any] = {} if self.timeout is None else {"timeout": self.timeout}
        try:
            resp = self.client.post(self.url, content=body, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise NotifierError(f"webhook {self.url} timed out for {msg.id} ({type(exc).__name__}); is the receiver up?") from exc
        except httpx.HTTPError as exc:
            raise NotifierError(f"webhook {self.url} unreachable for {msg.id}: {exc!r}") from exc
        if not resp.is_success:
            raise _http_error("webhook", msg, self.url, resp)


# -- email --------------------------------------------------------------------------------

_ATEXT = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]")


def message_id(stable_id: str, sender: str) -> str:
    """An RFC 5322 Message-ID derived from the stable id, so a retried email can be recognised."""
    local = re.sub(r"\.{2,}", ".", _ATEXT.sub("-", stable_id)).strip(".") or "geowarn"
    domain = sender.rpartition("@")[2] or "geowarn.invalid"
    return f"<{local}@{domain}>"


# What the body's keys mean, for the e-mail's details table (a key not listed shows as itself).
_DETAIL_LABELS = {
    "zh": {
        "warning_id": "预警编号", "kind": "类型", "tier": "层级", "admin": "行政区划代码", "site": "监测点代码", "level": "级别",
        "previous": "原级别", "t": "时间", "deadline": "期限", "task_id": "速报任务", "device": "设备", "id": "通知编号",
        "exercise": "演练", "contacts": "值班联系人", "delivery.to": "发送至", "delivery.notifier": "通道", "history": "处置记录",
    },
    "en": {
        "warning_id": "Warning", "kind": "Kind", "tier": "Tier", "admin": "Admin code", "site": "Site code", "level": "Level",
        "previous": "Previous level", "t": "Time", "deadline": "Deadline", "task_id": "Quick report", "device": "Device",
        "id": "Notification", "exercise": "Exercise", "contacts": "Duty contacts", "delivery.to": "Sent to", "delivery.notifier": "Channel",
        "history": "History",
    },
}
# Shown in the text and the table above it already, or the engine's own English sentence.
_DETAIL_SKIP = frozenset({"type", "text", "message", "site"})
_TIME_KEYS = frozenset({"t", "time", "deadline", "due", "raised", "opened", "submitted", "failure_time", "until", "remind_at", "record_start_t"})
# A nested table's rows are named after it: draft.shelter → 速报草稿.shelter.
_DETAIL_GROUPS = {"zh": {"draft": "速报草稿", "zero": "零报告"}, "en": {"draft": "Quick report draft", "zero": "Zero report"}}
_LEVEL_COLOURS = {1: "#1565c0", 2: "#b8860b", 3: "#e65100", 4: "#c62828"}


def _lang(msg: Outgoing) -> str:
    message = msg.body.get("message")
    lang = message.get("lang") if isinstance(message, Mapping) else None
    return lang if lang in EXERCISE_MARKS else "en"


def _tz(msg: Outgoing) -> str | None:
    message = msg.body.get("message")
    tz = message.get("tz") if isinstance(message, Mapping) else None
    return tz if isinstance(tz, str) else None


def _scalar(key: str, value: Any, lang: str, tz: str | None) -> str:
    if isinstance(value, bool):
        return ("是" if value else "否") if lang == "zh" else ("yes" if value else "no")
    leaf = key.rsplit(".", 1)[-1].split("[", 1)[0]
    if leaf in _TIME_KEYS or leaf.endswith("_t"):
        t: float | None = None
        if isinstance(value, (int, float)) and 1e8 < value < 253402300799:
            t = float(value)
        elif isinstance(value, str):
            try:
                t = parse_time(value)
            except ValueError:
                t = None
        if t is not None:
            return local_time(t, tz, lang) if tz else rfc3339(t)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _flatten(key: str, value: Any, lang: str, tz: str | None, out: list[tuple[str, str]]) -> None:
    if value is None or value == "" or value == [] or value == {}:
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{key}.{k}" if key else str(k), v, lang, tz, out)
    elif isinstance(value, (list, tuple)):
        if all(not isinstance(v, (Mapping, list, tuple)) for v in value):
            out.append((key, ", ".join(_scalar(key, v, lang, tz) for v in value)))
        else:
            for i, v in enumerate(value, 1):
                _flatten(f"{key}[{i}]", v, lang, tz, out)
    else:
        out.append((key, _scalar(key, value, lang, tz)))


def _group_label(key: str, lang: str) -> str:
    head, _, rest = key.partition(".")
    group = _DETAIL_GROUPS[lang].get(head)
    return f"{group}.{rest}" if group and rest else key


def readable_details(msg: Outgoing) -> list[tuple[str, str]]:
    """The message body as (label, value) rows a person reads: times in the unit's zone,
    contacts and history one per row, nested figures (a zero report's, a quick-report draft's)
    by their dotted names. Never JSON."""
    lang, tz = _lang(msg), _tz(msg)
    labels = _DETAIL_LABELS[lang]
    rows: list[tuple[str, str]] = []
    for key, value in msg.body.items():
        if key in _DETAIL_SKIP:
            continue
        if key == "contacts" and isinstance(value, list):
            for c in value:
                if isinstance(c, Mapping):
                    who = " ".join(str(c.get(k) or "") for k in ("name", "role", "phone", "email") if c.get(k))
                    rows.append((labels["contacts"], who))
            continue
        if key == "history" and isinstance(value, list):
            for entry in value:
                if isinstance(entry, (list, tuple)) and len(entry) >= 5:
                    t, rule, level, status, detail = entry[:5]
                    rows.append((labels["history"], f"{_scalar('t', t, lang, tz)} {rule} (level {level}, {status}) {detail}".strip()))
            continue
        flat: list[tuple[str, str]] = []
        _flatten(str(key), value, lang, tz, flat)
        rows += [(labels.get(k) or _group_label(k, lang), v) for k, v in flat]
    return rows


def email_html(msg: Outgoing, details: Sequence[tuple[str, str]] | None = None) -> str:
    """The HTML part of a notification e-mail: the drill banner, the subject in the level's
    colour, what happened and what to do, the 防灾明白卡 facts and the deadline as a table,
    then the details as a second table."""
    import html

    e = html.escape
    lang = _lang(msg)
    zh = lang == "zh"
    message = msg.body.get("message") if isinstance(msg.body.get("message"), Mapping) else None
    colour = _LEVEL_COLOURS.get(msg.level if msg.kind != "cancel" else 0, "#333333")
    parts = [f'<!DOCTYPE html>\n<html lang="{"zh-CN" if zh else "en"}"><head><meta charset="utf-8"><title>{e(msg.subject)}</title></head>',
             '<body style="font-family: sans-serif; line-height: 1.5">']
    if msg.exercise:
        banner = "【演练】这是一次演练，不是真实预警。" if zh else "[EXERCISE 演练] This is an exercise, not a real warning."
        parts.append(f'<p style="background:#fff3b0; border:2px dashed #b8860b; padding:6px; font-weight:bold">{e(banner)}</p>')
    parts.append(f'<h2 style="color:{colour}">{e(msg.subject)}</h2>')
    cell = 'style="text-align:left; vertical-align:top; padding:4px 8px; border:1px solid #ccc"'
    if message is not None and not message.get("custom_text") and message.get("facts"):
        parts.append(f"<p>{e(str(message.get('headline', '')))}</p>")
        parts.append('<table style="border-collapse:collapse">')
        for k, v in message["facts"]:
            parts.append(f"<tr><th {cell}>{e(str(k))}</th><td {cell}>{e(str(v))}</td></tr>")
        parts.append("</table>")
        if message.get("deadline_line"):
            parts.append(f"<p><strong>{e(str(message['deadline_line']))}</strong></p>")
    else:
        parts += [f"<p>{e(line)}</p>" for line in msg.text.splitlines() if line.strip()]
    rows = readable_details(msg) if details is None else details
    if rows:
        parts.append(f"<h3>{'详细信息' if zh else 'Details'}</h3>")
        parts.append('<table style="border-collapse:collapse; font-size:90%">')
        parts += [f"<tr><th {cell}>{e(k)}</th><td {cell}>{e(v)}</td></tr>" for k, v in rows]
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


class EmailNotifier:
    """Sends a UTF-8 email over SMTP.

    ``smtp_url``: ``smtp://[user:password@]host[:port]`` (port 25; ``?starttls=1`` upgrades the
    connection before login) or ``smtps://…`` (TLS from the start, port 465). User and password
    are percent-escaped as in any URL.
    """

    def __init__(
        self,
        smtp_url: str,
        sender: str,
        to: Sequence[str],
        timeout: float = 30.0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        name: str = "email",
    ) -> None:
        parts = urlsplit(smtp_url)
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError(f"smtp_url must start with smtp:// or smtps://, got {smtp_url!r}")
        if not parts.hostname:
            raise ValueError(f"smtp_url {smtp_url!r} names no host")
        if not to:
            raise ValueError("an email notifier needs at least one address in to")
        query = parse_qs(parts.query)
        self.tls = parts.scheme == "smtps"
        self.starttls = query.get("starttls", ["0"])[-1].lower() in ("1", "true", "yes")
        self.host = parts.hostname
        self.port = parts.port or (465 if self.tls else 25)
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else ""
        self.sender = sender
        self.to = list(to)
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.name = name

    def compose(self, msg: Outgoing) -> EmailMessage:
        em = EmailMessage()
        em["Subject"] = msg.subject
        em["From"] = self.sender
        em["To"] = ", ".join(self.to)
        em["Date"] = formatdate(msg.t, usegmt=True)
        em["Message-ID"] = message_id(msg.id, self.sender)
        em["X-GeoWarn-Id"] = msg.id
        details = readable_details(msg)
        lang = _lang(msg)
        width = max((len(k) for k, _ in details), default=0)
        plain = "\n".join(f"{k.ljust(width)}  {v}" for k, v in details)
        head = "详细信息" if lang == "zh" else "Details"
        em.set_content(f"{msg.text}\n\n-- \n{head}\n{plain}\n", charset="utf-8")
        em.add_alternative(email_html(msg, details), subtype="html", charset="utf-8")
        return em

    def _connect(self) -> smtplib.SMTP:
        if self.tls:
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self.ssl_context)
        return smtplib.SMTP(self.host, self.port, timeout=self.timeout)

    def send(self, msg: Outgoing) -> None:
        where = f"SMTP {self.host}:{self.port}"
        em = self.compose(msg)
        try:
            with self._connect() as smtp:
                if self.starttls and not self.tls:
                    smtp.starttls(context=self.ssl_context)
                if self.user:
                    smtp.login(self.user, self.password)
                refused = smtp.send_message(em)
        except smtplib.SMTPAuthenticationError as exc:
            # Not permanent: the message is fine, the credentials are not; it goes out once
            # they are fixed, and the dispatcher alarms the operators meanwhile.
            raise NotifierError(f"{where} refused the login of {self.user!r}: {exc.smtp_code} {exc.smtp_error!r}; check smtp_url") from exc
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise NotifierError(f"{where} refused every recipient of {msg.id}: {exc.recipients!r}", permanent=all(c >= 500 for c in codes)) from exc
        except smtplib.SMTPResponseException as exc:
            raise NotifierError(f"{where} answered {exc.smtp_code} {exc.smtp_error!r} for {msg.id}", permanent=exc.smtp_code >= 500) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise NotifierError(f"{where} unreachable for {msg.id}: {exc!r}") from exc
        if refused:
            # Partly delivered: retrying would repeat it to those who got it; report, do not retry.
            raise NotifierError(f"{where} refused some recipients of {msg.id}: {refused!r}", permanent=True)


# -- SMS ----------------------------------------------------------------------------------

DEFAULT_SMS_TEMPLATE: Mapping[str, Any] = {"to": "{phone}", "text": "{text}"}


def _fill(template: Any, values: Mapping[str, str]) -> Any:
    if isinstance(template, str):
        return template.format_map(values)
    if isinstance(template, Mapping):
        return {k: _fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, values) for v in template]
    return template


def sms_text(msg: Outgoing, limit: int = SMS_MAX_CHARS) -> str:
    """The short text of a message: the unit's SMS text (alerts/texts.py: what to do, the
    deadline, the card, in its language), or for a message without one (queued before texts
    were rendered, an operators' alarm) the subject and as much of the text as fits in ``limit``."""
    message = msg.body.get("message")
    short = message.get("sms") if isinstance(message, Mapping) else None
    full = short.strip() if isinstance(short, str) and short.strip() else f"{msg.subject} {msg.text}".strip()
    return full if len(full) <= limit else full[: limit - 1] + "…"


class SmsNotifier:
    """A generic HTTP SMS gateway: one POST per phone, JSON from ``template``.

    The template is any JSON value whose strings may use ``{phone}``, ``{text}``, ``{id}``,
    ``{subject}``; the default is ``{"to": "{phone}", "text": "{text}"}`` with text at most 280
    characters. Each request carries ``X-GeoWarn-Id: <id>/<phone>`` for gateway deduplication,
    and phones already served for a message are not texted again when the message is retried
    after a later phone failed (within this process).
    """

    def __init__(
        self,
        url: str,
        client: httpx.Client,
        phones: Sequence[str],
        template: Mapping[str, Any] = DEFAULT_SMS_TEMPLATE,
        *,
        timeout: float | None = None,
        name: str = "sms",
        remember: int = 10_000,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"SMS gateway url must be http:// or https://, got {url!r}")
        if not phones:
            raise ValueError("an SMS notifier needs at least one phone number")
        self.url = url
        self.client = client
        self.phones = [re.sub(r"[\s-]", "", p) for p in phones]
        self.template = template
        self.timeout = timeout
        self.name = name
        self._remember = remember
        self._served: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def payload(self, msg: Outgoing, phone: str) -> Any:
        return _fill(self.template, {"phone": phone, "text": sms_text(msg), "id": msg.id, "subject": msg.subject})

    def send(self, msg: Outgoing) -> None:
        """Text every phone; one phone the gateway refuses does not stop the others. Raises
        when any phone was not served (permanent only if every failure was permanent)."""
        kwargs: dict[str, Any] = {} if self.timeout is None else {"timeout": self.timeout}
        failures: list[NotifierError] = []
        for phone in self.phones:
            with self._lock:
                if (msg.id, phone) in self._served:
                    continue
            try:
                resp = self.client.post(self.url, json=self.payload(msg, phone), headers={"X-GeoWarn-Id": f"{msg.id}/{phone}"}, **kwargs)
            except httpx.TimeoutException:
                failures.append(NotifierError(f"SMS gateway {self.url} timed out for {msg.id} to {phone}"))
                continue
            except httpx.HTTPError as exc:
                failures.append(NotifierError(f"SMS gateway {self.url} unreachable for {msg.id}: {exc!r}"))
                continue
            if not resp.is_success:
                failures.append(_http_error("SMS gateway", msg, self.url, resp))
                continue
            with self._lock:
                self._served[(msg.id, phone)] = None
                while len(self._served) > self._remember:
                    self._served.popitem(last=False)
        if failures:
            raise NotifierError("; ".join(str(f) for f in failures), permanent=all(f.permanent for f in failures))


# -- JSONL audit --------------------------------------------------------------------------


class JsonlNotifier:
    """Appends one JSON line per message and fsyncs it: the audit trail of what was sent."""

    def __init__(self, path: str | os.PathLike[str], name: str = "jsonl") -> None:
        self.path = Path(path)
        self.name = name
        self._lock = threading.Lock()

    def send(self, msg: Outgoing) -> None:
        line = json.dumps(msg.to_json(), ensure_ascii=False, sort_keys=True) + "\n"
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as exc:
            raise NotifierError(f"audit file {self.path} not writable for {msg.id}: {exc}; check the disk and permissions") from exc


# -- roster → notifiers and routes --------------------------------------------------------


def notifier_key(admin: str, type_: str, n: int) -> str:
    """``"<admin>/<type>/<n>"``: the n-th notifier of that type in the unit's list, from 0."""
    return f"{admin}/{type_}/{n}"


def unit_notifiers(unit: Unit) -> list[tuple[str, Notify]]:
    """[(key, notify config)] of a unit, in roster order."""
    seen: dict[str, int] = {}
    out = []
    for cfg in unit.notify:
        n = seen.get(cfg.type, 0)
        seen[cfg.type] = n + 1
        out.append((notifier_key(unit.admin, cfg.type, n), cfg))
    return out


def _phones(unit: Unit, cfg: Notify) -> list[str]:
    return list(cfg.to) if cfg.to else [c.phone for c in unit.contacts if c.phone]


def _jsonl_path(data_dir: Path, admin: str, cfg: Notify) -> Path:
    if cfg.url:
        p = Path(cfg.url.removeprefix("file://"))
        return p if p.is_absolute() else data_dir / p
    return data_dir / "notify" / f"{admin}.jsonl"


def build_notifiers(
    roster: Roster,
    *,
    publish: Callable[[str, bytes, bool], None] | None,
    smtp_url: str | None,
    sender: str,
    data_dir: str | os.PathLike[str],
    client: httpx.Client,
    prefix: str = "geowarn",
    smtp_timeout: float = 30.0,
    clock: Clock | None = None,
) -> dict[str, Notifier]:
    """Every unit's notifiers by key, plus the service-wide audit (``AUDIT_KEY``,
    ``data_dir/notify/audit.jsonl``).

    Raises ``ConfigError`` (at start, not in the dispatcher's thread) for a channel that cannot
    work: mqtt without a publisher, email without ``smtp_url``, sms without any phone.
    """
    data = Path(data_dir)
    out: dict[str, Notifier] = {AUDIT_KEY: JsonlNotifier(data / "notify" / "audit.jsonl", name=AUDIT_KEY)}
    problems: list[ConfigProblem] = []
    for unit in roster.units.values():
        for i, (key, cfg) in enumerate(unit_notifiers(unit)):
            where = f"units[admin={unit.admin}].notify[{i}]"
            if cfg.type == "mqtt":
                if publish is None:
                    problems.append(ConfigProblem(roster.source, where, "an mqtt notifier needs the daemon's MQTT link (none given)"))
                    continue
                out[key] = MqttNotifier(publish, prefix, name=key)
            elif cfg.type == "webhook":
                if not cfg.secret and not cfg.unsigned:
                    problems.append(ConfigProblem(roster.source, where, "a webhook needs secret = '…' to sign its deliveries (or unsigned = true)"))
                    continue
                out[key] = WebhookNotifier(cfg.url, cfg.secret, client, clock=clock, name=key, unsigned=cfg.unsigned and not cfg.secret)
            elif cfg.type == "email":
                if not smtp_url:
                    problems.append(ConfigProblem(roster.source, where, "an email notifier needs the daemon's smtp_url (smtp://host:port)"))
                    continue
                out[key] = EmailNotifier(smtp_url, sender, cfg.to, smtp_timeout, name=key)
            elif cfg.type == "sms":
                phones = _phones(unit, cfg)
                if not phones:
                    problems.append(ConfigProblem(roster.source, where, "an sms notifier needs to = ['+86…'] or contacts with a phone"))
                    continue
                out[key] = SmsNotifier(cfg.url, client, phones, name=key)
            elif cfg.type in PROVIDER_TYPES:
                try:
                    out[key] = build_provider_notifier(cfg, client, phones=_phones(unit, cfg), name=key)
                except ValueError as exc:  # a missing phone or an unreadable secret: at start, named
                    problems.append(ConfigProblem(roster.source, where, str(exc)))
            else:
                out[key] = JsonlNotifier(_jsonl_path(data, unit.admin, cfg), name=key)
    if problems:
        raise ConfigError(problems)
    return out


def _recipients(unit: Unit, cfg: Notify) -> list[str]:
    if cfg.type == "email":
        return list(cfg.to)
    if cfg.type == "sms" or cfg.type in CLOUD_SMS_TYPES:
        return _phones(unit, cfg)
    if cfg.type == "webhook":
        return [cfg.url]
    return [c.name for c in unit.contacts]


def route(notify: NotifyAction | Mapping[str, Any], roster: Roster) -> list[tuple[str, list[str]]]:
    """[(notifier key, recipients)] for an engine ``Notify`` (or its ``to_dict()``).

    Recipients are what the channel addresses: email addresses, phone numbers, the webhook
    URL, or the unit's contact names for MQTT and JSONL. A unit missing from the roster, or
    one without notifiers, still leaves a trace: the audit notifier.
    """
    admin = notify.admin if isinstance(notify, NotifyAction) else str(notify["admin"])
    unit = roster.units.get(admin)
    if unit is None or not unit.notify:
        return [(AUDIT_KEY, [])]
    return [(key, _recipients(unit, cfg)) for key, cfg in unit_notifiers(unit)]


def subject_for(kind: str, level: int, site: str | None, exercise: bool, what: str = "") -> str:
    """One line: exercise mark, level in Chinese and English, site, kind. The subject of the
    daemon's own messages (CAP, device commands); a unit's notifications are worded by
    alerts/texts.py in its language."""
    info = LEVELS.get(level)
    parts = [EXERCISE_PREFIX] if exercise else []
    if info is not None and level > 0:
        parts.append(f"{_COLOUR_ZH[level]}{info.zh} {info.en} ({info.colour})")
    if site:
        parts.append(site)
    parts.append(kind.replace("_", " ") + (f": {what}" if what else ""))
    return " ".join(parts).replace("\n", " ")


def outgoing_for(
    notify: NotifyAction,
    roster: Roster,
    registry: Registry | None = None,
    *,
    tz: str = "Asia/Shanghai",
    reason: str = "",
    extra: Mapping[str, Any] | None = None,
) -> list[Outgoing]:
    """The messages an engine ``Notify`` becomes: one per notifier of its unit, id
    ``"<notify id>/<notifier key>"``. The body is the full notification plus the recipients
    and ``message``, the structured words the notifiers lay out.

    Subject and text are in the unit's language (alerts/texts.py): the site's name and card
    from ``registry``, times in ``tz``, ``reason`` (the site state's) in words, ``extra`` (what
    the chain adds: a zero report's figures). The engine's English sentence stays in the body
    as ``text``."""
    if not notify.id:
        raise ValueError("outgoing_for: the Notify has no id (the engine gives every notification one)")
    unit = roster.units.get(notify.admin)
    contacts = [c.model_dump() for c in unit.contacts] if unit is not None else []
    site = registry.sites.get(notify.site) if registry is not None and notify.site else None
    words = render(notify, unit, site, tz=tz, reason=reason, extra=extra)
    subject, text = words.subject, words.text
    out = []
    for key, recipients in route(notify, roster):
        body = {**notify.to_dict(), "contacts": contacts, "delivery": {"notifier": key, "to": recipients}, "message": dict(words.message)}
        out.append(
            Outgoing(
                id=f"{notify.id}/{key}",
                notifier=key,
                kind=notify.kind,
                admin=notify.admin,
                site=notify.site,
                level=notify.level,
                subject=subject,
                text=text,
                body=body,
                t=notify.t,
                exercise=notify.exercise,
            )
        )
    return out


def operator_keys(notifiers: Mapping[str, Any]) -> list[str]:
    """The notifiers that reach the operators: the national unit's, then the audit."""
    keys = sorted(k for k in notifiers if k.startswith(NATIONAL + "/"))
    if AUDIT_KEY in notifiers:
        keys.append(AUDIT_KEY)
    return keys
