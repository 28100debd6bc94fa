"""Commands in the national geohazard IoT convention's own form, and the devices' answers.

GeoWarn's own devices take ``{"cmd": "set_sampling", ...}`` JSON on ``{prefix}/{site}/{device}/cmd``;
a universal (普适型) device of the convention takes key-value text and answers in kind. What is
implemented here, and where it comes from:

- **Form.** ``$cmd=<name>&key=value&...``; accelerated sampling and back is
  ``$cmd=setsensortime&sensor_id=<channel>&sample_intv=<s>&upload_intv=<s>&plus_intv=<s>``
  (``sensor_id`` a convention channel such as ``L1_LF_1``; intervals in whole seconds; the
  firmware's own example is ``$cmd=setsensortime&sensor_id=L3_TW_2&sample_intv=300&upload_intv=900&plus_intv=600``;
  it accepts sample and plus intervals of 1–86400 s and upload intervals of 1–259200 s and
  answers ``fail`` outside them). ``plus_intv`` is the interval the device itself switches to
  when it crosses its own thresholds (加密).
- **Identity.** The platform appends ``&apikey=<the device's apikey>&msgid=<id>`` to every
  command, after its parameters (the firmware's own example:
  ``$cmd=reqtime&apikey=e7eb73db9cc982caeb1f&msgid=B6ZmaDbzA``). ``cigemRxdataTask`` looks for
  ``&apikey=`` anywhere in the text and compares what follows with its own key; a command
  without it, or with another key, is **dropped without an answer** (only the firmware's debug
  port says so), as is a msgid it has just executed. Its answer ends with the same
  ``&apikey=…&msgid=…`` (``cigemPacketAckapikey``). So the msgid is what matches an answer to
  its command (an answer carries no device code, and an MQTT PUBLISH no client id), and a device
  whose apikey GeoWarn lacks or has wrong never answers: the console marks such a command
  unanswered once ``answer_window_s`` has passed. GeoWarn keeps the key out of everything it
  stores: the outbox holds the command without it and the command notifier inserts it
  (``with_apikey``) as it publishes; ``redact`` hides it in any text shown.
- **Answer.** ``$cmd=<name>&result=succ`` or ``…&result=fail``, then ``&apikey=…&msgid=…``.
- **Topics.** The device subscribes to ``$creq/{client id}/+`` and takes ``$creq/{client id}/cmd``
  as commands (``…/firmware`` is firmware); the client id is the device ID its payloads are keyed
  by (the registry's ``code``). It answers on ``$dr`` (QoS 0, retained).
- **Work mode.** ``$cmd=setworkmode&mode=<c>``: the firmware reads the one character right
  after ``setworkmode&mode=`` (so ``mode`` comes first, the apikey and msgid after it) and
  accepts ``'0'`` run, ``'1'`` low power, ``'2'`` plus (加密: it samples at ``plus_intv`` and
  uploads every sample), answering ``fail`` for anything else (``enum workmode`` in the same
  firmware's ``gprs.h``; ``cigemPacket.h`` has the same enum commented out;
  ``cigemperiodTypeAdj`` is what each mode does). GeoWarn sends ``mode=2`` after the
  ``setsensortime`` commands that accelerate a device (its plus interval is then the
  accelerated one) and ``mode=0`` after those that restore it: a device the platform or its
  own thresholds left in plus mode would otherwise stay at ``plus_intv`` and drain its battery.
  GeoWarn never sends ``'1'``. These values are one vendor's firmware (no public copy of the
  draft standard's 附录E was found): a device that answers ``fail`` to them shows it in the
  console; its ``setsensortime`` alone still changes its interval.

Sources: ../shared/DEVICES-CN.md ("Commands (down) and answers (up)"); a public universal
device firmware (insentek, 2020: ``cigemPacket.c`` — ``cigemRxdataTask``, ``findsensortime``,
``cigemPacketAckResult``, ``cigemPacketAckapikey``; ``cigemPacket.h`` — the interval bounds
``CIGEM_TIME_*``; ``mqttTransport.c`` — ``$creq/{id}/+`` and ``$dr``); the draft DZ/T
《地质灾害监测数据通信技术要求》 lists "8.6 指令内容及响应格式" and "附录E 指令内容参数说明" (only its
table of contents was found).

Every answer is hostile: parsing is bounded and refuses what is not the form (``CommandError``).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

#: Where a convention device takes its commands ({code}: the registry's device code) and answers.
COMMAND_TOPIC = "$creq/{code}/cmd"
REPLY_TOPIC = "$dr"
#: The firmware's accepted ranges (CIGEM_TIME_SAMPLE/UPLOAD/PLUS_MIN/MAX), seconds.
INTERVAL_MIN_S = 1
SAMPLE_MAX_S = 86400
UPLOAD_MAX_S = 259200
#: The firmware's initial plus_intv (CIGEM_TIME_PLUS_INIT): what a restore leaves it at at most.
PLUS_DEFAULT_S = 300
#: A command no answer came to within this long, or two of the device's slowest reporting
#: intervals if longer (a device may only be connected when it uploads), is shown unanswered.
ANSWER_WINDOW_MIN_S = 600.0
#: setworkmode's modes (the firmware's enum workmode).
WORKMODE_RUN, WORKMODE_LOWPOWER, WORKMODE_PLUS = "0", "1", "2"
WORKMODES = (WORKMODE_RUN, WORKMODE_LOWPOWER, WORKMODE_PLUS)

MAX_TEXT = 2048
MAX_PAIRS = 32
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
_VALUE = re.compile(r"[^&\s]{0,128}")
_SENSOR = re.compile(r"L[0-9]_[A-Z]{2}_[0-9]{1,3}")


class CommandError(ValueError):
    """Text that is not a command or answer of the convention's form."""


