"""Apply the written policy to two models' per-item scores on the same suites.

Each guarded metric is a paired comparison of candidate and champion (or the base model before
there is a champion) on the same items:
  - perplexity: a paired bootstrap of the token-weighted mean NLL, shown as a relative change;
  - accuracy: a paired bootstrap of the mean, with the exact McNemar p-value beside it;
  - ROUGE, reading grade: a paired bootstrap of the mean.
A guard passes when its interval's worse end clears the margin (non-inferior), and fails when the
whole interval lies beyond it (inferior). An interval that straddles the margin is inconclusive: the
guard then fails when the estimate itself is beyond the margin, and passes (saying it is not shown)
when it is not. On a suite sized for its margin (detectable effect <= margin) a candidate no worse
than the champion is failed with probability below 0.3% (its estimate would have to be 2.8 standard
errors out), while a regression of twice the margin is failed more than 99% of the time; on a
smaller suite the reason says so. The target metric must in addition be significantly better when
the policy's target_test is "superiority".

Every guard also states the suite's minimum detectable effect, (z_conf + z_power) x the measured
standard error, and says loudly when the margin is below it: such a guard cannot tell a regression
of the size it is meant to catch from noise, so the suite needs more items (or a wider margin).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from scipy import stats as scipy_stats

from services.evaluator.suites import SuiteScores
from shared.policy import ExpertReview, Policy
from shared.stats import Interval, aligned, mean_interval, metric_interval, non_inferior, paired_series, superior


@dataclass
class Guard:
    """One metric's verdict; `estimate`, `low`, `high`, `margin` and `detectable` are in `unit`."""

    metric: str
    passed: bool
    verdict: str  # non-inferior | inferior | inconclusive | superior | not superior | bounds | skipped | ...
    reason: str
    unit: str = ""  # "relative" (perplexity), else the metric's own unit
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    margin: float | None = None
    detectable: float | None = None  # minimum detectable effect at the policy's confidence and power
    n_items: int = 0
    p_value: float | None = None
    underpowered: bool = False

    def to_json(self) -> dict[str, Any]:
        # NumPy scalars (from the statistics) become plain JSON numbers and booleans.
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in asdict(self).items()}


@dataclass
class Judgement:
    passed: bool
    guards: list[Guard]

    @property
    def reasons(self) -> list[str]:
        return [g.reason for g in self.guards]


def judge(policy: Policy, candidate: dict[str, SuiteScores], baseline: dict[str, SuiteScores]) -> Judgement:
    """Every metric of the policy, judged; reasons list every check, passed or failed."""
    cand_metrics = _flat(candidate)
    base_metrics = _flat(baseline)
    guards: list[Guard] = []
    for name in policy.rules:
        if name not in cand_metrics:
            if name not in base_metrics:  # its suite is not configured here
                guards.append(Guard(name, True, "skipped", f"skip {name}: not measured (its suite is not configured)"))
            else:
                guards.append(Guard(name, False, "not measured", f"FAIL {name}: not measured"))
            continue
        guards.extend(_bounds(policy, name, cand_metrics[name]))
        if policy.margin(name) is not None or name == policy.target:
            guards.append(_paired(policy, name, candidate, baseline))
    return Judgement(all(g.passed for g in guards), guards)


def _flat(scores: dict[str, SuiteScores]) -> dict[str, float]:
    return {k: v for s in scores.values() for k, v in s.metrics.items()}


def _bounds(policy: Policy, name: str, value: float) -> list[Guard]:
    rule, out = policy.rules[name], []
    for bound, too_far in (("max", lambda b: value > b), ("min", lambda b: value < b)):
        if bound in rule:
            bad = too_far(rule[bound])
            text = f"{'FAIL' if bad else 'ok'} {name}={value:.4g} {bound} {rule[bound]}"
            out.append(Guard(name, not bad, "bounds", text))
    return out


def _paired(policy: Policy, name: str, candidate: dict[str, SuiteScores],
            baseline: dict[str, SuiteScores]) -> Guard:
    source = paired_series(name)
    if source is None:
        return Guard(name, False, "not comparable",
                     f"FAIL {name}: has no per-item values, so it cannot be compared item by item; "
                     "give it only max/min bounds in the policy")
    suite = source[0]
    if suite not in baseline:
        return Guard(name, False, "not measured", f"FAIL {name}: the champion has no result on this suite")
    higher = policy.rules[name]["direction"] == "higher"
    confidence = policy.confidence_for(name)
    is_target = name == policy.target
    relative = name.startswith("ppl_")
    margin = policy.margin(name)
    if margin is None:  # a target without a margin: only superiority is asked
        margin = 0.0
    measured = metric_interval(name, candidate[suite].items, baseline[suite].items, confidence=confidence)
    if measured is None:
        return Guard(name, False, "not measured", f"FAIL {name}: no items in common with the champion's result")
    interval, p_value = measured
    log_margin = math.log1p(margin) if relative else margin  # the interval of perplexity is in log units
    z = scipy_stats.norm.ppf(1 - (1 - confidence) / 2)
    se = (interval.high - interval.low) / (2 * z)
    detectable = float((z + scipy_stats.norm.ppf(policy.power)) * se)
    g = Guard(name, False, "", "", "relative" if relative else "", *_shown(interval, relative),
              margin=margin, detectable=_shown_width(detectable, relative), n_items=interval.n_items, p_value=p_value)
    if is_target and policy.target_test == "superiority":  # no margin: any significant gain passes
        g.passed = bool(superior(interval, higher_is_better=higher))
        g.verdict = "superior" if g.passed else "not superior"
    else:
        shown_ok = bool(non_inferior(interval, log_margin, higher_is_better=higher))
        best_end = interval.high if higher else -interval.low
        change = interval.estimate if higher else -interval.estimate  # < 0: the candidate is worse
        if shown_ok:
            g.verdict, g.passed = "non-inferior", True
        elif best_end < -log_margin:
            g.verdict, g.passed = "inferior", False
        else:  # the interval straddles the margin: the estimate decides, and the reason says so
            g.verdict, g.passed = "inconclusive", bool(change >= -log_margin)
        g.underpowered = bool(detectable > log_margin)
    g.reason = _reason(g, higher, confidence, policy.power, is_target, interval)
    return g


