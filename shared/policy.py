"""The written blessing policy: what each metric must do, read from TOML and checked on load.

The file states, per metric, its direction, optional absolute bounds, and the non-inferiority margin
a candidate must clear against the champion on the same items; at the top, the confidence level, the
power suites are sized for, and whether the target must improve significantly or only not regress.
The arithmetic that applies it lives with the evaluator (services/evaluator/judge.py).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

_RULE_KEYS = {"direction", "max", "min", "margin", "margin_rel", "confidence"}
_TOP_KEYS = {"target", "target_test", "confidence", "power", "metrics", "expert_review"}
_EXPERT_KEYS = {"min_reviews", "margin", "wait"}
TARGET_TESTS = ("superiority", "non-inferiority")


@dataclass(frozen=True)
class ExpertReview:
    """Blind pairwise expert reviews of a candidate against the champion (shared/review.py).

    With at least `min_reviews` ratings, the candidate's win rate (a tie is half a win) must be
    non-inferior to an even split: its interval's low end at least 0.5 - `margin`, judged like every
    guard. `wait`: with fewer ratings, the decision waits for them (the version stays a candidate and
    the gate decides once they are in); otherwise the gate decides and says it decided without them."""

    min_reviews: int = 20
    margin: float = 0.10
    wait: bool = False


class PolicyError(ValueError):
    """The policy file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Policy:
    target: str
    rules: dict[str, dict]
    target_test: str = "superiority"
    confidence: float = 0.95
    power: float = 0.8
    expert: ExpertReview | None = None  # None: blind expert reviews play no part in the decision

    @classmethod
    def load(cls, path: Path) -> Policy:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise PolicyError(f"cannot read policy {path}: {exc}") from None
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise PolicyError(f"policy {path} has unknown top-level keys {sorted(unknown)}")
        rules = data.get("metrics") or {}
        if not rules:
            raise PolicyError(f"policy {path} has no [metrics.*] tables")
        for name, rule in rules.items():
            _check_rule(path, name, rule)
        target = data.get("target", "")
        if target and target not in rules:
            raise PolicyError(f"policy {path}: target {target!r} is not among its metrics")
        target_test = data.get("target_test", "superiority")
        if target_test not in TARGET_TESTS:
            raise PolicyError(f"policy {path}: target_test must be one of {list(TARGET_TESTS)}")
        confidence = _share(path, "confidence", data.get("confidence", 0.95))
        power = _share(path, "power", data.get("power", 0.8))
        expert = _expert(path, data["expert_review"]) if "expert_review" in data else None
        return cls(target=target, rules=rules, target_test=target_test, confidence=confidence, power=power,
                   expert=expert)

    def confidence_for(self, metric: str) -> float:
        return float(self.rules[metric].get("confidence", self.confidence))

    def margin(self, metric: str) -> float | None:
        """The non-inferiority margin, positive, in the metric's unit (a share for perplexity)."""
        rule = self.rules[metric]
        value = rule.get("margin_rel", rule.get("margin"))
        return None if value is None else float(value)


def _check_rule(path: Path, name: str, rule: dict) -> None:
    unknown = set(rule) - _RULE_KEYS
    if unknown:
        raise PolicyError(f"policy {path}: metrics.{name} has unknown keys {sorted(unknown)}")
    if rule.get("direction") not in ("lower", "higher"):
        raise PolicyError(f"policy {path}: metrics.{name}.direction must be 'lower' or 'higher'")
    if "margin" in rule and "margin_rel" in rule:
        raise PolicyError(f"policy {path}: metrics.{name} states both margin and margin_rel; keep one")
    # Perplexity is compared as a ratio (its log is the mean NLL the paired test runs on), so its
    # margin is a share; every other metric's margin is in its own unit.
    relative = name.startswith("ppl_")
    if ("margin" if relative else "margin_rel") in rule:
        want = "margin_rel (a share, e.g. 0.05)" if relative else "margin (in the metric's unit)"
        raise PolicyError(f"policy {path}: metrics.{name} takes {want}")
    for key in ("margin", "margin_rel"):
        if key in rule and not (isinstance(rule[key], int | float) and rule[key] >= 0):
            raise PolicyError(f"policy {path}: metrics.{name}.{key} must be a number >= 0")
    if "confidence" in rule:
        _share(path, f"metrics.{name}.confidence", rule["confidence"])


def _share(path: Path, key: str, value: object) -> float:
    if not isinstance(value, int | float) or not 0.5 <= value < 1:
        raise PolicyError(f"policy {path}: {key} must be a number in [0.5, 1)")
    return float(value)


def _expert(path: Path, table: object) -> ExpertReview:
    if not isinstance(table, dict):
        raise PolicyError(f"policy {path}: expert_review must be a table")
    unknown = set(table) - _EXPERT_KEYS
    if unknown:
        raise PolicyError(f"policy {path}: expert_review has unknown keys {sorted(unknown)}")
    n, margin, wait = table.get("min_reviews", 20), table.get("margin", 0.10), table.get("wait", False)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise PolicyError(f"policy {path}: expert_review.min_reviews must be an integer >= 1")
    if not isinstance(margin, int | float) or isinstance(margin, bool) or not 0 <= margin < 0.5:
        raise PolicyError(f"policy {path}: expert_review.margin must be a number in [0, 0.5)")
    if not isinstance(wait, bool):
        raise PolicyError(f"policy {path}: expert_review.wait must be true or false")
    return ExpertReview(min_reviews=n, margin=float(margin), wait=wait)
