"""Bundle files on disk: a JSON manifest plus safetensors weights, integrity-checked (numpy only).

A bundle directory holds ``manifest.json`` and the weight files it lists with their SHA-256.
Loading re-hashes every listed file, so a tampered or truncated file is refused before a single
weight is used. Device and server halves of one model carry the same ``model_id`` and
``version``, so a mismatched pair is refused too.

The version is bound to the content: ``version = sha256("daonet-bundle-v1" | device digest | server
digest)[:16]``, where a half's digest is the SHA-256 of its canonical manifest (sorted keys, no
whitespace, without ``version`` and ``integrity``; the file hashes are part of it). Each half carries
the other half's digest (``integrity.pair_digest``), so each recomputes the version alone at load and
refuses a mismatch: an edited field, or a weight file whose hash was rewritten in the manifest, no
longer matches. Anyone can recompute all of this after an edit (:func:`seal_bundle`); what they cannot
do without the vendor's key is sign it: with ``public_keys`` given, a bundle must carry a valid Ed25519
signature over both digests (:mod:`daonet.signing`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
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
    read_manifest_json,
)

BUNDLE_CONTEXT = b"daonet-bundle-v1"
_UNSEALED = ("version", "integrity")

__all__ = ["MANIFEST", "FORMAT_VERSION", "DEVICE_FORMAT", "SERVER_FORMAT", "sha256_file", "content_version",
           "write_weights", "write_manifest", "read_manifest", "load_verified_weights", "check_pair", "load_bundle",
           "ManifestIdentity", "content_digest", "seal_bundle", "verify_content", "bundle_is_current"]


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


def content_digest(raw: dict[str, Any]) -> str:
    """SHA-256 of a half's canonical manifest content (everything but ``version`` and ``integrity``)."""
    core = {k: v for k, v in raw.items() if k not in _UNSEALED}
    try:
        text = json.dumps(core, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except ValueError:  # json.loads reads NaN/Infinity, which canonical JSON cannot carry
        raise BundleError("a manifest holds a non-finite number (NaN or Infinity), which JSON cannot carry; the "
                          "bundle is corrupt, re-export it") from None
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _message(device_digest: str, server_digest: str) -> bytes:
    return BUNDLE_CONTEXT + bytes.fromhex(device_digest) + bytes.fromhex(server_digest)


def _version(device_digest: str, server_digest: str) -> str:
    return hashlib.sha256(_message(device_digest, server_digest)).hexdigest()[:16]


def seal_bundle(root: str | Path, sign_key: str | Path | None = None) -> str:
    """(Re)compute ``version`` and ``integrity`` of both halves under ``root`` from their content, signing
    with ``sign_key`` (an Ed25519 ``.key`` file) if given; returns the version. ``daonet export`` calls it."""
    root = Path(root)
    raws = {side: json.loads((root / side / MANIFEST).read_text()) for side in ("device", "server")}
    digests = {side: content_digest(raw) for side, raw in raws.items()}
    version = _version(digests["device"], digests["server"])
    signature: dict[str, str] = {}
    if sign_key is not None:
        from .signing import load_private_key, sign

        sig, kid = sign(load_private_key(sign_key), _message(digests["device"], digests["server"]))
        signature = {"signature": sig, "key_id": kid}
    for side, other in (("device", "server"), ("server", "device")):
        raw = {**raws[side], "version": version, "integrity": {"pair_digest": digests[other], **signature}}
        (root / side / MANIFEST).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    return version


def verify_content(directory: Path, raw: dict[str, Any], manifest: DeviceManifest | ServerManifest, side: str,
                   public_keys: Sequence[Any] = ()) -> None:
    """Refuse a half whose version does not follow from its content (and, with keys, an unsigned one).

    ``public_keys``: ``.pub`` files, PEM or raw bytes, or loaded keys."""
    where = str(directory / MANIFEST)
    if manifest.integrity is None:
        raise BundleError(f"{where} has no integrity block, so its version is not bound to its content (exported "
                          "by an older daonet, or edited); re-export it with `daonet export`")
    own = content_digest(raw)
    digests = (own, manifest.integrity.pair_digest) if side == "device" else (manifest.integrity.pair_digest, own)
    expected = _version(*digests)
    if manifest.version != expected:
        raise BundleError(f"{where}: version {manifest.version!r} does not match its content (expected "
                          f"{expected!r}): the manifest or a weight file was edited after export; re-export or "
                          "re-download the bundle")
    if public_keys:
        from .signing import load_public_key, verify

        public_keys = [k if hasattr(k, "verify") else load_public_key(k) for k in public_keys]
        verify(public_keys, manifest.integrity.signature, manifest.integrity.key_id, _message(*digests), where)


def bundle_is_current(root: str | Path) -> bool:
    """True when both halves under ``root`` exist and their versions follow from their content (this daonet's
    format): caches use it to re-export bundles written by an older daonet instead of failing on them."""
    root = Path(root)
    try:
        for side, fmt, cls in (("device", DEVICE_FORMAT, DeviceManifest), ("server", SERVER_FORMAT, ServerManifest)):
            raw = read_manifest_json(root / side, fmt)
            verify_content(root / side, raw, cls.from_json(raw, side), side)
    except BundleError:
        return False
    return True


def load_bundle(bundle_dir: str | Path, expected_format: str, public_keys: Sequence[Any] = ()
                ) -> tuple[Path, DeviceManifest | ServerManifest, dict[str, np.ndarray]]:
    """Read one half of a bundle: ``(directory, manifest, verified weights)``.

    Accepts the half's own directory or the bundle root holding ``device/`` and ``server/``. Checks, in
    order: the manifest's schema, its version against its content (:func:`verify_content`), the
    signature when ``public_keys`` (loaded with :func:`daonet.signing.load_public_key`) are given, then
    every weight file's SHA-256.
    """
    bundle_dir = Path(bundle_dir)
    side = "device" if expected_format == DEVICE_FORMAT else "server"
    if (bundle_dir / side).is_dir() and not (bundle_dir / MANIFEST).exists():
        bundle_dir = bundle_dir / side
    raw = read_manifest_json(bundle_dir, expected_format)
    cls = DeviceManifest if expected_format == DEVICE_FORMAT else ServerManifest
    manifest = cls.from_json(raw, str(bundle_dir / MANIFEST))
    verify_content(bundle_dir, raw, manifest, side, public_keys)
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
