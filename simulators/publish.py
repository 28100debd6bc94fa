"""Where simulated messages go: a feed file, or an MQTT broker in real or accelerated time.

- ``write_feed``: a ``Simulation`` to a CSV (``site,device,channel,t,value``) or JSONL
  (``{"topic": ..., "payload": {...}}`` a line) feed, chosen by the file's extension.
- ``LiveRun``: a ``Simulation`` published to a broker (QoS 1), paced so that event time runs
  ``speed`` times faster than the wall clock. It subscribes to the devices' ``cmd`` topics and
  makes the devices obey ``set_sampling``.
- ``replay_feed``: a recorded feed (CSV or JSONL, e.g. ``geowarn export``) into a broker
  with its original timing scaled by ``speed``.

Both publish through paho-mqtt 2 (``Publisher``, the default: TLS, well trodden) or, with
``fast=True``, through ``simulators.fastmqtt.FastPublisher``, a pipelining MQTT 3.1.1 client
about five times faster on plain TCP (benchmarks/simulate_fleet.py).

Pacing waits on the command queue (so a command is handled when it arrives, not after a
sleep); a progress bar goes to stderr.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import quote

import paho.mqtt.client as mqtt

from geowarn.config.settings import MqttTarget
from geowarn.core.timefmt import parse_time
from geowarn.ingest.commands_cn import CommandError
from geowarn.simulators.convention import COMMAND_FILTER, is_command_topic
from geowarn.simulators.convention import DATA_TOPIC as CN_DATA_TOPIC
from geowarn.simulators.engine import Message, Simulation
from geowarn.simulators.fastmqtt import FastPublisher, PublishError

#: At speed inf a live run generates this many messages' worth of event time per slice
#: (about 1 kB each in memory): big slices keep the publisher fed, since generation costs
#: mostly per device and per slice, not per message.
SLICE_MESSAGES = 100_000
#: A live run lets at most this share of the publisher's ``max_unacked`` go unacknowledged;
#: past it, it waits until the broker has caught up to ``_WINDOW_LOW``, so the acks are
#: read in batches. (Publishing on into a full window would wait for acks before every
#: message: a select, recv and send system call per message, 47 000 of them for 70 000
#: messages measured, all CPU taken from the broker on a 2-core machine.)
_WINDOW_HIGH = 0.25
_WINDOW_LOW = 0.1
_ACK_BATCH_S = 0.002


def feed_format(path: str | Path) -> str:
    """``csv`` or ``jsonl`` by the feed file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise ValueError(f"{path}: a feed file ends in .csv or .jsonl")


def truth_path(feed: str | Path) -> Path:
    return Path(str(feed) + ".truth.json")


def sites_path(feed: str | Path) -> Path:
    return Path(str(feed) + ".sites.toml")


