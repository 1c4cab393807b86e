"""The study pipeline: one row (training config + export options + audit config) -> run, bundle, typed audit
report, content-addressed and resumed; ``daonet plan --grid`` measures a frontier through it; the defences a grid
varies (quantized values, the device policy, NoPeek, min-max training) do what they say."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from daonet.audit.core import AuditConfig, load_pair
from daonet.audit_report import AuditReport, read_report
from daonet.cli import app
from daonet.device.certificate import certify
from daonet.device.masks import RandomMasks
from daonet.errors import InputError
from daonet.nn.defences import distance_correlation
from daonet.studies.pipeline import ExportOptions, Row, read_train_run, run_row
from daonet.studies.plan import PlanConfig, grid_candidates, parse_grid, run_plan
from daonet.train import TrainConfig, train

BASE = TrainConfig(dataset="digits", model="mlp", epochs=1, drop_rate=0.5, model_kwargs={"hidden": 40})
QUICK = AuditConfig(dataset="digits", budget="quick", n_test=20, public_size=300, decoder_epochs=2,
                    attacks=("min_norm", "decoder_mlp", "decoder_label"), budget_curve=False)


def test_a_row_runs_once_and_resumes_from_its_folder(tmp_path, digits, one_torch_thread):
    row = Row(BASE, ExportOptions(model_id="digits-row"), QUICK)
    first = run_row(row, tmp_path, dataset=digits)
    assert first.root == tmp_path / row.key() and isinstance(first.report, AuditReport)
    assert first.report.version == load_pair(first.bundle)[0].version  # the report is about this bundle
    assert first.report.leakage is not None and first.report.leakage.floor == "decoder_label"
    assert read_train_run(first.run_dir).accuracy == first.run.accuracy
    stamp = (first.report_path.stat().st_mtime_ns, (first.run_dir / "model.safetensors").stat().st_mtime_ns)
    again = run_row(row, tmp_path, dataset=digits)  # every stage is already there: nothing is redone
    assert (again.report_path.stat().st_mtime_ns, (again.run_dir / "model.safetensors").stat().st_mtime_ns) == stamp
    assert again.report == first.report


def test_the_row_key_is_the_one_same_settings_rule(tmp_path):
    row = Row(BASE, ExportOptions(), QUICK)
    assert row.key() == Row(replace(BASE, data_root=str(tmp_path)), ExportOptions(),
                            replace(QUICK, torch_device="cpu", checkpoint_dir="x")).key()  # where, not what
    assert row.key() != Row(replace(BASE, drop_rate=0.6), ExportOptions(), QUICK).key()
    assert row.key() != Row(BASE, ExportOptions(max_revealed_energy=0.2), QUICK).key()
    assert row.key() != Row(BASE, ExportOptions(), replace(QUICK, n_test=21)).key()
    assert row.key() != Row(BASE, ExportOptions(), None).key()
    with pytest.raises(InputError, match="revealed energy"):
        Row(BASE, ExportOptions(max_revealed_energy=2.0)).validate()


def test_a_damaged_report_is_refused_with_what_to_do(tmp_path, digits, one_torch_thread):
    res = run_row(Row(BASE, ExportOptions(), QUICK), tmp_path, dataset=digits)
    raw = json.loads(res.report_path.read_text())
    raw["attacks"]["decoder_mlp"]["metrics"].pop("ssim")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(Exception, match="no ssim score.*re-run"):
        read_report(bad)
    raw = json.loads(res.report_path.read_text())
    raw["schema_version"] = 99
    bad.write_text(json.dumps(raw))
    with pytest.raises(Exception, match="upgrade daonet"):
        read_report(bad)


def test_grid_settings_are_validated():
    assert parse_grid(["drop_rate=0,0.5", "max_revealed_energy=none,0.2"]) == {
        "drop_rate": (0, 0.5), "max_revealed_energy": (None, 0.2)}
    for bad in (["drop_rate"], ["drop_rate=a,b"]):
        with pytest.raises(InputError, match="--grid"):
            parse_grid(bad)
    for grid in ({"hidden": (1, 2)}, {"drop_rate": (0.5, 0.5)}, {"drop_rate": (None,)}, {"drop_rate": (1.5,)}):
        with pytest.raises(InputError):
            PlanConfig(dataset="digits", grid=grid).validate()
    cfg = PlanConfig(dataset="digits", grid={"device_layers": (1, 2), "block_width": (8, 16)})
    assert cfg.n_trials == 3  # a single layer has no width: (1, 8) and (1, 16) are one candidate


def test_plan_grid_measures_a_frontier_of_defences(tmp_path, digits, one_torch_thread):
    """A grid over quantization and the device policy: every combination trained, exported and audited once, in
    the same study database; the quantized, policy-bound bundle does what its manifest says."""
    out = tmp_path / "grid"
    cfg = PlanConfig(dataset="digits", model="mlp", out=str(out), budget="quick", epochs=2, audit_n_test=30,
                     attacks=("min_norm", "decoder_mlp", "decoder_label"),
                     grid={"drop_rate": (0.5,), "quantize_levels": (0, 2), "max_revealed_energy": (None, 0.3)})
    result = run_plan(cfg, log=lambda _: None)
    assert len(result.points) == 4 == len(grid_candidates(cfg))
    assert {(p.candidate.quantize_levels, p.candidate.max_revealed_energy) for p in result.points} == {
        (0, None), (0, 0.3), (2, None), (2, 0.3)}
    assert len(run_plan(cfg, log=lambda _: None).points) == 4  # a finished grid runs nothing more
    point = next(p for p in result.points if p.candidate.quantize_levels == 2 and p.candidate.max_revealed_energy)
    device, server = load_pair(point.bundle)
    report = read_report(point.report)
    assert device.policy.max_revealed_energy == 0.3 and report.policy is not None
    assert report.certificate["policy_ok_all"]
    x = digits.x_test[:60]
    pairs = device.encode_many_certified(x, RandomMasks(5))
    values = []
    for xi, (payload, cert) in zip(x, pairs, strict=True):  # recompute from what is actually sent
        assert cert.policy_ok
        parsed = server.parse(payload.data)
        values.append(parsed.values)
        sent = np.zeros(device.n_outputs, np.float32)
        sent[parsed.indices] = parsed.values
        recomputed = certify(device.system, xi, sent, device.public_mean)
        assert recomputed.revealed_energy <= 0.3 + 1e-6 and recomputed.identifiable == 0
    flat = np.concatenate(values)
    assert flat.size > 0 and len(np.unique(flat)) <= 2  # two levels (+ the zero of dropped outputs)


def test_cli_plan_grid(tmp_path, one_torch_thread):
    args = ["plan", "--dataset", "digits", "--budget", "quick", "--epochs", "1", "--audit-n-test", "20",
            "--attacks", "min_norm,decoder_mlp,decoder_label", "--grid", "drop_rate=0,0.9", "--out", str(tmp_path)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "pareto.json").read_text())
    assert sorted(t["candidate"]["drop_rate"] for t in doc["trials"]) == [0.0, 0.9]
    res = CliRunner().invoke(app, ["plan", "--dataset", "digits", "--grid", "width=8", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown" in res.output


def _dcor(model, x: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        xb = torch.from_numpy(x)
        return float(distance_correlation(xb, model.first.activations(xb)))


def test_nopeek_and_adversary_change_training(digits):
    cfg = replace(BASE, epochs=3)
    plain = train(cfg, ds=digits, progress=False).model
    nopeek = train(replace(cfg, nopeek_weight=5.0), ds=digits, progress=False).model
    adv = train(replace(cfg, adversary_weight=1.0), ds=digits, progress=False).model
    x = digits.x_test[:256]
    assert _dcor(nopeek, x) < _dcor(plain, x) - 0.02  # the penalty reduces the dependence it measures
    assert not torch.allclose(adv.first.weight, plain.first.weight)  # same seed: only the adversary differs


def test_plan_grid_over_the_gaussian_mechanism(tmp_path, digits, one_torch_thread):
    """A grid may list ldp_epsilon: the row trains with the mechanism, the exported manifest carries the epsilon
    the accountant gives (at most the target), and the mechanism is refused beside the defences it replaces."""
    with pytest.raises(InputError, match="ldp_epsilon"):
        PlanConfig(dataset="digits", grid={"ldp_epsilon": (0.0,)}).validate()
    with pytest.raises(InputError, match="replaces noise_std"):
        PlanConfig(dataset="digits", grid={"ldp_epsilon": (8.0,), "noise_std": (0.5,)}).validate()
    out = tmp_path / "ldp"
    cfg = PlanConfig(dataset="digits", model="mlp", out=str(out), budget="quick", epochs=2, audit_n_test=20,
                     attacks=("min_norm", "decoder_mlp", "decoder_label"), grid={"ldp_epsilon": (None, 8.0)})
    result = run_plan(cfg, log=lambda _: None)
    by_eps = {p.candidate.ldp_epsilon: p for p in result.points}
    assert set(by_eps) == {None, 8.0} and "LDP ε=8" in by_eps[8.0].candidate.describe()
    noisy, _ = load_pair(by_eps[8.0].bundle)
    plain, _ = load_pair(by_eps[None].bundle)
    assert plain.noise is None
    assert noisy.noise is not None and noisy.noise.kind == "gaussian_ldp" and 0 < noisy.noise.epsilon <= 8.0
    assert read_report(by_eps[8.0].report).accuracy < 1.0
