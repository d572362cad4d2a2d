"""End to end over loopback: a running `gridline up`, signed Twilio webhooks in, the sandbox's
record of what was texted back out, and the SQLite store in between."""

from __future__ import annotations

import json
import re
import threading

import pytest
from sqlalchemy import create_engine, func, select, text

from gateway.domain.city import load_city
from gateway.store import CaseAttachmentRow, CaseRow, DeliveryRow, InboundRow, utcnow
from tests.conftest import CONFIG, http_json, wait_for
from tests.twilio_client import inbound_form, post

CITY = load_city(CONFIG / "city")
ZH_RESIDENT = next(r for r in CITY.residents.values() if r.language == "zh" and r.preferred_channel == "sms")
EN_RESIDENT = next(r for r in CITY.residents.values() if r.language == "en")
SMS_PATH = "/webhooks/twilio/sms"
CASE_NUMBER = re.compile(r"(?<!\d)(\d{10})(?!\d)")


def db(stack):
    return create_engine(stack.settings.sqlalchemy_url)


def count(stack, statement) -> int:
    with db(stack).connect() as connection:
        return connection.execute(statement).scalar_one()


def appeal(stack, phone: str, body: str, **extra: str) -> str:
    """Text an appeal, wait for the acknowledgement, return the case number it carries."""
    before = len(stack.sent_to(phone))
    assert post(stack.settings, SMS_PATH, inbound_form(phone, body, stack.settings, **extra)).status == 200
    ack = stack.wait_sent(phone, before + 1)[-1]["body"]
    return CASE_NUMBER.search(ack).group(1)


def test_an_appeal_becomes_a_routed_case_and_is_acknowledged(stack):
    phone = "+8617199000001"
    answer = post(stack.settings, SMS_PATH, inbound_form(phone, "翠湖花园3号楼门口垃圾三天没人清了", stack.settings))
    assert answer.status == 200 and "<Response>" in answer.body
    [ack] = stack.wait_sent(phone)
    assert "环境卫生" in ack["body"] and "翠湖社区第一网格" in ack["body"]
    number = CASE_NUMBER.search(ack["body"]).group(1)
    shown = stack.gridline("cases", number)
    assert shown.returncode == 0, shown.stderr
    case = json.loads(shown.stdout)
    assert (case["category"], case["grid"], case["department"]) == ("sanitation", "QH-DH-01-01", "SANITATION")
    assert case["state"] == "assigned" and case["assigned_worker"]
    assert [h["to"] for h in case["history"]] == ["received", "assigned"]
    assert phone not in shown.stdout  # the reporter's phone is masked for operators


def test_an_unlocatable_appeal_goes_to_triage(stack):
    phone = "+8617199000002"  # not a registered resident, and the text names no place
    ack = stack.gridline("sms", "有件事想反映一下", "--from", phone)
    assert ack.returncode == 0, ack.stderr
    number = CASE_NUMBER.search(ack.stdout).group(1)
    case = json.loads(stack.gridline("cases", number).stdout)
    assert case["queue"] == "triage" and case["grid"] is None and case["assigned_worker"] is None
    assert "正在核实" in ack.stdout  # category and place are being confirmed: no guess is named
    assert "分类：" not in ack.stdout and "网格：" not in ack.stdout


@pytest.mark.parametrize(("phone", "text", "asked"), [
    ("+8617199000031", "你好", "请问您要反映什么问题"),
    ("+8617199000032", "测试", "请问您要反映什么问题"),
    ("+8617199000033", "Hello!", "What would you like to report"),
])
def test_a_greeting_or_test_gets_a_question_and_no_case(stack, phone, text, asked):
    post(stack.settings, SMS_PATH, inbound_form(phone, text, stack.settings))
    [reply] = stack.wait_sent(phone)
    assert asked in reply["body"]
    assert not CASE_NUMBER.search(reply["body"])
    assert count(stack, select(func.count()).select_from(CaseRow).where(CaseRow.reporter == phone)) == 0


def test_a_retried_message_makes_one_case(stack):
    phone = "+8617199000003"
    form = inbound_form(phone, "幸福路有个井盖坏了，晚上很危险", stack.settings)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(post(stack.settings, SMS_PATH, form)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status for a in answers] == [200] * 8
    assert post(stack.settings, SMS_PATH, form).status == 200  # and a late retry too
    stack.wait_sent(phone)
    assert len(stack.sent_after_a_marker(phone)) == 1
    sid = form["MessageSid"]
    assert count(stack, select(func.count()).select_from(InboundRow).where(InboundRow.provider_id == sid)) == 1
    assert count(stack, select(func.count()).select_from(CaseRow).where(CaseRow.reporter == phone)) == 1


