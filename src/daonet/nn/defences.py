"""Training-time defences that push the privacy-accuracy frontier beyond plain dropping.

- :func:`distance_correlation`: NoPeek (Vepakomma et al., 2020): penalize the statistical dependence
  between the raw inputs and what is transmitted.
- :class:`InverseAdversary`: privacy-adversarial training: a decoder learns to rebuild ``x`` from the
  transmitted activations while the first layer learns to make that hard (min-max), dropping active.
- :class:`AdversaryPool`: min-max adversaries re-initialised and trained towards convergence on a schedule,
  the model penalised on the best one's gain over a label-only decoder (what the server must learn anyway).
- :class:`ClassReferences` / :func:`conditional_nats`: a conditional information bottleneck for the Gaussian
  mechanism. With N(0, sigma^2) on every kept output, ``KL(N(mean(x), s2) || N(c_y, s2)) = |mean(x) - c_y|^2 /
  (2 sigma^2)`` bounds what one request carries about ``x`` beyond its class ``y`` (for any class references
  ``c_y``: a variational upper bound on ``I(x; sent | y, mask)``). Penalising it removes within-class detail.

Quantization of the surviving values lives in :class:`daonet.nn.LocalizedFirstLayer` because the
device must apply it too. None of these replaces the audit: the audit retrains its attackers from
scratch against the final model.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from .layers import LocalizedFirstLayer


def _centred_distances(z: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(z, z)
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation in [0, 1] between two batches (rows are samples)."""
    a, b = _centred_distances(x.flatten(1)), _centred_distances(h.flatten(1))
    dcov_xy = (a * b).mean().clamp_min(0)
    dcov_xx, dcov_yy = (a * a).mean(), (b * b).mean()
    return torch.sqrt(dcov_xy / torch.sqrt(dcov_xx * dcov_yy + 1e-12) + 1e-12)


ADVERSARIES = ("mlp", "adaptive")


