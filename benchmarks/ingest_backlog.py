#!/usr/bin/env python3
"""Drain a QoS 1 backlog from a real Mosquitto: the ingest daemon against a plain paho subscriber.

For every round and every variant the same backlog is queued on the broker for an offline
persistent session, then the subscriber connects and the drain is timed from its connect until
every message has been processed and acknowledged:

* ``paho`` (the reference): a plain paho-mqtt 2.x subscriber at its best. Library defaults
  (MQTT 3.1.1, automatic PUBACK after ``on_message`` returns, paho's own buffers and windows),
  QoS 1 subscriptions, ``clean_session=False`` (the one setting a backlog needs: without a
  persistent session the broker queues nothing), the network loop run by ``loop_forever()``
  (as paho's own examples do), and an ``on_message`` that only counts. ``loop_forever()`` is
  the fastest plain way to run paho here: ``loop_start()`` drains ~20 % slower, because with
  paho's own thread every PUBACK waits for the next ``select()`` round instead of being written
  at once; MQTT 5 drains at about half the rate (with or without a receive maximum); the
  broker's ``max_inflight_messages`` (20 … unlimited) makes no measurable difference.
* ``paho-manual`` (a second reference, the one this benchmark used before): paho configured as
  the daemon configures it (``manual_ack=True``, ``loop_start()``), ``on_message`` acks and counts.
* ``daemon-full`` / ``daemon-normal``: the real app (``geowarn.service.daemon.build_app``)
  in-process on a fresh data dir, ``GEOWARN_JOURNAL_SYNC`` = full (the default, fsync per commit)
  or normal. Two clocks, both from the daemon's connect: *acked* when N messages have passed the
  ack path's ``_handle`` (committed to the message log, acked), *in journal* when the store
  worker has decoded all of them into the queryable readings table. The target compares the
  *in journal* rate with the plain subscriber's rate.

The variants alternate inside each round (paho, paho-manual, daemon-full, daemon-normal, paho,
…) so that the ratios compare figures taken side by side on the same (noisy) machine.

Checks, any failure exits non-zero: each paho subscriber saw exactly N messages; the daemon's
journal holds exactly the expected readings and no dead letters; afterwards the broker
redelivers nothing to any session (everything was acked).

    python3 benchmarks/ingest_backlog.py                    # 100k + 20k×50 messages, 5 rounds, inflight 1000
    python3 benchmarks/ingest_backlog.py --quick            # smoke test, < 1 min
    python3 benchmarks/ingest_backlog.py --markdown out.md  # also write the markdown table
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# geowarn.* comes from the installed package (pip install -e .); tests/ lends its service fixtures.
sys.path.insert(0, str(REPO / "tests"))

import paho.mqtt
import paho.mqtt.client as mqtt
from services import Mosquitto, free_port

TOPIC_PREFIX = "geowarn"
SUBSCRIPTIONS = [f"{TOPIC_PREFIX}/+/+/data", f"{TOPIC_PREFIX}/+/+/status"]  # what the daemon subscribes
#: One-reading messages go round-robin to these channels of config/sites.example.toml.
ONE_READING_CHANNELS = [("BSH", "BSH-EXT1", "disp"), ("BZM", "BZM-EXT1", "disp"), ("XK", "XK-CRK1", "crack")]
#: Multi-reading messages come from this GNSS receiver (three channels).
MULTI_DEVICE = ("BSH", "BSH-GNSS1", ("disp_e", "disp_n", "disp_u"))
#: The plain paho subscriber (the reference), paho as the daemon configures it, the daemon.
VARIANTS = ("paho", "paho-manual", "daemon-full", "daemon-normal")
REFERENCE = "paho"
TARGET_RATIO = 0.8
TARGET_READINGS_PER_S = 200_000

log = logging.getLogger("bench")


class BenchFailure(Exception):
    """Lost or duplicated data, a drain that did not finish: the run is not a result."""


# -- the backlog ------------------------------------------------------------------------------


def make_backlog(messages: int, per_message: int, t0: float) -> list[tuple[str, bytes]]:
    """Native JSON v1 payloads; every reading has its own (device, channel, t), so none is a duplicate.

    Times start at ``t0`` (a few days ago) and step by one second per reading; values are flat
    (a few hundredths of a mm of noise) so no detector fires and no alert is written.
    """
    out: list[tuple[str, bytes]] = []
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    if per_message == 1:
        for i in range(messages):
            site, device, channel = ONE_READING_CHANNELS[i % len(ONE_READING_CHANNELS)]
            doc = {"v": 1, "device": device, "seq": i // len(ONE_READING_CHANNELS),
                   "readings": [{"ch": channel, "t": t0 + i, "v": 10.0 + 0.01 * (i % 7)}]}
            out.append((f"{TOPIC_PREFIX}/{site}/{device}/data", dumps(doc).encode()))
    else:
        site, device, channels = MULTI_DEVICE
        topic = f"{TOPIC_PREFIX}/{site}/{device}/data"
        for m in range(messages):
            readings = []
            for j in range(per_message):
                k = m * per_message + j
                readings.append({"ch": channels[k % len(channels)], "t": t0 + k, "v": 10.0 + 0.01 * (k % 7)})
            out.append((topic, dumps({"v": 1, "device": device, "seq": m, "readings": readings}).encode()))
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def publish_backlog(broker: Mosquitto, backlog: list[tuple[str, bytes]], timeout: float = 600.0, window: int = 10_000) -> float:
    """Publish at QoS 1 and wait for every PUBACK (the broker has queued each message for the
    offline sessions before it acks). Returns the seconds it took.

    The publisher writes pre-encoded MQTT 3.1.1 packets on a plain socket: filling the backlog
    is not what is measured, and paho would take most of a run's time doing it. At most
    ``window`` messages are unacknowledged at a time (packet ids are 16-bit).
    """
    import socket
    import struct

    t0 = time.perf_counter()
    sock = socket.create_connection((broker.host, broker.port), timeout=timeout)
    try:
        body = _utf8("MQTT") + bytes([4, 0x02]) + struct.pack(">H", 60) + _utf8(f"bench-publisher-{os.getpid()}")
        sock.sendall(b"\x10" + _varint(len(body)) + body)
        if sock.recv(4) != b"\x20\x02\x00\x00":
            raise BenchFailure("publisher: the broker refused the connection")
        buf = b""
        sent = acked = 0
        n = len(backlog)

        def read_acks(block: bool) -> None:
            nonlocal buf, acked
            sock.setblocking(block)
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return
            finally:
                sock.settimeout(timeout)
            if not data:
                raise BenchFailure("publisher: the broker closed the connection")
            buf += data
            whole = len(buf) // 4 * 4
            k = whole // 4
            if buf[0:whole:4] != b"\x40" * k or buf[1:whole:4] != b"\x02" * k:  # only PUBACKs are expected
                raise BenchFailure(f"publisher: unexpected packet from the broker: {buf[:16]!r}")
            acked += whole // 4
            buf = buf[whole:]

        while sent < n:
            chunk = []
            for topic, payload in backlog[sent:sent + min(1000, window - (sent - acked))]:
                mid = sent % 65535 + 1
                var = _utf8(topic) + struct.pack(">H", mid)
                chunk.append(b"\x32" + _varint(len(var) + len(payload)) + var + payload)
                sent += 1
            if chunk:
                sock.sendall(b"".join(chunk))
                read_acks(False)
            else:
                read_acks(True)
        while acked < n:
            read_acks(True)
        sock.sendall(b"\xe0\x00")
    except TimeoutError:
        raise BenchFailure(f"publisher: no PUBACK for {timeout:.0f} s") from None
    finally:
        sock.close()
    return time.perf_counter() - t0


def _session(broker: Mosquitto, client_id: str, subscribe: bool, listen_s: float = 0.0) -> int:
    """Connect as ``client_id`` with a persistent session; optionally (re)subscribe; count the
    messages the broker delivers within ``listen_s`` (acking them); disconnect."""
    subscribed = threading.Event()
    got = 0

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if subscribe:
            client.subscribe([(t, 1) for t in SUBSCRIPTIONS])
        else:
            subscribed.set()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal got
        got += 1
        client.ack(msg.mid, msg.qos)

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
    c.on_connect = on_connect
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_message = on_message
    c.connect(broker.host, broker.port, 30)
    c.loop_start()
    try:
        if not subscribed.wait(10):
            raise BenchFailure(f"{client_id}: no SUBACK/CONNACK from the broker")
        if listen_s:
            time.sleep(listen_s)
    finally:
        c.disconnect()
        c.loop_stop()
    return got


def prepare_session(broker: Mosquitto, client_id: str) -> None:
    """Create the persistent session (with the daemon's subscriptions) the backlog queues for."""
    _session(broker, client_id, subscribe=True)


def leftover(broker: Mosquitto, client_id: str, listen_s: float = 0.5) -> int:
    """How many messages the broker still had for ``client_id`` (not acked): must be 0."""
    return _session(broker, client_id, subscribe=False, listen_s=listen_s)


# -- the two subscribers ----------------------------------------------------------------------


@dataclass
class Drain:
    variant: str
    seconds: float
    messages: int
    readings: int
    cpu_s: float  # CPU time of this process (both of its busy threads) during the drain
    alerts: int = 0  # alert events the daemon raised (the backlog is meant to raise none)
    journal_s: float = 0.0  # daemon: from connect until the store stage had decoded everything into the journal
    startup_s: float = 0.0  # daemon: from build_app until it connects (not in the drain clocks)
    store_cpu_s: float = 0.0  # daemon: CPU time of the store worker process over the journal clock
    load1: float = 0.0  # the machine's 1-minute load average when the drain ended (2 cores: 2.0 is full)

    @property
    def store_cpu_us_per_reading(self) -> float:
        return self.store_cpu_s / self.readings * 1e6 if self.store_cpu_s else 0.0

    @property
    def store_readings_per_cpu_s(self) -> float:
        """Readings the store stage journals per second of its own CPU: its rate on a core of
        its own, whatever else the machine was doing."""
        return self.readings / self.store_cpu_s if self.store_cpu_s else 0.0

    @property
    def journal_rate(self) -> float:
        return self.readings / self.journal_s if self.journal_s else 0.0

    @property
    def queryable_s(self) -> float:
        """Until every message is queryable: the journal clock for the daemon; a paho
        subscriber's count is all it keeps, so its drain clock."""
        return self.journal_s or self.seconds

    @property
    def queryable_rate(self) -> float:
        return self.messages / self.queryable_s

    @property
    def cpu_us_per_msg(self) -> float:
        return self.cpu_s / self.messages * 1e6

    @property
    def msg_rate(self) -> float:
        return self.messages / self.seconds

    @property
    def reading_rate(self) -> float:
        return self.readings / self.seconds


def drain_paho(broker: Mosquitto, client_id: str, n: int, timeout: float) -> tuple[float, float]:
    """The reference: a plain paho subscriber with the library's defaults (see the module doc)."""
    done = threading.Event()
    count = 0

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe([(t, 1) for t in SUBSCRIPTIONS])

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal count
        count += 1
        if count >= n:
            done.set()

    # Defaults: MQTTv311, manual_ack=False (paho sends the PUBACK when on_message returns).
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.on_connect = on_connect
    c.on_message = on_message
    # loop_forever() in a thread of ours, as a script would run it on its main thread: paho's
    # `_thread` stays None, so each PUBACK is written as soon as on_message returns.
    loop = threading.Thread(target=c.loop_forever, name="paho-loop-forever", daemon=True)
    t0, c0 = time.perf_counter(), time.process_time()
    c.connect(broker.host, broker.port, 30)
    loop.start()
    try:
        if not done.wait(timeout):
            raise BenchFailure(f"paho subscriber: {count} of {n} messages after {timeout:.0f} s")
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        time.sleep(0.1)  # the last PUBACK leaves after on_message returns; anything beyond N is a duplicate
    finally:
        c.disconnect()
        loop.join(10)
    if loop.is_alive():
        raise BenchFailure("paho subscriber: loop_forever did not return after disconnect()")
    if count != n:
        raise BenchFailure(f"paho subscriber received {count} messages, expected {n}")
    return took, cpu


def drain_paho_manual(broker: Mosquitto, client_id: str, n: int, timeout: float) -> tuple[float, float]:
    """Second reference: paho as the daemon configures it (manual acks, paho's own thread)."""
    done = threading.Event()
    count = 0

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe([(t, 1) for t in SUBSCRIPTIONS])  # as the daemon's link does

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal count
        client.ack(msg.mid, msg.qos)
        count += 1
        if count >= n:
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
    c.on_connect = on_connect
    c.on_message = on_message
    t0, c0 = time.perf_counter(), time.process_time()
    c.connect(broker.host, broker.port, 30)
    c.loop_start()
    try:
        if not done.wait(timeout):
            raise BenchFailure(f"paho-manual subscriber: {count} of {n} messages after {timeout:.0f} s")
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        time.sleep(0.1)  # anything beyond N would be a duplicate delivery
    finally:
        c.disconnect()
        c.loop_stop()
    if count != n:
        raise BenchFailure(f"paho-manual subscriber received {count} messages, expected {n}")
    return took, cpu


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain_daemon(
    broker: Mosquitto, client_id: str, data_dir: Path, sync: str, n: int, readings: int, timeout: float
) -> tuple[float, float, int, float, float, float]:
    env = {
        "GEOWARN_MQTT_URL": broker.url,
        "GEOWARN_DATA_DIR": str(data_dir),
        "GEOWARN_MQTT_CLIENT_ID": client_id,
        "GEOWARN_JOURNAL_SYNC": sync,
        # Its own port for the duty-officer API: the default one may be taken on a shared machine.
        "GEOWARN_HTTP": f"127.0.0.1:{free_port()}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    t_build = time.perf_counter()
    try:
        from geowarn.config.settings import load_all
        from geowarn.service.daemon import build_app

        app = build_app(load_all())
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    # Count messages that have been through the whole of _handle (commit, ack queued).
    done = threading.Event()
    handled = 0
    handle = app._handle

    def counted(items: list[Any]) -> None:
        nonlocal handled
        handle(items)
        handled += len(items)
        if handled >= n:
            done.set()

    app._handle = counted  # type: ignore[method-assign]
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            app.run(stop)
        except BaseException as exc:  # noqa: BLE001 — reported below
            errors.append(exc)
            done.set()

    thread = threading.Thread(target=run, name="geowarn-daemon")
    # The clock starts when the daemon connects (app.ready): spawning the detection worker
    # before that is start-up, not drain. Detection runs in that worker process, so the CPU
    # figure below is the ingest side only.
    thread.start()
    if not app.ready.wait(120):
        stop.set()
        raise BenchFailure("daemon did not start within 120 s")
    store_pid = app.store.process.pid
    assert store_pid is not None
    s0 = process_cpu_s(store_pid)
    t0, c0 = time.perf_counter(), time.process_time()
    startup_s = t0 - t_build
    try:
        finished = done.wait(timeout)
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        # The store stage (its own process) decodes the logged messages into the journal.
        deadline = time.monotonic() + timeout
        while not app.caught_up() and time.monotonic() < deadline:
            time.sleep(0.01)
        journal_s = time.perf_counter() - t0
        # The same store process all along (a restarted one would have started from zero).
        store_cpu = process_cpu_s(store_pid) - s0 if app.store.process.pid == store_pid else 0.0
        time.sleep(0.1)  # anything beyond N would be a duplicate delivery
    finally:
        stop.set()
        # Stopping waits for the detection worker to judge everything stored and save its state:
        # with a large multi-reading backlog that takes longer than the drain itself.
        thread.join(timeout)
    if errors:
        raise BenchFailure(f"daemon failed: {errors[0]!r}")
    if thread.is_alive():
        raise BenchFailure(f"daemon did not stop within {timeout:.0f} s")
    c = app.counters
    if not finished:
        raise BenchFailure(f"daemon ({sync}): {handled} of {n} messages after {timeout:.0f} s ({c})")
    conn = sqlite3.connect(f"file:{app.journal_path}?mode=ro", uri=True)
    try:
        stored = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        dead = conn.execute("SELECT count(*) FROM deadletters").fetchone()[0]
    finally:
        conn.close()
    if handled != n or c.messages != n:
        raise BenchFailure(f"daemon ({sync}) handled {handled} messages (counters {c.messages}), expected {n}")
    if stored != readings or dead != 0:
        raise BenchFailure(
            f"daemon ({sync}): journal holds {stored} readings and {dead} dead letters, expected {readings} and 0 ({c})"
        )
    alerts_path = Path(app.loaded.settings.data_dir) / "alerts.jsonl"
    alerts = sum(1 for line in alerts_path.read_text().splitlines() if '"kind": "nodata' not in line) if alerts_path.exists() else 0
    return took, cpu, alerts, journal_s, startup_s, store_cpu


# -- one configuration ------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    messages: int
    per_message: int
    inflight: int
    drains: list[Drain] = field(default_factory=list)
    publish_s: list[float] = field(default_factory=list)

    def of(self, variant: str) -> list[Drain]:
        return [d for d in self.drains if d.variant == variant]

    def median(self, variant: str, what: Callable[[Drain], float]) -> float:
        return statistics.median(what(d) for d in self.of(variant))

    def reference_rate(self) -> float | None:
        """Median msg/s of the plain paho subscriber."""
        return self.median(REFERENCE, lambda d: d.msg_rate) if self.of(REFERENCE) else None

    def round_ratios(self, variant: str, what: Callable[[Drain], float]) -> list[float]:
        """``what`` of ``variant`` ÷ the plain subscriber's msg/s, round by round."""
        refs, others = self.of(REFERENCE), self.of(variant)
        return [what(o) / r.msg_rate for r, o in zip(refs, others)]


def run_case(case: Case, rounds: int, variants: list[str], work: Path, timeout: float) -> None:
    broker = Mosquitto(
        work / f"mosquitto-{case.name}",
        max_inflight_messages=case.inflight,
        # Mosquitto's default; the fixture's 1 s would rewrite the whole backlog to disk every second.
        autosave_interval=1800,
    )
    broker.start()
    try:
        readings = case.messages * case.per_message
        # Readings a few days old, one second apart: all in the past (a reading stamped ahead of
        # the clock is a dead letter), after 2000; 1M readings span 11.6 days.
        t_start = time.time() - max(4 * 86400.0, readings + 86400.0)
        backlog = make_backlog(case.messages, case.per_message, t_start)
        for r in range(1, rounds + 1):
            for variant in variants:
                # No "/", "+" or "#": the daemon puts its client id into its presence (will) topic.
                tag = f"{case.name.replace('/', '-')}-{variant}-r{r}"
                client_id = f"bench-{tag}"
                prepare_session(broker, client_id)
                case.publish_s.append(publish_backlog(broker, backlog))
                alerts = 0
                journal_s = startup_s = store_cpu = 0.0
                if variant == "paho":
                    took, cpu = drain_paho(broker, client_id, case.messages, timeout)
                elif variant == "paho-manual":
                    took, cpu = drain_paho_manual(broker, client_id, case.messages, timeout)
                else:
                    data_dir = work / f"data-{tag}"
                    took, cpu, alerts, journal_s, startup_s, store_cpu = drain_daemon(
                        broker, client_id, data_dir, variant.split("-", 1)[1], case.messages, readings, timeout
                    )
                    shutil.rmtree(data_dir, ignore_errors=True)
                rest = leftover(broker, client_id)
                if rest:
                    raise BenchFailure(f"{variant}: the broker redelivered {rest} unacknowledged messages after the drain")
                d = Drain(variant, took, case.messages, readings, cpu, alerts, journal_s, startup_s, store_cpu, os.getloadavg()[0])
                case.drains.append(d)
                print(
                    f"  {case.name:<22} round {r}  {variant:<14} {took:7.2f} s  {d.msg_rate:9,.0f} msg/s  {d.reading_rate:10,.0f} readings/s  {d.cpu_us_per_msg:6.1f} CPU µs/msg"
                    + (f"  in journal {journal_s:.2f} s ({d.queryable_rate:,.0f} msg/s, {d.journal_rate:,.0f} readings/s; start-up {startup_s:.2f} s)" if journal_s else "")
                    + (f"  store CPU {d.store_cpu_us_per_reading:.2f} µs/reading ({d.store_readings_per_cpu_s:,.0f} readings per CPU s)" if store_cpu else "")
                    + (f"  ({alerts} alerts)" if alerts else "")
                    + f"  [load {d.load1:.1f}]",
                    flush=True,
                )
    finally:
        try:
            broker.stop()
        except RuntimeError as exc:
            # Mosquitto saves its database on SIGTERM; on a crowded machine that has taken over
            # the fixture's 30 s, and the fixture then kills it. The drains are measured and
            # checked by then: say so, and keep the results rather than lose the run.
            print(f"warning: stopping the broker: {str(exc).splitlines()[0]}", file=sys.stderr, flush=True)


# -- report -----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import subprocess

        mosq = subprocess.run([Mosquitto(tempfile.gettempdir()).binary, "-h"], capture_output=True, text=True, check=False).stdout.splitlines()[0]
    except Exception:  # noqa: BLE001
        mosq = "mosquitto (version unknown)"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "paho-mqtt": paho.mqtt.__version__,
        "sqlite": sqlite3.sqlite_version,
        "broker": mosq,
    }


def markdown(cases: list[Case], rounds: int, argv: list[str]) -> str:
    m = machine()
    lines = [
        f"Command: `{' '.join(['python3 benchmarks/ingest_backlog.py', *argv])}`",
        "",
        (
            f"Machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}, Python {m['python']}, "
            f"paho-mqtt {m['paho-mqtt']}, SQLite {m['sqlite']}, {m['broker']}. Date: {time.strftime('%Y-%m-%d')}."
        ),
        "",
        (f"Medians of {rounds} round(s); variants alternate inside each round. Reference = `paho`, the plain "
        "subscriber (defaults, auto-ack, `loop_forever`). *Acked*: from connect until every message is acked "
        "(for the daemon: committed to the message log, then acked). *In journal*: until every reading is in the "
        "queryable journal (daemon only; for a paho subscriber, which keeps nothing, the same as acked). "
        "Ratios = variant's msg/s ÷ the reference's msg/s (ratio of the medians; in brackets round by round). "
        "CPU µs/msg = CPU time of the benchmark process during the acked drain ÷ messages (paho's thread and "
        "the daemon's ack path; not the broker, not the daemon's store and detection workers). Store CPU "
        "µs/reading = CPU time of the daemon's store worker over the journal clock ÷ readings (its capacity on a "
        "core of its own: 1e6 ÷ it = readings/s; it runs at nice +10, so on a busy machine it gets less than a "
        "core). Start-up = the daemon's build_app until it connects, outside both clocks. Load = the machine's "
        "1-minute load average at the end of each drain (median; 2 CPUs)."),
        "",
        ("| backlog | broker inflight | variant | acked s | acked msg/s | in journal s | in journal msg/s | "
         "readings/s into journal | **ratio in journal ÷ paho** | ratio acked ÷ paho | CPU µs/msg | "
         "store CPU µs/reading | start-up s | load |"),
        "|---|---:|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]

    def per_round(xs: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in xs)

    for case in cases:
        ref = case.reference_rate()
        for variant in VARIANTS:
            if not case.of(variant):
                continue
            def med(what: Callable[[Drain], float], case: Case = case, variant: str = variant) -> float:
                return case.median(variant, what)

            backlog = f"{case.messages:,} × {case.per_message} reading{'s' if case.per_message > 1 else ''}"
            daemon = variant.startswith("daemon")
            jcols = (
                f"{med(lambda d: d.journal_s):.2f} | {med(lambda d: d.queryable_rate):,.0f} | {med(lambda d: d.journal_rate):,.0f}"
                if daemon else "— | — | —"
            )
            if variant == REFERENCE or not ref:
                ratios = "— | —"
            else:
                acked = f"{med(lambda d: d.msg_rate) / ref:.2f} ({per_round(case.round_ratios(variant, lambda d: d.msg_rate))})"
                journal = (
                    f"**{med(lambda d: d.queryable_rate) / ref:.2f}** ({per_round(case.round_ratios(variant, lambda d: d.queryable_rate))})"
                    if daemon else "—"
                )
                ratios = f"{journal} | {acked}"
            startup = f"{med(lambda d: d.startup_s):.2f}" if daemon else "—"
            store_cpu = f"{med(lambda d: d.store_cpu_us_per_reading):.2f}" if daemon else "—"
            lines.append(
                f"| {backlog} | {case.inflight} | {variant} | {med(lambda d: d.seconds):.2f} | {med(lambda d: d.msg_rate):,.0f} | "
                f"{jcols} | {ratios} | {med(lambda d: d.cpu_us_per_msg):.0f} | {store_cpu} | {startup} | {med(lambda d: d.load1):.1f} |"
            )
    lines.append("")
    lines.append("Targets (issue 17, item 4):")
    for case in cases:
        ref = case.reference_rate()
        for variant in VARIANTS:
            if not variant.startswith("daemon") or not case.of(variant):
                continue
            if ref:
                ratio = case.median(variant, lambda d: d.queryable_rate) / ref
                lines.append(
                    f"- {case.name}, {variant}: into the journal at {ratio:.2f}× the plain paho subscriber "
                    f"(target ≥ {TARGET_RATIO}×): {'met' if ratio >= TARGET_RATIO else 'NOT met'}"
                )
            if case.per_message > 1:
                rrate = case.median(variant, lambda d: d.journal_rate)
                lines.append(
                    f"- {case.name}, {variant}: {rrate:,.0f} readings/s into the journal "
                    f"(target ≥ {TARGET_READINGS_PER_S:,}): {'met' if rrate >= TARGET_READINGS_PER_S else 'NOT met'}"
                )
                per_cpu = case.median(variant, lambda d: d.store_readings_per_cpu_s)
                if per_cpu:
                    lines.append(
                        f"  (the store worker journals {per_cpu:,.0f} readings per second of its own CPU: "
                        f"{'enough' if per_cpu >= TARGET_READINGS_PER_S else 'not enough'} for the target on a core of its own)"
                    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=100_000, help="one-reading backlog size (default 100000)")
    p.add_argument("--multi-messages", type=int, default=20_000, help="multi-reading backlog size (default 20000: 1M readings)")
    p.add_argument("--per-message", type=int, default=50, help="readings per message of the multi-reading backlog")
    p.add_argument("--rounds", type=int, default=5, help="rounds of alternated variants (default 5)")
    p.add_argument("--inflight", default="1000", help="broker max_inflight_messages values, comma-separated (default 1000)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--cases", default="one,multi", help="one (1 reading a message), multi (--per-message readings), or both")
    p.add_argument("--quick", action="store_true", help="smoke test: 5000 + 200 messages, 1 round, inflight 1000")
    p.add_argument("--markdown", type=Path, help="also write the markdown table to this file")
    p.add_argument("--json", type=Path, help="also write every drain as JSON")
    p.add_argument("--workdir", type=Path, help="where brokers and journals live (default: a temporary folder)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one drain may take before the run fails")
    a = p.parse_args(argv)
    if a.quick:
        a.messages, a.multi_messages, a.rounds, a.inflight = 5_000, 200, 1, "1000"
    if REFERENCE not in a.variants.split(","):
        p.error(f"--variants must include {REFERENCE}, the reference every ratio divides by")
    variants = [v for v in a.variants.split(",") if v]
    if not variants or any(v not in VARIANTS for v in variants):
        p.error(f"--variants: choose from {','.join(VARIANTS)}")
    # SIGTERM unwinds like Ctrl-C, so the brokers this run started are stopped and its folder removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("geowarn").setLevel(logging.ERROR)  # connect/disconnect chatter

    cases: list[Case] = []
    for inflight in (int(x) for x in a.inflight.split(",") if x):
        if "one" in a.cases:
            cases.append(Case(f"1-reading/inflight-{inflight}", a.messages, 1, inflight))
        if "multi" in a.cases:
            cases.append(Case(f"{a.per_message}-readings/inflight-{inflight}", a.multi_messages, a.per_message, inflight))

    own_work = a.workdir is None
    work = Path(tempfile.mkdtemp(prefix="geowarn-bench-")) if own_work else a.workdir
    work.mkdir(parents=True, exist_ok=True)
    m = machine()
    print(f"machine: {m}", flush=True)
    t0 = time.monotonic()
    try:
        for case in cases:
            run_case(case, a.rounds, variants, work, a.timeout)
    except BenchFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    table = markdown(cases, a.rounds, argv)
    print(f"\n(total {time.monotonic() - t0:.0f} s)\n")
    print(table)
    if a.markdown:
        a.markdown.write_text(table)
    if a.json:
        a.json.write_text(json.dumps(
            {"machine": m, "argv": argv, "cases": [
                {"name": c.name, "messages": c.messages, "per_message": c.per_message, "inflight": c.inflight,
                 "publish_s": c.publish_s, "drains": [vars(d) for d in c.drains]} for c in cases]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
