"""The duty roster: who is on duty for each admin unit, and how to reach them.

Admin units follow GB/T 2260: a 6-digit county code; its first four digits + "00" is the city,
its first two + "0000" the province; the national level uses "100000". The alert engine walks
county → city → province → national through these units.
"""

from __future__ import annotations

import re
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
    """

    type: Literal["mqtt", "webhook", "email", "sms", "jsonl"]
    url: str = ""
    to: list[str] = []
    secret: str = ""
    unsigned: bool = False

    @model_validator(mode="after")
    def _needs(self) -> "Notify":
        if self.type in ("webhook", "sms") and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"a {self.type} notifier needs url = 'http://…' or 'https://…'")
        if self.type == "email" and not self.to:
            raise ValueError("an email notifier needs to = ['someone@example.org']")
        return self


class Unit(_Strict):
    """One admin unit of the chain. ``cap_profile`` picks the CAP its sites' messages follow
    (alerts/cap.py): ``"oasis"`` (default) or ``"cn"``, China's GB/T 35965.1 profile, which
    needs ``cap_sender_code``: the 14-digit 发布单位代码 (this unit's admin code, its 3-digit
    GB/T 4657 organisation code, "000" and "00" unless the platform assigned others)."""

    admin: str
    name: str = Field(min_length=1)
    tier: Tier | None = None
    contacts: list[Contact] = []
    notify: list[Notify] = []
    cap_profile: Literal["oasis", "cn"] = "oasis"
    cap_sender_code: str = ""

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
