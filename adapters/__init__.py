"""Channel adapters: one module per provider, each with the same four parts.

- `verify(...)`: is this request really from the provider (signature / secret token)?
- `parse_inbound(...)`: the provider's webhook body → `InboundMessage` (or `InboundError`, a 4xx).
- `parse_status(...)`: a delivery report → `DeliveryStatus`.
- `send(...)`: deliver one text through the provider's official client → the provider's id,
  or `SendError` saying whether a retry may help.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class DeliveryStatus:
    provider_id: str  # the provider's id of a message we sent
    status: str  # queued, sent, delivered, undelivered, failed, ...
    error_code: str | None = None


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


def is_loopback(url: str) -> bool:
    """A sandbox on this machine: HTTP clients must not route it through an environment proxy."""
    return urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")
