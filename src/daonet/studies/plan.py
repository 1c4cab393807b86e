"""``daonet plan``: search the device head and drop rate that reveal least beyond the label, under constraints.

The question a user brings: "for my model, my accuracy floor and my device, which device head, drop rate and
training defence reveal least?". Each candidate is trained, exported and audited through the same code as
``daonet train`` / ``export`` / ``audit``; the objectives are test accuracy (maximise) and leakage (the best
attack minus the label-only decoder; minimise), the constraints the accuracy floor, the leakage cap and the
device budget (FLOPs, bytes and encode µs per request). The search itself is Optuna's multi-objective NSGA-II
with its RDB storage: every trial lands in a study database (SQLite by default, any SQLAlchemy URL for a shared
one), a killed plan resumes where it stopped, and trials run in parallel on Ray when asked (``workers > 1`` or a
``ray_address``), each worker loading the same study. Every candidate is a row of the study pipeline
(:mod:`daonet.studies.pipeline`): candidates with identical settings share one folder (``OUT/candidates/<key>``),
so a retried trial reuses a finished training run or audit.

A *grid* (``PlanConfig.grid``, ``daonet plan --grid drop_rate=0,0.5,0.9``) replaces the search by every
combination of the listed settings (Optuna's grid sampler, same study database, same Pareto set): that is how a
frontier over drop rates or defences is measured.

*Your own model*: :func:`plan` (``daonet.plan(model, dataset, ...)``) plans a user's ``torch.nn.Module`` instead
of a zoo architecture; each candidate goes through ``daonet.split`` and ``daonet.export``
(:mod:`daonet.studies.own_model`), as a row of the same pipeline whose content address names the model.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..audit_config import BUDGET_NAMES
from ..errors import InputError
from ..settings import Setting, check_settings, setting

if TYPE_CHECKING:  # torch-side types, imported only when a plan runs
    from ..data import Dataset
    from .own_model import OwnModel

__all__ = ["PlanSpace", "PlanConfig", "Candidate", "PlanPoint", "PlanResult", "run_plan", "plan", "device_cost",
           "GRID_SETTINGS", "parse_grid"]

PLAN_ATTACKS = ("min_norm", "rmle_prior", "decoder_mlp", "decoder_conv", "decoder_adaptive", "decoder_prediction",
                "decoder_label")  # the audit's single-query attacks and baselines (repeated queries: masks, not heads)


@dataclass(frozen=True)
class PlanSpace:
    """What the search varies, each with its bounds (validated once). ``daonet plan``'s ``--device-layers``,
    ``--block-widths``, ``--drop-rates`` and ``--adversary-weights`` are generated from these declarations."""

    device_layers: tuple[int, ...] = setting((1, 2), "device depths to try, each 1-3 (1: the paper's first layer, "
                                                     "with its certificate; 2-3: a localized block)", min=1, max=3)
    block_widths: tuple[int, ...] = setting((8, 16, 32, 64), "block widths to try, each >= 2 (depth >= 2)", min=2)
    drop_rate: tuple[float, float] = setting((0.0, 0.97), "drop-rate range LOW,HIGH (0 <= LOW <= HIGH < 1)",
                                             min=0, max=1)
    adversary_weights: tuple[float, ...] = setting((0.0, 2.0), "min-max training weights to try, each >= 0", min=0)

    def validate(self) -> None:
        if not self.device_layers or any(d not in (1, 2, 3) for d in self.device_layers):
            raise InputError(f"device layers must be among 1, 2, 3, got {list(self.device_layers)}")
        if any(w < 2 for w in self.block_widths) or not self.block_widths:
            raise InputError(f"block widths must be at least 2, got {list(self.block_widths)}")
        if len(self.drop_rate) != 2:
            raise InputError(f"--drop-rates takes LOW,HIGH, got {','.join(map(str, self.drop_rate))!r}")
        lo, hi = self.drop_rate
        if not 0 <= lo <= hi < 1:
            raise InputError(f"the drop-rate range must satisfy 0 <= low <= high < 1, got {lo}, {hi}")
        if not self.adversary_weights or any(not (a >= 0 and math.isfinite(a)) for a in self.adversary_weights):
            raise InputError(f"adversary weights must be finite numbers >= 0, got {list(self.adversary_weights)}")
        check_settings(self)  # the declared bounds (the checks above name the plan's options better)


GRID_SETTINGS = ("device_layers", "block_width", "drop_rate", "adversary_weight", "noise_std", "quantize_levels",
                 "nopeek_weight", "max_revealed_energy", "ldp_epsilon",
                 "bottleneck_weight", "adversary_reset", "device_pool",
                 "class_balance")  # the candidate settings a grid may list


def parse_grid(items: list[str]) -> dict[str, tuple[Any, ...]]:
    """``["drop_rate=0,0.5", "max_revealed_energy=none,0.2"]`` -> ``{"drop_rate": (0.0, 0.5), ...}``."""
    grid: dict[str, tuple[Any, ...]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values.strip():
            raise InputError(f"--grid takes NAME=V1,V2,..., got {item!r}")
        try:
            vals = tuple(None if v.strip().lower() == "none" else json.loads(v) for v in values.split(","))
        except ValueError:
            raise InputError(f"--grid {name}: values must be numbers (or none), got {values!r}") from None
        grid[name] = vals
    return grid


@dataclass(frozen=True)
class PlanConfig:
    """One plan: the task, the search, the constraints, where trials are kept and how they run.

    Every setting is declared once (:func:`daonet.settings.setting`): ``daonet plan``'s options are generated
    from these declarations, and :meth:`validate` checks the same bounds for a plan built in Python."""

    dataset: str = field(metadata={"setting": Setting(
        "the task's data set (mnist, ecg5000, digits, ucr:NAME, npz:PATH, ...)")})
    model: str = setting("mlp", "architecture from the zoo (mlp, cnn, cnn1d); your own torch module: daonet.plan")
    out: str = setting("reports/plan", "writes plan.db (the study), pareto.json, pareto.png, chosen/")
    trials: int = setting(20, "candidates to train and audit in all (a resumed plan counts the finished ones)", min=1)
    budget: str = setting("full", "audit budget per candidate: full (converged attackers: privacy claims) or quick "
                                  "(a smoke test, NOT a privacy claim)", choices=BUDGET_NAMES)
    epochs: int | None = setting(None, "training epochs (default: the recipe's)", min=1)
    batch_size: int | None = setting(None, "training batch size (default: the recipe's)", min=1)
    lr: float | None = setting(None, "peak learning rate (default: the recipe's)", min=0)
    n_train: int | None = setting(None, "training subset (quick plans)", min=2)
    n_test: int | None = setting(None, "test subset", min=2)
    audit_n_test: int | None = setting(None, "audited requests per candidate (default: the budget's)", min=2)
    attacks: tuple[str, ...] = setting(PLAN_ATTACKS, "attacks per candidate (must include decoder_label, the floor)")
    min_accuracy: float = setting(0.0, "accuracy floor (test accuracy with dropping)", min=0, max=1)
    max_leakage: float | None = setting(None, "leakage cap: best attack minus the label-only decoder")
    max_flops: float | None = setting(None, "device budget: FLOPs per request", min=0)
    max_bytes: float | None = setting(None, "device budget: payload bytes per request (mean)", min=0)
    max_device_us: float | None = setting(None, "device budget: encode µs per request (median, measured here)",
                                          min=0)
    storage: str | None = setting(None, "study database, any SQLAlchemy URL (default: sqlite:///OUT/plan.db)")
    study_name: str = setting("daonet-plan", "the study's name in its database")
    seed: int = setting(0, "search and training seed")
    workers: int = setting(1, "trials in parallel on a local Ray (> 1)", min=1)
    ray_address: str | None = setting(None, "run trials on this Ray cluster ('auto' or host:port)")
    data_root: str | None = setting(None, "local folder with the data set's files")
    space: PlanSpace = field(default_factory=PlanSpace)
    grid: dict[str, tuple[Any, ...]] | None = None  # every combination of these settings instead of a search
    torch_device: str = setting("auto", "where the attackers train: auto (cuda when present), cpu, cuda[:N]")

    def validate(self) -> None:
        from ..audit.core import ATTACKS

        check_settings(self)
        if "decoder_label" not in self.attacks:
            raise InputError("the attacks must include decoder_label: leakage is measured from the label-only floor")
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise InputError(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
        for name in ("min_accuracy", "max_leakage", "max_flops", "max_bytes", "max_device_us", "lr"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise InputError(f"--{name.replace('_', '-')} must be a finite number, got {v}")
        if self.lr is not None and self.lr <= 0:
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        self.space.validate()
        self._validate_grid()

    def _validate_grid(self) -> None:
        if self.grid is None:
            return
        unknown = [k for k in self.grid if k not in GRID_SETTINGS]
        if unknown or not self.grid:
            raise InputError(f"--grid setting(s) {', '.join(unknown) or '(none)'} unknown; a grid lists "
                             f"{', '.join(GRID_SETTINGS)}")
        for name, values in self.grid.items():
            if not values or len(set(values)) != len(values):
                raise InputError(f"--grid {name}: give distinct values, got {list(values)}")
            for v in values:
                if v is None and name not in ("max_revealed_energy", "ldp_epsilon"):
                    raise InputError(f"--grid {name}: none (off) is allowed for max_revealed_energy and ldp_epsilon "
                                     "only")
                if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)):
                    raise InputError(f"--grid {name}: {v!r} is not a finite number")
        for cand in grid_candidates(self):
            cand.validate()

    @property
    def n_trials(self) -> int:
        """Trials in all: the grid's size, or ``trials`` for a search."""
        return len(grid_candidates(self)) if self.grid is not None else self.trials

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out).resolve() / 'plan.db'}"


