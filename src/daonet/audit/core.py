"""``run_audit``: attack the payloads a real device runtime makes for held-out test inputs.

Pipeline (everything the server side does goes through the same code a deployment runs):
``DeviceModel.encode_many`` (or the policy path) -> payload bytes -> ``ServerModel.parse`` (wire decode and
validation) -> predictions and attacks. The attacker's public data is a seeded split of the *training* set;
the audited requests come from the *test* set, so the two never overlap. Every learned attacker is trained
from scratch, here, against the exact bundle being audited.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..audit_config import NOT_A_CLAIM, AuditConfig
from ..audit_report import REPORT_SCHEMA_VERSION, AuditReport
from ..bundle import check_pair
from ..data import Dataset, load_dataset
from ..device.block import ldp_clip_steps
from ..device.certificate import PrivacyPolicy, certify
from ..device.masks import LDP_Y_CAP, KeyedMasks, MaskSource, RandomMasks, SimilarityKeyedMasks
from ..device.runtime import DeviceModel
from ..errors import BundleError, DatasetError, InputError
from ..server.model import ServerModel
from ..train import make_progress
from . import attacks as atk
from . import repeated as rep
from .checkpoints import AttackCheckpoints, audit_fingerprint
from .decoders import DecoderBudget, PublicPairs, fit_decoder
from .metrics import evaluate, primary_metric, summarize
from .registry import ALIASES, AttackContext, available_attacks, create_attack

ATTACKS = (*available_attacks(), "repeated")
ATTACK_LABELS = {
    "data_mean": "data mean (baseline)",
    "class_prior": "class-conditional mean of the predicted class (baseline)",
    **{name: create_attack(name).label for name in available_attacks()},
}
logger = logging.getLogger("daonet.audit")


@dataclass
class AuditResult:
    report: AuditReport  # written as audit.json
    examples: dict[str, Any] = field(default_factory=dict)  # arrays for the HTML report


def _split_bundle(bundle: str | Path) -> tuple[Path, Path]:
    bundle = Path(bundle)
    if not bundle.exists():
        raise BundleError(f"bundle {bundle} does not exist; make one with `daonet export RUN_DIR --out {bundle}`")
    if (bundle / "device").is_dir() and (bundle / "server").is_dir():
        return bundle / "device", bundle / "server"
    if bundle.name in ("device", "server") and (bundle.parent / "device").is_dir():
        return bundle.parent / "device", bundle.parent / "server"
    raise BundleError(f"{bundle} is not a bundle directory (it needs device/ and server/); pass the --out "
                      "directory of `daonet export`")


def load_pair(bundle: str | Path) -> tuple[DeviceModel, ServerModel]:
    """Both halves of a bundle, integrity-checked and checked against each other."""
    dev_dir, srv_dir = _split_bundle(bundle)
    device, server = DeviceModel.load(dev_dir), ServerModel.load(srv_dir)
    check_pair(device.manifest, server.manifest)
    return device, server


def check_dataset(device: DeviceModel, server: ServerModel, ds: Dataset) -> None:
    """Refuse a data set the bundle was not made for (shape or number of classes)."""
    if tuple(ds.input_shape) != tuple(device.input_shape):
        raise DatasetError(f"data set {ds.name!r} has inputs shaped {ds.input_shape}, but the bundle's first layer "
                           f"takes {tuple(device.input_shape)}; audit it with the data set it was trained on")
    if server.classes and len(server.classes) != ds.n_classes:
        raise DatasetError(f"data set {ds.name!r} has {ds.n_classes} classes, the bundle predicts "
                           f"{len(server.classes)}; audit it with the data set it was trained on")


def resolve_policy(device: DeviceModel, cfg: AuditConfig) -> PrivacyPolicy | None:
    """The policy the audited device applies, or None for the plain runtime (``encode_many``)."""
    if cfg.max_revealed_energy is not None:
        return PrivacyPolicy(max_revealed_energy=cfg.max_revealed_energy)
    if cfg.policy == "off":
        return None
    manifest_policy = device.policy
    if cfg.policy == "on" or manifest_policy.max_revealed_energy is not None:
        return manifest_policy
    return None


class Observer:
    """Makes what the server receives, through the real device runtime and the real server parser."""

    def __init__(self, device: DeviceModel, server: ServerModel, policy: PrivacyPolicy | None,
                 mu: np.ndarray) -> None:
        self.device, self.server, self.policy, self.mu = device, server, policy, mu

    def payloads(self, x: np.ndarray, masks) -> tuple[list[bytes], list[Any] | None]:
        if self.policy is None:
            return [p.data for p in self.device.encode_many(x, masks)], None
        pairs = self.device.encode_many_certified(x, masks, policy=self.policy)
        return [p.data for p, _ in pairs], [c for _, c in pairs]

    def received(self, data: list[bytes]) -> tuple[np.ndarray, list[Any]]:
        parsed = [self.server.parse(b) for b in data]
        h = np.zeros((len(parsed), self.server.n_outputs), dtype=np.float32)
        for i, p in enumerate(parsed):
            h[i, p.indices] = p.values
        return h, parsed

    def observe(self, x: np.ndarray, masks) -> np.ndarray:
        return self.received(self.payloads(x, masks)[0])[0]

    def predict(self, parsed: list[Any], batch: int = 1000) -> np.ndarray:
        return np.concatenate([self.server.predict_proba(parsed[i:i + batch]) for i in range(0, len(parsed), batch)])


def wire_values(h: np.ndarray, value_dtype: str) -> np.ndarray:
    """What the wire carries for dense dropped vectors: float16 payloads round values (tiny ones to zero)."""
    if value_dtype == "float16":
        return h.astype(np.float16).astype(np.float32)
    return h


def _dist(v: Any) -> dict[str, float]:
    v = np.asarray(v, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "p5": float(np.percentile(v, 5)),
            "median": float(np.median(v)), "p95": float(np.percentile(v, 95)), "max": float(v.max())}


def _plain_dropping(device: DeviceModel, x: np.ndarray, seed: int) -> bool:
    """True when the device's dropping is exactly ``activations * Bernoulli mask`` (no noise, no policy), so
    fresh masks can be drawn on the attacker's accelerator instead of through the runtime every epoch."""
    acts = device.activations(x)
    mask = np.random.default_rng(seed).random(acts.shape) >= device.drop_rate
    return bool(np.array_equal(device.drop(x, mask=mask), np.where(mask, acts, np.float32(0))))


