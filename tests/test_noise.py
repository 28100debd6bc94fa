"""The noise a channel is judged with (detectors/noise.py) and a steady rate that means
something (detectors/tangent.py ``ReferenceRate``), issue 14 items 1 and 2.

Golden values are worked out here with numpy/scipy from the series the detectors see, never
read back from the detectors. The synthetic stress cases stand for published daily cumulative
displacement (smoothed or interpolated), the kind of record that kept a real Three Gorges
landslide that did not fail at orange/red for 157 days: a creep of 120–700 mm over four years
with one 5–9 mm/day step for a week, most days ≤ 1.2 mm/day, published as a cubic spline
through surveys or as a moving average of noisy daily readings.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.interpolate import CubicSpline
from scipy.optimize import brentq

from geowarn.config.errors import ConfigError
from geowarn.config.registry import parse_registry
from geowarn.detectors.fusion import detectors_for
from geowarn.detectors.noise import FLOORS, MAX_RHO, Smoothness, inflation, noise_for
from geowarn.detectors.tangent import DAY, ReferenceRate, TangentAngleDetector
from geowarn.detectors.velocity import VelocityDetector
from geowarn.ingest.feeds import FeedRow, registry_from_rows
from geowarn.service.replay import replay_rows

T0 = 1.3e9


# -- synthetic published daily series --------------------------------------------------------


def creep_truth(total_mm: float, step_per_day: float, days: int = 4 * 365, step_at: int = 600) -> np.ndarray:
    """Daily true displacement: a steady creep of ``total_mm`` over the record, a seasonal
    swing of a quarter of a year's creep, and one week at +``step_per_day``."""
    d = np.arange(days, dtype=float)
    return total_mm / days * d + 0.25 * total_mm / 4 * (1 - np.cos(2 * np.pi * d / 365.0)) / 2 + np.clip(d - step_at, 0, 7) * step_per_day


def spline_published(truth: np.ndarray, rng: np.random.Generator, every: int = 3, sigma: float = 2.0) -> np.ndarray:
    """A cubic spline through noisy surveys every ``every`` days, sampled daily."""
    d = np.arange(len(truth), dtype=float)
    k = np.arange(0, len(truth), every)
    return CubicSpline(d[k], truth[k] + rng.normal(0, sigma, len(k)))(d)


def moving_average_published(truth: np.ndarray, rng: np.random.Generator, k: int = 5, sigma: float = 2.0) -> np.ndarray:
    """A centred k-day moving average of noisy daily readings."""
    h = k // 2
    ext = np.concatenate([truth[0] - (truth[1] - truth[0]) * np.arange(h, 0, -1), truth, truth[-1] + (truth[-1] - truth[-2]) * np.arange(1, h + 1)])
    return np.convolve(ext + rng.normal(0, sigma, len(ext)), np.ones(k) / k, mode="valid")


#: (total creep mm, step mm/day, how it was published): eight points of one site.
POINTS = [(120, 5, "spline"), (400, 7, "spline"), (700, 9, "spline"), (300, 6, "ma"), (700, 9, "ma"), (200, 5, "ma"), (500, 8, "spline"), (150, 6, "ma")]


def published_site() -> list[FeedRow]:
    rows = []
    for i, (total, step, how) in enumerate(POINTS):
        rng = np.random.default_rng(i)
        truth = creep_truth(total, step)
        x = spline_published(truth, rng) if how == "spline" else moving_average_published(truth, rng)
        rows += [FeedRow("TG", f"P{i}", "displacement", T0 + d * DAY, float(round(v, 2))) for d, v in enumerate(x)]
    return rows


def vr4(x: np.ndarray) -> float:
    """Variance ratio of increments at lag 4 and lag 1, straight from the definition."""
    return float(np.var(x[4:] - x[:-4], ddof=1) / (4 * np.var(np.diff(x), ddof=1)))


def rho_of_vr(vr: float) -> float:
    """Invert VR = (1 + ρ)(1 + ρ²)/4 (AR(1) errors) on [0, 1]."""
    if vr <= 0.25:
        return 0.0
    if vr >= 1.0:
        return 1.0
    return brentq(lambda r: (1 + r) * (1 + r * r) / 4 - vr, 0.0, 1.0)


# -- floors and figures ----------------------------------------------------------------------


