"""The batched certificate and policy (``FirstLayerSystem.fast``, the default) against the reference loops they
replace: the same outputs sent, the same payload bytes, the same certificate, on every layer kind.

Real small models trained with ``daonet.train`` and the two shipped defaults, real inputs, and the cases
where the order of a greedy choice or a tie decides: inputs equal to the public mean (every gain is 0),
half-blank inputs, duplicated and all-zero output channels (exactly equal and dependent rows), every output
kept (more equations than unknowns), several policies.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from daonet.data import load_dataset
from daonet.defaults import default_bundle
from daonet.device import KeyedMasks, RandomMasks
from daonet.device.certificate import PrivacyPolicy
from daonet.device.runtime import DeviceModel
from daonet.exporting import export_model
from daonet.train import TrainConfig, train

CASES = {
    "dense": ("digits", "mlp", {"hidden": 48, "hidden2": 32}),
    "conv2d-patchify": ("digits", "cnn", {"stem": 8, "patch": 2, "width": 8}),
    "conv2d-overlap": ("digits", "cnn", {"stem": 4, "patch": 3, "stride": 1, "width": 8}),
    "conv1d-patchify": ("ecg5000", "cnn1d", {"stem": 8, "patch": 4, "width": 8}),
    "conv1d-overlap": ("ecg5000", "cnn1d", {"stem": 8, "patch": 5, "stride": 2, "width": 8}),
}
POLICIES = [PrivacyPolicy(), PrivacyPolicy(max_revealed_energy=0.5), PrivacyPolicy(max_revealed_energy=0.15),
            PrivacyPolicy(max_revealed_energy=0.3, forbid_identifiable=False),
            PrivacyPolicy(max_revealed_energy=None, forbid_identifiable=False)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = {"digits": load_dataset("digits"), "ecg5000": load_dataset("ecg5000").subset(200, 60, seed=0)}
        out = {}
        for name, (ds_name, arch, kw) in CASES.items():
            ds = data[ds_name]
            res = train(TrainConfig(dataset=ds_name, model=arch, drop_rate=0.5, epochs=1, model_kwargs=kw),
                        ds=ds, progress=False)
            path = tmp_path_factory.mktemp(name)
            export_model(res.model, path, model_id=name, classes=ds.classes,
                         raw_dtype=ds.info.get("raw_dtype", "float32"))
            out[name] = (DeviceModel.load(path / "device"), ds.x_test)
    finally:
        torch.set_num_threads(old)
    for name, ds_name in (("mnist-mlp", "mnist"), ("ecg5000-cnn1d", "ecg5000")):
        xs = load_dataset(ds_name).x_test[:40]
        out[f"{name} (shipped)"] = (DeviceModel.load(default_bundle(ds_name).root / "device"), xs)
    return out


def _inputs(device: DeviceModel, xs: np.ndarray, n: int) -> np.ndarray:
    """``n`` real test inputs in the device's input shape."""
    return np.asarray(xs[:n], dtype=np.float32).reshape((n, *device.input_shape))


