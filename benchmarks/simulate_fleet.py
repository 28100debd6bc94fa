#!/usr/bin/env python3
"""Fleet simulation speed: a 10 000-device feed for an hour, and live publishing to Mosquitto.

Two measurements, each the median of ``--rounds`` rounds (issue 5, item 4):

* ``feed``: ``--stations`` devices of the ``stable`` scenario's template (GNSS e/n/u and a
  battery channel, 10-minute samples, hourly heartbeats) for ``--hour`` seconds of event time,
  written as JSONL and as CSV. Timed from building the synthetic registry to the closed file
  (what ``geowarn simulate --stations N --duration 1h --out FEED`` does). Target: < 10 s.
* ``publish only``: the same messages generated first, then only the publishing timed.
* ``live``: the same fleet published to a real Mosquitto (tests/services.py: a plain
  process on a free loopback port) as fast as it acknowledges: QoS 1, paho-mqtt 2, one
  process. Timed from the first publish until the broker has acknowledged every message.
  Target: >= 20 000 messages/s.

Checks (any failure exits non-zero): the feed holds every device's readings; the broker
acknowledged every message published.

    python3 benchmarks/simulate_fleet.py                 # 10 000 devices, 3 rounds
    python3 benchmarks/simulate_fleet.py --quick         # 1 000 devices, 1 round
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from services import Mosquitto  # noqa: E402  (tests/services.py: a real broker on a free port)
from simulators.engine import Simulation  # noqa: E402
from simulators.publish import LiveRun, Publisher, write_feed  # noqa: E402
from simulators.scenario import load_scenario  # noqa: E402


def feed_round(stations: int, duration: float, path: Path) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    sc = load_scenario("stable")
    sim = Simulation(sc, sc.registry(stations), duration_s=duration, strict_sites=False)
    w = write_feed(sim, path)
    took = time.perf_counter() - t0
    return took, w.messages, w.readings


def live_round(broker: Mosquitto, stations: int, duration: float) -> tuple[float, int]:
    sc = load_scenario("stable")
    sim = Simulation(sc, sc.registry(stations), duration_s=duration, strict_sites=False)
    run = LiveRun(sim, broker.url, speed=float("inf"), progress=False, client_id=f"bench-{os.getpid()}-{time.monotonic_ns()}", obey_commands=False)
    stats = run.run()
    if run.pub.acked != run.pub.published:
        raise SystemExit(f"broker acknowledged {run.pub.acked} of {run.pub.published}")
    return stats.wall_s, stats.messages


def publish_round(broker: Mosquitto, stations: int, duration: float) -> tuple[float, int]:
    """Publishing alone: the fleet's messages generated first, then timed to the last PUBACK."""
    sc = load_scenario("stable")
    sim = Simulation(sc, sc.registry(stations), duration_s=duration, strict_sites=False)
    msgs = sim.emit_until(sim.t_end) + sim.flush()
    pub = Publisher(broker.url, f"bench-pub-{os.getpid()}-{time.monotonic_ns()}")
    try:
        t0 = time.perf_counter()
        for m in msgs:
            pub.publish(m.topic, m.payload)
        if not pub.wait_acked(300.0):
            raise SystemExit(f"broker acknowledged {pub.acked} of {pub.published}")
        return time.perf_counter() - t0, len(msgs)
    finally:
        pub.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stations", type=int, default=10_000)
    ap.add_argument("--hour", type=float, default=3600.0, help="event time simulated (s)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.stations, args.rounds = 1000, 1
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="geowarn-bench-sim-") as tmp:
        d = Path(tmp)
        for fmt in ("jsonl", "csv"):
            times, msgs, readings = [], 0, 0
            for i in range(args.rounds):
                took, msgs, readings = feed_round(args.stations, args.hour, d / f"feed{i}.{fmt}")
                times.append(took)
                expected = args.stations * 4 * int(args.hour / 600)
                if not readings >= 0.95 * expected:
                    raise SystemExit(f"feed has {readings} readings, expected about {expected}")
            med = statistics.median(times)
            rows.append(f"| feed {fmt}, {args.stations} devices, {args.hour / 3600:g} h | {msgs} msgs, {readings} readings | {med:.2f} s | {readings / med:,.0f} readings/s | < 10 s: {'yes' if med < 10 else 'NO'} |")
            print(rows[-1], flush=True)
        broker = Mosquitto(d / "mosquitto", max_inflight_messages=1000)
        broker.start()
        try:
            rates, msgs = [], 0
            for _ in range(args.rounds):
                wall, msgs = live_round(broker, args.stations, args.hour)
                rates.append(msgs / wall)
            med = statistics.median(rates)
            rows.append(f"| live QoS 1 to Mosquitto, {args.stations} devices, {args.hour / 3600:g} h as fast as acked | {msgs} msgs | {msgs / med:.2f} s | {med:,.0f} msg/s | >= 20k msg/s: {'yes' if med >= 20_000 else 'NO'} |")
            print(rows[-1], flush=True)
            rates = []
            for _ in range(args.rounds):
                wall, msgs = publish_round(broker, args.stations, args.hour)
                rates.append(msgs / wall)
            med = statistics.median(rates)
            rows.append(f"| publish only (pre-generated), QoS 1, paho in the caller's thread | {msgs} msgs | {msgs / med:.2f} s | {med:,.0f} msg/s | >= 20k msg/s: {'yes' if med >= 20_000 else 'NO'} |")
            print(rows[-1], flush=True)
        finally:
            broker.stop()
    print()
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; median of {args.rounds} round(s)")
    print()
    print("| what | size | time | rate | target |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
