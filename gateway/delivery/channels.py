"""Outgoing channels: the outbox hands each row to the sender of its channel."""

from __future__ import annotations

import time
from datetime import datetime

import redis

from adapters import SendError, twilio_sms
from adapters.telegram import TelegramClient
from gateway.config import Settings
from gateway.delivery.ratelimit import TokenBucket
from gateway.world import BOTS, SMS


class TwilioSmsSender:
    """SMS through Twilio's REST API (or the loopback sandbox that speaks it)."""

    def __init__(self, settings: Settings):
        self._client = twilio_sms.make_client(settings)
        self._from = settings.twilio_from_number
        self._callback = f"{settings.base_url}/webhooks/twilio/status"

    def send(self, recipient: str, body: str, outbox_id: int, markup: dict | None) -> str:
        # Our row id rides on the callback URL: a report can arrive before we have stored the sid.
        return twilio_sms.send(self._client, from_number=self._from, to=recipient, body=body,
                               status_callback=f"{self._callback}?outbox={outbox_id}")

    def find_sent(self, recipient: str, body: str, since: datetime) -> str | None:
        for message in self._client.messages.list(to=recipient, date_sent_after=since, limit=100):
            if message.body == body:
                return message.sid
        return None


class TelegramSender:
    """One bot's messages, within Telegram's limits (~30/s overall, ~1/s per chat) shared by all
    workers through a Redis token bucket. Telegram has no delivery reports: sent is final."""

    MAX_WAIT = 3.0  # seconds a job waits for the bucket before handing the row back for later

    def __init__(self, settings: Settings, bot: str, connection: redis.Redis):
        self._client = TelegramClient(settings.telegram_tokens[bot], settings.telegram_base)
        # Telegram limits each bot: the residents' bot shares its bucket with broadcasts.
        self._bucket = TokenBucket(connection, "telegram" if bot == "resident" else f"telegram:{bot}",
                                   settings.telegram_rate_limit,
                                   item_rate=settings.telegram_chat_rate_limit)

    def send(self, recipient: str, body: str, outbox_id: int, markup: dict | None) -> str:
        deadline = time.monotonic() + self.MAX_WAIT
        while True:
            [granted], wait = self._bucket.take([1], [recipient])
            if granted:
                break
            if time.monotonic() + wait > deadline:
                raise SendError("rate limit", retryable=True, code="rate_limited", retry_after=wait)
            time.sleep(wait)
        markup = markup or {}
        if "answer_callback" in markup:  # stops the spinner on the button the user pressed
            self._client.answer_callback(markup["answer_callback"], body or None)
            return f"callback:{markup['answer_callback']}"
        return self._client.send(int(recipient), body, markup.get("inline"), request_contact=markup.get("contact"))

    def find_sent(self, recipient: str, body: str, since: datetime) -> str | None:
        """The Bot API cannot list sent messages: a row cut off mid-send is sent again."""
        return None


def build_senders(settings: Settings, connection: redis.Redis) -> dict[str, TwilioSmsSender | TelegramSender]:
    senders: dict[str, TwilioSmsSender | TelegramSender] = {SMS: TwilioSmsSender(settings)}
    for bot, channel in BOTS.items():
        senders[channel] = TelegramSender(settings, bot, connection)
    return senders
