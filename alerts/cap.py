"""CAP 1.2 messages for GeoWarn warnings (DESIGN §5): one OASIS Common Alerting Protocol
``<alert>`` per alert event, and validation against the OASIS CAP 1.2 XML schema.

This module owns the mapping from an alert event (``alerts/log.py``) plus its site card
(``config/registry.py``) to CAP:

- ``identifier`` is derived from the event id, so a replay or a redelivery after a restart
  produces the same identifier (and the same bytes) for the same event;
- ``sent`` is the event time, not the wall clock, with a numeric offset (CAP forbids ``Z``
  and fractional seconds are outside the schema's pattern);
- ``msgType`` Alert for a new warning (kind ``raise``), Update for a level change
  (``upgrade``/``downgrade``), Cancel when it is lifted (``lift``); Update and Cancel carry
  ``<references>`` to the earlier messages of the same warning, which the caller supplies
  (see ``cap_reference``);
- ``status`` Exercise for drills, never Actual;
- one ``<info>`` in zh-CN and one in en-US, with severity/urgency/certainty/responseType from
  the level (``geowarn.core.levels.LEVELS``), and a circle around the site as ``<area>``.

The schema is the OASIS CAP 1.2 XSD, vendored unchanged with its notice in
``alerts/schemas/``; it is loaded once into a ``CapSchema`` that the composition root (or a test fixture) holds.

Cancel messages keep an ``<info>`` block so that receivers can display *why* the warning
ended and what residents should do now (common practice, and the only place CAP 1.2 has
for ``AllClear``). Its values: responseType ``AllClear`` ("the subject event no longer poses
a threat"), urgency ``Past`` ("responsive action is no longer required"), severity ``Minor``
("minimal to no known threat"), certainty ``Unlikely`` (the warned failure is no longer
expected).

China's profile (``CnProfile``, GB/T 35965.1-2018《应急信息交互协议 第1部分:预警信息》, the
exchange format of the national emergency early-warning release system, 12379). A county's
roster unit with ``cap_profile = "cn"`` and its ``cap_sender_code`` selects it for the CAP of
its sites (``cap_profile_for``; ``ResponseChain.cap_xml``); every other unit keeps plain OASIS
CAP, unchanged. The message stays OASIS CAP 1.2 and validates against the same schema:

- ``identifier`` is ``ZZZZZZDDDUUUXX_YYYYMMDDhhmmss_N`` (31 characters): the 发布单位代码, the
  entry time in Beijing time in the basic format, and a sequence digit 0-9 (``cn_identifier``
  says how GeoWarn picks it without seeing other messages);
- ``sender`` is the 14-digit 发布单位代码 ``ZZZZZZDDDUUUXX``: GB/T 2260 admin code (6), GB/T 4657
  organisation code (3), the unit's internal code (3, default ``000``), an extension (2,
  default ``00``) — the roster's ``cap_sender_code``; the unit's name goes in ``<senderName>``;
- every time is Beijing time written with the offset ``+08:00`` (fixed UTC+8, whatever ``tz``);
- one ``<info>``, ``language`` ``zh-CN``;
- ``<geocode>`` is the site's 6-digit GB/T 2260 admin code (valueName ``GB/T 2260``,
  configurable as ``CnProfile.geocode_name``);
- CAP's ``severity`` cannot hold China's colours (its values are fixed by the OASIS schema), so
  the colour and grade are parameters: ``预警颜色`` 蓝色/黄色/橙色/红色 and ``预警级别``
  Ⅳ级/Ⅲ级/Ⅱ级/Ⅰ级 for levels 1-4 (a Cancel names the warning it lifts), besides GeoWarn's own.

Sources, and what could not be confirmed. The standard's own text was not available; the
identifier, sender-code and time rules are those of a public copy of its normative Annex A
("取值规则及说明", A.1.1 预警信息唯一标识, A.1.2 发布单位代码, A.1.3 日期时间型: Beijing time, offset
08:00) at https://www.jinchutou.com/shtml/25cd0d617477fb1ef0263dc586040187.html; local standards
built on GB/T 35965.1 (DB12/T 1128-2022 Tianjin, DB63/T 1748-2019 Qinghai) describe the same
sender code (admin code + organisation code + extension). The four grades and colours (一级 the
highest, red; then orange, yellow, blue) are those of the Emergency Response Law
(《中华人民共和国突发事件应对法》). Not confirmed, and so kept out or configurable: the
standard's own element for the unit's code (written here as ``<sender>``, since CAP 1.2 has no
other place), its parameter names for colour and grade (``预警颜色``/``预警级别`` are GeoWarn's),
its ``<geocode>`` valueName, whether it allows more than one ``<info>``, and the GB/T 35561
event-type code for geohazards (no such ``<eventCode>`` is written); no real 12379 CAP message
could be found to compare with.
"""

