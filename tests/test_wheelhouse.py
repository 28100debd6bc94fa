"""The offline install (issue 16, item 2): ``scripts/wheelhouse`` puts GeoWarn and every package
it needs into one folder, and a fresh virtualenv installs from it with no index at all — what
an air-gapped government network gets. The installed package then has its data files (example
registry and roster, scenarios, the CAP schema, the console's assets) and its commands work.

Building the wheelhouse needs PyPI (or the pip cache), like ./scripts/test's own install.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from daemonproc import REPO

pytestmark = pytest.mark.slow


def test_the_wheelhouse_installs_with_no_index_and_runs(tmp_path):
    house = tmp_path / "wheelhouse"
    built = subprocess.run([str(REPO / "scripts" / "wheelhouse"), str(house)], capture_output=True, text=True, timeout=900,
                           env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert built.returncode == 0, built.stderr[-3000:]
    wheels = sorted(p.name for p in house.glob("*.whl"))
    assert any(w.startswith("geowarn-") for w in wheels), wheels
    for dep in ("paho_mqtt", "numpy", "scipy", "influxdb_client", "pydantic_settings", "fastapi", "lxml"):
        assert any(w.lower().startswith(dep) for w in wheels), (dep, wheels)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py, exe = env_dir / "bin" / "python", env_dir / "bin" / "geowarn"
    # --no-index: nothing may come from anywhere but the wheelhouse.
    inst = subprocess.run([str(py), "-m", "pip", "install", "--no-index", "--find-links", str(house), "geowarn"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert inst.returncode == 0, inst.stdout[-2000:] + inst.stderr[-2000:]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              env={"PATH": "/usr/bin:/bin", "GEOWARN_DATA_DIR": str(tmp_path / "data")})

    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("geowarn "), version
    checked = run("check-config")
    assert checked.returncode == 0 and "3 sites" in checked.stdout, checked.stdout + checked.stderr
    listed = run("simulate", "--list")
    assert listed.returncode == 0 and "failure" in listed.stdout, listed.stderr
    files = subprocess.run([str(py), "-c", (
        "import importlib.resources as r;"
        "print(r.files('geowarn.console').joinpath('web/index.html').is_file(),"
        " r.files('geowarn.alerts').joinpath('schemas/CAP-v1.2-schema.xsd').is_file())")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert files.stdout.split() == ["True", "True"], files
    # The lighter install has no matplotlib (the "plots" extra): replay still works and says
    # why there are no PNGs; plot says what to install.
    assert not any(w.lower().startswith("matplotlib") for w in wheels), wheels
    feed = tmp_path / "feed.csv"
    assert run("simulate", "--scenario", "failure", "--duration", "1d", "--out", str(feed), "--no-progress").returncode == 0
    replayed = run("replay", str(feed), "--out", str(tmp_path / "out"))
    assert replayed.returncode == 0 and "geowarn[plots]" in replayed.stderr, replayed.stderr
    plotted = run("plot", str(feed), "--site", "BSH", "--out", str(tmp_path / "p.png"))
    assert plotted.returncode == 1 and "geowarn[plots]" in plotted.stderr, plotted.stderr
    # It is the wheelhouse's copy, not this checkout, that ran.
    where = subprocess.run([str(py), "-c", "import geowarn.service.cli as m; print(m.__file__)"], capture_output=True, text=True, cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(env_dir), where.stdout
