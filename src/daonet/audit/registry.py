"""The audit's attacks behind one interface, so ``run_audit`` is a loop over registered attacks.

An attack takes an :class:`AttackContext` (what the curious server holds: the model, its public data, the
payloads it received and its own predictions) and returns one reconstruction per audited request plus the
budget it spent. New attacks register with :func:`register_attack`; ``daonet audit --attacks`` picks them by
name (like ``daonet.nn.register_arch`` for architectures).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..audit_config import ALIASES
from ..errors import InputError
from ..train import make_progress
from . import attacks as atk
from .decoders import BASELINE_FAMILIES, FAMILY_LABELS, DecoderBudget, PublicPairs, fit_decoder


@dataclass
class AttackOutcome:
    rec: np.ndarray  # (N, n): one reconstruction per audited request
    budget: dict[str, Any]


@dataclass
class AttackContext:
    """Everything the server side knows when it attacks (nothing here is device-only)."""

    kind: str
    metric: str
    input_shape: tuple[int, ...]
    box: tuple[float, float] | None
    know: atk.ServerKnowledge | None  # None: a non-linear device block (no equations to solve)
    mu: np.ndarray
    class_means: np.ndarray
    x_test: np.ndarray  # only to score reconstructions, never given to an attack
    h_test: np.ndarray
    pred: np.ndarray
    pairs: Callable[[], PublicPairs]  # built on first use (decoders)
    rmle_material: Callable[[], tuple[np.ndarray, np.ndarray]]  # public (h_val, x_val) to tune λ
    decoder_budget: DecoderBudget
    rmle_steps: int
    score: Callable[[np.ndarray, np.ndarray], float]
    torch_device: torch.device
    seed: int = 0
    progress: bool = True
    log: Callable[[str], None] = print
    cache: dict[str, Any] = field(default_factory=dict)
    partial_path: Callable[[str], Path | None] = lambda name: None  # where a decoder saves its training state

    @property
    def n(self) -> int:
        return int(np.prod(self.input_shape))


@dataclass(frozen=True)
class AttackSpec:
    name: str
    label: str
    run: Callable[[AttackContext], AttackOutcome]
    needs_equations: bool = False  # white-box algebra on the first layer's matrix
    learned: bool = False  # a trained network (its convergence is reported)
    baseline: bool = False  # a bound on the meaning of the numbers, not an attack on the activations


_REGISTRY: dict[str, AttackSpec] = {}


def register_attack(name: str, label: str, *, needs_equations: bool = False, learned: bool = False,
                    baseline: bool = False) -> Callable[[Callable[[AttackContext], AttackOutcome]],
                                                         Callable[[AttackContext], AttackOutcome]]:
    """Decorator: make ``fn(ctx) -> AttackOutcome`` available to ``run_audit`` under ``name``."""

    def deco(fn: Callable[[AttackContext], AttackOutcome]) -> Callable[[AttackContext], AttackOutcome]:
        if name in _REGISTRY:
            raise ValueError(f"attack {name!r} is already registered")
        _REGISTRY[name] = AttackSpec(name, label, fn, needs_equations, learned, baseline)
        return fn

    return deco


def create_attack(name: str) -> AttackSpec:
    name = ALIASES.get(name, name)
    if name not in _REGISTRY:
        raise InputError(f"unknown attack {name!r}; choose from {', '.join(available_attacks())}")
    return _REGISTRY[name]


def available_attacks() -> list[str]:
    return list(_REGISTRY)


# -- white-box attacks on the surviving equations ----------------------------------------------------------
def _min_norm(ctx: AttackContext) -> np.ndarray:
    if "min_norm" not in ctx.cache:
        assert ctx.know is not None
        ctx.cache["min_norm"] = atk.min_norm(ctx.know, ctx.h_test, ctx.mu).astype(np.float32)
    return ctx.cache["min_norm"]


@register_attack("min_norm", "white-box min-norm least squares (mask-aware)", needs_equations=True)
def min_norm_attack(ctx: AttackContext) -> AttackOutcome:
    t0 = time.perf_counter()
    rec = _min_norm(ctx)
    return AttackOutcome(rec, {"solver": "numpy lstsq per request", "seconds": round(time.perf_counter() - t0, 2)})


def _rmle(ctx: AttackContext, name: str, *, naive: bool, init: str) -> AttackOutcome:
    assert ctx.know is not None
    t0 = time.perf_counter()
    h_val, x_val = ctx.rmle_material()
    init_val: np.ndarray | None
    init_test: np.ndarray | None
    if init == "min-norm solution":
        init_val, init_test = atk.min_norm(ctx.know, h_val, ctx.mu), _min_norm(ctx)
    elif init == "class prior of the predicted class":
        init_val = ctx.cache["class_prior_val"]
        init_test = ctx.class_means[ctx.pred]
    else:
        init_val, init_test = None, None
    lam, grid = atk.tune_lambda(ctx.know, h_val, x_val, ctx.mu, ctx.score, naive=naive, steps=ctx.rmle_steps,
                                init=init_val, device=ctx.torch_device)
    with make_progress() as bar:
        task = bar.add_task(name, total=len(ctx.h_test) * ctx.rmle_steps, status=f"lambda {lam:g}",
                            visible=ctx.progress)
        rec = atk.regularized(ctx.know, ctx.h_test, ctx.mu, lam, naive=naive, steps=ctx.rmle_steps, init=init_test,
                              device=ctx.torch_device, progress=lambda k: bar.update(task, advance=k))
    return AttackOutcome(rec, {
        "steps": ctx.rmle_steps, "optimizer": "Adam, projected onto the input box", "lambda": lam,
        "lambda_grid_scores_on_public": grid, "tuned_on_public": len(x_val),
        "prior": "total variation" if ctx.kind == "image" else "second-difference smoothness", "init": init,
        "seconds": round(time.perf_counter() - t0, 2)})


@register_attack("rmle", "regularized inversion, rMLE (mask-aware, from the min-norm solution)",
                 needs_equations=True)
def rmle_attack(ctx: AttackContext) -> AttackOutcome:
    return _rmle(ctx, "rmle", naive=False, init="min-norm solution")


@register_attack("rmle_prior", "regularized inversion, rMLE (mask-aware, from the class prior)",
                 needs_equations=True)
def rmle_prior_attack(ctx: AttackContext) -> AttackOutcome:
    return _rmle(ctx, "rmle_prior", naive=False, init="class prior of the predicted class")


@register_attack("rmle_naive", "regularized inversion, rMLE (naive: zeros treated as ReLU outputs)",
                 needs_equations=True)
def rmle_naive_attack(ctx: AttackContext) -> AttackOutcome:
    return _rmle(ctx, "rmle_naive", naive=True, init="data mean")


# -- learned inverse networks ------------------------------------------------------------------------------
def _decoder(ctx: AttackContext, family: str) -> AttackOutcome:
    pairs = ctx.pairs()
    fit = fit_decoder(family, pairs, kind=ctx.kind, input_shape=ctx.input_shape, box=ctx.box,
                      budget=ctx.decoder_budget, seed=ctx.seed, progress=ctx.progress, label=f"decoder {family}",
                      resume=ctx.partial_path(f"decoder_{family}"))
    ctx.log(f"  decoder {family}: {fit.info['stopped']} after {fit.info['epochs_run']} epochs (best "
            f"{fit.info['best_epoch']}, held-out {ctx.metric} {fit.info['best_val']:.4f}, "
            f"{fit.info['seconds']:.0f} s on {fit.info['device']})")
    return AttackOutcome(fit.predict(ctx.h_test), dict(fit.info))


for _family in FAMILY_LABELS:
    register_attack(f"decoder_{_family}", FAMILY_LABELS[_family], learned=True,
                    baseline=_family in BASELINE_FAMILIES)(
        functools.partial(_decoder, family=_family))
