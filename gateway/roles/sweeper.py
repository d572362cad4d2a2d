"""The sweeper: makes the store, not rq, the source of truth for unfinished work.

rq drops a job whose worker is killed (FACTS.md: it sits STARTED, then lands in the failed
registry, never re-run). So every few seconds, when a queue has drained, anything the store
still shows as unfinished gets a new job: unprocessed inbound messages, pending outbox rows,
and rows stuck in `sending`, which are first reconciled with the provider.
"""

from __future__ import annotations

import logging
import signal
import time
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


def sweep_once(ctx: jobs.WorkerContext) -> dict[str, int]:
    found = {"inbound": 0, "outbox": 0}
    stale = timedelta(seconds=ctx.settings.stale_after)
    with ctx.sessions() as session:
        if ctx.queues[INBOUND_QUEUE].count == 0:
            ids = list(session.scalars(
                select(InboundRow.id)
                .where(InboundRow.processed_at.is_(None), InboundRow.received_at < utcnow() - stale)
                .order_by(InboundRow.id).limit(10 * jobs.IDS_PER_JOB)))
            jobs.enqueue_inbound(ctx.queues[INBOUND_QUEUE], ids)
            found["inbound"] = len(ids)
        if ctx.queues[OUTBOUND_QUEUE].count == 0:
            ids = outbox.reconcile_stuck(session, ctx.senders, STUCK_AFTER)
            ids += outbox.due_rows(session, stale)
            for start in range(0, len(ids), jobs.IDS_PER_JOB):
                jobs.enqueue_delivery(ctx.queues[OUTBOUND_QUEUE], ids[start:start + jobs.IDS_PER_JOB])
            found["outbox"] = len(ids)
    found.update(broadcast_sweep(ctx))
    jobs.enqueue_tick(ctx.queues[CLOCK_QUEUE])  # deadlines: reminders and escalations
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
    while running:
        try:
            found = sweep_once(ctx)
            if any(found.values()):
                log.info("re-enqueued lost work: %s", found)
        except Exception:
            log.exception("sweep failed; trying again")
        time.sleep(ctx.settings.sweep_interval)


if __name__ == "__main__":
    main()
