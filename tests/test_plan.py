"""``daonet plan`` on sklearn's digits with the quick budget: real training, export and audits per trial, an
Optuna study in SQLite that a second run resumes, the Pareto set (JSON + plot), the chosen bundle, Ray trials."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from daonet.cli import app
from daonet.device import DeviceModel
from daonet.errors import InputError
from daonet.studies.plan import PlanConfig, PlanSpace, pareto_front, run_plan

FAST = dict(dataset="digits", model="mlp", budget="quick", epochs=1, audit_n_test=30,
            attacks=("min_norm", "decoder_mlp", "decoder_label"),
            space=PlanSpace(device_layers=(1, 2), block_widths=(8, 16), drop_rate=(0.0, 0.9),
                            adversary_weights=(0.0,)))


def _complete_trials(db) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]


def test_plan_runs_resumes_and_exports_the_chosen_bundle(tmp_path, one_torch_thread):
    out = tmp_path / "plan"
    result = run_plan(PlanConfig(out=str(out), trials=2, **FAST), log=lambda _: None)
    assert len(result.points) == 2 and _complete_trials(out / "plan.db") == 2
    assert not result.claim  # quick budget: labelled, never a claim
    doc = json.loads((out / "pareto.json").read_text())
    assert doc["claim"] is False and "NOT a privacy claim" in doc["note"]
    assert set(doc["pareto"]) <= {t["trial"] for t in doc["trials"]}
    for t in doc["trials"]:
        assert t["flops"] > 0 and t["bytes_per_request"] > 0 and t["label_only"] is not None
    assert (out / "pareto.png").stat().st_size > 0
    assert result.chosen is not None  # no constraint beyond accuracy >= 0: some point is feasible
    chosen = DeviceModel.load(out / "chosen" / "device")
    assert chosen.version == DeviceModel.load(result.chosen.bundle + "/device").version
    assert (out / "chosen" / "audit" / "audit.json").exists()
    # a second run with more trials resumes the study: only the missing trial runs
    again = run_plan(PlanConfig(out=str(out), trials=3, **FAST), log=lambda _: None)
    assert len(again.points) == 3 and _complete_trials(out / "plan.db") == 3
    assert {p.trial for p in result.points} <= {p.trial for p in again.points}


def test_constraints_leave_no_feasible_point(tmp_path, one_torch_thread):
    result = run_plan(PlanConfig(out=str(tmp_path / "p"), trials=1, max_flops=1, **FAST), log=lambda _: None)
    assert len(result.points) == 1 and not result.points[0].feasible
    assert result.pareto == [] and result.chosen is None and not (tmp_path / "p" / "chosen").exists()


def test_pareto_front_is_non_dominated():
    from dataclasses import replace

    from daonet.studies.plan import Candidate, PlanPoint

    base = PlanPoint(trial=0, candidate=Candidate(1, None, 0.5, 0.0), accuracy=0.9, leakage=0.2,
                     leakage_lower_bound=False, best_attack="decoder_mlp", label_only=0.4, flops=10,
                     bytes_per_request=10, device_us=1, surviving=3, feasible=True, bundle="", report="", seconds=1)
    pts = [base, replace(base, trial=1, accuracy=0.95, leakage=0.3), replace(base, trial=2, accuracy=0.85,
           leakage=0.25), replace(base, trial=3, accuracy=0.99, leakage=0.0, feasible=False)]
    assert [p.trial for p in pareto_front(pts)] == [0, 1]  # 2 is dominated by 0; 3 is infeasible


def test_plan_validates_its_settings(tmp_path):
    with pytest.raises(InputError, match="decoder_label"):
        PlanConfig(dataset="digits", out=str(tmp_path), attacks=("decoder_mlp",)).validate()
    with pytest.raises(InputError, match="drop-rate range"):
        PlanConfig(dataset="digits", out=str(tmp_path), space=PlanSpace(drop_rate=(0.5, 1.0))).validate()
    with pytest.raises(InputError, match="min-accuracy"):
        PlanConfig(dataset="digits", out=str(tmp_path), min_accuracy=1.5).validate()
    res = CliRunner().invoke(app, ["plan", "--dataset", "digits", "--drop-rates", "0.5", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "LOW,HIGH" in res.output


@pytest.mark.slow
def test_plan_trials_run_in_parallel_on_ray(tmp_path):
    """``--workers 2``: a local Ray runs the trials, each worker on the same SQLite study. In a child process, as
    a user runs it, so this Ray instance never meets the Ray Serve tests' one."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ray-plan"
    cmd = [sys.executable, "-m", "daonet.launcher", "plan", "--dataset", "digits", "--budget", "quick",
           "--trials", "2", "--workers", "2", "--epochs", "1", "--audit-n-test", "30", "--device-layers", "1,2",
           "--block-widths", "8,16", "--adversary-weights", "0", "--attacks", "min_norm,decoder_mlp,decoder_label",
           "--out", str(out)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trials ran on Ray (2 workers)" in proc.stdout + proc.stderr
    assert _complete_trials(out / "plan.db") == 2
    doc = json.loads((out / "pareto.json").read_text())
    assert len(doc["trials"]) == 2


def test_cli_default_attacks_are_the_library_defaults():
    from daonet.commands import plan as cli_plan
    from daonet.studies import plan as lib_plan

    assert cli_plan.PLAN_ATTACKS == lib_plan.PLAN_ATTACKS


def test_concurrent_trials_of_the_same_candidate_build_it_once(tmp_path, one_torch_thread):
    """Parallel workers may sample the same point: the candidate's folder is locked, so the second waits and
    reuses what the first built instead of exporting over files the first is reading."""
    from concurrent.futures import ThreadPoolExecutor

    from daonet.studies.plan import Candidate, evaluate_candidate

    cfg = PlanConfig(out=str(tmp_path / "p"), trials=1, **FAST)
    cand = Candidate(1, None, 0.5, 0.0)
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda t: evaluate_candidate(cfg, cand, t, log=lambda _: None), [0, 1])
    assert a.bundle == b.bundle and a.accuracy == b.accuracy and a.leakage == b.leakage
