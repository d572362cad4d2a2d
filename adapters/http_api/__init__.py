"""A generic HTTP channel: a domestic SMS gateway or a city's own app, plugged in by configuration.

Like nyaruka/courier's External channel, everything provider-specific is a setting:

- Inbound messages are POSTed to INBOUND_PATH as JSON or as a form, with configurable field names
  for the sender, the text and the provider's message id (the id makes retries one message).
- Every call we receive carries an HMAC-SHA256 of its raw body, keyed with the shared secret, in a
  configurable header (hex, optionally prefixed "sha256="); it is compared in constant time.
- Sending is a POST to a configured URL whose body is a JSON template with {to}, {text} and {id}
  (our delivery id) in its string values, sent as JSON or as a form, signed the same way, with an
  optional Authorization header. The provider's id is read from a configurable field of its JSON
  answer (dotted for nested objects).
- Delivery reports are POSTed to STATUS_PATH with configurable field names; the provider's status
  words are mapped into the one delivery vocabulary by a configurable table. A report that echoes
  our delivery id (the {id} we sent) finds its row even before the send's answer was stored.

When the gateway is an SMS gateway its senders are phone numbers, parsed in the city's region;
anything else is refused with a 400, since nobody could answer it. Replies go back on this channel.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import urlencode

import aiohttp

from adapters import (
    DELIVERY_STATES,
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

NAME = "http"
INBOUND_PATH = "/webhooks/http/inbound"
STATUS_PATH = "/webhooks/http/status"
SANDBOX_SEND_PATH = "/send"
SEND_TIMEOUT = 10.0  # seconds for the whole call
MAX_FIELD = 64  # characters in an id or a non-phone sender: what the store's columns hold
_PLACEHOLDER = re.compile(r"\{(to|text|id)\}")
_FORMATS = ("json", "form")


def _flag(raw: str) -> bool:
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not one of 1/0, true/false, yes/no, on/off")


_COERCE = {"bool": _flag, "int": int, "float": float}  # Config's annotations, as text


@dataclass(frozen=True)
class Config:
    """The channel's settings: GRIDLINE_HTTP_<FIELD> for each field below (region and public_url
    come from the gateway's GRIDLINE_DEFAULT_REGION and GRIDLINE_PUBLIC_URL)."""

    secret: str = ""  # the shared HMAC key; the channel is enabled when it is set
    send_url: str = ""  # where messages are POSTed; empty: the loopback sandbox
    send_format: str = "json"  # "json" or "form"
    send_body: str = '{"to": "{to}", "text": "{text}", "id": "{id}"}'  # a JSON object template
    send_authorization: str = ""  # sent as the Authorization header, e.g. "Bearer ..."; empty: none
    response_id_field: str = "id"  # where the provider's id is in its JSON answer (a.b for nested)
    signature_header: str = "X-Signature"
    sender_field: str = "from"
    text_field: str = "text"
    id_field: str = "id"
    status_id_field: str = "id"  # the provider's id of the message a report is about
    status_field: str = "status"
    status_reference_field: str = "reference"  # our delivery id, if the provider echoes it
    status_error_field: str = "error"
    status_map: str = ("queued:sending,sending:sending,sent:sent,delivered:delivered,undelivered:undelivered,"
                       "failed:failed,rejected:failed,expired:undelivered")  # their word:ours, ...
    phone_senders: bool = True  # senders are phone numbers (an SMS gateway); False: an app's user ids
    rate_limit: float = 0.0  # messages per second; 0: no limit
    max_length: int = 0  # characters in one message; 0: no limit
    sandbox_port: int = 8091  # where the sandbox listens when send_url is empty
    region: str = "CN"
    public_url: str = ""  # our base URL, where the sandbox posts inbound messages and reports

    @classmethod
    def from_strings(cls, values: Mapping[str, str]) -> Config:
        """From settings given as text (environment variables); ValueError names a bad one."""
        kinds = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(kinds))
        if unknown:
            raise ValueError(f"unknown HTTP channel setting(s): {', '.join(unknown)}")
        typed: dict[str, Any] = {}
        for name, raw in values.items():
            try:
                typed[name] = _COERCE.get(str(kinds[name]), str)(raw)
            except ValueError as bad:
                raise ValueError(f"GRIDLINE_HTTP_{name.upper()}: {bad}") from bad
        return cls(**typed)

    @property
    def enabled(self) -> bool:
        return bool(self.secret)

    @property
    def endpoint(self) -> str:
        return self.send_url or f"http://127.0.0.1:{self.sandbox_port}{SANDBOX_SEND_PATH}"

    def statuses(self) -> dict[str, str]:
        """The provider's status word → ours; ValueError when the table does not parse."""
        table: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in self.status_map.split(","))):
            word, _, state = pair.partition(":")
            if state.strip() not in DELIVERY_STATES:
                raise ValueError(f"GRIDLINE_HTTP_STATUS_MAP: {pair!r} does not map to one of {DELIVERY_STATES}")
            table[word.strip()] = state.strip()
        return table

    def template(self) -> dict[str, Any]:
        """The send body template; ValueError unless it is a JSON object."""
        try:
            template = json.loads(self.send_body)
        except ValueError as bad:
            raise ValueError(f"GRIDLINE_HTTP_SEND_BODY is not JSON: {bad}") from bad
        if not isinstance(template, dict):
            raise ValueError("GRIDLINE_HTTP_SEND_BODY must be a JSON object")
        if self.send_format not in _FORMATS:
            raise ValueError(f"GRIDLINE_HTTP_SEND_FORMAT must be one of {_FORMATS}")
        return template


