"""What a notification says, in the language of the unit that receives it.

This module owns the words of every notification: the subject, the plain text, the short SMS
text and the structured parts (headline, what to do now, the 防灾明白卡 facts, the evidence in
words) that the e-mail, robot and SMS notifiers lay out in their own formats. The engine
(alerts/machine.py) keeps deciding *what* happens and writes its English sentence into each
``Notify``; nothing here changes a state or an id. ``render`` is called where a ``Notify``
becomes the messages of one unit (``alerts.notifiers.outgoing_for``), with:

- the unit from the roster: its ``name``, ``lang`` (``"zh"``, the default, or ``"en"``) and
  ``templates`` (overrides of ``subject``, ``text`` and ``sms``, for every kind or one kind:
  ``"warning.sms"``), whose placeholders ``config.roster.TEXT_FIELDS`` lists and the roster
  checks at load;
- the site from the registry: name and card (people and households threatened, evacuation
  route, shelter, responsible person and phone, hazard and scale);
- the time zone (``GEOWARN_TIMEZONE``): every time is shown in it with the zone named,
  "2026-12-06 17:30 (北京时间 UTC+8)";
- the reason and evidence of the site's state (fusion's words), turned into a Chinese lead
  sentence with the same numbers, the detectors' English detail kept after it.

Levels are shown as the national warning colours and grades: 蓝色预警（Ⅳ级）… 红色预警（Ⅰ级）,
each with what to do now, after the graded responses of the 地质灾害防灾明白卡 and the provincial
geohazard early-warning practice (blue: patrol and watch; yellow: denser monitoring, people
ready to leave; orange: round-the-clock watch, the vulnerable moved first; red: evacuate now).

A drill is unmistakable in every part: subject, text and SMS start with the exercise mark
(``【演练】`` in Chinese, ``[EXERCISE 演练]`` in English), whatever a unit's template says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from geowarn.alerts.model import Notify
from geowarn.config.registry import Site
from geowarn.config.roster import TEXT_FIELDS, TIERS, Unit
from geowarn.core.levels import LEVELS
from geowarn.core.timefmt import rfc3339

__all__ = ["ACTIONS", "CANCEL_ACTION", "EXERCISE_MARKS", "Rendered", "evidence_zh", "local_time", "render", "template_fields"]

#: The exercise mark each language's parts start with. The English one is the historical
#: ``alerts.notifiers.EXERCISE_PREFIX``.
EXERCISE_MARKS = {"zh": "【演练】", "en": "[EXERCISE 演练]"}

COLOUR_ZH = {0: "", 1: "蓝色", 2: "黄色", 3: "橙色", 4: "红色"}
GRADE_ZH = {0: "", 1: "Ⅳ级", 2: "Ⅲ级", 3: "Ⅱ级", 4: "Ⅰ级"}
_COLOUR_WORD_ZH = {"blue": "蓝色", "yellow": "黄色", "orange": "橙色", "red": "红色", "normal": "正常", "none": "正常"}

#: What to do now, per level: (Chinese, English, Chinese for an SMS).
ACTIONS: dict[int, tuple[str, str, str]] = {
    1: (
        "加强巡查和监测，密切关注变形和降雨趋势，做好应急准备。",
        "Patrol and monitor more often, watch deformation and rain, be ready to respond.",
        "加强巡查监测",
    ),
    2: (
        "加密监测和巡查频次，通知受威胁群众做好撤离准备，检查撤离路线和避险场所。",
        "Monitor and patrol more densely, tell the threatened people to be ready to leave, check the evacuation route and shelter.",
        "加密巡查监测，群众做好撤离准备",
    ),
    3: (
        "24 小时值守监测，组织老弱病残孕等人员先行转移，其他受威胁群众做好随时撤离准备，必要时封闭危险区。",
        "Watch round the clock, move the elderly, sick and disabled out first, keep everyone else ready to leave at once, close the danger zone if needed.",
        "24小时值守，老弱先行转移，群众随时准备撤离",
    ),
    4: (
        "立即组织受威胁群众按撤离路线撤离至避险场所，封锁危险区，严禁人员进入，并立即上报。",
        "Evacuate the threatened people along the evacuation route to the shelter now, close the danger zone to everyone, report upward at once.",
        "立即组织群众按撤离路线撤离至避险场所",
    ),
}
#: What to do once a warning is lifted: (Chinese, English).
CANCEL_ACTION = (
    "预警解除：经现场核查确认安全后，受威胁群众方可返回；继续巡查监测。",
    "Warning lifted: people may return only once the site has been checked and found safe; keep patrolling.",
)

_HAZARD_ZH = {"landslide": "滑坡", "collapse": "崩塌", "debris_flow": "泥石流", "ground_fissure": "地裂缝", "subsidence": "地面塌陷", "unstable_slope": "不稳定斜坡"}
_SCALE_ZH = {"small": "小型", "medium": "中型", "large": "大型", "extra_large": "特大型"}
_TIER_ZH = {"county": "县级", "city": "市级", "province": "省级", "national": "国家级"}
_TIER_EN = {"county": "county", "city": "city", "province": "province", "national": "national"}
_BEIJING_ZONES = frozenset({"Asia/Shanghai", "Asia/Chongqing", "Asia/Chungking", "Asia/Harbin", "PRC"})

#: Kinds that carry the card: the people on the slope must know where to go.
_CARD_KINDS = frozenset({"warning", "realarm", "escalation", "downgrade"})
#: Kinds whose engine sentence carries what only a person wrote or a device said (a note, a cause).
_DETAIL_KINDS = frozenset({"nodata", "shelved", "unshelved", "out_of_service", "return_to_service"})
#: Kinds whose deadline is an ack deadline (the others' is a quick report's).
_ACK_KINDS = frozenset({"warning", "realarm", "escalation", "unshelved", "return_to_service"})


@dataclass(frozen=True)
class Rendered:
    """One notification as one unit reads it."""

    lang: str
    subject: str
    text: str
    sms: str
    #: Structured parts for the notifiers that lay out their own format (e-mail HTML, robot
    #: markdown, SMS template parameters); stored in the message body as ``message``.
    message: Mapping[str, Any] = field(hash=False)


# -- times ------------------------------------------------------------------------------------


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r} (use an IANA name such as 'Asia/Shanghai')") from None


def _offset(dt: datetime) -> str:
    off = dt.utcoffset()
    minutes = 0 if off is None else int(off.total_seconds() // 60)
    if minutes == 0:
        return "UTC"
    sign = "+" if minutes > 0 else "-"
    h, m = divmod(abs(minutes), 60)
    return f"UTC{sign}{h}" + (f":{m:02d}" if m else "")


def local_time(t: float, tz: str = "Asia/Shanghai", lang: str = "zh") -> str:
    """``t`` to the minute in zone ``tz``, the zone named: ``2026-12-06 17:30 (北京时间 UTC+8)``,
    ``2026-12-06 17:30 (Beijing time, UTC+8)``, ``… (Asia/Urumqi UTC+6)``. Seconds are cut, not
    rounded: a deadline shown is never later than the real one."""
    dt = datetime.fromtimestamp(t, timezone.utc).astimezone(_zone(tz))
    off = _offset(dt)
    if tz in _BEIJING_ZONES:
        zone = f"北京时间 {off}" if lang == "zh" else f"Beijing time, {off}"
    elif tz.upper() in ("UTC", "ETC/UTC", "ZULU", "ETC/ZULU", "UCT", "ETC/UCT"):
        zone = "UTC"
    else:
        zone = f"{tz} {off}" if lang == "zh" else f"{tz}, {off}"
    return f"{dt:%Y-%m-%d %H:%M} ({zone})"


# -- the evidence in words ----------------------------------------------------------------------


def _c(word: str) -> str:
    return _COLOUR_WORD_ZH.get(word, word)


def _per_day(unit: str) -> str:
    return unit.replace("/day", "/天")


# The detectors' and fusion's fixed sentences (detectors/*.py, detectors/fusion.py), each with a
# Chinese reading that keeps its numbers. A clause none of them reads is kept in English.
_VERDICTS: list[tuple[re.Pattern[str], Any]] = [
    (
        re.compile(r"velocity (?P<v>-?[\d.]+) (?P<u>\S*)/day \(≥ (?P<c>\w+) (?P<thr>[\d.e+-]+) \S*/day over (?P<w>[\d.]+) h, or held\)"),
        lambda m: f"位移速率 {m['v']} {m['u']}/天（{m['w']} 小时平滑），达到{_c(m['c'])}阈值 {m['thr']} {m['u']}/天",
    ),
    (
        re.compile(
            r"tangent angle (?P<a>[\d.]+)° \(velocity (?P<v>-?[\d.]+) (?P<u>\S*)/day, (?P<x>[\d.]+)× the steady (?P<s>-?[\d.e+-]+) \S*/day; "
            r"≥ (?P<c>\w+) (?P<thr>[\d.]+)°, or held\)"
        ),
        lambda m: f"改进切线角 {m['a']}°（速率 {m['v']} {m['u']}/天，为稳定蠕变速率 {m['s']} {m['u']}/天 的 {m['x']} 倍），达到{_c(m['c'])}阈值 {m['thr']}°",
    ),
    (
        re.compile(
            r"inverse-velocity failure forecast in (?P<h>[\d.]+) h \(± (?P<e>[\d.]+) h, R² (?P<r2>[\d.]+), (?P<n>\d+) points since the onset; "
            r"≤ (?P<c>\w+) (?P<hz>[\d.]+) h, or held\)"
        ),
        lambda m: f"反速度法预测约 {m['h']} 小时后失稳（±{m['e']} 小时，R² {m['r2']}，加速以来 {m['n']} 个点），在{_c(m['c'])}预警时限 {m['hz']} 小时内",
    ),
    (
        re.compile(r"failure forecast withdrawn or not yet confirmed; (?P<c>\w+) held"),
        lambda m: f"失稳预测已撤回或尚未确认，维持{_c(m['c'])}",
    ),
    (
        re.compile(r"value (?P<v>-?[\d.]+) ?(?P<u>\S*) \(≥ (?P<c>\w+) threshold (?P<thr>-?[\d.e+-]+) ?\S*, or held\)"),
        lambda m: f"监测值 {m['v']}{' ' + m['u'] if m['u'] else ''}，达到{_c(m['c'])}阈值 {m['thr']}{' ' + m['u'] if m['u'] else ''}",
    ),
    (
        re.compile(r"peak (?P<v>[\d.]+) ?(?P<u>\S*) \(≥ (?P<c>\w+) threshold (?P<thr>-?[\d.e+-]+) ?\S*, or held\)"),
        lambda m: f"峰值 {m['v']}{' ' + m['u'] if m['u'] else ''}，达到{_c(m['c'])}阈值 {m['thr']}{' ' + m['u'] if m['u'] else ''}",
    ),
    (
        re.compile(r"rising (?P<r>-?[\d.]+) (?P<u>\S+) \(≥ (?P<c>\w+) (?P<thr>[\d.e+-]+) \S+ over (?P<w>[\d.]+) h, or held\)"),
        lambda m: f"上升速率 {m['r']} {_per_day(m['u'])}（{m['w']} 小时），达到{_c(m['c'])}阈值 {m['thr']} {_per_day(m['u'])}",
    ),
    (
        re.compile(r"(?P<h>\d+)h rain (?P<x>[\d.]+) mm \(≥ (?P<c>\w+) (?P<thr>[\d.]+) mm, or held\)"),
        lambda m: f"近 {m['h']} 小时雨量 {m['x']} mm，达到{_c(m['c'])}阈值 {m['thr']} mm",
    ),
    (
        re.compile(r"(?P<w>\d+)s rain (?P<x>[\d.]+) mm \(≥ (?P<c>\w+) (?P<thr>[\d.]+) mm, or held\)"),
        lambda m: f"{m['w']} 秒雨量 {m['x']} mm，达到{_c(m['c'])}阈值 {m['thr']} mm",
    ),
    (
        re.compile(
            r"rain event (?P<d>[\d.]+) h at (?P<i>[\d.]+) mm/h = (?P<r>[\d.]+)× the I–D threshold (?P<curve>[\d.]+) mm/h \(≥ (?P<c>\w+) (?P<k>[\d.]+)×, or held\)"
        ),
        lambda m: f"降雨过程 {m['d']} 小时、平均雨强 {m['i']} mm/h，为雨强-历时阈值 {m['curve']} mm/h 的 {m['r']} 倍，达到{_c(m['c'])}（{m['k']} 倍）",
    ),
    (
        re.compile(r"I–D level (?P<c>\w+) held: a recent rain event was above (?P<k>[\d.]+)× the I–D threshold"),
        lambda m: f"维持雨强-历时{_c(m['c'])}：近期降雨过程超过阈值的 {m['k']} 倍",
    ),
    (
        re.compile(r"effective rain (?P<x>[\d.]+) mm \(Σ (?P<k>[\d.]+)\^i·R_i over (?P<d>\d+) days; ≥ (?P<c>\w+) (?P<thr>[\d.]+) mm, or held\)"),
        lambda m: f"前期有效雨量 {m['x']} mm（{m['d']} 天，衰减系数 {m['k']}），达到{_c(m['c'])}阈值 {m['thr']} mm",
    ),
]
_NOTES: list[tuple[re.Pattern[str], Any]] = [
    (re.compile(r"confirmed by (?P<n>\d+) devices \((?P<d>.*)\)"), lambda m: f"经 {m['n']} 台设备确认（{m['d']}）"),
    (re.compile(r"confirmed by a failure forecast in (?P<h>-?\d+) h"), lambda m: f"经失稳预测确认（约 {m['h']} 小时后）"),
    (
        re.compile(r"(?P<c1>\w+) not confirmed \(only (?P<d>.*)\): held at (?P<c2>\w+)(?P<before>, as confirmed before)?"),
        lambda m: f"{_c(m['c1'])}未经第二台设备或失稳预测确认（仅 {m['d']}），维持{_c(m['c2'])}" + ("（此前已确认）" if m["before"] else ""),
    ),
    (
        re.compile(r"the failure forecast in (?P<h>-?\d+) h fits its line too roughly to confirm \(R² (?P<a>[\d.]+) < (?P<b>[\d.]+)\)"),
        lambda m: f"约 {m['h']} 小时后失稳的预测拟合度不足（R² {m['a']} < {m['b']}），不作确认",
    ),
    (
        re.compile(r"back to (?P<c1>\w+): no device above the (?P<c2>\w+) threshold for (?P<h>[\d.]+) h"),
        lambda m: f"降为{_c(m['c1'])}：已连续 {m['h']} 小时没有设备超过{_c(m['c2'])}阈值",
    ),
    (
        re.compile(r"back to (?P<c1>\w+): (?P<c2>\w+) is no longer confirmed by a second device or a failure forecast"),
        lambda m: f"降为{_c(m['c1'])}：{_c(m['c2'])}不再有第二台设备或失稳预测确认",
    ),
    (re.compile(r"all channels back to normal"), lambda m: "各监测通道均已恢复正常"),
    (
        re.compile(r"(?P<ch>\S+/\S+): sensor reported faulty \(sensor_state (?P<code>-?[\d.]+)\) since (?P<t>\S+), its readings raise no level"),
        lambda m: f"{m['ch']} 设备报告传感器故障（sensor_state {m['code']}，自 {m['t']} 起），其数据不参与升级",
    ),
    (re.compile(r"held at (?P<c>\w+): the sensors at it are reported faulty"), lambda m: f"因相关传感器报告故障，维持{_c(m['c'])}"),
    (re.compile(r"(?P<d>\S+): no data for (?P<h>[\d.]+) h \(level held\)"), lambda m: f"设备 {m['d']} 已 {m['h']} 小时无数据（级别维持不变）"),
    (re.compile(r"(?P<d>\S+): data again after (?P<h>[\d.]+) h of silence"), lambda m: f"设备 {m['d']} 中断 {m['h']} 小时后恢复上报"),
]
_DETECTOR_ZH = {"velocity": "速率", "tangent": "切线角", "forecast": "失稳预测", "threshold": "阈值", "rain": "降雨", "rise": "上升速率"}
_LEAD = re.compile(r"(?P<ch>\S+/\S+) (?P<det>\w+): (?P<rest>.*)")


def _clause_zh(clause: str) -> str | None:
    clause = clause.strip()
    if clause.startswith("now "):
        inner = _clause_zh(clause[4:])
        return None if inner is None else "当前：" + inner
    lead = _LEAD.fullmatch(clause)
    if lead is not None and lead["det"] in _DETECTOR_ZH:
        inner = _verdict_zh(lead["rest"])
        return None if inner is None else f"{lead['ch']} {inner}"
    for pattern, say in _NOTES:
        m = pattern.fullmatch(clause)
        if m is not None:
            return str(say(m))
    return _verdict_zh(clause)


def _verdict_zh(text: str) -> str | None:
    for pattern, say in _VERDICTS:
        m = pattern.fullmatch(text.strip())
        if m is not None:
            return str(say(m))
    return None


def _clauses(reason: str) -> list[str]:
    """``reason`` split at the "; " that join fusion's clauses, not at those inside a
    detector's parentheses ("(velocity …; ≥ red 85°, or held)")."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(reason):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == ";" and depth == 0 and reason.startswith("; ", i):
            out.append(reason[start:i])
            start = i + 2
    out.append(reason[start:])
    return out


