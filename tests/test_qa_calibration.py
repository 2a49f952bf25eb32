"""Answer calibration: a label's prior must not decide the answer (shared/lm/decisions.py, and the
evaluator's metrics in services/evaluator/qa.py)."""

from __future__ import annotations

import math

import pytest
from conftest import TINY_GPT2

import shared.lm.decisions as decisions
from services.evaluator.qa import expected_calibration_error, macro_f1, macro_f1_interval
from shared.lm.base_model import load_base_model
from shared.lm.decisions import (
    CONTENT_FREE,
    DECISIONS,
    calibrate,
    decision_scores,
    prior_offsets,
    softmax,
    verdict,
)


def biased_scores(gold: list[int], *, bias: tuple[float, float, float] = (0.0, 3.0, 0.0),
                  signal: float = 2.5) -> list[list[float]]:
    """Log-scores that favour the gold label by `signal`, under a label bias much larger than the signal."""
    return [[bias[k] + (signal if k == g else 0.0) for k in range(3)] for g in gold]


def argmaxes(rows: list[list[float]]) -> list[int]:
    return [max(range(len(r)), key=r.__getitem__) for r in rows]


GOLD = [0] * 11 + [1] * 7 + [2] * 2  # yes 55%, no 35%, maybe 10%, as PubMedQA's labels


def test_raw_scores_follow_the_bias_and_calibration_recovers_the_evidence():
    raw = biased_scores(GOLD)
    assert argmaxes(calibrate(raw, "none")) == [1] * len(GOLD)  # the bias decides every answer
    prior = [0.55, 0.35, 0.10]
    assert argmaxes(calibrate(raw, "prior", prior=prior)) == GOLD
    # Content-free inputs score the bias alone: dividing it out leaves the evidence.
    content_free = [[0.0, 3.0, 0.0]] * len(CONTENT_FREE)
    assert argmaxes(calibrate(raw, "contextual", content_free=content_free)) == GOLD


def test_prior_offsets_match_the_prior_and_calibrated_rows_are_log_probabilities():
    raw = biased_scores(GOLD, signal=0.5)
    prior = [0.55, 0.35, 0.10]
    offsets = prior_offsets(raw, prior)
    shifted = [softmax([v + b for v, b in zip(row, offsets, strict=True)]) for row in raw]
    mean = [sum(col) / len(shifted) for col in zip(*shifted, strict=True)]
    assert mean == pytest.approx(prior, abs=1e-4)
    for row in calibrate(raw, "prior", prior=prior):
        assert sum(math.exp(v) for v in row) == pytest.approx(1.0)


def test_calibration_names_what_it_is_missing():
    with pytest.raises(ValueError, match="unknown calibration 'pmi'"):
        calibrate([[0.0, 0.0, 0.0]], "pmi")
    with pytest.raises(ValueError, match="content-free"):
        calibrate([[0.0, 0.0, 0.0]], "contextual")
    with pytest.raises(ValueError, match="one prior share per label"):
        calibrate([[0.0, 0.0, 0.0]], "prior", prior=[0.5, 0.5])


def test_expected_calibration_error_on_a_fixed_example():
    # Two items at confidence 0.9 (one right), two at 0.6 (both right): |0.5-0.9|*0.5 + |1-0.6|*0.5 = 0.4.
    probs = [[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1]]
    assert expected_calibration_error(probs, [0, 1, 0, 1]) == pytest.approx(0.4)
    assert expected_calibration_error([[1.0, 0.0, 0.0]], [0]) == pytest.approx(0.0)


def test_a_tiny_model_with_biased_answers_gets_the_training_prior_instead(model_cache):
    """The tiny GPT-2's raw decision scores barely depend on the item, and favour one label for no reason.
    Prior calibration replaces that bias with the training shares, reading no gold label: its mean
    probabilities are the prior, and where the scores carry no evidence the answer is the prior's
    commonest label."""
    model, tok = load_base_model(TINY_GPT2, model_cache)
    items = [(f"Does treatment {i} help patients with condition {i % 5}?", f"In {20 + i} patients we saw {i}.")
             for i in range(20)]
    raw = decision_scores(model, tok, items, batch_size=8)
    raw_probs = [softmax(r) for r in raw]
    raw_mean = [sum(col) / len(raw_probs) for col in zip(*raw_probs, strict=True)]
    prior = [0.1, 0.3, 0.6]  # a prior unlike the tiny model's own bias
    assert max(abs(m - p) for m, p in zip(raw_mean, prior, strict=True)) > 0.1
    calibrated = calibrate(raw, "prior", prior=prior)
    mean = [sum(math.exp(v) for v in col) / len(calibrated) for col in zip(*calibrated, strict=True)]
    assert mean == pytest.approx(prior, abs=1e-3)
    assert argmaxes(calibrated).count(DECISIONS.index("maybe")) >= 15
    content_free = decision_scores(model, tok, [(c, c or None) for c in CONTENT_FREE], batch_size=3)
    contextual = calibrate(raw, "contextual", content_free=content_free)
    assert len(contextual) == len(items) and contextual != calibrate(raw, "none")


