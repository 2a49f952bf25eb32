"""POST /v1/feedback: a user's thumbs up or down on an answer, by its id, with an optional correction.

Feedback never trains anything: a thumbs-down puts the answer in the expert review queue, and a
correction becomes a training example only after an expert rates it correct (shared/review.py).
The rate limit counts the client's feedback rows in the store, so it holds across API replicas.
"""
# No `from __future__ import annotations` here: FastAPI reads the routes' annotations at runtime.

import hashlib
from datetime import timedelta

from fastapi import APIRouter, HTTPException, Request
from sqlmodel import col, func, select

from services.api.deps import SettingsDep
from services.api.schemas import FeedbackOut, FeedbackRequest, error_responses
from shared import review
from shared.db import session_scope
from shared.tables import AnswerLog, Feedback, utcnow

router = APIRouter()


def client_key(request: Request) -> str:
    """The client as stored: a hash of its address, never the address itself."""
    host = request.client.host if request.client else "unknown"
    return hashlib.sha256(f"medqa-feedback:{host}".encode()).hexdigest()[:32]


@router.post("/v1/feedback", response_model=FeedbackOut, status_code=201, summary="Rate an answer",
             responses=error_responses(400, 404, 413, 429, 503))
def feedback(body: FeedbackRequest, request: Request, settings: SettingsDep) -> FeedbackOut:
    client = client_key(request)
    with session_scope() as session:
        recent = session.exec(select(func.count()).select_from(Feedback).where(
            Feedback.client == client, col(Feedback.created_at) >= utcnow() - timedelta(minutes=1))).one()
        if recent >= settings.api_feedback_per_minute:
            raise HTTPException(429, "too much feedback from this client; try again in a minute",
                                headers={"Retry-After": "60"})
        answer = session.exec(select(AnswerLog).where(AnswerLog.answer_id == body.answer_id)).first()
        if answer is None:
            raise HTTPException(404, "unknown answer id (answers are kept for the question log's retention)")
        row = Feedback(answer_id=body.answer_id, rating=body.rating, correction=body.correction,
                       reason=body.reason, client=client)
        session.add(row)
        session.flush()
        queued = review.queue_feedback(session, row, answer)
        assert row.id is not None
        return FeedbackOut(feedback_id=row.id, answer_id=body.answer_id,
                           queued_for_review=bool(queued) or body.rating == "down" and answer.question is not None)
