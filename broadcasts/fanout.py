"""Broadcast fan-out, and what the delivery lanes must know of broadcasts.

- `fan_out(...)` streams the audience in keyset pages, inserts one delivery row per resident
  (INSERT ... ON CONFLICT DO NOTHING: running again after a crash adds nobody twice), saves its
  cursor in the same transaction, and hands each page of new rows to the lanes as bulk work. After
  FANOUT_PAGES pages it stops, and its job enqueues the continuation, so no job runs long.
- Sending is the same for every message (gateway.delivery.lanes): a notice is a delivery of kind
  `broadcast`, below replies and task alerts in its channel's lane. `BroadcastLaneRules` tells a
  lane which broadcasts may not send now (paused, cancelled, quiet hours) and marks a broadcast
  done when its last delivery gets an outcome.
- `sweep(...)` (the sweeper's broadcast duty) starts broadcasts that are due, re-enqueues a
  fan-out whose job was lost (rq loses the jobs of a killed worker, the store does not), and
  finishes broadcasts whose deliveries all have an outcome.
Jobs carry ids only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import redis
from sqlalchemy import Insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from broadcasts import service
from broadcasts.audience import GridTree
from broadcasts.models import BroadcastRow
from broadcasts.templates import Renderer, sms_body
from gateway.config import Settings
from gateway.delivery import outbox
from gateway.store import DeliveryRow, insert_for, utcnow
from gateway.world import RESIDENT_BOT, SMS

log = logging.getLogger(__name__)

FANOUT_PAGES = 20  # pages per fan-out job before it hands over to its continuation


class BroadcastLaneRules:
    """What a delivery lane asks of broadcasts (gateway.delivery.lanes.BroadcastRules)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def held(self, session: Session, broadcast_ids: set[int], now: datetime) -> set[int]:
        sendable = {b.id for b in session.scalars(select(BroadcastRow).where(
            BroadcastRow.id.in_(broadcast_ids), BroadcastRow.state == "sending"))
            if service.allowed_now(self.settings, b, now)}
        return broadcast_ids - sendable

    def held_now(self, session: Session, now: datetime) -> set[int]:
        """Every unfinished broadcast that may not send now: its pending rows wait where they are."""
        return {b.id for b in session.scalars(select(BroadcastRow).where(
            BroadcastRow.state.in_(("created", "scheduled", "sending", "paused"))))
            if b.state != "sending" or not service.allowed_now(self.settings, b, now)}

    def recorded(self, session: Session, broadcast_ids: set[int], now: datetime) -> None:
        for broadcast_id in broadcast_ids:
            service.finish_if_complete(session, broadcast_id, now)


def _new_deliveries(session: Session) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING: a resident already given a delivery is skipped."""
    return (insert_for(session, DeliveryRow).on_conflict_do_nothing()
            .returning(DeliveryRow.id, DeliveryRow.channel, DeliveryRow.kind))


def fan_out(settings: Settings, sessions: sessionmaker[Session], connection: redis.Redis, broadcast_id: int,
            pages: int = FANOUT_PAGES) -> bool:
    """Create up to `pages` pages of deliveries and hand them to the lanes; True when the audience is done.

    A resident with a linked chat gets the notice on the residents' bot (when one is configured),
    with their phone kept for the SMS fallback; everyone else by SMS, signed.
    """
    telegram = "resident" in settings.telegram_tokens
    with sessions() as session:
        broadcast = session.get(BroadcastRow, broadcast_id)
        if broadcast is None or broadcast.state != "sending" or broadcast.fanout_done:
            return True
        tree = GridTree.load(session)
        where = service.recipients_where(session, tree, broadcast.audience, broadcast.scope, broadcast.emergency)
        renderer = Renderer.load(session, broadcast.templates)
        pages_left = pages
        for page in service.stream_residents(session, where, after=broadcast.fanout_cursor,
                                             page=settings.broadcast_batch):
            now = utcnow()
            values = []
            for r in page:
                text = renderer.render(r.language, r.name, r.grid_code)
                by_chat = telegram and r.telegram_chat_id is not None
                values.append({
                    "kind": "broadcast", "broadcast_id": broadcast_id, "resident_id": r.id,
                    "channel": RESIDENT_BOT if by_chat else SMS,
                    "recipient": str(r.telegram_chat_id) if by_chat else r.phone,
                    "body": text if by_chat else sms_body(settings.sms_signature, text),
                    "fallback_phone": r.phone, "state": "pending", "attempts": 0,
                    "next_attempt_at": now, "created_at": now, "updated_at": now})
            # executemany (SQLAlchemy's insertmanyvalues): one cached statement, sent as multi-row
            # INSERTs; `.values(list)` compiled a fresh 500-row statement per page (~40% of a worker).
            new = [outbox.Queued(*row) for row in session.connection().execute(_new_deliveries(session), values)]
            session.execute(update(BroadcastRow).where(BroadcastRow.id == broadcast_id)
                            .values(fanout_cursor=page[-1].id, updated_at=now))
            session.commit()
            outbox.enqueue(connection, sorted(new, key=lambda item: item.id))
            pages_left -= 1
            if pages_left == 0:
                return False
        session.execute(update(BroadcastRow).where(BroadcastRow.id == broadcast_id)
                        .values(fanout_done=True, updated_at=utcnow()))
        service.finish_if_complete(session, broadcast_id, utcnow())
        session.commit()
    return True


def sweep(settings: Settings, sessions: sessionmaker[Session], fanout_idle: bool,
          enqueue_fanout: Callable[[int], None]) -> dict[str, int]:
    """Start due broadcasts; when no fan-out is queued, restart the ones whose job was lost; finish
    broadcasts whose every delivery has an outcome."""
    now = utcnow()
    stale = now - timedelta(seconds=settings.stale_after)
    found = {"started": 0, "fanouts": 0, "finished": 0}
    with sessions() as session:
        for broadcast_id in service.start_due(session, settings, now):
            enqueue_fanout(broadcast_id)
            found["started"] += 1
        session.commit()
        for broadcast in session.scalars(select(BroadcastRow).where(BroadcastRow.state == "sending")).all():
            if (fanout_idle and not broadcast.fanout_done and broadcast.updated_at < stale
                    and service.allowed_now(settings, broadcast, now)):
                enqueue_fanout(broadcast.id)
                found["fanouts"] += 1
            found["finished"] += service.finish_if_complete(session, broadcast.id, now)
        session.commit()
    return found
