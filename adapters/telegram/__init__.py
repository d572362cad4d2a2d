"""Telegram: webhook secret tokens, Update objects, and sending through python-telegram-bot.

Telegram POSTs one JSON Update per request to the URL given to setWebhook, with the secret_token
given there in the X-Telegram-Bot-Api-Secret-Token header, and posts it again (same update_id) until
we answer 2xx; update_id is therefore our provider_id. getUpdates (polling, for local development)
returns the same Update objects.

There is no parse_status: the Bot API has no delivery reports. A successful sendMessage means Telegram
accepted the message (its message_id is the provider id); a user who blocked the bot makes the send
itself fail with 403.

python-telegram-bot's Bot is asyncio-only; rq workers are synchronous, so `TelegramClient` runs one
Bot on a private event loop. Async code (the webhook app) can use `build_bot` and `send_error` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import warnings
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import phonenumbers
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, KeyboardButton, ReplyKeyboardMarkup
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from adapters import (
    Channel,
    InboundError,
    InboundMessage,
    Limits,
    Outgoing,
    Request,
    Route,
    Sandbox,
    SendError,
    Unsure,
    header_bytes,
    is_loopback,
)
from adapters.phones import NotAPhoneNumber, to_e164

TELEGRAM_API_BASE = "https://api.telegram.org"
# The loopback sandbox's made-up bots (residents', workers'): used when no tokens are configured.
SANDBOX_TOKENS = ("1000000001:sandbox-residents-bot", "1000000002:sandbox-workers-bot")
SANDBOX_PORT = 8090
WEBHOOK_PATH = "/webhooks/telegram/{bot}"  # bot: "resident" or "worker", the part of the name after "telegram-"
SEND_TIMEOUT = 10.0  # seconds, for connecting, writing and each read; getUpdates adds its long-poll timeout
# The update types we handle; setWebhook/getUpdates ask Telegram for these only (it remembers the list).
ALLOWED_UPDATES = ("message", "callback_query")

Buttons = list[list[tuple[str, str]]]  # rows of (label, callback_data)

# A bot command as Telegram marks it (a bot_command entity at offset 0): /name or /name@bot_username,
# then optional arguments, e.g. a deep link's payload after /start.
_COMMAND = re.compile(r"/([A-Za-z0-9_]{1,32})(?:@([A-Za-z0-9_]+))?(?:\s+(.*))?", re.DOTALL)
# Message contents a resident may send that we cannot read; other messages (service messages such as
# a member joining a group, polls, dice) are not addressed to us and are ignored.
_UNREADABLE = ("voice", "audio", "video", "video_note", "document", "sticker", "animation")
_T = TypeVar("_T")

# --- webhooks -------------------------------------------------------------------------------


def verify(header_value: str | None, secret_token: str) -> bool:
    """Does X-Telegram-Bot-Api-Secret-Token carry the secret we gave setWebhook? Constant-time.

    An empty configured secret verifies nothing: a webhook without a secret could be called by anyone.
    """
    if not header_value or not secret_token:
        return False
    # As bytes: a header with bytes that are not UTF-8 arrives surrogate-escaped, and str.encode()
    # would fail on it (a 500 for a forged call) where it should simply not match.
    return hmac.compare_digest(header_bytes(header_value), secret_token.encode())


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not an id


def _object(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise InboundError(400, f"{where}.{key} must be an object")
    return value


def sender_language(update: Mapping[str, Any]) -> str | None:
    """The IETF language tag of the user's Telegram app (`from.language_code`, e.g. "zh-hans"), if sent.

    Telegram sends it for most private messages and button presses; use it to pick a reply language
    for a chat not yet linked to a resident.
    """
    for key in ("message", "callback_query"):
        part = update.get(key)
        if isinstance(part, dict):
            sender = part.get("from")
            language = sender.get("language_code") if isinstance(sender, dict) else None
            return language if isinstance(language, str) and language else None
    return None


def parse_inbound(update: object, region: str | None = None, channel: str = "telegram") -> InboundMessage | None:
    """A decoded webhook body (or one getUpdates result) → InboundMessage; None for updates we ignore.

    `message` and `callback_query` updates are handled; edited messages, channel posts, membership
    changes etc. give None (answer 200 so Telegram stops resending them). InboundError(400) when the
    body is not an Update: not an object, no integer update_id, a message without chat.id, ...
    A shared contact's number is read in `region` when it has no country code.
    """
    if not isinstance(update, dict):
        raise InboundError(400, "update must be a JSON object")
    update_id = update.get("update_id")
    if not _is_int(update_id):
        raise InboundError(400, "missing or non-integer update_id")
    language = sender_language(update)
    context = {"language": language} if language else {}
    if "message" in update:
        return _from_message(channel, str(update_id), _object(update, "message", "update"), context, region)
    if "callback_query" in update:
        return _from_callback(channel, str(update_id), _object(update, "callback_query", "update"), context)
    return None


def _chat_id(message: Mapping[str, Any], where: str) -> int:
    chat = message.get("chat")
    chat_id = chat.get("id") if isinstance(chat, dict) else None
    if not _is_int(chat_id):
        raise InboundError(400, f"{where} without an integer chat.id")
    return chat_id


def _phone(contact: Mapping[str, Any], region: str | None) -> str | None:
    """A shared contact's number in E.164, or None when it is not a phone number we could text.

    The share-my-number button gives the user's own number in international form, usually without
    "+" ("8613800138000", "79001234567"); a contact card from the phone book carries what was typed
    there, often a local number ("0788531373", "13800138000"), which is read in the city's region.
    """
    raw = contact.get("phone_number")
    if not isinstance(raw, str) or not raw.strip():
        raise InboundError(400, "message.contact without a phone_number")
    raw = raw.strip()
    if not raw.startswith(("+", "0")):
        with contextlib.suppress(NotAPhoneNumber):
            international = to_e164("+" + raw)
            if phonenumbers.is_valid_number(phonenumbers.parse(international)):
                return international
    try:
        return to_e164(raw, region)
    except NotAPhoneNumber:
        return None


def _coordinate(location: Mapping[str, Any], key: str) -> float:
    value = location.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InboundError(400, f"message.location.{key} must be a number")
    return float(value)


def _largest_photo(sizes: object) -> str:
    """file_id of the biggest PhotoSize; Telegram lists several sizes of the same photo."""
    if not isinstance(sizes, list) or not sizes or not all(
            isinstance(size, dict) and isinstance(size.get("file_id"), str)
            and _is_int(size.get("width")) and _is_int(size.get("height")) for size in sizes):
        raise InboundError(400, "message.photo must be a list of PhotoSize objects (file_id, width, height)")
    return max(sizes, key=lambda size: size["width"] * size["height"])["file_id"]


def _from_message(channel: str, provider_id: str, message: Mapping[str, Any],
                  context: dict[str, Any], region: str | None) -> InboundMessage | None:
    sender = str(_chat_id(message, "message"))
    caption = message.get("caption")
    caption = caption if isinstance(caption, str) else ""

    def inbound(kind: str, text: str = "", **payload: Any) -> InboundMessage:
        return InboundMessage(channel=channel, provider_id=provider_id, sender=sender, text=text,
                              kind=kind, payload={**context, **payload})

    if "text" in message:
        text = message["text"]
        if not isinstance(text, str):
            raise InboundError(400, "message.text must be a string")
        command = _COMMAND.fullmatch(text)
        if command is None:
            return inbound("text", text)
        name, bot, args = command.groups()
        addressed = {"bot": bot} if bot else {}  # in a group, /tasks@OtherBot is for another bot
        return inbound("command", text, command=name.lower(), args=(args or "").strip(), **addressed)
    if "contact" in message:
        contact = _object(message, "contact", "message")
        sender_user = message.get("from")
        sender_id = sender_user.get("id") if isinstance(sender_user, dict) else None
        # "own": the user shared their own number (the request_contact button), not someone's card.
        own = sender_id is not None and contact.get("user_id") == sender_id
        return inbound("contact", phone=_phone(contact, region), own=own)
    if "location" in message:  # venues carry a location too
        location = _object(message, "location", "message")
        return inbound("location", latitude=_coordinate(location, "latitude"),
                       longitude=_coordinate(location, "longitude"))
    if "photo" in message:
        return inbound("photo", caption, photo=_largest_photo(message["photo"]))
    for kind in _UNREADABLE:
        if kind in message:
            return inbound("unsupported", caption, type=kind)
    return None


def _from_callback(channel: str, provider_id: str, query: Mapping[str, Any],
                   context: dict[str, Any]) -> InboundMessage | None:
    """A button press. Its chat is the chat of the message holding the button (in a private chat that
    is also the user's id, which inline-mode messages, having no message, fall back to)."""
    query_id = query.get("id")
    if not isinstance(query_id, str) or not query_id:
        raise InboundError(400, "callback_query without an id")
    data = query.get("data")
    if not isinstance(data, str):
        return None  # a game's play button (game_short_name): not ours
    payload: dict[str, Any] = {**context, "data": data, "callback_query_id": query_id}
    message = query.get("message")
    if isinstance(message, dict):
        chat_id = _chat_id(message, "callback_query.message")
        if _is_int(message.get("message_id")):
            payload["message_id"] = message["message_id"]
    else:
        user = query.get("from")
        chat_id = user.get("id") if isinstance(user, dict) else None
        if not _is_int(chat_id):
            raise InboundError(400, "callback_query without message.chat.id or from.id")
    return InboundMessage(channel=channel, provider_id=provider_id, sender=str(chat_id), text=data,
                          kind="callback", payload=payload)


# --- sending --------------------------------------------------------------------------------


def _connect(token: str, api_base: str) -> tuple[Bot, tuple[HTTPXRequest, ...]]:
    """A Bot and the two HTTP clients it uses (one for getUpdates, one for everything else)."""
    base = api_base.rstrip("/")
    # httpx honours HTTP(S)_PROXY by default: needed to reach api.telegram.org from some networks, wrong
    # for the loopback fake.
    httpx_kwargs = {"trust_env": False} if is_loopback(base) else None

    def request(pool_size: int) -> HTTPXRequest:
        return HTTPXRequest(connection_pool_size=pool_size, connect_timeout=SEND_TIMEOUT,
                            read_timeout=SEND_TIMEOUT, write_timeout=SEND_TIMEOUT, pool_timeout=SEND_TIMEOUT,
                            httpx_kwargs=httpx_kwargs)

    calls, polls = request(8), request(1)
    # PTB appends the token to base_url itself: "{base}/bot" + token + "/sendMessage".
    bot = Bot(token, base_url=f"{base}/bot", base_file_url=f"{base}/file/bot", request=calls,
              get_updates_request=polls)
    return bot, (calls, polls)


def build_bot(token: str, api_base: str = TELEGRAM_API_BASE) -> Bot:
    """A Bot calling `{api_base}/bot{token}/{method}`, with SEND_TIMEOUT and no retries, for async code.

    Use it as `async with build_bot(...) as bot:`; entering costs one getMe call. Neither Bot nor its
    HTTPXRequest retries: every failure surfaces as a TelegramError (see `send_error`).
    """
    return _connect(token, api_base)[0]


@contextlib.contextmanager
def _retry_after_as_is() -> Iterator[None]:
    """Silence PTB 22's warning that RetryAfter.retry_after (an int unless PTB_TIMEDELTA=1 is set) will
    become a timedelta: PTB reads it itself on every 429, and `_seconds` takes both types."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*`retry_after` will be of type", PTBDeprecationWarning)
        yield


def _seconds(error: RetryAfter) -> float:
    with _retry_after_as_is():
        retry_after = error.retry_after
    return retry_after.total_seconds() if isinstance(retry_after, timedelta) else float(retry_after)


def send_error(error: TelegramError) -> SendError:
    """Map a PTB exception to SendError: may a retry help, and a short stable code for the outbox log."""
    reason = f"Telegram: {error.message}"
    if isinstance(error, RetryAfter):  # 429: flood control; wait at least retry_after
        return SendError(reason, retryable=True, code="rate_limited", retry_after=_seconds(error))
    if isinstance(error, Forbidden):  # 403: blocked by the user, kicked from the group, user deactivated
        return SendError(reason, retryable=False, code="blocked")
    if isinstance(error, InvalidToken):  # 401/404: wrong token, a configuration error
        return SendError(reason, retryable=False, code="unauthorized")
    if isinstance(error, BadRequest):  # 400 (a NetworkError subclass in PTB, so tested before it)
        return SendError(reason, retryable=False, code="bad_request")
    if isinstance(error, TimedOut):
        return SendError(f"{reason}; the request may have reached Telegram", retryable=True, code="timeout")
    if isinstance(error, NetworkError):  # connection failures and 5xx
        return SendError(reason, retryable=True, code="network")
    if isinstance(error, Conflict):  # 409: getUpdates while a webhook is set, or two pollers
        return SendError(reason, retryable=False, code="conflict")
    if isinstance(error, ChatMigrated):  # the group became a supergroup with a new id
        return SendError(f"{reason} (new chat id {error.new_chat_id})", retryable=False, code="migrated")
    return SendError(reason, retryable=False, code="telegram")


def _keyboard(buttons: Buttons | None, request_contact: str | None = None
              ) -> InlineKeyboardMarkup | ReplyKeyboardMarkup | None:
    """Inline buttons under the message, or a one-off keyboard button that shares the phone number."""
    if request_contact:
        return ReplyKeyboardMarkup([[KeyboardButton(request_contact, request_contact=True)]],
                                   one_time_keyboard=True, resize_keyboard=True)
    if buttons is None:
        return None
    return InlineKeyboardMarkup([[InlineKeyboardButton(label, callback_data=data) for label, data in row]
                                 for row in buttons])


class TelegramClient:
    """One bot for synchronous code (rq workers): a `telegram.Bot` driven by a private event loop.

    Every method makes one Bot API call and raises SendError on failure. Not thread-safe, and not for
    use inside a running event loop (use `build_bot` there). Close it, or use it as a context manager.
    """

    def __init__(self, token: str, api_base: str = TELEGRAM_API_BASE):
        # No Bot.initialize(): its getMe would cost a call, and would put the token in the error when
        # Telegram rejects it. The HTTP clients work without it; close() shuts them down.
        self.bot, self._http = _connect(token, api_base)
        self._loop = asyncio.new_event_loop()

    def _call(self, call: Coroutine[Any, Any, _T]) -> _T:
        try:
            with _retry_after_as_is():
                return self._loop.run_until_complete(call)
        except TelegramError as error:
            raise send_error(error) from error

    def send(self, chat_id: int, text: str, buttons: Buttons | None = None,
             request_contact: str | None = None) -> str:
        """Send `text` with inline `buttons`, or a share-my-number button; returns the message_id."""
        markup = _keyboard(buttons, request_contact)
        message = self._call(self.bot.send_message(chat_id, text, reply_markup=markup))
        return str(message.message_id)

    def answer_callback(self, callback_query_id: str, text: str | None = None) -> None:
        """Stop the pressed button's spinner, optionally showing `text` as a toast (≤ 200 characters).

        Telegram expects an answer within seconds of the press, even if the work takes longer.
        """
        self._call(self.bot.answer_callback_query(callback_query_id, text=text))

    def edit_buttons(self, chat_id: int, message_id: int, buttons: Buttons | None) -> None:
        """Replace a sent message's keyboard (None removes it), e.g. once a task has been accepted.

        Idempotent: "message is not modified" (the same keyboard again, as a retried job would send)
        counts as success.
        """
        try:
            self._call(self.bot.edit_message_reply_markup(chat_id, message_id, reply_markup=_keyboard(buttons)))
        except SendError as error:
            # PTB strips "Bad Request: " from Telegram's description and capitalises what is left.
            if error.code != "bad_request" or "message is not modified" not in str(error).lower():
                raise

    def get_updates(self, offset: int | None, timeout: int) -> list[dict[str, Any]]:
        """Polling mode: updates with update_id >= offset, waiting up to `timeout` s for one to arrive.

        Passing offset = last update_id + 1 confirms everything before it. Returns the Update objects as
        plain JSON values, for `parse_inbound`: PTB parses them and we serialise them back, which adds
        fields Telegram leaves out when false (e.g. message.group_chat_created) and changes nothing else.
        """
        updates = self._call(self.bot.get_updates(offset=offset, timeout=timeout,
                                                  allowed_updates=ALLOWED_UPDATES))
        return [json.loads(update.to_json()) for update in updates]

    def set_webhook(self, url: str, secret_token: str) -> None:
        """Have Telegram POST updates to `url` with `secret_token` (1-256 of A-Z a-z 0-9 _ -) in the header."""
        self._call(self.bot.set_webhook(url, secret_token=secret_token, allowed_updates=ALLOWED_UPDATES))

    def delete_webhook(self) -> None:
        """Back to polling mode: getUpdates answers 409 Conflict while a webhook is set."""
        self._call(self.bot.delete_webhook())

    async def _shutdown(self) -> None:
        await asyncio.gather(*(http.shutdown() for http in self._http))

    def close(self) -> None:
        """Close the bot's HTTP connections and the event loop."""
        try:
            self._loop.run_until_complete(self._shutdown())
        finally:
            self._loop.close()

    def __enter__(self) -> TelegramClient:
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.close()


# --- the channel ----------------------------------------------------------------------------

MAX_TEXT = 4096  # characters in one sendMessage text, after entity parsing


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """`text` in parts of at most `limit` characters, cut at a line break where there is one."""
    parts: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", limit // 2, limit)
        cut = cut + 1 if cut > 0 else limit
        parts.append(text[:cut])
        text = text[cut:]
    return [*parts, text]


class TelegramBot(Channel):
    """One bot's messages, asynchronously through python-telegram-bot.

    Telegram allows a bot ~30 messages/s overall and ~1/s per chat; it has no delivery reports, so
    an accepted sendMessage is final, and it cannot list what a bot sent (`find_sent` is None). A
    text past 4,096 characters goes as several messages, the buttons on the last.
    """

    def __init__(self, name: str, token: str, api_base: str = TELEGRAM_API_BASE, *,
                 rate: float = 30.0, per_chat_rate: float = 1.0, webhook_secret: str = "",
                 region: str | None = None):
        self.name = name
        self._secret, self._region = webhook_secret, region
        self.limits = Limits(rate=rate, per_address_rate=per_chat_rate, max_length=MAX_TEXT)
        self._token, self._api_base = token, api_base
        self._bot: Bot | None = None
        self._http: tuple[HTTPXRequest, ...] = ()

    def cost(self, text: str) -> float:
        return float(len(split_text(text)))

    # --- inbound: one webhook per bot ---

    @property
    def webhook_path(self) -> str:
        return WEBHOOK_PATH.format(bot=self.name.removeprefix("telegram-"))

    def routes(self) -> list[Route]:
        return [Route(self.webhook_path, "inbound")]

    def verify(self, request: Request) -> None:
        if not verify(request.headers.get("X-Telegram-Bot-Api-Secret-Token"), self._secret):
            raise InboundError(403, "X-Telegram-Bot-Api-Secret-Token missing or invalid")

    def parse_inbound(self, request: Request) -> list[InboundMessage]:
        """One Update per call; updates we do not handle are acknowledged (200) and dropped."""
        message = parse_inbound(request.json, self._region, self.name)
        return [] if message is None else [message]

    def _connected(self) -> Bot:
        """Built on first use, inside the sender's event loop (httpx clients belong to one loop)."""
        if self._bot is None:
            self._bot, self._http = _connect(self._token, self._api_base)
        return self._bot

    async def send(self, message: Outgoing) -> str:
        markup = message.markup or {}
        bot = self._connected()
        try:
            with _retry_after_as_is():
                if "answer_callback" in markup:  # stops the spinner on the button the user pressed
                    await bot.answer_callback_query(markup["answer_callback"], text=message.text or None)
                    return f"callback:{markup['answer_callback']}"
                *first, last = split_text(message.text)
                for part in first:
                    await bot.send_message(int(message.address), part)
                keyboard = _keyboard(markup.get("inline"), markup.get("contact"))
                sent = await bot.send_message(int(message.address), last, reply_markup=keyboard)
        except TimedOut as error:  # it may have reached Telegram, which cannot tell us
            raise Unsure(f"Telegram: {error.message}") from error
        except TelegramError as error:
            raise send_error(error) from error
        return str(sent.message_id)

    async def close(self) -> None:
        await asyncio.gather(*(http.shutdown() for http in self._http))


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """The package's settings, built by the gateway's channel registry from GRIDLINE_TELEGRAM_*."""

    tokens: Mapping[str, str]  # bot ("resident", "worker") → token; each bot is the channel telegram-<bot>
    api_base: str = TELEGRAM_API_BASE
    webhook_secret: str = ""
    rate: float = 30.0
    per_chat_rate: float = 1.0
    region: str | None = None  # the city's region, for shared contacts' local numbers
    sandbox_port: int | None = None  # run the loopback sandbox on this port (no tokens configured)


def channels(config: Config) -> list[Channel]:
    return [TelegramBot(f"telegram-{bot}", token, config.api_base, rate=config.rate,
                        per_chat_rate=config.per_chat_rate, webhook_secret=config.webhook_secret,
                        region=config.region)
            for bot, token in config.tokens.items()]


def sandbox_process(config: Config) -> Sandbox | None:
    if config.sandbox_port is None:
        return None
    tokens = [arg for token in config.tokens.values() for arg in ("--token", token)]
    return Sandbox("telegram-sandbox", "adapters.telegram.sandbox", ("--port", str(config.sandbox_port), *tokens))
