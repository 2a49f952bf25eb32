"""Alembic environment: the metadata is SQLModel's, the URL comes from shared.db.alembic_config."""

from alembic import context
from sqlmodel import SQLModel

import shared.tables  # noqa: F401  (registers every table on SQLModel.metadata)
from shared.db import engine_for
from shared.search import not_search_index

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    # Reuse the project's engine so SQLite gets the same pragmas as the application.
    connectable = engine_for(url) if url else None
    assert connectable is not None, "no sqlalchemy.url"
    with connectable.connect() as connection:
        # render_as_batch: SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        # include_name: autogenerate must not drop the search index, which the models do not declare.
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                          include_name=not_search_index)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
