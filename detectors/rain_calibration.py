"""A site's own rain thresholds, proposed from its own rain record (``geowarn rain-calibrate``).

Rain thresholds are local (Guzzetti et al. 2008): 100 mm of effective rain is a wet fortnight
in the Three Gorges (~1100 mm a year) and an ordinary one in the Serra do Mar (~2600 mm).
This module owns how GeoWarn turns a site's record — rain readings, and the dated landslide
days when there are any — into per-site thresholds for ``detectors.rain`` (``RainThresholds``,
the registry's ``[sites.policy.rain]``). No I/O: ``service/rain_calibrate.py`` reads the
record and writes the TOML.

What is calibrated
------------------
Each *index* of the rain detector the channel gets (``RainDetector.for_channel``): the 1 h /
24 h / 72 h sums that its reporting interval allows, the intensity–duration point of the open
rain event and the effective rain. The I–D index is the a-equivalent I·D^b of the event (the
a of the curve I = a·D^(−b) through the point, b kept at the site's value, Caine's 0.39 by
default: daily totals give durations in whole days only, too coarse to fit b), so its
thresholds are curves of the same slope; the proposal writes the yellow curve as ``id_a`` and
orange and red as multiples of it. K and the days of the effective rain are kept too.

The target
----------
The share of days a level may be reached (at or above it), by default yellow 15 %,
orange 5 %, red 1 %. Yellow's 15 % is issue 14's target for a rain-only site. Orange and red are
our choice, not a published standard: each level about three to five times rarer than the one
below, so that a county sees orange a few weeks and red a few days a year (5 % ≈ 18 days,
1 % ≈ 4 days) and each step up still means something. A day is "at level L" when the
channel's level reached L at any time that day (its reading days are those from the first
reading's day to the last reading's; a day without readings keeps the level it had).

How
---
Day by day, every index's largest value of the day comes from running the site's current rain
detector over the record (its evidence); a level reached on a day is held into the next (the
detector's one-day hold), so an index alarms on day d at threshold T when its value on d or
d−1 reached T. Then, level by level from yellow up:

1. *With dated landslides*: each calibrated index gets a share g of the level's budget f
   (g in f × {0.02, 0.05, 0.1, …, 1}: its threshold is where that index alone alarms on a
   fraction g of days); of all combinations whose union of alarm days stays within f, the
   one hitting the most landslide days wins (a landslide day is hit when a day within
   ± ``hit_window_days`` of it is at the level; ties: the fewer alarm days). Methods not
   calibrated keep their thresholds and their alarm days count against the budget.
2. *Without*: every calibrated index gets the same share g, the largest whose union stays
   within f (exceedance alone).
3. The thresholds are rounded up (0.1 mm; 0.01 mm/h for the I–D curve) and then checked with
   the real detector (``RainDetector.for_channel`` with them, hysteresis and hold included):
   they are scaled up together, by bisection, to the smallest factor ≥ 1 at which the real
   share of days is within the target. Orange's thresholds stay above yellow's, red's above
   orange's. A last run with all levels checks every target again.

The combination search is fitted to the landslide days it is given; ``benchmarks/
rain_calibration.py`` scores it on a later part of a record than the one it was fitted on.

Reference: Guzzetti F., Peruccacci S., Rossi M., Stark C.P. (2008) The rainfall
intensity–duration control of shallow landslides and debris flows: an update, Landslides
5:3–17.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta

import numpy as np
from geowarn.detectors.rain import (
    DAY,
    DEFAULT_WINDOWS,
    RAIN_DEFAULTS,
    Ladder,
    RainDetector,
    RainThresholds,
    _label,
)

_EPOCH = date(1970, 1, 1)

#: Default share of days at or above each level: (level, fraction).
LEVEL_FRACTIONS: tuple[tuple[int, float], ...] = ((2, 0.15), (3, 0.05), (4, 0.01))
#: The methods of the rain detector, as its evidence ``levels`` names them.
METHODS = ("sums", "intensity_duration", "antecedent")
#: Shares of a level's budget an index may take, in the search with landslide days.
SHARES = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: Rounding step of a threshold: mm for sums and effective rain, mm/h for the I–D curve.
STEP_MM = 0.1
STEP_A = 0.01
#: Orange above yellow (red above orange) by at least this factor.
RISE = 1.001


class CalibrationError(ValueError):
    """A record that cannot be calibrated from (too short, no rain, no landslide day in it)."""


@dataclass(frozen=True)
class DayScore:
    """One level's outcome over the record's days."""

    level: int
    fraction: float  # share of days at or above the level
    days: int  # days in the record
    hits: int | None  # landslide days hit (None: no landslide days given)
    landslide_days: int


@dataclass(frozen=True)
class Proposal:
    """The proposed thresholds and what they do on the record they were fitted on."""

    thresholds: RainThresholds  # calibrated parts only, source "calibrated from <span>"
    span: str
    first_day: int
    last_day: int
    targets: tuple[tuple[int, float], ...]
    current: tuple[DayScore, ...]  # the site's thresholds before
    proposed: tuple[DayScore, ...]
    methods: tuple[str, ...]
    shares: dict[str, dict[int, float]] = field(default_factory=dict)  # index -> level -> share searched


# -- the record, day by day --------------------------------------------------------------------


def day_number(t: float | np.ndarray, day_offset_s: float = 0.0) -> np.ndarray:
    """The day a reading stamped at ``t`` belongs to (a reading at a day boundary closes the
    day before, as ``AntecedentRain`` books it); day 0 starts at ``day_offset_s`` after the
    epoch, so day n is the date 1970-01-01 + n of the local day."""
    return (np.ceil((np.asarray(t, dtype=float) - day_offset_s) / DAY) - 1).astype(np.int64)


def _clean(t: Sequence[float], mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    ta = np.asarray(t, dtype=float)
    va = np.asarray(mm, dtype=float)
    if ta.shape != va.shape:
        raise CalibrationError(f"times and rain differ in length ({len(ta)} and {len(va)})")
    ok = np.isfinite(ta) & np.isfinite(va)
    ta, va = ta[ok], va[ok]
    order = np.argsort(ta, kind="stable")
    ta, va = ta[order], va[order]
    keep = np.concatenate(([True], np.diff(ta) > 0)) if len(ta) else np.zeros(0, bool)
    return ta[keep], va[keep]


def _current_ladders(interval_s: float, current: RainThresholds | None) -> dict[str, Ladder]:
    """Each index's ladder as the site's detector has it now, in the index's units."""
    det = RainDetector.for_channel(interval_s, thresholds=current)
    out: dict[str, Ladder] = {f"sum_{_label(w)}": ladder for w, ladder in det.sums.windows}
    a = det.intensity.a
    out["id"] = tuple((lvl, a * m) for lvl, m in det.intensity.levels)
    out["effective"] = det.antecedent.thresholds
    return out


