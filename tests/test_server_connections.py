"""Connection-level defences on real loopback sockets: bodies left unread close their connection, the
connection budget is shared fairly between addresses, and connections over a cap get an HTTP answer.

Attacking addresses are other loopback addresses (127.0.0.2, ...): Linux routes all of 127/8 to lo."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from server_cases import read_until_closed

from daonet.device import DeviceModel, RandomMasks
from daonet.server.config import ServerConfig, generate_api_key, hash_api_key
from daonet.server.limits import ConnectionLimits, _Guard

PREDICT = "/v1/models/digits-mlp/predict"
KEY = generate_api_key()


@pytest.fixture(scope="module")
def good(serve_digits_bundle, serve_digits_run) -> bytes:
    device = DeviceModel.load(serve_digits_bundle.device)
    return device.encode(serve_digits_run.dataset.x_test[0], RandomMasks(0)).data


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    return sock


def _head(length: int, key: str = KEY, path: str = PREDICT) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\nX-API-Key: {key}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _trickle_until_closed(sock: socket.socket, seconds: float) -> float | None:
    """Send one body byte every 0.1 s; the seconds until the server closed, or None if it did not."""
    t0 = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - t0 < seconds:
        try:
            sock.sendall(b"\0")
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - t0
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - t0
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - t0
    return None


@pytest.fixture(scope="module")
def patient(start_server, serve_digits_bundle):
    """Long header/body/keep-alive timeouts (5 s), so only closing after an unread body can end a test early."""
    config = ServerConfig(bundles=[serve_digits_bundle.server], api_key_hashes=[hash_api_key(KEY)],
                          header_timeout_s=5, body_timeout_s=5, keep_alive_timeout_s=5)
    return start_server(config)


@pytest.mark.parametrize("case", ["413 by Content-Length", "401 wrong key", "404 unknown model", "405 method"])
def test_an_answer_that_leaves_the_body_unread_closes_the_connection(patient, case):
    """A client trickling the rest of an unread body byte by byte must not hold the connection open."""
    head = {"413 by Content-Length": _head(10_000_000), "401 wrong key": _head(1000, key="wrong"),
            "404 unknown model": _head(1000, path="/v1/models/nope/predict"),
            "405 method": _head(1000, path="/v1/health")}[case]
    status = case.split()[0].encode()
    with _connect(patient.port) as sock:
        sock.sendall(head + b"\0" * 10)
        sock.settimeout(5)
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
        assert b"connection: close" in answer.lower(), answer[:400]
        closed_after = _trickle_until_closed(sock, 3.0)
    assert closed_after is not None and closed_after < 3.0


def test_a_fully_read_body_keeps_the_connection_alive(patient, good):
    with _connect(patient.port) as sock:
        for _ in range(2):  # two requests on one connection
            sock.sendall(_head(len(good)) + good)
            sock.settimeout(5)
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" not in answer.lower(), answer[:300]


def test_the_budget_is_shared_so_a_few_addresses_under_their_cap_cannot_fill_it():
    """Eight addresses each opening their whole per-address cap (128) against 1000 connections: before, they
    filled the server; now each address's share shrinks as it fills and the last tenth waits for new addresses."""
    guard = _Guard(ConnectionLimits(max_connections=1000, max_connections_per_client=128))
    held = {f"10.0.0.{i}": sum(guard.admit(f"10.0.0.{i}") for _ in range(128)) for i in range(8)}
    assert guard.total <= 900, held  # the last tenth stays for addresses with no connection
    assert all(n >= 4 for n in held.values()) and max(held.values()) <= 128
    before = guard.total
    fresh = sum(guard.admit(f"10.1.{i // 256}.{i % 256}") for i in range(1200))  # one each from new addresses
    assert fresh == 1000 - before and guard.total == 1000  # new addresses get every slot, the reserve included