from __future__ import annotations

from importlib import resources
import math
import re
import threading
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, TypeGuard
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lxml import etree

from geowarn.core.levels import LEVELS
from geowarn.config.registry import Site
from geowarn.config.roster import Roster

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
#: Placeholder sender (``.invalid`` is a reserved TLD): deployments set their own, globally
#: unique per CAP, e.g. from the alerting authority's domain.
DEFAULT_SENDER = "geowarn@example.invalid"
DEFAULT_TZ = "Asia/Shanghai"
GEOCODE_SCHEME = "GB/T 2260"
#: Beijing time, UTC+8 all year (GB/T 35965.1 Annex A.1.3: the offset is always 08:00).
#: Not Asia/Shanghai, which kept summer time in 1986-1991.
BEIJING = timezone(timedelta(hours=8), "Beijing")
#: 发布单位代码 (Annex A.1.2): admin code (6), GB/T 4657 organisation code (3), internal (3), extension (2).
CN_SENDER_CODE = re.compile(r"[0-9]{14}")
#: Colour and grade of each level as China writes them (突发事件应对法: 一级 is the highest, red).
CN_COLOUR = {1: "蓝色", 2: "黄色", 3: "橙色", 4: "红色"}
CN_GRADE = {1: "Ⅳ级", 2: "Ⅲ级", 3: "Ⅱ级", 4: "Ⅰ级"}
#: parameter valueNames of the colour and grade under the China profile.
CN_COLOUR_PARAM, CN_GRADE_PARAM = "预警颜色", "预警级别"

#: (sender, identifier, sent) of an earlier message: CAP's "extended message identifier".
Reference = tuple[str, str, str]

MSG_TYPE: dict[str, str] = {"raise": "Alert", "upgrade": "Update", "downgrade": "Update", "lift": "Cancel"}

#: urgency, severity, certainty, responseType of a Cancel (see the module docstring).
CANCEL_URGENCY, CANCEL_SEVERITY, CANCEL_CERTAINTY, CANCEL_RESPONSE = "Past", "Minor", "Unlikely", "AllClear"

_COLOUR_ZH = {1: "蓝色", 2: "黄色", 3: "橙色", 4: "红色"}
_HAZARD_ZH = {
    "landslide": "滑坡",
    "collapse": "崩塌",
    "debris_flow": "泥石流",
    "ground_fissure": "地裂缝",
    "subsidence": "地面塌陷",
    "unstable_slope": "不稳定斜坡",
}
_HAZARD_EN = {
    "landslide": "landslide",
    "collapse": "rockfall/collapse",
    "debris_flow": "debris flow",
    "ground_fissure": "ground fissure",
    "subsidence": "ground subsidence",
    "unstable_slope": "unstable slope",
}

# CAP 1.2: identifier and sender "MUST NOT include spaces, commas or restricted characters
# (< and &)"; date-times are [dateTime] with a numeric offset and no fractional seconds.
_TOKEN = re.compile(r"[^\s,<&]+")
_CAP_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")
# Characters XML 1.0 cannot carry at all; lxml refuses them, so a stray one in a detector's
# reason would otherwise stop a warning from going out.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_XSD = "schemas/CAP-v1.2-schema.xsd"


class CapError(ValueError):
    """A CAP message that cannot be built from its inputs, or that does not validate."""


# -- times and identifiers ------------------------------------------------------------------


def cap_time(t: str | float, tz: str = DEFAULT_TZ) -> str:
    """A CAP date-time: ``2026-11-29T17:30:00+08:00``, in zone ``tz``, whole seconds.

    ``t`` is an RFC 3339 string with an offset (an event's ``t``) or epoch seconds (a
    forecast's ``failure_time``). Sub-seconds are truncated: the schema's pattern has none.
    UTC is written ``-00:00``, as CAP 1.2 asks.
    """
    return _cap_time(t, _zone(tz))


