"""The duty-officer console in Chinese, in a real headless Chromium against the real daemon
and Mosquitto (issue 15 item 11): what a Chinese duty office reads.

A real yellow warning at BSH (Zigui, 420527) and a drill at BZM (same county). In Chinese
mode the page shows the warning's reason as a Chinese lead with its numbers (the detectors'
English original one click away), unit names instead of county codes, every time in
GEOWARN_TIMEZONE with the zone named (北京时间 (UTC+8)), a map with each site coloured by its
level, the device health of a site, and the drill visibly a drill: a banner, the rows and
cards marked, and the ack dialog saying 演练/DRILL. Expected strings are written by hand from
the example registry and roster and from what the test publishes.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from daemonproc import publisher
from test_api import SLOPE_MESSAGES, Console, console, wait_for, yellow_slope  # noqa: F401  (console is a fixture)
from test_console_browser import TIME, ZONED, _browser

pytestmark = pytest.mark.slow

ZIGUI = "秭归县自然资源局 Zigui County Natural Resources Bureau"


def drill_slope(url: str) -> None:
    """BZM's extensometer creeps 10 mm/day for 12 h, every message marked as a drill."""
    pub = publisher(url, client_id=f"drill-{time.monotonic_ns()}")
    try:
        start = int(time.time()) - 2 * 86400 - 12 * 3600
        for i in range(SLOPE_MESSAGES):
            doc = {"v": 1, "device": "BZM-EXT1", "seq": i, "drill": True, "readings": [{"ch": "disp", "t": start + i * 600, "v": 10.0 * i * 600 / 86400}]}
            pub.publish("geowarn/BZM/BZM-EXT1/data", json.dumps(doc).encode(), qos=1).wait_for_publish(10)
        status = {"v": 1, "device": "BSH-EXT1", "t": int(time.time()), "battery_v": 11.6, "solar_v": 17.9, "signal_dbm": -87, "temp_c": 21.5, "fw": "2.4.1"}
        pub.publish("geowarn/BSH/BSH-EXT1/status", json.dumps(status).encode(), qos=1).wait_for_publish(10)
    finally:
        pub.disconnect()
        pub.loop_stop()


