"""Are the suites big enough for the policy's margins? (`medqa policy check`)

A guard can only hold a margin its suite can resolve. The smallest effect a paired test detects at
the policy's confidence and power is (z_conf + z_power) x the standard error of the paired
difference, and that standard error shrinks as 1/sqrt(items). The gate records, per guard, the
detectable effect it measured at its suite's size (Evaluation.guards); this scales the latest one to
the configured size and says how many items the margin needs. Without a measurement yet it says so
rather than guess the paired variance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from sqlmodel import Session, col, select

from shared.policy import Policy
from shared.settings import Settings
from shared.stats import paired_series
from shared.tables import Evaluation


@dataclass
class GuardSize:
    metric: str
    suite: str
    margin: float | None
    unit: str  # "relative" for perplexity (margin and detectable are shares), else the metric's unit
    configured_items: int
    measured_items: int | None = None  # where the detectable effect below was measured
    measured_version: int | None = None
    detectable: float | None = None  # at the configured size
    needed_items: int | None = None  # for the margin, at the same paired variance
    status: str = "not measured"  # ok | too small | not measured | no margin | not comparable

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def configured_items(settings: Settings, metric: str, suite: str) -> int:
    """Items `metric` is measured on with these settings (an upper bound where data is short)."""
    if suite == "pubmedqa" and metric != "pubmedqa_acc":  # generated answers: a subset of the items
        return min(settings.eval_qa_generate_items, settings.eval_qa_items)
    return {"new": settings.eval_max_texts, "retention": settings.eval_max_texts,
            "pubmedqa": settings.eval_qa_items, "consumer": settings.eval_consumer_items,
            "grounding": 2 * settings.eval_grounding_items}.get(suite, 0)


def check_sizes(session: Session, policy: Policy, settings: Settings) -> list[GuardSize]:
    latest = _latest_guards(session)
    out = []
    for metric in policy.rules:
        source = paired_series(metric)
        margin = policy.margin(metric)
        unit = "relative" if metric.startswith("ppl_") else ""
        if source is None:
            out.append(GuardSize(metric, "", margin, unit, 0, status="no margin" if margin is None
                                 else "not comparable"))
            continue
        size = GuardSize(metric, source[0], margin, unit, configured_items(settings, metric, source[0]))
        out.append(size)
        if margin is None:
            size.status = "no margin"
            continue
        measured = latest.get(metric)
        if measured is None or not size.configured_items:
            continue
        version, guard = measured
        size.measured_items, size.measured_version = guard["n_items"], version
        to_log = math.log1p if unit == "relative" else (lambda x: x)
        from_log = math.expm1 if unit == "relative" else (lambda x: x)
        at_measured = to_log(guard["detectable"])
        at_configured = at_measured * math.sqrt(guard["n_items"] / size.configured_items)
        size.detectable = from_log(at_configured)
        wanted = to_log(margin)
        size.needed_items = (math.ceil(guard["n_items"] * (at_measured / wanted) ** 2) if wanted > 0
                             else None)
        size.status = "ok" if at_configured <= wanted else "too small"
    return out


def _latest_guards(session: Session) -> dict[str, tuple[int, dict]]:
    """Metric -> (version id, its guard) from the most recent decision that compared it item by item."""
    found: dict[str, tuple[int, dict]] = {}
    for ev in session.exec(select(Evaluation).order_by(col(Evaluation.id).desc())):
        for guard in ev.guards:
            if guard.get("detectable") is not None and guard.get("n_items", 0) > 1:
                found.setdefault(guard["metric"], (ev.version_id, guard))
    return found
