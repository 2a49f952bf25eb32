"""A throw-away store for a benchmark: a SQLite file in a temporary folder, or a new PostgreSQL database
on 127.0.0.1:5432 (MEDQA_TEST_PG names the admin database), dropped afterwards. Not a benchmark itself."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_ADMIN = os.environ.get("MEDQA_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def scratch_store(kind: str) -> Iterator[tuple[str, Path]]:
    """(database URL, temporary folder) for `kind` "sqlite" or "postgres"."""
    import sqlalchemy

    with tempfile.TemporaryDirectory() as tmp:
        if kind == "sqlite":
            yield f"sqlite:///{tmp}/bench.db", Path(tmp)
            return
        name = f"medqa_bench_{uuid.uuid4().hex[:8]}"
        admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        try:
            yield url, Path(tmp)
        finally:
            from shared.db import engine_for

            engine_for(url).dispose()  # pooled connections would make DROP DATABASE wait
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()
