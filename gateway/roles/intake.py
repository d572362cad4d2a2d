"""Receive and store: inbound messages are durable before the provider hears 200.

Two halves in two kinds of process. The web processes (several, sharing the port) verify and parse
webhooks, then `Intake.store` hands each message to the one intake process (`python -m
gateway.roles.intake`) over a private unix socket. The intake process stores all the messages that came
while it was busy in one transaction (group commit: one fsync for the lot), answers, and then
queues their processing, many groups to an rq job. SQLite takes one writer at a time, so a single
writing process loses nothing to lock waits, and the HTTP work gets the other cores (measured in
bench/inbound.py).

A provider's retry of the same message id hits the unique key and is answered without a second
case. If the intake process is away, `store` raises and the provider hears 503 and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from rq import Queue
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from adapters import InboundMessage
from gateway.config import Settings, load_settings
from gateway.logs import setup_logging
from gateway.queues import INBOUND_QUEUE, connect
from gateway.roles import jobs
from gateway.store import InboundRow, insert_for, make_engine, session_factory, utcnow
from gateway.strict import storable

log = logging.getLogger("gateway.roles.intake")  # not __main__ when run with -m
T = TypeVar("T")
# Stored ids wait this long to share an rq job: building a job holds the GIL the store needs.
LINGER = 0.02


def socket_path(settings: Settings) -> Path:
    return settings.home.resolve() / "intake.sock"


# --- frames: a 4-byte length, then JSON; both ends are our own processes on a 0600 socket ---------


def encode_frame(value: Any) -> bytes:
    """Raises ValueError for what cannot be sent, such as a lone surrogate in a Telegram text."""
    data = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return len(data).to_bytes(4, "big") + data


def encode_batch(frame_id: int, rows: list[list[Any]]) -> bytes:
    """One frame for a batch of message rows, each message made storable on its own if need be.

    The whole batch is encoded at once (the hot path). Only when that fails, or when it holds a
    NUL (which PostgreSQL cannot store, and which would fail the group's transaction), is each
    row encoded alone, its NULs and lone surrogates replaced by U+FFFD: the resident's message
    is kept and answered, and no neighbour in the frame is failed with it.
    """
    try:
        frame = encode_frame([frame_id, rows])
        if b"\\u0000" not in frame:  # json.dumps writes NUL as \u0000 even with ensure_ascii off
            return frame
    except ValueError:
        pass
    data = b"[%d,[" % frame_id + b",".join(_encode_row(row) for row in rows) + b"]]"
    return len(data).to_bytes(4, "big") + data


def _encode_row(row: list[Any]) -> bytes:
    try:
        data = json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode()
        if b"\\u0000" not in data:
            return data
    except ValueError:
        pass
    return json.dumps(storable(row), ensure_ascii=False, separators=(",", ":")).encode()


class FrameReader:
    """Cuts the byte stream of a connection into decoded frames; ValueError for a malformed one."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= 4:
            end = 4 + int.from_bytes(self._buffer[:4], "big")
            if len(self._buffer) < end:
                break
            frames.append(json.loads(self._buffer[4:end]))
            del self._buffer[:end]
        return frames


def as_row(m: InboundMessage) -> list[Any]:
    return [m.channel, m.provider_id, m.sender, m.text, list(m.media), m.kind, m.payload]


def from_row(row: list[Any]) -> InboundMessage:
    channel, provider_id, sender, text, media, kind, payload = row
    return InboundMessage(channel, provider_id, sender, text, tuple(media), kind, payload)


# --- the web processes' side ------------------------------------------------------------------


class StoreUnavailable(Exception):
    """The intake process could not store a message; the provider should retry."""


@dataclass(eq=False)
class Batch:
    """The messages stored in one turn of a web process's event loop: one frame, one deadline."""

    frame: bytes
    frame_id: int
    futures: list[asyncio.Future[bool]]
    deadline: asyncio.TimerHandle | None = None

    def fail(self, error: Exception) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        _settle(self.futures, error)


class Intake:
    """What a web process writes: inbound messages through the intake process, small writes here.

    Messages stored in one turn of the event loop go as one frame; answers come back by frame id.
    Delivery reports and the like (`run`) are written by this process, one at a time on a thread.
    """

    def __init__(self, path: Path, engine: Engine, timeout: float = 10.0):
        self._path = path
        self._timeout = timeout  # well inside Twilio's 15 s
        self._waiting: list[tuple[InboundMessage, asyncio.Future[bool]]] = []
        self._unsent: list[Batch] = []  # while connecting, or while the socket's buffer is full
        self._frame_ids = itertools.count()
        self._connection: IntakeConnection | None = None
        self._connecting: asyncio.Task | None = None
        self._closed = False
        self._sessions = session_factory(engine)
        self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="store-writer")

    async def store(self, message: InboundMessage) -> bool:
        """Persist the message; True when it is new, False when it is a retry already stored."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if not self._waiting:  # the first this turn: the lot goes when the turn is over
            asyncio.get_running_loop().call_soon(self._hand_over)
        self._waiting.append((message, future))
        return await future

    async def run(self, work: Callable[[Session], T]) -> T:
        """`work(session)` in its own transaction on this process's writer thread."""
        def in_transaction() -> T:
            with self._sessions() as session, session.begin():
                return work(session)

        return await asyncio.get_running_loop().run_in_executor(self._store_thread, in_transaction)

    def _hand_over(self) -> None:
        waiting, self._waiting = self._waiting, []
        futures = [future for _, future in waiting]
        frame_id = next(self._frame_ids)
        batch = Batch(encode_batch(frame_id, [as_row(message) for message, _ in waiting]), frame_id, futures)
        batch.deadline = asyncio.get_running_loop().call_later(self._timeout, self._expire, batch)
        self._unsent.append(batch)
        self._send_unsent()

    def _expire(self, batch: Batch) -> None:
        """Its callers hear 503 and the provider retries; a batch not sent yet is not sent at all."""
        if batch in self._unsent:
            self._unsent.remove(batch)
        batch.fail(StoreUnavailable(f"no answer from the intake process in {self._timeout:.0f} s"))

    def _send_unsent(self) -> None:
        if self._closed:
            self._fail_unsent(StoreUnavailable("the web process is stopping"))
            return
        connection = self._connection
        if connection is None or connection.lost:
            if self._connecting is None or self._connecting.done():
                self._connecting = asyncio.create_task(self._connect())
            return
        while self._unsent and not connection.paused:  # paused: the intake is slow, hold the rest here
            connection.send(self._unsent.pop(0))

    def _fail_unsent(self, error: StoreUnavailable) -> None:
        unsent, self._unsent = self._unsent, []
        for batch in unsent:
            batch.fail(error)

    async def _connect(self) -> None:
        """Open the connection, waiting a little for an intake process (re)starting."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout / 2):
                while True:
                    try:
                        _, self._connection = await loop.create_unix_connection(
                            lambda: IntakeConnection(self._send_unsent), self._path)
                        break
                    except (FileNotFoundError, ConnectionRefusedError):
                        await asyncio.sleep(0.05)
        except OSError as error:  # TimeoutError included
            log.warning("intake process unreachable: %r", error)
            self._fail_unsent(StoreUnavailable(repr(error)))
            return
        self._connecting = None  # if the connection is already gone, the next send opens another
        self._send_unsent()

    async def close(self) -> None:
        self._closed = True
        self._send_unsent()  # fails what was not sent
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            await self._connection.close()
        self._store_thread.shutdown(wait=True)


class IntakeConnection(asyncio.Protocol):
    """A web process's connection to the intake process: sends batches, settles them by frame id."""

    def __init__(self, writable: Callable[[], None]):
        self._writable = writable
        self._transport: asyncio.Transport | None = None
        self._frames = FrameReader()
        self._in_flight: dict[int, Batch] = {}
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.paused = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def send(self, batch: Batch) -> None:
        self._in_flight[batch.frame_id] = batch
        self._transport.write(batch.frame)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._frames.feed(data)
        except ValueError as bad:
            log.warning("a malformed answer from the intake process: %s", bad)
            self._transport.abort()  # connection_lost fails what is in flight
            return
        for frame_id, outcomes in frames:
            batch = self._in_flight.pop(frame_id, None)
            if batch is None:
                continue
            if not (isinstance(outcomes, list) and len(outcomes) == len(batch.futures)):
                batch.fail(StoreUnavailable("the intake process could not store them"))
                continue
            batch.deadline.cancel()
            for future, is_new in zip(batch.futures, outcomes, strict=True):
                if not future.done():  # its caller timed out or hung up
                    future.set_result(bool(is_new))

    def connection_lost(self, error: Exception | None) -> None:
        """Whatever it did not answer, the providers retry."""
        self.lost = True
        if error is not None or self._in_flight:
            log.warning("lost the intake process: %r", error)
        for batch in self._in_flight.values():
            batch.fail(StoreUnavailable("intake lost"))
        self._in_flight.clear()
        self._closed.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._writable()

    async def close(self) -> None:
        self._transport.abort()  # not close(): that would wait for an intake that may not read any more
        await self._closed


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
        self._insert = insert_on_sqlite if engine.dialect.name == "sqlite" else insert_with_core
        self._waiting: list[tuple[asyncio.Transport, int, list[InboundMessage]]] = []
        self._storer: asyncio.Task | None = None
        self._enqueuer = Enqueuer(enqueue)

    async def serve(self, path: Path, stopping: asyncio.Event) -> None:
        try:
            path.unlink(missing_ok=True)
            server = await asyncio.get_running_loop().create_unix_server(lambda: WebProcessConnection(self), path)
            path.chmod(0o600)  # only our own user's processes may hand us messages
            log.info("intake listening on %s", path)
            async with server:
                await stopping.wait()
            while self._storer is not None and not self._storer.done():  # the web processes stopped first
                await self._storer
        finally:
            self._enqueuer.close()

    def take(self, transport: asyncio.Transport, frame_id: int, messages: list[InboundMessage]) -> None:
        """A web process's frame: stored with everything else that arrives before the next store."""
        self._waiting.append((transport, frame_id, messages))
        if self._storer is None or self._storer.done():
            self._storer = asyncio.create_task(self._store_waiting())

    async def _store_waiting(self) -> None:
        frames, self._waiting = self._waiting, []
        messages = [message for _, _, batch in frames for message in batch]
        try:
            stored = self._store(messages)
        except Exception:  # the store is down: every caller hears it, the providers retry
            log.exception("storing %d inbound messages failed", len(messages))
            stored = None
        answered: set[tuple[str, str]] = set()  # a message twice in the group is new only once
        answers: dict[asyncio.Transport, list[bytes]] = {}  # one write per web process
        for transport, frame_id, batch in frames:
            outcomes = None if stored is None else [_first_time(m, stored, answered) for m in batch]
            answers.setdefault(transport, []).append(encode_frame([frame_id, outcomes]))
        for transport, encoded in answers.items():
            if not transport.is_closing():
                transport.write(b"".join(encoded))
        if stored:
            self._enqueuer.add(list(stored.values()))

    def _store(self, messages: list[InboundMessage]) -> dict[tuple[str, str], int]:
        """Insert the new ones in one transaction; (channel, provider id) → row id of those new."""
        with self._engine.begin() as connection:
            rows = self._insert(connection, messages, utcnow())
        return {(channel, provider_id): row_id for row_id, channel, provider_id in rows}


