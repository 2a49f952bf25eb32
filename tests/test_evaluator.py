"""Evaluator: suites, the written policy, the champion cache, planted good and bad candidates, reports."""

import json
import random
from pathlib import Path

import pytest
from conftest import TINY_GPT2, needs_shared_data
from sqlmodel import select

from services.devkit.synth import write_corpus
from services.evaluator import gate
from services.evaluator.metrics import fk_grade, text_scores
from services.evaluator.qa import decision_scores, macro_f1
from services.ingest.tasks import ingest_path
from services.trainer.config import TrainConfig
from services.trainer.train import train_lora
from shared import registry
from shared.corpora import load_liveqa
from shared.db import session_scope
from shared.lm.base_model import load_base_model
from shared.lm.generation import generate
from shared.policy import Policy
from shared.queries import live_texts as texts_for
from shared.settings import get_settings
from shared.tables import Evaluation, ModelVersion, RunStatus, SuiteResult, TrainingRun, VersionStatus

DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "shared" / "policy.toml"


# --- metrics and policy (no model) -------------------------------------------------------------------

def test_text_metrics_rank_a_close_answer_above_a_far_one():
    ref = ["Insulin lowers blood glucose in patients with type 1 diabetes."]
    close = text_scores(["Insulin lowers blood glucose in type 1 diabetes."], ref)
    far = text_scores(["The weather was sunny on the coast yesterday."], ref)
    for k in ("bleu", "rouge1", "rouge2", "rougeL"):
        assert 0 <= far[k] < close[k] <= 1, k
    assert fk_grade("The cat sat. It was warm.") < fk_grade(
        "Pharmacokinetic heterogeneity substantially complicates individualized therapeutic optimization.")
    assert macro_f1(["yes", "no", "maybe"], ["yes", "no", "no"]) == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_policy_rejects_a_rouge_drop_even_when_perplexity_improves():
    policy = Policy.load(DEFAULT_POLICY)
    champion = {"ppl_new": 20.0, "ppl_retention": 15.0, "pubmedqa_acc": 0.5, "pubmedqa_rouge1": 0.249,
                "pubmedqa_rouge2": 0.100, "consumer_rougeL": 0.2, "consumer_fk_grade": 10.0}
    # The design document's fine-tune: perplexity better, ROUGE-1 0.249 -> 0.184, ROUGE-2 0.100 -> 0.053.
    candidate = {**champion, "ppl_new": 18.0, "ppl_retention": 14.5, "pubmedqa_rouge1": 0.184,
                 "pubmedqa_rouge2": 0.053}
    passed, reasons = policy.judge(candidate, champion, has_champion=True)
    assert not passed
    assert any(r.startswith("FAIL pubmedqa_rouge1") for r in reasons)
    assert any(r.startswith("FAIL pubmedqa_rouge2") for r in reasons)
    assert any(r.startswith("ok target ppl_new") for r in reasons)
    # Without a champion only the value bounds apply: the same numbers pass.
    assert policy.judge(candidate, champion, has_champion=False)[0]


def test_policy_skips_metrics_whose_suite_is_not_configured():
    policy = Policy.load(DEFAULT_POLICY)
    only_ppl = {"ppl_new": 18.0, "ppl_retention": 14.0}
    passed, reasons = policy.judge(only_ppl, {"ppl_new": 20.0, "ppl_retention": 14.0}, has_champion=True)
    assert passed and any(r.startswith("skip pubmedqa_rouge1") for r in reasons)
    # Measured for the champion but missing for the candidate: that is a failure, not a skip.
    passed, _ = policy.judge(only_ppl, {"ppl_new": 20.0, "ppl_retention": 14.0, "pubmedqa_rouge1": 0.2},
                             has_champion=True)
    assert not passed


