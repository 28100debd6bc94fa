"""Replay applies the devices' statuses as the live daemon does (issue 15 item 4's guard).

A recorded feed holds the devices' status messages beside their readings: the national
convention's ``S1_ZT_1`` with ``sensor_state`` per sensor (-2: CHANNEL_DATA_ERR), and native
``…/status`` lines. ``geowarn replay`` gives each to the judge (``Judge.status``, the call the
detection worker makes for a journal status row) before the readings that follow it in the
feed, so a sensor its device reports faulty raises nothing in replay either.

The feed is made by the simulator's convention device model (simulators/convention.py,
``fault_sensor``): the cn_failure slope of the bundled sample, with heartbeats every hour, the
crack meter's sensor reported faulty (-2) from the start and healthy (0) again from CLEAR on,
while its channel shows the slope's acceleration. The golden levels come from replays that do
not read statuses at all: the same feed with every crack reading its device sent while faulty
left out (a faulty sensor is judged as if it had sent nothing; healthy again, it counts from
its next reading), and the same feed with the statuses ignored (the crack meter raises the
site on its own). The same feed published into a real Mosquitto and a real daemon gives the
same level changes.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from geowarn.config.registry import load_registry, parse_registry
from geowarn.core.timefmt import parse_time, rfc3339
from geowarn.ingest.feeds import FeedReject, FeedStatus, read_feed
from geowarn.service.replay import replay_rows
from geowarn.simulators.convention import SENSOR_OK
from geowarn.simulators.engine import Simulation
from geowarn.simulators.publish import FeedWriter
from geowarn.simulators.scenario import load_scenario

REPO = Path(__file__).resolve().parents[1]
SITES = REPO / "simulators" / "scenarios" / "cn_sites.toml"
SAMPLE_SCENARIO = REPO / "simulators" / "feeds" / "cn_failure_short.toml"
CRACK_CODE, CRACK_SENSOR = "SK11E80D1307426AZ", "L1_LF_1"  # SP-U1's crack meter
#: The crack meter's heartbeats say 0 again from here on.
CLEAR = "2025-11-30T04:00:00Z"
LEVEL_KINDS = ("raise", "upgrade", "downgrade", "lift")


def _make_feed(path: Path) -> Path:
    """The sample's scenario with hourly heartbeats; the crack sensor faulty until CLEAR."""
    text = SAMPLE_SCENARIO.read_text(encoding="utf-8")
    text = text.replace('sites = "../scenarios/cn_sites.toml"', f"sites = {json.dumps(str(SITES))}").replace('status_s = "6h"', 'status_s = "1h"')
    assert str(SITES) in text and '"1h"' in text
    scenario = path.with_suffix(".toml")
    scenario.write_text(text, encoding="utf-8")
    sc = load_scenario(str(scenario))
    sim = Simulation(sc, load_registry(SITES), t0=parse_time(sc.start), duration_s=sc.duration)
    writer = FeedWriter(path)
    wire = sim.convention.on_wire  # as published: every other data message framed

    def put(msgs) -> None:
        writer.write(msgs, [wire(m) for m in msgs])

    try:
        sim.convention.fault_sensor(CRACK_CODE, CRACK_SENSOR)  # -2 from the first heartbeat
        put(sim.emit_until(parse_time(CLEAR)))
        sim.convention.fault_sensor(CRACK_CODE, CRACK_SENSOR, SENSOR_OK)
        put(sim.emit_until(sim.t_end))
        put(sim.flush())
    finally:
        writer.close()
    return path


@pytest.fixture(scope="module")
def feed(tmp_path_factory) -> Path:
    return _make_feed(tmp_path_factory.mktemp("feed") / "cn_fault.jsonl")


def _changes(events: list[dict]) -> list[tuple[str, int]]:
    return [(e["t"], e["level"]) for e in events if e["kind"] in LEVEL_KINDS and not e["exercise"]]


