"""The Telegram channel in both directions, in the style of nyaruka/courier's handler tests.

In: a table of webhook bodies (decoded JSON) shaped like the Updates Telegram really posts and what
the gateway makes of them: an InboundMessage, None (answered 200 and ignored), or the 400 reason
InboundError gives; then whole calls (header, raw body) through the channel as the gateway's one
webhook handler drives it. Out: an Outgoing goes through `TelegramBot.send` (python-telegram-bot)
to the loopback Bot API fake, whose record of the sent messages is compared field by field.
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass
from typing import Any

import pytest
from multidict import CIMultiDict, MultiDict

from adapters import InboundError, InboundMessage, Outgoing, Request
from adapters.telegram import SANDBOX_TOKENS, TelegramBot, parse_inbound, sender_language, verify
from adapters.telegram.sandbox import fake_telegram_server
from tests.conftest import http_json

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
    ("\udcff\udcfe", SECRET, False),  # bytes that are not UTF-8, as the HTTP server hands them on
    ("\ud800", SECRET, False),  # a lone surrogate no decoder makes
])
def test_verify(header: str | None, secret: str, expected: bool) -> None:
    assert verify(header, secret) is expected


# --- whole calls through the channel -------------------------------------------------------------

BOT = TelegramBot("telegram-resident", SANDBOX_TOKENS[0], webhook_secret=SECRET, region="CN")


def call(body: bytes, secret: str | None = SECRET) -> Request:
    headers = CIMultiDict({"Content-Type": "application/json"})
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    return Request("https://gridline.example.cn/webhooks/telegram/resident", "/webhooks/telegram/resident",
                   headers, MultiDict(), body)


def handle(request: Request) -> tuple[int, object]:
    """The gateway's webhook handler, without the web framework and the store."""
    try:
        BOT.verify(request)
        return 200, BOT.parse_inbound(request)
    except InboundError as refused:
        return refused.status, refused.reason


def contact(phone: str) -> bytes:
    return json.dumps(update(message=message(contact={"phone_number": phone, "first_name": "秀兰",
                                                      "user_id": RESIDENT_ID}))).encode()


def shared(phone: str | None) -> list[InboundMessage]:
    return [InboundMessage(channel="telegram-resident", provider_id="861204117", sender=str(RESIDENT_ID), text="",
                           kind="contact", payload={"language": "zh-hans", "phone": phone, "own": True})]


NO_SECRET = "X-Telegram-Bot-Api-Secret-Token missing or invalid"
CALLS = [
    ("text", call(json.dumps(update(message=message(text=LAMP))).encode()),
     (200, [InboundMessage(channel="telegram-resident", provider_id="861204117", sender=str(RESIDENT_ID),
                           text=LAMP, payload={"language": "zh-hans"})])),
    ("an update we ignore", call(json.dumps(update(edited_message=message(text=LAMP))).encode()), (200, [])),
    ("no secret", call(b"{}", secret=None), (403, NO_SECRET)),
    ("wrong secret", call(b"{}", secret="nope"), (403, NO_SECRET)),
    ("secret with bytes that are not UTF-8", call(b"{}", secret="\udcc3\udc28"), (403, NO_SECRET)),
    ("not JSON", call(b"update_id=1"), (400, "body is not JSON: Expecting value: line 1 column 1 (char 0)")),
    ("not UTF-8", call(b'{"update_id": 1, "message": "\xff"}'),
     (400, "body is not JSON: 'utf-8' codec can't decode byte 0xff in position 29: invalid start byte")),
    ("nested 30,000 deep", call(b"[" * 30_000 + b"]" * 30_000), (400, "body is not JSON: nested too deep")),
    ("a lone surrogate in the text", call(json.dumps(update(message=message(text="路灯\ud800坏了"))).encode()),
     (400, "body holds a lone UTF-16 surrogate, which is not text")),
    ("an emoji escaped as a surrogate pair", call(json.dumps(update(message=message(text="垃圾😡"))).encode()),
     (200, [InboundMessage(channel="telegram-resident", provider_id="861204117", sender=str(RESIDENT_ID),
                           text="垃圾😡", payload={"language": "zh-hans"})])),
    # Shared contacts: international digits without "+", or a local number read in the city's region.
    ("own number, international without +", call(contact("8613800138000")), (200, shared("+8613800138000"))),
    ("a foreign number, international without +", call(contact("79001234567")), (200, shared("+79001234567"))),
    ("a local mobile number", call(contact("13800138000")), (200, shared("+8613800138000"))),
    ("a local number with the trunk 0", call(contact("0788531373")), (200, shared("+86788531373"))),
    ("not a number: linked to nobody, answered", call(contact("abc")), (200, shared(None))),
]


