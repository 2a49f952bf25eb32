"""SIGKILL of each kind of worker mid-task (ingest, train, evaluate, monitor): the message comes back
(acks late, visibility timeout 10 s), the work is done exactly once, and nothing is lost or doubled."""

from __future__ import annotations

import time

import pytest
from procs import count_rows, first_row, wait_for
from sqlmodel import col, select

from services.devkit.synth import write_corpus
from services.ingest.tasks import ingest_path
from shared.celery_app import app
from shared.db import session_scope
from shared.tables import (
    Abstract,
    AuditEvent,
    DriftReport,
    Evaluation,
    IngestCursor,
    ModelVersion,
    RunStatus,
    TrainingRun,
    VersionStatus,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.integration]






def _received(worker, task: str) -> bool:  # type: ignore[no-untyped-def]
    return f"Task {task}[".encode() in worker.log.read_bytes()


def test_ingest_worker_killed_mid_file(shared_broker, medqa_env, workers, tmp_path, fault_record):
    medqa_env(eager="0", visibility_timeout_s="10", trigger_min_new="1000000", monitor_after_ingest="0")
    per_file, files = 5_000, 3
    folder = tmp_path / "baseline"
    write_corpus(folder, files=files, per_file=per_file, seed=17)
    worker = workers("ingest")
    app.send_task("ingest.files", args=[str(folder)], queue="ingest")
    imported = col(IngestCursor.watermark).is_not(None)
    wait_for("the first file imported", lambda: count_rows(IngestCursor, imported) >= 1, 120, every=0.05)
    worker.kill()
    killed = time.monotonic()
    at_kill = count_rows(Abstract)
    assert at_kill % per_file == 0 and at_kill < files * per_file  # whole files only: the one in progress rolled back

    workers("ingest")
    wait_for("every file imported", lambda: count_rows(IngestCursor, imported) == files, 120)
    recovery = time.monotonic() - killed
    assert count_rows(Abstract) == files * per_file  # nothing lost, nothing twice (the PMID is the key)
    with session_scope() as s:
        cursors = s.exec(select(IngestCursor)).all()
    assert [c.stored for c in cursors] == [per_file] * files and not any(c.last_error for c in cursors)
    fault_record("ingest worker SIGKILL mid-file", recovery_s=recovery, stored_at_kill=at_kill)


def test_train_worker_killed_mid_run_resumes_from_its_checkpoint(shared_broker, medqa_env, workers, synth_dir,
                                                                  fault_record):
    # A long run (tiny model, many steps) so there is time to kill it half-way.
    medqa_env(eager="0", visibility_timeout_s="10", train_max_steps="1500", checkpoint_every="100")
    worker = workers("train")
    ingest_path(synth_dir)
    wait_for("training past its first checkpoint",
             lambda: (r := first_row(TrainingRun)) and r.status == RunStatus.running and r.step >= 150, 120)
    worker.kill()
    killed_at = time.monotonic()
    step_at_kill = first_row(TrainingRun).step

    workers("train")
    wait_for("the task redelivered", lambda: first_row(TrainingRun).deliveries >= 2, 60, every=0.2)
    redelivered_after = time.monotonic() - killed_at
    assert redelivered_after <= 30, f"redelivered after {redelivered_after:.1f} s"

    version = wait_for("the run's version", lambda: first_row(ModelVersion), 240)
    recovery = time.monotonic() - killed_at
    run = first_row(TrainingRun)
    assert run.status == RunStatus.succeeded and run.deliveries == 2
    # From its last checkpoint, not from step 0. (The row's step lags the trainer by up to 2 s, so
    # the checkpoint may be a little past the step read at the kill.)
    resumed = version.metrics["resumed_from_step"]
    assert resumed % 100 == 0 and max(100, step_at_kill - 100) <= resumed < 1500
    assert count_rows(ModelVersion) == 1
    assert count_rows(Abstract, col(Abstract.train_run_id).is_(None)) == 0  # every abstract trained by the run
    fault_record("train worker SIGKILL mid-run", recovery_s=recovery, redelivered_s=round(redelivered_after, 1),
                 resumed_from_step=resumed)


def test_evaluate_worker_killed_mid_evaluation(shared_broker, medqa_env, workers, synth_dir, fault_record):
    # Larger evaluation slices than the unit tests', so the gate takes long enough to be killed in.
    medqa_env(eager="0", visibility_timeout_s="10", train_lr="5e-3", eval_max_texts="200", eval_qa_items="64",
              eval_consumer_items="16", eval_max_new_tokens="24")
    workers("ingest,train,monitor")
    evaluator = workers("evaluate")
    ingest_path(synth_dir)
    wait_for("the evaluation started", lambda: _received(evaluator, "evaluate.version"), 240, every=0.2)
    time.sleep(1.0)
    assert first_row(ModelVersion).status == VersionStatus.candidate, "evaluated before the kill: make it slower"
    evaluator.kill()
    killed = time.monotonic()

    workers("evaluate")
    version = wait_for("a decision", lambda: (v := first_row(ModelVersion)) and v.status != VersionStatus.candidate
                       and v, 240)
    recovery = time.monotonic() - killed
    assert count_rows(Evaluation, Evaluation.version_id == version.id) == 1  # decided once
    promotions = count_rows(AuditEvent)
    assert promotions == (1 if version.status == VersionStatus.blessed else 0)  # one audit row per move
    fault_record("evaluate worker SIGKILL mid-evaluation", recovery_s=recovery, decision=version.status.value)


def test_monitor_worker_killed_mid_drift_report(shared_broker, medqa_env, workers, synth_dir, fault_record):
    medqa_env(eager="0", visibility_timeout_s="10", trigger_min_new="1000000", monitor_after_ingest="0")
    ingest_path(synth_dir)
    monitor = workers("monitor")
    app.send_task("monitor.run", queue="monitor")
    wait_for("the monitor run started", lambda: _received(monitor, "monitor.run"), 60, every=0.1)
    time.sleep(0.5)
    assert count_rows(DriftReport) == 0, "the report was written before the kill"
    monitor.kill()
    killed = time.monotonic()

    workers("monitor")
    wait_for("the data drift report", lambda: count_rows(DriftReport, DriftReport.kind == "data") >= 1, 120)
    recovery = time.monotonic() - killed
    assert count_rows(DriftReport, DriftReport.kind == "data") == 1  # once, not once per delivery
    fault_record("monitor worker SIGKILL mid-report", recovery_s=recovery)
