"""Real Celery workers (subprocesses) on the local Redis, with the tiny GPT-2 and a SQLite file.

Covers: a whole loop through the queues; a worker SIGKILLed mid-training whose task comes back
within 30 s and yields exactly one version; a dead broker during ingest, recovered by the sweeper.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from conftest import TEST_REDIS
from sqlmodel import func, select

from services.ingest.tasks import ingest_path
from shared.db import session_scope
from shared.queries import unclaimed_pmids
from shared.tables import DriftReport, ModelVersion, RunStatus, TrainingRun, VersionStatus

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MEDQA = str(Path(sys.executable).with_name("medqa"))


def wait_for(what: str, check: Callable[[], object], timeout: float, every: float = 0.5) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _die_with_parent() -> None:
    """A worker outlives a killed test run otherwise, and then takes later runs' messages off the
    shared test broker (seen here: a stray train worker starved the next run's loop)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Worker:
    def __init__(self, log: Path, queues: str = "all") -> None:
        self.log = log
        self.proc = subprocess.Popen([MEDQA, "worker", queues], stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                     env=os.environ.copy(), start_new_session=True, preexec_fn=_die_with_parent)
        wait_for("worker ready", lambda: b"ready." in log.read_bytes() or self.proc.poll() is not None, 90)
        assert self.proc.poll() is None, log.read_text()[-3000:]

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # main process and pool children, no warm shutdown
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def broker_env(medqa_env, tmp_path) -> Iterator[Callable[..., list[Worker]]]:
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


def _one(model, **where):  # type: ignore[no-untyped-def]
    with session_scope() as s:
        stmt = select(model)
        for k, v in where.items():
            stmt = stmt.where(getattr(model, k) == v)
        return s.exec(stmt).first()


def test_whole_loop_through_real_workers(broker_env, synth_dir):
    broker_env()
    ingest_path(synth_dir)  # 50 abstracts >= trigger 30: a run is queued and sent to the train queue
    version = wait_for("a decided version", lambda: (v := _one(ModelVersion)) and v.status != VersionStatus.candidate
                       and v, 180)
    assert version.status == VersionStatus.blessed
    wait_for("a drift report", lambda: _one(DriftReport), 120)
    run = _one(TrainingRun, id=version.run_id)
    assert run.status == RunStatus.succeeded and run.deliveries == 1


def test_killed_worker_task_is_redelivered_and_resumes(broker_env, medqa_env, synth_dir, tmp_path):
    # A long run (tiny model, many steps) so there is time to kill it half-way.
    medqa_env(eager="0", visibility_timeout_s="10", train_max_steps="1500", checkpoint_every="100")
    worker = broker_env("train")
    ingest_path(synth_dir)
    wait_for("training past its first checkpoint",
             lambda: (r := _one(TrainingRun)) and r.status == RunStatus.running and r.step >= 150, 120)
    worker.kill()
    killed_at = time.monotonic()
    step_at_kill = _one(TrainingRun).step

    broker_env("train")
    wait_for("the task redelivered", lambda: _one(TrainingRun).deliveries >= 2, 60, every=0.2)
    redelivered_after = time.monotonic() - killed_at
    assert redelivered_after <= 30, f"redelivered after {redelivered_after:.1f} s"

    version = wait_for("the run's version", lambda: _one(ModelVersion), 240)
    run = _one(TrainingRun)
    assert run.status == RunStatus.succeeded and run.deliveries == 2
    # From its last checkpoint, not from step 0. (The row's step lags the trainer by up to 2 s, so
    # the checkpoint may be a little past the step read at the kill.)
    resumed = version.metrics["resumed_from_step"]
    assert resumed % 100 == 0 and max(100, step_at_kill - 100) <= resumed < 1500
    with session_scope() as s:
        assert s.exec(select(func.count()).select_from(ModelVersion)).one() == 1


def test_dead_broker_at_ingest_is_recovered_by_the_sweeper(broker_env, medqa_env, synth_dir):
    medqa_env(eager="0", broker_url="redis://127.0.0.1:1/0")  # nothing listens there
    t0 = time.monotonic()
    res = subprocess.run([MEDQA, "ingest", "files", str(synth_dir), "--json"], capture_output=True, text=True,
                         env=os.environ.copy(), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["stored"] == 50 and time.monotonic() - t0 < 60  # stored, no hang
    assert "left for the sweeper" in res.stderr  # abstracts.stored could not be sent ...
    assert _one(TrainingRun) is None
    with session_scope() as s:
        assert len(unclaimed_pmids(s)) == 50  # ... but the work it names is in the store

    medqa_env(eager="0", broker_url=TEST_REDIS, visibility_timeout_s="10", train_lr="5e-3")  # broker is back
    broker_env()
    out = subprocess.run([MEDQA, "sweep", "--json"], capture_output=True, text=True, env=os.environ.copy(),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "train.trigger" in json.loads(out.stdout)["abstracts"], out.stderr[-3000:]  # the event again
    wait_for("training finished", lambda: (r := _one(TrainingRun)) and r.status == RunStatus.succeeded, 180)
    assert _one(ModelVersion) is not None
