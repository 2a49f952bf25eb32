"""The gate's paired statistics against direct computations on fixed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.stats import (
    mcnemar_exact,
    minimum_detectable_effect,
    non_inferior,
    paired_bootstrap,
    perplexity_interval,
    superior,
)


def test_mcnemar_is_the_exact_binomial_on_discordant_pairs():
    # 1 item only the candidate gets right, 5 only the champion, 2 concordant (ignored):
    # p = 2 * P(X <= 1) with X ~ Bin(6, 1/2)
    candidate = [1, 0, 0, 0, 0, 0, 1, 0]
    champion = [0, 1, 1, 1, 1, 1, 1, 0]
    assert mcnemar_exact(candidate, champion) == pytest.approx(2 * (1 + 6) / 64)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0


def test_the_bootstrap_interval_matches_the_normal_interval_of_the_paired_mean():
    rng = np.random.default_rng(7)
    shared = rng.normal(0.4, 0.2, 400)  # item difficulty, common to both models
    champion = shared + rng.normal(0, 0.02, 400)
    candidate = shared + 0.01 + rng.normal(0, 0.02, 400)
    interval = paired_bootstrap(candidate, champion, seed=3)
    diffs = candidate - champion
    half = 1.96 * diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert interval.estimate == pytest.approx(diffs.mean())
    assert interval.low == pytest.approx(diffs.mean() - half, abs=0.15 * half)
    assert interval.high == pytest.approx(diffs.mean() + half, abs=0.15 * half)
    # Pairing is what makes a 0.01 gain visible: unpaired, the item spread (0.2) would swamp it.
    assert superior(interval, higher_is_better=True)
    assert interval.high - interval.low < 0.01


def test_the_perplexity_interval_is_on_token_weighted_nll():
    tokens = [10, 200, 30, 60]
    champ_nll = [25.0, 400.0, 66.0, 130.0]
    cand_nll = [24.0, 390.0, 66.0, 125.0]
    interval = perplexity_interval(cand_nll, champ_nll, tokens, seed=1)
    direct = sum(cand_nll) / sum(tokens) - sum(champ_nll) / sum(tokens)  # log-ppl difference
    assert interval.estimate == pytest.approx(direct)
    assert math.exp(interval.estimate) - 1 == pytest.approx(math.exp(direct) - 1)  # relative ppl change
    assert interval.low <= interval.estimate <= interval.high < 0  # better on every item: lower NLL


def test_a_one_item_drop_on_16_items_is_not_significant_and_the_suite_is_too_small_for_5_points():
    champion = [1] * 10 + [0] * 6
    candidate = list(champion)
    for i in (0, 1, 2):  # three items only the champion gets right
        candidate[i] = 0
    for i in (10, 11):  # two only the candidate gets right: net one item, -6.25 points
        candidate[i] = 1
    interval = paired_bootstrap(candidate, champion, seed=0)
    assert interval.estimate == pytest.approx(-1 / 16)
    assert mcnemar_exact(candidate, champion) == 1.0  # not significant
    assert interval.low < -0.05 < interval.high  # neither a proven regression nor non-inferior at 5 points
    assert not non_inferior(interval, 0.05, higher_is_better=True)
    mde = minimum_detectable_effect(np.subtract(candidate, champion))
    assert mde > 0.25  # 16 items cannot see anything near a 5-point change


def test_minimum_detectable_effect_is_about_2_8_standard_errors():
    diffs = np.random.default_rng(0).normal(0, 1, 100)
    se = diffs.std(ddof=1) / 10
    assert minimum_detectable_effect(diffs) == pytest.approx(2.8 * se, rel=0.01)
    assert minimum_detectable_effect([0.5]) == math.inf


def test_non_inferiority_reads_the_worse_end_for_both_directions():
    from shared.stats import Interval

    lower_better = Interval(estimate=0.01, low=-0.02, high=0.04, confidence=0.95, n_items=50)
    assert non_inferior(lower_better, 0.05, higher_is_better=False)  # up to +0.04 worse: within 0.05
    assert not non_inferior(lower_better, 0.03, higher_is_better=False)
    higher_better = Interval(estimate=-0.01, low=-0.04, high=0.02, confidence=0.95, n_items=50)
    assert non_inferior(higher_better, 0.05, higher_is_better=True)
    assert not superior(higher_better, higher_is_better=True)


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no items"):
        mcnemar_exact([], [])
