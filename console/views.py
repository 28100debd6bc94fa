"""What the console shows, read from the daemon's files through their owners' readers.

This module owns the read side of the duty-officer API: ``Views`` turns the journal
(``JournalReader``: readings, device status, fused levels), the outbox (``OutboxReader``: each
site's persisted alert state, every notification and its delivery state) and ``alerts.jsonl``
(the history) into the documents the API returns. Devices' clock health is what the
detection worker last saved in the journal's state (detectors/clockhealth.py); the conflicting
duplicates the store stage refused before detection saw them are counted per device from the
dead letters of a recent window. It writes nothing and holds no SQL: each store answers for
its own tables, so a schema change stays inside the store.

What people read is given in both languages where the engine wrote English: a warning's
``reason_zh`` and a timeline entry's ``detail_zh`` are a Chinese lead built from the
structured fields (level, colour, what happened) with fusion's numbers in words
(``alerts.texts.evidence_zh``), the English original kept after it; admin codes come with
their unit's name from the roster (``admin_name``).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# The response chain keeps each site's alert state in the outbox under this prefix (alerts/live.py).
from geowarn.alerts.live import STATE_PREFIX as ALERT_STATE_PREFIX
from geowarn.alerts.log import ALERTS_FILE
from geowarn.alerts.outbox import OUTBOX_FILE, OutboxReader
from geowarn.alerts.texts import (
    ACTIONS,
    CANCEL_ACTION,
    COLOUR_ZH,
    EXERCISE_MARKS,
    GRADE_ZH,
    evidence_zh,
    local_time,
)
from geowarn.config.registry import BATTERY_LOW_PERCENT, BATTERY_LOW_V, Registry, Site
from geowarn.config.roster import Roster
from geowarn.core.levels import LEVELS
from geowarn.core.sqlite import ChangeWatch
from geowarn.detectors.clockhealth import CLOCK_HEALTH_KEY
from geowarn.ingest.journal import JOURNAL_FILE, JournalReader, RefusedConflicts

__all__ = ["ALERTS_FILE", "CONFLICT_WINDOW_S", "MAX_POINTS", "Views", "WarningView", "colour", "next_action"]

#: Points per channel sent to the charts (the console draws SVG; more would not be visible).
MAX_POINTS = 600
#: The console's "readings in the last 24 h", counted back from each channel's newest reading.
SUMMARY_WINDOW_MS = 86_400_000
#: A device is online when its newest reading arrived within this many reporting intervals
#: (the no-data rule of DESIGN §5).
ONLINE_INTERVALS = 3
#: Conflicting duplicates the store stage refused are counted per device over this window,
#: reading at most this many of the newest dead letters (a flood of dead letters must not
#: make a console page slow; retention keeps them 30 days by default).
CONFLICT_WINDOW_S = 7 * 86400.0
CONFLICT_MAX_DEADLETTERS = 20_000


#: Status fields a duty officer reads as device health (native names and the convention's, as
#: ingest/codecs_cn.py stores S1_ZT_1).
HEALTH_FIELDS = ("battery_v", "battery_percent", "solar_v", "temp_c", "signal_dbm", "signal_4g", "signal_nb", "signal_bd", "fw", "siren_state")


def device_health(status: Any) -> dict[str, Any] | None:
    """The health part of a device's latest status, and the channels its ``sensor_state`` says
    are faulty (any code but 0: the firmware read writes -1 power, -2 data error, -3 no data)."""
    if not isinstance(status, dict):
        return None
    health = {k: status[k] for k in HEALTH_FIELDS if k in status}
    sensors = status.get("sensor_state")
    if isinstance(sensors, dict):
        health["faulty_sensors"] = sorted(str(k) for k, v in sensors.items() if v not in (0, "0"))
    return health


def battery_low(health: Mapping[str, Any] | None, low_percent: float = BATTERY_LOW_PERCENT, low_v: float = BATTERY_LOW_V) -> bool:
    """A device's battery is low: below ``low_percent`` where its status reports a charge
    (``battery_percent``), else below ``low_v`` (the device's ``battery_low_percent`` and
    ``battery_low_v`` in the registry); False when its status says nothing of its battery."""
    if not health:
        return False

    def number(key: str) -> float | None:
        v = health.get(key)
        try:
            return None if v is None or isinstance(v, bool) else float(v)
        except (TypeError, ValueError):
            return None

    percent = number("battery_percent")
    if percent is not None:
        return percent < low_percent
    volts = number("battery_v")
    return volts is not None and volts < low_v


def colour(level: int) -> str:
    return LEVELS[level].colour if level in LEVELS else "none"


def level_zh(level: int) -> str:
    """黄色预警（Ⅲ级 警示级）; 正常 for 0."""
    if level not in LEVELS or level <= 0:
        return "正常"
    return f"{COLOUR_ZH[level]}预警（{GRADE_ZH[level]} {LEVELS[level].zh}）"


def reason_zh(level: int, reason: str, *, exercise: bool = False, status: str = "") -> str:
    """A warning's reason as a duty officer reads it in Chinese: the level and colour first,
    then fusion's reason in words with its numbers (the English original after it, in
    parentheses, as ``evidence_zh`` keeps it)."""
    lead = ("【演练】" if exercise else "") + level_zh(level)
    if status == "rtn_unacknowledged":
        lead += "已恢复正常，待确认"
    words = evidence_zh(reason)
    return f"{lead}：{words}" if words else lead


def _card_words(site: Site | None, zh: bool, level: int) -> str:
    """The 防灾明白卡 essentials a duty officer acts on: the evacuation route and shelter and the
    people threatened (from yellow on, when people get ready to leave), who is responsible."""
    if site is None:
        return ""
    parts: list[str] = []
    if level >= 2:
        if site.evacuation_route:
            parts.append(f"撤离路线 {site.evacuation_route}" if zh else f"evacuation route {site.evacuation_route}")
        if site.shelter:
            parts.append(f"避险场所 {site.shelter}" if zh else f"shelter {site.shelter}")
        if site.threatened_people:
            parts.append(f"受威胁 {site.threatened_people} 人" if zh else f"{site.threatened_people} people threatened")
    if site.responsible or site.phone:
        parts.append((f"监测责任人 {site.responsible} {site.phone}" if zh else f"responsible: {site.responsible} {site.phone}").strip())
    if not parts:
        return ""
    return ("（防灾明白卡：" + "；".join(parts) + "）") if zh else (" (防灾明白卡: " + "; ".join(parts) + ")")


def next_action(s: Mapping[str, Any], site: Site | None, tz: str) -> dict[str, str]:
    """What the duty officer does next, one sentence per language, from the warning's level and
    status and the site's card: the level's "what to do now" of the notifications
    (``alerts.texts.ACTIONS``), led by "acknowledge now" while nobody has, or by what is still
    owed once someone has (a quick report and its due time). A drill says so first."""
    announced = int(s.get("announced", 0))
    status = str(s.get("status", "normal"))
    level = announced or int(s.get("level", 0))
    pending = [r for r in s.get("reports") or [] if r.get("submitted") is None and r.get("warning_id") == s.get("warning_id")]
    out: dict[str, str] = {}
    for lang in ("zh", "en"):
        zh = lang == "zh"
        i = 0 if zh else 1
        card = _card_words(site, zh, level)
        what = ACTIONS[level][i].rstrip("。.") if level in ACTIONS else ""
        if status == "shelved" and s.get("shelved_until"):
            until = local_time(float(s["shelved_until"]), tz, lang)
            text = f"维护挂起至 {until}：挂起期间坚持人工巡查。" if zh else f"Shelved for maintenance until {until}: patrol the site by hand meanwhile."
        elif status == "rtn_unacknowledged":
            text = f"监测已恢复正常，请确认恢复；{CANCEL_ACTION[0]}" if zh else f"Readings are back to normal: acknowledge the return to normal. {CANCEL_ACTION[1]}"
        elif announced <= 0 or level not in ACTIONS:
            text = CANCEL_ACTION[i]
        elif status == "unacknowledged":
            text = f"立即确认预警，并{what}{card}。" if zh else f"Acknowledge now, then: {what[:1].lower()}{what[1:]}{card}."
        else:
            owed = ""
            if pending:
                r = min(pending, key=lambda r: float(r["due"]))
                due = local_time(float(r["due"]), tz, lang)
                owed = f"速报 {r['task_id']} 须于 {due} 前提交；" if zh else f"quick report {r['task_id']} due by {due}; "
            text = f"已确认：{owed}继续{what}{card}。" if zh else f"Acknowledged: {owed}keep going: {what[:1].lower()}{what[1:]}{card}."
        out[lang] = f"{EXERCISE_MARKS[lang]}{'' if zh else ' '}{text}" if s.get("exercise") else text
    return out


# Engine history details that carry fusion's reason after the level change (alerts/machine.py).
_WITH_REASON = {"raise", "upgrade", "upgrade_realarm", "downgrade", "downgrade_after_hold", "lift", "lift_after_hold", "lower_cancelled"}
_CHANGE = re.compile(r"(?P<a>\w+) \(level (?P<la>\d), [^)]*\)(?: → (?P<b>\w+) \(level (?P<lb>\d), [^)]*\))?(?: lifted)?")
_HELD = re.compile(r"level (?P<rep>\d) reported; (?P<held>\d) held until (?P<until>\S+ \S+)")
_ESCALATED = re.compile(r"(?P<tier>\w+) did not acknowledge (?P<a>\w+) \(level (?P<l>\d), [^)]*\) by (?P<by>\S+ \S+); (?P<next>\w+) (?P<admin>\d+) notified")
_TIER_ZH = {"county": "县级", "city": "市级", "province": "省级", "national": "国家级"}


def _local(utc: str, tz: str) -> str:
    """The engine's "2026-01-01 10:00:00Z" in ``tz``, the zone named (alerts.texts.local_time)."""
    try:
        t = datetime.strptime(utc, "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return utc
    return local_time(t, tz, "zh")


def detail_zh(rule: str, detail: str, units: Mapping[str, str] | None = None, tz: str = "Asia/Shanghai") -> str:
    """An engine history entry's detail in Chinese, the English original kept after it; the
    detail itself when nothing here reads it (a person's note stays as typed)."""
    units = units or {}
    if rule in _WITH_REASON:
        head, sep, reason = detail.partition(": ")
        m = _CHANGE.fullmatch(head.split(" to ", 1)[0])
        if m is not None:
            levels = [int(m["la"])] + ([int(m["lb"])] if m["lb"] else [])
            change = " → ".join(level_zh(lv) for lv in levels) + ("解除" if rule.startswith("lift") else "")
            words = evidence_zh(reason) if sep else ""
            return f"{change}：{words}" if words else change
    if rule == "lower_held":
        m = _HELD.fullmatch(detail)
        if m is not None:
            return f"监测报告降为{level_zh(int(m['rep']))}，保持期内维持{level_zh(int(m['held']))}至 {_local(m['until'], tz)}。（原文：{detail}）"
    if rule == "escalate_unacked":
        m = _ESCALATED.fullmatch(detail)
        if m is not None:
            name = units.get(m["admin"], m["admin"])
            return (f"{_TIER_ZH.get(m['tier'], m['tier'])}未在 {_local(m['by'], tz)} 前确认{level_zh(int(m['l']))}，"
                    f"已上报{_TIER_ZH.get(m['next'], m['next'])} {name}。（原文：{detail}）")
    return detail


@dataclass(frozen=True)
class WarningView:
    """One site's current (or last) warning, as the console shows it."""

    doc: dict[str, Any]
    admin: str


class Views:
    """Read-only views over the daemon's files. The readers open a short-lived read-only
    connection per call, so request threads share nothing and never write. A store whose
    tables are not there yet (a daemon that has just started) reads as empty."""

    def __init__(self, data_dir: Path, registry: Registry, roster: Roster | None = None, tz: str = "Asia/Shanghai") -> None:
        self.data_dir = Path(data_dir)
        self.registry = registry
        self.roster = roster
        self.tz = tz
        self.journal = JournalReader(self.data_dir / JOURNAL_FILE)
        self.outbox = OutboxReader(self.data_dir / OUTBOX_FILE)
        self.alerts_path = self.data_dir / ALERTS_FILE

    # -- engine states -------------------------------------------------------------------

    def states(self) -> list[dict[str, Any]]:
        """Every persisted site state (``SiteAlert.to_dict()``), real and exercise."""
        try:
            return [value for _key, value in self.outbox.states(ALERT_STATE_PREFIX)]
        except sqlite3.OperationalError:
            return []  # the worker has not created its tables yet

    def site_levels(self) -> dict[str, int]:
        try:
            return self.journal.site_levels()
        except sqlite3.OperationalError:
            return {}

    def healthy(self) -> bool:
        """The journal can be read (the liveness probe's question)."""
        return self.journal.readable()

    def outbox_watch(self) -> ChangeWatch:
        """Says when the outbox changed: states, new notifications, delivery states."""
        return self.outbox.watch()

    def unit_name(self, admin: str) -> str:
        """The roster's name of an admin unit; the code itself when the roster has none."""
        unit = self.roster.units.get(admin) if self.roster is not None else None
        return unit.name if unit is not None else admin

    def unit_names(self) -> dict[str, str]:
        """Every admin code of the registry's sites and their chains, with its unit's name."""
        from geowarn.config.roster import chain_of

        codes = {a for site in self.registry.sites.values() for _, a in chain_of(site.admin)}
        return {code: self.unit_name(code) for code in sorted(codes)}

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
            "admin_name": self.unit_name(str(s["admin"])),
            "exercise": bool(s.get("exercise")),
            "level": shown,
            "current_level": level,
            "announced": announced,
            "colour": colour(shown),
            "label_zh": LEVELS[shown].zh if shown in LEVELS else "",
            "label_en": LEVELS[shown].en if shown in LEVELS else "",
            "since": s.get("raised"),
            "level_since": s.get("since"),
            "status": status,
            "active": announced > 0 or status == "rtn_unacknowledged",
            "acknowledged": status == "acknowledged" or (announced > 0 and int(s.get("acked_level", 0)) >= announced),
            "ack_deadline": s.get("ack_deadline"),
            "reason": s.get("reason", ""),
            "reason_zh": reason_zh(shown, str(s.get("reason", "")), exercise=bool(s.get("exercise")), status=status),
            "evidence": evidence,
            "forecast": evidence.get("forecast"),
            "notified": [{"tier": n[0], "admin": n[1], "level": n[2], "t": n[3], "deadline": n[4], "kind": n[5]} for n in notices],
            "acks": [{"by": a[0], "note": a[1], "t": a[2], "level": a[3]} for a in (s.get("acks") or [])],
            "reports": list(s.get("reports") or []),
            "shelved_until": s.get("shelved_until"),
            "silent_devices": list(s.get("silent") or []),
            "next_action": next_action(s, site, self.tz),
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
                    units = self.unit_names()
                    history = [{"t": e[0], "rule": e[1], "level": e[2], "status": e[3], "detail": e[4], "detail_zh": detail_zh(e[1], e[4], units, self.tz)}
                               for e in s.get("history") or []]
        notes: dict[str, dict[str, Any]] = {}
        try:
            items = self.outbox.about_warning(warning_id)
        except sqlite3.OperationalError:
            items = []
        for item in items:
            msg = item.msg
            key = item.id.split("/", 1)[0]
            n = notes.setdefault(key, {
                "id": key, "t": msg.t, "kind": msg.kind, "tier": msg.body.get("tier"), "admin": msg.admin, "admin_name": self.unit_name(msg.admin),
                "level": msg.level, "subject": msg.subject, "text": msg.text, "deadline": msg.body.get("deadline"),
                "deliveries": [],
            })
            n["deliveries"].append({"notifier": msg.notifier, "state": item.state, "attempts": item.attempts, "last_error": item.last_error, "sent_at": item.sent_at})
        return {
            "warning": w.doc if w is not None else None,
            "history": history,
            "notifications": sorted(notes.values(), key=lambda n: (n["t"], n["id"])),
        }

    # -- sites, readings, devices --------------------------------------------------------

    def clock_health(self) -> dict[str, Any]:
        """Detection's last ``SiteFusion.clock_health()``: per device with any wrong time stamp
        its counts (in total and among its recent readings) and whether its clock looks wrong;
        totals; readings held now for being stamped ahead of their arrival."""
        try:
            doc = self.journal.state(CLOCK_HEALTH_KEY)
        except sqlite3.OperationalError:
            doc = None
        return doc or {"totals": {}, "devices_in_trouble": 0, "held": 0, "devices": {}}

    def deadletters_conflict(self) -> int:
        """Messages the store stage refused for a conflicting duplicate (reason ``conflict``)."""
        try:
            return int(self.journal.deadletter_counts().get("conflict", 0))
        except sqlite3.OperationalError:
            return 0

    def refused_conflicts(self, now: float) -> RefusedConflicts:
        """Readings the store stage refused as conflicting duplicates, per (site, device), over
        the last ``CONFLICT_WINDOW_S`` (dead letters of reason ``conflict``; detection never
        sees them, so a device's clock health does not count them). Bounded: at most the newest
        ``CONFLICT_MAX_DEADLETTERS`` dead letters are read (``complete`` says whether that was all)."""
        since_ms = int((now - CONFLICT_WINDOW_S) * 1000)
        try:
            return self.journal.refused_conflicts(since_ms, CONFLICT_MAX_DEADLETTERS)
        except sqlite3.OperationalError:
            return RefusedConflicts({}, since_ms, True)

    def site_summary(self, site: str, now: float, *, conflicts: bool = False) -> dict[str, Any]:
        """Readings and device health of one site: per device its newest reading (event time and
        arrival), online by the no-data rule, its latest status heartbeat, and its clock
        (``clock``: None when every time stamp it sent was right). With ``conflicts`` (one
        site's page, not the list of every site: it reads the dead letters) each device's
        ``conflicts_refused`` too, over the last ``CONFLICT_WINDOW_S``."""
        card = self.registry.sites[site]
        clocks = self.clock_health()["devices"]
        refused = self.refused_conflicts(now).by_device if conflicts else {}
        devices: dict[str, dict[str, Any]] = {
            d.device: {"device": d.device, "model": d.model, "channels": [c.channel for c in d.channels], "last_t": None,
                       "last_received": None, "online": False, "status": None, "status_t": None,
                       "interval_s": min(c.interval_s for c in d.channels), "clock": clocks.get(d.device)}
            for d in card.devices
        }
        if conflicts:
            for device, d in devices.items():
                d["conflicts_refused"] = refused.get((site, device), 0)
        readings_24h = 0
        last_t: float | None = None
        try:
            activity = self.journal.site_activity(site, SUMMARY_WINDOW_MS)
            statuses = self.journal.latest_statuses(site, list(devices))
        except sqlite3.OperationalError:
            activity, statuses = [], {}  # no tables yet: a daemon that has just started
        for ch in activity:
            if ch.last_t_ms is None or ch.last_received_ms is None or ch.device not in devices:
                continue
            d = devices[ch.device]
            t, rec = ch.last_t_ms / 1000.0, ch.last_received_ms / 1000.0
            d["last_t"] = max(d["last_t"] or t, t)
            d["last_received"] = max(d["last_received"] or rec, rec)
            last_t = max(last_t or t, t)
            readings_24h += ch.recent
        for device, d in devices.items():
            if device in statuses:
                raw, t_ms = statuses[device]
                try:
                    d["status"] = json.loads(raw)
                except ValueError:
                    d["status"] = {"raw": raw}
                d["status_t"] = t_ms / 1000.0
            d["online"] = d["last_received"] is not None and now - d["last_received"] <= ONLINE_INTERVALS * d["interval_s"]
            d["health"] = device_health(d.get("status"))
            spec = next(x for x in card.devices if x.device == device)
            d["battery_low"] = battery_low(d["health"], spec.battery_low_percent, spec.battery_low_v)
            d["battery_low_at"] = {"percent": spec.battery_low_percent, "v": spec.battery_low_v}
        self._add_commands(site, devices, now)
        return {"readings_24h": readings_24h, "last_t": last_t, "devices": list(devices.values()),
                "devices_online": sum(1 for d in devices.values() if d["online"])}

    def _add_commands(self, site: str, devices: dict[str, dict[str, Any]], now: float | None = None) -> None:
        """Each device's latest sampling commands (either form): ``commands``, the newest of each
        sensor (``setsensortime`` of a convention device is per sensor, so one sensor's failed
        answer cannot hide behind another's success), then its ``setworkmode``; ``last_command``
        the newest of them. For a device of the national convention each has its answer
        (``result`` succ|fail, or None while none came) and ``answer``: succ, fail, ``waiting``,
        or ``none`` once sent longer than ``answer_window_s`` ago without one (a device drops a
        command whose apikey is not its own without a word: ingest/commands_cn.py). The
        command text itself is never shown (``redact`` would hide a key; the outbox holds none)."""
        from geowarn.ingest.commands_cn import answer_window_s

        try:
            items = self.outbox.commands(site)
            answers = self.outbox.command_answers()
        except sqlite3.Error:
            return
        slowest = {d.device: max(c.interval_s for c in d.channels) for d in self.registry.sites[site].devices} if site in self.registry.sites else {}
        latest: dict[str, dict[str, dict[str, Any]]] = {}
        for it in items:  # oldest first: a later command of the same sensor replaces an earlier one
            body = it.msg.body
            # A native command's id is "<action id>/<device>/mqtt/cmd"; a convention one says it.
            dev = body.get("device") or it.id.split("/")[1]
            if dev not in devices:
                continue
            ans = answers.get(it.id)
            cmd = body.get("cmd", "set_sampling")
            result = None if ans is None else ans.get("result")
            convention = str(body.get("topic", "")).startswith("$creq/")
            if not convention:
                answer = None  # a native device answers nothing: its delivery is what there is
            elif result in ("succ", "fail"):
                answer = result
            elif it.sent_at is not None and now is not None and now - it.sent_at > answer_window_s(slowest.get(dev, 0.0)):
                answer = "none"
            else:
                answer = "waiting"
            slot = str(body.get("sensor_id") or ("workmode" if cmd == "setworkmode" else cmd))
            latest.setdefault(dev, {}).pop(slot, None)  # re-insert: dicts keep the newest last
            latest[dev][slot] = {
                "id": it.id, "t": it.msg.t, "topic": body.get("topic"), "cmd": cmd, "sensor_id": body.get("sensor_id"), "mode": body.get("mode"),
                "interval_s": body.get("interval_s"), "delivery": it.state, "sent_at": it.sent_at, "result": result,
                "answered_t": None if ans is None else ans.get("t"), "answer": answer,
            }
        for dev, slots in latest.items():
            cmds = list(slots.values())
            devices[dev]["commands"] = cmds
            devices[dev]["last_command"] = max(cmds, key=lambda c: (c["t"], cmds.index(c)))

    def card(self, site: str) -> dict[str, Any]:
        s = self.registry.sites[site]
        return {
            "site": s.site, "name": s.name, "hazard": s.hazard, "scale": s.scale, "admin": s.admin, "admin_name": self.unit_name(s.admin),
            "lat": s.lat, "lon": s.lon,
            "threatened_people": s.threatened_people, "threatened_households": s.threatened_households,
            "evacuation_route": s.evacuation_route, "shelter": s.shelter, "responsible": s.responsible, "phone": s.phone,
            "velocity_window_s": s.policy.velocity_window_s,
        }

    def series(self, site: str, hours: float) -> dict[str, Any]:
        """Each channel's readings over the last ``hours`` before the site's newest reading,
        thinned to at most MAX_POINTS (every n-th: the charts only show the shape)."""
        out: list[dict[str, Any]] = []
        try:
            channels = self.journal.site_points(site, int(hours * 3_600_000), MAX_POINTS)
        except sqlite3.OperationalError:
            channels = []
        for ch in channels:
            info = self.registry.channel(site, ch.device, ch.channel)
            out.append({"device": ch.device, "channel": ch.channel, "kind": ch.kind, "unit": info.unit if info else "",
                        "points": [[t / 1000.0, v] for t, v in ch.points]})
        return {"site": site, "hours": hours, "channels": out}
