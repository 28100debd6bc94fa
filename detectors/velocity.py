"""Smoothed velocity of a displacement-like channel, and its level.

The velocity is the least-squares slope of the readings over a sliding event-time window:
with GNSS noise of a few mm a difference of two readings 10 minutes apart swings by hundreds
of mm/day, while a 6-hour regression slope of 36 readings is steady to a few mm/day.
Running sums make each update O(1).

A slope is judged only when it is significant: |v| must exceed ``z`` standard errors of the
regression slope. This is the noise floor that keeps a stable GNSS point (3 mm noise: a
6-hour slope wobbles by ~7 mm/day) from ever reaching yellow on noise alone, while a real
120 mm/day movement is dozens of standard errors away from zero. A level must also be
supported by ``persist`` consecutive evaluations before it is reached: noise peaks are brief,
real movement persists.

With a noise figure (``noise``: ``detectors/noise.py``; site fusion always gives one) the
standard error is never below what that figure allows, σ/sqrt(Σ(t − t̄)²): the window's own
residuals are an estimate of the noise, and a smoothed or interpolated series (whose residuals
are nearly zero) would otherwise make every wobble significant. Evidence then says which
figure it was (``noise``, ``noise_source``).

Noisy GNSS (issue 14 item 4). Real GNSS noise is not white: multipath and the troposphere
make it correlated over hours, so a 6-hour slope of 12 half-hourly epochs wanders far more
than its residuals admit, and a stable receiver went yellow about once a month ("velocity
31.7 mm/day (≥ yellow 3 mm/day over 6 h)"). With a noise figure the detector therefore keeps,
over the channel's recent weeks of readings, a robust scale of the residuals about the window's
line (a mean absolute residual with each residual clipped at 4 of the current scales, so an
outlier that passed the guards moves it little: the MAD's idea, in O(1)) and their lag-1
autocorrelation ρ; the slope's standard error is then never below
max(figure, robust scale) / sqrt(Σ(t − t̄)²) · sqrt((1 + ρ)/(1 − ρ)) — the AR(1) effective
sample size (``detectors/noise.py``), for any ρ > 0. And a level must persist across windows:
``persist_s`` of event time (site fusion: half the window) of consecutive evaluations
supporting it, not only ``persist`` of them — at half-hourly epochs three evaluations were one
and a half hours, less than the correlation of the noise. Evidence then carries
``noise_scale`` and ``noise_autocorrelation``.
"""

from __future__ import annotations

import functools
import math
from types import MappingProxyType
from typing import Any

from geowarn.core.levels import LEVELS
from geowarn.detectors.base import (
    StreamingDetector,
    check_int,
    check_slope,
    check_window,
    ring_restore,
    ring_values,
)
from geowarn.detectors.latch import LevelLatch
from geowarn.detectors.noise import MAX_RHO, NoiseFigure
from geowarn.detectors.slope import SlopeWindows
from geowarn.detectors.verdict import Verdict

_new = tuple.__new__  # a Verdict without the level check: levels here come from a LevelLatch
#: The verdict on a slope within z standard errors of zero, nothing latched: a stable
#: point's usual reading. One shared value rather than new evidence for every such reading.
_STILL = Verdict(0, "", {"significant": False}, False)
#: A fresh detector's verdict (immutable, with an empty evidence dict nobody writes to: shared).
_WARMING = Verdict(0, "warming up", warming_up=True)

DAY = 86400.0

#: The (t, speed) window of ``persist_s`` cuts off its dropped entries a block at a time,
#: when there are more than this many (values: two a reading) and more than it keeps.
_SLACK = 16


@functools.lru_cache(maxsize=1024)
def _ladder(
    levels: tuple[tuple[int, float], ...], unit: str, window_s: float, min_span: float, noise_memory: int, hysteresis: float, hold_s: float, typed: str
) -> tuple[MappingProxyType[int, tuple[float, str]], float, float, tuple[tuple[int, float], ...]]:
    """What every detector with these parameters derives alike, made once (issue 17): the
    constant part of each level's reason, ``min_span`` of the window in seconds, the residual
    statistics' rate, and the levels as one shared tuple (its latches find their tables by
    it, see ``LevelLatch``). Read-only. ``typed`` (the levels' repr) tells apart levels that
    compare equal but print or serialise differently (3 and 3.0, 0.0 and -0.0), so a detector
    always gets what its own parameters make."""
    LevelLatch(list(levels), hysteresis, hold_s)  # validates the levels, hysteresis and hold time
    said = {lvl: (thr, f" {unit}/day (≥ {LEVELS[lvl].colour} {thr:g} {unit}/day over {window_s / 3600:g} h, or held)") for lvl, thr in levels}
    return MappingProxyType(said), min_span * window_s, 1.0 / noise_memory, levels


