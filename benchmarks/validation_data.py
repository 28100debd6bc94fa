#!/usr/bin/env python3
"""Real monitoring records for tuning and validating GeoWarn, read into one common form.

Every dataset is described in ``benchmarks/data/<name>/PROVENANCE.md`` (source, licence, units,
what the series is, what was changed) and assigned to the *tuning* or the *validation* side in
``benchmarks/data/SPLIT.md``. The split was fixed before any detector was run on the data;
**do not run GeoWarn's detectors on the validation side while tuning** (see SPLIT.md).

The data files themselves are not in this repository:

* the four tuning records already collected live in ``<repo>/../shared/data`` (read in place);
* the records gathered for issue 14 come from public GitHub snapshots, which this workplace does
  not allow developers to commit. They are looked up, unchanged, under the first of
  ``$GEOWARN_VALIDATION_DATA`` and ``<repo>/../shared/validation_data`` that has the
  dataset's folder. Each PROVENANCE.md gives
  the repository, commit and path of every file and ``SHA256SUMS`` their checksums, so a copy
  can be checked (``--check`` verifies them).

Common form: a :class:`Dataset` holds :class:`Series`; a series is one channel of one device at
one site with its GeoWarn ``kind`` (``config.registry.Kind`` values, plus ``reservoir_level``
which GeoWarn does not ingest), ``unit``, epoch-second times ``t`` and ``value``. Positions
(GNSS, displacement) are stamped at the epoch of the solution; accumulations (rain) at the
*end* of the interval they cover. A dataset carries ``failure_time`` (epoch s) when the slope
failed, and ``events`` (epoch s of the start of each local day with a dated landslide) for
rain-only records.

    python3 benchmarks/validation_data.py --check          # per-dataset counts and time span
    python3 benchmarks/validation_data.py --check --split tuning

The module uses only the standard library.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
DATA_DOCS = REPO / "benchmarks" / "data"
SHARED = REPO.parent / "shared" / "data"

INCH_HUNDREDTH_MM = 0.254  # 0.01 in = 0.254 mm exactly
MJD_UNIX_DAY = 40587  # MJD of 1970-01-01


@dataclass
class Series:
    site: str
    device: str
    channel: str
    kind: str
    unit: str
    t: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    note: str = ""


@dataclass
class Dataset:
    name: str
    split: str  # "tuning" or "validation"
    series: list[Series]
    failed: bool = False
    failure_time: float | None = None
    events: list[float] = field(default_factory=list)
    source_dir: Path | None = None

    @property
    def n_values(self) -> int:
        return sum(len(s.t) for s in self.series)

    def span(self) -> tuple[float, float] | None:
        ts = [x for s in self.series for x in (s.t[:1] + s.t[-1:])]
        return (min(ts), max(ts)) if ts else None


class DataAbsent(FileNotFoundError):
    """The dataset's files are not on this machine (see the module docstring)."""


# --------------------------------------------------------------------------- where files live


def _candidate_roots() -> list[Path]:
    roots = []
    env = os.environ.get("GEOWARN_VALIDATION_DATA")
    if env:
        roots.append(Path(env))
    roots += [
        REPO.parent / "shared" / "validation_data",
    ]
    return roots


def locate(name: str) -> Path:
    """The folder that holds dataset ``name``'s files (original bytes, original names)."""
    for root in _candidate_roots():
        if (root / name).is_dir():
            return root / name
    raise DataAbsent(
        f"{name}: data absent (looked in {', '.join(str(r) for r in _candidate_roots())})"
    )


def verify(name: str, folder: Path) -> list[str]:
    """Files whose SHA-256 differs from benchmarks/data/<name>/SHA256SUMS (empty: all match)."""
    sums = DATA_DOCS / name / "SHA256SUMS"
    bad = []
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, fname = line.split(maxsplit=1)
        f = folder / fname.strip().lstrip("*")
        if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != digest:
            bad.append(fname.strip())
    return bad


# --------------------------------------------------------------------------- time helpers


def _utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=UTC).timestamp()


def _local(y: int, mo: int, d: int, h: int, mi: int, tz: ZoneInfo) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=tz).timestamp()


def _day_start(d: date, tz: timezone | ZoneInfo) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=tz).timestamp()


def _iso_day(s: str) -> date:
    return date.fromisoformat(s.strip())


