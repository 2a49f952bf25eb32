"""Fan-out ingest: one row per queued NLM file, keyed by its sha256 (services/ingest/store.py)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 07:20:47

Files imported before this revision have no row: their IngestCursor watermark (the file's sha256) still
makes them skipped, and the first import that meets one records it as done.
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ingestfile',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('importer', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('stored', sa.Integer(), nullable=False),
    sa.Column('updated', sa.Integer(), nullable=False),
    sa.Column('duplicates', sa.Integer(), nullable=False),
    sa.Column('filtered', sa.Integer(), nullable=False),
    sa.Column('deleted', sa.Integer(), nullable=False),
    sa.Column('retracted', sa.Integer(), nullable=False),
    sa.Column('mined', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('queued_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('started_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('finished_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('ingestfile', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ingestfile_sha256'), ['sha256'], unique=True)
        batch_op.create_index(batch_op.f('ix_ingestfile_status'), ['status'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('ingestfile', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ingestfile_status'))
        batch_op.drop_index(batch_op.f('ix_ingestfile_sha256'))

    op.drop_table('ingestfile')
