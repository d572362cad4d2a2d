"""channel columns wide enough for `telegram-resident`; an index on inbound_messages.case_id

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 15:20:00

The residents' bot's channel name has 17 characters: PostgreSQL refused it in the 16-character
channel columns of inbound messages, cases and contacts (SQLite does not enforce a VARCHAR's
length, so its tables are left as they are rather than rebuilt). The acknowledgement-latency
metric looks up, for each reply the provider accepted, when the appeal that opened its case was
stored: without the index that is a scan of every message.
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


CHANNEL_COLUMNS = (('inbound_messages', 'channel'), ('cases', 'channel'), ('contacts', 'channel'))


def upgrade() -> None:
    if op.get_bind().dialect.name != 'sqlite':
        for table, column in CHANNEL_COLUMNS:
            op.alter_column(table, column, type_=sa.String(length=32), existing_type=sa.String(length=16))
    op.create_index('ix_inbound_case', 'inbound_messages', ['case_id'])


def downgrade() -> None:
    op.drop_index('ix_inbound_case', table_name='inbound_messages')
    if op.get_bind().dialect.name != 'sqlite':
        for table, column in CHANNEL_COLUMNS:
            op.alter_column(table, column, type_=sa.String(length=16), existing_type=sa.String(length=32))
