"""Plots of a feed or a replay: one PNG per site (matplotlib, Agg backend: no display).

Four panels on one time axis: displacement of every displacement-like channel (relative to
its first reading), smoothed velocity (least-squares slope over the site's velocity window,
never a raw difference of noisy readings), inverse velocity with the Fukuzono line fitted
from the onset of acceleration and its forecast failure time, and rain (hourly bars). The
site's warning level, from a replay's alert events, is drawn as coloured bands behind every
panel; the true failure time of a simulation, when known, as a black line.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

from geowarn.config.registry import DISPLACEMENT_LIKE, Kind, Registry
from geowarn.core.timefmt import parse_time
from geowarn.ingest.feeds import FeedRow, kind_of_channel

DAY = 86400.0
LEVEL_COLOURS = {1: "#1f77b4", 2: "#f2c200", 3: "#ff7f0e", 4: "#d62728"}
_FIG_SIZE = (11.0, 10.0)
_DPI = 90


def _dt(t: NDArray[np.float64]) -> NDArray[Any]:
    return (np.asarray(t) * 1000.0).astype("datetime64[ms]")


def rolling_velocity(t: NDArray[np.float64], x: NDArray[np.float64], window_s: float) -> NDArray[np.float64]:
    """Least-squares slope of ``x`` over the trailing ``window_s`` at each reading, per day
    (NaN until the window holds 3 readings). Cumulative sums: O(n)."""
    n = len(t)
    if n < 3:
        return np.full(n, np.nan)
    tc = (t - t[0]) / DAY
    c1 = np.concatenate([[0.0], np.cumsum(tc)])
    c2 = np.concatenate([[0.0], np.cumsum(tc * tc)])
    cx = np.concatenate([[0.0], np.cumsum(x)])
    ctx = np.concatenate([[0.0], np.cumsum(tc * x)])
    lo = np.searchsorted(t, t - window_s, side="left")
    hi = np.arange(1, n + 1)
    m = hi - lo
    st, stt, sx, stx = c1[hi] - c1[lo], c2[hi] - c2[lo], cx[hi] - cx[lo], ctx[hi] - ctx[lo]
    den = m * stt - st * st
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (m * stx - st * sx) / den
    v[(m < 3) | ~(np.abs(den) > 1e-12)] = np.nan
    return v


def fukuzono_fit(t: NDArray[np.float64], v: NDArray[np.float64]) -> tuple[float, float, float, float] | None:
    """(a, b, t_start, forecast) of the line 1/v = a + b·t fitted from the onset of
    acceleration (the last time the velocity was below a quarter of its final value) to the
    end; None when the fit does not point to a failure (no positive velocity, b >= 0)."""
    ok = np.isfinite(v) & (v > 0)
    if ok.sum() < 5:
        return None
    t, v = t[ok], v[ok]
    # Onset: the last time the velocity was still under twice its early (steady) value.
    steady = float(np.median(v[: max(3, len(v) // 10)]))
    below = np.nonzero(v < 2.0 * steady)[0]
    start = int(below[-1]) + 1 if len(below) else 0
    if len(v) - start < 5:
        start = max(0, len(v) - 5)
    tt, inv = t[start:], 1.0 / v[start:]
    b, a = np.polyfit(tt - tt[0], inv, 1)
    # A line that barely falls over the fit is a steady slope, not one heading for failure.
    if not b * (tt[-1] - tt[0]) < -0.1 * float(np.mean(inv)):
        return None
    forecast = float(tt[0] - a / b)
    return float(a - b * tt[0]), float(b), float(tt[0]), forecast


def read_alerts(path: str | Path, site: str | None = None) -> list[dict[str, Any]]:
    """Alert events of a replay (``alerts.jsonl``), optionally of one site."""
    out: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                e = json.loads(line)
                if site is None or e.get("site") == site:
                    out.append(e)
    return out


def _bands(events: Iterable[dict[str, Any]], t_end: float) -> list[tuple[float, float, int]]:
    """(from, to, level) spans of the site's level, from its level changes."""
    changes = sorted(((parse_time(e["t"]), int(e["level"])) for e in events), key=lambda x: x[0])
    spans: list[tuple[float, float, int]] = []
    for (t, level), nxt in zip(changes, [*changes[1:], (max(t_end, changes[-1][0] if changes else t_end), 0)]):
        if level > 0 and nxt[0] > t:
            spans.append((t, nxt[0], level))
    return spans


