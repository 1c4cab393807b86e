"""The server part as a plain Python object: load a server bundle, predict from sparse payloads.

Independent of any web framework, so FastAPI (``daonet.server.app``), a Ray Serve deployment
or a batch job can wrap it without a rewrite. It has no method that takes a raw input.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bundle import SERVER_FORMAT, ManifestIdentity, load_bundle
from ..convert import PROGRAM_ARCH, load_program
from ..errors import BundleError, DaonetError, InvalidPayloadError, VersionMismatchError
from ..manifest import ServerManifest
from ..nn import build_model
from ..wire import SparsePayload, decode, read_frame, validate_sparse


class UnknownModelError(DaonetError, LookupError):
    """No served model has this id."""


class ServerModel(ManifestIdentity[ServerManifest]):
    """The rest of the network behind the localized first layer."""

    def __init__(self, manifest: ServerManifest, rest: torch.nn.Module, bundle_dir: Path | None = None) -> None:
        """Wrap the rest of the network; ``load`` builds it from a bundle."""
        self.manifest = manifest
        self.rest = rest if isinstance(rest, torch.fx.GraphModule) else rest.eval()  # programs are traced in eval
        self.bundle_dir = bundle_dir
        self.first_layer = manifest.first_layer
        self.output_shape: tuple[int, ...] = self.first_layer.output_shape
        self.n_outputs = self.first_layer.n_outputs

    @classmethod
    def load(cls, bundle_dir: str | Path, *, public_keys: Sequence[Any] = ()) -> ServerModel:
        """Load ``bundle/server`` (or a bundle root holding ``server/``).

        Args:
            bundle_dir: the server bundle directory written by ``daonet export``.
            public_keys: Ed25519 ``.pub`` files: refuse a bundle none of them signed.
        Returns:
            The model in eval mode, its manifest validated and its weights checked against their SHA-256.
        Raises:
            BundleError: a missing, tampered or inconsistent bundle, or weights that do not fit the architecture.
        """
        bundle_dir, manifest, tensors = load_bundle(bundle_dir, SERVER_FORMAT, public_keys)
        assert isinstance(manifest, ServerManifest)
        if manifest.arch.name == PROGRAM_ARCH:  # any architecture, saved by daonet.export (verified)
            rest = load_program(bundle_dir / next(iter(manifest.files)))
            server = cls(manifest, rest, bundle_dir)
            server.check_against_network()
            return server
        try:
            model = build_model(manifest.arch.as_dict())
            model.rest.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
        except (KeyError, RuntimeError) as exc:
            raise BundleError(f"{bundle_dir}: weights do not fit the architecture ({exc}); re-export it") from exc
        server = cls(manifest, model.rest, bundle_dir)
        server.check_against_network()
        return server

    def check_against_network(self) -> None:
        """Refuse a manifest that disagrees with the network (at load, not as a 500 on every request):
        ``n_outputs`` = the product of ``output_shape``, the network takes that shape, one output per class."""
        where = f"{self.bundle_dir}: " if self.bundle_dir is not None else ""
        fix = "; the manifest was edited or the bundle is corrupt, re-export it with `daonet export`"
        size = int(np.prod(self.output_shape)) if self.output_shape else 0
        if size != self.n_outputs:
            raise BundleError(f"{where}manifest says the first layer has n_outputs {self.n_outputs} but its "
                              f"output_shape {list(self.output_shape)} holds {size}{fix}")
        try:
            with torch.inference_mode():
                out = self.rest(torch.zeros((1, *self.output_shape)))
        except (RuntimeError, ValueError) as exc:
            raise BundleError(f"{where}the network does not take the manifest's first-layer output_shape "
                              f"{list(self.output_shape)} ({type(exc).__name__}){fix}") from None
        if self.classes and tuple(out.shape) != (1, len(self.classes)):
            raise BundleError(f"{where}the network gives {out.shape[-1]} outputs but the manifest lists "
                              f"{len(self.classes)} classes{fix}")

    def info(self) -> dict[str, Any]:
        """What a client needs to check its device bundle against this server."""
        return {
            "model_id": self.model_id, "version": self.version, "classes": self.classes,
            "device_input": self.manifest.device_input.to_json() if self.manifest.device_input else None,
            "first_layer": self.first_layer.to_json(), "drop": self.manifest.drop.to_json(),
            "wire_version": self.manifest.wire.version,
        }

    # -- payload handling -------------------------------------------------------------------------
    def parse(self, data: bytes) -> SparsePayload:
        """Decode and validate a binary payload: framing (400), then version (409), then content (422).

        All checks and messages live in :mod:`daonet.wire`, shared with the device side.
        """
        frame = read_frame(data)
        self.check_version(frame.model_version)
        return decode(data, expected_outputs=self.n_outputs, frame=frame, wire_version=self.manifest.wire.version)

    def parse_json(self, obj: Any) -> SparsePayload:
        """The JSON debugging form ``{"model_version", "indices", "values"}``; same checks as binary."""
        if not isinstance(obj, dict):
            raise InvalidPayloadError("JSON payload must be an object with 'model_version', 'indices' and 'values'")
        version = obj.get("model_version")
        if not isinstance(version, str):
            raise InvalidPayloadError("JSON payload needs a string field 'model_version' (GET /v1/models lists it)")
        for key in ("indices", "values"):
            if not isinstance(obj.get(key), list):
                raise InvalidPayloadError(f"JSON payload needs a list field {key!r}")
        self.check_version(version)
        n = obj.get("n_outputs", self.n_outputs)
        if not isinstance(n, int) or isinstance(n, bool):
            raise InvalidPayloadError("'n_outputs' must be an integer (the first layer's output count); "
                                      "leave it out or copy it from GET /v1/models")
        if n != self.n_outputs:
            shown = str(n) if abs(n) < 2**63 else "a huge number"
            raise InvalidPayloadError(f"payload says the first layer has {shown} outputs; "
                                      f"this model's has {self.n_outputs}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in obj["indices"]):
            raise InvalidPayloadError("'indices' must be a list of integers")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in obj["values"]):
            raise InvalidPayloadError("'values' must be a list of numbers")
        return validate_sparse(version, self.n_outputs, obj["indices"], obj["values"],
                               signed=self.manifest.wire.version == 2)

    def check_version(self, version: str) -> None:
        if version != self.version:
            raise VersionMismatchError(
                f"payload was made by model version {version!r}, this server runs {self.version!r} of "
                f"{self.model_id!r}; update the device bundle (daonet export) or serve the matching version",
                expected=self.version, got=version,
            )

    def dense_batch(self, payloads: Sequence[SparsePayload]) -> torch.Tensor:
        """Scatter the sparse rows into one dense batch (a single vectorized assignment)."""
        dense = np.zeros((len(payloads), self.n_outputs), dtype=np.float32)
        counts = [p.nnz for p in payloads]
        if sum(counts):
            rows = np.repeat(np.arange(len(payloads)), counts)
            dense[rows, np.concatenate([p.indices for p in payloads])] = np.concatenate([p.values for p in payloads])
        return torch.from_numpy(dense).reshape((len(payloads), *self.output_shape))

    @torch.inference_mode()
    def predict_proba(self, payloads: Sequence[SparsePayload]) -> np.ndarray:
        """Class probabilities ``(N, n_classes)`` from sparse payloads (one forward pass)."""
        if not payloads:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        logits = self.rest(self.dense_batch(payloads))
        return torch.softmax(logits, dim=1).numpy()

    @property
    def max_payload_bytes(self) -> int:
        """The largest valid request body for this model: its JSON form with every output non-zero
        (index and a float's repr, at most 48 characters per output, plus the fields), which bounds the binary
        form (16 + 255 + 8 per output) too."""
        return 512 + 48 * self.n_outputs

    def check_output(self, probs: np.ndarray) -> np.ndarray:
        """One request's probabilities, or :class:`InvalidPayloadError` when the forward pass overflowed.

        Finite values far beyond any real first-layer output (e.g. 3.4e38) turn into inf/NaN inside the
        network; rows are independent, so only the request that sent them is refused (HTTP 422)."""
        if not np.isfinite(probs).all():
            raise InvalidPayloadError(
                "values are too large for this model: its forward pass overflowed (non-finite result). Real "
                "first-layer outputs are small: compute them on normalized inputs, (x - mean) / std with the "
                "manifest's normalization")
        return probs

    def predict_bytes(self, items: Sequence[bytes]) -> np.ndarray:
        """Class probabilities for wire-format payloads, as the device sent them.

        Args:
            items: one payload's bytes per request (see :mod:`daonet.wire`).
        Returns:
            ``(N, n_classes)`` probabilities, one forward pass for the batch.
        Raises:
            MalformedPayloadError: bytes that cannot be framed; VersionMismatchError: a payload from another
            model version; InvalidPayloadError: impossible content (index range, duplicates, NaN, ...).
        """
        return self.predict_proba([self.parse(b) for b in items])


class ModelRegistry:
    """Several server bundles served at once, keyed by ``model_id`` (framework independent)."""

    def __init__(self, models: Iterable[ServerModel] = ()) -> None:
        self._models: dict[str, ServerModel] = {}
        for m in models:
            self.add(m)

    @classmethod
    def load(cls, bundle_dirs: Iterable[str | Path], *, public_keys: Sequence[Any] = ()) -> ModelRegistry:
        return cls(ServerModel.load(d, public_keys=public_keys) for d in bundle_dirs)

    def add(self, model: ServerModel) -> None:
        old = self._models.get(model.model_id)
        if old is not None:
            raise BundleError(
                f"two bundles have model id {model.model_id!r} (versions {old.version} and {model.version}); "
                "serve one version per model id, or export one of them with another --model-id"
            )
        self._models[model.model_id] = model

    def get(self, model_id: str) -> ServerModel:
        try:
            return self._models[model_id]
        except KeyError:
            served = ", ".join(sorted(self._models)) or "none"
            raise UnknownModelError(f"no model by that id is served here (served: {served}); GET /v1/models "
                                    "lists them") from None

    @property
    def ids(self) -> list[str]:
        return sorted(self._models)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._models

    def __iter__(self) -> Iterator[ServerModel]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)
