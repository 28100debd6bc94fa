"""``benchmarks/latency.py --quick`` end to end: a real Mosquitto, a real ``geowarn run``, a real
webhook receiver; every probe reading must come back as a level change and as notifications.

The benchmark exits non-zero when a probe's level change or a first-tier notification never
came, when a probe site reached another level than yellow, or when a background site raised a
level; here its JSON is also checked probe by probe, so a run that measured nothing, or
produced an impossible time, fails the test.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_run_sees_every_probe(tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "latency.py"), "--quick", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    doc = json.loads(out.read_text(encoding="utf-8"))
    info, probes = doc["info"], doc["probes"]

    assert info["probes_missing"] == [] and info["false_raises"] == [] and info["probes_wrong_level"] == []
    assert info["probes"] == len(probes)
    # Each phase was probed, each probe on a site of its own.
    phases = {p["phase"] for p in probes}
    assert phases == {"steady", "burst", "recovery"}, phases
    assert len({p["site"] for p in probes}) == len(probes)
    # Two first-tier webhooks (county, city) per probe, at least: nothing else notifies.
    assert info["webhook_requests"] >= 2 * len(probes)

    for p in probes:
        for key in ("t_level", "t_notify", "t_notify_all", "t_received", "t_stored"):
            assert p[key] is not None, (key, p)
        lat = {k: p[k] - p["t_publish"] for k in ("t_level", "t_notify", "t_notify_all")}
        for k, x in lat.items():
            assert math.isfinite(x) and 0 < x < 600, (k, x, p)
        assert p["t_notify_all"] >= p["t_notify"], p
        # The daemon stamps the reading's arrival in whole milliseconds after it was published.
        assert p["t_received"] >= math.floor(p["t_publish"] * 1000) / 1000 - 0.001, p

    # The summary is built from those probes: ordered percentiles, per phase.
    for phase in ("steady", "burst", "recovery"):
        f = doc["figures"][phase]
        for what in ("level", "notify"):
            s = f[what]
            assert 0 < s["p50"] <= s["p99"] <= s["max"], (phase, what, s)
        assert f["probes"] == sum(1 for p in probes if p["phase"] == phase)
        assert f["published_msg_s"] > 0
