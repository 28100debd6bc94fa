"""Simulated devices of the national geohazard IoT convention (普适型 universal devices).

A registry device with a ``code`` whose channels name a ``source`` (``L1_LF_1``,
``L1_QJ_1.X``…) is simulated as such a device: the engine makes its readings and heartbeats as
for any device, and ``ConventionDevices`` rewrites each message into the convention's form
(ingest/codecs_cn.py reads it back):

- data: ``{"<code>": {"L1_LF_1": {"<time>": {"value": 12.3}}, "L1_QJ_1": {"<time>": {"X": …}}}}``
  on ``$dp``; on the wire every other data message goes behind the 3-byte frame header
  (type 2, big-endian length) and the rest unframed, as firmwares do both (``on_wire``; a
  recorded JSONL feed keeps each message as received, with its receive time: the body as
  JSON, a framed one as the base64 of its bytes — ingest/feeds.py);
- heartbeats: ``S1_ZT_1`` with ``battery_volt``, ``solar_volt``, ``temp``, ``signal_4g``,
  ``sw_version``, ``sound_state`` and ``sensor_state`` per sensor (0: healthy; a sensor made
  faulty with ``fault_sensor`` reports -2, the firmware's CHANNEL_DATA_ERR);
- times as ISO 8601 with milliseconds and ``Z``, shifted by the device's ``clock_offset_s``
  (a device whose registry entry says 28800 writes Beijing time with a ``Z``, like the
  misconfigured firmwares it stands for);
- commands: it obeys ``$cmd=setsensortime&sensor_id=…&sample_intv=…&plus_intv=…`` on
  ``$creq/{code}/cmd`` (its sensor's channels sample at the new interval, or at the plus
  interval in plus mode) and ``$cmd=setworkmode&mode=0|1|2`` (2: every sensor at its plus
  interval; 0 and 1: at its sample interval — the simulator does not batch uploads as low
  power does), and answers ``$cmd=<name>&result=succ|fail`` on ``$dr``, then, as the
  firmware, ``&apikey=<its key>&msgid=…`` (ingest/commands_cn.py). ``fail`` for an unknown
  sensor, an interval outside the firmware's ranges or an unknown mode. A device with an
  ``apikey`` in the registry (resolved as the daemon resolves it) drops, unanswered, a command
  that does not carry that key, as the firmware does; so is a repeat of the msgid it has just
  executed.

The convention has no drill flag: a drill of convention devices is not marked in their payloads.
"""

from __future__ import annotations

import json
import time as _time
from dataclasses import dataclass
from typing import Any

from collections.abc import Mapping

from geowarn.config.registry import Registry
from geowarn.config.settings import device_apikeys
from geowarn.ingest.commands_cn import (
    INTERVAL_MIN_S,
    PLUS_DEFAULT_S,
    REPLY_TOPIC,
    SAMPLE_MAX_S,
    UPLOAD_MAX_S,
    WORKMODE_PLUS,
    WORKMODE_RUN,
    WORKMODES,
    CommandError,
    answer,
    parse,
    sensor_ids,
)

#: Where simulated convention devices publish (DEVICES-CN.md: legacy firmwares use $dp).
DATA_TOPIC = "$dp"
#: The command topics they listen on.
COMMAND_FILTER = "$creq/+/cmd"
#: sensor_state codes of the firmware read (0 healthy; -2 CHANNEL_DATA_ERR).
SENSOR_OK, SENSOR_DATA_ERR = 0, -2


def iso_z(t: float) -> str:
    """``t`` as the firmware writes it: ``YYYY-MM-DDThh:mm:ss.mmmZ``."""
    ms = int(round(t * 1000.0))
    return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def frame(kind: int, body: bytes) -> bytes:
    """The 3-byte header (type, big-endian length) before a body."""
    return bytes([kind]) + len(body).to_bytes(2, "big") + body


