"""One batch of questions: retrieve abstracts, generate answers, log the questions.

Runs in the batcher's single worker thread, so the embedding model, the LM and its tokenizer are
only ever called from one thread (besides the refresher, which shares EMBED_LOCK).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import col, delete

from services.api.metrics import ApiMetrics
from services.api.retrieval import Hit, RetrievalIndex
from services.api.serving import ModelServer
from shared.db import session_scope
from shared.settings import Settings
from shared.tables import CitationLog, QuestionLog, utcnow

log = logging.getLogger("medqa.api.pipeline")


@dataclass(frozen=True)
class Question:
    text: str
    max_new_tokens: int


@dataclass(frozen=True)
class Answer:
    text: str
    citations: list[Hit]
    version_id: int | None


def context_of(hits: Sequence[Hit]) -> str | None:
    """Best hit first: a prompt over the model's window loses the context's tail (shared/lm/prompts.py)."""
    return "\n\n".join(f"[PMID {h.pmid}] {h.title}\n{h.text}" for h in hits) or None


class Pipeline:
    def __init__(self, settings: Settings, server: ModelServer, index: RetrievalIndex, metrics: ApiMetrics) -> None:
        self.settings, self.server, self.index, self.metrics = settings, server, index, metrics

    def __call__(self, questions: Sequence[Question]) -> list[Answer]:
        hits = self.index.retrieve([q.text for q in questions], self.settings.api_retrieval_k)
        # One generate call per answer length: a left-padded batch shares one max_new_tokens.
        groups: dict[int, list[int]] = {}
        for i, q in enumerate(questions):
            groups.setdefault(q.max_new_tokens, []).append(i)
        answers: list[Answer | None] = [None] * len(questions)
        for max_new, idx in groups.items():
            texts, version = self.server.generate([(questions[i].text, context_of(hits[i])) for i in idx], max_new)
            self.metrics.batch_size.observe(len(idx))
            for i, text in zip(idx, texts, strict=True):
                answers[i] = Answer(text, hits[i], version)
        done = [a for a in answers if a is not None]
        self.metrics.retrieval_hits.inc(sum(len(a.citations) for a in done))
        self._log(questions, done)
        return done

    def _log(self, questions: Sequence[Question], answers: Sequence[Answer]) -> None:
        """The question log feeds question drift (monitor). Best effort: a store hiccup here must not
        cost the user an answer already generated. One transaction per batch; if the batch fails, each
        row is tried alone, so one bad row (a NUL byte PostgreSQL refuses) never drops the others:
        before, one client could blind question drift to a whole batch."""
        keep_text = self.settings.api_log_question_text
        rows = [dict(text=q.text if keep_text else None, n_chars=len(q.text), n_words=len(q.text.split()),
                     version_id=a.version_id, cited=[h.pmid for h in a.citations])
                for q, a in zip(questions, answers, strict=True)]
        if _store_log_rows(rows) or len(rows) == 1:
            return
        lost = sum(not _store_log_rows([row]) for row in rows)
        if lost:
            log.error("question log: %d of %d questions could not be logged", lost, len(rows))


def _store_log_rows(rows: list[dict]) -> bool:
    try:
        with session_scope() as session:
            for row in rows:
                session.add(QuestionLog(**{k: v for k, v in row.items() if k != "cited"}))
                # What users were shown, for lineage: was a paper retracted later ever cited?
                session.add_all(CitationLog(pmid=pmid, version_id=row["version_id"]) for pmid in row["cited"])
        return True
    except Exception:
        log.exception("could not log %d question(s)", len(rows))
        return False


def purge_questions(settings: Settings) -> int:
    """Delete question-log rows past the retention window; the periodic refresher calls this."""
    cutoff = utcnow() - timedelta(days=settings.api_question_retention_days)
    with session_scope() as session:
        stale = delete(QuestionLog).where(col(QuestionLog.asked_at) < cutoff)
        result = session.exec(stale)  # type: ignore[call-overload]
        n = int(result.rowcount or 0)
        session.exec(delete(CitationLog).where(col(CitationLog.asked_at) < cutoff))  # type: ignore[call-overload]
    if n:
        log.info("question log: %d rows older than %g days deleted", n, settings.api_question_retention_days)
    return n
