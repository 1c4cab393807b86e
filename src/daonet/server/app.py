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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__ as daonet_version
from ..errors import MalformedPayloadError, PayloadError, VersionMismatchError
from ..wire import SparsePayload
from .batching import BatcherClosedError, MicroBatcher
from .config import ApiKeyVerifier, ServerConfig
from .metrics import CONTENT_TYPE_LATEST, ServerMetrics
from .model import ModelRegistry, ServerModel, UnknownModelError

logger = logging.getLogger("daonet.server")

OCTET = "application/octet-stream"
JSON = "application/json"

__all__ = ["create_app", "serve", "BackgroundServer", "ServerProcess", "ApiError"]


# -- response schemas (for the OpenAPI docs) ------------------------------------------------------------
class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable code, e.g. invalid_payload")
    detail: str = Field(description="what was wrong and how to fix it")


class PredictResponse(BaseModel):
    model_id: str
    model_version: str
    label: str = Field(description="the top class's name")
    index: int = Field(description="the top class's index")
    probabilities: list[float] = Field(description="one per class, in the order of GET /v1/models classes")
    nnz: int = Field(description="non-zero outputs the payload carried")


class ModelInfo(BaseModel):
    model_id: str
    version: str
    classes: list[str]
    n_outputs: int
    device_input: dict[str, Any] | None
    first_layer: dict[str, Any]
    drop: dict[str, Any] | None
    wire_version: int


class ModelList(BaseModel):
    models: list[ModelInfo]


JSON_PAYLOAD_SCHEMA = {
    "type": "object",
    "required": ["model_version", "indices", "values"],
    "properties": {
        "model_version": {"type": "string", "description": "the bundle version (GET /v1/models)"},
        "indices": {"type": "array", "items": {"type": "integer", "minimum": 0},
                    "description": "strictly increasing indices of the non-zero first-layer outputs"},
        "values": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0},
                   "description": "their values: finite and > 0 (ReLU outputs)"},
    },
}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": "The dropped activations only: binary wire format v1 or its JSON form. Never a raw input.",
        "content": {
            OCTET: {"schema": {"type": "string", "format": "binary"}},
            JSON: {"schema": JSON_PAYLOAD_SCHEMA},
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "malformed payload (truncated, wrong magic, not JSON)",
        401: "missing or wrong API key",
        404: "unknown model id",
        409: "payload made for another model version (both versions in the body)",
        413: "body larger than the configured limit",
        415: "content type is neither application/octet-stream nor application/json",
        422: "payload content is impossible (index out of range or repeated, negative, NaN/inf, too many)",
    }.items()
}


class ApiError(Exception):
    """An answer with a status code and ``{"error", "detail", ...}`` body."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers, self.extra = status, error, detail, headers, extra

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "detail": self.detail, **self.extra}, self.status,
                            headers=self.headers)


def _as_api_error(exc: Exception) -> ApiError:
    """Map the core's exceptions to HTTP answers (one place, so every path answers alike)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UnknownModelError):
        return ApiError(404, "unknown_model", str(exc))
    if isinstance(exc, VersionMismatchError):
        return ApiError(409, "version_mismatch", str(exc), server_version=exc.expected, payload_version=exc.got)
    if isinstance(exc, MalformedPayloadError):
        return ApiError(400, "malformed_payload", str(exc))
    if isinstance(exc, PayloadError):
        return ApiError(422, "invalid_payload", str(exc))
    if isinstance(exc, ClientDisconnect):
        return ApiError(400, "client_disconnected", "the client went away before sending the whole body")
    if isinstance(exc, BatcherClosedError):
        return ApiError(503, "shutting_down", "the server is shutting down; retry on another replica")
    return ApiError(500, "internal_error", "the server failed to process the request; it has been logged")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past ``limit``: by Content-Length first, then by the bytes streamed."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", f"Content-Length {declared[:32]!r} is not a number") from None
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