def _edge_inputs(device: DeviceModel, xs: np.ndarray) -> np.ndarray:
    """The public mean itself (every gain ties at 0), and real inputs with half their values set to it."""
    mu = np.asarray(device.public_mean, dtype=np.float32)
    half = xs[:4].copy().reshape(4, -1)
    half[:, : half.shape[1] // 2] = mu.reshape(-1)[: half.shape[1] // 2]
    return np.concatenate([mu[None], half.reshape(xs[:4].shape)])


def _both(device: DeviceModel, fn):
    """``fn()`` with the reference loops, then with the batched path."""
    out = []
    for fast in (False, True):
        device.system.fast = fast
        out.append(fn())
    device.system.fast = True
    return out


def _assert_same(ref, fast) -> None:
    assert [p.data for p, _ in ref] == [p.data for p, _ in fast]  # the same bytes leave the device
    for (_, a), (_, b) in zip(ref, fast, strict=True):
        da, db = a.to_dict(per_patch=True), b.to_dict(per_patch=True)
        for key in ("k", "n", "rank", "identifiable", "k_before_policy", "dropped_by_policy", "policy_ok",
                    "policy"):
            assert da[key] == db[key], key
        assert a.revealed_energy == pytest.approx(b.revealed_energy, abs=1e-9)
        assert a.max_leverage == pytest.approx(b.max_leverage, abs=1e-9)
        assert (a.patches is None) == (b.patches is None)
        if a.patches is not None:
            for key in ("k", "rank", "identifiable"):
                np.testing.assert_array_equal(getattr(a.patches, key), getattr(b.patches, key))
            np.testing.assert_allclose(a.patches.revealed_energy, b.patches.revealed_energy, atol=1e-9)
            assert a.worst_patch["index"] == b.worst_patch["index"]
            assert {k: v for k, v in a.worst_patch.items() if k != "revealed_energy"} == \
                   {k: v for k, v in b.worst_patch.items() if k != "revealed_energy"}


def _certified(device: DeviceModel, xs: np.ndarray, policy: PrivacyPolicy, seed: int, mask=None):
    return [device.encode_certified(x, RandomMasks(seed + i), mask=mask, policy=policy) for i, x in enumerate(xs)]


def _same_under_three_policies(twin: DeviceModel, x: np.ndarray, seed: int) -> list:
    """The reference and the fast path agree under three policies, with fresh masks and with every output kept;
    returns the fast path's last results."""
    everything = np.ones(twin.n_outputs, dtype=bool)
    fast: list = []
    for policy in POLICIES[:3]:
        for mask in (None, everything):
            ref, fast = _both(twin, lambda policy=policy, mask=mask: _certified(twin, x, policy, seed=seed, mask=mask))
            _assert_same(ref, fast)
    return fast


@pytest.mark.parametrize("name", [*CASES, "mnist-mlp (shipped)", "ecg5000-cnn1d (shipped)"])
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"rho{p.max_revealed_energy}-id{p.forbid_identifiable}")
def test_fast_policy_sends_what_the_reference_sends(models, name, policy):
    device, xs = models[name]
    x = _inputs(device, xs, 8)
    ref, fast = _both(device, lambda: _certified(device, x, policy, seed=3))
    _assert_same(ref, fast)


@pytest.mark.parametrize("name", [*CASES, "ecg5000-cnn1d (shipped)"])
def test_fast_policy_on_ties_and_blank_inputs(models, name):
    device, xs = models[name]
    x = _edge_inputs(device, _inputs(device, xs, 4))
    for policy in POLICIES[:3]:
        ref, fast = _both(device, lambda policy=policy: _certified(device, x, policy, seed=11))
        _assert_same(ref, fast)


@pytest.mark.parametrize("name", ["conv2d-patchify", "conv1d-overlap", "ecg5000-cnn1d (shipped)", "dense"])
def test_fast_policy_with_every_output_kept(models, name):
    """No dropping: patches (or the whole input) with more equations than unknowns, full rank or not."""
    device, xs = models[name]
    x = _inputs(device, xs, 3)
    everything = np.ones(device.n_outputs, dtype=bool)
    for policy in POLICIES[:2]:
        ref, fast = _both(device, lambda policy=policy: _certified(device, x, policy, seed=0, mask=everything))
        _assert_same(ref, fast)
    assert any(c.dropped_by_policy for _, c in fast)  # the policy had something to do


@pytest.mark.parametrize("name", ["conv1d-patchify", "conv1d-overlap", "dense"])
def test_fast_policy_with_duplicate_and_dead_channels(models, name):
    """Output 1 copies output 0 (equal rows: exact ties, then a dependent row) and output 2 has no weights
    but a positive bias (an all-zero row that is always sent)."""
    device, xs = models[name]
    w, b = device.weight.copy(), device.bias.copy()
    w[1], b[1] = w[0], b[0]
    w[2], b[2] = 0.0, 0.5
    twin = DeviceModel(device.manifest, w, b, device.extras)
    x = _inputs(twin, xs, 6)
    fast = _same_under_three_policies(twin, x, seed=5)
    assert all(c.k >= 1 for _, c in fast)  # the dead channel's row is sent every time (ReLU of its bias)