@pytest.mark.parametrize("case, signature, sign_url", [
    ("missing signature", None, None),
    ("forged signature", "bm90IGEgc2lnbmF0dXJl", None),
    ("signed for another URL", "auto", "https://evil.example/webhooks/twilio/sms"),
])
def test_unsigned_or_forged_webhooks_are_refused_without_side_effect(stack, case, signature, sign_url):
    form = inbound_form("+8617199000004", f"垃圾没人清 ({case})", stack.settings)
    answer = post(stack.settings, SMS_PATH, form, signature=signature, sign_url=sign_url)
    assert answer.status == 403 and "Signature" in answer.body
    stored = select(func.count()).select_from(InboundRow).where(InboundRow.provider_id == form["MessageSid"])
    assert count(stack, stored) == 0


@pytest.mark.parametrize("drop, reason", [("From", "From"), ("MessageSid", "MessageSid"), ("Body", "Body")])
def test_missing_fields_are_a_400_with_the_reason(stack, drop, reason):
    form = inbound_form("+8617199000005", "路灯不亮", stack.settings)
    form.pop(drop)
    if drop == "MessageSid":
        form.pop("SmsMessageSid"), form.pop("SmsSid")
    answer = post(stack.settings, SMS_PATH, form)
    assert answer.status == 400 and reason in answer.body


def test_bad_bodies_are_refused_with_a_reason(stack):
    settings = stack.settings
    huge = inbound_form("+8617199000006", "很长" * 40_000, settings)
    assert post(settings, SMS_PATH, huge, signature="x").status == 413
    bad_utf8 = post(settings, SMS_PATH, {"x": "y"}, raw=b"From=%2B8617199000006&Body=%FF%FE&MessageSid=SMx")
    assert bad_utf8.status == 400 and "UTF-8" in bad_utf8.body
    raw_bytes = post(settings, SMS_PATH, {"x": "y"}, raw="Body=垃圾".encode("gbk"))
    assert raw_bytes.status == 400
    json_body = post(settings, SMS_PATH, {}, raw=b'{"Body": "hi"}', content_type="application/json")
    assert json_body.status == 415


def test_status_by_number_and_by_keyword_only_for_the_reporter(stack):
    phone, stranger = "+8617199000007", "+8617199000008"
    number = appeal(stack, phone, "南门菜市场门口占道经营很严重，车都过不去")
    for query in (number, f"查询 {number}", f"status {number}", "查询", "ｓｔａｔｕｓ"):
        before = len(stack.sent_to(phone))
        post(stack.settings, SMS_PATH, inbound_form(phone, query, stack.settings))
        reply = stack.wait_sent(phone, before + 1)[-1]["body"]
        assert number in reply, (query, reply)
    post(stack.settings, SMS_PATH, inbound_form(stranger, number, stack.settings))
    [refusal] = stack.wait_sent(stranger)
    assert number in refusal["body"] and ("未找到" in refusal["body"])
    assert "南门" not in refusal["body"]


def test_english_speakers_get_english_replies(stack):
    number = appeal(stack, EN_RESIDENT.phone, "The street light outside my building has been broken for a week.")
    ack = stack.sent_to(EN_RESIDENT.phone)[-1]["body"]
    english = re.sub(r"Assigned to \S+", "", ack)  # a worker's name is a name, not a language
    assert "case" in ack.lower() and not re.search(r"[\u4e00-\u9fff]", english)
    post(stack.settings, SMS_PATH, inbound_form(EN_RESIDENT.phone, number, stack.settings))
    status = stack.wait_sent(EN_RESIDENT.phone, 2)[-1]["body"]
    assert status.startswith(f"Case {number}")


@pytest.mark.parametrize("phone, stop, start, language", [
    ("+8617199000101", "STOP", "START", "en"), ("+8617199000102", "退订", "订阅", "zh"),
    ("+8617199000103", "ｓｔｏｐ", "start", "en"), ("+8617199000104", "TD", "订阅", "zh"),
    ("+8617199000105", "Unsubscribe", "Start", "en"), ("+8617199000106", "r", "订阅", "zh"),
])
def test_opt_out_keywords_confirm_once(stack, phone, stop, start, language):
    for _ in range(2):
        post(stack.settings, SMS_PATH, inbound_form(phone, stop, stack.settings))
    [confirmation] = stack.wait_sent(phone)
    assert len(stack.sent_after_a_marker(phone)) == 1, "a repeated STOP must not confirm twice"
    assert ("notices" in confirmation["body"]) == (language == "en")
    with db(stack).connect() as connection:
        opted = connection.execute(text("select opted_out from contacts where address = :a"), {"a": phone})
        assert opted.scalar_one() == 1
    before = len(stack.sent_to(phone))  # the confirmation and the marker's answer
    post(stack.settings, SMS_PATH, inbound_form(phone, start, stack.settings))
    stack.wait_sent(phone, before + 1)
    with db(stack).connect() as connection:
        opted = connection.execute(text("select opted_out from contacts where address = :a"), {"a": phone})
        assert opted.scalar_one() == 0


