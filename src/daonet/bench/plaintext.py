"""The plaintext baseline for benchmarks: a server that receives the raw input and runs the whole model.

Why this exists: daonet's costs (device-side first layer, sparse payload, the server's dense rebuild) only
mean something next to what serving costs without any privacy. This app is that reference, on the same
stack as the product server (FastAPI + uvicorn + the same :class:`~daonet.server.batching.MicroBatcher` +
the same metrics), so a latency ratio measures daonet, not a different web framework.

Benchmark-only: it is *not* part of the product's API (the product server has no endpoint that accepts
a raw input, by design) and nothing in ``daonet.server`` imports it. ``bench/serve_bench.py`` and
``daonet bench encryption`` use it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

# Module level on purpose: with postponed annotations FastAPI resolves the handlers' annotations (Request,
# Response) from this module's globals.
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

__all__ = ["plaintext_app", "PLAINTEXT_PREFIX", "plaintext_path"]

PLAINTEXT_PREFIX = "/plain"


def plaintext_path(model_id: str) -> str:
    """The predict path of :func:`plaintext_app` (deliberately outside the product's ``/v1`` namespace)."""
    return f"{PLAINTEXT_PREFIX}/{model_id}/predict"


def plaintext_app(run_dir: str | Path, model_id: str, max_batch_size: int = 64, max_wait_ms: float = 2.0,
                  max_body_bytes: int = 1 << 20) -> FastAPI:
    """An app that receives the raw input (uint8 pixels / float32 samples) and runs the whole trained model.

    The model is the run's own network with dropping switched off (plaintext has no reason to drop): the
    first layer runs on the server, so this is what daonet avoids. ``POST /plain/{model_id}/predict`` takes
    the raw bytes as ``application/octet-stream`` and answers the same JSON as the product's predict.
    """
    import torch

    from ..server.app import read_body
    from ..server.batching import MicroBatcher
    from ..server.http_errors import ApiError
    from ..server.metrics import CONTENT_TYPE_LATEST, ServerMetrics
    from ..train import load_run

    model, config = load_run(run_dir)
    model.first.drop_rate = 0.0  # plaintext: nothing dropped
    model.eval()
    shape = tuple(model.first.in_shape)
    uint8 = config.get("raw_dtype") == "uint8"
    dtype = np.uint8 if uint8 else np.float32
    n_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    classes = list(config.get("classes", []))
    metrics = ServerMetrics()

    @torch.inference_mode()
    def forward(xs: list[np.ndarray]) -> np.ndarray:
        x = torch.from_numpy(np.stack(xs)).reshape((len(xs), *shape))
        x = x.float() / 255.0 if uint8 else x
        return torch.softmax(model(x), dim=1).numpy()

    batcher: MicroBatcher[np.ndarray, np.ndarray] = MicroBatcher(
        forward, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
        on_batch=metrics.batch_observer(model_id), name="plaintext")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.aclose()

    app = FastAPI(lifespan=lifespan, title="plaintext baseline (benchmark only)")

    @app.exception_handler(ApiError)
    async def _err(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.get("/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(plaintext_path("{mid}"))
    async def predict(mid: str, request: Request) -> Response:
        t0 = time.perf_counter()
        status = 500
        try:
            if mid != model_id:
                raise ApiError(404, "unknown_model", mid)
            if request.headers.get("content-type", "").split(";")[0] != "application/octet-stream":
                raise ApiError(415, "unsupported_media_type", "send application/octet-stream")
            body = await read_body(request, max_body_bytes)
            if len(body) != n_bytes:
                raise ApiError(400, "bad_input", f"expected {n_bytes} bytes")
            x = np.frombuffer(body, dtype=dtype)
            if not uint8 and not np.isfinite(x).all():
                raise ApiError(422, "bad_input", "NaN/inf")
            probs = await batcher.submit(x)
            top = int(np.argmax(probs))
            status = 200
            return JSONResponse({"model_id": model_id, "model_version": "plaintext",
                                 "label": classes[top] if top < len(classes) else str(top), "index": top,
                                 "probabilities": [float(p) for p in probs], "nnz": int(x.size)})
        except ApiError as exc:
            status = exc.status
            raise
        finally:
            metrics.observe_request(model_id, status, time.perf_counter() - t0)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.state.raw_input_bytes = n_bytes
    return app
