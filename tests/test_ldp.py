"""The Gaussian mechanism (noise kind ``gaussian_ldp``): the clip bound, noise on every kept output, epsilon from
dp-accounting, the exact discrete Gaussian in both runtimes, the signed wire, training, serving and the audit.

Byte-identical payloads numpy vs JavaScript and the refusals of malformed LDP manifests by both runtimes are in
the shared conformance corpus (tests/conformance/corpus.py, ``ldp-*`` cases)."""

from __future__ import annotations

import json
import math
import subprocess

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from scipy import stats
from test_js_device import node_binary

from daonet import ldp
from daonet.data import load_dataset
from daonet.device import Client, DeviceModel, KeyedMasks, RandomMasks, SimilarityKeyedMasks
from daonet.device.block import LDP_NOTE, LdpCertificate, ldp_clip_steps
from daonet.device.masks import discrete_gaussian, index_discrete_gaussian
from daonet.errors import DaonetError, InputError, MalformedPayloadError
from daonet.exporting import export_model
from daonet.manifest import ManifestError, NoiseSpec
from daonet.server import ServerModel
from daonet.train import TrainConfig, train
from daonet.wire import SIGNED_WIRE_VERSION, decode, encode, read_frame

KEY = bytes(range(32))
SMALL = dict(dataset="digits", model="mlp", drop_rate=0.5, epochs=8, batch_size=64)
MODULE = "src/daonet/web/daonet-device.mjs"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ldp_run(tmp_path_factory):
    """Digits mlp at p = 0.5 trained with the Gaussian mechanism at epsilon = 8, exported and loaded."""
    ds = load_dataset("digits")
    result = train(TrainConfig(**SMALL, model_kwargs={"hidden": 64, "hidden2": 32, "ldp_epsilon": 8.0}), ds=ds,
                   progress=False)
    root = tmp_path_factory.mktemp("ldp") / "bundle"
    dev, srv = export_model(result.model, root, model_id="digits-ldp", classes=ds.classes, raw_dtype="uint8")
    return result, DeviceModel.load(dev), ServerModel.load(srv), root


def _spec(device: DeviceModel) -> NoiseSpec:
    spec = device.ldp
    assert spec is not None
    return spec


def test_manifest_records_the_mechanism(ldp_run):
    result, device, server, _ = ldp_run
    spec = _spec(device)
    assert spec.kind == "gaussian_ldp" and spec.applies_to == "kept" and spec.mechanism == "discrete_gaussian"
    assert device.manifest.wire.version == SIGNED_WIRE_VERSION == server.manifest.wire.version
    assert spec.clip == spec.clip_steps * spec.grid and spec.std == spec.noise_steps * spec.grid
    assert spec.sensitivity == math.sqrt(2) * spec.clip
    assert spec.accountant == "dp_accounting.rdp.RdpAccountant" and spec.accountant_version == ldp.accountant_version()
    assert 128 <= int(spec.noise_steps or 0) <= 256 and spec.delta == 1e-5 and spec.target_epsilon == 8.0
    # the clip is the median kept-vector norm on the public (training) data, up to the grid and the mask draw
    h = device.activations(result.dataset.x_train)
    keep = RandomMasks(0).masks(h, device.n_outputs, device.drop_rate)
    median = float(np.median(np.linalg.norm(np.where(keep, h, 0), axis=1)))
    assert spec.clip == pytest.approx(median, rel=0.1)
    # the training record (metrics.json) carries the same mechanism as the manifest
    assert result.metrics["noise"]["kind"] == "gaussian_ldp"
    assert result.metrics["noise"]["epsilon"] == pytest.approx(spec.epsilon)


def test_epsilon_equals_dp_accountings_value_and_never_exceeds_the_target(ldp_run):
    spec = _spec(ldp_run[1])
    acc = RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(spec.std / spec.sensitivity))
    assert spec.epsilon == pytest.approx(acc.get_epsilon(spec.delta), rel=1e-12)
    assert spec.epsilon <= 8.0  # sigma rounded up and the clip down to the grid: only ever below the target


