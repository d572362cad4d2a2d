"""A channel's sender: the rq worker of one lane (`python -m gateway.roles.sender sms`).

It serves only its channel's queues, urgent before bulk, so a channel that is slow or held to a
rate limit (the workers' Telegram bot at ~30 messages/s) never delays another (the residents'
acknowledgements by SMS). SimpleWorker runs jobs in this process, on one event loop kept across
jobs (gateway.roles.jobs.send_job); retries go to rq's scheduler, hence `with_scheduler`.
"""

from __future__ import annotations

import sys

from rq import Queue, SimpleWorker

from gateway.delivery.outbox import PRIORITIES, lane_queue
from gateway.logs import setup_logging
from gateway.roles import jobs


def main() -> None:
    setup_logging()
    channel = sys.argv[1]
    ctx = jobs.context()
    here = jobs.lane_process(channel)  # the channel's client before the first job, not during it
    worker = SimpleWorker([Queue(lane_queue(channel, p), connection=ctx.connection) for p in PRIORITIES],
                          connection=ctx.connection)
    try:
        worker.work(with_scheduler=True, logging_level="WARNING")
    finally:
        here.loop.run_until_complete(here.lane.channel.close())


if __name__ == "__main__":
    main()
