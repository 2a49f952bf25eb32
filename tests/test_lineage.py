"""Document-level lineage: the manifest items in an indexed table, which versions learned from a paper
(directly or inherited through warm starts), a version's ancestry, and the migration of old manifests."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_GPT2
from sqlmodel import select
from typer.testing import CliRunner

from services.cli import app
from shared import lineage, registry
from shared.db import session_scope
from shared.manifest import RunManifest
from shared.tables import (
    Abstract,
    Alert,
    AuditEvent,
    CitationLog,
    LineageItem,
    ModelVersion,
    RunStatus,
    TrainingRun,
    VersionStatus,
)

PAPER, OTHER, HELD = 11_000_001, 11_000_002, 11_000_003


def _version(manifest: RunManifest, parent: int | None, status: VersionStatus = VersionStatus.blessed) -> int:
    """A run row (with its lineage, as the trigger writes it) and its version, warm-started from `parent`."""
    with session_scope() as s:
        run = TrainingRun(model_line="default", base_model=TINY_GPT2, status=RunStatus.succeeded,
                          parent_version_id=parent, manifest=manifest.to_json())
        s.add(run)
        s.flush()
        assert run.id is not None
        lineage.record_run(s, run.id, manifest)
        v = ModelVersion(model_line="default", run_id=run.id, parent_version_id=parent, base_model=TINY_GPT2,
                         adapter_path="/x", sha256="0" * 64, status=status)
        s.add(v)
        s.flush()
        assert v.id is not None
        return v.id


@pytest.fixture
def chain(store_env):  # type: ignore[no-untyped-def]
    """v1 trains PAPER; v2 (from v1) replays OTHER and holds out HELD; v3 (from v2) adds nothing of
    them; v4 starts from the base and only holds PAPER out."""
    v1 = _version(RunManifest(new=[PAPER, OTHER], mined=[PAPER], replay_general=["medquad:1"]), None)
    v2 = _version(RunManifest(new=[12_000_001], holdout=[HELD], replay_pmids=[OTHER]), v1)
    v3 = _version(RunManifest(new=[12_000_002]), v2)
    v4 = _version(RunManifest(new=[12_000_003], holdout=[PAPER]), None, VersionStatus.rejected)
    with session_scope() as s:
        registry.promote(s, version_id=v2, actor="t", reason="x")
        registry.promote(s, version_id=v3, actor="t", reason="x")
        s.add_all([CitationLog(pmid=PAPER, version_id=v3), CitationLog(pmid=PAPER, version_id=v3),
                   CitationLog(pmid=OTHER, version_id=v2)])
    return v1, v2, v3, v4


def test_a_paper_trained_in_v1_is_inherited_by_every_warm_started_descendant(chain):
    v1, v2, v3, v4 = chain
    with session_scope() as s:
        found = lineage.paper_lineage(s, PAPER)
    uses = {u.version: u for u in found.versions}
    assert set(uses) == {v1, v2, v3}  # v4 only held it out, from the base model
    assert uses[v1].how == ["mined", "new"] and uses[v1].inherited_from is None
    assert uses[v2].how == [] and uses[v2].inherited_from == v1 and uses[v3].inherited_from == v1
    assert uses[v3].champion and not uses[v2].champion and uses[v2].was_champion and not uses[v1].was_champion
    assert (uses[v3].cited, found.cited_total) == (2, 2)
    assert found.evaluated_by == [v4]
    with session_scope() as s:
        replayed = {u.version: u.how for u in lineage.paper_lineage(s, OTHER).versions}
        assert replayed == {v1: ["new"], v2: ["replay"], v3: []}
        assert lineage.paper_lineage(s, 99).versions == []
        assert lineage.trained_pmids(s, v3) == {PAPER, OTHER, 12_000_001, 12_000_002}


def test_seen_in_training_names_items_and_papers_a_version_learned_through_its_ancestors(chain):
    v1, v2, v3, v4 = chain
    asked = ["medquad:1", f"pubmedqa:{PAPER}", f"pmid:{OTHER}", f"pubmedqa:{HELD}", "medquad:2", "liveqa:7",
             "pubmedqa:x1"]
    with session_scope() as s:
        # v3 trained none of them itself: the replayed item and both papers come from v1 and v2.
        assert lineage.seen_in_training(s, v3, asked) == {"items": ["medquad:1"],
                                                          "papers": [f"pubmedqa:{PAPER}", f"pmid:{OTHER}"]}
        # v4 only held PAPER out, from the base model: a held-out paper was never in its weights.
        assert lineage.seen_in_training(s, v4, asked) == {"items": [], "papers": []}
        assert lineage.seen_in_training(s, v1, []) == {"items": [], "papers": []}


def test_the_items_a_version_was_scored_on_are_indexed_too(chain):
    _, _, v3, _ = chain
    with session_scope() as s:
        run_id = s.get(ModelVersion, v3).run_id
        n = lineage.record_evaluation(s, run_id, [f"pubmedqa:{PAPER}", f"pmid:{HELD}", "medquad:7", "medquad:7"])
        assert n == 3
        lineage.record_evaluation(s, run_id, [f"pubmedqa:{PAPER}", f"pmid:{HELD}", "medquad:7"])  # again: replaced
        rows = {(r.ref, r.pmid) for r in s.exec(select(LineageItem).where(LineageItem.role == "eval"))}
        assert rows == {(f"pubmedqa:{PAPER}", PAPER), (f"pmid:{HELD}", HELD), ("medquad:7", None)}
        assert v3 in lineage.paper_lineage(s, HELD).evaluated_by  # scored on it, never trained on it
        assert v3 not in {u.version for u in lineage.paper_lineage(s, HELD).versions}


def test_version_ancestry_runs_back_to_the_base(chain):
    v1, v2, v3, _ = chain
    with session_scope() as s:
        steps = lineage.version_ancestry(s, v3)
    assert [step["version"] for step in steps] == [v3, v2, v1]
    assert steps[-1]["items"] == {"new": 2, "holdout": 0, "replay": 0, "mined": 1, "replay_mined": 0, "general": 1,
                                  "reviewed": 0, "replay_reviewed": 0}


def test_cli_lineage_for_a_paper_and_for_a_version(chain):
    v1, v2, v3, _ = chain
    runner = CliRunner()
    res = runner.invoke(app, ["lineage", str(PAPER), "--json"])
    assert res.exit_code == 0, res.output
    assert [u["version"] for u in json.loads(res.stdout)["versions"]] == [v1, v2, v3]
    res = runner.invoke(app, ["lineage", str(PAPER)])
    assert f"inherited from v{v1}" in res.stdout and "now" in res.stdout
    res = runner.invoke(app, ["lineage", "--version", f"v{v3}", "--json"])
    assert [c["version"] for c in json.loads(res.stdout)] == [v3, v2, v1]
    assert runner.invoke(app, ["lineage"]).exit_code == 2
    assert runner.invoke(app, ["lineage", str(2**31)]).exit_code == 2
    res = runner.invoke(app, ["lineage", "--version", "v999"])
    assert res.exit_code == 1 and "error:" in res.output


def test_the_migration_indexes_manifests_stored_before_it(medqa_env):
    import sqlalchemy
    from alembic import command

    from shared.db import alembic_config, get_engine

    command.downgrade(alembic_config(), "0009")
    manifest = RunManifest(new=[PAPER], holdout=[HELD], replay_pmids=[OTHER], replay_general=["g:1"]).to_json()
    with get_engine().begin() as conn:
        conn.execute(sqlalchemy.text(
            "INSERT INTO trainingrun (model_line, status, base_model, config, manifest, step, total_steps, "
            "deliveries, created_at) VALUES ('default', 'SUCCEEDED', 'm', '{}', :m, 0, 0, 1, '2026-01-01')"),
            {"m": json.dumps(manifest)})
    command.upgrade(alembic_config(), "head")
    with session_scope() as s:
        rows = {(r.role, r.ref, r.pmid) for r in s.exec(select(LineageItem))}
    assert rows == {("new", str(PAPER), PAPER), ("holdout", str(HELD), HELD), ("replay", str(OTHER), OTHER),
                    ("general", "g:1", None)}


def _store_abstracts(*pmids: int) -> None:
    with session_scope() as s:
        for pmid in pmids:
            s.add(Abstract(pmid=pmid, title=f"Paper {pmid}", text="Made-up findings. " * 20,
                           content_hash=f"{pmid:064d}", source="test"))


def _alerts() -> list[Alert]:
    with session_scope() as s:
        return list(s.exec(select(Alert).where(Alert.kind == "retraction").order_by(Alert.id)))


def test_a_retraction_alerts_once_naming_the_versions_with_error_when_the_champion_learned_it(chain):
    import dataclasses

    from services.devkit.synth import generate_articles, pubmed_xml
    from services.ingest.parser import parse_pubmed_bytes
    from services.ingest.store import store_records
    from shared.pipeline import sweep_now

    v1, v2, v3, v4 = chain
    _store_abstracts(PAPER, OTHER, HELD)
    notice = next(iter(parse_pubmed_bytes(pubmed_xml(generate_articles(1, seed=3, start_pmid=98_000_000)))))
    notice = dataclasses.replace(notice, publication_types=("Retraction Notice",), retraction_of=(PAPER, HELD))
    for _ in range(2):  # the same notice twice (a re-imported file): one alert
        with session_scope() as s:
            store_records(s, [notice], source="notice")
    alerts = _alerts()
    assert len(alerts) == 1  # HELD was only held out by v2: not in any version's weights, no alert
    assert alerts[0].severity == "error"  # the serving champion v3 inherited PAPER from v1
    assert f"PMID {PAPER}" in alerts[0].message and all(f"v{v} [" in alerts[0].message for v in (v1, v2, v3))
    assert f"v{v4} [" not in alerts[0].message and f"medqa rebuild v{v3}" in alerts[0].message
    assert sweep_now()["retracted"] == []  # nothing pending: the alert exists
    with session_scope() as s:
        assert s.get(Abstract, PAPER).retracted and s.get(Abstract, HELD).retracted


def test_an_operator_retraction_is_audited_and_a_lost_event_is_resent_by_the_sweeper(chain):
    from services.ingest.store import _mark
    from shared.pipeline import sweep_now

    v1, v2, v3, _ = chain
    _store_abstracts(PAPER, OTHER)
    runner = CliRunner()
    res = runner.invoke(app, ["retract", str(OTHER), "--reason", "journal notice 2026-11", "--actor", "ops"])
    assert res.exit_code == 0, res.output
    with session_scope() as s:
        audit = s.exec(select(AuditEvent).where(AuditEvent.action == "retract")).one()
        assert (audit.actor, audit.subject, audit.reason) == ("ops", f"pmid:{OTHER}", "journal notice 2026-11")
    assert [a.dedup_key for a in _alerts()] == [f"retraction:{OTHER}"]
    again = runner.invoke(app, ["retract", str(OTHER), "--reason", "again"])
    assert again.exit_code == 1 and "already" in again.output
    res = runner.invoke(app, ["retract", "77777777", "--reason", "not imported yet"])
    assert res.exit_code == 0 and "not stored yet" in res.stdout

    with session_scope() as s:  # marked without its event reaching the monitor (a dead broker, say)
        _mark(s, {PAPER}, "retracted")
    assert sweep_now()["retracted"] == [PAPER]
    assert [a.dedup_key for a in _alerts()] == [f"retraction:{OTHER}", f"retraction:{PAPER}"]
    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert [a["alert"] for a in status["retracted_in_lineage"]] == [a.id for a in _alerts()]
    assert runner.invoke(app, ["alerts", "ack", str(_alerts()[0].id)]).exit_code == 0
    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert len(status["retracted_in_lineage"]) == 1  # shown until acknowledged


def test_the_sweeper_finds_a_rebuild_step_whose_next_step_was_never_queued(chain):
    """version.created of a rebuild step lost: the next step would never be queued."""
    from shared.pipeline import _pending

    v1, v2, v3, _ = chain
    with session_scope() as s:
        step = TrainingRun(model_line="default", base_model=TINY_GPT2, status=RunStatus.succeeded,
                           replaces_version_id=v1, rebuild_of=v3)
        last = TrainingRun(model_line="other", base_model=TINY_GPT2, status=RunStatus.succeeded,
                           replaces_version_id=v3, rebuild_of=v3)
        s.add_all([step, last])
        s.flush()
        rebuilt = ModelVersion(model_line="default", run_id=step.id, base_model=TINY_GPT2, adapter_path="/x",
                               sha256="0" * 64, status=VersionStatus.rejected, replaces_version_id=v1)
        final = ModelVersion(model_line="other", run_id=last.id, base_model=TINY_GPT2, adapter_path="/x",
                             sha256="0" * 64, status=VersionStatus.rejected, replaces_version_id=v3)
        s.add_all([rebuilt, final])
        s.flush()
        rebuilt_id = rebuilt.id
    assert _pending()["rebuild_steps"] == [rebuilt_id]  # the last step has no next one: not listed
    with session_scope() as s:  # the next step is queued (and finished): nothing pending any more
        s.add(TrainingRun(model_line="default", base_model=TINY_GPT2, status=RunStatus.succeeded,
                          parent_version_id=rebuilt_id, replaces_version_id=v2, rebuild_of=v3))
    assert _pending()["rebuild_steps"] == []
