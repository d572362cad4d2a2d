"""End to end through the generic HTTP channel: a running `gridline up` with the channel on, its
loopback sandbox playing the city's SMS gateway (signed inbound posts, sends recorded, signed
delivery reports), and the store in between."""

from __future__ import annotations

import re
import urllib.parse

from sqlalchemy import create_engine, func, select

from gateway.store import CaseRow, DeliveryRow, InboundRow
from tests.conftest import http_json, wait_for

CASE_NUMBER = re.compile(r"(?<!\d)(\d{10})(?!\d)")
# The first appeal on a fresh stack waits for the workers to load the classifier: on two busy
# cores that has taken over 20 s.
FIRST_REPLY = 90.0


def sandbox(stack) -> str:
    return f"http://127.0.0.1:{stack.settings.http_sandbox_port}"


def text_in(stack, phone: str, text: str, **extra: str) -> dict:
    """A resident's message, posted by the sandbox to the gateway as the SMS gateway would."""
    status, answer = http_json("POST", sandbox(stack) + "/_sandbox/inbound", {"from": phone, "text": text, **extra})
    assert status == 200, answer
    return answer


def sent_to(stack, phone: str) -> list[dict]:
    query = urllib.parse.urlencode({"to": phone})
    return http_json("GET", f"{sandbox(stack)}/_sandbox/messages?{query}")[1]["messages"]


def scalar(stack, statement):
    with create_engine(stack.settings.sqlalchemy_url).connect() as connection:
        return connection.execute(statement).scalar()


def test_an_appeal_in_through_the_http_gateway_is_acknowledged_there_and_its_report_applied(stack):
    phone = "+8617199000101"
    answer = text_in(stack, phone, "翠湖花园3号楼门口垃圾三天没人清了", format="form")
    assert (answer["status"], answer["body"]) == (200, '{"ok":true}')
    [ack] = wait_for(lambda: sent_to(stack, phone), FIRST_REPLY, what="the acknowledgement at the HTTP gateway")
    assert "环境卫生" in ack["text"] and ack["path"] == "/send" and ack["content_type"] == "application/json"
    number = CASE_NUMBER.search(ack["text"]).group(1)
    assert scalar(stack, select(CaseRow.channel).where(CaseRow.number == number)) == "http"
    assert scalar(stack, select(CaseRow.reporter).where(CaseRow.number == number)) == phone
    # The sandbox reports "sent" then "delivered" for it, echoing our delivery id.
    wait_for(lambda: scalar(stack, select(DeliveryRow.state).where(DeliveryRow.recipient == phone,
                                                                 DeliveryRow.channel == "http")) == "delivered",
             FIRST_REPLY, what="the delivery report applied")
    assert scalar(stack, select(DeliveryRow.provider_id).where(DeliveryRow.recipient == phone)) == ack["id"]


def test_a_resident_asks_for_status_on_the_same_channel(stack):
    phone = "+8617199000102"
    text_in(stack, phone, "幸福路有个井盖坏了，晚上很危险")
    [ack] = wait_for(lambda: sent_to(stack, phone), FIRST_REPLY, what="the acknowledgement")
    number = CASE_NUMBER.search(ack["text"]).group(1)
    text_in(stack, phone, f"查询 {number}")
    reply = wait_for(lambda: (m := sent_to(stack, phone)) and len(m) >= 2 and m[-1], FIRST_REPLY,
                     what="the status reply")
    assert number in reply["text"]


def test_refused_calls_store_nothing(stack):
    for phone, extra, status in [
        ("whatsapp:+8617199000103", {}, 400),  # not a phone number: nobody could answer it
        ("abc", {}, 400),
        ("+8617199000104", {"signature": "sha256=" + "0" * 64}, 403),  # forged
    ]:
        answer = text_in(stack, phone, "路灯不亮", **extra)
        assert answer["status"] == status, answer
        stored = select(func.count()).select_from(InboundRow).where(InboundRow.provider_id == answer["id"])
        assert scalar(stack, stored) == 0
