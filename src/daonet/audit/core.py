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
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..audit_summary import AuditSummary
from ..bundle import check_pair
from ..data import Dataset, load_dataset
from ..device.certificate import PrivacyPolicy, certify
from ..device.masks import KeyedMasks, MaskSource, RandomMasks, SimilarityKeyedMasks
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

BUDGET_NAMES = ("quick", "full")


@dataclass(frozen=True)
class BudgetPreset:
    """How hard every attacker tries. ``quick`` is for tests and CI (seconds; not a privacy claim);
    ``full`` is what privacy numbers are quoted from (all public data, decoders to convergence)."""

    n_test: int
    public_size: int  # 0: the whole training set
    decoder: DecoderBudget
    rmle_steps: int
    rmle_tune_size: int
    curve_sizes: tuple[int, ...]  # public-set sizes of the budget curve (plus half and all of it)
    n_repeat: int
    claim: bool


BUDGETS: dict[str, BudgetPreset] = {
    "quick": BudgetPreset(n_test=100, public_size=2000,
                          decoder=DecoderBudget(max_epochs=8, patience=2, hidden=256, batch=128, val_size=300),
                          rmle_steps=60, rmle_tune_size=32, curve_sizes=(), n_repeat=12, claim=False),
    "full": BudgetPreset(n_test=1000, public_size=0, decoder=DecoderBudget(), rmle_steps=400, rmle_tune_size=128,
                         curve_sizes=(2500, 10000), n_repeat=100, claim=True),
}
DEFAULT_ATTACKS = ("min_norm", "rmle", "rmle_prior", "rmle_naive", "decoder_mlp", "decoder_conv", "decoder_adaptive",
                   "decoder_prediction", "decoder_label", "repeated")
ATTACKS = (*available_attacks(), "repeated")
ATTACK_LABELS = {
    "data_mean": "data mean (baseline)",
    "class_prior": "class-conditional mean of the predicted class (baseline)",
    **{name: create_attack(name).label for name in available_attacks()},
}
NOT_A_CLAIM = "quick budget: attackers stopped early for speed; a lower bound on leakage, NOT a privacy claim"


