"""CAP 1.2 messages: every message built here is validated against the OASIS schema, and the
golden values (times, msgType chain, CAP codes per level, parameters, circle) are worked out
by hand from DESIGN §5 and the CAP 1.2 specification, not copied from the output."""

from __future__ import annotations

import hashlib

import re
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from geowarn.alerts.cap import CapError, CapSchema, build_cap, cap_reference, cap_time, validate_cap, xsd_path
from geowarn.alerts.log import alert_event
from geowarn.config.registry import Site
from geowarn.core.events import LevelChange

NS = {"cap": "urn:oasis:names:tc:emergency:cap:1.2"}
SENDER = "geowarn@example.invalid"
HOUR = 3600.0
# 2026-11-29 09:30:00 UTC = 17:30:00 in Beijing (UTC+8, no daylight saving).
T0 = datetime(2026, 11, 29, 9, 30, tzinfo=timezone.utc).timestamp()


@pytest.fixture(scope="module")
def schema() -> CapSchema:
    return CapSchema.load()


@pytest.fixture
def site() -> Site:
    return Site.model_validate(
        {
            "site": "BSH",
            "name": "白水河滑坡 Baishuihe landslide",
            "hazard": "landslide",
            "scale": "large",
            "admin": "420527",
            "lat": 30.9946,
            "lon": 110.5351,
            "threatened_people": 412,
            "evacuation_route": "沿村道向北至村委会 north along the village road",
            "shelter": "白水河村小学操场 primary school playground",
            "responsible": "王建国",
            "phone": "+86 717 000 0101",
            "devices": [{"device": "BSH-GNSS1", "channels": [{"channel": "e", "kind": "gnss_e"}]}],
        }
    )


def event(t: float, level: int, previous: int, *, exercise: bool = False, forecast: dict[str, Any] | None = None, reason: str = "velocity above threshold") -> dict[str, Any]:
    """An alert event as the pipeline makes it (alerts.log.alert_event)."""
    evidence: dict[str, Any] = {"device": "BSH-GNSS1"}
    if forecast is not None:
        evidence["forecast"] = forecast
    return alert_event(LevelChange("BSH", t, level, previous, reason, evidence, exercise))


def built(schema: CapSchema, ev: dict[str, Any], site: Site, **kw: Any) -> etree._Element:
    """Build, validate against the OASIS schema, and parse: the only way tests make messages."""
    xml = build_cap(ev, site, **kw)
    schema.validate(xml)
    return etree.fromstring(xml)


def text(el: etree._Element, path: str) -> str:
    found = el.findtext(path, namespaces=NS)
    assert found is not None, path
    return found


def infos(root: etree._Element) -> dict[str, etree._Element]:
    return {text(i, "cap:language"): i for i in root.findall("cap:info", NS)}


def params(info: etree._Element) -> dict[str, str]:
    return {text(p, "cap:valueName"): text(p, "cap:value") for p in info.findall("cap:parameter", NS)}


def chain() -> list[dict[str, Any]]:
    """raise to yellow, upgrade to red with a forecast, downgrade to orange, lift."""
    return [
        event(T0, 2, 0),
        event(T0 + 2 * HOUR, 4, 2, forecast={"failure_time": T0 + 14 * HOUR, "r2": 0.97, "uncertainty_s": 3 * HOUR, "points": 40}),
        event(T0 + 30 * HOUR, 3, 4),
        event(T0 + 72 * HOUR, 0, 3),
    ]


def built_chain(schema: CapSchema, site: Site) -> list[etree._Element]:
    events = chain()
    return [
        built(schema, ev, site, references=[cap_reference(e) for e in events[:i]] or None)
        for i, ev in enumerate(events)
    ]


# -- times ------------------------------------------------------------------------------------


def test_sent_is_the_event_time_in_beijing_time_with_an_explicit_offset(schema: CapSchema, site: Site) -> None:
    roots = built_chain(schema, site)
    assert [text(r, "cap:sent") for r in roots] == [
        "2026-11-29T17:30:00+08:00",
        "2026-11-29T19:30:00+08:00",
        "2026-11-30T23:30:00+08:00",
        "2026-12-02T17:30:00+08:00",
    ]


