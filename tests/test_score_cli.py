"""`medqa score`: one model on one suite from any compatible source, with intervals, stored per item."""

import json

from typer.testing import CliRunner

from services.cli import app

ITEMS = {str(300 + k): {"QUESTION": f"Does drug {k} lower fever in children?",
                        "CONTEXTS": [f"We gave drug {k} to {30 + k} children with fever.", "Fever fell."],
                        "LONG_ANSWER": f"Drug {k} lowered fever.", "final_decision": ("yes", "no", "maybe")[k % 3]}
         for k in range(7)}


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


def test_score_base_on_a_pubmedqa_file_with_every_item(medqa_env, tmp_path):
    medqa_env()
    source = tmp_path / "test.json"
    source.write_text(json.dumps(ITEMS))
    res = invoke("score", "base", "--suite", "pubmedqa", "--source", str(source), "--items", "all", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["target"], doc["suite"], doc["items"], doc["reused"]) == ("base", "pubmedqa", 7, False)
    acc = doc["metrics"]["pubmedqa_acc"]
    assert 0 <= acc["low"] <= acc["value"] <= acc["high"] <= 1
    assert sum(doc["predicted_labels"].values()) == 7 and set(doc["predicted_labels"]) <= {"yes", "no", "maybe"}
    f1 = doc["metrics"]["pubmedqa_f1"]  # not a mean of per-item values: recomputed on item resamples
    assert 0 <= f1["low"] <= f1["value"] <= f1["high"] <= 1
    for name, metric in doc["metrics"].items():  # every interval claimed is around its own value
        assert "low" not in metric or metric["low"] <= metric["value"] <= metric["high"], name
    again = json.loads(invoke("score", "base", "--suite", "pubmedqa", "--source", str(source), "--items", "all",
                              "--json").stdout)
    assert again["reused"] and again["metrics"] == doc["metrics"]  # the stored per-item result, not a rerun
    three = json.loads(invoke("score", "base", "--suite", "pubmedqa", "--source", str(source), "--items", "3",
                              "--json").stdout)
    assert three["items"] == 3 and not three["reused"]
    assert 0 <= doc["metrics"]["pubmedqa_ece"]["value"] <= 1
    raw = json.loads(invoke("score", "base", "--suite", "pubmedqa", "--source", str(source), "--items",
                            "all", "--calibration", "none", "--json").stdout)
    # Another calibration than the default (prior) is another test: its own suite hash, scored afresh.
    assert raw["suite_hash"] != doc["suite_hash"] and not raw["reused"] and raw["items"] == 7
    assert sum(raw["predicted_labels"].values()) == 7


def test_score_refuses_what_it_cannot_score(medqa_env, tmp_path):
    medqa_env()
    res = invoke("score", "champion", "--suite", "pubmedqa")
    assert res.exit_code == 1 and "no champion" in res.output
    res = invoke("score", "base", "--suite", "bleu")
    assert res.exit_code == 1 and "unknown suite 'bleu'" in res.output
    res = invoke("score", "base", "--suite", "pubmedqa", "--source", str(tmp_path / "missing.json"))
    assert res.exit_code == 1 and "missing.json does not exist" in res.output
    res = invoke("score", "base", "--suite", "pubmedqa", "--items", "0")
    assert res.exit_code == 1 and "--items must be a positive number" in res.output
    assert invoke("score", "v9", "--suite", "retention").exit_code == 1
    res = invoke("score", "base", "--suite", "pubmedqa", "--calibration", "platt")
    assert res.exit_code == 1 and "--calibration must be one of none, contextual, prior" in res.output


def test_score_retention_gives_a_perplexity_interval(medqa_env):
    medqa_env()
    res = invoke("score", "base", "--suite", "retention", "--items", "6", "--json")
    assert res.exit_code == 0, res.output
    ppl = json.loads(res.stdout)["metrics"]["ppl_retention"]
    assert 1 < ppl["low"] <= ppl["value"] <= ppl["high"]


def test_scoring_a_file_without_a_training_source_needs_calibration_none(medqa_env, tmp_path):
    """The default (prior) calibration's label shares come from the training share: without it, scoring
    says which source is missing and how to score anyway; with --calibration none a file of one's own
    is scored."""
    medqa_env(pubmedqa_source=str(tmp_path / "no-such-pubmedqa.json"))
    source = tmp_path / "test.json"
    source.write_text(json.dumps(ITEMS))
    res = invoke("score", "base", "--suite", "pubmedqa", "--source", str(source), "--items", "all")
    assert res.exit_code == 1 and "no-such-pubmedqa.json" in res.output and "--calibration none" in res.output
    res = invoke("score", "base", "--suite", "pubmedqa", "--source", str(source), "--items", "all",
                 "--calibration", "none", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["items"] == 7


def test_scoring_a_version_on_items_it_trained_on_says_so(medqa_env, tmp_path):
    """Pointing --source at a file the version replayed (or whose papers it trained on) would score
    memory: the document counts those items and warns; the base model has seen none of them."""
    from apikit import make_version

    from shared import lineage
    from shared.db import session_scope
    from shared.manifest import RunManifest
    from shared.tables import ModelVersion

    medqa_env()
    source = tmp_path / "test.json"
    source.write_text(json.dumps(ITEMS))
    version = make_version(tmp_path, seed=1)
    with session_scope() as s:
        run_id = s.get(ModelVersion, version).run_id
        lineage.record_run(s, run_id, RunManifest(new=[302], replay_general=["pubmedqa:300", "pubmedqa:301"]))
    res = invoke("score", f"v{version}", "--suite", "pubmedqa", "--source", str(source), "--items", "all",
                 "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["seen_in_training"] == {"items": 2, "papers": 1} and doc["items"] == 7
    assert "trained on 2 of these 7 items and on the papers of 1 more" in doc["warning"] and "warning:" in res.stderr
    base = json.loads(invoke("score", "base", "--suite", "pubmedqa", "--source", str(source), "--items", "all",
                             "--json").stdout)
    assert base["seen_in_training"] == {"items": 0, "papers": 0} and "warning" not in base
    # The grounding suite is the evidence step alone: the version's training cannot colour it.
    res = invoke("score", f"v{version}", "--suite", "grounding", "--source", str(source), "--items", "all",
                 "--json")
    assert res.exit_code == 0, res.output
    grounding = json.loads(res.stdout)
    assert "seen_in_training" not in grounding and "warning" not in grounding and "warning:" not in res.stderr