def _sort_dedupe(s: Series) -> Series:
    """Sort by time; a time seen twice (logger overlap, DST fall-back) keeps its first reading."""
    seen: dict[float, float] = {}
    for t, v in zip(s.t, s.value):
        seen.setdefault(t, v)
    dropped = len(s.t) - len(seen)
    s.t = sorted(seen)
    s.value = [seen[t] for t in s.t]
    if dropped:
        s.note += f"; {dropped} repeated time stamps dropped (first reading kept)"
    return s


PACIFIC = ZoneInfo("America/Los_Angeles")
CHINA = timezone(timedelta(hours=8))
BRAZIL = timezone(timedelta(hours=-3))
ITALY = ZoneInfo("Europe/Rome")


# --------------------------------------------------------------------------- tuning (shared/)


def _shared(sub: str) -> Path:
    p = SHARED / sub
    if not p.is_dir():
        raise DataAbsent(f"{sub}: data absent (looked in {SHARED})")
    return p


def _month_t(ym: str) -> float:
    """Monthly survey stamped on the 15th 00:00 UTC (as benchmarks/accuracy.py does)."""
    y, m = (int(x) for x in ym.split("-"))
    return _utc(y, m, 15)


def _gps_monthly(path: Path, site: str) -> list[Series]:
    by: dict[tuple[str, str], Series] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            for col in ("dX", "dY", "dF"):
                raw = (r.get(col) or "").strip()
                if not raw:
                    continue
                key = (r["point"], col)
                s = by.get(key)
                if s is None:
                    s = by[key] = Series(
                        site,
                        r["point"],
                        f"displacement.{col}",
                        "displacement",
                        "mm",
                        note="monthly cumulative GPS displacement; 2011-03 Baishuihe row is a copy of 2008-01",
                    )
                s.t.append(_month_t(r["date"]))
                s.value.append(float(raw))
    return list(by.values())


def _daily_rain(
    path: Path, site: str, device: str, tz: timezone | ZoneInfo, blank_is_zero: bool
) -> Series:
    s = Series(
        site,
        device,
        "rain",
        "rain",
        "mm",
        note="daily total, stamped at the end of the local day",
    )
    bad: list[str] = []
    with path.open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            raw = (r.get("rain_mm") or "").strip()
            if not raw and not blank_is_zero:
                continue
            try:
                v = float(raw) if raw else 0.0
            except (
                ValueError
            ):  # e.g. ".0.7" in bazimen_rain_daily.csv: a typo in the source, left out
                bad.append(f"{r['date']}={raw!r}")
                continue
            d = _iso_day(r["date"])
            s.t.append(_day_start(d + timedelta(days=1), tz))
            s.value.append(v)
    if bad:
        s.note += f"; left out (unparseable in source): {', '.join(bad)}"
    return s


def load_three_gorges_baishuihe_bazimen() -> Dataset:
    p = _shared("three_gorges_baishuihe_bazimen")
    series = _gps_monthly(
        p / "baishuihe_gps_monthly_cumulative_displacement.csv", "baishuihe"
    )
    series += _gps_monthly(
        p / "bazimen_gps_monthly_cumulative_displacement.csv", "bazimen"
    )
    # A blank day is "no rain recorded" (shared/data README): read as 0 mm.
    series.append(
        _daily_rain(
            p / "baishuihe_rain_daily.csv", "baishuihe", "shazhenxi_gauge", CHINA, True
        )
    )
    series.append(
        _daily_rain(
            p / "bazimen_rain_daily.csv", "bazimen", "guizhou_gauge", CHINA, True
        )
    )
    return Dataset("three_gorges_baishuihe_bazimen", "tuning", series, source_dir=p)


def load_cubatao_brazil_rain_landslides() -> Dataset:
    p = _shared("cubatao_brazil_rain_landslides")
    rain = _daily_rain(
        p / "cubatao_hb_rain_daily_long.csv", "cubatao", "hb_gauge", BRAZIL, False
    )
    events = []
    with (p / "cubatao_landslide_days.csv").open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            events.append(_day_start(_iso_day(r["date"]), BRAZIL))
    return Dataset(
        "cubatao_brazil_rain_landslides",
        "tuning",
        [rain],
        events=sorted(events),
        source_dir=p,
    )


