"""A fake Telegram Bot API on loopback, for tests, the local demo and benchmarks.

Serves several bots at once at `/bot{token}/{method}`, the layout python-telegram-bot calls with
`base_url=f"{url}/bot"`, reading parameters from the query string and from JSON, form-encoded or
multipart bodies, and answering in Telegram's envelope: `{"ok": true, "result": ...}` or
`{"ok": false, "error_code": 429, "description": "...", "parameters": {"retry_after": 1}}`.
Methods: getMe, sendMessage, answerCallbackQuery, editMessageText, editMessageReplyMarkup, setWebhook,
deleteWebhook, getWebhookInfo, getUpdates (long polling). Others answer 404, unknown tokens 401.
State lives in memory; nothing sleeps except a getUpdates long poll waiting for an update.

Control API (JSON, no auth, loopback only). `{bot}` is the bot's token:

    GET  /_sandbox/{bot}/messages?chat_id=42   messages the bot sent (as since edited), oldest first
    GET  /_sandbox/{bot}/callbacks?chat_id=42  injected button presses and the bot's answers to them
    GET  /_sandbox/{bot}/requests              the last 1,000 sending calls as they came (method, params)
    POST /_sandbox/{bot}/updates  {...}        a user writes or presses a button: see below
    POST /_sandbox/faults   {"status": 429, "retry_after": 1, "count": 2}   the next 2 sending calls fail
                            {"status": 500, "count": 1}
    DELETE /_sandbox/faults                    forget the faults not yet used
    POST /_sandbox/blocked  {"chat_id": 42}    that user blocked the bots: sending there answers 403
    POST /_sandbox/limits   {"per_chat_per_second": 1, "global_per_second": 30}   flood control: 429s
    POST /_sandbox/reset                       forget messages, updates, webhooks, faults, blocks, limits

"Sending calls" (the ones faults and limits apply to) are sendMessage, editMessageText,
editMessageReplyMarkup and answerCallbackQuery. Limits count per bot, like Telegram's.

Injected updates: POST a full Update (replayed as is when it has an update_id, else given the next
one) or one of these, to which the fake adds the user, chat, date and ids a real update has:

    {"chat_id": 42, "text": "/start"}                  also "first_name", "language_code", "user_id"
    {"chat_id": 42, "contact_phone": "8613800138000"}  "contact_user_id" to share someone else's card
    {"chat_id": 42, "latitude": 39.91, "longitude": 116.39}
    {"chat_id": 42, "photo": true, "caption": "..."}
    {"chat_id": 42, "callback_data": "accept:1", "message_id": 7}   message_id defaults to the bot's
                                                                     latest message with buttons
With a webhook set, the fake POSTs the update there (with X-Telegram-Bot-Api-Secret-Token) and
answers `{"update_id", "update", "webhook_status"}` (status null and "webhook_error" if unreachable);
otherwise it queues the update for getUpdates and answers `{"update_id", "update", "queued": true}`.

Unlike Telegram: every chat id exists (positive ids are private chats with that user); webhooks may
be plain http on any port; a failed webhook post is not retried (re-post the update to replay it);
updates queued before setWebhook stay queued for getUpdates.

Start it with `python -m adapters.telegram.sandbox --port 8090 --token T1 --token T2`
(`--port 0`: a free port; the first line printed names the URL), or inside a test:

    with fake_telegram_server("123:RESIDENT", "456:WORKER") as fake:
        client = TelegramClient("123:RESIDENT", fake.url)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import logging
import math
import re
import secrets
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import aiohttp
from aiohttp import web

from adapters.twilio_sms.sandbox import LoopbackServer, setup_logging, start_site

log = logging.getLogger(__name__)

MAX_TEXT = 4096  # UTF-16 code units in one message
MAX_CALLBACK_DATA = 64  # bytes
MAX_CALLBACK_ANSWER = 200  # characters
MAX_UPDATES = 100  # per getUpdates call
RECORDED_REQUESTS = 1000  # sending calls kept per bot for /_sandbox/{bot}/requests
WEBHOOK_TIMEOUT = aiohttp.ClientTimeout(total=5)
UPDATE_TYPES = frozenset({
    "message", "edited_message", "channel_post", "edited_channel_post", "business_connection",
    "business_message", "edited_business_message", "deleted_business_messages", "message_reaction",
    "message_reaction_count", "inline_query", "chosen_inline_result", "callback_query", "shipping_query",
    "pre_checkout_query", "purchased_paid_media", "poll", "poll_answer", "my_chat_member", "chat_member",
    "chat_join_request", "chat_boost", "removed_chat_boost",
})
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
_COMMAND = re.compile(r"/[A-Za-z0-9_]{1,32}(@[A-Za-z0-9_]+)?")
_MARKUP_KINDS = ("inline_keyboard", "keyboard", "remove_keyboard", "force_reply")
_QUERY_INVALID = "Bad Request: query is too old and response timeout expired or query ID is invalid"
_NOT_MODIFIED = ("Bad Request: message is not modified: specified new message content and reply markup "
                 "are exactly the same as a current content and reply markup of the message")


class _ApiError(Exception):
    """A Bot API call that fails; becomes Telegram's error envelope."""

    def __init__(self, status: int, description: str, retry_after: int | None = None):
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after

    def response(self) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return web.json_response(body, status=self.status)


