"""Hardening: no 5xx on any input, manifests checked against the network, daonet-worded 4xx details."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pytest

from daonet.errors import BundleError

PREDICT = "/v1/models/digits-mlp/predict"
OCTET = {"Content-Type": "application/octet-stream"}
N = 256


def _still_serving(http, version, make_payload) -> None:
    r = http.post(PREDICT, content=make_payload(version, N, [1, 5, 9], [0.5, 1.0, 2.0]), headers=OCTET)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("form", ["binary", "json"])
def test_huge_finite_values_are_422_not_500(http, version, make_payload, form):
    """All outputs at float32's largest value overflow the forward pass: refused, not a 500."""
    indices, values = list(range(N)), [3.4e38] * N
    if form == "binary":
        r = http.post(PREDICT, content=make_payload(version, N, indices, values), headers=OCTET)
    else:
        r = http.post(PREDICT, json={"model_version": version, "indices": indices, "values": values})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_payload" and "too large" in body["detail"]
    _still_serving(http, version, make_payload)


def test_one_overflowing_request_does_not_spoil_its_batch(http, version, make_payload):
    """Concurrent good and overflowing requests share forward passes; only the bad ones are refused."""
    from concurrent.futures import ThreadPoolExecutor

    bad = make_payload(version, N, list(range(N)), [3.4e38] * N)
    good = make_payload(version, N, [1, 5, 9], [0.5, 1.0, 2.0])
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda i: http.post(PREDICT, content=bad if i % 2 else good,
                                                  headers=OCTET).status_code, range(64)))
    assert codes == [422 if i % 2 else 200 for i in range(64)]


@pytest.mark.parametrize("body,leak", [
    ({"indices": [10**30], "values": [1.0]}, "C long"),
    ({"indices": [1], "values": [10**400]}, "int too large"),
    ({"indices": [1], "values": [1.0], "n_outputs": {"client-secret": 1}}, "client-secret"),
    ({"indices": [1], "values": [1.0], "n_outputs": "client-secret"}, "client-secret"),
])
def test_422_details_do_not_echo_python_internals_or_client_objects(http, version, body, leak):
    r = http.post(PREDICT, content=json.dumps({"model_version": version, **body}).encode(),
                  headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert leak not in detail and "Python" not in detail, detail


@pytest.mark.parametrize("raw", [b'{"indices": [1]', b'{indices: [1]}', b'\xff\xfe', b"[1, 2,]"])
def test_bad_json_detail_is_daonet_worded(http, raw):
    r = http.post(PREDICT, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "not valid JSON" in detail
    for internal in ("Expecting", "char ", "codec", "utf-8", "line 1"):
        assert internal not in detail, detail


def _edit_manifest(directory, edit) -> None:
    from daonet.bundle import MANIFEST

    path = directory / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["first_layer"].__setitem__("n_outputs", 255), "n_outputs"),
    (lambda m: m["first_layer"].__setitem__("output_shape", [255]), "output"),
    (lambda m: m.__setitem__("classes", [str(i) for i in range(7)]), "classes"),
])
def test_server_bundle_whose_manifest_disagrees_with_the_network_is_refused_at_load(
        serve_digits_bundle, tmp_path, edit, message):
    from daonet.bundle import seal_bundle
    from daonet.server.model import ServerModel

    root = tmp_path / "bundle"
    shutil.copytree(serve_digits_bundle.root, root)
    _edit_manifest(root / "server", edit)
    seal_bundle(root)  # a consistent version after the edit: only the network check can catch it
    with pytest.raises(BundleError, match=message):
        ServerModel.load(root / "server")


def test_served_values_rule_is_one_rule(http, version, make_payload):
    """Zero and -0.0 are not ReLU outputs worth sending (absent = zero): wire, server and schema say > 0."""
    for value in (0.0, -0.0):
        r = http.post(PREDICT, content=make_payload(version, N, [3], [value]), headers=OCTET)
        assert r.status_code == 422 and "> 0" in r.json()["detail"], r.text
    schema = http.get("/openapi.json").json()
    values = schema["paths"][PREDICT.replace("digits-mlp", "{model_id}")]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]["values"]
    assert values["items"]["exclusiveMinimum"] == 0
    assert np.float32(1e-30) > 0  # tiny positive values stay valid


# -- privacy hygiene of the service itself ---------------------------------------------------------------------
def test_docs_are_off_by_default_and_on_with_the_option(http, start_server, serve_digits_bundle):
    """Swagger UI loads third-party scripts in the reader's browser: only when asked for."""
    from daonet.server.config import ServerConfig

    assert http.get("/docs").status_code == 404 and http.get("/redoc").status_code == 404
    assert http.get("/openapi.json").status_code == 200  # the schema itself fetches nothing
    server = start_server(ServerConfig(bundles=[serve_digits_bundle.server], docs=True))
    with httpx.Client(base_url=server.url) as docs_http:
        assert docs_http.get("/docs").status_code == 200


KEY = "dao_hygiene-key-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed(start_server, serve_digits_bundle):
    from daonet.server.config import ServerConfig, hash_api_key

    open_metrics = start_server(ServerConfig(bundles=[serve_digits_bundle.server], api_key_hashes=[hash_api_key(KEY)]))
    closed_metrics = start_server(ServerConfig(bundles=[serve_digits_bundle.server], api_key_hashes=[hash_api_key(KEY)],
                                               protect_metrics=True))
    return open_metrics.url, closed_metrics.url


@pytest.mark.parametrize("param", ["api_key", "apikey", "access_token"])
def test_key_in_the_query_string_is_refused_with_a_hint(keyed, http, version, make_payload, param):
    url, _ = keyed
    body = make_payload(version, N, [1], [1.0])
    with httpx.Client(base_url=url) as client:
        r = client.post(f"{PREDICT}?{param}={KEY}", content=body, headers=OCTET)
        assert r.status_code == 401, r.text
        assert "query string" in r.json()["detail"] and "X-API-Key" in r.json()["detail"]
        assert client.get(f"/v1/health?{param}=x").status_code == 401  # anywhere: the URL is logged everywhere
    r = http.post(f"{PREDICT}?{param}=x", content=body, headers=OCTET)  # also when no key is configured
    assert r.status_code == 401


def test_open_endpoints_in_key_mode_and_protected_metrics(keyed):
    open_url, closed_url = keyed
    with httpx.Client(base_url=open_url) as client:
        for path in ("/v1/health", "/v1/ready", "/metrics", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        assert client.get("/v1/models").status_code == 401
    with httpx.Client(base_url=closed_url) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": KEY}).status_code == 200
        assert client.get("/v1/health").status_code == 200


# -- documentation and schema ------------------------------------------------------------------------------------
def test_openapi_describes_metrics_as_text_and_the_binary_body(http):
    schema = http.get("/openapi.json").json()
    metrics = schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert "text/plain" in metrics and "application/json" not in metrics
    body = schema["paths"]["/v1/models/{model_id}/predict"]["post"]["requestBody"]["content"]
    binary = body["application/octet-stream"]["schema"]
    assert binary["format"] == "binary" and "DAO1" in binary["description"] and "mean" in binary["description"]
