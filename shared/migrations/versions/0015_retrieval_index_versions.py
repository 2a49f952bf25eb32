"""The shared ANN retrieval index: its published versions

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 07:50:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('retrievalindexversion',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('path', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('vectors', sa.Integer(), nullable=False),
    sa.Column('trained_on', sa.Integer(), nullable=False),
    sa.Column('embedding_model', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('added', sa.Integer(), nullable=False),
    sa.Column('rebuilt', sa.Boolean(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('retrievalindexversion', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_retrievalindexversion_created_at'), ['created_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('retrievalindexversion', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_retrievalindexversion_created_at'))

    op.drop_table('retrievalindexversion')
