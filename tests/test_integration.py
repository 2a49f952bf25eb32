"""Real Celery workers (subprocesses) on the local Redis, with the tiny GPT-2 and a SQLite file: a
whole loop through the queues. The faults injected into such workers are in tests/faults/."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis
from conftest import TEST_REDIS
from procs import Worker, first_row, wait_for

from services.ingest.tasks import ingest_path
from shared.tables import DriftReport, ModelVersion, RunStatus, TrainingRun, VersionStatus

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def broker_env(medqa_env, tmp_path) -> Iterator[Callable[..., Worker]]:
    r = redis.Redis.from_url(TEST_REDIS)
    try:
        r.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail(f"Redis is not reachable at {TEST_REDIS}; .ci/run starts it")
    r.flushdb()
    medqa_env(eager="0", visibility_timeout_s="10", train_lr="5e-3")
    workers: list[Worker] = []

    def start(queues: str = "all") -> Worker:
        w = Worker(tmp_path / f"worker{len(workers)}.log", queues)
        workers.append(w)
        return w

    yield start  # type: ignore[misc]
    for w in workers:
        w.stop()
    r.flushdb()




def test_whole_loop_through_real_workers(broker_env, synth_dir):
    broker_env()
    ingest_path(synth_dir)  # 50 abstracts >= trigger 30: a run is queued and sent to the train queue
    version = wait_for("a decided version",
                       lambda: (v := first_row(ModelVersion)) and v.status != VersionStatus.candidate and v, 180)
    assert version.status == VersionStatus.blessed
    wait_for("a drift report", lambda: first_row(DriftReport), 120)
    run = first_row(TrainingRun, id=version.run_id)
    assert run.status == RunStatus.succeeded and run.deliveries == 1
