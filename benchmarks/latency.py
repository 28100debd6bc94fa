#!/usr/bin/env python3
"""Latency from a reading's publication to its level change and to the notification (issue 17, item 5).

Goal: p99 <= 1 s under steady national-average load; bounded, and recovering, during a burst.

What runs, all real and on loopback:

* a Mosquitto broker (tests/services.py) on a free port, ``max_inflight_messages 1000``;
* a ``geowarn run`` daemon (tests/daemonproc.py) with a registry of ``--devices`` background
  devices (``geowarn simulate --stations``'s template: GNSS e/n/u and a battery channel, sites
  of 5 devices) plus one probe site per probe (below), and a roster whose four tiers
  (county 420527, city 420500, province 420000, national 100000) each notify by a signed
  webhook to an HTTP receiver started here (``http.server`` on 127.0.0.1, keep-alive);
* a background publisher (``simulators.fastmqtt.FastPublisher``, the publisher of ``geowarn
  simulate --fast``): every background device's four channels in one native JSON v1 message,
  stamped with the wall clock, ``--rate`` messages/s in all (420/s: 250,000 devices every
  10 minutes) and ``--burst-rate`` messages/s during the burst (10,000/s: a storm's minute
  sampling), paced in 5 ms steps; the rate it reached is reported, since a shared machine
  may not publish the burst in full.
* probes, every ``--probe-every`` seconds on their own connection: one reading of a probe
  site's accelerometer (kind ``acceleration``: judged by its thresholds only, no spike or
  stuck guard) at 150 mg against thresholds yellow 100 / orange 200 / red 300 mg. That one
  reading raises the site from level 0 to yellow, which notifies the first two tiers (county
  and city: ``AlertPolicy.first_tiers``). Each probe uses a site of its own, never judged
  before, so probes are independent: a site at a level would not change again.

Per probe: ``t_publish`` (just before the PUBLISH goes to the socket, the time in the reading),
``t_level`` (the retained ``geowarn/alerts/{admin}/{site}`` event reaching a subscriber: the
daemon writes ``alerts.jsonl`` and publishes it in the same step), ``t_notify`` (the county's
webhook request reaching the receiver; ``t_notify_all`` when both first tiers' have). To say
where the time goes, each probe's reading is also split into stages by what the daemon
records: ``received`` (the ack path's arrival stamp, ``readings.received_ms``), ``stored``
(the first poll, every 50 ms, of the journal's ``max(id)`` that covers the probe's row), then
level and notification. A poll of the journal's ``detection.stats`` state row (written at each
detection snapshot, ``GEOWARN_SNAPSHOT_INTERVAL_S``) marks when snapshots end; a probe whose
stored→level stretch contains a snapshot's end is counted as "waited for a snapshot".

Phases, in one daemon run, per round (``--rounds``, each round with fresh probe sites):
``steady`` (``--steady-s`` at ``--rate``), ``burst`` (``--burst-s`` at ``--burst-rate``), then
``recovery`` (``--rate`` again, until the probes are back under the round's steady p99, or
``--recovery-s``). "Recovered after" is the time from the burst's end to the publication of
the first probe from which on every probe's publish→notification latency is at or under the
round's steady p99. Figures are medians over rounds. Exit status 1 when a probe's level change
or notification never came, or a background site raised a level.

    python3 benchmarks/latency.py                      # 3000 devices, 3 rounds, about 25 min
    python3 benchmarks/latency.py --quick              # smoke run, about a minute
    python3 benchmarks/latency.py --devices 10000 --rounds 1 --json lat.json --markdown lat.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import paho.mqtt.client as mqtt
from daemonproc import Daemon
from geowarn.simulators.fastmqtt import FastPublisher
from geowarn.simulators.scenario import Template, sites_toml, synthetic_sites
from services import Mosquitto, free_port

COUNTY, CITY, PROVINCE, NATIONAL = "420527", "420500", "420000", "100000"
PROBE_VALUE = 150.0  # mg: over yellow (100), under orange (200)
PROBE_LEVEL = 2  # yellow
WEBHOOK_SECRET = "latency-benchmark-webhook-secret-0123456789"
POLL_S = 0.05
PHASES = ("steady", "burst", "recovery")


# -- configuration -----------------------------------------------------------------------------


def probe_site(k: int) -> str:
    return f"PRB{k:05d}"


def registry_text(devices: int, probes: int) -> str:
    """Background sites from the simulator's ``--stations`` template (sites of 5 devices), and
    ``probes`` probe sites of one accelerometer each."""
    doc = synthetic_sites(Template(devices_per_site=5, admin=COUNTY), devices)
    out = [sites_toml(doc)]
    for k in range(probes):
        s = probe_site(k)
        out.append(
            f'[[sites]]\nsite = "{s}"\nname = "latency probe {k}"\nhazard = "landslide"\nadmin = "{COUNTY}"\n'
            f"lat = 30.9\nlon = 110.5\nthreatened_people = 10\n\n"
            f'[[sites.devices]]\ndevice = "{s}-A"\nmodel = "MEMS accelerometer"\nchannels = [\n'
            f'  {{ channel = "acc", kind = "acceleration", unit = "mg", interval_s = 86400, '
            f"thresholds = {{ yellow = 100.0, orange = 200.0, red = 300.0 }} }},\n]\n"
        )
    return "\n".join(out)


def roster_text(receiver_url: str) -> str:
    units = [(COUNTY, "county"), (CITY, "city"), (PROVINCE, "province"), (NATIONAL, "national")]
    out = []
    for admin, name in units:
        out.append(
            f'[[units]]\nadmin = "{admin}"\nname = "latency benchmark {name}"\n'
            f'contacts = [{{ name = "duty", role = "duty officer", phone = "+86 10 000 0000" }}]\n'
            f'notify = [{{ type = "webhook", url = "{receiver_url}/{admin}", secret = "{WEBHOOK_SECRET}" }}]\n'
        )
    return "\n".join(out)


# -- observers ---------------------------------------------------------------------------------


class Receiver:
    """The notifiers' webhook: records the first arrival per (site, admin) of a raise."""

    def __init__(self) -> None:
        self.first: dict[tuple[str, str], float] = {}
        self.requests = 0
        self.lock = threading.Lock()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as httpx's pool expects of a real receiver

            def do_POST(self) -> None:
                t = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    doc = json.loads(body)
                    site, level = doc.get("site"), int(doc.get("level", 0))
                except (ValueError, TypeError):
                    site, level = None, 0
                with rec.lock:
                    rec.requests += 1
                    if site and level >= PROBE_LEVEL:
                        rec.first.setdefault((str(site), self.path.strip("/")), t)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "11")
                self.end_headers()
                self.wfile.write(b'{"ok":true}')

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def get(self, site: str, admin: str) -> float | None:
        with self.lock:
            return self.first.get((site, admin))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class AlertWatch:
    """First arrival per site of an alert event that raises it (``geowarn/alerts/#``); also
    used by benchmarks/national_scale.py."""

    def __init__(self, port: int, client_id: str = "latency-alerts") -> None:
        self.first: dict[str, float] = {}
        self.levels: dict[str, int] = {}
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("geowarn/alerts/#", 1)
        self.c.on_subscribe = lambda c, u, mid, rc, p: self.ready.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not self.ready.wait(10):
            raise RuntimeError("the alert subscriber was not subscribed within 10 s")

    def _on_message(self, c: Any, u: Any, m: Any) -> None:
        t = time.time()
        try:
            ev = json.loads(m.payload)
            site, level, prev = str(ev["site"]), int(ev["level"]), int(ev.get("previous_level", 0))
        except (ValueError, KeyError, TypeError):
            return
        if level > prev and not ev.get("exercise"):
            with self.lock:
                self.first.setdefault(site, t)
                self.levels[site] = max(level, self.levels.get(site, 0))

    def get(self, site: str) -> float | None:
        with self.lock:
            return self.first.get(site)

    def raised_sites(self) -> dict[str, int]:
        with self.lock:
            return dict(self.levels)

    def sites(self) -> set[str]:
        with self.lock:
            return set(self.first)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class JournalPoll:
    """Every ``POLL_S``: the journal's newest reading id, and whether detection's snapshot row
    changed (the time a snapshot ended, to within a poll)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples: list[tuple[float, int]] = []  # (time after the query, max(readings.id))
        self.snapshots: list[float] = []
        #: detection's own figures at each snapshot: (time seen, {"readings", "seconds", "position"})
        self.stats: list[tuple[float, dict[str, Any]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="journal-poll", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        last_stats: str | None = None
        while not self.stop.wait(POLL_S):
            try:
                if conn is None:
                    conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1.0)
                top = conn.execute("SELECT max(id) FROM readings").fetchone()[0] or 0
                row = conn.execute("SELECT value FROM state WHERE key = 'detection.stats'").fetchone()
            except sqlite3.Error:
                continue  # not created yet, or busy for a moment: the next poll
            t = time.time()
            self.samples.append((t, int(top)))
            stats = row[0] if row else None
            if stats != last_stats:
                if last_stats is not None:
                    self.snapshots.append(t)
                try:
                    self.stats.append((t, json.loads(stats) if stats else {}))
                except ValueError:
                    pass
                last_stats = stats
        if conn is not None:
            conn.close()

    def journal_rate(self, t0: float, t1: float, step_s: float = 5.0) -> float | None:
        """The fastest the journal grew (readings/s) over any ``step_s`` between t0 and t1."""
        pts = [(t, n) for t, n in self.samples if t0 <= t <= t1]
        best, j = None, 0
        for i, (t, n) in enumerate(pts):
            while j < i and t - pts[j][0] > step_s:
                j += 1
            if j < i and t - pts[j][0] >= step_s * 0.8:
                r = (n - pts[j][1]) / (t - pts[j][0])
                best = r if best is None or r > best else best
        return best

    def detection_rate(self, t0: float, t1: float) -> float | None:
        """Readings detection judged per second of its judging time (its own ``detection.stats``,
        saved at each snapshot) between the snapshots seen in [t0, t1]."""
        pts = [(d["readings"], d["seconds"]) for t, d in self.stats if t0 <= t <= t1 and "readings" in d and "seconds" in d]
        if len(pts) < 2 or pts[-1][1] <= pts[0][1]:
            return None
        return (pts[-1][0] - pts[0][0]) / (pts[-1][1] - pts[0][1])

    def stored_at(self, reading_id: int) -> float | None:
        """The first poll that saw ``reading_id`` in the journal."""
        lo, hi = 0, len(self.samples)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.samples[mid][1] >= reading_id:
                hi = mid
            else:
                lo = mid + 1
        return self.samples[lo][0] if lo < len(self.samples) else None


# -- publishers --------------------------------------------------------------------------------


class Background:
    """``rate`` messages/s from the background devices, each message one device's four channels."""

    CHANNELS = ("disp_e", "disp_n", "disp_u", "battery")

    def __init__(self, url: str, registry_doc: dict[str, Any], rate: float, seed: int) -> None:
        self.devices = [(s["site"], d["device"]) for s in registry_doc["sites"] for d in s["devices"]]
        self.topics = [f"geowarn/{s}/{d}/data" for s, d in self.devices]
        self.rate = rate
        self.rng = random.Random(seed)
        self.pub = FastPublisher(url, "latency-background", max_unacked=20000)
        self.stop = threading.Event()
        self.sent = 0
        self.sent_log: list[tuple[float, int]] = []  # (time, messages published so far), every 0.5 s
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="background", daemon=True)

    def set_rate(self, rate: float) -> None:
        self.rate = rate

    def _message(self, i: int, now: float) -> tuple[str, bytes]:
        d = i % len(self.devices)
        _, device = self.devices[d]
        g = self.rng.gauss
        t = f"{now:.3f}"
        payload = (
            f'{{"v":1,"device":"{device}","seq":{i // len(self.devices) + 1},"readings":['
            f'{{"ch":"disp_e","t":{t},"v":{g(0.0, 0.05):.3f}}},{{"ch":"disp_n","t":{t},"v":{g(0.0, 0.05):.3f}}},'
            f'{{"ch":"disp_u","t":{t},"v":{g(0.0, 0.05):.3f}}},{{"ch":"battery","t":{t},"v":{12.6 + g(0.0, 0.01):.2f}}}]}}'
        )
        return self.topics[d], payload.encode()

    def _run(self) -> None:
        try:
            due = 0.0
            last = time.monotonic()
            next_log = last
            while not self.stop.is_set():
                now = time.monotonic()
                due += self.rate * (now - last)
                last = now
                # Never more than a second's worth behind: a publisher that cannot keep up
                # publishes as fast as it can, and the rate it reached is what is reported.
                due = min(due, self.sent + self.rate)
                n = 0
                while self.sent < due and n < 500:
                    topic, payload = self._message(self.sent, time.time())
                    self.pub.publish(topic, payload)
                    self.sent += 1
                    n += 1
                self.pub.pump(0.0)
                if now >= next_log:
                    self.sent_log.append((time.time(), self.sent))
                    next_log = now + 0.5
                if self.sent >= due:
                    self.stop.wait(0.005)
            self.pub.wait_acked(60.0)
        except Exception as exc:  # noqa: BLE001  (the main thread reports it and stops)
            self.error = exc
        finally:
            self.pub.close()

    def rate_between(self, t0: float, t1: float) -> float | None:
        pts = [(t, n) for t, n in self.sent_log if t0 <= t <= t1]
        if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
            return None
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


