"""benchmarks/nodered.py end to end in its --quick mode: a real Mosquitto, a real ``geowarn run``
and a real headless Node-RED draining the same simulated backlog.

Node-RED comes from npm into a cache folder outside the repository (``./scripts/test`` installs
it there when it is missing; ``GEOWARN_NODERED_DIR`` moves it). Its absence is a failure, not a
skip: the benchmark's figures in BENCHMARKS.md must stay reproducible.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from nodered import nodered_dir, nodered_script, nodered_version


@pytest.mark.timeout(240)
def test_quick_run_drains_the_same_backlog_through_both(tmp_path: Path) -> None:
    base = nodered_dir()
    assert nodered_version(base) is not None and nodered_script(base).exists(), (
        f"Node-RED is not installed in {base}: run ./scripts/test (it installs node-red@4 there with npm) "
        "or `python3 benchmarks/nodered.py --install`"
    )
    out = tmp_path / "run.json"
    md = tmp_path / "run.md"
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "nodered.py"), "--quick", "--no-install",
         "--workdir", str(tmp_path / "work"), "--json", str(out), "--markdown", str(md)],
        cwd=REPO, capture_output=True, text=True, timeout=220, check=False,
    )
    # Exit 0 means the benchmark's own checks held: Node-RED counted exactly the N messages and
    # every reading, GeoWarn's journal holds every reading and status and no dead letter, the
    # broker had nothing left to redeliver to either session, and both flagged only the marker.
    assert r.returncode == 0, f"benchmark failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    doc = json.loads(out.read_text())
    assert doc["node_red"] == nodered_version(base)
    drains = {d["side"]: d for d in doc["drains"]}
    assert set(drains) == {"geowarn", "node-red"} and len(doc["drains"]) == 2
    for side, d in drains.items():
        assert d["messages"] == doc["messages"], side
        assert 0 < d["seconds"] <= d["from_launch_s"], side
        assert math.isfinite(d["rate"]) and d["rate"] > 0, side
        assert d["cpu_s"] > 0, side
    # The marker reads 200 mm against 50 / 100 / 150: a bare threshold compare says red (4);
    # GeoWarn raises the site, and holds a one-device red at yellow until a second device confirms.
    assert drains["node-red"]["level"] == 4
    assert drains["geowarn"]["level"] >= 2
    assert 0 < drains["geowarn"]["journal_s"] <= drains["geowarn"]["seconds"] + 0.2  # polled every 50 ms
    text = md.read_text()
    assert "GeoWarn ÷ Node-RED (msg/s)" in text and f"Node-RED {doc['node_red']}" in text
