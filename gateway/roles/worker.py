"""An rq worker process with the city and classifier loaded before the first job.

It serves inbound processing, the deadline clock and broadcast fan-out; sending is the lanes'
(gateway.roles.sender). SimpleWorker runs jobs in this process: a forking worker would reload
jieba's dictionary in every child (~0.8 s a job, see FACTS.md). If this process dies, the
supervisor starts another and the sweeper re-enqueues whatever its lost job was holding. rq quits
when it loses Redis; the process then exits, and its successor waits for Redis (after loading the
classifier) before taking jobs, so a Redis outage costs one restart per worker, not a crash loop.
"""

from __future__ import annotations

from rq import SimpleWorker

from gateway.logs import setup_logging
from gateway.queues import QUEUE_NAMES, wait_for_redis
from gateway.roles import jobs


def main() -> None:
    setup_logging()
    ctx = jobs.context()
    ctx.warm_up()
    wait_for_redis(ctx.connection, "rq worker")
    # Broadcast fan-out last: an appeal's processing never waits behind a notice to thousands.
    worker = SimpleWorker([ctx.queues[name] for name in QUEUE_NAMES], connection=ctx.connection)
    worker.work(with_scheduler=True, logging_level="WARNING")


if __name__ == "__main__":
    main()
