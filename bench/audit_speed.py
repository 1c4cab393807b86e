"""The audit before and after a change, on one bundle in one run: every attack's score and every stage's time.

    python bench/audit_speed.py                                   # the shipped ECG5000 default, full budget
    python bench/audit_speed.py --bundle B --dataset ucr:FordA --budget quick
    python bench/audit_speed.py --old v0.9.0 --out reports/audit-speed
    python bench/audit_speed.py --old HEAD~1 --attacks min_norm,decoder_label,repeated --threads 1   # one stage
    python bench/audit_speed.py --bundle src/daonet/defaults/mnist-mlp --dataset mnist \
        --old-report src/daonet/defaults/mnist-mlp/audit/audit.json -- --decoder-schedule one-cycle

With ``--new-report`` the new audit is not run here either (two finished audits compared, e.g. one that ran
for an hour in the background; its wall time is then the compute it recorded).
With ``--old-report`` the old audit is not rerun: its ``audit.json`` (of the same bundle, data and seed, e.g. the
signed report shipped beside a default) stands for it, and its times are the ones it recorded. Arguments after
``--`` go to the new audit only (the change being measured, when it is a setting rather than a revision).

A faster audit that is weaker is a regression, so speed alone proves nothing: this script checks out the *old*
audit (a git revision, ``--old``) into a temporary worktree, runs it and the current one (this checkout) on the
same bundle with the same settings, one after the other on the same machine, and prints both scores and times
side by side. It fails (exit 1) when the new audit's best attack, or any attack, scores lower than the old one's
by more than ``--tolerance`` (attacks are seeded; the learned ones are trained from scratch in both runs, so
small differences are training noise, not a change of strength). Writes ``audit_speed.json`` and
``audit_speed.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OLD = "35bff3d"  # the audit before the pooled/batched solvers (min-norm by SVD, one rMLE call per row)


def worktree(rev: str, where: Path) -> Path:
    """The ``src`` folder of revision ``rev``, checked out beside this repository's history."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), rev], check=True,
                   capture_output=True, text=True)
    return where / "src"


def run_audit(src: Path, args: argparse.Namespace, out: Path, extra: tuple[str, ...] = ()) -> tuple[dict[str, Any],
                                                                                                  float]:
    """``daonet audit`` from the package under ``src`` (same interpreter, same installed dependencies)."""
    cmd = [sys.executable, "-c", "import sys; from daonet.cli import main; sys.argv[0] = 'daonet'; main()",
           "audit", str(args.bundle), "--dataset", args.dataset, "--budget", args.budget, "--out", str(out),
           "--threads", str(args.threads), "--seed", str(args.seed),
           *(["--attacks", args.attacks] if args.attacks else []), *extra]
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "120"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"the audit from {src} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads((out / "audit.json").read_text()), wall


def scores(report: dict[str, Any]) -> dict[str, float]:
    metric = report["metric"]
    return {name: float(a["metrics"][metric]["mean"]) for name, a in report["attacks"].items()
            if metric in a.get("metrics", {})}


def compare(old: dict[str, Any], new: dict[str, Any], walls: tuple[float, float], tolerance: float) -> dict[str, Any]:
    so, sn = scores(old), scores(new)
    rows = [{"attack": k, "old": so[k], "new": sn[k], "delta": sn[k] - so[k]} for k in so if k in sn]
    to, tn = old.get("timing_s", {}), new.get("timing_s", {})
    stages = [{"stage": k, "old_s": to[k], "new_s": tn.get(k)} for k in to if k not in ("total_s", "compute_s")]
    weaker = [r["attack"] for r in rows if r["delta"] < -tolerance and r["attack"] not in ("data_mean", "class_prior")]
    rep_old = {(r["captures"], r["masks"], r["k"]): r for r in (old.get("repeated") or {}).get("rows", [])}
    repeated = []
    for r in (new.get("repeated") or {}).get("rows", []):
        o = rep_old.get((r["captures"], r["masks"], r["k"]))
        if o is not None:
            repeated.append({"row": f"{r['captures']}, {r['masks']}, K={r['k']}", "min_norm_old": o["min_norm"],
                             "min_norm_new": r["min_norm"], "rmle_old": o.get("rmle"), "rmle_new": r.get("rmle")})
            for key in ("min_norm", "rmle"):
                if o.get(key) is not None and r.get(key) is not None and r[key] < o[key] - tolerance:
                    weaker.append(f"repeated {key} ({repeated[-1]['row']})")
    return {"metric": new["metric"], "rows": rows, "stages": stages, "repeated": repeated, "best_old": old.get("best"),
            "best_new": new.get("best"), "best_attack_old": old.get("best_attack"),
            "best_attack_new": new.get("best_attack"),
            "leakage_old": (old.get("leakage") or {}).get("mean"),
            "leakage_new": (new.get("leakage") or {}).get("mean"),
            "compute_s_old": to.get("compute_s", to.get("total_s")), "compute_s_new": tn.get("compute_s",
                                                                                             tn.get("total_s")),
            "wall_s_old": walls[0], "wall_s_new": walls[1], "weaker": weaker, "tolerance": tolerance}


