"""Bearer-token guard of the operator endpoints (promote, rollback, refresh).

No token configured means the endpoints are off (503), never open: an API started without thinking
about it must not let anyone move the champion. The comparison is constant-time, so response
timing does not leak how much of a guessed token was right.
"""

from __future__ import annotations

import hmac
import re

from fastapi import HTTPException, Request

from shared.settings import Settings

_ACTOR_JUNK = re.compile(r"[^A-Za-z0-9_.@:+-]+")
MAX_ACTOR = 60  # AuditEvent.actor holds 100 characters, "api:" included


def actor_name(header: str | None) -> str:
    """The audit actor from X-Actor: printable name characters only, bounded, default "api"."""
    name = _ACTOR_JUNK.sub("-", (header or "").strip()).strip("-")[:MAX_ACTOR]
    return f"api:{name or 'api'}"


def require_operator(settings: Settings):  # type: ignore[no-untyped-def]
    """A FastAPI dependency that returns the audit actor, or refuses with 503/401/403."""

    def check(request: Request) -> str:
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

    return check
