"""Attacks a curious server can run on the dropped activations it receives.

Threat model (DESIGN.md): the server knows the whole model, W and b included, and holds public data from
the same distribution. Every attack here uses only that knowledge plus the payloads; none sees a mask.

* :func:`min_norm` — mask-aware white-box least squares: the non-zero outputs are exact equations
  ``a_i·x + c_i = h_i``; the minimum-norm solution around the public mean, ``μ + A⁺(h_S − c_S − Aμ)``,
  is exactly ``μ + P(x − μ)`` (clipped to the input box when there is one).
* :func:`regularized` — He, Zhang, Lee (ACSAC 2019) "rMLE": the same equations plus a data prior
  (total variation for images, second-difference smoothness for signals), box-constrained; and its
  *naive* form, which treats every zero as a genuine ReLU output (``relu(Wx + b) ≈ h`` over all outputs).
* :func:`train_decoder` — a learned inverse network trained from scratch on (dropped activation, input)
  pairs from public data with fresh masks every epoch (the adaptive black-box attacker).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..device.certificate import FirstLayerSystem
from ..device.runtime import DeviceModel
from ..train import make_progress

LAMBDA_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class ServerKnowledge:
    """The first layer as the server knows it, in raw-input coordinates: ``pre = A x + c``."""

    a: np.ndarray  # (m, n) float64
    c: np.ndarray  # (m,)
    input_shape: tuple[int, ...]
    box: tuple[float, float] | None  # valid input range (images: (0, 1))
    kind: str  # "image" or "signal"
    value_scale: float  # typical size of a non-zero activation (for unit-free losses)

    @classmethod
    def from_device(cls, device: DeviceModel, kind: str, public_acts: np.ndarray | None = None) -> ServerKnowledge:
        a, c = FirstLayerSystem(device).full_matrix()
        box = tuple(device.value_range) if device.value_range is not None else None
        scale = 1.0
        if public_acts is not None and (public_acts > 0).any():
            scale = float(np.sqrt((public_acts[public_acts > 0] ** 2).mean()))
        return cls(a, c, tuple(device.input_shape), box, kind, scale)  # type: ignore[arg-type]

    @property
    def n(self) -> int:
        return self.a.shape[1]

    def clip(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, *self.box) if self.box is not None else x


# -- 1. mask-aware minimum-norm least squares ------------------------------------------------------
def min_norm(know: ServerKnowledge, h: np.ndarray, mu: np.ndarray, clip: bool = True) -> np.ndarray:
    """``μ + A_S⁺(h_S − c_S − A_S μ)`` per request; ``h`` is ``(N, m)`` (or ``(K, N, m)``: K observations of
    each input, whose equations are stacked; repeated rows with different values are solved in the
    least-squares sense)."""
    hk = h[None] if h.ndim == 2 else h
    mu = np.asarray(mu, np.float64).reshape(-1)
    out = np.empty((hk.shape[1], know.n))
    for i in range(hk.shape[1]):
        rows, vals = [], []
        for k in range(hk.shape[0]):
            s = np.flatnonzero(hk[k, i])
            rows.append(s)
            vals.append(hk[k, i, s])
        s = np.concatenate(rows)
        if s.size == 0:
            out[i] = mu
            continue
        a = know.a[s]
        r = np.concatenate(vals).astype(np.float64) - know.c[s] - a @ mu
        out[i] = mu + np.linalg.lstsq(a, r, rcond=None)[0]
    return know.clip(out) if clip else out


def union(hs: np.ndarray) -> np.ndarray:
    """K dropped observations of the *same* input ``(K, N, m)`` -> one vector with every surviving output
    (the values of an output agree across observations because the input is the same)."""
    return hs.max(axis=0)


# -- 2. regularized inversion (rMLE) ---------------------------------------------------------------
def _tv(x: torch.Tensor) -> torch.Tensor:
    """Isotropic total variation per image (smoothed), mean over pixels: ``x`` is ``(N, C, H, W)``."""
    dx = x[..., :, 1:] - x[..., :, :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    g = torch.sqrt(dx[..., :-1, :] ** 2 + dy[..., :, :-1] ** 2 + 1e-6)
    return g.flatten(1).mean(1)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """Mean squared second difference along the last axis (signals ``(N, C, L)``)."""
    d2 = x[..., 2:] - 2 * x[..., 1:-1] + x[..., :-2]
    return (d2**2).flatten(1).mean(1)


def regularized(know: ServerKnowledge, h: np.ndarray, mu: np.ndarray, lam: float, *, naive: bool = False,
                steps: int = 400, init: np.ndarray | None = None, batch: int = 512, seed: int = 0,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Minimize ``data(x) + lam * prior(x)`` over the input box, in batch (Adam, projected).

    Mask-aware: ``data = mean over the non-zero outputs of (a_i·x + c_i − h_i)²`` (exact equations).
    Naive (the literature's setting): ``data = mean over *all* outputs of (relu(a_i·x + c_i) − h_i)²``.
    ``h`` is ``(N, m)`` or ``(K, N, m)`` (K observations per input; all their equations are used).
    """
    torch.manual_seed(seed)
    hk = h[None] if h.ndim == 2 else h
    a = torch.from_numpy(know.a.astype(np.float32))
    c = torch.from_numpy(know.c.astype(np.float32))
    scale2 = know.value_scale**2
    prior = _tv if know.kind == "image" and len(know.input_shape) == 3 else _smooth
    n_items = hk.shape[1]
    out = np.empty((n_items, know.n), dtype=np.float32)
    mu_t = torch.from_numpy(np.asarray(mu, np.float32).reshape(1, -1))
    lo, hi = know.box if know.box is not None else (None, None)
    lr = 0.02 if know.box is not None else 0.05
    for start in range(0, n_items, batch):
        sl = slice(start, min(start + batch, n_items))
        hb = torch.from_numpy(np.ascontiguousarray(hk[:, sl], dtype=np.float32))  # K, B, m
        mask = (hb > 0).float()
        x0 = torch.from_numpy(init[sl].reshape(hb.shape[1], -1).astype(np.float32)) if init is not None \
            else mu_t.expand(hb.shape[1], -1).clone()
        x = x0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            pre = x @ a.T + c  # B, m
            if naive:
                res = (torch.relu(pre)[None] - hb) ** 2
                data = res.mean((0, 2))
            else:
                res = (pre[None] - hb) ** 2 * mask
                data = res.sum((0, 2)) / mask.sum((0, 2)).clamp_min(1.0)
            loss = (data / scale2 + lam * prior(x.view(-1, *know.input_shape))).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if lo is not None:
                with torch.no_grad():
                    x.clamp_(lo, hi)
            if progress is not None:
                progress(sl.stop - sl.start)
        out[sl] = x.detach().numpy()
    return out


