"""Homomorphic-encryption baseline: the same MNIST task served under CKKS (TenSEAL) instead of DAO.

Why this exists: daonet's pitch (docs/design.md, "The idea") is "no keys, no ciphertext blow-up, no
polynomial activations". This module measures what encryption actually costs on this machine, so the
comparison is numbers, not adjectives.

It follows TenSEAL's documented encrypted-evaluation recipe (tutorial 4, "Encrypted Convolution on MNIST",
without the convolution): a 784-H-10 MLP whose activation is ``x*x`` (CKKS evaluates only polynomials),
the device encrypts the normalized image as one ``CKKSVector``, the server computes ``mm``, square, ``mm``
with plaintext weights, the device decrypts the 10 logits.

One deliberate, measured deviation from the tutorial: the first bias is folded into the first matrix as an
extra row, with a constant 1 appended to the input on the device. TenSEAL's ``mm`` (Halevi-Shoup diagonal
method) needs its input replicated across all slots and returns an output that is replicated too; adding a
plain bias vector afterwards (``enc.mm(W1) + b1``) adds it to the first H slots only, which breaks the
replication that the second ``mm`` reads (slots H..H+9). On random weights that alone gave logit errors of
2e-2 instead of 1e-5. With the bias row, HE and float64 plaintext logits agree to ~1e-5.

The server only ever receives the context serialized with ``save_secret_key=False``: it can compute on
ciphertexts but cannot decrypt them (``HEServer`` refuses a private context).

TenSEAL is optional (``pip install 'daonet[bench]'``): this module imports without it, and everything
that needs it raises :class:`~daonet.errors.DaonetError` with the install command. Training uses torch
(imported lazily); loading cached weights and the plaintext reference need numpy only.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DaonetError, InputError
from ..measure import PeakMemoryProbe, make_progress, stats

try:  # optional dependency: the [bench] extra
    import tenseal as ts
except ImportError:  # pragma: no cover - exercised by monkeypatching ``ts`` in the tests
    ts = None

__all__ = [
    "HEConfig", "HEMLP", "HEClient", "HEServer", "run_he_benchmark", "preprocess",
    "MNIST_MEAN", "MNIST_STD", "DEFAULT_CACHE_DIR", "TENSEAL_MISSING",
]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
IN_DIM = 28 * 28
N_CLASSES = 10
DEFAULT_CACHE_DIR = Path(".daonet-cache/he")
TENSEAL_MISSING = "TenSEAL is not installed; pip install 'daonet[bench]' (tenseal==0.3.18)"
_CACHE_FORMAT = "daonet-he-mlp-v1"


def _tenseal() -> Any:
    """The tenseal module, or the one error that tells the user how to get it."""
    if ts is None:
        raise DaonetError(TENSEAL_MISSING)
    return ts


@dataclass(frozen=True)
class HEConfig:
    """CKKS parameters.

    Depth 3 (plain matmul, square, plain matmul) at scale 2**40 needs three 40-bit primes between the
    special primes, and N=8192 allows at most 218 bits of coefficient modulus at 128-bit security:
    49+40+40+40+49 = 218. ``[60, 40, 40, 60]`` (depth 2) fails with "scale out of bounds" on the last
    matmul; ``[60, 40, 40, 40, 60]`` (240 bits) is rejected by SEAL. The 49-bit first prime leaves
    2**9 of headroom above the scale for the decrypted logits.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (49, 40, 40, 40, 49)
    scale_bits: int = 40
    n_threads: int | None = None  # None: TenSEAL's default (all hardware threads)

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["coeff_mod_bit_sizes"] = list(self.coeff_mod_bit_sizes)
        d["security_bits"] = 128
        d["slots"] = self.slots
        return d


def preprocess(x: np.ndarray) -> np.ndarray:
    """Images in [0, 1], shaped (N, 1, 28, 28), (N, 784) or one image, to normalized float64 (N, 784).

    float64 so that the plaintext reference adds no rounding of its own to the HE comparison.
    """
    arr = np.asarray(x)
    if arr.size % IN_DIM or arr.size == 0:
        raise InputError(f"expected MNIST images of {IN_DIM} pixels each, got an array of shape {arr.shape}")
    flat = arr.reshape(-1, IN_DIM).astype(np.float64)
    if not np.isfinite(flat).all():
        raise InputError("input images contain NaN or inf; pass finite pixel values in [0, 1]")
    return (flat - MNIST_MEAN) / MNIST_STD


