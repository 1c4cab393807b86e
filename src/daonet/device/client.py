"""The device's network client: encode on the device, send only the sparse payload (numpy + httpx only).

    client = Client("https://server:8000", "bundles/mnist/device", api_key=KEY)
    pred = client.predict(image)          # Prediction(label=..., probabilities=..., payload_bytes=..., nnz=...)
    preds = client.predict_many(images)   # concurrent requests; the server micro-batches them

Before the first request the client asks ``GET /v1/models`` whether the server serves this bundle's
model id and version, and refuses with :class:`~daonet.errors.VersionMismatchError` otherwise: a
device should never send activations a different model would misread. Importing this module never
imports torch or any server framework.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ..errors import DaonetError, VersionMismatchError
from .masks import MaskSource, RandomMasks, make_masks
from .runtime import DeviceModel, DevicePayload

__all__ = ["Client", "Prediction", "ServerError"]

ENCODE_CHUNK = 1024


class ServerError(DaonetError):
    """The server answered with an error; ``status``, ``error`` and ``detail`` come from its JSON body."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"server answered {status} ({error}): {detail}")
        self.status, self.error, self.detail = status, error, detail


@dataclass(frozen=True)
class Prediction:
    """One answer, with exactly what was sent for it (kept on the device, for display and audit)."""

    label: str
    index: int
    probabilities: np.ndarray
    payload_bytes: int  # bytes of the request body: the whole of what left the device
    nnz: int
    n_outputs: int
    model_id: str
    model_version: str
    latency_s: float  # request round trip as the client saw it
    payload: DevicePayload = field(repr=False)

    @property
    def certificate(self) -> Any:
        """The request's privacy certificate (k, rank, identifiable, revealed energy); never sent."""
        return self.payload.certificate


def _ssl_verify(verify: bool | str | Path | ssl.SSLContext) -> bool | ssl.SSLContext:
    """``verify`` may be a CA bundle path (e.g. a self-signed server's certificate)."""
    if isinstance(verify, str | Path):
        path = Path(verify)
        if not path.is_file():
            raise DaonetError(f"CA file {path} does not exist; pass the PEM certificate that signed the server's")
        return ssl.create_default_context(cafile=str(path))
    return verify