def create_app(config: ServerConfig, registry: ModelRegistry | None = None) -> FastAPI:
    """Build the app: loads the bundles (or takes a ready registry) and one micro-batcher per model."""
    config.validate(require_bundles=registry is None)
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    models = registry if registry is not None else ModelRegistry.load(config.bundles)
    metrics = ServerMetrics()
    metrics.models.set(len(models))
    verifier = ApiKeyVerifier(config.api_key_hashes)
    slow_verify = any(h.startswith("pbkdf2") for h in config.api_key_hashes)
    batchers: dict[str, MicroBatcher[SparsePayload, np.ndarray]] = {
        m.model_id: MicroBatcher(partial(_forward, m), max_batch_size=config.max_batch_size,
                                 max_wait_ms=config.max_wait_ms, on_batch=metrics.batch_observer(m.model_id),
                                 name=f"batcher-{m.model_id}")
        for m in models
    }
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
    )
    app.state.models = models
    app.state.metrics = metrics
    app.state.config = config

    # -- errors: one JSON shape everywhere ----------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            detail = "no such endpoint; see /docs (predictions: POST /v1/models/{model_id}/predict)"
        return JSONResponse({"error": codes.get(exc.status_code, "http_error"), "detail": detail},
                            exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = ["/".join(str(p) for p in e.get("loc", ())) + ": " + str(e.get("msg", "")) for e in exc.errors()]
        return JSONResponse({"error": "invalid_request", "detail": "; ".join(parts)[:500]}, 422)

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
            what = "wrong API key" if key else "missing API key"
            raise ApiError(401, "unauthorized", f"{what}: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                           headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(check_key)] if verifier.enabled else []  # no dependency at all when keys are off

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
            raise _as_api_error(exc) from None

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
            body = await read_body(request, config.max_body_bytes)
            if media == OCTET:
                payload = model.parse(body)
            else:
                try:
                    obj = json.loads(body)
                except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                    raise MalformedPayloadError(f"body is not valid JSON: {str(exc)[:120]}") from None
                payload = model.parse_json(obj)
            probs = await batchers[model.model_id].submit(payload)
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
            err = _as_api_error(exc)
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

    @app.get("/metrics", tags=["operations"], include_in_schema=True)
    async def prometheus() -> Response:
        """Prometheus metrics: requests by model/status, latency, batch sizes, payload sizes."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


# -- running it ---------------------------------------------------------------------------------------------
def serve(config: ServerConfig) -> None:
    """Run the server in the foreground (what ``daonet serve`` does)."""
    import uvicorn

    app = create_app(config)
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level,
                ssl_certfile=str(config.ssl_certfile) if config.ssl_certfile else None,
                ssl_keyfile=str(config.ssl_keyfile) if config.ssl_keyfile else None,
                timeout_graceful_shutdown=10)


class BackgroundServer:
    """uvicorn in a background thread on a (by default free) port: for the demo, tests and notebooks.

    Binds the socket itself, so port 0 gives a free port with no race, and the URL is known before start.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0,
                 ssl_certfile: str | Path | None = None, ssl_keyfile: str | Path | None = None,
                 log_level: str = "warning") -> None:
        import uvicorn

        self.sock = _bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.host = host
        self.tls = ssl_certfile is not None
        config = uvicorn.Config(app, host=host, port=self.port, log_level=log_level, access_log=False,
                                ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                                ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
                                timeout_graceful_shutdown=5, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name=f"daonet-server-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"the server on {self.url} exited during startup; see its log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start within {timeout:.0f} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful: stop accepting, finish in-flight requests, run the shutdown (batchers close)."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets whose proto says TCP, and
    # without it Nagle + delayed ACK add ~40 ms to every response (headers and body are two writes).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class ServerProcess:
    """The server in a child process on a free loopback port: shares no GIL with the caller's clients.

    What the demo uses, so its latency and throughput are the server's, not a thread's share of one
    interpreter. The child prints its port once the bundles are loaded; :meth:`start` then waits for
    ``/v1/ready``. :meth:`stop` sends SIGTERM (uvicorn's graceful shutdown).
    """

    def __init__(self, config: ServerConfig, startup_timeout: float = 120.0) -> None:
        config.validate()
        self.config = config
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> ServerProcess:
        import httpx

        spec = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self.config).items()}
        spec["bundles"] = [str(b) for b in self.config.bundles]
        self.proc = subprocess.Popen([sys.executable, "-c", "from daonet.server.app import _child_main; _child_main()",
                                      json.dumps(spec)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError("the server process exited during startup; see its error above")
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if self.config.tls else 'http'}://{host}:{int(line.split()[1])}"
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                if httpx.get(f"{self.url}/v1/ready", timeout=2, verify=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server process on {self.url} did not become ready")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _child_main() -> None:
    """Entry point of :class:`ServerProcess`'s child: config as JSON in argv[1]."""
    import uvicorn

    spec = json.loads(sys.argv[1])
    config = ServerConfig(**{**spec, "bundles": [Path(b) for b in spec["bundles"]]}).validate()
    app = create_app(config)
    sock = _bind(config.host, config.port)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(
        app, log_level=config.log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=10,
        ssl_certfile=str(config.ssl_certfile) if config.ssl_certfile else None,
        ssl_keyfile=str(config.ssl_keyfile) if config.ssl_keyfile else None,
    )).run(sockets=[sock])


@contextmanager
def serve_in_thread(app: FastAPI, **kwargs: Any) -> Iterator[str]:
    """``with serve_in_thread(app) as url:`` runs the app on loopback for the duration of the block."""
    with BackgroundServer(app, **kwargs) as server:
        yield server.url