def test_epsilon_falls_as_sigma_grows_and_composes_over_requests():
    zs = [0.2, 0.3, 0.5, 0.8, 1.0, 2.0, 4.0, 8.0]
    eps = [ldp.epsilon(z, 1e-5) for z in zs]
    assert all(a > b for a, b in zip(eps, eps[1:], strict=False))
    k = [ldp.epsilon(1.0, 1e-5, requests=r) for r in (1, 2, 5, 10)]
    assert all(a < b for a, b in zip(k, k[1:], strict=False))
    acc = RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.0), 10))
    assert k[-1] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
    for target in (1.0, 4.0, 16.0):
        z = ldp.noise_multiplier_for(target)
        assert ldp.epsilon(z) <= target and ldp.epsilon(z * 0.99) > target


def test_clip_bound_holds_for_every_request(ldp_run):
    result, device, _, _ = ldp_run
    spec = _spec(device)
    b = int(spec.clip_steps or 0)
    x = result.dataset.x_test
    h = device.activations(x)
    keep = RandomMasks(1).masks(h, device.n_outputs, device.drop_rate)
    for scale in (1.0, 10.0, 1e6):  # real activations and ones far beyond the clip
        q = ldp_clip_steps((h * np.float32(scale)), keep, spec)
        assert (q >= 0).all() and (q[~keep] == 0).all()
        assert ((q * q).sum(1) <= b * b).all()
    clipped = (np.linalg.norm(np.where(keep, h, 0), axis=1) > spec.clip).mean()
    assert 0.2 < clipped < 0.8  # the median clip bites on about half of the requests
    # what is sent sits on the grid: (clipped value + integer noise) x grid
    sent = np.stack([p.activations for p in device.encode_many(x[:50], RandomMasks(2))])
    assert np.array_equal(sent / spec.grid, np.rint(sent / spec.grid))


def test_noise_on_every_kept_output_relu_zeros_included(ldp_run):
    result, device, _, _ = ldp_run
    spec = _spec(device)
    x = result.dataset.x_test
    h = device.activations(x)
    keep = RandomMasks(3).masks(h, device.n_outputs, device.drop_rate)
    sent = np.stack([p.activations for p in device.encode_many(x, RandomMasks(4), mask=keep)])
    assert not sent[~keep].any()  # dropped outputs stay absent
    relu_zero = keep & (h == 0)
    assert relu_zero.sum() > 1000 and (sent[relu_zero] != 0).mean() > 0.98  # the zero pattern no longer shows
    assert (sent < 0).any()
    y = np.rint(sent / spec.grid).astype(np.int64) - ldp_clip_steps(h, keep, spec)
    resid = y[keep]
    s = int(spec.noise_steps or 0)
    assert abs(resid.mean()) < 5 * s / math.sqrt(resid.size)
    assert resid.std() == pytest.approx(s, rel=0.03)
    again = np.stack([p.activations for p in device.encode_many(x, RandomMasks(5), mask=keep)])
    assert not np.array_equal(again, sent)


def test_discrete_gaussian_matches_its_distribution():
    rng = np.random.default_rng(0)
    s = 3
    y = discrete_gaussian(np.arange(200_000), s, lambda c, d: rng.integers(0, d))
    support = np.arange(-15, 16)
    pmf = np.exp(-support.astype(float) ** 2 / (2 * s * s))
    pmf /= pmf.sum()
    counts = np.array([(y == v).sum() for v in support])
    assert counts.sum() == y.size  # nothing beyond 5 sigma in 200k draws
    stat = ((counts - y.size * pmf) ** 2 / (y.size * pmf))[np.abs(support) <= 10].sum()
    assert stat < stats.chi2.ppf(0.999, 20)
    keyed = index_discrete_gaussian(KEY, np.arange(4000), 200)
    assert abs(keyed.mean()) < 5 * 200 / math.sqrt(4000) and keyed.std() == pytest.approx(200, rel=0.05)


