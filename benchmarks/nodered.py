#!/usr/bin/env python3
"""GeoWarn's live path against a Node-RED threshold flow: the same broker, the same feed, one run.

Issue 17, item 6. A real Mosquitto (tests/services.py) on a free loopback port; a feed made by
``geowarn simulate --scenario stable --stations N --out`` (native JSON v1 on
``geowarn/{site}/{device}/data``, hourly heartbeats on ``.../status``), ending with one
*end marker*: a reading of 200 mm from an extra extensometer (site ``ZZBENCH``) whose yellow /
orange / red thresholds are 50 / 100 / 150 mm. Every other reading is of a stable slope and
crosses nothing.

Each round is a **backlog drain**: two persistent sessions (QoS 1 subscriptions to the data
and status topics) are created, the whole feed is published at QoS 1 while both are offline
(the broker queues it for each), then

* **GeoWarn**: a real ``geowarn run`` subprocess (tests/daemonproc.py) on a fresh data dir,
  with a registry covering the feed's devices (the simulator's own, with thresholds on the GNSS
  channels, plus the marker). Its end point: the alert the marker raises reaches an MQTT
  subscriber of ``geowarn/alerts/{admin}/ZZBENCH``. Detection judges the journal in arrival
  order and the marker was published last, so by then every message has been committed to the
  message log, decoded into the journal (SQLite, fsync per commit) and judged by the full
  detector bank and fusion. The time the last reading reached the journal is reported too
  (polled every 50 ms from the launch on).
* **Node-RED** (npm ``node-red``, headless): one ``mqtt-broker`` connection (MQTT 3.1.1, fixed
  client id, clean session off: the only way to get the queued QoS 1 backlog), an ``mqtt in``
  node per topic (data, status; QoS 1, payload parsed as JSON by the node itself) wired to one
  ``function`` node that counts every message and compares every reading with its channel's
  thresholds (the same table as GeoWarn's registry, a JS object built once in the node's
  start-up code; level = highest threshold ``value >=``, as GeoWarn's threshold detector reads
  them), sends a message for each reading at a level, and when it has seen all N messages
  sends its figures (count, readings, first/last message ``Date.now()``) to an ``mqtt out``
  node. No debug nodes, no editor (``httpAdminRoot: false``), no context persistence.

Both clocks run from *the first message in the subscriber's hands* to *the end marker's MQTT
message received by this script*: for GeoWarn the earliest ``received_ms`` the ack path
stamped in the journal, for Node-RED the function node's ``Date.now()`` at its first message.
Connecting, loading the registry, starting workers (GeoWarn) or the runtime (Node-RED) are
outside both clocks; "from launch" (process start to end marker) is reported as well.

By default the two drain one after the other, alternating which goes first, so that neither
competes with the other for this machine's cores; ``--together`` starts both at once (the
brief's literal wording; on 2 cores that measures the contention as much as either).

Node-RED is installed with npm into a cache folder outside the repository on first use
(``--install`` only installs; ``GEOWARN_NODERED_DIR`` moves it).

    python3 benchmarks/nodered.py                    # 2000 devices × 4 h (~56k messages), 3 rounds
    python3 benchmarks/nodered.py --quick            # smoke test, < 60 s
    python3 benchmarks/nodered.py --install          # install Node-RED into the cache and exit
    python3 benchmarks/nodered.py --markdown out.md --json out.json

Checks (any failure exits non-zero): each side saw exactly the N messages (Node-RED's count,
GeoWarn's journal: every reading and status, no dead letters); the broker redelivers nothing
to either session afterwards (everything was acked); both flag exactly the marker's reading.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

import paho.mqtt.client as mqtt
import psutil
from daemonproc import Daemon
from ingest_backlog import (
    BenchFailure,
    leftover,
    machine,
    prepare_session,
    publish_backlog,
)
from services import Mosquitto, free_port

NODE_RED_SPEC = "node-red@4"
DEFAULT_NODERED_DIR = Path.home() / ".cache" / "geowarn-bench" / "node-red"
ADMIN = "420527"  # the synthetic sites' county, in the bundled example roster
MARKER_SITE, MARKER_DEVICE, MARKER_CHANNEL = "ZZBENCH", "ZZBENCH-X1", "disp"
MARKER_THRESHOLDS = {"yellow": 50.0, "orange": 100.0, "red": 150.0}
MARKER_VALUE = 200.0
#: Thresholds put on the simulated GNSS channels (mm): the synthetic receivers sit up to ~100 mm
#: from their reference and a stable slope adds a few mm, so no reading of the feed crosses them.
GNSS_THRESHOLDS = {"yellow": 300.0, "orange": 400.0, "red": 500.0}
GNSS_KINDS = {"gnss_e", "gnss_n", "gnss_u"}
LEVELS = (("blue", 1), ("yellow", 2), ("orange", 3), ("red", 4))
RESULT_TOPIC = "bench/nodered/result"
NODERED_ALERT_TOPIC = "bench/nodered/alert"


def nodered_dir() -> Path:
    return Path(os.environ.get("GEOWARN_NODERED_DIR") or DEFAULT_NODERED_DIR)


# -- Node-RED: install, settings, flow ---------------------------------------------------------


def nodered_script(base: Path) -> Path:
    """Node-RED's entry script (red.js) inside the npm prefix ``base``."""
    return base / "node_modules" / "node-red" / "red.js"