def test_no_time_in_any_message_uses_z(schema: CapSchema, site: Site) -> None:
    iso = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?")
    for root in built_chain(schema, site):
        xml = etree.tostring(root, encoding="unicode")
        times = [m.group(0) for m in iso.finditer(xml)]
        assert times, "every message carries at least its sent time"
        assert all(t.endswith("+08:00") and "." not in t for t in times), times


def test_sub_second_event_times_are_truncated_to_whole_seconds(schema: CapSchema, site: Site) -> None:
    root = built(schema, event(T0 + 0.789, 2, 0), site)
    assert text(root, "cap:sent") == "2026-11-29T17:30:00+08:00"


def test_utc_is_written_minus_zero_as_cap_asks() -> None:
    assert cap_time("2026-11-29T09:30:00.000Z", "UTC") == "2026-11-29T09:30:00-00:00"
    assert cap_time(T0, "Asia/Shanghai") == "2026-11-29T17:30:00+08:00"


def test_a_time_without_offset_is_refused() -> None:
    with pytest.raises(CapError, match="no UTC offset"):
        cap_time("2026-11-29T09:30:00")


# -- msgType chain ----------------------------------------------------------------------------


def test_alert_update_update_cancel_chain_references_the_earlier_messages(schema: CapSchema, site: Site) -> None:
    events = chain()
    roots = built_chain(schema, site)
    ids = [f"geowarn-{e['id']}" for e in events]
    sents = ["2026-11-29T17:30:00+08:00", "2026-11-29T19:30:00+08:00", "2026-11-30T23:30:00+08:00"]
    refs = [f"{SENDER},{ids[i]},{sents[i]}" for i in range(3)]

    assert [text(r, "cap:msgType") for r in roots] == ["Alert", "Update", "Update", "Cancel"]
    assert [text(r, "cap:identifier") for r in roots] == ids
    assert roots[0].find("cap:references", NS) is None
    assert text(roots[1], "cap:references") == refs[0]
    assert text(roots[2], "cap:references") == f"{refs[0]} {refs[1]}"
    assert text(roots[3], "cap:references") == f"{refs[0]} {refs[1]} {refs[2]}"
    assert all(text(r, "cap:status") == "Actual" and text(r, "cap:scope") == "Public" for r in roots)


def test_update_and_cancel_need_references_and_alert_takes_none(site: Site) -> None:
    first, upgrade, _, lift = chain()
    with pytest.raises(CapError, match="must reference"):
        build_cap(upgrade, site)
    with pytest.raises(CapError, match="must reference"):
        build_cap(lift, site, references=[])
    with pytest.raises(CapError, match="new warning"):
        build_cap(first, site, references=[cap_reference(upgrade)])
    with pytest.raises(CapError, match="reference itself"):
        build_cap(upgrade, site, references=[cap_reference(upgrade)])


@pytest.mark.parametrize(
    "ref, problem",
    [
        (("geowarn@example.invalid", "id with space", "2026-11-29T17:30:00+08:00"), "spaces"),
        (("geowarn@example.invalid", "a,b", "2026-11-29T17:30:00+08:00"), "commas"),
        (("geowarn@example.invalid", "x", "2026-11-29T09:30:00Z"), "CAP date-time"),
        (("geowarn@example.invalid", "x"), "tuple"),
    ],
)
def test_malformed_references_are_refused(site: Site, ref: Any, problem: str) -> None:
    with pytest.raises(CapError, match=problem):
        build_cap(chain()[1], site, references=[ref])


# -- CAP codes per level ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "level, severity, urgency, certainty, response",
    [  # DESIGN §5, typed from the table
        (1, "Minor", "Future", "Possible", "Monitor"),
        (2, "Moderate", "Expected", "Possible", "Prepare"),
        (3, "Severe", "Expected", "Likely", "Prepare"),
        (4, "Extreme", "Immediate", "Likely", "Evacuate"),
    ],
)
def test_cap_codes_follow_the_design_table(schema: CapSchema, site: Site, level: int, severity: str, urgency: str, certainty: str, response: str) -> None:
    root = built(schema, event(T0, level, 0), site)
    for info in root.findall("cap:info", NS):
        assert text(info, "cap:category") == "Geo"
        assert text(info, "cap:severity") == severity
        assert text(info, "cap:urgency") == urgency
        assert text(info, "cap:certainty") == certainty
        assert text(info, "cap:responseType") == response


