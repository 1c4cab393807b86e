"""The HTTP API (FastAPI) around the framework-independent core (:mod:`daonet.server.model`).

Endpoints, all versioned under ``/v1`` except the usual operational ones:

- ``GET  /v1/models``                      served models: id, version, classes, device input spec
- ``GET  /v1/models/{model_id}``           one of them
- ``POST /v1/models/{model_id}/predict``   a sparse payload -> class probabilities and the top label
- ``GET  /v1/health``, ``GET /v1/ready``   liveness and readiness
- ``GET  /metrics``                        Prometheus; ``/openapi.json`` always, ``/docs`` with ``docs``

Predict takes ``application/octet-stream`` (wire format v1, :mod:`daonet.wire`) or
``application/json`` (``{"model_version", "indices", "values"}``, for debugging). No endpoint takes
a raw input. Every error is ``{"error": code, "detail": sentence}``; payload content is never logged.

:func:`create_app` assembles the app from a config and (optionally) a ready :class:`ModelRegistry`, so another
host (a Ray Serve ingress, a test) reuses it unchanged. The pieces live in their own modules: the routes in
:mod:`daonet.server.routers` (shared state through :mod:`daonet.server.services`), the key check in
:mod:`daonet.server.auth`, bodies in :mod:`daonet.server.body`, keys in URLs in :mod:`daonet.server.url_keys`,
the error mapping in :mod:`daonet.server.http_errors`; ways to run it (foreground, thread, child process)
are in :mod:`daonet.server.launch`, which imports this module (never the reverse).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from .. import __version__ as daonet_version
from .auth import KeyGate, require_key
from .batching import BatcherFactory
from .body import CloseUnreadBodies, read_body
from .config import ApiKeyVerifier, ServerConfig
from .http_errors import ApiError, install_error_handlers
from .limits import FailedAuthLimiter
from .metrics import ServerMetrics
from .model import ModelRegistry
from .routers import PROTECTED_PREFIX, models_router, operations_router
from .routers.models import micro_batcher
from .routers.operations import METRICS_PATH
from .services import AppServices
from .url_keys import RefuseKeysInUrls

logger = logging.getLogger("daonet.server")

__all__ = ["create_app", "read_body", "ApiError", "micro_batcher"]


def _lifespan(services: AppServices):  # noqa: ANN202 - FastAPI's lifespan type
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for b in services.batchers.values():
            b.start()
        services.ready = True
        services.metrics.ready.set(1)
        logger.info("serving %s", ", ".join(f"{m.model_id}@{m.version}" for m in services.models))
        try:
            yield
        finally:
            services.ready = False
            services.metrics.ready.set(0)
            for b in services.batchers.values():
                await b.aclose()

    return lifespan


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
    make_batcher = batcher_factory or micro_batcher
    services = AppServices(
        config=config, models=models, metrics=metrics,
        batchers={m.model_id: make_batcher(config, m, metrics) for m in models},
        body_limit=config.max_body_bytes or max((m.max_payload_bytes for m in models), default=64 * 1024),
        docs_hint="/docs" if config.docs else "/openapi.json")
    verifier = ApiKeyVerifier(config.api_key_hashes, config.allow_slow_key_hashes)
    auth = [Depends(require_key)] if verifier.enabled else []  # no dependency at all when keys are off

    app = FastAPI(
        title="daonet inference server", version=daonet_version, lifespan=_lifespan(services),
        description="Predictions from dropped first-layer activations. The server never receives raw inputs: "
                    "there is no endpoint that accepts one. See daonet.wire for the byte format.",
        docs_url="/docs" if config.docs else None, redoc_url=None,  # Swagger UI fetches scripts from a CDN
    )
    app.state.services = services
    app.state.models, app.state.metrics, app.state.config = models, metrics, config  # for hosts and tests
    protected = (PROTECTED_PREFIX, METRICS_PATH) if config.protect_metrics else (PROTECTED_PREFIX,)
    # middleware, innermost first: the key gate, keys in URLs, then closing connections with unread bodies
    app.add_middleware(KeyGate, verifier=verifier, limiter=FailedAuthLimiter(config.auth_failures_per_minute),
                       metrics=metrics, models=models, protected=protected)
    app.add_middleware(RefuseKeysInUrls)
    app.add_middleware(CloseUnreadBodies)
    install_error_handlers(app, services.docs_hint)
    app.include_router(models_router(auth))
    app.include_router(operations_router(auth if config.protect_metrics else []))
    if config.web:  # the page and the read-only device bundles (daonet.web): verified bytes from memory
        from ..web import web_routes

        app.router.routes.extend(web_routes(models, public_keys=config.public_keys))
    return app