@dataclass(frozen=True)
class Candidate:
    """One point of the search space (or of a grid), as trained and exported."""

    device_layers: int
    block_width: int | None
    drop_rate: float
    adversary_weight: float
    noise_std: float = 0.0
    quantize_levels: int = 0
    nopeek_weight: float = 0.0
    max_revealed_energy: float | None = None  # the device policy (an export option)
    ldp_epsilon: float | None = None  # the Gaussian mechanism's per-request epsilon (None: off)
    bottleneck_weight: float = 0.0  # the conditional bottleneck (needs ldp_epsilon)
    adversary_reset: int = 0  # re-initialised adversary pool every N epochs (0: one jointly trained adversary)
    device_pool: int = 0  # max pooling at the device's output (convolutional models; 0: off)
    class_balance: float = 0.0  # cross-entropy weights (class share) ** -B (0: plain cross-entropy)

    def validate(self) -> None:
        if self.device_layers not in (1, 2, 3):
            raise InputError(f"device_layers must be 1, 2 or 3, got {self.device_layers}")
        if not 0 <= self.drop_rate < 1:
            raise InputError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        for name in ("adversary_weight", "noise_std", "nopeek_weight", "quantize_levels", "bottleneck_weight",
                     "adversary_reset", "device_pool", "class_balance"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.block_width is not None and self.block_width < 2:
            raise InputError(f"block_width must be at least 2, got {self.block_width}")
        if self.device_layers > 1 and not self.block_width:
            raise InputError("a device block (device_layers >= 2) needs a block width")
        if self.max_revealed_energy is not None and (self.device_layers > 1 or not 0 <= self.max_revealed_energy <= 1):
            raise InputError(f"max_revealed_energy {self.max_revealed_energy}: in [0, 1], and only for the "
                             "single first layer (a block has no certificate)")
        if self.ldp_epsilon is not None:
            if not (self.ldp_epsilon > 0 and math.isfinite(self.ldp_epsilon)):
                raise InputError(f"ldp_epsilon must be a finite number > 0 (or none: off), got {self.ldp_epsilon}")
            if self.noise_std or self.quantize_levels or self.max_revealed_energy is not None:
                raise InputError("ldp_epsilon (the Gaussian mechanism) replaces noise_std, quantize_levels and the "
                                 "revealed-energy policy: list it in a grid without them")
        if self.bottleneck_weight and self.ldp_epsilon is None:
            raise InputError(f"bottleneck_weight {self.bottleneck_weight:g} needs the Gaussian mechanism: list "
                             "ldp_epsilon in the grid too (a bottleneck row with ldp_epsilon none bounds nothing)")
        if self.adversary_reset and not self.adversary_weight:
            raise InputError(f"adversary_reset {self.adversary_reset} re-initialises min-max adversaries: list "
                             "adversary_weight > 0 in the grid too")
        if self.device_pool == 1:
            raise InputError("device_pool must be 0 (off) or a window of at least 2, got 1")
        if self.device_pool and self.max_revealed_energy is not None:
            raise InputError("max_revealed_energy is a policy of the single first layer; pooling at the device's "
                             "output has no certificate: list one of them")
        if self.class_balance > 1:
            raise InputError(f"class_balance must be in [0, 1] (1: every class counts alike), got "
                             f"{self.class_balance:g}")

    def describe(self) -> str:
        head = ("first layer" if self.device_layers == 1 else
                f"{self.device_layers}-layer block, width {self.block_width}")
        more = [f"adversary {self.adversary_weight:g}" if self.adversary_weight else "",
                f"noise {self.noise_std:g}" if self.noise_std else "",
                f"{self.quantize_levels} levels" if self.quantize_levels else "",
                f"NoPeek {self.nopeek_weight:g}" if self.nopeek_weight else "",
                f"max ρ {self.max_revealed_energy:g}" if self.max_revealed_energy is not None else "",
                f"LDP ε={self.ldp_epsilon:g}" if self.ldp_epsilon is not None else "",
                f"bottleneck {self.bottleneck_weight:g}" if self.bottleneck_weight else "",
                f"adversaries reset every {self.adversary_reset}" if self.adversary_reset else "",
                f"pool {self.device_pool}" if self.device_pool else "",
                f"class balance {self.class_balance:g}" if self.class_balance else ""]
        return ", ".join([f"{head}, p={self.drop_rate:.2f}", *[m for m in more if m]])


_WHOLE_SETTINGS = ("device_layers", "block_width", "quantize_levels", "adversary_reset", "device_pool")
_OPTIONAL_SETTINGS = ("block_width", "max_revealed_energy", "ldp_epsilon")  # None: off (or no width at depth 1)


def _grid_value(name: str, value: Any) -> Any:
    """A grid value as the :class:`Candidate` field holds it (JSON gives 2 for 2.0 and the reverse)."""
    if value is None and name in _OPTIONAL_SETTINGS:
        return None
    return int(value) if name in _WHOLE_SETTINGS else float(value)


def grid_candidates(cfg: PlanConfig) -> list[Candidate]:
    """Every combination of the grid's values; settings the grid does not list take the task's recipe values."""
    import itertools

    from ..train import recommended_config

    base = recommended_config(cfg.dataset, cfg.model)
    defaults = {"device_layers": base.device_layers, "block_width": base.model_kwargs.get("block_width", 16),
                "drop_rate": base.drop_rate, "adversary_weight": base.adversary_weight, "noise_std": base.noise_std,
                "quantize_levels": base.quantize_levels, "nopeek_weight": base.nopeek_weight,
                "max_revealed_energy": None, "ldp_epsilon": None, "bottleneck_weight": base.bottleneck_weight,
                "adversary_reset": base.adversary_reset, "device_pool": base.device_pool,
                "class_balance": base.class_balance}
    grid = cfg.grid or {}
    out = []
    for combo in itertools.product(*grid.values()):
        values = {**defaults, **dict(zip(grid, combo, strict=True))}
        if values["device_layers"] == 1:
            values["block_width"] = None
        out.append(Candidate(**{k: _grid_value(k, v) for k, v in values.items()}))
    return list(dict.fromkeys(out))  # a depth-1 row ignores the width: duplicates collapse


@dataclass(frozen=True)
class PlanPoint:
    """A finished candidate: its numbers, its cost on the device, and where its bundle and audit are."""

    trial: int
    candidate: Candidate
    accuracy: float
    leakage: float
    leakage_lower_bound: bool
    best_attack: str | None
    label_only: float | None
    flops: int
    bytes_per_request: float
    device_us: float
    surviving: float
    feasible: bool
    bundle: str
    report: str
    seconds: float
    conditional_nats: float | None = None  # the Gaussian mechanism's mean bound beyond the class (None: no LDP)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "candidate": asdict(self.candidate), "describe": self.candidate.describe()}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PlanPoint:
        raw = {k: v for k, v in raw.items() if k != "describe"}
        return cls(**{**raw, "candidate": Candidate(**raw["candidate"])})


@dataclass
class PlanResult:
    points: list[PlanPoint]  # every finished trial
    pareto: list[PlanPoint]  # the feasible non-dominated ones (accuracy up, leakage down)
    chosen: PlanPoint | None  # the least leakage among feasible Pareto points
    claim: bool  # False for a quick budget: NOT a privacy claim
    out: Path


def device_cost(device: Any, x: np.ndarray, repeats: int = 3) -> tuple[int, float, float]:
    """``(FLOPs, mean payload bytes, median encode µs)`` per request of a device model on inputs ``x``.

    FLOPs count the first layer and the block (2 per multiply-add; max-pooling one per input value)."""
    from ..device.masks import RandomMasks

    shape = tuple(device.first_output_shape)
    flops = 2 * int(np.prod(device.weight.shape)) * int(np.prod(shape[1:]))
    for step in device.block:
        out = step.out_shape(shape)
        flops += int(np.prod(shape)) if step.op == "maxpool" else \
            2 * int(np.prod(step.weight_shape)) * int(np.prod(out[1:]))
        shape = out
    masks = RandomMasks(0)
    sizes = [len(device.encode(xi, masks).data) for xi in x]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for xi in x:
            device.encode(xi, masks)
        times.append((time.perf_counter() - t0) / len(x) * 1e6)
    return flops, float(np.mean(sizes)), float(np.median(times))


def candidate_row(cfg: PlanConfig, cand: Candidate, own: OwnModel | None = None) -> Any:
    """The study-pipeline row of a candidate: the task's recipe with the candidate's settings, its export
    options and the plan's audit. For a user's model (``own``) the row's training config names the model by its
    fingerprint (and the user's data by theirs), so the content address of two different models never agrees."""
    from ..audit_config import AuditConfig
    from ..train import recommended_config
    from .pipeline import ExportOptions, Row

    over: dict[str, Any] = {"drop_rate": cand.drop_rate, "adversary_weight": cand.adversary_weight,
                            "device_layers": cand.device_layers, "noise_std": cand.noise_std,
                            "quantize_levels": cand.quantize_levels, "nopeek_weight": cand.nopeek_weight,
                            "bottleneck_weight": cand.bottleneck_weight, "adversary_reset": cand.adversary_reset,
                            "device_pool": cand.device_pool, "class_balance": cand.class_balance,
                            "seed": cfg.seed,
                            "data_root": cfg.data_root, "n_train": cfg.n_train,
                            "n_test": cfg.n_test}
    over.update({k: getattr(cfg, k) for k in ("epochs", "batch_size", "lr") if getattr(cfg, k) is not None})
    tc = recommended_config(cfg.dataset, cfg.model, **over)
    if cand.device_layers > 1:
        tc = replace(tc, model_kwargs={**tc.model_kwargs, "block_width": cand.block_width})
    if cand.ldp_epsilon is not None:
        if own is not None:
            raise InputError("ldp_epsilon is not available for your own model yet (daonet.split does not set up the "
                             "Gaussian mechanism); plan a zoo model with it, or leave it out of the grid")
        tc = replace(tc, model_kwargs={**tc.model_kwargs, "ldp_epsilon": cand.ldp_epsilon})
    if own is not None:
        tc = replace(tc, model_kwargs={"module": own.fingerprint, "data": own.data_fingerprint})
    audit = AuditConfig(dataset=cfg.dataset, budget=cfg.budget, n_test=cfg.audit_n_test, attacks=tuple(cfg.attacks),
                        budget_curve=cfg.budget == "full", data_root=cfg.data_root, torch_device=cfg.torch_device)
    model_id = re.sub(r"[^a-z0-9._-]+", "-", f"plan-{cfg.dataset}-{cfg.model}".lower()).strip("-.")
    return Row(tc, ExportOptions(model_id=model_id, max_revealed_energy=cand.max_revealed_energy), audit)


def evaluate_candidate(cfg: PlanConfig, cand: Candidate, trial: int, log: Callable[[str], None] = print,
                       own: OwnModel | None = None) -> PlanPoint:
    """Train, export and audit one candidate through the study pipeline (each stage reused when already there)."""
    from ..data import load_dataset
    from ..device import DeviceModel
    from .pipeline import run_row

    root = Path(cfg.out) / "candidates"
    if own is None:
        res = run_row(candidate_row(cfg, cand), root, log=lambda _: None)
    else:
        from .own_model import run_own_row

        res = run_own_row(candidate_row(cfg, cand, own), own, root, log=lambda _: None)
    summary = res.report
    if summary is None or summary.leakage is None:
        raise InputError(f"{res.report_path} has no leakage (no label-only decoder or no attack ran)")
    ds = own.dataset if own is not None and own.dataset is not None else load_dataset(cfg.dataset, cfg.data_root)
    x = ds.x_test[:64]
    device = DeviceModel.load(res.bundle / "device")
    flops, nbytes, us = device_cost(device, x)
    point = PlanPoint(trial=trial, candidate=cand, accuracy=res.run.accuracy, leakage=float(summary.leakage.mean),
                      leakage_lower_bound=summary.is_lower_bound, best_attack=summary.best_attack,
                      label_only=summary.label_only, flops=flops, bytes_per_request=nbytes, device_us=us,
                      surviving=summary.surviving.mean, feasible=False, bundle=str(res.bundle),
                      report=str(res.report_path), seconds=res.seconds,
                      conditional_nats=None if res.run.conditional_information is None else
                      res.run.conditional_information.nats_mean)
    point = replace(point, feasible=all(c <= 0 for c in constraint_values(cfg, point)))
    log(f"trial {trial}: {cand.describe()}: accuracy {point.accuracy:.3f}, leakage {point.leakage:+.3f} "
        f"{summary.metric}, {flops:,} FLOPs, {nbytes:.0f} B, {us:.0f} µs{'' if point.feasible else ' (infeasible)'}")
    return point


def constraint_values(cfg: PlanConfig, p: PlanPoint) -> list[float]:
    """Optuna's constraint convention: each value <= 0 means satisfied."""
    out = [cfg.min_accuracy - p.accuracy]
    for cap, value in ((cfg.max_leakage, p.leakage), (cfg.max_flops, p.flops), (cfg.max_bytes, p.bytes_per_request),
                       (cfg.max_device_us, p.device_us)):
        if cap is not None:
            out.append(float(value) - cap)
    return out


def _sample(trial: Any, cfg: PlanConfig) -> Candidate:
    if cfg.grid is not None:  # the grid sampler hands out the grid's combinations
        picked = {name: trial.suggest_categorical(name, list(values)) for name, values in cfg.grid.items()}
        return next(c for c in grid_candidates(cfg)
                    if all(_same(getattr(c, k), v) or (k == "block_width" and c.device_layers == 1)
                           for k, v in picked.items()))
    space = cfg.space
    layers = trial.suggest_categorical("device_layers", list(space.device_layers))
    width = trial.suggest_categorical("block_width", list(space.block_widths)) if layers > 1 else None
    lo, hi = space.drop_rate
    rate = round(trial.suggest_float("drop_rate", lo, hi), 3) if hi > lo else lo
    adv = trial.suggest_categorical("adversary_weight", list(space.adversary_weights))
    return Candidate(int(layers), None if width is None else int(width), float(rate), float(adv))


def _study(cfg: PlanConfig) -> Any:
    """The plan's Optuna study: NSGA-II with constraints, on RDB storage whose heartbeat lets a later run retry
    the trials a killed run left behind."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # the heartbeat and its retry callback are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            cfg.storage_url, heartbeat_interval=60, grace_period=180,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2))
    sampler = (optuna.samplers.GridSampler({k: list(v) for k, v in cfg.grid.items()}, seed=cfg.seed)
               if cfg.grid is not None else
               optuna.samplers.NSGAIISampler(seed=cfg.seed, population_size=max(4, min(20, cfg.trials))))
    return optuna.create_study(study_name=cfg.study_name, storage=storage, sampler=sampler, load_if_exists=True,
                               directions=["maximize", "minimize"])


def _objective(cfg: PlanConfig, log: Callable[[str], None],
               own: OwnModel | None = None) -> Callable[[Any], tuple[float, float]]:
    def objective(trial: Any) -> tuple[float, float]:
        cand = _sample(trial, cfg)
        point = evaluate_candidate(cfg, cand, trial.number, log, own)
        for i, value in enumerate(constraint_values(cfg, point)):
            trial.set_constraint(f"c{i}", value)
        trial.set_user_attr("point", point.to_json())
        return point.accuracy, point.leakage

    return objective


def _remaining(study: Any, total: int) -> int:
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]  # a killed plan's trials: redone
    return max(0, total - len(done))


def _optimize(cfg: PlanConfig, n: int, log: Callable[[str], None], own: OwnModel | None = None) -> None:
    _study(cfg).optimize(_objective(cfg, log, own), n_trials=n, catch=(InputError,))


def run_plan(cfg: PlanConfig, log: Callable[[str], None] = print, *, model: Any = None, data: Dataset | None = None,
             example_input: Any = None) -> PlanResult:
    """Run (or resume) a plan; writes ``OUT/pareto.json``, ``OUT/pareto.png`` and the chosen bundle.

    ``model``: the user's own ``torch.nn.Module`` (or a zero-argument function returning a fresh one) instead of
    the zoo's ``cfg.model``; ``data``: the user's :class:`~daonet.data.Dataset` instead of ``cfg.dataset``'s
    name; ``example_input``: inputs for ``daonet.split`` (default: the first training inputs). See :func:`plan`.
    """
    own = None
    if model is not None:
        from .own_model import own_model

        _refuse_device_blocks(cfg)  # the plan's own settings first: no work on the model for a plan refused anyway
        cfg.validate()
        own = own_model(model, data if data is not None else cfg.dataset, seed=cfg.seed, data_root=cfg.data_root,
                        example_input=example_input)
        cfg = replace(cfg, model=f"own:{own.name}", dataset=data.name if data is not None else cfg.dataset)
    elif data is not None or example_input is not None:
        raise InputError("data= and example_input= go with model= (your own torch module); a zoo plan names its "
                         "data set in PlanConfig.dataset")
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps({**asdict(cfg), "own_model": None if own is None else {
        "name": own.name, "fingerprint": own.fingerprint, "data": own.data_fingerprint}}, indent=2) + "\n")
    study = _study(cfg)
    _check_subject(cfg, study, own)
    todo = _remaining(study, cfg.n_trials)
    if todo and (cfg.workers > 1 or cfg.ray_address):
        _optimize_on_ray(cfg, todo, log, own)
    elif todo:
        _optimize(cfg, todo, log, own)
    return _collect(cfg, _study(cfg))


def plan(model: Any, dataset: str | Dataset, *, out: str | Path = "reports/plan",
         grid: dict[str, Sequence[Any]] | list[str] | None = None, trials: int = 20,
         drop_rates: tuple[float, float] = (0.0, 0.97), adversary_weights: Sequence[float] = (0.0, 2.0),
         example_input: Any = None, log: Callable[[str], None] | None = print, **settings: Any) -> PlanResult:
    """Plan *your own* model: which drop rate and defence reveal least beyond the label at your accuracy floor.

    This is ``daonet.plan``. Every candidate is ``model`` put through :func:`daonet.split` with the candidate's
    drop rate and defences, trained (the loop of ``daonet train``: AdamW, one-cycle schedule, dropping on),
    exported with :func:`daonet.export` and audited, as a row of the study pipeline; the outputs are those of
    ``daonet plan``: the study database ``OUT/plan.db``, ``OUT/pareto.json``, ``OUT/pareto.png`` and the chosen
    bundle (with its audit) in ``OUT/chosen``.

    Every candidate starts from the same initial weights: a copy of ``model`` as passed (fresh or pretrained), or
    a fresh module from ``model()`` under the plan's seed when ``model`` is a factory; never from another
    candidate's trained weights. Those weights and the architecture are hashed into each row's content address,
    so two different models never share a cached row, and a study of one model refuses to resume with another.

    What varies: the drop rate and the min-max training weight (a search over ``drop_rates`` and
    ``adversary_weights``), or on a grid any of ``drop_rate``, ``adversary_weight`` and ``nopeek_weight``
    (training), ``quantize_levels`` and ``noise_std`` (split's) and ``max_revealed_energy`` (the device policy);
    a setting the grid does not list keeps ``daonet train``'s default (drop rate 0.9, no defence). **Not** the
    device depth: ``daonet.split`` moves only the model's first layer (+ ReLU) onto the device, so
    ``device_layers`` >= 2 and ``block_width`` (device blocks of the zoo architectures, ``daonet plan --model``)
    are refused.

    Args:
        model: a ``torch.nn.Module`` that ``daonet.split`` accepts (first op Linear/Conv1d/Conv2d + ReLU) and that
            returns logits (N, n_classes), or a zero-argument function returning a fresh one.
        dataset: a data set name or spec (``digits``, ``mnist``, ``npz:PATH``, ``csv:DIR``, ...) or your
            :class:`~daonet.data.Dataset` (``Dataset.from_arrays(x_train, y_train, x_test, y_test)``).
        out: where the study, the Pareto set, the candidates and the chosen bundle go.
        grid: every combination of these settings instead of a search, e.g. ``{"drop_rate": [0.5, 0.9],
            "noise_std": [0, 0.5]}`` (or ``daonet plan --grid`` strings such as ``["drop_rate=0.5,0.9"]``).
        trials: candidates of a search (a grid runs all its combinations).
        drop_rates: the searched drop-rate range ``(low, high)``.
        adversary_weights: the searched min-max training weights.
        example_input: a few training inputs for ``daonet.split`` (default: the first 8 of the data set).
        log: one line per finished candidate (None: silent).
        **settings: any other :class:`PlanConfig` field: ``budget`` (``full``; ``quick`` is a smoke test, NOT a
            privacy claim), ``epochs``, ``batch_size``, ``lr``, ``min_accuracy``, ``max_leakage``, ``max_bytes``,
            ``audit_n_test``, ``attacks``, ``n_train``, ``n_test``, ``seed``, ``workers``, ``storage``, ...

    Returns:
        The :class:`PlanResult` (every finished trial, the feasible Pareto front, the chosen point).

    Raises:
        InputError: the model, the data or a setting cannot be planned (the message says what to change).
    """
    from ..data import Dataset

    fixed = {"dataset", "model", "out", "space", "grid", "trials"}
    known = set(PlanConfig.__dataclass_fields__) - fixed
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InputError(f"unknown plan setting(s) {', '.join(unknown)}; daonet.plan takes {', '.join(sorted(known))}")
    if isinstance(dataset, Dataset):
        name, data = dataset.name, dataset
    elif isinstance(dataset, str):
        name, data = dataset, None
    else:
        raise InputError(f"dataset must be a data set name or spec (digits, mnist, npz:PATH, ...) or a "
                         f"daonet.data.Dataset, got {type(dataset).__name__}")
    if isinstance(grid, list):
        grid_values = parse_grid(grid)
    elif isinstance(grid, dict):
        grid_values = {k: tuple(v) if isinstance(v, list | tuple) else (v,) for k, v in grid.items()}
    elif grid is None:
        grid_values = None
    else:
        raise InputError(f"grid must be a dict of setting -> values or a list of 'NAME=V1,V2' strings, got "
                         f"{type(grid).__name__}")
    if "attacks" in settings:
        settings["attacks"] = tuple(settings["attacks"])
    space = PlanSpace(device_layers=(1,), drop_rate=tuple(drop_rates),  # type: ignore[arg-type]  # validated
                      adversary_weights=tuple(adversary_weights))
    cfg = PlanConfig(dataset=name, out=str(out), trials=trials, space=space, grid=grid_values, **settings)
    return run_plan(cfg, log if log is not None else (lambda _: None), model=model, data=data,
                    example_input=example_input)


def _refuse_device_blocks(cfg: PlanConfig) -> None:
    """A user's model has the device layers ``daonet.split`` gives it: its first layer, nothing deeper."""
    from .own_model import BLOCK_REFUSED

    if cfg.grid is not None:
        if ("block_width" in cfg.grid or any(v != 1 for v in cfg.grid.get("device_layers", (1,)))
                or any(v for v in cfg.grid.get("device_pool", (0,)))):
            raise InputError(f"grid {', '.join(f'{k}={list(v)}' for k, v in cfg.grid.items())}: {BLOCK_REFUSED}")
    elif tuple(cfg.space.device_layers) != (1,):
        raise InputError(f"PlanSpace(device_layers={tuple(cfg.space.device_layers)}): {BLOCK_REFUSED}; use "
                         "PlanSpace(device_layers=(1,))")


def _check_subject(cfg: PlanConfig, study: Any, own: OwnModel | None) -> None:
    """One study, one model: resuming a plan of another model (or data set) would count its trials as done."""
    subject = {"dataset": cfg.dataset, "model": cfg.model, "fingerprint": None if own is None else own.fingerprint,
               "data": None if own is None else own.data_fingerprint}
    held = study.user_attrs.get("subject")
    if held is None:
        study.set_user_attr("subject", subject)
    elif held != subject:
        what = held["model"] + (f" (fingerprint {held['fingerprint']})" if held.get("fingerprint") else "")
        raise InputError(f"study {cfg.study_name!r} in {cfg.storage_url} is a plan of {what} on {held['dataset']}, "
                         f"not of {cfg.model}" + (f" (fingerprint {own.fingerprint})" if own else "") +
                         f" on {cfg.dataset}; give another out (or study_name) for this model")


def _optimize_on_ray(cfg: PlanConfig, todo: int, log: Callable[[str], None], own: OwnModel | None = None) -> None:
    """Trials in parallel: each Ray task loads the same study (its storage must be reachable from the workers:
    a shared file system for SQLite, or a database URL) and runs its share of the trials."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=cfg.ray_address, num_cpus=None if cfg.ray_address else cfg.workers,
                 include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        @ray.remote(num_cpus=1)
        def worker(c: PlanConfig, n: int, o: OwnModel | None) -> int:
            import torch
            from threadpoolctl import threadpool_limits

            torch.set_num_threads(1)
            threadpool_limits(1)  # one core per worker, numpy's BLAS included
            _optimize(c, n, lambda _: None, o)
            return n

        shares = [todo // cfg.workers + (1 if i < todo % cfg.workers else 0) for i in range(cfg.workers)]
        done = ray.get([worker.remote(cfg, n, own) for n in shares if n])
        log(f"{sum(done)} trials ran on Ray ({len([n for n in shares if n])} workers)")
    finally:
        if started:
            ray.shutdown()


def _same(a: Any, b: Any) -> bool:
    return a == b or (a is not None and b is not None and math.isclose(float(a), float(b)))


def pareto_front(points: list[PlanPoint]) -> list[PlanPoint]:
    """Feasible points no other feasible point beats on both accuracy (higher) and leakage (lower)."""
    feas = [p for p in points if p.feasible]
    return sorted([p for p in feas if not any(q.accuracy >= p.accuracy and q.leakage <= p.leakage and
                                              (q.accuracy > p.accuracy or q.leakage < p.leakage) for q in feas)],
                  key=lambda p: p.leakage)


def _collect(cfg: PlanConfig, study: Any) -> PlanResult:
    import optuna

    from ..audit_config import BUDGETS

    points = [PlanPoint.from_json(t.user_attrs["point"]) for t in study.trials
              if t.state == optuna.trial.TrialState.COMPLETE and "point" in t.user_attrs]
    front = pareto_front(points)
    chosen = front[0] if front else None
    out = Path(cfg.out)
    claim = BUDGETS[cfg.budget].claim
    if chosen is not None:
        dest = out / "chosen"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(chosen.bundle, dest)
        shutil.copytree(Path(chosen.report).parent, dest / "audit",
                        ignore=shutil.ignore_patterns("checkpoints", "*.partial.pt"))
    doc = {"claim": claim, "note": None if claim else "quick budget: NOT a privacy claim",
           "objectives": {"accuracy": "maximize", "leakage": "minimize (best attack minus the label-only decoder)"},
           "constraints": {k: getattr(cfg, k) for k in ("min_accuracy", "max_leakage", "max_flops", "max_bytes",
                                                          "max_device_us")},
           "storage": cfg.storage_url, "study": cfg.study_name, "trials": [p.to_json() for p in points],
           "pareto": [p.trial for p in front], "chosen": chosen.trial if chosen else None}
    (out / "pareto.json").write_text(json.dumps(doc, indent=2) + "\n")
    if points:
        plot_plan(points, front, chosen, out / "pareto.png", claim)
    return PlanResult(points, front, chosen, claim, out)


def plot_plan(points: list[PlanPoint], front: list[PlanPoint], chosen: PlanPoint | None, path: Path,
              claim: bool) -> None:
    """Accuracy vs leakage over the label-only decoder; marker area = device FLOPs per request."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    fl = np.array([p.flops for p in points], dtype=float)
    size = 20 + 200 * (fl - fl.min()) / (np.ptp(fl) or 1.0)
    for p, s in zip(points, size, strict=True):
        ax.scatter(p.accuracy, p.leakage, s=s, alpha=0.6, color="tab:blue" if p.feasible else "0.7",
                   edgecolors="k" if p in front else "none")
    if front:
        f = sorted(front, key=lambda p: p.accuracy)
        ax.plot([p.accuracy for p in f], [p.leakage for p in f], "-", color="tab:red", lw=1, label="Pareto front")
    if chosen is not None:
        ax.scatter([chosen.accuracy], [chosen.leakage], marker="*", s=220, color="tab:red", label="chosen")
    ax.axhline(0, color="0.5", ls=":", lw=1)
    ax.set_xlabel("test accuracy (with dropping)")
    ax.set_ylabel("leakage beyond the label (best attack − label-only)")
    ax.set_title("daonet plan" + ("" if claim else " — quick budget: NOT a privacy claim"), fontsize=10)
    if front or chosen is not None:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
