"""an index for a case's deliveries

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 19:10:00

The send lane observes each acknowledgement's latency by finding the case's first reply, and the
console shows a case's messages; without this index each of those scanned every delivery (on
PostgreSQL, at 100 appeals/s, that query alone kept a server process half busy).
"""

from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_case', ['case_id', 'kind'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_case')
