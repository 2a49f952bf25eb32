"""Text metrics as `evaluate.Metric` modules shipped in the repo.

`evaluate.load("rouge")` fetches its script from the hub, which is unreachable offline; these are
the same computations over `rouge_score` and `sacrebleu`, instantiated directly. Readability is a
Flesch-Kincaid grade, because answers are meant for patients.
"""

from __future__ import annotations

import re
from typing import Any

import datasets
import evaluate

_TEXT_PAIR = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})


class Rouge(evaluate.Metric):
    """ROUGE-1/2/L F-measure (stemmed), averaged over the pairs."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(description="ROUGE F1 over rouge_score", citation="", inputs_description="",
                                   features=_TEXT_PAIR)

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        from rouge_score import rouge_scorer

        types = ("rouge1", "rouge2", "rougeL")
        scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True)
        totals = dict.fromkeys(types, 0.0)
        for pred, ref in zip(predictions, references, strict=True):
            scores = scorer.score(ref, pred)
            for t in types:
                totals[t] += scores[t].fmeasure
        n = max(1, len(predictions))
        return {t: totals[t] / n for t in types}


class Bleu(evaluate.Metric):
    """Corpus BLEU (sacrebleu defaults: 13a tokenizer, exponential smoothing), on a 0-1 scale."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(description="corpus BLEU over sacrebleu", citation="", inputs_description="",
                                   features=_TEXT_PAIR)

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        import sacrebleu

        return {"bleu": sacrebleu.corpus_bleu(predictions, [references]).score / 100.0}


_VOWELS = re.compile(r"[aeiouy]+")
_WORD = re.compile(r"[A-Za-z]+")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")


def syllables(word: str) -> int:
    """Vowel groups, less a silent final e: the usual heuristic, within one syllable of a dictionary."""
    w = word.lower()
    n = len(_VOWELS.findall(w))
    if w.endswith("e") and not w.endswith(("le", "ee")) and n > 1:
        n -= 1
    return max(1, n)


def fk_grade(text: str) -> float:
    """Flesch-Kincaid grade level of one text (US school grade; lower reads easier)."""
    words = _WORD.findall(text)
    if not words:
        return 0.0
    sentences = max(1, len(_SENTENCE_END.findall(text.strip() + " ")))
    syl = sum(syllables(w) for w in words)
    return 0.39 * len(words) / sentences + 11.8 * syl / len(words) - 15.59


class Readability(evaluate.Metric):
    """Mean Flesch-Kincaid grade of the predictions (references are not used)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(description="Flesch-Kincaid grade", citation="", inputs_description="",
                                   features=datasets.Features({"predictions": datasets.Value("string")}))

    def _compute(self, predictions: list[str]) -> dict[str, float]:
        grades = [fk_grade(p) for p in predictions if p.strip()]
        return {"fk_grade": sum(grades) / len(grades) if grades else 0.0}


def text_scores(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """BLEU, ROUGE-1/2/L and the predictions' reading grade, in one dict."""
    return {**Bleu().compute(predictions=predictions, references=references),
            **Rouge().compute(predictions=predictions, references=references),
            **Readability().compute(predictions=predictions)}


def per_answer_scores(predictions: list[str], references: list[str]) -> dict[str, list[float | None]]:
    """The same scores answer by answer, for paired comparisons: sentence BLEU, ROUGE-1/2/L and the
    reading grade (None for an empty answer, which the suite's mean grade leaves out too). The means
    of the ROUGE lists are exactly text_scores' ROUGE; corpus BLEU is not a mean of sentence BLEU."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    out: dict[str, list[float | None]] = {k: [] for k in ("bleu", "rouge1", "rouge2", "rougeL", "fk_grade")}
    for pred, ref in zip(predictions, references, strict=True):
        rouge = scorer.score(ref, pred)
        for k in ("rouge1", "rouge2", "rougeL"):
            out[k].append(rouge[k].fmeasure)
        out["bleu"].append(sacrebleu.sentence_bleu(pred, [ref]).score / 100.0)
        out["fk_grade"].append(fk_grade(pred) if pred.strip() else None)
    return out
