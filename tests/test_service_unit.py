"""Running as a systemd service (issue 16, item 2).

The unit file is checked by systemd's own verifier, and the daemon speaks the notify protocol
the unit relies on (``Type=notify``, ``WatchdogSec``) to a real unix datagram socket standing
in for systemd: READY=1 once it runs, WATCHDOG=1 keep-alives at half the period systemd
gives, STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemonproc import REPO, Daemon

UNIT = REPO / "deploy" / "systemd" / "geowarn.service"
INSTALLED_AT = "/opt/geowarn/bin/geowarn"


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing (Debian package systemd; scripts/test installs it)"
    return subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)


def _unit_copy(tmp_path: Path, text: str) -> Path:
    # verify insists that ExecStart's program exists: point it at this environment's geowarn
    # (the unit names the documented install location, /opt/geowarn).
    exe = Path(sys.executable).with_name("geowarn")
    assert exe.exists(), exe
    out = tmp_path / "geowarn.service"
    out.write_text(text.replace(INSTALLED_AT, str(exe)))
    return out


def test_the_unit_file_passes_systemd_analyze_verify(tmp_path):
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_AT} run" in text
    for key in ("Type=notify", "WatchdogSec=", "User=geowarn", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert key in text, key
    r = _verify(_unit_copy(tmp_path, text))
    # verify exits 0 even on unknown keys and bad values; what it says on stderr is the verdict.
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", r.stderr + r.stdout


def test_the_verifier_would_catch_a_mistyped_unit(tmp_path):
    """The check above can fail: a misspelt key and a bad Type value are reported."""
    text = UNIT.read_text().replace("Restart=always", "Restrat=always").replace("Type=notify", "Type=notifyy")
    r = _verify(_unit_copy(tmp_path, text))
    assert "Restrat" in r.stderr and "notifyy" in r.stderr, r.stderr


def _datagrams(sock: socket.socket, until: float) -> list[str]:
    got = []
    while time.monotonic() < until:
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return got


@pytest.mark.slow
def test_the_daemon_says_ready_keeps_the_watchdog_fed_and_says_stopping(tmp_path, mosquitto):
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    d = Daemon(tmp_path / "data", mosquitto.url, extra_env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"})
    try:
        d.start()
        assert d.proc is not None
        msgs = _datagrams(sock, time.monotonic() + 3.0)
        ready = [m for m in msgs if "READY=1" in m.splitlines()]
        assert len(ready) == 1, msgs
        assert f"MAINPID={d.proc.pid}" in ready[0].splitlines(), ready
        # WatchdogSec=1 s -> a keep-alive at least every 0.5 s, from the running loop.
        feeds = [m for m in msgs if m == "WATCHDOG=1"]
        assert len(feeds) >= 4, msgs
        d.terminate()
        after = _datagrams(sock, time.monotonic() + 1.0)
        assert any("STOPPING=1" in m.splitlines() for m in msgs + after), msgs + after
    finally:
        d.close()
        sock.close()


@pytest.mark.slow
def test_a_watchdog_meant_for_another_process_is_not_fed(tmp_path, mosquitto):
    """WATCHDOG_PID names the process systemd watches; a daemon that is not it stays quiet
    about the watchdog (but still reports readiness)."""
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    d = Daemon(tmp_path / "data", mosquitto.url, extra_env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    try:
        d.start()
        msgs = _datagrams(sock, time.monotonic() + 2.0)
        assert any("READY=1" in m.splitlines() for m in msgs), msgs
        assert "WATCHDOG=1" not in msgs, msgs
        d.terminate()
    finally:
        d.close()
        sock.close()
