"""Score a candidate against the champion (or the base model) on the same suites, and decide.

The decision, its reasons, the status change and (with auto-promotion) the alias move are written
in one transaction: a crash leaves either all of them or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from sqlmodel import Session, col, select

from services.evaluator.grounding import distractor_hash
from services.evaluator.judge import Guard, expert_guard, judge
from services.evaluator.suites import Suite, SuiteScores, label_shares, sample
from shared import lineage, registry, review
from shared.artifacts import local_adapter
from shared.corpora import CorpusUnavailable, GeneralText, corpus_items, general_texts, pubmedqa_split, split_general
from shared.db import session_scope, write_lock
from shared.evidence import QUOTES_PER_ABSTRACT, supporting_quotes
from shared.lm.base_model import load_base_model
from shared.lm.generation import use_bf16
from shared.manifest import RunManifest
from shared.offtopic import OFF_TOPIC_QUESTIONS
from shared.pipeline import Event, emit
from shared.policy import Policy
from shared.queries import abstract_text, live_abstracts
from shared.settings import Settings, get_settings
from shared.tables import Evaluation, ModelVersion, SuiteResult, TrainingRun, VersionStatus

log = logging.getLogger("medqa.evaluator")
SUITE = "gate-v3"  # Evaluation.suite: the set of suites below, decided by the policy
AWAITING = "awaiting expert review"  # a reason of a decision held for blind reviews


@dataclass
class Decision:
    version_id: int
    baseline_version_id: int | None
    candidate: dict[str, float]
    baseline: dict[str, float]
    passed: bool
    reasons: list[str]
    promoted: bool
    guards: list[Guard]
    waiting: bool = False  # held for blind expert reviews (policy expert_review.wait)

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "guards": [g.to_json() for g in self.guards]}


def generation_params(settings: Settings) -> dict[str, Any]:
    return {"max_length": 512, "max_new_tokens": settings.eval_max_new_tokens, "batch_size": settings.eval_batch_size}


def pubmedqa_suite(settings: Settings, items: Sequence[GeneralText] | None = None) -> Suite | None:
    """The pubmedqa suite: `items`, else the configured evaluation share (MEDQA_PUBMEDQA_EVAL_SOURCE)
    sampled to MEDQA_EVAL_QA_ITEMS; None when there is nothing to score."""
    if items is None:
        items = sample(pubmedqa_split()[1], settings.eval_qa_items) if settings.eval_qa_items else []
    if not items:
        return None
    params = {**generation_params(settings), "generate_items": settings.eval_qa_generate_items,
              **calibration_params(settings.pubmedqa_calibration, lambda: pubmedqa_split()[0])}
    return Suite("pubmedqa", "pubmedqa", tuple(items), params)


def calibration_params(method: str, training_items: Callable[[], Sequence[GeneralText]]) -> dict[str, Any]:
    """The pubmedqa suite's calibration: the method, and for "prior" the training share's label shares
    (part of the suite hash: another training share is another test). The training share is read only
    for "prior", so scoring a file of one's own needs no training source otherwise."""
    if method != "prior":
        return {"calibration": method}
    fix = "or read decisions without it (MEDQA_PUBMEDQA_CALIBRATION=none, `medqa score --calibration none`)"
    try:
        training = tuple(training_items())
    except CorpusUnavailable as exc:
        raise CorpusUnavailable(f"the prior calibration reads the PubMedQA training share's label shares: {exc}; "
                                f"{fix}") from exc
    if not training:
        raise CorpusUnavailable("the prior calibration reads the PubMedQA training share's label shares, and the "
                                f"training share is empty (MEDQA_PUBMEDQA_SOURCE); {fix}")
    return {"calibration": method, "prior": label_shares(training)}


