"""Paired statistics for comparing two models on the same items (the gate's arithmetic).

Every function takes per-item values of candidate and champion measured on the *same* items, in the
same order, and returns an estimate of the difference (candidate - champion) with a confidence
interval. A guard is then a non-inferiority test (the interval's worse end must clear the margin);
a target may be a superiority test (the interval must exclude zero on the better side).

- perplexity: per-item summed NLL and token counts; the statistic is the token-weighted mean NLL,
  so long texts weigh as much as their tokens (exp of it is the suite's perplexity).
- accuracy: per-item 0/1; exact McNemar on the discordant pairs, and a paired bootstrap interval.
- any other per-item score (ROUGE, reading grade): a paired bootstrap of the mean difference.

The bootstrap resamples items (with replacement) jointly for both models, so the pairing is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

DEFAULT_RESAMPLES = 4000
Values = Sequence[float] | np.ndarray  # per-item values, in item order


@dataclass(frozen=True)
class Interval:
    estimate: float  # candidate - champion, in the metric's own unit
    low: float
    high: float
    confidence: float
    n_items: int

    def __str__(self) -> str:
        return f"{self.estimate:+.4g} [{self.low:+.4g}, {self.high:+.4g}]"


def paired_bootstrap(candidate: Values, champion: Values, *,
                     statistic: Callable[[np.ndarray, np.ndarray], float] | None = None,
                     weights: Values | None = None, confidence: float = 0.95,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """Percentile interval of statistic(candidate) - statistic(champion) over item resamples.

    The default statistic is the (optionally `weights`-weighted) mean."""
    a, b = _paired_arrays(candidate, champion)
    w = np.ones(len(a)) if weights is None else np.asarray(weights, dtype=float)
    if len(w) != len(a):
        raise ValueError(f"{len(w)} weights for {len(a)} items")

    def difference(idx: np.ndarray) -> float:
        if statistic is not None:
            return statistic(a[idx], w[idx]) - statistic(b[idx], w[idx])
        return float(np.average(a[idx] - b[idx], weights=w[idx]))

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(a), size=(resamples, len(a)))
    diffs = np.array([difference(row) for row in draws])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return Interval(difference(np.arange(len(a))), float(low), float(high), confidence, len(a))


def mean_interval(values: Values, *, weights: Values | None = None, confidence: float = 0.95,
                  resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of one model's (weighted) mean over its items."""
    return paired_bootstrap(values, np.zeros(len(values)), weights=weights, confidence=confidence,
                            resamples=resamples, seed=seed)


