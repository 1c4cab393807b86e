"""The HTTP API (FastAPI) around the framework-independent core (:mod:`daonet.server.model`).

Endpoints, all versioned under ``/v1`` except the usual operational ones:

- ``GET  /v1/models``                      served models: id, version, classes, device input spec
- ``GET  /v1/models/{model_id}``           one of them
- ``POST /v1/models/{model_id}/predict``   a sparse payload -> class probabilities and the top label
- ``GET  /v1/health``, ``GET /v1/ready``   liveness and readiness
- ``GET  /metrics``                        Prometheus; ``/docs`` and ``/openapi.json`` as usual

Predict takes ``application/octet-stream`` (wire format v1, :mod:`daonet.wire`) or
``application/json`` (``{"model_version", "indices", "values"}``, for debugging). No endpoint takes
a raw input. Every error is ``{"error": code, "detail": sentence}``; payload content is never logged.

:func:`create_app` builds the app from a config and (optionally) a ready :class:`ModelRegistry`, so another
host (a Ray Serve ingress, a test) reuses it unchanged; the error mapping lives in
:mod:`daonet.server.http_errors`, the response schemas in :mod:`daonet.server.schemas`, and the ways to run
it (thread, child process) in :mod:`daonet.server.launch`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__ as daonet_version
from ..errors import MalformedPayloadError
from ..wire import SparsePayload
from .batching import Batcher, BatcherFactory, MicroBatcher
from .config import ApiKeyVerifier, ServerConfig
from .http_errors import ApiError, as_api_error
from .limits import FailedAuthLimiter, uvicorn_config
from .metrics import CONTENT_TYPE_LATEST, ServerMetrics
from .model import ModelRegistry, ServerModel, UnknownModelError
from .schemas import (
    ERRORS,
    JSON,
    METRICS_RESPONSE,
    OCTET,
    PREDICT_BODY,
    ErrorBody,
    ModelInfo,
    ModelList,
    PredictResponse,
)

logger = logging.getLogger("daonet.server")

__all__ = ["create_app", "serve", "read_body", "ApiError"]


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The body, read incrementally: 413 past ``limit`` (by Content-Length first, then by the bytes streamed),
    408 when it has not fully arrived within ``timeout`` seconds (a stalled client frees its memory)."""
    if timeout:
        try:
            async with asyncio.timeout(timeout):
                return await read_body(request, limit)
        except TimeoutError:
            raise ApiError(408, "body_timeout", f"the request body did not arrive within {timeout:g} s; send it "
                           "at once (the whole payload is a few kilobytes)", headers={"Connection": "close"}) from None
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not a number") from None
        if size > limit:
            raise ApiError(413, "body_too_large", f"body is {size} bytes; this server accepts at most {limit}")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise ApiError(413, "body_too_large", f"body exceeds {limit} bytes (streamed past its "
                           f"Content-Length or sent chunked); this server accepts at most {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def _forward(model: ServerModel, payloads: list[SparsePayload]) -> np.ndarray:
    """One batched forward pass (runs in the batcher's worker thread)."""
    return model.predict_proba(payloads)


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


def micro_batcher(config: ServerConfig, model: ServerModel, metrics: ServerMetrics) -> Batcher[SparsePayload, Any]:
    """The single-process batching: daonet's own :class:`MicroBatcher`, one per model."""
    return MicroBatcher(partial(_forward, model), max_batch_size=config.max_batch_size,
                        max_wait_ms=config.max_wait_ms, on_batch=metrics.batch_observer(model.model_id),
                        name=f"batcher-{model.model_id}")


QUERY_KEY_NAMES = frozenset({"api_key", "apikey", "api-key", "key", "access_token", "token"})


class RefuseKeysInQuery:
    """401 for a URL carrying an API key (``?api_key=...``): URLs end up in access logs, proxies and browser
    histories. Applies to every endpoint and whether or not keys are required; the key should be rotated."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            names = {part.split(b"=", 1)[0].decode("latin-1").lower()
                     for part in scope["query_string"].split(b"&")}
            if names & QUERY_KEY_NAMES:
                await ApiError(401, "key_in_query_string",
                               "an API key was sent in the URL's query string, where access logs and proxies record "
                               "it: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY', and replace that key "
                               "(`daonet hash-key`)", headers={"WWW-Authenticate": "Bearer"}).response()(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(config: ServerConfig, registry: ModelRegistry | None = None,
               batcher_factory: BatcherFactory | None = None) -> FastAPI:
    """Build the app: loads the bundles (or takes a ready registry) and one batcher per model.

    ``batcher_factory(config, model, metrics)`` swaps the batching only (Ray Serve's ``@serve.batch`` in
    :mod:`daonet.server.ray_serve`); parsing, validation, auth, errors and metrics stay this app's.
    """
    config.validate(require_bundles=registry is None)
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    models = registry if registry is not None else ModelRegistry.load(config.bundles, public_keys=config.public_keys)
    metrics = ServerMetrics()
    metrics.models.set(len(models))
    # memory a stalled or oversized body can hold = connections x this limit: keep it what the models need
    body_limit = config.max_body_bytes or max((m.max_payload_bytes for m in models), default=64 * 1024)
    verifier = ApiKeyVerifier(config.api_key_hashes, config.allow_slow_key_hashes)
    limiter = FailedAuthLimiter(config.auth_failures_per_minute)
    slow_verify = any(h.startswith("pbkdf2") for h in config.api_key_hashes)
    make_batcher = batcher_factory or micro_batcher
    batchers = {m.model_id: make_batcher(config, m, metrics) for m in models}
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for b in batchers.values():
            b.start()
        state["ready"] = True
        metrics.ready.set(1)
        logger.info("serving %s", ", ".join(f"{m.model_id}@{m.version}" for m in models))
        try:
            yield
        finally:
            state["ready"] = False
            metrics.ready.set(0)
            for b in batchers.values():
                await b.aclose()

    app = FastAPI(
        title="daonet inference server", version=daonet_version, lifespan=lifespan,
        description="Predictions from dropped first-layer activations. The server never receives raw inputs: "
                    "there is no endpoint that accepts one. See daonet.wire for the byte format.",
        docs_url="/docs" if config.docs else None, redoc_url=None,  # Swagger UI fetches scripts from a CDN
    )
    app.add_middleware(RefuseKeysInQuery)
    app.state.models = models
    if config.web:  # the page and the read-only device bundles (daonet.web): static files only
        from ..web import web_routes

        app.router.routes.extend(web_routes(models))
    app.state.metrics = metrics
    app.state.config = config

    # -- errors: one JSON shape everywhere ----------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        texts = {404: ("not_found", "no such endpoint; see /docs (predictions: POST /v1/models/{model_id}/predict)"),
                 405: ("method_not_allowed", "this endpoint does not take that HTTP method; see /docs")}
        error, detail = texts.get(exc.status_code, ("http_error", "the request could not be served"))
        return JSONResponse({"error": error, "detail": detail}, exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        where = ", ".join(sorted({"/".join(str(p) for p in e.get("loc", ()) if not isinstance(p, int))
                                  for e in exc.errors()}))[:200]
        return JSONResponse({"error": "invalid_request",
                             "detail": f"the request does not match the API at: {where or 'the request'}; "
                                       "see /docs"}, 422)

    # -- auth -----------------------------------------------------------------------------------------------
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")

    async def check_key(request: Request,
                        cred: HTTPAuthorizationCredentials | None = Security(bearer),
                        header_key: str | None = Security(api_key_header)) -> None:
        if not verifier.enabled:
            return
        key = cred.credentials if cred is not None else header_key
        ok = await run_in_threadpool(verifier.verify, key) if slow_verify else verifier.verify(key)
        if not ok:
            model_id = request.path_params.get("model_id")
            if model_id is not None:
                metrics.observe_request(model_id if model_id in models else "unknown", 401, 0.0)
            wait = limiter.failure(request.client.host if request.client else "unknown")
            if wait:
                raise ApiError(429, "too_many_failed_authentications",
                               f"too many wrong API keys from your address; retry in {wait:.0f} s with the right key",
                               headers={"Retry-After": f"{wait:.0f}"})
            what = "wrong API key" if key else "missing API key"
            raise ApiError(401, "unauthorized", f"{what}: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                           headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(check_key)] if verifier.enabled else []  # no dependency at all when keys are off
    metrics_auth = auth if config.protect_metrics else []  # health, ready and (by default) metrics stay open

    # -- endpoints ------------------------------------------------------------------------------------------
    @app.get("/v1/models", response_model=ModelList, tags=["models"], dependencies=auth,
             responses={401: ERRORS[401]})
    async def list_models() -> dict[str, Any]:
        """Served models with what a device needs to check its bundle (id, version, input spec)."""
        return {"models": [_model_info(m) for m in models]}

    @app.get("/v1/models/{model_id}", response_model=ModelInfo, tags=["models"], dependencies=auth,
             responses={401: ERRORS[401], 404: ERRORS[404]})
    async def get_model(model_id: str) -> dict[str, Any]:
        try:
            return _model_info(models.get(model_id))
        except UnknownModelError as exc:
            raise as_api_error(exc) from None

    @app.post("/v1/models/{model_id}/predict", response_model=PredictResponse, tags=["models"],
              dependencies=auth, responses=ERRORS, openapi_extra=PREDICT_BODY)
    async def predict(model_id: str, request: Request) -> Response:
        """Class probabilities from one sparse payload (the dropped first-layer activations)."""
        t0 = time.perf_counter()
        label = model_id if model_id in models else "unknown"
        status = 500
        try:
            model = models.get(model_id)
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media not in (OCTET, JSON):
                shown = media[:64] or "none"
                raise ApiError(415, "unsupported_media_type",
                               f"content type {shown!r} is not accepted; send the binary payload as {OCTET} "
                               f"or its JSON form as {JSON}")
            body = await read_body(request, body_limit, config.body_timeout_s)
            payload = _parse(model, media, body)
            probs = model.check_output(await batchers[model.model_id].submit(payload))
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

    @app.get("/v1/health", tags=["operations"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/v1/ready", tags=["operations"], responses={503: {"model": ErrorBody}})
    async def ready() -> Response:
        """Readiness: models loaded and batchers running."""
        if state["ready"] and all(b.running for b in batchers.values()):
            return JSONResponse({"status": "ready", "models": models.ids})
        return JSONResponse({"error": "not_ready", "detail": "the server is starting or stopping"}, 503)

    @app.get("/metrics", tags=["operations"], response_class=Response, responses=METRICS_RESPONSE,
             dependencies=metrics_auth)
    async def prometheus() -> Response:
        """Prometheus metrics (text format): requests by model/status, latency, batch sizes, payload sizes."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _drop_query_strings(record: logging.LogRecord) -> bool:
    """Access-log lines without query strings: whatever a client puts in a URL stays out of the logs."""
    args = record.args
    if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
        record.args = (*args[:2], args[2].split("?", 1)[0] + "?<query removed>", *args[3:])
    return True


def serve(config: ServerConfig) -> None:
    """Run the server in the foreground (what ``daonet serve`` does)."""
    import uvicorn

    app = create_app(config)
    logging.getLogger("uvicorn.access").addFilter(_drop_query_strings)
    uvicorn.Server(uvicorn_config(
        app, config.uvicorn_options(), host=config.host, port=config.port, log_level=config.log_level,
        ssl_certfile=str(config.ssl_certfile) if config.ssl_certfile else None,
        ssl_keyfile=str(config.ssl_keyfile) if config.ssl_keyfile else None)).run()


def __getattr__(name: str) -> Any:
    """The launchers moved to :mod:`daonet.server.launch`; old imports keep working."""
    if name in ("BackgroundServer", "ServerProcess"):
        from . import launch

        return getattr(launch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
