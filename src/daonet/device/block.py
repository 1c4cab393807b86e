"""The two device options beyond the paper's single layer, in numpy only.

* **Localized first block**: after the first layer + ReLU, further dense layers or "same" convolutions
  (each + ReLU) and an optional max pooling run on the device; dropping happens at the block's output.
  :class:`~daonet.manifest.BlockStep` is one step of the manifest's ``layer.block`` list; :func:`run_block`
  runs them.
* **Noise on surviving values**: ``max(h + std * e, floor)`` on every non-zero value that is sent
  (:class:`NoiseSpec`, the manifest's ``noise`` object; :func:`add_noise`).
* **The Gaussian mechanism** (``noise.kind: gaussian_ldp``): every kept output clipped on an integer grid and
  given exact discrete Gaussian noise (:func:`ldp_clip_steps`, :func:`ldp_release`), with a per-request
  (epsilon, delta) bound (docs/privacy-ldp.md); :class:`LdpCertificate` reports it.

Neither keeps the first-layer equations exact, so :class:`BlockCertificate` replaces the algebraic
certificate for a block, and a noisy single layer's certificate says that its numbers are an upper bound.
The manifest fields are documented in docs/device-block-and-noise.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import BundleError, PayloadError
from ..manifest import BlockStep, NoiseSpec  # the manifest's typed ``layer.block`` steps and ``noise``

__all__ = ["BLOCK_NOTE", "LDP_NOTE", "NOISE_NOTE", "BlockCertificate", "BlockStep", "LdpCertificate", "NoiseSpec",
           "add_noise", "check_tensors", "ldp_clip_steps", "ldp_release", "run_block"]

BLOCK_NOTE = "non-linear block: covered by the audit only"
NOISE_NOTE = ("noise on surviving values: the equations are not exact; rank and revealed energy are an upper "
              "bound on what they pin down")
LDP_NOTE = ("Gaussian mechanism: the guarantee is (epsilon, delta) per request; rank and revealed-energy figures "
            "are not the guarantee here")
CONV_OPS = ("conv1d", "conv2d")


def check_tensors(steps: tuple[BlockStep, ...], tensors: dict[str, np.ndarray]) -> None:
    """Every block step's weights exist with the shapes its (already validated) manifest step implies."""
    for step in steps:
        if step.op == "maxpool":
            continue
        for name, shape in ((step.weight, step.weight_shape), (step.bias, step.weight_shape[:1])):
            arr = tensors.get(str(name))
            if arr is None:
                raise BundleError(f"the device bundle lacks the block tensor {name!r}; re-export the bundle")
            if tuple(arr.shape) != shape:
                raise BundleError(f"block tensor {name!r} has shape {tuple(arr.shape)}, the manifest implies "
                                  f"{shape}; the bundle is inconsistent, re-export it")


def conv(z: np.ndarray, w: np.ndarray, b: np.ndarray, stride: tuple[int, ...],
         padding: tuple[int, ...] = ()) -> np.ndarray:
    """Cross-correlation like torch's Conv1d/Conv2d: ``z`` (N, C, *spatial), ``w`` (O, C, *kernel)."""
    nd = w.ndim - 2
    if padding and any(padding):
        z = np.pad(z, [(0, 0), (0, 0), *[(p, p) for p in padding]])
    kernel = w.shape[2:]
    win = sliding_window_view(z, kernel, axis=tuple(range(2, 2 + nd)))
    win = win[(slice(None), slice(None), *[slice(None, None, s) for s in stride])]
    if nd == 1:
        out = np.einsum("nclk,ock->nol", win, w, optimize=True)
    else:
        out = np.einsum("nchwij,ocij->nohw", win, w, optimize=True)
    return out + b.reshape((1, -1) + (1,) * nd)


