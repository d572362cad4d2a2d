"""The way out: every outgoing message — a reply, a task alert, a broadcast notice — is a row of
`deliveries` first and a provider call second.

A row moves pending → sending → sent → delivered | undelivered | failed (or cancelled while still
pending). Its id goes to its channel's lane (`gateway.delivery.lanes`): an rq queue per channel and
priority, `send:<channel>:urgent` for replies and alerts, `send:<channel>:bulk` for broadcasts, each
served by that channel's own sender process. Jobs carry ids only: never phone numbers or text,
which would otherwise sit in Redis for a week in the failed-job registry. The store, not rq, is the
source of truth: the sweeper hands a lane whatever is still pending when its job was lost.
Delivery reports (`apply_reports`) move a row forward only, whatever order they arrive in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import redis
from rq import Queue
from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from adapters import DeliveryStatus
from gateway.queues import JOB_OPTIONS
from gateway.store import ContactRow, DeliveryRow, utcnow
from gateway.world import SMS

URGENT, BULK = "urgent", "bulk"
URGENT_KINDS = ("reply", "alert")  # every kind but "broadcast"
PRIORITIES = (URGENT, BULK)  # the order a lane serves its queues in
SEND_JOB = "gateway.roles.jobs.send_job"  # by name: the lane's process imports it, the producers need not
IDS_PER_JOB = 500  # enough to amortise rq's ~40 Redis round trips per job
URGENT_WAITING = 10  # seconds an urgent job in waiting stands for every due reply of its lane
MAX_ATTEMPTS = 6
CLOCK_SKEW = timedelta(minutes=1)  # between our clock and the provider's
UNFINISHED = ("pending", "sending")
# How far each state has got; a late or repeated report never moves a row backwards.
STATE_RANK = {"pending": 0, "sending": 1, "sent": 2, "delivered": 3, "undelivered": 3, "failed": 3,
              "cancelled": 3}


@dataclass(frozen=True)
class Queued:
    """What handing a row to its lane needs: its id, channel and kind."""

    id: int
    channel: str
    kind: str


def queued(rows: Iterable[DeliveryRow]) -> list[Queued]:
    """The rows, flushed (so they have ids), as lane hand-overs."""
    return [Queued(row.id, row.channel, row.kind) for row in rows]


def priority(kind: str) -> str:
    """Broadcast notices wait behind replies and task alerts in every lane."""
    return BULK if kind == "broadcast" else URGENT


def lane_queue(channel: str, priority_name: str) -> str:
    return f"send:{channel}:{priority_name}"


def queue_message(session: Session, channel: str, recipient: str, body: str, case_id: int | None = None,
                  markup: dict | None = None, kind: str = "reply") -> DeliveryRow:
    """A delivery row; a chat that blocked our bot is reached by SMS when it shared its number."""
    if channel != SMS and session.scalar(select(ContactRow.blocked).where(
            ContactRow.channel == channel, ContactRow.address == recipient)):
        phone = linked_phone(session, channel, recipient)
        if phone:
            channel, recipient, markup = SMS, phone, None
    row = DeliveryRow(kind=kind, channel=channel, recipient=recipient, body=body, case_id=case_id, markup=markup,
                      state="pending", attempts=0)
    session.add(row)
    return row


def linked_phone(session: Session, channel: str, address: str) -> str | None:
    return session.scalar(select(ContactRow.phone).where(ContactRow.channel == channel, ContactRow.address == address))


def backoff(attempts: int) -> timedelta:
    """2 s, 4 s, 8 s ... capped at five minutes."""
    return timedelta(seconds=min(2 ** attempts, 300))


def urgent_waiting_key(channel: str) -> str:
    """Set while an urgent job waits in the channel's lane and has not yet looked for due rows."""
    return f"lane:{channel}:urgent-waiting"