def markdown(res: dict[str, Any], args: argparse.Namespace) -> str:
    m = res["metric"]
    old_name = f"the report `{args.old_report}`" if args.old_report else f"`{args.old}`"
    extra = f" with `{' '.join(args.new_args)}`" if args.new_args else ""
    lines = [f"Audit of `{args.bundle}` on {args.dataset}, budget {args.budget}, old = {old_name}, new = this "
             f"checkout{extra}; {args.threads} threads.", "",
             f"| attack | old {m} | new {m} | new − old |", "|---|---|---|---|"]
    lines += [f"| {r['attack']} | {r['old']:.4f} | {r['new']:.4f} | {r['delta']:+.4f} |" for r in res["rows"]]
    lines += ["", "| stage | old s | new s | old / new |", "|---|---|---|---|"]
    for s in res["stages"]:
        new_s = s["new_s"]
        ratio = f"{s['old_s'] / new_s:.1f}x" if new_s else "–"
        lines.append(f"| {s['stage']} | {s['old_s']:.1f} | {new_s if new_s is None else f'{new_s:.1f}'} | {ratio} |")
    if res["repeated"]:
        lines += ["", "| repeated queries | min-norm old | new | rMLE old | new |", "|---|---|---|---|---|"]
        fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
        lines += [f"| {r['row']} | {fmt(r['min_norm_old'])} | {fmt(r['min_norm_new'])} | {fmt(r['rmle_old'])} | "
                  f"{fmt(r['rmle_new'])} |" for r in res["repeated"]]
    lead = lambda v: "–" if v is None else f"{v:+.4f}"  # noqa: E731
    lines += ["", f"Best attack: old {res['best_attack_old']} {res['best_old']:.4f}, new {res['best_attack_new']} "
              f"{res['best_new']:.4f}; leakage over the label-only decoder: old {lead(res['leakage_old'])}, new "
              f"{lead(res['leakage_new'])}.",
              f"Compute: old {res['compute_s_old']:.0f} s, new {res['compute_s_new']:.0f} s "
              f"({res['compute_s_old'] / res['compute_s_new']:.2f}x); wall incl. start-up and report: old "
              f"{res['wall_s_old']:.0f} s, new {res['wall_s_new']:.0f} s.",
              "Weaker attacks (beyond the tolerance " f"{res['tolerance']}): {', '.join(res['weaker']) or 'none'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=REPO / "src/daonet/defaults/ecg5000-cnn1d")
    p.add_argument("--dataset", default="ecg5000")
    p.add_argument("--budget", default="full", choices=("quick", "full"))
    p.add_argument("--old", default=DEFAULT_OLD, help="git revision of the old audit")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=0.005, help="largest drop of a score that is training noise")
    p.add_argument("--out", type=Path, default=Path("reports/audit-speed"))
    p.add_argument("--attacks", default=None, help="only these attacks/stages, comma-separated (e.g. "
                   "min_norm,decoder_label,repeated: the repeated-query stage); default: the budget's")
    p.add_argument("--old-report", type=Path, default=None, help="an audit.json of the old audit on the same bundle "
                   "(e.g. the signed report shipped with a default): compared against instead of rerunning --old")
    p.add_argument("--new-report", type=Path, default=None, help="an audit.json of the new audit, already run (with "
                   "the settings after --): compared instead of running it here")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:split])
    args.new_args = tuple(argv[split + 1:])
    if not (args.bundle / "device" / "manifest.json").exists():
        sys.exit(f"{args.bundle} is not a bundle (no device/manifest.json): give --bundle a `daonet export` folder")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.old_report is not None:
        old = json.loads(args.old_report.read_text())
        old_seed = (old.get("config") or {}).get("seed", args.seed)
        if old.get("dataset") != args.dataset or old_seed != args.seed:
            sys.exit(f"{args.old_report} audited {old.get('dataset')!r} with seed {old_seed}; give the --dataset and "
                     "--seed it was made with")
        timing = old.get("timing_s", {})
        wall_old = float(timing.get("compute_s", timing.get("total_s", 0.0)))
        print(f"old audit: {args.old_report} (not rerun)", flush=True)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="daonet-old-audit-"))
        try:
            old_src = worktree(args.old, tmp / "old")
            print(f"old audit ({args.old}) ...", flush=True)
            old, wall_old = run_audit(old_src, args, args.out / "old")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp / "old")],
                           capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)
    if args.new_report is not None:
        new = json.loads(args.new_report.read_text())
        timing = new.get("timing_s", {})
        wall_new = float(timing.get("wall_s", timing.get("compute_s", timing.get("total_s", 0.0))))
    else:
        print(f"new audit ({REPO}) ...", flush=True)
        new, wall_new = run_audit(REPO / "src", args, args.out / "new", args.new_args)
    res = compare(old, new, (wall_old, wall_new), args.tolerance)
    res["settings"] = {k: str(v) for k, v in vars(args).items()}
    (args.out / "audit_speed.json").write_text(json.dumps(res, indent=2) + "\n")
    text = markdown(res, args)
    (args.out / "audit_speed.md").write_text(text)
    print(text)
    return 1 if res["weaker"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
