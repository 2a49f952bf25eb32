"""The evaluation suites: fixed item sets, each versioned by a hash of its items and scoring code.

A suite's hash changes when its items, its parameters or its scorer version change, so a cached
champion result (SuiteResult, keyed by subject and hash) is reused only for exactly the same test.
Every run keeps per-item values beside the aggregates (SuiteScores.items), which is what lets the
gate compare two models item by item (services/evaluator/judge.py) and a report list the items won
and lost.

  new        perplexity on the held-out slice of this increment (never trained on)
  retention  perplexity on fixed earlier abstracts (the model line's first held-out slice) plus
             general-medical text (the MedQuAD half that replay never draws from)
  pubmedqa   yes/no/maybe accuracy and macro-F1 by answer likelihood on the PubMedQA items replay
             never trains on, and BLEU/ROUGE of generated long answers against LONG_ANSWER on the
             first `generate_items` of them
  consumer   patients' questions (TREC LiveQA Medical) and MedQuAD questions: ROUGE of generated
             answers against the reference answers, and their reading grade
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

from services.evaluator.grounding import score_grounding
from services.evaluator.metrics import per_answer_scores, text_scores
from services.evaluator.perplexity import perplexity_of, text_nll
from services.evaluator.qa import expected_calibration_error, macro_f1
from shared.corpora import GeneralText, general_texts
from shared.lm.decisions import CONTENT_FREE, DECISIONS, calibration_offsets, decision_scores, with_offsets
from shared.lm.generation import generate
from shared.queries import OFFSET_METRICS

# Version 2: per-item values are stored; results of version 1 (aggregates only) are never reused.
# pubmedqa 3: decisions calibrated (params "calibration"), expected calibration error reported.
# pubmedqa 4: the gold decision is kept per item (series "gold"), so macro-F1 gets a bootstrap interval.
# pubmedqa 5: the calibration's log-offsets are stored (pubmedqa_offset_*): the QA API calibrates verdicts with them.
SCORER_VERSIONS = {"perplexity": 2, "pubmedqa": 5, "consumer": 2, "grounding": 1}


@dataclass
class SuiteScores:
    """One model on one suite: aggregate metrics, and per-item series aligned with `items["item_id"]`.

    Series: perplexity suites `nll` (summed over the item's tokens) and `tokens`; pubmedqa `correct`
    (0/1), `label` (the chosen decision), `gold` (the item's decision) and per-answer `answer` (the text), `bleu`,
    `rouge1/2/L`; consumer per-answer `rouge1/2/L` and `fk_grade` (None for an empty answer); grounding
    `abstained_ok` (0/1) and `precision` (None where nothing was cited or abstaining was right)."""

    metrics: dict[str, float]
    items: dict[str, list[Any]]


@dataclass(frozen=True)
class Suite:
    name: str
    kind: str  # a key of SCORER_VERSIONS
    items: tuple[GeneralText, ...]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        h = hashlib.sha256(json.dumps([self.name, self.kind, SCORER_VERSIONS[self.kind], self.params],
                                      sort_keys=True).encode())
        for item in self.items:
            h.update(b"\0" + item.item_id.encode() + b"\0" + item.text.encode())
        return h.hexdigest()

    def run(self, net: Any, tokenizer: Any) -> SuiteScores:
        scorer = {"perplexity": _perplexity, "pubmedqa": _pubmedqa, "consumer": _consumer,
                  "grounding": _grounding}[self.kind]
        metrics, series = scorer(self, net, tokenizer)
        return SuiteScores(metrics, {"item_id": [i.item_id for i in self.items], **series})


def _perplexity(suite: Suite, net: Any, tokenizer: Any) -> tuple[dict[str, float], dict[str, list]]:
    per_text = text_nll(net, tokenizer, [i.text for i in suite.items], max_length=suite.params["max_length"])
    return ({f"ppl_{suite.name}": perplexity_of(per_text)},
            {"nll": [n for n, _ in per_text], "tokens": [t for _, t in per_text]})


def _pubmedqa(suite: Suite, net: Any, tokenizer: Any) -> tuple[dict[str, float], dict[str, list]]:
    items, p = suite.items, suite.params
    pairs = [(i.question, i.context) for i in items]
    scores, offsets = calibrated_decisions(suite, net, tokenizer, pairs)
    pred = [DECISIONS[max(range(len(DECISIONS)), key=s.__getitem__)] for s in scores]
    gold = [decision_of(i) for i in items]
    correct = [int(g == q) for g, q in zip(gold, pred, strict=True)]
    probabilities = [[math.exp(v) for v in row] for row in scores]
    metrics = {"pubmedqa_acc": sum(correct) / len(items), "pubmedqa_f1": macro_f1(gold, pred),
               "pubmedqa_ece": expected_calibration_error(probabilities, [DECISIONS.index(g) for g in gold])}
    # What always answering the items' most common label would score: the bar the QA API shows its verdicts
    # against (reported, not guarded).
    metrics["pubmedqa_majority_acc"] = max(gold.count(d) for d in DECISIONS) / len(items)
    metrics["pubmedqa_items"] = len(items)
    if suite.params.get("calibration", "none") != "none":  # the QA API calibrates its verdicts with these
        metrics |= dict(zip(OFFSET_METRICS, offsets, strict=True))
    series: dict[str, list] = {"correct": correct, "label": pred, "gold": gold}
    # Long answers for the first `generate_items` items only: a decision costs one forward pass, an
    # answer dozens, so the decisions can cover many more items for the same time.
    n_gen = min(p["generate_items"], len(items))
    if not n_gen:
        return metrics, series
    answers = generate(net, tokenizer, pairs[:n_gen], max_new_tokens=p["max_new_tokens"],
                       batch_size=p["batch_size"], max_length=p["max_length"])
    answers = [a.split("Answer:")[0].strip() for a in answers]  # the long answer, before the decision
    refs = [long_answer_of(i) for i in items[:n_gen]]
    metrics |= {f"pubmedqa_{k}": v for k, v in text_scores(answers, refs).items() if k != "fk_grade"}
    not_generated: list[float | None] = [None] * (len(items) - n_gen)
    series |= {k: v + not_generated for k, v in per_answer_scores(answers, refs).items() if k != "fk_grade"}
    series["answer"] = [*answers, *not_generated]  # the texts, for blind expert review (shared/review.py)
    return metrics, series


def calibrated_decisions(suite: Suite, net: Any, tokenizer: Any,
                         pairs: list[tuple[str, str | None]]) -> tuple[list[list[float]], list[float]]:
    """Per item, calibrated log-probabilities of DECISIONS (shared/lm/decisions.calibrate) by the suite's
    "calibration" parameter, and the log-offsets that calibration added; the "prior" method fits on these
    items' scores and the suite's "prior" (the training share's label shares), never on their gold labels."""
    p = suite.params
    raw = decision_scores(net, tokenizer, pairs, batch_size=p["batch_size"], max_length=p["max_length"])
    method = p.get("calibration", "none")
    content_free = None
    if method == "contextual":
        content_free = decision_scores(net, tokenizer, [(c, c or None) for c in CONTENT_FREE],
                                       batch_size=p["batch_size"], max_length=p["max_length"])
    offsets = calibration_offsets(raw, method, prior=p.get("prior"), content_free=content_free)
    return with_offsets(raw, offsets), offsets


def label_shares(items: tuple[GeneralText, ...] | list[GeneralText]) -> list[float]:
    """Share of each of DECISIONS among the items' gold decisions (the "prior" calibration's target)."""
    gold = [decision_of(i) for i in items]
    return [round(gold.count(d) / len(gold), 4) if gold else 0.0 for d in DECISIONS]


def _consumer(suite: Suite, net: Any, tokenizer: Any) -> tuple[dict[str, float], dict[str, list]]:
    items, p = suite.items, suite.params
    answers = generate(net, tokenizer, [(i.question, None) for i in items], max_new_tokens=p["max_new_tokens"],
                       batch_size=p["batch_size"], max_length=p["max_length"])
    refs = [i.answer for i in items]
    text = text_scores(answers, refs)
    per_answer = per_answer_scores(answers, refs)
    return ({f"consumer_{k}": v for k, v in text.items() if k != "bleu"},
            {k: v for k, v in per_answer.items() if k != "bleu"})


def _grounding(suite: Suite, net: Any, tokenizer: Any) -> tuple[dict[str, float], dict[str, list]]:
    """Retrieval, relevance floor and quoting as the QA API runs them (services/evaluator/grounding.py);
    the model plays no part."""
    return score_grounding(suite.items, general_texts(), suite.params)


def decision_of(item: GeneralText) -> str:
    """PubMedQA gold decision: the trainer's answers end with "Answer: <decision>"."""
    return item.answer.rsplit("Answer:", 1)[-1].strip()


def long_answer_of(item: GeneralText) -> str:
    return item.answer.rsplit("\nAnswer:", 1)[0].strip()


def sample(items: list[GeneralText] | tuple[GeneralText, ...], n: int, seed: int = 1234) -> tuple[GeneralText, ...]:
    """A fixed, seeded subset in a stable order: the same inputs always give the same suite."""
    chosen = list(items)
    random.Random(seed).shuffle(chosen)
    return tuple(sorted(chosen[:n], key=lambda i: i.item_id))
