"""Evaluator task: gate a candidate version against the champion.

Consumes (shared/pipeline.py): version.created. Emits: version.decided, and champion.moved when the
policy promotes (both in the decision's own transaction; see gate.evaluate_version).
"""

from __future__ import annotations

from services.evaluator.gate import evaluate_version
from shared.celery_app import medqa_task


@medqa_task("evaluate.version", queue="evaluate", singleton=lambda version_id: str(version_id))
def evaluate(version_id: int) -> dict | None:
    decision = evaluate_version(version_id)
    return vars(decision) if decision is not None else None
