"""POST /v1/answer: a question in, an answer citing PubMed abstracts out."""
# No `from __future__ import annotations` here: FastAPI reads the routes' annotations at runtime,
# and the answer request model is a class built per app (its limits come from the settings).

import asyncio
import time
from typing import Any

from fastapi import APIRouter, HTTPException

from services.api.deps import RuntimeDep
from services.api.pipeline import Decision, Question
from services.api.schemas import (
    DISCLAIMER,
    AnswerResponse,
    Citation,
    Evidence,
    Verdict,
    answer_request_model,
    error_responses,
)
from shared.settings import Settings


def answer_router(settings: Settings) -> APIRouter:
    """The answer route of one app. Built per app, not at import: its request model carries that app's
    limits (question length, answer tokens), which FastAPI validates and shows in the OpenAPI spec."""
    router = APIRouter()
    AnswerRequest = answer_request_model(settings)  # noqa: N806  (a class, used as one below)
    default_new_tokens = min(settings.api_default_new_tokens, settings.api_max_new_tokens)

    @router.post("/v1/answer", response_model=AnswerResponse, summary="Answer a question, citing PubMed abstracts",
                 responses=error_responses(400, 413, 503))
    async def answer(body: AnswerRequest, runtime: RuntimeDep) -> AnswerResponse:  # type: ignore[valid-type]
        started = time.perf_counter()
        req: Any = body  # its class is built at run time, so the type checker cannot see its fields
        fut = runtime.batcher.submit(Question(req.question, req.max_new_tokens or default_new_tokens))
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(fut), timeout=settings.api_answer_timeout_s)
        except TimeoutError:
            raise HTTPException(503, "the model is busy; try again shortly", headers={"Retry-After": "5"}) from None
        return AnswerResponse(
            outcome=result.outcome, answer=result.text, generated=result.generated,
            verdict=_verdict(result.decision), evidence=[Evidence(pmid=q.pmid, quote=q.text) for q in result.quotes],
            citations=[Citation(pmid=h.pmid, title=h.title, relevance=round(h.score, 4)) for h in result.citations],
            referral_rule=result.referral_rule, model_version=result.version_id, answer_id=result.answer_id,
            disclaimer=DISCLAIMER,
            latency_ms=round((time.perf_counter() - started) * 1e3, 1))

    return router


def _verdict(decision: Decision | None) -> Verdict | None:
    if decision is None:
        return None
    calibration = decision.calibration
    return Verdict(label=decision.label, probability=decision.probabilities[decision.label],  # type: ignore[arg-type]
                   probabilities=decision.probabilities, calibrated=calibration is not None,
                   version_accuracy=calibration.accuracy if calibration else None,
                   majority_baseline=calibration.majority if calibration else None,
                   version_accuracy_items=calibration.items if calibration else None)
