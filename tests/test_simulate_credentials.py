"""A simulated fleet against a locked-down broker (issue 16: the compose stack's broker is the
one `geowarn broker-config` writes, which accepts nothing but each device's own account).
`geowarn simulate --credentials devices.csv` publishes each device on its own connection;
without it the broker refuses the simulator. Real Mosquitto with the generated configuration,
a real daemon on the generated service account."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemonproc import REPO, Daemon
from services import Mosquitto, free_port

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"


def _env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GEOWARN_")} | extra


def _read_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def test_a_simulated_fleet_reaches_the_daemon_through_a_locked_broker_with_device_accounts(tmp_path):
    port = free_port()
    out = tmp_path / "broker"
    # As root, Mosquitto drops to its own user, which cannot enter pytest's private tmp folders:
    # the test broker keeps root (tests/test_broker_config.py does the same).
    user = ["--broker-user", "root"] if os.geteuid() == 0 else []
    made = subprocess.run([sys.executable, "-m", "geowarn.service.cli", "broker-config", "--out", str(out), "--listen", f"{HOST}:{port}", *user],
                          cwd=REPO, env=_env(GEOWARN_DATA_DIR=str(tmp_path / "d0")), capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    broker = Mosquitto(out, port=port, config_file=out / "mosquitto.conf")
    broker.start()
    env = _read_env(out / "geowarn.env")
    operator = _read_env(out / "operator.env")["GEOWARN_MQTT_URL"]
    d = Daemon(tmp_path / "data", env["GEOWARN_MQTT_URL"], client_id=env["GEOWARN_MQTT_CLIENT_ID"], presence_url=operator)
    try:
        d.start(timeout=60)
        sim = [sys.executable, "-m", "geowarn.service.cli", "simulate", "--scenario", "stable", "--duration", "2h",
               "--broker", f"mqtt://{HOST}:{port}", "--start", "now", "--speed", "inf", "--no-progress"]
        refused = subprocess.run(sim, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "refused" in refused.stderr, refused.stdout + refused.stderr
        done = subprocess.run([*sim, "--credentials", str(out / "devices.csv")], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        devices = {line.split(",")[0] for line in (out / "devices.csv").read_text().splitlines()[1:] if line}
        d.wait_until(lambda: {r[1] for r in d.readings()} == devices, 60, "readings of every device, each on its own account")
        d.terminate()
    finally:
        d.close()
        broker.stop()