def _max_hidden(config: HEConfig) -> int:
    """Largest H for which both diagonal-method matmuls read only correctly replicated slots."""
    return config.slots - (IN_DIM + 1) - N_CLASSES


class HEMLP:
    """A 784-H-10 MLP with ``x*x`` activation: the network a CKKS server can evaluate without approximation.

    Weights are kept as float32 numpy arrays (``w1`` (H, 784), ``b1`` (H,), ``w2`` (10, H), ``b2`` (10,)),
    so that inference and the cache need no torch; only :meth:`train` imports torch.
    """

    def __init__(self, hidden: int = 128, seed: int = 0) -> None:
        if hidden < 1:
            raise InputError(f"hidden size must be a positive integer, got {hidden}")
        self.hidden = int(hidden)
        self.seed = int(seed)
        self.w1: np.ndarray | None = None
        self.b1: np.ndarray | None = None
        self.w2: np.ndarray | None = None
        self.b2: np.ndarray | None = None
        self.meta: dict[str, str] = {}

    @property
    def trained(self) -> bool:
        return self.w1 is not None

    def _weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self.w1 is None or self.b1 is None or self.w2 is None or self.b2 is None:
            raise DaonetError("the HE MLP has no weights yet; call .train(...) or HEMLP.load(path) first")
        return self.w1, self.b1, self.w2, self.b2

    def train(self, x: np.ndarray, y: np.ndarray, epochs: int = 2, batch_size: int = 64, lr: float = 1e-3,
              progress: bool = False) -> float:
        """Train with Adam and cross-entropy (the tutorial's recipe); returns the wall-clock seconds spent."""
        import torch

        xs = preprocess(x).astype(np.float32)
        ys = np.asarray(y, dtype=np.int64).reshape(-1)
        if len(xs) != len(ys):
            raise InputError(f"got {len(xs)} images but {len(ys)} labels; pass one label per image")
        if epochs < 1 or batch_size < 1:
            raise InputError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")

        class _Square(torch.nn.Module):
            def forward(self, t: torch.Tensor) -> torch.Tensor:
                return t * t

        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        model = torch.nn.Sequential(
            torch.nn.Linear(IN_DIM, self.hidden), _Square(), torch.nn.Linear(self.hidden, N_CLASSES)
        )
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = torch.nn.CrossEntropyLoss()
        xt, yt = torch.from_numpy(xs), torch.from_numpy(ys)
        n_batches = (len(xt) + batch_size - 1) // batch_size

        start = time.perf_counter()
        with make_progress(transient=True, enabled=progress) as bar:
            task = bar.add_task("train x*x MLP", total=epochs * n_batches, status="") if bar else None
            model.train()
            for epoch in range(epochs):
                perm = torch.randperm(len(xt), generator=gen)
                for i in range(n_batches):
                    idx = perm[i * batch_size:(i + 1) * batch_size]
                    opt.zero_grad()
                    loss = loss_fn(model(xt[idx]), yt[idx])
                    loss.backward()
                    opt.step()
                    if task is not None and (i % 50 == 0 or i == n_batches - 1):
                        bar.update(task, completed=epoch * n_batches + i + 1,
                                   status=f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f}")
        seconds = time.perf_counter() - start

        lin1, lin2 = model[0], model[2]
        assert isinstance(lin1, torch.nn.Linear) and isinstance(lin2, torch.nn.Linear)
        self.w1 = lin1.weight.detach().numpy().copy()
        self.b1 = lin1.bias.detach().numpy().copy()
        self.w2 = lin2.weight.detach().numpy().copy()
        self.b2 = lin2.bias.detach().numpy().copy()
        if not all(np.isfinite(a).all() for a in self._weights()):
            raise DaonetError("training the x*x MLP diverged (non-finite weights); lower lr or change seed")
        self.meta = {"train_seconds": f"{seconds:.6f}", "epochs": str(epochs), "n_train": str(len(xt)),
                     "batch_size": str(batch_size), "lr": repr(lr)}
        return seconds

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Plaintext float64 logits of images in [0, 1]: the reference the HE path must reproduce."""
        w1, b1, w2, b2 = self._weights()
        h = preprocess(x) @ w1.T.astype(np.float64) + b1.astype(np.float64)
        return (h * h) @ w2.T.astype(np.float64) + b2.astype(np.float64)

    def plain_predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted classes (int64) of images in [0, 1], computed in the clear."""
        return self.logits(x).argmax(axis=1).astype(np.int64)

    def accuracy(self, x: np.ndarray, y: np.ndarray, batch: int = 2048) -> float:
        ys = np.asarray(y).reshape(-1)
        hits = sum(int((self.plain_predict(x[i:i + batch]) == ys[i:i + batch]).sum())
                   for i in range(0, len(ys), batch))
        return hits / max(len(ys), 1)

    def save(self, path: str | Path) -> Path:
        """Write the weights as safetensors (the project's weight format), with the training facts as metadata."""
        from safetensors.numpy import save_file

        w1, b1, w2, b2 = self._weights()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": _CACHE_FORMAT, "hidden": str(self.hidden), "seed": str(self.seed), **self.meta}
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file({"w1": w1, "b1": b1, "w2": w2, "b2": b2}, str(tmp), metadata=meta)
        tmp.replace(path)  # atomic: a crashed run never leaves a half-written cache entry
        return path

    @classmethod
    def load(cls, path: str | Path) -> HEMLP:
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise DaonetError(f"HE model weights {path} do not exist; train them with HEMLP.train(...) first")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = dict(f.metadata() or {})
                arrays = {k: f.get_tensor(k) for k in ("w1", "b1", "w2", "b2")}
        except Exception as err:
            raise DaonetError(f"HE model weights {path} are unreadable ({err}); delete the file to retrain") from err
        if meta.get("format") != _CACHE_FORMAT:
            raise DaonetError(f"{path} is not a daonet HE model (format {meta.get('format')!r}); delete it to retrain")
        hidden = int(meta["hidden"])
        shapes = {"w1": (hidden, IN_DIM), "b1": (hidden,), "w2": (N_CLASSES, hidden), "b2": (N_CLASSES,)}
        for k, shape in shapes.items():
            if arrays[k].shape != shape:
                raise DaonetError(f"{path}: {k} has shape {arrays[k].shape}, expected {shape}; delete it to retrain")
        model = cls(hidden=hidden, seed=int(meta.get("seed", 0)))
        model.w1, model.b1, model.w2, model.b2 = (arrays[k].astype(np.float32) for k in ("w1", "b1", "w2", "b2"))
        model.meta = {k: v for k, v in meta.items() if k not in ("format", "hidden", "seed")}
        return model

    @classmethod
    def load_or_train(cls, ds: Any | None = None, *, hidden: int = 128, epochs: int = 2, seed: int = 0,
                      n_train: int | None = None, batch_size: int = 64, lr: float = 1e-3,
                      cache_dir: str | Path = DEFAULT_CACHE_DIR, retrain: bool = False,
                      progress: bool = False) -> tuple[HEMLP, dict[str, Any]]:
        """Weights from the cache when this exact training config was run before, else train and cache them.

        Returns the model and ``{"seconds", "cached", "path"}``; on a cache hit ``seconds`` is the training time
        recorded when the weights were made, not time spent now.
        """
        name = f"mlp-sq-h{hidden}-e{epochs}-s{seed}-n{n_train or 'all'}-b{batch_size}-lr{lr:g}.safetensors"
        path = Path(cache_dir) / name
        if path.exists() and not retrain:
            model = cls.load(path)
            return model, {"seconds": float(model.meta.get("train_seconds", "nan")), "cached": True,
                           "path": str(path)}
        if ds is None:
            from ..data import load_dataset

            ds = load_dataset("mnist")
        x, y = ds.x_train, ds.y_train
        if n_train:
            idx = np.random.default_rng(seed).permutation(len(x))[:n_train]
            x, y = x[idx], y[idx]
        model = cls(hidden=hidden, seed=seed)
        seconds = model.train(x, y, epochs=epochs, batch_size=batch_size, lr=lr, progress=progress)
        model.save(path)
        return model, {"seconds": seconds, "cached": False, "path": str(path)}


