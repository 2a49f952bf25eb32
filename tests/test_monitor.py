"""Monitor on a real store: data drift with metadata and embeddings, question drift, pipeline health,
and the monitor run an ingest batch triggers."""

import math
import random
import re
from datetime import date, timedelta
from pathlib import Path

import pytest
from conftest import SHARED_DATA, TINY_GPT2, needs_shared_data
from sqlmodel import select

from services.devkit.synth import write_corpus
from services.ingest.tasks import ingest_path
from services.monitor.drift import EMBEDDINGS, HTML_VERDICT
from services.monitor.health import check_health
from services.monitor.tasks import monitor_run, prune_reports, record_drift, record_question_drift
from shared.corpora import load_liveqa, load_pubmedqa
from shared.db import session_scope
from shared.settings import get_settings
from shared.tables import (
    Abstract,
    AbstractEmbedding,
    Alert,
    AuditEvent,
    DriftReport,
    IngestCursor,
    ModelVersion,
    QuestionLog,
    RunStatus,
    TrainingRun,
    VersionStatus,
    utcnow,
)


def _pmids(**where):
    with session_scope() as s:
        return [a.pmid for a in s.exec(select(Abstract)) if all(getattr(a, k) == v for k, v in where.items())]


@pytest.fixture
def two_topics(medqa_env, tmp_path):
    medqa_env(trigger_min_new="100000", drift_min_rows="20")  # store only: no training here
    write_corpus(tmp_path / "a", files=1, per_file=60, seed=1, topics=("cardiology",))
    write_corpus(tmp_path / "b", files=1, per_file=60, seed=2, topics=("oncology",), start_pmid=95_000_000,
                 entrez_start=date(2024, 6, 1))
    ingest_path(tmp_path / "a")
    first = _pmids()
    ingest_path(tmp_path / "b")
    second = sorted(set(_pmids()) - set(first))
    return first, second


def _champion_trained_on(pmids):
    """A champion whose manifest is `pmids` (the drift reference), without training anything."""
    with session_scope() as s:
        run = TrainingRun(model_line="default", base_model=TINY_GPT2, status=RunStatus.succeeded,
                          manifest={"new": pmids, "replay_pmids": [], "holdout": []})
        s.add(run)
        s.flush()
        v = ModelVersion(model_line="default", run_id=run.id, base_model=TINY_GPT2, adapter_path="/x",
                         sha256="0" * 64, status=VersionStatus.blessed)
        s.add(v)
        s.flush()
        return v


@pytest.mark.slow
def test_data_drift_report_holds_evidently_verdict_metadata_and_embeddings(two_topics):
    cardio, onco = two_topics
    champ = _champion_trained_on(cardio)
    shifted = record_drift(onco, "oncology batch", reference_version=champ)
    same = record_drift(cardio[:30], "cardiology again", reference_version=champ)
    with session_scope() as s:
        shifted_row, same_row = s.get(DriftReport, shifted), s.get(DriftReport, same)
        assert shifted_row.status == "drift" and shifted_row.drift_detected
        scores = shifted_row.scores["scores"]
        assert {"text", "year", "journal", "subjects", EMBEDDINGS} <= set(scores)
        assert scores[EMBEDDINGS]["drifted"] and scores[EMBEDDINGS]["score"] > scores[EMBEDDINGS]["threshold"]
        assert all("unit" in v for v in scores.values()) and scores["year"]["informational"]
        html = Path(shifted_row.html_path).read_text()
        # The HTML is Evidently's report (it names the embedding drift metric) under our verdict line.
        assert "Drift in embeddings" in html
        assert HTML_VERDICT[True] in html
        assert same_row.status in ("drift", "no_drift") and same_row.scores["scores"][EMBEDDINGS]["score"] < \
            scores[EMBEDDINGS]["score"]
        # Vectors are cached: every compared abstract has one, computed once.
        assert len(s.exec(select(AbstractEmbedding)).all()) == len(set(cardio) | set(onco))
        alert = s.exec(select(Alert).where(Alert.kind == "data_drift")).one()
        assert "oncology batch" in alert.message


