"""The `faults` scenario through the live daemon: every injected fault is handled as DESIGN says.

A 40-hour run (plus up to 10 minutes, to place the readings) of the bundled `faults` scenario (seed 13, every fault kind; 40 h is the
shortest that still holds the battery death at 36 h and the no-data after it) is published
live, as fast as it goes, into a real Mosquitto consumed by a real `geowarn run`. Its event
time ends before the wall clock, as a real backlog would. Then, with expectations worked out
from the recorded feed and its truth file only (never from the daemon's output):

- malformed payloads and impersonation → dead letters `not_json` / `device_mismatch` (table
  and `geowarn/deadletter`); clock skew beyond the daemon's 300 s future limit → `bad_time`;
- duplicates stored once, out-of-order messages stored: the journal is exactly the set of good
  readings (nothing lost, nothing twice), read with `geowarn export`;
- stuck values, spikes and late (out-of-order) readings → quality flags: the detection
  worker's saved state (``geowarn.service.detection.saved_state``) counts them per flag, and the
  counts equal the guards' batch reference (``tests/oracles/quality.py batch_quality_flags``) run
  over each channel as the journal orders it; no site level moves;
- gaps and the battery death → no-data. Live, all 40 h arrive within seconds, and silence is
  judged by arrival (a device draining a backlog is not silent), so no-data would come only
  half an hour of wall time later: it is checked by replaying the same feed with
  ``geowarn.service.replay.replay_rows``, where silence is judged in event time.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geowarn.config.registry import Registry, load_registry
from geowarn.config.settings import example_path
from daemonproc import REPO, Daemon, Recorder
from services import Mosquitto
from geowarn.detectors.quality import SUSPECT_FLAGS, QualityGuard
from oracles.quality import batch_quality_flags
from geowarn.core.timefmt import parse_time
from geowarn.ingest.feeds import FeedReject, read_feed
from geowarn.service.replay import replay_rows
from geowarn.simulators.engine import Simulation
from geowarn.simulators.publish import FeedWriter, LiveRun, write_truth
from geowarn.simulators.scenario import load_scenario

pytestmark = pytest.mark.slow

DURATION_S = 40 * 3600.0
#: The daemon's default limit on readings from the future (settings.max_future_skew_s).
MAX_FUTURE_S = 300.0
#: DESIGN §6 / detectors.nodata: a device is silent after three expected intervals.
NODATA_FACTOR = 3.0
#: Wall-clock seconds the publication and the daemon's logging may take: no reading's time
#: may fall in the window where its fate would depend on exactly when it arrived.
PUBLISH_ALLOWANCE_S = 60.0

Key = tuple[str, str, str, int, float]  # site, device, channel, t_ms, value


def _frame_clear_of_the_future_limit(sc: Any, registry: Registry) -> tuple[float, float]:
    """An event-time frame (start, duration) ending at the wall clock, chosen so that no
    reading lies within the band where its fate (stored, or dead-lettered as from the future)
    would depend on the exact arrival time, and some (skewed) readings lie beyond it.

    Reading times are the start plus offsets that depend on neither the start nor the
    duration (device phases come from the seed), so one dry run places the readings of the
    live one; only the duration (40 h plus up to one reporting interval) is chosen."""
    dry = Simulation(sc, registry, t0=0.0, duration_s=DURATION_S + 600.0)
    sent, offsets = np.array(
        [(m.t, float(t)) for m in dry.emit_until(math.inf) + dry.flush() if m.kind == "data" and not m.malformed for _, t, _ in m.rows]
    ).T
    now = math.floor(time.time())
    for extra in range(0, 600, 20):
        duration = DURATION_S + extra
        times = now - duration + offsets[sent <= duration]
        clear = not np.any((times > now + MAX_FUTURE_S - 10.0) & (times <= now + MAX_FUTURE_S + PUBLISH_ALLOWANCE_S))
        if clear and np.any(times > now + MAX_FUTURE_S + PUBLISH_ALLOWANCE_S):
            return now - duration, duration
    raise AssertionError("no duration puts the readings clear of the future limit")  # skewed readings are 600 s apart: unreachable


def _feed_lines(feed: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in feed.read_text(encoding="utf-8").splitlines()]


def _expectations(lines: list[dict[str, Any]], w_start: float, w_end: float) -> tuple[list[tuple[str, str]], list[Key], dict[str, list[tuple[float, float]]]]:
    """From the feed alone: the dead letters (reason, topic), the journal's readings in
    journal order (first copy of each series + time), and each channel's readings in that order."""
    dead: list[tuple[str, str]] = []
    stored: dict[tuple[str, str, str, int], float] = {}
    for x in lines:
        topic, payload = x["topic"], x["payload"]
        _, site, device, kind = topic.split("/")
        if isinstance(payload, str):
            dead.append(("not_json", topic))
            continue
        if kind != "data":
            continue
        if payload["device"] != device:
            dead.append(("device_mismatch", topic))
            continue
        skewed = False
        for r in payload["readings"]:
            t = float(r["t"])
            # The precondition of a deterministic test: arrival lies in [w_start, w_end].
            assert not w_start + MAX_FUTURE_S < t <= w_end + MAX_FUTURE_S, f"reading at {t} is in the ambiguous band"
            if t > w_end + MAX_FUTURE_S:
                skewed = True
                continue
            stored.setdefault((site, device, r["ch"], int(round(t * 1000))), float(r["v"]))
        if skewed:  # one dead letter per message, however many of its readings are refused
            dead.append(("bad_time", topic))
    keys = [(s, d, c, t_ms, v) for (s, d, c, t_ms), v in stored.items()]
    by_channel: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for s, d, c, t_ms, v in keys:
        by_channel[f"{s}|{d}/{c}"].append((t_ms / 1000.0, v))
    return dead, keys, by_channel


