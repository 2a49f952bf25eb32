"""The fault suite: real processes, faults injected into them, and what must hold afterwards (nothing
lost, one version per run, a consistent audit chain, a clear message).

Servers that a test kills are its own (tests/procs.py: a private redis-server or PostgreSQL cluster on
a spare port), never the machine's shared ones. Each test records what it injected and how long the
system took to recover with `fault_record`; with MEDQA_FAULT_REPORT set (bench/faults.py sets it),
those records are appended to that file as JSON lines, for the README's fault table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from conftest import TEST_REDIS
from procs import PostgresServer, RedisServer, Worker

# Read at import: the store fixtures clear every MEDQA_ variable before each test.
REPORT = os.environ.get("MEDQA_FAULT_REPORT")


@pytest.fixture
def fault_record(request: pytest.FixtureRequest) -> Callable[..., None]:
    def record(fault: str, *, recovery_s: float | None = None, **facts: object) -> None:
        if not REPORT:
            return
        row = {"test": request.node.nodeid, "fault": fault,
               "recovery_s": None if recovery_s is None else round(recovery_s, 2), **facts}
        with Path(REPORT).open("a") as f:
            f.write(json.dumps(row) + "\n")

    return record


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start `medqa worker QUEUES` processes with the test's settings; all are stopped afterwards."""
    started: list[Worker] = []

    def start(queues: str = "all") -> Worker:
        worker = Worker(tmp_path / f"worker{len(started)}.log", queues)
        started.append(worker)
        return worker

    start.started = started  # type: ignore[attr-defined]
    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def shared_broker(medqa_env) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Workers on the machine's Redis (a test database, flushed): for faults that do not touch Redis."""
    r = redis.Redis.from_url(TEST_REDIS)
    r.flushdb()
    medqa_env(eager="0", visibility_timeout_s="10", train_lr="5e-3")
    yield
    r.flushdb()


@pytest.fixture
def own_redis(medqa_env, tmp_path: Path) -> Iterator[RedisServer]:  # type: ignore[no-untyped-def]
    """A private Redis as the broker, for tests that kill it."""
    server = RedisServer(tmp_path)
    medqa_env(eager="0", broker_url=server.url, visibility_timeout_s="10", train_lr="5e-3")
    yield server
    server.kill()


@pytest.fixture
def own_pg() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster, for tests that restart it."""
    server = PostgresServer()
    yield server
    server.destroy()
