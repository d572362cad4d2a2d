"""Channel adapters: one package per provider, each a `Channel` with the same contract.

Inbound: the provider's webhooks are verified (signature / secret token) and parsed into
`InboundMessage`s, or refused with an `InboundError` (a 4xx with a reason); delivery reports are
parsed into `DeliveryStatus`es in one vocabulary. Outbound: `send` delivers one `Outgoing` through
the provider's official client and returns the provider's id, or raises `SendError` (saying whether
a retry may help) or `Unsure` (the provider may or may not have it: reconcile with `find_sent`
before sending again). `limits` says how fast the provider lets us send. Each package also ships a
`sandbox` module: a fake of the provider's API on loopback, for tests and for running without an
account.

Nothing here imports the gateway: the gateway builds channels from its settings and drives them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlparse


@dataclass(frozen=True)
class InboundMessage:
    channel: str  # "sms" or "telegram"; the gateway renames Telegram's to the bot it came through
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


class Channel(ABC):
    """A provider, as the gateway drives it: where it posts, how to read it, how to send through it."""

    name: str  # "sms", "telegram-resident", ...: the channel a message came in or goes out on
    limits: Limits = Limits()

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


def is_loopback(url: str) -> bool:
    """A sandbox on this machine: HTTP clients must not route it through an environment proxy."""
    return urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")
