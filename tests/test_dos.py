"""Denial-of-service limits on real sockets: fast key hashes, failed-auth rate limit, header/body/keep-alive
timeouts and connection caps. Timeouts here are short (0.5 s) so the tests stay fast."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from server_cases import read_until_closed
from typer.testing import CliRunner

from daonet.cli import app as cli_app
from daonet.device import DeviceModel, RandomMasks
from daonet.server.config import ApiKeyVerifier, ConfigError, ServerConfig, generate_api_key, hash_api_key

PREDICT = "/v1/models/digits-mlp/predict"
OCTET = {"Content-Type": "application/octet-stream"}
KEY = generate_api_key()


@pytest.fixture(scope="module")
def good(serve_digits_bundle, serve_digits_run) -> bytes:
    device = DeviceModel.load(serve_digits_bundle.device)
    return device.encode(serve_digits_run.dataset.x_test[0], RandomMasks(0)).data


@pytest.fixture(scope="module")
def limited(start_server, serve_digits_bundle):
    config = ServerConfig(bundles=[serve_digits_bundle.server], api_key_hashes=[hash_api_key(KEY)],
                          header_timeout_s=0.5, body_timeout_s=0.5, keep_alive_timeout_s=0.5,
                          max_connections_per_client=6, auth_failures_per_minute=5)
    server = start_server(config)
    return server.host, server.port, server.url


def _post(host, port, body: bytes, key: str = KEY) -> bytes:
    return (f"POST {PREDICT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
            f"X-API-Key: {key}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def test_old_pbkdf2_hashes_are_refused_with_a_way_out():
    old = hash_api_key("correct horse battery staple", "pbkdf2", iterations=1000)
    with pytest.raises(ConfigError, match="daonet hash-key"):
        ServerConfig(bundles=["x"], api_key_hashes=[old]).validate()
    with pytest.raises(ConfigError, match="no longer accepted"):
        ApiKeyVerifier([old])


def test_generated_keys_have_at_least_128_bits_and_short_chosen_keys_are_refused():
    key = generate_api_key()
    assert len(key.removeprefix("dao_")) * 6 >= 128
    runner = CliRunner()
    r = runner.invoke(cli_app, ["hash-key", "--stdin"], input="a chosen but long enough key!\n")
    assert r.exit_code == 0, r.output
    digest = r.stdout.split("hash:")[1].strip()
    assert digest.startswith("sha256$") and ApiKeyVerifier([digest]).verify("a chosen but long enough key!")
    r = runner.invoke(cli_app, ["hash-key", "--stdin"], input="short\n")
    assert r.exit_code != 0 and "128 bits" in r.output


def test_wrong_keys_are_rate_limited_per_client_but_the_right_key_still_works(limited, good):
    host, port, url = limited
    with httpx.Client(base_url=url) as http:
        codes = [http.post(PREDICT, content=good, headers={**OCTET, "X-API-Key": "wrong"}).status_code
                 for _ in range(8)]
        assert codes[:5] == [401] * 5 and codes[5:] == [429] * 3, codes
        r = http.post(PREDICT, content=good, headers={**OCTET, "X-API-Key": "wrong"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "too many wrong API keys" in r.json()["detail"]
        assert http.post(PREDICT, content=good, headers={**OCTET, "X-API-Key": KEY}).status_code == 200


def test_idle_connection_is_closed_after_the_header_timeout(limited):
    host, port, _ = limited
    with socket.create_connection((host, port)) as sock:
        closed, got = read_until_closed(sock, 5)
    assert closed and b"408" in got


def test_slow_headers_do_not_extend_the_header_timeout(limited):
    host, port, _ = limited
    head = _post(host, port, b"")
    t0 = time.monotonic()
    with socket.create_connection((host, port)) as sock:
        try:
            for byte in head[:40]:  # one byte every 0.1 s: 4 s in all, far beyond the 0.5 s limit
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        closed, _ = read_until_closed(sock, 2)
    assert closed and time.monotonic() - t0 < 4.0


def test_stalled_body_gets_408_and_the_connection_closes(limited, good):
    host, port, url = limited
    with socket.create_connection((host, port)) as sock:
        sock.sendall(_post(host, port, good)[:-10])  # all but the last 10 bytes, then nothing
        closed, got = read_until_closed(sock, 5)
    assert closed and got.startswith(b"HTTP/1.1 408"), got[:200]
    assert b"did not arrive" in got


def test_keep_alive_connection_is_closed_when_idle(limited, good):
    host, port, _ = limited
    with socket.create_connection((host, port)) as sock:
        sock.sendall(_post(host, port, good))
        closed, got = read_until_closed(sock, 5)
    assert closed and got.startswith(b"HTTP/1.1 200")


def test_connections_beyond_the_per_client_cap_get_503_and_others_keep_working(limited, good):
    host, port, url = limited
    idle = [socket.create_connection((host, port)) for _ in range(6)]
    try:
        with socket.create_connection((host, port)) as extra:
            extra.sendall(b"GET /v1/health HTTP/1.1\r\nHost: t\r\n\r\n")
            closed, got = read_until_closed(extra, 5)
            assert closed and got.startswith(b"HTTP/1.1 503") and b"retry-after" in got.lower(), got[:200]
    finally:
        for s in idle:
            s.close()
    time.sleep(0.2)
    with httpx.Client(base_url=url) as http:
        assert http.post(PREDICT, content=good, headers={**OCTET, "X-API-Key": KEY}).status_code == 200


def test_limits_are_validated():
    with pytest.raises(ConfigError, match="header_timeout_s"):
        ServerConfig(bundles=["x"], header_timeout_s=-1).validate()


def test_default_body_limit_fits_the_served_models(start_server, serve_digits_bundle, good):
    """Memory held by stalled bodies is connections x body limit: by default the limit is what the largest
    payload of the served models needs (JSON form, every output non-zero), not a fixed megabyte."""
    from daonet.device import DeviceModel

    server = start_server(ServerConfig(bundles=[serve_digits_bundle.server]))
    version = DeviceModel.load(serve_digits_bundle.device).version
    worst = {"model_version": version, "indices": list(range(256)), "values": [1.2345678901234567e-05] * 256,
             "n_outputs": 256}
    with httpx.Client(base_url=server.url) as http:
        assert http.post(PREDICT, json=worst).status_code == 200
        r = http.post(PREDICT, content=b"\0" * 100_000, headers=OCTET)
        assert r.status_code == 413, r.text
        limit = int(r.json()["detail"].rsplit(" ", 1)[1])
        assert 8_000 < limit <= 64 * 1024
