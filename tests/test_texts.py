"""Notification texts in the unit's language (issue 15 item 8): a real warning through the
response chain (LiveChain, outbox, dispatcher) reaches WeCom, DingTalk and Feishu robots, Aliyun
and Tencent Cloud SMS, a generic SMS gateway and an SMTP server (the loopback receivers and
emulators of tests/receivers.py) in Chinese, with the site's and the unit's names, Beijing time
with its zone, the 防灾明白卡 essentials, the evidence in words and the ack deadline; an English
unit gets English; e-mail is text and HTML without JSON; a unit's templates replace the words and
a bad one stops the roster's load with file, key and reason.

Every expected string here is written by hand from the example registry (sites.example.toml:
BSH's card) and from the clock: T0 = 2025-11-29T09:30:00Z is 17:30 in Beijing (UTC+8), and a red
warning's ack deadline is 5 minutes later (DESIGN §5)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from geowarn.alerts.dispatch import Dispatcher
from geowarn.alerts.live import LiveChain
from geowarn.alerts.notifiers import build_notifiers
from geowarn.alerts.outbox import Outbox
from geowarn.alerts.texts import evidence_zh, local_time
from geowarn.config.errors import ConfigError
from geowarn.config.registry import load_registry
from geowarn.config.roster import TEXT_FIELDS, load_roster
from geowarn.config.settings import example_path
from geowarn.core.clock import ManualClock
from geowarn.core.events import LevelChange
from receivers import (  # noqa: F401  (http_receiver, smtp_sink and provider_receiver are fixtures)
    AliyunSmsEmulator,
    DingTalkEmulator,
    FeishuEmulator,
    TencentSmsEmulator,
    WeComEmulator,
    http_receiver,
    provider_receiver,
    smtp_sink,
)

T0 = 1_764_408_600.0  # 2025-11-29T09:30:00Z
KEY = "693a91f6-7aaa-4bc4-97a0-0ec2sifa5aaa"
SEC = "SECb6c4a0d3f1e2d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4"
# Fusion's reason as detectors/velocity.py and detectors/fusion.py word it.
REASON = "BSH-GNSS1/disp_e velocity: velocity 130.0 mm/day (≥ red 120 mm/day over 6 h, or held); confirmed by 2 devices (BSH-GNSS1, BSH-GNSS2)"

SITE_NAME = "白水河滑坡 Baishuihe landslide"
UNIT_NAME = "秭归县自然资源局"
SENT = "2025-11-29 17:30 (北京时间 UTC+8)"
DEADLINE = "2025-11-29 17:35 (北京时间 UTC+8)"
CARD = ["412 人", "沿村道向北至白水河村委会", "白水河村小学操场 Baishuihe primary school playground", "王建国 (群测群防员)", "+86 717 000 0101"]
RED = "红色预警（Ⅰ级）"
DO_NOW = "立即组织受威胁群众按撤离路线撤离至避险场所"
EVIDENCE = "BSH-GNSS1/disp_e 位移速率 130.0 mm/天（6 小时平滑），达到红色阈值 120 mm/天；经 2 台设备确认（BSH-GNSS1, BSH-GNSS2）"


@pytest.fixture
def client():
    with httpx.Client(timeout=5.0) as c:
        yield c


def _roster(tmp_path: Path, county: str):
    """The example roster with its county 420527 replaced by ``county`` (TOML of one unit)."""
    example = example_path("roster.example.toml").read_text(encoding="utf-8")
    rest = example.split("[[units]]")
    text = "[[units]]".join([rest[0], "\n" + county + "\n"] + rest[2:])
    (tmp_path / "roster.toml").write_text(text, encoding="utf-8")
    return load_roster(tmp_path / "roster.toml")


def _warn(tmp_path: Path, roster, client, *, exercise: bool, smtp_url: str | None = None) -> Outbox:
    """A red warning at BSH through the real chain, dispatched once; the outbox it went through."""
    registry = load_registry(example_path("sites.example.toml"))
    outbox = Outbox(tmp_path / "outbox.sqlite")
    chain = LiveChain(registry, roster, outbox, tmp_path, zero_stats=None)
    chain.chain.feed(LevelChange("BSH", T0, 4, 0, REASON, {}, exercise))
    notifiers = build_notifiers(roster, publish=lambda topic, payload, retain: None, smtp_url=smtp_url, sender="geowarn@example.org",
                                data_dir=tmp_path, client=client)
    Dispatcher(outbox, notifiers, ManualClock(T0), timeout_s=10).run_once(T0)
    return outbox


def _assert_chinese_warning(text: str, *, drill: bool, card: bool = True) -> None:
    for words in [SITE_NAME, RED, SENT, DEADLINE] + (CARD + [UNIT_NAME, DO_NOW, EVIDENCE] if card else []):
        assert words in text, (words, text)
    assert ("【演练】" in text) is drill
    assert "Acknowledge" not in text and "UTC+8)" in text and "09:30" not in text  # Beijing time, not UTC


def test_a_chinese_unit_gets_a_chinese_drill_warning_on_wecom_dingtalk_feishu_and_both_cloud_sms(tmp_path, monkeypatch, provider_receiver, http_receiver, client):
    monkeypatch.setenv("GW_X_WECOM", KEY)
    monkeypatch.setenv("GW_X_DING_TOKEN", "ding-token")
    monkeypatch.setenv("GW_X_DING_SECRET", SEC)
    monkeypatch.setenv("GW_X_FEISHU_TOKEN", "feishu-hook")
    monkeypatch.setenv("GW_X_FEISHU_SECRET", "feishu-secret")
    monkeypatch.setenv("GW_X_ALIYUN", "ak-secret")
    monkeypatch.setenv("GW_X_TENCENT", "tc-secret-key")
    emus = {
        "wecom": WeComEmulator(KEY), "dingtalk": DingTalkEmulator("ding-token", SEC), "feishu": FeishuEmulator("feishu-hook", "feishu-secret"),
        "aliyun_sms": AliyunSmsEmulator("LTAI5tExampleKeyId", "ak-secret"), "tencent_sms": TencentSmsEmulator("AKIDexampleSecretId", "tc-secret-key", "1400006666"),
    }
    url = {k: provider_receiver(e).url for k, e in emus.items()}
    params = '{ site = "{site_name}", level = "{level_name}", time = "{time}", deadline = "{deadline}", people = "{people}", shelter = "{shelter}", who = "{responsible} {phone}" }'
    notify = ", ".join([
        f'{{ type = "wecom", url = "{url["wecom"]}/cgi-bin/webhook/send", token = "env:GW_X_WECOM" }}',
        f'{{ type = "dingtalk", url = "{url["dingtalk"]}/robot/send", token = "env:GW_X_DING_TOKEN", secret = "env:GW_X_DING_SECRET" }}',
        f'{{ type = "feishu", url = "{url["feishu"]}/open-apis/bot/v2/hook", token = "env:GW_X_FEISHU_TOKEN", secret = "env:GW_X_FEISHU_SECRET" }}',
        f'{{ type = "aliyun_sms", url = "{url["aliyun_sms"]}", key_id = "LTAI5tExampleKeyId", secret = "env:GW_X_ALIYUN", sign_name = "地灾预警", '
        f'template = "SMS_15305000", template_params = {params} }}',
        f'{{ type = "tencent_sms", url = "{url["tencent_sms"]}", key_id = "AKIDexampleSecretId", secret = "env:GW_X_TENCENT", app_id = "1400006666", '
        'sign_name = "地灾预警", template = "1234", template_params = ["{exercise}{site_name}", "{colour_zh}预警", "{deadline}", "{shelter}"] }',
        f'{{ type = "sms", url = "{http_receiver.url}/sms" }}',
    ])
    roster = _roster(tmp_path, f'admin = "420527"\nname = "{UNIT_NAME}"\ncontacts = [{{ name = "县值班室", phone = "+86 138 0013 8000" }}]\nnotify = [{notify}]')
    assert roster.units["420527"].lang == "zh"  # the default
    outbox = _warn(tmp_path, roster, client, exercise=True)
    try:
        # A red warning opens a quick-report task too: two messages each, the warning first.
        for kind, emu in emus.items():
            assert len(emu.accepted) == 2 and not emu.rejected, (kind, emu.rejected)

        wecom = emus["wecom"].accepted[0].json()["markdown"]["content"]
        _assert_chinese_warning(wecom, drill=True)
        assert wecom.startswith(f"**【演练】{SITE_NAME} 发布{RED}")
        assert "**受威胁群众**：412 人，118 户" in wecom and f"**请于 {DEADLINE} 前确认收到" in wecom

        ding = emus["dingtalk"].accepted[0].json()["markdown"]
        _assert_chinese_warning(ding["text"], drill=True)
        assert ding["title"].startswith("【演练】") and SITE_NAME in ding["title"] and RED in ding["title"]

        feishu = emus["feishu"].accepted[0].json()["content"]["text"]
        _assert_chinese_warning(feishu, drill=True)
        assert f"避险场所：白水河村小学操场 Baishuihe primary school playground" in feishu
        assert f"责任人及电话：王建国 (群测群防员) +86 717 000 0101" in feishu

        # Cloud SMS: the unit's approved template, its variables from the unit's words. The
        # drill mark goes before the first variable (the template does not show it).
        q = dict(parse_qsl(urlsplit(emus["aliyun_sms"].accepted[0].path).query))
        assert json.loads(q["TemplateParam"]) == {
            "site": f"【演练】{SITE_NAME}", "level": RED, "time": SENT, "deadline": DEADLINE, "people": "412 人",
            "shelter": "白水河村小学操场 Baishuihe primary school playground", "who": "王建国 (群测群防员) +86 717 000 0101",
        }
        assert emus["tencent_sms"].accepted[0].json()["TemplateParamSet"] == [
            f"【演练】{SITE_NAME}", "红色预警", DEADLINE, "白水河村小学操场 Baishuihe primary school playground",
        ]

        # The generic SMS gateway: one short Chinese text per phone, the deadline before the card.
        text = http_receiver.wait_for(2)[0].json()["text"]
        assert text.startswith(f"【演练】{SITE_NAME} 发布{RED}：立即组织群众按撤离路线撤离至避险场所。请于{DEADLINE}前确认。")
        assert "受威胁群众 412 人" in text and "避险场所：白水河村小学操场" in text and "王建国 (群测群防员) +86 717 000 0101" in text
        assert len(text) <= 280
    finally:
        outbox.close()


def test_a_real_warning_by_email_reads_as_a_message_in_text_and_html_without_json(tmp_path, smtp_sink, client):
    roster = _roster(tmp_path, f'admin = "420527"\nname = "{UNIT_NAME}"\nnotify = [{{ type = "email", to = ["duty@zigui.example.org"] }}]')
    outbox = _warn(tmp_path, roster, client, exercise=False, smtp_url=smtp_sink.url())
    try:
        mail = smtp_sink.wait_for(2)[0]  # the warning, then the quick-report task
    finally:
        outbox.close()
    msg = mail.message
    assert msg["Subject"] == f"{SITE_NAME} 发布{RED} BSH-20251129T093000Z"
    plain = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    _assert_chinese_warning(plain, drill=False)
    assert f"请于 {DEADLINE} 前确认收到（预警编号 BSH-20251129T093000Z），逾期未确认将上报市级。" in plain
    assert "<table" in html and "<th" in html and "受威胁群众" in html and "白水河村小学操场" in html and DEADLINE in html
    assert "【演练】" not in html
    for part in (plain, html):
        assert '"type"' not in part and '{"' not in part and '": ' not in part  # never raw JSON
    # The details are a table of what the body holds, in words: the unit's duty contact, times in Beijing time.
    assert "预警编号" in plain and "BSH-20251129T093000Z" in plain and "2025-11-29 17:35 (北京时间 UTC+8)" in plain


def test_an_english_unit_gets_english_with_names_beijing_time_the_card_and_the_deadline(tmp_path, http_receiver, client):
    roster = _roster(
        tmp_path,
        'admin = "420527"\nname = "Zigui County Natural Resources Bureau"\nlang = "en"\n'
        f'notify = [{{ type = "webhook", url = "{http_receiver.url}/hook", secret = "s3cret" }}]',
    )
    outbox = _warn(tmp_path, roster, client, exercise=True)
    outbox.close()
    doc = http_receiver.wait_for(2)[0].json()  # the warning, then the quick-report task
    assert doc["subject"] == f"[EXERCISE 演练] {SITE_NAME}: red (level 4, Alarm) warning raised BSH-20251129T093000Z~drill"
    text = doc["text"]
    for words in [
        "Time: 2025-11-29 17:30 (Beijing time, UTC+8)",
        "To: Zigui County Natural Resources Bureau (county)",
        "Do now: Evacuate the threatened people along the evacuation route to the shelter now",
        "People threatened: 412 people, 118 households",
        "Shelter: 白水河村小学操场 Baishuihe primary school playground",
        "Responsible person and phone: 王建国 (群测群防员) +86 717 000 0101",
        "Evidence: " + REASON,
        "Acknowledge by 2025-11-29 17:35 (Beijing time, UTC+8) (warning BSH-20251129T093000Z~drill)",
    ]:
        assert words in text, words
    assert text.startswith("[EXERCISE 演练]") and "红色预警" not in text and "北京时间" not in text
    assert doc["body"]["message"]["lang"] == "en"


def test_a_units_template_replaces_the_words_and_a_drill_still_says_so(tmp_path, http_receiver, client):
    roster = _roster(
        tmp_path,
        f'admin = "420527"\nname = "{UNIT_NAME}"\n'
        'templates = { "warning.sms" = "{site_name}{level_name}，{deadline}前确认，避险场所：{shelter}" }\n'
        f'notify = [{{ type = "sms", url = "{http_receiver.url}/sms", to = ["+86 138 0013 8000"] }}]',
    )
    outbox = _warn(tmp_path, roster, client, exercise=True)
    outbox.close()
    texts = [r.json()["text"] for r in http_receiver.wait_for(2)]  # the warning and the quick-report task
    assert texts[0] == f"【演练】{SITE_NAME}{RED}，{DEADLINE}前确认，避险场所：白水河村小学操场 Baishuihe primary school playground"
    assert texts[1].startswith("【演练】") and "速报" in texts[1]  # another kind keeps the default words


@pytest.mark.parametrize(
    "templates, words",
    [
        ('{ "warning.sms" = "{site_nam} {deadline}" }', ["warning.sms", "unknown placeholder {site_nam}", "known:"]),
        ('{ subject = "{level:d}" }', ["subject", "Unknown format code 'd'"]),
        ('{ "warnings.text" = "{site_name}" }', ["'warnings.text' is not a template name"]),
        ('{ text = "{site_name" }', ["text:", "brace"]),
    ],
)
def test_a_bad_template_in_the_roster_stops_the_load_with_file_key_and_reason(tmp_path, templates, words):
    path = tmp_path / "roster.toml"
    path.write_text(f'[[units]]\nadmin = "420527"\nname = "{UNIT_NAME}"\ntemplates = {templates}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_roster(path)
    [problem] = exc.value.problems
    assert problem.file == str(path) and problem.key == "units[0].templates"
    for w in words:
        assert w in problem.reason, (w, problem.reason)


def test_times_show_their_zone():
    assert local_time(T0) == "2025-11-29 17:30 (北京时间 UTC+8)"
    assert local_time(T0, "Asia/Shanghai", "en") == "2025-11-29 17:30 (Beijing time, UTC+8)"
    assert local_time(T0 + 59, "Asia/Shanghai") == "2025-11-29 17:30 (北京时间 UTC+8)"  # cut, never later than the real time
    assert local_time(T0, "Asia/Kathmandu", "en") == "2025-11-29 15:15 (Asia/Kathmandu, UTC+5:45)"
    assert local_time(T0, "UTC", "en") == "2025-11-29 09:30 (UTC)"


@pytest.mark.parametrize(
    "reason, lead",
    [
        (
            "BSH-EXT1/disp tangent: tangent angle 86.2° (velocity 41.0 mm/day, 15.2× the steady 2.70 mm/day; ≥ red 85°, or held)",
            "BSH-EXT1/disp 改进切线角 86.2°（速率 41.0 mm/天，为稳定蠕变速率 2.70 mm/天 的 15.2 倍），达到红色阈值 85°",
        ),
        (
            "BSH-EXT1/disp forecast: inverse-velocity failure forecast in 10.5 h (± 2.0 h, R² 0.97, 40 points since the onset; ≤ red 15 h, or held); "
            "orange not confirmed (only BSH-EXT1): held at yellow",
            "BSH-EXT1/disp 反速度法预测约 10.5 小时后失稳（±2.0 小时，R² 0.97，加速以来 40 个点），在红色预警时限 15 小时内；"
            "橙色未经第二台设备或失稳预测确认（仅 BSH-EXT1），维持黄色",
        ),
        (
            "BSH-RG1/rain rain: 24h rain 110.0 mm (≥ orange 100 mm, or held); effective rain 160.2 mm (Σ 0.8^i·R_i over 15 days; ≥ yellow 150 mm, or held)",
            "BSH-RG1/rain 近 24 小时雨量 110.0 mm，达到橙色阈值 100 mm；前期有效雨量 160.2 mm（15 天，衰减系数 0.8），达到黄色阈值 150 mm",
        ),
        (
            "back to yellow: no device above the orange threshold for 6 h; now BSH-EXT1/crack threshold: value 21.50 mm (≥ yellow threshold 20 mm, or held)",
            "降为黄色：已连续 6 小时没有设备超过橙色阈值；当前：BSH-EXT1/crack 监测值 21.50 mm，达到黄色阈值 20 mm",
        ),
        ("all channels back to normal", "各监测通道均已恢复正常"),
    ],
)
def test_the_evidence_in_words_keeps_the_numbers_and_the_english_detail(reason, lead):
    assert evidence_zh(reason) == f"{lead}。（原文：{reason}）"


def test_a_clause_no_pattern_reads_stays_in_the_english_detail():
    assert evidence_zh("something new; confirmed by 2 devices (A, B)") == "经 2 台设备确认（A, B）。（原文：something new; confirmed by 2 devices (A, B)）"
    assert evidence_zh("") == ""


def test_every_placeholder_the_roster_allows_is_made():
    from geowarn.alerts.model import Notify
    from geowarn.alerts.texts import template_fields

    n = Notify("county", "420527", "warning", 4, "W-1", "x", "BSH", T0, False, 0, T0 + 300, None, None, (), "id-1")
    registry = load_registry(example_path("sites.example.toml"))
    assert set(template_fields(n, None, registry.sites["BSH"], lang="zh", tz="Asia/Shanghai", reason=REASON)) == TEXT_FIELDS


def test_a_zero_report_says_its_device_health_figures_in_the_units_language():
    from geowarn.alerts.texts import _zero_lines

    z = {
        "day": "2026-12-06", "sites": ["BSH"], "readings": 1440, "devices": 5, "devices_online": 4,
        "online_rate": 0.8, "availability": 0.8353, "availability_threshold": 0.9,
        "devices_low_availability": 3, "low_availability": [["BSH-RG1", 0.5], ["BSH-PZ1", 0.75]],
        "devices_clock_trouble": 1, "clock_trouble": ["BSH-EXT1"], "warnings": 0,
    }
    zh = _zero_lines(z, True)
    assert "在线率：80.0%" in zh and "本月到报率：83.5%" in zh
    assert "到报率低于 90% 的设备：3 台（BSH-RG1 50.0%、BSH-PZ1 75.0% 等，另有 1 台）" in zh
    assert "时钟异常设备：1 台（BSH-EXT1）" in zh
    en = _zero_lines(z, False)
    assert "Online rate: 80.0 %" in en and "Transmission availability this month: 83.5 %" in en
    assert "Devices below 90 % availability: 3 (BSH-RG1 50.0%, BSH-PZ1 75.0% and 1 more)" in en
    assert "Devices whose clock may be wrong: 1 (BSH-EXT1)" in en