class HEClient:
    """The device: owns the secret key, encrypts inputs, decrypts logits; never sees the server's weights."""

    def __init__(self, config: HEConfig | None = None) -> None:
        tenseal = _tenseal()
        self.config = config or HEConfig()
        if IN_DIM + 1 > self.config.slots:
            raise InputError(f"poly_modulus_degree {self.config.poly_modulus_degree} has too few slots for "
                             f"{IN_DIM + 1} inputs; use 8192 or more")
        kwargs: dict[str, Any] = {"coeff_mod_bit_sizes": list(self.config.coeff_mod_bit_sizes)}
        if self.config.n_threads is not None:
            kwargs["n_threads"] = self.config.n_threads
        start = time.perf_counter()
        ctx = tenseal.context(tenseal.SCHEME_TYPE.CKKS, self.config.poly_modulus_degree, **kwargs)
        ctx.global_scale = 2.0 ** self.config.scale_bits
        ctx.generate_galois_keys()  # rotations for the diagonal-method matmul
        self.keygen_seconds = time.perf_counter() - start
        self.context = ctx
        self._public: bytes | None = None

    def public_context(self) -> bytes:
        """What the device sends once: parameters, public, relinearization and Galois keys, no secret key."""
        if self._public is None:
            self._public = self.context.serialize(save_public_key=True, save_secret_key=False,
                                                  save_galois_keys=True, save_relin_keys=True)
        return self._public

    def encrypt(self, image: np.ndarray) -> bytes:
        """Normalize one image, append the constant 1 that carries the first bias, encrypt, serialize."""
        vec = preprocess(image)
        if len(vec) != 1:
            raise InputError(f"encrypt takes one image at a time, got {len(vec)}")
        payload = np.append(vec[0], 1.0)
        return _tenseal().ckks_vector(self.context, payload.tolist()).serialize()

    def decrypt(self, payload: bytes) -> np.ndarray:
        """Deserialize and decrypt the server's answer into float64 logits (N_CLASSES,)."""
        enc = _tenseal().ckks_vector_from(self.context, payload)
        out = np.asarray(enc.decrypt(), dtype=np.float64)
        if out.shape != (N_CLASSES,):
            raise DaonetError(f"the server answered {out.shape} values, expected {N_CLASSES} logits")
        return out


