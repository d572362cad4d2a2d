"""Group commit for delivery reports: during a big broadcast they arrive thousands a second, so the
reports that arrive together share one transaction (`outbox.apply_reports`), and each is answered
only once stored."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.orm import Session

from adapters import DeliveryStatus
from gateway.delivery.outbox import apply_reports

log = logging.getLogger(__name__)


class ReportWriter:
    """Stores reports through `run`, which does its work in one transaction (the web process's store thread)."""

    def __init__(self, run: Callable[[Callable[[Session], Any]], Awaitable[Any]]):
        self._run = run
        self._waiting: list[tuple[DeliveryStatus, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task | None = None

    async def store(self, report: DeliveryStatus) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((report, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await self._run(lambda session, batch=batch: apply_reports(session, [r for r, _ in batch]))
            except Exception as error:  # the store is down: the provider hears 5xx and retries
                log.exception("storing %d delivery reports failed", len(batch))
                for _, future in batch:
                    if not future.done():  # a caller that hung up has a cancelled future
                        future.set_exception(error)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