def plot_site(
    rows: Iterable[FeedRow],
    registry: Registry | None,
    site: str,
    events: list[dict[str, Any]],
    out: str | Path,
    *,
    failure_time: float | None = None,
) -> Path:
    """Write the PNG of ``site`` from its feed rows and its alert events; returns the path."""
    series: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    kinds: dict[tuple[str, str], Kind | None] = {}
    for r in rows:
        if r.site != site:
            continue
        key = (r.device, r.channel)
        series[key].append((r.t, r.value))
        if key not in kinds:
            info = registry.channel(site, r.device, r.channel) if registry is not None else None
            kinds[key] = Kind(info.kind) if info is not None else kind_of_channel(r.channel)
    window_s = 6 * 3600.0
    if registry is not None and site in registry.sites:
        window_s = registry.sites[site].policy.velocity_window_s
    arrays = {k: np.asarray(sorted(v)) for k, v in series.items()}
    t_all = [a[:, 0] for a in arrays.values() if len(a)]
    t_min = min(float(t.min()) for t in t_all) if t_all else 0.0
    t_max = max(float(t.max()) for t in t_all) if t_all else 1.0

    fig, axes = plt.subplots(4, 1, figsize=_FIG_SIZE, sharex=True, gridspec_kw={"height_ratios": [3, 2, 2, 1.4]})
    ax_d, ax_v, ax_iv, ax_r = axes
    name = registry.sites[site].name if registry is not None and site in registry.sites else site
    # The bundled fonts have no CJK glyphs: keep the Latin part of a bilingual name.
    latin = "".join(ch for ch in name if ord(ch) < 0x2E80).strip()
    fig.suptitle(f"{site} - {latin or site}", fontsize=12)

    main: tuple[NDArray[np.float64], NDArray[np.float64], str] | None = None
    main_range = -1.0
    for (device, channel), a in sorted(arrays.items()):
        kind = kinds[(device, channel)]
        if kind not in DISPLACEMENT_LIKE or len(a) < 2:
            continue
        t, x = a[:, 0], a[:, 1] - a[0, 1]
        ax_d.plot(_dt(t), x, lw=0.8, label=f"{device} {channel}")
        if kind is not Kind.tilt:
            span = float(np.ptp(x[-max(3, len(x) // 20) :].mean() - x[: max(3, len(x) // 20)].mean()))
            if abs(span) > main_range:
                main_range = abs(span)
                main = (t, a[:, 1] * (1.0 if span >= 0 else -1.0), f"{device} {channel}")
    # Symmetric log: millimetres of creep and metres of collapse on one readable axis.
    ax_d.set_yscale("symlog", linthresh=10.0)
    ax_d.set_ylabel("displacement (mm, rel.)")
    if ax_d.lines:
        ax_d.legend(loc="upper left", fontsize=7, ncol=3)

    if main is not None:
        t, x, label = main
        v = rolling_velocity(t, x, window_s)
        ax_v.plot(_dt(t), v, lw=0.9, color="black", label=f"{label}, {window_s / 3600:.0f} h window")
        if np.nanmax(np.abs(v), initial=0.0) > 0:
            ax_v.set_yscale("symlog", linthresh=1.0)
        ax_v.set_ylabel("velocity (mm/day)")
        ax_v.legend(loc="upper left", fontsize=7)
        with np.errstate(divide="ignore"):
            inv = np.where(v > 0, 1.0 / v, np.nan)
        ax_iv.plot(_dt(t), inv, ".", ms=2, color="0.3", label="1/v")
        fit = fukuzono_fit(t, v)
        if fit is not None:
            a0, b, t_start, t_f = fit
            tl = np.linspace(t_start, max(t_f, t_start + 1.0), 50)
            ax_iv.plot(_dt(tl), np.maximum(a0 + b * tl, 0.0), color="purple", lw=1.2, label="inverse-velocity fit")
            ax_iv.axvline(_dt(np.asarray([t_f]))[0], color="purple", ls="--", lw=1.0, label=f"forecast failure {datetime.fromtimestamp(t_f, timezone.utc):%Y-%m-%d %H:%M} UTC")
            t_max = max(t_max, min(t_f, t_max + 3 * DAY))
        finite = inv[np.isfinite(inv)]
        if len(finite):
            ax_iv.set_ylim(0, float(np.nanpercentile(finite, 98)) * 1.1 or 1.0)
        ax_iv.legend(loc="upper right", fontsize=7)
    else:
        ax_v.text(0.5, 0.5, "no displacement channel", ha="center", transform=ax_v.transAxes)
    ax_iv.set_ylabel("1/v (day/mm)")

    rain = [(k, a) for k, a in arrays.items() if kinds[k] is Kind.rain and len(a)]
    if rain:
        (device, channel), a = rain[0]
        edges = np.arange(np.floor(t_min / 3600) * 3600, t_max + 3600, 3600.0)
        sums, _ = np.histogram(a[:, 0], bins=edges, weights=a[:, 1])
        ax_r.bar(_dt(edges[:-1]), sums, width=1 / 24, align="edge", color="#3a7bd5", label=f"{device} {channel}")
        ax_r.legend(loc="upper left", fontsize=7)
    else:
        ax_r.text(0.5, 0.5, "no rain gauge", ha="center", transform=ax_r.transAxes)
    ax_r.set_ylabel("rain (mm/h)")

    for t0, t1, level in _bands(events, t_max):
        for ax in axes:
            ax.axvspan(_dt(np.asarray([t0]))[0], _dt(np.asarray([t1]))[0], color=LEVEL_COLOURS.get(level, "grey"), alpha=0.18, lw=0)
    if failure_time is not None:
        for ax in axes:
            ax.axvline(_dt(np.asarray([failure_time]))[0], color="black", lw=1.2)
        ax_d.annotate("true failure", xy=(_dt(np.asarray([failure_time]))[0], 0), xycoords=("data", "axes fraction"), fontsize=7, rotation=90, va="bottom", ha="right")
    ax_r.set_xlim(_dt(np.asarray([t_min]))[0], _dt(np.asarray([t_max]))[0])
    fig.autofmt_xdate()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=_DPI)
    plt.close(fig)
    return out


def plot_replay(rows: list[FeedRow], registry: Registry, events: list[dict[str, Any]], out_dir: str | Path, *, max_sites: int = 50, failures: dict[str, float] | None = None) -> list[Path]:
    """``DIR/plots/<site>.png`` for the sites of a replay: the ``max_sites`` sites with the
    highest levels (a national feed has thousands; nobody reads thousands of plots)."""
    by_site: dict[str, list[FeedRow]] = defaultdict(list)
    for r in rows:
        by_site[r.site].append(r)
    highest: dict[str, int] = defaultdict(int)
    ev_site: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        ev_site[e["site"]].append(e)
        highest[e["site"]] = max(highest[e["site"]], int(e["level"]))
    order = sorted(by_site, key=lambda s: (-highest[s], s))[:max_sites]
    out = Path(out_dir)
    return [plot_site(by_site[s], registry, s, ev_site[s], out / f"{s}.png", failure_time=(failures or {}).get(s)) for s in order]
