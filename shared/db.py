"""Engine, sessions and schema migrations.

The same code runs on SQLite (embedded default) and PostgreSQL (compose, tests). The schema is
owned by Alembic: `migrate()` upgrades to head and is safe to call on every start.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session, create_engine

from shared.settings import get_settings

log = logging.getLogger("medqa.db")
T = TypeVar("T")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
WRITE_LOCK = "medqa_write_lock"  # execution option: begin a SQLite transaction with the write lock


@functools.cache
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Several processes (workers, CLI, API) share one SQLite file: WAL lets readers go on while
        # one writes, and busy_timeout makes a writer wait instead of failing with "locked".
        eng = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(eng, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
            # pysqlite would open transactions itself, lazily, at the first write: the BEGIN below
            # is SQLAlchemy's instead, so a transaction can take the write lock up front.
            dbapi_conn.isolation_level = None

        @event.listens_for(eng, "begin")
        def _begin(conn):  # type: ignore[no-untyped-def]
            # SQLite has no SELECT ... FOR UPDATE, and a deferred transaction reads a snapshot that a
            # concurrent writer can make stale before this one writes. A session that reads in order
            # to write (write_lock below) begins IMMEDIATE: it waits for the write lock first, so what
            # it reads is current until it commits.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_LOCK) else "BEGIN")

        return eng
    return create_engine(url, pool_pre_ping=True)


def get_engine() -> Engine:
    return engine_for(get_settings().database_url)


@contextmanager
def session_scope() -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error, so nothing is half-written."""
    with Session(get_engine(), expire_on_commit=False) as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        # Outside the try: an error raised by commit itself is left as it is (a failed flush has rolled
        # back already), and so is one raised after it, by what an eager event ran on commit (a Ctrl-C
        # in a training run); rolling back a committed session would only replace it with its own error.
        session.commit()


def write_lock(session: Session) -> None:
    """Make `session`'s transaction hold the store's write lock, as PostgreSQL's row locks (SELECT ...
    FOR UPDATE) do for the rows read. Called before the session's first statement, a SQLite transaction
    begins IMMEDIATE: it waits for the lock, so all it reads stays current. Called later, a no-op write
    takes the lock now; if another writer committed since this transaction's first read, SQLite refuses
    it (OperationalError, "database is locked") rather than let a stale read be written on."""
    if session.get_bind().dialect.name != "sqlite":
        return
    if not session.in_transaction():
        session.connection(execution_options={WRITE_LOCK: True})
        return
    connection = session.connection()
    if not connection.get_execution_options().get(WRITE_LOCK):
        # Every migrated store has this one-row table; WHERE 0 changes nothing but takes the lock.
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = version_num WHERE 0")


# Operational errors that mean "another transaction holds what this one needs", not "the store is down".
CONFLICT_MARKERS = ("database is locked", "could not obtain lock", "deadlock detected", "could not serialize",
                    "lock timeout")


def store_unavailable(exc: BaseException) -> str | None:
    """Why the store cannot be used, for an error that says it is down (refused, gone, unreadable):
    the driver's first line, which names neither the URL nor a password. None for any other error,
    a lock conflict included (the caller may retry that at once)."""
    if not isinstance(exc, OperationalError | InterfaceError):
        return None
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    reason = lines[0] if lines else type(exc).__name__
    if any(marker in reason.lower() for marker in CONFLICT_MARKERS):
        return None
    return reason[:300]


def when_store_is_back(work: Callable[[], T], *, wait_s: float, what: str) -> T:
    """Run `work` (one transaction), again while the store is unavailable, for up to `wait_s`: a
    PostgreSQL restart must not throw away minutes of finished work (a trained adapter waiting for its
    version row). Any other error, or a store still down at the deadline, is raised as it is."""
    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            return work()
        except (OperationalError, InterfaceError) as exc:
            reason = store_unavailable(exc)
            if reason is None or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: the store is unavailable (%s); trying again in %.1f s", what, reason, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    return cfg


def migrate(url: str | None = None) -> None:
    command.upgrade(alembic_config(url), "head")
