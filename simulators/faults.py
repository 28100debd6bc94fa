"""Fault injection: what goes wrong with real devices and links, on purpose and on record.

A scenario's ``[[faults]]`` (``simulators.scenario.FaultSpec``) are resolved here onto
devices (one named device, or ``device = "*"``: a share of the fleet picked by the seed).
Each resolved fault gets a ground-truth entry that the run fills in as it injects the fault
(which sequence numbers, which reading times), so a scorer can check the daemon handled
every one as DESIGN says. The kinds and what they do to the feed:

| kind | in the feed | the daemon should |
|---|---|---|
| ``dropout`` | no messages (data or status) in the window; ``seq`` jumps | raise no-data, never lower a level |
| ``duplicates`` | a message sent twice (same seq, same readings) | store the readings once |
| ``out_of_order`` | a message delivered after ``delay_messages`` later ones | store it; detectors run in event time |
| ``clock_skew`` | reading times shifted by ``skew_s`` plus ``drift_ppm`` | reject readings from the future (clock skew) |
| ``stuck`` | a channel repeats one value | flag it stuck (quality), never escalate on it |
| ``spikes`` | single readings off by ± ``magnitude`` | flag spikes, never escalate on one |
| ``battery_death`` | battery falls to 10.5 V, then silence | no-data for the device |
| ``malformed`` | a payload that is not valid JSON (CSV: a non-numeric value) | dead-letter it with the reason |
| ``impersonation`` | a device's topic carries another device's id | dead-letter it: a device cannot speak for another |
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from geowarn.core.timefmt import rfc3339
from geowarn.simulators.scenario import FaultSpec
from geowarn.simulators.seeds import stable_rng

if TYPE_CHECKING:
    from geowarn.simulators.engine import Message, SimChannel, SimDevice, Simulation

BATTERY_CUTOFF_V = 10.5
_MAX_LISTED = 500
"""Truth lists (seqs, times) stop growing here; ``count`` keeps counting."""


class DeviceFault:
    """One fault on one device, with its own random stream and its ground-truth record."""

    __slots__ = ("spec", "kind", "start", "end", "channel", "rng", "record", "stuck_values", "victim", "dead_at")

    def __init__(self, spec: FaultSpec, start: float, end: float, channel: str | None, rng: np.random.Generator, record: dict[str, Any]) -> None:
        self.spec = spec
        self.kind = spec.kind
        self.start = start
        self.end = end
        self.channel = channel
        self.rng = rng
        self.record = record
        self.stuck_values: dict[str, float] = {}
        self.victim: tuple[str, str] | None = None
        self.dead_at: float | None = None

    def active(self, t: float) -> bool:
        return self.start <= t < self.end

    def note(self, key: str, value: Any) -> None:
        self.record["count"] = self.record.get("count", 0) + 1
        lst = self.record.setdefault(key, [])
        if len(lst) < _MAX_LISTED:
            lst.append(value)


def resolve_faults(sim: "Simulation", specs: list[FaultSpec]) -> list[dict[str, Any]]:
    """Attach each fault to its devices; return the ground-truth records (filled in as the
    run goes)."""
    records: list[dict[str, Any]] = []
    by_code: dict[str, list[SimDevice]] = {}
    for d in sim.devices:
        by_code.setdefault(d.code, []).append(d)
    for i, spec in enumerate(specs):
        if spec.device == "*":
            pick = stable_rng(sim.seed, "fault-pick", str(i))
            targets = [d for d in sim.devices if pick.random() < spec.fraction]
        else:
            targets = by_code.get(spec.device, [])
            if not targets and not sim.strict_sites:
                continue  # synthetic stations: the scenario's named devices do not exist
            if not targets:
                raise ValueError(f"fault {i} ({spec.kind}) names device {spec.device!r}, which is not simulated")
        start = sim.t0 + spec.start
        end = sim.t0 + spec.end if spec.end is not None else sim.t_end
        for d in targets:
            channel = spec.channel
            names = [c.name for c in d.channels]
            if channel is not None and channel not in names:
                raise ValueError(f"fault {i} ({spec.kind}) names channel {channel!r}, which device {d.code} does not have ({', '.join(names)})")
            if spec.kind in ("stuck", "spikes") and channel is None:
                channel = names[0]
            record: dict[str, Any] = {"kind": spec.kind, "site": d.site.code, "device": d.code, "start": rfc3339(start), "end": rfc3339(end), "count": 0}
            if channel is not None:
                record["channel"] = channel
            if spec.kind == "clock_skew":
                record.update(skew_s=spec.skew_s, drift_ppm=spec.drift_ppm)
            if spec.kind == "spikes":
                record["magnitude"] = spec.magnitude
            if spec.kind == "out_of_order":
                record["delay_messages"] = spec.delay_messages
            fault = DeviceFault(spec, start, end, channel, stable_rng(sim.seed, "fault", str(i), d.site.code, d.code), record)
            if spec.kind == "impersonation":
                # Speak for a device of another site when there is one (the registry then
                # rejects it even in a CSV feed, which has no topic to compare with).
                others = [o for o in sim.devices if o.site.code != d.site.code] or [o for o in sim.devices if o is not d]
                if not others:
                    raise ValueError("an impersonation fault needs at least two devices")
                victim = others[int(fault.rng.integers(len(others)))]
                fault.victim = (victim.site.code, victim.code)
                record["as_device"] = victim.code
                record["as_site"] = victim.site.code
            if spec.kind == "battery_death":
                fault.dead_at = start + spec.hours_to_empty * 3600.0
                record["dead_at"] = rfc3339(fault.dead_at)
            d.faults.append(fault)
            records.append(record)
    return records


# -- hooks called by the engine ----------------------------------------------------------------


def offline(d: "SimDevice", t: float, seq: int | None = None) -> bool:
    """True inside a dropout window: whatever the device sends at ``t`` is lost (data
    messages lost are recorded by their ``seq``)."""
    for f in d.faults:
        if f.kind == "dropout" and f.active(t):
            if seq is not None:
                f.note("seqs", seq)
            return True
    return False


def battery_dead_at(d: "SimDevice") -> float | None:
    """When the device's battery dies (None: it does not)."""
    times = [f.dead_at for f in d.faults if f.kind == "battery_death" and f.dead_at is not None]
    return min(times) if times else None


