"""The JavaScript device runtime (``daonet/web/daonet-device.mjs``) against the numpy one, run in real Node.

For real MNIST and ECG5000 test inputs and one device key, the JS payload bytes must equal the Python
payload bytes (KeyedMasks: the same HMAC stream), the activations agree to 1e-5 and the certificate to 1e-6;
bad inputs get the same messages; tampered, truncated or unsupported bundles are refused. The same holds for
a localized device block (dense, conv1d, conv2d, max pooling) and for noise on surviving values (keyed and
similarity-keyed noise bit for bit; fresh noise at the right scale); malformed blocks get Python's messages.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conformance.corpus import reseal_half

from daonet.device import DeviceModel
from daonet.device.certificate import PrivacyPolicy
from daonet.device.masks import KeyedMasks, SimilarityKeyedMasks

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "src" / "daonet" / "web" / "daonet-device.mjs"
RUNNER = ROOT / "tests" / "js" / "device_runner.mjs"
KEY = bytes.fromhex("5a" * 16 + "c3" * 16)


def node_binary() -> str | None:
    """Node >= 18 (fetch + WebCrypto), or None."""
    node = shutil.which("node")
    if node is None:
        return None
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        major = int(out.lstrip("v").split(".")[0])
    except ValueError:
        return None
    return node if major >= 18 else None


@pytest.fixture(scope="module")
def node() -> str:
    binary = node_binary()
    if binary is None:
        pytest.skip("Node.js >= 18 is not installed (apt-get install nodejs): the JS device runtime cannot run")
    return binary


def run_js(node: str, bundle: Path, cases: list[dict], key: bytes | None = KEY, time_s: float = 0.0,
           similarity: dict | None = None, server: str | None = None, extra: dict | None = None,
           timeout: float = 120) -> dict:
    job = {"module": str(MODULE), "bundle": str(bundle) if bundle else None, "key": key.hex() if key else None,
           "cases": cases, "similarity": similarity, "server": server, **(extra or {})}
    if time_s:
        job["time"] = time_s
    proc = subprocess.run([node, str(RUNNER)], input=json.dumps(job), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def case(x: np.ndarray, **kw) -> dict:
    return {"input": np.asarray(x).tolist(), "dtype": "uint8" if x.dtype == np.uint8 else "float32", **kw}


def _train_export(tmp: Path, name: str, dataset: str, model: str, n_train: int, raw_dtype: str = "float32",
                  value_dtype: str = "float32", privacy: dict | None = None, **cfg):
    import torch

    from daonet.exporting import export_model
    from daonet.train import TrainConfig, train

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(TrainConfig(dataset=dataset, model=model, epochs=1, n_train=n_train, n_test=64, **cfg),
                       progress=False)
    finally:
        torch.set_num_threads(saved)
    dev, _ = export_model(result.model, tmp / name, model_id=name, classes=result.dataset.classes,
                          raw_dtype=raw_dtype, value_dtype=value_dtype, privacy=privacy)
    return dev, result.dataset


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """Small real models on real MNIST / ECG5000, one per first-layer kind, with their test inputs."""
    tmp = tmp_path_factory.mktemp("js-parity")
    out = {}
    dev, ds = _train_export(tmp, "mnist-mlp", "mnist", "mlp", 1000, raw_dtype="uint8", drop_rate=0.5,
                            model_kwargs={"hidden": 128, "hidden2": 32})
    pixels = np.clip(np.rint(ds.x_test[:6] * 255), 0, 255).astype(np.uint8)  # what a phone holds
    out["dense"] = (dev, pixels)
    dev, _ = _train_export(tmp, "mnist-cnn-patch", "mnist", "cnn", 500, raw_dtype="uint8", drop_rate=0.5,
                           model_kwargs={"stem": 8, "patch": 4, "width": 8},
                           privacy={"max_revealed_energy": 0.5})
    out["conv2d-patchify"] = (dev, pixels[:4])
    dev, _ = _train_export(tmp, "mnist-cnn-overlap", "mnist", "cnn", 500, raw_dtype="uint8", drop_rate=0.9,
                           quantize_levels=8, value_dtype="float16",
                           model_kwargs={"stem": 2, "patch": 4, "stride": 3, "width": 8})
    out["conv2d-overlap-quantized-f16"] = (dev, pixels[:3])
    dev, ecg = _train_export(tmp, "ecg-cnn1d-patch", "ecg5000", "cnn1d", 300, drop_rate=0.5,
                             model_kwargs={"stem": 8, "patch": 4, "width": 8})
    signals = ecg.x_test[:6].astype(np.float32)
    out["conv1d-patchify"] = (dev, signals)
    dev, _ = _train_export(tmp, "ecg-cnn1d-overlap", "ecg5000", "cnn1d", 300, drop_rate=0.8,
                           model_kwargs={"stem": 4, "patch": 6, "stride": 2, "width": 8},
                           privacy={"max_revealed_energy": 0.2})
    out["conv1d-overlap"] = (dev, signals[:4])
    return out


KINDS = ["dense", "conv2d-patchify", "conv2d-overlap-quantized-f16", "conv1d-patchify", "conv1d-overlap"]


@pytest.mark.parametrize("kind", KINDS)
def test_js_payload_bytes_equal_python(node, bundles, kind):
    bundle, xs = bundles[kind]
    device = DeviceModel.load(bundle)
    js = run_js(node, bundle, [case(x) for x in xs])
    assert "load_error" not in js, js
    masks = KeyedMasks(KEY, model_version=device.version)
    sent_total = 0
    for x, got in zip(xs, js["results"], strict=True):
        assert "error" not in got, got
        payload, cert = device.encode_certified(x, masks)
        assert got["payload"] == payload.data.hex(), f"{kind}: JS payload differs from Python's"
        np.testing.assert_allclose(np.asarray(got["activations"], np.float32), device.activations(x)[0], atol=1e-5)
        c = got["certificate"]
        for field in ("k", "n", "rank", "identifiable", "k_before_policy", "dropped_by_policy", "policy_ok"):
            assert c[field] == getattr(cert, field), (kind, field, c[field], getattr(cert, field))
        assert abs(c["revealed_energy"] - cert.revealed_energy) <= 1e-6
        assert abs(c["max_leverage"] - cert.max_leverage) <= 1e-6
        if cert.worst_patch is not None:
            assert c["worst_patch"]["index"] == cert.worst_patch["index"]
            assert abs(c["worst_patch"]["revealed_energy"] - cert.worst_patch["revealed_energy"]) <= 1e-6
        sent_total += payload.nnz
    assert sent_total > 0  # something was actually compared


def test_js_certificate_of_explicit_masks_and_policy_drops(node, bundles):
    """Many random masks on the dense model: the policy path (greedy further dropping) agrees too.

    The energy bound is derived from the energies these very requests reveal (half the largest), so the policy
    must drop on at least one of them whatever the trained weights are."""
    bundle, xs = bundles["dense"]
    device = DeviceModel.load(bundle)
    rng = np.random.default_rng(3)
    masks = [rng.random(device.n_outputs) >= rate for rate in (0.0, 0.3, 0.95) for _ in range(3)]
    inputs = [xs[i % len(xs)] for i in range(len(masks))]
    free = PrivacyPolicy(max_revealed_energy=None)
    energies = [device.encode_certified(x, mask=m, policy=free)[1].revealed_energy
                for x, m in zip(inputs, masks, strict=True)]
    assert max(energies) > 0, "every request revealed nothing: the bound below could not bind"
    bound = 0.5 * max(energies)
    for policy, spec in ((free, None), (PrivacyPolicy(max_revealed_energy=bound), {"max_revealed_energy": bound})):
        cases = [case(x, mask=m.astype(int).tolist(), policy=spec) for x, m in zip(inputs, masks, strict=True)]
        js = run_js(node, bundle, cases)
        dropped = 0
        for x, m, got in zip(inputs, masks, js["results"], strict=True):
            assert "error" not in got, got
            payload, cert = device.encode_certified(x, mask=m, policy=policy)
            assert got["payload"] == payload.data.hex()
            assert abs(got["certificate"]["revealed_energy"] - cert.revealed_energy) <= 1e-6
            assert got["certificate"]["dropped_by_policy"] == cert.dropped_by_policy
            dropped += cert.dropped_by_policy
        if spec is not None:
            assert dropped > 0, "the bound is below the largest energy observed: the policy must have dropped"
    # the conv1d-overlap bundle carries an energy bound in its manifest: the JS runtime applies it alike
    bundle, sig = bundles["conv1d-overlap"]
    device = DeviceModel.load(bundle)
    keyed = KeyedMasks(KEY, model_version=device.version)
    js = run_js(node, bundle, [case(x) for x in sig])
    for x, got in zip(sig, js["results"], strict=True):
        payload, cert = device.encode_certified(x, keyed)
        assert got["payload"] == payload.data.hex()
        assert got["certificate"]["dropped_by_policy"] == cert.dropped_by_policy


def test_js_tall_overlapping_system_certificate_and_policy_equal_python(node, bundles):
    """Every output of the overlapping conv1d kept: about as many equations as the signal has values, more on some
    requests (as a FordA-length layer at p = 0.5). Both runtimes prove full rank from ``AᵀA`` where there are more
    (every value identifiable), then the policy's greedy chooses which rows to keep (in the JavaScript runtime's
    SIMD kernel at this size, and in plain JavaScript: the same bits): the same outputs, bytes and certificate,
    with and without an energy bound; with one receptive field's outputs dropped too, the uncovered values stay
    outside the row space."""
    bundle, sig = bundles["conv1d-overlap"]
    device = DeviceModel.load(bundle)
    system = device.system
    assert device.n_outputs > system.n  # a tall system when everything is kept
    _, pos = system.split(np.arange(device.n_outputs))
    everything = np.ones(device.n_outputs, dtype=bool)
    hole = everything & (pos != 3)
    policies = ((None, device.policy), ({"max_revealed_energy": 0.3}, PrivacyPolicy(max_revealed_energy=0.3)),
                ({"max_revealed_energy": None}, PrivacyPolicy(max_revealed_energy=None)))
    for spec, policy in policies:
        inputs = [sig[i % len(sig)] for i in range(4)]
        masks = [everything, everything, hole, hole]
        cases = [case(x, mask=m.astype(int).tolist(), policy=spec) for x, m in zip(inputs, masks, strict=True)]
        js = run_js(node, bundle, cases)
        plain = run_js(node, bundle, cases, extra={"no_simd": True})  # the greedy's loops without the kernel
        assert not plain["simd"]
        assert [(r["payload"], r["certificate"]) for r in plain["results"]] == \
               [(r["payload"], r["certificate"]) for r in js["results"]]  # the same bits
        for x, m, got in zip(inputs, masks, js["results"], strict=True):
            assert "error" not in got, got
            payload, cert = device.encode_certified(x, mask=m, policy=policy)
            assert got["payload"] == payload.data.hex()
            c = got["certificate"]
            for field in ("k", "rank", "identifiable", "k_before_policy", "dropped_by_policy", "policy_ok"):
                assert c[field] == getattr(cert, field), (spec, field)
            assert abs(c["revealed_energy"] - cert.revealed_energy) <= 1e-6
            assert cert.dropped_by_policy > 0  # the full system identifies every value: the policy had to act


@pytest.mark.parametrize("kind", ["dense", "conv2d-patchify", "conv1d-overlap"])
def test_js_encode_many_equals_numpy_bytes(node, bundles, kind):
    """A buffered batch (typed arrays, or one nested batch) gives numpy's ``encode_many(_certified)`` bytes,
    which are the one-by-one bytes; a mask list of the wrong length is refused."""
    bundle, xs = bundles[kind]
    device = DeviceModel.load(bundle)
    masks = KeyedMasks(KEY, model_version=device.version)
    batch = run_js(node, bundle, [case(x) for x in xs], extra={"batch": True})["batch"]
    certified = [p.data.hex() for p, _ in device.encode_many_certified(xs, masks)]
    assert certified == [device.encode_certified(x, masks)[0].data.hex() for x in xs]
    assert batch["list"] == certified and batch["nested"] == certified
    assert batch["uncertified"] == [p.data.hex() for p in device.encode_many(xs, masks)]
    assert batch["bad_mask"]["error"] == "InputError" and "one keep-mask per input" in batch["bad_mask"]["message"]


@pytest.mark.parametrize("kind", ["dense", "conv2d-overlap-quantized-f16"])
def test_js_wasm_simd_and_plain_js_give_the_same_bits(node, bundles, kind):
    """The WebAssembly SIMD kernels of the dense certificate and the plain-JS path (``useWasmSimd(false)``, what an
    engine without SIMD runs) send the same bytes with the same certificates, to the last bit, and numpy's bytes;
    explicit masks make k vary (0, 1, 2 or 3 rows past a tile of 4; almost every output kept)."""
    bundle, xs = bundles[kind]
    device = DeviceModel.load(bundle)
    rng = np.random.default_rng(5)
    masks = [rng.random(device.n_outputs) >= rate for rate in (0.0, 0.3, 0.6, 0.9) for _ in range(2)]
    inputs = [xs[i % len(xs)] for i in range(len(masks))]
    cases = [case(x) for x in xs] + [case(x, mask=m.astype(int).tolist()) for x, m in zip(inputs, masks, strict=True)]
    simd = run_js(node, bundle, cases)
    plain = run_js(node, bundle, cases, extra={"no_simd": True})
    assert simd["simd"] is True and plain["simd"] is False
    assert all("error" not in r for r in simd["results"]), simd["results"]
    assert simd["results"] == plain["results"]
    keyed = KeyedMasks(KEY, model_version=device.version)
    expected = [device.encode_certified(x, keyed)[0].data.hex() for x in xs]
    expected += [device.encode_certified(x, mask=m)[0].data.hex() for x, m in zip(inputs, masks, strict=True)]
    assert [r["payload"] for r in simd["results"]] == expected


@pytest.mark.parametrize("kind", ["dense", "conv1d-patchify"])
def test_js_similarity_keyed_masks_equal_python(node, bundles, kind):
    """Near-duplicate-safe masks: same cells, same HMAC stream, same bytes; a re-capture with sensor noise
    keeps (most of) its mask in both runtimes alike."""
    bundle, xs = bundles[kind]
    device = DeviceModel.load(bundle)
    settings = {"width": 0.5, "groups": 16, "dims": 2}
    rng = np.random.default_rng(0)
    if xs.dtype == np.uint8:
        noisy = np.clip(xs.astype(int) + rng.integers(-2, 3, xs.shape), 0, 255).astype(np.uint8)
    else:
        noisy = (xs + rng.normal(0, 0.01, xs.shape)).astype(np.float32)
    inputs = [*xs[:3], *noisy[:3]]
    js = run_js(node, bundle, [case(x, mask=None) for x in inputs], similarity=settings)
    masks = SimilarityKeyedMasks(KEY, model_version=device.version, **settings)
    for x, got in zip(inputs, js["results"], strict=True):
        assert "error" not in got, got
        payload, _ = device.encode_certified(x, masks)
        assert got["payload"] == payload.data.hex()


def test_js_validation_messages_match_python(node, bundles):
    from daonet.errors import InputError

    bundle, xs = bundles["dense"]
    device = DeviceModel.load(bundle)
    bad = [
        {"input": [1.0, 2.0, 3.0], "dtype": "float32"},
        {"input": ["nan"] * 784, "dtype": "float32"},
        {"input": [2.0] * 784, "dtype": "float32"},
        {"input": [3] * 784, "dtype": "int32"},
        {"input": [0] * 784, "dtype": "float32", "shape": [2, 392]},
    ]
    py_inputs = [np.float32([1, 2, 3]), np.full(784, np.nan, np.float32), np.full(784, 2.0, np.float32),
                 np.full(784, 3, np.int32), np.zeros((2, 392), np.float32)]
    js = run_js(node, bundle, bad)
    for x, got in zip(py_inputs, js["results"], strict=True):
        with pytest.raises(InputError) as err:
            device.encode(x)
        assert got["error"] == "InputError"
        assert got["message"] == str(err.value)


def _copy(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst)
    return dst


def test_js_refuses_tampered_truncated_and_unsupported_bundles(node, bundles, tmp_path):
    bundle, xs = bundles["dense"]
    tampered = _copy(bundle, tmp_path / "tampered")
    weights = tampered / "first_layer.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-7] ^= 0x10
    weights.write_bytes(bytes(raw))
    err = run_js(node, tampered, [])["load_error"]
    assert err["error"] == "BundleError" and "does not match its manifest" in err["message"]

    truncated = _copy(bundle, tmp_path / "truncated")
    weights = truncated / "first_layer.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert "modified or truncated" in run_js(node, truncated, [])["load_error"]["message"]

    deeper = _copy(bundle, tmp_path / "deeper")
    manifest = json.loads((deeper / "manifest.json").read_text())
    manifest["layer"]["block"] = [{"kind": "dense", "out": 64}]
    (deeper / "manifest.json").write_text(json.dumps(manifest))
    err = run_js(node, deeper, [])["load_error"]
    assert err["error"] == "ManifestError" and "layer.block[0]: the field 'op' is missing" in err["message"]

    missing = run_js(node, tmp_path / "nowhere", [])["load_error"]
    assert "missing" in missing["message"]


def test_js_client_checks_the_server_then_predicts_like_python(node, server_url, serve_digits_run,
                                                               serve_digits_bundle, tmp_path):
    from daonet.device import Client

    device = DeviceModel.load(serve_digits_bundle.device)
    pixels = np.rint(serve_digits_run.dataset.x_test[:3] * 255).astype(np.uint8).reshape(-1, *device.input_shape)
    js = run_js(node, serve_digits_bundle.device, [case(x) for x in pixels], server=server_url)
    with Client(server_url, device, masks=KeyedMasks(KEY, model_version=device.version)) as client:
        for x, got in zip(pixels, js["answers"], strict=True):
            expected = client.predict(x)
            assert got["payload"] == expected.payload.data.hex() and got["bytesSent"] == expected.payload_bytes
            assert got["label"] == expected.label
            np.testing.assert_allclose(got["probabilities"], expected.probabilities, atol=1e-6)

    # a device half of another version (sealed against another server half): it loads, the server refuses it
    stale = _copy(serve_digits_bundle.device, tmp_path / "stale")
    version = reseal_half(stale, pair_digest="ab" * 32)
    got = run_js(node, stale, [case(pixels[0])], server=server_url)["answers"][0]
    assert got["error"] == "VersionMismatchError" and version in got["message"]


def test_js_random_masks_drop_at_the_manifest_rate(node, bundles):
    """Without a key the JS runtime draws fresh masks from crypto.getRandomValues: valid, different each time."""
    from daonet.wire import decode

    bundle, xs = bundles["dense"]
    device = DeviceModel.load(bundle)
    cases = [case(xs[0], certify=False) for _ in range(20)]
    results = run_js(node, bundle, cases, key=None)["results"]
    positive = int((device.activations(xs[0])[0] > 0).sum())
    kept = [decode(bytes.fromhex(r["payload"]), expected_outputs=device.n_outputs).nnz for r in results]
    assert len({r["payload"] for r in results}) > 15  # fresh randomness per request
    assert abs(np.mean(kept) / positive - (1 - device.drop_rate)) < 0.1


# -- a localized device block and noise on surviving values -------------------------------------------------
SIMILARITY = {"width": 0.5, "groups": 16, "dims": 2}


@pytest.fixture(scope="module")
def block_bundles(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """Tiny real models (1 epoch on small MNIST / ECG5000 subsets) with a device block and/or noise."""
    tmp = tmp_path_factory.mktemp("js-block")
    out = {}
    dev, ds = _train_export(tmp, "mnist-mlp-block2", "mnist", "mlp", 500, raw_dtype="uint8", drop_rate=0.5,
                            device_layers=2, model_kwargs={"hidden": 64, "hidden2": 32})
    pixels = np.clip(np.rint(ds.x_test[:4] * 255), 0, 255).astype(np.uint8)
    out["dense-block2"] = (dev, pixels)
    dev, ecg = _train_export(tmp, "ecg-cnn1d-block2-pool", "ecg5000", "cnn1d", 300, drop_rate=0.5, device_layers=2,
                             device_pool=2, model_kwargs={"stem": 8, "patch": 4, "width": 8})
    out["conv1d-block2-pool"] = (dev, ecg.x_test[:4].astype(np.float32))
    dev, _ = _train_export(tmp, "mnist-cnn-block2-pool-noise", "mnist", "cnn", 300, raw_dtype="uint8",
                           value_dtype="float16", drop_rate=0.5, device_layers=2, device_pool=2, noise_std=0.3,
                           model_kwargs={"stem": 6, "patch": 4, "width": 8})
    out["conv2d-block2-pool-noise-f16"] = (dev, pixels[:3])
    dev, _ = _train_export(tmp, "mnist-mlp-noise", "mnist", "mlp", 500, raw_dtype="uint8", drop_rate=0.5,
                           noise_std=0.3, privacy={"max_revealed_energy": 0.5},
                           model_kwargs={"hidden": 128, "hidden2": 32})
    out["dense-noise-policy"] = (dev, pixels)
    return out


BLOCK_KINDS = ["dense-block2", "conv1d-block2-pool", "conv2d-block2-pool-noise-f16", "dense-noise-policy"]


@pytest.mark.parametrize("kind", BLOCK_KINDS)
def test_js_block_and_noise_payload_bytes_equal_python(node, block_bundles, kind):
    """Keyed and similarity-keyed masks (and their noise): the JS payload is byte-identical to numpy's."""
    bundle, xs = block_bundles[kind]
    device = DeviceModel.load(bundle)
    assert device.is_linear == (not device.block) and (bool(device.block) or device.noise is not None)
    for similarity in (None, SIMILARITY):
        js = run_js(node, bundle, [case(x) for x in xs], similarity=similarity)
        assert "load_error" not in js, js
        masks = (SimilarityKeyedMasks(KEY, model_version=device.version, **similarity) if similarity
                 else KeyedMasks(KEY, model_version=device.version))
        noisy = 0
        for x, got in zip(xs, js["results"], strict=True):
            assert "error" not in got, got
            payload, cert = device.encode_certified(x, masks)
            assert payload.nnz > 0
            assert got["payload"] == payload.data.hex(), f"{kind}: JS payload differs from Python's"
            clean = device.activations(x)[0]
            np.testing.assert_allclose(np.asarray(got["activations"], np.float32), clean, atol=1e-5)
            sent = payload.activations
            noisy += int((sent[sent > 0] != clean[sent > 0]).sum())
            c = got["certificate"]
            if device.block:
                assert {k: c[k] for k in ("k", "n", "n_outputs", "applies", "note", "block")} == cert.to_dict()
            else:
                assert c["exact"] is False and c["note"] == cert.note and c["k"] == cert.k
                assert c["dropped_by_policy"] == cert.dropped_by_policy
                assert abs(c["revealed_energy"] - cert.revealed_energy) <= 1e-6
        assert (noisy > 0) == (device.noise is not None)  # noise was really added (and only with noise)