@dataclass(frozen=True)
class Answer:
    """A device's answer: which command, ``succ`` or ``fail``, and the msgid it echoes."""

    cmd: str
    result: str
    msgid: str | None

    @property
    def ok(self) -> bool:
        return self.result == "succ"


def answer_window_s(slowest_interval_s: float) -> float:
    """How long GeoWarn waits for a device's answer before it shows the command unanswered."""
    return max(ANSWER_WINDOW_MIN_S, 2.0 * slowest_interval_s)


def command_topic(code: str) -> str:
    return COMMAND_TOPIC.format(code=code)


def sensor_ids(sources: Iterable[str | None]) -> list[str]:
    """The convention channels (``L1_LF_1``) that a device's channel sources read, in order,
    once each; status (``S1_ZT_n``) is no sensor."""
    out: list[str] = []
    for src in sources:
        if not src:
            continue
        sid = src.partition(".")[0]
        if _SENSOR.fullmatch(sid) and sid not in out:
            out.append(sid)
    return out


def msgid_for(command_id: str) -> str:
    """A stable msgid of 32 hex digits for an outbox command id (the firmware keeps up to 47
    characters); the same command always gets the same msgid, so a resend is not re-executed."""
    return hashlib.sha256(command_id.encode("utf-8")).hexdigest()[:32]


def _seconds(value: float, high: int) -> int:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"interval must be > 0 s, got {value}")
    return min(high, max(INTERVAL_MIN_S, int(math.ceil(value - 1e-9))))


def setsensortime(sensor_id: str, sample_s: float, upload_s: float, plus_s: float, msgid: str, apikey: str | None = None) -> str:
    """The ``setsensortime`` command, intervals rounded up to whole seconds within the
    firmware's ranges; ``&apikey=`` only when the device's key is known."""
    if not _SENSOR.fullmatch(sensor_id):
        raise ValueError(f"sensor_id {sensor_id!r} is not a channel of the convention, e.g. 'L1_LF_1'")
    text = (
        f"$cmd=setsensortime&sensor_id={sensor_id}&sample_intv={_seconds(sample_s, SAMPLE_MAX_S)}"
        f"&upload_intv={_seconds(upload_s, UPLOAD_MAX_S)}&plus_intv={_seconds(plus_s, SAMPLE_MAX_S)}"
    )
    if apikey:
        text += f"&apikey={apikey}"
    return text + f"&msgid={msgid}"


def setworkmode(mode: str, msgid: str) -> str:
    """The ``setworkmode`` command (``mode`` one of ``WORKMODES``, right after the command
    name, where the firmware reads it)."""
    if mode not in WORKMODES:
        raise ValueError(f"work mode {mode!r} is none of the firmware's {', '.join(WORKMODES)}")
    return f"$cmd=setworkmode&mode={mode}&msgid={msgid}"


_APIKEY = re.compile(r"[A-Za-z0-9_.~-]{1,48}")


def with_apikey(text: str, apikey: str) -> str:
    """``text`` (a command GeoWarn wrote) with ``&apikey=<apikey>`` where the platform puts it:
    after the parameters, before ``&msgid=``."""
    if not _APIKEY.fullmatch(apikey):
        raise ValueError("an apikey is 1-48 letters, digits, '_', '.', '~' or '-'")
    head, sep, msgid = text.partition("&msgid=")
    return f"{head}&apikey={apikey}{sep}{msgid}"


def redact(text: str) -> str:
    """``text`` with the value of every ``apikey=`` hidden (for logs and anything shown)."""
    return re.sub(r"(apikey=)[^&\s]*", r"\1***", text)


def parse(payload: bytes | str) -> dict[str, str]:
    """A command or answer as ``{"$cmd": name, key: value, ...}``; ``CommandError`` if it is
    not ``$cmd=name&key=value...`` (bounded: 2 KiB, 32 pairs, 32-character keys, 128-character values)."""
    if isinstance(payload, bytes):
        if len(payload) > MAX_TEXT:
            raise CommandError(f"longer than {MAX_TEXT} bytes")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise CommandError("not UTF-8 text") from None
    else:
        text = payload
    text = text.strip()
    if len(text) > MAX_TEXT or not text.startswith("$cmd="):
        raise CommandError("does not start with $cmd=")
    parts = text.split("&")
    if len(parts) > MAX_PAIRS:
        raise CommandError(f"more than {MAX_PAIRS} key=value pairs")
    out: dict[str, str] = {}
    for i, part in enumerate(parts):
        key, eq, value = part.partition("=")
        if i == 0:
            key = "$cmd"
        elif not _KEY.fullmatch(key):
            raise CommandError(f"bad key {key[:40]!r}")
        if not eq or not _VALUE.fullmatch(value):
            raise CommandError(f"bad value of {key}")
        out[key] = value
    if not _KEY.fullmatch(out["$cmd"]):
        raise CommandError(f"bad command name {out['$cmd'][:40]!r}")
    return out


def parse_answer(payload: bytes | str) -> Answer:
    """A device's answer; ``CommandError`` when it is no ``result=succ|fail`` answer."""
    doc = parse(payload)
    result = doc.get("result")
    if result not in ("succ", "fail"):
        raise CommandError(f"$cmd={doc['$cmd']} carries no result=succ|fail")
    return Answer(doc["$cmd"], result, doc.get("msgid") or None)


def answer(cmd: str, ok: bool, msgid: str | None, apikey: str | None = None) -> str:
    """An answer as the firmware writes it (the simulator's devices answer with it)."""
    text = f"$cmd={cmd}&result={'succ' if ok else 'fail'}"
    if apikey:
        text += f"&apikey={apikey}"
    if msgid:
        text += f"&msgid={msgid}"
    return text
