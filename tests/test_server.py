"""The HTTP server on real sockets: endpoints, every bad-input answer, auth, TLS, metrics, batching."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil

import httpx
import numpy as np
import pytest
import torch
from server_cases import (
    API_KEY_CASES,
    API_KEYS,
    BAD_PAYLOADS,
    OCTET,
    PREDICT,
    WRONG_CONTENT_TYPES,
    api_key_hashes,
    send_bad_payload,
)
from typer.testing import CliRunner

from daonet.cli import app as cli_app
from daonet.device import DeviceModel, RandomMasks
from daonet.server.batching import BatcherClosedError, MicroBatcher
from daonet.server.config import ApiKeyVerifier, ConfigError, ServerConfig, hash_api_key
from daonet.server.model import ModelRegistry, ServerModel


@pytest.fixture(scope="module")
def device(serve_digits_bundle) -> DeviceModel:
    return DeviceModel.load(serve_digits_bundle.device)


@pytest.fixture(scope="module")
def good(device, serve_digits_run) -> bytes:
    return device.encode(serve_digits_run.dataset.x_test[0], RandomMasks(0)).data



def assert_still_serving(http: httpx.Client, good: bytes) -> None:
    r = http.post(PREDICT, content=good, headers=OCTET)
    assert r.status_code == 200, r.text
    assert len(r.json()["probabilities"]) == 10


# -- endpoints ---------------------------------------------------------------------------------------------
def test_list_models_has_what_a_device_needs(http, device, serve_signal_bundle):
    r = http.get("/v1/models")
    assert r.status_code == 200
    models = {m["model_id"]: m for m in r.json()["models"]}
    assert set(models) == {"digits-mlp", "ecg5000-cnn1d"}
    m = models["digits-mlp"]
    assert m["version"] == device.version
    assert m["n_outputs"] == device.n_outputs == 256
    assert m["device_input"]["shape"] == [1, 8, 8]
    assert m["classes"] == [str(i) for i in range(10)]
    assert http.get("/v1/models/ecg5000-cnn1d").json()["device_input"]["shape"] == [1, 140]


def test_health_ready_docs_openapi(http):
    assert http.get("/v1/health").json() == {"status": "ok"}
    ready = http.get("/v1/ready")
    assert ready.status_code == 200 and ready.json()["models"] == ["digits-mlp", "ecg5000-cnn1d"]
    assert http.get("/docs").status_code == 404  # off unless --docs (Swagger UI loads CDN scripts)
    spec = http.get("/openapi.json").json()
    body = spec["paths"]["/v1/models/{model_id}/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/octet-stream", "application/json"}
    posts = [p for p, ops in spec["paths"].items() if "post" in ops]
    assert posts == ["/v1/models/{model_id}/predict"]  # the only way in is the sparse payload


def test_predict_binary_and_json_agree(http, device, serve_digits_run, serve_digits_bundle):
    x = serve_digits_run.dataset.x_test[:1]
    payload = device.encode(x, RandomMasks(1))
    r = http.post(PREDICT, content=payload.data, headers=OCTET)
    assert r.status_code == 200, r.text
    body = r.json()
    expected = ServerModel.load(serve_digits_bundle.server).predict_bytes([payload.data])[0]
    np.testing.assert_allclose(body["probabilities"], expected, atol=1e-5)
    assert body["index"] == int(expected.argmax()) and body["label"] == str(body["index"])
    assert body["nnz"] == payload.nnz and body["model_version"] == device.version
    idx = np.flatnonzero(payload.activations)
    r2 = http.post(PREDICT, json={"model_version": device.version, "indices": idx.tolist(),
                                  "values": payload.activations[idx].tolist()})
    assert r2.status_code == 200, r2.text
    np.testing.assert_allclose(r2.json()["probabilities"], body["probabilities"], atol=1e-6)


def test_empty_payload_is_a_valid_request(http, device, make_payload):
    r = http.post(PREDICT, content=make_payload(device.version, 256, [], []), headers=OCTET)
    assert r.status_code == 200 and r.json()["nnz"] == 0


# -- bad input: status, message, and the server keeps serving -----------------------------------------------
@pytest.mark.parametrize("case", list(BAD_PAYLOADS))
def test_bad_payload_is_answered_and_server_keeps_serving(case, http, device, good, make_payload):
    status, message = BAD_PAYLOADS[case][1:3]
    r = send_bad_payload(http, case, device.version, make_payload)
    assert r.status_code == status, r.text
    err = r.json()
    assert set(err) >= {"error", "detail"}
    assert message in err["detail"], err
    if status == 409:
        assert err["error"] == "version_mismatch"
        assert err["server_version"] == device.version and err["payload_version"] != device.version
    assert_still_serving(http, good)


def test_unknown_model_is_404(http, good):
    r = http.post("/v1/models/no-such-model/predict", content=good, headers=OCTET)
    assert r.status_code == 404
    assert r.json()["error"] == "unknown_model" and "digits-mlp" in r.json()["detail"]
    assert http.get("/v1/models/no-such-model").status_code == 404
    assert http.get("/v1/no-such-endpoint").json()["error"] == "not_found"
    assert_still_serving(http, good)


@pytest.mark.parametrize("content_type", WRONG_CONTENT_TYPES)
def test_wrong_content_type_is_415(http, good, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    r = http.post(PREDICT, content=good, headers=headers)
    assert r.status_code == 415, r.text
    assert r.json()["error"] == "unsupported_media_type" and "application/octet-stream" in r.json()["detail"]
    assert_still_serving(http, good)


def test_body_over_limit_by_content_length_is_413(http, good, server_body_limit):
    r = http.post(PREDICT, content=b"\x00" * (server_body_limit + 1), headers=OCTET)
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large" and str(server_body_limit) in r.json()["detail"]
    assert_still_serving(http, good)


def test_body_over_limit_when_streamed_without_length_is_413(http, good, server_body_limit):
    def chunks():  # chunked transfer encoding: no Content-Length, the server must count
        for _ in range(4):
            yield b"\x00" * (server_body_limit // 2)

    r = http.post(PREDICT, content=chunks(), headers=OCTET)
    assert r.status_code == 413
    assert "streamed" in r.json()["detail"]
    assert_still_serving(http, good)


def test_body_within_limit_streamed_is_accepted(http, good):
    r = http.post(PREDICT, content=iter([good[:10], good[10:]]), headers=OCTET)
    assert r.status_code == 200, r.text


def test_lying_content_length_is_refused(server_url, good):
    """A Content-Length under the real size: the HTTP layer must not let the extra bytes through as a body."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(server_url)
    request = (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
               f"Content-Length: 5\r\nConnection: close\r\n\r\n").encode() + good
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0]
    assert b" 400 " in status_line  # the 5 bytes are a truncated payload
    with httpx.Client(base_url=server_url) as http:
        assert_still_serving(http, good)