def index_days(
    t: np.ndarray, mm: np.ndarray, interval_s: float, current: RainThresholds | None, day_offset_s: float, first: int, last: int
) -> dict[str, np.ndarray]:
    """Each index's largest value per day over days ``first``..``last``, read from the
    evidence of the site's current detector (index values do not depend on thresholds)."""
    det = RainDetector.for_channel(interval_s, thresholds=current)
    a = det.intensity.a
    keys = [(f"sum_{_label(w)}", f"sum_{_label(w)}_mm") for w, _ in det.sums.windows]
    n = last - first + 1
    out = {name: np.zeros(n) for name, _ in keys}
    out["id"] = np.zeros(n)
    out["effective"] = np.zeros(n)
    days = day_number(t, day_offset_s) - first
    for ti, x, d in zip(t.tolist(), mm.tolist(), days.tolist()):
        v = det.update(ti, x)
        if v.warming_up or not 0 <= d < n:
            continue
        ev = v.evidence
        for name, key in keys:
            out[name][d] = max(out[name][d], ev[key])
        out["id"][d] = max(out["id"][d], ev["id_ratio"] * a)
        out["effective"][d] = max(out["effective"][d], ev["effective_rain_mm"])
    return out


def day_levels(
    t: np.ndarray, mm: np.ndarray, interval_s: float, thresholds: RainThresholds | None, day_offset_s: float, first: int, last: int
) -> np.ndarray:
    """The channel's highest level per day over days ``first``..``last`` with the real
    detector; a day without readings keeps the level the last reading left."""
    det = RainDetector.for_channel(interval_s, thresholds=thresholds)
    n = last - first + 1
    top = np.full(n, -1, dtype=np.int64)
    days = day_number(t, day_offset_s) - first
    for ti, x, d in zip(t.tolist(), mm.tolist(), days.tolist()):
        lvl = det.update(ti, x).level
        if 0 <= d < n and lvl > top[d]:
            top[d] = lvl
    # A day without readings keeps the level of the day before (no data never lowers a level).
    carried = 0
    for i in range(n):
        if top[i] < 0:
            top[i] = carried
        carried = int(top[i])
    return top


