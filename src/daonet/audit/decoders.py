"""Learned inverse networks, trained from scratch against one bundle until they stop improving.

An audit is only as strong as its weakest-trained attacker: a decoder stopped after a fixed, small number
of epochs gives a *lower bound* on leakage, not a privacy claim. So every decoder here

* trains on the attacker's public data (a seeded split of the training set) with **fresh masks every
  epoch**, drawn exactly as the device draws them;
* is early-stopped on a **held-out validation split of that public data** (payloads made once through
  the real device runtime and server parser), with a stated patience and a hard epoch cap; the weights of
  the best validation epoch are kept, and the fit says whether it converged or hit the cap;
* optimises what it is scored on (``loss="mse+metric"``: normalized MSE + (1 − SSIM) for images,
  + (1 − Pearson correlation) for signals), as a real adversary would.

Families (each a separate network, trained separately):

``mlp``         the dropped vector (scaled by its RMS) -> MLP -> input
``conv``        the dropped vector -> dense -> transposed-convolution upsampling (2-D images, 1-D signals)
``adaptive``    features that undo scale tricks and expose what the server knows anyway: ``h/rms``,
                ``sign log1p(|h/rms|)``, the support pattern ``1[h != 0]`` and the server's class probabilities
``prediction``  the server's class probabilities only: what the probabilities reveal. NOT a floor: they are
                computed from what the device sent, so a device head can push the input's style into them
``label``       the predicted class alone (one-hot): what the server must learn for the task. The floor that
                leakage is measured from (best converged attack minus this decoder, same loss and budget)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..audit_config import PRECISIONS, DecoderBudget  # noqa: F401  (re-exported: the audit's budget types)
from ..train import make_progress
from .checkpoints import atomic_write

FAMILIES = ("mlp", "conv", "adaptive", "prediction", "label")
BASELINE_FAMILIES = ("prediction", "label")  # bounds on the meaning of the numbers, not attacks on activations
FAMILY_LABELS = {
    "mlp": "learned inverse network, MLP (fresh masks every epoch)",
    "conv": "learned inverse network, transposed-convolution decoder",
    "adaptive": "adaptive inverse network: h, log h, support pattern and the server's class probabilities",
    "prediction": "decoder from the server's class probabilities only (what the prediction reveals)",
    "label": "label-only decoder: the predicted class alone, same loss and budget (the leakage floor)",
}




def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 matmuls natively (AVX512-BF16 / AMX): there bf16 autocast is ~2x faster."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, dev: torch.device) -> torch.dtype | None:
    """The autocast dtype for training a decoder on ``dev`` (None: plain float32, or TF32 on CUDA).

    Mixed precision keeps float32 master weights, float32 losses and float32 held-out scoring; only the
    matmuls/convolutions of the training forward pass run in bf16, as in any mixed-precision training.
    """
    if precision == "bf16" or (precision == "auto" and dev.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


# -- differentiable versions of the audit's metrics (same definitions as audit.metrics) -------------------
def ssim_win(shape: tuple[int, ...]) -> int:
    side = min(shape[-2:])
    return min(7, side if side % 2 else side - 1)


def ssim_torch(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Per-sample SSIM of ``(N, C, H, W)`` images, identical to scikit-image's default (uniform window,
    sample covariance, K1 = 0.01, K2 = 0.03, border cropped); channels averaged. Scores are computed in
    float64 (as scikit-image does); training losses pass ``dtype=torch.float32`` (same value to ~1e-6, 2x
    cheaper on a CPU)."""
    win = ssim_win(tuple(x.shape))
    n, c = x.shape[:2]
    a, b = x.reshape(n * c, 1, *x.shape[2:]).to(dtype), y.reshape(n * c, 1, *y.shape[2:]).to(dtype)
    np_ = win * win
    cov = np_ / (np_ - 1)

    def f(t: torch.Tensor) -> torch.Tensor:  # the mean over every win x win window, from an integral image
        c = F.pad(t.cumsum(2), (0, 0, 1, 0))   # (4x cheaper than avg_pool2d on a CPU, forward and backward)
        rows = c[:, :, win:] - c[:, :, :-win]
        c = F.pad(rows.cumsum(3), (1, 0))
        return (c[..., win:] - c[..., :-win]) / np_

    ux, uy = f(a), f(b)
    vx, vy, vxy = cov * (f(a * a) - ux * ux), cov * (f(b * b) - uy * uy), cov * (f(a * b) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).reshape(n, c).mean(1).float()


