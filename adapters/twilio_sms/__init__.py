"""Twilio SMS: webhook signatures, webhook bodies, delivery reports, and sending.

Twilio posts inbound messages and delivery reports as form-encoded bodies signed with
X-Twilio-Signature (HMAC-SHA1 over the URL it called plus the sorted parameters, keyed with the
auth token). We send through the official client, whose REST path is
`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`; only the host changes for the sandbox.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Protocol
from urllib.parse import urlparse

import aiohttp
import requests
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator, add_port, remove_port
from twilio.rest import Client

from adapters import (
    Answer,
    Channel,
    DeliveryStatus,
    InboundError,
    InboundMessage,
    Limits,
    Outgoing,
    Request,
    Route,
    Sandbox,
    SendError,
    Unsure,
    ascii_int,
    header_bytes,
    is_loopback,
)
from adapters.phones import NotAPhoneNumber, to_e164

# The loopback sandbox's made-up account: what the gateway uses when no Twilio account is configured.
SANDBOX_ACCOUNT_SID = "AC" + "0" * 32
SANDBOX_AUTH_TOKEN = "sandbox-auth-token"
SANDBOX_PORT = 8089


class ClientSettings(Protocol):
    """What `make_client` reads from the gateway's settings."""

    @property
    def twilio_credentials(self) -> tuple[str, str]: ...

    @property
    def twilio_base(self) -> str: ...

SEND_TIMEOUT = 10.0  # seconds, for connecting and for each read; twilio-python waits forever by default


# --- signatures -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _validator(auth_token: str) -> RequestValidator:
    return RequestValidator(auth_token)


class _Form(dict[str, str]):
    """A dict that also answers MultiDict's `getall`.

    RequestValidator asks each parameter for `getall`, then `getlist`, then plain indexing, so a bare
    dict costs it two caught AttributeErrors per parameter.
    """

    def getall(self, key: str) -> list[str]:
        return [self[key]]


def _signable(params: Mapping[str, str]) -> Mapping[str, str]:
    return params if hasattr(params, "getall") else _Form(params)


def sign(url: str, params: Mapping[str, str], auth_token: str) -> str:
    """The X-Twilio-Signature Twilio would send when posting `params` to `url`."""
    return _validator(auth_token).compute_signature(url, _signable(params))


def verify(url: str, params: Mapping[str, str], signature: str | None, auth_token: str) -> bool:
    """Is `signature` what Twilio sends for this form posted to `url` (our public URL + path + query)?

    Accepts exactly what `RequestValidator.validate` accepts for form bodies: Twilio is inconsistent
    about signing the URL with or without its port, so both forms pass. `validate` always computes
    both signatures; we compute the other form only when the URL as given does not match.
    Pass an aiohttp/multidict MultiDict to have repeated parameters signed the way Twilio does.
    """
    if not signature:
        return False
    validator = _validator(auth_token)
    form = _signable(params)
    as_given, other = _url_forms(url)
    offered = header_bytes(signature)  # a header may hold any bytes
    return any(hmac.compare_digest(validator.compute_signature(form_of_url, form).encode(), offered)
               for form_of_url in (as_given, other))


@functools.lru_cache(maxsize=64)
def _url_forms(url: str) -> tuple[str, str]:
    """The URL as given and with its port added or removed; webhooks come to a handful of URLs."""
    parsed = urlparse(url)
    return parsed.geturl(), remove_port(parsed) if parsed.port else add_port(parsed)


# --- webhooks -------------------------------------------------------------------------------


INBOUND_PATH = "/webhooks/twilio/sms"
STATUS_PATH = "/webhooks/twilio/status"
# Broadcast deliveries used to name this callback, with ids of a table that is gone: its reports
# are matched by MessageSid alone.
LEGACY_STATUS_PATH = "/webhooks/twilio/broadcast-status"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
MAX_MEDIA = 10  # Twilio accepts at most 10 media items in one MMS


def _media_count(params: Mapping[str, str]) -> int:
    count = ascii_int(params.get("NumMedia") or "0", "NumMedia")
    if count > MAX_MEDIA:
        raise InboundError(400, f"NumMedia must be at most {MAX_MEDIA}")
    return count


