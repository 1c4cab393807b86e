"""Per-feature input scaling that travels in the device bundle, so the device takes raw inputs.

Tabular data mixes units (a radius in mm next to an area in mm²): one mean/std for every column leaves the
large columns dominating the first layer. Standard scaling per column, fitted on the training split, fixes it;
the statistics go into the device manifest's ``normalization`` (``per: feature``) and both device runtimes
apply ``(x - mean) / std`` before the first layer (docs/preprocessing.md). numpy only: the device side imports
nothing else.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["fit_feature_scaling", "scaling_from"]

MIN_STD = 1e-8  # a constant feature gets std 1 (as scikit-learn's StandardScaler does), not a division by ~0


def fit_feature_scaling(x_train: np.ndarray) -> tuple[list[float], list[float]]:
    """Mean and std of every input value over the training examples (``x_train`` is ``(N, ...)``), flattened in
    C order; a constant value gets std 1. Fit on the training split only: test statistics would leak."""
    x = np.asarray(x_train, dtype=np.float64).reshape(len(x_train), -1)
    if len(x) < 2 or not np.isfinite(x).all():
        raise InputError(f"feature scaling needs two or more finite training examples, got {len(x)}")
    mean, std = x.mean(0), x.std(0)
    std = np.where(std < MIN_STD, 1.0, std)
    return [float(v) for v in mean], [float(v) for v in std]


def scaling_from(preprocess: Any, in_shape: tuple[int, ...]) -> tuple[list[float], list[float]]:
    """``preprocess`` as the ``(mean, std)`` lists the first layer normalizes with, checked against the input.

    Accepts a fitted scikit-learn ``StandardScaler`` (its ``mean_`` and ``scale_``; ``with_mean=False`` /
    ``with_std=False`` give 0 / 1), a ``(mean, std)`` pair or a ``{"mean": ..., "std": ...}`` dict of arrays.
    Either holds one value per input value (per feature, dense first layers) or one per channel.

    Raises:
        InputError: not one of those forms, a shape that fits neither count, NaN/inf, or a std <= 0.
    """
    n_values, channels = math.prod(in_shape), in_shape[0]
    if hasattr(preprocess, "fit") and hasattr(preprocess, "transform"):  # a scikit-learn StandardScaler
        if not hasattr(preprocess, "n_features_in_"):
            raise InputError("preprocess is an unfitted scaler; call scaler.fit(x_train) first")
        mean_raw = getattr(preprocess, "mean_", None)
        std_raw = getattr(preprocess, "scale_", None)
        count = int(preprocess.n_features_in_)
        mean_raw = np.zeros(count) if mean_raw is None else mean_raw
        std_raw = np.ones(count) if std_raw is None else std_raw
    elif isinstance(preprocess, dict):
        unknown = sorted(set(preprocess) - {"mean", "std"})
        if unknown or not preprocess:
            raise InputError(f"preprocess takes the keys mean and std, got {sorted(preprocess)}")
        mean_raw, std_raw = preprocess.get("mean"), preprocess.get("std")
        if mean_raw is None and std_raw is None:
            raise InputError("preprocess has neither mean nor std; give at least one")
    elif isinstance(preprocess, tuple | list) and len(preprocess) == 2:
        mean_raw, std_raw = preprocess
    else:
        raise InputError(f"preprocess must be a fitted sklearn StandardScaler, a (mean, std) pair or "
                         f"{{'mean': ..., 'std': ...}}, got {type(preprocess).__name__}")
    arrays = []
    for name, raw, fill in (("mean", mean_raw, 0.0), ("std", std_raw, 1.0)):
        other = std_raw if name == "mean" else mean_raw
        if raw is None:
            raw = np.full(np.size(np.asarray(other, dtype=np.float64)), fill)
        try:
            arr = np.asarray(raw, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise InputError(f"preprocess {name} must be numbers, got {type(raw).__name__}") from exc
        if arr.size not in (n_values, channels):
            raise InputError(f"preprocess {name} has {arr.size} values; the model's input {tuple(in_shape)} needs "
                             f"one per input value ({n_values}) or one per channel ({channels})")
        if not np.isfinite(arr).all():
            raise InputError(f"preprocess {name} holds NaN/inf at position {int(np.argmin(np.isfinite(arr)))}")
        arrays.append(arr)
    mean, std = arrays
    if mean.size != std.size:
        raise InputError(f"preprocess mean has {mean.size} values but std {std.size}; give both per feature or "
                         "both per channel")
    if (std <= 0).any():
        bad = int(np.argmax(std <= 0))
        raise InputError(f"preprocess std must be > 0 everywhere, got {std[bad]} at position {bad} (a constant "
                         "feature: give it std 1)")
    return [float(v) for v in mean], [float(v) for v in std]