def test_an_estimate_never_goes_below_the_kinds_floor_and_the_registry_overrides_it():
    est = noise_for("displacement", "mm", estimated=0.0004)
    assert (est.sigma, est.source) == (0.3, "floor for displacement (mm)")
    assert noise_for("gnss_e", "mm", estimated=4.2).sigma == 4.2
    assert noise_for("gnss_e", "mm", estimated=4.2).source == "estimated"
    reg = noise_for("crack", "mm", stated=0.01)
    assert (reg.sigma, reg.source, reg.floor) == (0.01, "registry", 0.1)
    assert noise_for("gnss_u", "mm").sigma == 2 * noise_for("gnss_n", "mm").sigma  # vertical twice the horizontal


def test_the_tilt_floor_follows_the_channels_unit():
    deg = noise_for("tilt", "deg").sigma
    assert noise_for("tilt", "mrad").sigma == pytest.approx(math.radians(deg) * 1e3, rel=1e-3)
    assert noise_for("tilt", "urad").sigma == pytest.approx(math.radians(deg) * 1e6, rel=1e-3)


def test_every_floor_says_where_it_comes_from():
    assert all(sigma > 0 and len(src) > 20 for sigma, src in FLOORS.values())


def test_a_smoothed_series_takes_the_floor_even_under_a_stated_figure():
    fig = noise_for("displacement", "mm", stated=0.0005).for_smoothed()
    assert fig.sigma == 0.3 and fig.source.startswith("floor for displacement (mm)") and "registry" in fig.source


# -- recognising a smoothed series ------------------------------------------------------------


@pytest.mark.parametrize("how", ["white", "spline", "ma"])
def test_smoothness_variance_ratio_and_rho_match_the_definition(how):
    rng = np.random.default_rng(7)
    truth = creep_truth(400, 0.0)[:120]
    x = {"white": truth + rng.normal(0, 2.0, len(truth)), "spline": spline_published(truth, rng), "ma": moving_average_published(truth, rng)}[how]
    s = Smoothness()
    for v in x:
        s.add(float(v))
    assert s.variance_ratio() == pytest.approx(vr4(x), rel=1e-9)
    assert s.rho() == pytest.approx(rho_of_vr(vr4(x)), abs=1e-6)
    assert s.smoothed() is (how != "white")


def test_inflation_is_the_ar1_effective_sample_size():
    n = 60
    for rho in (0.5, 0.8, 0.9):
        n_eff = n * (1 - rho) / (1 + rho)
        assert inflation(rho) == pytest.approx(math.sqrt(n / n_eff))
    assert inflation(0.999) == pytest.approx(math.sqrt((1 + MAX_RHO) / (1 - MAX_RHO)))
    assert inflation(0.3) == 1.0 and inflation(None) == 1.0


# -- a steady rate that means something -------------------------------------------------------


def fed(ref: ReferenceRate, ts, xs, floor):
    out = None
    for t, x in zip(ts, xs):
        out = ref.learn(float(t), float(x), floor)
    return out


def test_a_smoothed_reference_is_widened_and_never_below_what_the_floor_resolves():
    # 200 days of a spline through noisy surveys of a 0.1 mm/day creep: the fit alone says
    # ~0.1 ± 0.001 mm/day; the floor (0.3 mm) and the widening say it cannot be told from 0.
    rng = np.random.default_rng(3)
    x = spline_published(creep_truth(146, 0.0)[:200], rng)
    t = T0 + np.arange(len(x)) * DAY
    noise = noise_for("displacement", "mm", estimated=0.0005)
    floor = 0.5  # the steady-rate floor the detector would pass (unit/day, for the figure)
    ref = ReferenceRate(60 * DAY, 12, noise=noise)
    k = 61  # the reading that completes 60 days (and 60 increments)
    steady = fed(ref, t[:k], x[:k], floor)
    rho = rho_of_vr(vr4(x[:k]))
    widen = math.sqrt((1 + min(rho, MAX_RHO)) / (1 - min(rho, MAX_RHO)))
    tt = (t[:k] - t[0]) / DAY
    coef = np.polyfit(tt, x[:k], 1)
    rate = coef[0]
    resid = x[:k] - np.polyval(coef, tt)
    # The residuals' scatter (the season's curvature) or the floor, whichever is larger.
    sigma = max(math.sqrt(float(resid @ resid) / (k - 2)), 0.3)
    se = sigma / math.sqrt(float(((tt - tt.mean()) ** 2).sum())) * widen
    assert rho > 0.9 and ref.widen == pytest.approx(widen)
    assert ref.rate == pytest.approx(rate, rel=1e-6) and ref.stderr == pytest.approx(se, rel=1e-6)
    # Not 3 standard errors from 0, and resolved below the (widened) floor: the floor.
    assert abs(rate) < 3 * se and abs(rate) + 3 * se <= floor * widen
    assert steady == pytest.approx(floor * widen) and ref.basis == "floor"
    assert ref.evidence()["noise_source"].startswith("floor for displacement (mm)")


