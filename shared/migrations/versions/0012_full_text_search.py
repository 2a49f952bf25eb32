"""Full-text search over abstracts: SQLite FTS5 (embedded default), PostgreSQL GIN (deployment)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 03:10:00

SQLite: an external-content FTS5 table over abstract(title, text), keyed by the abstract's rowid (its
pmid, an INTEGER PRIMARY KEY), kept in step by triggers, so every writer (ingest, tests, a hand-run
UPDATE) keeps it current without knowing it exists. A later batch migration that recreates `abstract`
on SQLite drops these triggers and must create them again (shared/search.py: SQLITE_TRIGGERS).
PostgreSQL: a stored generated tsvector column (the database keeps it current) with a GIN index.
"""
from alembic import op

from shared.search import FTS_DDL, FTS_TABLE, PG_COLUMN, PG_INDEX, PG_VECTOR, SQLITE_TRIGGERS

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(FTS_DDL)
        for name, sql in SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {sql}")
        op.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')")  # the rows stored before
    else:
        op.execute(f"ALTER TABLE abstract ADD COLUMN {PG_COLUMN} tsvector GENERATED ALWAYS AS ({PG_VECTOR}) STORED")
        op.execute(f"CREATE INDEX {PG_INDEX} ON abstract USING gin ({PG_COLUMN})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute(f"DROP TABLE IF EXISTS {FTS_TABLE}")
    else:
        op.execute(f"DROP INDEX IF EXISTS {PG_INDEX}")
        op.execute(f"ALTER TABLE abstract DROP COLUMN IF EXISTS {PG_COLUMN}")