def load_lamosano_italy() -> Dataset:
    p = _shared("lamosano_italy")
    disp = Series(
        "lamosano",
        "p5",
        "displacement.increment",
        "displacement",
        "mm",
        note="11-day displacement INCREMENT (not cumulative); unit presumed mm",
    )
    cum = Series(
        "lamosano",
        "p5",
        "displacement",
        "displacement",
        "mm",
        note="running sum of the 11-day increments, starting at 0 (derived here)",
    )
    rain = Series(
        "lamosano",
        "rain_gauge",
        "rain",
        "rain",
        "mm",
        note="rain over the 11-day step, stamped at its date",
    )
    total = 0.0
    with (p / "df.csv").open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            t = _day_start(_iso_day(r["date"]), ITALY)
            inc = float(r["p5"])
            total += inc
            disp.t.append(t)
            disp.value.append(inc)
            cum.t.append(t)
            cum.value.append(total)
            rain.t.append(t)
            rain.value.append(float(r["rain"]))
    return Dataset("lamosano_italy", "tuning", [cum, disp, rain], source_dir=p)


# --------------------------------------------------------------------------- gathered for issue 14


def load_usgs_seattle_rain_landslides() -> Dataset:
    """Hourly precipitation at four NWS stations (hundredths of an inch, local time) and the
    dates of landslides near Mukilteo, from usgs/landslides-thresholds data/test."""
    p = locate("usgs_seattle_rain_landslides")
    series = []
    for icao in ("KBFI", "KPAE", "KSEA", "KTIW"):
        s = Series(
            f"seattle_{icao.lower()}",
            icao,
            "rain",
            "rain",
            "mm",
            note="hourly total for the hour labelled HH (local time), stamped at its end; 0.01 in -> 0.254 mm",
        )
        for line in (p / f"{icao}_t.txt").read_text().splitlines():
            line = line.strip()
            if len(line) < 13:
                continue
            y, mo, d, h = (
                int(line[2:6]),
                int(line[6:8]),
                int(line[8:10]),
                int(line[10:12]),
            )
            s.t.append(_local(y, mo, d, h, 0, PACIFIC) + 3600.0)
            s.value.append(round(int(line[12:]) * INCH_HUNDREDTH_MM, 3))
        series.append(_sort_dedupe(s))
    events = []
    for line in (p / "dates2011Muk.txt").read_text().split():
        mo, d, y = (int(x) for x in line.split("/"))
        events.append(_day_start(date(y, mo, d), PACIFIC))
    return Dataset(
        "usgs_seattle_rain_landslides",
        "validation",
        series,
        events=sorted(events),
        source_dir=p,
    )


def load_usgs_mukilteo_ralhs_rain() -> Dataset:
    p = locate("usgs_mukilteo_ralhs_rain")
    series = []
    for st in ("waMLP", "waMVD116", "waMWWD", "waWatertonA"):
        s = Series(
            f"mukilteo_{st}",
            st,
            "rain",
            "rain",
            "mm",
            note="15-minute total (mm per thresh_in.txt), local time, stamped at the logger time label (taken as the end of the 15 min)",
        )
        for line in (p / f"{st}_rain.txt").read_text().splitlines():
            f = line.split()
            if len(f) < 6:
                continue
            y, mo, d, h, mi = (int(x) for x in f[:5])
            s.t.append(_local(y, mo, d, h, mi, PACIFIC))
            s.value.append(float(f[5]))
        series.append(_sort_dedupe(s))
    return Dataset("usgs_mukilteo_ralhs_rain", "validation", series, source_dir=p)


def _gnss_series(
    site: str, device: str, rows: list[tuple[float, float, float, float]], note: str
) -> list[Series]:
    """rows: (t, east_m, north_m, up_m) -> three series in mm relative to the first epoch."""
    rows.sort()
    out = []
    for i, (kind, ch) in enumerate(
        (("gnss_e", "e"), ("gnss_n", "n"), ("gnss_u", "u")), start=1
    ):
        s = Series(site, device, ch, kind, "mm", note=note)
        ref = rows[0][i]
        for r in rows:
            s.t.append(r[0])
            s.value.append(round((r[i] - ref) * 1000.0, 3))
        out.append(s)
    return out


def load_ngl_lhas_gnss() -> Dataset:
    p = locate("ngl_lhas_gnss")
    rows = []
    for line in (p / "LHAS.tenv3").read_text().splitlines()[1:]:
        f = line.split()
        if len(f) < 13:
            continue
        mjd = float(f[3])
        t = (
            mjd - MJD_UNIX_DAY
        ) * 86400.0 + 43200.0  # daily solution, stamped at 12:00 UTC
        rows.append(
            (
                t,
                float(f[7]) + float(f[8]),
                float(f[9]) + float(f[10]),
                float(f[11]) + float(f[12]),
            )
        )
    note = "NGL daily solution (tenv3; reference frame not stated in the file); mm from the first epoch"
    return Dataset(
        "ngl_lhas_gnss",
        "validation",
        _gnss_series("lhasa_igs", "LHAS", rows, note),
        source_dir=p,
    )


