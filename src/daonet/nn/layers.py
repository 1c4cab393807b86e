"""The localized first layer: normalize -> linear/conv -> ReLU -> drop outputs (runs on the device).

Dropping is Bernoulli with rate ``p`` and is active in training *and* at inference (unlike
ordinary dropout). Surviving values are **not rescaled**: the server receives the exact ReLU
outputs ``h_S = relu(W_S x + b_S)``, which keeps the privacy certificate's algebra exact and
training/inference identical (the rest of the network simply learns the 1-p scale).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError

KINDS = ("dense", "conv1d", "conv2d")


def _as_tuple(v: int | tuple[int, ...] | list[int], n: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(x) for x in v)
    if len(v) != n:
        raise InputError(f"expected {n} values, got {v}")
    return v


def quantize(h: torch.Tensor, clip: torch.Tensor, levels: int) -> torch.Tensor:
    """Round ``min(h, clip)`` to ``levels`` steps; straight-through gradient (PACT for ``clip``)."""
    clip = clip.abs() + 1e-6
    hc = torch.minimum(h, clip)
    step = clip / levels
    q = torch.round(hc / step) * step
    return hc + (q - hc).detach()


class LocalizedFirstLayer(nn.Module):
    """First layer + ReLU + dropped activation outputs; the part a device runs.

    ``kind``: ``dense`` (vectors; the input is flattened), ``conv1d`` (signals, ``(C, L)``) or
    ``conv2d`` (images, ``(C, H, W)``). Convolutions default to patchify geometry
    (``stride = kernel``, no padding), where every patch is an independent small system.
    """

    def __init__(
        self,
        kind: str,
        in_shape: tuple[int, ...],
        out: int,
        kernel: int | tuple[int, ...] | None = None,
        stride: int | tuple[int, ...] | None = None,
        drop_rate: float = 0.0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise InputError(f"unknown first-layer kind {kind!r}; choose one of {KINDS}")
        if not 0.0 <= drop_rate < 1.0:
            raise InputError(f"drop rate must be in [0, 1), got {drop_rate}")
        self.kind = kind
        self.in_shape = tuple(int(s) for s in in_shape)
        self.drop_rate = float(drop_rate)
        channels = self.in_shape[0]
        mean = mean if mean is not None else [0.0] * channels
        std = std if std is not None else [1.0] * channels
        if len(mean) != channels or len(std) != channels:
            raise InputError(f"normalization needs one mean/std per input channel ({channels})")
        bshape = (channels,) + (1,) * (len(self.in_shape) - 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(bshape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(bshape))
        if kind == "dense":
            n_in = 1
            for s in self.in_shape:
                n_in *= s
            self.op: nn.Module = nn.Linear(n_in, out)
            self.kernel: tuple[int, ...] = ()
            self.stride: tuple[int, ...] = ()
            self.output_shape: tuple[int, ...] = (out,)
        else:
            nd = 1 if kind == "conv1d" else 2
            if len(self.in_shape) != nd + 1:
                raise InputError(f"{kind} needs inputs shaped (C, {'L' if nd == 1 else 'H, W'}), got {in_shape}")
            self.kernel = _as_tuple(kernel if kernel is not None else 4, nd)
            self.stride = _as_tuple(stride if stride is not None else self.kernel, nd)
            conv = nn.Conv1d if nd == 1 else nn.Conv2d
            self.op = conv(channels, out, self.kernel, self.stride)
            spatial = tuple(
                (s - k) // st + 1 for s, k, st in zip(self.in_shape[1:], self.kernel, self.stride, strict=True)
            )
            if min(spatial) < 1:
                raise InputError(f"kernel {self.kernel} is larger than the input {self.in_shape[1:]}")
            self.output_shape = (out,) + spatial
        self.n_outputs = 1
        for s in self.output_shape:
            self.n_outputs *= s
        self.generator: torch.Generator | None = None
        self.quantize_levels = 0

    def set_quantization(self, levels: int, clip: float = 3.0) -> None:
        """Transmit surviving values on ``levels`` uniform steps of ``[0, clip]`` (``clip`` is learned,
        as in PACT). ``levels=1`` sends a single value per surviving output: almost only *which*
        outputs fired. The device applies the same rounding (manifest ``layer.quantize``)."""
        if levels < 0:
            raise InputError(f"quantization levels must be >= 0, got {levels}")
        self.quantize_levels = int(levels)
        if levels and not hasattr(self, "quant_clip"):
            self.quant_clip = nn.Parameter(torch.tensor(float(clip)))

    @property
    def weight(self) -> torch.Tensor:
        return self.op.weight

    @property
    def bias(self) -> torch.Tensor:
        return self.op.bias

    def spec(self) -> dict[str, Any]:
        """Geometry for manifests (what the numpy device runtime needs to rebuild the op)."""
        return {
            "kind": self.kind,
            "in_shape": list(self.in_shape),
            "out_channels": int(self.output_shape[0]),
            "kernel": list(self.kernel),
            "stride": list(self.stride),
            "output_shape": list(self.output_shape),
            "n_outputs": int(self.n_outputs),
            "activation": "relu",
            "quantize": ({"levels": self.quantize_levels, "clip": float(self.quant_clip.detach())}
                         if self.quantize_levels else None),
        }

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU outputs before dropping."""
        z = (x - self.mean) / self.std
        if self.kind == "dense":
            z = z.flatten(1)
        h = torch.relu(self.op(z))
        if self.quantize_levels:
            h = quantize(h, self.quant_clip, self.quantize_levels)
        return h

    def sample_mask(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        keep = 1.0 - self.drop_rate
        return torch.rand(shape, generator=self.generator, device=device) < keep

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.activations(x)
        if mask is not None:
            return h * mask.reshape(h.shape).to(h.dtype)
        if self.drop_rate > 0:
            return h * self.sample_mask(h.shape, h.device).to(h.dtype)
        return h


class SplitModel(nn.Module):
    """A network whose first block runs on the device (``first``) and the rest on the server."""

    def __init__(self, first: LocalizedFirstLayer, rest: nn.Module, arch: dict[str, Any]) -> None:
        super().__init__()
        self.first = first
        self.rest = rest
        self.arch = arch  # {"name": ..., "kwargs": {...}}: enough to rebuild the architecture

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.rest(self.first(x, mask))
