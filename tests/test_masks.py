"""Replay-safe keyed masks: same input -> same payload bytes, other key -> other mask, rate == p."""

from __future__ import annotations

import math
import os
import stat

import numpy as np
import pytest
import torch

from daonet.data import load_dataset
from daonet.device.masks import KeyedMasks, RandomMasks, load_or_create_key
from daonet.device.runtime import DeviceModel
from daonet.errors import InputError
from daonet.exporting import export_model
from daonet.train import TrainConfig, train

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    ds = load_dataset("digits")
    res = train(TrainConfig(dataset="digits", model="mlp", drop_rate=0.5, epochs=1,
                            model_kwargs={"hidden": 64, "hidden2": 16}), ds=ds, progress=False)
    torch.set_num_threads(old)
    path = tmp_path_factory.mktemp("bundle")
    export_model(res.model, path, model_id="digits-mlp", classes=ds.classes, raw_dtype="uint8")
    return DeviceModel.load(path / "device"), ds


def test_same_input_same_payload_bytes(device):
    dev, ds = device
    masks = KeyedMasks(key=KEY_A, model_version=dev.version)
    x = ds.x_test[0]
    first = dev.encode(x, masks).data
    assert all(dev.encode(x, masks).data == first for _ in range(5))
    # a fresh object with the same key (e.g. after an app restart) gives the same bytes too
    assert dev.encode(x, KeyedMasks(key=KEY_A, model_version=dev.version)).data == first
    # 8-bit pixels and their float form in [0, 1] are the same input
    u8 = np.random.default_rng(0).integers(0, 256, size=(8, 8), dtype=np.uint8)
    assert dev.encode(u8, masks).data == dev.encode(u8.astype(np.float32) / 255, masks).data
    # a batch draws the same masks as one-by-one (values may differ in the last float bit: BLAS batching)
    many = dev.encode_many(ds.x_test[:4], masks)
    for p, xi in zip(many, ds.x_test[:4], strict=True):
        single = dev.encode(xi, masks)
        assert np.array_equal(np.flatnonzero(p.activations), np.flatnonzero(single.activations))


def test_other_key_version_or_input_gives_other_mask(device):
    dev, ds = device
    x = ds.x_test[:1]
    n, p = dev.n_outputs, dev.drop_rate
    base = KeyedMasks(key=KEY_A, model_version="v1").masks(x, n, p)
    assert not np.array_equal(base, KeyedMasks(key=KEY_B, model_version="v1").masks(x, n, p))
    assert not np.array_equal(base, KeyedMasks(key=KEY_A, model_version="v2").masks(x, n, p))
    bumped = x.copy()
    bumped[0, 0, 3, 3] += 1 / 255  # one grey level
    assert not np.array_equal(base, KeyedMasks(key=KEY_A, model_version="v1").masks(bumped, n, p))
    # changes well below the quantization step do not change the mask
    tiny = x + 1e-4
    assert np.array_equal(base, KeyedMasks(key=KEY_A, model_version="v1").masks(tiny, n, p))


@pytest.mark.parametrize("p", [0.5, 0.9, 0.97])
def test_observed_drop_rate_matches_p(p):
    """Over N*m Bernoulli draws the kept fraction is within 5 binomial standard deviations of 1-p
    (false-failure probability < 1e-6), and each output's own rate is within 5 sd as well."""
    rng = np.random.default_rng(0)
    x = rng.random((400, 1, 8, 8)).astype(np.float32)
    m = 500
    keep = KeyedMasks(key=KEY_A).masks(x, m, p)
    total = keep.size
    sd = math.sqrt(p * (1 - p) / total)
    assert abs(keep.mean() - (1 - p)) < 5 * sd
    per_output = keep.mean(0)
    sd_out = math.sqrt(p * (1 - p) / len(x))
    assert np.abs(per_output - (1 - p)).max() < 5.5 * sd_out  # max over 500 outputs: a slightly wider band
    # no two inputs share a mask (256-bit keyed hash: a collision would be a bug)
    assert len({row.tobytes() for row in keep}) == len(x)


def test_zero_drop_rate_keeps_everything():
    x = np.zeros((3, 1, 8, 8), np.float32)
    assert KeyedMasks(key=KEY_A).masks(x, 100, 0.0).all()
    with pytest.raises(InputError):
        KeyedMasks(key=KEY_A).masks(x, 100, 1.0)


def test_key_file_created_once_private_and_reused(tmp_path, monkeypatch):
    path = tmp_path / "state" / "device_key"
    key = load_or_create_key(path)
    assert len(key) == 32 and path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_key(path) == key
    masks = KeyedMasks(key_path=path, model_version="v")
    assert key.hex() not in repr(masks) and "hidden" in repr(masks)
    x = np.random.default_rng(1).random((2, 1, 8, 8)).astype(np.float32)
    assert np.array_equal(masks.masks(x, 64, 0.5), KeyedMasks(key=key, model_version="v").masks(x, 64, 0.5))
    # the environment variable points at the same state file
    monkeypatch.setenv("DAONET_DEVICE_KEY", str(path))
    assert load_or_create_key() == key


def test_key_file_refused_when_readable_by_others_or_corrupt(tmp_path):
    path = tmp_path / "device_key"
    load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(InputError, match="chmod 600"):
        load_or_create_key(path)
    os.chmod(path, 0o600)
    path.write_text("not hex\n")
    with pytest.raises(InputError, match="hex"):
        load_or_create_key(path)
    with pytest.raises(InputError):
        KeyedMasks(key=b"short")


def test_random_masks_still_fresh_and_seedable():
    x = np.zeros((2, 4), np.float32)
    a = RandomMasks(0).masks(x, 1000, 0.5)
    assert np.array_equal(a, RandomMasks(0).masks(x, 1000, 0.5))
    assert not np.array_equal(a[0], a[1])


@pytest.mark.parametrize("key_len", [16, 32, 64, 65, 200])
def test_mask_stream_is_plain_hmac_counter_mode(key_len):
    """The copied-state HMAC the masks use gives hmac.new's bytes for every key length (a JavaScript device
    reproduces the stream with WebCrypto's HMAC)."""
    import hashlib
    import hmac

    from daonet.device.masks import _hmac_blocks, _hmac_stream

    key = bytes(7 * i % 256 for i in range(key_len))
    msgs = [b"", b"\x01\x00\x00\x00", b"m" * 100]
    assert _hmac_blocks(key, msgs) == [hmac.new(key, m, hashlib.sha256).digest() for m in msgs]
    stream = b"".join(hmac.new(key, i.to_bytes(4, "little"), hashlib.sha256).digest() for i in range(4))
    assert _hmac_stream(key, 100) == stream[:100]