def parse_inbound(params: Mapping[str, str], region: str | None = None) -> InboundMessage:
    """An inbound SMS/MMS webhook → InboundMessage; InboundError(400) names the first missing field.

    Twilio joins a multipart SMS into one Body before calling us, so Body is the whole text.
    Body may be empty or absent only for MMS (NumMedia > 0), whose MediaUrl0..N-1 become `media`.
    From must be a phone number (read in `region` when it has no country code): a WhatsApp or
    other sender we cannot text back is refused rather than opening a case nobody can answer.
    """
    provider_id = params.get("MessageSid") or params.get("SmsMessageSid")
    if not provider_id:
        raise InboundError(400, "missing MessageSid")
    sender = params.get("From")
    if not sender:
        raise InboundError(400, "missing From")
    try:
        sender = to_e164(sender, region)
    except NotAPhoneNumber as error:
        raise InboundError(400, f"From is not a phone number we can text: {error}") from error
    media = []
    for index in range(_media_count(params)):
        url = params.get(f"MediaUrl{index}")
        if not url:
            raise InboundError(400, f"missing MediaUrl{index}")
        media.append(url)
    text = params.get("Body")
    if not text and not media:
        raise InboundError(400, "missing Body" if text is None else "empty Body")
    return InboundMessage(channel="sms", provider_id=provider_id, sender=sender, text=text or "",
                          media=tuple(media))


# Delivery states of a message we sent, in the order they can legitimately follow each other (the
# sandbox plays them in this order). "read" (read receipts, WhatsApp/RCS) may follow "delivered".
# Inbound-only states (receiving, received) are not delivery reports and are absent on purpose.
STATUS_ORDER: Mapping[str, int] = MappingProxyType({
    "scheduled": 0,  # created with SendAt, waiting for its time
    "accepted": 1,  # taken by a Messaging Service, no sender chosen yet
    "queued": 1,
    "sending": 2,
    "sent": 3,  # handed to the carrier
    "partially_delivered": 4,  # some parts confirmed; a final verdict may still follow
    "delivered": 5,
    "undelivered": 5,
    "failed": 5,
    "canceled": 5,  # a scheduled message called off
    "read": 6,
})


# Twilio's statuses in the one delivery vocabulary (adapters.DELIVERY_STATES): the only place
# Twilio's words are translated.
DELIVERY_STATE: Mapping[str, str] = MappingProxyType({
    "scheduled": "sending", "accepted": "sending", "queued": "sending", "sending": "sending",
    "sent": "sent", "partially_delivered": "sent", "delivered": "delivered", "read": "delivered",
    "undelivered": "undelivered", "failed": "failed", "canceled": "failed",
})


def status_rank(status: str) -> int:
    """Position of `status` in STATUS_ORDER; -1 when unknown, so any real report replaces it."""
    return STATUS_ORDER.get(status, -1)


def delivery_id(query: Mapping[str, str]) -> int | None:
    """Our delivery row's id from the StatusCallback URL: `?delivery=`, or `?outbox=` on messages
    sent before the one delivery table; None when neither is there."""
    raw = query.get("delivery", query.get("outbox"))
    return None if raw is None else ascii_int(raw, "delivery")


def parse_status(params: Mapping[str, str], delivery: int | None = None) -> DeliveryStatus:
    """A StatusCallback post → DeliveryStatus in the one vocabulary; InboundError(400) if it is not
    one we understand. `delivery` is our row id from the callback URL, when it carries one."""
    provider_id = params.get("MessageSid")
    if not provider_id:
        raise InboundError(400, "missing MessageSid")
    status = params.get("MessageStatus") or params.get("SmsStatus")
    if not status:
        raise InboundError(400, "missing MessageStatus")
    if status not in DELIVERY_STATE:
        raise InboundError(400, f"unknown MessageStatus {status!r}")
    return DeliveryStatus(provider_id=provider_id, status=DELIVERY_STATE[status],
                          error_code=params.get("ErrorCode") or None, delivery_id=delivery)


# --- sending --------------------------------------------------------------------------------


