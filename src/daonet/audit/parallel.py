"""One audit over several processes: the attacks split by their cost, one checkpoint store, assembled once.

A full audit is a handful of independent attackers (the decoder families, the white-box inversions), each
trained from scratch; on a CPU they run one after another for hours. Here each of ``jobs`` processes runs a
share of them (this process one share, with its progress bars; the others spawned), every finished attack
lands in the same checkpoint folder (the audit's fingerprint ignores which attacks a process runs), and a last
pass in this process reuses all of them, then runs what needs every result at once (the budget curve on the
strongest family, the repeated-query attack, the policy table) and writes one report. Each attacker is
trained exactly as in a one-process audit (same seeds, same budget): only where it runs changes.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..audit_config import ALIASES, AuditConfig
from ..errors import InputError
from .core import (
    AuditResult,
    checkpoint_store,
    curve_choice,
    curve_points,
    prepare_subject,
    public_val_size,
    run_audit,
)

__all__ = ["run_audit_parallel", "split_attacks"]

# relative cost of one attacker on an image data set, from measured full audits (the transposed-convolution
# decoder does ~4x the arithmetic of the MLP one; the baselines see 10 numbers; the inversions are minutes)
COST = {"decoder_conv": 4.0, "decoder_adaptive": 1.2, "decoder_mlp": 1.0, "decoder_prediction": 0.2,
        "decoder_label": 0.2}
OTHER_COST = 0.05


def _balance(items: list[Any], cost: Callable[[Any], float], jobs: int) -> list[tuple[Any, ...]]:
    """``items`` in at most ``jobs`` groups of about equal total cost (longest-processing-time first)."""
    groups: list[list[Any]] = [[] for _ in range(max(1, jobs))]
    load = [0.0] * len(groups)
    for item in sorted(items, key=lambda it: -cost(it)):
        i = load.index(min(load))
        groups[i].append(item)
        load[i] += cost(item)
    return [tuple(g) for g in groups if g]


def split_attacks(attacks: tuple[str, ...], jobs: int) -> list[tuple[str, ...]]:
    """``attacks`` (``repeated`` left out: it needs every result) in ``jobs`` groups of about equal cost,
    costliest first; empty groups are dropped."""
    names = [n for n in dict.fromkeys(ALIASES.get(a, a) for a in attacks) if n != "repeated"]
    return _balance(names, lambda n: COST.get(n, OTHER_COST), jobs)


def _share(cfg: AuditConfig, attacks: tuple[str, ...]) -> AuditConfig:
    return replace(cfg, attacks=attacks, budget_curve=False, policy_thresholds=(), n_examples=0)


def _curve_shares(bundle: str | Path, cfg: AuditConfig, jobs: int) -> list[AuditConfig]:
    """After the attack shares: the budget curve's retrainings (one per public-set size, the strongest
    family's, exactly as the one-process audit picks them) as audits of that family alone, by cost."""
    if not cfg.resolved("budget_curve"):
        return []
    subject = prepare_subject(bundle, cfg, None)
    store = checkpoint_store(subject, cfg)
    assert store is not None
    best_val = {}
    for a in dict.fromkeys(ALIASES.get(a, a) for a in cfg.attacks):
        if a.startswith("decoder_") and a not in ("decoder_prediction", "decoder_label") and \
                (hit := store.load(a)) is not None:
            best_val[a.removeprefix("decoder_")] = float(hit[1]["best_val"])
    if not best_val:
        return []
    family, sizes, add_half = curve_choice(cfg, best_val)
    full_n = len(subject.x_pub) - public_val_size(len(subject.x_pub), cfg.decoder_budget())
    return [replace(cfg, attacks=(f"decoder_{family}",), curve_family=family, curve_sizes=group, budget_curve=True,
                    policy_thresholds=(), n_examples=0)
            for group in _balance(curve_points(full_n, sizes, add_half), float, jobs)]


def _worker(bundle: str, cfg: AuditConfig, threads: int | None, job: int, progress: bool) -> tuple[str, ...]:
    """One share of the attacks in a spawned process (its results go to the checkpoint store); its progress is
    printed as plain lines marked with the job's number (live bars from several processes would overwrite
    each other)."""
    import rich

    from .. import measure

    measure.LINE_PREFIX = f"[job {job}] "
    rich.reconfigure(force_terminal=False)
    if threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(threads)
    run_audit(bundle, cfg, progress=progress, log=lambda line: print(f"[job {job}] {line}", flush=True))
    return cfg.attacks


def run_audit_parallel(bundle: str | Path, cfg: AuditConfig, jobs: int, *, threads: int | None = None,
                       progress: bool = True, log: Callable[[str], None] | None = None) -> AuditResult:
    """:func:`~daonet.audit.core.run_audit` with its attacks spread over ``jobs`` processes.

    Needs ``cfg.checkpoint_dir`` (where the processes leave their results) and a data set the spawned
    processes can load by name (``cfg.dataset``). ``threads`` is each process's torch/BLAS thread count."""
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}")
    if not cfg.checkpoint_dir:
        raise InputError("a parallel audit needs a checkpoint folder (drop --no-resume): its processes leave "
                         "their finished attacks there")
    cfg.validate()
    t0 = time.perf_counter()
    say = log if log is not None else print
    _run_shares([_share(cfg, g) for g in split_attacks(tuple(cfg.attacks), jobs)], bundle, threads, progress, say,
                lambda c: ", ".join(c.attacks))
    _run_shares(_curve_shares(bundle, cfg, jobs), bundle, threads, progress, say,
                lambda c: f"budget curve of {c.attacks[0]} on {', '.join(map(str, c.curve_sizes or ()))} examples")
    result = run_audit(bundle, cfg, progress=progress, log=log)  # reuses every share; repeated queries, report
    # the report's total_s is the last pass; compute_s adds every share's seconds; this is the whole audit's wall
    result.report.timing_s.update(wall_s=round(time.perf_counter() - t0, 2), jobs=float(jobs))
    return result


def _run_shares(shares: list[AuditConfig], bundle: str | Path, threads: int | None, progress: bool,
                say: Callable[[str], None], what: Callable[[AuditConfig], str]) -> None:
    """The first share in this process (with its progress bars), the others in spawned processes."""
    if len(shares) < 2:
        return  # one share is what the final pass does anyway
    for i, c in enumerate(shares):
        say(f"job {i + 1} of {len(shares)}: {what(c)}")
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    with ProcessPoolExecutor(max_workers=len(shares) - 1, mp_context=ctx) as pool:
        futures = [pool.submit(_worker, str(bundle), c, threads, i + 2, progress) for i, c in enumerate(shares[1:])]
        run_audit(bundle, shares[0], progress=progress, log=say)
        for f in futures:
            f.result()  # a failed share raises here, with its traceback
