"""The homomorphic-encryption baseline computes what the plaintext model computes, and measures itself.

Tolerance: CKKS at scale 2**40 with a 49-bit last prime decrypts these logits to ~1e-5..6e-5 absolute
(measured; logits up to ~35). An absolute 1e-3 is >15x looser than that, yet >10x tighter than the
1.25e-2 error of the tutorial's bias-after-matmul recipe (measured on the 784-128-10 model) that this
module avoids, so it catches a regression of that kind as well as a wrong parameter set.
"""

from __future__ import annotations

import pytest

from daonet.bench import he
from daonet.data import load_dataset
from daonet.errors import DaonetError

HIDDEN = 32


@pytest.fixture(scope="module")
def tenseal():
    return pytest.importorskip("tenseal", reason="TenSEAL is optional: pip install 'daonet[bench]'")


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


@pytest.fixture(scope="module")
def bench(tenseal, mnist, tmp_path_factory):
    cache = tmp_path_factory.mktemp("he-cache")
    return he.run_he_benchmark(2, hidden=HIDDEN, epochs=1, seed=0, progress=False, cache_dir=cache,
                               n_train=6000, ds=mnist), cache


@pytest.mark.slow
def test_he_matches_plaintext_on_real_mnist(bench):
    res, _ = bench
    assert res["max_abs_logit_diff"] < 1e-3
    assert res["agreement"] == 1.0
    for s in res["samples"]:
        assert s["he_pred"] == s["plain_pred"]
    assert res["he_accuracy"] == res["plain_accuracy"]
    # 1 epoch on 6000 images: a working model, not a broken one
    assert res["plain_accuracy_full_test"] > 0.85


@pytest.mark.slow
def test_he_result_fields_are_measured(bench):
    res, _ = bench
    assert res["n_images"] == 2 and len(res["samples"]) == 2
    for key in ("keygen_s", "server_setup_s", "public_context_serialize_s"):
        assert res[key] > 0, key
    for key in ("encrypt_s", "server_eval_s", "decrypt_s", "device_compute_s"):
        st = res[key]
        assert 0 < st["min"] <= st["p50"] <= st["p99"] <= st["max"], key
    # a ciphertext of 785 values is far larger than the 784 float32 pixels (3136 bytes) it hides
    assert res["bytes_up_per_sample"] > 3136
    assert 0 < res["bytes_down_per_sample"] < res["bytes_up_per_sample"]  # fewer moduli left after 3 rescales
    assert res["setup_bytes"] > res["bytes_up_per_sample"]  # Galois keys dominate
    mem = res["memory"]
    assert mem["method"] and all(mem[k] >= 0 for k in mem if k.endswith("_bytes"))
    assert res["training"]["cached"] is False and res["training"]["seconds"] > 0
    cfg = res["config"]
    assert cfg["hidden"] == HIDDEN and cfg["he"]["poly_modulus_degree"] == 8192
    assert cfg["he"]["coeff_mod_bit_sizes"] == [49, 40, 40, 40, 49]
    for key in ("plain_accuracy", "he_accuracy", "agreement"):
        assert 0.0 <= res[key] <= 1.0


@pytest.mark.slow
def test_weights_are_cached_and_reloaded(bench, mnist):
    _, cache = bench
    model, info = he.HEMLP.load_or_train(mnist, hidden=HIDDEN, epochs=1, seed=0, n_train=6000, cache_dir=cache)
    assert info["cached"] is True and info["path"].endswith(".safetensors")
    assert model.hidden == HIDDEN and model.w1.shape == (HIDDEN, 784)


@pytest.mark.slow
def test_server_context_cannot_decrypt(tenseal, mnist, bench):
    _, cache = bench
    model, _ = he.HEMLP.load_or_train(mnist, hidden=HIDDEN, epochs=1, seed=0, n_train=6000, cache_dir=cache)
    client = he.HEClient()
    server = he.HEServer(client.public_context(), model)
    assert not server.context.is_private() and not server.context.has_secret_key()
    # what the server receives, it cannot read (a full evaluation is checked against plaintext above)
    on_server = tenseal.ckks_vector_from(server.context, client.encrypt(mnist.x_test[0]))
    with pytest.raises(ValueError):
        on_server.decrypt()
    # the device still can
    assert tenseal.ckks_vector_from(client.context, client.encrypt(mnist.x_test[0])).size() == 785


@pytest.mark.slow
def test_server_refuses_private_context(tenseal, mnist, bench):
    _, cache = bench
    model, _ = he.HEMLP.load_or_train(mnist, hidden=HIDDEN, epochs=1, seed=0, n_train=6000, cache_dir=cache)
    client = he.HEClient()
    with pytest.raises(DaonetError, match="secret key"):
        he.HEServer(client.context.serialize(save_secret_key=True), model)


def test_missing_tenseal_raises_daonet_error(monkeypatch):
    monkeypatch.setattr(he, "ts", None)
    with pytest.raises(DaonetError, match="pip install 'daonet\\[bench\\]'"):
        he.HEClient()
    with pytest.raises(DaonetError, match="TenSEAL is not installed"):
        he.run_he_benchmark(1, progress=False)
