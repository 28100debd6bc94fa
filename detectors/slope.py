"""The sliding least-squares slope every rate detector shares (velocity, tangent angle,
inverse velocity, rise rate): one O(1) implementation with precise anchored sums, instead
of one per detector.

``SlopeWindows`` keeps a channel's readings once, for the longest of several windows, with
one set of running sums per window (a ``SlopeView``): the velocity ladder and the failure
forecast smooth over the same window and read the same view; the tangent angle's longer
window is a second view over the same readings. A detector given a ``SlopeWindows`` pushes
each reading into it; the second detector to push the same reading finds it there and the
push is a no-op, so the readings are stored, and the sums updated, once per channel.
``SlidingSlope`` is the one-window case with the old interface.

The readings are kept unboxed, 8 bytes a value in two ``array('d')`` (a list holds a pointer
and a 24-byte float object per value), and cut from the left in small blocks, so a channel
holds its longest window and about an eighth more (issue 17: live memory per channel).
"""

from __future__ import annotations

import math
from array import array
from math import sqrt
from typing import Any

from geowarn.detectors.compact import pack, pack_times, unpack, unpack_into
from geowarn.detectors.verdict import Verdict

DAY = 86400.0
HOUR = 3600.0

#: ``SlopeView._fit`` until the view's fit is worked out for the newest reading (by identity).
_STALE: tuple[float, float, float] = (math.nan, math.nan, math.nan)
_NO_READINGS = array("d")  # copied (``[:]``) for a new window: quicker than ``array("d")``
#: Readings no window needs are cut off once there are this many, and at least an eighth of
#: those kept: a memmove of the live window every few readings, amortised O(1).
_CUT = 16


def white_noise_velocity_se(noise_mm: float, window_s: float, interval_s: float) -> float:
    """Standard error (mm/day) of a least-squares slope over ``window_s`` of readings every
    ``interval_s`` with white noise ``noise_mm``: σ / sqrt(Σ(t − t̄)²), Σ(t − t̄)² = n(n²−1)Δt²/12.

    >>> round(white_noise_velocity_se(3.0, 12 * HOUR, 600.0), 2)   # 72 readings
    2.45
    """
    n = max(3, round(window_s / interval_s))
    sxx = n * (n * n - 1) / 12.0 * interval_s * interval_s
    return noise_mm / math.sqrt(sxx) * DAY


class SlopeView:
    """Running least-squares sums of the readings of the last ``window_s`` of a ``SlopeWindows``.

    Readings older than ``window_s`` before the newest leave the window; a gap longer than the
    window empties it (``restarted`` is then True until the next reading). The sums are of
    t − t0 and value − v0 with anchors re-set every few window lengths, so they stay small and
    precise.
    """

    __slots__ = ("_fit", "_owner", "first", "lo", "n", "restarted", "st", "stt", "stv", "sv", "svv", "t0", "v0", "window_s")

    def __init__(self, owner: SlopeWindows, window_s: float) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self._owner = owner
        self.window_s = float(window_s)
        self._clear(owner.base + len(owner.ts))

    def _clear(self, lo: int) -> None:
        self.lo = lo  # absolute index (see SlopeWindows.base) of the oldest reading in the window
        self.t0 = self.v0 = 0.0
        self.n = 0
        self.st = self.sv = self.stt = self.stv = self.svv = 0.0
        self.restarted = False
        self.first = 0.0  # t of the oldest reading in the window (when n > 0)
        self._fit: tuple[float, float, float] | None = _STALE

    def _reanchor(self) -> None:
        o = self._owner
        k = self.lo - o.base
        ts, vs = o.ts, o.vs
        t0, v0 = ts[k], vs[k]
        st = sv = stt = stv = svv = 0.0
        for a, b in zip(ts[k:-1], vs[k:-1]):  # the newest reading is not in the sums yet
            x = a - t0
            y = b - v0
            st += x
            sv += y
            stt += x * x
            stv += x * y
            svv += y * y
        self.t0, self.v0 = t0, v0
        self.st, self.sv, self.stt, self.stv, self.svv = st, sv, stt, stv, svv

    def _restart(self, t: float, value: float, prev: float | None) -> None:
        """The owner appended (t, value) after a gap longer than the window (or first)."""
        o = self._owner
        self._clear(o.base + len(o.ts) - 1)
        self.restarted = prev is not None
        self.t0, self.v0 = t, value
        self.first = t
        self.n = 1  # one reading: x = y = 0, the sums stay 0

    def span(self) -> float:
        return self._owner.ts[-1] - self.first if self.n else 0.0

    def fit(self) -> tuple[float, float, float] | None:
        """(slope per day, its standard error per day, mean time of the window), or None.

        Worked out once per reading, however many detectors read this view."""
        f = self._fit
        if f is not _STALE:
            return f
        n = self.n
        if n < 3:
            self._fit = None
            return None
        st = self.st
        sv = self.sv
        sxx = self.stt - st * st / n
        if not sxx > 0:
            self._fit = None
            return None
        sxy = self.stv - st * sv / n
        syy = self.svv - sv * sv / n
        b = sxy / sxx
        sse = syy - b * sxy
        self._fit = f = (b * DAY, sqrt(sse / (n - 2) / sxx) * DAY if sse > 0 else 0.0, self.t0 + st / n)
        return f

    def centred(self) -> tuple[int, float, float, float, float, float]:
        """(n, mean t, mean value, Σ(t−t̄)², Σ(t−t̄)(y−ȳ), Σ(y−ȳ)²) of the window; n ≥ 1."""
        n = self.n
        st, sv = self.st, self.sv
        return n, self.t0 + st / n, self.v0 + sv / n, self.stt - st * st / n, self.stv - st * sv / n, self.svv - sv * sv / n


