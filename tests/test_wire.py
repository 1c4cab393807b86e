"""The wire format: round trips, exact byte layout, and every malformed payload refused clearly."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from daonet.errors import PayloadError
from daonet.wire import HEADER, MAGIC, decode, encode, validate_sparse


def _vec(n=50, seed=0):
    rng = np.random.default_rng(seed)
    v = np.maximum(rng.normal(size=n), 0).astype(np.float32)
    v[rng.random(n) < 0.7] = 0
    return v


def test_round_trip_float32_is_exact():
    v = _vec()
    p = decode(encode(v, "abc123"))
    assert p.model_version == "abc123" and p.n_outputs == v.size
    assert np.array_equal(p.to_dense(), v)
    assert np.array_equal(p.indices, np.flatnonzero(v))


def test_byte_layout_is_documented_layout():
    v = np.zeros(10, np.float32)
    v[[2, 7]] = [1.5, 0.25]
    data = encode(v, "v1")
    magic, ver, ib, vb, vlen, n, nnz = HEADER.unpack_from(data)
    assert (magic, ver, ib, vb, vlen, n, nnz) == (MAGIC, 1, 2, 4, 2, 10, 2)
    assert data[16:18] == b"v1"
    assert struct.unpack("<2H", data[18:22]) == (2, 7)
    assert struct.unpack("<2f", data[22:30]) == (1.5, 0.25)
    assert len(data) == 16 + 2 + 2 * (2 + 4)


def test_float16_halves_value_bytes_and_stays_close():
    v = _vec(200)
    p16, p32 = encode(v, "x", "float16"), encode(v, "x")
    nnz = np.count_nonzero(v)
    assert len(p32) - len(p16) == 2 * nnz
    assert np.allclose(decode(p16).to_dense(), v, rtol=1e-3, atol=1e-4)


def test_large_layers_use_uint32_indices():
    v = np.zeros(70000, np.float32)
    v[[0, 69999]] = 1
    data = encode(v, "x")
    assert data[5] == 4
    assert decode(data).indices.tolist() == [0, 69999]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:10], "truncated"),
        (lambda d: d[:-1], "truncated"),
        (lambda d: d + b"\x00", "too long"),
        (lambda d: b"XXXX" + d[4:], "magic"),
        (lambda d: d[:4] + b"\x09" + d[5:], "wire format version 9"),
        (lambda d: d[:5] + b"\x03" + d[6:], "index width"),
        (lambda d: d[:6] + b"\x08" + d[7:], "value width"),
    ],
)
def test_malformed_payloads(mutate, message):
    data = encode(_vec(), "v")
    with pytest.raises(PayloadError, match=message):
        decode(mutate(data))


def _raw(indices, values, n=10, version=b"v"):
    idx = np.asarray(indices, "<u2").tobytes()
    val = np.asarray(values, "<f4").tobytes()
    return HEADER.pack(MAGIC, 1, 2, 4, len(version), n, len(indices)) + version + idx + val


@pytest.mark.parametrize(
    ("indices", "values", "message"),
    [
        ([3, 12], [1.0, 1.0], "index 12 is out of range"),
        ([3, 3], [1.0, 1.0], "appears more than once"),
        ([5, 3], [1.0, 1.0], "increasing order"),
        ([1, 2], [1.0, -0.5], "negative"),
        ([1, 2], [np.nan, 1.0], "NaN or inf"),
        ([1, 2], [np.inf, 1.0], "NaN or inf"),
    ],
)
def test_invalid_contents(indices, values, message):
    with pytest.raises(PayloadError, match=message):
        decode(_raw(indices, values))


def test_more_nonzeros_than_outputs():
    data = _raw(list(range(11)), [1.0] * 11, n=10)
    with pytest.raises(PayloadError, match="only 10 outputs"):
        decode(data)


def test_expected_outputs_checked():
    with pytest.raises(PayloadError, match="this model's has 99"):
        decode(encode(_vec(), "v"), expected_outputs=99)


def test_encode_refuses_negative_and_nan():
    with pytest.raises(PayloadError, match="negative"):
        encode(np.array([-1.0, 0.0], np.float32), "v")
    with pytest.raises(PayloadError, match="NaN"):
        encode(np.array([np.nan, 0.0], np.float32), "v")


def test_validate_sparse_pairs():
    with pytest.raises(PayloadError, match="pair up"):
        validate_sparse("v", 10, [1, 2], [1.0])
    with pytest.raises(PayloadError, match="integers"):
        validate_sparse("v", 10, ["a"], [1.0])
