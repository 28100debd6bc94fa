"""``/metrics`` counts devices' health and their answers to commands over the fleet, with no
label per device (issue 15 item 4); ``/api/me`` tells the console its time zone and unit
names, and a map tile server configured is the only outside origin the console may load
images from (issue 15 item 11). A real API server over files written by the stores' own
writers; expected figures are counted by hand from what the test writes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services import free_port


def _server(data: Path, **settings):
    from geowarn.config.settings import Loaded, load_all
    from geowarn.console.api import ApiServer
    from geowarn.console.metrics import MainStats
    from geowarn.console.tokens import TOKENS_FILE, TokenStore

    store = TokenStore(data / TOKENS_FILE)
    _, secret = store.create("county", "420527", "zigui-duty", time.time())
    store.close()
    port = free_port()
    base = load_all()
    loaded = Loaded(base.settings.model_copy(update={"data_dir": data, "http": f"127.0.0.1:{port}", "mqtt_url": "mqtt://127.0.0.1:9", **settings}),
                    base.registry, base.roster, base.warnings)
    server = ApiServer(loaded, data, MainStats)
    assert server.start()
    return server, httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {secret}"}, timeout=30)


def test_metrics_count_low_batteries_faulty_sensors_and_command_answers_without_a_label_per_device(tmp_path) -> None:
    from geowarn.alerts.outbox import OUTBOX_FILE, Outbox
    from geowarn.ingest.journal import JOURNAL_FILE, Journal

    data = tmp_path / "data"
    data.mkdir()
    now_ms = int(time.time() * 1000)

    def st(site: str, device: str, i: int, **status) -> tuple[str, str, int, int, str]:
        return (site, device, now_ms + i, now_ms + i, json.dumps(status))

    j = Journal(data / JOURNAL_FILE)
    j.append([], statuses=[
        st("BSH", "BSH-EXT1", 0, battery_v=11.2, sensor_state={"L1_LF_1": 0}),          # low (volts), sensors fine
        st("BSH", "BSH-GNSS1", 1, battery_v=12.5, battery_percent=15),                 # low: the charge says so
        st("BSH", "BSH-GNSS2", 2, battery_v=12.6, sensor_state={"L1_LF_1": -2, "L1_QJ_1": 0}),  # faulty
        st("BZM", "BZM-EXT1", 3, battery_v=10.0),                                      # low once ...
        st("BZM", "BZM-EXT1", 4, battery_v=12.9),                                      # ... charged since: not low
        st("XK", "XK-CRK1", 5, battery_v=12.1, sensor_state={"L1_LF_1": "-1"}),         # faulty (the code as text)
        st("BSH", "GHOST", 6, battery_v=3.0, sensor_state={"x": -3}),                   # not in the registry: not counted
    ])
    j.close()
    out = Outbox(data / OUTBOX_FILE)
    for msgid, command in (("m1", "c1"), ("m2", "c2"), ("m3", "c3")):
        out.expect_answer(msgid, command)
    assert out.record_answer("m1", "setsensortime", "succ", 1.0) == "c1"
    assert out.record_answer("m2", "setsensortime", "fail", 2.0) == "c2"
    assert out.record_answer("m3", "setsensortime", "succ", 3.0) == "c3"
    assert out.record_answer("m3", "setsensortime", "fail", 4.0) == "c3"   # a repeated answer replaces the earlier
    assert out.record_answer("m9", "setsensortime", "succ", 5.0) is None   # none of ours
    out.close()

    server, c = _server(data)
    try:
        text = httpx.get(str(c.base_url) + "/metrics", timeout=30).text
    finally:
        c.close()
        server.stop()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("geowarn_devices_status_reporting", ())] == 5
    assert samples[("geowarn_devices_battery_low", ())] == 2
    assert samples[("geowarn_devices_sensor_faulty", ())] == 1 + 1
    assert samples[("geowarn_command_answers_total", (("result", "succ"),))] == 1
    assert samples[("geowarn_command_answers_total", (("result", "fail"),))] == 2
    # Bounded cardinality: no device's name is a label anywhere.
    assert "BSH-EXT1" not in text and "GHOST" not in text


def test_me_tells_the_console_its_zone_and_unit_names_and_only_a_configured_tile_server_is_allowed(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    server, c = _server(data, timezone="Asia/Urumqi")
    try:
        me = c.get("/api/me").json()
        csp = c.get("/").headers["Content-Security-Policy"]
    finally:
        c.close()
        server.stop()
    assert me["timezone"] == "Asia/Urumqi" and me["map_tile_url"] is None
    assert me["admin_name"] == "秭归县自然资源局 Zigui County Natural Resources Bureau"
    assert me["units"]["420500"] == "宜昌市自然资源和规划局 Yichang City Bureau"
    assert "img-src 'self' data:;" in csp

    data2 = tmp_path / "data2"
    data2.mkdir()
    server, c = _server(data2, map_tile_url="https://tiles.example.org/{z}/{x}/{y}.png")
    try:
        me = c.get("/api/me").json()
        csp = c.get("/").headers["Content-Security-Policy"]
    finally:
        c.close()
        server.stop()
    assert me["map_tile_url"] == "https://tiles.example.org/{z}/{x}/{y}.png"
    assert "img-src 'self' data: https://tiles.example.org;" in csp
