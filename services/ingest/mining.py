"""QA items mined from new abstracts, as PubMedQA's artificial set (PQA-A, Jin et al. 2019) was built.

An abstract qualifies when its title is a question and its structured abstract has a conclusion:
question = the title, context = the abstract without its conclusion, long answer = the conclusion,
and a yes/no decision from a rule on the conclusion's first sentence (where authors state their
answer). The rule abstains where its evidence is weak, so only confident labels are trained on.

The rule was written on the train share of the 500 expert-labelled PubMedQA items (their LONG_ANSWER
is the conclusion) and measured on all 500 by `bench/mining.py`: "maybe" is never right often
enough to be trained on (13% precision), so the rule only says yes or no. PRECISION holds what it
measured per label; it is stored with every item as its label confidence. A change to the rules must
bump RULE_VERSION and re-measure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlmodel import Session, col, delete, insert

from shared.lm.prompts import qa_answer
from shared.tables import MinedQA, utcnow

RULE_VERSION = 1
# Measured by bench/mining.py on the 500 expert-labelled PubMedQA items (rule version 1).
PRECISION = {"yes": 0.78, "no": 0.76}

_CONCLUSION = re.compile(r"^(?:CONCLUSIONS?|CONCLUSIONS? AND [A-Z ]+|INTERPRETATION)\s*:\s*", re.I)
_LABELLED = re.compile(r"^[A-Z][A-Z ,/&()-]{2,60}:\s")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")
# A negated finding: "did not improve", "no significant difference", "failed to" ...
_NEGATED = re.compile(
    r"\b(?:(?:did|does|do|was|were|is|are|could|can|has|have|had|would|will|should) not"
    r"|didn't|doesn't|don't|isn't|aren't|wasn't|weren't|cannot|can't"
    r"|no (?:significant|statistically|differences?|associations?|effects?|evidence|benefit|advantage"
    r"|relationship|correlation|role|impact|increase|improvement|changes?|clear|major|additional|better"
    r"|greater|added|predictive|value)"
    r"|not (?:significantly|associated|related|correlated|improve|reduce|increase|affect|predict|influence"
    r"|superior|different|necessary|justified|effective|useful|recommended|a |an |the )"
    r"|neither|failed to|fails to|unable to|no longer|not be)\b", re.I)
# Hedging: the authors do not commit to an answer.
_HEDGED = re.compile(
    r"\b(?:may|might|possibl[ey]|unclear|uncertain|remains? (?:to be|unclear|controversial)|inconclusive"
    r"|controversial|further (?:studies|research|investigation|trials)|larger (?:studies|trials)|warrant)\b",
    re.I)
# An affirmed finding.
_AFFIRMED = re.compile(
    r"\b(?:significant(?:ly)?|associated with|effective|improve[sd]?|reduce[sd]?|increase[sd]?"
    r"|predict(?:s|ed|ive|or)|is (?:a |an )?(?:safe|feasible|useful|valuable|reliable|accurate)|can be"
    r"|should be|superior|correlate[sd]?|higher|lower|better|benefit)\b", re.I)


@dataclass(frozen=True, slots=True)
class MinedItem:
    pmid: int
    question: str
    context: str
    long_answer: str
    decision: str  # yes | no
    confidence: float  # the rule's measured precision for this label
    rule_version: int = RULE_VERSION

    @property
    def answer(self) -> str:
        """The answer in the trainer's QA format (PubMedQA's: long answer, then the decision line)."""
        return qa_answer(self.long_answer, self.decision)


def label_conclusion(conclusion: str) -> str | None:
    """yes or no from the conclusion's first sentence; None where the rule abstains (hedged, mixed,
    or no clear finding)."""
    first = _SENTENCE_END.split(conclusion.strip(), maxsplit=1)[0]
    negated, hedged = bool(_NEGATED.search(first)), bool(_HEDGED.search(first))
    if hedged:
        return None
    if negated:
        return "no"
    return "yes" if _AFFIRMED.search(first) else None


def split_conclusion(abstract: str) -> tuple[str, str] | None:
    """(abstract without its conclusion, the conclusion) of a structured abstract ("LABEL: text"
    lines, as ingest stores them); None when no section is labelled as a conclusion."""
    lines = [line for line in abstract.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        match = _CONCLUSION.match(line)
        if match:
            rest = [x for x in lines[i + 1:] if not _LABELLED.match(x)]  # unlabelled tail belongs to it
            conclusion = " ".join([line[match.end():], *rest]).strip()
            context = "\n".join(lines[:i] + [x for x in lines[i + 1:] if _LABELLED.match(x)]).strip()
            return (context, conclusion) if context and conclusion else None
    return None


def mine(pmid: int, title: str, abstract: str) -> MinedItem | None:
    """The QA item an abstract yields, or None when it does not qualify or the rule abstains."""
    question = " ".join(title.split())
    if not question.endswith("?"):
        return None
    parts = split_conclusion(abstract)
    if parts is None:
        return None
    context, conclusion = parts
    decision = label_conclusion(conclusion)
    if decision is None:
        return None
    return MinedItem(pmid=pmid, question=question, context=context, long_answer=conclusion, decision=decision,
                     confidence=PRECISION[decision])


def store_mined(session: Session, abstracts: Sequence[tuple[int, str, str, str]]) -> int:
    """Mine (pmid, title, abstract text, content hash) rows and store their items, replacing what
    earlier text of the same PMIDs yielded (a revised abstract is mined again: its old item, if the new
    text yields none, goes). Returns the number of items stored."""
    if not abstracts:
        return 0
    session.exec(delete(MinedQA).where(col(MinedQA.pmid).in_([a[0] for a in abstracts])))
    now = utcnow()
    rows = []
    for pmid, title, text, digest in abstracts:
        item = mine(pmid, title, text)
        if item is not None:
            rows.append({"pmid": pmid, "question": item.question, "context": item.context,
                         "long_answer": item.long_answer, "decision": item.decision,
                         "confidence": item.confidence, "rule_version": item.rule_version,
                         "content_hash": digest, "mined_at": now})
    if rows:
        session.exec(insert(MinedQA), params=rows)
    return len(rows)
