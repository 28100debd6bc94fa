"""The observation stack of deploy/ (issue 16, items 2 and 3), with the services started directly.

There is no container runtime in CI, so the compose file's services are started as they are
here: a real Mosquitto, a real VictoriaMetrics scraping the daemon's /metrics with
``deploy/victoriametrics/scrape.yml`` (its target pointed at the test's port) and taking the
readings through the InfluxDB write path, a real ``geowarn run``, and a simulated fleet
(scenario ``failure``: site BSH goes red). Then every query of every panel of the Grafana
dashboard is run against VictoriaMetrics' Prometheus API, as Grafana would, and must return
data — a panel whose query names a metric nobody writes would show "No data" forever. The
compose file itself is checked for what it must wire together.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from daemonproc import REPO, Daemon, publisher
from services import VictoriaMetrics, free_port

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "geowarn-overview.json"


def _targets() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p["targets"]]


def _query(vm: VictoriaMetrics, expr: str) -> list[dict[str, Any]]:
    # Grafana substitutes the "All" value of $site with the variable's allValue.
    r = httpx.get(f"{vm.url}/api/v1/query", params={"query": expr.replace("$site", ".*")}, timeout=10)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_the_compose_file_wires_broker_store_daemon_and_grafana():
    doc = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    services = doc["services"]
    assert {"mosquitto", "victoriametrics", "geowarn", "grafana", "broker-config"} <= set(services)
    # Every file a service mounts from the repository exists.
    base = DEPLOY / "compose"
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (base / src).exists(), f"{name} mounts {src}, which is not in the repository"
    vm_cmd = " ".join(services["victoriametrics"]["command"])
    assert "-promscrape.config=/etc/vm/scrape.yml" in vm_cmd
    env = services["geowarn"]["environment"]
    assert env["GEOWARN_INFLUX_URL"] == "http://victoriametrics:8428"
    assert services["mosquitto"]["depends_on"]["broker-config"]["condition"] == "service_completed_successfully"
    scrape = yaml.safe_load((DEPLOY / "victoriametrics" / "scrape.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["geowarn:8080"]
    # Grafana is provisioned with the datasource the dashboard's panels name.
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "geowarn.yml").read_text())["datasources"][0]
    assert ds["url"] == "http://victoriametrics:8428"
    uids = {t["datasource"]["uid"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]}
    assert uids == {ds["uid"]}
    # The demo fleet speaks to the locked-down broker with the device accounts broker-config made.
    fleet = services["fleet"]
    assert fleet["profiles"] == ["demo"] and "--credentials" in fleet["entrypoint"] and "/broker/devices.csv" in fleet["entrypoint"]
    for port in (p for svc in services.values() for p in svc.get("ports", [])):
        assert port.startswith("127.0.0.1:"), f"{port}: published beyond the host's loopback"


@pytest.mark.slow
def test_every_dashboard_query_shows_data_from_a_live_stack(tmp_path, mosquitto):
    http_port = free_port()
    scrape = yaml.safe_load((DEPLOY / "victoriametrics" / "scrape.yml").read_text())
    scrape["global"]["scrape_interval"] = "1s"
    scrape["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{http_port}"]
    scrape_file = tmp_path / "scrape.yml"
    scrape_file.write_text(yaml.safe_dump(scrape))
    vm = VictoriaMetrics(tmp_path / "vm", extra_args=[f"-promscrape.config={scrape_file}"])
    vm.start()
    d = Daemon(tmp_path / "data", mosquitto.url, extra_env={
        "GEOWARN_HTTP": f"127.0.0.1:{http_port}", "GEOWARN_INFLUX_URL": vm.url, "GEOWARN_INFLUX_TOKEN": "t",
        "GEOWARN_INFLUX_ORG": "geowarn", "GEOWARN_INFLUX_BUCKET": "geowarn",
    })
    try:
        d.start()
        sim = subprocess.run(
            [sys.executable, "-m", "geowarn.service.cli", "simulate", "--scenario", "failure", "--broker", mosquitto.url,
             "--start", "now", "--speed", "inf", "--no-progress"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
        assert sim.returncode == 0, sim.stderr[-2000:]
        pub = publisher(mosquitto.url, "test-bad-device")
        pub.publish("geowarn/BSH/BSH-EXT1/data", b"{not json", qos=1).wait_for_publish(10)
        pub.loop_stop()

        deadline = time.monotonic() + 120
        empty: list[tuple[str, str]] = _targets()
        while empty and time.monotonic() < deadline:
            time.sleep(2)  # scrapes every second and forwarding batches: poll the store
            empty = [(title, e) for title, e in _targets() if not _query(vm, e)]
        assert not empty, f"panels with no data from a live stack: {empty}\n{d.log_tail()}"

        levels = {r["metric"]["site"]: float(r["value"][1]) for r in _query(vm, "max by (site) (geowarn_site_warning_level)")}
        assert set(levels) == {"BSH", "BZM", "XK"}, levels
        assert levels["BSH"] >= 3 and levels["BZM"] == 0, levels  # the failing slope shows, the stable ones do not
        by_site = {r["metric"]["site"] for r in _query(vm, 'sum by (site) (count_over_time({__name__=~".+_value"}[2d]))')}
        assert by_site == {"BSH", "BZM", "XK"}, by_site  # (BSH failed 12 h before the end: a 2-day window)
        r = httpx.get(f"{vm.url}/api/v1/label/site/values", params={"match[]": "geowarn_site_warning_level"}, timeout=10).json()
        assert set(r["data"]) == {"BSH", "BZM", "XK"}, r  # the dashboard's $site variable
        d.terminate()
    finally:
        d.close()
        vm.stop()


def test_the_dashboard_is_valid_grafana_json():
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "geowarn-overview" and doc["panels"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        assert p["type"] == "timeseries" and p["targets"], p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
    titles = " ".join(p["title"].lower() for p in doc["panels"])
    for wanted in ("level", "by site", "by device", "online", "lag", "notification"):
        assert wanted in titles, wanted
    assert Path(DASHBOARD).name in {p.name for p in (DEPLOY / "grafana" / "dashboards").iterdir()}


def test_the_compose_broker_config_step_runs_as_written(tmp_path):
    """The compose file's broker-config step, run as it is written (its geowarn command), must
    succeed: with --broker-user 1883 it stopped ('broker user does not exist') and so did the
    whole stack behind it. The image has the mosquitto user (uid 1883); so has Debian."""
    import os
    import pwd
    import shlex

    doc = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    cmd = doc["services"]["broker-config"]["entrypoint"]
    script = cmd[-1] if cmd[:2] == ["sh", "-c"] else " ".join(cmd)
    argv = shlex.split(script.split("&&")[0])
    assert argv[:2] == ["geowarn", "broker-config"], argv
    assert "chown geowarn:geowarn /broker/geowarn.env" in script  # the daemon container's user reads it
    dockerfile = (DEPLOY / "container" / "Dockerfile").read_text()
    user = argv[argv.index("--broker-user") + 1]
    assert f"--uid 1883 --no-create-home --shell /usr/sbin/nologin {user}" in dockerfile
    if os.geteuid() != 0:
        pytest.fail("run as root (./scripts/test does in CI): broker-config gives files to the broker's user")
    pwd.getpwnam(user)  # Debian's mosquitto package made it
    out = tmp_path / "broker"
    argv = [a if a != "/broker" else str(out) for a in argv]
    r = subprocess.run([sys.executable, "-m", "geowarn.service.cli", *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**{k: v for k, v in os.environ.items() if not k.startswith("GEOWARN_")}, "GEOWARN_DATA_DIR": str(tmp_path / "d")})
    assert r.returncode == 0, r.stdout + r.stderr
    conf = (out / "mosquitto.conf").read_text()
    assert f"user {user}" in conf and "listener 1883 0.0.0.0" in conf, conf
    assert (out / "geowarn.env").is_file()
