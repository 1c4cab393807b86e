"""Exceptions -> HTTP answers, as one table (every path and every host app answers alike).

Looked up along the exception's MRO, so a subclass inherits its parent's status unless listed itself.
Details of daonet errors are their own sentences (written for users, never echoing payload content);
anything else gets a fixed sentence, so no Python internals reach a client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import InvalidPayloadError, MalformedPayloadError, PayloadError, VersionMismatchError
from .batching import BatcherClosedError
from .model import UnknownModelError

__all__ = ["ApiError", "ErrorRule", "ERROR_TABLE", "as_api_error", "install_error_handlers"]


class ApiError(Exception):
    """An answer with a status code and ``{"error", "detail", ...}`` body."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers, self.extra = status, error, detail, headers, extra

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "detail": self.detail, **self.extra}, self.status,
                            headers=self.headers)


@dataclass(frozen=True)
class ErrorRule:
    status: int
    error: str
    detail: str | None = None  # None: the exception's own (daonet-worded) message
    extra: Callable[[Any], dict[str, Any]] = field(default=lambda _: {})


ERROR_TABLE: dict[type[BaseException], ErrorRule] = {
    UnknownModelError: ErrorRule(404, "unknown_model"),
    VersionMismatchError: ErrorRule(409, "version_mismatch",
                                    extra=lambda e: {"server_version": e.expected, "payload_version": e.got}),
    MalformedPayloadError: ErrorRule(400, "malformed_payload"),
    InvalidPayloadError: ErrorRule(422, "invalid_payload"),
    PayloadError: ErrorRule(422, "invalid_payload"),
    ClientDisconnect: ErrorRule(400, "client_disconnected", "the client went away before sending the whole body"),
    BatcherClosedError: ErrorRule(503, "shutting_down", "the server is shutting down; retry on another replica"),
}
INTERNAL = ErrorRule(500, "internal_error", "the server failed to process the request; it has been logged")


def as_api_error(exc: BaseException) -> ApiError:
    """The answer for ``exc``: its own if it is an :class:`ApiError`, else the table's rule (or 500)."""
    if isinstance(exc, ApiError):
        return exc
    rule = next((ERROR_TABLE[c] for c in type(exc).__mro__ if c in ERROR_TABLE), INTERNAL)
    return ApiError(rule.status, rule.error, rule.detail if rule.detail is not None else str(exc), **rule.extra(exc))


def install_error_handlers(app: FastAPI, docs_hint: str) -> None:
    """One JSON shape for every error of ``app``; details in daonet's words, pointing at ``docs_hint``
    (``/docs`` when it is served, else ``/openapi.json``), never echoing the request."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    texts = {404: ("not_found", f"no such endpoint; see {docs_hint} (predictions: POST "
                                "/v1/models/{model_id}/predict)"),
             405: ("method_not_allowed", f"this endpoint does not take that HTTP method; see {docs_hint}")}

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error, detail = texts.get(exc.status_code, ("http_error", "the request could not be served"))
        return JSONResponse({"error": error, "detail": detail}, exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        where = ", ".join(sorted({"/".join(str(p) for p in e.get("loc", ()) if not isinstance(p, int))
                                  for e in exc.errors()}))[:200]
        return JSONResponse({"error": "invalid_request",
                             "detail": f"the request does not match the API at: {where or 'the request'}; "
                                       f"see {docs_hint}"}, 422)
