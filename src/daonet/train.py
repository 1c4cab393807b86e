"""Train and evaluate a split model with dropped activation outputs; write a run directory.

A run directory holds ``config.json`` (everything needed to rebuild the model), ``model.safetensors``
and ``metrics.json``. ``daonet export`` turns it into device/server bundles.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .data import Dataset, load_dataset
from .errors import DaonetError, InputError
from .measure import make_progress  # noqa: F401  (re-exported: training and the audit share one bar)
from .nn import LocalizedFirstLayer, SplitModel, build_model
from .nn.defences import (
    AdversaryPool,
    ClassReferences,
    InverseAdversary,
    conditional_information,
    conditional_nats,
    distance_correlation,
    frozen_batchnorm,
    label_means,
    sent_concentration,
)
from .nn.layers import LdpRelease
from .train_config import NORMALIZE_MODES, TrainConfig  # noqa: F401  (declared torch-free, for the CLI)

# The architecture options every run records in its config (so the model version pins them). They must equal the
# builders' own defaults in daonet.nn.zoo (a test checks): a model built without options is the same model.
DEFAULT_KWARGS: dict[str, dict[str, Any]] = {
    "mlp": {"hidden": 800, "hidden2": 256},
    "cnn": {"stem": 64, "patch": 4, "width": 64},
    "cnn1d": {"stem": 32, "patch": 4, "width": 64},
}


OWN_DATA_SOURCES = ("csv:", "npz:", "arrays")  # Dataset.info["source"] of data the user brings


# Training settings per known (dataset, model) task: what the drop-rate sweep and the audit frontier train.
TASKS: dict[str, TrainConfig] = {
    "mnist-mlp": TrainConfig(dataset="mnist", model="mlp", epochs=10),
    # wider first layer: more survivors at the same p, so accuracy holds at high drop rates
    "mnist-mlp-wide": TrainConfig(dataset="mnist", model="mlp", epochs=6, model_kwargs={"hidden": 4096}),
    "mnist-cnn": TrainConfig(dataset="mnist", model="cnn", epochs=5),
    "fashion-mnist-cnn": TrainConfig(dataset="fashion-mnist", model="cnn", epochs=5),
    "ecg5000-cnn1d": TrainConfig(dataset="ecg5000", model="cnn1d", epochs=60, batch_size=32),
}


# Default operating points, picked from the privacy-accuracy frontier measured with the full (converged) audit
# (docs/results/frontier-methods-*.md): MNIST mlp: random dropping p=0.5 plus min-max training against an
# inverse network; still the most private measured row at >= 0.94 accuracy, but a converged decoder beats the
# class prior by ~0.3 SSIM on it (the target is 0.05: not reached). ECG5000 cnn1d: plain dropping p=0.9
# (+0.091 correlation; a 2-layer device block does slightly better, at the cost of the certificate).
RECOMMENDED: dict[tuple[str, str], dict[str, Any]] = {
    ("mnist", "mlp"): {"drop_rate": 0.5, "adversary_weight": 2.0, "epochs": 5},
    ("ecg5000", "cnn1d"): {"drop_rate": 0.9, "epochs": 40, "batch_size": 32},
}
# The least leakage measured at (or above) the certificate default's accuracy: the Gaussian mechanism (a
# per-request epsilon instead of the algebraic certificate) on a two-layer device head with max pooling 4, the
# conditional bottleneck and the re-initialised adversary pool (docs/adversary-pool.md: -0.004 to +0.004 beyond
# the label at 0.931-0.937 over three seeds on ECG5000, undefended 0.937-0.940).
LEAST_LEAKAGE: dict[tuple[str, str], dict[str, Any]] = {
    ("ecg5000", "cnn1d"): {"drop_rate": 0.0, "epochs": 160, "batch_size": 32, "bottleneck_weight": 0.02,
                           "adversary_weight": 8.0, "adversary_reset": 5, "device_layers": 2, "device_pool": 4,
                           "model_kwargs": {"ldp_epsilon": 4096.0, "block_width": 32}},
    # three layers, not two: at these weights two layers fall to 0.929 on MNIST, three keep 0.976
    ("mnist", "cnn"): {"drop_rate": 0.0, "epochs": 10, "bottleneck_weight": 0.02, "adversary_weight": 8.0,
                       "adversary_reset": 2, "device_layers": 3, "device_pool": 2,
                       "model_kwargs": {"ldp_epsilon": 4096.0}},
}
GOALS = {"certificate": RECOMMENDED, "least-leakage": LEAST_LEAKAGE}


def recipe(dataset: str, model: str, goal: str = "certificate") -> dict[str, Any]:
    """The settings of the zoo's operating point for a (dataset, model) pair and a goal: ``certificate`` (the
    algebraic per-request certificate; plain p=0.9 where none was measured) or ``least-leakage`` (measured pairs
    only)."""
    if goal not in GOALS:
        raise InputError(f"--goal must be one of {', '.join(GOALS)}, got {goal!r}")
    settings = GOALS[goal].get((dataset, model))
    if settings is None:
        if goal != "certificate":
            measured = ", ".join(f"{d}/{m}" for d, m in GOALS[goal]) or "none"
            raise InputError(f"no {goal} recipe was measured for {dataset}/{model} (measured: {measured}); search "
                             f"one with `daonet plan --dataset {dataset} --model {model}`")
        settings = {"drop_rate": 0.9}
    return {**settings, "model_kwargs": dict(settings.get("model_kwargs", {}))}


def recommended_config(dataset: str, model: str, goal: str = "certificate", **overrides: Any) -> TrainConfig:
    """:func:`recipe` as a :class:`TrainConfig`; ``overrides`` win (``model_kwargs`` are merged)."""
    settings = recipe(dataset, model, goal)
    kwargs = {**settings.pop("model_kwargs"), **overrides.pop("model_kwargs", {})}
    return TrainConfig(dataset=dataset, model=model, **{**settings, **overrides, "model_kwargs": kwargs})


@dataclass
class TrainResult:
    model: SplitModel
    config: TrainConfig
    metrics: dict[str, Any]
    dataset: Dataset


def model_for(cfg: TrainConfig, ds: Dataset) -> SplitModel:
    mean, std = ds.normalization()
    kwargs = {**DEFAULT_KWARGS.get(cfg.model, {}), **cfg.model_kwargs}
    if cfg.device_layers != 1:  # only when set: old configs and custom architectures stay unchanged
        kwargs["device_layers"] = cfg.device_layers
    if cfg.device_pool:
        kwargs["device_pool"] = cfg.device_pool
    arch = {
        "name": cfg.model, "in_shape": list(ds.input_shape), "n_classes": ds.n_classes,
        "drop_rate": cfg.drop_rate, "mean": mean, "std": std, "kwargs": kwargs,
    }
    if cfg.quantize_levels:
        arch["quantize_levels"] = cfg.quantize_levels
    if cfg.noise_std:
        arch["noise_std"] = cfg.noise_std
    model = build_model(arch)
    if _per_feature(cfg, ds, model.first.kind):  # after building: the architecture decides the layer's kind
        fmean, fstd = ds.feature_normalization()
        model.first.set_normalization(fmean, fstd)
        model.arch["mean"], model.arch["std"] = fmean, fstd  # what export and the server rebuild with
    return model


def _per_feature(cfg: TrainConfig, ds: Dataset, kind: str) -> bool:
    """Per-feature statistics: asked for (dense layers only), or ``auto`` on the user's own data with a dense layer."""
    if cfg.normalize == "feature":
        if kind != "dense":
            raise InputError(f"--normalize feature needs a dense first layer (--model mlp); {cfg.model} starts with "
                             f"a {kind} layer, which normalizes per channel")
        return True
    own = str(ds.info.get("source", "")).startswith(OWN_DATA_SOURCES)
    return cfg.normalize == "auto" and own and kind == "dense" and math.prod(ds.input_shape) > ds.input_shape[0]


