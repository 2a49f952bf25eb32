"""The grounding suite: does the QA API's evidence step answer when it should and abstain when it should?

Items are PubMedQA development questions whose own abstract is indexed (they should be answered, and
citing that abstract is a hit) and off-topic questions (shared/offtopic.py: they should get no
evidence at all). The index holds those abstracts among fixed distractors (MedQuAD answers), in
memory: vectors for the ranking and the relevance floor, and a scratch FTS5 index for the lexical
ranker. The code path is the API's (shared/search.py, shared/evidence.grounded) with the API's
settings (ranker, floor, abstracts per answer), so a setting that would make answers less grounded
shows up here before it serves.

Per item:
  abstained_ok   1 when an answerable question is answered or an off-topic one abstains, else 0
  precision      for an answered PubMedQA question, the share of its citations that are its own
                 abstract: a lower bound on citation precision (another abstract may be relevant too)
Neither depends on the language model: candidate and champion score the same, so the gate's paired
guard can only see a change of settings, and the policy's `min` bounds keep a floor under both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.corpora import GeneralText
from shared.embeddings import embed
from shared.evidence import grounded
from shared.search import combined, lexical_search, over_floor, scratch_index, vector_rankings

DISTRACTOR_IDS = 2_000_000_000  # made-up document ids for distractors, far above real PMIDs
DEPTH = 20


@dataclass(frozen=True)
class Doc:
    pmid: int
    title: str
    text: str


def own_pmid(item: GeneralText) -> int | None:
    """The PMID an answerable item's own abstract is indexed under; None for an off-topic question."""
    prefix, _, rest = item.item_id.partition(":")
    return int(rest) if prefix == "pubmedqa" else None


def distractor_docs(distractors: Sequence[GeneralText]) -> list[Doc]:
    return [Doc(DISTRACTOR_IDS + n, d.question, d.answer) for n, d in enumerate(distractors)]


def distractor_hash(distractors: Sequence[GeneralText]) -> str:
    """Part of the suite's parameters: other distractors are another test."""
    h = hashlib.sha256()
    for d in distractors:
        h.update(d.item_id.encode() + b"\0" + d.answer.encode() + b"\0")
    return h.hexdigest()[:16]


def score_grounding(items: Sequence[GeneralText], distractors: Sequence[GeneralText],
                    params: dict[str, Any]) -> tuple[dict[str, float], dict[str, list]]:
    if distractor_hash(distractors) != params["distractors"]:
        raise ValueError("the grounding suite's distractors changed since the suite was built (MEDQA_MEDQUAD_SOURCE)")
    docs = [Doc(pmid, "", i.context or "") for i in items if (pmid := own_pmid(i)) is not None]
    docs += distractor_docs(distractors)
    by_id = {d.pmid: d for d in docs}
    ids = [d.pmid for d in docs]
    matrix = embed([f"{d.title}\n{d.text}" for d in docs])
    questions = [i.question for i in items]
    q = embed(questions)
    position = {p: n for n, p in enumerate(ids)}
    vector = vector_rankings(q, matrix, np.asarray(ids), DEPTH) if params["ranker"] != "lexical" else []
    lexical: list[list[int]] = []
    if params["ranker"] != "vector":
        with scratch_index([(d.pmid, d.title, d.text) for d in docs]) as session:
            lexical = [[p for p, _ in lexical_search(session, text, DEPTH)] for text in questions]
    rankings = combined(params["ranker"], vector, lexical, DEPTH)
    abstained_ok: list[int] = []
    precision: list[float | None] = []
    for n, (item, ranking) in enumerate(zip(items, rankings, strict=True)):
        kept = over_floor(ranking, lambda p: float(q[n] @ matrix[position[p]]), params["min_relevance"],  # noqa: B023
                          params["k"], margin=params["margin"])
        cited, _ = grounded(item.question, [by_id[p] for p, _ in kept], params["quotes"],
                            min_coverage=params["min_coverage"])
        own = own_pmid(item)
        abstained_ok.append(int(bool(cited) == (own is not None)))
        precision.append(sum(d.pmid == own for d in cited) / len(cited) if own is not None and cited else None)
    answerable = [ok for ok, i in zip(abstained_ok, items, strict=True) if own_pmid(i) is not None]
    off_topic = [ok for ok, i in zip(abstained_ok, items, strict=True) if own_pmid(i) is None]
    shown = [p for p in precision if p is not None]
    metrics = {"grounding_abstention_acc": sum(abstained_ok) / len(items),
               "grounding_answer_rate": sum(answerable) / len(answerable) if answerable else 0.0,
               "grounding_abstention_rate": sum(off_topic) / len(off_topic) if off_topic else 0.0,
               "grounding_citation_precision": sum(shown) / len(shown) if shown else 0.0}
    return metrics, {"abstained_ok": abstained_ok, "precision": precision}
