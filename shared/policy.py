"""The written blessing policy: load it, and judge candidate metrics against the champion's."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

_RULE_KEYS = {"direction", "max", "min", "max_rel_regression", "max_abs_regression", "min_rel_improvement"}


class PolicyError(ValueError):
    """The policy file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Policy:
    target: str
    rules: dict[str, dict]

    @classmethod
    def load(cls, path: Path) -> Policy:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise PolicyError(f"cannot read policy {path}: {exc}") from None
        rules = data.get("metrics") or {}
        if not rules:
            raise PolicyError(f"policy {path} has no [metrics.*] tables")
        for name, rule in rules.items():
            unknown = set(rule) - _RULE_KEYS
            if unknown:
                raise PolicyError(f"policy {path}: metrics.{name} has unknown keys {sorted(unknown)}")
            if rule.get("direction") not in ("lower", "higher"):
                raise PolicyError(f"policy {path}: metrics.{name}.direction must be 'lower' or 'higher'")
        target = data.get("target", "")
        if target and target not in rules:
            raise PolicyError(f"policy {path}: target {target!r} is not among its metrics")
        return cls(target=target, rules=rules)

    def judge(self, candidate: dict[str, float], baseline: dict[str, float] | None,
              *, has_champion: bool) -> tuple[bool, list[str]]:
        """Return (passed, reasons). Reasons list every check, passed or failed, so the stored
        decision explains itself."""
        reasons: list[str] = []
        ok = True
        for name, rule in self.rules.items():
            if name not in candidate:
                if baseline is not None and name not in baseline:  # its suite is not configured here
                    reasons.append(f"skip {name}: not measured (its suite is not configured)")
                else:
                    ok = False
                    reasons.append(f"FAIL {name}: not measured")
                continue
            value, lower = candidate[name], rule["direction"] == "lower"
            for bound, too_far in (("max", value > rule.get("max", float("inf"))),
                                   ("min", value < rule.get("min", float("-inf")))):
                if bound in rule:
                    ok &= not too_far
                    reasons.append(f"{'FAIL' if too_far else 'ok'} {name}={value:.4g} {bound} {rule[bound]}")
            if not has_champion or baseline is None or name not in baseline:
                continue  # no champion: only the value bounds apply (the base model's metrics are kept for reference)
            base = baseline[name]
            worse_by = (value - base) if lower else (base - value)  # > 0 means the candidate is worse
            rel = worse_by / abs(base) if base else 0.0
            if "max_rel_regression" in rule:
                bad = rel > rule["max_rel_regression"]
                ok &= not bad
                trend = f"regresses {rel:.2%}" if rel > 0 else f"improves {-rel:.2%}"
                reasons.append(f"{'FAIL' if bad else 'ok'} {name} {trend} vs champion "
                               f"(allowed regression {rule['max_rel_regression']:.2%})")
            if "max_abs_regression" in rule:
                bad = worse_by > rule["max_abs_regression"]
                ok &= not bad
                reasons.append(f"{'FAIL' if bad else 'ok'} {name} regression {worse_by:.4g} "
                               f"(allowed {rule['max_abs_regression']})")
            if name == self.target and "min_rel_improvement" in rule:
                bad = -rel <= rule["min_rel_improvement"]
                ok &= not bad
                reasons.append(f"{'FAIL' if bad else 'ok'} target {name} improves {-rel:+.2%} vs champion "
                               f"(required > {rule['min_rel_improvement']:.2%})")
        return ok, reasons
