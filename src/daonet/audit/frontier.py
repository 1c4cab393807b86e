"""The accuracy-vs-privacy frontier: train at several drop rates, export, audit each, plot them together.

Everything is cached under ``out``: ``runs/pX`` (training), ``bundles/pX`` (export), ``pX/`` (audit). A cached
step is reused only when its configuration is identical, so editing an option re-does just what changed.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..data import load_dataset
from ..exporting import export_run
from ..train import TASKS, TrainConfig, save_run, train
from .core import AuditConfig, json_default, load_examples, load_pair, run_audit, write_report
from .metrics import primary_metric
from .report import example_grid, frontier_markdown, render_frontier_html


def default_train_config(dataset: str, model: str) -> TrainConfig:
    """The sweep's settings for known (dataset, model) pairs (:data:`daonet.train.TASKS`), else the defaults."""
    return replace(TASKS.get(f"{dataset}-{model}", TrainConfig(dataset=dataset, model=model)))


def frontier_row(report: dict[str, Any], metrics: dict[str, Any] | None, drop_rate: float) -> dict[str, Any]:
    metric = report["metric"]
    attacks = {k: v["metrics"][metric]["mean"] for k, v in report["attacks"].items()
               if k not in ("data_mean", "class_prior")}
    acc = metrics["test_accuracy"]["mean"] if metrics else report["accuracy"]
    cert = report["certificate"]
    learned = {k: {f: v.get(f) for f in ("public_train", "epochs_run", "best_epoch", "converged", "seconds", "device")}
               for k, v in report["budgets"].items() if k.startswith("decoder_")}
    return {
        "drop_rate": drop_rate, "accuracy": acc, "accuracy_audited": report["accuracy"],
        "accuracy_std": metrics["test_accuracy"]["std"] if metrics else None,
        "surviving": report["surviving"]["mean"], "n_outputs": report["bundle"]["n_outputs"],
        "attacks": attacks, "best_attack": report["best_attack"], "best": report["best"],
        "class_prior": report["class_prior"], "data_mean": report["data_mean"],
        "prediction_only": report.get("prediction_only"),
        "revealed_energy": cert["revealed_energy_public_mu"]["mean"] if "revealed_energy" in cert else None,
        "revealed_energy_device": cert["revealed_energy"]["mean"] if "revealed_energy" in cert else None,
        "rank": cert["rank"]["mean"] if "rank" in cert else None,
        "train_s": metrics.get("train_time_s") if metrics else None,
        "audit_s": report["timing_s"].get("compute_s", report["timing_s"]["total_s"]),  # incl. resumed attacks
        "decoders": learned, "all_converged": report.get("all_converged"),
        "budget": report.get("budget", {}).get("name"), "warnings": report.get("warnings", []),
        "version": report["bundle"]["version"],
    }


def run_frontier(dataset: str, model: str, drop_rates: list[float], out: str | Path, audit_cfg: AuditConfig, *,
                 train_cfg: TrainConfig | None = None, reuse: bool = True, progress: bool = True,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train/export/audit at every drop rate (cached) and write ``frontier.{json,md}`` and ``report.html``."""
    out = Path(out)
    base = train_cfg or default_train_config(dataset, model)
    base = replace(base, dataset=dataset, model=model)
    audit_cfg = replace(audit_cfg, dataset=dataset)
    audit_cfg.validate()
    ds = load_dataset(dataset, audit_cfg.data_root)
    rows, grids, commands = [], [], []
    argv = shlex.join(["daonet", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("daonet") else None
    for p in drop_rates:
        tag = f"p{p:g}"
        run_dir, bundle, adir = out / "runs" / tag, out / "bundles" / tag, out / tag
        cfg = replace(base, drop_rate=p)
        cfg.validate()
        cfg_dict = json.loads(json.dumps(asdict(cfg)))
        cached = run_dir / "config.json"
        if reuse and cached.exists() and (run_dir / "metrics.json").exists() and \
                json.loads(cached.read_text()).get("train") == cfg_dict:
            log(f"[{tag}] reusing the trained model in {run_dir}")
        else:
            result = train(cfg, ds=ds, progress=progress)
            save_run(result, run_dir)
            export_run(run_dir, bundle)
            log(f"[{tag}] trained: accuracy {result.metrics['test_accuracy']['mean']:.4f} "
                f"in {result.metrics['train_time_s']:.0f} s")
        if not (bundle / "device").is_dir():
            export_run(run_dir, bundle)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        device, _ = load_pair(bundle)
        audit_json = adir / "audit.json"
        want = json.loads(json.dumps(asdict(audit_cfg), default=json_default))
        report = None
        if reuse and audit_json.exists() and (adir / "examples.npz").exists():
            old = json.loads(audit_json.read_text())
            if old.get("config") == want and old["bundle"]["version"] == device.version:
                report = old
                log(f"[{tag}] reusing the audit in {adir}")
        if report is None:
            audited = run_audit(bundle, audit_cfg, dataset=ds, progress=progress, log=log)
            write_report(audited, adir)
            report = json.loads(audit_json.read_text())
        rows.append(frontier_row(report, metrics, p))
        ex = load_examples(adir / "examples.npz")
        k = min(4, len(ex["x"]))
        ex = {**ex, "x": ex["x"][:k], "h": ex["h"][:k], "recs": {n: v[:k] for n, v in ex["recs"].items()}}
        grids.append((f"p = {p:g}", example_grid(ex)))
        commands.append(f"daonet train --dataset {dataset} --model {model} --drop-rate {p:g} --epochs {cfg.epochs} "
                        f"--batch-size {cfg.batch_size} --out {run_dir}\n"
                        f"daonet export {run_dir} --out {bundle}\n"
                        f"daonet audit {bundle} --dataset {dataset} --out {adir} --n-test {audit_cfg.n_test} "
                        f"--public-size {audit_cfg.public_size or 0} --decoder-epochs {audit_cfg.decoder_epochs} "
                        f"--rmle-steps {audit_cfg.rmle_steps} --seed {audit_cfg.seed}")
        write_frontier(rows, out, ds.kind, f"{dataset} {model}", ([argv] if argv else []) + commands, grids)
    return rows


def write_frontier(rows: list[dict[str, Any]], out: Path, kind: str, title: str, commands: list[str],
                   grids: list[tuple[str, str]]) -> None:
    metric = primary_metric(kind)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.json").write_text(json.dumps({"title": title, "metric": metric, "rows": rows,
                                                   "commands": commands}, indent=2, default=json_default) + "\n")
    (out / "frontier.md").write_text(frontier_markdown(rows, metric))
    (out / "report.html").write_text(render_frontier_html(rows, metric, title, commands, grids))
