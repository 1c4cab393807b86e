"""Per-request privacy certificate and the device-side policy (numpy only).

For one request let ``S`` be the first-layer outputs that reach the server with a non-zero value and
``A = W_S`` the corresponding rows of the first layer *in raw-input coordinates* (the normalization
``(x - mean) / std`` is folded in: the rows are ``W / std``). From the equations alone the server can
compute exactly ``P x`` with ``P = A⁺A``, the projection onto the row space of ``A``, and nothing more.
The certificate states, for the device's own input ``x``:

* ``k``: surviving outputs, ``rank``: rank of ``A`` (the dimension of what is pinned down),
* ``identifiable``: input coordinates known exactly (``P_jj == 1``),
* ``revealed_energy`` ``ρ(x) = ‖P(x − μ)‖² / ‖x − μ‖²``: the fraction of the centred input the
  equations reveal (``μ`` is the public data mean, which any attacker knows).

Patchify convolutions (stride >= kernel) split into independent per-patch systems, so the
certificate is computed patch by patch (and the worst patch is reported); overlapping convolutions
couple patches, so the whole sparse system of surviving rows is used. Cost is O(k²n) per system.

The certificate is a *necessary* condition for privacy, not a sufficient one: priors over the data let
an attacker do better than ``P x`` (see ``daonet audit``). It never leaves the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from ..errors import BundleError, InputError
from ..manifest import IDENTIFIABLE_TOL, PrivacySpec
from .subsets import PatchSubsets

__all__ = ["Certificate", "PatchStats", "PrivacyPolicy", "FirstLayerSystem", "certify", "apply_policy"]

_DEPENDENT_RTOL = 1e-9  # a row whose residual is below this (relative) adds nothing new
_ENERGY_EPS = 1e-12
_EPS64 = float(np.finfo(np.float64).eps)
_WELL_CONDITIONED = 1e-8  # the Gram matrix's λ_min / λ_max above which _row_space_basis trusts its eigenvectors
_LOOKUP_BYTES = 16 * 2**20  # a convolution keeps every row and W Wᵀ if they fit in this (FirstLayerSystem.lookup)


@dataclass(frozen=True)
class PrivacyPolicy:
    """What the device refuses to send. Stored in the device manifest under ``"privacy"``.

    ``max_revealed_energy``: upper bound on ρ(x) (``None`` switches the bound off);
    ``forbid_identifiable``: never let a single input coordinate be solved exactly.
    """

    max_revealed_energy: float | None = None
    forbid_identifiable: bool = True
    identifiable_tol: float = IDENTIFIABLE_TOL

    def __post_init__(self) -> None:
        m = self.max_revealed_energy
        if m is not None and not (0.0 <= float(m) <= 1.0):
            raise InputError(f"max_revealed_energy must be in [0, 1] or None, got {m}")
        if not 0.0 < self.identifiable_tol < 1.0:
            raise InputError(f"identifiable_tol must be in (0, 1), got {self.identifiable_tol}")

    @classmethod
    def from_manifest(cls, privacy: PrivacySpec | dict[str, Any] | None) -> PrivacyPolicy:
        """The policy of a manifest's (already validated) ``privacy`` block; a plain dict is validated first
        (missing keys take the defaults; bad values raise :class:`~daonet.errors.BundleError`)."""
        if not isinstance(privacy, PrivacySpec):
            privacy = PrivacySpec.from_json(privacy or {}, "privacy")
        return cls(max_revealed_energy=privacy.max_revealed_energy, forbid_identifiable=privacy.forbid_identifiable,
                   identifiable_tol=privacy.identifiable_tol)

    def to_spec(self) -> PrivacySpec:
        """The manifest block that stores this policy."""
        return PrivacySpec(max_revealed_energy=self.max_revealed_energy,
                           forbid_identifiable=self.forbid_identifiable, identifiable_tol=self.identifiable_tol)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._as_dict)

    @cached_property
    def _as_dict(self) -> dict[str, Any]:  # every certificate records its policy: build the dict once
        return {"max_revealed_energy": self.max_revealed_energy, "forbid_identifiable": self.forbid_identifiable,
                "identifiable_tol": self.identifiable_tol}

    @property
    def active(self) -> bool:
        return self.forbid_identifiable or self.max_revealed_energy is not None

    def allows(self, cert: Certificate) -> bool:
        return self._allows(cert.identifiable, cert.revealed_energy)

    def _allows(self, identifiable: int, revealed_energy: float) -> bool:
        if self.forbid_identifiable and identifiable > 0:
            return False
        return self.max_revealed_energy is None or revealed_energy <= self.max_revealed_energy + 1e-9


@dataclass(frozen=True)
class PatchStats:
    """Per-patch arrays for patchify convolutions (one entry per output position)."""

    k: np.ndarray
    rank: np.ndarray
    identifiable: np.ndarray
    revealed_energy: np.ndarray  # ρ of the patch alone: ‖P_p d_p‖² / ‖d_p‖² (0 where ‖d_p‖ ≈ 0)
    patch_dim: int
    worst: int  # index of the patch with the largest ρ

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k.tolist(), "rank": self.rank.tolist(), "identifiable": self.identifiable.tolist(),
                "revealed_energy": [round(float(v), 6) for v in self.revealed_energy],
                "patch_dim": self.patch_dim, "worst": self.worst}


@dataclass(frozen=True)
class Certificate:
    """What the server can compute exactly from one request's equations (see the module docstring)."""

    k: int  # surviving non-zero outputs that are sent
    n: int  # input dimension
    rank: int  # rank of the surviving rows (summed over patches for patchify convolutions)
    identifiable: int  # input coordinates with P_jj == 1
    revealed_energy: float  # ρ(x) over the whole input
    max_leverage: float  # max_j P_jj: how close the most exposed coordinate is to identifiable
    k_before_policy: int
    dropped_by_policy: int  # outputs the policy dropped on top of the random mask
    policy_ok: bool
    policy: dict[str, Any] | None = None
    patches: PatchStats | None = None
    worst_patch: dict[str, Any] | None = field(default=None)
    exact: bool = True  # False with noise on surviving values: the numbers are then an upper bound
    note: str | None = None

    applies = True  # the algebra describes what is sent (a block gets a BlockCertificate instead)

    @property
    def rank_fraction(self) -> float:
        return self.rank / self.n if self.n else 0.0

    def to_dict(self, per_patch: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "k": self.k, "n": self.n, "rank": self.rank, "identifiable": self.identifiable,
            "revealed_energy": round(float(self.revealed_energy), 6), "max_leverage": round(self.max_leverage, 6),
            "k_before_policy": self.k_before_policy, "dropped_by_policy": self.dropped_by_policy,
            "policy_ok": self.policy_ok, "policy": self.policy,
        }
        if self.worst_patch is not None:
            out["worst_patch"] = self.worst_patch
        if not self.exact:
            out.update(exact=False, note=self.note)
        if per_patch and self.patches is not None:
            out["patches"] = self.patches.to_dict()
        return out

    def summary(self) -> str:
        s = (f"{self.k} outputs sent, rank {self.rank}/{self.n}, {self.identifiable} identifiable, "
             f"revealed energy {self.revealed_energy:.3f}")
        if self.dropped_by_policy:
            s += f", policy dropped {self.dropped_by_policy} more"
        if self.note:
            s += f" ({self.note})"
        return s


class FirstLayer(Protocol):
    """What the certificate reads of a device model (:class:`~daonet.device.runtime.DeviceModel` has it): the
    first layer's geometry, weights and normalization. A protocol, so this module never imports the runtime."""

    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    n_outputs: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    std: np.ndarray


