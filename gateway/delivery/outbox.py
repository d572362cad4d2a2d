"""The outbox: every outgoing message is a row first and a provider call second.

A row moves pending → sending → sent → delivered | undelivered | failed. Claiming a row is one
conditional UPDATE, so two workers holding the same id can never both send it. A row found
stuck in `sending` (its worker died mid-call) is reconciled with the provider before it is
retried, so a crash does not make a resident receive the same SMS twice. (Telegram cannot list
sent messages: a chat message cut off mid-call is sent again.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from adapters import SendError
from gateway.logs import mask
from gateway.store import ContactRow, OutboxRow, utcnow
from gateway.world import SMS

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
CLOCK_SKEW = timedelta(minutes=1)  # between our clock and the provider's
TERMINAL_STATES = ("delivered", "undelivered", "failed")
# How far each delivery state has got; a late or repeated report never moves a row backwards.
STATE_RANK = {"pending": 0, "sending": 1, "sent": 2, "delivered": 3, "undelivered": 3, "failed": 3}
# A provider's delivery status, as the outbox state it means.
REPORTED_STATE = {"queued": "sending", "accepted": "sending", "sending": "sending", "sent": "sent",
                  "delivered": "delivered", "read": "delivered", "undelivered": "undelivered", "failed": "failed"}


class ChannelSender(Protocol):
    def send(self, recipient: str, body: str, outbox_id: int, markup: dict | None) -> str: ...

    def find_sent(self, recipient: str, body: str, since: datetime) -> str | None: ...


def queue_message(session: Session, channel: str, recipient: str, body: str,
                  case_id: int | None = None, markup: dict | None = None) -> OutboxRow:
    """An outbox row; a chat that blocked our bot is reached by SMS when it shared its number."""
    if channel != SMS and session.scalar(select(ContactRow.blocked).where(
            ContactRow.channel == channel, ContactRow.address == recipient)):
        phone = linked_phone(session, channel, recipient)
        if phone:
            channel, recipient, markup = SMS, phone, None
    row = OutboxRow(channel=channel, recipient=recipient, body=body, case_id=case_id, markup=markup,
                    state="pending")
    session.add(row)
    return row


def linked_phone(session: Session, channel: str, address: str) -> str | None:
    return session.scalar(select(ContactRow.phone).where(ContactRow.channel == channel, ContactRow.address == address))


def backoff(attempts: int) -> timedelta:
    """2 s, 4 s, 8 s ... capped at five minutes."""
    return timedelta(seconds=min(2 ** attempts, 300))


def _claim(session: Session, outbox_id: int, now: datetime) -> OutboxRow | None:
    claimed = session.execute(
        update(OutboxRow)
        .where(OutboxRow.id == outbox_id, OutboxRow.state == "pending", OutboxRow.next_attempt_at <= now)
        .values(state="sending", attempts=OutboxRow.attempts + 1, updated_at=now)
    ).rowcount
    session.commit()
    return session.get(OutboxRow, outbox_id) if claimed else None


def deliver(sessions: sessionmaker[Session], senders: dict[str, ChannelSender], ids: list[int],
            retry_later: Callable[[int, timedelta], None]) -> dict[str, int]:
    """Send each pending row once; schedule retryable failures; return counts by outcome."""
    outcome = {"sent": 0, "retry": 0, "failed": 0, "skipped": 0}
    with sessions() as session:
        for outbox_id in ids:
            row = _claim(session, outbox_id, utcnow())
            if row is None:
                outcome["skipped"] += 1
                continue
            try:
                provider_id = senders[row.channel].send(row.recipient, row.body, row.id, row.markup)
            except SendError as error:
                outcome[_after_failure(session, row, error, retry_later)] += 1
            except Exception as error:  # a bug or an unknown channel: fail this row, not the batch
                log.exception("outbox %s to %s could not be sent", row.id, mask(row.recipient))
                error = SendError(f"{type(error).__name__}: {error}", retryable=False)
                outcome[_after_failure(session, row, error, retry_later)] += 1
            else:
                _mark_sent(session, row.id, provider_id)
                outcome["sent"] += 1
            session.commit()
    return outcome


def _after_failure(session: Session, row: OutboxRow, error: SendError,
                   retry_later: Callable[[int, timedelta], None]) -> str:
    row.last_error = f"{error.code or ''} {error}".strip()
    row.updated_at = utcnow()
    if error.code == "rate_limited":  # waiting our turn (or Telegram's 429) is not a failed attempt
        row.attempts -= 1
    if error.retryable and row.attempts < MAX_ATTEMPTS:
        delay = max(backoff(row.attempts), timedelta(seconds=error.retry_after or 0))
        row.state, row.next_attempt_at = "pending", row.updated_at + delay
        log.warning("outbox %s to %s failed (%s); retry in %ss", row.id, mask(row.recipient),
                    row.last_error, delay.seconds)
        session.commit()
        retry_later(row.id, delay)
        return "retry"
    row.state = "failed"
    if error.code == "blocked":  # the user blocked the bot: remember it, never retry, try SMS
        session.merge(ContactRow(channel=row.channel, address=row.recipient, blocked=True, updated_at=row.updated_at))
        phone = linked_phone(session, row.channel, row.recipient)
        if phone:
            fallback = queue_message(session, SMS, phone, row.body, row.case_id)
            session.commit()
            retry_later(fallback.id, timedelta(0))
    log.error("outbox %s to %s failed for good: %s", row.id, mask(row.recipient), row.last_error)
    return "failed"


def _mark_sent(session: Session, outbox_id: int, provider_id: str) -> None:
    """Conditional, so a delivery report that arrived during the call is not overwritten."""
    now = utcnow()
    session.execute(update(OutboxRow).where(OutboxRow.id == outbox_id)
                    .values(provider_id=provider_id, updated_at=now))
    session.execute(update(OutboxRow).where(OutboxRow.id == outbox_id, OutboxRow.state.in_(("pending", "sending")))
                    .values(state="sent"))
    session.expire_all()


def apply_status(session: Session, outbox_id: int | None, provider_id: str, status: str,
                 error_code: str | None) -> bool:
    """Record a delivery report, moving state forward only; False when no row matches."""
    query = select(OutboxRow).where(
        OutboxRow.id == outbox_id if outbox_id is not None else OutboxRow.provider_id == provider_id
    )
    row = session.scalar(query)
    if row is None:
        return False
    state = REPORTED_STATE.get(status)
    row.provider_id = row.provider_id or provider_id
    if state and STATE_RANK[state] > STATE_RANK[row.state]:
        row.state = state
        row.updated_at = utcnow()
        if error_code:
            row.last_error = error_code
    return True


def reconcile_stuck(session: Session, senders: dict[str, ChannelSender], older_than: timedelta) -> list[int]:
    """Rows left in `sending` by a dead worker: sent after all, or back to pending for a retry."""
    cutoff = utcnow() - older_than
    stuck = session.scalars(select(OutboxRow).where(OutboxRow.state == "sending",
                                                    OutboxRow.updated_at < cutoff)).all()
    retry: list[int] = []
    for row in stuck:
        provider_id = senders[row.channel].find_sent(row.recipient, row.body, row.updated_at - CLOCK_SKEW)
        if provider_id:
            _mark_sent(session, row.id, provider_id)
        else:
            row.state, row.next_attempt_at = "pending", utcnow()
            retry.append(row.id)
    session.commit()
    return retry


def due_rows(session: Session, stale_after: timedelta, limit: int = 1000) -> list[int]:
    """Pending rows whose job should have run by now (rq loses jobs when a worker dies)."""
    now = utcnow()
    query = (select(OutboxRow.id)
             .where(OutboxRow.state == "pending", OutboxRow.next_attempt_at <= now - stale_after)
             .order_by(OutboxRow.id).limit(limit))
    return list(session.scalars(query))