def evidence_zh(reason: str) -> str:
    """Fusion's reason as a Chinese sentence with the same numbers, the English detail after
    it: ``BSH-GNSS1/disp_e 位移速率 130.0 mm/天（6 小时平滑），达到红色阈值 120 mm/天；经 2 台设备
    确认（BSH-GNSS1, BSH-GNSS2）。（原文：…）``. A clause no pattern reads is left out of the
    lead (the English detail keeps it); "" for no reason."""
    reason = reason.strip()
    if not reason:
        return ""
    said = [z for z in (_clause_zh(c) for c in _clauses(reason)) if z]
    if not said:
        return f"（原文：{reason}）"
    return "；".join(said) + f"。（原文：{reason}）"


# -- the fields a template may name ----------------------------------------------------------------


def _level_name(level: int, lang: str) -> str:
    if level <= 0:
        return "正常" if lang == "zh" else "normal"
    info = LEVELS[level]
    if lang == "zh":
        return f"{COLOUR_ZH[level]}预警（{GRADE_ZH[level]}）"
    return f"{info.colour} (level {level}, {info.en})"


def _tier(tier: str, lang: str) -> str:
    return (_TIER_ZH if lang == "zh" else _TIER_EN).get(tier, tier)


def _next_tier(tier: str) -> str:
    i = TIERS.index(tier) if tier in TIERS else -1
    return TIERS[i + 1] if 0 <= i < len(TIERS) - 1 else tier


