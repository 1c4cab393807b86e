"""The spread of a default recipe over training seeds: accuracy, surviving outputs and leakage.

    python bench/seed_spread.py --dataset ecg5000 --seeds 0,1,2 --out reports/seeds-ecg5000
    python bench/seed_spread.py --dataset mnist --seeds 0,1,2 --no-audit --out reports/seeds-mnist

A shipped default is one artifact: its audited numbers belong to it. What another training run of the same
recipe gives (another seed, another machine) is a different model; this script measures how different, so the
README can put the artifact's own numbers beside the recipe's mean ± sd. Each seed trains the recipe
(``daonet.train.recommended_config``), exports it and, unless ``--no-audit``, runs the same audit as the shipped
default (``--budget full``: every learned attacker to convergence; leakage = best attack minus the label-only
decoder). Writes ``seeds.json`` and ``seeds.md`` into ``--out``; every seed's run, bundle and audit are kept there,
so a rerun reuses finished seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits

from daonet.audit import AuditConfig, run_audit, write_report
from daonet.audit_report import read_report
from daonet.data import load_dataset
from daonet.defaults import DefaultBundle, default_bundle
from daonet.device import DeviceModel
from daonet.exporting import export_run
from daonet.train import recommended_config, save_run, train


def one_seed(default: DefaultBundle, seed: int, out: Path, audit: bool, budget: str) -> dict[str, Any]:
    where = out / f"seed{seed}"
    run_dir, bundle, audit_dir = where / "run", where / "bundle", where / "audit"
    if not (run_dir / "metrics.json").exists():
        save_run(train(recommended_config(default.dataset, default.model, seed=seed), progress=True), run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if not (bundle / "device").exists():
        export_run(run_dir, bundle, model_id=default.name)  # same id: a rebuilt artifact gets the same version
    version = DeviceModel.load(bundle / "device").version
    shipped = DeviceModel.load(default.root / "device").version
    row: dict[str, Any] = {"seed": seed, "accuracy": metrics["test_accuracy"]["mean"], "version": version,
                           "surviving": metrics["surviving_outputs"]["mean"], "train_s": metrics["train_time_s"],
                           "is_the_artifact": version == shipped}
    if audit:
        report = audit_dir / "audit.json"
        if version == shipped and default.report.exists():  # this seed rebuilt the shipped bytes: same audit
            report = default.report
        elif not report.exists():
            cfg = AuditConfig(dataset=default.dataset, budget=budget, checkpoint_dir=str(audit_dir / "checkpoints"))
            write_report(run_audit(bundle, cfg, dataset=load_dataset(default.dataset)), audit_dir)
        s = read_report(report)
        row.update(audit_accuracy=s.accuracy, audit_surviving=s.surviving.mean, best_attack=s.best_attack, best=s.best,
                   label_only=s.label_only, leakage=s.leakage.mean if s.leakage else None, class_prior=s.class_prior,
                   lower_bound=s.is_lower_bound, metric=s.metric,
                   compute_s=s.compute_s)
    return row


def mean_sd(values: list[float], digits: int = 3) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows: list[dict[str, Any]], artifact: dict[str, Any] | None, audit: bool) -> str:
    head = "| | accuracy | surviving outputs |" + (" best attack | label-only | leakage |" if audit else "")
    lines = [head, "|---|---|---|" + ("---|---|---|" if audit else "")]
    keys = ["accuracy", "surviving"] + (["best", "label_only", "leakage"] if audit else [])

    def fmt(r: dict[str, Any], k: str) -> str:
        v = r.get(k)
        if v is None:
            return "–"
        if k == "leakage":
            return ("≥ " if r.get("lower_bound") else "") + f"{v:+.3f}"
        return f"{v:.1f}" if k == "surviving" else f"{v:.3f}"

    for r in rows:
        same = " (rebuilt the shipped artifact byte for byte)" if r.get("is_the_artifact") else ""
        lines.append(f"| seed {r['seed']}{same} | " + " | ".join(fmt(r, k) for k in keys) + " |")
    lines.append(f"| **recipe, mean ± sd over {len(rows)} seeds** | " + " | ".join(
        mean_sd([r[k] for r in rows], 1 if k == "surviving" else 3) if all(r.get(k) is not None for r in rows)
        else "–" for k in keys) + " |")
    if artifact is not None:
        lines.append("| **shipped artifact** (its own audit: 1000 requests, one mask draw) | "
                     + " | ".join(fmt(artifact, k) for k in keys) + " |")
    note = ("\n≥: a lower bound (the audit warned that a learned attacker or the budget curve was still improving)."
            if any(r.get("lower_bound") for r in rows) else "")
    return "\n".join(lines) + "\n" + note + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=("mnist", "ecg5000"), required=True)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (at least 2)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--no-audit", action="store_true", help="accuracy and surviving outputs only (no attackers)")
    ap.add_argument("--budget", default="full", choices=("quick", "full"))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        ap.error("--seeds needs at least two different seeds")
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # numpy's BLAS too (the audit's white-box solvers)
    default = default_bundle(args.dataset)
    rows = [one_seed(default, s, args.out, not args.no_audit, args.budget) for s in seeds]
    artifact = None
    if default.report.exists():
        s = read_report(default.report)
        artifact = {"seed": "artifact", "accuracy": s.accuracy, "surviving": s.surviving.mean, "best": s.best,
                    "label_only": s.label_only, "leakage": s.leakage.mean if s.leakage else None, "version": s.version,
                    "lower_bound": s.is_lower_bound}
    md = (f"# {default.name}: the recipe over training seeds vs the shipped artifact\n\n"
          f"`python bench/seed_spread.py --dataset {args.dataset} --seeds {args.seeds}"
          f"{' --no-audit' if args.no_audit else ''} --out {args.out}`; accuracy and surviving outputs on the "
          "full test set (training's own evaluation, 5 mask draws); leakage = best converged attack minus the "
          f"label-only decoder ({rows[0].get('metric', '')}, budget {args.budget}).\n\n"
          + table(rows, artifact, not args.no_audit))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seeds.json").write_text(json.dumps({"rows": rows, "artifact": artifact}, indent=2) + "\n")
    (args.out / "seeds.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
