"""The user's own data: ``npz:PATH``, ``csv:DIR`` and ``ucr:NAME`` loaders, and the whole command line
(train, export, audit, serve + predict) on a UCR set and on an ``.npz`` file this test writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from daonet.cli import app
from daonet.data import dataset_label, load_csv, load_dataset, load_npz, ucr_names
from daonet.errors import DatasetError

runner = CliRunner()


def _digits_arrays():
    """Real 8x8 digits stored the way users store images: uint8, channels-last, class names as strings."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * 255 / 16).astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    return x[:1400], d.target[:1400], x[1400:], d.target[1400:], names


def _write_ecg200_csv(folder: Path, n_train: int = 60, n_test: int = 40) -> Path:
    ds = load_dataset("ucr:ECG200")
    folder.mkdir(parents=True, exist_ok=True)
    header = "diagnosis," + ",".join(f"t{i}" for i in range(ds.input_shape[1]))
    for name, x, y in (("train.csv", ds.x_train[:n_train], ds.y_train[:n_train]),
                       ("test.csv", ds.x_test[:n_test], ds.y_test[:n_test])):
        rows = [f"{['normal', 'ischemia'][int(lbl)]}," + ",".join(f"{v:.6f}" for v in xi[0])
                for xi, lbl in zip(x, y, strict=True)]
        (folder / name).write_text(header + "\n" + "\n".join(rows) + "\n")
    return folder


# -- loaders: shapes, dtypes, labels -----------------------------------------------------------------------
def test_npz_infers_layout_dtype_and_classes(tmp_path):
    xtr, ytr, xte, yte, names = _digits_arrays()
    path = tmp_path / "digits.npz"
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, classes=names)
    ds = load_dataset(f"npz:{path}")
    assert ds.input_shape == (1, 8, 8) and ds.kind == "image"  # channels-last moved to channels-first
    assert ds.info["raw_dtype"] == "uint8" and ds.x_train.dtype == np.float32
    assert np.allclose(ds.x_train[5, 0] * 255, xtr[5, ..., 0])
    assert ds.classes[3] == "three" and ds.y_test.tolist() == yte.tolist()
    assert ds.name == "digits" and dataset_label(f"npz:{path}") == "digits"


def test_npz_uint8_grey_images_without_a_channel_axis_are_images(tmp_path):
    """(N, H, W) uint8 pixels (how MNIST-like arrays are usually saved) are one-channel images, not signals;
    the same shape in floats stays a multi-channel signal unless the file says kind=image."""
    xtr, ytr, xte, yte, _ = _digits_arrays()
    path = tmp_path / "grey.npz"
    np.savez(path, x_train=xtr[..., 0], y_train=ytr, x_test=xte[..., 0], y_test=yte)
    ds = load_npz(path)
    assert ds.kind == "image" and ds.input_shape == (1, 8, 8) and ds.info["raw_dtype"] == "uint8"
    np.savez(path, x_train=xtr[..., 0] / 255.0, y_train=ytr, x_test=xte[..., 0] / 255.0, y_test=yte)
    assert load_npz(path).kind == "signal" and load_npz(path).input_shape == (8, 8)
    assert load_npz(path, kind="image").input_shape == (1, 8, 8)


def test_npz_float_signals_and_arbitrary_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 50)).astype(np.float64)
    y = np.array(["b", "a", "c"] * 10)
    path = tmp_path / "s.npz"
    np.savez(path, x_train=x[:20], y_train=y[:20], x_test=x[20:], y_test=y[20:])
    ds = load_npz(path)
    assert ds.input_shape == (1, 50) and ds.kind == "signal" and ds.classes == ["a", "b", "c"]
    assert ds.y_train[:3].tolist() == [1, 0, 2]
    np.savez(path, x_train=x[:20].reshape(20, 2, 25), y_train=np.arange(20) % 2, x_test=x[20:].reshape(10, 2, 25),
             y_test=np.arange(10) % 2)
    assert load_npz(path).input_shape == (2, 25)


