"""How the console's actions reach the detection worker: MQTT requests and their answers.

This module owns the action path of the duty-officer API: the ``Requester`` protocol the routes
use, ``MqttRequester`` (one long-lived MQTT client that publishes a request on
``{prefix}/{kind}`` and waits for the worker's answer on ``{prefix}/{kind}/result``) and
``RequestUnavailable`` (the broker is unreachable; the API answers 503). The request kinds and
their documents are the detection worker's (``alerts/live.py``); the console sends the same
request ``geowarn ack`` does, so the engine never learns which door a person used.

Requests are signed with the control key and only a verified answer to this very request is
taken (alerts/control.py): anyone on the broker can publish on ``…/result``, and a forged
answer must not change what the API tells the duty officer or writes in the audit. An answer
that does not verify is ignored (counted in ``ignored``); the API then waits on until the
real answer or the timeout.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from geowarn.alerts.control import ControlKey
from geowarn.alerts.live import REQUEST_KINDS
from geowarn.config.settings import MqttTarget
from geowarn.core.logfields import kv

log = logging.getLogger(__name__)

__all__ = ["MqttRequester", "RequestUnavailable", "Requester"]


class RequestUnavailable(Exception):
    """An action cannot be sent now (the broker is unreachable); answered with 503."""


class Requester(Protocol):
    def request(self, kind: str, doc: dict[str, Any], wait_s: float) -> dict[str, Any] | None:
        """Publish one request; the worker's answer, or None when none came within ``wait_s``."""
        ...


class MqttRequester:
    """One MQTT connection for the life of the API (``service.requests.send_request`` does
    the same per call, for the CLI): subscribed to every ``…/result`` topic, it routes each
    answer to the waiting request by its ``request`` id. paho's thread only hands answers
    over; nothing blocks in its callbacks."""

    #: The request kinds the detection worker answers (its own list: one spelling).
    KINDS = REQUEST_KINDS

    def __init__(self, target: MqttTarget, prefix: str, client_id: str, ca_file: str | None = None, *, key: ControlKey) -> None:
        self.prefix = prefix
        self._target = target
        self.key = key
        #: Answers to a waiting request that did not verify (forged, or another key's).
        self.ignored = 0
        # request id -> (kind, the signed request, where its answer goes)
        self._waiting: dict[str, tuple[str, dict[str, Any], queue.Queue[dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if target.username is not None:
            self._client.username_pw_set(target.username, target.password)
        if target.tls:
            self._client.tls_set(ca_certs=ca_file)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 30)

    def start(self) -> None:
        # connect_async: a broker that is down at start is retried by paho's loop, and the
        # API answers 503 for actions meanwhile instead of failing the daemon's start.
        self._client.connect_async(self._target.host, self._target.port, 30)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._subscribed.is_set()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.error("API MQTT connection refused", extra=kv(reason=rc))
            return
        client.subscribe([(f"{self.prefix}/{k}/result", 1) for k in self.KINDS])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        self._subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._subscribed.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            answer = json.loads(msg.payload)
        except ValueError:
            return  # not an answer of ours; other clients share the topic
        if not isinstance(answer, dict):
            return
        with self._lock:
            waiting = self._waiting.get(str(answer.get("request", "")))
        if waiting is None:
            return
        kind, signed, q = waiting
        if msg.topic == f"{self.prefix}/{kind}/result" and self.key.answers(kind, answer, signed):
            q.put(answer)
        else:
            with self._lock:
                self.ignored += 1
            log.warning("an answer does not verify: ignored (forged, or signed with another control key)", extra=kv(kind=kind, request=signed["request"], topic=msg.topic))

    def request(self, kind: str, doc: dict[str, Any], wait_s: float) -> dict[str, Any] | None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown request kind {kind!r}")
        # Subscribed before asking, or the answer could pass by unseen.
        if not self._subscribed.wait(min(wait_s, 5.0)):
            raise RequestUnavailable(f"the MQTT broker {self._target.redacted()} is not reachable; nothing was sent, try again")
        request_id = str(doc.setdefault("request", uuid.uuid4().hex))
        signed = self.key.sign_request(kind, doc, time.time())
        answers: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._waiting[request_id] = (kind, signed, answers)
        try:
            info = self._client.publish(f"{self.prefix}/{kind}", json.dumps(signed, ensure_ascii=False).encode(), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise RequestUnavailable(f"publishing the {kind} request failed ({mqtt.error_string(info.rc)}); nothing was sent, try again")
            try:
                return answers.get(timeout=wait_s)
            except queue.Empty:
                return None
        finally:
            with self._lock:
                self._waiting.pop(request_id, None)
