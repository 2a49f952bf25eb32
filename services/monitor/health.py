"""Model and pipeline health: the quiet failures drift does not show.

  metric_trend     the champion's guarded metric is worse than one of the three champions before
                   it by more than the policy's margin, significantly (a slide one version at a
                   time), paired on the same items (the same suite hash) only; an earlier champion
                   never scored on the champion's fixed suites is scored once by the evaluator
                   (event scores.wanted; scores.stored brings the check back) rather than compared
                   with a number from other items
  champion_stale   abstracts keep arriving, but no promotion for `health_stale_days`
  ingest_stall     an ingest source has not succeeded for `health_ingest_stall_hours`, or its last
                   attempt ended in an error
  train_failed     a training run failed (kind train_oom when it ran out of GPU memory)

Each finding becomes an alert whose dedup key names the incident, so one incident alerts once.
"""

from __future__ import annotations

import math
from datetime import timedelta

from sqlmodel import Session, col, func, select

from services.monitor.alerts import raise_alert
from shared import registry
from shared.pipeline import Event, emit
from shared.policy import Policy
from shared.settings import get_settings
from shared.stats import metric_interval
from shared.tables import (
    Abstract,
    AuditEvent,
    IngestCursor,
    ModelVersion,
    RunStatus,
    SuiteResult,
    TrainingRun,
    utcnow,
)

# Each run's `new` suite is its own increment's held-out slice: never comparable across versions.
PER_INCREMENT_SUITE = "new"


def check_health(session: Session) -> list[str]:
    """Run every check; return the kinds of the alerts raised (deduplicated ones are not counted)."""
    raised = []
    for check in (_metric_trend, _champion_stale, _ingest_stall, _training_failures):
        for kind, severity, key, message in check(session):
            if raise_alert(session, kind=kind, severity=severity, dedup_key=key, message=message) is not None:
                raised.append(kind)
    return raised


def _champions(session: Session, model_line: str) -> list[ModelVersion]:
    """Versions that held the champion alias, oldest first, each once."""
    ids = session.exec(select(AuditEvent.to_version_id).where(
        AuditEvent.subject == f"{model_line}/champion").order_by(col(AuditEvent.id))).all()
    seen: dict[int, ModelVersion] = {}
    for vid in ids:
        if vid is not None and vid not in seen and (v := session.get(ModelVersion, vid)) is not None:
            seen[vid] = v
    return list(seen.values())


def _metric_trend(session: Session):  # type: ignore[no-untyped-def]
    """A guarded metric of the champion against each of the three champions before it, paired on the
    same items (a stored suite result with the champion's suite hash, per-item values and all). It
    alerts when the champion is worse than an earlier one by more than the policy's margin even at
    the best end of the interval: each step passed the gate within its margin, but steps add up.
    The per-increment `new` slice never compares across versions, and an earlier champion never
    scored on this exact suite is scored once (scores.wanted), not compared with other items."""
    settings = get_settings()
    champ = registry.champion(session, model_line=settings.model_line)
    if champ is None:
        return
    earlier = [v for v in _champions(session, settings.model_line) if v.id != champ.id][-3:]
    policy = Policy.load(settings.policy_file)  # type: ignore[arg-type]
    unscored: set[int] = set()
    for name, rule in policy.rules.items():
        current = _latest_result_with(session, f"v{champ.id}", name)
        margin = policy.margin(name)
        if current is None or current.suite == PER_INCREMENT_SUITE or margin is None:
            continue
        for version in earlier:
            before = _result_on(session, f"v{version.id}", current.suite_hash)
            if before is None or not before.items:
                unscored.add(version.id)  # type: ignore[arg-type]
                continue
            finding = _slide(name, rule["direction"] == "lower", margin, current, before,
                             policy.confidence_for(name))
            if finding:
                yield ("metric_trend", "warning", f"metric_trend:{name}:v{champ.id}",
                       f"{name} of champion v{champ.id} is {finding} than v{version.id}'s on the same "
                       f"{len(current.items.get('item_id', []))} {current.suite} items (policy margin "
                       f"{margin:.4g}{' relative' if name.startswith('ppl_') else ''})")
                break
    if unscored:
        emit(session, Event.SCORES_WANTED, champ.id, sorted(unscored))


