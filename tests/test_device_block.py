"""A localized first block on the device: torch vs numpy parity on real data, the real server on loopback,
and the certificate/policy refusing to speak for a non-linear block."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from daonet.cli import app
from daonet.device import BlockCertificate, Client, DeviceModel, PrivacyPolicy, RandomMasks
from daonet.device.block import BLOCK_NOTE
from daonet.errors import BundleError, DaonetError, InputError
from daonet.exporting import export_model
from daonet.nn import LocalizedFirstLayer, build_model
from daonet.server import ServerModel
from daonet.server.config import ServerConfig
from daonet.train import TrainConfig, train

CASES = {
    # name: train config (real MNIST / ECG5000 subsets, 1 epoch: parity does not need accuracy)
    "mnist-mlp-block2": TrainConfig(dataset="mnist", model="mlp", drop_rate=0.5, epochs=1, device_layers=2,
                                    n_train=2000, n_test=300, model_kwargs={"hidden": 128, "hidden2": 32}),
    "ecg5000-cnn1d-block2-pool": TrainConfig(dataset="ecg5000", model="cnn1d", drop_rate=0.5, epochs=1,
                                             device_layers=2, device_pool=2, n_test=300,
                                             model_kwargs={"stem": 8, "width": 8}),
    "mnist-cnn-block3": TrainConfig(dataset="mnist", model="cnn", drop_rate=0.5, epochs=1, device_layers=3,
                                    n_train=500, n_test=300,
                                    model_kwargs={"stem": 8, "width": 8, "block_width": 6}),
}


@pytest.fixture(scope="module")
def blocks(tmp_path_factory, one_torch_thread):
    out = {}
    for name, cfg in CASES.items():
        result = train(cfg, progress=False)
        dev, srv = export_model(result.model, tmp_path_factory.mktemp(name) / "bundle", model_id=name,
                                classes=result.dataset.classes)
        out[name] = (result, dev, srv)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_block_activations_match_torch_on_real_data(blocks, name):
    result, dev_dir, _ = blocks[name]
    device = DeviceModel.load(dev_dir)
    first = result.model.first
    assert not device.is_linear and not first.is_linear
    assert device.output_shape == first.output_shape and device.n_outputs == first.n_outputs
    assert device.first_output_shape == first.first_output_shape
    steps = device.manifest.layer.block or ()
    assert len([s for s in steps if s.op != "maxpool"]) == result.config.device_layers - 1
    x = result.dataset.x_test[:200]
    with torch.no_grad():
        h_torch = first.activations(torch.from_numpy(x)).flatten(1).numpy()
    h_np = device.activations(x)
    assert h_np.shape == h_torch.shape == (200, device.n_outputs)
    assert np.abs(h_np - h_torch).max() < 1e-5
    assert (h_np > 0).mean() > 0.05  # a working block, not all-dead ReLUs


def test_large_batches_run_in_chunks_with_the_same_bits(blocks, monkeypatch):
    """An audit encodes its whole public set at once; the block runs it in chunks (bounded memory), bit-exact."""
    import daonet.device.runtime as runtime

    result, dev_dir, _ = blocks["mnist-cnn-block3"]
    device = DeviceModel.load(dev_dir)
    x = result.dataset.x_test[:50]
    whole = device.activations(x)
    one_by_one = np.concatenate([device.activations(x[i:i + 1]) for i in range(len(x))])
    monkeypatch.setattr(runtime, "ACTIVATION_CHUNK", 7)
    chunked = device.activations(x)
    assert chunked.shape == whole.shape == (50, device.n_outputs)
    assert np.array_equal(chunked.view(np.uint32), whole.view(np.uint32))
    assert np.array_equal(one_by_one.view(np.uint32), whole.view(np.uint32))


def test_block_payloads_through_the_real_server(blocks, start_server):
    """Client -> loopback server -> prediction equals the torch model with the very same masks."""
    names = list(CASES)
    server = start_server(ServerConfig(bundles=[blocks[n][2] for n in names], max_batch_size=16, max_wait_ms=2.0))
    for name in names:
        result, dev_dir, srv_dir = blocks[name]
        x = result.dataset.x_test[:64]
        with Client(server.url, dev_dir, masks=RandomMasks(7)) as client:
            preds = client.predict_many(x, concurrency=8)
        device = DeviceModel.load(dev_dir)
        expected = [p for p, _ in device.encode_many_certified(x, RandomMasks(7))]
        assert [p.payload.data for p in preds] == [p.data for p in expected]  # identical bytes on the wire
        sent = np.stack([p.activations for p in expected])
        assert 0 < sent.astype(bool).sum(1).mean() < device.n_outputs  # dropping at the block's output
        result.model.eval()
        with torch.no_grad():
            logits = result.model(torch.from_numpy(x), mask=torch.from_numpy(sent > 0))
        probs = np.stack([p.probabilities for p in preds])
        np.testing.assert_allclose(probs, torch.softmax(logits, 1).numpy(), atol=1e-5)
        np.testing.assert_allclose(probs, ServerModel.load(srv_dir).predict_bytes([p.data for p in expected]),
                                   atol=1e-6)
        cert = preds[0].certificate
        assert isinstance(cert, BlockCertificate) and not cert.applies
        assert cert.k == preds[0].nnz


def test_block_certificate_says_audit_only(blocks, serve_digits_bundle):
    result, dev_dir, _ = blocks["mnist-mlp-block2"]
    device = DeviceModel.load(dev_dir)
    x = result.dataset.x_test[0]
    payload = device.encode(x, RandomMasks(0))
    cert = device.certify(x, payload.activations)
    assert isinstance(cert, BlockCertificate) and cert.note == BLOCK_NOTE
    assert BLOCK_NOTE in cert.summary() and "dense 784->128 + ReLU, dense 128->128 + ReLU" in cert.summary()
    d = cert.to_dict()
    assert d["applies"] is False and d["k"] == payload.nnz
    assert not {"rank", "revealed_energy", "identifiable"} & set(d)  # no numbers that do not apply
    with pytest.raises(BundleError, match="non-linear block: covered by the audit only"):
        device.system  # noqa: B018  (white-box attacks and the certificate need the first-layer equations)
    assert DeviceModel.load(serve_digits_bundle.device).is_linear  # the paper's form is unchanged


def test_block_refuses_a_revealed_energy_policy(blocks, tmp_path):
    result, dev_dir, _ = blocks["mnist-mlp-block2"]
    with pytest.raises(DaonetError, match="--max-revealed-energy needs the paper's single linear first layer"):
        export_model(result.model, tmp_path / "b", model_id="b", classes=result.dataset.classes,
                     privacy={"max_revealed_energy": 0.3})
    device = DeviceModel.load(dev_dir)
    with pytest.raises(InputError, match="revealed-energy policy cannot be enforced for this device block"):
        device.encode_certified(result.dataset.x_test[0], policy=PrivacyPolicy(max_revealed_energy=0.3))
    manifest = json.loads((dev_dir / "manifest.json").read_text())  # a hand-edited manifest is refused too
    manifest["privacy"]["max_revealed_energy"] = 0.3
    with pytest.raises(BundleError, match="max_revealed_energy: is set, but this device bundle runs a non-linear"):
        DeviceModel(manifest, device.weight, device.bias, device.extras)


def test_inconsistent_block_manifest_is_refused(blocks):
    device = DeviceModel.load(blocks["ecg5000-cnn1d-block2-pool"][1])
    for edit, message in [
        (lambda m: m["layer"]["block"][0].update(n_out=9), "the first layer and its block output"),
        (lambda m: m["layer"]["block"][1].update(size=4), "the first layer and its block output"),
        (lambda m: m["layer"]["block"][0].update(n_in=4), "taking 4 channels cannot follow"),
        (lambda m: m["layer"]["block"][0].update(op="attention"), "block\\[0\\].op: \"attention\" is not supported"),
        (lambda m: m["layer"]["block"][0].update(padding=[]), "a conv1d step needs 1 value"),
        (lambda m: m["layer"]["block"][0].update(activation="gelu"), "activation: \"gelu\" is not supported"),
        (lambda m: m["layer"]["block"][0].pop("weight"), "weight: is missing"),
        (lambda m: m["layer"]["block"].append({"size": 2}), "the field 'op' is missing"),
        (lambda m: m["layer"].pop("first_output_shape"), "first_output_shape: is missing"),
    ]:
        manifest = device.manifest.to_json()
        edit(manifest)
        with pytest.raises(BundleError, match=message):
            DeviceModel(manifest, device.weight, device.bias, device.extras)
    wrong = {**device.extras, "block.0.weight": device.extras["block.0.weight"][:, :4]}
    with pytest.raises(BundleError, match="block tensor 'block.0.weight' has shape"):
        DeviceModel(device.manifest, device.weight, device.bias, wrong)
    extras = {k: v for k, v in device.extras.items() if k != "block.0.bias"}
    with pytest.raises(BundleError, match="lacks the block tensor 'block.0.bias'"):
        DeviceModel(device.manifest, device.weight, device.bias, extras)


def test_block_options_are_checked():
    with pytest.raises(InputError, match="device layers must be 1 to 3"):
        LocalizedFirstLayer("dense", (1, 8, 8), 16, device_layers=4)
    with pytest.raises(InputError, match="pooling needs a convolutional first layer"):
        LocalizedFirstLayer("dense", (1, 8, 8), 16, device_layers=2, device_pool=2)
    with pytest.raises(InputError, match="larger than the block's output"):
        LocalizedFirstLayer("conv1d", (1, 8), 4, kernel=4, device_pool=4)
    with pytest.raises(InputError, match="disagrees with --model-opt device_layers=3"):
        TrainConfig(device_layers=2, model_kwargs={"device_layers": 3}).validate()
    with pytest.raises(InputError, match="--device-pool must be 0"):
        TrainConfig(device_pool=1).validate()
    arch = {"name": "mlp", "in_shape": [1, 8, 8], "n_classes": 10, "drop_rate": 0.5, "mean": None, "std": None,
            "kwargs": {"hidden": 16}}
    plain = build_model(arch)  # an old config (no block keys) builds the paper's single layer
    assert plain.first.is_linear and plain.first.spec().get("block") is None and "noise" not in plain.arch


def test_cli_trains_and_exports_a_block_with_noise(tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--dataset", "digits", "--model", "mlp", "--drop-rate", "0.5", "--epochs", "2",
                              "--device-layers", "2", "--noise-std", "0.3", "--model-opt", "hidden=32",
                              "--model-opt", "block_width=24", "--out", str(run)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["device_layers"] == 2 and metrics["n_outputs"] == 24 and metrics["noise"]["relative_std"] == 0.3
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "bundle")])
    assert res.exit_code == 0, res.output
    device = DeviceModel.load(tmp_path / "bundle" / "device")
    assert [s.op for s in device.manifest.layer.block or ()] == ["dense"]
    assert device.noise is not None and device.noise.std == pytest.approx(metrics["noise"]["std"])
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "b2"), "--max-revealed-energy", "0.3"])
    assert res.exit_code != 0 and "single linear first layer" in str(res.exception) + res.output


def test_javascript_runtime_runs_the_block_byte_for_byte(blocks, start_server):
    """The browser runtime runs every block (dense, conv1d + pool, 3-layer conv2d), sends numpy's bytes, and its
    Client gets the Python client's answers from the real server on loopback."""
    from test_js_device import KEY, case, node_binary, run_js

    from daonet.device import KeyedMasks

    node = node_binary()
    if node is None:
        pytest.skip("Node.js >= 18 is not installed: the JS device runtime cannot run")
    server = start_server(ServerConfig(bundles=[blocks[n][2] for n in CASES], max_batch_size=4, max_wait_ms=1.0))
    for name in CASES:
        result, dev_dir, _ = blocks[name]
        device = DeviceModel.load(dev_dir)
        xs = result.dataset.x_test[:3]
        out = run_js(node, dev_dir, [case(x) for x in xs], server=server.url)
        masks = KeyedMasks(KEY, model_version=device.version)
        with Client(server.url, dev_dir, masks=masks) as client:
            for x, got, answer in zip(xs, out["results"], out["answers"], strict=True):
                payload, cert = device.encode_certified(x, masks)
                assert payload.nnz > 0 and got["payload"] == payload.data.hex(), name
                assert got["certificate"]["block"] == cert.block and got["certificate"]["applies"] is False
                expected = client.predict(x)
                assert answer["payload"] == expected.payload.data.hex() and answer["label"] == expected.label
                np.testing.assert_allclose(answer["probabilities"], expected.probabilities, atol=1e-6)


def test_audit_says_why_the_algebraic_attacks_skip_a_block(blocks):
    """Asked for on a block, the equation attacks and the repeated-query attack are not silently dropped: the
    report names each with the reason, and the learned baseline still runs."""
    from daonet.audit import AuditConfig, run_audit

    result, dev, _ = blocks["ecg5000-cnn1d-block2-pool"]
    cfg = AuditConfig(dataset="ecg5000", budget="quick", n_test=40, public_size=0, decoder_epochs=3,
                      decoder_patience=2, n_repeat=5, n_examples=2, seed=0,
                      attacks=("min_norm", "decoder_label", "repeated"))
    rep = run_audit(dev.parent, cfg, dataset=result.dataset, progress=False, log=lambda s: None).report
    assert set(rep.skipped_attacks) == {"min_norm", "repeated"}
    assert "non-linear block" in rep.skipped_attacks["repeated"] and rep.repeated is None
    assert "decoder_label" in rep.attacks
