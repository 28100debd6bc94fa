#!/usr/bin/env python3
"""National scale on one box: a fleet of N devices through one daemon (issue 17, item 7).

For each fleet size (``--devices N``, or ``--sizes 10000,50000`` for several in sequence, each
on fresh data) this runs, all real and on loopback:

* a Mosquitto broker (tests/services.py) on a free port, ``max_inflight_messages 1000``;
* a ``geowarn run`` daemon (tests/daemonproc.py) on a data dir of its own, with a registry
  built from ``geowarn simulate --stations N``'s template (``synthetic_sites``: sites of 5
  devices; GNSS e/n/u and a battery channel, 4 channels a device, every 10 minutes) plus probe
  sites (below), and a roster of four tiers that notify by MQTT and the JSONL audit file;
* ``--publishers`` publisher processes (``simulators.fastmqtt.FastPublisher``, the publisher of
  ``geowarn simulate --fast``), each with its share of the devices: one native JSON v1 message
  per device report (its four channels), stamped with the wall clock, at QoS 1;
* probes, every ``--probe-every`` seconds from their own connection: one reading of a probe
  site's accelerometer (kind ``acceleration``: judged by its thresholds only) at 150 mg
  against yellow 100 mg, which raises that site (never judged before) from 0 to yellow. The
  time from its publication to the level change on ``geowarn/alerts/#`` is the probe's
  latency; during the burst the probes are the "slope that starts failing in the middle of
  it" (a threshold crossing, not a modelled slope).

Phases and figures, per size:

1. the registry is generated (timed, not counted);
2. start: ``geowarn run`` until its retained presence says ``online``; RSS of each process of
   the daemon's tree (main, store worker, detection worker: psutil) right after;
3. steady: ``--minutes`` at ``--rate`` messages/s (default N/600: every device every 10
   minutes, the national average scaled to N). Every second: the journal's newest reading
   id, the readings the broker has acknowledged so far (4 a message, 1 a probe: the journal's
   backlog is the difference), and the furthest position detection has written down
   (``judged()``: its state header, its checkpoint stats, and ``fusion.emitted_through``,
   written after each batch that announced a change, so at least once per probe). Detection
   lag = readings stored and not judged, and in seconds the age (arrival time) of the oldest
   of them: an upper bound, detection is at least that far; while it keeps up it moves with
   the probes (every ``--probe-every`` s); the first two probes' seconds are left out of the
   steady figures;
4. RSS of each process after the steady phase;
5. burst: ``--burst-rate`` messages/s for ``--burst-s`` seconds (what the publishers achieved
   is reported: a shared 2-core machine may not publish it in full);
6. recovery: the steady rate again until warnings are current again: three probes in a row,
   published after the burst, raised their site within the steady phase's p99 (at least
   2 s). "Burst recovery" is the time from the burst's end to the first of them (bounded by
   ``--recovery-max-s``); the time until the journal has caught up with the broker is
   reported beside it;
7. the publishers stop and wait for their PUBACKs; the journal must reach 4 readings per
   acknowledged message plus the probes (readings lost = the difference), and detection must
   judge all of it (``--drain-max-s``);
8. restart after SIGKILL of the daemon: what detection's checkpoint says a restart must judge
   again (position - floor), the time to ``online``, and until detection has judged
   everything again; then a clean stop (SIGTERM: how long it took) and a start to ``online``;
   after both, no reading may be missing and no site raised twice to the same level in
   ``alerts.jsonl`` (a raise announced again would be state lost).

The tree's RSS is watched every second: above ``--max-rss-gb`` (16 GB) the run is aborted and
reported. Every wait is bounded; a size that fails prints what happened in its row.

    python3 benchmarks/national_scale.py --quick                      # smoke run, about a minute
    python3 benchmarks/national_scale.py --devices 10000 --minutes 5  # one row
    python3 benchmarks/national_scale.py --sizes 10000,50000 --minutes 5 --markdown ns.md --json ns.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import psutil
from daemonproc import Daemon
from geowarn.simulators.fastmqtt import FastPublisher
from geowarn.simulators.scenario import Template, sites_toml, synthetic_sites
from latency import (
    AlertWatch,  # the latency benchmark's alert subscriber (benchmarks/ is on sys.path)
)
from services import Mosquitto, free_port

COUNTY, CITY, PROVINCE, NATIONAL = "420527", "420500", "420000", "100000"
PER_SITE = 5
CHANNELS = 4
PROBE_VALUE = 150.0  # mg: over yellow (100), under orange (200)
STATE_HEADER = "fusion.state.v3"  # service/detection.py STATE_KEY
STATS_KEY = "detection.stats"  # ingest/journal.py DETECTION_STATS_KEY
EMITTED_KEY = "fusion.emitted_through"  # service/detection.py EMITTED_KEY
MB = 2**20


class Aborted(Exception):
    """A run stopped on purpose (memory over the limit, a wait that ran out)."""


# -- configuration -----------------------------------------------------------------------------


def probe_site(k: int) -> str:
    return f"PRB{k:05d}"


def registry_text(devices: int, probes: int) -> str:
    doc = synthetic_sites(Template(devices_per_site=PER_SITE, admin=COUNTY), devices)
    out = [sites_toml(doc)]
    for k in range(probes):
        s = probe_site(k)
        out.append(
            f'[[sites]]\nsite = "{s}"\nname = "probe {k}"\nhazard = "landslide"\nadmin = "{COUNTY}"\n'
            f"lat = 30.9\nlon = 110.5\nthreatened_people = 10\n\n"
            f'[[sites.devices]]\ndevice = "{s}-A"\nmodel = "MEMS accelerometer"\nchannels = [\n'
            f'  {{ channel = "acc", kind = "acceleration", unit = "mg", interval_s = 86400, '
            f"thresholds = {{ yellow = 100.0, orange = 200.0, red = 300.0 }} }},\n]\n"
        )
    return "\n".join(out)


def roster_text() -> str:
    units = [(COUNTY, "county"), (CITY, "city"), (PROVINCE, "province"), (NATIONAL, "national")]
    return "\n".join(
        f'[[units]]\nadmin = "{admin}"\nname = "national-scale benchmark {name}"\n'
        f'contacts = [{{ name = "duty", role = "duty officer", phone = "+86 10 000 0000" }}]\n'
        f'notify = [{{ type = "mqtt" }}, {{ type = "jsonl" }}]\n'
        for admin, name in units
    )


def device_name(d: int, devices: int) -> tuple[str, str]:
    """(site, device) of device index ``d``, as ``synthetic_sites`` names them."""
    n_sites = (devices + PER_SITE - 1) // PER_SITE
    width = max(4, len(str(n_sites)))
    i, j = divmod(d, PER_SITE)
    code = f"S{i + 1:0{width}d}"
    return code, f"{code}-D{j + 1:03d}"


# -- publishers (one process each) -------------------------------------------------------------


def publisher_main(url: str, k: int, n_pub: int, devices: int, rate: Any, stop: Any, published: Any, acked: Any, errors: Any, seed: int) -> None:
    """Publish this process's devices (index = k mod n_pub) round robin at ``rate.value`` msg/s."""
    mine = list(range(k, devices, n_pub))
    topics, heads = [], []
    for d in mine:
        site, dev = device_name(d, devices)
        topics.append(f"geowarn/{site}/{dev}/data")
        heads.append(f'{{"v":1,"device":"{dev}","seq":')
    seq = [0] * len(mine)
    last_t = [0] * len(mine)
    rng = random.Random(seed + k)
    g = rng.gauss
    pub: FastPublisher | None = None
    try:
        pub = FastPublisher(url, f"ns-pub-{k}", max_unacked=20000)
        sent = 0
        due = 0.0
        last = time.monotonic()
        i = 0
        while not stop.is_set():
            now = time.monotonic()
            r = rate.value
            due += r * (now - last)
            last = now
            due = min(due, sent + max(r, 1.0))  # never more than a second behind: then as fast as it can
            n = 0
            while sent < due and n < 500:
                x = i % len(mine)
                i += 1
                t_ms = max(int(time.time() * 1000), last_t[x] + 1)  # one reading per device and ms
                last_t[x] = t_ms
                seq[x] += 1
                t = f"{t_ms / 1000:.3f}"
                payload = (
                    f'{heads[x]}{seq[x]},"readings":['
                    f'{{"ch":"disp_e","t":{t},"v":{g(0.0, 0.5):.2f}}},{{"ch":"disp_n","t":{t},"v":{g(0.0, 0.5):.2f}}},'
                    f'{{"ch":"disp_u","t":{t},"v":{g(0.0, 0.05):.3f}}},{{"ch":"battery","t":{t},"v":{12.6 + g(0.0, 0.01):.2f}}}]}}'
                )
                pub.publish(topics[x], payload.encode())
                sent += 1
                n += 1
            pub.pump(0.0)
            published.value = pub.published
            acked.value = pub.acked
            if sent >= due:
                stop.wait(0.005)
        ok = pub.wait_acked(300.0)
        published.value = pub.published
        acked.value = pub.acked
        if not ok:
            errors.put(f"publisher {k}: {pub.published - pub.acked} messages not acknowledged within 300 s")
    except Exception as exc:  # noqa: BLE001  (reported by the main process)
        errors.put(f"publisher {k}: {type(exc).__name__}: {exc}")
    finally:
        if pub is not None:
            published.value = pub.published
            acked.value = pub.acked
            pub.close()


