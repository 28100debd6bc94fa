"""Notifiers against real receivers: HTTP server, aiosmtpd, Mosquitto, files; and the routing
from the roster."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import queue
import re
import ssl
import uuid
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from geowarn.core.clock import ManualClock
from geowarn.alerts.model import Notify as NotifyAction
from geowarn.alerts.notifiers import (
    AUDIT_KEY,
    EmailNotifier,
    JsonlNotifier,
    MqttNotifier,
    Notifier,
    NotifierError,
    Outgoing,
    SmsNotifier,
    WebhookNotifier,
    build_notifiers,
    outgoing_for,
    route,
)
from geowarn.config.errors import ConfigError
from geowarn.config.registry import load_registry
from geowarn.config.roster import Contact, Notify, Roster, Unit, load_roster
from geowarn.config.settings import example_path
from receivers import SmtpSink, http_receiver, make_cert, smtp_sink  # noqa: F401  (fixtures)
from services import free_port

SECRET = "s3cret-县"


def _msg(i: int = 1, *, exercise: bool = False, notifier: str = "420527/webhook/0", text: str = "S1 橙色预警 orange warning: 位移加速 displacement accelerating") -> Outgoing:
    subject = ("[EXERCISE 演练] " if exercise else "") + f"橙色警戒级 Warning (orange) S1 warning: S1-{i}"
    return Outgoing(
        id=f"n{i}/{notifier}",
        notifier=notifier,
        kind="warning",
        admin="420527",
        site="S1",
        level=3,
        subject=subject,
        text=text,
        body={"type": "notify", "id": f"n{i}", "level": 3, "site": "S1", "text": text},
        t=1_764_408_600.0 + i,
        exercise=exercise,
    )


@pytest.fixture
def client():
    with httpx.Client(timeout=5.0) as c:
        yield c


# -- the message -------------------------------------------------------------------------


def test_outgoing_round_trips_and_guards_its_subject():
    m = _msg(3)
    assert Outgoing.from_json(json.loads(json.dumps(m.to_json()))) == m
    with pytest.raises(ValueError, match="EXERCISE"):
        Outgoing(**{**m.to_json(), "exercise": True})
    with pytest.raises(ValueError, match="one line"):
        Outgoing(**{**m.to_json(), "subject": "two\nlines"})
    assert _msg(4, exercise=True).subject.startswith("[EXERCISE 演练]")


def test_every_notifier_meets_the_protocol(tmp_path, client):
    for n in (
        MqttNotifier(lambda topic, payload, retain: None),
        WebhookNotifier("http://127.0.0.1:9/", "x", client),
        EmailNotifier("smtp://127.0.0.1:9", "geowarn@example.org", ["a@example.org"]),
        SmsNotifier("http://127.0.0.1:9/", client, ["+8613800000000"]),
        JsonlNotifier(tmp_path / "a.jsonl"),
    ):
        assert isinstance(n, Notifier)


# -- webhook -----------------------------------------------------------------------------


def _v1(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """The documented formula, computed here and not by the code under test:
    ``v1=<hex HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>``."""
    return "v1=" + hmac.new(secret.encode("utf-8"), msg_id.encode("utf-8") + b"." + timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def test_webhook_body_is_signed_and_the_receiver_verifies_it(http_receiver, client):
    clock = ManualClock(1_764_408_700.0)
    m = _msg(1)
    WebhookNotifier(http_receiver.url + "/hook", SECRET, client, clock=clock).send(m)
    (req,) = http_receiver.wait_for(1)
    # The receiver's check, done as a receiver would: HMAC-SHA256 over id, timestamp and raw body.
    sig, msg_id, ts = req.headers["x-geowarn-signature"], req.headers["x-geowarn-id"], req.headers["x-geowarn-timestamp"]
    assert hmac.compare_digest(sig, _v1(SECRET, msg_id, ts, req.body))
    assert not hmac.compare_digest(sig, _v1("not the secret", msg_id, ts, req.body))
    # The timestamp and the id are signed: a replay under a fresh timestamp, or the body under
    # another message's id, does not verify; nor does the old body-only signature.
    assert not hmac.compare_digest(sig, _v1(SECRET, msg_id, str(int(ts) + 600), req.body))
    assert not hmac.compare_digest(sig, _v1(SECRET, "n2/420527/webhook/0", ts, req.body))
    assert sig != "sha256=" + hmac.new(SECRET.encode("utf-8"), req.body, hashlib.sha256).hexdigest()
    assert req.path == "/hook"
    assert req.headers["x-geowarn-id"] == "n1/420527/webhook/0"
    assert req.headers["x-geowarn-timestamp"] == "1764408700"
    assert req.headers["content-type"].startswith("application/json")
    doc = req.json()
    assert doc["id"] == "n1/420527/webhook/0" and doc["level"] == 3 and doc["site"] == "S1"
    assert doc["text"] == m.text and doc["body"]["type"] == "notify"


def _readme_verify() -> Any:
    """The verification snippet the README gives receivers, run as written."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "def verify(" in b]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace["verify"]


def test_the_readme_snippet_accepts_a_fresh_delivery_and_rejects_old_or_altered_ones(http_receiver, client):
    verify = _readme_verify()
    clock = ManualClock(1_764_408_700.0)
    hook = WebhookNotifier(http_receiver.url, SECRET, client, clock=clock)
    hook.send(_msg(1))
    clock.advance(30)
    hook.send(_msg(1))  # a retry: same id, new timestamp and signature
    first, retry = http_receiver.wait_for(2)
    headers = httpx.Headers(first.headers)
    assert verify(SECRET, headers, first.body, now=1_764_408_700.0 + 10)
    assert verify(SECRET, httpx.Headers(retry.headers), retry.body, now=1_764_408_730.0)
    assert first.headers["x-geowarn-id"] == retry.headers["x-geowarn-id"] and first.headers["x-geowarn-signature"] != retry.headers["x-geowarn-signature"]
    # Older than 5 minutes (a replay), or from a clock far ahead: refused.
    assert not verify(SECRET, headers, first.body, now=1_764_408_700.0 + 301)
    assert not verify(SECRET, headers, first.body, now=1_764_408_700.0 - 301)
    # Replayed with a fresh timestamp header, altered, or checked with another secret: refused.
    assert not verify(SECRET, httpx.Headers({**first.headers, "x-geowarn-timestamp": "1764409000"}), first.body, now=1_764_409_000.0)
    assert not verify(SECRET, headers, first.body.replace(b'"level":3', b'"level":1'), now=1_764_408_700.0)
    assert not verify("another secret", headers, first.body, now=1_764_408_700.0)


def test_an_unsigned_webhook_must_be_asked_for(http_receiver, client):
    with pytest.raises(ValueError, match="no secret"):
        WebhookNotifier(http_receiver.url, "", client)
    with pytest.raises(ValueError, match="contradict"):
        WebhookNotifier(http_receiver.url, SECRET, client, unsigned=True)
    WebhookNotifier(http_receiver.url, "", client, unsigned=True).send(_msg(1))
    (req,) = http_receiver.wait_for(1)
    assert "x-geowarn-signature" not in req.headers and req.headers["x-geowarn-id"] == "n1/420527/webhook/0"


@pytest.mark.parametrize("status, permanent", [(500, False), (503, False), (408, False), (429, False), (400, True), (401, True), (404, True)])
def test_webhook_errors_say_whether_a_retry_can_help(http_receiver, client, status, permanent):
    http_receiver.answer(status)
    with pytest.raises(NotifierError, match=f"HTTP {status}") as err:
        WebhookNotifier(http_receiver.url, SECRET, client).send(_msg())
    assert err.value.permanent is permanent
    assert "n1/420527/webhook/0" in str(err.value)


def test_webhook_unreachable_is_transient(client):
    url = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(NotifierError, match="unreachable") as err:
        WebhookNotifier(url, SECRET, client).send(_msg())
    assert err.value.permanent is False


def test_webhook_timeout_is_its_own(http_receiver, client):
    http_receiver.hang()
    with pytest.raises(NotifierError, match="timed out") as err:
        WebhookNotifier(http_receiver.url, SECRET, client, timeout=0.3).send(_msg())
    assert err.value.permanent is False


# -- email -------------------------------------------------------------------------------


def test_email_reaches_the_sink_with_a_utf8_subject(smtp_sink):
    m = _msg(7, exercise=True, notifier="420527/email/0")
    EmailNotifier(smtp_sink.url(), "geowarn@zigui.example.org", ["duty@zigui.example.org", "chief@zigui.example.org"], timeout=5).send(m)
    (mail,) = smtp_sink.wait_for(1)
    assert mail.mail_from == "geowarn@zigui.example.org"
    assert mail.rcpt_tos == ["duty@zigui.example.org", "chief@zigui.example.org"]
    msg = mail.message
    # The sink decodes the RFC 2047 encoded words back to the Chinese + English subject.
    assert msg["Subject"] == "[EXERCISE 演练] 橙色警戒级 Warning (orange) S1 warning: S1-7"
    assert b"=?utf-8?" in mail.raw.lower()  # the wire form is encoded, not raw UTF-8 headers
    assert msg["Message-ID"] == "<n7/420527/email/0@zigui.example.org>"
    assert msg["X-GeoWarn-Id"] == "n7/420527/email/0"
    body = msg.get_body(("plain",)).get_content()
    assert "位移加速 displacement accelerating" in body
    # The details read as a table, not as JSON (issue 15 item 8): the body's "level" is a row.
    assert "Level" in body and '"type"' not in body and "{" not in body


# Loopback only: AUTH without TLS is fine here, and aiosmtpd's warning about it is expected.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_email_login_from_the_url():
    sink = SmtpSink(users={"duty officer": "pa:ss@word"}).start()
    try:
        EmailNotifier(sink.url(userinfo="duty%20officer:pa%3Ass%40word"), "geowarn@example.org", ["a@example.org"], timeout=5).send(_msg())
        sink.wait_for(1)
        assert sink.authenticated == [True]
        with pytest.raises(NotifierError, match="refused the login") as err:
            EmailNotifier(sink.url(userinfo="duty%20officer:wrong"), "geowarn@example.org", ["a@example.org"], timeout=5).send(_msg())
        assert err.value.permanent is False  # fix the password and the message still goes
    finally:
        sink.stop()


def test_email_starttls(tmp_path):
    cert, key = make_cert(tmp_path / "certs")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    sink = SmtpSink(users={"u": "p"}, tls_context=server_ctx).start()
    try:
        EmailNotifier(sink.url(userinfo="u:p", query="starttls=1"), "geowarn@example.org", ["a@example.org"], timeout=5, ssl_context=client_ctx).send(_msg())
        (mail,) = sink.wait_for(1)
        assert sink.authenticated == [True]
        assert mail.message["X-GeoWarn-Id"] == "n1/420527/webhook/0"
    finally:
        sink.stop()


def test_email_refused_recipient_is_permanent(smtp_sink):
    smtp_sink.refuse.add("nobody@example.org")
    with pytest.raises(NotifierError, match="refused") as err:
        EmailNotifier(smtp_sink.url(), "geowarn@example.org", ["nobody@example.org"], timeout=5).send(_msg())
    assert err.value.permanent is True


def test_email_unreachable_is_transient():
    with pytest.raises(NotifierError, match="unreachable") as err:
        EmailNotifier(f"smtp://127.0.0.1:{free_port()}", "geowarn@example.org", ["a@example.org"], timeout=2).send(_msg())
    assert err.value.permanent is False


# -- SMS ---------------------------------------------------------------------------------


def test_sms_posts_one_short_text_per_phone(http_receiver, client):
    long_text = "滑坡 landslide " * 60
    m = _msg(2, notifier="420527/sms/0", text=long_text)
    SmsNotifier(http_receiver.url + "/sms", client, ["+86 717 000 1000", "+86-138-0000-0000"]).send(m)
    reqs = http_receiver.wait_for(2)
    assert [r.json()["to"] for r in reqs] == ["+867170001000", "+8613800000000"]
    for r in reqs:
        text = r.json()["text"]
        assert set(r.json()) == {"to", "text"}
        assert len(text) == 280 and text.endswith("…")
        assert text.startswith(m.subject)
    assert [r.headers["x-geowarn-id"] for r in reqs] == ["n2/420527/sms/0/+867170001000", "n2/420527/sms/0/+8613800000000"]


def test_sms_template_and_no_repeat_after_a_partial_failure(http_receiver, client):
    sms = SmsNotifier(http_receiver.url, client, ["111", "222"], {"msisdn": "{phone}", "content": "{text}", "ref": "{id}", "sign": "GeoWarn"})
    m = _msg(5, notifier="420527/sms/0", text="short")
    # The first phone gets through, the gateway fails the second: the retry texts only the second.
    http_receiver.plan(200, 503)
    with pytest.raises(NotifierError):
        sms.send(m)
    sms.send(m)
    bodies = [r.json() for r in http_receiver.wait_for(3)]
    assert [b["msisdn"] for b in bodies] == ["111", "222", "222"]
    assert bodies[0] == {"msisdn": "111", "content": f"{m.subject} short", "ref": m.id, "sign": "GeoWarn"}


def test_sms_one_refused_phone_does_not_stop_the_others(http_receiver, client):
    sms = SmsNotifier(http_receiver.url, client, ["111", "222", "333"])
    m = _msg(6, notifier="420527/sms/0", text="red")
    http_receiver.plan(200, 400, 200)  # the gateway refuses 222 as malformed
    with pytest.raises(NotifierError) as err:
        sms.send(m)
    assert err.value.permanent and "400" in str(err.value)
    assert [r.json()["to"] for r in http_receiver.wait_for(3)] == ["111", "222", "333"]
    http_receiver.plan(503)
    with pytest.raises(NotifierError) as err:  # 222 again: refused by a busy gateway this time
        sms.send(m)
    assert not err.value.permanent


# -- JSONL -------------------------------------------------------------------------------


def test_jsonl_appends_one_line_per_message(tmp_path):
    path = tmp_path / "audit" / "notify.jsonl"
    n = JsonlNotifier(path)
    n.send(_msg(1))
    n.send(_msg(2, exercise=True))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [Outgoing.from_json(json.loads(line)) for line in lines] == [_msg(1), _msg(2, exercise=True)]
    assert "演练" in lines[1]  # written as UTF-8, not \\u escapes


def test_jsonl_unwritable_is_an_actionable_error(tmp_path):
    (tmp_path / "f").write_text("a file, not a folder")
    with pytest.raises(NotifierError, match="not writable"):
        JsonlNotifier(tmp_path / "f" / "x.jsonl").send(_msg())


# -- MQTT (real Mosquitto) ---------------------------------------------------------------


def test_mqtt_publishes_to_the_admin_notify_topic(mosquitto):
    got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    subscribed: queue.Queue[int] = queue.Queue()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}")
    sub.on_message = lambda c, u, msg: got.put(msg)
    sub.on_subscribe = lambda c, u, mid, rc, props: subscribed.put(mid)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    try:
        sub.subscribe("geowarn/notify/#", qos=1)
        subscribed.get(timeout=10)

        def publish(topic: str, payload: bytes, retain: bool) -> None:
            info = pub.publish(topic, payload, qos=1, retain=retain)
            info.wait_for_publish(timeout=10)
            if not info.is_published():
                raise RuntimeError(f"no PUBACK for {topic}")

        m = _msg(9, notifier="420527/mqtt/0")
        MqttNotifier(publish).send(m)
        msg = got.get(timeout=10)
        assert msg.topic == "geowarn/notify/420527"
        assert msg.retain is False
        assert Outgoing.from_json(json.loads(msg.payload)) == m
    finally:
        for c in (sub, pub):
            c.loop_stop()
            c.disconnect()


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def test_mqtt_notify_payload_carries_no_phone_or_email_of_the_example_roster(mosquitto):
    """A real notification for Zigui built from the bundled roster and sites, with a quick-report
    draft (the site's responsible person and phone) and an ack note giving a mobile number,
    published through real Mosquitto: no phone number or e-mail address of the example
    configuration reaches the topic; the rest of the message does."""
    from geowarn.alerts.model import AckInfo, Entry, ReportTask, SiteAlert
    from geowarn.alerts.reports import quick_report_draft

    roster = load_roster(example_path("roster.example.toml"))
    registry = load_registry(example_path("sites.example.toml"))
    secrets_ = {c.phone for u in roster.units.values() for c in u.contacts if c.phone}
    secrets_ |= {c.email for u in roster.units.values() for c in u.contacts if c.email}
    secrets_ |= {s.phone for s in registry.sites.values() if s.phone}
    assert len(secrets_) >= 8  # the example has phones and e-mail addresses to leak
    note = "已通知村民，联系 13800138000 或 duty.wang@zigui.example.org"
    t0 = 1_764_408_600.0
    state = SiteAlert(site="BSH", admin="420527", scale="large", level=3, status="acknowledged", warning_id="BSH-20251129T093000Z", raised=t0,
                      acks=(AckInfo("王值班 [zigui-duty]", note, t0 + 60, 3),),
                      history=(Entry(t0, "raise", 3, "unacknowledged", "orange"), Entry(t0 + 60, "ack", 3, "acknowledged", f"by 王值班 [zigui-duty]: {note}")))
    task = ReportTask("BSH-20251129T093000Z.report", "BSH-20251129T093000Z", 3, t0, t0 + 4 * 3600, None)
    notify = NotifyAction(tier="county", admin="420527", kind="report_due", level=3, warning_id="BSH-20251129T093000Z", text="BSH quick report due",
                          site="BSH", t=t0 + 61, exercise=False, deadline=None, task_id=task.task_id, id="4f1c0e9a-0000-5000-8000-13800138000a")
    # As alerts/live.py queues it: the draft merged into every notifier's message.
    extra = {"draft": quick_report_draft(registry.sites["BSH"], state, task)}
    msgs = {m.notifier: dataclasses.replace(m, body={**m.body, **extra}) for m in outgoing_for(notify, roster)}
    m = msgs["420527/mqtt/0"]
    assert json.dumps(m.body, ensure_ascii=False).count("+86 717 000 1000") == 1  # the outbox's copy is whole

    got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    subscribed: queue.Queue[int] = queue.Queue()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}")
    sub.on_message = lambda c, u, msg: got.put(msg)
    sub.on_subscribe = lambda c, u, mid, rc, props: subscribed.put(mid)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    try:
        sub.subscribe("geowarn/notify/#", qos=1)
        subscribed.get(timeout=10)

        def publish(topic: str, payload: bytes, retain: bool) -> None:
            pub.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout=10)

        MqttNotifier(publish).send(m)
        received = got.get(timeout=10)
    finally:
        for c in (sub, pub):
            c.loop_stop()
            c.disconnect()

    raw = received.payload.decode("utf-8")
    for secret in sorted(secrets_):
        assert secret not in raw, secret
        if "@" not in secret:
            assert _digits(secret) not in _digits(raw), secret
    # The note's number and address are gone; the same digits inside an id are not a phone.
    assert raw.count("13800138000") == raw.count("13800138000a") >= 1 and "duty.wang@zigui.example.org" not in raw
    assert not re.search(r"[\w.+-]+@[\w-]+\.[\w.-]+", raw), "an e-mail address on the bus"
    doc = json.loads(raw)
    # What the unit needs is all there: which warning, how bad, what to do, who is on duty.
    assert received.topic == "geowarn/notify/420527"
    assert (doc["id"], doc["kind"], doc["level"], doc["site"], doc["admin"]) == (m.id, "report_due", 3, "BSH", "420527")
    assert doc["body"]["id"] == notify.id and doc["body"]["warning_id"] == "BSH-20251129T093000Z" and doc["body"]["task_id"] == task.task_id
    assert doc["body"]["contacts"] == [{"name": "县值班室 County duty office", "role": "duty officer"}]
    assert doc["body"]["draft"]["responsible"] == {"name": "王建国 (群测群防员)"}
    assert doc["body"]["draft"]["threatened"] == extra["draft"]["threatened"] and doc["subject"] == m.subject
    assert "[redacted]" in doc["body"]["draft"]["acks"][0]["note"] and "已通知村民" in doc["body"]["draft"]["acks"][0]["note"]
    # The unit's own channels still get what they need.
    assert "+86 717 000 1000" in json.dumps(msgs["420527/jsonl/0"].body, ensure_ascii=False)
    email = EmailNotifier("smtp://127.0.0.1:9", "geowarn@example.org", ["duty@zigui.example.org"]).compose(m)
    plain = email.get_body(("plain",)).get_content()  # e-mail is text and HTML now (issue 15 item 8)
    assert "+86 717 000 1000" in plain and "+86 717 000 0101" in plain


