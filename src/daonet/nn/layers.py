"""The localized first layer: normalize -> linear/conv -> ReLU -> drop outputs (runs on the device).

Dropping is Bernoulli with rate ``p`` and is active in training *and* at inference (unlike
ordinary dropout). Surviving values are **not rescaled**: the server receives the exact ReLU
outputs ``h_S = relu(W_S x + b_S)``, which keeps the privacy certificate's algebra exact and
training/inference identical (the rest of the network simply learns the 1-p scale).

Two options go beyond the paper's single layer (both off by default):

* a **localized first block** (``device_layers`` > 1): after the first layer, further dense layers or
  "same" 3-wide convolutions, each followed by ReLU, and an optional max pooling, all on the device;
  dropping happens at the block's output. The block is not linear in the input, so the algebraic
  certificate does not apply to it: the audit's learned attackers measure it.
* **noise on surviving values** (``noise_std`` > 0): every surviving non-zero value gets
  ``max(h + sigma * e, floor)`` with ``e`` standard normal. ``noise_std`` is relative to the RMS of the
  non-zero activations (per batch while training); after training the absolute ``sigma`` is fixed from
  the public training data (:meth:`LocalizedFirstLayer.calibrate_noise`) and exported in the manifest.
  The floor keeps values positive, because on the wire zero means "absent".
* **the Gaussian mechanism** (``ldp_epsilon`` or ``ldp_noise_multiplier``; :meth:`LocalizedFirstLayer.set_ldp`):
  the kept vector (ReLU zeros included) is clipped to L2 norm ``C`` and every kept output gets N(0, sigma^2),
  ``sigma = z sqrt(2) C`` with ``z`` from the accountant (:mod:`daonet.ldp`): a per-request (epsilon, delta)
  bound. While training ``C`` is a quantile of the batch's kept-vector norms (or the fixed ``ldp_clip``); after
  training it is fixed from the public training data and put on the device's integer grid (docs/privacy-ldp.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError

KINDS = ("dense", "conv1d", "conv2d")
MAX_DEVICE_LAYERS = 3
NOISE_FLOOR_FRACTION = 0.01  # floor = max(0.01 * sigma, NOISE_MIN_FLOOR): surviving values stay non-zero
NOISE_MIN_FLOOR = 1e-4  # above float16's smallest normal (6.1e-5), so a float16 wire never drops a survivor
LDP_OPTIONS = ("ldp_epsilon", "ldp_delta", "ldp_clip", "ldp_clip_quantile", "ldp_noise_multiplier")
LDP_DEFAULT_QUANTILE = 0.5  # C = the median kept-vector norm on public data (as adaptive clipping in DP-SGD aims)


@dataclass(frozen=True)
class LdpRelease:
    """One batch through the Gaussian mechanism: what is sent, the mechanism's mean (the clipped kept vector),
    the keep-mask and sigma. The conditional bottleneck needs the mean and sigma, not only the noisy vector."""

    sent: torch.Tensor
    mean: torch.Tensor
    keep: torch.Tensor
    sigma: float


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

    # buffers and parameters registered in __init__ (typed here: nn.Module's __getattr__ is untyped)
    mean: torch.Tensor
    std: torch.Tensor
    noise_sigma: torch.Tensor
    ldp_grid: torch.Tensor
    ldp_clip_steps: torch.Tensor
    ldp_noise_steps: torch.Tensor
    quant_clip: nn.Parameter
    op: nn.Conv1d | nn.Conv2d | nn.Linear

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
        device_layers: int = 1,
        block_width: int | None = None,
        device_pool: int = 0,
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
        self.set_normalization(mean, std)
        if kind == "dense":
            n_in = 1
            for s in self.in_shape:
                n_in *= s
            self.op = nn.Linear(n_in, out)
            self.kernel: tuple[int, ...] = ()
            self.stride: tuple[int, ...] = ()
            self.output_shape: tuple[int, ...] = (out,)
        else:
            nd = 1 if kind == "conv1d" else 2
            if len(self.in_shape) != nd + 1:
                raise InputError(f"{kind} needs inputs shaped (C, {'L' if nd == 1 else 'H, W'}), got {in_shape}")
            self.kernel = _as_tuple(kernel if kernel is not None else 4, nd)
            self.stride = _as_tuple(stride if stride is not None else self.kernel, nd)
            conv: Any = nn.Conv1d if nd == 1 else nn.Conv2d  # kernel/stride: tuples of the conv's rank
            self.op = conv(channels, out, self.kernel, self.stride)
            spatial = tuple(
                (s - k) // st + 1 for s, k, st in zip(self.in_shape[1:], self.kernel, self.stride, strict=True)
            )
            if min(spatial) < 1:
                raise InputError(f"kernel {self.kernel} is larger than the input {self.in_shape[1:]}")
            self.output_shape = (out,) + spatial
        self.first_output_shape: tuple[int, ...] = self.output_shape
        self.block = self._build_block(device_layers, block_width or out, device_pool)
        self.n_outputs = 1
        for s in self.output_shape:
            self.n_outputs *= s
        self.generator: torch.Generator | None = None
        self.quantize_levels = 0
        self.noise_std = 0.0  # relative to the RMS of non-zero activations; 0 = off
        self.ldp: dict[str, Any] | None = None  # the Gaussian mechanism's options (set_ldp); None = off
        self._ldp_z: float | None = None

    def set_normalization(self, mean: list[float] | None, std: list[float] | None) -> None:
        """``(x - mean) / std`` before the layer: one value per input channel, or per input value (a table's
        columns; dense layers only, as the device manifest's ``per: feature``). ``None``: 0 and 1."""
        channels, n_values = self.in_shape[0], math.prod(self.in_shape)
        mean = list(mean) if mean is not None else [0.0] * (len(std) if std is not None else channels)
        std = list(std) if std is not None else [1.0] * len(mean)
        if len(mean) != len(std) or len(mean) not in (channels, n_values):
            raise InputError(f"normalization needs one mean/std per input channel ({channels}) or per input value "
                             f"({n_values}), got {len(mean)} means and {len(std)} stds")
        per_feature = len(mean) == n_values != channels
        if per_feature and self.kind != "dense":
            raise InputError(f"per-feature normalization ({n_values} values) needs a dense first layer, this one is "
                             f"{self.kind}: give one mean/std per channel ({channels}), or use a dense model (mlp)")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and min(std) > 0):
            raise InputError("normalization mean/std must be finite and every std > 0 (a constant feature has std 0: "
                             "drop the column, or give it std 1)")
        self.per_feature = per_feature
        bshape = self.in_shape if per_feature else (channels,) + (1,) * (len(self.in_shape) - 1)
        old = getattr(self, "mean", None)
        where = old.device if isinstance(old, torch.Tensor) else None
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32, device=where).reshape(bshape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32, device=where).reshape(bshape))

    @property
    def has_normalization(self) -> bool:
        """True when the layer normalizes its input (any mean != 0 or std != 1)."""
        return bool((self.mean != 0).any() or (self.std != 1).any())

    def _build_block(self, device_layers: int, width: int, pool: int) -> nn.ModuleList:
        """Layers 2..``device_layers`` of the device block (+ optional max pooling); updates ``output_shape``."""
        if not 1 <= int(device_layers) <= MAX_DEVICE_LAYERS:
            raise InputError(f"device layers must be 1 to {MAX_DEVICE_LAYERS}, got {device_layers}")
        if width < 1:
            raise InputError(f"block width must be at least 1, got {width}")
        if pool < 0 or pool == 1:
            raise InputError(f"device pooling must be 0 (off) or a window of at least 2, got {pool}")
        self.device_layers = int(device_layers)
        self.block_width = int(width) if device_layers > 1 else None
        self.device_pool = int(pool)
        block = nn.ModuleList()
        channels = self.output_shape[0]
        for _ in range(self.device_layers - 1):
            if self.kind == "dense":
                block.append(nn.Linear(channels, width))
            else:
                conv = nn.Conv1d if self.kind == "conv1d" else nn.Conv2d
                block.append(conv(channels, width, 3, 1, 1))  # "same" convolution: spatial shape kept
            channels = width
        spatial = self.output_shape[1:]
        if pool:
            if self.kind == "dense":
                raise InputError("device pooling needs a convolutional first layer (cnn, cnn1d); "
                                 "a dense block has no spatial axis")
            if min(spatial) < pool:
                raise InputError(f"device pooling window {pool} is larger than the block's output {spatial}")
            spatial = tuple(s // pool for s in spatial)
        self.output_shape = (channels, *spatial)
        return block

    @property
    def is_linear(self) -> bool:
        """True for the paper's single linear layer (+ ReLU): the algebraic certificate applies."""
        return self.device_layers == 1 and not self.device_pool

    def set_noise(self, noise_std: float) -> None:
        """Add Gaussian noise to surviving values: ``noise_std`` times the RMS of the non-zero activations.

        The absolute scale used at inference is the ``noise_sigma`` buffer (saved with the weights), set by
        :meth:`calibrate_noise` after training; while training the current batch's RMS is used.
        """
        if not (noise_std >= 0 and float(noise_std) < float("inf")):
            raise InputError(f"noise std must be a finite number >= 0, got {noise_std}")
        if noise_std and self.quantize_levels:
            raise InputError("noise on surviving values and quantization cannot be combined: noise would undo "
                             "the rounding; pick one")
        if noise_std and self.ldp is not None:
            raise InputError("noise on surviving values and the Gaussian mechanism (ldp_*) cannot be combined")
        self.noise_std = float(noise_std)
        if noise_std and not hasattr(self, "noise_sigma"):
            self.register_buffer("noise_sigma", torch.tensor(0.0))

    @torch.no_grad()
    def calibrate_noise(self, x: torch.Tensor, batch: int = 1000) -> float:
        """Fix the absolute noise scale from public data: ``noise_std`` x RMS of the non-zero activations."""
        if self.ldp is not None:
            return self._calibrate_ldp(x, batch)
        if not self.noise_std:
            return 0.0
        sq, count = 0.0, 0
        for i in range(0, len(x), batch):
            h = self.activations(x[i:i + batch])
            nz = h[h > 0]
            sq += float((nz.double() ** 2).sum())
            count += int(nz.numel())
        rms = (sq / count) ** 0.5 if count else 1.0
        self.noise_sigma.fill_(self.noise_std * rms)
        return float(self.noise_sigma)

    def set_ldp(self, ldp_epsilon: float | None = None, ldp_delta: float = 1e-5, ldp_clip: float | None = None,
                ldp_clip_quantile: float = LDP_DEFAULT_QUANTILE, ldp_noise_multiplier: float | None = None) -> None:
        """Run the Gaussian mechanism on the kept outputs: a per-request (epsilon, delta) bound.

        Give ``ldp_epsilon`` (sigma is calibrated by the accountant at ``ldp_delta``) or ``ldp_noise_multiplier``
        (``z = sigma / sensitivity``). ``ldp_clip``: a fixed absolute clip ``C``; default: the
        ``ldp_clip_quantile`` quantile of the kept-vector norms (per batch while training, on public data after).
        The accountant (dp-accounting) runs on first use, so a server rebuilding the network needs none.
        """
        if (ldp_epsilon is None) == (ldp_noise_multiplier is None):
            raise InputError("the Gaussian mechanism needs exactly one of ldp_epsilon (the accountant finds sigma) or "
                             "ldp_noise_multiplier (sigma / sensitivity)")
        for name, v in (("ldp_epsilon", ldp_epsilon), ("ldp_noise_multiplier", ldp_noise_multiplier),
                        ("ldp_clip", ldp_clip)):
            if v is not None and not (isinstance(v, int | float) and 0 < float(v) < float("inf")):
                raise InputError(f"{name} must be a positive number, got {v!r}")
        if not 0 < float(ldp_delta) < 1:
            raise InputError(f"ldp_delta must be in (0, 1), got {ldp_delta!r}")
        if not 0 < float(ldp_clip_quantile) <= 1:
            raise InputError(f"ldp_clip_quantile must be in (0, 1], got {ldp_clip_quantile!r}")
        if self.noise_std or self.quantize_levels:
            raise InputError("the Gaussian mechanism (ldp_*) cannot be combined with --noise-std or --quantize-levels: "
                             "it adds its own noise to every kept output")
        self.ldp = {"epsilon": None if ldp_epsilon is None else float(ldp_epsilon), "delta": float(ldp_delta),
                    "clip": None if ldp_clip is None else float(ldp_clip), "clip_quantile": float(ldp_clip_quantile),
                    "noise_multiplier": None if ldp_noise_multiplier is None else float(ldp_noise_multiplier)}
        self._ldp_z = self.ldp["noise_multiplier"]
        for name in ("ldp_grid", "ldp_clip_steps", "ldp_noise_steps"):
            if not hasattr(self, name):
                self.register_buffer(name, torch.tensor(0.0, dtype=torch.float64))

    @property
    def ldp_noise_multiplier(self) -> float:
        """``z = sigma / sensitivity`` (calibrated from epsilon by the accountant, once)."""
        assert self.ldp is not None
        if self._ldp_z is None:
            from ..ldp import noise_multiplier_for

            self._ldp_z = noise_multiplier_for(self.ldp["epsilon"], self.ldp["delta"])
        return self._ldp_z

    @property
    def ldp_calibrated(self) -> bool:
        return self.ldp is not None and float(self.ldp_grid) > 0

    def ldp_params(self) -> Any:
        """The device's integer mechanism (:class:`daonet.ldp.LdpParams`) fixed by :meth:`calibrate_noise`."""
        from ..ldp import LdpParams

        if not self.ldp_calibrated:
            raise InputError("the Gaussian mechanism's clip is not fixed yet: call calibrate_noise(public_x) after "
                             "training (daonet train does)")
        return LdpParams(float(self.ldp_grid), int(self.ldp_noise_steps), int(self.ldp_clip_steps))

    def _kept_norms(self, h: torch.Tensor) -> torch.Tensor:
        return h.flatten(1).norm(dim=1)

    @torch.no_grad()
    def _calibrate_ldp(self, x: torch.Tensor, batch: int) -> float:
        """Fix ``C`` (the quantile of kept-vector norms over public data, masks from a seeded generator, or the
        given ``ldp_clip``) and ``sigma = z sqrt(2) C``, both on the device's power-of-two grid."""
        from ..ldp import grid_params

        assert self.ldp is not None
        clip = self.ldp["clip"]
        if clip is None:
            gen = torch.Generator(device=x.device).manual_seed(0)
            norms = []
            for i in range(0, len(x), batch):
                h = self.activations(x[i:i + batch])
                if self.drop_rate > 0:
                    h = h * (torch.rand(h.shape, generator=gen, device=h.device) >= self.drop_rate).to(h.dtype)
                norms.append(self._kept_norms(h).double())
            clip = float(torch.quantile(torch.cat(norms), self.ldp["clip_quantile"]))
            if not clip > 0:
                raise InputError("every kept activation vector of the public data is 0: no clip can be fixed")
        params = grid_params(self.ldp_noise_multiplier * math.sqrt(2.0) * clip, clip)
        self.ldp_grid.fill_(params.grid)
        self.ldp_clip_steps.fill_(params.clip_steps)
        self.ldp_noise_steps.fill_(params.noise_steps)
        return params.std

    def ldp_release(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                    noise: torch.Tensor | None = None) -> LdpRelease:
        """The Gaussian mechanism on ``x``'s activations: the mask first (input-independent), then the kept vector
        clipped to norm ``C`` (the mechanism's mean) and N(0, sigma^2) added at every kept output.

        Training: ``C`` = the batch's quantile of kept norms (detached; or ``ldp_clip``). Evaluation: the
        calibrated grid values (the device adds the exact discrete Gaussian of the same sigma on that grid).
        """
        h = self.activations(x)
        if mask is not None:
            keep = mask.reshape(h.shape).bool()
        elif self.drop_rate > 0:
            keep = self.sample_mask(h.shape, h.device)
        else:
            keep = torch.ones(h.shape, dtype=torch.bool, device=h.device)
        h = h * keep.to(h.dtype)
        if self.training or not self.ldp_calibrated:
            assert self.ldp is not None
            clip = self.ldp["clip"]
            if clip is None:
                clip = float(torch.quantile(self._kept_norms(h.detach()).double(), self.ldp["clip_quantile"]))
            sigma = self.ldp_noise_multiplier * math.sqrt(2.0) * clip
        else:
            params = self.ldp_params()
            clip, sigma = params.clip, params.std
        norms = self._kept_norms(h).clamp_min(1e-12)
        scale = torch.clamp(clip / norms, max=1.0).reshape((-1,) + (1,) * (h.dim() - 1))
        mean = h * scale.to(h.dtype)
        if noise is None:
            noise = torch.randn(h.shape, generator=self.generator, device=h.device, dtype=h.dtype)
        sent = mean + sigma * noise.reshape(h.shape).to(h.dtype) * keep.to(h.dtype)
        return LdpRelease(sent, mean, keep, float(sigma))

    @property
    def noise_floor(self) -> float:
        return max(NOISE_FLOOR_FRACTION * float(self.noise_sigma), NOISE_MIN_FLOOR) if self.noise_std else 0.0

    def set_quantization(self, levels: int, clip: float = 3.0) -> None:
        """Transmit surviving values on ``levels`` uniform steps of ``[0, clip]`` (``clip`` is learned,
        as in PACT). ``levels=1`` sends a single value per surviving output: almost only *which*
        outputs fired. The device applies the same rounding (manifest ``layer.quantize``)."""
        if levels < 0:
            raise InputError(f"quantization levels must be >= 0, got {levels}")
        if levels and (self.noise_std or self.ldp is not None):
            raise InputError("quantization and noise on surviving values cannot be combined; pick one")
        self.quantize_levels = int(levels)
        if levels and not hasattr(self, "quant_clip"):
            self.quant_clip = nn.Parameter(torch.tensor(float(clip)))

    @property
    def weight(self) -> torch.Tensor:
        return self.op.weight

    @property
    def bias(self) -> torch.Tensor:
        assert self.op.bias is not None  # every first layer here has a bias
        return self.op.bias

    def block_spec(self) -> list[dict[str, Any]]:
        """The device block after the first layer, in order (empty for the paper's single layer).

        Each step: ``{"op": "dense"|"conv1d"|"conv2d", "n_in", "n_out", "kernel", "stride", "padding",
        "activation": "relu", "weight", "bias"}`` (weight/bias: tensor names in the device bundle) or
        ``{"op": "maxpool", "size"}`` (window = stride, floor, over every spatial axis).
        """
        steps: list[dict[str, Any]] = []
        for i, op in enumerate(self.block):
            w: torch.Tensor = op.weight  # type: ignore[assignment]  # the block holds Linear/Conv layers
            step: dict[str, Any] = {"op": self.kind, "n_in": int(w.shape[1]), "n_out": int(w.shape[0]),
                                    "activation": "relu", "weight": f"block.{i}.weight", "bias": f"block.{i}.bias"}
            if self.kind == "dense":
                step.update(kernel=[], stride=[], padding=[])
            else:
                nd = len(self.kernel)
                step.update(kernel=[3] * nd, stride=[1] * nd, padding=[1] * nd)
            steps.append(step)
        if self.device_pool:
            steps.append({"op": "maxpool", "size": self.device_pool})
        return steps

    def block_tensors(self) -> dict[str, torch.Tensor]:
        """The block's weights under the names :meth:`block_spec` gives."""
        out: dict[str, torch.Tensor] = {}
        for i, op in enumerate(self.block):
            out[f"block.{i}.weight"], out[f"block.{i}.bias"] = op.weight, op.bias  # type: ignore[assignment]
        return out

    def spec(self) -> dict[str, Any]:
        """Geometry for manifests (what the numpy device runtime needs to rebuild the op).

        ``out_channels`` is the *first layer's*; ``output_shape``/``n_outputs`` describe what is dropped and
        sent (the block's output). ``block`` and ``first_output_shape`` appear only for a device block.
        """
        spec: dict[str, Any] = {
            "kind": self.kind,
            "in_shape": list(self.in_shape),
            "out_channels": int(self.first_output_shape[0]),
            "kernel": list(self.kernel),
            "stride": list(self.stride),
            "output_shape": list(self.output_shape),
            "n_outputs": int(self.n_outputs),
            "activation": "relu",
            "quantize": ({"levels": self.quantize_levels, "clip": float(self.quant_clip.detach())}
                         if self.quantize_levels else None),
        }
        if not self.is_linear:
            spec["first_output_shape"] = list(self.first_output_shape)
            spec["block"] = self.block_spec()
        return spec

    def noise_spec(self) -> dict[str, Any] | None:
        """The manifest's ``noise`` object (absolute scale, fixed by :meth:`calibrate_noise`), or None."""
        if self.ldp is not None:
            from ..ldp import noise_spec

            return noise_spec(self.ldp_params(), self.ldp["delta"], target_epsilon=self.ldp["epsilon"],
                              clip_quantile=None if self.ldp["clip"] is not None else self.ldp["clip_quantile"])
        if not self.noise_std:
            return None
        return {"kind": "gaussian", "std": float(self.noise_sigma), "relative_std": self.noise_std,
                "floor": self.noise_floor, "applies_to": "surviving"}

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU outputs before dropping."""
        z = (x - self.mean) / self.std
        if self.kind == "dense":
            z = z.flatten(1)
        h = torch.relu(self.op(z))
        for op in self.block:
            h = torch.relu(op(h))
        if self.device_pool:
            pool = nn.functional.max_pool1d if self.kind == "conv1d" else nn.functional.max_pool2d
            h = pool(h, self.device_pool)
        if self.quantize_levels:
            h = quantize(h, self.quant_clip, self.quantize_levels)
        return h

    def sample_mask(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        keep = 1.0 - self.drop_rate
        return torch.rand(shape, generator=self.generator, device=device) < keep

    def add_noise(self, h: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``max(h + sigma * e, floor)`` on non-zero values (zeros stay zeros: they are not sent).

        ``noise``: the standard noise ``e`` (same shape as ``h``), e.g. the device's own draw in parity
        tests; default: drawn from ``self.generator``. Training uses the batch's RMS for sigma.
        """
        if not self.noise_std:
            return h
        if self.training:
            nz = h.detach()[h.detach() > 0]
            sigma = self.noise_std * float(nz.pow(2).mean().sqrt()) if nz.numel() else 0.0
            floor = max(NOISE_FLOOR_FRACTION * sigma, NOISE_MIN_FLOOR)
        else:
            sigma, floor = float(self.noise_sigma), self.noise_floor
        if noise is None:
            noise = torch.randn(h.shape, generator=self.generator, device=h.device, dtype=h.dtype)
        noisy = torch.clamp(h + sigma * noise.reshape(h.shape).to(h.dtype), min=floor)
        return torch.where(h > 0, noisy, h)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        if self.ldp is not None:  # the mask first (input-independent), then clip + noise on every kept output
            return self.ldp_release(x, mask, noise).sent
        h = self.activations(x)
        if mask is not None:
            h = h * mask.reshape(h.shape).to(h.dtype)
        elif self.drop_rate > 0:
            h = h * self.sample_mask(h.shape, h.device).to(h.dtype)
        return self.add_noise(h, noise)


class SplitModel(nn.Module):
    """A network whose first block runs on the device (``first``) and the rest on the server."""

    def __init__(self, first: LocalizedFirstLayer, rest: nn.Module, arch: dict[str, Any]) -> None:
        super().__init__()
        self.first = first
        self.rest = rest
        self.arch = arch  # {"name": ..., "kwargs": {...}}: enough to rebuild the architecture

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.rest(self.first(x, mask, noise))
