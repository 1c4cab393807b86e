"""Bundles on disk: the typed manifests (validated once, same JSON layout), hashes, the pair check."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from daonet.bundle import (
    DEVICE_FORMAT,
    SERVER_FORMAT,
    check_pair,
    content_version,
    load_bundle,
    load_verified_weights,
    read_manifest,
    sha256_file,
    write_weights,
)
from daonet.device import DeviceModel
from daonet.errors import BundleError, VersionMismatchError
from daonet.manifest import (
    DeviceManifest,
    DropSpec,
    LayerSpec,
    ManifestError,
    PrivacySpec,
    ServerManifest,
)
from daonet.wire import WIRE_VERSION


def _copy_with(src, dst, edit):
    shutil.copytree(src, dst)
    path = dst / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return dst


def test_manifests_round_trip_the_exported_json_exactly(serve_digits_bundle, serve_signal_bundle):
    for pair in (serve_digits_bundle, serve_signal_bundle):
        for directory, cls in ((pair.device, DeviceManifest), (pair.server, ServerManifest)):
            on_disk = json.loads((directory / "manifest.json").read_text())
            manifest = cls.load(directory)
            assert manifest.to_json() == on_disk
            assert cls.from_json(manifest.to_json()) == manifest
    device = DeviceManifest.load(serve_digits_bundle.device)
    assert device.input.shape == (1, 8, 8) and device.input.raw_dtype == "uint8" and device.input.range == (0, 1)
    assert device.layer.kind == "dense" and device.layer.n_outputs == 256 and device.drop.rate == 0.5
    assert device.wire.version == WIRE_VERSION and device.privacy == PrivacySpec()
    signal = ServerManifest.load(serve_signal_bundle.server)
    assert signal.first_layer.kind == "conv1d" and signal.first_layer.kernel == (4,) and signal.first_layer.patchify
    assert signal.arch.name == "cnn1d" and signal.arch.kwargs["stem"] == 8


@pytest.mark.parametrize(("edit", "field", "hint"), [
    (lambda m: m["drop"].__setitem__("rate", 1.0), "drop.rate", r"\[0, 1\)"),
    (lambda m: m["drop"].__setitem__("rate", "0.5"), "drop.rate", "finite number"),
    (lambda m: m["drop"].__setitem__("policy", "top-k"), "drop.policy", "upgrade daonet"),
    (lambda m: m["privacy"].__setitem__("max_revealed_energy", 1.5), "privacy.max_revealed_energy", r"\[0, 1\]"),
    (lambda m: m["input"].__setitem__("shape", []), "input.shape", "empty"),
    (lambda m: m["input"].__setitem__("raw_dtype", "int16"), "input.raw_dtype", "float32"),
    (lambda m: m["layer"].__setitem__("kind", "lstm"), "layer.kind", "upgrade daonet"),
    (lambda m: m["layer"].__setitem__("n_outputs", 255), "layer.n_outputs", "256 outputs"),
    (lambda m: m["wire"].__setitem__("version", 2), "wire.version", "upgrade daonet"),
    (lambda m: m["normalization"].__setitem__("std", [1.0, 2.0]), "normalization.std", "2 values for 1"),
    (lambda m: m["normalization"].__setitem__("std", [0.0]), "normalization.std", "positive"),
    (lambda m: m["files"].__setitem__("first_layer.safetensors", "abc"), "files.first_layer.safetensors", "SHA-256"),
    (lambda m: m.pop("layer"), "'layer' is missing", "re-export"),
])
def test_bad_device_manifest_names_the_field_and_the_fix(serve_digits_bundle, tmp_path, edit, field, hint):
    bad = _copy_with(serve_digits_bundle.device, tmp_path / "device", edit)
    with pytest.raises(ManifestError, match=field) as err:
        DeviceModel.load(bad)
    assert re.search(hint, str(err.value)), str(err.value)


def test_format_version_and_half_are_checked_before_the_schema(serve_digits_bundle, tmp_path):
    newer = _copy_with(serve_digits_bundle.device, tmp_path / "newer", lambda m: m.__setitem__("format_version", 2))
    with pytest.raises(BundleError, match="upgrade daonet"):
        DeviceManifest.load(newer)
    with pytest.raises(BundleError, match="pass the server/"):
        read_manifest(serve_digits_bundle.device, SERVER_FORMAT)


def test_server_manifest_cross_checks(serve_signal_bundle, tmp_path):
    bad = _copy_with(serve_signal_bundle.server, tmp_path / "s1", lambda m: m["classes"].append("extra"))
    with pytest.raises(ManifestError, match="classes"):
        ServerManifest.load(bad)
    bad = _copy_with(serve_signal_bundle.server, tmp_path / "s2",
                     lambda m: m["first_layer"].__setitem__("stride", [2]))
    with pytest.raises(ManifestError, match="gives outputs"):
        ServerManifest.load(bad)


def test_unknown_fields_survive_and_nulls_take_defaults(serve_digits_bundle, tmp_path):
    def edit(m):
        m["signature"] = {"alg": "ed25519", "value": "00"}  # a newer writer's block
        m["layer"]["residual"] = [{"op": "conv2d"}]
        m["privacy"] = None
        m["normalization"] = None

    newer = _copy_with(serve_digits_bundle.device, tmp_path / "device", edit)
    manifest = DeviceManifest.load(newer)
    assert manifest.extra == {"signature": {"alg": "ed25519", "value": "00"}}
    assert manifest.layer.extra == {"residual": [{"op": "conv2d"}]}
    assert manifest.privacy == PrivacySpec() and manifest.normalization.mean is None
    out = manifest.to_json()
    assert out["signature"]["alg"] == "ed25519" and out["layer"]["residual"] == [{"op": "conv2d"}]
    out["layer"]["residual"][0]["op"] = "changed"  # to_json hands out a copy
    assert manifest.layer.extra["residual"][0]["op"] == "conv2d"


def test_blocks_validate_when_built_in_code():
    with pytest.raises(ManifestError, match=r"drop.rate.*\[0, 1\)"):
        DropSpec(rate=1.2).validated("drop")
    with pytest.raises(ManifestError, match="kernel"):
        LayerSpec(kind="conv2d", output_shape=(4, 2, 2), n_outputs=16, kernel=(2,), stride=(2, 2)).validated()
    assert LayerSpec(kind="dense", output_shape=(8,), n_outputs=8).validated().to_json()["kind"] == "dense"


def test_pair_check_and_root_or_half_directories(serve_digits_bundle, serve_signal_bundle):
    for where in (serve_digits_bundle.root, serve_digits_bundle.device):
        directory, manifest, tensors = load_bundle(where, DEVICE_FORMAT)
        assert directory == serve_digits_bundle.device and set(tensors) == {"weight", "bias"}
        assert isinstance(manifest, DeviceManifest)
    device = read_manifest(serve_digits_bundle.device, DEVICE_FORMAT)
    check_pair(device, read_manifest(serve_digits_bundle.server, SERVER_FORMAT))
    with pytest.raises(VersionMismatchError, match="model_id") as err:
        check_pair(device, read_manifest(serve_signal_bundle.server, SERVER_FORMAT))
    assert err.value.got == "digits-mlp" and err.value.expected == "ecg5000-cnn1d"


def test_weights_hashes_and_versions(tmp_path):
    tensors = {"weight": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.zeros(2, np.float32)}
    digest = write_weights(tmp_path / "w.safetensors", tensors)
    assert digest == sha256_file(tmp_path / "w.safetensors") and len(digest) == 64
    v1 = content_version(digest, "0" * 64, config={"name": "mlp", "kwargs": {"hidden": 8}})
    assert v1 == content_version(digest, "0" * 64, config={"kwargs": {"hidden": 8}, "name": "mlp"})  # key order
    assert v1 != content_version(digest, "0" * 64, config={"name": "mlp", "kwargs": {"hidden": 9}})
    manifest = DeviceManifest.from_json({
        "format": DEVICE_FORMAT, "format_version": 1, "model_id": "m", "version": v1,
        "files": {"w.safetensors": digest}, "input": {"shape": [3]},
        "layer": {"kind": "dense", "output_shape": [2], "n_outputs": 2}, "drop": {"rate": 0.0},
    })
    loaded = load_verified_weights(tmp_path, manifest, "w.safetensors")
    np.testing.assert_array_equal(loaded["weight"], tensors["weight"])
    with pytest.raises(BundleError, match="does not list"):
        load_verified_weights(tmp_path, manifest, "other.safetensors")
