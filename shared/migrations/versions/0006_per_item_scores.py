"""per-item suite scores and the gate's per-guard verdicts

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 08:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows get empty values: a suite result without per-item values is scored again the next
    # time a gate needs it (services/evaluator/gate.cached_scores), and an old decision has no guards.
    with op.batch_alter_table('suiteresult') as batch:
        batch.add_column(sa.Column('items', sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    with op.batch_alter_table('evaluation') as batch:
        batch.add_column(sa.Column('guards', sa.JSON(), nullable=False, server_default=sa.text("'[]'")))


def downgrade() -> None:
    with op.batch_alter_table('evaluation') as batch:
        batch.drop_column('guards')
    with op.batch_alter_table('suiteresult') as batch:
        batch.drop_column('items')
