"""The QA API: `create_app()` builds the FastAPI app; `medqa serve` runs it under uvicorn.

One process serves one model: the batcher's worker thread owns generation, a poller thread follows
the champion alias (hot swap, services/api/serving.py), and a refresher thread keeps the retrieval
index current and applies the question log's retention. Run one process per replica; replicas share
nothing but the store.
"""
# No `from __future__ import annotations` here: FastAPI reads the routes' annotations at runtime,
# and the answer request model is a class built per app (its limits come from the settings).

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.concurrency import run_in_threadpool

from services.api.auth import require_operator
from services.api.batcher import Batcher
from services.api.metrics import ApiMetrics
from services.api.middleware import BodyLimit, RequestMetrics
from services.api.pipeline import Answer, Pipeline, Question, purge_questions
from services.api.retrieval import RetrievalIndex
from services.api.schemas import (
    DISCLAIMER,
    MAX_VERSION_ID,
    AliasChange,
    AnswerResponse,
    ChampionOut,
    Citation,
    PromoteRequest,
    RefreshOut,
    RollbackRequest,
    VersionOut,
    answer_request_model,
)
from services.api.serving import ModelServer
from shared import registry
from shared.db import session_scope
from shared.settings import Settings, get_settings
from shared.tables import ModelVersion

log = logging.getLogger("medqa.api")
# Which setting bounds a field, named in the 422 message so a client knows what limit it hit.
LIMIT_SETTINGS = {"question": "MEDQA_API_MAX_QUESTION_CHARS", "max_new_tokens": "MEDQA_API_MAX_NEW_TOKENS"}


