"""The control plane's signatures: who may ask the detection worker for an ack, a quick-report
submission, a shelving or a device's maintenance, and which answers the asker may trust.

This module owns the control key and the signed envelope of requests and results. It holds
even on a broker anyone can publish to (a site's existing broker the operator cannot lock
down): the broker only carries the messages, the key decides.

- **The key**: 256 random bits in ``DATA_DIR/control.key`` (64 hex digits), created mode 0600
  on first use by whichever GeoWarn process needs it first (the daemon's API, its detection
  worker, or the ``geowarn ack`` command). It is written to a private temporary file and
  linked into place, so it is never readable by others, not even for an instant, and two
  processes starting at once end up with the same key. A key file that others may read, or
  that does not hold exactly 256 bits, is refused with an error that says what to do.
- **Requests**: the document on ``{prefix}/{kind}`` plus ``ts`` (epoch seconds when it was
  signed), ``nonce`` (128 random bits) and ``mac``: HMAC-SHA256 with the key over the
  canonical encoding (below) of everything else. ``by`` inside it is the identity the signer
  vouches for (the API's token name, the CLI's OS user), never a name someone typed.
- **The gate** (``Gate``, in the detection worker): a payload over ``MAX_REQUEST_BYTES``
  is refused before it is parsed (anyone can publish on an open broker; a person's request is
  a few hundred bytes); a request without a valid MAC is refused;
  a signed one older or newer than ``WINDOW_S`` (5 min) by the worker's wall clock is refused
  as stale; a nonce seen within the window is refused as replayed. A nonce is forgotten once
  its request is out of the window, and the gate remembers the newest ``ts`` it ever forgot
  (``forgotten_until``, saved with the nonces): a request signed at or before it is refused
  as stale whatever the clock says now, so a wall clock stepped back (NTP) cannot bring a
  forgotten request back into the window. Nonces are remembered
  for the window in state the caller persists (the journal's state table), and recorded
  before the request is applied: after a restart inside the window a captured request is
  still refused, and a request is never applied twice (a redelivery after a crash between
  the two is refused rather than repeated — failing closed).
- **Results**: the worker's answer on ``…/result`` is signed the same way, and carries
  ``reply_to``: the MAC of the request it answers, set only when that request was authentic,
  fresh and new. The API and the CLI accept only a result whose MAC verifies and whose
  ``reply_to`` is their own request's MAC, so neither a forged answer, nor the worker's
  honest refusal of a forged or replayed copy of their request, can stand in for the answer.

Canonical encoding: ``geowarn-control-v1|{request|result}|{kind}|`` followed by the JSON of
the document without ``mac``, keys sorted, no spaces, ASCII only (``json.dumps(...,
sort_keys=True, separators=(",", ":"), ensure_ascii=True)``). The kind is part of it, so an
ack cannot be replayed as a shelve, nor a request passed off as a result.

Errors: a bad key file is a ``ConfigError`` (file, reason) so every front door reports it
like any configuration problem; a refused request is a ``Refused`` the worker answers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geowarn.config.errors import ConfigError
from geowarn.core.logfields import kv

log = logging.getLogger(__name__)

__all__ = [
    "KEY_FILE", "MAX_REQUEST_BYTES", "WINDOW_S", "ControlKey", "Gate", "Refused",
    "decode_request", "load_key", "load_or_create_key", "os_identity", "request_id_of",
]

#: The control key's file in the data directory.
KEY_FILE = "control.key"
KEY_BYTES = 32
#: How far a request's timestamp may be from the worker's clock, either way.
WINDOW_S = 300.0
#: Nonces kept at most (a bound on the state, far above what people can type in a window).
MAX_NONCES = 100_000
#: The largest request payload the gate parses. A person's request (an ack with a note) is a
#: few hundred bytes; anything far larger is refused unread, so a flood of big payloads on an
#: open broker costs the worker no parsing.
MAX_REQUEST_BYTES = 16 * 1024
#: A request id echoed on ``…/result`` must look like one (the API and CLI use uuid4 hex).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: Where the gate saves the newest forgotten ``ts``, among the nonces (a nonce is 16+ characters).
_FORGOTTEN_KEY = "~forgotten"

_DOMAIN = "geowarn-control-v1"
_SIGNATURE_FIELDS = ("ts", "nonce", "mac")


def canonical(domain: str, kind: str, doc: Mapping[str, Any]) -> bytes:
    """The bytes a MAC covers; ``ValueError`` for a document JSON cannot carry exactly (NaN)."""
    body = {k: v for k, v in doc.items() if k != "mac"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return f"{_DOMAIN}|{domain}|{kind}|".encode("ascii") + text.encode("ascii")


@dataclass(frozen=True)
class ControlKey:
    """The shared secret of the control plane (never printed: ``repr`` shows its file only)."""

    secret: bytes = field(repr=False)
    path: str = ""

    def _mac(self, domain: str, kind: str, doc: Mapping[str, Any]) -> str:
        return hmac.new(self.secret, canonical(domain, kind, doc), hashlib.sha256).hexdigest()

    def _sign(self, domain: str, kind: str, doc: Mapping[str, Any], now: float) -> dict[str, Any]:
        out = {k: v for k, v in doc.items() if k not in _SIGNATURE_FIELDS}
        out["ts"] = float(now)
        out["nonce"] = secrets.token_hex(16)
        out["mac"] = self._mac(domain, kind, out)
        return out

    def _valid(self, domain: str, kind: str, doc: Mapping[str, Any]) -> bool:
        mac = doc.get("mac")
        if not isinstance(mac, str):
            return False
        try:
            expected = self._mac(domain, kind, doc)
        except (ValueError, RecursionError):  # NaN/inf, or nested too deep to encode: nothing signed it
            return False
        return hmac.compare_digest(expected, mac)

    def sign_request(self, kind: str, doc: Mapping[str, Any], now: float) -> dict[str, Any]:
        """``doc`` with ``ts``, a fresh ``nonce`` and its ``mac`` (a new dict)."""
        return self._sign("request", kind, doc, now)

    def sign_result(self, kind: str, doc: Mapping[str, Any], now: float) -> dict[str, Any]:
        return self._sign("result", kind, doc, now)

    def verify_request(self, kind: str, doc: Mapping[str, Any]) -> bool:
        return self._valid("request", kind, doc)

    def verify_result(self, kind: str, doc: Mapping[str, Any]) -> bool:
        return self._valid("result", kind, doc)

    def answers(self, kind: str, result: Any, request: Mapping[str, Any]) -> bool:
        """Is ``result`` (a decoded ``…/result`` payload) the worker's verified answer to
        ``request`` (as signed by ``sign_request``)? Anything else is ignored by the asker."""
        return (
            isinstance(result, dict)
            and result.get("request") == request.get("request")
            and isinstance(request.get("mac"), str)
            and result.get("reply_to") == request["mac"]
            and self.verify_result(kind, result)
        )


# -- the key file ------------------------------------------------------------------------------


def _problem(path: Path, reason: str) -> ConfigError:
    return ConfigError.single(path, "", reason)


def load_key(path: str | os.PathLike[str]) -> ControlKey:
    """The key in ``path``; ``FileNotFoundError`` when there is none, ``ConfigError`` when
    the file may be read by others, is not a regular file, or is not a 256-bit key."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except PermissionError:
        raise _problem(p, "cannot read the control key (permission denied): run as the user the daemon runs as, e.g. sudo -u geowarn geowarn ack …") from None
    except OSError as exc:
        raise _problem(p, f"cannot open the control key: {exc.strerror or exc} (a symbolic link is refused)") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _problem(p, "the control key must be a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise _problem(
                p,
                f"the control key has mode {mode:04o}: group or others may read it, so anyone with that access could sign acks. "
                f"Consider it leaked: delete it (a new one is made at the next start; restart the daemon) or at least chmod 600 {p}",
            )
        raw = os.read(fd, 4096)
    finally:
        os.close(fd)
    text = raw.decode("ascii", "replace").strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) != KEY_BYTES or len(text) != 2 * KEY_BYTES:
        raise _problem(p, f"the control key must be {2 * KEY_BYTES} hex digits (256 bits); this file holds {len(text)} characters. Delete it to have a new one made")
    return ControlKey(secret, str(p))