def test_a_reference_that_is_not_yet_meaningful_gives_no_level_and_says_so():
    # Raw readings with 3 mm noise of a 0.3 mm/day creep, against a steady-rate floor of
    # 0.5 mm/day: after 3 days the rate is 0.3 ± ~0.17 mm/day, neither 3 standard errors
    # from 0 nor resolved below the floor; the detector keeps learning and says why.
    rng = np.random.default_rng(11)
    n = 6 * 144
    t = T0 + np.arange(n) * 600.0
    x = (t - T0) / DAY * 0.3 + rng.normal(0, 3.0, n)
    det = TangentAngleDetector(window_s=12 * 3600.0, reference_s=3 * DAY, min_v_steady=0.5, noise=noise_for("gnss_e", "mm"))
    verdicts = [det.update(float(a), float(b)) for a, b in zip(t, x)]
    k = 3 * 144  # the first reading 3 days after the first
    tt = (t[: k + 1] - t[0]) / DAY
    coef = np.polyfit(tt, x[: k + 1], 1)
    resid = x[: k + 1] - np.polyval(coef, tt)
    se = max(math.sqrt(float(resid @ resid) / (k - 1)), 3.0) / math.sqrt(float(((tt - tt.mean()) ** 2).sum()))
    assert abs(coef[0]) < 3 * se and abs(coef[0]) + 3 * se > 0.5  # ambiguous: the case under test
    v = verdicts[k]
    assert v.level == 0 and v.warming_up and "not yet meaningful" in v.reason and v.evidence["noise_source"] == "floor for gnss_e (mm)"
    assert all(v.level == 0 for v in verdicts)


def test_a_reference_still_ambiguous_at_its_limit_freezes_at_its_upper_bound():
    n = 4 * 144 + 1
    t = T0 + np.arange(n) * 600.0
    x = (t - T0) / DAY * 0.3 + 6.0 * (-1.0) ** np.arange(n)  # a vertical GNSS component, ±6 mm
    ref = ReferenceRate(3 * DAY, 12, noise=noise_for("gnss_u", "mm"), max_reference_s=4 * DAY)
    steady = fed(ref, t, x, 0.5)
    tt = (t - t[0]) / DAY
    coef = np.polyfit(tt, x, 1)
    resid = x - np.polyval(coef, tt)
    se = max(math.sqrt(float(resid @ resid) / (n - 2)), 6.0) / math.sqrt(float(((tt - tt.mean()) ** 2).sum()))
    assert abs(coef[0]) < 3 * se and abs(coef[0]) + 3 * se > 0.5  # still ambiguous at 4 days
    assert ref.basis == "upper bound"
    assert steady == pytest.approx(max(abs(coef[0]) + 3 * se, 0.5), rel=1e-6)


def test_the_window_standard_error_is_never_below_the_noise_figure():
    # A precise-looking series (0.001 mm scatter) of a 0.25 mm/day creep, read daily: the
    # velocity's standard error is the 0.3 mm floor's, σ/sqrt(Σ(t − t̄)²), not the residuals'.
    rng = np.random.default_rng(2)
    t = T0 + np.arange(40) * DAY
    x = 0.25 * np.arange(40) + rng.normal(0, 0.001, 40)
    det = VelocityDetector([(1, 0.2)], window_s=6 * DAY, persist=1, min_points=6, noise=noise_for("displacement", "mm"))
    levels = [det.update(float(a), float(b)).level for a, b in zip(t, x)]
    tt = np.arange(7, dtype=float)  # a 6-day window holds 7 daily readings
    se = 0.3 / math.sqrt(float(((tt - tt.mean()) ** 2).sum()))
    assert 0.25 < 5 * se  # so 0.25 mm/day is within 5 standard errors of 0: not significant
    assert max(levels) == 0
    plain = VelocityDetector([(1, 0.2)], window_s=6 * DAY, persist=1, min_points=6)
    assert max(plain.update(float(a), float(b)).level for a, b in zip(t, x)) == 1  # the residuals alone call it blue


# -- registry --------------------------------------------------------------------------------


