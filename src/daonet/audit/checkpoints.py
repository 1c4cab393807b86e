"""Resumable audits: every finished attack (and budget-curve point) is saved, and a rerun reuses it.

A full-budget audit trains each learned attacker to convergence; on a CPU that is an hour or two, and a
laptop lid, a CI timeout or a lost SSH session should not throw finished attackers away. Results are kept
under ``DIR/<fingerprint>/``; the fingerprint covers the bundle's content version, the data set, the exact
requests and public examples, and every audit setting, so a rerun only ever reuses results of the *same*
audit (a changed bundle, data or budget starts afresh in another folder). Files are written atomically.
A learned attacker that is still training also saves its state there (``<name>.partial.pt``, at most once a
minute), so even an interrupted decoder continues from its last saved epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AttackCheckpoints", "atomic_write", "audit_fingerprint"]

IGNORED = ("checkpoint_dir", "n_examples", "attacks", "budget_curve", "curve_sizes", "curve_family", "repeats",
           "n_repeat", "policy_thresholds", "torch_device")


def audit_fingerprint(*, version: str, dataset: str, config: dict[str, Any], test_idx: np.ndarray,
                      pub_idx: np.ndarray) -> str:
    """A digest of everything that determines each attack's result. Settings that only choose *which* parts
    run (the attack list, the budget curve, repeated queries, policy tables, examples) or where they run are
    left out, so an audit split over several processes (e.g. one per decoder family) shares its results."""
    cfg = {k: v for k, v in config.items() if k not in IGNORED}
    h = hashlib.sha256(json.dumps({"version": version, "dataset": dataset, "config": cfg}, sort_keys=True,
                                  default=str).encode())
    h.update(np.ascontiguousarray(test_idx, np.int64).tobytes())
    h.update(np.ascontiguousarray(pub_idx, np.int64).tobytes())
    return h.hexdigest()[:20]


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` then rename over ``path``: a crash mid-write leaves the previous file, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


class AttackCheckpoints:
    """Finished attack outcomes of one audit: ``rec`` arrays (``.npy``) and budgets (``.json``)."""

    def __init__(self, root: str | Path, fingerprint: str, *, default: Callable[[Any], Any] = str) -> None:
        self.dir = Path(root) / fingerprint
        self._default = default

    def partial(self, name: str) -> Path:
        """Where a learned attacker saves its training state while it trains (removed once it finished)."""
        return self.dir / f"{name}.partial.pt"

    def _drop_partial(self, name: str) -> None:
        self.partial(name).unlink(missing_ok=True)

    def save(self, name: str, rec: np.ndarray, budget: dict[str, Any]) -> None:
        def write_rec(path: Path) -> None:
            with path.open("wb") as f:  # a file object: np.save would append ".npy" to a ".tmp" name
                np.save(f, rec)

        atomic_write(self.dir / f"{name}.npy", write_rec)
        atomic_write(self.dir / f"{name}.json",
                     lambda p: p.write_text(json.dumps(budget, default=self._default)))  # the .json marks it done
        self._drop_partial(name)

    def load(self, name: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        budget = self.load_point(name)
        rec_path = self.dir / f"{name}.npy"
        if budget is None or not rec_path.exists():
            return None
        try:
            return np.load(rec_path), budget
        except (OSError, ValueError):  # a damaged file: run the attack again
            return None

    def save_point(self, name: str, point: dict[str, Any]) -> None:
        atomic_write(self.dir / f"{name}.json", lambda p: p.write_text(json.dumps(point, default=self._default)))
        self._drop_partial(name)

    def load_point(self, name: str) -> dict[str, Any] | None:
        path = self.dir / f"{name}.json"
        try:
            return json.loads(path.read_text()) if path.exists() else None
        except (OSError, ValueError):
            return None
