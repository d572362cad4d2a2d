"""Receive and store: inbound messages are durable before the provider hears 200.

Two halves in two kinds of process. The web processes (several, sharing the port) verify and parse
webhooks, then `Intake.store` hands each message to the one intake process (`python -m
gateway.intake`) over a private unix socket. The intake process stores all the messages that came
while it was busy in one transaction (group commit: one fsync for the lot), answers, and then
queues their processing, many groups to an rq job. SQLite takes one writer at a time, so a single
writing process loses nothing to lock waits, and the HTTP work gets the other cores (measured in
bench/inbound.py).

A provider's retry of the same message id hits the unique key and is answered without a second
case. If the intake process is away, `store` raises and the provider hears 503 and retries.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from rq import Queue
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from adapters import InboundMessage
from gateway import jobs
from gateway.config import Settings, load_settings
from gateway.logs import setup_logging
from gateway.queues import INBOUND_QUEUE, connect
from gateway.store import InboundRow, insert_for, make_engine, session_factory, utcnow

log = logging.getLogger("gateway.intake")  # not __main__ when run with -m
T = TypeVar("T")
# Stored ids wait this long to share an rq job: building a job holds the GIL the store needs.
LINGER = 0.02


def socket_path(settings: Settings) -> Path:
    return settings.home.resolve() / "intake.sock"


# --- frames: a 4-byte length, then JSON; both ends are our own processes on a 0600 socket ---------


async def read_frame(reader: asyncio.StreamReader) -> Any:
    size = int.from_bytes(await reader.readexactly(4), "big")
    return json.loads(await reader.readexactly(size))


def encode_frame(value: Any) -> bytes:
    """Raises ValueError for what cannot be sent, such as a lone surrogate in a Telegram text."""
    data = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return len(data).to_bytes(4, "big") + data


def as_row(m: InboundMessage) -> list[Any]:
    return [m.channel, m.provider_id, m.sender, m.text, list(m.media), m.kind, m.payload]


def from_row(row: list[Any]) -> InboundMessage:
    channel, provider_id, sender, text, media, kind, payload = row
    return InboundMessage(channel, provider_id, sender, text, tuple(media), kind, payload)


# --- the web processes' side ------------------------------------------------------------------


InFlight = dict[int, list[asyncio.Future[bool]]]


class StoreUnavailable(Exception):
    """The intake process could not store a message; the provider should retry."""


class Intake:
    """What a web process writes: inbound messages through the intake process, small writes here.

    Messages stored in one turn of the event loop go as one frame; answers come back by frame id.
    Delivery reports and the like (`run`) are written by this process, one at a time on a thread.
    """

    def __init__(self, path: Path, engine: Engine, timeout: float = 10.0):
        self._path = path
        self._timeout = timeout  # well inside Twilio's 15 s
        self._waiting: list[tuple[InboundMessage, asyncio.Future[bool]]] = []
        self._frame_ids = itertools.count()
        self._sender: asyncio.Task | None = None
        # The open connection and the callers of each frame sent on it, by frame id.
        self._connection: tuple[asyncio.StreamWriter, InFlight] | None = None
        self._replies: asyncio.Task | None = None
        self._sessions = session_factory(engine)
        self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="store-writer")

    async def store(self, message: InboundMessage) -> bool:
        """Persist the message; True when it is new, False when it is a retry already stored."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((message, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_waiting())
        try:
            async with asyncio.timeout(self._timeout):
                return await future
        except TimeoutError as slow:
            raise StoreUnavailable(f"no answer from the intake process in {self._timeout:.0f} s") from slow

    async def run(self, work: Callable[[Session], T]) -> T:
        """`work(session)` in its own transaction on this process's writer thread."""
        def in_transaction() -> T:
            with self._sessions() as session, session.begin():
                return work(session)

        return await asyncio.get_running_loop().run_in_executor(self._store_thread, in_transaction)

    async def _send_waiting(self) -> None:
        try:
            writer, in_flight = await self._connected()
        except OSError as error:
            log.warning("intake process unreachable: %r", error)
            waiting, self._waiting = self._waiting, []
            _settle([future for _, future in waiting], StoreUnavailable(repr(error)))
            return
        batch, self._waiting = self._waiting, []
        futures = [future for _, future in batch]
        frame_id = next(self._frame_ids)
        try:
            frame = encode_frame([frame_id, [as_row(message) for message, _ in batch]])
        except ValueError as bad:
            log.warning("cannot hand %d messages to the intake process: %s", len(batch), bad)
            _settle(futures, StoreUnavailable(str(bad)))
            return
        in_flight[frame_id] = futures
        writer.write(frame)
        try:  # a slow intake holds the next frame here, so the buffer stays bounded
            await writer.drain()
        except OSError:
            pass  # the reply reader sees the connection go and answers the callers

    async def _connected(self) -> tuple[asyncio.StreamWriter, InFlight]:
        """The connection, opened on first use, waiting a little for an intake process (re)starting."""
        if self._connection is not None and not self._connection[0].is_closing():
            return self._connection
        async with asyncio.timeout(self._timeout / 2):
            while True:
                try:
                    reader, writer = await asyncio.open_unix_connection(self._path)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    await asyncio.sleep(0.05)
        self._connection = writer, {}
        self._replies = asyncio.create_task(self._read_replies(reader, *self._connection))
        return self._connection

    async def _read_replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            in_flight: InFlight) -> None:
        try:
            while True:
                frame_id, outcomes = await read_frame(reader)
                futures = in_flight.pop(frame_id, [])
                if outcomes is None:
                    _settle(futures, StoreUnavailable("the intake process could not store them"))
                    continue
                for future, is_new in zip(futures, outcomes, strict=True):
                    if not future.done():  # a caller that timed out or hung up has a cancelled future
                        future.set_result(is_new)
        except (OSError, ValueError, asyncio.IncompleteReadError) as error:
            log.warning("lost the intake process: %r", error)
        finally:  # whatever it did not answer, the providers retry
            writer.close()
            _settle([f for futures in in_flight.values() for f in futures], StoreUnavailable("intake lost"))

    async def close(self) -> None:
        if self._connection is not None:
            self._connection[0].close()
        if self._replies is not None:
            await asyncio.gather(self._replies, return_exceptions=True)
        self._store_thread.shutdown(wait=True)


