"""``geowarn demo``: the whole pipeline on one machine, with nothing to install but the package.

An embedded MQTT broker (unless GEOWARN_MQTT_URL names one), the real daemon with a SQLite
journal, and a simulated fleet for the registry's sites publishing over MQTT in accelerated
time: two weeks of 10-minute readings in about a minute, with the first site accelerating
towards failure by Voight's law. Warnings are printed as they arrive on the alerts topic,
exactly as any subscriber would see them.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from geowarn.core.levels import LEVELS
from geowarn.config.errors import ConfigError
from geowarn.config.settings import ENV_PREFIX, Loaded, MqttTarget, example_path, load_all
from geowarn.service.daemon import build_app

DAY = 86400.0
STEP_S = 600.0
SPAN_S = 14 * DAY
# The demo's event time ends now: readings may not come from the future.
END_BEFORE_FAILURE_S = 1800.0

_COLOUR_CODES = {"blue": "34", "yellow": "33", "orange": "38;5;208", "red": "31", "none": "32"}


def _paint(text: str, colour: str, tty: bool) -> str:
    return f"\033[1;{_COLOUR_CODES.get(colour, '0')}m{text}\033[0m" if tty else text


class _Client:
    """A plain paho client for the demo's publisher and its alert subscriber."""

    def __init__(self, url: str, client_id: str, topics: list[str] | None = None) -> None:
        target = MqttTarget(url)
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if target.username:
            self.c.username_pw_set(target.username, target.password)
        self.c.max_inflight_messages_set(200)
        topics = topics or []

        def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
            if topics:
                c.subscribe([(t, 1) for t in topics])
            else:
                self.ready.set()

        self.c.on_connect = on_connect
        self.c.on_subscribe = lambda c, u, mid, rc, p: self.ready.set()
        self.c.on_message = lambda c, u, m: self.inbox.put((m.topic, bytes(m.payload)))
        self.c.connect(target.host, target.port)
        self.c.loop_start()
        if not self.ready.wait(10):
            raise RuntimeError(f"could not connect to the broker at {target.redacted()}")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _print_alert(event: dict[str, Any], names: dict[str, str], tty: bool) -> None:
    lvl = LEVELS[event["level"]]
    prev = LEVELS[event["previous_level"]]
    label = f"{lvl.colour.upper():6} {lvl.zh} {lvl.en}" if event["level"] else "LIFTED"
    when = event["t"][:16].replace("T", " ")
    print(
        f"  {when} UTC  {event['site']:4} {_paint(label, lvl.colour, tty)}  "
        f"(was {prev.colour})  {names.get(event['site'], '')}\n      {event['reason']}",
        flush=True,
    )


#: Written into a data directory the demo made or reused: a later demo may clear it.
DEMO_MARKER = ".geowarn-demo"
#: Once the failing site is red the demo simulates this much more (event time), then stops:
#: the rest of the days would only add readings. --full runs them all.
AFTER_RED_S = 3600.0


def _prepare_data_dir(data_dir: str | None) -> tuple[Path, bool] | str:
    """The demo's data directory and whether it is a temporary one; or why it cannot be used.

    A directory an earlier demo used (it has DEMO_MARKER) is cleared, so a second run starts
    from nothing like the first (its readings would otherwise be two weeks older than what the
    first run stored: out of order, and counted twice in the summary). Any other non-empty
    directory is refused: the demo does not write into a real data directory."""
    import shutil

    if not data_dir:
        return Path(tempfile.mkdtemp(prefix="geowarn-demo-")), True
    path = Path(data_dir)
    if path.exists() and any(path.iterdir()):
        if not (path / DEMO_MARKER).exists():
            return (f"{path} is not empty and not a demo's data directory; give the demo an empty or new directory "
                    "(it never writes into a real GeoWarn data directory)")
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        print(f"  (cleared the previous demo run in {path})")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    (path / DEMO_MARKER).write_text("written by `geowarn demo`: a later demo run clears this directory\n")
    return path, False


