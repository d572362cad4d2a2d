"""rq job entry points. Jobs carry row ids only: never phone numbers or text, which would
otherwise sit in Redis for a week in the failed-job registry."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from functools import cache, cached_property

import redis
from rq import Queue
from sqlalchemy.orm import Session, sessionmaker

from broadcasts.fanout import BroadcastLaneRules, fan_out
from classifiers import build_classifier
from gateway import pipeline
from gateway.config import Settings, load_settings
from gateway.delivery import outbox
from gateway.delivery.channels import build_channels
from gateway.delivery.lanes import Lane
from gateway.domain import workflow
from gateway.queues import BROADCAST_QUEUE, JOB_OPTIONS, connect, queues
from gateway.store import load_city_from_store, make_engine, session_factory, utcnow
from gateway.world import World

IDS_PER_JOB = 500  # a job's worth of messages: enough to amortise rq's ~40 round trips


@dataclass
class WorkerContext:
    settings: Settings
    sessions: sessionmaker[Session]
    connection: redis.Redis
    queues: dict[str, Queue]

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
    return WorkerContext(settings, sessions, connection, queues(connection))


def enqueue_inbound(queue: Queue, ids: list[int]) -> None:
    for start in range(0, len(ids), IDS_PER_JOB):
        queue.enqueue(process_inbound_job, ids[start:start + IDS_PER_JOB], **JOB_OPTIONS)


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
        rows = workflow.tick(session, ctx.world, now)
        session.flush()
        outgoing = outbox.queued(rows)
    outbox.enqueue(ctx.connection, outgoing)


def process_inbound_job(ids: list[int]) -> None:
    ctx = context()
    ctx.world.classifier.refresh()  # a model promoted since the last job is used from this one on
    outbox.enqueue(ctx.connection, pipeline.process_inbound(ctx.sessions, ctx.world, ids))


def enqueue_fanout(queue: Queue, broadcast_id: int) -> None:
    queue.enqueue(fanout_job, broadcast_id, **JOB_OPTIONS)


def fanout_job(broadcast_id: int) -> None:
    """A few pages of a broadcast's audience become deliveries; the rest is the next job's."""
    ctx = context()
    if not fan_out(ctx.settings, ctx.sessions, ctx.connection, broadcast_id):
        enqueue_fanout(ctx.queues[BROADCAST_QUEUE], broadcast_id)


@dataclass
class LaneProcess:
    """A sender process's lane and the event loop it runs on, kept across jobs so the channel's
    connections are reused (aiohttp and httpx clients belong to the loop that made them)."""

    lane: Lane
    loop: asyncio.AbstractEventLoop


@cache
def lane_process(channel: str) -> LaneProcess:
    ctx = context()
    s = ctx.settings
    lane = Lane(build_channels(s)[channel], ctx.sessions, ctx.connection, concurrency=s.broadcast_concurrency,
                sms_signature=s.sms_signature, broadcasts=BroadcastLaneRules(s))
    return LaneProcess(lane, asyncio.new_event_loop())


def send_job(channel: str, ids: list[int], priority: str) -> None:
    """Send deliveries on `channel`'s lane; what the time budget left goes to the back of its queue."""
    here = lane_process(channel)
    leftover = here.loop.run_until_complete(here.lane.run(ids, priority))
    if leftover:
        Queue(outbox.lane_queue(channel, priority), connection=context().connection).enqueue(
            send_job, channel, leftover, priority, **JOB_OPTIONS)