def _shown(interval: Interval, relative: bool) -> tuple[float, float, float]:
    if relative:  # a difference of mean log-likelihood is a ratio of perplexities
        return math.expm1(interval.estimate), math.expm1(interval.low), math.expm1(interval.high)
    return interval.estimate, interval.low, interval.high


def _shown_width(width: float, relative: bool) -> float:
    return math.expm1(width) if relative else width


def _reason(g: Guard, higher: bool, confidence: float, power: float, is_target: bool, interval: Interval) -> str:
    fmt = (lambda x: f"{x:+.2%}") if (g.unit == "relative") else (lambda x: f"{x:+.4g}")
    margin = g.margin or 0.0
    margin_shown = -margin if higher else margin  # the worst change allowed, signed
    zero_out = interval.low > 0 or interval.high < 0
    significance = ("not significant" if not zero_out
                    else ("significantly better" if (interval.low > 0) == higher else "significantly worse"))
    if g.p_value is not None:
        significance += f", McNemar p={g.p_value:.2g}"
    label = f"target {g.metric}" if is_target else g.metric
    verdict = g.verdict
    if verdict == "inconclusive":
        verdict += ", estimate within the margin" if g.passed else ", estimate beyond the margin"
    text = (f"{'ok' if g.passed else 'FAIL'} {label} {fmt(g.estimate)} [{fmt(g.low)}, {fmt(g.high)}] "
            f"vs margin {fmt(margin_shown)}: {verdict} ({significance}; {g.n_items} items, "
            f"{confidence:.0%} interval)")
    if g.underpowered:
        shown = f"{g.detectable:.2%}" if (g.unit == "relative") else f"{g.detectable:.3g}"
        allowed = f"{margin:.2%}" if (g.unit == "relative") else f"{margin:.3g}"
        text += (f"; SUITE TOO SMALL for this margin: {g.n_items} items detect {shown} at {power:.0%} power, "
                 f"margin {allowed}")
    return text


def item_differences(metric: str, candidate: SuiteScores, baseline: SuiteScores) -> list[tuple[str, float]]:
    """(item id, candidate - baseline) per item, the biggest wins first and the biggest losses last.
    Perplexity items differ by mean NLL per token."""
    source = paired_series(metric)
    if source is None:
        return []
    pairs = aligned(candidate.items, baseline.items, source[1])
    if source[1] == "nll":
        diffs = [(item, (a - b) / w) for item, a, b, w in pairs]
    else:
        diffs = [(item, a - b) for item, a, b, _ in pairs]
    lower_better = metric.startswith("ppl_") or metric.endswith("fk_grade")
    return sorted(diffs, key=lambda x: x[1] if lower_better else -x[1])


EXPERT_METRIC = "expert_win_rate"


def expert_guard(expert: ExpertReview, scores: list[float], confidence: float) -> Guard:
    """Blind pairwise expert reviews as a guard (shared/policy.ExpertReview): the candidate's win rate
    (1 win, 0.5 tie, 0 loss per rating) must be non-inferior to an even split, 0.5 - margin, judged like
    the paired guards; with fewer than min_reviews ratings it says so and passes (the caller waits for
    them when the policy asks)."""
    floor = 0.5 - expert.margin
    if len(scores) < expert.min_reviews:
        return Guard(EXPERT_METRIC, True, "not enough reviews",
                     f"skip {EXPERT_METRIC}: {len(scores)} blind expert reviews of the {expert.min_reviews} the "
                     "policy needs: not enough data, decided without expert review", n_items=len(scores))
    interval = mean_interval(scores, confidence=confidence)
    if interval.low >= floor:
        verdict, passed = "non-inferior", True
    elif interval.high < floor:
        verdict, passed = "inferior", False
    else:
        verdict, passed = "inconclusive", interval.estimate >= floor
    shown = verdict + (", estimate within the margin" if passed else ", estimate beyond the margin") \
        if verdict == "inconclusive" else verdict
    reason = (f"{'ok' if passed else 'FAIL'} {EXPERT_METRIC} {interval.estimate:.3f} [{interval.low:.3f}, "
              f"{interval.high:.3f}] vs floor {floor:.2f} (an even split less the margin {expert.margin:g}): {shown} "
              f"({len(scores)} blind reviews, {confidence:.0%} interval)")
    return Guard(EXPERT_METRIC, bool(passed), verdict, reason, estimate=interval.estimate, low=interval.low,
                 high=interval.high, margin=expert.margin, n_items=len(scores))
