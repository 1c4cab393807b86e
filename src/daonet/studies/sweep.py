"""Accuracy over drop rates (the paper's "dropping maintains accuracy" claim, measured)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..data import load_dataset
from ..train import TASKS, train

DROP_RATES = (0.0, 0.5, 0.75, 0.9, 0.95)


def run_sweep(tasks: list[str], drop_rates: tuple[float, ...] = DROP_RATES, epochs: int | None = None,
              out: Path | None = None, progress: bool = True) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in tasks:
        base = TASKS[name]
        ds = load_dataset(base.dataset)
        for p in drop_rates:
            cfg = replace(base, drop_rate=p, epochs=epochs or base.epochs)
            m = train(cfg, ds=ds, progress=progress).metrics
            rows.append({
                "task": name, "drop_rate": p, "accuracy": m["test_accuracy"]["mean"],
                "accuracy_std": m["test_accuracy"]["std"], "surviving_mean": m["surviving_outputs"]["mean"],
                "n_outputs": m["n_outputs"], "epochs": cfg.epochs, "train_time_s": m["train_time_s"],
            })
            if out:
                write_table(rows, out)
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    base = {r["task"]: r["accuracy"] for r in rows if r["drop_rate"] == 0}
    lines = ["| task | drop p | accuracy (mean ± std, 5 mask draws) | Δ vs p=0 | surviving outputs | epochs | "
             "train s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        delta = f"{(r['accuracy'] - base[r['task']]) * 100:+.2f} pt" if r["task"] in base else "n/a"
        lines.append(f"| {r['task']} | {r['drop_rate']} | {r['accuracy']:.4f} ± {r['accuracy_std']:.4f} | {delta} "
                     f"| {r['surviving_mean']:.1f} / {r['n_outputs']} | {r['epochs']} | {r['train_time_s']:.0f} |")
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "sweep.md").write_text(to_markdown(rows))
