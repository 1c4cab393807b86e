"""Training-time defences that push the privacy-accuracy frontier beyond plain dropping.

- :func:`distance_correlation`: NoPeek (Vepakomma et al., 2020): penalize the statistical dependence
  between the raw inputs and what is transmitted.
- :class:`InverseAdversary`: privacy-adversarial training: a decoder learns to rebuild ``x`` from the
  transmitted activations while the first layer learns to make that hard (min-max), dropping active.

Quantization of the surviving values lives in :class:`daonet.nn.LocalizedFirstLayer` because the
device must apply it too. None of these replaces the audit: the audit retrains its attackers from
scratch against the final model.
"""

from __future__ import annotations

import torch
from torch import nn


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
