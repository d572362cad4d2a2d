"""Polling mode for local development: no public URL needed.

Each bot's updates are fetched with getUpdates and handed to the gateway's own webhook, with
the secret header, so polled and pushed updates take exactly the same path (and the same
deduplication on update_id).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import urllib.error
import urllib.request

from adapters import SendError
from adapters.telegram import WEBHOOK_PATH, TelegramClient
from gateway.config import Settings, load_settings
from gateway.logs import setup_logging

log = logging.getLogger(__name__)


def forward(settings: Settings, bot: str, update: dict) -> None:
    request = urllib.request.Request(
        f"http://{settings.host}:{settings.port}" + WEBHOOK_PATH.format(bot=bot), data=json.dumps(update).encode(),
        headers={"Content-Type": "application/json",
                 "X-Telegram-Bot-Api-Secret-Token": settings.telegram_webhook_secret})
    with urllib.request.urlopen(request, timeout=15):
        pass


def poll(settings: Settings, bot: str, stopping: threading.Event) -> None:
    with TelegramClient(settings.telegram_tokens[bot], settings.telegram_base) as client:
        client.delete_webhook()
        offset: int | None = None
        while not stopping.is_set():
            try:
                for update in client.get_updates(offset, timeout=5):
                    try:
                        forward(settings, bot, update)
                    except urllib.error.HTTPError as refused:
                        if refused.code >= 500:
                            raise  # not stored: fetch it again
                        log.warning("the gateway refused %s update %s: %s", bot, update.get("update_id"), refused)
                    offset = update["update_id"] + 1  # only once the gateway stored or refused it
            except (SendError, OSError) as error:
                log.warning("polling the %s bot failed: %s", bot, error)
                stopping.wait(2)


def main() -> None:
    setup_logging()
    settings = load_settings()
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    threads = [threading.Thread(target=poll, args=(settings, bot, stopping), daemon=True)
               for bot in settings.telegram_tokens]
    for thread in threads:
        thread.start()
    stopping.wait()


if __name__ == "__main__":
    main()