@needs_shared_data("liveqa_medical")
def test_liveqa_loader_reads_training_and_test_layouts(tmp_path):
    from conftest import SHARED_DATA

    train = load_liveqa(SHARED_DATA / "liveqa_medical")
    assert len(train) == 446 and all(i.question and i.answer for i in train)
    assert len({i.item_id for i in train}) == len(train)
    # The 2017 test layout (Original-Question, ReferenceAnswers/RefAnswer, mixed-case tags), written here.
    (tmp_path / "test.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><LiveQA2017-Medical-TestQuestions>'
        '<NLM-QUESTION qid="TQ1"><Original-Question qfile="x"><Subject>ear pain</Subject>'
        '<Message>My ear hurts after swimming, what helps?</Message></Original-Question>'
        '<ReferenceAnswers><RefAnswer aid="1"><ANSWER>Keep the ear dry and see a doctor.</ANSWER>'
        '<AnswerURL>u</AnswerURL></RefAnswer></ReferenceAnswers></NLM-QUESTION>'
        '</LiveQA2017-Medical-TestQuestions>')
    (item,) = load_liveqa(tmp_path / "test.xml")
    assert item.question == "ear pain. My ear hurts after swimming, what helps?"
    assert item.answer == "Keep the ear dry and see a doctor." and item.item_id.endswith("TQ1")
    (tmp_path / "bad.xml").write_text("<NLM-QUESTIONS><NLM-QUESTION>")
    with pytest.raises(ValueError, match="bad.xml"):
        load_liveqa(tmp_path / "bad.xml")


