"""The web page of ``daonet serve --web``: the first layer runs in the browser, only the payload is sent.

Routes (all read-only, GET only, served by daonet itself: no third-party resources):

- ``/``                                  the page (``index.html``)
- ``/web/{name}``                        its script, style and the JavaScript device runtime
                                          (``/web/daonet-device.mjs``, usable by any page or app)
- ``/device-bundles/index.json``         the device bundles on offer: model id, version, path
- ``/device-bundles/{model_id}/manifest.json`` and ``/device-bundles/{model_id}/{weight file}``
                                          each served model's device half (the one next to its server
                                          bundle, ``bundles/NAME/device``), byte for byte as exported

Every response carries a strict Content-Security-Policy (scripts, styles and connections to this origin
only; no inline script) and ``nosniff``. The device key never leaves the browser's storage.
This module reads bundle manifests only (``daonet.bundle``); it imports no device or server code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..bundle import DEVICE_FORMAT, MANIFEST, check_pair, read_manifest
from ..errors import BundleError

STATIC = Path(__file__).resolve().parent
DEVICE_BUNDLES_PATH = "/device-bundles"
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.mjs": "text/javascript; charset=utf-8",
    "daonet-device.mjs": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
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
    """One device half offered to browsers: its directory and the files it may serve."""

    model_id: str
    version: str
    directory: Path
    weights: str  # the one weight file its manifest lists

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "version": self.version,
                "path": f"{DEVICE_BUNDLES_PATH}/{self.model_id}/"}


def find_device_bundles(models: Iterable[Any]) -> list[DeviceBundle]:
    """The device half next to each served model's server bundle (``NAME/server`` -> ``NAME/device``),
    checked to be the same model id and version; raises :class:`BundleError` when one is missing."""
    out = []
    for m in models:
        server_dir = getattr(m, "bundle_dir", None)
        if server_dir is None:
            raise BundleError(f"--web cannot find the device bundle of {m.model_id!r}: it was not loaded from a "
                              "directory")
        device_dir = Path(server_dir).parent / "device"
        if not (device_dir / MANIFEST).is_file():
            raise BundleError(f"--web serves each model's device bundle, but {device_dir} has none; keep the "
                              "device/ half next to server/ as `daonet export` writes them")
        manifest = read_manifest(device_dir, DEVICE_FORMAT)
        check_pair(manifest, m.manifest)
        if len(manifest.files) != 1:
            raise BundleError(f"{device_dir}: a device bundle lists exactly one weight file")
        out.append(DeviceBundle(m.model_id, m.version, device_dir, next(iter(manifest.files))))
    return out


def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _not_found(detail: str) -> Response:
    return _secure(JSONResponse({"error": "not_found", "detail": detail}, 404))


def web_routes(models: Iterable[Any]) -> list[Route]:
    """Starlette routes of the page and the read-only device bundles (see the module docstring)."""
    bundles = {b.model_id: b for b in find_device_bundles(models)}

    async def page(_: Request) -> Response:
        return _secure(FileResponse(STATIC / "index.html", media_type=STATIC_FILES["index.html"]))

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return _not_found(f"no web file {name!r}; the page's files are {', '.join(sorted(STATIC_FILES))}")
        return _secure(FileResponse(STATIC / name, media_type=STATIC_FILES[name]))

    async def index(_: Request) -> Response:
        return _secure(JSONResponse({"bundles": [b.to_dict() for b in bundles.values()]}))

    async def bundle_file(request: Request) -> Response:
        b = bundles.get(request.path_params["model_id"])
        name = request.path_params["name"]
        if b is None:
            return _not_found(f"no device bundle for model {request.path_params['model_id']!r}; see "
                              f"{DEVICE_BUNDLES_PATH}/index.json")
        if name == MANIFEST:
            return _secure(FileResponse(b.directory / MANIFEST, media_type="application/json"))
        if name == b.weights:
            return _secure(FileResponse(b.directory / name, media_type="application/octet-stream"))
        return _not_found(f"a device bundle serves {MANIFEST} and {b.weights} only")

    return [
        Route("/", page, methods=["GET"], include_in_schema=False),
        Route("/web/{name}", static, methods=["GET"], include_in_schema=False),
        Route(f"{DEVICE_BUNDLES_PATH}/index.json", index, methods=["GET"], include_in_schema=False),
        Route(DEVICE_BUNDLES_PATH + "/{model_id}/{name}", bundle_file, methods=["GET"], include_in_schema=False),
    ]