def template_fields(notify: Notify, unit: Unit | None, site: Site | None, *, lang: str, tz: str, reason: str) -> dict[str, str]:
    """Every value a template may name (``config.roster.TEXT_FIELDS``), as text."""
    zh = lang == "zh"
    level = notify.level
    shown = level if notify.kind != "cancel" else notify.previous
    people = households = ""
    if site is not None and site.threatened_people:
        people = f"{site.threatened_people} 人" if zh else f"{site.threatened_people} people"
    if site is not None and site.threatened_households:
        households = f"{site.threatened_households} 户" if zh else f"{site.threatened_households} households"
    action = ""
    if notify.kind == "cancel":
        action = CANCEL_ACTION[0 if zh else 1]
    elif level in ACTIONS:
        action = ACTIONS[level][0 if zh else 1]
    deadline = local_time(notify.deadline, tz, lang) if notify.deadline is not None else ""
    fields = {
        "mark": EXERCISE_MARKS[lang] if notify.exercise else "",
        "site": notify.site or "",
        "site_name": site.name if site is not None else (notify.site or ""),
        "unit_name": unit.name if unit is not None else notify.admin,
        "admin": notify.admin,
        "tier": _tier(notify.tier, lang),
        "kind": notify.kind,
        "level": str(level),
        "colour": (COLOUR_ZH.get(shown, "") if zh else (LEVELS[shown].colour if shown > 0 else "")),
        "grade": (GRADE_ZH.get(shown, "") if zh else (f"level {shown}" if shown > 0 else "")),
        "level_name": _level_name(level, lang),
        "previous_name": _level_name(notify.previous, lang) if notify.previous > 0 else "",
        "action": action,
        "action_short": (ACTIONS[level][2] if zh else ACTIONS[level][1]) if level in ACTIONS and notify.kind != "cancel" else action,
        "time": local_time(notify.t, tz, lang),
        "time_utc": rfc3339(notify.t),
        "deadline": deadline,
        "warning_id": notify.warning_id or "",
        "task_id": notify.task_id or "",
        "device": notify.device or "",
        "people": people,
        "households": households,
        "route": site.evacuation_route if site is not None else "",
        "shelter": site.shelter if site is not None else "",
        "responsible": site.responsible if site is not None else "",
        "phone": site.phone if site is not None else "",
        "hazard": ((_HAZARD_ZH.get(site.hazard, site.hazard) + "（" + _SCALE_ZH.get(site.scale, site.scale) + "）") if zh else f"{site.hazard.replace('_', ' ')} ({site.scale.replace('_', ' ')})")
        if site is not None
        else "",
        "reason": reason,
        "evidence": (evidence_zh(reason) if zh else reason),
        "original": notify.text,
    }
    fields["headline"] = _headline(notify, fields, zh)
    fields["card"] = "\n".join(f"{k}：{v}" if zh else f"{k}: {v}" for k, v in _card(fields, zh))
    fields["deadline_line"] = _deadline_line(notify, fields, zh)
    missing = TEXT_FIELDS - fields.keys()
    if missing:  # the roster lets units name these: a field it names must exist
        raise RuntimeError(f"texts: fields {sorted(missing)} are promised by config.roster.TEXT_FIELDS but not made")
    return fields


