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

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BundleError, InputError
from ..manifest import IDENTIFIABLE_TOL, PrivacySpec

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import DeviceModel

__all__ = ["Certificate", "PatchStats", "PrivacyPolicy", "FirstLayerSystem", "certify", "apply_policy"]

_DEPENDENT_RTOL = 1e-9  # a row whose residual is below this (relative) adds nothing new
_ENERGY_EPS = 1e-12
_EPS64 = float(np.finfo(np.float64).eps)


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
        if self.forbid_identifiable and cert.identifiable > 0:
            return False
        return self.max_revealed_energy is None or cert.revealed_energy <= self.max_revealed_energy + 1e-9


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


class FirstLayerSystem:
    """The first layer as linear equations over the raw input: ``h_i = relu(a_i · x + c_i)``.

    Built once per device model; ``rows(indices)`` gives the effective rows of any set of outputs.
    Only the first layer's own weights are used (what the device, and the server, know).
    """

    use_gram = True  # dense layers: look up each request's Gram matrix in W Wᵀ (False: the reference k×k×n product)
    mu_cache: tuple[object, np.ndarray] | None = None  # the last μ seen and its float64 copy

    def __init__(self, device: DeviceModel) -> None:
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
        mean_c, std_c = mean.reshape(c), std.reshape(c)
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

    @property
    def n_positions(self) -> int:
        return int(np.prod(self.spatial_out)) if self.kind != "dense" else 1

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
    lam, u = np.linalg.eigh(a @ a.T if gram is None else gram)
    lam_max = float(lam[-1]) if lam.size else 0.0
    if lam_max > 0 and float(lam[0]) > lam_max * 1e-8:  # well conditioned: every row is independent
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
    lev = np.einsum("ij,ij->j", v, v)
    proj = v @ d
    return v.shape[0], int(np.count_nonzero(lev >= 1.0 - id_tol)), lev, float(proj @ proj)


def _certificate(system: FirstLayerSystem, indices: np.ndarray, d: np.ndarray, id_tol: float,
                 k_before: int, policy: PrivacyPolicy | None) -> Certificate:
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
        worst = int(np.argmax(pe))
        patch_arrays = PatchStats(pk, pr, pi, np.clip(pe, 0.0, 1.0), system.patch_dim, worst)
    else:
        for _, a, coords in system.blocks(indices):
            r, ni, lev, e = _system_stats(a, d[coords], id_tol)
            rank, ident, energy = rank + r, ident + ni, energy + e
            max_lev = max(max_lev, float(lev.max()) if lev.size else 0.0)
    rho = min(1.0, energy / total) if total > _ENERGY_EPS else 0.0
    worst_patch = None
    if patch_arrays is not None:
        w = patch_arrays.worst
        worst_patch = {"index": w, "k": int(patch_arrays.k[w]), "rank": int(patch_arrays.rank[w]),
                       "identifiable": int(patch_arrays.identifiable[w]),
                       "revealed_energy": round(float(patch_arrays.revealed_energy[w]), 6),
                       "patch_dim": system.patch_dim}
    cert = Certificate(
        k=int(np.asarray(indices).size), n=system.n, rank=rank, identifiable=ident, revealed_energy=rho,
        max_leverage=min(1.0, max_lev), k_before_policy=k_before,
        dropped_by_policy=k_before - int(np.asarray(indices).size), policy_ok=True,
        policy=policy.to_dict() if policy is not None else None, patches=patch_arrays, worst_patch=worst_patch,
    )
    if policy is not None and not policy.allows(cert):
        cert = replace(cert, policy_ok=False)
    return cert


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
def _greedy_keep(system: FirstLayerSystem, indices: np.ndarray, d: np.ndarray, policy: PrivacyPolicy) -> np.ndarray:
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
    cert = _certificate(system, indices, d, policy.identifiable_tol, k0, policy)
    if cert.policy_ok or not policy.active:
        return sent, cert
    keep = _greedy_keep(system, indices, d, policy)
    kept = indices[keep]
    cert = _certificate(system, kept, d, policy.identifiable_tol, k0, policy)
    while not cert.policy_ok and kept.size:
        a, _ = system.rows(kept)
        align = np.abs(a @ d) / np.maximum(np.linalg.norm(a, axis=1), 1e-300)
        kept = np.delete(kept, int(np.argmax(align)))
        cert = _certificate(system, kept, d, policy.identifiable_tol, k0, policy)
    out = np.zeros_like(sent)
    out[kept] = sent[kept]
    return out, cert
