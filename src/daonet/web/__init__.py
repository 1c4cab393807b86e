"""The web page of ``daonet serve --web``: the first layer runs in the browser, only the payload is sent.

Routes (all read-only, GET only, served by daonet itself: no third-party resources):

- ``/``                                  the page (``index.html``)
- ``/web/{name}``                        its script, style and the JavaScript device runtime
                                          (``/web/daonet-device.mjs``, usable by any page or app)
- ``/device-bundles/index.json``         the device bundles on offer: model id, version, path
- ``/device-bundles/{model_id}/manifest.json`` and ``/device-bundles/{model_id}/{weight file}``
                                          each served model's device half (the one next to its server
                                          bundle, ``bundles/NAME/device``), byte for byte as exported and
                                          verified when the server started (held in memory, so a file
                                          edited, truncated or deleted afterwards changes nothing)

Every response carries a strict Content-Security-Policy (scripts, styles and connections to this origin
only; no inline script) and ``nosniff``. The device key never leaves the browser's storage.
This module reads bundle manifests only (``daonet.bundle``); it imports no device or server code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..bundle import DEVICE_FORMAT, MANIFEST, check_pair, verify_content
from ..errors import BundleError
from ..manifest import DeviceManifest, read_manifest_json

STATIC = Path(__file__).resolve().parent
DEVICE_BUNDLES_PATH = "/device-bundles"
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.mjs": "text/javascript; charset=utf-8",
    "daonet-device.mjs": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# 'wasm-unsafe-eval' lets the device runtime compile its own WebAssembly SIMD kernels (built byte by byte inside
# daonet-device.mjs); it allows no JavaScript eval. Without it the runtime falls back to plain JS (same bytes).
CSP = ("default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

__all__ = ["DeviceBundle", "find_device_bundles", "web_routes", "DEVICE_BUNDLES_PATH", "CSP"]


@dataclass(frozen=True)
class DeviceBundle:
    """One device half offered to browsers: its manifest and weight bytes as verified at start-up."""

    model_id: str
    version: str
    directory: Path
    weights: str  # the one weight file its manifest lists
    manifest_bytes: bytes = field(repr=False, default=b"")
    weight_bytes: bytes = field(repr=False, default=b"")

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "version": self.version,
                "path": f"{DEVICE_BUNDLES_PATH}/{self.model_id}/"}


def _verified_device_half(device_dir: Path, server_manifest: Any, public_keys: Sequence[Any]) -> DeviceBundle:
    """Read the device half once and check those very bytes: schema, version from content (and signature with
    ``public_keys``), the pair with the served model, the weight file's SHA-256."""
    raw = read_manifest_json(device_dir, DEVICE_FORMAT)  # exists, is JSON, is a device half
    manifest_bytes = (device_dir / MANIFEST).read_bytes()
    if json.loads(manifest_bytes) != raw:
        raise BundleError(f"{device_dir / MANIFEST} changed while the server was starting; start it again")
    manifest = DeviceManifest.from_json(raw, str(device_dir / MANIFEST))
    verify_content(device_dir, raw, manifest, "device", public_keys)
    check_pair(manifest, server_manifest)
    if len(manifest.files) != 1:
        raise BundleError(f"{device_dir}: a device bundle lists exactly one weight file")
    name, expected = next(iter(manifest.files.items()))
    path = device_dir / name
    try:
        weight_bytes = path.read_bytes()
    except OSError:
        raise BundleError(f"{path} is missing or unreadable; copy the whole bundle directory or re-export it") from None
    if hashlib.sha256(weight_bytes).hexdigest() != expected:
        raise BundleError(f"{path} does not match its manifest: the file was modified or truncated; re-export or "
                          "re-download the bundle")
    return DeviceBundle(manifest.model_id, manifest.version, device_dir, name, manifest_bytes, weight_bytes)


def find_device_bundles(models: Iterable[Any], public_keys: Sequence[Any] = ()) -> list[DeviceBundle]:
    """The device half next to each served model's server bundle (``NAME/server`` -> ``NAME/device``),
    verified and held in memory; raises :class:`BundleError` when one is missing or does not verify."""
    out = []
    for m in models:
        server_dir = getattr(m, "bundle_dir", None)
        if server_dir is None:
            raise BundleError("--web cannot find the device bundle of a served model that was not loaded from a "
                              "directory")
        device_dir = Path(server_dir).parent / "device"
        if not (device_dir / MANIFEST).is_file():
            raise BundleError(f"--web serves each model's device bundle, but {device_dir} has none; keep the "
                              "device/ half next to server/ as `daonet export` writes them")
        out.append(_verified_device_half(device_dir, m.manifest, public_keys))
    return out


def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _not_found(detail: str) -> Response:
    return _secure(JSONResponse({"error": "not_found", "detail": detail}, 404))


def web_routes(models: Iterable[Any], public_keys: Sequence[Any] = ()) -> list[Route]:
    """Starlette routes of the page and the read-only device bundles (see the module docstring). Every file is
    read (and each device half verified) here, once: requests are answered from memory, never from disk."""
    bundles = {b.model_id: b for b in find_device_bundles(models, public_keys)}
    static_bytes = {name: (STATIC / name).read_bytes() for name in STATIC_FILES}
    page_files = ", ".join(sorted(STATIC_FILES))

    def _file(content: bytes, media_type: str) -> Response:
        return _secure(Response(content, media_type=media_type))

    async def page(_: Request) -> Response:
        return _file(static_bytes["index.html"], STATIC_FILES["index.html"])

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return _not_found(f"no such web file; the page's files are {page_files}")
        return _file(static_bytes[name], STATIC_FILES[name])

    async def index(_: Request) -> Response:
        return _secure(JSONResponse({"bundles": [b.to_dict() for b in bundles.values()]}))

    async def bundle_file(request: Request) -> Response:
        b = bundles.get(request.path_params["model_id"])
        name = request.path_params["name"]
        if b is None:
            return _not_found(f"no device bundle for that model id; see {DEVICE_BUNDLES_PATH}/index.json")
        if name == MANIFEST:
            return _file(b.manifest_bytes, "application/json")
        if name == b.weights:
            return _file(b.weight_bytes, "application/octet-stream")
        return _not_found(f"a device bundle serves {MANIFEST} and {b.weights} only")

    return [
        Route("/", page, methods=["GET"], include_in_schema=False),
        Route("/web/{name}", static, methods=["GET"], include_in_schema=False),
        Route(f"{DEVICE_BUNDLES_PATH}/index.json", index, methods=["GET"], include_in_schema=False),
        Route(DEVICE_BUNDLES_PATH + "/{model_id}/{name}", bundle_file, methods=["GET"], include_in_schema=False),
    ]
