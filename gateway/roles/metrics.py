"""The metrics role: Prometheus's scrape endpoint for the whole deployment on one host.

It sums the counters every process on this host wrote under PROMETHEUS_MULTIPROC_DIR
(gateway/metrics.py) and adds what is read from Redis and the store when scraped: rq queue
depths (the send lanes' too), the age of the oldest unprocessed inbound message and of the oldest
unsent reply or alert, deliveries by channel and state, and each unfinished broadcast's deliveries
by state. It listens on its own port, on loopback unless GRIDLINE_METRICS_HOST says otherwise,
so the operator API's port never exposes it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from rq import Queue
from sqlalchemy import func, select

from broadcasts.models import BroadcastRow
from gateway.config import Settings, load_settings
from gateway.delivery.outbox import PRIORITIES, lane_queue
from gateway.logs import setup_logging
from gateway.queues import connect, queues
from gateway.store import DeliveryRow, InboundRow, make_engine, session_factory, utcnow
from gateway.world import BOTS, SMS

log = logging.getLogger("gateway.roles.metrics")


class StoreCollector(Collector):
    """Figures read at scrape time: shared by every host, so any host's endpoint shows the same."""

    def __init__(self, settings: Settings):
        self._sessions = session_factory(make_engine(settings.sqlalchemy_url))
        connection = connect(settings.redis_url)
        self._queues = queues(connection)
        # Each channel's send lanes (gateway.delivery.lanes): urgent replies and alerts, bulk notices.
        self._queues |= {lane_queue(channel, p): Queue(lane_queue(channel, p), connection=connection)
                         for channel in (SMS, *BOTS.values()) for p in PRIORITIES}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("gridline_queue_depth", "Jobs waiting in each rq queue", labels=["queue"])
        for name, queue in self._queues.items():
            depth.add_metric([name], queue.count)
        yield depth
        now = utcnow()
        oldest = GaugeMetricFamily("gridline_oldest_pending_seconds", "Age of the oldest unfinished work (0: none)",
                                   labels=["work"])
        states = GaugeMetricFamily("gridline_deliveries", "Outgoing messages of every kind by channel and state",
                                   labels=["channel", "state"])
        progress = GaugeMetricFamily("gridline_broadcast_deliveries",
                                     "Deliveries of each unfinished broadcast by state", labels=["broadcast", "state"])
        with self._sessions() as session:
            for work, moment in (
                ("inbound", select(func.min(InboundRow.received_at)).where(InboundRow.processed_at.is_(None))),
                ("delivery", select(func.min(DeliveryRow.created_at))
                 .where(DeliveryRow.state.in_(("pending", "sending")), DeliveryRow.kind != "broadcast")),
            ):
                since = session.scalar(moment)
                oldest.add_metric([work], (now - since).total_seconds() if since else 0.0)
            by_state = select(DeliveryRow.channel, DeliveryRow.state, func.count())
            for channel, state, count in session.execute(by_state.group_by(DeliveryRow.channel, DeliveryRow.state)):
                states.add_metric([channel, state], count)
            unfinished = select(BroadcastRow.id).where(BroadcastRow.state.not_in(("done", "cancelled")))
            for broadcast, state, count in session.execute(
                    select(DeliveryRow.broadcast_id, DeliveryRow.state, func.count())
                    .where(DeliveryRow.broadcast_id.in_(unfinished))
                    .group_by(DeliveryRow.broadcast_id, DeliveryRow.state)):
                progress.add_metric([str(broadcast), state], count)
        yield from (oldest, states, progress)


def registry(settings: Settings) -> CollectorRegistry:
    found = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(found)
    found.register(StoreCollector(settings))
    return found


def main() -> None:
    setup_logging()
    settings = load_settings()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    server, _thread = start_http_server(settings.metrics_port, settings.metrics_host, registry(settings))
    log.info("metrics on http://%s:%s/metrics", settings.metrics_host, settings.metrics_port)
    stopping.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
