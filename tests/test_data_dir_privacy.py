"""DATA_DIR holds the outbox (duty officers' phones and e-mails), notify/*.jsonl and the audit:
a real daemon started under the common umask 022 makes it, and everything in it, private."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from daemonproc import Daemon, publisher
from test_api import POLICY, yellow_slope

pytestmark = pytest.mark.slow


def _modes(root):
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}


def test_a_daemon_under_umask_022_keeps_its_data_dir_and_files_private(tmp_path, mosquitto):
    data = tmp_path / "data"  # not there yet: the daemon makes it
    old = os.umask(0o022)
    try:
        d = Daemon(data, mosquitto.url, extra_env={"GEOWARN_ALERT_POLICY": POLICY, "GEOWARN_HTTP": "off"})
        d.start()
    finally:
        os.umask(old)
    pub = publisher(mosquitto.url, client_id="privacy-test")
    try:
        yellow_slope(mosquitto.url)  # a warning: outbox, notify/*.jsonl, cap/*.xml, alerts.jsonl
        pub.publish("geowarn/ack", json.dumps({"id": "x", "by": "mallory"}).encode(), qos=1).wait_for_publish(10)  # an audit row
        d.wait_until(lambda: list((data / "notify").glob("*.jsonl")) and (data / "tokens.sqlite").exists(), 60, "notifications and the audit")
        time.sleep(1.0)
        d.terminate()
        modes = _modes(data)
        for name in ("outbox.sqlite", "journal.sqlite", "tokens.sqlite", "control.key", "alerts.jsonl", "cap", "notify"):
            assert name in modes, sorted(modes)
        assert modes["."] == 0o700
        assert {n: f"{m:04o}" for n, m in modes.items() if m & 0o077} == {}
    finally:
        pub.disconnect()
        pub.loop_stop()
        d.close()


def test_a_data_dir_others_may_read_is_warned_about_at_start(tmp_path, mosquitto):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    d = Daemon(data, mosquitto.url, extra_env={"GEOWARN_HTTP": "off"})
    try:
        d.start()
        line = next((x for x in d.log_tail(200).splitlines() if "data directory may be read by group or others" in x), "")
        assert "WARNING" in line and "mode=0755" in line and "chmod -R go=" in line, d.log_tail(40)
        assert stat.S_IMODE(data.stat().st_mode) == 0o755  # told, not changed behind the operator's back
    finally:
        d.close()