def build_suites(session: Session, run: TrainingRun) -> list[Suite]:
    """The suites for `run`'s candidate; every suite but `new` is the same for every run of the line."""
    settings = get_settings()
    cap = settings.eval_max_texts
    ppl = {"max_length": settings.eval_max_length}
    new = _abstract_items(session, RunManifest.from_json(run.manifest).holdout)
    first = session.exec(select(TrainingRun).where(TrainingRun.model_line == run.model_line)
                         .order_by(col(TrainingRun.id))).first()
    earlier: list[GeneralText] = []
    if first is not None and first.id != run.id:
        earlier = _abstract_items(session, RunManifest.from_json(first.manifest).holdout)[: cap // 2]
    general = split_general(general_texts())[1]
    suites = [Suite("new", "perplexity", tuple(new[:cap]), ppl),
              Suite("retention", "perplexity", tuple(earlier) + tuple(general[: cap - len(earlier)]), ppl)]
    qa_suite = pubmedqa_suite(settings)
    if qa_suite is not None:
        suites.append(qa_suite)
    consumer = consumer_suite(settings, list(corpus_items("liveqa")), general, settings.eval_consumer_items)
    if consumer is not None:
        suites.append(consumer)
    grounding = grounding_suite(settings, pubmedqa_split()[1], settings.eval_grounding_items)
    if grounding is not None:
        suites.append(grounding)
    return suites


def grounding_suite(settings: Settings, answerable: Sequence[GeneralText], n: int) -> Suite | None:
    """n of `answerable` (PubMedQA items: their own abstract is indexed) and as many off-topic questions,
    with the QA API's evidence settings; None when n is 0 or there is nothing to ask."""
    asked = [i for i in sample(tuple(answerable), n) if i.context]
    if not asked:
        return None
    off_topic = [GeneralText(f"offtopic:{k}", q, question=q) for k, q in enumerate(OFF_TOPIC_QUESTIONS[:len(asked)])]
    params = {"ranker": settings.api_retriever, "min_relevance": settings.api_min_relevance,
              "margin": settings.api_relevance_margin, "min_coverage": settings.api_min_term_coverage,
              "k": settings.api_retrieval_k, "quotes": QUOTES_PER_ABSTRACT,
              "distractors": distractor_hash(general_texts())}
    return Suite("grounding", "grounding", tuple(asked) + tuple(off_topic), params)


def consumer_suite(settings: Settings, patients: Sequence[GeneralText], medquad: Sequence[GeneralText],
                   n: int) -> Suite | None:
    """Consumer questions: half patients' (LiveQA) and half MedQuAD's, n in all, those with a
    reference answer; None when there are none."""
    asked = [p for p in patients if p.answer]
    answered = [g for g in medquad if g.question]
    half = n // 2 if asked and answered else n
    chosen = sample(asked, half)
    items = chosen + sample(answered, n - len(chosen))
    return Suite("consumer", "consumer", items, generation_params(settings)) if items else None


def _abstract_items(session: Session, pmids: list[int]) -> list[GeneralText]:
    """Stored abstracts as suite items, in PMID order; deleted or retracted ones are never scored."""
    return [GeneralText(f"pmid:{r.pmid}", abstract_text(r)) for r in live_abstracts(session, pmids)]


def score(base_spec: str, adapters: dict[str, Path | None],
          suites: dict[str, list[Suite]]) -> dict[str, dict[str, SuiteScores]]:
    """Scores per model (adapter path; None = the bare base) and suite, loading the base once."""
    settings = get_settings()
    model, tokenizer = load_base_model(base_spec, settings.models_dir)
    device = torch.device("cpu")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16("auto", device))
    peft_model: Any = None
    out: dict[str, dict[str, SuiteScores]] = {}
    for name, path in adapters.items():
        out[name] = {}
        if not suites.get(name):
            continue
        if path is not None:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
            else:
                peft_model.load_adapter(str(path), adapter_name=name)
            peft_model.set_adapter(name)
        net = peft_model if path is not None else model
        ctx = peft_model.disable_adapter() if (path is None and peft_model is not None) else contextlib.nullcontext()
        with ctx, autocast:
            for suite in suites[name]:
                t0 = time.perf_counter()
                result = suite.run(net, tokenizer)
                result.metrics[f"{suite.name}_seconds"] = time.perf_counter() - t0
                out[name][suite.name] = result
    return out


def cached_scores(session: Session, subject: str, suites: list[Suite]) -> tuple[dict[str, SuiteScores], list[Suite]]:
    """(scores already stored for `subject` on these exact suites, the suites still to run).
    A stored result without per-item values (from before they were kept) counts as not stored."""
    by_hash = {x.hash: x for x in suites}
    rows = session.exec(select(SuiteResult).where(SuiteResult.subject == subject,
                                                  col(SuiteResult.suite_hash).in_(list(by_hash)))).all()
    found: dict[str, SuiteScores] = {}
    for row in rows:
        if row.items:
            found[row.suite] = SuiteScores(dict(row.metrics), dict(row.items))
            by_hash.pop(row.suite_hash)
    return found, list(by_hash.values())