@dataclass
class Probe:
    site: str
    round: int
    phase: str
    t_publish: float
    t_received: float | None = None
    t_stored: float | None = None
    t_level: float | None = None
    t_notify: float | None = None
    t_notify_all: float | None = None
    snapshot_wait: bool = False

    def lat(self, what: str) -> float | None:
        t = {"level": self.t_level, "notify": self.t_notify, "notify_all": self.t_notify_all}[what]
        return None if t is None else t - self.t_publish


class Prober:
    def __init__(self, url: str) -> None:
        self.pub = FastPublisher(url, "latency-probes", max_unacked=1000)
        self.next = 0

    def fire(self, round_: int, phase: str) -> Probe:
        site = probe_site(self.next)
        self.next += 1
        now = time.time()
        payload = f'{{"v":1,"device":"{site}-A","seq":1,"readings":[{{"ch":"acc","t":{now:.3f},"v":{PROBE_VALUE}}}]}}'.encode()
        self.pub.publish(f"geowarn/{site}/{site}-A/data", payload)
        self.pub.pump(0.0)  # to the socket now
        return Probe(site, round_, phase, round(now, 3))

    def pump(self) -> None:
        self.pub.pump(0.0)

    def close(self) -> None:
        self.pub.wait_acked(10.0)
        self.pub.close()