def _flood(retry_after: int) -> _ApiError:
    return _ApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after)


class _Params:
    """A Bot API call's parameters from the query string and a JSON, form-encoded or multipart body.

    JSON values arrive typed; the other encodings carry strings, with objects JSON-encoded (PTB posts
    form-encoded bodies with `reply_markup` as a JSON string), so each accessor accepts both.
    """

    def __init__(self, values: dict[str, Any]):
        self._values = values

    @classmethod
    async def read(cls, request: web.Request) -> _Params:
        values: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise _ApiError(400, "Bad Request: can't parse JSON object")
            values.update(body)
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            values.update((name, value) for name, value in (await request.post()).items()
                          if isinstance(value, str))  # file parts: no method here takes one
        return cls(values)

    def raw(self) -> dict[str, Any]:
        """The parameters as posted (strings from a form, typed values from JSON)."""
        return dict(self._values)

    def integer(self, name: str, *, required: bool = False) -> int | None:
        value = self._values.get(name)
        if value is None or value == "":
            if required:
                raise _ApiError(400, f"Bad Request: {name} is empty")
            return None
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _ApiError(400, f"Bad Request: invalid {name} specified")

    def text(self, name: str) -> str | None:
        value = self._values.get(name)
        if isinstance(value, dict | list):
            raise _ApiError(400, f"Bad Request: {name} must be a string")
        return None if value is None else str(value)

    def structure(self, name: str, what: str) -> Any:
        value = self._values.get(name)
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise _ApiError(400, f"Bad Request: can't parse {what} JSON object") from None
        return value

    def flag(self, name: str) -> bool:
        return self._values.get(name) in (True, "true", "True", "1", 1)


def _reply_markup(params: _Params) -> dict[str, Any] | None:
    """reply_markup, checked the way Telegram checks inline keyboards (the buttons we send)."""
    markup = params.structure("reply_markup", "reply keyboard markup")
    if markup is None:
        return None
    if not isinstance(markup, dict) or not any(kind in markup for kind in _MARKUP_KINDS):
        raise _ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
    rows = markup.get("inline_keyboard", [])
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise _ApiError(400, "Bad Request: field \"inline_keyboard\" of the InlineKeyboardMarkup must be an Array")
    for button in itertools.chain.from_iterable(rows):
        if not isinstance(button, dict) or not isinstance(button.get("text"), str) or not button["text"]:
            raise _ApiError(400, "Bad Request: can't find field \"text\"")
        data = button.get("callback_data")
        if data is not None and not (isinstance(data, str) and 1 <= len(data.encode()) <= MAX_CALLBACK_DATA):
            raise _ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
    return markup


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _chat(chat_id: int, first_name: str = "") -> dict[str, Any]:
    if chat_id > 0:
        return {"id": chat_id, "first_name": first_name or f"User {chat_id}", "type": "private"}
    kind = "supergroup" if str(chat_id).startswith("-100") else "group"
    return {"id": chat_id, "title": f"Group {chat_id}", "type": kind}


