"""The rq side of broadcasts: fan-out jobs, send jobs, and the sweep that makes them durable.

- `fanout_job(broadcast_id)` streams the audience in keyset pages, inserts one delivery row per
  resident (INSERT ... ON CONFLICT DO NOTHING: running again after a crash adds nobody twice),
  saves its cursor in the same transaction, and enqueues one send job per page of new ids. After
  FANOUT_PAGES pages it enqueues its own continuation, so no job runs long and sends interleave.
- `send_job(broadcast_id, ids)` takes tokens from the shared rate limits, claims that many rows
  with one UPDATE (pending → sending), sends them concurrently, and records every outcome in one
  transaction. A blocked Telegram chat falls back to SMS; 429 / 5xx retry with backoff.
- `sweep(ctx)` (called by `gateway.roles.sweeper` every few seconds) starts broadcasts that are due,
  reconciles deliveries stuck in `sending` with the provider (a dead worker's), and, when the
  queue has drained, re-enqueues whatever the store still shows unfinished: rq loses the jobs of
  a killed worker (FACTS.md), the store does not.
Jobs carry ids only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from rq import Queue
from sqlalchemy import Insert, bindparam, case, select, update
from sqlalchemy.orm import Session, sessionmaker

from adapters import SendError
from adapters.telegram import TelegramClient
from broadcasts import service
from broadcasts.audience import GridTree
from broadcasts.models import BroadcastRow, DeliveryRow
from broadcasts.senders import Claimed, Unsure, send_sms, send_telegram, twilio_client
from broadcasts.templates import Renderer, sms_body, sms_cost
from gateway.config import Settings
from gateway.delivery.outbox import CLOCK_SKEW, MAX_ATTEMPTS, backoff
from gateway.delivery.ratelimit import TokenBucket
from gateway.queues import INBOUND_QUEUE
from gateway.roles import jobs
from gateway.store import insert_for, utcnow

log = logging.getLogger(__name__)

BROADCAST_QUEUE = "broadcast"
FANOUT_PAGES = 20  # pages per fan-out job before it hands over to its continuation
JOB_BUDGET = 10.0  # seconds a send job may spend waiting for tokens before it re-enqueues the rest


@dataclass
class Broadcasting:
    """Per worker process: settings, store, the broadcast queue, the shared rate limits."""

    settings: Settings
    sessions: sessionmaker[Session]
    queue: Queue
    sms_bucket: TokenBucket
    telegram_bucket: TokenBucket
    telegram: TelegramClient | None  # None: no bot configured, everyone gets SMS


def telegram_client(settings: Settings) -> TelegramClient | None:
    """The residents' bot (notices go to residents, never through the workers' bot)."""
    token = settings.telegram_tokens.get("resident")
    return TelegramClient(token, settings.telegram_base) if token else None


def broadcasting(ctx: jobs.WorkerContext) -> Broadcasting:
    connection = ctx.queues[INBOUND_QUEUE].connection
    s = ctx.settings
    return Broadcasting(
        s, ctx.sessions, Queue(BROADCAST_QUEUE, connection=connection),
        TokenBucket(connection, "sms", s.sms_rate_limit),
        TokenBucket(connection, "telegram", s.telegram_rate_limit, item_rate=s.telegram_chat_rate_limit),
        telegram_client(s))


@cache
def _here() -> Broadcasting:
    return broadcasting(jobs.context())


def enqueue_fanout(queue: Queue, broadcast_id: int) -> None:
    queue.enqueue(fanout_job, broadcast_id, **jobs.JOB_OPTIONS)


def enqueue_send(queue: Queue, broadcast_id: int, ids: list[int], delay: timedelta | None = None) -> None:
    if delay:
        queue.enqueue_in(delay, send_job, broadcast_id, ids, **jobs.JOB_OPTIONS)
    else:
        queue.enqueue(send_job, broadcast_id, ids, **jobs.JOB_OPTIONS)


# --- fan-out ----------------------------------------------------------------------------------------


def fanout_job(broadcast_id: int) -> None:
    here = _here()
    if not fan_out(here, broadcast_id):
        enqueue_fanout(here.queue, broadcast_id)


def _new_deliveries(session: Session) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id: a resident already given a delivery is skipped."""
    return insert_for(session, DeliveryRow).on_conflict_do_nothing().returning(DeliveryRow.id)


