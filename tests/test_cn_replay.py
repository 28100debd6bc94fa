"""Replay of a recorded feed of the national geohazard IoT convention (ingest/feeds.py): lines
``{"topic": "$dp", "t": <received>, "client_id": …, "payload": <body> | "<base64 of the bytes>"}``
decoded by the daemon's own codec with the registry, so replay and live get the same readings.

The bundled sample ``simulators/feeds/cn_failure_short.jsonl`` (our simulator's cn_failure
slope compressed into two days, every other data message framed, Beijing clocks written with
Z) is decoded here a second way, by hand from the documented layout (the 3-byte header: type 2
and the body's big-endian length; the device code key; channel → ISO time → fields; the
registry's ``source`` and ``clock_offset_s``), and compared with what ``read_feed`` gives; its
red is compared with the red of the same simulation's native readings (the values before their
conversion to the convention), and with the failure time in the sample's truth file.
"""

from __future__ import annotations

import base64
import calendar
import json
import threading
import time
from pathlib import Path

import pytest
from geowarn.config.registry import load_registry
from geowarn.core.timefmt import parse_time
from geowarn.ingest.feeds import FeedError, FeedReject, FeedRow, read_feed
from geowarn.service.replay import replay_rows
from geowarn.simulators.engine import Simulation
from geowarn.simulators.publish import write_feed
from geowarn.simulators.scenario import load_scenario

REPO = Path(__file__).resolve().parents[1]
FEEDS = REPO / "simulators" / "feeds"
SAMPLE = FEEDS / "cn_failure_short.jsonl"
SCENARIO = FEEDS / "cn_failure_short.toml"
SITES = REPO / "simulators" / "scenarios" / "cn_sites.toml"
REGENERATE = f"geowarn simulate --scenario {SCENARIO.relative_to(REPO)} --out {SAMPLE.relative_to(REPO)}"


def _by_hand(registry) -> list[tuple[str, str, str, float, float]]:
    """The sample's readings, decoded from the documented layout without GeoWarn's codec."""
    sources = {}
    for site in registry.sites.values():
        for dev in site.devices:
            for ch in dev.channels:
                name, _, field = (ch.source or "").partition(".")
                sources[(dev.code, name, field or "value")] = (site.site, dev.device, ch.channel, dev.clock_offset_s or 0.0)
    out = []
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        raw = doc["payload"]
        if isinstance(raw, str):
            data = base64.b64decode(raw)
            assert data[0] == 2 and int.from_bytes(data[1:3], "big") == len(data) - 3  # type 2, big-endian length
            raw = json.loads(data[3:])
        (code, channels), = raw.items()
        assert doc["client_id"] == code
        for ch, times in channels.items():
            if ch.startswith("S1_ZT"):
                continue
            for when, fields in times.items():
                # "2025-11-29T08:01:17.000Z" written by a Beijing clock: UTC is 8 h (28800 s) earlier.
                y, mo, d, h, mi, s = int(when[0:4]), int(when[5:7]), int(when[8:10]), int(when[11:13]), int(when[14:16]), int(when[17:19])
                utc = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) + int(when[20:23]) / 1000.0
                for field, v in fields.items():
                    site, device, channel, offset = sources[(code, ch, field)]
                    out.append((site, device, channel, utc - offset, float(v)))
    return out


def _native_rows(registry, tmp: Path) -> list[FeedRow]:
    """The same simulation's readings before their conversion to the convention: its CSV feed
    (``geowarn simulate --out x.csv`` writes the native rows)."""
    sc = load_scenario(str(SCENARIO))
    sim = Simulation(sc, registry, t0=parse_time(sc.start), duration_s=sc.duration)
    write_feed(sim, tmp / "native.csv")
    return list(read_feed(tmp / "native.csv"))


def _key(r: FeedRow) -> tuple[str, str, str, int, float]:
    return (r.site, r.device, r.channel, round(r.t * 1000), r.value)


def test_the_recorded_sample_replays_to_its_own_readings_and_to_the_red_of_its_simulation(tmp_path: Path) -> None:
    registry = load_registry(SITES)
    rejects: list[FeedReject] = []
    rows = list(read_feed(SAMPLE, rejects, registry=registry))
    assert rejects == []
    # Every reading the lines hold, framed or not, at its UTC time: as decoded by hand.
    hand = _by_hand(registry)
    assert len(rows) == len(hand) > 900
    assert sorted(_key(r) for r in rows) == sorted((s, d, c, round(t * 1000), v) for s, d, c, t, v in hand)
    framed = sum(1 for line in SAMPLE.read_text(encoding="utf-8").splitlines() if isinstance(json.loads(line)["payload"], str))
    assert framed > 200  # both forms are in the sample
    # ... and they are the simulation's own readings (else the sample is stale: regenerate it).
    native = _native_rows(registry, tmp_path)
    assert sorted(_key(r) for r in rows) == sorted(_key(r) for r in native), f"the sample differs from its simulation; regenerate it: {REGENERATE}"

    # The same red, at the same time, as the simulation's native readings; before the failure.
    got = replay_rows(rows, registry, tmp_path / "cn", plots=False)
    ref = replay_rows(native, registry, tmp_path / "native", plots=False)
    levels = [(e["t"], e["level"]) for e in got.events]
    assert got.highest == {"SP": 4} and levels == [(e["t"], e["level"]) for e in ref.events]
    failure = json.loads((FEEDS / "cn_failure_short.jsonl.truth.json").read_text())["failures_epoch"]["SP"]
    red_t = next(e["t"] for e in got.events if e["level"] == 4)  # "2025-11-30T…Z"
    assert calendar.timegm(time.strptime(red_t[:19], "%Y-%m-%dT%H:%M:%S")) < failure