def _headline(n: Notify, f: Mapping[str, str], zh: bool) -> str:
    site, name, prev = f["site_name"], f["level_name"], f["previous_name"]
    wid = f["warning_id"]
    k = n.kind
    if zh:
        return {
            "warning": f"{site} 发布{name}" if n.previous == 0 else f"{site} 预警由{prev}升级为{name}",
            "realarm": f"{site} 预警确认后再次升级：由{prev}升为{name}",
            "escalation": f"{site} {name}（{wid}）{_tier(_prev_tier(n.tier), 'zh')}逾期未确认，现上报{f['tier']}",
            "downgrade": f"{site} 预警由{prev}降为{name}",
            "cancel": f"{site} {prev}解除",
            "report_due": f"{site} 请报送速报（任务 {f['task_id']}）",
            "report_overdue": f"{site} 速报 {f['task_id']} 逾期未报送（县级）",
            "nodata": f"{site} 设备 {f['device']} 无数据，级别维持{name}",
            "data_back": f"{site} 设备 {f['device']} 恢复上报",
            "shelved": f"{site} 已挂起（维护），预警 {wid} 暂停上报",
            "unshelved": f"{site} 解除挂起，预警 {wid} 恢复处理",
            "out_of_service": f"{site} 已停用，预警 {wid} 暂停上报",
            "return_to_service": f"{site} 恢复运行，预警 {wid} 恢复处理",
            "zero_report": f"{f['unit_name']} 地质灾害零报告",
        }.get(k, f"{site} {k}")
    colour = name
    return {
        "warning": f"{site}: {colour} warning raised" if n.previous == 0 else f"{site}: warning raised to {colour} from {prev}",
        "realarm": f"{site}: warning rose again after acknowledgement, to {colour} from {prev}",
        "escalation": f"{site}: {colour} warning {wid} not acknowledged by the {_prev_tier(n.tier)} unit; escalated to {f['tier']}",
        "downgrade": f"{site}: warning lowered to {colour} from {prev}",
        "cancel": f"{site}: {prev} warning lifted",
        "report_due": f"{site}: quick report {f['task_id']} due",
        "report_overdue": f"{site}: quick report {f['task_id']} not submitted by the county in time",
        "nodata": f"{site}: no data from {f['device']}; level held at {colour}",
        "data_back": f"{site}: {f['device']} is reporting again",
        "shelved": f"{site}: shelved for maintenance; warning {wid} no longer escalates",
        "unshelved": f"{site}: unshelved; warning {wid} handled again",
        "out_of_service": f"{site}: taken out of service; warning {wid} no longer escalates",
        "return_to_service": f"{site}: returned to service; warning {wid} handled again",
        "zero_report": f"{f['unit_name']}: daily zero report",
    }.get(k, f"{site}: {k}")