def store_scores(session: Session, subject: str, suites: list[Suite], scores: dict[str, SuiteScores]) -> None:
    for suite in suites:
        result = scores[suite.name]
        row = session.exec(select(SuiteResult).where(SuiteResult.subject == subject,
                                                     SuiteResult.suite_hash == suite.hash)).first()
        if row is not None and row.items:
            continue  # another evaluator stored the same result meanwhile
        row = row or SuiteResult(subject=subject, suite=suite.name, suite_hash=suite.hash)
        row.metrics = {k: v for k, v in result.metrics.items() if k != f"{suite.name}_seconds"}
        row.items = result.items
        row.seconds = result.metrics.get(f"{suite.name}_seconds", 0.0)
        session.add(row)


def flat_metrics(scores: dict[str, SuiteScores]) -> dict[str, float]:
    return {k: v for result in scores.values() for k, v in result.metrics.items()}


def _suites_hash(suites: list[Suite]) -> str:
    h = hashlib.sha256(SUITE.encode())
    for suite in sorted(suites, key=lambda x: x.name):
        h.update(suite.hash.encode())
    return h.hexdigest()


def evaluate_version(version_id: int) -> Decision | None:
    settings = get_settings()
    policy = Policy.load(settings.policy_file)  # type: ignore[arg-type]  # a bad policy fails before any scoring
    with session_scope() as session:
        version = registry.get_version(session, version_id=version_id)
        if version.status != VersionStatus.candidate:
            log.info("v%d is %s already; nothing to evaluate", version_id, version.status.value)
            return None
        run = registry.run_for_version(session, version=version)
        champ = registry.champion(session, model_line=version.model_line)
        champ_id = champ.id if champ is not None else None
        if _still_waiting(session, version_id, champ_id, policy):
            return None
        suites = build_suites(session, run)
        base_spec = version.base_model
        cand_artifact = (version.adapter_path, version.sha256)
        champ_artifact = (champ.adapter_path, champ.sha256) if champ is not None else None
        # The champion (or the base, before there is one) is scored only on suites it has not met yet;
        # so is the candidate, whose scores are stored when the decision waits for expert reviews.
        baseline_subject = f"v{champ_id}" if champ is not None else f"base:{base_spec}"
        cached, todo = cached_scores(session, baseline_subject, suites)
        cand_cached, cand_todo = cached_scores(session, f"v{version_id}", suites)
    if champ is not None and champ.base_model != base_spec:
        raise ValueError(f"v{version_id} and champion v{champ_id} have different base models")

    scores: dict[str, dict[str, SuiteScores]] = {"candidate": {}, "baseline": {}}
    if cand_todo or todo:
        # Local files that hash to each version's sha256 (fetched from object storage where it is one).
        cand_path = local_adapter(*cand_artifact, settings)
        champ_path = local_adapter(*champ_artifact, settings) if champ_artifact is not None else None
        scores = score(base_spec, {"candidate": cand_path, "baseline": champ_path},
                       {"candidate": cand_todo, "baseline": todo})
    scores["candidate"] = {**cand_cached, **scores["candidate"]}
    scores["baseline"] = {**cached, **scores["baseline"]}
    verdict = judge(policy, scores["candidate"], scores["baseline"])
    with session_scope() as session:
        reviews = review.pairwise_scores(session, version_id, champ_id)
    if policy.expert is not None:
        verdict.guards.append(expert_guard(policy.expert, reviews, policy.confidence))
    # The policy may hold a candidate that passed every automatic check until experts have reviewed it.
    waiting = bool(policy.expert and policy.expert.wait and len(reviews) < policy.expert.min_reviews
                   and all(g.passed for g in verdict.guards))
    passed = all(g.passed for g in verdict.guards) and not waiting
    reasons = [g.reason for g in verdict.guards]
    if waiting:
        reasons.append(f"{AWAITING}: {len(reviews)} of {policy.expert.min_reviews} blind reviews "  # type: ignore[union-attr]
                       "(policy expert_review.wait); the gate decides once they are in")
    metrics = {name: flat_metrics(scores[name]) for name in ("candidate", "baseline")}

    with session_scope() as session:
        write_lock(session)  # this transaction may move the champion alias (auto-promote)
        row = session.get(ModelVersion, version_id)
        assert row is not None
        version = row
        if version.status != VersionStatus.candidate:  # another worker decided meanwhile
            return None
        store_scores(session, f"v{version_id}", cand_todo, scores["candidate"])
        # What it was scored on, indexed with what it trained on (`medqa lineage PMID`).
        lineage.record_evaluation(session, row.run_id, [i.item_id for suite in suites for i in suite.items])
        store_scores(session, baseline_subject, todo, scores["baseline"])
        session.add(Evaluation(version_id=version_id, baseline_version_id=champ_id, suite=SUITE,
                               suite_hash=_suites_hash(suites), metrics=metrics["candidate"],
                               baseline_metrics=metrics["baseline"], passed=passed, reasons=reasons,
                               guards=[g.to_json() for g in verdict.guards]))
        queued = queue_disagreements(session, version_id, champ_id, suites, scores, settings)
        if waiting:
            log.info("v%d waits for expert review (%d blind pairs queued)", version_id, queued)
            return Decision(version_id, champ_id, metrics["candidate"], metrics["baseline"], False, reasons, False,
                            verdict.guards, waiting=True)
        version.status = VersionStatus.blessed if passed else VersionStatus.rejected
        version.metrics = {**version.metrics, **metrics["candidate"],
                           **{f"baseline_{k}": v for k, v in metrics["baseline"].items()}}
        session.add(version)
        promoted = False
        # A clean rebuild's version waits for an operator: it replaces a tainted lineage step by step,
        # and its earlier steps are not meant to serve.
        if passed and settings.auto_promote and version.replaces_version_id is None:
            current = registry.champion(session, model_line=version.model_line, for_update=True)
            if current is None or current.id == champ_id:  # nobody moved the alias since we measured
                registry.set_champion(session, model_line=version.model_line, version=version, actor="policy",
                                  action="auto-promote", reason="; ".join(r for r in reasons if r.startswith("ok")))
                promoted = True
        emit(session, Event.VERSION_DECIDED, version_id)
    log.info("v%d %s%s: %s", version_id, "blessed" if passed else "rejected",
             " and promoted" if promoted else "", "; ".join(reasons))
    return Decision(version_id, champ_id, metrics["candidate"], metrics["baseline"], passed, reasons, promoted,
                    verdict.guards)


