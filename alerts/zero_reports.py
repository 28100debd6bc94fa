"""Daily zero reports (零报告): when each tier's report for its admin units is due, in local
time (county 09:00, city 10:00, province 12:00, as in the national relief plan), and the
devices' clock health a report carries. Pure functions.

A zero report's figures come from ``alerts.chain.zero_stats_of`` (readings, devices online);
``with_clock_health`` adds the devices of the unit whose clock looks wrong at the report's
time (detection's clock health, detectors/clockhealth.py): ``devices_clock_trouble`` and
their names in ``clock_trouble``. Only when there are some: a clean day's report is as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from geowarn.config.registry import Registry
from geowarn.config.roster import Tier, chain_of, tier_of

#: A zero report's figures for (admin, since, until); alerts.chain.ZeroStats.
Figures = Callable[[str, float, float], Mapping[str, Any]]
#: Devices named in a zero report's ``clock_trouble`` at most (the count is always whole).
CLOCK_TROUBLE_NAMED = 20

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


# -- devices' clocks --------------------------------------------------------------------------


def with_clock_health(stats: Figures, registry: Registry, health: Callable[[], Mapping[str, Any] | None]) -> Figures:
    """``stats`` plus the unit's devices whose clock looks wrong, from ``health()`` (the
    detection worker's last ``SiteFusion.clock_health()``; None: nothing known yet)."""

    def figures(admin: str, since: float, until: float) -> dict[str, Any]:
        out = dict(stats(admin, since, until))
        doc = health() or {}
        sites = registry.sites
        bad = sorted(
            device
            for device, h in doc.get("devices", {}).items()
            if h.get("trouble") and h.get("site") in sites and any(a == admin for _, a in chain_of(sites[h["site"]].admin))
        )
        if bad:
            out["devices_clock_trouble"] = len(bad)
            out["clock_trouble"] = bad[:CLOCK_TROUBLE_NAMED]
        return out

    return figures
