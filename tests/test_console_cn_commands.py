"""The console shows every sensor's latest command to a universal (普适型) device of the national
convention and its answer, not only the device's newest one (issue 15: a failed answer of one
sensor could hide behind another's success), the device's work mode, a command no answer came
to once its window passed (the firmware drops a command whose apikey is not its own without a
word), and a battery low by the device's own thresholds. A real API server and a real headless
Chromium over files written by the stores' own writers (the journal, the outbox and its
``OutboxSink``); expected states are set by hand from what the test writes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from services import free_port

pytestmark = pytest.mark.slow

KEY = "e7eb73db9cc982caeb1f"  # the firmware comment's example apikey, as the device's secret

SITES = """
[[sites]]
site = "SP"
name = "树坪滑坡"
admin = "420527"
lat = 30.99
lon = 110.61

[[sites.devices]]
device = "SP-U1"
code = "SK11E80D1307426AZ"
apikey = "env:GW_TEST_U1_APIKEY"
# A 3.7 V lithium cell: its own low mark (the 12 V default would call 3.6 V empty).
battery_low_v = 3.4
channels = [
  { channel = "crack", kind = "crack", interval_s = 600, source = "L1_LF_1" },
  { channel = "tilt_x", kind = "tilt", unit = "deg", interval_s = 600, source = "L1_QJ_1.X" },
]

