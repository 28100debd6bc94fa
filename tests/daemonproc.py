"""Run ``geowarn run`` as a real subprocess for tests, and talk to it the way operators do.

The daemon is a separate process so tests can SIGKILL it mid-stream and restart it on the
same data dir. Readiness is the daemon's retained presence message ("online"), not a sleep.
"""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parents[1]


class Daemon:
    def __init__(
        self,
        data_dir: Path,
        mqtt_url: str,
        *,
        extra_env: dict[str, str] | None = None,
        client_id: str = "geowarn-test",
        presence_url: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.mqtt_url = mqtt_url
        # Where the test listens for the daemon's "online" (a plain listener of a TLS broker).
        self.presence_url = presence_url or mqtt_url
        self.client_id = client_id
        self.env = dict(os.environ)
        self.env.update(
            {
                "GEOWARN_MQTT_URL": mqtt_url,
                "GEOWARN_DATA_DIR": str(data_dir),
                "GEOWARN_MQTT_CLIENT_ID": client_id,
                # Tests run on the bundled example registry (site BSH) unless they set GEOWARN_SITES.
                "GEOWARN_ALLOW_EXAMPLE": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.update(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-daemon.log"
        self.starts = 0

    @property
    def journal_path(self) -> Path:
        return self.data_dir / "journal.sqlite"

    def start(self, timeout: float = 20.0) -> None:
        self.starts += 1
        presence = _Presence(self.presence_url, f"geowarn/daemon/{self.client_id}/state")
        try:
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "geowarn.service.cli", "run"], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"geowarn run exited with {self.proc.returncode}:\n{self.log_tail()}")
                if presence.wait_for(b"online", 0.2):
                    return
            raise RuntimeError(f"geowarn run not online after {timeout} s:\n{self.log_tail()}")
        finally:
            presence.close()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def terminate(self, timeout: float = 10.0) -> float:
        """SIGTERM; returns the seconds it took to exit. Raises if it exits non-zero."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        took = time.monotonic() - t0
        if rc != 0:
            raise RuntimeError(f"geowarn run exited {rc} after SIGTERM:\n{self.log_tail()}")
        self.proc = None
        return took

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    # -- reading what it stored -------------------------------------------------------------

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.journal_path.exists():
            return []
        conn = sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []  # schema not created yet
        finally:
            conn.close()

    def readings(self) -> list[tuple[str, str, str, int, float]]:
        return self.query(
            "SELECT s.site, s.device, s.channel, r.t_ms, r.value FROM readings r JOIN series s ON s.id = r.series "
            "ORDER BY s.site, s.device, s.channel, r.t_ms"
        )

    def count(self, table: str = "readings") -> int:
        rows = self.query(f"SELECT count(*) FROM {table}")
        return int(rows[0][0]) if rows else 0

    def wait_until(self, what: Callable[[], bool], timeout: float = 30.0, message: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if what():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon died ({self.proc.returncode}):\n{self.log_tail()}")
            time.sleep(0.05)  # polling a file another process writes: there is nothing to wait on
        raise TimeoutError(f"timed out waiting for {message or what}; daemon log:\n{self.log_tail()}")


class _Presence:
    def __init__(self, url: str, topic: str) -> None:
        from geowarn.config.settings import MqttTarget

        target = MqttTarget(url)
        self.q: queue.Queue[bytes] = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        if target.username:
            self.c.username_pw_set(target.username, target.password)
        self.c.on_message = lambda c, u, m: self.q.put(m.payload)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
        self.c.connect(target.host, target.port)
        self.c.loop_start()

    def wait_for(self, payload: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                if self.q.get(timeout=left) == payload:
                    return True
            except queue.Empty:
                return False

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class Recorder:
    """A subscriber that records every message on some topics (alerts, dead letters)."""

    def __init__(self, url: str, topics: list[str]) -> None:
        from geowarn.config.settings import MqttTarget

        target = MqttTarget(url)
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        if target.username:
            self.c.username_pw_set(target.username, target.password)
        self.subscribed = queue.Queue[int]()
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, bool(m.retain)))
        self.c.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.put(mid)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.c.connect(target.host, target.port)
        self.c.loop_start()
        self.subscribed.get(timeout=10)

    def take(self, n: int, timeout: float = 20.0) -> list[tuple[str, bytes, bool]]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"got {len(out)} of {n} messages: {out}")
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                continue
        return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def publisher(url: str, client_id: str = "test-publisher") -> mqtt.Client:
    from geowarn.config.settings import MqttTarget

    target = MqttTarget(url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if target.username:
        c.username_pw_set(target.username, target.password)
    c.max_inflight_messages_set(100)
    c.connect(target.host, target.port)
    c.loop_start()
    return c