def test_empty_or_tiny_window_is_not_enough_data(medqa_env, tmp_path):
    medqa_env(drift_min_rows="20")
    out = monitor_run()  # empty store: no champion, nothing ingested, no questions
    with session_scope() as s:
        report = s.get(DriftReport, out["data"])
        assert report.status == "not_enough_data" and not report.drift_detected and report.html_path is None
        assert report.scores["needed_rows"] == 20
    write_corpus(tmp_path / "c", files=1, per_file=5, seed=4)
    ingest_path(tmp_path / "c")
    out = monitor_run()
    with session_scope() as s:
        assert s.get(DriftReport, out["data"]).status == "not_enough_data"


@needs_shared_data("liveqa_medical")
@pytest.mark.slow
def test_patients_questions_drift_from_pubmedqa_questions(medqa_env):
    medqa_env(drift_min_rows="20", drift_max_rows="150")
    with session_scope() as s:
        for item in load_liveqa(SHARED_DATA / "liveqa_medical")[:150]:
            s.add(QuestionLog(text=item.question, n_chars=len(item.question), n_words=len(item.question.split())))
        s.add(QuestionLog(text=None, n_chars=40, n_words=8))  # a descriptor-only row is skipped, not an error
    report_id = record_question_drift()
    with session_scope() as s:
        report = s.get(DriftReport, report_id)
        assert report.kind == "question" and report.status == "drift"
        assert report.scores["n_current"] == 150
        assert report.scores["n_reference"] == len(load_pubmedqa(SHARED_DATA / "pubmedqa" / "pqal_trainval.json"))
        assert s.exec(select(Alert).where(Alert.kind == "question_drift")).one()


def test_health_alerts_once_per_incident(medqa_env):
    medqa_env(health_stale_days="1")
    old = utcnow() - timedelta(days=3)
    with session_scope() as s:
        s.add(TrainingRun(model_line="default", base_model="b", status=RunStatus.failed, finished_at=utcnow(),
                          error="GPU out of memory at batch 8x512"))
        s.add(TrainingRun(model_line="other", base_model="b", status=RunStatus.failed, finished_at=utcnow(),
                          error="loss became nan at step 3"))
        s.add(IngestCursor(source="entrez", query="q", last_success=old, last_error="HTTP 500 from efetch", errors=4))
        s.add(Abstract(pmid=1, title="t", text="x", content_hash="h1", source="s", ingested_at=old))
        s.add(Abstract(pmid=2, title="t", text="y", content_hash="h2", source="s"))
        # The third champion's retention is 68% worse than v2's on the same items (beyond the test
        # policy's 50% margin, on every item); its ppl_new is far worse still, but each version's
        # `new` slice is other items: never a trend.
        _champions_scored(s, old, retention=[10.0, 9.5, 16.0], new=[20.0, 19.0, 90.0])
    with session_scope() as s:
        kinds = sorted(check_health(s))
    assert kinds == sorted(["train_oom", "train_failed", "ingest_error", "ingest_stall", "champion_stale",
                            "metric_trend"])
    with session_scope() as s:
        assert check_health(s) == []  # the same incidents again: deduplicated
        trend = s.exec(select(Alert).where(Alert.kind == "metric_trend")).one()
        expected = (r"ppl_retention of champion v3 is \+\d\d\.\d% \[\+\d\d\.\d%, \+\d\d\.\d%\] worse than "
                    r"v[12]'s on the same 30 retention items \(policy margin 0\.5 relative\)")
        assert re.search(expected, trend.message), trend.message