def signature(secret: str, body: bytes) -> str:
    """The header value for `body`: hex HMAC-SHA256 keyed with the shared secret."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def fill(template: Any, values: Mapping[str, str]) -> Any:
    """The template with {to} {text} {id} replaced in every string, in one pass; the values are
    inserted as data (never parsed, never searched for placeholders again), so a text holding
    quotes, braces or "{id}" cannot change the body's shape."""
    if isinstance(template, str):
        return _PLACEHOLDER.sub(lambda found: values.get(found.group(1), found.group(0)), template)
    if isinstance(template, list):
        return [fill(item, values) for item in template]
    if isinstance(template, dict):
        return {key: fill(item, values) for key, item in template.items()}
    return template


def encode_body(template: dict[str, Any], send_format: str, values: Mapping[str, str]) -> tuple[bytes, str]:
    """The request body and its content type."""
    filled = fill(template, values)
    if send_format == "form":
        form = {key: value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                for key, value in filled.items()}
        return urlencode(form).encode(), "application/x-www-form-urlencoded"
    return json.dumps(filled, ensure_ascii=False).encode(), "application/json"


def dig(value: Any, path: str) -> Any:
    """`value["a"]["b"]` for path "a.b"; None where it is missing."""
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _fields(request: Request) -> Mapping[str, Any]:
    """The call's fields, from a JSON object or a form."""
    if request.content_type == "application/json":
        body = request.json
        if not isinstance(body, dict):
            raise InboundError(400, "body must be a JSON object")
        return body
    if request.content_type == "application/x-www-form-urlencoded":
        return request.form
    raise InboundError(415, "expected application/json or application/x-www-form-urlencoded")


def _optional(fields: Mapping[str, Any], name: str, limit: int = 0) -> str | None:
    """A string field (a JSON number is taken as its digits), None when absent or empty."""
    value = fields.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InboundError(400, f"{name} must be a string")
    if limit and len(value) > limit:
        raise InboundError(400, f"{name} has more than {limit} characters")
    return value


def _required(fields: Mapping[str, Any], name: str, limit: int = 0) -> str:
    value = _optional(fields, name, limit)
    if value is None:
        raise InboundError(400, f"missing {name}")
    return value