def fan_out(here: Broadcasting, broadcast_id: int, pages: int = FANOUT_PAGES) -> bool:
    """Create up to `pages` pages of deliveries and enqueue their sends; True when the audience is done."""
    settings = here.settings
    with here.sessions() as session:
        broadcast = session.get(BroadcastRow, broadcast_id)
        if broadcast is None or broadcast.state != "sending" or broadcast.fanout_done:
            return True
        tree = GridTree.load(session)
        where = service.recipients_where(session, tree, broadcast.audience, broadcast.scope, broadcast.emergency)
        renderer = Renderer.load(session, broadcast.templates)
        cursor = broadcast.fanout_cursor
        pages_left = pages
        for page in service.stream_residents(session, where, after=cursor, page=settings.broadcast_batch):
            now = utcnow()
            values = [{"broadcast_id": broadcast_id, "resident_id": r.id, "phone": r.phone,
                       "channel": "telegram" if r.telegram_chat_id is not None and here.telegram else "sms",
                       "telegram_chat_id": r.telegram_chat_id, "state": "pending", "attempts": 0,
                       "next_attempt_at": now, "updated_at": now,
                       "text": renderer.render(r.language, r.name, r.grid_code)} for r in page]
            # executemany (SQLAlchemy's insertmanyvalues): one cached statement, sent as multi-row
            # INSERTs; `.values(list)` compiled a fresh 500-row statement per page (~40% of a worker).
            ids = list(session.connection().execute(_new_deliveries(session), values).scalars())
            session.execute(update(BroadcastRow).where(BroadcastRow.id == broadcast_id)
                            .values(fanout_cursor=page[-1].id, updated_at=now))
            session.commit()
            if ids:
                enqueue_send(here.queue, broadcast_id, sorted(ids))
            pages_left -= 1
            if pages_left == 0:
                return False
        session.execute(update(BroadcastRow).where(BroadcastRow.id == broadcast_id)
                        .values(fanout_done=True, updated_at=utcnow()))
        service.finish_if_complete(session, broadcast_id, utcnow())
        session.commit()
    return True


# --- sending ----------------------------------------------------------------------------------------


def send_job(broadcast_id: int, ids: list[int]) -> None:
    here = _here()
    leftover = asyncio.run(send_batch(here, broadcast_id, ids))
    if leftover:
        enqueue_send(here.queue, broadcast_id, leftover)


def _sendable(session: Session, here: Broadcasting, broadcast_id: int, now: datetime) -> bool:
    broadcast = session.get(BroadcastRow, broadcast_id)
    return (broadcast is not None and broadcast.state == "sending"
            and service.allowed_now(here.settings, broadcast, now))


def _pending(session: Session, ids: list[int], now: datetime) -> list:
    return session.execute(select(DeliveryRow.id, DeliveryRow.channel, DeliveryRow.text,
                                  DeliveryRow.telegram_chat_id)
                           .where(DeliveryRow.id.in_(ids), DeliveryRow.state == "pending",
                                  DeliveryRow.next_attempt_at <= now)
                           .order_by(DeliveryRow.id)).all()


def _granted(here: Broadcasting, rows: list) -> tuple[list[int], float]:
    """The ids the rate limits let go now, and how long to wait for the rest."""
    sms = [r for r in rows if r.channel == "sms"]
    telegram = [r for r in rows if r.channel == "telegram"]
    signature, unit = here.settings.sms_signature, here.settings.sms_rate_unit
    sms_ok, sms_wait = here.sms_bucket.take([sms_cost(sms_body(signature, r.text), unit) for r in sms])
    tg_ok, tg_wait = here.telegram_bucket.take([1] * len(telegram), [str(r.telegram_chat_id) for r in telegram])
    granted = [r.id for r, ok in zip(sms, sms_ok, strict=True) if ok]
    granted += [r.id for r, ok in zip(telegram, tg_ok, strict=True) if ok]
    waits = [w for w in (sms_wait, tg_wait) if w > 0]
    return granted, min(waits, default=0.0)