def test_a_fresh_address_is_served_while_other_addresses_hold_all_they_may(start_server, serve_digits_bundle, good):
    config = ServerConfig(bundles=[serve_digits_bundle.server], api_key_hashes=[hash_api_key(KEY)],
                          header_timeout_s=10, max_connections=20, max_connections_per_client=8)
    server = start_server(config)
    held: list[socket.socket] = []
    try:
        for attacker in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            for _ in range(8):  # 3 x 8 = 24 > 20: before, these three filled the server
                held.append(_connect(server.port, attacker))
        time.sleep(0.3)
        with httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address="127.0.0.5")) as http:
            r = http.post(PREDICT, content=good, headers={"Content-Type": "application/octet-stream",
                                                          "X-API-Key": KEY})
        assert r.status_code == 200, r.text
    finally:
        for s in held:
            s.close()


def test_a_connection_over_the_cap_gets_503_with_retry_after(start_server, serve_digits_bundle):
    config = ServerConfig(bundles=[serve_digits_bundle.server], header_timeout_s=10, max_connections_per_client=3)
    server = start_server(config)
    idle = [_connect(server.port, "127.0.0.6") for _ in range(3)]
    try:
        time.sleep(0.2)
        with _connect(server.port, "127.0.0.6") as extra:
            extra.sendall(b"GET /v1/health HTTP/1.1\r\nHost: t\r\n\r\n")
            closed, got = read_until_closed(extra, 5)
        assert closed and got.startswith(b"HTTP/1.1 503"), got[:200]
        head, _, body = got.partition(b"\r\n\r\n")
        assert b"retry-after: 2" in head.lower() and b"connection: close" in head.lower()
        assert b'"too_many_connections"' in body and b"retry" in body
        with _connect(server.port, "127.0.0.6") as silent:  # sends nothing: dropped, holds nothing for long
            closed, got = read_until_closed(silent, 5)
        assert closed and got == b""
    finally:
        for s in idle:
            s.close()
    time.sleep(0.2)
    assert httpx.get(f"{server.url}/v1/health").status_code == 200  # the address's connections were released


def test_rate_limited_wrong_keys_close_their_connection(start_server, serve_digits_bundle):
    """Past the failed-auth limit every guess costs the guesser a new connection (and the server no routing)."""
    config = ServerConfig(bundles=[serve_digits_bundle.server], api_key_hashes=[hash_api_key(KEY)],
                          auth_failures_per_minute=2)
    server = start_server(config)
    with httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address="127.0.0.7")) as http:
        codes = [http.get("/v1/models", headers={"X-API-Key": "wrong"}) for _ in range(3)]
    assert [r.status_code for r in codes] == [401, 401, 429]
    assert "connection" not in codes[0].headers and codes[2].headers["connection"] == "close"
    assert codes[2].json()["error"] == "too_many_failed_authentications" and int(codes[2].headers["retry-after"]) >= 1


def test_an_address_that_keeps_earning_413s_is_throttled_at_accept_and_others_are_not(start_server,
                                                                                     serve_digits_bundle, good):
    """More than STRIKE_BURST oversized bodies in a burst: the address's next connections are dropped unanswered
    (a few a second still get through), while another address is served as before."""
    from daonet.server.limits import STRIKE_BURST

    server = start_server(ServerConfig(bundles=[serve_digits_bundle.server], api_key_hashes=[hash_api_key(KEY)]))

    def oversized(source: str) -> bytes:
        try:
            with _connect(server.port, source) as sock:
                sock.sendall(_head(10_000_000))
                return read_until_closed(sock, 3)[1]
        except (ConnectionResetError, BrokenPipeError):
            return b""

    answers = [oversized("127.0.0.9") for _ in range(STRIKE_BURST + 10)]
    assert answers[0].startswith(b"HTTP/1.1 413")
    later = [oversized("127.0.0.9") for _ in range(10)]
    assert sum(a == b"" for a in later) >= 5, [a[:20] for a in later]  # dropped at accept, no answer
    with httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address="127.0.0.10")) as http:
        r = http.post(PREDICT, content=good, headers={"Content-Type": "application/octet-stream", "X-API-Key": KEY})
    assert r.status_code == 200, r.text