def _still_waiting(session: Session, version_id: int, champ_id: int | None, policy: Policy) -> bool:
    """A candidate held for expert reviews (it has a decision row but is still a candidate) stays held
    until enough are in; the sweeper re-sends version.created for it, and this keeps that cheap."""
    held = session.exec(select(Evaluation.id).where(Evaluation.version_id == version_id)).first()
    if held is None or policy.expert is None or not policy.expert.wait:
        return False
    have = len(review.pairwise_scores(session, version_id, champ_id))
    if have >= policy.expert.min_reviews:
        return False
    log.info("v%d still waits for expert review: %d of %d blind reviews", version_id, have,
             policy.expert.min_reviews)
    return True


def queue_disagreements(session: Session, version_id: int, champ_id: int | None, suites: list[Suite],
                        scores: dict[str, dict[str, SuiteScores]], settings: Settings) -> int:
    """Blind review pairs from the PubMedQA items where candidate and champion chose different verdicts
    (shared/review.py): each answer shows its verdict, its generated long answer where the suite wrote
    one, and sentences of the item's abstract quoted as evidence. Seeded by the version: a retried
    decision queues the same pairs, in the same order."""
    suite = next((x for x in suites if x.name == "pubmedqa"), None)
    cand, base = scores["candidate"].get("pubmedqa"), scores["baseline"].get("pubmedqa")
    if (suite is None or cand is None or base is None or not settings.review_pairs_per_candidate
            or "label" not in cand.items or "label" not in base.items):
        return 0
    pairs = [review.PairedAnswer(item.item_id, item.question, _shown(item, cand, n), _shown(item, base, n))
             for n, item in enumerate(suite.items) if cand.items["label"][n] != base.items["label"][n]]
    rng = random.Random(f"pairs:{version_id}")
    picked = rng.sample(pairs, min(len(pairs), settings.review_pairs_per_candidate))
    return review.queue_pairs(session, version_id, champ_id, picked, rng)


def _shown(item: GeneralText, result: SuiteScores, n: int) -> dict[str, Any]:
    label = result.items["label"][n]
    written = (result.items.get("answer") or [None] * (n + 1))[n]
    text = f"{label.capitalize()}." + (f" {written}" if written else "")
    ref = item.item_id.partition(":")[2]
    quotes = supporting_quotes(item.question, int(ref) if ref.isdigit() else 0, item.context or "",
                               k=QUOTES_PER_ABSTRACT)
    return review.shown_answer(text, [{"pmid": q.pmid, "quote": q.text} for q in quotes], {"label": label})
