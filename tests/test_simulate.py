"""`geowarn simulate`: scenarios to feed files and to a real Mosquitto, commands, replay.

Feeds are real files, the broker a real Mosquitto on a loopback port (tests/services.py).
Durations are cut short to keep the suite fast; the `failure` scenario runs whole, because
its truth (the failure time) is what the replay must warn before.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from geowarn.config.registry import load_registry
from daemonproc import REPO
from services import free_port
from geowarn.core.timefmt import parse_time
from geowarn.ingest.feeds import read_feed
from geowarn.service.replay import replay_rows
from geowarn.simulators.engine import Rain, Simulation
from geowarn.simulators.fastmqtt import FastPublisher, PublishError
from geowarn.simulators.publish import FeedWriter, LiveRun, count_feed_messages, write_feed, write_truth
from geowarn.simulators.scenario import WeatherSpec, load_scenario, parse_duration, parse_scenario
from geowarn.simulators.slope import DAY, SeasonalSlope

BUNDLED = ["failure", "storm", "stable", "seasonal", "faults"]


def _geowarn(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geowarn.service.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


class Subscriber:
    """A plain paho subscriber that hands every message over on a queue."""

    def __init__(self, url: str, topics: list[str]) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{time.monotonic_ns()}")
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.c.on_subscribe = lambda c, u, mid, rcs, p: ready.set()
        self.c.on_message = lambda c, u, m: self.inbox.put((m.topic, bytes(m.payload)))
        self.c.connect(host, int(port))
        self.c.loop_start()
        assert ready.wait(10), "subscriber did not get its SUBACK"

    def take(self, n: int, timeout: float = 30.0) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                out.append(self.inbox.get(timeout=left))
            except queue.Empty:
                break
        return out

    def wait_for(self, pred: Any, timeout: float = 30.0) -> tuple[str, bytes] | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self.inbox.get(timeout=left)
            except queue.Empty:
                return None
            if pred(*item):
                return item
        return None

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


# -- scenarios and durations ---------------------------------------------------------------


def test_durations_parse_as_documented():
    assert parse_duration(3600) == 3600.0
    assert parse_duration("90s") == 90.0
    assert parse_duration("30m") == 1800.0
    assert parse_duration("6h") == 21600.0
    assert parse_duration("14d") == 14 * 86400.0
    assert parse_duration("1d 12h") == 1.5 * 86400.0
    with pytest.raises(ValueError, match="6x"):
        parse_duration("6x")


def test_list_names_every_bundled_scenario():
    proc = _geowarn("simulate", "--list")
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert set(BUNDLED) <= set(names)


def test_a_bad_scenario_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[slopes]]\nsite = "BSH"\nmodel = "voight"\n')
    proc = _geowarn("simulate", "--scenario", str(bad), "--out", str(tmp_path / "f.csv"))
    assert proc.returncode == 2
    assert "bad.toml" in proc.stderr and "failure_at" in proc.stderr


@pytest.mark.parametrize("name", BUNDLED)
def test_each_bundled_scenario_writes_a_feed_and_its_truth(tmp_path, name):
    feed = tmp_path / f"{name}.csv"
    duration = "2d" if name == "seasonal" else "6h"
    proc = _geowarn("simulate", "--scenario", name, "--duration", duration, "--seed", "4", "--out", str(feed), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    truth = json.loads((tmp_path / f"{name}.csv.truth.json").read_text())
    assert truth["scenario"] == name and truth["seed"] == 4
    assert set(truth) >= {"failures", "faults", "start", "end"}
    rejects: list[Any] = []
    rows = list(read_feed(feed, rejects))
    registry = load_registry(tmp_path / f"{name}.csv.sites.toml")
    assert {(r.site, r.device) for r in rows} <= {(s, d.device) for s, site in registry.sites.items() for d in site.devices} | {
        (f["site"], f["as_device"]) for f in truth["faults"] if f["kind"] == "impersonation"
    }
    t0, t1 = parse_time(truth["start"]), parse_time(truth["end"])
    assert len(rows) > 100
    if name != "faults":
        assert rejects == []
        assert all(t0 <= r.t <= t1 for r in rows)
        # Every registry channel reports.
        assert {(r.device, r.channel) for r in rows} == {(d, c) for (s, d), chans in registry.channels.items() for c in chans}


def test_the_same_seed_gives_a_byte_identical_feed_and_another_seed_does_not(tmp_path):
    for fmt in ("csv", "jsonl"):
        a, b, c = (tmp_path / f"{x}.{fmt}" for x in "abc")
        for path, seed in ((a, "9"), (b, "9"), (c, "10")):
            proc = _geowarn("simulate", "--scenario", "faults", "--duration", "12h", "--seed", seed, "--out", str(path), "--no-progress")
            assert proc.returncode == 0, proc.stderr
        assert a.read_bytes() == b.read_bytes()
        assert a.read_bytes() != c.read_bytes()
        ta, tb = (json.loads((tmp_path / f"{x}.{fmt}.truth.json").read_text()) for x in "ab")
        assert ta.pop("sites_file") == f"a.{fmt}.sites.toml" and tb.pop("sites_file") == f"b.{fmt}.sites.toml"
        assert ta == tb


def test_payloads_follow_the_native_v1_contract_and_devices_buffer(tmp_path):
    feed = tmp_path / "f.jsonl"
    proc = _geowarn("simulate", "--scenario", "failure", "--duration", "1d", "--out", str(feed), "--drill", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in feed.read_text().splitlines()]
    data = [d for d in lines if d["topic"].endswith("/data")]
    status = [d for d in lines if d["topic"].endswith("/status")]
    assert data and status
    seqs: dict[str, list[int]] = {}
    for d in data:
        _, site, device, _ = d["topic"].split("/")
        p = d["payload"]
        assert set(p) == {"v", "device", "seq", "drill", "readings"}
        assert p["v"] == 1 and p["device"] == device and p["drill"] is True
        seqs.setdefault(device, []).append(p["seq"])
        # failure.toml: readings_per_message = 2, so each channel has two readings a message.
        chans = [r["ch"] for r in p["readings"] if r["ch"] != "soil_moisture"]  # hourly, the rest 10-min
        assert all(chans.count(ch) == 2 for ch in set(chans))
        ts = sorted({r["t"] for r in p["readings"]})
        assert len(ts) == 2 and ts[1] - ts[0] == 600.0
    for device, s in seqs.items():
        assert s == list(range(len(s))), device
    # Heartbeats: DESIGN §3 fields; the battery follows the sun (charged by day).
    for d in status:
        assert set(d["payload"]) >= {"device", "t", "battery_v", "solar_v", "signal_dbm", "temp_c", "sampling_s", "fw"}
        assert d["payload"]["drill"] is True
    lon = 110.5351
    day, night = [], []
    for d in status:
        if d["topic"] == "geowarn/BSH/BSH-EXT1/status":
            h = (d["payload"]["t"] / 3600 + lon / 15) % 24
            (day if 10 <= h <= 14 else night if h <= 4 or h >= 22 else []).append(d["payload"]["battery_v"])
    assert day and night and min(day) > max(night)


@pytest.mark.parametrize("drill", [False, True])
def test_payloads_are_written_as_json_dumps_would_and_rows_are_their_readings(drill):
    # The engine writes payloads from templates, not with json.dumps: a heartbeat must be byte
    # for byte what json.dumps gives for its fields, and the CSV rows of a data message (built
    # only when asked for) exactly its readings.
    sc = load_scenario("storm")
    sim = Simulation(sc, sc.registry(), duration_s=12 * 3600, drill=drill)
    msgs = sim.emit_until(sim.t0 + 5 * 3600) + sim.emit_until(sim.t_end) + sim.flush()
    assert {m.kind for m in msgs} == {"data", "status"}
    for m in msgs:
        doc = json.loads(m.payload)
        assert doc.get("drill", False) is drill
        if m.kind == "status":
            assert m.payload == json.dumps(doc).encode() and m.rows == []
        else:
            assert doc["device"] == m.device_code and m.topic == f"geowarn/{m.site}/{m.device_code}/data"
            assert [(r["ch"], r["t"], r["v"]) for r in doc["readings"]] == [(ch, float(t), float(v)) for ch, t, v in m.rows]


def test_failure_replayed_gives_red_before_the_true_failure(tmp_path):
    feed = tmp_path / "failure.csv"
    proc = _geowarn("simulate", "--scenario", "failure", "--out", str(feed), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    truth = json.loads((tmp_path / "failure.csv.truth.json").read_text())
    t_f = parse_time(truth["failures"]["BSH"])
    assert truth["failures_epoch"]["BSH"] == t_f
    registry = load_registry(tmp_path / "failure.csv.sites.toml")
    summary = replay_rows(list(read_feed(feed)), registry, tmp_path / "out", plots=False)
    red = [parse_time(e["t"]) for e in summary.events if e["site"] == "BSH" and e["level"] == 4 and e["kind"] in ("raise", "upgrade")]
    assert red, "BSH never went red"
    assert min(red) < t_f
    # The stable sites of the scenario stay below orange.
    assert summary.highest.get("BZM", 0) <= 2 and summary.highest.get("XK", 0) <= 2


def test_stations_build_n_devices_from_the_template_with_a_valid_registry(tmp_path):
    feed = tmp_path / "fleet.csv"
    proc = _geowarn("simulate", "--scenario", "stable", "--stations", "25", "--duration", "1h", "--out", str(feed), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    sites = tmp_path / "fleet.csv.sites.toml"
    check = _geowarn("check-config", str(sites))
    assert check.returncode == 0, check.stderr
    assert "25 devices" in check.stdout
    registry = load_registry(sites)
    rows = list(read_feed(feed))
    assert len({(r.site, r.device) for r in rows}) == 25
    assert all(registry.channel(r.site, r.device, r.channel) is not None for r in rows)


def test_seasonal_slope_moves_in_steps_with_the_reservoir_drawdown():
    rain = Rain(np.random.default_rng(0), 1.7e9 - 30 * DAY, 1.8e9, WeatherSpec(storms_per_day=0.0), [])
    t0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    s = SeasonalSlope(t0, t0 + 365 * DAY, rain.stored, base_mm_day=0.3, rain_gain_mm_day_per_mm=0.0, drawdown_gain_mm_per_m=25.0)
    winter = s.velocity(t0 + 60 * DAY)  # March: slow release
    drawdown = s.velocity(t0 + 140 * DAY)  # May-June: 15 m in 45 days
    assert drawdown == pytest.approx(0.3 + 25.0 * 15.0 / 45.0, rel=0.02)
    assert winter < 0.3 + 25.0 * 0.2
    assert s.velocity(t0 + 280 * DAY) == pytest.approx(0.3)  # refilling: no push
    # Displacement is the integral of velocity.
    ts = np.linspace(t0, t0 + 200 * DAY, 20001)
    v = s.velocity(ts)
    assert s.displacement(ts[-1]) == pytest.approx(float(np.sum(0.5 * (v[1:] + v[:-1]) * np.diff(ts) / DAY)), rel=1e-3)


def test_storm_rain_totals_follow_the_intensity_duration_law(tmp_path):
    sc = load_scenario("storm")
    sim = Simulation(sc, sc.registry(), duration_s=2 * DAY)
    rain = sim.sites["BSH"].rain
    storm = sc.storms[0]
    start = sim.t0 + storm.at
    expected = 40.0 * 12.0 ** (-0.6) * 12.0  # I = a D^-b mm/h for D = 12 h
    at = np.asarray([start, start + 12 * 3600.0])
    total = float(np.diff(rain.cumulative(at))[0])
    background = total - expected
    assert expected == pytest.approx(sum((e - s) / 3600 * r for s, e, r in rain.storms if s >= start and e <= start + 12 * 3600 + 1), rel=1e-9)
    assert background >= -1e-9
    # Pore pressure rises after the storm (linear reservoir response).
    assert float(rain.stored(np.asarray([start + 13 * 3600.0]), 2 * DAY)[0]) > 0.5 * expected


# -- live ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fast", [False, True], ids=["paho", "fast"])
def test_live_publish_reaches_a_subscriber(mosquitto, tmp_path, fast):
    sub = Subscriber(mosquitto.url, ["geowarn/#"])
    feed = tmp_path / "sent.jsonl"
    record = FeedWriter(feed)
    try:
        sc = load_scenario("stable")
        sim = Simulation(sc, sc.registry(), duration_s=3 * 3600.0)
        stats = LiveRun(sim, mosquitto.url, speed=float("inf"), progress=False, record=record, fast=fast).run()
        record.close()
        got = sub.take(stats.messages, timeout=30)
        assert len(got) == stats.messages > 0
        # Exactly what was published, in the order it was published (one connection, QoS 1).
        sent = [(x["topic"], json.dumps(x["payload"]).encode()) for x in map(json.loads, feed.read_text().splitlines())]
        assert [(t, json.dumps(json.loads(p)).encode()) for t, p in got] == sent
        topics = {t for t, _ in got}
        assert "geowarn/BSH/BSH-GNSS1/data" in topics and "geowarn/BSH/BSH-GNSS1/status" in topics
        assert all(json.loads(p)["device"] == t.split("/")[2] for t, p in got)
    finally:
        sub.close()


@pytest.mark.slow
def test_the_fast_publisher_wraps_packet_ids_and_counts_every_puback(mosquitto):
    # More messages than packet ids (65 535), through a small in-flight window: every id is
    # reused and every PUBACK must still match a message in flight.
    sub = Subscriber(mosquitto.url, ["wrap/#"])
    pub = FastPublisher(mosquitto.url, "wrap-test", max_unacked=500)
    n = 70_000
    try:
        for i in range(n):
            pub.publish(f"wrap/{i % 7}", b"%d" % i)
        assert pub.wait_acked(60)
        assert pub.published == pub.acked == n
        got = sub.take(n, timeout=60)
        assert [int(p) for _, p in got] == list(range(n))
        assert all(t == f"wrap/{int(p) % 7}" for t, p in got)
    finally:
        pub.close()
        sub.close()


def test_the_fast_publisher_reports_what_it_cannot_do(mosquitto):
    with pytest.raises(PublishError, match="cannot connect"):
        FastPublisher(f"mqtt://127.0.0.1:{free_port()}", "nobody-there")
    with pytest.raises(PublishError, match="TLS"):
        FastPublisher(f"mqtts://127.0.0.1:{mosquitto.port}", "tls")
    with pytest.raises(ValueError, match="max_unacked"):
        FastPublisher(mosquitto.url, "huge-window", max_unacked=70_000)


@pytest.mark.slow
def test_the_fast_publisher_fails_loudly_when_the_broker_goes_away(mosquitto):
    pub = FastPublisher(mosquitto.url, "goes-away")
    try:
        pub.publish("x/y", b"1")
        assert pub.wait_acked(10)
        mosquitto.kill()
        with pytest.raises(PublishError, match="closed the connection|lost"):
            for _ in range(100_000):
                pub.publish("x/y", b"2" * 100)
            pub.wait_acked(10)
    finally:
        pub.close()


@pytest.mark.slow
@pytest.mark.parametrize("fast", [False, True], ids=["paho", "fast"])
def test_a_device_obeys_set_sampling_and_reports_the_new_interval(mosquitto, fast):
    sub = Subscriber(mosquitto.url, ["geowarn/BSH/BSH-GNSS1/#"])
    sc = load_scenario("stable")
    # One simulated hour per wall second: the command lands while the run goes on.
    sim = Simulation(sc, sc.registry(), t0=time.time() - 6 * 3600.0, duration_s=6 * 3600.0)
    run = LiveRun(sim, mosquitto.url, speed=3600.0, progress=False, fast=fast)
    done = threading.Event()
    th = threading.Thread(target=lambda: (run.run(), done.set()), daemon=True)
    th.start()
    try:
        first = sub.wait_for(lambda t, p: t.endswith("/status"), timeout=20)
        assert first is not None and json.loads(first[1])["sampling_s"] == 600.0
        sub.c.publish("geowarn/BSH/BSH-GNSS1/cmd", json.dumps({"cmd": "set_sampling", "interval_s": 60, "reason": "warning orange"}), qos=1)
        confirmed = sub.wait_for(lambda t, p: t.endswith("/status") and json.loads(p)["sampling_s"] == 60.0, timeout=20)
        assert confirmed is not None, "no status with sampling_s 60"
        ts: list[float] = []
        while len(ts) < 4:
            fast = sub.wait_for(lambda t, p: t.endswith("/data"), timeout=20)
            assert fast is not None
            ts.append(json.loads(fast[1])["readings"][0]["t"])
        assert np.allclose(np.diff(ts[1:]), 60.0), ts
    finally:
        assert done.wait(30)
        sub.close()
    assert run.stats.commands and run.stats.commands[0]["ok"] and run.stats.commands[0]["interval_s"] == 60.0


@pytest.mark.slow
@pytest.mark.parametrize("fmt,fast", [("jsonl", False), ("csv", False), ("jsonl", True)], ids=["jsonl", "csv", "jsonl-fast"])
def test_replay_of_a_feed_republishes_every_message(mosquitto, tmp_path, fmt, fast):
    feed = tmp_path / f"f.{fmt}"
    sc = load_scenario("faults")
    sim = Simulation(sc, sc.registry(), duration_s=4 * 3600.0)
    write_feed(sim, feed)
    write_truth(sim, feed)
    expected = count_feed_messages(feed)
    sub = Subscriber(mosquitto.url, ["geowarn/#"])
    try:
        proc = _geowarn("simulate", "--replay", str(feed), "--broker", mosquitto.url, "--speed", "inf", *(["--fast"] if fast else []))
        assert proc.returncode == 0, proc.stderr
        assert f"replayed {expected} messages" in proc.stdout
        assert "100%" in proc.stderr  # the progress bar
        got = sub.take(expected, timeout=30)
        assert len(got) == expected
        if fmt == "jsonl":
            sent = [(json.loads(x)["topic"], json.loads(x)["payload"]) for x in feed.read_text().splitlines()]
            for (topic, payload), (rt, rp) in zip(sent, got):
                assert rt == topic
                assert rp == (payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
        else:
            readings = sum(len(json.loads(p)["readings"]) for _, p in got)
            assert readings == len(feed.read_text().splitlines()) - 1
    finally:
        sub.close()


@pytest.mark.slow
def test_replay_keeps_the_original_timing_scaled(mosquitto, tmp_path):
    feed = tmp_path / "f.csv"
    feed.write_text("site,device,channel,t,value\n" + "".join(f"S1,D1,displacement,{1.7e9 + 60 * i},{i}\n" for i in range(4)))
    sub = Subscriber(mosquitto.url, ["geowarn/#"])
    try:
        t0 = time.monotonic()
        proc = _geowarn("simulate", "--replay", str(feed), "--broker", mosquitto.url, "--speed", "120")
        took = time.monotonic() - t0
        assert proc.returncode == 0, proc.stderr
        assert len(sub.take(4, timeout=10)) == 4
        assert took >= 1.5  # 180 s of feed at 120x
    finally:
        sub.close()


def test_simulate_needs_a_destination():
    proc = _geowarn("simulate", "--scenario", "stable")
    assert proc.returncode == 1 and "--broker" in proc.stderr


def test_a_scenario_file_with_its_own_sites(tmp_path):
    sites = tmp_path / "sites.toml"
    sites.write_text(
        '[[sites]]\nsite = "T1"\nname = "test"\nadmin = "420527"\nlat = 30.0\nlon = 110.0\n'
        '[[sites.devices]]\ndevice = "T1-EXT"\nchannels = [{ channel = "disp", kind = "displacement", interval_s = 300 }]\n'
    )
    sc = parse_scenario({"name": "mine", "sites": "sites.toml", "duration": "1h", "slopes": [{"site": "T1", "model": "voight", "failure_at": "2h"}]}, str(tmp_path / "mine.toml"))
    sim = Simulation(sc, sc.registry())
    feed = tmp_path / "f.csv"
    write_feed(sim, feed)
    rows = list(read_feed(feed))
    assert len(rows) == 12 and {r.device for r in rows} == {"T1-EXT"}