class SlopeWindows:
    """A channel's readings (t strictly increasing) over the longest of several sliding
    windows, and a ``SlopeView`` per window. See the module docstring.

    The readings are two flat ``array('d')``; ``base`` is the absolute index of their first
    element, so views keep absolute indices and old readings are cut off in blocks, not one
    by one. ``ts`` and ``vs`` stay the same objects for the windows' lifetime.

    >>> w = SlopeWindows()
    >>> short, long = w.view(2.0), w.view(4.0)
    >>> for t in range(6):
    ...     _ = w.push(float(t), 10.0 * t)
    >>> short.n, long.n, round(short.fit()[0] / DAY, 9), w.push(5.0, 0.0)
    (3, 5, 10.0, False)
    """

    __slots__ = ("base", "last_t", "ts", "views", "vs")

    def __init__(self) -> None:
        self.ts = _NO_READINGS[:]
        self.vs = _NO_READINGS[:]
        self.base = 0
        self.views: tuple[SlopeView, ...] = ()
        self.last_t: float | None = None  # ts[-1], kept apart: reading an array boxes a float

    def view(self, window_s: float) -> SlopeView:
        """The view of ``window_s`` (made on first asking, before any reading)."""
        for v in self.views:
            if v.window_s == window_s:
                return v
        if self.ts:
            raise ValueError("views must be made before the first reading")
        v = SlopeView(self, window_s)
        views = self.views
        i = 0
        while i < len(views) and views[i].window_s > v.window_s:
            i += 1
        self.views = (*views[:i], v, *views[i:])  # the longest first: it reaches furthest back
        return v

    def clear(self) -> None:
        del self.ts[:]
        del self.vs[:]
        self.base = 0
        self.last_t = None
        for v in self.views:
            v._clear(0)

    def push(self, t: float, value: float) -> bool:
        """Add a reading; False (and nothing changes) when t is not after the newest one —
        for a shared window, typically because another detector pushed this reading."""
        prev = self.last_t
        if prev is not None and not t > prev:
            return False
        self._append(t, value, prev)
        return True

    def _append(self, t: float, value: float, prev: float | None) -> None:
        ts = self.ts
        vs = self.vs
        ts.append(t)
        vs.append(value)
        self.last_t = t
        base = self.base
        stale = _STALE
        # Each view's sums, inline (this is the per-reading hot path of every rate detector).
        for w in self.views:
            w._fit = stale
            window = w.window_s
            if prev is None or t - prev > window:
                w._restart(t, value, prev)
                continue
            w.restarted = False
            if t - w.t0 > 4.0 * window:
                w._reanchor()  # from the window before this reading, as the sums were
            t0, v0 = w.t0, w.v0
            x = t - t0
            y = value - v0
            n = w.n + 1
            st = w.st + x
            sv = w.sv + y
            stt = w.stt + x * x
            stv = w.stv + x * y
            svv = w.svv + y * y
            horizon = t - window
            tk = w.first  # ts[w.lo - base]: a reading is read (boxed) from the array once, as it leaves
            if tk < horizon:
                k = w.lo - base
                while tk < horizon:
                    x = tk - t0
                    y = vs[k] - v0
                    n -= 1
                    st -= x
                    sv -= y
                    stt -= x * x
                    stv -= x * y
                    svv -= y * y
                    k += 1
                    tk = ts[k]
                w.lo = k + base
                w.first = tk
            w.n = n  # one store each: a 6-tuple assignment builds and unpacks a tuple
            w.st = st
            w.sv = sv
            w.stt = stt
            w.stv = stv
            w.svv = svv
        # Drop the readings no window needs any more (the longest reaches furthest back: a gap
        # restarts the shorter windows first), a block at a time.
        drop = self.views[0].lo - base
        if drop >= _CUT and 8 * drop >= len(ts):
            del ts[:drop]
            del vs[:drop]
            self.base = base + drop

    def snapshot(self) -> dict[str, Any]:
        # The sums go in as they are, so a restored window continues bit for bit.
        keep = (self.views[0].lo if self.views else self.base + len(self.ts)) - self.base
        return {
            "t": pack_times(self.ts[keep:]),
            "v": pack(self.vs[keep:]),
            "views": {
                repr(v.window_s): pack([v.lo - self.base - keep, v.t0, v.v0, v.n, v.st, v.sv, v.stt, v.stv, v.svv]) for v in self.views
            },
        }

    def restore(self, state: dict[str, Any]) -> None:
        ts, vs = self.ts, self.vs
        del ts[:]
        del vs[:]
        unpack_into(ts, state["t"])
        unpack_into(vs, state["v"])
        self.base = 0
        self.last_t = ts[-1] if ts else None
        views = state["views"]
        for v in self.views:
            lo, v.t0, v.v0, n, v.st, v.sv, v.stt, v.stv, v.svv = unpack(views[repr(v.window_s)])
            v.lo, v.n, v.restarted, v._fit = int(lo), int(n), False, _STALE
            if 0 <= v.lo < len(ts):  # as the first reading of the window, ``first`` is ts[lo]
                v.first = ts[v.lo]


