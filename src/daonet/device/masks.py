"""Where the dropping masks come from. The randomness is the device's own and never leaves it.

* :class:`RandomMasks`: fresh Bernoulli masks for every request.
* :class:`KeyedMasks`: replay-safe masks. Each mask is derived from HMAC-SHA256 under a device-held key
  of the (quantized) input content, so sending the same input twice sends the same payload and reveals
  nothing new; without the key the masks are indistinguishable from random ones. The derivation is plain
  HMAC in counter mode (no numpy generator), so a browser client can reproduce it with WebCrypto.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import InputError

KEY_BYTES = 32
DEFAULT_KEY_PATH = Path("~/.daonet/device_key")
MASK_CONTEXT = b"daonet-mask-v1"


class MaskSource(Protocol):
    """Returns a boolean keep-mask of shape ``(N, n_outputs)`` for a batch of (validated) inputs."""

    def masks(self, x: np.ndarray, n_outputs: int, drop_rate: float) -> np.ndarray: ...


class RandomMasks:
    """Fresh Bernoulli masks from a device-owned generator (seed it in tests, never on a device)."""

    def __init__(self, seed: int | np.random.Generator | None = None) -> None:
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def masks(self, x: np.ndarray, n_outputs: int, drop_rate: float) -> np.ndarray:
        return self.rng.random((x.shape[0], n_outputs)) >= drop_rate


def _check_key_file(path: Path) -> bytes:
    mode = path.stat().st_mode
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"device key {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
                         f"restrict it with `chmod 600 {path}`")
    text = path.read_text(encoding="ascii").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise InputError(f"device key {path} is not {KEY_BYTES} hex-encoded bytes; delete it to create a new one "
                         "(payloads for already-sent inputs will then change)")
    return key


def load_or_create_key(path: str | Path | None = None) -> bytes:
    """The device key at ``path`` (default ``~/.daonet/device_key``), created with :mod:`secrets` on first
    use; the file is mode 0600 in a 0700 directory. The key is never sent anywhere."""
    path = Path(path or os.environ.get("DAONET_DEVICE_KEY") or DEFAULT_KEY_PATH).expanduser()
    if path.exists():
        return _check_key_file(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return _check_key_file(path)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key.hex() + "\n")
    return key


class KeyedMasks:
    """Replay-safe masks: ``keep_i = U_i >= p`` with ``U`` the HMAC-SHA256 counter-mode stream of
    ``HMAC(key, context | model version | n_outputs | p | shape | quantized input)``.

    ``quantum`` is the quantization step of the input (default 1/255: exact for 8-bit pixels scaled to
    [0, 1]); inputs that agree after quantization get the same mask. ``model_version`` ties masks to one
    model, so a new version does not replay old masks against new weights. Give ``key`` in tests only;
    on a device pass ``key_path`` (or nothing: ``~/.daonet/device_key``) and the key is created once.
    """

    def __init__(self, key: bytes | None = None, key_path: str | Path | None = None, model_version: str = "",
                 quantum: float = 1.0 / 255.0) -> None:
        if key is None:
            key = load_or_create_key(key_path)
        if not isinstance(key, bytes | bytearray) or len(key) < 16:
            raise InputError("the mask key must be at least 16 bytes")
        if not (quantum > 0 and np.isfinite(quantum)):
            raise InputError(f"quantum must be a positive number, got {quantum}")
        self._key = bytes(key)
        self.model_version = str(model_version)
        self.quantum = float(quantum)

    def __repr__(self) -> str:  # never print the key
        return f"KeyedMasks(model_version={self.model_version!r}, quantum={self.quantum:g}, key=<hidden>)"

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """One input -> little-endian int32 grid values (the bytes that are hashed)."""
        q = np.rint(np.asarray(x, dtype=np.float64) / self.quantum)
        if np.abs(q).max(initial=0) >= 2**31:
            raise InputError(f"input values are too large for quantum {self.quantum:g}; use a larger quantum")
        return q.astype("<i4")

    def seed(self, x: np.ndarray, n_outputs: int, drop_rate: float) -> bytes:
        """The per-input PRK: HMAC(key, context, version, geometry, quantized content)."""
        q = self.quantize(x)
        header = b"\0".join([MASK_CONTEXT, self.model_version.encode("ascii"), str(int(n_outputs)).encode(),
                             repr(float(drop_rate)).encode(), ",".join(map(str, q.shape)).encode()])
        return hmac.new(self._key, header + b"\0" + q.tobytes(), hashlib.sha256).digest()

    @staticmethod
    def stream(prk: bytes, n_outputs: int) -> np.ndarray:
        """``n_outputs`` uniform uint32 values: block ``i`` = HMAC(prk, uint32_le(i))."""
        blocks = (4 * n_outputs + 31) // 32
        raw = b"".join(hmac.new(prk, i.to_bytes(4, "little"), hashlib.sha256).digest() for i in range(blocks))
        return np.frombuffer(raw, dtype="<u4", count=n_outputs)

    def masks(self, x: np.ndarray, n_outputs: int, drop_rate: float) -> np.ndarray:
        if not 0.0 <= drop_rate < 1.0:
            raise InputError(f"drop rate must be in [0, 1), got {drop_rate}")
        threshold = np.uint64(round(drop_rate * 2**32))
        out = np.empty((x.shape[0], n_outputs), dtype=bool)
        for i, xi in enumerate(x):
            out[i] = self.stream(self.seed(xi, n_outputs, drop_rate), n_outputs).astype(np.uint64) >= threshold
        return out
