"""WeCom, DingTalk and Feishu group robots and Aliyun and Tencent Cloud SMS, each against a
loopback emulator of its provider (tests/receivers.py) that checks the request path, headers,
body shape and signature as the provider documents them; the signing functions, and the
emulators' own, against the worked examples the providers publish; the roster's rules for
these entries; and one warning through the real response chain to all five."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from geowarn.alerts.dispatch import Dispatcher
from geowarn.alerts.live import LiveChain
from geowarn.alerts.notifiers import NotifierError, Outgoing, build_notifiers, route
from geowarn.alerts.notifiers_cn import (
    AliyunSmsNotifier,
    DingTalkRobot,
    FeishuRobot,
    TencentSmsNotifier,
    WeComRobot,
    acs3_authorization,
    tc3_authorization,
)
from geowarn.alerts.outbox import Outbox
from geowarn.config.errors import ConfigError
from geowarn.config.registry import load_registry
from geowarn.config.roster import load_roster
from geowarn.config.settings import example_path
from geowarn.core.clock import ManualClock
from geowarn.core.events import LevelChange
from receivers import (  # noqa: F401  (provider_receiver is a fixture)
    AliyunSmsEmulator,
    DingTalkEmulator,
    FeishuEmulator,
    TencentSmsEmulator,
    WeComEmulator,
    acs3_expected,
    provider_receiver,
    tc3_expected,
)

T0 = 1_764_408_600.0
KEY = "693a91f6-7aaa-4bc4-97a0-0ec2sifa5aaa"
SEC = "SECb6c4a0d3f1e2d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4"


def _msg(*, exercise: bool = False, level: int = 3, notifier: str = "420527/x/0") -> Outgoing:
    subject = ("[EXERCISE 演练] " if exercise else "") + "橙色警戒级 Warning (orange) BSH warning: BSH-20251129T093000Z"
    return Outgoing(
        id=f"n1/{notifier}", notifier=notifier, kind="warning", admin="420527", site="BSH", level=level, subject=subject,
        text="BSH 橙色预警: 位移加速 displacement accelerating", body={"warning_id": "BSH-20251129T093000Z"}, t=T0, exercise=exercise,
    )


@pytest.fixture
def client():
    with httpx.Client(timeout=5.0) as c:
        yield c


# -- the providers' published worked examples ---------------------------------------------------


# Alibaba Cloud, "V3 request syntax and signature method": RunInstances on ECS, fixed date and nonce.
ACS3_DOC_HEADERS = {
    "host": "ecs.cn-shanghai.aliyuncs.com",
    "x-acs-action": "RunInstances",
    "x-acs-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "x-acs-date": "2023-10-26T10:22:32Z",
    "x-acs-signature-nonce": "3156853299f313e23d1673dc12e1703d",
    "x-acs-version": "2014-05-26",
}
ACS3_DOC_QUERY = {"ImageId": "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd", "RegionId": "cn-shanghai"}
ACS3_DOC_AUTHORIZATION = (
    "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;"
    "x-acs-signature-nonce;x-acs-version,Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
)
# Tencent Cloud, "Signature v3": DescribeInstances on CVM at 1551113065 (2019-02-25 UTC).
TC3_DOC_PAYLOAD = b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
TC3_DOC_SIGNATURE = "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
TC3_DOC_SECRET_KEY = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE"


def test_acs3_signature_reproduces_alibaba_clouds_worked_example():
    assert acs3_authorization("YourAccessKeyId", "YourAccessKeySecret", "POST", "/", ACS3_DOC_QUERY, ACS3_DOC_HEADERS, b"") == ACS3_DOC_AUTHORIZATION
    # The emulator's own reading of the document meets the same example.
    signed = sorted(ACS3_DOC_HEADERS)
    assert acs3_expected("YourAccessKeySecret", "POST", "/", list(ACS3_DOC_QUERY.items()), ACS3_DOC_HEADERS, signed, b"") == ACS3_DOC_AUTHORIZATION[-64:]


def test_tc3_signature_reproduces_tencent_clouds_worked_example():
    auth = tc3_authorization("AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE", TC3_DOC_SECRET_KEY, "cvm", "cvm.tencentcloudapi.com", 1551113065, TC3_DOC_PAYLOAD)
    assert auth == (
        "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, "
        f"SignedHeaders=content-type;host, Signature={TC3_DOC_SIGNATURE}"
    )
    headers = {"content-type": "application/json; charset=utf-8", "host": "cvm.tencentcloudapi.com"}
    assert tc3_expected(TC3_DOC_SECRET_KEY, "cvm", headers, ["content-type", "host"], TC3_DOC_PAYLOAD, 1551113065) == TC3_DOC_SIGNATURE


# -- group robots --------------------------------------------------------------------------------


def test_wecom_robot_posts_markdown_with_its_key_and_a_wrong_key_is_refused(provider_receiver, client):
    emu = WeComEmulator(KEY)
    rx = provider_receiver(emu)
    WeComRobot(rx.url + "/cgi-bin/webhook/send", KEY, client).send(_msg())
    [req] = emu.accepted
    assert req.path == f"/cgi-bin/webhook/send?key={KEY}"
    doc = req.json()
    assert doc["msgtype"] == "markdown" and "BSH" in doc["markdown"]["content"] and "位移加速" in doc["markdown"]["content"]

    with pytest.raises(NotifierError, match="93000") as err:
        WeComRobot(rx.url + "/cgi-bin/webhook/send", "another-key", client).send(_msg())
    assert not err.value.permanent and KEY not in str(err.value)  # a key never lands in a log line
    assert [why for _, why in emu.rejected] == ["wrong key"]


def test_wecom_markdown_is_cut_to_the_documented_4096_bytes(provider_receiver, client):
    emu = WeComEmulator(KEY)
    rx = provider_receiver(emu)
    long = Outgoing(**{**_msg().to_json(), "text": "滑坡" * 3000})
    WeComRobot(rx.url + "/cgi-bin/webhook/send", KEY, client).send(long)
    content = emu.accepted[0].json()["markdown"]["content"]
    assert 4000 < len(content.encode()) <= 4096 and content.endswith("…")


def test_dingtalk_robot_signs_timestamp_and_secret_and_a_wrong_secret_is_refused(provider_receiver, client):
    now = time.time()
    emu = DingTalkEmulator("tok-1", SEC)
    rx = provider_receiver(emu)
    DingTalkRobot(rx.url + "/robot/send", "tok-1", SEC, client, now=lambda: now).send(_msg(exercise=True))
    [req] = emu.accepted
    route_, _, query = req.path.partition("?")
    assert route_ == "/robot/send" and query.startswith(f"access_token=tok-1&timestamp={int(now * 1000)}&sign=")
    assert "+" not in query.rpartition("sign=")[2] and "/" not in query.rpartition("sign=")[2]  # URL-encoded base64
    md = req.json()["markdown"]
    assert req.json()["msgtype"] == "markdown" and md["title"].startswith("[EXERCISE 演练]") and "BSH" in md["text"]

    with pytest.raises(NotifierError, match="310000") as err:
        DingTalkRobot(rx.url + "/robot/send", "tok-1", SEC + "x", client).send(_msg())
    assert not err.value.permanent
    # A timestamp more than an hour from DingTalk's clock is refused too, even rightly signed.
    with pytest.raises(NotifierError, match="310000"):
        DingTalkRobot(rx.url + "/robot/send", "tok-1", SEC, client, now=lambda: now - 3700).send(_msg())
    assert [why for _, why in emu.rejected] == ["sign not match", "timestamp missing or more than an hour off"]


def test_feishu_robot_signs_in_the_body_and_a_wrong_secret_is_refused(provider_receiver, client):
    now = time.time()
    emu = FeishuEmulator("5e3d587e-d78e-4a07-bd07-265f269f86fd", "nIMtb7r3N9pkXyXdtAbx6e")
    rx = provider_receiver(emu)
    base = rx.url + "/open-apis/bot/v2/hook"
    FeishuRobot(base, "5e3d587e-d78e-4a07-bd07-265f269f86fd", "nIMtb7r3N9pkXyXdtAbx6e", client, now=lambda: now).send(_msg())
    [req] = emu.accepted
    doc = req.json()
    assert req.path == "/open-apis/bot/v2/hook/5e3d587e-d78e-4a07-bd07-265f269f86fd"
    assert doc["timestamp"] == str(int(now)) and doc["msg_type"] == "text" and "BSH" in doc["content"]["text"]

    with pytest.raises(NotifierError, match="19021") as err:
        FeishuRobot(base, "5e3d587e-d78e-4a07-bd07-265f269f86fd", "wrong", client).send(_msg())
    assert not err.value.permanent
    # DingTalk's recipe (secret as the key, "ts\nsecret" as the message) is not Feishu's.
    assert [why for _, why in emu.rejected] == ["sign match fail"]


def test_a_robot_that_answers_http_errors_says_whether_a_retry_can_help(provider_receiver, client):
    rx = provider_receiver(lambda req: (400, {"errcode": 40035, "errmsg": "bad"}))
    with pytest.raises(NotifierError) as err:
        WeComRobot(rx.url + "/cgi-bin/webhook/send", KEY, client).send(_msg())
    assert err.value.permanent
    rx2 = provider_receiver(lambda req: (503, {}))
    with pytest.raises(NotifierError) as err:
        DingTalkRobot(rx2.url + "/robot/send", "t", SEC, client).send(_msg())
    assert not err.value.permanent and "access_token" not in str(err.value)


# -- cloud SMS -----------------------------------------------------------------------------------


def _aliyun(rx, client, secret: str = "ak-secret", **kw) -> AliyunSmsNotifier:
    return AliyunSmsNotifier(
        rx.url, "LTAI5tExampleKeyId", secret, client, ["+86 138 0013 8000", "13900139000"], sign_name="地灾预警",
        template_code="SMS_15305000", **kw,
    )


def test_aliyun_sms_sends_sendsms_signed_acs3_with_the_units_template(provider_receiver, client):
    emu = AliyunSmsEmulator("LTAI5tExampleKeyId", "ak-secret")
    rx = provider_receiver(emu)
    _aliyun(rx, client, template_params={"site": "{site}", "level": "{colour_zh}{level_zh}", "t": "{time}"}).send(_msg())
    [req] = emu.accepted
    assert req.body == b"" and req.headers["x-acs-action"] == "SendSms" and req.headers["x-acs-version"] == "2017-05-25"
    assert req.headers["authorization"].startswith("ACS3-HMAC-SHA256 Credential=LTAI5tExampleKeyId,SignedHeaders=host;x-acs-action;")
    from urllib.parse import parse_qsl, urlsplit

    q = dict(parse_qsl(urlsplit(req.path).query))
    assert q["PhoneNumbers"] == "8613800138000,13900139000" and q["SignName"] == "地灾预警" and q["TemplateCode"] == "SMS_15305000"
    assert json.loads(q["TemplateParam"]) == {"site": "BSH", "level": "橙色警戒级", "t": "2025-11-29T09:30:00.000Z"}


def test_aliyun_sms_with_a_wrong_secret_is_refused_and_retried_later(provider_receiver, client):
    emu = AliyunSmsEmulator("LTAI5tExampleKeyId", "ak-secret")
    rx = provider_receiver(emu)
    with pytest.raises(NotifierError, match="SignatureDoesNotMatch") as err:
        _aliyun(rx, client, secret="not-the-secret").send(_msg())
    assert not err.value.permanent  # the message is fine; the AccessKey is not
    assert [why for _, why in emu.rejected] == ["signature"] and not emu.accepted
    # A clock 20 minutes off is refused as the document says (15 minutes at most).
    with pytest.raises(NotifierError, match="InvalidTimeStamp"):
        _aliyun(rx, client, now=lambda: time.time() - 1200).send(_msg())


def test_aliyun_sms_template_fault_is_permanent(provider_receiver, client):
    rx = provider_receiver(lambda req: (200, {"Code": "isv.TEMPLATE_PARAMS_ILLEGAL", "Message": "模板变量里包含非法关键字", "RequestId": "x"}))
    with pytest.raises(NotifierError, match="TEMPLATE_PARAMS_ILLEGAL") as err:
        _aliyun(rx, client).send(_msg())
    assert err.value.permanent


def test_an_sms_of_a_drill_says_so_even_when_the_template_does_not(provider_receiver, client):
    emu = AliyunSmsEmulator("LTAI5tExampleKeyId", "ak-secret")
    rx = provider_receiver(emu)
    _aliyun(rx, client, template_params={"site": "{site}", "level": "{colour_zh}"}).send(_msg(exercise=True))
    from urllib.parse import parse_qsl, urlsplit

    params = json.loads(dict(parse_qsl(urlsplit(emu.accepted[0].path).query))["TemplateParam"])
    assert params == {"site": "【演练】BSH", "level": "橙色"}


def _tencent(rx, client, key: str = "tc-secret-key", phones=("+86 138-0013-8000", "13900139000")) -> TencentSmsNotifier:
    return TencentSmsNotifier(
        rx.url, "AKIDexampleSecretId", key, client, list(phones), app_id="1400006666", sign_name="地灾预警", template_id="1234",
        template_params=["{site}", "{colour_zh}{level_zh}"],
    )


def test_tencent_sms_sends_sendsms_2021_01_11_signed_tc3(provider_receiver, client):
    emu = TencentSmsEmulator("AKIDexampleSecretId", "tc-secret-key", "1400006666")
    rx = provider_receiver(emu)
    _tencent(rx, client).send(_msg())
    [req] = emu.accepted
    h = req.headers
    assert (h["x-tc-action"], h["x-tc-version"], h["x-tc-region"]) == ("SendSms", "2021-01-11", "ap-guangzhou")
    assert h["content-type"] == "application/json; charset=utf-8" and h["host"] == rx.url.removeprefix("http://")
    assert req.json() == {
        "PhoneNumberSet": ["+8613800138000", "+8613900139000"], "SmsSdkAppId": "1400006666", "SignName": "地灾预警",
        "TemplateId": "1234", "TemplateParamSet": ["BSH", "橙色警戒级"],
    }


def test_tencent_sms_with_a_wrong_key_is_refused(provider_receiver, client):
    emu = TencentSmsEmulator("AKIDexampleSecretId", "tc-secret-key", "1400006666")
    rx = provider_receiver(emu)
    with pytest.raises(NotifierError, match="AuthFailure.SignatureFailure") as err:
        _tencent(rx, client, key="wrong").send(_msg())
    assert not err.value.permanent and [why for _, why in emu.rejected] == ["signature"]


def test_tencent_sms_retries_only_the_phone_it_could_not_text(provider_receiver, client):
    emu = TencentSmsEmulator("AKIDexampleSecretId", "tc-secret-key", "1400006666")
    emu.refuse_phones = {"+8613900139000"}
    rx = provider_receiver(emu)
    sms = _tencent(rx, client)
    with pytest.raises(NotifierError, match="13900139000"):
        sms.send(_msg())
    emu.refuse_phones = set()
    sms.send(_msg())
    assert [r.json()["PhoneNumberSet"] for r in emu.accepted] == [["+8613800138000", "+8613900139000"], ["+8613900139000"]]


# -- the roster ----------------------------------------------------------------------------------

ROSTER_HEAD = '''
[[units]]
admin = "420527"
name = "秭归县自然资源局"
contacts = [{ name = "县值班室", phone = "+86 138 0013 8000" }]
notify = [NOTIFY]
'''


def _roster_file(tmp_path: Path, notify: str) -> Path:
    p = tmp_path / "roster.toml"
    p.write_text(ROSTER_HEAD.replace("NOTIFY", notify), encoding="utf-8")
    return p


@pytest.mark.parametrize(
    "notify, words",
    [
        ('{ type = "dingtalk", token = "env:GW_T_TOKEN", secret = "SECplain" }', ["secret must not be written in the roster in plain text", "env:NAME"]),
        ('{ type = "wecom", token = "693a91f6-7aaa" }', ["token must not be written in the roster in plain text"]),
        ('{ type = "dingtalk", token = "env:GW_T_TOKEN" }', ["needs secret"]),
        ('{ type = "feishu", token = "env:GW_T_TOKEN", secret = "env:GW_T_SECRET", sign_name = "x" }', ["no use for sign_name"]),
        ('{ type = "aliyun_sms", key_id = "LTAI", secret = "env:GW_T_SECRET", sign_name = "s" }', ["needs template"]),
        ('{ type = "aliyun_sms", key_id = "LTAI", secret = "env:GW_T_SECRET", sign_name = "s", template = "SMS_1", template_params = ["{site}"] }', ["table"]),
        ('{ type = "tencent_sms", key_id = "AKID", secret = "env:GW_T_SECRET", app_id = "1400", sign_name = "s", template = "1", template_params = ["{site_nom}"] }', ["site_nom", "known:"]),
        ('{ type = "wecom", token = "env:GW_T_TOKEN", url = "ftp://x" }', ["http://"]),
        ('{ type = "mqtt", token = "env:GW_T_TOKEN" }', ["token apply to the", "not to mqtt"]),
    ],
)
def test_a_bad_provider_entry_stops_the_start_naming_file_key_and_reason(tmp_path, monkeypatch, notify, words):
    monkeypatch.setenv("GW_T_TOKEN", "t")
    monkeypatch.setenv("GW_T_SECRET", "s")
    path = _roster_file(tmp_path, notify)
    with pytest.raises(ConfigError) as exc:
        load_roster(path)
    [problem] = exc.value.problems
    assert problem.file == str(path) and problem.key.startswith("units[0].notify[0]")
    for w in words:
        assert w in problem.reason


def test_a_secret_that_cannot_be_read_stops_the_start(tmp_path, monkeypatch):
    monkeypatch.delenv("GW_T_MISSING", raising=False)
    path = _roster_file(tmp_path, f'{{ type = "feishu", token = "file:{tmp_path}/nope", secret = "env:GW_T_MISSING" }}')
    with pytest.raises(ConfigError) as exc:
        load_roster(path)
    assert [(p.file, p.key) for p in exc.value.problems] == [(str(path), "units[admin=420527].notify[0]")] * 2
    reasons = " | ".join(p.reason for p in exc.value.problems)
    assert "token: cannot read the secret file" in reasons and "secret: the environment variable GW_T_MISSING is not set" in reasons


def test_secrets_from_the_environment_and_files_build_every_provider_notifier(tmp_path, monkeypatch, client):
    (tmp_path / "ding.secret").write_text(SEC + "\n", encoding="utf-8")
    monkeypatch.setenv("GW_T_TOKEN", "tok")
    monkeypatch.setenv("GW_T_SECRET", "sec")
    notify = ", ".join([
        '{ type = "wecom", token = "env:GW_T_TOKEN" }',
        f'{{ type = "dingtalk", token = "env:GW_T_TOKEN", secret = "file:{tmp_path}/ding.secret" }}',
        '{ type = "feishu", token = "env:GW_T_TOKEN", secret = "env:GW_T_SECRET", url = "https://open.larksuite.com/open-apis/bot/v2/hook" }',
        '{ type = "aliyun_sms", key_id = "LTAI5t", secret = "env:GW_T_SECRET", sign_name = "地灾预警", template = "SMS_1", template_params = { site = "{site}" } }',
        '{ type = "tencent_sms", key_id = "env:GW_T_TOKEN", secret = "env:GW_T_SECRET", app_id = "1400006666", sign_name = "地灾预警", template = "1234", to = ["+8613900139000"] }',
    ])
    roster = load_roster(_roster_file(tmp_path, notify))
    ns = build_notifiers(roster, publish=None, smtp_url=None, sender="g@example.org", data_dir=tmp_path, client=client)
    wecom, ding, feishu, ali, tc = (ns[f"420527/{t}/0"] for t in ("wecom", "dingtalk", "feishu", "aliyun_sms", "tencent_sms"))
    assert isinstance(wecom, WeComRobot) and wecom.url == "https://qyapi.weixin.qq.com/cgi-bin/webhook/send" and wecom.token == "tok"
    assert isinstance(ding, DingTalkRobot) and ding.secret == SEC and ding.url == "https://oapi.dingtalk.com/robot/send"
    assert isinstance(feishu, FeishuRobot) and feishu.url == "https://open.larksuite.com/open-apis/bot/v2/hook"
    assert isinstance(ali, AliyunSmsNotifier) and ali.url == "https://dysmsapi.aliyuncs.com" and ali.phones == ["8613800138000"]
    assert isinstance(tc, TencentSmsNotifier) and tc.url == "https://sms.tencentcloudapi.com" and tc.key_id == "tok" and tc.phones == ["+8613900139000"]
    # The roster keeps the references, never the secrets.
    assert "sec" not in json.dumps(roster.to_json()) and roster.units["420527"].notify[1].secret.startswith("file:")
    # Routes name the phones an SMS reaches, and the unit's people for a robot.
    assert dict(route({"admin": "420527"}, roster))["420527/tencent_sms/0"] == ["+8613900139000"]
    # A secret gone by the time the daemon starts: named, at start.
    monkeypatch.delenv("GW_T_SECRET")
    with pytest.raises(ConfigError, match=r"units\[admin=420527\]\.notify\[2\]: secret: the environment variable GW_T_SECRET"):
        build_notifiers(roster, publish=None, smtp_url=None, sender="g@example.org", data_dir=tmp_path, client=client)


# -- one warning through the real chain to all five ----------------------------------------------


def test_a_warning_reaches_wecom_dingtalk_feishu_and_both_sms_providers_through_the_chain(tmp_path, monkeypatch, provider_receiver, client):
    monkeypatch.setenv("GW_E_WECOM", KEY)
    monkeypatch.setenv("GW_E_DING_TOKEN", "ding-token")
    monkeypatch.setenv("GW_E_DING_SECRET", SEC)
    monkeypatch.setenv("GW_E_FEISHU_TOKEN", "feishu-hook")
    monkeypatch.setenv("GW_E_FEISHU_SECRET", "feishu-secret")
    monkeypatch.setenv("GW_E_ALIYUN", "ak-secret")
    monkeypatch.setenv("GW_E_TENCENT", "tc-secret-key")
    emus = {
        "wecom": WeComEmulator(KEY), "dingtalk": DingTalkEmulator("ding-token", SEC), "feishu": FeishuEmulator("feishu-hook", "feishu-secret"),
        "aliyun_sms": AliyunSmsEmulator("LTAI5tExampleKeyId", "ak-secret"), "tencent_sms": TencentSmsEmulator("AKIDexampleSecretId", "tc-secret-key", "1400006666"),
    }
    url = {k: provider_receiver(e).url for k, e in emus.items()}
    notify = ", ".join([
        f'{{ type = "wecom", url = "{url["wecom"]}/cgi-bin/webhook/send", token = "env:GW_E_WECOM" }}',
        f'{{ type = "dingtalk", url = "{url["dingtalk"]}/robot/send", token = "env:GW_E_DING_TOKEN", secret = "env:GW_E_DING_SECRET" }}',
        f'{{ type = "feishu", url = "{url["feishu"]}/open-apis/bot/v2/hook", token = "env:GW_E_FEISHU_TOKEN", secret = "env:GW_E_FEISHU_SECRET" }}',
        f'{{ type = "aliyun_sms", url = "{url["aliyun_sms"]}", key_id = "LTAI5tExampleKeyId", secret = "env:GW_E_ALIYUN", sign_name = "地灾预警", '
        'template = "SMS_15305000", template_params = { site = "{site}", level = "{colour_zh}{level_zh}", time = "{time}" } }',
        f'{{ type = "tencent_sms", url = "{url["tencent_sms"]}", key_id = "AKIDexampleSecretId", secret = "env:GW_E_TENCENT", app_id = "1400006666", '
        'sign_name = "地灾预警", template = "1234", template_params = ["{site}", "{colour_zh}{level_zh}"] }',
    ])
    example = example_path("roster.example.toml").read_text(encoding="utf-8")
    county = '[[units]]\nadmin = "420527"\nname = "秭归县自然资源局"\ncontacts = [{ name = "县值班室", role = "duty officer", phone = "+86 138 0013 8000" }]\n' f"notify = [{notify}]\n"
    rest = example.split("[[units]]")
    text = "[[units]]".join([rest[0], "\n" + county.removeprefix("[[units]]\n") + "\n"] + [r for r in rest[2:]])
    (tmp_path / "roster.toml").write_text(text, encoding="utf-8")
    roster = load_roster(tmp_path / "roster.toml")
    assert [n.type for n in roster.units["420527"].notify] == ["wecom", "dingtalk", "feishu", "aliyun_sms", "tencent_sms"]

    registry = load_registry(example_path("sites.example.toml"))
    outbox = Outbox(tmp_path / "outbox.sqlite")
    try:
        chain = LiveChain(registry, roster, outbox, tmp_path, zero_stats=None)
        chain.chain.feed(LevelChange("BSH", T0, 2, 0, "velocity 10 mm/day"))
        notifiers = build_notifiers(roster, publish=lambda topic, payload, retain: None, smtp_url=None, sender="g@example.org", data_dir=tmp_path, client=client)
        Dispatcher(outbox, notifiers, ManualClock(T0), timeout_s=10).run_once(T0)
        for kind, emu in emus.items():
            [item] = [i for i in outbox.items() if i.notifier == f"420527/{kind}/0"]
            assert item.state == "sent", (kind, item.last_error, emu.rejected)
            assert len(emu.accepted) == 1 and not emu.rejected, kind
        assert "BSH" in emus["wecom"].accepted[0].json()["markdown"]["content"]
        assert "BSH" in emus["feishu"].accepted[0].json()["content"]["text"]
        assert emus["tencent_sms"].accepted[0].json()["TemplateParamSet"] == ["BSH", "黄色警示级"]
    finally:
        outbox.close()


def test_robot_credentials_stay_out_of_errors_and_logs():
    """A Feishu robot's token is in its URL path, WeCom's key and DingTalk's token in the
    query: none may reach an error message (outbox, console, operator alarm) or a log line."""
    import logging

    from geowarn.alerts.notifiers_cn import _where
    from geowarn.service.logs import configure_logging

    assert _where("https://open.feishu.cn/open-apis/bot/v2/hook/0f3a-SECRET-TOKEN") == "https://open.feishu.cn/open-apis/bot/v2/hook/***"
    assert _where("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=WECOM-SECRET") == "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
    assert "SECRET" not in _where("https://oapi.dingtalk.com/robot/send?access_token=DING-SECRET&timestamp=1&sign=x")
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(logging.INFO)  # the daemon's level: httpx would log each full URL at INFO
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        assert not logging.getLogger("httpcore").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