def _slide(name: str, lower: bool, margin: float, current: SuiteResult, before: SuiteResult,
           confidence: float) -> str | None:
    """"<change> [<interval>] worse" when the whole paired interval is worse than the margin, else None."""
    measured = metric_interval(name, current.items, before.items, confidence=confidence)
    if measured is None:
        return None
    interval = measured[0]
    relative = name.startswith("ppl_")
    limit = math.log1p(margin) if relative else margin
    best_case = interval.low if lower else -interval.high  # > 0: worse even at the interval's best end
    if best_case <= limit:
        return None
    shown = (lambda x: f"{math.expm1(x):+.1%}") if relative else (lambda x: f"{x:+.4g}")
    return f"{shown(interval.estimate)} [{shown(interval.low)}, {shown(interval.high)}] worse"


def _latest_result_with(session: Session, subject: str, metric: str) -> SuiteResult | None:
    rows = session.exec(select(SuiteResult).where(SuiteResult.subject == subject)
                        .order_by(col(SuiteResult.id).desc())).all()
    return next((r for r in rows if metric in r.metrics), None)


def _result_on(session: Session, subject: str, suite_hash: str) -> SuiteResult | None:
    return session.exec(select(SuiteResult).where(SuiteResult.subject == subject,
                                                  SuiteResult.suite_hash == suite_hash)).first()


def _champion_stale(session: Session):  # type: ignore[no-untyped-def]
    settings = get_settings()
    since = utcnow() - timedelta(days=settings.health_stale_days)
    last = session.exec(select(func.max(AuditEvent.at))
                        .where(AuditEvent.subject == f"{settings.model_line}/champion")).one()
    arriving = session.exec(select(func.count()).select_from(Abstract).where(col(Abstract.ingested_at) >= since)).one()
    first = session.exec(select(func.min(Abstract.ingested_at))).one()
    if arriving and first is not None and first < since and (last is None or last < since):
        when = "never" if last is None else f"last on {last:%Y-%m-%d}"
        yield ("champion_stale", "warning", f"champion_stale:{settings.model_line}:{(last or first):%Y%m%d}",
               f"{arriving} abstracts arrived in the last {settings.health_stale_days:g} days but the champion of "
               f"{settings.model_line} was {when} promoted")


def _ingest_stall(session: Session):  # type: ignore[no-untyped-def]
    settings = get_settings()
    stall = utcnow() - timedelta(hours=settings.health_ingest_stall_hours)
    for cur in session.exec(select(IngestCursor)):
        ok = cur.last_success
        if cur.last_error:  # cleared by the next success: set means the latest attempt failed
            yield ("ingest_error", "error", f"ingest_error:{cur.source}:{cur.query}:{cur.errors}",
                   f"ingest {cur.source} ({cur.query}) failed: {cur.last_error[:300]}")
        if ok is not None and ok < stall:
            yield ("ingest_stall", "error", f"ingest_stall:{cur.source}:{cur.query}:{ok:%Y%m%d%H}",
                   f"ingest {cur.source} ({cur.query}) has not succeeded since {ok:%Y-%m-%d %H:%M} UTC "
                   f"(watermark {cur.watermark})")


def _training_failures(session: Session):  # type: ignore[no-untyped-def]
    since = utcnow() - timedelta(days=7)
    for run in session.exec(select(TrainingRun).where(TrainingRun.status == RunStatus.failed,
                                                      col(TrainingRun.finished_at) >= since)):
        oom = "out of memory" in (run.error or "").lower()
        yield ("train_oom" if oom else "train_failed", "error", f"train_failed:{run.id}",
               f"training run {run.id} of {run.model_line} failed: {(run.error or '')[:300]}")
