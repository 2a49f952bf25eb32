"""The model registry over HTTP: GET /v1/versions and /v1/champion for anyone; POST /v1/promote,
/v1/rollback and /v1/refresh for the operator (bearer token, services/api/deps.py)."""
# No `from __future__ import annotations` here: FastAPI reads the routes' annotations at runtime.

import math
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import IntegrityError

from services.api.deps import OperatorDep, Runtime, RuntimeDep, SettingsDep
from services.api.schemas import (
    AliasChange,
    ChampionOut,
    PromoteRequest,
    RefreshOut,
    RollbackRequest,
    VersionCard,
    VersionDetail,
    VersionOut,
    error_responses,
)
from shared import registry
from shared.db import session_scope, write_lock
from shared.lineage import version_card
from shared.tables import ModelVersion

router = APIRouter()
# The operator routes name the token first: FastAPI solves dependencies in signature order, so a refused
# caller gets its 503/401/403 before the app's runtime state is looked at.


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    # Strict JSON has no NaN or Infinity; a diverged run's perplexity must not turn a listing into a 500.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def _version_out(version: ModelVersion, champion_id: int | None) -> VersionOut:
    assert version.id is not None
    return VersionOut(id=version.id, model_line=version.model_line, status=version.status.value,
                      parent_version_id=version.parent_version_id, base_model=version.base_model,
                      sha256=version.sha256, created_at=version.created_at, metrics=_finite(version.metrics),
                      champion=version.id == champion_id)


def _version_id(ref: str | int, loc: tuple[str, str]) -> int:
    try:
        return registry.parse_version_id(ref)
    except registry.UnknownVersion as exc:  # beyond the store's ids
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:  # RegistryError, or int() refusing a digit-like character such as "²"
        detail = str(exc) if isinstance(exc, registry.RegistryError) else f"not a version id: {ref!r}"
        # In the documented 422 shape (a list of located errors), like every other invalid request.
        raise RequestValidationError([{"loc": loc, "msg": detail, "type": "value_error"}]) from None


@router.get("/v1/versions", response_model=list[VersionOut], summary="Model versions of this model line",
            responses=error_responses(400, 503))
def versions(settings: SettingsDep) -> list[VersionOut]:
    with session_scope() as session:
        champ = registry.champion(session, model_line=settings.model_line)
        return [_version_out(v, champ.id if champ else None)
                for v in registry.list_versions(session, model_line=settings.model_line)]


@router.get("/v1/versions/{ref}", response_model=VersionDetail, summary="One version and its data card",
            responses=error_responses(400, 404, 503))
def version_detail(ref: str, settings: SettingsDep) -> VersionDetail:
    version_id = _version_id(ref, ("path", "ref"))
    with session_scope() as session:
        try:
            version = registry.get_version(session, version_id=version_id)
        except registry.RegistryError as exc:
            raise HTTPException(404, str(exc)) from None
        champ = registry.champion(session, model_line=version.model_line)
        out = _version_out(version, champ.id if champ else None)
        return VersionDetail(**out.model_dump(), replaces_version_id=version.replaces_version_id,
                             card=VersionCard(**version_card(session, version_id)))


@router.get("/v1/champion", response_model=ChampionOut, summary="The champion version, and what is serving",
            responses=error_responses(400, 503))
def champion(settings: SettingsDep, runtime: RuntimeDep) -> ChampionOut:
    with session_scope() as session:
        champ = registry.champion(session, model_line=settings.model_line)
        if champ is None:
            raise HTTPException(404, f"model line {settings.model_line!r} has no champion yet; the bare base model "
                                     "is serving")
        out = _version_out(champ, champ.id)
    served = runtime.server.served
    return ChampionOut(model_line=settings.model_line, champion=out,
                       serving_version=served.version_id if served else None)


def _alias_change(runtime: Runtime, action: str, actor: str, reason: str, **kwargs: Any) -> AliasChange:
    try:
        with session_scope() as session:
            write_lock(session)  # before the checks below read: the alias change needs a current view
            for key in ("version_id", "to"):
                vid = kwargs.get(key)
                if vid is not None and session.get(ModelVersion, vid) is None:
                    raise HTTPException(404, f"unknown version v{vid}")
            event = getattr(registry, action)(session, actor=actor, reason=reason, **kwargs)
            doc = event.model_dump()
    except registry.RegistryError as exc:
        raise HTTPException(409, str(exc)) from None
    except IntegrityError:  # a concurrent change won the race (store errors: the app's handler, 503 or 409)
        raise HTTPException(409, "the alias changed concurrently; try again") from None
    runtime.sync_champion()  # this replica follows at once; the others at their next poll
    served = runtime.server.served
    return AliasChange(action=doc["action"], from_version=doc["from_version_id"], to_version=doc["to_version_id"],
                       audit_id=doc["id"], actor=doc["actor"], reason=doc["reason"],
                       serving_version=served.version_id if served else None)


@router.post("/v1/promote", response_model=AliasChange, summary="Make a version the champion (operator)",
             responses=error_responses(400, 401, 403, 404, 409, 413, 503))
def promote(body: PromoteRequest, actor: OperatorDep, runtime: RuntimeDep) -> AliasChange:
    version_id = _version_id(body.version, ("body", "version"))
    return _alias_change(runtime, "promote", actor, body.reason, version_id=version_id, force=body.force)


@router.post("/v1/rollback", response_model=AliasChange, summary="Point the champion back (operator)",
             responses=error_responses(400, 401, 403, 404, 409, 413, 503))
def rollback(body: RollbackRequest, actor: OperatorDep, settings: SettingsDep, runtime: RuntimeDep) -> AliasChange:
    to = _version_id(body.to, ("body", "to")) if body.to is not None else None
    return _alias_change(runtime, "rollback", actor, body.reason, model_line=settings.model_line, to=to)


@router.post("/v1/refresh", response_model=RefreshOut, summary="Refresh the retrieval index now (operator)",
             responses=error_responses(400, 401, 403, 503))
def refresh(actor: OperatorDep, runtime: RuntimeDep) -> RefreshOut:
    return RefreshOut(**runtime.refresh())
