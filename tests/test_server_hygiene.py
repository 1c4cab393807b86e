"""What the server tells and trusts: forwarded headers only from configured proxies, keys refused anywhere in a
URL and never logged, details in daonet's words (never the request's), --web serving the bytes verified at
start-up, and library launchers that keep uvicorn off the caller's terminal."""

from __future__ import annotations

import logging
import shutil

import httpx
import pytest
from typer.testing import CliRunner

from daonet.cli import app as cli_app
from daonet.errors import BundleError
from daonet.server.config import ConfigError, ServerConfig, generate_api_key, hash_api_key

PREDICT = "/v1/models/digits-mlp/predict"
OCTET = {"Content-Type": "application/octet-stream"}
KEY = generate_api_key()
WEIGHTS = "first_layer.safetensors"


def _access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]


# -- forwarded headers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("trusted", [False, True])
def test_forwarded_for_counts_only_from_a_configured_proxy(start_server, serve_digits_bundle, caplog, trusted):
    """From an unconfigured peer a spoofed X-Forwarded-For neither escapes the wrong-key limit nor reaches the
    access log; from a configured proxy it is the client's address (uvicorn's forwarded_allow_ips semantics)."""
    config = ServerConfig(bundles=[serve_digits_bundle.server], api_key_hashes=[hash_api_key(KEY)],
                          auth_failures_per_minute=3, forwarded_allow_ips=["127.0.0.1"] if trusted else [])
    server = start_server(config)
    with caplog.at_level(logging.INFO, logger="uvicorn.access"), httpx.Client(base_url=server.url) as http:
        codes = [http.get("/v1/models", headers={"X-API-Key": "wrong", "X-Forwarded-For": f"203.0.113.{i}"}
                          ).status_code for i in range(5)]
    lines = _access_lines(caplog)
    assert len(lines) >= 5, lines
    if trusted:
        assert codes == [401] * 5  # five clients behind the proxy, one wrong key each
        assert any("203.0.113.4" in line for line in lines), lines
    else:
        assert codes == [401] * 3 + [429] * 2  # one client: the header is ignored
        assert not any("203.0.113" in line for line in lines), lines


def test_forwarded_allow_ips_are_validated():
    with pytest.raises(ConfigError, match="not an IP address or network"):
        ServerConfig(bundles=["x"], forwarded_allow_ips=["proxy.example"]).validate()
    ServerConfig(bundles=["x"], forwarded_allow_ips=["10.0.0.0/24", "::1", "*"]).validate()
    assert ServerConfig(bundles=["x"]).uvicorn_options()["proxy_headers"] is False  # uvicorn trusts loopback else


def test_serve_takes_forwarded_allow_ips_and_refuses_a_name(serve_digits_bundle):
    r = CliRunner().invoke(cli_app, ["serve", str(serve_digits_bundle.server), "--forwarded-allow-ips",
                                     "10.0.0.1,proxy.example"])
    assert r.exit_code != 0 and "'proxy.example' is not an IP address or network" in r.output, r.output


# -- keys in URLs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    f"/v1/models/{KEY}", f"/v1/models/digits-mlp/predict?session={KEY}", f"/{KEY}/anything",
    f"/v1/health?a=1&b=x{KEY}", "/v1/health?q=%64ao_" + KEY[4:], f"/web/{KEY}.js",
])
def test_a_key_anywhere_in_the_url_is_refused_and_never_logged(http, caplog, url):
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        r = http.get(url)
    assert r.status_code == 401 and r.json()["error"] == "key_in_url", r.text
    assert KEY not in r.text and KEY[4:] not in r.text
    lines = _access_lines(caplog)
    assert lines and not any(KEY[4:] in line for line in lines), lines


def test_key_shaped_text_is_needed_for_a_refusal(http):
    assert http.get("/v1/health?note=dao_short").status_code == 200
    assert http.get("/v1/models/dao_x").status_code == 404


# -- details in daonet's words -----------------------------------------------------------------------------------
def test_error_details_never_echo_the_request(http, good_payload):
    r = http.post(PREDICT, content=good_payload, headers={"Content-Type": "text/x-client-chosen"})
    assert r.status_code == 415 and "client-chosen" not in r.text, r.text
    for r in (http.post("/v1/models/client-chosen-id/predict", content=good_payload, headers=OCTET),
              http.get("/v1/models/client-chosen-id")):
        assert r.status_code == 404 and "client-chosen" not in r.text and "digits-mlp" in r.json()["detail"]
    for r in (http.get("/v1/client-chosen"), http.delete(PREDICT)):
        detail = r.json()["detail"]
        assert r.status_code in (404, 405) and "/openapi.json" in detail and "/docs" not in detail, detail


