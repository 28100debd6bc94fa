#!/usr/bin/env python3
"""Fleet simulation speed: a 10 000-device feed for an hour, and publishing to Mosquitto.

Measurements, each the median of ``--rounds`` rounds (issue 5, item 4):

* ``feed``: ``--stations`` devices of the ``stable`` scenario's template (GNSS e/n/u and a
  battery channel, 10-minute samples, hourly heartbeats) for ``--hour`` seconds of event time,
  written as JSONL and as CSV. Timed from building the synthetic registry to the closed file
  (what ``geowarn simulate --stations N --duration 1h --out FEED`` does). Target: < 10 s.
* ``generate only``: the same fleet's messages generated in memory (``Simulation.emit_until``
  over the whole run, the one pass a live run at speed inf makes for this size), timed
  without building the registry and the simulation; no broker.
* ``publish only``: the same fleet's messages generated first, then only the publishing
  timed, from the first PUBLISH until the broker has acknowledged every message (QoS 1, one
  process, one connection): paho-mqtt 2 (``simulators.publish.Publisher``) and the pipelining
  ``simulators.fastmqtt.FastPublisher`` side by side, alternating within each round. This is
  what ``geowarn simulate --replay FEED --speed inf [--fast]`` does after reading the feed.
  Target: >= 20 000 messages/s.
* ``live``: generation and publishing together (``LiveRun`` at speed inf, what
  ``geowarn simulate --stations N --broker URL --speed inf [--fast]`` does), timed the same way.

Every publishing round is verified by a subscriber: ``mosquitto_sub`` (a separate C process,
QoS 1, ``geowarn/#``) records every message it receives, and the run fails unless it received
exactly the messages published: the same count and the same checksum (a sum of 64-bit BLAKE2b
digests of topic and payload, so a lost, doubled or altered message shows; the order is checked
and reported too). "delivered" is the rate up to the subscriber's last message. The broker is
a real Mosquitto (tests/services.py) on a free loopback port, ``max_inflight_messages 1000``.

    python3 benchmarks/simulate_fleet.py                 # 10 000 devices, 3 rounds
    python3 benchmarks/simulate_fleet.py --quick         # 1 000 devices, 1 round
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# geowarn.* comes from the installed package (pip install -e .); tests/ lends its service fixtures.
sys.path.insert(0, str(REPO / "tests"))

from services import Mosquitto  # noqa: E402  (tests/services.py: a real broker on a free port)
from geowarn.simulators.engine import Simulation
from geowarn.simulators.publish import LiveRun, open_publisher, write_feed
from geowarn.simulators.scenario import load_scenario

KINDS = ("paho", "fast")
_MASK = (1 << 64) - 1
READY_TOPIC = "bench/ready"


def digest(topic: str, payload: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(topic.encode() + b"\0" + payload, digest_size=8).digest(), "big")


@dataclass
class Fingerprint:
    """Count, order-free checksum and ordered checksum of a sequence of messages."""

    count: int = 0
    total: int = 0
    ordered: str = ""

    @classmethod
    def of(cls, msgs: list[tuple[str, bytes]]) -> Fingerprint:
        h = hashlib.blake2b(digest_size=16)
        total = 0
        for topic, payload in msgs:
            d = digest(topic, payload)
            total = (total + d) & _MASK
            h.update(d.to_bytes(8, "big"))
        return cls(len(msgs), total, h.hexdigest())


def fleet(stations: int, duration: float) -> Simulation:
    sc = load_scenario("stable")
    return Simulation(sc, sc.registry(stations), duration_s=duration, strict_sites=False)


def fleet_messages(stations: int, duration: float) -> list[tuple[str, bytes]]:
    """Every message of the fleet's run, in publishing order (the run is deterministic)."""
    sim = fleet(stations, duration)
    return [(m.topic, m.payload) for m in sim.emit_until(sim.t_end) + sim.flush()]


