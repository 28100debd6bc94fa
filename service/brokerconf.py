"""``geowarn broker-config``: a locked-down Mosquitto 2.0 setup generated from the registry and roster.

This module owns the broker's side of the trust boundary (issue 12): who may connect and what
each account may publish or read. It writes, into one folder:

- ``mosquitto.conf`` — listeners (plain and/or TLS), no anonymous access, client ids bound to
  usernames, persistence for queued QoS 1 messages; ``mosquitto -c DIR/mosquitto.conf`` runs it;
- ``passwd`` — Mosquitto's password file (``$7$`` PBKDF2-SHA512, as ``mosquitto_passwd`` writes);
- ``acl`` — one ``user`` block per account, explicit topics, no patterns;
- ``tls/`` — a CA and a server certificate when a TLS listener is asked for;
- ``devices.csv`` (``device,username,password``) to provision the stations;
- ``accounts.csv`` (``role,scope,username,password``) the other accounts' passwords;
- ``geowarn.env`` and ``operator.env`` — ``KEY=VALUE`` lines the daemon and the CLI source.

Accounts:

- one per device (username = device code): publishes only its own ``data``/``status``, reads
  only its own ``cmd``;
- the daemon's connections (username = client id: ``{id}``, ``{id}-store``, ``{id}-detection``,
  ``{id}-api``, ``{id}-cli``), all with the one service password of ``geowarn.env``: they run in
  one process tree from one environment, so separate secrets would separate nothing; they may
  read and write anything under the prefix;
- ``geowarn-operator`` (``operator.env``) for ``geowarn ack`` / ``report`` on another machine:
  publishes requests, reads their results, alerts, CAP, dead letters and the daemon's state;
- ``geowarn-notify-{admin}`` per roster unit: reads only its unit's notifications, CAP and alerts.

Client ids are bound to usernames with Mosquitto's ``use_username_as_clientid``: whatever client
id a connection sends, the broker uses its username, so nobody can take over (or kick) the
daemon's persistent session without the daemon's password. That is why each of the daemon's
connections logs in with its own client id as username (``Settings.mqtt_for``).

Every secret file is created 0600 from the start (``os.open`` with the mode, then an atomic
rename): never world-readable, not even for an instant. Re-running keeps every existing
password (stations in the field keep working); ``rotate`` names the accounts that get new ones.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import io
import ipaddress
import os
import pwd
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geowarn.config.settings import Loaded

__all__ = ["BrokerConfigError", "Generated", "generate", "parse_hostport", "hash_password", "add_broker_config_parser", "OPERATOR", "SUBSCRIBER_PREFIX"]

OPERATOR = "geowarn-operator"
SUBSCRIBER_PREFIX = "geowarn-notify-"
#: The daemon's connections: client id (= username) suffixes after ``mqtt_client_id``.
SERVICE_SUFFIXES = ("", "-store", "-detection", "-api", "-cli")

#: mosquitto_passwd's own iteration count. The passwords are random 192-bit tokens, so more
#: iterations would add nothing against guessing, and every connect pays for them (a quarter of a
#: million stations reconnecting after a broker restart).
PBKDF2_ITERATIONS = 101
#: A server certificate is issued again when it expires within this many days.
RENEW_DAYS = 30


class BrokerConfigError(Exception):
    """A request the generator cannot honour (a bad address, an unknown account to rotate)."""


@dataclass(frozen=True)
class Account:
    role: str  # device | service | operator | subscriber
    scope: str  # device: "site/device"; subscriber: admin code; service/operator: ""
    username: str
    password: str


@dataclass
class Generated:
    """What one run wrote, for the command's summary."""

    out: Path
    accounts: list[Account]
    new: list[str] = field(default_factory=list)
    rotated: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    tls_issued: str = ""  # "", "ca+server", "server"
    warnings: list[str] = field(default_factory=list)


# -- small pieces ------------------------------------------------------------------------------


