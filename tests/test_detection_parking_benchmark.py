"""benchmarks/detection_parking.py in a small run: the three variants measured, and what must
hold whatever the machine's load: a parking fusion holds a fraction of the bytes of one that
never parks, one that spills a fraction of that again, with most channels parked, and the
same number of readings judged."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_small_run_reports_both_variants_and_parking_holds_less(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "detection_parking.py"), "--devices", "25", "--hours", "0.5", "--warm-h", "6",
                        "--rounds", "1", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    spill, park, never = doc["memory"]["spill"], doc["memory"]["park"], doc["memory"]["never"]
    assert spill["readings"] == park["readings"] == never["readings"] == 25 * 4 * 3  # 25 devices, 4 channels, 3 ten-minute steps
    for x in doc["rounds"]["spill"] + doc["rounds"]["park"] + doc["rounds"]["never"]:
        assert math.isfinite(x["judge_us"]) and x["judge_us"] > 0 and math.isfinite(x["save_us"]) and x["save_us"] > 0
    assert never["live"] == never["channels"] == 100
    assert park["live"] < park["channels"]  # some parked (how many depends on where the last saves fell)
    assert park["bytes_per_channel"] < never["bytes_per_channel"] * 0.75  # (a fleet this small: its fixed costs weigh)
    # Spilled and parked as judged: no channel live, their texts in the journal's file.
    assert spill["live"] == 0 and spill["spilled"] > spill["channels"] / 2
    assert spill["bytes_per_channel"] < park["bytes_per_channel"] * 0.6
    for label in ("| park after 30 s, spilled (texts saved apart) |", "| park after 30 s, texts in memory |", "| never park |"):
        assert label in r.stdout
