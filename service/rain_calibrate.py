"""``geowarn rain-calibrate``: propose a site's own rain thresholds from its own record.

Reads the site's rain record — from the journal of a data directory, a recorded feed, or a CSV
of rain totals (``date,rain_mm`` daily, or ``t,rain_mm`` stamped at the end of each interval)
— and, when given, its dated landslide days; ``detectors.rain_calibration.calibrate`` does the
science. Prints what the site's current thresholds and the proposed ones do on that record
and a ``[sites.policy.rain]`` table to paste under the site in the registry, or, with
``--write``, puts it there (the file is written only if the result loads and holds exactly
the proposal; comments and everything else are kept).

Exit codes: 0 done, 1 the record or the landslide list cannot be used, 2 configuration error.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import re
import sys
import tempfile
import tomllib
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from geowarn.config.errors import ConfigError

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
LEVEL_NAMES = {1: "blue", 2: "yellow", 3: "orange", 4: "red"}
DAY = 86400.0


class InputError(Exception):
    """A record or landslide list that cannot be used, with the reason."""


# -- reading -----------------------------------------------------------------------------------


def _day_end(d: date, tz_offset_h: float) -> float:
    """A daily total is stamped at the end of its local day."""
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() + DAY - tz_offset_h * 3600.0


def read_rain_csv(path: Path, tz_offset_h: float) -> list[tuple[float, float]]:
    """(t, mm) from a CSV with ``rain_mm`` and ``date`` (a daily total) or ``t`` (end of the
    interval: epoch seconds or RFC 3339). A blank total is missing (not 0 mm) and left out."""
    from geowarn.core.timefmt import parse_instant

    out: list[tuple[float, float]] = []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or ())
        if "rain_mm" not in cols or not ({"date", "t"} & cols):
            raise InputError(f"{path}: a rain CSV needs the columns rain_mm and date (daily totals) or t (end of each interval)")
        for n, r in enumerate(reader, start=2):
            raw = (r.get("rain_mm") or "").strip()
            if not raw:
                continue
            try:
                mm = float(raw)
                if not math.isfinite(mm):
                    raise ValueError("not finite")
                if "date" in cols and (r.get("date") or "").strip():
                    t = _day_end(date.fromisoformat(r["date"].strip()), tz_offset_h)
                else:
                    t = parse_instant((r.get("t") or "").strip(), assume_utc=True)
            except ValueError as exc:
                raise InputError(f"{path}: line {n}: {exc}") from None
            out.append((t, mm))
    return out


def read_landslide_days(path: Path) -> list[int]:
    """Day numbers (days since 1970-01-01) of the dates in a CSV with a ``date`` column, or
    in a text file with one ISO date a line (blank lines and '#' comments skipped)."""
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    dates: list[str] = []
    if "date" in [c.strip() for c in first.split(",")]:
        dates = [(r.get("date") or "").strip() for r in csv.DictReader(ln for ln in lines if not ln.lstrip().startswith("#"))]
        dates = [d for d in dates if d]
    else:
        dates = [ln.split(",")[0].strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    out = []
    for d in dates:
        try:
            out.append((date.fromisoformat(d) - date(1970, 1, 1)).days)
        except ValueError:
            raise InputError(f"{path}: {d!r} is not a date (YYYY-MM-DD)") from None
    if not out:
        raise InputError(f"{path}: no landslide dates in it")
    return out


def _pick_channel(found: dict[tuple[str, str], list[tuple[float, float]]], want: str | None, where: str) -> tuple[str, list[tuple[float, float]]]:
    if not found:
        raise InputError(f"{where}: no rain readings for the site")
    if want is not None:
        dev, _, ch = want.partition("/")
        if (dev, ch) not in found:
            raise InputError(f"{where}: no rain channel {want}; there are {', '.join(f'{d}/{c}' for d, c in sorted(found))}")
        return want, found[(dev, ch)]
    if len(found) > 1:
        raise InputError(f"{where}: the site has several rain channels ({', '.join(f'{d}/{c}' for d, c in sorted(found))}); pick one with --channel DEVICE/CHANNEL")
    (dev, ch), rows = next(iter(found.items()))
    return f"{dev}/{ch}", rows


def _is_rain(registry: Any, site: str, device: str, channel: str) -> bool:
    from geowarn.ingest.feeds import kind_of_channel

    if registry is not None:
        info = registry.channel(site, device, channel)
        if info is not None:
            return bool(info.kind == "rain")
    kind = kind_of_channel(channel)
    return kind is not None and kind.value == "rain"


def read_journal(data_dir: Path, site: str, registry: Any) -> dict[tuple[str, str], list[tuple[float, float]]]:
    from geowarn.core.sqlite import SchemaError
    from geowarn.ingest.journal import JOURNAL_FILE, Journal

    try:
        journal = Journal(data_dir / JOURNAL_FILE, readonly=True)
    except FileNotFoundError:
        raise InputError(f"no journal in {data_dir} (give --data-dir, or --rain FILE)") from None
    except SchemaError as exc:
        raise InputError(str(exc)) from None
    found: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for s, dev, ch, t_ms, value in journal.export(site):
            if s == site and _is_rain(registry, s, dev, ch):
                found.setdefault((dev, ch), []).append((t_ms / 1000.0, float(value)))
    finally:
        journal.close()
    return found


def read_feed_rain(path: Path, site: str, registry: Any) -> dict[tuple[str, str], list[tuple[float, float]]]:
    from geowarn.ingest.feeds import FeedError, read_feed

    try:
        rows = list(read_feed(path))
    except FeedError as exc:
        raise InputError(str(exc)) from None
    found: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in rows:
        if r.site == site and not r.drill and _is_rain(registry, r.site, r.device, r.channel):
            found.setdefault((r.device, r.channel), []).append((r.t, r.value))
    return found


def _looks_like_rain_csv(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            head = fh.readline()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    return "rain_mm" in [c.strip() for c in head.split(",")]


def _within(rows: list[tuple[float, float]], since: float | None, until: float | None, tz_offset_h: float) -> list[tuple[float, float]]:
    """The readings of the local days from the day of ``since`` up to, not including, the day
    of ``until``; a reading belongs to the day it closes (a daily total stamped at midnight
    is the day before's), as the detectors book it."""
    from geowarn.detectors.rain_calibration import day_number

    off = -tz_offset_h * 3600.0
    # The date typed is the site's local date (parsed as that date's UTC midnight).
    lo = None if since is None else math.floor(since / DAY)
    hi = None if until is None else math.floor(until / DAY)
    out = []
    for t, v in sorted(rows):
        d = int(day_number(t, off))
        if (lo is None or d >= lo) and (hi is None or d < hi):
            out.append((t, v))
    return out


# -- writing -----------------------------------------------------------------------------------


def _num(x: float) -> str:
    return repr(round(float(x), 4))


def _ladder_toml(pairs: Any) -> str:
    return "{ " + ", ".join(f"{LEVEL_NAMES[int(lvl)]} = {_num(x)}" for lvl, x in pairs) + " }"


def rain_table(th: Any, span: str) -> list[str]:
    """The ``[sites.policy.rain]`` table of ``RainThresholds`` ``th`` (keys the registry knows)."""
    names = {3600.0: "sum_1h", 86400.0: "sum_24h", 259200.0: "sum_72h"}
    lines = ["[sites.policy.rain]", f'calibrated = "{span}"']
    for w, pairs in th.windows:
        lines.append(f"{names[float(w)]} = {_ladder_toml(pairs)}")
    if th.id_a is not None:
        lines.append(f"id_a = {_num(th.id_a)}")
    if th.id_b is not None:
        lines.append(f"id_b = {_num(th.id_b)}")
    if th.id_levels is not None:
        lines.append(f"id_multiples = {_ladder_toml(th.id_levels)}")
    if th.effective_levels is not None:
        lines.append(f"effective = {_ladder_toml(th.effective_levels)}")
    if th.k is not None:
        lines.append(f"effective_k = {_num(th.k)}")
    if th.days is not None:
        lines.append(f"effective_days = {int(th.days)}")
    return lines


_HEADER = re.compile(r"^\s*\[")
_SITES = re.compile(r"^\s*\[\[\s*sites\s*\]\]\s*(#.*)?$")
_RAIN = re.compile(r"^\s*\[\s*sites\s*\.\s*policy\s*\.\s*rain\s*\]\s*(#.*)?$")
_POLICY = re.compile(r"^\s*\[\s*sites\s*\.\s*policy\s*\]\s*(#.*)?$")


def with_rain_table(text: str, site: str, table: list[str]) -> str:
    """The registry text with the site's ``[sites.policy.rain]`` replaced by ``table`` (or
    added after its ``[sites.policy]``, else before its first device). Textual, so comments
    stay; the caller checks the result loads and holds the proposal."""
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if _SITES.match(ln)]
    key = re.compile(r'^\s*site\s*=\s*["\']' + re.escape(site) + r'["\']\s*(#.*)?$')
    block = None
    for k, s in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        body_end = next((i for i in range(s + 1, end) if _HEADER.match(lines[i])), end)
        if any(key.match(lines[i]) for i in range(s + 1, body_end)):
            block = (s, end)
            break
    if block is None:
        raise InputError(f"site {site!r} is not a [[sites]] table of the registry file")
    s, end = block
    headers = [i for i in range(s + 1, end) if _HEADER.match(lines[i])]

    def table_end(h: int) -> int:
        nxt = next((i for i in headers if i > h), end)
        # Leave the blank lines and comments that lead into the next table with it.
        while nxt - 1 > h and (not lines[nxt - 1].strip() or lines[nxt - 1].lstrip().startswith("#")):
            nxt -= 1
        return nxt

    rain = next((i for i in headers if _RAIN.match(lines[i])), None)
    if rain is not None:
        new = lines[:rain] + table + lines[table_end(rain):]
    else:
        policy = next((i for i in headers if _POLICY.match(lines[i])), None)
        if policy is not None:
            at = table_end(policy)
            new = lines[:at] + ["", *table] + lines[at:]
        else:
            at = table_end(s) if headers else end
            new = lines[:at] + ["", *table, ""] + lines[at:]
    return "\n".join(new) + ("\n" if text.endswith("\n") else "")


