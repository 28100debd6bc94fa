"""An honest start (issue 16, item 1; rough edges 2 and 3).

* Every command finds its settings file the same way (``--config``, ``GEOWARN_CONFIG``,
  ``./geowarn.toml``, ``/etc/geowarn/geowarn.toml``): a token created from a directory with a
  ``geowarn.toml`` lands in the data directory that file names, where the daemon reads it.
* ``geowarn run`` logs the files it loaded with their counts, refuses the bundled example
  registry and roster unless told (``--allow-example``), and takes a CAP sender.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from daemonproc import REPO, Daemon

EXAMPLES = REPO / "config"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOWARN_")}
    env.update(extra)
    return env


def _geowarn(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geowarn.service.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_run_refuses_the_bundled_examples_unless_told(tmp_path):
    r = _geowarn(["run"], tmp_path, _env(GEOWARN_DATA_DIR=str(tmp_path / "d"), GEOWARN_MQTT_URL="mqtt://127.0.0.1:9", GEOWARN_HTTP="off"))
    assert r.returncode == 2, r.stderr
    assert "bundled examples" in r.stderr and "--allow-example" in r.stderr and "GEOWARN_SITES" in r.stderr, r.stderr
    assert not (tmp_path / "d" / "journal.sqlite").exists(), "a refused start must not create the stores"
    # Naming only the registry still refuses: the roster would be the example's phone numbers.
    r = _geowarn(["run"], tmp_path, _env(GEOWARN_DATA_DIR=str(tmp_path / "d"), GEOWARN_MQTT_URL="mqtt://127.0.0.1:9",
                                         GEOWARN_HTTP="off", GEOWARN_SITES=str(EXAMPLES / "sites.example.toml")))
    assert r.returncode == 2 and "no roster configured" in r.stderr, r.stderr


@pytest.mark.slow
def test_run_logs_what_it_loaded_and_warns_about_examples_and_the_placeholder_sender(tmp_path, mosquitto):
    d = Daemon(tmp_path / "data", mosquitto.url)
    try:
        d.start()
        d.terminate()
    finally:
        d.close()
    text = d.log_path.read_text()
    loaded = next(x for x in text.splitlines() if "configuration loaded" in x)
    assert "sites.example.toml" in loaded and "roster.example.toml" in loaded, loaded
    assert "n_sites=" in loaded and "n_devices=" in loaded and "n_units=" in loaded and str(tmp_path / "data") in loaded, loaded
    assert "settings=\"none" in loaded, loaded
    assert "running on the bundled example site registry and roster" in text
    assert "placeholder sender" in text


def test_a_bad_cap_sender_stops_the_start_with_its_key(tmp_path):
    r = _geowarn(["run", "--allow-example"], tmp_path, _env(GEOWARN_DATA_DIR=str(tmp_path / "d"), GEOWARN_MQTT_URL="mqtt://127.0.0.1:9",
                                                            GEOWARN_HTTP="off", GEOWARN_CAP_SENDER="geo warn,office"))
    assert r.returncode == 2 and "GEOWARN_CAP_SENDER" in r.stderr and "spaces" in r.stderr, r.stderr


def test_every_command_reads_the_geowarn_toml_of_the_working_directory(tmp_path):
    work = tmp_path / "office"
    work.mkdir()
    data = tmp_path / "shared-data"
    (work / "geowarn.toml").write_text(f'data_dir = "{data}"\ncap_sender = "geowarn@dizai.example.cn"\n')
    r = _geowarn(["token", "create", "--tier", "county", "--admin", "420527", "--name", "duty desk"], work, _env())
    assert r.returncode == 0, r.stderr
    assert (data / "tokens.sqlite").exists(), "the token went elsewhere than the geowarn.toml's data_dir"
    assert not (work / "geowarn-data").exists()
    conn = sqlite3.connect(data / "tokens.sqlite")
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = sum(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables if "token" in t)
    finally:
        conn.close()
    assert rows >= 1
    # GEOWARN_CONFIG still wins over the working directory's file.
    other = tmp_path / "other.toml"
    other_data = tmp_path / "other-data"
    other.write_text(f'data_dir = "{other_data}"\n')
    r = _geowarn(["token", "create", "--tier", "county", "--admin", "420527", "--name", "b"], work, _env(GEOWARN_CONFIG=str(other)))
    assert r.returncode == 0, r.stderr
    assert (other_data / "tokens.sqlite").exists()


def test_the_settings_file_in_use_is_resolved_in_order(tmp_path, monkeypatch):
    from geowarn.config import settings as st

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GEOWARN_CONFIG", raising=False)
    monkeypatch.setattr(st, "DEFAULT_CONFIG_FILES", (Path("geowarn.toml"), tmp_path / "etc.toml"))
    assert st.config_file_in_use() is None
    (tmp_path / "etc.toml").write_text("")
    assert st.config_file_in_use() == tmp_path / "etc.toml"
    (tmp_path / "geowarn.toml").write_text("")
    assert st.config_file_in_use() == Path("geowarn.toml")
    monkeypatch.setenv("GEOWARN_CONFIG", "/x.toml")
    assert st.config_file_in_use() == Path("/x.toml")
    assert st.config_file_in_use("given.toml") == Path("given.toml")