def statistic_interval(n_items: int, statistic: Callable[[np.ndarray], float], *, confidence: float = 0.95,
                       resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of one model's statistic that is not a mean of per-item values
    (macro-F1): statistic(item indices) over resamples of the items, with replacement."""
    if n_items < 1:
        raise ValueError("an interval needs at least one item")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(row) for row in rng.integers(0, n_items, size=(resamples, n_items))])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return Interval(statistic(np.arange(n_items)), float(low), float(high), confidence, n_items)


def perplexity_interval(cand_nll: Values, champ_nll: Values, tokens: Values, *,
                        confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """Difference of token-weighted mean NLL per token (log-perplexity; negative = candidate better).
    `*_nll` are per-item NLL sums over each item's `tokens` scored tokens."""
    t = np.asarray(tokens, dtype=float)
    a, b = _paired_arrays(cand_nll, champ_nll)
    # Per-token NLL per item, weighted by tokens, is the token-weighted mean over the suite.
    return paired_bootstrap(a / t, b / t, weights=t, confidence=confidence, resamples=resamples, seed=seed)


def mcnemar_exact(candidate_correct: Values, champion_correct: Values) -> float:
    """Two-sided exact McNemar p-value: a binomial test on the discordant pairs."""
    a, b = _paired_arrays(candidate_correct, champion_correct)
    only_candidate = int(np.sum((a == 1) & (b == 0)))
    only_champion = int(np.sum((a == 0) & (b == 1)))
    n = only_candidate + only_champion
    if n == 0:
        return 1.0
    return float(scipy_stats.binomtest(only_candidate, n, 0.5).pvalue)


def minimum_detectable_effect(differences: Values, *, confidence: float = 0.95,
                              power: float = 0.8, sd: float | None = None) -> float:
    """The smallest true mean difference a two-sided test at `confidence` finds with `power`, from the
    per-item paired differences' spread (or a given `sd`): (z_{1-a/2} + z_power) * sd / sqrt(n).
    At 95% and 80% power that is about 2.8 standard errors."""
    n = len(differences)
    if n < 2:
        return math.inf
    spread = float(np.std(np.asarray(differences, dtype=float), ddof=1)) if sd is None else sd
    z = scipy_stats.norm.ppf(1 - (1 - confidence) / 2) + scipy_stats.norm.ppf(power)
    return float(z * spread / math.sqrt(n))


def non_inferior(interval: Interval, margin: float, *, higher_is_better: bool) -> bool:
    """True when the interval's worse end is no worse than `margin` (a positive number of units)."""
    worse_end = interval.low if higher_is_better else -interval.high
    return worse_end >= -margin


def superior(interval: Interval, *, higher_is_better: bool) -> bool:
    """True when the whole interval lies on the better side of zero."""
    return interval.low > 0 if higher_is_better else interval.high < 0


def _paired_arrays(candidate: Values, champion: Values) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(candidate, dtype=float), np.asarray(champion, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be two lists of one length, got {a.shape} and {b.shape}")
    if len(a) == 0:
        raise ValueError("no items to compare")
    return a, b


# --- per-item series of stored suite results (shared/tables.SuiteResult.items) ------------------------

def paired_series(metric: str) -> tuple[str, str] | None:
    """(suite name, per-item series) a metric is the mean of, or None when it has no per-item form
    (macro-F1, corpus BLEU). Perplexity metrics map to the series "nll" (with "tokens")."""
    if metric.startswith("ppl_"):
        return metric.removeprefix("ppl_"), "nll"
    suite, _, series = metric.partition("_")
    per_item = {"pubmedqa": {"acc": "correct", "rouge1": "rouge1", "rouge2": "rouge2", "rougeL": "rougeL"},
                "consumer": {"rouge1": "rouge1", "rouge2": "rouge2", "rougeL": "rougeL", "fk_grade": "fk_grade"},
                "grounding": {"abstention_acc": "abstained_ok", "citation_precision": "precision"}}
    name = per_item.get(suite, {}).get(series)
    return (suite, name) if name else None


def aligned(candidate: dict, baseline: dict, series: str) -> list[tuple[str, float, float, float]]:
    """(item id, candidate value, baseline value, weight) for every item both scored, in candidate
    order; `candidate` and `baseline` are per-item series keyed as SuiteResult.items. The weight is
    the scored-token count for perplexity (series "nll"), else 1."""
    base_at = {item: i for i, item in enumerate(baseline.get("item_id", []))}
    out = []
    for i, item in enumerate(candidate.get("item_id", [])):
        j = base_at.get(item)
        if j is None:
            continue
        a, b = candidate[series][i], baseline[series][j]
        weight = candidate["tokens"][i] if series == "nll" else 1
        if a is not None and b is not None and weight:
            out.append((item, float(a), float(b), float(weight)))
    return out


def metric_interval(metric: str, candidate: dict, baseline: dict, *,
                    confidence: float = 0.95) -> tuple[Interval, float | None] | None:
    """The paired interval of candidate - baseline for `metric` over the items both scored, and the
    exact McNemar p-value for accuracy; None when the metric has no per-item form or no common items.
    Perplexity's interval is on the mean NLL per token (log-perplexity): math.expm1 of it is relative."""
    source = paired_series(metric)
    if source is None:
        return None
    series = source[1]
    pairs = aligned(candidate, baseline, series)
    if not pairs:
        return None
    a = [p[1] for p in pairs]
    b = [p[2] for p in pairs]
    w = [p[3] for p in pairs]
    if series == "nll":
        return perplexity_interval(a, b, w, confidence=confidence), None
    p_value = mcnemar_exact(a, b) if series == "correct" else None
    return paired_bootstrap(a, b, confidence=confidence), p_value