def _settle(futures: list[asyncio.Future[bool]], error: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


# --- the intake process -----------------------------------------------------------------------


class IntakeServer:
    """Frames that arrive while a transaction commits are stored together in the next one.

    The store runs on this process's event loop: blocking it is the point of this process, since
    the web processes keep taking requests meanwhile and those come as the next, larger, group.
    """

    def __init__(self, engine: Engine, enqueue: Callable[[list[int]], None]):
        self._engine = engine
        self._insert = (insert_for(engine, InboundRow).on_conflict_do_nothing()
                        .returning(InboundRow.id, InboundRow.channel, InboundRow.provider_id))
        self._waiting: list[tuple[asyncio.StreamWriter, int, list[InboundMessage]]] = []
        self._storer: asyncio.Task | None = None
        self._enqueuer = Enqueuer(enqueue)

    async def serve(self, path: Path, stopping: asyncio.Event) -> None:
        try:
            path.unlink(missing_ok=True)
            server = await asyncio.start_unix_server(self._connection, path)
            path.chmod(0o600)  # only our own user's processes may hand us messages
            log.info("intake listening on %s", path)
            async with server:
                await stopping.wait()
            while self._storer is not None and not self._storer.done():  # the web processes stopped first
                await self._storer
        finally:
            self._enqueuer.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                frame_id, rows = await read_frame(reader)
                self._waiting.append((writer, frame_id, [from_row(row) for row in rows]))
                if self._storer is None or self._storer.done():
                    self._storer = asyncio.create_task(self._store_waiting())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the web process went away; it reconnects
        except ValueError:
            log.exception("a malformed frame: dropping the connection")
        finally:
            writer.close()

    async def _store_waiting(self) -> None:
        frames, self._waiting = self._waiting, []
        messages = [message for _, _, batch in frames for message in batch]
        try:
            stored = self._store(messages)
        except Exception:  # the store is down: every caller hears it, the providers retry
            log.exception("storing %d inbound messages failed", len(messages))
            stored = None
        answered: set[tuple[str, str]] = set()  # a message twice in the group is new only once
        for writer, frame_id, batch in frames:
            outcomes = None if stored is None else [_first_time(m, stored, answered) for m in batch]
            if not writer.is_closing():
                writer.write(encode_frame([frame_id, outcomes]))
        if stored:
            self._enqueuer.add(list(stored.values()))

    def _store(self, messages: list[InboundMessage]) -> dict[tuple[str, str], int]:
        """Insert the new ones in one transaction; (channel, provider id) → row id of those new."""
        now = utcnow()
        values = [{"channel": m.channel, "provider_id": m.provider_id, "sender": m.sender, "text": m.text,
                   "media": list(m.media), "kind": m.kind, "payload": m.payload, "received_at": now}
                  for m in messages]
        # One cached statement run as executemany: SQLAlchemy batches it into multi-row INSERTs;
        # a key already stored (or twice in the batch) is skipped and returns no row.
        with self._engine.begin() as connection:
            rows = connection.execute(self._insert, values).all()
        return {(row.channel, row.provider_id): row.id for row in rows}


def _first_time(message: InboundMessage, stored: dict[tuple[str, str], int], answered: set[tuple[str, str]]
                ) -> bool:
    key = (message.channel, message.provider_id)
    is_new = key in stored and key not in answered
    answered.add(key)
    return is_new


class Enqueuer:
    """Queues processing on a thread, after the providers are answered; the ids stored within
    LINGER are queued together, as few jobs as `jobs.enqueue_inbound` makes of them."""

    def __init__(self, enqueue: Callable[[list[int]], None]):
        self._enqueue = enqueue
        self._ids: queue.SimpleQueue[list[int] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="intake-enqueuer")
        self._thread.start()

    def add(self, ids: list[int]) -> None:
        self._ids.put(ids)

    def close(self) -> None:
        self._ids.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (ids := self._ids.get()) is not None:
            time.sleep(LINGER)
            closing = False
            while not closing and not self._ids.empty():
                more = self._ids.get()
                closing = more is None
                ids += more or []
            try:
                self._enqueue(ids)
            except Exception:  # Redis away: the rows are safe, the sweeper queues what is not
                log.exception("enqueueing %d inbound messages failed; the sweeper will retry", len(ids))
            if closing:
                return


async def serve(settings: Settings) -> None:
    engine = make_engine(settings.sqlalchemy_url)
    inbound = Queue(INBOUND_QUEUE, connection=connect(settings.redis_url))
    server = IntakeServer(engine, lambda ids: jobs.enqueue_inbound(inbound, ids))
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    await server.serve(socket_path(settings), stopping)
    engine.dispose()


def main() -> None:
    setup_logging()
    asyncio.run(serve(load_settings()))


if __name__ == "__main__":
    main()
