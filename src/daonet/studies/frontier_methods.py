"""Push the privacy-accuracy frontier beyond plain dropping: train, export and audit one model per *method*.

A method is a named configuration of the defences ``daonet train`` and the device runtime already offer:
plain dropping at a drop rate, a wider first layer with a higher drop rate, quantized transmission, the
NoPeek distance-correlation penalty, min-max training against an inverse network, the device-side
certificate policy (``max_revealed_energy`` in the device manifest), and compositions of these.

Every method goes through the same pipeline as a deployment (train -> export -> device runtime -> wire ->
server parser) and the full audit (:func:`daonet.audit.run_audit`), whose learned attackers are trained
from scratch against the final defended bundle. So a defence that only fools the adversary it was trained
against gets no credit.

Everything is cached under ``out``: ``runs/<hash>`` (training, keyed by the training config, so policy
variants share their base model), ``bundles/<method>`` and ``<method>/`` (audit). The results are
``methods.json``, ``methods.md`` and ``frontier.png`` (accuracy vs the best attack's advantage over the
class prior, one colour per method family, the target region shaded).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import numpy as np

from ..audit.core import (
    AuditConfig,
    json_default,
    load_pair,
    run_audit,
    write_report,
)
from ..audit.frontier import default_train_config, frontier_row
from ..audit.metrics import primary_metric
from ..data import Dataset, load_dataset
from ..device.certificate import PrivacyPolicy
from ..device.masks import RandomMasks
from ..errors import InputError
from ..export import export_model
from ..train import TrainConfig, load_run, save_run, train

TARGET_ADVANTAGE = 0.05  # the target: best attack at most 0.05 SSIM / correlation above the class prior
TARGET_ACCURACY_DROP = 0.01  # ... with accuracy within 1 point of the undefended model

FAMILIES: dict[str, tuple[str, str, str]] = {  # family -> (colour, marker, legend label)
    "plain": ("black", "o", "plain dropping"),
    "wide": ("tab:blue", "s", "wider first layer + higher p"),
    "quantize": ("tab:orange", "v", "quantized values"),
    "nopeek": ("tab:green", "^", "NoPeek (distance correlation)"),
    "adversary": ("tab:red", "D", "adversarial (min-max inverse net)"),
    "policy": ("tab:purple", "P", "certificate policy (device)"),
    "composed": ("tab:brown", "*", "composition"),
    "block": ("tab:cyan", "X", "localized first block (2 layers on the device)"),
    "noise": ("tab:pink", "h", "noise on surviving values"),
}


@dataclass(frozen=True)
class Method:
    """One defended configuration: the training options plus an optional device-side policy threshold."""

    name: str
    family: str
    drop_rate: float
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    quantize_levels: int = 0
    nopeek_weight: float = 0.0
    adversary_weight: float = 0.0
    adversary: str = "mlp"
    adversary_steps: int = 1
    max_revealed_energy: float | None = None
    train_options: dict[str, Any] = field(default_factory=dict)  # other TrainConfig fields (device block, noise)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", self.name):
            raise InputError(f"method name {self.name!r} may only use letters, digits and . _ + -")
        if self.family not in FAMILIES:
            raise InputError(f"unknown method family {self.family!r}; choose from {', '.join(FAMILIES)}")
        if self.max_revealed_energy is not None and not 0 <= self.max_revealed_energy <= 1:
            raise InputError(f"max_revealed_energy must be in [0, 1], got {self.max_revealed_energy}")

    def train_config(self, base: TrainConfig) -> TrainConfig:
        """The base training settings with this method's options applied."""
        return replace(base, drop_rate=self.drop_rate, model_kwargs={**base.model_kwargs, **self.model_kwargs},
                       quantize_levels=self.quantize_levels, nopeek_weight=self.nopeek_weight,
                       adversary_weight=self.adversary_weight, adversary=self.adversary,
                       adversary_steps=self.adversary_steps, **self.train_options)

    @property
    def privacy(self) -> dict[str, Any]:
        """The device manifest's ``privacy`` object for this method."""
        return PrivacyPolicy(max_revealed_energy=self.max_revealed_energy).to_dict()

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.model_kwargs.items()] + [f"p={self.drop_rate:g}"]
        if self.quantize_levels:
            parts.append(f"quantize {self.quantize_levels}")
        if self.nopeek_weight:
            parts.append(f"nopeek {self.nopeek_weight:g}")
        if self.adversary_weight:
            strong = f" ({self.adversary}, {self.adversary_steps} steps)" if self.adversary != "mlp" or \
                self.adversary_steps > 1 else ""
            parts.append(f"adversary {self.adversary_weight:g}{strong}")
        parts += [f"{k}={v}" for k, v in self.train_options.items()]
        if self.max_revealed_energy is not None:
            parts.append(f"policy rho<={self.max_revealed_energy:g}")
        return ", ".join(parts)