def run_demo(duration_s: float = 60.0, data_dir: str | None = None, verbose: bool = False, full: bool = False) -> int:
    from geowarn.service.broker import EmbeddedBroker
    from geowarn.service.logs import CHATTY, configure_logging
    from geowarn.simulators.fleet import Fleet

    configure_logging(logging.INFO if verbose else logging.ERROR, quiet=CHATTY)
    tty = os.isatty(1)
    if duration_s <= 0:
        print("error: --duration must be positive")
        return 2
    try:
        # The bundled examples and nothing of a deployment's configuration: on a host where GeoWarn
        # is installed (./geowarn.toml, /etc/geowarn, GEOWARN_SITES), a demo must not simulate a
        # failure at a real site and send its red warning to real duty officers.
        base = load_all(None, sites_path=example_path("sites.example.toml"), roster_path=example_path("roster.example.toml"), find_file=False)
    except ConfigError as exc:
        print("configuration error:")
        for p in exc.problems:
            print(f"  {p}")
        return 2

    broker = None
    if ENV_PREFIX + "MQTT_URL" not in os.environ:
        broker = EmbeddedBroker()
        broker.start()
        mqtt_url = broker.url
        where = f"embedded broker on {broker.host}:{broker.port}"
    else:
        mqtt_url = base.settings.mqtt_url
        where = f"broker {base.settings.mqtt.redacted()}"
    prepared = _prepare_data_dir(data_dir)
    if isinstance(prepared, str):
        print(f"error: {prepared}")
        if broker is not None:
            broker.stop()
        return 2
    data, temporary = prepared
    settings = base.settings.model_copy(
        update={"mqtt_url": mqtt_url, "data_dir": data, "mqtt_client_id": f"geowarn-demo-{os.getpid()}", "journal_sync": "normal"}
    )
    loaded = Loaded(settings, base.registry, base.roster, base.warnings)
    registry = loaded.registry
    failing = next(iter(registry.sites))
    names = {code: s.name for code, s in registry.sites.items()}

    now = time.time()
    t_f = now + END_BEFORE_FAILURE_S
    t_start = t_f - SPAN_S
    steps = int((t_f - END_BEFORE_FAILURE_S - t_start) // STEP_S)
    fleet = Fleet(registry, t0=t_start, seed=7, failures={failing: t_f}, failure_alpha=1.5)

    print(f"GeoWarn demo — {len(registry.sites)} sites, {len(fleet.devices)} devices, {where}")
    print(f"  data dir: {data}" + (" (temporary: removed at the end; keep it with --data-dir DIR)" if temporary else ""))
    if settings.http and settings.http.lower() != "off":
        print(f"  console: http://{settings.http}/ while the demo runs (GEOWARN_HTTP; a login: "
              f"geowarn token create --tier county --admin 420527 --name you --data-dir {data})")
    print(f"  simulating {SPAN_S / DAY:.0f} days of 10-minute readings in about {duration_s:.0f} s; "
          f"site {failing} ({names[failing]}) is heading for failure.\n", flush=True)

    # Timers follow the simulated time, not the wall clock: two weeks pass in a minute.
    app = build_app(loaded, event_time_start=t_start)
    stop = threading.Event()
    daemon = threading.Thread(target=app.run, args=(stop,), name="geowarn-daemon", daemon=True)
    daemon.start()
    if not app.link.wait_connected(15):
        print("error: the daemon could not connect to the broker")
        stop.set()
        return 1
    watcher = _Client(mqtt_url, f"geowarn-demo-watch-{os.getpid()}", [f"{settings.topic_prefix}/alerts/#", f"{settings.topic_prefix}/deadletter"])
    pub = _Client(mqtt_url, f"geowarn-demo-fleet-{os.getpid()}")

    events: list[dict[str, Any]] = []
    deadletters: list[dict[str, Any]] = []

    def drain() -> None:
        while True:
            try:
                topic, payload = watcher.inbox.get_nowait()
            except queue.Empty:
                return
            doc = json.loads(payload)
            if topic.endswith("/deadletter"):
                deadletters.append(doc)
                print(f"  dead letter: {doc['reason']} on {doc['topic']} — {doc['detail']}", flush=True)
            else:
                events.append(doc)
                _print_alert(doc, names, tty)

    published = 0
    try:
        # Two hostile messages up front: the daemon rejects them with a reason and goes on.
        print("  first, two malformed messages on purpose: each is dead-lettered with its reason and nothing else is lost", flush=True)
        first_site = registry.sites[failing]
        dev = first_site.devices[0].device
        other = first_site.devices[1].device if len(first_site.devices) > 1 else dev
        pub.c.publish(f"{settings.topic_prefix}/{failing}/{dev}/data", b'{"v": 1, "device": "' + dev.encode() + b'", "readings": [{"ch": "nope", "t": 0, "v": "1"}', qos=1)
        pub.c.publish(
            f"{settings.topic_prefix}/{failing}/{dev}/data",
            json.dumps({"v": 1, "device": other, "readings": []}).encode(),
            qos=1,
        )
        published += 2
        wall0 = time.monotonic()
        red_at: float | None = None
        for i in range(steps + 1):
            t = t_start + i * STEP_S
            if red_at is None and any(e["site"] == failing and e["level"] == 4 and not e["exercise"] for e in events):
                red_at = t
            if red_at is not None and not full and t - red_at > AFTER_RED_S:
                print(f"  {failing} is red: stopping the simulation here (--full runs all {SPAN_S / DAY:.0f} days)", flush=True)
                break
            t = t_start + i * STEP_S
            batch = fleet.messages(t)
            if i % 6 == 0:
                batch += fleet.status_messages(t)
            for topic, payload in batch:
                pub.c.publish(topic, payload, qos=1)
            published += len(batch)
            drain()
            lag = wall0 + duration_s * (i + 1) / (steps + 1) - time.monotonic()
            if lag > 0:
                time.sleep(lag)  # pacing the simulated clock against the wall clock
        # Let the daemon finish what is in flight.
        deadline = time.monotonic() + 30
        while (app.counters.messages < published or not app.caught_up()) and time.monotonic() < deadline:
            drain()
            time.sleep(0.05)
        time.sleep(0.3)
        drain()
    except KeyboardInterrupt:
        print("\ninterrupted")
    finally:
        stop.set()
        daemon.join(40)
        time.sleep(0.3)  # the detection worker's last events are on their way to the watcher
        drain()
        watcher.close()
        pub.close()
        if broker is not None:
            broker.stop()

    c = app.counters
    stored = _journal_counts(app.journal_path)
    by_site: dict[str, int] = {}
    for e in events:
        if not e["exercise"]:
            by_site[e["site"]] = max(by_site.get(e["site"], 0), e["level"])
    reasons = Counter(d["reason"] for d in deadletters)
    print("\nSummary")
    print(f"  messages {c.messages} of {published} published, readings stored {stored['readings']}, "
          f"dead letters {stored['deadletters']} {dict(reasons)}")
    for code in registry.sites:
        lvl = LEVELS[by_site.get(code, 0)]
        print(f"  {code:4} highest level: {_paint(lvl.colour, lvl.colour, tty)} ({lvl.en})  {names[code]}")
    if temporary:
        import shutil

        shutil.rmtree(data, ignore_errors=True)
        print(f"  data removed ({data}); run with --data-dir DIR to keep the journal and alerts")
    else:
        print(f"  alerts: {data / 'alerts.jsonl'}")
        print(f"  readings: GEOWARN_DATA_DIR={data} geowarn export --site {failing} --format csv | head")
    red = by_site.get(failing, 0) == 4
    if not red:
        print(f"error: site {failing} never reached red")
    return 0 if red else 1


def _journal_counts(path: Path) -> dict[str, int]:
    from geowarn.ingest.journal import JournalReader

    reader = JournalReader(path)
    return {"readings": reader.readings_stored(), "deadletters": sum(reader.deadletter_counts().values())}
