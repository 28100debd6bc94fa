"""A worker that takes long to resume its state is waited for while it says it is at it
(issue 17, item 2: "start/stop timeouts that scale or report progress instead of killing").

At 100k devices the detection worker needed more than the fixed 120 s to reload its state and
the daemon refused to start. Now a starting worker sends a heartbeat every
``START_HEARTBEAT_S``; the daemon waits as long as they come (and tells systemd to extend its
start timeout), and gives up only on a worker that is silent or dead.
"""

from __future__ import annotations

import time

import pytest

from geowarn.config.settings import Loaded, Settings, example_path, load_registry, load_roster
from geowarn.service.worker import START_HEARTBEAT_S, WorkerProcess

SLOW_START_S = 2.5 * START_HEARTBEAT_S


class _Idle:
    def step(self) -> int:
        return 0

    def checkpoint(self, final: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


def _slow_job(loaded, link, *args):
    """A job whose start takes longer than the daemon would wait for a silent worker."""
    time.sleep(SLOW_START_S)
    return _Idle()


def _failing_job(loaded, link, *args):
    time.sleep(0.5)
    raise RuntimeError("state unreadable")


def _loaded(url: str, data) -> Loaded:
    return Loaded(Settings(mqtt_url=url, data_dir=str(data)), load_registry(example_path("sites.example.toml")), load_roster(example_path("roster.example.toml")), [])


@pytest.mark.slow
def test_a_worker_slower_to_start_than_the_timeout_is_waited_for_while_it_reports_progress(tmp_path, mosquitto):
    data = tmp_path / "data"
    data.mkdir()
    w = WorkerProcess("detection", _slow_job, _loaded(mosquitto.url, data))
    beats: list[float] = []
    t0 = time.monotonic()
    try:
        # Silent for 2 heartbeats would be given up; it starts after 2.5 and is not.
        w.start(timeout=2 * START_HEARTBEAT_S - 1.0, progress=beats.append)
        took = time.monotonic() - t0
        assert took >= SLOW_START_S
        assert len(beats) >= 2 and beats == sorted(beats) and beats[-1] < took
        assert w.alive()
    finally:
        w.stop(timeout=20)
    assert not w.alive()


def test_a_worker_that_fails_while_starting_is_reported_at_once(tmp_path, mosquitto):
    data = tmp_path / "data"
    data.mkdir()
    w = WorkerProcess("detection", _failing_job, _loaded(mosquitto.url, data))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with code"):
        w.start(timeout=60.0)
    assert time.monotonic() - t0 < 30.0


@pytest.mark.slow
def test_a_worker_that_says_it_is_starting_forever_is_given_up_at_its_limit(tmp_path, mosquitto):
    """The heartbeat shows the process alive, not that it gets anywhere: past the limit (by
    default scaled to the registry's channels) the start fails with a reason."""
    data = tmp_path / "data"
    data.mkdir()
    w = WorkerProcess("detection", _slow_job, _loaded(mosquitto.url, data))
    t0 = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="still starting after"):
            w.start(timeout=2 * START_HEARTBEAT_S - 1.0, limit_s=START_HEARTBEAT_S + 1.0)
        assert time.monotonic() - t0 < SLOW_START_S
    finally:
        w.process.kill()
        w.process.join(10)
