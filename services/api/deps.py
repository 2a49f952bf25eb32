"""What the routes depend on, in one place: the app's settings and metrics (set when the app is built),
its runtime state (model server, retrieval index, batcher, pipeline: built at start-up, stopped at
shutdown), and the operator-token guard.

Each dependency reads the app the request came to (`request.app.state`), never a module global, so
several apps in one process (tests, the bench) keep apart.
"""
# No `from __future__ import annotations` here: FastAPI reads the dependencies' annotations at runtime.

import hmac
import logging
import re
import threading
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from services.api.batcher import Batcher
from services.api.metrics import ApiMetrics
from services.api.pipeline import Answer, Pipeline, Question, purge_questions
from services.api.retrieval import RefreshCounts, RetrievalIndex
from services.api.serving import ModelServer
from shared.settings import Settings

log = logging.getLogger("medqa.api")


class Runtime:
    """What the app holds between requests: built at start-up, stopped at shutdown."""

    def __init__(self, settings: Settings, metrics: ApiMetrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.server = ModelServer(settings)
        self.index = RetrievalIndex(shared=settings.api_retrieval_index == "shared")
        self.pipeline = Pipeline(settings, self.server, self.index, metrics)
        batching = settings.api_batching
        self.batcher: Batcher[Question, Answer] = Batcher(
            self.pipeline, max_batch=settings.api_batch_max if batching else 1,
            wait_ms=settings.api_batch_wait_ms if batching else 0)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if not self.settings.api_fast_start:  # the sequential start-up (bench/cold_start.py's "before")
            self.server.start()
            self._version_gauge()
            self.index.refresh(embed_missing=False)  # cached vectors now; the refresher embeds the rest
            self.batcher.start()
            self._every(self.settings.api_champion_poll_s, self.sync_champion, "medqa-champion-poll", first=False)
            self._every(self.settings.api_refresh_s, self.refresh, "medqa-refresh", first=True)
            return
        # The index's cached vectors (a read of the store) load beside the model; the embedder, which the first
        # question needs, is loaded and run once right after it (two from_pretrained calls at once are not
        # safe: transformers patches process-wide state while it loads). The first answer waits for neither,
        # nor for embedding the abstracts that have no vector yet.
        import time

        from services.api.retrieval import warm_embedder

        side = threading.Thread(target=self._guarded, args=(lambda: self.index.refresh(embed_missing=False),
                                                            "medqa-index-load"), name="medqa-index-load", daemon=True)
        side.start()
        self.server.start()
        self._guarded(warm_embedder, "medqa-embedder-load")
        side.join()
        self._version_gauge()
        self.metrics.index_size.set(len(self.index))
        self.batcher.start()
        self._every(self.settings.api_champion_poll_s, self.sync_champion, "medqa-champion-poll", first=False)
        grace_s = 30.0  # without questions, the deferred work starts this long after start-up

        def after_first_answer() -> None:
            # On a small CPU box embedding a backlog (or merging a snapshot) beside the first question
            # doubles its answer time: both wait for the first answer.
            deadline = time.monotonic() + grace_s
            while not self.server.first_answer.wait(0.2):
                if self._stop.is_set() or time.monotonic() > deadline:
                    break
            if self._stop.is_set():
                return
            self._every(self.settings.api_refresh_s, self.refresh, "medqa-refresh", first=True)
            self._guarded(self.server.keep_snapshot, "medqa-merged-snapshot")

        deferred = threading.Thread(target=after_first_answer, name="medqa-deferred-start", daemon=True)
        deferred.start()
        self._threads.append(deferred)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.batcher.stop()

    def sync_champion(self) -> None:
        if self.server.sync_champion():
            self.metrics.swaps.inc()
        self._version_gauge()

    def _version_gauge(self) -> None:
        served = self.server.served
        self.metrics.model_version.set((served.version_id or 0) if served else 0)

    def refresh(self) -> RefreshCounts:
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


# async: FastAPI calls them on the event loop, where a plain def would cost each request (the async
# answer route included) a hop through the thread pool just to read an attribute.
async def app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def app_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


async def app_runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(app_settings)]
MetricsDep = Annotated[ApiMetrics, Depends(app_metrics)]
RuntimeDep = Annotated[Runtime, Depends(app_runtime)]


# ------------------------------------------------------------------------------ operator token
# Bearer-token guard of the operator endpoints (promote, rollback, refresh).
#
# No token configured means the endpoints are off (503), never open: an API started without thinking
# about it must not let anyone move the champion. The comparison is constant-time, so response
# timing does not leak how much of a guessed token was right.

_ACTOR_JUNK = re.compile(r"[^A-Za-z0-9_.@:+-]+")
MAX_ACTOR = 60  # AuditEvent.actor holds 100 characters, "api:" included


def actor_name(header: str | None) -> str:
    """The audit actor from X-Actor: printable name characters only, bounded, default "api"."""
    name = _ACTOR_JUNK.sub("-", (header or "").strip()).strip("-")[:MAX_ACTOR]
    return f"api:{name or 'api'}"


def require_operator(request: Request, settings: SettingsDep) -> str:
    """A FastAPI dependency that returns the audit actor, or refuses with 503/401/403."""
    if settings.api_token is None:
        raise HTTPException(503, "operator endpoints disabled: set MEDQA_API_TOKEN")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise HTTPException(401, "a bearer token is required (Authorization: Bearer <MEDQA_API_TOKEN>)",
                            headers={"WWW-Authenticate": "Bearer"})
    expected = settings.api_token.get_secret_value().encode()
    if not hmac.compare_digest(given.strip().encode(), expected):
        raise HTTPException(403, "wrong token")
    return actor_name(request.headers.get("x-actor"))


OperatorDep = Annotated[str, Depends(require_operator)]


# ------------------------------------------------------------------------------ reviewer token
# The review page (/review) takes reviewer tokens (MEDQA_API_REVIEWER_TOKENS, one per reviewer, naming
# them), never the operator's: a reviewer cannot move the champion, and an operator cannot rate blind.
# A browser sends the token as an HttpOnly, SameSite=Strict cookie set by the page's sign-in form; a
# script may send it as a bearer header.

REVIEWER_COOKIE = "medqa_reviewer"


class ReviewerRefused(Exception):
    """Why a request to /review is refused: the page shows its sign-in form with this message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def reviewer_for(token: str | None, settings: Settings) -> str:
    """The reviewer a token names, or ReviewerRefused (503 page off, 401 no token, 403 wrong token)."""
    reviewers = settings.reviewers()
    if not reviewers:
        raise ReviewerRefused(503, "the review page is off: set MEDQA_API_REVIEWER_TOKENS")
    given = (token or "").strip()
    if not given:
        raise ReviewerRefused(401, "sign in with your reviewer token")
    if settings.api_token is not None and hmac.compare_digest(given.encode(),
                                                              settings.api_token.get_secret_value().encode()):
        raise ReviewerRefused(403, "that is the operator token; the review page takes a reviewer token")
    for known, name in reviewers.items():
        if hmac.compare_digest(given.encode(), known.encode()):
            return name
    raise ReviewerRefused(403, "wrong reviewer token")


def reviewer_token(request: Request) -> str | None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        return given.strip()
    return request.cookies.get(REVIEWER_COOKIE)
