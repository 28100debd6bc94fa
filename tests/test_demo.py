"""`geowarn demo` as a user runs it: from another directory, with no broker configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from daemonproc import REPO

REPO_CONFIG = REPO / "config"

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


def _demo(args: list[str], cwd, env, duration: float = 12) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "geowarn.service.cli", "demo", "--duration", str(duration), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=150)


def test_demo_twice_on_one_directory_and_without_one_leaves_nothing_behind(tmp_path):
    """Issue 16, rough edge 4: a second run on the same --data-dir starts afresh and succeeds;
    without --data-dir the temporary folder is removed; the demo says what its first two dead
    letters are and where the console is, and stops once the failing site is red."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOWARN_")} | {"TMPDIR": str(tmp), "GEOWARN_HTTP": "off"}
    # Slow enough (40 s for 14 days) that red arrives with simulated days still to go.
    first = _demo([], tmp_path, env, duration=40)
    assert first.returncode == 0, first.stdout + first.stderr
    assert not [p for p in tmp.iterdir() if p.name.startswith("geowarn-demo-")], list(tmp.iterdir())
    assert "data removed" in first.stdout
    out = first.stdout
    assert "two malformed messages on purpose" in out and out.index("on purpose") < out.index("dead letter:")
    assert "stopping the simulation here" in out

    data = tmp_path / "d"
    runs = [_demo(["--data-dir", str(data)], tmp_path, env) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "dead letters 2 " in r.stdout and "clock may be wrong" not in r.stdout, r.stdout
    assert "cleared the previous demo run" in runs[1].stdout
    stored = [int(r.stdout.split("readings stored ")[1].split(",")[0]) for r in runs]
    assert stored[1] <= stored[0] * 1.2, stored  # not the first run's readings plus the second's

    # A directory that is not a demo's is never written into.
    real = tmp_path / "real"
    real.mkdir()
    (real / "journal.sqlite").write_bytes(b"precious")
    refused = _demo(["--data-dir", str(real)], tmp_path, env)
    assert refused.returncode == 2 and "not a demo's data directory" in refused.stdout
    assert (real / "journal.sqlite").read_bytes() == b"precious"


def test_demo_says_where_its_console_is(tmp_path):
    from services import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOWARN_")} | {"GEOWARN_HTTP": f"127.0.0.1:{port}"}
    r = _demo(["--data-dir", str(tmp_path / "d")], tmp_path, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"console: http://127.0.0.1:{port}/" in r.stdout


def test_demo_never_runs_on_a_deployments_configuration(tmp_path):
    """A demo on a host where GeoWarn is installed must not simulate a failure at a real site
    and send its red to real duty officers (review of issue 16): it ignores ./geowarn.toml and
    GEOWARN_SITES / GEOWARN_ROSTER and runs on the bundled examples."""
    real_sites = tmp_path / "sites.toml"
    real_sites.write_text((REPO_CONFIG / "sites.example.toml").read_text().replace('site = "BSH"', 'site = "REAL"'))
    (tmp_path / "geowarn.toml").write_text(f'sites = "{real_sites}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOWARN_")} | {
        "GEOWARN_HTTP": "off", "GEOWARN_SITES": str(real_sites), "GEOWARN_CONFIG": str(tmp_path / "geowarn.toml")}
    r = _demo(["--data-dir", str(tmp_path / "d")], tmp_path, env, duration=10)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "site BSH" in r.stdout and "REAL" not in r.stdout, r.stdout