# Both inserts skip a key already stored (or twice in the batch): it returns no (id, channel, provider id).
# The columns in `as_row`'s order, then the time received.
COLUMNS = ("channel", "provider_id", "sender", "text", "media", "kind", "payload", "received_at")
SQLITE_ROWS_PER_INSERT = 1000  # 8 parameters a row, within SQLite's 32,766


def insert_with_core(connection: Connection, messages: list[InboundMessage], now: datetime
                     ) -> list[tuple[int, str, str]]:
    """Any database: one cached statement run as executemany, batched by SQLAlchemy into multi-row INSERTs."""
    values = [dict(zip(COLUMNS, [*as_row(m), now], strict=True)) for m in messages]
    statement = (insert_for(connection.engine, InboundRow).on_conflict_do_nothing()
                 .returning(InboundRow.id, InboundRow.channel, InboundRow.provider_id))
    return [tuple(row) for row in connection.execute(statement, values)]


def insert_on_sqlite(connection: Connection, messages: list[InboundMessage], now: datetime
                     ) -> list[tuple[int, str, str]]:
    """SQLite: the same multi-row INSERT, its values bound straight through the driver.

    This is the gateway's hottest statement, and SQLAlchemy's handling of every row's parameters
    costs about as much as SQLite's insert itself. The values are converted by the columns' own
    SQLAlchemy types, so what is stored is exactly what `insert_with_core` stores (tested).
    """
    media_json, payload_json = _bind_processor(connection, "media"), _bind_processor(connection, "payload")
    received_at = _bind_processor(connection, "received_at")(now)
    rows = []
    # The driver's cursor on the transaction's own connection: pysqlite opens the transaction
    # before an INSERT by itself, and `engine.begin()` commits or rolls it back as usual.
    with contextlib.closing(connection.connection.cursor()) as cursor:
        for start in range(0, len(messages), SQLITE_ROWS_PER_INSERT):
            chunk = messages[start:start + SQLITE_ROWS_PER_INSERT]
            values = [value for m in chunk for value in (m.channel, m.provider_id, m.sender, m.text,
                                                          media_json(list(m.media)), m.kind, payload_json(m.payload),
                                                          received_at)]
            rows += cursor.execute(_sqlite_insert(len(chunk)), values).fetchall()
    return rows


