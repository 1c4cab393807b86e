"""Near-duplicate inputs under fresh, keyed and similarity-keyed masks (streaming sensors).

    python bench/near_duplicates.py    # writes docs/results/near-duplicates.md and .png

Models (trained once if missing, cached under .daonet-cache/near-duplicates): the demo's MNIST mlp
(the default operating point, p = 0.5 + adversarial training) and the ECG5000 cnn1d at its default
(p = 0.9). For N held-out test inputs, each input is captured K times (K = 1, 5, 20) under a noise
model — MNIST: ±2 grey levels; ECG5000: 1 % Gaussian, and overlapping windows (the beat shifted by up
to ±2 samples, edge-padded, plus 1 % Gaussian) — every capture goes through the real device runtime
and the real server parser, and the server pools the K payloads of one input. Attacks (white-box,
mask-aware): minimum-norm least squares and rMLE over the stacked equations, scored against the clean
input (SSIM for MNIST, Pearson correlation for ECG5000), next to the single-query value and the class
prior (class-conditional public mean of the server's predicted class).

Also measured: how often a re-capture crosses a cell boundary of the similarity hash (per group and
for the whole mask) at several widths, how often unrelated inputs share a cell, and what an attacker
gains when it knows the keep-mask (the limit of masks shared by many inputs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from daonet.audit import attacks as atk  # noqa: E402
from daonet.audit.metrics import evaluate, primary_metric  # noqa: E402
from daonet.audit.repeated import (  # noqa: E402
    Captures,
    exact_replays,
    gaussian,
    grey_levels,
    known_mask_rmle,
    repeated_queries,
    shifted,
    straddle,
)
from daonet.data import Dataset, load_dataset  # noqa: E402
from daonet.device.masks import KeyedMasks, MaskSource, RandomMasks, SimilarityKeyedMasks  # noqa: E402
from daonet.device.runtime import DeviceModel  # noqa: E402
from daonet.server.model import ServerModel  # noqa: E402

CACHE = Path(".daonet-cache/near-duplicates")
BENCH_KEY = hashlib.sha256(b"daonet-bench-near-duplicates-device-key").digest()  # simulated device key
WIDTHS = (0.1, 0.25, 0.5, 1.0, 2.0)


# name -> (data set, training overrides of the zoo default; None: the demo's cached model)
MODELS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "mnist-mlp": ("mnist", None),  # the default operating point (p = 0.5 + adversarial training)
    "mnist-mlp-p0.9": ("mnist", {"drop_rate": 0.9, "adversary_weight": 0.0, "epochs": 5}),  # plain dropping
    "ecg5000-cnn1d": ("ecg5000", {}),  # the default: plain p = 0.9
}


def ensure_bundle(name: str, cache: Path) -> Path:
    """The bundle of model ``name`` (see MODELS): a row of the study pipeline, trained and exported once."""
    from daonet.studies.demo import ensure_bundles
    from daonet.studies.pipeline import ExportOptions, Row, run_row
    from daonet.train import recommended_config

    dataset, overrides = MODELS[name]
    if overrides is None:
        return ensure_bundles(cache / name, progress=False)[0]
    cfg = recommended_config(dataset, name.split("-")[1], **overrides)
    return run_row(Row(cfg, ExportOptions(model_id=name)), cache / name).bundle


class Wire:
    """What the server receives: device runtime -> payload bytes -> server parser -> dense vectors."""

    def __init__(self, device: DeviceModel, server: ServerModel) -> None:
        self.device, self.server = device, server

    def received(self, data: list[bytes]) -> tuple[np.ndarray, list[Any]]:
        parsed = [self.server.parse(b) for b in data]
        h = np.zeros((len(parsed), self.server.n_outputs), np.float32)
        for i, p in enumerate(parsed):
            h[i, p.indices] = p.values
        return h, parsed

    def observe(self, x: np.ndarray, masks: MaskSource) -> np.ndarray:
        return self.received([p.data for p in self.device.encode_many(x, masks)])[0]

    def observe_mask(self, x: np.ndarray, keep: np.ndarray) -> np.ndarray:
        return self.received([p.data for p in self.device.encode_many(x, mask=keep)])[0]


def measure(name: str, args: argparse.Namespace, log=print) -> dict[str, Any]:
    t0 = time.perf_counter()
    dataset = MODELS[name][0]
    bundle = ensure_bundle(name, Path(args.cache))
    device, server = DeviceModel.load(bundle / "device"), ServerModel.load(bundle / "server")
    ds: Dataset = load_dataset(dataset)
    kind, metric = ds.kind, primary_metric(ds.kind)
    rng = np.random.default_rng(args.seed)
    idx = rng.permutation(len(ds.x_test))[: args.n]
    x, y = ds.x_test[idx], ds.y_test[idx]
    x_pub, y_pub = ds.x_train[: args.public], ds.y_train[: args.public]
    n = int(np.prod(device.input_shape))
    mu = x_pub.reshape(len(x_pub), -1).mean(0).astype(np.float64)
    class_means = np.stack([x_pub[y_pub == c].reshape(-1, n).mean(0) for c in range(ds.n_classes)])
    know = atk.ServerKnowledge.from_device(device, kind, device.activations(x_pub[:2000]))
    wire = Wire(device, server)

    # the class prior: the server's prediction for one fresh-mask query of the clean input
    h1, parsed = wire.received([p.data for p in device.encode_many(x, RandomMasks(args.seed + 1))])
    pred = server.predict_proba(parsed).argmax(1)
    prior = class_means[pred].astype(np.float32)
    accuracy = float((pred == y).mean())

    def score(xv: np.ndarray, r: np.ndarray) -> float:
        return float(evaluate(kind, xv, r.reshape(xv.shape))[metric].mean())

    x_val = x_pub[:64]
    h_val = wire.observe(x_val, RandomMasks(args.seed + 2))
    lam, _ = atk.tune_lambda(know, h_val, x_val, mu, score, naive=False, steps=args.rmle_steps,
                             init=atk.min_norm(know, h_val, mu))
    width = args.width_mnist if dataset == "mnist" else args.width_ecg
    version = device.version
    masks: dict[str, Any] = {
        "fresh": lambda: RandomMasks(args.seed + 10),
        "keyed": lambda: KeyedMasks(key=BENCH_KEY, model_version=version),
        "similarity-keyed": lambda: SimilarityKeyedMasks(key=BENCH_KEY, model_version=version, width=width,
                                                         groups=args.groups),
    }
    noisy: list[Captures] = [grey_levels(2)] if dataset == "mnist" else [gaussian(0.01), shifted(2, 0.01)]
    log(f"{dataset}: {device.model_id} p={device.drop_rate}, {len(x)} inputs, lambda {lam:g}, width {width}")
    common = {"baseline": prior, "baseline_name": "class prior", "rmle_lambda": lam, "rmle_steps": args.rmle_steps,
              "seed": args.seed}
    res = repeated_queries(wire.observe, know, x, mu, kind, masks=masks, captures=noisy, ks=args.ks, **common)
    replays = repeated_queries(wire.observe, know, x, mu, kind, masks=masks, captures=[exact_replays()],
                               ks=[max(args.ks)], **common)
    res.rows = replays.rows + res.rows
    log(res.to_markdown())

    # the hash itself: boundary crossings vs width, cell sharing between unrelated inputs, pooled leak at K max
    sweep = []
    xs_small = x[: args.n_sweep]
    for w in WIDTHS:
        sim = SimilarityKeyedMasks(key=BENCH_KEY, model_version=version, width=w, groups=args.groups)
        for cap in noisy:
            st = straddle(sim, xs_small, cap, max(args.ks), labels=y[: args.n_sweep], seed=args.seed)
            pooled = repeated_queries(wire.observe, know, xs_small, mu, kind,
                                      masks={"similarity-keyed": lambda s=sim: s}, captures=[cap],
                                      ks=[max(args.ks)], baseline=prior[: args.n_sweep], seed=args.seed)
            row = pooled.rows[-1]
            sweep.append({**asdict(st), "k": max(args.ks), "surviving": row.surviving,
                          "surviving_union": row.surviving_union, "min_norm": row.min_norm})
            log(f"  width {w}: {cap.name}: group straddle {st.group_straddle:.4f}, mask changed "
                f"{st.mask_changed:.3f}, unrelated share {st.unrelated_shared:.3f}, union {row.surviving_union:.1f}")

    # the limit of coarse cells: an attacker that knows each request's keep-mask
    keep = RandomMasks(args.seed + 3).masks(device.validate(x), device.n_outputs, device.drop_rate)
    hk = wire.observe_mask(x, keep)
    mn = atk.min_norm(know, hk, mu)
    unknown = atk.regularized(know, hk, mu, lam, steps=args.rmle_steps, init=mn)
    known = known_mask_rmle(know, hk, keep, mu, lam, steps=args.rmle_steps, init=mn)
    s_prior = evaluate(kind, x, prior.reshape(x.shape))[metric]
    known_mask = {"rmle_mask_unknown": score(x, unknown), "rmle_mask_known": score(x, known),
                  "class_prior": float(s_prior.mean()),
                  "kept_but_zero": float((keep & (hk == 0)).sum(1).mean()), "surviving": float((hk > 0).sum(1).mean())}
    log(f"  known mask: {known_mask}")

    # utility: accuracy per device key (a shared mask is drawn once per cell, so it varies more by key)
    acc_idx = np.random.default_rng(args.seed + 5).permutation(len(ds.x_test))[: args.n_acc]
    xa, ya = ds.x_test[acc_idx], ds.y_test[acc_idx]
    keys = [hashlib.sha256(f"daonet-bench-key-{i}".encode()).digest() for i in range(args.keys)]
    sources: dict[str, list[MaskSource]] = {
        "fresh": [RandomMasks(100 + i) for i in range(args.keys)],
        "keyed": [KeyedMasks(key=k, model_version=version) for k in keys],
        **{f"similarity-keyed, width {w:g}": [SimilarityKeyedMasks(key=k, model_version=version, width=w,
                                                                   groups=args.groups) for k in keys]
           for w in WIDTHS},
    }
    accuracy_by_key = {}
    for label, srcs in sources.items():
        accs = []
        for src in srcs:
            _, parsed_a = wire.received([p.data for p in device.encode_many(xa, src)])
            accs.append(float((server.predict_proba(parsed_a).argmax(1) == ya).mean()))
        accuracy_by_key[label] = {"mean": float(np.mean(accs)), "min": float(np.min(accs)),
                                  "max": float(np.max(accs)), "std": float(np.std(accs))}
        log(f"  accuracy {label}: {accuracy_by_key[label]}")
    return {"dataset": dataset, "model_id": device.model_id, "version": version, "drop_rate": device.drop_rate,
            "n_outputs": device.n_outputs, "input_size": n, "accuracy_on_inputs": accuracy, "width": width,
            "groups": args.groups, "lambda": lam, "result": res.to_dict(), "markdown": res.to_markdown(),
            "sweep": sweep, "known_mask": known_mask, "accuracy_by_key": accuracy_by_key, "n_acc": len(xa),
            "seconds": round(time.perf_counter() - t0, 1)}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2))
    axes = np.atleast_1d(axes)
    colors = {"fresh": "tab:red", "keyed": "tab:orange", "similarity-keyed": "tab:green"}
    for ax, r in zip(axes, results, strict=True):
        res = r["result"]
        caps = [c for c in dict.fromkeys(row["captures"] for row in res["rows"]) if c != "exact replays"]
        for ci, cap in enumerate(caps):
            for label, color in colors.items():
                rows = [row for row in res["rows"] if row["captures"] == cap and row["masks"] == label]
                ax.plot([row["k"] for row in rows], [row["rmle"] for row in rows], marker="o", color=color,
                        linestyle="-" if ci == 0 else "--", label=f"{label}, {cap}")
        ax.axhline(res["single_query"]["rmle"], color="black", linewidth=0.8, label="single query (clean input)")
        ax.axhline(res["baseline"], color="grey", linestyle=":", label="class prior")
        ax.set_xscale("log")
        ax.set_xticks(res["settings"]["ks"], [str(k) for k in res["settings"]["ks"]])
        ax.set_xlabel("K captures pooled by the server")
        ax.set_ylabel("rMLE " + ("SSIM" if res["metric"] == "ssim" else "correlation"))
        ax.set_title(f"{r['model_id']} (p = {r['drop_rate']})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(results: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    cmd = "python bench/near_duplicates.py " + " ".join(sys.argv[1:])
    out = [
        "# Near-duplicate inputs under fresh, keyed and similarity-keyed masks",
        "",
        f"Generated by `{cmd.strip()}` (CPU, {torch.get_num_threads()} torch thread). What the masks are and "
        "how to read this: [masks.md](../masks.md).",
        "",
        f"Each of {args.n} held-out test inputs is captured K times; the server pools the K payloads of one input "
        "and attacks the stacked equations (min-norm least squares, rMLE with the prior weight tuned on public "
        "data), scored against the clean input. *Surviving union*: distinct outputs that survived in any of the "
        "K payloads (the equations the server holds). *Identical payloads*: fraction of inputs whose K payloads "
        "were byte-for-byte the same. *rMLE − prior*: paired advantage over the class-conditional mean of the "
        "predicted class.",
        "",
    ]
    for r in results:
        metric = "SSIM" if r["result"]["metric"] == "ssim" else "Pearson correlation"
        out += [f"## {r['model_id']} (p = {r['drop_rate']}, {r['n_outputs']} outputs, {metric})", "",
                f"Similarity-keyed masks: width {r['width']}, {r['groups']} groups, 1 projection per group. "
                f"rMLE prior weight {r['lambda']:g}. {r['seconds']:.0f} s.", "", r["markdown"], ""]
        out += [f"### Cell boundaries vs width ({args.n_sweep} inputs, K = {max(args.ks)})", "",
                "| captures | width | group changed per capture | mask changed per capture | cells per group "
                "over K | unrelated inputs share a group | same class share | surviving union | min-norm |",
                "|---|---|---|---|---|---|---|---|---|"]
        for s in r["sweep"]:
            sc = "—" if s["same_class_shared"] is None else f"{s['same_class_shared']:.3f}"
            out.append(f"| {s['captures']} | {s['width']:g} | {s['group_straddle']:.4f} | {s['mask_changed']:.3f} | "
                       f"{s['groups_seen_k']:.3f} | {s['unrelated_shared']:.3f} | {sc} | "
                       f"{s['surviving_union']:.1f} | {s['min_norm']:.3f} |")
        km = r["known_mask"]
        out += ["", "### If the server knew the keep-mask (limit of cells shared by many inputs)", "",
                "| single query | rMLE, mask unknown | rMLE + kept-but-zero outputs as ReLU zeros | class prior |",
                "|---|---|---|---|",
                f"| {km['surviving']:.1f} surviving, {km['kept_but_zero']:.1f} kept but zero | "
                f"{km['rmle_mask_unknown']:.3f} | {km['rmle_mask_known']:.3f} | {km['class_prior']:.3f} |", ""]
        out += [f"### Accuracy per device key ({r['n_acc']} test inputs, {args.keys} keys or seeds)", "",
                "| masks | mean | min | max | std over keys |", "|---|---|---|---|---|"]
        for label, a in r["accuracy_by_key"].items():
            out.append(f"| {label} | {a['mean']:.4f} | {a['min']:.4f} | {a['max']:.4f} | {a['std']:.4f} |")
        out.append("")
    path.write_text("\n".join(out) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", choices=list(MODELS), help="default: all")
    ap.add_argument("--n", type=int, default=100, help="test inputs attacked per data set")
    ap.add_argument("--n-sweep", type=int, default=100, help="inputs for the width sweep")
    ap.add_argument("--ks", type=lambda s: [int(v) for v in s.split(",")], default=[1, 5, 20])
    ap.add_argument("--public", type=int, default=20000, help="public training inputs the attacker holds")
    ap.add_argument("--rmle-steps", type=int, default=200)
    ap.add_argument("--width-mnist", type=float, default=0.25)
    ap.add_argument("--width-ecg", type=float, default=0.25)
    ap.add_argument("--groups", type=int, default=32)
    ap.add_argument("--n-acc", type=int, default=2000, help="test inputs for the accuracy-per-key table")
    ap.add_argument("--keys", type=int, default=5, help="device keys (or fresh seeds) for the accuracy table")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=str(CACHE))
    ap.add_argument("--out", default="docs/results", help="directory for near-duplicates.md/.png")
    ap.add_argument("--json", default="reports/near-duplicates.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = [measure(m, args) for m in (args.model or list(MODELS))]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_markdown(results, args, out / "near-duplicates.md")
    plot(results, out / "near-duplicates.png")
    js = Path(args.json)
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'near-duplicates.md'}, {out / 'near-duplicates.png'}, {js}")


if __name__ == "__main__":
    main()