class Progress:
    """A one-line progress bar on stderr (a line per 10 % when stderr is not a terminal)."""

    def __init__(self, total: float, label: str, *, enabled: bool = True, stream: IO[str] | None = None) -> None:
        self.total = max(total, 1e-9)
        self.label = label
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._t0 = time.monotonic()
        self._last = 0.0
        self._last_decile = -1

    def update(self, done: float, count: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        frac = min(1.0, max(0.0, done / self.total))
        if self.tty:
            if now - self._last < 0.2 and frac < 1.0:
                return
            self._last = now
            bar = "#" * int(30 * frac)
            rate = count / max(now - self._t0, 1e-9)
            self.stream.write(f"\r{self.label} [{bar:<30}] {100 * frac:5.1f}% {count} msgs {rate:,.0f} msg/s")
            self.stream.flush()
        else:
            decile = int(10 * frac)
            if decile > self._last_decile:
                self._last_decile = decile
                self.stream.write(f"{self.label} {10 * decile:3d}% {count} msgs\n")
                self.stream.flush()

    def close(self, count: int) -> None:
        if not self.enabled:
            return
        took = time.monotonic() - self._t0
        if self.tty:
            self.stream.write("\n")
        self.stream.write(f"{self.label}: {count} messages in {took:.1f} s\n")
        self.stream.flush()


# -- feeds -------------------------------------------------------------------------------------


class FeedWriter:
    """Writes messages to a CSV or JSONL feed as they come.

    In JSONL, a message of a device of the national convention (simulators/convention.py) is
    recorded as received (ingest/feeds.py, "national convention"): ``{"topic": "$dp", "t":
    <send time>, "client_id": <device code>, "payload": <body>}``, the body as a JSON object, or
    as the base64 of the bytes on the wire when they were framed (``wire``: each message's bytes
    as published). In CSV, its readings as native rows (the values before conversion)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.format = feed_format(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w", encoding="utf-8", newline="")
        self.messages = 0
        self.readings = 0
        if self.format == "csv":
            self._fh.write("site,device,channel,t,value\n")

    def write(self, msgs: list[Message], wire: list[bytes] | None = None) -> None:
        parts: list[str] = []
        if self.format == "csv":
            for m in msgs:
                if m.kind != "data":
                    continue
                self.messages += 1
                head = f"{m.site},{m.device_code},"
                if m.malformed:
                    # A CSV row cannot be broken JSON; it carries a value that is no number.
                    parts.extend(f"{head}{ch},{t},#ERR\n" for ch, t, _ in m.rows)
                else:
                    parts.extend(f"{head}{ch},{t},{v}\n" for ch, t, v in m.rows)
                self.readings += len(m.rows)
        else:
            for i, m in enumerate(msgs):
                self.messages += 1
                if m.kind == "data":
                    self.readings += len(m.rows)
                if m.topic == CN_DATA_TOPIC:
                    raw = wire[i] if wire is not None else bytes(m.payload)
                    code = next(iter(json.loads(m.payload)))
                    payload = (m.payload.decode("utf-8") if raw == bytes(m.payload) else json.dumps(base64.b64encode(raw).decode("ascii")))
                    parts.append(f'{{"topic": "{m.topic}", "t": {m.t!r}, "client_id": {json.dumps(code)}, "payload": {payload}}}\n')
                    continue
                text = m.payload.decode("utf-8", "replace")
                payload = json.dumps(text) if m.malformed else text
                parts.append(f'{{"topic": "{m.topic}", "payload": {payload}}}\n')
        self._fh.write("".join(parts))

    def close(self) -> None:
        self._fh.close()


def write_feed(sim: Simulation, path: str | Path, *, window_s: float | None = None, progress: bool = False) -> FeedWriter:
    """The whole run of ``sim`` to a feed file, generated ``window_s`` of event time at a time
    (default: long windows for small fleets, an hour for large ones, to bound memory)."""
    if window_s is None:
        window_s = max(3600.0, min(sim.duration_s / 20.0, 50 * 86400.0 / max(1, len(sim.devices))))
    writer = FeedWriter(path)
    bar = Progress(sim.duration_s, f"simulate -> {writer.path.name}", enabled=progress)
    try:
        wire = sim.convention.on_wire if sim.convention else None

        def write(msgs: list[Message]) -> None:
            # Convention devices' data as it would go on the wire (every other message framed).
            writer.write(msgs, [wire(m) for m in msgs] if wire is not None else None)

        t = sim.t0
        while t < sim.t_end:
            t = min(t + window_s, sim.t_end)
            write(sim.emit_until(t))
            bar.update(t - sim.t0, writer.messages)
        write(sim.flush())
    finally:
        writer.close()
    bar.close(writer.messages)
    return writer


def write_truth(sim: Simulation, feed: str | Path, extra: dict[str, Any] | None = None) -> Path:
    path = truth_path(feed)
    doc = sim.truth()
    if extra:
        doc.update(extra)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# -- MQTT --------------------------------------------------------------------------------------


class Publisher:
    """A paho-mqtt 2 client that publishes at QoS 1 from the caller's thread.

    No background network thread: the caller's thread writes each message and, every few
    messages or while it waits (``pump``), reads the broker's PUBACKs and any command. That
    avoids a thread hand-over per message (five times faster than ``loop_start`` here) and
    keeps every callback in one thread. Unacknowledged messages are bounded
    (``max_unacked``): back-pressure instead of an unbounded queue. Received messages (the
    devices' commands) are handed over on ``commands``.
    """

    def __init__(self, url: str, client_id: str, *, subscribe: list[str] | None = None, max_unacked: int = 20000, connect_timeout: float = 10.0) -> None:
        target = MqttTarget(url)
        self.target = target
        self.commands: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.max_unacked = max_unacked
        self.published = 0
        self.acked = 0
        self._since_pump = 0
        self._ready = False
        self._failed: str | None = None
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if target.username:
            c.username_pw_set(target.username, target.password)
        if target.tls:
            c.tls_set()
        c.max_inflight_messages_set(max(20, min(max_unacked, 65000)))
        c.max_queued_messages_set(0)
        topics = list(subscribe or [])

        def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            if rc.is_failure:
                self._failed = str(rc)
            elif topics:
                client.subscribe([(t, 1) for t in topics])
            else:
                self._ready = True

        def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
            self._ready = True

        def on_publish(client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
            self.acked += 1

        c.on_connect = on_connect
        c.on_subscribe = on_subscribe
        c.on_publish = on_publish
        c.on_message = lambda client, userdata, m: self.commands.put((m.topic, bytes(m.payload)))
        self.client = c
        try:
            c.connect(target.host, target.port, keepalive=30)
        except OSError as exc:
            raise PublishError(f"cannot connect to the broker at {target.redacted()}: {exc}") from None
        deadline = time.monotonic() + connect_timeout
        while not self._ready and self._failed is None and time.monotonic() < deadline:
            self._loop(0.1)
        if not self._ready:
            c.disconnect()
            raise PublishError(f"the broker at {target.redacted()} did not accept the connection ({self._failed or 'timeout'})")

    def _loop(self, timeout: float) -> None:
        rc = self.client.loop(timeout)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishError(f"connection to the broker at {self.target.redacted()} lost: {mqtt.error_string(rc)}")

    def pump(self, timeout: float = 0.0) -> None:
        """Process network traffic (acks, commands), waiting up to ``timeout`` for some."""
        self._since_pump = 0
        self._loop(max(0.0, timeout))

    def publish(self, topic: str, payload: bytes) -> None:
        if self.published - self.acked >= self.max_unacked:
            deadline = time.monotonic() + 30.0
            while self.published - self.acked >= self.max_unacked:
                if time.monotonic() > deadline:
                    raise PublishError(f"the broker acknowledged nothing for 30 s ({self.published - self.acked} messages unacknowledged)")
                self.pump(0.05)
        self.published += 1
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        self._since_pump += 1
        if self._since_pump >= 64:
            self.pump(0.0)

    def wait_acked(self, timeout: float = 60.0) -> bool:
        """Wait until the broker has acknowledged every message published so far."""
        deadline = time.monotonic() + timeout
        while self.acked < self.published:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.pump(min(left, 0.1))
        return True

    def close(self) -> None:
        self.client.disconnect()
        try:
            self.client.loop(0.1)
        except (OSError, ValueError):
            pass


class MessagePublisher(Protocol):
    """What LiveRun and replay_feed need of a publisher (``Publisher`` or ``FastPublisher``)."""

    commands: queue.Queue[tuple[str, bytes]]

    @property
    def published(self) -> int: ...
    @property
    def acked(self) -> int: ...

    def publish(self, topic: str, payload: bytes) -> None: ...
    def pump(self, timeout: float = 0.0) -> None: ...
    def wait_acked(self, timeout: float = 60.0) -> bool: ...
    def close(self) -> None: ...


def read_credentials(path: str | Path) -> dict[str, tuple[str, str]]:
    """device -> (username, password) from a ``devices.csv`` as ``geowarn broker-config`` writes
    it (columns device, username, password); PublishError naming the file and line otherwise."""
    out: dict[str, tuple[str, str]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"device", "username", "password"} <= set(reader.fieldnames):
                raise PublishError(f"{path}: not a devices.csv of `geowarn broker-config` (columns device,username,password)")
            for n, row in enumerate(reader, start=2):
                if not row.get("device") or not row.get("username"):
                    raise PublishError(f"{path}:{n}: a device and a username are needed")
                out[row["device"]] = (row["username"], row.get("password") or "")
    except OSError as exc:
        raise PublishError(f"{path}: {exc}") from None
    return out


class DevicePublishers:
    """Each device publishes on its own connection with its own account (``devices.csv`` of
    ``geowarn broker-config``): what a locked-down broker requires, since it binds a device's
    topics to its username and the client id to the username. A device's connection subscribes
    to that device's own command topic only (all its ACL allows). Native-JSON topics only
    (``{prefix}/{site}/{device}/…``): the device is the topic's last-but-one level."""

    def __init__(self, url: str, credentials: dict[str, tuple[str, str]], devices: list[tuple[str, str]], prefix: str,
                 *, obey_commands: bool = True) -> None:
        target = MqttTarget(url)
        self.commands: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._pubs: dict[str, Publisher] = {}
        missing = [d for _s, d in devices if d not in credentials]
        if missing:
            raise PublishError(f"no account for {len(missing)} device(s) in the credentials file: {', '.join(missing[:5])}")
        try:
            for site, device in devices:
                user, password = credentials[device]
                scheme = "mqtts" if target.tls else "mqtt"
                dev_url = f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{target.host}:{target.port}"
                topics = [f"{prefix}/{site}/{device}/cmd"] if obey_commands else []
                self._pubs[device] = Publisher(dev_url, user, subscribe=topics)
        except PublishError:
            self.close()
            raise

    @property
    def published(self) -> int:
        return sum(p.published for p in self._pubs.values())

    @property
    def acked(self) -> int:
        return sum(p.acked for p in self._pubs.values())

    def publish(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        pub = self._pubs.get(parts[-2]) if len(parts) >= 3 else None
        if pub is None:
            raise PublishError(f"{topic}: no device connection for it (per-device credentials need {{prefix}}/{{site}}/{{device}}/… topics)")
        pub.publish(topic, payload)

    def pump(self, timeout: float = 0.0) -> None:
        pubs = list(self._pubs.values())
        for i, p in enumerate(pubs):
            p.pump(timeout if i == 0 else 0.0)
            while True:
                try:
                    self.commands.put(p.commands.get_nowait())
                except queue.Empty:
                    break

    def wait_acked(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        return all(p.wait_acked(max(0.0, deadline - time.monotonic())) for p in self._pubs.values())

    def close(self) -> None:
        for p in self._pubs.values():
            p.close()


def open_publisher(url: str, client_id: str, *, subscribe: list[str] | None = None, fast: bool = False) -> MessagePublisher:
    """A connected QoS 1 publisher: paho-mqtt (default) or the pipelining ``FastPublisher``."""
    if fast:
        return FastPublisher(url, client_id, subscribe=subscribe)
    return Publisher(url, client_id, subscribe=subscribe)


@dataclass
class LiveStats:
    messages: int = 0
    data: int = 0
    status: int = 0
    commands: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0


def live_start(duration_s: float, speed: float, now: float | None = None) -> float:
    """Event time to start a live run at so that its last reading is sent at wall time
    ``now + duration/speed`` and no reading is ever in the future (the daemon rejects those)."""
    now = time.time() if now is None else now
    if math.isinf(speed):
        return now - duration_s
    return now - duration_s + duration_s / speed


class LiveRun:
    """Publish ``sim`` to a broker, paced at ``speed`` × real time (inf: as fast as possible)."""

    def __init__(
        self,
        sim: Simulation,
        url: str,
        *,
        speed: float = 1.0,
        client_id: str | None = None,
        record: FeedWriter | None = None,
        progress: bool = True,
        obey_commands: bool = True,
        fast: bool = False,
        credentials: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        if not (speed > 0):
            raise ValueError(f"speed must be > 0 (inf: as fast as possible), got {speed}")
        self.sim = sim
        self.speed = speed
        self.record = record
        self.progress = progress
        topics = [f"{sim.prefix}/+/+/cmd"] if obey_commands else []
        if obey_commands and sim.convention:
            topics.append(COMMAND_FILTER)
        self.pub: MessagePublisher
        if credentials is not None:
            if sim.convention:
                raise PublishError("per-device credentials are for native-JSON devices; a convention scenario publishes on $dp")
            self.pub = DevicePublishers(url, credentials, [(d.site.code, d.code) for d in sim.devices], sim.prefix, obey_commands=obey_commands)
        else:
            self.pub = open_publisher(url, client_id or f"geowarn-sim-{os.getpid()}", subscribe=topics, fast=fast)
        self.stats = LiveStats()
        self._w0 = 0.0
        #: Called after each command is obeyed (tests and the CLI log them).
        self.on_command: Callable[[dict[str, Any]], None] | None = None

    def slice_s(self) -> float:
        """Event time per generated slice at speed inf: about ``SLICE_MESSAGES`` messages (data
        and heartbeats at the devices' current rates), at least a minute."""
        rate = sum(1.0 / d.report_s + 1.0 / d.status_s for d in self.sim.devices)
        return max(60.0, min(self.sim.duration_s, SLICE_MESSAGES / rate if rate > 0 else self.sim.duration_s))

    def event_now(self) -> float:
        if math.isinf(self.speed):
            return self.sim.next_due()
        return self.sim.t0 + (time.monotonic() - self._w0) * self.speed

    def _command(self, topic: str, payload: bytes) -> None:
        if is_command_topic(topic) and self.sim.convention:
            self._cn_command(topic, payload)
            return
        parts = topic.split("/")
        entry: dict[str, Any] = {"topic": topic}
        try:
            doc = json.loads(payload)
            if not isinstance(doc, dict) or doc.get("cmd") != "set_sampling":
                raise ValueError(f"unknown command {str(doc)[:80]}")
            raw = doc.get("interval_s")
            interval = None if raw is None else float(raw)
            now = min(max(self.event_now(), self.sim.t0), self.sim.t_end)
            site, device = parts[-3], parts[-2]
            self.sim.set_sampling(site, device, interval, now)
            entry.update(ok=True, site=site, device=device, interval_s=interval, t=now)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            entry.update(ok=False, error=str(exc))
        self.stats.commands.append(entry)
        if self.on_command is not None:
            self.on_command(entry)

    def _cn_command(self, topic: str, payload: bytes) -> None:
        """A convention device's command: obeyed, answered on ``$dr`` (simulators/convention.py)."""
        now = min(max(self.event_now(), self.sim.t0), self.sim.t_end)
        try:
            reply_topic, reply, entry = self.sim.convention.obey(self.sim, topic, payload, now)
        except (CommandError, KeyError, ValueError) as exc:
            entry = {"topic": topic, "ok": False, "error": str(exc)}
        else:
            if reply is not None:  # None: the device dropped it unanswered (a wrong apikey)
                self.pub.publish(reply_topic, reply)
        self.stats.commands.append(entry)
        if self.on_command is not None:
            self.on_command(entry)

    def _send(self, msgs: list[Message]) -> None:
        pub = self.pub
        window = int(getattr(pub, "max_unacked", 20000))
        high = max(1, int(window * _WINDOW_HIGH))
        low = int(window * _WINDOW_LOW)
        data = 0
        wire = self.sim.convention.on_wire if self.sim.convention else None
        sent: list[bytes] | None = [] if wire is not None and self.record is not None else None
        for m in msgs:
            if pub.published - pub.acked >= high:
                self._catch_up(low)
            raw = wire(m) if wire else m.payload
            pub.publish(m.topic, raw)
            if sent is not None:
                sent.append(bytes(raw))
            if m.kind == "data":
                data += 1
        self.stats.data += data
        self.stats.status += len(msgs) - data
        self.stats.messages += len(msgs)
        if self.record is not None:
            self.record.write(msgs, sent)  # as published: framed where they went framed

    def _catch_up(self, low: int, timeout: float = 30.0) -> None:
        """Wait (reading acks and commands) until at most ``low`` messages are unacknowledged;
        fails after ``timeout`` s without an ack."""
        pub = self.pub
        last, deadline = pub.acked, time.monotonic() + timeout
        while pub.published - pub.acked > low:
            pub.pump(0.05)
            # PUBACKs trickle in one by one: reading each batch of a few milliseconds
            # rather than each ack leaves the CPU to the broker (often on the same cores).
            time.sleep(_ACK_BATCH_S)
            if pub.acked != last:
                last, deadline = pub.acked, time.monotonic() + timeout
            elif time.monotonic() > deadline:
                raise PublishError(f"the broker acknowledged nothing for {timeout:.0f} s ({pub.published - pub.acked} messages unacknowledged)")

    def run(self, stop: threading.Event | None = None) -> LiveStats:
        sim = self.sim
        bar = Progress(sim.duration_s, "simulate -> broker", enabled=self.progress)
        slice_s = self.slice_s()
        self._w0 = time.monotonic()
        try:
            while stop is None or not stop.is_set():
                while True:
                    try:
                        self._command(*self.pub.commands.get_nowait())
                    except queue.Empty:
                        break
                nxt = sim.next_due()
                if nxt > sim.t_end:
                    break
                if math.isinf(self.speed):
                    # As fast as possible: generate a slice of event time at a time, sized to
                    # about SLICE_MESSAGES messages. A command is obeyed from the next slice.
                    horizon = nxt + slice_s
                else:
                    wait = self._w0 + (nxt - sim.t0) / self.speed - time.monotonic()
                    if wait > 0:
                        # Waiting on the broker's socket: a command is obeyed when it arrives.
                        self.pub.pump(min(wait, 1.0))
                        continue
                    horizon = self.event_now()
                self._send(sim.emit_until(horizon))
                bar.update(min(horizon, sim.t_end) - sim.t0, self.stats.messages)
            self._send(sim.flush())
            if not self.pub.wait_acked(120.0):
                raise PublishError(f"the broker did not acknowledge {self.pub.published - self.pub.acked} messages")
        finally:
            self.stats.wall_s = time.monotonic() - self._w0
            self.pub.close()
        bar.close(self.stats.messages)
        return self.stats


# -- replaying a recorded feed -----------------------------------------------------------------


def _feed_messages(path: Path, prefix: str, drill: bool) -> Iterator[tuple[float | None, str, bytes]]:
    """(event time, topic, payload) of each message of a feed, in file order. CSV rows of
    one device at one time become one native v1 message; JSONL lines are sent as they are."""
    fmt = "jsonl"
    with open(path, encoding="utf-8", newline="") as fh:
        first = fh.readline()
        fh.seek(0)
        if not first.lstrip().startswith("{"):
            fmt = "csv"
        if fmt == "jsonl":
            for line in fh:
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                    topic, payload = str(doc["topic"]), doc["payload"]
                except (ValueError, KeyError, TypeError):
                    continue  # not a feed line: nothing to send
                if "t" in doc and topic.split("/")[-1] not in ("data", "status"):
                    # A message of the national convention as received (ingest/feeds.py): at its
                    # receive time, the bytes as they came (base64) or the body.
                    try:
                        t = parse_time(doc["t"])
                        raw = base64.b64decode(payload, validate=True) if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False).encode()
                    except (ValueError, TypeError):
                        continue
                    yield t, topic, raw
                    continue
                if isinstance(payload, str):
                    yield None, topic, payload.encode()  # a recorded malformed payload
                    continue
                yield _payload_time(payload), topic, json.dumps(payload).encode()
            return
        reader = csv.reader(fh)
        next(reader, None)
        seqs: dict[tuple[str, str], int] = {}
        group: list[list[str]] = []

        def emit(rows: list[list[str]]) -> tuple[float | None, str, bytes]:
            site, device, t_raw = rows[0][0], rows[0][1], rows[0][3]
            seq = seqs.get((site, device), 0)
            seqs[(site, device)] = seq + 1
            readings = [{"ch": r[2], "t": _num_or_text(r[3]), "v": _num_or_text(r[4])} for r in rows]
            doc = {"v": 1, "device": device, "seq": seq, "drill": drill, "readings": readings}
            try:
                t: float | None = parse_time(_num_or_text(t_raw))
            except ValueError:
                t = None
            return t, f"{prefix}/{site}/{device}/data", json.dumps(doc).encode()

        for row in reader:
            if len(row) != 5:
                continue
            if group and (row[0], row[1], row[3]) != (group[0][0], group[0][1], group[0][3]):
                yield emit(group)
                group = []
            group.append(row)
        if group:
            yield emit(group)


def _num_or_text(raw: str) -> Any:
    try:
        return float(raw)
    except ValueError:
        return raw


def _payload_time(payload: Any) -> float | None:
    try:
        if "readings" in payload:
            return max(parse_time(r["t"]) for r in payload["readings"])
        return parse_time(payload["t"])
    except (KeyError, TypeError, ValueError):
        return None


def count_feed_messages(path: str | Path, prefix: str = "geowarn") -> int:
    return sum(1 for _ in _feed_messages(Path(path), prefix, False))


def replay_feed(
    path: str | Path,
    url: str,
    *,
    speed: float = 1.0,
    prefix: str = "geowarn",
    drill: bool = False,
    progress: bool = True,
    client_id: str | None = None,
    fast: bool = False,
) -> int:
    """Publish every message of a recorded feed, its original timing scaled by ``speed``
    (inf: as fast as possible); returns the number of messages published."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such feed file")
    if not speed > 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    total = 0
    t_first = math.inf
    for t, _, _ in _feed_messages(path, prefix, drill):
        total += 1
        if t is not None:
            t_first = min(t_first, t)
    if math.isinf(t_first):
        t_first = 0.0
    pub = open_publisher(url, client_id or f"geowarn-replay-{os.getpid()}", fast=fast)
    bar = Progress(float(total), f"replay {path.name}", enabled=progress)
    n = 0
    w0 = time.monotonic()
    last_t = t_first
    try:
        for t, topic, payload in _feed_messages(path, prefix, drill):
            if t is not None:
                last_t = t
            if not math.isinf(speed):
                wait = w0 + (last_t - t_first) / speed - time.monotonic()
                while wait > 0:
                    pub.pump(min(wait, 1.0))  # pacing on the feed's own clock, acks meanwhile
                    wait = w0 + (last_t - t_first) / speed - time.monotonic()
            pub.publish(topic, payload)
            n += 1
            bar.update(float(n), n)
        if not pub.wait_acked(120.0):
            raise PublishError(f"the broker did not acknowledge {pub.published - pub.acked} messages")
    finally:
        pub.close()
    bar.close(n)
    return n
