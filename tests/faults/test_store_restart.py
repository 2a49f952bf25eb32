"""PostgreSQL restarted (an immediate stop: every connection cut) under the API and under a training
worker, on a private cluster (tests/procs.py). The API says 503 with a reason while the store is down
and recovers by itself; a run in progress goes on and yields its one version."""

from __future__ import annotations

import time

import httpx
import pytest
from apikit import API_ENV, AUTH, ingest_synth, make_version, registry_state
from procs import ApiServer, first_row, wait_for
from sqlmodel import col, func, select

from services.ingest.tasks import ingest_path
from shared.db import session_scope
from shared.tables import Abstract, ModelVersion, RunStatus, TrainingRun, VersionStatus

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.integration]


def test_postgres_restarted_under_the_api(own_pg, medqa_env, tmp_path, fault_record):
    medqa_env(**API_ENV, database_url=own_pg.url)
    ingest_synth(tmp_path / "corpus", files=1, per_file=20, seed=7)
    make_version(tmp_path, seed=1)
    champion = make_version(tmp_path, seed=2, champion=True)
    before = registry_state()
    api = ApiServer(tmp_path / "api.log")
    try:
        with httpx.Client(base_url=api.url, timeout=60) as c:
            assert c.get("/v1/versions").status_code == 200
            assert c.post("/v1/answer", json={"question": "Does aspirin prevent stroke?"}).status_code == 200
            own_pg.stop()
            down = {path: c.get(path) for path in ("/v1/versions", "/v1/champion")}
            for path, r in down.items():
                assert r.status_code == 503 and r.headers.get("retry-after"), (path, r.status_code, r.text)
                assert "store" in r.json()["detail"].lower()
            promote = c.post("/v1/promote", json={"version": "v1", "reason": "during the outage"}, headers=AUTH)
            assert promote.status_code == 503, promote.text  # not 409 "changed concurrently"
            health = c.get("/healthz")  # the probe says why (compose and a balancer read it)
            assert health.status_code == 503 and "store unreachable" in health.json()["status"]
            answer = c.post("/v1/answer", json={"question": "Does aspirin prevent stroke?"})
            assert answer.status_code in (200, 503), answer.text  # never a bare 500
            own_pg.start()
            back = time.monotonic()
            wait_for("the API reading the store again", lambda: c.get("/v1/versions").status_code == 200, 60,
                     every=0.2)
            recovery = time.monotonic() - back
            assert c.get("/v1/champion").json()["champion"]["id"] == champion
    finally:
        api.stop()
    assert registry_state() == before  # the refused promotion changed nothing
    fault_record("PostgreSQL restarted under the API", recovery_s=recovery)




def test_postgres_restarted_under_a_training_worker(shared_broker, own_pg, medqa_env, workers, synth_dir,
                                                   fault_record):
    """Before: the heartbeat write failed the whole run (an OperationalError inside the training loop);
    then, a run that finished while the store was down failed at registering its version (CI, 300 s
    without a version). The tiny model's run usually finishes inside the outage, so both are met."""
    medqa_env(eager="0", database_url=own_pg.url, visibility_timeout_s="10", train_lr="5e-3",
              train_max_steps="600", checkpoint_every="100")
    workers()
    ingest_path(synth_dir)
    wait_for("training under way", lambda: (r := first_row(TrainingRun)) and r.status == RunStatus.running
             and r.step >= 100, 180)
    own_pg.stop()
    time.sleep(5.0)
    own_pg.start()
    back = time.monotonic()
    worker = workers.started[0]  # type: ignore[attr-defined]
    version = wait_for("the run's version decided", lambda: (v := first_row(ModelVersion))
                       and v.status != VersionStatus.candidate and v, 300)
    recovery = time.monotonic() - back
    run = first_row(TrainingRun)
    assert run.status == RunStatus.succeeded and run.deliveries == 1, run.error  # went on, not restarted
    with session_scope() as s:
        assert s.exec(select(func.count()).select_from(ModelVersion)).one() == 1
        assert s.exec(select(func.count()).select_from(Abstract).where(
            col(Abstract.train_run_id).is_(None))).one() == 0
    log = worker.log.read_text()
    assert "heartbeat not written" in log or "registering its version" in log  # the outage was met
    fault_record("PostgreSQL restarted under a training worker", recovery_s=recovery,
                 decision=version.status.value)