class Runner:
    """One round's phases: the background rate set per phase, a probe every ``probe_every`` s."""

    def __init__(self, daemon: Daemon, background: Background, prober: Prober, receiver: Receiver, alerts: AlertWatch, probe_every: float) -> None:
        self.daemon, self.background, self.prober = daemon, background, prober
        self.receiver, self.alerts = receiver, alerts
        self.probe_every = probe_every
        self.marks: dict[str, float] = {}
        self.mine: list[Probe] = []
        self.bound: float | None = None

    def round(self, r: int, steady_s: float, rate: float, burst_s: float, burst_rate: float, recovery_s: float) -> list[Probe]:
        self.marks, self.mine, self.bound = {}, [], None
        self.phase(r, "steady", steady_s, rate)
        steady = [p for p in self.mine if p.phase == "steady"]
        self.phase(r, "burst", burst_s, burst_rate)
        # The steady p99 of this round, from what has arrived by now (the steady probes'
        # notifications come long before the burst ends, unless the daemon is stuck).
        fill(steady, self.receiver, self.alerts)
        self.bound = summarize(steady, "notify")["p99"]
        self.phase(r, "recovery", recovery_s, rate, stop_when_recovered=True)
        # Everything of the round arrives before the next one starts.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            fill(self.mine, self.receiver, self.alerts)
            if all(p.t_level is not None and p.t_notify_all is not None for p in self.mine):
                break
            self.prober.pump()
            time.sleep(0.1)
        return self.mine

    def phase(self, r: int, phase: str, seconds: float, rate: float, *, stop_when_recovered: bool = False) -> None:
        self.background.set_rate(rate)
        self.marks[phase + "_start"] = time.time()
        end = time.monotonic() + seconds
        nxt = time.monotonic()
        while time.monotonic() < end:
            if self.background.error is not None:
                raise RuntimeError(f"background publisher failed: {self.background.error!r}")
            if self.daemon.proc is None or self.daemon.proc.poll() is not None:
                raise RuntimeError(f"the daemon died:\n{self.daemon.log_tail()}")
            self.mine.append(self.prober.fire(r, phase))
            nxt += self.probe_every
            while time.monotonic() < nxt:
                self.prober.pump()
                time.sleep(min(0.02, max(0.0, nxt - time.monotonic())))
            if stop_when_recovered and self.recovered():
                break
        self.marks[phase + "_end"] = time.time()

    def recovered(self) -> bool:
        """The last 10 s of recovery probes (after at least 20 s of them) all at or under the bound."""
        fill(self.mine, self.receiver, self.alerts)
        rec = [p for p in self.mine if p.phase == "recovery"]
        tail = rec[-max(5, int(10 / self.probe_every)) :]
        bound = self.bound
        return (
            bound is not None
            and len(rec) >= max(5, int(20 / self.probe_every))
            and all((x := p.lat("notify")) is not None and x <= bound for p in tail)
        )