def _cap_time(t: str | float, zone: tzinfo) -> str:
    if isinstance(t, str):
        try:
            dt = datetime.fromisoformat(t)
        except ValueError:
            raise CapError(f"time {t!r} is not an RFC 3339 date-time") from None
        if dt.tzinfo is None:
            raise CapError(f"time {t!r} has no UTC offset; CAP needs an absolute time")
        dt = dt.astimezone(zone)
    else:
        if not math.isfinite(t) or not 0 <= t < 253402300799:
            raise CapError(f"time {t!r} is not an epoch time between 1970 and 9999")
        dt = datetime.fromtimestamp(t, zone)
    text = dt.replace(microsecond=0).isoformat()
    return text[:-6] + "-00:00" if text.endswith("+00:00") else text


def cap_identifier(event: Mapping[str, Any], profile: CnProfile | None = None) -> str:
    """The CAP identifier of an event's message: stable, because the event id is.

    Drills get their own prefix so that a receiver that ignores ``status`` still cannot mix
    one up with a real warning. Under the China profile it is ``cn_identifier``'s instead.
    """
    if profile is not None:
        return cn_identifier(event, profile.sender_code)
    prefix = "geowarn-exercise-" if event.get("exercise") else "geowarn-"
    ident = prefix + str(event["id"])
    _check_token(ident, "identifier")
    return ident


def cap_reference(
    event: Mapping[str, Any], *, sender: str = DEFAULT_SENDER, tz: str = DEFAULT_TZ, profile: CnProfile | None = None
) -> Reference:
    """The (sender, identifier, sent) triple by which later messages reference this event's
    message; computed from the event alone, so the chain can be rebuilt from alerts.jsonl.
    Under the China profile the sender is its sender code and the time Beijing time."""
    if profile is not None:
        return (profile.sender_code, cn_identifier(event, profile.sender_code), _cap_time(event["t"], BEIJING))
    _check_token(sender, "sender")
    return (sender, cap_identifier(event), cap_time(event["t"], tz))


# -- China's profile (GB/T 35965.1) -------------------------------------------------------------


@dataclass(frozen=True)
class CnProfile:
    """China's CAP profile (GB/T 35965.1-2018; see the module docstring for what each rule
    rests on). ``sender_code`` is the 14-digit 发布单位代码, ``sender_name`` the unit's name
    (``<senderName>``); ``geocode_name`` the ``<geocode>`` valueName of the GB/T 2260 code."""

    sender_code: str
    sender_name: str = ""
    geocode_name: str = GEOCODE_SCHEME

    def __post_init__(self) -> None:
        if not CN_SENDER_CODE.fullmatch(self.sender_code):
            raise CapError(
                f"China-profile sender code {self.sender_code!r} must be 14 digits: GB/T 2260 admin code (6), "
                "GB/T 4657 organisation code (3), internal code (3, default 000), extension (2, default 00)"
            )
        if not self.geocode_name.strip():
            raise CapError("the geocode valueName must not be empty")


def cap_profile_for(roster: Roster | None, admin: str) -> CnProfile | None:
    """The profile of the CAP messages of sites in county ``admin``: the roster's unit for that
    county decides (``cap_profile = "cn"`` with its ``cap_sender_code``); no unit, or
    ``"oasis"``, gives None: plain OASIS CAP, as before."""
    unit = roster.units.get(admin) if roster is not None else None
    if unit is None or unit.cap_profile != "cn":
        return None
    return CnProfile(unit.cap_sender_code, unit.name)


def cn_identifier(event: Mapping[str, Any], sender_code: str) -> str:
    """``<sender code>_<YYYYMMDDhhmmss>_<N>`` (31 characters, GB/T 35965.1 Annex A.1.1): the
    unit's 14-digit code, the event time in Beijing time, and N, one digit 0-9.

    The standard counts N from 0 among one unit's messages of the same second. Worked out from
    the event alone (so a replay, a restart or a reference gives the same identifier), N is a
    digit of a CRC-32 of the event id and its exercise flag: two messages of one unit in the
    same second take the same N one time in ten. Nothing here can see the other messages.
    """
    if not CN_SENDER_CODE.fullmatch(sender_code):
        raise CapError(f"China-profile sender code {sender_code!r} must be 14 digits")
    when = datetime.fromisoformat(_cap_time(event["t"], BEIJING))
    n = zlib.crc32(f"{int(bool(event.get('exercise')))}|{event['id']}".encode()) % 10
    return f"{sender_code}_{when:%Y%m%d%H%M%S}_{n}"