def test_mqtt_publish_failure_becomes_a_notifier_error():
    def broken(topic: str, payload: bytes, retain: bool) -> None:
        raise ConnectionError("not connected")

    with pytest.raises(NotifierError, match="broker reachable") as err:
        MqttNotifier(broken).send(_msg())
    assert err.value.permanent is False


# -- roster → notifiers, routes and messages ---------------------------------------------


def _roster(hook_url: str = "http://127.0.0.1:9/hook", sms_url: str = "http://127.0.0.1:9/sms") -> Roster:
    return Roster(
        [
            Unit(
                admin="420527",
                name="秭归县 Zigui",
                contacts=[Contact(name="县值班室", role="duty officer", phone="+86 717 000 1000", email="duty@zigui.example.org")],
                notify=[
                    Notify(type="mqtt"),
                    Notify(type="webhook", url=hook_url, secret=SECRET),
                    Notify(type="email", to=["duty@zigui.example.org"]),
                    Notify(type="sms", url=sms_url),
                    Notify(type="jsonl"),
                    Notify(type="webhook", url=hook_url + "2", unsigned=True),
                ],
            ),
            Unit(admin="420500", name="宜昌市 Yichang"),
            Unit(admin="100000", name="national", notify=[Notify(type="jsonl", url="national.jsonl")]),
        ]
    )


