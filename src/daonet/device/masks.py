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
import math
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from ..errors import InputError

KEY_BYTES = 32
DEFAULT_KEY_PATH = Path("~/.daonet/device_key")
MASK_CONTEXT = b"daonet-mask-v1"
NOISE_CONTEXT = b"daonet-noise-v1"
LDP_NOISE_CONTEXT = b"daonet-ldp-noise-v1"
LDP_POOL = 32768  # fresh discrete Gaussian samples drawn ahead at a time (256 KB)
LDP_Y_CAP = 64  # a discrete-Laplace proposal |Y| > 64 (s + 1) is rejected without a draw (its acceptance is < e^-1900)


class MaskSource(Protocol):
    """Returns a boolean keep-mask of shape ``(N, n_outputs)`` for a batch of (validated) inputs."""

    def masks(self, x: np.ndarray, n_outputs: int, drop_rate: float) -> np.ndarray: ...


class NoiseSource(Protocol):
    """Standard noise for the surviving values (manifest ``noise``): ``(N, n_outputs)`` float64, zero where
    ``where`` is False. Mask sources implement it, so masks and noise come from one device-owned source."""

    def noise(self, x: np.ndarray, where: np.ndarray, n_outputs: int, drop_rate: float) -> np.ndarray: ...


class RandomMasks:
    """Fresh Bernoulli masks (and Gaussian noise) from a device-owned generator (seed it in tests only)."""

    def __init__(self, seed: int | np.random.Generator | None = None) -> None:
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self._ldp_pool: dict[int, np.ndarray] = {}  # noise_steps -> exact samples drawn ahead, not yet used

    def masks(self, x: np.ndarray, n_outputs: int, drop_rate: float) -> np.ndarray:
        return self.rng.random((x.shape[0], n_outputs)) >= drop_rate

    def noise(self, x: np.ndarray, where: np.ndarray, n_outputs: int, drop_rate: float) -> np.ndarray:
        """Standard Gaussian noise at ``where`` (fresh for every request)."""
        out = np.zeros(where.shape, dtype=np.float64)
        out[where] = self.rng.standard_normal(int(where.sum()))
        return out

    def ldp_noise(self, x: np.ndarray, where: np.ndarray, n_outputs: int, drop_rate: float,
                  noise_steps: int) -> np.ndarray:
        """Fresh exact discrete Gaussian noise N_Z(0, noise_steps^2) at ``where`` (int64, zero elsewhere), drawn
        with the same algorithm as the keyed sources, from this generator's unbiased bounded integers.

        Fresh noise does not depend on the input, so it is drawn ahead in batches of :data:`LDP_POOL` samples
        and each sample is used once: the rejection sampler's rounds cost the same for 1,000 samples as for
        30,000, so a request pays ~1.5 µs per noisy output instead of ~10. Still i.i.d. and exact."""
        out = np.zeros(where.shape, dtype=np.int64)
        n = int(where.sum())
        pool = self._ldp_pool.get(noise_steps, np.zeros(0, dtype=np.int64))
        if pool.size < n:
            more = discrete_gaussian(np.arange(max(LDP_POOL, n - pool.size)), noise_steps,
                                     lambda c, d: self.rng.integers(0, d))
            pool = np.concatenate([pool, more])
        out[where], self._ldp_pool[noise_steps] = pool[:n], pool[n:]
        return out


def _check_key_dir(directory: Path) -> None:
    """Refuse a key directory others can write to: they could swap the key (or a link) in."""
    mode = directory.stat().st_mode
    if os.name == "posix" and mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise InputError(f"the device key directory {directory} is writable by other users (mode "
                         f"{stat.S_IMODE(mode):o}), so they could replace the key; restrict it with "
                         f"`chmod 700 {directory}`")


