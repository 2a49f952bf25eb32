"""People in the loop: answers by id, feedback, the review queue, ratings, reviewed training examples

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 07:00:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('answerlog',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('answer_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('asked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('question', sa.Text(), nullable=True),
    sa.Column('answer', sa.Text(), nullable=True),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=True),
    sa.Column('citations', sa.JSON(), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('verdict', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('answerlog', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_answerlog_answer_id'), ['answer_id'], unique=True)
        batch_op.create_index(batch_op.f('ix_answerlog_asked_at'), ['asked_at'], unique=False)

    op.create_table('feedback',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('answer_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('rating', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('correction', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('client', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_feedback_answer_id'), ['answer_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_feedback_created_at'), ['created_at'], unique=False)

    op.create_table('reviewitem',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('priority', sa.Float(), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('answer', sa.JSON(), nullable=False),
    sa.Column('other', sa.JSON(), nullable=True),
    sa.Column('candidate_first', sa.Boolean(), nullable=False),
    sa.Column('candidate_version_id', sa.Integer(), nullable=True),
    sa.Column('champion_version_id', sa.Integer(), nullable=True),
    sa.Column('answer_log_id', sa.Integer(), nullable=True),
    sa.Column('feedback_id', sa.Integer(), nullable=True),
    sa.Column('written_by', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('dedup_key', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('dedup_key')
    )
    with op.batch_alter_table('reviewitem', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reviewitem_candidate_version_id'), ['candidate_version_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_reviewitem_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_reviewitem_source'), ['source'], unique=False)

    op.create_table('reviewedexample',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('answer', sa.Text(), nullable=False),
    sa.Column('context', sa.Text(), nullable=True),
    sa.Column('pmids', sa.JSON(), nullable=False),
    sa.Column('reviewer', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('reviewed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('feedback_id', sa.Integer(), nullable=True),
    sa.Column('withdrawn', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['reviewitem.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('item_id')
    )
    op.create_table('reviewrating',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('reviewer', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('rating', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=True),
    sa.Column('preference', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('correction', sa.Text(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['reviewitem.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('item_id', 'reviewer')
    )
    with op.batch_alter_table('reviewrating', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reviewrating_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_reviewrating_item_id'), ['item_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_reviewrating_reviewer'), ['reviewer'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('reviewrating', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reviewrating_reviewer'))
        batch_op.drop_index(batch_op.f('ix_reviewrating_item_id'))
        batch_op.drop_index(batch_op.f('ix_reviewrating_created_at'))

    op.drop_table('reviewrating')
    op.drop_table('reviewedexample')
    with op.batch_alter_table('reviewitem', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reviewitem_source'))
        batch_op.drop_index(batch_op.f('ix_reviewitem_created_at'))
        batch_op.drop_index(batch_op.f('ix_reviewitem_candidate_version_id'))

    op.drop_table('reviewitem')
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_feedback_created_at'))
        batch_op.drop_index(batch_op.f('ix_feedback_answer_id'))

    op.drop_table('feedback')
    with op.batch_alter_table('answerlog', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_answerlog_asked_at'))
        batch_op.drop_index(batch_op.f('ix_answerlog_answer_id'))

    op.drop_table('answerlog')
