"""Alerting rules for the daemon's own health (issue 16, item 3).

``deploy/prometheus/geowarn-alerts.yml`` must pass ``promtool check rules`` and its own unit
tests (``promtool test rules``: each alert fires on the series it is about and not on a
healthy daemon's), and every GeoWarn metric a rule reads must be one a real daemon exposes —
a misspelt name would make the alert silently never fire.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemonproc import REPO, Daemon
from services import free_port

RULES_DIR = REPO / "deploy" / "prometheus"
RULES = RULES_DIR / "geowarn-alerts.yml"

#: Metrics a healthy daemon does not expose, with why (the rule is still right).
ONLY_ON_TROUBLE = {
    "geowarn_metrics_read_errors": "emitted only by a scrape that could not read a SQLite file",
    "geowarn_notifications": "has samples only once a notification was queued (by notifier and state)",
}


def _promtool() -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool missing (Debian package prometheus; ./scripts/test installs it)"
    return tool


def test_the_rules_pass_promtool_check():
    r = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"SUCCESS: \d+ rules found", r.stdout), r.stdout


def test_the_rules_pass_their_unit_tests():
    r = subprocess.run([_promtool(), "test", "rules", "geowarn-alerts.test.yml"], cwd=RULES_DIR, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_promtool_would_catch_a_broken_rule(tmp_path):
    """The checks above can fail: a rule with a PromQL syntax error is refused."""
    bad = tmp_path / "bad.yml"
    bad.write_text(RULES.read_text().replace("geowarn_mqtt_connected == 0", "geowarn_mqtt_connected == == 0", 1))
    r = subprocess.run([_promtool(), "check", "rules", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, r.stdout


def _rule_metrics() -> set[str]:
    names = set(re.findall(r"\bgeowarn_[a-z_]+", "\n".join(x for x in RULES.read_text().splitlines() if "expr:" in x)))
    return names


@pytest.mark.slow
def test_every_metric_a_rule_reads_is_exposed_by_a_running_daemon(tmp_path, mosquitto, victoria):
    port = free_port()
    env = {
        "GEOWARN_HTTP": f"127.0.0.1:{port}",
        "GEOWARN_INFLUX_URL": victoria.url,
        "GEOWARN_INFLUX_TOKEN": "t",
        "GEOWARN_INFLUX_ORG": "geowarn",
        "GEOWARN_INFLUX_BUCKET": "geowarn",
    }
    d = Daemon(tmp_path / "data", mosquitto.url, extra_env=env)
    try:
        d.start()
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        d.terminate()
    finally:
        d.close()
    exposed = set()
    for fam in text_string_to_metric_families(text):
        # A family without samples yet (no notification queued so far) still declares its name.
        exposed |= {fam.name} | {s.name for s in fam.samples}
    wanted = _rule_metrics()
    assert len(wanted) >= 12, wanted
    missing = sorted(n for n in wanted - exposed if n not in ONLY_ON_TROUBLE)
    assert not missing, f"rules read metrics the daemon does not expose: {missing}"
    # Those it exposes only on trouble are at least the names the collector declares.
    source = (REPO / "console" / "metrics.py").read_text()
    assert all(f'"{n}"' in source for n in wanted & set(ONLY_ON_TROUBLE)), wanted & set(ONLY_ON_TROUBLE)
