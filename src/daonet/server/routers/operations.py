"""Health, readiness and Prometheus metrics: open by default (``/metrics`` takes the key with
``protect_metrics``)."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Depends
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse, Response

from ..metrics import CONTENT_TYPE_LATEST
from ..schemas import METRICS_RESPONSE, ErrorBody
from ..services import AppServices, get_services

__all__ = ["operations_router", "METRICS_PATH"]

METRICS_PATH = "/metrics"


def operations_router(metrics_auth: Sequence[DependsParam] = ()) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/v1/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @router.get("/v1/ready", responses={503: {"model": ErrorBody}})
    async def ready(services: AppServices = Depends(get_services)) -> Response:
        """Readiness: models loaded and batchers running."""
        if services.running:
            return JSONResponse({"status": "ready", "models": services.models.ids})
        return JSONResponse({"error": "not_ready", "detail": "the server is starting or stopping"}, 503)

    @router.get(METRICS_PATH, response_class=Response, responses=METRICS_RESPONSE, dependencies=list(metrics_auth))
    async def prometheus(services: AppServices = Depends(get_services)) -> Response:
        """Prometheus metrics (text format): requests by model/status, latency, batch sizes, payload sizes."""
        return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
