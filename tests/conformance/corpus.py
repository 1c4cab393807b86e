"""The shared conformance corpus of device bundles: one list of good and bad bundles, one expected outcome each.

Both device runtimes load every case (pytest runs ``DeviceModel.load`` directly and ``loadDevice`` of
``daonet-device.mjs`` through ``tests/js/conformance_runner.mjs``) and must give the expected outcome: accept
(and then the same payload bytes for the case's probe input), or refuse with the expected error class and a
message that contains the expected words. The cases are built from the shipped, signed defaults (real trained
models) by editing them the way an attacker or a broken pipeline would: manifests edited with or without
re-sealing (anyone can recompute a version from content; only the vendor can sign), flipped weight bytes,
wrong or missing keys and signatures, out-of-range fields, and JSON texts that only a Python-exact parser reads
the same way (floats written as ints, duplicate keys, escapes, big integers).

    python tests/conformance/corpus.py OUT_DIR     # writes OUT_DIR/cases.json and one directory per case

Generated, not committed: the corpus follows the defaults and the key format wherever they go.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULTS = Path(__file__).resolve().parents[2] / "src" / "daonet" / "defaults"
PROJECT_KEY = DEFAULTS / "daonet-defaults.pub"
PROBE_KEY = bytes(range(32))  # the KeyedMasks key both runtimes encode an accepted case's probe with
WEIGHTS = "first_layer.safetensors"


@dataclass
class Case:
    """One bundle and what both runtimes must do with it."""

    name: str
    bundle: str  # the device directory
    keys: list[str]  # trusted public keys: .pub paths, or "raw:HEX" for the 32 raw bytes
    expect: str  # "accept" or "refuse"
    error: str | None = None  # the error class name on refusal (ManifestError is a BundleError)
    message: str | None = None  # words the refusal's message contains
    probe: dict[str, Any] | None = field(default=None)  # {"input": nested list, "dtype"}: encoded when accepted


def _read(device: Path) -> dict[str, Any]:
    return json.loads((device / "manifest.json").read_text())


def _write(device: Path, manifest: dict[str, Any]) -> None:
    (device / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _probes() -> dict[str, dict[str, Any]]:
    """One real test input per default, as the device holds it (uint8 pixels, float32 signal)."""
    from daonet.data import load_dataset

    pixels = np.clip(np.rint(load_dataset("mnist").x_test[0] * 255), 0, 255).astype(np.uint8)
    signal = load_dataset("ecg5000").x_test[0].astype(np.float32)
    return {"mnist-mlp": {"input": pixels.tolist(), "dtype": "uint8"},
            "ecg5000-cnn1d": {"input": signal.tolist(), "dtype": "float32"}}


def build_corpus(out: str | Path) -> list[Case]:
    """Write every case under ``out`` (plus ``out/cases.json``) and return them."""
    from daonet.bundle import seal_bundle
    from daonet.signing import generate_keypair

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = out / "keys"
    vendor_key, vendor_pub = generate_keypair(keys / "vendor")
    stranger_key, stranger_pub = generate_keypair(keys / "stranger")
    garbage_pub = keys / "garbage.pub"
    garbage_pub.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    probes = _probes()
    cases: list[Case] = []

    def case(name: str, expect: str, *, base: str = "ecg5000-cnn1d", edit: Callable[[dict], Any] | None = None,
             text: Callable[[str], str] | None = None, files: Callable[[Path], Any] | None = None,
             seal: str | None = None, keys: tuple[Any, ...] = (), error: str | None = None,
             message: str | None = None) -> None:
        """A copy of the default ``base`` (device half + the server manifest a seal needs), edited as JSON
        (``edit``), as text (``text``) or on disk (``files``), then re-sealed if ``seal`` ("unsigned" or the
        key that signs: "vendor", "stranger")."""
        root = out / name
        shutil.copytree(DEFAULTS / base / "device", root / "device")
        (root / "server").mkdir()
        shutil.copy(DEFAULTS / base / "server" / "manifest.json", root / "server" / "manifest.json")
        device = root / "device"
        if files is not None:
            files(device)
        if edit is not None:
            manifest = _read(device)
            edit(manifest)
            _write(device, manifest)
        if seal is not None:
            seal_bundle(root, {"unsigned": None, "vendor": vendor_key, "stranger": stranger_key}[seal])
        if text is not None:
            path = device / "manifest.json"
            path.write_text(text(path.read_text()))
        trusted = [str({"project": PROJECT_KEY, "vendor": vendor_pub, "stranger": stranger_pub,
                        "garbage": garbage_pub}.get(k, k)) for k in keys]
        cases.append(Case(name, str(device), trusted, expect, error, message,
                          probes[base] if expect == "accept" else None))

    def setter(path: str, value: Any) -> Callable[[dict], None]:
        def apply(m: dict) -> None:
            *parents, last = path.split(".")
            for p in parents:
                m = m[p]
            if value is _DELETE:
                del m[last]
            else:
                m[last] = value
        return apply

    content = "does not match its content"
    # -- the shipped defaults, as shipped ------------------------------------------------------------------
    case("default-ecg-signed", "accept", keys=("project",))
    case("default-mnist-signed", "accept", base="mnist-mlp", keys=("project",))
    case("default-ecg-no-keys", "accept")
    case("default-ecg-raw-key", "accept", keys=(f"raw:{_raw_key(PROJECT_KEY).hex()}",))
    case("default-ecg-project-and-stranger-trusted", "accept", keys=("stranger", "project"))
    # -- the privacy hole: edit the manifest, keep the version --------------------------------------------
    case("edited-drop-rate-0-std-1-old-version", "refuse", base="mnist-mlp",
         edit=lambda m: (m["drop"].update(rate=0.0), m["normalization"].update(std=[1.0])),
         error="BundleError", message=content)
    case("edited-drop-rate-keys-given-old-version", "refuse", edit=setter("drop.rate", 0.0), keys=("project",),
         error="BundleError", message=content)
    case("version-not-from-content", "refuse", edit=setter("version", "0123456789abcdef"), error="BundleError",
         message=content)
    case("pair-digest-of-another-bundle", "refuse", edit=setter("integrity.pair_digest", "ab" * 32),
         error="BundleError", message=content)
    case("weight-byte-flipped-hash-rewritten-old-version", "refuse", files=_flip_and_rehash, error="BundleError",
         message=content)
    case("no-integrity-block", "refuse", edit=setter("integrity", _DELETE), error="BundleError",
         message="has no integrity block")
    # -- re-sealed by someone without the vendor's key ------------------------------------------------------
    case("resealed-unsigned-no-keys", "accept", edit=setter("drop.rate", 0.5), seal="unsigned")
    case("resealed-unsigned-keys-given", "refuse", edit=setter("drop.rate", 0.0), seal="unsigned",
         keys=("project",), error="BundleError", message="is not signed, and a signed bundle is required")
    case("resealed-signed-by-stranger", "refuse", edit=setter("drop.rate", 0.0), seal="stranger", keys=("vendor",),
         error="BundleError", message="is not signed by a trusted key")
    case("resealed-signed-by-vendor", "accept", edit=setter("drop.rate", 0.8), seal="vendor", keys=("vendor",))
    case("signed-by-project-only-stranger-trusted", "refuse", keys=("stranger",), error="BundleError",
         message="is not signed by a trusted key")
    case("stranger-signature-under-vendor-key-id", "refuse", edit=setter("drop.rate", 0.7), seal="stranger",
         text=lambda t: t.replace(_key_id(stranger_pub), _key_id(vendor_pub)), keys=("vendor",),
         error="BundleError", message="is not signed by a trusted key")
    case("signature-one-character-changed", "refuse", keys=("project",),
         edit=lambda m: m["integrity"].update(signature=_change_b64(m["integrity"]["signature"])),
         error="BundleError", message="is not signed by a trusted key")
    case("signature-not-base64", "refuse", keys=("project",), edit=setter("integrity.signature", "!!not base64!!"),
         error="BundleError", message="is not signed by a trusted key")
    case("signature-with-whitespace", "refuse", keys=("project",),
         edit=lambda m: m["integrity"].update(signature=" " + m["integrity"]["signature"]),
         error="BundleError", message="is not signed by a trusted key")
    case("signature-without-key-id", "refuse", edit=setter("integrity.key_id", _DELETE), error="ManifestError",
         message="has a signature without a key_id")
    case("trusted-key-file-is-garbage", "refuse", keys=("garbage",), error="DaonetError",
         message="cannot read the public key")
    # -- weights ---------------------------------------------------------------------------------------------
    case("weight-byte-flipped", "refuse", files=lambda d: _flip_byte(d / WEIGHTS), keys=("project",),
         error="BundleError", message="does not match its manifest")
    case("weight-file-missing", "refuse", files=lambda d: (d / WEIGHTS).unlink(), error="BundleError",
         message="is missing")
    case("weight-shape-wrong-resealed-signed", "refuse", files=_transposed_weights, seal="vendor", keys=("vendor",),
         error="BundleError", message="first-layer weight has shape")
    # -- fields out of range or of the wrong type (re-sealed, so only the schema can refuse them) -----------
    for name, path, value, error, words in [
        ("drop-rate-1", "drop.rate", 1.0, "ManifestError", "must be in [0, 1)"),
        ("drop-rate-negative", "drop.rate", -0.1, "ManifestError", "must be in [0, 1)"),
        ("drop-rate-string", "drop.rate", "0.5", "ManifestError", "expected a finite number"),
        ("drop-rescaled", "drop.rescale", True, "ManifestError", "is not supported"),
        ("std-zero", "normalization.std", [0.0], "ManifestError", "must be positive"),
        ("std-two-channels", "normalization.std", [1.0, 1.0], "ManifestError", "input channel(s)"),
        ("energy-bound-above-1", "privacy.max_revealed_energy", 1.5, "ManifestError", "must be in [0, 1] or null"),
        ("identifiable-tol-0", "privacy.identifiable_tol", 0.0, "ManifestError", "must be in (0, 1)"),
        ("range-reversed", "input.range", [1.0, 0.0], "ManifestError", "low < high"),
        ("kind-conv3d", "layer.kind", "conv3d", "ManifestError", "is not supported"),
        ("n-outputs-wrong", "layer.n_outputs", 1000, "ManifestError", "has 1120 outputs"),
        ("kernel-wrong-geometry", "layer.kernel", [5], "ManifestError", "gives outputs"),
        ("stride-zero", "layer.stride", [0], "ManifestError", "must be positive integers"),
        ("model-id-empty", "model_id", "", "ManifestError", "is empty"),
        ("noise-negative-std", "noise", {"std": -1.0, "floor": 0.01}, "ManifestError", "are invalid"),
        ("wire-version-2", "wire.version", 2, "ManifestError", "is not supported"),
        ("format-version-2", "format_version", 2, "BundleError", "format version"),
        ("server-half-format", "format", "daonet-server-bundle", "BundleError", "expected 'daonet-device-bundle'"),
        ("drop-missing", "drop", _DELETE, "ManifestError", "the field 'drop' is missing"),
        ("two-weight-files", "files", {WEIGHTS: "0" * 64, "more.safetensors": "1" * 64}, "BundleError",
         "exactly one weight file"),
        ("weight-file-outside", "files", {"../first_layer.safetensors": "0" * 64}, "ManifestError",
         "is not a plain file name"),
    ]:
        case(name, "refuse", edit=setter(path, value), seal="unsigned", error=error, message=words)
    for name, path, value, words in [  # not re-sealed: a seal rewrites these fields
        ("version-not-a-string", "version", 7, "expected a string"),
        ("version-not-ascii", "version", "v\u00e9rsion", "must be a short ASCII string"),
        ("pair-digest-not-hex", "integrity.pair_digest", "xyz", "is not a SHA-256 hex digest"),
        ("signature-not-a-string", "integrity.signature", 12, "expected a string"),
    ]:
        case(name, "refuse", edit=setter(path, value), error="ManifestError", message=words)
    # -- JSON texts that only a Python-exact parser digests as Python does ------------------------------------
    case("int-written-as-float", "refuse", edit=setter("layer.n_outputs", 1120.0), seal="unsigned",
         error="ManifestError", message="expected an integer")
    case("format-version-written-as-float", "refuse",
         text=lambda t: t.replace('"format_version": 1', '"format_version": 1.0'),
         error="ManifestError", message="expected an integer")
    case("range-written-as-ints", "refuse", base="mnist-mlp", keys=("project",),
         text=lambda t: t.replace('"range": [\n      0.0,\n      1.0\n    ]', '"range": [0, 1]'), error="BundleError",
         message=content)
    case("float-spelled-differently", "accept", keys=("project",),
         text=lambda t: t.replace('"rate": 0.9', '"rate": 9.000e-1').replace("\n", "\r\n"))
    case("keys-reordered-compact", "accept", keys=("project",),
         text=lambda t: json.dumps(dict(reversed(list(json.loads(t).items()))), separators=(",", ":")))
    case("duplicate-key-last-wins", "accept", keys=("project",),
         text=lambda t: t.replace('"drop": {', '"drop": {"rate": 0.0, ', 1))
    case("duplicate-key-last-differs", "refuse", keys=("project",),
         text=lambda t: t.replace('"rate": 0.9,', '"rate": 0.9, "rate": 0.0,', 1), error="BundleError",
         message=content)
    case("extra-fields-unicode-bigint-floats", "accept", seal="vendor", keys=("vendor",),
         edit=setter("notes", {"text": 'na\u00efve \U0001f30d "q" \\ \t\x7f', "big": 12345678901234567890123,
                                "floats": [1e-7, 1e16, 123456789.0, -0.0, 0.1, 2.5e-308, 1.7976931348623157e308],
                                "keys": {"\u00e9": 1, "z": 2, "\U0001f600": 3, "\uffee": 4}}))
    case("escaped-text-same-content", "accept", keys=("project",),
         text=lambda t: t.replace('"model_id": "ecg5000-cnn1d"', '"model_id": "ecg5000\\u002dcnn1d"'))
    case("nan-literal-field", "refuse", text=lambda t: t.replace('"rate": 0.9', '"rate": NaN'),
         error="ManifestError", message="expected a finite number")
    case("nan-literal-extra-field", "refuse",
         text=lambda t: t.replace('"format_version": 1', '"x": NaN, "format_version": 1'),
         error="BundleError", message="non-finite")
    case("not-json", "refuse", text=lambda t: t[:-10], error="BundleError", message="is not valid JSON")
    case("invalid-utf8", "refuse", files=_invalid_utf8, error="BundleError", message="is not valid JSON")
    case("utf8-bom", "refuse", files=lambda d: (d / "manifest.json").write_bytes(
        b"\xef\xbb\xbf" + (d / "manifest.json").read_bytes()), error="BundleError", message="is not valid JSON")
    # -- the Gaussian mechanism (noise kind gaussian_ldp, wire version 2): same bytes, same refusals ----------
    def ldp(*edits: tuple[str, Any]) -> Callable[[dict], None]:
        def apply(m: dict) -> None:
            m["noise"], m["wire"] = _ldp_noise(), {"version": 2, "value_dtype": "float32"}
            for path, value in edits:
                setter(path, value)(m)
        return apply

    case("ldp-accept", "accept", edit=ldp(), seal="unsigned")
    case("ldp-drop-0-accept", "accept", edit=ldp(("drop.rate", 0.0)), seal="unsigned")
    for name, edits, error, words in [
        ("ldp-wire-version-1", [("wire.version", 1)], "ManifestError", "sends signed values: wire version 2"),
        ("ldp-float16", [("wire.value_dtype", "float16")], "ManifestError", "sends float32 values"),
        ("ldp-energy-policy", [("privacy.max_revealed_energy", 0.5)], "ManifestError",
         "would void the (epsilon, delta) bound"),
        ("ldp-grid-not-power-of-two", [("noise.grid", 0.03)], "ManifestError", "must be a positive power of two"),
        ("ldp-epsilon-missing", [("noise.epsilon", _DELETE)], "ManifestError",
         "is missing: noise of kind 'gaussian_ldp' needs it"),
        ("ldp-clip-not-on-grid", [("noise.clip", 3.0)], "ManifestError", "are not clip_steps x grid"),
        ("ldp-sensitivity-2c", [("noise.sensitivity", 6.25)], "ManifestError", "replace-one sensitivity"),
        ("ldp-applies-to-surviving", [("noise.applies_to", "surviving")], "ManifestError",
         "applies to every 'kept' output"),
        ("ldp-noise-steps-512", [("noise.noise_steps", 512), ("noise.std", 16.0)], "ManifestError",
         "must be in [1, 256]"),
        ("ldp-clip-steps-float", [("noise.clip_steps", 100.0)], "ManifestError", "expected an integer"),
        ("ldp-unknown-mechanism", [("noise.mechanism", "laplace")], "ManifestError", "is not supported"),
        ("ldp-unknown-kind", [("noise.kind", "laplace_ldp")], "ManifestError", "is not supported"),
        ("ldp-delta-1", [("noise.delta", 1.0)], "ManifestError", "must be in (0, 1)"),
    ]:
        case(name, "refuse", edit=ldp(*edits), seal="unsigned", error=error, message=words)
    (out / "cases.json").write_text(json.dumps([asdict(c) for c in cases], indent=1))
    return cases


def _ldp_noise() -> dict[str, Any]:
    """A valid ``gaussian_ldp`` noise object for the ECG default (grid 1/32, clip 100 steps, sigma 200 steps),
    epsilon from the accountant as export writes it."""
    from daonet.ldp import LdpParams, noise_spec

    return noise_spec(LdpParams(grid=2.0**-5, noise_steps=200, clip_steps=100), 1e-5)


class _Delete:
    """Marks a field to delete in :func:`build_corpus`'s edits."""