def _claim(session: Session, ids: list[int], now: datetime) -> list[Claimed]:
    """pending → sending in one UPDATE: a row another job claimed first is simply not returned."""
    rows = session.execute(update(DeliveryRow)
                           .where(DeliveryRow.id.in_(ids), DeliveryRow.state == "pending")
                           .values(state="sending", attempts=DeliveryRow.attempts + 1, updated_at=now)
                           .returning(DeliveryRow.id, DeliveryRow.channel, DeliveryRow.phone,
                                      DeliveryRow.telegram_chat_id, DeliveryRow.text, DeliveryRow.attempts)
                           ).all()
    session.commit()
    return [Claimed(*row) for row in rows]


async def send_batch(here: Broadcasting, broadcast_id: int, ids: list[int]) -> list[int]:
    """Send what may go now; returns ids left for a later job when the time budget ran out."""
    settings = here.settings
    deadline = time.monotonic() + JOB_BUDGET
    remaining = list(ids)
    async with twilio_client(settings, settings.broadcast_concurrency) as client:
        limit = asyncio.Semaphore(settings.broadcast_concurrency)

        async def attempt(delivery: Claimed) -> str | Exception:
            async with limit:
                try:
                    if delivery.channel == "telegram":
                        return await send_telegram(here.telegram, delivery)
                    return await send_sms(client, settings, delivery)
                except (SendError, Unsure) as error:
                    return error

        while remaining:
            with here.sessions() as session:
                now = utcnow()
                if not _sendable(session, here, broadcast_id, now):
                    return []  # paused, cancelled or quiet hours: the sweep picks the rows up later
                rows = _pending(session, remaining, now)
                if not rows:
                    break
                granted, wait = _granted(here, rows)
                claimed = _claim(session, granted, now) if granted else []
                if claimed:
                    results = await asyncio.gather(*(attempt(d) for d in claimed))
                    fallback = _record(here, session, broadcast_id, claimed, results)
                    service.finish_if_complete(session, broadcast_id, utcnow())
                    session.commit()
                    if fallback:
                        continue  # those rows are pending again, on SMS now: send them at once
                waiting_for = {r.id for r in rows} - set(granted)
            remaining = [i for i in remaining if i in waiting_for]
            if remaining:
                if time.monotonic() + wait > deadline:
                    return remaining
                await asyncio.sleep(max(wait, 0.01))
    return []


def _record(here: Broadcasting, session: Session, broadcast_id: int, claimed: list[Claimed],
            results: list[str | Exception]) -> bool:
    """All outcomes of one chunk in one transaction; True when some rows fell back to SMS."""
    now = utcnow()
    sent, failed, retry, fallback = [], [], defaultdict(list), []
    for delivery, result in zip(claimed, results, strict=True):
        if isinstance(result, str):
            sent.append({"b_id": delivery.id, "b_provider_id": result})
        elif isinstance(result, Unsure):
            log.warning("delivery %s: %s; left for reconciliation", delivery.id, result)
        elif delivery.channel == "telegram" and not result.retryable:
            fallback.append({"b_id": delivery.id, "b_error": f"telegram {result.code or ''} {result}".strip()})
        elif result.retryable and delivery.attempts < MAX_ATTEMPTS:
            delay = max(backoff(delivery.attempts), timedelta(seconds=result.retry_after or 0))
            retry[delay].append({"b_id": delivery.id, "b_error": str(result), "b_due": now + delay})
        else:
            failed.append({"b_id": delivery.id, "b_error": f"{result.code or ''} {result}".strip()})
    table = DeliveryRow.__table__
    by_id = table.c.id == bindparam("b_id")
    connection = session.connection()
    if sent:  # a delivery report may already have moved it further: only `sending` becomes `sent`
        connection.execute(update(table).where(by_id).values(
            state=case((table.c.state == "sending", "sent"), else_=table.c.state),
            provider_id=bindparam("b_provider_id"), updated_at=now), sent)
    if failed:
        connection.execute(update(table).where(by_id).values(state="failed", last_error=bindparam("b_error"),
                                                             updated_at=now), failed)
    for rows in retry.values():
        connection.execute(update(table).where(by_id).values(
            state="pending", last_error=bindparam("b_error"), next_attempt_at=bindparam("b_due"),
            updated_at=now), rows)
    if fallback:
        connection.execute(update(table).where(by_id).values(
            state="pending", channel="sms", last_error=bindparam("b_error"), next_attempt_at=now,
            updated_at=now), fallback)
    session.commit()
    for delay, rows in retry.items():
        enqueue_send(here.queue, broadcast_id, [row["b_id"] for row in rows], delay)
    return bool(fallback)