class Client:
    """Talks to a ``daonet serve`` server for one device bundle. Thread-safe; reuse one per process."""

    def __init__(
        self,
        url: str,
        bundle_dir: str | Path | DeviceModel,
        *,
        api_key: str | None = None,
        masks: MaskSource | str | None = None,
        timeout: float = 30.0,
        verify: bool | str | Path | ssl.SSLContext = True,
        certify: bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``transport``: an httpx transport to talk through instead of the network (e.g. ``httpx.WSGITransport``
        or an in-process ASGI bridge in tests); ``None`` connects to ``url`` over TCP."""
        url = url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise DaonetError(f"server URL {url!r} must start with http:// or https://")
        self.url = url
        self.device = bundle_dir if isinstance(bundle_dir, DeviceModel) else DeviceModel.load(bundle_dir)
        if isinstance(masks, str):  # by name: "random", "keyed" or "similarity" (device key from ~/.daonet)
            masks = make_masks(masks, model_version=self.device.version)
        self.masks: MaskSource = masks if masks is not None else RandomMasks()
        self.certify = certify  # enforce the manifest's privacy policy and keep each request's certificate
        self._mask_lock = threading.Lock()  # mask generators are stateful; keep draws in request order
        headers = {"User-Agent": "daonet-device-client"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=url, headers=headers, timeout=timeout, verify=_ssl_verify(verify),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64), transport=transport,
        )
        self._checked: dict[str, Any] | None = None
        self._check_lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def predict_path(self) -> str:
        return f"/v1/models/{self.device.model_id}/predict"

    # -- HTTP -----------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            hint = ""
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                hint = " (TLS certificate not trusted: pass verify=CA_FILE / --cacert for a self-signed server)"
            raise DaonetError(f"cannot connect to {self.url}: {exc}{hint}; is `daonet serve` running there?") from exc
        except httpx.TimeoutException as exc:
            raise DaonetError(f"{method} {self.url}{path} timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise DaonetError(f"{method} {self.url}{path} failed: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _error(response: httpx.Response) -> DaonetError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        error = str(body.get("error", "http_error"))
        detail = str(body.get("detail", response.text[:200] or response.reason_phrase))
        if response.status_code == 409 and error == "version_mismatch":
            return VersionMismatchError(detail, expected=str(body.get("server_version")),
                                        got=str(body.get("payload_version")))
        return ServerError(response.status_code, error, detail)

    def check_server(self) -> dict[str, Any]:
        """Verify once that the server serves this bundle's model id and version; returns its model info."""
        with self._check_lock:
            if self._checked is not None:
                return self._checked
            r = self._request("GET", "/v1/models")
            if r.status_code != 200:
                raise self._error(r)
            try:
                served = {m["model_id"]: m for m in r.json()["models"]}
            except (ValueError, KeyError, TypeError) as exc:
                raise DaonetError(f"{self.url}/v1/models did not answer a daonet model list; is it a daonet "
                                  "server?") from exc
            mid, version = self.device.model_id, self.device.version
            info = served.get(mid)
            if info is None:
                raise VersionMismatchError(
                    f"server at {self.url} does not serve model {mid!r} (it serves: "
                    f"{', '.join(sorted(served)) or 'nothing'}); start it with this model's server bundle",
                    expected="(none)", got=version,
                )
            if info.get("version") != version:
                raise VersionMismatchError(
                    f"server at {self.url} serves {mid!r} version {info.get('version')!r}, this device bundle is "
                    f"version {version!r}; update the device bundle or serve the matching server bundle",
                    expected=str(info.get("version")), got=version,
                )
            self._checked = info
            return info

    def send(self, payload: DevicePayload) -> Prediction:
        """POST one encoded payload (only these bytes leave the device) and parse the answer."""
        self.check_server()
        t0 = time.perf_counter()
        r = self._request("POST", self.predict_path, content=payload.data,
                          headers={"Content-Type": "application/octet-stream"})
        latency = time.perf_counter() - t0
        if r.status_code != 200:
            raise self._error(r)
        try:
            body = r.json()
            return Prediction(
                label=str(body["label"]), index=int(body["index"]),
                probabilities=np.asarray(body["probabilities"], dtype=np.float32),
                payload_bytes=len(payload.data), nnz=payload.nnz, n_outputs=payload.n_outputs,
                model_id=str(body["model_id"]), model_version=str(body["model_version"]),
                latency_s=latency, payload=payload,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DaonetError(f"the server's answer is not a daonet prediction: {exc}") from exc

    # -- the API --------------------------------------------------------------------------------------------
    def encode(self, x: Any, *, mask: np.ndarray | None = None) -> DevicePayload:
        """Run the first layer, ReLU and dropping here on the device; returns what would be sent.

        With ``certify`` (the default) the device's privacy policy is enforced first and the request's
        certificate rides along in ``payload.certificate`` (it is never sent)."""
        with self._mask_lock:
            if self.certify:
                return self.device.encode_certified(x, self.masks, mask=mask)[0]
            return self.device.encode(x, self.masks, mask=mask)

    def encode_many(self, xs: Any) -> list[DevicePayload]:
        xb = self.device.validate(xs)
        out: list[DevicePayload] = []
        with self._mask_lock:
            for i in range(0, len(xb), ENCODE_CHUNK):
                chunk = xb[i:i + ENCODE_CHUNK]
                if self.certify:
                    out.extend(p for p, _ in self.device.encode_many_certified(chunk, self.masks))
                else:
                    out.extend(self.device.encode_many(chunk, self.masks))
        return out

    def predict(self, x: Any, *, mask: np.ndarray | None = None) -> Prediction:
        """Predict one input: encode it here, send only the payload, parse the server's answer.

        Args:
            x: one raw input, shaped as the device bundle's input.
            mask: an explicit keep-mask over the first layer's outputs (overrides the mask source).
        Returns:
            The prediction (label, probabilities, what was sent, latency).
        Raises:
            InputError: a bad input (nothing is sent); VersionMismatchError: the server runs another model
            version; ServerError: the server refused the request (its status and detail).
        """
        self.check_server()
        return self.send(self.encode(x, mask=mask))

    def predict_many(self, xs: Any | Iterable[Any], *, concurrency: int = 16) -> list[Prediction]:
        """Predict a batch ``(N, *input_shape)`` with up to ``concurrency`` requests in flight; keeps order."""
        if concurrency < 1:
            raise DaonetError(f"concurrency must be at least 1, got {concurrency}")
        self.check_server()
        payloads = self.encode_many(xs)
        return self.send_many(payloads, concurrency=concurrency)

    def send_many(self, payloads: Sequence[DevicePayload], *, concurrency: int = 16) -> list[Prediction]:
        """Send already-encoded payloads concurrently (one request each, so the server can micro-batch)."""
        if len(payloads) <= 1 or concurrency == 1:
            return [self.send(p) for p in payloads]
        pool = ThreadPoolExecutor(max_workers=min(concurrency, len(payloads)), thread_name_prefix="daonet-client")
        try:
            return list(pool.map(self.send, payloads))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
