#!/usr/bin/env python3
"""Real monitoring records for tuning and validating GeoWarn, read into one common form.

Every dataset is described in ``benchmarks/data/<name>/PROVENANCE.md`` (source, licence, units,
what the series is, what was changed) and assigned to the *tuning* or the *validation* side in
``benchmarks/data/SPLIT.md``. The split was fixed before any detector was run on the data;
**do not run GeoWarn's detectors on the validation side while tuning** (see SPLIT.md).

The data files themselves are not in this repository:

* the four tuning records already collected live in ``<repo>/../shared/data`` (read in place);
* the records gathered for issue 14 come from public GitHub snapshots, which this workplace does
  not allow developers to commit or copy. They are read from the first source that has them:

  1. a folder ``<dataset>/`` holding the original files, under ``$GEOWARN_VALIDATION_DATA`` or
     ``<repo>/../shared/validation_data``;
  2. the bare git snapshot of the source repository (``$GEOWARN_VALIDATION_MIRRORS``, default
     ``/work/.mirror``, one ``<owner>+<name>`` git directory per repository): each file's bytes
     come straight out of git (``git cat-file blob <commit>:<path>``) into memory, at the
     commit and path PROVENANCE.md names (``MIRRORED`` below), and nothing is written to disk.

  Whichever the source, a file's SHA-256 is checked against ``benchmarks/data/<name>/SHA256SUMS``
  before it is parsed; a mismatch is refused (:class:`ChecksumMismatch`). ``--check`` reads and
  verifies every listed file and checks ``MIRRORED`` against each PROVENANCE.md.

Common form: a :class:`Dataset` holds :class:`Series`; a series is one channel of one device at
one site with its GeoWarn ``kind`` (``config.registry.Kind`` values, plus ``reservoir_level``
which GeoWarn does not ingest), ``unit``, epoch-second times ``t`` and ``value``. Positions
(GNSS, displacement) are stamped at the epoch of the solution; accumulations (rain) at the
*end* of the interval they cover. A dataset carries ``failure_time`` (epoch s) when the slope
failed, and ``events`` (epoch s of the start of each local day with a dated landslide) for
rain-only records.

    python3 benchmarks/validation_data.py --check          # per-dataset counts and time span
    python3 benchmarks/validation_data.py --check --split tuning
    python3 benchmarks/validation_data.py --check --source mirror   # only the git snapshots

The module uses only the standard library.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
DATA_DOCS = REPO / "benchmarks" / "data"
SHARED = REPO.parent / "shared" / "data"
DEFAULT_MIRRORS = Path("/work/.mirror")

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
    source: Source | None = None

    @property
    def n_values(self) -> int:
        return sum(len(s.t) for s in self.series)

    def span(self) -> tuple[float, float] | None:
        ts = [x for s in self.series for x in (s.t[:1] + s.t[-1:])]
        return (min(ts), max(ts)) if ts else None


class DataAbsent(FileNotFoundError):
    """The dataset's files are not on this machine (see the module docstring)."""


class ChecksumMismatch(ValueError):
    """A file's bytes differ from the SHA-256 recorded in SHA256SUMS: it is not parsed."""


# --------------------------------------------------------------------------- where files live


@dataclass(frozen=True)
class Mirrored:
    """Where a gathered dataset's files are in its public repository (from its PROVENANCE.md)."""

    repo: str  # owner/name on GitHub
    commit: str  # the snapshot PROVENANCE.md names
    paths: dict[str, str]  # file name (as in SHA256SUMS) -> path inside the repository

    @property
    def mirror(self) -> str:
        """The snapshot's folder name under the mirror root."""
        return self.repo.replace("/", "+")


_USGS = "usgs/landslides-thresholds"
_USGS_COMMIT = "d2dd085697e2485cd5f725d7555dee9255f80bca"
_IGPS = "igps-ftk/iGPS"
_IGPS_COMMIT = "2ae5e0ca53121415df77782221b9df620dde1a8d"

