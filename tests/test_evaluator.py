"""Evaluator: suites, the written policy, the champion cache, planted good and bad candidates, reports."""

import json
import math
import random
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY_GPT2, needs_shared_data
from sqlmodel import select

from services.devkit.synth import write_corpus
from services.evaluator import gate
from services.evaluator.judge import judge
from services.evaluator.metrics import fk_grade, text_scores
from services.evaluator.qa import macro_f1
from services.evaluator.suites import SuiteScores
from services.ingest.tasks import ingest_path
from services.trainer.config import TrainConfig
from services.trainer.train import train_lora
from shared import registry
from shared.corpora import load_liveqa
from shared.db import session_scope
from shared.lm.base_model import load_base_model
from shared.lm.decisions import DECISION_CUE, DECISIONS, decision_scores
from shared.lm.generation import generate
from shared.lm.prompts import prompt_ids
from shared.policy import Policy, PolicyError
from shared.queries import live_texts as texts_for
from shared.queries import verdict_calibration
from shared.settings import get_settings
from shared.stats import paired_bootstrap
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


def _scores(suite: str, **series: list) -> SuiteScores:
    """Per-item scores of one suite, with the aggregate metrics the suite would report."""
    n = len(next(iter(series.values())))
    items = {"item_id": [f"{suite}:{i}" for i in range(n)], **series}
    if "nll" in series:
        metrics = {f"ppl_{suite}": math.exp(sum(series["nll"]) / sum(series["tokens"]))}
    else:
        names = {"correct": "acc"}
        metrics = {f"{suite}_{names.get(k, k)}": sum(v) / n for k, v in series.items() if k != "tokens"}
    return SuiteScores(metrics, items)


def _ppl(suite: str, per_token: list[float], tokens: int = 50) -> SuiteScores:
    return _scores(suite, nll=[x * tokens for x in per_token], tokens=[tokens] * len(per_token))


def _rng_values(n: int, seed: int, mean: float, sd: float) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, sd) for _ in range(n)]


def test_policy_rejects_a_rouge_drop_even_when_perplexity_improves():
    policy = Policy.load(DEFAULT_POLICY)
    champ_nll = _rng_values(48, 1, 3.0, 0.3)
    champion = {"new": _ppl("new", champ_nll), "retention": _ppl("retention", champ_nll)}
    # The design document's fine-tune: perplexity better, ROUGE-1 0.249 -> 0.184, ROUGE-2 0.100 -> 0.053,
    # here on 64 answers each, paired.
    r1, r2 = _rng_values(64, 2, 0.249, 0.03), _rng_values(64, 3, 0.100, 0.02)
    champion["pubmedqa"] = _scores("pubmedqa", rouge1=r1, rouge2=r2)
    candidate = {"new": _ppl("new", [x - 0.1 for x in champ_nll]), "retention": _ppl("retention", champ_nll),
                 "pubmedqa": _scores("pubmedqa", rouge1=[x - 0.065 for x in r1], rouge2=[x - 0.047 for x in r2])}
    verdict = judge(policy, candidate, champion)
    assert not verdict.passed
    by_metric = {g.metric: g for g in verdict.guards if g.estimate is not None}
    assert by_metric["pubmedqa_rouge1"].verdict == "inferior" and by_metric["pubmedqa_rouge2"].verdict == "inferior"
    assert by_metric["ppl_new"].verdict == "superior" and by_metric["ppl_new"].passed
    assert by_metric["ppl_retention"].verdict == "non-inferior"
    # Every reason shows estimate, interval, margin and verdict.
    (r1_reason,) = [r for r in verdict.reasons if r.startswith("FAIL pubmedqa_rouge1")]
    assert re.search(r"-0\.065 \[-0\.06\d+, -0\.06\d+\] vs margin -0\.04: inferior", r1_reason), r1_reason
    assert any(re.match(r"ok target ppl_new -9\.\d+% \[-9\.\d+%, -9\.\d+%\] vs margin \+0\.00%: superior", r)
               for r in verdict.reasons), verdict.reasons


