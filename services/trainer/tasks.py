"""Trainer tasks: the training trigger, and one LoRA increment per run row (resumable, exactly one
version per run).

Consumes (shared/pipeline.py): abstracts.stored (train.trigger), run.queued (train.run), version.created
(train.rebuild_next: a clean rebuild's next step). Emits: run.queued (through the trigger and rebuilds),
version.created.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session, col, or_, select, update

from services.trainer import rebuild
from services.trainer.config import TrainConfig
from services.trainer.data import training_examples
from services.trainer.errors import TrainingFailed
from services.trainer.examples import ExampleSpec
from services.trainer.trigger import maybe_queue_run
from shared.artifacts import (
    ArtifactCorrupted,
    ArtifactError,
    ArtifactNotFound,
    artifact_store,
    cache_dir,
    local_adapter,
)
from shared.celery_app import medqa_task
from shared.checksums import sha256_file
from shared.db import session_scope, store_unavailable, when_store_is_back
from shared.manifest import RunManifest
from shared.pipeline import Event, emit
from shared.settings import Settings, get_settings
from shared.tables import Abstract, ModelVersion, RunStatus, TrainingRun, utcnow

if TYPE_CHECKING:  # torch, transformers and peft load when a run trains, not when the trigger checks
    from services.trainer.train import OnCheckpoint, Progress, TrainResult

log = logging.getLogger("medqa.trainer")
STORE_WAIT_S = 300.0  # how long a finished run waits for the store to register its version


def _fail(run_id: int, reason: str) -> None:
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is not None and run.status in (RunStatus.queued, RunStatus.running):
            mark_failed(session, run, reason)
    log.error("training run %d failed: %s", run_id, reason)


def mark_failed(session: Session, run: TrainingRun, reason: str) -> None:
    """Fail `run` and release the new abstracts it claimed, in one transaction: they count as new
    again, so the next run (the trigger, `medqa runs retry`) trains them instead of stranding them."""
    run.status, run.error, run.finished_at = RunStatus.failed, reason, utcnow()
    session.add(run)
    session.exec(update(Abstract).where(col(Abstract.train_run_id) == run.id).values(train_run_id=None))


def _give_up(run_id: int) -> None:
    _fail(run_id, f"worker died {get_settings().max_deliveries} times running it (killed or out of memory)")


def _line_of(run_id: int) -> str:
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        return run.model_line if run else "unknown"


@medqa_task("train.trigger", queue="train")
def trigger() -> int | None:
    """New abstracts are stored: queue a run if the trigger says one is due (returns its id)."""
    return maybe_queue_run(get_settings().model_line)


@medqa_task("train.rebuild_next", queue="train")
def rebuild_next(version_id: int) -> int | None:
    """A version was created: if it is a step of a clean rebuild, queue the next step from it."""
    with session_scope() as session:
        version = session.get(ModelVersion, version_id)
        return rebuild.next_step(session, version) if version is not None else None


@medqa_task("train.run", queue="train", singleton=lambda run_id: _line_of(run_id), on_give_up=_give_up)
def train_run(run_id: int) -> int | None:
    """Returns the new version id. Guards on the run's status, so a duplicate message is harmless."""
    settings = get_settings()
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise ValueError(f"unknown training run {run_id}")
        existing = session.exec(select(ModelVersion).where(ModelVersion.run_id == run_id)).first()
        if run.status in (RunStatus.succeeded, RunStatus.failed) or existing is not None:
            return existing.id if existing is not None else None
        if not _start(session, run, settings):
            return None
        inputs = _inputs(session, run, settings)
    result = _train(inputs, settings)
    if result is None:
        return None
    location = _publish(result, run_id, settings)
    # The adapter is trained and saved: a store restarting now must not cost the run.
    version_id = when_store_is_back(lambda: _register_version(inputs, result, location), wait_s=STORE_WAIT_S,
                                    what=f"training run {run_id}: registering its version")
    try:
        prune_checkpoints(settings)
    except (OperationalError, InterfaceError, ArtifactError) as exc:  # housekeeping: the next run prunes
        log.warning("checkpoints not pruned: %s", store_unavailable(exc) or exc)
    return version_id


