"""Context for log lines as key=value fields rather than words in the sentence.

``log.warning("notifier failing", extra=kv(notifier="420527", attempts=3))``: the sentence
stays fixed (searchable, countable), the values travel as fields, which the text format
appends as ``notifier=420527 attempts=3`` and the JSON format keeps as keys
(``geowarn.service.logs`` formats them; any room may attach them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

#: The LogRecord attribute the fields ride on.
FIELDS_ATTR = "geowarn_fields"


def kv(**fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call."""
    return {FIELDS_ATTR: fields}


def fields_of(record: logging.LogRecord) -> Mapping[str, Any]:
    """The fields a record carries (empty for a record logged without ``kv``)."""
    fields = getattr(record, FIELDS_ATTR, None)
    return fields if isinstance(fields, Mapping) else {}