def test_a_one_item_accuracy_drop_on_16_items_is_not_significant_and_the_suite_too_small():
    policy = Policy(target="", rules={"pubmedqa_acc": {"direction": "higher", "margin": 0.05}})
    champ = [1, 0] * 8
    cand = list(champ)
    cand[0] = 0  # one item lost of 16: -6.25 points
    (guard,) = judge(policy, {"pubmedqa": _scores("pubmedqa", correct=cand)},
                     {"pubmedqa": _scores("pubmedqa", correct=champ)}).guards
    assert guard.estimate == pytest.approx(-1 / 16) and guard.p_value == 1.0
    assert guard.verdict == "inconclusive" and not guard.passed and guard.underpowered
    assert "not significant" in guard.reason and "SUITE TOO SMALL" in guard.reason and "16 items" in guard.reason
    assert guard.detectable > 0.05
    # The same drop on 400 items where the models agree elsewhere is detectable, and non-inferior.
    big_champ = [1, 0] * 200
    big_cand = list(big_champ)
    big_cand[0] = 0
    (big,) = judge(policy, {"pubmedqa": _scores("pubmedqa", correct=big_cand)},
                   {"pubmedqa": _scores("pubmedqa", correct=big_champ)}).guards
    assert big.passed and big.verdict == "non-inferior" and not big.underpowered


def test_the_guard_interval_is_the_paired_one_and_the_base_plays_champion(tmp_path):
    policy = Policy(target="", rules={"consumer_rougeL": {"direction": "higher", "margin": 0.03}})
    base = _rng_values(40, 5, 0.2, 0.08)
    cand = [b + d for b, d in zip(base, _rng_values(40, 6, -0.01, 0.01), strict=True)]
    (guard,) = judge(policy, {"consumer": _scores("consumer", rougeL=cand)},
                     {"consumer": _scores("consumer", rougeL=base)}).guards
    direct = paired_bootstrap(cand, base)
    assert (guard.estimate, guard.low, guard.high) == pytest.approx((direct.estimate, direct.low, direct.high))
    # Paired: the between-item spread (sd 0.08) cancels; an unpaired comparison could not clear 0.03.
    assert guard.passed and guard.high - guard.low < 0.02


def test_policy_skips_metrics_whose_suite_is_not_configured():
    policy = Policy.load(DEFAULT_POLICY)
    nll = _rng_values(20, 7, 3.0, 0.2)
    only_ppl = {"new": _ppl("new", [x - 0.2 for x in nll]), "retention": _ppl("retention", nll)}
    base = {"new": _ppl("new", nll), "retention": _ppl("retention", nll)}
    verdict = judge(policy, only_ppl, base)
    assert verdict.passed and any(r.startswith("skip pubmedqa_rouge1") for r in verdict.reasons)
    # Measured for the champion but missing for the candidate: that is a failure, not a skip.
    base["pubmedqa"] = _scores("pubmedqa", rouge1=[0.2] * 20)
    assert not judge(policy, only_ppl, base).passed


