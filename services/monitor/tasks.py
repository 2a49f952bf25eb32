"""Monitor tasks: data and question drift after each decided run, after large ingest batches and on
beat; pipeline health when the champion moves and on beat; alert delivery.

Consumes (shared/pipeline.py): version.decided, abstracts.stored, champion.moved, alert.raised.
"""

from __future__ import annotations

import functools
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session, col, func, select

from services.monitor.alerts import deliver_pending, raise_alert
from services.monitor.health import check_health
from services.monitor.retractions import alert_retraction
from shared import registry
from shared.celery_app import medqa_task
from shared.corpora import corpus_items, general_texts
from shared.db import session_scope
from shared.manifest import RunManifest
from shared.queries import abstract_text, live_abstracts, sample, unclaimed_pmids
from shared.settings import get_settings
from shared.tables import Abstract, DriftReport, ModelVersion, QuestionLog, TrainingRun, utcnow

log = logging.getLogger("medqa.monitor")
# Evidently, pandas and the embedding model (torch) are imported where a drift report is computed, not
# here: `monitor.after_ingest` runs in every eager ingest and mostly finds nothing to compute.


def _reference(session: Session, champ: ModelVersion | None) -> tuple[list[Abstract] | list[str], str]:
    """What the serving model was trained on: the champion's own manifest (new + replay abstracts,
    a seeded sample of at most drift_max_rows); before any champion exists, the general-medical set
    the base model is judged against (texts, without metadata)."""
    settings = get_settings()
    if champ is None:
        return [g.text for g in general_texts()], "general-medical set (no champion)"
    m = RunManifest.from_json(registry.run_for_version(session, version=champ).manifest)
    pmids = sample(m.new + m.replay_pmids, settings.drift_max_rows)
    return live_abstracts(session, pmids), f"training data of champion v{champ.id}"


def record_drift(current_pmids: list[int], current_window: str, *, reference_version: ModelVersion | None) -> int:
    """Data drift of the given abstracts against the reference; stores a DriftReport (and an alert)."""
    from services.monitor.features import metadata
    from shared.embeddings import abstract_vectors

    settings = get_settings()
    with session_scope() as session:
        reference, ref_window = _reference(session, reference_version)
        current = live_abstracts(session, sample(current_pmids, settings.drift_max_rows))
        kwargs: dict[str, Any] = {}
        enough = min(len(reference), len(current)) >= settings.drift_min_rows
        if enough and reference and isinstance(reference[0], Abstract):
            kwargs["extra_reference"], kwargs["extra_current"] = metadata(reference, current)  # type: ignore[arg-type]
        if enough and settings.drift_embeddings:
            kwargs["embeddings_current"] = abstract_vectors(session, current)
            kwargs["embeddings_reference"] = (abstract_vectors(session, reference)  # type: ignore[arg-type]
                                              if isinstance(reference[0], Abstract) else _general_vectors())
        ref_texts = [abstract_text(r) if isinstance(r, Abstract) else r for r in reference]
        cur_texts = [abstract_text(r) for r in current]
    return _store_report("data", ref_texts, cur_texts, ref_window, current_window, kwargs)


def _store_report(kind: str, reference: list[str], current: list[str], ref_window: str, current_window: str,
                  kwargs: dict[str, Any]) -> int:
    from services.monitor.drift import text_drift

    settings = get_settings()
    stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
    result = text_drift(reference, current, html_path=settings.reports_dir / f"{kind}-drift-{stamp}.html",
                        min_rows=settings.drift_min_rows, family_alpha=settings.drift_alpha, **kwargs)
    with session_scope() as session:
        report = DriftReport(kind=kind, reference_window=ref_window, current_window=current_window,
                             status=result.status, drift_detected=result.detected, scores=result.to_json(),
                             html_path=str(result.html_path) if result.html_path else None)
        session.add(report)
        session.flush()
        if result.detected:
            raise_alert(session, kind=f"{kind}_drift", severity="warning",
                        dedup_key=f"{kind}_drift:{ref_window}",
                        message=f"{kind} drift: {current_window} vs {ref_window} "
                                f"(drifted: {', '.join(result.drifted_columns)}); report {result.html_path}")
        report_id: int = report.id  # type: ignore[assignment]
    prune_reports(settings.drift_reports_keep)
    return report_id


def prune_reports(keep: int) -> list[int]:
    """Delete the HTML files of reports older than the newest `keep` that have one, except reports that
    found drift: each HTML is megabytes and beat writes one an hour. Rows and scores stay (html_path
    becomes None). Only files under the reports directory are deleted. Returns the pruned report ids."""
    reports_dir = get_settings().reports_dir.resolve()
    pruned: list[int] = []
    with session_scope() as session:
        with_html = session.exec(select(DriftReport).where(col(DriftReport.html_path).is_not(None))
                                 .order_by(col(DriftReport.id).desc())).all()
        for report in with_html[keep:]:
            path = Path(report.html_path)  # type: ignore[arg-type]
            if report.drift_detected or not path.resolve().is_relative_to(reports_dir):
                continue
            path.unlink(missing_ok=True)
            report.html_path = None
            session.add(report)
            pruned.append(report.id)  # type: ignore[arg-type]
    if pruned:
        log.info("drift reports %s: HTML deleted (keeping the newest %d and every drift)", pruned, keep)
    return pruned


def _general_vectors() -> np.ndarray:
    return _vectors_of(tuple(g.text for g in general_texts()))