def test_js_block_pool_and_gaussian_mechanism_payload_bytes_equal_python(node, tmp_path):
    """The shape of a least-leakage head: a 2-layer conv1d block, max pooling and the Gaussian mechanism (noise
    on every kept output, keyed): the JS payload is byte-identical to numpy's, and the noise was really added."""
    bundle, ecg = _train_export(tmp_path, "ecg-cnn1d-block2-pool-ldp", "ecg5000", "cnn1d", 300, drop_rate=0.0,
                                device_layers=2, device_pool=2,
                                model_kwargs={"stem": 8, "patch": 4, "width": 8, "ldp_epsilon": 64.0})
    device = DeviceModel.load(bundle)
    assert device.block and device.ldp is not None
    xs = ecg.x_test[:4].astype(np.float32)
    js = run_js(node, bundle, [case(x) for x in xs])
    assert "load_error" not in js, js
    masks = KeyedMasks(KEY, model_version=device.version)
    for x, got in zip(xs, js["results"], strict=True):
        assert "error" not in got, got
        payload, _ = device.encode_certified(x, masks)
        assert got["payload"] == payload.data.hex(), "JS payload differs from Python's"
        clean = device.activations(x)[0]
        assert payload.nnz > 0 and not np.allclose(payload.activations, clean)


