"""abstract embeddings and the question log

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 13:35:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('abstractembedding',
    sa.Column('pmid', sa.Integer(), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('content_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['pmid'], ['abstract.pmid'], ),
    sa.PrimaryKeyConstraint('pmid')
    )
    op.create_table('questionlog',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('asked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('n_chars', sa.Integer(), nullable=False),
    sa.Column('n_words', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('questionlog', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_questionlog_asked_at'), ['asked_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('questionlog', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_questionlog_asked_at'))
    op.drop_table('questionlog')
    op.drop_table('abstractembedding')