def _button_data(message: dict[str, Any]) -> set[str]:
    rows = message.get("reply_markup", {}).get("inline_keyboard", [])
    return {button["callback_data"] for button in itertools.chain.from_iterable(rows) if "callback_data" in button}


@dataclass
class _Webhook:
    url: str
    secret_token: str | None
    last_error_date: int | None = None
    last_error_message: str | None = None


@dataclass
class _Bot:
    """One bot's identity and everything it has sent and been sent."""

    token: str
    user: dict[str, Any]  # what getMe answers, and the "from" of its messages
    update_ids: itertools.count[int]
    message_ids: defaultdict[int, itertools.count[int]] = field(  # per chat, shared by both sides
        default_factory=lambda: defaultdict(lambda: itertools.count(1)))
    chats: dict[int, dict[str, Any]] = field(default_factory=dict)  # chats users wrote from
    sent: list[dict[str, Any]] = field(default_factory=list)  # Message objects, oldest first
    by_id: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)  # (chat_id, message_id)
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)  # by callback_query id
    updates: list[dict[str, Any]] = field(default_factory=list)  # waiting for getUpdates
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set, and replaced, on each new update
    webhook: _Webhook | None = None
    allowed_updates: tuple[str, ...] = ()  # empty: every type
    sent_at: deque[float] = field(default_factory=deque)  # monotonic times of recent sending calls
    # The last sending calls as they came: method, content type and parameters as posted.
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECORDED_REQUESTS))
    chat_sent_at: defaultdict[int, deque[float]] = field(default_factory=lambda: defaultdict(deque))

    def chat(self, chat_id: int) -> dict[str, Any]:
        return self.chats.get(chat_id) or _chat(chat_id)

    def forget(self) -> None:
        """Back to a fresh bot; ids keep counting up so stale ones never match again."""
        for collection in (self.chats, self.sent, self.by_id, self.callbacks, self.updates, self.sent_at,
                           self.chat_sent_at, self.requests):
            collection.clear()
        self.webhook = None
        self.allowed_updates = ()


def _bot_user(token: str, index: int) -> dict[str, Any]:
    """A bot's User: its id is the token's numeric prefix, as in real tokens ("123456:AA..."), if any."""
    prefix = token.split(":", 1)[0]
    bot_id = int(prefix) if prefix.isdigit() else 7_000_000_001 + index
    return {"id": bot_id, "is_bot": True, "first_name": f"Gridline fake bot {index + 1}",
            "username": f"gridline_fake{index + 1}_bot", "can_join_groups": True,
            "can_read_all_group_messages": False, "supports_inline_queries": False}


Handler = Callable[[_Bot, _Params], Awaitable[Any]]