def test_a_sensor_reported_faulty_in_a_recorded_feed_raises_nothing_in_replay_until_healthy(feed: Path, tmp_path: Path) -> None:
    registry = load_registry(SITES)
    rejects: list[FeedReject] = []
    statuses: list[FeedStatus] = []
    rows = list(read_feed(feed, rejects, registry=registry, statuses=statuses))
    assert rejects == []
    # Every heartbeat of both devices is read, with the crack sensor's state as the device sent it.
    heartbeats = sum(1 for line in feed.read_text(encoding="utf-8").splitlines() if "S1_ZT_1" in line or "S1_ZT_1" in _unframed(line))
    assert len(statuses) == heartbeats > 80
    crack = [s for s in statuses if s.device == "SP-U1"]
    assert {s.status["sensor_state"][CRACK_SENSOR] for s in crack if s.t < parse_time(CLEAR)} == {-2}
    assert {s.status["sensor_state"][CRACK_SENSOR] for s in crack if s.t >= parse_time(CLEAR)} == {0}
    fault_from = crack[0].t
    cleared = next(s for s in crack if s.status["sensor_state"][CRACK_SENSOR] == 0)

    got = replay_rows(rows, registry, tmp_path / "statuses", plots=False, statuses=statuses)
    assert got.statuses == len(statuses)
    # Statuses ignored (what replay did before): the crack meter's acceleration raises the site
    # on its own, first of all channels.
    blind = replay_rows(rows, registry, tmp_path / "blind", plots=False)
    assert blind.events[0]["evidence"]["channel"] == "SP-U1/crack"
    assert _changes(got.events) != _changes(blind.events)
    # The golden levels: the crack meter's readings sent while its sensor was reported faulty
    # (every one before the status that cleared it, in the feed's order) left out.
    absent = [r for i, r in enumerate(rows) if not (r.device == "SP-U1" and i < cleared.after)]
    assert len(rows) - len(absent) > 150  # 28 h of 10-min readings
    ref = replay_rows(absent, registry, tmp_path / "absent", plots=False)
    assert _changes(got.events) == _changes(ref.events)
    assert got.highest == ref.highest == {"SP": 4}

    before = [e for e in got.events if parse_time(e["t"]) < cleared.t and e["kind"] in LEVEL_KINDS]
    after = [e for e in got.events if parse_time(e["t"]) >= cleared.t and e["kind"] in LEVEL_KINDS]
    assert before and after
    for e in before:  # raised by the GNSS alone, the crack meter named as faulty
        assert e["evidence"]["channel"].startswith("SP-G1/")
        assert (f"SP-U1/crack: sensor reported faulty (sensor_state -2) since {rfc3339(fault_from)}, "
                "its readings raise no level") in e["reason"]
        assert e["evidence"]["sensor_faults"]["SP-U1/crack"]["sensor_state"] == -2
        assert e["level"] <= 2  # orange needs a second device: the faulty one confirms nothing
    # Healthy again, the crack meter counts: it confirms the GNSS's levels, up to red.
    assert all("sensor reported faulty" not in e["reason"] and "sensor_faults" not in e["evidence"] for e in after)
    assert any("confirmed by 2 devices (SP-G1, SP-U1)" in e["reason"] for e in after)
    assert max(e["level"] for e in after) == 4
    # Red before the slope fails (the scenario's failure_at, 1 d 18 h after its start).
    red_t = parse_time(next(e["t"] for e in got.events if e["level"] == 4))
    assert red_t < parse_time("2025-11-29T00:00:00Z") + 42 * 3600


def _unframed(line: str) -> str:
    raw = json.loads(line)["payload"]
    return base64.b64decode(raw)[3:].decode("utf-8") if isinstance(raw, str) else ""


def test_native_status_lines_are_read_as_the_daemon_reads_them(tmp_path: Path) -> None:
    """A native ``…/status`` line is decoded by the daemon's codec: a convention body on it
    (a device naming its own channel, as ``SiteFusion.sensor_state`` allows) marks the sensor;
    a native heartbeat names no sensors and changes nothing."""
    thr = {"yellow": 1.0, "orange": 2.0, "red": 3.0}
    registry = parse_registry({"sites": [{
        "site": "S", "name": "s", "admin": "420527", "lat": 30.0, "lon": 110.0, "policy": {"confirm_from_level": 5},
        "devices": [{"device": "N1", "channels": [{"channel": "mud", "kind": "mud_level", "thresholds": thr}]}],
    }]}, "<test>")
    t0 = 1764374400.0  # 2025-11-29T00:00:00Z

    def z(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))

    def data(t: float, v: float) -> dict:
        return {"topic": "geowarn/S/N1/data", "payload": {"v": 1, "device": "N1", "readings": [{"ch": "mud", "t": t, "v": v}]}}

    def state(t: float, code: int) -> dict:
        return {"topic": "geowarn/S/N1/status", "payload": {"N1": {"S1_ZT_1": {z(t): {"sensor_state": {"mud": code}}}}}}

    lines = [
        data(t0, 0.5),
        state(t0 + 300, -2),
        data(t0 + 600, 2.5), data(t0 + 1200, 2.6),                                             # orange, were it believed
        {"topic": "geowarn/S/N1/status", "payload": {"device": "N1", "t": t0 + 1500, "battery_v": 12.4}},  # a native heartbeat
        data(t0 + 1800, 2.7),
        {"topic": "geowarn/S/N1/status", "payload": {"device": "OTHER", "t": t0 + 1900}},      # refused, as live
        state(t0 + 2100, 0),
        data(t0 + 2400, 2.5),
    ]
    path = tmp_path / "native.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    rejects: list[FeedReject] = []
    statuses: list[FeedStatus] = []
    rows = list(read_feed(path, rejects, registry=registry, statuses=statuses))
    assert [(s.line, s.after, s.t) for s in statuses] == [(2, 1, t0 + 300), (5, 3, t0 + 1500), (8, 4, t0 + 2100)]
    assert statuses[1].status == {"battery_v": 12.4, "t": t0 + 1500}
    assert [(r.line, r.reason.split(":")[0]) for r in rejects] == [(7, "device_mismatch")]
    # Without asking for statuses the feed reads as before (status lines skipped).
    assert list(read_feed(path, [], registry=registry)) == rows

    got = replay_rows(rows, registry, tmp_path / "r", plots=False, statuses=statuses)
    assert [(e["t"], e["level"], e["evidence"]["channel"]) for e in got.events] == [(rfc3339(t0 + 2400), 3, "N1/mud")]
    blind = replay_rows(rows, registry, tmp_path / "blind", plots=False)
    assert (blind.events[0]["t"], blind.events[0]["level"]) == (rfc3339(t0 + 600), 3)


