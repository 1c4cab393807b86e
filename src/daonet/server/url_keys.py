"""API keys in URLs: refused wherever they appear, and kept out of the access log.

URLs end up in access logs, proxies and browser histories, so a key sent in one must be considered leaked.
A daonet key (``dao_`` + random URL-safe text, :func:`daonet.server.config.generate_api_key`) is recognised
in any path segment or query value; the usual key parameter names (``?api_key=...``) are refused whatever
their value, so chosen keys without the prefix are caught there too.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote_plus

from .http_errors import ApiError

__all__ = ["RefuseKeysInUrls", "url_carries_key", "redact_keys", "AccessLogRedaction", "QUERY_KEY_NAMES"]

KEY_PATTERN = re.compile(r"dao_[A-Za-z0-9_\-]{16,}", re.IGNORECASE)
QUERY_KEY_NAMES = frozenset({"api_key", "apikey", "api-key", "key", "access_token", "token"})
_KEY_IN_URL = ApiError(401, "key_in_url",
                       "an API key was sent in the URL (path or query string), where access logs and proxies "
                       "record it: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY', and replace that "
                       "key (`daonet hash-key`)",
                       headers={"WWW-Authenticate": "Bearer"})


def url_carries_key(path: str, query_string: bytes) -> bool:
    """True for a path segment or query value that looks like a daonet key, or a query named like a key."""
    if KEY_PATTERN.search(path):
        return True
    if not query_string:
        return False
    query = query_string.decode("latin-1")
    if KEY_PATTERN.search(unquote_plus(query)):
        return True
    names = {unquote_plus(part.split("=", 1)[0]).lower() for part in query.split("&")}
    return bool(names & QUERY_KEY_NAMES)


def redact_keys(text: str) -> str:
    """``text`` with anything shaped like a daonet key replaced."""
    return KEY_PATTERN.sub("dao_<removed>", text)


class RefuseKeysInUrls:
    """Pure ASGI middleware: 401 for a URL carrying an API key, on every endpoint, keys required or not."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and url_carries_key(scope.get("path", ""), scope.get("query_string", b"")):
            await _KEY_IN_URL.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


class AccessLogRedaction(logging.Filter):
    """For ``uvicorn.access``: the request line without its query string and without key-shaped text."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path = args[2].split("?", 1)[0] + ("?<query removed>" if "?" in args[2] else "")
            record.args = (*args[:2], redact_keys(path), *args[3:])
        return True


ACCESS_LOG_REDACTION = AccessLogRedaction()


def redact_access_log() -> None:
    """Attach the redaction to uvicorn's access logger once (idempotent; every launcher calls it)."""
    access = logging.getLogger("uvicorn.access")
    if ACCESS_LOG_REDACTION not in access.filters:
        access.addFilter(ACCESS_LOG_REDACTION)
