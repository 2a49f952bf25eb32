"""Evaluator tasks: gate a candidate version against the champion; score earlier champions once for
the health monitor's trends.

Consumes (shared/pipeline.py): version.created, scores.wanted. Emits: version.decided, and
champion.moved when the policy promotes (both in the decision's own transaction; see
gate.evaluate_version); scores.stored after a backfill.
"""

from __future__ import annotations

from services.evaluator.backfill import score_earlier_champions
from services.evaluator.gate import evaluate_version
from shared.celery_app import medqa_task


@medqa_task("evaluate.version", queue="evaluate", singleton=lambda version_id: str(version_id))
def evaluate(version_id: int) -> dict | None:
    decision = evaluate_version(version_id)
    return decision.to_json() if decision is not None else None


@medqa_task("evaluate.earlier_champions", queue="evaluate", singleton=lambda champion_id, *_: f"earlier:{champion_id}")
def earlier_champions(champion_id: int, version_ids: list[int]) -> int:
    return score_earlier_champions(champion_id, version_ids)
