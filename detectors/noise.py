"""Reading noise a channel is judged with: a physical floor per kind and unit, the figure a
channel states or the data suggest, and the recognition of smoothed or interpolated series.

This module owns three things the rate detectors (velocity, tangent angle, inverse velocity)
share:

- ``FLOORS``: per kind and unit, the reading noise (1 sigma) below which no instrument of that
  kind can be believed to read, with where the figure comes from. An estimate from the data
  (``ingest.feeds.estimate_noise``, or the residuals of a regression window) never goes below
  it; a figure the registry states for the channel (``noise``) overrides it, since the person
  who wrote it knows the instrument.
- ``NoiseFigure``: the figure used (``sigma``), where it came from (``source``: "registry",
  "estimated", or "floor for <kind> (<unit>)") and the kind's floor, so every verdict can say
  which noise it was judged with.
- ``Smoothness``: the lag-1 autocorrelation of a series' increments, and with it whether the
  series is smoothed or interpolated (published daily cumulative displacement, a spline
  through monthly surveys, a moving average).

Why smoothed series need their own treatment. A regression slope's standard error is worked
out from the window's own residuals. On raw readings that is an honest estimate of the noise;
on a smoothed series the smoothing has taken the noise out of the residuals but not out of the
values (a spline through monthly GPS positions carries each survey's 3 mm error through every
interpolated day), so the residual scatter is 0.0003–0.002 mm and every wobble of 0.1 mm/day is
"significant". Two things recognise and undo it:

1. The reading errors' lag-1 autocorrelation ρ is read from the increments (differences of
   readings 1 and 4 apart), which a slow signal hardly moves (``Smoothness``): white noise
   gives ρ = 0; a moving average over k readings about (k − 1)/k; a spline through sparse
   surveys, whose increments are themselves a smooth curve, ρ → 1. A random-walk (coloured)
   noise also gives ρ ≈ 1 — and its residuals mislead a regression's standard error just the
   same. A series with ρ ≥ ``SMOOTHED_RHO`` (0.5) is called smoothed.
2. A smoothed series is judged with the noise of the instrument behind it: its figure never
   below the kind's floor (whoever stated it: a smoothed series cannot show a noise figure, so
   none below the physical floor can be checked against it), and its standard errors widened
   for the correlation: the n readings of a window carry the information of only
   n_eff = n·(1 − ρ)/(1 + ρ) independent ones (the AR(1) effective sample size; Bretherton et
   al. 1999, J. Climate 12:1990-2009; Zięba 2010, Metrol. Meas. Syst. 17:3-16), so a slope's
   standard error grows by sqrt(n/n_eff) = sqrt((1 + ρ)/(1 − ρ)). ρ is capped at ``MAX_RHO``
   (0.95: a factor 6.2), since it is estimated from a few dozen increments and the factor
   explodes as ρ → 1.

   A caveat: a noise-free or nearly noise-free series that accelerates has smooth increments
   too, and is taken for smoothed. Real readings are never noise-free; the rule is applied
   once, to the reference stretch (``detectors/tangent.py``, ``ReferenceRate``), before any
   acceleration the detectors are there to see.

The floors, one sigma, in the kind's units, and their sources (manufacturers' datasheets and
the monitoring literature; the figures are orders of magnitude a field instrument reaches
under good conditions, not a specific model's best):

- GNSS horizontal (``gnss_e``, ``gnss_n``): 3 mm. Static or fast-static short-baseline
  solutions of survey and monitoring receivers are specified at 3 mm + 0.1 ppm horizontal
  (e.g. Trimble R10 / Leica GM30 datasheets; RTK 8 mm + 1 ppm); landslide GNSS monitoring
  reports 2–5 mm horizontal repeatability for 10-min to 1-h sessions (e.g. Wang 2011,
  Landslides 8:205-216 / Wang et al. 2013 on Three Gorges GNSS: a few mm).
- GNSS vertical (``gnss_u``): 6 mm, twice the horizontal (datasheets: 3.5 mm + 0.4 ppm static,
  15 mm + 1 ppm RTK vertical; the usual 2:1 vertical-to-horizontal ratio).
- Wire extensometer (``displacement``): 0.3 mm. Vibrating-wire and potentiometric
  long-range displacement meters resolve 0.025 % of full scale with ±0.1 % FS accuracy
  (e.g. Geokon 4427: 0.25 mm resolution on a 1 m range); field wire extensometers on
  landslides read to 0.1–0.3 mm (wire temperature and sag add to it).
- Crack meter (``crack``): 0.1 mm. Vibrating-wire crack meters: 0.025 % FS resolution,
  ±0.1 % FS accuracy (e.g. Geokon 4420: 0.1 mm accuracy on a 100 mm range, 0.0125 mm on
  12.5 mm); 0.01–0.1 mm.
- Tiltmeter (``tilt``): 0.01° (0.1745 mrad, 174.5 µrad). MEMS tiltmeters resolve 0.001–0.005°
  but their repeatability over temperature is of the order of ±0.01° (e.g. Geokon 6160/6350,
  Sisgeo MEMS tiltmeter datasheets).
- Piezometer (``pore_pressure``): 0.35 kPa, ±0.1 % FS of a 350 kPa vibrating-wire piezometer
  (e.g. Geokon 4500S: 0.025 % FS resolution, ±0.1 % FS accuracy); ``groundwater``: 0.035 m,
  the same pressure as water head; ``seepage_pressure`` (渗压, a piezometer too): 0.35 kPa. The
  rise detector does not read these yet.
- In-place inclinometer (``deep_displacement``): 0.5 mm. A string of MEMS tilt sensors sums
  each segment's error over the borehole: about ±0.5 mm per 10 m is the order of magnitude
  in-place inclinometer specifications give (a probe survey's systematic error is larger).
- Mud level (``mud_level``): 0.01 m, a radar or ultrasonic level gauge over a gully.

The first three displacement-like figures are the ones site fusion always assumed (its former
``NOISE`` table), so raw-data behaviour on the simulator does not change; what is new is that
an estimate never goes below them, that the tilt floor follows the channel's unit, and the
smoothed-series rules.

>>> noise_for("displacement", "mm", estimated=0.0004).evidence()
{'noise': 0.3, 'noise_source': 'floor for displacement (mm)'}
>>> noise_for("gnss_e", "mm", stated=1.5).evidence()
{'noise': 1.5, 'noise_source': 'registry'}
>>> noise_for("gnss_e", "mm", stated=0.001).for_smoothed().evidence()
{'noise': 3.0, 'noise_source': 'floor for gnss_e (mm) (smoothed series: the registry 0.001 is below it)'}
>>> noise_for("tilt", "mrad").sigma
0.1745
>>> s = Smoothness()
>>> for x in [0.0, 1.0] * 16:    # increments ±1 at lag 1, 0 at lag 4: as rough as it gets
...     s.add(x)
>>> s.variance_ratio(), s.rho(), s.smoothed()
(0.0, 0.0, False)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

#: (kind, unit) -> (sigma, where the figure comes from). See the module docstring.
FLOORS: dict[tuple[str, str], tuple[float, str]] = {
    ("gnss_e", "mm"): (3.0, "GNSS horizontal, static/fast-static short baseline: 3 mm + 0.1 ppm (receiver datasheets)"),
    ("gnss_n", "mm"): (3.0, "GNSS horizontal, static/fast-static short baseline: 3 mm + 0.1 ppm (receiver datasheets)"),
    ("gnss_u", "mm"): (6.0, "GNSS vertical, twice the horizontal (receiver datasheets)"),
    ("displacement", "mm"): (0.3, "wire extensometer: 0.025 % FS resolution on a 1 m range (e.g. Geokon 4427)"),
    ("crack", "mm"): (0.1, "crack meter: ±0.1 % FS on a 100 mm range (e.g. Geokon 4420)"),
    ("tilt", "deg"): (0.01, "MEMS tiltmeter repeatability ~±0.01° (tiltmeter datasheets)"),
    ("tilt", "mrad"): (0.1745, "MEMS tiltmeter repeatability ~±0.01° (tiltmeter datasheets)"),
    ("tilt", "urad"): (174.5, "MEMS tiltmeter repeatability ~±0.01° (tiltmeter datasheets)"),
    ("pore_pressure", "kPa"): (0.35, "vibrating-wire piezometer: ±0.1 % FS of 350 kPa (e.g. Geokon 4500S)"),
    ("groundwater", "m"): (0.035, "vibrating-wire piezometer: ±0.1 % FS of 350 kPa as water head"),
    ("deep_displacement", "mm"): (0.5, "in-place inclinometer string: about ±0.5 mm per 10 m of borehole (MEMS in-place inclinometer specifications)"),
    ("seepage_pressure", "kPa"): (0.35, "vibrating-wire piezometer: ±0.1 % FS of 350 kPa (e.g. Geokon 4500S)"),
    ("mud_level", "m"): (0.01, "radar or ultrasonic level gauge: about ±1 cm (level gauge datasheets)"),
}

#: Increments with at least this lag-1 autocorrelation make a series "smoothed" (white noise
#: gives −0.5, a random-walk noise about 0, a spline or moving average near +1).
SMOOTHED_RHO = 0.5
#: The autocorrelation used to widen standard errors is capped here (a factor 6.2).
MAX_RHO = 0.95
#: Increments wanted before the variance ratio is trusted to tell a smoothed series (at 60,
#: white noise and a 3-reading moving average no longer overlap between their 5th and 95th
#: percentiles; at 30 a 5-day moving average was once read as white).
MIN_INCREMENTS = 60
#: The longer lag of the variance ratio.
LAG = 4
#: Fewer increments than this say nothing at all (``rho`` None).
MIN_RHO_INCREMENTS = 10



@dataclass(frozen=True, slots=True)
class NoiseFigure:
    """The reading noise (1 sigma, the channel's unit) a channel is judged with.

    ``source``: "registry" (the channel's ``noise`` in the site registry), "estimated" (from
    the data, above the floor), or "floor for <kind> (<unit>)"; ``floor``: the kind's physical
    floor (None for a kind without one). Immutable, so ``noise_for`` hands every channel with
    the same kind, unit and figure the same one."""

    sigma: float
    source: str
    floor: float | None = None
    floor_source: str | None = None

    def for_smoothed(self) -> NoiseFigure:
        """The figure for a series recognised as smoothed: never below the floor, whoever
        stated it (a smoothed series cannot show its noise)."""
        if self.floor is not None and self.sigma < self.floor:
            return NoiseFigure(self.floor, f"{self.floor_source} (smoothed series: the {self.source} {self.sigma:g} is below it)", self.floor, self.floor_source)
        return self

    def evidence(self) -> dict[str, Any]:
        return {"noise": self.sigma, "noise_source": self.source}


def floor_of(kind: str, unit: str | None) -> tuple[float, str] | None:
    """(sigma, source) of the kind's physical floor in ``unit`` (the kind's first unit when
    None), or None for a kind without one (rain, soil moisture, battery)."""
    kind = str(getattr(kind, "value", kind))
    if unit is None:
        unit = next((u for k, u in FLOORS if k == kind), "")
    return FLOORS.get((kind, unit))


def noise_for(kind: str, unit: str | None, *, stated: float | None = None, estimated: float | None = None) -> NoiseFigure:
    """The figure a channel is judged with: ``stated`` (registry) as it is; else the larger of
    ``estimated`` and the kind's floor; else the floor.

    ``ValueError`` for a kind without a floor and nothing stated, or a figure that is not a
    finite number > 0."""
    return _noise_for(str(getattr(kind, "value", kind)), unit, stated, estimated)


@lru_cache(maxsize=1024, typed=True)
def _noise_for(kind: str, unit: str | None, stated: float | None, estimated: float | None) -> NoiseFigure:
    # Shared by every channel alike (a NoiseFigure is immutable); a call that raises is never
    # cached, and a figure equal to a cached one is the same value (no zero, no NaN passes).
    for name, x in (("stated", stated), ("estimated", estimated)):
        if x is not None and not (x > 0 and math.isfinite(x)):
            raise ValueError(f"{name} noise must be a finite number > 0, got {x!r}")
    fl = floor_of(kind, unit)
    floor = None if fl is None else fl[0]
    said = f"floor for {kind} ({unit})" if unit else f"floor for {kind}"
    if stated is not None:
        return NoiseFigure(float(stated), "registry", floor, said if fl else None)
    if fl is None:
        if estimated is not None:
            return NoiseFigure(float(estimated), "estimated", None)
        raise ValueError(f"kind {kind!r} in unit {unit!r} has no noise floor; state the channel's noise in the registry")
    if estimated is not None and estimated > fl[0]:
        return NoiseFigure(float(estimated), "estimated", floor, said)
    return NoiseFigure(fl[0], said, floor, said)


def inflation(rho: float | None) -> float:
    """sqrt(n / n_eff) = sqrt((1 + ρ)/(1 − ρ)) for a smoothed series (ρ ≥ ``SMOOTHED_RHO``,
    capped at ``MAX_RHO``); 1 otherwise.

    >>> inflation(None), inflation(0.2), round(inflation(0.8), 3), round(inflation(0.999), 3)
    (1.0, 1.0, 3.0, 6.245)
    """
    if rho is None or not rho >= SMOOTHED_RHO:
        return 1.0
    r = min(rho, MAX_RHO)
    return math.sqrt((1.0 + r) / (1.0 - r))


class Smoothness:
    """How smooth a series' errors are, from running sums (O(1) per value): the variance
    ratio of its increments at lag ``LAG`` (4) and lag 1, and the errors' lag-1
    autocorrelation ρ it implies.

    VR = Var(x_i − x_{i−4}) / (4·Var(x_i − x_{i−1})). A slowly varying signal hardly moves
    it; for errors with lag-1 autocorrelation ρ (AR(1)) Var(x_i − x_{i−h}) = 2σ²(1 − ρ^h), so
    VR = (1 + ρ)(1 + ρ²)/4: white noise 0.25, a moving average or a random walk about 1, a
    spline through sparse surveys above 1 (its increments are themselves smooth). ``rho``
    inverts that (clipped to [0, 1]). The variance ratio rather than the increments' own
    lag-1 autocorrelation because it tells them apart better from few readings: over 60
    increments (400 synthetic series each) white noise gave VR 0.18–0.35 and a 3-day moving
    average 0.47–1.02 (5th–95th percentiles), where the increments' lag-1 autocorrelation of
    a moving average (0 in theory) spread over −0.25…0.23 against white noise's −0.63…−0.32.
    ``rho`` is None until ``MIN_RHO_INCREMENTS`` increments, or when the increments do not
    vary at all (a noise-free straight line: nothing to say about smoothing). Values are
    anchored at the first one, so large coordinates lose no precision.

    Memory (issue 17: two per displacement channel): the last LAG values are four slots
    shifted along rather than a list, and the increment counts follow from the count of
    values (``m`` = k − 1, ``m4`` = k − LAG). An ``array('d')`` would hold it all in less,
    but every store into one parses its argument: ~80 % more instructions per ``add``.
    """

    __slots__ = ("_k", "_r0", "_r1", "_r2", "_r3", "_x0", "s1", "s4", "ss1", "ss4")

    def __init__(self) -> None:
        self._k = 0  # values added
        self._x0 = 0.0  # the first value (x0, once _k > 0)
        self._r0 = self._r1 = self._r2 = self._r3 = 0.0  # the last LAG values (anchored), oldest first
        self.s1 = self.ss1 = 0.0  # sums of the increments at lag 1 and their squares
        self.s4 = self.ss4 = 0.0  # the same at lag LAG

    @property
    def x0(self) -> float | None:
        return self._x0 if self._k else None

    @property
    def recent(self) -> list[float]:
        """The last LAG values (anchored), oldest first."""
        return [self._r0, self._r1, self._r2, self._r3][LAG - min(self._k, LAG) :]

    @property
    def m(self) -> int:
        """Increments at lag 1."""
        return max(self._k - 1, 0)

    @property
    def m4(self) -> int:
        """Increments at lag LAG."""
        return max(self._k - LAG, 0)

    def add(self, value: float) -> None:
        k = self._k
        if not k:
            self._x0 = value
        x = value - self._x0
        if k:
            d = x - self._r3
            self.s1 += d
            self.ss1 += d * d
            if k >= LAG:
                d4 = x - self._r0
                self.s4 += d4
                self.ss4 += d4 * d4
        self._r0, self._r1, self._r2, self._r3 = self._r1, self._r2, self._r3, x  # four slots: LAG is 4
        self._k = k + 1

    def variance_ratio(self) -> float | None:
        m, m4 = self.m, self.m4
        if m < MIN_RHO_INCREMENTS or m4 < 2:
            return None
        v1 = (self.ss1 - self.s1 * self.s1 / m) / (m - 1)
        if not v1 > 1e-12 * max(self.ss1 / m, 1e-300):
            return None
        v4 = (self.ss4 - self.s4 * self.s4 / m4) / (m4 - 1)
        return max(0.0, v4) / (LAG * v1)

    def rho(self) -> float | None:
        """The errors' lag-1 autocorrelation implied by the variance ratio, in [0, 1]."""
        vr = self.variance_ratio()
        if vr is None:
            return None
        if vr <= 0.25:
            return 0.0
        if vr >= 1.0:
            return 1.0
        lo, hi = 0.0, 1.0
        for _ in range(40):  # (1 + ρ)(1 + ρ²)/4 rises from 0.25 to 1 on [0, 1]
            mid = 0.5 * (lo + hi)
            if (1.0 + mid) * (1.0 + mid * mid) / 4.0 < vr:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def known(self) -> bool:
        """Enough increments to tell (``rho`` may still be None: increments that never vary)."""
        return self._k - 1 >= MIN_INCREMENTS

    def smoothed(self) -> bool:
        r = self.rho()
        return r is not None and r >= SMOOTHED_RHO

    def snapshot(self) -> list[Any]:
        return [self.x0, self.recent, self.m, self.s1, self.ss1, self.m4, self.s4, self.ss4]

    def restore(self, state: list[Any]) -> None:
        x0, recent, m, s1, ss1, m4, s4, ss4 = state
        m, m4 = int(m), int(m4)
        k = 0 if x0 is None else m + 1
        # What ``add`` writes always has m = k − 1, m4 = k − LAG and the last min(k, LAG) values.
        if len(recent) != min(k, LAG) or m != max(k - 1, 0) or m4 != max(k - LAG, 0):
            raise ValueError(f"not a Smoothness state: x0 {x0!r}, {len(recent)} recent values, m {m}, m4 {m4}")
        self._k = k
        self.s1, self.ss1, self.s4, self.ss4 = s1, ss1, s4, ss4
        self._x0 = 0.0 if x0 is None else float(x0)
        self._r0, self._r1, self._r2, self._r3 = ([0.0] * LAG + [float(x) for x in recent])[-LAG:]