@pytest.mark.parametrize(("request_", "expected"), [c[1:] for c in CALLS], ids=[c[0] for c in CALLS])
def test_a_call_through_the_channel(request_: Request, expected: tuple[int, object]) -> None:
    assert handle(request_) == expected


def test_each_bot_has_its_own_route() -> None:
    worker = TelegramBot("telegram-worker", SANDBOX_TOKENS[1], webhook_secret=SECRET)
    assert [(r.path, r.kind) for r in BOT.routes()] == [("/webhooks/telegram/resident", "inbound")]
    assert [(r.path, r.kind) for r in worker.routes()] == [("/webhooks/telegram/worker", "inbound")]
    assert BOT.answer(BOT.routes()[0]).content_type == "application/json"


# --- outbound: what the Bot API receives ---------------------------------------------------------------

CHAT = 5012345678
BUTTONS = {"inline": [[("接单", "accept:2611220001"), ("已解决", "resolve:2611220001")]]}
KEYBOARD = json.dumps({"inline_keyboard": [[{"callback_data": "accept:2611220001", "text": "接单"},
                                            {"callback_data": "resolve:2611220001", "text": "已解决"}]]})


def send_message(text: str, reply_markup: str | None = None) -> dict[str, Any]:
    """A sendMessage call as python-telegram-bot posts it: a form, reply_markup as JSON."""
    params = {"chat_id": str(CHAT), "text": text}
    if reply_markup is not None:
        params["reply_markup"] = reply_markup
    return {"method": "POST", "api_method": "sendMessage", "content_type": "application/x-www-form-urlencoded",
            "params": params}


OUTGOING = [
    ("text", Outgoing(1, str(CHAT), LAMP), [send_message(LAMP)]),
    ("inline buttons", Outgoing(2, str(CHAT), "新工单", markup=BUTTONS), [send_message("新工单", KEYBOARD)]),
    ("share-my-number button", Outgoing(3, str(CHAT), "请分享手机号", markup={"contact": "分享手机号"}),
     [send_message("请分享手机号", json.dumps({"keyboard": [[{"request_contact": True, "text": "分享手机号"}]],
                                          "one_time_keyboard": True, "resize_keyboard": True}))]),
    ("past 4,096 characters: two messages, buttons on the last",
     Outgoing(4, str(CHAT), "甲" * 4000 + "\n" + "乙" * 200, markup=BUTTONS),
     [send_message("甲" * 4000 + "\n"), send_message("乙" * 200, KEYBOARD)]),
]


@pytest.mark.parametrize(("message_", "sent"), [c[1:] for c in OUTGOING], ids=[c[0] for c in OUTGOING])
def test_send_posts_exactly_this_to_the_bot_api(message_: Outgoing, sent: list[dict[str, Any]]) -> None:
    with fake_telegram_server(*SANDBOX_TOKENS) as fake:
        bot = TelegramBot("telegram-resident", SANDBOX_TOKENS[0], fake.url)

        async def send() -> str:
            try:
                return await bot.send(message_)
            finally:
                await bot.close()

        asyncio.run(send())
        _, recorded = http_json("GET", f"{fake.url}/_sandbox/{SANDBOX_TOKENS[0]}/requests")
    # The token is the credential, in the path: the fake answers 401 to any other.
    assert recorded["requests"] == sent