def one_channel(**ch):
    return {"sites": [{"site": "S", "name": "S", "admin": "420527", "lat": 0, "lon": 0, "devices": [{"device": "D", "channels": [{"channel": "c", **ch}]}]}]}


@pytest.mark.parametrize(
    "ch, key, words",
    [
        ({"kind": "displacement", "noise": 0}, "noise", "greater than 0"),
        ({"kind": "displacement", "noise": float("inf")}, "noise", "finite"),
        ({"kind": "rain", "noise": 1.0}, "noise", "not rain"),
        ({"kind": "displacement", "noise_source": "estimated"}, "noise_source", "needs the estimated figure"),
        ({"kind": "displacement", "noise": 0.1, "noise_source": "guess"}, "noise_source", "'registry' or 'estimated'"),
    ],
)
def test_a_bad_noise_names_file_key_and_reason(ch, key, words):
    with pytest.raises(ConfigError) as exc:
        parse_registry(one_channel(channel="c", **ch), "sites.toml")
    [p] = exc.value.problems
    assert (p.file, p.key) == ("sites.toml", f"sites[0].devices[0].channels[0].{key}") and words in p.reason


def tangent_noise(doc):
    reg = parse_registry(doc, "sites.toml")
    dets = dict(detectors_for(reg.channel("S", "D", "c"), reg))
    return dets["tangent"].noise, dets["velocity"].noise, dets["forecast"].noise


def test_fusion_judges_with_the_registrys_figure_or_an_estimate_never_below_the_floor():
    stated = tangent_noise(one_channel(kind="displacement", noise=0.0005))
    assert {(n.sigma, n.source) for n in stated} == {(0.0005, "registry")}
    estimated = tangent_noise(one_channel(kind="displacement", noise=0.0005, noise_source="estimated"))
    assert {(n.sigma, n.source) for n in estimated} == {(0.3, "floor for displacement (mm)")}
    tilt = tangent_noise(one_channel(kind="tilt", unit="urad"))
    assert {(n.sigma, n.source) for n in tilt} == {(174.5, "floor for tilt (urad)")}


# -- replay of the synthetic published series --------------------------------------------------


def test_published_daily_series_without_a_registry_give_no_orange_or_red(tmp_path: Path):
    rows = published_site()
    reg = registry_from_rows(rows, "published")
    s = replay_rows(rows, reg, tmp_path / "out", plots=False)
    assert s.highest.get("TG", 0) <= 2, [e["reason"] for e in s.events if e["level"] >= 3]


def test_a_published_series_creeping_at_its_steady_rate_stays_below_yellow():
    # A spline through noisy surveys of a steady 0.3 mm/day creep (no step, no season),
    # judged by the channel's own detectors: nothing above blue, and nothing at all in the
    # first 11 days.
    rng = np.random.default_rng(9)
    x = spline_published(0.3 * np.arange(400, dtype=float), rng)
    rows = [FeedRow("S", "D", "displacement", T0 + d * DAY, float(round(v, 2))) for d, v in enumerate(x)]
    reg = registry_from_rows(rows, "steady")
    dets = [d for n, d in detectors_for(reg.channel("S", "D", "displacement"), reg)]
    levels = [max(d.update(r.t, r.value).level for d in dets) for r in rows]
    assert max(levels[:11]) == 0 and max(levels) <= 1


def test_a_detector_restored_mid_reference_or_after_it_continues_exactly():
    # The noise rules keep state (the smoothness sums, the figure, the widening): a snapshot
    # taken while the reference is pending, and one after it froze, continue bit for bit.
    rng = np.random.default_rng(4)
    x = spline_published(creep_truth(400, 7.0, days=700, step_at=300), rng)
    rows = [FeedRow("S", "D", "displacement", T0 + d * DAY, float(round(v, 2))) for d, v in enumerate(x)]
    reg = registry_from_rows(rows, "restore")
    info = reg.channel("S", "D", "displacement")
    whole = dict(detectors_for(info, reg))
    expect = [[d.update(r.t, r.value) for d in whole.values()] for r in rows]
    for cut in (40, 200):  # pending (60 increments not yet seen), frozen
        first = dict(detectors_for(info, reg))
        got = [[d.update(r.t, r.value) for d in first.values()] for r in rows[:cut]]
        second = dict(detectors_for(info, reg))
        for name, d in second.items():
            d.restore(first[name].snapshot())
        got += [[d.update(r.t, r.value) for d in second.values()] for r in rows[cut:]]
        assert got == expect
    assert "not yet meaningful" in expect[40][2].reason  # the tangent, pending at day 40
