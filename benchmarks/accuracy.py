#!/usr/bin/env python3
"""Accuracy of the detectors: simulated failures, stable slopes and real records, against the
targets of the accuracy issue. Writes ``ACCURACY.md`` (every figure in it comes from here).

Everything runs through the public path the daemon uses: readings become ``FeedRow``s, the
registry is built with ``config.registry.parse_registry`` (simulations) or
``geowarn.ingest.feeds.registry_from_rows`` (real records), and ``geowarn.service.replay.replay_rows`` runs the
quality guards, detectors and site fusion in event time and writes ``alerts.jsonl``. The
quality counters of the Baishuihe section come from driving ``detectors.fusion.SiteFusion``
directly with the same readings (``replay_rows`` keeps its fusion to itself); the script checks
that both give the same level changes.

Sections:

1. Simulated failures (Voight's law, α in 1.7–2.2, two GNSS receivers + an extensometer per
   slope, GNSS σ 2–5 mm, 10-minute readings, gaps and multipath outliers): lead time of the
   first orange and red, and the error of the failure forecast at the first red, per α bin.
2. Stable noisy slopes over a simulated year: orange/red (must be none) and yellow episodes
   per device-year.
3. Three Gorges Baishuihe (and Bazimen) monthly GPS: stable points, the 2007 acceleration,
   the return to normal, the 2011-03 row copied from 2008-01.
4. Cubatão daily rain against dated landslides: hit rate and alarm fraction next to the
   Caine (1980) threshold and 3-day cumulative rain, computed here independently; 4.1 the
   site's own thresholds (``geowarn rain-calibrate``) fitted on 2000–2007 and scored on
   2008–2015 against the defaults (``benchmarks/rain_calibration.py``), issue 14 item 7.
5. Lamosano 11-day displacement and rain (a slow creep without failure: a false-alarm check).
6. The bundled `geowarn simulate` scenarios, generated as an engineer does and scored from
   their `FEED.truth.json` files alone.
7. The real records of ``benchmarks/data`` on both sides of its tuning / validation split
   (``validation_data.py``): false yellow / orange / red per site-year on stable GNSS stations,
   Outang (validation, not blind) without a registry, Seattle and Mukilteo rain, and the lead
   times on the one real record that ran to a failure (Dexing, ground-based radar, validation).

Real-data sections read ``<repo>/../shared/data`` and say "skipped: data absent" without it.
Seeds are fixed and results do not depend on the number of worker processes: the same command
gives the same figures (only the header's date, machine, commit and run time change).

    python3 benchmarks/accuracy.py                  # full run, rewrites ACCURACY.md (5–10 min on 2 CPUs)
    python3 benchmarks/accuracy.py --quick          # small subset (a few minutes), markdown to stdout
    python3 benchmarks/accuracy.py --quick --out /tmp/a.md --jobs 1
    python3 benchmarks/accuracy.py --validation      # §7 only (about a minute), markdown to stdout
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import itertools
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from geowarn.config.registry import Policy, Registry, parse_registry
from geowarn.detectors.fusion import SiteFusion, detectors_for
from geowarn.detectors.inverse_velocity import ALPHA_PRIOR_SD
from geowarn.detectors.noise import noise_for
from geowarn.detectors.rain import RainDetector
from geowarn.detectors.velocity import VelocityDetector
from geowarn.ingest.feeds import FeedRow, registry_from_rows
from geowarn.service.replay import replay_rows
from geowarn.simulators.devices import (
    Extensometer,
    GnssComponent,
    SiteEnvironment,
    Weather,
)
from geowarn.simulators.slope import DAY, StableSlope, VoightFailure

# geowarn is installed (pip install -e .): its packages are geowarn.*, not the repository's
# folders, so the repository is not put on sys.path (its config/ would shadow a library).
REPO = Path(__file__).resolve().parents[1]

DATA = REPO.parent / "shared" / "data"
HOUR = 3600.0
T0 = 1_748_736_000.0  # 2025-06-01T00:00Z: simulated runs start here
NAMES = {0: "normal", 1: "blue", 2: "yellow", 3: "orange", 4: "red"}
STRIP = ".bYOR"  # one character per level in the month strips

# Targets of the issue.
ORANGE_LEAD_H = 48.0
RED_LEAD_H = 12.0
FORECAST_ERR = 0.25
YELLOW_PER_DEVICE_YEAR = 1.0

# Simulated sensors.
INTERVAL_S = 600.0
GNSS_SIGMA_MM = (2.0, 5.0)  # horizontal σ per receiver, drawn uniformly; vertical is twice it
OUTLIER_PROB = 0.005  # multipath spikes of 5–15 σ, per reading and component
GAPS_PER_DAY = 0.2  # per device: one stretch of silence every ~5 days...
GAP_H = (1.0, 6.0)  # ...lasting 1–6 h
ALPHA_BINS = ((1.7, 1.8), (1.8, 1.9), (1.9, 2.0), (2.0, 2.1), (2.1, 2.2))
BASE_V1D = 120.0  # mm/day one day before failure: the Fleet's scenario (VoightFailure.reaching)


def event_time(e: dict[str, Any]) -> float:
    return datetime.fromisoformat(e["t"]).timestamp()


def level_changes(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events that move a level (no-data events only report silence)."""
    return [e for e in events if e["kind"] in ("raise", "upgrade", "downgrade", "lift")]


def replay(rows: list[FeedRow], registry: Registry) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="geowarn-accuracy-") as tmp:
        summary = replay_rows(rows, registry, Path(tmp))
        if summary.rejected:
            raise RuntimeError(f"{summary.rejected} readings were rejected by the replay")
        return summary.events


