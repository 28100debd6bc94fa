"""The rough edges a new user hit on the command line (issue 16, rough edges 8 and 9)."""

from __future__ import annotations

import os
import subprocess
import sys

from daemonproc import REPO


def _geowarn(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    base = {k: v for k, v in os.environ.items() if not k.startswith("GEOWARN_")}
    return subprocess.run([sys.executable, "-m", "geowarn.service.cli", *args], cwd=cwd or REPO, env=base | (env or {}),
                          capture_output=True, text=True, timeout=300)


def test_replay_of_a_simulated_feed_uses_the_registry_beside_it(tmp_path):
    feed = tmp_path / "feed.csv"
    sim = _geowarn("simulate", "--scenario", "failure", "--duration", "1d", "--out", str(feed), "--no-progress")
    assert sim.returncode == 0, sim.stderr
    assert (tmp_path / "feed.csv.sites.toml").is_file()
    r = _geowarn("replay", str(feed), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr  # it failed before: "channel name(s) disp … state no kind"
    assert "feed.csv.sites.toml" in r.stdout and "BSH: highest level" in r.stdout


def test_export_of_an_unknown_site_is_an_error_naming_the_sites_there(tmp_path):
    feed = tmp_path / "feed.csv"
    assert _geowarn("simulate", "--scenario", "stable", "--duration", "6h", "--out", str(feed), "--no-progress").returncode == 0
    # Readings into a data dir the way an engineer would: replay writes alerts, not a journal, so
    # store them with the store's own reader of feeds.
    from geowarn.config.registry import load_registry
    from geowarn.ingest.feeds import read_feed
    from geowarn.ingest.journal import Journal

    reg = load_registry(str(feed) + ".sites.toml")
    rows = list(read_feed(str(feed), []))
    j = Journal(tmp_path / "data" / "journal.sqlite")
    ids = j.series_ids(reg)
    by_key = {(c.site, c.device, c.channel): i for c, i in ids.items()}
    j.append([(by_key[(r.site, r.device, r.channel)], int(r.t * 1000), r.value, 0, int(r.t * 1000)) for r in rows if (r.site, r.device, r.channel) in by_key])
    j.close()
    env = {"GEOWARN_DATA_DIR": str(tmp_path / "data")}
    ok = _geowarn("export", "--site", "BSH", "--count", env=env)
    assert ok.returncode == 0 and int(ok.stdout) > 0, ok.stderr
    nope = _geowarn("export", "--site", "NOPE", "--count", env=env)
    assert nope.returncode == 1 and "no site 'NOPE'" in nope.stderr and "BSH, BZM, XK" in nope.stderr, nope.stderr
    # A site of the registry without readings (yet) is 0, not an error: scripts count on it.
    sites = tmp_path / "sites.toml"
    sites.write_text((tmp_path / "feed.csv.sites.toml").read_text().replace('site = "XK"', 'site = "NEW"'))
    empty = _geowarn("export", "--site", "NEW", "--count", env=env | {"GEOWARN_SITES": str(sites)})
    assert empty.returncode == 0 and empty.stdout.strip() == "0", empty.stderr
    naive = _geowarn("export", "--site", "BSH", "--count", "--since", "2025-01-01T08:00", env=env)
    assert naive.returncode == 0 and "has no time zone: taken as UTC" in naive.stderr, naive.stderr
    zoned = _geowarn("export", "--site", "BSH", "--count", "--since", "2025-01-01T08:00+08:00", env=env)
    assert zoned.returncode == 0 and "time zone" not in zoned.stderr


def test_a_token_for_a_unit_not_on_the_roster_is_refused(tmp_path):
    env = {"GEOWARN_DATA_DIR": str(tmp_path / "data")}
    r = _geowarn("token", "create", "--tier", "county", "--admin", "429999", "--name", "typo", env=env)
    assert r.returncode == 1 and "not on the roster" in r.stderr and "420527" in r.stderr, r.stderr
    forced = _geowarn("token", "create", "--tier", "county", "--admin", "429999", "--name", "typo", "--not-on-roster", env=env)
    assert forced.returncode == 0 and str(tmp_path / "data" / "tokens.sqlite") in forced.stdout, forced.stderr


def test_simulate_list_shows_scenarios_only():
    """The convention scenario's registry (cn_sites.toml) sits beside the scenarios; --list
    showed it as an 'invalid' scenario."""
    r = _geowarn("simulate", "--list")
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    assert "cn_sites" not in names and "invalid" not in r.stdout, r.stdout
    assert {"failure", "stable", "storm", "cn_failure"} <= set(names), names
