"""The broker (Redis) down or restarted: the store keeps the work, the sweeper re-sends what the broker
lost, and the loop ends with every abstract trained once and one version per run.

A private redis-server that keeps nothing on disk (tests/procs.py): a restart loses every queued and
unacknowledged message, the worst case.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from procs import MEDQA, count_rows, wait_for
from sqlmodel import col, select

from services.devkit.synth import write_corpus
from services.ingest.tasks import ingest_path
from shared.db import session_scope
from shared.pipeline import sweep_now
from shared.queries import unclaimed_pmids
from shared.tables import Abstract, IngestCursor, ModelVersion, RunStatus, TrainingRun, VersionStatus

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.integration]




def _runs() -> list[TrainingRun]:
    with session_scope() as s:
        return list(s.exec(select(TrainingRun)))


def _decided_versions() -> list[ModelVersion]:
    with session_scope() as s:
        return list(s.exec(select(ModelVersion).where(ModelVersion.status != VersionStatus.candidate)))


def _swept_until(what: str, done, timeout: float):  # type: ignore[no-untyped-def]
    """Wait for `done`, running the sweeper every 5 s as beat would."""
    last = [0.0]

    def check():  # type: ignore[no-untyped-def]
        if time.monotonic() - last[0] >= 5:
            last[0] = time.monotonic()
            sweep_now()
        return done()

    return wait_for(what, check, timeout)


def _nothing_lost(expected_abstracts: int) -> None:
    """Every stored abstract trained by exactly one succeeded run; one version per run."""
    assert count_rows(Abstract) == expected_abstracts
    with session_scope() as s:
        assert not unclaimed_pmids(s)
        runs = list(s.exec(select(TrainingRun)))
        versions = list(s.exec(select(ModelVersion)))
    assert all(r.status == RunStatus.succeeded for r in runs)
    assert sorted(v.run_id for v in versions) == sorted(r.id for r in runs)


def test_dead_broker_at_ingest_is_recovered_by_the_sweeper(shared_broker, medqa_env, workers, synth_dir,
                                                           fault_record):
    from conftest import TEST_REDIS

    medqa_env(eager="0", broker_url="redis://127.0.0.1:1/0")  # nothing listens there
    t0 = time.monotonic()
    res = subprocess.run([MEDQA, "ingest", "files", str(synth_dir), "--json"], capture_output=True, text=True,
                         env=os.environ.copy(), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["stored"] == 50 and time.monotonic() - t0 < 60  # stored, no hang
    assert "left for the sweeper" in res.stderr  # abstracts.stored could not be sent ...
    assert not _runs()
    with session_scope() as s:
        assert len(unclaimed_pmids(s)) == 50  # ... but the work it names is in the store

    medqa_env(eager="0", broker_url=TEST_REDIS, visibility_timeout_s="10", train_lr="5e-3")  # broker is back
    workers()
    back = time.monotonic()
    out = subprocess.run([MEDQA, "sweep", "--json"], capture_output=True, text=True, env=os.environ.copy(),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "train.trigger" in json.loads(out.stdout)["abstracts"], out.stderr[-3000:]  # the event again
    wait_for("a decided version", lambda: _decided_versions(), 240)
    _nothing_lost(50)
    fault_record("broker down during ingest", recovery_s=time.monotonic() - back)


def test_redis_restarted_mid_ingest(own_redis, medqa_env, workers, tmp_path, fault_record):
    medqa_env(eager="0", broker_url=own_redis.url, visibility_timeout_s="10", train_lr="5e-3",
              trigger_min_new="30")
    folder = tmp_path / "updates"
    write_corpus(folder, files=4, per_file=2500, seed=23)
    workers()
    cli = subprocess.Popen([MEDQA, "ingest", "files", str(folder), "--json"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    imported = col(IngestCursor.watermark).is_not(None)
    wait_for("the first file imported", lambda: count_rows(IngestCursor, imported) >= 1, 120, every=0.05)
    own_redis.kill()
    time.sleep(2.0)
    own_redis.start()
    restarted = time.monotonic()
    out, err = cli.communicate(timeout=300)
    assert cli.returncode == 0, err[-3000:]
    assert json.loads(out)["stored"] == 4 * 2500  # the import itself never needed the broker

    _swept_until("every abstract trained and decided",
                 lambda: (runs := _runs()) and all(r.status == RunStatus.succeeded for r in runs)
                 and len(_decided_versions()) == len(runs) and not _unclaimed(), 420)
    _nothing_lost(4 * 2500)
    fault_record("Redis killed and restarted mid-ingest", recovery_s=time.monotonic() - restarted,
                 runs=len(_runs()))


def _unclaimed() -> list[int]:
    with session_scope() as s:
        return unclaimed_pmids(s)


def test_redis_restarted_mid_training(own_redis, medqa_env, workers, synth_dir, fault_record):
    medqa_env(eager="0", broker_url=own_redis.url, visibility_timeout_s="10", train_lr="5e-3",
              train_max_steps="600", checkpoint_every="100")
    workers()
    ingest_path(synth_dir)
    wait_for("training under way", lambda: (r := _runs()) and r[0].status == RunStatus.running and r[0].step >= 100,
             180)
    own_redis.kill()
    time.sleep(3.0)
    own_redis.start()
    restarted = time.monotonic()
    _swept_until("the run's version decided", lambda: _decided_versions(), 420)
    _nothing_lost(50)
    run = _runs()[0]
    assert run.deliveries <= 2  # the same run finished (or resumed once), never a second run for it
    fault_record("Redis killed and restarted mid-training", recovery_s=time.monotonic() - restarted,
                 deliveries=run.deliveries)