def _read_key_file(path: Path) -> bytes:
    """Read an existing key without following a symbolic link at ``path``; :class:`FileNotFoundError` if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not path.is_symlink():
            raise
        if path.is_symlink():
            raise InputError(f"device key {path} is a symbolic link (to {os.readlink(path)}); daonet does not follow "
                             f"links for its key: remove the link (`rm {path}`) so a key file is created in its "
                             "place, or point DAONET_DEVICE_KEY at the real file") from None
        raise InputError(f"cannot read the device key {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"device key {path} is a directory; remove it (`rmdir {path}`) or point "
                             "DAONET_DEVICE_KEY at a file")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"device key {path} is not a regular file; remove it or point DAONET_DEVICE_KEY "
                             "at a file")
        if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InputError(f"device key {path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                             f"restrict it with `chmod 600 {path}`")
        text = os.read(fd, 4 * KEY_BYTES).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
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
    use; the file is mode 0600 in a 0700 directory. The key is never sent anywhere.

    Creation is atomic: the key is written and synced to a private temporary file, then hard-linked to its
    name, which fails if another process got there first (its key is then used). So concurrent first starts
    agree on one key and no reader ever sees a half-written file. Symbolic links at the key path, a directory
    there, and a key directory writable by others are refused."""
    path = Path(path or os.environ.get("DAONET_DEVICE_KEY") or DEFAULT_KEY_PATH).expanduser()
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_key_dir(directory)
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(KEY_BYTES)
    tmp = directory / f".device_key.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key.hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic, and never replaces an existing name (file, link or directory)
        except FileExistsError:
            return _read_key_file(path)  # another process created it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)
    return key


class KeyedMasks:
    """Replay-safe masks: ``keep_i = U_i >= p`` with ``U`` the HMAC-SHA256 counter-mode stream of
    ``HMAC(key, context | model version | n_outputs | p | shape | quantized input)``.

    ``quantum`` is the quantization step of the input (default 1/255: exact for 8-bit pixels scaled to
    [0, 1]); inputs that agree after quantization get the same mask. ``model_version`` ties masks to one
    model, so a new version does not replay old masks against new weights. Give ``key`` in tests only;
    on a device pass ``key_path`` (or nothing: ``~/.daonet/device_key``) and the key is created once.
    """

    replay_safe: ClassVar[bool] = True  # the same input always gets the same mask and noise

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
        return np.frombuffer(_hmac_stream(prk, 4 * n_outputs), dtype="<u4", count=n_outputs)

    def masks(self, x: np.ndarray, n_outputs: int, drop_rate: float) -> np.ndarray:
        if not 0.0 <= drop_rate < 1.0:
            raise InputError(f"drop rate must be in [0, 1), got {drop_rate}")
        threshold = np.uint64(round(drop_rate * 2**32))
        out = np.empty((x.shape[0], n_outputs), dtype=bool)
        for i, xi in enumerate(x):
            out[i] = self.stream(self.seed(xi, n_outputs, drop_rate), n_outputs).astype(np.uint64) >= threshold
        return out

    def noise(self, x: np.ndarray, where: np.ndarray, n_outputs: int, drop_rate: float) -> np.ndarray:
        """Replay-safe noise: the same input gets the same noise, so a re-send repeats the same bytes.

        Output ``i`` of an input with mask PRK ``prk`` (:meth:`seed`) gets :func:`index_noise` ``(prk, i)``.
        """
        out = np.zeros(where.shape, dtype=np.float64)
        for r, (xi, row) in enumerate(zip(x, where, strict=True)):
            idx = np.flatnonzero(row)
            if idx.size:
                out[r, idx] = index_noise(self.seed(xi, n_outputs, drop_rate), idx)
        return out


    def ldp_noise(self, x: np.ndarray, where: np.ndarray, n_outputs: int, drop_rate: float,
                  noise_steps: int) -> np.ndarray:
        """Replay-safe discrete Gaussian noise (``gaussian_ldp``): output ``i`` of an input with mask PRK ``prk``
        gets :func:`index_discrete_gaussian` ``(prk, i)``; an exact replay sends the same bytes."""
        out = np.zeros(where.shape, dtype=np.int64)
        for r, (xi, row) in enumerate(zip(x, where, strict=True)):
            idx = np.flatnonzero(row)
            if idx.size:
                out[r, idx] = index_discrete_gaussian(self.seed(xi, n_outputs, drop_rate), idx, noise_steps)
        return out


