"""Trainer tasks: the training trigger, and one LoRA increment per run row (resumable, exactly one
version per run).

Consumes (shared/pipeline.py): abstracts.stored (train.trigger), run.queued (train.run).
Emits: run.queued (through the trigger), version.created.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

from sqlmodel import select

from services.trainer.config import TrainConfig
from services.trainer.data import training_examples
from services.trainer.errors import TrainingFailed
from services.trainer.train import train_lora
from services.trainer.trigger import maybe_queue_run
from shared.celery_app import medqa_task
from shared.db import session_scope
from shared.manifest import RunManifest
from shared.pipeline import Event, emit
from shared.settings import get_settings
from shared.tables import ModelVersion, RunStatus, TrainingRun, utcnow

log = logging.getLogger("medqa.trainer")


def _fail(run_id: int, reason: str) -> None:
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is not None and run.status in (RunStatus.queued, RunStatus.running):
            run.status, run.error, run.finished_at = RunStatus.failed, reason, utcnow()
            session.add(run)
    log.error("training run %d failed: %s", run_id, reason)


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


@medqa_task("train.run", queue="train", singleton=lambda run_id: _line_of(run_id), on_give_up=_give_up)
def train_run(run_id: int) -> int | None:
    """Returns the new version id. Guards on the run's status, so a duplicate message is harmless."""
    s = get_settings()
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise ValueError(f"unknown training run {run_id}")
        existing = session.exec(select(ModelVersion).where(ModelVersion.run_id == run_id)).first()
        if run.status in (RunStatus.succeeded, RunStatus.failed) or existing is not None:
            return existing.id if existing is not None else None
        run.deliveries += 1
        if run.deliveries > s.max_deliveries:
            run.status, run.finished_at = RunStatus.failed, utcnow()
            run.error = f"started {run.deliveries - 1} times without finishing; not retrying"
            session.add(run)
            return None
        run.status, run.started_at, run.heartbeat_at = RunStatus.running, run.started_at or utcnow(), utcnow()
        work_dir = s.artifacts / "runs" / str(run_id)
        run.checkpoint_path = str(work_dir / "checkpoint.pt")
        session.add(run)
        parent = session.get(ModelVersion, run.parent_version_id) if run.parent_version_id else None
        parent_adapter = Path(parent.adapter_path) if parent else None
        examples = training_examples(session, manifest=RunManifest.from_json(run.manifest), s=s)
        cfg, base_spec, model_line = TrainConfig.from_dict(run.config), run.base_model, run.model_line

    last_write = [0.0]

    def progress(step: int, total: int, loss: float, tps: float) -> None:
        # The row doubles as the run's heartbeat; a few writes a second would only load the store.
        if step < total and time.monotonic() - last_write[0] < 2.0:
            return
        last_write[0] = time.monotonic()
        with session_scope() as session:
            row = session.get(TrainingRun, run_id)
            if row is not None:
                row.step, row.total_steps, row.loss, row.tokens_per_s = step, total, loss, tps
                row.heartbeat_at = utcnow()
                session.add(row)

    try:
        result = train_lora(base_spec=base_spec, models_dir=s.models_dir, examples=examples, cfg=cfg,
                            out_dir=s.artifacts / "adapters" / f"run-{run_id}", work_dir=work_dir,
                            parent_adapter=parent_adapter, progress=progress)
    except TrainingFailed as exc:
        _fail(run_id, str(exc))
        return None
    except Exception as exc:  # unexpected: record it whole, do not loop through redelivery
        _fail(run_id, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
        return None

    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        version = ModelVersion(model_line=model_line, run_id=run_id, parent_version_id=run.parent_version_id,
                               base_model=base_spec, adapter_path=str(result.adapter_dir), sha256=result.sha256,
                               metrics={"train_loss": result.final_loss, "tokens_per_s": result.tokens_per_s,
                                        "train_seconds": result.seconds, "tokens": result.tokens,
                                        "resumed_from_step": result.resumed_from})
        session.add(version)
        run.status, run.finished_at, run.heartbeat_at = RunStatus.succeeded, utcnow(), utcnow()
        run.step, run.total_steps, run.loss = cfg.max_steps, cfg.max_steps, result.final_loss
        # tokens/s of a resumed run covers only the resumed part; keep the first figure if any.
        run.tokens_per_s = result.tokens_per_s
        session.add(run)
        session.flush()
        version_id = version.id
        emit(session, Event.VERSION_CREATED, version_id)
    return version_id