class Fleet:
    """``n`` publisher processes sharing the fleet's devices; the total rate set at will."""

    def __init__(self, url: str, devices: int, n: int, seed: int) -> None:
        ctx = mp.get_context("spawn")
        self.n = n
        self.rates = [ctx.RawValue("d", 0.0) for _ in range(n)]
        self.published = [ctx.RawValue("q", 0) for _ in range(n)]
        self.acked = [ctx.RawValue("q", 0) for _ in range(n)]
        self.stop = ctx.Event()
        self.errors: Any = ctx.Queue()
        self.procs = [
            ctx.Process(target=publisher_main, args=(url, k, n, devices, self.rates[k], self.stop, self.published[k], self.acked[k], self.errors, seed),
                        name=f"ns-pub-{k}", daemon=True)
            for k in range(n)
        ]
        for p in self.procs:
            p.start()

    def set_rate(self, total: float) -> None:
        for r in self.rates:
            r.value = total / self.n

    def counts(self) -> tuple[int, int]:
        return sum(v.value for v in self.published), sum(v.value for v in self.acked)

    def error(self) -> str | None:
        try:
            return str(self.errors.get_nowait())
        except Exception:  # noqa: BLE001  (queue.Empty)
            dead = [p.name for p in self.procs if not p.is_alive() and p.exitcode not in (0, None)]
            return f"publisher process died: {dead}" if dead else None

    def finish(self, timeout: float) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(timeout)
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(5)