#: Every gathered dataset: repository, commit and path of each file, as its PROVENANCE.md gives
#: them (``check_provenance`` holds the two to each other; the file names are SHA256SUMS's).
MIRRORED: dict[str, Mirrored] = {
    "usgs_seattle_rain_landslides": Mirrored(
        _USGS,
        _USGS_COMMIT,
        {f: f"data/test/{f}" for f in ("KBFI_t.txt", "KPAE_t.txt", "KSEA_t.txt", "KTIW_t.txt", "dates2011Muk.txt", "thresh_in.txt")},
    ),
    "usgs_mukilteo_ralhs_rain": Mirrored(
        _USGS,
        _USGS_COMMIT,
        {
            f: f"data/RALHS/{f}"
            for f in ("thresh_in.txt", "waMLP_rain.txt", "waMVD116_rain.txt", "waMWWD_rain.txt", "waWatertonA_rain.txt")
        },
    ),
    "ngl_lhas_gnss": Mirrored(
        _IGPS,
        _IGPS_COMMIT,
        {f: f"example/formats/NGL.tenv3/{f}" for f in ("LHAS.tenv3", "README_tenv3.txt")},
    ),
    "pbo_p156_gnss": Mirrored(
        _IGPS,
        _IGPS_COMMIT,
        {"P156.pbo.final_igs08.pos": "example/formats/PBO/P156.pbo.final_igs08.pos"},
    ),
    "helmsman_gnss_18": Mirrored(
        "helmsman-sun/gnss-station-neu-timeseries",
        "5c8542726d14ce86473338c01315fb3d9d394e19",
        {
            **{f"{st}neu9818.csv": f"dataset/{st}neu9818.csv" for st in (
                "G001", "G008", "G019", "G039", "G073", "I001", "I081", "J089", "J188",
                "J260", "J460", "J490", "J768", "J861", "S106", "USUD", "Z101", "Z121",
            )},
            "LICENSE": "LICENSE",
        },
    ),
    "outang_three_gorges": Mirrored(
        "wcqqq1214/Landslide-Warning",
        "a5fdaff2e4b80f73f504ee8bfb0c846b27515390",
        {f: f"data/{f}" for f in ("monitoring_data.csv", "station_coords.csv")},
    ),
    # Not the repository's HEAD: the authors deleted the data files in 67623dc (PROVENANCE.md, "Licence and terms").
    "dexing_gbsar_failure": Mirrored(
        "wanjiashan/PIKANs",
        "ee66465e95505ac7e2f0f93bbcf1e9899dfe17ca",
        {"DeXing.xlsx": "data/DeXing.xlsx"},
    ),
}

#: The tuning records read in place from ../shared/data (no SHA256SUMS: see their PROVENANCE.md).
SHARED_DATASETS = ("three_gorges_baishuihe_bazimen", "cubatao_brazil_rain_landslides", "lamosano_italy")


def read_sums(name: str) -> dict[str, str]:
    """File name -> SHA-256 from benchmarks/data/<name>/SHA256SUMS (empty when there is none)."""
    path = DATA_DOCS / name / "SHA256SUMS"
    if not path.is_file():
        return {}
    sums = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, fname = line.split(maxsplit=1)
            sums[fname.strip().lstrip("*")] = digest.lower()
    return sums


