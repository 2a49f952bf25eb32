"""One batch of questions: refer, retrieve, abstain or answer with quoted evidence, log the questions.

A question asking for a personal diagnosis or dose is referred to a clinician (services/api/safety.py).
The others are answered only from evidence: abstracts over the relevance floor that have a sentence
supporting the answer, quoted verbatim. With none, the answer says so, with no citation and no
generated text. A yes/no research question also gets the model's calibrated yes/no/maybe verdict.

Runs in the batcher's single worker thread, so the embedding model, the LM and its tokenizer are
only ever called from one thread (besides the refresher, which shares EMBED_LOCK).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from sqlmodel import col, delete

from services.api.metrics import ApiMetrics
from services.api.retrieval import Hit, RetrievalIndex
from services.api.safety import referral
from services.api.schemas import NO_EVIDENCE
from services.api.serving import ModelServer
from shared import review
from shared.db import session_scope
from shared.evidence import QUOTES_PER_ABSTRACT, Quote, grounded
from shared.queries import VerdictCalibration
from shared.review import new_answer_id
from shared.settings import Settings
from shared.tables import AnswerLog, CitationLog, QuestionLog, utcnow

log = logging.getLogger("medqa.api.pipeline")


@dataclass(frozen=True)
class Question:
    text: str
    max_new_tokens: int


@dataclass(frozen=True)
class Decision:
    label: str
    probabilities: dict[str, float]
    calibration: VerdictCalibration | None  # None: raw likelihoods


@dataclass(frozen=True)
class Answer:
    outcome: Literal["answered", "no_evidence", "referred"]  # schemas.AnswerResponse says what each means
    text: str
    citations: list[Hit]
    version_id: int | None
    quotes: list[Quote] = field(default_factory=list)
    decision: Decision | None = None
    referral_rule: str | None = None
    answer_id: str = field(default_factory=new_answer_id)  # what feedback names (POST /v1/feedback)

    @property
    def generated(self) -> bool:
        return self.outcome == "answered"


# A research question that a yes/no/maybe verdict answers starts with an auxiliary verb ("Does metformin
# reduce...?", "Is surgery better...?"); "What/How/Why" questions get quoted evidence and a summary only.
YES_NO_START = re.compile(r"^\s*(is|are|was|were|does|do|did|can|could|should|has|have|had|will|would|may|might|"
                          r"must|shall)\b", re.IGNORECASE)


def context_of(hits: Sequence[Hit]) -> str | None:
    """Best hit first: a prompt over the model's window loses the context's tail (shared/lm/prompts.py)."""
    return "\n\n".join(f"[PMID {h.pmid}] {h.title}\n{h.text}" for h in hits) or None


class Pipeline:
    def __init__(self, settings: Settings, server: ModelServer, index: RetrievalIndex, metrics: ApiMetrics) -> None:
        self.settings, self.server, self.index, self.metrics = settings, server, index, metrics
        self._rng = random.Random()  # the review queue's uniform sample

    def __call__(self, questions: Sequence[Question]) -> list[Answer]:
        answers: list[Answer | None] = [None] * len(questions)
        asked: list[int] = []
        for i, q in enumerate(questions):
            rule = referral(q.text)
            if rule is not None:  # a personal diagnosis or dose: no retrieval, no generated text
                answers[i] = Answer("referred", rule.message, [], self._serving(), referral_rule=rule.rule)
            else:
                asked.append(i)
        found = self.index.retrieve([questions[i].text for i in asked], self.settings.api_retrieval_k,
                                    ranker=self.settings.api_retriever,
                                    min_relevance=self.settings.api_min_relevance,
                                    margin=self.settings.api_relevance_margin)
        evidence: dict[int, tuple[list[Hit], list[Quote]]] = {}
        for i, hits in zip(asked, found, strict=True):
            cited, quotes = grounded(questions[i].text, hits, QUOTES_PER_ABSTRACT,
                                     min_coverage=self.settings.api_min_term_coverage)
            if cited:
                evidence[i] = (cited, quotes)
            else:
                answers[i] = Answer("no_evidence", NO_EVIDENCE, [], self._serving())
        self._answer(questions, evidence, answers)
        done = [a for a in answers if a is not None]
        self.metrics.retrieval_hits.inc(sum(len(a.citations) for a in done))
        self._log(questions, done)
        # An abstention or referral answers too: the deferred start-up work need not wait out its grace.
        self.server.first_answer.set()
        return done

    def _serving(self) -> int | None:
        served = self.server.served
        return served.version_id if served is not None else None

    def _answer(self, questions: Sequence[Question], evidence: dict[int, tuple[list[Hit], list[Quote]]],
                answers: list[Answer | None]) -> None:
        """Summaries (one generate call per answer length: a left-padded batch shares one max_new_tokens)
        and, for yes/no questions, verdicts, over the cited abstracts only."""
        groups: dict[int, list[int]] = {}
        for i in evidence:
            groups.setdefault(questions[i].max_new_tokens, []).append(i)
        yes_no = [i for i in evidence if YES_NO_START.match(questions[i].text)]
        decided: dict[int, Decision] = {}
        if yes_no:
            verdicts, calibration = self.server.decide([(questions[i].text, context_of(evidence[i][0]))
                                                       for i in yes_no])
            decided = {i: Decision(label, probs, calibration)
                       for i, (label, probs) in zip(yes_no, verdicts, strict=True)}
        for max_new, idx in groups.items():
            texts, version = self.server.generate([(questions[i].text, context_of(evidence[i][0])) for i in idx],
                                                  max_new)
            self.metrics.batch_size.observe(len(idx))
            for i, text in zip(idx, texts, strict=True):
                cited, quotes = evidence[i]
                answers[i] = Answer("answered", text, cited, version, quotes, decided.get(i))

    def _log(self, questions: Sequence[Question], answers: Sequence[Answer]) -> None:
        """The question log feeds question drift (monitor). Best effort: a store hiccup here must not
        cost the user an answer already generated. One transaction per batch; if the batch fails, each
        row is tried alone, so one bad row (a NUL byte PostgreSQL refuses) never drops the others:
        before, one client could blind question drift to a whole batch."""
        keep_text = self.settings.api_log_question_text
        rows = [dict(text=q.text if keep_text else None, n_chars=len(q.text), n_words=len(q.text.split()),
                     version_id=a.version_id, cited=[h.pmid for h in a.citations], answer=_answer_row(a, q, keep_text))
                for q, a in zip(questions, answers, strict=True)]
        if self._store_log_rows(rows) or len(rows) == 1:
            return
        lost = sum(not self._store_log_rows([row]) for row in rows)
        if lost:
            log.error("question log: %d of %d questions could not be logged", lost, len(rows))


    def _store_log_rows(self, rows: list[dict]) -> bool:
        try:
            with session_scope() as session:
                for row in rows:
                    session.add(QuestionLog(**{k: v for k, v in row.items() if k not in ("cited", "answer")}))
                    # What users were shown, for lineage: was a paper retracted later ever cited?
                    session.add_all(CitationLog(pmid=pmid, version_id=row["version_id"]) for pmid in row["cited"])
                    # The answer by its id, for feedback; uncertain ones (and a uniform sample) go to review.
                    answer = AnswerLog(**row["answer"])
                    session.add(answer)
                    session.flush()
                    review.queue_answer(session, answer, self.settings, self._rng)
            return True
        except Exception:
            log.exception("could not log %d question(s)", len(rows))
            return False


def _answer_row(a: Answer, q: Question, keep_text: bool) -> dict:
    verdict = None if a.decision is None else {"label": a.decision.label, "probabilities": a.decision.probabilities}
    return dict(answer_id=a.answer_id, question=q.text if keep_text else None, answer=a.text if keep_text else None,
                outcome=a.outcome, version_id=a.version_id, citations=[h.pmid for h in a.citations],
                evidence=[{"pmid": x.pmid, "quote": x.text} for x in a.quotes], verdict=verdict)


def purge_questions(settings: Settings) -> int:
    """Delete question-log rows past the retention window; the periodic refresher calls this."""
    cutoff = utcnow() - timedelta(days=settings.api_question_retention_days)
    with session_scope() as session:
        stale = delete(QuestionLog).where(col(QuestionLog.asked_at) < cutoff)
        result = session.exec(stale)  # type: ignore[call-overload]
        n = int(result.rowcount or 0)
        session.exec(delete(CitationLog).where(col(CitationLog.asked_at) < cutoff))  # type: ignore[call-overload]
        session.exec(delete(AnswerLog).where(col(AnswerLog.asked_at) < cutoff))  # type: ignore[call-overload]
    if n:
        log.info("question log: %d rows older than %g days deleted", n, settings.api_question_retention_days)
    return n
