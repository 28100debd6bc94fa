"""Daily zero reports (零报告): when each tier's report for its admin units is due, in local
time (county 09:00, city 10:00, province 12:00, as in the national relief plan), and the
devices' clock health a report carries. Pure functions.

A zero report's figures come from ``alerts.chain.zero_stats_of`` (readings, devices online);
``with_clock_health`` adds the devices of the unit whose clock looks wrong at the report's
time (detection's clock health, detectors/clockhealth.py): ``devices_clock_trouble`` and
their names in ``clock_trouble``. Only when there are some: a clean day's report is as before.
``with_availability`` adds the unit's online rate and its devices' monthly transmission
availability (defined there), naming the devices below a threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from geowarn.config.registry import Registry
from geowarn.config.roster import Tier, chain_of, tier_of

#: A zero report's figures for (admin, since, until); alerts.chain.ZeroStats.
Figures = Callable[[str, float, float], Mapping[str, Any]]
#: Devices named in a zero report's ``clock_trouble`` at most (the count is always whole).
CLOCK_TROUBLE_NAMED = 20
#: Real readings by (site, device) with event time in [since, until) (alerts.chain.ReadingCounts).
ReadingsByDevice = Callable[[Collection[str], float, float], Mapping[tuple[str, str], int]]
#: A device whose monthly transmission availability is below this is named in the zero report.
AVAILABILITY_THRESHOLD = 0.9
#: Devices named in a zero report's ``low_availability`` at most (the count is always whole).
AVAILABILITY_NAMED = 20

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


# -- online rate and monthly transmission availability ------------------------------------------


def month_start(t: float, tz: str | tzinfo = "Asia/Shanghai") -> float:
    """Local midnight of the first day of ``t``'s month in zone ``tz``."""
    zone = _zone(tz)
    day = datetime.fromtimestamp(t, zone).date().replace(day=1)
    return _slot(day, time(0, 0), zone)


def with_availability(
    stats: Figures,
    registry: Registry,
    readings: ReadingsByDevice,
    tz: str | tzinfo = "Asia/Shanghai",
    *,
    threshold: float = AVAILABILITY_THRESHOLD,
    not_before: float | None = None,
) -> Figures:
    """``stats`` plus the unit's online rate and its devices' transmission availability over
    the month so far.

    - ``online_rate``: ``devices_online / devices`` of ``stats`` (the report's 24 h), when
      those are there.
    - A device's **transmission availability** over the month is the readings received from
      it (real ones, not drills; every channel's) with event time in [``month_start``, the
      report's time) divided by the readings expected there: for each of its channels, the
      whole number of its registry ``interval_s`` that fit in the window, summed. A device
      that sends more than expected counts as 1, never more, so it cannot hide another's gaps.
      The window starts at ``month_start(until)`` in ``tz``, or at ``not_before`` if later
      (a replay's first reading: there was nothing to receive before it).
    - ``availability``: the unit's, Σ received (capped per device) / Σ expected over its
      devices; ``availability_since``: the window's start (epoch seconds).
    - ``devices_low_availability``: how many are below ``threshold`` (``availability_threshold``); ``low_availability``:
      the worst ``AVAILABILITY_NAMED`` of them as ``[device, availability]``, worst first.
    Nothing of this when no device could have sent anything yet (the window holds no interval).
    """

    def figures(admin: str, since: float, until: float) -> dict[str, Any]:
        out = dict(stats(admin, since, until))
        if out.get("devices"):
            out["online_rate"] = round(int(out.get("devices_online", 0)) / int(out["devices"]), 4)
        start = month_start(until, tz)
        if not_before is not None:
            start = max(start, not_before)
        span = until - start
        sites = [code for code, site in registry.sites.items() if any(a == admin for _, a in chain_of(site.admin))]
        expected = {
            (code, d.device): sum(int(span // c.interval_s) for c in d.channels) for code in sites for d in registry.sites[code].devices
        }
        expected = {k: n for k, n in expected.items() if n > 0}
        if not expected:
            return out
        got = readings(sites, start, until)
        per_device = {k: min(int(got.get(k, 0)), n) / n for k, n in expected.items()}
        out["availability"] = round(sum(min(int(got.get(k, 0)), n) for k, n in expected.items()) / sum(expected.values()), 4)
        out["availability_since"] = start
        low = sorted(((a, device) for (_, device), a in per_device.items() if a < threshold))
        out["availability_threshold"] = threshold
        out["devices_low_availability"] = len(low)
        out["low_availability"] = [[device, round(a, 4)] for a, device in low[:AVAILABILITY_NAMED]]
        return out

    return figures
