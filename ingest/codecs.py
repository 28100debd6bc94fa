"""Decode and validate what devices publish: native JSON v1 and SenML (RFC 8428).

This module owns the station-facing contract of DESIGN §3. It is pure: bytes in, readings
and rejects out, with the ingest clock's ``now`` passed in. A message that cannot be read at
all raises ``PayloadError``; a single bad reading becomes a ``Reject`` while the good readings
of the same message are kept.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from geowarn.config.registry import ChannelInfo, Registry
from geowarn.core.timefmt import as_float as _as_float, is_number as _is_number, parse_time

#: SenML times below 2**28 are relative to "now" (RFC 8428 §4.5.3).
SENML_RELATIVE_LIMIT = 2.0**28
#: A device clock that says before 2000 has not been set (RTC reset), whatever its skew.
EARLIEST_T = 946684800.0
#: An int within this bound converts to a float without OverflowError (the decoding's fast
#: path takes only those; ``as_float`` turns a larger one into ±inf, which is then refused).
_INT_MAX = 1 << 1000
#: Status fields that must be finite numbers when present.
STATUS_NUMERIC = ("battery_v", "solar_v", "signal_dbm", "temp_c", "sampling_s")

_SENML_BN = re.compile(r"urn:dev:geowarn:([^:]+):")


class PayloadError(Exception):
    """A whole message rejected; ``reason`` is a short machine-readable code, ``detail`` for people."""

    def __init__(self, reason: str, detail: str) -> None:
        detail = clean(detail)
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Reject:
    """One rejected reading of an otherwise readable message."""

    reason: str
    detail: str
    item: Any  # the offending reading object as received

    def __post_init__(self) -> None:
        # Details quote names from the payload; they go to SQLite and MQTT as text.
        object.__setattr__(self, "detail", clean(self.detail))


@dataclass(slots=True)
class Decoded:
    """What one message yields. ``readings`` holds (channel, t epoch seconds, value)."""

    kind: str  # "data" | "status"
    site: str
    device: str
    readings: list[tuple[ChannelInfo, float, float]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    drill: bool = False
    seq: int | None = None
    status: dict[str, Any] | None = None


def clean(text: str) -> str:
    """``text`` safe for everything downstream (SQLite, UTF-8 encoding, MQTT, logs): JSON lets a
    payload spell a lone surrogate (``"\\ud800"``), which no UTF-8 encoder accepts, so it is
    escaped (``\\ud800``); every other character is kept."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _non_finite(name: str) -> float:
    # NaN/Infinity literals are not JSON (RFC 8259), but firmwares write them for a failed
    # sensor (Python's json.dumps does by default). Parsed as the float they name, the reading
    # that carries one is refused as ``not_finite`` (or ``bad_time``) and the message's good
    # readings are kept: a broken sensor must not cost its neighbours their readings.
    return float(name)