def make_client(settings: ClientSettings) -> Client:
    """A twilio Client for `settings.twilio_base` with a 10 s timeout and no retries.

    The client builds every URL from `client.api.base_url` ("https://api.twilio.com") plus the real
    REST path, so pointing that attribute at the sandbox changes the host and nothing else.
    """
    account_sid, auth_token = settings.twilio_credentials
    http_client = TwilioHttpClient(timeout=SEND_TIMEOUT)
    if is_loopback(settings.twilio_base):
        # requests would send loopback calls to an HTTP(S)_PROXY found in the environment.
        http_client.session.trust_env = False
    client = Client(account_sid, auth_token, http_client=http_client)
    # TWILIO_EDGE / TWILIO_REGION read from os.environ would rewrite the host of every request.
    client.edge = client.region = None
    client.api.base_url = settings.twilio_base
    return client


def _rest_error(status: int, code: int | None, message: str) -> SendError:
    retryable = status == 429 or status >= 500
    detail = f" (error {code})" if code else ""
    return SendError(f"Twilio answered {status}{detail}: {message}", retryable=retryable,
                     code=str(code) if code else None)


def send(client: Client, *, from_number: str, to: str, body: str, status_callback: str | None) -> str:
    """Create the message; returns its MessageSid.

    SendError is retryable for 429, 5xx and network failures; other 4xx are final and carry Twilio's
    error code (21610 recipient opted out, 21211 invalid number, ...). A read timeout is retryable
    but the message may already have been created: check with `messages.list` before resending.
    """
    try:
        message = client.messages.create(to=to, from_=from_number, body=body, status_callback=status_callback)
    except TwilioRestException as error:
        raise _rest_error(error.status, error.code, error.msg) from error
    except TwilioServiceException as error:  # the RFC 9457 error shape some Twilio APIs answer with
        raise _rest_error(error.status, error.code, error.detail or error.title) from error
    except requests.ConnectionError as error:  # includes ConnectTimeout: nothing reached Twilio
        raise SendError(f"cannot reach Twilio: {error}", retryable=True) from error
    except requests.Timeout as error:
        raise SendError(f"no answer from Twilio within {SEND_TIMEOUT:g} s; the message may have been created",
                        retryable=True) from error
    return message.sid


# --- segments -------------------------------------------------------------------------------

_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")  # sent as ESC + character: two septets


def segments(text: str) -> int:
    """How many SMS parts (billed messages) `text` takes.

    GSM-7 text fits 160 septets in one SMS, 153 per part once split; anything else (Chinese, emoji)
    is UCS-2/UTF-16: 70 code units, 67 per part. A two-unit character (GSM-7 escape, emoji
    surrogate pair) is never split across parts. An empty text still costs one SMS.
    """
    if all(char in _GSM7_BASIC or char in _GSM7_EXTENDED for char in text):
        units = [2 if char in _GSM7_EXTENDED else 1 for char in text]
        single, per_part = 160, 153
    else:
        units = [2 if ord(char) > 0xFFFF else 1 for char in text]
        single, per_part = 70, 67
    if sum(units) <= single:
        return 1
    parts, used = 1, 0
    for width in units:
        if used + width > per_part:
            parts, used = parts + 1, 0
        used += width
    return parts


# --- the channel ----------------------------------------------------------------------------

# twilio's HTTP client logs every request and response at INFO: a third of a sender's time at
# thousands a second, and the phone numbers with it. Ours tells only of trouble.
_HTTP_LOG = logging.getLogger("adapters.twilio_sms.http")
_HTTP_LOG.setLevel(logging.WARNING)