def test_chinese_mode_reasons_units_zone_map_and_a_drill_visible_everywhere(tmp_path, console: Console, mosquitto):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    yellow_slope(mosquitto.url)
    drill_slope(mosquitto.url)
    api = console.client(console.zigui)
    warnings = wait_for(lambda: [w for w in api.get("/api/warnings").json() if w["active"]] if len(
        [w for w in api.get("/api/warnings").json() if w["active"]]) == 2 else None, 60, "a real and a drill warning", console.daemon)
    real = next(w for w in warnings if not w["exercise"])
    drill = next(w for w in warnings if w["exercise"])
    assert (real["site"], drill["site"]) == ("BSH", "BZM")
    # The next action, from the API: acknowledge now, with the card's shelter; the drill's marked.
    assert real["next_action"]["zh"].startswith("立即确认预警，并加密监测和巡查频次") and "避险场所 白水河村小学操场" in real["next_action"]["zh"]
    assert drill["next_action"]["zh"].startswith("【演练】立即确认预警") and "归州镇文化广场" in drill["next_action"]["zh"]

    driver = _browser(tmp_path)
    try:
        def wait(css: str, timeout: float, what: str):
            try:
                return WebDriverWait(driver, timeout, poll_frequency=0.2).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))
            except TimeoutException as exc:
                driver.save_screenshot(str(tmp_path / "failure.png"))
                raise AssertionError(f"timed out waiting for {what} ({css}); screenshot {tmp_path / 'failure.png'}") from exc

        driver.get(console.base + "/")
        wait("#login-token", 20, "the sign-in form")
        driver.execute_script("localStorage.setItem('geowarn.lang', 'zh')")
        driver.execute_script(
            "window.__csp = []; document.addEventListener('securitypolicyviolation', "
            "e => window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`))"
        )
        driver.find_element(By.ID, "login-token").send_keys(console.zigui)
        driver.find_element(By.ID, "login-submit").click()
        card = wait('.warning[data-site="BSH"]', 20, "the BSH warning")
        assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "zh-CN"

        # The unit's name, not its code, in the header and on the card.
        assert ZIGUI in driver.find_element(By.ID, "who").text and "420527" not in driver.find_element(By.ID, "who").text
        meta = card.find_element(By.CSS_SELECTOR, ".meta").text
        assert ZIGUI in meta and "420527" not in meta

        # The reason: a Chinese lead with the evidence's numbers (10 mm/day against yellow's
        # 3 mm/day), the English original kept in a collapsed <details>.
        lead = card.find_element(By.CSS_SELECTOR, ".reason .lead").text
        assert lead.startswith("黄色预警（Ⅲ级 警示级）") and "位移速率" in lead and "mm/天" in lead and "黄色阈值 3 mm/天" in lead, lead
        assert "velocity" not in lead
        original = card.find_element(By.CSS_SELECTOR, ".reason details.original")
        assert original.get_attribute("open") is None
        assert "velocity" in original.get_attribute("textContent") and "mm/day" in original.get_attribute("textContent")

        # Every time in Beijing time, the zone named: the raise time as the API gives it.
        since = datetime.fromtimestamp(real["since"], ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M:%S")
        assert f"{since} 北京时间 (UTC+8)" in meta, meta

        # The drill: a banner on the list, its card and its site row marked.
        banner = wait("#drill-banner:not([hidden])", 10, "the drill banner")
        assert "演练" in banner.text and "DRILL" in banner.text and "八字门滑坡" in banner.text
        drill_card = driver.find_element(By.CSS_SELECTOR, '.warning[data-site="BZM"]')
        assert drill_card.get_attribute("data-exercise") == "true" and "演练" in drill_card.text
        assert card.get_attribute("data-exercise") == "false"
        row = driver.find_element(By.CSS_SELECTOR, '#sites tr[data-site="BZM"]')
        assert row.get_attribute("data-drill") == "2" and "演练" in row.text
        assert driver.find_element(By.CSS_SELECTOR, '#sites tr[data-site="BSH"]').get_attribute("data-drill") is None

        # The map: an inline SVG, each site where its lat/lon puts it, coloured by its level.
        bsh = wait('#map svg .map-site[data-site="BSH"]', 10, "BSH on the map")
        assert bsh.get_attribute("data-level") == "2"
        fill = lambda site: driver.execute_script(  # noqa: E731
            f"return getComputedStyle(document.querySelector('#map .map-site[data-site=\"{site}\"] circle.dot')).fill")
        assert fill("BSH") == "rgb(227, 179, 65)"  # --yellow
        assert fill("BZM") == "rgb(110, 118, 129)"  # --none: a drill never colours a site's real level
        assert driver.find_element(By.CSS_SELECTOR, '#map .map-site[data-site="BZM"]').get_attribute("data-drill") == "2"
        assert driver.find_elements(By.CSS_SELECTOR, '#map .map-site[data-site="XK"]') == []  # Xingshan: not this token's
        pos = {s: driver.execute_script(f"const c = document.querySelector('#map .map-site[data-site=\"{s}\"] circle.dot'); return [+c.getAttribute('cx'), +c.getAttribute('cy')]")
               for s in ("BSH", "BZM")}
        # BZM (30.8869 N, 110.7525 E) lies east and south of BSH (30.9946 N, 110.5351 E).
        assert pos["BZM"][0] > pos["BSH"][0] and pos["BZM"][1] > pos["BSH"][1]
        assert driver.find_elements(By.CSS_SELECTOR, "#map image") == []  # no tile server by default: nothing fetched

        # The tab's title says a drill is on; every time on the page carries its zone.
        assert driver.title.startswith("【演练 DRILL】")
        text = driver.execute_script("return document.body.innerText")
        assert re.findall(TIME, text) and not re.findall(TIME + r"(?!:\d)" + f"(?!{ZONED})", text), text
        assert driver.find_element(By.CSS_SELECTOR, '.warning[data-site="BSH"] .next-action').text.startswith("下一步: 立即确认预警")

        # The drill's ack dialog says it is a drill, its button too.
        drill_card.find_element(By.CSS_SELECTOR, ".ack-btn").click()
        dialog = wait("#ack-dialog[open]", 10, "the ack dialog")
        assert dialog.get_attribute("data-exercise") == "true"
        assert "演练" in driver.find_element(By.ID, "ack-title").text and "DRILL" in driver.find_element(By.ID, "ack-title").text
        assert "演练" in driver.find_element(By.ID, "ack-drill").text and "DRILL" in driver.find_element(By.ID, "ack-drill").text
        assert "演练" in driver.find_element(By.ID, "ack-confirm").text and "DRILL" in driver.find_element(By.ID, "ack-confirm").text
        assert ZIGUI in driver.find_element(By.ID, "ack-summary").text
        driver.find_element(By.ID, "ack-cancel").click()

        # The real site's page: the banner stays, the card names the unit, device health.
        driver.execute_script("location.hash = '#/site/BSH'")
        wait('#devices tr[data-device="BSH-EXT1"] td[data-health="solar"]', 20, "device health")
        assert not driver.find_element(By.ID, "drill-banner").get_attribute("hidden")
        assert ZIGUI in driver.find_element(By.CSS_SELECTOR, "#card dd.unit").text
        WebDriverWait(driver, 20, poll_frequency=0.2).until(
            lambda d: d.find_element(By.CSS_SELECTOR, '#devices tr[data-device="BSH-EXT1"] td[data-health="solar"]').text == "17.9 V")
        ext1 = driver.find_element(By.CSS_SELECTOR, '#devices tr[data-device="BSH-EXT1"]')
        assert ext1.find_element(By.CSS_SELECTOR, 'td[data-health="battery"]').text == "11.6 V"
        assert ext1.find_element(By.CSS_SELECTOR, 'td[data-health="temp"]').text == "21.5 °C"
        assert ext1.find_element(By.CSS_SELECTOR, 'td[data-health="fw"]').text == "2.4.1"
        assert ext1.find_element(By.CSS_SELECTOR, 'td[data-health="signal"]').text == "-87 dBm"
        wait('#timeline li.tl-entry[data-rule="raise"]', 20, "the raise in the timeline")
        raise_entry = driver.find_element(By.CSS_SELECTOR, '#timeline li.tl-entry[data-rule="raise"]')
        assert "位移速率" in raise_entry.find_element(By.CSS_SELECTOR, ".detail .lead").text
        assert "北京时间 (UTC+8)" in raise_entry.find_element(By.CSS_SELECTOR, ".when").text
        notes = driver.find_elements(By.CSS_SELECTOR, "#timeline li.tl-note")
        assert notes and any(ZIGUI in n.text for n in notes)
        assert "北京时间 (UTC+8)" in driver.find_element(By.CSS_SELECTOR, '.chart[data-chart="displacement"] h3').text
        # The next action heads the warning, naming the shelter; every time has its zone.
        first = driver.execute_script("return document.querySelector('.warning-panel').firstElementChild")
        assert first.get_attribute("class") == "next-action" and first.text.startswith("下一步: 立即确认预警") and "白水河村小学操场" in first.text
        text = driver.execute_script("return document.body.innerText")
        assert len(re.findall(TIME, text)) >= 3 and not re.findall(TIME + r"(?!:\d)" + f"(?!{ZONED})", text), text
        # The rain chart (a dry gauge: no readings) and the others never below 0 where they cannot be.
        assert float(driver.find_element(By.CSS_SELECTOR, '.chart[data-chart="inverse_velocity"]').get_attribute("data-y0")) == 0

        assert driver.execute_script("return window.__csp") == [], "the console broke its own Content-Security-Policy"
        driver.save_screenshot(str(tmp_path / "console-zh.png"))
    finally:
        driver.quit()
