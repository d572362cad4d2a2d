"""Broadcast tables: one row per notice, one row per (notice, resident).

The UNIQUE (broadcast_id, resident_id) key is what makes a resident get a notice at most once:
fan-out may run again after a crash and simply hits the key. A delivery carries everything a send
job needs (channel, address, rendered text), so sending never reads the residents table.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store import Base, utcnow

# A broadcast: created → scheduled → sending → done; paused from scheduled or sending; cancelled
# from any of those. A delivery: pending → sending → sent → delivered | undelivered | failed, or
# cancelled while still pending.
DELIVERY_RANK = {"pending": 0, "sending": 1, "sent": 2, "delivered": 3, "undelivered": 3, "failed": 3,
                 "cancelled": 3}
UNFINISHED = ("pending", "sending")


class BroadcastRow(Base):
    __tablename__ = "broadcasts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    audience: Mapped[str] = mapped_column(Text)  # the expression, e.g. "tag:elderly and grid:X"
    templates: Mapped[dict] = mapped_column(JSON)  # language → text with {name} style fields
    emergency: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), index=True)
    # The grid subtree the audience is confined to (the creator's jurisdiction); None: the whole city.
    scope: Mapped[str | None] = mapped_column(String(64))
    created_by: Mapped[str | None] = mapped_column(String(32))  # worker id; None from the CLI
    send_at: Mapped[datetime | None] = mapped_column(DateTime)  # UTC; when quiet hours and the operator allow
    audience_size: Mapped[int] = mapped_column(Integer, default=0)  # counted when sending was ordered
    fanout_cursor: Mapped[str | None] = mapped_column(String(32))  # last resident id given a delivery
    fanout_done: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)


class DeliveryRow(Base):
    __tablename__ = "broadcast_deliveries"
    __table_args__ = (
        UniqueConstraint("broadcast_id", "resident_id", name="uq_delivery_resident"),
        Index("ix_delivery_state", "broadcast_id", "state", "next_attempt_at"),
        Index("ix_delivery_sending", "state", "updated_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    broadcast_id: Mapped[int] = mapped_column(ForeignKey("broadcasts.id"))
    resident_id: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(16))  # telegram first where linked, else sms
    phone: Mapped[str] = mapped_column(String(32))  # for SMS, and the fallback from Telegram
    telegram_chat_id: Mapped[int | None] = mapped_column(BigInteger)
    text: Mapped[str] = mapped_column(Text)  # rendered in the resident's language, without signature
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    provider_id: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
