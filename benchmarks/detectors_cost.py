"""Cost of the full detector bank per reading per channel, and its state size.

    python3 benchmarks/detectors_cost.py [--readings N] [--rounds R]

For each channel kind the bank is exactly what site fusion builds (quality guard + every
detector of the kind, from ``detectors.fusion.detectors_for``), fed a realistic 10-minute
series: a stable GNSS component with 3 mm noise, an extensometer, a rain gauge, a
piezometer. Time per reading is the median over rounds of (total time / readings); rounds
alternate kinds so a noisy machine hurts them alike. State is the size of the JSON
snapshots after 7 days of 10-minute readings (1008 readings).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.registry import parse_registry  # noqa: E402
from detectors.fusion import detectors_for  # noqa: E402
from detectors.quality import QualityGuard  # noqa: E402

T0 = 1.7e9
STEP = 600.0

KINDS = {
    "gnss_e": ("mm", lambda rng, n: rng.normal(0, 3.0, n)),
    "displacement": ("mm", lambda rng, n: np.cumsum(np.full(n, 0.01)) + rng.normal(0, 0.1, n)),
    "rain": ("mm", lambda rng, n: np.where(rng.random(n) < 0.05, np.round(rng.exponential(1.0, n) / 0.2) * 0.2, 0.0)),
    "pore_pressure": ("kPa", lambda rng, n: 120 + np.cumsum(rng.normal(0, 0.05, n))),
}


def _registry():
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


def _bank(reg, kind):
    info = reg.channel("B", f"D-{kind}", kind)
    guard = QualityGuard.for_kind(info.kind, interval_s=info.interval_s, low=info.low, high=info.high)
    return guard, [d for _, d in detectors_for(info, reg)]


def _feed(guard, dets, t, v):
    for a, b in zip(t, v):
        g = guard.update(a, b)
        if not g.evidence.get("suspect"):
            for d in dets:
                d.update(a, b)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    reg = _registry()
    rng = np.random.default_rng(0)
    series = {k: (T0 + np.arange(args.readings) * STEP, gen(rng, args.readings)) for k, (_, gen) in KINDS.items()}
    per: dict[str, list[float]] = {k: [] for k in KINDS}
    for _ in range(args.rounds):
        for k in KINDS:
            t, v = series[k]
            tl, vl = t.tolist(), v.tolist()
            guard, dets = _bank(reg, k)
            t0 = time.perf_counter()
            _feed(guard, dets, tl, vl)
            per[k].append((time.perf_counter() - t0) / len(tl) * 1e6)
    print(f"# detector bank cost — {platform.processor() or platform.machine()}, Python {platform.python_version()}, {args.readings} readings x {args.rounds} rounds")
    print("| kind | detectors | median µs/reading | min | max | state after 7 days (bytes) |")
    print("|---|---|---|---|---|---|")
    for k in KINDS:
        guard, dets = _bank(reg, k)
        t, v = series[k]
        _feed(guard, dets, t[:1008].tolist(), v[:1008].tolist())
        state = len(json.dumps(guard.snapshot())) + sum(len(json.dumps(d.snapshot())) for d in dets)
        names = "guard + " + " + ".join(type(d).__name__.replace("Detector", "") for d in dets)
        xs = per[k]
        print(f"| {k} | {names} | {statistics.median(xs):.1f} | {min(xs):.1f} | {max(xs):.1f} | {state} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