class HEServer:
    """The server: holds the weights and only the public context, so it can compute on inputs but not read them."""

    def __init__(self, public_context: bytes, model: HEMLP, config: HEConfig | None = None) -> None:
        tenseal = _tenseal()
        self.config = config or HEConfig()
        w1, b1, w2, b2 = model._weights()
        if model.hidden > _max_hidden(self.config):
            raise InputError(f"hidden size {model.hidden} is too large for {self.config.slots} CKKS slots "
                             f"(at most {_max_hidden(self.config)}); use a larger poly_modulus_degree")
        self.context = tenseal.context_from(public_context, n_threads=self.config.n_threads)
        if self.context.is_private() or self.context.has_secret_key():
            raise DaonetError("the server was handed a context with the secret key; serialize it with "
                              "save_secret_key=False")
        # (785, H): rows are the input pixels plus the constant-1 row that carries b1 (see module docstring).
        w1_aug = np.vstack([w1.T.astype(np.float64), b1.astype(np.float64)[None, :]])
        self._w1 = tenseal.plain_tensor(w1_aug)
        self._w2 = tenseal.plain_tensor(w2.T.astype(np.float64))
        self._b2 = b2.astype(np.float64).tolist()

    def evaluate(self, payload: bytes) -> bytes:
        """One encrypted request: deserialize, ``mm`` + bias row, square, ``mm``, + b2, serialize."""
        enc = _tenseal().ckks_vector_from(self.context, payload)
        if enc.size() != IN_DIM + 1:
            raise InputError(f"encrypted input has {enc.size()} values, expected {IN_DIM + 1} "
                             "(784 normalized pixels and a constant 1)")
        h = enc.mm(self._w1)
        h.square_()
        out = h.mm(self._w2) + self._b2
        return out.serialize()


# --- measurement helpers -------------------------------------------------------------------------------