# -- observers ---------------------------------------------------------------------------------


@dataclass
class Probe:
    site: str
    phase: str
    t_publish: float

    def latency(self, alerts: AlertWatch) -> float | None:
        t = alerts.get(self.site)
        return None if t is None else t - self.t_publish


class Prober:
    """A probe every ``every`` seconds on a thread of its own, tagged with the current phase."""

    def __init__(self, url: str, every: float, limit: int) -> None:
        self.pub = FastPublisher(url, "ns-probes", max_unacked=1000)
        self.every = every
        self.limit = limit
        self.phase = "steady"
        self.probes: list[Probe] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="probes", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            nxt = time.monotonic()
            while not self.stop.is_set():
                self.pub.pump(0.0)
                if time.monotonic() >= nxt and not self.paused.is_set() and len(self.probes) < self.limit:
                    site = probe_site(len(self.probes))
                    now = time.time()
                    payload = f'{{"v":1,"device":"{site}-A","seq":1,"readings":[{{"ch":"acc","t":{now:.3f},"v":{PROBE_VALUE}}}]}}'
                    self.pub.publish(f"geowarn/{site}/{site}-A/data", payload.encode())
                    self.pub.pump(0.0)  # to the socket now
                    with self.lock:
                        self.probes.append(Probe(site, self.phase, now))
                    nxt += self.every
                self.stop.wait(0.02)
        except Exception as exc:  # noqa: BLE001  (reported by the main thread)
            self.error = exc

    def close(self) -> int:
        """Stop; returns the probes the broker acknowledged (once closed, the same)."""
        if self.stop.is_set():
            return self.pub.acked
        self.stop.set()
        self.thread.join(10)
        self.pub.wait_acked(60.0)
        acked = self.pub.acked
        self.pub.close()
        return acked


class Sample(NamedTuple):
    t: float  # wall time
    top: int  # the journal's newest reading id
    pos: int  # the position detection last saved
    lag_readings: int  # stored, not judged (as saved)
    lag_s: float  # age of the oldest reading stored and not judged (as saved)
    expected: int  # readings the broker has acknowledged so far (4 a message, 1 a probe)
    rss: int  # the daemon's tree

    @property
    def store_backlog(self) -> int:
        """Readings the broker acknowledged that are not in the journal yet."""
        return max(0, self.expected - self.top)