def discrete_gaussian_cdf(noise_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """N_Z(0, s^2) on the runtime's support (``|k| <= LDP_Y_CAP (s + 1)``): the integers and their float64 CDF."""
    s = int(noise_steps)
    k = np.arange(-LDP_Y_CAP * (s + 1), LDP_Y_CAP * (s + 1) + 1, dtype=np.int64)
    w = np.exp(-(k.astype(np.float64) ** 2) / (2.0 * s * s))
    cdf = np.cumsum(w)
    return k, cdf / cdf[-1]


def _ldp_release_draws(device: DeviceModel, x_tr_np: np.ndarray, seed: int,
                       dev: torch.device) -> Callable[[int, int | None], torch.Tensor]:
    """Fresh Gaussian-mechanism releases of the public inputs, one set per epoch, at a fraction of the runtime's
    cost (its exact rejection sampler over the whole public set: about a minute per MNIST epoch through a
    device block). The activations and the clipping on the grid are the runtime's own (computed once when nothing is
    dropped); the keep-mask is a fresh Bernoulli mask as ``RandomMasks`` draws; the noise is N_Z(0, s^2) by
    inversion of its float64 CDF on the runtime's support, the device's distribution to float64 rounding."""
    spec = device.ldp
    assert spec is not None
    acts = device.activations(x_tr_np)
    p, grid, vd = float(device.drop_rate), float(spec.grid or 0), device.value_dtype
    values, cdf = discrete_gaussian_cdf(int(spec.noise_steps or 0))
    values_t, cdf_t = torch.from_numpy(values).to(dev), torch.from_numpy(cdf).to(dev)
    fixed = torch.from_numpy(ldp_clip_steps(acts, np.ones(acts.shape, dtype=bool), spec)).to(dev) if p == 0 else None

    def draw(epoch: int, size: int | None) -> torch.Tensor:
        n = len(acts) if size is None else size
        if fixed is None:
            keep = np.random.default_rng(seed + 100 + epoch).random((n, acts.shape[1])) >= p
            q = torch.from_numpy(ldp_clip_steps(acts[:n], keep, spec)).to(dev)
            kept = torch.from_numpy(keep).to(dev)
        else:
            q, kept = fixed[:n], None
        g = torch.Generator(device=dev).manual_seed(seed + 100 + epoch)
        u = torch.rand(q.shape, generator=g, dtype=torch.float64, device=dev)
        noise = values_t[torch.searchsorted(cdf_t, u, right=True).clamp_(max=len(values) - 1)]
        steps = q + noise if kept is None else torch.where(kept, q + noise, torch.zeros_like(q))
        h = (steps.double() * grid).float()
        return h.half().float() if vd == "float16" else h

    return draw


def build_pairs(device: DeviceModel, server: ServerModel, obs: Observer, policy: PrivacyPolicy | None,
                x_pub: np.ndarray, budget: DecoderBudget, *, seed: int, policy_pools: int,
                torch_device: torch.device) -> PublicPairs:
    """The attacker's training material: its public inputs, fresh dropped vectors every epoch, and a fixed
    held-out split (payloads through the real runtime and server parser) for early stopping."""
    dev = torch_device
    n_val = public_val_size(len(x_pub), budget)
    x_val_np, x_tr_np = x_pub[:n_val], x_pub[n_val:]
    h_val = torch.from_numpy(obs.observe(x_val_np, RandomMasks(seed + 999))).to(dev)
    vd = device.value_dtype
    draw: Callable[[int, int | None], torch.Tensor]
    if policy is None and _plain_dropping(device, x_tr_np[:64], seed):
        acts = torch.from_numpy(device.activations(x_tr_np)).to(dev)  # the runtime chunks large batches
        p = float(device.drop_rate)

        def draw(epoch: int, size: int | None) -> torch.Tensor:
            a = acts if size is None else acts[:size]
            g = torch.Generator(device=dev).manual_seed(seed + 100 + epoch)
            h = a * (torch.rand(a.shape, generator=g, device=dev) >= p) if p > 0 else a
            return h.half().float() if vd == "float16" else h

        how = ("fresh Bernoulli masks every epoch (the distribution of the device's RandomMasks) on the device "
               "runtime's activations")
    elif policy is None and device.ldp is not None:
        draw = _ldp_release_draws(device, x_tr_np, seed, dev)
        how = ("fresh Gaussian-mechanism releases every epoch (the device runtime's activations and clipping on "
               "its grid; fresh Bernoulli masks; N_Z(0, s^2) noise by inversion of its float64 CDF)")
    elif policy is None:
        def draw(epoch: int, size: int | None) -> torch.Tensor:
            xs = x_tr_np if size is None else x_tr_np[:size]
            return torch.from_numpy(wire_values(device.drop(xs, RandomMasks(seed + 100 + epoch)), vd)).to(dev)

        how = "fresh masks every epoch through the device runtime"
    else:  # the policy is per request and slow: pools of policy-filtered payloads, cycled
        pools: dict[int, torch.Tensor] = {}

        def draw(epoch: int, size: int | None) -> torch.Tensor:
            i = epoch % policy_pools
            if i not in pools:
                pools[i] = torch.from_numpy(obs.observe(x_tr_np, RandomMasks(seed + 100 + i))).to(dev)
            return pools[i] if size is None else pools[i][:size]

        how = f"{policy_pools} pools of policy-filtered payloads, cycled"
    rest = copy.deepcopy(server.rest).to(dev).eval()
    out_shape = tuple(device.output_shape)

    @torch.no_grad()
    def probs(h: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.softmax(rest(h[i:i + 8192].reshape(-1, *out_shape)), 1)
                          for i in range(0, len(h), 8192)]) if len(h) else h.new_zeros((0, 1))

    first = draw(0, None)
    nz = first[first > 0]
    scale = float(torch.sqrt((nz ** 2).mean())) if nz.numel() else 1.0
    x_tr = torch.from_numpy(np.ascontiguousarray(x_tr_np.reshape(len(x_tr_np), -1), np.float32)).to(dev)
    x_val = torch.from_numpy(np.ascontiguousarray(x_val_np.reshape(len(x_val_np), -1), np.float32)).to(dev)
    return PublicPairs(x_tr, x_val, h_val, draw, probs, scale if scale > 0 else 1.0, dev, how)