def nodered_version(base: Path) -> str | None:
    try:
        return str(json.loads((base / "node_modules" / "node-red" / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def install_nodered(base: Path) -> str:
    """``npm install --prefix BASE node-red@4`` (idempotent); returns the installed version."""
    if nodered_version(base) and nodered_script(base).exists():
        return str(nodered_version(base))
    npm = shutil.which("npm")
    if npm is None:
        raise BenchFailure("npm is not installed: Node-RED needs node >= 18 and npm (Debian: apt-get install nodejs npm)")
    base.mkdir(parents=True, exist_ok=True)
    print(f"installing {NODE_RED_SPEC} into {base} with npm (once; about 20 s) ...", file=sys.stderr, flush=True)
    r = subprocess.run([npm, "install", "--prefix", str(base), "--no-audit", "--no-fund", "--loglevel", "error", NODE_RED_SPEC],
                       capture_output=True, text=True, check=False)
    version = nodered_version(base)
    if r.returncode != 0 or version is None:
        raise BenchFailure(f"npm install {NODE_RED_SPEC} into {base} failed ({r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    print(f"installed node-red {version}", file=sys.stderr, flush=True)
    return version


def settings_js(flow_file: str, port: int, sync_delivery: bool = False) -> str:
    """Headless: no editor, no admin API, no node HTTP endpoints, flows from the given file.
    ``sync_delivery``: Node-RED's (undocumented) ``runtimeSyncDelivery``, messages passed from
    node to node in one call instead of one event-loop turn per hop (the default since 1.0)."""
    sync = "\n    runtimeSyncDelivery: true," if sync_delivery else ""
    return f"""// Generated by benchmarks/nodered.py: headless Node-RED, flows from a file.
module.exports = {{
    flowFile: {json.dumps(flow_file)},
    flowFilePretty: false,
    credentialSecret: false,
    uiHost: "127.0.0.1",
    uiPort: {port},
    httpAdminRoot: false,
    httpNodeRoot: false,
    httpStatic: false,
    disableEditor: true,
    runtimeState: {{ enabled: false, ui: false }},
    diagnostics: {{ enabled: false, ui: false }},
    telemetry: {{ enabled: false, updateNotification: false }},
    externalModules: {{ autoInstall: false, palette: {{ allowInstall: false }}, modules: {{ allowInstall: false }} }},
    contextStorage: {{ default: {{ module: "memory" }} }},{sync}
    functionExternalModules: false,
    logging: {{ console: {{ level: "warn", metrics: false, audit: false }} }},
}};
"""


FUNCTION_INIT = """// Built once when the flow starts: the thresholds of every channel, the counters.
context.set("s", {
    expected: %(expected)d,
    th: %(thresholds)s,
    n: 0, readings: 0, flagged: 0, first: 0,
    levels: [0, 0, 0, 0, 0],
});
"""

FUNCTION_BODY = """const s = context.get("s");
if (s.n === 0) s.first = Date.now();
s.n++;
const p = msg.payload;
const rs = p.readings;
let alert = null;
if (rs !== undefined) {
    const dev = p.device;
    for (let i = 0; i < rs.length; i++) {
        const r = rs[i];
        s.readings++;
        const th = s.th[dev + "/" + r.ch];
        if (th === undefined) continue;
        let level = 0;
        for (let k = 0; k < th.length; k++) if (r.v >= th[k][1]) level = th[k][0];
        if (level > 0) {
            s.flagged++;
            s.levels[level]++;
            alert = { topic: "%(alert_topic)s", payload: JSON.stringify({ device: dev, ch: r.ch, t: r.t, v: r.v, level: level }) };
        }
    }
}
if (s.n === s.expected) {
    const done = { topic: "%(result_topic)s", payload: JSON.stringify({
        n: s.n, readings: s.readings, flagged: s.flagged, levels: s.levels, first_ms: s.first, last_ms: Date.now() }) };
    return [alert, done];
}
return alert === null ? null : [alert, null];
"""


def flow_json(client_id: str, port: int, topics: list[str], expected: int, thresholds: dict[str, list[list[float]]]) -> list[dict[str, Any]]:
    broker = {
        "id": "bench-broker", "type": "mqtt-broker", "name": "bench broker", "broker": "127.0.0.1", "port": str(port),
        "clientid": client_id, "autoConnect": True, "usetls": False, "protocolVersion": "4", "keepalive": "60",
        "cleansession": False, "autoUnsubscribe": False,
        "birthTopic": "", "birthQos": "0", "birthRetain": "false", "birthPayload": "", "birthMsg": {},
        "closeTopic": "", "closeQos": "0", "closeRetain": "false", "closePayload": "", "closeMsg": {},
        "willTopic": "", "willQos": "0", "willRetain": "false", "willPayload": "", "willMsg": {},
        "userProps": "", "sessionExpiry": "",
    }
    flow: list[dict[str, Any]] = [{"id": "bench-tab", "type": "tab", "label": "threshold benchmark", "disabled": False, "info": ""}, broker]
    for i, topic in enumerate(topics):
        flow.append({
            "id": f"bench-in-{i}", "type": "mqtt in", "z": "bench-tab", "name": "", "topic": topic, "qos": "1",
            "datatype": "json", "broker": "bench-broker", "nl": False, "rap": True, "rh": 0, "inputs": 0,
            "x": 100, "y": 100 + 60 * i, "wires": [["bench-threshold"]],
        })
    flow.append({
        "id": "bench-threshold", "type": "function", "z": "bench-tab", "name": "threshold check and count",
        "func": FUNCTION_BODY % {"alert_topic": NODERED_ALERT_TOPIC, "result_topic": RESULT_TOPIC},
        "outputs": 2, "timeout": 0, "noerr": 0, "finalize": "", "libs": [],
        "initialize": FUNCTION_INIT % {"expected": expected, "thresholds": json.dumps(thresholds, separators=(",", ":"))},
        "x": 350, "y": 100, "wires": [["bench-out"], ["bench-out"]],
    })
    flow.append({
        "id": "bench-out", "type": "mqtt out", "z": "bench-tab", "name": "", "topic": "", "qos": "1", "retain": "false",
        "respTopic": "", "contentType": "", "userProps": "", "correl": "", "expiry": "", "broker": "bench-broker",
        "x": 600, "y": 100, "wires": [],
    })
    return flow


# -- the feed and the registry -----------------------------------------------------------------


@dataclass
class Feed:
    messages: list[tuple[str, bytes]]
    readings: int
    statuses: int
    sites_path: Path
    thresholds: dict[str, list[list[float]]]  # "device/channel" -> [[level, threshold], ...]


def _levels(th: dict[str, float]) -> list[list[float]]:
    return [[n, th[name]] for name, n in LEVELS if name in th]


def make_feed(work: Path, stations: int, duration_s: float, seed: int) -> Feed:
    """``geowarn simulate`` writes the feed and its registry; the registry gets thresholds on
    the GNSS channels and the marker site; the marker message goes last."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "feed.jsonl"
    start = time.time() - duration_s - 120.0  # the last readings a couple of minutes old: none in the future
    r = subprocess.run(
        [sys.executable, "-m", "geowarn.service.cli", "simulate", "--scenario", "stable", "--stations", str(stations),
         "--duration", f"{duration_s:g}", "--start", f"{start:.0f}", "--seed", str(seed), "--out", str(out), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    if r.returncode != 0:
        raise BenchFailure(f"geowarn simulate failed ({r.returncode}): {r.stderr[-2000:]}")
    doc = tomllib.loads(Path(f"{out}.sites.toml").read_text())
    thresholds: dict[str, list[list[float]]] = {}
    for site in doc["sites"]:
        for dev in site["devices"]:
            for ch in dev["channels"]:
                if ch["kind"] in GNSS_KINDS:
                    ch["thresholds"] = dict(GNSS_THRESHOLDS)
                    thresholds[f"{dev['device']}/{ch['channel']}"] = _levels(GNSS_THRESHOLDS)
    doc["sites"].append({
        "site": MARKER_SITE, "name": "benchmark end marker", "admin": ADMIN, "lat": 30.9, "lon": 110.5,
        "devices": [{"device": MARKER_DEVICE, "channels": [
            {"channel": MARKER_CHANNEL, "kind": "displacement", "unit": "mm", "interval_s": 600.0, "thresholds": dict(MARKER_THRESHOLDS)},
        ]}],
    })
    thresholds[f"{MARKER_DEVICE}/{MARKER_CHANNEL}"] = _levels(MARKER_THRESHOLDS)
    from geowarn.simulators.scenario import sites_toml

    sites_path = work / "sites.toml"
    sites_path.write_text(sites_toml(doc), encoding="utf-8")
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    messages: list[tuple[str, bytes]] = []
    readings = statuses = 0
    t_last = 0.0
    with out.open() as f:
        for line in f:
            rec = json.loads(line)
            topic, payload = rec["topic"], rec["payload"]
            if topic.endswith("/data"):
                readings += len(payload["readings"])
                t_last = max(t_last, max(float(x["t"]) for x in payload["readings"]))
            elif topic.endswith("/status"):
                statuses += 1
            else:
                raise BenchFailure(f"unexpected topic in the simulator's feed: {topic}")
            messages.append((topic, dumps(payload).encode()))
    marker = {"v": 1, "device": MARKER_DEVICE, "seq": 0, "readings": [{"ch": MARKER_CHANNEL, "t": round(t_last + 1.0, 3), "v": MARKER_VALUE}]}
    messages.append((f"geowarn/{MARKER_SITE}/{MARKER_DEVICE}/data", dumps(marker).encode()))
    return Feed(messages, readings + 1, statuses, sites_path, thresholds)


# -- listening for the end markers -------------------------------------------------------------


class Listener:
    """Records (arrival time, topic, payload) of live (not retained) messages on some topics."""

    def __init__(self, broker: Mosquitto, topics: list[str]) -> None:
        self.q: queue.Queue[tuple[float, str, bytes]] = queue.Queue()
        subscribed: queue.Queue[int] = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-listener-{os.getpid()}-{time.monotonic_ns()}")
        self.c.on_message = lambda c, u, m: None if m.retain else self.q.put((time.time(), m.topic, bytes(m.payload)))
        self.c.on_subscribe = lambda c, u, mid, rc, p: subscribed.put(mid)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.c.connect(broker.host, broker.port, 30)
        self.c.loop_start()
        try:
            subscribed.get(timeout=10)
        except queue.Empty:
            self.close()
            raise BenchFailure("listener: no SUBACK from the broker") from None

    def get(self, timeout: float) -> tuple[float, str, bytes] | None:
        try:
            return self.q.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


# -- one drain each ----------------------------------------------------------------------------


class CpuSampler:
    """CPU seconds (user + system) of a process and its children, sampled every 50 ms on a
    thread from the launch on, so that the CPU spent between two instants known only
    afterwards (the first message, the end marker) can be interpolated; start-up is left out."""

    def __init__(self, pid: Callable[[], int | None]) -> None:
        self.samples: list[tuple[float, float]] = []
        self._pid = pid
        self._procs: dict[int, psutil.Process] = {}
        self._last: dict[int, float] = {}
        self._gone = 0.0  # CPU of processes that have exited (their last sample)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def sample(self) -> None:
        pid = self._pid()
        if pid is None:
            return
        try:
            root = self._procs.setdefault(pid, psutil.Process(pid))
            for child in root.children(recursive=True):
                self._procs.setdefault(child.pid, child)
        except psutil.Error:
            pass
        total = 0.0
        for p, proc in list(self._procs.items()):
            try:
                t = proc.cpu_times()
                self._last[p] = t.user + t.system
            except psutil.Error:
                del self._procs[p]
                self._gone += self._last.pop(p, 0.0)
                continue
            total += self._last[p]
        self.samples.append((time.time(), total + self._gone))

    def at(self, t: float) -> float:
        """CPU seconds used up to wall time ``t`` (linear between the samples around it)."""
        before = [x for x in self.samples if x[0] <= t]
        after = [x for x in self.samples if x[0] >= t]
        if not before:
            return self.samples[0][1] if self.samples else 0.0
        if not after:
            return self.samples[-1][1]
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)



@dataclass
class Drain:
    side: str  # "geowarn" or "node-red"
    round: int
    messages: int
    seconds: float  # first message in hand -> end marker received over MQTT
    from_launch_s: float  # process start -> end marker received
    journal_s: float = 0.0  # geowarn: first message -> last reading in the journal (50 ms polls)
    flagged: int = 0  # readings at a level (node-red) / alert events (geowarn)
    level: int = 0  # the level the marker raised
    order: str = ""  # "first", "second" or "together"
    cpu_s: float = 0.0  # CPU seconds of the subscriber's processes during the drain (interpolated, 50 ms samples)

    @property
    def cpu_us_per_msg(self) -> float:
        return self.cpu_s / self.messages * 1e6

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


class GeoWarnSide:
    def __init__(self, broker: Mosquitto, work: Path, feed: Feed, client_id: str, timeout: float) -> None:
        self.broker, self.feed, self.timeout = broker, feed, timeout
        self.n = len(feed.messages)
        self.daemon = Daemon(
            work / f"data-{client_id}", broker.url, client_id=client_id,
            extra_env={"GEOWARN_SITES": str(feed.sites_path), "GEOWARN_HTTP": f"127.0.0.1:{free_port()}"},
        )
        self.listener = Listener(broker, [f"geowarn/alerts/{ADMIN}/{MARKER_SITE}"])
        self.t_launch = 0.0
        self.t_alert: float | None = None
        self.t_journal: float | None = None
        self.alert: dict[str, Any] = {}
        self._stop = threading.Event()
        self._journal_watch = threading.Thread(target=self._watch_journal, name="journal-watch", daemon=True)

    def launch(self) -> None:
        self.t_launch = time.time()
        self.cpu = CpuSampler(lambda: self.daemon.proc.pid if self.daemon.proc is not None else None)
        self._journal_watch.start()
        self.daemon.start(timeout=120)

    def _watch_journal(self) -> None:
        """From the launch on, every 50 ms: has the last reading reached the journal?"""
        while not self._stop.wait(0.05):
            if self.daemon.count("readings") >= self.feed.readings:
                self.t_journal = time.time()
                return

    def poll(self) -> bool:
        """One step of waiting; True when both end points have been seen."""
        if self.t_alert is None:
            got = self.listener.get(0.02)
            if got is not None:
                doc = json.loads(got[2])
                if doc.get("site") == MARKER_SITE and doc.get("kind") == "raise":
                    self.t_alert, self.alert = got[0], doc
        else:
            time.sleep(0.02)
        if self.daemon.proc is not None and self.daemon.proc.poll() is not None:
            raise BenchFailure(f"geowarn run died ({self.daemon.proc.returncode}):\n{self.daemon.log_tail()}")
        return self.t_alert is not None and self.t_journal is not None

    def finish(self, r: int, order: str) -> Drain:
        self.cpu.stop()
        self._stop.set()
        d = self.daemon
        first = d.query("SELECT min(m) FROM (SELECT min(received_ms) AS m FROM readings UNION ALL SELECT min(received_ms) FROM device_status)")
        stored, statuses, dead = d.count("readings"), d.count("device_status"), d.count("deadletters")
        alerts_file = d.data_dir / "alerts.jsonl"
        raised = [json.loads(x) for x in alerts_file.read_text().splitlines()] if alerts_file.exists() else []
        try:
            d.terminate(timeout=120)
        finally:
            d.close()
            self.listener.close()
        if stored != self.feed.readings or statuses != self.feed.statuses or dead:
            raise BenchFailure(f"geowarn: journal holds {stored} readings, {statuses} statuses, {dead} dead letters; "
                               f"expected {self.feed.readings}, {self.feed.statuses}, 0")
        others = [a for a in raised if a.get("site") != MARKER_SITE and not str(a.get("kind") or "").startswith("nodata")]
        if others:
            raise BenchFailure(f"geowarn raised {len(others)} alerts on the stable sites, e.g. {others[0]}")
        assert self.t_alert is not None and self.t_journal is not None
        t0 = first[0][0] / 1000.0
        return Drain("geowarn", r, self.n, self.t_alert - t0, self.t_alert - self.t_launch, self.t_journal - t0,
                     flagged=sum(1 for a in raised if a.get("site") == MARKER_SITE), level=int(self.alert.get("level", 0)), order=order,
                     cpu_s=self.cpu.at(self.t_alert) - self.cpu.at(t0))

    def abort(self) -> None:
        self._stop.set()
        if hasattr(self, "cpu"):
            self.cpu.stop()
        self.daemon.close()
        self.listener.close()


class NodeRedSide:
    def __init__(self, broker: Mosquitto, work: Path, feed: Feed, client_id: str, base: Path, topics: list[str], timeout: float,
                 sync_delivery: bool = False) -> None:
        self.feed, self.timeout, self.base = feed, timeout, base
        self.n = len(feed.messages)
        self.user_dir = work / f"nodered-{client_id}"
        self.user_dir.mkdir(parents=True)
        (self.user_dir / "flows.json").write_text(json.dumps(flow_json(client_id, broker.port, topics, self.n, feed.thresholds)))
        (self.user_dir / "settings.js").write_text(settings_js("flows.json", free_port(), sync_delivery))
        self.log_path = self.user_dir / "node-red.log"
        self.listener = Listener(broker, [RESULT_TOPIC, NODERED_ALERT_TOPIC])
        self.proc: subprocess.Popen[bytes] | None = None
        self.t_launch = 0.0
        self.t_done: float | None = None
        self.result: dict[str, Any] = {}
        self.alerts: list[dict[str, Any]] = []

    def launch(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise BenchFailure("node is not installed")
        self.t_launch = time.time()
        self.cpu = CpuSampler(lambda: self.proc.pid if self.proc is not None else None)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [node, str(nodered_script(self.base)), "--settings", str(self.user_dir / "settings.js"),
                 "--userDir", str(self.user_dir), "flows.json"],
                cwd=self.user_dir, stdout=log, stderr=subprocess.STDOUT,
            )

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def poll(self) -> bool:
        got = self.listener.get(0.02)
        if got is not None:
            t, topic, payload = got
            if topic == RESULT_TOPIC:
                self.t_done, self.result = t, json.loads(payload)
            else:
                self.alerts.append(json.loads(payload))
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchFailure(f"node-red exited ({self.proc.returncode}):\n{self.log_tail()}")
        return self.t_done is not None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Node-RED closes its flows (and MQTT session) on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def finish(self, r: int, order: str) -> Drain:
        self.cpu.stop()
        time.sleep(0.2)  # a late alert message from the flow would still arrive
        while (got := self.listener.get(0.0)) is not None:
            if got[1] == NODERED_ALERT_TOPIC:
                self.alerts.append(json.loads(got[2]))
        self.stop()
        self.listener.close()
        res = self.result
        if res.get("n") != self.n or res.get("readings") != self.feed.readings:
            raise BenchFailure(f"node-red counted {res.get('n')} messages and {res.get('readings')} readings, expected {self.n} and {self.feed.readings}")
        if res.get("flagged") != 1 or len(self.alerts) != 1 or self.alerts[0].get("device") != MARKER_DEVICE:
            raise BenchFailure(f"node-red flagged {res.get('flagged')} readings ({self.alerts[:3]}), expected the marker's only")
        assert self.t_done is not None
        t0 = res["first_ms"] / 1000.0
        return Drain("node-red", r, self.n, self.t_done - t0, self.t_done - self.t_launch, 0.0,
                     flagged=int(res["flagged"]), level=int(self.alerts[0]["level"]), order=order,
                     cpu_s=self.cpu.at(self.t_done) - self.cpu.at(t0))

    def abort(self) -> None:
        if hasattr(self, "cpu"):
            self.cpu.stop()
        self.stop()
        self.listener.close()


def wait_all(sides: list[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(sides)
    while pending:
        pending = [s for s in pending if not s.poll()]
        if pending and time.monotonic() > deadline:
            raise BenchFailure(f"{[type(s).__name__ for s in pending]}: no end marker within {timeout:.0f} s")


# -- a run -------------------------------------------------------------------------------------

SUBSCRIPTIONS = ["geowarn/+/+/data", "geowarn/+/+/status"]


@dataclass
class Run:
    messages: int = 0
    readings: int = 0
    drains: list[Drain] = field(default_factory=list)
    publish_s: list[float] = field(default_factory=list)

    def of(self, side: str) -> list[Drain]:
        return [d for d in self.drains if d.side == side]

    def median(self, side: str, what: str) -> float:
        return statistics.median(getattr(d, what) for d in self.of(side))


def run_rounds(a: argparse.Namespace, base: Path, work: Path) -> Run:
    broker = Mosquitto(work / "mosquitto", max_inflight_messages=a.inflight, autosave_interval=1800)
    broker.start()
    run = Run()
    try:
        for r in range(1, a.rounds + 1):
            feed = make_feed(work / f"feed-r{r}", a.stations, a.duration, a.seed)
            run.messages, run.readings = len(feed.messages), feed.readings
            gw_id, nr_id = f"bench-geowarn-r{r}", f"bench-nodered-r{r}"
            prepare_session(broker, gw_id)
            prepare_session(broker, nr_id)
            run.publish_s.append(publish_backlog(broker, feed.messages))
            # Retained alerts of an earlier round are ignored by the listeners (live messages only).
            if a.together:
                gw = GeoWarnSide(broker, work, feed, gw_id, a.timeout)
                nr = NodeRedSide(broker, work, feed, nr_id, base, SUBSCRIPTIONS, a.timeout, a.nodered_sync)
                try:
                    nr.launch()
                    gw.launch()
                    wait_all([gw, nr], a.timeout)
                except BaseException:
                    gw.abort()
                    nr.abort()
                    raise
                done = [gw.finish(r, "together"), nr.finish(r, "together")]
            else:
                order = ["geowarn", "node-red"] if r % 2 else ["node-red", "geowarn"]
                done = []
                for pos, side in enumerate(order):
                    s: Any = (GeoWarnSide(broker, work, feed, gw_id, a.timeout) if side == "geowarn"
                              else NodeRedSide(broker, work, feed, nr_id, base, SUBSCRIPTIONS, a.timeout, a.nodered_sync))
                    try:
                        s.launch()
                        wait_all([s], a.timeout)
                    except BaseException:
                        s.abort()
                        raise
                    done.append(s.finish(r, "first" if pos == 0 else "second"))
            for cid in (gw_id, nr_id):
                rest = leftover(broker, cid)
                if rest:
                    raise BenchFailure(f"{cid}: the broker redelivered {rest} unacknowledged messages after the drain")
            run.drains += done
            for d in done:
                extra = f"  in journal {d.journal_s:6.2f} s ({d.messages / d.journal_s:8,.0f} msg/s)" if d.journal_s else ""
                print(f"  round {r}  {d.side:<9} ({d.order:<8}) {d.seconds:7.2f} s  {d.rate:8,.0f} msg/s  from launch {d.from_launch_s:6.2f} s"
                      f"  CPU {d.cpu_us_per_msg:5.0f} µs/msg{extra}  marker level {d.level}", flush=True)
            shutil.rmtree(work / f"feed-r{r}", ignore_errors=True)
            for p in work.glob(f"data-{gw_id}*"):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink()
            shutil.rmtree(work / f"nodered-{nr_id}", ignore_errors=True)
    finally:
        broker.stop()
    return run


# -- report ------------------------------------------------------------------------------------


def git_head() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return os.environ.get("GEOWARN_BENCH_COMMIT", "unknown (not a git checkout; set GEOWARN_BENCH_COMMIT)")
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, check=False)
    return r.stdout.strip() + (" (+ uncommitted changes in the checkout)" if dirty.stdout.strip() else "")


def markdown(run: Run, a: argparse.Namespace, argv: list[str], nr_version: str) -> str:
    m = machine()
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    gw, nr = run.of("geowarn"), run.of("node-red")
    ratio = run.median("geowarn", "rate") / run.median("node-red", "rate")
    per_round = ", ".join(f"{g.rate / n.rate:.2f}" for g, n in zip(gw, nr))
    lines = [
        f"Command: `{' '.join(['python3 benchmarks/nodered.py', *argv])}`",
        "",
        (f"Machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}, Python {m['python']}, paho-mqtt {m['paho-mqtt']}, "
         f"SQLite {m['sqlite']}, {m['broker']}, node {node}, Node-RED {nr_version}. Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
         f"Commit: {git_head()}. Load average at the end: {load} (the machine is shared with other jobs)."),
        "",
        (f"Feed: `geowarn simulate --scenario stable --stations {a.stations} --duration {a.duration:g}` + the end marker: "
         f"{run.messages:,} messages ({run.readings:,} readings), QoS 1, queued for both persistent sessions before either starts; "
         f"broker max_inflight_messages {a.inflight}. {'Both drained at once' if a.together else 'Drained one after the other, alternating which goes first'}. "
         f"Medians of {a.rounds} round(s). Clock: first message in the subscriber's hands → its end marker received over MQTT."),
        "",
        ("| subscriber | what is done per message | drain s | **msg/s** | readings/s | CPU µs/msg | into the journal s | "
         "from launch s | marker raised |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
        (f"| GeoWarn (`geowarn run`) | ack after commit to the message log, decode into the journal (SQLite, fsync), full detector bank + fusion, "
         f"alert chain | {run.median('geowarn', 'seconds'):.2f} | **{run.median('geowarn', 'rate'):,.0f}** | "
         f"{run.readings / run.median('geowarn', 'seconds'):,.0f} | {run.median('geowarn', 'cpu_us_per_msg'):,.0f} | "
         f"{run.median('geowarn', 'journal_s'):.2f} | "
         f"{run.median('geowarn', 'from_launch_s'):.2f} | level {gw[0].level} |"),
        (f"| Node-RED {nr_version} | JSON parse, threshold compare per reading, count; keeps nothing | "
         f"{run.median('node-red', 'seconds'):.2f} | **{run.median('node-red', 'rate'):,.0f}** | "
         f"{run.readings / run.median('node-red', 'seconds'):,.0f} | {run.median('node-red', 'cpu_us_per_msg'):,.0f} | — | "
         f"{run.median('node-red', 'from_launch_s'):.2f} | level {nr[0].level} |"),
        "",
        f"GeoWarn ÷ Node-RED (msg/s): **{ratio:.2f}** (ratio of the medians; round by round {per_round}).",
        (f"CPU per message, GeoWarn ÷ Node-RED: {run.median('geowarn', 'cpu_us_per_msg') / run.median('node-red', 'cpu_us_per_msg'):.1f}× "
         "(all of the daemon's processes: ack path, store and detection workers; Node-RED's one process; not the broker)."),
        "",
        "Round by round: " + "; ".join(
            f"r{d.round} {d.side} ({d.order}) {d.seconds:.2f} s, {d.rate:,.0f} msg/s, {d.cpu_us_per_msg:,.0f} CPU µs/msg" for d in run.drains) + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--stations", type=int, default=2000, help="simulated devices (default 2000)")
    p.add_argument("--duration", type=float, default=4 * 3600.0, help="event time of the feed in seconds (default 14400: ~56k messages at 2000 devices)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--seed", type=int, default=1, help="simulator seed")
    p.add_argument("--inflight", type=int, default=1000, help="broker max_inflight_messages (default 1000, as the daemon's docs recommend)")
    p.add_argument("--together", action="store_true", help="start both subscribers at once instead of one after the other")
    p.add_argument("--nodered-sync", action="store_true",
                   help="Node-RED with runtimeSyncDelivery (undocumented: no event-loop turn between nodes)")
    p.add_argument("--quick", action="store_true", help="smoke test: 300 devices × 1 h, 1 round (< 60 s)")
    p.add_argument("--install", action="store_true", help=f"install {NODE_RED_SPEC} into the cache folder (GEOWARN_NODERED_DIR, default {DEFAULT_NODERED_DIR}) and exit")
    p.add_argument("--no-install", action="store_true", help="fail instead of installing Node-RED when it is missing")
    p.add_argument("--markdown", type=Path, help="also write the markdown table here")
    p.add_argument("--json", type=Path, help="also write every drain as JSON")
    p.add_argument("--workdir", type=Path, help="where broker, data dirs and Node-RED's user dir live (default: a temporary folder)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a drain may take before the run fails")
    a = p.parse_args(argv)
    if a.quick:
        a.stations, a.duration, a.rounds = 300, 3600.0, 1
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    base = nodered_dir()
    try:
        if a.install:
            print(f"node-red {install_nodered(base)} in {base}")
            return 0
        if nodered_version(base) is None or not nodered_script(base).exists():
            if a.no_install:
                raise BenchFailure(f"Node-RED is not installed in {base}: run `python3 benchmarks/nodered.py --install`")
            install_nodered(base)
        nr_version = str(nodered_version(base))
    except BenchFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    own_work = a.workdir is None
    work = Path(tempfile.mkdtemp(prefix="geowarn-nodered-")) if own_work else a.workdir
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}; node-red {nr_version} from {base}", flush=True)
    t0 = time.monotonic()
    try:
        run = run_rounds(a, base, work)
    except BenchFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    table = markdown(run, a, argv, nr_version)
    print(f"\n(total {time.monotonic() - t0:.0f} s)\n")
    print(table)
    if a.markdown:
        a.markdown.write_text(table)
    if a.json:
        a.json.write_text(json.dumps({"machine": machine(), "argv": argv, "node_red": nr_version, "messages": run.messages,
                                      "readings": run.readings, "publish_s": run.publish_s,
                                      "drains": [asdict(d) | {"rate": d.rate} for d in run.drains]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
