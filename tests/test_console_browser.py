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

import os
import shutil
import time
from pathlib import Path

import pytest

from daemonproc import REPO
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
