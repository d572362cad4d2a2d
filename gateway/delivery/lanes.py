"""A lane: one channel's sender. Each channel (SMS, each Telegram bot, ...) sends from its own
process with its own rate limit, so a slow or limited channel never delays another; within a lane,
replies and task alerts (`send:<channel>:urgent`) go before broadcast notices (`send:<channel>:bulk`),
and a bulk job gives the lane back as soon as an urgent job waits (or after BULK_BUDGET), so an
acknowledgement never waits long behind a broadcast.

A job's rows are taken from the shared rate limit, claimed pending → sending with one UPDATE (a row
another job claimed first is simply not returned), sent concurrently through the channel, and every
outcome is recorded in one transaction:
- accepted: `sent` (unless a report already moved it further);
- retryable failure (429, 5xx, network): pending again after a backoff; waiting for our turn or for
  Telegram's retry_after is not a failed attempt, and a provider we cannot reach at all is waited
  for however long it takes (backoff capped at five minutes): an outage fails nothing;
- final failure on a chat channel: the message goes by SMS when the resident's phone is known
  (a user who blocked the bot is remembered as blocked);
- unknown fate (`Unsure`): left `sending`, to be reconciled with the provider before anyone resends.
A Redis error in the rate limit leaves the rows pending for the sweeper: never failed for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import redis
from sqlalchemy import and_, bindparam, case, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from adapters import Channel, Outgoing, SendError, Unsure
from gateway import metrics
from gateway.delivery import outbox
from gateway.delivery.ratelimit import TokenBucket
from gateway.logs import mask
from gateway.store import ContactRow, DeliveryRow, utcnow
from gateway.world import SMS

log = logging.getLogger(__name__)

URGENT_BUDGET = 10.0  # seconds a job may wait for tokens before handing the rest back to its queue
BULK_BUDGET = 1.0  # a broadcast job yields sooner: an acknowledgement may be waiting behind it
BULK_ROUND = 100  # notices claimed at a time: between two, a bulk job yields to a waiting urgent one
# Failures that say nothing about the message: the provider's flood control, and a provider we
# could not reach at all. They are retried until the provider answers.
WAIT_OUT = ("rate_limited", "network")


class BroadcastRules(Protocol):
    """What a lane must know of broadcasts, which live above the delivery layer."""

    def held(self, session: Session, broadcast_ids: set[int], now: datetime) -> set[int]:
        """Those of `broadcast_ids` that may not send now (paused, cancelled, quiet hours)."""

    def recorded(self, session: Session, broadcast_ids: set[int], now: datetime) -> None:
        """Some of these broadcasts' deliveries just got an outcome (a broadcast may be done)."""


@dataclass(frozen=True)
class Claimed:
    """A row this job owns: claimed pending → sending."""

    id: int
    kind: str
    recipient: str
    body: str
    markup: dict | None
    attempts: int
    broadcast_id: int | None
    fallback_phone: str | None


_CLAIMED_COLUMNS = (DeliveryRow.id, DeliveryRow.kind, DeliveryRow.recipient, DeliveryRow.body, DeliveryRow.markup,
                    DeliveryRow.attempts, DeliveryRow.broadcast_id, DeliveryRow.fallback_phone)


