"""Daily zero reports (零报告): when each tier's report for its admin units is due, in local
time (county 09:00, city 10:00, province 12:00, as in the national relief plan). Pure functions."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time, timedelta, tzinfo
from typing import NamedTuple
from zoneinfo import ZoneInfo


from geowarn.config.roster import Tier, tier_of

# -- daily zero reports ---------------------------------------------------------------------

#: Local time of the daily zero report per tier (national relief plan); national has none.
ZERO_REPORT_TIMES: Mapping[Tier, time] = {"county": time(9, 0), "city": time(10, 0), "province": time(12, 0)}


class ZeroReportDue(NamedTuple):
    tier: Tier
    admin: str
    due: float


def _zone(tz: str | tzinfo) -> tzinfo:
    return ZoneInfo(tz) if isinstance(tz, str) else tz


def _slot(day: date, at: time, zone: tzinfo) -> float:
    return datetime.combine(day, at, tzinfo=zone).timestamp()


def _latest_slot(now: float, at: time, zone: tzinfo) -> float:
    today = datetime.fromtimestamp(now, zone).date()
    slot = _slot(today, at, zone)
    return slot if slot <= now else _slot(today - timedelta(days=1), at, zone)


def zero_report_due(
    last_sent: Mapping[str, float | None],
    now: float,
    tz: str | tzinfo = "Asia/Shanghai",
    times: Mapping[Tier, time] = ZERO_REPORT_TIMES,
) -> list[ZeroReportDue]:
    """The daily zero reports due at ``now``: [(tier, admin, due time)], sorted by admin.

    ``last_sent`` maps each watched admin code to when its last zero report went out (seed it
    with the time the unit came under watch; None means never, so the latest slot is due).
    Only the latest missed slot is reported: after a long outage one report, not a backlog.
    """
    zone = _zone(tz)
    out = []
    for admin in sorted(last_sent):
        tier = tier_of(admin)
        if tier not in times:
            continue
        slot = _latest_slot(now, times[tier], zone)
        last = last_sent[admin]
        if last is None or last < slot:
            out.append(ZeroReportDue(tier, admin, slot))
    return out


def next_zero_report(
    last_sent: Mapping[str, float | None],
    now: float,
    tz: str | tzinfo = "Asia/Shanghai",
    times: Mapping[Tier, time] = ZERO_REPORT_TIMES,
) -> float | None:
    """When ``zero_report_due`` next returns something (≤ now if something is due already)."""
    zone = _zone(tz)
    best: float | None = None
    for admin, last in last_sent.items():
        tier = tier_of(admin)
        if tier not in times:
            continue
        slot = _latest_slot(now, times[tier], zone)
        if last is None or last < slot:
            t = slot
        else:
            day = datetime.fromtimestamp(slot, zone).date() + timedelta(days=1)
            t = _slot(day, times[tier], zone)
        best = t if best is None else min(best, t)
    return best