def test_cancel_is_an_all_clear_with_past_urgency(schema: CapSchema, site: Site) -> None:
    cancel = built_chain(schema, site)[3]
    by_lang = infos(cancel)
    for info in by_lang.values():
        assert (text(info, "cap:responseType"), text(info, "cap:urgency"), text(info, "cap:severity"), text(info, "cap:certainty")) == (
            "AllClear", "Past", "Minor", "Unlikely",
        )
        p = params(info)
        assert (p["GeoWarnLevel"], p["GeoWarnColour"], p["GeoWarnPreviousLevel"]) == ("0", "none", "3")
        assert "ForecastFailureTime" not in p
    assert "解除" in text(by_lang["zh-CN"], "cap:headline") and "橙色" in text(by_lang["zh-CN"], "cap:headline")
    assert "lifted" in text(by_lang["en-US"], "cap:headline") and "orange" in text(by_lang["en-US"], "cap:headline")
    assert "confirms it is safe" in text(by_lang["en-US"], "cap:instruction")


# -- exercise ---------------------------------------------------------------------------------


def test_a_drill_is_an_exercise_never_actual(schema: CapSchema, site: Site) -> None:
    drill = event(T0, 4, 0, exercise=True)
    root = built(schema, drill, site)
    assert text(root, "cap:status") == "Exercise"
    assert text(root, "cap:identifier") == f"geowarn-exercise-{drill['id']}"
    assert "not a real warning" in text(root, "cap:note")
    by_lang = infos(root)
    assert text(by_lang["zh-CN"], "cap:headline").startswith("【演练】")
    assert text(by_lang["en-US"], "cap:headline").startswith("[EXERCISE] ")


def test_drill_and_real_event_at_the_same_moment_get_different_identifiers(schema: CapSchema, site: Site) -> None:
    real = built(schema, event(T0, 4, 0), site)
    drill = built(schema, event(T0, 4, 0, exercise=True), site)
    assert text(real, "cap:status") == "Actual"
    assert text(real, "cap:identifier") != text(drill, "cap:identifier")


def test_a_drill_never_supersedes_a_real_warning_nor_the_reverse(schema: CapSchema, site: Site) -> None:
    real, drill = event(T0, 2, 0), event(T0, 2, 0, exercise=True)
    with pytest.raises(CapError, match="exercise message cannot reference a real one"):
        build_cap(event(T0 + HOUR, 0, 2, exercise=True), site, references=[cap_reference(real)])
    with pytest.raises(CapError, match="real message cannot reference an exercise one"):
        build_cap(event(T0 + HOUR, 0, 2), site, references=[cap_reference(drill)])
    cancel = built(schema, event(T0 + HOUR, 0, 2, exercise=True), site, references=[cap_reference(drill)])
    assert (text(cancel, "cap:status"), text(cancel, "cap:msgType")) == ("Exercise", "Cancel")


# -- content ----------------------------------------------------------------------------------


def test_one_info_in_chinese_and_one_in_english(schema: CapSchema, site: Site) -> None:
    root = built(schema, event(T0, 4, 0), site)
    by_lang = infos(root)
    assert list(by_lang) == ["zh-CN", "en-US"]
    assert text(by_lang["zh-CN"], "cap:event") == "地质灾害预警"
    assert text(by_lang["en-US"], "cap:event") == "Geohazard warning"
    assert text(by_lang["zh-CN"], "cap:headline") == "白水河滑坡 Baishuihe landslide 地质灾害红色预警(警报级)"
    assert text(by_lang["en-US"], "cap:headline") == "Red geohazard warning (Alarm) for 白水河滑坡 Baishuihe landslide"


def test_parameters_carry_colour_level_forecast_and_people(schema: CapSchema, site: Site) -> None:
    upgrade = built_chain(schema, site)[1]
    for info in upgrade.findall("cap:info", NS):
        assert params(info) == {
            "GeoWarnSite": "BSH",
            "GeoWarnLevel": "4",
            "GeoWarnColour": "red",
            "GeoWarnPreviousLevel": "2",
            # failure at T0 + 14 h = 2026-11-29 23:30 UTC = 2026-11-30 07:30 Beijing
            "ForecastFailureTime": "2026-11-30T07:30:00+08:00",
            "ThreatenedPeople": "412",
        }


