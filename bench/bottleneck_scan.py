"""Accuracy and the per-request bound beyond the class, over epsilon x bottleneck weight x drop rate: a scan that
trains only (no audit), to pick the rows worth a full audit (``daonet plan --grid ...``).

    python bench/bottleneck_scan.py                                   # the rows of docs/privacy-ldp.md
    python bench/bottleneck_scan.py --rows 256:0.03:0.5:80 none:0:0:40 --dataset ecg5000 --model cnn1d

A row is ``EPSILON:WEIGHT:DROP_RATE:EPOCHS`` (``none`` = the mechanism off, so no bound). Each row is trained
with the dataset's recipe otherwise (seed 0; without the recipe's min-max adversary or NoPeek penalty unless
``--recipe-defences``, so a row measures the mechanism and the bottleneck alone) and reports the test accuracy
(mean over mask draws, on the whole test split) and the bound in nats per request
(:func:`daonet.nn.defences.conditional_information`: mean and 95th percentile over the test requests, class
references fitted on the training split).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from daonet.data import load_dataset
from daonet.train import recommended_config, train

ROWS = ("none:0:0:80", "none:0:0.5:80", "none:0:0.9:40", "128:0:0.5:80", "128:0.01:0.5:80", "256:0:0.5:80",
        "256:0.01:0.5:80", "256:0.03:0.5:80", "256:0.1:0.5:80", "1024:0:0.5:80", "1024:0.01:0.5:80",
        "4096:0:0.5:80")


def parse_row(row: str) -> tuple[float | None, float, float, int]:
    try:
        eps, weight, rate, epochs = row.split(":")
        return (None if eps == "none" else float(eps)), float(weight), float(rate), int(epochs)
    except ValueError:
        raise SystemExit(f"a row is EPSILON:WEIGHT:DROP_RATE:EPOCHS (e.g. 256:0.03:0.5:80), got {row!r}") from None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ecg5000")
    p.add_argument("--model", default="cnn1d")
    p.add_argument("--rows", nargs="*", default=list(ROWS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the same numbers on any machine)")
    p.add_argument("--recipe-defences", action="store_true", help="keep the recipe's adversary / NoPeek weights")
    p.add_argument("--out", type=Path, default=None, help="write bottleneck_scan.json here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset)
    results = []
    print("| epsilon | bottleneck weight | p | epochs | test accuracy | nats mean | nats p95 | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in args.rows:
        eps, weight, rate, epochs = parse_row(row)
        kwargs = {} if eps is None else {"ldp_epsilon": eps}
        plain = {} if args.recipe_defences else {"adversary_weight": 0.0, "nopeek_weight": 0.0}
        cfg = recommended_config(args.dataset, args.model, drop_rate=rate, epochs=epochs, bottleneck_weight=weight,
                                 model_kwargs=kwargs, **plain)
        t0 = time.perf_counter()
        res = train(cfg, ds=ds)
        info = res.metrics.get("conditional_information")
        acc = res.metrics["test_accuracy"]["mean"]
        results.append({"row": row, "accuracy": acc, "conditional_information": info,
                        "epsilon": None if eps is None else res.model.first.noise_spec()["epsilon"]})
        nats = ("-", "-") if info is None else (f"{info['nats_mean']:.2f}", f"{info['nats_p95']:.2f}")
        print(f"| {'none' if eps is None else f'{eps:g}'} | {weight:g} | {rate:g} | {epochs} | {acc:.3f} | {nats[0]} | "
              f"{nats[1]} | {time.perf_counter() - t0:.0f} |", flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bottleneck_scan.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