@dataclass
class AuditSubject:
    """What is audited: the bundle's two halves, the data split and the server's public knowledge of the data."""

    bundle: Path
    device: DeviceModel
    server: ServerModel
    dataset: Dataset
    x_test: np.ndarray
    y_test: np.ndarray
    test_idx: np.ndarray
    x_pub: np.ndarray
    y_pub: np.ndarray
    pub_idx: np.ndarray
    mu: np.ndarray  # the public data's mean
    class_means: np.ndarray  # per class, from the public data (the class prior)
    policy: PrivacyPolicy | None
    observer: Observer

    @property
    def kind(self) -> str:
        return self.dataset.kind

    @property
    def metric(self) -> str:
        return primary_metric(self.kind)

    @property
    def n(self) -> int:
        return int(np.prod(self.device.input_shape))

    @property
    def linear(self) -> bool:
        return bool(getattr(self.device, "is_linear", True))


@dataclass
class Observation:
    """What the server received for the audited requests and what it predicted from it."""

    h: np.ndarray  # (N, n_outputs) dense view of the parsed payloads
    parsed: list[Any]
    policy_certs: list[Any] | None
    pred: np.ndarray
    accuracy: float


@dataclass
class AttackRuns:
    """Every attack's reconstruction and budget, and what was reused from an earlier, interrupted run."""

    recs: dict[str, np.ndarray]
    budgets: dict[str, dict[str, Any]]
    skipped: dict[str, str] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    earlier_s: float = 0.0  # compute spent by the processes that finished the reused attacks


@dataclass
class Scores:
    """Per-attack metrics on the audited requests, the best attack and the yardsticks beside it."""

    per_sample: dict[str, dict[str, np.ndarray]]
    results: dict[str, dict[str, Any]]
    best: str | None
    prediction_only: float | None
    label_only: float | None
    leakage: dict[str, Any] | None


