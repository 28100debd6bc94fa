"""Recorded feeds (DESIGN §8): read them, and build a site registry from one.

A feed is CSV with the header ``site,device,channel,t,value`` (t as epoch seconds or RFC
3339) or JSONL with one ``{"topic": ..., "payload": {...}}`` native payload a line. Reading
a feed never stops at a bad row: the row is reported (line number and reason) and the rest
is read, as the daemon does with a bad message. A JSONL payload is held to the same
station-facing rules as the daemon's codec where a feed can check them: its ``device`` must be
the topic's device.

A JSONL feed may also hold messages of the national geohazard IoT convention (universal
devices, ingest/codecs_cn.py) as they were received on a device topic such as ``$dp``
(what ``geowarn simulate`` records for convention devices)::

    {"topic": "$dp", "t": 1764374400.0, "client_id": "SK11E80D1307426AZ", "payload": {"SK11E80D1307426AZ": {...}}}
    {"topic": "$dp", "t": "2025-11-29T00:10:00Z", "client_id": "SK11E80D1307426AZ", "payload": "AgBY eyJTSzEx..."}

``topic``: the topic it arrived on (any topic that is not ``…/{site}/{device}/data|status``);
``t``: when it was received (epoch seconds or RFC 3339; the reading time of a body without a
time layer, and the reference the codec checks times against); ``payload``: the body as a JSON
object, or a string of the base64 of the bytes exactly as received (with the optional 3-byte
frame header, or anything else); ``client_id``: the connection's MQTT client id, kept for the
record (the device is the one its body names: an MQTT PUBLISH carries no client id). Such a line
is decoded by the daemon's own codec (``CnCodec``) with the registry, in file order (rain
counters are differenced across lines as live), so replay and live get the same readings; a
message the codec refuses is a reject with the codec's reason code. Reading one needs the
registry (``read_feed(..., registry=)``, ``geowarn replay --sites``).

Devices' statuses (a convention body's ``S1_ZT``, a native ``…/status`` line) are read too when
asked for (``read_feed(..., statuses=)``): decoded by the same codec as live, each with its place
among the readings, so that replay gives each to the judge where live would (``sensor_state``:
a sensor its device reports faulty raises nothing; service/replay.py).
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from geowarn.config.registry import DISPLACEMENT_LIKE, Kind, Registry, parse_registry
from geowarn.core.timefmt import parse_time

if TYPE_CHECKING:
    from geowarn.ingest.codecs_cn import CnCodec

#: Distinct topics of convention lines a feed may use (each becomes a topic of the codec).
MAX_CN_TOPICS = 64

CSV_HEADER = ["site", "device", "channel", "t", "value"]
_KIND_NAME = re.compile(r"^(?P<kind>[a-z_]+?)(\.[A-Za-z0-9_-]+)?$")


class FeedError(Exception):
    """A feed that cannot be read at all (missing, empty, wrong header)."""


@dataclass(frozen=True, slots=True)
class FeedRow:
    site: str
    device: str
    channel: str
    t: float
    value: float
    drill: bool = False


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """A device's status in a feed, as the daemon's codec decoded it (``Decoded.status``: for
    the convention's ``S1_ZT``, ``sensor_state`` among the rest). ``t``: its own time, as the
    daemon stores it (milliseconds); ``after``: how many readings of the same ``read_feed``
    came before it in the file (the status applies before the ``after``-th reading on, as
    live it applies before the readings that arrived with or after it); ``line``: its line."""

    site: str
    device: str
    t: float
    status: dict[str, Any]
    after: int
    line: int


@dataclass(frozen=True, slots=True)
class FeedReject:
    line: int
    reason: str
    text: str


def _number(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError(f"value {raw!r} is not a number")
    v = float(raw)
    if not math.isfinite(v):
        raise ValueError(f"value {raw!r} is not finite")
    return v


def read_feed(
    path: str | Path, rejects: list[FeedReject] | None = None, registry: Registry | None = None, statuses: list[FeedStatus] | None = None
) -> Iterator[FeedRow]:
    """Rows of a CSV or JSONL feed in file order; bad rows go to ``rejects``. ``registry``:
    needed by a JSONL feed of the national convention (its lines are decoded with it); such a
    feed without one is a ``FeedError``. ``statuses``: the devices' status lines of a JSONL
    feed (a convention body's ``S1_ZT``, a native ``…/status`` line) are decoded by the
    daemon's codec and added, in file order, each with its place among the rows
    (``FeedStatus.after``); a native status line needs the registry (without one it is skipped,
    as before)."""
    path = Path(path)
    if not path.is_file():
        raise FeedError(f"{path}: no such feed file")
    rej = rejects if rejects is not None else []
    with open(path, encoding="utf-8", newline="") as fh:
        first = fh.readline()
        fh.seek(0)
        if first.lstrip().startswith("{"):
            codec = _cn_codec(path, fh, registry)
            fh.seek(0)
            yield from _read_jsonl(fh, rej, codec, registry if statuses is not None else None, statuses)
            return
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise FeedError(f"{path}: empty feed")
        if [h.strip() for h in header] != CSV_HEADER:
            raise FeedError(f"{path}: CSV header must be {','.join(CSV_HEADER)}, not {','.join(header)}")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 5:
                rej.append(FeedReject(lineno, f"expected 5 fields, got {len(row)}", ",".join(row)[:200]))
                continue
            site, device, channel, t_raw, v_raw = (x.strip() for x in row)
            try:
                t = parse_time(float(t_raw) if _looks_numeric(t_raw) else t_raw)
                v = _number(v_raw)
            except ValueError as exc:
                rej.append(FeedReject(lineno, str(exc), ",".join(row)[:200]))
                continue
            yield FeedRow(site, device, channel, t, v)


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _is_native(topic: str) -> bool:
    parts = topic.split("/")
    return len(parts) >= 4 and parts[-1] in ("data", "status")


def _cn_codec(path: Path, fh: TextIO, registry: Registry | None) -> CnCodec | None:
    """The convention codec for a JSONL feed's convention lines (their topics, found in a first
    pass), or None when it has none."""
    topics: set[str] = set()
    for lineno, line in enumerate(fh, start=1):
        if '"topic"' not in line:
            continue
        try:
            topic = json.loads(line).get("topic")
        except (ValueError, AttributeError):
            continue  # reported by the reading pass
        if isinstance(topic, str) and topic and not _is_native(topic):
            topics.add(topic)
            if registry is None:
                raise FeedError(f"{path}:{lineno}: a message of the national convention (topic {topic[:64]!r}): "
                                "give the site registry (--sites) that maps its device codes and channels")
            if len(topics) > MAX_CN_TOPICS:
                raise FeedError(f"{path}:{lineno}: more than {MAX_CN_TOPICS} distinct device topics")
    if not topics or registry is None:
        return None
    from geowarn.ingest.codecs_cn import CnCodec

    # Each recorded topic as it is: the device is the one the body names.
    return CnCodec(registry, topics=sorted(topics))


def _cn_rows(codec: CnCodec, doc: dict[str, Any], lineno: int, line: str, rej: list[FeedReject], status: list[Any] | None = None) -> Iterator[FeedRow]:
    """A convention line's readings, decoded as the daemon decodes the message; its status
    (``Decoded``'s) appended to ``status`` as (site, device, status)."""
    from geowarn.ingest.codecs import PayloadError

    topic, raw = doc["topic"], doc["payload"]
    if "t" not in doc:
        raise ValueError("a message of the national convention needs t, when it was received")
    now = parse_time(doc["t"])
    if isinstance(raw, str):
        try:
            payload = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("payload is a string but not base64 (give the body as a JSON object, or the received bytes in base64)") from None
    elif isinstance(raw, dict):
        payload = json.dumps(raw, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    else:
        raise TypeError(f"payload must be the body as a JSON object or base64 of the received bytes, not {type(raw).__name__}")
    try:
        out = codec.decode(topic, payload, now)
    except PayloadError as exc:
        rej.append(FeedReject(lineno, str(exc), line[:200]))
        return
    finally:
        codec.moved_totals(settle=True)  # a line is a message the store committed
    for r in out.rejects:
        rej.append(FeedReject(lineno, f"{r.reason}: {r.detail}", json.dumps(r.item, ensure_ascii=False, default=str)[:200]))
    if status is not None and out.status is not None:
        status.append((out.site, out.device, out.status))
    for info, t, v in out.readings:
        yield FeedRow(info.site, info.device, info.channel, t, v)


def _native_status(codecs: dict[str, CnCodec], registry: Registry, topic: str, payload: Any, last_t: float | None) -> tuple[str, str, dict[str, Any]] | None:
    """A native ``…/{site}/{device}/status`` line decoded by the daemon's codec (under the
    topic's own prefix; a convention body on it is read as live reads it): (site, device,
    status), or None when it holds none. A feed line has no receive time: its times are not
    checked against one, and a status without a time of its own takes the time of the reading
    before it in the file (none before it: skipped). ``PayloadError`` as the daemon's."""
    from geowarn.ingest.codecs_cn import CnCodec

    prefix = topic.rsplit("/", 3)[0]
    codec = codecs.get(prefix)
    if codec is None:
        codec = codecs[prefix] = CnCodec(registry, prefix)
    raw = payload.encode("utf-8") if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False).encode("utf-8")
    out = codec.decode(topic, raw, math.inf)
    status = out.status
    if status is None:
        return None
    if not math.isfinite(float(status.get("t", math.inf))):
        if last_t is None:
            return None
        status = {**status, "t": last_t}
    return out.site, out.device, status


def _read_jsonl(
    fh: TextIO, rej: list[FeedReject], codec: CnCodec | None = None, registry: Registry | None = None, statuses: list[FeedStatus] | None = None
) -> Iterator[FeedRow]:
    from geowarn.ingest.codecs import PayloadError
    from geowarn.ingest.journal import to_ms

    rows, last_t = 0, None  # readings yielded so far: where a status falls among them
    native: dict[str, CnCodec] = {}
    found: list[Any] | None = [] if statuses is not None else None

    def add(lineno: int) -> None:
        assert statuses is not None and found is not None
        for site, device, st in found:
            statuses.append(FeedStatus(site, device, to_ms(st["t"]) / 1000.0, st, rows, lineno))
        found.clear()

    for lineno, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            topic, payload = doc["topic"], doc["payload"]
            if codec is not None and isinstance(topic, str) and not _is_native(topic):
                out = list(_cn_rows(codec, doc, lineno, line, rej, found))
                if found:
                    add(lineno)  # the status first: live takes it before the readings of its message
                rows += len(out)
                if out:
                    last_t = out[-1].t
                yield from out
                continue
            parts = topic.split("/")
            if len(parts) < 4 or parts[-1] not in ("data", "status"):
                raise ValueError(f"topic {topic!r} is not …/{{site}}/{{device}}/data")
            if parts[-1] == "status":
                if found is not None and registry is not None:
                    try:
                        st = _native_status(native, registry, topic, payload, last_t)
                    except PayloadError as exc:
                        rej.append(FeedReject(lineno, str(exc), line[:200]))
                        continue
                    if st is not None:
                        found.append(st)
                        add(lineno)
                continue
            site, device = parts[-3], parts[-2]
            # As the live daemon does (DESIGN §3): a device cannot speak for another, so a
            # payload naming a device other than its topic's is rejected whole, never counted
            # for the topic's device.
            named = payload.get("device")
            if named != device:
                # The daemon's reason code first, as on its dead-letter topic.
                rej.append(FeedReject(lineno, f"device_mismatch: payload device {str(named)[:64]!r} does not match topic device {device!r}", line[:200]))
                continue
            drill = bool(payload.get("drill", False))
            for r in payload["readings"]:
                try:
                    row = FeedRow(site, device, str(r["ch"]), parse_time(r["t"]), _number(r["v"]), drill)
                except (KeyError, TypeError, ValueError) as exc:
                    rej.append(FeedReject(lineno, f"bad reading: {exc}", json.dumps(r)[:200]))
                    continue
                rows, last_t = rows + 1, row.t
                yield row
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            rej.append(FeedReject(lineno, f"bad line: {exc}", line[:200]))


def kind_of_channel(name: str) -> Kind | None:
    """The kind a channel name states: ``displacement``, ``gnss_e``, ``rain.bucket2``…"""
    m = _KIND_NAME.match(name)
    if not m:
        return None
    try:
        return Kind(m.group("kind"))
    except ValueError:
        return None


def estimate_noise(values: list[float]) -> float | None:
    """Reading noise (1 sigma) of a position series, from its second differences: for white
    noise Var(x[i+1] - 2x[i] + x[i-1]) = 6 sigma^2. The median absolute value keeps real steps
    and spikes from dominating; motion that bends the series only makes the estimate larger,
    which raises the noise floors (the cautious direction for false alarms)."""
    if len(values) < 8:
        return None
    x = np.asarray(values, dtype=float)
    d2 = np.diff(x, 2)
    mad = float(np.median(np.abs(d2 - np.median(d2))))
    sigma = mad * 1.4826 / np.sqrt(6.0)
    return sigma if sigma > 0 else None


def registry_from_rows(rows: list[FeedRow], source: str = "<feed>") -> Registry:
    """A registry holding each site, device and channel of a feed; kinds from channel names,
    expected intervals from the data (median spacing of each channel's readings)."""
    times: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    values: dict[tuple[str, str, str], list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        times[(r.site, r.device, r.channel)].append(r.t)
        values[(r.site, r.device, r.channel)].append((r.t, r.value))
    unknown = sorted({ch for (_, _, ch) in times if kind_of_channel(ch) is None})
    if unknown:
        kinds = ", ".join(k.value for k in Kind)
        raise FeedError(
            f"{source}: channel name(s) {', '.join(unknown)} state no kind; name channels kind[.suffix] ({kinds}) or give --sites FILE"
        )
    sites: dict[str, dict[str, list[dict[str, object]]]] = defaultdict(lambda: defaultdict(list))
    for (site, device, channel), ts in sorted(times.items()):
        u = np.unique(np.asarray(ts))
        interval = float(np.median(np.diff(u))) if len(u) > 1 else 600.0
        kind = kind_of_channel(channel)
        assert kind is not None  # checked above
        ch: dict[str, object] = {"channel": channel, "kind": kind.value, "interval_s": max(interval, 1.0)}
        if kind in DISPLACEMENT_LIKE:
            noise = estimate_noise([v for _, v in sorted(values[(site, device, channel)])])
            if noise is not None:
                ch["noise"] = noise
                ch["noise_source"] = "estimated"  # the floor still holds under it (detectors/noise.py)
        sites[site][device].append(ch)
    doc = {
        "sites": [
            {
                "site": site,
                "name": site,
                # A feed carries no location or county; replay does not need them.
                "admin": "999999",
                "lat": 0.0,
                "lon": 0.0,
                "devices": [{"device": d, "channels": chans} for d, chans in devices.items()],
            }
            for site, devices in sites.items()
        ]
    }
    return parse_registry(doc, source)