def test_batched_scoring_equals_one_item_at_a_time(model_cache):
    model, tok = load_base_model(TINY_GPT2, model_cache)
    items = [(f"Does drug {i} lower pressure?", "A trial of drug " + "x " * (i * 7) + "found lower pressure.")
             for i in range(6)]
    batched = decision_scores(model, tok, items, batch_size=4)
    single = [decision_scores(model, tok, [it], batch_size=1)[0] for it in items]
    for a, b in zip(batched, single, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    answers = generate(model, tok, items[:3], max_new_tokens=5, batch_size=3)
    assert answers == [generate(model, tok, [it], max_new_tokens=5, batch_size=1)[0] for it in items[:3]]


# --- against a real champion (tiny GPT-2, eager loop) ------------------------------------------------

@pytest.fixture
def line(medqa_env, tmp_path):
    """A model line whose champion v1 came out of the real loop; returns a candidate factory."""
    medqa_env(train_lr="5e-3", train_max_steps="8")
    (path,) = write_corpus(tmp_path / "c1", files=1, per_file=40, seed=1, topics=("cardiology",))
    ingest_path(path)
    with session_scope() as s:
        v1 = s.exec(select(ModelVersion)).one()
        assert v1.status == VersionStatus.blessed
        run1 = s.get(TrainingRun, v1.run_id)
        texts = texts_for(s, run1.manifest["new"])
        info = {"v1": v1.id, "adapter": Path(v1.adapter_path), "manifest": dict(run1.manifest), "texts": texts}

    def candidate(train_texts: list[str], name: str, lr: float = 5e-3, steps: int = 8) -> int:
        cfg = TrainConfig(max_steps=steps, batch_size=2, grad_accum=1, max_length=64, learning_rate=lr,
                          checkpoint_every=steps, precision="fp32")
        s_ = get_settings()
        res = train_lora(base_spec=TINY_GPT2, models_dir=s_.models_dir, examples=train_texts, cfg=cfg,
                         out_dir=tmp_path / name, work_dir=tmp_path / f"{name}-work", parent_adapter=info["adapter"])
        with session_scope() as s:
            run = TrainingRun(model_line="default", base_model=TINY_GPT2, status=RunStatus.succeeded,
                              parent_version_id=info["v1"], manifest=info["manifest"])
            s.add(run)
            s.flush()
            v = ModelVersion(model_line="default", run_id=run.id, parent_version_id=info["v1"],
                             base_model=TINY_GPT2, adapter_path=str(res.adapter_dir), sha256=res.sha256)
            s.add(v)
            s.flush()
            return v.id

    candidate.info = info  # type: ignore[attr-defined]
    return candidate


def _shuffled(texts: list[str], model_cache: Path, seed: int = 0) -> list[str]:
    """Shuffled tokens: every token id mapped through one random permutation of the vocabulary, so
    the texts keep their length and repetition but no longer look like the language."""
    _, tok = load_base_model(TINY_GPT2, model_cache)
    perm = list(range(len(tok)))
    random.Random(seed).shuffle(perm)
    return [tok.decode([perm[i] for i in tok(t)["input_ids"]]) for t in texts]


@pytest.mark.slow
def test_planted_bad_candidate_is_rejected_and_a_good_one_blessed(line, medqa_env, tmp_path, model_cache,
                                                                  monkeypatch):
    policy = tmp_path / "gate.toml"
    policy.write_text('target = "ppl_new"\n[metrics.ppl_new]\ndirection = "lower"\nmin_rel_improvement = 0.0\n'
                      '[metrics.ppl_retention]\ndirection = "lower"\nmax_rel_regression = 0.5\n')
    medqa_env(train_lr="5e-3", train_max_steps="8", policy_file=str(policy), auto_promote="0")
    texts = line.info["texts"]
    # The tiny model is far from converged: 40 steps at a high rate move its perplexity clearly.
    bad = line(_shuffled(texts, model_cache), "bad", lr=2e-2, steps=40)
    good = line(texts, "good", lr=2e-2, steps=40)  # more passes over the increment's own training text
    baseline_suites = []
    real_score = gate.score

    def spy(base_spec, adapters, suites):
        baseline_suites.append([x.name for x in suites["baseline"]])
        return real_score(base_spec, adapters, suites)

    monkeypatch.setattr(gate, "score", spy)
    bad_decision = gate.evaluate_version(bad)
    good_decision = gate.evaluate_version(good)
    # The champion met the shared suites once, with the first candidate; the second reused them.
    assert "retention" in baseline_suites[0] and baseline_suites[1] == []
    assert not bad_decision.passed and any(r.startswith("FAIL target ppl_new") for r in bad_decision.reasons), (
        bad_decision.candidate, bad_decision.baseline, bad_decision.reasons)
    assert good_decision.passed, good_decision.reasons
    with session_scope() as s:
        assert s.get(ModelVersion, bad).status == VersionStatus.rejected
        assert s.get(ModelVersion, good).status == VersionStatus.blessed
        stored = registry.latest_evaluation(s, version_id=bad)
        assert stored.reasons == bad_decision.reasons and not stored.passed
        assert stored.baseline_version_id == line.info["v1"]
        champ_rows = s.exec(select(SuiteResult).where(SuiteResult.subject == f"v{line.info['v1']}")).all()
        assert {"new", "retention"} <= {r.suite for r in champ_rows}
        assert registry.champion(s, model_line="default").id == line.info["v1"]  # auto-promotion is off


def test_rouge_regression_with_better_perplexity_is_rejected_and_the_reason_stored(line, medqa_env, monkeypatch):
    medqa_env(train_lr="5e-3", train_max_steps="8", policy_file=str(DEFAULT_POLICY))
    cand = line(line.info["texts"], "cand")
    champ = {"ppl_new": 30.0, "ppl_retention": 40.0, "pubmedqa_acc": 0.4, "pubmedqa_rouge1": 0.249,
             "pubmedqa_rouge2": 0.100, "consumer_rougeL": 0.2, "consumer_fk_grade": 9.0}
    worse_rouge = {**champ, "ppl_new": 25.0, "pubmedqa_rouge1": 0.184, "pubmedqa_rouge2": 0.053}

    def fake_score(base_spec, adapters, suites):  # the metrics are planted; storage and policy are real
        return {"candidate": dict(worse_rouge), "baseline": dict(champ) if suites["baseline"] else {}}

    monkeypatch.setattr(gate, "score", fake_score)
    decision = gate.evaluate_version(cand)
    assert not decision.passed and not decision.promoted
    with session_scope() as s:
        ev = s.exec(select(Evaluation).where(Evaluation.version_id == cand)).one()
        assert any(r.startswith("FAIL pubmedqa_rouge1") for r in ev.reasons)
        assert any(r.startswith("ok target ppl_new") for r in ev.reasons)
        assert s.get(ModelVersion, cand).status == VersionStatus.rejected
        assert registry.champion(s, model_line="default").id == line.info["v1"]


def test_report_writes_markdown_html_and_plots(line, medqa_env, tmp_path):
    from typer.testing import CliRunner

    from services.cli import app

    v1 = line.info["v1"]
    result = CliRunner().invoke(app, ["report", f"v{v1}", "--out", str(tmp_path / "rep"), "--json"])
    assert result.exit_code == 0, result.output
    paths = json.loads(result.output)
    md = Path(paths["markdown"]).read_text()
    assert f"v{v1}" in md and "ppl_new" in md and "blessed" in md
    assert "ppl_new" in Path(paths["html"]).read_text()
    assert paths["plots"] and all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths["plots"])
    missing = CliRunner().invoke(app, ["report", "v999"])
    assert missing.exit_code != 0 and "v999" in missing.output
