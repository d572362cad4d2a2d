"""Channel adapters: one package per provider, each a `Channel` with the same contract.

Inbound: a channel names its webhook `routes()`; the gateway hands each call to it as a framework-free
`Request` (the URL as the provider called it, headers, query, raw body), and the channel `verify`s it
(signature / secret token), parses it into `InboundMessage`s or `DeliveryStatus`es in one vocabulary,
or refuses it with an `InboundError` (a 4xx with a reason), and says what to `answer`.
Outbound: `send` delivers one `Outgoing` through the provider's official client and returns the
provider's id, or raises `SendError` (saying whether a retry may help) or `Unsure` (the provider may
or may not have it: reconcile with `find_sent` before sending again). `limits` says how fast the
provider lets us send. Each package also ships a `sandbox` module: a fake of the provider's API on
loopback, for tests and for running without an account.

Nothing here imports the gateway: the gateway's channel registry (gateway.delivery.channels) builds
the channels from its settings, mounts their routes and sends through them.
"""

from __future__ import annotations

import functools
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlparse

from multidict import MultiDict
from yarl import URL


@dataclass(frozen=True)
class InboundMessage:
    channel: str  # the name of the Channel it came in on: "sms", "telegram-resident", "http", ...
    provider_id: str  # unique per channel: Twilio MessageSid, Telegram update_id
    sender: str  # E.164 phone for SMS, chat id for Telegram
    text: str
    media: tuple[str, ...] = field(default_factory=tuple)
    # Telegram: text, command, contact, location, photo, callback, or unsupported (a voice note, sticker,
    # ... we cannot read; payload["type"] names it). SMS is always text.
    kind: str = "text"
    # What `kind` carries beyond text, e.g. {"phone": "+86..."} or {"data": "accept:..", "message_id": 12}.
    # Left out of the hash so messages stay hashable.
    payload: dict[str, Any] = field(default_factory=dict, hash=False)


# The one delivery vocabulary every channel's reports are mapped to, in the order a message moves
# through it; "delivered", "undelivered" and "failed" are final.
DELIVERY_STATES = ("sending", "sent", "delivered", "undelivered", "failed")


@dataclass(frozen=True)
class DeliveryStatus:
    provider_id: str  # the provider's id of a message we sent
    status: str  # one of DELIVERY_STATES
    error_code: str | None = None
    delivery_id: int | None = None  # our row id, where the report carries it (e.g. on its callback URL)