@pytest.mark.parametrize("name", ["conv1d-patchify", "dense", "ecg5000-cnn1d (shipped)"])
def test_batch_encode_gives_the_bytes_of_one_by_one(models, name):
    """``encode_many`` / ``encode_many_certified`` (a buffered sensor window) send what one-by-one sends."""
    device, xs = models[name]
    x = _inputs(device, xs, 12)
    keyed = KeyedMasks(key=b"k" * 32, model_version=device.version)  # the mask depends on the input only
    assert [p.data for p in device.encode_many(x, keyed)] == [device.encode(xi, keyed).data for xi in x]
    many = device.encode_many_certified(x, keyed)
    single = [device.encode_certified(xi, keyed) for xi in x]
    assert [p.data for p, _ in many] == [p.data for p, _ in single]
    assert [c.to_dict() for _, c in many] == [c.to_dict() for _, c in single]


def test_fast_certificate_of_a_tall_system_with_inputs_no_output_touches(models):
    """More kept outputs than inputs, but some input values covered by no kept output (their columns are zero):
    the row space is the span of the covered inputs, so the fast path settles rank, identifiable inputs and
    revealed energy without the SVD, and must agree with the reference."""
    from daonet.device.certificate import _batched_stats_tall, certify

    device, xs = models["conv1d-overlap"]
    x = _inputs(device, xs, 6)
    system = device.system
    ch, pos = system.split(np.arange(device.n_outputs))
    resolved = 0
    for i, xi in enumerate(x):
        sent = np.maximum(system.full_matrix()[0] @ xi.reshape(-1).astype(np.float64) + system.full_matrix()[1], 0)
        sent[pos == i % system.n_positions] = 0.0  # one receptive field's outputs dropped: its inputs uncovered
        sent[pos == (i + 3) % system.n_positions] = 0.0
        idx = np.flatnonzero(sent)
        if idx.size < system.n:
            continue
        ref, fast = _both(device, lambda xi=xi, sent=sent: [certify(system, xi, sent, device.public_mean)])
        a, b = ref[0], fast[0]
        assert (a.k, a.rank, a.identifiable) == (b.k, b.rank, b.identifiable)
        assert a.revealed_energy == pytest.approx(b.revealed_energy, abs=1e-9)
        assert a.max_leverage == pytest.approx(b.max_leverage, abs=1e-9)
        d = xi.reshape(-1).astype(np.float64) - np.asarray(device.public_mean, np.float64).reshape(-1)
        rank, ident, _, energy, done = _batched_stats_tall(system, idx, d)
        if done[0] and int(rank[0]) < system.n:  # settled without the SVD: rank-deficient, the covered inputs
            assert int(rank[0]) == a.rank and int(ident[0]) == a.identifiable
            assert float(energy[0]) / float(d @ d) == pytest.approx(a.revealed_energy, abs=1e-9)
            resolved += 1
    assert resolved > 0


@pytest.mark.parametrize("name", ["conv1d-overlap", "conv2d-overlap"])
def test_fast_policy_without_the_row_lookup(models, name, monkeypatch):
    """A convolution with more outputs than the row and ``W Wᵀ`` tables are kept for (a FordA-length layer) builds
    its rows and Gram matrix per request instead: the same bytes and certificates as the reference."""
    from daonet.device import certificate

    device, xs = models[name]
    monkeypatch.setattr(certificate, "_LOOKUP_BYTES", 0)
    twin = DeviceModel(device.manifest, device.weight, device.bias, device.extras)
    assert twin.system.lookup is None
    x = _inputs(twin, xs, 6)
    _same_under_three_policies(twin, x, seed=7)