class FakeTelegram:
    """State and handlers of the fake bots; `app()` wires them into an aiohttp application."""

    def __init__(self, tokens: list[str]):
        if not tokens:
            raise ValueError("give at least one bot token")
        self._bots = {token: _Bot(token, _bot_user(token, index), itertools.count(100_000_001))
                      for index, token in enumerate(tokens)}
        self._faults: deque[tuple[int, int | None]] = deque()  # (status, retry_after) for next sending calls
        self._blocked: set[int] = set()
        self._per_chat_limit: int | None = None
        self._global_limit: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._methods: dict[str, tuple[Handler, bool]] = {  # lower-case name → (handler, is a sending call)
            "getme": (self.get_me, False),
            "sendmessage": (self.send_message, True),
            "answercallbackquery": (self.answer_callback_query, True),
            "editmessagetext": (self.edit_message_text, True),
            "editmessagereplymarkup": (self.edit_message_reply_markup, True),
            "setwebhook": (self.set_webhook, False),
            "deletewebhook": (self.delete_webhook, False),
            "getwebhookinfo": (self.get_webhook_info, False),
            "getupdates": (self.get_updates, False),
        }

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self.api)
        app.router.add_get("/_sandbox/{bot}/messages", self.sent_messages)
        app.router.add_get("/_sandbox/{bot}/callbacks", self.callback_queries)
        app.router.add_get("/_sandbox/{bot}/requests", self.recorded_requests)
        app.router.add_post("/_sandbox/{bot}/updates", self.inject_update)
        app.router.add_post("/_sandbox/faults", self.add_faults)
        app.router.add_delete("/_sandbox/faults", self.clear_faults)
        app.router.add_post("/_sandbox/blocked", self.block)
        app.router.add_post("/_sandbox/limits", self.set_limits)
        app.router.add_post("/_sandbox/reset", self.reset)
        app.cleanup_ctx.append(self._webhook_session)
        return app

    async def _webhook_session(self, _app: web.Application) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession(timeout=WEBHOOK_TIMEOUT)
        yield
        await self._session.close()

    # --- Bot API ----------------------------------------------------------------------------

    async def api(self, request: web.Request) -> web.Response:
        bot = self._bots.get(request.match_info["token"])
        if bot is None:
            return _ApiError(401, "Unauthorized").response()
        method = self._methods.get(request.match_info["method"].lower())
        if method is None:
            return _ApiError(404, "Not Found").response()
        handler, sending = method
        try:
            params = await _Params.read(request)
            if sending:
                bot.requests.append({"method": request.method, "api_method": request.match_info["method"],
                                     "content_type": request.content_type, "params": params.raw()})
            if sending and self._faults:
                status, retry_after = self._faults.popleft()
                raise _flood(retry_after or 1) if status == 429 else _ApiError(status, HTTPStatus(status).phrase)
            result = await handler(bot, params)
        except _ApiError as error:
            return error.response()
        return web.json_response({"ok": True, "result": result})

    async def get_me(self, bot: _Bot, _params: _Params) -> dict[str, Any]:
        return bot.user

    def _target(self, bot: _Bot, params: _Params) -> int:
        """The chat a sending call writes to, once blocks and flood control let it through."""
        chat_id = params.integer("chat_id", required=True)
        assert chat_id is not None
        if chat_id in self._blocked:
            raise _ApiError(403, "Forbidden: bot was blocked by the user" if chat_id > 0
                            else "Forbidden: bot was kicked from the group chat")
        self._throttle(bot, chat_id)
        return chat_id

    def _throttle(self, bot: _Bot, chat_id: int | None) -> None:
        """429 when this call would exceed the limits over the last second; else count it."""
        windows = [(window, limit) for window, limit in (
            (bot.sent_at, self._global_limit),
            (bot.chat_sent_at[chat_id] if chat_id is not None else None, self._per_chat_limit),
        ) if window is not None and limit is not None]
        now = time.monotonic()
        for window, limit in windows:
            while window and window[0] <= now - 1:
                window.popleft()
            if len(window) >= limit:
                raise _flood(max(1, math.ceil(window[0] + 1 - now)))
        for window, _ in windows:
            window.append(now)

    def _message(self, bot: _Bot, chat_id: int, sender: dict[str, Any], **content: Any) -> dict[str, Any]:
        return {"message_id": next(bot.message_ids[chat_id]), "from": sender, "chat": bot.chat(chat_id),
                "date": int(time.time()), **content}

    def _stored(self, bot: _Bot, params: _Params) -> dict[str, Any]:
        """The sent message an edit names by chat_id and message_id."""
        if params.text("inline_message_id"):
            raise _ApiError(400, "Bad Request: inline messages are not supported by the sandbox")
        chat_id = self._target(bot, params)
        message_id = params.integer("message_id", required=True)
        message = bot.by_id.get((chat_id, message_id or 0))
        if message is None:
            raise _ApiError(400, "Bad Request: message to edit not found")
        return message

    async def send_message(self, bot: _Bot, params: _Params) -> dict[str, Any]:
        chat_id = self._target(bot, params)
        text = params.text("text")
        if not text or not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if _utf16_length(text) > MAX_TEXT:
            raise _ApiError(400, "Bad Request: message is too long")
        markup = _reply_markup(params)
        message = self._message(bot, chat_id, bot.user, text=text)
        if markup and "inline_keyboard" in markup:  # Message.reply_markup only ever shows inline keyboards
            message["reply_markup"] = markup
        bot.sent.append(message)
        bot.by_id[chat_id, message["message_id"]] = message
        return message

    def _edit(self, message: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        """Apply `changes` (None removes a field), or 400 when they change nothing, as Telegram does."""
        edited = {key: value for key, value in {**message, **changes}.items() if value is not None}
        if edited == message:
            raise _ApiError(400, _NOT_MODIFIED)
        message.clear()
        message.update(edited, edit_date=int(time.time()))
        return message

    async def edit_message_text(self, bot: _Bot, params: _Params) -> dict[str, Any]:
        message = self._stored(bot, params)
        text = params.text("text")
        if not text or not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        markup = _reply_markup(params)  # none given: the keyboard goes, as with Telegram
        return self._edit(message, {"text": text, "reply_markup": markup})

    async def edit_message_reply_markup(self, bot: _Bot, params: _Params) -> dict[str, Any]:
        return self._edit(self._stored(bot, params), {"reply_markup": _reply_markup(params)})

    async def answer_callback_query(self, bot: _Bot, params: _Params) -> bool:
        query = bot.callbacks.get(params.text("callback_query_id") or "")
        if query is None or query["answer"] is not None:
            raise _ApiError(400, _QUERY_INVALID)
        text = params.text("text")
        if text and len(text) > MAX_CALLBACK_ANSWER:
            raise _ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        self._throttle(bot, None)
        query["answer"] = {"text": text, "show_alert": params.flag("show_alert")}
        return True

    def _allowed_updates(self, bot: _Bot, params: _Params) -> None:
        """allowed_updates, when given, replaces the bot's list (Telegram remembers it)."""
        allowed = params.structure("allowed_updates", "allowed updates")
        if allowed is None:
            return
        if not isinstance(allowed, list) or not all(isinstance(kind, str) for kind in allowed):
            raise _ApiError(400, "Bad Request: can't parse allowed updates JSON object")
        bot.allowed_updates = tuple(allowed)

    async def set_webhook(self, bot: _Bot, params: _Params) -> bool:
        url = params.text("url") or ""
        secret = params.text("secret_token") or None
        if url and not url.startswith(("http://", "https://")):
            raise _ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        if secret is not None and not _SECRET_TOKEN.fullmatch(secret):
            raise _ApiError(400, "Bad Request: secret token contains unallowed characters")
        self._allowed_updates(bot, params)
        if params.flag("drop_pending_updates"):
            bot.updates.clear()
        bot.webhook = _Webhook(url, secret) if url else None  # an empty url removes the webhook
        return True

    async def delete_webhook(self, bot: _Bot, params: _Params) -> bool:
        if params.flag("drop_pending_updates"):
            bot.updates.clear()
        bot.webhook = None
        return True

    async def get_webhook_info(self, bot: _Bot, _params: _Params) -> dict[str, Any]:
        info: dict[str, Any] = {"url": "", "has_custom_certificate": False,
                                "pending_update_count": len(bot.updates)}
        if bot.webhook:
            info.update(url=bot.webhook.url, max_connections=40)
            if bot.webhook.last_error_date:
                info.update(last_error_date=bot.webhook.last_error_date,
                            last_error_message=bot.webhook.last_error_message)
        if bot.allowed_updates:
            info["allowed_updates"] = list(bot.allowed_updates)
        return info

    async def get_updates(self, bot: _Bot, params: _Params) -> list[dict[str, Any]]:
        if bot.webhook:
            raise _ApiError(409, "Conflict: can't use getUpdates method while webhook is active; "
                                 "use deleteWebhook to delete the webhook first")
        offset = params.integer("offset") or 0
        limit = min(max(params.integer("limit") or MAX_UPDATES, 1), MAX_UPDATES)
        timeout = max(params.integer("timeout") or 0, 0)
        self._allowed_updates(bot, params)
        # An offset confirms every update before it; a negative one keeps only the last -offset.
        if offset > 0:
            bot.updates[:] = [update for update in bot.updates if update["update_id"] >= offset]
        elif offset < 0:
            del bot.updates[:offset]
        deadline = time.monotonic() + timeout
        while not bot.updates and (remaining := deadline - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(bot.arrived.wait(), remaining)
            except TimeoutError:
                break
        return bot.updates[:limit]

    # --- update injection -------------------------------------------------------------------

    async def inject_update(self, request: web.Request) -> web.Response:
        bot = self._bots.get(request.match_info["bot"])
        if bot is None:
            return _bad_control("unknown bot: name it by its token", status=404)
        spec = await _json_object(request)
        if spec is None:
            return _bad_control("body must be a JSON object")
        try:
            update = spec if "update_id" in spec or UPDATE_TYPES & spec.keys() else self._build_update(bot, spec)
        except ValueError as error:
            return _bad_control(str(error))
        if "update_id" not in update:
            update = {"update_id": next(bot.update_ids), **update}
        kind = next((key for key in update if key in UPDATE_TYPES), None)
        answer: dict[str, Any] = {"update_id": update["update_id"], "update": update}
        if bot.allowed_updates and kind not in bot.allowed_updates:
            return web.json_response({**answer, "dropped": f"{kind} is not in allowed_updates"})
        if bot.webhook is None:
            bot.updates.append(update)
            bot.arrived.set()
            bot.arrived = asyncio.Event()
            return web.json_response({**answer, "queued": True})
        return web.json_response({**answer, **await self._post_update(bot.webhook, update)})

    async def _post_update(self, webhook: _Webhook, update: dict[str, Any]) -> dict[str, Any]:
        """POST the update to the webhook as Telegram does; the outcome, for the control answer."""
        headers = {"X-Telegram-Bot-Api-Secret-Token": webhook.secret_token} if webhook.secret_token else {}
        assert self._session is not None, "the app is not running"
        try:
            async with self._session.post(webhook.url, json=update, headers=headers) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            failure, outcome = f"Connection failed: {error!r}", {"webhook_status": None,
                                                                  "webhook_error": repr(error)}
        else:
            outcome = {"webhook_status": response.status}
            failure = None if response.status < 300 else f"Wrong response from the webhook: {response.status}"
        if failure:
            log.warning("webhook %s: %s", webhook.url, failure)
            webhook.last_error_date, webhook.last_error_message = int(time.time()), failure
        return outcome

    def _build_update(self, bot: _Bot, spec: dict[str, Any]) -> dict[str, Any]:
        """A realistic message or callback_query update from a convenience spec; ValueError if unusable."""
        chat_id = spec.get("chat_id")
        if not isinstance(chat_id, int) or isinstance(chat_id, bool) or chat_id == 0:
            raise ValueError("chat_id must be a non-zero integer")
        user_id = spec.get("user_id", chat_id)
        if not isinstance(user_id, int) or user_id <= 0:
            raise ValueError("user_id (needed for a group chat_id) must be a positive integer")
        user = {"id": user_id, "is_bot": False, "first_name": str(spec.get("first_name", "居民")),
                "language_code": str(spec.get("language_code", "zh-hans"))}
        if chat_id > 0:
            bot.chats[chat_id] = _chat(chat_id, user["first_name"])
        if "callback_data" in spec:
            return {"callback_query": self._button_press(bot, chat_id, user, spec)}
        if "contact_phone" in spec:
            contact = {"phone_number": str(spec["contact_phone"]), "first_name": user["first_name"],
                       "user_id": spec.get("contact_user_id", user_id)}
            content: dict[str, Any] = {"contact": contact}
        elif "latitude" in spec or "longitude" in spec:
            latitude, longitude = spec.get("latitude"), spec.get("longitude")
            if not all(isinstance(value, int | float) and not isinstance(value, bool)
                       for value in (latitude, longitude)):
                raise ValueError("latitude and longitude must both be numbers")
            content = {"location": {"latitude": latitude, "longitude": longitude}}
        elif spec.get("photo"):
            content = {"photo": _photo_sizes()}
            if spec.get("caption"):
                content["caption"] = str(spec["caption"])
        elif isinstance(spec.get("text"), str) and spec["text"]:
            text = spec["text"]
            content = {"text": text}
            if command := _COMMAND.match(text):
                content["entities"] = [{"offset": 0, "length": _utf16_length(command.group()),
                                        "type": "bot_command"}]
        else:
            raise ValueError("give text, contact_phone, latitude+longitude, photo or callback_data "
                             "(or post a full Update)")
        return {"message": self._message(bot, chat_id, user, **content)}

    def _button_press(self, bot: _Bot, chat_id: int, user: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        """A callback_query for a button the bot really sent, remembered so answerCallbackQuery can match."""
        data, message_id = spec["callback_data"], spec.get("message_id")
        if message_id is None:
            message = next((m for m in reversed(bot.sent) if m["chat"]["id"] == chat_id and _button_data(m)), None)
        else:
            message = bot.by_id.get((chat_id, message_id))
        if message is None:
            raise ValueError(f"the bot sent no message with buttons to chat {chat_id}"
                             + (f" with message_id {message_id}" if message_id is not None else ""))
        if data not in _button_data(message):
            raise ValueError(f"callback_data {data!r} is not on a button of message {message['message_id']}")
        query_id = str(secrets.randbits(63))
        bot.callbacks[query_id] = {"id": query_id, "chat_id": chat_id, "message_id": message["message_id"],
                                   "data": data, "answer": None}
        return {"id": query_id, "from": user, "message": dict(message),
                "chat_instance": _chat_instance(bot, chat_id), "data": data}

    # --- control API ------------------------------------------------------------------------

    def _bot_and_chat(self, request: web.Request) -> tuple[_Bot, int | None]:
        bot = self._bots.get(request.match_info["bot"])
        if bot is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "unknown bot: name it by its token"}),
                                   content_type="application/json")
        raw = request.query.get("chat_id")
        if raw is not None and not re.fullmatch(r"-?\d+", raw):
            raise web.HTTPBadRequest(text=json.dumps({"error": "chat_id must be an integer"}),
                                     content_type="application/json")
        return bot, None if raw is None else int(raw)

    async def sent_messages(self, request: web.Request) -> web.Response:
        bot, chat_id = self._bot_and_chat(request)
        return web.json_response({"messages": [m for m in bot.sent
                                                if chat_id is None or m["chat"]["id"] == chat_id]})

    async def recorded_requests(self, request: web.Request) -> web.Response:
        bot, _ = self._bot_and_chat(request)
        return web.json_response({"requests": list(bot.requests)})

    async def callback_queries(self, request: web.Request) -> web.Response:
        bot, chat_id = self._bot_and_chat(request)
        return web.json_response({"callbacks": [q for q in bot.callbacks.values()
                                                 if chat_id is None or q["chat_id"] == chat_id]})

    async def add_faults(self, request: web.Request) -> web.Response:
        spec = await _json_object(request)
        if spec is None:
            return _bad_control("body must be a JSON object")
        status, count, retry_after = spec.get("status"), spec.get("count", 1), spec.get("retry_after")
        if status not in {s.value for s in HTTPStatus if s >= 400}:
            return _bad_control("status must be an HTTP error status such as 429 or 500")
        if not isinstance(count, int) or count < 1:
            return _bad_control("count must be a positive integer")
        if retry_after is not None and (status != 429 or not isinstance(retry_after, int) or retry_after < 1):
            return _bad_control("retry_after goes with status 429 and is a positive integer")
        self._faults.extend([(status, retry_after)] * count)
        return web.json_response({"pending_faults": len(self._faults)})

    async def clear_faults(self, _request: web.Request) -> web.Response:
        """The storm is over: calls succeed again."""
        cleared = len(self._faults)
        self._faults.clear()
        return web.json_response({"cleared": cleared})

    async def block(self, request: web.Request) -> web.Response:
        spec = await _json_object(request)
        chat_id = spec.get("chat_id") if spec else None
        if not isinstance(chat_id, int) or isinstance(chat_id, bool):
            return _bad_control('body must be {"chat_id": <an integer>}')
        self._blocked.add(chat_id)
        return web.json_response({"blocked": sorted(self._blocked)})

    async def set_limits(self, request: web.Request) -> web.Response:
        spec = await _json_object(request)
        if spec is None:
            return _bad_control("body must be a JSON object")
        limits = {name: spec.get(name) for name in ("per_chat_per_second", "global_per_second")}
        if not all(value is None or (isinstance(value, int) and value >= 1) for value in limits.values()):
            return _bad_control("limits are positive integers, or null for none")
        self._per_chat_limit, self._global_limit = limits["per_chat_per_second"], limits["global_per_second"]
        return web.json_response(limits)

    async def reset(self, _request: web.Request) -> web.Response:
        for bot in self._bots.values():
            bot.forget()
        self._faults.clear()
        self._blocked.clear()
        self._per_chat_limit = self._global_limit = None
        return web.json_response({"reset": True})