class InverseAdversary(nn.Module):
    """A decoder from the transmitted (dropped) activations back to the normalized input.

    ``kind="mlp"`` sees the dropped vector only (the original min-max defence). ``kind="adaptive"`` is the
    stronger adversary the audit showed is needed: like the audit's adaptive decoder it also sees scale-free
    views of the vector (``log1p``), the support pattern and the server's class probabilities, so the model
    cannot hide information behind a scale trick or in which outputs arrive.
    """

    def __init__(self, n_outputs: int, n_inputs: int, hidden: int = 512, kind: str = "mlp",
                 n_classes: int = 0) -> None:
        super().__init__()
        if kind not in ADVERSARIES:
            raise ValueError(f"adversary must be one of {', '.join(ADVERSARIES)}, got {kind!r}")
        self.kind = kind
        n_in = n_outputs if kind == "mlp" else 3 * n_outputs + n_classes
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_inputs))

    def features(self, h: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
        h = h.flatten(1)
        if self.kind == "mlp":
            return h
        scale = h.detach().pow(2).sum() / (h.detach() > 0).sum().clamp_min(1)
        hs = h / scale.sqrt().clamp_min(1e-6)
        parts = [hs, torch.log1p(hs.clamp_min(0)), (h > 0).float()]
        if probs is not None:
            parts.append(probs)
        return torch.cat(parts, 1)

    def forward(self, h: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.features(h, probs))


class AdversaryPool:
    """Min-max adversaries that cannot be fooled by a model that only beats a stale decoder: every reset they are
    re-initialised and trained alone on the frozen model (towards convergence) before the model is penalised
    again, kinds alternate ``mlp`` and ``adaptive`` (the latter also sees the server's probabilities), and the
    penalty is the best member's per-request gain over a label-only decoder (the class mean of the input: the
    MSE-optimal decoder from the class alone). Nothing is gained by making an attacker worse than the label-only
    decoder, so the few-huge-values trick that fooled the jointly trained adversary earns nothing here."""

    def __init__(self, n_outputs: int, n_inputs: int, hidden: int, n_classes: int, size: int,
                 label_means: torch.Tensor) -> None:
        self.shape = (n_outputs, n_inputs, hidden, n_classes)
        self.size = size
        self.label_means = label_means  # (n_classes, n_inputs): the label-only decoder
        self.members: list[tuple[InverseAdversary, torch.optim.Optimizer]] = []
        self.reset()

    def reset(self) -> None:
        n_outputs, n_inputs, hidden, n_classes = self.shape
        self.members = []
        for k in range(self.size):
            adv = InverseAdversary(n_outputs, n_inputs, hidden, ADVERSARIES[k % len(ADVERSARIES)], n_classes)
            self.members.append((adv, torch.optim.Adam(adv.parameters(), lr=1e-3)))

    @staticmethod
    def _probs(adv: InverseAdversary, probs: torch.Tensor) -> torch.Tensor | None:
        return probs if adv.kind == "adaptive" else None

    def step(self, h: torch.Tensor, probs: torch.Tensor, target: torch.Tensor) -> None:
        """One update of every member on a detached batch (the attackers' side of the game)."""
        h, probs = h.detach(), probs.detach()
        for adv, opt in self.members:
            loss = nn.functional.mse_loss(adv(h, self._probs(adv, probs)), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def gain(self, h: torch.Tensor, probs: torch.Tensor, target: torch.Tensor, y: torch.Tensor,
             margin: float = 0.0) -> torch.Tensor:
        """Per request: how much lower the best member's squared error is than the label-only decoder's, less a
        ``margin`` (a fraction of the label-only error the attackers may gain for free; >= 0).
        Gradients flow into the model through ``h`` and ``probs`` (the server part is trained too, so its
        probabilities carry the class and not the style); the members' own weights are not the model's."""
        label_err = (target - self.label_means[y]).pow(2).mean(1)
        errs = torch.stack([(adv(h, self._probs(adv, probs)) - target).pow(2).mean(1) for adv, _ in self.members])
        return (label_err * (1.0 - margin) - errs.min(0).values).clamp_min(0)


def label_means(target: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The label-only decoder's answer per class: the mean of the (normalised, flattened) inputs of that class."""
    sums = torch.zeros(n_classes, target.shape[1], dtype=target.dtype).index_add_(0, y, target)
    counts = torch.bincount(y, minlength=n_classes).clamp_min(1).to(target.dtype)
    return sums / counts[:, None]


class frozen_batchnorm:  # noqa: N801  (a context manager, named as one)
    """Forward passes in training mode that leave every BatchNorm's running statistics as they are (momentum 0):
    the adversaries' warm-up looks at the model without changing it."""

    def __init__(self, model: nn.Module) -> None:
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.saved: list[float | None] = []

    def __enter__(self) -> None:
        self.saved = [m.momentum for m in self.norms]
        for m in self.norms:
            m.momentum = 0.0

    def __exit__(self, *_exc: object) -> None:
        for m, mom in zip(self.norms, self.saved, strict=True):
            m.momentum = mom


@torch.no_grad()
def sent_concentration(first: LocalizedFirstLayer, x: np.ndarray, seed: int = 0, batch: int = 1000,
                       top: float = 0.05) -> dict[str, float]:
    """How concentrated the sent values are on the test split (fresh seeded masks): the share of a request's
    energy in its largest ``top`` fraction of nonzero values (mean over requests) and the largest value over
    the RMS of the nonzero ones. A model that fools a min-max adversary with a few huge values shows it here."""
    first.eval()
    saved = first.generator
    first.generator = torch.Generator().manual_seed(seed)
    shares, peak, energy, count = [], 0.0, 0.0, 0
    try:
        for i in range(0, len(x), batch):
            h = first(torch.from_numpy(x[i:i + batch])).flatten(1).double()
            e = h.pow(2)
            nz = (h != 0).sum(1)
            k = (nz.double() * top).ceil().long().clamp_min(1)
            srt = e.sort(1, descending=True).values
            csum = srt.cumsum(1)
            top_e = csum.gather(1, (k - 1).clamp_max(h.shape[1] - 1)[:, None])[:, 0]
            shares.append(top_e / e.sum(1).clamp_min(1e-30))
            peak = max(peak, float(h.abs().max()))
            energy += float(e.sum())
            count += int(nz.sum())
    finally:
        first.generator = saved
    rms = math.sqrt(energy / max(count, 1))
    return {"top_share": float(torch.cat(shares).mean()), "top_fraction": top,
            "max_over_rms": peak / rms if rms > 0 else 0.0}


def conditional_nats(mean: torch.Tensor, keep: torch.Tensor, sigma: float, refs: torch.Tensor) -> torch.Tensor:
    """Per request: ``|mean - keep * refs|^2 / (2 sigma^2)`` nats, the Gaussian mechanism's bound on what the
    request carries about its input beyond the class whose reference ``refs`` is (one row per request)."""
    diff = (mean - refs * keep.to(mean.dtype)).flatten(1)
    return diff.pow(2).sum(1) / (2.0 * sigma * sigma)


class ClassReferences(nn.Module):
    """One reference vector per class: the running mean of the mechanism's mean over kept positions (any
    references give a valid bound; the class means give nearly the tightest one)."""

    refs: torch.Tensor
    count: torch.Tensor

    def __init__(self, n_classes: int, shape: tuple[int, ...], momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("refs", torch.zeros((n_classes, *shape)))
        self.register_buffer("count", torch.zeros((n_classes, *shape)))

    @torch.no_grad()
    def update(self, mean: torch.Tensor, keep: torch.Tensor, y: torch.Tensor) -> None:
        keep = keep.to(mean.dtype)
        for c in torch.unique(y).tolist():
            rows = y == c
            n = keep[rows].sum(0)
            seen = n > 0
            batch_mean = mean[rows].sum(0) / n.clamp_min(1)
            first = seen & (self.count[c] == 0)
            m = torch.where(first, torch.zeros_like(batch_mean), torch.full_like(batch_mean, self.momentum))
            self.refs[c] = torch.where(seen, m * self.refs[c] + (1 - m) * batch_mean, self.refs[c])
            self.count[c] += n


@torch.no_grad()
def conditional_information(first: LocalizedFirstLayer, x_ref: np.ndarray, y_ref: np.ndarray, x: np.ndarray,
                            y: np.ndarray, n_classes: int, seed: int = 0, batch: int = 1000) -> dict[str, float | str]:
    """The per-request bound of a calibrated Gaussian mechanism on what a request carries about its input beyond
    its true class: class references fitted on ``x_ref`` (public training data), nats per request on ``x``
    (fresh seeded masks). Computed on the float forward; the device's integer grid moves each value by at most
    one grid step."""
    first.eval()
    saved = first.generator
    first.generator = torch.Generator().manual_seed(seed)
    try:
        shape = (n_classes, *first.output_shape)
        sums, counts = torch.zeros(shape), torch.zeros(shape)
        for i in range(0, len(x_ref), batch):
            rel = first.ldp_release(torch.from_numpy(x_ref[i:i + batch]))
            yb = torch.from_numpy(y_ref[i:i + batch]).long()
            sums.index_add_(0, yb, rel.mean)
            counts.index_add_(0, yb, rel.keep.to(rel.mean.dtype))
        refs = sums / counts.clamp_min(1)
        nats = []
        for i in range(0, len(x), batch):
            rel = first.ldp_release(torch.from_numpy(x[i:i + batch]))
            yb = torch.from_numpy(y[i:i + batch]).long()
            nats.append(conditional_nats(rel.mean, rel.keep, rel.sigma, refs[yb]).double())
    finally:
        first.generator = saved
    n = torch.cat(nats)
    return {"nats_mean": float(n.mean()), "nats_median": float(n.median()), "nats_p95": float(torch.quantile(n, 0.95)),
            "nats_max": float(n.max()), "label": "true class",
            "references": "per-class means of the mechanism's mean over kept outputs, on the training split"}