@pytest.mark.parametrize("name", ["conv1d-patchify", "conv2d-patchify", "ecg5000-cnn1d (shipped)"])
def test_patch_table_when_full_starts_again_and_changes_nothing(models, name, monkeypatch):
    """A patchify layer's per-channel-set table (prefilled with the sets smaller than a patch, then filled by
    requests) bounded to a few sets: it empties itself between requests, never changes a byte, and keeps what
    was prefilled. Then the same with no prefill at all (every set factorised when a request meets it)."""
    from daonet.device import subsets

    device, xs = models[name]
    resets = []
    reset = subsets.PatchSubsets._reset
    monkeypatch.setattr(subsets.PatchSubsets, "_reset", lambda self: (resets.append(1), reset(self)))
    m, c = device.system.patch_dim, device.system.kernel_rows.shape[0]
    per_set = 8 * m * (m + 1)
    for budget in (per_set * (2 * (1 + c) + 4), per_set):  # room for the sets of <= 1 channel and a few more; one set
        monkeypatch.setattr(subsets, "MAX_BYTES", budget)
        twin = DeviceModel(device.manifest, device.weight, device.bias, device.extras)
        table = twin.system.patch_subsets
        prefilled = len(table)
        assert prefilled == (1 + c if budget > per_set else 0)
        x = _inputs(twin, xs, 8)
        _same_under_three_policies(twin, x, seed=13)
        # bounded: a request that overflows the table starts again from the prefill and adds one set per patch at most
        assert len(table) <= max(table._capacity, prefilled + twin.system.n_positions)
        assert len(table) >= prefilled  # the prefilled sets survive every reset
        assert resets, "the table never filled up: nothing was tested"
        resets.clear()


def _same_when_cut(device: DeviceModel, xs: np.ndarray, monkeypatch, slot_rows: int) -> None:
    """Most outputs dropped, the split into independent systems on even for a small layer: the bytes and
    certificates are the reference's, and the split path is the one that settled them."""
    from daonet.device import certificate

    monkeypatch.setattr(certificate, "_SPLIT_ABOVE", 0)  # a small layer would take the one-system path
    monkeypatch.setattr(certificate, "_SLOT_ROWS", slot_rows)
    settled = []
    stats = certificate._component_stats
    monkeypatch.setattr(certificate, "_component_stats",
                        lambda *a: (lambda out: (settled.append(out is not None), out)[1])(stats(*a)))
    rng = np.random.default_rng(slot_rows)
    x = _inputs(device, xs, 6)
    for i, xi in enumerate(x):
        mask = rng.random(device.n_outputs) > 0.8
        for policy in POLICIES[:3]:
            ref, fast = _both(device, lambda xi=xi, mask=mask, policy=policy, i=i: [
                device.encode_certified(xi, RandomMasks(i), mask=mask, policy=policy)])
            _assert_same(ref, fast)
    assert sum(settled) >= len(x)  # the stacked path settled (not only declined) most requests


@pytest.mark.parametrize("slot_rows", [1, 6, 32])
def test_fast_certificate_of_an_overlapping_conv1d_cut_into_independent_systems(models, monkeypatch, slot_rows):
    """Gaps of positions with no surviving output cut a 1-D overlapping convolution's equations into independent
    systems, certified as one stack (as on a FordA-length signal at a high drop rate), packed one group or
    several to a slot."""
    device, xs = models["conv1d-overlap"]
    _same_when_cut(device, xs, monkeypatch, slot_rows)


def test_fast_certificate_of_a_two_channel_conv1d_cut_into_independent_systems(tmp_path, monkeypatch):
    """The same on signals of two channels (as a two-axis body-sensor window; here two real ECG5000 traces side by
    side, stored as a user's ``npz``): a slot's window holds every channel's values of its stretch."""
    ecg = load_dataset("ecg5000").subset(300, 40, seed=1)
    pair = lambda x: np.concatenate([x, x[::-1]], axis=1).astype(np.float32)  # noqa: E731  (N, 2, L)
    np.savez(tmp_path / "ecg2.npz", x_train=pair(ecg.x_train), y_train=ecg.y_train, x_test=pair(ecg.x_test),
             y_test=ecg.y_test)
    ds = load_dataset(f"npz:{tmp_path / 'ecg2.npz'}")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = train(TrainConfig(dataset=ds.name, model="cnn1d", drop_rate=0.5, epochs=1,
                                model_kwargs={"stem": 6, "patch": 5, "stride": 2, "width": 8}), ds=ds, progress=False)
    finally:
        torch.set_num_threads(old)
    export_model(res.model, tmp_path / "bundle", model_id="ecg2", classes=ds.classes)
    device = DeviceModel.load(tmp_path / "bundle" / "device")
    assert device.input_shape[0] == 2 and device.kind == "conv1d"
    _same_when_cut(device, ds.x_test, monkeypatch, 6)
