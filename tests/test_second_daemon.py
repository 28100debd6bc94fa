"""One data directory, one daemon (issue 16, rough edge 7).

A second ``geowarn run`` on a data directory in use used to wait silently on its workers'
locks for up to two minutes, and a SIGTERM during that wait printed a traceback. Now it is
refused at once, naming the daemon that holds it; a daemon stopped while it starts exits
cleanly; a daemon that died (SIGKILL) leaves nothing that blocks the next.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from daemonproc import REPO, Daemon

pytestmark = pytest.mark.slow


def test_a_second_daemon_on_the_same_data_directory_is_refused_at_once(tmp_path, mosquitto):
    first = Daemon(tmp_path / "data", mosquitto.url)
    try:
        first.start()
        assert first.proc is not None
        env = dict(first.env, GEOWARN_MQTT_CLIENT_ID="geowarn-second", GEOWARN_HTTP="off")
        t0 = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "geowarn.service.cli", "run"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t0
        assert second.returncode == 1, second.stderr
        assert f"in use by another geowarn daemon (pid {first.proc.pid})" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert took < 15, f"refused only after {took:.0f} s"
        first.kill()  # SIGKILL: the kernel drops its lock with its file descriptors
        first.start()  # the next daemon is not blocked by the dead one's lock
        first.terminate()
    finally:
        first.close()


def test_sigterm_while_starting_exits_cleanly(tmp_path, mosquitto):
    d = Daemon(tmp_path / "data", mosquitto.url)
    d.start()  # create the stores, so the next start has something to resume
    d.terminate()
    proc = subprocess.Popen([sys.executable, "-m", "geowarn.service.cli", "run"], cwd=REPO, env=d.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    import os

    # Inside start-up: SIGTERM once the configuration is loaded, before "daemon running".
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "configuration loaded" in line:
            break

    os.killpg(proc.pid, signal.SIGTERM)  # as a terminal's Ctrl-C or `timeout` do: the whole group
    out, _ = proc.communicate(timeout=60)
    out = "".join(seen) + out
    assert "geowarn daemon running" not in out, "the signal came too late to test a stop during start-up"
    assert "Traceback" not in out, out
    assert proc.returncode == 0, out