def load_or_create_key(data_dir: str | os.PathLike[str]) -> ControlKey:
    """The key of ``DATA_DIR/control.key``, made (0600) if there is none yet."""
    d = Path(data_dir)
    path = d / KEY_FILE
    try:
        return load_key(path)
    except FileNotFoundError:
        pass
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        # O_EXCL + 0600 at creation: the bits never exist in a file others may read (umask can
        # only take permissions away); the link makes it appear whole or not at all.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except PermissionError:
        raise _problem(path, f"cannot create the control key: no write access to {d}") from None
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (secrets.token_hex(KEY_BYTES) + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
            log.warning("control key created: requests to the daemon are signed with it; keep it mode 0600", extra=kv(path=path))
        except FileExistsError:
            pass  # another process made it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass  # some file systems cannot sync a directory; the key is still in place
    return load_key(path)


def os_identity() -> str:
    """Who runs this command, as the operating system knows them: the CLI's ``by``.

    The key is readable by the daemon's user only, so operators usually run ``sudo -u
    geowarn geowarn ack …``; then sudo's ``SUDO_USER`` names the person."""
    import pwd

    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER", "")
    return f"{sudo} (as {name})" if sudo and sudo != name else name


# -- the worker's gate ---------------------------------------------------------------------------


def _finite(x: float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer too large for a float
        return False


class Refused(Exception):
    """A request the gate does not let through. ``code``: too_large, unsigned, forged, stale,
    replayed, bad, busy; ``reply_to``: the request's MAC when it was authentic and not a replay (the asker
    will take this refusal as its answer), else ""."""

    def __init__(self, code: str, reason: str, reply_to: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.reply_to = reply_to


@dataclass(frozen=True)
class Admitted:
    """A request the gate let through: its document and its MAC (the result's ``reply_to``)."""

    doc: dict[str, Any]
    mac: str


def decode_request(payload: bytes) -> Any:
    """A request payload decoded once, or ``Refused`` ("too_large" unread, "bad" not JSON)."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise Refused("too_large", f"request of {len(payload)} bytes refused unread (at most {MAX_REQUEST_BYTES})")
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        raise Refused("bad", "not JSON") from None


def request_id_of(doc: Any) -> str:
    """The caller's request id (``request``), to echo on ``…/result`` even when the request is
    refused; "" when there is none or it does not look like an id (anyone may publish one)."""
    rid = doc.get("request") if isinstance(doc, dict) else None
    return rid if isinstance(rid, str) and _REQUEST_ID.fullmatch(rid) else ""


class Gate:
    """The detection worker's check of every request: size, signature, age, nonce.

    ``load``/``save`` read and write the nonces seen ({nonce: ts}, plus the newest ts forgotten
    under ``"~forgotten"``); the worker keeps them in the journal's state table, so a restart
    inside the window forgets none.
    """

    def __init__(self, key: ControlKey, load: Callable[[], Any], save: Callable[[dict[str, float]], None], window_s: float = WINDOW_S) -> None:
        self.key = key
        self.window_s = window_s
        self._save = save
        saved = load() or {}
        saved = saved if isinstance(saved, dict) else {}
        #: Requests signed at or before this were forgotten: refused as stale, whatever the clock.
        self.forgotten_until = float(saved.pop(_FORGOTTEN_KEY, -math.inf))
        self.nonces: dict[str, float] = {str(n): float(t) for n, t in saved.items()}

    def admit(self, kind: str, payload: bytes, now: float) -> Admitted:
        """The request's document, or ``Refused`` saying why not. A nonce let through is
        saved before this returns."""
        return self.admit_doc(kind, decode_request(payload), now)

    def admit_doc(self, kind: str, doc: Any, now: float) -> Admitted:
        """``admit`` for a payload already decoded with ``decode_request``."""
        if not isinstance(doc, dict):
            raise Refused("bad", "a request is a JSON object")
        if "mac" not in doc:
            raise Refused("unsigned", "unsigned request: requests must be signed with the control key (geowarn ack, the API)")
        if not self.key.verify_request(kind, doc):
            raise Refused("forged", "the signature does not verify (not signed with this daemon's control key, or altered)")
        mac = str(doc["mac"])
        ts, nonce = doc.get("ts"), doc.get("nonce")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not _finite(ts):
            raise Refused("bad", "a signed request needs ts (epoch seconds)", mac)
        if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
            raise Refused("bad", "a signed request needs a nonce (16-128 characters)", mac)
        if abs(now - ts) > self.window_s:
            raise Refused("stale", f"stale request: signed {now - ts:+.0f} s from the daemon's clock (allowed ±{self.window_s:g} s)", mac)
        if ts <= self.forgotten_until:
            # Its nonce may have been forgotten already: only a clock stepped back puts it in the window again.
            raise Refused("stale", "stale request: signed before requests the daemon no longer remembers (its clock was set back?)", mac)
        if nonce in self.nonces:
            raise Refused("replayed", "replayed request: this nonce was used already")
        self._remember(nonce, float(ts), now, mac)
        return Admitted(doc, mac)

    def _remember(self, nonce: str, ts: float, now: float, mac: str) -> None:
        horizon = now - self.window_s
        # Beyond the window a request is stale whatever its nonce: forget what can no longer
        # pass, and remember how far we forgot (the clock may be set back later).
        kept = {n: t for n, t in self.nonces.items() if t >= horizon}
        if len(kept) < len(self.nonces):
            self.forgotten_until = max(self.forgotten_until, max(t for t in self.nonces.values() if t < horizon))
        self.nonces = kept
        if len(self.nonces) >= MAX_NONCES:
            # Only key holders add nonces; forgetting one early would let it be replayed, so
            # a flood of them is refused instead until the window moves on.
            raise Refused("busy", f"more than {MAX_NONCES} requests within {self.window_s:g} s; try again later", mac)
        self.nonces[nonce] = ts
        saved = dict(self.nonces)
        if self.forgotten_until > -math.inf:
            saved[_FORGOTTEN_KEY] = self.forgotten_until
        self._save(saved)