class InboundError(ValueError):
    """A webhook we refuse, with the HTTP status and a reason for the caller."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class SendError(Exception):
    """Sending failed; `retryable` says whether trying again later may succeed."""

    def __init__(self, reason: str, *, retryable: bool, code: str | None = None,
                 retry_after: float | None = None):
        super().__init__(reason)
        self.retryable = retryable
        self.code = code
        self.retry_after = retry_after  # seconds the provider asked us to wait (Telegram's 429), if any


class Unsure(Exception):
    """The provider may or may not have accepted the message (a timeout after the request went out)."""


@dataclass(frozen=True)
class Outgoing:
    """One message to send: our delivery row's id, the channel's address, the text, and extras such as
    chat buttons (`markup`, which channels without buttons ignore)."""

    delivery_id: int
    address: str  # E.164 phone for SMS, chat id for Telegram, the channel's own form elsewhere
    text: str
    markup: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Limits:
    """How fast a provider lets us send; 0 means no limit."""

    rate: float = 0.0  # units per second across every sender
    unit: str = "messages"  # or "segments" (SMS parts)
    per_address_rate: float = 0.0  # messages per second to one address (Telegram: ~1 per chat)
    max_length: int = 0  # characters one message may carry (Telegram: 4,096)


MAX_NUMBER_DIGITS = 18  # ids and counts fit a signed 64-bit column with room to spare


def ascii_int(raw: str, what: str) -> int:
    """A non-negative decimal number written in ASCII digits, else InboundError(400).

    `str.isdigit()` also passes "²" and other Unicode digits that `int()` refuses or reads, and a
    number past 64 bits overflows the store's columns: both are the caller's error, not ours.
    """
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_NUMBER_DIGITS):
        raise InboundError(400, f"{what} must be a number of at most {MAX_NUMBER_DIGITS} ASCII digits")
    return int(raw)


def header_bytes(value: str | None) -> bytes:
    """A header value as the bytes that came over the wire, for constant-time comparison.

    HTTP servers decode header bytes that are not UTF-8 as surrogate escapes; encoding them back
    plainly raises UnicodeEncodeError, which would turn a forged header into a 500.
    """
    if not value:
        return b""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no decoder makes: cannot match any secret we hold
        return b"\xff"


class Request:
    """One webhook call, as the provider made it, without the web framework.

    `url` is the URL the provider called (our public base URL + path + query): signatures such as
    Twilio's cover it. `headers` must look names up case-insensitively (a CIMultiDict).
    """

    def __init__(self, url: str, path: str, headers: Mapping[str, str], query: Mapping[str, str], body: bytes):
        self.url, self.path, self.headers, self.query, self.body = url, path, headers, query, body
        self.content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()

    @functools.cached_property
    def form(self) -> Mapping[str, str]:
        """The body as an url-encoded form (parsed once: verifying and parsing both read it)."""
        if self.content_type != "application/x-www-form-urlencoded":
            raise InboundError(415, "expected application/x-www-form-urlencoded")
        return parse_form(self.body)

    @functools.cached_property
    def json(self) -> Any:
        """The body as JSON; InboundError(400) when it is not, or nests too deep."""
        return parse_json(self.body)


MAX_FORM_FIELDS = 200


def parse_form(body: bytes) -> MultiDict[str]:
    """Decode a form body with yarl's compiled unquoter (aiohttp's own query parser).

    It is three times faster than urllib's parse_qsl, on the hot path of every webhook, and agrees
    with it except that it turns a bad UTF-8 sequence into U+FFFD. So the rare body with U+FFFD
    in a value is decoded again, strictly, to tell a real U+FFFD from a bad byte.
    """
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as bad:
        raise InboundError(400, "form body is not valid UTF-8: raw bytes outside ASCII") from bad
    if text.count("&") >= MAX_FORM_FIELDS:
        raise InboundError(400, f"malformed form body: more than {MAX_FORM_FIELDS} fields")
    form = MultiDict(URL.build(query_string=text, encoded=True).query)
    if any("\ufffd" in value for value in form.values()):
        try:
            parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
        except UnicodeDecodeError as bad:
            raise InboundError(400, "form body is not valid UTF-8") from bad
    return form


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_json(body: bytes) -> Any:
    """A JSON body, or InboundError(400) saying why not (bad UTF-8 and deep nesting included).

    JSON may escape a lone UTF-16 surrogate ("\\ud800"), which decodes to a string no UTF-8 store
    or frame can hold: such a body is refused here, so it fails alone instead of in a later batch.
    """
    try:
        value = json.loads(body)
    except RecursionError as deep:  # thousands of "[": the decoder recurses once per level
        raise InboundError(400, "body is not JSON: nested too deep") from deep
    except ValueError as bad:  # JSONDecodeError and UnicodeDecodeError both
        raise InboundError(400, f"body is not JSON: {bad}") from bad
    if _SURROGATE_ESCAPE.search(body):  # rare: emoji escaped as pairs also land here, and pass
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError as lone:
            raise InboundError(400, "body holds a lone UTF-16 surrogate, which is not text") from lone
    return value


RouteKind = Literal["inbound", "status"]


@dataclass(frozen=True)
class Route:
    """A path a provider posts to, and whether it carries inbound messages or delivery reports."""

    path: str
    kind: RouteKind


@dataclass(frozen=True)
class Answer:
    """What a route answers once the call is verified and stored: what the provider expects to read."""

    body: str = ""
    content_type: str = "text/plain"
    status: int = 200


JSON_OK = Answer('{"ok":true}', "application/json")


class Channel(ABC):
    """A provider, as the gateway drives it: where it posts, how to read it, how to send through it.

    The inbound half has defaults for a send-only channel (no routes); a channel with routes
    overrides `verify` and the parser of each kind of route it has.
    """

    name: str  # "sms", "telegram-resident", ...: the channel a message came in or goes out on
    limits: Limits = Limits()
    lists_sent = False  # can `find_sent` tell "not sent" apart from "cannot tell"?
    # Its addresses are phone numbers (E.164): an SMS channel's sender is the resident's phone.
    phone_addresses: bool = False

    def routes(self) -> list[Route]:
        """The webhook paths the gateway mounts for this channel."""
        return []

    def verify(self, request: Request) -> None:
        """Is the call really from the provider? InboundError(403) with the reason when it is not."""
        raise InboundError(403, f"{self.name} takes no webhooks")

    def parse_inbound(self, request: Request) -> list[InboundMessage]:
        """A verified call to an inbound route → its messages (none: acknowledged and dropped)."""
        raise InboundError(404, f"{self.name} has no inbound route")

    def parse_status(self, request: Request) -> list[DeliveryStatus]:
        """A verified call to a status route → its delivery reports, in DELIVERY_STATES."""
        raise InboundError(404, f"{self.name} has no delivery reports")

    def answer(self, route: Route) -> Answer:
        """The response to a call that was verified, parsed and stored."""
        return JSON_OK

    def cost(self, text: str) -> float:
        """What sending `text` takes from the rate limit, in `limits.unit`."""
        return 1.0

    @abstractmethod
    async def send(self, message: Outgoing) -> str:
        """The provider's id for the message; SendError when refused, Unsure when we cannot tell."""

    async def find_sent(self, address: str, text: str, since: datetime) -> str | None:
        """The provider's id of `text` sent to `address` after `since`, if the provider can list what
        was sent; None when it cannot (the caller decides whether to send again)."""
        return None

    async def close(self) -> None:
        """Release connections; called once when the sender process stops."""
        return None


@dataclass(frozen=True)
class Sandbox:
    """A package's loopback fake, as the supervisor starts it: `python -m module *args`, with `env`
    added to its environment."""

    name: str
    module: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, hash=False)


def is_loopback(url: str) -> bool:
    """A sandbox on this machine: HTTP clients must not route it through an environment proxy."""
    return urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")
