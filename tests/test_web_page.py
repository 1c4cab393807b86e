"""The page of ``daonet serve --web`` in real Chromium (Debian's, driven by Playwright), against a real server.

Every request the page makes is recorded: the predict body must be a valid wire v1 payload and no request
may carry the raw pixels; the page's payload and answer must equal the Python client's for the same image
and device key; a tampered bundle must show a clear error.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from daonet.device import Client, DeviceModel
from daonet.device.masks import KeyedMasks
from daonet.wire import decode

CHROMIUM = os.environ.get("DAONET_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEY = bytes(range(100, 132))


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (`apt-get install chromium`, done by `make setup` as "
                    "root): the web page tests need a real browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium"),
                               args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def web_url(start_server, serve_digits_bundle, serve_signal_bundle) -> str:
    from daonet.server.config import ServerConfig

    config = ServerConfig(bundles=[serve_digits_bundle.server, serve_signal_bundle.server], web=True,
                          max_wait_ms=1.0)
    return start_server(config).url


class Recorder:
    """Every request a page makes: method, URL, body."""

    def __init__(self, page) -> None:
        self.requests: list[tuple[str, str, bytes | None]] = []
        self.errors: list[str] = []  # console errors (CSP violations among them) and uncaught exceptions
        page.on("request", lambda r: self.requests.append((r.method, r.url, r.post_data_buffer)))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def predict_bodies(self) -> list[bytes]:
        return [body for method, url, body in self.requests if method == "POST" and url.endswith("/predict")]


def open_page(browser, url: str, key: bytes | None = None):
    page = browser.new_page()
    if key is not None:  # the device key as the page keeps it: hex in localStorage
        page.add_init_script(f"localStorage.setItem('daonet-device-key', '{key.hex()}')")
    rec = Recorder(page)
    response = page.goto(url)
    assert response is not None and response.status == 200
    page.wait_for_function("() => window.daonetPage && (window.daonetPage.ready || window.daonetPage.error)",
                           timeout=30000)
    return page, rec, response


def wait_answer(page) -> dict:
    page.wait_for_function("() => window.daonetPage.answer || window.daonetPage.error", timeout=30000)
    state = page.evaluate("() => ({answer: window.daonetPage.answer, error: window.daonetPage.error})")
    assert state["error"] is None, state["error"]
    return state["answer"]


def test_drawing_a_digit_gives_a_prediction_and_only_the_payload_leaves(browser, web_url, serve_digits_bundle):
    device = DeviceModel.load(serve_digits_bundle.device)
    page, rec, response = open_page(browser, web_url)
    try:
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert page.locator("#bundle-status").inner_text().startswith(device.model_id)
        box = page.locator("#pad").bounding_box()
        x0, y0 = box["x"], box["y"]
        page.mouse.move(x0 + 90, y0 + 60)  # a "7": a bar and a diagonal
        page.mouse.down()
        for x, y in [(150, 60), (200, 60), (170, 140), (140, 220)]:
            page.mouse.move(x0 + x, y0 + y, steps=6)
        page.mouse.up()
        answer = wait_answer(page)
        assert page.locator("#answer").inner_text() == answer["label"] and answer["label"] in device.classes
        assert "of 256" in page.locator("#sent").inner_text()
        pixels = bytes(page.evaluate("() => Array.from(window.daonetPage.input)"))
        assert len(pixels) == 64 and max(pixels) > 100  # the stroke reached the model's input

        bodies = rec.predict_bodies()
        assert len(bodies) == 1
        payload = decode(bodies[0], expected_outputs=device.n_outputs)  # valid wire v1, or this raises
        assert payload.model_version == device.version and len(bodies[0]) == answer["bytesSent"]
        origin = urlparse(web_url).netloc
        for method, url, body in rec.requests:
            assert urlparse(url).netloc == origin, f"request to another origin: {url}"
            assert method == "GET" or url.endswith("/predict"), (method, url)
            assert pixels not in (body or b"") and pixels.hex() not in url  # the raw input never travels
        assert rec.errors == []  # the page runs under its own CSP without a violation
    finally:
        page.close()


def test_page_payload_and_prediction_equal_the_python_clients(browser, web_url, serve_digits_run,
                                                              serve_digits_bundle, tmp_path):
    from PIL import Image

    device = DeviceModel.load(serve_digits_bundle.device)
    x = serve_digits_run.dataset.x_test[3]
    pixels = np.rint(x * 255).astype(np.uint8).reshape(device.input_shape)  # a real test image, as a PNG
    png = tmp_path / "digit.png"
    buf = io.BytesIO()
    Image.fromarray(pixels[0], mode="L").save(buf, format="PNG")
    png.write_bytes(buf.getvalue())

    page, rec, _ = open_page(browser, web_url, key=KEY)
    try:
        page.set_input_files("#image-file", str(png))
        answer = wait_answer(page)
        assert bytes(page.evaluate("() => Array.from(window.daonetPage.input)")) == pixels.tobytes()
        assert page.evaluate("() => localStorage.getItem('daonet-device-key')") == KEY.hex()
        with Client(web_url, device, masks=KeyedMasks(KEY, model_version=device.version)) as client:
            expected = client.predict(pixels)
        assert rec.predict_bodies() == [expected.payload.data]  # byte for byte
        assert answer["label"] == expected.label and answer["index"] == expected.index
        np.testing.assert_allclose(answer["probabilities"], expected.probabilities, atol=1e-6)
        assert all(KEY.hex() not in (url + (body or b"").hex()) for _, url, body in rec.requests)  # key stays
    finally:
        page.close()


def test_ecg_csv_in_the_page(browser, web_url, serve_signal_bundle, tmp_path):
    from daonet.data import load_dataset

    device = DeviceModel.load(serve_signal_bundle.device)
    signal = load_dataset("ecg5000").x_test[7].reshape(-1)
    csv = tmp_path / "beat.csv"
    csv.write_text(",".join(repr(float(v)) for v in signal) + "\n")
    page, rec, _ = open_page(browser, web_url, key=KEY)
    try:
        page.select_option("#model", label=f"{device.model_id} ({device.version})")
        page.wait_for_function("() => window.daonetPage.ready && window.daonetPage.device.modelId === "
                               f"'{device.model_id}'", timeout=30000)
        page.set_input_files("#csv-file", str(csv))
        answer = wait_answer(page)
        expected, _ = device.encode_certified(signal.astype(np.float32),
                                              KeyedMasks(KEY, model_version=device.version))
        assert rec.predict_bodies() == [expected.data]
        assert answer["label"] in device.classes
    finally:
        page.close()


def test_tampered_bundle_shows_a_clear_error(browser, web_url):
    page = browser.new_page()

    def tamper(route) -> None:
        response = route.fetch()
        body = bytearray(response.body())
        body[-5] ^= 0x01  # one bit of one weight
        route.fulfill(response=response, body=bytes(body))

    page.route("**/device-bundles/*/first_layer.safetensors", tamper)
    try:
        page.goto(web_url)
        page.wait_for_function("() => window.daonetPage && window.daonetPage.error", timeout=30000)
        error = page.locator("#error")
        assert error.is_visible()
        assert "does not match its manifest" in error.inner_text() and "BundleError" in error.inner_text()
        assert page.locator("#predict").is_disabled()
        assert page.evaluate("() => window.daonetPage.device") is None
    finally:
        page.close()


def test_web_routes_are_read_only_and_confined(web_url, serve_digits_bundle):
    import httpx

    device = DeviceModel.load(serve_digits_bundle.device)
    index = httpx.get(f"{web_url}/device-bundles/index.json").json()["bundles"]
    assert {b["model_id"] for b in index} == {device.model_id, "ecg5000-cnn1d"}
    base = f"{web_url}/device-bundles/{device.model_id}"
    weights = httpx.get(f"{base}/first_layer.safetensors")
    assert weights.content == (serve_digits_bundle.device / "first_layer.safetensors").read_bytes()
    assert "default-src 'none'" in weights.headers["content-security-policy"]
    assert httpx.get(f"{base}/../server/manifest.json").status_code == 404
    assert httpx.get(f"{web_url}/device-bundles/{device.model_id}/%2e%2e%2fserver%2fmanifest.json").status_code == 404
    assert httpx.get(f"{web_url}/web/__init__.py").status_code == 404
    assert httpx.post(f"{base}/manifest.json").status_code == 405


def test_web_needs_the_device_half_next_to_the_server_bundle(serve_digits_bundle, tmp_path):
    from daonet.errors import BundleError
    from daonet.server.app import create_app
    from daonet.server.config import ServerConfig

    lonely = tmp_path / "only" / "server"
    shutil.copytree(serve_digits_bundle.server, lonely)
    with pytest.raises(BundleError, match="device/ half next to server/"):
        create_app(ServerConfig(bundles=[lonely], web=True))
