"""Schema migrations keep the data they move."""

from __future__ import annotations

from sqlalchemy import select, text

from gateway.store import DeliveryRow, make_engine, migrate, session_factory


def test_0004_moves_outbox_rows_and_broadcast_deliveries_into_one_table(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(engine, revision="0003")
    now = "2026-12-01 08:00:00.000000"
    with engine.begin() as connection:
        for statement in (
            "INSERT INTO outbox (id, channel, recipient, body, state, attempts, next_attempt_at, created_at,"
            " updated_at) VALUES (7, 'sms', '+8613800000001', 'ack', 'delivered', 1, :now, :now, :now),"
            " (9, 'telegram-worker', '42', 'task', 'pending', 0, :now, :now, :now)",
            "INSERT INTO broadcasts (id, title, audience, templates, emergency, state, audience_size, fanout_done,"
            " created_at, updated_at) VALUES (1, 't', 'all', '{}', 0, 'sending', 2, 1, :now, :now)",
            "INSERT INTO broadcast_deliveries (broadcast_id, resident_id, channel, phone, telegram_chat_id, text,"
            " state, attempts, next_attempt_at, provider_id, updated_at) VALUES"
            " (1, 'R1', 'sms', '+8613800000002', NULL, '停水通知', 'pending', 0, :now, NULL, :now),"
            " (1, 'R2', 'telegram', '+8613800000003', 55, '停水通知', 'sent', 1, :now, '12', :now)",
        ):
            connection.execute(text(statement), {"now": now})
    migrate(engine, sms_signature="【网格】")
    with session_factory(engine)() as session:
        rows = {row.id: row for row in session.scalars(select(DeliveryRow))}
        tables = set(session.scalars(text("SELECT name FROM sqlite_master WHERE type = 'table'")))
        assert {"outbox", "broadcast_deliveries"}.isdisjoint(tables)
        assert (rows[7].kind, rows[7].state, rows[7].body) == ("reply", "delivered", "ack")
        assert (rows[9].kind, rows[9].channel, rows[9].recipient) == ("alert", "telegram-worker", "42")
        notices = sorted((r for r in rows.values() if r.kind == "broadcast"), key=lambda r: r.resident_id)
        assert [(r.channel, r.recipient, r.body, r.state, r.fallback_phone) for r in notices] == [
            ("sms", "+8613800000002", "【网格】停水通知", "pending", "+8613800000002"),
            ("telegram-resident", "55", "停水通知", "sent", "+8613800000003")]
        assert min(r.id for r in notices) > 9  # new ids, after the outbox's
        session.add(DeliveryRow(kind="reply", channel="sms", recipient="+8613800000004", body="x", state="pending",
                                attempts=0))
        session.commit()
