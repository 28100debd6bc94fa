#!/usr/bin/env python3
"""Per-site rain thresholds on Cubatão, scored on years they were not fitted on.

Issue 14 item 7: at a rain-only site, yellow or above on at most 15 % of days with a hit rate
of at least 0.6. ``geowarn rain-calibrate`` (``detectors/rain_calibration.py``) proposes a
site's thresholds from its own record; this script checks what that buys on data the
proposal did not see.

The split, fixed before any result was looked at: calibrate on 2000-01-01…2007-12-31 (rain
and landslide days of those years only), score on 2008-01-01…2015-12-31 (the landslide list
ends in 2015). The detector runs over the whole record, so the scored years start with the
rain before them, as a live site would; only the days of the scored span are counted.

Everything as in ACCURACY.md section 4: rain gauge HB's daily totals, one reading each,
stamped at the end of its day (``accuracy.load_cubatao``, ``accuracy._day_end``); a
landslide day is hit when a day within ±1 day of it is at the level or above; the level of a
day is the rain channel's highest that day (``RainDetector.for_channel`` with the thresholds,
the same detector the daemon builds; with one gauge a site cannot confirm orange or red, so
the *site* would stay at yellow — orange and red are the channel's). Cubatão is tuning data
(``benchmarks/data/SPLIT.md``); no validation record is read here.

    python3 benchmarks/rain_calibration.py            # Markdown to stdout (about 10 s)

``benchmarks/accuracy.py`` calls :func:`cubatao_report` for ACCURACY.md's section 4.1 and puts
:class:`Item7` in its targets table; run on its own, this script prints the same section.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
from geowarn.detectors.rain import DAY, RainThresholds
from geowarn.detectors.rain_calibration import (
    LEVEL_FRACTIONS,
    DayScore,
    calibrate,
    day_levels,
    score,
)

FIT = (date(2000, 1, 1), date(2007, 12, 31))
TEST = (date(2008, 1, 1), date(2015, 12, 31))
NAMES = {2: "yellow", 3: "orange", 4: "red"}
EPOCH = date(1970, 1, 1)


def _day(d: date) -> int:
    return (d - EPOCH).days


def _scores(t: np.ndarray, v: np.ndarray, thr: RainThresholds | None, span: tuple[date, date], slides: list[int]) -> list[DayScore]:
    first, last = _day(span[0]), _day(span[1])
    levels = day_levels(t, v, DAY, thr, 0.0, first, last)
    within = np.array([d - first for d in slides if first <= d <= last], dtype=np.int64)
    return [score(levels, lvl, within, 1) for lvl, _ in LEVEL_FRACTIONS]


def _cell(s: DayScore) -> str:
    rate = "-" if s.hits is None or not s.landslide_days else f"{s.hits}/{s.landslide_days} = {s.hits / s.landslide_days:.0%}"
    return f"{s.fraction:.1%} · {rate}"


@dataclass(frozen=True)
class Item7:
    """Issue 14 item 7 on the scored years (2008–2015): share of days at yellow or above and hit
    rate, with the shipped defaults and with the thresholds calibrated on 2000–2007."""

    default_fraction: float
    default_hit_rate: float
    calibrated_fraction: float
    calibrated_hit_rate: float
    exceedance_fraction: float
    exceedance_hit_rate: float
    scored_landslide_days: int


def _rate(s: DayScore) -> float:
    return (s.hits or 0) / max(s.landslide_days, 1)


def cubatao_report(rain: dict[date, float], slides_n: dict[date, int], day_end: Callable[[date], float], heading: str = "##") -> tuple[list[str], Item7]:
    """The Markdown of the calibration check (its title at ``heading`` level) and item 7's figures.

    ``rain``: gauge HB's daily totals by local day; ``slides_n``: landslide records per day;
    ``day_end``: the time a day's total is stamped at (``accuracy._day_end``)."""
    days = sorted(rain)
    t = np.array([day_end(d) for d in days])
    v = np.array([rain[d] for d in days])
    slides = sorted(_day(d) for d in slides_n)
    fit = (t > day_end(FIT[0]) - DAY) & (t <= day_end(FIT[1]))
    fit_slides = [d for d in slides if _day(FIT[0]) <= d <= _day(FIT[1])]
    span = f"{FIT[0]}…{FIT[1]}"
    with_dates = calibrate(t[fit], v[fit], interval_s=DAY, landslide_days=fit_slides, span=span)
    exceedance = calibrate(t[fit], v[fit], interval_s=DAY, span=span)
    rows = [
        ("defaults (`detectors/rain.py`)", None),
        ("calibrated on 2000–2007 with its landslide days", with_dates.thresholds),
        ("calibrated on 2000–2007 by exceedance alone (no dates)", exceedance.thresholds),
    ]
    n_fit = sum(1 for d in slides if _day(FIT[0]) <= d <= _day(FIT[1]))
    n_test = sum(1 for d in slides if _day(TEST[0]) <= d <= _day(TEST[1]))
    out = [
        f"{heading} Cubatão: per-site rain thresholds, fitted on 2000–2007, scored on 2008–2015\n",
        (f"Rain gauge HB, daily totals; {n_fit} landslide days in 2000–2007, {n_test} in 2008–2015. The split was fixed "
        "before any result was looked at. `geowarn rain-calibrate` (targets: yellow or above on ≤ 15 % of days, orange "
        "≤ 5 %, red ≤ 1 %) saw only the rain and landslide days of 2000–2007; the scored years start with the rain "
        "before them. Each cell: share of days at that level or above · landslide days hit (a day within ±1 day at "
        "that level or above). Orange and red are the rain channel's levels (one gauge cannot confirm them for the site).\n"),
    ]
    header = "| thresholds | span | " + " | ".join(f"{NAMES[lvl]}+ days · hit rate" for lvl, _ in LEVEL_FRACTIONS) + " |"
    out += [header, "|---|---|" + "---|" * len(LEVEL_FRACTIONS)]
    for name, thr in rows:
        for label, sp in (("2000–2007 (fit)", FIT), ("**2008–2015 (scored)**", TEST)):
            cells = _scores(t, v, thr, sp, slides)
            out.append(f"| {name} | {label} | " + " | ".join(_cell(c) for c in cells) + " |")
    from geowarn.service.rain_calibrate import rain_table

    for title, prop in (("with landslide days", with_dates), ("by exceedance alone", exceedance)):
        out += ["", f"The proposal {title} (`[sites.policy.rain]`):", "", "```toml", *rain_table(prop.thresholds, prop.span), "```"]
    test = {name: _scores(t, v, thr, TEST, slides) for name, thr in rows}
    d, c, e = (test[name][0] for name, _ in rows)
    item7 = Item7(d.fraction, _rate(d), c.fraction, _rate(c), e.fraction, _rate(e), d.landslide_days)
    out += [
        "",
        (f"Issue 14 item 7 on the scored years: defaults {d.fraction:.1%} of days at yellow+ with hit rate "
        f"{_rate(d):.2f}; calibrated {c.fraction:.1%} with {_rate(c):.2f} "
        f"(target ≤ 15 % and ≥ 0.60: {'met' if c.fraction <= 0.15 and _rate(c) >= 0.6 else 'not met'})."),
    ]
    out += ["", *_per_year(t, v, rain, slides, [(n, thr) for n, thr in rows])]
    return out, item7