def _bind_processor(connection: Connection, column: str) -> Callable[[Any], Any]:
    """How SQLAlchemy converts a value of this column for the connection's driver."""
    kind = InboundRow.__table__.c[column].type.dialect_impl(connection.dialect)
    return kind.bind_processor(connection.dialect) or (lambda value: value)


@functools.lru_cache(maxsize=256)
def _sqlite_insert(count: int) -> str:
    one_row = "(" + ", ".join("?" * len(COLUMNS)) + ")"
    return (f"INSERT INTO {InboundRow.__tablename__} ({', '.join(COLUMNS)}) VALUES {', '.join([one_row] * count)}"
            " ON CONFLICT DO NOTHING RETURNING id, channel, provider_id")


def _first_time(message: InboundMessage, stored: dict[tuple[str, str], int], answered: set[tuple[str, str]]
                ) -> bool:
    key = (message.channel, message.provider_id)
    is_new = key in stored and key not in answered
    answered.add(key)
    return is_new


class WebProcessConnection(asyncio.Protocol):
    """One web process's connection: its frames go to the server as they arrive."""

    def __init__(self, server: IntakeServer):
        self._server = server
        self._frames = FrameReader()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            for frame_id, rows in self._frames.feed(data):
                self._server.take(self._transport, frame_id, [from_row(row) for row in rows])
        except (ValueError, TypeError):
            log.exception("a malformed frame: dropping the connection")  # the web process reconnects
            self._transport.close()


class Enqueuer:
    """Queues processing on a thread, after the providers are answered; the ids stored within
    LINGER are queued together, as few jobs as `jobs.enqueue_inbound` makes of them. A failure here
    never reaches a provider: the messages are stored, and the sweeper queues unprocessed rows."""

    def __init__(self, enqueue: Callable[[list[int]], None]):
        self._enqueue = enqueue
        self._failing = False  # logged once per failure streak: an outage is not a flood of tracebacks
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
            except Exception:  # Redis away: the rows are stored and answered, the sweeper queues them
                if not self._failing:
                    log.exception("queueing stored messages failed; the sweeper queues them once Redis is back")
                self._failing = True
            else:
                if self._failing:
                    log.info("queueing stored messages works again")
                self._failing = False
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
