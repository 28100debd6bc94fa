"""``geowarn ack`` and ``geowarn report submit``: a duty officer's requests to the running daemon.

Both publish a JSON request at QoS 1 on ``{prefix}/ack`` or ``{prefix}/report`` (the topics
any other client may use too) and wait for the daemon's answer on ``…/result`` with the same
request id. The daemon's detection worker holds a persistent session on those topics, so a
request sent while it restarts is applied when it is back (within the control plane's 5-minute
window; later it is refused as stale); the command then says it is queued.

Requests are signed with the control key in ``DATA_DIR/control.key`` (alerts/control.py), so
only someone who can read that file (the daemon's user: ``sudo -u geowarn geowarn ack …``)
can act; ``by`` is the OS user who runs the command (sudo's ``SUDO_USER`` when set), and
``--by`` is kept as the name typed, with the note. Only an answer signed by the daemon and
bound to this request is believed; anything else on ``…/result`` is ignored.

Exit codes: 0 accepted, 1 refused (unknown id, already lifted…), 2 configuration error,
3 no answer within ``--wait`` seconds (the broker has the request; it applies when the daemon
runs), 4 the broker was not reachable (nothing was sent).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt

from geowarn.alerts.control import WINDOW_S, ControlKey

EXIT_NO_ANSWER = 3
EXIT_UNREACHABLE = 4


def send_request(
    url: str, prefix: str, kind: str, doc: dict[str, Any], wait_s: float, ca_file: str | None = None, *, key: ControlKey, ignored: list[dict[str, Any]] | None = None
) -> dict[str, Any] | None:
    """Sign and publish one request and wait for its verified result (None: none in time).
    Answers that do not verify are ignored and, when ``ignored`` is given, appended to it."""
    from geowarn.config.settings import MqttTarget

    target = MqttTarget(url)
    request_id = str(doc.setdefault("request", uuid.uuid4().hex))
    signed = key.sign_request(kind, doc, time.time())
    answers: queue.Queue[dict[str, Any]] = queue.Queue()
    subscribed: queue.Queue[bool] = queue.Queue()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe(f"{prefix}/{kind}/result", qos=1)

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        subscribed.put(True)

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            answer = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(answer, dict) or answer.get("request") != request_id:
            return
        if key.answers(kind, answer, signed):
            answers.put(answer)
        elif ignored is not None:
            ignored.append(answer)

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"geowarn-cli-{request_id[:12]}")
    if target.username is not None:
        c.username_pw_set(target.username, target.password)
    if target.tls:
        c.tls_set(ca_certs=ca_file)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect(target.host, target.port, 30)
    c.loop_start()
    try:
        subscribed.get(timeout=10)  # subscribe to the answer before asking
        info = c.publish(f"{prefix}/{kind}", json.dumps(signed, ensure_ascii=False).encode(), qos=1)
        info.wait_for_publish(10)
        if not info.is_published():
            raise OSError("the broker did not acknowledge the request (PUBACK) within 10 s")
        try:
            return answers.get(timeout=wait_s)
        except queue.Empty:
            return None
    finally:
        c.disconnect()
        c.loop_stop()


def _run(args: argparse.Namespace, kind: str, doc: dict[str, Any]) -> int:
    from geowarn.alerts.control import load_or_create_key
    from geowarn.config.errors import ConfigError
    from geowarn.config.settings import load_settings

    try:
        s = load_settings(args.config)
        key = load_or_create_key(s.data_dir)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"configuration error: {p}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"configuration error: the control key in {s.data_dir}: {exc}", file=sys.stderr)
        return 2
    ignored: list[dict[str, Any]] = []  # answers that did not verify: a hint when none did
    try:
        answer = send_request(s.mqtt_for(f"{s.mqtt_client_id}-cli").url, s.topic_prefix, kind, doc, args.wait, str(s.mqtt_ca_file) if s.mqtt_ca_file else None, key=key, ignored=ignored)
    except (OSError, queue.Empty) as exc:
        print(f"error: cannot reach the broker {s.mqtt.redacted()}: {exc or 'no SUBACK'}; nothing was sent", file=sys.stderr)
        return EXIT_UNREACHABLE
    if answer is None:
        print(f"no answer from the daemon within {args.wait:g} s: the request is queued at the broker but NOT confirmed; check the "
              f"warning's (or site's) state before relying on it (the daemon refuses it as stale once it is {WINDOW_S / 60:g} minutes old)")
        if ignored:
            print(
                f"warning: {len(ignored)} answer(s) to this request did not verify and were ignored (forged, or the daemon uses another "
                f"control key than {key.path}; it said: {str(ignored[-1].get('detail', ''))[:200]})",
                file=sys.stderr,
            )
        return EXIT_NO_ANSWER
    print(("accepted: " if answer.get("ok") else "refused: ") + str(answer.get("detail", "")))
    return 0 if answer.get("ok") else 1


def _signer(args: argparse.Namespace) -> dict[str, str]:
    """``by``: who runs the command, as the OS knows them; ``--by`` is only the name typed."""
    from geowarn.alerts.control import os_identity

    return {"by": os_identity(), "name": (args.by or "").strip()}


def cmd_ack(args: argparse.Namespace) -> int:
    doc: dict[str, Any] = {"id": args.id, **_signer(args), "note": args.note}
    if args.level is not None:
        doc["level"] = args.level
    return _run(args, "ack", doc)


def cmd_report_submit(args: argparse.Namespace) -> int:
    return _run(args, "report", {"task_id": args.id, **_signer(args), "note": args.note})


def add_request_parsers(sub: Any) -> None:
    a = sub.add_parser("ack", help="acknowledge a warning (by warning id or notification id); stops its escalation")
    a.add_argument("id", help="the warning id (or the id of a notification about it)")
    a.add_argument("--by", default="", help="your name, kept with the note (the ack is signed as the OS user running this command)")
    a.add_argument("--note", default="", help="what you are doing about it")
    a.add_argument("--level", type=int, choices=(1, 2, 3, 4), default=None, help="the level you acknowledge (default: the current one)")
    a.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the daemon's answer")
    a.add_argument("--config", default=None)
    a.set_defaults(func=cmd_ack)

    r = sub.add_parser("report", help="quick reports (速报)")
    rsub = r.add_subparsers(dest="report_command", required=True)
    rs = rsub.add_parser("submit", help="mark a quick-report task as submitted; stops its reminders and escalation")
    rs.add_argument("id", help="the quick-report task id (from the report_due notification)")
    rs.add_argument("--by", default="", help="your name, kept with the note (signed as the OS user)")
    rs.add_argument("--note", default="")
    rs.add_argument("--wait", type=float, default=15.0)
    rs.add_argument("--config", default=None)
    rs.set_defaults(func=cmd_report_submit)
