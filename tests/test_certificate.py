"""The per-request certificate against brute-force linear algebra, and the device policy on every request.

Real small models (sklearn digits, an ECG5000 subset) trained with ``daonet.train``; brute force is
``numpy.linalg.pinv`` on the dense matrix of surviving rows built independently from the torch model.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from daonet.data import load_dataset
from daonet.device.certificate import FirstLayerSystem, PrivacyPolicy, apply_policy, certify
from daonet.device.masks import RandomMasks
from daonet.device.runtime import DeviceModel
from daonet.errors import BundleError, InputError
from daonet.exporting import export_model
from daonet.train import TrainConfig, train
from daonet.wire import decode

CASES = {
    "dense": ("digits", "mlp", {"hidden": 48, "hidden2": 32}),
    "conv2d-patchify": ("digits", "cnn", {"stem": 8, "patch": 2, "width": 8}),
    "conv2d-overlap": ("digits", "cnn", {"stem": 4, "patch": 3, "stride": 1, "width": 8}),
    "conv1d-patchify": ("ecg5000", "cnn1d", {"stem": 8, "patch": 4, "width": 8}),
    "conv1d-overlap": ("ecg5000", "cnn1d", {"stem": 3, "patch": 5, "stride": 2, "width": 8}),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: threads only add contention
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def datasets():
    return {"digits": load_dataset("digits"), "ecg5000": load_dataset("ecg5000").subset(200, 100, seed=0)}


@pytest.fixture(scope="module")
def models(datasets, tmp_path_factory):
    out = {}
    for name, (ds_name, arch, kw) in CASES.items():
        ds = datasets[ds_name]
        res = train(TrainConfig(dataset=ds_name, model=arch, drop_rate=0.5, epochs=1, model_kwargs=kw),
                    ds=ds, progress=False)
        path = tmp_path_factory.mktemp(name)
        export_model(res.model, path, model_id=name, classes=ds.classes, raw_dtype=ds.info.get("raw_dtype", "float32"))
        out[name] = (DeviceModel.load(path / "device"), res.model, ds)
    return out


def torch_rows(model) -> tuple[np.ndarray, np.ndarray]:
    """Independent construction of the full effective matrix: the first layer's Jacobian w.r.t. the raw
    input (it is affine before the ReLU) and its value at 0."""
    first = model.first

    def pre(x):
        z = (x - first.mean) / first.std
        return first.op(z.flatten(1) if first.kind == "dense" else z).flatten(1)

    x0 = torch.zeros((1, *first.in_shape))
    with torch.no_grad():
        c = pre(x0)[0].double().numpy()
    jac = torch.autograd.functional.jacobian(lambda x: pre(x.reshape(1, *first.in_shape))[0], x0.reshape(-1))
    return jac.double().numpy(), c


def brute(a: np.ndarray, d: np.ndarray) -> tuple[int, int, float, np.ndarray]:
    if a.shape[0] == 0:
        return 0, 0, 0.0, np.zeros(a.shape[1])
    p = np.linalg.pinv(a) @ a
    lev = np.diag(p)
    pd = p @ d
    return int(np.linalg.matrix_rank(a)), int((lev >= 1 - 1e-6).sum()), float(pd @ pd / (d @ d)), lev


@pytest.mark.parametrize("case", list(CASES))
def test_system_rows_reproduce_the_layer(models, case):
    device, model, ds = models[case]
    system = FirstLayerSystem(device)
    a, c = system.full_matrix()
    ja, jc = torch_rows(model)
    np.testing.assert_allclose(a, ja, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c, jc, rtol=1e-4, atol=1e-4)
    x = ds.x_test[:16]
    np.testing.assert_allclose(np.maximum(x.reshape(16, -1) @ a.T + c, 0), device.activations(x), atol=2e-4)
    assert system.patchify == (case.endswith("patchify"))


@pytest.mark.parametrize("case", list(CASES))
def test_certificate_matches_pinv(models, case):
    device, model, ds = models[case]
    a_full, _ = torch_rows(model)
    mu = ds.x_train.reshape(len(ds.x_train), -1).mean(0)
    x = ds.x_test[:12]
    h = device.drop(x, RandomMasks(3))
    for xi, hi in zip(x, h, strict=True):
        cert = certify(device.system, xi, hi, mu)
        s = np.flatnonzero(hi)
        d = xi.reshape(-1).astype(np.float64) - mu
        rank, ident, rho, lev = brute(a_full[s], d)
        assert cert.k == s.size and cert.n == d.size
        assert cert.identifiable == ident
        assert cert.revealed_energy == pytest.approx(rho, abs=1e-6)
        assert cert.max_leverage == pytest.approx(min(1.0, lev.max(initial=0)), abs=1e-6)
        if case.endswith("patchify"):
            # independent per-patch systems: the certificate's rank is the sum of per-patch ranks
            pos = s % device.system.n_positions
            ranks = np.zeros(device.system.n_positions, dtype=int)
            for p in np.unique(pos):
                ranks[p] = np.linalg.matrix_rank(a_full[s[pos == p]])
            assert cert.rank == rank == ranks.sum()
            np.testing.assert_array_equal(cert.patches.rank, ranks)
            np.testing.assert_array_equal(cert.patches.k, np.bincount(pos, minlength=len(ranks)))
            energy = cert.patches.revealed_energy  # several patches may tie (e.g. at 1.0): any of them is the worst
            assert energy[cert.worst_patch["index"]] == pytest.approx(float(np.max(energy)), abs=1e-12)
        else:
            assert cert.rank == rank
            assert cert.patches is None


def test_full_rank_patches_are_identifiable(models):
    """Without dropping a patchify stem with more channels than patch pixels reveals whole patches."""
    device, model, ds = models["conv2d-patchify"]
    x = ds.x_test[:5]
    h = device.activations(x)  # p = 0
    for xi, hi in zip(x, h, strict=True):
        cert = certify(device.system, xi, hi, device.public_mean)
        full = cert.patches.rank == cert.patches.patch_dim
        assert cert.identifiable == int(full.sum()) * cert.patches.patch_dim
        assert (cert.patches.identifiable[full] == cert.patches.patch_dim).all()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("threshold", [None, 0.5, 0.15])
def test_policy_holds_on_every_request(models, case, threshold):
    """Decode the actual payload bytes and re-check the policy with brute force on what was sent."""
    device, model, ds = models[case]
    a_full, _ = torch_rows(model)
    policy = PrivacyPolicy(max_revealed_energy=threshold)
    x = ds.x_test[:10]
    base = device.drop(x, RandomMasks(5))
    pairs = device.encode_many_certified(x, RandomMasks(5), policy=policy)
    mu = device.public_mean.reshape(-1).astype(np.float64)
    for xi, hb, (payload, cert) in zip(x, base, pairs, strict=True):
        sent = decode(payload.data, expected_outputs=device.n_outputs)
        assert cert.policy_ok and cert.k == sent.nnz == payload.nnz
        assert cert.k_before_policy == int((hb > 0).sum())
        assert cert.dropped_by_policy == cert.k_before_policy - cert.k
        assert set(sent.indices) <= set(np.flatnonzero(hb))  # the policy only removes outputs
        np.testing.assert_array_equal(sent.values, hb[sent.indices])  # and never alters the survivors
        _, ident, rho, _ = brute(a_full[sent.indices], xi.reshape(-1) - mu)
        assert ident == 0
        if threshold is not None:
            assert rho <= threshold + 1e-6


def test_policy_changes_nothing_when_it_already_holds(models):
    device, _, ds = models["dense"]
    x = ds.x_test[:10]
    h = device.drop(x, RandomMasks(1))
    for xi, hi in zip(x, h, strict=True):
        out, cert = apply_policy(device.system, xi, hi, PrivacyPolicy(max_revealed_energy=1.0), device.public_mean)
        np.testing.assert_array_equal(out, hi)
        assert cert.dropped_by_policy == 0


def test_policy_greedy_drops_few(models):
    """The greedy keeps most outputs: far fewer drops than emptying the payload."""
    device, _, ds = models["dense"]
    pairs = device.encode_many_certified(ds.x_test[:20], RandomMasks(2), policy=PrivacyPolicy(0.2))
    dropped = np.array([c.dropped_by_policy for _, c in pairs])
    before = np.array([c.k_before_policy for _, c in pairs])
    assert (dropped < before).all()


def test_policy_from_manifest_and_errors(models):
    device, _, _ = models["dense"]
    assert device.policy == PrivacyPolicy(max_revealed_energy=None)
    assert PrivacyPolicy.from_manifest({"max_revealed_energy": 0.3}).max_revealed_energy == 0.3
    with pytest.raises(InputError):
        PrivacyPolicy(max_revealed_energy=1.5)
    with pytest.raises(BundleError):
        PrivacyPolicy.from_manifest({"max_revealed_energy": "lots"})
    with pytest.raises(InputError):
        certify(device.system, np.zeros(10), np.zeros(device.n_outputs))
    with pytest.raises(InputError):
        certify(device.system, np.zeros(64), np.zeros(3))
    cert = device.certify(np.zeros((8, 8), np.float32), device.activations(np.zeros((8, 8), np.float32))[0])
    assert 0.0 <= cert.revealed_energy <= 1.0 and "outputs sent" in cert.summary()


def test_certificate_module_is_numpy_only():
    code = "import sys, daonet.device.certificate, daonet.device.masks; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