def test_health_does_not_alert_on_a_change_within_the_margin_or_not_significant(medqa_env):
    """36.8% worse than v2 is within the test policy's 50% margin; and a noisy drop whose interval
    reaches inside the margin is not claimed either."""
    medqa_env()
    with session_scope() as s:
        _champions_scored(s, utcnow(), retention=[10.0, 9.5, 13.0], new=[20.0, 19.0, 90.0])
    with session_scope() as s:
        assert "metric_trend" not in check_health(s)
    medqa_env(data_dir=str(Path(get_settings().data_dir).parent / "noisy"))
    with session_scope() as s:
        _champions_scored(s, utcnow(), retention=[10.0, 9.5, 16.0], new=[20.0, 19.0, 90.0], noise=1.5)
    with session_scope() as s:
        assert "metric_trend" not in check_health(s)


def _per_item(ppl: float, n: int, noise: float, seed: int) -> dict:
    """Per-item NLL of n 50-token texts whose suite perplexity is about `ppl`, spread by `noise` nats."""
    rng = random.Random(seed)
    per_token = [math.log(ppl) + rng.gauss(0, noise) for _ in range(n)]
    return {"item_id": [f"r{i}" for i in range(n)], "nll": [50 * x for x in per_token], "tokens": [50] * n}


def _champions_scored(session, at, *, retention, new, retention_hashes=None, noise=0.02):  # type: ignore[no-untyped-def]
    """Champions v1..vN in turn, each with stored suite results: retention on `retention_hashes`
    (default: one fixed suite for all; 30 items, per-item values included) and a `new` slice of its own."""
    from shared.tables import Alias, SuiteResult

    hashes = retention_hashes or ["R"] * len(retention)
    versions = []
    for i, (ret, ppl_new, digest) in enumerate(zip(retention, new, hashes, strict=True)):
        run = TrainingRun(model_line="default", base_model="b", status=RunStatus.succeeded)
        session.add(run)
        session.flush()
        v = ModelVersion(model_line="default", run_id=run.id, base_model="b", adapter_path="/x", sha256="0" * 64,
                         status=VersionStatus.blessed, metrics={"ppl_new": ppl_new, "ppl_retention": ret})
        session.add(v)
        session.flush()
        session.add(SuiteResult(subject=f"v{v.id}", suite="retention", suite_hash=digest,
                                metrics={"ppl_retention": ret}, items=_per_item(ret, 30, noise, seed=i)))
        session.add(SuiteResult(subject=f"v{v.id}", suite="new", suite_hash=f"new-{i}", metrics={"ppl_new": ppl_new}))
        session.add(AuditEvent(actor="t", action="promote", subject="default/champion", to_version_id=v.id,
                               reason="r", at=at + timedelta(minutes=i)))
        versions.append(v)
    session.add(Alias(model_line="default", name="champion", version_id=versions[-1].id))
    return versions


def test_health_never_compares_numbers_from_different_item_sets(medqa_env):
    """Each champion's retention suite here is another item set (as when earlier hold-outs join it),
    and no earlier champion was scored on the newest one: no trend can be claimed."""
    medqa_env()
    with session_scope() as s:
        _champions_scored(s, utcnow(), retention=[10.0, 9.5, 13.0], new=[20.0, 19.0, 90.0],
                          retention_hashes=["R1", "R2", "R3"])
    with session_scope() as s:
        assert "metric_trend" not in check_health(s)


def test_a_large_ingest_batch_triggers_a_monitor_run(medqa_env, tmp_path):
    medqa_env(monitor_after_ingest="30", trigger_min_new="100000", drift_embeddings="0")
    write_corpus(tmp_path / "small", files=1, per_file=10, seed=5)
    ingest_path(tmp_path / "small")
    with session_scope() as s:
        assert s.exec(select(DriftReport)).all() == []
    write_corpus(tmp_path / "big", files=1, per_file=40, seed=6, start_pmid=96_000_000)
    ingest_path(tmp_path / "big")
    with session_scope() as s:
        reports = s.exec(select(DriftReport)).all()
        assert [r.current_window for r in reports if r.kind == "data"] == ["abstracts not yet trained on"]