class Codec:
    """Decodes messages for one registry and topic prefix.

    ``max_skew_s``: readings further than this into the future (by the ingest clock) are
    rejected as clock skew. ``max_bytes`` and ``max_readings`` bound the work one message
    can cause, so a hostile payload cannot stall the daemon.
    """

    def __init__(
        self,
        registry: Registry,
        prefix: str = "geowarn",
        *,
        max_skew_s: float = 300.0,
        max_bytes: int = 256 * 1024,
        max_readings: int = 10_000,
    ) -> None:
        if max_skew_s < 0:
            raise ValueError("max_skew_s must be >= 0")
        self.registry = registry
        self.prefix = prefix.rstrip("/")
        self._prefix_slash = self.prefix + "/"
        self.max_skew_s = max_skew_s
        self.max_bytes = max_bytes
        self.max_readings = max_readings
        # json.loads with parse_constant builds a new decoder per call; one per codec is enough.
        self._decoder = json.JSONDecoder(parse_constant=_non_finite)
        # The decoder's scanner (C), set by JSONDecoder.__init__; typeshed does not list it.
        self._scan: Callable[[str, int], tuple[Any, int]] = self._decoder.scan_once  # type: ignore[attr-defined]
        # Topics repeat endlessly (one per device): remember their parse, bounded.
        self._topics: dict[str, tuple[str, str, str] | PayloadError] = {}

    # -- topic -----------------------------------------------------------------------------

    def parse_topic(self, topic: str) -> tuple[str, str, str]:
        """(site, device, kind) of a device topic, or PayloadError."""
        hit = self._topics.get(topic)
        if hit is None:
            try:
                hit = self._parse_topic(topic)
            except PayloadError as exc:
                hit = exc
            if len(self._topics) >= 200_000:
                self._topics.clear()  # a flood of distinct bogus topics must not grow memory
            self._topics[topic] = hit
        if isinstance(hit, PayloadError):
            raise PayloadError(hit.reason, hit.detail)
        return hit

    def _parse_topic(self, topic: str) -> tuple[str, str, str]:
        if not topic.startswith(self._prefix_slash):
            raise PayloadError("bad_topic", f"topic {topic[:200]!r} is not under {self._prefix_slash}")
        parts = topic[len(self._prefix_slash):].split("/")
        if len(parts) != 3 or parts[2] not in ("data", "status"):
            raise PayloadError("bad_topic", f"topic {topic[:200]!r} is not {self.prefix}/{{site}}/{{device}}/data|status")
        site, device, kind = parts
        if site not in self.registry.sites:
            raise PayloadError("unknown_site", f"site {site[:64]!r} is not in the registry")
        if (site, device) not in self.registry.channels:
            owner = self.registry.device_site.get(device)
            if owner is None:
                raise PayloadError("unknown_device", f"device {device[:64]!r} is not in the registry")
            raise PayloadError("wrong_site", f"device {device!r} belongs to site {owner}, not {site}")
        return site, device, kind

    # -- message ---------------------------------------------------------------------------

    def decode(self, topic: str, payload: bytes, now: float, size: int | None = None) -> Decoded:
        """``size``: the payload's size on the wire when ``payload`` is a cut copy of it."""
        other = self._other_topic(topic, payload, now, size)
        if other is not None:
            return other
        site, device, kind = self.parse_topic(topic)
        size = len(payload) if size is None else size
        if size > self.max_bytes:
            raise PayloadError("too_large", f"payload of {size} bytes exceeds {self.max_bytes}")
        out = Decoded(kind=kind, site=site, device=device)
        if self._other_payload(payload, out, now):
            return out
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadError("not_json", f"payload is not UTF-8: {exc.reason}") from None
        try:
            doc = self._json(text)
        except RecursionError:
            raise PayloadError("too_deep", "payload nesting is too deep") from None
        except UnicodeDecodeError as exc:
            raise PayloadError("not_json", f"payload is not UTF-8: {exc.reason}") from None
        except ValueError as exc:  # JSONDecodeError, integers with >4300 digits
            raise PayloadError("not_json", f"payload is not JSON: {exc}") from None
        if type(doc) is dict and "v" not in doc and self._other_doc(doc, out, now):
            return out
        if kind == "status":
            self._status(doc, out, now)
        elif isinstance(doc, dict):
            self._native(doc, out, now)
        elif isinstance(doc, list):
            self._senml(doc, out, now)
        else:
            raise PayloadError("bad_shape", f"a data payload is a JSON object (native) or array (SenML), not {type(doc).__name__}")
        return out

    def _json(self, text: str) -> Any:
        """``self._decoder.decode(text)``. A document that is exactly one object or array, as
        devices send it, goes straight to the decoder's C scanner (the Python wrapper's two
        whitespace matches cost about as much as scanning a one-reading message); anything
        else, and anything the scanner does not take whole, is decoded again by the full
        decoder, which raises its own error."""
        if text and text[0] in "{[" and text[-1] in "}]":
            try:
                doc, end = self._scan(text, 0)
            except (StopIteration, ValueError):
                pass
            else:
                if end == len(text):
                    return doc
        return self._decoder.decode(text)

    # -- other conventions ----------------------------------------------------------------
    # A subclass decodes another payload convention (ingest/codecs_cn.py: the national
    # geohazard IoT platform's) through these; here every message is native or SenML.

    def _other_topic(self, topic: str, payload: bytes, now: float, size: int | None) -> Decoded | None:
        """A message on a topic outside ``{prefix}/``, decoded; None: not one of ours to take."""
        return None

    def _other_payload(self, payload: bytes, out: Decoded, now: float) -> bool:
        """A device topic's payload that is not JSON text (a binary frame), decoded into ``out``."""
        return False

    def _other_doc(self, doc: dict[str, Any], out: Decoded, now: float) -> bool:
        """A device topic's JSON object without ``"v"``, decoded into ``out`` when it is another
        convention's; False leaves it to the native rules (``bad_version``)."""
        return False

    def _check_time(self, raw: Any, now: float) -> float:
        t = parse_time(raw)
        if t > now + self.max_skew_s:
            raise ValueError(f"time {t:.3f} is {t - now:.0f} s in the future (clock skew; limit {self.max_skew_s:.0f} s)")
        if t < EARLIEST_T:
            raise ValueError(f"time {t:.3f} is before 2000-01-01: the device clock is not set")
        return t

    def _reading(self, out: Decoded, chans: dict[str, ChannelInfo], name: Any, raw_t: Any, raw_v: Any, item: Any, now: float) -> None:
        if not isinstance(name, str):
            out.rejects.append(Reject("bad_shape", "channel name must be a string", item))
            return
        info = chans.get(name)
        if info is None:
            out.rejects.append(Reject("unknown_channel", f"channel {name[:64]!r} is not a channel of device {out.device}", item))
            return
        if not _is_number(raw_v):
            what = "a numeric string" if isinstance(raw_v, str) else type(raw_v).__name__
            out.rejects.append(Reject("not_numeric", f"value of {name} is {what}, not a JSON number", item))
            return
        v = _as_float(raw_v)
        if not math.isfinite(v):
            out.rejects.append(Reject("not_finite", f"value of {name} is not finite", item))
            return
        try:
            t = self._check_time(raw_t, now)
        except ValueError as exc:
            out.rejects.append(Reject("bad_time", str(exc), item))
            return
        out.readings.append((info, t, v))

    def _native(self, doc: dict[str, Any], out: Decoded, now: float) -> None:
        version = doc.get("v")
        if version != 1 or not _is_number(version):
            raise PayloadError("bad_version", f"native payload needs \"v\": 1, got {str(version)[:20]!r}")
        if doc.get("device") != out.device:
            raise PayloadError("device_mismatch", f"payload device {str(doc.get('device'))[:64]!r} does not match topic device {out.device!r}")
        seq = doc.get("seq")
        if seq is not None and not (type(seq) is int and seq >= 0):
            raise PayloadError("bad_shape", "seq must be a non-negative integer")
        drill = doc.get("drill", False)
        if not isinstance(drill, bool):
            raise PayloadError("bad_shape", "drill must be true or false")
        readings = doc.get("readings")
        if not isinstance(readings, list):
            raise PayloadError("bad_shape", "native payload needs \"readings\": [ {\"ch\", \"t\", \"v\"}, … ]")
        if len(readings) > self.max_readings:
            raise PayloadError("too_many_readings", f"{len(readings)} readings exceed {self.max_readings} per message")
        out.seq, out.drill = seq, drill
        chans = self.registry.channels[(out.site, out.device)]
        # The common reading, {"ch": known channel, "t": epoch number, "v": finite number} with
        # a time in [EARLIEST_T, now + max_skew_s], is taken here with the same checks inlined
        # (a JSON number is exactly an int that is not a bool, or a float); anything else, and
        # any reading these checks would refuse, goes through _reading, which judges it again
        # from the start and gives the reject its reason. At 50 readings a message the calls
        # saved are most of the decoding's cost.
        latest = now + self.max_skew_s
        keep = out.readings.append
        isfinite = math.isfinite
        for item in readings:
            if type(item) is dict and "ch" in item and "t" in item and "v" in item:
                name, raw_t, raw_v = item["ch"], item["t"], item["v"]
                tt, tv = type(raw_t), type(raw_v)
                if (
                    type(name) is str
                    and (tv is float or (tv is int and -_INT_MAX < raw_v < _INT_MAX))
                    and (tt is float or (tt is int and -_INT_MAX < raw_t < _INT_MAX))
                ):
                    info = chans.get(name)
                    if info is not None:
                        v, t = float(raw_v), float(raw_t)
                        if isfinite(v) and EARLIEST_T <= t <= latest:
                            keep((info, t, v))
                            continue
                self._reading(out, chans, name, raw_t, raw_v, item, now)
                continue
            if type(item) is not dict:
                out.rejects.append(Reject("bad_shape", "a reading is an object {\"ch\", \"t\", \"v\"}", item))
                continue
            if "ch" not in item or "t" not in item or "v" not in item:
                missing = [k for k in ("ch", "t", "v") if k not in item]
                out.rejects.append(Reject("bad_shape", f"reading lacks {', '.join(missing)}", item))
                continue
            self._reading(out, chans, item["ch"], item["t"], item["v"], item, now)

    def _senml(self, pack: list[Any], out: Decoded, now: float) -> None:
        if len(pack) > self.max_readings:
            raise PayloadError("too_many_readings", f"{len(pack)} records exceed {self.max_readings} per message")
        chans = self.registry.channels[(out.site, out.device)]
        bn: str | None = None
        bt = 0.0
        bu: str | None = None
        bv = 0.0
        for rec in pack:
            if type(rec) is not dict:
                out.rejects.append(Reject("bad_shape", "a SenML record is a JSON object", rec))
                continue
            # Base fields apply to this record and every later one (RFC 8428 §4.1).
            try:
                if "bn" in rec:
                    if not isinstance(rec["bn"], str):
                        raise ValueError("bn must be a string")
                    m = _SENML_BN.fullmatch(rec["bn"])
                    if not m:
                        raise PayloadError("bad_senml", f"bn {rec['bn'][:80]!r} is not urn:dev:geowarn:{{device}}:")
                    if m.group(1) != out.device:
                        raise PayloadError("device_mismatch", f"SenML bn device {m.group(1)[:64]!r} does not match topic device {out.device!r}")
                    bn = rec["bn"]
                if "bt" in rec:
                    if not _is_number(rec["bt"]) or not math.isfinite(_as_float(rec["bt"])):
                        raise ValueError("bt must be a number")
                    bt = float(rec["bt"])
                if "bu" in rec:
                    if not isinstance(rec["bu"], str):
                        raise ValueError("bu must be a string")
                    bu = rec["bu"]
                if "bv" in rec:
                    if not _is_number(rec["bv"]) or not math.isfinite(_as_float(rec["bv"])):
                        raise ValueError("bv must be a number")
                    bv = float(rec["bv"])
            except ValueError as exc:
                out.rejects.append(Reject("bad_senml", str(exc), rec))
                continue
            if "n" not in rec and "v" not in rec and not any(k in rec for k in ("vs", "vb", "vd")):
                continue  # a record of base fields only
            if bn is None:
                raise PayloadError("bad_senml", "SenML pack needs bn = urn:dev:geowarn:{device}: before its first record")
            name = rec.get("n", "")
            if not isinstance(name, str) or not name:
                out.rejects.append(Reject("bad_senml", "record needs a channel name in n", rec))
                continue
            if any(k in rec for k in ("vs", "vb", "vd")) and "v" not in rec:
                out.rejects.append(Reject("not_numeric", f"value of {name[:64]} is not numeric (vs/vb/vd)", rec))
                continue
            unit = rec.get("u", bu)
            info = chans.get(name)
            if info is not None and unit != info.unit:
                out.rejects.append(Reject("unit_mismatch", f"unit of {name} is {str(unit)[:16]!r}, the registry says {info.unit!r}", rec))
                continue
            raw_v: Any = rec.get("v")
            if _is_number(raw_v):
                raw_v = bv + _as_float(raw_v)
            raw_t = rec.get("t", 0.0)
            if _is_number(raw_t):
                raw_t = bt + _as_float(raw_t)
                if raw_t < SENML_RELATIVE_LIMIT:
                    raw_t = now + raw_t
            else:
                out.rejects.append(Reject("bad_time", "SenML t must be a number", rec))
                continue
            self._reading(out, chans, name, raw_t, raw_v, rec, now)

    def _status(self, doc: Any, out: Decoded, now: float) -> None:
        if not isinstance(doc, dict):
            raise PayloadError("bad_shape", "a status payload is a JSON object")
        if doc.get("device", out.device) != out.device:
            raise PayloadError("device_mismatch", f"status device {str(doc.get('device'))[:64]!r} does not match topic device {out.device!r}")
        status: dict[str, Any] = {}
        for key in STATUS_NUMERIC:
            if key in doc:
                v = doc[key]
                if not _is_number(v) or not math.isfinite(_as_float(v)):
                    raise PayloadError("not_numeric", f"status {key} must be a finite number")
                status[key] = v
        if "fw" in doc:
            status["fw"] = clean(str(doc["fw"])[:64])
        try:
            status["t"] = self._check_time(doc["t"], now) if "t" in doc else now
        except ValueError as exc:
            raise PayloadError("bad_time", str(exc)) from None
        out.status = status
