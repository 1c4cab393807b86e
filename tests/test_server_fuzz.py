"""Property-based: whatever bytes arrive, the server answers 2xx or 4xx (never 5xx, never dies)."""

from __future__ import annotations

import json

import httpx
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PREDICT = "/v1/models/digits-mlp/predict"
N = 256  # the digits model's first-layer outputs
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None)


def check(r: httpx.Response) -> None:
    assert 200 <= r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        body = r.json()
        assert body["error"] and body["detail"]


@FUZZ
@given(data=st.binary(max_size=2048),
       content_type=st.sampled_from(["application/octet-stream", "application/json", "text/plain"]))
def test_random_bytes(http, data, content_type):
    check(http.post(PREDICT, content=data, headers={"Content-Type": content_type}))


@FUZZ
@given(data=st.binary(min_size=0, max_size=600))
def test_random_bytes_after_a_valid_header(http, version, make_payload, data):
    """Past the magic: random framing fields and bodies exercise the deeper checks."""
    header = make_payload(version, N, [], [])
    check(http.post(PREDICT, content=header[:8] + data, headers={"Content-Type": "application/octet-stream"}))


index_lists = st.lists(st.integers(min_value=0, max_value=70000), max_size=300)
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@FUZZ
@given(indices=index_lists, values=st.lists(floats, max_size=300), ibytes=st.sampled_from([2, 4]),
       vbytes=st.sampled_from([2, 4]), n_outputs=st.sampled_from([N, N, N, 0, 1, 255, 257, 2**32 - 1]),
       right_version=st.booleans(), nnz_delta=st.sampled_from([0, 0, 0, -1, 1, 1000]),
       sort=st.booleans())
def test_random_sparse_payloads(http, version, make_payload, indices, values, ibytes, vbytes, n_outputs,
                                right_version, nnz_delta, sort):
    k = min(len(indices), len(values))
    idx = sorted(indices[:k]) if sort else indices[:k]
    if ibytes == 2:
        idx = [i % 65536 for i in idx]
    val = values[:k]
    nnz = max(k + nnz_delta, 0)
    data = make_payload(version if right_version else "feedfacecafebeef", n_outputs, idx, val, ibytes=ibytes,
                        vbytes=vbytes, nnz=nnz)
    r = http.post(PREDICT, content=data, headers={"Content-Type": "application/octet-stream"})
    check(r)
    with np.errstate(over="ignore"):
        sent_vals = np.asarray(val, dtype=np.float16 if vbytes == 2 else np.float32)
    valid = (right_version and n_outputs == N and nnz == k and all(0 <= i < N for i in idx)
             and all(b > a for a, b in zip(idx, idx[1:], strict=False))
             and bool(np.all(np.isfinite(sent_vals))) and bool(np.all(sent_vals > 0)))
    overflowed = r.status_code == 422 and "too large" in r.json()["detail"]
    assert (r.status_code == 200 or overflowed) == valid, (r.status_code, r.text)
    if not right_version and r.status_code == 409:
        assert r.json()["payload_version"] == "feedfacecafebeef"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)


@FUZZ
@given(obj=st.fixed_dictionaries({}, optional={"model_version": json_values | st.just("VERSION"),
                                               "indices": json_values | st.lists(st.integers(), max_size=20),
                                               "values": json_values | st.lists(st.floats(), max_size=20),
                                               "n_outputs": json_values}) | json_values)
def test_random_json(http, version, obj):
    text = json.dumps(obj).replace('"VERSION"', json.dumps(version))
    check(http.post(PREDICT, content=text.encode(), headers={"Content-Type": "application/json"}))


def test_still_serving_after_fuzz(http, version, make_payload):
    r = http.post(PREDICT, content=make_payload(version, N, [1, 5, 9], [0.5, 1.0, 2.0]),
                  headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200 and len(r.json()["probabilities"]) == 10


F32_MAX = float(np.finfo(np.float32).max)
huge = st.sampled_from([F32_MAX, 1e38, 1e30]) | st.floats(min_value=1e3, max_value=F32_MAX, width=32)


@FUZZ
@given(positions=st.sets(st.integers(min_value=0, max_value=N - 1), min_size=8, max_size=N),
       values=st.lists(huge, min_size=N, max_size=N), form=st.sampled_from(["binary", "json"]))
def test_huge_values_never_5xx(http, version, make_payload, positions, values, form):
    """Large finite values may overflow the forward pass: 200 or 422, never a 5xx."""
    idx = sorted(positions)
    val = values[:len(idx)]
    if form == "binary":
        r = http.post(PREDICT, content=make_payload(version, N, idx, val),
                      headers={"Content-Type": "application/octet-stream"})
    else:
        r = http.post(PREDICT, json={"model_version": version, "indices": idx, "values": val})
    check(r)
    assert r.status_code in (200, 422), r.text
    if r.status_code == 200:
        assert all(np.isfinite(r.json()["probabilities"]))
