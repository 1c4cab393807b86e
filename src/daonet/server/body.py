"""Request bodies: read with a size limit and a deadline, and never leave one half-read on an open connection.

A connection whose body the app did not read (an early 401/404/413/415/429, an unknown route) would be kept
alive by uvicorn while the client trickles the rest of that body byte by byte: every byte restarts uvicorn's
keep-alive clock, and the header timeout only guards request heads. :class:`CloseUnreadBodies` marks every
such response ``Connection: close``, so uvicorn closes the connection once the answer is written; a 408 or 413
among them counts as a strike against the client's address (:data:`daonet.server.limits.STRIKE`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from .http_errors import ApiError
from .limits import strike

__all__ = ["read_body", "CloseUnreadBodies", "STRIKE_STATUSES"]

STRIKE_STATUSES = frozenset({408, 413})  # what only a misbehaving client earns (a wrong content type does not)


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


def _expects_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        lname = name.lower()
        if lname == b"transfer-encoding" or (lname == b"content-length" and value.strip() not in (b"0", b"")):
            return True
    return False


class CloseUnreadBodies:
    """Pure ASGI middleware: a response sent before its request's body was fully received says
    ``Connection: close`` (uvicorn then closes the connection after writing it)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not _expects_body(scope["headers"]):
            await self.app(scope, receive, send)
            return
        complete = False

        async def tracked_receive() -> dict[str, Any]:
            nonlocal complete
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                complete = True
            return message

        async def closing_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and not complete:
                if message["status"] in STRIKE_STATUSES:  # oversized or stalled: counts towards throttling
                    strike(scope)
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, tracked_receive, closing_send)