def tune_lambda(know: ServerKnowledge, h_val: np.ndarray, x_val: np.ndarray, mu: np.ndarray,
                score: Callable[[np.ndarray, np.ndarray], float], *, naive: bool, steps: int,
                init: np.ndarray | None = None,
                grid: tuple[float, ...] = LAMBDA_GRID) -> tuple[float, dict[str, float]]:
    """Pick the prior weight on *public* data (the attacker simulates payloads for inputs it owns)."""
    scores = {}
    for lam in grid:
        rec = regularized(know, h_val, mu, lam, naive=naive, steps=steps, init=init)
        scores[f"{lam:g}"] = float(score(x_val, rec))
    best = max(scores, key=lambda k: scores[k])
    return float(best), scores


# -- 3. learned inverse network --------------------------------------------------------------------
class Decoder(nn.Module):
    """MLP from the dropped activation vector to the input (sigmoid output when inputs live in [0, 1])."""

    def __init__(self, m: int, n: int, hidden: int = 1024, box: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(m, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n))
        self.box = box

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = self.net(h)
        if self.box is not None:
            lo, hi = self.box
            y = lo + (hi - lo) * torch.sigmoid(y)
        return y


@dataclass
class DecoderResult:
    model: Decoder
    scale: float
    info: dict[str, Any]

    @torch.no_grad()
    def predict(self, h: np.ndarray, batch: int = 1024) -> np.ndarray:
        self.model.eval()
        out = [self.model(torch.from_numpy(np.ascontiguousarray(h[i:i + batch], np.float32)) / self.scale).numpy()
               for i in range(0, len(h), batch)]
        return np.concatenate(out) if out else np.zeros((0, self.model.net[-1].out_features), np.float32)


def train_decoder(sample: Callable[[int], np.ndarray], x: np.ndarray, box: tuple[float, float] | None, *,
                  epochs: int, batch: int = 128, lr: float = 1e-3, hidden: int = 1024, seed: int = 0,
                  progress: bool = True, fresh: bool = True) -> DecoderResult:
    """Train an inverse network from scratch on public ``(dropped activation, input)`` pairs.

    ``sample(epoch)`` returns the dropped vectors ``(N, m)`` the device would send for the public inputs
    ``x`` in that epoch (the audit draws fresh masks through the real device runtime every epoch).
    """
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x_t = torch.from_numpy(np.ascontiguousarray(x.reshape(len(x), -1), np.float32))
    first = np.asarray(sample(0), np.float32)
    m, n = first.shape[1], x_t.shape[1]
    nz = first[first > 0]
    scale = float(np.sqrt((nz ** 2).mean())) if nz.size else 1.0  # RMS: stays > 0 when all values are equal
    scale = scale if scale > 0 else 1.0
    model = Decoder(m, n, hidden, box)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = (len(x) + batch - 1) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch))
    losses = []
    with make_progress() as bar:
        task = bar.add_task("train inverse network", total=epochs * steps_per_epoch, status="", visible=progress)
        for epoch in range(epochs):
            h_t = torch.from_numpy(first if epoch == 0 else np.asarray(sample(epoch), np.float32)) / scale
            model.train()
            perm = torch.randperm(len(x), generator=gen)
            total, count = 0.0, 0
            for i in range(0, len(x), batch):
                idx = perm[i:i + batch]
                loss = ((model(h_t[idx]) - x_t[idx]) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
                bar.update(task, advance=1, status=f"epoch {epoch + 1}/{epochs} mse {total / count:.4f}")
            losses.append(total / max(count, 1))
    info = {"public_examples": int(len(x)), "epochs": int(epochs), "batch": batch, "lr": lr, "hidden": hidden,
            "parameters": int(sum(p.numel() for p in model.parameters())), "fresh_masks_every_epoch": fresh,
            "train_mse_per_epoch": [round(v, 6) for v in losses],
            "seconds": round(time.perf_counter() - t0, 2), "architecture": f"MLP {m}-{hidden}-{hidden}-{n}"}
    return DecoderResult(model, scale, info)
