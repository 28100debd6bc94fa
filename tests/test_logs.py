"""Logging is set up once per process: text or one JSON object a line, context as fields."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from geowarn.service.logs import FORMAT_ENV, configure_logging, kv, log_format


@pytest.fixture(autouse=True)
def restore_root_logging() -> Iterator[None]:
    """configure_logging replaces the root handler; give pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_lines_carry_the_sentence_the_fields_and_the_module_logger() -> None:
    out = io.StringIO()
    configure_logging(logging.INFO, stream=out, fmt="json")
    log = logging.getLogger("geowarn.ingest.store")
    log.info("worker exited", extra=kv(worker="store", code=1, note='has "quotes" and spaces'))
    log.debug("below the level")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("step failed", extra=kv(worker="detection"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(x) for x in lines)
    assert first["msg"] == "worker exited"
    assert (first["level"], first["logger"], first["worker"], first["code"]) == ("info", "geowarn.ingest.store", "store", 1)
    assert first["note"] == 'has "quotes" and spaces'
    assert first["t"].endswith("Z") and first["t"][4] == "-"
    assert second["level"] == "error" and second["worker"] == "detection"
    assert "RuntimeError: boom" in second["exc"]


def test_text_lines_append_fields_as_key_value_quoting_what_would_split_them() -> None:
    out = io.StringIO()
    configure_logging(logging.INFO, stream=out, fmt="text")
    logging.getLogger("geowarn.service.worker").warning("worker died", extra=kv(worker="store", reason="exit code 9", empty=""))
    line = out.getvalue().rstrip("\n")
    assert "\n" not in line
    assert line.endswith('geowarn.service.worker: worker died worker=store reason="exit code 9" empty=""')
    assert " WARNING " in line


def test_configuring_twice_leaves_one_handler() -> None:
    out = io.StringIO()
    configure_logging(logging.INFO, stream=out, fmt="text")
    configure_logging(logging.INFO, stream=out, fmt="text")
    logging.getLogger("geowarn").info("once")
    assert out.getvalue().count("once") == 1


def test_the_format_comes_from_the_environment_and_a_bad_one_names_the_valid_ones() -> None:
    assert log_format({}) == "text"
    assert log_format({FORMAT_ENV: "JSON"}) == "json"
    with pytest.raises(ValueError, match=r"GEOWARN_LOG_FORMAT='xml' is not one of text, json"):
        log_format({FORMAT_ENV: "xml"})


def test_a_bad_log_format_stops_the_daemon_start_saying_why(tmp_path) -> None:
    env = {**os.environ, FORMAT_ENV: "xml", "GEOWARN_DATA_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "geowarn.service", "run"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "GEOWARN_LOG_FORMAT='xml' is not one of text, json" in run.stderr
    assert "Traceback" not in run.stderr


def test_the_daemon_and_its_workers_log_one_json_object_a_line(tmp_path, mosquitto) -> None:
    """The daemon's own lines and its spawned workers' lines all come out as JSON."""
    env = {**os.environ, FORMAT_ENV: "json", "GEOWARN_DATA_DIR": str(tmp_path / "data"), "GEOWARN_MQTT_URL": mosquitto.url,
           "GEOWARN_HTTP": "off", "GEOWARN_ALLOW_EXAMPLE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "geowarn.service", "run"], env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            docs = [json.loads(x) for x in lines]  # every line so far must parse
            if any(d["logger"] == "geowarn.service.daemon" and "running" in d["msg"] for d in docs):
                break  # the workers log their figures when they stop
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=60)
    docs = [json.loads(x) for x in lines + rest.splitlines() if x.strip()]
    assert proc.returncode == 0
    loggers = {d["logger"] for d in docs}
    assert {"geowarn.service.daemon", "geowarn.ingest.store"} <= loggers
    assert all(set(d) >= {"t", "level", "logger", "msg"} for d in docs)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_lone_surrogate_in_a_field_is_written_escaped_not_lost(fmt: str) -> None:
    """A hostile topic reaches log fields; the UTF-8 stream must not refuse the whole line."""
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8")
    configure_logging(logging.INFO, stream=out, fmt=fmt)
    logging.getLogger("geowarn.ingest.store").warning("codec failed", extra=kv(topic="geowarn/\ud800/d/data"))
    out.flush()
    line = raw.getvalue().decode("utf-8")
    assert "codec failed" in line
    assert "\\ud800" in line
