"""The device client over real HTTP: same accuracy as in-process, version checks, errors, the predict CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from daonet.cli import app as cli_app
from daonet.device import Client, DeviceModel, RandomMasks, ServerError
from daonet.errors import DaonetError, VersionMismatchError
from daonet.server.config import ServerConfig, hash_api_key
from daonet.server.model import ServerModel

RIGHT = "right-key-0123456789abcdef"


def test_http_accuracy_equals_in_process(server_url, serve_digits_bundle, serve_digits_run):
    """Same inputs, same masks: predictions over HTTP (micro-batched) equal ServerModel.predict_bytes."""
    x, y = serve_digits_run.dataset.x_test, serve_digits_run.dataset.y_test
    with Client(server_url, serve_digits_bundle.device, masks=RandomMasks(7)) as client:
        preds = client.predict_many(x, concurrency=16)
    device, server = DeviceModel.load(serve_digits_bundle.device), ServerModel.load(serve_digits_bundle.server)
    payloads = [p for p, _ in device.encode_many_certified(x, RandomMasks(7))]  # the client enforces the policy
    probs = server.predict_bytes([p.data for p in payloads])
    assert [p.payload.data for p in preds] == [p.data for p in payloads]  # the very same bytes were sent
    assert all(p.certificate is not None and p.certificate.identifiable == 0 for p in preds)
    http_acc = float(np.mean([p.index for p in preds] == y))
    assert http_acc == float(np.mean(probs.argmax(1) == y))
    assert http_acc > 0.5  # a real model, not chance
    np.testing.assert_allclose(np.stack([p.probabilities for p in preds]), probs, atol=1e-5)
    p = preds[0]
    assert p.payload_bytes == len(payloads[0].data) and p.nnz == payloads[0].nnz and p.n_outputs == 256
    assert p.model_id == "digits-mlp" and p.label == str(p.index)


def test_predict_with_explicit_mask(server_url, serve_digits_bundle, serve_digits_run):
    x = serve_digits_run.dataset.x_test[3]
    mask = np.random.default_rng(3).random(256) >= 0.5
    device, server = DeviceModel.load(serve_digits_bundle.device), ServerModel.load(serve_digits_bundle.server)
    expected = server.predict_bytes([device.encode_certified(x, mask=mask)[0].data])[0]
    with Client(server_url, serve_digits_bundle.device) as client:
        pred = client.predict(x, mask=mask)
    np.testing.assert_allclose(pred.probabilities, expected, atol=1e-5)


def test_signal_model_over_http(server_url, serve_signal_bundle):
    from daonet.data import load_dataset

    x = load_dataset("ecg5000").x_test[0]  # a real heartbeat
    with Client(server_url, serve_signal_bundle.device) as client:
        pred = client.predict(x)
    assert pred.label in ("1", "2", "3", "4", "5") and pred.probabilities.shape == (5,)


def _edited_bundle(pair, dst, **changes):
    """Another export of the model: device manifest fields changed, version recomputed from the new content."""
    import shutil

    from daonet.bundle import seal_bundle

    shutil.copytree(pair.root, dst)
    manifest = json.loads((dst / "device" / "manifest.json").read_text())
    manifest.update(changes)
    (dst / "device" / "manifest.json").write_text(json.dumps(manifest))
    seal_bundle(dst)
    return dst / "device"


def test_client_refuses_a_server_with_another_version(server_url, serve_digits_bundle, tmp_path):
    device = _edited_bundle(serve_digits_bundle, tmp_path / "other", classes=list("abcdefghij"))
    other = DeviceModel.load(device).version
    server_version = DeviceModel.load(serve_digits_bundle.device).version
    with Client(server_url, device) as client, pytest.raises(VersionMismatchError) as err:
        client.predict(np.zeros((1, 8, 8), np.float32))
    assert other in str(err.value) and server_version in str(err.value)
    assert err.value.expected == server_version and err.value.got == other


def test_client_refuses_a_server_without_the_model(server_url, serve_digits_bundle, tmp_path):
    other = _edited_bundle(serve_digits_bundle, tmp_path / "other", model_id="cats-vs-dogs")
    with Client(server_url, other) as client, pytest.raises(VersionMismatchError, match="does not serve model"):
        client.predict_many(np.zeros((3, 1, 8, 8), np.float32))


def test_client_errors_are_clear(server_url, serve_digits_bundle, start_server):
    with (pytest.raises(DaonetError, match="cannot connect"),
          Client("http://127.0.0.1:9", serve_digits_bundle.device) as c):
        c.check_server()
    with pytest.raises(DaonetError, match="http:// or https://"):
        Client("127.0.0.1:8000", serve_digits_bundle.device)
    server = start_server(ServerConfig(bundles=[serve_digits_bundle.server], api_key_hashes=[hash_api_key(RIGHT)]))
    with Client(server.url, serve_digits_bundle.device, api_key="wrong") as c, pytest.raises(ServerError) as err:
        c.check_server()
    assert err.value.status == 401 and err.value.error == "unauthorized"
    with Client(server.url, serve_digits_bundle.device, api_key=RIGHT) as c:
        assert c.predict(np.zeros(64, np.float32)).probabilities.shape == (10,)
    with Client(server_url, serve_digits_bundle.device) as c, pytest.raises(DaonetError, match="input has shape"):
        c.predict(np.zeros(10))  # a bad input never reaches the network


def test_client_imports_without_torch_or_server_framework():
    code = ("import sys, daonet.device; from daonet.device import Client; "
            "bad = [m for m in ('torch', 'fastapi', 'starlette', 'uvicorn') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the predict CLI -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def input_files(tmp_path_factory, serve_digits_run):
    d = tmp_path_factory.mktemp("inputs")
    x = serve_digits_run.dataset.x_test[:3]
    pixels = (x * 255).round().astype(np.uint8)
    np.save(d / "one.npy", x[0])
    np.save(d / "batch.npy", x)
    Image.fromarray(pixels[0, 0], mode="L").save(d / "digit.png")
    Image.fromarray(np.repeat(pixels[1, 0][:, :, None], 3, axis=2), mode="RGB").save(d / "digit-rgb.png")
    Image.fromarray(np.zeros((28, 28), np.uint8), mode="L").save(d / "big.png")
    np.savetxt(d / "digit.csv", x[0].reshape(1, -1), delimiter=",")
    from daonet.data import load_dataset

    beats = load_dataset("ecg5000").x_test[:3, 0]  # real heartbeats, 140 samples each
    np.savetxt(d / "wave.csv", beats[:1], delimiter=",")
    np.savetxt(d / "waves.csv", beats[1:], delimiter=",")
    np.savetxt(d / "short.csv", np.zeros((1, 50)), delimiter=",")
    (d / "header.csv").write_text("a,b\n1,2\n")
    (d / "notes.txt").write_text("hello")
    return d


def _predict(*args: str):
    return CliRunner().invoke(cli_app, ["predict", *args])


def test_predict_cli_images(server_url, serve_digits_bundle, input_files):
    d = input_files
    r = _predict("--server", server_url, "--bundle", str(serve_digits_bundle.device),
                 str(d / "one.npy"), str(d / "batch.npy"), str(d / "digit.png"), str(d / "digit-rgb.png"))
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert out.count("probabilities:") == 6  # one + three + two PNGs
    assert "batch.npy[2]:" in out and "digit.png:" in out and "sent" not in out


def test_predict_cli_show_payload_and_json(server_url, serve_digits_bundle, input_files):
    r = _predict("--server", server_url, "--bundle", str(serve_digits_bundle.device), "--show-payload",
                 str(input_files / "digit.csv"))
    assert r.exit_code == 0, r.output
    assert "bytes to " in r.stdout and "of 256 outputs non-zero" in r.stdout and "44 41 4f 31" in r.stdout
    assert "no raw input" in r.stdout
    r = _predict("--server", server_url, "--bundle", str(serve_digits_bundle.device), "--json", "--show-payload",
                 str(input_files / "one.npy"))
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout.strip().splitlines()[-1])
    assert obj["n_outputs"] == 256 and obj["payload_bytes"] == len(bytes.fromhex(obj["payload_hex"]))
    assert bytes.fromhex(obj["payload_hex"])[:4] == b"DAO1" and len(obj["probabilities"]) == 10


def test_predict_cli_signals_csv(server_url, serve_signal_bundle, input_files):
    r = _predict("--server", server_url, "--bundle", str(serve_signal_bundle.device),
                 str(input_files / "wave.csv"), str(input_files / "waves.csv"))
    assert r.exit_code == 0, r.output
    assert r.stdout.count("probabilities:") == 3 and "1:" in r.stdout


@pytest.mark.parametrize("name,bundle,message", [
    ("big.png", "digits", "is 28x28 pixels; this model takes 8x8"),
    ("digit.png", "signal", "takes signals"),
    ("short.csv", "signal", "1x50 table"),
    ("header.csv", "signal", "not a numeric"),
    ("notes.txt", "digits", "unsupported input type .txt"),
    ("missing.npy", "digits", "does not exist"),
])
def test_predict_cli_refuses_bad_inputs_clearly(server_url, serve_digits_bundle, serve_signal_bundle, input_files,
                                                name, bundle, message):
    b = serve_digits_bundle if bundle == "digits" else serve_signal_bundle
    r = _predict("--server", server_url, "--bundle", str(b.device), str(input_files / name))
    assert r.exit_code == 2
    assert message in " ".join(r.output.split()), r.output


def test_predict_cli_version_mismatch_and_no_server(serve_digits_bundle, server_url, input_files, tmp_path):
    stale = _edited_bundle(serve_digits_bundle, tmp_path / "stale", classes=list("abcdefghij"))
    r = _predict("--server", server_url, "--bundle", str(stale), str(input_files / "one.npy"))
    assert r.exit_code == 2 and DeviceModel.load(stale).version in r.output
    r = _predict("--server", "http://127.0.0.1:9", "--bundle", str(serve_digits_bundle.device),
                 str(input_files / "one.npy"))
    assert r.exit_code == 2 and "cannot connect" in r.output