def pearson_torch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xf, yf = x.flatten(1), y.flatten(1)
    xc, yc = xf - xf.mean(1, keepdim=True), yf - yf.mean(1, keepdim=True)
    den = torch.sqrt((xc * xc).sum(1) * (yc * yc).sum(1)).clamp_min(1e-12)
    return (xc * yc).sum(1) / den


def metric_torch(kind: str, input_shape: tuple[int, ...],
                 dtype: torch.dtype = torch.float64) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The primary audit metric (higher = better reconstruction) as a differentiable per-sample function."""
    if kind == "image" and len(input_shape) == 3:
        return lambda x, r: ssim_torch(x.reshape(-1, *input_shape), r.reshape(-1, *input_shape), dtype=dtype)
    return pearson_torch


# -- decoder networks -----------------------------------------------------------------------------------
class _Boxed(nn.Module):
    def __init__(self, box: tuple[float, float] | None) -> None:
        super().__init__()
        self.box = box

    def squash(self, y: torch.Tensor) -> torch.Tensor:
        if self.box is None:
            return y
        lo, hi = self.box
        return lo + (hi - lo) * torch.sigmoid(y)


class MLPDecoder(_Boxed):
    """Features -> input, two hidden layers."""

    def __init__(self, m: int, n: int, hidden: int, box: tuple[float, float] | None) -> None:
        super().__init__(box)
        self.net = nn.Sequential(nn.Linear(m, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.squash(self.net(f))


class ConvDecoder(_Boxed):
    """Features -> dense -> a coarse feature map -> two stride-2 transposed convolutions -> input shape."""

    def __init__(self, m: int, input_shape: tuple[int, ...], hidden: int, box: tuple[float, float] | None,
                 channels: int = 128) -> None:
        super().__init__(box)
        self.input_shape = input_shape
        c = input_shape[0]
        two_d = len(input_shape) == 3
        self.coarse = tuple(math.ceil(s / 4) for s in input_shape[1:])
        ch = channels
        self.ch = ch
        self.fc = nn.Sequential(nn.Linear(m, hidden), nn.ReLU(), nn.Linear(hidden, ch * int(np.prod(self.coarse))),
                                nn.ReLU())
        conv_t, conv, bn = (nn.ConvTranspose2d, nn.Conv2d, nn.BatchNorm2d) if two_d else \
            (nn.ConvTranspose1d, nn.Conv1d, nn.BatchNorm1d)
        c1, c2 = ch // 2, ch // 4
        self.up = nn.Sequential(conv_t(ch, c1, 4, 2, 1), bn(c1), nn.ReLU(), conv_t(c1, c2, 4, 2, 1), bn(c2),
                                nn.ReLU(), conv(c2, c, 3, 1, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        z = self.fc(f).view(len(f), self.ch, *self.coarse)
        y = self.up(z)
        if len(self.input_shape) == 3:
            y = y[:, :, : self.input_shape[1], : self.input_shape[2]]
        else:
            y = y[:, :, : self.input_shape[1]]
        return self.squash(y.flatten(1))


# -- what the attacker trains on ------------------------------------------------------------------------
@dataclass
class PublicPairs:
    """The attacker's (dropped activation, input) material from its public data.

    ``sample(epoch)`` returns fresh dropped vectors for ``x_train`` (a new mask draw every epoch, through
    ``draw``); the validation pairs are fixed (made once through the real device runtime and server parser)
    so validation scores are comparable across epochs.
    """

    x_train: torch.Tensor  # (N, n) on ``device``
    x_val: torch.Tensor
    h_val: torch.Tensor
    draw: Callable[[int, int | None], torch.Tensor]  # (epoch, first N or None) -> (N, m) dropped vectors
    probs: Callable[[torch.Tensor], torch.Tensor]  # dropped vectors -> the server's class probabilities
    scale: float  # RMS of the non-zero values: unit-free inputs
    device: torch.device
    how: str  # how masks are drawn (recorded)

    def sample(self, epoch: int, size: int | None = None) -> torch.Tensor:
        return self.draw(epoch, size)


def features(family: str, pairs: PublicPairs, h: torch.Tensor) -> torch.Tensor:
    """The decoder input of one family for dropped vectors ``h``."""
    hs = h / pairs.scale
    if family in ("mlp", "conv"):
        return hs
    probs = pairs.probs(h)
    if family == "prediction":
        return probs
    if family == "label":
        return F.one_hot(probs.argmax(1), probs.shape[1]).float()
    # sign-preserving log and support 1[h != 0]: the same as log1p / 1[h > 0] for ReLU values, finite for the
    # signed values of a gaussian_ldp device
    return torch.cat([hs, torch.sign(hs) * torch.log1p(hs.abs()), (h != 0).float(), probs], 1)


def _build(family: str, m: int, input_shape: tuple[int, ...], hidden: int,
           box: tuple[float, float] | None, conv_channels: int = 128) -> nn.Module:
    n = int(np.prod(input_shape))
    if family == "conv":
        return ConvDecoder(m, input_shape, hidden, box, conv_channels)
    return MLPDecoder(m, n, hidden if family not in BASELINE_FAMILIES else min(hidden, 512), box)


@dataclass
class DecoderFit:
    """A trained decoder and the record of how it was trained (all of it reported)."""

    family: str
    model: nn.Module
    pairs: PublicPairs
    info: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def predict(self, h: np.ndarray | torch.Tensor, batch: int = 4096) -> np.ndarray:
        self.model.eval()
        ht = torch.as_tensor(np.ascontiguousarray(h, np.float32) if isinstance(h, np.ndarray) else h)
        out = []
        for i in range(0, len(ht), batch):
            hb = ht[i:i + batch].to(self.pairs.device)
            out.append(self.model(features(self.family, self.pairs, hb)).float().cpu().numpy())
        return np.concatenate(out)


CAP_TEXT = "hit the epoch cap (still improving: a lower bound)"


class LRPlan:
    """The learning-rate schedule of one decoder and the rule that says it has converged.

    ``plateau``: the learning rate halves when the held-out score stalls; converged after ``patience`` epochs
    without a gain of ``min_delta``. ``one-cycle``: a warm-up to ``lr`` and a cosine anneal over
    ``cycle_epochs`` (most of the progress in a fraction of the plateau schedule's epochs), then restart cycles
    of ``restart_epochs`` (peak ``restart_lr`` × ``lr``) from where the last one ended; converged when a whole
    restart cycle raised the best held-out score by no more than ``min_delta``: more training at a fresh
    learning rate did not help, which is the claim. Without restart cycles the run is one cycle, not converged.
    """

    def __init__(self, budget: DecoderBudget, opt: torch.optim.Optimizer, steps_per_epoch: int) -> None:
        self.budget, self.opt, self.steps = budget, opt, max(1, steps_per_epoch)
        self.best, self.bad = -math.inf, 0  # plateau: best score and epochs without a significant gain
        self.cycle, self.cycle_end, self.cycle_start_best = 0, budget.cycle_epochs, -math.inf
        self.sched: Any = None
        if budget.schedule == "plateau":
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="max", factor=0.5, threshold=budget.min_delta, threshold_mode="abs",
                patience=max(1, budget.patience // 3))
        else:
            self._start_cycle()

    def _start_cycle(self) -> None:
        b = self.budget
        first = self.cycle == 0
        epochs = b.cycle_epochs if first else b.restart_epochs
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, max_lr=b.lr * (1.0 if first else b.restart_lr), total_steps=epochs * self.steps,
            pct_start=0.15 if first else 0.3, anneal_strategy="cos", div_factor=25.0, final_div_factor=1e3)

    def expected_epochs(self) -> int:
        """The epochs this plan will run if nothing changes (the progress bar's total)."""
        if self.budget.schedule == "plateau":
            return self.budget.max_epochs
        return min(self.budget.max_epochs, self.cycle_end)

    def after_step(self) -> None:
        if self.budget.schedule == "one-cycle":
            self.sched.step()

    def after_epoch(self, epoch: int, val: float) -> str | None:
        """Advance the schedule after 0-based ``epoch`` scored ``val``; the stop reason once converged."""
        b = self.budget
        if b.schedule == "plateau":
            self.sched.step(val)
            self.bad = 0 if val > self.best + b.min_delta else self.bad + 1  # patience counts significant gains
            self.best = max(self.best, val)
            if self.bad >= b.patience:
                return f"converged: no held-out gain > {b.min_delta:g} in {b.patience} epochs"
            return None
        self.best = max(self.best, val)
        if epoch + 1 < self.cycle_end:
            return None
        if b.restart_epochs == 0:
            return f"one {b.cycle_epochs}-epoch cycle, no restart check (convergence not tested: a lower bound)"
        if self.cycle > 0 and self.best - self.cycle_start_best <= b.min_delta:
            return (f"converged: a further {b.restart_epochs}-epoch cycle (peak lr {b.lr * b.restart_lr:g}) gained "
                    f"{max(0.0, self.best - self.cycle_start_best):.4f} <= {b.min_delta:g} on held-out data")
        self.cycle += 1
        self.cycle_start_best = self.best
        self.cycle_end = epoch + 1 + b.restart_epochs
        self._start_cycle()
        return None

    def describe(self) -> str:
        b = self.budget
        if b.schedule == "plateau":
            return f"plateau (halve lr on a stall; patience {b.patience})"
        return (f"one-cycle: {b.cycle_epochs} epochs to peak lr {b.lr:g}, then {self.cycle} restart cycle(s) of "
                f"{b.restart_epochs} epochs at {b.restart_lr:g} x lr")

    def state_dict(self) -> dict[str, Any]:
        return {"sched": self.sched.state_dict(), "best": self.best, "bad": self.bad, "cycle": self.cycle,
                "cycle_end": self.cycle_end, "cycle_start_best": self.cycle_start_best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad = float(state["best"]), int(state["bad"])
        self.cycle, self.cycle_end = int(state["cycle"]), int(state["cycle_end"])
        self.cycle_start_best = float(state["cycle_start_best"])
        if self.budget.schedule == "one-cycle":
            self._start_cycle()
        self.sched.load_state_dict(state["sched"])


def fit_decoder(family: str, pairs: PublicPairs, *, kind: str, input_shape: tuple[int, ...],
                box: tuple[float, float] | None, budget: DecoderBudget, n_train: int | None = None, seed: int = 0,
                progress: bool = True, label: str | None = None, resume: str | Path | None = None,
                save_every_s: float = 60.0, on_epoch: Callable[[int, float], None] | None = None) -> DecoderFit:
    """Train one decoder family from scratch until the held-out metric stops improving (or the cap).

    With ``resume`` (a file path) the whole training state (weights, optimizer, LR schedule, shuffling RNG,
    early-stopping record) is saved there at most every ``save_every_s`` seconds and at the end, and a
    later call with the same path and the same settings continues from the last saved epoch: a decoder that
    needs two hours on a CPU survives a lost session, and the resumed run takes the same steps as an
    uninterrupted one. ``on_epoch(epoch, held_out)`` is called after each epoch (and after its save)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown decoder family {family!r}; choose from {', '.join(FAMILIES)}")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    dev = pairs.device
    if dev.type == "cuda":  # decoders are small MLPs/convs: TF32 is ample unless fp32 is asked for
        torch.backends.cuda.matmul.allow_tf32 = budget.precision != "fp32"
        torch.backends.cudnn.allow_tf32 = budget.precision != "fp32"
    x_tr = pairs.x_train if n_train is None else pairs.x_train[:n_train]
    n_tr = len(x_tr)
    batch = min(budget.batch, max(32, n_tr // 16))  # small public sets (ECG5000: 500) still get many steps/epoch
    metric = metric_torch(kind, input_shape)  # held-out scoring: float64, as the audit scores
    loss_metric = metric_torch(kind, input_shape, torch.float32)
    amp = autocast_dtype(budget.precision, dev)
    var = float(x_tr.var()) or 1.0
    f_val = features(family, pairs, pairs.h_val)
    model = _build(family, f_val.shape[1], input_shape, budget.hidden, box, budget.conv_channels).to(dev)
    # the fused kernel is the same AdamW update in one pass (~4x faster than the per-tensor loop on a CPU)
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=1e-4, fused=True)
    steps = sum(1 for i in range(0, n_tr, batch) if n_tr - i >= 2)  # optimizer steps per epoch
    plan = LRPlan(budget, opt, steps)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    best, best_epoch, best_state = -math.inf, 0, copy.deepcopy(model.state_dict())
    val_hist: list[float] = []
    loss_hist: list[float] = []
    stopped = CAP_TEXT
    signature = {"family": family, "n_train": n_tr, "features": int(f_val.shape[1]), "seed": seed,
                 "input_shape": list(input_shape), "budget": asdict(budget), "device": dev.type}
    state_file = Path(resume) if resume is not None else None
    start, before_s, resumed_from = 0, 0.0, 0
    saved = _load_training_state(state_file, signature)
    if saved is not None:
        model.load_state_dict(saved["model"])
        plan.load_state_dict(saved["plan"])  # first: re-creating a cycle's scheduler resets the optimizer's lr
        opt.load_state_dict(saved["opt"])
        gen.set_state(saved["gen"])
        best_state = saved["best_state"]
        best, best_epoch = float(saved["best"]), int(saved["best_epoch"])
        val_hist, loss_hist = list(saved["val_hist"]), list(saved["loss_hist"])
        stopped, before_s = str(saved["stopped"]), float(saved["seconds"])
        start = resumed_from = len(val_hist)
    t_run, last_save = time.perf_counter(), time.perf_counter()

    def save_state() -> None:
        if state_file is None:
            return
        _save_training_state(state_file, {
            "signature": signature, "model": model.state_dict(), "opt": opt.state_dict(),
            "plan": plan.state_dict(), "gen": gen.get_state(), "best_state": best_state, "best": best,
            "best_epoch": best_epoch, "val_hist": val_hist, "loss_hist": loss_hist,
            "stopped": stopped, "seconds": before_s + time.perf_counter() - t_run})

    with make_progress() as bar:
        task = bar.add_task(label or f"decoder {family}", total=plan.expected_epochs(), completed=start, status="",
                            visible=progress, total_is_cap=budget.schedule == "plateau")
        for epoch in range(start, budget.max_epochs if stopped == CAP_TEXT else start):
            f_tr = features(family, pairs, pairs.sample(epoch, n_train))
            model.train()
            perm = torch.randperm(n_tr, generator=gen).to(dev)
            total, count = torch.zeros((), device=dev), 0  # summed on the device: no sync per step
            for i in range(0, n_tr, batch):
                idx = perm[i:i + batch]
                if len(idx) < 2:
                    continue
                with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                    rec = model(f_tr[idx])
                rec, tgt = rec.float(), x_tr[idx]
                loss = ((rec - tgt) ** 2).mean() / var
                if budget.loss == "mse+metric":
                    loss = loss + (1.0 - loss_metric(tgt, rec)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                plan.after_step()
                total += loss.detach() * len(idx)
                count += len(idx)
            model.eval()
            with torch.no_grad():
                val = float(torch.cat([metric(pairs.x_val[i:i + 4096], model(f_val[i:i + 4096]))
                                       for i in range(0, len(f_val), 4096)]).mean())
            val_hist.append(round(val, 5))
            loss_hist.append(round(float(total) / max(count, 1), 5))
            if val > best:  # the weights kept are always the best held-out epoch's
                best, best_epoch = val, epoch + 1
                best_state = copy.deepcopy(model.state_dict())
            stopped = plan.after_epoch(epoch, val) or CAP_TEXT
            bar.update(task, advance=1, total=plan.expected_epochs(),
                       status=f"epoch {epoch + 1} val {val:.4f} best {best:.4f}@{best_epoch}")
            if stopped != CAP_TEXT or epoch + 1 == budget.max_epochs or \
                    time.perf_counter() - last_save >= save_every_s:
                save_state()
                last_save = time.perf_counter()
            if on_epoch is not None:
                on_epoch(epoch + 1, val)
            if stopped != CAP_TEXT:
                break
    model.load_state_dict(best_state)
    info = {
        "family": family, "label": FAMILY_LABELS[family], "public_train": n_tr, "public_val": len(pairs.x_val),
        "epochs_run": len(val_hist), "best_epoch": best_epoch, "best_val": round(best, 5), "stopped": stopped,
        "converged": stopped.startswith("converged"), "val_metric_per_epoch": val_hist,
        "train_loss_per_epoch": loss_hist, "max_epochs": budget.max_epochs, "patience": budget.patience,
        "hidden": budget.hidden, "conv_channels": budget.conv_channels, "batch": batch, "lr": budget.lr,
        "loss": budget.loss, "schedule": plan.describe(),
        "precision": "bf16 autocast (float32 weights and scoring)" if amp is not None else
        ("TF32" if dev.type == "cuda" else "float32"),
        "parameters": int(sum(p.numel() for p in model.parameters())), "masks": pairs.how,
        "device": str(dev), "seconds": round(before_s + time.perf_counter() - t0, 2),
        "architecture": type(model).__name__,
    }
    if resumed_from:  # the seconds before the resume were spent by an earlier process (see compute_s)
        info.update(resumed_from_epoch=resumed_from, resumed_seconds=round(before_s, 2))
    return DecoderFit(family, model, pairs, info)


def _save_training_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_training_state(path: Path | None, signature: dict[str, Any]) -> dict[str, Any] | None:
    """The saved state at ``path`` if it belongs to the same training (family, data size, budget, seed)."""
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (a damaged or foreign file: train from scratch, it is only a cache)
        return None
    return state if isinstance(state, dict) and state.get("signature") == signature else None