@pytest.mark.parametrize("body, message", [
    ('[metrics.ppl_new]\ndirection = "lower"\nmargin = 0.1\n', "takes margin_rel"),
    ('[metrics.pubmedqa_acc]\ndirection = "higher"\nmargin_rel = 0.1\n', "takes margin"),
    ('[metrics.pubmedqa_acc]\ndirection = "higher"\nmargin = -0.1\n', "must be a number >= 0"),
    ('confidence = 1.5\n[metrics.pubmedqa_acc]\ndirection = "higher"\n', "confidence must be"),
    ('target_test = "maybe"\n[metrics.pubmedqa_acc]\ndirection = "higher"\n', "target_test must be"),
    ('[metrics.pubmedqa_acc]\ndirection = "higher"\nmax_abs_regression = 0.1\n', "unknown keys"),
])
def test_a_malformed_policy_names_its_key(tmp_path, body, message):
    path = tmp_path / "p.toml"
    path.write_text(body)
    with pytest.raises(PolicyError, match=message):
        Policy.load(path)


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
    # The scorer projects only the answer positions onto the vocabulary: the same numbers as the full
    # logits of prompt + cue + option, summed over the option's tokens.
    prompt = prompt_ids(tok, *items[5], 512) + tok(DECISION_CUE, add_special_tokens=False)["input_ids"]
    reference = []
    for decision in DECISIONS:
        option = tok(" " + decision, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([prompt + option])).logits[0].log_softmax(-1)
        reference.append(sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(option)))
    assert batched[5] == pytest.approx(reference, abs=1e-4)
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
    policy.write_text('target = "ppl_new"\ntarget_test = "superiority"\n[metrics.ppl_new]\ndirection = "lower"\n'
                      '[metrics.ppl_retention]\ndirection = "lower"\nmargin_rel = 0.5\n')
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
        for row in champ_rows:  # per-item values beside the aggregates, one per item
            n = len(row.items["item_id"])
            assert n > 0 and set(row.items) >= {"item_id"} and all(len(v) == n for v in row.items.values())
            if row.suite in ("new", "retention"):
                assert all(t > 0 for t in row.items["tokens"])
                assert math.exp(sum(row.items["nll"]) / sum(row.items["tokens"])) == pytest.approx(
                    row.metrics[f"ppl_{row.suite}"])
        assert registry.champion(s, model_line="default").id == line.info["v1"]  # auto-promotion is off
        # The prior calibration's offsets are stored with the gate's decision, with the accuracy and the
        # majority-label baseline of the same items: the QA API's verdicts use and show them.
        calibration = verdict_calibration(s, good)
        assert calibration is not None and len(calibration.offsets) == 3
        assert any(abs(b) > 1e-6 for b in calibration.offsets)
        pubmedqa = s.exec(select(SuiteResult).where(SuiteResult.subject == f"v{good}",
                                                    SuiteResult.suite == "pubmedqa")).one()
        gold = pubmedqa.items["gold"]
        assert calibration.accuracy == pubmedqa.metrics["pubmedqa_acc"] and calibration.items == len(gold)
        assert calibration.majority == max(gold.count(d) for d in set(gold)) / len(gold)
    # A null candidate: the champion's own adapter, copied. Every paired difference is exactly zero, so
    # no guard calls it a regression; only the target (which asks for a real gain) turns it down.
    import shutil

    shutil.copytree(line.info["adapter"], tmp_path / "copy")
    with session_scope() as s:
        v1 = s.get(ModelVersion, line.info["v1"])
        run = TrainingRun(model_line="default", base_model=TINY_GPT2, status=RunStatus.succeeded,
                          parent_version_id=v1.id, manifest=line.info["manifest"])
        s.add(run)
        s.flush()
        copy = ModelVersion(model_line="default", run_id=run.id, parent_version_id=v1.id, base_model=TINY_GPT2,
                            adapter_path=str(tmp_path / "copy"), sha256=v1.sha256)
        s.add(copy)
        s.flush()
        copy_id = copy.id
    copy_decision = gate.evaluate_version(copy_id)
    guards = {g.metric: g for g in copy_decision.guards if g.estimate is not None}
    assert (guards["ppl_retention"].estimate, guards["ppl_retention"].low, guards["ppl_retention"].high) == (0, 0, 0)
    assert guards["ppl_retention"].verdict == "non-inferior" and guards["ppl_new"].verdict == "not superior"
    assert not copy_decision.passed


def test_rouge_regression_with_better_perplexity_is_rejected_and_the_reason_stored(line, medqa_env, monkeypatch):
    medqa_env(train_lr="5e-3", train_max_steps="8", policy_file=str(DEFAULT_POLICY))
    cand = line(line.info["texts"], "cand")
    nll = _rng_values(12, 8, 3.4, 0.3)
    r1, r2 = _rng_values(8, 9, 0.249, 0.02), _rng_values(8, 10, 0.100, 0.01)

    def planted(suite, better: bool):  # type: ignore[no-untyped-def]
        if suite.kind == "perplexity":
            shift = -0.2 if better and suite.name == "new" else 0.0
            return _ppl(suite.name, [x + shift for x in nll[: len(suite.items)]])
        if suite.kind == "pubmedqa":  # the candidate loses 0.065 ROUGE-1 and 0.047 ROUGE-2 on every answer
            drop = (0.065, 0.047) if better else (0.0, 0.0)
            return _scores("pubmedqa", rouge1=[x - drop[0] for x in r1], rouge2=[x - drop[1] for x in r2],
                           correct=[1] * 8)
        return _scores(suite.name, rougeL=[0.2] * len(suite.items), fk_grade=[9.0] * len(suite.items))

    def fake_score(base_spec, adapters, suites):  # the scores are planted; storage and policy are real
        return {"candidate": {x.name: planted(x, True) for x in suites["candidate"]},
                "baseline": {x.name: planted(x, False) for x in suites["baseline"]}}

    with session_scope() as s:  # forget v1's real scores, so the champion's are planted too
        for row in s.exec(select(SuiteResult).where(SuiteResult.subject == f"v{line.info['v1']}")):
            s.delete(row)

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
    # v1 was judged against the base model on the same items: the guard's interval, suite size and
    # detectable effect, and the items it won and lost most.
    guard_row = r"\| ppl_retention \| [+-][\d.]+% \| \[[+-][\d.]+%, [+-][\d.]+%\] \| 50\.00% \| non-inferior \| \d+ \|"
    assert re.search(guard_row, md), md
    assert re.search(r"ppl_new nats/token: won pmid:\d+ -[\d.e-]+", md), md
    assert "ppl_new" in Path(paths["html"]).read_text()
    assert paths["plots"] and all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths["plots"])
    missing = CliRunner().invoke(app, ["report", "v999"])
    assert missing.exit_code != 0 and "v999" in missing.output


