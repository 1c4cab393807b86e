"""``daonet bench encryption``: one run over plaintext, daonet and HE on real MNIST, and its report.

The slow test runs the real thing on 2 images: a tiny daonet model trained here on an MNIST subset (not the
1-minute demo model), both HTTP servers in their own processes, and a small HE model (hidden 32, 1 epoch on
6000 images). It checks what the report promises (every field, for every approach), never timings: this
machine is shared and wall-clock numbers are noisy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from daonet.bench import encryption, he
from daonet.cli import app
from daonet.data import load_dataset
from daonet.errors import InputError

N = 2
HE_OPTIONS = {"hidden": 32, "epochs": 1, "n_train": 6000}
STATS = ("p50", "p99", "mean", "min", "max")
MEMORY = ("device_peak_bytes", "device_setup_peak_bytes", "server_peak_bytes", "server_setup_peak_bytes",
          "server_process_rss_bytes")

runner = CliRunner()


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


@pytest.fixture(scope="module")
def tiny_bundle(mnist, tmp_path_factory) -> tuple[Path, Path]:
    """A small real daonet model (784-256-64-10, p=0.9, 1 epoch on 5000 MNIST images), exported."""
    import torch

    from daonet.exporting import export_run
    from daonet.train import TrainConfig, save_run, train

    root = tmp_path_factory.mktemp("enc-bench")
    cfg = TrainConfig(dataset="mnist", model="mlp", drop_rate=0.9, epochs=1, n_train=5000, n_test=1000,
                      model_kwargs={"hidden": 256, "hidden2": 64})
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model on busy cores: one thread is fastest
    try:
        save_run(train(cfg, progress=False), root / "run")
    finally:
        torch.set_num_threads(saved)
    export_run(root / "run", root / "bundle", model_id="tiny-mnist-mlp")  # any id: the bench reads it
    return root / "bundle", root / "run"


@pytest.fixture(scope="module")
def report(mnist, tiny_bundle, tmp_path_factory) -> tuple[dict, dict[str, Path]]:
    bundle, run = tiny_bundle
    tmp = tmp_path_factory.mktemp("enc-out")
    result = encryption.run_encryption_bench(
        N, "mnist", bundle_dir=bundle, run_dir=run, he_options={**HE_OPTIONS, "cache_dir": tmp / "he-cache"},
        repeats=2, progress=False, ds=mnist)
    return result, encryption.write_report(result, tmp / "report")


def _check_approach(name: str, a: dict) -> None:
    assert a["available"] is True, name
    assert a["n_images"] == N
    assert 0.0 <= a["accuracy"] <= 1.0, name
    assert len(a["predictions"]) == N
    for key in ("latency_s", "device_compute_s"):
        st = a[key]
        assert all(k in st for k in STATS), (name, key)
        assert 0 <= st["min"] <= st["p50"] <= st["p99"] <= st["max"], (name, key)
    assert a["latency_breakdown_s"], name
    assert a["bytes_up_per_sample"] > 0 and a["bytes_down_per_sample"] > 0, name
    assert a["setup_bytes"] >= 0 and a["setup_what"], name
    mem = a["memory"]
    assert mem["method"], name
    for key in MEMORY:
        assert key in mem, (name, key)
        assert mem[key] is None or mem[key] >= 0, (name, key)
    ref = a["reference_accuracy"]
    assert ref is None or 0.0 <= ref["value"] <= 1.0


@pytest.mark.slow
def test_report_has_every_field_for_every_approach(report, mnist):
    result, paths = report
    assert result["n_images"] == N and result["labels"] == [int(v) for v in mnist.y_test[:N]]
    assert result["raw_input_bytes"] == 784
    assert list(result["approaches"]) == ["plaintext", "daonet", "he"]
    for name in ("plaintext", "daonet"):
        _check_approach(name, result["approaches"][name])
    plain, dao = result["approaches"]["plaintext"], result["approaches"]["daonet"]
    assert plain["bytes_up_per_sample"] == 784 and plain["setup_bytes"] == 0
    assert set(dao["latency_breakdown_s"]) == {"device_encode", "http_round_trip"}
    assert dao["requests_timed"] == 2 * N  # repeats=2
    ratios = result["ratios"]
    assert ratios["daonet_over_plaintext_latency_p50"] > 0 and ratios["daonet_over_plaintext_latency_p99"] > 0
    assert ratios["bytes_up_over_raw_input"]["plaintext"] == 1.0
    sc = result["secure_computation"]
    assert sc["included"] is False and "CrypTen" in sc["framework"] and sc["reason"]
    # what was written is what was returned, and the chart and the table are there
    assert json.loads(paths["json"].read_text())["approaches"].keys() == result["approaches"].keys()
    md = paths["markdown"].read_text()
    assert md.startswith("| metric | plaintext | daonet | HE (CKKS) |") and "daonet / plaintext latency" in md
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_daonet_sends_less_than_the_raw_input(report):
    result, _ = report
    dao = result["approaches"]["daonet"]
    assert dao["bytes_up_per_sample"] < result["raw_input_bytes"]
    assert 0 < dao["nnz_per_sample"] < dao["n_outputs"] and dao["drop_rate"] == 0.9
    assert dao["setup_bytes"] > 256 * 784 * 4  # the device bundle carries the first layer's weights
    assert result["ratios"]["bytes_up_over_raw_input"]["daonet"] < 1.0


@pytest.mark.slow
def test_he_predictions_match_the_plaintext_square_model(report):
    pytest.importorskip("tenseal", reason="TenSEAL is optional: pip install 'daonet[bench]'")
    result, _ = report
    h = result["approaches"]["he"]
    _check_approach("he", h)
    assert h["agreement_with_plaintext_square_model"] == 1.0
    assert h["predictions"] == [s["plain_pred"] for s in h["details"]["samples"]]
    assert set(h["latency_breakdown_s"]) == {"key_generation_one_time", "encrypt", "server_eval", "decrypt"}
    assert h["bytes_up_per_sample"] > result["raw_input_bytes"]  # a ciphertext is far larger than the pixels
    assert h["setup_bytes"] > h["bytes_up_per_sample"]  # evaluation keys dominate
    assert result["ratios"]["he_over_daonet_latency_p50"] > 0


def test_he_row_says_how_to_install_when_tenseal_is_missing(monkeypatch, mnist, tmp_path):
    monkeypatch.setattr(he, "ts", None)
    result = encryption.run_encryption_bench(N, approaches=("he",), progress=False, ds=mnist)
    assert result["approaches"]["he"] == {"available": False, "reason": encryption.HE_MISSING}
    assert "pip install 'daonet[bench]'" in encryption.HE_MISSING
    assert result["ratios"]["he_over_daonet_latency_p50"] is None
    assert encryption.HE_MISSING in encryption.to_markdown(result)
    paths = encryption.write_report(result, tmp_path / "out")  # a report with nothing measured still renders
    assert paths["chart"].exists()


def test_bad_arguments_are_refused_before_any_work(tmp_path, mnist):
    with pytest.raises(InputError, match="only 'mnist'.*TenSEAL's MNIST recipe"):
        encryption.run_encryption_bench(N, "fashion-mnist")
    with pytest.raises(InputError, match="positive"):
        encryption.run_encryption_bench(0)
    with pytest.raises(InputError, match="more than the"):
        encryption.run_encryption_bench(len(mnist.x_test) + 1, ds=mnist)
    with pytest.raises(InputError, match="repeats"):
        encryption.run_encryption_bench(N, repeats=0)
    with pytest.raises(InputError, match="rtt-ms"):
        encryption.run_encryption_bench(N, rtt_ms=-5)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        encryption.check_out_dir(a_file)
    with pytest.raises(InputError, match="cannot write"):
        encryption.check_out_dir(a_file / "sub")


def _said(result) -> str:
    return " ".join(result.output.split())  # rich wraps long lines


def test_cli_rejects_bad_input_with_a_reason(tmp_path):
    r = runner.invoke(app, ["bench", "encryption", "--dataset", "cifar10", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "MNIST recipe" in _said(r)
    r = runner.invoke(app, ["bench", "encryption", "--n", "0", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--n must be" in _said(r)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    r = runner.invoke(app, ["bench", "encryption", "--out", str(blocker / "o")])
    assert r.exit_code == 2 and "cannot write" in _said(r)
    r = runner.invoke(app, ["bench", "--help"])
    assert r.exit_code == 0 and "encryption" in r.output


def test_plaintext_app_refuses_wrong_inputs(tiny_run):
    """The benchmark-only app answers errors like the product does (it must not crash mid-benchmark)."""
    from fastapi.testclient import TestClient

    from daonet.bench.plaintext import plaintext_app, plaintext_path

    with TestClient(plaintext_app(tiny_run, "mnist-mlp")) as c:
        ok = c.post(plaintext_path("mnist-mlp"), content=np.zeros(784, np.uint8).tobytes(),
                    headers={"Content-Type": "application/octet-stream"})
        assert ok.status_code == 200 and 0 <= ok.json()["index"] < 10
        assert c.post(plaintext_path("other"), content=b"x" * 784,
                      headers={"Content-Type": "application/octet-stream"}).status_code == 404
        assert c.post(plaintext_path("mnist-mlp"), content=b"x" * 10,
                      headers={"Content-Type": "application/octet-stream"}).status_code == 400
        assert c.post(plaintext_path("mnist-mlp"), json={"x": 1}).status_code == 415


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A barely trained MNIST-shaped run (the app checks the 784-byte input): 1 epoch on 500 images."""
    from daonet.train import TrainConfig, save_run, train

    root = tmp_path_factory.mktemp("plain-app")
    cfg = TrainConfig(dataset="mnist", model="mlp", drop_rate=0.9, epochs=1, n_train=500, n_test=100,
                      model_kwargs={"hidden": 32, "hidden2": 16})
    return save_run(train(cfg, progress=False), root / "run")