def test_js_keyed_noise_matches_the_documented_test_vector(node):
    """docs/masks.md's test vector of the keyed noise derivation, in Python and in JS."""
    from daonet.device.masks import index_noise

    prk, indices = bytes(range(32)), [0, 1, 2, 1000, 2**32 - 1]
    expected = [0.1979827880859375, 0.9514007568359375, -0.471160888671875, 1.0903472900390625, -0.892059326171875]
    assert index_noise(prk, np.asarray(indices)).tolist() == expected
    assert run_js(node, None, [], extra={"index_noise": {"prk": prk.hex(), "indices": indices}})["noise"] == expected
    doc = (ROOT / "docs" / "masks.md").read_text()
    assert all(repr(v) in doc for v in expected)


def test_js_fresh_noise_has_the_right_scale(node, block_bundles):
    """Without a key the noise comes from crypto.getRandomValues: standard normal, scaled by the manifest's
    std, fresh for every request."""
    e = np.asarray(run_js(node, None, [], extra={"fresh_noise": 20000})["noise"])
    assert abs(e.mean()) < 0.04 and e.std() == pytest.approx(1.0, abs=0.03)
    assert np.mean(np.abs(e) > 1.96) == pytest.approx(0.05, abs=0.01)  # Gaussian tails
    bundle, xs = block_bundles["dense-noise-policy"]
    device = DeviceModel.load(bundle)
    keep = np.ones(device.n_outputs, dtype=int).tolist()
    results = run_js(node, bundle, [case(x, mask=keep, certify=False) for x in xs for _ in range(24)],
                     key=None)["results"]
    clean = np.stack([np.asarray(r["activations"], np.float64) for r in results])
    sent = np.stack([np.asarray(r["sent"], np.float64) for r in results])
    assert np.array_equal(sent > 0, clean > 0)  # noise never adds or removes an output
    assert sent[sent > 0].min() >= np.float32(device.noise.floor)
    far = clean > 5 * device.noise.std  # the floor (almost) never bites: the residual is the noise itself
    resid = (sent - clean)[far] / device.noise.std
    assert far.sum() > 600  # the std of the residual's estimate is then below 0.03: 0.15 is > 5 of them
    assert abs(resid.mean()) < 5 / np.sqrt(far.sum()) and resid.std() == pytest.approx(1.0, abs=0.15)
    assert resid.std() == pytest.approx(np.std(e), abs=0.15)  # the same scale as the raw draws
    assert len({r["payload"] for r in results}) == len(results)  # fresh noise for every request


