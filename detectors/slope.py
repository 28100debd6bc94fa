"""The sliding least-squares slope every rate detector shares (velocity, tangent angle,
inverse velocity, rise rate): one O(1) implementation with precise anchored sums, instead
of one per detector."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

DAY = 86400.0
HOUR = 3600.0


def white_noise_velocity_se(noise_mm: float, window_s: float, interval_s: float) -> float:
    """Standard error (mm/day) of a least-squares slope over ``window_s`` of readings every
    ``interval_s`` with white noise ``noise_mm``: σ / sqrt(Σ(t − t̄)²), Σ(t − t̄)² = n(n²−1)Δt²/12.

    >>> round(white_noise_velocity_se(3.0, 12 * HOUR, 600.0), 2)   # 72 readings
    2.45
    """
    n = max(3, int(round(window_s / interval_s)))
    sxx = n * (n * n - 1) / 12.0 * interval_s * interval_s
    return noise_mm / math.sqrt(sxx) * DAY


class SlidingSlope:
    """Least-squares slope of (t, value) over a sliding event-time window, O(1) per reading.

    Readings older than ``window_s`` before the newest leave the window; a gap longer than the
    window empties it (``push`` then returns True). The sums are of t − t0 and value − v0 with
    anchors re-set every few window lengths, so they stay small and precise.
    """

    __slots__ = ("window_s", "pts", "t0", "v0", "n", "st", "sv", "stt", "stv", "svv")

    def __init__(self, window_s: float) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        self.clear()

    def clear(self) -> None:
        self.pts: deque[tuple[float, float]] = deque()
        self.t0 = 0.0
        self.v0 = 0.0
        self.n = 0
        self.st = self.sv = self.stt = self.stv = self.svv = 0.0

    def _reanchor(self) -> None:
        t0, v0 = self.pts[0]
        st = sv = stt = stv = svv = 0.0
        for t, v in self.pts:
            x = t - t0
            y = v - v0
            st += x
            sv += y
            stt += x * x
            stv += x * y
            svv += y * y
        self.t0, self.v0 = t0, v0
        self.st, self.sv, self.stt, self.stv, self.svv = st, sv, stt, stv, svv

    def push(self, t: float, value: float) -> bool:
        """Add a reading (t after the last one); True when a gap emptied the window first."""
        pts = self.pts
        restarted = False
        if pts and t - pts[-1][0] > self.window_s:
            self.clear()
            pts = self.pts
            restarted = True
        if not pts:
            self.t0, self.v0 = t, value
        elif t - self.t0 > 4.0 * self.window_s:
            self._reanchor()
        pts.append((t, value))
        x = t - self.t0
        y = value - self.v0
        self.n += 1
        self.st += x
        self.sv += y
        self.stt += x * x
        self.stv += x * y
        self.svv += y * y
        horizon = t - self.window_s
        while pts[0][0] < horizon:
            ot, ov = pts.popleft()
            x = ot - self.t0
            y = ov - self.v0
            self.n -= 1
            self.st -= x
            self.sv -= y
            self.stt -= x * x
            self.stv -= x * y
            self.svv -= y * y
        return restarted

    def span(self) -> float:
        return self.pts[-1][0] - self.pts[0][0] if self.pts else 0.0

    def fit(self) -> tuple[float, float, float] | None:
        """(slope per day, its standard error per day, mean time of the window), or None."""
        n = self.n
        if n < 3:
            return None
        st = self.st
        sxx = self.stt - st * st / n
        if not sxx > 0:
            return None
        sxy = self.stv - st * self.sv / n
        syy = self.svv - self.sv * self.sv / n
        b = sxy / sxx
        sse = syy - b * sxy
        se = math.sqrt(sse / (n - 2) / sxx) if sse > 0 else 0.0
        return b * DAY, se * DAY, self.t0 + st / n

    def centred(self) -> tuple[int, float, float, float, float, float]:
        """(n, mean t, mean value, Σ(t−t̄)², Σ(t−t̄)(y−ȳ), Σ(y−ȳ)²) of the window; n ≥ 1."""
        n = self.n
        st, sv = self.st, self.sv
        return n, self.t0 + st / n, self.v0 + sv / n, self.stt - st * st / n, self.stv - st * sv / n, self.svv - sv * sv / n

    def snapshot(self) -> dict[str, Any]:
        # The sums go in as they are, so a restored window continues bit for bit.
        return {"points": [list(p) for p in self.pts], "anchor": [self.t0, self.v0], "sums": [self.n, self.st, self.sv, self.stt, self.stv, self.svv]}

    def restore(self, state: dict[str, Any]) -> None:
        self.clear()
        self.pts.extend((float(t), float(v)) for t, v in state["points"])
        self.t0, self.v0 = (float(a) for a in state["anchor"])
        n, *sums = state["sums"]
        self.n = int(n)
        self.st, self.sv, self.stt, self.stv, self.svv = (float(s) for s in sums)
