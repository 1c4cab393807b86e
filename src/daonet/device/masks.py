"""Where the dropping masks come from. The randomness is the device's own and never leaves it."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class MaskSource(Protocol):
    """Returns a boolean keep-mask of shape ``(N, n_outputs)`` for a batch of (validated) inputs."""

    def masks(self, x: np.ndarray, n_outputs: int, drop_rate: float) -> np.ndarray: ...


class RandomMasks:
    """Fresh Bernoulli masks from a device-owned generator (seed it in tests, never on a device)."""

    def __init__(self, seed: int | np.random.Generator | None = None) -> None:
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def masks(self, x: np.ndarray, n_outputs: int, drop_rate: float) -> np.ndarray:
        return self.rng.random((x.shape[0], n_outputs)) >= drop_rate