def enqueue(connection: redis.Redis, items: Iterable[Queued], delay: timedelta | None = None) -> None:
    """Hand rows to their lanes, IDS_PER_JOB to a job, urgent and bulk apart.

    Urgent rows due now join a job already waiting in their lane instead of adding one: an urgent
    job takes every due reply and alert of its channel, and at 100 appeals/s one job per worker
    commit (~50 a second, each ~40 Redis round trips and a claim) kept the SMS sender so busy that
    a broadcast beside them sent ~17 messages/s (bench/ack_latency.py --broadcast). The key
    expires, so a job lost with a killed sender holds the lane back for URGENT_WAITING at most.
    """
    by_queue: dict[tuple[str, str], list[int]] = defaultdict(list)
    for item in items:
        by_queue[item.channel, priority(item.kind)].append(item.id)
    for (channel, priority_name), ids in by_queue.items():
        if priority_name == URGENT and not delay and not connection.set(
                urgent_waiting_key(channel), 1, nx=True, ex=URGENT_WAITING):
            continue
        queue = Queue(lane_queue(channel, priority_name), connection=connection)
        for start in range(0, len(ids), IDS_PER_JOB):
            args = (channel, ids[start:start + IDS_PER_JOB], priority_name)
            if delay:
                queue.enqueue_in(delay, SEND_JOB, *args, **JOB_OPTIONS)
            else:
                queue.enqueue(SEND_JOB, *args, **JOB_OPTIONS)


def lanes_idle(connection: redis.Redis, channels: Iterable[str]) -> bool:
    """No send job waits in any lane (a lost job is only worth re-creating when nothing is queued)."""
    return not any(Queue(lane_queue(channel, p), connection=connection).count
                   for channel in channels for p in PRIORITIES)


def due(session: Session, stale_after: timedelta, held_broadcasts: set[int], limit: int = 10 * IDS_PER_JOB
        ) -> list[Queued]:
    """Pending rows whose job should have run by now (rq loses the jobs of a killed worker), except
    those of broadcasts that may not send now (paused, or in quiet hours)."""
    query = (select(DeliveryRow.id, DeliveryRow.channel, DeliveryRow.kind)
             .where(DeliveryRow.state == "pending", DeliveryRow.next_attempt_at <= utcnow() - stale_after)
             .order_by(DeliveryRow.id).limit(limit))
    if held_broadcasts:
        query = query.where(or_(DeliveryRow.broadcast_id.is_(None), DeliveryRow.broadcast_id.not_in(held_broadcasts)))
    return [Queued(*row) for row in session.execute(query)]


# --- delivery reports -----------------------------------------------------------------------


def apply_reports(session: Session, reports: Sequence[DeliveryStatus]) -> None:
    """Record delivery reports, each moving its row forward only (reports race each other).

    One executemany per target state: a report names our row id where its callback URL carried
    it, else only the provider's id.
    """
    table = DeliveryRow.__table__
    groups: dict[tuple[str, bool], list[dict]] = defaultdict(list)
    for report in reports:
        if STATE_RANK.get(report.status, 0) < STATE_RANK["sent"]:
            continue  # queued / sending add nothing to our own `sending`
        groups[report.status, report.delivery_id is not None].append(
            {"b_id": report.delivery_id, "b_sid": report.provider_id, "b_error": report.error_code})
    now = utcnow()
    for (state, by_id), rows in groups.items():
        earlier = [s for s, rank in STATE_RANK.items() if rank < STATE_RANK[state]]
        match = table.c.id == bindparam("b_id") if by_id else table.c.provider_id == bindparam("b_sid")
        session.connection().execute(
            # OR of equalities, not IN: an expanding IN cannot go into an executemany
            update(table).where(match, or_(*(table.c.state == s for s in earlier)))
            .values(state=state, provider_id=func.coalesce(table.c.provider_id, bindparam("b_sid")),
                    last_error=func.coalesce(bindparam("b_error"), table.c.last_error), updated_at=now),
            rows)


def apply_status(session: Session, report: DeliveryStatus) -> bool:
    """One delivery report; False when no row is ours."""
    where = DeliveryRow.id == report.delivery_id if report.delivery_id is not None \
        else DeliveryRow.provider_id == report.provider_id
    if session.scalar(select(DeliveryRow.id).where(where)) is None:
        return False
    apply_reports(session, [report])
    return True


def stuck(session: Session, older_than: timedelta, limit: int = 1000) -> list[DeliveryRow]:
    """Rows left `sending` longer than any provider call takes: their sender died mid-call."""
    return list(session.scalars(select(DeliveryRow)
                                .where(DeliveryRow.state == "sending", DeliveryRow.updated_at < utcnow() - older_than)
                                .order_by(DeliveryRow.id).limit(limit)))