class TwilioSms(Channel):
    """SMS through Twilio's REST API (or the loopback sandbox that speaks it).

    Sending uses twilio's own asyncio client (`messages.create_async` over aiohttp): measured on
    loopback it costs ~0.2 ms of CPU a message against ~0.9 ms for the requests-based client in
    threads. Our delivery id rides on the StatusCallback URL, so a report that arrives before we
    have stored the MessageSid still finds its row.
    """

    name = "sms"
    phone_addresses = True
    lists_sent = True

    def __init__(self, account_sid: str, auth_token: str, from_number: str, api_base: str,
                 status_url: str | None, *, rate: float = 0.0, unit: str = "messages", concurrency: int = 50,
                 region: str | None = None):
        self._region = region  # a From without a country code is read in the city's region
        self._credentials = (account_sid, auth_token)
        self._from = from_number
        self._api_base = api_base
        self._status_url = status_url
        self._concurrency = concurrency
        self._client: Client | None = None
        self._http: AsyncTwilioHttpClient | None = None
        self.limits = Limits(rate=rate, unit=unit)

    def cost(self, text: str) -> float:
        return float(segments(text)) if self.limits.unit == "segments" else 1.0

    def _async_client(self) -> Client:
        """Built on first use, inside the sender's event loop (aiohttp sessions belong to one loop)."""
        if self._client is None:
            self._http = AsyncTwilioHttpClient(pool_connections=False, logger=_HTTP_LOG)
            # Its default session never times out; ours gives up after SEND_TIMEOUT and pools connections.
            self._http.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT),
                                                       connector=aiohttp.TCPConnector(limit=self._concurrency),
                                                       trust_env=not is_loopback(self._api_base))
            self._client = Client(*self._credentials, http_client=self._http)
            self._client.edge = self._client.region = None  # as in make_client
            self._client.api.base_url = self._api_base
        return self._client

    # --- inbound: webhooks and delivery reports ---

    def routes(self) -> list[Route]:
        return [Route(INBOUND_PATH, "inbound"), Route(STATUS_PATH, "status"), Route(LEGACY_STATUS_PATH, "status")]

    def verify(self, request: Request) -> None:
        """X-Twilio-Signature over the URL Twilio called and the form; 415 before that if not a form."""
        if not verify(request.url, request.form, request.headers.get("X-Twilio-Signature"), self._credentials[1]):
            raise InboundError(403, "X-Twilio-Signature missing or invalid")

    def parse_inbound(self, request: Request) -> list[InboundMessage]:
        return [parse_inbound(request.form, self._region)]

    def parse_status(self, request: Request) -> list[DeliveryStatus]:
        legacy = request.path == LEGACY_STATUS_PATH
        return [parse_status(request.form, None if legacy else delivery_id(request.query))]

    def answer(self, route: Route) -> Answer:
        return Answer(EMPTY_TWIML, "text/xml")

    # --- outbound ---

    async def send(self, message: Outgoing) -> str:
        callback = f"{self._status_url}?delivery={message.delivery_id}" if self._status_url else None
        try:
            sent = await self._async_client().messages.create_async(
                to=message.address, from_=self._from, body=message.text, status_callback=callback)
        except TwilioRestException as error:
            raise _rest_error(error.status, error.code, error.msg) from error
        except TwilioServiceException as error:
            raise _rest_error(error.status, error.code, error.detail or error.title) from error
        except aiohttp.ClientConnectorError as error:  # never connected: nothing reached Twilio
            raise SendError(f"cannot reach Twilio: {error}", retryable=True, code="network") from error
        except (aiohttp.ClientError, TimeoutError) as error:
            raise Unsure(f"no answer from Twilio: {error!r}") from error
        return sent.sid

    async def find_sent(self, address: str, text: str, since: datetime) -> str | None:
        """Twilio lists what an account sent: match recipient and body after `since`."""
        try:
            listed = await self._async_client().messages.list_async(to=address, date_sent_after=since, limit=100)
        except (TwilioRestException, TwilioServiceException, aiohttp.ClientError, TimeoutError) as error:
            raise SendError(f"cannot list Twilio's messages: {error!r}", retryable=True, code="network") from error
        return next((m.sid for m in listed if m.body == text), None)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.session.close()


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """The package's settings, built by the gateway's channel registry from GRIDLINE_TWILIO_* and
    the SMS rate settings."""

    account_sid: str
    auth_token: str
    from_number: str
    api_base: str  # Twilio's REST base URL, or the sandbox's
    status_url: str  # our public URL of STATUS_PATH, named on every message as its StatusCallback
    rate: float = 0.0
    unit: str = "messages"
    concurrency: int = 50
    region: str | None = None  # the city's region, for a From written without a country code
    sandbox_port: int | None = None  # run the loopback sandbox on this port (no account configured)


def channels(config: Config) -> list[Channel]:
    return [TwilioSms(config.account_sid, config.auth_token, config.from_number, config.api_base,
                      config.status_url, rate=config.rate, unit=config.unit, concurrency=config.concurrency,
                      region=config.region)]


def sandbox_process(config: Config) -> Sandbox | None:
    if config.sandbox_port is None:
        return None
    return Sandbox("twilio-sandbox", "adapters.twilio_sms.sandbox",
                   ("--port", str(config.sandbox_port), "--account-sid", config.account_sid,
                    "--auth-token", config.auth_token))
