"""Tombstones: deletions and retractions that arrive before the record they name

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 00:00:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Before this revision such a deletion or retraction was dropped, not kept: nothing to backfill.
    op.create_table('tombstone',
    sa.Column('pmid', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('recorded_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('pmid', 'kind')
    )


def downgrade() -> None:
    op.drop_table('tombstone')
