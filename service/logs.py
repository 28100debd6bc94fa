"""Logging, configured once, here, for every process GeoWarn starts (the daemon, its worker
processes, the demo).

Modules log through ``logging.getLogger(__name__)``, so every logger sits under ``geowarn.``
and one setting quiets or raises them all. A message is a fixed sentence; what varies goes in
key=value fields (``log.info("worker exited", extra=kv(worker="store", code=1))``, ``kv`` from
``geowarn.core.logfields``), which the
text format appends as ``worker=store code=1`` and the JSON format keeps as keys, so a log
shipper can index them without parsing sentences.

``GEOWARN_LOG_FORMAT``: ``text`` (default) or ``json`` (one JSON object a line: t, level,
logger, msg, the fields, and exc when there is a traceback).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from geowarn.core.logfields import fields_of as _fields
from geowarn.core.logfields import kv
from geowarn.core.timefmt import rfc3339

__all__ = ["CHATTY", "FORMATS", "FORMAT_ENV", "JsonFormatter", "TextFormatter", "configure_logging", "kv", "log_format"]

FORMAT_ENV = "GEOWARN_LOG_FORMAT"
FORMATS = ("text", "json")
#: Third-party loggers the demo keeps quiet along with GeoWarn's own.
CHATTY = ("amqtt", "transitions")



def _text_value(v: Any) -> str:
    s = str(v)
    # Quote what would otherwise split a field or hide its end, so the line stays parseable.
    return json.dumps(s, ensure_ascii=False) if (not s or any(c in s for c in ' ="\n\t')) else s


def _writable(line: str) -> str:
    """A lone surrogate (from a hostile topic or payload) would make the UTF-8 stream refuse
    the whole line; write it as its escape instead."""
    return line.encode("utf-8", "backslashreplace").decode("utf-8")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if not fields:
            return _writable(line)
        head, sep, tail = line.partition("\n")  # fields stay on the message line, before a traceback
        return _writable(head + "".join(f" {k}={_text_value(v)}" for k, v in fields.items()) + sep + tail)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "t": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in _fields(record).items():
            doc.setdefault(k, v)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _writable(json.dumps(doc, ensure_ascii=False, default=str))


def log_format(environ: Mapping[str, str] | None = None) -> str:
    """The format asked for by ``GEOWARN_LOG_FORMAT``; ValueError naming the valid values."""
    value = (os.environ if environ is None else environ).get(FORMAT_ENV, "text").strip().lower() or "text"
    if value not in FORMATS:
        raise ValueError(f"{FORMAT_ENV}={value!r} is not one of {', '.join(FORMATS)}")
    return value


def configure_logging(level: int, *, quiet: Iterable[str] = (), stream: TextIO | None = None, fmt: str | None = None) -> None:
    """Set up the root handler once per process: ``level`` for GeoWarn, ``quiet`` loggers held
    at ``level`` too (for the demo, which shows only its own lines). Replaces handlers set
    earlier in the same process, so a worker started by spawn and a test calling twice get
    exactly one handler."""
    fmt = fmt or log_format()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in quiet:
        logging.getLogger(name).setLevel(level)
    # httpx logs every request's full URL at INFO: the robots' keys and tokens are in them.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