def _block_manifest_cases(manifest: dict) -> list[tuple[str, dict]]:
    """Malformed variants of a conv1d block + maxpool manifest (steps [conv1d, maxpool])."""
    import copy

    out = []

    def variant(name, edit):
        m = copy.deepcopy(manifest)
        edit(m)
        out.append((name, m))

    block = manifest["layer"]["block"]
    assert [s["op"] for s in block] == ["conv1d", "maxpool"]
    variant("pool size 1", lambda m: m["layer"]["block"][1].update(size=1))
    variant("2-d kernel", lambda m: m["layer"]["block"][0].update(kernel=[3, 3]))
    variant("unknown op", lambda m: m["layer"]["block"][1].update(op="avgpool"))
    variant("no op", lambda m: m["layer"]["block"][0].pop("op"))
    variant("conv2d after conv1d", lambda m: m["layer"]["block"][0].update(op="conv2d", kernel=[3, 3], stride=[1, 1],
                                                                            padding=[1, 1]))
    variant("no weight name", lambda m: m["layer"]["block"][0].pop("weight"))
    variant("negative padding", lambda m: m["layer"]["block"][0].update(padding=[-1]))
    variant("zero stride", lambda m: m["layer"]["block"][0].update(stride=[0]))
    variant("wrong n_in", lambda m: m["layer"]["block"][0].update(n_in=block[0]["n_in"] + 1))
    variant("other activation", lambda m: m["layer"]["block"][0].update(activation="tanh"))
    variant("pool too large", lambda m: m["layer"]["block"][1].update(size=10**4))
    variant("no first shape", lambda m: m["layer"].pop("first_output_shape"))
    variant("kernel too large", lambda m: m["layer"]["block"][0].update(kernel=[10**4], padding=[0]))
    variant("missing tensor", lambda m: m["layer"]["block"][0].update(weight="block.9.weight"))
    variant("energy bound", lambda m: m.update(privacy={"max_revealed_energy": 0.3}))
    variant("noise kind", lambda m: m.update(noise={"kind": "laplace", "std": 1.0, "floor": 0.01}))
    variant("noise floor", lambda m: m.update(noise={"kind": "gaussian", "std": 1.0, "floor": 0.0}))
    variant("noise std", lambda m: m.update(noise={"kind": "gaussian", "floor": 0.01}))

    def wrong_output(m):
        m["layer"]["output_shape"] = [m["layer"]["output_shape"][0], 3]
        m["layer"]["n_outputs"] = 3 * m["layer"]["output_shape"][0]
    variant("wrong output shape", wrong_output)
    return out