def index_noise(prk: bytes, indices: np.ndarray) -> np.ndarray:
    """Standard noise for outputs ``indices``, derived from a mask PRK (replay-safe, reproducible in JS).

    ``b_i = HMAC(HMAC(prk, "daonet-noise-v1"), uint32_le(i))``; ``e_i = sum_{j<12} (u_j + 0.5) / 65536 - 6``
    with ``u_j`` the first twelve little-endian uint16 of ``b_i``: the Irwin-Hall approximation of a standard
    normal (mean 0, variance 1, bounded by 6), exact in float64, so a JavaScript device gets the same bits.
    """
    nprk = hmac.new(prk, NOISE_CONTEXT, hashlib.sha256).digest()
    raw = b"".join(b[:24] for b in _hmac_blocks(nprk, map(_u32, indices)))
    u = np.frombuffer(raw, dtype="<u2").reshape(len(indices), 12).astype(np.float64)
    return ((u + 0.5) / 65536.0).sum(1) - 6.0


# -- exact discrete Gaussian noise (gaussian_ldp; docs/privacy-ldp.md "Noise derivation") -------------------------
Uniform = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (coordinates, ranges d >= 1) -> one draw in [0, d) each


def _bern_exp_le1(c: np.ndarray, num: np.ndarray, den: np.ndarray, uniform: Uniform) -> np.ndarray:
    """Bernoulli(exp(-num/den)) for num <= den (Canonne-Kamath-Steinke Alg. 1): K = 1; while
    Bernoulli(num / (den K)) (a draw in [0, den K) below num): K += 1; true iff K is odd."""
    k = np.ones(c.size, dtype=np.int64)
    live = np.arange(c.size)
    while live.size:
        hit = uniform(c[live], den[live] * k[live]) < num[live]
        live = live[hit]
        k[live] += 1
    return (k & 1) == 1


def _bern_exp(c: np.ndarray, num: np.ndarray, den: np.ndarray, uniform: Uniform) -> np.ndarray:
    """Bernoulli(exp(-num/den)) for any num >= 0: while num > den, Bernoulli(exp(-1)) must succeed (else false)
    and num -= den; then :func:`_bern_exp_le1`."""
    out = np.ones(c.size, dtype=bool)
    num = num.copy()
    big = np.flatnonzero(num > den)
    while big.size:
        one = np.ones(big.size, dtype=np.int64)
        ok = _bern_exp_le1(c[big], one, one, uniform)
        out[big[~ok]] = False
        big = big[ok]
        num[big] -= den[big]
        big = big[num[big] > den[big]]
    live = np.flatnonzero(out)
    out[live] = _bern_exp_le1(c[live], num[live], den[live], uniform)
    return out


def _discrete_laplace(c: np.ndarray, t: int, uniform: Uniform) -> np.ndarray:
    """Discrete Laplace with scale ``t`` (CKS Alg. 2): U in [0, t) accepted with exp(-U/t); V counts successes of
    Bernoulli(exp(-1)); X = U + t V; a sign draw; a negative zero is rejected."""
    out = np.zeros(c.size, dtype=np.int64)
    todo = np.arange(c.size)
    while todo.size:
        tt = np.full(todo.size, t, dtype=np.int64)
        u = uniform(c[todo], tt)
        ok = _bern_exp(c[todo], u, tt, uniform)
        sel, u = todo[ok], u[ok]
        v = np.zeros(sel.size, dtype=np.int64)
        live = np.arange(sel.size)
        while live.size:
            one = np.ones(live.size, dtype=np.int64)
            b = _bern_exp(c[sel[live]], one, one, uniform)
            live = live[b]
            v[live] += 1
        x = u + t * v
        sign = uniform(c[sel], np.full(sel.size, 2, dtype=np.int64))
        good = ~((sign == 1) & (x == 0))
        out[sel[good]] = np.where(sign[good] == 1, -x[good], x[good])
        done = np.zeros(c.size, dtype=bool)
        done[sel[good]] = True
        todo = todo[~done[todo]]
    return out


