"""Attacks a curious server can run on the dropped activations it receives.

Threat model (docs/design.md): the server knows the whole model, W and b included, and holds public data from
the same distribution. Every attack here uses only that knowledge plus the payloads; none sees a mask.

* :func:`min_norm` — mask-aware white-box least squares: the non-zero outputs are exact equations
  ``a_i·x + c_i = h_i``; the minimum-norm solution around the public mean, ``μ + A⁺(h_S − c_S − Aμ)``,
  is exactly ``μ + P(x − μ)`` (clipped to the input box when there is one).
* :func:`regularized` — He, Zhang, Lee (ACSAC 2019) "rMLE": the same equations plus a data prior
  (total variation for images, second-difference smoothness for signals), box-constrained; and its
  *naive* form, which treats every zero as a genuine ReLU output (``relu(Wx + b) ≈ h`` over all outputs).

Learned inverse networks (the black-box attackers) live in :mod:`daonet.audit.decoders`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.linalg
import scipy.sparse
import torch

from ..device.certificate import FirstLayerSystem
from ..device.runtime import DeviceModel

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

    @cached_property
    def a_sparse(self) -> scipy.sparse.csr_matrix | None:
        """``A`` as sparse rows when most of it is zero (convolutions: each output sees one patch), for Gram
        products that cost the non-zeros, not ``k x n²``; None for dense layers."""
        return scipy.sparse.csr_matrix(self.a) if np.count_nonzero(self.a) < 0.1 * self.a.size else None

    def clip(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, *self.box) if self.box is not None else x


# -- 1. mask-aware minimum-norm least squares ------------------------------------------------------
def min_norm(know: ServerKnowledge, h: np.ndarray, mu: np.ndarray, clip: bool = True,
             only: np.ndarray | None = None) -> np.ndarray:
    """``μ + A_S⁺(h_S − c_S − A_S μ)`` per request; ``h`` is ``(N, m)`` (or ``(K, N, m)``: K observations of
    each input, whose equations are stacked; repeated rows with different values are solved in the
    least-squares sense). ``only`` (a boolean ``(N,)``) solves those requests alone; the others are ``μ``.

    The solver is the SVD (LAPACK ``gelsd``): dropping makes rank-deficient systems common (a sample no kept
    output covers), where a pivoted QR (``gelsy``, twice as fast) can keep a singular direction and return a
    wild solution (measured on a FordA conv1d: mean correlation 0.990 instead of 0.9995)."""
    hk = h[None] if h.ndim == 2 else h
    mu = np.asarray(mu, np.float64).reshape(-1)
    out = np.broadcast_to(mu, (hk.shape[1], know.n)).copy()
    for i in range(hk.shape[1]) if only is None else np.flatnonzero(only):
        rows, vals = [], []
        for k in range(hk.shape[0]):
            s = np.flatnonzero(hk[k, i])
            rows.append(s)
            vals.append(hk[k, i, s])
        s = np.concatenate(rows)
        if s.size == 0:
            continue
        v = np.concatenate(vals).astype(np.float64)
        if hk.shape[0] > 1:  # an output seen c times: one row, weight sqrt(c), mean value (the same LS problem)
            s, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
            v = np.bincount(inv, weights=v, minlength=len(s)) / counts
            w = np.sqrt(counts)
        else:
            w = None
        big = len(s) * know.n * min(len(s), know.n) > 1e7  # sparse indexing costs more than a small dense Gram
        a: np.ndarray | scipy.sparse.csr_matrix = know.a_sparse[s] if big and know.a_sparse is not None \
            else know.a[s]
        r = v - know.c[s] - a @ mu
        if w is not None:
            a = scipy.sparse.csr_matrix(a.multiply(w[:, None])) if isinstance(a, scipy.sparse.csr_matrix) \
                else a * w[:, None]
            r = r * w
        out[i] = mu + _min_norm_solve(a, r)
    return know.clip(out) if clip else out


_RCOND_FLOOR = 1e-4  # Cholesky of the Gram only when cond(A) <~ 1e4: its error (cond(A)² x eps) stays near 1e-8


def _min_norm_solve(a: np.ndarray | scipy.sparse.csr_matrix, r: np.ndarray) -> np.ndarray:
    """``A⁺ r`` (the minimum-norm least-squares solution), through the Cholesky factor of the smaller Gram matrix
    when ``A`` is well conditioned (one product and an n x n or k x k factorisation: four to five times faster
    than the SVD), and the SVD otherwise. Columns no kept output touches are zero in the solution either way; they
    are set aside first so that the tall systems of pooled payloads keep a full-rank Gram. A sparse ``A`` (rows of
    a convolution) makes the products cost its non-zeros."""
    k, n = a.shape
    tall = k >= n
    if isinstance(a, scipy.sparse.csr_matrix):
        cols = np.unique(a.indices) if tall else np.arange(n)
        g = (a.T @ a if tall else a @ a.T).toarray()
        dense = a.toarray
    else:
        cols = np.flatnonzero(np.any(a != 0, axis=0)) if tall else np.arange(n)
        g = a.T @ a if tall else a @ a.T
        dense = lambda: a  # noqa: E731
    if tall and len(cols) < n:
        g = g[np.ix_(cols, cols)]
    chol, info = scipy.linalg.lapack.dpotrf(g, lower=1)
    if info == 0:
        rcond, info = scipy.linalg.lapack.dtrcon(chol, norm="1", uplo="L")
        if info == 0 and rcond > _RCOND_FLOOR:
            if not tall:
                return np.asarray(a.T @ scipy.linalg.cho_solve((chol, True), r, check_finite=False))
            x = np.zeros(n)
            x[cols] = scipy.linalg.cho_solve((chol, True), np.asarray(a.T @ r)[cols], check_finite=False)
            return x
    return np.linalg.lstsq(dense(), r, rcond=None)[0]


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


@dataclass(frozen=True)
class PooledSums:
    """K payloads of each input as per-output sums: ``Σ_k mask (a_i·x + c_i − h_k)² = cnt·pre² − 2·pre·S + Q``.

    One ``(N, m)`` term whatever K is, so pooled problems with different K (the repeated-query rows) are
    concatenated and solved in one batch."""

    cnt: np.ndarray  # (N, m) how many of the K payloads kept output i
    s1: np.ndarray  # (N, m) the sum of its kept values
    s2: np.ndarray  # (N, m) the sum of their squares

    @classmethod
    def of(cls, h: np.ndarray) -> PooledSums:
        """From ``(K, N, m)`` (or ``(N, m)``) received vectors."""
        hk = (h[None] if h.ndim == 2 else h).astype(np.float32)
        mask = (hk != 0).astype(np.float32)
        return cls(mask.sum(0), (mask * hk).sum(0), (mask * hk * hk).sum(0))

    def __len__(self) -> int:
        return len(self.cnt)

    def take(self, idx: np.ndarray) -> PooledSums:
        return PooledSums(self.cnt[idx], self.s1[idx], self.s2[idx])

    @classmethod
    def concat(cls, parts: list[PooledSums]) -> PooledSums:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("cnt", "s1", "s2")))


def regularized(know: ServerKnowledge, h: np.ndarray, mu: np.ndarray, lam: float, *, naive: bool = False,
                steps: int = 400, init: np.ndarray | None = None, batch: int = 512, seed: int = 0,
                progress: Callable[[int], None] | None = None, device: str | torch.device = "cpu") -> np.ndarray:
    """Minimize ``data(x) + lam * prior(x)`` over the input box, in batch (Adam, projected).

    Mask-aware: ``data = mean over the non-zero outputs of (a_i·x + c_i − h_i)²`` (exact equations).
    Naive (the literature's setting): ``data = mean over *all* outputs of (relu(a_i·x + c_i) − h_i)²``.
    ``h`` is ``(N, m)`` or ``(K, N, m)`` (K observations per input; all their equations are used, pooled as
    :class:`PooledSums`).
    """
    hk = h[None] if h.ndim == 2 else h
    if not naive and hk.shape[0] > 1:
        return regularized_pooled(know, PooledSums.of(hk), mu, lam, steps=steps, init=init, batch=batch, seed=seed,
                                  progress=progress, device=device)
    dev = torch.device(device)

    def data_term(sl: slice) -> Callable[[torch.Tensor], torch.Tensor]:
        hb = torch.from_numpy(np.ascontiguousarray(hk[:, sl], dtype=np.float32)).to(dev)  # K, B, m
        mask = (hb != 0).float()
        if naive:
            return lambda pre: ((torch.relu(pre)[None] - hb) ** 2).mean((0, 2))
        count = mask.sum((0, 2)).clamp_min(1.0)
        return lambda pre: ((pre[None] - hb) ** 2 * mask).sum((0, 2)) / count

    return _descend(know, data_term, hk.shape[1], mu, lam, steps=steps, init=init, batch=batch, seed=seed,
                    progress=progress, device=dev)


def regularized_pooled(know: ServerKnowledge, sums: PooledSums, mu: np.ndarray, lam: float, *, steps: int = 400,
                       init: np.ndarray | None = None, batch: int = 512, seed: int = 0,
                       progress: Callable[[int], None] | None = None,
                       device: str | torch.device = "cpu") -> np.ndarray:
    """The mask-aware rMLE of :func:`regularized` on pooled equations (mean over every kept equation)."""
    dev = torch.device(device)

    def data_term(sl: slice) -> Callable[[torch.Tensor], torch.Tensor]:
        cnt, s1, s2 = (torch.from_numpy(np.ascontiguousarray(v[sl])).to(dev) for v in (sums.cnt, sums.s1, sums.s2))
        n_eq = cnt.sum(1).clamp_min(1.0)
        return lambda pre: (cnt * pre * pre - 2 * pre * s1 + s2).sum(1) / n_eq

    return _descend(know, data_term, len(sums), mu, lam, steps=steps, init=init, batch=batch, seed=seed,
                    progress=progress, device=dev)


def _descend(know: ServerKnowledge, data_term: Callable[[slice], Callable[[torch.Tensor], torch.Tensor]],
             n_items: int, mu: np.ndarray, lam: float, *, steps: int, init: np.ndarray | None, batch: int, seed: int,
             progress: Callable[[int], None] | None, device: torch.device) -> np.ndarray:
    """Projected Adam with a cosine schedule on ``data(pre) / scale² + lam · prior(x)``, per batch of items
    (items are independent: the batch size changes speed, not results)."""
    torch.manual_seed(seed)
    a = torch.from_numpy(know.a.astype(np.float32)).to(device)
    c = torch.from_numpy(know.c.astype(np.float32)).to(device)
    scale2 = know.value_scale**2
    prior = _tv if know.kind == "image" and len(know.input_shape) == 3 else _smooth
    out = np.empty((n_items, know.n), dtype=np.float32)
    mu_t = torch.from_numpy(np.asarray(mu, np.float32).reshape(1, -1)).to(device)
    lo, hi = know.box if know.box is not None else (None, None)
    lr = 0.02 if know.box is not None else 0.05
    for start in range(0, n_items, batch):
        sl = slice(start, min(start + batch, n_items))
        data = data_term(sl)
        n_b = sl.stop - sl.start
        x0 = torch.from_numpy(init[sl].reshape(n_b, -1).astype(np.float32)).to(device) if init is not None \
            else mu_t.expand(n_b, -1).clone()
        x = x0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            pre = x @ a.T + c  # B, m
            loss = (data(pre) / scale2 + lam * prior(x.view(-1, *know.input_shape))).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if lo is not None:
                with torch.no_grad():
                    x.clamp_(lo, hi)
            if progress is not None:
                progress(n_b)
        out[sl] = x.detach().cpu().numpy()
    return out


def tune_lambda(know: ServerKnowledge, h_val: np.ndarray, x_val: np.ndarray, mu: np.ndarray,
                score: Callable[[np.ndarray, np.ndarray], float], *, naive: bool, steps: int,
                init: np.ndarray | None = None, grid: tuple[float, ...] = LAMBDA_GRID,
                device: str | torch.device = "cpu") -> tuple[float, dict[str, float]]:
    """Pick the prior weight on *public* data (the attacker simulates payloads for inputs it owns)."""
    scores = {}
    for lam in grid:
        rec = regularized(know, h_val, mu, lam, naive=naive, steps=steps, init=init, device=device)
        scores[f"{lam:g}"] = float(score(x_val, rec))
    best = max(scores, key=lambda k: scores[k])
    return float(best), scores