def fmt(x: float | None, nd: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def pct(x: float | None, nd: int = 0) -> str:
    return "—" if x is None else f"{100 * x:.{nd}f} %"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def med_range(xs: Sequence[float], nd: int = 1) -> str:
    if not xs:
        return "—"
    return f"{fmt(statistics.median(xs), nd)} [{fmt(min(xs), nd)} – {fmt(max(xs), nd)}]"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**MISSED**")


# =============================================================================================
# Simulated slopes
# =============================================================================================


def _site_doc(site: str, gnss: int, extensometers: int) -> dict[str, Any]:
    devices: list[dict[str, Any]] = []
    for i in range(1, gnss + 1):
        devices.append(
            {"device": f"{site}-GNSS{i}", "channels": [{"channel": k, "kind": k, "interval_s": INTERVAL_S} for k in ("gnss_e", "gnss_n", "gnss_u")]}
        )
    for i in range(1, extensometers + 1):
        devices.append({"device": f"{site}-EXT{i}", "channels": [{"channel": "displacement", "kind": "displacement", "interval_s": INTERVAL_S}]})
    # A simulated site needs no card fields beyond the required ones; the county is Zigui's.
    return {"site": site, "name": site, "admin": "420527", "lat": 30.99, "lon": 110.53, "devices": devices}


@dataclass(frozen=True)
class SimSpec:
    """One simulated site: its slope and the draws that make its readings."""

    site: str
    seed: int
    days: float
    alpha: float | None = None  # None: a stable slope
    v1d: float = BASE_V1D


@dataclass
class SimRun:
    spec: SimSpec
    t_f: float | None
    sigmas: dict[str, float]
    gaps_h: float
    readings: int
    events: list[dict[str, Any]]


def simulate(spec: SimSpec, *, gnss: int = 2, extensometers: int = 1) -> tuple[list[FeedRow], Registry, float | None, dict[str, float], float]:
    """The readings of one simulated site (rows), its registry, its failure time (or None),
    the GNSS σ per receiver and the device-hours lost to gaps."""
    rng = np.random.default_rng(np.random.SeedSequence([20251129, spec.seed]))
    t_end = T0 + spec.days * DAY
    slope: VoightFailure | StableSlope
    if spec.alpha is not None:
        slope = VoightFailure.reaching(T0, t_end, v_mm_day=spec.v1d, lead_s=DAY, alpha=spec.alpha, creep_mm_day=0.2)
        t_stop = slope.t_clamp  # the sensors go with the slope
        t_f: float | None = slope.t_f
    else:
        slope = StableSlope(
            T0,
            creep_mm_day=float(rng.uniform(0.005, 0.05)),
            seasonal_phase=float(rng.uniform(0, 2 * math.pi)),
            thermal_phase=float(rng.uniform(0, 2 * math.pi)),
        )
        t_stop = t_end
        t_f = None
    env = SiteEnvironment(spec.site, slope, Weather(rng, T0), azimuth_deg=float(rng.uniform(0, 360)), dip_deg=float(rng.uniform(15, 35)))
    registry = parse_registry({"sites": [_site_doc(spec.site, gnss, extensometers)]}, f"simulated {spec.site}")
    sigmas: dict[str, float] = {}
    models: list[tuple[str, Any]] = []
    for dev in registry.sites[spec.site].devices:
        drng = np.random.default_rng(rng.integers(2**63))
        if "GNSS" in dev.device:
            sigma = float(drng.uniform(*GNSS_SIGMA_MM))
            sigmas[dev.device] = sigma
            for ch in dev.channels:
                models.append((dev.device, GnssComponent(ch, env, drng, sigma_h_mm=sigma, outlier_prob=OUTLIER_PROB)))
        else:
            for ch in dev.channels:
                models.append((dev.device, Extensometer(ch, env, drng)))
    # Gaps: whole devices fall silent (radio, power) for a few hours at random times.
    gaps: dict[str, list[tuple[float, float]]] = {}
    for dev in registry.sites[spec.site].devices:
        n = int(rng.poisson(GAPS_PER_DAY * spec.days))
        spans = []
        for _ in range(n):
            start = float(rng.uniform(T0, t_stop))
            spans.append((start, start + float(rng.uniform(*GAP_H)) * HOUR))
        gaps[dev.device] = spans
    rows: list[FeedRow] = []
    silent: set[tuple[str, float]] = set()  # (device, t) of the readings lost to gaps
    n_steps = math.ceil((t_stop - T0) / INTERVAL_S)
    for i in range(n_steps):
        t = T0 + i * INTERVAL_S
        if t >= t_stop:
            break
        for device, m in models:
            v = m.value(t)  # drawn even when dropped, so a gap does not shift the other draws
            if any(a <= t < b for a, b in gaps[device]):
                silent.add((device, t))
                continue
            rows.append(FeedRow(spec.site, device, m.channel, t, v))
    return rows, registry, t_f, sigmas, len(silent) * INTERVAL_S / HOUR


def run_sim(spec: SimSpec) -> SimRun:
    rows, registry, t_f, sigmas, gaps_h = simulate(spec)
    return SimRun(spec, t_f, sigmas, gaps_h, len(rows), replay(rows, registry))


# -- failures ---------------------------------------------------------------------------------


@dataclass
class FailureResult:
    site: str
    alpha: float
    days: float
    v1d: float
    sigmas: str
    gaps_h: float
    yellow_lead_h: float | None
    orange_lead_h: float | None
    orange_by: str
    orange_fc_h: float | None  # the site's forecast time to failure at the first orange
    red_lead_h: float | None
    red_by: str
    forecast_err: float | None  # |t_f' − t_f| / (t_f − t_red)
    forecast_signed: float | None  # (t_f' − t_f) / (t_f − t_red): > 0 late
    forecast_r2: float | None  # fit quality of the forecast at the first red
    forecast_unc_h: float | None  # its stated uncertainty
    forecast_alpha: float | None  # the Voight α it used (estimated, or the prior's 2)
    red_lowered: bool  # the level came down from red before the failure


def _cause(e: dict[str, Any]) -> str:
    ev = e.get("evidence") or {}
    det = ev.get("detector", "?")
    ch = str(ev.get("channel", "?")).split("-", 1)[-1]
    reason = e.get("reason", "")
    how = "forecast" if "confirmed by a failure forecast" in reason else ("2+ devices" if "confirmed by" in reason else "")
    return f"{det} {ch}" + (f" ({how})" if how else "")


def score_failure(run: SimRun) -> FailureResult:
    assert run.t_f is not None and run.spec.alpha is not None
    t_f = run.t_f
    changes = [e for e in level_changes(run.events) if not e["exercise"]]

    def first(level: int) -> dict[str, Any] | None:
        return next((e for e in changes if e["level"] >= level), None)

    y, o, r = first(2), first(3), first(4)
    err = signed = r2 = unc = f_alpha = None
    lowered = False
    if r is not None:
        t_r = event_time(r)
        f = r.get("forecast")
        if f is not None and f.get("failure_time") is not None:
            signed = (float(f["failure_time"]) - t_f) / (t_f - t_r)
            err = abs(signed)
            r2 = f.get("r2")
            f_alpha = f.get("alpha")
            unc = None if f.get("uncertainty_s") is None else float(f["uncertainty_s"]) / HOUR
        lowered = any(event_time(e) > t_r and e["level"] < 4 for e in changes)
    return FailureResult(
        site=run.spec.site,
        alpha=run.spec.alpha,
        days=run.spec.days,
        v1d=run.spec.v1d,
        sigmas=", ".join(f"{s:.1f}" for s in run.sigmas.values()),
        gaps_h=run.gaps_h,
        yellow_lead_h=None if y is None else (t_f - event_time(y)) / HOUR,
        orange_lead_h=None if o is None else (t_f - event_time(o)) / HOUR,
        orange_by="—" if o is None else _cause(o),
        orange_fc_h=None if o is None or not o.get("forecast") else (float(o["forecast"]["failure_time"]) - event_time(o)) / HOUR,
        red_lead_h=None if r is None else (t_f - event_time(r)) / HOUR,
        red_by="—" if r is None else _cause(r),
        forecast_err=err,
        forecast_signed=signed,
        forecast_r2=r2,
        forecast_unc_h=unc,
        forecast_alpha=f_alpha,
        red_lowered=lowered,
    )


def failure_specs(per_bin: int, *, v1d: float = BASE_V1D, seed0: int = 1000, bins: Sequence[tuple[float, float]] = ALPHA_BINS) -> list[SimSpec]:
    """``per_bin`` slopes per α bin, α uniform within the bin, failure 10–20 days after the
    start. The slope accelerates from the start (2–18 mm/day then, by α and length), so the
    detectors learn their 3-day references on a slope already on its way, as on a slope
    instrumented once it is seen to move."""
    specs = []
    k = 0
    for lo, hi in bins:
        for _ in range(per_bin):
            rng = np.random.default_rng(np.random.SeedSequence([seed0, k]))
            alpha = round(float(rng.uniform(lo, hi)), 3)
            days = round(float(rng.uniform(10.0, 20.0)), 2)
            specs.append(SimSpec(f"F{seed0 % 1000:03d}{k:02d}", seed0 + k, days, alpha, v1d))
            k += 1
    return specs


#: The slopes ``tests/test_accuracy.py`` asserts the targets on: α across 1.9–2.1, failure 10
#: days after the start.
ACCEPTANCE_ALPHAS = (1.9, 1.967, 2.033, 2.1)


def acceptance_specs() -> list[SimSpec]:
    return [SimSpec(f"T{k}", seed=700 + k, days=10.0, alpha=a) for k, a in enumerate(ACCEPTANCE_ALPHAS)]


def failure_bin_rows(results: list[FailureResult], bins: Sequence[tuple[float, float]]) -> list[list[str]]:
    """One row per α bin (the last bin includes its upper edge), then one for all slopes."""
    rows: list[list[str]] = []
    groups: list[tuple[str, list[FailureResult]]] = [
        (f"{lo:.1f}–{hi:.1f}", [r for r in results if lo <= r.alpha < hi or (hi == bins[-1][1] and r.alpha == hi)]) for lo, hi in bins
    ]
    groups.append(("**all**", list(results)))
    for label, rs in groups:
        if not rs:
            continue
        o = [r.orange_lead_h for r in rs if r.orange_lead_h is not None]
        rd = [r.red_lead_h for r in rs if r.red_lead_h is not None]
        errs = [r.forecast_err for r in rs if r.forecast_err is not None]
        signed = [r.forecast_signed for r in rs if r.forecast_signed is not None]
        n = len(rs)
        rows.append(
            [
                label,
                str(n),
                med_range(o),
                f"{sum(1 for x in o if x >= ORANGE_LEAD_H)}/{n}",
                med_range(rd),
                f"{sum(1 for x in rd if x >= RED_LEAD_H)}/{n}",
                f"{len(errs)}/{n}",
                "—" if not errs else f"{pct(statistics.median(errs))} [max {pct(max(errs))}]",
                "—" if not signed else f"{100 * statistics.median(signed):+.0f} %",
                f"{sum(1 for x in errs if x <= FORECAST_ERR)}/{n}",
            ]
        )
    return rows


FAILURE_HEADER = [
    "α bin",
    "slopes",
    "first orange: lead h, median [min – max]",
    "orange ≥ 48 h",
    "first red: lead h, median [min – max]",
    "red ≥ 12 h",
    "forecast at first red",
    "forecast error at first red, median [max]",
    "signed error, median (+ late)",
    "error ≤ 25 %",
]


def failure_case_rows(results: list[FailureResult]) -> list[list[str]]:
    return [
        [
            r.site,
            f"{r.alpha:.3f}",
            f"{r.days:.1f}",
            r.sigmas,
            fmt(r.gaps_h),
            fmt(r.yellow_lead_h),
            fmt(r.orange_lead_h),
            r.orange_by,
            fmt(r.red_lead_h),
            r.red_by,
            "no forecast" if r.forecast_err is None and r.red_lead_h is not None else ("—" if r.forecast_signed is None else f"{100 * r.forecast_signed:+.0f} %"),
            "—" if r.forecast_r2 is None else f"{r.forecast_r2:.2f} / ± {fmt(r.forecast_unc_h)} h / {fmt(r.forecast_alpha, 2)}",
            "yes" if r.red_lowered else "",
        ]
        for r in results
    ]


CASE_HEADER = [
    "slope",
    "α",
    "t_f − t0 (d)",
    "GNSS σ (mm)",
    "gaps (device-h)",
    "yellow lead (h)",
    "orange lead (h)",
    "orange from",
    "red lead (h)",
    "red from",
    "forecast error at red (+ late)",
    "its R² / stated uncertainty / α used",
    "red lowered before t_f",
]


# -- stable slopes ----------------------------------------------------------------------------


@dataclass
class StableResult:
    site: str
    days: float
    devices: int
    readings: int
    gaps_h: float
    highest: int
    blue: int
    yellow: int
    unconfirmed: int  # raw orange/red held at yellow for want of confirmation
    orange_red: int
    yellow_by: dict[str, int] = field(default_factory=dict)


def score_stable(run: SimRun) -> StableResult:
    changes = [e for e in level_changes(run.events) if not e["exercise"]]
    blue = yellow = orange_red = unconfirmed = 0
    yellow_by: dict[str, int] = defaultdict(int)
    prev = 0
    for e in changes:
        lvl = e["level"]
        if lvl >= 1 > prev:
            blue += 1
        if lvl >= 2 > prev:
            yellow += 1
            ev = e.get("evidence") or {}
            yellow_by[f"{ev.get('detector', '?')} on {str(ev.get('channel', '?/?')).split('/')[-1]}"] += 1
        if lvl >= 3 > prev:
            orange_red += 1
        if "not confirmed" in e.get("reason", ""):
            unconfirmed += 1
        prev = lvl
    return StableResult(
        run.spec.site,
        run.spec.days,
        len(run.sigmas) + 1,
        run.readings,
        run.gaps_h,
        max((e["level"] for e in changes), default=0),
        blue,
        yellow,
        unconfirmed,
        orange_red,
        dict(yellow_by),
    )


def stable_specs(n: int, days: float, seed0: int = 5000) -> list[SimSpec]:
    return [SimSpec(f"S{i:02d}", seed0 + i, days) for i in range(n)]


# =============================================================================================
# Real records
# =============================================================================================


def _month_t(ym: str) -> float:
    """A monthly survey stamped on the 15th, 00:00 UTC (the survey day is not recorded)."""
    y, m = (int(x) for x in ym.split("-"))
    return datetime(y, m, 15, tzinfo=UTC).timestamp()


def _ym(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m")


#: GPS columns → channel names (the kind is the name). The points are GNSS receivers: dX is
#: north and dY east in the Chinese survey convention (dir_deg = atan2(dY, dX) is the azimuth:
#: Baishuihe slides north, to the river). dF = √(dX² + dY²) adds nothing to them.
GPS_CHANNELS: tuple[tuple[str, str], ...] = (("dX", "gnss_n"), ("dY", "gnss_e"))
#: The same record with every column as kind ``displacement`` (the detectors then assume an
#: extensometer's noise): a variant, to show what the kind decides.
GPS_AS_DISPLACEMENT: tuple[tuple[str, str], ...] = (("dX", "displacement.dX"), ("dY", "displacement.dY"), ("dF", "displacement.dF"))


def gps_rows(path: Path, *, channels: Sequence[tuple[str, str]] = GPS_CHANNELS, one_site: str | None = None) -> tuple[list[FeedRow], dict[str, list[str]]]:
    """Feed rows of a monthly GPS file: one device per point, and one site per point (or all
    points as devices of ``one_site``); ``channels`` maps columns to channel names; blank
    cells are missing readings. Also the months of each point."""
    rows: list[FeedRow] = []
    months: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            point = r["point"].strip()
            t = _month_t(r["date"])
            any_value = False
            for col, channel in channels:
                raw = r[col].strip()
                if raw:
                    rows.append(FeedRow(one_site or point, point, channel, t, float(raw)))
                    any_value = True
            if any_value:
                months[point].append(r["date"])
    return rows, dict(months)


@dataclass
class GpsResult:
    events: list[dict[str, Any]]
    strips: dict[str, dict[str, int]]  # site -> month -> level after that month's readings
    suspects: list[tuple[str, str, str, str]]  # (month, site, device/channel, flag)
    quality: dict[str, int]
    agree: bool  # SiteFusion driven here gives the same level changes as replay_rows
    readings: dict[tuple[str, str], int]  # (site, month) -> readings
    registry: Registry


def run_gps(rows: list[FeedRow]) -> GpsResult:
    registry = registry_from_rows(rows, "gps")
    events = replay(rows, registry)
    # The same readings through a SiteFusion of our own, to see which readings the quality
    # guards held back (SiteFusion.quality counts suspect readings by flag).
    fusion = SiteFusion(registry)
    suspects = []
    mine = []
    for r in sorted(rows, key=lambda r: r.t):
        info = registry.channel(r.site, r.device, r.channel)
        assert info is not None
        before = dict(fusion.quality)
        for c in fusion.update_all(info, r.t, r.value):
            if c.kind is None:
                mine.append((c.site, round(c.t), c.level, c.previous))
        for flag, n in fusion.quality.items():
            if n > before.get(flag, 0):
                suspects.append((_ym(r.t), r.site, f"{r.device}/{r.channel}", flag))
    theirs = [(e["site"], round(event_time(e)), e["level"], e["previous_level"]) for e in level_changes(events)]
    strips: dict[str, dict[str, int]] = defaultdict(dict)
    readings: dict[tuple[str, str], int] = defaultdict(int)
    by_site = defaultdict(list)
    for e in level_changes(events):
        by_site[e["site"]].append((event_time(e), e["level"]))
    for r in rows:
        lv = 0
        for t, level in by_site[r.site]:
            if t <= r.t:
                lv = level
        strips[r.site][_ym(r.t)] = lv
        readings[(r.site, _ym(r.t))] += 1
    return GpsResult(events, dict(strips), suspects, dict(fusion.quality), mine == theirs, dict(readings), registry)


def month_axis(first: str, last: str) -> list[str]:
    y, m = (int(x) for x in first.split("-"))
    out = []
    while f"{y:04d}-{m:02d}" <= last:
        out.append(f"{y:04d}-{m:02d}")
        m += 1
        if m == 13:
            y, m = y + 1, 1
    return out


def strip_header(axis: list[str]) -> str:
    """Year labels placed over the first month of each year of ``strip_line``."""
    cells: list[str] = []
    for ym in axis:
        if ym.endswith("-01") and cells:
            cells.append(" ")
        cells.append(" ")
    line = list("".join(cells))
    pos = 0
    for i, ym in enumerate(axis):
        if ym.endswith("-01") and i:
            pos += 1
        if ym.endswith("-01") or i == 0:
            label = ym[:4] if ym.endswith("-01") else ""
            line[pos : pos + len(label)] = label
        pos += 1
    return "".join(line).rstrip()


def strip_line(strip: dict[str, int], axis: list[str]) -> str:
    """One character a month, a space between years: . normal, b blue, Y yellow, O orange,
    R red, _ no reading."""
    out: list[str] = []
    for ym in axis:
        if ym.endswith("-01") and out:
            out.append(" ")
        out.append(STRIP[strip[ym]] if ym in strip else "_")
    return "".join(out)


BSH_STABLE = ("ZG91", "ZG92", "ZG94", "ZG119", "ZG120")
BSH_ACTIVE = ("ZG93", "ZG118", "DX-01")
BSH_ACTIVE_MORE = ("DX-02", "DX-03", "DX-04")
ACCEL_2007 = ("2007-05", "2007-06", "2007-07", "2007-08")
DUPLICATE_MONTH = "2011-03"


@dataclass
class BaishuiheChecks:
    stable: dict[str, int]  # highest level
    active: dict[str, int]  # highest level in 2007-05..08
    first_yellow: dict[str, str | None]
    back_down: dict[str, str | None]  # first month at ≤ blue after the first yellow
    dup_flagged: dict[str, tuple[int, int]]  # point -> (flagged channels, channels) at 2011-03
    dup_raise: list[str]  # points whose level rose at 2011-03 or 2011-04
    other_suspects: list[tuple[str, str, str, str]]


def check_baishuihe(res: GpsResult) -> BaishuiheChecks:
    strips = res.strips
    stable = {p: max(strips.get(p, {0: 0}).values()) for p in BSH_STABLE}
    active = {p: max((strips.get(p, {}).get(m, 0) for m in ACCEL_2007), default=0) for p in (*BSH_ACTIVE, *BSH_ACTIVE_MORE)}
    first_yellow = {p: next((m for m, lv in sorted(strips.get(p, {}).items()) if lv >= 2), None) for p in (*BSH_ACTIVE, *BSH_ACTIVE_MORE)}
    back_down: dict[str, str | None] = {}
    for p in (*BSH_ACTIVE, *BSH_ACTIVE_MORE):
        fy = first_yellow[p]
        after = [(m, lv) for m, lv in sorted(strips.get(p, {}).items()) if fy is not None and m > fy]
        back_down[p] = next((m for m, lv in after if lv <= 1), None)
    dup_flagged: dict[str, tuple[int, int]] = {}
    for p in strips:
        if DUPLICATE_MONTH in strips[p]:
            flagged = {ch for (m, s, ch, _f) in res.suspects if m == DUPLICATE_MONTH and s == p}
            dup_flagged[p] = (len(flagged), res.readings[(p, DUPLICATE_MONTH)])
    dup_raise = sorted(
        {e["site"] for e in level_changes(res.events) if _ym(event_time(e)) in (DUPLICATE_MONTH, "2011-04") and e["level"] > e["previous_level"]}
    )
    others = [s for s in res.suspects if s[0] != DUPLICATE_MONTH]
    return BaishuiheChecks(stable, active, first_yellow, back_down, dup_flagged, dup_raise, others)


@dataclass
class WhatIf:
    name: str
    strips: dict[str, dict[str, int]]  # point -> month -> level

    def first_yellow(self, point: str) -> str | None:
        return next((m for m, lv in sorted(self.strips[point].items()) if lv >= 2), None)

    def highest(self, points: Iterable[str]) -> int:
        return max(max(self.strips[p].values(), default=0) for p in points)


def velocity_what_if(path: Path) -> list[WhatIf]:
    """The velocity ladder alone on each point's dF (the quantity the README describes the
    steps in): the ``VelocityDetector`` that ``detectors_for`` builds for the monthly channel,
    and one with a 3-reading window, 3 points and z = 3. An experiment on the detector's public
    constructor, not what the daemon runs; the 2011-03 row is left out (the quality guard's
    business)."""
    rows: list[FeedRow] = []
    with open(path, encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["dF"].strip() and r["date"] != DUPLICATE_MONTH:
                rows.append(FeedRow(r["point"], r["point"], "displacement", _month_t(r["date"]), float(r["dF"])))
    registry = registry_from_rows(rows, "baishuihe dF")
    built: dict[str, VelocityDetector] = {}
    for point in sorted({r.site for r in rows}):
        info = registry.channel(point, point, "displacement")
        assert info is not None
        det = dict(detectors_for(info, registry))["velocity"]
        assert isinstance(det, VelocityDetector)
        built[point] = det
    any_det = next(iter(built.values()))
    info = registry.channel(rows[0].site, rows[0].device, "displacement")
    assert info is not None
    interval = info.interval_s
    policy = registry.sites[rows[0].site].policy
    name = f"as built: window {any_det.window_s / interval:.0f} readings, persist {any_det.persist}, z {any_det.z:g}"

    def variant() -> VelocityDetector:
        # detectors_for's hold: never below two reporting intervals
        return VelocityDetector(
            policy.velocity_per_day.as_list(),
            window_s=3 * interval,
            min_points=3,
            z=3.0,
            persist=any_det.persist,
            hysteresis=policy.hysteresis,
            hold_s=max(policy.hold_s, 2 * interval),
        )

    out = []
    for label, make in ((name, lambda p: built[p]), (f"window 3 readings (min 3 points), persist {any_det.persist}, z 3", lambda p: variant())):
        strips: dict[str, dict[str, int]] = {}
        for p in built:
            det = make(p)
            strips[p] = {_ym(r.t): det.update(r.t, r.value).level for r in rows if r.site == p}
        out.append(WhatIf(label, strips))
    return out


# -- Cubatão ----------------------------------------------------------------------------------


@dataclass
class RainResult:
    days: list[date]
    rain: dict[date, float]
    landslides: dict[date, int]
    geowarn_level: dict[date, int]
    first: date
    last: date


def load_cubatao() -> tuple[dict[date, float], dict[date, int]]:
    base = DATA / "cubatao_brazil_rain_landslides"
    rain: dict[date, float] = {}
    with open(base / "cubatao_hb_rain_daily_long.csv", encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["rain_mm"].strip():
                rain[date.fromisoformat(r["date"])] = float(r["rain_mm"])
    slides: dict[date, int] = {}
    with open(base / "cubatao_landslide_days.csv", encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            slides[date.fromisoformat(r["date"])] = int(r["n_landslides"])
    return rain, slides


def _day_end(d: date) -> float:
    """A daily total is the rain of the day ending at the next midnight (UTC here: the
    record's local day, shifted as a whole, which changes nothing day by day)."""
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() + DAY


def run_cubatao(rain: dict[date, float], slides: dict[date, int]) -> RainResult:
    rows = [FeedRow("CUB", "CUB-HB", "rain", _day_end(d), v) for d, v in sorted(rain.items())]
    registry = registry_from_rows(rows, "cubatao")
    events = level_changes(replay(rows, registry))
    first = date(2000, 1, 1)
    last = date(2015, 12, 31)  # the landslide list covers 2000–2015; the rain runs on to 2016
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    level: dict[date, int] = {}
    k = 0
    lv = 0
    for d in days:
        t_end = _day_end(d)
        while k < len(events) and event_time(events[k]) <= t_end:
            lv = events[k]["level"]
            k += 1
        level[d] = lv
    return RainResult(days, rain, {d: n for d, n in slides.items() if first <= d <= last}, level, first, last)


def rain_method_levels(rain: dict[date, float], days: list[date]) -> dict[str, dict[date, int]]:
    """Each method of the daemon's rain detector on its own, day by day: the same
    ``RainDetector.for_channel`` a daily channel gets, its verdict's ``levels`` evidence read
    after each daily total (a diagnostic of which method raises GeoWarn's rain level)."""
    det = RainDetector.for_channel(interval_s=DAY)
    out: dict[str, dict[date, int]] = defaultdict(dict)
    last: dict[str, int] = {}
    wanted = set(days)
    for d, x in sorted(rain.items()):
        v = det.update(_day_end(d), x)
        if not v.warming_up:
            last = dict(v.evidence.get("levels", {}))
        if d in wanted:
            for name, lv in last.items():
                out[name][d] = int(lv)
    return dict(out)


def caine_alarm(days: list[date], rain: dict[date, float]) -> dict[date, bool]:
    """Caine (1980) I = 14.82·D^−0.39 (mm/h, h) on daily totals: an event is a run of wet days
    (rain > 0); on each of its days, D = 24 h × days so far and I = event rain so far / D."""
    out: dict[date, bool] = {}
    total = 0.0
    n = 0
    for d in days:
        x = rain.get(d, 0.0)
        if x > 0:
            total += x
            n += 1
            dur_h = 24.0 * n
            out[d] = total / dur_h >= 14.82 * dur_h ** -0.39
        else:
            total, n = 0.0, 0
            out[d] = False
    return out


def cumulative_alarm(days: list[date], rain: dict[date, float], threshold_mm: float, window_days: int = 3) -> dict[date, bool]:
    sums = rolling_sums(days, rain, window_days)
    return {d: sums[d] >= threshold_mm for d in days}


def rolling_sums(days: list[date], rain: dict[date, float], window_days: int) -> dict[date, float]:
    return {d: sum(rain.get(d - timedelta(days=k), 0.0) for k in range(window_days)) for d in days}


def threshold_for_fraction(days: list[date], rain: dict[date, float], fraction: float, window_days: int = 3) -> float:
    """The smallest 3-day total whose alarm fraction does not exceed ``fraction``."""
    sums = sorted(rolling_sums(days, rain, window_days).values(), reverse=True)
    k = max(1, math.floor(fraction * len(sums)))
    # Alarm at >= threshold: take a value just above the (k+1)-th largest so at most k days fire.
    return float(np.nextafter(sums[k], math.inf)) if k < len(sums) else sums[-1]


@dataclass
class RainScore:
    name: str
    alarm_fraction: float
    hit_days: int
    slide_days: int
    hit_records: int
    records: int
    causal_hits: int
    hits_no_jan1: int
    slide_days_no_jan1: int


def score_rain(name: str, alarm: dict[date, bool], slides: dict[date, int], days: list[date]) -> RainScore:
    def on(d: date) -> bool:
        return alarm.get(d, False)

    hit = {d: on(d - timedelta(days=1)) or on(d) or on(d + timedelta(days=1)) for d in slides}
    causal = {d: on(d - timedelta(days=1)) or on(d) for d in slides}
    jan1 = {d for d in slides if d.month == 1 and d.day == 1}
    return RainScore(
        name,
        sum(1 for d in days if on(d)) / len(days),
        sum(hit.values()),
        len(slides),
        sum(slides[d] for d in slides if hit[d]),
        sum(slides.values()),
        sum(causal.values()),
        sum(1 for d in slides if hit[d] and d not in jan1),
        len(slides) - len(jan1),
    )


# -- Lamosano ---------------------------------------------------------------------------------


def run_lamosano() -> dict[str, Any]:
    path = DATA / "lamosano_italy" / "df.csv"
    rows: list[FeedRow] = []
    cum = 0.0
    n = 0
    with open(path, encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            d = date.fromisoformat(r["date"])
            t = _day_end(d)
            cum += float(r["p5"])  # p5 is the 11-day increment; the sensor reads the sum
            rows.append(FeedRow("LAMO", "LAMO-P5", "displacement", t, round(cum, 3)))
            rows.append(FeedRow("LAMO", "LAMO-RG", "rain", t, float(r["rain"])))
            n += 1
    registry = registry_from_rows(rows, "lamosano")
    events = level_changes(replay(rows, registry))
    t_first, t_last = rows[0].t, rows[-1].t
    time_at: dict[int, float] = defaultdict(float)
    lv, t_prev = 0, t_first
    for e in events:
        t = event_time(e)
        time_at[lv] += t - t_prev
        lv, t_prev = e["level"], t
    time_at[lv] += t_last - t_prev
    total = t_last - t_first
    raised = [e for e in events if e["level"] > e["previous_level"]]
    return {
        "steps": n,
        "total_mm": cum,
        "highest": max((e["level"] for e in events), default=0),
        "time_fraction": {k: v / total for k, v in sorted(time_at.items())},
        "raises": [(datetime.fromtimestamp(event_time(e), UTC).date().isoformat(), e["level"], e["reason"]) for e in raised],
    }


# =============================================================================================
# The report
# =============================================================================================


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        return head + (" (with uncommitted changes to tracked files)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}"


def parallel(fn: Callable[[Any], Any], items: list[Any], jobs: int) -> list[Any]:
    if jobs <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(fn, items))


@dataclass
class Plan:
    failure_per_bin: int
    sensitivity_per_bin: int
    sensitivity_v1d: tuple[float, ...]
    stable_sites: int
    stable_days: float


FULL = Plan(failure_per_bin=8, sensitivity_per_bin=2, sensitivity_v1d=(60.0, 240.0), stable_sites=10, stable_days=365.0)
QUICK = Plan(failure_per_bin=1, sensitivity_per_bin=0, sensitivity_v1d=(), stable_sites=2, stable_days=30.0)


def sim_failures(plan: Plan, jobs: int) -> tuple[list[FailureResult], dict[float, list[FailureResult]]]:
    runs = parallel(run_sim, failure_specs(plan.failure_per_bin), jobs)
    base = [score_failure(r) for r in runs]
    sens: dict[float, list[FailureResult]] = {}
    for k, v1d in enumerate(plan.sensitivity_v1d):
        if plan.sensitivity_per_bin:
            runs = parallel(run_sim, failure_specs(plan.sensitivity_per_bin, v1d=v1d, seed0=2000 + 100 * k), jobs)
            sens[v1d] = [score_failure(r) for r in runs]
    return base, sens


def sim_stable(plan: Plan, jobs: int) -> list[StableResult]:
    return [score_stable(r) for r in parallel(run_sim, stable_specs(plan.stable_sites, plan.stable_days), jobs)]


@dataclass
class Section:
    """One part of the report: its markdown, its rows of the targets table, and what the
    reader should take from it (misses with their cause and a suggested fix)."""

    text: list[str] = field(default_factory=list)
    targets: list[list[str]] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    def w(self, *parts: str) -> None:
        self.text.extend(parts)


def _policy_text(policy: Policy) -> str:
    h = HOUR
    return (
        f"orange and red need {policy.confirm_devices} devices at orange or above, or a failure forecast within "
        f"{policy.forecast_confirms_s / h:g} h whose fit has R² ≥ {policy.forecast_confirm_r2:g}; the forecast's levels: yellow ≤ {policy.forecast_yellow_s / h:g} h, orange ≤ "
        f"{policy.forecast_orange_s / h:g} h, red ≤ {policy.forecast_red_s / h:g} h to failure, Voight's α estimated from each "
        f"channel's velocities since the onset of acceleration around a prior of {policy.voight_alpha:g} ± {ALPHA_PRIOR_SD:g}"
    )


def section_failures(plan: Plan, jobs: int) -> Section:
    sec = Section()
    policy = Policy()
    fails, sens = sim_failures(plan, jobs)
    n = len(fails)
    o_ok = sum(1 for r in fails if r.orange_lead_h is not None and r.orange_lead_h >= ORANGE_LEAD_H)
    r_ok = sum(1 for r in fails if r.red_lead_h is not None and r.red_lead_h >= RED_LEAD_H)
    f_ok = sum(1 for r in fails if r.forecast_err is not None and r.forecast_err <= FORECAST_ERR)
    no_fc = sum(1 for r in fails if r.red_lead_h is not None and r.forecast_err is None)
    sec.targets += [
        ["1", "simulated failures: first orange ≥ 48 h before failure", f"{o_ok}/{n} slopes", verdict(o_ok == n)],
        ["1", "simulated failures: first red ≥ 12 h before failure", f"{r_ok}/{n} slopes", verdict(r_ok == n)],
        ["1", "forecast error at the first red ≤ 25 %", f"{f_ok}/{n} slopes ({no_fc} without a forecast at the first red)", verdict(f_ok == n)],
    ]
    sec.w(
        "## 1. Simulated failures\n",
        f"{n} slopes ({plan.failure_per_bin} per α bin, α uniform in the bin), each a `VoightFailure.reaching` slope: "
        f"Voight's law dv/dt = A·v^α plus 0.2 mm/day creep, failing {min(r.days for r in fails):.0f}–{max(r.days for r in fails):.0f} days "
        f"after the start, with the velocity passing {BASE_V1D:g} mm/day one day before failure — the scenario of the "
        "project's simulated fleet (`simulators/fleet.py`). Each slope is one site with two GNSS receivers (e, n, u; "
        f"horizontal σ drawn in {GNSS_SIGMA_MM[0]:g}–{GNSS_SIGMA_MM[1]:g} mm per receiver, vertical twice that; multipath spikes of 5–15 σ "
        f"with probability {OUTLIER_PROB:g} per reading) and one wire extensometer (σ 0.1 mm), every 10 minutes, like the example "
        f"site BSH. Each device falls silent about every {1 / GAPS_PER_DAY:g} days for {GAP_H[0]:g}–{GAP_H[1]:g} h (Poisson, anywhere in the run). "
        f"The default site policy applies ({_policy_text(policy)}). "
        "Lead time = t_f − time of the first site event at that level; the forecast is the event's `forecast.failure_time` "
        "(the earliest of the site's channels); error = |forecast − t_f| / (t_f − t at the first red).\n",
        table(FAILURE_HEADER, failure_bin_rows(fails, ALPHA_BINS)),
        "",
        "The forecast is the straight line through v^(1−α), with Voight's α estimated from the channel's own velocities since the "
        "onset of acceleration (up to 5 fit windows back, velocities from windows with a data gap off their centre left out) and "
        f"combined with a prior of {policy.voight_alpha:g} ± {ALPHA_PRIOR_SD:g} (`detectors/inverse_velocity.py`, \"Estimating α\"): "
        "a poorly determined α leans back to the Fukuzono line (α = 2), which is early for α < 2 (signed error < 0, the safe "
        "side) and late for α > 2. Which detector made the first orange and red, per slope (\"(forecast)\": confirmed by a "
        "failure forecast; \"(2+ devices)\": by two devices at orange or above), and the α the reported forecast used:\n",
        "<details><summary>per slope</summary>\n",
        table(CASE_HEADER, failure_case_rows(fails)),
        "\n</details>\n",
    )
    if sens:
        rows = []
        for v1d, rs in [(BASE_V1D, fails), *sens.items()]:
            for row in failure_bin_rows(rs, ((1.7, 1.9), (1.9, 2.1), (2.1, 2.2))):
                rows.append([f"{v1d:g}", *row])
        sec.w(
            "### Sensitivity to the scenario's speed\n",
            "The lead times depend on how fast the slope moves at a given time before failure, which the targets do not fix: in "
            f"the scenario above the velocity ladder (orange 72, red 120 mm/day) reaches red about 21 h before failure by "
            f"construction. The same kind of draws with the velocity one day before failure at "
            f"{' and '.join(f'{v:g}' for v in sens)} mm/day instead of {BASE_V1D:g} ({plan.sensitivity_per_bin} slopes per α bin; "
            "the first rows repeat the main run in coarser bins):\n",
            table(["v 1 day before t_f (mm/day)", *FAILURE_HEADER], rows),
            "",
        )
    accept = [score_failure(r) for r in parallel(run_sim, acceptance_specs(), jobs)]
    sec.w(
        "### The acceptance tests' slopes\n",
        f"`tests/test_accuracy.py` asserts the targets on {len(accept)} slopes with α in 1.9–2.1 failing 10 days after the "
        "start (the same models, noise, spikes and gaps; their own seeds):\n",
        table(CASE_HEADER, failure_case_rows(accept)),
        "",
    )
    sec.findings += failure_findings(fails, "", policy)
    sec.findings += failure_findings(accept, "acceptance-test ", policy)
    if sens:
        slow = sens.get(min(sens))
        if slow and any(r.red_lead_h is None or r.red_lead_h < RED_LEAD_H for r in slow):
            late = sorted(r.alpha for r in slow if r.red_lead_h is None or r.red_lead_h < RED_LEAD_H)
            sec.findings.append(
                f"**Red ≥ 12 h is not robust to the scenario.** With the slower slopes ({min(sens):g} mm/day one day before "
                f"failure) the velocity ladder's red comes late and red rests on the forecast's {policy.forecast_red_s / HOUR:g} h "
                f"horizon: late on {len(late)}/{len(slow)} slopes (α {', '.join(f'{a:.2f}' for a in late)}), the α > 2 bias again."
            )
    early_red = [r for r in fails if r.red_lead_h is not None and r.red_lead_h > 48.0 and r.alpha < 1.9]
    if early_red:
        causes = sorted({r.red_by for r in early_red})
        sec.findings.append(
            f"Red comes early on slow-starting slopes (α < 1.9): up to {max(r.red_lead_h or 0 for r in early_red):.0f} h before "
            f"failure on {len(early_red)} slopes, from {'; '.join(causes)}. The safe side, and not a target, but a red "
            "(evacuate) that lasts two days or more: the tangent angle's reference is learned over the first 3 days, while "
            f"such a slope is still slow, and a forecast within {policy.forecast_confirms_s / HOUR:g} h confirms a red as "
            "readily as an orange (one confirmation window for both levels). If that is not wanted: confirm red only with a "
            f"forecast inside the red horizon ({policy.forecast_red_s / HOUR:g} h) or with two devices."
        )
    return sec


def failure_findings(results: list[FailureResult], label: str, policy: Policy) -> list[str]:
    """The misses among ``results`` with their causes, told apart from what the results show."""
    out: list[str] = []
    n = len(results)
    o_h = policy.forecast_orange_s / HOUR
    steep = [r.forecast_signed for r in results if r.alpha >= 2.1 and r.forecast_signed is not None]
    late_orange = [r for r in results if r.orange_lead_h is None or r.orange_lead_h < ORANGE_LEAD_H]
    # Late because the horizon is too short (the forecast said about the horizon at the first
    # orange), or because the forecast came late (it already said much less).
    by_start = [r for r in late_orange if r.orange_fc_h is not None and r.orange_fc_h < 0.9 * o_h]
    by_horizon = [r for r in late_orange if r not in by_start]
    margin = o_h / ORANGE_LEAD_H
    if by_horizon:
        leads = [r.orange_lead_h for r in by_horizon if r.orange_lead_h is not None]
        worst = min(leads) if leads else None
        out.append(
            f"**Orange ≥ 48 h missed** on {len(by_horizon)}/{n} {label}slopes at the forecast's horizon (α "
            f"{', '.join(f'{r.alpha:.2f}' for r in by_horizon)}; earliest orange {fmt(worst)} h). Cause: orange comes from the "
            f"failure forecast at ≤ {o_h:g} h to failure"
            + (
                " — exactly the target, so even an unbiased forecast (α = 2) gives orange just under 48 h (it needs "
                "3 forecasts in a row) — and"
                if margin <= 1
                else f", a margin of {margin:.2f}× over the target, but"
            )
            + " the straight-line 1/v forecast is late for α > 2"
            + (f" (signed error at the first red: median {100 * statistics.median(steep):+.0f} % at α ≥ 2.1)" if steep else "")
            + ", more than the margin covers. The velocity ladder's orange (72 mm/day) comes ~40 h before failure in this "
            "scenario. Suggested fix: a wider orange horizon, `Policy.forecast_orange_s` ≈ "
            + (f"{math.ceil(o_h * ORANGE_LEAD_H / worst)} h or more (the latest orange scaled to 48 h; " if worst else "more (")
            + "`forecast_confirms_s` to match), or a site's back-analysed α in `Policy.voight_alpha`, which removes the bias."
        )
    if by_start:
        out.append(
            f"**Orange ≥ 48 h missed** on {len(by_start)}/{n} {label}slopes (α {', '.join(f'{r.alpha:.2f}' for r in by_start)}) "
            f"because the forecast itself came late: at the first orange it already said {', '.join(fmt(r.orange_fc_h) for r in by_start)} h "
            f"to failure, inside the {o_h:g} h horizon. Cause: the forecast's fit starts at the onset, a velocity 3× the "
            "reference learned over the first 3 days; on a slope already accelerating when instrumented the reference is high "
            "and the onset late, and the fit then needs 12 h (two windows) of span. Suggested fix: a lower onset factor in "
            "`InverseVelocityDetector` (2 instead of 3) when the reference itself is a significant velocity."
        )
    bad_fc = [r for r in results if r.forecast_err is not None and r.forecast_err > FORECAST_ERR]
    if bad_fc:
        early = sum(1 for r in bad_fc if (r.forecast_signed or 0) < 0)
        where = {
            "α < 1.9": sum(1 for r in bad_fc if r.alpha < 1.9),
            "1.9–2.1": sum(1 for r in bad_fc if 1.9 <= r.alpha <= 2.1),
            "α > 2.1": sum(1 for r in bad_fc if r.alpha > 2.1),
        }
        noisy = [r for r in bad_fc if r.forecast_r2 is not None and r.forecast_r2 < 0.95]
        clean = [r for r in bad_fc if r not in noisy]
        text = (
            f"**Forecast error ≤ 25 % missed** on {len(bad_fc)}/{n} {label}slopes ({early} early, {len(bad_fc) - early} late; "
            + ", ".join(f"{k}: {v}" for k, v in where.items())
            + ")."
        )
        if clean:
            line = [r for r in clean if r.forecast_alpha == policy.voight_alpha]
            leaned = [r for r in clean if r not in line]
            if leaned:
                lead = [r.red_lead_h for r in leaned if r.red_lead_h is not None]
                text += (
                    f" {len(leaned)} of them with a clean fit (R² ≥ 0.95) and α estimated (α {', '.join(f'{r.alpha:.2f}' for r in leaned)}; "
                    f"used {', '.join(fmt(r.forecast_alpha, 2) for r in leaned)}), with the first red {fmt(min(lead, default=None))}–"
                    f"{fmt(max(lead, default=None))} h before failure: the velocities since the onset still left α poorly "
                    f"determined, so the estimate leans on the prior α = {policy.voight_alpha:g} and keeps part of the straight "
                    "line's bias (early for α < 2, the safe side)."
                )
            if line:
                text += (
                    f" {len(line)} of them (α {', '.join(f'{r.alpha:.2f}' for r in line)}) on the plain α = {policy.voight_alpha:g} "
                    "line: no α was determined at the first red (fewer than 4 centred velocities since the onset, the best α on "
                    "the grid's edge, or a flat profile; `estimate_alpha` in `detectors/inverse_velocity.py`), so the line's "
                    "bias for another α stands."
                )
            text += " Suggested fix: a site with a back-analysed α sets `Policy.voight_alpha` (the prior's centre)."
        if noisy:
            text += (
                f" {len(noisy)} of them (α {', '.join(f'{r.alpha:.2f}' for r in noisy)}) carry a forecast with R² below 0.95, a "
                "GNSS fit, while the extensometer's are 0.99 or better: the site reports the channel forecast with the smallest "
                "stated uncertainty (`SiteFusion._fuse`), which was a GNSS one here."
            )
        out.append(text)
    return out


def section_stable(plan: Plan, jobs: int) -> Section:
    sec = Section()
    stable = sim_stable(plan, jobs)
    dev_years = sum(s.devices * s.days for s in stable) / 365.25
    yellows = sum(s.yellow for s in stable)
    orange_red = sum(s.orange_red for s in stable)
    unconfirmed = sum(s.unconfirmed for s in stable)
    rate = yellows / dev_years if dev_years else 0.0
    sec.targets += [
        ["2", "stable slopes: no orange or red", f"{orange_red} orange/red episodes over {dev_years:.1f} device-years", verdict(orange_red == 0)],
        ["2", "stable slopes: ≤ 1 yellow per device-year", f"{yellows} yellow episodes = {rate:.2f} per device-year", verdict(rate <= YELLOW_PER_DEVICE_YEAR)],
    ]
    by: dict[str, int] = defaultdict(int)
    for s in stable:
        for k, v in s.yellow_by.items():
            by[k] += v
    sec.w(
        "## 2. Stable slopes\n",
        f"{len(stable)} sites × 3 devices (the same two GNSS receivers and extensometer, noise, spikes and gaps as above) on a "
        f"`StableSlope` (creep 0.005–0.05 mm/day, 1 mm seasonal and 0.05 mm daily oscillation) for {plan.stable_days:g} days each: "
        f"{dev_years:.1f} device-years. An episode is a rise of the site level to that level or above from below it.\n",
        table(
            ["site", "days", "readings", "gaps (device-h)", "highest", "blue episodes", "yellow episodes", "of which a single device's orange/red held at yellow", "orange/red episodes"],
            [[s.site, f"{s.days:g}", s.readings, fmt(s.gaps_h, 0), NAMES[s.highest], s.blue, s.yellow, s.unconfirmed, s.orange_red] for s in stable],
        ),
        f"\nTotal: {yellows} yellow episodes in {dev_years:.1f} device-years ({rate:.2f} per device-year; target ≤ {YELLOW_PER_DEVICE_YEAR:g}), "
        f"{orange_red} orange/red. Yellow episodes by the detector and channel that led them: "
        + (", ".join(f"{k} {v}" for k, v in sorted(by.items(), key=lambda kv: -kv[1])) or "none")
        + ".\n",
    )
    if unconfirmed:
        dets = sorted({k.split(" on ")[0] for k in by})
        sec.findings.append(
            f"Stable slopes stay within target, but {unconfirmed} of the {yellows} yellow episodes were one device alone at "
            f"orange or red on noise, held at yellow only by the two-device confirmation (yellow episodes led by: {', '.join(dets)}, "
            "all on GNSS channels)."
            + (
                " The velocity ladder's significance test (z = 5) uses the standard error estimated from the window's own "
                "residuals, whose tail is heavier than the normal's."
                if dets == ["velocity"]
                else ""
            )
            + " Not a miss; worth knowing before a site is configured with one device or `confirm_devices` = 1."
        )
    return sec


def _monthly_detectors(res: GpsResult) -> str:
    """How ``detectors_for`` sets up a monthly channel, read from the detectors it builds."""
    site = next(iter(res.registry.sites))
    chans = next(v for k, v in res.registry.channels.items() if k[0] == site)
    info = next(iter(chans.values()))
    dets = dict(detectors_for(info, res.registry))
    vel, tan, fc = dets.get("velocity"), dets.get("tangent"), dets.get("forecast")
    iv = info.interval_s
    parts = [f"interval {iv / DAY:.0f} days"]
    if isinstance(vel, VelocityDetector):
        parts.append(f"velocity window {vel.window_s / iv:.0f} readings, persistence {vel.persist} reading(s), z {vel.z:g}")
    if tan is not None:
        parts.append(f"tangent window {getattr(tan, 'window_s', 0) / iv:.0f} readings and reference {getattr(tan, 'reference_s', 0) / DAY:.0f} days")
    if fc is not None:
        parts.append(f"forecast reference {getattr(fc, 'reference_s', 0) / DAY:.0f} days")
    return "; ".join(parts)


def section_three_gorges() -> Section:
    sec = Section()
    sec.w("## 3. Three Gorges: Baishuihe and Bazimen monthly GPS\n")
    bsh_path = DATA / "three_gorges_baishuihe_bazimen" / "baishuihe_gps_monthly_cumulative_displacement.csv"
    bzm_path = DATA / "three_gorges_baishuihe_bazimen" / "bazimen_gps_monthly_cumulative_displacement.csv"
    if not bsh_path.is_file():
        sec.w("skipped: data absent\n")
        sec.targets.append(["3", "Baishuihe GPS", "skipped: data absent", "n/a"])
        return sec
    rows, months = gps_rows(bsh_path)
    res = run_gps(rows)
    chk = check_baishuihe(res)
    stable_ok = all(v <= 1 for v in chk.stable.values())
    active_ok = all(chk.active[p] >= 2 for p in BSH_ACTIVE)
    down_ok = all((chk.back_down[p] or "9999") < "2008-05" for p in BSH_ACTIVE)
    moving_dups = {p: v for p, v in chk.dup_flagged.items() if p in BSH_ACTIVE}
    dup_ok = all(f == n for f, n in moving_dups.values()) and not chk.dup_raise
    vrows, _ = gps_rows(bsh_path, channels=GPS_AS_DISPLACEMENT)
    vres = run_gps(vrows)
    vchk = check_baishuihe(vres)
    v_ok = all(v <= 1 for v in vchk.stable.values())
    sec.targets += [
        ["3", "Baishuihe stable points (ZG91, ZG92, ZG94, ZG119, ZG120) never above blue", ", ".join(f"{p} {NAMES[v]}" for p, v in chk.stable.items()), verdict(stable_ok)],
        ["3", "Baishuihe active points (ZG93, ZG118, DX-01) ≥ yellow during 2007-05…08", ", ".join(f"{p} {NAMES[chk.active[p]]} (first yellow {chk.first_yellow[p] or 'never'})" for p in BSH_ACTIVE), verdict(active_ok)],
        ["3", "levels come back down once motion stops (2007-09): ≤ blue again before the 2008 season (2008-05)", ", ".join(f"{p} {chk.back_down[p] or 'never'}" for p in BSH_ACTIVE), verdict(down_ok)],
        ["3", "2011-03 copy of 2008-01 caught by the quality guards, no alarm", ", ".join(f"{p} {f}/{n} channels flagged" for p, (f, n) in moving_dups.items()) + ("; no raise" if not chk.dup_raise else f"; raised: {', '.join(chk.dup_raise)}"), verdict(dup_ok)],
        [
            "3",
            "variant, the same GPS fed as kind `displacement` (`displacement.dX/dY/dF`): stable points never above blue",
            ", ".join(f"{p} {NAMES[v]}" for p, v in vchk.stable.items()) + f"; active points first yellow {', '.join(sorted({vchk.first_yellow[p] or 'never' for p in BSH_ACTIVE}))}",
            verdict(v_ok),
        ],
    ]
    sec.w(
        "Each GPS point is one site with one device (its code), read monthly (stamped on the 15th). The points are GNSS "
        "receivers, so their columns go in as GNSS channels: `gnss_n` = dX and `gnss_e` = dY (X north, Y east: the Chinese "
        "survey convention, which `dir_deg` = atan2(dY, dX) confirms; Baishuihe slides north, to the Yangtze). dF, the "
        "resultant √(dX² + dY²) the README quotes, adds nothing to the two components and is left out. The registry comes "
        f"from `registry_from_rows`, so the detectors are the daemon's defaults scaled by `detectors_for` ({_monthly_detectors(res)}). "
        "A point on its own cannot confirm orange or red (one device, no forecast close enough), so yellow is its ceiling; "
        "the whole-landslide run (`BSH`) puts all points in one site as devices, where they can confirm each other.\n",
        f"Level after each month's reading (`.` normal, `b` blue, `Y` yellow, `O` orange, `R` red, `_` no reading; a group "
        f"a year, the first group is 2006-12; SiteFusion driven directly agrees with `replay_rows`: {'yes' if res.agree and vres.agree else 'NO'}):\n",
    )
    axis = month_axis("2006-12", "2012-12")
    active_all = (*BSH_ACTIVE, *BSH_ACTIVE_MORE)
    lines = [f"{'point':8}{'class':8}{strip_header(axis)}"]
    for p in sorted(res.strips, key=lambda s: (s not in BSH_STABLE, s not in active_all, s)):
        cls = "stable" if p in BSH_STABLE else ("active" if p in active_all else "other")
        lines.append(f"{p:8}{cls:8}{strip_line(res.strips[p], axis)}")
    whole_rows, _ = gps_rows(bsh_path, one_site="BSH")
    whole = run_gps(whole_rows)
    lines.append(f"{'BSH':8}{'all':8}{strip_line(whole.strips['BSH'], axis)}")
    whole_high = max((e["level"] for e in level_changes(whole.events)), default=0)
    later_yellow = sum(1 for p in active_all for m, lv in res.strips[p].items() if m >= "2008-05" and lv >= 2)
    sec.w(
        "```\n" + "\n".join(lines) + "\n```\n",
        table(
            ["point", "highest 2007-05…08", "first yellow", "back to ≤ blue (motion stopped 2007-09)"],
            [[p, NAMES[chk.active[p]], chk.first_yellow[p] or "never", chk.back_down[p] or "never"] for p in active_all],
        ),
        "",
        f"Whole landslide (`BSH`, all {len(months)} points as devices of one site): highest level {NAMES[whole_high]}. "
        "No catastrophic failure happened here, so orange or red would be a false call of imminent failure. The later "
        "seasonal steps (2008-09, 2009-06/07, 2010-07/08, 2011-07, 2012-06/07; 80–280 mm a month at the active points) give "
        f"{later_yellow} point-months at yellow or above from 2008-05 on.\n",
        f"Quality guards (`SiteFusion.quality`): {', '.join(f'{k} {v}' for k, v in sorted(res.quality.items())) or 'none'}. The 2011-03 row:\n",
        table(
            ["point", "2011-03 channels flagged", "flags"],
            [
                [p, f"{f}/{n}", ", ".join(sorted({fl for (m, s, _c, fl) in res.suspects if m == DUPLICATE_MONTH and s == p})) or "—"]
                for p, (f, n) in sorted(chk.dup_flagged.items())
            ],
        ),
        "\nThe copies on the stable points lie within their GPS noise (a step of a few mm); the step-back guard does not judge "
        "a point that has not travelled further than its noise, and such a copy cannot raise anything either. Level rises at "
        f"2011-03 or 2011-04: {', '.join(chk.dup_raise) or 'none'}. Other readings held back:\n",
        table(["month", "point", "channel", "flag"], [list(x) for x in chk.other_suspects]) if chk.other_suspects else "none",
        "",
    )
    vlines = [f"{'point':8}{strip_header(axis)}"] + [f"{p:8}{strip_line(vres.strips[p], axis)}" for p in (*BSH_STABLE, *BSH_ACTIVE)]
    raised = [e for e in level_changes(vres.events) if e["site"] in BSH_STABLE and e["level"] > e["previous_level"]]
    sec.w(
        "### Variant: the same record as kind `displacement`\n",
        "The brief suggested channels like `displacement.dX`. Fed that way (dX, dY and dF as `displacement.dX`, "
        "`displacement.dY`, `displacement.dF`), the detectors assume the noise of the kind — an extensometer's — instead "
        f"of a GNSS receiver's ({_monthly_detectors(vres)}):\n",
        "```\n" + "\n".join(vlines) + "\n```\n",
    )
    if raised:
        sec.w(table(["month", "point", "raised to", "reason"], [[_ym(event_time(e)), e["site"], NAMES[e["level"]], e["reason"][:170]] for e in raised]), "")
    variants = velocity_what_if(bsh_path)
    wl = [f"{'':9}{'':22}{strip_header(axis)}"]
    for v in variants:
        wl.append(f"{v.name}: stable points highest {NAMES[v.highest(BSH_STABLE)]}")
        for p in BSH_ACTIVE:
            wl.append(f"  {p:7}first yellow {v.first_yellow(p) or 'never':8} {strip_line(v.strips[p], axis)}")
    sec.w(
        "### The velocity ladder at a monthly cadence (an experiment, not the shipped detectors)\n",
        "`VelocityDetector` alone on each point's dF: as `detectors_for` builds it for a monthly channel, and with a "
        "3-reading window and z = 3 (2011-03 left out):\n",
        "```\n" + "\n".join(wl) + "\n```\n",
    )
    if not active_ok:
        sec.findings.append(
            "**Baishuihe active points reach yellow only in "
            + ", ".join(sorted({chk.first_yellow[p] or "never" for p in BSH_ACTIVE}))
            + f"**, not during the May–August 2007 acceleration. Monthly detectors: {_monthly_detectors(res)}. See the "
            "velocity experiment in §3 for what a shorter window and a lower z change."
        )
    if not stable_ok:
        sec.findings.append(
            "**Baishuihe stable points above blue**: " + ", ".join(f"{p} {NAMES[v]}" for p, v in chk.stable.items() if v > 1) + "; see the month strips and reasons in §3."
        )
    if not v_ok:
        lead = sorted({str((e.get("evidence") or {}).get("detector", "?")) for e in raised})
        sec.findings.append(
            "**The same Baishuihe GPS fed as kind `displacement`** (the brief's `displacement.dX` mapping) puts stable points "
            + ", ".join(f"{p} at {NAMES[v]}" for p, v in vchk.stable.items() if v > 1)
            + f" (from the {', '.join(lead)} detector). Cause: `detectors_for` takes the noise floors from the channel's kind "
            "(`detectors/noise.py`: 0.3 mm for `displacement`, an extensometer), so at a monthly cadence the "
            "tangent's floor on the steady rate is ~0.01 mm/day and a stable point's GPS wobble of 0.1 mm/day reads as 5–7× "
            "its steady creep. The noise belongs to the instrument, not the kind. Suggested fix: a per-channel noise in the "
            "registry (e.g. `Channel.noise_mm`, defaulting to the kind's), which `registry_from_rows` could also estimate "
            "from the data (the scatter of successive differences), and pass it in `detectors_for`."
        )
    if down_ok:
        downs = sorted({d for p in BSH_ACTIVE if (d := chk.back_down[p]) is not None})
        lag = [len(month_axis("2007-09", d)) - 1 for d in downs]
        sec.findings.append(
            "Baishuihe levels come back down, but slowly: the 2007 yellow ends in "
            + ", ".join(downs)
            + f", {max(lag) if lag else '?'} months after the motion stopped (2007-09): the velocity window and the hold "
            f"({_monthly_detectors(res)})."
        )
    alt = variants[-1] if len(variants) > 1 else None
    alt_later = 0 if alt is None else sum(1 for p in BSH_ACTIVE for m, lv in alt.strips[p].items() if m >= "2008-05" and lv >= 2)
    if later_yellow == 0 and alt is not None and alt_later:
        sec.findings.append(
            "The later seasonal steps at Baishuihe (80–280 mm in a month, 3–9 mm/day, above the velocity ladder's yellow of "
            "3 mm/day) raise at most blue: a 6-month regression dilutes a one- or two-month step. No target covers them; in "
            f"the velocity experiment of §3, {alt.name} gives {alt_later} point-months at yellow from 2008-05 on at "
            f"{', '.join(BSH_ACTIVE)}, with the stable points at most {NAMES[alt.highest(BSH_STABLE)]}, if that is wanted."
        )
    if bzm_path.is_file():
        brows, _ = gps_rows(bzm_path)
        bres = run_gps(brows)
        bhigh = {p: max(s.values()) for p, s in bres.strips.items()}
        bl = [f"{'point':8}{strip_header(axis)}"] + [f"{p:8}{strip_line(bres.strips[p], axis)}" for p in sorted(bres.strips)]
        sec.w(
            "### Bazimen\n",
            "Same mapping. No point is known to be stable; ZG110 and ZG111 creep (0.9–1.25 m in six years, largest monthly "
            "step 2012-07); no failure.\n",
            "```\n" + "\n".join(bl) + "\n```\n",
            f"Highest level: {', '.join(f'{p} {NAMES[v]}' for p, v in sorted(bhigh.items()))}. Quality guards: "
            f"{', '.join(f'{k} {v}' for k, v in sorted(bres.quality.items())) or 'none'}"
            + (f" ({'; '.join(f'{m} {c} {f}' for m, _s, c, f in bres.suspects)})" if bres.suspects else "")
            + ".\n",
        )
        sec.targets.append(["3", "Bazimen (no target; creep without failure): never orange/red", ", ".join(f"{p} {NAMES[v]}" for p, v in sorted(bhigh.items())), verdict(max(bhigh.values()) <= 2)])
    return sec


def section_cubatao() -> Section:
    sec = Section()
    sec.w("## 4. Cubatão: daily rain against dated landslides\n")
    if not (DATA / "cubatao_brazil_rain_landslides" / "cubatao_hb_rain_daily_long.csv").is_file():
        sec.w("skipped: data absent\n")
        sec.targets.append(["4", "Cubatão hit rate vs alarm fraction", "skipped: data absent", "n/a"])
        return sec
    rain, slides = load_cubatao()
    rr = run_cubatao(rain, slides)
    gw = {d: lv >= 2 for d, lv in rr.geowarn_level.items()}
    frac = sum(gw.values()) / len(rr.days)
    thr_same = threshold_for_fraction(rr.days, rain, frac)
    scores = [
        score_rain("**GeoWarn** (site level ≥ yellow)", gw, rr.landslides, rr.days),
        score_rain("Caine (1980) I–D alone, wet-day events", caine_alarm(rr.days, rain), rr.landslides, rr.days),
        score_rain("3-day rain ≥ 100 mm", cumulative_alarm(rr.days, rain, 100.0), rr.landslides, rr.days),
        score_rain(f"3-day rain ≥ {thr_same:.1f} mm (GeoWarn's alarm fraction)", cumulative_alarm(rr.days, rain, thr_same), rr.landslides, rr.days),
    ]
    g, caine, c100, csame = scores
    methods = rain_method_levels(rain, rr.days)
    labels = {"sums": "24 h / 72 h sums", "intensity_duration": "intensity–duration (yellow at 1× Caine)", "antecedent": "effective rain (K 0.84, 15 days)"}
    parts = [score_rain(f"GeoWarn's {label} alone", {d: lv >= 2 for d, lv in methods[key].items()}, rr.landslides, rr.days) for key, label in labels.items() if key in methods]

    def hr(x: RainScore) -> str:
        return pct(x.hit_days / x.slide_days)

    sec.targets.append(
        [
            "4",
            "Cubatão: hit rate (±1 day) vs alarm fraction, GeoWarn vs baselines",
            (f"GeoWarn {hr(g)} at {pct(g.alarm_fraction, 1)} of days; Caine {hr(caine)} at {pct(caine.alarm_fraction, 1)}; "
             f"3-day ≥ 100 mm {hr(c100)} at {pct(c100.alarm_fraction, 1)}; 3-day at GeoWarn's fraction {hr(csame)}"),
            "reported (no numeric target)",
        ]
    )
    sec.w(
        f"Rain gauge HB, {len(rain)} daily totals; each total is one reading of a site `CUB` with one rain gauge, stamped at "
        "the end of its day, through `replay_rows` with the daemon's rain detector for a daily channel (24 h and 72 h sums, "
        "Caine intensity–duration, effective antecedent rain; a level held one day after its evidence goes). Scored on "
        f"{rr.first}…{rr.last} ({len(rr.days)} days) against {len(rr.landslides)} landslide days ({sum(rr.landslides.values())} records). "
        "A landslide day is hit when a day within ±1 day of it is at yellow or above (the site level after that day's "
        "total); \"causal\" counts only the day before and the day itself. One device cannot confirm orange or red, so "
        "the site never goes above yellow here. Baselines computed here from the same totals: Caine's I = 14.82·D^−0.39 "
        "with a rain event = consecutive days with rain > 0 (D = 24 h per day so far, I = event rain so far / D), and the "
        "3-day total. The last rows run each method of GeoWarn's rain detector on its own (`RainDetector.for_channel`, "
        "its `levels` evidence).\n",
        table(
            ["method", "alarm days", "landslide days hit (±1 d)", "records hit", "causal hits (d−1, d)", "hit rate without 1 January dates"],
            [
                [
                    s.name,
                    pct(s.alarm_fraction, 1),
                    f"{s.hit_days}/{s.slide_days} = {pct(s.hit_days / s.slide_days)}",
                    f"{s.hit_records}/{s.records} = {pct(s.hit_records / s.records)}",
                    f"{s.causal_hits}/{s.slide_days} = {pct(s.causal_hits / s.slide_days)}",
                    f"{s.hits_no_jan1}/{s.slide_days_no_jan1} = {pct(s.hits_no_jan1 / s.slide_days_no_jan1)}",
                ]
                for s in [*scores, *parts]
            ],
        ),
        "\nThe 3-day total at other thresholds (the baseline's trade-off curve):\n",
    )
    curve = [score_rain(f"{thr:g} mm", cumulative_alarm(rr.days, rain, thr), rr.landslides, rr.days) for thr in (40, 60, 80, 100, 150, 200)]
    sec.w(table(["3-day threshold", "alarm days", "hit rate (±1 d)"], [[s.name, pct(s.alarm_fraction, 1), hr(s)] for s in curve]), "")
    g_rate = g.hit_days / g.slide_days
    sec.targets.append([
        "4", f"Issue 14 item 7, rain-only site, shipped defaults, whole record (site level): ≤ {pct(RAIN_YELLOW_DAYS)} of days at yellow+ with hit rate ≥ {RAIN_HIT_RATE:g}",
        f"{pct(g.alarm_fraction, 1)} of days at yellow+, hit rate {g_rate:.2f} ({g.hit_days}/{g.slide_days})",
        verdict(g.alarm_fraction <= RAIN_YELLOW_DAYS and g_rate >= RAIN_HIT_RATE),
    ])
    # 4.1: per-site thresholds fitted on 2000–2007 and scored on 2008–2015 (benchmarks/rain_calibration.py, its split).
    rc = _load_benchmark("rain_calibration")
    lines, item7 = rc.cubatao_report(rain, slides, _day_end, heading="### 4.1")
    sec.w("\n".join(lines) + "\n")
    for label, frac, rate in (
        ("shipped defaults", item7.default_fraction, item7.default_hit_rate),
        ("thresholds calibrated on 2000–2007 with its landslide days (`geowarn rain-calibrate`)", item7.calibrated_fraction, item7.calibrated_hit_rate),
    ):
        sec.targets.append([
            "4.1",
            (f"Issue 14 item 7 on years not fitted on (2008–2015, {item7.scored_landslide_days} landslide days), {label}: "
             f"≤ {pct(RAIN_YELLOW_DAYS)} of days at yellow+ with hit rate ≥ {RAIN_HIT_RATE:g}"),
            f"{pct(frac, 1)} of days at yellow+, hit rate {rate:.2f}"
            + (f" (calibrated by exceedance alone, no dates: {pct(item7.exceedance_fraction, 1)}, {item7.exceedance_hit_rate:.2f})" if "calibrated" in label else ""),
            verdict(frac <= RAIN_YELLOW_DAYS and rate >= RAIN_HIT_RATE),
        ])
    if item7.calibrated_fraction > RAIN_YELLOW_DAYS or item7.calibrated_hit_rate < RAIN_HIT_RATE:
        sec.findings.append(
            f"Cubatão (§4.1): thresholds calibrated by `geowarn rain-calibrate` on 2000–2007 give {pct(item7.calibrated_fraction, 1)} of days at "
            f"yellow+ with hit rate {item7.calibrated_hit_rate:.2f} on 2008–2015, against {pct(item7.default_fraction, 1)} and "
            f"{item7.default_hit_rate:.2f} with the shipped defaults: the calibration aimed at ≤ 15 % on the years it saw and overshoots "
            "it on years it did not see (the year-by-year table shows how much the share of alarm days moves with the wetness of a year). "
            "Item 7's target is not met by the calibration on unseen years."
        )
    annual = sum(rain[d] for d in rr.days if d in rain) / (len(rr.days) / 365.25)
    if g.hit_days < csame.hit_days:
        ant = next((s for s in parts if s.name.startswith("GeoWarn's effective")), None)
        sec.findings.append(
            f"Cubatão: GeoWarn hits {hr(g)} of landslide days with {pct(g.alarm_fraction, 1)} of days at yellow, below the plain "
            f"3-day total at the same alarm fraction ({hr(csame)}), and far above Caine alone ({hr(caine)} at {pct(caine.alarm_fraction, 1)}). "
            + (f"Most of its alarm days come from the effective-rain method ({pct(ant.alarm_fraction, 1)} of days on its own): its yellow "
               f"of 100 mm suits the Three Gorges (~1100 mm a year) and fires often in Cubatão's ~{annual:.0f} mm. " if ant and ant.alarm_fraction > 0.5 * g.alarm_fraction else "")
            + "Suggested fix: none in code; per-site thresholds (`geowarn rain-calibrate`, as `detectors/rain.py` says) are the "
            "documented remedy, and §4.1 checks them on years they were not fitted on."
        )
    return sec


def section_lamosano() -> Section:
    sec = Section()
    sec.w("## 5. Lamosano: 11-day displacement and rain\n")
    if not (DATA / "lamosano_italy" / "df.csv").is_file():
        sec.w("skipped: data absent\n")
        sec.targets.append(["5", "Lamosano", "skipped: data absent", "n/a"])
        return sec
    lam = run_lamosano()
    sec.w(
        f"{lam['steps']} steps of 11 days (2015-04…2020-02; a step's date taken as its last day). `p5` is the displacement increment of point 5 over a step; "
        f"its running sum is fed as channel `displacement` ({lam['total_mm']:.0f} mm in total) and the step's rain as "
        "channel `rain` (two devices of one site) through `replay_rows`. A slow creep with rain-driven steps and no failure, "
        "and an 11-day cadence: the meaningful check is a false-alarm one (never orange or red); there is no event to hit.\n",
        f"Highest level: {NAMES[lam['highest']]}. Share of time per level: " + ", ".join(f"{NAMES[k]} {pct(v)}" for k, v in lam["time_fraction"].items()) + ".\n",
    )
    if lam["raises"]:
        sec.w(table(["date", "raised to", "reason"], [[d, NAMES[lv], r[:170]] for d, lv, r in lam["raises"]]), "")
    sec.targets.append(["5", "Lamosano (no target; creep without failure): never orange/red", f"highest {NAMES[lam['highest']]}", verdict(lam["highest"] <= 2)])
    rain_led = [r for _d, _l, r in lam["raises"] if r.startswith("LAMO-RG/")]
    disp_led = [(d, r) for d, _l, r in lam["raises"] if r.startswith("LAMO-P5/")]
    if disp_led:
        sec.findings.append(
            f"Lamosano: {len(disp_led)} of the {len(lam['raises'])} yellows come from the displacement channel "
            f"({', '.join(sorted({r.split(':')[0].split(' ', 1)[1] for _d, r in disp_led}))}; {', '.join(d for d, _r in disp_led)}): "
            "rain-driven steps several times faster than the steady creep (reasons in §5), real accelerations of a "
            "slope that did not fail — yellow (caution) is a fair call, nothing above it came. The floor on the steady rate is the "
            "`displacement` kind's (an extensometer's 0.3 mm), whatever instrument point 5 is (not stated)."
        )
    if any("effective rain" in r for r in rain_led):
        sec.findings.append(
            f"Lamosano: {len(rain_led)} yellows come from rain, from the effective-rain method. `AntecedentRain` now books "
            "a multi-day reading over its days (an 11-day total is no longer one day's rain; that made 10 yellows before), "
            "so these are wet spells against the default effective-rain yellow of 100 mm, set for the Three Gorges. "
            "Suggested fix: calibrate the rain thresholds per site from its own record (issue 14, item 7)."
        )
    return sec


# -- 7. real records split into tuning and validation (issue 14, item 8) ----------------------


def _load_benchmark(stem: str) -> ModuleType:
    """``benchmarks/<stem>.py``, loaded by path: the repository is not on sys.path."""
    name = f"geowarn_benchmark_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name(f"{stem}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


vd = _load_benchmark("validation_data")

YEAR_S = 365.25 * DAY
#: Issue 14's targets for real records that did not fail.
GNSS_YELLOW_PER_SITE_YEAR = 1.0  # "≤ 8 yellow raises in 8 stable GNSS site-years"
RAIN_YELLOW_DAYS = 0.15  # "rain-only yellow+ days ≤ 15 %"...
RAIN_HIT_RATE = 0.6  # "...with hit rate ≥ 0.6"
GNSS_WORST_SHOWN = 3  # stations per side whose raises are listed with their reasons
RAISES_SHOWN = 6  # raises listed per station


def replay_quiet(rows: list[FeedRow], registry: Registry) -> list[dict[str, Any]]:
    """``replay`` without the per-site plots (years of daily readings: nobody looks at them here)."""
    with tempfile.TemporaryDirectory(prefix="geowarn-validation-") as tmp:
        summary = replay_rows(rows, registry, Path(tmp), plots=False)
        if summary.rejected:
            raise RuntimeError(f"{summary.rejected} readings were rejected by the replay")
        return summary.events


def series_rows(series: Iterable[Any], site: str | None = None, device: str | None = None) -> list[FeedRow]:
    """Feed rows of ``validation_data.Series``: the channel is named by its kind (what a new user
    writes in a feed so that the kind can be inferred); ``site``/``device`` override the series'."""
    return [FeedRow(site or s.site, device or s.device, s.kind, t, v) for s in series for t, v in zip(s.t, s.value)]


def stated_registry(rows: list[FeedRow], interval_s: float, source: str) -> Registry:
    """The registry an engineer writes for a feed: each channel's kind and reporting interval,
    nothing else (no noise figure: the kind's physical floor applies, ``detectors/noise.py``)."""
    chans: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for r in rows:
        chans[r.site][r.device].add(r.channel)
    doc = {
        "sites": [
            {"site": site, "name": site, "admin": "999999", "lat": 0.0, "lon": 0.0,
             "devices": [{"device": d, "channels": [{"channel": c, "kind": c.split(".")[0], "interval_s": interval_s} for c in sorted(cs)]}
                         for d, cs in sorted(devs.items())]}
            for site, devs in sorted(chans.items())
        ]
    }
    return parse_registry(doc, source)


@dataclass
class Raise:
    t: float
    site: str
    level: int
    previous: int
    reason: str
    detector: str


def raises_of(events: list[dict[str, Any]]) -> list[Raise]:
    """Every rise of a site level to yellow or above (exercises left out)."""
    out = []
    for e in level_changes(events):
        if e["exercise"] or e["level"] <= e["previous_level"] or e["level"] < 2:
            continue
        ev = e.get("evidence") or {}
        out.append(Raise(event_time(e), e["site"], int(e["level"]), int(e["previous_level"]), str(e.get("reason", "")), str(ev.get("detector", "?"))))
    return out


def raise_counts(raises: Iterable[Raise]) -> dict[int, int]:
    """Raises that crossed into yellow, orange and red (a jump from normal to red counts in all three)."""
    n = {2: 0, 3: 0, 4: 0}
    for r in raises:
        for k in n:
            if r.level >= k > r.previous:
                n[k] += 1
    return n


def day_levels(events: list[dict[str, Any]], site: str, t_first: float, t_last: float, tz: Any) -> dict[date, int]:
    """The highest level the site was at during each local day from ``t_first``'s day to ``t_last``'s."""
    changes = [(event_time(e), int(e["level"])) for e in level_changes(events) if e["site"] == site and not e["exercise"]]
    first = datetime.fromtimestamp(t_first, tz).date()
    last = datetime.fromtimestamp(t_last, tz).date()
    out = {first + timedelta(days=i): 0 for i in range((last - first).days + 1)}
    bounds = [t for t, _ in changes] + [t_last]
    lv = 0
    t_prev = t_first
    for (t, new), t_next in zip([(t_first, 0), *changes], bounds):
        lv = new
        t_prev = max(t, t_first)
        if lv == 0 or t_next < t_prev:
            continue
        d = datetime.fromtimestamp(t_prev, tz).date()
        d_end = datetime.fromtimestamp(max(t_prev, t_next - 1.0), tz).date()
        while d <= d_end:
            if d in out:
                out[d] = max(out[d], lv)
            d += timedelta(days=1)
    return out


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d")  # noqa: UP017 (the file's spelling)


@dataclass
class GnssSiteResult:
    dataset: str
    side: str
    site: str
    station: str
    t_first: float
    t_last: float
    epochs: int
    inferred: list[Raise]
    stated: list[Raise]
    noise: str  # the noise figures the inferred registry estimated, e.g. "e 1.2, n 1.0, u 3.4 mm"
    steps: dict[float, tuple[str, float]]  # raise time -> (day, mm) of the largest horizontal step between epochs in the 10 days before it

    @property
    def years(self) -> float:
        return (self.t_last - self.t_first) / YEAR_S


def run_gnss_site(job: tuple[str, str, str, str, list[FeedRow]]) -> GnssSiteResult:
    dataset, side, site, station, rows = job
    inferred = registry_from_rows(rows, f"{dataset} {station}")
    est = []
    for (_s, _d), chans in sorted(inferred.channels.items()):
        for name, info in sorted(chans.items()):
            noise = getattr(info.spec, "noise", None)
            est.append(f"{name.removeprefix('gnss_')} {fmt(noise, 1) if noise is not None else '—'}")
    ts = [r.t for r in rows]
    got_inferred = raises_of(replay_quiet(rows, inferred))
    got_stated = raises_of(replay_quiet(rows, stated_registry(rows, DAY, f"{dataset} {station} (stated)")))
    horiz: dict[float, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.channel in ("gnss_e", "gnss_n"):
            horiz[r.t][r.channel] = r.value
    epochs = sorted(t for t, v in horiz.items() if len(v) == 2)
    jumps = [(b, math.hypot(horiz[b]["gnss_e"] - horiz[a]["gnss_e"], horiz[b]["gnss_n"] - horiz[a]["gnss_n"])) for a, b in itertools.pairwise(epochs)]
    steps = {}
    for rz in got_inferred + got_stated:
        near = [(t, mm) for t, mm in jumps if rz.t - 10 * DAY <= t <= rz.t]
        if near:
            t, mm = max(near, key=lambda x: x[1])
            steps[rz.t] = (_day(t), mm)
    return GnssSiteResult(dataset, side, site, station, min(ts), max(ts), len(set(ts)), got_inferred, got_stated, ", ".join(est) + " mm", steps)


def gnss_jobs(sets: list[Any]) -> list[tuple[str, str, str, str, list[FeedRow]]]:
    jobs = []
    for ds in sets:
        for site in dict.fromkeys(s.site for s in ds.series):
            ser = [s for s in ds.series if s.site == site]
            jobs.append((ds.name, ds.split, site, ser[0].device, series_rows(ser)))
    return jobs


@dataclass
class RainGauge:
    site: str
    days: dict[date, int]  # local day -> highest level that day
    raises: list[Raise] = field(default_factory=list)

    @property
    def yellow_fraction(self) -> float:
        return sum(1 for v in self.days.values() if v >= 2) / len(self.days) if self.days else 0.0


def run_rain_gauge(job: tuple[str, list[FeedRow]]) -> RainGauge:
    site, rows = job
    events = replay_quiet(rows, registry_from_rows(rows, site))
    return RainGauge(site, day_levels(events, site, rows[0].t - 1.0, rows[-1].t, vd.PACIFIC), raises_of(events))


def run_outang(rows: list[FeedRow], site: str) -> dict[str, Any]:
    events = replay_quiet(rows, registry_from_rows(rows, f"outang {site}"))
    t_first, t_last = min(r.t for r in rows), max(r.t for r in rows)
    days = day_levels(events, site, t_first, t_last, vd.CHINA)
    raises = raises_of(events)
    return {
        "site": site,
        "days": len(days),
        "highest": max(days.values(), default=0),
        "yellow_days": sum(1 for v in days.values() if v >= 2),
        "orange_red_days": sum(1 for v in days.values() if v >= 3),
        "counts": raise_counts(raises),
        "raises": raises,
    }


def _outang_job(job: tuple[list[FeedRow], str]) -> dict[str, Any]:
    return run_outang(*job)


STEP_MM = 100.0  # a jump between two daily epochs this large is an offset, not noise (§7.1 finding)


def _velocity_of(reason: str) -> str | None:
    """The figure of "velocity X mm/day" in a reason text."""
    import re

    m = re.search(r"velocity (-?[0-9.]+) mm/day", reason)
    return m.group(1) if m else None


def _reason(text: str, n: int = 220) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= n else text[: n - 1] + "…"


#: The 3-day / 15-day cumulative threshold in usgs/landslides-thresholds' settings for the
#: Seattle files (data/test/thresh_in.txt: Intercept 3.5, Slope -0.67, Threshold_unit in).
SEA_P3_INTERCEPT_IN = 3.5
SEA_P3_SLOPE = -0.67
MM_PER_IN = 25.4


def source_threshold_days(s: Any) -> dict[date, bool]:
    """Local days on which the hourly series ``s`` meets P3 ≥ 3.5 − 0.67·P15 (inches) at some hour:
    P3 the 72 h ending at that hour, P15 the 360 h before those (Recent_Hours 72, Antecedent_Hours 360)."""
    ts = np.asarray(s.t)
    cum = np.concatenate([[0.0], np.cumsum(np.asarray(s.value) / MM_PER_IN)])
    out: dict[date, bool] = {}
    for i, t in enumerate(ts):
        j3 = int(np.searchsorted(ts, t - 72 * HOUR, side="right"))
        j15 = int(np.searchsorted(ts, t - (72 + 360) * HOUR, side="right"))
        p3 = cum[i + 1] - cum[j3]
        p15 = cum[j3] - cum[j15]
        d = datetime.fromtimestamp(t - 1.0, vd.PACIFIC).date()  # the hour ending at t belongs to its start's day
        out[d] = out.get(d, False) or bool(p3 > 0 and p3 >= SEA_P3_INTERCEPT_IN + SEA_P3_SLOPE * p15)
    return out


def rain_around(s: Any, days: list[date]) -> dict[date, tuple[float, float, float]]:
    """Per day: the largest 24 h and 72 h totals ending within ±1 local day of it, and the rain
    of the 15 days before it."""
    ts = np.asarray(s.t)
    cum = np.concatenate([[0.0], np.cumsum(np.asarray(s.value))])

    def total(t0: float, t1: float) -> float:  # rain stamped in (t0, t1]
        return float(cum[int(np.searchsorted(ts, t1, side="right"))] - cum[int(np.searchsorted(ts, t0, side="right"))])

    out = {}
    for d in days:
        start = datetime(d.year, d.month, d.day, tzinfo=vd.PACIFIC).timestamp()
        ends = [t for t in ts if start - DAY < t <= start + 2 * DAY]
        out[d] = (max(total(t - DAY, t) for t in ends), max(total(t - 3 * DAY, t) for t in ends), total(start - 15 * DAY, start))
    return out


#: Issue 14 item 5's targets for red (the orange target of ≥ 24 h needs a record longer than a day before the failure).
REAL_RED_LEAD_H = (6.0, 7 * 24.0)
REAL_FORECAST_ERR = 0.30
REAL_CHANGES_SHOWN = 12  # level changes listed per replay of a real failure


@dataclass
class RealFailure:
    """One replay of a real record that ran to a failure: when the site first reached each level."""

    dataset: str
    side: str
    site: str
    registry: str  # "inferred" (no registry) or "stated" (kind and interval stated)
    t_first: float
    t_fail: float
    epochs: int
    interval_s: float
    noise: str  # the noise figure each channel was judged with, and where it came from
    leads_h: dict[int, float | None]  # level -> hours before the failure of the first change to it or above
    by: dict[int, str]  # level -> what raised it
    forecast_h: float | None  # the forecast time to failure stated at the first red (h)
    forecast_err: float | None  # |t_f' − t_f| / (t_f − t_red)
    forecast_signed: float | None  # (t_f' − t_f) / (t_f − t_red): > 0 late
    forecast_r2: float | None
    forecast_unc_h: float | None
    forecast_alpha: float | None
    lowered: bool  # the level came down from its highest before the failure
    changes: list[tuple[float, int, int, str]]  # (hours before the failure, previous, level, reason)
    raw: list[tuple[str, str, dict[int, float | None], str, float | None]]  # (channel, detector, level -> h before the failure of its
    # first verdict at that level or above, its last reason, h before the failure of its first verdict out of warm-up)

    @property
    def record_h(self) -> float:
        return (self.t_fail - self.t_first) / HOUR


def run_real_failure(job: tuple[str, str, str, str, float, list[FeedRow]]) -> RealFailure:
    """Replay a real record up to its failure, without a registry (``inferred``) or with one that
    states each channel's kind and interval (``stated``), and score it as §1 scores a simulated one."""
    dataset, side, site, label, t_fail, rows = job
    ts = sorted({r.t for r in rows})
    interval = float(statistics.median(np.diff(ts))) if len(ts) > 1 else DAY
    if label == "inferred":
        registry = registry_from_rows(rows, f"{dataset} (no registry)")
    else:
        registry = stated_registry(rows, interval, f"{dataset} (stated)")
    noise = []
    for (_s, _d), chans in sorted(registry.channels.items()):
        for name, info in sorted(chans.items()):
            spec = info.spec
            est = getattr(spec, "noise_source", None) == "estimated"
            try:  # the figure the rate detectors judge with, as detectors_for computes it
                nf = noise_for(spec.kind, info.unit or None, stated=None if est else spec.noise, estimated=spec.noise if est else None)
                noise.append(f"{name} {nf.sigma:g} {info.unit or ''} ({nf.source}"
                             + (f"; estimate {spec.noise:.2g}" if est and spec.noise is not None and spec.noise != nf.sigma else "") + ")")
            except ValueError as e:
                noise.append(f"{name}: {e}")
    changes = [e for e in level_changes(replay_quiet(rows, registry)) if not e["exercise"] and e["site"] == site]
    before = [e for e in changes if event_time(e) < t_fail]
    leads: dict[int, float | None] = {}
    by: dict[int, str] = {}
    for lv in (2, 3, 4):
        e = next((x for x in before if x["level"] >= lv), None)
        leads[lv] = None if e is None else (t_fail - event_time(e)) / HOUR
        by[lv] = "—" if e is None else _cause(e)
    fc_h = err = signed = r2 = unc = f_alpha = None
    red = next((x for x in before if x["level"] >= 4), None)
    if red is not None:
        t_r = event_time(red)
        f = red.get("forecast")
        if f is not None and f.get("failure_time") is not None:
            fc_h = (float(f["failure_time"]) - t_r) / HOUR
            signed = (float(f["failure_time"]) - t_fail) / (t_fail - t_r)
            err = abs(signed)
            r2 = f.get("r2")
            f_alpha = f.get("alpha")
            unc = None if f.get("uncertainty_s") is None else float(f["uncertainty_s"]) / HOUR
    raw = []
    for (_s, _d), chans in sorted(registry.channels.items()):
        for name, info in sorted(chans.items()):
            dets = detectors_for(info, registry)
            firsts: dict[str, dict[int, float | None]] = {d: {2: None, 3: None, 4: None} for d, _ in dets}
            last: dict[str, str] = {}
            ready: dict[str, float] = {}
            for row in rows:
                if (row.site, row.device, row.channel) != (_s, _d, name) or row.t >= t_fail:
                    continue
                for dname, det in dets:
                    v = det.update(row.t, row.value)
                    if v is None:
                        continue
                    last[dname] = v.reason
                    if not v.warming_up:
                        ready.setdefault(dname, (t_fail - row.t) / HOUR)
                    for lv in (2, 3, 4):
                        if v.level >= lv and firsts[dname][lv] is None:
                            firsts[dname][lv] = (t_fail - row.t) / HOUR
            raw += [(f"{_d}/{name}", dname, firsts[dname], last.get(dname, ""), ready.get(dname)) for dname, _ in dets if dname != "windows"]
    top = max((e["level"] for e in before), default=0)
    t_top = next((event_time(e) for e in before if e["level"] == top), None)
    lowered = t_top is not None and any(event_time(e) > t_top and e["level"] < top for e in before)
    return RealFailure(
        dataset, side, site, label, ts[0], t_fail, len(ts), interval, ", ".join(noise), leads, by,
        fc_h, err, signed, r2, unc, f_alpha, lowered,
        [((t_fail - event_time(e)) / HOUR, int(e["previous_level"]), int(e["level"]), str(e.get("reason", ""))) for e in changes],
        raw,
    )


def real_failure_jobs(sets: list[Any]) -> list[tuple[str, str, str, str, float, list[FeedRow]]]:
    """One job per (dataset, site, registry) of the datasets that ran to a failure."""
    jobs = []
    for ds in sets:
        for site in dict.fromkeys(s.site for s in ds.series):
            rows = series_rows([s for s in ds.series if s.site == site])
            for label in ("inferred", "stated"):
                jobs.append((ds.name, ds.split, site, label, float(ds.failure_time), rows))
    return jobs


def section_validation(jobs: int) -> Section:
    sec = Section()
    sec.w(
        "## 7. Real records split into tuning and validation (issue 14, item 8)\n",
        "The datasets of `benchmarks/data/` (provenance and checksums there), on the two sides fixed in `benchmarks/data/SPLIT.md` "
        "before any detector ran on them. The tuning side may be looked at while changing detectors; the validation side is "
        "scored here and must not be tuned to. **Outang is on the validation side but not blind**: issue 14 described GeoWarn's "
        "behaviour on this very series before the split, so its result is reported apart. Nothing in the detectors, thresholds "
        "or defaults was changed for this section: it is scoring only.\n",
    )
    loaded: dict[str, Any] = {}
    src_rows = []
    for name in vd.LOADERS:
        try:
            ds = vd.load(name)
        except vd.DataAbsent as e:
            src_rows.append([name, vd.SPLIT[name], f"skipped: {e}"])
            continue
        loaded[name] = ds
        src = ds.source
        where = "?" if src is None else src.where
        checked = f"{len(src.sums)} files, SHA-256 checked before parsing" if src is not None and src.sums else "no checksum file (../shared/data)"
        side = ds.split + (", **not blind**" if name in vd.NOT_BLIND else "")
        src_rows.append([name, side, f"{where}; {checked}"])
    sec.w("Where each dataset was read from (a git snapshot is read in memory at the commit its PROVENANCE.md names):\n", table(["dataset", "side", "source"], src_rows), "")
    failed_sets = [ds for ds in loaded.values() if ds.failed and ds.failure_time is not None]
    if failed_sets:
        sec.w(
            f"**Lead times on real failures: {len(failed_sets)} record(s)**, all on the {' and '.join(sorted({ds.split for ds in failed_sets}))} side "
            f"({', '.join(ds.name for ds in failed_sets)}; §7.4). The tuning side holds no real failure; the lead times of §1 and §6 "
            "come from simulations.\n"
        )
    else:
        sec.w(
            "**Lead times on real failures: none.** Neither side holds a real displacement record that ran to a known failure "
            "(`benchmarks/data/README.md`, \"Looked for, not found\"). Every lead time in this report comes from the Voight "
            "simulations of §1 and the bundled scenarios of §6; no lead time has been measured on real data.\n"
        )

    # -- stable GNSS, both sides
    gnss_sets = [loaded[n] for n in ("pbo_p156_gnss", "helmsman_gnss_18:tuning", "helmsman_gnss_18:validation", "ngl_lhas_gnss") if n in loaded]
    sec.w(
        "### 7.1 Stable GNSS stations (both sides)\n",
        "Daily E/N/U positions (mm from the first epoch; tectonic drift, seasonal motion and any offsets left in, as a real "
        "stable station has them), one site per station with one device and three channels `gnss_e`, `gnss_n`, `gnss_u`, "
        "replayed through `replay_rows` twice: **inferred** — as a new user would, with no registry "
        "(`registry_from_rows`: kinds from the channel names, interval from the data, noise estimated from the data, never "
        "below the kind's floor) — and **stated** — a registry that states each channel's kind and its 1-day interval and "
        "no noise figure (the kind's floor applies: 3 mm horizontal, 6 mm vertical). A raise is a rise of the site level "
        "into yellow, orange or red from below it (a jump from normal to red counts in all three); site-years run from the "
        "first to the last epoch, gaps included. Every raise on these stations is a false alarm. With one device a site "
        "cannot confirm orange or red on its own (two devices or a failure forecast), so an orange/red raise here came with "
        "a forecast.\n",
    )
    gres: list[GnssSiteResult] = parallel(run_gnss_site, gnss_jobs(gnss_sets), jobs) if gnss_sets else []
    rows_t = []
    for g in gres:
        ci, cs = raise_counts(g.inferred), raise_counts(g.stated)
        rows_t.append([
            g.side, g.dataset.split(":")[0], g.station, f"{_day(g.t_first)} … {_day(g.t_last)}", fmt(g.years, 1), g.epochs, g.noise,
            f"{ci[2]} / {ci[3]} / {ci[4]}", f"{cs[2]} / {cs[3]} / {cs[4]}",
        ])
    if gres:
        sec.w(table(["side", "dataset", "station", "epochs from … to", "site-years", "daily epochs", "noise estimated (inferred run)",
                     "inferred: yellow / orange / red raises", "stated: yellow / orange / red raises"], rows_t), "",
              "The estimated noise is the data's (second differences, `estimate_noise`); the detectors never judge with less than "
              "the kind's floor (3 mm horizontal, 6 mm vertical), so the two runs differ only where an estimate is above the "
              "floor. These are daily solutions (1–2 mm horizontal scatter), quieter than the 30-minute epochs of σ 2–4 mm of "
              "issue 14's stable-GNSS case; they test days-to-weeks behaviour (seasonal motion, offsets, post-seismic drift), "
              "not 30-minute noise. The helmsman unit is presumed mm (PROVENANCE.md).\n")
    per_side = []
    for side in ("tuning", "validation"):
        gs = [g for g in gres if g.side == side]
        if not gs:
            sec.targets.append(["7", f"stable GNSS, {side} side", "skipped: data absent", "n/a"])
            continue
        yrs = sum(g.years for g in gs)
        for label, attr in (("inferred", "inferred"), ("stated", "stated")):
            c = raise_counts([r for g in gs for r in getattr(g, attr)])
            per_side.append([side, label, len(gs), fmt(yrs, 1), c[2], fmt(c[2] / yrs, 2), c[3], c[4], fmt((c[3]) / yrs, 2)])
            sec.targets.append([
                "7", f"stable GNSS, **{side}** side, {label} registry: ≤ {GNSS_YELLOW_PER_SITE_YEAR:g} yellow raise per site-year and no orange/red",
                f"{c[2]} yellow raises in {yrs:.1f} site-years ({c[2] / yrs:.2f} per site-year), {c[3]} orange, {c[4]} red ({len(gs)} stations)",
                verdict(c[2] / yrs <= GNSS_YELLOW_PER_SITE_YEAR and c[3] == 0),
            ])
    if per_side:
        sec.w("Per side:\n", table(["side", "registry", "stations", "site-years", "yellow raises", "yellow per site-year", "orange raises", "red raises", "orange+ per site-year"], per_side), "")
        by_det: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for g in gres:
            for r in g.inferred:
                by_det[g.side][r.detector] += 1
        after_step = sorted({(g.station, *g.steps[r.t], _day(r.t)) for g in gres for r in g.inferred + g.stated if r.t in g.steps and g.steps[r.t][1] >= STEP_MM})
        if after_step:
            sec.findings.append(
                "Stable GNSS: raises within 10 days after a horizontal step of ≥ " + f"{STEP_MM:g} mm between two daily epochs: "
                + ", ".join(f"{st} (step of {mm:.0f} mm on {d}, raise on {rd})" for st, d, mm, rd in after_step)
                + ": the raises read the motion in the days after the step. "
                + ("2011-03-11 is the day of the Tohoku earthquake (USUD, of the same set, is in Japan): post-seismic ground motion, real "
                   "but not a landslide, which one GNSS station on its own cannot tell apart. " if any(d == "2011-03-11" for _s, d, _m, _r in after_step) else "")
                + "Within target; worth knowing for stations in seismic regions."
            )
        vert = [r for g in gres for r in g.inferred if "/gnss_u" in r.reason.split(":")[0]]
        n_inf = sum(len(g.inferred) for g in gres)
        if vert:
            speeds = sorted(abs(float(m)) for r in vert if (m := _velocity_of(r.reason)) is not None)
            sec.findings.append(
                f"Stable GNSS: {n_inf} raises over both sides' {sum(g.years for g in gres):.0f} site-years without a registry, "
                f"{len(vert)} of them on the vertical channel `gnss_u`"
                + (f" (velocity {speeds[0]:.1f}–{speeds[-1]:.1f} mm/day in magnitude over the velocity window)" if speeds else "")
                + ", the noisiest component (noise column of §7.1)."
            )
        sec.w("Raises by the detector that led them (inferred runs): " + "; ".join(
            f"{side}: " + ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) for side, d in sorted(by_det.items())) + ".\n" if by_det else "")
    for side in ("tuning", "validation"):
        gs = sorted((g for g in gres if g.side == side and (g.inferred or g.stated)),
                    key=lambda g: (-sum(r.level for r in g.inferred + g.stated), g.station))[:GNSS_WORST_SHOWN]
        if not gs:
            continue
        sec.w(f"Worst {side} stations (most raises, weighted by level), their raises with the reason text (at most {RAISES_SHOWN} per run):\n")
        lines = []
        for g in gs:
            for label, rs in (("inferred", g.inferred), ("stated", g.stated)):
                for r in rs[:RAISES_SHOWN]:
                    lines.append([g.station, label, _day(r.t), f"{NAMES[r.previous]} → {NAMES[r.level]}", _reason(r.reason)])
                if len(rs) > RAISES_SHOWN:
                    lines.append([g.station, label, "…", f"{len(rs) - RAISES_SHOWN} more", ""])
        sec.w(table(["station", "registry", "day (UTC)", "level", "reason"], lines), "")

    # -- Outang
    sec.w("### 7.2 Outang, Three Gorges (validation, **not blind**)\n")
    ds = loaded.get("outang_three_gorges")
    if ds is None:
        sec.w("skipped: data absent\n")
        sec.targets.append(["7", "Outang (validation, not blind)", "skipped: data absent", "n/a"])
    else:
        points = [s for s in ds.series if s.kind == "displacement"]
        site_rows = series_rows([s for s in ds.series if s.kind in ("displacement", "rain", "groundwater")], site="OUTANG")
        ojobs: list[tuple[list[FeedRow], str]] = [(series_rows([s], site=s.device), s.device) for s in points] + [(site_rows, "OUTANG")]
        ores = parallel(_outang_job, ojobs, jobs)
        whole = ores[-1]
        sec.w(
            f"{len(points)} points of published daily cumulative displacement (smoothed/interpolated), {_day(points[0].t[0])} … "
            f"{_day(points[0].t[-1])}, no failure. Replayed as a new user would: no registry (`registry_from_rows`), each point as "
            "its own site with one `displacement` channel, and the whole slope as one site `OUTANG` (the 8 points as devices, "
            "plus the rain gauge `rain` and the groundwater well `groundwater`; the reservoir level is not a GeoWarn kind). A day "
            "counts at a level when the site was at that level at any time of the local (UTC+8) day.\n",
            table(
                ["site", "days", "highest", "days at yellow+", "days at orange/red", "yellow / orange / red raises"],
                [[o["site"], o["days"], NAMES[o["highest"]], o["yellow_days"], o["orange_red_days"], f"{o['counts'][2]} / {o['counts'][3]} / {o['counts'][4]}"] for o in ores],
            ),
            "",
        )
        pt_raises = [(o["site"], r) for o in ores[:-1] for r in o["raises"]]
        if pt_raises:
            sec.w("Raises of the points on their own:\n", table(["point", "day (UTC)", "level", "reason"],
                  [[p, _day(r.t), f"{NAMES[r.previous]} → {NAMES[r.level]}", _reason(r.reason, 300)] for p, r in pt_raises]), "")
        if whole["raises"]:
            led: dict[str, int] = defaultdict(int)
            for r in whole["raises"]:
                led[r.reason.split(" ", 1)[0].split("/")[0]] += 1
            sec.w(f"Raises of the whole-slope site `OUTANG` ({len(whole['raises'])}; led by device: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(led.items(), key=lambda kv: -kv[1])) + "):\n",
                  table(["day (UTC)", "level", "reason"],
                        [[_day(r.t), f"{NAMES[r.previous]} → {NAMES[r.level]}", _reason(r.reason, 300)] for r in whole["raises"]]), "")
            if whole["yellow_days"] > 0.15 * whole["days"]:
                held = [r for r in whole["raises"] if "not confirmed" in r.reason]
                n_rain = led.get("rain_gauge", 0)
                sec.findings.append(
                    "Outang (validation, not blind): no orange or red"
                    + (" — the issue's \"Done when\" for smoothed daily data without a registry is met —" if whole["orange_red_days"] == 0 else "")
                    + f" but the whole-slope site is at yellow on {whole['yellow_days']} of {whole['days']} days "
                    f"({pct(whole['yellow_days'] / whole['days'])}); {n_rain} of its {len(whole['raises'])} yellow raises were led by the rain gauge "
                    "with the default rain thresholds (reasons in §7.2)"
                    + (f", the other {len(whole['raises']) - n_rain} by displacement points" if n_rain < len(whole["raises"]) else "")
                    + f". The points on their own reach yellow on {sum(o['yellow_days'] for o in ores[:-1])} point-days in all. "
                    + (f"{len(held)} raise(s) had a raw orange held at yellow for want of a second confirming device ({', '.join(_day(r.t) for r in held)}). " if held else "")
                )
        pts_or = sum(o["orange_red_days"] for o in ores[:-1])
        sec.targets.append([
            "7", "Outang (validation, **not blind**), no registry: no orange/red on a real non-failing slope from smoothed daily data",
            (f"site OUTANG: {whole['orange_red_days']} days at orange/red, highest {NAMES[whole['highest']]}, {whole['yellow_days']} days at yellow+; "
             f"points on their own: {pts_or} point-days at orange/red"),
            verdict(whole["orange_red_days"] == 0 and pts_or == 0),
        ])

    # -- rain
    sec.w("### 7.3 Rain-only records: Seattle and Mukilteo (validation)\n")
    sea, muk = loaded.get("usgs_seattle_rain_landslides"), loaded.get("usgs_mukilteo_ralhs_rain")
    rjobs = [(s.site, series_rows([s])) for d in (sea, muk) if d is not None for s in d.series]
    gauges = {g.site: g for g in parallel(run_rain_gauge, rjobs, jobs)} if rjobs else {}
    if sea is None:
        sec.w("Seattle: skipped: data absent\n")
        sec.targets.append(["7", "Seattle rain (validation)", "skipped: data absent", "n/a"])
    else:
        slides = [datetime.fromtimestamp(t, vd.PACIFIC).date() for t in sea.events]
        rr = []
        sea_gauges = [gauges[s.site] for s in sea.series]

        def hit(levels: dict[date, int]) -> int:
            return sum(1 for d in slides if any(levels.get(d + timedelta(days=k), 0) >= 2 for k in (-1, 0, 1)))

        def as_levels(alarm: dict[date, bool]) -> dict[date, int]:
            return {d: 2 if a else 0 for d, a in alarm.items()}

        base = {s.site: source_threshold_days(s) for s in sea.series}
        for g in sea_gauges:
            b = base[g.site]
            b_frac = sum(b.values()) / len(b) if b else 0.0
            rr.append([g.site.removeprefix("seattle_").upper(), len(g.days), pct(g.yellow_fraction, 1), f"{hit(g.days)}/{len(slides)}",
                       pct(b_frac, 1), f"{hit(as_levels(b))}/{len(slides)}"])
        common = set.intersection(*(set(g.days) for g in sea_gauges))
        any_days = {d: max(g.days[d] for g in sea_gauges) for d in common}
        any_frac = sum(1 for v in any_days.values() if v >= 2) / len(any_days)
        any_hit = hit(any_days)
        rr.append(["any of the four", len(any_days), pct(any_frac, 1), f"{any_hit}/{len(slides)}", "", ""])
        kpae = gauges.get("seattle_kpae")
        around = rain_around(next(s for s in sea.series if s.site == "seattle_kpae"), slides)
        sec.w(
            f"Seattle: four NWS gauges, hourly (0.01 in), {_day(sea.series[0].t[0])} … {_day(sea.series[0].t[-1])}, each gauge its own site "
            "with one `rain` channel and no registry (`registry_from_rows`: the shipped default rain thresholds for an hourly "
            f"channel). {len(slides)} dated landslide days near Mukilteo ({', '.join(d.isoformat() for d in slides)}); Everett "
            "Paine Field (KPAE) is the gauge nearest Mukilteo and the one the source repository scores them against. A landslide "
            "day is hit when a local day within ±1 day of it is at yellow or above (at any time of the day); the alarm fraction is "
            "the share of local days at yellow or above. Gaps in these files were filled with zeros by the source's formatter. "
            "Baseline, computed here from the same hours: the cumulative threshold in the source repository's own settings for "
            f"these files (`data/test/thresh_in.txt`: 3-day rain P3 ≥ {SEA_P3_INTERCEPT_IN:g} − {abs(SEA_P3_SLOPE):g} × P15, P15 the 15 days before "
            "the 3, in inches), an alarm day when it holds at any hour of the day.\n",
            table(["gauge", "days", "days at yellow+", "landslide days hit (±1 d)", "baseline: alarm days", "baseline: hit (±1 d)"], rr),
            "",
            "Rain around each landslide day at KPAE (the largest 24 h and 72 h totals ending within ±1 day of it, and the 15 days "
            "before it), against GeoWarn's default yellow of 50 mm in 24 h and 100 mm in 72 h:\n",
            table(["landslide day", "max 24 h (mm)", "max 72 h (mm)", "15 days before (mm)", "KPAE level (±1 d)"],
                  [[d.isoformat(), fmt(m24), fmt(m72), fmt(p15), NAMES[max(kpae.days.get(d + timedelta(days=k), 0) for k in (-1, 0, 1))] if kpae else "—"]
                   for d, (m24, m72, p15) in around.items()]),
            "",
            "Raises at the Seattle gauges:\n",
            table(["gauge", "local day", "level", "reason"],
                  [[g.site.removeprefix("seattle_").upper(), datetime.fromtimestamp(r.t, vd.PACIFIC).date().isoformat(), f"{NAMES[r.previous]} → {NAMES[r.level]}", _reason(r.reason, 300)]
                   for g in sea_gauges for r in g.raises]) if any(g.raises for g in sea_gauges) else "none",
            "",
        )
        if kpae is not None:
            k_hit = hit(kpae.days)
            if k_hit / len(slides) < RAIN_HIT_RATE:
                kb = base["seattle_kpae"]
                missed = [v for d, v in around.items() if max(kpae.days.get(d + timedelta(days=k), 0) for k in (-1, 0, 1)) < 2] or list(around.values())
                sec.findings.append(
                    f"**Seattle rain (validation): GeoWarn hits {k_hit} of {len(slides)} landslide days at KPAE** ({pct(kpae.yellow_fraction, 1)} of days at "
                    f"yellow; any of the four gauges {any_hit}/{len(slides)}), against the source's own 3-day/15-day threshold "
                    f"{hit(as_levels(kb))}/{len(slides)} at {pct(sum(kb.values()) / len(kb), 1)} of days. Cause, in the table of §7.3: "
                    f"around the {len(missed)} missed landslide days KPAE had at most {max(m[0] for m in missed):.0f} mm in 24 h and "
                    f"{max(m[1] for m in missed):.0f} mm in 72 h, after {min(m[2] for m in missed):.0f}–{max(m[2] for m in missed):.0f} mm in the "
                    "15 days before: long, moderate rain on wet ground. The source's threshold asks for less 3-day rain the wetter the 15 "
                    "days before were; the shipped defaults have fixed levels set for the Three Gorges (24 h and 72 h sums, Caine's "
                    "intensity–duration, effective rain over 15 days; the levels are in the reasons of §7.3), which this rain stays under. "
                    "The alarm fraction is far under the 15 % target; the hit rate is the miss. "
                    "Not tuned here (validation data): per-site thresholds calibrated from a site's own record (issue 14, item 7) are the "
                    "documented remedy, to be checked on a new validation set."
                )
            sec.targets.append([
                "7", f"Seattle rain (validation), KPAE (nearest Mukilteo): hit rate ≥ {RAIN_HIT_RATE:g} with ≤ {pct(RAIN_YELLOW_DAYS)} of days at yellow+",
                (f"hit {k_hit}/{len(slides)} = {pct(k_hit / len(slides))} at {pct(kpae.yellow_fraction, 1)} of days; any of the four gauges: "
                 f"{any_hit}/{len(slides)} at {pct(any_frac, 1)}"),
                verdict(k_hit / len(slides) >= RAIN_HIT_RATE and kpae.yellow_fraction <= RAIN_YELLOW_DAYS),
            ])
    if muk is None:
        sec.w("Mukilteo: skipped: data absent\n")
        sec.targets.append(["7", "Mukilteo rain (validation)", "skipped: data absent", "n/a"])
    else:
        mg = [gauges[s.site] for s in muk.series]
        sec.w(
            f"Mukilteo: four USGS bluff stations, 15-minute rain (mm), {_day(min(s.t[0] for s in muk.series))} … {_day(max(s.t[-1] for s in muk.series))}, "
            "same replay; no landslide dates in this subset, so only the alarm fraction is scored.\n",
            table(["gauge", "days", "days at yellow+"], [[g.site.removeprefix("mukilteo_"), len(g.days), pct(g.yellow_fraction, 1)] for g in mg]),
            "",
        )
        worst = max(mg, key=lambda g: g.yellow_fraction)
        sec.targets.append([
            "7", f"Mukilteo rain (validation, 15 min, no landslide dates): ≤ {pct(RAIN_YELLOW_DAYS)} of days at yellow+",
            ", ".join(f"{g.site.removeprefix('mukilteo_')} {pct(g.yellow_fraction, 1)}" for g in mg),
            verdict(worst.yellow_fraction <= RAIN_YELLOW_DAYS),
        ])
    section_real_failures(sec, failed_sets, jobs)
    sec.w(
        "### 7.5 The tuning side's other records\n",
        "Three Gorges Baishuihe/Bazimen (§3), Cubatão (§4) and Lamosano (§5) are the tuning records used during development; "
        "their results are in those sections. The stable GNSS tuning stations (P156 and nine helmsman stations) are in §7.1.\n",
    )
    return sec


def _lead(x: float | None) -> str:
    return "none before the failure" if x is None else f"{x:.1f} h before"


def section_real_failures(sec: Section, sets: list[Any], jobs: int) -> None:
    """§7.4: the real records that ran to a failure, replayed as a new user would and with a
    registry stating the kind; lead times of the first yellow, orange and red, forecast at the first red."""
    sec.w("### 7.4 Real failures: lead times\n")
    if not sets:
        sec.w("No dataset that ran to a failure is present (`benchmarks/data/README.md`, \"Looked for, not found\").\n")
        sec.targets.append(["7", "lead times on a real failure", "no such record present", "n/a"])
        return
    res: list[RealFailure] = parallel(run_real_failure, real_failure_jobs(sets), jobs)
    sec.w(
        "Each record replayed through `replay_rows` up to its failure, twice: **inferred** — no registry "
        "(`registry_from_rows`: kind from the channel name, interval and noise from the data, never below the kind's floor), "
        "as a new user would — and **stated** — a registry stating each channel's kind and its reporting interval, no noise "
        "figure (the kind's floor applies). A lead time is the time from the first change of the site level to that level or "
        "above, before the failure, to the failure; the forecast is the one the site's red carried (its predicted failure "
        "time, fit R², stated uncertainty and Voight α), its error as a share of the time that was left at the first red, as "
        "in §1. Issue 14 item 5 asks for orange ≥ 24 h ahead and red 6 h–7 days ahead with a forecast error ≤ 30 % of the "
        "time remaining; an orange ≥ 24 h ahead cannot be judged on a record that starts about a day before the failure.\n",
        table(
            ["dataset (side)", "site", "registry", "record before failure", "epochs (interval)", "noise judged with",
             "first yellow", "first orange (by)", "first red (by)", "forecast at red: ttf · error · R² · ± · α", "came down before failure"],
            [[f"{r.dataset} ({r.side})", r.site, r.registry, f"{r.record_h:.1f} h", f"{r.epochs} ({r.interval_s / 60:.0f} min)", r.noise,
              _lead(r.leads_h[2]), f"{_lead(r.leads_h[3])} ({r.by[3]})", f"{_lead(r.leads_h[4])} ({r.by[4]})",
              "—" if r.forecast_err is None else
              f"{fmt(r.forecast_h)} h · {pct(r.forecast_err)} ({'late' if (r.forecast_signed or 0) > 0 else 'early'}) · {fmt(r.forecast_r2, 2)} · "
              f"{fmt(r.forecast_unc_h)} h · {fmt(r.forecast_alpha, 2)}",
              "yes" if r.lowered else "no"] for r in res],
        ),
        "",
    )
    found: dict[str, list[str]] = {}  # finding text without the registry -> the registries it holds for
    for r in res:
        shown = r.changes[:REAL_CHANGES_SHOWN]
        sec.w(
            f"Level changes, {r.dataset} {r.site}, {r.registry} registry (hours before the failure; negative: after it):\n",
            table(["h before failure", "level", "reason"],
                  [[f"{h:.2f}", f"{NAMES[a]} → {NAMES[b]}", _reason(txt, 300)] for h, a, b, txt in shown]
                  + ([["…", f"{len(r.changes) - REAL_CHANGES_SHOWN} more", ""]] if len(r.changes) > REAL_CHANGES_SHOWN else [])),
            "",
        )
        sec.w(
            f"What each detector of the channel said on its own ({r.registry} registry; the site level above is what fusion made of it):\n",
            table(["channel", "detector", "judging from (end of warm-up)", "first yellow", "first orange", "first red", "its last verdict before the failure"],
                  [[ch, dn, "still warming up" if rd is None else _lead(rd), *(_lead(f[lv]) for lv in (2, 3, 4)), _reason(last, 200)]
                   for ch, dn, f, last, rd in r.raw]),
            "",
        )
        raw_red = max((f[4] for _c, _d, f, _l, _r in r.raw if f[4] is not None), default=None)
        held = [txt for _h, _a, _b, txt in r.changes if "not confirmed" in txt]
        warming = [dn for _c, dn, _f, _l, rd in r.raw if rd is None]
        # A detector whose yellow, orange and red came at one reading, the one that raised the site: the slope was past
        # every threshold before the detector could judge, so the lead time is bounded by the record's start.
        at_once = [(dn, f[2]) for _c, dn, f, _l, _r in r.raw if f[2] is not None and f[2] == f[4] and r.leads_h[2] is not None
                   and abs(f[2] - r.leads_h[2]) < 1e-6]
        red_ok = r.leads_h[4] is not None and REAL_RED_LEAD_H[0] <= r.leads_h[4] <= REAL_RED_LEAD_H[1]
        err_ok = r.forecast_err is not None and r.forecast_err <= REAL_FORECAST_ERR
        sec.targets.append([
            "7",
            (f"real failure **{r.dataset}** ({r.side}, n = 1), {r.registry} registry: red {REAL_RED_LEAD_H[0]:g} h–{REAL_RED_LEAD_H[1] / 24:g} d ahead "
             f"with forecast error ≤ {pct(REAL_FORECAST_ERR)} (orange ≥ 24 h not judged: record starts {r.record_h:.1f} h before)"),
            f"site level: yellow {_lead(r.leads_h[2])}, orange {_lead(r.leads_h[3])}, red {_lead(r.leads_h[4])}; forecast error at red "
            + ("—" if r.forecast_err is None else pct(r.forecast_err)),
            verdict(red_ok and err_ok),
        ])
        if not (red_ok and err_ok) or at_once:
            found.setdefault(
                f"Real failure {r.dataset} ({r.side}), {{registries}}: site level yellow {_lead(r.leads_h[2])}, orange {_lead(r.leads_h[3])}, "
                f"red {_lead(r.leads_h[4])}"
                + ("" if r.forecast_err is None else f", forecast error at the first red {pct(r.forecast_err)}")
                + (f"; the {at_once[0][0]} detector's yellow, orange and red came at one reading, {r.record_h - (at_once[0][1] or 0):.1f} h after "
                   f"the record starts ({r.record_h:.1f} h before the failure): its very first alarm was already red, so this lead time is "
                   "bounded by when the record starts (and the detector's window), not by how early it sees a slope start to go"
                   if at_once else "")
                + (f"; a detector of the channel was at red {raw_red:.1f} h before the failure, but the site was held at yellow "
                   "(\"not confirmed\": one device, and no failure forecast to confirm it)" if raw_red is not None and (r.leads_h[4] is None) and held else "")
                + (f"; still warming up at the failure: {', '.join(warming)} (their reference periods are longer than this record)" if warming else "")
                + ". One real failure (n = 1): reported, not tuned to (validation data); whether a single radar series should "
                "count as one device, or its pixels as several, is a registry choice this replay does not make.",
                [],
            ).append(r.registry)
    for text, regs in found.items():
        sec.findings.append(text.replace("{registries}", " and ".join(f"{x} registry" for x in regs)))


# -- 6. the bundled scenarios, scored from their truth files ---------------------------------

#: (scenario, seeds): what `geowarn simulate` ships, run the way an engineer runs it.
SCENARIOS = (("failure", (1, 2, 3)), ("stable", (1, 2)), ("storm", (1,)), ("seasonal", (1,)))


def run_scenario(name: str, seed: int, work: Path) -> dict[str, Any]:
    """``geowarn simulate --scenario NAME --seed S --out FEED.csv``, then replay the feed with the
    registry written beside it; the expectations come from ``FEED.csv.truth.json`` alone."""
    import json

    from geowarn.config.registry import load_registry
    from geowarn.ingest.feeds import read_feed

    feed = work / f"{name}-{seed}.csv"
    subprocess.run([sys.executable, "-m", "geowarn.service.cli", "simulate", "--scenario", name, "--seed", str(seed), "--out", str(feed), "--no-progress"],
                   cwd=REPO, check=True, capture_output=True, text=True)
    truth = json.loads(Path(f"{feed}.truth.json").read_text(encoding="utf-8"))
    registry = load_registry(Path(f"{feed}.sites.toml"))
    rows = list(read_feed(feed, []))
    events = level_changes(replay_rows(rows, registry, work / f"{name}-{seed}", plots=False).events)
    first: dict[tuple[str, int], float] = {}
    highest: dict[str, int] = {site: 0 for site in registry.sites}
    for e in events:
        t = event_time(e)
        for lvl in range(1, int(e["level"]) + 1):
            first.setdefault((e["site"], lvl), t)
        highest[e["site"]] = max(highest[e["site"]], int(e["level"]))
    return {"name": name, "seed": seed, "failures": {k: float(v) for k, v in truth.get("failures_epoch", {}).items()}, "first": first, "highest": highest}


def section_scenarios() -> Section:
    sec = Section()
    sec.w(
        "## 6. The bundled scenarios, scored from their truth files\n",
        "Each scenario is generated the way an engineer does it (`geowarn simulate --scenario NAME --seed S --out FEED.csv`), "
        "replayed with the registry written beside it (`FEED.csv.sites.toml`), and scored against `FEED.csv.truth.json` "
        "only: a site the truth says fails must reach red at least 12 h before its failure time; a site it does not list "
        "must never reach orange or red (a storm's rain may legitimately raise rain warnings: reported, not scored).\n",
    )
    rows: list[list[str]] = []
    red_ok = red_n = quiet_ok = quiet_n = 0
    with tempfile.TemporaryDirectory(prefix="geowarn-scenarios-") as tmp:
        for name, seeds in SCENARIOS:
            for seed in seeds:
                r = run_scenario(name, seed, Path(tmp))
                for site, level in sorted(r["highest"].items()):
                    tf = r["failures"].get(site)
                    red = r["first"].get((site, 4))
                    orange = r["first"].get((site, 3))
                    if tf is not None:
                        lead = None if red is None else (tf - red) / HOUR
                        ok = lead is not None and lead >= RED_LEAD_H
                        red_n += 1
                        red_ok += ok
                        note = f"fails {datetime.fromtimestamp(tf, UTC):%Y-%m-%d %H:%M}Z; red {fmt(lead)} h before, orange {fmt(None if orange is None else (tf - orange) / HOUR)} h before"
                    elif name == "storm":
                        ok = None
                        note = "storm: rain warnings are not false alarms"
                    else:
                        ok = level <= 2
                        quiet_n += 1
                        quiet_ok += ok
                        note = "no failure in the truth"
                    rows.append([name, str(seed), site, NAMES[level], note, verdict(ok)])
    sec.w(table(["scenario", "seed", "site", "highest level", "truth and lead", "verdict"], rows), "")
    sec.targets.append(["6", "bundled scenarios: red ≥ 12 h before each failure in the truth file", f"{red_ok}/{red_n} failing sites", verdict(red_ok == red_n)])
    sec.targets.append(["6", "bundled scenarios: no orange or red where the truth has no failure (storm excluded)", f"{quiet_ok}/{quiet_n} sites", verdict(quiet_ok == quiet_n)])
    if red_ok < red_n or quiet_ok < quiet_n:
        missed = sorted({f"{r[0]}/{r[2]}" for r in rows if r[5] == verdict(False)})
        sec.findings.append(
            f"Bundled scenarios: {red_n - red_ok} failing site(s) without red 12 h ahead, {quiet_n - quiet_ok} quiet site(s) at orange or red "
            f"({', '.join(missed)}; table in §6). In `seasonal` (seed 1) BSH's extensometer accelerates in a "
            "reservoir-drawdown step to only ~3.5 mm/day, and the inverse-velocity forecast fits that step (R² 0.87–0.91, "
            "20 points) with a failure 50–63 h away, which confirms orange on its own. A step that decelerates again is "
            "the forecast's known weakness (Fukuzono's line assumes the acceleration goes on). Suggested fix: let the "
            "forecast confirm orange/red only when the channel's velocity is itself at yellow or above and the fit's R² "
            "is ≥ 0.95, or require the velocity to keep rising over the fit window."
        )
    return sec


def report(plan: Plan, quick: bool, jobs: int, argv: list[str], validation_only: bool = False) -> str:
    started = time.perf_counter()
    commit = git_commit()  # before the run: the code the figures come from
    if validation_only:
        sections = [section_validation(jobs)]
    else:
        sections = [section_failures(plan, jobs), section_stable(plan, jobs), section_three_gorges(), section_cubatao(), section_lamosano(), section_scenarios(),
                    section_validation(jobs)]
    elapsed = time.perf_counter() - started
    out = [
        "# GeoWarn detector accuracy\n",
        "Generated by `benchmarks/accuracy.py` (all figures and text below); rerun it rather than editing this file.\n",
        table(
            ["", ""],
            [
                ["command", "`" + " ".join(["python3 benchmarks/accuracy.py", *argv]) + "`"],
                ["mode", "validation part only (§7)" if validation_only else ("quick (small subset)" if quick else "full")],
                ["date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")],
                ["machine", machine()],
                ["git commit", commit],
                ["run time", f"{elapsed:.0f} s ({jobs} worker processes)"],
                ["data", str(DATA) if DATA.is_dir() else f"{DATA} (absent)"],
                ["validation data", f"folders under {', '.join(str(r) for r in vd._candidate_roots())}, else git snapshots under {vd.mirror_root()} (§7 says which)"],
            ],
        ),
        "",
        "## Targets\n",
        table(["§", "target", "result", "verdict"], [row for s in sections for row in s.targets]),
        "",
        "## Findings: misses, causes, suggested fixes\n",
        "\n".join(f"- {f}" for s in sections for f in s.findings) or "No target missed.",
        "",
    ]
    for s in sections:
        out.extend(s.text)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small subset (a few minutes): 5 failures, 2 stable sites × 30 days, the real records")
    ap.add_argument("--out", type=Path, default=None, help="the markdown file to write (default: ACCURACY.md at the repository root; with --quick, standard output)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes for the simulations (default: all CPUs)")
    ap.add_argument("--validation", action="store_true", help="only §7, the real records of both sides of benchmarks/data/SPLIT.md (markdown to standard output unless --out)")
    args = ap.parse_args(argv)
    shown = list(sys.argv[1:] if argv is None else argv)
    text = report(QUICK if args.quick else FULL, args.quick, max(1, args.jobs), shown, validation_only=args.validation)
    out: Path | None = args.out
    if out is None and not args.quick and not args.validation:
        out = REPO / "ACCURACY.md"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
