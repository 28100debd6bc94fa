"""The duty roster: who is on duty for each admin unit, and how to reach them.

Admin units follow GB/T 2260: a 6-digit county code; its first four digits + "00" is the city,
its first two + "0000" the province; the national level uses "100000". The alert engine walks
county → city → province → national through these units.
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from geowarn.config.errors import ConfigError, ConfigProblem, problems_from_validation
from geowarn.config.registry import Registry, read_toml

Tier = Literal["county", "city", "province", "national"]
TIERS: tuple[Tier, ...] = ("county", "city", "province", "national")
NATIONAL = "100000"


def tier_of(admin: str) -> Tier:
    """The tier an admin code names, from its shape."""
    if admin == NATIONAL:
        return "national"
    if admin.endswith("0000"):
        return "province"
    if admin.endswith("00"):
        return "city"
    return "county"


def chain_of(county: str) -> list[tuple[Tier, str]]:
    """[(tier, admin code)] from the county up to the nation."""
    return [
        ("county", county),
        ("city", county[:4] + "00"),
        ("province", county[:2] + "0000"),
        ("national", NATIONAL),
    ]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Contact(_Strict):
    name: str = Field(min_length=1)
    role: str = ""
    phone: str = ""
    email: str = ""


class Notify(_Strict):
    """One way to reach a unit. The alert engine's notifiers read these.

    A webhook signs every delivery with ``secret`` (HMAC-SHA256, see alerts/notifiers.py);
    ``unsigned = true`` says on purpose that it has none (``load_roster`` refuses a webhook with
    neither: a receiver could not tell GeoWarn's warnings from anybody's).

    The providers' channels (``wecom``, ``dingtalk``, ``feishu``, ``aliyun_sms``,
    ``tencent_sms``) take their tokens and secrets as ``env:NAME`` or ``file:/path`` only, never
    in plain text (``provider_shape_problems``), and ``load_roster`` reads them once to refuse,
    at start, one that cannot be read.
    """

    type: Literal["mqtt", "webhook", "email", "sms", "jsonl", "wecom", "dingtalk", "feishu", "aliyun_sms", "tencent_sms"]
    url: str = ""
    to: list[str] = []
    secret: str = ""
    unsigned: bool = False
    # The providers' own channels (PROVIDER_TYPES; alerts/notifiers_cn.py): see provider_shape_problems.
    token: str = ""
    key_id: str = ""
    app_id: str = ""
    sign_name: str = ""
    template: str = ""
    template_params: dict[str, str] | list[str] | None = None
    region: str = ""

    @model_validator(mode="after")
    def _needs(self) -> "Notify":
        if self.type in ("webhook", "sms") and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"a {self.type} notifier needs url = 'http://…' or 'https://…'")
        if self.type == "email" and not self.to:
            raise ValueError("an email notifier needs to = ['someone@example.org']")
        reasons = provider_shape_problems(self)
        if reasons:
            raise ValueError("; ".join(reasons))
        return self


# -- notification texts (alerts/texts.py) ---------------------------------------------------------

#: The languages a unit's notifications are written in.
LANGS = ("zh", "en")
#: The parts of a notification a unit's ``templates`` may replace.
TEXT_PARTS = ("subject", "text", "sms")
#: The notification kinds (alerts.model.NotifyKind) a template may be limited to: "warning.sms".
TEXT_KINDS = (
    "warning", "realarm", "escalation", "downgrade", "cancel", "report_due", "report_overdue", "nodata", "data_back",
    "shelved", "unshelved", "out_of_service", "return_to_service", "zero_report",
)
#: The placeholders a template may use, e.g. "{mark}{site_name} {level_name}：{action} 请于 {deadline} 前确认".
TEXT_FIELDS = frozenset(
    {
        "mark", "site", "site_name", "unit_name", "admin", "tier", "kind", "level", "colour", "grade", "level_name", "previous_name",
        "action", "action_short", "headline", "time", "time_utc", "deadline", "deadline_line", "warning_id", "task_id", "device",
        "people", "households", "route", "shelter", "responsible", "phone", "hazard", "card", "reason", "evidence", "original",
    }
)


def text_template_problem(key: str, template: str) -> str | None:
    """Why ``template`` cannot be a unit's ``templates[key]``, or None. Checked at load, so a
    typo stops the start instead of the first red warning."""
    kind, _, part = key.rpartition(".")
    if part not in TEXT_PARTS or (kind and kind not in TEXT_KINDS):
        return f"{key!r} is not a template name: use one of {', '.join(TEXT_PARTS)}, or '<kind>.<part>' with a kind of {', '.join(TEXT_KINDS)}"
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        return f"{key}: {exc} (a literal brace is written {{{{ or }}}})"
    unknown = sorted({n for n in names if n not in TEXT_FIELDS})
    if unknown:
        return f"{key}: unknown placeholder {', '.join('{' + n + '}' for n in unknown)}; known: {', '.join(sorted(TEXT_FIELDS))}"
    try:
        template.format_map(dict.fromkeys(TEXT_FIELDS, ""))
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        return f"{key}: {exc}"
    if part == "subject" and ("\n" in template or "\r" in template):
        return f"{key}: a subject is one line"
    return None


class Unit(_Strict):
    """One admin unit of the chain. ``cap_profile`` picks the CAP its sites' messages follow
    (alerts/cap.py): ``"oasis"`` (default) or ``"cn"``, China's GB/T 35965.1 profile, which
    needs ``cap_sender_code``: the 14-digit 发布单位代码 (this unit's admin code, its 3-digit
    GB/T 4657 organisation code, "000" and "00" unless the platform assigned others).

    ``lang`` is the language of its notifications (``"zh"``, the default, or ``"en"``);
    ``templates`` replaces their ``subject``, ``text`` or ``sms`` (``"warning.sms"`` for one
    kind only) with a text whose ``{placeholders}`` are ``TEXT_FIELDS`` (alerts/texts.py)."""

    admin: str
    name: str = Field(min_length=1)
    tier: Tier | None = None
    contacts: list[Contact] = []
    notify: list[Notify] = []
    cap_profile: Literal["oasis", "cn"] = "oasis"
    cap_sender_code: str = ""
    lang: Literal["zh", "en"] = "zh"
    templates: dict[str, str] = {}

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: dict[str, str]) -> dict[str, str]:
        problems = [p for key, t in v.items() if (p := text_template_problem(key, t)) is not None]
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("admin")
    @classmethod
    def _admin(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9]{6}", v):
            raise ValueError(f"admin {v!r} must be a 6-digit GB/T 2260 code (national: {NATIONAL})")
        return v

    @field_validator("tier")
    @classmethod
    def _tier_of_admin(cls, v: Tier | None, info: ValidationInfo) -> Tier | None:
        admin = info.data.get("admin")  # absent when admin itself is invalid
        if v is not None and admin is not None and v != tier_of(admin):
            raise ValueError(f"tier {v!r} does not match admin {admin}, which is a {tier_of(admin)} code")
        return v

    @model_validator(mode="after")
    def _tier(self) -> "Unit":
        if self.tier is None:
            object.__setattr__(self, "tier", tier_of(self.admin))
        return self

    @model_validator(mode="after")
    def _cap_sender_code(self) -> "Unit":
        code = self.cap_sender_code
        if code and not (re.fullmatch(r"[0-9]{14}", code) and code.startswith(self.admin)):
            raise ValueError(
                f"cap_sender_code {code!r} must be 14 digits starting with the unit's admin code {self.admin} "
                "(admin code, GB/T 4657 organisation code, '000', '00')"
            )
        if self.cap_profile == "cn" and not code:
            raise ValueError(f"cap_profile = 'cn' needs cap_sender_code = '{self.admin}DDD00000' (DDD: the unit's GB/T 4657 organisation code)")
        return self


class _RosterFile(_Strict):
    units: list[Unit] = Field(min_length=1)


class Roster:
    def __init__(self, units: list[Unit], source: str = "<memory>") -> None:
        self.source = source
        self.units: dict[str, Unit] = {u.admin: u for u in units}

    def chain(self, county: str) -> list[tuple[Tier, Unit | None]]:
        return [(tier, self.units.get(code)) for tier, code in chain_of(county)]

    def to_json(self) -> dict[str, Any]:
        return {
            "units": [
                {
                    "admin": u.admin,
                    "tier": u.tier,
                    "name": u.name,
                    "contacts": [c.model_dump() for c in u.contacts],
                    "notify": [n.type for n in u.notify],
                }
                for u in self.units.values()
            ]
        }


def load_roster(path: str | Path) -> Roster:
    path = Path(path)
    data = read_toml(path, "duty roster")
    try:
        parsed = _RosterFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(problems_from_validation(path, exc)) from None
    problems = []
    seen: dict[str, int] = {}
    for i, u in enumerate(parsed.units):
        if u.admin in seen:
            problems.append(ConfigProblem(str(path), f"units[{i}].admin", f"admin {u.admin} is listed twice (also units[{seen[u.admin]}])"))
        seen.setdefault(u.admin, i)
        problems += _signing_problems(str(path), u)
        problems += [
            ConfigProblem(str(path), f"units[admin={u.admin}].notify[{j}]", reason)
            for j, n in enumerate(u.notify)
            for reason in provider_secret_problems(n)
        ]
    if problems:
        raise ConfigError(problems)
    return Roster(parsed.units, str(path))


def _signing_problems(file: str, unit: Unit) -> list[ConfigProblem]:
    """A webhook signs its deliveries unless the roster says, on purpose, that it cannot."""
    out = []
    for j, n in enumerate(unit.notify):
        key = f"units[admin={unit.admin}].notify[{j}]"
        if n.unsigned and n.type != "webhook":
            out.append(ConfigProblem(file, key, f"unsigned = true applies to webhooks only, not to {n.type}"))
        elif n.type == "webhook" and n.unsigned and n.secret:
            out.append(ConfigProblem(file, key, "unsigned = true and a secret contradict each other; remove one"))
        elif n.type == "webhook" and not n.unsigned and not n.secret:
            out.append(ConfigProblem(
                file, key,
                f"the webhook to {n.url} has no secret: its receiver could not tell GeoWarn's warnings from forged ones; "
                "set secret = '<a long random string shared with the receiver>' or, to send unsigned bodies on purpose, unsigned = true",
            ))
    return out


# -- the providers' channels: group robots and cloud SMS -----------------------------------------

#: Notifier types that speak a provider's own API (alerts/notifiers_cn.py).
ROBOT_TYPES = ("wecom", "dingtalk", "feishu")
CLOUD_SMS_TYPES = ("aliyun_sms", "tencent_sms")
PROVIDER_TYPES = ROBOT_TYPES + CLOUD_SMS_TYPES
#: The names an SMS template parameter may use, e.g. ``{ site = "{site}", level = "{colour_zh}" }``.
SMS_TEMPLATE_FIELDS = frozenset(
    {"site", "level", "colour", "colour_zh", "level_zh", "level_en", "kind", "admin", "time", "warning_id", "id", "subject", "text", "exercise",
     # The unit's own words (alerts/texts.py): names, the 防灾明白卡 and the deadline, times in GEOWARN_TIMEZONE.
     "site_name", "unit_name", "grade", "level_name", "action", "action_short", "deadline", "time_utc",
     "people", "route", "shelter", "responsible", "phone"}
)
# Which of the providers' keys each type uses ("secret" and "url" are shared with the others).
_PROVIDER_KEYS: dict[str, frozenset[str]] = {
    "wecom": frozenset({"token"}),
    "dingtalk": frozenset({"token", "secret"}),
    "feishu": frozenset({"token", "secret"}),
    "aliyun_sms": frozenset({"key_id", "secret", "sign_name", "template", "template_params"}),
    "tencent_sms": frozenset({"key_id", "secret", "app_id", "sign_name", "template", "template_params", "region"}),
}
_ONLY_PROVIDER_KEYS = ("token", "key_id", "app_id", "sign_name", "template", "template_params", "region")
_SECRET_HINT = "'env:NAME' (an environment variable of the daemon) or 'file:/path' (a file only GeoWarn can read)"


def secret_value(ref: str) -> str:
    """The secret a roster reference names: ``env:NAME`` (that environment variable) or
    ``file:/path`` (that file's content, without the trailing newline). ValueError with a reason
    when it names nothing usable. The value is never kept in the roster (nor shown by it)."""
    kind, _, where = ref.partition(":")
    if kind == "env" and where:
        value = os.environ.get(where, "")
        if not value.strip():
            raise ValueError(f"the environment variable {where} is not set (or empty)")
        return value.strip()
    if kind == "file" and where:
        try:
            value = Path(where).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the secret file {where}: {exc}") from None
        if not value.strip():
            raise ValueError(f"the secret file {where} is empty")
        return value.strip()
    raise ValueError(f"{ref[:4]!r}… is not a reference; use {_SECRET_HINT}")


def _is_ref(v: str) -> bool:
    kind, _, where = v.partition(":")
    return kind in ("env", "file") and bool(where)


def _template_names(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def provider_shape_problems(n: Notify) -> list[str]:
    """What a provider notifier entry lacks or holds wrongly, without reading any secret.

    Robots: ``token`` (WeCom's key, DingTalk's access_token, Feishu's hook token) and, for
    DingTalk and Feishu, the signing ``secret``. Cloud SMS: ``key_id`` (AccessKeyId / SecretId),
    ``secret`` (AccessKeySecret / SecretKey), ``sign_name``, ``template`` (TemplateCode /
    TemplateId), Tencent's ``app_id`` (SmsSdkAppId); ``template_params`` a table for Aliyun, a
    list for Tencent, whose strings use ``SMS_TEMPLATE_FIELDS``. Tokens and secrets are never
    written in the roster: only as ``env:NAME`` or ``file:/path``.
    """
    keys = _PROVIDER_KEYS.get(n.type)
    if keys is None:
        stray = [k for k in _ONLY_PROVIDER_KEYS if getattr(n, k)]
        return [f"{', '.join(stray)} apply to the {', '.join(PROVIDER_TYPES)} notifiers only, not to {n.type}"] if stray else []
    out = []
    stray = [k for k in (*_ONLY_PROVIDER_KEYS, "secret") if getattr(n, k) and k not in keys]
    if stray:
        out.append(f"a {n.type} notifier has no use for {', '.join(stray)}")
    if n.url and not n.url.startswith(("http://", "https://")):
        out.append(f"url must be http:// or https:// (leave it out for the provider's own endpoint), got {n.url!r}")
    required = [k for k in ("token", "key_id", "secret", "app_id", "sign_name", "template") if k in keys and not getattr(n, k)]
    if required:
        out.append(f"a {n.type} notifier needs {', '.join(required)}")
    for k in ("token", "secret"):
        value = getattr(n, k)
        if value and not _is_ref(value):
            out.append(f"{k} must not be written in the roster in plain text; use {_SECRET_HINT}")
    params = n.template_params
    if n.type == "aliyun_sms" and params is not None and not isinstance(params, dict):
        out.append("template_params of aliyun_sms is a table of the template's variables: { site = '{site}', level = '{colour_zh}' }")
    if n.type == "tencent_sms" and params is not None and not isinstance(params, list):
        out.append("template_params of tencent_sms is a list, in the template's order: ['{site}', '{colour_zh}']")
    values = list(params.values()) if isinstance(params, dict) else list(params or [])
    for v in values:
        try:
            unknown = _template_names(v) - SMS_TEMPLATE_FIELDS
        except ValueError as exc:
            out.append(f"template parameter {v!r}: {exc}")
            continue
        if unknown:
            out.append(f"template parameter {v!r} uses {', '.join(sorted(unknown))}; known: {', '.join(sorted(SMS_TEMPLATE_FIELDS))}")
    return out


def provider_secret_problems(n: Notify) -> list[str]:
    """The secrets a provider notifier names that cannot be read now (at start, not at the
    first warning)."""
    if n.type not in PROVIDER_TYPES:
        return []
    out = []
    for k in ("token", "secret", "key_id"):
        value = getattr(n, k)
        if value and (k != "key_id" or _is_ref(value)):
            try:
                secret_value(value)
            except ValueError as exc:
                out.append(f"{k}: {exc}")
    return out


def cross_check(registry: Registry, roster: Roster) -> tuple[list[ConfigProblem], list[ConfigProblem]]:
    """(errors, warnings) of a registry against a roster.

    A site whose county has nobody on the roster is an error: its warnings would reach no one.
    A missing higher tier is a warning: escalation would stop there.
    """
    errors: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []
    for i, site in enumerate(registry.sites.values()):
        for tier, code in chain_of(site.admin):
            if code in roster.units:
                continue
            msg = f"site {site.site} is in {tier} {code}, which has no unit in the roster {roster.source}"
            target = errors if tier == "county" else warnings
            target.append(
                ConfigProblem(
                    registry.source,
                    f"sites[{i}].admin",
                    msg + (": its warnings would reach nobody" if tier == "county" else f": escalation stops below {tier}"),
                )
            )
    return errors, warnings
