"""Synthetic stress cases of issue 14 ("Why"), generated here from their own definitions —
numpy and the formulas below, not ``geowarn.simulators`` — so the detectors are judged on data
their authors did not make with the code they tuned against.

- ``stable_gnss``: a stable GNSS site over a year: 30-minute epochs, horizontal σ 2–4 mm
  (vertical twice that), 0.5 % outliers of 8 σ, a seasonal ±4 mm a year, 0.02 mm/day of creep.
- ``voight_slope``: a slope failing by Voight's law dv/dt = A·v^α, watched by one GNSS receiver
  (σ 2–5 mm, outliers, gaps) and a crack meter (σ 0.1 mm), every 10 minutes.
- ``wobble_point``: a point creeping at 0.2 mm/day with a wobble below its noise, read as
  published daily cumulative displacement (smoothed) — the issue's "R² 0.99 forecast on a
  point moving 0.2 mm/day".

Each returns (rows, registry, truth): ``rows`` are ``FeedRow``s, the registry is parsed from a
plain document as a user writes one (no ``noise`` stated: the kinds' floors apply), and
``truth`` what the scoring needs (failure time, …). ``replay`` runs them through
``service.replay.replay_rows``, the judge ``geowarn replay`` and the daemon share.

Voight's law, as integrated here (τ = t_f − t in days, p = 1/(α − 1), v₁ the velocity one day
before failure): v(τ) = c + v₁·τ^(−p); the displacement since t0 is c·(t − t0) + ∫ v₁·τ^(−p),
i.e. v₁·(τ0^(1−p) − τ^(1−p))/(1 − p) for α ≠ 2 and v₁·ln(τ0/τ) for α = 2.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from geowarn.config.registry import Registry, parse_registry
from geowarn.ingest.feeds import FeedRow
from geowarn.service.replay import replay_rows

DAY = 86400.0
HOUR = 3600.0
YEAR = 365.25 * DAY
T0 = 1_767_225_600.0  # 2026-01-01T00:00Z


def _registry(site: str, devices: list[tuple[str, list[tuple[str, str]], float]]) -> Registry:
    doc = {
        "sites": [
            {
                "site": site,
                "name": site,
                "admin": "420527",
                "lat": 30.9,
                "lon": 110.6,
                "devices": [
                    {"device": dev, "channels": [{"channel": ch, "kind": kind, "interval_s": interval} for ch, kind in chans]}
                    for dev, chans, interval in devices
                ],
            }
        ]
    }
    return parse_registry(doc, f"stress case {site}")


def _enu(azimuth_deg: float, dip_deg: float) -> tuple[float, float, float]:
    az, dip = math.radians(azimuth_deg), math.radians(dip_deg)
    return math.sin(az) * math.cos(dip), math.cos(az) * math.cos(dip), -math.sin(dip)


def _noise(rng: np.random.Generator, n: int, sigma: float, outlier_p: float, outlier_sigmas: float) -> np.ndarray:
    e = rng.normal(0.0, sigma, n)
    hit = rng.random(n) < outlier_p
    e[hit] += outlier_sigmas * sigma * rng.choice([-1.0, 1.0], int(hit.sum()))
    return e


def _gaps(rng: np.random.Generator, t: np.ndarray, per_day: float, hours: tuple[float, float]) -> np.ndarray:
    """A mask of the readings kept: ``per_day`` gaps a day on average, each ``hours`` long."""
    keep = np.ones(len(t), bool)
    days = (t[-1] - t[0]) / DAY
    for _ in range(int(rng.poisson(per_day * days))):
        a = rng.uniform(t[0], t[-1])
        keep &= ~((t >= a) & (t < a + rng.uniform(*hours) * HOUR))
    return keep


@dataclass(frozen=True)
class Case:
    rows: list[FeedRow]
    registry: Registry
    truth: dict[str, Any]


def _ar1(rng: np.random.Generator, n: int, sigma: float, step_s: float, tau_s: float) -> np.ndarray:
    """AR(1) (first-order Gauss-Markov) noise of standard deviation ``sigma`` and correlation
    time ``tau_s``, sampled every ``step_s``."""
    phi = math.exp(-step_s / tau_s)
    w = rng.normal(0.0, sigma * math.sqrt(1 - phi * phi), n)
    out = np.empty(n)
    x = rng.normal(0.0, sigma)
    for i in range(n):
        x = phi * x + w[i]
        out[i] = x
    return out


def stable_gnss(seed: int, *, days: float = 365.25, site: str | None = None, coloured: float = 0.0, tau_h: float | None = None) -> Case:
    """One stable GNSS site (see the module docstring). ``coloured``: the fraction of the noise
    variance that is time-correlated (AR(1) with correlation time ``tau_h``, drawn from 1–6 h
    when None; multipath and the troposphere make real GNSS noise so), the rest white; the
    total σ stays as drawn."""
    rng = np.random.default_rng(np.random.SeedSequence([14_4, seed]))
    site = site or f"G{seed}"
    dev = f"{site}-GNSS"
    interval = 1800.0
    t = T0 + interval * np.arange(int(days * DAY / interval))
    sigma = float(rng.uniform(2.0, 4.0))
    tau = float(rng.uniform(1.0, 6.0)) if tau_h is None else tau_h
    e, n, u = _enu(float(rng.uniform(0, 360)), float(rng.uniform(10, 30)))
    creep = 0.02 * (t - T0) / DAY
    rows: list[FeedRow] = []
    for ch, factor, s in (("gnss_e", e, sigma), ("gnss_n", n, sigma), ("gnss_u", u, 2 * sigma)):
        seasonal = 4.0 * np.sin(2 * math.pi * (t - T0) / YEAR + rng.uniform(0, 2 * math.pi))
        white = _noise(rng, len(t), s * math.sqrt(1 - coloured), 0.0, 0.0)
        hit = rng.random(len(t)) < 0.005
        white[hit] += 8.0 * s * rng.choice([-1.0, 1.0], int(hit.sum()))
        red = _ar1(rng, len(t), s * math.sqrt(coloured), interval, tau * HOUR) if coloured else 0.0
        v = factor * creep + seasonal + white + red
        rows += [FeedRow(site, dev, ch, float(a), round(float(b), 2)) for a, b in zip(t, v)]
    rows.sort(key=lambda r: r.t)
    reg = _registry(site, [(dev, [("gnss_e", "gnss_e"), ("gnss_n", "gnss_n"), ("gnss_u", "gnss_u")], interval)])
    return Case(rows, reg, {"sigma": sigma, "days": days, "tau_h": tau})


def voight_displacement(t: np.ndarray, t0: float, t_f: float, alpha: float, v1d: float, creep: float) -> np.ndarray:
    tau0 = (t_f - t0) / DAY
    tau = (t_f - t) / DAY
    p = 1.0 / (alpha - 1.0)
    if abs(p - 1.0) < 1e-12:
        acc = v1d * np.log(tau0 / tau)
    else:
        acc = v1d * (tau0 ** (1 - p) - tau ** (1 - p)) / (1 - p)
    return creep * (t - t0) / DAY + acc


def voight_slope(
    alpha: float, sigma: float, seed: int, *, days: float = 14.0, v1d: float = 120.0, site: str | None = None, crack_fraction: float = 1.0, gnss_every: int = 1
) -> Case:
    """A slope failing ``days`` after the start (see the module docstring): one GNSS receiver
    with horizontal σ ``sigma`` (vertical twice it), 0.5 % outliers of 5–15 σ, gaps of 1–6 h
    every ~5 days; a crack meter with σ 0.1 mm; both every 10 minutes until 5 minutes before
    failure. ``crack_fraction``: the share of the slope's displacement the crack opens by;
    ``gnss_every``: the receiver reports every that many 10-minute steps."""
    rng = np.random.default_rng(np.random.SeedSequence([14_5, seed, int(alpha * 1000)]))
    site = site or f"V{int(alpha * 100)}s{seed}"
    interval = 600.0
    t_f = T0 + days * DAY
    t = T0 + interval * np.arange(int((days * DAY - 300.0) / interval))
    d = voight_displacement(t, T0, t_f, alpha, v1d, 0.2)
    e, n, u = _enu(float(rng.uniform(0, 360)), float(rng.uniform(15, 35)))
    gnss, crack = f"{site}-GNSS", f"{site}-CRK"
    rows: list[FeedRow] = []
    keep = _gaps(rng, t, 0.2, (1.0, 6.0))
    for ch, factor, s in (("gnss_e", e, sigma), ("gnss_n", n, sigma), ("gnss_u", u, 2 * sigma)):
        noise = rng.normal(0.0, s, len(t))
        hit = rng.random(len(t)) < 0.005
        noise[hit] += rng.uniform(5, 15, int(hit.sum())) * s * rng.choice([-1.0, 1.0], int(hit.sum()))
        v = factor * d + noise
        rows += [FeedRow(site, gnss, ch, float(a), round(float(b), 2)) for i, (a, b, k) in enumerate(zip(t, v, keep)) if k and i % gnss_every == 0]
    keep = _gaps(rng, t, 0.2, (1.0, 6.0))
    v = crack_fraction * d + rng.normal(0.0, 0.1, len(t))
    rows += [FeedRow(site, crack, "crack", float(a), round(float(b), 2)) for a, b, k in zip(t, v, keep) if k]
    rows.sort(key=lambda r: r.t)
    reg = _registry(site, [(gnss, [("gnss_e", "gnss_e"), ("gnss_n", "gnss_n"), ("gnss_u", "gnss_u")], interval * gnss_every), (crack, [("crack", "crack")], interval)])
    return Case(rows, reg, {"t_f": t_f, "alpha": alpha, "sigma": sigma})


def wobble_point(seed: int, *, days: float = 4 * 365.25, site: str | None = None) -> Case:
    """A point creeping at 0.2 mm/day, published as daily cumulative displacement: monthly
    surveys (GNSS, 3 mm) joined by a cubic spline-like smooth curve, plus a sub-noise wobble
    (±1.5 mm over ~40 days). Its velocity never exceeds ~0.5 mm/day; nothing should confirm a
    failure."""
    rng = np.random.default_rng(np.random.SeedSequence([14_3, seed]))
    site = site or f"W{seed}"
    dev = f"{site}-GPS"
    t = T0 + DAY * np.arange(int(days))
    months = T0 + 30.4 * DAY * np.arange(int(days / 30.4) + 2)
    survey = 0.2 * (months - T0) / DAY + rng.normal(0.0, 3.0, len(months))
    # Smooth interpolation through the surveys: a moving average of the linear interpolation
    # over a month (what a published, smoothed daily series looks like: lag-1 correlation ≈ 1).
    lin = np.interp(t, months, survey)
    k = 31
    smooth = np.convolve(np.pad(lin, (k // 2, k // 2), mode="edge"), np.ones(k) / k, mode="valid")
    wobble = 1.5 * np.sin(2 * math.pi * (t - T0) / (40 * DAY) + rng.uniform(0, 2 * math.pi))
    v = smooth + wobble
    rows = [FeedRow(site, dev, "displacement", float(a), round(float(b), 2)) for a, b in zip(t, v)]
    reg = _registry(site, [(dev, [("displacement", "displacement")], DAY)])
    return Case(rows, reg, {"days": days})


def replay(case: Case) -> list[dict[str, Any]]:
    """The level changes (raise, upgrade, downgrade, lift) of a replay of ``case``."""
    with tempfile.TemporaryDirectory(prefix="geowarn-stress-") as tmp:
        summary = replay_rows(case.rows, case.registry, Path(tmp), plots=False)
    return [e for e in summary.events if e["kind"] in ("raise", "upgrade", "downgrade", "lift")]


def event_time(e: dict[str, Any]) -> float:
    return datetime.fromisoformat(e["t"].replace("Z", "+00:00")).timestamp()


def yellow_raises(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events that take a site from below yellow to yellow or above."""
    out, prev = [], 0
    for e in events:
        if e["level"] >= 2 > prev:
            out.append(e)
        prev = e["level"]
    return out


def failure_score(case: Case, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Lead times (h) of the first orange (level exactly 3 at its first ≥ 3) and first red, and
    the forecast's error at the first red as a fraction of the time remaining."""
    t_f = case.truth["t_f"]
    first3 = next((e for e in events if e["level"] >= 3), None)
    first4 = next((e for e in events if e["level"] >= 4), None)
    out: dict[str, Any] = {
        "orange_h": None if first3 is None else (t_f - event_time(first3)) / HOUR,
        "orange_stage": first3 is not None and first3["level"] == 3,
        "red_h": None if first4 is None else (t_f - event_time(first4)) / HOUR,
        "forecast_err": None,
        "first3": first3,
        "first4": first4,
    }
    if first4 is not None:
        f = first4.get("forecast") or (first4.get("evidence") or {}).get("forecast")
        if f and f.get("failure_time") is not None:
            out["forecast_err"] = abs(float(f["failure_time"]) - t_f) / (t_f - event_time(first4))
    return out
