"""A retraction through the whole system (eager Celery, tiny GPT-2, made-up articles): a paper trained
in v1 is inherited by v2 and v3 through warm starts; PubMed flags it retracted; the Entrez retraction
poll (against the local emulator) finds it; one alert names v1-v3, with error severity because v3
serves; the API stops citing it."""

from __future__ import annotations

from datetime import date

import pytest
from apikit import TOKEN
from fastapi.testclient import TestClient
from sqlmodel import col, select

from services.api.app import create_app
from services.devkit.emulator import EntrezEmulator
from services.devkit.synth import generate_articles, pubmed_xml, retract
from services.ingest.entrez import poll_retractions
from services.ingest.tasks import ingest_path
from shared import registry
from shared.db import session_scope
from shared.lineage import paper_lineage
from shared.manifest import RunManifest
from shared.tables import Abstract, Alert, LineageItem, ModelVersion, TrainingRun

RETRACTED_ON = date(2025, 6, 2)


def _increments(tmp_path) -> list[list[dict]]:  # type: ignore[no-untyped-def]
    batches = [generate_articles(40, seed=100 + i, start_pmid=90_000_000 + 1000 * i,
                                 entrez_start=date(2024, 1 + 3 * i, 1), days=7) for i in range(3)]
    for i, batch in enumerate(batches):
        path = tmp_path / f"update{i}.xml"
        path.write_bytes(pubmed_xml(batch))
        ingest_path(path)  # 40 new abstracts >= the trigger's 30: train, gate, promote
    return batches


def _cited(client: TestClient, question: str) -> list[int]:
    res = client.post("/v1/answer", json={"question": question})
    assert res.status_code == 200, res.text
    return [c["pmid"] for c in res.json()["citations"]]


@pytest.mark.slow
def test_a_retraction_found_by_the_entrez_poll_alerts_on_every_version_that_learned_it(medqa_env, tmp_path):
    medqa_env(train_lr="5e-3", train_max_steps="6", trigger_min_new="30", api_token=TOKEN,
              api_champion_poll_s="3600", api_refresh_s="3600", api_default_new_tokens="4", api_batch_wait_ms="5",
              api_retrieval_k="3")
    batches = _increments(tmp_path)
    with session_scope() as s:
        versions = s.exec(select(ModelVersion).order_by(col(ModelVersion.id))).all()
        assert len(versions) == 3
        v1, v2, v3 = (v.id for v in versions)
        assert [v.parent_version_id for v in versions] == [None, v1, v2]  # warm starts, champion to champion
        assert registry.champion(s, model_line="default").id == v3
        trained = RunManifest.from_json(s.get(TrainingRun, versions[0].run_id).manifest).new
    paper = next(a for a in batches[0] if a["pmid"] in trained)
    with session_scope() as s:
        assert [u.version for u in paper_lineage(s, paper["pmid"]).versions] == [v1, v2, v3]
        scored = s.exec(select(LineageItem).where(LineageItem.run_id == versions[0].run_id,
                                                  LineageItem.role == "eval")).all()
        assert any(r.ref.startswith("pmid:") and r.pmid for r in scored)  # the gate's items are indexed too

    with TestClient(create_app()) as client:
        client.app.state.runtime.index.refresh()  # type: ignore[attr-defined]
        assert paper["pmid"] in _cited(client, paper["title"])  # its own title finds it: the test can fail

        flagged = dict(retract(paper), revised_date=RETRACTED_ON)  # PubMed's record once retracted
        others = generate_articles(5, seed=7, start_pmid=97_000_000, entrez_start=RETRACTED_ON, days=2)
        with EntrezEmulator([pubmed_xml([flagged, *others])], slow_s=0.2) as emu:
            medqa_env(train_lr="5e-3", train_max_steps="6", trigger_min_new="30", api_token=TOKEN,
                      entrez_base_url=emu.base_url, ncbi_rate_per_s="50", entrez_backoff_s="0.01")
            result = poll_retractions(since=date(2025, 6, 1), until=date(2025, 6, 7))
            searched = [r.params for r in emu.requests("esearch")]
        assert result.retracted == 1
        assert searched and all(p["datetype"] == "mdat" and "[pt]" in p["term"] for p in searched)

        with session_scope() as s:
            assert s.get(Abstract, paper["pmid"]).retracted
            alerts = s.exec(select(Alert).where(Alert.kind == "retraction")).all()
        assert len(alerts) == 1 and alerts[0].severity == "error"  # v3, the champion, inherited it
        assert all(f"v{v} [" in alerts[0].message for v in (v1, v2, v3))
        for _ in range(3):  # the index still holds its vector until the next refresh: checked at answer time
            assert paper["pmid"] not in _cited(client, paper["title"])

    _rebuilds_clean(paper["pmid"], v1, v2, v3)


