"""Plots: a PNG per site after a replay, and `geowarn plot` for a quick look.

PNG files are checked from their bytes: the signature, the IHDR chunk's width and height
(the figure size times the dpi, worked out here), and a size that only a drawn figure has.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from geowarn.config.registry import load_registry
from daemonproc import REPO
from geowarn.ingest.feeds import read_feed
from geowarn.service.replay import replay_rows
from geowarn.simulators.engine import Simulation
from geowarn.simulators.plots import fukuzono_fit, rolling_velocity
from geowarn.simulators.publish import write_feed, write_truth
from geowarn.simulators.scenario import parse_scenario

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDTH, HEIGHT = 11 * 90, 10 * 90  # figsize (11 in, 10 in) at 90 dpi


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def short_failure(tmp_path_factory):
    """A 3-day failure of BSH (the example registry), written as a CSV feed with its truth."""
    d = tmp_path_factory.mktemp("plots")
    sc = parse_scenario(
        {"name": "short", "duration": "3d", "seed": 2, "slopes": [{"site": "BSH", "model": "voight", "failure_at": "2d 20h", "alpha": 2.0}], "storms": [{"at": "12h", "duration_h": 6.0}]},
        "<test>",
    )
    sim = Simulation(sc, sc.registry())
    feed = d / "short.csv"
    write_feed(sim, feed)
    write_truth(sim, feed)
    return feed, sc.registry(), sim.failures["BSH"]


def test_replay_writes_a_png_per_site(short_failure, tmp_path):
    feed, registry, _ = short_failure
    out = tmp_path / "out"
    replay_rows(list(read_feed(feed)), registry, out)
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["BSH.png", "BZM.png", "XK.png"]
    for p in (out / "plots").glob("*.png"):
        assert _png_size(p) == (WIDTH, HEIGHT)
        assert p.stat().st_size > 20_000  # four drawn panels, not an empty canvas


def test_replay_can_skip_the_plots(short_failure, tmp_path):
    feed, registry, _ = short_failure
    replay_rows(list(read_feed(feed)), registry, tmp_path / "out", plots=False)
    assert not (tmp_path / "out" / "plots").exists()


def test_plot_command_draws_one_site(short_failure, tmp_path):
    feed, registry, _ = short_failure
    sites = tmp_path / "sites.toml"
    sites.write_bytes(open(registry.source, "rb").read())
    out = tmp_path / "bsh.png"
    proc = subprocess.run([sys.executable, "-m", "geowarn.service.cli", "plot", str(feed), "--site", "BSH", "--sites", str(sites), "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _png_size(out) == (WIDTH, HEIGHT) and out.stat().st_size > 20_000
    bad = subprocess.run([sys.executable, "-m", "geowarn.service.cli", "plot", str(feed), "--site", "NOPE", "--sites", str(sites)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "NOPE" in bad.stderr


def test_rolling_velocity_is_the_least_squares_slope():
    t = np.arange(0, 2 * 86400.0, 600.0)
    x = 3.0 * t / 86400.0 + 5.0  # 3 mm/day
    v = rolling_velocity(t, x, 6 * 3600.0)
    assert np.isnan(v[:2]).all()
    assert np.allclose(v[2:], 3.0)


def test_fukuzono_fit_recovers_the_failure_time_of_alpha_2():
    # alpha = 2 without creep: 1/v = A (t_f - t) exactly.
    t_f = 10 * 86400.0
    t = np.arange(0.0, t_f - 3600.0, 600.0)
    v = 1.0 / (0.5 * (t_f - t) / 86400.0)
    fit = fukuzono_fit(t, v)
    assert fit is not None
    assert fit[3] == pytest.approx(t_f, abs=60.0)
    assert fukuzono_fit(t, np.full_like(t, 2.0)) is None  # steady: no forecast


def test_failure_truth_is_in_the_truth_file(short_failure):
    feed, _, t_f = short_failure
    truth = json.loads(open(str(feed) + ".truth.json").read())
    assert truth["failures_epoch"]["BSH"] == t_f
