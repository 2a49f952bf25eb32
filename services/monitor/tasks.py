"""Monitor tasks: data drift after each run and on beat, and the sweeper that re-derives lost work."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlmodel import and_, col, or_, select

from services.monitor.alerts import raise_alert
from services.monitor.drift import text_drift
from services.trainer.data import texts_for, unclaimed_pmids
from shared import crud
from shared.celery_app import enqueue, medqa_task
from shared.corpora import general_texts
from shared.db import session_scope
from shared.models import DriftReport, ModelVersion, RunStatus, TrainingRun, VersionStatus, utcnow
from shared.settings import get_settings

log = logging.getLogger("medqa.monitor")


def _reference(session, champ: ModelVersion | None) -> tuple[list[str], str]:  # type: ignore[no-untyped-def]
    """What the serving model was trained on: the champion's own manifest (new + replay abstracts);
    before any champion exists, the general-medical set the base model is judged against."""
    s = get_settings()
    if champ is None:
        return [g.text for g in general_texts(s.retention_corpus)], "general-medical set (no champion)"
    m = crud.run_for_version(session, version=champ).manifest
    return texts_for(session, m["new"] + m["replay_pmids"]), f"training data of champion v{champ.id}"


def record_drift(current: list[str], current_window: str, *, reference_version: ModelVersion | None) -> int:
    s = get_settings()
    with session_scope() as session:
        reference, ref_window = _reference(session, reference_version)
    stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
    result = text_drift(reference, current, html_path=s.reports_dir / f"drift-{stamp}.html",
                        min_rows=s.drift_min_rows, drift_share=s.drift_share)
    with session_scope() as session:
        report = DriftReport(kind="data", reference_window=ref_window, current_window=current_window,
                             status=result.status, drift_detected=result.detected, scores=result.to_json(),
                             html_path=str(result.html_path) if result.html_path else None)
        session.add(report)
        session.flush()
        if result.detected:
            raise_alert(session, kind="data_drift", severity="warning",
                        dedup_key=f"data_drift:{ref_window}",
                        message=f"data drift: {current_window} vs {ref_window} "
                                f"({result.share_drifted:.0%} of columns drifted); report {result.html_path}")
        return report.id  # type: ignore[return-value]


@medqa_task("monitor.drift_for_run", queue="monitor")
def drift_for_run(run_id: int) -> int:
    """A run's new batch against what the model it started from was trained on."""
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise ValueError(f"unknown training run {run_id}")
        parent = session.get(ModelVersion, run.parent_version_id) if run.parent_version_id else None
        current = texts_for(session, run.manifest["new"] + run.manifest["holdout"])
    return record_drift(current, f"new abstracts of run {run_id}", reference_version=parent)


@medqa_task("monitor.run", queue="monitor", singleton=lambda: "monitor")
def monitor_run() -> int:
    """Beat's periodic check: abstracts stored since the champion's data against that data."""
    with session_scope() as session:
        champ = crud.champion(session, model_line=get_settings().model_line)
        current = texts_for(session, unclaimed_pmids(session))
    return record_drift(current, "abstracts not yet trained on", reference_version=champ)


@medqa_task("monitor.sweep", queue="monitor", singleton=lambda: "sweep")
def sweep() -> dict:
    return sweep_now()


def sweep_now() -> dict:
    """Re-derive pending work from the store, so work survives lost messages and a dead broker:
    the training trigger, queued runs and runs whose heartbeat stopped, undecided candidates."""
    from services.evaluator.tasks import evaluate
    from services.trainer.tasks import train_run
    from services.trainer.trigger import maybe_queue_run

    s = get_settings()
    maybe_queue_run(s.model_line)
    stale = utcnow() - timedelta(seconds=3 * s.visibility_timeout_s)
    with session_scope() as session:
        runs = session.exec(select(TrainingRun.id).where(
            or_(col(TrainingRun.status) == RunStatus.queued,
                and_(col(TrainingRun.status) == RunStatus.running, col(TrainingRun.heartbeat_at) < stale)))).all()
        candidates = session.exec(select(ModelVersion.id).where(
            ModelVersion.status == VersionStatus.candidate)).all()
    sent = {"runs": [r for r in runs if enqueue(train_run, r)],
            "candidates": [v for v in candidates if enqueue(evaluate, v)]}
    if sent["runs"] or sent["candidates"]:
        log.info("sweeper re-sent %s", sent)
    return sent