def write_registry(path: Path, site: str, table: list[str], expected: Any) -> None:
    """Put ``table`` into the registry file, atomically, only if the result loads and the
    site's rain policy is exactly ``expected`` (a RainThresholds)."""
    from geowarn.config.registry import parse_registry

    text = path.read_text(encoding="utf-8")
    new = with_rain_table(text, site, table)
    try:
        registry = parse_registry(tomllib.loads(new), str(path))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: the table cannot be added to this file as written ({exc}); paste it by hand") from None
    except ConfigError as exc:
        raise InputError(f"{path}: with the table the registry does not load ({exc}); nothing written") from None
    rain = registry.sites[site].policy.rain
    from geowarn.detectors.rain import RainThresholds

    if rain is None or RainThresholds(**rain.detector_args()) != expected:
        raise InputError(f"{path}: the table did not land in site {site}'s policy; nothing written, paste it by hand")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the command -------------------------------------------------------------------------------


def _rate(hits: int | None, n: int) -> str:
    return "-" if hits is None or not n else f"{hits}/{n} = {hits / n:.0%}"


def cmd_rain_calibrate(args: argparse.Namespace) -> int:
    from geowarn.config.registry import load_registry
    from geowarn.detectors.rain import RainThresholds
    from geowarn.detectors.rain_calibration import METHODS, CalibrationError, calibrate

    registry = None
    try:
        if args.sites:
            registry = load_registry(args.sites)
            if args.site not in registry.sites:
                raise InputError(f"{args.sites}: no site {args.site!r} in the registry")
        elif args.write:
            raise InputError("--write needs the registry file to write into: --sites FILE")
    except ConfigError as exc:
        print("configuration error:", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_CONFIG
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    try:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise InputError(f"--methods: {', '.join(bad) or 'none given'}; the methods are {', '.join(METHODS)}")
        if args.rain is not None and _looks_like_rain_csv(Path(args.rain)):
            rows = read_rain_csv(Path(args.rain), args.tz_offset_h)
            label = str(args.rain)
        else:
            found = (
                read_feed_rain(Path(args.rain), args.site, registry)
                if args.rain is not None
                else read_journal(Path(args.data_dir), args.site, registry)
            )
            label, rows = _pick_channel(found, args.channel, str(args.rain or args.data_dir))
        rows = _within(rows, args.since, args.until, args.tz_offset_h)
        slides = read_landslide_days(Path(args.landslides)) if args.landslides else []
        interval = args.interval_s
        current = None
        if registry is not None:
            policy = registry.sites[args.site].policy
            current = None if policy.rain is None else RainThresholds(**policy.rain.detector_args())
            if interval is None and "/" in label:
                dev, _, ch = label.partition("/")
                info = registry.channel(args.site, dev, ch)
                interval = None if info is None else info.interval_s
        if interval is None:
            gaps = sorted(b[0] - a[0] for a, b in itertools.pairwise(rows) if b[0] > a[0])
            interval = gaps[len(gaps) // 2] if gaps else DAY
        targets = [(2, args.yellow), (3, args.orange), (4, args.red)]
        proposal = calibrate(
            [t for t, _ in rows],
            [v for _, v in rows],
            interval_s=float(interval),
            landslide_days=slides,
            day_offset_s=-args.tz_offset_h * 3600.0,
            current=current,
            targets=targets,
            methods=methods,
            hit_window_days=args.hit_window_days,
        )
    except (InputError, CalibrationError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAIL
    days = proposal.last_day - proposal.first_day + 1
    n_slides = proposal.current[0].landslide_days
    table = rain_table(proposal.thresholds, proposal.span)
    out = [
        f"# geowarn rain-calibrate: site {args.site}, rain {label} every {interval:g} s, {proposal.span} ({days} days"
        + (f", {n_slides} landslide days, hit when a day within ±{args.hit_window_days} d is at the level" if slides else ", no landslide dates: exceedance alone") + ")",
        f"# methods calibrated: {', '.join(proposal.methods)}; thresholds now: {'the site registry' if current else 'the defaults'}",
        "#   level    target   now: days at/above, landslide days hit   proposed: days at/above, landslide days hit",
    ]
    for (lvl, target), now, new in zip(proposal.targets, proposal.current, proposal.proposed):
        out.append(
            f"#   {LEVEL_NAMES[lvl]:<7}  ≤ {target:>5.1%}  {now.fraction:>6.1%}, {_rate(now.hits, n_slides):<14}"
            f"          {new.fraction:>6.1%}, {_rate(new.hits, n_slides)}"
        )
    out.append(f"# Paste under the [[sites]] table of site \"{args.site}\" (or run again with --write --sites FILE):")
    print("\n".join(out + table))
    if args.write:
        try:
            write_registry(Path(args.sites), args.site, table, proposal.thresholds)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAIL
        print(f"# written to {args.sites}", file=sys.stderr)
    return EXIT_OK


def _time(raw: str) -> float:
    from geowarn.core.timefmt import parse_instant

    try:
        return parse_instant(raw, assume_utc=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _share(raw: str) -> float:
    try:
        x = float(raw.rstrip("%")) / (100.0 if raw.endswith("%") else 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a share of days (e.g. 0.15 or 15%)") from None
    if not 0 < x < 1:
        raise argparse.ArgumentTypeError(f"{raw!r}: a share of days must be between 0 and 1 (or 0 % and 100 %)")
    return x


def add_rain_calibrate_parser(sub: Any) -> None:
    from geowarn.detectors.rain_calibration import LEVEL_FRACTIONS, METHODS

    f = dict(LEVEL_FRACTIONS)
    p = sub.add_parser(
        "rain-calibrate",
        help="propose a site's own rain thresholds from its rain record (and dated landslides); prints [sites.policy.rain]",
    )
    p.add_argument("--site", required=True, help="the site code")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-dir", default=None, help="read the site's rain from this data directory's journal")
    src.add_argument("--rain", default=None, help="a CSV of rain totals (rain_mm with date or t), or a recorded feed (CSV or JSONL)")
    p.add_argument("--channel", default=None, help="DEVICE/CHANNEL when the site has several rain channels")
    p.add_argument("--landslides", default=None, help="dated landslide days: a CSV with a date column, or one YYYY-MM-DD a line")
    p.add_argument("--sites", default=None, help="the site registry: the site's current thresholds and the channel's interval (and --write's target)")
    p.add_argument("--write", action="store_true", help="put the table into the --sites file (kept only if it then loads and holds the proposal)")
    p.add_argument("--since", type=_time, default=None, help="calibrate on the days from this date (YYYY-MM-DD or RFC 3339, the site's local day; inclusive)")
    p.add_argument("--until", type=_time, default=None, help="... up to this date (exclusive)")
    p.add_argument("--tz-offset-h", type=float, default=0.0, help="the site's local time minus UTC, hours: where its days (and landslide dates) begin (default 0)")
    p.add_argument("--yellow", type=_share, default=f[2], help=f"share of days allowed at yellow or above, e.g. 0.15 or 15%% (default {f[2] * 100:g}%%)")
    p.add_argument("--orange", type=_share, default=f[3], help=f"... at orange or above (default {f[3] * 100:g}%%)")
    p.add_argument("--red", type=_share, default=f[4], help=f"... at red (default {f[4] * 100:g}%%)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"methods to calibrate, comma-separated (default all: {','.join(METHODS)}); the others keep their thresholds")
    p.add_argument("--hit-window-days", type=int, default=1, help="a landslide day counts as hit when a day within ± this many days is at the level (default 1)")
    p.add_argument("--interval-s", type=float, default=None, help="the gauge's reporting interval (default: the registry's, else the median spacing)")
    p.set_defaults(func=cmd_rain_calibrate)
