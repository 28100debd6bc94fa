"""The duty-officer console in a real headless Chromium (Debian ``chromium`` driven through
its ``chromium-driver`` by Selenium), against the real daemon and Mosquitto.

A county officer signs in with a Zigui token; a simulated slope at BSH raises a yellow
warning, which appears in the open page without a reload (server-sent events); the page
shows the escalation to the province in the timeline; the officer acknowledges it in the
page (a dialog, name and note required) and the timeline shows the escalation stopped — and
no escalation to national follows. All of it under the server's Content-Security-Policy (no
inline script or style, nothing external): the page reports no violation, and the policy is
shown to be in force by one deliberate violation at the end. A screenshot is kept as a test artifact (in
the test's tmp dir); ``GEOWARN_UPDATE_SCREENSHOT=1`` also copies it to ``docs/console.png``
for the README (a test run must not change the repository by itself).

A missing Chromium or driver fails the test: a browser test that skips proves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from daemonproc import REPO, publisher
from test_api import ACK_S, Console, console, wait_for, yellow_slope  # noqa: F401  (console is a fixture)

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _browser(tmp_path: Path):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: the console test needs Debian's chromium and chromium-driver "
                    "(./scripts/test installs them; or apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[test]' (./scripts/test does it)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1440,1200",
                "--lang=zh-CN", "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    # An explicit driver path: Selenium then neither looks for nor downloads a driver.
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    return webdriver.Chrome(options=opts, service=service)


def test_a_county_officer_sees_the_warning_live_acknowledges_it_and_escalation_stops(tmp_path, console: Console, mosquitto):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser(tmp_path)
    try:
        def wait(css: str, timeout: float, what: str):
            try:
                return WebDriverWait(driver, timeout, poll_frequency=0.2).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))
            except TimeoutException as exc:  # it says nothing useful: say what was awaited, show the page
                driver.save_screenshot(str(tmp_path / "failure.png"))
                raise AssertionError(f"timed out waiting for {what} ({css}); screenshot {tmp_path / 'failure.png'}; "
                                     f"daemon log:\n{console.daemon.log_tail()}") from exc

        driver.get(console.base + "/")
        wait("#login-token", 20, "the sign-in form")
        # Every CSP violation the page commits from here on (it has no reload, see below).
        driver.execute_script(
            "window.__csp = []; document.addEventListener('securitypolicyviolation', "
            "e => window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`))"
        )
        driver.find_element(By.ID, "login-token").send_keys(console.zigui)
        driver.find_element(By.ID, "login-submit").click()
        wait('#live[data-state="live"]', 20, "the live event stream")
        assert "zigui-duty" in driver.find_element(By.ID, "who").text
        assert driver.find_elements(By.CSS_SELECTOR, ".warning[data-id]") == []
        driver.execute_script("window.__noReload = true")  # gone if the page reloads

        # A simulated slope: the warning appears in the open page, unacknowledged first.
        yellow_slope(mosquitto.url)
        card = wait('.warning[data-site="BSH"][data-status="unacknowledged"]', 60, "the BSH warning to appear live")
        assert card.get_attribute("data-level") == "2" and driver.execute_script("return window.__noReload") is True
        assert "白水河滑坡" in card.text

        # The site page: disaster-prevention card, charts, escalation running.
        card.click()
        wait('#esc-state[data-state="running"]', 20, "the escalation banner")
        card_text = driver.find_element(By.ID, "card").text
        for expected in ("412", "白水河村委会", "白水河村小学操场", "王建国"):
            assert expected in card_text
        wait('.chart[data-chart="displacement"] svg polyline', 20, "the displacement chart")
        wait('.chart[data-chart="velocity"] svg polyline', 20, "the velocity chart")
        wait('#devices tr[data-device="BSH-EXT1"]', 20, "device health")

        # Nobody has acknowledged: the province is told, live, in the timeline.
        wait('#timeline li.tl-note[data-kind="escalation"][data-admin="420000"]', ACK_S + 30, "the escalation to the province in the timeline")

        # One deliberate action: a dialog, and the note is required.
        driver.find_element(By.ID, "ack-open").click()
        wait("#ack-dialog[open]", 10, "the ack dialog")
        driver.find_element(By.ID, "ack-name").clear()
        driver.find_element(By.ID, "ack-name").send_keys("王值班 Wang")
        driver.execute_script("document.getElementById('ack-note').removeAttribute('required')")  # let the page's own check answer
        driver.find_element(By.ID, "ack-confirm").click()
        assert driver.find_element(By.ID, "ack-error").text  # refused without a note
        assert driver.find_elements(By.CSS_SELECTOR, "#ack-dialog[open]")
        driver.find_element(By.ID, "ack-note").send_keys("巡查员已出发，群众已通知 patrol sent, residents warned")
        driver.find_element(By.ID, "ack-confirm").click()

        wait('#esc-state[data-state="stopped"]', 30, "the escalation stopped banner")
        wait('#timeline li.tl-entry[data-rule="ack"]', 10, "the ack in the timeline")
        # by is the token's name (the identity the API signs for); the name typed is kept with the note.
        assert "zigui-duty" in driver.find_element(By.ID, "esc-state").text
        assert "王值班 Wang" in driver.find_element(By.CSS_SELECTOR, '#timeline li.tl-entry[data-rule="ack"]').text

        # Longer than a deadline: no escalation to national appears.
        time.sleep(ACK_S * 1.5)  # waiting for something NOT to happen: only time can tell
        assert driver.find_elements(By.CSS_SELECTOR, '#timeline li.tl-note[data-kind="escalation"][data-admin="100000"]') == []
        assert len(driver.find_elements(By.CSS_SELECTOR, '#timeline li.tl-note[data-kind="escalation"]')) == 1
        assert driver.find_element(By.ID, "esc-state").get_attribute("data-state") == "stopped"

        # English labels on request.
        driver.find_element(By.ID, "lang").click()
        wait('#esc-state[data-state="stopped"]', 5, "the banner after the language switch")
        assert "Escalation stopped" in driver.find_element(By.ID, "esc-state").text
        assert "Disaster-prevention card" in driver.find_element(By.ID, "card").text
        driver.find_element(By.ID, "lang").click()  # back to Chinese for the screenshot

        # The whole session ran under the policy without breaking it (the charts' legend colours
        # included) ...
        assert driver.execute_script("return window.__csp") == [], "the console broke its own Content-Security-Policy"

        # The artifact, and the README's picture.
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1440, min(max(int(height), 1200), 2400))
        wait('.chart[data-chart="displacement"] svg polyline', 10, "the charts after resizing")
        shot = tmp_path / "console.png"
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000
        if os.environ.get("GEOWARN_UPDATE_SCREENSHOT") == "1":
            docs = REPO / "docs"
            docs.mkdir(exist_ok=True)
            shutil.copyfile(shot, docs / "console.png")

        # ... and the policy is really in force: an inline style attribute is refused and reported.
        driver.execute_script("document.body.setAttribute('style', 'outline: 3px solid red')")
        WebDriverWait(driver, 5, poll_frequency=0.1).until(lambda d: d.execute_script("return window.__csp.length") > 0)
        assert driver.execute_script("return window.__csp")[0].startswith("style-src")
    finally:
        driver.quit()

    # The acknowledgement went through the API: audited under the officer's token.
    assert any(a.who == "zigui-duty" and a.action == "POST /api/warnings/{warning_id}/ack" and a.outcome == "ok" for a in console.audit())


# -- issue 16 item 6: the console for a duty officer ---------------------------------------------

SPIKE_MM = 190_000.0
#: Every time the page shows, with its zone: "… 17:30:05 Beijing time (UTC+8)" (the console's
#: clock()), "… 17:30 (Beijing time, UTC+8)" (alerts.texts.local_time), "…Z" (an engine detail).
TIME = r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(?::\d\d)?"
ZONED = r"(?: (?:北京时间|Beijing time) \(UTC[+-]\d+(?::\d\d)?\)| \((?:北京时间 |Beijing time, )UTC[+-]\d+(?::\d\d)?\)|Z)"


def accelerating_site(url: str, t_f: float) -> dict[str, list[float]]:
    """BSH as a slope that accelerated to a failure ``t_f`` (already past): its extensometer on
    Voight's law (α = 2, 10 mm/day ten days before, 0.5 mm of reading noise) up to a day before
    ``t_f`` (100 mm/day: orange, with a failure forecast); over its last three days GNSS1 with
    3 mm of noise and one reading of 190 000 mm on disp_e, and a rain gauge, dry but for a
    shower. Returns what was published per channel (the spike apart), for the charts' bounds."""
    import numpy as np
    from geowarn.simulators.slope import VoightFailure

    slope = VoightFailure(t_f - 10 * 86400, t_f, alpha=2.0, v0_mm_day=10.0, creep_mm_day=0.0)
    times = np.arange(t_f - 10 * 86400, t_f - 86400, 600.0)
    rng = np.random.default_rng(16)
    sent: dict[str, list[float]] = {"ext": [], "gnss": [], "rain": [], "ext_inv_v": []}
    recent = len(times) - 3 * 144  # the charts show the last 72 h
    pub = publisher(url, client_id=f"accel-{time.monotonic_ns()}")
    try:
        for i, t in enumerate(times):
            t = int(t)
            d = float(slope.displacement(float(t))) + float(rng.normal(0.0, 0.5))
            info = pub.publish("geowarn/BSH/BSH-EXT1/data", json.dumps({"v": 1, "device": "BSH-EXT1", "seq": i, "readings": [{"ch": "disp", "t": t, "v": d}]}).encode(), qos=1)
            if i < recent:
                continue
            sent["ext"].append(d)
            sent["ext_inv_v"].append(1.0 / float(slope.velocity(float(t))))  # d/mm, the slope's own
            enu = [float(x) for x in rng.normal(0.0, 3.0, 3)]
            sent["gnss"].extend(enu)
            if i == recent + 200:
                enu[0] = SPIKE_MM
            pub.publish("geowarn/BSH/BSH-GNSS1/data", json.dumps({"v": 1, "device": "BSH-GNSS1", "seq": i, "readings": [
                {"ch": ch, "t": t, "v": v} for ch, v in zip(("disp_e", "disp_n", "disp_u"), enu)]}).encode(), qos=1)
            rain = 1.5 if recent + 100 <= i < recent + 106 else 0.0
            sent["rain"].append(rain)
            pub.publish("geowarn/BSH/BSH-RG1/data", json.dumps({"v": 1, "device": "BSH-RG1", "seq": i, "readings": [{"ch": "rain", "t": t, "v": rain}]}).encode(), qos=1)
        info.wait_for_publish(30)
    finally:
        pub.disconnect()
        pub.loop_stop()
    return sent


