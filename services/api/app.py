"""The QA API: `create_app()` builds the FastAPI app; `medqa serve` runs it under uvicorn.

One process serves one model: the batcher's worker thread owns generation, a poller thread follows
the champion alias (hot swap, services/api/serving.py), and a refresher thread keeps the retrieval
index current and applies the question log's retention. Run one process per replica; replicas share
nothing but the store.

What the routes depend on is in services/api/deps.py (the runtime state and its threads among it),
the routes in services/api/routes/; this module only puts them together.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool

from services.api.deps import Runtime
from services.api.metrics import ApiMetrics
from services.api.middleware import BodyLimit, NoQueryCredentials, RequestMetrics
from services.api.routes import feedback, health, registry, review
from services.api.routes.answer import answer_router
from shared.db import store_unavailable
from shared.settings import Settings, get_settings

# Which setting bounds a field, named in the 422 message so a client knows what limit it hit.
LIMIT_SETTINGS = {"question": "MEDQA_API_MAX_QUESTION_CHARS", "max_new_tokens": "MEDQA_API_MAX_NEW_TOKENS"}


def _validation_body(errors: Any) -> dict[str, Any]:
    """422 body: each error's location and message (never the input back: it may be 16 KiB of text)."""
    items = []
    for e in errors:
        loc = [str(x) for x in e.get("loc", ())]
        msg = str(e.get("msg", "invalid value"))
        if e.get("type") in ("string_too_long", "less_than_equal") and loc and loc[-1] in LIMIT_SETTINGS:
            msg += f" ({LIMIT_SETTINGS[loc[-1]]})"
        items.append({"loc": loc, "msg": msg, "type": str(e.get("type", ""))})
    return {"detail": items, "message": "; ".join(f"{'.'.join(i['loc'])}: {i['msg']}" for i in items)}


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content=_validation_body(exc.errors()))


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    """503 with the reason when the store is down (a client may retry later); 409 for a lock conflict."""
    reason = store_unavailable(exc)
    if reason is None:
        return JSONResponse(status_code=409, content={"detail": "another change held the store; try again"})
    return JSONResponse(status_code=503, headers={"Retry-After": "5"},
                        content={"detail": f"the store is unavailable: {reason}"})


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    runtime = Runtime(app.state.settings, app.state.metrics)
    await run_in_threadpool(runtime.start)  # loads the model: seconds; no request is served before
    app.state.runtime = runtime
    try:
        yield
    finally:
        await run_in_threadpool(runtime.stop)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = ApiMetrics()
    app = FastAPI(title="MedQA-CL QA API", version="1", lifespan=_lifespan,
                  description="Answers health questions from recent PubMed abstracts. Not medical advice.")
    app.state.settings, app.state.metrics = settings, metrics
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(NoQueryCredentials)
    app.add_middleware(RequestMetrics, metrics=metrics)  # added last = outermost: it also counts 413s
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(OperationalError, _store_error)
    app.add_exception_handler(InterfaceError, _store_error)
    app.include_router(answer_router(settings))
    app.include_router(registry.router)
    app.include_router(feedback.router)
    app.include_router(review.router)
    app.include_router(health.router)
    return app
