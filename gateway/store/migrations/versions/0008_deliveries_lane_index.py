"""an index for a lane's due replies and alerts

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 16:50:00

An urgent send job also takes the other replies and alerts already due on its channel; without
this index that query would scan every pending broadcast notice.
"""

from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_lane', ['state', 'channel', 'kind', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_lane')
