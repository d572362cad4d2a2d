"""The sweeper: makes the store, not rq, the source of truth for unfinished work.

rq drops a job whose worker is killed (FACTS.md: it sits STARTED, then lands in the failed
registry, never re-run). So every few seconds each duty below looks at the store and queues what
is still unfinished. The duties run apart, each with its own error handling: a provider that is
unreachable (reconciling a row stuck in `sending` asks it) or a Redis outage stops only the duties
that need them, and every duty is tried again on the next sweep.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select

from broadcasts.fanout import sweep as broadcast_sweep
from gateway.delivery import outbox
from gateway.logs import setup_logging
from gateway.queues import CLOCK_QUEUE, INBOUND_QUEUE, OUTBOUND_QUEUE
from gateway.roles import jobs
from gateway.store import InboundRow, utcnow

log = logging.getLogger(__name__)
STUCK_AFTER = timedelta(seconds=60)  # a provider call never takes this long


def lost_inbound(ctx: jobs.WorkerContext) -> dict[str, int]:
    """Stored messages nobody processed: their job was lost with a worker, or never queued (Redis down)."""
    if ctx.queues[INBOUND_QUEUE].count:
        return {}
    stale = timedelta(seconds=ctx.settings.stale_after)
    with ctx.sessions() as session:
        ids = list(session.scalars(
            select(InboundRow.id)
            .where(InboundRow.processed_at.is_(None), InboundRow.received_at < utcnow() - stale)
            .order_by(InboundRow.id).limit(10 * jobs.IDS_PER_JOB)))
    jobs.enqueue_inbound(ctx.queues[INBOUND_QUEUE], ids)
    return {"inbound": len(ids)}


def deliveries(ctx: jobs.WorkerContext) -> dict[str, int]:
    """Rows stuck in `sending` (reconciled with the provider first) and pending rows whose job was lost."""
    if ctx.queues[OUTBOUND_QUEUE].count:
        return {}
    stale = timedelta(seconds=ctx.settings.stale_after)
    with ctx.sessions() as session:
        ids = outbox.reconcile_stuck(session, ctx.senders, STUCK_AFTER)
        ids += outbox.due_rows(session, stale)
    for start in range(0, len(ids), jobs.IDS_PER_JOB):
        jobs.enqueue_delivery(ctx.queues[OUTBOUND_QUEUE], ids[start:start + jobs.IDS_PER_JOB])
    return {"outbox": len(ids)}


def deadline_clock(ctx: jobs.WorkerContext) -> dict[str, int]:
    """Queue a deadline check (reminders, escalations, rating time-outs) unless one still waits."""
    jobs.enqueue_tick(ctx.queues[CLOCK_QUEUE])
    return {}


def broadcasts(ctx: jobs.WorkerContext) -> dict[str, int]:
    """Start due broadcasts; recover fan-outs and deliveries a dead worker was holding."""
    return broadcast_sweep(ctx)


@dataclass
class Duty:
    """One duty and whether its last run failed: its exception is logged once per failure streak."""

    name: str
    run: Callable[[jobs.WorkerContext], dict[str, int]]
    failing: bool = False


def duties() -> list[Duty]:
    return [Duty("lost inbound work", lost_inbound), Duty("deliveries", deliveries),
            Duty("deadline clock", deadline_clock), Duty("broadcasts", broadcasts)]


def sweep_once(ctx: jobs.WorkerContext, todo: list[Duty]) -> dict[str, int]:
    """Run every duty, whatever the others do; what each found, by kind."""
    found: dict[str, int] = {}
    for duty in todo:
        try:
            found.update(duty.run(ctx))
        except Exception:
            if not duty.failing:
                log.exception("sweeper duty %r failed; it is tried again every sweep, the others go on", duty.name)
            duty.failing = True
        else:
            if duty.failing:
                log.info("sweeper duty %r works again", duty.name)
            duty.failing = False
    return found


def main() -> None:
    setup_logging()
    ctx = jobs.context()
    todo = duties()
    running = True

    def stop(*_args: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while running:
        found = sweep_once(ctx, todo)
        if any(found.values()):
            log.info("re-enqueued lost work: %s", found)
        time.sleep(ctx.settings.sweep_interval)


if __name__ == "__main__":
    main()
