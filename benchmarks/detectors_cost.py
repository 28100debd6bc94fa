"""Cost of the full detector bank per reading per channel, and its state size.

    python3 benchmarks/detectors_cost.py [--readings N] [--rounds R] [--baseline DIR]

For each channel kind the bank is exactly what site fusion builds (quality guard + every
stage of the kind, from ``detectors.fusion.detectors_for``), fed a realistic 10-minute
series: a stable GNSS component with 3 mm noise, an extensometer, a rain gauge, a
piezometer. Time per reading is the median over rounds of (CPU time / readings) — CPU time of
the process, so the time the machine's other tenants hold the cores is not counted; rounds
alternate kinds so what noise remains (caches, frequency) hurts them alike. State is the size of the JSON
snapshots after 7 days of 10-minute readings (1008 readings): the guard's plus every stage's,
which is what site fusion's snapshot holds for the channel's detectors.

``--baseline DIR``: the same bank from another checkout (e.g. ``git worktree add /tmp/old
HEAD``), run in a child process per round, interleaved with this tree's rounds, so both
see the same machine load. Each round of either tree runs in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if "--root" in sys.argv:  # a child measuring another checkout: import its packages
    sys.path.insert(0, sys.argv[sys.argv.index("--root") + 1])
else:
    sys.path.insert(0, str(ROOT))

from config.registry import parse_registry  # noqa: E402
from detectors.fusion import detectors_for  # noqa: E402
from detectors.quality import QualityGuard  # noqa: E402

T0 = 1.7e9
STEP = 600.0
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


def _child(root: str, kind: str, readings: int) -> tuple[float, int]:
    out = subprocess.run(
        [sys.executable, __file__, "--root", root, "--one", kind, "--readings", str(readings)], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(out[0]), int(out[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--readings", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--baseline", metavar="DIR", help="another checkout to measure side by side (child processes)")
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    reg = _registry()
    series = _series(args.readings)
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
        f"{args.readings} readings x {args.rounds} rounds"
    )
    if args.baseline:
        print(f"# baseline: {args.baseline} (interleaved rounds, each in a fresh process)")
        print("| kind | baseline median µs/reading (min) | this tree median µs/reading (min) | baseline state (bytes) | this tree state (bytes) |")
        print("|---|---|---|---|---|")
        for k in KINDS:
            _, size = _state(reg, series, k)
            xs, bs = per[k], base[k]
            print(f"| {k} | {statistics.median(bs):.1f} ({min(bs):.1f}) | {statistics.median(xs):.1f} ({min(xs):.1f}) | {base_state[k]} | {size} |")
        return 0
    print("| kind | stages | median µs/reading | min | max | state after 7 days (bytes) |")
    print("|---|---|---|---|---|---|")
    for k in KINDS:
        names, size = _state(reg, series, k)
        xs = per[k]
        print(f"| {k} | {names} | {statistics.median(xs):.1f} | {min(xs):.1f} | {max(xs):.1f} | {size} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
