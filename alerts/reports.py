"""The quick report (速报) draft: what the county must report on an orange or red warning.

The national plans ask a county to report, within hours, where and when, the hazard and its
scale, what triggers it and how it trends, the forecast, who is threatened, and what has been
done. Most of that is already known to GeoWarn: the site's 防灾明白卡 (config/registry.Site)
and the warning's engine state (the reason, evidence and forecast, the acknowledgements with
their notes, the history). ``quick_report_draft`` puts it together so the duty officer edits
and submits rather than writes from nothing.
"""

from __future__ import annotations

from typing import Any

from geowarn.alerts.model import ReportTask, SiteAlert
from geowarn.core.levels import LEVELS
from geowarn.core.timefmt import rfc3339
from geowarn.config.registry import Site


def quick_report_draft(site: Site, state: SiteAlert, task: ReportTask) -> dict[str, Any]:
    """A JSON-able draft of the quick report ``task`` on ``state``'s warning at ``site``."""
    info = LEVELS[task.level]
    evidence = dict(state.evidence)
    forecast = evidence.get("forecast")
    failure = forecast.get("failure_time") if isinstance(forecast, dict) else None
    acks = [{"by": a.by, "note": a.note, "t": rfc3339(a.t), "level": a.level} for a in state.acks]
    measures = [f"{a['t']} {a['by']}: {a['note']}".strip() for a in acks]
    return {
        "task_id": task.task_id,
        "warning_id": task.warning_id,
        "due": rfc3339(task.due),
        "site": site.site,
        "name": site.name,
        "place": {"admin": site.admin, "lat": site.lat, "lon": site.lon},
        "hazard": site.hazard,
        "scale": site.scale,
        "time": rfc3339(state.raised) if state.raised is not None else rfc3339(task.opened),
        "level": task.level,
        "colour": info.colour,
        "level_name": f"{info.zh} {info.en}",
        "trigger_and_trend": state.reason,
        "evidence": evidence,
        "forecast_failure_time": failure,
        "threatened": {"people": site.threatened_people, "households": site.threatened_households},
        "evacuation_route": site.evacuation_route,
        "shelter": site.shelter,
        "responsible": {"name": site.responsible, "phone": site.phone},
        "measures_taken": measures,
        "acks": acks,
        "history": [[rfc3339(e.t), e.rule, e.level, e.status, e.detail] for e in state.history[-20:]],
    }