@dataclass
class AuditConfig:
    """What is audited and how hard the attackers try (all recorded in the report).

    ``budget`` picks every attacker's budget (:data:`BUDGETS`); any field left ``None`` takes the budget's
    value, a field that is set overrides it (and is recorded).
    """

    dataset: str
    budget: str = "full"
    n_test: int | None = None
    public_size: int | None = None  # 0: the whole training set
    decoder_epochs: int | None = None  # hard cap; decoders stop earlier when the held-out metric stops improving
    decoder_patience: int | None = None
    decoder_hidden: int | None = None
    decoder_batch: int | None = None
    decoder_loss: str | None = None
    decoder_precision: str | None = None  # auto (bf16 autocast on CPUs with native bf16, TF32 on CUDA), fp32, bf16
    rmle_steps: int | None = None
    rmle_tune_size: int | None = None
    budget_curve: bool = True  # retrain the strongest decoder on smaller public sets (saturation check)
    curve_sizes: tuple[int, ...] | None = None  # public-set sizes of the curve (default: the budget's + half)
    curve_family: str = "auto"  # which decoder family the curve retrains (auto: the strongest on held-out data)
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    repeats: tuple[int, ...] = (1, 5, 20)
    n_repeat: int | None = None
    policy: str = "auto"  # auto: as the device manifest says; on; off
    max_revealed_energy: float | None = None  # overrides the manifest's threshold (implies policy on)
    policy_thresholds: tuple[float, ...] = ()  # extra table: accuracy / leakage under the policy
    policy_pools: int = 2  # dropped-vector pools for the decoder when a policy is active
    n_examples: int = 8
    seed: int = 0
    data_root: str | None = None
    torch_device: str = "auto"  # auto: cuda when available
    checkpoint_dir: str | None = None  # finished attacks are saved here; a rerun of the same audit resumes

    def validate(self) -> None:
        if self.budget not in BUDGETS:
            raise InputError(f"--budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        known = set(ATTACKS) | set(ALIASES)
        unknown = [a for a in self.attacks if a not in known]
        if unknown:
            raise InputError(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
        if self.n_test is not None and self.n_test < 2:
            raise InputError(f"--n-test must be at least 2, got {self.n_test}")
        if self.public_size is not None and 0 < self.public_size < 20:
            raise InputError(f"--public-size must be 0 (all) or at least 20, got {self.public_size}")
        for name in ("decoder_epochs", "decoder_patience", "rmle_steps", "rmle_tune_size", "n_repeat"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
        if not self.repeats or any(k < 1 for k in self.repeats):
            raise InputError(f"repeat counts must be at least 1, got {self.repeats}")
        if self.curve_family not in ("auto", "mlp", "conv", "adaptive"):
            raise InputError(f"--curve-family must be auto, mlp, conv or adaptive, got {self.curve_family!r}")
        if self.budget_curve and self.curve_family != "auto" and \
                f"decoder_{self.curve_family}" not in {ALIASES.get(a, a) for a in self.attacks}:
            raise InputError(f"--curve-family {self.curve_family}: decoder_{self.curve_family} is not among the "
                             f"attacks; add it to --attacks or use --curve-family auto")
        if self.policy not in ("auto", "on", "off"):
            raise InputError(f"--policy must be auto, on or off, got {self.policy!r}")
        for t in (*self.policy_thresholds, *([self.max_revealed_energy] if self.max_revealed_energy is not None
                                              else [])):
            if not 0 <= t <= 1:
                raise InputError(f"revealed-energy thresholds must be in [0, 1], got {t}")
        if self.torch_device not in ("auto", "cpu") and not self.torch_device.startswith("cuda"):
            raise InputError(f"--torch-device must be auto, cpu or cuda[:N], got {self.torch_device!r}")
        self.decoder_budget().validate()

    @property
    def preset(self) -> BudgetPreset:
        return BUDGETS[self.budget]

    def decoder_budget(self) -> DecoderBudget:
        d = self.preset.decoder
        over: dict[str, Any] = {"max_epochs": self.decoder_epochs, "patience": self.decoder_patience,
                                "hidden": self.decoder_hidden, "batch": self.decoder_batch, "loss": self.decoder_loss,
                                "precision": self.decoder_precision}
        return replace(d, **{k: v for k, v in over.items() if v is not None})

    def resolved(self, name: str) -> Any:
        """A field's effective value: the override if set, else the budget's."""
        v = getattr(self, name)
        return getattr(self.preset, name) if v is None else v

    def device(self) -> torch.device:
        if self.torch_device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.torch_device)


@dataclass
class AuditResult:
    report: dict[str, Any]  # JSON-able, written as audit.json
    examples: dict[str, Any] = field(default_factory=dict)  # arrays for the HTML report

    @property
    def summary(self) -> AuditSummary:
        return AuditSummary.from_report(self.report)


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


def build_pairs(device: DeviceModel, server: ServerModel, obs: Observer, policy: PrivacyPolicy | None,
                x_pub: np.ndarray, budget: DecoderBudget, *, seed: int, policy_pools: int,
                torch_device: torch.device) -> PublicPairs:
    """The attacker's training material: its public inputs, fresh dropped vectors every epoch, and a fixed
    held-out split (payloads through the real runtime and server parser) for early stopping."""
    dev = torch_device
    n_val = max(2, min(budget.val_size, len(x_pub) // 10))
    x_val_np, x_tr_np = x_pub[:n_val], x_pub[n_val:]
    h_val = torch.from_numpy(obs.observe(x_val_np, RandomMasks(seed + 999))).to(dev)
    vd = device.value_dtype
    if policy is None and _plain_dropping(device, x_tr_np[:64], seed):
        acts = torch.from_numpy(np.concatenate([device.activations(x_tr_np[i:i + 4096])
                                                for i in range(0, len(x_tr_np), 4096)])).to(dev)
        p = float(device.drop_rate)

        def draw(epoch: int, size: int | None) -> torch.Tensor:
            a = acts if size is None else acts[:size]
            g = torch.Generator(device=dev).manual_seed(seed + 100 + epoch)
            h = a * (torch.rand(a.shape, generator=g, device=dev) >= p) if p > 0 else a
            return h.half().float() if vd == "float16" else h

        how = ("fresh Bernoulli masks every epoch (the distribution of the device's RandomMasks) on the device "
               "runtime's activations")
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


def run_audit(bundle: str | Path, cfg: AuditConfig, *, dataset: Dataset | None = None, progress: bool = True,
              log=print) -> AuditResult:
    """Audit one bundle; returns the JSON-able report and arrays for the HTML examples."""
    cfg.validate()
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    device, server = load_pair(bundle)
    ds = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_root)
    check_dataset(device, server, ds)
    kind = ds.kind
    metric = primary_metric(kind)
    preset = cfg.preset
    n_test = cfg.resolved("n_test")
    public_size = cfg.resolved("public_size")
    rng = np.random.default_rng(cfg.seed)
    test_idx = rng.permutation(len(ds.x_test))[:n_test]
    pub_idx = rng.permutation(len(ds.x_train))[: public_size or len(ds.x_train)]
    x_test, y_test = ds.x_test[test_idx], ds.y_test[test_idx]
    x_pub, y_pub = ds.x_train[pub_idx], ds.y_train[pub_idx]
    n = int(np.prod(device.input_shape))
    mu = x_pub.reshape(len(x_pub), -1).mean(0).astype(np.float64)
    class_means = np.stack([x_pub[y_pub == c].reshape(-1, n).mean(0) if (y_pub == c).any() else mu
                            for c in range(ds.n_classes)])
    policy = resolve_policy(device, cfg)
    obs = Observer(device, server, policy, mu)
    tdev = cfg.device()
    dec_budget = cfg.decoder_budget()
    linear = bool(getattr(device, "is_linear", True))
    if not preset.claim:
        log(f"[yellow]{NOT_A_CLAIM}[/]")

    # -- what the server receives for the audited requests ---------------------------------------
    t0 = time.perf_counter()
    data, policy_certs = obs.payloads(x_test, RandomMasks(cfg.seed + 1))
    h_test, parsed = obs.received(data)
    probs = obs.predict(parsed)
    pred = probs.argmax(1)
    accuracy = float((pred == y_test).mean())
    timing["payloads_and_predictions_s"] = time.perf_counter() - t0
    log(f"audit {device.model_id} ({device.version}) on {ds.name}, budget {cfg.budget}: {len(x_test)} test "
        f"requests, accuracy {accuracy:.4f}, surviving outputs {np.mean([p.nnz for p in parsed]):.1f} of "
        f"{device.n_outputs}; attackers on {tdev}")

    # -- certificates ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    cert_summary: dict[str, Any] = {}
    cert_arr: dict[str, np.ndarray] = {}
    if linear:
        dev_mu = device.public_mean.reshape(-1)
        certs = [certify(device.system, x, h, dev_mu) for x, h in zip(x_test, h_test, strict=True)]
        cert_arr = {key: np.array([getattr(c, key) for c in certs], dtype=np.float64)
                    for key in ("k", "rank", "identifiable", "revealed_energy", "max_leverage")}
        cert_arr["revealed_energy_public_mu"] = np.array(
            [certify(device.system, x, h, mu).revealed_energy for x, h in zip(x_test, h_test, strict=True)])
        cert_summary = {key: _dist(v) for key, v in cert_arr.items()}
        cert_summary["device_mu"] = ("bundle public_mean" if "public_mean" in device.extras else
                                     "per-channel normalization mean (the bundle has no public_mean)")
        cert_summary["rank_fraction"] = _dist(cert_arr["rank"] / n)
        cert_summary["requests_with_identifiable"] = int((cert_arr["identifiable"] > 0).sum())
        patches = [c.worst_patch for c in certs if c.worst_patch is not None]
        if certs and len(patches) == len(certs):
            cert_summary["worst_patch_revealed_energy"] = _dist([w["revealed_energy"] for w in patches])
            cert_summary["worst_patch_rank_fraction"] = _dist([w["rank"] / w["patch_dim"] for w in patches])
        if policy_certs is not None:
            cert_summary["dropped_by_policy"] = _dist([c.dropped_by_policy for c in policy_certs])
            cert_summary["policy_ok_all"] = bool(all(c.policy_ok for c in policy_certs))
    else:
        cert_summary["note"] = "non-linear device block: covered by the audit only (no algebraic certificate)"
    timing["certificates_s"] = time.perf_counter() - t0

    # -- the server's knowledge, public data and the attacks ---------------------------------------
    know = atk.ServerKnowledge.from_device(device, kind, device.activations(x_pub[:2000])) if linear else None
    recs: dict[str, np.ndarray] = {
        "data_mean": np.broadcast_to(mu, (len(x_test), n)).astype(np.float32),
        "class_prior": class_means[pred].astype(np.float32),
    }
    budgets: dict[str, Any] = {}

    def score(x: np.ndarray, r: np.ndarray) -> float:
        return float(evaluate(kind, x, r.reshape(x.shape))[metric].mean())

    pairs_cache: list[PublicPairs] = []

    def pairs() -> PublicPairs:
        if not pairs_cache:
            pairs_cache.append(build_pairs(device, server, obs, policy, x_pub, dec_budget, seed=cfg.seed,
                                           policy_pools=cfg.policy_pools, torch_device=tdev))
        return pairs_cache[0]

    rmle_cache: list[tuple[np.ndarray, np.ndarray]] = []
    tune_n = min(cfg.resolved("rmle_tune_size"), len(x_pub))

    def rmle_material() -> tuple[np.ndarray, np.ndarray]:
        if not rmle_cache:
            x_val = x_pub[:tune_n]
            h_val, parsed_val = obs.received(obs.payloads(x_val, RandomMasks(cfg.seed + 2))[0])  # encoded once
            ctx.cache["class_prior_val"] = class_means[obs.predict(parsed_val).argmax(1)]
            rmle_cache.append((h_val, x_val))
        return rmle_cache[0]

    box = tuple(device.value_range) if device.value_range is not None else None
    ctx = AttackContext(kind=kind, metric=metric, input_shape=tuple(device.input_shape), box=box,  # type: ignore
                        know=know, mu=mu, class_means=class_means, x_test=x_test, h_test=h_test, pred=pred,
                        pairs=pairs, rmle_material=rmle_material, decoder_budget=dec_budget,
                        rmle_steps=cfg.resolved("rmle_steps"), score=score, torch_device=tdev, seed=cfg.seed,
                        progress=progress, log=log)
    store = None
    if cfg.checkpoint_dir:
        store = AttackCheckpoints(cfg.checkpoint_dir, audit_fingerprint(
            version=device.version, dataset=ds.name, config=asdict(cfg), test_idx=test_idx, pub_idx=pub_idx),
            default=json_default)
        ctx.partial_path = store.partial
    skipped: dict[str, str] = {}
    resumed: list[str] = []
    earlier_s = 0.0  # compute of attacks (and curve points) reused from checkpoints
    names = [ALIASES.get(a, a) for a in cfg.attacks if a != "repeated"]
    for name in dict.fromkeys(names):
        spec = create_attack(name)
        if spec.needs_equations and not linear:
            skipped[name] = "needs the first layer's equations; the device runs a non-linear block"
            continue
        t0 = time.perf_counter()
        hit = store.load(name) if store is not None else None
        if hit is not None and hit[0].shape == (len(x_test), n):
            recs[name], budgets[name] = hit
            resumed.append(name)
            earlier_s += float(budgets[name].get("seconds") or 0.0)  # spent by the process that ran it
            log(f"  {name}: finished earlier, reused from {store.dir}")  # type: ignore[union-attr]
            continue
        outcome = spec.run(ctx)
        recs[name] = outcome.rec.reshape(len(x_test), n)
        budgets[name] = outcome.budget
        if spec.learned:
            budgets[name].update(cpu=platform.processor() or platform.machine(),
                                 torch_threads=torch.get_num_threads())
        timing[f"{name}_s"] = time.perf_counter() - t0
        earlier_s += float(budgets[name].get("resumed_seconds") or 0.0)  # a decoder resumed mid-training
        if store is not None:
            store.save(name, recs[name], budgets[name])

    # -- metrics -------------------------------------------------------------------------------
    per_sample = {name: evaluate(kind, x_test, r.reshape(x_test.shape)) for name, r in recs.items()}
    results: dict[str, dict[str, Any]] = {name: {"label": ATTACK_LABELS[name],
                      "metrics": summarize(v, None if name == "class_prior" else per_sample["class_prior"])}
               for name, v in per_sample.items()}
    baselines = {"data_mean", "class_prior"} | {a for a in recs if a in ATTACK_LABELS and a not in ("data_mean",
                                                "class_prior") and create_attack(a).baseline}
    attack_names = [a for a in recs if a not in baselines]
    best = max(attack_names, key=lambda a: results[a]["metrics"][metric]["mean"]) if attack_names else None
    pred_only = results["decoder_prediction"]["metrics"][metric]["mean"] if "decoder_prediction" in results else None
    label_only = results["decoder_label"]["metrics"][metric]["mean"] if "decoder_label" in results else None
    leakage = _leakage(per_sample, best, metric) if best is not None and label_only is not None else None

    # -- saturation: the attacker-budget curve ---------------------------------------------------
    warnings: list[str] = []
    learned = {k: v for k, v in budgets.items() if k.startswith("decoder_")}
    for k, v in learned.items():
        if not v.get("converged", False):
            warnings.append(f"{k} hit its epoch cap ({v['max_epochs']}) while still improving: its number is a "
                            "lower bound on leakage")
    curve = None
    fits = {k.removeprefix("decoder_"): v for k, v in learned.items()
            if k not in ("decoder_prediction", "decoder_label")}  # attackers only: baselines are no attack
    if cfg.budget_curve and fits:
        t0 = time.perf_counter()
        strongest = max(fits, key=lambda f: fits[f]["best_val"])
        family = strongest if cfg.curve_family == "auto" else cfg.curve_family
        curve = _budget_curve(ctx, family, fits, recs,
                              preset.curve_sizes if cfg.curve_sizes is None else cfg.curve_sizes,
                              x_test, score, progress, store, add_half=cfg.curve_sizes is None)
        if family != strongest:
            warnings.append(f"the budget curve retrains decoder_{family} (--curve-family), not the strongest family "
                            f"on held-out data, decoder_{strongest} ({fits[strongest]['best_val']:.3f} vs "
                            f"{fits[family]['best_val']:.3f} {metric}): its saturation is checked on a weaker "
                            "attacker")
        timing["budget_curve_s"] = time.perf_counter() - t0
        if curve["last_doubling_gain"] is not None and curve["last_doubling_gain"] > 0.01:
            a, b = (p["public_train"] for p in curve["points"][-2:])
            warnings.append(f"the last step of public data ({a} -> {b}) still gained "
                            f"{curve['last_doubling_gain']:+.3f} "
                            f"{metric} for decoder_{curve['family']}: more public data would likely leak more "
                            "(a lower bound)")
    elif preset.claim and fits and not cfg.budget_curve:
        warnings.append("the budget curve was not run (--no-budget-curve): whether more public data would leak "
                        "more is unchecked")
    if not preset.claim:
        warnings.insert(0, NOT_A_CLAIM)
    for w in warnings:
        log(f"[yellow]warning:[/] {w}")

    # -- repeated queries ----------------------------------------------------------------------
    repeated = None
    lam = {k: budgets[k]["lambda"] for k in ("rmle",) if k in budgets}
    if "repeated" in cfg.attacks and linear:
        t0 = time.perf_counter()
        nrep = cfg.resolved("n_repeat")
        repeated = _repeated(cfg, obs, know, x_test[:nrep], mu, kind, lam.get("rmle"),  # type: ignore[arg-type]
                             recs["class_prior"][:nrep], progress)
        timing["repeated_s"] = time.perf_counter() - t0

    # -- policy cost ---------------------------------------------------------------------------
    policy_cost = None
    if cfg.policy_thresholds and linear:
        t0 = time.perf_counter()
        policy_cost = _policy_cost(cfg, device, server, know, x_test, y_test, mu, kind, progress)  # type: ignore
        timing["policy_cost_s"] = time.perf_counter() - t0

    timing["total_s"] = time.perf_counter() - t_start
    if curve is not None:
        earlier_s += curve.pop("resumed_seconds", 0.0)
    # what the whole audit cost, including attacks finished by earlier processes (total_s is this run only)
    timing["compute_s"] = timing["total_s"] + earlier_s
    best_mean = results[best]["metrics"][metric]["mean"] if best else None
    report = {
        "bundle": {"path": str(bundle), "model_id": device.model_id, "version": device.version,
                   "kind": device.kind, "input_shape": list(device.input_shape), "n_outputs": device.n_outputs,
                   "kernel": list(device.kernel), "stride": list(device.stride), "drop_rate": device.drop_rate,
                   "value_dtype": device.value_dtype, "privacy_manifest": _privacy_manifest(device),
                   "linear_first_layer": linear, **_arch(server)},
        "dataset": ds.name, "data_kind": kind, "metric": metric,
        "n_test": int(len(x_test)), "n_public": int(len(x_pub)),
        "split": "public = seeded subset of the training set (a held-out part of it early-stops the decoders); "
                 "audited requests = seeded subset of the test set",
        "budget": {"name": cfg.budget, "claim": preset.claim, "note": None if preset.claim else NOT_A_CLAIM,
                   "decoder": asdict(dec_budget), "torch_device": str(tdev)},
        "policy": policy.to_dict() if policy is not None else None,
        "accuracy": accuracy,
        "surviving": _dist([p.nnz for p in parsed]),
        "certificate": cert_summary,
        "attacks": results,
        "skipped_attacks": skipped,
        "resumed_attacks": resumed,
        "best_attack": best,
        "best": best_mean,
        "best_advantage": results[best]["metrics"][metric].get("advantage") if best else None,
        "class_prior": results["class_prior"]["metrics"][metric]["mean"],
        "prediction_only": pred_only,
        "advantage_over_prediction": (best_mean - pred_only) if best_mean is not None and pred_only is not None
        else None,
        "label_only": label_only,
        "leakage": leakage,
        "data_mean": results["data_mean"]["metrics"][metric]["mean"],
        "all_converged": all(v.get("converged", False) for v in learned.values()),
        "budget_curve": curve,
        "warnings": warnings,
        "repeated": repeated,
        "policy_cost": policy_cost,
        "budgets": budgets,
        "config": asdict(cfg),
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
        "torch_threads": torch.get_num_threads(),
    }
    m = min(cfg.n_examples, len(x_test))
    examples = {"x": x_test[:m], "h": h_test[:m], "y": y_test[:m], "pred": pred[:m],
                "recs": {k: v[:m].reshape(x_test[:m].shape) for k, v in recs.items()},
                "cert": cert_arr, "output_shape": tuple(device.output_shape), "kind": kind}
    return AuditResult(report, examples)


def _leakage(per_sample: dict[str, dict[str, np.ndarray]], best: str, metric: str) -> dict[str, Any]:
    """The yardstick: the best attack minus the label-only decoder on the same requests (paired, with its standard
    error: :func:`summarize` against that floor). The server must learn the class; leakage is what it learns beyond."""
    paired = summarize(per_sample[best], per_sample["decoder_label"])[metric]
    return {"mean": paired["advantage"], "se": paired["advantage_se"], "attack": best, "floor": "decoder_label"}


def _privacy_manifest(device: DeviceModel) -> Any:
    return device.policy.to_dict()  # the manifest's privacy block, every field spelled out


def _arch(server: ServerModel) -> dict[str, Any]:
    return {"arch": server.manifest.arch.name, "arch_kwargs": server.manifest.arch.kwargs}


def _budget_curve(ctx: AttackContext, family: str, fits: dict[str, dict[str, Any]], recs: dict[str, np.ndarray],
                  sizes: tuple[int, ...], x_test: np.ndarray, score: Any, progress: bool,
                  store: AttackCheckpoints | None, add_half: bool = True) -> dict[str, Any]:
    """Retrain one decoder family (normally the strongest by held-out score) from scratch on smaller public sets.

    ``fits`` are the learned attackers' budgets by family (with their per-epoch held-out scores)."""
    pairs = ctx.pairs()
    full_n = len(pairs.x_train)
    points = []
    resumed_s = 0.0
    cap = full_n // 2 if add_half else full_n  # the default adds half of the public data as the last doubling
    for s in sorted({x for x in sizes if x < cap} | ({cap} if add_half else set())):
        if s < 20:
            continue
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
    js = out / "audit.json"
    js.write_text(json.dumps(result.report, indent=2, default=json_default) + "\n")
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
