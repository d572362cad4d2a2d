"""Receive and store: inbound messages are durable before the provider hears 200.

Group commit: webhooks that arrive together wait a moment for one shared SQLite transaction and
one shared rq job, instead of paying an fsync and ~40 Redis round trips each. A provider's retry
of the same message id hits the unique key and is acknowledged without a second case.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from adapters import InboundMessage
from gateway.store import InboundRow, insert_for, session_factory, utcnow

log = logging.getLogger(__name__)
T = TypeVar("T")


class Intake:
    def __init__(self, engine: Engine, enqueue: Callable[[list[int]], None], max_batch: int = 500):
        self._engine = engine
        self._sessions = session_factory(engine)
        self._insert = (insert_for(engine, InboundRow).on_conflict_do_nothing()
                        .returning(InboundRow.id, InboundRow.channel, InboundRow.provider_id))
        self._enqueue = enqueue
        self._max_batch = max_batch
        self._waiting: list[tuple[InboundMessage, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task | None = None
        # One writer thread: SQLite takes one writer at a time, and batching needs a single queue.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="intake-writer")
        self._enqueuer = ThreadPoolExecutor(1, thread_name_prefix="intake-enqueuer")

    async def store(self, message: InboundMessage) -> bool:
        """Persist the message; True when it is new, False when it is a retry already stored."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((message, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def run(self, work: Callable[[Session], T]) -> T:
        """Run other small writes (delivery reports) on the same writer thread, in a transaction."""
        def in_transaction() -> T:
            with self._sessions() as session, session.begin():
                return work(session)

        return await asyncio.get_running_loop().run_in_executor(self._writer, in_transaction)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch:]
            try:
                await loop.run_in_executor(self._writer, self._write, loop, batch)
            except Exception as error:  # the store is down: every caller hears it, nothing is half-done
                log.exception("storing %d inbound messages failed", len(batch))
                for _, future in batch:
                    if not future.done():  # a caller that hung up has a cancelled future
                        future.set_exception(error)

    def _write(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[InboundMessage, asyncio.Future[bool]]]
               ) -> None:
        now = utcnow()
        values = [{"channel": m.channel, "provider_id": m.provider_id, "sender": m.sender, "text": m.text,
                   "media": list(m.media), "kind": m.kind, "payload": m.payload, "received_at": now}
                  for m, _ in batch]
        # One cached statement run as executemany: SQLAlchemy batches it into multi-row INSERTs.
        with self._engine.begin() as connection:
            stored = connection.execute(self._insert, values).all()
        # Committed: the callers may answer now, while the job is enqueued beside the next batch.
        new_keys = {(row.channel, row.provider_id) for row in stored}
        loop.call_soon_threadsafe(_resolve, [(f, (m.channel, m.provider_id) in new_keys) for m, f in batch])
        if stored:
            self._enqueuer.submit(self._enqueue_quietly, [row.id for row in stored])

    def _enqueue_quietly(self, ids: list[int]) -> None:
        try:
            self._enqueue(ids)
        except Exception:  # Redis away: the rows are safe, the sweeper enqueues them later
            log.exception("enqueueing %d inbound messages failed; the sweeper will retry", len(ids))

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._enqueuer.shutdown(wait=True)


def _resolve(outcomes: list[tuple[asyncio.Future[bool], bool]]) -> None:
    for future, is_new in outcomes:
        if not future.done():
            future.set_result(is_new)
