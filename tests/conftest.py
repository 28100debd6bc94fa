"""Shared pytest fixtures for the GeoWarn test suite.

This conftest owns the real-service fixtures: ``mosquitto`` and ``victoria`` start a
real Mosquitto broker / VictoriaMetrics server per test, as plain subprocesses on free
127.0.0.1 ports with their data under the test's ``tmp_path`` (see ``services.py`` for
the full API). The binaries come from ``./scripts/test``; a missing one fails the
test with a RuntimeError instead of skipping it.

Add further fixtures below the service fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services import Mosquitto, VictoriaMetrics


# -- real services (owned by the test-infrastructure work) ----------------------------
@pytest.fixture
def mosquitto(tmp_path) -> Iterator[Mosquitto]:
    """A running Mosquitto broker (persistence on, unlimited queues); stopped after the test."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def victoria(tmp_path) -> Iterator[VictoriaMetrics]:
    """A running VictoriaMetrics server (dedup on, 100y retention); stopped after the test."""
    vm = VictoriaMetrics(tmp_path / "victoria-metrics")
    vm.start()
    try:
        yield vm
    finally:
        vm.stop()


# -- further fixtures go below --------------------------------------------------------
