"""The evaluation suites: fixed item sets, each versioned by a hash of its items and scoring code.

A suite's hash changes when its items, its parameters or its scorer version change, so a cached
champion result (SuiteResult, keyed by subject and hash) is reused only for exactly the same test.

  new        perplexity on the held-out slice of this increment (never trained on)
  retention  perplexity on fixed earlier abstracts (the model line's first held-out slice) plus
             general-medical text (the MedQuAD half that replay never draws from)
  pubmedqa   yes/no/maybe accuracy and macro-F1 by answer likelihood, and BLEU/ROUGE of generated
             long answers against LONG_ANSWER, on the PubMedQA items replay never trains on
  consumer   patients' questions (TREC LiveQA Medical) and MedQuAD questions: ROUGE of generated
             answers against the reference answers, and their reading grade
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

from services.evaluator.metrics import text_scores
from services.evaluator.perplexity import perplexity
from services.evaluator.qa import DECISIONS, decision_scores, macro_f1
from shared.corpora import GeneralText
from shared.lm.generation import generate

SCORER_VERSIONS = {"perplexity": 1, "pubmedqa": 1, "consumer": 1}


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

    def run(self, net: Any, tokenizer: Any) -> dict[str, float]:
        p = self.params
        if self.kind == "perplexity":
            texts = [i.text for i in self.items]
            return {f"ppl_{self.name}": perplexity(net, tokenizer, texts, max_length=p["max_length"])}
        if self.kind == "pubmedqa":
            return _pubmedqa(net, tokenizer, self.items, p)
        return _consumer(net, tokenizer, self.items, p)


def _pubmedqa(net: Any, tokenizer: Any, items: tuple[GeneralText, ...], p: dict) -> dict[str, float]:
    pairs = [(i.question, i.context) for i in items]
    scores = decision_scores(net, tokenizer, pairs, batch_size=p["batch_size"], max_length=p["max_length"])
    pred = [DECISIONS[max(range(len(DECISIONS)), key=s.__getitem__)] for s in scores]
    gold = [decision_of(i) for i in items]
    answers = generate(net, tokenizer, pairs, max_new_tokens=p["max_new_tokens"], batch_size=p["batch_size"],
                       max_length=p["max_length"])
    answers = [a.split("Answer:")[0].strip() for a in answers]  # the long answer, before the decision
    text = text_scores(answers, [long_answer_of(i) for i in items])
    return {"pubmedqa_acc": sum(g == q for g, q in zip(gold, pred, strict=True)) / len(items),
            "pubmedqa_f1": macro_f1(gold, pred),
            **{f"pubmedqa_{k}": v for k, v in text.items() if k != "fk_grade"}}


def _consumer(net: Any, tokenizer: Any, items: tuple[GeneralText, ...], p: dict) -> dict[str, float]:
    answers = generate(net, tokenizer, [(i.question, None) for i in items], max_new_tokens=p["max_new_tokens"],
                       batch_size=p["batch_size"], max_length=p["max_length"])
    text = text_scores(answers, [i.answer for i in items])
    return {f"consumer_{k}": v for k, v in text.items() if k != "bleu"}


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