def load_pbo_p156_gnss() -> Dataset:
    p = locate("pbo_p156_gnss")
    rows = []
    body = False
    for line in (p / "P156.pbo.final_igs08.pos").read_text().splitlines():
        if line.startswith("*YYYYMMDD"):
            body = True
            continue
        if not body:
            continue
        f = line.split()
        if len(f) < 18:
            continue
        t = (float(f[2]) - MJD_UNIX_DAY) * 86400.0
        d_n, d_e, d_u = float(f[15]), float(f[16]), float(f[17])
        rows.append((t, d_e, d_n, d_u))
    note = "PBO final daily position, ITRF08, dN/dE/dU; mm from the first epoch"
    return Dataset(
        "pbo_p156_gnss",
        "tuning",
        _gnss_series("gibson_ridge_pbo", "P156", rows, note),
        source_dir=p,
    )


def _helmsman_stations(p: Path) -> list[str]:
    return sorted(f.name[: -len("neu9818.csv")] for f in p.glob("*neu9818.csv"))


def helmsman_split(station: str, stations: list[str]) -> str:
    """SPLIT.md rule: stations in alphabetical order alternate tuning, validation, tuning, ..."""
    return "tuning" if sorted(stations).index(station) % 2 == 0 else "validation"


HELMSMAN_STATIONS = (
    "G001",
    "G008",
    "G019",
    "G039",
    "G073",
    "I001",
    "I081",
    "J089",
    "J188",
    "J260",
    "J460",
    "J490",
    "J768",
    "J861",
    "S106",
    "USUD",
    "Z101",
    "Z121",
)


