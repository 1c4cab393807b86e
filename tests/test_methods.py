"""The defence-methods frontier runs end to end (train -> export -> audit -> table + plot, cached), and each
defence option is really applied: quantized payloads, the device policy, NoPeek and adversarial training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from daonet.audit import AuditConfig, load_pair
from daonet.cli import app
from daonet.device.certificate import certify
from daonet.device.masks import RandomMasks
from daonet.errors import InputError
from daonet.nn.defences import distance_correlation
from daonet.studies.frontier_methods import Method, default_methods, export_method, parse_method, run_methods
from daonet.train import TrainConfig, save_run, train

TINY = {"hidden": 40, "hidden2": 32}
BASE = TrainConfig(dataset="digits", model="mlp", epochs=4, model_kwargs=TINY)
AUDIT = AuditConfig(dataset="digits", budget="quick", n_test=30, public_size=0, decoder_epochs=3, decoder_hidden=64,
                    budget_curve=False,
                    rmle_steps=20, rmle_tune_size=16, n_repeat=8, repeats=(2, 3), n_examples=2, seed=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixtures in conftest.py


@pytest.fixture(scope="module")
def frontier(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("methods")
    methods = [Method("plain-p0", "plain", 0.0), parse_method("q2-pol-p0.5:p=0.5,q=2,rho=0.3")]
    logs: list[str] = []
    rows = run_methods("digits", "mlp", methods, out, AUDIT, train_cfg=BASE, progress=False, policy_eval=60,
                       log=logs.append)
    return out, rows, logs, methods


def test_frontier_writes_table_and_plot(frontier):
    out, rows, _, _ = frontier
    data = json.loads((out / "methods.json").read_text())
    assert data["metric"] == "ssim" and data["target"]["undefended"] == "plain-p0"
    assert [r["method"] for r in data["rows"]] == ["plain-p0", "q2-pol-p0.5"]
    for r in data["rows"]:
        for key in ("accuracy", "surviving", "n_outputs", "best_attack", "best", "class_prior", "advantage",
                    "in_target", "train_s", "audit_s", "family", "config", "attacks"):
            assert key in r, key
        assert r["advantage"] == pytest.approx(r["best"] - r["class_prior"])
        assert r["best_attack"] in r["attacks"] and {"decoder_mlp", "decoder_adaptive"} <= set(r["attacks"])
        assert r["best"] == pytest.approx(max(r["attacks"].values()))
    pol = data["rows"][1]["policy_accuracy"]
    assert pol["n"] == 60 and pol["policy"]["max_revealed_energy"] == 0.3
    assert data["rows"][0]["policy_accuracy"] is None
    assert [r["decoder_masks"] for r in data["rows"]] == ["fresh every epoch", "3 policy pools"]
    md = (out / "methods.md").read_text()
    assert "| plain-p0 |" in md and "| q2-pol-p0.5 |" in md and "advantage" in md
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "plain-p0" / "audit.json").exists()
    assert not any(r["lower_bound_only"] for r in data["rows"])  # every attacker family ran


def test_rows_missing_attacker_families_are_lower_bounds(frontier, tmp_path):
    """A row audited with the MLP decoder only (a CPU run) is drawn and tabled as a lower bound, never in target."""
    from daonet.studies.frontier_methods import frontier_plot, mark_target, methods_markdown

    _, rows, _, _ = frontier
    partial = {**rows[1], "method": "mlp-only", "advantage": -1.0,
               "decoders": {"decoder_mlp": rows[1]["decoders"]["decoder_mlp"]}}
    both = [dict(rows[0]), partial]
    mark_target(both)
    assert partial["lower_bound_only"] and not partial["in_target"] and not both[0]["lower_bound_only"]
    assert "| mlp-only |" in methods_markdown(both, "ssim") and "≥ -1.000" in methods_markdown(both, "ssim")
    assert frontier_plot(both, "ssim", "t", tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_frontier_is_cached(frontier):
    out, rows, _, methods = frontier
    logs: list[str] = []
    again = run_methods("digits", "mlp", methods, out, AUDIT, train_cfg=BASE, progress=False, policy_eval=60,
                        log=logs.append)
    text = "\n".join(logs)
    assert "training" not in text and "auditing" not in text and text.count("reusing the audit") == 2
    assert all("decoder_adaptive" in r["attacks"] for r in again)  # cached adaptive attacks are always used
    assert [r["best"] for r in again] == [r["best"] for r in rows]
    # an interrupted row resumes from its saved attackers: without audit.json, the audit reruns from them
    (out / methods[0].name / "audit.json").unlink()
    logs.clear()
    third = run_methods("digits", "mlp", methods[:1], out, AUDIT, train_cfg=BASE, progress=False, policy_eval=60,
                        log=logs.append)
    assert any("finished earlier, reused" in line for line in logs) and third[0]["best"] == rows[0]["best"]
    # a run with baselines only (one process of an audit split by attack) keeps its checkpoints, adds no row
    logs.clear()
    only_baseline = replace(AUDIT, attacks=("decoder_prediction",))
    assert run_methods("digits", "mlp", methods[:1], out / "split", only_baseline, train_cfg=BASE, progress=False,
                       log=logs.append) == []
    assert any("no attack ran" in line for line in logs)
    assert list((out / "split" / methods[0].name / "checkpoints").glob("*/decoder_prediction.npy"))


def test_policy_bundle_requests_satisfy_the_policy(frontier, digits):
    out, _, _, _ = frontier
    device, server = load_pair(out / "bundles" / "q2-pol-p0.5")
    assert device.policy.max_revealed_energy == 0.3
    audit = json.loads((out / "q2-pol-p0.5" / "audit.json").read_text())
    assert audit["policy"]["max_revealed_energy"] == 0.3 and audit["certificate"]["policy_ok_all"]
    x = digits.x_test[:80]
    pairs = device.encode_many_certified(x, RandomMasks(5))
    assert all(c.policy_ok for _, c in pairs)
    for xi, (payload, _) in zip(x, pairs, strict=True):  # recompute from what is actually sent
        parsed = server.parse(payload.data)
        sent = np.zeros(device.n_outputs, np.float32)
        sent[parsed.indices] = parsed.values
        cert = certify(device.system, xi, sent, device.public_mean)
        assert cert.revealed_energy <= 0.3 + 1e-6 and cert.identifiable == 0


def test_quantized_payloads_take_few_values(frontier, digits):
    out, _, _, _ = frontier
    device, server = load_pair(out / "bundles" / "q2-pol-p0.5")
    assert device.quantize is not None and device.quantize.levels == 2
    values = np.concatenate([server.parse(p.data).values for p in device.encode_many(digits.x_test[:200],
                                                                                        RandomMasks(1))])
    assert values.size > 0 and len(np.unique(values)) <= 2  # + the zero of dropped/inactive outputs = 3


def test_export_method_writes_policy_and_public_mean(tmp_path, digits):
    res = train(replace(BASE, epochs=1, drop_rate=0.5), ds=digits, progress=False)
    run = save_run(res, tmp_path / "run")
    export_method(run, tmp_path / "b", Method("m", "policy", 0.5, max_revealed_energy=0.25), digits, "digits-m")
    device, _ = load_pair(tmp_path / "b")
    assert device.manifest.privacy.max_revealed_energy == 0.25
    np.testing.assert_allclose(device.public_mean.reshape(-1), digits.x_train.mean(0).reshape(-1), atol=1e-6)


def _dcor(model, x: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        xb = torch.from_numpy(x)
        return float(distance_correlation(xb, model.first.activations(xb)))


def test_nopeek_and_adversary_change_training(digits):
    cfg = replace(BASE, epochs=3, drop_rate=0.5)
    plain = train(cfg, ds=digits, progress=False).model
    nopeek = train(replace(cfg, nopeek_weight=5.0), ds=digits, progress=False).model
    adv = train(replace(cfg, adversary_weight=1.0), ds=digits, progress=False).model
    x = digits.x_test[:256]
    assert _dcor(nopeek, x) < _dcor(plain, x) - 0.02  # the penalty reduces the dependence it measures
    assert not torch.allclose(adv.first.weight, plain.first.weight)  # same seed: only the adversary differs


def test_parse_method_and_defaults():
    m = parse_method("combo:p=0.97,hidden=4096,q=1,adv=0.5,nopeek=0.3,rho=0.1")
    assert (m.drop_rate, m.model_kwargs, m.quantize_levels, m.adversary_weight, m.nopeek_weight,
            m.max_revealed_energy, m.family) == (0.97, {"hidden": 4096}, 1, 0.5, 0.3, 0.1, "composed")
    cfg = m.train_config(TrainConfig(model_kwargs={"hidden2": 128}))
    assert cfg.model_kwargs == {"hidden2": 128, "hidden": 4096} and cfg.quantize_levels == 1
    for bad in ("nocolon", "x:q=1", "x:p=0.5,rho=2", "bad name:p=0.5", "x:p=0.5,family=magic", "x:p=oops"):
        with pytest.raises(InputError):
            parse_method(bad)
    for ds, model in (("mnist", "mlp"), ("ecg5000", "cnn1d")):
        ms = default_methods(ds, model)
        assert len({m.name for m in ms}) == len(ms)
        assert {m.family for m in ms} >= {"plain", "adversary", "block", "noise"}  # every lever measured
        assert any(m.family == "plain" and m.drop_rate == 0 for m in ms)  # the undefended reference


def test_cli_lists_methods():
    res = CliRunner().invoke(app, ["audit-methods", "--dataset", "ecg5000", "--model", "cnn1d", "--list",
                                   "--only", "plain-p0,wide-p0.97", "--add", "x:p=0.9,q=1"])
    assert res.exit_code == 0, res.output
    assert "stem=128" in res.output and "quantize 1" in res.output
    res = CliRunner().invoke(app, ["audit-methods", "--only", "nope", "--list"])
    assert res.exit_code != 0 and "unknown method" in res.output


def test_cli_runs_on_digits(tmp_path: Path):
    args = ["--dataset", "digits", "--model", "mlp", "--only", "plain-p0.9", "--epochs", "1", "--model-opt",
            "hidden=40", "--n-test", "10", "--public-size", "200", "--decoder-epochs", "1", "--rmle-steps", "10",
            "--n-repeat", "4", "--threads", "1", "--budget", "quick", "--out", str(tmp_path)]
    res = CliRunner().invoke(app, ["audit-methods", *args])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "methods.json").read_text())["rows"][0]["method"] == "plain-p0.9"