class Source:
    """One dataset's files, wherever they are; every read is checked against ``sums``.

    ``sums`` (file name -> SHA-256) defaults to the dataset's SHA256SUMS. With sums, a file not
    listed is refused as well as a file whose digest differs: only recorded bytes are parsed.
    Without sums (the shared tuning records) files are read as they are.
    """

    def __init__(self, name: str, where: str, sums: dict[str, str] | None = None) -> None:
        self.name = name
        self.where = where  # said in messages and in --check
        self.sums = read_sums(name) if sums is None else sums

    def _raw(self, fname: str) -> bytes:
        raise NotImplementedError

    def read_bytes(self, fname: str) -> bytes:
        if self.sums and fname not in self.sums:
            raise ChecksumMismatch(f"{self.name}/{fname}: not listed in benchmarks/data/{self.name}/SHA256SUMS; not read")
        data = self._raw(fname)
        want = self.sums.get(fname)
        if want is not None:
            got = hashlib.sha256(data).hexdigest()
            if got != want:
                raise ChecksumMismatch(
                    f"{self.name}/{fname} from {self.where}: SHA-256 {got} differs from {want} in "
                    f"benchmarks/data/{self.name}/SHA256SUMS; the file was not parsed (a different version "
                    "of the file, or a damaged copy)"
                )
        return data

    def text(self, fname: str, encoding: str = "utf-8") -> str:
        return self.read_bytes(fname).decode(encoding)

    def csv_rows(self, fname: str, encoding: str = "utf-8") -> csv.DictReader[str]:
        return csv.DictReader(io.StringIO(self.text(fname, encoding), newline=""))

    def verify_all(self) -> list[str]:
        """Read every file SHA256SUMS lists; the problems found (empty: all match)."""
        bad = []
        for fname in sorted(self.sums):
            try:
                self.read_bytes(fname)
            except (ChecksumMismatch, DataAbsent, OSError) as e:
                bad.append(str(e))
        return bad


class FolderSource(Source):
    """Files in a folder, under their original names."""

    def __init__(self, name: str, folder: Path, sums: dict[str, str] | None = None) -> None:
        super().__init__(name, str(folder), sums)
        self.folder = folder

    def _raw(self, fname: str) -> bytes:
        path = self.folder / fname
        if not path.is_file():
            raise DataAbsent(f"{self.name}/{fname}: absent from {self.folder}")
        return path.read_bytes()


class MirrorSource(Source):
    """Files read from a bare git snapshot, in memory: ``git cat-file blob <commit>:<path>``."""

    def __init__(self, name: str, git_dir: Path, spec: Mirrored, sums: dict[str, str] | None = None) -> None:
        super().__init__(name, f"{git_dir} at {spec.commit[:7]}", sums)
        self.git_dir = git_dir
        self.spec = spec

    def _git(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["git", f"--git-dir={self.git_dir}", *args], capture_output=True, check=False)

    def has_commit(self) -> bool:
        return self._git("cat-file", "-e", f"{self.spec.commit}^{{commit}}").returncode == 0

    def head(self) -> str:
        return self._git("rev-parse", "HEAD").stdout.decode().strip() or "?"

    def _raw(self, fname: str) -> bytes:
        path = self.spec.paths.get(fname)
        if path is None:
            raise DataAbsent(f"{self.name}/{fname}: no repository path for it in validation_data.MIRRORED")
        res = self._git("cat-file", "blob", f"{self.spec.commit}:{path}")
        if res.returncode != 0:
            raise DataAbsent(
                f"{self.name}/{fname}: {self.spec.repo} {path} at {self.spec.commit[:7]} not readable from {self.git_dir}: "
                + res.stderr.decode(errors="replace").strip()
            )
        return res.stdout


def _candidate_roots() -> list[Path]:
    roots = []
    env = os.environ.get("GEOWARN_VALIDATION_DATA")
    if env:
        roots.append(Path(env))
    roots += [
        REPO.parent / "shared" / "validation_data",
    ]
    return roots


def mirror_root() -> Path:
    env = os.environ.get("GEOWARN_VALIDATION_MIRRORS")
    return Path(env) if env else DEFAULT_MIRRORS


def mirror_git_dir(spec: Mirrored, root: Path | None = None) -> Path | None:
    """The snapshot's git directory (``<root>/<owner>+<name>/repo``, or the folder itself when it
    is the git directory), or None when the mirror root lacks it."""
    base = (root or mirror_root()) / spec.mirror
    for cand in (base / "repo", base):
        if (cand / "HEAD").is_file() and (cand / "objects").is_dir():
            return cand
    return None


SOURCES = ("auto", "folder", "mirror")