def _notify(admin: str = "420527", exercise: bool = False) -> NotifyAction:
    return NotifyAction(
        tier="county", admin=admin, kind="warning", level=3, warning_id="S1-20251129T093000Z", text="S1 orange (level 3, Warning) warning",
        site="S1", t=1_764_408_600.0, exercise=exercise, deadline=1_764_409_500.0, id="4f1c0e9a-0000-5000-8000-000000000001",
    )


def test_route_names_every_notifier_of_the_unit():
    roster = _roster()
    assert route(_notify(), roster) == [
        ("420527/mqtt/0", ["县值班室"]),
        ("420527/webhook/0", ["http://127.0.0.1:9/hook"]),
        ("420527/email/0", ["duty@zigui.example.org"]),
        ("420527/sms/0", ["+86 717 000 1000"]),
        ("420527/jsonl/0", ["县值班室"]),
        ("420527/webhook/1", ["http://127.0.0.1:9/hook2"]),
    ]
    assert route(_notify().to_dict(), roster) == route(_notify(), roster)
    # A unit without notifiers, or none at all: the audit still records it.
    assert route(_notify("420500"), roster) == [(AUDIT_KEY, [])]
    assert route(_notify("420599"), roster) == [(AUDIT_KEY, [])]


def test_build_notifiers_makes_one_per_route_and_the_audit(tmp_path, client):
    sent: list[tuple[str, bytes, bool]] = []
    ns = build_notifiers(_roster(), publish=lambda t, p, r: sent.append((t, p, r)), smtp_url="smtp://127.0.0.1:25", sender="geowarn@example.org", data_dir=tmp_path, client=client)
    assert sorted(ns) == sorted(
        [AUDIT_KEY, "420527/mqtt/0", "420527/webhook/0", "420527/email/0", "420527/sms/0", "420527/jsonl/0", "420527/webhook/1", "100000/jsonl/0"]
    )
    assert isinstance(ns["420527/sms/0"], SmsNotifier) and ns["420527/sms/0"].phones == ["+867170001000"]
    assert isinstance(ns["100000/jsonl/0"], JsonlNotifier) and ns["100000/jsonl/0"].path == tmp_path / "national.jsonl"
    assert isinstance(ns["420527/jsonl/0"], JsonlNotifier) and ns["420527/jsonl/0"].path == tmp_path / "notify" / "420527.jsonl"
    assert all(n.name == key for key, n in ns.items())


