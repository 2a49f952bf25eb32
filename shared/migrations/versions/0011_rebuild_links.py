"""Clean rebuilds: runs and versions name the version they replace

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 00:50:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('trainingrun') as batch:
        batch.add_column(sa.Column('replaces_version_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('rebuild_of', sa.Integer(), nullable=True))
    with op.batch_alter_table('modelversion') as batch:
        batch.add_column(sa.Column('replaces_version_id', sa.Integer(), nullable=True))
        batch.create_foreign_key('fk_modelversion_replaces', 'modelversion', ['replaces_version_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('modelversion') as batch:
        batch.drop_constraint('fk_modelversion_replaces', type_='foreignkey')
        batch.drop_column('replaces_version_id')
    with op.batch_alter_table('trainingrun') as batch:
        batch.drop_column('rebuild_of')
        batch.drop_column('replaces_version_id')