def test_drift_show_prints_the_report_and_refuses_an_unknown_id(medqa_env):
    import json

    from typer.testing import CliRunner

    from services.cli import app

    medqa_env()
    with session_scope() as s:
        text = {"method": "perc_text_content_drift", "score": 0.9, "threshold": 0.55, "drifted": True}
        s.add(DriftReport(kind="data", status="drift", drift_detected=True, reference_window="ref",
                          current_window="cur", html_path="/r/x.html",
                          scores={"n_reference": 40, "n_current": 30, "scores": {"text": text}}))
    shown = CliRunner().invoke(app, ["drift", "show", "1"])
    assert shown.exit_code == 0 and "drift" in shown.output and "/r/x.html" in shown.output
    assert "DRIFT text" in shown.output
    as_json = CliRunner().invoke(app, ["drift", "show", "1", "--json"])
    assert json.loads(as_json.output)["scores"]["n_current"] == 30
    listed = CliRunner().invoke(app, ["drift", "--json"])
    assert [r["id"] for r in json.loads(listed.output)] == [1]
    missing = CliRunner().invoke(app, ["drift", "show", "99"])
    assert missing.exit_code != 0 and "no drift report 99" in missing.output


def test_retention_deletes_old_no_drift_html_and_keeps_drift_reports(medqa_env, tmp_path):
    medqa_env(drift_reports_keep="2")
    from shared.settings import get_settings

    reports_dir = get_settings().reports_dir
    reports_dir.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "elsewhere.html"  # a path the monitor did not write: never deleted
    outside.write_text("x")
    detected = [False, True, False, False, False, False]  # oldest first
    with session_scope() as s:
        for i, drift in enumerate(detected):
            path = outside if i == 2 else reports_dir / f"data-drift-{i}.html"
            path.write_text("<html></html>")
            s.add(DriftReport(kind="data", status="drift" if drift else "no_drift", drift_detected=drift,
                              html_path=str(path), scores={"scores": {"text": {"score": 0.5}}}))
        s.add(DriftReport(kind="data", status="not_enough_data", html_path=None, scores={}))
    assert sorted(prune_reports(2)) == [1, 4]
    with session_scope() as s:
        rows = {r.id: r for r in s.exec(select(DriftReport))}
    # Newest two with HTML (6, 5) kept, the drift report (2) kept, the outside file (3) left alone.
    assert [i for i, r in sorted(rows.items()) if r.html_path is None] == [1, 4, 7]
    assert not (reports_dir / "data-drift-0.html").exists() and not (reports_dir / "data-drift-3.html").exists()
    assert all((reports_dir / f"data-drift-{i}.html").exists() for i in (1, 4, 5)) and outside.exists()
    assert rows[1].scores == {"scores": {"text": {"score": 0.5}}}  # the row and its scores stay
    assert prune_reports(2) == []  # idempotent


def test_storing_a_report_applies_retention(medqa_env):
    medqa_env(drift_reports_keep="1", drift_min_rows="10", drift_embeddings="0")
    import random

    from services.monitor.tasks import _store_report

    rng = random.Random(0)
    vocabulary = ["patients", "cohort", "trial", "outcome", "treatment", "risk", "baseline", "therapy", "follow",
                  "mortality", "dose", "placebo", "hospital", "analysis", "adverse", "events", "clinical", "survival"]
    # One generator for both sides: a check that finds no drift.
    texts = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(12, 30))) + "." for _ in range(40)]
    first = _store_report("question", texts[:20], texts[20:], "ref", "cur", {})
    second = _store_report("question", texts[:20], texts[20:], "ref", "cur", {})
    with session_scope() as s:
        old, new = s.get(DriftReport, first), s.get(DriftReport, second)
        assert not old.drift_detected and old.html_path is None and old.scores["scores"]
        assert new.html_path is not None and Path(new.html_path).is_file()