class Runtime:
    """What the app holds between requests: built at start-up, stopped at shutdown."""

    def __init__(self, settings: Settings, metrics: ApiMetrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.server = ModelServer(settings)
        self.index = RetrievalIndex()
        self.pipeline = Pipeline(settings, self.server, self.index, metrics)
        batching = settings.api_batching
        self.batcher: Batcher[Question, Answer] = Batcher(
            self.pipeline, max_batch=settings.api_batch_max if batching else 1,
            wait_ms=settings.api_batch_wait_ms if batching else 0)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.server.start()
        self._version_gauge()
        self.index.refresh(embed_missing=False)  # cached vectors now; the refresher embeds the rest
        self.batcher.start()
        self._every(self.settings.api_champion_poll_s, self.sync_champion, "medqa-champion-poll", first=False)
        self._every(self.settings.api_refresh_s, self.refresh, "medqa-refresh", first=True)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        self.batcher.stop()

    def sync_champion(self) -> None:
        if self.server.sync_champion():
            self.metrics.swaps.inc()
        self._version_gauge()

    def _version_gauge(self) -> None:
        served = self.server.served
        self.metrics.model_version.set((served.version_id or 0) if served else 0)

    def refresh(self) -> dict[str, int]:
        done = self.index.refresh()
        self.metrics.index_size.set(len(self.index))
        purge_questions(self.settings)
        return done

    def _every(self, seconds: float, fn: Callable[[], object], name: str, *, first: bool) -> None:
        def loop() -> None:
            if first and not self._stop.is_set():
                self._guarded(fn, name)
            while not self._stop.wait(seconds):
                self._guarded(fn, name)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    @staticmethod
    def _guarded(fn: Callable[[], object], name: str) -> None:
        try:
            fn()
        except Exception:  # a failed round is logged; the next one tries again
            log.exception("%s failed", name)


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


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    # Strict JSON has no NaN or Infinity; a diverged run's perplexity must not turn a listing into a 500.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def _version_out(v: ModelVersion, champion_id: int | None) -> VersionOut:
    assert v.id is not None
    return VersionOut(id=v.id, model_line=v.model_line, status=v.status.value, parent_version_id=v.parent_version_id,
                      base_model=v.base_model, sha256=v.sha256, created_at=v.created_at, metrics=_finite(v.metrics),
                      champion=v.id == champion_id)


def _version_id(ref: str | int) -> int:
    try:
        vid = registry.parse_version_id(ref)
    except ValueError as exc:  # RegistryError, or int() refusing a digit-like character such as "²"
        detail = str(exc) if isinstance(exc, registry.RegistryError) else f"not a version id: {ref!r}"
        raise HTTPException(422, detail) from None
    if vid > MAX_VERSION_ID:
        raise HTTPException(404, f"unknown version v{vid}")
    return vid


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def create_app(settings: Settings | None = None) -> FastAPI:
    s = settings or get_settings()
    metrics = ApiMetrics()
    AnswerRequest = answer_request_model(s)  # noqa: N806  (a class, used as one below)
    operator = require_operator(s)
    default_new_tokens = min(s.api_default_new_tokens, s.api_max_new_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        runtime = Runtime(s, metrics)
        await run_in_threadpool(runtime.start)  # loads the model: seconds; no request is served before
        app.state.runtime = runtime
        try:
            yield
        finally:
            await run_in_threadpool(runtime.stop)

    app = FastAPI(title="MedQA-CL QA API", version="1", lifespan=lifespan,
                  description="Answers health questions from recent PubMed abstracts. Not medical advice.")
    app.state.settings, app.state.metrics = s, metrics
    app.add_middleware(BodyLimit, max_bytes=s.api_max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # added last = outermost: it also counts 413s

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content=_validation_body(exc.errors()))

    @app.post("/v1/answer", response_model=AnswerResponse, summary="Answer a question, citing PubMed abstracts")
    async def answer(body: AnswerRequest, request: Request) -> AnswerResponse:  # type: ignore[valid-type]
        started = time.perf_counter()
        req: Any = body  # its class is built at run time, so the type checker cannot see its fields
        fut = _runtime(request).batcher.submit(Question(req.question, req.max_new_tokens or default_new_tokens))
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(fut), timeout=s.api_answer_timeout_s)
        except TimeoutError:
            raise HTTPException(503, "the model is busy; try again shortly", headers={"Retry-After": "5"}) from None
        return AnswerResponse(answer=result.text, citations=[Citation(pmid=h.pmid, title=h.title)
                                                             for h in result.citations],
                              model_version=result.version_id, disclaimer=DISCLAIMER,
                              latency_ms=round((time.perf_counter() - started) * 1e3, 1))

    @app.get("/v1/versions", response_model=list[VersionOut], summary="Model versions of this model line")
    def versions() -> list[VersionOut]:
        with session_scope() as ss:
            champ = registry.champion(ss, model_line=s.model_line)
            return [_version_out(v, champ.id if champ else None)
                    for v in registry.list_versions(ss, model_line=s.model_line)]

    @app.get("/v1/champion", response_model=ChampionOut, summary="The champion version, and what is serving")
    def champion(request: Request) -> ChampionOut:
        with session_scope() as ss:
            champ = registry.champion(ss, model_line=s.model_line)
            if champ is None:
                raise HTTPException(404, f"model line {s.model_line!r} has no champion yet; the bare base model "
                                         "is serving")
            out = _version_out(champ, champ.id)
        served = _runtime(request).server.served
        return ChampionOut(model_line=s.model_line, champion=out, serving_version=served.version_id if served else None)

    @app.get("/healthz", summary="Liveness and what is serving")
    def healthz(request: Request) -> JSONResponse:
        rt = _runtime(request)
        served = rt.server.served
        doc = {"serving_version": served.version_id if served else None,
               "base_model": served.base_model if served else None, "index_abstracts": len(rt.index),
               "last_swap_error": rt.server.last_error}
        try:
            with session_scope() as ss:
                ss.connection().exec_driver_sql("SELECT 1")
        except Exception as exc:
            return JSONResponse(status_code=503, content={"status": f"store unreachable: {type(exc).__name__}", **doc})
        return JSONResponse({"status": "ok", **doc})

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def alias_change(request: Request, action: str, actor: str, reason: str, **kwargs: Any) -> AliasChange:
        try:
            with session_scope() as ss:
                for key in ("version_id", "to"):
                    vid = kwargs.get(key)
                    if vid is not None and ss.get(ModelVersion, vid) is None:
                        raise HTTPException(404, f"unknown version v{vid}")
                event = getattr(registry, action)(ss, actor=actor, reason=reason, **kwargs)
                doc = event.model_dump()
        except registry.RegistryError as exc:
            raise HTTPException(409, str(exc)) from None
        except (IntegrityError, OperationalError) as exc:  # a concurrent change won the race (or the lock wait)
            raise HTTPException(409, f"the alias changed concurrently; try again ({type(exc).__name__})") from None
        rt = _runtime(request)
        rt.sync_champion()  # this replica follows at once; the others at their next poll
        served = rt.server.served
        return AliasChange(action=doc["action"], from_version=doc["from_version_id"], to_version=doc["to_version_id"],
                           audit_id=doc["id"], actor=doc["actor"], reason=doc["reason"],
                           serving_version=served.version_id if served else None)

    @app.post("/v1/promote", response_model=AliasChange, summary="Make a version the champion (operator)")
    def promote(body: PromoteRequest, request: Request, actor: str = Depends(operator)) -> AliasChange:
        return alias_change(request, "promote", actor, body.reason, version_id=_version_id(body.version),
                            force=body.force)

    @app.post("/v1/rollback", response_model=AliasChange, summary="Point the champion back (operator)")
    def rollback(body: RollbackRequest, request: Request, actor: str = Depends(operator)) -> AliasChange:
        to = _version_id(body.to) if body.to is not None else None
        return alias_change(request, "rollback", actor, body.reason, model_line=s.model_line, to=to)

    @app.post("/v1/refresh", response_model=RefreshOut, summary="Refresh the retrieval index now (operator)")
    def refresh(request: Request, actor: str = Depends(operator)) -> RefreshOut:
        return RefreshOut(**_runtime(request).refresh())

    return app