def test_build_notifiers_fails_at_start_for_channels_that_cannot_work(tmp_path, client):
    with pytest.raises(ConfigError) as err:
        build_notifiers(_roster(), publish=None, smtp_url=None, sender="g@example.org", data_dir=tmp_path, client=client)
    text = str(err.value)
    assert "units[admin=420527].notify[0]: an mqtt notifier needs" in text
    assert "units[admin=420527].notify[2]: an email notifier needs the daemon's smtp_url" in text
    # A roster made in code is held to the file's rule: a webhook signs unless told not to.
    unsigned = Roster([Unit(admin="420527", name="Zigui", notify=[Notify(type="webhook", url="http://127.0.0.1:9/hook")])])
    with pytest.raises(ConfigError, match=r"units\[admin=420527\]\.notify\[0\]: a webhook needs secret"):
        build_notifiers(unsigned, publish=None, smtp_url=None, sender="g@example.org", data_dir=tmp_path, client=client)


def test_outgoing_for_gives_stable_ids_and_marks_exercises():
    roster = _roster()
    msgs = outgoing_for(_notify(), roster)
    assert [m.id for m in msgs] == [f"4f1c0e9a-0000-5000-8000-000000000001/{k}" for k, _ in route(_notify(), roster)]
    assert outgoing_for(_notify(), roster) == msgs  # same Notify, same messages
    m = msgs[1]
    assert (m.notifier, m.kind, m.admin, m.site, m.level, m.t) == ("420527/webhook/0", "warning", "420527", "S1", 3, 1_764_408_600.0)
    # Chinese by default (issue 15 item 8): the colour and grade, the site, the warning id.
    assert "橙色预警（Ⅱ级）" in m.subject and "S1" in m.subject and not m.exercise
    assert m.body["id"] == _notify().id and m.body["delivery"] == {"notifier": "420527/webhook/0", "to": ["http://127.0.0.1:9/hook"]}
    assert m.body["contacts"][0]["phone"] == "+86 717 000 1000"
    json.dumps(m.body)  # JSON-able
    drill = outgoing_for(_notify(exercise=True), roster)
    assert all(d.subject.startswith("【演练】") and d.exercise for d in drill)