def score(levels: np.ndarray, level: int, slide_days: np.ndarray, hit_window_days: int) -> DayScore:
    """Share of days at or above ``level``, and the landslide days (indices into ``levels``)
    with a day within ± ``hit_window_days`` at or above it."""
    on = levels >= level
    hits = None
    if len(slide_days):
        near = _near(on, hit_window_days)
        hits = int(near[slide_days].sum())
    return DayScore(level, float(on.mean()) if len(on) else 0.0, len(on), hits, len(slide_days))


def _near(on: np.ndarray, w: int) -> np.ndarray:
    """Days with an ``on`` day within ± w days."""
    out = on.copy()
    for k in range(1, w + 1):
        out[k:] |= on[:-k]
        out[:-k] |= on[k:]
    return out


# -- the search --------------------------------------------------------------------------------


def _held(x: np.ndarray, hold_days: int = 1) -> np.ndarray:
    """The largest value of the day and the ``hold_days`` before: an alarm outlives its day."""
    y = x.copy()
    for k in range(1, hold_days + 1):
        y[k:] = np.maximum(y[k:], x[:-k])
    return y


def _round_up(x: float, step: float) -> float:
    return round(math.ceil(x / step - 1e-9) * step, 10)


def _for_share(y_sorted_desc: np.ndarray, share: float, step: float, floor: float) -> float:
    """The smallest rounded threshold at which at most ``share`` of days reach ``y``."""
    n = len(y_sorted_desc)
    k = math.floor(share * n + 1e-9)
    if k >= n:
        thr = step
    else:
        v = float(y_sorted_desc[k])
        thr = _round_up(v, step)
        if thr <= v:
            thr = round(thr + step, 10)
    return max(thr, _round_up(floor, step), step)


def _step_of(index: str) -> float:
    return STEP_A if index == "id" else STEP_MM


