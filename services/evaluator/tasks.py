"""Evaluator task: gate a candidate, then hand the run to the monitor once the decision is stored."""

from __future__ import annotations

from services.evaluator.gate import evaluate_version
from shared.celery_app import enqueue, medqa_task
from shared.db import session_scope
from shared.models import ModelVersion


@medqa_task("evaluate.version", queue="evaluate", singleton=lambda version_id: str(version_id))
def evaluate(version_id: int) -> dict | None:
    decision = evaluate_version(version_id)
    if decision is None:
        return None
    from services.monitor.tasks import drift_for_run

    with session_scope() as session:
        version = session.get(ModelVersion, version_id)
        run_id = version.run_id if version else None
    if run_id is not None:
        enqueue(drift_for_run, run_id)
    return vars(decision)