def parse_hostport(raw: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT`` → (host, port)."""
    host, sep, port = raw.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BrokerConfigError(f"{what} {raw!r} must be HOST:PORT (e.g. 0.0.0.0:8883, [::1]:1883)")
    if any(c.isspace() for c in host):
        raise BrokerConfigError(f"{what} {raw!r}: the host has spaces")
    return host, int(port)


def hash_password(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """The password file's hash field, byte for byte the format ``mosquitto_passwd`` writes:
    ``$7$<iterations>$<base64 salt (12 bytes)>$<base64 PBKDF2-HMAC-SHA512 (64 bytes)>``."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    dk = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def _new_password() -> str:
    # URL-safe: it goes into GEOWARN_MQTT_URL unquoted and into shell-sourced env files.
    return secrets.token_urlsafe(24)


def _write_private(path: Path, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
    """Write ``data`` to ``path`` atomically; the file has ``mode`` from its creation on."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; never adds any
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as fh:
            fd = -1
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _csv_bytes(header: Sequence[str], rows: Iterable[Sequence[str]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _broker_owner(user: str) -> tuple[int, int] | None:
    """(uid, gid) to give the files the broker reads, when we are root and it is not: Mosquitto 2
    drops to its ``user`` right after reading mosquitto.conf, before it reads passwd, acl and keys."""
    if os.geteuid() != 0 or user == "root":
        return None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise BrokerConfigError(f"broker user {user!r} does not exist (Debian's mosquitto package creates 'mosquitto')") from None
    return pw.pw_uid, pw.pw_gid


def default_broker_user() -> str:
    return "mosquitto" if os.geteuid() == 0 else pwd.getpwuid(os.getuid()).pw_name


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "*")


# -- TLS ---------------------------------------------------------------------------------------


def _tls(tls_dir: Path, names: list[str], owner: tuple[int, int] | None) -> str:
    """Keep or make the CA and server certificate; return what was issued ("", "server", "ca+server")."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    tls_dir.mkdir(mode=0o755, exist_ok=True)
    ca_key_path, ca_crt_path = tls_dir / "ca.key", tls_dir / "ca.crt"
    srv_key_path, srv_crt_path = tls_dir / "server.key", tls_dir / "server.crt"
    now = dt.datetime.now(dt.timezone.utc)
    issued = ""

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    if ca_key_path.exists() and ca_crt_path.exists():
        loaded_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        if not isinstance(loaded_key, ec.EllipticCurvePrivateKey):
            raise BrokerConfigError(f"{ca_key_path} is not an EC key; move tls/ away to make a new CA")
        ca_key = loaded_key
        ca_crt = x509.load_pem_x509_certificate(ca_crt_path.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GeoWarn"),
                             x509.NameAttribute(NameOID.COMMON_NAME, "GeoWarn broker CA")])
        ca_crt = (
            x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(ca_key_path, pem_key(ca_key))  # the CA key stays with us, never the broker's
        _write_private(ca_crt_path, ca_crt.public_bytes(serialization.Encoding.PEM), mode=0o644)
        issued = "ca+"

    wanted: list[x509.GeneralName] = []
    for n in names:
        try:
            wanted.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            wanted.append(x509.DNSName(n))
    keep = False
    if srv_key_path.exists() and srv_crt_path.exists():
        crt = x509.load_pem_x509_certificate(srv_crt_path.read_bytes())
        try:
            have = set(crt.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            have = set()
        keep = (have == set(wanted) and crt.issuer == ca_crt.subject
                and crt.not_valid_after_utc - now > dt.timedelta(days=RENEW_DAYS))
    if not keep:
        srv_key = ec.generate_private_key(ec.SECP256R1())
        crt = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GeoWarn"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_crt.subject).public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(srv_key_path, pem_key(srv_key), owner=owner)
        _write_private(srv_crt_path, crt.public_bytes(serialization.Encoding.PEM), mode=0o644)
        issued += "server"
    elif owner is not None:
        os.chown(srv_key_path, *owner)
    return issued if issued != "ca+" else "ca"


# -- the generator -----------------------------------------------------------------------------


def generate(
    loaded: Loaded,
    out: Path,
    *,
    listen: tuple[str, int] | None = None,
    tls_listen: tuple[str, int] | None = None,
    tls_names: Sequence[str] = (),
    rotate: Sequence[str] = (),
    broker_user: str | None = None,
    autosave_changes: int = 100,
) -> Generated:
    s = loaded.settings
    prefix = s.topic_prefix
    cid = s.mqtt_client_id
    if listen is None and tls_listen is None:
        listen = ("127.0.0.1", 1883)
    if autosave_changes < 1:
        raise BrokerConfigError("--autosave-changes must be at least 1")
    broker_user = broker_user or default_broker_user()
    owner = _broker_owner(broker_user)
    out = out.resolve()
    if any(c.isspace() for c in str(out)):
        raise BrokerConfigError(f"{out}: mosquitto.conf cannot name paths with spaces")
    out.mkdir(mode=0o755, parents=True, exist_ok=True)

    # Who should exist, from the registry and roster.
    wanted: list[tuple[str, str, str]] = []  # (role, scope, username)
    for site in loaded.registry.sites.values():
        for dev in site.devices:
            wanted.append(("device", f"{site.site}/{dev.device}", dev.device))
    service_users = [cid + sfx for sfx in SERVICE_SUFFIXES]
    wanted.append(("service", "", cid))
    wanted.append(("operator", "", OPERATOR))
    for admin in loaded.roster.units:
        wanted.append(("subscriber", admin, SUBSCRIBER_PREFIX + admin))
    seen: dict[str, str] = {}
    for role, scope, user in wanted + [("service", "", u) for u in service_users[1:]]:
        if user in seen:
            raise BrokerConfigError(f"username {user!r} would name both a {seen[user]} and a {role}; rename the device "
                                    "or change mqtt_client_id (usernames are client ids on this broker)")
        seen[user] = role

    # What exists: passwords are kept across runs.
    old: dict[str, str] = {}
    for row in _read_csv(out / "devices.csv"):
        if row.get("username") and row.get("password"):
            old[row["username"]] = row["password"]
    for row in _read_csv(out / "accounts.csv"):
        if row.get("username") and row.get("password"):
            old[row["username"]] = row["password"]
    known = {u for _, _, u in wanted} | set(service_users)
    unknown = [r for r in rotate if r not in known]
    if unknown:
        raise BrokerConfigError(f"cannot rotate {', '.join(map(repr, unknown))}: not a device of the registry nor an account "
                                f"({OPERATOR}, {cid}, {SUBSCRIBER_PREFIX}<admin>)")
    # Rotating any of the daemon's connections rotates the one service password.
    rotate_set = {cid if r in service_users else r for r in rotate}

    result = Generated(out, [])
    for role, scope, user in wanted:
        if user in rotate_set:
            password = _new_password()
            result.rotated.append(user)
        elif user in old:
            password = old[user]
        else:
            password = _new_password()
            result.new.append(user)
        result.accounts.append(Account(role, scope, user, password))
    result.dropped = sorted(set(old) - {u for _, _, u in wanted})

    # The plain passwords first: they are the record a re-run starts from. Stopped between here
    # and passwd, the broker still has the old hashes and the next run writes the new ones.
    _write_private(out / "devices.csv", _csv_bytes(
        ["device", "username", "password"], [(a.username, a.username, a.password) for a in result.accounts if a.role == "device"]))
    _write_private(out / "accounts.csv", _csv_bytes(
        ["role", "scope", "username", "password"], [(a.role, a.scope, a.username, a.password) for a in result.accounts if a.role != "device"]))

    # passwd is hashed afresh every run (about 75 µs an account: 20 s for a national network),
    # so it can never disagree with the CSV files.
    service_password = next(a.password for a in result.accounts if a.role == "service")
    entries = [(a.username, a.password) for a in result.accounts] + [(u, service_password) for u in service_users[1:]]
    lines = [f"{user}:{hash_password(password)}" for user, password in entries]
    _write_private(out / "passwd", ("\n".join(lines) + "\n").encode(), owner=owner)
    codes = {f"{site.site}/{dev.device}": dev.code for site in loaded.registry.sites.values() for dev in site.devices if dev.code}
    _write_private(out / "acl", _acl(result.accounts, service_users, prefix, codes, loaded.settings.cn_topic_list).encode(), owner=owner)

    # TLS, then the URLs the env files give.
    if tls_listen is not None:
        host = tls_listen[0]
        names = [n for n in tls_names if n]
        if not _is_wildcard(host):
            names.insert(0, host)
        if _is_wildcard(host) or _is_loopback(host):
            names += ["localhost", "127.0.0.1"] if ":" not in host else ["localhost", "::1"]
        names = list(dict.fromkeys(names))
        result.tls_issued = _tls(out / "tls", names, owner)
        url_host, url_port, scheme = (names[0] if _is_wildcard(host) else host), tls_listen[1], "mqtts"
    else:
        assert listen is not None
        url_host = "127.0.0.1" if _is_wildcard(listen[0]) else listen[0]
        url_port, scheme = listen[1], "mqtt"
        if not _is_loopback(listen[0]):
            result.warnings.append(f"the plain listener {listen[0]}:{listen[1]} is not on loopback: passwords cross the "
                                   "network in clear text; add --tls-listen and give stations the TLS port")
    if ":" in url_host:
        url_host = f"[{url_host}]"
    env = {
        "GEOWARN_MQTT_URL": f"{scheme}://{cid}:{service_password}@{url_host}:{url_port}",
        "GEOWARN_MQTT_CLIENT_ID": cid,
        "GEOWARN_TOPIC_PREFIX": prefix,
    }
    operator_password = next(a.password for a in result.accounts if a.role == "operator")
    op_env = {"GEOWARN_MQTT_URL": f"{scheme}://{OPERATOR}:{operator_password}@{url_host}:{url_port}", "GEOWARN_TOPIC_PREFIX": prefix}
    if tls_listen is not None:
        env["GEOWARN_MQTT_CA_FILE"] = op_env["GEOWARN_MQTT_CA_FILE"] = str(out / "tls" / "ca.crt")
    header = "# Generated by `geowarn broker-config`; source it (set -a; . FILE; set +a) or use it as a systemd EnvironmentFile.\n"
    _write_private(out / "geowarn.env", (header + "".join(f"{k}={v}\n" for k, v in env.items())).encode())
    _write_private(out / "operator.env", (header + "".join(f"{k}={v}\n" for k, v in op_env.items())).encode())

    data_dir = out / "data"
    data_dir.mkdir(mode=0o700, exist_ok=True)
    if owner is not None:
        os.chown(data_dir, *owner)
    conf = _conf(out, listen, tls_listen, broker_user, autosave_changes)
    _write_private(out / "mosquitto.conf", conf.encode(), mode=0o644)
    return result


def _acl(accounts: list[Account], service_users: list[str], prefix: str, codes: dict[str, str] | None = None,
         cn_topics: list[str] | None = None) -> str:
    """The ACL. ``codes``: "site/device" → the device's code (devices of the national
    convention); ``cn_topics``: their data topics (``$dp``, vendor topics with ``{code}``).
    A ``#`` never matches a topic that starts with ``$`` (MQTT 3.1.1 §4.7.2), so the
    convention's ``$dp``, ``$dr`` and ``$creq`` are granted one by one."""
    from geowarn.alerts.live import REQUEST_KINDS  # here: the CLI's start-up need not load the alert engine
    from geowarn.ingest.commands_cn import REPLY_TOPIC, command_topic

    codes = codes or {}
    cn_topics = cn_topics or []

    p = prefix
    out = [
        "# GeoWarn broker ACL, generated by `geowarn broker-config` from the site registry and roster.",
        "# Re-run the command instead of editing: hand edits are overwritten.",
        "# No topic lines before the first `user`: anonymous clients are refused anyway and get nothing.",
        "# Topics not granted here are denied: a denied publish is dropped by the broker (MQTT 3.1.1",
        "# still acknowledges it), a denied subscription delivers nothing.",
        "",
        "# -- the GeoWarn daemon's connections (username = client id; one service password)",
    ]
    for user in service_users:
        out += [f"user {user}", f"topic readwrite {p}/#"]
        if codes:
            out += [f"topic read {t.replace('{code}', '+')}" for t in cn_topics]
            out += [f"topic read {REPLY_TOPIC}", f"topic write {command_topic('+')}"]
        out.append("")
    out += ["# -- operators: requests and their results; what the duty officers see"]
    for a in accounts:
        if a.role == "operator":
            out.append(f"user {a.username}")
            for kind in REQUEST_KINDS:
                out += [f"topic write {p}/{kind}", f"topic read {p}/{kind}/result"]
            out += [f"topic read {p}/alerts/#", f"topic read {p}/cap/#", f"topic read {p}/deadletter",
                    f"topic read {p}/daemon/+/state", ""]
    out += ["# -- notification subscribers, one per roster unit: their own unit only"]
    for a in accounts:
        if a.role == "subscriber":
            out += [f"user {a.username}", f"topic read {p}/notify/{a.scope}", f"topic read {p}/cap/{a.scope}",
                    f"topic read {p}/alerts/{a.scope}/#", ""]
    out += ["# -- devices: publish their own readings and status, read their own commands"]
    for a in accounts:
        if a.role == "device":
            site, device = a.scope.split("/", 1)
            out += [f"user {a.username}", f"topic write {p}/{site}/{device}/data", f"topic write {p}/{site}/{device}/status",
                    f"topic read {p}/{site}/{device}/cmd"]
            code = codes.get(a.scope)
            if code:
                # The national convention: its data topics (a vendor topic only with its own
                # code in it), its command topic, and answers on the shared $dr.
                out += [f"topic write {t.replace('{code}', code)}" for t in cn_topics]
                # The firmware subscribes to $creq/{code}/+ (its own commands, whatever their name).
                out += [f"topic read {command_topic(code).rsplit('/', 1)[0]}/+", f"topic write {REPLY_TOPIC}"]
            out.append("")
    return "\n".join(out) + "\n"


def _conf(out: Path, listen: tuple[str, int] | None, tls_listen: tuple[str, int] | None, broker_user: str, autosave_changes: int) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        f"# GeoWarn broker, generated by `geowarn broker-config` at {stamp}. Start: mosquitto -c {out / 'mosquitto.conf'}",
        "# Re-run `geowarn broker-config` to change it (hand edits are overwritten); passwords are kept.",
        "",
        "# Mosquitto 2 drops from root to this user right after reading this file: passwd, acl, the",
        "# server key and data/ are owned by it.",
        f"user {broker_user}",
        "",
        "# -- who may connect: nobody without a password from passwd; topics as in acl",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {out / 'passwd'}",
        f"acl_file {out / 'acl'}",
        "# Every listener below has use_username_as_clientid (a listener option): the client id of every",
        "# connection is replaced by its username, so nobody can take over (or kick) the daemon's",
        "# persistent session with its client id without the daemon's password.",
        "",
        "# -- persistence: sessions, subscriptions, retained and queued QoS 1 messages survive a restart.",
        "# Mosquitto keeps them in memory and writes the whole database to data/mosquitto.db on a clean",
        "# stop (SIGTERM), on SIGUSR1, and (autosave_on_changes) after every autosave_interval changes",
        "# (queued messages, retained messages, subscriptions). A crash or power loss loses at most the",
        "# changes since the last save; a lower number loses less and writes more.",
        "persistence true",
        f"persistence_location {out / 'data'}/",
        "persistence_file mosquitto.db",
        "autosave_on_changes true",
        f"autosave_interval {autosave_changes}",
        "# The daemon's queue while it is down is what keeps readings: never drop it (Mosquitto's default",
        "# keeps only 1000 messages per client). The bound is this box's memory.",
        "max_queued_messages 0",
        "max_queued_bytes 0",
        "max_inflight_messages 1000",
        "# A persistent session nobody used for 30 days is dropped (decommissioned clients).",
        "persistent_client_expiration 30d",
        "",
        "# -- logging: to stderr (journald under systemd)",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "",
    ]
    if listen is not None:
        lines += ["# -- plain MQTT (use on loopback or a trusted network only: passwords travel in clear)",
                  f"listener {listen[1]} {listen[0]}", "protocol mqtt", "use_username_as_clientid true", ""]
    if tls_listen is not None:
        tls = out / "tls"
        lines += ["# -- MQTT over TLS: clients verify the server with tls/ca.crt (GEOWARN_MQTT_CA_FILE)",
                  f"listener {tls_listen[1]} {tls_listen[0]}", "protocol mqtt", "use_username_as_clientid true",
                  f"cafile {tls / 'ca.crt'}", f"certfile {tls / 'server.crt'}", f"keyfile {tls / 'server.key'}",
                  "tls_version tlsv1.2", ""]
    return "\n".join(lines)


# -- the command ---------------------------------------------------------------------------------


def cmd_broker_config(args: Any) -> int:
    import sys

    from geowarn.config.errors import ConfigError
    from geowarn.config.settings import load_all

    try:
        loaded = load_all(args.config)
    except ConfigError as exc:
        print("configuration error:", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    try:
        listen = parse_hostport(args.listen, "--listen") if args.listen else None
        tls_listen = parse_hostport(args.tls_listen, "--tls-listen") if args.tls_listen else None
        done = generate(loaded, Path(args.out), listen=listen, tls_listen=tls_listen, tls_names=args.tls_name or (),
                        rotate=args.rotate or (), broker_user=args.broker_user, autosave_changes=args.autosave_changes)
    except BrokerConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_dev = sum(1 for a in done.accounts if a.role == "device")
    n_sub = sum(1 for a in done.accounts if a.role == "subscriber")
    print(f"wrote {done.out}: {n_dev} devices, {n_sub} notification subscribers, the daemon's accounts and {OPERATOR}")
    if done.new:
        print(f"  new passwords: {', '.join(done.new)}")
    if done.rotated:
        print(f"  rotated: {', '.join(done.rotated)} (update those stations or env files, then: kill -HUP <mosquitto pid>)")
    if done.dropped:
        print(f"  removed (no longer in the registry or roster): {', '.join(done.dropped)}")
    if done.tls_issued:
        print(f"  TLS: issued {done.tls_issued} certificate(s) in {done.out / 'tls'}")
    for w in done.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"start the broker: mosquitto -c {done.out / 'mosquitto.conf'}")
    print(f"start the daemon: set -a; . {done.out / 'geowarn.env'}; set +a; geowarn run")
    return 0


def add_broker_config_parser(sub: Any) -> None:
    b = sub.add_parser("broker-config", help="generate a locked-down Mosquitto 2.0 setup (accounts, ACL, TLS) from the registry and roster")
    b.add_argument("--out", required=True, help="folder for mosquitto.conf, passwd, acl, tls/, devices.csv, geowarn.env (re-run keeps passwords)")
    b.add_argument("--listen", default=None, help="plain MQTT listener HOST:PORT (default 127.0.0.1:1883 when no --tls-listen)")
    b.add_argument("--tls-listen", default=None, help="MQTT over TLS listener HOST:PORT, with a generated CA and server certificate")
    b.add_argument("--tls-name", action="append", default=None, metavar="NAME",
                   help="a DNS name or IP the stations use to reach the TLS listener (repeatable; goes into the certificate)")
    b.add_argument("--rotate", action="append", default=None, metavar="DEVICE",
                   help="issue a new password for this device (or account username); repeatable")
    b.add_argument("--broker-user", default=None,
                   help="the user mosquitto runs as (as root: 'mosquitto'; it owns passwd, acl, the key and data/)")
    b.add_argument("--autosave-changes", type=int, default=100,
                   help="save the broker's database after this many changes (a crash loses at most these; default 100)")
    b.add_argument("--config", default=None, help="settings TOML (sites, roster, mqtt_client_id, topic_prefix); GEOWARN_* override it")
    b.set_defaults(func=cmd_broker_config)