def locate(name: str, source: str = "auto") -> Source:
    """Where dataset ``name``'s files are read from: for a gathered dataset a folder (``folder``),
    its git snapshot (``mirror``) or the first of the two that has it (``auto``)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
    if name in SHARED_DATASETS:
        p = SHARED / name
        if not p.is_dir():
            raise DataAbsent(f"{name}: data absent (looked in {SHARED})")
        return FolderSource(name, p)
    looked = []
    if source in ("auto", "folder"):
        for root in _candidate_roots():
            if (root / name).is_dir():
                return FolderSource(name, root / name)
            looked.append(str(root / name))
    if source in ("auto", "mirror") and name in MIRRORED:
        spec = MIRRORED[name]
        git_dir = mirror_git_dir(spec)
        if git_dir is None:
            looked.append(f"git snapshot {mirror_root() / spec.mirror}")
        elif shutil.which("git") is None:
            looked.append(f"git snapshot {git_dir} (no git command on this machine)")
        else:
            src = MirrorSource(name, git_dir, spec)
            if src.has_commit():
                return src
            looked.append(f"git snapshot {git_dir}, which lacks commit {spec.commit} named in PROVENANCE.md (its HEAD is {src.head()})")
    raise DataAbsent(f"{name}: data absent (looked in {'; '.join(looked)})")


def check_provenance(name: str) -> list[str]:
    """Disagreements between ``MIRRORED[name]`` and the dataset's PROVENANCE.md / SHA256SUMS: the
    repository and full commit must be named in PROVENANCE.md, every file's folder too, and the
    table's file names must be exactly SHA256SUMS's."""
    spec = MIRRORED[name]
    prov = (DATA_DOCS / name / "PROVENANCE.md").read_text(encoding="utf-8")
    out = []
    if spec.repo not in prov:
        out.append(f"{name}: repository {spec.repo} not named in PROVENANCE.md")
    if spec.commit not in prov:
        out.append(f"{name}: commit {spec.commit} not named in PROVENANCE.md")
    for fname, path in spec.paths.items():
        folder = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
        if folder and folder not in prov:
            out.append(f"{name}: {path}: folder {folder} not named in PROVENANCE.md")
        if path.rsplit("/", 1)[-1] != fname:
            out.append(f"{name}: {path} is not file {fname}")
    sums = set(read_sums(name))
    if sums != set(spec.paths):
        out.append(
            f"{name}: files in MIRRORED and SHA256SUMS differ: "
            f"only in MIRRORED {sorted(set(spec.paths) - sums)}, only in SHA256SUMS {sorted(sums - set(spec.paths))}"
        )
    return out


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


def _month_t(ym: str) -> float:
    """Monthly survey stamped on the 15th 00:00 UTC (as benchmarks/accuracy.py does)."""
    y, m = (int(x) for x in ym.split("-"))
    return _utc(y, m, 15)


def _gps_monthly(rows: csv.DictReader[str], site: str) -> list[Series]:
    by: dict[tuple[str, str], Series] = {}
    for r in rows:
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
    rows: csv.DictReader[str], site: str, device: str, tz: timezone | ZoneInfo, blank_is_zero: bool
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
    for r in rows:
        raw = (r.get("rain_mm") or "").strip()
        if not raw and not blank_is_zero:
            continue
        try:
            v = float(raw) if raw else 0.0
        except ValueError:  # e.g. ".0.7" in bazimen_rain_daily.csv: a typo in the source, left out
            bad.append(f"{r['date']}={raw!r}")
            continue
        d = _iso_day(r["date"])
        s.t.append(_day_start(d + timedelta(days=1), tz))
        s.value.append(v)
    if bad:
        s.note += f"; left out (unparseable in source): {', '.join(bad)}"
    return s


def load_three_gorges_baishuihe_bazimen(src: Source) -> Dataset:
    series = _gps_monthly(src.csv_rows("baishuihe_gps_monthly_cumulative_displacement.csv"), "baishuihe")
    series += _gps_monthly(src.csv_rows("bazimen_gps_monthly_cumulative_displacement.csv"), "bazimen")
    # A blank day is "no rain recorded" (shared/data README): read as 0 mm.
    series.append(_daily_rain(src.csv_rows("baishuihe_rain_daily.csv"), "baishuihe", "shazhenxi_gauge", CHINA, True))
    series.append(_daily_rain(src.csv_rows("bazimen_rain_daily.csv"), "bazimen", "guizhou_gauge", CHINA, True))
    return Dataset("three_gorges_baishuihe_bazimen", "tuning", series, source=src)


def load_cubatao_brazil_rain_landslides(src: Source) -> Dataset:
    rain = _daily_rain(src.csv_rows("cubatao_hb_rain_daily_long.csv"), "cubatao", "hb_gauge", BRAZIL, False)
    events = [_day_start(_iso_day(r["date"]), BRAZIL) for r in src.csv_rows("cubatao_landslide_days.csv")]
    return Dataset(
        "cubatao_brazil_rain_landslides",
        "tuning",
        [rain],
        events=sorted(events),
        source=src,
    )


def load_lamosano_italy(src: Source) -> Dataset:
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
    for r in src.csv_rows("df.csv"):
        t = _day_start(_iso_day(r["date"]), ITALY)
        inc = float(r["p5"])
        total += inc
        disp.t.append(t)
        disp.value.append(inc)
        cum.t.append(t)
        cum.value.append(total)
        rain.t.append(t)
        rain.value.append(float(r["rain"]))
    return Dataset("lamosano_italy", "tuning", [cum, disp, rain], source=src)


# --------------------------------------------------------------------------- gathered for issue 14


def load_usgs_seattle_rain_landslides(src: Source) -> Dataset:
    """Hourly precipitation at four NWS stations (hundredths of an inch, local time) and the
    dates of landslides near Mukilteo, from usgs/landslides-thresholds data/test."""
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
        for line in src.text(f"{icao}_t.txt").splitlines():
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
    for line in src.text("dates2011Muk.txt").split():
        mo, d, y = (int(x) for x in line.split("/"))
        events.append(_day_start(date(y, mo, d), PACIFIC))
    return Dataset(
        "usgs_seattle_rain_landslides",
        "validation",
        series,
        events=sorted(events),
        source=src,
    )


def load_usgs_mukilteo_ralhs_rain(src: Source) -> Dataset:
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
        for line in src.text(f"{st}_rain.txt").splitlines():
            f = line.split()
            if len(f) < 6:
                continue
            y, mo, d, h, mi = (int(x) for x in f[:5])
            s.t.append(_local(y, mo, d, h, mi, PACIFIC))
            s.value.append(float(f[5]))
        series.append(_sort_dedupe(s))
    return Dataset("usgs_mukilteo_ralhs_rain", "validation", series, source=src)


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


def load_ngl_lhas_gnss(src: Source) -> Dataset:
    rows = []
    for line in src.text("LHAS.tenv3").splitlines()[1:]:
        f = line.split()
        if len(f) < 13:
            continue
        mjd = float(f[3])
        t = (mjd - MJD_UNIX_DAY) * 86400.0 + 43200.0  # daily solution, stamped at 12:00 UTC
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
        source=src,
    )


def load_pbo_p156_gnss(src: Source) -> Dataset:
    rows = []
    body = False
    for line in src.text("P156.pbo.final_igs08.pos").splitlines():
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
        source=src,
    )


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


def _load_helmsman(src: Source, split: str) -> Dataset:
    series = []
    for st in HELMSMAN_STATIONS:
        if helmsman_split(st, list(HELMSMAN_STATIONS)) != split:
            continue
        rows = []
        for r in src.csv_rows(f"{st}neu9818.csv"):
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
    return Dataset(f"helmsman_gnss_18:{split}", split, series, source=src)


def load_helmsman_gnss_tuning(src: Source) -> Dataset:
    return _load_helmsman(src, "tuning")


def load_helmsman_gnss_validation(src: Source) -> Dataset:
    return _load_helmsman(src, "validation")


OUTANG_POINTS = ("MJ9", "MJ1", "MJ3", "ATU4", "ATU5", "ATU3", "ATU2", "ATU1")


def load_outang_three_gorges(src: Source) -> Dataset:
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
    for r in src.csv_rows("monitoring_data.csv", encoding="utf-8-sig"):
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
        source=src,
    )


_XLSX_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_EXCEL_EPOCH = date(1899, 12, 30)  # Excel's serial day 0 (1900 date system)


def xlsx_rows(data: bytes, sheet: int = 1) -> list[list[str]]:
    """The cells of one worksheet of an .xlsx workbook, row by row, as text (shared strings
    resolved, numbers as Excel wrote them, a missing cell as ""). Standard library only: the
    workbook is a zip of XML parts. Raises ``ValueError`` when ``data`` is not such a workbook."""
    import xml.etree.ElementTree as ET
    import zipfile

    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        names = set(z.namelist())
        shared = []
        if "xl/sharedStrings.xml" in names:
            for si in ET.fromstring(z.read("xl/sharedStrings.xml")).iter(f"{_XLSX_NS}si"):
                shared.append("".join(t.text or "" for t in si.iter(f"{_XLSX_NS}t")))
        root = ET.fromstring(z.read(f"xl/worksheets/sheet{sheet}.xml"))
    except (zipfile.BadZipFile, KeyError, ET.ParseError) as e:
        raise ValueError(f"not a readable .xlsx workbook (sheet {sheet}): {e}") from e

    def col(ref: str) -> int:
        n = 0
        for ch in ref:
            if not ch.isalpha():
                break
            n = n * 26 + ord(ch.upper()) - 64
        return n - 1

    rows = []
    for row in root.iter(f"{_XLSX_NS}row"):
        cells: dict[int, str] = {}
        for c in row.iter(f"{_XLSX_NS}c"):
            v = c.find(f"{_XLSX_NS}v")
            if c.get("t") == "inlineStr":
                text = "".join(t.text or "" for t in c.iter(f"{_XLSX_NS}t"))
            elif v is None or v.text is None:
                text = ""
            elif c.get("t") == "s":
                text = shared[int(v.text)]
            else:
                text = v.text
            cells[col(c.get("r", "A"))] = text
        rows.append([cells.get(i, "") for i in range(max(cells) + 1)] if cells else [])
    return rows


def excel_serial_to_epoch(serial: float, tz: timezone | ZoneInfo) -> float:
    """Epoch seconds of an Excel serial date-time read as local time in ``tz`` (to the second)."""
    days = int(serial // 1)
    secs = round((serial - days) * 86400.0)
    d = _EXCEL_EPOCH + timedelta(days=days)
    return datetime(d.year, d.month, d.day, tzinfo=tz).timestamp() + secs


#: The failure the Dexing record runs to: the epoch the source marks ``landslide = 1``
#: (2018-05-05 14:54 UTC+8), on the event date of its data README (PROVENANCE.md).
DEXING_FAILURE = datetime(2018, 5, 5, 14, 54, tzinfo=CHINA).timestamp()


def load_dexing_gbsar_failure(src: Source) -> Dataset:
    """Ground-based radar displacement of the Dexing open-pit north slope, 7-minute epochs, up to
    its failure. Columns by header name; only time and displacement are loaded (the "velocity"
    column is the change per 7-min epoch despite its "mm/min" header; PROVENANCE.md)."""
    rows = xlsx_rows(src.read_bytes("DeXing.xlsx"))
    if not rows:
        raise ValueError("dexing_gbsar_failure/DeXing.xlsx: empty worksheet")
    header = [h.strip() for h in rows[0]]
    try:
        i_t, i_d, i_ls = header.index("Time"), header.index("Displacement (mm)"), header.index("landslide")
    except ValueError as e:
        raise ValueError(f"dexing_gbsar_failure/DeXing.xlsx: header {header} lacks a column: {e}") from e
    s = Series(
        "dexing_north",
        "gbsar",
        "displacement",
        "displacement",
        "mm",
        note="GB-SAR cumulative line-of-sight displacement, 7-min epochs, local time UTC+8",
    )
    flagged = []
    for r in rows[1:]:
        if len(r) <= max(i_t, i_d) or not r[i_t].strip() or not r[i_d].strip():
            continue
        t = excel_serial_to_epoch(float(r[i_t]), CHINA)
        s.t.append(t)
        s.value.append(float(r[i_d]))
        if len(r) > i_ls and r[i_ls].strip() not in ("", "0"):
            flagged.append(t)
    if flagged != [DEXING_FAILURE]:
        raise ValueError(
            "dexing_gbsar_failure/DeXing.xlsx: expected the landslide flag on the 2018-05-05 14:54 (UTC+8) row only, "
            f"found it at {[_fmt(t) for t in flagged]}"
        )
    return Dataset(
        "dexing_gbsar_failure",
        "validation",
        [_sort_dedupe(s)],
        failed=True,
        failure_time=DEXING_FAILURE,
        source=src,
    )


#: Every dataset, in SPLIT.md order. The split recorded in each Dataset must agree with SPLIT.md.
LOADERS: dict[str, Callable[[Source], Dataset]] = {
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
    "dexing_gbsar_failure": load_dexing_gbsar_failure,
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
    "dexing_gbsar_failure": "validation",
}

#: Validation datasets whose behaviour under GeoWarn was described before the split (SPLIT.md rule 6).
NOT_BLIND = frozenset({"outang_three_gorges"})


def load(name: str, source: str = "auto") -> Dataset:
    """Dataset ``name`` (a key of LOADERS) from ``source`` (see ``locate``)."""
    ds = LOADERS[name](locate(name.split(":")[0], source))
    if ds.split != SPLIT[name]:
        raise AssertionError(
            f"{name}: loader says {ds.split}, SPLIT says {SPLIT[name]}"
        )
    return ds


def datasets(split: str | None = None, source: str = "auto") -> Iterator[Dataset]:
    """Each dataset of ``split`` (or all) that is present on this machine; absent ones are skipped."""
    for name in LOADERS:
        if split and SPLIT[name] != split:
            continue
        try:
            yield load(name, source)
        except DataAbsent:
            continue


# --------------------------------------------------------------------------- self-test


def _fmt(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def check(split: str | None, source: str = "auto") -> int:
    problems = 0
    for name in MIRRORED:
        for p in check_provenance(name):
            print(f"  ! MIRRORED vs PROVENANCE.md: {p}")
            problems += 1
    print(
        f"{'dataset':32} {'split':10} {'sites':>5} {'series':>6} {'values':>8} {'events':>6}  span (UTC)            files"
    )
    for name in LOADERS:
        if split and SPLIT[name] != split:
            continue
        try:
            ds = load(name, source)
        except DataAbsent as e:
            print(f"{name:32} {SPLIT[name]:10} skipped: {e}")
            continue
        except ChecksumMismatch as e:
            print(f"{name:32} {SPLIT[name]:10} REFUSED: {e}")
            problems += 1
            continue
        src = ds.source
        if src is not None and src.sums:
            bad = src.verify_all()
            files = f"{len(src.sums)} files, checksums OK, from {src.where}" if not bad else f"CHECKSUM MISMATCH: {'; '.join(bad)}"
            problems += bool(bad)
        else:
            files = f"in {src.where if src else '?'} (no checksum file)"
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
            print(f"  failure at {datetime.fromtimestamp(ds.failure_time or 0, UTC):%Y-%m-%d %H:%M} UTC")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument(
        "--check",
        action="store_true",
        help="load every dataset present, verify its checksums and print counts and spans",
    )
    ap.add_argument(
        "--split", choices=("tuning", "validation"), help="only this side of the split"
    )
    ap.add_argument(
        "--source",
        choices=SOURCES,
        default="auto",
        help="gathered datasets from a folder, from the git snapshots, or the first that has them (default)",
    )
    args = ap.parse_args(argv)
    if not args.check:
        ap.print_help()
        return 0
    return check(args.split, args.source)


if __name__ == "__main__":
    sys.exit(main())
