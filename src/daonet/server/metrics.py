"""Prometheus metrics, one registry per app (so several apps or tests in one process never collide).

Labels are bounded: ``model`` is a served model id or ``"unknown"`` (never a client-chosen string),
``status`` an HTTP code. No metric carries payload content.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BYTES_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 16384, 65536, 262144, 1048576)

__all__ = ["ServerMetrics", "CONTENT_TYPE_LATEST"]


class ServerMetrics:
    """The counters and histograms of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("daonet_requests", "Predict requests by model and HTTP status",
                                ["model", "status"], registry=r)
        self.latency = Histogram("daonet_request_latency_seconds", "Predict latency inside the server",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("daonet_batch_size", "Requests per forward pass (micro-batching)",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("daonet_batch_forward_seconds", "Seconds per batched forward pass",
                                       ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.payload_bytes = Histogram("daonet_payload_bytes", "Size of accepted payloads",
                                       ["model"], buckets=BYTES_BUCKETS, registry=r)
        self.models = Gauge("daonet_models_loaded", "Models this server serves", registry=r)
        self.ready = Gauge("daonet_ready", "1 when the server accepts predictions", registry=r)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._payload_children: dict[str, Any] = {}

    def observe_request(self, model: str, status: int, seconds: float) -> None:
        key = (model, status)
        child = self._children.get(key)
        if child is None:  # labels() takes a lock and builds a key each call: cache the children
            child = self._children[key] = (self.requests.labels(model=model, status=str(status)),
                                           self.latency.labels(model=model))
        child[0].inc()
        child[1].observe(seconds)

    def observe_payload(self, model: str, size: int) -> None:
        child = self._payload_children.get(model)
        if child is None:
            child = self._payload_children[model] = self.payload_bytes.labels(model=model)
        child.observe(size)

    def batch_observer(self, model: str):
        """A callback for :class:`~daonet.server.batching.MicroBatcher` (size, seconds in forward)."""
        size_hist = self.batch_size.labels(model=model)
        secs_hist = self.batch_seconds.labels(model=model)

        def observe(size: int, seconds: float) -> None:
            size_hist.observe(size)
            secs_hist.observe(seconds)

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)
