"""Per-feature preprocessing in the device bundle, on a real table (scikit-learn's breast-cancer data, 30 columns
in different units): per-column scaling fitted on the training split beats one mean/std for all columns through
the CLI; the bundle's statistics are StandardScaler's; numpy and JavaScript devices send the same bytes and the
server predicts from them; both runtimes refuse the same malformed statistics; ``daonet.split`` and
``daonet.export`` take a fitted StandardScaler and the device then takes raw rows."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from daonet.bundle import seal_bundle
from daonet.cli import app
from daonet.device import DeviceModel
from daonet.device.masks import KeyedMasks
from daonet.errors import BundleError, InputError

sklearn_datasets = pytest.importorskip("sklearn.datasets")
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "src" / "daonet" / "web" / "daonet-device.mjs"
RUNNER = ROOT / "tests" / "js" / "device_runner.mjs"
DEFAULTS = ROOT / "src" / "daonet" / "defaults"
KEY = bytes.fromhex("a5" * 32)
# measured (seed 0, 20 epochs, p=0.5, 5 mask draws): one mean/std 0.901, per column 0.958. The test asks for
# half that gap, so it holds across platforms' float differences but fails if per-column scaling is not applied.
MIN_GAIN = 0.025
runner = CliRunner()


def _node() -> str | None:
    node = shutil.which("node")
    if node is None:
        return None
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    return node if out.startswith("v") and int(out[1:].split(".")[0]) >= 18 else None


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> dict:
    """The breast-cancer table as csv:DIR (train.csv / test.csv, a stratified 75/25 split)."""
    data = sklearn_datasets.load_breast_cancer()
    xtr, xte, ytr, yte = train_test_split(data.data, data.target, test_size=0.25, random_state=0,
                                          stratify=data.target)
    folder = tmp_path_factory.mktemp("breast-cancer")
    names = [n.replace(" ", "_") for n in data.feature_names]
    for split, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        with open(folder / f"{split}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([*names, "label"])
            writer.writerows([*map(repr, map(float, row)), data.target_names[label]]
                             for row, label in zip(x, y, strict=True))
    return {"dir": folder, "x_train": xtr.astype(np.float32), "x_test": xte.astype(np.float32), "y_test": yte,
            "classes": list(data.target_names)}


def _train(folder: Path, out: Path, normalize: str) -> float:
    res = runner.invoke(app, ["train", "--dataset", f"csv:{folder}", "--model", "mlp", "--drop-rate", "0.5",
                              "--epochs", "20", "--normalize", normalize, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads((out / "metrics.json").read_text())["test_accuracy"]["mean"]


@pytest.fixture(scope="module")
def runs(table, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bc-runs")
    acc = {mode: _train(table["dir"], root / mode, mode) for mode in ("channel", "auto")}
    res = runner.invoke(app, ["export", str(root / "auto"), "--out", str(root / "bundle")])
    assert res.exit_code == 0, res.output
    return {"acc": acc, "bundle": root / "bundle"}


def test_per_column_scaling_beats_one_mean_through_the_cli(runs):
    acc = runs["acc"]
    assert acc["auto"] >= acc["channel"] + MIN_GAIN, acc  # auto = per column for csv: data and --model mlp


def test_bundle_carries_the_training_split_standard_scaler(runs, table):
    manifest = json.loads((runs["bundle"] / "device" / "manifest.json").read_text())
    norm = manifest["normalization"]
    assert norm["per"] == "feature" and manifest["layer"]["kind"] == "dense"
    scaler = StandardScaler().fit(table["x_train"].astype(np.float64))  # the training split only
    np.testing.assert_allclose(norm["mean"], scaler.mean_, rtol=1e-6)
    np.testing.assert_allclose(norm["std"], scaler.scale_, rtol=1e-6)
    device = DeviceModel.load(runs["bundle"])
    assert device.mean.shape == (1, 30) and device.std.shape == (1, 30)


def test_numpy_and_js_devices_send_the_same_bytes_and_the_server_predicts(runs, table):
    """Both paths a device takes: certified (the default policy drops outputs until the row cannot be solved
    for: with 30 columns that leaves fewer than 30 of 800) and uncertified (plain dropping, what training saw)."""
    from daonet.server.model import ServerModel

    node = _node()
    if node is None:
        pytest.skip("Node.js >= 18 is not installed: the JS device runtime cannot run")
    bundle = runs["bundle"]
    device = DeviceModel.load(bundle)
    xs = table["x_test"].reshape(-1, 1, 30)  # raw rows: the device scales them
    server = ServerModel.load(bundle / "server")
    for certify in (True, False):
        job = {"module": str(MODULE), "bundle": str(bundle / "device"), "key": KEY.hex(),
               "cases": [{"input": x.tolist(), "dtype": "float32", "certify": certify} for x in xs]}
        proc = subprocess.run([node, str(RUNNER)], input=json.dumps(job), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        js = json.loads(proc.stdout)
        assert "load_error" not in js, js
        masks = KeyedMasks(KEY, model_version=device.version)
        payloads = []
        for x, got in zip(xs, js["results"], strict=True):
            assert "error" not in got, got
            payload = device.encode_certified(x, masks)[0] if certify else device.encode(x, masks)
            assert got["payload"] == payload.data.hex(), f"certify={certify}: JS payload differs from Python's"
            np.testing.assert_allclose(got["activations"], device.activations(x)[0], atol=1e-5)
            payloads.append(payload.data)
        from_js = server.predict_bytes([bytes.fromhex(r["payload"]) for r in js["results"]]).argmax(1)
        np.testing.assert_array_equal(server.predict_bytes(payloads).argmax(1), from_js)
        if not certify:  # the served accuracy of plain dropping, from the device's bytes
            names = np.asarray(device.classes)[from_js]  # the bundle's class order (csv: sorts the names)
            served = float((names == np.asarray(table["classes"])[table["y_test"]]).mean())
            assert served >= runs["acc"]["channel"] + MIN_GAIN / 2, (served, runs["acc"])


def _edited_copy(bundle: Path, dest: Path, edit) -> Path:
    """A copy of ``bundle`` with its device manifest edited as JSON, then re-sealed (a consistent version), so
    only the edited field can be refused."""
    shutil.copytree(bundle / "device", dest / "device")
    (dest / "server").mkdir(parents=True)
    shutil.copy(bundle / "server" / "manifest.json", dest / "server" / "manifest.json")
    path = dest / "device" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest["normalization"])
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    seal_bundle(dest, None)
    return dest / "device"


BAD = {
    "conv-per-feature": ("ecg", lambda n: n.update(per="feature", mean=[0.0] * 140, std=[1.0] * 140),
                         "per-feature normalization needs a dense first layer"),
    "feature-count": ("table", lambda n: n.update(mean=n["mean"][:29]), "has 29 values for 30 input values"),
    "feature-std-zero": ("table", lambda n: n["std"].__setitem__(7, 0.0), "must be positive"),
    "unknown-per": ("table", lambda n: n.update(per="pixel"), "is not supported"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_both_runtimes_refuse_the_same_bad_statistics(name, runs, tmp_path):
    base, edit, words = BAD[name]
    device_dir = _edited_copy(DEFAULTS / "ecg5000-cnn1d" if base == "ecg" else runs["bundle"], tmp_path, edit)
    with pytest.raises(BundleError) as err:
        DeviceModel.load(device_dir)
    assert words in str(err.value)
    node = _node()
    if node is None:
        pytest.skip("Node.js >= 18 is not installed: the JS refusal is not checked")
    job = {"module": str(MODULE), "bundle": str(device_dir), "cases": []}
    proc = subprocess.run([node, str(RUNNER)], input=json.dumps(job), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    refused = json.loads(proc.stdout).get("load_error")
    assert refused is not None and words in refused["message"], refused
    tail = str(err.value).split("normalization", 1)[1]
    assert tail in refused["message"], (str(err.value), refused["message"])  # the same words after the field


def test_split_and_export_take_a_fitted_standard_scaler(table, tmp_path):
    torch = pytest.importorskip("torch")
    import daonet

    scaler = StandardScaler().fit(table["x_train"])
    scaled = torch.from_numpy(scaler.transform(table["x_train"]).astype(np.float32))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    reference = net(scaled[:8]).detach()
    raw = torch.from_numpy(table["x_train"][:8])
    split = daonet.split(net, drop_rate=0.0, example_input=raw, preprocess=scaler)  # now takes raw rows
    split.eval()
    torch.testing.assert_close(split(raw), reference, rtol=1e-4, atol=1e-4)
    dev, _ = daonet.export(split, tmp_path / "a", classes=table["classes"], public_data=table["x_train"])
    device = DeviceModel.load(dev)
    # inputs shaped (30,): one channel per column, so per channel is per feature (the JSON stays the old layout)
    np.testing.assert_allclose(device.mean.reshape(-1), scaler.mean_, rtol=1e-6)
    np.testing.assert_allclose(device.std.reshape(-1), scaler.scale_, rtol=1e-6)
    first = daonet.convert.first_layer(split)
    with torch.no_grad():
        want = first.activations(raw[:1]).reshape(-1).numpy()
    np.testing.assert_allclose(device.activations(table["x_train"][0])[0], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="already normalizes"):
        daonet.export(split, tmp_path / "b", classes=table["classes"], preprocess=scaler)


def test_export_takes_the_scaler_the_model_was_trained_behind(table, tmp_path):
    torch = pytest.importorskip("torch")
    import daonet

    scaler = StandardScaler().fit(table["x_train"])
    torch.manual_seed(0)
    net = daonet.split(torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)),
                       drop_rate=0.0, example_input=torch.rand(4, 30))
    dev, _ = daonet.export(net, tmp_path / "a", classes=table["classes"], preprocess=(scaler.mean_, scaler.scale_))
    device = DeviceModel.load(dev)
    first = daonet.convert.first_layer(net)
    with torch.no_grad():  # the model as trained: on scaled rows; the device: on raw rows
        want = first.activations(torch.from_numpy(scaler.transform(table["x_test"][:1]).astype(np.float32)))
    np.testing.assert_allclose(device.activations(table["x_test"][0])[0], want.reshape(-1).numpy(),
                               rtol=1e-4, atol=1e-4)
    assert not first.has_normalization  # the user's model object is unchanged


@pytest.mark.parametrize("bad, words", [
    ({"mean": np.zeros(29)}, "has 29 values"),
    ({"mean": np.zeros(30), "std": np.r_[np.ones(29), 0.0]}, "std must be > 0"),
    ({"mean": np.r_[np.zeros(29), np.nan]}, "NaN/inf"),
    ({"scale": np.ones(30)}, "takes the keys mean and std"),
    ("standard", "must be a fitted sklearn StandardScaler"),
    (StandardScaler(), "unfitted scaler"),
])
def test_preprocess_is_validated(bad, words):
    from daonet.preprocess import scaling_from

    with pytest.raises(InputError, match=words):
        scaling_from(bad, (1, 30))


def test_conv_first_layers_refuse_per_feature_statistics():
    torch = pytest.importorskip("torch")
    import daonet

    net = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 5, stride=5), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(24, 2))
    with pytest.raises(InputError, match="needs a dense first layer"):
        daonet.split(net, drop_rate=0.5, example_input=torch.rand(4, 1, 30),
                     preprocess={"mean": np.zeros(30), "std": np.ones(30)})
