"""What the routes of one app share (models, batchers, metrics, limits), and the dependencies that hand it out.

One :class:`AppServices` per app lives in ``app.state.services``; routes reach it through
:func:`get_services` / :func:`get_registry` (FastAPI dependencies), never through a closure, so each
router is a module of its own and a test can build an app around any registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from .batching import Batcher
from .config import ServerConfig
from .metrics import ServerMetrics
from .model import ModelRegistry

__all__ = ["AppServices", "get_services", "get_registry"]


@dataclass
class AppServices:
    config: ServerConfig
    models: ModelRegistry
    metrics: ServerMetrics
    batchers: dict[str, Batcher[Any, Any]]
    body_limit: int  # memory a stalled or oversized body can hold = connections x this limit
    ready: bool = False
    docs_hint: str = "/openapi.json"  # where 4xx details point: /docs only when it is served
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.ready and all(b.running for b in self.batchers.values())


def get_services(request: Request) -> AppServices:
    return request.app.state.services


def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.services.models
