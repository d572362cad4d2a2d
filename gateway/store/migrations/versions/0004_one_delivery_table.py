"""one delivery table: replies, task alerts and broadcast deliveries in `deliveries`

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 15:00:00

Outbox rows keep their ids (Twilio's callbacks for them name `?outbox=<id>`); broadcast deliveries
get new ids and are found by their MessageSid when a late report for them arrives. Their channel
`telegram` becomes the residents' bot, and unsent SMS get the sender signature they would have
been sent with.
"""

import sqlalchemy as sa
from alembic import context, op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('recipient', sa.String(length=64), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('markup', sa.JSON(), nullable=True),
    sa.Column('case_id', sa.Integer(), nullable=True),
    sa.Column('broadcast_id', sa.Integer(), nullable=True),
    sa.Column('resident_id', sa.String(length=32), nullable=True),
    sa.Column('fallback_phone', sa.String(length=32), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('provider_id', sa.String(length=64), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('broadcast_id', 'resident_id', name='uq_delivery_broadcast_resident')
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_due', ['state', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_deliveries_broadcast', ['broadcast_id', 'state'], unique=False)
        batch_op.create_index(batch_op.f('ix_deliveries_provider_id'), ['provider_id'], unique=False)

    op.execute(
        "INSERT INTO deliveries (id, kind, channel, recipient, body, markup, case_id, state, provider_id,"
        " attempts, next_attempt_at, last_error, created_at, updated_at)"
        " SELECT id, CASE WHEN channel = 'telegram-worker' THEN 'alert' ELSE 'reply' END, channel, recipient,"
        " body, markup, case_id, state, provider_id, attempts, next_attempt_at, last_error, created_at,"
        " updated_at FROM outbox")
    if op.get_bind().dialect.name == "postgresql":  # ids were given: move the sequence past them
        op.execute("SELECT setval(pg_get_serial_sequence('deliveries', 'id'), COALESCE(MAX(id), 0) + 1, false)"
                   " FROM deliveries")
    signature = context.config.attributes.get("sms_signature", "")
    op.get_bind().execute(sa.text(
        "INSERT INTO deliveries (kind, channel, recipient, body, broadcast_id, resident_id, fallback_phone,"
        " state, provider_id, attempts, next_attempt_at, last_error, created_at, updated_at)"
        " SELECT 'broadcast',"
        " CASE WHEN channel = 'telegram' THEN 'telegram-resident' ELSE channel END,"
        " CASE WHEN channel = 'telegram' THEN CAST(telegram_chat_id AS VARCHAR(64)) ELSE phone END,"
        " CASE WHEN channel = 'sms' THEN :signature || text ELSE text END,"
        " broadcast_id, resident_id, phone, state, provider_id, attempts, next_attempt_at, last_error,"
        " updated_at, updated_at FROM broadcast_deliveries ORDER BY id"), {"signature": signature})
    op.drop_table('outbox')
    op.drop_table('broadcast_deliveries')


def downgrade() -> None:
    raise NotImplementedError("the outbox and broadcast_deliveries tables are merged; restore a backup instead")