def _battery_drain(f: DeviceFault, t: NDArray[np.float64], normal: NDArray[np.float64]) -> NDArray[np.float64]:
    assert f.dead_at is not None
    frac = np.clip((t - f.start) / (f.dead_at - f.start), 0.0, 1.0)
    # From the start the charger no longer keeps up: the voltage slides to the cut-off.
    return np.where(t >= f.start, normal - frac * (normal - BATTERY_CUTOFF_V), normal)


def status_battery(d: "SimDevice", t: float) -> float | None:
    """The heartbeat's battery voltage at ``t``, or None once the battery is dead."""
    v = d.site.battery_at(t, d.rest_v)
    for f in d.faults:
        if f.kind == "battery_death" and f.dead_at is not None:
            if t >= f.dead_at:
                return None
            if t >= f.start:
                v -= min(1.0, (t - f.start) / (f.dead_at - f.start)) * (v - BATTERY_CUTOFF_V)
    return v


def apply_reading_faults(d: "SimDevice", chans: list["SimChannel"], ts: NDArray[np.float64], vs: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Reading-level faults on readings ``vs`` (samples × ``chans``) taken at true times
    ``ts``; returns (reported times, values)."""
    t_rep = ts
    if not d.faults:
        return t_rep, vs
    names = [c.name for c in chans]
    for f in d.faults:
        kind = f.kind
        if kind not in ("stuck", "spikes", "clock_skew", "battery_death"):
            continue
        m = (ts >= f.start) & (ts < f.end)
        if kind == "battery_death":
            m = ts >= f.start
        if not m.any():
            continue
        if kind in ("stuck", "spikes"):
            if f.channel not in names:
                continue
            j = names.index(f.channel)
            vs = vs.copy()
            if kind == "stuck":
                if f.channel not in f.stuck_values:
                    f.stuck_values[f.channel] = float(vs[m, j][0])
                vs[m, j] = f.stuck_values[f.channel]
                hit = m
            else:
                hit = m & (f.rng.random(len(ts)) < f.spec.probability)
                if hit.any():
                    sign = np.where(f.rng.random(int(hit.sum())) < 0.5, -1.0, 1.0)
                    vs[hit, j] = np.round((vs[hit, j] + sign * f.spec.magnitude) * chans[j].scale) / chans[j].scale
            for t in ts[hit].tolist():
                f.note("times", round(t, 3))
        elif kind == "clock_skew":
            shift = f.spec.skew_s + f.spec.drift_ppm * 1e-6 * (ts - f.start)
            t_rep = np.where(m, t_rep + shift, t_rep)
            f.record["count"] = f.record.get("count", 0) + int(m.sum())
        else:  # battery death: the battery channel slides to the cut-off
            for j, c in enumerate(chans):
                if c.kind.value == "battery":
                    vs = vs.copy()
                    vs[:, j] = np.round(_battery_drain(f, ts, vs[:, j]) * c.scale) / c.scale
            f.record["count"] = f.record.get("count", 0) + int(m.sum())
    return t_rep, vs


def apply_message_faults(sim: "Simulation", d: "SimDevice", msg: "Message", seq: int, out: list["Message"]) -> None:
    """Message-level faults: the message goes to ``out`` (possibly twice, changed, or held
    back for out-of-order delivery); held messages due after this one follow it."""
    held_now = False
    for f in d.faults:
        if not f.active(msg.t):
            continue
        kind = f.kind
        if kind in ("duplicates", "out_of_order", "malformed", "impersonation") and f.rng.random() >= f.spec.probability:
            continue
        if kind == "malformed":
            # Cut the JSON in half: not parseable, as a garbled radio frame would be.
            msg.payload = msg.payload[: max(1, len(msg.payload) // 2)]
            msg.malformed = True
            f.note("seqs", seq)
        elif kind == "impersonation" and f.victim is not None:
            victim = f.victim[1]
            doc = json.loads(msg.payload)
            doc["device"] = victim
            msg.payload = json.dumps(doc).encode()
            msg.device_code = victim
            f.note("seqs", seq)
        elif kind == "out_of_order" and not held_now:
            d.held.append((seq + f.spec.delay_messages, msg))
            held_now = True
            f.note("seqs", seq)
        elif kind == "duplicates":
            f.note("seqs", seq)
            out.append(_copy(msg))
    if not held_now:
        out.append(msg)
    if d.held:
        keep: list[tuple[int, Message]] = []
        for release, m in d.held:
            if release <= seq and m is not msg:
                m.t = msg.t  # delivered right behind a later message
                out.append(m)
            else:
                keep.append((release, m))
        d.held = keep


def _copy(msg: "Message") -> "Message":
    return type(msg)(msg.t, msg.topic, msg.payload, msg.device, msg.kind, list(msg.rows), msg.site, msg.device_code, msg.malformed)
