"""Cases move, end to end over loopback: appeals by SMS and Telegram reach the grid worker's chat,
button presses on the workers' bot drive the case through its states, the resident hears each
step and rates it, and an unanswered case climbs the grid level by level on a controllable clock."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from sqlalchemy import select

from adapters.telegram import SANDBOX_TOKENS as SANDBOX_TELEGRAM_TOKENS
from gateway.store import CaseRow, ContactRow, DeliveryRow
from tests.conftest import http_json, wait_for
from tests.test_sms_flow import CASE_NUMBER, CITY, SMS_PATH, db
from tests.twilio_client import inbound_form, post

RESIDENT_TOKEN, WORKER_TOKEN = SANDBOX_TELEGRAM_TOKENS


def team(grid: str, role: str):
    return next(w for w in CITY.workers.values() if w.grid_code == grid and w.role == role)


def officer(grid: str, level: int, role: str):
    unit = next(g.code for g in CITY.lineage(grid) if g.level == level)
    return team(unit, role)


def reachable_place():
    """A compound whose grid worker, grid leader and community/street officers are all on Telegram."""
    for place in CITY.places:
        if place.kind != "compound":
            continue
        people = [team(place.grid_code, "grid_worker"), team(place.grid_code, "grid_leader"),
                  officer(place.grid_code, 2, "community_officer"), officer(place.grid_code, 1, "street_officer")]
        if all(p.telegram_chat_id for p in people):
            return place
    raise AssertionError("the sample city has no fully reachable grid")


PLACE = reachable_place()
WORKER = team(PLACE.grid_code, "grid_worker")
LEADER = team(PLACE.grid_code, "grid_leader")


def bot_messages(stack, token: str, chat: int | str) -> list[dict]:
    _, body = http_json("GET", f"{stack.settings.telegram_base}/_sandbox/{token}/messages?chat_id={chat}")
    return body["messages"]


def wait_bot(stack, token: str, chat: int | str, containing: str, timeout: float = 20.0) -> dict:
    return wait_for(lambda: next((m for m in reversed(bot_messages(stack, token, chat))
                                  if containing in m.get("text", "")), None),
                    timeout, what=f"a bot message to {chat} containing {containing!r}")


def user_does(stack, token: str, **update) -> dict:
    status, body = http_json("POST", f"{stack.settings.telegram_base}/_sandbox/{token}/updates", update)
    assert status == 200, body
    return body


def case_of(stack, number: str) -> dict:
    shown = stack.gridline("cases", number)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def wait_state(stack, number: str, state: str) -> dict:
    return wait_for(lambda: (c := case_of(stack, number))["state"] == state and c, 30, 0.3,
                    what=f"case {number} to become {state}")


def sms_appeal(stack, phone: str, text: str) -> str:
    post(stack.settings, SMS_PATH, inbound_form(phone, text, stack.settings))
    ack = stack.wait_sent(phone)[-1]["body"]
    return CASE_NUMBER.search(ack).group(1)


def test_sms_appeal_is_handled_on_chat_and_rated(stack):
    phone = "+8617199000401"
    number = sms_appeal(stack, phone, f"{PLACE.name}门口垃圾堆了三天没人清理")
    alert = wait_bot(stack, WORKER_TOKEN, WORKER.telegram_chat_id, number)
    buttons = [b["callback_data"] for row in alert["reply_markup"]["inline_keyboard"] for b in row]
    assert buttons == [f"accept:{number}", f"resolve:{number}", f"escalate:{number}", f"info:{number}"]
    wait_bot(stack, WORKER_TOKEN, LEADER.telegram_chat_id, number)  # the grid leader is informed

    user_does(stack, WORKER_TOKEN, chat_id=WORKER.telegram_chat_id, callback_data=f"accept:{number}",
              message_id=alert["message_id"])
    wait_state(stack, number, "accepted")
    user_does(stack, WORKER_TOKEN, chat_id=WORKER.telegram_chat_id, callback_data=f"resolve:{number}",
              message_id=alert["message_id"])
    wait_bot(stack, WORKER_TOKEN, WORKER.telegram_chat_id, "办结说明")
    user_does(stack, WORKER_TOKEN, chat_id=WORKER.telegram_chat_id, text="已联系保洁清运完毕")
    wait_state(stack, number, "resolved")
    resolved = stack.wait_sent(phone, 2)[-1]["body"]
    assert "已联系保洁清运完毕" in resolved and "满意" in resolved

    post(stack.settings, SMS_PATH, inbound_form(phone, "满意", stack.settings))
    closed = wait_state(stack, number, "closed")
    assert [h["to"] for h in closed["history"]] == ["received", "assigned", "accepted", "resolved", "closed"]
    assert all(h["actor"] for h in closed["history"])
    assert "感谢" in stack.wait_sent(phone, 3)[-1]["body"]


def test_dissatisfied_rating_reopens_once_and_alerts_the_leader(stack):
    phone = "+8617199000402"
    number = sms_appeal(stack, phone, f"{PLACE.name}路灯坏了一个星期")
    wait_bot(stack, WORKER_TOKEN, WORKER.telegram_chat_id, number)
    for attempt in range(2):
        user_does(stack, WORKER_TOKEN, chat_id=WORKER.telegram_chat_id, callback_data=f"resolve:{number}")
        wait_bot(stack, WORKER_TOKEN, WORKER.telegram_chat_id, f"案件{number}的办结说明")
        user_does(stack, WORKER_TOKEN, chat_id=WORKER.telegram_chat_id, text=f"已修复（第{attempt + 1}次）")
        wait_state(stack, number, "resolved")
        post(stack.settings, SMS_PATH, inbound_form(phone, "不满意", stack.settings))
        if attempt == 0:
            wait_state(stack, number, "in_progress")
            wait_bot(stack, WORKER_TOKEN, LEADER.telegram_chat_id, "【重办】")
    final = wait_state(stack, number, "closed")  # the second 不满意 is recorded, not another reopening
    assert [h["to"] for h in final["history"]].count("in_progress") == 1


def test_telegram_resident_links_reports_and_answers_a_question(stack):
    resident = next(r for r in CITY.residents.values() if r.telegram_chat_id and r.language == "zh")
    chat = resident.telegram_chat_id
    user_does(stack, RESIDENT_TOKEN, chat_id=chat, text="/start")
    wait_bot(stack, RESIDENT_TOKEN, chat, "分享手机号")  # (Telegram shows no reply keyboards on messages)
    user_does(stack, RESIDENT_TOKEN, chat_id=chat, contact_phone=resident.phone.lstrip("+"))
    wait_bot(stack, RESIDENT_TOKEN, chat, resident.name)
    user_does(stack, RESIDENT_TOKEN, chat_id=chat, text=f"{PLACE.name}有人在楼道里堆放杂物，堵住了消防通道")
    ack = wait_bot(stack, RESIDENT_TOKEN, chat, "编号")
    number = CASE_NUMBER.search(ack["text"]).group(1)
    user_does(stack, RESIDENT_TOKEN, chat_id=chat, photo=True, caption="")
    wait_bot(stack, RESIDENT_TOKEN, chat, f"已附加到案件{number}")

    alert = wait_bot(stack, WORKER_TOKEN, WORKER.telegram_chat_id, number)
    user_does(stack, WORKER_TOKEN, chat_id=WORKER.telegram_chat_id, callback_data=f"accept:{number}",
              message_id=alert["message_id"])
    user_does(stack, WORKER_TOKEN, chat_id=WORKER.telegram_chat_id, callback_data=f"info:{number}",
              message_id=alert["message_id"])
    wait_bot(stack, WORKER_TOKEN, WORKER.telegram_chat_id, "要向居民询问的问题")
    user_does(stack, WORKER_TOKEN, chat_id=WORKER.telegram_chat_id, text="请问是几单元的楼道？")
    wait_bot(stack, RESIDENT_TOKEN, chat, "请问是几单元的楼道")
    assert case_of(stack, number)["state"] == "in_progress"
    user_does(stack, RESIDENT_TOKEN, chat_id=chat, text="2单元")
    answer = wait_bot(stack, WORKER_TOKEN, WORKER.telegram_chat_id, f"居民就案件{number}回复")
    assert "2单元" in answer["text"]

    user_does(stack, WORKER_TOKEN, chat_id=WORKER.telegram_chat_id, callback_data=f"escalate:{number}",
              message_id=alert["message_id"])
    wait_bot(stack, WORKER_TOKEN, WORKER.telegram_chat_id, "原因")
    user_does(stack, WORKER_TOKEN, chat_id=WORKER.telegram_chat_id, text="需要执法部门处理")
    escalated = wait_state(stack, number, "escalated")
    community = officer(PLACE.grid_code, 2, "community_officer")
    assert escalated["assigned_worker"] == community.id
    wait_bot(stack, WORKER_TOKEN, community.telegram_chat_id, number)
    wait_bot(stack, RESIDENT_TOKEN, chat, "上报")


def test_an_unanswered_case_escalates_level_by_level(stack):
    phone = "+8617199000403"
    number = sms_appeal(stack, phone, f"{PLACE.name}小区门口有人占道摆摊卖菜")
    case = wait_state(stack, number, "assigned")
    deadline = case["deadline"].rstrip("Z")
    with db(stack).connect() as connection:
        escalate_at = connection.execute(select(CaseRow.escalate_at).where(CaseRow.number == number)).scalar_one()
    ladder = [(2, "community_officer"), (1, "street_officer")]
    at = escalate_at
    for level, role in ladder:
        stack.gridline("tick", "--now", (at + timedelta(minutes=1)).isoformat() + "+00:00")
        holder = officer(PLACE.grid_code, level, role)
        wait_for(lambda h=holder: case_of(stack, number)["assigned_worker"] == h.id, 30, 0.3,
                 what=f"escalation to {role}")
        wait_bot(stack, WORKER_TOKEN, holder.telegram_chat_id, number)
        with db(stack).connect() as connection:
            at = connection.execute(select(CaseRow.escalate_at).where(CaseRow.number == number)).scalar_one()
    stack.gridline("tick", "--now", (at + timedelta(minutes=1)).isoformat() + "+00:00")
    top = wait_for(lambda: (c := case_of(stack, number))["assigned_worker"] not in
                   (officer(PLACE.grid_code, 1, "street_officer").id,) and c, 30, 0.3, what="district level")
    assert CITY.workers[top["assigned_worker"]].role == "dept_staff"
    assert CITY.workers[top["assigned_worker"]].department_code == top["department"]
    history = [h for h in top["history"] if h["to"] == "escalated"]
    assert len(history) == 3 and all(h["actor"] == "clock" for h in history)
    assert deadline == top["deadline"].rstrip("Z"), "escalation must not move the SLA deadline"
    told = wait_for(lambda: (n := sum("上报" in m["body"] for m in stack.sent_to(phone))) >= 3 and n, 20,
                    what="the resident told of each escalation")
    assert told == 3


def test_reminder_before_the_deadline(stack):
    phone = "+8617199000404"
    number = sms_appeal(stack, phone, f"{PLACE.name}楼下经常有私家车乱停，堵住了出入口")
    wait_state(stack, number, "assigned")
    with db(stack).connect() as connection:
        escalate_at = connection.execute(select(CaseRow.escalate_at).where(CaseRow.number == number)).scalar_one()
    stack.gridline("tick", "--now", (escalate_at - timedelta(hours=1)).isoformat() + "+00:00")
    wait_bot(stack, WORKER_TOKEN, WORKER.telegram_chat_id, f"【提醒】案件{number}")
    assert case_of(stack, number)["state"] == "assigned"


def test_operator_rejects_and_illegal_moves_are_refused(stack):
    phone = "+8617199000405"
    number = sms_appeal(stack, phone, f"{PLACE.name}邻居家装修，想问问能不能帮忙介绍装修队")
    rejected = stack.gridline("case", number, "reject", "--reason", "属于商业服务，不在受理范围")
    assert rejected.returncode == 0, rejected.stderr
    assert "不在受理范围" in stack.wait_sent(phone, 2)[-1]["body"]
    again = stack.gridline("case", number, "merge", "--into", "2601010001")
    assert again.returncode == 1 and "rejected" in again.stderr and "cannot become merged" in again.stderr


def test_worker_bot_commands_and_strangers(stack):
    chat = WORKER.telegram_chat_id
    user_does(stack, WORKER_TOKEN, chat_id=chat, text="/tasks")
    wait_bot(stack, WORKER_TOKEN, chat, "待办")
    user_does(stack, WORKER_TOKEN, chat_id=chat, text="/log 走访发现3号楼外墙瓷砖松动，有坠落风险")
    logged = wait_bot(stack, WORKER_TOKEN, chat, "民情日志已记录")
    data = logged["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    user_does(stack, WORKER_TOKEN, chat_id=chat, callback_data=data, message_id=logged["message_id"])
    made = wait_bot(stack, WORKER_TOKEN, chat, "立案，编号")
    assert CASE_NUMBER.search(made["text"])
    stranger = 990000777
    user_does(stack, WORKER_TOKEN, chat_id=stranger, text="/start")
    assert "仅供" in wait_bot(stack, WORKER_TOKEN, stranger, "")["text"]


@pytest.mark.parametrize("headers, body, status", [
    ({"X-Telegram-Bot-Api-Secret-Token": "forged"}, {"update_id": 1}, 403),
    ({}, {"update_id": 1}, 403),
    ({"X-Telegram-Bot-Api-Secret-Token": "sandbox-webhook-secret"}, "not json", 400),
    ({"X-Telegram-Bot-Api-Secret-Token": "sandbox-webhook-secret"}, {"message": {"text": "hi"}}, 400),
    ({"X-Telegram-Bot-Api-Secret-Token": "sandbox-webhook-secret"}, {"update_id": "x"}, 400),
])
def test_bad_telegram_webhooks_are_refused(stack, headers, body, status):
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    request = urllib.request.Request(f"{stack.url}/webhooks/telegram/resident", data=data, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == status and refused.value.read()


def test_a_replayed_update_acts_once(stack):
    chat = 990000555
    first = user_does(stack, RESIDENT_TOKEN, chat_id=chat, text=f"{PLACE.name}下水道堵了，污水漫到路上")
    ack = wait_bot(stack, RESIDENT_TOKEN, chat, "编号")
    replay = user_does(stack, RESIDENT_TOKEN, **first["update"])
    assert replay["update_id"] == first["update_id"] and replay["webhook_status"] == 200
    user_does(stack, RESIDENT_TOKEN, chat_id=chat, text="帮助")  # a later message: its answer is the marker
    wait_bot(stack, RESIDENT_TOKEN, chat, "网格服务热线")
    acks = [m for m in bot_messages(stack, RESIDENT_TOKEN, chat) if "受理" in m["text"]]
    assert acks == [ack]
    assert re.search(CASE_NUMBER, ack["text"])


def test_a_resident_who_blocked_the_bot_is_marked_not_retried(stack):
    chat = 990000666
    http_json("POST", f"{stack.settings.telegram_base}/_sandbox/blocked", {"chat_id": chat})
    user_does(stack, RESIDENT_TOKEN, chat_id=chat, text="帮助")
    blocked = select(ContactRow.blocked).where(ContactRow.channel == "telegram-resident",
                                               ContactRow.address == str(chat))
    def marked() -> bool | None:  # a connection per look: one read transaction would keep its snapshot
        with db(stack).connect() as connection:
            return connection.execute(blocked).scalar_one_or_none()

    wait_for(marked, 20, 0.2, what="the chat marked blocked")
    with db(stack).connect() as connection:
        row = connection.execute(select(DeliveryRow.state, DeliveryRow.attempts)
                                 .where(DeliveryRow.recipient == str(chat))).one()
    assert (row.state, row.attempts) == ("failed", 1)


def test_the_triage_desk_settles_and_assigns_a_case(stack):
    phone = "+8617199000406"
    number = sms_appeal(stack, phone, "有件事想反映，不知道找谁")
    assert case_of(stack, number)["queue"] == "triage"
    assert stack.gridline("case", number, "reject").returncode == 1  # no reason given
    settled = stack.gridline("case", number, "assign", "--grid", PLACE.grid_code, "--category", "sanitation")
    assert settled.returncode == 0, settled.stderr
    case = wait_state(stack, number, "assigned")
    assert (case["queue"], case["grid"], case["department"], case["assigned_worker"]) == (
        "routed", PLACE.grid_code, "SANITATION", WORKER.id)
    wait_bot(stack, WORKER_TOKEN, WORKER.telegram_chat_id, number)
    assert WORKER.name in stack.wait_sent(phone, 2)[-1]["body"]


def test_a_linked_resident_who_blocked_the_bot_is_reached_by_sms(stack):
    resident = [r for r in CITY.residents.values() if r.telegram_chat_id and r.language == "zh"][1]
    chat = resident.telegram_chat_id
    user_does(stack, RESIDENT_TOKEN, chat_id=chat, contact_phone=resident.phone.lstrip("+"))
    wait_bot(stack, RESIDENT_TOKEN, chat, resident.name)
    http_json("POST", f"{stack.settings.telegram_base}/_sandbox/blocked", {"chat_id": chat})
    user_does(stack, RESIDENT_TOKEN, chat_id=chat, text="帮助")  # the reply cannot go by Telegram
    [by_sms] = stack.wait_sent(resident.phone)
    assert "查询" in by_sms["body"]
    user_does(stack, RESIDENT_TOKEN, chat_id=chat, text="查询")  # now known blocked: straight to SMS
    stack.wait_sent(resident.phone, 2)
    with db(stack).connect() as connection:
        rows = connection.execute(select(DeliveryRow.channel, DeliveryRow.state, DeliveryRow.last_error)
                                  .where(DeliveryRow.recipient.in_((str(chat), resident.phone)))
                                  .order_by(DeliveryRow.id)).all()
    # The reply that met the block went on by SMS (the same row, its Telegram refusal noted); the
    # next one went by SMS from the start.
    (first_channel, first_state, refusal), (second_channel, second_state, _) = rows[-2:]
    assert (first_channel, second_channel) == ("sms", "sms")
    assert first_state != "failed" and second_state != "failed"
    assert refusal.startswith("telegram-resident: blocked")