def prune_checkpoints(settings: Settings) -> list[int]:
    """Remove the checkpoints of finished runs beyond the newest MEDQA_KEEP_RUN_CHECKPOINTS, their work
    folders (artifacts/runs/N) on this host and their published copies in the artifact store (a full
    disk once held every run's checkpoint forever); returns the run ids pruned."""
    root = settings.artifacts / "runs"
    local = {int(p.name) for p in root.iterdir() if p.name.isdigit()} if root.is_dir() else set()
    store = artifact_store(settings)
    with session_scope() as session:
        rows = session.exec(select(TrainingRun).where(
            col(TrainingRun.status).in_([RunStatus.succeeded, RunStatus.failed]),
            or_(col(TrainingRun.id).in_(sorted(local)), col(TrainingRun.checkpoint_sha256).is_not(None)))
            .order_by(col(TrainingRun.id))).all()
        doomed = rows[: max(0, len(rows) - settings.keep_run_checkpoints)]
        for run in doomed:
            key = store.key_of(run.checkpoint_path) if run.checkpoint_path and run.checkpoint_sha256 else None
            if key is not None:
                store.delete(key)
            run.checkpoint_path, run.checkpoint_sha256 = None, None
            session.add(run)
        pruned = [run.id for run in doomed if run.id is not None]
    for run_id in pruned:
        shutil.rmtree(root / str(run_id), ignore_errors=True)
    return pruned


@dataclass(frozen=True)
class _RunInputs:
    """What a claimed run trains on, read in the claiming transaction."""

    run_id: int
    model_line: str
    base_spec: str
    cfg: TrainConfig
    examples: list[ExampleSpec]
    parent: tuple[str, str] | None  # the parent version's adapter location and sha256
    work_dir: Path
    checkpoint: tuple[str, str, int] | None = None  # the last published checkpoint: location, sha256, step


def _start(session: Session, run: TrainingRun, settings: Settings) -> bool:
    """Count this delivery and mark the run running; False (and the run failed) once it has been
    delivered more than max_deliveries times without finishing."""
    run.deliveries += 1
    if run.deliveries > settings.max_deliveries:
        mark_failed(session, run, f"started {run.deliveries - 1} times without finishing; not retrying")
        return False
    run.status, run.started_at, run.heartbeat_at = RunStatus.running, run.started_at or utcnow(), utcnow()
    session.add(run)
    return True


def _work_dir(run: TrainingRun, settings: Settings) -> Path:
    return settings.artifacts / "runs" / str(run.id)


def _inputs(session: Session, run: TrainingRun, settings: Settings) -> _RunInputs:
    assert run.id is not None
    parent = session.get(ModelVersion, run.parent_version_id) if run.parent_version_id else None
    examples = training_examples(session, manifest=RunManifest.from_json(run.manifest), settings=settings)
    return _RunInputs(run_id=run.id, model_line=run.model_line, base_spec=run.base_model,
                      cfg=TrainConfig.from_dict(run.config), examples=examples,
                      parent=(parent.adapter_path, parent.sha256) if parent else None,
                      work_dir=_work_dir(run, settings),
                      checkpoint=(run.checkpoint_path, run.checkpoint_sha256, run.checkpoint_step)
                      if run.checkpoint_path and run.checkpoint_sha256 else None)