class Lane:
    def __init__(self, channel: Channel, sessions: sessionmaker[Session], connection: redis.Redis, *,
                 concurrency: int, sms_signature: str = "", broadcasts: BroadcastRules | None = None,
                 enqueue: Callable[[list[outbox.Queued], timedelta | None], None] | None = None):
        self.channel = channel
        self.sessions = sessions
        self.connection = connection
        self.concurrency = concurrency
        self.sms_signature = sms_signature  # for a notice that falls back from a chat to SMS
        self.broadcasts = broadcasts
        self.enqueue = enqueue or (lambda items, delay: outbox.enqueue(connection, items, delay))
        limits = channel.limits
        self.bucket = TokenBucket(connection, f"lane:{channel.name}", limits.rate,
                                  item_rate=limits.per_address_rate)

    async def run(self, ids: list[int], priority: str) -> list[int]:
        """Send what may go now; returns the ids left when the job's time budget ran out."""
        deadline = time.monotonic() + (BULK_BUDGET if priority == outbox.BULK else URGENT_BUDGET)
        remaining = list(ids)
        limit = asyncio.Semaphore(self.concurrency)

        async def attempt(row: Claimed) -> str | Exception:
            async with limit:
                try:
                    return await self.channel.send(Outgoing(row.id, row.recipient, row.body, row.markup))
                except (SendError, Unsure) as error:
                    return error
                except Exception as error:  # a bug in one send fails that row, not the batch
                    log.exception("delivery %s on %s could not be sent", row.id, self.channel.name)
                    return SendError(f"{type(error).__name__}: {error}", retryable=False, code="bug")

        urgent = priority == outbox.URGENT
        if urgent:
            self._stop_waiting()
        while True:
            # An urgent job takes every reply and alert due on this channel, its own first: under
            # load the lane sends many per claim and per commit (bench/ack_latency.py: one commit
            # per job held acknowledgements to the pace of the store's fsyncs), and producers add
            # no job while one waits (outbox.enqueue). A bulk job takes BULK_ROUND of its own at a
            # time and hands the rest back as soon as an urgent job waits.
            claimed, remaining, wait, more = self._take(
                remaining, also_due=urgent, limit=outbox.IDS_PER_JOB if urgent else BULK_ROUND)
            if claimed:
                results = await asyncio.gather(*(attempt(row) for row in claimed))
                self._record(claimed, results)
            if not remaining and not more:
                return []
            if not urgent and self._urgent_waiting():
                return remaining
            if wait:  # the rate limit holds the rest back
                if time.monotonic() + wait > deadline:
                    return remaining
                await asyncio.sleep(wait)
            elif time.monotonic() > deadline:
                return remaining  # an urgent job's `more` is the next urgent job's, or the sweeper's

    def _urgent_waiting(self) -> bool:
        try:
            return bool(self.connection.exists(outbox.urgent_waiting_key(self.channel.name)))
        except redis.RedisError:
            return False  # the budget still ends the job

    def _stop_waiting(self) -> None:
        """This job now looks for due rows: a row committed from here on needs a job of its own."""
        try:
            self.connection.delete(outbox.urgent_waiting_key(self.channel.name))
        except redis.RedisError as error:  # the key expires by itself
            log.warning("%s lane: cannot clear its waiting mark (%s)", self.channel.name, error)

    def _take(self, ids: list[int], *, also_due: bool, limit: int
              ) -> tuple[list[Claimed], list[int], float, bool]:
        """Claim up to `limit` rows, as many as the rate limit lets go now; the ids still to send,
        seconds to wait for the rate limit (0: none), and whether more may be due than one claim took.

        `also_due`: the channel's other urgent rows that are due join the job's own."""
        now = utcnow()
        if also_due:  # the job's own rows first, so the limit never leaves one of them out
            own = DeliveryRow.id.in_(ids)
            wanted = or_(own, and_(DeliveryRow.channel == self.channel.name,
                                   DeliveryRow.kind.in_(outbox.URGENT_KINDS)))
            order, later = (case((own, 0), else_=1), DeliveryRow.id), []
        else:  # the job's own ids, `limit` at a time (those no longer pending are skipped)
            ids, later = ids[:limit], ids[limit:]
            wanted, order = DeliveryRow.id.in_(ids), (DeliveryRow.id,)
        with self.sessions() as session:
            rows = session.execute(select(DeliveryRow.id, DeliveryRow.recipient, DeliveryRow.body,
                                          DeliveryRow.broadcast_id)
                                   .where(wanted, DeliveryRow.state == "pending", DeliveryRow.next_attempt_at <= now)
                                   .order_by(*order).limit(limit)).all()
            more = also_due and len(rows) == limit  # a bulk job's own ids still to send are in `later`
            broadcast_ids = {row.broadcast_id for row in rows if row.broadcast_id is not None}
            if broadcast_ids and self.broadcasts:
                held = self.broadcasts.held(session, broadcast_ids, now)
                rows = [row for row in rows if row.broadcast_id not in held]  # the sweeper brings them back
            if not rows:
                return [], later, 0.0, more
            try:
                granted, wait = self.bucket.take([self.channel.cost(row.body) for row in rows],
                                                 [row.recipient for row in rows])
            except redis.RedisError as error:
                log.warning("%s lane: rate limit unavailable (%s); rows left for the sweeper", self.channel.name, error)
                return [], [], 0.0, False
            go = [row.id for row, ok in zip(rows, granted, strict=True) if ok]
            claimed = [Claimed(*row) for row in session.execute(
                update(DeliveryRow).where(DeliveryRow.id.in_(go), DeliveryRow.state == "pending")
                .values(state="sending", attempts=DeliveryRow.attempts + 1, updated_at=now)
                .returning(*_CLAIMED_COLUMNS))] if go else []
            session.commit()
        held_back = [row.id for row, ok in zip(rows, granted, strict=True) if not ok]
        # Held back: wait at least 10 ms, so a limit that says 0 s never makes a busy loop.
        return claimed, held_back + later, max(wait, 0.01) if held_back else 0.0, more

    def _record(self, claimed: list[Claimed], results: list[str | Exception]) -> None:
        """Every outcome of one chunk in one transaction; then what must go again goes to its lane."""
        now = utcnow()
        sent, failed, fallback, retry = [], [], [], defaultdict(list)
        for row, result in zip(claimed, results, strict=True):
            if isinstance(result, str):
                sent.append({"b_id": row.id, "b_provider_id": result})
                continue
            metrics.provider_error(self.channel.name, "unsure" if isinstance(result, Unsure) else result.code)
            if isinstance(result, Unsure):
                log.warning("delivery %s on %s: %s; left for reconciliation", row.id, self.channel.name, result)
            elif result.retryable:
                # Waiting our turn (or Telegram's retry_after) is not a failed attempt.
                attempts = row.attempts - 1 if result.code == "rate_limited" else row.attempts
                if attempts < outbox.MAX_ATTEMPTS or result.code in WAIT_OUT:
                    delay = max(outbox.backoff(attempts), timedelta(seconds=result.retry_after or 0))
                    retry[delay].append({"b_id": row.id, "b_error": _reason(result), "b_due": now + delay,
                                         "b_attempts": attempts})
                else:
                    failed.append({"b_id": row.id, "b_error": _reason(result)})
            elif self.channel.name != SMS:
                fallback.append((row, result))
            else:
                failed.append({"b_id": row.id, "b_error": _reason(result)})
        table = DeliveryRow.__table__
        by_id = table.c.id == bindparam("b_id")
        with self.sessions() as session:
            connection = session.connection()
            if sent:  # a delivery report may already have moved it further: only `sending` becomes `sent`
                connection.execute(update(table).where(by_id).values(
                    state=case((table.c.state == "sending", "sent"), else_=table.c.state),
                    provider_id=bindparam("b_provider_id"), updated_at=now), sent)
            for rows in retry.values():
                connection.execute(update(table).where(by_id).values(
                    state="pending", attempts=bindparam("b_attempts"), last_error=bindparam("b_error"),
                    next_attempt_at=bindparam("b_due"), updated_at=now), rows)
            to_sms = self._fall_back(session, fallback, failed, now)
            if failed:
                connection.execute(update(table).where(by_id).values(
                    state="failed", last_error=bindparam("b_error"), updated_at=now), failed)
                log.error("%d deliveries on %s failed for good (first: %s)", len(failed), self.channel.name,
                          failed[0]["b_error"])
            broadcast_ids = {row.broadcast_id for row in claimed if row.broadcast_id is not None}
            if broadcast_ids and self.broadcasts:
                self.broadcasts.recorded(session, broadcast_ids, now)
            session.commit()
        replies = [row.id for row in claimed if row.kind == "reply"]
        if sent and replies:
            with self.sessions() as session:
                metrics.acknowledged(session, [r["b_id"] for r in sent if r["b_id"] in replies], now)
        for delay, rows in retry.items():
            self.enqueue([outbox.Queued(row["b_id"], self.channel.name, _kind(claimed, row["b_id"]))
                          for row in rows], delay)
        if to_sms:
            self.enqueue(to_sms, None)

    def _fall_back(self, session: Session, fallback: list[tuple[Claimed, SendError]], failed: list[dict],
                   now: datetime) -> list[outbox.Queued]:
        """A chat we cannot reach: the same row goes by SMS when the resident's phone is known."""
        moved: list[outbox.Queued] = []
        for row, error in fallback:
            if error.code == "blocked":  # remember it: nothing more goes to that chat
                session.merge(ContactRow(channel=self.channel.name, address=row.recipient, blocked=True,
                                         updated_at=now))
            phone = row.fallback_phone or outbox.linked_phone(session, self.channel.name, row.recipient)
            if not phone:
                failed.append({"b_id": row.id, "b_error": _reason(error)})
                continue
            body = f"{self.sms_signature}{row.body}" if row.kind == "broadcast" else row.body
            session.execute(update(DeliveryRow).where(DeliveryRow.id == row.id).values(
                channel=SMS, recipient=phone, body=body, markup=None, state="pending", attempts=0,
                next_attempt_at=now, last_error=f"{self.channel.name}: {_reason(error)}", updated_at=now))
            log.warning("delivery %s: %s refused (%s); going by SMS to %s", row.id, self.channel.name,
                        error.code, mask(phone))
            moved.append(outbox.Queued(row.id, SMS, row.kind))
        return moved


