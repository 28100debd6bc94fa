"""Decode what China's universal (普适型) geohazard monitoring devices publish: the national
geohazard IoT platform's convention, beside GeoWarn's own contract (``ingest/codecs.py``).

What the convention is, as implemented here, and where it comes from:

- **Frame.** An optional 3-byte header before the JSON: byte 1 the type, bytes 2–3 the
  body's length, big-endian. Type 1 is a JSON body of values, type 2 a JSON body with time
  keys; both are decoded (the body itself says whether it has a time layer). Type 3 (a file
  description and file, e.g. a photo) and type 4 (firmware packets) are dead-lettered
  (``cn_file``, ``cn_firmware``); a header whose length is not the body's is ``cn_frame``
  (any other first byte is not a frame: ``not_json``). The optional AES wrapper ``{"header": {"appId": …}, "bodies": {"body": …}}`` is
  refused as ``cn_encrypted`` (GeoWarn holds no device keys). Sources: ../shared/DEVICES-CN.md
  ("Frames and payloads"); the draft industry standard DZ/T 《地质灾害监测数据通信技术要求》
  (报批稿, 2023), whose contents list 附录A 标准数据帧格式 and 附录C 设备状态参数说明 (only its table
  of contents was found in public copies: https://desk33.com/d-693077.html).
- **Body.** ``{"<device code>": {"<channel>": <entry>}}``; a channel is ``L{group}_{method}_{n}``
  (L1 deformation, L2 physical fields, L3 influencing factors) or ``S1_ZT_{n}`` (device
  status); an entry is either a time layer ``{"2026-03-31T04:05:55.000Z": <value>}`` or a value;
  a value is a number, a numeric string, an object of fields (``{"value": 0.0305}``,
  ``{"gpsTotalX": …}``) or a comma-separated string of the method's fields in the order of the
  platform's field table (``"x,y,z,angle,azi"`` for a tiltmeter; for methods not listed below
  only a single value). A bare number or numeric string is the field ``value``. With no time
  layer the reading's time is the receive time. Channels, fields and units: the national
  platform's access documentation, 2.1 监测类型定义 (http://ghiot.cigem.cn:8080/doc/overview/overview.html)
  and DEVICES-CN.md's table.
- **Topics.** Legacy firmwares publish on ``$dp`` (OneNET heritage: e.g. the PubSubClient
  ESP8266 example publishing to ``$dp``); newer platforms use vendor topics such as
  ``/sys/{productKey}/{deviceCode}/thing/property/post`` (DEVICES-CN.md "Connection"). The
  device is the body's device code; on a vendor topic with a ``{code}`` level the two must
  agree. The MQTT client id cannot identify it: a PUBLISH packet does not carry the
  publisher's client id (MQTT 3.1.1 §3.3, MQTT 5 §3.3), so neither paho nor any subscriber
  sees it. On ``$dp``, which every device shares, a broker ACL cannot keep one device from
  writing another's code: use a per-device topic with ``{code}`` where that matters.
- **Time.** Times are ISO 8601 (``Z``, ``±hh:mm`` or no zone). Firmware has a UTC/local
  switch and some write Beijing time with ``Z`` (DEVICES-CN.md "Connection"): the registry's
  per-device ``clock_offset_s`` is subtracted from times written with ``Z``/``+00:00`` or none
  (a time with a non-zero offset is taken as written); zone-less times are refused unless it
  is set.
- **Status.** ``S1_ZT_1`` fields (DEVICES-CN.md's table, after the draft standard's 附录C) become
  the status the store keeps: native names where GeoWarn has one (``battery_v``, ``solar_v``,
  ``temp_c``, ``fw``), the rest under their own (``siren_state`` for ``sound_state``,
  ``sensor_state`` per channel…); fields not in the table are kept under ``unknown``, values
  that are not what the field needs under ``invalid`` — nothing is dropped silently.
- **Registry.** A device's ``code`` routes the payload; each channel's ``source``
  (``"L1_GP_1.gpsTotalX"``) says which field it reads; the device's ``ignore`` lists fields it
  sends that are dropped on purpose (``L1_QJ_1.AZI``: an azimuth wraps at 360° and is never a
  displacement); any other field is dead-lettered as ``unknown_channel``, its reason naming
  the kind its method measures (``config.registry.CONVENTION_KINDS``: L1_SW deep
  displacement, L1_JS acceleration, L1_ZD vibration, L2_YL stress, L3_NW mud level, L3_SY
  seepage pressure, L3_TW soil temperature…; a source of another kind is refused at start).
  A ``totalValue``
  source (a rain counter) is differenced per reading; a counter lower than the last one was
  reset, and the rain since is the new total (never negative rain). The last total per
  channel is committed with the batch that moved it (ingest/store.py), so a restarted store
  stage resumes the difference; only a counter's very first total primes it (no rain booked).

Every string is hostile: the size bound of the native codec applies, at most
``max_readings`` entries are walked per message, keys and strings are bounded before they are
quoted, and lone surrogates are escaped (``clean``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from geowarn.config.registry import CONVENTION_KINDS, ChannelInfo, Registry
from geowarn.core.timefmt import as_float, is_number
from geowarn.ingest.codecs import Codec, Decoded, PayloadError, Reject, clean

#: Frame types of the 3-byte header (byte 1).
FRAME_VALUES, FRAME_TIMED, FRAME_FILE, FRAME_FIRMWARE = 1, 2, 3, 4

_CHANNEL = re.compile(r"(L[0-9]_[A-Z]{2}|S1_ZT)_[0-9]{1,3}")
_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_NUMBER = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?\s*")
_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:?\d{2})?")

#: Fields of a comma-separated value, by method, in the order of the platform's field table.
CSV_FIELDS: dict[str, tuple[str, ...]] = {
    "QJ": ("X", "Y", "Z", "angle", "AZI"),
    "GP": ("gpsTotalX", "gpsTotalY", "gpsTotalZ"),
    "SW": ("dispsX", "dispsY"),
    "JS": ("gX", "gY", "gZ"),
    "ZD": ("PLX", "PLY", "PLZ", "value", "SJX", "SJY", "SJZ", "SJValue"),
}

#: S1_ZT numeric fields -> the name the store's status dict gives them.
STATUS_NUMBERS: dict[str, str] = {
    "battery_volt": "battery_v",
    "solar_volt": "solar_v",
    "ext_power_volt": "ext_power_v",
    "battery_dump_energy": "battery_percent",
    "supply_power": "supply_power",
    "consume_power": "consume_power",
    "temp": "temp_c",
    "humidity": "humidity",
    "temp_out": "temp_out_c",
    "humidity_out": "humidity_out",
    "lon": "lon",
    "lat": "lat",
    "signal_4g": "signal_4g",
    "signal_NB": "signal_nb",
    "signal_db": "signal_bd",
    "signal_bd": "signal_bd",
}
#: S1_ZT state fields (a number or a short code) -> status name.
STATUS_STATES: dict[str, str] = {"pa_state": "pa_state", "sound_state": "siren_state"}
#: Bounds on what one status keeps of fields it does not know, and of sensor_state entries.
STATUS_UNKNOWN_MAX = 32
SENSOR_STATE_MAX = 64
#: Below this a fall of a rain counter is rounding, not a reset.
TOTAL_EPS = 1e-6


def topic_filter(pattern: str) -> str:
    """The MQTT subscription of a configured topic: ``{code}`` matches any one level."""
    return "/".join("+" if level == "{code}" else level for level in pattern.split("/"))


class _Topic:
    """A configured device topic: its levels, ``+`` and ``{code}`` each one level."""

    __slots__ = ("pattern", "levels", "code_at")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.levels = pattern.split("/")
        self.code_at = self.levels.index("{code}") if "{code}" in self.levels else None

    def match(self, levels: list[str]) -> tuple[bool, str | None]:
        if len(levels) != len(self.levels):
            return False, None
        for want, got in zip(self.levels, levels):
            if want not in ("+", "{code}") and want != got:
                return False, None
        return True, None if self.code_at is None else levels[self.code_at]


def _number(raw: Any) -> float | None:
    """A JSON number or a numeric string as a float; None when it is neither."""
    if is_number(raw):
        return as_float(raw)
    if isinstance(raw, str) and len(raw) <= 40 and _NUMBER.fullmatch(raw):
        return float(raw)
    return None


def _short(raw: Any) -> Any:
    """A value from a payload as the status keeps it: numbers as they are, the rest as bounded text."""
    if is_number(raw) and math.isfinite(as_float(raw)):
        return raw
    return clean(str(raw)[:64])


class CnCodec(Codec):
    """The native codec plus the national convention: on ``{prefix}/{site}/{device}/data|status``
    (a framed or a device-code-keyed body) and on the configured ``topics``."""

    def __init__(self, registry: Registry, prefix: str = "geowarn", *, topics: Sequence[str] = (), **limits: Any) -> None:
        super().__init__(registry, prefix, **limits)
        self.topics = [_Topic(t) for t in topics]
        #: device code (or device id) -> (site, device)
        self.codes: dict[str, tuple[str, str]] = {}
        #: only the codes devices declare (``code``): what a shared or vendor topic may name; a
        #: device id stands for its device only on that device's own topic (the broker's ACL
        #: confines it there), or anyone on ``$dp`` could write a native device's status.
        self.declared: dict[str, tuple[str, str]] = {}
        #: (site, device) -> {"L1_GP_1.gpsTotalX": channel}
        self.sources: dict[tuple[str, str], dict[str, ChannelInfo]] = {}
        self.ignore: dict[tuple[str, str], frozenset[str]] = {}
        self.clock_offset: dict[tuple[str, str], float | None] = {}
        #: (site, device, channel) of a rain counter -> (t, total, rain booked at t)
        self.totals: dict[tuple[str, str, str], tuple[float, float, float]] = {}
        #: counters moved since the store stage last committed or undid: key -> the total before
        #: (None: none); what a batch commits, or puts back (``moved_totals``, ``undo_totals``)
        self._moved: dict[tuple[str, str, str], tuple[float, float, float] | None] = {}
        for site in registry.sites.values():
            for dev in site.devices:
                key = (site.site, dev.device)
                self.codes[dev.device] = key
                if dev.code:
                    self.codes[dev.code] = key
                    self.declared[dev.code] = key
                self.ignore[key] = frozenset(dev.ignore)
                self.clock_offset[key] = dev.clock_offset_s
                chans = registry.channels[key]
                self.sources[key] = {
                    (c.source if "." in c.source else c.source + ".value"): chans[c.channel]
                    for c in dev.channels
                    if c.source is not None
                }

    # -- dispatch (hooks of Codec) ---------------------------------------------------------

    def _other_topic(self, topic: str, payload: bytes, now: float, size: int | None) -> Decoded | None:
        if topic.startswith(self._prefix_slash) or not self.topics:
            return None
        levels = topic.split("/")
        for t in self.topics:
            hit, code = t.match(levels)
            if hit:
                break
        else:
            return None  # the native rules say bad_topic
        size = len(payload) if size is None else size
        if size > self.max_bytes:
            raise PayloadError("too_large", f"payload of {size} bytes exceeds {self.max_bytes}")
        doc = self._body(payload)
        return self._decode_doc(doc, now, expect=None, topic_code=code, kind=None)

    def _other_payload(self, payload: bytes, out: Decoded, now: float) -> bool:
        if not payload or payload[0] not in (FRAME_VALUES, FRAME_TIMED, FRAME_FILE, FRAME_FIRMWARE):
            return False  # JSON text, or not ours: the native rules read it
        doc = self._body(payload)
        self._fill(out, self._decode_doc(doc, now, expect=(out.site, out.device), topic_code=None, kind=out.kind))
        return True

    def _other_doc(self, doc: dict[str, Any], out: Decoded, now: float) -> bool:
        if len(doc) != 1 or type(next(iter(doc.values()))) is not dict:
            return False
        self._fill(out, self._decode_doc(doc, now, expect=(out.site, out.device), topic_code=None, kind=out.kind))
        return True

    @staticmethod
    def _fill(out: Decoded, d: Decoded) -> None:
        out.readings, out.rejects, out.status = d.readings, d.rejects, d.status

    # -- frame and body --------------------------------------------------------------------

    def _body(self, payload: bytes) -> Any:
        """The JSON document of a payload, framed or not; PayloadError when there is none."""
        body = payload
        if payload and payload[0] in (FRAME_VALUES, FRAME_TIMED, FRAME_FILE, FRAME_FIRMWARE):
            kind = payload[0]
            if kind == FRAME_FILE:
                raise PayloadError("cn_file", "frame type 3 (a file description and file, e.g. a photo): GeoWarn stores readings, not files")
            if kind == FRAME_FIRMWARE:
                raise PayloadError("cn_firmware", "frame type 4 (firmware packets) is for a device, not for GeoWarn")
            if len(payload) < 3:
                raise PayloadError("cn_frame", f"a frame header is 3 bytes (type, length high, length low); the payload has {len(payload)}")
            length = int.from_bytes(payload[1:3], "big")
            body = payload[3:]
            if length != len(body):
                raise PayloadError("cn_frame", f"frame type {kind} says {length} bytes of JSON follow, {len(body)} do")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadError("not_json", f"payload is not UTF-8: {exc.reason}") from None
        try:
            return self._decoder.decode(text)
        except RecursionError:
            raise PayloadError("too_deep", "payload nesting is too deep") from None
        except ValueError as exc:
            raise PayloadError("not_json", f"payload is not JSON: {exc}") from None

    # -- the body --------------------------------------------------------------------------

    def _decode_doc(self, doc: Any, now: float, *, expect: tuple[str, str] | None, topic_code: str | None, kind: str | None) -> Decoded:
        if type(doc) is not dict:
            raise PayloadError("bad_shape", f"a body of the national convention is a JSON object {{\"<device code>\": {{…}}}}, not {type(doc).__name__}")
        if "bodies" in doc and "header" in doc:
            raise PayloadError("cn_encrypted", "an encrypted body (header/bodies, AES): switch encryption off for the connection to GeoWarn")
        if len(doc) != 1:
            raise PayloadError("bad_shape", f"a body of the national convention names one device code, this one {len(doc)}")
        code, channels = next(iter(doc.items()))
        key = (self.codes if expect is not None else self.declared).get(code)
        if key is None:
            raise PayloadError("unknown_device", f"device code {code[:64]!r} is not in the registry")
        if topic_code is not None and topic_code != code and self.codes.get(topic_code) != key:
            raise PayloadError("device_mismatch", f"payload device code {code[:64]!r} does not match topic device code {topic_code[:64]!r}")
        if expect is not None and key != expect:
            raise PayloadError("device_mismatch", f"payload device code {code[:64]!r} is device {key[1]!r}, not topic device {expect[1]!r}")
        if type(channels) is not dict:
            raise PayloadError("bad_shape", f"device code {code[:64]!r} must map to an object of channels")
        site, device = key
        out = Decoded(kind=kind or "data", site=site, device=device)
        budget = [self.max_readings]
        statuses: list[tuple[float, dict[str, Any]]] = []
        totals: list[tuple[ChannelInfo, float, float, Any]] = []
        only_status = True
        for ch, entry in channels.items():
            if not _CHANNEL.fullmatch(ch):
                out.rejects.append(Reject("unknown_channel", f"{ch[:64]!r} is not a channel of the national convention (L1_LF_1, S1_ZT_1…)", {ch[:64]: "…"}))
                continue
            is_status = ch.startswith("S1_ZT")
            only_status = only_status and is_status
            for raw_t, value in self._entries(out, ch, entry, budget):
                try:
                    t = now if raw_t is None else self._time(raw_t, key, now)
                except ValueError as exc:
                    out.rejects.append(Reject("bad_time", f"{ch}: {exc}", {ch: {(raw_t or "")[:40]: "…"}}))
                    continue
                fields = self._fields(out, ch, value)
                if fields is None:
                    continue
                if is_status:
                    statuses.append((t, self._status_fields(fields)))
                for field, raw in fields.items():
                    self._cn_reading(out, key, ch, field, t, raw, totals, is_status)
        if kind is None:
            out.kind = "status" if only_status and channels else "data"
        self._book_totals(out, totals)
        if statuses:
            t, status = max(statuses, key=lambda ts: ts[0])
            status["t"] = t
            if len(statuses) > 1:
                status["older_entries"] = len(statuses) - 1
            out.status = status
        return out

    def _entries(self, out: Decoded, ch: str, entry: Any, budget: list[int]) -> list[tuple[str | None, Any]]:
        """(time key or None, value) of one channel: a time layer, or one value."""
        if type(entry) is dict and entry:
            timed = [isinstance(k, str) and k[:1].isdigit() for k in entry]
            if all(timed):
                budget[0] -= len(entry)
                if budget[0] < 0:
                    raise PayloadError("too_many_readings", f"more than {self.max_readings} time entries in one message")
                return [(k[:64], v) for k, v in entry.items()]
            if any(timed):
                out.rejects.append(Reject("bad_shape", f"{ch} mixes time keys and fields", {ch: "…"}))
                return []
        budget[0] -= 1
        if budget[0] < 0:
            raise PayloadError("too_many_readings", f"more than {self.max_readings} entries in one message")
        return [(None, entry)]

    def _fields(self, out: Decoded, ch: str, value: Any) -> dict[str, Any] | None:
        """{field: raw value} of one entry: an object of fields, a number, or a string."""
        if type(value) is dict:
            if len(value) > 64:
                out.rejects.append(Reject("bad_shape", f"{ch} has {len(value)} fields; at most 64", {ch: "…"}))
                return None
            return value
        if isinstance(value, str) and "," in value:
            parts = value[:1024].split(",")
            names = CSV_FIELDS.get(ch[3:5], ()) if ch[0] == "L" else ()
            if len(parts) > len(names):
                out.rejects.append(Reject("bad_shape", f"{ch}: {len(parts)} comma-separated values, the convention lists {len(names) or 'no'} fields for this method", {ch: value[:200]}))
                return None
            return dict(zip(names, parts))
        return {"value": value}

    def _cn_reading(self, out: Decoded, key: tuple[str, str], ch: str, field: Any, t: float, raw: Any,
                 totals: list[tuple[ChannelInfo, float, float, Any]], is_status: bool) -> None:
        if not isinstance(field, str) or not _FIELD.fullmatch(field):
            out.rejects.append(Reject("bad_shape", f"{ch}: field {str(field)[:40]!r} is not a field name", {ch: "…"}))
            return
        name = f"{ch}.{field}"
        info = self.sources[key].get(name)
        item = {name: raw if is_number(raw) or raw is None else clean(str(raw)[:64]), "t": t}
        if info is None:
            if is_status or name in self.ignore[key] or ch in self.ignore[key]:
                return  # status fields go to the status; ignored ones were listed on purpose
            kinds = CONVENTION_KINDS.get(ch[:5])
            what = "" if kinds is None or field == "AZI" else f", kind {' or '.join(sorted(k.value for k in kinds))}"
            out.rejects.append(Reject("unknown_channel", f"{name} is read by no channel of device {key[1]} (map it with source{what}, or list it in the device's ignore)", item))
            return
        v = _number(raw)
        if v is None:
            what = "a string that is not a number" if isinstance(raw, str) else type(raw).__name__
            out.rejects.append(Reject("not_numeric", f"value of {name} is {what}", item))
            return
        if not math.isfinite(v):
            out.rejects.append(Reject("not_finite", f"value of {name} is not finite", item))
            return
        if field == "totalValue":
            totals.append((info, t, v, item))
        else:
            out.readings.append((info, t, v))

    def _book_totals(self, out: Decoded, totals: list[tuple[ChannelInfo, float, float, Any]]) -> None:
        """Rain from a counter: each total minus the one before, oldest first; a fall is a reset."""
        for info, t, total, item in sorted(totals, key=lambda x: x[1]):
            key = (info.site, info.device, info.channel)
            last = self.totals.get(key)
            if last is None:
                self._move(key, (t, total, math.nan))  # primes the counter: no rain to book yet
                continue
            t0, total0, rain0 = last
            if t == t0 and total == total0:
                if not math.isnan(rain0):
                    out.readings.append((info, t, rain0))  # the same message again: the same reading
                continue
            if t <= t0:
                out.rejects.append(Reject("bad_time", f"{info.channel}: counter total at {t:.0f} is not after the last one at {t0:.0f}", item))
                continue
            diff = total - total0
            rain = total if diff < -TOTAL_EPS else max(diff, 0.0)  # reset: the rain since is the new total
            self._move(key, (t, total, rain))
            out.readings.append((info, t, rain))

    def _move(self, key: tuple[str, str, str], value: tuple[float, float, float]) -> None:
        if key not in self._moved:
            self._moved[key] = self.totals.get(key)
        self.totals[key] = value

    def moved_totals(self, settle: bool = False) -> dict[tuple[str, str, str], tuple[float, float, float]]:
        """The counters the messages decoded since the last commit moved, with their totals now
        (only those: a batch costs what it moved, not the number of counters); ``settle``: that
        batch is committed, start afresh."""
        out = {key: self.totals[key] for key in self._moved}
        if settle:
            self._moved.clear()
        return out

    def undo_totals(self) -> None:
        """Put back the counters as the last commit left them (a batch decoded again, or not written)."""
        for key, before in self._moved.items():
            if before is None:
                self.totals.pop(key, None)
            else:
                self.totals[key] = before
        self._moved.clear()

    def _time(self, raw: str, key: tuple[str, str], now: float) -> float:
        m = _TIME.fullmatch(raw)
        if not m:
            raise ValueError(f"time key {raw[:40]!r} is not ISO 8601 (e.g. 2026-03-31T04:05:55.000Z)")
        zone = m.group(8)
        frac = m.group(7) or ""
        try:
            year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
            dt = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
        except ValueError:
            raise ValueError(f"time key {raw[:40]!r} is not a valid date") from None
        t = dt.timestamp() + (float(frac) if frac else 0.0)
        offset = self.clock_offset[key]
        if zone is None or zone in ("Z", "z") or zone.replace(":", "") in ("+0000", "-0000"):
            if zone is None and offset is None:
                raise ValueError(f"time key {raw[:40]!r} has no zone; set the device's clock_offset_s (28800 for Beijing time)")
            t -= offset or 0.0
        else:
            sign = 1 if zone[0] == "+" else -1
            hh, mm = int(zone[1:3]), int(zone[-2:])
            t -= sign * timedelta(hours=hh, minutes=mm).total_seconds()
        return self._check_time(t, now)

    # -- status ----------------------------------------------------------------------------

    def _status_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        status: dict[str, Any] = {}
        invalid: dict[str, Any] = {}
        unknown: dict[str, Any] = {}
        dropped = 0
        for name, raw in fields.items():
            name = str(name)
            if name in STATUS_NUMBERS:
                v = _number(raw)
                if v is None or not math.isfinite(v):
                    invalid[name] = _short(raw)
                else:
                    status[STATUS_NUMBERS[name]] = v
            elif name in STATUS_STATES:
                v = _number(raw)
                status[STATUS_STATES[name]] = v if v is not None and math.isfinite(v) else _short(raw)
            elif name == "sw_version":
                status["fw"] = clean(str(raw)[:64])
            elif name == "sensor_state":
                if type(raw) is dict:
                    states = {}
                    for ch, code in list(raw.items())[:SENSOR_STATE_MAX]:
                        states[clean(str(ch)[:64])] = _short(code)
                    status["sensor_state"] = states
                    if len(raw) > SENSOR_STATE_MAX:
                        invalid["sensor_state"] = f"{len(raw)} entries, the first {SENSOR_STATE_MAX} kept"
                else:
                    invalid["sensor_state"] = _short(raw)
            elif len(unknown) < STATUS_UNKNOWN_MAX:
                unknown[clean(name[:64])] = _short(raw)
            else:
                dropped += 1
        if invalid:
            status["invalid"] = invalid
        if unknown:
            status["unknown"] = unknown
        if dropped:
            status["unknown_dropped"] = dropped
        return status
