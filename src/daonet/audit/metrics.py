"""Reconstruction quality: PSNR/SSIM for images, normalized MSE/Pearson correlation for signals.

Every metric is computed per request (one number per audited input) so that means, spreads and the
advantage over a baseline are all taken over the same requests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.metrics import structural_similarity

PSNR_CAP = 100.0  # dB, for exact reconstructions (MSE = 0)


def psnr(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Per-sample PSNR in dB; inputs ``(N, ...)``."""
    mse = ((x.reshape(len(x), -1) - y.reshape(len(y), -1)) ** 2).mean(1)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(data_range**2 / np.maximum(mse, 1e-300))
    return np.minimum(out, PSNR_CAP)


def ssim(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Per-sample SSIM (scikit-image, Gaussian-free 7x7 window, or smaller for tiny images); ``(N, C, H, W)``."""
    out = np.empty(len(x))
    for i in range(len(x)):
        a, b = np.asarray(x[i], np.float64), np.asarray(y[i], np.float64)
        side = min(a.shape[-2:])
        win = min(7, side if side % 2 else side - 1)
        if a.shape[0] == 1:
            out[i] = structural_similarity(a[0], b[0], data_range=data_range, win_size=win)
        else:
            out[i] = structural_similarity(a, b, data_range=data_range, win_size=win, channel_axis=0)
    return out


def nmse(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample ``‖y − x‖² / ‖x‖²`` (x: the original)."""
    xf, yf = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
    return ((yf - xf) ** 2).sum(1) / np.maximum((xf**2).sum(1), 1e-12)


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample Pearson correlation (0 where a reconstruction is constant)."""
    xf, yf = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
    xc, yc = xf - xf.mean(1, keepdims=True), yf - yf.mean(1, keepdims=True)
    den = np.sqrt((xc**2).sum(1) * (yc**2).sum(1))
    return np.where(den > 1e-12, (xc * yc).sum(1) / np.maximum(den, 1e-300), 0.0)


def primary_metric(kind: str) -> str:
    """The metric frontiers are drawn with: SSIM for images, correlation for signals."""
    return "ssim" if kind == "image" else "corr"


def evaluate(kind: str, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """All per-sample metrics for one data kind."""
    if kind == "image":
        return {"ssim": ssim(x, y), "psnr": psnr(x, y)}
    return {"corr": pearson(x, y), "nmse": nmse(x, y)}


def summarize(values: dict[str, np.ndarray], baseline: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Mean, standard deviation, quartiles; plus the paired advantage over ``baseline`` (same requests)."""
    out: dict[str, Any] = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        entry: dict[str, Any] = {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
                                 "p25": float(np.percentile(v, 25)), "p75": float(np.percentile(v, 75))}
        if baseline is not None and name in baseline:
            diff = v - np.asarray(baseline[name], dtype=np.float64)
            if name == "nmse":
                diff = -diff  # lower is better: advantage = baseline error - attack error
            entry["advantage"] = float(diff.mean())
            entry["advantage_se"] = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        out[name] = entry
    return out
