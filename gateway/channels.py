"""Outgoing channels: the outbox hands each row to the sender of its channel."""

from __future__ import annotations

from datetime import datetime

from adapters import twilio_sms
from gateway.config import Settings


class TwilioSmsSender:
    """SMS through Twilio's REST API (or the loopback sandbox that speaks it)."""

    def __init__(self, settings: Settings):
        self._client = twilio_sms.make_client(settings)
        self._from = settings.twilio_from_number
        self._callback = f"{settings.base_url}/webhooks/twilio/status"

    def send(self, recipient: str, body: str, outbox_id: int) -> str:
        # Our row id rides on the callback URL: a report can arrive before we have stored the sid.
        return twilio_sms.send(self._client, from_number=self._from, to=recipient, body=body,
                               status_callback=f"{self._callback}?outbox={outbox_id}")

    def find_sent(self, recipient: str, body: str, since: datetime) -> str | None:
        for message in self._client.messages.list(to=recipient, date_sent_after=since, limit=100):
            if message.body == body:
                return message.sid
        return None


def build_senders(settings: Settings) -> dict[str, TwilioSmsSender]:
    return {"sms": TwilioSmsSender(settings)}
