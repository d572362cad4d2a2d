"""Prometheus metrics for whoever is on call.

Every Gridline process counts what it does in prometheus-client's multiprocess mode: `gridline up`
points PROMETHEUS_MULTIPROC_DIR at `<home>/metrics` (emptied at start) before starting its
children, and the library then keeps each process's values in files there. The metrics role
(`gateway.roles.metrics`) serves them all, summed, on GRIDLINE_METRICS_HOST:GRIDLINE_METRICS_PORT
(loopback by default), together with what is read at scrape time from Redis and the store: queue
depths, the age of the oldest pending work, deliveries by channel and state, broadcast progress.
A process started without the variable (a CLI command, a test) counts in its own memory only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from prometheus_client import Counter, Histogram
from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from gateway.store import DeliveryRow, InboundRow

INBOUND = Counter("gridline_inbound_messages", "Inbound webhooks by channel and outcome "
                  "(stored, duplicate, refused_<status>, unavailable)", ["channel", "outcome"])
ACKNOWLEDGEMENT = Histogram("gridline_acknowledgement_seconds",
                            "From an appeal stored to its acknowledgement accepted by the provider",
                            buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900))
PROVIDER_ERRORS = Counter("gridline_provider_errors", "Provider errors on sending, by channel and code",
                          ["channel", "code"])
CONFIDENCE = Histogram("gridline_classifier_confidence", "The classifier's confidence in each new case",
                       buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
CASES_OPENED = Counter("gridline_cases_opened", "New cases by queue: routed, or triage when unsure "
                       "(the triage share is triage / all)", ["queue"])
SWEEPER_DUTY = Histogram("gridline_sweeper_duty_seconds", "How long each sweeper duty took", ["duty"],
                         buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
SWEEPER_FOUND = Counter("gridline_sweeper_requeued", "Lost work the sweeper queued again, by duty", ["duty"])


def inbound(channel: str, outcome: str) -> None:
    INBOUND.labels(channel, outcome).inc()


def acknowledged(session: Session, delivery_ids: list[int], accepted_at: datetime) -> None:
    """Of these deliveries the provider just accepted, each case's first reply acknowledges the
    appeal that opened the case: observe how long after that appeal was stored (naive UTC)."""
    if not delivery_ids:
        return
    first_reply = aliased(DeliveryRow)
    first_inbound = aliased(InboundRow)
    stored = session.scalars(
        select(InboundRow.received_at)
        .join(DeliveryRow, DeliveryRow.case_id == InboundRow.case_id)
        .where(DeliveryRow.id.in_(delivery_ids), DeliveryRow.kind == "reply",
               DeliveryRow.id == select(func.min(first_reply.id)).where(
                   first_reply.case_id == DeliveryRow.case_id, first_reply.kind == "reply").scalar_subquery(),
               InboundRow.id == select(func.min(first_inbound.id)).where(
                   first_inbound.case_id == DeliveryRow.case_id).scalar_subquery()))
    for stored_at in stored:
        ACKNOWLEDGEMENT.observe(max(0.0, (accepted_at - stored_at).total_seconds()))


def provider_error(channel: str, code: str | None) -> None:
    PROVIDER_ERRORS.labels(channel, code or "unknown").inc()


def case_opened(queue: str, confidence: float) -> None:
    CASES_OPENED.labels(queue).inc()
    CONFIDENCE.observe(confidence)


@contextmanager
def duty(name: str) -> Iterator[None]:
    """Times one sweeper duty."""
    started = time.perf_counter()
    try:
        yield
    finally:
        SWEEPER_DUTY.labels(name).observe(time.perf_counter() - started)
