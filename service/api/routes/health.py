"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from .. import codecs, metrics
from ..deps import EngineDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    """The process is alive and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready: models loading/failed, or draining"}})
async def readyz(engine: EngineDep) -> Response:
    """Ready when every configured model is loaded and warm, and the server is not shutting down."""
    states = {name: entry.state for name, entry in engine.registry.entries.items()}
    ready = engine.ready
    body = {"ready": ready, "draining": engine.draining, "models": states}
    return codecs.json_response(body, status=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format 0.0.4",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def prometheus_metrics() -> Response:
    """Prometheus text exposition (aggregated across worker processes in multiprocess mode)."""
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)
