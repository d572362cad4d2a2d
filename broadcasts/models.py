"""The broadcasts table: one row per notice. Its messages are rows of the one deliveries table
(`gateway.store.DeliveryRow`, kind `broadcast`), one per (notice, resident)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store import Base, utcnow


class BroadcastRow(Base):
    """created → scheduled → sending → done; paused from scheduled or sending; cancelled from any of those."""

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
