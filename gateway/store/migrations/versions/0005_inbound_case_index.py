"""an index on inbound_messages.case_id: from a case to the message that opened it

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 15:20:00

The acknowledgement-latency metric looks up, for each reply the provider accepted, when the
appeal that opened its case was stored; without the index that is a scan of every message.
"""

from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_inbound_case', 'inbound_messages', ['case_id'])


def downgrade() -> None:
    op.drop_index('ix_inbound_case', table_name='inbound_messages')