def maxpool(h: np.ndarray, size: int) -> np.ndarray:
    """Max pooling with window = stride = ``size`` over every spatial axis (floor mode, like torch)."""
    nd = h.ndim - 2
    n, c, *spatial = h.shape
    out_sp = [s // size for s in spatial]
    h = h[(slice(None), slice(None), *[slice(0, o * size) for o in out_sp])]
    shape = [n, c]
    for o in out_sp:
        shape += [o, size]
    return h.reshape(shape).max(axis=tuple(3 + 2 * i for i in range(nd)))


def run_block(h: np.ndarray, steps: tuple[BlockStep, ...], tensors: dict[str, np.ndarray]) -> np.ndarray:
    """The block after the first layer: ``h`` is the first layer's float32 ReLU output ``(N, *first_output_shape)``.

    Same recipe as the first layer: every layer takes float32 values, accumulates in float64 (``tensors``
    should hold float64 weights) and rounds once to float32 before its ReLU, so the result does not depend
    on a BLAS's summation order and other runtimes can reproduce the bits.
    """
    for step in steps:
        if step.op == "maxpool":
            h = maxpool(h, int(step.size or 0))
            continue
        w, b = tensors[str(step.weight)], tensors[str(step.bias)]
        z = h.astype(np.float64)
        if step.op == "dense":
            out = z.reshape(z.shape[0], -1) @ w.T + b
        else:
            out = conv(z, w, b, step.stride, step.padding)
        h = np.maximum(out.astype(np.float32), np.float32(0))
    return h


def add_noise(h: np.ndarray, standard: np.ndarray, spec: NoiseSpec) -> np.ndarray:
    """``max(h + std * e, floor)`` where ``h > 0``, zeros unchanged; float64 arithmetic, one float32 rounding
    (so another runtime with IEEE doubles gets the same bytes from the same ``e``)."""
    noisy = np.maximum(h.astype(np.float64) + spec.std * standard, float(spec.floor or 0.0))
    return np.where(h > 0, noisy, 0.0).astype(np.float32)


def ldp_clip_steps(h: np.ndarray, keep: np.ndarray, spec: NoiseSpec) -> np.ndarray:
    """The kept activations on the grid, clipped: int64 ``(N, n_outputs)``, zero where not kept, every row of L2
    norm <= ``clip_steps``.

    ``q = rint(h / grid)`` (float64, ties to even), clamped to ``[0, B]``; a row with ``sum q^2 > B^2`` becomes
    ``floor(q B / R)`` with ``R = ceil(sqrt(sum q^2))`` (exact integers), so ``||r|| <= B ||q|| / R <= B``.
    """
    grid, b = float(spec.grid or 0), int(spec.clip_steps or 0)
    h = np.asarray(h, dtype=np.float32)
    if not np.isfinite(h).all():
        raise PayloadError("activations contain NaN/inf; check the input and the first layer's weights")
    v = h.astype(np.float64) / grid
    q = np.where(keep, np.where(v > b, float(b), np.maximum(np.rint(v), 0.0)), 0.0).astype(np.int64)
    n2 = (q * q).sum(1)
    for r in np.flatnonzero(n2 > b * b):
        root = math.isqrt(int(n2[r]))
        root += root * root < int(n2[r])
        q[r] = (q[r] * b) // root
    return q


def ldp_release(h: np.ndarray, keep: np.ndarray, noise: np.ndarray, spec: NoiseSpec) -> np.ndarray:
    """What a ``gaussian_ldp`` device sends: ``float32((r + Y) * grid)`` at kept positions (exact: the grid is a
    power of two and ``|r + Y| < 2^24``), 0 elsewhere; a kept value that lands on 0 is absent on the wire, which
    is a function of the released vector and the input-independent mask (post-processing)."""
    q = ldp_clip_steps(h, keep, spec)
    out = np.where(keep, q + np.asarray(noise, dtype=np.int64), 0)
    return (out.astype(np.float64) * float(spec.grid or 0)).astype(np.float32)


@dataclass(frozen=True)
class LdpCertificate:
    """What a ``gaussian_ldp`` device says about a request: its (epsilon, delta), which holds for any input and
    against any attacker; the algebra of the equations is not the guarantee (their values carry noise)."""

    k: int  # non-zero values sent
    n: int
    n_outputs: int
    epsilon: float
    delta: float
    clip: float
    std: float
    note: str = LDP_NOTE
    exact: bool = False
    applies: bool = False  # the algebraic certificate is not the guarantee
    policy_ok: bool = True  # no input-dependent drop: it would void the bound
    k_before_policy: int = 0
    dropped_by_policy: int = 0
    policy: dict[str, Any] | None = None

    def to_dict(self, per_patch: bool = False) -> dict[str, Any]:
        return {"k": self.k, "n": self.n, "n_outputs": self.n_outputs, "applies": False, "note": self.note,
                "epsilon": self.epsilon, "delta": self.delta, "clip": self.clip, "std": self.std}

    def summary(self) -> str:
        return (f"{self.k} outputs sent; (epsilon = {self.epsilon:.3g}, delta = {self.delta:.3g}) per request: "
                f"{self.note}")


@dataclass(frozen=True)
class BlockCertificate:
    """What the device can say about a request from a non-linear block: only what is sent.

    The first-layer equations do not describe a block's output, so no rank or revealed energy is given
    (they would not apply); privacy for a block comes from ``daonet audit``.
    """

    k: int  # surviving non-zero outputs that are sent
    n: int  # input dimension
    n_outputs: int
    block: str  # e.g. "dense 784->800 + ReLU, dense 800->800 + ReLU"
    note: str = BLOCK_NOTE
    exact: bool = False
    applies: bool = False  # the algebraic certificate does not apply
    policy_ok: bool = True  # nothing to enforce: a revealed-energy policy is refused for blocks
    k_before_policy: int = 0
    dropped_by_policy: int = 0
    policy: dict[str, Any] | None = None

    def to_dict(self, per_patch: bool = False) -> dict[str, Any]:
        return {"k": self.k, "n": self.n, "n_outputs": self.n_outputs, "applies": False, "note": self.note,
                "block": self.block}

    def summary(self) -> str:
        return f"{self.k} outputs sent; {self.note} (device block: {self.block})"
