"""rq job entry points. Jobs carry row ids only: never phone numbers or text, which would
otherwise sit in Redis for a year in the failed-job registry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache, cached_property

from rq import Queue
from sqlalchemy.orm import Session, sessionmaker

from classifiers import build_classifier
from gateway import pipeline
from gateway.config import Settings, load_settings
from gateway.delivery import outbox
from gateway.delivery.channels import build_senders
from gateway.domain import workflow
from gateway.queues import OUTBOUND_QUEUE, connect, queues
from gateway.store import load_city_from_store, make_engine, session_factory, utcnow
from gateway.world import World

JOB_OPTIONS = {"result_ttl": 0, "failure_ttl": 7 * 24 * 3600}
IDS_PER_JOB = 500  # a job's worth of messages: enough to amortise rq's ~40 round trips


@dataclass
class WorkerContext:
    settings: Settings
    sessions: sessionmaker[Session]
    queues: dict[str, Queue]
    senders: dict[str, outbox.ChannelSender]

    @cached_property
    def world(self) -> World:
        """The city and a warmed-up classifier (~1 s and ~100 MB: only processes that classify)."""
        with self.sessions() as session:
            city = load_city_from_store(session)
        world = World(self.settings, city, build_classifier(city, self.settings))
        world.classifier.classify("warm-up", None)
        return world

    def warm_up(self) -> None:
        """Load the world before the first job rather than during it."""
        _ = self.world


@cache
def context() -> WorkerContext:
    settings = load_settings()
    sessions = session_factory(make_engine(settings.sqlalchemy_url))
    connection = connect(settings.redis_url)
    return WorkerContext(settings, sessions, queues(connection), build_senders(settings, connection))


def enqueue_inbound(queue: Queue, ids: list[int]) -> None:
    for start in range(0, len(ids), IDS_PER_JOB):
        queue.enqueue(process_inbound_job, ids[start:start + IDS_PER_JOB], **JOB_OPTIONS)


def enqueue_delivery(queue: Queue, ids: list[int], delay: timedelta | None = None) -> None:
    if delay:
        queue.enqueue_in(delay, deliver_job, ids, **JOB_OPTIONS)
    else:
        queue.enqueue(deliver_job, ids, **JOB_OPTIONS)


def enqueue_tick(queue: Queue, at: datetime | None = None) -> None:
    """One deadline check at a time: none is added while another still waits in the queue."""
    if at is None and queue.count:
        return
    queue.enqueue(tick_job, at.isoformat() if at else None, **JOB_OPTIONS)


def tick_job(at: str | None = None) -> None:
    """Deadlines: reminders, escalations and rating time-outs as of `at` (ISO, UTC) or now."""
    ctx = context()
    now = datetime.fromisoformat(at) if at else utcnow()
    with ctx.sessions() as session, session.begin():
        queued = workflow.tick(session, ctx.world, now)
        session.flush()
        outbox_ids = [row.id for row in queued]
    if outbox_ids:
        enqueue_delivery(ctx.queues[OUTBOUND_QUEUE], outbox_ids)


def process_inbound_job(ids: list[int]) -> None:
    ctx = context()
    ctx.world.classifier.refresh()  # a model promoted since the last job is used from this one on
    outbox_ids = pipeline.process_inbound(ctx.sessions, ctx.world, ids)
    if outbox_ids:
        enqueue_delivery(ctx.queues[OUTBOUND_QUEUE], outbox_ids)


def deliver_job(ids: list[int]) -> None:
    ctx = context()
    queue = ctx.queues[OUTBOUND_QUEUE]
    outbox.deliver(ctx.sessions, ctx.senders, ids,
                   retry_later=lambda outbox_id, delay: enqueue_delivery(queue, [outbox_id], delay))

