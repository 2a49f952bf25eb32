"""Score earlier champions once on the current champion's fixed suites, for comparable trends.

The health monitor compares the champion with the champions before it only on the same suite hash.
When an earlier champion never met the current fixed suites (retention, pubmedqa, consumer: a suite
changed, or the champion was promoted by hand without a gate against it), the monitor asks for it
(scores.wanted) and this scores it once; the result is cached like any other SuiteResult, and
scores.stored asks the monitor to look again. The per-increment `new` suite is never backfilled:
it is a different item set for every version.
"""

from __future__ import annotations

import logging

from services.evaluator.gate import build_suites, cached_scores, score, store_scores
from services.evaluator.suites import Suite
from shared import registry
from shared.artifacts import ArtifactError, local_adapter
from shared.db import session_scope
from shared.pipeline import Event, emit
from shared.tables import ModelVersion

log = logging.getLogger("medqa.evaluator")
PER_INCREMENT_SUITE = "new"


def score_earlier_champions(champion_id: int, version_ids: list[int]) -> int:
    """Score each of `version_ids` on `champion_id`'s fixed suites where it has no result yet;
    return how many suite results were stored."""
    with session_scope() as session:
        champ = registry.get_version(session, version_id=champion_id)
        run = registry.run_for_version(session, version=champ)
        suites = [s for s in build_suites(session, run) if s.name != PER_INCREMENT_SUITE]
        todo: list[tuple[int, tuple[str, str], list[Suite]]] = []
        for vid in version_ids:
            version = session.get(ModelVersion, vid)
            if version is None or version.base_model != champ.base_model:
                continue  # another base model's numbers never compare
            _, missing = cached_scores(session, f"v{vid}", suites)
            if missing:
                todo.append((vid, (version.adapter_path, version.sha256), missing))
        base_spec = champ.base_model
    stored = 0
    for vid, artifact, missing in todo:
        try:
            path = local_adapter(*artifact)
        except (FileNotFoundError, ValueError, ArtifactError) as exc:
            log.warning("v%d cannot be scored for the trend: %s", vid, exc)
            continue
        scores = score(base_spec, {"earlier": path}, {"earlier": missing})["earlier"]
        with session_scope() as session:
            store_scores(session, f"v{vid}", missing, scores)
        stored += len(missing)
        log.info("scored earlier champion v%d on %s for the trend", vid, ", ".join(s.name for s in missing))
    if stored:
        with session_scope() as session:
            emit(session, Event.SCORES_STORED, champion_id)
    return stored
