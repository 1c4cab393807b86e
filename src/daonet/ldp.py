"""The formal per-request bound of the ``gaussian_ldp`` mode: clip, discrete Gaussian noise, (epsilon, delta).

The device releases ``M(x) = r(x) + Y`` on the kept outputs (docs/privacy-ldp.md):

* ``r(x)``: the kept activations on a grid of step ``grid`` (a power of two), each clamped to
  ``clip_steps`` and the vector scaled down (integer floor) to L2 norm <= ``clip_steps``; every coordinate
  is >= 0 (ReLU outputs), so for any two inputs ``||r(x) - r(x')||_2 <= sqrt(2) * clip_steps``: the
  replace-one sensitivity of non-negative vectors in a ball of radius C is ``sqrt(2) C`` (not 2C, which is
  the bound for vectors of any sign).
* ``Y``: independent discrete Gaussians N_Z(0, noise_steps^2) (Canonne, Kamath, Steinke 2020), sampled
  exactly with integer arithmetic, so both device runtimes send the same bytes and no floating-point
  artefact of the noise can leak (Mironov 2012).

The multivariate discrete Gaussian with L2 sensitivity Delta satisfies ``Delta^2 / (2 sigma^2)``-zCDP
(CKS 2020, Prop. 14), i.e. exactly the Renyi-DP curve of the continuous Gaussian mechanism. The accountant
is therefore dp-accounting's RDP accountant on ``GaussianDpEvent(sigma / Delta)``: valid for the discrete
mechanism (the PLD accountant's exact Gaussian privacy loss is proven only for the continuous one).

This module needs ``dp-accounting`` (``pip install 'daonet[train]'``); the device runtime does not: the
manifest carries epsilon as a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from .errors import InputError

__all__ = ["ACCOUNTANT", "LdpParams", "accountant_version", "epsilon", "grid_params", "noise_multiplier_for",
           "noise_spec", "sensitivity"]

ACCOUNTANT = "dp_accounting.rdp.RdpAccountant"
DEFAULT_DELTA = 1e-5
GRID_NOISE_STEPS = 128  # the grid is chosen so that sigma is 128..256 grid steps (integer arithmetic stays < 2^53)
MAX_NOISE_STEPS = 256
MAX_CLIP_STEPS = 2**16


def sensitivity(clip: float) -> float:
    """Replace-one L2 sensitivity of a non-negative vector clipped to norm ``clip``: ``sqrt(2) * clip``."""
    return math.sqrt(2.0) * clip


def accountant_version() -> str:
    return version("dp-accounting")


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise InputError(f"ldp_delta must be in (0, 1), got {delta}")


def epsilon(noise_multiplier: float, delta: float = DEFAULT_DELTA, requests: int = 1) -> float:
    """epsilon(delta) of ``requests`` releases of the same input with fresh noise (``SelfComposedDpEvent``),
    each a Gaussian mechanism with ``sigma / sensitivity = noise_multiplier``."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    _check_delta(delta)
    if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise InputError(f"the noise multiplier must be a positive number, got {noise_multiplier}")
    if requests < 1:
        raise InputError(f"requests must be at least 1, got {requests}")
    event: Any = dp_accounting.GaussianDpEvent(noise_multiplier)
    if requests > 1:
        event = dp_accounting.SelfComposedDpEvent(event, requests)
    acc = RdpAccountant()
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def noise_multiplier_for(target_epsilon: float, delta: float = DEFAULT_DELTA) -> float:
    """The smallest ``sigma / sensitivity`` whose one-request epsilon(delta) is at most ``target_epsilon``."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    _check_delta(delta)
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise InputError(f"ldp_epsilon must be a positive number, got {target_epsilon}")
    z = dp_accounting.calibrate_dp_mechanism(
        RdpAccountant, dp_accounting.GaussianDpEvent, target_epsilon, delta,
        dp_accounting.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-6)
    while epsilon(z, delta) > target_epsilon:  # Brent's tolerance: never claim more than the target
        z *= 1.0 + 1e-6
    return float(z)


@dataclass(frozen=True)
class LdpParams:
    """The integer mechanism the device runs: ``grid`` (a power of two), ``noise_steps`` s, ``clip_steps`` B."""

    grid: float
    noise_steps: int
    clip_steps: int

    @property
    def clip(self) -> float:
        return self.clip_steps * self.grid

    @property
    def std(self) -> float:
        return self.noise_steps * self.grid


def grid_params(sigma: float, clip: float) -> LdpParams:
    """Put ``sigma`` and ``clip`` on a power-of-two grid: ``s = ceil(sigma / grid)`` in [128, 256] (sigma is
    rounded up, never down), ``B = floor(clip / grid)`` (the clip rounded down): both only lower epsilon."""
    if not (sigma > 0 and clip > 0 and math.isfinite(sigma) and math.isfinite(clip)):
        raise InputError(f"the LDP noise std and clip must be positive numbers, got {sigma} and {clip}")
    grid = 2.0 ** (math.floor(math.log2(sigma)) - 7)
    steps = math.ceil(sigma / grid)
    if steps > MAX_NOISE_STEPS:  # log2 rounding at a power of two
        grid, steps = grid * 2, math.ceil(sigma / (grid * 2))
    clip_steps = math.floor(clip / grid)
    if clip_steps < 1:
        raise InputError(f"the clip {clip:.3g} is below the noise grid ({grid:.3g}; sigma {sigma:.3g}): sigma is more "
                         "than 128 clips, which leaves nothing of the signal; raise ldp_epsilon")
    if clip_steps > MAX_CLIP_STEPS:
        raise InputError(f"the clip {clip:.3g} is more than {MAX_CLIP_STEPS // GRID_NOISE_STEPS} noise stds "
                         f"(sigma {sigma:.3g}): epsilon would be in the thousands; lower ldp_epsilon")
    return LdpParams(grid, steps, clip_steps)


def noise_spec(params: LdpParams, delta: float, *, target_epsilon: float | None = None,
               clip_quantile: float | None = None) -> dict[str, Any]:
    """The device manifest's ``noise`` object (``kind: gaussian_ldp``) with epsilon from the accountant."""
    sens = sensitivity(params.clip)
    spec: dict[str, Any] = {
        "kind": "gaussian_ldp", "applies_to": "kept", "mechanism": "discrete_gaussian",
        "clip": params.clip, "std": params.std, "grid": params.grid, "clip_steps": params.clip_steps,
        "noise_steps": params.noise_steps, "sensitivity": sens, "delta": float(delta),
        "epsilon": epsilon(params.std / sens, delta), "accountant": ACCOUNTANT,
        "accountant_version": accountant_version(),
    }
    if target_epsilon is not None:
        spec["target_epsilon"] = float(target_epsilon)
    if clip_quantile is not None:
        spec["clip_quantile"] = float(clip_quantile)
    return spec