def test_help_keyword(stack):
    phone = "+8617199000009"
    post(stack.settings, SMS_PATH, inbound_form(phone, "帮助", stack.settings))
    [reply] = stack.wait_sent(phone)
    assert "查询" in reply["body"] and "退订" in reply["body"]


def test_delivery_reports_move_the_outbox_row_forward(stack):
    phone = "+8617199000010"
    appeal(stack, phone, "小区路灯坏了好几天了")
    delivered = select(func.count()).select_from(DeliveryRow).where(DeliveryRow.recipient == phone,
                                                                  DeliveryRow.state == "delivered")
    wait_for(lambda: count(stack, delivered) == 1, what="the delivered report")
    with db(stack).connect() as connection:
        sid = connection.execute(select(DeliveryRow.provider_id).where(DeliveryRow.recipient == phone)).scalar_one()
    stale = inbound_form(phone, "", stack.settings)
    late = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": "sent", "SmsStatus": "sent",
            "To": phone, "From": stale["To"], "AccountSid": stale["AccountSid"], "ApiVersion": "2010-04-01"}
    assert post(stack.settings, "/webhooks/twilio/status", late).status == 200
    assert count(stack, delivered) == 1, "a late 'sent' must not move a delivered row back"
    assert post(stack.settings, "/webhooks/twilio/status", late, signature="forged").status == 403


@pytest.mark.parametrize("fault", [500, 429])
def test_provider_errors_are_retried_and_sent_once(stack, fault):
    phone = f"+86171990002{fault % 100:02d}"
    status, _ = http_json("POST", f"{stack.sandbox_url}/_sandbox/faults", {"status": fault, "count": 2})
    assert status == 200
    post(stack.settings, SMS_PATH, inbound_form(phone, "楼道里堆满了杂物，有消防隐患", stack.settings))
    stack.wait_sent(phone, timeout=30)
    acknowledgement = (select(DeliveryRow.attempts, DeliveryRow.state)
                       .where(DeliveryRow.recipient == phone).order_by(DeliveryRow.id).limit(1))

    def recorded():
        """The sender records the outcome after the provider answered, so the sandbox may hold the
        message a moment before the row says so."""
        with db(stack).connect() as connection:
            row = connection.execute(acknowledgement).one()
        return row if row.state in ("sent", "delivered") else None

    row = wait_for(recorded, what="the acknowledgement recorded as sent")
    assert row.attempts >= 2
    assert len(stack.sent_after_a_marker(phone)) == 1


def test_the_sweeper_finishes_messages_whose_job_was_lost(stack):
    phone = "+8617199000011"
    with db(stack).begin() as connection:  # stored, but no rq job: as if the worker died holding it
        connection.execute(InboundRow.__table__.insert().values(
            channel="sms", provider_id="SMlostjob0001", sender=phone, text="帮助", media=[],
            received_at=utcnow()))
    [reply] = stack.wait_sent(phone, timeout=30)
    assert "查询" in reply["body"]


def test_phone_numbers_never_reach_the_log_in_full(stack):
    appeal(stack, "+8617199000012", "有人在绿化带里烧垃圾，烟很大")
    log = stack.log_path.read_text()
    assert "+8617199000012" not in log
    assert not re.search(r"\+86\d{11}", log)


def test_a_rating_with_nothing_to_rate_opens_no_case(stack):
    phone = "+8617199000013"
    post(stack.settings, SMS_PATH, inbound_form(phone, "５", stack.settings))
    [reply] = stack.wait_sent(phone)
    assert "查询" in reply["body"]
    assert count(stack, select(func.count()).select_from(CaseRow).where(CaseRow.reporter == phone)) == 0


def test_mms_pictures_are_attached_to_the_case(stack):
    phone = "+8617199000014"
    media = {"NumMedia": "1", "MediaUrl0": "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/MM1/Media/ME1",
             "MediaContentType0": "image/jpeg"}
    number = appeal(stack, phone, "翠湖花园3号楼门口垃圾堆成山了，见图", **media)
    with db(stack).connect() as connection:  # through the JSON column's type: PostgreSQL's driver decodes it
        attached = connection.execute(
            select(CaseAttachmentRow.kind, CaseAttachmentRow.data)
            .join(CaseRow, CaseRow.id == CaseAttachmentRow.case_id)
            .where(CaseRow.number == number)).all()
    assert [(kind, data["photo"]) for kind, data in attached] == [("photo", media["MediaUrl0"])]

