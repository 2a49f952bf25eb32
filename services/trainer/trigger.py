"""The training trigger: N new abstracts, or T hours with at least M new ones; one run at a time.

Queuing a run claims its new abstracts in the same transaction (Abstract.train_run_id), so the
trigger is idempotent: however often it is signalled, the same abstracts never start two runs. The
database's partial unique index on active runs settles two triggers racing on two hosts.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select, update

from services.trainer.config import TrainConfig
from services.trainer.data import build_manifest
from shared import lineage, registry
from shared.db import session_scope
from shared.pipeline import Event, emit
from shared.queries import unclaimed_pmids
from shared.settings import get_settings
from shared.tables import Abstract, RunStatus, TrainingRun, utcnow

log = logging.getLogger("medqa.trainer")
ACTIVE = (RunStatus.queued, RunStatus.running)


def _due(n_new: int, last_run_at, oldest_new_at, *, force: bool) -> bool:  # type: ignore[no-untyped-def]
    settings = get_settings()
    if force:
        return n_new >= 4  # enough for a held-out slice and something to train on
    if n_new >= settings.trigger_min_new:
        return True
    since = last_run_at or oldest_new_at
    return (since is not None and n_new >= settings.trigger_min_new_after_hours
            and utcnow() - since >= timedelta(hours=settings.trigger_max_hours))


def maybe_queue_run(model_line: str, *, force: bool = False) -> int | None:
    """Queue a run if one is due; its run.queued event goes out when the claim has committed."""
    settings = get_settings()
    try:
        with session_scope() as session:
            if session.exec(select(TrainingRun.id).where(
                    TrainingRun.model_line == model_line, col(TrainingRun.status).in_(ACTIVE))).first():
                return None
            new = unclaimed_pmids(session)
            last = session.exec(select(TrainingRun.created_at).where(TrainingRun.model_line == model_line)
                                .order_by(col(TrainingRun.id).desc())).first()
            oldest = session.exec(select(Abstract.ingested_at).where(col(Abstract.train_run_id).is_(None))
                                  .order_by(col(Abstract.ingested_at))).first()
            if not _due(len(new), last, oldest, force=force):
                return None
            champ = registry.champion(session, model_line=model_line)
            manifest = build_manifest(session, new_pmids=new, model_line=model_line, settings=settings)
            run = TrainingRun(
                model_line=model_line, base_model=champ.base_model if champ else settings.base_model,
                parent_version_id=champ.id if champ else None,
                config=TrainConfig.from_settings(settings).to_dict(), manifest=manifest.to_json(),
            )
            session.add(run)
            session.flush()
            assert run.id is not None
            lineage.record_run(session, run.id, manifest)  # the manifest, indexed by PMID
            session.exec(update(Abstract).where(col(Abstract.pmid).in_(new)).values(train_run_id=run.id))
            run_id = run.id
            emit(session, Event.RUN_QUEUED, run_id)
    except IntegrityError:
        log.info("another trigger queued a run for %s first", model_line)
        return None
    log.info("queued training run %s for %s on %d new abstracts", run_id, model_line, len(new))
    return run_id