def _search(
    held: dict[str, np.ndarray],
    sorted_desc: dict[str, np.ndarray],
    calibrated: list[str],
    fixed_alarm: np.ndarray,
    budget: float,
    floors: dict[str, float],
    slide_days: np.ndarray,
    hit_window_days: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """Thresholds per calibrated index for one level (see the module docstring), and the
    share each got."""
    n = len(fixed_alarm)
    if not len(slide_days):
        # Exceedance alone: the same share for every index, the largest that fits.
        lo, hi = 0.0, budget
        best = {i: _for_share(sorted_desc[i], 0.0, _step_of(i), floors[i]) for i in calibrated}
        best_g = 0.0
        for _ in range(40):
            g = (lo + hi) / 2
            thr = {i: _for_share(sorted_desc[i], g, _step_of(i), floors[i]) for i in calibrated}
            alarm = fixed_alarm.copy()
            for i in calibrated:
                alarm |= held[i] >= thr[i]
            if alarm.mean() <= budget:
                lo, best, best_g = g, thr, g
            else:
                hi = g
        return best, {i: best_g for i in calibrated}
    # Candidates per index: threshold, packed alarm days, landslide days hit.
    cands: list[list[tuple[float, float, np.ndarray, np.ndarray]]] = []
    for i in calibrated:
        row = []
        seen: set[float] = set()
        for g in SHARES:
            cut = _for_share(sorted_desc[i], g * budget, _step_of(i), floors[i])
            if cut in seen:
                continue
            seen.add(cut)
            fires = held[i] >= cut
            row.append((g, cut, np.packbits(fires), _near(fires, hit_window_days)[slide_days]))
        cands.append(row)
    base_on = np.packbits(fixed_alarm)
    base_hit = _near(fixed_alarm, hit_window_days)[slide_days]
    limit = math.floor(budget * n + 1e-9)
    best_key: tuple[int, int] | None = None
    best_pick: tuple[int, ...] = ()
    head, last = cands[:-1], cands[-1]
    last_on = np.stack([c[2] for c in last])
    last_hit = np.stack([c[3] for c in last])
    for pick in itertools.product(*(range(len(r)) for r in head)):
        packed = base_on.copy()
        hit = base_hit.copy()
        for r, j in zip(head, pick):
            packed |= r[j][2]
            hit |= r[j][3]
        alarm_days = np.bitwise_count(packed[None, :] | last_on).sum(axis=1)
        hit_days = (hit[None, :] | last_hit).sum(axis=1)
        for j in range(len(last)):
            if alarm_days[j] > limit:
                continue
            key = (int(hit_days[j]), -int(alarm_days[j]))
            if best_key is None or key > best_key:
                best_key, best_pick = key, (*pick, j)
    if best_key is None:
        # Even the smallest shares overflow the budget (the fixed methods fill it): take them.
        best_pick = tuple(0 for _ in cands)
    thr = {i: cands[k][best_pick[k]][1] for k, i in enumerate(calibrated)}
    shares = {i: cands[k][best_pick[k]][0] * budget for k, i in enumerate(calibrated)}
    return thr, shares


# -- putting it together -----------------------------------------------------------------------


def _indices_of(methods: Iterable[str], ladders: dict[str, Ladder]) -> list[str]:
    out: list[str] = []
    for m in methods:
        if m == "sums":
            out += [k for k in ladders if k.startswith("sum_")]
        elif m == "intensity_duration":
            out.append("id")
        elif m == "antecedent":
            out.append("effective")
        else:
            raise ValueError(f"unknown method {m!r}; the methods are {', '.join(METHODS)}")
    return out


def _thresholds(
    chosen: dict[str, dict[int, float]], current: RainThresholds | None, span: str
) -> RainThresholds:
    """A ``RainThresholds`` with the calibrated indices' ladders (levels chosen so far) and the
    site's current values elsewhere."""
    base = RAIN_DEFAULTS if current is None else current
    windows = dict(base.windows)
    kw: dict[str, object] = {}
    for index, ladder in chosen.items():
        pairs = tuple(sorted(ladder.items()))
        if index.startswith("sum_"):
            w = next(w for w, _ in DEFAULT_WINDOWS if f"sum_{_label(w)}" == index)
            windows[w] = pairs
        elif index == "id":
            a = pairs[0][1]
            kw["id_a"] = a
            mult = [(lvl, 1.0 if k == 0 else _round_up(x / a, 0.01)) for k, (lvl, x) in enumerate(pairs)]
            for k in range(1, len(mult)):  # rounding must not merge two levels
                if mult[k][1] <= mult[k - 1][1]:
                    mult[k] = (mult[k][0], round(mult[k - 1][1] + 0.01, 10))
            kw["id_levels"] = tuple(mult)
        else:
            kw["effective_levels"] = pairs
    return replace(base, windows=tuple(sorted(windows.items())), source=f"calibrated from {span}", **kw)  # type: ignore[arg-type]


def _floor(ladder: dict[int, float], level: int, record_max: float, default: Ladder) -> float:
    """The least threshold of ``level`` for an index: above the levels below it; and when the
    level below never fires in the record (its threshold is above the record's largest
    value), at least that threshold times the default ladder's step, so a level the record
    cannot calibrate keeps the defaults' proportions instead of crowding the one below."""
    if not ladder:
        return 0.0
    below = max(ladder.values())
    if below <= record_max:
        return below * RISE
    d = dict(default)
    lower = max((lvl for lvl in d if lvl < level), default=None)
    ratio = d[level] / d[lower] if lower is not None and level in d else 1.5
    return below * max(ratio, RISE)


def _scaled(chosen: dict[str, dict[int, float]], level: int, base: dict[str, float], s: float, floors: dict[str, float]) -> dict[str, dict[int, float]]:
    out = {i: dict(lad) for i, lad in chosen.items()}
    for i, thr in base.items():
        out[i][level] = max(_round_up(thr * s, _step_of(i)), _round_up(floors[i], _step_of(i)))
    return out


def _smallest_scale(
    chosen: dict[str, dict[int, float]],
    level: int,
    budget: float,
    base: dict[str, float],
    floors: dict[str, float],
    levels_for: Callable[[dict[str, dict[int, float]]], np.ndarray],
) -> dict[str, dict[int, float]]:
    """``chosen`` with level's thresholds at ``base`` scaled by the smallest factor s >= 1 at
    which the real detector keeps the level within ``budget`` of days (bisection until the
    rounded thresholds of the two ends are one step apart)."""

    def ok(s: float) -> bool:
        return bool((levels_for(_scaled(chosen, level, base, s, floors)) >= level).mean() <= budget + 1e-12)

    if ok(1.0):
        return _scaled(chosen, level, base, 1.0, floors)
    lo, hi = 1.0, 2.0
    while not ok(hi):
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise CalibrationError(f"no thresholds keep level {level} within {budget:.1%} of days (the methods not calibrated exceed it)")
    for _ in range(60):
        a, b = _scaled(chosen, level, base, lo, floors), _scaled(chosen, level, base, hi, floors)
        if all(abs(a[i][level] - b[i][level]) <= _step_of(i) + 1e-9 for i in base):
            break
        mid = (lo + hi) / 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return _scaled(chosen, level, base, hi, floors)


def calibrate(
    t: Sequence[float],
    mm: Sequence[float],
    *,
    interval_s: float,
    landslide_days: Iterable[int] = (),
    day_offset_s: float = 0.0,
    current: RainThresholds | None = None,
    targets: Sequence[tuple[int, float]] = LEVEL_FRACTIONS,
    methods: Sequence[str] = METHODS,
    hit_window_days: int = 1,
    span: str | None = None,
) -> Proposal:
    """Propose the site's rain thresholds from its record (see the module docstring).

    ``t`` are the readings' times (end of the interval each covers, epoch s) and ``mm`` their
    rain; ``landslide_days`` day numbers (``day_number``; dates as days since 1970-01-01) of
    dated landslides, those outside the record ignored; ``current`` the site's thresholds now
    (None: the defaults), kept for methods not in ``methods``; ``targets`` the share of days
    allowed at or above each level, ascending levels and falling shares; ``span`` the label
    of the record ("2000-01-01…2007-12-31"; default: its first and last day).
    """
    if not interval_s > 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    if not (isinstance(hit_window_days, int) and 0 <= hit_window_days <= 7):
        raise ValueError(f"hit_window_days must be an integer in 0-7, got {hit_window_days!r}")
    tg = tuple((int(lvl), float(f)) for lvl, f in targets)
    if not tg or [lvl for lvl, _ in tg] != sorted({lvl for lvl, _ in tg}) or any(not 1 <= lvl <= 4 for lvl, _ in tg):
        raise ValueError(f"targets must be (level, share) with distinct ascending levels 1-4, got {list(tg)}")
    if any(not 0 < f < 1 for _, f in tg) or any(b[1] > a[1] for a, b in itertools.pairwise(tg)):
        raise ValueError(f"target shares must be in (0, 1) and not grow with the level, got {[f for _, f in tg]}")
    ta, va = _clean(t, mm)
    if len(ta) < 2:
        raise CalibrationError("the record needs at least two readings")
    if not (va > 0).any():
        raise CalibrationError("the record has no rain")
    first, last = int(day_number(ta[0], day_offset_s)), int(day_number(ta[-1], day_offset_s))
    if last - first + 1 < 30:
        raise CalibrationError(f"the record covers {last - first + 1} days; calibrating needs at least 30 (years are better)")
    given = sorted({int(d) for d in landslide_days})
    slides = np.array([d - first for d in given if first <= d <= last], dtype=np.int64)
    if given and not len(slides):
        raise CalibrationError("none of the landslide days falls within the record")
    if span is None:
        span = f"{_date(first)}…{_date(last)}"
    ladders = _current_ladders(interval_s, current)
    calibrated = _indices_of(methods, ladders)
    if not calibrated:
        raise ValueError("name at least one method to calibrate")
    values = index_days(ta, va, interval_s, current, day_offset_s, first, last)
    held = {i: _held(x) for i, x in values.items()}
    sorted_desc = {i: np.sort(y)[::-1] for i, y in held.items()}
    fixed = [i for i in ladders if i not in calibrated]
    defaults = _current_ladders(interval_s, None)

    def run(thr: RainThresholds | None) -> np.ndarray:
        return day_levels(ta, va, interval_s, thr, day_offset_s, first, last)

    before = run(current)
    chosen: dict[str, dict[int, float]] = {i: {} for i in calibrated}
    shares: dict[str, dict[int, float]] = {i: {} for i in calibrated}
    cache: dict[tuple[tuple[str, tuple[tuple[int, float], ...]], ...], np.ndarray] = {}

    def levels_for(ch: dict[str, dict[int, float]]) -> np.ndarray:
        key = tuple(sorted((i, tuple(sorted(lad.items()))) for i, lad in ch.items()))
        if key not in cache:
            cache[key] = run(_thresholds(ch, current, span))
        return cache[key]

    for level, budget in tg:
        fixed_alarm = np.zeros(last - first + 1, dtype=bool)
        for i in fixed:
            thr_fixed = min((x for lvl, x in ladders[i] if lvl >= level), default=math.inf)
            fixed_alarm |= held[i] >= thr_fixed
        floors = {i: _floor(chosen[i], level, float(held[i].max()), defaults[i]) for i in calibrated}
        base, got = _search(held, sorted_desc, calibrated, fixed_alarm, budget, floors, slides, hit_window_days)
        for i in calibrated:
            shares[i][level] = got[i]
        chosen = _smallest_scale(chosen, level, budget, base, floors, levels_for)
    # A last check with every level in place (a level's latch can hold the one below).
    for _ in range(200):
        levels = levels_for(chosen)
        over = [(lvl, f) for lvl, f in tg if (levels >= lvl).mean() > f + 1e-12]
        if not over:
            break
        lvl0 = over[0][0]
        for i in calibrated:
            for lvl in chosen[i]:
                if lvl >= lvl0:
                    chosen[i][lvl] = _round_up(chosen[i][lvl] * 1.01, _step_of(i))
    else:
        raise CalibrationError("could not meet the targets with every level in place")
    final = _thresholds(chosen, current, span)
    after = levels_for(chosen)
    return Proposal(
        thresholds=final,
        span=span,
        first_day=first,
        last_day=last,
        targets=tg,
        current=tuple(score(before, lvl, slides, hit_window_days) for lvl, _ in tg),
        proposed=tuple(score(after, lvl, slides, hit_window_days) for lvl, _ in tg),
        methods=tuple(methods),
        shares=shares,
    )


def _date(day: int) -> str:
    """The ISO date of a day number."""
    return (_EPOCH + timedelta(days=day)).isoformat()
