#!/usr/bin/env python3
"""Disk use of the journal per reading, per channel-year and per device-year (issue 16, item 4).

Writes readings into a real journal (``ingest/journal.py``: the same schema, indexes and
transactions the store worker uses, batches of ``--batch``) for the example registry's
channels at their reporting intervals, checkpoints the WAL, and divides the file's size by
the readings. Then, from that figure, a year of one channel at 10 minutes and at 1 minute, and
a year of typical devices (a GNSS receiver: 3 channels; a crack meter: 1; a rain gauge: 1).

    python3 benchmarks/disk_use.py                 # 60 days of the example registry
    python3 benchmarks/disk_use.py --days 365

Only the journal grows with time: the message log keeps raw messages ``message_keep_s``
(1 h) after they are decoded, dead letters and statuses are capped by age and size, the audit
by age and size (README, Configuration). With ``GEOWARN_JOURNAL_KEEP_DAYS`` the journal
stops growing too.
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from geowarn.config.registry import load_registry
from geowarn.config.settings import example_path
from geowarn.ingest.journal import Journal

YEAR_S = 365.25 * 86400


def measure(days: float, batch: int, seed: int = 1) -> dict[str, float]:
    reg = load_registry(example_path("sites.example.toml"))
    rnd = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="geowarn-disk-") as tmp:
        path = Path(tmp) / "journal.sqlite"
        j = Journal(path, sync="normal")
        ids = j.series_ids(reg)
        chans = [(sid, info.interval_s) for info, sid in ids.items()]
        t0 = 1_767_225_600.0  # 2026-01-01
        end = t0 + days * 86400
        events: list[tuple[float, int]] = []
        for sid, interval in chans:
            t = t0 + rnd.uniform(0, interval)
            while t < end:
                events.append((t, sid))
                t += interval
        events.sort()
        level = {sid: rnd.uniform(-50, 50) for sid, _ in chans}
        rows = []
        n = 0
        for t, sid in events:
            level[sid] += rnd.gauss(0, 0.3)  # realistic mantissas: values that differ in every digit
            t_ms = int(t * 1000)
            rows.append((sid, t_ms, round(level[sid], 3), 0, t_ms + rnd.randint(200, 3000)))
            if len(rows) >= batch:
                n += j.append(rows)
                rows = []
        if rows:
            n += j.append(rows)
        j.close()
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
        conn.close()
        size = path.stat().st_size
    return {"readings": n, "channels": len(chans), "bytes": size, "pages_bytes": pages, "per_reading": size / n}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=float, default=60.0)
    p.add_argument("--batch", type=int, default=2000, help="readings per transaction (the store worker's batches)")
    args = p.parse_args()
    t = time.perf_counter()
    r = measure(args.days, args.batch)
    took = time.perf_counter() - t
    per = r["per_reading"]
    ch10 = YEAR_S / 600 * per
    ch1 = YEAR_S / 60 * per
    print(f"# Journal disk use ({time.strftime('%Y-%m-%d')}, {platform.node()}, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version})")
    print(f"command: python3 benchmarks/disk_use.py --days {args.days:g} --batch {args.batch}  ({took:.0f} s)")
    print()
    print("| figure | value |")
    print("|---|---|")
    print(f"| readings written | {r['readings']:,.0f} over {args.days:g} days, {r['channels']:.0f} channels (example registry) |")
    print(f"| journal file | {r['bytes'] / 1e6:.1f} MB |")
    print(f"| **bytes per reading** | **{per:.1f}** (value, time, series, arrival time, the unique (series, time) index) |")
    print(f"| one channel, a year at 10 min | {ch10 / 1e6:.1f} MB |")
    print(f"| one channel, a year at 1 min (accelerated sampling all year: an upper bound) | {ch1 / 1e6:.1f} MB |")
    print(f"| GNSS receiver (3 channels) at 10 min, a year | {3 * ch10 / 1e6:.1f} MB |")
    print(f"| crack meter or rain gauge (1 channel) at 10 min, a year | {ch10 / 1e6:.1f} MB |")
    print(f"| 1,000 devices of 4 channels at 10 min, a year | {1000 * 4 * ch10 / 1e9:.1f} GB |")
    return 0 if r["readings"] > 0 and math.isfinite(per) else 1


if __name__ == "__main__":
    sys.exit(main())
