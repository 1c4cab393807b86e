"""The audited artifact is the artifact you run: the shipped defaults verify, tampering is refused, a report of
another version is refused, training is reproducible, and the demo serves the shipped bundle with its numbers.

The pass cases use the shipped defaults themselves (fixed bytes, so nothing depends on what training produces
on this machine); the refusal cases edit copies of them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from daonet.audit_report import read_report
from daonet.cli import app
from daonet.defaults import DEFAULTS, PROJECT_PUBLIC_KEY
from daonet.device import DeviceModel
from daonet.errors import BundleError
from daonet.verify import REPORT_NAME, SIGNATURE_SUFFIX, sign_report, verify_bundle

runner = CliRunner()


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_shipped_default_verifies_with_its_own_audit(name):
    default = DEFAULTS[name]
    v = verify_bundle(default.root)
    device = DeviceModel.load(default.root / "device", public_keys=[PROJECT_PUBLIC_KEY])
    assert (v.model_id, v.version) == (device.model_id, device.version)
    assert v.audit.version == device.version and v.audit.is_claim
    assert v.audit.label_only is not None and v.audit.leakage is not None  # measured from the label-only floor
    assert v.audit.dataset == default.dataset
    text = "\n".join(v.lines())
    assert device.version in text and "leakage beyond the label" in text


@pytest.fixture
def copy_of_default(tmp_path) -> Path:
    root = tmp_path / "bundle"
    shutil.copytree(DEFAULTS["ecg5000"].root, root)
    return root


def test_tampered_weights_are_refused(copy_of_default):
    weights = next((copy_of_default / "device").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its manifest"):
        verify_bundle(copy_of_default)


def test_edited_manifest_is_refused(copy_of_default):
    path = copy_of_default / "device" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["drop"]["rate"] = 0.0  # fewer zeros: more revealed, same version string
    path.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="does not match its content"):
        verify_bundle(copy_of_default)


def test_missing_or_edited_report_is_refused(copy_of_default):
    report = copy_of_default / "audit" / REPORT_NAME
    raw = json.loads(report.read_text())
    raw["best"] = 0.0  # a nicer number than the audit found
    report.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="not signed by a trusted key"):
        verify_bundle(copy_of_default)
    report.with_name(REPORT_NAME + SIGNATURE_SUFFIX).unlink()
    with pytest.raises(BundleError, match="not signed"):
        verify_bundle(copy_of_default)
    report.unlink()
    with pytest.raises(BundleError, match="no audit report"):
        verify_bundle(copy_of_default)


def test_report_of_another_version_is_refused(copy_of_default, tmp_path):
    """A valid, signed report of a *different* bundle (the MNIST default) does not vouch for this one."""
    other = DEFAULTS["mnist"].report
    with pytest.raises(BundleError, match="privacy is unaudited"):
        verify_bundle(copy_of_default, report=other)


def test_untrusted_signer_is_refused(copy_of_default, tmp_path):
    from daonet.signing import generate_keypair

    _, pub = generate_keypair(tmp_path / "someone-else")
    with pytest.raises(BundleError, match="not signed by a trusted key"):
        verify_bundle(copy_of_default, public_keys=[pub])


def test_quick_report_is_not_a_claim(tmp_path, serve_digits_run):
    """A user's own bundle, signed with their key, with a quick (smoke-test) audit signed too: refused, because a
    quick audit is not a privacy claim; the message says which budget to run."""
    from daonet.audit import AuditConfig, run_audit, write_report
    from daonet.exporting import export_model
    from daonet.signing import generate_keypair

    key, pub = generate_keypair(tmp_path / "vendor")
    root = tmp_path / "mine"
    export_model(serve_digits_run.model, root, model_id="digits-mine", classes=serve_digits_run.dataset.classes,
                 sign_key=key)
    cfg = AuditConfig(dataset="digits", budget="quick", n_test=20, attacks=("min_norm", "decoder_label"),
                      budget_curve=False)
    write_report(run_audit(root, cfg, dataset=serve_digits_run.dataset, progress=False, log=lambda _: None),
                 root / "audit")
    sign_report(root / "audit" / REPORT_NAME, key)
    assert read_report(root / "audit" / REPORT_NAME).label_only is not None
    with pytest.raises(BundleError, match="not a privacy claim"):
        verify_bundle(root, public_keys=[pub])
    with pytest.raises(BundleError, match="not signed by a trusted key"):  # the project's key did not sign it
        verify_bundle(root)


def test_verify_cli(copy_of_default):
    res = runner.invoke(app, ["verify", str(DEFAULTS["mnist"].root)])
    assert res.exit_code == 0, res.output
    assert "leakage beyond the label" in res.output and read_report(DEFAULTS["mnist"].report).version in res.output
    (copy_of_default / "audit" / REPORT_NAME).unlink()
    res = runner.invoke(app, ["verify", str(copy_of_default)])
    assert res.exit_code == 2 and "no audit report" in res.output
    res = runner.invoke(app, ["verify", str(copy_of_default / "nope")])
    assert res.exit_code == 2 and "not a bundle root" in res.output


def test_same_seed_same_threads_same_bundle_version(tmp_path):
    """Reproducible training: the same recipe, seed and thread count give byte-identical weights, hence the same
    content-bound version; another seed gives another version (so the check could fail)."""
    import torch

    from daonet.exporting import export_model
    from daonet.train import TrainConfig, train

    def version(seed: int, name: str) -> str:
        cfg = TrainConfig(dataset="digits", model="mlp", drop_rate=0.5, epochs=2, seed=seed, adversary_weight=1.0,
                          model_kwargs={"hidden": 64, "hidden2": 32})
        saved = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            result = train(cfg, progress=False)
        finally:
            torch.set_num_threads(saved)
        dev, _ = export_model(result.model, tmp_path / name, model_id="digits-repro", classes=result.dataset.classes)
        return DeviceModel.load(dev).version

    first, again, other = version(0, "a"), version(0, "b"), version(1, "c")
    assert first == again
    assert other != first


def test_demo_serves_the_shipped_audited_bundle():
    from daonet.studies.demo import run_demo

    report = run_demo(n=64, concurrency=4)
    shipped = DeviceModel.load(DEFAULTS["mnist"].root / "device")
    assert report.version == shipped.version and not report.trained
    assert report.audit and any("leakage beyond the label" in line for line in report.audit)
    assert report.accuracy > 0.5  # the fixed shipped model on real MNIST test images (chance: 0.1)
    assert np.isfinite(report.bytes_per_request) and "shipped default" in report.render()