@pytest.mark.slow
def test_an_earlier_champion_missing_the_fixed_suites_is_scored_once_for_the_trend(line, medqa_env, monkeypatch):
    """v2 becomes champion by hand; v1 never met v2's retention suite (its result is gone). The
    health check the promotion triggers asks the evaluator to score v1 once, on the same items."""
    medqa_env(train_lr="5e-3", train_max_steps="8", auto_promote="0")
    v1 = line.info["v1"]
    v2 = line(line.info["texts"], "v2")
    gate.evaluate_version(v2)
    with session_scope() as s:
        retention = s.exec(select(SuiteResult).where(SuiteResult.subject == f"v{v2}",
                                                     SuiteResult.suite == "retention")).one()
        for row in s.exec(select(SuiteResult).where(SuiteResult.subject == f"v{v1}")):
            s.delete(row)
    calls = []
    real_score = gate.score

    def spy(base_spec, adapters, suites):
        calls.append({k: [x.name for x in v] for k, v in suites.items()})
        return real_score(base_spec, adapters, suites)

    import services.evaluator.backfill as backfill
    from services.monitor.health import check_health

    monkeypatch.setattr(backfill, "score", spy)
    with session_scope() as s:  # champion.moved -> monitor.health -> scores.wanted -> evaluator
        registry.promote(s, version_id=v2, actor="test", reason="by hand", force=True)
    with session_scope() as s:
        again = s.exec(select(SuiteResult).where(SuiteResult.subject == f"v{v1}",
                                                 SuiteResult.suite_hash == retention.suite_hash)).one()
        assert again.items["item_id"] == retention.items["item_id"]  # the same items, scored for v1
        suites_of_v1 = {r.suite for r in s.exec(select(SuiteResult).where(SuiteResult.subject == f"v{v1}"))}
    assert len(calls) == 1 and "retention" in calls[0]["earlier"] and "new" not in calls[0]["earlier"], calls
    assert "new" not in suites_of_v1  # the per-increment slice is never backfilled
    with session_scope() as s:  # once scored it is cached: another health check scores nothing
        check_health(s)
    assert len(calls) == 1


def test_policy_check_says_which_suites_cannot_detect_their_margin(line, medqa_env, tmp_path):
    from typer.testing import CliRunner

    from services.cli import app

    ok = CliRunner().invoke(app, ["policy", "check", "--json"])  # the loose test policy: 50% margins
    assert ok.exit_code == 0, ok.output
    sizes = {g["metric"]: g for g in json.loads(ok.output)["guards"]}
    assert sizes["ppl_retention"]["status"] == "ok" and sizes["ppl_retention"]["measured_version"] == line.info["v1"]
    strict = tmp_path / "strict.toml"
    strict.write_text('[metrics.ppl_retention]\ndirection = "lower"\nmargin_rel = 0.00001\n'
                      '[metrics.pubmedqa_f1]\ndirection = "higher"\nmin = 0.0\n')
    medqa_env(policy_file=str(strict))
    bad = CliRunner().invoke(app, ["policy", "check", "--json"])
    assert bad.exit_code == 1, bad.output
    sizes = {g["metric"]: g for g in json.loads(bad.output)["guards"]}
    retention = sizes["ppl_retention"]
    assert retention["status"] == "too small" and retention["needed_items"] > retention["configured_items"]
    assert retention["detectable"] > 0.00001
    assert sizes["pubmedqa_f1"]["status"] == "no margin"
    table = CliRunner().invoke(app, ["policy", "check"])
    assert table.exit_code == 1 and "TOO SMALL" in table.output
    strict.write_text('[metrics.ppl_retention]\ndirection = "lower"\nmargin = 0.1\n')
    broken = CliRunner().invoke(app, ["policy", "check"])
    assert broken.exit_code != 0 and "margin_rel" in broken.output