# -- building ---------------------------------------------------------------------------------


def build_cap(
    event: Mapping[str, Any],
    site: Site,
    *,
    sender: str = DEFAULT_SENDER,
    references: Sequence[Reference] | None = None,
    area_radius_km: float = 2.0,
    tz: str = DEFAULT_TZ,
    profile: CnProfile | None = None,
    identifier: str | None = None,
) -> bytes:
    """The CAP 1.2 ``<alert>`` (UTF-8 XML bytes) for one alert event of ``site``.

    ``identifier``: the China profile's identifier as the chain allocated it (``N`` unique
    among the unit's messages of that second); by default the event's own.

    ``profile`` None is plain OASIS CAP; a ``CnProfile`` gives China's profile (module
    docstring): its sender code replaces ``sender`` and Beijing time replaces ``tz``, and
    ``references`` must then come from ``cap_reference`` with the same profile.

    ``references`` are the earlier messages of the same warning, oldest first (use
    ``cap_reference`` on their events): required for an Update or a Cancel, refused for an
    Alert, which starts a new warning. Events of kind ``nodata``/``nodata_end`` have no CAP
    message: missing data is a technical condition for the duty officer, not a public
    warning (and it never changes the level). Raises ``CapError`` naming the problem.

    The result is deterministic: the same event, site and arguments give the same bytes.
    Validate it with ``CapSchema.validate`` before sending.
    """
    kind = event.get("kind")
    if kind not in MSG_TYPE:
        raise CapError(
            f"event {event.get('id')!r} of kind {kind!r} has no CAP message; "
            f"only {', '.join(MSG_TYPE)} do (no-data conditions go to the duty officer, not the public)"
        )
    msg_type = MSG_TYPE[kind]
    if event.get("site") != site.site:
        raise CapError(f"event {event.get('id')!r} is for site {event.get('site')!r}, but the site card given is {site.site!r}")
    level, previous = int(event["level"]), int(event.get("previous_level") or 0)
    if msg_type == "Cancel":
        if level != 0 or previous not in _COLOUR_ZH:
            raise CapError(f"a lift goes from a level 1-4 to 0, not from {previous} to {level}")
    elif level not in _COLOUR_ZH:
        raise CapError(f"a {kind} needs a warning level 1-4, not {level}")
    if not (math.isfinite(area_radius_km) and area_radius_km > 0):
        raise CapError(f"area_radius_km must be a positive number of kilometres, not {area_radius_km!r}")
    _check_token(sender, "sender")
    zone = _zone(tz) if profile is None else BEIJING
    if profile is not None:
        sender = profile.sender_code

    refs = list(references or ())
    if msg_type == "Alert" and refs:
        raise CapError("a raise starts a new warning (msgType Alert) and references no earlier message")
    if msg_type != "Alert" and not refs:
        raise CapError(f"a {kind} (msgType {msg_type}) must reference the earlier messages of the warning")
    for ref in refs:
        _check_reference(ref)

    identifier = identifier if identifier is not None and profile is not None else cap_identifier(event, profile)
    sent = _cap_time(event["t"], zone)
    if any(r[0] == sender and r[1] == identifier for r in refs):
        raise CapError(f"message {identifier} cannot reference itself")
    exercise = bool(event.get("exercise"))
    # A drill's Update or Cancel must never supersede a real warning, nor the reverse. (The
    # China profile's identifiers do not show a drill: there the engine's keeping drills and
    # real warnings apart is what holds.)
    for r in refs if profile is None else ():
        if r[0] == sender and r[1].startswith("geowarn-exercise-") != exercise:
            raise CapError(
                f"{'an exercise' if exercise else 'a real'} message cannot reference "
                f"{'a real' if exercise else 'an exercise'} one ({r[1]})"
            )

    alert = etree.Element(f"{{{CAP_NS}}}alert", nsmap={None: CAP_NS})
    _sub(alert, "identifier", identifier)
    _sub(alert, "sender", sender)
    _sub(alert, "sent", sent)
    _sub(alert, "status", "Exercise" if exercise else "Actual")
    _sub(alert, "msgType", msg_type)
    _sub(alert, "scope", "Public")
    if exercise:
        _sub(alert, "note", "GeoWarn 演练,非真实预警。" + ("" if profile else "GeoWarn drill: this is not a real warning."))
    if refs:
        _sub(alert, "references", " ".join(",".join(r) for r in refs))
    for lang in ("zh-CN",) if profile else ("zh-CN", "en-US"):
        _info(alert, lang, event, site, msg_type, level, previous, exercise, area_radius_km, zone, profile)
    return etree.tostring(alert, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _info(
    alert: etree._Element,
    lang: str,
    event: Mapping[str, Any],
    site: Site,
    msg_type: str,
    level: int,
    previous: int,
    exercise: bool,
    radius_km: float,
    zone: tzinfo,
    profile: CnProfile | None,
) -> None:
    zh = lang == "zh-CN"
    cancel = msg_type == "Cancel"
    info = _sub(alert, "info")
    _sub(info, "language", lang)
    _sub(info, "category", "Geo")
    _sub(info, "event", "地质灾害预警" if zh else "Geohazard warning")
    if cancel:
        response, urgency, severity, certainty = CANCEL_RESPONSE, CANCEL_URGENCY, CANCEL_SEVERITY, CANCEL_CERTAINTY
    else:
        lv = LEVELS[level]
        response, urgency, severity, certainty = lv.cap_response, lv.cap_urgency, lv.cap_severity, lv.cap_certainty
    _sub(info, "responseType", response)
    _sub(info, "urgency", urgency)
    _sub(info, "severity", severity)
    _sub(info, "certainty", certainty)
    code = _sub(info, "eventCode")
    _sub(code, "valueName", "GeoWarnHazard")
    _sub(code, "value", site.hazard)
    if profile is not None and profile.sender_name:
        _sub(info, "senderName", profile.sender_name)

    drill = ("【演练】" if zh else "[EXERCISE] ") if exercise else ""
    _sub(info, "headline", drill + _headline(zh, site, level, previous, cancel))
    _sub(info, "description", _description(zh, event, site, msg_type, level, previous, zone))
    _sub(info, "instruction", _instruction(zh, site, response))
    contact = " ".join(p for p in (site.responsible, site.phone) if p)
    if contact:
        _sub(info, "contact", contact)

    forecast = event.get("forecast") or {}
    failure_time = forecast.get("failure_time")
    parameters = [
        ("GeoWarnSite", site.site),
        ("GeoWarnLevel", str(level)),
        ("GeoWarnColour", LEVELS[level].colour),
        ("GeoWarnPreviousLevel", str(previous)),
    ]
    if profile is not None:
        # The colour and grade of the warning, which CAP's severity cannot carry; a Cancel
        # names the warning it lifts.
        warned = previous if cancel else level
        parameters += [(CN_COLOUR_PARAM, CN_COLOUR[warned]), (CN_GRADE_PARAM, CN_GRADE[warned])]
    if not cancel and _finite(failure_time):
        parameters.append(("ForecastFailureTime", _cap_time(float(failure_time), zone)))
    parameters.append(("ThreatenedPeople", str(site.threatened_people)))
    for name, value in parameters:
        p = _sub(info, "parameter")
        _sub(p, "valueName", name)
        _sub(p, "value", value)

    area = _sub(info, "area")
    _sub(area, "areaDesc", f"{site.name}(行政区划代码 {site.admin})" if zh else f"{site.name} (admin code {site.admin})")
    _sub(area, "circle", f"{_decimal(site.lat, 6)},{_decimal(site.lon, 6)} {_decimal(radius_km, 3)}")
    geocode = _sub(area, "geocode")
    _sub(geocode, "valueName", GEOCODE_SCHEME if profile is None else profile.geocode_name)
    _sub(geocode, "value", site.admin)


def _level_text(zh: bool, level: int) -> str:
    lv = LEVELS[level]
    return f"{_COLOUR_ZH[level]}预警({lv.zh})" if zh else f"{lv.colour} ({lv.en})"


def _headline(zh: bool, site: Site, level: int, previous: int, cancel: bool) -> str:
    if cancel:
        if zh:
            return f"{site.name} 地质灾害预警解除(原{_level_text(True, previous)})"
        return f"Geohazard warning lifted for {site.name} (was {_level_text(False, previous)})"
    if zh:
        return f"{site.name} 地质灾害{_level_text(True, level)}"
    lv = LEVELS[level]
    return f"{lv.colour.capitalize()} geohazard warning ({lv.en}) for {site.name}"


def _description(
    zh: bool, event: Mapping[str, Any], site: Site, msg_type: str, level: int, previous: int, zone: tzinfo
) -> str:
    lines: list[str] = []
    hazard = _HAZARD_ZH[site.hazard] if zh else _HAZARD_EN[site.hazard]
    if msg_type == "Cancel":
        lines.append(f"{_level_text(zh, previous)}已解除。" if zh else f"The {_level_text(False, previous)} warning is lifted.")
    elif msg_type == "Update":
        verb = ("升级" if level > previous else "降级") if zh else ("raised" if level > previous else "lowered")
        if zh:
            lines.append(f"预警由{_level_text(True, previous)}{verb}为{_level_text(True, level)}。")
        else:
            lines.append(f"Warning {verb} from {_level_text(False, previous)} to {_level_text(False, level)}.")
    lines.append(f"隐患类型:{hazard}。" if zh else f"Hazard: {hazard}.")
    reason = str(event.get("reason") or "").strip()
    if reason:
        lines.append(f"依据:{reason}" if zh else f"Basis: {reason}")
    forecast = event.get("forecast") or {}
    if msg_type != "Cancel" and _finite(forecast.get("failure_time")):
        when = _cap_time(float(forecast["failure_time"]), zone)
        extras: list[str] = []
        if _finite(forecast.get("uncertainty_s")):
            hours = float(forecast["uncertainty_s"]) / 3600.0
            extras.append(f"±{hours:.1f} 小时" if zh else f"± {hours:.1f} h")
        if _finite(forecast.get("r2")):
            extras.append(f"R²={float(forecast['r2']):.2f}")
        tail = ("(" + ",".join(extras) + ")" if zh else " (" + ", ".join(extras) + ")") if extras else ""
        lines.append(f"预测失稳时间:{when}{tail}。" if zh else f"Forecast failure time: {when}{tail}.")
    if site.threatened_people:
        lines.append(f"受威胁人数:{site.threatened_people} 人。" if zh else f"People threatened: {site.threatened_people}.")
    return "\n".join(lines)


def _instruction(zh: bool, site: Site, response: str) -> str:
    """What residents do, from the site card (防灾明白卡). Yellow and above name the route and
    the shelter; blue asks people to follow further warnings; a Cancel tells evacuees to wait
    for the responsible person before going home."""
    parts: list[str] = []
    if response == "AllClear":
        if zh:
            parts.append("预警已解除。已撤离人员须经责任人确认安全后方可返回。")
        else:
            parts.append("The warning is lifted. Evacuated residents return home only when the responsible person confirms it is safe.")
    elif response == "Monitor":
        parts.append("请密切关注后续预警信息。" if zh else "Watch for further warnings.")
    else:
        if response == "Evacuate":
            parts.append("立即撤离!" if zh else "Evacuate now!")
        else:
            parts.append("做好撤离准备,听从责任人指挥。" if zh else "Prepare to evacuate and follow the responsible person's instructions.")
        if site.evacuation_route:
            parts.append(f"撤离路线:{site.evacuation_route}。" if zh else f"Evacuation route: {site.evacuation_route}.")
        if site.shelter:
            parts.append(f"避险场所:{site.shelter}。" if zh else f"Shelter: {site.shelter}.")
    if site.responsible:
        parts.append(f"责任人:{site.responsible}。" if zh else f"Responsible person: {site.responsible}.")
    if site.phone:
        parts.append(f"联系电话:{site.phone}。" if zh else f"Phone: {site.phone}.")
    return "\n".join(parts)


def _sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    el = etree.SubElement(parent, f"{{{CAP_NS}}}{tag}")
    if text is not None:
        el.text = _NOT_XML.sub("", text)
    return el


def _decimal(x: float, places: int) -> str:
    """Plain decimal notation (never ``1e-05``), trailing zeros trimmed to one decimal."""
    text = f"{x:.{places}f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _finite(x: Any) -> TypeGuard[float]:
    """A usable epoch time: a finite number that a date-time can hold (a forecast from a
    near-flat fit can lie millennia away; such a time is no forecast at all)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0 <= x < 253402300799


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise CapError(f"unknown time zone {tz!r} (use an IANA name such as 'Asia/Shanghai')") from None


def _check_token(value: str, what: str) -> None:
    if not _TOKEN.fullmatch(value):
        raise CapError(f"CAP {what} {value!r} must be non-empty without spaces, commas, '<' or '&'")


def _check_reference(ref: Any) -> None:
    if not (isinstance(ref, tuple) and len(ref) == 3 and all(isinstance(p, str) for p in ref)):
        raise CapError(f"a reference is a (sender, identifier, sent) tuple of strings, not {ref!r}")
    _check_token(ref[0], "sender in a reference")
    _check_token(ref[1], "identifier in a reference")
    if not _CAP_TIME.fullmatch(ref[2]):
        raise CapError(f"sent {ref[2]!r} in a reference must be a CAP date-time such as 2026-11-29T17:30:00+08:00")


# -- validation -------------------------------------------------------------------------------


def xsd_path() -> Path:
    """The OASIS CAP 1.2 XSD shipped with GeoWarn (``alerts/schemas/``, with its notice)."""
    return Path(str(resources.files(__package__).joinpath(_XSD)))


class CapSchema:
    """The OASIS CAP 1.2 XML schema, parsed once; ``validate`` checks one message.

    Build one with ``CapSchema.load()`` in the composition root (or a test fixture) and pass
    it to whatever sends CAP. Safe to share between threads: lxml validators keep their error
    log on the object, so validations are serialised by a lock (each takes microseconds).
    """

    def __init__(self, schema: etree.XMLSchema, source: str) -> None:
        self.source = source
        self._schema = schema
        self._parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path | None = None) -> CapSchema:
        """Parse the XSD at ``path``, by default the vendored OASIS copy."""
        xsd = Path(path) if path is not None else xsd_path()
        try:
            schema = etree.XMLSchema(etree.parse(str(xsd)))
        except (OSError, etree.XMLSyntaxError, etree.XMLSchemaParseError) as exc:
            raise CapError(f"cannot load the CAP 1.2 schema {xsd}: {exc}") from None
        return cls(schema, str(xsd))

    def validate(self, xml: bytes) -> None:
        """Raise ``CapError`` listing every problem if ``xml`` is not a valid CAP 1.2 message.

        Checks the OASIS schema, then the CAP 1.2 rules the schema cannot express and GeoWarn
        relies on: identifier and sender without spaces, commas, '<' or '&'; references as
        sender,identifier,sent triples; Update and Cancel carrying references.
        """
        with self._lock:
            try:
                root = etree.fromstring(xml, self._parser)
            except etree.XMLSyntaxError as exc:
                raise CapError(f"not well-formed XML: {exc}") from None
            if self._schema.validate(root):
                problems = _cap_rules(root)
            else:
                problems = [f"line {e.line}: {_short_ns(e.message)}" for e in self._schema.error_log]
        if problems:
            raise CapError("not a valid CAP 1.2 message:\n  " + "\n  ".join(problems))


def validate_cap(xml: bytes, schema: CapSchema | None = None) -> None:
    """Raise ``CapError`` if ``xml`` is not a valid CAP 1.2 message (see ``CapSchema.validate``).

    Without ``schema`` the XSD is loaded for this one call (milliseconds): fine for a CLI or a
    one-off check; a service holds one ``CapSchema`` instead.
    """
    (schema if schema is not None else CapSchema.load()).validate(xml)


def _cap_rules(root: etree._Element) -> list[str]:
    # Direct children only: the schema has already fixed where each element may stand.
    top = {child.tag: child.text or "" for child in root}
    problems: list[str] = []
    for tag in ("identifier", "sender"):
        value = top.get(f"{{{CAP_NS}}}{tag}", "")
        if not _TOKEN.fullmatch(value):
            problems.append(f"<{tag}> {value!r} must not be empty or include spaces, commas, '<' or '&'")
    refs = top.get(f"{{{CAP_NS}}}references", "").split()
    for ref in refs:
        parts = ref.split(",")
        if len(parts) != 3 or not all(_TOKEN.fullmatch(p) for p in parts[:2]) or not _CAP_TIME.fullmatch(parts[2]):
            problems.append(f"<references> entry {ref!r} is not sender,identifier,sent")
    msg_type = top.get(f"{{{CAP_NS}}}msgType")
    if msg_type in ("Update", "Cancel") and not refs:
        problems.append(f"msgType {msg_type} must name the earlier message(s) in <references>")
    return problems


def _short_ns(message: str) -> str:
    return message.replace(f"{{{CAP_NS}}}", "cap:")
