"""The channels messages go out on, built from the settings: the one place the gateway turns its
configuration into `adapters.Channel` objects for sending."""

from __future__ import annotations

from adapters import Channel
from adapters.telegram import TelegramBot
from adapters.twilio_sms import TwilioSms
from gateway.config import Settings
from gateway.world import BOTS

TWILIO_STATUS_PATH = "/webhooks/twilio/status"


def build_channels(settings: Settings) -> dict[str, Channel]:
    """Every channel we can send on, by name; each lane process uses one of them."""
    account_sid, auth_token = settings.twilio_credentials
    channels: list[Channel] = [
        TwilioSms(account_sid, auth_token, settings.twilio_from_number, settings.twilio_base,
                  f"{settings.base_url}{TWILIO_STATUS_PATH}", rate=settings.sms_rate_limit,
                  unit=settings.sms_rate_unit, concurrency=settings.broadcast_concurrency),
    ]
    for bot, name in BOTS.items():
        token = settings.telegram_tokens.get(bot)
        if token:
            channels.append(TelegramBot(name, token, settings.telegram_base, rate=settings.telegram_rate_limit,
                                        per_chat_rate=settings.telegram_chat_rate_limit))
    return {channel.name: channel for channel in channels}