def _shift(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to 2 pixels (a cheap, label-preserving image augmentation)."""
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    return torch.roll(xb, shifts=(dy, dx), dims=(-2, -1))


@torch.no_grad()
def evaluate(model: SplitModel, x: np.ndarray, y: np.ndarray, draws: int = 5, seed: int = 1234,
             drop: bool = True, batch: int = 1000) -> dict[str, Any]:
    """Accuracy with dropping active over ``draws`` independent mask draws, and survivor counts."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    model.first.generator = gen
    saved = model.first.drop_rate
    if not drop:
        model.first.drop_rate = 0.0
    accs, survivors = [], []
    try:
        for _ in range(draws if drop and saved > 0 else 1):
            correct = 0
            for i in range(0, len(x), batch):
                xb = torch.from_numpy(x[i:i + batch])
                h = model.first(xb)
                survivors.append((h.flatten(1) > 0).sum(1).numpy())
                pred = model.rest(h).argmax(1).numpy()
                correct += int((pred == y[i:i + batch]).sum())
            accs.append(correct / len(x))
    finally:
        model.first.drop_rate = saved
        model.first.generator = None
    s = np.concatenate(survivors)
    return {
        "accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs)), "accuracy_draws": accs,
        "surviving_outputs": {"mean": float(s.mean()), "min": int(s.min()), "max": int(s.max())},
        "n_outputs": int(model.first.n_outputs), "n_test": int(len(x)),
    }


@dataclass
class Defences:
    """The training defences as loss terms, shared by every training loop: NoPeek's distance correlation between
    input and sent vector, min-max training against an inverse network (its own steps first, then the model's
    step is rewarded for the attacker's error; or, with ``adversary_reset``, a pool of re-initialised attackers
    trained towards convergence, the model penalised on the best one's gain over a label-only decoder), and the
    conditional bottleneck (the nats a request carries beyond its class under the Gaussian mechanism)."""

    cfg: TrainConfig
    first: LocalizedFirstLayer
    adversary: InverseAdversary | None = None
    adv_opt: torch.optim.Optimizer | None = None
    references: ClassReferences | None = None
    pool: AdversaryPool | None = None

    @classmethod
    def for_training(cls, cfg: TrainConfig, first: LocalizedFirstLayer, ds: Dataset) -> Defences:
        references = None
        if cfg.bottleneck_weight > 0:
            if first.ldp is None:
                raise InputError("the conditional bottleneck needs the Gaussian mechanism: add --model-opt "
                                 "ldp_epsilon=E")
            references = ClassReferences(ds.n_classes, tuple(first.output_shape))
        if cfg.adversary_weight <= 0:
            return cls(cfg, first, references=references)
        if cfg.adversary_reset > 0:
            with torch.no_grad():
                target = ((torch.from_numpy(ds.x_train) - first.mean) / first.std).flatten(1)
                means = label_means(target, torch.from_numpy(ds.y_train).long(), ds.n_classes)
            pool = AdversaryPool(first.n_outputs, target.shape[1], cfg.adversary_hidden, ds.n_classes,
                                 cfg.adversary_pool, means)
            return cls(cfg, first, references=references, pool=pool)
        adversary = InverseAdversary(first.n_outputs, int(np.prod(ds.input_shape)), cfg.adversary_hidden,
                                     cfg.adversary, ds.n_classes)
        return cls(cfg, first, adversary, torch.optim.Adam(adversary.parameters(), lr=1e-3), references)

    def start_epoch(self, epoch: int, model: nn.Module, forward: Callable[[torch.Tensor], tuple[torch.Tensor,
                    torch.Tensor]], x: torch.Tensor, gen: torch.Generator) -> None:
        """With ``adversary_reset``: every N epochs re-initialise the pool and train it alone for
        ``adversary_warmup`` steps on the frozen model (``forward(xb) -> (sent, logits)``; BatchNorm statistics
        untouched), so the model's next steps face attackers near convergence, not the ones it has fooled."""
        cfg, pool = self.cfg, self.pool
        if pool is None or epoch % cfg.adversary_reset:
            return
        pool.reset()
        with frozen_batchnorm(model):
            for _ in range(cfg.adversary_warmup):
                idx = torch.randint(len(x), (min(cfg.batch_size, len(x)),), generator=gen)
                xb = x[idx]
                with torch.no_grad():
                    h, logits = forward(xb)
                pool.step(h, torch.softmax(logits, 1), self._target(xb))

    def _target(self, xb: torch.Tensor) -> torch.Tensor:
        return ((xb - self.first.mean) / self.first.std).flatten(1)

    def send(self, xb: torch.Tensor) -> tuple[torch.Tensor, LdpRelease | None]:
        """What the device sends for ``xb`` and, when the bottleneck needs them, the mechanism's parts."""
        if self.references is None:
            return self.first(xb), None
        release = self.first.ldp_release(xb)
        return release.sent, release

    def loss(self, task_loss: torch.Tensor, xb: torch.Tensor, h: torch.Tensor, logits: torch.Tensor,
             yb: torch.Tensor | None = None, release: LdpRelease | None = None) -> torch.Tensor:
        """``task_loss`` plus the defences' terms for one batch (``h``: what the device would send for ``xb``;
        ``yb`` and ``release`` (from :meth:`send`): the labels and the mechanism's parts, for the bottleneck)."""
        cfg, loss = self.cfg, task_loss
        if cfg.nopeek_weight > 0:
            loss = loss + cfg.nopeek_weight * distance_correlation(xb, h)
        if self.references is not None:
            if release is None or yb is None:
                raise ValueError("the conditional bottleneck needs the labels and Defences.send's release")
            self.references.update(release.mean.detach(), release.keep, yb)
            nats = conditional_nats(release.mean, release.keep, release.sigma, self.references.refs[yb])
            loss = loss + cfg.bottleneck_weight * nats.mean()
        if self.pool is not None:
            if yb is None:
                raise ValueError("the adversary pool's label-only floor needs the batch's labels")
            target, seen = self._target(xb), torch.softmax(logits, 1)
            self.pool.step(h, seen, target)  # the attackers keep learning between resets
            loss = loss + cfg.adversary_weight * self.pool.gain(h, seen, target, yb, cfg.adversary_margin).mean()
        if self.adversary is not None and self.adv_opt is not None:
            target = self._target(xb)
            probs = torch.softmax(logits.detach(), 1) if cfg.adversary == "adaptive" else None
            for _ in range(cfg.adversary_steps):  # the attacker's steps
                adv_loss = nn.functional.mse_loss(self.adversary(h.detach(), probs), target)
                self.adv_opt.zero_grad(set_to_none=True)
                adv_loss.backward()
                self.adv_opt.step()
            # the model's step: stay accurate while making the current attacker's job hard
            loss = loss - cfg.adversary_weight * nn.functional.mse_loss(self.adversary(h, probs),
                                                                        target).clamp_max(2.0)
        return loss


def class_weights(y: np.ndarray, n_classes: int, balance: float) -> torch.Tensor | None:
    """Cross-entropy weights ``share_c ** -balance``, scaled so the training split's mean weight is 1 (the loss
    keeps its size); ``None`` at 0. A class absent from the split gets the largest present weight."""
    if balance <= 0:
        return None
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = (counts[present] / counts.sum()) ** -balance
    w /= float((w * counts).sum() / counts.sum())
    w[~present] = w[present].max()
    return torch.tensor(w, dtype=torch.float32)


def load_initial_weights(model: SplitModel, run_dir: Path) -> None:
    """Start ``model`` from a trained run's weights (``--init-from``), refusing a run of another architecture."""
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise InputError(f"--init-from {run_dir}: no model.safetensors there; give a run directory written by "
                         f"`daonet train --out`")
    state, own = load_file(str(weights)), model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or shapes:
        raise InputError(f"--init-from {run_dir}: that model has another architecture (missing {missing[:3]}, "
                         f"unexpected {extra[:3]}, other shapes {shapes[:3]}); train it with the same --model, "
                         f"--model-opt and --device-layers as this run")
    model.load_state_dict(state)


def train(cfg: TrainConfig, ds: Dataset | None = None, progress: bool = False) -> TrainResult:
    """Train with dropping active (the paper's method) and evaluate with dropping active. Silent unless
    ``progress`` (the CLI shows a bar)."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if ds is None:
        ds = load_dataset(cfg.dataset, cfg.data_root)
    if cfg.n_train or cfg.n_test:
        ds = ds.subset(cfg.n_train, cfg.n_test, seed=cfg.seed)
    model = model_for(cfg, ds)
    if cfg.init_from:
        load_initial_weights(model, Path(cfg.init_from))
    gen = torch.Generator().manual_seed(cfg.seed)
    model.first.generator = gen
    x = torch.from_numpy(ds.x_train)
    y = torch.from_numpy(ds.y_train)
    steps_per_epoch = (len(x) + cfg.batch_size - 1) // cfg.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(ds.y_train, ds.n_classes, cfg.class_balance))
    defences = Defences.for_training(cfg, model.first, ds)
    t0 = time.perf_counter()
    with make_progress(enabled=progress) as bar:
        task = bar.add_task(f"train {cfg.model} on {ds.name} (p={cfg.drop_rate})",
                            total=cfg.epochs * steps_per_epoch, status="", visible=progress)
        for epoch in range(cfg.epochs):
            model.train()
            defences.start_epoch(epoch, model, lambda xb: (hb := model.first(xb), model.rest(hb)), x, gen)
            perm = torch.randperm(len(x), generator=gen)
            total, n = 0.0, 0
            for i in range(0, len(x), cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                xb = x[idx]
                if cfg.augment and ds.kind == "image":
                    xb = _shift(xb, gen)
                h, release = defences.send(xb)
                logits = model.rest(h)
                loss = defences.loss(loss_fn(logits, y[idx]), xb, h, logits, y[idx], release)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                n += len(idx)
                bar.update(task, advance=1, status=f"epoch {epoch + 1}/{cfg.epochs} loss {total / n:.3f}")
    train_time = time.perf_counter() - t0
    model.first.generator = None
    model.eval()
    model.first.calibrate_noise(x)  # fixes the absolute noise scale from (public) training data
    ev = evaluate(model, ds.x_test, ds.y_test, draws=cfg.eval_draws, seed=cfg.seed + 1)
    metrics: dict[str, Any] = {
        "dataset": ds.name, "model": cfg.model, "drop_rate": cfg.drop_rate,
        "test_accuracy": {"mean": ev["accuracy_mean"], "std": ev["accuracy_std"], "draws": ev["accuracy_draws"],
                          "dropping": cfg.drop_rate > 0},
        "surviving_outputs": ev["surviving_outputs"], "n_outputs": ev["n_outputs"],
        "n_train": int(len(ds.x_train)), "n_test": int(len(ds.x_test)),
        "train_time_s": round(train_time, 3), "epochs": cfg.epochs,
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "torch_threads": torch.get_num_threads(),
        "device_layers": model.first.device_layers,
    }
    noise = model.first.noise_spec()  # noise on surviving values, or the Gaussian mechanism with its epsilon
    if noise is not None:
        metrics["noise"] = noise
    if model.first.ldp is not None:  # the bound on what a request carries beyond its class, on the test split
        metrics["conditional_information"] = conditional_information(
            model.first, ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.n_classes, seed=cfg.seed + 2)
    metrics["sent_values"] = sent_concentration(model.first, ds.x_test, seed=cfg.seed + 3)
    if cfg.drop_rate == 0:
        metrics["accuracy_without_dropping"] = ev["accuracy_mean"]
    return TrainResult(model, cfg, metrics, ds)


def save_run(result: TrainResult, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, str(out / "model.safetensors"))
    cfg = asdict(result.config)
    (out / "config.json").write_text(json.dumps({"train": cfg, "arch": result.model.arch,
                                                 "classes": result.dataset.classes,
                                                 "dataset_kind": result.dataset.kind,
                                                 "raw_dtype": result.dataset.info.get("raw_dtype", "float32")},
                                                indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")
    # mu for the device's certificate: the per-coordinate training mean (public: an attacker knows it too)
    np.save(out / "public_mean.npy", result.dataset.x_train.mean(0).astype(np.float32))
    return out


def load_run(run_dir: str | Path) -> tuple[SplitModel, dict[str, Any]]:
    """Rebuild a trained model from a run directory."""
    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / "config.json", run_dir / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.exists():
            raise DaonetError(f"{p} is missing; is {run_dir} a run directory made by `daonet train`?")
    try:
        config = json.loads(cfg_path.read_text())
        model = build_model(config["arch"])
        model.load_state_dict(load_file(str(weights)))
    except (json.JSONDecodeError, KeyError, RuntimeError) as exc:
        raise DaonetError(f"cannot load the run in {run_dir}: {exc}; retrain it with `daonet train`") from exc
    model.eval()
    return model, config