def _train(inputs: _RunInputs, settings: Settings) -> TrainResult | None:
    """Train the increment; None, with the failure recorded on the run, if training fails."""
    from services.trainer.train import train_lora

    run_id = inputs.run_id
    train: Callable[..., TrainResult] = train_lora
    if settings.train_processes > 1:
        # DDP ranks in processes of their own; this one keeps the lease, heartbeat and progress.
        from services.trainer.distributed import train_lora_ddp

        train = partial(train_lora_ddp, processes=settings.train_processes)
    try:
        # The champion it warm-starts from, as local files that hash to its sha256 (fetched from object
        # storage when the trainer runs on another host than the one that trained it).
        parent_adapter = local_adapter(*inputs.parent, settings) if inputs.parent else None
        _restore_checkpoint(inputs, settings)
        return train(base_spec=inputs.base_spec, models_dir=settings.models_dir, examples=inputs.examples,
                     cfg=inputs.cfg, out_dir=settings.artifacts / "adapters" / f"run-{run_id}",
                     work_dir=inputs.work_dir, parent_adapter=parent_adapter, progress=_progress_writer(run_id),
                     on_checkpoint=_checkpoint_publisher(run_id, settings))
    except KeyboardInterrupt:  # an operator's Ctrl-C in an eager process: not the run's fault
        _requeue(run_id)
        raise
    except (TrainingFailed, ArtifactNotFound, ArtifactCorrupted) as exc:
        _fail(run_id, str(exc))
    except Exception as exc:  # unexpected: record it whole, do not loop through redelivery
        _fail(run_id, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
    return None


def _requeue(run_id: int) -> None:
    """Put an interrupted run back in the queue, this start uncounted: `medqa sweep` (or beat's)
    sends it again, and it resumes from its last checkpoint. Left running, it waited for its heartbeat
    to go stale."""
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is not None and run.status == RunStatus.running:
            run.status, run.deliveries = RunStatus.queued, max(0, run.deliveries - 1)
            session.add(run)
    log.warning("training run %d interrupted; queued again, it resumes from its checkpoint", run_id)


def _checkpoint_publisher(run_id: int, settings: Settings) -> OnCheckpoint:
    """Publish each checkpoint to the artifact store and record it on the run, so a worker on any host
    resumes from it. On a local store the work folder's file is the store's (hashed in place); on object
    storage each step gets its own key, so the row never names an object a later upload is replacing,
    and the previous one is removed once the row names the new one. A failed publish is logged and
    training goes on: the run keeps its last published checkpoint (and this host its local one)."""
    store = artifact_store(settings)

    def publish(path: Path, step: int) -> None:
        key = store.key_of(path) or f"runs/{run_id}/checkpoint-{step:07d}.pt"
        try:
            sha = store.put_file(path, key)
            with session_scope() as session:
                run = session.get(TrainingRun, run_id)
                if run is None:
                    return
                previous = run.checkpoint_path
                run.checkpoint_path, run.checkpoint_sha256, run.checkpoint_step = store.uri(key), sha, step
                session.add(run)
            old_key = store.key_of(previous) if previous else None
            if old_key is not None and old_key != key:
                store.delete(old_key)
        except (ArtifactError, OSError, OperationalError, InterfaceError) as exc:
            log.warning("training run %d: checkpoint at step %d not published (%s); training goes on", run_id, step,
                        store_unavailable(exc) or exc)

    return publish


def _restore_checkpoint(inputs: _RunInputs, settings: Settings) -> None:
    """Put the run's last published checkpoint in its work folder unless the folder holds that very
    file (this host trained it last). A checkpoint the store cannot give back whole is not used: the
    run resumes from this host's own, if any, else from step 0, and says so."""
    if inputs.checkpoint is None:
        return
    location, sha, step = inputs.checkpoint
    local = inputs.work_dir / "checkpoint.pt"
    if local.is_file() and sha256_file(local) == sha:
        return
    store = artifact_store(settings)
    key = store.key_of(location)
    try:
        if key is None:
            raise ArtifactNotFound(f"{location} is outside the artifact store")
        fetched = store.get_file(key, sha, cache_dir(settings))
    except ArtifactError as exc:
        fallback = "this host's own checkpoint" if local.is_file() else "step 0"
        log.warning("training run %d: its checkpoint at step %d cannot be used (%s); resuming from %s",
                    inputs.run_id, step, exc, fallback)
        return
    if fetched != local:
        inputs.work_dir.mkdir(parents=True, exist_ok=True)
        tmp = local.with_suffix(".fetched")
        shutil.copyfile(fetched, tmp)
        os.replace(tmp, local)
    log.info("training run %d: resuming from its published checkpoint at step %d", inputs.run_id, step)


def _progress_writer(run_id: int) -> Progress:
    last_write, last_log = [0.0], [time.monotonic()]

    def progress(step: int, total: int, loss: float, tps: float) -> None:
        # The row doubles as the run's heartbeat; a few writes a second would only load the store.
        if step < total and time.monotonic() - last_write[0] < 2.0:
            return
        last_write[0] = time.monotonic()
        if step == total or last_write[0] - last_log[0] >= 30.0:  # a worker's log, an eager CLI's stderr
            last_log[0] = last_write[0]
            log.info("training run %d: step %d/%d, loss %.3f, %.0f tokens/s", run_id, step, total, loss, tps)
        try:
            with session_scope() as session:
                row = session.get(TrainingRun, run_id)
                if row is not None:
                    row.step, row.total_steps, row.loss, row.tokens_per_s = step, total, loss, tps
                    row.heartbeat_at = utcnow()
                    session.add(row)
        except (OperationalError, InterfaceError) as exc:
            # The store restarting under a long run: training goes on from memory and checkpoints,
            # and the next heartbeat gets through. (It used to fail the whole run.)
            log.warning("training run %d: heartbeat not written (%s); training goes on", run_id,
                        store_unavailable(exc) or type(exc).__name__)

    return progress


def _publish(result: TrainResult, run_id: int, settings: Settings) -> str:
    """Put the adapter in the artifact store (on a local path: where it was saved, only hashed) and
    return the location its version row records. An upload that fails raises: the run is delivered
    again, resumes from its checkpoint and publishes then; no version row names a missing adapter."""
    store = artifact_store(settings)
    key = f"adapters/run-{run_id}"
    sha = store.put_folder(result.adapter_dir, key)
    if sha != result.sha256:
        raise ArtifactCorrupted(f"the adapter of run {run_id} changed while it was stored ({sha} != {result.sha256})")
    return store.uri(key)


def _register_version(inputs: _RunInputs, result: TrainResult, location: str) -> int:
    """Create the version row and finish the run; version.created goes out in the same transaction."""
    cfg = inputs.cfg
    with session_scope() as session:
        run = session.get(TrainingRun, inputs.run_id)
        assert run is not None
        existing = session.exec(select(ModelVersion.id).where(ModelVersion.run_id == inputs.run_id)).first()
        if existing is not None:  # an earlier try committed before its connection broke
            return existing
        version = ModelVersion(model_line=inputs.model_line, run_id=inputs.run_id,
                               parent_version_id=run.parent_version_id, replaces_version_id=run.replaces_version_id,
                               base_model=inputs.base_spec,
                               adapter_path=location, sha256=result.sha256,
                               metrics={"train_loss": result.final_loss, "tokens_per_s": result.tokens_per_s,
                                        "train_seconds": result.seconds, "tokens": result.tokens,
                                        "resumed_from_step": result.resumed_from,
                                        "train_processes": result.processes})
        session.add(version)
        run.status, run.finished_at, run.heartbeat_at = RunStatus.succeeded, utcnow(), utcnow()
        run.step, run.total_steps, run.loss = cfg.max_steps, cfg.max_steps, result.final_loss
        # Of a resumed run, tokens/s covers only the part after the resume.
        run.tokens_per_s = result.tokens_per_s
        session.add(run)
        session.flush()
        version_id = version.id
        assert version_id is not None
        emit(session, Event.VERSION_CREATED, version_id)
    return version_id
