"""What a patchify layer's certificate needs of each patch, per set of surviving channels, computed once.

In a patchify convolution (stride >= kernel) every patch is its own small system, and all patches share the
kernel rows: a patch's rows are the kernel rows of the channels that survive there. Its rank, its leverages and
the projector ``P`` onto its row space therefore depend only on *which* channels survive, not on the input (the
input enters only through ``‖P d_p‖²``). Requests keep meeting the same channel sets (a random mask over a few
dozen channels, a handful of survivors per patch), so each set is factorised once (the new sets of a request
together, in one batch) and every later patch with that set is a lookup: a request's patch statistics then cost
a fixed dozen numpy calls, whatever the mix of wide, tall, well- or ill-conditioned patches.

Where they fit in half the bound, every set smaller than the patch (the sets a random mask makes most often,
and the ones the policy leaves) is factorised when the table is made, smallest first, so most requests are
lookups from the first one. The table is bounded (:data:`MAX_BYTES`); when it is full it drops what requests
added and keeps those. It holds only functions of the layer's public weights and of channel sets, and never
leaves the device.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

__all__ = ["PatchSubsets", "MAX_BYTES"]

MAX_BYTES = 16 * 2**20  # projectors kept per layer (a 4-value ECG patch: 128 bytes each; a 4x4 image patch: 2 KB)
_PREFILL_CHUNK = 4096  # sets factorised per batch when the table is made (bounds the padded stacks' memory)


class PatchSubsets:
    """Rank, leverages and row-space projector of every channel set met so far, in growing arrays indexed by a
    dict from the set's packed bits. ``factorise(present)`` gives (rank, leverages, projectors) of a stack of
    channel sets ((sets, channels) flags), with the reference's integers; ``full_rank(AᵀA)`` says of a stack of
    ``AᵀA`` which are proven full rank under the reference's tolerance (then ``P = I``, no table entry)."""

    def __init__(self, kernel_rows: np.ndarray,
                 factorise: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
                 full_rank: Callable[[np.ndarray], np.ndarray]) -> None:
        self.n_channels, self.m = kernel_rows.shape
        self._factorise, self._full_rank = factorise, full_rank
        self._outer = np.einsum("ci,cj->cij", kernel_rows, kernel_rows).reshape(self.n_channels, -1)
        self._capacity = max(1, MAX_BYTES // max(1, 8 * self.m * (self.m + 1)))
        self.index: dict[bytes, int] = {}
        self.rank = np.zeros(256, dtype=np.int64)
        self.lev = np.zeros((256, self.m))
        self.proj = np.zeros((256, self.m, self.m))
        self.size = 0
        self._prefill()
        self._base_index, self._base_size = dict(self.index), self.size

    def _prefill(self) -> None:
        """Every set of fewer than ``m`` channels, smallest first, as long as all sets of a size fit in half the
        bound (sets of ``m`` or more channels are full rank or nearly: the policy cuts them to smaller ones)."""
        sizes, total = [], 0
        for k in range(min(self.m, self.n_channels + 1)):
            total += math.comb(self.n_channels, k)
            if total > self._capacity // 2:
                break
            sizes.append(k)
        sets = itertools.chain.from_iterable(itertools.combinations(range(self.n_channels), k) for k in sizes)
        while chunk := list(itertools.islice(sets, _PREFILL_CHUNK)):
            present = np.zeros((len(chunk), self.n_channels), dtype=bool)
            for row, chs in enumerate(chunk):
                present[row, list(chs)] = True
            self.ids(present)

    def _reset(self) -> None:
        """Drop what requests added; keep the prefilled sets."""
        self.index = dict(self._base_index)
        self.size = self._base_size

    def __len__(self) -> int:
        return self.size

    def ids(self, present: np.ndarray) -> np.ndarray:
        """Row of every patch's channel set (``present``: (patches, channels) flags), factorising new sets."""
        packed = np.packbits(present, axis=1, bitorder="little")
        width = packed.shape[1]
        raw = packed.tobytes()
        get = self.index.get
        keys = [raw[i:i + width] for i in range(0, len(raw), width)]
        ids = [get(key, -1) for key in keys]
        if -1 in ids:
            ids = self._add(keys, ids, present)
        return np.asarray(ids, dtype=np.int64)

    def _add(self, keys: list[bytes], ids: list[int], present: np.ndarray) -> list[int]:
        """Factorise the channel sets not in the table (each once, however many patches share it)."""
        new = {key: p for p, (key, i) in enumerate(zip(keys, ids, strict=True)) if i < 0}
        if self.size + len(new) > self._capacity:  # full: start again (only what this request needs)
            self._reset()
            new = {key: p for p, key in enumerate(keys) if key not in self.index}
        need = self.size + len(new)
        if need > self.rank.size:  # one request may need more than the bound: it is kept until the next reset
            grow = max(min(self._capacity, 2 * self.rank.size), need)
            self.rank = np.resize(self.rank, grow)
            self.lev = np.resize(self.lev, (grow, self.m))
            self.proj = np.resize(self.proj, (grow, self.m, self.m))
        rows = np.fromiter(new.values(), dtype=np.int64, count=len(new))
        rank, lev, proj = self._factorise(present[rows])
        s, e = self.size, need
        self.rank[s:e], self.lev[s:e], self.proj[s:e] = rank, lev, proj
        self.index.update(zip(new, range(s, e), strict=True))
        self.size = e
        get = self.index.__getitem__
        return [get(key) for key in keys]

    def stats(self, present: np.ndarray, dp: np.ndarray,
              id_tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per patch (k, rank, identifiable, ``‖P_p d_p‖²``, max leverage); ``dp``: the patches' centred inputs."""
        counts = np.count_nonzero(present, axis=1)
        n, m = counts.size, self.m
        full = counts >= m  # as many rows as pixels or more: full rank m, P = I, where proven (no table entry)
        if full.any():
            tall = np.flatnonzero(full)
            at_a = (present[tall].astype(np.float64) @ self._outer).reshape(-1, m, m)
            full[tall] = self._full_rank(at_a)
        rank = np.full(n, m)
        lev, energy = np.ones((n, m)), (dp * dp).sum(1)
        if not full.all():
            rest = np.flatnonzero(~full)
            ids = self.ids(present[rest])
            lev[rest] = self.lev[ids]
            proj_d = (self.proj[ids] @ dp[rest, :, None])[:, :, 0]
            energy[rest] = (proj_d * dp[rest]).sum(1)
            rank[rest] = self.rank[ids]
        ident = np.count_nonzero(lev >= 1.0 - id_tol, axis=1)
        return counts, rank, ident, energy, lev.max(axis=1) if m else np.zeros(n)