class Verifier:
    """``mosquitto_sub`` recording every message on ``geowarn/#`` for one round."""

    def __init__(self, broker: Mosquitto, expected: int, path: Path) -> None:
        self.path = path
        self.expected = expected
        self._out = open(path, "wb")
        # The retained ready message comes first: once it is in the file, the subscription is
        # in place; -C makes the subscriber exit after the last expected message.
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", "1", "-i", f"bench-verify-{time.monotonic_ns()}",
             "-t", READY_TOPIC, "-t", "geowarn/#", "-F", "%t %x", "-C", str(expected + 1)],
            stdout=self._out,
        )
        deadline = time.monotonic() + 10
        while path.stat().st_size == 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("the verifying subscriber did not start")
            time.sleep(0.01)  # a file another process writes: nothing to wait on

    def finish(self, timeout: float = 120.0) -> tuple[float, Fingerprint]:
        """Wait for the last message; returns (monotonic time it arrived by, fingerprint)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        done = time.monotonic()
        self._out.close()
        msgs: list[tuple[str, bytes]] = []
        for line in self.path.read_bytes().splitlines():
            topic, _, hexed = line.decode().partition(" ")
            if topic != READY_TOPIC:
                msgs.append((topic, bytes.fromhex(hexed)))
        self.path.unlink()
        return done, Fingerprint.of(msgs)


@dataclass
class Round:
    kind: str
    messages: int
    acked_s: float
    delivered_s: float
    in_order: bool

    @property
    def rate(self) -> float:
        return self.messages / self.acked_s

    @property
    def delivered_rate(self) -> float:
        return self.messages / self.delivered_s


def verified(broker: Mosquitto, tmp: Path, kind: str, expected: Fingerprint, run: Callable[[], tuple[float, float]]) -> Round:
    """Run one publishing round (``run`` returns its monotonic start and the seconds to the last
    PUBACK) under the verifying subscriber; exit non-zero unless every message arrived intact."""
    v = Verifier(broker, expected.count, tmp / "verify.txt")
    t0, acked_s = run()
    done, got = v.finish()
    if (got.count, got.total) != (expected.count, expected.total):
        raise SystemExit(f"{kind}: the subscriber got {got.count} messages (checksum {got.total:016x}), expected {expected.count} ({expected.total:016x})")
    return Round(kind, expected.count, acked_s, done - t0, got.ordered == expected.ordered)


def publish_round(broker: Mosquitto, msgs: list[tuple[str, bytes]], kind: str) -> tuple[float, float]:
    pub = open_publisher(broker.url, f"bench-pub-{os.getpid()}-{time.monotonic_ns()}", fast=kind == "fast")
    try:
        t0 = time.monotonic()
        for topic, payload in msgs:
            pub.publish(topic, payload)
        if not pub.wait_acked(300.0):
            raise SystemExit(f"{kind}: broker acknowledged {pub.acked} of {pub.published}")
        return t0, time.monotonic() - t0
    finally:
        pub.close()


def live_round(broker: Mosquitto, stations: int, duration: float, kind: str) -> tuple[float, float]:
    sim = fleet(stations, duration)
    run = LiveRun(sim, broker.url, speed=float("inf"), progress=False, client_id=f"bench-{os.getpid()}-{time.monotonic_ns()}", obey_commands=False, fast=kind == "fast")
    t0 = time.monotonic()
    stats = run.run()
    if run.pub.acked != run.pub.published:
        raise SystemExit(f"{kind}: broker acknowledged {run.pub.acked} of {run.pub.published}")
    return t0, stats.wall_s


def generate_round(stations: int, duration: float) -> tuple[float, int]:
    sim = fleet(stations, duration)
    t0 = time.perf_counter()
    n = len(sim.emit_until(sim.t_end)) + len(sim.flush())
    return time.perf_counter() - t0, n


def feed_round(stations: int, duration: float, path: Path) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    sim = fleet(stations, duration)
    w = write_feed(sim, path)
    took = time.perf_counter() - t0
    return took, w.messages, w.readings


def _row(what: str, size: str, rounds: list[Round]) -> str:
    rate = statistics.median(r.rate for r in rounds)
    delivered = statistics.median(r.delivered_rate for r in rounds)
    order = "all in order" if all(r.in_order for r in rounds) else "ORDER DIFFERS"
    return (
        f"| {what} | {size} | {rounds[0].messages / rate:.2f} s | {rate:,.0f} msg/s acked, {delivered:,.0f} msg/s delivered | "
        f"count + checksum ok, {order} | >= 20k msg/s: {'yes' if rate >= 20_000 else 'NO'} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stations", type=int, default=10_000)
    ap.add_argument("--hour", type=float, default=3600.0, help="event time simulated (s)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-feed", action="store_true", help="only the publishing measurements")
    args = ap.parse_args()
    if args.quick:
        args.stations, args.rounds = 1000, 1
    rows: list[str] = []
    size = f"{args.stations} devices, {args.hour / 3600:g} h"
    with tempfile.TemporaryDirectory(prefix="geowarn-bench-sim-") as tmp:
        d = Path(tmp)
        for fmt in () if args.skip_feed else ("jsonl", "csv"):
            times, msgs, readings = [], 0, 0
            for i in range(args.rounds):
                took, msgs, readings = feed_round(args.stations, args.hour, d / f"feed{i}.{fmt}")
                times.append(took)
                expected = args.stations * 4 * int(args.hour / 600)
                if not readings >= 0.95 * expected:
                    raise SystemExit(f"feed has {readings} readings, expected about {expected}")
            med = statistics.median(times)
            rows.append(f"| feed {fmt} | {size}: {msgs} msgs, {readings} readings | {med:.2f} s | {readings / med:,.0f} readings/s | - | < 10 s: {'yes' if med < 10 else 'NO'} |")
            print(rows[-1], flush=True)
        gen = [generate_round(args.stations, args.hour) for _ in range(args.rounds)]
        took = statistics.median(t for t, _ in gen)
        rows.append(f"| generate only (in memory) | {size}: {gen[0][1]} msgs | {took:.2f} s | {gen[0][1] / took:,.0f} msg/s | - | - |")
        print(rows[-1], flush=True)
        broker = Mosquitto(d / "mosquitto", max_inflight_messages=1000)
        broker.start()
        try:
            subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1", "-r", "-t", READY_TOPIC, "-m", "1"], check=True, timeout=10)
            msgs_list = fleet_messages(args.stations, args.hour)
            expected = Fingerprint.of(msgs_list)
            results: dict[str, dict[str, list[Round]]] = {"publish": {k: [] for k in KINDS}, "live": {k: [] for k in KINDS}}
            for i in range(args.rounds):
                # Alternate which goes first, so neither always meets a broker fresh from the other.
                for kind in KINDS if i % 2 == 0 else KINDS[::-1]:
                    results["publish"][kind].append(verified(broker, d, kind, expected, lambda k=kind: publish_round(broker, msgs_list, k)))
                    print(f"  publish {kind}: {results['publish'][kind][-1].rate:,.0f} msg/s", flush=True)
                for kind in KINDS if i % 2 == 0 else KINDS[::-1]:
                    results["live"][kind].append(verified(broker, d, kind, expected, lambda k=kind: live_round(broker, args.stations, args.hour, k)))
                    print(f"  live {kind}: {results['live'][kind][-1].rate:,.0f} msg/s", flush=True)
        finally:
            broker.stop()
    labels = {
        ("publish", "paho"): "publish only (pre-generated), QoS 1, paho-mqtt 2 in the caller's thread",
        ("publish", "fast"): "publish only (pre-generated), QoS 1, FastPublisher (pipelined MQTT 3.1.1)",
        ("live", "paho"): "live: generate + publish (LiveRun, speed inf), paho-mqtt 2",
        ("live", "fast"): "live: generate + publish (LiveRun, speed inf), FastPublisher",
    }
    for what in ("publish", "live"):
        for kind in KINDS:
            rows.append(_row(labels[(what, kind)], f"{size}: {expected.count} msgs", results[what][kind]))
        paho = statistics.median(r.rate for r in results[what]["paho"])
        fast = statistics.median(r.rate for r in results[what]["fast"])
        rows.append(f"| {what}: FastPublisher / paho | | | **{fast / paho:.1f}x** | | |")
    print()
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"Mosquitto on loopback with a verifying mosquitto_sub; median of {args.rounds} round(s)")
    print()
    print("| what | size | time | rate | verified | target |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
