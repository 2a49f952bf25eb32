"""Answer calibration: a label's prior must not decide the answer (services/evaluator/qa.py)."""

from __future__ import annotations

import math

import pytest
from conftest import TINY_GPT2

from services.evaluator.qa import (
    CONTENT_FREE,
    DECISIONS,
    calibrate,
    decision_scores,
    expected_calibration_error,
    macro_f1,
    macro_f1_interval,
    prior_offsets,
    softmax,
)
from shared.lm.base_model import load_base_model


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
