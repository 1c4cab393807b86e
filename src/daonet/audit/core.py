"""``run_audit``: attack the payloads a real device runtime makes for held-out test inputs.

Pipeline (everything the server side does goes through the same code a deployment runs):
``DeviceModel.encode_many`` (or the policy path) -> payload bytes -> ``ServerModel.parse`` (wire decode and
validation) -> predictions and attacks. The attacker's public data is a seeded split of the *training* set;
the audited requests come from the *test* set, so the two never overlap. Every learned attacker is trained
from scratch, here, against the exact bundle being audited.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bundle import check_pair
from ..data import Dataset, load_dataset
from ..device.certificate import PrivacyPolicy, certify
from ..device.masks import KeyedMasks, RandomMasks
from ..device.runtime import DeviceModel
from ..errors import BundleError, DatasetError, InputError
from ..server.model import ServerModel
from ..train import make_progress
from . import attacks as atk
from .metrics import evaluate, primary_metric, summarize

ATTACKS = ("min_norm", "rmle", "rmle_naive", "decoder", "repeated")
ATTACK_LABELS = {
    "data_mean": "data mean (baseline)",
    "class_prior": "class-conditional mean of the predicted class (baseline)",
    "min_norm": "white-box min-norm least squares (mask-aware)",
    "rmle": "regularized inversion, rMLE (mask-aware)",
    "rmle_naive": "regularized inversion, rMLE (naive: zeros treated as ReLU outputs)",
    "decoder": "learned inverse network (fresh masks every epoch)",
}


@dataclass
class AuditConfig:
    """What is audited and how hard the attackers try (all recorded in the report)."""

    dataset: str
    n_test: int = 500
    public_size: int | None = 30000  # None: the whole training set
    decoder_epochs: int = 10
    decoder_hidden: int = 1024
    decoder_batch: int = 128
    rmle_steps: int = 300
    rmle_tune_size: int = 64
    attacks: tuple[str, ...] = ATTACKS
    repeats: tuple[int, ...] = (2, 5, 10)
    n_repeat: int = 100
    policy: str = "auto"  # auto: as the device manifest says; on; off
    max_revealed_energy: float | None = None  # overrides the manifest's threshold (implies policy on)
    policy_thresholds: tuple[float, ...] = ()  # extra table: accuracy / leakage under the policy
    policy_pools: int = 2  # dropped-vector pools for the decoder when a policy is active
    n_examples: int = 8
    seed: int = 0
    data_root: str | None = None

    def validate(self) -> None:
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise InputError(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
        if self.n_test < 2:
            raise InputError(f"--n-test must be at least 2, got {self.n_test}")
        if self.public_size is not None and self.public_size < 10:
            raise InputError(f"--public-size must be at least 10, got {self.public_size}")
        if self.decoder_epochs < 1:
            raise InputError(f"--decoder-epochs must be at least 1, got {self.decoder_epochs}")
        if any(k < 2 for k in self.repeats):
            raise InputError(f"repeat counts must be at least 2, got {self.repeats}")
        if self.policy not in ("auto", "on", "off"):
            raise InputError(f"--policy must be auto, on or off, got {self.policy!r}")
        for t in (*self.policy_thresholds, *([self.max_revealed_energy] if self.max_revealed_energy is not None
                                              else [])):
            if not 0 <= t <= 1:
                raise InputError(f"revealed-energy thresholds must be in [0, 1], got {t}")


@dataclass
class AuditResult:
    report: dict[str, Any]
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


def _dist(v: np.ndarray) -> dict[str, float]:
    v = np.asarray(v, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "p5": float(np.percentile(v, 5)),
            "median": float(np.median(v)), "p95": float(np.percentile(v, 95)), "max": float(v.max())}


def _near_duplicates(x: np.ndarray, k: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """K noisy re-captures of each input: ±2 grey levels on 8-bit images, 1% noise on z-normalized signals."""
    if kind == "image":
        noise = rng.integers(-2, 3, size=(k, *x.shape)) / 255.0
        return np.clip(np.round((x[None] + noise) * 255.0) / 255.0, 0.0, 1.0).astype(np.float32)
    return (x[None] + 0.01 * rng.standard_normal((k, *x.shape))).astype(np.float32)


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
    rng = np.random.default_rng(cfg.seed)
    test_idx = rng.permutation(len(ds.x_test))[: cfg.n_test]
    pub_idx = rng.permutation(len(ds.x_train))[: cfg.public_size or len(ds.x_train)]
    x_test, y_test = ds.x_test[test_idx], ds.y_test[test_idx]
    x_pub, y_pub = ds.x_train[pub_idx], ds.y_train[pub_idx]
    n = int(np.prod(device.input_shape))
    mu = x_pub.reshape(len(x_pub), -1).mean(0).astype(np.float64)
    class_means = np.stack([x_pub[y_pub == c].reshape(-1, n).mean(0) if (y_pub == c).any() else mu
                            for c in range(ds.n_classes)])
    policy = resolve_policy(device, cfg)
    obs = Observer(device, server, policy, mu)

    # -- what the server receives for the audited requests ---------------------------------------
    t0 = time.perf_counter()
    data, policy_certs = obs.payloads(x_test, RandomMasks(cfg.seed + 1))
    h_test, parsed = obs.received(data)
    probs = obs.predict(parsed)
    pred = probs.argmax(1)
    accuracy = float((pred == y_test).mean())
    timing["payloads_and_predictions_s"] = time.perf_counter() - t0
    log(f"audit {device.model_id} ({device.version}) on {ds.name}: {len(x_test)} test requests, accuracy "
        f"{accuracy:.4f}, surviving outputs {np.mean([p.nnz for p in parsed]):.1f} of {device.n_outputs}")

    # -- certificates ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    # as the device computes it (its own μ), and with the attacker's per-coordinate public mean
    dev_mu = device.public_mean.reshape(-1)
    certs = [certify(device.system, x, h, dev_mu) for x, h in zip(x_test, h_test, strict=True)]
    cert_arr = {key: np.array([getattr(c, key) for c in certs], dtype=np.float64)
                for key in ("k", "rank", "identifiable", "revealed_energy", "max_leverage")}
    cert_arr["revealed_energy_public_mu"] = np.array(
        [certify(device.system, x, h, mu).revealed_energy for x, h in zip(x_test, h_test, strict=True)])
    cert_summary: dict[str, Any] = {key: _dist(v) for key, v in cert_arr.items()}
    cert_summary["device_mu"] = ("bundle public_mean" if "public_mean" in device.extras else
                                 "per-channel normalization mean (the bundle has no public_mean)")
    cert_summary["rank_fraction"] = _dist(cert_arr["rank"] / n)
    cert_summary["requests_with_identifiable"] = int((cert_arr["identifiable"] > 0).sum())
    if certs and certs[0].worst_patch is not None:
        cert_summary["worst_patch_revealed_energy"] = _dist([c.worst_patch["revealed_energy"] for c in certs])
        cert_summary["worst_patch_rank_fraction"] = _dist([c.worst_patch["rank"] / c.worst_patch["patch_dim"]
                                                            for c in certs])
    if policy_certs is not None:
        cert_summary["dropped_by_policy"] = _dist([c.dropped_by_policy for c in policy_certs])
        cert_summary["policy_ok_all"] = bool(all(c.policy_ok for c in policy_certs))
    timing["certificates_s"] = time.perf_counter() - t0

    # -- the server's knowledge and public data ----------------------------------------------------
    know = atk.ServerKnowledge.from_device(device, kind, device.activations(x_pub[:2000]))
    recs: dict[str, np.ndarray] = {
        "data_mean": np.broadcast_to(mu, (len(x_test), n)).astype(np.float32),
        "class_prior": class_means[pred].astype(np.float32),
    }
    budgets: dict[str, Any] = {}

    def score(x: np.ndarray, r: np.ndarray) -> float:
        return float(evaluate(kind, x, r.reshape(x.shape))[metric].mean())

    mn = None
    if {"min_norm", "rmle"} & set(cfg.attacks):
        t0 = time.perf_counter()
        mn = atk.min_norm(know, h_test, mu).astype(np.float32)
        if "min_norm" in cfg.attacks:
            recs["min_norm"] = mn
        timing["min_norm_s"] = time.perf_counter() - t0

    tune_n = min(cfg.rmle_tune_size, len(x_pub))
    x_val = x_pub[:tune_n]
    h_val = obs.observe(x_val, RandomMasks(cfg.seed + 2)) if tune_n else None
    lam = {}
    for name, naive in (("rmle", False), ("rmle_naive", True)):
        if name not in cfg.attacks and not (name == "rmle" and "repeated" in cfg.attacks):
            continue
        t0 = time.perf_counter()
        init_val = None if naive else atk.min_norm(know, h_val, mu)
        lam[name], grid = atk.tune_lambda(know, h_val, x_val, mu, score, naive=naive, steps=cfg.rmle_steps,
                                          init=init_val)
        if name in cfg.attacks:
            with make_progress() as bar:
                task = bar.add_task(f"{name}", total=len(x_test) * cfg.rmle_steps, status=f"lambda {lam[name]:g}",
                                    visible=progress)
                recs[name] = atk.regularized(know, h_test, mu, lam[name], naive=naive, steps=cfg.rmle_steps,
                                             init=None if naive else mn,
                                             progress=lambda k, b=bar, t=task: b.update(t, advance=k))
        budgets[name] = {"steps": cfg.rmle_steps, "optimizer": "Adam, projected onto the input box",
                         "lambda": lam[name], "lambda_grid_scores_on_public": grid, "tuned_on_public": tune_n,
                         "prior": "total variation" if kind == "image" else "second-difference smoothness",
                         "init": "data mean" if naive else "min-norm solution",
                         "seconds": round(time.perf_counter() - t0, 2)}
        timing[f"{name}_s"] = time.perf_counter() - t0

    if "decoder" in cfg.attacks:
        t0 = time.perf_counter()
        if policy is None:
            def sample(epoch: int) -> np.ndarray:  # fresh masks every epoch, through the real device runtime
                return wire_values(device.drop(x_pub, RandomMasks(cfg.seed + 100 + epoch)), device.value_dtype)
        else:  # the policy is per request and slower: a few pools of policy-filtered payloads, cycled
            pools: dict[int, np.ndarray] = {}

            def sample(epoch: int) -> np.ndarray:
                i = epoch % cfg.policy_pools
                if i not in pools:
                    pools[i] = obs.observe(x_pub, RandomMasks(cfg.seed + 100 + i))
                return pools[i]
        dec = atk.train_decoder(sample, x_pub, know.box, epochs=cfg.decoder_epochs, batch=cfg.decoder_batch,
                                hidden=cfg.decoder_hidden, seed=cfg.seed, progress=progress,
                                fresh=policy is None)
        recs["decoder"] = dec.predict(h_test)
        budgets["decoder"] = {**dec.info, "cpu": platform.processor() or platform.machine(),
                              "torch_threads": torch.get_num_threads(),
                              "mask_pools": None if policy is None else cfg.policy_pools}
        timing["decoder_s"] = time.perf_counter() - t0

    # -- metrics -------------------------------------------------------------------------------
    per_sample = {name: evaluate(kind, x_test, r.reshape(x_test.shape)) for name, r in recs.items()}
    results = {name: {"label": ATTACK_LABELS[name],
                      "metrics": summarize(v, None if name == "class_prior" else per_sample["class_prior"])}
               for name, v in per_sample.items()}
    attack_names = [a for a in recs if a not in ("data_mean", "class_prior")]
    best = max(attack_names, key=lambda a: results[a]["metrics"][metric]["mean"]) if attack_names else None

    # -- repeated queries ----------------------------------------------------------------------
    repeated = None
    if "repeated" in cfg.attacks:
        t0 = time.perf_counter()
        repeated = _repeated(cfg, obs, know, x_test[: cfg.n_repeat], mu, kind, lam.get("rmle"), per_sample,
                             progress)
        timing["repeated_s"] = time.perf_counter() - t0

    # -- policy cost ---------------------------------------------------------------------------
    policy_cost = None
    if cfg.policy_thresholds:
        t0 = time.perf_counter()
        policy_cost = _policy_cost(cfg, device, server, know, x_test, y_test, mu, kind, progress)
        timing["policy_cost_s"] = time.perf_counter() - t0

    timing["total_s"] = time.perf_counter() - t_start
    report = {
        "bundle": {"path": str(bundle), "model_id": device.model_id, "version": device.version,
                   "kind": device.kind, "input_shape": list(device.input_shape), "n_outputs": device.n_outputs,
                   "kernel": list(device.kernel), "stride": list(device.stride), "drop_rate": device.drop_rate,
                   "value_dtype": device.value_dtype, "privacy_manifest": device.manifest.get("privacy"),
                   "arch": server.manifest.get("arch", {}).get("name"),
                   "arch_kwargs": server.manifest.get("arch", {}).get("kwargs")},
        "dataset": ds.name, "data_kind": kind, "metric": metric,
        "n_test": int(len(x_test)), "n_public": int(len(x_pub)),
        "split": "public = seeded subset of the training set; audited requests = seeded subset of the test set",
        "policy": policy.to_dict() if policy is not None else None,
        "accuracy": accuracy,
        "surviving": _dist([p.nnz for p in parsed]),
        "certificate": cert_summary,
        "attacks": results,
        "best_attack": best,
        "best": results[best]["metrics"][metric]["mean"] if best else None,
        "best_advantage": results[best]["metrics"][metric].get("advantage") if best else None,
        "class_prior": results["class_prior"]["metrics"][metric]["mean"],
        "data_mean": results["data_mean"]["metrics"][metric]["mean"],
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


def _repeated(cfg: AuditConfig, obs: Observer, know: atk.ServerKnowledge, x: np.ndarray, mu: np.ndarray, kind: str,
              lam: float | None, per_sample: dict[str, dict[str, np.ndarray]], progress: bool) -> dict[str, Any]:
    """Same input sent K times: fresh random masks (equations accumulate) vs replay-safe keyed masks."""
    metric = primary_metric(kind)
    kmax = max(cfg.repeats)
    nrep = len(x)
    base = {name: {key: v[:nrep] for key, v in vals.items()} for name, vals in per_sample.items()}
    out: dict[str, Any] = {"n_inputs": nrep, "metric": metric,
                           "single_query": {a: float(base[a][metric].mean()) for a in ("min_norm", "class_prior")
                                            if a in base}}
    if "rmle" in base:
        out["single_query"]["rmle"] = float(base["rmle"][metric].mean())
    fresh = np.stack([obs.observe(x, RandomMasks(cfg.seed + 1000 + k)) for k in range(kmax)])
    rows = []
    with make_progress() as bar:
        task = bar.add_task("repeated queries", total=len(cfg.repeats), status="", visible=progress)
        for k in cfg.repeats:
            hu = atk.union(fresh[:k])
            row: dict[str, Any] = {"K": k, "masks": "fresh random", "surviving_union": float((hu > 0).sum(1).mean())}
            rec = atk.min_norm(know, hu, mu)
            row["min_norm"] = summarize(evaluate(kind, x, rec.reshape(x.shape)), base["class_prior"])[metric]
            if lam is not None:
                rec = atk.regularized(know, hu, mu, lam, steps=cfg.rmle_steps, init=rec)
                row["rmle"] = summarize(evaluate(kind, x, rec.reshape(x.shape)), base["class_prior"])[metric]
            rows.append(row)
            bar.update(task, advance=1, status=f"K={k}")
    # replay-safe masks: the device holds a key the server never sees
    # a simulated device key, derived from the seed so the audit is reproducible (the server never sees it)
    keyed = KeyedMasks(key=hashlib.sha256(f"daonet-audit-device-key-{cfg.seed}".encode()).digest(),
                       model_version=obs.device.version)
    sends = [obs.payloads(x, keyed)[0] for _ in range(kmax)]
    identical = all(sends[j] == sends[0] for j in range(1, kmax))
    hk = np.stack([obs.received(s)[0] for s in sends])
    rec = atk.min_norm(know, atk.union(hk), mu)
    rows.append({"K": kmax, "masks": "keyed (same input)", "identical_payloads": identical,
                 "surviving_union": float((atk.union(hk) > 0).sum(1).mean()),
                 "min_norm": summarize(evaluate(kind, x, rec.reshape(x.shape)), base["class_prior"])[metric]})
    # near-duplicates: keyed masks cannot help when the content differs (noisy re-captures)
    kdup = min(5, kmax)
    dups = _near_duplicates(x, kdup, kind, np.random.default_rng(cfg.seed + 7))
    hd = np.stack([obs.received(obs.payloads(d, keyed)[0])[0] for d in dups])
    rec = atk.min_norm(know, hd, mu)
    rows.append({"K": kdup, "masks": "keyed, near-duplicate inputs", "surviving_union": float((hd > 0).any(0).sum(1)
                                                                                               .mean()),
                 "min_norm": summarize(evaluate(kind, x, rec.reshape(x.shape)), base["class_prior"])[metric],
                 "noise": "±2 grey levels" if kind == "image" else "1% Gaussian"})
    out["rows"] = rows
    return out


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
    js.write_text(json.dumps(result.report, indent=2, default=_json_default) + "\n")
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


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