def discrete_gaussian(c: np.ndarray, s: int, uniform: Uniform) -> np.ndarray:
    """Exact N_Z(0, s^2) for every coordinate of ``c`` (CKS Alg. 3): a discrete Laplace proposal Y of scale
    t = s + 1, accepted with probability exp(-(|Y| t - s^2)^2 / (2 s^2 t^2)). Integers only (every value below
    2^53 for s <= 256), and each coordinate draws from its own stream in a fixed order, so one coordinate's
    draws do not depend on the others: the JavaScript runtime runs the same steps one coordinate at a time."""
    c = np.asarray(c, dtype=np.int64)
    s = int(s)
    t = s + 1
    out = np.zeros(c.size, dtype=np.int64)
    todo = np.arange(c.size)
    while todo.size:
        y = _discrete_laplace(c[todo], t, uniform)
        a = np.abs(y)
        acc = np.zeros(todo.size, dtype=bool)
        cand = np.flatnonzero(a <= LDP_Y_CAP * t)
        num = (a[cand] * t - s * s) ** 2
        acc[cand] = _bern_exp(c[todo][cand], num, np.full(cand.size, 2 * s * s * t * t, dtype=np.int64), uniform)
        out[todo[acc]] = y[acc]
        todo = todo[~acc]
    return out


def _ldp_noise_key(prk: bytes) -> Any:
    """HMAC-SHA256 keyed with ``NPRK = HMAC(prk, "daonet-ldp-noise-v1")``, to be copied per block."""
    return hmac.new(hmac.new(prk, LDP_NOISE_CONTEXT, hashlib.sha256).digest(), digestmod=hashlib.sha256)


class _OutputStream:
    """One output's HMAC byte stream: block ``j`` of output ``i`` is HMAC(NPRK, u32(i) || u32(j)); a draw in
    [0, d) takes ceil(L/8) bytes (L = bit length of d - 1), reads them little-endian, keeps the low L bits and
    retries while the value is >= d."""

    __slots__ = ("base", "prefix", "buf", "pos", "block")

    def __init__(self, base: Any, index: int) -> None:
        self.base, self.prefix, self.buf, self.pos, self.block = base, _u32(index), b"", 0, 0

    def uniform(self, d: int) -> int:
        if d == 1:
            return 0
        bits = (d - 1).bit_length()
        n, mask = (bits + 7) >> 3, (1 << bits) - 1
        while True:
            pos = self.pos
            if pos + n > len(self.buf):
                h = self.base.copy()
                h.update(self.prefix + self.block.to_bytes(4, "little"))
                self.buf, pos = self.buf[pos:] + h.digest(), 0
                self.block += 1
            self.pos = pos + n
            r = int.from_bytes(self.buf[pos:pos + n], "little") & mask
            if r < d:
                return r


class _ByteStreams:
    """Every output's :class:`_OutputStream`, drawn in the order the lock-step :func:`discrete_gaussian` asks (the
    reference the one-output-at-a-time sampler is tested against)."""

    def __init__(self, prk: bytes, indices: np.ndarray) -> None:
        base = _ldp_noise_key(prk)
        self.streams = [_OutputStream(base, int(i)) for i in indices]

    def uniform(self, coords: np.ndarray, ranges: np.ndarray) -> np.ndarray:
        return np.array([self.streams[c].uniform(d) for c, d in zip(coords.tolist(), ranges.tolist(), strict=True)],
                        dtype=np.int64)


def _bern_exp_le1_one(num: int, den: int, uniform: Callable[[int], int]) -> bool:
    k = 1
    while uniform(den * k) < num:
        k += 1
    return k & 1 == 1


def _bern_exp_one(num: int, den: int, uniform: Callable[[int], int]) -> bool:
    while num > den:
        if not _bern_exp_le1_one(1, 1, uniform):
            return False
        num -= den
    return _bern_exp_le1_one(num, den, uniform)


def _discrete_laplace_one(t: int, uniform: Callable[[int], int]) -> int:
    while True:
        u = uniform(t)
        if not _bern_exp_one(u, t, uniform):
            continue
        v = 0
        while _bern_exp_one(1, 1, uniform):
            v += 1
        x = u + t * v
        sign = uniform(2)
        if sign == 1 and x == 0:
            continue
        return -x if sign == 1 else x


def _discrete_gaussian_one(s: int, uniform: Callable[[int], int]) -> int:
    """:func:`discrete_gaussian` for one coordinate, the same steps in the same order (so the same draws)."""
    t = s + 1
    den, cap, s2 = 2 * s * s * t * t, LDP_Y_CAP * t, s * s
    while True:
        y = _discrete_laplace_one(t, uniform)
        a = abs(y)
        if a <= cap and _bern_exp_one((a * t - s2) ** 2, den, uniform):
            return y


