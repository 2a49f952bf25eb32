"""The Alembic migrations build exactly the schema the models declare, on SQLite and PostgreSQL."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import shared.tables  # noqa: F401
from shared.db import get_engine, migrate
from shared.search import not_search_index


def test_migrations_match_models(store_env):
    migrate()  # again: a no-op at head
    with get_engine().connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"render_as_batch": True, "include_name": not_search_index})
        diff = compare_metadata(ctx, SQLModel.metadata)
    assert diff == []