def _load_helmsman(split: str) -> Dataset:
    p = locate("helmsman_gnss_18")
    series = []
    for st in HELMSMAN_STATIONS:
        if helmsman_split(st, list(HELMSMAN_STATIONS)) != split:
            continue
        rows = []
        with (p / f"{st}neu9818.csv").open(newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                d = _iso_day(r["time"])
                # lon/lat/ver: east/north/up displacement, unit presumed mm (see PROVENANCE)
                rows.append(
                    (
                        _utc(d.year, d.month, d.day, 12),
                        float(r["lon"]) / 1000.0,
                        float(r["lat"]) / 1000.0,
                        float(r["ver"]) / 1000.0,
                    )
                )
        series += _gnss_series(
            f"helmsman_{st}",
            st,
            rows,
            "daily NEU displacement, unit presumed mm; relative to the first day",
        )
    return Dataset(f"helmsman_gnss_18:{split}", split, series, source_dir=p)


def load_helmsman_gnss_tuning() -> Dataset:
    return _load_helmsman("tuning")


def load_helmsman_gnss_validation() -> Dataset:
    return _load_helmsman("validation")


OUTANG_POINTS = ("MJ9", "MJ1", "MJ3", "ATU4", "ATU5", "ATU3", "ATU2", "ATU1")


def load_outang_three_gorges() -> Dataset:
    p = locate("outang_three_gorges")
    series = {
        pt: Series(
            "outang",
            pt,
            "displacement",
            "displacement",
            "mm",
            note="daily cumulative displacement (published daily series, interpolated/smoothed); 00:00 UTC+8",
        )
        for pt in OUTANG_POINTS
    }
    rain = Series(
        "outang",
        "rain_gauge",
        "rain",
        "rain",
        "mm",
        note="daily total, stamped at the end of the local day",
    )
    gwt = Series(
        "outang",
        "well",
        "groundwater",
        "groundwater",
        "m",
        note="groundwater table (GWT/m as in the source)",
    )
    rwl = Series(
        "outang",
        "reservoir",
        "reservoir_level",
        "reservoir_level",
        "m",
        note="Three Gorges reservoir water level (RWL/m); not a GeoWarn kind",
    )
    with (p / "monitoring_data.csv").open(newline="", encoding="utf-8-sig") as fh:
        for r in csv.DictReader(fh):
            d = _iso_day(r["Date"])
            t0 = _day_start(d, CHINA)
            for pt in OUTANG_POINTS:
                raw = (r.get(f"{pt}/mm") or "").strip()
                if raw:
                    series[pt].t.append(t0)
                    series[pt].value.append(float(raw))
            for s, col, t in (
                (rain, "Rainfall/mm", t0 + 86400.0),
                (gwt, "GWT/m", t0),
                (rwl, "RWL/m", t0),
            ):
                raw = (r.get(col) or "").strip()
                if raw:
                    s.t.append(t)
                    s.value.append(float(raw))
    return Dataset(
        "outang_three_gorges",
        "validation",
        [*series.values(), rain, gwt, rwl],
        source_dir=p,
    )


#: Every dataset, in SPLIT.md order. The split recorded in each Dataset must agree with SPLIT.md.
LOADERS: dict[str, Callable[[], Dataset]] = {
    "three_gorges_baishuihe_bazimen": load_three_gorges_baishuihe_bazimen,
    "cubatao_brazil_rain_landslides": load_cubatao_brazil_rain_landslides,
    "lamosano_italy": load_lamosano_italy,
    "pbo_p156_gnss": load_pbo_p156_gnss,
    "helmsman_gnss_18:tuning": load_helmsman_gnss_tuning,
    "helmsman_gnss_18:validation": load_helmsman_gnss_validation,
    "ngl_lhas_gnss": load_ngl_lhas_gnss,
    "usgs_seattle_rain_landslides": load_usgs_seattle_rain_landslides,
    "usgs_mukilteo_ralhs_rain": load_usgs_mukilteo_ralhs_rain,
    "outang_three_gorges": load_outang_three_gorges,
}

SPLIT: dict[str, str] = {
    "three_gorges_baishuihe_bazimen": "tuning",
    "cubatao_brazil_rain_landslides": "tuning",
    "lamosano_italy": "tuning",
    "pbo_p156_gnss": "tuning",
    "helmsman_gnss_18:tuning": "tuning",
    "helmsman_gnss_18:validation": "validation",
    "ngl_lhas_gnss": "validation",
    "usgs_seattle_rain_landslides": "validation",
    "usgs_mukilteo_ralhs_rain": "validation",
    "outang_three_gorges": "validation",
}


def load(name: str) -> Dataset:
    ds = LOADERS[name]()
    if ds.split != SPLIT[name]:
        raise AssertionError(
            f"{name}: loader says {ds.split}, SPLIT says {SPLIT[name]}"
        )
    return ds


def datasets(split: str | None = None) -> Iterator[Dataset]:
    """Each dataset of ``split`` (or all) that is present on this machine; absent ones are skipped."""
    for name in LOADERS:
        if split and SPLIT[name] != split:
            continue
        try:
            yield load(name)
        except DataAbsent:
            continue


# --------------------------------------------------------------------------- self-test


def _fmt(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def check(split: str | None) -> int:
    problems = 0
    print(
        f"{'dataset':32} {'split':10} {'sites':>5} {'series':>6} {'values':>8} {'events':>6}  span (UTC)            files"
    )
    for name in LOADERS:
        if split and SPLIT[name] != split:
            continue
        try:
            ds = load(name)
        except DataAbsent as e:
            print(f"{name:32} {SPLIT[name]:10} skipped: {e}")
            continue
        base = name.split(":")[0]
        sums = DATA_DOCS / base / "SHA256SUMS"
        if sums.is_file() and ds.source_dir is not None:
            bad = verify(base, ds.source_dir)
            files = (
                "checksums OK" if not bad else f"CHECKSUM MISMATCH: {', '.join(bad)}"
            )
            problems += bool(bad)
        else:
            files = "in ../shared/data (no checksum file)"
        for s in ds.series:
            if len(s.t) != len(s.value) or any(b < a for a, b in zip(s.t, s.t[1:])):
                print(
                    f"  ! {name} {s.site}/{s.device}/{s.channel}: times not sorted or lengths differ"
                )
                problems += 1
        sp = ds.span()
        span = f"{_fmt(sp[0])} .. {_fmt(sp[1])}" if sp else "-"
        sites = len({s.site for s in ds.series})
        print(
            f"{name:32} {ds.split:10} {sites:5d} {len(ds.series):6d} {ds.n_values:8d} {len(ds.events):6d}  {span}  {files}"
        )
        if ds.failed:
            print(f"  failure at {_fmt(ds.failure_time or 0)}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--check",
        action="store_true",
        help="load every dataset present and print counts and spans",
    )
    ap.add_argument(
        "--split", choices=("tuning", "validation"), help="only this side of the split"
    )
    args = ap.parse_args(argv)
    if not args.check:
        ap.print_help()
        return 0
    return check(args.split)


if __name__ == "__main__":
    sys.exit(main())
