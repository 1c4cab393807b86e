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


class InverseAdversary(nn.Module):
    """A small decoder from the transmitted (dropped) activations back to the normalized input."""

    def __init__(self, n_outputs: int, n_inputs: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_outputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_inputs))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h.flatten(1))
