"""The response chain in the daemon: engine actions into the outbox, state persisted with them,
and people's requests.

``OutboxSink`` is the daemon's ``ChainSink`` (alerts/chain.py). Every transition is carried out
in ONE outbox transaction: the messages its actions produce (a notification per notifier of the
unit, the CAP message for ``{prefix}/cap/{admin}``, the ``set_sampling`` commands for the
site's devices) and the site's new engine state. So a restart in the middle of an escalation
resumes from the saved state and re-sends nothing that was sent (ids are stable, the outbox
ignores a repeat), and nothing decided is lost before it is queued.

CAP messages are validated against the OASIS schema and also written to ``DATA_DIR/cap/``
(named by their identifier, so writing one again changes nothing).

``LiveChain`` is the chain as the daemon runs it: a ``ResponseChain`` on an ``OutboxSink``,
resumed from the outbox, plus the answers to people's requests. Acks, quick-report
submissions and shelving arrive as ``Request``s (from ``{prefix}/ack``, ``{prefix}/report``,
``{prefix}/shelve`` and ``{prefix}/unshelve`` on MQTT; ``geowarn ack`` and ``geowarn report
submit`` publish there) and are answered with a ``Result`` the caller publishes on ``…/result``.
On the bus they are signed (alerts/control.py): the detection worker lets a request through to
``Request.from_doc`` only when its MAC, age and nonce pass, and signs its answer.
``Request.by`` is the identity the signer vouches for; ``Request.name`` is what the person typed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geowarn.alerts.cap import DEFAULT_SENDER
from geowarn.alerts.chain import ResponseChain, ZeroStats
from geowarn.alerts.model import (
    Action,
    Cap,
    Event,
    Notify,
    SetSampling,
    Shelve,
    SiteAlert,
    Unshelve,
)
from geowarn.alerts.policy import AlertPolicy
from geowarn.alerts.notifiers import EXERCISE_PREFIX, Outgoing, outgoing_for, subject_for
from geowarn.alerts.outbox import Outbox
from geowarn.config.registry import Registry
from geowarn.config.roster import Roster
from geowarn.ingest.commands_cn import PLUS_DEFAULT_S, WORKMODE_PLUS, WORKMODE_RUN, command_topic, msgid_for, sensor_ids, setsensortime, setworkmode, with_apikey
from geowarn.core.logfields import kv

log = logging.getLogger(__name__)

#: Outbox notifier keys of the daemon's own MQTT publications (see ``TopicNotifier``).
CAP_KEY = "mqtt/cap"
COMMAND_KEY = "mqtt/cmd"

STATE_PREFIX = "alert/"
_ZERO_KEY = "chain/zero_last"
_RAISED_KEY = "chain/raised"

#: 9999-12-31T23:59:59Z: later times cannot be written in CAP, RFC 3339 or ISO 8601.
LATEST_T = 253402300799.0

#: The request topics ({prefix}/{kind}) the detection worker answers on {prefix}/{kind}/result.
REQUEST_KINDS = ("ack", "report", "shelve", "unshelve")


@dataclass(frozen=True)
class Request:
    """A person's action: ``ack`` of a warning (by warning id or by a notification's id),
    ``report`` (a quick report submitted, by task id), ``shelve`` a site for maintenance until
    a time (its level is followed, nothing is announced) or ``unshelve`` it."""

    kind: str  # "ack" | "report" | "shelve" | "unshelve"
    target: str
    by: str
    note: str = ""
    request_id: str = ""
    level: int | None = None
    until: float | None = None
    #: shelve/unshelve: one device of the site under maintenance instead of the whole site.
    device: str = ""
    #: The name the person typed (the console's name field, ``geowarn ack --by``): free text,
    #: kept with the note. ``by`` is the signer's authenticated identity: the API token's
    #: name, the CLI's OS user.
    name: str = ""

    @property
    def signed_note(self) -> str:
        """The note as the warning's history keeps it: the typed name in front when it says
        more than ``by``."""
        if not self.name or self.name == self.by:
            return self.note
        return f"{self.name}: {self.note}" if self.note else self.name

    @staticmethod
    def request_id_of(payload: bytes) -> str:
        """The caller's request id, even from a request that is otherwise invalid (so the
        refusal reaches whoever asked); "" when it is not id-shaped (at most 64 characters)."""
        from geowarn.alerts.control import Refused, decode_request, request_id_of

        try:
            return request_id_of(decode_request(payload))
        except Refused:  # too large to read, or not JSON
            return ""

    @classmethod
    def parse(cls, kind: str, payload: bytes) -> "Request":
        """From an MQTT payload; ``ValueError`` with the reason when it is not one."""
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        return cls.from_doc(kind, doc)

    @classmethod
    def from_doc(cls, kind: str, doc: Any) -> "Request":
        """From a decoded request (the document the control gate admitted); ``ValueError``
        with the reason when it is not one."""
        if not isinstance(doc, dict):
            raise ValueError("a request is a JSON object")
        if kind not in REQUEST_KINDS:
            raise ValueError(f"unknown request {kind!r} (one of {', '.join(REQUEST_KINDS)})")
        target = {"ack": doc.get("id"), "report": doc.get("task_id", doc.get("id"))}.get(kind, doc.get("site"))
        by = doc.get("by")
        if not isinstance(target, str) or not target:
            raise ValueError("missing the site" if kind in ("shelve", "unshelve") else "missing the id of the warning (or notification / task)")
        until = doc.get("until")
        if kind == "shelve":
            if isinstance(until, str):
                from geowarn.core.timefmt import parse_time

                until = parse_time(until)
            if not isinstance(until, (int, float)) or isinstance(until, bool):
                raise ValueError("shelve needs until: epoch seconds or an RFC 3339 time")
            try:
                until = float(until)
            except OverflowError:
                raise ValueError("until is out of range") from None
            if not (math.isfinite(until) and 0 < until < LATEST_T):
                raise ValueError("until must be a time between 1970 and 9999")
        if not isinstance(by, str) or not by.strip():
            raise ValueError("missing by: who acknowledges / submits")
        level = doc.get("level")
        if level is not None and (not isinstance(level, int) or not 1 <= level <= 4):
            raise ValueError("level must be 1-4")
        note = doc.get("note", "")
        device = doc.get("device") or ""
        if not isinstance(device, str):
            raise ValueError("device must be a device code")
        name = doc.get("name") or ""
        if not isinstance(name, str):
            raise ValueError("name must be text")
        return cls(kind, target, by.strip(), note if isinstance(note, str) else str(note), str(doc.get("request", "")), level,
                   float(until) if kind == "shelve" and until is not None else None, device, name.strip())


@dataclass(frozen=True)
class Result:
    request_id: str
    ok: bool
    detail: str
    rule: str = ""
    site: str = ""
    warning_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"request": self.request_id, "ok": self.ok, "detail": self.detail, "rule": self.rule, "site": self.site, "warning_id": self.warning_id}


class OutboxSink:
    """The daemon's chain sink: a transition's messages and the chain's state in one outbox
    transaction, then the dispatcher woken (``wake``)."""

    def __init__(self, outbox: Outbox, cap_dir: Path, prefix: str = "geowarn", wake: Any = None) -> None:
        self.outbox = outbox
        self.prefix = prefix
        self.cap_dir = Path(cap_dir)
        self.cap_dir.mkdir(parents=True, exist_ok=True)
        self.wake = wake

    # -- persistence -------------------------------------------------------------------------

    def resume(self, chain: ResponseChain) -> None:
        """Put the state saved with the messages back into ``chain`` (a restart)."""
        for _key, value in self.outbox.states(STATE_PREFIX):
            s = SiteAlert.from_dict(value)
            if s.site in chain.registry.sites:
                chain.states[(s.site, s.exercise)] = s
        zero = self.outbox.get_state(_ZERO_KEY)
        if zero:
            chain.zero_last.update({k: v for k, v in zero.items()})
        chain.raised = [(float(t), str(site), str(admin), int(lvl), str(wid)) for t, site, admin, lvl, wid in self.outbox.get_state(_RAISED_KEY, [])]
        if chain.states:
            log.info("response chain resumed", extra=kv(site_states=len(chain.states), open_warnings=sum(1 for s in chain.states.values() if s.announced > 0)))

    @staticmethod
    def _state_key(key: tuple[str, bool]) -> str:
        return f"{STATE_PREFIX}{key[0]}|{'exercise' if key[1] else 'real'}"

    # -- outputs -------------------------------------------------------------------------------

    def carry_out(
        self,
        chain: ResponseChain,
        key: tuple[str, bool] | None,
        state: SiteAlert | None,
        actions: tuple[Action, ...],
        extras: Mapping[str, Mapping[str, Any]],
    ) -> None:
        msgs: list[Outgoing] = []
        # The words of each unit's messages (alerts/texts.py) need what the Notify does not
        # carry: the site's reason as the engine saw it, the registry's card, the time zone.
        reason = state.reason if state is not None else ""
        for action in actions:
            if isinstance(action, Notify):
                extra = extras.get(action.id)
                out = outgoing_for(action, chain.roster, chain.registry, tz=chain.tz, reason=reason, extra=extra)
                if extra:
                    msgs += [dataclasses.replace(m, body={**m.body, **extra}) for m in out]
                else:
                    msgs += out
            elif isinstance(action, Cap):
                try:
                    msgs.append(self._cap(chain, action))
                except Exception:
                    # A CAP message that cannot be built or is invalid is a bug; the duty units
                    # must still get the notifications of this transition.
                    log.exception("CAP message not built; the notifications go out without it", extra=kv(msg_type=action.msg_type, identifier=action.identifier))
            elif isinstance(action, SetSampling):
                msgs += self._commands(chain.registry, action)
        with self.outbox.transaction():
            # Due at once, whatever the chain's time: a clock that was ahead must not hold a
            # red warning back until real time catches up.
            self.outbox.enqueue(msgs, due=0.0)
            for m in msgs:
                if m.notifier == COMMAND_KEY and isinstance(m.body.get("msgid"), str):
                    self.outbox.expect_answer(m.body["msgid"], m.id, str(m.body.get("cmd", "setsensortime")))
            if key is not None and state is not None:
                self.outbox.set_state(self._state_key(key), state.to_dict())
            self.outbox.set_state(_ZERO_KEY, chain.zero_last)
            self.outbox.set_state(_RAISED_KEY, [list(r) for r in chain.raised[-1000:]])
        if msgs and self.wake is not None:
            self.wake()

    def _cap(self, chain: ResponseChain, action: Cap) -> Outgoing:
        ident, xml = chain.cap_xml(action)
        path = self.cap_dir / f"{ident}.xml"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(xml)
            tmp.replace(path)
        subject = subject_for("cap", action.level, action.site, action.exercise, action.msg_type)
        return Outgoing(
            id=f"{ident}/{CAP_KEY}",
            notifier=CAP_KEY,
            kind="cap",
            admin=action.admin,
            site=action.site,
            level=action.level,
            subject=subject,
            text=f"CAP {action.msg_type} {ident}",
            body={"topic": f"{self.prefix}/cap/{action.admin}", "payload": xml.decode("utf-8"), "identifier": ident, "msg_type": action.msg_type},
            t=action.t,
            exercise=action.exercise,
        )

    def _commands(self, registry: Registry, action: SetSampling) -> list[Outgoing]:
        """One ``set_sampling`` per device of the site; None restores each device's normal
        interval (its fastest channel's expected interval). A device of the national convention
        (a ``code`` and channels with a ``source``) gets its own form instead (``_cn_commands``)."""
        site = registry.sites[action.site]
        out = []
        for dev in site.devices:
            interval = action.interval_s if action.interval_s is not None else min(ch.interval_s for ch in dev.channels)
            if dev.code and sensor_ids(ch.source for ch in dev.channels):
                if action.exercise:
                    # The convention's command has no drill marker: a drill must not really
                    # accelerate a field device (its battery), nor, when the drill ends,
                    # slow down one the real state keeps accelerated.
                    continue
                out += self._cn_commands(site.admin, dev, action, interval)
                continue
            payload = {"cmd": "set_sampling", "interval_s": interval, "reason": action.reason, "exercise": action.exercise, "id": action.id}
            subject = (EXERCISE_PREFIX + " " if action.exercise else "") + f"set_sampling {dev.device} {interval:g} s"
            out.append(
                Outgoing(
                    id=f"{action.id}/{dev.device}/{COMMAND_KEY}",
                    notifier=COMMAND_KEY,
                    kind="set_sampling",
                    admin=site.admin,
                    site=action.site,
                    level=0,
                    subject=subject,
                    text=action.reason,
                    body={"topic": f"{self.prefix}/{action.site}/{dev.device}/cmd", "payload": json.dumps(payload)},
                    t=action.t,
                    exercise=action.exercise,
                )
            )
        return out


    def _cn_commands(self, admin: str, dev: Any, action: SetSampling, interval: float) -> list[Outgoing]:
        """``$cmd=setsensortime`` per convention channel the device's channels read, on
        ``$creq/{code}/cmd`` (ingest/commands_cn.py). Samples are uploaded as they are taken
        (upload_intv = sample_intv): accelerated sampling is of no use reported an hour later.
        plus_intv, the device's own accelerated interval, is the command's interval when
        GeoWarn accelerates and at most 5 min (the firmware's initial value) when it restores.
        Each command's msgid is stable (``msgid_for`` of its outbox id), so the answer on ``$dr``
        is matched to it (``Outbox.record_answer``). Then ``setworkmode``: plus (2) when
        accelerating, run (0) when restoring (ingest/commands_cn.py, "Work mode").
        The device's apikey is in none of them: the outbox never holds it; the command
        notifier (``TopicNotifier`` with the apikeys) inserts it as it publishes."""
        out = []
        commands: list[tuple[str, str | None, str, str, float | None]] = []  # (oid, sensor, cmd, text, interval)
        for sid in sensor_ids(ch.source for ch in dev.channels):
            if action.interval_s is None:
                # Back to normal: each sensor to the interval of the channels it feeds, not the
                # device's fastest (a GNSS read hourly must not go to the rain gauge's 10 min).
                interval = min((ch.interval_s for ch in dev.channels if (ch.source or "").partition(".")[0] == sid), default=interval)
            plus = interval if action.interval_s is not None else min(interval, float(PLUS_DEFAULT_S))
            oid = f"{action.id}/{dev.device}/{sid}/{COMMAND_KEY}"
            commands.append((oid, sid, "setsensortime", setsensortime(sid, interval, interval, plus, msgid_for(oid)), interval))
        if commands:
            mode = WORKMODE_PLUS if action.interval_s is not None else WORKMODE_RUN
            oid = f"{action.id}/{dev.device}/workmode/{COMMAND_KEY}"
            commands.append((oid, None, "setworkmode", setworkmode(mode, msgid_for(oid)), None))
        for oid, sensor, cmd, text, iv in commands:
            mode = text.split("&mode=")[1][:1] if cmd == "setworkmode" else ""
            what = f"{sensor} {iv:g} s" if sensor is not None and iv is not None else f"mode {mode}"
            out.append(
                Outgoing(
                    id=oid,
                    notifier=COMMAND_KEY,
                    kind="set_sampling",
                    admin=admin,
                    site=action.site,
                    level=0,
                    subject=(EXERCISE_PREFIX + " " if action.exercise else "") + f"{cmd} {dev.device} {what}",
                    text=action.reason,
                    body={"topic": command_topic(dev.code), "payload": text, "msgid": msgid_for(oid), "device": dev.device, "code": dev.code,
                          "sensor_id": sensor, "cmd": cmd, "interval_s": iv, **({"mode": mode} if mode else {})},
                    t=action.t,
                    exercise=action.exercise,
                )
            )
        return out


class LiveChain:
    """The daemon's response chain: ``chain`` (a ``ResponseChain`` on an ``OutboxSink``,
    resumed from the outbox) and the answers to people's requests (``handle``).

    The detection worker's judge feeds ``chain`` and runs its timers; this class only adds
    what a person can ask of it.
    """

    def __init__(
        self,
        registry: Registry,
        roster: Roster,
        outbox: Outbox,
        data_dir: Path,
        policy: AlertPolicy | None = None,
        *,
        prefix: str = "geowarn",
        tz: str = "Asia/Shanghai",
        zero_stats: ZeroStats | None = None,
        wake: Any = None,
        sender: str = DEFAULT_SENDER,
    ) -> None:
        self.outbox = outbox
        self.sink = OutboxSink(outbox, Path(data_dir) / "cap", prefix, wake)
        self.chain = ResponseChain(registry, roster, self.sink, policy, tz=tz, zero_stats=zero_stats, sender=sender)
        self.sink.resume(self.chain)

    # -- requests ------------------------------------------------------------------------------

    def warning_of_notification(self, notification_id: str) -> str | None:
        """The warning id a notification (an engine ``Notify`` id, or one of its outbox ids) was about."""
        item = self.outbox.get(notification_id) or self.outbox.first_with_prefix(notification_id + "/")
        if item is None:
            return None
        wid = item.msg.body.get("warning_id")
        return wid if isinstance(wid, str) else None

    def handle(self, req: Request, now: float) -> Result:
        """Apply an ack, a report submission or a site's (un)shelving; never raises for a bad request."""
        chain = self.chain
        try:
            if req.kind == "report":
                tr = chain.submit_report(req.target, req.by, now)
                return Result(req.request_id, True, f"quick report {req.target} submitted by {req.by}", tr.rule, tr.state.site, tr.state.warning_id or "")
            if req.kind in ("shelve", "unshelve"):
                if req.target not in chain.registry.sites:
                    return Result(req.request_id, False, f"unknown site {req.target!r}")
                ev: Event = Shelve(now, req.by, req.until or 0.0, req.signed_note) if req.kind == "shelve" else Unshelve(now, req.by)
                tr = chain.event(req.target, False, ev, now)
                return Result(req.request_id, tr.rule != "ignored", f"{tr.rule}: " + "; ".join(e.detail for e in tr.state.history[-1:]), tr.rule, req.target, tr.state.warning_id or "")
            wid = req.target if chain.find_warning(req.target) is not None else self.warning_of_notification(req.target)
            if wid is None or chain.find_warning(wid) is None:
                return Result(req.request_id, False, f"{req.target!r} is neither a current warning nor a notification of one")
            tr = chain.ack(wid, req.by, req.signed_note, now, req.level)
        except (KeyError, ValueError) as exc:
            return Result(req.request_id, False, str(exc).strip("'\""))
        # An ack of a level below the warning's is recorded (who saw what, when) but does not
        # stop the escalation: the requester must hear that it did not acknowledge the warning.
        ok = tr.rule not in ("ignored", "ack_stale")
        return Result(req.request_id, ok, f"{tr.rule}: " + "; ".join(e.detail for e in tr.state.history[-1:]), tr.rule, tr.state.site, wid)


class TopicNotifier:
    """Publishes ``body["payload"]`` to ``body["topic"]``: the daemon's own MQTT messages (CAP,
    device commands) go through the outbox like any notification, so a broker outage delays
    them instead of losing them. ``apikeys`` (device code -> apikey): a command to a device of
    the national convention gets its device's apikey here, as it goes out (the outbox never
    holds it; ingest/commands_cn.py)."""

    def __init__(self, publish: Any, name: str, apikeys: Mapping[str, str] | None = None) -> None:
        self.publish = publish
        self.name = name
        self._apikeys = dict(apikeys or {})

    def __repr__(self) -> str:  # never the apikeys
        return f"TopicNotifier({self.name!r}, apikeys={len(self._apikeys)})"

    def send(self, msg: Outgoing) -> None:
        from geowarn.alerts.notifiers import NotifierError

        topic, payload = msg.body.get("topic"), msg.body.get("payload")
        if not isinstance(topic, str) or not isinstance(payload, str):
            raise NotifierError(f"{msg.id}: no topic/payload to publish", permanent=True)
        key = self._apikeys.get(str(msg.body.get("code"))) if msg.body.get("code") else None
        if key is not None:
            payload = with_apikey(payload, key)
        try:
            self.publish(topic, payload.encode("utf-8"), False)
        except Exception as exc:  # converted at this boundary; the dispatcher retries
            raise NotifierError(f"MQTT publish of {msg.id} to {topic} failed: {exc!r}") from exc