@pytest.mark.parametrize(("arrays", "match"), [
    ({"x_train": np.zeros((4, 5)), "y_train": np.zeros(4)}, r"lacks the array\(s\) x_test, y_test"),
    ({"x_train": np.zeros((4, 5)), "y_train": np.zeros(3), "x_test": np.zeros((2, 5)), "y_test": np.zeros(2)},
     "x_train has shape .* but y_train has 3 labels"),
    ({"x_train": np.zeros((4, 5)), "y_train": [0, 1, 0, 1], "x_test": np.zeros((2, 6)), "y_test": [0, 1]},
     r"x_train examples are shaped \(5,\) but x_test examples \(6,\)"),
    ({"x_train": np.where(np.arange(20).reshape(4, 5) == 13, np.nan, 1.0), "y_train": [0, 1, 0, 1],
      "x_test": np.zeros((2, 5)), "y_test": [0, 1]}, "x_train row 2, value 3 is nan"),
    ({"x_train": np.zeros((4, 5)), "y_train": [0, 1, 0, 1], "x_test": np.zeros((2, 5)), "y_test": [0, 2]},
     "y_test row 1 has label 2, which no training example has"),
    ({"x_train": np.zeros((4, 5)), "y_train": [0, 1, 0, 3], "x_test": np.zeros((2, 5)), "y_test": [0, 1],
      "classes": np.array(["a", "b", "c"])}, r"y_train row 3 has label 3, outside 0..2"),
    ({"x_train": np.zeros((4, 5)), "y_train": [0, 0, 0, 0], "x_test": np.zeros((2, 5)), "y_test": [0, 0]},
     "single class"),
    ({"x_train": np.zeros((4, 2, 3, 4, 5)), "y_train": [0, 1, 0, 1], "x_test": np.zeros((2, 2, 3, 4, 5)),
      "y_test": [0, 1]}, "got 5 axes"),
])
def test_npz_errors_name_file_row_and_problem(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
    with pytest.raises(DatasetError, match=match) as info:
        load_dataset(f"npz:{path}")
    assert str(path) in str(info.value)


def test_npz_unreadable_files(tmp_path):
    with pytest.raises(DatasetError, match="does not exist; write it with numpy.savez"):
        load_dataset(f"npz:{tmp_path / 'none.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        load_npz(tmp_path / "junk.npz")
    objs = np.empty(4, dtype=object)
    np.savez(tmp_path / "obj.npz", x_train=objs, y_train=np.zeros(4), x_test=objs, y_test=np.zeros(4))
    with pytest.raises(DatasetError, match="Python objects"):
        load_npz(tmp_path / "obj.npz")


def test_csv_reads_a_table_with_a_named_label_column(tmp_path):
    folder = _write_ecg200_csv(tmp_path / "ecg")
    ds = load_dataset(f"csv:{folder},label=diagnosis")
    ref = load_dataset("ucr:ECG200")
    assert ds.input_shape == (1, 96) and ds.kind == "signal" and ds.classes == ["ischemia", "normal"]
    assert np.allclose(ds.x_train, ref.x_train[:60], atol=1e-5)
    assert ds.info["features"][:2] == ["t0", "t1"] and len(ds.x_test) == 40
    assert dataset_label(f"csv:{folder},label=diagnosis") == "ecg"
    with pytest.raises(DatasetError, match="no label column 'label' in the header .*csv:DIR,label=COLUMN"):
        load_csv(folder)


def test_csv_numeric_labels_sort_as_numbers(tmp_path):
    rows = "\n".join(f"{lbl},{i},{i * 2}" for i, lbl in enumerate([10, 2, 10, 2, 1]))
    (tmp_path / "train.csv").write_text("label,a,b\n" + rows + "\n")
    (tmp_path / "test.csv").write_text("label,a,b\n2,0,1\n\n10,1,1\n")  # a blank line is skipped
    ds = load_csv(tmp_path)
    assert ds.classes == ["1", "2", "10"] and ds.y_test.tolist() == [1, 2]


@pytest.mark.parametrize(("train", "match"), [
    ("label,a,b\n0,1,2\n1,3\n", r"train.csv row 3: 2 fields, the header has 3"),
    ("label,a,b\n0,1,2\n1,3,oops\n", r"train.csv row 3, column 'b': 'oops' is not a number"),
    ("label,a,b\n0,1,2\n1,3,nan\n", r"train.csv row 3, column 'b': 'nan' is not a finite number"),
    ("", r"train.csv is empty"),
    ("label,a,b\n", r"train.csv has a header but no examples"),
    ("label\n0\n1\n", "no feature columns"),
])
def test_csv_errors_name_file_row_and_problem(tmp_path, train, match):
    (tmp_path / "train.csv").write_text(train)
    (tmp_path / "test.csv").write_text("label,a,b\n0,1,2\n")
    with pytest.raises(DatasetError, match=match):
        load_dataset(f"csv:{tmp_path}")


def test_csv_needs_both_files_and_the_same_columns(tmp_path):
    with pytest.raises(DatasetError, match="is not a directory"):
        load_dataset(f"csv:{tmp_path / 'nope'}")
    (tmp_path / "train.csv").write_text("label,a,b\n0,1,2\n1,2,3\n")
    with pytest.raises(DatasetError, match="test.csv does not exist"):
        load_csv(tmp_path)
    (tmp_path / "test.csv").write_text("label,a,c\n0,1,2\n")
    with pytest.raises(DatasetError, match="column 2 is 'b' in train.csv, 'c' in test.csv"):
        load_csv(tmp_path)


def test_ucr_any_shipped_set():
    names = ucr_names()
    assert {"ECG200", "ECG5000", "ECGFiveDays"} <= set(names)
    ds = load_dataset("ucr:ECGFiveDays")
    assert ds.input_shape == (1, 136) and ds.n_classes == 2 and (len(ds.x_train), len(ds.x_test)) == (23, 861)
    assert load_dataset("ucr:ecg200").name == "ecg200"  # any case
    with pytest.raises(DatasetError, match="did you mean ECG200"):
        load_dataset("ucr:ECG2000")
    with pytest.raises(DatasetError, match="row 1, column .*equal-length series"):
        load_dataset("ucr:AllGestureWiimoteX")  # a varying-length set, NaN-padded
    with pytest.raises(DatasetError, match="or your own data as npz:PATH, csv:DIR or ucr:NAME"):
        load_dataset("heartbeats")


# -- the command line, end to end --------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, (res.output, res.exception)
    return res.output


@pytest.fixture(scope="module")
def own_bundles(tmp_path_factory, one_torch_thread):
    """Two models trained and exported by the CLI: a cnn1d on ``ucr:ECG200`` and an mlp on an ``.npz``."""
    root = tmp_path_factory.mktemp("own-data")
    xtr, ytr, xte, yte, names = _digits_arrays()
    npz = root / "my-digits.npz"
    np.savez(npz, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, classes=names)
    specs = {"ucr": ("ucr:ECG200", "cnn1d", ["--model-opt", "stem=8", "--model-opt", "width=8", "--epochs", "4",
                                             "--batch-size", "16"]),
             "npz": (f"npz:{npz}", "mlp", ["--model-opt", "hidden=64", "--model-opt", "hidden2=32", "--epochs", "6"])}
    out = {}
    for key, (spec, model, extra) in specs.items():
        run, bundle = root / f"run-{key}", root / f"bundle-{key}"
        _cli("train", "--dataset", spec, "--model", model, "--drop-rate", "0.5", *extra, "--out", str(run))
        text = _cli("export", str(run), "--out", str(bundle))
        out[key] = (spec, run, bundle, text)
    return out


def test_train_and_export_own_data(own_bundles):
    spec, run, bundle, text = own_bundles["ucr"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == "ecg200" and metrics["n_train"] == 100
    assert metrics["test_accuracy"]["mean"] > 0.55  # two classes, 64% majority; 4 epochs of a tiny net
    assert "exported ecg200-cnn1d" in text  # a model id made from the spec, safe in a URL
    spec, run, bundle, text = own_bundles["npz"]
    assert "exported my-digits-mlp" in text
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"]["mean"] > 0.5  # 10 classes
    manifest = json.loads((bundle / "device" / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [1, 8, 8] and manifest["input"]["raw_dtype"] == "uint8"
    assert manifest["classes"][:2] == ["zero", "one"]


@pytest.mark.parametrize("key", ["ucr", "npz"])
def test_audit_own_data(own_bundles, tmp_path, key):
    spec, _, bundle, _ = own_bundles[key]
    _cli("audit", str(bundle), "--dataset", spec, "--budget", "quick", "--attacks", "min_norm", "--n-test", "20",
         "--public-size", "50", "--threads", "1", "--out", str(tmp_path))
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["metric"] == ("corr" if key == "ucr" else "ssim")
    assert {"min_norm", "class_prior"} <= set(report["attacks"])
    assert (tmp_path / "report.html").stat().st_size > 1000


def test_serve_and_predict_own_data(own_bundles, tmp_path):
    """`daonet serve` in its own process with both bundles; `daonet predict` sends real test inputs."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "from daonet.cli import main; main()", "serve",
           *(str(b[2] / "server") for b in own_bundles.values()), "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v1/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)
        assert sorted(m["model_id"] for m in httpx.get(f"{url}/v1/models").json()["models"]) == [
            "ecg200-cnn1d", "my-digits-mlp"]
        for key in ("ucr", "npz"):
            spec, _, bundle, _ = own_bundles[key]
            ds = load_dataset(spec)
            x = ds.x_test[:10]
            if ds.info["raw_dtype"] == "uint8":
                x = np.round(x * 255).astype(np.uint8)
            np.save(tmp_path / f"{key}.npy", x)
            output = _cli("predict", str(tmp_path / f"{key}.npy"), "--server", url, "--bundle",
                          str(bundle / "device"), "--json")
            rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
            assert len(rows) == 10
            assert all(r["label"] in ds.classes and abs(sum(r["probabilities"]) - 1) < 1e-3 for r in rows)
            hits = [ds.classes.index(r["label"]) == y for r, y in zip(rows, ds.y_test[:10], strict=True)]
            assert np.mean(hits) >= 0.5
    finally:
        proc.terminate()
        proc.wait(timeout=10)
