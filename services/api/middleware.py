"""Plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which wraps bodies in extra tasks):
a request-body limit, credentials refused in query strings, and request metrics."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from services.api.metrics import ApiMetrics

Scope = dict[str, Any]
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
CLIENT_CLOSED = 499  # nginx's code for a request its client abandoned before the answer


async def _reply(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# Query parameters that carry credentials by convention (OAuth's access_token, api_key, ...).
CREDENTIAL_PARAMS = frozenset({"token", "access_token", "api_token", "api_key", "apikey", "key", "password",
                               "secret", "auth", "authorization"})


class NoQueryCredentials:
    """400 for a request with a credential in its query string: URLs end up in access logs, proxies and
    browser history. The query string is blanked in the request's scope before anything else reads it,
    so uvicorn's access line (written from the same scope) never holds the secret either."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            names = {part.split(b"=", 1)[0].decode("latin-1").lower()
                     for part in scope["query_string"].split(b"&") if part}
            if names & CREDENTIAL_PARAMS:
                scope["query_string"] = b"credentials-removed"
                await _reply(send, 400, "credentials are not accepted in the query string; send them in the "
                                        "Authorization header (Authorization: Bearer <token>)")
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a body over `max_bytes`: refused on its Content-Length before reading, and counted as it
    arrives too (chunked uploads declare no length, and a declared length can lie). The body is read
    here whole (it is small by definition) and replayed to the app."""

    def __init__(self, app: Any, *, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body over the limit of {self.max_bytes} bytes (MEDQA_API_MAX_BODY_BYTES)"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _reply(send, 400, "bad Content-Length header")
                return
            if int(declared) > self.max_bytes:
                await _reply(send, 413, too_large)
                return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; nobody to answer
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await _reply(send, 413, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: disconnect notices, as the server sends them

        await self.app(scope, replay, send)


class RequestMetrics:
    """Counts every request by route template (never the raw path: random paths would make a new
    time series each) and status, and times it."""

    def __init__(self, app: Any, *, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status, responded, left = time.perf_counter(), 500, False, False

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
            await send(message)

        async def receive_watched() -> dict[str, Any]:
            nonlocal left
            message = await receive()
            left = left or message["type"] == "http.disconnect"
            return dict(message)

        try:
            await self.app(scope, receive_watched, send_status)
        except asyncio.CancelledError:  # the server cancels a request whose client went away
            left = True
            raise
        finally:
            if left and not responded:
                status = CLIENT_CLOSED  # not a server error: nobody was left to answer
            # The router writes the matched route into this same scope dict.
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(endpoint, method if method in METHODS else "other", str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