def test_js_refuses_malformed_blocks_and_noise_with_pythons_messages(node, block_bundles, tmp_path):
    from daonet.errors import BundleError

    bundle, _ = block_bundles["conv1d-block2-pool"]
    device = DeviceModel.load(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name, bad in _block_manifest_cases(manifest):
        with pytest.raises(BundleError) as err:
            DeviceModel(bad, device.weight, device.bias, device.extras)
        expected = str(err.value).split("device manifest.", 1)[-1]
        copy = _copy(bundle, tmp_path / name.replace(" ", "-"))
        (copy / "manifest.json").write_text(json.dumps(bad))
        reseal_half(copy)  # a version that follows from the edited content: only the checks under test refuse it
        got = run_js(node, copy, [])["load_error"]
        assert got["error"] == type(err.value).__name__, (name, got)
        assert got["message"].endswith(expected), (name, got["message"], expected)

    unknown = _copy(bundle, tmp_path / "unknown-step-field")  # a newer step field: refused, not ignored
    manifest["layer"]["block"][0]["dilation"] = [2]
    (unknown / "manifest.json").write_text(json.dumps(manifest))
    err = run_js(node, unknown, [])["load_error"]
    assert "layer.block[0].dilation" in err["message"] and "does not support" in err["message"]


def test_js_block_refuses_an_energy_policy_and_has_no_equations(node, block_bundles):
    """A revealed-energy policy passed at encode time is refused for a block, as in Python."""
    from daonet.errors import InputError

    bundle, xs = block_bundles["dense-block2"]
    device = DeviceModel.load(bundle)
    with pytest.raises(InputError) as err:
        device.encode_certified(xs[0], KeyedMasks(KEY, model_version=device.version),
                                policy=PrivacyPolicy(max_revealed_energy=0.5))
    js = run_js(node, None, [], extra={"policy_probe": {"bundle": str(bundle), "input": xs[0].tolist(),
                                                        "max_revealed_energy": 0.5}})
    assert js["policy_probe"] == {"error": "InputError", "message": str(err.value)}


def test_npm_package_packs_installs_offline_and_encodes_like_numpy(node, tmp_path):
    """``npm pack`` of src/daonet/web ships the module, its type declarations and package.json only; the tarball
    installs into a fresh project without a registry, imports by its package name, verifies the shipped signed
    ECG default with the project key and encodes numpy's bytes. The declarations name every export."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed (apt-get install npm): the package cannot be packed")
    from daonet.data import load_dataset
    from daonet.defaults import PROJECT_PUBLIC_KEY, default_bundle

    web = MODULE.parent
    cache = tmp_path / "npm-cache"  # never the user's ~/.npm, never the network
    packed = subprocess.run([npm, "pack", "--json", "--pack-destination", str(tmp_path), "--cache", str(cache)],
                            cwd=web, capture_output=True, text=True, timeout=120)
    assert packed.returncode == 0, packed.stderr
    info = json.loads(packed.stdout)[0]
    assert info["name"] == "daonet-device"
    assert {f["path"] for f in info["files"]} == {"daonet-device.mjs", "daonet-device.d.ts", "package.json"}
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text(json.dumps({"name": "app", "private": True, "type": "module"}))
    installed = subprocess.run([npm, "install", "--offline", "--no-audit", "--no-fund", "--ignore-scripts", "--cache",
                                str(cache), str(tmp_path / info["filename"])], cwd=app, capture_output=True,
                               text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    bundle = default_bundle("ecg5000").root / "device"
    x = load_dataset("ecg5000").x_test[0].astype(np.float32)
    script = app / "encode.mjs"
    script.write_text(f"""
import * as dn from "daonet-device";
const keys = [{json.dumps(str(PROJECT_PUBLIC_KEY))}];
const device = await dn.loadDevice({json.dumps(str(bundle))}, {{ publicKeys: keys }});
const masks = new dn.KeyedMasks(Uint8Array.from({json.dumps(list(KEY))}), device.version);
const x = Float32Array.from({json.dumps(x.ravel().tolist())});
const [one] = await device.encodeMany([x], {{ masks }});
process.stdout.write(JSON.stringify({{ exports: Object.keys(dn), payload: Buffer.from(one.data).toString("hex") }}));
""")
    ran = subprocess.run([node, str(script)], cwd=app, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    got = json.loads(ran.stdout)
    device = DeviceModel.load(bundle, public_keys=[PROJECT_PUBLIC_KEY])
    assert got["payload"] == device.encode_certified(x, KeyedMasks(KEY, model_version=device.version))[0].data.hex()
    declared = (web / "daonet-device.d.ts").read_text()
    missing = [name for name in got["exports"]
               if not re.search(rf"export declare (?:class|function|const) {name}\b", declared)]
    assert not missing, f"daonet-device.d.ts does not declare {missing}"
