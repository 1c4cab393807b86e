"""What a patchify layer's certificate needs of each patch, per set of surviving channels, computed once.

In a patchify convolution (stride >= kernel) every patch is its own small system, and all patches share the
kernel rows: a patch's rows are the kernel rows of the channels that survive there. Its rank, its leverages and
the projector ``P`` onto its row space therefore depend only on *which* channels survive, not on the input (the
input enters only through ``‖P d_p‖²``). Requests keep meeting the same channel sets (a random mask over a few
dozen channels, a handful of survivors per patch), so each set is factorised once (the new sets of a request
together, in one batch) and every later patch with that set is a lookup: a request's patch statistics then cost
a fixed dozen numpy calls, whatever the mix of wide, tall, well- or ill-conditioned patches.

The table is bounded (:data:`MAX_BYTES`); when it is full it starts again empty. It holds only functions of the
layer's public weights and of channel sets, and never leaves the device.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["PatchSubsets", "MAX_BYTES"]

MAX_BYTES = 16 * 2**20  # projectors kept per layer (a 4-value ECG patch: 128 bytes each; a 4x4 image patch: 2 KB)


class PatchSubsets:
    """Rank, leverages and row-space projector of every channel set met so far, in growing arrays indexed by a
    dict from the set's packed bits. ``factorise(present)`` gives (rank, leverages, projectors) of a stack of
    channel sets ((sets, channels) flags), with the reference's integers."""

    def __init__(self, n_channels: int, m: int,
                 factorise: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        self.n_channels, self.m = int(n_channels), int(m)
        self._factorise = factorise
        self._capacity = max(1, MAX_BYTES // max(1, 8 * self.m * (self.m + 1)))
        self._reset()

    def _reset(self) -> None:
        self.index: dict[bytes, int] = {}
        size = min(self._capacity, 256)
        self.rank = np.zeros(size, dtype=np.int64)
        self.lev = np.zeros((size, self.m))
        self.proj = np.zeros((size, self.m, self.m))
        self.size = 0

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
            new = {key: p for p, key in enumerate(keys)}
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
        ids = self.ids(present)
        lev = self.lev[ids]
        proj_d = (self.proj[ids] @ dp[:, :, None])[:, :, 0]
        energy = (proj_d * dp).sum(1)
        counts = np.count_nonzero(present, axis=1)
        ident = np.count_nonzero(lev >= 1.0 - id_tol, axis=1)
        return counts, self.rank[ids], ident, energy, lev.max(axis=1) if self.m else np.zeros(ids.size)
