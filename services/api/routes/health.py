"""GET /healthz (liveness, and what is serving) and GET /metrics (Prometheus)."""
# No `from __future__ import annotations` here: FastAPI reads the routes' annotations at runtime.

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from services.api.deps import MetricsDep, RuntimeDep
from shared.db import session_scope

router = APIRouter()


@router.get("/healthz", summary="Liveness and what is serving")
def healthz(runtime: RuntimeDep) -> JSONResponse:
    served = runtime.server.served
    doc = {"serving_version": served.version_id if served else None,
           "base_model": served.base_model if served else None, "index_abstracts": len(runtime.index),
           "retrieval_index_version": runtime.index.shared_version,
           "last_swap_error": runtime.server.last_error or runtime.index.last_version_error}
    try:
        with session_scope() as session:
            session.connection().exec_driver_sql("SELECT 1")
    except Exception as exc:
        return JSONResponse(status_code=503, content={"status": f"store unreachable: {type(exc).__name__}", **doc})
    return JSONResponse({"status": "ok", **doc})


@router.get("/metrics", include_in_schema=False)
def prometheus(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
