"""Repeated and near-duplicate queries: what a server learns from K captures of the same scene.

A wearable streams near-identical windows all day; a camera app re-captures the same page. Each
capture is sent with the device's mask source, and the server pools the K payloads it receives for
one input: every surviving output is an equation about (nearly) the same input. This module measures
that pooling for any mask source (fresh random, keyed on the exact input, similarity-keyed) and any
capture-noise model, with the white-box attacks of :mod:`daonet.audit.attacks` (minimum-norm least
squares and rMLE over the stacked equations of the K payloads), scored against the clean input.

It is a library: the audit calls :func:`repeated_queries` with its observer and attacker knowledge;
``bench/near_duplicates.py`` calls it on the default models and writes ``docs/results/near-duplicates.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..device.masks import MaskSource, SimilarityKeyedMasks
from ..errors import InputError
from ..measure import make_progress
from . import attacks as atk
from .metrics import evaluate, primary_metric

Observe = Callable[[np.ndarray, MaskSource], np.ndarray]  # inputs (N, ...) + mask source -> received (N, m)


# -- capture-noise models ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Captures:
    """A re-capture model: ``draw(x, K, rng)`` -> ``(K, N, ...)`` captures of the clean inputs ``x``."""

    name: str
    draw: Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def exact_replays() -> Captures:
    """The same bytes sent again (an app retry, a cached frame)."""
    return Captures("exact replays", lambda x, k, rng: np.broadcast_to(x, (k, *x.shape)).copy())


def grey_levels(levels: int = 2) -> Captures:
    """8-bit images in [0, 1] re-captured with ±``levels`` grey levels of uniform integer noise (clipped)."""
    def draw(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        noise = rng.integers(-levels, levels + 1, size=(k, *x.shape)) / 255.0
        return np.clip(np.round((x[None] + noise) * 255.0) / 255.0, 0.0, 1.0).astype(np.float32)
    return Captures(f"±{levels} grey levels", draw)


def gaussian(sigma: float = 0.01) -> Captures:
    """Signals re-captured with i.i.d. Gaussian noise of ``sigma`` (z-normalized signals: 0.01 = 1 %)."""
    def draw(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        return (x[None] + sigma * rng.standard_normal((k, *x.shape))).astype(np.float32)
    return Captures(f"{100 * sigma:g}% Gaussian", draw)


def shifted(max_shift: int = 2, sigma: float = 0.01) -> Captures:
    """Overlapping windows: each capture is the signal shifted by a uniform integer in
    ``[-max_shift, max_shift]`` samples along the last axis (edge-padded: the window slid over the same
    beat), plus Gaussian noise of ``sigma``."""
    def draw(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        s = max_shift
        pad = [(0, 0)] * (x.ndim - 1) + [(s, s)]
        padded = np.pad(x, pad, mode="edge")
        length = x.shape[-1]
        out = np.empty((k, *x.shape), dtype=np.float32)
        shifts = rng.integers(-s, s + 1, size=(k, len(x)))
        for j in range(k):
            for i in range(len(x)):
                start = s + int(shifts[j, i])
                out[j, i] = padded[i, ..., start:start + length]
        return out + np.asarray(sigma * rng.standard_normal(out.shape), np.float32)
    return Captures(f"shift ±{max_shift} samples + {100 * sigma:g}% Gaussian", draw)


# -- results -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RepeatedRow:
    """K captures of each input sent with one mask source and pooled by the server."""

    masks: str
    captures: str
    k: int
    surviving: float  # mean surviving outputs per payload
    surviving_union: float  # mean distinct outputs that survived in any of the K payloads
    identical: float  # fraction of inputs whose K received payloads were all identical
    min_norm: float  # attack metric (SSIM or correlation vs the clean input), mean over inputs
    min_norm_advantage: float  # paired mean over the baseline (class prior)
    rmle: float | None = None
    rmle_advantage: float | None = None


@dataclass
class RepeatedResult:
    """All rows of one measurement, with the references that give them meaning."""

    kind: str
    metric: str
    n_inputs: int
    baseline_name: str
    baseline: float  # metric of the baseline reconstruction (e.g. class prior of the predicted class)
    single_query: dict[str, float]  # clean input, one payload, first mask source: min_norm, rmle
    rows: list[RepeatedRow] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        """One table: rows grouped by capture model, then mask source, then K."""
        m = "SSIM" if self.metric == "ssim" else "corr"
        head = (f"| captures | masks | K | surviving / payload | surviving union | identical payloads | "
                f"min-norm {m} | rMLE {m} | rMLE − prior |\n|---|---|---|---|---|---|---|---|---|\n")
        lines = []
        for r in self.rows:
            rm = "—" if r.rmle is None else f"{r.rmle:.3f}"
            adv = "—" if r.rmle_advantage is None else f"{r.rmle_advantage:+.3f}"
            lines.append(f"| {r.captures} | {r.masks} | {r.k} | {r.surviving:.1f} | {r.surviving_union:.1f} | "
                         f"{r.identical:.2f} | {r.min_norm:.3f} | {rm} | {adv} |")
        refs = ", ".join(f"{k} {v:.3f}" for k, v in self.single_query.items())
        return (head + "\n".join(lines) + f"\n\nReferences ({self.n_inputs} inputs): single query of the clean "
                f"input: {refs}; {self.baseline_name}: {self.baseline:.3f}.\n")


# -- the measurement ---------------------------------------------------------------------------------
def _score(kind: str, metric: str, x: np.ndarray, rec: np.ndarray) -> np.ndarray:
    return evaluate(kind, x, rec.reshape(x.shape))[metric]


def repeated_queries(observe: Observe, know: atk.ServerKnowledge, x: np.ndarray, mu: np.ndarray, kind: str, *,
                     masks: dict[str, Callable[[], MaskSource]], captures: Sequence[Captures],
                     ks: Sequence[int] = (1, 5, 20), baseline: np.ndarray, baseline_name: str = "class prior",
                     rmle_lambda: float | None = None, rmle_steps: int = 200, seed: int = 0,
                     progress: bool = False) -> RepeatedResult:
    """Pool K captures of each clean input ``x`` per mask source and attack the pooled equations.

    ``observe(x, source)`` returns what the server receives (dense dropped vectors, as parsed from the
    real payload bytes). ``masks`` maps a label to a factory of a *fresh* mask source (one source object
    serves all K captures, as on a device). Every mask source sees the same captures (seeded), so rows
    differ only by the masks. ``baseline`` is a reconstruction per input (e.g. the class-conditional mean
    of the predicted class); advantages are paired means over it. ``rmle_lambda=None`` skips rMLE.
    """
    if not masks:
        raise InputError("give at least one mask source")
    if not ks or min(ks) < 1:
        raise InputError(f"K values must be at least 1, got {list(ks)}")
    if len(baseline) != len(x):
        raise InputError(f"baseline has {len(baseline)} reconstructions for {len(x)} inputs")
    metric = primary_metric(kind)
    kmax = max(ks)
    base = _score(kind, metric, x, baseline)
    first = next(iter(masks.values()))()
    h1 = observe(x, first)
    mn1 = atk.min_norm(know, h1, mu)
    single = {"min_norm": float(_score(kind, metric, x, mn1).mean())}
    if rmle_lambda is not None:
        rec = atk.regularized(know, h1, mu, rmle_lambda, steps=rmle_steps, init=mn1)
        single["rmle"] = float(_score(kind, metric, x, rec).mean())
    result = RepeatedResult(kind, metric, len(x), baseline_name, float(base.mean()), single,
                            settings={"ks": list(ks), "rmle_lambda": rmle_lambda, "rmle_steps": rmle_steps,
                                      "seed": seed})
    jobs = _RmleBatch()
    pending: list[tuple[RepeatedRow, np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]] = []
    with make_progress(enabled=progress) as bar:
        task = bar.add_task("repeated queries: payloads and min-norm", total=len(captures) * len(masks), status="")
        for ci, cap in enumerate(captures):
            xs = cap.draw(x, kmax, np.random.default_rng([seed, ci]))
            for label, factory in masks.items():
                source = factory()
                hs = observe_captures(observe, xs, source)  # K, N, m
                everyone = np.arange(len(x))
                mn1 = atk.min_norm(know, hs[0], mu)
                job1 = jobs.add(atk.PooledSums.of(hs[0]), mn1)
                for k in ks:
                    hk = hs[:k]
                    same = np.all(hk == hk[:1], axis=(0, 2))
                    parts = [(job1, everyone, everyone)]  # (job, inputs, their rows in the job)
                    mn = mn1
                    if k > 1 and not same.all():  # K identical payloads pose the one-payload problem: solved once
                        differ = np.flatnonzero(~same)
                        mn = atk.min_norm(know, hk, mu, only=~same)
                        mn[same] = mn1[same]
                        same_idx = np.flatnonzero(same)
                        job = jobs.add(atk.PooledSums.of(hk).take(differ), mn[differ])
                        parts = [(job1, same_idx, same_idx), (job, differ, np.arange(len(differ)))]
                    fields = RepeatedRow(masks=label, captures=cap.name, k=int(k),
                                         surviving=float((hk != 0).sum(2).mean()),
                                         surviving_union=float((hk != 0).any(0).sum(1).mean()),
                                         identical=float(same.mean()), min_norm=0.0, min_norm_advantage=0.0)
                    pending.append((fields, mn, parts))
                bar.update(task, advance=1, status=f"{cap.name}, {label}")
        recs = jobs.solve(know, mu, rmle_lambda, rmle_steps, bar) if rmle_lambda is not None else None
    for fields, mn, parts in pending:
        s_mn = _score(kind, metric, x, mn)
        rm = adv = None
        if recs is not None:
            rec = np.empty((len(x), know.n), np.float32)
            for job, idx, local in parts:
                rec[idx] = recs[job][local]
            s_rm = _score(kind, metric, x, rec)
            rm, adv = float(s_rm.mean()), float((s_rm - base).mean())
        result.rows.append(replace(fields, min_norm=float(s_mn.mean()), min_norm_advantage=float((s_mn - base).mean()),
                                   rmle=rm, rmle_advantage=adv))
    return result


def observe_captures(observe: Observe, xs: np.ndarray, source: MaskSource) -> np.ndarray:
    """What the server receives for K captures ``xs`` (K, N, ...) of N inputs. A replay-safe source
    (``replay_safe``: the same input always gives the same bytes, e.g. keyed masks) is not asked again for a
    capture identical to an earlier one of the same input: its row is the earlier one's, exactly what the device
    would send, so exact replays cost one encode instead of K."""
    if not getattr(source, "replay_safe", False):
        return np.stack([observe(xs[j], source) for j in range(len(xs))])
    h0 = observe(xs[0], source)
    out = np.empty((len(xs), *h0.shape), h0.dtype)
    out[0] = h0
    seen = [{xs[0, i].tobytes(): 0} for i in range(xs.shape[1])]  # per input: capture bytes -> first capture
    for j in range(1, len(xs)):
        first = np.array([seen[i].setdefault(xs[j, i].tobytes(), j) for i in range(xs.shape[1])])
        new, old = np.flatnonzero(first == j), np.flatnonzero(first != j)
        if new.size:
            out[j, new] = observe(xs[j, new], source)
        out[j, old] = out[first[old], old]
    return out


class _RmleBatch:
    """The rMLE problems of every repeated-query row, solved in one batched call (pooled sums make problems with
    different K the same shape; items are independent, so batching changes speed, not results)."""

    def __init__(self) -> None:
        self.sums: list[atk.PooledSums] = []
        self.inits: list[np.ndarray] = []

    def add(self, sums: atk.PooledSums, init: np.ndarray) -> int:
        self.sums.append(sums)
        self.inits.append(np.asarray(init, np.float32).reshape(len(sums), -1))
        return len(self.sums) - 1

    def solve(self, know: atk.ServerKnowledge, mu: np.ndarray, lam: float, steps: int, bar: Any) -> list[np.ndarray]:
        sizes = [len(p) for p in self.sums]
        task = bar.add_task("repeated queries: rMLE", total=sum(sizes) * steps, status=f"{sum(sizes)} problems")
        out = atk.regularized_pooled(know, atk.PooledSums.concat(self.sums), mu, lam, steps=steps,
                                     init=np.concatenate(self.inits), batch=1024,
                                     progress=lambda n: bar.update(task, advance=n))
        return np.split(out, np.cumsum(sizes)[:-1])


# -- the hash's own behaviour ------------------------------------------------------------------------
@dataclass(frozen=True)
class StraddleStats:
    """How often a similarity-keyed mask changes under re-capture, and how often unrelated inputs share it."""

    width: float
    groups: int
    dims: int
    captures: str
    group_straddle: float  # fraction of (input, capture, group) whose cell differs from the clean input's
    mask_changed: float  # fraction of (input, capture) pairs with at least one group in another cell
    groups_seen_k: float  # mean distinct cells per group over the K captures (1: all K share the group's bits)
    unrelated_shared: float  # fraction of groups in the same cell for two different inputs
    same_class_shared: float | None = None  # same, for two different inputs of the same class


def straddle(masks: SimilarityKeyedMasks, x: np.ndarray, cap: Captures, k: int, *, labels: np.ndarray | None = None,
             seed: int = 0) -> StraddleStats:
    """Cell changes of ``k`` captures of each input vs its clean cells, and cell sharing between inputs."""
    rng = np.random.default_rng(seed)
    clean = np.stack([masks.cells(xi) for xi in x])  # N, G, d
    xs = cap.draw(x, k, rng)
    cells = np.stack([[masks.cells(xi) for xi in xk] for xk in xs])  # K, N, G, d
    moved = np.any(cells != clean[None], axis=-1)  # K, N, G
    seen = np.array([[len({c.tobytes() for c in cells[:, i, g]}) for g in
                      range(masks.groups)] for i in range(len(x))])
    perm = rng.permutation(len(x))
    other = perm != np.arange(len(x))
    unrelated = float(np.all(clean[other] == clean[perm][other], axis=-1).mean())
    same_class = None
    if labels is not None:
        pairs = []
        for i in range(len(x)):
            cand = np.flatnonzero((labels == labels[i]) & (np.arange(len(x)) != i))
            if cand.size:
                pairs.append((i, int(rng.choice(cand))))
        if pairs:
            a, b = np.array(pairs).T
            same_class = float(np.all(clean[a] == clean[b], axis=-1).mean())
    return StraddleStats(masks.width, masks.groups, masks.dims, cap.name, float(moved.mean()),
                         float(moved.any(-1).mean()), float(seen.mean()), unrelated, same_class)


# -- what a shared mask gives away ---------------------------------------------------------------------
def _tv(x: Any) -> Any:
    """Smoothed isotropic total variation per image ``(N, C, H, W)`` (rMLE's image prior)."""
    dx = x[..., :, 1:] - x[..., :, :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    return ((dx[..., :-1, :] ** 2 + dy[..., :, :-1] ** 2 + 1e-6) ** 0.5).flatten(1).mean(1)


def _smooth(x: Any) -> Any:
    """Mean squared second difference along the last axis (rMLE's signal prior)."""
    return ((x[..., 2:] - 2 * x[..., 1:-1] + x[..., :-2]) ** 2).flatten(1).mean(1)


def known_mask_rmle(know: atk.ServerKnowledge, h: np.ndarray, keep: np.ndarray, mu: np.ndarray, lam: float, *,
                    steps: int = 200, init: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """rMLE for an attacker that knows each request's keep-mask (an upper bound for masks shared by many
    inputs: a server that pools payloads of one cell learns its kept outputs as the union of their supports).

    On top of rMLE's equations on the surviving outputs it uses what random dropping normally hides: an
    output that was kept but arrived as zero is a genuine ReLU zero, ``a_i·x + c_i <= 0`` (squared hinge).
    ``h`` and ``keep`` are ``(N, m)``.
    """
    import torch

    torch.manual_seed(seed)
    a = torch.from_numpy(know.a.astype(np.float32))
    c = torch.from_numpy(know.c.astype(np.float32))
    hb = torch.from_numpy(np.ascontiguousarray(h, np.float32))
    alive = (hb > 0).float()
    zero = torch.from_numpy(np.asarray(keep, bool)).float() * (1 - alive)
    scale2 = know.value_scale**2
    prior = _tv if know.kind == "image" and len(know.input_shape) == 3 else _smooth
    x0 = init if init is not None else np.broadcast_to(np.asarray(mu, np.float32).reshape(1, -1), (len(h), know.n))
    x = torch.from_numpy(np.array(x0, np.float32).reshape(len(h), -1)).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.02 if know.box is not None else 0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        pre = x @ a.T + c
        eq = ((pre - hb) ** 2 * alive).sum(1) / alive.sum(1).clamp_min(1.0)
        ineq = (torch.relu(pre) ** 2 * zero).sum(1) / alive.sum(1).clamp_min(1.0)
        loss = ((eq + ineq) / scale2 + lam * prior(x.view(-1, *know.input_shape))).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if know.box is not None:
            with torch.no_grad():
                x.clamp_(*know.box)
    return x.detach().numpy()
