"""Bundles whose manifests cannot be edited: the version is recomputed from both halves' canonical manifest
content and file hashes at load, and optional Ed25519 signatures say who made a bundle."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daonet.bundle import MANIFEST
from daonet.device import DeviceModel
from daonet.errors import BundleError
from daonet.server.model import ServerModel


@pytest.fixture
def bundle(serve_digits_bundle, tmp_path) -> Path:
    root = tmp_path / "bundle"
    shutil.copytree(serve_digits_bundle.root, root)
    return root


def _edit(path: Path, edit) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    edit(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _load(side: str, path: Path, **kwargs):
    return (DeviceModel if side == "device" else ServerModel).load(path, **kwargs)


@pytest.mark.parametrize("side", ["device", "server"])
def test_edited_version_is_refused(bundle, side):
    _edit(bundle / side, lambda m: m.__setitem__("version", "0123456789abcdef"))
    with pytest.raises(BundleError, match="does not match its content"):
        _load(side, bundle / side)


@pytest.mark.parametrize("side,weights", [("device", "first_layer.safetensors"), ("server", "server_part.safetensors")])
def test_flipped_weight_byte_with_its_hash_rewritten_is_refused(bundle, side, weights):
    path = bundle / side / weights
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    _edit(bundle / side, lambda m: m["files"].__setitem__(weights, hashlib.sha256(bytes(data)).hexdigest()))
    with pytest.raises(BundleError, match="does not match its content"):
        _load(side, bundle / side)


def test_edited_drop_rate_is_refused(bundle):
    """A privacy-relevant field: a device told to drop nothing would still pass every other check."""
    _edit(bundle / "device", lambda m: m["drop"].__setitem__("rate", 0.0))
    with pytest.raises(BundleError, match="does not match its content"):
        DeviceModel.load(bundle / "device")


def test_bundle_without_integrity_block_is_refused_with_a_reexport_hint(bundle):
    _edit(bundle / "device", lambda m: m.pop("integrity"))
    with pytest.raises(BundleError, match="re-export"):
        DeviceModel.load(bundle / "device")


def test_untouched_bundle_loads_and_halves_agree(bundle):
    assert DeviceModel.load(bundle / "device").version == ServerModel.load(bundle / "server").version


# -- signatures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from daonet.cli import app

    d = tmp_path_factory.mktemp("keys")
    runner = CliRunner()
    for name in ("vendor", "other"):
        r = runner.invoke(app, ["keygen", "--out", str(d / name)])
        assert r.exit_code == 0, r.output
        assert (d / f"{name}.key").stat().st_mode & 0o077 == 0
    return d


def _export_signed(serve_digits_run, out: Path, key: Path | None) -> Path:
    from daonet.exporting import export_model

    export_model(serve_digits_run.model, out, model_id="digits-mlp", classes=serve_digits_run.dataset.classes,
                 raw_dtype="uint8", sign_key=key)
    return out


def test_signed_bundle_verifies_on_device_and_server(serve_digits_run, keys, tmp_path):
    root = _export_signed(serve_digits_run, tmp_path / "b", keys / "vendor.key")
    pub = keys / "vendor.pub"
    assert DeviceModel.load(root / "device", public_keys=[pub]).version == ServerModel.load(
        root / "server", public_keys=[pub]).version
    with pytest.raises(BundleError, match="not signed by"):
        DeviceModel.load(root / "device", public_keys=[keys / "other.pub"])


def test_unsigned_or_resealed_bundle_is_refused_when_a_key_is_required(serve_digits_run, keys, tmp_path):
    from daonet.bundle import seal_bundle

    pub = keys / "vendor.pub"
    unsigned = _export_signed(serve_digits_run, tmp_path / "unsigned", None)
    with pytest.raises(BundleError, match="not signed"):
        DeviceModel.load(unsigned / "device", public_keys=[pub])
    # tampered, then re-hashed and re-versioned consistently (what anyone can do without the vendor's key)
    root = _export_signed(serve_digits_run, tmp_path / "resealed", keys / "vendor.key")
    _edit(root / "device", lambda m: m["drop"].__setitem__("rate", 0.0))
    seal_bundle(root)
    DeviceModel.load(root / "device")  # integrity alone is restored...
    with pytest.raises(BundleError, match="not signed"):
        DeviceModel.load(root / "device", public_keys=[pub])  # ...authenticity is not
    seal_bundle(root, sign_key=keys / "other.key")
    with pytest.raises(BundleError, match="not signed by"):
        ServerModel.load(root / "server", public_keys=[pub])


def test_server_config_requires_signed_bundles(serve_digits_run, keys, tmp_path):
    from daonet.server.app import create_app
    from daonet.server.config import ServerConfig

    unsigned = _export_signed(serve_digits_run, tmp_path / "unsigned", None)
    with pytest.raises(BundleError, match="not signed"):
        create_app(ServerConfig(bundles=[unsigned / "server"], public_keys=[keys / "vendor.pub"]))


def test_device_side_stays_light_and_says_what_to_install(serve_digits_bundle, keys):
    """Loading a bundle never imports cryptography; asking for a signature check without it says what to do."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['cryptography'] = None  # as on a device install without the [sign] extra\n"
        "from daonet.device import DeviceModel\n"
        "from daonet.errors import DaonetError\n"
        f"DeviceModel.load({str(serve_digits_bundle.device)!r})\n"
        "try:\n"
        f"    DeviceModel.load({str(serve_digits_bundle.device)!r}, public_keys=[{str(keys / 'vendor.pub')!r}])\n"
        "except DaonetError as exc:\n"
        "    print(exc)\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "PYTHONPATH": src})
    assert r.returncode == 0, r.stderr
    assert "daonet[sign]" in r.stdout