SPEC_KEYS = {"p": "drop_rate", "q": "quantize_levels", "quantize": "quantize_levels", "nopeek": "nopeek_weight",
             "adv": "adversary_weight", "adversary": "adversary_weight", "rho": "max_revealed_energy",
             "policy": "max_revealed_energy", "family": "family"}


def parse_method(spec: str) -> Method:
    """``NAME:p=0.97,hidden=4096,q=1,adv=0.5,nopeek=0.3,rho=0.1[,family=composed]`` -> :class:`Method`.

    Unknown keys are architecture options (``hidden``, ``stem``, ...). The family defaults to ``composed``.
    """
    name, sep, rest = spec.partition(":")
    if not sep or not name:
        raise InputError(f"a method spec is NAME:key=value,...; got {spec!r}")
    fields: dict[str, Any] = {"family": "composed"}
    kwargs: dict[str, Any] = {}
    for item in filter(None, (t.strip() for t in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise InputError(f"method option {item!r} is not key=value (in {spec!r})")
        target = SPEC_KEYS.get(key)
        try:
            if target == "family":
                fields["family"] = value
            elif target == "quantize_levels":
                fields[target] = int(value)
            elif target is not None:
                fields[target] = float(value)
            else:
                kwargs[key] = json.loads(value)
        except ValueError as exc:
            raise InputError(f"method option {item!r} has a bad value (in {spec!r})") from exc
    if "drop_rate" not in fields:
        raise InputError(f"method spec {spec!r} needs a drop rate p=...")
    return Method(name=name, model_kwargs=kwargs, **fields)


# the grids measured with the full audit (docs/frontier-methods-*.md); other tasks get every method
MEASURED: dict[str, tuple[str, ...]] = {
    "mnist-mlp": ("plain-p0", "plain-p0.9", "adv2-p0.5", "sadv2-p0.5", "block2-p0.8", "block2-p0.9", "block2-p0.97",
                  "noise0.5-p0.5"),
    "ecg5000-cnn1d": ("plain-p0", "plain-p0.5", "plain-p0.9", "plain-p0.97", "block2-p0.5", "block2-p0.9",
                      "noise0.5-p0.5", "noise1-p0.5", "sadv2-p0.5", "sadv2-p0.9", "wide-p0.97", "quant1-p0.9"),
}


def all_methods(model: str) -> list[Method]:
    """Every method configuration known by name (``--only`` picks from these)."""
    wide = {"stem": 128} if model == "cnn1d" else {"stem": 256} if model == "cnn" else {"hidden": 4096}
    p = 0.9
    return [
        Method("plain-p0", "plain", 0.0),
        Method("plain-p0.5", "plain", 0.5),
        Method("plain-p0.9", "plain", p),
        Method("plain-p0.97", "plain", 0.97),
        Method("wide-p0.97", "wide", 0.97, dict(wide)),
        Method("wide-p0.99", "wide", 0.99, dict(wide)),
        Method("quant1-p0.9", "quantize", p, quantize_levels=1),
        Method("quant2-p0.9", "quantize", p, quantize_levels=2),
        Method("nopeek-p0.9", "nopeek", p, nopeek_weight=0.5),
        Method("adv-p0.9", "adversary", p, adversary_weight=0.5),
        Method("adv2-p0.9", "adversary", p, adversary_weight=2.0),
        Method("adv2-p0.8", "adversary", 0.8, adversary_weight=2.0),
        Method("adv2-p0.5", "adversary", 0.5, adversary_weight=2.0),
        Method("adv2-p0", "adversary", 0.0, adversary_weight=2.0),
        # the stronger adversary: adaptive features (log h, support, class probabilities), 3 attacker steps
        Method("sadv2-p0.5", "adversary", 0.5, adversary_weight=2.0, adversary="adaptive", adversary_steps=3),
        Method("sadv2-p0.9", "adversary", p, adversary_weight=2.0, adversary="adaptive", adversary_steps=3),
        Method("sadv5-p0.5", "adversary", 0.5, adversary_weight=5.0, adversary="adaptive", adversary_steps=3),
        # a localized block (2 layers on the device, dropping at its output) and noise on surviving values
        Method("block2-p0.5", "block", 0.5, train_options={"device_layers": 2}),
        Method("block2-p0.9", "block", p, train_options={"device_layers": 2}),
        Method("block2-p0.8", "block", 0.8, train_options={"device_layers": 2}),  # ~ as many outputs as plain p=0.5
        Method("block2-p0.97", "block", 0.97, train_options={"device_layers": 2}),
        Method("noise0.5-p0.5", "noise", 0.5, train_options={"noise_std": 0.5}),
        Method("noise1-p0.5", "noise", 0.5, train_options={"noise_std": 1.0}),
        Method("noise0.5-p0.9", "noise", p, train_options={"noise_std": 0.5}),
        # thresholds near the mean revealed energy at p=0.9 (~0.2 on MNIST): rho<=0.1 already costs ~30 points
        Method("policy0.3-p0.9", "policy", p, max_revealed_energy=0.3),
        Method("policy0.2-p0.9", "policy", p, max_revealed_energy=0.2),
        Method("policy0.3-p0.5", "policy", 0.5, max_revealed_energy=0.3),
        Method("wide-q1-p0.97", "composed", 0.97, dict(wide), quantize_levels=1),
        Method("adv-pol0.3-p0.9", "composed", p, adversary_weight=0.5, max_revealed_energy=0.3),
        Method("adv2-pol0.3-p0.5", "composed", 0.5, adversary_weight=2.0, max_revealed_energy=0.3),
    ]


def default_methods(dataset: str, model: str) -> list[Method]:
    """The grid measured for this task (all methods for tasks not measured yet)."""
    methods = all_methods(model)
    names = MEASURED.get(f"{dataset}-{model}")
    return [m for m in methods if m.name in names] if names else methods


# -- pipeline ------------------------------------------------------------------------------------------
def _canon(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=json_default))


def _train_key(cfg: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(_canon(asdict(cfg)), sort_keys=True).encode()).hexdigest()[:12]


def _cached_train(cfg: TrainConfig, run_dir: Path) -> bool:
    cached = run_dir / "config.json"
    return cached.exists() and (run_dir / "metrics.json").exists() and \
        json.loads(cached.read_text()).get("train") == _canon(asdict(cfg))


def export_method(run_dir: Path, bundle: Path, method: Method, ds: Dataset, model_id: str) -> None:
    """Export with the method's device policy in the manifest and the public data mean as the device's μ
    (so the certificate measures revealed energy against the same μ an attacker uses)."""
    model, config = load_run(run_dir)
    mu = ds.x_train.mean(0).astype(np.float32)
    export_model(model, bundle, model_id=model_id, classes=config.get("classes", []),
                 raw_dtype=config.get("raw_dtype", "float32"), privacy=method.privacy,
                 extra_device_files={"public_mean": mu})


def policy_accuracy(bundle: Path, ds: Dataset, n: int, seed: int = 0, batch: int = 500) -> dict[str, Any]:
    """Accuracy with the bundle's device policy vs without it, same inputs and same random masks (paired)."""
    device, server = load_pair(bundle)
    idx = np.random.default_rng(seed + 11).permutation(len(ds.x_test))[:n]
    x, y = ds.x_test[idx], ds.y_test[idx]
    t0 = time.perf_counter()
    preds_pol: list[np.ndarray] = []
    preds_plain: list[np.ndarray] = []
    dropped: list[float] = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        pairs = device.encode_many_certified(xb, RandomMasks(seed + 31 + i), policy=device.policy)
        plain = device.encode_many(xb, RandomMasks(seed + 31 + i))
        preds_pol.append(server.predict_bytes([p.data for p, _ in pairs]).argmax(1))
        preds_plain.append(server.predict_bytes([p.data for p in plain]).argmax(1))
        dropped.extend(c.dropped_by_policy for _, c in pairs)
    a_pol = float((np.concatenate(preds_pol) == y).mean())
    a_plain = float((np.concatenate(preds_plain) == y).mean())
    return {"n": int(len(x)), "accuracy_policy": a_pol, "accuracy_plain": a_plain, "delta": a_pol - a_plain,
            "dropped_by_policy_mean": float(np.mean(dropped)), "policy": device.policy.to_dict(),
            "version": device.version, "seconds": round(time.perf_counter() - t0, 2)}


def constant_values(bundle: Path, x: np.ndarray) -> bool:
    """True when every transmitted non-zero value is (nearly) the same, as with 1-level quantization."""
    device, _ = load_pair(bundle)
    acts = device.activations(x)
    nz = acts[acts > 0]
    return bool(nz.size > 1 and nz.std() <= 1e-3 * np.sqrt((nz ** 2).mean()))


def _audit_settings(config: dict[str, Any]) -> Any:
    """An audit's settings as compared for reuse (where its checkpoints live does not change its result; a
    setting added since an audit was written counts at its default)."""
    defaults = {f.name: f.default for f in dataclass_fields(AuditConfig) if f.default is not MISSING}
    return _canon({k: v for k, v in {**defaults, **config}.items() if k != "checkpoint_dir"})


def run_methods(dataset: str, model: str, methods: list[Method], out: str | Path, audit_cfg: AuditConfig, *,
                train_cfg: TrainConfig | None = None, reuse: bool = True, progress: bool = True,
                policy_eval: int = 2000, max_policy_pools: int = 20,
                log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train/export/audit every method (cached); writes ``methods.json``, ``methods.md`` and ``frontier.png``.

    ``policy_eval``: test inputs on which a policy's accuracy cost is measured (paired with the same masks
    without the policy); the row's accuracy is the full-test accuracy of the base model plus that delta.
    ``max_policy_pools``: the audit's decoder cannot draw fresh masks every epoch through a (slow, per-request)
    policy; it cycles pools of policy-filtered payloads. So that a policy is not credited with a weaker
    attacker, policy rows use one pool per decoder epoch up to this many.
    Every row is audited by every registered attacker (three decoder families included), each trained to
    convergence from scratch against that row's final bundle.
    """
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise InputError(f"method names must be unique, got {names}")
    out = Path(out)
    base = replace(train_cfg or default_train_config(dataset, model), dataset=dataset, model=model)
    audit_cfg = replace(audit_cfg, dataset=dataset, policy="auto", max_revealed_energy=None)
    audit_cfg.validate()
    ds = load_dataset(dataset, audit_cfg.data_root)
    pools = max(audit_cfg.policy_pools, min(audit_cfg.decoder_budget().max_epochs, max_policy_pools))
    rows: list[dict[str, Any]] = []
    argv = shlex.join(["daonet", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("daonet") else None
    for i, method in enumerate(methods, start=1):
        tag = f"[{i}/{len(methods)} {method.name}]"
        cfg = method.train_config(base)
        cfg.validate()
        key = _train_key(cfg)
        run_dir, bundle, adir = out / "runs" / key, out / "bundles" / method.name, out / method.name
        acfg = audit_cfg if method.max_revealed_energy is None else replace(audit_cfg, policy_pools=pools)
        want_audit = _audit_settings(asdict(acfg))
        # each row's finished attackers (and a decoder still training) are kept: an interrupted study resumes
        acfg = replace(acfg, checkpoint_dir=acfg.checkpoint_dir or str(adir / "checkpoints"))
        if reuse and _cached_train(cfg, run_dir):
            log(f"{tag} reusing the trained model in {run_dir}")
        else:
            log(f"{tag} training: {method.describe()}")
            result = train(cfg, ds=ds, progress=progress)
            save_run(result, run_dir)
            log(f"{tag} trained: accuracy {result.metrics['test_accuracy']['mean']:.4f} in "
                f"{result.metrics['train_time_s']:.0f} s")
        export_method(run_dir, bundle, method, ds, f"{dataset}-{model}-{method.name}")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        device, _ = load_pair(bundle)
        report = None
        audit_json = adir / "audit.json"
        if reuse and audit_json.exists():
            old = json.loads(audit_json.read_text())
            if _audit_settings(old.get("config") or {}) == want_audit and \
                    old["bundle"]["version"] == device.version and \
                    old["bundle"].get("privacy_manifest") == _canon(method.privacy):
                report = old
                log(f"{tag} reusing the audit in {adir}")
        if report is None:
            log(f"{tag} auditing (attackers trained from scratch against this bundle)")
            res = run_audit(bundle, acfg, dataset=ds, progress=progress, log=log)
            try:
                write_report(res, adir)
            except ValueError as exc:  # the HTML figures can fail on degenerate data; audit.json is written first
                if not audit_json.exists():
                    raise
                log(f"{tag} [yellow]warning:[/] the audit's HTML report failed ({exc}); audit.json is complete")
            report = json.loads(audit_json.read_text())
        if report["best_attack"] is None:  # e.g. one process of an audit split by attack ran a baseline only
            log(f"{tag} [yellow]warning:[/] no attack ran (only baselines: {', '.join(report['attacks'])}), so the "
                "row has no best attack and is left out; its checkpoints are kept for a run with the attacks")
            continue
        row = frontier_row(report, metrics, method.drop_rate)
        metric = report["metric"]
        best = report["best_attack"]
        best_se = report["attacks"][best]["metrics"][metric].get("advantage_se") if best else None
        pol = None
        if method.max_revealed_energy is not None:
            pol_json = adir / "policy_accuracy.json"
            if reuse and pol_json.exists():
                pol = json.loads(pol_json.read_text())
                if not (pol.get("version") == device.version and pol.get("n") == min(policy_eval, len(ds.x_test))
                        and pol.get("policy") == _canon(method.privacy)):
                    pol = None
            if pol is None:
                log(f"{tag} measuring the policy's accuracy cost on {policy_eval} test inputs")
                pol = policy_accuracy(bundle, ds, policy_eval, seed=audit_cfg.seed)
                pol_json.write_text(json.dumps(pol, indent=2) + "\n")
            row["accuracy"] = row["accuracy"] + pol["delta"]
        row.update({
            "method": method.name, "family": method.family, "config": method.describe(),
            "max_revealed_energy": method.max_revealed_energy, "policy_accuracy": pol,
            "advantage": row["best"] - report["class_prior"], "advantage_se": best_se,
            "decoder_masks": "fresh every epoch" if method.max_revealed_energy is None else f"{pools} policy pools",
            "train_key": key,
        })
        rows.append(row)
        log(f"{tag} accuracy {row['accuracy']:.4f}, surviving {row['surviving']:.1f}, best attack {best} "
            f"{metric} {row['best']:.3f} vs class prior {row['class_prior']:.3f}: advantage {row['advantage']:+.3f}")
        write_methods(rows, out, ds.kind, f"{dataset} {model}", audit_cfg, base, [argv] if argv else [])
    return rows


# -- outputs -------------------------------------------------------------------------------------------
def undefended_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The reference: plain training without dropping. None when no such row was measured: then there is
    no target region and no accuracy gap to show (another drop rate must not pass for the undefended model)."""
    cands = [r for r in rows if r["family"] == "plain" and r.get("max_revealed_energy") is None
             and r["drop_rate"] == 0]
    return cands[0] if cands else None


LEARNED_FAMILIES = ("decoder_mlp", "decoder_conv", "decoder_adaptive")


def lower_bound_only(row: dict[str, Any]) -> bool:
    """True when not every learned attacker family ran on the row (e.g. a CPU run with the MLP decoder only):
    its advantage is then a lower bound on leakage and can never put the row in the target."""
    return not set(LEARNED_FAMILIES) <= set(row.get("decoders") or {})


def mark_target(rows: list[dict[str, Any]]) -> float | None:
    """Sets ``in_target`` on every row; returns the accuracy floor of the target region."""
    ref = undefended_row(rows)
    floor = ref["accuracy"] - TARGET_ACCURACY_DROP if ref else None
    for r in rows:
        r["lower_bound_only"] = lower_bound_only(r)
        r["in_target"] = bool(floor is not None and r["accuracy"] >= floor and r["advantage"] <= TARGET_ADVANTAGE
                              and not r["lower_bound_only"])
        r["accuracy_vs_undefended"] = r["accuracy"] - ref["accuracy"] if ref else None
    return floor


def methods_markdown(rows: list[dict[str, Any]], metric: str) -> str:
    head = (f"| method | config | accuracy | Δ acc vs undefended | surviving outputs | best attack | best {metric} | "
            f"class-prior {metric} | prediction-only {metric} | advantage over class prior | advantage over "
            f"prediction-only | MLP dec. | conv dec. | adaptive dec. | rMLE | all attackers converged | in target "
            "| train s | audit s |")
    lines = [head, "|" + "---|" * 19]

    def num(v: float | None, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    for r in rows:
        d = r.get("accuracy_vs_undefended")
        po = r.get("prediction_only")
        lines.append(
            f"| {r['method']} | {r['config']} | {r['accuracy']:.4f} | "
            f"{'–' if d is None else f'{d * 100:+.1f} pt'} | {r['surviving']:.1f} / {r['n_outputs']} | "
            f"{r['best_attack']} | {r['best']:.3f} | {r['class_prior']:.3f} | {num(po, '.3f')} | "
            f"{'≥ ' if r.get('lower_bound_only') else ''}{r['advantage']:+.3f} ± {r.get('advantage_se') or 0:.3f} | "
            f"{num(None if po is None else r['best'] - po, '+.3f')} | "
            f"{num(r['attacks'].get('decoder_mlp'), '.3f')} | {num(r['attacks'].get('decoder_conv'), '.3f')} | "
            f"{num(r['attacks'].get('decoder_adaptive'), '.3f')} | {num(r['attacks'].get('rmle'), '.3f')} | "
            f"{num(r.get('all_converged'), '')} | "
            f"{'yes' if r.get('in_target') else 'no'} | {num(r.get('train_s'), '.0f')} | {r['audit_s']:.0f} |")
    return "\n".join(lines) + "\n"


def merge_methods(parts: list[Path], out: Path, title: str, commands: list[str]) -> list[dict[str, Any]]:
    """Join frontier slices run in parallel (each a ``run_methods`` output folder) into one table and plot."""
    rows: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None
    for part in parts:
        data = json.loads((part / "methods.json").read_text())
        first = first or data
        rows += data["rows"]
    if first is None:
        raise InputError("no frontier slices to merge")
    kind = "image" if first["metric"] == "ssim" else "signal"
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in first["audit_config"].items()}
    audit_cfg = AuditConfig(**fields)
    train_cfg = TrainConfig(**first["train_base"])
    write_methods(rows, out, kind, title, audit_cfg, train_cfg, commands)
    return rows


def _label_offset(r: dict[str, Any], placed: list[tuple[float, float]], span: tuple[float, float]) -> tuple[int, int]:
    """A label offset (points) that keeps the label away from labels already placed (crowded clusters)."""
    x, y = r["advantage"] / span[0], r["accuracy"] / span[1]
    options = [(5, 3), (5, -9), (-5, 6), (5, 10), (5, -16), (-5, -12)]
    scale = 1 / 500  # ~ one point, in axis fractions on an ~8 inch axis

    def crowd(o: tuple[int, int]) -> float:
        lx, ly = x + o[0] * scale, y + o[1] * scale * 1.5
        return min(((lx - px) ** 2 + (ly - py) ** 2 for px, py in placed), default=1.0)

    best = max(options, key=crowd)
    placed.append((x + best[0] * scale, y + best[1] * scale * 1.5))
    return best


def frontier_plot(rows: list[dict[str, Any]], metric: str, title: str, path: Path) -> Path:
    """Accuracy vs the best attack's advantage over the class prior; one colour/marker per method family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = mark_target(rows)
    ref = undefended_row(rows)
    fig, ax = plt.subplots(figsize=(11, 5.6))
    advs = [r["advantage"] for r in rows]
    accs = [r["accuracy"] for r in rows]
    xlo = min(-0.02, min(advs) - 0.03)
    xhi = max(advs) + 0.05
    ylo = min(accs) - 0.02
    yhi = max(accs) + 0.01
    if floor is not None:
        ax.fill_between([xlo, TARGET_ADVANTAGE], floor, yhi, color="tab:green", alpha=0.12, lw=0,
                        label=f"target: advantage ≤ {TARGET_ADVANTAGE}, accuracy ≥ undefended − 1 pt")
    plain = sorted((r for r in rows if r["family"] == "plain"), key=lambda r: r["drop_rate"])
    if len(plain) > 1:
        ax.plot([r["advantage"] for r in plain], [r["accuracy"] for r in plain], "-", color="0.6", lw=1, zorder=1)
    seen: set[str] = set()
    placed: list[tuple[float, float]] = []
    for r in rows:
        colour, marker, label = FAMILIES[r["family"]]
        ax.errorbar(r["advantage"], r["accuracy"], xerr=r.get("advantage_se") or 0, fmt=marker, color=colour,
                    ms=9 if marker == "*" else 7, mec="k", mew=0.5, elinewidth=0.8, capsize=2, zorder=3,
                    label=label if r["family"] not in seen else None)
        seen.add(r["family"])
        ax.annotate(r["method"], (r["advantage"], r["accuracy"]), textcoords="offset points",
                    xytext=_label_offset(r, placed, (xhi - xlo, yhi - ylo)), fontsize=7)
    bounds = [r for r in rows if r.get("lower_bound_only")]
    for i, r in enumerate(bounds):  # not every attacker family ran: the true point lies further right
        ax.annotate("", xy=(r["advantage"] + 0.05 * (xhi - xlo), r["accuracy"]), xytext=(r["advantage"], r["accuracy"]),
                    arrowprops={"arrowstyle": "->", "color": "0.35", "lw": 0.9}, zorder=2)
        if i == 0:
            ax.plot([], [], ls="none", marker=r"$\rightarrow$", color="0.35", ms=10,
                    label="lower bound (not every attacker family ran)")
    if ref is not None:
        ax.plot(ref["advantage"], ref["accuracy"], marker="*", ms=20, mfc="none", mec="k", mew=1.2, ls="none",
                label="undefended (p = 0)", zorder=4)
    ax.axvline(0, color="0.4", ls=":", lw=1)
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    ax.set_xlabel(f"best attack's {metric.upper()} advantage over the class prior (lower = more private)")
    ax.set_ylabel("test accuracy (as served)")
    ax.set_title(f"{title}: privacy-accuracy frontier by method (attackers retrained per model)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_methods(rows: list[dict[str, Any]], out: Path, kind: str, title: str, audit_cfg: AuditConfig,
                  train_cfg: TrainConfig, commands: list[str]) -> None:
    """``methods.json`` (every row, budgets, commands), ``methods.md`` and ``frontier.png``."""
    metric = primary_metric(kind)
    out.mkdir(parents=True, exist_ok=True)
    frontier_plot(rows, metric, title, out / "frontier.png")  # also marks the target region on the rows
    ref = undefended_row(rows)
    (out / "methods.json").write_text(json.dumps({
        "title": title, "metric": metric, "rows": rows, "commands": commands,
        "target": {"max_advantage": TARGET_ADVANTAGE, "max_accuracy_drop": TARGET_ACCURACY_DROP,
                   "undefended": ref["method"] if ref else None},
        "audit_config": asdict(audit_cfg), "train_base": asdict(train_cfg),
    }, indent=2, default=json_default) + "\n")
    (out / "methods.md").write_text(methods_markdown(rows, metric))
