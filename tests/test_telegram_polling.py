"""Polling mode: updates fetched with getUpdates reach the gateway's webhook path with the secret,
once each, and the offset only moves past an update the gateway accepted."""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from adapters.telegram import SANDBOX_TOKENS as SANDBOX_TELEGRAM_TOKENS
from adapters.telegram.sandbox import fake_telegram_server
from adapters.twilio_sms.sandbox import LoopbackServer
from gateway.config import Settings
from gateway.roles.telegram_poller import poll
from tests.conftest import http_json, wait_for


@pytest.mark.slow
def test_polled_updates_take_the_webhook_path():
    received: list[tuple[str, str | None, int]] = []

    async def webhook(request: web.Request) -> web.Response:
        update = await request.json()
        received.append((request.match_info["bot"], request.headers.get("X-Telegram-Bot-Api-Secret-Token"),
                         update["update_id"]))
        return web.json_response({"ok": True})

    receiver = web.Application()
    receiver.router.add_post("/webhooks/telegram/{bot}", webhook)
    with fake_telegram_server(*SANDBOX_TELEGRAM_TOKENS) as fake, LoopbackServer(receiver) as gateway:
        settings = Settings(host="127.0.0.1", port=urlsplit(gateway.url).port, telegram_api_base=fake.url,
                            telegram_webhook_secret="s3cret")
        stopping = threading.Event()
        poller = threading.Thread(target=poll, args=(settings, "resident", stopping), daemon=True)
        poller.start()
        try:
            token = settings.telegram_tokens["resident"]
            ids = [http_json("POST", f"{fake.url}/_sandbox/{token}/updates",
                             {"chat_id": 42, "text": f"message {n}"})[1]["update_id"] for n in range(3)]
            wait_for(lambda: len(received) >= 3, 15, what="three polled updates")
        finally:
            stopping.set()
            poller.join(15)
    assert received == [("resident", "s3cret", update_id) for update_id in ids]
