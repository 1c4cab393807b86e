"""Bundle files on disk: a JSON manifest plus safetensors weights, integrity-checked (numpy only).

A bundle directory holds ``manifest.json`` and the weight files it lists with their SHA-256.
Loading re-hashes every listed file, so a tampered or truncated file is refused before a single
weight is used. Device and server halves of one model carry the same ``model_id`` and
``version`` (a content hash over both halves), so a mismatched pair is refused too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from safetensors.numpy import load_file, save_file

from .errors import BundleError, VersionMismatchError
from .manifest import (
    DEVICE_FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SERVER_FORMAT,
    DeviceManifest,
    ServerManifest,
)

__all__ = ["MANIFEST", "FORMAT_VERSION", "DEVICE_FORMAT", "SERVER_FORMAT", "sha256_file", "content_version",
           "write_weights", "write_manifest", "read_manifest", "load_verified_weights", "check_pair", "load_bundle",
           "ManifestIdentity"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_version(*file_hashes: str, config: dict[str, Any] | None = None) -> str:
    """A short, stable model version: hash of both halves' weight hashes and the architecture."""
    h = hashlib.sha256()
    for fh in file_hashes:
        h.update(fh.encode())
    if config is not None:
        h.update(json.dumps(config, sort_keys=True).encode())
    return h.hexdigest()[:16]


def write_weights(path: Path, tensors: dict[str, np.ndarray]) -> str:
    """Write float32 arrays as safetensors; returns the file's SHA-256."""
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return sha256_file(path)


def write_manifest(directory: Path, manifest: DeviceManifest | ServerManifest) -> None:
    """Write ``manifest.json`` (sorted keys: a stable, diffable file)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")


def read_manifest(directory: str | Path, expected_format: str) -> DeviceManifest | ServerManifest:
    """Read and validate a manifest (typed); raise :class:`BundleError` with a fix-it hint otherwise."""
    cls = DeviceManifest if expected_format == DEVICE_FORMAT else ServerManifest
    return cls.load(directory)


def load_verified_weights(directory: str | Path, manifest: DeviceManifest | ServerManifest,
                          name: str) -> dict[str, np.ndarray]:
    """Load one listed weight file after checking its SHA-256 against the manifest."""
    directory = Path(directory)
    expected = manifest.files.get(name)
    path = directory / name
    if expected is None:
        raise BundleError(f"{directory / MANIFEST} does not list {name}; the bundle is corrupt, re-export it")
    if not path.exists():
        raise BundleError(f"{path} is missing; copy the whole bundle directory or re-export it")
    actual = sha256_file(path)
    if actual != expected:
        raise BundleError(
            f"{path} does not match its manifest (sha256 {actual[:12]}... != {expected[:12]}...): the file "
            "was modified or truncated; re-export or re-download the bundle"
        )
    if not name.endswith(".safetensors"):  # e.g. a torch.export program: verified here, read by its owner
        return {}
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types on garbage
        raise BundleError(f"{path} is not a readable safetensors file: {exc}") from exc


class _Identified(Protocol):
    @property
    def model_id(self) -> str: ...

    @property
    def version(self) -> str: ...


def check_pair(device: _Identified, server: _Identified) -> None:
    """Refuse a device/server pair that comes from different models or versions.

    Takes the two manifests (or the loaded ``DeviceModel``/``ServerModel``, which carry the same fields).
    """
    for key in ("model_id", "version"):
        d, s = getattr(device, key), getattr(server, key)
        if d != s:
            raise VersionMismatchError(
                f"device bundle has {key} {d!r} but server bundle has {s!r}; export both halves from the "
                "same run with `daonet export`",
                expected=str(s), got=str(d),
            )


def load_bundle(bundle_dir: str | Path,
                expected_format: str) -> tuple[Path, DeviceManifest | ServerManifest, dict[str, np.ndarray]]:
    """Read one half of a bundle: ``(directory, manifest, verified weights)``.

    Accepts the half's own directory or the bundle root holding ``device/`` and ``server/``.
    """
    bundle_dir = Path(bundle_dir)
    side = "device" if expected_format == DEVICE_FORMAT else "server"
    if (bundle_dir / side).is_dir() and not (bundle_dir / MANIFEST).exists():
        bundle_dir = bundle_dir / side
    manifest = read_manifest(bundle_dir, expected_format)
    if len(manifest.files) != 1:
        raise BundleError(f"{bundle_dir}: a {side} bundle lists exactly one weight file")
    name = next(iter(manifest.files))
    return bundle_dir, manifest, load_verified_weights(bundle_dir, manifest, name)


M = TypeVar("M", DeviceManifest, ServerManifest)


class ManifestIdentity(Generic[M]):
    """``model_id``/``version``/``classes`` read from ``self.manifest`` (shared by both halves)."""

    manifest: M

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)