class Monitor:
    """Every second: the journal's newest reading, detection's judged position, the lag, what
    the broker has acknowledged, and the RSS of the daemon's processes (the run aborts above
    ``max_rss``)."""

    def __init__(self, daemon: Daemon, max_rss: int) -> None:
        self.daemon = daemon
        self.max_rss = max_rss
        self.samples: list[Sample] = []
        #: Readings acknowledged by the broker so far (set once the publishers run).
        self.expected: Any = lambda: 0
        self.peak_rss = 0
        self.over: str | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self.stop.wait(1.0):
            rss = 0
            proc = self.daemon.proc
            if proc is not None and proc.poll() is None:
                rss = tree_rss(proc.pid)
                self.peak_rss = max(self.peak_rss, rss)
                if rss > self.max_rss and self.over is None:
                    self.over = f"the daemon's RSS reached {rss / 2**30:.1f} GB (limit {self.max_rss / 2**30:.0f} GB): run aborted"
                    self.daemon.close()
            expected = int(self.expected())
            try:
                if conn is None:
                    if not self.daemon.journal_path.exists():
                        continue
                    conn = sqlite3.connect(f"file:{self.daemon.journal_path}?mode=ro", uri=True, timeout=2.0)
                top, pos, lag_s = judged(conn)
            except sqlite3.Error:
                continue  # not created yet, or busy for a moment: the next second
            self.samples.append(Sample(time.time(), top, pos, max(0, top - pos), lag_s, expected, rss))
        if conn is not None:
            conn.close()

    def last(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def between(self, t0: float, t1: float) -> list[Sample]:
        return [x for x in self.samples if t0 <= x.t <= t1]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def judged(conn: sqlite3.Connection) -> tuple[int, int, float]:
    """(newest reading id, the furthest position detection has written down, age in s of the
    oldest reading after it: 0 when it has judged everything).

    Detection writes its position in three places: its state header with every site save
    (once some site has been changed for the snapshot interval: in practice about once a
    minute), its checkpoint stats (every snapshot interval) and ``fusion.emitted_through``
    after every batch in which it announced a level change. The probes raise a site every
    ``--probe-every`` seconds, so the last moves at least that often while detection keeps up.

    A restarted detection reads the journal on from its saved floor before it judges anything
    new, and its stats say so (``resuming``, written as it starts and as it ends): meanwhile
    the header and ``fusion.emitted_through`` still hold the positions of before the restart,
    and only the stats' position (the floor) counts."""
    top = conn.execute("SELECT max(id) FROM readings").fetchone()[0] or 0
    pos = 0
    row = conn.execute("SELECT json_extract(value, '$.resuming'), json_extract(value, '$.position') FROM state WHERE key = ?",
                       (STATS_KEY,)).fetchone()
    keys: tuple[tuple[str, str], ...] = ((STATE_HEADER, "$.position"), (STATS_KEY, "$.position"), (EMITTED_KEY, "$"))
    if row and row[0]:
        keys = ((STATS_KEY, "$.position"),)
    for key, path in keys:
        row = conn.execute("SELECT json_extract(value, ?) FROM state WHERE key = ?", (path, key)).fetchone()
        if row and row[0] is not None:
            pos = max(pos, int(row[0]))
    lag_s = 0.0
    if top > pos:
        row = conn.execute("SELECT received_ms FROM readings WHERE id > ? ORDER BY id LIMIT 1", (pos,)).fetchone()
        if row:
            lag_s = max(0.0, time.time() - row[0] / 1000.0)
    return int(top), pos, lag_s


def tree_rss(pid: int) -> int:
    """The RSS of a process and all its descendants."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def roles(daemon: Daemon) -> dict[str, int]:
    """RSS of main / store / detection (/ other) now: detection is the pid in detection.lock."""
    if daemon.proc is None:
        return {}
    try:
        det = int((daemon.data_dir / "detection.lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        det = -1
    out: dict[str, int] = {}
    try:
        main = psutil.Process(daemon.proc.pid)
        out["main"] = main.memory_info().rss
        children = main.children(recursive=True)
    except psutil.NoSuchProcess:
        return out
    for ch in children:
        try:
            cmd = " ".join(ch.cmdline())
            rss = ch.memory_info().rss
        except psutil.NoSuchProcess:
            continue
        role = "detection" if ch.pid == det else "other" if "resource_tracker" in cmd else "store"
        out[role] = out.get(role, 0) + rss
    return out


def fmt_rss(r: dict[str, int]) -> str:
    if not r:
        return "–"
    parts = [f"{r.get(k, 0) / MB:,.0f}" for k in ("main", "store", "detection")]
    return f"{' / '.join(parts)} ({sum(r.values()) / MB:,.0f}) MB"


# -- one size ----------------------------------------------------------------------------------


@dataclass
class Result:
    devices: int
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    samples: list[list[float]] = field(default_factory=list)


def wait(cond: Any, timeout: float, what: str, mon: Monitor | None = None, step: float = 0.5) -> float:
    """Wait for ``cond()``; returns the seconds it took; Aborted after ``timeout``."""
    t0 = time.monotonic()
    while True:
        if mon is not None and mon.over:
            raise Aborted(mon.over)
        if cond():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise Aborted(f"{what}: not within {timeout:.0f} s")
        time.sleep(step)


def caught_up(mon: Monitor, since: float) -> bool:
    """Whether a sample taken after ``since`` shows detection with nothing left to judge."""
    last = mon.last()
    return last is not None and last.t > since and last.lag_readings == 0


def timed_start(daemon: Daemon, mon: Monitor, args: argparse.Namespace, res: Result, after: str) -> tuple[float, float | None]:
    """Start the daemon again: seconds to ``online``, and to detection caught up (it replays from
    its saved floor after the daemon is online; None: not within --drain-max-s, a problem)."""
    t0 = time.monotonic()
    try:
        daemon.start(timeout=args.start_timeout)
    except RuntimeError as exc:
        raise Aborted(f"start after {after}: {str(exc).splitlines()[0]}") from None
    online = round(time.monotonic() - t0, 1)
    t_online = time.time()
    try:
        return online, round(wait(lambda: caught_up(mon, t_online), args.drain_max_s, f"detection after {after}", mon, 1.0) + online, 1)
    except Aborted as exc:
        res.problems.append(str(exc))
        return online, None


def stored_rate(samples: list[Sample]) -> float | None:
    """Messages a second into the journal over the samples (4 readings a message)."""
    if len(samples) < 2 or samples[-1].t <= samples[0].t:
        return None
    return round((samples[-1].top - samples[0].top) / CHANNELS / (samples[-1].t - samples[0].t), 1)


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def run_size(devices: int, args: argparse.Namespace) -> Result:
    res = Result(devices)
    f = res.figures
    rate = args.rate if args.rate is not None else devices / 600.0
    phase_s = args.minutes * 60.0 + args.burst_s + args.recovery_max_s
    n_probes = math.ceil(phase_s / args.probe_every) + 10
    work = Path(tempfile.mkdtemp(prefix=f"geowarn-national-{devices}-"))
    f.update(devices=devices, channels=devices * CHANNELS, sites=math.ceil(devices / PER_SITE), probe_sites=n_probes, rate=round(rate, 2),
             work=str(work))
    t0 = time.monotonic()
    (work / "sites.toml").write_text(registry_text(devices, n_probes), encoding="utf-8")
    (work / "roster.toml").write_text(roster_text(), encoding="utf-8")
    f["registry_generation_s"] = round(time.monotonic() - t0, 1)
    f["registry_mb"] = round((work / "sites.toml").stat().st_size / MB, 1)
    broker = Mosquitto(work / "broker", max_inflight_messages=1000)
    broker.start()
    env = {
        "GEOWARN_SITES": str(work / "sites.toml"),
        "GEOWARN_ROSTER": str(work / "roster.toml"),
        "GEOWARN_HTTP": f"127.0.0.1:{free_port()}",
        "GEOWARN_STATS_INTERVAL_S": "30",
        "GEOWARN_CAP_SENDER": "national-scale@geowarn.invalid",
    }
    if args.snapshot_interval_s is not None:
        env["GEOWARN_SNAPSHOT_INTERVAL_S"] = str(args.snapshot_interval_s)
    if args.park_after_s is not None:
        env["GEOWARN_PARK_AFTER_S"] = str(args.park_after_s)
    if args.live_channels_max is not None:
        env["GEOWARN_LIVE_CHANNELS_MAX"] = str(args.live_channels_max)
    daemon = Daemon(work / "data", broker.url, extra_env=env, client_id="geowarn-national")
    daemon.log_path = work / "daemon.log"
    mon = fleet = prober = alerts = None
    print(f"[{devices}] work folder {work}; registry {f['registry_mb']} MB in {f['registry_generation_s']} s; rate {rate:.1f} msg/s", flush=True)
    try:
        mon = Monitor(daemon, int(args.max_rss_gb * 2**30))
        t0 = time.monotonic()
        try:
            daemon.start(timeout=args.start_timeout)
        except RuntimeError as exc:
            raise Aborted(f"start: {str(exc).splitlines()[0]}") from None
        f["start_s"] = round(time.monotonic() - t0, 1)
        time.sleep(2.0)  # the workers' first steps after online
        f["rss_start"] = roles(daemon)
        print(f"[{devices}] online after {f['start_s']} s; RSS {fmt_rss(f['rss_start'])}", flush=True)
        alerts = AlertWatch(broker.port, client_id="ns-alerts")
        fleet = Fleet(broker.url, devices, args.publishers, args.seed)
        fleet.set_rate(rate)
        prober = Prober(broker.url, args.probe_every, n_probes)

        def check() -> None:
            if mon.over:
                raise Aborted(mon.over)
            err = fleet.error()
            if err:
                raise Aborted(err)
            if prober.error:
                raise Aborted(f"probes: {prober.error}")
            if daemon.proc is None or daemon.proc.poll() is not None:
                raise Aborted(f"the daemon exited: {daemon.log_tail(5)}")

        def hold(seconds: float) -> tuple[float, float, int, int]:
            """Publish for ``seconds``; returns (start, end, published, acked) deltas' ends."""
            t_a, (p_a, _) = time.time(), fleet.counts()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                check()
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            return t_a, time.time(), p_a, fleet.counts()[0]

        mon.expected = lambda: fleet.counts()[1] * CHANNELS + prober.pub.acked

        # -- steady
        steady_s = args.minutes * 60.0
        t_s0, t_s1, p0, p1 = hold(steady_s)
        f["steady_published_msg_s"] = round((p1 - p0) / (t_s1 - t_s0), 1)
        samples = mon.between(t_s0, t_s1)
        f["steady_stored_msg_s"] = stored_rate(samples)
        # Until the first probes are judged only the start's checkpoint says where detection is.
        warm = 2 * args.probe_every + 1.0
        steady = [x for x in samples if x.t >= t_s0 + warm] or samples
        f["steady_lag_s_max"] = round(max(x.lag_s for x in steady), 1) if steady else None
        f["steady_lag_s_median"] = round(statistics.median(x.lag_s for x in steady), 1) if steady else None
        f["steady_lag_readings_max"] = max(x.lag_readings for x in steady) if steady else None
        f["steady_lag_s_final"] = round(steady[-1].lag_s, 1) if steady else None
        f["steady_store_backlog_max"] = max(x.store_backlog for x in steady) if steady else None
        f["rss_steady"] = roles(daemon)
        # Each publisher goes round its devices in turn: the devices heard from so far. Detection
        # builds a channel's state on its first reading, so its RSS grows until every device
        # has reported (10 minutes at the national-average rate): per channel heard from, and
        # what the whole fleet would take at that rate (an extrapolation, said so).
        heard = min(devices, fleet.counts()[0])
        f["devices_reported"] = heard
        grown = f["rss_steady"].get("detection", 0) - f["rss_start"].get("detection", 0)
        if heard:
            f["detection_bytes_per_channel"] = round(grown / (heard * CHANNELS))
            f["detection_rss_full_fleet_mb_extrapolated"] = round((f["rss_start"].get("detection", 0) + grown * devices / heard) / MB)
        print(f"[{devices}] steady {f['steady_published_msg_s']} msg/s published, {f['steady_stored_msg_s']} stored; lag max {f['steady_lag_s_max']} s "
              f"(median {f['steady_lag_s_median']} s); RSS {fmt_rss(f['rss_steady'])}", flush=True)

        # -- burst (none with --burst-s 0: a run of the start, the steady phase and the restarts)
        if args.burst_s > 0:
            prober.phase = "burst"
            fleet.set_rate(args.burst_rate)
            t_b0, t_b1, p0, p1 = hold(args.burst_s)
            fleet.set_rate(rate)
            prober.phase = "recovery"
            f["burst_published_msg_s"] = round((p1 - p0) / (t_b1 - t_b0), 1)
            f["burst_published_msgs"] = p1 - p0
            f["burst_stored_msg_s"] = stored_rate(mon.between(t_b0, t_b1))
            f["rss_burst_end"] = roles(daemon)
            print(f"[{devices}] burst: {f['burst_published_msg_s']} msg/s published for {args.burst_s:.0f} s, {f['burst_stored_msg_s']} stored", flush=True)

            # -- recovery: the steady rate again until the probes say warnings are current again:
            # three probes in a row (published after the burst) raised their site within the
            # steady phase's p99 (at least 2 s). Burst recovery = from the burst's end to the first
            # of them. The journal's catching up with the broker is timed on the way.
            steady_lat = [d for p in list(prober.probes) if p.phase == "steady" and (d := p.latency(alerts)) is not None]
            bound = max(2.0, percentile(steady_lat, 0.99) or 0.0)
            f["recovery_bound_s"] = round(bound, 2)
            slack = max(2.0 * rate * CHANNELS, f["steady_store_backlog_max"] or 0) + 10
            t_end = time.monotonic() + args.recovery_max_s
            recovered_at: float | None = None
            stored_at: float | None = None
            seen = 0
            while time.monotonic() < t_end and recovered_at is None:
                check()
                time.sleep(1.0)
                fresh = mon.samples[seen:]
                seen += len(fresh)
                for x in fresh:
                    if stored_at is None and x.t > t_b1 and x.store_backlog <= slack:
                        stored_at = x.t
                now = time.time()
                run: list[Probe] = []
                for p in [p for p in list(prober.probes) if p.t_publish > t_b1]:
                    d = p.latency(alerts)
                    if d is None and now - p.t_publish <= bound:
                        break  # not decided yet
                    run = run + [p] if d is not None and d <= bound else []
                if len(run) >= 3:
                    recovered_at = run[0].t_publish
            t_r1 = time.time()
            burst_samples = mon.between(t_b0, t_r1)
            f["burst_lag_s_max"] = round(max(x.lag_s for x in burst_samples), 1) if burst_samples else None
            f["burst_lag_readings_max"] = max(x.lag_readings for x in burst_samples) if burst_samples else None
            f["burst_store_backlog_max"] = max(x.store_backlog for x in burst_samples) if burst_samples else None
            f["burst_store_caught_up_s"] = round(stored_at - t_b1, 1) if stored_at is not None else None
            f["burst_recovery_s"] = round(recovered_at - t_b1, 1) if recovered_at is not None else None
            if recovered_at is None:
                res.problems.append(f"warnings not current again (3 probes in a row within {bound:.2f} s) within {args.recovery_max_s:.0f} s of the burst's end")
            print(f"[{devices}] burst: journal behind the broker by {f['burst_store_backlog_max']} readings at most, caught up {f['burst_store_caught_up_s']} s "
                  f"after it; detection behind by {f['burst_lag_readings_max']} readings ({f['burst_lag_s_max']} s) at most; probes within {bound:.2f} s "
                  f"again {f['burst_recovery_s']} s after the burst", flush=True)
        else:
            print(f"[{devices}] no burst (--burst-s 0)", flush=True)

        # -- drain: everything acknowledged is stored and judged
        prober.paused.set()
        t0 = time.monotonic()
        fleet.finish(timeout=330.0)
        probes_acked = prober.close()
        err = fleet.error()
        if err:
            res.problems.append(err)
        published, acked = fleet.counts()
        f["published_msgs"] = published
        f["acked_msgs"] = acked
        f["probes"] = len(prober.probes)
        f["probes_acked"] = probes_acked
        expected = acked * CHANNELS + probes_acked
        f["readings_expected"] = expected
        try:
            wait(lambda: daemon.count("readings") >= expected, args.drain_max_s, "store drain", mon, 2.0)
            t_stored = time.time()
            wait(lambda: caught_up(mon, t_stored), args.drain_max_s, "detection drain", mon, 1.0)
        except Aborted as exc:
            res.problems.append(str(exc))
        f["drain_s"] = round(time.monotonic() - t0, 1)
        stored = daemon.count("readings")
        f["readings_stored"] = stored
        f["readings_lost"] = expected - stored
        time.sleep(2.0)  # the last probes' alerts on their way
        lat = {ph: [d for p in prober.probes if p.phase == ph and (d := p.latency(alerts)) is not None] for ph in ("steady", "burst", "recovery")}
        missing = [p.site for p in prober.probes if p.latency(alerts) is None]
        f["probes_without_level_change"] = len(missing)
        if missing:
            res.problems.append(f"{len(missing)} probes raised no level: {missing[:5]}")
        for ph, xs in lat.items():
            f[f"latency_{ph}_n"] = len(xs)
            f[f"latency_{ph}_p50_s"] = round(statistics.median(xs), 3) if xs else None
            f[f"latency_{ph}_p99_s"] = round(percentile(xs, 0.99) or 0.0, 3) if xs else None
            f[f"latency_{ph}_max_s"] = round(max(xs), 3) if xs else None
        raised_before = alerts.sites()
        background = sorted(s for s in raised_before if not s.startswith("PRB"))
        f["background_sites_raised"] = len(background)
        if background:
            res.problems.append(f"{len(background)} background sites raised a level (noise judged as movement): {background[:5]}")

        if not args.no_restarts:
            # -- restart after SIGKILL: what the restart has to judge again (detection's stats)
            stats = daemon.query("SELECT value FROM state WHERE key = ?", (STATS_KEY,))
            doc = json.loads(stats[0][0]) if stats else {}
            f["before_kill"] = {k: doc.get(k) for k in ("position", "floor", "unsaved_sites")}
            if isinstance(doc.get("position"), int) and isinstance(doc.get("floor"), int):
                f["restart_replay_readings"] = doc["position"] - doc["floor"]
            daemon.kill()
            f["restart_after_kill_s"], f["caught_up_after_kill_s"] = timed_start(daemon, mon, args, res, "SIGKILL")
            f["rss_restart"] = roles(daemon)
            print(f"[{devices}] SIGKILL, start: online after {f['restart_after_kill_s']} s", flush=True)

            # -- clean stop and start
            try:
                f["stop_s"] = round(daemon.terminate(timeout=args.start_timeout), 1)
            except Exception as exc:  # noqa: BLE001  (reported)
                res.problems.append(f"clean stop: {str(exc).splitlines()[0]}")
                daemon.close()
            f["restart_after_stop_s"], f["caught_up_after_stop_s"] = timed_start(daemon, mon, args, res, "the clean stop")
            print(f"[{devices}] SIGTERM took {f.get('stop_s')} s, start: online after {f['restart_after_stop_s']} s, "
                  f"detection caught up after {f.get('caught_up_after_stop_s')} s", flush=True)

        time.sleep(5.0)  # anything a restart would announce again
        stored2 = daemon.count("readings")
        f["readings_lost_after_restarts"] = expected - stored2
        raises = logged_raises(daemon.data_dir / "alerts.jsonl")
        twice = sorted(s for s, n in raises.items() if n > 1)
        f["sites_raised_twice"] = len(twice)
        if twice:
            res.problems.append(f"{len(twice)} sites raised twice to the same level across the restarts: {twice[:5]}")
        if f["readings_lost"] or f["readings_lost_after_restarts"]:
            res.problems.append(f"readings lost: {f['readings_lost']} (after the restarts: {f['readings_lost_after_restarts']})")
        try:
            daemon.terminate(timeout=120)
        except Exception as exc:  # noqa: BLE001
            res.problems.append(f"final stop: {str(exc).splitlines()[0]}")
    except Aborted as exc:
        res.problems.append(f"aborted: {exc}")
        print(f"[{devices}] ABORTED: {exc}", flush=True)
    finally:
        f["rss_peak_mb"] = round(mon.peak_rss / MB) if mon else None
        closers: list[Any] = [x for x in (prober.close if prober else None, (lambda: fleet.finish(5.0)) if fleet else None,
                                          alerts.close if alerts else None) if x is not None]
        for closer in closers:
            try:
                closer()
            except Exception as exc:  # noqa: BLE001  (tearing down after a failure: said, not raised)
                print(f"[{devices}] while tearing down: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        daemon.close()
        if mon:
            mon.close()
            f["lag_samples"] = len(mon.samples)
            t_first = mon.samples[0].t if mon.samples else 0.0
            #: every second: [s since the first sample, newest id, judged position, lag readings, lag s, store backlog, RSS MB]
            res.samples = [[round(x.t - t_first, 1), x.top, x.pos, x.lag_readings, round(x.lag_s, 2), x.store_backlog, round(x.rss / MB)]
                           for x in mon.samples]
        f["worker_restarts"] = daemon.log_path.read_text(errors="replace").count("worker died") if daemon.log_path.exists() else None
        broker.stop()
        if args.keep:
            print(f"[{devices}] work folder kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return res


def logged_raises(path: Path) -> dict[tuple[str, int], int]:
    """How many times alerts.jsonl announces each (site, level) raise (not drills)."""
    out: dict[tuple[str, int], int] = {}
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            e = json.loads(line)
            if int(e.get("level", 0)) > int(e.get("previous_level", 0)) and not e.get("exercise"):
                key = (str(e["site"]), int(e["level"]))
                out[key] = out.get(key, 0) + 1
        except (ValueError, KeyError, TypeError):
            continue
    return out


# -- output ------------------------------------------------------------------------------------

HEADER = (
    "| devices (channels) | start to online | RSS main / store / detection (total): after start → after steady | sustained msg/s (published / stored) "
    "| detection lag, steady: max (final) | burst: msg/s published / stored, detection lag max | burst recovery: probes (journal) | p99 publish→level: steady / burst (p50) "
    "| restart after SIGKILL (caught up) | SIGTERM stop + start (caught up) | readings lost |"
)
SEP = "|" + "---:|" * 11


def v(x: Any, unit: str = "", nd: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{nd}f}{unit}"
    if isinstance(x, int):
        return f"{x:,}{unit}"
    return f"{x}{unit}"


def row(r: Result) -> str:
    f = r.figures
    cells = [
        f"{f['devices']:,} ({f['channels']:,})",
        v(f.get("start_s"), " s"),
        f"{fmt_rss(f.get('rss_start', {}))} → {fmt_rss(f.get('rss_steady', {}))} ({v(f.get('devices_reported'))} devices heard from)",
        f"{v(f.get('steady_published_msg_s'))} / {v(f.get('steady_stored_msg_s'))}",
        f"{v(f.get('steady_lag_s_max'), ' s')} ({v(f.get('steady_lag_s_final'), ' s')})",
        f"{v(f.get('burst_published_msg_s'), nd=0)} / {v(f.get('burst_stored_msg_s'), nd=0)}, {v(f.get('burst_lag_s_max'), ' s')}",
        f"{v(f.get('burst_recovery_s'), ' s')} (journal: {v(f.get('burst_store_caught_up_s'), ' s')})",
        (f"{v(f.get('latency_steady_p99_s'), ' s', 2)} / {v(f.get('latency_burst_p99_s'), ' s', 2)} "
         f"({v(f.get('latency_steady_p50_s'), ' s', 2)} / {v(f.get('latency_burst_p50_s'), ' s', 2)})"),
        f"{v(f.get('restart_after_kill_s'), ' s')} ({v(f.get('caught_up_after_kill_s'), ' s')})",
        f"{v(f.get('stop_s'), ' s')} + {v(f.get('restart_after_stop_s'), ' s')} ({v(f.get('caught_up_after_stop_s'), ' s')})",
        v(f.get("readings_lost_after_restarts", f.get("readings_lost"))),
    ]
    return "| " + " | ".join(cells) + " |"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--sizes", type=str, default=None, help="comma-separated fleet sizes, run in turn on fresh data (overrides --devices)")
    ap.add_argument("--minutes", type=float, default=2.0, help="steady phase")
    ap.add_argument("--rate", type=float, default=None, help="steady messages/s, whole fleet (default devices/600: every 10 minutes)")
    ap.add_argument("--burst-rate", type=float, default=10_000.0)
    ap.add_argument("--burst-s", type=float, default=60.0)
    ap.add_argument("--recovery-max-s", type=float, default=300.0)
    ap.add_argument("--drain-max-s", type=float, default=300.0)
    ap.add_argument("--start-timeout", type=float, default=600.0, help="seconds a start may take to be online")
    ap.add_argument("--probe-every", type=float, default=2.0)
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes")
    ap.add_argument("--snapshot-interval-s", type=float, default=None, help="GEOWARN_SNAPSHOT_INTERVAL_S (default: the daemon's, 60 s)")
    ap.add_argument("--park-after-s", type=float, default=None,
                    help="GEOWARN_PARK_AFTER_S (default: the daemon's, 30 s; 1e12: never park, as before issue 17's parking)")
    ap.add_argument("--live-channels-max", type=int, default=None,
                    help="GEOWARN_LIVE_CHANNELS_MAX (default: the daemon's, a quarter of the memory at 8 KB a channel)")
    ap.add_argument("--max-rss-gb", type=float, default=16.0)
    ap.add_argument("--no-restarts", action="store_true", help="no SIGKILL and clean-stop restarts (a large fleet's start and steady state only)")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--quick", action="store_true", help="smoke run: 500 devices, 10 s steady at 50 msg/s, a 6 s burst at 1000 msg/s")
    ap.add_argument("--keep", action="store_true", help="keep the work folders")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.devices = 500
        args.minutes = 10 / 60
        args.rate = args.rate or 50.0
        args.burst_rate = 1000.0
        args.burst_s = 6.0
        args.recovery_max_s = 20.0
        args.drain_max_s = 30.0
        args.start_timeout = 60.0
        args.probe_every = 1.0
        args.snapshot_interval_s = args.snapshot_interval_s or 3.0
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else [args.devices]
    if any(n < PER_SITE for n in sizes) or args.publishers < 1 or args.burst_rate <= 0 or args.probe_every <= 0:
        ap.error("sizes >= 5 devices, --publishers >= 1, --burst-rate and --probe-every > 0")
    info = {
        "command": "python3 benchmarks/national_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": git_commit(),
        "modified_files": subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                                         text=True, check=False).stdout.split("\n")[:50],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GB, Linux {platform.release()}, "
                   f"Python {platform.python_version()}",
    }
    results = []
    for n in sizes:
        results.append(run_size(n, args))
        print(HEADER + "\n" + SEP + "\n" + row(results[-1]), flush=True)
        for p in results[-1].problems:
            print(f"  problem: {p}", flush=True)
    lines = [f"{info['command']}  (commit {info['commit']}, {info['date']}, {info['machine']})", "", HEADER, SEP, *(row(r) for r in results)]
    for r in results:
        for p in r.problems:
            lines.append(f"- {r.devices:,} devices: {p}")
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps({**info, "args": {k: (str(x) if isinstance(x, Path) else x) for k, x in vars(args).items()},
                                         "results": [{"devices": r.devices, "figures": r.figures, "problems": r.problems, "samples": r.samples}
                                                     for r in results]},
                                        indent=2, default=str), encoding="utf-8")
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