@dataclass
class _Device:
    site: str
    device: str
    code: str
    clock_offset_s: float
    #: registry channel name -> (convention channel, field)
    sources: dict[str, tuple[str, str]]
    sensors: list[str]
    #: the firmware's state: per sensor its sample and plus intervals, the work mode, the last msgid
    sample: dict[str, float]
    plus: dict[str, float]
    mode: str = WORKMODE_RUN
    last_msgid: str | None = None


class ConventionDevices:
    """The registry's convention devices and how their messages look (see the module's docstring)."""

    def __init__(self, registry: Registry, apikeys: Mapping[str, str] | None = None) -> None:
        self.by_key: dict[tuple[str, str], _Device] = {}
        self.by_code: dict[str, _Device] = {}
        #: device code -> the apikey the device checks (``apikeys``, else read from the
        #: registry's references as the daemon reads them: ConfigError when one cannot be)
        self._apikeys: dict[str, str] = dict(apikeys) if apikeys is not None else (
            device_apikeys(registry) if any(d.apikey for s in registry.sites.values() for d in s.devices) else {})
        for site in registry.sites.values():
            for dev in site.devices:
                sensors = sensor_ids(ch.source for ch in dev.channels)
                if not dev.code or not sensors:
                    continue
                sources = {}
                for ch in dev.channels:
                    if ch.source:
                        name, _, fld = ch.source.partition(".")
                        sources[ch.channel] = (name, fld or "value")
                sample = {sid: min(ch.interval_s for ch in dev.channels if (ch.source or "").partition(".")[0] == sid) for sid in sensors}
                d = _Device(site.site, dev.device, dev.code, float(getattr(dev, "clock_offset_s", None) or 0.0), sources, sensors,
                            sample, {sid: float(PLUS_DEFAULT_S) for sid in sensors})
                self.by_key[(site.site, dev.device)] = d
                self.by_code[dev.code] = d
        self.faulty: dict[tuple[str, str], int] = {}
        self._wire = 0

    def __bool__(self) -> bool:
        return bool(self.by_key)

    def fault_sensor(self, code: str, sensor_id: str, state: int = SENSOR_DATA_ERR) -> None:
        """From now on the device's heartbeats report ``sensor_state[sensor_id] = state``."""
        self.faulty[(code, sensor_id)] = state

    # -- messages ---------------------------------------------------------------------------

    def convert(self, msgs: list[Any]) -> list[Any]:
        """``msgs`` with each convention device's message rewritten in place (same objects)."""
        for m in msgs:
            d = self.by_key.get((m.site, m.device_code))
            if d is None or m.malformed:
                continue
            try:
                doc = json.loads(m.payload)
            except ValueError:
                continue
            body = self._data(d, doc) if m.kind == "data" else self._status(d, doc)
            if body is None:
                continue
            m.topic = DATA_TOPIC
            m.payload = json.dumps({d.code: body}, separators=(",", ":")).encode()
        return msgs

    def _data(self, d: _Device, doc: Any) -> dict[str, Any] | None:
        out: dict[str, dict[str, dict[str, float]]] = {}
        for r in doc.get("readings") or []:
            src = d.sources.get(r.get("ch"))
            if src is None:
                continue
            name, fld = src
            t = float(r["t"]) + d.clock_offset_s
            out.setdefault(name, {}).setdefault(iso_z(t), {})[fld] = r["v"]
        return out or None

    def _status(self, d: _Device, doc: Any) -> dict[str, Any] | None:
        if not isinstance(doc, dict) or "t" not in doc:
            return None
        fields = {
            "battery_volt": doc.get("battery_v"),
            "solar_volt": doc.get("solar_v"),
            "temp": doc.get("temp_c"),
            "signal_4g": doc.get("signal_dbm"),
            "sw_version": doc.get("fw"),
            "sound_state": 0,
            "sensor_state": {s: self.faulty.get((d.code, s), SENSOR_OK) for s in d.sensors},
        }
        return {"S1_ZT_1": {iso_z(float(doc["t"]) + d.clock_offset_s): {k: v for k, v in fields.items() if v is not None}}}

    def on_wire(self, m: Any) -> bytes:
        """What goes on the wire: every other convention data message framed (type 2)."""
        if m.topic != DATA_TOPIC or m.kind != "data":
            return bytes(m.payload)
        self._wire += 1
        return frame(2, m.payload) if self._wire % 2 else bytes(m.payload)

    # -- commands ---------------------------------------------------------------------------

    def obey(self, sim: Any, topic: str, payload: bytes, now: float) -> tuple[str, bytes | None, dict[str, Any]]:
        """Carry out a command on ``$creq/{code}/cmd``: (answer topic, answer or None when the
        device drops it unanswered, log entry). Raises ``CommandError``/``KeyError`` for what no
        device of ours would answer. The log entry never holds an apikey."""
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != "$creq" or parts[2] != "cmd":
            raise CommandError(f"not a command topic: {topic[:80]!r}")
        d = self.by_code.get(parts[1])
        if d is None:
            raise KeyError(f"no simulated convention device {parts[1][:64]!r}")
        doc = parse(payload)
        cmd, msgid = doc["$cmd"], doc.get("msgid")
        entry: dict[str, Any] = {"topic": topic, "site": d.site, "device": d.device, "code": d.code, "cmd": cmd, "msgid": msgid, "t": now}
        key = self._apikeys.get(d.code)
        if key is not None and doc.get("apikey") != key:
            # cigemRxdataTask: no apikey, or another one: not executed, not answered.
            entry.update(ok=False, result=None, dropped="no apikey" if "apikey" not in doc else "wrong apikey")
            return REPLY_TOPIC, None, entry
        if msgid is not None and msgid == d.last_msgid:
            entry.update(ok=False, result=None, dropped="msgid already executed")
            return REPLY_TOPIC, None, entry
        d.last_msgid = msgid
        ok = False
        if cmd == "setsensortime":
            try:
                sid = doc["sensor_id"]
                sample, upload, plus = (int(doc[k]) for k in ("sample_intv", "upload_intv", "plus_intv"))
            except (KeyError, ValueError):
                sid, sample, upload, plus = "", 0, 0, 0
            if sid in d.sensors and INTERVAL_MIN_S <= sample <= SAMPLE_MAX_S and INTERVAL_MIN_S <= upload <= UPLOAD_MAX_S and INTERVAL_MIN_S <= plus <= SAMPLE_MAX_S:
                d.sample[sid], d.plus[sid] = float(sample), float(plus)
                self._retime(sim, d, [sid], now)
                ok = True
                entry.update(sensor_id=sid, interval_s=self._interval(d, sid))
        elif cmd == "setworkmode":
            # The firmware reads the one character right after "setworkmode&mode=".
            mode = payload.decode("utf-8", "replace").partition("setworkmode&mode=")[2][:1]
            if mode in WORKMODES and doc.get("mode") == mode:
                d.mode = mode
                self._retime(sim, d, d.sensors, now)
                ok = True
                entry.update(mode=mode)
        entry.update(ok=ok, result="succ" if ok else "fail")
        return REPLY_TOPIC, answer(cmd, ok, msgid, key).encode(), entry

    @staticmethod
    def _interval(d: _Device, sid: str) -> float:
        return d.plus[sid] if d.mode == WORKMODE_PLUS else d.sample[sid]

    def _retime(self, sim: Any, d: _Device, sids: list[str], now: float) -> None:
        for sid in sids:
            channels = [name for name, (src, _) in d.sources.items() if src == sid]
            sim.set_sampling(d.site, d.device, self._interval(d, sid), now, channels=channels)


def is_command_topic(topic: str) -> bool:
    return topic.startswith("$creq/") and topic.endswith("/cmd")