def _reason(error: SendError) -> str:
    return f"{error.code or ''} {error}".strip()


def _kind(claimed: list[Claimed], delivery_id: int) -> str:
    return next(row.kind for row in claimed if row.id == delivery_id)


async def reconcile(sessions: sessionmaker[Session], channels: dict[str, Channel], older_than: timedelta
                    ) -> list[outbox.Queued]:
    """Rows left `sending` by a dead sender: sent after all (the provider lists it), or pending again.

    A channel that cannot list what it sent (Telegram) cannot tell: a reply or alert is sent again
    (a duplicate beats a lost task), a broadcast notice is marked failed with the reason rather than
    risk a second copy to a whole audience. A provider we cannot reach leaves the row for next time.
    """
    with sessions() as session:
        rows = outbox.stuck(session, older_than)
    retry: list[outbox.Queued] = []
    for row in rows:
        channel = channels.get(row.channel)
        if channel is None:
            continue
        try:
            provider_id = await channel.find_sent(row.recipient, row.body, row.updated_at - outbox.CLOCK_SKEW)
        except SendError as error:
            log.warning("cannot reconcile delivery %s on %s yet: %s", row.id, row.channel, error)
            continue
        values: dict
        if provider_id:
            values = {"state": "sent", "provider_id": provider_id}
        elif channel.lists_sent or row.kind != "broadcast":
            values = {"state": "pending", "next_attempt_at": utcnow()}
            retry.append(outbox.Queued(row.id, row.channel, row.kind))
        else:
            values = {"state": "failed", "last_error": "unconfirmed: the sender stopped while sending; not resent"}
        with sessions() as session, session.begin():
            session.execute(update(DeliveryRow).where(DeliveryRow.id == row.id, DeliveryRow.state == "sending")
                            .values(updated_at=utcnow(), **values))
    return retry
