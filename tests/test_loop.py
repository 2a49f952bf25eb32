"""The whole loop in eager mode on the tiny GPT-2: ingest -> train -> gate -> promote -> monitor,
then a second increment warm-started from the champion with replay."""

from datetime import date
from pathlib import Path

import pytest
from sqlmodel import select

from services.devkit.synth import write_corpus
from services.ingest.tasks import ingest_path
from shared import registry
from shared.db import session_scope
from shared.tables import Alert, AuditEvent, DriftReport, Evaluation, ModelVersion, TrainingRun, VersionStatus


@pytest.mark.slow
def test_two_increments_end_to_end(store_env, tmp_path):
    store_env(train_lr="5e-3", train_max_steps="8", replay_ratio="0.3")
    first = write_corpus(tmp_path / "c1", files=1, per_file=40, seed=1, topics=("cardiology",))
    second = write_corpus(tmp_path / "c2", files=1, per_file=40, seed=2, topics=("oncology",),
                          start_pmid=95_000_000, entrez_start=date(2024, 6, 1))
    second[0].rename(tmp_path / "c2" / "later.xml")

    ingest_path(first[0])
    with session_scope() as s:
        v1 = s.exec(select(ModelVersion)).one()
        assert v1.status == VersionStatus.blessed, registry.latest_evaluation(s, version_id=v1.id).reasons
        assert registry.champion(s, model_line="default").id == v1.id
        ev = registry.latest_evaluation(s, version_id=v1.id)
        assert ev.baseline_version_id is None and ev.metrics["ppl_new"] < ev.baseline_metrics["ppl_new"]
        assert s.exec(select(AuditEvent)).one().actor == "policy"

    ingest_path(tmp_path / "c2" / "later.xml")
    with session_scope() as s:
        runs = s.exec(select(TrainingRun).order_by(TrainingRun.id)).all()
        assert [r.status.value for r in runs] == ["succeeded", "succeeded"]
        assert runs[1].parent_version_id == v1.id
        counts = runs[1].manifest["counts"]
        n_replay = counts["replay_pmids"] + counts["replay_general"]
        assert counts["replay_pmids"] > 0  # the reservoir of run 1's abstracts is replayed
        assert abs(n_replay / (n_replay + counts["new"]) - 0.3) < 0.05
        assert set(runs[1].manifest["replay_pmids"]) <= set(runs[0].manifest["new"])
        v2 = s.exec(select(ModelVersion).where(ModelVersion.run_id == runs[1].id)).one()
        assert v2.parent_version_id == v1.id and v2.status != VersionStatus.candidate
        ev2 = registry.latest_evaluation(s, version_id=v2.id)
        assert ev2.baseline_version_id == v1.id and ev2.reasons
        assert s.exec(select(Evaluation)).all().__len__() == 2
        reports = s.exec(select(DriftReport).order_by(DriftReport.id)).all()
        assert len(reports) == 2
        # cardiology abstracts vs oncology abstracts: the second report must see the shift
        assert reports[1].status == "drift" and reports[1].drift_detected
        assert Path(reports[1].html_path).exists()
        assert s.exec(select(Alert).where(Alert.kind == "data_drift")).first() is not None
