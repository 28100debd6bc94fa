"""Detection restarted at random against one never stopped: same state, same announcements.

A fuzzed companion of tests/test_state_incremental.py (issue 17 item 2; its first version came
from a fresh-eyes review that broke the per-site saves with it). Random batches over the
example registry with readings stamped ahead of their arrival (held), drill readings, spikes,
sensor-state statuses among the readings and silences; the detection under test steps with
random save budgets and crashes (thrown away, a new one built on the same journal) between
steps and at the end of rounds. The reference judges the same journal on its own clock and
never stops. At the end both hold the same fusion state and announced the same changes, none
twice and none missing.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest

import geowarn.service.detection as detection
from geowarn.config.settings import example_path, load_all
from geowarn.core.clock import ManualClock
from geowarn.ingest.journal import Journal

T0 = 1_700_000_000_000


def _norm(det) -> dict:
    snap = det.fusion.snapshot()
    snap["nodata"].pop("start")  # each detection starts its silence timers when it is built
    snap["held"] = sorted(snap["held"], key=lambda h: (h[4], h[0], h[2], h[3], h[5], h[1]))
    snap["faults"] = sorted(snap["faults"])
    return snap


def _diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += [f"{path}/{k}: missing on one side"] if k not in a or k not in b else _diff(a[k], b[k], f"{path}/{k}")
        return out
    return [] if a == b else [f"{path}: {json.dumps(a)[:160]} != {json.dumps(b)[:160]}"]


def _run(tmp: Path, seed: int, *, rounds: int = 25, crash: float = 0.4, crash_mid: float = 0.1, ahead: float = 0.1,
         status: float = 0.3, drill: float = 0.1) -> tuple[list[str], Counter, Counter, int]:
    rng = random.Random(seed)
    loaded = load_all(None, sites_path=example_path("sites.example.toml"), roster_path=example_path("roster.example.toml"), find_file=False)
    loaded.settings = loaded.settings.model_copy(update={"data_dir": tmp / "data"})  # its alerts.jsonl, not the cwd's
    # The reference judges a journal of its own with the same rows: a detection writes to its
    # journal (the positions it announced through, site levels), and the one under test must
    # restart from what it wrote itself, never from what the reference did.
    j, jr = Journal(tmp / "journal.sqlite"), Journal(tmp / "reference.sqlite")
    clk_ref, clk = ManualClock(T0 / 1000), ManualClock(T0 / 1000)
    ids = {(c.site, c.device, c.channel): i for c, i in j.series_ids(loaded.registry).items()}
    keys = sorted(ids)
    devices = sorted({(s, d) for s, d, _ in keys})
    sites = sorted({s for s, _, _ in keys})
    value = {k: 0.0 for k in keys}
    said: dict[str, list] = {"ref": [], "test": []}

    def detection_of(clock, who: str):
        def log_change(change, event):
            said[who].append((change.site, round(change.t, 3), change.level, change.previous, change.kind, change.exercise, change.reason[:60]))

        # Hooked before it is built: what a start announces counts too.
        plain = detection.Detection.__dict__["_log_change"]  # the staticmethod itself, not its function
        detection.Detection._log_change = staticmethod(log_change)  # type: ignore[method-assign]
        try:
            return detection.Detection(loaded, jr if who == "ref" else j, lambda *a, **k: None, clock)
        finally:
            detection.Detection._log_change = plain  # type: ignore[method-assign]

    ref = detection_of(clk_ref, "ref")
    det = detection_of(clk, "test")
    det.save_snapshot(None)  # a daemon's first checkpoint
    step, crashes = 0, 0
    for _ in range(rounds):
        fed = set(rng.sample(sites, rng.randint(1, len(sites)))) if rng.random() < 0.7 else set(sites)
        readings, statuses = [], []
        for _ in range(rng.randint(1, 8)):
            step += 1
            t = T0 + step * 600_000
            for k in keys:
                if k[0] not in fed or rng.random() < 0.1:
                    continue
                v = value[k] + (0.02 * math.exp(step / 40.0) if k[0] == "BSH" and k[2] == "disp" else rng.gauss(0.0, 0.5))
                value[k] = v
                is_drill = 1 if rng.random() < drill else 0
                stamped = t + rng.randint(10, 1500) * 1000 if rng.random() < ahead else t  # ahead of arrival: held
                readings.append((ids[k], stamped, v + (80.0 if rng.random() < 0.02 else 0.0) + 50 * is_drill, is_drill, t + 5_000))
            if rng.random() < status:
                s, dv = rng.choice(devices)
                chans = [c for (a, b, c) in keys if a == s and b == dv]
                doc = {"sensor_state": {rng.choice(chans): rng.choice([-2, -1, 0, 0])}}
                statuses.append((s, dv, t, t + 5_000, json.dumps(doc), rng.randint(0, len(readings))))
        if rng.random() < 0.15:
            step += rng.randint(3, 12)  # a silence
        now = (T0 + step * 600_000 + 5_000) / 1000
        j.append(readings, statuses=statuses)
        jr.append(readings, statuses=statuses)
        clk_ref.set(max(clk_ref.now(), now))
        clk.set(max(clk.now(), now))
        while ref.step():
            pass
        ref.step()
        while True:
            if rng.random() < 0.3:
                det.save_after_s = rng.choice([0.0, 3600.0])
            n = det.step()
            if rng.random() < 0.3:
                det.save_sites(rng.choice([0.0, 0.0, None]))
            if rng.random() < 0.05:
                det.save_snapshot(rng.choice([0.0, None]))
            if rng.random() < crash_mid:
                crashes += 1
                det = detection_of(clk, "test")
            if n == 0:
                break
        if rng.random() < crash:
            crashes += 1
            det = detection_of(clk, "test")
            while det.step():
                pass
            det.step()
    for d in (det, ref):
        while d.step():
            pass
        d.step()
    problems = _diff(_norm(det), _norm(ref))
    test, reference = Counter(said["test"]), Counter(said["ref"])
    j.close()
    jr.close()
    return problems, test - reference, reference - test, crashes


@pytest.mark.slow
@pytest.mark.parametrize("seed", [7, 119, 312, 335, 421, 522])
def test_a_detection_crashed_at_random_ends_as_the_one_never_stopped(tmp_path, seed):
    problems, twice, missing, crashes = _run(tmp_path, seed)
    assert crashes > 0, "no crash: the seed tests nothing"
    assert not problems, problems[:5]
    assert not twice, f"announced twice: {list(twice)[:3]}"
    assert not missing, f"never announced after a restart: {list(missing)[:3]}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_detection_crashed_while_more_than_a_batch_behind_ends_as_the_one_never_stopped(tmp_path, seed, monkeypatch):
    # Batches of 9 readings: every round is several batches, as when detection is behind a
    # burst, and the crashes fall between them. Fusion's timers (silence, held readings) run
    # by the clock only once every stored reading has been judged: while behind, which
    # readings a timer had seen would depend on where batches end, which a restart changes.
    monkeypatch.setattr(detection, "BATCH", 9)
    problems, twice, missing, crashes = _run(tmp_path, seed, crash=0.0, crash_mid=0.3)
    assert crashes > 5
    assert not problems, problems[:5]
    assert not twice, f"announced twice: {list(twice)[:3]}"
    assert not missing, f"never announced after a restart: {list(missing)[:3]}"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "known defect, left: a detection that crashes at the journal's head before its timers ran, and "
    "restarts after the clock has moved on and more readings have come, runs those timers after the "
    "new readings, where the one never stopped ran them before: clock-health and out-of-order counts "
    "differ (seen with 6 of 40 seeds). The fix: fusion's timers at the readings' arrival times."))
@pytest.mark.parametrize("seed", [9, 22])
def test_a_detection_crashed_at_the_head_before_its_timers_ran_ends_as_the_one_never_stopped(tmp_path, seed, monkeypatch):
    monkeypatch.setattr(detection, "BATCH", 9)
    problems, twice, missing, crashes = _run(tmp_path, seed, crash=0.0, crash_mid=0.3)
    assert crashes > 5
    assert not problems and not twice and not missing, (problems[:3], list(twice)[:2], list(missing)[:2])