def _rebuilds_clean(pmid: int, v1: int, v2: int, v3: int) -> None:
    """`medqa rebuild v3`: the plan starts from the base model (v1 learned the paper), and each rebuilt
    version replaces one of v1-v3, warm-started from the previous rebuilt one, without the paper."""
    import json

    from typer.testing import CliRunner

    from services.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["rebuild", f"v{v3}", "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    planned = json.loads(res.stdout)
    assert planned["clean_ancestor"] is None and [s["replaces"] for s in planned["steps"]] == [v1, v2, v3]
    assert pmid in planned["steps"][0]["removed"]["new"]
    assert all(s["est_gpu_hours"] is not None for s in planned["steps"])  # from each run's tokens and tokens/s
    with session_scope() as s:
        assert len(s.exec(select(ModelVersion)).all()) == 3  # a dry run queues nothing

    res = runner.invoke(app, ["rebuild", f"v{v3}", "--reason", "PMID retracted", "--json"])
    assert res.exit_code == 0, res.output
    with session_scope() as s:
        rebuilt = s.exec(select(ModelVersion).where(col(ModelVersion.replaces_version_id).is_not(None))
                         .order_by(col(ModelVersion.id))).all()
        assert [v.replaces_version_id for v in rebuilt] == [v1, v2, v3]
        assert [v.parent_version_id for v in rebuilt] == [None, rebuilt[0].id, rebuilt[1].id]  # clean parents
        for v in rebuilt:
            manifest = RunManifest.from_json(s.get(TrainingRun, v.run_id).manifest)
            assert pmid not in set(manifest.new) | set(manifest.replay_pmids) | set(manifest.mined)
            assert v.status.value in ("blessed", "rejected")  # gated
        assert registry.champion(s, model_line="default").id == v3  # never auto-promoted: an operator decides
        assert not {u.version for u in paper_lineage(s, pmid).versions} & {v.id for v in rebuilt}
    again = runner.invoke(app, ["rebuild", f"v{rebuilt[-1].id}"])
    assert again.exit_code == 1 and "nothing to rebuild" in again.output
    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert status["retracted_in_lineage"] == []  # the rebuild answered the alert

    # Version cards: the report and the API say what each version learned and how it was rebuilt.
    report = runner.invoke(app, ["report", f"v{v3}", "--json"])
    assert report.exit_code == 0, report.output
    card = json.loads(report.stdout)["card"]
    assert card["retracted_in_lineage"] == [pmid] and card["rebuild"]["replaced_by"] == [rebuilt[-1].id]
    assert card["papers_in_weights"] == sum(card["by_source"].values()) == sum(card["by_year"].values()) >= 60
    with open(json.loads(report.stdout)["markdown"]) as md:
        assert "## Data" in md.read()
    with TestClient(create_app()) as client:
        doc = client.get(f"/v1/versions/v{rebuilt[-1].id}").json()
        assert doc["replaces_version_id"] == v3 and doc["card"]["retracted_in_lineage"] == []
        assert client.get(f"/v1/versions/v{v3}").json()["card"]["retracted_in_lineage"] == [pmid]
        assert client.get("/v1/versions/v99999").status_code == 404
