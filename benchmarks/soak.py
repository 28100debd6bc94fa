#!/usr/bin/env python3
"""Soak: an hour at a national-average message rate with faults injected (issue 13, item 9).

A real Mosquitto (tests/services.py, persistence on) and a real ``geowarn run`` subprocess
(tests/daemonproc.py) on a data dir of its own; a fleet of ``--devices`` extensometers in
pairs (one site = two devices) publishing native JSON v1 readings at QoS 1, ``--rate`` messages
per second in total (default 420/s: ≈ 250,000 devices at one message every 10 minutes, the
national average of issue 17). Each reading is stamped with the wall clock when it is
published, so a warning's lateness is the time from its reading's publication to the alert
reaching an MQTT subscriber.

``--failing`` sites, one after the other, see both devices' displacement ramp through their
value thresholds (yellow 50, orange 100, red 150 mm): each is expected to raise exactly three
levels, once each. Every other site is flat with 0.05 mm noise and must raise nothing.

Faults, spread over the run (each at its own fraction of ``--minutes``):

1. SIGKILL of the store worker        (the daemon restarts it)
2. SIGKILL of the detection worker    (the daemon restarts it)
3. a burst of hostile messages        (lone surrogates, 10,000 unknown-channel readings,
                                       deep nesting, invalid UTF-8, NaN, truncated JSON, and a
                                       surrogate request on the ack topic)
4. a broker restart                   (clean stop and start: persistence keeps the session)
5. SIGKILL of the daemon              (restarted here, as systemd would; time to ready)
6. a disk-full episode                (the data dir is a tmpfs; a filler file takes its free
                                       space for ``--disk-full-s``; root only)

At the end the publisher stops, the daemon drains, and the journal is compared with what the
broker acknowledged to the publisher: readings lost (acknowledged but not stored), readings
stored that were never published, warnings expected / raised / raised twice / missing, false
raises on stable sites, worker restarts beyond the two injected kills, dead letters from the
burst, and RSS of the daemon's process tree (start, end, peak). Exit status 1 when anything
was lost or duplicated.

    python3 benchmarks/soak.py                     # one hour, 4200 devices, 420 msg/s
    python3 benchmarks/soak.py --minutes 4 --quick  # smoke run
    python3 benchmarks/soak.py --json soak.json --markdown soak.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import paho.mqtt.client as mqtt
import psutil
from daemonproc import Daemon
from geowarn.core.timefmt import parse_instant
from services import Mosquitto, free_port

ADMIN = "420527"  # a county of the bundled example roster
THRESHOLDS = (50.0, 100.0, 150.0)  # yellow, orange, red on the value, mm
RAMP_TOP = 200.0


# -- the fleet ---------------------------------------------------------------------------------


def registry_toml(sites: int, interval_s: float) -> str:
    out = []
    for k in range(sites):
        out.append(
            f'[[sites]]\nsite = "S{k:05d}"\nname = "soak site {k}"\nhazard = "landslide"\nadmin = "{ADMIN}"\n'
            f"lat = 30.9\nlon = 110.5\nthreatened_people = 10\n"
        )
        for d in ("A", "B"):
            out.append(
                f'[[sites.devices]]\ndevice = "S{k:05d}-{d}"\nmodel = "wire extensometer"\nchannels = [\n'
                f'  {{ channel = "disp", kind = "displacement", unit = "mm", interval_s = {interval_s:g}, '
                f"thresholds = {{ yellow = {THRESHOLDS[0]:g}, orange = {THRESHOLDS[1]:g}, red = {THRESHOLDS[2]:g} }} }},\n]\n"
            )
    return "\n".join(out)


@dataclass
class Ramp:
    site: int
    start: float  # wall time
    duration: float

    def value(self, t: float) -> float:
        return RAMP_TOP * min(1.0, max(0.0, (t - self.start) / self.duration))


class Fleet:
    """Publishes every device once per ``interval_s``, spread evenly, and remembers what the
    broker acknowledged (PUBACK) by key (device, channel, t_ms)."""

    def __init__(self, url_port: int, devices: int, rate: float, ramps: dict[int, Ramp], seed: int) -> None:
        self.devices = devices
        self.rate = rate
        self.interval_s = devices / rate
        self.ramps = ramps
        self.rng = random.Random(seed)
        self.seq = [0] * devices
        self.pending: dict[int, tuple[str, str, int]] = {}
        self.early: set[int] = set()
        self.acked: set[tuple[str, str, int]] = set()
        self.sent: set[tuple[str, str, int]] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-fleet", clean_session=False)
        self.c.max_inflight_messages_set(1000)
        self.c.max_queued_messages_set(0)
        self.c.reconnect_delay_set(0.2, 2)
        self.c.on_publish = self._on_publish
        self.c.connect("127.0.0.1", url_port)
        self.c.loop_start()
        self.thread = threading.Thread(target=self._run, name="fleet", daemon=True)

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        with self.lock:
            key = self.pending.pop(mid, None)
            if key is not None:
                self.acked.add(key)
            else:  # acknowledged before ``publish`` below registered its mid
                self.early.add(mid)

    def publish(self, topic: str, payload: bytes, key: tuple[str, str, int] | None = None) -> None:
        # Not under self.lock: paho's network thread holds its own lock while it calls
        # _on_publish, and publish() takes that lock (holding both in turn would deadlock).
        info = self.c.publish(topic, payload, qos=1)
        with self.lock:
            if key is None:
                self.early.discard(info.mid)
                return
            self.sent.add(key)
            if info.mid in self.early:
                self.early.discard(info.mid)
                self.acked.add(key)
            else:
                self.pending[info.mid] = key

    def _run(self) -> None:
        i = 0
        t_next = time.time()
        per_tick = max(1, round(self.rate / 20))  # 20 ticks a second
        while not self.stop.is_set():
            for _ in range(per_tick):
                d = i % self.devices
                i += 1
                site, half = divmod(d, 2)
                device = f"S{site:05d}-{'AB'[half]}"
                now = time.time()
                t_ms = int(now * 1000)
                ramp = self.ramps.get(site)
                v = (ramp.value(now) if ramp else 0.0) + self.rng.gauss(0.0, 0.05)
                self.seq[d] += 1
                doc = {"v": 1, "device": device, "seq": self.seq[d], "readings": [{"ch": "disp", "t": t_ms / 1000.0, "v": round(v, 3)}]}
                self.publish(f"geowarn/S{site:05d}/{device}/data", json.dumps(doc).encode(), (device, "disp", t_ms))
            t_next += per_tick / self.rate
            delay = t_next - time.time()
            if delay > 0:
                self.stop.wait(delay)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def hostile_messages(sites: int) -> list[tuple[str, bytes, bool]]:
    """(topic, payload, is a data message that must become exactly one dead letter)."""
    dev = "S00000-A"
    base = f"geowarn/S00000/{dev}/data"
    now = time.time()
    out: list[tuple[str, bytes, bool]] = []
    out.append((base, b'[{"bn":"' + dev.encode() + b'/","n":"\\ud800","vs":"x","t":' + str(now).encode() + b"}]", True))
    out.append(("geowarn/ack", b'{"request":"\\ud800"}', False))
    many = [{"ch": f"nope{i}", "t": now, "v": 1.0} for i in range(10_000)]
    for _ in range(20):
        out.append((base, json.dumps({"v": 1, "device": dev, "readings": many}).encode(), True))
    out.append((base, b"[" * 5000 + b"]" * 5000, True))
    out.append((base, b"\xff\xfe not utf-8", True))
    out.append((base, b'{"v":1,"device":"' + dev.encode() + b'","readings":[{"ch":"disp","t":1,"v":NaN}]}', True))
    out.append((base, b'{"v":1,"device":"', True))
    out.append((base, json.dumps({"v": 1, "device": dev, "readings": [{"ch": "disp", "t": now + 86400, "v": 1.0}]}).encode(), True))
    out.append((f"geowarn/S{sites + 5:05d}/NOPE/data", b'{"v":1,"device":"NOPE","readings":[]}', True))
    return out


# -- measurements ------------------------------------------------------------------------------


class AlertWatch:
    """Every alert event on MQTT with the wall time it first arrived. MQTT QoS 1 is at least
    once: a copy of an event already seen (same event id: a redelivery after a reconnect, or
    the retained copy a resubscription brings) is counted in ``redeliveries``, not as an event."""

    def __init__(self, port: int) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.seen: set[str] = set()
        self.redeliveries = 0
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-alerts", clean_session=False)
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("geowarn/alerts/#", 1)
        self.c.reconnect_delay_set(0.2, 2)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, c: Any, u: Any, m: Any) -> None:
        try:
            ev = json.loads(m.payload)
            ev["t_s"] = parse_instant(ev["t"])
            key = str(ev["id"])
        except (ValueError, KeyError, TypeError):
            return
        if key in self.seen:
            self.redeliveries += 1
            return
        self.seen.add(key)
        self.events.append((time.time(), ev))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def tree_rss(pid: int) -> int:
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def workers(d: Daemon) -> dict[str, int]:
    """The daemon's worker pids by name: detection holds detection.lock; the store is the other."""
    assert d.proc is not None
    try:
        det = int((d.data_dir / "detection.lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        det = -1
    out = {"detection": det}
    for ch in psutil.Process(d.proc.pid).children():
        try:
            cmd = " ".join(ch.cmdline())
        except psutil.NoSuchProcess:
            continue
        if ch.pid != det and "resource_tracker" not in cmd:
            out["store"] = ch.pid
    return out


def http_status(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode(errors="replace")[:300]
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")[:300]
    except OSError as e:
        return 0, str(e)


@dataclass
class Report:
    args: dict[str, Any]
    faults: list[dict[str, Any]] = field(default_factory=list)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


# -- the run -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--devices", type=int, default=4200, help="an even number: two devices per site")
    ap.add_argument("--rate", type=float, default=420.0, help="messages per second, the whole fleet")
    ap.add_argument("--failing", type=int, default=6, help="sites that ramp through yellow, orange and red")
    ap.add_argument("--disk-full-s", type=float, default=60.0)
    ap.add_argument("--tmpfs-mb", type=int, default=3072)
    ap.add_argument("--no-disk-full", action="store_true", help="no tmpfs and no disk-full episode (not root)")
    ap.add_argument("--quick", action="store_true", help="shorter ramps and episodes for a smoke run")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    if args.devices % 2:
        ap.error("--devices must be even")
    duration = args.minutes * 60.0
    sites = args.devices // 2
    interval_s = args.devices / args.rate
    report = Report({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    work = Path(tempfile.mkdtemp(prefix="geowarn-soak-"))
    data = work / "data"
    data.mkdir()
    mounted = False
    if not args.no_disk_full:
        if os.geteuid() != 0:
            ap.error("the disk-full episode mounts a tmpfs: run as root or pass --no-disk-full")
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.tmpfs_mb}m,mode=0700", "tmpfs", str(data)], check=True)
        mounted = True
    (work / "sites.toml").write_text(registry_toml(sites, interval_s), encoding="utf-8")
    broker = Mosquitto(work / "broker", max_inflight_messages=1000)
    broker.start()
    http_port = free_port()
    daemon = Daemon(
        data / "gw",
        broker.url,
        extra_env={"GEOWARN_SITES": str(work / "sites.toml"), "GEOWARN_HTTP": f"127.0.0.1:{http_port}", "GEOWARN_STATS_INTERVAL_S": "30"},
        client_id="geowarn-soak",
    )
    daemon.log_path = work / "daemon.log"
    t_start = time.time()
    span = duration / max(1, args.failing)
    ramp_len = min(600.0, span / 2) if not args.quick else min(120.0, span / 2)
    ramps = {k: Ramp(k, t_start + (k + 0.25) * span, ramp_len) for k in range(min(args.failing, sites))}
    fleet = alerts = None
    status = 0
    try:
        t0 = time.monotonic()
        daemon.start(timeout=300)
        report.figures["first_start_s"] = round(time.monotonic() - t0, 1)
        alerts = AlertWatch(broker.port)
        fleet = Fleet(broker.port, args.devices, args.rate, ramps, args.seed)
        fleet.thread.start()
        rss_stop = threading.Event()

        def sample_rss() -> None:
            while not rss_stop.wait(10.0):
                if daemon.proc is not None:
                    report.rss_samples.append((time.time() - t_start, tree_rss(daemon.proc.pid)))

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()

        def fault(name: str, **info: Any) -> None:
            rec = {"fault": name, "at_s": round(time.time() - t_start, 1), **info}
            report.faults.append(rec)
            print(f"[{rec['at_s']:8.1f} s] {name} {json.dumps(info)}", flush=True)

        def at(fraction: float) -> None:
            target = t_start + fraction * duration
            while time.time() < target:
                time.sleep(min(1.0, target - time.time()))

        dead_before = None
        at(1 / 8)
        w = workers(daemon)
        os.kill(w["store"], signal.SIGKILL)
        fault("sigkill store worker", pid=w["store"])
        at(2 / 8)
        w = workers(daemon)
        os.kill(w["detection"], signal.SIGKILL)
        fault("sigkill detection worker", pid=w["detection"])
        at(3 / 8)
        dead_before = daemon.count("deadletters")
        hostile = hostile_messages(sites)
        for topic, payload, _ in hostile:
            fleet.publish(topic, payload)
        expected_dead = sum(1 for *_, d in hostile if d)
        fault("hostile burst", messages=len(hostile), data_messages=expected_dead)
        at(4 / 8)
        t0 = time.monotonic()
        broker.restart()
        fault("broker restart", took_s=round(time.monotonic() - t0, 2))
        at(5 / 8)
        daemon.kill()
        t0 = time.monotonic()
        daemon.start(timeout=300)
        fault("sigkill daemon, restart", ready_after_s=round(time.monotonic() - t0, 1))
        if mounted:
            at(6 / 8)
            st = os.statvfs(data)
            filler = data / "filler"
            free = st.f_bavail * st.f_frsize
            with open(filler, "wb") as fh:
                try:
                    fh.truncate(0)
                    os.posix_fallocate(fh.fileno(), 0, max(0, free - 4096))
                except OSError:
                    pass
            pid_before = daemon.proc.pid if daemon.proc else None
            health = []
            t_end = time.time() + args.disk_full_s
            while time.time() < t_end:
                health.append(http_status(http_port, "/healthz")[0])
                time.sleep(2.0)
            filler.unlink()
            alive = daemon.proc is not None and daemon.proc.poll() is None and daemon.proc.pid == pid_before
            fault("disk full", seconds=args.disk_full_s, daemon_stayed_up=alive,
                  healthz=sorted({h: health.count(h) for h in health}.items()))
            if not alive:
                # An operator (or systemd) starts it again; counted as a failure of the episode.
                daemon.close()
                t0 = time.monotonic()
                daemon.start(timeout=300)
                fault("restart after disk full", ready_after_s=round(time.monotonic() - t0, 1))
        at(1.0)
        fleet.stop.set()
        fleet.thread.join()
        rss_end = tree_rss(daemon.proc.pid) if daemon.proc else 0
        # Drain: every acknowledged publish in the broker's hands, then in the journal.
        t_drain = time.monotonic()
        while fleet.pending and time.monotonic() - t_drain < 120:
            time.sleep(0.5)
        want = fleet.acked
        stored: set[tuple[str, str, int]] = set()
        while time.monotonic() - t_drain < 600:
            rows = daemon.query("SELECT s.device, s.channel, r.t_ms FROM readings r JOIN series s ON s.id = r.series")
            stored = {(d, c, int(t)) for d, c, t in rows}
            if want <= stored:
                break
            time.sleep(2.0)
        drained_s = time.monotonic() - t_drain
        time.sleep(5.0)  # the last alerts on their way
        rows_total = daemon.count("readings")
        # The alert log is the record of what was announced (MQTT may deliver a copy twice).
        logged = []
        alerts_path = daemon.data_dir / "alerts.jsonl"
        if alerts_path.exists():
            for line in alerts_path.read_text(errors="replace").splitlines():
                try:
                    logged.append(json.loads(line))
                except ValueError:
                    pass
        logged_raises = [(str(e["site"]), int(e["level"])) for e in logged
                         if int(e.get("level", 0)) > int(e.get("previous_level", 0)) and not e.get("exercise")]
        raises = []
        for got, ev in alerts.events if alerts else []:
            if int(ev.get("level", 0)) > int(ev.get("previous_level", 0)) and not ev.get("exercise"):
                raises.append((got, ev))
        expected = {(f"S{k:05d}", lvl) for k in ramps for lvl in (2, 3, 4)}  # yellow, orange, red
        got_keys = [(str(ev["site"]), int(ev["level"])) for _, ev in raises]
        late = [got - float(ev["t_s"]) for got, ev in raises if (str(ev["site"]), int(ev["level"])) in expected]
        dead_after = daemon.count("deadletters")
        log_text = daemon.log_path.read_text(errors="replace")
        restarts = log_text.count("worker died; starting a new one")
        f = report.figures
        f.update(
            published=len(fleet.sent),
            acked_by_broker=len(fleet.acked),
            never_acked=len(fleet.sent - fleet.acked),
            readings_lost=len(want - stored),
            readings_unpublished_stored=len(stored - fleet.sent),
            journal_rows=rows_total,
            readings_duplicated=rows_total - len(stored),
            drain_s=round(drained_s, 1),
            warnings_expected=len(expected),
            warnings_raised=len(set(got_keys) & expected),
            warnings_raised_twice=len(got_keys) - len(set(got_keys)),
            warnings_logged_twice=len(logged_raises) - len(set(logged_raises)),
            alert_mqtt_redeliveries=alerts.redeliveries if alerts else 0,
            warnings_missing=sorted(expected - set(got_keys)),
            false_raises=sorted({k for k in got_keys if k not in expected}),
            warning_late_s_median=round(statistics.median(late), 2) if late else None,
            warning_late_s_max=round(max(late), 2) if late else None,
            worker_restarts=restarts,
            worker_restarts_unexpected=max(0, restarts - 2),
            deadletters_from_burst=(dead_after - dead_before) if dead_before is not None else None,
            deadletters_expected_at_least=sum(1 for *_, d in hostile_messages(sites) if d),
            rss_start_mb=round(report.rss_samples[0][1] / 2**20) if report.rss_samples else None,
            rss_end_mb=round(rss_end / 2**20),
            rss_peak_mb=round(max(r for _, r in report.rss_samples) / 2**20) if report.rss_samples else None,
            machine=f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        )
        if f["readings_lost"] or f["readings_duplicated"] or f["warnings_raised_twice"] or f["warnings_missing"] or f["false_raises"]:
            status = 1
        rss_stop.set()
        try:
            daemon.terminate(timeout=120)
        except Exception as exc:  # noqa: BLE001  (reported, not hidden)
            f["clean_stop_error"] = str(exc)[:500]
            status = 1
    finally:
        for x in (fleet, alerts):
            if x is not None:
                x.close()
        daemon.close()
        broker.stop()
        if mounted:
            subprocess.run(["umount", "-l", str(data)], check=False)
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report.figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"args": report.args, "faults": report.faults, "figures": report.figures,
                                         "rss_samples": report.rss_samples}, indent=2), encoding="utf-8")
    if args.markdown:
        lines = ["| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in report.figures.items())]
        lines += ["", "| fault | at (s) | details |", "|---|---|---|"]
        lines += [f"| {r['fault']} | {r['at_s']} | {json.dumps({k: v for k, v in r.items() if k not in ('fault', 'at_s')})} |" for r in report.faults]
        args.markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return status


if __name__ == "__main__":
    sys.exit(main())