# -- figures -----------------------------------------------------------------------------------


def pct(xs: list[float], q: float) -> float | None:
    """The q-th percentile, nearest rank (a p99 of 60 probes is their largest but one)."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def summarize(probes: list[Probe], what: str) -> dict[str, float | None]:
    xs = [x for p in probes if (x := p.lat(what)) is not None]
    return {"n": len(xs), "p50": pct(xs, 50), "p99": pct(xs, 99), "max": max(xs) if xs else None}


def stage_medians(probes: list[Probe]) -> dict[str, float | None]:
    def med(pairs: list[tuple[float | None, float | None]]) -> float | None:
        xs = [b - a for a, b in pairs if a is not None and b is not None]
        return statistics.median(xs) if xs else None

    def p99(pairs: list[tuple[float | None, float | None]]) -> float | None:
        return pct([b - a for a, b in pairs if a is not None and b is not None], 99)

    stages = {
        "publish_to_received": [(p.t_publish, p.t_received) for p in probes],
        "received_to_stored": [(p.t_received, p.t_stored) for p in probes],
        "stored_to_level": [(p.t_stored, p.t_level) for p in probes],
        "level_to_notify": [(p.t_level, p.t_notify) for p in probes],
    }
    out: dict[str, float | None] = {}
    for k, v in stages.items():
        out[k + "_p50"] = med(v)
        out[k + "_p99"] = p99(v)
    return out


def recovered_after(probes: list[Probe], burst_end: float, bound: float | None) -> float | None:
    """Seconds from the burst's end to the first recovery probe from which on every probe's
    publish→notification latency is within ``bound``; None if the last one is not."""
    rec = sorted((p for p in probes if p.phase == "recovery"), key=lambda p: p.t_publish)
    if bound is None or not rec:
        return None
    start = None
    for p in rec:
        x = p.lat("notify")
        if x is None or x > bound:
            start = None
        elif start is None:
            start = p.t_publish
    return None if start is None else max(0.0, start - burst_end)


def fmt(x: float | None, unit: str = "s") -> str:
    if x is None:
        return "—"
    if unit != "s":
        return f"{x:,.0f} {unit}"
    return f"{x:.3f} {unit}" if x < 10 else f"{x:.1f} {unit}"


# -- the run -----------------------------------------------------------------------------------


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
        return rev + (" (+ uncommitted changes in the checkout)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=3000, help="background devices (sites of 5, 4 channels each)")
    ap.add_argument("--rate", type=float, default=420.0, help="steady messages/s of the background fleet")
    ap.add_argument("--burst-rate", type=float, default=10000.0, help="messages/s during the burst")
    ap.add_argument("--steady-s", type=float, default=90.0)
    ap.add_argument("--burst-s", type=float, default=60.0)
    ap.add_argument("--recovery-s", type=float, default=240.0, help="longest recovery phase")
    ap.add_argument("--probe-every", type=float, default=1.0, help="seconds between probes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--snapshot-interval-s", type=float, default=60.0, help="the daemon's GEOWARN_SNAPSHOT_INTERVAL_S (its default: 60)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 200 devices, short phases, 1 round")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--keep", action="store_true", help="keep the work folder (daemon log, journal)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.devices, args.rate, args.burst_rate = 200, 100.0, 2000.0
        args.steady_s, args.burst_s, args.recovery_s, args.probe_every, args.rounds = 8.0, 6.0, 30.0, 0.5, 1
    if args.devices < 1 or args.rate <= 0 or args.burst_rate <= 0 or args.probe_every <= 0 or args.rounds < 1:
        ap.error("--devices, --rate, --burst-rate, --probe-every and --rounds must be positive")
    per_round = math.ceil((args.steady_s + args.burst_s + args.recovery_s) / args.probe_every) + 5
    n_probes = per_round * args.rounds
    work = Path(tempfile.mkdtemp(prefix="geowarn-latency-"))
    doc = synthetic_sites(Template(devices_per_site=5, admin=COUNTY), args.devices)
    receiver = Receiver()
    (work / "sites.toml").write_text(registry_text(args.devices, n_probes), encoding="utf-8")
    (work / "roster.toml").write_text(roster_text(receiver.url), encoding="utf-8")
    broker = Mosquitto(work / "broker", max_inflight_messages=1000)
    broker.start()
    daemon = Daemon(
        work / "data",
        broker.url,
        extra_env={
            "GEOWARN_SITES": str(work / "sites.toml"),
            "GEOWARN_ROSTER": str(work / "roster.toml"),
            "GEOWARN_HTTP": f"127.0.0.1:{free_port()}",
            "GEOWARN_STATS_INTERVAL_S": "10",
            "GEOWARN_SNAPSHOT_INTERVAL_S": str(args.snapshot_interval_s),
            "GEOWARN_CAP_SENDER": "latency-benchmark@geowarn.invalid",
        },
        client_id="geowarn-latency",
    )
    daemon.log_path = work / "daemon.log"
    info: dict[str, Any] = {
        "command": "python3 benchmarks/latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": git_commit(),
        # Others may edit the shared checkout: what differed from the commit when the run began.
        "modified_files": subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                                         text=True, check=False).stdout.split("\n")[:50],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    print(f"work folder {work}; {args.devices} background devices, {n_probes} probe sites", flush=True)
    alerts = background = prober = poll = None
    probes: list[Probe] = []
    rounds: list[dict[str, Any]] = []
    status = 0
    figures: dict[str, Any] | None = None
    per_round: list[dict[str, Any]] = []
    try:
        t0 = time.monotonic()
        daemon.start(timeout=600)
        info["daemon_ready_s"] = round(time.monotonic() - t0, 1)
        alerts = AlertWatch(broker.port)
        poll = JournalPoll(daemon.journal_path)
        background = Background(broker.url, doc, args.rate, args.seed)
        prober = Prober(broker.url)
        background.thread.start()
        time.sleep(min(10.0, args.steady_s / 3))  # the fleet's first messages through every stage
        runner = Runner(daemon, background, prober, receiver, alerts, args.probe_every)
        for r in range(args.rounds):
            mine = runner.round(r, args.steady_s, args.rate, args.burst_s, args.burst_rate, args.recovery_s)
            probes += mine
            rounds.append({"round": r + 1, "marks": runner.marks, "steady_p99_notify": runner.bound})
            print(f"round {r + 1}: {len(mine)} probes, steady p99 publish→notification {fmt(runner.bound)}", flush=True)
        background.stop.set()
        background.thread.join(90)
        time.sleep(1.0)
        poll.stop.set()
        poll.thread.join(5)
        # Stages from the journal: the ack path's arrival stamp, and when the row was first seen.
        rows = daemon.query(
            "SELECT s.site, r.id, r.received_ms FROM readings r JOIN series s ON s.id = r.series WHERE s.site LIKE 'PRB%'"
        )
        by_site = {str(s): (int(i), int(ms)) for s, i, ms in rows}
        for p in probes:
            if p.site in by_site:
                rid, ms = by_site[p.site]
                p.t_received = ms / 1000.0
                p.t_stored = poll.stored_at(rid)
            if p.t_stored is not None and p.t_level is not None:
                p.snapshot_wait = any(p.t_stored - POLL_S <= s <= p.t_level + POLL_S for s in poll.snapshots)
        probe_sites = {p.site for p in probes}
        false_raises = sorted(s for s in alerts.raised_sites() if s not in probe_sites)
        wrong_level = sorted(s for s, lvl in alerts.raised_sites().items() if s in probe_sites and lvl != PROBE_LEVEL)
        missing = [p.site for p in probes if p.t_level is None or p.t_notify is None or p.t_notify_all is None]
        for rd in rounds:
            mine = [p for p in probes if p.round == rd["round"] - 1]
            m = rd["marks"]
            entry: dict[str, Any] = {"round": rd["round"]}
            for ph in PHASES:
                sel = [p for p in mine if p.phase == ph]
                entry[ph] = {
                    "probes": len(sel),
                    "level": summarize(sel, "level"),
                    "notify": summarize(sel, "notify"),
                    "notify_all": summarize(sel, "notify_all"),
                    "stages": stage_medians(sel),
                    "snapshot_waits": sum(p.snapshot_wait for p in sel),
                    "published_msg_s": background.rate_between(m[ph + "_start"], m[ph + "_end"]),
                    "seconds": m[ph + "_end"] - m[ph + "_start"],
                }
            entry["journal_peak_readings_s"] = poll.journal_rate(m["burst_start"], m["recovery_end"])
            entry["detection_readings_per_judging_s"] = poll.detection_rate(m["steady_start"], m["recovery_end"] + 60)
            entry["recovered_after_s"] = recovered_after(mine, m["burst_end"], rd["steady_p99_notify"])
            entry["recovery_bound_s"] = rd["steady_p99_notify"]
            per_round.append(entry)
        figures = medians(per_round)
        info.update(
            probes=len(probes),
            probes_missing=missing,
            false_raises=false_raises,
            probes_wrong_level=wrong_level,
            webhook_requests=receiver.requests,
            snapshots_seen=len(poll.snapshots),
            background_published=background.sent,
        )
        if missing or false_raises or wrong_level:
            status = 1
        try:
            info["daemon_stop_s"] = round(daemon.terminate(timeout=180), 1)
        except Exception as exc:  # noqa: BLE001  (reported, not hidden)
            info["clean_stop_error"] = str(exc)[:500]
            status = 1
    finally:
        for x in (alerts,):
            if x is not None:
                x.close()
        if background is not None:
            background.stop.set()
        if prober is not None:
            try:
                prober.close()
            except Exception as exc:  # noqa: BLE001  (closing anyway; said, not hidden)
                print(f"probe publisher: {exc}", file=sys.stderr)
        if poll is not None:
            poll.stop.set()
        daemon.close()
        broker.stop()
        receiver.close()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if figures is None:
        return 1
    table = markdown(figures, per_round, info)
    print(table)
    print(json.dumps({k: v for k, v in info.items() if k != "args"}, indent=2))
    if args.json:
        args.json.write_text(
            json.dumps({"info": info, "figures": figures, "rounds": per_round, "probes": [p.__dict__ for p in probes]}, indent=2),
            encoding="utf-8",
        )
    if args.markdown:
        args.markdown.write_text(table + "\n", encoding="utf-8")
    return status


def fill(probes: list[Probe], receiver: Receiver, alerts: Any) -> None:
    for p in probes:
        if p.t_level is None:
            p.t_level = alerts.get(p.site)
        if p.t_notify is None:
            p.t_notify = receiver.get(p.site, COUNTY)
        if p.t_notify_all is None:
            a, b = receiver.get(p.site, COUNTY), receiver.get(p.site, CITY)
            if a is not None and b is not None:
                p.t_notify_all = max(a, b)


def medians(per_round: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds (None where a round has none)."""

    def med(xs: list[Any]) -> float | None:
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    out: dict[str, Any] = {}
    for ph in PHASES:
        out[ph] = {
            "probes": sum(r[ph]["probes"] for r in per_round),
            "published_msg_s": med([r[ph]["published_msg_s"] for r in per_round]),
            "snapshot_waits": sum(r[ph]["snapshot_waits"] for r in per_round),
            "seconds": med([r[ph]["seconds"] for r in per_round]),
        }
        for what in ("level", "notify", "notify_all"):
            out[ph][what] = {k: med([r[ph][what][k] for r in per_round]) for k in ("p50", "p99", "max")}
        out[ph]["stages"] = {k: med([r[ph]["stages"][k] for r in per_round]) for k in per_round[0][ph]["stages"]}
    out["recovered_after_s"] = med([r["recovered_after_s"] for r in per_round])
    out["journal_peak_readings_s"] = med([r["journal_peak_readings_s"] for r in per_round])
    out["detection_readings_per_judging_s"] = med([r["detection_readings_per_judging_s"] for r in per_round])
    out["recovered_rounds"] = sum(r["recovered_after_s"] is not None for r in per_round)
    out["recovery_bound_s"] = med([r["recovery_bound_s"] for r in per_round])
    return out