def main() -> int:
    # The benchmark next door: its Cubatão loader and day convention, as ACCURACY.md §4 uses them.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import accuracy

    base = accuracy.DATA / "cubatao_brazil_rain_landslides"
    if not (base / "cubatao_hb_rain_daily_long.csv").is_file():
        print("## Cubatão: per-site rain thresholds\n\nskipped: data absent (../shared/data/cubatao_brazil_rain_landslides)")
        return 0
    rain, slides_n = accuracy.load_cubatao()
    lines, _ = cubatao_report(rain, slides_n, accuracy._day_end)
    print("\n".join(lines))
    return 0


def _per_year(t: np.ndarray, v: np.ndarray, rain: dict[date, float], slides: list[int], rows: list[tuple[str, RainThresholds | None]]) -> list[str]:
    """Year by year: how wet, how many landslide days, and the share of days at yellow+ under
    each set of thresholds (a diagnostic: the scored years are not the fitted ones)."""
    first, last = _day(FIT[0]), _day(TEST[1])
    levels = [day_levels(t, v, DAY, thr, 0.0, first, last) for _, thr in rows]
    out = [
        "Year by year (share of days at yellow or above):",
        "",
        "| year | rain (mm) | landslide days | " + " | ".join(name for name, _ in rows) + " |",
        "|---|---|---|" + "---|" * len(rows),
    ]
    for year in range(FIT[0].year, TEST[1].year + 1):
        a, b = _day(date(year, 1, 1)) - first, _day(date(year, 12, 31)) - first + 1
        mm = sum(x for d, x in rain.items() if d.year == year)
        n = sum(1 for d in slides if a <= d - first < b)
        out.append(f"| {year} | {mm:.0f} | {n} | " + " | ".join(f"{(lv[a:b] >= 2).mean():.1%}" for lv in levels) + " |")
    return out


if __name__ == "__main__":
    sys.exit(main())