class SlidingSlope:
    """Least-squares slope of (t, value) over a sliding event-time window, O(1) per reading.

    One window of its own readings: ``SlopeWindows`` with a single ``SlopeView``. ``push``
    returns True when a gap longer than the window emptied it first.
    """

    __slots__ = ("_v", "_w", "window_s")

    def __init__(self, window_s: float) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        self._w = SlopeWindows()
        self._v = self._w.view(self.window_s)

    @property
    def n(self) -> int:
        return self._v.n

    @property
    def t0(self) -> float:
        """The time the sums are anchored at (re-set every few window lengths)."""
        return self._v.t0

    @property
    def last_t(self) -> float | None:
        return self._w.last_t

    def clear(self) -> None:
        self._w.clear()

    def push(self, t: float, value: float) -> bool:
        """Add a reading (t after the last one); True when a gap emptied the window first."""
        w = self._w
        w._append(t, value, w.last_t)
        return self._v.restarted

    def span(self) -> float:
        return self._v.span()

    def fit(self) -> tuple[float, float, float] | None:
        """(slope per day, its standard error per day, mean time of the window), or None."""
        return self._v.fit()

    def centred(self) -> tuple[int, float, float, float, float, float]:
        """(n, mean t, mean value, Σ(t−t̄)², Σ(t−t̄)(y−ȳ), Σ(y−ȳ)²) of the window; n ≥ 1."""
        return self._v.centred()

    def points(self) -> tuple[list[float], list[float]]:
        """(t, value) of the readings in the window."""
        w, k = self._w, self._v.lo - self._w.base
        return w.ts[k:].tolist(), w.vs[k:].tolist()

    def snapshot(self) -> dict[str, Any]:
        return self._w.snapshot()

    def restore(self, state: dict[str, Any]) -> None:
        self._w.restore(state)


_SILENT = Verdict(0, "shared smoothing windows: no judgement of their own", {}, True)


class SharedWindows:
    """A channel's ``SlopeWindows`` as the first stage of its detector list.

    It pushes each finite reading and never judges (its verdict is always warming up, which
    site fusion passes over); its snapshot carries the windows once for all the detectors
    that read them (their own snapshots leave the windows out).
    """

    __slots__ = ("windows",)

    def __init__(self, windows: SlopeWindows) -> None:
        self.windows = windows

    def update(self, t: float, value: float) -> Verdict:
        if t - t == 0.0 and value - value == 0.0:  # finite (x − x is NaN for ±inf and NaN)
            w = self.windows
            prev = w.last_t
            if prev is None:
                w._append(t, value, None)
            elif t > prev:  # SlopeWindows.push, inline
                w._append(t, value, prev)
        return _SILENT

    def snapshot(self) -> dict[str, Any]:
        return self.windows.snapshot()

    def restore(self, state: dict[str, Any]) -> None:
        self.windows.restore(state)