def _fault(truth: dict[str, Any], kind: str, device: str) -> dict[str, Any]:
    return next(f for f in truth["faults"] if f["kind"] == kind and f["device"] == device)


def test_every_injected_fault_is_handled_by_the_live_daemon(tmp_path: Path, mosquitto: Mosquitto) -> None:
    sc = load_scenario("faults")
    registry = sc.registry()
    feed = tmp_path / "faults.jsonl"
    t0, duration = _frame_clear_of_the_future_limit(sc, registry)
    sim = Simulation(sc, registry, t0=t0, duration_s=duration)

    daemon = Daemon(tmp_path / "data", mosquitto.url)
    daemon.start()
    dead_rec = Recorder(mosquitto.url, ["geowarn/deadletter"])
    try:
        record = FeedWriter(feed)
        w_start = time.time()
        try:
            stats = LiveRun(sim, mosquitto.url, speed=math.inf, record=record, progress=False, client_id="faults-live").run()
        finally:
            record.close()
        truth = json.loads(write_truth(sim, feed).read_text())
        lines = _feed_lines(feed)
        assert stats.messages == len(lines)

        # Worked out before looking at the daemon; the band check needs the end of arrivals,
        # bounded by now plus the allowance (asserted below once everything is in).
        dead, keys, by_channel = _expectations(lines, w_start, w_start + PUBLISH_ALLOWANCE_S)
        reasons = Counter(r for r, _ in dead)
        assert reasons["not_json"] >= len(_fault(truth, "malformed", "BZM-RG1")["seqs"]) > 0
        assert reasons["device_mismatch"] >= len(_fault(truth, "impersonation", "XK-RG1")["seqs"]) > 0
        assert reasons["bad_time"] > 0, "the scenario's end should put some skewed readings in the future"

        daemon.wait_until(
            lambda: daemon.count() >= len(keys) and daemon.count("deadletters") >= len(dead), timeout=120, message=f"{len(keys)} readings and {len(dead)} dead letters"
        )
        assert time.time() <= w_start + PUBLISH_ALLOWANCE_S, "publishing and storing took longer than the allowance"
        got_dead = dead_rec.take(len(dead), timeout=30)
        daemon.terminate()  # the detection worker judges everything stored and snapshots its state

        # -- dead letters: the right reason for every rejected message or reading ----------
        table = daemon.query("SELECT reason, topic FROM deadletters")
        assert Counter(table) == Counter(dead)
        on_mqtt = [json.loads(p) for _, p, _ in got_dead]
        assert Counter((d["reason"], d["topic"]) for d in on_mqtt) == Counter(dead)
        with pytest.raises(TimeoutError):
            dead_rec.take(1, timeout=0.5)  # and nothing more
        skewed = _fault(truth, "clock_skew", "BZM-EXT1")
        assert {topic for r, topic in dead if r == "bad_time"} == {f"geowarn/{skewed['site']}/{skewed['device']}/data"}

        # -- nothing lost, nothing twice: the journal is exactly the good readings ---------
        out = subprocess.run(
            [sys.executable, "-m", "geowarn.service.cli", "export", "--format", "jsonl"], cwd=REPO, env=daemon.env, capture_output=True, text=True, check=True
        ).stdout
        exported = [json.loads(x) for x in out.splitlines()]
        got = Counter((e["site"], e["device"], e["channel"], int(round(parse_time(e["t"]) * 1000)), e["value"]) for e in exported)
        assert got == Counter(keys)
        # Duplicated messages (named and fleet-wide) and late ones are among them, once each.
        dup = _fault(truth, "duplicates", "BSH-EXT1")
        late = _fault(truth, "out_of_order", "BZM-GNSS1")
        for fault in (dup, late):
            seqs = set(fault["seqs"])
            times = {
                int(round(float(r["t"]) * 1000))
                for x in lines
                if x["topic"] == f"geowarn/{fault['site']}/{fault['device']}/data" and isinstance(x["payload"], dict) and x["payload"]["seq"] in seqs
                for r in x["payload"]["readings"]
            }
            assert times and all(got[k] == 1 for k in got if k[1] == fault["device"] and k[3] in times)
            assert len({k[3] for k in got if k[1] == fault["device"]} & times) == len(times)

        # -- quality flags: the guards' batch reference over each channel in journal order --
        from geowarn.ingest.journal import JournalReader
        from geowarn.service.detection import saved_state

        snap = saved_state(JournalReader(daemon.data_dir / "journal.sqlite"))["state"]
        expected_flags: Counter[str] = Counter()
        flags_of: dict[str, list[str | None]] = {}
        for key, series in by_channel.items():
            site, _, dev_ch = key.partition("|")
            device, _, channel = dev_ch.partition("/")
            info = registry.channel(site, device, channel)
            assert info is not None
            guard = QualityGuard.for_kind(info.kind, interval_s=info.interval_s, low=info.low, high=info.high)
            t = np.array([p[0] for p in series])
            v = np.array([p[1] for p in series])
            flags_of[key] = batch_quality_flags(t, v, guard)
            expected_flags.update(f for f in flags_of[key] if f in SUSPECT_FLAGS)
        assert snap["quality"] == dict(expected_flags)
        suspect = {f"{s.split('|')[0]}|{k}": ch["suspect"] for s, sd in snap["sites"].items() for k, ch in sd["channels"].items()}
        assert suspect == {k: sum(f in SUSPECT_FLAGS for f in fl) for k, fl in flags_of.items()}

        # ... and those flags are the injected faults: the stuck window, the spikes, the late readings.
        stuck = _fault(truth, "stuck", "XK-TLT1")
        lo, hi = parse_time(stuck["start"]), parse_time(stuck["end"])
        ch = by_channel[f"XK|XK-TLT1/{stuck['channel']}"]
        flagged = [tt for (tt, _), f in zip(ch, flags_of[f"XK|XK-TLT1/{stuck['channel']}"]) if f == "stuck"]
        assert flagged and all(lo <= tt < hi for tt in flagged)
        spikes = _fault(truth, "spikes", "BSH-GNSS1")
        ch = by_channel[f"BSH|BSH-GNSS1/{spikes['channel']}"]
        flagged = [tt for (tt, _), f in zip(ch, flags_of[f"BSH|BSH-GNSS1/{spikes['channel']}"]) if f == "spike"]
        assert sorted(flagged) == sorted(spikes["times"])
        late_times = {tt for k, fl in flags_of.items() if k.startswith("BZM|BZM-GNSS1/") for (tt, _), f in zip(by_channel[k], fl) if f == "out_of_order"}
        assert late_times and late_times <= {
            float(r["t"]) for x in lines if x["topic"] == "geowarn/BZM/BZM-GNSS1/data" and isinstance(x["payload"], dict) and x["payload"]["seq"] in set(late["seqs"]) for r in x["payload"]["readings"]
        }
        # Other spike flags are the device models' own outliers (GNSS multipath) and the dying
        # battery's fall; the stuck run is flagged from its 24th hour on (tilt's stuck_s), which
        # the scenario's 24-hour window reaches at its last reading.
        assert snap["quality"]["stuck"] >= 1 and snap["quality"]["out_of_order"] >= 1

        # Suspect readings never escalate: every site stays at level 0, and the only events live
        # are the clock health of the device whose readings came late (no-data would come 30
        # min of wall time after the last arrival).
        levels = dict(daemon.query("SELECT site, level FROM site_level"))
        assert levels == {site: 0 for site in registry.sites}
        alerts = daemon.data_dir / "alerts.jsonl"
        events = [json.loads(x) for x in alerts.read_text().splitlines()] if alerts.exists() else []
        assert events and {(e["kind"], e["evidence"]["device"], e["level"]) for e in events} == {("clock", "BZM-GNSS1", 0)}, events
        assert all(e["evidence"]["out_of_order"] >= 3 for e in events)
    finally:
        dead_rec.close()
        daemon.close()

    # -- no-data: the same feed replayed in event time ------------------------------------
    _check_nodata_in_replay(feed, truth, tmp_path / "replay")


