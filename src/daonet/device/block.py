"""The two device options beyond the paper's single layer, in numpy only.

* **Localized first block**: after the first layer + ReLU, further dense layers or "same" convolutions
  (each + ReLU) and an optional max pooling run on the device; dropping happens at the block's output.
  :class:`~daonet.manifest.BlockStep` is one step of the manifest's ``layer.block`` list; :func:`run_block`
  runs them.
* **Noise on surviving values**: ``max(h + std * e, floor)`` on every non-zero value that is sent
  (:class:`NoiseSpec`, the manifest's ``noise`` object; :func:`add_noise`).

Neither keeps the first-layer equations exact, so :class:`BlockCertificate` replaces the algebraic
certificate for a block, and a noisy single layer's certificate says that its numbers are an upper bound.
The manifest fields are documented in docs/device-block-and-noise.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import BundleError
from ..manifest import BlockStep, NoiseSpec  # the manifest's typed ``layer.block`` steps and ``noise``

__all__ = ["BLOCK_NOTE", "NOISE_NOTE", "BlockCertificate", "BlockStep", "NoiseSpec", "add_noise", "check_tensors",
           "run_block"]

BLOCK_NOTE = "non-linear block: covered by the audit only"
NOISE_NOTE = ("noise on surviving values: the equations are not exact; rank and revealed energy are an upper "
              "bound on what they pin down")
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
    noisy = np.maximum(h.astype(np.float64) + spec.std * standard, spec.floor)
    return np.where(h > 0, noisy, 0.0).astype(np.float32)


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