def _prev_tier(tier: str) -> str:
    i = TIERS.index(tier) if tier in TIERS else 0
    return TIERS[max(0, i - 1)]


def _card(f: Mapping[str, str], zh: bool) -> list[tuple[str, str]]:
    """The 防灾明白卡 essentials, those the registry has."""
    who = " ".join(x for x in (f["responsible"], f["phone"]) if x)
    rows = [
        ("受威胁群众" if zh else "People threatened", "，".join(x for x in (f["people"], f["households"]) if x) if zh else ", ".join(x for x in (f["people"], f["households"]) if x)),
        ("撤离路线" if zh else "Evacuation route", f["route"]),
        ("避险场所" if zh else "Shelter", f["shelter"]),
        ("责任人及电话" if zh else "Responsible person and phone", who),
    ]
    return [(k, v) for k, v in rows if v]


def _deadline_line(n: Notify, f: Mapping[str, str], zh: bool) -> str:
    if not f["deadline"]:
        return ""
    if n.kind in _ACK_KINDS:
        if zh:
            return f"请于 {f['deadline']} 前确认收到（预警编号 {f['warning_id']}），逾期未确认将上报{_tier(_next_tier(n.tier), 'zh')}。"
        return f"Acknowledge by {f['deadline']} (warning {f['warning_id']}); unacknowledged, it escalates to the {_next_tier(n.tier)} unit."
    if zh:
        return f"速报截止时间：{f['deadline']}。"
    return f"Quick report due by {f['deadline']}."


