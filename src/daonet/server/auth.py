"""API keys: checked before routing, so a wrong key costs the server a hash and a prepared answer.

:class:`KeyGate` (pure ASGI, in front of FastAPI) verifies the key of every request to a protected path
(``/v1/models...``, and ``/metrics`` with ``protect_metrics``): a wrong or missing key gets its 401 (or,
past the per-address failure limit, 429 with ``Retry-After``) without dependency resolution, exception
handling or a response object. Each counts as a strike against the connection's address (an address with
many is throttled at accept, :mod:`daonet.server.limits`), and a 429 closes the connection.
:func:`require_key` is the routes' dependency: it documents the two header schemes in OpenAPI and refuses
any request the gate did not pass (a host that mounted the routers without the gate).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .config import ApiKeyVerifier
from .http_errors import ApiError
from .limits import FailedAuthLimiter, strike
from .metrics import ServerMetrics
from .model import ModelRegistry

__all__ = ["KeyGate", "require_key", "PASSED"]

PASSED = "daonet.key_passed"  # scope key the gate sets on requests whose key it accepted
_HEADERS_401 = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]


def _body(error: str, detail: str) -> bytes:
    return json.dumps({"error": error, "detail": detail}).encode()


_WRONG = _body("unauthorized", "wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
_MISSING = _body("unauthorized", "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")


def _presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    bearer = header = None
    for name, value in headers:
        lname = name.lower()
        if lname == b"authorization":
            scheme, _, cred = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and cred.strip():
                bearer = cred.strip()
        elif lname == b"x-api-key" and value:
            header = value.decode("latin-1")
    return bearer if bearer is not None else header


class KeyGate:
    """Pure ASGI middleware: the key check of the protected paths (see the module docstring)."""

    def __init__(self, app: Any, verifier: ApiKeyVerifier, limiter: FailedAuthLimiter, metrics: ServerMetrics,
                 models: ModelRegistry, protected: tuple[str, ...]) -> None:
        self.app, self.verifier, self.limiter, self.metrics, self.models = app, verifier, limiter, metrics, models
        self.protected = protected
        self.slow = verifier.slow

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.verifier.enabled or not scope["path"].startswith(self.protected):
            await self.app(scope, receive, send)
            return
        key = _presented_key(scope["headers"])
        ok = await run_in_threadpool(self.verifier.verify, key) if self.slow else self.verifier.verify(key)
        if ok:
            scope[PASSED] = True
            await self.app(scope, receive, send)
            return
        parts = scope["path"].split("/", 4)  # "", "v1", "models", model_id, ...
        if len(parts) > 3 and parts[3]:
            self.metrics.observe_request(parts[3] if parts[3] in self.models else "unknown", 401, 0.0)
        strike(scope)
        client = scope.get("client")
        wait = self.limiter.failure(client[0] if client else "unknown")
        if wait:
            body = _body("too_many_failed_authentications",
                         f"too many wrong API keys from your address; retry in {wait:.0f} s with the right key")
            headers = [(b"content-type", b"application/json"), (b"retry-after", f"{wait:.0f}".encode()),
                       (b"connection", b"close")]
            status = 429
        else:
            body, headers, status = (_WRONG if key else _MISSING), _HEADERS_401, 401
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")


async def require_key(request: Request, _cred: HTTPAuthorizationCredentials | None = Security(_bearer),
                      _header_key: str | None = Security(_api_key_header)) -> None:
    """The routes' key dependency: the gate already checked the key; refuse what it did not pass."""
    if not request.scope.get(PASSED):
        raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                       headers={"WWW-Authenticate": "Bearer"})
