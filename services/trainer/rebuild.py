"""A clean rebuild: re-train a version's lineage without its retracted and deleted items.

The plan starts from the version's nearest clean ancestor (the last one on its warm-start chain whose
weights hold no retracted or deleted item; the base model if none is clean) and replays each later
step with the original run's config and seed and its manifest minus those items, with no substitutes.
Steps run one at a time: the first is queued now, and each next one when the previous step's version
is created (train.rebuild_next, on version.created), warm-started from it. Every rebuilt version
names the one it replaces and goes through the gate, which never auto-promotes it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlmodel import Session, col, or_, select, update

from shared import lineage, registry
from shared.manifest import RunManifest
from shared.pipeline import Event, emit
from shared.tables import Abstract, Alert, AuditEvent, ModelVersion, ReviewedExample, RunStatus, TrainingRun, utcnow

log = logging.getLogger("medqa.trainer")
PMID_FIELDS = ("new", "holdout", "replay_pmids", "mined", "replay_mined")


class RebuildError(ValueError):
    """The rebuild cannot start; the message says why."""


@dataclass
class Step:
    replaces: int  # the version this step re-trains
    run: int  # that version's run, whose config, seed and manifest are replayed
    removed: dict[str, list[int]]  # manifest field -> retracted or deleted PMIDs taken out
    kept: dict[str, int]  # manifest field -> items left
    est_gpu_hours: float | None  # the original run's tokens / its measured tokens/s


@dataclass
class Plan:
    version: int
    clean_ancestor: int | None  # None: from the base model
    steps: list[Step] = field(default_factory=list)

    @property
    def est_gpu_hours(self) -> float | None:
        hours = [s.est_gpu_hours for s in self.steps]
        return None if None in hours else round(sum(h for h in hours if h is not None), 6)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "est_gpu_hours": self.est_gpu_hours}


def _tainted(session: Session, pmids: set[int]) -> set[int]:
    """The retracted or deleted PMIDs among `pmids`."""
    if not pmids:
        return set()
    rows = session.exec(select(Abstract.pmid).where(
        col(Abstract.pmid).in_(sorted(pmids)), or_(col(Abstract.retracted).is_(True), col(Abstract.deleted).is_(True))))
    return set(rows.all())


def _manifest_of(session: Session, version: ModelVersion) -> tuple[TrainingRun, RunManifest]:
    run = registry.run_for_version(session, version=version)
    return run, RunManifest.from_json(run.manifest)


def _pmids(manifest: RunManifest) -> set[int]:
    return {p for name in PMID_FIELDS for p in getattr(manifest, name)}


def plan(session: Session, version_id: int) -> Plan:
    """The steps that rebuild `version_id` clean; RebuildError if it is clean already."""
    chain = list(reversed(lineage.version_ancestry(session, version_id)))  # root first
    if not chain:
        raise registry.RegistryError(f"no version v{version_id}")
    first_tainted = None
    for index, step in enumerate(chain):
        version = session.get(ModelVersion, step["version"])
        assert version is not None
        _, manifest = _manifest_of(session, version)
        trained = {p for name in ("new", "replay_pmids", "mined", "replay_mined") for p in getattr(manifest, name)}
        if _tainted(session, trained):
            first_tainted = index
            break
    if first_tainted is None:
        raise RebuildError(f"v{version_id} learned from no retracted or deleted paper: nothing to rebuild")
    result = Plan(version=version_id, clean_ancestor=chain[first_tainted - 1]["version"] if first_tainted else None)
    for step in chain[first_tainted:]:
        version = session.get(ModelVersion, step["version"])
        assert version is not None
        run, manifest = _manifest_of(session, version)
        gone = _tainted(session, _pmids(manifest))
        removed = {name: sorted(set(getattr(manifest, name)) & gone) for name in PMID_FIELDS}
        kept = {name: len(getattr(manifest, name)) - len(removed[name]) for name in PMID_FIELDS}
        kept["replay_general"] = len(manifest.replay_general)
        tokens, tps = version.metrics.get("tokens"), version.metrics.get("tokens_per_s")
        hours = round(tokens / tps / 3600, 6) if tokens and tps else None
        result.steps.append(Step(replaces=step["version"], run=run.id, removed=removed, kept=kept,  # type: ignore[arg-type]
                                 est_gpu_hours=hours))
    return result


def clean_manifest(session: Session, manifest: RunManifest) -> RunManifest:
    """The manifest without its retracted and deleted items (no substitutes)."""
    gone = _tainted(session, _pmids(manifest))
    fields = {name: [p for p in getattr(manifest, name) if p not in gone] for name in PMID_FIELDS}
    # An expert-reviewed example goes with its evidence: one quoting a retracted or deleted paper is dropped.
    quoting = {ex.id: set(ex.pmids) for ex in session.exec(select(ReviewedExample).where(
        col(ReviewedExample.id).in_(manifest.reviewed + manifest.replay_reviewed))).all()}
    tainted = _tainted(session, set().union(*quoting.values())) if quoting else set()
    clean = [i for i, pmids in quoting.items() if not pmids & tainted]
    return RunManifest(**fields, replay_general=list(manifest.replay_general), replay_ratio=manifest.replay_ratio,
                       reviewed=[i for i in manifest.reviewed if i in clean],
                       replay_reviewed=[i for i in manifest.replay_reviewed if i in clean])


def queue_step(session: Session, *, replaces: int, rebuild_of: int, parent: int | None) -> int:
    """Queue the run that re-trains version `replaces`, warm-started from `parent` (a rebuilt or clean
    version; None: the base model). Its run.queued event goes out when the caller commits."""
    original = session.get(ModelVersion, replaces)
    assert original is not None
    run, manifest = _manifest_of(session, original)
    active = session.exec(select(TrainingRun.id).where(
        TrainingRun.model_line == run.model_line,
        col(TrainingRun.status).in_((RunStatus.queued, RunStatus.running)))).first()
    if active is not None:
        raise RebuildError(f"training run {active} is active on line {run.model_line}; rebuild after it ends")
    clean = clean_manifest(session, manifest)
    step = TrainingRun(model_line=run.model_line, base_model=run.base_model, parent_version_id=parent,
                       config=dict(run.config), manifest=clean.to_json(), replaces_version_id=replaces,
                       rebuild_of=rebuild_of)
    session.add(step)
    session.flush()
    assert step.id is not None
    lineage.record_run(session, step.id, clean)
    emit(session, Event.RUN_QUEUED, step.id)
    return step.id


def start(session: Session, version_id: int, *, actor: str, reason: str) -> tuple[Plan, int]:
    """Plan the rebuild, audit it, and queue its first step; returns the plan and that run's id."""
    found = plan(session, version_id)
    run_id = queue_step(session, replaces=found.steps[0].replaces, rebuild_of=version_id,
                        parent=found.clean_ancestor)
    removed = sorted({p for s in found.steps for ps in s.removed.values() for p in ps})
    # The retraction alerts this rebuild answers leave `medqa status` (acknowledged by the rebuild).
    keys = [lineage.retraction_key(p) for p in removed]
    if keys:
        session.exec(update(Alert).where(col(Alert.dedup_key).in_(keys), col(Alert.acknowledged).is_(False))
                     .values(acknowledged=True, acknowledged_at=utcnow(), acknowledged_by=f"rebuild:{actor}"[:100]))
    session.add(AuditEvent(actor=actor, action="rebuild", subject=f"v{version_id}", reason=reason,
                           metrics={"steps": [s.replaces for s in found.steps], "clean_ancestor": found.clean_ancestor,
                                    "removed_pmids": removed[:1000], "first_run": run_id}))
    return found, run_id


def next_step(session: Session, version: ModelVersion) -> int | None:
    """After a rebuild step's version is created: queue the next step (warm-started from it), if any."""
    run = session.get(TrainingRun, version.run_id)
    if run is None or run.rebuild_of is None or run.replaces_version_id is None:
        return None
    chain = [step["version"] for step in reversed(lineage.version_ancestry(session, run.rebuild_of))]
    position = chain.index(run.replaces_version_id)
    if position + 1 >= len(chain):
        log.info("rebuild of v%d done: v%s replaces it", run.rebuild_of, version.id)
        return None
    queued = session.exec(select(TrainingRun.id).where(  # a repeated version.created: the step exists
        TrainingRun.rebuild_of == run.rebuild_of, TrainingRun.replaces_version_id == chain[position + 1],
        TrainingRun.parent_version_id == version.id)).first()
    if queued is not None:
        return queued
    return queue_step(session, replaces=chain[position + 1], rebuild_of=run.rebuild_of, parent=version.id)
