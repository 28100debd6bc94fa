"""Cost of the full detector bank per reading per channel, and its state size.

    python3 benchmarks/detectors_cost.py [--readings N] [--rounds R] [--step S] [--baseline DIR] [--memory]

For each channel kind the bank is exactly what site fusion builds (quality guard + every
stage of the kind, from ``geowarn.detectors.fusion.detectors_for``), fed a realistic 10-minute
series: a stable GNSS component with 3 mm noise, an extensometer, a rain gauge, a
piezometer. Time per reading is the median over rounds of (CPU time / readings) — CPU time of
the process, so the time the machine's other tenants hold the cores is not counted; rounds
alternate kinds so what noise remains (caches, frequency) hurts them alike. State is the size of the JSON
snapshots after 7 days of 10-minute readings (1008 readings): the guard's plus every stage's,
which is what site fusion's snapshot holds for the channel's detectors.

``--baseline DIR``: the same bank from another checkout (e.g. ``git worktree add /tmp/old
HEAD``), run in a child process per round, interleaved with this tree's rounds, so both
see the same machine load. Each round of either tree runs in a fresh process. The checkout
may have either layout: ``geowarn.detectors`` mapped from ``detectors/`` (as now), or the
top-level ``detectors``/``config`` packages of before the namespace move. Either tree's bank
is imported from its own folders, never from the installed geowarn.

``--memory``: instead of time, the live memory one channel's bank holds after 7 days of readings:
``MEMORY_BANKS`` banks of each kind are built and fed in a fresh process under ``tracemalloc``
(each bank its own float objects, as decoding makes them), and the bytes still allocated (Python objects, lists, arrays, numpy buffers) are divided by
the number of banks — what a national fleet pays per channel heard, which the JSON state size
above is not; and the CPU to build one bank and to restore one from its snapshot, what a
restart pays per channel. With ``--baseline`` both trees are measured, each in its own child.

``--instructions``: also count the machine instructions per reading under valgrind
(``callgrind``; Debian package ``valgrind``): the count of a run of 1500 readings minus that of
500, after the same 1500 readings of warm-up, divided by 1000. Unlike CPU time it does not
depend on what else the machine runs, so it compares two trees exactly; hash randomisation,
address-space randomisation and BLAS threads are switched off so that a rerun gives the same
count. About a minute per kind and tree.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _use_checkout(root: str) -> str:
    """Make the detector bank import from the checkout at ``root``; the prefix of its modules.

    Two layouts are understood. Since the namespace move, setuptools maps each top folder into
    ``geowarn.*`` (``detectors/`` is ``geowarn.detectors``): then ``geowarn`` is made a package
    whose path is the checkout itself, ahead of any installed (editable) geowarn, so that
    ``geowarn.detectors`` is ``<root>/detectors``. Before it, ``detectors``, ``config``… were
    top-level packages: then ``root`` goes first on ``sys.path``.
    """
    pyproject = Path(root) / "pyproject.toml"
    if pyproject.exists() and '"geowarn.detectors"' in pyproject.read_text():
        spec = importlib.machinery.ModuleSpec("geowarn", None, is_package=True)
        spec.submodule_search_locations = [str(Path(root).resolve())]
        sys.modules["geowarn"] = importlib.util.module_from_spec(spec)
        return "geowarn."
    sys.path.insert(0, str(Path(root).resolve()))
    return ""


# A child measuring another checkout (--root DIR) imports that checkout's bank; else this tree's.
_PREFIX = _use_checkout(sys.argv[sys.argv.index("--root") + 1] if "--root" in sys.argv else str(ROOT))
parse_registry = importlib.import_module(_PREFIX + "config.registry").parse_registry
detectors_for = importlib.import_module(_PREFIX + "detectors.fusion").detectors_for
QualityGuard = importlib.import_module(_PREFIX + "detectors.quality").QualityGuard

T0 = 1.7e9
#: Seconds between readings: 10 minutes normally; ``--step 60`` for a storm's minute sampling,
#: where a window holds ten times the readings.
STEP = float(sys.argv[sys.argv.index("--step") + 1]) if "--step" in sys.argv else 600.0
STATE_READINGS = 1008  # 7 days of 10-minute readings

KINDS = {
    "gnss_e": ("mm", lambda rng, n: rng.normal(0, 3.0, n)),
    "displacement": ("mm", lambda rng, n: np.cumsum(np.full(n, 0.01)) + rng.normal(0, 0.1, n)),
    "rain": ("mm", lambda rng, n: np.where(rng.random(n) < 0.05, np.round(rng.exponential(1.0, n) / 0.2) * 0.2, 0.0)),
    "pore_pressure": ("kPa", lambda rng, n: 120 + np.cumsum(rng.normal(0, 0.05, n))),
}


def _registry() -> Any:
    return parse_registry(
        {
            "sites": [
                {
                    "site": "B",
                    "name": "bench",
                    "admin": "420527",
                    "lat": 30.0,
                    "lon": 110.0,
                    "devices": [
                        {"device": f"D-{k}", "channels": [{"channel": k, "kind": k, "unit": u, "interval_s": STEP}]} for k, (u, _) in KINDS.items()
                    ],
                }
            ]
        },
        "<bench>",
    )


def _bank(reg: Any, kind: str) -> tuple[Any, list[Any]]:
    info = reg.channel("B", f"D-{kind}", kind)
    guard = QualityGuard.for_kind(info.kind, interval_s=info.interval_s, low=info.low, high=info.high)
    return guard, [d for _, d in detectors_for(info, reg)]


def _feed(guard: Any, dets: list[Any], t: list[float], v: list[float]) -> None:
    for a, b in zip(t, v):
        g = guard.update(a, b)
        if not g.evidence.get("suspect"):
            for d in dets:
                d.update(a, b)


def _series(readings: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {k: (T0 + np.arange(readings) * STEP, gen(rng, readings)) for k, (_, gen) in KINDS.items()}


def _round(reg: Any, series: dict[str, tuple[np.ndarray, np.ndarray]], kind: str) -> float:
    """µs per reading of one fresh bank fed the whole series."""
    t, v = series[kind]
    tl, vl = t.tolist(), v.tolist()
    guard, dets = _bank(reg, kind)
    t0 = time.process_time()
    _feed(guard, dets, tl, vl)
    return (time.process_time() - t0) / len(tl) * 1e6


def _state(reg: Any, series: dict[str, tuple[np.ndarray, np.ndarray]], kind: str) -> tuple[str, int]:
    guard, dets = _bank(reg, kind)
    t, v = series[kind]
    _feed(guard, dets, t[:STATE_READINGS].tolist(), v[:STATE_READINGS].tolist())
    size = len(json.dumps(guard.snapshot())) + sum(len(json.dumps(d.snapshot())) for d in dets)
    names = "guard + " + " + ".join(type(d).__name__.replace("Detector", "") for d in dets)
    return names, size


MEMORY_BANKS = 200


def _memory(reg: Any, series: dict[str, tuple[np.ndarray, np.ndarray]], kind: str) -> tuple[int, float, float]:
    """Live bytes per channel (``MEMORY_BANKS`` banks fed ``STATE_READINGS`` readings each), and
    the CPU µs to build one bank and to restore one from its snapshot (what a restart pays)."""
    import gc
    import tracemalloc

    t, v = series[kind]
    tl, vl = t[:STATE_READINGS].tolist(), v[:STATE_READINGS].tolist()
    guard, dets = _bank(reg, kind)  # warm: imports, caches and interned strings are not per channel
    _feed(guard, dets, tl, vl)
    snap = (guard.snapshot(), [d.snapshot() for d in dets])
    t0 = time.process_time()
    for _ in range(MEMORY_BANKS):
        _bank(reg, kind)
    t1 = time.process_time()
    for _ in range(MEMORY_BANKS):
        guard, dets = _bank(reg, kind)
        guard.restore(snap[0])
        for d, s in zip(dets, snap[1]):
            d.restore(s)
    t2 = time.process_time()
    build_us, restore_us = (t1 - t0) / MEMORY_BANKS * 1e6, ((t2 - t1) - (t1 - t0)) / MEMORY_BANKS * 1e6
    gc.collect()
    tracemalloc.start()
    banks = []
    for _ in range(MEMORY_BANKS):
        guard, dets = _bank(reg, kind)
        # Each bank its own float objects, as each reading's decoding makes them in the service:
        # a window that keeps a reading's floats alive pays for them (fed the same objects, the
        # banks would share them, and they would count once for all).
        _feed(guard, dets, [x * 1.0 for x in tl], [x * 1.0 for x in vl])
        banks.append((guard, dets))
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return round(held / len(banks)), build_us, restore_us


def _memory_child(root: str, kind: str) -> tuple[int, float, float]:
    out = subprocess.run([sys.executable, __file__, "--root", root, "--mem", kind, "--step", str(STEP)], check=True, capture_output=True, text=True).stdout
    b, build, restore = out.split()
    return int(b), float(build), float(restore)


def _child(root: str, kind: str, readings: int) -> tuple[float, int]:
    out = subprocess.run(
        [sys.executable, __file__, "--root", root, "--one", kind, "--readings", str(readings), "--step", str(STEP)], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(out[0]), int(out[1])


IR_WARMUP = 1500


def _ir_child(kind: str, n: int) -> None:
    """Under valgrind: warm a bank up, then feed ``n`` more readings (see ``--instructions``)."""
    reg = _registry()
    series = _series(IR_WARMUP + n)
    t, v = series[kind]
    tl, vl = t.tolist(), v.tolist()
    guard, dets = _bank(reg, kind)
    _feed(guard, dets, tl[:IR_WARMUP], vl[:IR_WARMUP])
    _feed(guard, dets, tl[IR_WARMUP:], vl[IR_WARMUP:])


def _instructions(root: str, kind: str) -> int:
    """Instructions per reading of ``root``'s bank for ``kind`` (see ``--instructions``)."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    counts = []
    for n in (500, 1500):
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__, "--root", root, "--ir", kind, str(n), "--step", str(STEP)]
        if shutil.which("setarch"):
            cmd = ["setarch", platform.machine(), "-R", *cmd]
        err = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stderr
        m = re.search(r"Collected : (\d+)", err)
        if m is None:
            raise RuntimeError(f"no instruction count in valgrind's output:\n{err[-2000:]}")
        counts.append(int(m.group(1)))
    return round((counts[1] - counts[0]) / 1000)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--readings", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--baseline", metavar="DIR", help="another checkout to measure side by side (child processes)")
    ap.add_argument("--instructions", action="store_true", help="also count instructions per reading under valgrind (deterministic)")
    ap.add_argument("--step", type=float, default=600.0, help="seconds between readings (default 600; 60: a storm's minute sampling)")
    ap.add_argument("--memory", action="store_true", help="report live bytes per channel after 7 days instead of time")
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--mem", help=argparse.SUPPRESS)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--ir", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ir:  # child under valgrind
        _ir_child(args.ir[0], int(args.ir[1]))
        return 0
    if args.instructions and not shutil.which("valgrind"):
        ap.error("--instructions needs valgrind (apt-get install valgrind)")
    reg = _registry()
    series = _series(args.readings)
    if args.mem:  # child: live bytes per channel of one kind
        b, build, restore = _memory(reg, series, args.mem)
        print(f"{b} {build:.1f} {restore:.1f}")
        return 0
    if args.memory:
        print(f"# live memory per channel — Python {platform.python_version()}, {MEMORY_BANKS} banks per kind, {STATE_READINGS} readings one every {STEP:g} s")
        if args.baseline:
            print(f"# baseline: {args.baseline}")
            print("| kind | baseline bytes/channel | this tree bytes/channel | ratio | baseline build + restore µs | this tree build + restore µs |")
            print("|---|---|---|---|---|---|")
        else:
            print("| kind | bytes/channel | build µs | restore µs |\n|---|---|---|---|")
        for k in KINDS:
            mine, build, restore = _memory_child(str(ROOT), k)
            if args.baseline:
                b, bb, br = _memory_child(args.baseline, k)
                print(f"| {k} | {b:,} | {mine:,} | {mine / b:.2f} | {bb:.0f} + {br:.0f} | {build:.0f} + {restore:.0f} |")
            else:
                print(f"| {k} | {mine:,} | {build:.0f} | {restore:.0f} |")
        return 0
    if args.one:  # child: one round of one kind, then the state size
        names, size = _state(reg, series, args.one)
        print(f"{_round(reg, series, args.one):.4f} {size} {names}")
        return 0
    here = str(ROOT)
    per: dict[str, list[float]] = {k: [] for k in KINDS}
    base: dict[str, list[float]] = {k: [] for k in KINDS}
    base_state: dict[str, int] = {}
    for _ in range(args.rounds):
        for k in KINDS:
            if args.baseline:
                us, base_state[k] = _child(args.baseline, k, args.readings)
                base[k].append(us)
                per[k].append(_child(here, k, args.readings)[0])
            else:
                per[k].append(_round(reg, series, k))
    print(
        f"# detector bank cost — {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"{args.readings} readings x {args.rounds} rounds, one every {STEP:g} s"
    )
    if args.baseline:
        print(f"# baseline: {args.baseline} (interleaved rounds, each in a fresh process)")
        head = "| kind | baseline median µs/reading (min) | this tree median µs/reading (min) | ratio of medians (per round) | baseline state (bytes) | this tree state (bytes) |"
        print(head + (" baseline instructions/reading | this tree instructions/reading | ratio |" if args.instructions else ""))
        print("|---" * (6 + 3 * args.instructions) + "|")
        for k in KINDS:
            _, size = _state(reg, series, k)
            xs, bs = per[k], base[k]
            rounds = ", ".join(f"{x / b:.2f}" for x, b in zip(xs, bs))
            row = (
                f"| {k} | {statistics.median(bs):.1f} ({min(bs):.1f}) | {statistics.median(xs):.1f} ({min(xs):.1f}) | "
                f"{statistics.median(xs) / statistics.median(bs):.2f} ({rounds}) | {base_state[k]} | {size} |"
            )
            if args.instructions:
                bi, xi = _instructions(args.baseline, k), _instructions(here, k)
                row += f" {bi:,} | {xi:,} | {xi / bi:.2f} |"
            print(row)
        return 0
    print("| kind | stages | median µs/reading | min | max | state after 7 days (bytes) |" + (" instructions/reading |" if args.instructions else ""))
    print("|---" * (6 + args.instructions) + "|")
    for k in KINDS:
        names, size = _state(reg, series, k)
        xs = per[k]
        row = f"| {k} | {names} | {statistics.median(xs):.1f} | {min(xs):.1f} | {max(xs):.1f} | {size} |"
        if args.instructions:
            row += f" {_instructions(here, k):,} |"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