def markdown(f: dict[str, Any], per_round: list[dict[str, Any]], info: dict[str, Any]) -> str:
    n = len(per_round)
    lines = [
        f"Medians over {n} round(s); latencies in seconds from the probe's publication.",
        "",
        "| phase | s | background msg/s reached | probes | publish→level p50 / p99 / max | publish→notification (county) p50 / p99 / max | both first tiers notified p99 | probes that waited for a snapshot |",
        "|---|---:|---:|---:|---|---|---:|---:|",
    ]
    for ph in PHASES:
        x = f[ph]
        rate = x["published_msg_s"]
        lines.append(
            f"| {ph} | {x['seconds']:.0f} | {rate:,.0f} | {x['probes']} | "
            f"{fmt(x['level']['p50'])} / {fmt(x['level']['p99'])} / {fmt(x['level']['max'])} | "
            f"{fmt(x['notify']['p50'])} / {fmt(x['notify']['p99'])} / {fmt(x['notify']['max'])} | "
            f"{fmt(x['notify_all']['p99'])} | {x['snapshot_waits']} |"
            if rate is not None
            else f"| {ph} | {x['seconds']:.0f} | — | {x['probes']} | — | — | — | — |"
        )
    rec = f["recovered_after_s"]
    lines += [
        "",
        (
            f"Recovered after the burst (every later probe's publish→notification ≤ the round's steady p99, "
            f"median bound {fmt(f['recovery_bound_s'])}): {fmt(rec)} (median; {f['recovered_rounds']} of {n} rounds recovered "
            f"within the recovery phase)."
        ),
        "",
        (f"Throughput behind it: the journal grew by at most {fmt(f['journal_peak_readings_s'], 'readings/s')} (5 s windows, "
        f"burst and recovery; the store worker's output); detection judged {fmt(f['detection_readings_per_judging_s'], 'readings/s')} "
        "of its own judging time (its detection.stats between snapshots)."),
        "",
        "Where the time goes, per probe stage (median p50 / p99 over rounds):",
        "",
        "| phase | publish → ack path (received_ms) | ack path → journal (polled) | journal → level event | level event → county webhook |",
        "|---|---|---|---|---|",
    ]
    for ph in PHASES:
        s = f[ph]["stages"]
        cells = [f"{fmt(s[k + '_p50'])} / {fmt(s[k + '_p99'])}" for k in ("publish_to_received", "received_to_stored", "stored_to_level", "level_to_notify")]
        lines.append(f"| {ph} | " + " | ".join(cells) + " |")
    lines += ["", "Per round (publish→notification p99: steady / burst / recovery; recovered after):", ""]
    for r in per_round:
        lines.append(
            f"- round {r['round']}: {fmt(r['steady']['notify']['p99'])} / {fmt(r['burst']['notify']['p99'])} / "
            f"{fmt(r['recovery']['notify']['p99'])}; burst max {fmt(r['burst']['notify']['max'])}; recovered after {fmt(r['recovered_after_s'])}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
