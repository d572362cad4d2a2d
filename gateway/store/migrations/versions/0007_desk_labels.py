"""desk labels: what the triage desk settled, as labelled examples for training

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 15:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('desk_labels',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('category', sa.String(length=64), nullable=True),
    sa.Column('grid_code', sa.String(length=64), nullable=True),
    sa.Column('appeal_type', sa.String(length=64), nullable=True),
    sa.Column('predicted_category', sa.String(length=64), nullable=True),
    sa.Column('predicted_grid', sa.String(length=64), nullable=True),
    sa.Column('settled_by', sa.String(length=64), nullable=False),
    sa.Column('settled_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('desk_labels', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_desk_labels_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_desk_labels_settled_at'), ['settled_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('desk_labels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_desk_labels_settled_at'))
        batch_op.drop_index(batch_op.f('ix_desk_labels_case_id'))
    op.drop_table('desk_labels')