def test_a_convention_line_is_decoded_or_rejected_as_the_daemon_would(tmp_path: Path) -> None:
    registry = load_registry(SITES)
    t = 1764374400.0  # 2025-11-29T00:00:00Z
    body = {"SK11E80D1307426AZ": {"L1_LF_1": {"2025-11-29T08:00:00.000Z": {"value": 1.25}}}}
    raw = json.dumps(body).encode()
    framed = bytes([2]) + len(raw).to_bytes(2, "big") + raw
    lines = [
        {"topic": "$dp", "t": t, "client_id": "SK11E80D1307426AZ", "payload": body},
        {"topic": "$dp", "t": "2025-11-29T00:10:00Z", "payload": base64.b64encode(framed).decode()},   # t as RFC 3339
        {"topic": "$dp", "t": t, "payload": {"NOT-A-DEVICE": {"L1_LF_1": 1.0}}},                          # unknown code
        {"topic": "$dp", "t": t, "payload": "not base64!"},
        {"topic": "$dp", "payload": body},                                                                  # no receive time
        {"topic": "$dp", "t": t, "payload": base64.b64encode(bytes([3, 0, 2]) + b"{}").decode()},           # a type 3 file frame
        # No time layer: the receive time is the reading's time.
        {"topic": "$dp", "t": t + 1200, "payload": {"SK11E80D1307426AZ": {"L1_LF_1": 1.5}}},
        # Native lines still read as before, beside them.
        {"topic": "geowarn/SP/SP-U1/data", "payload": {"v": 1, "device": "SP-U1", "readings": [{"ch": "crack", "t": t + 1800, "v": 1.75}]}},
    ]
    feed = tmp_path / "feed.jsonl"
    feed.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    rejects: list[FeedReject] = []
    rows = list(read_feed(feed, rejects, registry=registry))
    assert [(r.site, r.device, r.channel, r.t, r.value) for r in rows] == [
        ("SP", "SP-U1", "crack", t, 1.25), ("SP", "SP-U1", "crack", t, 1.25), ("SP", "SP-U1", "crack", t + 1200, 1.5),
        ("SP", "SP-U1", "crack", t + 1800, 1.75)]
    assert [(r.line, r.reason.split(":")[0]) for r in rejects] == [(3, "unknown_device"), (4, "bad line"), (5, "bad line"), (6, "cn_file")]
    assert "base64" in rejects[1].reason and "t, when it was received" in rejects[2].reason
    # Without the registry a convention feed cannot be read: said so, with the line.
    with pytest.raises(FeedError, match=r"feed.jsonl:1: .*--sites"):
        list(read_feed(feed, []))


@pytest.mark.slow
def test_live_and_replay_of_the_sample_store_the_same_readings(tmp_path: Path, mosquitto) -> None:
    """The sample published as recorded (``simulate --replay``: the bytes as received, framed
    ones framed) into a real Mosquitto and a real daemon: the journal holds exactly the readings
    replay reads from the file."""
    from daemonproc import Daemon
    from geowarn.simulators.publish import replay_feed

    registry = load_registry(SITES)
    rows = list(read_feed(SAMPLE, [], registry=registry))
    daemon = Daemon(tmp_path / "data", mosquitto.url, extra_env={"GEOWARN_SITES": str(SITES), "GEOWARN_CN_TOPICS": "$dp"})
    daemon.start()
    try:
        th = threading.Thread(target=replay_feed, args=(SAMPLE, mosquitto.url), kwargs={"speed": float("inf"), "progress": False}, daemon=True)
        th.start()
        th.join(120)
        daemon.wait_until(lambda: daemon.count() >= len(rows), timeout=120, message=f"{len(rows)} readings in the journal")
        time.sleep(1.0)
        live = sorted((s, d, c, t, v) for s, d, c, t, v in daemon.readings())
    finally:
        daemon.close()
    assert live == sorted((r.site, r.device, r.channel, round(r.t * 1000), r.value) for r in rows)