# -- rendering ------------------------------------------------------------------------------------


def _facts(n: Notify, f: Mapping[str, str], zh: bool) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [("时间" if zh else "Time", f["time"]), ("接收单位" if zh else "To", f"{f['unit_name']}（{f['tier']}）" if zh else f"{f['unit_name']} ({f['tier']})")]
    if n.site:
        rows.append(("监测点" if zh else "Site", f"{f['site_name']}（{f['site']}）" if zh else f"{f['site_name']} ({f['site']})"))
    if n.level > 0 or n.kind == "cancel":
        rows.append(("预警级别" if zh else "Level", f["level_name"]))
    if f["action"]:
        rows.append(("立即行动" if zh else "Do now", f["action"]))
    if n.kind in _CARD_KINDS:
        if f["hazard"]:
            rows.append(("灾害类型" if zh else "Hazard", f["hazard"]))
        rows += _card(f, zh)
    if f["evidence"] and n.kind in _CARD_KINDS | {"cancel"}:
        rows.append(("预警依据" if zh else "Evidence", f["evidence"]))
    if f["warning_id"]:
        rows.append(("预警编号" if zh else "Warning", f["warning_id"]))
    return rows


def _default_text(n: Notify, f: Mapping[str, str], facts: list[tuple[str, str]], zh: bool, extra: Mapping[str, Any] | None) -> str:
    lines = [f["mark"]] if f["mark"] else []
    lines.append(f["headline"] + ("。" if zh else "."))
    lines += [f"{k}：{v}" if zh else f"{k}: {v}" for k, v in facts]
    if n.kind == "zero_report" and extra and isinstance(extra.get("zero"), Mapping):
        lines += _zero_lines(extra["zero"], zh)
    elif n.kind in _DETAIL_KINDS:
        # The engine's own sentence says what the headline cannot (who shelved it and why,
        # the no-data detail); in English, as the engine wrote it.
        lines.append(("说明：" if zh else "Detail: ") + f["original"].removeprefix("[EXERCISE] "))
    if f["deadline_line"]:
        lines.append(f["deadline_line"])
    return "\n".join(lines)