[[sites.devices]]
device = "SP-G1"
code = "SK11E80D1307427GP"
channels = [{ channel = "disp_e", kind = "gnss_e", interval_s = 600, source = "L1_GP_1.gpsTotalX" }]
"""


def _write_files(data: Path, registry) -> float:
    """Statuses, and the red commands of both devices as the daemon's sink writes them: sent an
    hour ago; SP-U1's crack meter answered succ, its tiltmeter fail, its work mode nothing;
    SP-G1 everything succ. Returns when they were sent."""
    from geowarn.alerts.live import COMMAND_KEY, OutboxSink
    from geowarn.alerts.model import SetSampling
    from geowarn.alerts.outbox import OUTBOX_FILE, Outbox
    from geowarn.ingest.commands_cn import msgid_for
    from geowarn.ingest.journal import JOURNAL_FILE, Journal

    now = time.time()
    now_ms = int(now * 1000)
    j = Journal(data / JOURNAL_FILE)
    j.append([], statuses=[
        ("SP", "SP-U1", now_ms, now_ms, json.dumps({"battery_v": 3.6, "t": now})),   # 3.6 V: fine for its 3.4 V mark
        ("SP", "SP-G1", now_ms, now_ms, json.dumps({"battery_v": 11.2, "t": now})),  # below the default 11.5 V: low
    ])
    j.close()

    class Chain:
        pass

    chain = Chain()
    chain.registry, chain.zero_last, chain.raised = registry, {}, []  # type: ignore[attr-defined]
    outbox = Outbox(data / OUTBOX_FILE)
    sent = now - 3600.0
    OutboxSink(outbox, data / "cap").carry_out(chain, None, None, (SetSampling("SP", 60.0, "warning red", sent, False, "w1"),), {})  # type: ignore[arg-type]
    for item in outbox.items():
        outbox.mark_sent(item.id, sent)
    answers = {"SP-U1/L1_LF_1": ("setsensortime", "succ"), "SP-U1/L1_QJ_1": ("setsensortime", "fail"),
               "SP-G1/L1_GP_1": ("setsensortime", "succ"), "SP-G1/workmode": ("setworkmode", "succ")}
    for path, (cmd, result) in answers.items():
        assert outbox.record_answer(msgid_for(f"w1/{path}/{COMMAND_KEY}"), cmd, result, sent + 5) == f"w1/{path}/{COMMAND_KEY}"
    outbox.close()
    return sent


def test_each_sensors_command_and_answer_an_unanswered_one_and_a_low_battery_by_the_devices_mark(tmp_path, monkeypatch) -> None:
    from geowarn.config.registry import load_registry
    from geowarn.config.settings import Loaded, load_all
    from geowarn.console.api import ApiServer
    from geowarn.console.metrics import MainStats
    from geowarn.console.tokens import TOKENS_FILE, TokenStore
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    from test_console_browser import _browser

    monkeypatch.setenv("GW_TEST_U1_APIKEY", KEY)
    data = tmp_path / "data"
    data.mkdir()
    sites = tmp_path / "sites.toml"
    sites.write_text(SITES, encoding="utf-8")
    registry = load_registry(sites)
    _write_files(data, registry)
    store = TokenStore(data / TOKENS_FILE)
    _, token = store.create("county", "420527", "zigui-duty", time.time())
    store.close()
    port = free_port()
    base = load_all()
    loaded = Loaded(base.settings.model_copy(update={"data_dir": data, "http": f"127.0.0.1:{port}", "mqtt_url": "mqtt://127.0.0.1:9"}),
                    registry, base.roster, [], {"SK11E80D1307426AZ": KEY})
    server = ApiServer(loaded, data, MainStats)
    assert server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        r = httpx.get(url + "/api/sites/SP", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        assert KEY not in r.text and KEY not in httpx.get(url + "/metrics", timeout=30).text
        devices = {d["device"]: d for d in r.json()["devices"]}
        u1 = {(c["sensor_id"] or c["cmd"]): c for c in devices["SP-U1"]["commands"]}
        # Each sensor its own line: the tiltmeter's fail is not hidden by the crack meter's succ;
        # the work mode (plus, '2') never answered in its window (2 x 600 s, at least 10 min).
        assert {k: (c["cmd"], c["answer"]) for k, c in u1.items()} == {
            "L1_LF_1": ("setsensortime", "succ"), "L1_QJ_1": ("setsensortime", "fail"), "setworkmode": ("setworkmode", "none")}
        assert u1["setworkmode"]["mode"] == "2" and u1["L1_QJ_1"]["interval_s"] == 60.0
        assert [c["answer"] for c in devices["SP-G1"]["commands"]] == ["succ", "succ"]
        assert (devices["SP-U1"]["battery_low"], devices["SP-G1"]["battery_low"]) == (False, True)
        assert devices["SP-U1"]["battery_low_at"] == {"percent": 20.0, "v": 3.4}

        driver = _browser(tmp_path)
        try:
            def wait(css: str, timeout: float, what: str):
                try:
                    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))
                except TimeoutException as exc:
                    driver.save_screenshot(str(tmp_path / "failure.png"))
                    raise AssertionError(f"timed out waiting for {what} ({css}); screenshot {tmp_path / 'failure.png'}") from exc

            driver.get(url + "/")
            wait("#login-token", 20, "the sign-in form")
            driver.execute_script("localStorage.setItem('geowarn.lang', 'zh')")
            driver.find_element(By.ID, "login-token").send_keys(token)
            driver.find_element(By.ID, "login-submit").click()
            wait('#sites tr[data-site="SP"]', 20, "the site list")
            driver.execute_script("location.hash = '#/site/SP'")
            cell = wait('#devices tr[data-device="SP-U1"] td[data-health="command"] div.cmd[data-sensor="L1_QJ_1"]', 20, "SP-U1's commands")
            td = driver.find_element(By.CSS_SELECTOR, '#devices tr[data-device="SP-U1"] td[data-health="command"]')
            lines = {d.get_attribute("data-sensor"): (d.get_attribute("data-answer"), d.text) for d in td.find_elements(By.CSS_SELECTOR, "div.cmd")}
            assert lines == {
                "L1_LF_1": ("succ", "L1_LF_1 60 s · 设备已执行"),
                "L1_QJ_1": ("fail", "L1_QJ_1 60 s · 设备执行失败"),
                "workmode": ("none", "工作模式 加密 · 设备无应答（请核对设备 apikey 与在线状态）"),
            }
            assert "bad" in cell.get_attribute("class") and td.get_attribute("data-result") == "fail"
            g1 = driver.find_element(By.CSS_SELECTOR, '#devices tr[data-device="SP-G1"] td[data-health="command"]')
            assert g1.get_attribute("data-result") == "succ" and len(g1.find_elements(By.CSS_SELECTOR, "div.cmd")) == 2
            battery = lambda dev: driver.find_element(By.CSS_SELECTOR, f'#devices tr[data-device="{dev}"] td[data-health="battery"]')
            assert (battery("SP-U1").get_attribute("data-low"), battery("SP-U1").text) == ("no", "3.6 V")
            assert (battery("SP-G1").get_attribute("data-low"), battery("SP-G1").text) == ("yes", "11.2 V · 电量低")
            assert KEY not in driver.page_source
        finally:
            driver.quit()
    finally:
        server.stop()
