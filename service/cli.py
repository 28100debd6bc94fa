"""The ``geowarn`` command line (DESIGN §8). Each command is a thin shell over the packages:
it parses arguments, loads configuration, and turns errors into messages and exit codes."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geowarn.config.errors import ConfigError
from geowarn.core.timefmt import parse_instant
from geowarn.core.logfields import kv

if TYPE_CHECKING:
    from geowarn.config.settings import Settings

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_CONFIG = 2


def _time_arg(raw: str) -> float:
    """--since/--until: epoch seconds or RFC 3339 (no zone, or a date alone, means UTC — and
    the command says so on stderr, since a duty office thinks in Beijing time)."""
    try:
        t = parse_instant(raw, assume_utc=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    try:
        parse_instant(raw)
    except ValueError:
        example = raw if "T" in raw else f"{raw}T00:00"
        print(f"note: {raw!r} has no time zone: taken as UTC (write e.g. {example}+08:00 for Beijing time, or {example}Z)", file=sys.stderr)
    return t


def _setup_logging(verbose: bool) -> None:
    from geowarn.service.logs import configure_logging

    try:
        configure_logging(logging.DEBUG if verbose else logging.INFO)
    except ValueError as exc:  # a bad GEOWARN_LOG_FORMAT stops the start, saying why
        raise SystemExit(f"configuration error: {exc}") from None


def _print_config_error(exc: ConfigError) -> None:
    print("configuration error:", file=sys.stderr)
    for p in exc.problems:
        print(f"  {p}", file=sys.stderr)


# -- check-config ------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    import tomllib

    from geowarn.config.settings import load_all

    try:
        target = args.file
        kind = "settings"
        if target is not None:
            try:
                with open(target, "rb") as fh:
                    top = tomllib.load(fh)
                kind = "sites" if "sites" in top and isinstance(top["sites"], list) else "roster" if "units" in top else "settings"
            except (OSError, tomllib.TOMLDecodeError):
                kind = "settings"  # load_settings names the problem with the file
        if kind == "sites":
            loaded = load_all(None, sites_path=target)
        elif kind == "roster":
            loaded = load_all(None, roster_path=target)
        else:
            loaded = load_all(target)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_CONFIG
    registry, roster = loaded.registry, loaded.roster
    for w in loaded.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps({"sites": registry.to_json(), "roster": roster.to_json()}, ensure_ascii=False, indent=2))
    else:
        n_dev = sum(len(s.devices) for s in registry.sites.values())
        n_ch = sum(len(c) for c in registry.channels.values())
        print(f"ok: {len(registry.sites)} sites, {n_dev} devices, {n_ch} channels ({registry.source}); "
              f"{len(roster.units)} roster units ({roster.source})")
    _check_broker(loaded.settings, quiet=args.json)
    return EXIT_OK


def _check_broker(settings: "Settings", quiet: bool) -> None:
    """Say loudly when the configured broker lets anybody in (one short anonymous CONNECT)."""
    from geowarn.service.brokerprobe import ANONYMOUS_WARNING, probe_anonymous

    target = settings.mqtt
    result = probe_anonymous(target, str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None)
    if result.verdict == "open":
        print(f"warning: {target.redacted()}: {ANONYMOUS_WARNING}", file=sys.stderr)
    elif not quiet:  # --json keeps stdout for the JSON
        verdict = "refuses anonymous connections" if result.verdict == "closed" else f"not checked for anonymous access ({result.detail})"
        print(f"broker {target.redacted()}: {verdict}")


# -- export ------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from geowarn.core.timefmt import rfc3339
    from geowarn.config.settings import load_settings
    from geowarn.core.sqlite import SchemaError
    from geowarn.ingest.journal import JOURNAL_FILE, Journal

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_CONFIG
    data_dir = Path(args.data_dir) if args.data_dir else Path(settings.data_dir)
    try:
        journal = Journal(data_dir / JOURNAL_FILE, readonly=True)
    except FileNotFoundError:
        print(f"error: no journal in {data_dir} (set GEOWARN_DATA_DIR or --data-dir)", file=sys.stderr)
        return EXIT_FAIL
    except SchemaError as exc:  # e.g. a journal written by a newer GeoWarn
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    try:
        if args.site is not None:
            # An unknown site (a typo) is not "0 readings": an error naming the sites there are.
            # A site of the registry (or one the journal has) with no readings yet is still 0.
            known = {r[0] for r in journal.conn.execute("SELECT DISTINCT site FROM series")}
            try:
                from geowarn.config.registry import load_registry

                known |= set(load_registry(settings.sites_path).sites)
            except ConfigError:
                pass  # the registry is not needed to export; the journal's sites still tell
            if args.site not in known:
                print(f"error: no site {args.site!r} in {data_dir} or the site registry (sites: {', '.join(sorted(known)) or 'none'})",
                      file=sys.stderr)
                return EXIT_FAIL
        if args.count:
            print(journal.count(args.site, args.since, args.until, drill=args.drill))
            return EXIT_OK
        out = sys.stdout
        if args.format == "csv":
            w = csv.writer(out, lineterminator="\n")
            w.writerow(["site", "device", "channel", "t", "value"])
            for site, device, channel, t_ms, value in journal.export(args.site, args.since, args.until, drill=args.drill):
                w.writerow([site, device, channel, rfc3339(t_ms / 1000.0), repr(value)])
        else:
            for site, device, channel, t_ms, value in journal.export(args.site, args.since, args.until, drill=args.drill):
                out.write(json.dumps({"site": site, "device": device, "channel": channel, "t": rfc3339(t_ms / 1000.0), "value": value}) + "\n")
    except BrokenPipeError:
        pass
    finally:
        journal.close()
    return EXIT_OK


# -- run ---------------------------------------------------------------------------------------


def _announce_configuration(loaded: Any, config: str | None, allow_example: bool) -> bool:
    """Log which files the daemon runs on (a daemon on the wrong file looks healthy otherwise);
    False, with the reason on stderr, when it would run on the bundled examples unasked."""
    from geowarn.alerts.cap import DEFAULT_SENDER
    from geowarn.config.settings import config_file_in_use

    s = loaded.settings
    cfg = config_file_in_use(config)
    log.info(
        "configuration loaded",
        extra=kv(
            settings=str(cfg) if cfg else "none (defaults and GEOWARN_* environment)",
            sites=loaded.registry.source, n_sites=len(loaded.registry.sites),
            n_devices=sum(len(site.devices) for site in loaded.registry.sites.values()),
            roster=loaded.roster.source, n_units=len(loaded.roster.units), data_dir=s.data_dir,
        ),
    )
    examples = [what for what, given in (("site registry", s.sites), ("roster", s.roster)) if given is None]
    if examples and not (allow_example or s.allow_example):
        print(
            f"error: no {' and no '.join(examples)} configured, so geowarn run would use the bundled examples "
            "(example sites and example phone numbers). Set sites = \"...\" and roster = \"...\" in the settings file "
            f"({cfg or 'none found: --config, GEOWARN_CONFIG, ./geowarn.toml or /etc/geowarn/geowarn.toml'}) or GEOWARN_SITES / "
            "GEOWARN_ROSTER; or pass --allow-example (GEOWARN_ALLOW_EXAMPLE=1) to try GeoWarn on the examples.",
            file=sys.stderr,
        )
        return False
    if examples:
        log.warning("running on the bundled example " + " and ".join(examples) + " (--allow-example): not for real use", extra=kv(files=", ".join(examples)))
    if s.cap_sender == DEFAULT_SENDER:
        log.warning("CAP messages go out with the placeholder sender; set cap_sender (GEOWARN_CAP_SENDER) to this deployment's own",
                    extra=kv(cap_sender=s.cap_sender))
    return True


def cmd_run(args: argparse.Namespace) -> int:
    from geowarn.config.settings import load_all
    from geowarn.service.daemon import build_app

    _setup_logging(args.verbose)
    # Everything the daemon and its workers (spawned: they inherit it) write is theirs alone:
    # the outbox holds duty officers' phones and e-mails, notify/*.jsonl, the audit.
    os.umask(0o077)
    # Signals first: a SIGTERM while the configuration loads or the stores open stops the start
    # cleanly instead of killing it half-way (or printing a traceback).
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        log.info("signal received, stopping", extra=kv(signal=signum))
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        loaded = load_all(args.config)
        for w in loaded.warnings:
            log.warning("configuration warning", extra=kv(warning=w))
        if not _announce_configuration(loaded, args.config, args.allow_example):
            return EXIT_CONFIG
        from geowarn.service.worker import DataDirBusy, claim_data_dir

        data_dir = Path(loaded.settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            _held = claim_data_dir(data_dir)  # noqa: F841 (held for the process's life)
        except DataDirBusy as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAIL
        app = build_app(loaded)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_CONFIG
    if stop.is_set():
        log.info("stopped while starting (a signal came before the daemon ran)")
        return EXIT_OK
    from geowarn.service.brokerprobe import warn_in_background

    warn_in_background(loaded.settings)  # a WARNING when the broker is open; the start never waits for it
    try:
        app.run(stop)
    except RuntimeError as exc:  # a worker that could not start (service/worker.py says why)
        if stop.is_set():
            log.info("stopped while starting", extra=kv(detail=exc))
            return EXIT_OK
        log.error("the daemon could not start", extra=kv(error=exc))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    import time

    from geowarn.config.registry import load_registry
    from geowarn.ingest.feeds import FeedError, FeedReject, FeedStatus, read_feed, registry_from_rows
    from geowarn.service.replay import read_ack_script, replay_rows

    rejects: list[FeedReject] = []
    # Devices' statuses in the feed: a sensor its device reports faulty raises nothing, as live.
    statuses: list[FeedStatus] = []
    try:
        # First the registry, when given: a feed of the national convention is decoded with it.
        # A feed `geowarn simulate --out` wrote has its registry beside it (FEED.sites.toml),
        # which `geowarn plot` already used: replay uses it too.
        from geowarn.simulators.publish import sites_path

        sites = args.sites
        if sites is None and sites_path(args.feed).is_file():
            sites = str(sites_path(args.feed))
            print(f"site registry: {sites} (beside the feed; --sites FILE for another)")
        given = load_registry(sites) if sites else None
        rows = list(read_feed(args.feed, rejects, registry=given, statuses=statuses))
        registry = given if given is not None else registry_from_rows(rows, str(args.feed))
        acks = read_ack_script(args.acks) if args.acks else None
    except FeedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_CONFIG
    out = Path(args.out)
    t0 = time.perf_counter()
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        print("note: no plots (matplotlib is the optional extra: pip install 'geowarn[plots]')", file=sys.stderr)
    summary = replay_rows(rows, registry, out, drill=args.drill, rejects=rejects, acks=acks, statuses=statuses)
    took = time.perf_counter() - t0
    notes = out / "notifications.jsonl"
    n_notes = sum(1 for _ in open(notes, encoding="utf-8")) if notes.exists() else 0
    n_cap = len(list((out / "cap").glob("*.xml"))) if (out / "cap").exists() else 0
    print(f"replayed {summary.readings} readings ({summary.rejected} rejected){f' and {summary.statuses} device statuses' if summary.statuses else ''} in {took:.2f} s; "
          f"{len(summary.events)} alert events -> {out / 'alerts.jsonl'}; {n_notes} notifications, {n_cap} CAP messages")
    for site in registry.sites:
        print(f"  {site}: highest level {summary.highest.get(site, 0)}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from geowarn.service.demo import run_demo

    return run_demo(duration_s=args.duration, data_dir=args.data_dir, verbose=args.verbose, full=args.full)


# -- parser ------------------------------------------------------------------------------------


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("geowarn")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geowarn", description="Geohazard early-warning service")
    p.add_argument("--version", action="version", version=f"geowarn {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="embedded broker + SQLite + a simulated fleet with one slope failing")
    d.add_argument("--duration", type=float, default=60.0, help="wall-clock seconds for the simulated days (default 60)")
    d.add_argument("--data-dir", default=None, help="keep the journal and alerts here (default: a temporary folder, removed at the end); "
                   "a directory an earlier demo used is cleared first")
    d.add_argument("--full", action="store_true", help="simulate all 14 days instead of stopping once the failing site is red")
    d.add_argument("-v", "--verbose", action="store_true")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="the ingest daemon")
    r.add_argument("--config", default=None, help="settings TOML (default: GEOWARN_CONFIG, ./geowarn.toml, /etc/geowarn/geowarn.toml; "
                   "environment GEOWARN_* overrides it)")
    r.add_argument("--allow-example", action="store_true", help="run on the bundled example registry/roster when none is configured (a trial)")
    r.add_argument("-v", "--verbose", action="store_true")
    r.set_defaults(func=cmd_run)

    rp = sub.add_parser("replay", help="detectors, fusion and alerts over a recorded feed, in event time")
    rp.add_argument("feed", help="CSV (site,device,channel,t,value), or JSONL of native payloads with their topic or of national-convention "
                    "messages as received ($dp; needs --sites)")
    rp.add_argument("--out", required=True, help="output folder: alerts.jsonl, rejects.jsonl")
    rp.add_argument("--sites", default=None, help="site registry; default: FEED.sites.toml when present (what `geowarn simulate --out` writes), "
                    "else built from the feed (kinds from channel names)")
    rp.add_argument("--drill", action="store_true", help="mark everything as an exercise")
    rp.add_argument("--acks", default=None, help='ack script, JSONL: {"t": …, "site": "BSH" (or "id": warning id), "by": "NAME", "note": "…"} a line; outcomes in DIR/acks.jsonl')
    rp.set_defaults(func=cmd_replay)

    c = sub.add_parser("check-config", help="validate settings, sites and roster")
    c.add_argument("file", nargs="?", default=None, help="a settings, site-registry or roster TOML file")
    c.add_argument("--json", action="store_true", help="print the resolved registry and roster as JSON")
    c.set_defaults(func=cmd_check_config)

    e = sub.add_parser("export", help="readings from the store")
    e.add_argument("--site", default=None)
    e.add_argument("--since", type=_time_arg, default=None, help="epoch seconds or RFC 3339 (inclusive)")
    e.add_argument("--until", type=_time_arg, default=None, help="epoch seconds or RFC 3339 (exclusive)")
    e.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    e.add_argument("--count", action="store_true", help="print only the number of readings")
    e.add_argument("--drill", action="store_true", help="export the readings of drills instead of real ones")
    e.add_argument("--config", default=None)
    e.add_argument("--data-dir", default=None, help="overrides GEOWARN_DATA_DIR")
    e.set_defaults(func=cmd_export)

    from geowarn.service.requests import add_request_parsers
    from geowarn.simulators.cli import add_plot_parser, add_simulate_parser

    add_request_parsers(sub)
    from geowarn.service.tokens_cli import add_token_parsers
    add_token_parsers(sub)
    from geowarn.service.brokerconf import add_broker_config_parser
    add_broker_config_parser(sub)
    from geowarn.service.backup import add_backup_parsers
    add_backup_parsers(sub)
    from geowarn.service.rain_calibrate import add_rain_calibrate_parser
    add_rain_calibrate_parser(sub)

    add_simulate_parser(sub)
    add_plot_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