def test_description_states_reason_forecast_and_level_change(schema: CapSchema, site: Site) -> None:
    en = infos(built_chain(schema, site)[1])["en-US"]
    description = text(en, "cap:description")
    assert "raised from yellow (Caution) to red (Alarm)" in description
    assert "velocity above threshold" in description
    assert "Forecast failure time: 2026-11-30T07:30:00+08:00 (± 3.0 h, R²=0.97)" in description
    assert "People threatened: 412" in description


def test_a_message_without_a_forecast_has_no_failure_time(schema: CapSchema, site: Site) -> None:
    root = built(schema, event(T0, 3, 0, forecast={"failure_time": None}), site)
    for info in root.findall("cap:info", NS):
        assert "ForecastFailureTime" not in params(info)


def test_area_is_a_circle_around_the_site_with_its_county_code(schema: CapSchema, site: Site) -> None:
    root = built(schema, event(T0, 2, 0), site)
    for info in root.findall("cap:info", NS):
        area = info.find("cap:area", NS)
        assert area is not None
        assert text(area, "cap:circle") == "30.9946,110.5351 2.0"
        assert "白水河滑坡" in text(area, "cap:areaDesc") and "420527" in text(area, "cap:areaDesc")
        assert text(area, "cap:geocode/cap:valueName") == "GB/T 2260"
        assert text(area, "cap:geocode/cap:value") == "420527"
    small = built(schema, event(T0, 2, 0), site, area_radius_km=0.5)
    assert text(small, "cap:info/cap:area/cap:circle") == "30.9946,110.5351 0.5"


def test_circle_coordinates_are_plain_decimals(schema: CapSchema, site: Site) -> None:
    near_null_island = site.model_copy(update={"lat": 0.00001, "lon": -110.123456789})
    root = built(schema, event(T0, 2, 0), near_null_island)
    assert text(root, "cap:info/cap:area/cap:circle") == "0.00001,-110.123457 2.0"


@pytest.mark.parametrize("level", [2, 3, 4])
def test_yellow_and_above_instruct_from_the_site_card(schema: CapSchema, site: Site, level: int) -> None:
    for info in built(schema, event(T0, level, 0), site).findall("cap:info", NS):
        instruction = text(info, "cap:instruction")
        for card_field in (site.evacuation_route, site.shelter, site.responsible, site.phone):
            assert card_field in instruction


def test_blue_asks_to_watch_without_an_evacuation_route(schema: CapSchema, site: Site) -> None:
    en = infos(built(schema, event(T0, 1, 0), site))["en-US"]
    instruction = text(en, "cap:instruction")
    assert "Watch for further warnings" in instruction
    assert site.evacuation_route not in instruction


def test_characters_xml_cannot_carry_are_dropped_not_fatal(schema: CapSchema, site: Site) -> None:
    root = built(schema, event(T0, 2, 0, reason="bell\x07 and nul\x00 in a reason"), site)
    assert "bell and nul in a reason" in text(root, "cap:info/cap:description")


# -- identifiers ------------------------------------------------------------------------------


def test_identifier_and_bytes_are_stable_across_builds(schema: CapSchema, site: Site) -> None:
    first = event(T0, 2, 0)
    again = event(T0, 2, 0)  # a replay makes the same event again
    a, b = build_cap(first, site), build_cap(again, site)
    schema.validate(a)
    assert a == b
    assert text(etree.fromstring(a), "cap:identifier") == f"geowarn-{first['id']}"


def test_reference_triple_matches_the_referenced_message(schema: CapSchema, site: Site) -> None:
    ev = event(T0, 2, 0)
    root = built(schema, ev, site)
    assert cap_reference(ev) == (text(root, "cap:sender"), text(root, "cap:identifier"), text(root, "cap:sent"))


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["nodata", "nodata_end"])
def test_no_data_events_have_no_cap_message(site: Site, kind: str) -> None:
    ev = alert_event(LevelChange("BSH", T0, 2, 2, "BSH-GNSS1: no data for 2.0 h", {"device": "BSH-GNSS1"}, False, kind))
    with pytest.raises(CapError, match="no CAP message"):
        build_cap(ev, site)


def test_an_event_of_another_site_is_refused(site: Site) -> None:
    ev = alert_event(LevelChange("OTHER", T0, 2, 0, "x"))
    with pytest.raises(CapError, match="site card given is 'BSH'"):
        build_cap(ev, site)