def _chat_instance(bot: _Bot, chat_id: int) -> str:
    """Telegram's opaque, stable id of "this chat as seen by this bot"."""
    digest = hashlib.sha256(f"{bot.token}:{chat_id}".encode()).digest()
    return str(-int.from_bytes(digest[:7], "big"))


def _photo_sizes() -> list[dict[str, Any]]:
    """The sizes Telegram keeps of an uploaded photo, smallest first."""
    file_id, unique = "AgACAgUAAxkBAAI" + secrets.token_urlsafe(24), secrets.token_urlsafe(9)
    return [{"file_id": f"{file_id}-{width}", "file_unique_id": f"{unique}-{width}", "width": width,
             "height": width * 3 // 4, "file_size": width * width // 20}
            for width in (90, 320, 800, 1280)]


def _bad_control(reason: str, status: int = 400) -> web.Response:
    return web.json_response({"error": reason}, status=status)


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


# --- running it ---------------------------------------------------------------------------


def fake_telegram_server(*tokens: str, port: int = 0) -> LoopbackServer:
    """The fake, serving a bot per token, in a background thread on a free loopback port unless `port`."""
    return LoopbackServer(FakeTelegram(list(tokens)).app(), port)


async def _serve_forever(host: str, port: int, tokens: list[str]) -> None:
    runner, url = await start_site(FakeTelegram(tokens).app(), host, port)
    print(f"fake Telegram Bot API listening on {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake Telegram Bot API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="0 (the default) picks a free port")
    parser.add_argument("--token", action="append", required=True, dest="tokens",
                        help="a bot token to serve; repeat for several bots")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        asyncio.run(_serve_forever("127.0.0.1", args.port, args.tokens))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
