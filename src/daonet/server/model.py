"""The server part as a plain Python object: load a server bundle, predict from sparse payloads.

Independent of any web framework, so FastAPI (``daonet.server.app``), a Ray Serve deployment
or a batch job can wrap it without a rewrite. It has no method that takes a raw input.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bundle import SERVER_FORMAT, load_verified_weights, read_manifest
from ..errors import BundleError, PayloadError, VersionMismatchError
from ..nn import build_model
from ..wire import SparsePayload, decode, validate_sparse


class ServerModel:
    """The rest of the network behind the localized first layer."""

    def __init__(self, manifest: dict[str, Any], rest: torch.nn.Module, bundle_dir: Path | None = None) -> None:
        self.manifest = manifest
        self.rest = rest.eval()
        self.bundle_dir = bundle_dir
        self.first_layer = manifest["first_layer"]
        self.output_shape = tuple(int(s) for s in self.first_layer["output_shape"])
        self.n_outputs = int(self.first_layer["n_outputs"])

    @classmethod
    def load(cls, bundle_dir: str | Path) -> ServerModel:
        bundle_dir = Path(bundle_dir)
        if (bundle_dir / "server").is_dir() and not (bundle_dir / "manifest.json").exists():
            bundle_dir = bundle_dir / "server"
        manifest = read_manifest(bundle_dir, SERVER_FORMAT)
        if len(manifest["files"]) != 1:
            raise BundleError(f"{bundle_dir}: a server bundle lists exactly one weight file")
        name = next(iter(manifest["files"]))
        tensors = load_verified_weights(bundle_dir, manifest, name)
        try:
            model = build_model(manifest["arch"])
            model.rest.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
        except (KeyError, RuntimeError) as exc:
            raise BundleError(f"{bundle_dir}: weights do not fit the architecture ({exc}); re-export it") from exc
        return cls(manifest, model.rest, bundle_dir)

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.get("classes", []))

    def info(self) -> dict[str, Any]:
        """What a client needs to check its device bundle against this server."""
        return {
            "model_id": self.model_id, "version": self.version, "classes": self.classes,
            "device_input": self.manifest.get("device_input"), "first_layer": self.first_layer,
            "drop": self.manifest.get("drop"), "wire_version": self.manifest.get("wire", {}).get("version", 1),
        }

    # -- payload handling -------------------------------------------------------------------------
    def parse(self, data: bytes) -> SparsePayload:
        """Decode and validate a binary payload for this model (version, size, values)."""
        payload = decode(data, expected_outputs=self.n_outputs)
        self.check_version(payload.model_version)
        return payload

    def parse_json(self, obj: dict[str, Any]) -> SparsePayload:
        if not isinstance(obj, dict):
            raise PayloadError("JSON payload must be an object with 'indices' and 'values'")
        for key in ("indices", "values"):
            if not isinstance(obj.get(key), list):
                raise PayloadError(f"JSON payload needs a list field {key!r}")
        version = obj.get("model_version", self.version)
        if not isinstance(version, str):
            raise PayloadError("'model_version' must be a string")
        n = obj.get("n_outputs", self.n_outputs)
        if n != self.n_outputs:
            raise PayloadError(f"payload says the first layer has {n} outputs; this model's has {self.n_outputs}")
        payload = validate_sparse(version, self.n_outputs, obj["indices"], obj["values"])
        self.check_version(payload.model_version)
        return payload

    def check_version(self, version: str) -> None:
        if version != self.version:
            raise VersionMismatchError(
                f"payload was made by model version {version!r}, this server runs {self.version!r} of "
                f"{self.model_id!r}; update the device bundle (daonet export) or serve the matching version",
                expected=self.version, got=version,
            )

    def dense_batch(self, payloads: Sequence[SparsePayload]) -> torch.Tensor:
        batch = torch.zeros((len(payloads), self.n_outputs), dtype=torch.float32)
        for row, p in enumerate(payloads):
            batch[row, torch.from_numpy(p.indices)] = torch.from_numpy(p.values)
        return batch.reshape((len(payloads), *self.output_shape))

    @torch.inference_mode()
    def predict_proba(self, payloads: Sequence[SparsePayload]) -> np.ndarray:
        """Class probabilities ``(N, n_classes)`` from sparse payloads (one forward pass)."""
        if not payloads:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        logits = self.rest(self.dense_batch(payloads))
        return torch.softmax(logits, dim=1).numpy()

    def predict_bytes(self, items: Sequence[bytes]) -> np.ndarray:
        return self.predict_proba([self.parse(b) for b in items])