@pytest.mark.parametrize(
    "kw, problem",
    [
        ({"area_radius_km": 0.0}, "positive"),
        ({"area_radius_km": float("nan")}, "positive"),
        ({"tz": "Mars/Olympus"}, "unknown time zone"),
        ({"sender": "geowarn at example"}, "sender"),
    ],
)
def test_bad_arguments_are_refused(site: Site, kw: dict[str, Any], problem: str) -> None:
    with pytest.raises(CapError, match=problem):
        build_cap(event(T0, 2, 0), site, **kw)


# -- validation -------------------------------------------------------------------------------


def test_the_schema_is_the_vendored_oasis_copy_with_its_notice() -> None:
    path = xsd_path()
    assert path.parts[-3:] == ("alerts", "schemas", "CAP-v1.2-schema.xsd")
    xsd = path.read_bytes()
    assert b'targetNamespace="urn:oasis:names:tc:emergency:cap:1.2"' in xsd
    assert b"Copyright OASIS Open 2010" in xsd
    # The digest written in the NOTICE when the file was vendored: any edit shows here.
    assert hashlib.sha256(xsd).hexdigest() in (path.parent / "NOTICE").read_text()


def test_a_wrong_status_fails_with_a_readable_error(schema: CapSchema, site: Site) -> None:
    xml = build_cap(event(T0, 2, 0), site).replace(b"<status>Actual</status>", b"<status>Real</status>")
    with pytest.raises(CapError) as err:
        schema.validate(xml)
    message = str(err.value)
    assert message.startswith("not a valid CAP 1.2 message")
    assert "cap:status" in message and "'Real'" in message and "'Actual'" in message
    assert "{urn:" not in message


def test_a_z_time_fails_validation(schema: CapSchema, site: Site) -> None:
    xml = build_cap(event(T0, 2, 0), site).replace(b"2026-11-29T17:30:00+08:00", b"2026-11-29T09:30:00Z")
    with pytest.raises(CapError, match="cap:sent"):
        schema.validate(xml)


def test_every_schema_error_is_listed_with_its_line(schema: CapSchema, site: Site) -> None:
    xml = (
        build_cap(event(T0, 2, 0), site)
        .replace(b"<status>Actual</status>", b"<status>Real</status>")
        .replace(b"<category>Geo</category>", b"<category>Landslide</category>")
    )
    with pytest.raises(CapError) as err:
        schema.validate(xml)
    lines = str(err.value).splitlines()[1:]
    # one wrong status, and a wrong category in each of the two <info> blocks
    assert [line.split(":", 1)[0].strip().startswith("line ") for line in lines] == [True] * 3
    assert sum("cap:status" in line for line in lines) == 1
    assert sum("cap:category" in line and "'Landslide'" in line for line in lines) == 2


def test_an_update_without_references_fails_the_cap_rules(schema: CapSchema, site: Site) -> None:
    xml = build_cap(event(T0, 2, 0), site).replace(b"<msgType>Alert</msgType>", b"<msgType>Update</msgType>")
    with pytest.raises(CapError, match="msgType Update must name the earlier message"):
        schema.validate(xml)


def test_malformed_xml_is_a_cap_error(schema: CapSchema) -> None:
    with pytest.raises(CapError, match="not well-formed XML"):
        schema.validate(b"<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'><identifier>")


def test_validate_cap_loads_the_schema_when_not_given_one(site: Site) -> None:
    validate_cap(build_cap(event(T0, 2, 0), site))
    with pytest.raises(CapError):
        validate_cap(b"<alert/>")


def test_a_missing_xsd_is_a_cap_error(tmp_path) -> None:
    with pytest.raises(CapError, match="cannot load the CAP 1.2 schema"):
        CapSchema.load(tmp_path / "missing.xsd")


# The site fixture is a frozen model: sharing it across examples is safe.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    reason=st.text(max_size=200),
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    radius=st.floats(0.001, 100),
    level=st.integers(1, 4),
    exercise=st.booleans(),
)
def test_any_reason_place_and_level_gives_a_valid_message(schema: CapSchema, site: Site, reason: str, lat: float, lon: float, radius: float, level: int, exercise: bool) -> None:
    moved = site.model_copy(update={"lat": lat, "lon": lon})
    built(schema, event(T0, level, 0, exercise=exercise, reason=reason), moved, area_radius_km=radius)