def index_discrete_gaussian(prk: bytes, indices: np.ndarray, noise_steps: int) -> np.ndarray:
    """Replay-safe exact N_Z(0, noise_steps^2) for outputs ``indices`` from a mask PRK (reproduced bit for bit by
    ``indexDiscreteGaussian`` in daonet-device.mjs). Each output is sampled on its own from its own stream, in
    plain Python: the lock-step numpy sampler (:func:`discrete_gaussian` over :class:`_ByteStreams`, the
    reference it is tested against) pays a numpy call per round for the slowest output and is twice as slow."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    base = _ldp_noise_key(prk)
    s = int(noise_steps)
    return np.array([_discrete_gaussian_one(s, _OutputStream(base, i).uniform) for i in indices.tolist()],
                    dtype=np.int64)


# -- similarity-keyed masks ---------------------------------------------------------------------------
SIM_PROJECTION_CONTEXT = b"daonet-simhash-projection-v1"
SIM_OFFSET_CONTEXT = b"daonet-simhash-offset-v1"
SIM_MASK_CONTEXT = b"daonet-simhash-mask-v1"
DEFAULT_SIM_WIDTH = 0.25
DEFAULT_SIM_GROUPS = 32
MAX_EXACT = 2**53  # integers JavaScript numbers hold exactly


def _u32(v: int) -> bytes:
    return int(v).to_bytes(4, "little")


def _hmac_blocks(prk: bytes, messages: Iterable[bytes]) -> list[bytes]:
    """HMAC-SHA256 (RFC 2104) under ``prk`` of each message. The keyed inner and outer SHA-256 states are set up
    once and copied per message: the same bytes as ``hmac.new`` per message, about a quarter cheaper (a mask
    takes one block per 8 outputs)."""
    key = hashlib.sha256(prk).digest() if len(prk) > 64 else prk
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    out = []
    for msg in messages:
        i, o = inner.copy(), outer.copy()
        i.update(msg)
        o.update(i.digest())
        out.append(o.digest())
    return out


def _hmac_stream(prk: bytes, n_bytes: int) -> bytes:
    """``n_bytes`` of HMAC-SHA256 counter mode: block ``i`` = HMAC(prk, uint32_le(i))."""
    blocks = (n_bytes + 31) // 32
    return b"".join(_hmac_blocks(prk, map(_u32, range(blocks))))[:n_bytes]


class SimilarityKeyedMasks:
    """Near-duplicate-safe masks for streaming sensors: inputs that differ by sensor noise get the same mask.

    Keyed masks (:class:`KeyedMasks`) hash the exact input, so a noisy re-capture draws a brand-new mask and
    reveals new equations. Here the mask is keyed on a coarse locality-sensitive hash of the input instead:
    the outputs are split into ``groups``; group ``g`` owns ``dims`` random ±1 projections of the quantized
    input (derived from the device key, so the server cannot compute buckets), each cut into cells of
    ``width`` (input units along a unit direction) at a key-derived offset; the group's keep bits are the
    HMAC-SHA256 counter-mode stream of (key, geometry, g, its cell numbers). A re-capture that stays in the
    same cells gets the identical mask; one that crosses a cell boundary in group ``g`` re-draws only that
    group's ``n_outputs / groups`` bits, so leakage grows in small steps, not by a whole fresh mask.

    Exact replays send identical bytes (the cells are an integer function of the quantized input).
    Everything is integer arithmetic on ``round(x / quantum)`` plus HMAC-SHA256, so a browser client
    reproduces it bit for bit: the derivation is specified in ``docs/masks.md``.
    """

    replay_safe: ClassVar[bool] = True  # the same input always gets the same mask and noise

    def __init__(self, key: bytes | None = None, key_path: str | Path | None = None, model_version: str = "",
                 quantum: float = 1.0 / 255.0, width: float = DEFAULT_SIM_WIDTH, groups: int = DEFAULT_SIM_GROUPS,
                 dims: int = 1) -> None:
        if key is None:
            key = load_or_create_key(key_path)
        if not isinstance(key, bytes | bytearray) or len(key) < 16:
            raise InputError("the mask key must be at least 16 bytes")
        if not (isinstance(quantum, int | float) and quantum > 0 and np.isfinite(quantum)):
            raise InputError(f"quantum must be a positive number, got {quantum!r}")
        if not (isinstance(width, int | float) and width > 0 and np.isfinite(width)):
            raise InputError(f"width must be a positive number (input units along a unit direction), got {width!r}")
        if isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= 4096:
            raise InputError(f"groups must be an integer in [1, 4096], got {groups!r}")
        if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= 16:
            raise InputError(f"dims must be an integer in [1, 16], got {dims!r}")
        version = str(model_version)
        if not version.isascii():
            raise InputError(f"model_version must be ASCII, got {version!r}")
        self._key = bytes(key)
        self.model_version = version
        self.quantum = float(quantum)
        self.width = float(width)
        self.groups = groups
        self.dims = dims
        self._hash_cache: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}

    def __repr__(self) -> str:  # never print the key
        return (f"SimilarityKeyedMasks(model_version={self.model_version!r}, quantum={self.quantum:g}, "
                f"width={self.width:g}, groups={self.groups}, dims={self.dims}, key=<hidden>)")

    # -- the locality-sensitive hash ---------------------------------------------------------------
    def cell_width(self, n_inputs: int) -> int:
        """``W``: the cell width in quantized units, ``round_half_even(width * sqrt(n) / quantum)`` (>= 1)."""
        w = round(self.width * math.sqrt(n_inputs) / self.quantum)
        if w >= 2**32:
            raise InputError(f"width {self.width:g} is too large for quantum {self.quantum:g}; use a smaller width")
        return max(1, int(w))

    def _geometry(self, n_inputs: int) -> bytes:
        return (_u32(n_inputs) + _u32(self.groups) + _u32(self.dims) + _u32(self.cell_width(n_inputs))
                + np.float64(self.quantum).astype("<f8").tobytes())

    def hash_params(self, n_inputs: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Key-derived ±1 projections ``(groups*dims, n)`` int64, offsets ``(groups*dims,)`` in ``[0, W)``, W."""
        cached = self._hash_cache.get(n_inputs)
        if cached is not None:
            return cached
        rows = self.groups * self.dims
        width = self.cell_width(n_inputs)
        geometry = self._geometry(n_inputs)
        prk = hmac.new(self._key, SIM_PROJECTION_CONTEXT + b"\0" + geometry, hashlib.sha256).digest()
        bits = np.unpackbits(np.frombuffer(_hmac_stream(prk, (rows * n_inputs + 7) // 8), np.uint8),
                             bitorder="little")[: rows * n_inputs]
        signs = (2 * bits.astype(np.int64) - 1).reshape(rows, n_inputs)
        prk = hmac.new(self._key, SIM_OFFSET_CONTEXT + b"\0" + geometry, hashlib.sha256).digest()
        offsets = np.frombuffer(_hmac_stream(prk, 4 * rows), "<u4").astype(np.int64) % width
        self._hash_cache[n_inputs] = (signs, offsets, width)
        return signs, offsets, width

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """One input -> int64 grid values ``round_half_even(x / quantum)``, flattened in C order."""
        q = np.rint(np.asarray(x, dtype=np.float64).reshape(-1) / self.quantum)
        if q.size == 0:
            raise InputError("input is empty")
        if not np.isfinite(q).all() or np.abs(q).max() * q.size >= MAX_EXACT:
            raise InputError(f"input values are too large for quantum {self.quantum:g} (the projection must stay "
                             "below 2**53); use a larger quantum")
        return q.astype(np.int64)

    def cells(self, x: np.ndarray) -> np.ndarray:
        """The cell numbers ``(groups, dims)`` of one input: ``floor((s_r · q + o_r) / W)`` (exact integers)."""
        q = self.quantize(x)
        signs, offsets, width = self.hash_params(q.size)
        return ((signs @ q + offsets) // width).reshape(self.groups, self.dims)

    # -- the masks ---------------------------------------------------------------------------------
    def group_seed(self, cells: np.ndarray, group: int, n_inputs: int, n_outputs: int, drop_rate: float) -> bytes:
        """The PRK of one group: HMAC(key, context | version | geometry | n_outputs | p | g | cells)."""
        version = self.model_version.encode("ascii")
        msg = (SIM_MASK_CONTEXT + b"\0" + _u32(len(version)) + version + self._geometry(n_inputs)
               + _u32(n_outputs) + np.float64(drop_rate).astype("<f8").tobytes() + _u32(group)
               + np.asarray(cells[group], dtype="<i8").tobytes())
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def masks(self, x: np.ndarray, n_outputs: int, drop_rate: float) -> np.ndarray:
        if not 0.0 <= drop_rate < 1.0:
            raise InputError(f"drop rate must be in [0, 1), got {drop_rate}")
        if n_outputs < 1:
            raise InputError(f"n_outputs must be at least 1, got {n_outputs}")
        threshold = np.uint64(round(drop_rate * 2**32))
        per_group = (n_outputs + self.groups - 1) // self.groups
        out = np.empty((x.shape[0], n_outputs), dtype=bool)
        for i, xi in enumerate(x):
            cells = self.cells(xi)
            n_in = int(np.asarray(xi).size)
            u = np.empty((per_group, self.groups), dtype=np.uint64)  # u[j, g]: output j*groups + g
            for g in range(self.groups):
                prk = self.group_seed(cells, g, n_in, n_outputs, drop_rate)
                u[:, g] = np.frombuffer(_hmac_stream(prk, 4 * per_group), "<u4")
            out[i] = u.reshape(-1)[:n_outputs] >= threshold
        return out

    def noise(self, x: np.ndarray, where: np.ndarray, n_outputs: int, drop_rate: float) -> np.ndarray:
        """Noise that follows the mask: output ``i`` (group ``g = i mod groups``) gets :func:`index_noise`
        ``(group_seed(g), i)``, so a near-duplicate in the same cells gets the same noise as well as the same
        mask (fresh noise per re-capture would average away over repeats)."""
        out = np.zeros(where.shape, dtype=np.float64)
        for r, (xi, row) in enumerate(zip(x, where, strict=True)):
            idx = np.flatnonzero(row)
            if not idx.size:
                continue
            cells = self.cells(xi)
            n_in = int(np.asarray(xi).size)
            for g in np.unique(idx % self.groups):
                members = idx[idx % self.groups == g]
                out[r, members] = index_noise(self.group_seed(cells, int(g), n_in, n_outputs, drop_rate), members)
        return out


    def ldp_noise(self, x: np.ndarray, where: np.ndarray, n_outputs: int, drop_rate: float,
                  noise_steps: int) -> np.ndarray:
        """Refused: noise shared by near-duplicates would reveal their exact difference, which the per-request
        (epsilon, delta) bound does not cover."""
        raise InputError(LDP_SIMILARITY_REFUSAL)


LDP_SIMILARITY_REFUSAL = ("similarity-keyed masks cannot draw gaussian_ldp noise: near-duplicates would share "
                          "noise, and the difference of two such payloads is noiseless; use KeyedMasks (exact "
                          "replays cost nothing) or RandomMasks")
MASK_SOURCES = ("random", "keyed", "similarity")


def make_masks(name: str, model_version: str = "", key_path: str | Path | None = None,
               **options: float | int) -> MaskSource:
    """A mask source by name, as an app or a config file chooses it: ``random`` (fresh masks), ``keyed``
    (:class:`KeyedMasks`: exact replays send identical bytes) or ``similarity``
    (:class:`SimilarityKeyedMasks`: near-duplicates share a mask; ``options``: quantum, width, groups, dims).
    The keyed sources read or create the device key at ``key_path`` (default ``~/.daonet/device_key``)."""
    if name == "random":
        if options:
            raise InputError(f"random masks take no options, got {', '.join(options)}")
        return RandomMasks()
    if name == "keyed":
        unknown = set(options) - {"quantum"}
        if unknown:
            raise InputError(f"keyed masks take only 'quantum', got {', '.join(sorted(unknown))}")
        return KeyedMasks(key_path=key_path, model_version=model_version, **options)  # type: ignore[arg-type]
    if name == "similarity":
        unknown = set(options) - {"quantum", "width", "groups", "dims"}
        if unknown:
            raise InputError(f"similarity masks take quantum, width, groups, dims; got {', '.join(sorted(unknown))}")
        return SimilarityKeyedMasks(key_path=key_path, model_version=model_version, **options)  # type: ignore[arg-type]
    raise InputError(f"unknown mask source {name!r}; choose one of {', '.join(MASK_SOURCES)}")