class FirstLayerSystem:
    """The first layer as linear equations over the raw input: ``h_i = relu(a_i · x + c_i)``.

    Built once per device model; ``rows(indices)`` gives the effective rows of any set of outputs.
    Only the first layer's own weights are used (what the device, and the server, know).
    """

    use_gram = True  # dense layers: look up each request's Gram matrix in W Wᵀ (False: the reference k×k×n product)
    fast = True  # batched certificate and policy (False: the reference loops; bench/device_step.py compares them)
    mu_cache: tuple[object, np.ndarray] | None = None  # the last μ seen and its float64 copy

    def __init__(self, device: FirstLayer) -> None:
        if not getattr(device, "is_linear", True):
            raise BundleError("non-linear block: covered by the audit only (the first-layer equations do not "
                              "describe a device block's output)")
        self.kind = device.kind
        self.input_shape = tuple(device.input_shape)
        self.output_shape = tuple(device.output_shape)
        self.n = int(np.prod(self.input_shape))
        self.n_outputs = int(device.n_outputs)
        w = np.asarray(device.weight, dtype=np.float64)
        mean = np.asarray(device.mean, dtype=np.float64)
        std = np.asarray(device.std, dtype=np.float64)
        c = self.input_shape[0]
        bias = np.asarray(device.bias, dtype=np.float64)
        if self.kind == "dense":
            std_full = np.broadcast_to(std, self.input_shape).reshape(-1)
            mean_full = np.broadcast_to(mean, self.input_shape).reshape(-1)
            self.dense_rows = w / std_full  # (n_out, n)
            self.bias = bias - self.dense_rows @ mean_full
            self.kernel: tuple[int, ...] = ()
            self.stride: tuple[int, ...] = ()
            self.patchify = False
            self.spatial_out: tuple[int, ...] = ()
        else:
            self.kernel = tuple(int(k) for k in device.kernel)
            self.stride = tuple(int(s) for s in device.stride)
            nd = len(self.kernel)
            cshape = (1, c) + (1,) * nd
            mean_c, std_c = mean.reshape(c), std.reshape(c)  # convolutions normalize per channel (manifest.py)
            self.kernel_rows = (w / std_c.reshape(cshape)).reshape(w.shape[0], -1)  # (C_out, C*prod(kernel))
            self.bias = bias - (w * (mean_c / std_c).reshape(cshape)).reshape(w.shape[0], -1).sum(1)
            self.patchify = all(s >= k for s, k in zip(self.stride, self.kernel, strict=True))
            self.spatial_out = tuple(self.output_shape[1:])
            self._patch_coords = self._build_patch_coords()
        self.patch_dim = int(self._patch_coords.shape[1]) if self.kind != "dense" else self.n

    def _build_patch_coords(self) -> np.ndarray:
        """Flat input coordinates of each output position's receptive field: (positions, C*prod(kernel))."""
        c, *spatial = self.input_shape
        grids = np.meshgrid(*[np.arange(s) for s in self.spatial_out], indexing="ij")
        starts = [g.reshape(-1) * st for g, st in zip(grids, self.stride, strict=True)]  # per dim (P,)
        offs = [o.reshape(-1) for o in np.meshgrid(np.arange(c), *[np.arange(k) for k in self.kernel],
                                                     indexing="ij")]  # channel, kernel offsets, each (C*prod(kernel),)
        flat = offs[0][None, :] * int(np.prod(spatial))
        mult = 1
        for d in reversed(range(len(spatial))):
            flat = flat + (starts[d][:, None] + offs[d + 1][None, :]) * mult
            mult *= spatial[d]
        return flat.astype(np.int64)

    @cached_property
    def gram(self) -> np.ndarray:
        """``W Wᵀ`` of the dense layer's effective rows (n_outputs²), built on first use: a request's Gram
        matrix is then a lookup of its surviving rows instead of a k×k×n product."""
        return self.dense_rows @ self.dense_rows.T

    @cached_property
    def lookup(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Every output's effective row (n_outputs × n) and their Gram matrix, built once (the weights are fixed):
        a request's rows and Gram matrix are then lookups. Dense layers, and convolutions whose two tables fit in
        ``_LOOKUP_BYTES`` (``None`` for larger ones: the rows and Gram matrix are then built per request)."""
        if self.kind == "dense":
            return self.dense_rows, self.gram
        if self.n_outputs * (self.n_outputs + self.n) * 8 > _LOOKUP_BYTES:
            return None
        rows = self.full_matrix()[0]
        return rows, rows @ rows.T

    @cached_property
    def patch_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For a patchify convolution, built once: the kernel rows with C_out zero rows appended (slot ``s`` of a
        patch with fewer rows is padded with row ``C_out + s``), their Gram matrix with an identity on the
        padding rows (a padded patch's Gram matrix is then block diagonal with an identity, invertible), and
        that matrix's diagonal."""
        c, m = self.kernel_rows.shape
        ke = np.vstack([self.kernel_rows, np.zeros((c, m))])
        kk = ke @ ke.T
        kk[c:, c:] = np.eye(c)
        return ke, kk, np.diagonal(kk).copy()

    @cached_property
    def patch_subsets(self) -> PatchSubsets:
        """A patchify convolution's per-channel-set ranks, leverages and projectors, filled as requests meet new
        sets (:mod:`daonet.device.subsets`)."""
        return PatchSubsets(self.kernel_rows, lambda present: _patch_projectors(self, present), _proven_full_rank)

    @cached_property
    def n_positions(self) -> int:
        """Output positions per channel (1 for a dense layer)."""
        return int(np.prod(self.spatial_out)) if self.kind != "dense" else 1

    def patch_energy(self, d: np.ndarray) -> np.ndarray:
        """``‖d_p‖²`` of every patch (convolutions) of a centred input ``d``."""
        dp = d[self._patch_coords]
        return (dp * dp).sum(1)

    def split(self, out_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Output flat index -> (output channel, spatial position)."""
        out_indices = np.asarray(out_indices, dtype=np.int64)
        if self.kind == "dense":
            return out_indices, np.zeros_like(out_indices)
        return out_indices // self.n_positions, out_indices % self.n_positions

    def rows(self, out_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dense effective rows ``A`` (k × n) and offsets ``c`` (k,) for the given outputs."""
        idx = np.asarray(out_indices, dtype=np.int64).reshape(-1)
        if self.kind == "dense":
            return self.dense_rows[idx], self.bias[idx]
        ch, pos = self.split(idx)
        a = np.zeros((idx.size, self.n))
        if idx.size:
            np.put_along_axis(a, self._patch_coords[pos], self.kernel_rows[ch], axis=1)
        return a, self.bias[ch]

    def full_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """All outputs' rows (n_outputs × n) and offsets: the server's complete knowledge of the layer."""
        return self.rows(np.arange(self.n_outputs))

    def blocks(self, out_indices: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Independent systems ``(positions-in-out_indices, rows over the block, block coordinates)``.

        One block for dense layers and overlapping convolutions; one per patch for patchify ones.
        """
        idx = np.asarray(out_indices, dtype=np.int64).reshape(-1)
        if self.kind == "dense":
            return [(np.arange(idx.size), self.dense_rows[idx], np.arange(self.n))]
        ch, pos = self.split(idx)
        if not self.patchify:
            a, _ = self.rows(idx)
            return [(np.arange(idx.size), a, np.arange(self.n))]
        out = []
        order = np.argsort(pos, kind="stable")
        bounds = np.flatnonzero(np.diff(pos[order])) + 1
        for group in np.split(order, bounds) if idx.size else []:
            p = int(pos[group[0]])
            out.append((group, self.kernel_rows[ch[group]], self._patch_coords[p]))
        return out


# -- exact certificate ------------------------------------------------------------------------------
def _row_space_basis(a: np.ndarray, gram: np.ndarray | None = None) -> np.ndarray:
    """Orthonormal basis (rows) of the row space of ``a`` (k x n, k small).

    Fast path: eigen-decomposition of the k x k Gram matrix (O(k²n), ~8x faster than an SVD of ``a`` for
    k=16, n=784: this runs on every request). The Gram matrix squares the condition number, so when ``a``
    is ill-conditioned we fall back to the SVD, which keeps the certificate exact.
    """
    eps = _EPS64
    if a.shape[0] <= a.shape[1]:  # more rows than columns: the k x k Gram is singular, straight to the SVD
        lam, u = np.linalg.eigh(a @ a.T if gram is None else gram)
        lam_max = float(lam[-1]) if lam.size else 0.0
        if lam_max > 0 and float(lam[0]) > lam_max * _WELL_CONDITIONED:  # well conditioned: rows independent
            return (u.T @ a) / np.sqrt(lam)[:, None]
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    tol = s[0] * max(a.shape) * eps if s.size else 0.0
    return vt[: int((s > tol).sum())]


def _system_stats(a: np.ndarray, d: np.ndarray, id_tol: float,
                  gram: np.ndarray | None = None) -> tuple[int, int, np.ndarray, float]:
    """(rank, identifiable, leverages P_jj, ‖P d‖²) of one system, O(k²n); ``gram``: ``a aᵀ`` if known."""
    if a.shape[0] == 0:
        return 0, 0, np.zeros(a.shape[1]), 0.0
    v = _row_space_basis(a, gram)
    if v.shape[0] == a.shape[1]:  # full rank: P is the identity, exactly (no rounding to break ties on)
        return v.shape[0], a.shape[1], np.ones(a.shape[1]), float(d @ d)
    lev = np.einsum("ij,ij->j", v, v)
    proj = v @ d
    return v.shape[0], int(np.count_nonzero(lev >= 1.0 - id_tol)), lev, float(proj @ proj)


def _certificate(system: FirstLayerSystem, indices: np.ndarray, d: np.ndarray, id_tol: float,
                 k_before: int, policy: PrivacyPolicy | None) -> Certificate:
    """The request's certificate: batched (``system.fast``, the default) or the reference, same fields."""
    if system.fast:
        return _certificate_fast(system, indices, d, id_tol, k_before, policy)
    return _certificate_reference(system, indices, d, id_tol, k_before, policy)


def _certificate_reference(system: FirstLayerSystem, indices: np.ndarray, d: np.ndarray, id_tol: float,
                           k_before: int, policy: PrivacyPolicy | None) -> Certificate:
    """The certificate system by system, in a Python loop over patches (what the batched path must equal)."""
    total = float(d @ d)
    rank = ident = 0
    energy, max_lev = 0.0, 0.0
    patch_arrays = None
    if system.kind == "dense" and system.use_gram:  # one system: the surviving rows, Gram matrix looked up
        idx = np.asarray(indices, dtype=np.int64)
        rank, ident, lev, energy = _system_stats(system.dense_rows[idx], d, id_tol, system.gram[idx[:, None], idx])
        max_lev = float(lev.max()) if lev.size else 0.0
    elif system.kind != "dense" and system.patchify:
        blocks = system.blocks(indices)
        npos = system.n_positions
        pk, pr, pi, pe = (np.zeros(npos, dtype=np.int64), np.zeros(npos, dtype=np.int64),
                          np.zeros(npos, dtype=np.int64), np.zeros(npos))
        ch, pos = system.split(indices)
        for members, a, coords in blocks:
            p = int(pos[members[0]])
            r, ni, lev, e = _system_stats(a, d[coords], id_tol)
            dp = d[coords]
            pk[p], pr[p], pi[p] = len(members), r, ni
            pe[p] = e / float(dp @ dp) if float(dp @ dp) > _ENERGY_EPS * max(total, 1.0) else 0.0
            rank, ident, energy = rank + r, ident + ni, energy + e
            max_lev = max(max_lev, float(lev.max()) if lev.size else 0.0)
        pe = np.clip(pe, 0.0, 1.0)
        patch_arrays = PatchStats(pk, pr, pi, pe, system.patch_dim, int(np.argmax(pe)))  # first of the largest
    else:
        for _, a, coords in system.blocks(indices):
            r, ni, lev, e = _system_stats(a, d[coords], id_tol)
            rank, ident, energy = rank + r, ident + ni, energy + e
            max_lev = max(max_lev, float(lev.max()) if lev.size else 0.0)
    return _assemble(system, np.asarray(indices, dtype=np.int64), rank, ident, energy, max_lev, total, k_before,
                     policy, patch_arrays)


# -- the same certificate, batched (no per-output or per-patch Python loop) -------------------------
_FULL_RANK_MARGIN = 1e-10  # AᵀA with tr(AᵀA) tr((AᵀA)⁻¹) below 1e10: rank n under any tolerance the reference uses
# G = a aᵀ with tr(G) tr(G⁻¹) (≥ its condition number) below this: the reference takes its eigen path
# (1 / _WELL_CONDITIONED = 1e8 is the limit) and G⁻¹ is accurate to ~1e-10
_MAX_CONDITION = 1e6


def _inverses(g: np.ndarray) -> np.ndarray | None:
    """Inverses of a stack of symmetric matrices (``None`` if one is exactly singular: the caller falls back)."""
    try:
        return np.linalg.inv(g)
    except np.linalg.LinAlgError:
        return None


def _condition_bound(g: np.ndarray, inv: np.ndarray, n_pad: np.ndarray | int = 0) -> np.ndarray:
    """``tr(G) tr(G⁻¹)`` per matrix, an upper bound on its condition number, or ``inf`` where the computed
    inverse cannot be that of a positive definite ``G`` (some ``(G⁻¹)_ii < 1 / G_ii``: a numerically singular
    ``G`` whose inverse is rounding noise). Padded identity slots (``n_pad`` of them) are left out."""
    m = g.shape[-1]
    diag = np.arange(m)
    gd, vd = g[..., diag, diag], inv[..., diag, diag]
    plausible = (vd * gd >= 1.0 - 1e-9).all(-1)
    bound = (gd.sum(-1) - n_pad) * (vd.sum(-1) - n_pad)
    return np.where(plausible, bound, np.inf)


def _batched_stats(a: np.ndarray, counts: np.ndarray, d: np.ndarray, id_tol: float,
                   gram: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_system_stats` of a stack of systems at once: ``a`` (B, K, m) with ``counts[b]`` real rows (the rest
    zero), ``d`` (B, m); ``gram``: their ``a aᵀ`` if known.

    Returns (rank, identifiable, leverages, energy, resolved). A system is *resolved* here only where the
    outcome provably equals :func:`_system_stats`'s: either ``AᵀA`` is so well conditioned that the rank is
    ``m`` under any tolerance the reference uses (then ``P = I``), or ``k < m`` and ``G = a aᵀ`` is certainly
    conditioned better than the reference's eigen-decomposition threshold (then ``rank = k`` and
    ``P = aᵀ G⁻¹ a``). The bounds are ``λ_min ≥ 1 / tr(G⁻¹)`` and ``λ_max ≤ tr(G)``; the rest (duplicates,
    near-dependent rows) is left unresolved, for the reference.
    """
    n_sys, k_max, m = a.shape
    rank = np.zeros(n_sys, dtype=np.int64)
    ident = np.zeros(n_sys, dtype=np.int64)
    lev = np.zeros((n_sys, m))
    energy = np.zeros(n_sys)
    resolved = counts == 0
    tall = counts >= m
    if tall.any():
        at = a[tall]
        at_a = np.swapaxes(at, 1, 2) @ at
        inv = _inverses(at_a)
        if inv is not None:
            full = _condition_bound(at_a, inv) * _FULL_RANK_MARGIN < 1.0
            done = np.flatnonzero(tall)[full]
            rank[done], ident[done], lev[done] = m, m, 1.0
            energy[done] = (d[done] * d[done]).sum(1)
            resolved[done] = True
    wide = (counts > 0) & (counts < m)
    if wide.any():
        aw = a[wide]
        g = aw @ np.swapaxes(aw, 1, 2) if gram is None else gram[wide]
        pad = np.arange(k_max) >= counts[wide, None]  # padded slots: identity, so G stays invertible
        diag = np.arange(k_max)
        g[:, diag, diag] += pad
        inv = _inverses(g)
        if inv is not None:
            well = _condition_bound(g, inv, pad.sum(1)) < _MAX_CONDITION
            da = aw @ d[wide][:, :, None]  # (B, K, 1): a d
            ginv_a = inv @ aw
            lw = (aw * ginv_a).sum(1)
            done = np.flatnonzero(wide)[well]
            rank[done] = counts[done]
            lev[done] = lw[well]
            ident[done] = (lw[well] >= 1.0 - id_tol).sum(1)
            energy[done] = (da * (inv @ da)).sum((1, 2))[well]
            resolved[done] = True
    return rank, ident, lev, energy, resolved


def _patch_slots(system: FirstLayerSystem, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``present`` (patches, C_out): which output channels survive at each patch -> (counts, channel per slot
    (patches, K); slot ``s`` after the last row holds the padding index ``C_out + s``). Within a patch the rows
    are in channel order, the order of the outputs' indices (as ``blocks()`` gives them)."""
    counts = np.count_nonzero(present, axis=1)
    k_max = int(counts.max()) if counts.size else 0
    order = np.argsort(~present, axis=1, kind="stable")[:, :k_max]
    slots = np.arange(k_max)
    return counts, np.where(slots < counts[:, None], order, slots + present.shape[1])


def _present(system: FirstLayerSystem, indices: np.ndarray) -> np.ndarray:
    """(positions, C_out) flags of the surviving outputs."""
    present = np.zeros((system.n_positions, system.kernel_rows.shape[0]), dtype=bool)
    ch, pos = np.divmod(indices, system.n_positions)
    present[pos, ch] = True
    return present


def _proven_full_rank(at_a: np.ndarray) -> np.ndarray:
    """Which of a stack of ``AᵀA`` are full rank under any tolerance the reference uses (the bound of
    :func:`_patch_projectors`' tall patches)."""
    inv = _inverses(at_a)
    return (_condition_bound(at_a, inv) * _FULL_RANK_MARGIN < 1.0 if inv is not None
            else np.zeros(at_a.shape[0], dtype=bool))


def _patch_projectors(system: FirstLayerSystem, present: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rank, leverages, projector onto the row space) of a stack of patches' channel sets (``present``: (sets,
    C_out) flags), in a fixed few dozen numpy calls: the rows and every Gram matrix are lookups in
    :attr:`FirstLayerSystem.patch_tables`. The same bounds as :func:`_batched_stats` decide (``P = I`` at proven
    full rank, ``P = Aᵀ G⁻¹ A`` at proven rank ``k``); the sets they cannot settle go through the reference's
    basis, one by one. What :class:`~daonet.device.subsets.PatchSubsets` keeps per channel set."""
    counts, chs = _patch_slots(system, present)
    ke, kk, kk_diag = system.patch_tables
    m = system.patch_dim
    n_sys = counts.size
    rank, lev, proj = counts.copy(), np.zeros((n_sys, m)), np.zeros((n_sys, m, m))
    tall = counts >= m
    k_max = chs.shape[1]
    wide_chs = np.where(tall[:, None], np.arange(k_max) + ke.shape[0] // 2, chs)  # tall: all padding here, see below
    g = kk[wide_chs[:, :, None], wide_chs[:, None, :]]
    try:
        inv = np.linalg.inv(g)
    except np.linalg.LinAlgError:  # a wide patch with exactly dependent rows: settle every patch one by one
        inv = None
    if inv is not None:
        aw = ke[wide_chs]
        gd, vd = kk_diag[wide_chs], np.diagonal(inv, axis1=1, axis2=2)
        n_pad = k_max - np.where(tall, 0, counts)
        bound = (gd.sum(1) - n_pad) * (vd.sum(1) - n_pad)
        resolved = (vd * gd >= 1.0 - 1e-9).all(1) & (bound < _MAX_CONDITION)
        ginv_a = inv @ aw
        lev = (aw * ginv_a).sum(1)
        proj = np.swapaxes(aw, 1, 2) @ ginv_a
    else:
        resolved = np.zeros(n_sys, dtype=bool)
    if tall.any():  # k >= m: full rank m, P = I, where AᵀA is well conditioned enough
        done = np.flatnonzero(tall)
        at = ke[chs[done]]
        full = _proven_full_rank(np.swapaxes(at, 1, 2) @ at)
        resolved[done] = full
        done = done[full]
        rank[done], lev[done], proj[done] = m, 1.0, np.eye(m)
    for b in np.flatnonzero(~resolved & (counts > 0)):
        v = _row_space_basis(ke[chs[b, : counts[b]]])
        rank[b] = v.shape[0]
        if rank[b] == m:  # full rank: P is the identity, exactly (as in _system_stats)
            lev[b], proj[b] = 1.0, np.eye(m)
        else:
            lev[b], proj[b] = np.einsum("ij,ij->j", v, v), v.T @ v
    return rank, lev, proj


def _patch_certificate_arrays(system: FirstLayerSystem, indices: np.ndarray, d: np.ndarray,
                              id_tol: float) -> tuple[np.ndarray, ...]:
    """Per-patch (k, rank, identifiable, energy, max leverage) over every position (looked up per channel set)."""
    return system.patch_subsets.stats(_present(system, indices), d[system._patch_coords], id_tol)


def _certificate_fast(system: FirstLayerSystem, indices: np.ndarray, d: np.ndarray, id_tol: float,
                      k_before: int, policy: PrivacyPolicy | None) -> Certificate:
    """:func:`_certificate_reference`'s certificate, batched: one stack of small systems for patchify
    convolutions; for one system (dense, overlapping) a Cholesky of the Gram matrix (or of ``AᵀA`` when
    outputs outnumber inputs) with the conditioning proven by bounds, else the reference's own path."""
    idx = np.asarray(indices, dtype=np.int64)
    total = float(d @ d)
    if system.kind != "dense" and system.patchify:
        return _patch_certificate(system, idx, d, _patch_certificate_arrays(system, idx, d, id_tol), k_before, policy)
    rank, ident, energy, max_lev = _single_system_fast(system, idx, d, id_tol)
    return _assemble(system, idx, rank, ident, energy, max_lev, total, k_before, policy, None)


def _patch_certificate(system: FirstLayerSystem, idx: np.ndarray, d: np.ndarray, arrays: tuple[np.ndarray, ...],
                       k_before: int, policy: PrivacyPolicy | None, dd: np.ndarray | None = None) -> Certificate:
    """The certificate of a patchify layer from its per-patch arrays (:func:`_patch_certificate_arrays`);
    ``dd``: every patch's ``‖d_p‖²`` if known."""
    pk, pr, pi, pe_abs, pmax = arrays
    total = float(d @ d)
    dd = system.patch_energy(d) if dd is None else dd
    pe = _patch_fractions(system, pr, pe_abs, dd, total)
    patches = PatchStats(pk, pr, pi, pe, system.patch_dim, int(np.argmax(pe)))
    return _assemble(system, idx, int(pr.sum()), int(pi.sum()), float(pe_abs.sum()), float(pmax.max()),
                     total, k_before, policy, patches)


def _patch_fractions(system: FirstLayerSystem, pr: np.ndarray, pe_abs: np.ndarray, dd: np.ndarray,
                     total: float) -> np.ndarray:
    """ρ of every patch alone, ``‖P_p d_p‖² / ‖d_p‖²`` in [0, 1] (0 where ``‖d_p‖`` ≈ 0, exactly 1 at full rank)."""
    counted = dd > _ENERGY_EPS * max(total, 1.0)  # the others: 0
    pe = np.divide(pe_abs, dd, out=np.zeros(dd.shape), where=counted)
    pe[counted & (pr == system.patch_dim)] = 1.0  # full rank: P = I, exactly
    return np.clip(pe, 0.0, 1.0, out=pe)


def _patch_policy_ok(policy: PrivacyPolicy, arrays: tuple[np.ndarray, ...], total: float) -> bool:
    """``policy.allows`` of the certificate :func:`_patch_certificate` would build from ``arrays``, without it."""
    energy = float(arrays[3].sum())
    return policy._allows(int(arrays[2].sum()), min(1.0, energy / total) if total > _ENERGY_EPS else 0.0)


def _single_system_fast(system: FirstLayerSystem, idx: np.ndarray, d: np.ndarray,
                        id_tol: float) -> tuple[int, int, float, float]:
    """(rank, identifiable, ‖P d‖², max leverage) of the one system of a dense or overlapping layer."""
    k, n = idx.size, system.n
    if k == 0:
        return 0, 0, 0.0, 0.0
    if k < n:  # the rows and their Gram matrix: lookups where the layer keeps them, else built once here
        split = _component_stats(system, idx, d, id_tol)
        if split is not None:
            return split
        table = system.lookup
        if table is not None:
            a, gram = table[0][idx], table[1][idx[:, None], idx]
        else:
            a = system.rows(idx)[0]
            gram = a @ a.T
        lean = _wide_stats(a, gram, d, id_tol)
        if lean is not None:
            return lean
        r, ni, lv, e = _system_stats(a, d, id_tol, gram if system.use_gram else None)
        return r, ni, e, float(lv.max()) if lv.size else 0.0
    rank, ident, lev, energy, resolved = _batched_stats_tall(system, idx, d)  # more outputs than inputs
    if not resolved[0]:
        a = system.dense_rows[idx] if system.kind == "dense" else system.rows(idx)[0]
        gram = system.gram[idx[:, None], idx] if system.kind == "dense" and system.use_gram else None
        r, ni, lv, e = _system_stats(a, d, id_tol, gram)
        return r, ni, e, float(lv.max()) if lv.size else 0.0
    return int(rank[0]), int(ident[0]), float(energy[0]), float(lev[0].max())


_SLOT_ROWS = 32  # independent groups are packed into stack slots of about this many rows (_component_stats)
_SPLIT_ABOVE = 4e6  # k² n of a system below which one k × k Gram matrix costs less than the split (measured)


def _component_slots(system: FirstLayerSystem, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A 1-D overlapping convolution's surviving outputs (their positions ``pos``) packed into independent
    systems: (order of the outputs by position, slot of each output in that order), or ``None`` when they form
    one system.

    Outputs at positions ``p < p'`` share input values only if ``(p' - p) · stride < kernel``, so a gap of
    positions with no surviving output wider than that cuts the equations into independent groups, whose
    projectors are the blocks of the whole one's (rank, leverages and revealed energy add up). Consecutive
    groups are packed into one slot until it holds about ``_SLOT_ROWS`` rows: a slot is still a run of the
    signal whose equations touch no other slot's inputs, and one stack of a few small systems costs fewer numpy
    calls than one system per group."""
    if pos.size < 2:
        return None
    order = np.argsort(pos, kind="stable")
    cut = np.diff(pos[order]) * system.stride[0] >= system.kernel[0]
    if not cut.any():
        return None
    group = np.concatenate([[0], np.cumsum(cut)])  # group of each output, in position order
    starts = np.flatnonzero(np.concatenate([[True], cut]))  # where each group starts (its rows before it)
    full = starts // _SLOT_ROWS  # non-decreasing; numbered without gaps below
    slot = np.concatenate([[0], np.cumsum(np.diff(full) > 0)])[group]
    if slot[-1] == 0:
        return None  # every group in one slot: the whole system is as small
    return order, slot


def _component_stats(system: FirstLayerSystem, idx: np.ndarray, d: np.ndarray,
                     id_tol: float) -> tuple[int, int, float, float] | None:
    """:func:`_wide_stats` of a 1-D overlapping convolution whose outputs split into independent systems
    (:func:`_component_slots`), as one stack of small Gram matrices instead of one k × k. The proof is the whole
    system's: ``tr(G) tr(G⁻¹)`` summed over the stack (``G`` is block diagonal), so the reference would take
    its eigen path and find rank ``k``. ``None`` where it does not apply (another layer kind, one system, a slot
    with as many equations as unknowns) or cannot settle (the caller then takes the whole system's path)."""
    if system.kind == "dense" or system.patchify or len(system.kernel) != 1 or idx.size**2 * system.n < _SPLIT_ABOVE:
        return None
    ch, pos = system.split(idx)
    packed = _component_slots(system, pos)
    if packed is None:
        return None
    order, slot = packed
    ch, pos = ch[order], pos[order]
    (kernel,), (stride,) = system.kernel, system.stride
    c_in, length = system.input_shape[0], system.input_shape[1]
    n_sys = int(slot[-1]) + 1
    counts = np.bincount(slot, minlength=n_sys)
    begin = np.cumsum(counts) - counts
    first, last = pos[begin], pos[begin + counts - 1]
    width = (last - first) * stride + kernel  # input values each slot's receptive fields cover (per input channel)
    if (counts >= width * c_in).any():
        return None
    k_max, w_max = int(counts.max()), int(width.max())
    row = np.arange(pos.size) - begin[slot]
    cols = ((pos - first[slot]) * stride)[:, None] + np.arange(kernel)  # in the slot's own window
    rows = np.zeros((n_sys, k_max, c_in, w_max))
    rows[slot[:, None, None], row[:, None, None], np.arange(c_in)[None, :, None], cols[:, None, :]] = \
        system.kernel_rows.reshape(-1, c_in, kernel)[ch]
    a = rows.reshape(n_sys, k_max, c_in * w_max)
    inside = np.arange(w_max) < width[:, None, None]
    coords = (first * stride)[:, None, None] + np.arange(c_in)[None, :, None] * length + np.arange(w_max)
    db = np.where(inside, d[np.where(inside, coords, 0)], 0.0).reshape(n_sys, c_in * w_max, 1)
    g = a @ np.swapaxes(a, 1, 2)
    pad = np.arange(k_max) >= counts[:, None]  # padding rows: an identity, so every block stays invertible
    diag = np.arange(k_max)
    g[:, diag, diag] += pad
    inv = _inverses(g)
    if inv is None:
        return None
    gd, vd = g[:, diag, diag][~pad], inv[:, diag, diag][~pad]
    if not ((vd * gd >= 1.0 - 1e-9).all() and float(gd.sum()) * float(vd.sum()) < _MAX_CONDITION):
        return None
    lev = (a * (inv @ a)).sum(1)
    da = a @ db
    return (int(idx.size), int(np.count_nonzero(lev >= 1.0 - id_tol)), float((da * (inv @ da)).sum()),
            float(lev.max()))


def _wide_stats(a: np.ndarray, gram: np.ndarray, d: np.ndarray, id_tol: float) -> tuple[int, int, float, float] | None:
    """:func:`_batched_stats` for one system of k < n rows ``a`` and their Gram matrix, in a dozen numpy calls:
    (rank, identifiable, ‖P d‖², max leverage), or ``None`` where the bound cannot settle it (the reference)."""
    try:
        inv = np.linalg.inv(gram)
    except np.linalg.LinAlgError:
        return None
    gd, vd = np.diagonal(gram), np.diagonal(inv)
    if not ((vd * gd >= 1.0 - 1e-9).all() and float(gd.sum()) * float(vd.sum()) < _MAX_CONDITION):
        return None
    lev = (a * (inv @ a)).sum(0)
    da = a @ d
    return (a.shape[0], int(np.count_nonzero(lev >= 1.0 - id_tol)), float(da @ (inv @ da)),
            float(lev.max()))


def _batched_stats_tall(system: FirstLayerSystem, idx: np.ndarray,
                        d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_batched_stats` for one system with at least as many rows as inputs: only the full-rank case."""
    n = system.n
    if system.kind == "dense":
        a = system.dense_rows[idx]
        at_a = a.T @ a
    else:  # Σ over surviving outputs of w wᵀ at their receptive field: per position, then scattered
        ch, pos = system.split(idx)
        weights = np.zeros((system.n_positions, system.kernel_rows.shape[0]))
        np.add.at(weights, (pos, ch), 1.0)
        per_pos = np.einsum("pc,ci,cj->pij", weights, system.kernel_rows, system.kernel_rows)
        coords = system._patch_coords
        flat = (coords[:, :, None] * n + coords[:, None, :]).reshape(-1)
        at_a = np.bincount(flat, weights=per_pos.reshape(-1), minlength=n * n).reshape(n, n)
    # inputs no surviving output touches (a zero column) are outside the row space; if the system on the others
    # has full column rank, the row space is exactly the span of their unit vectors: P = diag(covered)
    covered = np.flatnonzero(np.diagonal(at_a) > 0)
    sub = at_a if covered.size == n else at_a[np.ix_(covered, covered)]
    inv = _inverses(sub) if covered.size else None
    zero = np.zeros(1, dtype=np.int64)
    if inv is None or not float(_condition_bound(sub, inv)) * _FULL_RANK_MARGIN < 1.0:
        return zero, zero, np.zeros((1, n)), np.zeros(1), np.zeros(1, dtype=bool)
    lev = np.zeros((1, n))
    lev[0, covered] = 1.0
    dc = d[covered]
    return (np.array([covered.size]), np.array([covered.size]), lev, np.array([float(dc @ dc)]),
            np.ones(1, dtype=bool))


def _assemble(system: FirstLayerSystem, idx: np.ndarray, rank: int, ident: int, energy: float, max_lev: float,
              total: float, k_before: int, policy: PrivacyPolicy | None, patches: PatchStats | None) -> Certificate:
    """The :class:`Certificate` of the summed statistics (shared by the reference and the batched path)."""
    rho = min(1.0, energy / total) if total > _ENERGY_EPS else 0.0
    worst_patch = None
    if patches is not None:
        w = patches.worst
        worst_patch = {"index": w, "k": int(patches.k[w]), "rank": int(patches.rank[w]),
                       "identifiable": int(patches.identifiable[w]),
                       "revealed_energy": round(float(patches.revealed_energy[w]), 6), "patch_dim": system.patch_dim}
    return Certificate(
        k=int(idx.size), n=system.n, rank=rank, identifiable=ident, revealed_energy=rho,
        max_leverage=min(1.0, max_lev), k_before_policy=k_before, dropped_by_policy=k_before - int(idx.size),
        policy_ok=policy is None or policy._allows(ident, rho), policy=policy.to_dict() if policy is not None else None,
        patches=patches, worst_patch=worst_patch,
    )


def _centered(system: FirstLayerSystem, x: np.ndarray, mu: np.ndarray | None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size != system.n:
        raise InputError(f"input has {x.size} values; the first layer takes {system.n}")
    if mu is None:
        return x
    cached = system.mu_cache
    if cached is not None and cached[0] is mu:  # the device's own μ, converted once
        return x - cached[1]
    mu64 = np.asarray(mu, dtype=np.float64).reshape(-1)
    if mu64.size != system.n:
        raise InputError(f"public mean has {mu64.size} values; the first layer takes {system.n}")
    if isinstance(mu, np.ndarray) and not mu.flags.writeable:  # only a value nobody can change in place
        system.mu_cache = (mu, mu64)
    return x - mu64


def certify(system: FirstLayerSystem, x: np.ndarray, sent: np.ndarray, mu: np.ndarray | None = None,
            policy: PrivacyPolicy | None = None, id_tol: float | None = None) -> Certificate:
    """Certificate of one request: ``x`` the raw input, ``sent`` the dropped activation vector (flat)."""
    sent = np.asarray(sent).reshape(-1)
    if sent.size != system.n_outputs:
        raise InputError(f"activation vector has {sent.size} values; the first layer has {system.n_outputs}")
    indices = np.flatnonzero(sent)
    tol = id_tol if id_tol is not None else (policy.identifiable_tol if policy else IDENTIFIABLE_TOL)
    return _certificate(system, indices, _centered(system, x, mu), tol, indices.size, policy)


# -- the policy: drop more outputs until the certificate holds ---------------------------------------
def _greedy_keep(system: FirstLayerSystem, indices: np.ndarray, d: np.ndarray, policy: PrivacyPolicy,
                 cert: Certificate) -> np.ndarray:
    """The policy's keep-mask over ``indices``: the fast paths where they apply (``system.fast``), else the
    reference; ``cert`` is the certificate of all of ``indices``."""
    if system.fast and (system.kind == "dense" or not system.patchify):  # patchify: _apply_policy_patches
        return _greedy_keep_single(system, indices, d, policy)
    return _greedy_keep_reference(system, indices, d, policy)


def _greedy_keep_reference(system: FirstLayerSystem, indices: np.ndarray, d: np.ndarray,
                           policy: PrivacyPolicy) -> np.ndarray:
    """Forward selection: add surviving rows in order of least revealed energy; skip any that would break
    the policy. Rows that add nothing new (linearly dependent) are always kept. Exact Gram-Schmidt per block,
    O(k²n) in total. Returns a boolean keep-mask over ``indices``.
    """
    total = float(d @ d)
    budget = None if policy.max_revealed_energy is None else policy.max_revealed_energy * total
    blocks = system.blocks(indices)
    keep = np.zeros(indices.size, dtype=bool)
    state = []  # per block: members, residual rows, row norms, basis list, leverages, block d
    for members, a, coords in blocks:
        db = d[coords]
        state.append({"members": members, "res": a.copy(), "norm": np.linalg.norm(a, axis=1), "basis": [],
                      "lev": np.zeros(a.shape[1]), "d": db, "alive": np.ones(len(members), dtype=bool)})

    def gains(st: dict[str, Any]) -> np.ndarray:
        r = st["res"]
        rn2 = (r * r).sum(1)
        dep = rn2 <= (_DEPENDENT_RTOL * st["norm"]) ** 2
        g = np.where(dep, 0.0, (r @ st["d"]) ** 2 / np.where(dep, 1.0, rn2))
        return np.where(st["alive"], g, np.inf)

    cur = [gains(st) for st in state]
    energy = 0.0
    while True:
        best_b, best_i, best_g = -1, -1, np.inf
        for b, g in enumerate(cur):
            if g.size:
                i = int(np.argmin(g))
                if g[i] < best_g:
                    best_b, best_i, best_g = b, i, float(g[i])
        if best_b < 0:
            break
        st = state[best_b]
        st["alive"][best_i] = False
        r = st["res"][best_i]
        rn = float(np.linalg.norm(r))
        if rn <= _DEPENDENT_RTOL * st["norm"][best_i]:
            keep[st["members"][best_i]] = True  # reveals nothing new
            cur[best_b][best_i] = np.inf
            continue
        q = r / rn
        for qb in st["basis"]:  # re-orthogonalize (twice is enough)
            q = q - (qb @ q) * qb
        qn = float(np.linalg.norm(q))
        if qn < 0.5:  # lost to cancellation: the row is (numerically) dependent
            keep[st["members"][best_i]] = True
            cur[best_b][best_i] = np.inf
            continue
        q = q / qn
        lev = st["lev"] + q * q
        gain = float(q @ st["d"]) ** 2
        ok = not (policy.forbid_identifiable and (lev >= 1.0 - policy.identifiable_tol).any())
        ok = ok and (budget is None or energy + gain <= budget)
        if ok:
            keep[st["members"][best_i]] = True
            energy += gain
            st["lev"] = lev
            st["basis"].append(q)
            st["res"] = st["res"] - np.outer(st["res"] @ q, q)
            cur[best_b] = gains(st)
        else:
            cur[best_b][best_i] = np.inf
    return keep


def _greedy_patch_stack(rows: np.ndarray, counts: np.ndarray, d: np.ndarray,
                        policy: PrivacyPolicy) -> tuple[np.ndarray, float]:
    """The reference greedy on a stack of independent patch systems (no energy bound): keep flags (B, K) and
    the energy the kept rows reveal (only computed with an energy bound; else 0). Every step decides one row in
    every patch still undecided; patches that have nothing left to decide go through the step unchanged (their
    updates are multiplied by 0). The re-orthogonalization against the accepted basis is one batched pass."""
    n_sys, k_max, m = rows.shape
    res = rows.copy()
    dep_below = _DEPENDENT_RTOL**2 * (rows * rows).sum(2)  # (1e-9 ‖a_i‖)²: the reference's dependent-row test
    alive = np.arange(k_max) < counts[:, None]
    keep = np.zeros((n_sys, k_max), dtype=bool)
    basis = np.zeros((n_sys, m + 1, m))  # a spare slot: a step writes (zeros) even where nothing is accepted
    n_basis = np.zeros(n_sys, dtype=np.int64)
    lev = np.zeros((n_sys, m))
    gained = 0.0
    every = np.arange(n_sys)
    col = d[:, :, None]
    limit = 1.0 - policy.identifiable_tol
    energy = policy.max_revealed_energy is not None
    while True:
        rn2 = (res * res).sum(2)
        dep = rn2 <= dep_below
        rd = (res @ col)[:, :, 0]
        g = np.where(dep, 0.0, rd * rd / np.where(dep, 1.0, rn2))
        g[~alive] = np.inf
        best = g.argmin(1)
        live = g[every, best] < np.inf
        if not live.any():
            break
        alive[every[live], best[live]] = False
        r = res[every, best]
        rn = np.sqrt((r * r).sum(1))
        fresh = live & (rn * rn > dep_below[every, best])  # else: reveals nothing new, kept
        q = r / np.where(fresh, rn, 1.0)[:, None]
        if n_basis.any():  # re-orthogonalize (the zero slots change nothing)
            q -= ((basis @ q[:, :, None]) * basis).sum(1)
        qn = np.sqrt((q * q).sum(1))
        fresh &= qn >= 0.5  # else lost to cancellation: numerically dependent, kept
        q /= np.where(fresh, qn, 1.0)[:, None]
        new_lev = lev + q * q
        ok = fresh & ~(policy.forbid_identifiable & (new_lev >= limit).any(1))
        keep[every, best] |= live & (ok | ~fresh)
        if energy:
            gained += float(((q * d).sum(1) ** 2)[ok].sum())
        lev = np.where(ok[:, None], new_lev, lev)
        q *= ok[:, None]
        basis[every, n_basis] = q  # the next free slot, zero until now
        n_basis += ok
        res -= (res @ q[:, :, None]) * q[:, None, :]
        if not alive.any():
            break
        if policy.forbid_identifiable and not alive[n_basis < m - 1].any():
            # every undecided row is in a patch whose accepted rows span m - 1 dimensions: a fresh row would
            # complete the span (every leverage 1) and is refused, a dependent one is kept, and neither
            # changes anything, so their order no longer matters: decide them all at once
            rn = np.sqrt((res * res).sum(2))
            fresh = alive & (rn * rn > dep_below)
            q = res / np.where(fresh, rn, 1.0)[:, :, None]
            q -= (q @ np.swapaxes(basis, 1, 2)) @ basis
            fresh &= np.sqrt((q * q).sum(2)) >= 0.5
            keep |= alive & ~fresh
            break
    return keep, gained


_EXPLICIT_BELOW = 1e-2  # a row whose residual keeps less than this fraction of its norm² gets an explicit residual


def _greedy_keep_single(system: FirstLayerSystem, indices: np.ndarray, d: np.ndarray,
                        policy: PrivacyPolicy) -> np.ndarray:
    """:func:`_greedy_keep_reference` for one system (dense, overlapping convolution), in O(k·kernel) per step
    instead of O(k·n).

    The reference keeps every row's residual ``r_i`` (k x n) and updates all of them after each accepted row.
    Its choices only need ``‖r_i‖²`` and ``r_i · d``, and after accepting ``q`` these change by ``c_i = a_i · q``
    (exact arithmetic: ``r_i · q = a_i · q``), which a convolution's rows give from their receptive fields
    alone. So those two numbers are updated in place, and residual vectors are formed only for the row chosen
    at each step and for rows that come close to the accepted span (where an update by subtraction would lose
    digits): from then on they are kept and updated explicitly, as in the reference, and re-orthogonalized
    against the accepted basis when chosen. A row not close to the span keeps at least a tenth of its norm
    in its residual, so its residual from the stored coefficients is orthogonal to the basis to within
    rounding, and needs no second pass.
    """
    table = system.lookup
    if system.kind == "dense":
        a = system.dense_rows[indices]
    else:
        a = table[0][indices] if table is not None else system.rows(indices)[0]
    k, n = a.shape
    total = float(d @ d)
    budget = None if policy.max_revealed_energy is None else policy.max_revealed_energy * total
    limit = 1.0 - policy.identifiable_tol
    forbid = policy.forbid_identifiable
    keep = np.zeros(k, dtype=bool)
    alive = np.ones(k, dtype=bool)
    dead = np.zeros(k)  # +inf once a row is decided: added to the gains
    norm2 = (a * a).sum(1)
    norm = np.sqrt(norm2)
    dep_below = (_DEPENDENT_RTOL * norm) ** 2
    close_below = _EXPLICIT_BELOW * norm2  # -inf once a row is explicit or decided
    rn2, rd = norm2.copy(), a @ d
    basis = np.zeros((min(k, n), n))
    coef = np.zeros((k, min(k, n)))  # coef[i, s] = a_i · q_s
    n_basis = 0
    explicit = np.zeros(k, dtype=bool)
    res = np.zeros((k, n))  # residuals of the explicit rows
    lev = np.zeros(n)
    energy = 0.0
    along = _row_products(system, indices)
    while True:
        dep = rn2 <= dep_below
        g = rd * rd
        g /= np.where(dep, 1.0, rn2)
        g[dep] = 0.0
        g += dead
        j = int(g.argmin())
        if not g[j] < np.inf:
            break
        alive[j], dead[j], close_below[j] = False, np.inf, -np.inf
        q_basis = basis[:n_basis]
        if explicit[j]:
            r = res[j]
        else:
            r = a[j] - coef[j, :n_basis] @ q_basis if n_basis else a[j]
        rn = math.sqrt(float(r @ r))
        if rn <= _DEPENDENT_RTOL * norm[j]:
            keep[j] = True  # reveals nothing new
            continue
        q = r / rn
        if explicit[j] and n_basis:
            q = q - (q_basis @ q) @ q_basis  # re-orthogonalize
        qn = math.sqrt(float(q @ q))
        if qn < 0.5:  # lost to cancellation: the row is (numerically) dependent
            keep[j] = True
            continue
        q = q / qn
        new_lev = lev + q * q
        qd = float(q @ d)
        if forbid and float(new_lev.max()) >= limit:
            continue
        if budget is not None and energy + qd * qd > budget:
            continue
        keep[j] = True
        energy += qd * qd
        lev = new_lev
        basis[n_basis] = q
        c = along(q)
        coef[:, n_basis] = c
        n_basis += 1
        rn2 -= c * c
        rd -= c * qd
        ex = np.flatnonzero(explicit & alive)
        if ex.size:
            rx = res[ex]
            rx -= np.outer(rx @ q, q)
            res[ex] = rx
            rn2[ex], rd[ex] = (rx * rx).sum(1), rx @ d
        close = np.flatnonzero(rn2 < close_below)
        if close.size:
            rx = a[close] - coef[close, :n_basis] @ basis[:n_basis]
            res[close], explicit[close], close_below[close] = rx, True, -np.inf
            rn2[close], rd[close] = (rx * rx).sum(1), rx @ d
    return keep


def _row_products(system: FirstLayerSystem, indices: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``q -> A q`` for the rows of ``indices``: a dense product, or for a convolution each row's kernel
    against ``q`` on its receptive field (O(k x kernel), not O(k x n))."""
    if system.kind == "dense":
        a = system.dense_rows[indices]
        return lambda q: a @ q
    ch, pos = system.split(indices)
    coords, kernels = system._patch_coords, system.kernel_rows
    return lambda q: (kernels @ q[coords].T)[ch, pos]


def apply_policy(system: FirstLayerSystem, x: np.ndarray, sent: np.ndarray, policy: PrivacyPolicy,
                 mu: np.ndarray | None = None) -> tuple[np.ndarray, Certificate]:
    """Enforce ``policy`` on one request: returns the (possibly further dropped) vector and its certificate.

    If the request already complies nothing changes. Otherwise the least revealing outputs are kept greedily
    and the rest dropped (they are zeroed exactly like a random drop, so the server cannot tell). The final
    certificate is recomputed exactly; if rounding ever leaves it non-compliant, the most input-aligned kept
    rows are dropped one by one until it complies (an empty payload always complies).
    """
    sent = np.asarray(sent, dtype=np.float32).reshape(-1)
    if sent.size != system.n_outputs:
        raise InputError(f"activation vector has {sent.size} values; the first layer has {system.n_outputs}")
    d = _centered(system, x, mu)
    indices = np.flatnonzero(sent)
    k0 = int(indices.size)
    if system.fast and system.kind != "dense" and system.patchify:
        kept, cert = _apply_policy_patches(system, indices, d, policy)
    else:
        cert = _certificate(system, indices, d, policy.identifiable_tol, k0, policy)
        if cert.policy_ok or not policy.active:
            return sent, cert
        kept = indices[_greedy_keep(system, indices, d, policy, cert)]
        cert = _certificate(system, kept, d, policy.identifiable_tol, k0, policy)
    if kept.size == k0 and cert.policy_ok:
        return sent, cert
    while not cert.policy_ok and kept.size:
        a, _ = system.rows(kept)
        align = np.abs(a @ d) / np.maximum(np.linalg.norm(a, axis=1), 1e-300)
        kept = np.delete(kept, int(np.argmax(align)))
        cert = _certificate(system, kept, d, policy.identifiable_tol, k0, policy)
    out = np.zeros_like(sent)
    out[kept] = sent[kept]
    return out, cert


def _apply_policy_patches(system: FirstLayerSystem, indices: np.ndarray, d: np.ndarray,
                          policy: PrivacyPolicy) -> tuple[np.ndarray, Certificate]:
    """The kept outputs and their certificate for a patchify layer. Every patch's numbers are looked up by its
    channel set (:attr:`FirstLayerSystem.patch_subsets`); only the patches that break the policy are laid out
    as rows (:func:`_patch_slots`) and run the greedy selection, and only those are looked up again (the others
    keep their numbers, which are those of the same rows)."""
    k0, tol = int(indices.size), policy.identifiable_tol
    present = _present(system, indices)
    dp = d[system._patch_coords]
    dd = (dp * dp).sum(1)
    arrays: tuple[np.ndarray, ...] = system.patch_subsets.stats(present, dp, tol)
    counts, rank, ident, energy, _ = arrays
    total = float(d @ d)
    if not policy.active or _patch_policy_ok(policy, arrays, total):
        return indices, _patch_certificate(system, indices, d, arrays, k0, policy, dd)
    bad = np.flatnonzero(ident > 0) if policy.forbid_identifiable else np.zeros(0, dtype=np.int64)
    gained = 0.0
    if bad.size:
        k_bad, chs_bad = _patch_slots(system, present[bad])
        sub_keep, gained = _greedy_patch_stack(system.patch_tables[0][chs_bad], k_bad, dp[bad], policy)
        drop_b, drop_s = np.nonzero(~sub_keep & (np.arange(chs_bad.shape[1]) < k_bad[:, None]))
        present[bad[drop_b], chs_bad[drop_b, drop_s]] = False
    budget = policy.max_revealed_energy
    if budget is not None:  # the rows the greedy left alone reveal what the certificate says (P = I where full rank)
        clipped = _patch_fractions(system, rank, energy, dd, total) * dd
        energy_ok = float(clipped.sum() - clipped[bad].sum()) + gained
        if energy_ok > budget * total * (1.0 - 1e-9) - 1e-300:  # the bound could bind: the global order
            keep = _greedy_keep_reference(system, indices, d, policy)  # matters, take the reference
            kept = indices[keep]
            return kept, _certificate(system, kept, d, tol, k0, policy)
    ch, pos = np.divmod(indices, system.n_positions)
    kept = indices[present[pos, ch]]
    if bad.size:
        again = system.patch_subsets.stats(present[bad], dp[bad], tol)
        arrays = tuple(a.copy() for a in arrays)
        for a, new in zip(arrays, again, strict=True):
            a[bad] = new
    return kept, _patch_certificate(system, kept, d, arrays, k0, policy, dd)