def test_fresh_noise_is_drawn_ahead_and_never_reused():
    """RandomMasks draws its exact samples ahead in batches: the requests' noise, in order, is that batch's
    stream (each sample used once, across a refill), and zero off the kept outputs."""
    from daonet.device.masks import LDP_POOL

    source, rng = RandomMasks(5), np.random.default_rng(5)
    s, x = 7, np.zeros((1, 3))
    wheres = [np.arange(50) % k == 0 for k in (1, 2, 3)] * (LDP_POOL // 90)
    got = [source.ldp_noise(x, w[None], 50, 0.0, s)[0] for w in wheres]
    sent = np.concatenate([g[w] for g, w in zip(got, wheres, strict=True)])
    assert sent.size > LDP_POOL  # crossed a refill
    stream = discrete_gaussian(np.arange(LDP_POOL), s, lambda c, d: rng.integers(0, d))
    stream = np.concatenate([stream, discrete_gaussian(np.arange(LDP_POOL), s, lambda c, d: rng.integers(0, d))])
    np.testing.assert_array_equal(sent, stream[: sent.size])
    assert all((g[~w] == 0).all() for g, w in zip(got, wheres, strict=True))


TEST_VECTOR = [-121, 215, 212, -134, -20, -71, -275, -47]  # index_discrete_gaussian(bytes 0..31, 0..7, 200)


def test_keyed_noise_one_output_at_a_time_equals_the_lock_step_sampler():
    """The keyed sampler runs each output alone in plain Python; the lock-step numpy sampler over the same byte
    streams is its reference: the same integers for any key, outputs and noise scale."""
    from daonet.device.masks import _ByteStreams, index_discrete_gaussian

    rng = np.random.default_rng(3)
    for s in (1, 2, 7, 183, 256):
        prk = rng.bytes(32)
        idx = np.sort(rng.choice(5000, size=200, replace=False))
        reference = discrete_gaussian(np.arange(idx.size), s, _ByteStreams(prk, idx).uniform)
        np.testing.assert_array_equal(index_discrete_gaussian(prk, idx, s), reference)
    assert index_discrete_gaussian(bytes(range(32)), np.arange(8), 200).tolist() == TEST_VECTOR


def test_discrete_gaussian_test_vector_in_both_runtimes():
    assert index_discrete_gaussian(KEY, np.arange(8), 200).tolist() == TEST_VECTOR
    # one coordinate's draws do not depend on the others: the same index gives the same value in any company
    assert index_discrete_gaussian(KEY, np.array([7, 3]), 200).tolist() == [TEST_VECTOR[7], TEST_VECTOR[3]]
    node = node_binary()
    if node is None:
        pytest.skip("Node.js >= 18 is not installed: the JS device runtime cannot run")
    script = (f"import {{ indexDiscreteGaussian }} from './{MODULE}';"
              "const k = Uint8Array.from({length: 32}, (_, i) => i);"
              "console.log(JSON.stringify(Array.from(indexDiscreteGaussian(k, [0,1,2,3,4,5,6,7], 200))));")
    out = subprocess.run([node, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60,
                         check=True)
    assert json.loads(out.stdout) == TEST_VECTOR


def test_keyed_replays_send_identical_bytes_and_similarity_masks_are_refused(ldp_run):
    result, device, _, _ = ldp_run
    x = result.dataset.x_test[0]
    masks = KeyedMasks(KEY, model_version=device.version)
    first, again = device.encode(x, masks).data, device.encode(x, masks).data
    assert first == again  # an exact replay reveals nothing new: K replays cost one request
    other = device.encode(result.dataset.x_test[1], masks).data
    assert other != first
    fresh = [device.encode(x, RandomMasks(i)).data for i in range(2)]
    assert fresh[0] != fresh[1]  # fresh noise: K requests of the same input compose (epsilon for K requests)
    with pytest.raises(InputError, match="near-duplicates would share noise"):
        device.encode(x, SimilarityKeyedMasks(KEY, model_version=device.version))


def test_certificate_reports_epsilon_not_the_algebra(ldp_run):
    result, device, _, _ = ldp_run
    spec = _spec(device)
    payload, cert = device.encode_certified(result.dataset.x_test[0], KeyedMasks(KEY, model_version=device.version))
    assert isinstance(cert, LdpCertificate)
    assert cert.epsilon == spec.epsilon and cert.delta == spec.delta and cert.k == payload.nnz and not cert.applies
    assert LDP_NOTE in cert.summary() and "epsilon = " in cert.summary()
    assert device.certify(result.dataset.x_test[0], payload.activations).to_dict()["epsilon"] == spec.epsilon
    from daonet.device.certificate import PrivacyPolicy
    with pytest.raises(InputError, match="would void the"):
        device.encode_certified(result.dataset.x_test[0], policy=PrivacyPolicy(max_revealed_energy=0.5))


def test_signed_wire_is_versioned_and_each_side_refuses_the_other():
    values = np.array([0.0, -1.5, 2.25, 0.0, -0.125], dtype=np.float32)
    data = encode(values, "v1x", wire_version=2)
    assert read_frame(data).wire_version == 2
    parsed = decode(data, wire_version=2)
    assert parsed.indices.tolist() == [1, 2, 4] and parsed.values.tolist() == [-1.5, 2.25, -0.125]
    with pytest.raises(MalformedPayloadError, match="wire format version 2 .* is not supported by this model"):
        decode(data)  # a v1 model (no LDP) refuses signed payloads
    with pytest.raises(MalformedPayloadError, match="wire format version 1 .* speaks version 2"):
        decode(encode(np.abs(values), "v1x"), wire_version=2)  # an LDP model refuses noise-free payloads
    with pytest.raises(DaonetError, match="are negative"):
        encode(values, "v1x")
    with pytest.raises(DaonetError, match="float32 values only"):
        encode(values, "v1x", "float16", wire_version=2)


def test_old_noise_manifests_load_and_bad_ldp_fields_are_named():
    old = NoiseSpec.from_json({"std": 0.3, "floor": 0.003, "relative_std": 0.25, "kind": "gaussian",
                               "applies_to": "surviving"})
    assert not old.ldp and old.to_json() == {"std": 0.3, "floor": 0.003, "relative_std": 0.25, "kind": "gaussian",
                                             "applies_to": "surviving"}
    good = ldp.noise_spec(ldp.LdpParams(2.0**-4, 200, 50), 1e-5)
    assert NoiseSpec.from_json(good).ldp
    with pytest.raises(ManifestError, match="is missing: noise of kind 'gaussian_ldp' needs it"):
        NoiseSpec.from_json({k: v for k, v in good.items() if k != "clip_steps"})
    with pytest.raises(ManifestError, match="the field 'floor' is missing"):
        NoiseSpec.from_json({"std": 0.3})


def test_training_options_are_checked():
    from daonet.nn import build_model

    arch = {"name": "mlp", "in_shape": [1, 8, 8], "n_classes": 10, "drop_rate": 0.5,
            "kwargs": {"hidden": 16, "ldp_epsilon": 4.0, "ldp_noise_multiplier": 1.0}}
    with pytest.raises(InputError, match="exactly one of"):
        build_model(arch)
    arch["kwargs"] = {"hidden": 16, "ldp_epsilon": -1}
    with pytest.raises(InputError, match="must be a positive number"):
        build_model(arch)
    arch["kwargs"] = {"hidden": 16, "ldp_noise_multiplier": 2.0, "ldp_clip": 1.5}
    model = build_model(arch)
    assert model.first.ldp is not None and model.first.ldp["clip"] == 1.5


def test_export_refuses_float16_for_ldp(ldp_run, tmp_path):
    result = ldp_run[0]
    with pytest.raises(DaonetError, match="exports with float32 values"):
        export_model(result.model, tmp_path / "b", model_id="x", classes=result.dataset.classes, raw_dtype="uint8",
                     value_dtype="float16")


def test_ldp_bundle_serves_on_a_real_server_and_predicts(ldp_run, start_server):
    from daonet.server.config import ServerConfig

    result, device, server, root = ldp_run
    url = start_server(ServerConfig(bundles=[root / "server"], max_batch_size=16, max_wait_ms=2.0)).url
    x = result.dataset.x_test[:40]
    with Client(url, root / "device", masks=KeyedMasks(KEY, model_version=device.version)) as client:
        preds = [client.predict(xi) for xi in x]
    payloads = device.encode_many(x, KeyedMasks(KEY, model_version=device.version))
    local = server.predict_proba([server.parse(p.data) for p in payloads]).argmax(1)
    assert [p.index for p in preds] == local.tolist()  # the server computed on exactly these signed payloads
    assert all(isinstance(p.certificate, LdpCertificate) for p in preds)


def test_quick_audit_runs_on_an_ldp_bundle(ldp_run):
    from daonet.audit import AuditConfig, run_audit

    result, _, _, root = ldp_run
    cfg = AuditConfig(dataset="digits", budget="quick", n_test=60, public_size=0, decoder_epochs=5,
                      decoder_patience=2, rmle_steps=50, rmle_tune_size=16, n_repeat=10, n_examples=2, seed=0)
    rep = run_audit(root, cfg, dataset=result.dataset, progress=False, log=lambda s: None).report
    assert rep.best_attack and rep.best_advantage is not None and math.isfinite(rep.best_advantage)
    means = [m.mean for a in rep.attacks.values() for m in a.metrics.values()]
    assert len(rep.attacks) >= 5 and means and all(math.isfinite(v) for v in means)  # negative values: no NaN


def test_audit_draws_the_mechanisms_releases_as_the_device_does(ldp_run):
    """The audit trains its attackers on fresh releases drawn on its side (the runtime's exact sampler costs minutes
    per MNIST epoch): same activations and clipping as the runtime, a fresh mask, N_Z(0, s^2) noise."""
    import torch

    from daonet.audit.core import _ldp_release_draws, discrete_gaussian_cdf

    result, device, _, _ = ldp_run
    spec = _spec(device)
    s, grid = int(spec.noise_steps or 0), float(spec.grid or 0)
    values, cdf = discrete_gaussian_cdf(s)
    pmf = np.exp(-values.astype(float) ** 2 / (2 * s * s))
    assert np.allclose(np.diff(cdf, prepend=0.0), pmf / pmf.sum())

    x = result.dataset.x_train
    draw = _ldp_release_draws(device, x, 7, torch.device("cpu"))
    h = draw(3, None).numpy()
    keep = np.random.default_rng(7 + 100 + 3).random(h.shape) >= device.drop_rate
    steps = h.astype(np.float64) / grid
    noise = steps - ldp_clip_steps(device.activations(x), keep, spec)
    assert np.array_equal(steps, np.rint(steps)) and not steps[~keep].any()
    runtime = device.drop(x, RandomMasks(1)).astype(np.float64) / grid
    assert abs((runtime != 0).mean() - (h != 0).mean()) < 0.02  # the same share kept
    for e in (noise[keep], runtime[runtime != 0] - ldp_clip_steps(device.activations(x), runtime != 0, spec)[
            runtime != 0]):
        assert abs(e.mean()) < 5 * s / math.sqrt(e.size) and e.std() == pytest.approx(s, rel=0.03)
    assert not np.array_equal(h, draw(4, None).numpy())  # fresh every epoch
    assert np.array_equal(draw(3, 100).numpy(), h[:100])
