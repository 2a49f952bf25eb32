"""Checkpoints on the artifact store; retrieval index versions as store folders

A training run records the checkpoint it last published (sha256 and step beside checkpoint_path), so a
worker on another host resumes from it (rows before it have no sha256: their runs resume from the local
file, as before). Retrieval index versions become folders in the artifact store
(index, keys, trained-on count) named by their folder sha256; the rows written before, which name a
local .faiss file, are removed: the index is derived data, and the next monitor pass builds it afresh.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 11:10:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('trainingrun', schema=None) as batch_op:
        batch_op.add_column(sa.Column('checkpoint_sha256', sqlmodel.sql.sqltypes.AutoString(length=64),
                                      nullable=True))
        batch_op.add_column(sa.Column('checkpoint_step', sa.Integer(), nullable=False, server_default='0'))
    op.execute("DELETE FROM retrievalindexversion")


def downgrade() -> None:
    with op.batch_alter_table('trainingrun', schema=None) as batch_op:
        batch_op.drop_column('checkpoint_step')
        batch_op.drop_column('checkpoint_sha256')