def _zero_lines(z: Mapping[str, Any], zh: bool) -> list[str]:
    sites = list(z.get("sites") or [])
    out = [f"日期：{z.get('day', '')}" if zh else f"Day: {z.get('day', '')}"]
    out.append(f"监测点：{len(sites)} 处（{'、'.join(map(str, sites))}）" if zh else f"Sites: {len(sites)} ({', '.join(map(str, sites))})")
    if "readings" in z:
        out.append(f"24 小时收到数据：{z['readings']} 条" if zh else f"Readings in 24 h: {z['readings']}")
    if "devices" in z:
        out.append(f"设备在线：{z.get('devices_online', 0)} / {z['devices']} 台" if zh else f"Devices online: {z.get('devices_online', 0)} of {z['devices']}")
    if "online_rate" in z:
        rate = 100 * float(z["online_rate"])
        out.append(f"在线率：{rate:.1f}%" if zh else f"Online rate: {rate:.1f} %")
    if "availability" in z:
        avail = 100 * float(z["availability"])
        out.append(f"本月到报率：{avail:.1f}%" if zh else f"Transmission availability this month: {avail:.1f} %")
    if z.get("devices_low_availability"):
        named = [f"{device} {100 * float(a):.1f}%" for device, a in z.get("low_availability") or []]
        more = int(z["devices_low_availability"]) - len(named)
        floor = 100 * float(z.get("availability_threshold") or 0)
        if zh:
            out.append(f"到报率低于 {floor:.0f}% 的设备：{z['devices_low_availability']} 台（{'、'.join(named)}{f' 等，另有 {more} 台' if more > 0 else ''}）")
        else:
            out.append(f"Devices below {floor:.0f} % availability: {z['devices_low_availability']} ({', '.join(named)}{f' and {more} more' if more > 0 else ''})")
    if z.get("devices_clock_trouble"):
        named = [str(d) for d in z.get("clock_trouble") or []]
        more = int(z["devices_clock_trouble"]) - len(named)
        if zh:
            out.append(f"时钟异常设备：{z['devices_clock_trouble']} 台（{'、'.join(named)}{f' 等，另有 {more} 台' if more > 0 else ''}）" if named
                       else f"时钟异常设备：{z['devices_clock_trouble']} 台")
        else:
            out.append(f"Devices whose clock may be wrong: {z['devices_clock_trouble']}" + (f" ({', '.join(named)}{f' and {more} more' if more > 0 else ''})" if named else ""))
    n = int(z.get("warnings") or 0)
    out.append((f"24 小时预警：{n} 次" if n else "24 小时预警：无险情") if zh else (f"Warnings in 24 h: {n}" if n else "Warnings in 24 h: none"))
    return out


