"""Lineage at document level: every manifest item in an indexed table; the API's citations logged

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 00:40:00
"""
import json

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

# The manifest fields and their lineage roles, as shared/lineage.py writes them for new runs.
ROLES = {"new": "new", "holdout": "holdout", "replay_pmids": "replay", "mined": "mined",
         "replay_mined": "replay_mined", "replay_general": "general"}


def upgrade() -> None:
    op.create_table('lineageitem',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('ref', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('pmid', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['trainingrun.id'], ),
    sa.PrimaryKeyConstraint('run_id', 'role', 'ref')
    )
    op.create_index(op.f('ix_lineageitem_pmid'), 'lineageitem', ['pmid'], unique=False)
    op.create_table('citationlog',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('pmid', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=True),
    sa.Column('asked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_citationlog_pmid'), 'citationlog', ['pmid'], unique=False)
    op.create_index(op.f('ix_citationlog_asked_at'), 'citationlog', ['asked_at'], unique=False)
    _backfill()


def _backfill() -> None:
    """Existing runs' manifests into the table, one run at a time (bounded memory)."""
    bind = op.get_bind()
    table = sa.table('lineageitem', sa.column('run_id'), sa.column('role'), sa.column('ref'), sa.column('pmid'))
    run_ids = [r[0] for r in bind.execute(sa.text("SELECT id FROM trainingrun ORDER BY id"))]
    for run_id in run_ids:
        raw = bind.execute(sa.text("SELECT manifest FROM trainingrun WHERE id = :id"), {"id": run_id}).scalar()
        manifest = json.loads(raw) if isinstance(raw, str) else (raw or {})
        rows = []
        for field, role in ROLES.items():
            for item in dict.fromkeys(manifest.get(field) or []):
                pmid = item if role != "general" else None
                rows.append({"run_id": run_id, "role": role, "ref": str(item)[:64], "pmid": pmid})
        if rows:
            bind.execute(table.insert(), rows)


def downgrade() -> None:
    op.drop_index(op.f('ix_citationlog_asked_at'), table_name='citationlog')
    op.drop_index(op.f('ix_citationlog_pmid'), table_name='citationlog')
    op.drop_table('citationlog')
    op.drop_index(op.f('ix_lineageitem_pmid'), table_name='lineageitem')
    op.drop_table('lineageitem')
