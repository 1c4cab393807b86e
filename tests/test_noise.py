"""Noise on surviving values: the device's draw, its scale on real data, training under it, keyed replays,
torch parity, and what the certificate says about it."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pytest
import torch

from daonet.data import load_dataset
from daonet.device import DeviceModel, KeyedMasks, RandomMasks, SimilarityKeyedMasks
from daonet.device.block import NOISE_NOTE
from daonet.errors import BundleError, InputError
from daonet.exporting import export_model
from daonet.server import ServerModel
from daonet.train import TrainConfig, train

KEY = bytes(range(32))
SMALL = dict(dataset="digits", model="mlp", drop_rate=0.5, epochs=10, batch_size=64,
             model_kwargs={"hidden": 128, "hidden2": 64})


@pytest.fixture(scope="module")
def noisy(tmp_path_factory, one_torch_thread):
    """Digits mlp at p=0.5 trained with noise 0.25 x RMS, and the same model without noise."""
    ds = load_dataset("digits")
    plain = train(TrainConfig(**SMALL), ds=ds, progress=False)
    result = train(TrainConfig(**SMALL, noise_std=0.25), ds=ds, progress=False)
    dev, srv = export_model(result.model, tmp_path_factory.mktemp("noise") / "bundle", model_id="digits-noise",
                            classes=ds.classes, raw_dtype="uint8")
    return result, plain, DeviceModel.load(dev), ServerModel.load(srv)


def test_manifest_holds_the_absolute_scale_from_public_data(noisy):
    result, _, device, _ = noisy
    spec = device.manifest.noise
    assert spec is not None
    assert spec.kind == "gaussian" and spec.applies_to == "surviving" and spec.relative_std == 0.25
    h = device.activations(result.dataset.x_train)  # the public data the scale was fixed on
    rms = float(np.sqrt(np.mean(h[h > 0].astype(np.float64) ** 2)))
    assert device.noise.std == pytest.approx(0.25 * rms, rel=1e-4)
    assert 0 < device.noise.floor < 0.05 * device.noise.std + 1e-4


def test_noise_statistics_on_real_data(noisy):
    result, _, device, _ = noisy
    x = result.dataset.x_test
    mask = RandomMasks(3).masks(x, device.n_outputs, device.drop_rate)
    clean = np.where(mask, device.activations(x), 0)
    sent = np.stack([p.activations for p in device.encode_many(x, RandomMasks(4), mask=mask)])
    assert np.array_equal(sent > 0, clean > 0)  # noise never adds or removes an output
    assert sent[sent > 0].min() >= np.float32(device.noise.floor)  # values stay positive: zero means absent
    far = clean > 6 * device.noise.std  # where the floor cannot bite: the residual is the noise itself
    resid = (sent - clean)[far].astype(np.float64) / device.noise.std
    assert far.sum() > 500
    assert abs(resid.mean()) < 4 / np.sqrt(far.sum())
    assert resid.std() == pytest.approx(1.0, abs=0.08)
    again = np.stack([p.activations for p in device.encode_many(x, RandomMasks(5), mask=mask)])
    assert not np.array_equal(again, sent)  # fresh noise for every request


def test_training_under_small_noise_keeps_accuracy(noisy):
    result, plain, _, _ = noisy
    acc, base = result.metrics["test_accuracy"]["mean"], plain.metrics["test_accuracy"]["mean"]
    assert acc > 0.85 and acc >= base - 0.05, (acc, base)


def test_device_and_torch_agree_with_the_same_noise_draw(noisy):
    result, _, device, server = noisy
    x = result.dataset.x_test[:200]
    mask = RandomMasks(1).masks(x, device.n_outputs, device.drop_rate)
    payloads = device.encode_many(x, RandomMasks(2), mask=mask)
    sent = np.stack([p.activations for p in payloads])
    where = (device.activations(x) > 0) & mask
    e = RandomMasks(2).noise(x, where, device.n_outputs, device.drop_rate)  # the device's own draw, replayed
    model = result.model.eval()
    with torch.no_grad():
        h = model.first(torch.from_numpy(x), mask=torch.from_numpy(mask), noise=torch.from_numpy(e).float())
        probs = torch.softmax(model.rest(h), 1).numpy()
    assert np.abs(h.flatten(1).numpy() - sent).max() < 1e-5
    np.testing.assert_allclose(server.predict_bytes([p.data for p in payloads]), probs, atol=1e-5)


def _reference_keyed_noise(masks: KeyedMasks, x: np.ndarray, index: int, n_outputs: int, p: float) -> float:
    """The documented derivation, written out independently (what a JavaScript device implements)."""
    prk = masks.seed(x, n_outputs, p)
    nprk = hmac.new(prk, b"daonet-noise-v1", hashlib.sha256).digest()
    block = hmac.new(nprk, index.to_bytes(4, "little"), hashlib.sha256).digest()
    u = [int.from_bytes(block[2 * j:2 * j + 2], "little") for j in range(12)]
    return sum((v + 0.5) / 65536.0 for v in u) - 6.0


def test_keyed_noise_replays_byte_identical_and_follows_the_spec(noisy):
    result, _, device, _ = noisy
    x = (result.dataset.x_test[:20] * 255).round().astype(np.uint8)  # raw 8-bit pixels, as a device holds them
    masks = KeyedMasks(key=KEY, model_version=device.version)
    first = [p.data for p in device.encode_many(x, masks)]
    again = [p.data for p in device.encode_many(x, KeyedMasks(key=KEY, model_version=device.version))]
    assert first == again  # a re-sent input sends the very same bytes, noise included
    other = [p.data for p in device.encode_many(x, KeyedMasks(key=bytes(32), model_version=device.version))]
    assert first != other
    xb = device.validate(x[:1])  # a batch of one, as encode() computes it (BLAS may round batches differently)
    keep = masks.masks(xb, device.n_outputs, device.drop_rate)
    clean = np.where(keep, device.activations(xb), 0)
    payload = device.encode(x[0], masks)
    idx = np.flatnonzero(clean[0])
    assert np.array_equal(np.flatnonzero(payload.activations), idx) and idx.size > 3
    assert not np.array_equal(payload.activations[idx], clean[0, idx])  # noise was added
    for i in idx[:5]:
        e = _reference_keyed_noise(masks, xb[0], int(i), device.n_outputs, device.drop_rate)
        expected = np.float32(max(float(clean[0, i]) + device.noise.std * e, device.noise.floor))
        assert payload.activations[i] == expected  # bit for bit


def test_similarity_keyed_noise_follows_the_mask(noisy):
    """Near-duplicates in the same cells get the same mask *and* the same noise (else repeats average it out)."""
    result, _, device, _ = noisy
    masks = SimilarityKeyedMasks(key=KEY, model_version=device.version, width=4.0)
    x = (result.dataset.x_test[0] * 255).round().astype(np.uint8)
    near = x.copy()
    near.flat[:3] = np.clip(near.flat[:3].astype(int) + 2, 0, 255)
    xb, nb = device.validate(x), device.validate(near)
    assert not np.array_equal(xb, nb) and np.array_equal(masks.cells(xb[0]), masks.cells(nb[0]))
    where = np.ones((1, device.n_outputs), dtype=bool)
    e = masks.noise(xb, where, device.n_outputs, device.drop_rate)
    assert np.array_equal(e, masks.noise(nb, where, device.n_outputs, device.drop_rate))
    assert abs(e.mean()) < 0.3 and 0.7 < e.std() < 1.3
    assert device.encode(x, masks).data == device.encode(x, masks).data


def test_keyed_noise_is_standard(noisy):
    _, _, device, _ = noisy
    masks = KeyedMasks(key=KEY, model_version=device.version)
    x = np.random.default_rng(0).random((40, 64)).astype(np.float32)
    e = masks.noise(x, np.ones((40, 512), dtype=bool), 512, 0.5)
    assert abs(e.mean()) < 0.02 and e.std() == pytest.approx(1.0, abs=0.02) and np.abs(e).max() <= 6
    assert np.corrcoef(e[:, :-1].ravel(), e[:, 1:].ravel())[0, 1] < 0.02  # neighbours independent


def test_certificate_says_noise_makes_it_an_upper_bound(noisy):
    result, _, device, _ = noisy
    payload, cert = device.encode_certified(result.dataset.x_test[0], RandomMasks(0))
    assert cert.exact is False and cert.note == NOISE_NOTE and "not exact" in cert.summary()
    assert cert.to_dict()["exact"] is False and cert.identifiable == 0 and cert.k == payload.nnz


def test_bad_noise_settings_are_refused(noisy):
    _, _, device, _ = noisy
    with pytest.raises(InputError, match="cannot be combined"):
        TrainConfig(noise_std=0.5, quantize_levels=2).validate()
    with pytest.raises(InputError, match="--noise-std must be a finite number"):
        TrainConfig(noise_std=float("nan")).validate()
    for noise, message in [({"kind": "laplace", "std": 1.0, "floor": 0.01}, "not supported"),
                           ({"kind": "gaussian", "std": 1.0, "floor": 0.0}, "invalid"),
                           ({"kind": "gaussian", "floor": 0.01}, "malformed")]:
        manifest = device.manifest.to_json()
        manifest["noise"] = noise
        with pytest.raises(BundleError, match=message):
            DeviceModel(manifest, device.weight, device.bias, device.extras)

    class MasksOnly:
        def masks(self, x, n_outputs, drop_rate):
            return np.ones((x.shape[0], n_outputs), dtype=bool)

    with pytest.raises(InputError, match="cannot draw it; use RandomMasks or KeyedMasks"):
        device.encode(np.zeros((8, 8), np.float32), MasksOnly())


def test_javascript_runtime_sends_the_same_noisy_bytes(noisy):
    """Keyed and similarity-keyed noise are reproduced bit for bit by the browser runtime (the derivation is
    integer HMAC + exact float64 sums; docs/masks.md)."""
    from test_js_device import case, node_binary, run_js

    node = node_binary()
    if node is None:
        pytest.skip("Node.js >= 18 is not installed: the JS device runtime cannot run")
    result, _, device, _ = noisy
    x = (result.dataset.x_test[:4] * 255).round().astype(np.uint8)
    for similarity in (None, {"width": 4.0}):
        out = run_js(node, device.bundle_dir, [case(xi) for xi in x], key=KEY, similarity=similarity)
        masks = (SimilarityKeyedMasks(key=KEY, model_version=device.version, **similarity) if similarity
                 else KeyedMasks(key=KEY, model_version=device.version))
        for xi, got in zip(x, out["results"], strict=True):
            payload, cert = device.encode_certified(xi, masks)
            assert payload.nnz > 0 and got["payload"] == payload.data.hex()
            assert got["certificate"]["note"] == cert.note == NOISE_NOTE
