"""Similarity-keyed masks: near-duplicates share a mask, exact replays send identical bytes, the keep rate
is 1 - p, other keys give unrelated masks, and the documented derivation (docs/masks.md) is reproduced by
an independent pure-Python implementation (what the JavaScript client follows)."""

from __future__ import annotations

import hashlib
import hmac
import math
import struct

import numpy as np
import pytest

from daonet.audit.repeated import exact_replays, gaussian, grey_levels, repeated_queries, straddle
from daonet.device import Client, DeviceModel, KeyedMasks, RandomMasks, SimilarityKeyedMasks, make_masks
from daonet.errors import InputError

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


def _noisy(x: np.ndarray, rng: np.random.Generator, levels: int = 2) -> np.ndarray:
    """A re-capture of 8-bit images in [0, 1]: ±levels grey levels."""
    return grey_levels(levels).draw(x, 1, rng)[0]


# -- an independent reference of the documented derivation (integers and HMAC only, no numpy) ---------
def _stream(prk: bytes, n_bytes: int) -> bytes:
    out = b""
    i = 0
    while len(out) < n_bytes:
        out += hmac.new(prk, struct.pack("<I", i), hashlib.sha256).digest()
        i += 1
    return out[:n_bytes]


def _reference_mask(key: bytes, version: str, x: list[float], n_outputs: int, p: float, quantum: float,
                    width: float, groups: int, dims: int) -> list[bool]:
    n = len(x)
    q = [round(v / quantum) for v in x]  # Python's round() is round-half-to-even, as specified
    w = max(1, round(width * math.sqrt(n) / quantum))
    geometry = struct.pack("<IIII", n, groups, dims, w) + struct.pack("<d", quantum)
    rows = groups * dims
    prk = hmac.new(key, b"daonet-simhash-projection-v1\0" + geometry, hashlib.sha256).digest()
    bits = _stream(prk, (rows * n + 7) // 8)
    prk = hmac.new(key, b"daonet-simhash-offset-v1\0" + geometry, hashlib.sha256).digest()
    offs = _stream(prk, 4 * rows)
    cells = []
    for r in range(rows):
        z = 0
        for j in range(n):
            b = r * n + j
            z += q[j] if (bits[b >> 3] >> (b & 7)) & 1 else -q[j]
        cells.append((z + struct.unpack_from("<I", offs, 4 * r)[0] % w) // w)  # floor division
    threshold = round(p * 2**32)
    per_group = -(-n_outputs // groups)
    v = version.encode("ascii")
    keep = []
    streams = []
    for g in range(groups):
        msg = (b"daonet-simhash-mask-v1\0" + struct.pack("<I", len(v)) + v + geometry + struct.pack("<I", n_outputs)
               + struct.pack("<d", p) + struct.pack("<I", g)
               + b"".join(struct.pack("<q", c) for c in cells[g * dims:(g + 1) * dims]))
        streams.append(_stream(hmac.new(key, msg, hashlib.sha256).digest(), 4 * per_group))
    for i in range(n_outputs):
        g, j = i % groups, i // groups
        keep.append(struct.unpack_from("<I", streams[g], 4 * j)[0] >= threshold)
    return keep


@pytest.mark.parametrize("groups,dims,width,p", [(32, 1, 0.5, 0.5), (3, 2, 0.05, 0.9), (1, 1, 2.0, 0.97)])
def test_matches_independent_reference_of_the_documented_derivation(groups, dims, width, p):
    rng = np.random.default_rng(groups)
    x = (rng.integers(0, 256, size=(1, 8, 8)) / 255.0).astype(np.float32)
    x[0, 0, 0] = -1.5  # negative values: floor division, not truncation
    masks = SimilarityKeyedMasks(key=KEY_A, model_version="v-1", width=width, groups=groups, dims=dims)
    ours = masks.masks(x[None], 100, p)[0]
    ref = _reference_mask(KEY_A, "v-1", [float(v) for v in x.reshape(-1)], 100, p, 1 / 255, width, groups, dims)
    assert ours.tolist() == ref


def test_known_answer_vector_for_other_runtimes():
    """The test vector printed in docs/masks.md (a JavaScript port checks itself against it)."""
    x = (np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8) * 4) / 255
    keep = SimilarityKeyedMasks(key=KEY_A, model_version="demo-v1").masks(x, 64, 0.5)[0]
    assert np.packbits(keep, bitorder="little").tobytes().hex() == "da0702bf3ac75ae3"
    assert SimilarityKeyedMasks(key=KEY_A).cells(x[0])[:4, 0].tolist() == [-2, 1, -4, 1]


# -- near-duplicates and replays ----------------------------------------------------------------------
def test_near_duplicates_get_identical_masks_with_high_probability(digits):
    """±2 grey levels on real digits: nearly every group keeps its cell, so nearly every keep bit is unchanged
    and most whole masks are identical; exact-input keyed masks change every time."""
    x = digits.x_test[:200]
    rng = np.random.default_rng(0)
    dup = _noisy(x, rng)
    assert (dup != x).any(axis=(1, 2, 3)).mean() > 0.95  # the re-captures really differ
    sim = SimilarityKeyedMasks(key=KEY_A)
    a, b = sim.masks(x, 256, 0.5), sim.masks(dup, 256, 0.5)
    assert (a == b).mean() > 0.99
    assert np.all(a == b, axis=1).mean() > 0.5  # 32 groups: a crossing in any one changes 1/32 of the bits
    one_group = SimilarityKeyedMasks(key=KEY_A, groups=1)
    assert np.all(one_group.masks(x, 256, 0.5) == one_group.masks(dup, 256, 0.5), axis=1).mean() > 0.95
    keyed = KeyedMasks(key=KEY_A)
    assert np.all(keyed.masks(x, 256, 0.5) == keyed.masks(dup, 256, 0.5), axis=1).mean() < 0.05
    stats = straddle(sim, x, grey_levels(2), 5, labels=digits.y_test[:200])
    assert stats.group_straddle < 0.02 and stats.groups_seen_k < 1.05


def test_exact_replays_send_identical_bytes(serve_digits_bundle, digits):
    dev = DeviceModel.load(serve_digits_bundle.device)
    masks = SimilarityKeyedMasks(key=KEY_A, model_version=dev.version)
    x = digits.x_test[0]
    first = dev.encode(x, masks).data
    assert all(dev.encode(x, masks).data == first for _ in range(3))
    assert dev.encode(x, SimilarityKeyedMasks(key=KEY_A, model_version=dev.version)).data == first
    u8 = np.random.default_rng(0).integers(0, 256, size=(8, 8), dtype=np.uint8)  # pixels == their float form
    assert dev.encode(u8, masks).data == dev.encode(u8.astype(np.float32) / 255, masks).data
    # changes far below the quantum do not change the mask
    assert np.array_equal(masks.masks(x[None], dev.n_outputs, 0.5), masks.masks(x[None] + 1e-4, dev.n_outputs, 0.5))


def test_client_option_over_loopback(server_url, serve_digits_bundle, digits):
    """A client configured with similarity-keyed masks: a noisy re-capture gets the same prediction and the
    same support (up to ReLU flips) from the real server, an exact replay the same bytes."""
    x = digits.x_test[:20]
    dup = _noisy(x, np.random.default_rng(1))
    dev = DeviceModel.load(serve_digits_bundle.device)
    with Client(server_url, serve_digits_bundle.device,
                masks=SimilarityKeyedMasks(key=KEY_A, model_version=dev.version)) as client:
        first, again, noisy = client.encode_many(x), client.encode_many(x), client.encode_many(dup)
        assert [p.data for p in first] == [p.data for p in again]
        preds = client.send_many(first)
        assert len(preds) == 20 and all(p.nnz == f.nnz for p, f in zip(preds, first, strict=True))
    union = np.mean([np.count_nonzero((a.activations > 0) | (b.activations > 0)) for a, b in zip(first, noisy,
                                                                                                 strict=True)])
    single = np.mean([np.count_nonzero(a.activations) for a in first])
    assert union < 1.15 * single  # fresh masks would add about half the active outputs again


def test_mask_source_chosen_by_name(server_url, serve_digits_bundle, digits, tmp_path, monkeypatch):
    """``Client(masks="similarity")`` reads the device key file and sends what the class would send."""
    key_path = tmp_path / "device_key"
    monkeypatch.setenv("DAONET_DEVICE_KEY", str(key_path))
    x = digits.x_test[:5]
    with Client(server_url, serve_digits_bundle.device, masks="similarity") as client:
        assert isinstance(client.masks, SimilarityKeyedMasks)
        sent = [p.data for p in client.encode_many(x)]
        assert len(client.send_many(client.encode_many(x))) == 5
        version = client.device.version
    key = bytes.fromhex(key_path.read_text().strip())
    dev = DeviceModel.load(serve_digits_bundle.device)
    same = SimilarityKeyedMasks(key=key, model_version=version)
    assert sent == [p.data for p, _ in dev.encode_many_certified(x, same)]  # the client enforces the policy
    assert isinstance(make_masks("keyed", key_path=key_path), KeyedMasks)
    assert isinstance(make_masks("random"), RandomMasks)
    with pytest.raises(InputError, match="choose one of random, keyed, similarity"):
        make_masks("lsh")
    with pytest.raises(InputError, match="width"):
        make_masks("keyed", key_path=key_path, width=0.5)
    with pytest.raises(InputError, match="similarity masks take"):
        make_masks("similarity", key_path=key_path, widht=0.5)


def test_pooled_near_duplicates_add_few_equations(serve_signal_bundle):
    """The audit's measurement on a real ECG5000 model: 5 noisy windows pooled by the server add many
    outputs under fresh and exact-keyed masks and few under similarity-keyed ones; replays add none."""
    from daonet.audit.attacks import ServerKnowledge
    from daonet.data import load_dataset

    dev = DeviceModel.load(serve_signal_bundle.device)
    ds = load_dataset("ecg5000")
    x = ds.x_test[:30]
    know = ServerKnowledge.from_device(dev, "signal")
    mu = ds.x_train.reshape(len(ds.x_train), -1).mean(0)
    res = repeated_queries(lambda xs, m: dev.drop(xs, m), know, x, mu, "signal",
                           masks={"fresh": lambda: RandomMasks(0), "keyed": lambda: KeyedMasks(key=KEY_A),
                                  "similarity": lambda: SimilarityKeyedMasks(key=KEY_A, width=0.5)},
                           captures=[exact_replays(), gaussian(0.01)], ks=(1, 5),
                           baseline=np.broadcast_to(mu, (len(x), mu.size)))
    row = {(r.captures, r.masks, r.k): r for r in res.rows}
    for m in ("keyed", "similarity"):
        assert row[("exact replays", m, 5)].identical == 1.0
        assert row[("exact replays", m, 5)].surviving_union == row[("exact replays", m, 1)].surviving_union
    assert row[("exact replays", "fresh", 5)].identical == 0.0
    cap = gaussian(0.01).name
    single = row[(cap, "similarity", 1)].surviving_union
    assert row[(cap, "similarity", 5)].surviving_union < 1.15 * single
    assert row[(cap, "fresh", 5)].surviving_union > 1.8 * row[(cap, "fresh", 1)].surviving_union
    assert row[(cap, "keyed", 5)].surviving_union > 1.8 * row[(cap, "keyed", 1)].surviving_union
    assert "| exact replays | similarity | 5 |" in res.to_markdown()


def test_replay_safe_sources_are_observed_once_per_distinct_capture(serve_signal_bundle):
    """Exact replays under keyed and similarity-keyed masks send the same bytes, so the audit encodes each
    distinct capture once: the result equals encoding every capture, and only distinct rows reach the device."""
    from daonet.audit.repeated import observe_captures
    from daonet.data import load_dataset

    dev = DeviceModel.load(serve_signal_bundle.device)
    x = load_dataset("ecg5000").x_test[:12]
    xs = np.broadcast_to(x, (4, *x.shape)).copy()
    xs[2, ::3] += 0.05  # some inputs re-captured with a change: those rows are new
    for factory in (lambda: KeyedMasks(key=KEY_A), lambda: SimilarityKeyedMasks(key=KEY_A, width=0.5)):
        seen: list[int] = []

        def observe(xb, m, seen=seen):
            seen.append(len(xb))
            return dev.drop(xb, m)

        direct = np.stack([dev.drop(xs[j], factory()) for j in range(len(xs))])
        assert np.array_equal(observe_captures(observe, xs, factory()), direct)
        assert sum(seen) == len(x) + len(x[::3])  # capture 0, then only the changed rows of capture 2
    fresh: list[int] = []
    observe_captures(lambda xb, m: fresh.append(len(xb)) or dev.drop(xb, m), xs, RandomMasks(0))
    assert sum(fresh) == xs.shape[0] * xs.shape[1]  # fresh masks: every capture is a new request


# -- keys, parameters and the keep rate -----------------------------------------------------------------
def test_other_key_version_or_parameters_give_unrelated_masks(digits):
    x = digits.x_test[:50]
    base = SimilarityKeyedMasks(key=KEY_A, model_version="v1").masks(x, 400, 0.5)
    for other in (SimilarityKeyedMasks(key=KEY_B, model_version="v1"),
                  SimilarityKeyedMasks(key=KEY_A, model_version="v2"),
                  SimilarityKeyedMasks(key=KEY_A, model_version="v1", width=0.4),
                  SimilarityKeyedMasks(key=KEY_A, model_version="v1", groups=16)):
        agree = (other.masks(x, 400, 0.5) == base).mean()
        assert abs(agree - 0.5) < 0.02  # independent Bernoulli(0.5) bits agree half the time
    # the keyed projections differ too: the server cannot compute another device's cells
    a, b = SimilarityKeyedMasks(key=KEY_A).hash_params(64), SimilarityKeyedMasks(key=KEY_B).hash_params(64)
    assert abs((a[0] == b[0]).mean() - 0.5) < 0.05
    text = repr(SimilarityKeyedMasks(key=KEY_A))
    assert "hidden" in text and KEY_A.hex() not in text


@pytest.mark.parametrize("p", [0.5, 0.9, 0.97])
def test_keep_rate_is_bernoulli_one_minus_p(p):
    """Distinct inputs in distinct cells (a fine width, several projections: random inputs share no cell here,
    so the draws are independent): the kept fraction is within 5 binomial sd of 1 - p (false failure
    < 1e-6), each output's rate within 5.5 sd, and bits of one mask are uncorrelated (lag-1)."""
    rng = np.random.default_rng(0)
    x = rng.random((400, 1, 8, 8)).astype(np.float32)
    masks = SimilarityKeyedMasks(key=KEY_A, width=0.001, dims=2)
    cells = np.stack([masks.cells(xi) for xi in x])
    assert len({c.tobytes() for c in cells[:, 0]}) == len(x)
    keep = masks.masks(x, 500, p)
    sd = math.sqrt(p * (1 - p) / keep.size)
    assert abs(keep.mean() - (1 - p)) < 5 * sd
    sd_out = math.sqrt(p * (1 - p) / len(x))
    assert np.abs(keep.mean(0) - (1 - p)).max() < 5.5 * sd_out
    k = keep.astype(float) - (1 - p)
    lag1 = (k[:, 1:] * k[:, :-1]).mean() / (p * (1 - p))
    assert abs(lag1) < 5 / math.sqrt(k[:, 1:].size)
    assert SimilarityKeyedMasks(key=KEY_A).masks(x[:3], 50, 0.0).all()


def test_bad_keys_and_parameters_are_refused_clearly():
    with pytest.raises(InputError, match="16 bytes"):
        SimilarityKeyedMasks(key=b"short")
    with pytest.raises(InputError, match="16 bytes"):
        SimilarityKeyedMasks(key="a string key of enough length")  # type: ignore[arg-type]
    for kw, msg in (({"width": 0}, "width"), ({"width": float("nan")}, "width"), ({"width": -1}, "width"),
                    ({"quantum": 0}, "quantum"), ({"quantum": float("inf")}, "quantum"),
                    ({"groups": 0}, "groups"), ({"groups": 2.5}, "groups"), ({"groups": True}, "groups"),
                    ({"dims": 0}, "dims"), ({"dims": 17}, "dims"), ({"model_version": "vé"}, "ASCII")):
        with pytest.raises(InputError, match=msg):
            SimilarityKeyedMasks(key=KEY_A, **kw)
    masks = SimilarityKeyedMasks(key=KEY_A)
    x = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(InputError, match="drop rate"):
        masks.masks(x, 10, 1.0)
    with pytest.raises(InputError, match="n_outputs"):
        masks.masks(x, 0, 0.5)
    with pytest.raises(InputError, match="larger quantum"):
        SimilarityKeyedMasks(key=KEY_A, quantum=1e-12).masks(x + 1e3, 10, 0.5)
    with pytest.raises(InputError, match="smaller width"):
        SimilarityKeyedMasks(key=KEY_A, width=1e9, quantum=1e-6).masks(x, 10, 0.5)
