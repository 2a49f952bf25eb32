"""PubMedQA metrics over yes/no/maybe decisions: macro-F1 (with a bootstrap interval) and expected
calibration error.

The decisions themselves (scoring by answer likelihood, and calibration) are the shared LM runtime's
(shared/lm/decisions.py), so the QA API's verdict and the evaluator's suite answer alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.stats import Interval, statistic_interval


def macro_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Mean F1 over the labels that occur in gold or predictions."""
    labels = sorted(set(gold) | set(pred))
    f1s = []
    for label in labels:
        tp = sum(g == p == label for g, p in zip(gold, pred, strict=True))
        fp = sum(p == label != g for g, p in zip(gold, pred, strict=True))
        fn = sum(g == label != p for g, p in zip(gold, pred, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s) if f1s else 0.0


def macro_f1_interval(gold: Sequence[str], pred: Sequence[str], *, confidence: float = 0.95) -> Interval:
    """macro_f1 with a percentile bootstrap interval over the items (resampled with replacement)."""
    return statistic_interval(len(gold), lambda idx: macro_f1([gold[i] for i in idx], [pred[i] for i in idx]),
                              confidence=confidence)


def expected_calibration_error(probabilities: Sequence[Sequence[float]], gold: Sequence[int], *,
                               bins: int = 10) -> float:
    """ECE: over equal-width bins of the top probability, |accuracy - mean confidence| weighted by bin size."""
    buckets: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for row, g in zip(probabilities, gold, strict=True):
        top = max(range(len(row)), key=row.__getitem__)
        buckets[min(bins - 1, int(row[top] * bins))].append((row[top], top == g))
    n = len(gold)
    return sum(len(b) / n * abs(sum(c for _, c in b) / len(b) - sum(p for p, _ in b) / len(b)) for b in buckets if b)