def run_audit(bundle: str | Path, cfg: AuditConfig, *, dataset: Dataset | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None) -> AuditResult:
    """Audit one bundle; returns the typed report and the arrays for the HTML examples.

    ``log`` receives one line per phase (default: the ``daonet.audit`` logger, so a library call prints nothing
    unless logging is configured); ``progress`` shows progress bars with time estimates."""
    say: Callable[[str], None] = log if log is not None else logger.info
    cfg.validate()
    check_attacks(cfg)
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    subject = prepare_subject(bundle, cfg, dataset)
    if not cfg.preset.claim:
        say(f"warning: {NOT_A_CLAIM}")
    obs = _timed(timing, "payloads_and_predictions_s", lambda: observe(subject, cfg))
    say(f"audit {subject.device.model_id} ({subject.device.version}) on {subject.dataset.name}, budget {cfg.budget}: "
        f"{len(subject.x_test)} test requests, accuracy {obs.accuracy:.4f}, surviving outputs "
        f"{np.mean([p.nnz for p in obs.parsed]):.1f} of {subject.device.n_outputs}; attackers on {cfg.device()}")
    cert_summary, cert_arr = _timed(timing, "certificates_s", lambda: certificates(subject, obs))
    know = atk.ServerKnowledge.from_device(subject.device, subject.kind,
                                           subject.device.activations(subject.x_pub[:2000])) if subject.linear else None
    ctx = attack_context(subject, obs, know, cfg, progress, say)
    store = checkpoint_store(subject, cfg)
    if store is not None:
        ctx.partial_path = store.partial
    runs = run_attacks(ctx, subject, cfg, store, timing, say)
    scores = score_attacks(subject, runs)
    learned = {k: v for k, v in runs.budgets.items() if k.startswith("decoder_")}
    warnings = [f"{k} hit its epoch cap ({v['max_epochs']}) while still improving: its number is a lower bound on "
                "leakage" for k, v in learned.items() if not v.get("converged", False)]
    curve = saturation(ctx, subject, runs, cfg, store, progress, timing, warnings)
    if not cfg.preset.claim:
        warnings.insert(0, NOT_A_CLAIM)
    for w in warnings:
        say(f"warning: {w}")
    repeated = _timed(timing, "repeated_s", lambda: _repeated(
        cfg, subject.observer, know, subject.x_test[:cfg.resolved("n_repeat")], subject.mu, subject.kind,  # type: ignore
        runs.budgets.get("rmle", {}).get("lambda"), runs.recs["class_prior"][:cfg.resolved("n_repeat")], progress)) \
        if "repeated" in cfg.attacks and subject.linear else None
    policy_cost = _timed(timing, "policy_cost_s", lambda: _policy_cost(
        cfg, subject.device, subject.server, know, subject.x_test, subject.y_test, subject.mu, subject.kind,  # type: ignore
        progress)) if cfg.policy_thresholds and subject.linear else None
    timing["total_s"] = time.perf_counter() - t_start
    earlier_s = runs.earlier_s + (curve.pop("resumed_seconds", 0.0) if curve is not None else 0.0)
    timing["compute_s"] = timing["total_s"] + earlier_s  # incl. attacks finished by earlier processes
    report = assemble_report(subject, cfg, obs, cert_summary, runs, scores, curve, warnings, repeated, policy_cost,
                             timing)
    m = min(cfg.n_examples, len(subject.x_test))
    x = subject.x_test[:m]
    examples = {"x": x, "h": obs.h[:m], "y": subject.y_test[:m], "pred": obs.pred[:m],
                "recs": {k: v[:m].reshape(x.shape) for k, v in runs.recs.items()},
                "cert": cert_arr, "output_shape": tuple(subject.device.output_shape), "kind": subject.kind}
    return AuditResult(report, examples)


def check_attacks(cfg: AuditConfig) -> None:
    """Every attack name of ``cfg`` is registered (attacks register at import, so this lives beside the registry)."""
    known = set(ATTACKS) | set(ALIASES)
    unknown = [a for a in cfg.attacks if a not in known]
    if unknown:
        raise InputError(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACKS)} (or all)")


def _timed(timing: dict[str, float], key: str, stage: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = stage()
    timing[key] = time.perf_counter() - t0
    return out


def prepare_subject(bundle: str | Path, cfg: AuditConfig, dataset: Dataset | None) -> AuditSubject:
    """Load and cross-check the bundle and the data; draw the seeded public (training) and audited (test) splits."""
    device, server = load_pair(bundle)
    ds = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_root)
    check_dataset(device, server, ds)
    rng = np.random.default_rng(cfg.seed)
    test_idx = rng.permutation(len(ds.x_test))[:cfg.resolved("n_test")]
    pub_idx = rng.permutation(len(ds.x_train))[: cfg.resolved("public_size") or len(ds.x_train)]
    x_pub, y_pub = ds.x_train[pub_idx], ds.y_train[pub_idx]
    n = int(np.prod(device.input_shape))
    mu = x_pub.reshape(len(x_pub), -1).mean(0).astype(np.float64)
    class_means = np.stack([x_pub[y_pub == c].reshape(-1, n).mean(0) if (y_pub == c).any() else mu
                            for c in range(ds.n_classes)])
    policy = resolve_policy(device, cfg)
    return AuditSubject(Path(bundle), device, server, ds, ds.x_test[test_idx], ds.y_test[test_idx], test_idx, x_pub,
                        y_pub, pub_idx, mu, class_means, policy, Observer(device, server, policy, mu))


def observe(subject: AuditSubject, cfg: AuditConfig) -> Observation:
    """The audited requests through the real device runtime, the wire and the server's parser and network."""
    data, policy_certs = subject.observer.payloads(subject.x_test, RandomMasks(cfg.seed + 1))
    h, parsed = subject.observer.received(data)
    pred = subject.observer.predict(parsed).argmax(1)
    return Observation(h, parsed, policy_certs, pred, float((pred == subject.y_test).mean()))