@pytest.mark.parametrize("failed_h", [12.0, -24.0], ids=["forecast-past", "forecast-pending"])
def test_a_duty_officer_reads_drill_zone_past_forecast_robust_charts_and_the_next_action(tmp_path, console: Console, mosquitto, failed_h):
    """Issue 16 item 6 in English mode: a drill unmistakable (row, page, dialog, tab title,
    hatched), every time with its zone, a forecast failure time already past marked as past,
    the charts' axes robust to a 190 000 mm spike and GNSS noise in 1/v (rain from 0), and the
    next action in one sentence at the top of the warning, naming the shelter. The slope
    failed ``failed_h`` hours ago (its forecast, made a day and more before, some hours after
    that: past); with a failure still to come the forecast counts down instead."""
    import re

    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    from test_console_zh import drill_slope

    t_f = time.time() - failed_h * 3600
    sent = accelerating_site(mosquitto.url, t_f)
    drill_slope(mosquitto.url)
    api = console.client(console.zigui)

    def both():
        ws = [w for w in api.get("/api/warnings").json() if w["active"]]
        real = next((w for w in ws if w["site"] == "BSH" and not w["exercise"] and (w.get("forecast") or {}).get("failure_time")), None)
        drill = next((w for w in ws if w["site"] == "BZM" and w["exercise"]), None)
        return (real, drill) if real and drill else None

    real, drill = wait_for(both, 90, "a real BSH warning with a forecast and a BZM drill", console.daemon)
    # The API: the forecast is past or to come as the slope was built, and the next action
    # leads with "acknowledge now" and names the card's route and shelter.
    past = failed_h > 0
    assert (real["forecast"]["failure_time"] < time.time()) is past
    assert real["status"] == "unacknowledged"
    assert real["next_action"]["en"].startswith("Acknowledge now, then: ")
    assert "Baishuihe primary school playground" in real["next_action"]["en"] and "白水河村小学操场" in real["next_action"]["zh"]
    assert real["next_action"]["zh"].startswith("立即确认预警")
    assert drill["next_action"]["zh"].startswith("【演练】") and "演练" in drill["next_action"]["en"]

    driver = _browser(tmp_path)
    try:
        def wait(css: str, timeout: float, what: str):
            try:
                return WebDriverWait(driver, timeout, poll_frequency=0.2).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))
            except TimeoutException as exc:
                driver.save_screenshot(str(tmp_path / "failure.png"))
                raise AssertionError(f"timed out waiting for {what} ({css}); screenshot {tmp_path / 'failure.png'}") from exc

        def zoned_everywhere(where: str) -> int:
            text = driver.execute_script("return document.body.innerText")
            times = re.findall(TIME, text)
            unzoned = [m.group(0) for m in re.finditer(TIME + r"(?!:\d)" + f"(?!{ZONED})", text)]
            assert not unzoned, f"{where}: times without a zone: {unzoned}"
            return len(times)

        driver.get(console.base + "/")
        wait("#login-token", 20, "the sign-in form")
        driver.execute_script("localStorage.setItem('geowarn.lang', 'en')")
        driver.get(console.base + "/")
        wait("#login-token", 20, "the sign-in form in English")
        driver.find_element(By.ID, "login-token").send_keys(console.zigui)
        driver.find_element(By.ID, "login-submit").click()
        drill_card = wait('.warning[data-site="BZM"][data-exercise="true"]', 20, "the drill")
        wait('.warning[data-site="BSH"][data-exercise="false"]', 20, "the real warning")

        # The drill: in its row, its site row, the banner, the tab's title, hatched not only coloured.
        assert "DRILL" in drill_card.find_element(By.CSS_SELECTOR, ".title").text
        assert "DRILL" in driver.find_element(By.CSS_SELECTOR, '#sites tr[data-site="BZM"]').text
        assert "DRILL" in driver.find_element(By.ID, "drill-banner").text
        assert "DRILL" in driver.title and "DRILL" not in driver.find_element(By.CSS_SELECTOR, '.warning[data-site="BSH"] .title').text
        hatch = driver.execute_script("return getComputedStyle(arguments[0]).backgroundImage", drill_card)
        assert "repeating-linear-gradient" in hatch
        assert driver.execute_script("return getComputedStyle(arguments[0]).backgroundImage",
                                     driver.find_element(By.CSS_SELECTOR, '.warning[data-site="BSH"]')) == "none"
        # The dialog: title and button say DRILL.
        drill_card.find_element(By.CSS_SELECTOR, ".ack-btn").click()
        wait("#ack-dialog[open]", 10, "the drill's ack dialog")
        assert "DRILL" in driver.find_element(By.ID, "ack-title").text
        assert "DRILL" in driver.find_element(By.ID, "ack-confirm").text
        assert "DRILL" in driver.find_element(By.ID, "ack-drill").text
        zoned_everywhere("the list with the drill dialog")
        driver.find_element(By.ID, "ack-cancel").click()
        # The real warning's dialog does not.
        driver.find_element(By.CSS_SELECTOR, '.warning[data-site="BSH"] .ack-btn').click()
        wait("#ack-dialog[open]", 10, "the real ack dialog")
        assert "DRILL" not in driver.find_element(By.ID, "ack-title").text and "DRILL" not in driver.find_element(By.ID, "ack-confirm").text
        driver.find_element(By.ID, "ack-cancel").click()
        assert zoned_everywhere("the list") >= 3  # raised times of both warnings, the sites' latest readings

        # The drill's page: marked at the top.
        driver.execute_script("location.hash = '#/site/BZM'")
        panel = wait('.warning-panel[data-exercise="true"]', 20, "the drill's page")
        assert "DRILL" in panel.text and "DRILL" in driver.title

        # The real site's page: the next action first, naming the shelter; the forecast past.
        driver.execute_script("location.hash = '#/site/BSH'")
        panel = wait('.warning-panel[data-exercise="false"] .next-action', 20, "the next action")
        first = driver.execute_script("return document.querySelector('.warning-panel').firstElementChild")
        assert first.get_attribute("class") == "next-action"
        assert first.text.startswith("Next: Acknowledge now") and "Baishuihe primary school playground" in first.text
        forecast = driver.find_element(By.CSS_SELECTOR, ".warning-panel .forecast-line")
        if past:
            assert forecast.get_attribute("data-forecast") == "past"
            assert re.search(r"forecast time passed \d+ h \d+ min ago", forecast.text), forecast.text
        else:  # a countdown, ticking with the page's clock
            assert forecast.get_attribute("data-forecast") == "pending"
            before = forecast.text
            assert re.search(r"^forecast failure time .* \(in \d+ h \d+ min\)$", before), before
            # The page redraws the line as it ticks: a line found just before a redraw is stale.
            WebDriverWait(driver, 150, poll_frequency=1, ignored_exceptions=(StaleElementReferenceException,)).until(
                lambda d: d.find_element(By.CSS_SELECTOR, ".warning-panel .forecast-line").text != before)
        wait('.chart[data-chart="rain"][data-y0]', 30, "the charts")
        wait('#timeline li.tl-entry[data-rule="raise"]', 20, "the timeline")
        assert zoned_everywhere("the site page") >= 4

        # The charts' axes, as the page computed them: the spike and the noise beyond them.
        axis = {c: {k: float(driver.find_element(By.CSS_SELECTOR, f'.chart[data-chart="{c}"]').get_attribute(f"data-{k}")) for k in ("y0", "y1", "clipped")}
                for c in ("displacement", "velocity", "inverse_velocity", "rain")}
        shown = sent["ext"] + sent["gnss"]
        lo, hi = min(shown), max(shown)
        d = axis["displacement"]
        assert lo - 0.1 * (hi - lo) <= d["y0"] <= lo and hi <= d["y1"] <= hi + 0.1 * (hi - lo), (d, lo, hi)
        assert d["clipped"] == 1  # the 190 000 mm reading, drawn at the edge
        assert driver.find_elements(By.CSS_SELECTOR, '.chart[data-chart="displacement"] polygon.clipped[data-value="190000"]')
        v = axis["velocity"]  # 3 mm of GNSS noise over a 6 h window, a slope at most ~12 mm/day
        assert -200 < v["y0"] < 0 < v["y1"] < 200, v
        inv = axis["inverse_velocity"]
        # 1/v: from 0, and on the scale of the slope's own 1/v (≤ 0.04 d/mm over these 72 h), not
        # of the GNSS noise's (v near 0: 1/v in the thousands).
        assert inv["y0"] == 0 and 0.5 * max(sent["ext_inv_v"]) <= inv["y1"] <= 3 * max(sent["ext_inv_v"]), (inv, max(sent["ext_inv_v"]))
        r = axis["rain"]
        assert r["y0"] == 0 and max(sent["rain"]) <= r["y1"] <= 2 * max(sent["rain"]) and r["clipped"] == 0, r
        driver.save_screenshot(str(tmp_path / "console-item6.png"))
        driver.execute_script("document.getElementById('charts').scrollIntoView()")
        driver.save_screenshot(str(tmp_path / "console-item6-charts.png"))

        # Acknowledged (through the API): the next action says what is still owed, the orange
        # warning's quick report and when it is due, in the zone; live, on the open page.
        done = api.post(f"/api/warnings/{real['id']}/ack", json={"name": "Wang", "note": "patrol sent"})
        assert done.status_code == 200, done.text
        after = api.get(f"/api/warnings/{real['id']}").json()
        task = next(r for r in after["reports"] if r["submitted"] is None)
        assert after["status"] == "acknowledged"
        assert after["next_action"]["en"].startswith(f"Acknowledged: quick report {task['task_id']} due by ")
        assert re.search(TIME + ZONED + "; keep going: watch round the clock", after["next_action"]["en"]), after["next_action"]["en"]
        assert after["next_action"]["zh"].startswith(f"已确认：速报 {task['task_id']} 须于 ")
        WebDriverWait(driver, 20, poll_frequency=0.2).until(
            lambda d: (d.execute_script("const e = document.querySelector('.warning-panel .next-action'); return e ? e.textContent : ''")
                       .startswith("Next: Acknowledged: quick report")))
        zoned_everywhere("the site page, acknowledged")
    finally:
        driver.quit()