@functools.lru_cache(maxsize=1024)
def _noise_parts(noise: NoiseFigure | None, typed: str) -> tuple[float, tuple[tuple[str, Any], ...]]:
    """(σ·DAY, the figure's evidence as (key, value) pairs) of a noise figure, shared;
    ``typed``: the repr of its sigma (see ``_ladder``)."""
    if noise is None:
        return 0.0, ()
    return noise.sigma * DAY, tuple(noise.evidence().items())


#: One never-fed detector of each parameter set ``VelocityDetector.alike`` was asked for: key
#: -> (its noise figure, the detector), at most ``_ALIKE_MAX`` of them.
_ALIKE: dict[tuple[type, str], tuple[NoiseFigure | None, VelocityDetector]] = {}
_ALIKE_MAX = 256


class VelocityDetector(StreamingDetector):
    """Level of |velocity| (unit/day) over a sliding window, with hysteresis and hold time.

    ``min_points`` readings spanning at least ``min_span`` of the window are needed before
    the detector judges; until then it is warming up and says level 0.

    ``windows``: the channel's shared ``SlopeWindows`` (site fusion passes one to every rate
    detector of a channel, and snapshots it once); None gives the detector windows of its
    own, which its snapshot then carries.

    Evidence: ``velocity_per_day`` and ``stderr_per_day``, and from blue up ``threshold``,
    ``window_s`` and ``points``; with a noise figure also ``noise`` and ``noise_source``
    (which figure, and where from). A level-0 reading whose slope is not significant gets only
    ``significant`` = False (one shared verdict: a stable point's usual reading).
    """

    __slots__ = (
        "_lam",
        "_last",
        "_last_t",
        "_latch",
        "_levels",
        "_ma",
        "_mh",
        "_min_span_s",
        "_noise_ev",
        "_own",
        "_rb",
        "_res",
        "_ri",
        "_rn",
        "_rz",
        "_sa",
        "_said",
        "_sh",
        "_sig",
        "_smooth",
        "_ts",
        "_windows",
        "hold_s",
        "hysteresis",
        "min_points",
        "min_span",
        "noise",
        "noise_memory",
        "persist",
        "persist_s",
        "thresholds_per_day",
        "unit",
        "window_s",
        "z",
    )

    def __init__(
        self,
        thresholds_per_day: list[tuple[int, float]],
        *,
        window_s: float = 6 * 3600.0,
        hysteresis: float = 0.1,
        hold_s: float = 0.0,
        min_points: int = 6,
        min_span: float = 0.5,
        z: float = 5.0,
        persist: int = 3,
        unit: str = "mm",
        windows: SlopeWindows | None = None,
        noise: NoiseFigure | None = None,
        persist_s: float = 0.0,
        noise_memory: int = 2000,
    ) -> None:
        check_window("window_s", window_s)
        if not 0.0 <= persist_s < window_s * 10:
            raise ValueError(f"persist_s must be in [0, 10 x window_s), got {persist_s}")
        check_int("noise_memory", noise_memory, 10)
        check_int("min_points", min_points, 3)
        check_slope(min_span, z)
        check_int("persist", persist, 1)
        levels = tuple((lvl, thr) for lvl, thr in thresholds_per_day)
        # Validates the levels, hysteresis and hold time (once per distinct set of parameters).
        self._said, self._min_span_s, self._lam, self._levels = _ladder(
            levels, unit, window_s, min_span, noise_memory, hysteresis, hold_s, repr(levels)
        )
        self.thresholds_per_day = thresholds_per_day
        self.window_s = window_s
        self.hysteresis = hysteresis
        self.hold_s = hold_s
        self.min_points = min_points
        self.min_span = min_span
        self.z = z
        self.persist = persist
        self.unit = unit
        self.noise = noise
        self.persist_s = float(persist_s)
        self.noise_memory = noise_memory
        self._sig, self._noise_ev = _noise_parts(noise, "" if noise is None else repr(noise.sigma))
        self._own = windows is None
        self._windows = SlopeWindows() if windows is None else windows
        self._ts = self._windows.ts  # the same list for the windows' lifetime
        self._smooth = self._windows.view(window_s)
        self._reset()

    @classmethod
    def alike(
        cls,
        thresholds_per_day: list[tuple[int, float]],
        *,
        window_s: float,
        hysteresis: float,
        hold_s: float,
        unit: str,
        persist: int,
        windows: SlopeWindows,
        noise: NoiseFigure | None,
        persist_s: float,
    ) -> VelocityDetector:
        """``cls(thresholds_per_day, window_s=..., ..., windows=windows)`` without checking the
        parameters again when a detector with the very same ones was built before: site fusion
        builds one for every channel of a kind and policy, and again for every parked channel
        it wakes (a GNSS component's ~6 µs, most of it checks and derived values it already
        has). The first of each parameter set is built in full and kept, never fed; the others
        take its parameters and derived values (immutable, shared already) and a fresh state.
        The key is the parameters' repr, typed as ``_ladder``'s (3 and 3.0, 0.0 and -0.0 apart),
        and the noise figure by identity (``noise_for`` hands out one per kind and figure)."""
        key = (cls, repr((thresholds_per_day, window_s, hysteresis, hold_s, unit, persist, persist_s)))
        hit = _ALIKE.get(key)
        if hit is None or hit[0] is not noise:
            proto = cls(
                list(thresholds_per_day), window_s=window_s, hysteresis=hysteresis, hold_s=hold_s, unit=unit, persist=persist,
                windows=SlopeWindows(), noise=noise, persist_s=persist_s,
            )  # fmt: skip
            if len(_ALIKE) >= _ALIKE_MAX:
                _ALIKE.clear()
            _ALIKE[key] = hit = (noise, proto)
        return hit[1]._alike(thresholds_per_day, windows)

    def _alike(self, thresholds_per_day: list[tuple[int, float]], windows: SlopeWindows) -> VelocityDetector:
        """A fresh detector with this one's parameters (``thresholds_per_day``: equal to its
        own, the caller's object kept as ``__init__`` keeps it) over the shared ``windows``."""
        d = object.__new__(type(self))
        d._said, d._min_span_s, d._lam, d._levels = self._said, self._min_span_s, self._lam, self._levels
        d.thresholds_per_day = thresholds_per_day
        d.window_s = self.window_s
        d.hysteresis = self.hysteresis
        d.hold_s = self.hold_s
        d.min_points = self.min_points
        d.min_span = self.min_span
        d.z = self.z
        d.persist = self.persist
        d.unit = self.unit
        d.noise = self.noise
        d.persist_s = self.persist_s
        d.noise_memory = self.noise_memory
        d._sig, d._noise_ev = self._sig, self._noise_ev
        d._own = False
        d._windows = windows
        d._ts = windows.ts
        d._smooth = windows.view(self.window_s)
        d._reset()
        return d

    def _reset(self) -> None:
        if self._own:
            self._windows.clear()
        # Flat lists, not deques: a deque costs ~1.3 KB however few values it holds (a 64-slot
        # block, and another as it cycles), a (t, speed) tuple 56 bytes; the lists hold the
        # reading's own time object and, on a still slope, the one shared 0.0 (issue 17).
        # The last ``persist`` judged speeds (0.0 for an insignificant one): a ring of
        # ``persist`` slots, the next one to write (``_ri``), how many are filled (``_rn``)
        # and how many of the newest are not 0 (``_rz``: while a 0 is among them, their
        # minimum is 0 without a look; no speed is negative).
        self._rb = [0.0] * self.persist
        self._ri = self._rn = self._rz = 0
        # (t, speed) over the last persist_s, flat [t, s, t, s, ...] from index ``_sh``; and
        # ``_ma`` (from ``_mh``): the entries that may yet be its minimum, speeds increasing —
        # the first is the minimum, found in O(1) instead of a scan of the window per reading.
        self._sa: list[float] = []
        self._ma: list[float] = []
        self._sh = self._mh = 0
        # Residual statistics (with a noise figure): count, mean |r|, mean r², mean r·r_prev, r_prev.
        self._res = [0.0, 0.0, 0.0, 0.0, 0.0]
        self._latch = LevelLatch(self._levels, self.hysteresis, self.hold_s)
        self._last_t: float | None = None
        self._last: Verdict = _WARMING

    def fit(self) -> tuple[float, float] | None:
        """(velocity, its standard error), both per day; None until three points span time."""
        f = self._smooth.fit()
        return None if f is None else (f[0], f[1])

    def velocity_per_day(self) -> float | None:
        f = self.fit()
        return None if f is None else f[0]

    def _noise_se(self, t: float, value: float, v: float, tbar: float, smooth: Any) -> float:
        """σ·DAY the standard error is floored with: max(figure, robust residual scale) times
        the AR(1) inflation for the residuals' lag-1 autocorrelation (see the module docstring)."""
        res = self._res
        # The newest reading's residual about the window's line (mean value at the mean time).
        r = value - (smooth.v0 + smooth.sv / smooth.n) - v / DAY * (t - tbar)
        k, mabs, m2, m1, prev = res
        scale = mabs * 1.2533 if k >= 20 else 0.0
        if scale > 0 and abs(r) > 4.0 * scale:
            r = 4.0 * scale if r > 0 else -4.0 * scale
        lam = 1.0 / (k + 1) if k < self.noise_memory else self._lam
        mabs += lam * (abs(r) - mabs)
        m2 += lam * (r * r - m2)
        if k > 0:
            m1 += lam * (r * prev - m1)
        res[0], res[1], res[2], res[3], res[4] = k + 1, mabs, m2, m1, r
        sig = self._sig
        if k < 50 or not m2 > 0:
            return sig  # too few residuals to say more than the figure
        robust = mabs * 1.2533 * DAY
        rho = m1 / m2
        rho = 0.0 if rho < 0 else (MAX_RHO if rho > MAX_RHO else rho)  # noqa: FURB136 (per reading: cheaper than min())
        return (robust if robust > sig else sig) * math.sqrt((1.0 + rho) / (1.0 - rho))  # noqa: FURB136 (per reading: cheaper than max())

    def noise_state(self) -> tuple[float, float] | None:
        """(robust residual scale, lag-1 autocorrelation of the residuals), or None (no figure
        or too few residuals yet)."""
        k, mabs, m2, m1, _ = self._res
        if not self._sig or k < 50 or not m2 > 0:
            return None
        return mabs * 1.2533, max(0.0, min(MAX_RHO, m1 / m2))

    def update(self, t: float, value: float) -> Verdict:
        last_t = self._last_t
        if last_t is not None and not t > last_t:
            return self._last  # late or repeated: judged in arrival order, ignored
        if not (t - t == 0.0 and value - value == 0.0):
            return self._last  # NaN or infinite (x − x is 0 only for a finite x): not a reading
        self._last_t = t
        ts = self._ts
        if not ts or t > ts[-1]:  # else another detector of the channel has pushed this reading
            self._windows.push(t, value)
        smooth = self._smooth
        if smooth.restarted:
            # A gap longer than the window: the old slope says nothing now.
            self._ri = self._rn = self._rz = 0
            del self._sa[:], self._ma[:]
            self._sh = self._mh = 0
        n = smooth.n
        f = smooth.fit() if n >= self.min_points and t - smooth.first >= self._min_span_s else None
        if f is None:
            self._last = _new(Verdict, (0, "warming up", {"points": n}, True))
            return self._last
        v, se, tbar = f
        if self._sig:
            sxx = smooth.stt - smooth.st * smooth.st / n
            floor_se = self._noise_se(t, value, v, tbar, smooth) / math.sqrt(sxx)
            if se < floor_se:  # noqa: PLR1730 (per reading: cheaper than max())
                se = floor_se
        # An insignificant slope counts as no movement (it may still let a level come down).
        speed = v if v >= 0.0 else -v
        significant = speed > self.z * se
        s_now = speed if significant else 0.0  # 0.0 or > 0: never NaN, never -0.0
        # x = the minimum of the last ``persist`` speeds (see _reset).
        rb = self._rb
        i = self._ri
        rb[i] = s_now
        p = self.persist
        i += 1
        self._ri = 0 if i == p else i
        rn = self._rn
        if rn < p:
            self._rn = rn = rn + 1
        if significant:
            rz = self._rz
            if rz < p:
                self._rz = rz = rz + 1
            x = 0.0 if rz < rn else min(rb) if rn == p else min(rb[:rn])  # (no NaN: any order)
        else:
            self._rz = 0
            x = 0.0
        latch = self._latch
        if self.persist_s:
            # Across windows: a level is *reached* only with persist_s of evaluations in a row
            # supporting it. Keeping it is the latch's business (hysteresis, hold) on the current
            # evidence: persistence applied to staying too let a few insignificant evaluations
            # hold x at 0 for persist_s after the slope was significant again, and a yellow on
            # an accelerating slope was lifted (tests/test_chain.py).
            sa, ma = self._sa, self._ma
            sa.append(t)
            sa.append(s_now)
            mh = self._mh
            k = len(ma)
            if k > mh and ma[-1] >= s_now:
                # Drop the entries the new one outdates (the last of them, in place).
                k -= 2
                while k > mh and ma[k - 1] >= s_now:
                    k -= 2
                ma[k] = t
                ma[k + 1] = s_now
                if len(ma) > k + 2:
                    del ma[k + 2 :]
            else:
                ma.append(t)
                ma.append(s_now)
            horizon = t - self.persist_s
            h = self._sh
            end = len(sa) - 2
            if h < end and sa[h + 2] <= horizon:
                while True:
                    if ma[mh] == sa[h]:  # times are strictly increasing: they name entries
                        mh += 2
                    h += 2
                    if not (h < end and sa[h + 2] <= horizon):
                        break
                if h > _SLACK and h > end - h:
                    del sa[:h]  # one memmove for many drops
                    h = 0
                if mh > _SLACK and 2 * mh > len(ma):
                    del ma[:mh]
                    mh = 0
                self._sh, self._mh = h, mh
            held = 0.0
            if sa[h] <= horizon:
                low = ma[mh + 1]
                held = x if x < low else low  # noqa: FURB136 (per reading: cheaper than min())
            hi = latch._bands.get(latch.level, (0.0, math.inf))[1]
            x = held if held >= hi else min(x, math.nextafter(hi, -math.inf))
        # The latch's own quiet path, inline: nothing latched and x below every threshold.
        level = 0 if latch.level == 0 and x < latch._lowest else latch.update(t, x)
        if level == 0:
            if not significant:
                self._last = _STILL  # the slope is within its noise: nothing to tell
                return _STILL
            ev = {"velocity_per_day": v, "stderr_per_day": se}
            for key, val in self._noise_ev:
                ev[key] = val
            self._last = _new(Verdict, (0, "", ev, False))
        else:
            thr, tail = self._said[level]
            ev = {"velocity_per_day": v, "stderr_per_day": se, "threshold": thr, "window_s": self.window_s, "points": n}
            for key, val in self._noise_ev:
                ev[key] = val
            self._last = _new(Verdict, (level, f"velocity {v:.1f}{tail}", ev, False))
            ns = self.noise_state()
            if ns is not None:
                ev.update(noise_scale=ns[0], noise_autocorrelation=ns[1])
        return self._last

    def _recent(self) -> list[float]:
        """The last ``persist`` judged speeds, oldest first."""
        return ring_values(self._rb, self._rn, self._ri)

    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {"recent": self._recent(), "latch": self._latch.snapshot(), "last_t": self._last_t, "last": self._last.to_dict()}
        if self.persist_s:
            sa = self._sa
            state["since"] = [sa[k : k + 2] for k in range(self._sh, len(sa), 2)]
        if self._sig:
            state["residuals"] = list(self._res)
        if self._own:
            state["smooth"] = self._windows.snapshot()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        # As ``_reset()`` and then the saved parts, but without building a latch and a
        # verdict to throw away (a woken parked channel is restored into a fresh detector):
        # every piece of state ``_reset`` makes is set below, the latch restored whole.
        if self._own:
            self._windows.clear()
            self._windows.restore(state["smooth"])
        rb: list[float] = [0.0] * self.persist
        sa: list[float] = []
        ma: list[float] = []
        self._rb, self._sa, self._ma = rb, sa, ma
        self._ri = self._rn = self._rz = 0
        self._sh = self._mh = 0
        self._res = [0.0, 0.0, 0.0, 0.0, 0.0]
        self._last_t = None
        self._last = _WARMING
        self._rn, self._ri, self._rz = ring_restore(rb, state["recent"])
        for a, b in state.get("since", []):
            t, s = float(a), float(b)
            sa.append(t)
            sa.append(s)
            while ma and ma[-1] >= s:
                del ma[-2:]
            ma.append(t)
            ma.append(s)
        if "residuals" in state:
            self._res[:] = [float(x) for x in state["residuals"]]
        self._latch.restore(state["latch"])
        self._last_t = state["last_t"]
        self._last = Verdict.from_dict(state["last"])