def test_macro_f1_interval_is_a_bootstrap_around_the_macro_f1():
    gold = ["yes"] * 6 + ["no"] * 3 + ["maybe"]
    pred = ["yes"] * 5 + ["no"] * 2 + ["no"] * 2 + ["yes"]
    f1 = macro_f1_interval(gold, pred)
    assert f1.estimate == pytest.approx(macro_f1(gold, pred)) and f1.n_items == 10
    assert 0 <= f1.low < f1.estimate < f1.high <= 1
    perfect = macro_f1_interval(gold, gold)  # every resample is perfect too
    assert (perfect.low, perfect.estimate, perfect.high) == (1.0, 1.0, 1.0)


def stub_scores(monkeypatch: pytest.MonkeyPatch, raw: list[list[float]]) -> list[tuple[str, str | None]]:
    """Makes decision_scores answer `raw`, one row per call, in order; returns what it was asked."""
    rows = iter(raw)
    asked: list[tuple[str, str | None]] = []

    def scores(net, tokenizer, items, *, batch_size=8, max_length=512):  # type: ignore[no-untyped-def]
        asked.extend(items)
        return [next(rows) for _ in items]

    monkeypatch.setattr(decisions, "decision_scores", scores)
    return asked


def test_verdict_offsets_move_the_decision_predictably(monkeypatch):
    raw = [-1.0, -0.5, -2.0]  # "no" by 0.5 nats over "yes"
    asked = stub_scores(monkeypatch, [raw] * 4)
    decision, probs = verdict(None, None, "Does it help?", "It helped.")
    assert asked == [("Does it help?", "It helped.")]
    assert decision == "no" and probs == pytest.approx(softmax(raw)) and sum(probs) == pytest.approx(1.0)
    # A "yes" offset above the 0.5-nat gap turns the answer; one below it does not.
    assert verdict(None, None, "q", None, offsets=[0.6, 0.0, 0.0])[0] == "yes"
    assert verdict(None, None, "q", None, offsets=[0.4, 0.0, 0.0])[0] == "no"
    # The same offset on every label changes nothing: only differences between offsets count.
    decision, shifted = verdict(None, None, "q", None, offsets=[5.0, 5.0, 5.0])
    assert decision == "no" and shifted == pytest.approx(softmax(raw)) and sum(shifted) == pytest.approx(1.0)


def test_verdict_with_fitted_offsets_answers_as_the_evaluators_prior_calibration(monkeypatch):
    raw = biased_scores(GOLD)  # the bias decides every raw answer; the fitted offsets undo it
    prior = [0.55, 0.35, 0.10]
    offsets = prior_offsets(calibrate(raw, "none"), prior)  # what the evaluator fits on the suite's items
    stub_scores(monkeypatch, raw)
    answers = [verdict(None, None, f"question {i}", None, offsets=offsets) for i in range(len(raw))]
    expected = calibrate(raw, "prior", prior=prior)
    assert [DECISIONS.index(d) for d, _ in answers] == argmaxes(expected) == GOLD
    for (_, probs), row in zip(answers, expected, strict=True):
        assert probs == pytest.approx([math.exp(v) for v in row], abs=1e-9)


def test_verdict_rejects_offsets_of_the_wrong_length(monkeypatch):
    stub_scores(monkeypatch, [[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="one log-offset per decision"):
        verdict(None, None, "q", None, offsets=[0.0, 1.0])


def test_verdict_on_the_tiny_model_matches_batched_scoring(model_cache):
    model, tok = load_base_model(TINY_GPT2, model_cache)
    question, context = "Does aspirin reduce the risk of stroke?", "In 120 patients aspirin reduced strokes by 20%."
    decision, probs = verdict(model, tok, question, context)
    raw = decision_scores(model, tok, [(question, context)], batch_size=1)[0]
    assert decision in DECISIONS and sum(probs) == pytest.approx(1.0)
    assert probs == pytest.approx(softmax(raw), abs=1e-6) and decision == DECISIONS[argmaxes([raw])[0]]


def test_the_benchs_argmax_share_variant_answers_each_label_as_often_as_the_prior():
    """bench/calibration.py's "prior_argmax": where the library's prior leaves a label that is never
    ranked first unanswered (it matches mean probabilities), matching answered shares answers it."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "calibration.py"
    spec = importlib.util.spec_from_file_location("bench_calibration", path)
    bench = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    # 40 items, "maybe" always the runner-up by a varying margin, "yes"/"no" by a noisy signal.
    raw = [[0.3 * (k % 7), 0.3 * ((k * 3) % 5), -0.2 - 0.05 * k] for k in range(40)]
    prior = [0.55, 0.35, 0.10]
    soft = argmaxes(calibrate(raw, "prior", prior=prior))
    hard = argmaxes(bench.argmax_share_calibration(raw, prior))
    assert soft.count(2) < 4  # mean probabilities matched, yet "maybe" answered less than 10% of the time
    assert [hard.count(k) for k in range(3)] == pytest.approx([22, 14, 4], abs=1)