@pytest.mark.slow
def test_the_same_feed_through_a_real_broker_and_daemon_gives_the_replays_levels(feed: Path, tmp_path: Path, mosquitto) -> None:
    """Each line published as it was received (framed ones as their bytes) on its topic, back to
    back (many arrive in the same millisecond: the journal records where each status stands
    among the readings, not only its arrival time), into a real daemon: its alert log holds
    the replay's level changes, with the same faulty-sensor evidence."""
    from daemonproc import Daemon, publisher

    registry = load_registry(SITES)
    statuses: list[FeedStatus] = []
    rows = list(read_feed(feed, [], registry=registry, statuses=statuses))
    want = replay_rows(rows, registry, tmp_path / "replay", plots=False, statuses=statuses)

    daemon = Daemon(tmp_path / "data", mosquitto.url, extra_env={"GEOWARN_SITES": str(SITES), "GEOWARN_CN_TOPICS": "$dp"})
    alerts = tmp_path / "data" / "alerts.jsonl"

    def events() -> list[dict]:
        return [json.loads(x) for x in alerts.read_text(encoding="utf-8").splitlines()] if alerts.exists() else []

    daemon.start()
    pub = publisher(mosquitto.url)
    try:
        for line in feed.read_text(encoding="utf-8").splitlines():
            doc = json.loads(line)
            raw = doc["payload"]
            payload = base64.b64decode(raw) if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False).encode("utf-8")
            pub.publish(doc["topic"], payload, qos=1).wait_for_publish(10)
        daemon.wait_until(lambda: daemon.count() == len(rows) and daemon.count("device_status") == len(statuses), timeout=120,
                          message=f"{len(rows)} readings and {len(statuses)} statuses in the journal")
        daemon.wait_until(lambda: len(_changes(events())) >= len(_changes(want.events)), timeout=120, message="the replay's level changes")
        time.sleep(2.0)  # nothing more comes
        live = events()
    finally:
        pub.loop_stop()
        daemon.close()
    assert _changes(live) == _changes(want.events)
    lv = [e for e in live if e["kind"] in LEVEL_KINDS]
    rv = [e for e in want.events if e["kind"] in LEVEL_KINDS]
    assert [(e["reason"], e["evidence"].get("sensor_faults")) for e in lv] == [(e["reason"], e["evidence"].get("sensor_faults")) for e in rv]


def test_a_status_keeps_its_place_in_the_feed_among_readings_sorted_in_event_time() -> None:
    """In a feed in time order a status falls exactly where it is in the file (before the
    readings after it, even of its own time); a reading stamped earlier than one before the
    status (a late one) is judged in event time, before the status."""
    from geowarn.ingest.feeds import FeedRow
    from geowarn.service.replay import sequence

    a, b, c, d = (FeedRow("S", "D", "x", t, 0.0) for t in (10.0, 20.0, 20.0, 30.0))
    first, second = (FeedStatus("S", "D", t, {"sensor_state": {"x": -2}}, after, 0) for t, after in ((20.0, 2), (0.0, 4)))
    assert sequence([a, b, c, d], [first, second]) == [a, b, first, c, d, second]
    late = FeedRow("S", "D", "x", 5.0, 0.0)
    assert sequence([a, b, late, d], [FeedStatus("S", "D", 20.0, {}, 2, 0)]) == [late, a, b, FeedStatus("S", "D", 20.0, {}, 2, 0), d]
    assert sequence([b, a], []) == [a, b]
