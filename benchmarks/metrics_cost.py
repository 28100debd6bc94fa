"""Cost of a ``/metrics`` scrape against the fleet's size, side by side with an older collector.

    python3 benchmarks/metrics_cost.py [--devices 10000,50000,100000,250000] [--rounds 5]
                                       [--baseline REV] [--markdown FILE]

For each size a registry of synthetic devices (``simulators.scenario.synthetic_sites``: sites of
5 devices, 4 channels each, 600 s interval) and a real journal written by the store's own
writer (``Journal.append``): two readings per channel (one device in five silent for two
hours), two status heartbeats per device (one in ten with a low battery, one in ten with a
faulty sensor). Then, ``--rounds`` times, the traffic of one 15 s scrape interval is appended
(a reading from one channel in 40, a heartbeat from one device in 240: 10-minute readings and
hourly heartbeats) and each collector is scraped (its ``collect`` and ``generate_latest``'s text: the
collector's part is also given alone), old and new in turn so both see the same machine load and the same
files; their figures must be equal (the clock is fixed per round), or the script fails.

The old collector is ``console/metrics.py`` as of ``--baseline`` (default: the commit before
the scrape was made O(1)), loaded from git into a module of its own and run against this
tree's readers. Reported: the median wall time of a scrape, the new collector's first scrape
without its warm-up thread (its first look: every channel's newest reading, every device's
latest status; the daemon has it done on a thread at start), the SQL statements one scrape runs (a trace
callback on each connection the readers open) and the memory the new collector keeps between
scrapes (tracemalloc, its first scrape).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Self

from geowarn.config.registry import Registry, parse_registry
from geowarn.console import metrics as new_metrics
from geowarn.core import sqlite as core_sqlite
from geowarn.ingest.journal import JOURNAL_FILE, Journal
from geowarn.simulators.scenario import Template, synthetic_sites
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
#: console/metrics.py before the scrape was made O(1) (one query per channel).
DEFAULT_BASELINE = "e9805ea"
HOUR_MS = 3_600_000


def _old_module(rev: str) -> ModuleType:
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:console/metrics.py"], check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="metrics-before-")) / "metrics_before.py"
    path.write_text(src, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("geowarn_metrics_before", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _status(i: int, hour: int) -> str:
    if i % 10 == 3:
        return json.dumps({"battery_v": 10.5, "hour": hour})
    if i % 10 == 7:
        return json.dumps({"battery_v": 12.7, "sensor_state": {"L1_LF_1": -2}, "hour": hour})
    return json.dumps({"battery_v": 12.7, "sensor_state": {"L1_LF_1": 0}, "hour": hour})


def _build(data: Path, registry: Registry, now_ms: int) -> tuple[list[int], list[tuple[str, str]]]:
    j = Journal(data / JOURNAL_FILE, sync="normal")
    try:
        ids = j.series_ids(registry)
        sids: list[int] = []
        devices = list(registry.channels)
        batch: list[tuple[int, int, float, int, int]] = []
        statuses: list[tuple[str, str, int, int, str]] = []
        for i, (key, chans) in enumerate(registry.channels.items()):
            age = 2 * HOUR_MS if i % 5 == 0 else 0
            for info in chans.values():
                sid = ids[info]
                sids.append(sid)
                for k in (2, 1):
                    t = now_ms - age - k * 600_000
                    batch.append((sid, t, 1.0, 0, t + 2000))
            for h in (2, 1):
                statuses.append((*key, now_ms - h * HOUR_MS, now_ms - h * HOUR_MS, _status(i, h)))
            if len(batch) >= 100_000:
                j.append(batch, statuses=statuses)
                batch, statuses = [], []
        j.append(batch, statuses=statuses)
    finally:
        j.close()
    return sids, devices


def _traffic(data: Path, sids: list[int], devices: list[tuple[str, str]], now_ms: int, rnd: random.Random) -> None:
    """One 15 s scrape interval's traffic: a reading from one channel in 40, a heartbeat from
    one device in 240."""
    j = Journal(data / JOURNAL_FILE, sync="normal")
    try:
        readings = [(sid, now_ms - 1000, 2.0, 0, now_ms) for sid in rnd.sample(sids, max(1, len(sids) // 40))]
        statuses = [(s, d, now_ms, now_ms, _status(rnd.randrange(10), 0)) for s, d in rnd.sample(devices, max(1, len(devices) // 240))]
        j.append(readings, statuses=statuses)
    finally:
        j.close()


class _Collected:
    """Metrics already collected, for ``generate_latest`` to write out."""

    def __init__(self, metrics: list[Any]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Any]:
        return self.metrics


def _samples(reg: Any) -> tuple[tuple[float, float], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """(the whole scrape's wall time, the collector's part), and the figures."""
    t0 = time.perf_counter()
    metrics = list(reg.collect())
    t1 = time.perf_counter()
    text = generate_latest(_Collected(metrics)).decode()  # type: ignore[arg-type]
    t2 = time.perf_counter()
    return (t2 - t0, t1 - t0), {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


class _Statements:
    """Counts the SQL statements run on the connections the readers open."""

    def __init__(self) -> None:
        self.n = 0
        self._real = core_sqlite.open_readonly

    def __enter__(self) -> Self:
        def opener(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn = self._real(*args, **kwargs)
            conn.set_trace_callback(lambda _s: setattr(self, "n", self.n + 1))
            return conn

        core_sqlite.open_readonly = opener  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        core_sqlite.open_readonly = self._real  # type: ignore[assignment]


def _machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"


def run(sizes: list[int], rounds: int, baseline: str, log: Callable[[str], None]) -> list[dict[str, Any]]:
    old = _old_module(baseline)
    results = []
    for n in sizes:
        rnd = random.Random(n)
        t0 = time.perf_counter()
        registry = parse_registry(synthetic_sites(Template(devices_per_site=5), n), f"<{n} devices>")
        t_reg = time.perf_counter() - t0
        tmp = Path(tempfile.mkdtemp(prefix=f"metrics-cost-{n}-"))
        try:
            data = tmp / "data"
            data.mkdir()
            now_s = time.time()
            now_ms = int(now_s * 1000)
            t0 = time.perf_counter()
            sids, devices = _build(data, registry, now_ms)
            t_build = time.perf_counter() - t0
            log(f"{n} devices: registry {t_reg:.1f} s, journal {t_build:.1f} s ({(data / JOURNAL_FILE).stat().st_size / 1e6:.0f} MB)")
            clock = [now_s]

            def now(clock: list[float] = clock) -> float:
                return clock[0]

            # No warm-up thread: the first scrape's figure is the first look's cost (what the
            # thread takes at start).
            new_reg = new_metrics.make_registry(data, registry, new_metrics.MainStats, now, warm_up=False)
            old_reg = old.make_registry(data, registry, old.MainStats, now)
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            mem_reg = new_metrics.make_registry(data, registry, new_metrics.MainStats, now, warm_up=False)
            generate_latest(mem_reg)
            kept = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            del mem_reg
            first_new, _ = _samples(new_reg)
            t_old: list[tuple[float, float]] = []
            t_new: list[tuple[float, float]] = []
            for r in range(rounds):
                clock[0] += 15.0
                _traffic(data, sids, devices, int(clock[0] * 1000), rnd)
                order = [(old_reg, t_old), (new_reg, t_new)]
                if r % 2:
                    order.reverse()
                figures = []
                for reg, times in order:
                    dt, samples = _samples(reg)
                    times.append(dt)
                    figures.append(samples)
                if figures[0] != figures[1]:
                    diff = {k: (figures[0].get(k), figures[1].get(k)) for k in set(figures[0]) | set(figures[1]) if figures[0].get(k) != figures[1].get(k)}
                    raise SystemExit(f"{n} devices, round {r}: old and new collectors disagree: {diff}")
            with _Statements() as st_old:
                generate_latest(old_reg)
            with _Statements() as st_new:
                generate_latest(new_reg)
            row = {
                "devices": n, "channels": len(sids),
                "old_s": statistics.median(x[0] for x in t_old), "new_s": statistics.median(x[0] for x in t_new),
                "old_collect_s": statistics.median(x[1] for x in t_old), "new_collect_s": statistics.median(x[1] for x in t_new),
                "new_first_s": first_new[0], "old_statements": st_old.n, "new_statements": st_new.n,
                "kept_mb": kept / 1e6,
            }
            log(json.dumps(row))
            results.append(row)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


def markdown(results: list[dict[str, Any]], baseline: str, rounds: int) -> str:
    lines = [
        f"Machine: {_machine()}. Median of {rounds} scrapes per collector, interleaved; old = `console/metrics.py` at {baseline}.",
        "",
        "| devices | channels | scrape before (collector) | scrape now (collector) | now, first look (a thread at start) | SQL statements a scrape, before / now | memory kept between scrapes |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['devices']:,} | {r['channels']:,} | {r['old_s'] * 1000:,.0f} ms ({r['old_collect_s'] * 1000:,.0f} ms) "
            f"| {r['new_s'] * 1000:,.1f} ms ({r['new_collect_s'] * 1000:,.1f} ms) | {r['new_first_s'] * 1000:,.0f} ms "
            f"| {r['old_statements']:,} / {r['new_statements']} | {r['kept_mb']:.1f} MB |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="10000,50000,100000,250000", help="fleet sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=5, help="scrapes per collector and size")
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision of the old console/metrics.py")
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.devices.split(",") if x.strip()]
    results = run(sizes, args.rounds, args.baseline, lambda s: print(s, file=sys.stderr, flush=True))
    table = markdown(results, args.baseline, args.rounds)
    print(table)
    if args.markdown:
        args.markdown.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
