"""Full-budget audits for the README, in parallel worker processes (made for one GPU + 16 CPU cores; on a
small CPU use ``--workers 1 --threads 2``: decoders then train under bf16 autocast where the CPU has it).

Usage: ``python scripts/gpu_audit.py OUT --data-root-mnist DIR --data-root-ucr DIR [--workers N] [--only JOB,...]``

Jobs: ``default-<dataset>`` trains the recommended default model and audits it with the full budget and the
attacker-budget curve; ``methods-<dataset>-<k>`` runs a slice of the per-method frontier (full budget, every
attacker to convergence, from scratch, against each final bundle). Every job writes under ``OUT/<job>``;
``daonet.studies.frontier_methods.merge_methods`` joins the slices. The same commands run on a CPU, only slower.
Every audit keeps its checkpoints (finished attackers and the state of one still training) under its output
folder, so a job killed by a lease or session limit continues where it stopped when started again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = {  # most informative first; the certificate-policy rows are left out (their per-request policy makes
    # the decoder's mask pools CPU-bound; they were a negative result at every earlier budget)
    "mnist": ["plain-p0", "plain-p0.9", "sadv2-p0.5", "adv2-p0.5", "block2-p0.5", "noise0.5-p0.5", "plain-p0.5",
              "plain-p0.97", "sadv2-p0.9", "sadv5-p0.5", "adv2-p0.9", "adv2-p0", "noise1-p0.5", "noise0.5-p0.9",
              "block2-p0.9", "block2-p0.8", "block2-p0.97", "wide-p0.97", "quant1-p0.9", "nopeek-p0.9"],
    "ecg5000": ["plain-p0", "plain-p0.5", "plain-p0.9", "plain-p0.97", "sadv2-p0.9", "sadv2-p0.5", "adv2-p0.9",
                "block2-p0.5", "block2-p0.9", "noise0.5-p0.5", "noise1-p0.5", "noise0.5-p0.9", "wide-p0.97",
                "quant1-p0.9"],
}
MODEL = {"mnist": "mlp", "ecg5000": "cnn1d"}
EPOCHS = {"mnist": 5, "ecg5000": 40}


BUDGET = os.environ.get("DAONET_AUDIT_BUDGET", "full")  # quick: a smoke test of this script (not a claim)
EPOCHS_OVERRIDE = int(os.environ.get("DAONET_TRAIN_EPOCHS", "0"))
TRAIN_ONLY = os.environ.get("DAONET_TRAIN_ONLY") == "1"
# a subset of attacks for the per-method rows (e.g. "min_norm,rmle,rmle_prior,decoder_mlp" on a CPU, where one
# converged MNIST decoder family takes ~15 min); the default audit always runs every attack
ROW_ATTACKS = tuple(a for a in os.environ.get("DAONET_AUDIT_ATTACKS", "").split(",") if a)


def job_default(dataset: str, out: Path, root: str) -> None:
    from dataclasses import replace

    from daonet.audit import AuditConfig, run_audit, write_report
    from daonet.export import export_run
    from daonet.train import recommended_config, save_run, train

    cfg = recommended_config(dataset, MODEL[dataset], data_root=root)
    if EPOCHS_OVERRIDE:
        cfg = replace(cfg, epochs=EPOCHS_OVERRIDE)
    if not (out / "run" / "model.safetensors").exists():  # trained ahead (--train-only) or now
        save_run(train(cfg), out / "run")
    if TRAIN_ONLY:
        return
    export_run(out / "run", out / "bundle")
    r = run_audit(out / "bundle", AuditConfig(dataset=dataset, budget=BUDGET, data_root=root,  # resumable
                                              checkpoint_dir=str(out / "audit" / "checkpoints")))
    write_report(r, out / "audit")


def job_methods(dataset: str, names: list[str], out: Path, root: str) -> None:
    from dataclasses import replace

    from daonet.audit import AuditConfig
    from daonet.audit.frontier import default_train_config
    from daonet.studies.frontier_methods import all_methods, run_methods

    known = {m.name: m for m in all_methods(MODEL[dataset])}
    tcfg = replace(default_train_config(dataset, MODEL[dataset]), data_root=root,
                   epochs=EPOCHS_OVERRIDE or EPOCHS[dataset])
    if TRAIN_ONLY:  # fill run_methods' cache (out/runs/<config hash>) so a GPU lease only audits
        from daonet.studies.frontier_methods import _cached_train, _train_key
        from daonet.train import save_run, train

        for n in names:
            cfg = known[n].train_config(tcfg)
            run_dir = out / "runs" / _train_key(cfg)
            if not _cached_train(cfg, run_dir):
                save_run(train(cfg), run_dir)
        return
    attacks = ROW_ATTACKS or tuple(a for a in AuditConfig(dataset=dataset).attacks
                                   if a != "repeated")  # repeated queries: measured on the defaults
    acfg = AuditConfig(dataset=dataset, budget=BUDGET, budget_curve=False, data_root=root, attacks=attacks)
    from rich.console import Console

    run_methods(dataset, MODEL[dataset], [known[n] for n in names], out, acfg, train_cfg=tcfg,
                log=Console(highlight=False).print)  # renders the log's markup ([yellow]...) in a log file


def summarize(out: Path) -> None:
    for f in sorted(out.glob("default-*/audit/audit.json")):
        r = json.loads(f.read_text())
        print(f"{f.parent.parent.name}: acc {r['accuracy']:.4f} best {r['best_attack']} {r['best']:.3f} prior "
              f"{r['class_prior']:.3f} pred-only {r['prediction_only']:.3f} converged {r['all_converged']} "
              f"curve {[round(p['test'], 3) for p in (r['budget_curve'] or {}).get('points', [])]} "
              f"{r['timing_s']['total_s']:.0f}s")
    for f in sorted(out.glob("methods-*/methods.json")):
        for r in json.loads(f.read_text())["rows"]:
            print(f"{r['method']:14s} acc {r['accuracy']:.4f} k {r['surviving']:.1f} {r['best_attack']} "
                  f"{r['best']:.3f} adv {r['advantage']:+.3f} pred-only {r.get('prediction_only') or 0:.3f} "
                  f"conv {r.get('all_converged')} audit {r['audit_s']:.0f}s train {r.get('train_s') or 0:.0f}s")


def merge(outs: list[Path], docs: Path) -> None:
    """Join every finished slice (and the default models' audits, as the rows of their methods) into
    ``docs/frontier-<dataset>.png`` and ``docs/frontier-methods-<dataset>.md``."""
    from daonet.audit.frontier import frontier_row
    from daonet.studies.frontier_methods import all_methods, merge_methods

    default_method = {"mnist": "adv2-p0.5", "ecg5000": "plain-p0.9"}  # what recommended_config trains
    for ds in ("mnist", "ecg5000"):
        parts = sorted({p for o in outs for p in o.glob(f"methods-{ds}-*") if (p / "methods.json").exists()})
        rows: dict[str, dict] = {}
        for part in parts:
            for r in json.loads((part / "methods.json").read_text())["rows"]:
                rows[r["method"]] = r
        for o in outs:
            f = o / f"default-{ds}" / "audit" / "audit.json"
            if f.exists() and default_method[ds] not in rows:
                rep = json.loads(f.read_text())
                metrics = json.loads((o / f"default-{ds}" / "run" / "metrics.json").read_text())
                m = {x.name: x for x in all_methods(MODEL[ds])}[default_method[ds]]
                row = frontier_row(rep, metrics, m.drop_rate)
                se = rep["attacks"][rep["best_attack"]]["metrics"][rep["metric"]].get("advantage_se")
                row.update(method=m.name, family=m.family, config=m.describe() + " (the default)",
                           max_revealed_energy=None, policy_accuracy=None, advantage=row["best"] - rep["class_prior"],
                           advantage_se=se, decoder_masks="fresh every epoch", train_key="default")
                rows[m.name] = row
        if not rows:
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f"merge-{ds}-"))
        first = parts[0] if parts else None
        data = json.loads((first / "methods.json").read_text()) if first else None
        if data is None:
            continue
        data["rows"] = sorted(rows.values(), key=lambda r: (r["family"], r["drop_rate"], r["method"]))
        (tmp / "methods.json").write_text(json.dumps(data))
        merge_methods([tmp], tmp, f"{ds} {MODEL[ds]} (full audit)", ["python scripts/gpu_audit.py OUT ..."])
        (docs / f"frontier-{ds}.png").write_bytes((tmp / "frontier.png").read_bytes())
        (docs / f"frontier-methods-{ds}.md").write_text((tmp / "methods.md").read_text())
        (docs / f"frontier-methods-{ds}.json").write_text((tmp / "methods.json").read_text())
        print(f"{ds}: {len(rows)} rows -> {docs}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--data-root-mnist", default=None)
    ap.add_argument("--data-root-ucr", default=None)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--only", default="")
    ap.add_argument("--jobs", default="", help="explicit ';'-separated jobs, e.g. 'default:mnist;methods:mnist:a,b'")
    ap.add_argument("--job", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--summary", action="store_true", help="print what has finished under OUT and exit")
    ap.add_argument("--merge", default="", help="other OUT folders (comma-separated) to merge with OUT into docs/")
    a = ap.parse_args()
    if a.summary:
        summarize(a.out)
        return
    if a.merge:
        merge([a.out, *[Path(p) for p in a.merge.split(",")]], Path("docs"))
        return
    roots = {"mnist": a.data_root_mnist, "ecg5000": a.data_root_ucr}
    if a.job:  # a worker
        import torch

        torch.set_num_threads(a.threads)
        kind, dataset, *rest = a.job.split(":")
        out = a.out / a.job.replace(":", "-").replace(",", "_")
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        if kind == "default":
            job_default(dataset, out, roots[dataset])
        else:
            job_methods(dataset, rest[0].split(","), out, roots[dataset])
        (out / "done.json").write_text(json.dumps({"job": a.job, "seconds": time.time() - t0}))
        return
    jobs = ["default:mnist", "default:ecg5000"]
    for ds, names in sorted(METHODS.items(), key=lambda kv: kv[0] != "ecg5000"):  # ECG slices are long: start first
        per = 1 if ds == "mnist" else 4
        jobs += [f"methods:{ds}:{','.join(names[i:i + per])}" for i in range(0, len(names), per)]
    if a.jobs:
        jobs = a.jobs.split(";")
    if a.only:
        jobs = [j for j in jobs if any(j.startswith(o) or j == o for o in a.only.split(";"))]
    procs: list[subprocess.Popen] = []
    pending = list(jobs)
    a.out.mkdir(parents=True, exist_ok=True)
    while pending or procs:
        while pending and len(procs) < a.workers:
            j = pending.pop(0)
            log = open(a.out / (j.replace(":", "-").replace(",", "_")[:80] + ".log"), "w")
            cmd = [sys.executable, __file__, str(a.out), "--job", j, "--threads", str(a.threads)]
            for k, v in (("--data-root-mnist", a.data_root_mnist), ("--data-root-ucr", a.data_root_ucr)):
                if v:
                    cmd += [k, v]
            env = {**os.environ, **{v: str(a.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                                 "MKL_NUM_THREADS")}}  # no BLAS oversubscription
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
            print(f"started {j}", flush=True)
        time.sleep(2)
        for p in list(procs):
            if p.poll() is not None:
                procs.remove(p)
                print(f"finished rc={p.returncode}: {' '.join(p.args[-6:])}", flush=True)


if __name__ == "__main__":
    main()
