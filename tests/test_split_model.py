"""The split itself: torch model vs numpy device runtime parity, bundles, tampering, dropping stats."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from daonet.bundle import check_pair, read_manifest
from daonet.device import DeviceModel, RandomMasks
from daonet.errors import BundleError, InputError, VersionMismatchError
from daonet.exporting import export_model
from daonet.nn import LocalizedFirstLayer
from daonet.server import ServerModel
from daonet.train import TrainConfig, evaluate, load_run, save_run, train

CASES = {
    # name: (dataset, model, model kwargs, train subset)
    "mnist-mlp": ("mnist", "mlp", {"hidden": 256, "hidden2": 64}, 3000),
    "mnist-cnn": ("mnist", "cnn", {"stem": 16, "patch": 4, "width": 16}, 2000),
    "mnist-cnn-overlap": ("mnist", "cnn", {"stem": 8, "patch": 4, "stride": 2, "width": 8}, 1000),
    "ecg5000-cnn1d": ("ecg5000", "cnn1d", {"stem": 16, "patch": 4, "width": 16}, None),
}


@pytest.fixture(scope="module", params=list(CASES))
def trained(request, tmp_path_factory):
    dataset, model, kwargs, n_train = CASES[request.param]
    cfg = TrainConfig(dataset=dataset, model=model, drop_rate=0.5, epochs=1, model_kwargs=kwargs,
                      n_train=n_train, n_test=300)
    result = train(cfg, progress=False)
    out = tmp_path_factory.mktemp(request.param)
    dev, srv = export_model(result.model, out / "bundle", model_id=request.param,
                            classes=result.dataset.classes)
    return result, dev, srv


def test_numpy_activations_match_torch(trained):
    result, dev_dir, _ = trained
    device = DeviceModel.load(dev_dir)
    x = result.dataset.x_test[:200]
    with torch.no_grad():
        h_torch = result.model.first.activations(torch.from_numpy(x)).flatten(1).numpy()
    h_np = device.activations(x)
    assert h_np.shape == h_torch.shape
    assert np.abs(h_np - h_torch).max() < 1e-5


def test_server_predictions_from_payload_equal_torch_model(trained):
    result, dev_dir, srv_dir = trained
    device, server = DeviceModel.load(dev_dir), ServerModel.load(srv_dir)
    x = result.dataset.x_test[:200]
    mask = RandomMasks(7).masks(x, device.n_outputs, device.drop_rate)
    payloads = device.encode_many(x, mask=mask)
    probs = server.predict_bytes([p.data for p in payloads])
    result.model.eval()
    with torch.no_grad():
        logits = result.model(torch.from_numpy(x), mask=torch.from_numpy(mask))
    assert np.array_equal(probs.argmax(1), logits.argmax(1).numpy())
    assert np.allclose(probs, torch.softmax(logits, 1).numpy(), atol=1e-5)


def test_payload_is_smaller_than_dense_and_carries_only_survivors(trained):
    result, dev_dir, _ = trained
    device = DeviceModel.load(dev_dir)
    x = result.dataset.x_test[:20]
    for p in device.encode_many(x, RandomMasks(0)):
        assert p.nnz == np.count_nonzero(p.activations)
        assert len(p.data) == 16 + len(device.version) + p.nnz * ((2 if device.n_outputs < 65536 else 4) + 4)


def test_observed_drop_rate_matches_p():
    """Among positive ReLU outputs, the kept fraction is 1-p within 4 binomial standard deviations."""
    torch.manual_seed(0)
    for p in (0.5, 0.9):
        layer = LocalizedFirstLayer("dense", (64,), 500, drop_rate=p)
        layer.generator = torch.Generator().manual_seed(1)
        x = torch.rand(200, 64)
        h, kept = layer.activations(x), layer(x)
        n_pos = int((h > 0).sum())
        frac = float((kept > 0).sum()) / n_pos
        tol = 4 * np.sqrt(p * (1 - p) / n_pos)
        assert abs(frac - (1 - p)) < tol, (p, frac, tol)
        # the numpy device masks follow the same law
        m = RandomMasks(3).masks(np.zeros((200, 1)), 500, p)
        assert abs(m.mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / m.size)


def test_dropping_is_active_in_eval_mode():
    layer = LocalizedFirstLayer("dense", (32,), 200, drop_rate=0.9).eval()
    x = torch.rand(50, 32)
    assert (layer(x) > 0).sum() < 0.3 * (layer.activations(x) > 0).sum()


def test_run_round_trip(tmp_path):
    cfg = TrainConfig(dataset="digits", model="mlp", drop_rate=0.5, epochs=1, model_kwargs={"hidden": 64})
    result = train(cfg, progress=False)
    save_run(result, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("test_accuracy", "surviving_outputs", "train_time_s", "command"):
        assert key in metrics
    assert len(metrics["test_accuracy"]["draws"]) == 5
    assert metrics["surviving_outputs"]["min"] <= metrics["surviving_outputs"]["mean"] <= \
        metrics["surviving_outputs"]["max"]
    model, _ = load_run(tmp_path / "run")
    a = evaluate(model, result.dataset.x_test, result.dataset.y_test, seed=5)
    b = evaluate(result.model, result.dataset.x_test, result.dataset.y_test, seed=5)
    assert a["accuracy_draws"] == b["accuracy_draws"]


def test_p0_run_reports_accuracy_without_dropping():
    cfg = TrainConfig(dataset="digits", model="mlp", drop_rate=0.0, epochs=1, model_kwargs={"hidden": 64})
    m = train(cfg, progress=False).metrics
    assert m["accuracy_without_dropping"] == m["test_accuracy"]["mean"]
    assert m["test_accuracy"]["std"] == 0.0


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory):
    cfg = TrainConfig(dataset="digits", model="mlp", drop_rate=0.5, epochs=1, model_kwargs={"hidden": 64})
    result = train(cfg, progress=False)
    out = tmp_path_factory.mktemp("digits")
    dev, srv = export_model(result.model, out / "b", model_id="digits-mlp", classes=result.dataset.classes,
                            raw_dtype="uint8")
    return result, dev, srv


def test_manifests_share_id_and_version(digits_bundle):
    _, dev, srv = digits_bundle
    d, s = read_manifest(dev, "daonet-device-bundle"), read_manifest(srv, "daonet-server-bundle")
    check_pair(d, s)
    assert d.layer.kind == "dense" and d.drop.to_json() == {"policy": "bernoulli", "rate": 0.5, "rescale": False}
    assert len(d.version) == 16 and d.version == s.version
    # the device bundle holds the first layer only
    assert set(DeviceModel.load(dev).extras) == set()


def test_mismatched_pair_refused(digits_bundle, tmp_path):
    result, dev, _ = digits_bundle
    with torch.no_grad():
        result.model.rest[0].weight.add_(0.01)
    _, other_srv = export_model(result.model, tmp_path / "other", model_id="digits-mlp",
                                classes=result.dataset.classes)
    with pytest.raises(VersionMismatchError, match="same run"):
        check_pair(read_manifest(dev, "daonet-device-bundle"), read_manifest(other_srv, "daonet-server-bundle"))
    server = ServerModel.load(other_srv)
    payload = DeviceModel.load(dev).encode(result.dataset.x_test[0], RandomMasks(0))
    with pytest.raises(VersionMismatchError, match="update the device bundle"):
        server.parse(payload.data)


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampered_weights_refused(digits_bundle, tmp_path):
    _, dev, srv = digits_bundle
    for side, loader in ((dev, DeviceModel.load), (srv, ServerModel.load)):
        bad = _copy(side, tmp_path / side.name)
        weights = next(bad.glob("*.safetensors"))
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
        with pytest.raises(BundleError, match="modified or truncated"):
            loader(bad)
        weights.write_bytes(bytes(data[:100]))
        with pytest.raises(BundleError, match="modified or truncated"):
            loader(bad)
        weights.unlink()
        with pytest.raises(BundleError, match="missing"):
            loader(bad)
        import shutil

        shutil.rmtree(bad)


def test_bad_bundle_directories(digits_bundle, tmp_path):
    _, dev, srv = digits_bundle
    with pytest.raises(BundleError, match="does not exist"):
        DeviceModel.load(tmp_path / "nope")
    with pytest.raises(BundleError, match="manifest.json is missing"):
        DeviceModel.load(tmp_path)
    with pytest.raises(BundleError, match="pass the device/"):
        DeviceModel.load(srv)
    bad = _copy(dev, tmp_path / "dev")
    (bad / "manifest.json").write_text("{broken")
    with pytest.raises(BundleError, match="not valid JSON"):
        DeviceModel.load(bad)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros((3, 3)), "shape"),
        (np.full((8, 8), np.nan), "NaN"),
        (np.full((8, 8), np.inf), "NaN"),
        (np.full((8, 8), 3.0), "expects"),
        (np.array(["a"] * 64), "dtype"),
        (np.zeros((0, 1, 8, 8)), "empty"),
        (np.zeros((8, 8), dtype=np.int32), "integer"),
    ],
)
def test_device_rejects_bad_input(digits_bundle, x, message):
    device = DeviceModel.load(digits_bundle[1])
    with pytest.raises(InputError, match=message):
        device.encode(x)


def test_device_accepts_uint8_and_flat_inputs(digits_bundle):
    result, dev, _ = digits_bundle
    device = DeviceModel.load(dev)
    x = result.dataset.x_test[:4]
    raw = np.round(x * 255).astype(np.uint8)
    h_float = device.activations(np.round(x * 255) / 255)
    assert np.allclose(device.activations(raw), h_float, atol=1e-5)
    assert np.allclose(device.activations(x.reshape(4, -1)), device.activations(x))


def test_device_import_never_imports_torch(digits_bundle):
    """The device runtime must run where torch cannot even be imported."""
    _, dev, _ = digits_bundle
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this process")
        sys.meta_path.insert(0, Block())
        import numpy as np
        import daonet.device
        from daonet.device import DeviceModel, RandomMasks
        device = DeviceModel.load({str(dev)!r})
        p = device.encode(np.zeros((8, 8), np.float32), RandomMasks(0))
        assert len(p.data) > 16
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch got imported"
        print("ok", len(p.data))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_quantized_transmission_matches_between_torch_and_device(tmp_path):
    """The quantization defence must round identically on the device and in training."""
    cfg = TrainConfig(dataset="digits", model="mlp", drop_rate=0.5, epochs=2, quantize_levels=2,
                      model_kwargs={"hidden": 64})
    result = train(cfg, progress=False)
    dev, srv = export_model(result.model, tmp_path / "q", model_id="q", classes=result.dataset.classes)
    device, server = DeviceModel.load(dev), ServerModel.load(srv)
    assert device.manifest.layer.quantize is not None and device.manifest.layer.quantize.levels == 2
    x = result.dataset.x_test[:100]
    h = device.activations(x)
    with torch.no_grad():
        assert np.array_equal(h, result.model.first.activations(torch.from_numpy(x)).flatten(1).numpy())
    assert len(np.unique(h)) <= 3  # 0 and two levels: the values carry almost nothing beyond the support
    mask = RandomMasks(1).masks(x, device.n_outputs, 0.5)
    probs = server.predict_bytes([p.data for p in device.encode_many(x, mask=mask)])
    with torch.no_grad():
        logits = result.model(torch.from_numpy(x), mask=torch.from_numpy(mask))
    assert np.array_equal(probs.argmax(1), logits.argmax(1).numpy())


@pytest.mark.parametrize("kwargs", [{"nopeek_weight": 0.5}, {"adversary_weight": 0.5},
                                    {"adversary_weight": 0.5, "adversary_reset": 1, "adversary_warmup": 20}])
def test_training_defences_train_a_working_model(kwargs):
    """NoPeek and adversarial training keep a usable model (digits, 3 epochs: far above chance)."""
    cfg = TrainConfig(dataset="digits", model="mlp", drop_rate=0.5, epochs=3, model_kwargs={"hidden": 64}, **kwargs)
    assert train(cfg, progress=False).metrics["test_accuracy"]["mean"] > 0.5


def test_recorded_model_defaults_are_the_builders_defaults():
    """`daonet train` records DEFAULT_KWARGS in every run; they must be the zoo builders' own defaults."""
    import inspect

    from daonet.nn import ARCHS
    from daonet.train import DEFAULT_KWARGS

    for name, recorded in DEFAULT_KWARGS.items():
        params = inspect.signature(ARCHS[name]).parameters
        assert {k: params[k].default for k in recorded} == recorded, name
