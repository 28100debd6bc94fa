"""Time as GeoWarn reads and writes it: epoch seconds inside, RFC 3339 with a zone outside.

One parser for every input (payloads, feeds, CLI arguments, scenario files, requests) and one
formatter for every output (alerts.jsonl, CAP, notifications), so a time means the same thing
wherever it crosses the boundary.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Any

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


def is_number(v: Any) -> bool:
    # bool is an int subclass in Python; true/false are not readings. A numeric string is not a number.
    return (type(v) is float or type(v) is int) and not isinstance(v, bool)


def as_float(v: int | float) -> float:
    """float(v); an integer too large for a float becomes ±inf (not finite, so rejected later)."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def parse_time(raw: Any) -> float:
    """Epoch seconds from epoch seconds or an RFC 3339 string with a zone; ValueError with a reason."""
    if is_number(raw):
        t = as_float(raw)
    elif isinstance(raw, str):
        if len(raw) > 40 or not _RFC3339.fullmatch(raw):
            raise ValueError(f"time {raw[:40]!r} is not RFC 3339 with a zone (e.g. 2026-11-29T09:30:00Z)")
        try:
            t = datetime.fromisoformat(raw.replace("z", "Z")).timestamp()
        except ValueError:
            raise ValueError(f"time {raw!r} is not a valid date") from None
    else:
        raise ValueError(f"time must be epoch seconds or an RFC 3339 string, not {type(raw).__name__}")
    if not math.isfinite(t):
        raise ValueError("time is not finite")
    return t


def rfc3339(t: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds, e.g. ``2026-11-29T09:30:00.000Z``."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(raw: Any, *, assume_utc: bool = False) -> float:
    """An instant a person wrote (a CLI argument, a scenario file), as epoch seconds.

    More forgiving than ``parse_time``, which guards the device contract: it also takes epoch
    seconds as text, a TOML/Python ``datetime`` and any ISO 8601 form ``datetime`` reads. A time
    without a zone (or a date alone, meaning midnight) is UTC when ``assume_utc``, and refused
    otherwise, since a scenario's start is easy to get wrong by the local offset. ValueError
    with a reason.
    """
    if is_number(raw):
        t = as_float(raw)
    else:
        if isinstance(raw, datetime):
            dt = raw
        elif isinstance(raw, str):
            try:
                return parse_instant(float(raw)) if _EPOCH_TEXT.fullmatch(raw.strip()) else _from_iso(raw, assume_utc)
            except OverflowError:
                raise ValueError(f"{raw[:40]!r} is out of range") from None
        else:
            raise ValueError(f"{raw!r} is neither epoch seconds nor an RFC 3339 time")
        if dt.tzinfo is None:
            if not assume_utc:
                raise ValueError(f"{raw!r} has no time zone; write it in UTC with 'Z'")
            dt = dt.replace(tzinfo=timezone.utc)
        t = dt.timestamp()
    if not math.isfinite(t):
        raise ValueError("time is not finite")
    return t


_EPOCH_TEXT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _from_iso(raw: str, assume_utc: bool) -> float:
    try:
        dt = datetime.fromisoformat(raw.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{raw[:40]!r} is neither epoch seconds nor an RFC 3339 time") from None
    if dt.tzinfo is None and not assume_utc:
        raise ValueError(f"{raw[:40]!r} has no time zone; write it in UTC with 'Z'")
    return parse_instant(dt, assume_utc=True)
