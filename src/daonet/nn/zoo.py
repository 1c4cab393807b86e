"""A small model zoo. Examples, not the limit: register any architecture whose first block is a
:class:`LocalizedFirstLayer` with :func:`register_arch` and the whole tool chain works with it.

Every zoo model takes ``device_layers`` (1: the paper's single localized layer; 2-3: a localized
block on the device), ``block_width`` (width of the block's later layers; default: the first
layer's) and, for the convolutional ones, ``device_pool`` (max pooling at the block's output). The
server part starts from whatever the block outputs. ``ldp_epsilon`` / ``ldp_noise_multiplier`` (with
``ldp_delta``, ``ldp_clip``, ``ldp_clip_quantile``) turn on the Gaussian mechanism for any of them
(:meth:`LocalizedFirstLayer.set_ldp`; ``daonet train --model-opt ldp_epsilon=4``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import InputError
from .layers import LDP_OPTIONS, LocalizedFirstLayer, SplitModel

Builder = Callable[..., tuple[LocalizedFirstLayer, nn.Module]]
ARCHS: dict[str, Builder] = {}


def register_arch(name: str) -> Callable[[Builder], Builder]:
    """Register ``builder(in_shape, n_classes, drop_rate, mean, std, **kwargs) -> (first, rest)``."""

    def deco(fn: Builder) -> Builder:
        ARCHS[name] = fn
        return fn

    return deco


@register_arch("mlp")
def mlp(in_shape, n_classes, drop_rate, mean, std, hidden: int = 800, hidden2: int = 256,
        device_layers: int = 1, block_width: int | None = None):
    """Dense first layer (e.g. 784-800; a block adds ``block_width``-wide dense layers), then ``hidden2`` units
    and the classifier."""
    first = LocalizedFirstLayer("dense", in_shape, hidden, drop_rate=drop_rate, mean=mean, std=std,
                                device_layers=device_layers, block_width=block_width)
    rest = nn.Sequential(
        nn.Linear(first.output_shape[0], hidden2), nn.BatchNorm1d(hidden2), nn.ReLU(), nn.Linear(hidden2, n_classes)
    )
    return first, rest


@register_arch("cnn")
def cnn(in_shape, n_classes, drop_rate, mean, std, stem: int = 64, patch: int = 4, width: int = 64,
        stride: int | None = None, device_layers: int = 1, block_width: int | None = None, device_pool: int = 0):
    """Patchify 2-D stem (kernel = stride = ``patch``; ``stride < patch`` overlaps), then a small conv net."""
    if len(in_shape) != 3:
        raise InputError(f"cnn needs image inputs shaped (C, H, W), got {tuple(in_shape)}")
    first = LocalizedFirstLayer("conv2d", in_shape, stem, kernel=patch, stride=stride or patch, drop_rate=drop_rate,
                                mean=mean, std=std, device_layers=device_layers, block_width=block_width,
                                device_pool=device_pool)
    rest = nn.Sequential(
        nn.Conv2d(first.output_shape[0], width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, n_classes),
    )
    return first, rest


@register_arch("cnn1d")
def cnn1d(in_shape, n_classes, drop_rate, mean, std, stem: int = 32, patch: int = 4, width: int = 64,
          stride: int | None = None, device_layers: int = 1, block_width: int | None = None, device_pool: int = 0):
    """Patchify 1-D stem for signals (ECG, body sensors; ``stride < patch`` overlaps), then a temporal conv net."""
    if len(in_shape) != 2:
        raise InputError(f"cnn1d needs signal inputs shaped (C, L), got {tuple(in_shape)}")
    first = LocalizedFirstLayer("conv1d", in_shape, stem, kernel=patch, stride=stride or patch, drop_rate=drop_rate,
                                mean=mean, std=std, device_layers=device_layers, block_width=block_width,
                                device_pool=device_pool)
    rest = nn.Sequential(
        nn.Conv1d(first.output_shape[0], width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU(),
        nn.Conv1d(width, width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(width, n_classes),
    )
    return first, rest


def build_model(arch: dict[str, Any]) -> SplitModel:
    """Build from ``{"name", "in_shape", "n_classes", "drop_rate", "mean", "std", "kwargs"}``."""
    name = arch.get("name")
    if name not in ARCHS:
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(sorted(ARCHS))}")
    kwargs = dict(arch.get("kwargs", {}))
    # the Gaussian mechanism's options (``--model-opt ldp_epsilon=4``, or top-level keys): not the builder's
    ldp = {k: arch[k] for k in LDP_OPTIONS if k in arch} | {k: kwargs.pop(k) for k in LDP_OPTIONS if k in kwargs}
    try:
        first, rest = ARCHS[name](
            tuple(arch["in_shape"]), int(arch["n_classes"]), float(arch["drop_rate"]),
            arch.get("mean"), arch.get("std"), **kwargs,
        )
    except TypeError as exc:
        raise InputError(f"bad options for model {name!r}: {exc}") from exc
    if arch.get("quantize_levels"):
        first.set_quantization(int(arch["quantize_levels"]))
    if arch.get("noise_std"):
        first.set_noise(float(arch["noise_std"]))
    if ldp:
        first.set_ldp(**ldp)
    return SplitModel(first, rest, dict(arch))
