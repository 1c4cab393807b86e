"""``/v1/models``: the served models and predictions (every route here needs the API key when keys are on)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse, Response

from ...errors import MalformedPayloadError
from ...wire import SparsePayload
from ..batching import Batcher, MicroBatcher
from ..body import read_body
from ..config import ServerConfig
from ..http_errors import ApiError, as_api_error
from ..metrics import ServerMetrics
from ..model import ModelRegistry, ServerModel, UnknownModelError
from ..schemas import ERRORS, JSON, OCTET, PREDICT_BODY, ModelInfo, ModelList, PredictResponse
from ..services import AppServices, get_registry, get_services

__all__ = ["models_router", "micro_batcher", "PROTECTED_PREFIX"]

logger = logging.getLogger("daonet.server")
PROTECTED_PREFIX = "/v1/models"  # the key gate (daonet.server.auth) guards every path under it


def _forward(model: ServerModel, payloads: list[SparsePayload]) -> np.ndarray:
    """One batched forward pass (runs in the batcher's worker thread)."""
    return model.predict_proba(payloads)


def micro_batcher(config: ServerConfig, model: ServerModel, metrics: ServerMetrics) -> Batcher[SparsePayload, Any]:
    """The single-process batching: daonet's own :class:`MicroBatcher`, one per model."""
    return MicroBatcher(partial(_forward, model), max_batch_size=config.max_batch_size,
                        max_wait_ms=config.max_wait_ms, on_batch=metrics.batch_observer(model.model_id),
                        name=f"batcher-{model.model_id}")


def _model_info(model: ServerModel) -> dict[str, Any]:
    return {**model.info(), "n_outputs": model.n_outputs}


def _parse(model: ServerModel, media: str, body: bytes) -> SparsePayload:
    if media == OCTET:
        return model.parse(body)
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; the decoder's text is not ours
        raise MalformedPayloadError(
            'body is not valid JSON; send UTF-8 JSON {"model_version": "...", "indices": [...], "values": [...]} '
            "or the binary payload as application/octet-stream") from None
    return model.parse_json(obj)


def models_router(auth: Sequence[DependsParam] = ()) -> APIRouter:
    """The model API; ``auth``: the key dependency (none when keys are off)."""
    router = APIRouter(prefix=PROTECTED_PREFIX, tags=["models"], dependencies=list(auth))

    @router.get("", response_model=ModelList, responses={401: ERRORS[401]})
    async def list_models(models: ModelRegistry = Depends(get_registry)) -> dict[str, Any]:
        """Served models with what a device needs to check its bundle (id, version, input spec)."""
        return {"models": [_model_info(m) for m in models]}

    @router.get("/{model_id}", response_model=ModelInfo, responses={401: ERRORS[401], 404: ERRORS[404]})
    async def get_model(model_id: str, models: ModelRegistry = Depends(get_registry)) -> dict[str, Any]:
        try:
            return _model_info(models.get(model_id))
        except UnknownModelError as exc:
            raise as_api_error(exc) from None

    @router.post("/{model_id}/predict", response_model=PredictResponse, responses=ERRORS,
                 openapi_extra=PREDICT_BODY)
    async def predict(model_id: str, request: Request, services: AppServices = Depends(get_services)) -> Response:
        """Class probabilities from one sparse payload (the dropped first-layer activations)."""
        return await _predict(services, model_id, request)

    return router


async def _predict(services: AppServices, model_id: str, request: Request) -> Response:
    t0 = time.perf_counter()
    models, metrics = services.models, services.metrics
    label = model_id if model_id in models else "unknown"
    status = 500
    try:
        model = models.get(model_id)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in (OCTET, JSON):
            raise ApiError(415, "unsupported_media_type", f"this content type is not accepted; send the binary "
                           f"payload as {OCTET} or its JSON form as {JSON}")
        body = await read_body(request, services.body_limit, services.config.body_timeout_s)
        payload = _parse(model, media, body)
        probs = model.check_output(await services.batchers[model.model_id].submit(payload))
        top = int(np.argmax(probs))
        classes = model.classes
        status = 200
        metrics.observe_payload(label, len(body))
        return JSONResponse({
            "model_id": model.model_id, "model_version": model.version,
            "label": classes[top] if top < len(classes) else str(top), "index": top,
            "probabilities": [float(p) for p in probs], "nnz": payload.nnz,
        })
    except Exception as exc:
        err = as_api_error(exc)
        status = err.status
        if status >= 500:  # the exception type only: messages may quote payload values
            logger.error("predict for model %s failed: %s", label, type(exc).__name__)
        raise err from None
    finally:
        metrics.observe_request(label, status, time.perf_counter() - t0)