def test_internal_error_is_500_without_content_and_server_keeps_serving(start_server, serve_digits_bundle, good,
                                                                          caplog):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError(f"secret detail {x.sum()}")

    model = ServerModel.load(serve_digits_bundle.server)
    broken = ServerModel(dataclasses.replace(model.manifest, model_id="broken"), Broken())
    server = start_server(ServerConfig(), ModelRegistry([model, broken]))
    caplog.set_level(logging.DEBUG)
    with httpx.Client(base_url=server.url) as http:
        r = http.post("/v1/models/broken/predict", content=good, headers=OCTET)
        assert r.status_code == 500 and r.json()["error"] == "internal_error"
        assert "secret" not in r.text
        assert_still_serving(http, good)
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "RuntimeError" in logged and "secret" not in logged


def test_payload_content_is_never_logged(http, device, good, make_payload, caplog):
    caplog.set_level(logging.DEBUG)
    marker = 31337.25
    http.post(PREDICT, content=make_payload(device.version, 256, [5, 5], [marker, marker]), headers=OCTET)
    http.post(PREDICT, json={"model_version": device.version, "indices": [4242], "values": [marker]})
    http.post(PREDICT, content=good, headers=OCTET)
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "31337" not in logged and "4242" not in logged and good.hex()[:40] not in logged


# -- metrics -------------------------------------------------------------------------------------------------
def test_metrics_count_requests_by_status_and_batches(http, good):
    http.post(PREDICT, content=good, headers=OCTET)
    http.post(PREDICT, content=b"junk", headers=OCTET)
    http.post("/v1/models/whatever-you-like/predict", content=good, headers=OCTET)
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'daonet_requests_total{model="digits-mlp",status="200"}' in text
    assert 'daonet_requests_total{model="digits-mlp",status="400"}' in text
    assert 'daonet_requests_total{model="unknown",status="404"}' in text
    assert "whatever-you-like" not in text  # labels never take client-chosen strings
    assert 'daonet_batch_size_count{model="digits-mlp"}' in text
    assert 'daonet_request_latency_seconds_bucket{le="0.001",model="digits-mlp"}' in text


# -- API keys ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def auth_server(start_server, serve_digits_bundle):
    server = start_server(ServerConfig(bundles=[serve_digits_bundle.server], api_key_hashes=api_key_hashes()))
    return server.url, API_KEYS


@pytest.mark.parametrize("headers,status", API_KEY_CASES)
def test_api_key(auth_server, good, headers, status):
    url, keys = auth_server
    with httpx.Client(base_url=url) as http:
        r = http.post(PREDICT, content=good, headers={**OCTET, **headers})
        assert r.status_code == status, r.text
        if status == 401:
            assert r.json()["error"] == "unauthorized" and "X-API-Key" in r.json()["detail"]
            assert r.headers["www-authenticate"] == "Bearer"
            assert http.get("/v1/models").status_code == 401
        assert http.get("/v1/health").status_code == 200  # probes need no key
        r = http.post(PREDICT, content=good, headers={**OCTET, "X-API-Key": keys["generated"]})
        assert r.status_code == 200


