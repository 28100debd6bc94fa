"""``geowarn simulate`` and ``geowarn plot`` (DESIGN §8): thin shells over the simulators.

``geowarn.service.cli`` registers them with ``add_simulate_parser`` and ``add_plot_parser``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from geowarn.config.errors import ConfigError
from geowarn.config.settings import device_apikeys

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_CONFIG = 2


def _duration(raw: str) -> float:
    from geowarn.simulators.scenario import parse_duration

    try:
        value = parse_duration(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not value > 0:
        raise argparse.ArgumentTypeError("duration must be > 0")
    return value


def _speed(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"speed {raw!r} is not a number (inf: as fast as possible)") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("speed must be > 0 (inf: as fast as possible)")
    return value


def add_simulate_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    s = subparsers.add_parser(
        "simulate",
        help="a simulated fleet publishing live, or writing a recorded feed; or replay a feed into MQTT",
        description="Run a scenario (bundled NAME or a TOML FILE) to a broker (--broker) and/or a feed file (--out), "
        "or play a recorded feed into a broker (--replay FEED).",
    )
    s.add_argument("--list", action="store_true", help="name the bundled scenarios and exit")
    s.add_argument("--scenario", default=None, help="bundled scenario name or scenario TOML file")
    s.add_argument("--seed", type=int, default=None, help="random seed (default: the scenario's)")
    s.add_argument("--duration", type=_duration, default=None, help="event time to simulate: seconds or 90s/30m/6h/14d (default: the scenario's)")
    s.add_argument("--stations", type=int, default=None, help="N synthetic devices built from the scenario's template instead of its sites")
    s.add_argument("--speed", type=_speed, default=1.0, help="event time per wall-clock second when live or replaying (default 1; inf: as fast as possible)")
    s.add_argument("--broker", default=None, help="publish live to this broker, e.g. mqtt://127.0.0.1:1883")
    s.add_argument("--credentials", default=None, metavar="DEVICES_CSV",
                   help="live: each device on its own connection with its own account, from the devices.csv of `geowarn broker-config` "
                        "(a locked-down broker accepts nothing else); --broker gives host and port")
    s.add_argument("--out", default=None, help="write a feed: FEED.csv or FEED.jsonl, with FEED.truth.json beside it")
    s.add_argument("--drill", action="store_true", help='mark every payload "drill": true (an exercise)')
    s.add_argument("--replay", default=None, metavar="FEED", help="publish a recorded CSV/JSONL feed to --broker with its timing scaled by --speed")
    s.add_argument("--start", default=None, help="event time of the start: 'scenario' (default for --out), 'now' (live: the last reading is sent now + duration/speed), epoch seconds or RFC 3339")
    s.add_argument("--topic-prefix", default=None, help="topic prefix (default: the scenario's, normally geowarn)")
    s.add_argument("--client-id", default=None, help="MQTT client id")
    s.add_argument("--fast", action="store_true", help="publish with the pipelining MQTT 3.1.1 client (plain TCP, about 5x paho) instead of paho-mqtt")
    s.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    s.set_defaults(func=run_simulate)
    return s


def add_plot_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    p = subparsers.add_parser("plot", help="a quick-look PNG of one site of a feed", description="Plot one site of a CSV/JSONL feed: displacement, velocity, inverse velocity with the failure forecast, rain.")
    p.add_argument("feed", help="CSV or JSONL feed")
    p.add_argument("--site", required=True)
    p.add_argument("--out", default=None, help="PNG file (default: FEED.SITE.png)")
    p.add_argument("--sites", default=None, help="site registry (default: built from the feed, or FEED.sites.toml when present)")
    p.add_argument("--alerts", default=None, help="alerts.jsonl of a replay: warning levels as coloured bands")
    p.add_argument("--truth", default=None, help="truth file (default: FEED.truth.json when present): marks the true failure time")
    p.set_defaults(func=run_plot)
    return p


def _print_config_error(exc: ConfigError) -> None:
    print("configuration error:", file=sys.stderr)
    for p in exc.problems:
        print(f"  {p}", file=sys.stderr)


def _start_arg(raw: str | None, live: bool, duration: float, speed: float, scenario_start: float) -> float:
    from geowarn.simulators.publish import live_start
    from geowarn.core.timefmt import parse_instant

    if raw is None:
        raw = "now" if live else "scenario"
    if raw == "scenario":
        return scenario_start
    if raw == "now":
        return live_start(duration, speed)
    try:
        return parse_instant(raw)
    except ValueError as exc:
        raise ValueError(f"--start: {exc}") from None


def run_simulate(args: argparse.Namespace) -> int:
    from geowarn.simulators.scenario import bundled_scenarios, load_scenario, sites_toml, synthetic_sites

    if args.list:
        for name, path in bundled_scenarios().items():
            try:
                desc = load_scenario(path).description
            except ConfigError as exc:
                desc = f"(invalid: {exc})"
            print(f"{name:10} {desc}")
        return EXIT_OK
    progress = not args.no_progress
    if args.replay is not None:
        from geowarn.simulators.publish import PublishError, replay_feed

        if args.broker is None:
            print("error: --replay needs --broker URL", file=sys.stderr)
            return EXIT_FAIL
        try:
            n = replay_feed(args.replay, args.broker, speed=args.speed, prefix=args.topic_prefix or "geowarn", drill=args.drill, progress=progress, client_id=args.client_id, fast=args.fast)
        except (OSError, ValueError, PublishError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAIL
        print(f"replayed {n} messages from {args.replay} to {args.broker}")
        return EXIT_OK
    if args.scenario is None:
        print(f"error: give --scenario NAME|FILE (bundled: {', '.join(bundled_scenarios())}), --list or --replay FEED", file=sys.stderr)
        return EXIT_FAIL
    if args.broker is None and args.out is None:
        print("error: give --broker URL (publish live) and/or --out FEED (write a feed)", file=sys.stderr)
        return EXIT_FAIL
    if args.stations is not None and args.stations < 1:
        print("error: --stations must be >= 1", file=sys.stderr)
        return EXIT_FAIL
    try:
        scenario = load_scenario(args.scenario)
        if args.topic_prefix:
            scenario = scenario.model_copy(update={"topic_prefix": args.topic_prefix})
        registry = scenario.registry(args.stations)
        device_apikeys(registry)  # the apikeys its convention devices check: readable, or stop here
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_CONFIG
    from geowarn.simulators.engine import Simulation
    from geowarn.simulators.publish import (
        FeedWriter,
        LiveRun,
        PublishError,
        feed_format,
        read_credentials,
        sites_path,
        write_feed,
        write_truth,
    )

    duration = args.duration if args.duration is not None else scenario.duration
    try:
        t0 = _start_arg(args.start, args.broker is not None, duration, args.speed, scenario.start)
        if args.out is not None:
            feed_format(args.out)
        sim = Simulation(scenario, registry, seed=args.seed, t0=t0, duration_s=duration, drill=args.drill, strict_sites=args.stations is None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    extra: dict[str, object] = {"stations": args.stations}
    if args.out is not None:
        # The registry beside the feed: replay --sites and plot need kinds and thresholds.
        sp = sites_path(args.out)
        sp.parent.mkdir(parents=True, exist_ok=True)
        if args.stations is not None:
            sp.write_text(sites_toml(synthetic_sites(scenario.template, args.stations)), encoding="utf-8")
        else:
            sp.write_bytes(Path(registry.source).read_bytes())
        extra["sites_file"] = sp.name
    t_wall = time.perf_counter()
    if args.broker is None:
        writer = write_feed(sim, args.out, progress=progress)
        truth = write_truth(sim, args.out, extra)
        print(f"{scenario.name}: {len(sim.devices)} devices, {writer.messages} messages, {writer.readings} readings "
              f"in {time.perf_counter() - t_wall:.2f} s -> {args.out} (truth: {truth.name})")
        return EXIT_OK
    record = FeedWriter(args.out) if args.out is not None else None
    try:
        credentials = read_credentials(args.credentials) if args.credentials else None
        run = LiveRun(sim, args.broker, speed=args.speed, client_id=args.client_id, record=record, progress=progress, fast=args.fast,
                      credentials=credentials)
        run.on_command = lambda e: print(f"command: {json.dumps(e)}", file=sys.stderr, flush=True)
        stats = run.run()
    except (PublishError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_FAIL
    finally:
        if record is not None:
            record.close()
    if args.out is not None:
        extra["commands"] = stats.commands
        write_truth(sim, args.out, extra)
    rate = stats.messages / stats.wall_s if stats.wall_s > 0 else math.inf
    print(f"{scenario.name}: {len(sim.devices)} devices published {stats.messages} messages ({stats.data} data, {stats.status} status) "
          f"in {stats.wall_s:.2f} s ({rate:,.0f} msg/s) to {args.broker}; {len(stats.commands)} commands obeyed")
    return EXIT_OK


def run_plot(args: argparse.Namespace) -> int:
    from geowarn.config.registry import load_registry
    from geowarn.ingest.feeds import FeedError, read_feed, registry_from_rows

    try:
        from geowarn.simulators.plots import plot_site, read_alerts
    except ImportError as exc:
        print(f"error: geowarn plot needs matplotlib, the optional extra: pip install 'geowarn[plots]' ({exc})", file=sys.stderr)
        return EXIT_FAIL
    from geowarn.simulators.publish import sites_path, truth_path

    try:
        rows = [r for r in read_feed(args.feed) if r.site == args.site]
        if not rows:
            print(f"error: no readings of site {args.site!r} in {args.feed}", file=sys.stderr)
            return EXIT_FAIL
        sites = args.sites or (str(sites_path(args.feed)) if sites_path(args.feed).exists() else None)
        registry = load_registry(sites) if sites else registry_from_rows(rows, args.feed)
    except FeedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_CONFIG
    failure = None
    tp = Path(args.truth) if args.truth else truth_path(args.feed)
    if tp.exists():
        failure = json.loads(tp.read_text()).get("failures_epoch", {}).get(args.site)
    events = read_alerts(args.alerts, args.site) if args.alerts else []
    out = Path(args.out) if args.out else Path(f"{args.feed}.{args.site}.png")
    plot_site(rows, registry, args.site, events, out, failure_time=failure)
    print(f"plot of {args.site} -> {out}")
    return EXIT_OK