def certificates(subject: AuditSubject, obs: Observation) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The per-request algebraic certificate of every audited request (linear first layers only)."""
    if not subject.linear:
        return {"note": "non-linear device block: covered by the audit only (no algebraic certificate)"}, {}
    device, n = subject.device, subject.n
    pairs = list(zip(subject.x_test, obs.h, strict=True))
    certs = [certify(device.system, x, h, device.public_mean.reshape(-1)) for x, h in pairs]
    arr = {key: np.array([getattr(c, key) for c in certs], dtype=np.float64)
           for key in ("k", "rank", "identifiable", "revealed_energy", "max_leverage")}
    arr["revealed_energy_public_mu"] = np.array([certify(device.system, x, h, subject.mu).revealed_energy
                                                 for x, h in pairs])
    summary: dict[str, Any] = {key: _dist(v) for key, v in arr.items()}
    summary["device_mu"] = ("bundle public_mean" if "public_mean" in device.extras else
                            "per-channel normalization mean (the bundle has no public_mean)")
    summary["rank_fraction"] = _dist(arr["rank"] / n)
    summary["requests_with_identifiable"] = int((arr["identifiable"] > 0).sum())
    patches = [c.worst_patch for c in certs if c.worst_patch is not None]
    if certs and len(patches) == len(certs):
        summary["worst_patch_revealed_energy"] = _dist([w["revealed_energy"] for w in patches])
        summary["worst_patch_rank_fraction"] = _dist([w["rank"] / w["patch_dim"] for w in patches])
    if obs.policy_certs is not None:
        summary["dropped_by_policy"] = _dist([c.dropped_by_policy for c in obs.policy_certs])
        summary["policy_ok_all"] = bool(all(c.policy_ok for c in obs.policy_certs))
    return summary, arr


def attack_context(subject: AuditSubject, obs: Observation, know: atk.ServerKnowledge | None, cfg: AuditConfig,
                   progress: bool, log: Callable[[str], None]) -> AttackContext:
    """What the curious server holds, with its training material built on first use (one pipeline for all
    decoder families: the device activations of the public data are computed once)."""
    device, x_pub, tdev = subject.device, subject.x_pub, cfg.device()
    pairs_cache: list[PublicPairs] = []

    def pairs() -> PublicPairs:
        if not pairs_cache:
            pairs_cache.append(build_pairs(device, subject.server, subject.observer, subject.policy, x_pub,
                                           cfg.decoder_budget(), seed=cfg.seed, policy_pools=cfg.policy_pools,
                                           torch_device=tdev))
        return pairs_cache[0]

    rmle_cache: list[tuple[np.ndarray, np.ndarray]] = []

    def rmle_material() -> tuple[np.ndarray, np.ndarray]:
        if not rmle_cache:
            x_val = x_pub[:min(cfg.resolved("rmle_tune_size"), len(x_pub))]
            sent = subject.observer.payloads(x_val, RandomMasks(cfg.seed + 2))[0]  # encoded once
            h_val, parsed_val = subject.observer.received(sent)
            ctx.cache["class_prior_val"] = subject.class_means[subject.observer.predict(parsed_val).argmax(1)]
            rmle_cache.append((h_val, x_val))
        return rmle_cache[0]

    def score(x: np.ndarray, r: np.ndarray) -> float:
        return float(evaluate(subject.kind, x, r.reshape(x.shape))[subject.metric].mean())

    box = tuple(device.value_range) if device.value_range is not None else None
    ctx = AttackContext(kind=subject.kind, metric=subject.metric, input_shape=tuple(device.input_shape),
                        box=box, know=know, mu=subject.mu, class_means=subject.class_means,  # type: ignore[arg-type]
                        x_test=subject.x_test, h_test=obs.h, pred=obs.pred, pairs=pairs, rmle_material=rmle_material,
                        decoder_budget=cfg.decoder_budget(), rmle_steps=cfg.resolved("rmle_steps"), score=score,
                        torch_device=tdev, seed=cfg.seed, progress=progress, log=log)
    return ctx


def checkpoint_store(subject: AuditSubject, cfg: AuditConfig) -> AttackCheckpoints | None:
    """Where this exact audit keeps its finished attacks (None without ``cfg.checkpoint_dir``)."""
    if not cfg.checkpoint_dir:
        return None
    return AttackCheckpoints(cfg.checkpoint_dir, audit_fingerprint(
        version=subject.device.version, dataset=subject.dataset.name, config=asdict(cfg), test_idx=subject.test_idx,
        pub_idx=subject.pub_idx), default=json_default)


def run_attacks(ctx: AttackContext, subject: AuditSubject, cfg: AuditConfig, store: AttackCheckpoints | None,
                timing: dict[str, float], log: Callable[[str], None]) -> AttackRuns:
    """Every single-query attack and baseline, each trained from scratch here (or reused from a checkpoint of
    this exact audit)."""
    n, n_test = subject.n, len(subject.x_test)
    runs = AttackRuns(recs={"data_mean": np.broadcast_to(subject.mu, (n_test, n)).astype(np.float32),
                            "class_prior": subject.class_means[ctx.pred].astype(np.float32)}, budgets={})
    if "repeated" in cfg.attacks and not subject.linear:  # asked for, so say why it did not run
        runs.skipped["repeated"] = ("solves the first layer's equations accumulated over K requests; the device runs "
                                    "a non-linear block")
    for name in dict.fromkeys(ALIASES.get(a, a) for a in cfg.attacks if a != "repeated"):
        spec = create_attack(name)
        if spec.needs_equations and not subject.linear:
            runs.skipped[name] = "needs the first layer's equations; the device runs a non-linear block"
            continue
        t0 = time.perf_counter()
        hit = store.load(name) if store is not None else None
        if hit is not None and hit[0].shape == (n_test, n):
            runs.recs[name], runs.budgets[name] = hit
            runs.resumed.append(name)
            runs.earlier_s += float(runs.budgets[name].get("seconds") or 0.0)  # spent by the process that ran it
            log(f"  {name}: finished earlier, reused from {store.dir}")  # type: ignore[union-attr]
            continue
        outcome = spec.run(ctx)
        runs.recs[name] = outcome.rec.reshape(n_test, n)
        runs.budgets[name] = outcome.budget
        if spec.learned:
            runs.budgets[name].update(cpu=platform.processor() or platform.machine(),
                                      torch_threads=torch.get_num_threads())
        timing[f"{name}_s"] = time.perf_counter() - t0
        runs.earlier_s += float(runs.budgets[name].get("resumed_seconds") or 0.0)  # a decoder resumed mid-training
        if store is not None:
            store.save(name, runs.recs[name], runs.budgets[name])
    return runs


def score_attacks(subject: AuditSubject, runs: AttackRuns) -> Scores:
    """Per-request metrics, each paired with the class prior; the best attack (baselines excluded) and the
    leakage yardstick: the best attack minus the label-only decoder."""
    x, metric = subject.x_test, subject.metric
    per_sample = {name: evaluate(subject.kind, x, r.reshape(x.shape)) for name, r in runs.recs.items()}
    results: dict[str, dict[str, Any]] = {name: {"label": ATTACK_LABELS[name],
                      "metrics": summarize(v, None if name == "class_prior" else per_sample["class_prior"])}
               for name, v in per_sample.items()}
    attacks = [a for a in runs.recs if a not in ("data_mean", "class_prior") and not create_attack(a).baseline]
    best = max(attacks, key=lambda a: results[a]["metrics"][metric]["mean"]) if attacks else None

    def mean(name: str) -> float | None:
        return results[name]["metrics"][metric]["mean"] if name in results else None

    label_only = mean("decoder_label")
    leakage = _leakage(per_sample, best, metric) if best is not None and label_only is not None else None
    return Scores(per_sample, results, best, mean("decoder_prediction"), label_only, leakage)


def saturation(ctx: AttackContext, subject: AuditSubject, runs: AttackRuns, cfg: AuditConfig,
               store: AttackCheckpoints | None, progress: bool, timing: dict[str, float],
               warnings: list[str]) -> dict[str, Any] | None:
    """The attacker-budget curve: would more public data leak more? Appends what it finds to ``warnings``."""
    fits = {k.removeprefix("decoder_"): v for k, v in runs.budgets.items() if k.startswith("decoder_")
            and k not in ("decoder_prediction", "decoder_label")}  # attackers only: baselines are no attack
    if not fits or not cfg.resolved("budget_curve"):
        if cfg.preset.claim and fits:
            warnings.append("the budget curve was not run (--no-budget-curve): whether more public data would leak "
                            "more is unchecked")
        return None
    t0 = time.perf_counter()
    strongest = max(fits, key=lambda f: fits[f]["best_val"])
    family, sizes, add_half = curve_choice(cfg, {f: b["best_val"] for f, b in fits.items()})
    curve = _budget_curve(ctx, family, fits, runs.recs, sizes, subject.x_test, ctx.score, progress, store,
                          add_half=add_half)
    timing["budget_curve_s"] = time.perf_counter() - t0
    if family != strongest:
        warnings.append(f"the budget curve retrains decoder_{family} (--curve-family), not the strongest family on "
                        f"held-out data, decoder_{strongest} ({fits[strongest]['best_val']:.3f} vs "
                        f"{fits[family]['best_val']:.3f} {subject.metric}): its saturation is checked on a weaker "
                        "attacker")
    if curve["last_doubling_gain"] is not None and curve["last_doubling_gain"] > 0.01:
        a, b = (p["public_train"] for p in curve["points"][-2:])
        warnings.append(f"the last step of public data ({a} -> {b}) still gained {curve['last_doubling_gain']:+.3f} "
                        f"{subject.metric} for decoder_{curve['family']}: more public data would likely leak more "
                        "(a lower bound)")
    return curve


def assemble_report(subject: AuditSubject, cfg: AuditConfig, obs: Observation, cert_summary: dict[str, Any],
                    runs: AttackRuns, scores: Scores, curve: dict[str, Any] | None, warnings: list[str],
                    repeated: dict[str, Any] | None, policy_cost: list[dict[str, Any]] | None,
                    timing: dict[str, float]) -> AuditReport:
    """The typed report, validated exactly as a reader of ``audit.json`` validates it."""
    device, metric, best = subject.device, subject.metric, scores.best
    best_mean = scores.results[best]["metrics"][metric]["mean"] if best else None
    raw = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "bundle": {"path": str(subject.bundle), "model_id": device.model_id, "version": device.version,
                   "kind": device.kind, "input_shape": list(device.input_shape), "n_outputs": device.n_outputs,
                   "kernel": list(device.kernel), "stride": list(device.stride), "drop_rate": device.drop_rate,
                   "value_dtype": device.value_dtype, "privacy_manifest": device.policy.to_dict(),
                   "linear_first_layer": subject.linear, "arch": subject.server.manifest.arch.name,
                   "arch_kwargs": subject.server.manifest.arch.kwargs},
        "dataset": subject.dataset.name, "data_kind": subject.kind, "metric": metric,
        "n_test": int(len(subject.x_test)), "n_public": int(len(subject.x_pub)),
        "split": "public = seeded subset of the training set (a held-out part of it early-stops the decoders); "
                 "audited requests = seeded subset of the test set",
        "budget": {"name": cfg.budget, "claim": cfg.preset.claim, "note": None if cfg.preset.claim else NOT_A_CLAIM,
                   "decoder": asdict(cfg.decoder_budget()), "torch_device": str(cfg.device())},
        "policy": subject.policy.to_dict() if subject.policy is not None else None,
        "accuracy": obs.accuracy, "surviving": _dist([p.nnz for p in obs.parsed]), "certificate": cert_summary,
        "attacks": scores.results, "skipped_attacks": runs.skipped, "resumed_attacks": runs.resumed,
        "best_attack": best, "best": best_mean,
        "best_advantage": scores.results[best]["metrics"][metric].get("advantage") if best else None,
        "class_prior": scores.results["class_prior"]["metrics"][metric]["mean"],
        "prediction_only": scores.prediction_only,
        "advantage_over_prediction": (best_mean - scores.prediction_only)
        if best_mean is not None and scores.prediction_only is not None else None,
        "label_only": scores.label_only, "leakage": scores.leakage,
        "data_mean": scores.results["data_mean"]["metrics"][metric]["mean"],
        "all_converged": all(v.get("converged", False) for k, v in runs.budgets.items() if k.startswith("decoder_")),
        "budget_curve": curve, "warnings": warnings, "repeated": repeated, "policy_cost": policy_cost,
        "budgets": runs.budgets, "config": asdict(cfg), "timing_s": {k: round(v, 2) for k, v in timing.items()},
        "torch_threads": torch.get_num_threads(),
    }
    return AuditReport.parse(json.loads(json.dumps(raw, default=json_default)), "the audit's report")


def _leakage(per_sample: dict[str, dict[str, np.ndarray]], best: str, metric: str) -> dict[str, Any]:
    """The yardstick: the best attack minus the label-only decoder on the same requests (paired, with its standard
    error: :func:`summarize` against that floor). The server must learn the class; leakage is what it learns beyond."""
    paired = summarize(per_sample[best], per_sample["decoder_label"])[metric]
    return {"mean": paired["advantage"], "se": paired["advantage_se"], "attack": best, "floor": "decoder_label"}


def public_val_size(n_public: int, budget: DecoderBudget) -> int:
    """How many of the attacker's public examples are held out for early stopping (the rest train)."""
    return max(2, min(budget.val_size, n_public // 10))


def curve_choice(cfg: AuditConfig, best_val: dict[str, float]) -> tuple[str, tuple[int, ...], bool]:
    """The family the budget curve retrains (the strongest attacker family by held-out score, unless
    ``--curve-family`` names one), its public-set sizes, and whether half of the public data is added."""
    family = max(best_val, key=lambda f: best_val[f]) if cfg.curve_family == "auto" else cfg.curve_family
    sizes = cfg.preset.curve_sizes if cfg.curve_sizes is None else cfg.curve_sizes
    return family, tuple(sizes), cfg.curve_sizes is None


def curve_points(full_n: int, sizes: tuple[int, ...], add_half: bool) -> list[int]:
    """The public-set sizes the budget curve retrains on, below the ``full_n`` training examples (the default
    adds half of them as the last doubling); sizes under 20 are skipped."""
    cap = full_n // 2 if add_half else full_n
    return [s for s in sorted({x for x in sizes if x < cap} | ({cap} if add_half else set())) if s >= 20]


def _budget_curve(ctx: AttackContext, family: str, fits: dict[str, dict[str, Any]], recs: dict[str, np.ndarray],
                  sizes: tuple[int, ...], x_test: np.ndarray, score: Any, progress: bool,
                  store: AttackCheckpoints | None, add_half: bool = True) -> dict[str, Any]:
    """Retrain one decoder family (normally the strongest by held-out score) from scratch on smaller public sets.

    ``fits`` are the learned attackers' budgets by family (with their per-epoch held-out scores)."""
    pairs = ctx.pairs()
    full_n = len(pairs.x_train)
    points = []
    resumed_s = 0.0
    for s in curve_points(full_n, sizes, add_half):
        key = f"budget_curve_{family}_{s}"
        point = store.load_point(key) if store is not None else None
        if point is not None:
            resumed_s += float(point.get("seconds") or 0.0)
        else:
            fit = fit_decoder(family, pairs, kind=ctx.kind, input_shape=ctx.input_shape, box=ctx.box,
                              budget=ctx.decoder_budget, n_train=s, seed=ctx.seed, progress=progress,
                              label=f"budget curve: decoder {family} on {s} public examples",
                              resume=store.partial(key) if store is not None else None)
            point = {"public_train": s, "test": score(x_test, fit.predict(ctx.h_test)),
                     "best_val": fit.info["best_val"], "epochs_run": fit.info["epochs_run"],
                     "converged": fit.info["converged"], "seconds": fit.info["seconds"]}
            resumed_s += float(fit.info.get("resumed_seconds") or 0.0)
            if store is not None:
                store.save_point(key, point)
        points.append(point)
    full = fits[family]
    points.append({"public_train": full_n, "test": score(x_test, recs[f"decoder_{family}"]),
                   "best_val": full["best_val"], "epochs_run": full["epochs_run"],
                   "converged": full["converged"], "seconds": full["seconds"]})
    gain = points[-1]["test"] - points[-2]["test"] if len(points) >= 2 else None
    return {"family": family, "points": points, "last_doubling_gain": gain, "resumed_seconds": resumed_s,
            "epochs": {f: b["val_metric_per_epoch"] for f, b in fits.items()}}


def _repeated(cfg: AuditConfig, obs: Observer, know: atk.ServerKnowledge, x: np.ndarray, mu: np.ndarray, kind: str,
              lam: float | None, baseline: np.ndarray, progress: bool = False) -> dict[str, Any]:
    """K captures of the same input pooled by the server: exact replays and near-duplicates (noisy re-captures,
    and shifted windows for signals), sent with fresh random, keyed and similarity-keyed masks."""
    key = hashlib.sha256(f"daonet-audit-device-key-{cfg.seed}".encode()).digest()  # simulated; never sent
    version = obs.device.version
    masks: dict[str, Callable[[], MaskSource]] = {
        "fresh random": lambda: RandomMasks(cfg.seed + 1000),
        "keyed": lambda: KeyedMasks(key=key, model_version=version),
        "similarity-keyed": lambda: SimilarityKeyedMasks(key=key, model_version=version),
    }
    if obs.device.ldp is not None:  # the runtime refuses it: shared noise makes near-duplicate differences exact
        del masks["similarity-keyed"]
    captures = [rep.exact_replays(), rep.grey_levels(2)] if kind == "image" else \
        [rep.exact_replays(), rep.gaussian(0.01), rep.shifted(2, 0.01)]
    res = rep.repeated_queries(obs.observe, know, x, mu, kind, masks=masks, captures=captures,
                               ks=tuple(sorted(set(cfg.repeats))), baseline=baseline, rmle_lambda=lam,
                               rmle_steps=cfg.resolved("rmle_steps"), seed=cfg.seed + 7, progress=progress)
    return res.to_dict()


def _policy_cost(cfg: AuditConfig, device: DeviceModel, server: ServerModel, know: atk.ServerKnowledge,
                 x: np.ndarray, y: np.ndarray, mu: np.ndarray, kind: str, progress: bool) -> list[dict[str, Any]]:
    """Accuracy and leakage with the device policy at several thresholds (same random masks for all)."""
    metric = primary_metric(kind)
    rows = []
    thresholds: list[float | None] = [None, *cfg.policy_thresholds]
    with make_progress() as bar:
        task = bar.add_task("policy thresholds", total=len(thresholds), status="", visible=progress)
        for t in thresholds:
            pol = PrivacyPolicy(max_revealed_energy=t, forbid_identifiable=t is not None)
            obs = Observer(device, server, pol if t is not None else None, mu)
            data, certs = obs.payloads(x, RandomMasks(cfg.seed + 1))
            h, parsed = obs.received(data)
            acc = float((obs.predict(parsed).argmax(1) == y).mean())
            if certs is None:
                certs = [certify(device.system, xi, hi, device.public_mean) for xi, hi in zip(x, h, strict=True)]
            rec = atk.min_norm(know, h, mu)
            rows.append({
                "max_revealed_energy": t, "accuracy": acc,
                "surviving": float(np.mean([p.nnz for p in parsed])),
                "dropped_by_policy": float(np.mean([c.dropped_by_policy for c in certs])),
                "revealed_energy": float(np.mean([c.revealed_energy for c in certs])),
                "policy_ok_all": bool(all(c.policy_ok for c in certs)) if t is not None else None,
                f"min_norm_{metric}": float(evaluate(kind, x, rec.reshape(x.shape))[metric].mean()),
            })
            bar.update(task, advance=1, status=f"threshold {t}")
    return rows


def write_report(result: AuditResult, out: str | Path) -> tuple[Path, Path]:
    """Write ``audit.json`` and a self-contained ``report.html`` into ``out``."""
    from .report import render_audit_html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    js = result.report.write(out / "audit.json")
    html = out / "report.html"
    html.write_text(render_audit_html(result.report, result.examples))
    if result.examples:
        save_examples(result.examples, out / "examples.npz")
    return js, html


def save_examples(ex: dict[str, Any], path: Path) -> None:
    """The example arrays behind the HTML grid (so a frontier page can be redrawn from cached audits)."""
    flat = {"x": ex["x"], "h": ex["h"], "y": ex["y"], "pred": ex["pred"], "kind": np.array(ex["kind"]),
            "output_shape": np.array(ex["output_shape"])}
    flat.update({f"rec_{k}": v for k, v in ex["recs"].items()})
    flat.update({f"cert_{k}": v for k, v in ex["cert"].items()})
    np.savez_compressed(path, **flat)


def load_examples(path: Path) -> dict[str, Any]:
    with np.load(path) as z:
        ex: dict[str, Any] = {"x": z["x"], "h": z["h"], "y": z["y"], "pred": z["pred"], "kind": str(z["kind"]),
                              "output_shape": tuple(z["output_shape"].tolist())}
        ex["recs"] = {k[4:]: z[k] for k in z.files if k.startswith("rec_")}
        ex["cert"] = {k[5:]: z[k] for k in z.files if k.startswith("cert_")}
    return ex


def json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