class HttpChannel(Channel):
    """The generic HTTP channel (see the module's docstring)."""

    def __init__(self, config: Config):
        self.name = NAME
        self.phone_addresses = config.phone_senders
        self.limits = Limits(rate=config.rate_limit, max_length=config.max_length)
        self._config = config
        self._template = config.template()  # configuration errors surface when the channel is built
        self._statuses = config.statuses()
        self._session: aiohttp.ClientSession | None = None

    # --- inbound ---

    def routes(self) -> list[Route]:
        return [Route(INBOUND_PATH, "inbound"), Route(STATUS_PATH, "status")]

    def verify(self, request: Request) -> None:
        offered = header_bytes(request.headers.get(self._config.signature_header)).removeprefix(b"sha256=")
        expected = signature(self._config.secret, request.body).encode()
        if not (self._config.secret and hmac.compare_digest(offered, expected)):
            raise InboundError(403, f"{self._config.signature_header} missing or invalid")

    def parse_inbound(self, request: Request) -> list[InboundMessage]:
        c = self._config
        fields = _fields(request)
        provider_id = _required(fields, c.id_field, MAX_FIELD)
        sender = _required(fields, c.sender_field, MAX_FIELD)
        text = _required(fields, c.text_field)
        if c.phone_senders:
            try:
                sender = to_e164(sender, c.region)
            except NotAPhoneNumber as error:
                raise InboundError(400, f"{c.sender_field} is not a phone number we can text: {error}") from error
        elif not sender.isprintable():
            raise InboundError(400, f"{c.sender_field} must be printable")
        return [InboundMessage(channel=self.name, provider_id=provider_id, sender=sender, text=text)]

    def parse_status(self, request: Request) -> list[DeliveryStatus]:
        c = self._config
        fields = _fields(request)
        word = _required(fields, c.status_field, MAX_FIELD)
        if word not in self._statuses:
            raise InboundError(400, f"unknown {c.status_field} {word!r}")
        reference = _optional(fields, c.status_reference_field, MAX_FIELD)
        delivery = ascii_int(reference, c.status_reference_field) if reference is not None else None
        provider_id = (_optional(fields, c.status_id_field, MAX_FIELD) if delivery is not None
                       else _required(fields, c.status_id_field, MAX_FIELD))
        error = _optional(fields, c.status_error_field, MAX_FIELD)
        return [DeliveryStatus(provider_id=provider_id or "", status=self._statuses[word], error_code=error,
                               delivery_id=delivery)]

    # --- outbound ---

    def request_for(self, message: Outgoing) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the POST that sends `message`."""
        c = self._config
        body, content_type = encode_body(self._template, c.send_format,
                                         {"to": message.address, "text": message.text,
                                          "id": str(message.delivery_id)})
        headers = {"Content-Type": content_type, c.signature_header: signature(c.secret, body)}
        if c.send_authorization:
            headers["Authorization"] = c.send_authorization
        return body, headers

    async def send(self, message: Outgoing) -> str:
        body, headers = self.request_for(message)
        if self._session is None:  # built in the sender's event loop, which owns it
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT),
                                                  trust_env=not is_loopback(self._config.endpoint))
        try:
            # A redirect is not an accepted message: it fails like any other 3xx.
            async with self._session.post(self._config.endpoint, data=body, headers=headers,
                                          allow_redirects=False) as response:
                answer = await response.read()
                status, retry_after = response.status, response.headers.get("Retry-After", "")
        except aiohttp.ClientConnectorError as error:  # never connected: nothing was sent
            raise SendError(f"cannot reach the HTTP gateway: {error}", retryable=True, code="network") from error
        except (aiohttp.ClientError, TimeoutError) as error:
            raise Unsure(f"no answer from the HTTP gateway: {error!r}") from error
        if status == 429 or status >= 500:
            wait = float(retry_after) if retry_after.isascii() and retry_after.isdigit() else None
            raise SendError(f"HTTP gateway answered {status}", retryable=True,
                            code="rate_limited" if status == 429 else str(status), retry_after=wait)
        if status >= 300:
            raise SendError(f"HTTP gateway answered {status}: {answer[:200]!r}", retryable=False, code=str(status))
        try:
            provider_id = dig(json.loads(answer), self._config.response_id_field)
        except (ValueError, RecursionError):
            provider_id = None
        if not isinstance(provider_id, str | int) or isinstance(provider_id, bool) or provider_id == "":
            raise SendError(f"HTTP gateway answered {status} without {self._config.response_id_field!r}",
                            retryable=False, code="bad_answer")
        return str(provider_id)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def channels(config: Config) -> list[Channel]:
    return [HttpChannel(config)] if config.enabled else []


def sandbox_process(config: Config) -> Sandbox | None:
    """The loopback fake when the channel is on and no send URL is configured; it learns the
    configuration from GRIDLINE_HTTP_SANDBOX_CONFIG (never the command line, where `ps` shows it)."""
    if not config.enabled or config.send_url:
        return None
    return Sandbox("http-sandbox", "adapters.http_api.sandbox", ("--port", str(config.sandbox_port)),
                   {"GRIDLINE_HTTP_SANDBOX_CONFIG": json.dumps(asdict(config))})
