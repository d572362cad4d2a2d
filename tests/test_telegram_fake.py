"""The real python-telegram-bot client and our adapter against the fake Bot API on a loopback port.

Proves both sides at once: TelegramClient's calls and error mapping, and that the fake speaks the wire
format PTB expects (URL layout, form-encoded parameters, envelopes, Message and Update objects),
delivers injected updates to a webhook with the secret header, and long-polls getUpdates.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from aiohttp import web

from adapters import InboundError, InboundMessage, SendError
from adapters.telegram import TelegramClient, parse_inbound, verify
from adapters.telegram.sandbox import fake_telegram_server
from adapters.twilio_sms.sandbox import LoopbackServer
from tests.conftest import free_port, sandbox_process

RESIDENT_TOKEN = "7701234567:AAHfRm3Lq0x-resident-bot-token"
WORKER_TOKEN = "7712345678:AAGy8Vd2Kc1-worker-bot-token"
SECRET = "gl-worker-Xk29_pQ7"
WORKER = 6123456789
OTHER_WORKER = 6123456790
RESIDENT = 5012345678
ALERT = "新工单 GL-2611220001：3号楼楼道灯不亮，请尽快处理"
BUTTONS = [[("接单", "accept:2611220001"), ("已解决", "resolve:2611220001")],
           [("上报", "escalate:2611220001"), ("需补充信息", "info:2611220001")]]
KEYBOARD = {"inline_keyboard": [[{"text": label, "callback_data": data} for label, data in row] for row in BUTTONS]}


@pytest.fixture(scope="module")
def fake() -> Iterator[LoopbackServer]:
    with fake_telegram_server(RESIDENT_TOKEN, WORKER_TOKEN) as server:
        yield server


@pytest.fixture(autouse=True)
def clean_fake(fake: LoopbackServer) -> None:
    requests.post(f"{fake.url}/_sandbox/reset", timeout=5).raise_for_status()


@pytest.fixture(scope="module")
def workers(fake: LoopbackServer) -> Iterator[TelegramClient]:
    with TelegramClient(WORKER_TOKEN, fake.url) as client:
        yield client


@pytest.fixture(scope="module")
def residents(fake: LoopbackServer) -> Iterator[TelegramClient]:
    with TelegramClient(RESIDENT_TOKEN, fake.url) as client:
        yield client


def control(fake: LoopbackServer, path: str, spec: dict[str, Any]) -> dict[str, Any]:
    answer = requests.post(f"{fake.url}/_sandbox/{path}", json=spec, timeout=10)
    answer.raise_for_status()
    return answer.json()


def sent(fake: LoopbackServer, token: str, chat_id: int | None = None) -> list[dict[str, Any]]:
    params = {} if chat_id is None else {"chat_id": chat_id}
    return requests.get(f"{fake.url}/_sandbox/{token}/messages", params=params, timeout=5).json()["messages"]


def failure(call: Any, *args: Any) -> SendError:
    with pytest.raises(SendError) as failed:
        call(*args)
    return failed.value


class WebhookReceiver:
    """Our webhook route in miniature: secret header first (403), then parse_inbound (400), else 200."""

    def __init__(self) -> None:
        self.url = ""
        self.received: queue.Queue[InboundMessage | None] = queue.Queue()

    async def receive(self, request: web.Request) -> web.Response:
        if not verify(request.headers.get("X-Telegram-Bot-Api-Secret-Token"), SECRET):
            return web.Response(status=403)
        try:
            self.received.put(parse_inbound(await request.json()))
        except InboundError as error:
            return web.Response(status=error.status, text=error.reason)
        return web.Response()

    def take(self) -> InboundMessage | None:
        return self.received.get(timeout=5)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    webhook = WebhookReceiver()
    app = web.Application()
    app.router.add_post("/webhooks/telegram/worker", webhook.receive)
    with LoopbackServer(app) as server:
        webhook.url = f"{server.url}/webhooks/telegram/worker"
        yield webhook


# --- sending ---------------------------------------------------------------------------------


def test_send_with_buttons_is_recorded_as_a_telegram_message(fake: LoopbackServer,
                                                              workers: TelegramClient) -> None:
    first = int(workers.send(WORKER, ALERT, BUTTONS))
    assert int(workers.send(WORKER, "今日待办：2 件")) == first + 1  # message ids count up per chat
    other = workers.send(OTHER_WORKER, ALERT)
    alert, plain = sent(fake, WORKER_TOKEN, WORKER)
    assert set(alert) == {"message_id", "from", "chat", "date", "text", "reply_markup"}
    assert (alert["message_id"], alert["text"], alert["reply_markup"]) == (first, ALERT, KEYBOARD)
    assert [m["message_id"] for m in sent(fake, WORKER_TOKEN, OTHER_WORKER)] == [int(other)]
    assert alert["chat"] == {"id": WORKER, "first_name": f"User {WORKER}", "type": "private"}
    assert alert["from"]["id"] == 7712345678 and alert["from"]["is_bot"]  # the token's numeric prefix
    assert abs(alert["date"] - time.time()) < 5
    assert "reply_markup" not in plain
    assert sent(fake, RESIDENT_TOKEN) == []  # each bot keeps its own messages


def test_edit_buttons_replaces_then_removes_the_keyboard(fake: LoopbackServer, workers: TelegramClient) -> None:
    message_id = int(workers.send(WORKER, ALERT, BUTTONS))
    workers.edit_buttons(WORKER, message_id, [[("已接单 ✓", "noop:2611220001")]])
    [edited] = sent(fake, WORKER_TOKEN, WORKER)
    assert edited["reply_markup"] == {"inline_keyboard": [[{"text": "已接单 ✓", "callback_data": "noop:2611220001"}]]}
    assert "edit_date" in edited
    workers.edit_buttons(WORKER, message_id, None)
    workers.edit_buttons(WORKER, message_id, None)  # a retried job: "message is not modified" is fine
    [edited] = sent(fake, WORKER_TOKEN, WORKER)
    assert "reply_markup" not in edited and edited["text"] == ALERT
    missing = failure(workers.edit_buttons, WORKER, message_id + 1, None)
    assert (missing.retryable, missing.code) == (False, "bad_request")
    assert "Message to edit not found" in str(missing)  # PTB drops "Bad Request: " and capitalises


def test_button_press_answered_through_polling(fake: LoopbackServer, workers: TelegramClient) -> None:
    message_id = int(workers.send(WORKER, ALERT, BUTTONS))
    injected = control(fake, f"{WORKER_TOKEN}/updates", {"chat_id": WORKER, "callback_data": "escalate:2611220001",
                                                          "language_code": "en"})
    assert injected["queued"] is True
    [update] = workers.get_updates(None, 0)
    assert update["update_id"] == injected["update_id"]
    assert update["callback_query"]["message"]["reply_markup"] == KEYBOARD
    press = parse_inbound(update)
    query_id = injected["update"]["callback_query"]["id"]
    assert press == InboundMessage(
        channel="telegram", provider_id=str(injected["update_id"]), sender=str(WORKER), text="escalate:2611220001",
        kind="callback", payload={"language": "en", "data": "escalate:2611220001", "callback_query_id": query_id,
                                  "message_id": message_id})
    workers.answer_callback(query_id, "已上报街道")
    callbacks = requests.get(f"{fake.url}/_sandbox/{WORKER_TOKEN}/callbacks", timeout=5).json()["callbacks"]
    assert callbacks == [{"id": query_id, "chat_id": WORKER, "message_id": message_id, "data": "escalate:2611220001",
                          "answer": {"text": "已上报街道", "show_alert": False}}]
    again = failure(workers.answer_callback, query_id)
    assert (again.retryable, again.code) == (False, "bad_request")
    assert "Query is too old" in str(again)


def test_only_real_buttons_can_be_pressed(fake: LoopbackServer, workers: TelegramClient) -> None:
    workers.send(WORKER, ALERT, BUTTONS)
    for spec in ({"chat_id": WORKER, "callback_data": "delete:everything"},
                 {"chat_id": OTHER_WORKER, "callback_data": "accept:2611220001"}):
        refused = requests.post(f"{fake.url}/_sandbox/{WORKER_TOKEN}/updates", json=spec, timeout=5)
        assert refused.status_code == 400, spec


# --- the wire format ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["json", "form", "multipart", "query"])
def test_every_request_encoding_gets_telegrams_envelope(fake: LoopbackServer, encoding: str) -> None:
    url = f"{fake.url}/bot{RESIDENT_TOKEN}/sendMessage"
    params = {"chat_id": RESIDENT, "text": "您的报修已受理", "reply_markup": {"inline_keyboard": [[
        {"text": "查看进度", "callback_data": "status:1042"}]]}}
    as_strings = {**params, "reply_markup": json.dumps(params["reply_markup"])}
    answer = {
        "json": lambda: requests.post(url, json=params, timeout=5),
        "form": lambda: requests.post(url, data=as_strings, timeout=5),
        "multipart": lambda: requests.post(url, files={name: (None, str(value)) for name, value in as_strings.items()},
                                           timeout=5),
        "query": lambda: requests.get(url, params=as_strings, timeout=5),
    }[encoding]()
    assert answer.status_code == 200
    body = answer.json()
    assert body["ok"] is True and set(body) == {"ok", "result"}
    assert (body["result"]["chat"]["id"], body["result"]["text"]) == (RESIDENT, "您的报修已受理")
    assert body["result"]["reply_markup"] == params["reply_markup"]


def test_errors_use_telegrams_envelope(fake: LoopbackServer) -> None:
    answer = requests.post(f"{fake.url}/bot{RESIDENT_TOKEN}/sendMessage", json={"chat_id": RESIDENT}, timeout=5)
    assert (answer.status_code, answer.json()) == (400, {"ok": False, "error_code": 400,
                                                          "description": "Bad Request: message text is empty"})
    answer = requests.post(f"{fake.url}/bot{RESIDENT_TOKEN}/sendSticker", json={"chat_id": RESIDENT}, timeout=5)
    assert (answer.status_code, answer.json()) == (404, {"ok": False, "error_code": 404, "description": "Not Found"})
    me = requests.get(f"{fake.url}/bot{WORKER_TOKEN}/getMe", timeout=5).json()["result"]
    assert (me["id"], me["is_bot"]) == (7712345678, True)


def test_unknown_token_is_unauthorized(fake: LoopbackServer) -> None:
    answer = requests.post(f"{fake.url}/bot123:forged/getMe", timeout=5)
    assert (answer.status_code, answer.json()) == (401, {"ok": False, "error_code": 401,
                                                          "description": "Unauthorized"})
    with TelegramClient("123:forged", fake.url) as forged:
        refused = failure(forged.send, WORKER, ALERT)
    assert (refused.retryable, refused.code) == (False, "unauthorized")
    assert "forged" not in str(refused)  # the token stays out of logs


# --- errors ------------------------------------------------------------------------------------


def test_flood_control_is_retryable_after_retry_after(fake: LoopbackServer, workers: TelegramClient) -> None:
    control(fake, "faults", {"status": 429, "retry_after": 7, "count": 2})
    for _ in range(2):
        flood = failure(workers.send, WORKER, ALERT)
        assert (flood.retryable, flood.code, flood.retry_after) == (True, "rate_limited", 7.0)
    assert workers.send(WORKER, ALERT).isdigit()
    assert len(sent(fake, WORKER_TOKEN, WORKER)) == 1


@pytest.mark.parametrize("status", [500, 502])
def test_server_errors_are_retryable(fake: LoopbackServer, workers: TelegramClient, status: int) -> None:
    control(fake, "faults", {"status": status})
    broken = failure(workers.send, WORKER, ALERT)
    assert (broken.retryable, broken.code, broken.retry_after) == (True, "network", None)
    assert workers.send(WORKER, ALERT).isdigit()
    assert len(sent(fake, WORKER_TOKEN, WORKER)) == 1


def test_blocked_chat_is_final(fake: LoopbackServer, residents: TelegramClient) -> None:
    control(fake, "blocked", {"chat_id": RESIDENT})
    blocked = failure(residents.send, RESIDENT, "您的报修已处理完毕")
    assert (blocked.retryable, blocked.code) == (False, "blocked")
    assert "bot was blocked by the user" in str(blocked)
    assert residents.send(RESIDENT + 1, "您的报修已处理完毕").isdigit()
    assert sent(fake, RESIDENT_TOKEN, RESIDENT) == []


@pytest.mark.parametrize(("text", "buttons", "description"), [
    (" ", None, "message text is empty"),
    ("长" * 4097, None, "message is too long"),
    (ALERT, [[("接单", "accept:" + "9" * 60)]], "BUTTON_DATA_INVALID"),  # callback_data is at most 64 bytes
])
def test_bad_requests_are_final(workers: TelegramClient, text: str, buttons: Any, description: str) -> None:
    refused = failure(workers.send, WORKER, text, buttons)
    assert (refused.retryable, refused.code) == (False, "bad_request")
    assert description.lower() in str(refused).lower()


def test_unreachable_api_is_retryable() -> None:
    with TelegramClient(WORKER_TOKEN, f"http://127.0.0.1:{free_port()}") as nowhere:
        down = failure(nowhere.send, WORKER, ALERT)
    assert (down.retryable, down.code) == (True, "network")


def test_limits_answer_429_until_the_second_is_over(fake: LoopbackServer, residents: TelegramClient,
                                                     workers: TelegramClient) -> None:
    control(fake, "limits", {"per_chat_per_second": 1, "global_per_second": 3})
    residents.send(RESIDENT, "第一条")
    flood = failure(residents.send, RESIDENT, "第二条")
    assert (flood.retryable, flood.code, flood.retry_after) == (True, "rate_limited", 1.0)
    residents.send(RESIDENT + 1, "别的居民")
    residents.send(RESIDENT + 2, "又一位居民")
    overall = failure(residents.send, RESIDENT + 3, "第四位")  # 3 sent this second by this bot
    assert overall.retry_after == 1.0
    workers.send(WORKER, ALERT)  # limits count per bot
    time.sleep(flood.retry_after)  # what a sender honouring retry_after does
    residents.send(RESIDENT, "第二条")
    assert [m["text"] for m in sent(fake, RESIDENT_TOKEN, RESIDENT)] == ["第一条", "第二条"]


# --- webhooks ----------------------------------------------------------------------------------


def test_injected_updates_reach_the_webhook_with_the_secret(fake: LoopbackServer, workers: TelegramClient,
                                                             receiver: WebhookReceiver) -> None:
    workers.set_webhook(receiver.url, SECRET)
    info = requests.get(f"{fake.url}/bot{WORKER_TOKEN}/getWebhookInfo", timeout=5).json()["result"]
    assert (info["url"], info["pending_update_count"], info["allowed_updates"]) == (
        receiver.url, 0, ["message", "callback_query"])
    answer = control(fake, f"{WORKER_TOKEN}/updates", {"chat_id": WORKER, "text": "/log 已到现场，更换灯泡"})
    assert answer["webhook_status"] == 200
    command = receiver.take()
    assert command is not None and (command.kind, command.sender) == ("command", str(WORKER))
    assert command.payload == {"language": "zh-hans", "command": "log", "args": "已到现场，更换灯泡"}
    assert command.provider_id == str(answer["update_id"])
    entities = answer["update"]["message"]["entities"]
    assert entities == [{"offset": 0, "length": 4, "type": "bot_command"}]

    replay = control(fake, f"{WORKER_TOKEN}/updates", answer["update"])  # Telegram retrying the same update
    assert (replay["update_id"], replay["webhook_status"]) == (answer["update_id"], 200)
    assert receiver.take() == command

    edited = {"edited_message": {**answer["update"]["message"], "edit_date": int(time.time())}}
    dropped = control(fake, f"{WORKER_TOKEN}/updates", edited)
    assert dropped["dropped"] == "edited_message is not in allowed_updates"


def test_webhook_refusing_the_secret_shows_in_webhook_info(fake: LoopbackServer, workers: TelegramClient,
                                                            receiver: WebhookReceiver) -> None:
    workers.set_webhook(receiver.url, "someone-elses-secret")
    answer = control(fake, f"{WORKER_TOKEN}/updates", {"chat_id": WORKER, "text": "hi"})
    assert answer["webhook_status"] == 403
    assert receiver.received.empty()
    info = requests.get(f"{fake.url}/bot{WORKER_TOKEN}/getWebhookInfo", timeout=5).json()["result"]
    assert info["last_error_message"] == "Wrong response from the webhook: 403"


def test_unreachable_webhook_is_reported(fake: LoopbackServer, workers: TelegramClient) -> None:
    workers.set_webhook(f"http://127.0.0.1:{free_port()}/webhooks/telegram/worker", SECRET)
    answer = control(fake, f"{WORKER_TOKEN}/updates", {"chat_id": WORKER, "text": "hi"})
    assert answer["webhook_status"] is None and "Connect" in answer["webhook_error"]


def test_polling_conflicts_with_a_webhook(workers: TelegramClient, receiver: WebhookReceiver) -> None:
    workers.set_webhook(receiver.url, SECRET)
    conflict = failure(workers.get_updates, None, 0)
    assert (conflict.retryable, conflict.code) == (False, "conflict")
    workers.delete_webhook()
    assert workers.get_updates(None, 0) == []


# --- polling -----------------------------------------------------------------------------------


def test_polling_with_offsets(fake: LoopbackServer, residents: TelegramClient) -> None:
    specs = [{"chat_id": RESIDENT, "text": "/start grid-310105-002"},
             {"chat_id": RESIDENT, "contact_phone": "8613800138000"},
             {"chat_id": RESIDENT, "latitude": 31.230416, "longitude": 121.473701},
             {"chat_id": RESIDENT, "photo": True, "caption": "楼道里堆满杂物"}]
    injected = [control(fake, f"{RESIDENT_TOKEN}/updates", spec) for spec in specs]
    ids = [answer["update_id"] for answer in injected]
    assert ids == list(range(ids[0], ids[0] + 4))

    updates = residents.get_updates(None, 0)
    assert [u["update_id"] for u in updates] == ids
    for got, answer in zip(updates, injected, strict=True):  # PTB's round trip only adds false flags
        assert {k: v for k, v in got["message"].items() if v is not False} == answer["update"]["message"]
    parsed = [parse_inbound(u) for u in updates]
    assert [m.kind for m in parsed if m] == ["command", "contact", "location", "photo"]
    assert parsed[1] is not None and parsed[1].payload["phone"] == "+8613800138000"
    assert parsed[1].payload["own"] is True
    largest = injected[3]["update"]["message"]["photo"][-1]["file_id"]
    assert parsed[3] is not None and (parsed[3].text, parsed[3].payload["photo"]) == ("楼道里堆满杂物", largest)

    assert [u["update_id"] for u in residents.get_updates(ids[1] + 1, 0)] == ids[2:]  # confirms the first two
    assert residents.get_updates(None, 0)[0]["update_id"] == ids[2]
    assert residents.get_updates(ids[-1] + 1, 0) == []
    later = control(fake, f"{RESIDENT_TOKEN}/updates", {"chat_id": RESIDENT, "text": "谢谢"})
    assert [u["update_id"] for u in residents.get_updates(ids[-1] + 1, 0)] == [later["update_id"]]


def test_long_poll_returns_when_an_update_arrives(fake: LoopbackServer, residents: TelegramClient) -> None:
    result: list[list[dict[str, Any]]] = []
    poller = threading.Thread(target=lambda: result.append(residents.get_updates(None, 30)))
    poller.start()
    time.sleep(0.2)
    injected = control(fake, f"{RESIDENT_TOKEN}/updates", {"chat_id": RESIDENT, "text": "路灯不亮"})
    poller.join(timeout=20)
    assert not poller.is_alive(), "the long poll waited out its 30 s instead of returning with the update"
    assert [u["update_id"] for u in result[0]] == [injected["update_id"]]


# --- as a process ------------------------------------------------------------------------------


def test_runs_as_a_module_on_a_free_port() -> None:
    with sandbox_process("adapters.telegram.sandbox", "--token", RESIDENT_TOKEN, "--token", WORKER_TOKEN) as url:
        with TelegramClient(WORKER_TOKEN, url) as client:
            assert client.send(WORKER, ALERT, BUTTONS) == "1"  # a fresh fake
        assert requests.get(f"{url}/bot{RESIDENT_TOKEN}/getMe", timeout=5).json()["ok"] is True