# -- redaction of contact data on MQTT (the tester's cases) ------------------------------------

_CONTACT_TEXT = [
    "call 138 0013 8000 now", "call 138-0013-8000", "电话１３８００１３８０００", "值班 0717 6251234", "(0717)6251234",
    "07176251234", "0717-6251234", "tel:13800138000", "x13800138000", "值班@例子.中国", "duty＠zigui.example.org",
    "duty@zigui.example.org", "Duty+ops@Zigui.Example.ORG", "+86 717 000 1000", "+86.717.000.1000", "86 717 000 1000",
    "8613800138000", "＋８６ ７１７ ０００ １０００",
]


@pytest.mark.parametrize("text", _CONTACT_TEXT)
def test_phone_numbers_and_email_addresses_in_free_text_are_redacted_on_mqtt(text):
    from geowarn.alerts.notifiers import Outgoing, public_payload

    msg = Outgoing("n1/mqtt", "mqtt", "warning", "420527", "BSH", 2, "subj", "text", {"note": text}, 0.0)
    note = json.loads(public_payload(msg))["body"]["note"]
    assert "[redacted]" in note and not any(c.isdigit() or c == "@" or c == "＠" for c in note.replace("[redacted]", "")), note


def test_contact_keys_are_dropped_whatever_their_spelling():
    from geowarn.alerts.notifiers import Outgoing, public_payload

    responsible = {"name": "Li", "Phone": "13800138000", "PhoneNumber": "0717 6251234", "contact_phone": "0717 6251234",
                   "手机": "138 0013 8000", "办公电话": "0717 6251234", "邮箱": "li@example.org", "E_Mail": "li@example.org",
                   "MOBILE": "1", "tel": "1", "Tel": "1", "fax": "1", "hotel": "Guizhou", "telemetry": "on"}
    msg = Outgoing("n1/mqtt", "mqtt", "report_due", "420527", "BZM", 3, "subj", "text",
                   {"draft": {"responsible": responsible}, "contacts": [{"name": "duty 138 0013 8000", "role": "x", "phone": "+86 1"}]}, 0.0)
    body = json.loads(public_payload(msg))["body"]
    assert body["draft"]["responsible"] == {"name": "Li", "hotel": "Guizhou", "telemetry": "on"}
    assert body["contacts"] == [{"name": "duty [redacted]", "role": "x"}]


def test_ids_times_and_measurements_survive_redaction():
    from geowarn.alerts.notifiers import Outgoing, public_payload, redact_text

    wid = "BSH-20261202T220000Z-4"
    keep = [
        f"{wid} acknowledged by 王值班: patrol sent，已通知村民（全体）", f"task {wid}/report/1", "until 2026-12-02T22:00:00Z",
        "until 2026-12-02 22:00", "velocity 1234567.5 mm/day", "30.1234567,110.7654321", "levels 1 2 3 4", "n1/mqtt",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ]
    for text in keep:
        assert redact_text(text) == text
    nid = f"{wid}/notify/420527/mqtt/0"
    msg = Outgoing(nid, "mqtt", "warning", "420527", "BSH", 2, f"[yellow] BSH {wid}", f"warning {wid}",
                   {"warning_id": wid, "task_id": "13800138000", "identifier": "13800138000", "id": "86-13800138000"}, 0.0)
    doc = json.loads(public_payload(msg))
    assert doc["id"] == nid and doc["subject"] == f"[yellow] BSH {wid}" and doc["text"] == f"warning {wid}"
    assert doc["body"] == {"warning_id": wid, "task_id": "13800138000", "identifier": "13800138000", "id": "86-13800138000"}
