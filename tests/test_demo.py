"""`geowarn demo` as a user runs it: from another directory, with no broker configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_shows_red_for_the_failing_slope_and_nothing_for_stable_ones(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOWARN_")}
    data = tmp_path / "demo-data"
    proc = subprocess.run(
        [sys.executable, "-m", "geowarn.service.cli", "demo", "--duration", "15", "--data-dir", str(data)],
        cwd=tmp_path,  # any working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "embedded broker" in proc.stdout
    assert "RED" in proc.stdout and "警报级" in proc.stdout
    events = [json.loads(line) for line in (data / "alerts.jsonl").read_text().splitlines()]
    bsh = [e for e in events if e["site"] == "BSH"]
    levels = [e["level"] for e in bsh]
    # The failing slope climbs through the levels and ends red; the stable sites stay quiet.
    assert levels[-1] == 4
    assert levels.index(3) < levels.index(4)
    assert {e["site"] for e in events} == {"BSH"}
    # The two hostile messages the demo sends were dead-lettered, and nothing else was.
    assert "dead letters 2 " in proc.stdout
    assert "messages" in proc.stdout and "readings stored" in proc.stdout
