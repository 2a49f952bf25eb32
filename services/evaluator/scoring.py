"""One model on one suite, from any compatible source: what `medqa score` prints.

The target is `base`, `champion`, or a version (`v3` or `3`). The suite is one of the gate's fixed
suites; --source swaps in another source of the same format:

  pubmedqa   PubMedQA items (original JSON, `datasets` folder, parquet or hub id)
  consumer   consumer questions with reference answers (LiveQA TREC XML, or the same table forms)
  retention  general medical text (MedQuAD XML, or the same table forms), scored by perplexity
  grounding  the QA API's evidence step: PubMedQA items (answered from their own abstract) and the
             off-topic probe questions (abstained on); the model plays no part

Every metric comes with a bootstrap interval over the suite's items. Results are stored as the
gate's are (SuiteResult, by suite hash, per item), so asking again costs nothing, and a gate that
meets the same suite reuses them.

A version scored on items its lineage trained on (replayed under the same id, or whose paper it learned
as an abstract or mined item) gets their count and a warning: a source chosen by hand can be the very
file replay trained on, and its score then measures memory. The grounding suite, which the model plays
no part in, carries no such count.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session

from services.evaluator.gate import (
    cached_scores,
    consumer_suite,
    grounding_suite,
    pubmedqa_suite,
    score,
    store_scores,
)
from services.evaluator.qa import macro_f1_interval
from services.evaluator.suites import Suite, SuiteScores, sample
from shared import lineage, registry
from shared.artifacts import ArtifactError, local_adapter
from shared.corpora import general_texts, load_corpus, pubmedqa_split, split_general
from shared.settings import Settings
from shared.stats import Interval, mean_interval

SUITES = ("pubmedqa", "consumer", "retention", "grounding")
# Suites the model plays no part in: what a version trained on cannot colour their scores.
MODEL_FREE = ("grounding",)
SOURCE_FORMAT = {"pubmedqa": "pubmedqa", "consumer": "liveqa", "retention": "medquad", "grounding": "pubmedqa"}


class ScoreError(ValueError):
    """A target, suite or source that cannot be scored; the message says which and why."""


@dataclass(frozen=True)
class Target:
    name: str  # as shown: "base", "v3"
    subject: str  # SuiteResult.subject: "v3" or "base:<spec>"
    base_spec: str
    adapter: Path | None
    version_id: int | None = None  # None for the base model, which learned nothing of ours


def resolve_target(session: Session, target: str, settings: Settings) -> Target:
    if target == "base":
        return Target("base", f"base:{settings.base_model}", settings.base_model, None)
    if target == "champion":
        version = registry.champion(session, model_line=settings.model_line)
        if version is None:
            raise ScoreError(f"model line {settings.model_line!r} has no champion yet; score `base` or a version")
    else:
        try:
            version = registry.get_version(session, version_id=registry.parse_version_id(target))
        except registry.RegistryError as exc:
            raise ScoreError(str(exc)) from None
    try:
        adapter = local_adapter(version.adapter_path, version.sha256, settings)
    except (FileNotFoundError, ValueError, ArtifactError) as exc:
        raise ScoreError(f"v{version.id}: {exc}") from None
    return Target(f"v{version.id}", f"v{version.id}", version.base_model, adapter, version.id)


def build_suite(name: str, settings: Settings, *, source: str | None, items: int | str | None) -> Suite:
    """Suite `name` over `source` (default: the gate's own items). `items`: a count, "all", or None for
    the configured size, which with the default source is exactly the gate's suite (same hash, so
    the gate's stored results are reused and ours serve it)."""
    if name not in SUITES:
        raise ScoreError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    general = split_general(general_texts())[1] if source is None else []
    pool = tuple(load_corpus(SOURCE_FORMAT[name], source)) if source is not None else \
        tuple(pubmedqa_split()[1]) if name in ("pubmedqa", "grounding") else \
        tuple(load_corpus("liveqa", None)) if name == "consumer" else tuple(general)
    configured = {"pubmedqa": settings.eval_qa_items, "consumer": settings.eval_consumer_items,
                  "retention": settings.eval_max_texts, "grounding": settings.eval_grounding_items}[name]
    extra = len(general) if name == "consumer" else 0
    n = configured if items is None else len(pool) + extra if items == "all" else int(items)
    suite: Suite | None
    if name == "pubmedqa":
        suite = pubmedqa_suite(settings, sample(pool, n))
    elif name == "consumer":
        suite = consumer_suite(settings, pool, general, n)
    elif name == "grounding":
        suite = grounding_suite(settings, pool, n)
    else:
        suite = Suite("retention", "perplexity", sample(pool, n), {"max_length": settings.eval_max_length})
    if suite is None or not suite.items:
        raise ScoreError(f"suite {name} has no items to score from {source or 'its configured source'}")
    return suite


def score_one(session_factory: Callable[[], Any], target: str, suite_name: str, settings: Settings, *,
              source: str | None = None, items: int | str | None = None) -> dict[str, Any]:
    """Score `target` on the suite (or read its stored result) and describe it with intervals."""
    with session_factory() as session:
        who = resolve_target(session, target, settings)
        suite = build_suite(suite_name, settings, source=source, items=items)
        cached, todo = cached_scores(session, who.subject, [suite])
        seen = None if suite_name in MODEL_FREE else \
            lineage.seen_in_training(session, who.version_id, [i.item_id for i in suite.items]) \
            if who.version_id is not None else {"items": [], "papers": []}
    t0 = time.perf_counter()
    if todo:
        fresh = score(who.base_spec, {who.name: who.adapter}, {who.name: todo})[who.name]
        with session_factory() as session:
            store_scores(session, who.subject, todo, fresh)
        cached |= fresh
    doc = describe(who, suite, cached[suite.name], reused=not todo, seconds=time.perf_counter() - t0,
                   confidence=0.95, source=source)
    if seen is None:
        return doc
    return doc | {"seen_in_training": {k: len(v) for k, v in seen.items()}} | (
        {"warning": contamination_warning(who.name, seen, len(suite.items))} if any(seen.values()) else {})


def contamination_warning(target: str, seen: dict[str, list[str]], n: int) -> str:
    parts = [f"{len(seen['items'])} of these {n} items"] if seen["items"] else []
    parts += [f"the papers of {len(seen['papers'])}" + (" more" if parts else f" of these {n} items")] \
        if seen["papers"] else []
    return (f"{target} trained on {' and on '.join(parts)} (its lineage, ancestors included): on those items "
            "the score measures memory, not answering; score a source it never trained on")


def describe(who: Target, suite: Suite, result: SuiteScores, *, reused: bool, seconds: float,
             confidence: float, source: str | None) -> dict[str, Any]:
    items = result.items
    doc: dict[str, Any] = {"target": who.name, "suite": suite.name, "suite_hash": suite.hash,
                           "source": source or "configured", "items": len(suite.items), "reused": reused,
                           "seconds": round(seconds, 2), "confidence": confidence, "metrics": {}}
    for metric, value in sorted(result.metrics.items()):
        if metric.endswith("_seconds"):
            continue
        interval = _interval(metric, items, confidence)
        doc["metrics"][metric] = {"value": value, **({"low": interval[0], "high": interval[1]} if interval else {})}
    if "label" in items:
        doc["predicted_labels"] = dict(Counter(items["label"]))
    return doc


def _interval(metric: str, items: dict[str, list], confidence: float) -> tuple[float, float] | None:
    """The bootstrap interval of `metric` from its per-item series: macro-F1 recomputed on each resample
    of the items (from their gold and chosen decisions); None for corpus BLEU, which is not the mean of
    sentence BLEU, and for a result stored without gold decisions."""
    if metric == "pubmedqa_f1" and items.get("gold"):
        f1 = macro_f1_interval(items["gold"], items["label"], confidence=confidence)
        return f1.low, f1.high
    if metric.endswith(("_f1", "_bleu")):
        return None
    if metric.startswith("ppl_") or metric == "ppl":
        nll, tokens = items["nll"], items["tokens"]
        per_token = mean_interval([a / t for a, t in zip(nll, tokens, strict=True)], weights=tokens,
                                  confidence=confidence)
        return math.exp(per_token.low), math.exp(per_token.high)
    named = {"pubmedqa_acc": "correct", "grounding_abstention_acc": "abstained_ok",
             "grounding_citation_precision": "precision"}
    series = named.get(metric, metric.split("_", 1)[1] if "_" in metric else metric)
    values = [v for v in items.get(series, []) if v is not None]
    if not values:
        return None
    interval: Interval = mean_interval(values, confidence=confidence)
    return interval.low, interval.high
