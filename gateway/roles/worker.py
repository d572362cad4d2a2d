"""An rq worker process with the city and classifier loaded before the first job.

SimpleWorker runs jobs in this process: a forking worker would reload jieba's dictionary in
every child (~0.8 s a job, see FACTS.md). If this process dies, the supervisor starts another
and the sweeper re-enqueues whatever its lost job was holding.
"""

from __future__ import annotations

from rq import SimpleWorker

from broadcasts.fanout import broadcasting
from gateway.logs import setup_logging
from gateway.queues import QUEUE_NAMES
from gateway.roles import jobs


def main() -> None:
    setup_logging()
    ctx = jobs.context()
    ctx.warm_up()
    # Broadcasts last: an appeal's acknowledgement never waits behind a notice to thousands.
    worker = SimpleWorker([ctx.queues[name] for name in QUEUE_NAMES] + [broadcasting(ctx).queue],
                          connection=ctx.queues[QUEUE_NAMES[0]].connection)
    worker.work(with_scheduler=True, logging_level="WARNING")


if __name__ == "__main__":
    main()