def _check_nodata_in_replay(feed: Path, truth: dict[str, Any], out_dir: Path) -> None:
    registry = load_registry(example_path("sites.example.toml"))
    rejects: list[FeedReject] = []
    rows = list(read_feed(feed, rejects))
    summary = replay_rows(rows, registry, out_dir, rejects=rejects, plots=False)

    # Expected from the rows: a device is silent once NODATA_FACTOR × its fastest interval
    # passes without a reading; replay's timers fire only up to the last reading of the feed.
    t_last = max(r.t for r in rows)
    times: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        times[r.device].append(r.t)
    expected: list[tuple[str, str, float]] = []
    for device, ts in times.items():
        limit = NODATA_FACTOR * min(c.interval_s for c in registry.channels[(registry.device_site[device], device)].values())
        u = np.unique(ts)
        for a, b in zip(u[:-1], u[1:]):
            if b - a >= limit:
                expected += [("nodata", device, float(a + limit)), ("nodata_end", device, float(b))]
        if u[-1] + limit <= t_last:
            expected.append(("nodata", device, float(u[-1] + limit)))
    got = [(e["kind"], e["evidence"]["device"], parse_time(e["t"])) for e in summary.events if e["kind"] in ("nodata", "nodata_end")]
    assert sorted(got) == sorted(expected)

    # The truth's gap and battery death are among them: silent from the last reading before
    # the dropout (back at its end), and from the last reading before the battery died.
    gap = _fault(truth, "dropout", "BSH-GNSS2")
    g0, g1 = parse_time(gap["start"]), parse_time(gap["end"])
    before = max(t for t in times[gap["device"]] if t < g0)
    after = min(t for t in times[gap["device"]] if t >= g1)
    assert ("nodata", gap["device"], before + 1800.0) in got and ("nodata_end", gap["device"], after) in got
    death = _fault(truth, "battery_death", "BSH-EXT1")
    last = max(times[death["device"]])
    assert last < parse_time(death["dead_at"]) and ("nodata", death["device"], last + 1800.0) in got
    assert not [e for e in summary.events if e["kind"] == "nodata_end" and e["evidence"]["device"] == death["device"] and parse_time(e["t"]) > last]
    # No data never lowers (or raises) a level: every event leaves the site's level where it was.
    assert all(e["level"] == e["previous_level"] == 0 for e in summary.events)
    # The impersonating lines are rejected by the feed reader too, as the daemon rejects them.
    imp = _fault(truth, "impersonation", "XK-RG1")
    assert sum(r.reason.startswith("device_mismatch") for r in rejects) >= len(imp["seqs"])