def test_key_hashes_and_config_validation(tmp_path):
    k1, k2 = "k1-0123456789abcdefghijkl", "k2-0123456789abcdefghijkl"
    h = hash_api_key(k1)
    assert h.startswith("sha256$") and k1 not in h
    v = ApiKeyVerifier([h, hash_api_key(k2)])
    assert v.verify(k1) and v.verify(k2) and v.verify(k2) and not v.verify("k3") and not v.verify(None)
    with pytest.raises(ConfigError, match="never the key itself"):
        ServerConfig(bundles=[tmp_path], api_key_hashes=["plaintext-key"]).validate()
    with pytest.raises(ConfigError, match="both a certificate"):
        ServerConfig(bundles=[tmp_path], ssl_certfile=tmp_path / "c.pem").validate()
    with pytest.raises(ConfigError, match="no bundle"):
        ServerConfig().validate()
    with pytest.raises(ConfigError, match="max_batch_size"):
        ServerConfig(bundles=[tmp_path], max_batch_size=0).validate()


def test_hash_key_cli_output_verifies():
    runner = CliRunner()
    r = runner.invoke(cli_app, ["hash-key"])
    assert r.exit_code == 0, r.output
    lines = dict(line.split(":", 1) for line in r.stdout.splitlines() if line.startswith(("key:", "hash:")))
    key, digest = lines["key"].split()[0], lines["hash"].strip()
    assert ApiKeyVerifier([digest]).verify(key)
    r = runner.invoke(cli_app, ["hash-key", "--stdin"], input="my chosen key, long and random\n")
    assert r.exit_code == 0 and "my chosen key" not in r.stdout
    digest = r.stdout.split("hash:")[1].strip()
    assert digest.startswith("sha256$") and ApiKeyVerifier([digest]).verify("my chosen key, long and random")


# -- TLS -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_server(start_server, serve_digits_bundle, tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("tls")
    certfile, keyfile, cafile = d / "server.pem", d / "server.key", d / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(certfile)
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(certfile, append=True)
    cert.private_key_pem.write_to_path(keyfile)
    ca.cert_pem.write_to_path(cafile)
    config = ServerConfig(bundles=[serve_digits_bundle.server], ssl_certfile=certfile, ssl_keyfile=keyfile)
    server = start_server(config.validate(), ssl_certfile=certfile, ssl_keyfile=keyfile)
    assert server.url.startswith("https://")
    return server.url, cafile


def test_tls(tls_server, good):
    url, cafile = tls_server
    import ssl

    with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(cafile))) as http:
        assert_still_serving(http, good)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"), httpx.Client(base_url=url) as http:
        http.get("/v1/health")
    with pytest.raises(httpx.HTTPError), httpx.Client(base_url=url.replace("https", "http")) as http:
        http.get("/v1/health")  # no plaintext on the TLS port


# -- the micro-batcher on its own (deterministic: all items are queued before the collector runs) ------------
def test_batcher_batches_concurrent_items_in_order():
    sizes: list[int] = []

    def double(items: list[int]) -> list[int]:
        return [2 * i for i in items]

    async def main():
        b = MicroBatcher(double, max_batch_size=4, max_wait_ms=0, on_batch=lambda n, s: sizes.append(n))
        try:
            return await asyncio.gather(*(b.submit(i) for i in range(10)))
        finally:
            await b.aclose()

    assert asyncio.run(main()) == [2 * i for i in range(10)]
    assert sizes == [4, 4, 2]


def test_batcher_survives_a_failing_batch_and_refuses_after_close():
    calls = []

    def fn(items):
        calls.append(list(items))
        if -1 in items:
            raise ValueError("bad batch")
        return items

    async def main():
        b = MicroBatcher(fn, max_batch_size=8, max_wait_ms=1)
        results = await asyncio.gather(b.submit(-1), b.submit(2), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)
        assert await b.submit(3) == 3
        await b.aclose()
        with pytest.raises(BatcherClosedError):
            await b.submit(4)

    asyncio.run(main())
    assert calls == [[-1, 2], [3]]


def test_registry_refuses_two_bundles_with_one_model_id(serve_digits_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(serve_digits_bundle.server, copy)
    from daonet.errors import BundleError

    with pytest.raises(BundleError, match="two bundles have model id 'digits-mlp'"):
        ModelRegistry.load([serve_digits_bundle.server, copy])


def test_server_process_serves_and_stops_cleanly(serve_digits_bundle, good):
    """What the demo uses: the server in a child process on a free port, stopped with SIGTERM."""
    from daonet.server.launch import ServerProcess

    server = ServerProcess(ServerConfig(bundles=[serve_digits_bundle.server], port=0, log_level="warning"))
    with server:
        with httpx.Client(base_url=server.url) as http:
            assert_still_serving(http, good)
    assert server.proc is not None and server.proc.returncode is not None