@functools.lru_cache(maxsize=4)
def _vectors_of(texts: tuple[str, ...]) -> np.ndarray:
    """Embeddings of a fixed text set (general corpus, PubMedQA questions), kept per process: keyed by
    the texts themselves, so a changed setting never gets another corpus's vectors."""
    from shared.embeddings import embed

    return embed(list(texts))


def _trained_questions() -> tuple[str, ...]:
    """The questions the model was trained for: PubMedQA's (every item of the configured source)."""
    return tuple(i.question for i in corpus_items("pubmedqa"))


def record_question_drift(days: float | None = None) -> int | None:
    """Questions the QA API received in the last `days` (default: the question_drift_days setting)
    against the PubMedQA questions. Logged
    questions stored without text (descriptor-only deployments) count only toward row numbers."""
    settings = get_settings()
    days = settings.question_drift_days if days is None else days
    reference = list(_trained_questions())
    if not reference:
        log.info("question drift skipped: MEDQA_PUBMEDQA_SOURCE is none")
        return None
    with session_scope() as session:
        rows = session.exec(select(QuestionLog.text).where(
            col(QuestionLog.asked_at) >= utcnow() - timedelta(days=days), col(QuestionLog.text).is_not(None))
            .order_by(col(QuestionLog.id).desc()).limit(settings.drift_max_rows)).all()
    current = [t for t in rows if t]
    kwargs: dict[str, Any] = {}
    if settings.drift_embeddings and min(len(reference), len(current)) >= settings.drift_min_rows:
        from shared.embeddings import embed

        kwargs = {"embeddings_reference": _question_vectors(), "embeddings_current": embed(current)}
    return _store_report("question", reference, current, "PubMedQA questions", f"questions of the last {days:g} days",
                         kwargs)


def _question_vectors() -> np.ndarray:
    return _vectors_of(_trained_questions())


def drift_for_run(run_id: int) -> int:
    """A run's new batch against what the model it started from was trained on."""
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise ValueError(f"unknown training run {run_id}")
        parent = session.get(ModelVersion, run.parent_version_id) if run.parent_version_id else None
        manifest = RunManifest.from_json(run.manifest)
    return record_drift(manifest.new + manifest.holdout, f"new abstracts of run {run_id}", reference_version=parent)


@medqa_task("monitor.version_decided", queue="monitor")
def version_decided(version_id: int) -> int | None:
    """Once the gate has decided a version: data drift of its run's new abstracts."""
    with session_scope() as session:
        version = session.get(ModelVersion, version_id)
        run_id = version.run_id if version else None
    return drift_for_run(run_id) if run_id is not None else None


@medqa_task("monitor.run", queue="monitor", singleton=lambda: "monitor")
def monitor_run() -> dict:
    """Beat's periodic check (and after a large ingest batch): abstracts stored since the champion's
    data against that data, received questions against PubMedQA's, and pipeline health."""
    with session_scope() as session:
        champ = registry.champion(session, model_line=get_settings().model_line)
        current = unclaimed_pmids(session)
    out: dict[str, Any] = {"data": record_drift(current, "abstracts not yet trained on", reference_version=champ),
                           "questions": record_question_drift()}
    with session_scope() as session:
        out["health"] = check_health(session)
    return out


@medqa_task("monitor.after_ingest", queue="monitor")
def after_ingest() -> dict | None:
    """A drift check now rather than at beat's next round, once at least `monitor_after_ingest`
    abstracts were stored since the last data drift report (counted in the store, so however the
    ingest was split into transactions, one large batch triggers one run)."""
    threshold = get_settings().monitor_after_ingest
    if not threshold:
        return None
    with session_scope() as session:
        since = session.exec(select(func.max(DriftReport.created_at)).where(DriftReport.kind == "data")).one()
        q = select(func.count()).select_from(Abstract)
        if since is not None:
            q = q.where(col(Abstract.ingested_at) > since)
        stored = session.exec(q).one()
    if stored < threshold:
        return None
    log.info("%d abstracts stored since the last drift report (>= %d): monitor run", stored, threshold)
    return monitor_run()


@medqa_task("monitor.retractions", queue="monitor")
def retractions(pmids: list[int]) -> list[int]:
    """Papers were retracted: alert once per paper that a version learned from; returns the alert ids."""
    raised: list[int] = []
    with session_scope() as session:
        for pmid in pmids:
            alert = alert_retraction(session, int(pmid))
            if alert is not None and alert.id is not None:
                raised.append(alert.id)
    if raised:
        log.warning("retracted papers in the lineage of model versions: alerts %s", raised)
    return raised


@medqa_task("monitor.retrieval_index", queue="monitor", singleton=lambda: "retrieval-index")
def retrieval_index() -> int | None:
    """Publish the next version of the shared ANN retrieval index if the live abstracts changed."""
    from services.monitor.index import publish_index  # FAISS and the embedding model load here only

    return publish_index()


@medqa_task("monitor.health", queue="monitor", singleton=lambda *_: "health")
def health(version_id: int | None = None) -> list[str]:
    """Pipeline health now (the champion moved to `version_id`, or beat asked)."""
    with session_scope() as session:
        return check_health(session)


@medqa_task("monitor.deliver_alerts", queue="monitor")
def deliver_alerts(alert_id: int) -> dict[str, int]:
    """Try an alert's due deliveries. A failure here never reaches the alert's raiser: the rows stay
    pending and the sweeper sends this again."""
    try:
        return deliver_pending(alert_id=alert_id)
    except Exception:
        log.exception("alert #%s: delivery failed; the sweeper will retry", alert_id)
        return {}