def _sms(n: Notify, f: Mapping[str, str], zh: bool) -> str:
    if n.kind in _CARD_KINDS:
        if zh:
            parts = [f"{f['mark']}{f['headline']}：{f['action_short']}。"]
            if f["deadline_line"]:
                parts.append(f"请于{f['deadline']}前确认。")
            # The route last: it is the longest, and what a cut SMS loses.
            card = "，".join(x for x in (
                f"受威胁群众 {f['people']}" if f["people"] else "", f"避险场所：{f['shelter']}" if f["shelter"] else "",
                f"责任人：{f['responsible']} {f['phone']}".strip() if f["responsible"] or f["phone"] else "", f"撤离路线：{f['route']}" if f["route"] else "",
            ) if x)
            if card:
                parts.append(card + "。")
            parts.append(f"发布时间{f['time']}，编号{f['warning_id']}。")
            return "".join(parts)
        parts = [f"{f['mark']} {f['headline']}: {f['action_short']}".strip()]
        if f["deadline_line"]:
            parts.append(f"Acknowledge by {f['deadline']}.")
        card = "; ".join(x for x in (
            f"people threatened: {f['people']}" if f["people"] else "", f"shelter: {f['shelter']}" if f["shelter"] else "",
            f"responsible: {f['responsible']} {f['phone']}".strip() if f["responsible"] or f["phone"] else "", f"route: {f['route']}" if f["route"] else "",
        ) if x)
        if card:
            parts.append(card + ".")
        parts.append(f"Sent {f['time']}, {f['warning_id']}.")
        return " ".join(parts)
    head = f"{f['mark']}{f['headline']}" if zh else f"{f['mark']} {f['headline']}".strip()
    tail = f"（{f['time']}）" if zh else f" ({f['time']})"
    return head + ("。" if zh else ".") + (f["deadline_line"] if f["deadline_line"] else "") + tail


def _marked(text: str, mark: str, sep: str) -> str:
    return text if not mark or text.startswith(mark) else mark + sep + text


def render(
    notify: Notify,
    unit: Unit | None,
    site: Site | None,
    *,
    tz: str = "Asia/Shanghai",
    reason: str = "",
    extra: Mapping[str, Any] | None = None,
) -> Rendered:
    """``notify`` as ``unit`` reads it (its ``lang``, its ``templates``), with ``site``'s card,
    times in ``tz`` and ``reason`` (the site state's, fusion's words) in words. ``extra`` is what
    the chain adds to the notification (a zero report's figures)."""
    lang = unit.lang if unit is not None else "zh"
    zh = lang == "zh"
    f = template_fields(notify, unit, site, lang=lang, tz=tz, reason=reason)
    facts = _facts(notify, f, zh)
    templates = unit.templates if unit is not None else {}

    def part(name: str, default: str) -> str:
        t = templates.get(f"{notify.kind}.{name}", templates.get(name))
        return default if t is None else t.format_map(f)

    subject_default = f["headline"] + (f" {f['warning_id']}" if notify.kind in ("warning", "realarm", "escalation") and f["warning_id"] else "")
    mark = EXERCISE_MARKS[lang] if notify.exercise else ""
    sep = "" if zh else " "
    subject = _marked(" ".join(part("subject", subject_default).split()), mark, sep)
    custom_text = f"{notify.kind}.text" in templates or "text" in templates
    text = _marked(part("text", _default_text(notify, f, facts, zh, extra)), mark, "\n" if zh else " ")
    sms = _marked(part("sms", _sms(notify, f, zh)), mark, sep)
    message = {
        "lang": lang,
        "tz": tz,
        "headline": f["headline"],
        "action": f["action"],
        "facts": [[k, v] for k, v in facts],
        "deadline_line": f["deadline_line"],
        "custom_text": custom_text,
        "sms": sms,
        "fields": {k: v for k, v in f.items() if k not in ("card", "original")},
    }
    return Rendered(lang, subject, text, sms, message)