# --- the sweep --------------------------------------------------------------------------------------


def reconcile_stuck(here: Broadcasting, sms_sender, now: datetime) -> int:
    """Deliveries left `sending` by a dead worker: sent after all (the provider has it), or pending again.

    SMS is matched by recipient and body in Twilio's message list. Telegram cannot list what a bot
    sent, so an unconfirmed Telegram message is not resent (that could make two): it is marked
    failed with the reason, for an operator to follow up.
    """
    cutoff = now - timedelta(seconds=here.settings.broadcast_claim_timeout)
    fixed = 0
    with here.sessions() as session:
        stuck = session.scalars(select(DeliveryRow).where(DeliveryRow.state == "sending",
                                                          DeliveryRow.updated_at < cutoff).limit(1000)).all()
        for row in stuck:
            if row.channel == "sms":
                body = sms_body(here.settings.sms_signature, row.text)
                provider_id = sms_sender.find_sent(row.phone, body, row.updated_at - CLOCK_SKEW)
                row.state, row.provider_id = ("sent", provider_id) if provider_id else ("pending", None)
            else:
                row.state, row.last_error = "failed", "unconfirmed: the worker stopped while sending; not resent"
            row.next_attempt_at = row.updated_at = now
            fixed += 1
        session.commit()
    return fixed


def sweep(ctx: jobs.WorkerContext) -> dict[str, int]:
    """Start due broadcasts; when the queue is empty, recover whatever a dead worker was holding."""
    here = _here()
    now = utcnow()
    stale = now - timedelta(seconds=here.settings.stale_after)
    found = {"started": 0, "reconciled": 0, "fanouts": 0, "deliveries": 0}
    with here.sessions() as session:
        for broadcast_id in service.start_due(session, here.settings, now):
            enqueue_fanout(here.queue, broadcast_id)
            found["started"] += 1
    if here.queue.count:
        return found
    found["reconciled"] = reconcile_stuck(here, ctx.senders["sms"], now)
    batch = here.settings.broadcast_batch
    with here.sessions() as session:
        for broadcast in session.scalars(select(BroadcastRow).where(BroadcastRow.state == "sending")).all():
            if not service.allowed_now(here.settings, broadcast, now):
                continue
            if not broadcast.fanout_done and broadcast.updated_at < stale:
                enqueue_fanout(here.queue, broadcast.id)
                found["fanouts"] += 1
            ids = list(session.scalars(select(DeliveryRow.id).where(
                DeliveryRow.broadcast_id == broadcast.id, DeliveryRow.state == "pending",
                DeliveryRow.next_attempt_at < stale).order_by(DeliveryRow.id).limit(20 * batch)))
            for start in range(0, len(ids), batch):
                enqueue_send(here.queue, broadcast.id, ids[start:start + batch])
            found["deliveries"] += len(ids)
            service.finish_if_complete(session, broadcast.id, now)
        session.commit()
    return found
