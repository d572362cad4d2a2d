"""The Telegram adapter against Update objects shaped like the ones Telegram really posts.

A table in the style of nyaruka/courier's handler tests: each case is a webhook body (decoded JSON)
and what the gateway makes of it: an InboundMessage, None (answered 200 and ignored), or the 400
reason InboundError gives.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest

from adapters import InboundError, InboundMessage
from adapters.telegram import parse_inbound, sender_language, verify

SECRET = "gl-resident-7Qm2x9Kp_4vT"
RESIDENT_ID = 5012345678
WORKER_ID = 6123456789
DATE = 1767241800  # 2026-01-01 12:30 Asia/Shanghai
GROUP_ID = -1001876543210
RESIDENT = {"id": RESIDENT_ID, "is_bot": False, "first_name": "秀兰", "last_name": "王",
            "username": "wang_xiulan", "language_code": "zh-hans"}
WORKER = {"id": WORKER_ID, "is_bot": False, "first_name": "Wei", "last_name": "Zhang", "language_code": "en"}
WORKER_BOT = {"id": 7712345678, "is_bot": True, "first_name": "Gridline 网格员", "username": "GridlineWorkerBot"}
PRIVATE = {"id": RESIDENT_ID, "first_name": "秀兰", "last_name": "王", "username": "wang_xiulan", "type": "private"}
WORKER_CHAT = {"id": WORKER_ID, "first_name": "Wei", "last_name": "Zhang", "type": "private"}
GROUP = {"id": GROUP_ID, "title": "幸福里网格员群", "type": "supergroup"}
LAMP = "3号楼楼道灯坏了一个星期，晚上老人上下楼很危险"
TASK_ALERT = {
    "message_id": 12, "from": WORKER_BOT, "chat": WORKER_CHAT, "date": DATE - 60,
    "text": "新工单 GL-2611220001：3号楼楼道灯不亮",
    "reply_markup": {"inline_keyboard": [
        [{"text": "接单", "callback_data": "accept:2611220001"},
         {"text": "已解决", "callback_data": "resolve:2611220001"}],
        [{"text": "上报", "callback_data": "escalate:2611220001"},
         {"text": "需补充信息", "callback_data": "info:2611220001"}],
    ]},
}
PHOTO_SIZES = [
    {"file_id": "AgACAgUAAxkBAAIBZ2a-small", "file_unique_id": "AQADsmall", "file_size": 1523, "width": 90,
     "height": 67},
    {"file_id": "AgACAgUAAxkBAAIBZ2a-large", "file_unique_id": "AQADlarge", "file_size": 182011, "width": 1280,
     "height": 960},
    {"file_id": "AgACAgUAAxkBAAIBZ2a-medium", "file_unique_id": "AQADmedium", "file_size": 40375,
     "width": 800, "height": 600},
]


def update(update_id: int = 861204117, **fields: Any) -> dict[str, Any]:
    return {"update_id": update_id, **fields}


def message(sender: dict[str, Any] | None = RESIDENT, chat: dict[str, Any] | None = PRIVATE,
            **content: Any) -> dict[str, Any]:
    """A Message as Telegram sends it; None leaves out `from` (channel posts) or `chat`."""
    fields = {"message_id": 311, "from": sender, "chat": chat, "date": DATE, **content}
    return {name: value for name, value in fields.items() if value is not None}


def command_text(text: str, length: int) -> dict[str, Any]:
    return {"text": text, "entities": [{"offset": 0, "length": length, "type": "bot_command"}]}


def press(data: str | None = "accept:2611220001", alert: dict[str, Any] | None = TASK_ALERT) -> dict[str, Any]:
    query = {"id": "2631946752314588611", "from": WORKER, "message": alert, "chat_instance": "-5532147702136419",
             "data": data}
    return {name: value for name, value in query.items() if value is not None}


def resident(text: str = "", kind: str = "text", **payload: Any) -> InboundMessage:
    return InboundMessage(channel="telegram", provider_id="861204117", sender=str(RESIDENT_ID), text=text,
                          kind=kind, payload={"language": "zh-hans", **payload})


def worker(text: str = "", kind: str = "text", sender: int = WORKER_ID, **payload: Any) -> InboundMessage:
    return InboundMessage(channel="telegram", provider_id="861204117", sender=str(sender), text=text,
                          kind=kind, payload={"language": "en", **payload})


@dataclass(frozen=True)
class Case:
    label: str
    body: object  # the decoded JSON body
    expected: InboundMessage | None | int  # the message, None when ignored, 400 when refused
    reason: str = ""  # InboundError's reason when expected is 400


CASES = [
    # --- messages ---------------------------------------------------------------------------
    Case("private text with language_code", update(message=message(text=LAMP)), resident(LAMP)),
    Case("text without from (anonymous group admin)",
         update(message=message(sender=None, chat=GROUP, text=LAMP,
                                sender_chat={"id": GROUP_ID, "title": "幸福里网格员群", "type": "supergroup"})),
         InboundMessage(channel="telegram", provider_id="861204117", sender=str(GROUP_ID), text=LAMP)),
    Case("/start", update(message=message(**command_text("/start", 6))),
         resident("/start", "command", command="start", args="")),
    Case("/start with a deep link payload",
         update(message=message(**command_text("/start grid-310105-002", 6))),
         resident("/start grid-310105-002", "command", command="start", args="grid-310105-002")),
    Case("/log with multi-line text",
         update(message=message(sender=WORKER, chat=WORKER_CHAT, **command_text("/log 已到现场\n更换灯泡两只", 4))),
         worker("/log 已到现场\n更换灯泡两只", "command", command="log", args="已到现场\n更换灯泡两只")),
    Case("/tasks@bot in a group",
         update(message=message(sender=WORKER, chat=GROUP, **command_text("/tasks@GridlineWorkerBot", 24))),
         worker("/tasks@GridlineWorkerBot", "command", sender=GROUP_ID, command="tasks", args="",
                bot="GridlineWorkerBot")),
    Case("a slash that is no command", update(message=message(text="/ 3号楼")), resident("/ 3号楼")),
    Case("own contact shared with the request_contact button",
         update(message=message(contact={"phone_number": "8613800138000", "first_name": "秀兰",
                                          "last_name": "王", "user_id": RESIDENT_ID})),
         resident(kind="contact", phone="+8613800138000", own=True)),
    Case("someone else's contact card",
         update(message=message(contact={"phone_number": "+86 139-0013-9000", "first_name": "李师傅"})),
         resident(kind="contact", phone="+8613900139000", own=False)),
    Case("location", update(message=message(location={"latitude": 31.230416, "longitude": 121.473701})),
         resident(kind="location", latitude=31.230416, longitude=121.473701)),
    Case("venue (carries a location)",
         update(message=message(location={"latitude": 31.2, "longitude": 121},
                                venue={"location": {"latitude": 31.2, "longitude": 121}, "title": "幸福里小区",
                                       "address": "幸福路88号"})),
         resident(kind="location", latitude=31.2, longitude=121.0)),
    Case("photo in several sizes with a caption",
         update(message=message(photo=PHOTO_SIZES, caption="楼道里堆满杂物")),
         resident("楼道里堆满杂物", "photo", photo="AgACAgUAAxkBAAIBZ2a-large")),
    Case("photo without caption", update(message=message(photo=PHOTO_SIZES[:1])),
         resident(kind="photo", photo="AgACAgUAAxkBAAIBZ2a-small")),
    Case("voice note",
         update(message=message(voice={"file_id": "AwACAgUAAxkBAAIB", "file_unique_id": "AgADvoice",
                                       "duration": 7, "mime_type": "audio/ogg"})),
         resident(kind="unsupported", type="voice")),
    Case("sticker", update(message=message(sticker={"file_id": "CAACAgIAAxkBAAIB", "width": 512})),
         resident(kind="unsupported", type="sticker")),
    Case("service message: new member", update(message=message(chat=GROUP, new_chat_members=[RESIDENT])), None),
    # --- button presses ---------------------------------------------------------------------
    Case("callback_query", update(callback_query=press()),
         worker("accept:2611220001", "callback", data="accept:2611220001",
                callback_query_id="2631946752314588611", message_id=12)),
    Case("callback_query on a message older than 48 h (InaccessibleMessage)",
         update(callback_query=press(alert={"chat": WORKER_CHAT, "message_id": 12, "date": 0})),
         worker("accept:2611220001", "callback", data="accept:2611220001",
                callback_query_id="2631946752314588611", message_id=12)),
    Case("callback_query from an inline-mode message: no message, chat is the user",
         update(callback_query={**press(alert=None), "inline_message_id": "AAAAAFJtAQB"}),
         worker("accept:2611220001", "callback", data="accept:2611220001",
                callback_query_id="2631946752314588611")),
    Case("callback_query of a game button", update(callback_query={**press(data=None), "game_short_name": "g"}),
         None),
    # --- updates we ignore ------------------------------------------------------------------
    Case("edited_message", update(edited_message={**message(text=LAMP), "edit_date": DATE + 30}), None),
    Case("channel_post", update(channel_post=message(sender=None, chat={"id": -1001, "type": "channel"},
                                                      text="停水通知")), None),
    Case("my_chat_member (bot blocked)",
         update(my_chat_member={"chat": PRIVATE, "from": RESIDENT, "date": DATE,
                                "old_chat_member": {"status": "member", "user": WORKER_BOT},
                                "new_chat_member": {"status": "kicked", "user": WORKER_BOT,
                                                    "until_date": 0}}), None),
    Case("only an update_id", update(), None),
    # --- refused ----------------------------------------------------------------------------
    Case("missing update_id", {"message": message(text=LAMP)}, 400, "missing or non-integer update_id"),
    Case("update_id as a string", update("861204117", message=message(text=LAMP)), 400,
         "missing or non-integer update_id"),
    Case("update_id true", update(True, message=message(text=LAMP)), 400, "missing or non-integer update_id"),
    Case("update_id a float", update(861204117.0, message=message(text=LAMP)), 400,
         "missing or non-integer update_id"),
    Case("a JSON array", [update(message=message(text=LAMP))], 400, "update must be a JSON object"),
    Case("a JSON string", "hello", 400, "update must be a JSON object"),
    Case("JSON null", None, 400, "update must be a JSON object"),
    Case("message without chat", update(message=message(chat=None, text=LAMP)), 400,
         "message without an integer chat.id"),
    Case("chat id as a string", update(message=message(chat={**PRIVATE, "id": str(RESIDENT_ID)}, text=LAMP)),
         400, "message without an integer chat.id"),
    Case("message not an object", update(message="hi"), 400, "update.message must be an object"),
    Case("text not a string", update(message=message(text=["hi"])), 400, "message.text must be a string"),
    Case("contact without phone_number", update(message=message(contact={"first_name": "秀兰"})), 400,
         "message.contact without a phone_number"),
    Case("location with a string latitude",
         update(message=message(location={"latitude": "31.2", "longitude": 121.4})), 400,
         "message.location.latitude must be a number"),
    Case("photo without sizes", update(message=message(photo=[])), 400,
         "message.photo must be a list of PhotoSize objects (file_id, width, height)"),
    Case("callback_query without id", update(callback_query={**press(), "id": ""}), 400,
         "callback_query without an id"),
    Case("callback_query without message or from",
         update(callback_query={"id": "1", "chat_instance": "1", "data": "accept:1"}), 400,
         "callback_query without message.chat.id or from.id"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.label)
def test_parse_inbound(case: Case) -> None:
    body = copy.deepcopy(case.body)
    if case.expected == 400:
        with pytest.raises(InboundError) as refused:
            parse_inbound(body)
        assert (refused.value.status, refused.value.reason) == (400, case.reason)
    else:
        assert parse_inbound(body) == case.expected
    assert body == case.body  # parsing leaves the update as it was


def test_retries_of_one_update_are_the_same_message() -> None:
    """Telegram resends an update until we answer 2xx; the update_id makes the retry a duplicate."""
    first, retry = (parse_inbound(update(message=message(text=LAMP))) for _ in range(2))
    assert first == retry
    assert first is not None and first.provider_id == "861204117"
    assert hash(first) == hash(retry)  # payload is left out of the hash: messages can go in sets


@pytest.mark.parametrize(("body", "language"), [
    (update(message=message(text=LAMP)), "zh-hans"),
    (update(callback_query=press()), "en"),
    (update(message=message(sender={**RESIDENT, "language_code": ""}, text=LAMP)), None),
    (update(message=message(sender={k: v for k, v in RESIDENT.items() if k != "language_code"}, text=LAMP)), None),
    (update(message=message(sender=None, chat=GROUP, text=LAMP)), None),
    (update(edited_message=message(text=LAMP)), None),
])
def test_sender_language(body: dict[str, Any], language: str | None) -> None:
    assert sender_language(body) == language
    parsed = parse_inbound(body)
    assert parsed is None or parsed.payload.get("language") == language


@pytest.mark.parametrize(("header", "secret", "expected"), [
    (SECRET, SECRET, True),
    (SECRET[:-1] + "U", SECRET, False),  # one character off
    (SECRET + "x", SECRET, False),
    (SECRET.lower(), SECRET, False),  # case matters
    (None, SECRET, False),  # header missing
    ("", SECRET, False),
    ("", "", False),  # no secret configured: nothing verifies
    (SECRET, "", False),
    ("网格", "网格", True),  # non-ASCII compares without error (Telegram only allows A-Z a-z 0-9 _ -)
])
def test_verify(header: str | None, secret: str, expected: bool) -> None:
    assert verify(header, secret) is expected
