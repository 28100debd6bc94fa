"""CAP in China's profile (GB/T 35965.1-2018) beside OASIS CAP: messages made by the response
chain for a county whose roster unit asks for ``cap_profile = "cn"``, each validated against the
vendored OASIS CAP 1.2 schema.

The identifier pattern is written from the standard's Annex A.1.1/A.1.2 (as quoted in
alerts/cap.py's docstring), not from GeoWarn's output: ``ZZZZZZDDDUUUXX_YYYYMMDDhhmmss_N``, 31
characters — 6-digit GB/T 2260 admin code, 3-digit GB/T 4657 organisation code, 3-digit internal
code, 2-digit extension; the entry time in Beijing time; one digit 0-9. Expected times are worked
out by hand: T0 = 1.7e9 s = 2023-11-14T22:13:20Z = 2023-11-15 06:13:20 Beijing time (UTC+8).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from lxml import etree

from geowarn.alerts.cap import CAP_NS, CapSchema, build_cap, cap_profile_for
from geowarn.alerts.chain import ReplayFiles, ResponseChain
from geowarn.alerts.log import alert_event
from geowarn.config.errors import ConfigError
from geowarn.config.registry import Registry, load_registry
from geowarn.config.roster import Roster, Unit, load_roster
from geowarn.config.settings import example_path
from geowarn.core.events import LevelChange

NS = {"cap": CAP_NS}
T0 = 1.7e9
HOUR = 3600.0
#: Zigui (420527), a made-up organisation code 001, internal code and extension at their defaults.
SENDER_CODE = "42052700100000"
#: GB/T 35965.1 Annex A.1.1 and A.1.2.
IDENTIFIER = re.compile(
    r"(?P<sender>(?P<admin>[0-9]{6})(?P<org>[0-9]{3})(?P<internal>[0-9]{3})(?P<ext>[0-9]{2}))"
    r"_(?P<entered>[0-9]{4}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])([01][0-9]|2[0-3])[0-5][0-9][0-5][0-9])"
    r"_(?P<n>[0-9])"
)
ANY_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?")


@pytest.fixture(scope="module")
def schema() -> CapSchema:
    return CapSchema.load()


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(example_path("sites.example.toml"))  # BSH and BZM in 420527, XK in 420526


@pytest.fixture(scope="module")
def roster() -> Roster:
    """The example roster with Zigui (420527) on the China profile; Xingshan (420526) as it was."""
    base = load_roster(example_path("roster.example.toml"))
    units = [
        Unit.model_validate({**u.model_dump(), "cap_profile": "cn", "cap_sender_code": SENDER_CODE}) if u.admin == "420527" else u
        for u in base.units.values()
    ]
    return Roster(units)


def run_chain(registry: Registry, roster: Roster, out: Path, changes: list[LevelChange]) -> list[tuple[str, bytes]]:
    chain = ResponseChain(registry, roster, ReplayFiles(out), zero_reports=False)
    for change in changes:
        chain.feed(change)
    return [(f.name, f.read_bytes()) for f in sorted((out / "cap").glob("*.xml"))]


def valid(schema: CapSchema, xml: bytes) -> etree._Element:
    schema.validate(xml)  # the OASIS CAP 1.2 XSD (and CAP's own rules); raises CapError
    return etree.fromstring(xml)


def text(el: etree._Element, path: str) -> str:
    found = el.findtext(path, namespaces=NS)
    assert found is not None, path
    return found


def params(info: etree._Element) -> dict[str, str]:
    return {text(p, "cap:valueName"): text(p, "cap:value") for p in info.findall("cap:parameter", NS)}


def warning_chain() -> list[LevelChange]:
    """yellow, up to red with a forecast, down to orange, lifted."""
    return [
        LevelChange("BSH", T0, 2, 0, "velocity above threshold", {"device": "BSH-GNSS1"}),
        LevelChange("BSH", T0 + HOUR, 4, 2, "tangent angle 86°", {"device": "BSH-GNSS1", "forecast": {"failure_time": T0 + 10 * HOUR}}),
        LevelChange("BSH", T0 + 2 * HOUR, 3, 4, "acceleration has stopped", {"device": "BSH-GNSS1"}),
        LevelChange("BSH", T0 + 9 * HOUR, 0, 3, "quiet for 7 h", {"device": "BSH-GNSS1"}),
    ]


def test_a_warning_of_a_china_profile_county_is_valid_oasis_cap_in_the_gbt_35965_form(schema, registry, roster, tmp_path) -> None:
    files = run_chain(registry, roster, tmp_path, warning_chain())
    roots = [valid(schema, xml) for _, xml in files]
    assert [text(r, "cap:msgType") for r in roots] == ["Alert", "Update", "Update", "Cancel"]

    sents = ["2023-11-15T06:13:20+08:00", "2023-11-15T07:13:20+08:00", "2023-11-15T08:13:20+08:00", "2023-11-15T15:13:20+08:00"]
    assert [text(r, "cap:sent") for r in roots] == sents
    triples = []
    for (name, _), root, sent in zip(files, roots, sents):
        ident = text(root, "cap:identifier")
        m = IDENTIFIER.fullmatch(ident)
        assert m is not None and len(ident) == 31, ident
        assert m["sender"] == SENDER_CODE == text(root, "cap:sender")
        assert m["admin"] == "420527"
        assert m["entered"] == sent[:19].replace("-", "").replace("T", "").replace(":", ""), "entry time in Beijing time"
        assert name.endswith(f"-{ident}.xml")
        triples.append(f"{SENDER_CODE},{ident},{sent}")
    assert len(set(triples)) == 4

    # Each Update and the Cancel reference every earlier message by sender code, identifier, sent.
    assert roots[0].find("cap:references", NS) is None
    for i, root in enumerate(roots[1:], start=1):
        assert text(root, "cap:references").split() == triples[:i]

    for root in roots:
        assert text(root, "cap:status") == "Actual"
        every_time = [m.group(0) for m in ANY_TIME.finditer(etree.tostring(root, encoding="unicode"))]
        assert every_time and all(t.endswith("+08:00") and "." not in t for t in every_time), every_time
        infos = root.findall("cap:info", NS)
        assert [text(i, "cap:language") for i in infos] == ["zh-CN"]
        info = infos[0]
        assert text(info, "cap:senderName") == roster.units["420527"].name
        assert text(info, "cap:area/cap:geocode/cap:valueName") == "GB/T 2260"
        assert text(info, "cap:area/cap:geocode/cap:value") == "420527"

    # red at T0 + 1 h, failure forecast at T0 + 10 h = 2023-11-15 16:13:20 Beijing time
    assert params(roots[1].find("cap:info", NS))["ForecastFailureTime"] == "2023-11-15T16:13:20+08:00"
    # colour and grade of the warning; the Cancel names the orange warning it lifts
    got = [(params(r.find("cap:info", NS))["预警颜色"], params(r.find("cap:info", NS))["预警级别"]) for r in roots]
    assert got == [("黄色", "Ⅲ级"), ("红色", "Ⅰ级"), ("橙色", "Ⅱ级"), ("橙色", "Ⅱ级")]
    assert "解除" in text(roots[3], "cap:info/cap:headline")


@pytest.mark.parametrize(
    "level, colour, grade, severity",
    [  # 突发事件应对法: 一级 (I) is the highest and red; OASIS severity from DESIGN §5
        (1, "蓝色", "Ⅳ级", "Minor"),
        (2, "黄色", "Ⅲ级", "Moderate"),
        (3, "橙色", "Ⅱ级", "Severe"),
        (4, "红色", "Ⅰ级", "Extreme"),
    ],
)
def test_colour_and_grade_are_parameters_for_each_level(schema, registry, roster, tmp_path, level: int, colour: str, grade: str, severity: str) -> None:
    [(_, xml)] = run_chain(registry, roster, tmp_path, [LevelChange("BZM", T0, level, 0, "test", {})])
    info = valid(schema, xml).find("cap:info", NS)
    assert info is not None
    p = params(info)
    assert (p["预警颜色"], p["预警级别"], p["GeoWarnLevel"]) == (colour, grade, str(level))
    assert text(info, "cap:severity") == severity


def test_a_county_without_the_profile_keeps_oasis_cap_in_the_same_chain(schema, registry, roster, tmp_path) -> None:
    files = run_chain(registry, roster, tmp_path, [
        LevelChange("XK", T0, 2, 0, "test", {}),
        LevelChange("BSH", T0, 2, 0, "test", {"device": "BSH-GNSS1"}),
    ])
    by_admin = {}
    for _, xml in files:
        root = valid(schema, xml)
        by_admin[text(root, "cap:info/cap:area/cap:geocode/cap:value")] = root
    xingshan, zigui = by_admin["420526"], by_admin["420527"]
    assert text(xingshan, "cap:identifier").startswith("geowarn-")
    assert text(xingshan, "cap:sender") == "geowarn@example.invalid"
    assert [text(i, "cap:language") for i in xingshan.findall("cap:info", NS)] == ["zh-CN", "en-US"]
    assert "预警颜色" not in params(xingshan.find("cap:info", NS))
    assert IDENTIFIER.fullmatch(text(zigui, "cap:identifier"))


def test_a_drill_is_an_exercise_with_an_identifier_of_the_same_pattern(schema, registry, roster, tmp_path) -> None:
    real = run_chain(registry, roster, tmp_path / "real", [LevelChange("BSH", T0, 4, 0, "test", {"device": "BSH-GNSS1"})])
    drill = run_chain(registry, roster, tmp_path / "drill", [LevelChange("BSH", T0, 4, 0, "test", {"device": "BSH-GNSS1"}, True)])
    real_root, drill_root = valid(schema, real[0][1]), valid(schema, drill[0][1])
    assert text(drill_root, "cap:status") == "Exercise"
    assert "演练" in text(drill_root, "cap:note") and text(drill_root, "cap:info/cap:headline").startswith("【演练】")
    assert IDENTIFIER.fullmatch(text(drill_root, "cap:identifier"))
    assert text(real_root, "cap:identifier") != text(drill_root, "cap:identifier")


def test_a_replay_gives_the_same_identifiers_and_bytes(registry, roster, tmp_path) -> None:
    first = run_chain(registry, roster, tmp_path / "a", warning_chain())
    again = run_chain(registry, roster, tmp_path / "b", warning_chain())
    assert first == again


def test_beijing_time_is_utc_plus_8_even_when_asia_shanghai_kept_summer_time(schema, registry) -> None:
    # 1988-07-01 02:00 UTC: Asia/Shanghai observed summer time (UTC+9) in 1986-1991;
    # Beijing time in the standard is UTC+8, i.e. 10:00.
    t = datetime(1988, 7, 1, 2, 0, tzinfo=timezone.utc).timestamp()
    ev = alert_event(LevelChange("BSH", t, 2, 0, "test", {"device": "BSH-GNSS1"}))
    unit = Unit(admin="420527", name="秭归县自然资源局", cap_profile="cn", cap_sender_code=SENDER_CODE)
    profile = cap_profile_for(Roster([unit]), "420527")
    root = valid(schema, build_cap(ev, registry.sites["BSH"], profile=profile))
    assert text(root, "cap:sent") == "1988-07-01T10:00:00+08:00"
    m = IDENTIFIER.fullmatch(text(root, "cap:identifier"))
    assert m is not None and m["entered"] == "19880701100000"
    assert text(valid(schema, build_cap(ev, registry.sites["BSH"])), "cap:sent") == "1988-07-01T11:00:00+09:00"


@pytest.mark.parametrize(
    "extra, problem",
    [
        ('cap_profile = "cn"', "needs cap_sender_code"),
        ('cap_profile = "cn"\ncap_sender_code = "42052600100000"', "starting with the unit's admin code 420527"),
        ('cap_profile = "cn"\ncap_sender_code = "4205270010000"', "must be 14 digits"),
        ('cap_profile = "gb"', "'oasis' or 'cn'"),
    ],
)
def test_the_roster_refuses_a_china_profile_without_a_proper_sender_code(tmp_path, extra: str, problem: str) -> None:
    path = tmp_path / "roster.toml"
    path.write_text(f'[[units]]\nadmin = "420527"\nname = "秭归县自然资源局"\n{extra}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_roster(path)


def test_two_sites_of_a_county_in_one_second_get_two_identifiers_and_both_messages(schema, roster, tmp_path) -> None:
    """Two Zigui sites (420527) raise, then go orange, in the same seconds. N is one digit; it
    was a CRC of the event id — linear, so for a pair of site codes of one length it is equal
    at every time or never: BSH and BYZ (the example's BZM renamed) always shared it, and the
    outbox kept only the first message. Now N is the first digit free in that second, and each
    Update references its own site's Alert."""
    from geowarn.alerts.cap import cn_identifier
    from geowarn.alerts.model import warning_id_for
    from geowarn.core.timefmt import rfc3339

    text_toml = example_path("sites.example.toml").read_text(encoding="utf-8").replace("BZM", "BYZ")
    (tmp_path / "sites.toml").write_text(text_toml, encoding="utf-8")
    reg = load_registry(tmp_path / "sites.toml")

    def naive(site: str, t: float) -> str:
        return cn_identifier({"id": f"{warning_id_for(site, t)}.1", "t": rfc3339(t), "exercise": False}, SENDER_CODE)

    assert naive("BSH", T0) == naive("BYZ", T0)  # the collision this test is about
    files = run_chain(reg, roster, tmp_path / "out", [
        LevelChange("BSH", T0, 2, 0, "velocity above threshold", {"device": "BSH-GNSS1"}),
        LevelChange("BYZ", T0, 2, 0, "velocity above threshold", {"device": "BYZ-GNSS1"}),
        LevelChange("BSH", T0 + HOUR, 3, 2, "velocity above threshold", {"device": "BSH-GNSS1"}),
        LevelChange("BYZ", T0 + HOUR, 3, 2, "velocity above threshold", {"device": "BYZ-GNSS1"}),
    ])
    roots = [valid(schema, xml) for _, xml in files]
    idents = [text(r, "cap:identifier") for r in roots]
    assert len(roots) == 4 and len(set(idents)) == 4, idents
    alerts = [r for r in roots if text(r, "cap:msgType") == "Alert"]
    updates = [r for r in roots if text(r, "cap:msgType") == "Update"]
    assert len(alerts) == 2 and len(updates) == 2
    a_ids = [text(r, "cap:identifier") for r in alerts]
    assert a_ids[0][:-1] == a_ids[1][:-1] and a_ids[0] == naive("BSH", T0)  # the first keeps its own N
    # Each Update references exactly one of the Alerts, and not the same one.
    refd = [text(r, "cap:references").split()[0].split(",")[1] for r in updates]
    assert refd == a_ids  # files in order: BSH, BYZ alerts; BSH, BYZ updates