_DELETE = _Delete()


def _flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0x10
    path.write_bytes(bytes(raw))


def _flip_and_rehash(device: Path) -> None:
    """A flipped weight byte whose new hash is written into the manifest (the version is left as it was)."""
    from daonet.bundle import sha256_file

    _flip_byte(device / WEIGHTS)
    manifest = _read(device)
    manifest["files"] = {WEIGHTS: sha256_file(device / WEIGHTS)}
    _write(device, manifest)


def _invalid_utf8(device: Path) -> None:
    path = device / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b"ecg5000-cnn1d", b"ecg5000-\xff", 1))


def _transposed_weights(device: Path) -> None:
    """Rewrite the weights with the first layer's weight of a wrong shape, its hash updated in the manifest."""
    from safetensors.numpy import load_file

    from daonet.bundle import write_weights

    tensors = load_file(str(device / WEIGHTS))
    tensors["weight"] = np.ascontiguousarray(tensors["weight"].reshape(tensors["weight"].shape[0], -1).T)
    digest = write_weights(device / WEIGHTS, tensors)
    manifest = _read(device)
    manifest["files"] = {WEIGHTS: digest}
    _write(device, manifest)


def _raw_key(pub: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization

    from daonet.signing import load_public_key

    return load_public_key(pub).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _key_id(pub: Path) -> str:
    from daonet.signing import key_id, load_public_key

    return key_id(load_public_key(pub))


def _change_b64(signature: str) -> str:
    """The signature with its first character changed (still valid base64, another signature)."""
    return ("B" if signature[0] != "B" else "C") + signature[1:]


def reseal_half(device: str | Path, pair_digest: str | None = None) -> str:
    """Give one half a version that follows from its (edited) content, unsigned, as anyone can; ``pair_digest``
    (default: the one it carries) names the other half. Returns the new version."""
    from daonet.bundle import _version, content_digest

    device = Path(device)
    manifest = _read(device)
    pair = pair_digest or manifest["integrity"]["pair_digest"]
    manifest["version"] = _version(content_digest(manifest), pair)
    manifest["integrity"] = {"pair_digest": pair}
    _write(device, manifest)
    return manifest["version"]


def load_trusted(keys: list[str]) -> list[Any]:
    """The case's trusted keys as ``DeviceModel.load`` takes them (paths, or the 32 raw bytes)."""
    return [bytes.fromhex(k[4:]) if k.startswith("raw:") else k for k in keys]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/conformance/corpus.py OUT_DIR")
    built = build_corpus(sys.argv[1])
    print(f"{len(built)} cases under {sys.argv[1]} (cases.json)")