def test_details_point_at_docs_only_when_docs_are_served(start_server, serve_digits_bundle):
    server = start_server(ServerConfig(bundles=[serve_digits_bundle.server], docs=True))
    assert "see /docs" in httpx.get(f"{server.url}/v1/nothing").json()["detail"]


def test_key_file_errors_are_daonet_worded(serve_digits_bundle, tmp_path):
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key\n")
    runner = CliRunner()
    r = runner.invoke(cli_app, ["serve", str(serve_digits_bundle.server), "--public-key", str(garbage)])
    assert r.exit_code != 0 and "not a PEM public key" in r.output, r.output
    for internal in ("ASN", "deserialize", "Traceback", "Errno"):
        assert internal not in r.output, r.output
    r = runner.invoke(cli_app, ["predict", str(tmp_path / "x.npy"), "--bundle", str(serve_digits_bundle.device),
                                "--public-key", str(tmp_path / "missing.pub")])
    assert r.exit_code != 0 and "no such file" in r.output and "daonet keygen" in r.output, r.output
    assert "Errno" not in r.output and "Traceback" not in r.output, r.output


# -- --web: the verified bytes ---------------------------------------------------------------------------------
@pytest.fixture
def bundle_copy(serve_digits_bundle, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(serve_digits_bundle.root, root)
    return root


def test_web_serves_the_bytes_verified_at_start_whatever_happens_on_disk(start_server, bundle_copy):
    server = start_server(ServerConfig(bundles=[bundle_copy / "server"], web=True))
    device = bundle_copy / "device"
    base = f"{server.url}/device-bundles/digits-mlp"
    weights, manifest = (device / WEIGHTS).read_bytes(), (device / "manifest.json").read_bytes()

    def served() -> tuple[bytes, bytes]:
        w, m = httpx.get(f"{base}/{WEIGHTS}"), httpx.get(f"{base}/manifest.json")
        assert w.status_code == m.status_code == 200, (w.text[:200], m.text[:200])
        return w.content, m.content

    assert served() == (weights, manifest)
    flipped = bytearray(weights)
    flipped[len(flipped) // 2] ^= 0xFF
    (device / WEIGHTS).write_bytes(bytes(flipped))
    (device / "manifest.json").write_bytes(manifest.replace(b'"classes"', b'"classes" '))
    assert served() == (weights, manifest)
    (device / WEIGHTS).write_bytes(weights[:100])
    assert served() == (weights, manifest)
    (device / WEIGHTS).unlink()
    (device / "manifest.json").unlink()
    assert served() == (weights, manifest)


def test_web_refuses_a_device_half_that_does_not_verify_at_start(bundle_copy):
    from daonet.server.app import create_app

    path = bundle_copy / "device" / WEIGHTS
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its manifest"):
        create_app(ServerConfig(bundles=[bundle_copy / "server"], web=True))


def test_web_404s_do_not_echo_the_request(start_server, bundle_copy):
    server = start_server(ServerConfig(bundles=[bundle_copy / "server"], web=True))
    for path in ("/web/client-chosen.js", "/device-bundles/client-chosen/manifest.json",
                 "/device-bundles/digits-mlp/client-chosen.bin"):
        r = httpx.get(server.url + path)
        assert r.status_code == 404 and "client-chosen" not in r.text, r.text


# -- library use is quiet --------------------------------------------------------------------------------------
def test_library_launchers_keep_uvicorn_off_the_terminal(serve_digits_bundle, capfd, caplog):
    """uvicorn's console handlers print INFO lines; in library use its records go through logging instead."""
    from daonet.server.app import create_app
    from daonet.server.launch import BackgroundServer, ServerProcess

    config = ServerConfig(bundles=[serve_digits_bundle.server], port=0)
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        with BackgroundServer(create_app(config), uvicorn_options=config.uvicorn_options()) as thread_server:
            assert httpx.get(f"{thread_server.url}/v1/models").status_code == 200
        with ServerProcess(config) as child:
            assert httpx.get(f"{child.url}/v1/models").status_code == 200
    out, err = capfd.readouterr()
    assert "INFO" not in out and "INFO" not in err, (out, err)
    assert any("/v1/models" in line for line in _access_lines(caplog))  # the thread server's, via logging


@pytest.fixture(scope="module")
def good_payload(serve_digits_bundle, serve_digits_run) -> bytes:
    from daonet.device import DeviceModel, RandomMasks

    device = DeviceModel.load(serve_digits_bundle.device)
    return device.encode(serve_digits_run.dataset.x_test[0], RandomMasks(0)).data
