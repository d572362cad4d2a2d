"""The sweeper: makes the store, not rq, the source of truth for unfinished work.

rq drops a job whose worker is killed (a killed worker's job sits STARTED, then lands in the failed
registry, never re-run). So every few seconds, when a queue has drained, anything the store still
shows as unfinished gets a new job: unprocessed inbound messages, pending deliveries, and
deliveries stuck in `sending`, which are first reconciled with the provider. It also starts due
broadcasts and queues the deadline clock. Every host may run a sweeper: a lease in Redis lets
one act at a time.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select

from adapters import Channel
from broadcasts.fanout import BroadcastLaneRules
from broadcasts.fanout import sweep as broadcast_sweep
from gateway import metrics
from gateway.delivery import lanes, outbox
from gateway.delivery.channels import build_channels
from gateway.lease import Lease
from gateway.logs import setup_logging
from gateway.queues import BROADCAST_QUEUE, CLOCK_QUEUE, INBOUND_QUEUE
from gateway.roles import jobs
from gateway.store import InboundRow, utcnow

log = logging.getLogger(__name__)


def lost_inbound(ctx: jobs.WorkerContext) -> int:
    """Stored appeals whose processing job was lost."""
    if ctx.queues[INBOUND_QUEUE].count:
        return 0
    stale = timedelta(seconds=ctx.settings.stale_after)
    with ctx.sessions() as session:
        ids = list(session.scalars(
            select(InboundRow.id)
            .where(InboundRow.processed_at.is_(None), InboundRow.received_at < utcnow() - stale)
            .order_by(InboundRow.id).limit(10 * jobs.IDS_PER_JOB)))
    jobs.enqueue_inbound(ctx.queues[INBOUND_QUEUE], ids)
    return len(ids)


def lost_deliveries(ctx: jobs.WorkerContext) -> int:
    """Deliveries stuck in `sending` (reconciled with the provider first) and pending ones whose job
    was lost, handed back to their lanes once the lanes have drained."""
    s = ctx.settings
    channels = build_channels(s)
    if not outbox.lanes_idle(ctx.connection, channels):
        return 0
    retry = asyncio.run(_reconcile(ctx, channels))
    with ctx.sessions() as session:
        held = BroadcastLaneRules(s).held_now(session, utcnow())
        retry += outbox.due(session, timedelta(seconds=s.stale_after), held)
    outbox.enqueue(ctx.connection, retry)
    return len(retry)


async def _reconcile(ctx: jobs.WorkerContext, channels: dict[str, Channel]) -> list[outbox.Queued]:
    try:
        return await lanes.reconcile(ctx.sessions, channels, timedelta(seconds=ctx.settings.broadcast_claim_timeout))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels.values()))


def broadcasts(ctx: jobs.WorkerContext) -> int:
    """Broadcasts due to start, fan-outs whose job was lost, broadcasts that are done."""
    queue = ctx.queues[BROADCAST_QUEUE]
    found = broadcast_sweep(ctx.settings, ctx.sessions, queue.count == 0,
                            lambda broadcast_id: jobs.enqueue_fanout(queue, broadcast_id))
    return sum(found.values())


def clock(ctx: jobs.WorkerContext) -> int:
    """Deadlines: reminders, escalations, rating time-outs (one check queued at a time)."""
    jobs.enqueue_tick(ctx.queues[CLOCK_QUEUE])
    return 0


Duty = Callable[[jobs.WorkerContext], int]  # how much lost work it found and queued again
DUTIES: tuple[Duty, ...] = (lost_inbound, lost_deliveries, broadcasts, clock)


def sweep_once(ctx: jobs.WorkerContext, duties: tuple[Duty, ...] = DUTIES,
               failing: set[str] | None = None) -> dict[str, int]:
    """Every duty, each on its own: one that fails (Twilio unreachable, say) never stops the others.

    `failing` carries the names of the duties that failed last time from sweep to sweep, so a
    duty's exception is logged once per failure streak, not every sweep of an outage.
    """
    failing = set() if failing is None else failing
    found = {}
    for duty in duties:
        name = duty.__name__
        try:
            with metrics.duty(name):
                found[name] = duty(ctx)
            metrics.SWEEPER_FOUND.labels(name).inc(found[name])
        except Exception:
            if name not in failing:
                log.exception("sweeper duty %s failed; it is tried again every sweep, the others carry on", name)
            failing.add(name)
        else:
            if name in failing:
                log.info("sweeper duty %s works again", name)
            failing.discard(name)
    return found


def main() -> None:
    setup_logging()
    ctx = jobs.context()
    running = True

    def stop(*_args: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # One sweeper acts across all hosts (gateway/lease.py); the others stand by and take over
    # when its lease runs out.
    lease = Lease(ctx.queues[CLOCK_QUEUE].connection, "sweeper", ctx.settings.sweeper_lease)
    acting: int | None = None
    announced = False
    failing: set[str] = set()
    while running:
        try:
            token = lease.hold()
            if token != acting or not announced:
                announced = True
                log.info("sweeper %s: %s", lease.holder, f"acting, token {token}" if token else "standing by")
                acting = token
            if token is not None:
                found = sweep_once(ctx, DUTIES, failing)
                if any(found.values()):
                    log.info("re-enqueued lost work: %s", found)
        except Exception:
            log.exception("sweep failed; trying again")
        time.sleep(ctx.settings.sweep_interval)
    if acting is not None:
        lease.release()


if __name__ == "__main__":
    main()
