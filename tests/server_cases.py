"""The server's request cases, shared by every host of the HTTP API (single process, Ray Serve).

One table, so a host cannot pass by being tested on fewer or easier cases: tests/test_server.py checks
status and message on the single-process server; tests/test_ray_serve.py checks that Ray Serve answers
every case with the same status and error code.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import httpx
import numpy as np

PREDICT = "/v1/models/digits-mlp/predict"
OCTET = {"Content-Type": "application/octet-stream"}

V = "VERSION"  # replaced by the served version


def read_until_closed(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the server closes; (closed within ``seconds``, what it sent)."""
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(4096):
            got += chunk
        return True, got
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        return True, got


def bin_case(status, message, *args, **kwargs):
    return ("bin", status, message, args, kwargs)


BAD_BINARY = {
    "raw-input-bytes": bin_case(400, "magic bytes", raw=np.zeros(64, np.float32).tobytes()),
    "empty-body": bin_case(400, "truncated", raw=b""),
    "truncated-header": bin_case(400, "truncated", raw=b"DAO1\x01\x02"),
    "truncated-values": bin_case(400, "truncated", V, 256, [1, 2, 3], [1.0, 2.0, 3.0], cut=2),
    "too-long": bin_case(400, "too long", V, 256, [1], [1.0], extra=b"\x00"),
    "bad-wire-version": bin_case(400, "wire format version 9", V, 256, [1], [1.0], wire_version=9),
    "bad-index-width": bin_case(400, "index width 3", V, 256, [], [], ibytes=3),
    "version-mismatch": bin_case(409, "0123456789abcdef", "0123456789abcdef", 256, [1], [1.0]),
    "index-out-of-range": bin_case(422, "index 300 is out of range", V, 256, [1, 300], [1.0, 2.0]),
    "index-duplicated": bin_case(422, "index 7 appears more than once", V, 256, [7, 7], [1.0, 2.0]),
    "index-unsorted": bin_case(422, "increasing order", V, 256, [9, 3], [1.0, 2.0]),
    "negative-value": bin_case(422, "negative", V, 256, [1, 2], [1.0, -0.5]),
    "nan-value": bin_case(422, "NaN", V, 256, [1, 2], [np.nan, 1.0]),
    "inf-value": bin_case(422, "inf", V, 256, [1], [np.inf]),
    "nnz-over-outputs": bin_case(422, "257 non-zeros but the first layer has only 256", V, 256,
                                 list(range(256)) + [0], [1.0] * 257),
    "wrong-n-outputs": bin_case(422, "this model's has 256", V, 100, [1], [1.0]),
}

BAD_JSON = {
    "not-json": ("json", 400, "not valid JSON", b"{indices: [1]", {}),
    "not-utf8": ("json", 400, "not valid JSON", b"\xff\xfe\x00", {}),
    "not-an-object": ("json", 422, "must be an object", b"[1, 2]", {}),
    "missing-version": ("json", 422, "'model_version'", {"indices": [1], "values": [1.0]}, {}),
    "missing-values": ("json", 422, "'values'", {"model_version": V, "indices": [1]}, {}),
    "string-indices": ("json", 422, "list of integers", {"model_version": V, "indices": ["1"], "values": [1.0]}, {}),
    "json-version-mismatch": ("json", 409, "server runs", {"model_version": "x", "indices": [], "values": []}, {}),
    "json-duplicate": ("json", 422, "more than once", {"model_version": V, "indices": [2, 2], "values": [1, 1]}, {}),
    "json-negative": ("json", 422, "negative", {"model_version": V, "indices": [2], "values": [-1]}, {}),
    "json-nan": ("json", 422, "NaN", b'{"model_version": "VERSION", "indices": [2], "values": [NaN]}', {}),
    "json-out-of-range": ("json", 422, "out of range", {"model_version": V, "indices": [-1], "values": [1]}, {}),
    "json-unpaired": ("json", 422, "pair up", {"model_version": V, "indices": [1, 2], "values": [1]}, {}),
    "json-huge-int": ("json", 422, "", {"model_version": V, "indices": [10**30], "values": [1]}, {}),
    "json-too-many": ("json", 422, "non-zeros", {"model_version": V, "indices": list(range(257)),
                                                 "values": [1] * 257}, {}),
}


def _fill_version(obj, version):
    if isinstance(obj, dict):
        return {k: version if v == V else v for k, v in obj.items()}
    return obj.replace(b"VERSION", version.encode()) if isinstance(obj, bytes) else obj


BAD_PAYLOADS = {**BAD_BINARY, **BAD_JSON}


def send_bad_payload(http: httpx.Client, case: str, version: str, make_payload: Callable[..., bytes],
                     path: str = PREDICT) -> httpx.Response:
    """Post one case of :data:`BAD_PAYLOADS` (``VERSION`` replaced by the served version) to a digits-mlp server."""
    kind, _, _, args, kwargs = BAD_PAYLOADS[case]
    if kind == "bin":
        kwargs = dict(kwargs)
        raw, cut, extra = kwargs.pop("raw", None), kwargs.pop("cut", 0), kwargs.pop("extra", b"")
        if raw is None:
            raw = make_payload(version if args[0] == V else args[0], *args[1:], **kwargs)
            raw = (raw[:-cut] if cut else raw) + extra
        return http.post(path, content=raw, headers=OCTET)
    body = _fill_version(args, version)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(path, content=content, headers={"Content-Type": "application/json"})


WRONG_CONTENT_TYPES = [None, "text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
                       "image/png"]

# -- API keys: one generated and one chosen key (both sha256) -----------------------------------------------------
API_KEYS = {"generated": "dao_test-key-one-0123456789", "chosen": "correct horse battery staple"}
API_KEY_CASES = [
    ({}, 401),
    ({"Authorization": "Bearer wrong"}, 401),
    ({"X-API-Key": "wrong"}, 401),
    ({"Authorization": "Basic ZGFvOnRlc3Q="}, 401),
    ({"Authorization": "Bearer dao_test-key-one-0123456789"}, 200),
    ({"X-API-Key": "dao_test-key-one-0123456789"}, 200),
    ({"Authorization": "Bearer correct horse battery staple"}, 200),
    ({"X-API-Key": "correct horse battery staple"}, 200),
]


def api_key_hashes() -> list[str]:
    """Hashes of :data:`API_KEYS` for a server config."""
    from daonet.server.config import hash_api_key

    return [hash_api_key(API_KEYS["generated"]), hash_api_key(API_KEYS["chosen"])]