def run_he_benchmark(n_images: int, hidden: int = 128, epochs: int = 2, seed: int = 0, progress: bool = True, *,
                     cache_dir: str | Path = DEFAULT_CACHE_DIR, config: HEConfig | None = None,
                     n_train: int | None = None, batch_size: int = 64, lr: float = 1e-3, retrain: bool = False,
                     ds: Any | None = None) -> dict[str, Any]:
    """Train (or load) the x*x MLP, then serve the first ``n_images`` MNIST test images under CKKS, measured.

    Every number in the result is measured in this call, except ``training.seconds`` on a cache hit
    (``training.cached`` says which). Per-sample times: ``encrypt_s`` = normalize + encrypt + serialize,
    ``server_eval_s`` = deserialize + matmul/square/matmul + serialize, ``decrypt_s`` = deserialize + decrypt;
    ``device_compute_s`` = encrypt + decrypt of the same sample. Sizes are serialized bytes.
    """
    tenseal = _tenseal()
    config = config or HEConfig()
    if ds is None:
        from ..data import load_dataset

        ds = load_dataset("mnist")
    if not 1 <= n_images <= len(ds.x_test):
        raise InputError(f"n_images must be between 1 and {len(ds.x_test)}, got {n_images}")
    if hidden > _max_hidden(config):
        raise InputError(f"hidden size {hidden} is too large for {config.slots} CKKS slots "
                         f"(at most {_max_hidden(config)})")

    model, train_info = HEMLP.load_or_train(ds, hidden=hidden, epochs=epochs, seed=seed, n_train=n_train,
                                            batch_size=batch_size, lr=lr, cache_dir=cache_dir,
                                            retrain=retrain, progress=progress)
    x, y = ds.x_test[:n_images], np.asarray(ds.y_test[:n_images], dtype=np.int64)
    plain_logits = model.logits(x)
    plain_pred = plain_logits.argmax(axis=1)

    mem = PeakMemoryProbe(maxrss_fallback=True)
    with mem.measure("device_keygen"):
        client = HEClient(config)
    start = time.perf_counter()
    public = client.public_context()
    public_serialize_s = time.perf_counter() - start
    with mem.measure("server_setup"):
        start = time.perf_counter()
        server = HEServer(public, model, config)
        server_setup_s = time.perf_counter() - start

    enc_s: list[float] = []
    eval_s: list[float] = []
    dec_s: list[float] = []
    up: list[int] = []
    down: list[int] = []
    he_logits = np.zeros((n_images, N_CLASSES), dtype=np.float64)
    with make_progress(enabled=progress) as bar:
        task = bar.add_task("HE inference", total=n_images, status="") if bar else None
        for i in range(n_images):
            with mem.measure("device"):
                t0 = time.perf_counter()
                ct_in = client.encrypt(x[i])
                enc_s.append(time.perf_counter() - t0)
            with mem.measure("server"):
                t0 = time.perf_counter()
                ct_out = server.evaluate(ct_in)
                eval_s.append(time.perf_counter() - t0)
            with mem.measure("device"):
                t0 = time.perf_counter()
                he_logits[i] = client.decrypt(ct_out)
                dec_s.append(time.perf_counter() - t0)
            up.append(len(ct_in))
            down.append(len(ct_out))
            if task is not None:
                bar.update(task, advance=1, status=f"server {eval_s[-1]:.2f}s/img")

    he_pred = he_logits.argmax(axis=1)
    diff = np.abs(he_logits - plain_logits)
    samples = [
        {"index": i, "label": int(y[i]), "plain_pred": int(plain_pred[i]), "he_pred": int(he_pred[i]),
         "max_abs_logit_diff": float(diff[i].max()), "encrypt_s": enc_s[i], "server_eval_s": eval_s[i],
         "decrypt_s": dec_s[i], "bytes_up": up[i], "bytes_down": down[i]}
        for i in range(n_images)
    ]
    return {
        "method": "he-ckks",
        "n_images": n_images,
        "plain_accuracy": float((plain_pred == y).mean()),
        "he_accuracy": float((he_pred == y).mean()),
        "agreement": float((he_pred == plain_pred).mean()),
        "max_abs_logit_diff": float(diff.max()),
        "max_abs_logit": float(np.abs(plain_logits).max()),
        "plain_accuracy_full_test": model.accuracy(ds.x_test, ds.y_test),
        "keygen_s": client.keygen_seconds,
        "public_context_serialize_s": public_serialize_s,
        "server_setup_s": server_setup_s,
        "encrypt_s": stats(enc_s),
        "server_eval_s": stats(eval_s),
        "decrypt_s": stats(dec_s),
        "device_compute_s": stats([e + d for e, d in zip(enc_s, dec_s, strict=True)]),
        "bytes_up_per_sample": int(round(float(np.mean(up)))),
        "bytes_down_per_sample": int(round(float(np.mean(down)))),
        "setup_bytes": len(public),
        "memory": {
            "method": mem.method,
            "device_keygen_peak_bytes": mem.peaks.get("device_keygen", 0),
            "device_peak_bytes": mem.peaks.get("device", 0),
            "server_setup_peak_bytes": mem.peaks.get("server_setup", 0),
            "server_peak_bytes": mem.peaks.get("server", 0),
        },
        "training": {**train_info, "epochs": epochs, "n_train": n_train or len(ds.x_train)},
        "config": {
            "hidden": hidden, "epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr,
            "n_train": n_train or len(ds.x_train), "activation": "square (x*x)", "optimizer": "adam",
            "normalization": {"mean": MNIST_MEAN, "std": MNIST_STD},
            "test_images": f"first {n_images} of the MNIST test split",
            "bias1": "folded into the first matmul as a constant-1 input (keeps mm's slot replication)",
            "he": config.to_dict(), "tenseal_version": getattr(tenseal, "__version__", "unknown"),
        },
        "samples": samples,
    }
