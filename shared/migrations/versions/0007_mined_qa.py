"""QA items mined from stored abstracts

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 11:30:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Abstracts stored before this revision are not mined here (a migration should not parse every
    # stored abstract inside its transaction), nor by a later ingest (an imported file is skipped by
    # its sha256): `medqa ingest mine` does it.
    op.create_table('minedqa',
    sa.Column('pmid', sa.Integer(), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('context', sa.Text(), nullable=False),
    sa.Column('long_answer', sa.Text(), nullable=False),
    sa.Column('decision', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.Column('rule_version', sa.Integer(), nullable=False),
    sa.Column('content_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('mined_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['pmid'], ['abstract.pmid'], ),
    sa.PrimaryKeyConstraint('pmid')
    )


def downgrade() -> None:
    op.drop_table('minedqa')
