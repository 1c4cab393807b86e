"""The audit's attacks work (they beat the data mean on an undefended model), repeated queries accumulate
equations with fresh masks but not with keyed masks, and the CLI/report/frontier paths run end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from daonet.audit import AuditConfig, run_audit, write_report
from daonet.audit.metrics import evaluate, nmse, pearson, psnr, summarize
from daonet.cli import app
from daonet.data import Dataset
from daonet.errors import BundleError, DatasetError, InputError
from daonet.exporting import export_model
from daonet.train import TrainConfig, train

FAST = AuditConfig(dataset="digits", budget="quick", n_test=60, public_size=0, decoder_epochs=25, decoder_patience=3,
                   rmle_steps=150, rmle_tune_size=32, n_repeat=30, n_examples=4, seed=0, budget_curve=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixtures in conftest.py


def _bundle(ds, tmp_path_factory, p: float, name: str, epochs: int = 15):
    res = train(TrainConfig(dataset="digits", model="mlp", drop_rate=p, epochs=epochs,
                            model_kwargs={"hidden": 40, "hidden2": 64}), ds=ds, progress=False)
    path = tmp_path_factory.mktemp(name)
    export_model(res.model, path, model_id=f"digits-mlp-{name}", classes=ds.classes, raw_dtype="uint8")
    return path, res.metrics


@pytest.fixture(scope="module")
def undefended(digits, tmp_path_factory):
    return _bundle(digits, tmp_path_factory, 0.0, "p0")


@pytest.fixture(scope="module")
def dropped(digits, tmp_path_factory):
    return _bundle(digits, tmp_path_factory, 0.5, "p05")


@pytest.fixture(scope="module")
def audit_p0(undefended, digits):
    return run_audit(undefended[0], FAST, dataset=digits, progress=False, log=lambda s: None)


def test_every_attack_beats_the_data_mean_on_an_undefended_model(audit_p0):
    rep = audit_p0.report
    assert rep.accuracy > 0.8
    mean_ssim = rep.attacks["data_mean"].metrics["ssim"].mean
    for name in ("min_norm", "rmle", "rmle_prior", "rmle_naive", "decoder_mlp", "decoder_conv", "decoder_adaptive"):
        ssim = rep.attacks[name].metrics["ssim"]
        assert ssim.mean > mean_ssim + 0.05, name
        assert rep.attacks[name].metrics["psnr"].mean > rep.attacks["data_mean"].metrics["psnr"].mean
    # a learned inverse network is the strongest here, and it beats the class prior and the prediction alone
    assert rep.best_attack.startswith("decoder_") and rep.best_advantage > 0
    assert rep.best > rep.prediction_only and rep.advantage_over_prediction > 0
    dec = rep.budgets["decoder_mlp"]
    assert dec.public_train + dec.public_val == 1437 and "fresh" in dec.masks
    assert len(dec.val_metric_per_epoch) == dec.epochs_run <= 25
    assert dec.best_val == max(dec.val_metric_per_epoch)  # the best held-out epoch's weights are kept
    # the quick budget is labelled as what it is
    assert rep.budget.name == "quick" and not rep.budget.claim
    assert "NOT a privacy claim" in rep.warnings[0]
    curve = rep.budget_curve
    assert curve.points[-1].public_train == dec.public_train
    assert curve.points[0].public_train < curve.points[-1].public_train


def test_certificate_distribution_is_reported(audit_p0):
    c = audit_p0.report.certificate
    assert 0 < c["k"]["mean"] <= 40 and c["rank"]["max"] <= 40
    assert 0 <= c["revealed_energy"]["min"] <= c["revealed_energy"]["max"] <= 1
    assert len(audit_p0.examples["cert"]["k"]) == FAST.n_test


def test_repeated_queries_without_dropping_reveal_nothing_new(audit_p0):
    rows = audit_p0.report.repeated["rows"]
    fresh = [r for r in rows if r["masks"] == "fresh random" and r["captures"] == "exact replays"]
    assert len({round(r["surviving_union"], 6) for r in fresh}) == 1  # p = 0: every send is identical
    assert all(r["identical"] == 1.0 for r in rows if r["captures"] == "exact replays")


def test_repeated_fresh_masks_accumulate_keyed_masks_do_not(dropped, digits):
    cfg = replace(FAST, attacks=("min_norm", "repeated"), repeats=(1, 10))
    rep = run_audit(dropped[0], cfg, dataset=digits, progress=False, log=lambda s: None).report
    rows = {(r["captures"], r["masks"], r["k"]): r for r in rep.repeated["rows"]}
    replay, noisy = "exact replays", "±2 grey levels"
    fresh1, fresh10 = rows[(replay, "fresh random", 1)], rows[(replay, "fresh random", 10)]
    assert fresh10["surviving_union"] > fresh1["surviving_union"] + 1
    assert fresh10["min_norm"] > fresh1["min_norm"] + 0.02
    for masks in ("keyed", "similarity-keyed"):  # exact replays: identical bytes, nothing new
        assert rows[(replay, masks, 10)]["identical"] == 1.0
        one, ten = rows[(replay, masks, 1)], rows[(replay, masks, 10)]
        assert ten["surviving_union"] == pytest.approx(one["surviving_union"])
    # noisy re-captures get new keyed masks, but (mostly) the same similarity-keyed mask
    assert rows[(noisy, "keyed", 10)]["surviving_union"] > rows[(noisy, "keyed", 1)]["surviving_union"] + 1
    assert rows[(noisy, "similarity-keyed", 10)]["surviving_union"] < rows[(noisy, "keyed", 10)]["surviving_union"]


def test_policy_audit_holds_and_costs_are_reported(dropped, digits):
    cfg = replace(FAST, attacks=("min_norm", "decoder"), decoder_epochs=2, max_revealed_energy=0.2,
                  policy_thresholds=(0.3,), budget_curve=False)
    rep = run_audit(dropped[0], cfg, dataset=digits, progress=False, log=lambda s: None).report
    assert rep.policy["max_revealed_energy"] == 0.2
    assert rep.certificate["policy_ok_all"]
    assert rep.certificate["revealed_energy"]["max"] <= 0.2 + 1e-6
    assert rep.certificate["identifiable"]["max"] == 0
    assert "policy" in rep.budgets["decoder_mlp"].masks  # the legacy name 'decoder' is the MLP family
    costs = {row["max_revealed_energy"]: row for row in rep.policy_cost}
    assert costs[None]["dropped_by_policy"] == 0 and costs[0.3]["policy_ok_all"]
    assert costs[0.3]["revealed_energy"] <= costs[None]["revealed_energy"]


def test_report_files(audit_p0, tmp_path):
    js, html = write_report(audit_p0, tmp_path)
    data = json.loads(js.read_text())
    assert data["best_attack"].startswith("decoder_") and data["metric"] == "ssim"
    page = html.read_text()
    assert page.count("data:image/png;base64,") >= 3 and "<script" not in page
    assert "NOT A PRIVACY CLAIM" in page and "has the attack saturated" in page
    assert (tmp_path / "examples.npz").exists()


def test_bad_inputs_have_clear_errors(undefended, digits, tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        run_audit(tmp_path / "nope", FAST, dataset=digits, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="device/ and server/"):
        run_audit(tmp_path / "empty", FAST, dataset=digits, progress=False)
    wrong = Dataset("signals", np.zeros((20, 1, 140), np.float32), np.zeros(20, np.int64),
                    np.zeros((5, 1, 140), np.float32), np.zeros(5, np.int64), [str(i) for i in range(10)], "signal")
    with pytest.raises(DatasetError, match="shaped"):
        run_audit(undefended[0], FAST, dataset=wrong, progress=False)
    with pytest.raises(InputError, match="unknown attack"):
        run_audit(undefended[0], replace(FAST, attacks=("magic",)), dataset=digits, progress=False)
    with pytest.raises(InputError):
        run_audit(undefended[0], replace(FAST, n_test=1), dataset=digits, progress=False)


def test_metrics_sanity():
    x = np.random.default_rng(0).random((4, 1, 8, 8))
    assert (psnr(x, x) == 100).all()
    assert np.allclose(evaluate("image", x, x)["ssim"], 1)
    assert np.allclose(pearson(x, 2 * x + 1), 1) and np.allclose(nmse(x, x), 0)
    s = summarize({"nmse": np.array([0.5, 0.5])}, {"nmse": np.array([1.0, 1.0])})
    assert s["nmse"]["advantage"] == pytest.approx(0.5)  # lower error is an advantage


def test_cli_audit(undefended, tmp_path):
    runner = CliRunner()
    out = tmp_path / "single"
    res = runner.invoke(app, ["audit", str(undefended[0]), "--dataset", "digits", "--out", str(out), "--n-test", "20",
                              "--attacks", "min_norm", "--threads", "1", "--budget", "quick"])
    assert res.exit_code == 0, res.output
    assert (out / "report.html").exists() and json.loads((out / "audit.json").read_text())["n_test"] == 20
    assert "NOT a privacy claim" in res.output
    res = runner.invoke(app, ["audit", str(tmp_path / "missing"), "--dataset", "digits", "--out", str(out)])
    assert res.exit_code != 0 and "does not exist" in " ".join(res.output.split())
    res = runner.invoke(app, ["audit", str(undefended[0]), "--attacks", "min_norm,telepathy", "--out", str(out)])
    assert res.exit_code != 0 and "unknown attack" in " ".join(res.output.split())
    res = runner.invoke(app, ["audit", str(undefended[0]), "--dataset", "digits", "--out", str(tmp_path / "two"),
                              "--n-test", "20", "--attacks", "min_norm,decoder_label", "--threads", "1", "--budget",
                              "quick", "--jobs", "2"])
    assert res.exit_code == 0 and "job 2 of 2" in res.output, res.output
    res = runner.invoke(app, ["audit", str(undefended[0]), "--jobs", "2", "--no-resume", "--out", str(out)])
    assert res.exit_code != 0 and "drop --no-resume" in " ".join(res.output.split())
    res = runner.invoke(app, ["audit", "--help"])
    assert res.exit_code == 0 and "--budget" in res.output and "--dataset" in res.output  # options, not subcommands


def test_decoders_optimise_exactly_the_reported_metric():
    """The training metric (torch) equals the reported one (scikit-image SSIM, numpy Pearson)."""
    import torch

    from daonet.audit.decoders import pearson_torch, ssim_torch

    rng = np.random.default_rng(1)
    for shape in ((5, 1, 28, 28), (5, 1, 8, 8)):
        x, y = rng.random(shape).astype(np.float32), rng.random(shape).astype(np.float32)
        y = 0.7 * x + 0.3 * y
        got = ssim_torch(torch.from_numpy(x), torch.from_numpy(y)).numpy()
        assert np.allclose(got, evaluate("image", x, y)["ssim"], atol=1e-5)
        loss_form = ssim_torch(torch.from_numpy(x), torch.from_numpy(y), dtype=torch.float32).numpy()
        assert np.allclose(loss_form, got, atol=1e-5)  # the training loss's float32 SSIM is the same number
    s, r = rng.standard_normal((6, 1, 140)), rng.standard_normal((6, 1, 140))
    assert np.allclose(pearson_torch(torch.from_numpy(s), torch.from_numpy(s + r)).numpy(), pearson(s, s + r))


def test_decoder_early_stops_on_held_out_data_and_keeps_its_best_epoch(dropped, digits):
    """With a generous cap, training stops because the held-out score stopped improving, not at the cap."""
    cfg = replace(FAST, attacks=("decoder_mlp",), decoder_epochs=400, decoder_patience=3, decoder_hidden=64,
                  budget_curve=False)
    rep = run_audit(dropped[0], cfg, dataset=digits, progress=False, log=lambda s: None).report
    dec = rep.budgets["decoder_mlp"]
    assert dec.converged and dec.epochs_run < 400 and rep.all_converged
    assert dec.epochs_run - dec.best_epoch <= 3  # stopped after `patience` epochs without a real gain
    assert dec.best_val == max(dec.val_metric_per_epoch)
    assert not any("epoch cap" in w for w in rep.warnings)


def test_report_without_the_public_data_curve_still_shows_convergence(dropped, digits, tmp_path):
    cfg = replace(FAST, attacks=("decoder_mlp",), decoder_epochs=6, decoder_hidden=64, budget_curve=False)
    res = run_audit(dropped[0], cfg, dataset=digits, progress=False, log=lambda s: None)
    _, html = write_report(res, tmp_path)
    text = html.read_text()
    assert "public-data half of the budget curve was not run" in text and "data:image/png" in text


def test_mixed_precision_decoder_is_as_strong_as_float32(dropped, digits):
    """bf16 autocast (the CPU default where bf16 is native) trains an attacker as good as float32 does."""
    cfg = replace(FAST, attacks=("decoder_mlp",), decoder_epochs=60, decoder_patience=4, decoder_hidden=128,
                  budget_curve=False, torch_device="cpu")
    reps = {prec: run_audit(dropped[0], replace(cfg, decoder_precision=prec), dataset=digits, progress=False,
                            log=lambda s: None).report for prec in ("fp32", "bf16")}
    assert reps["fp32"].budgets["decoder_mlp"].precision == "float32"
    assert reps["bf16"].budgets["decoder_mlp"].precision.startswith("bf16 autocast")
    vals = {prec: r.budgets["decoder_mlp"].best_val for prec, r in reps.items()}
    assert vals["fp32"] > 0.2 and abs(vals["bf16"] - vals["fp32"]) < 0.03, vals
    with pytest.raises(InputError, match="precision"):
        run_audit(dropped[0], replace(cfg, decoder_precision="fp8"), dataset=digits, progress=False)


def test_an_interrupted_audit_resumes_only_the_same_audit(dropped, digits, tmp_path):
    """Finished attacks and budget-curve points are saved; a rerun reuses them (same numbers), a changed
    setting or a damaged file does not."""
    cfg = replace(FAST, attacks=("min_norm", "decoder_mlp"), decoder_epochs=8, decoder_hidden=64,
                  checkpoint_dir=str(tmp_path / "ck"))
    first = run_audit(dropped[0], cfg, dataset=digits, progress=False, log=lambda s: None).report
    assert first.resumed_attacks == () and first.budget_curve is not None
    again = run_audit(dropped[0], cfg, dataset=digits, progress=False, log=lambda s: None).report
    assert again.resumed_attacks == ("min_norm", "decoder_mlp")
    # the reused attacks' compute still counts in what the audit cost (this run alone took a fraction of it)
    assert again.timing_s["compute_s"] >= first.budgets["decoder_mlp"].seconds > 0
    assert again.timing_s["compute_s"] > again.timing_s["total_s"]
    for name in ("min_norm", "decoder_mlp"):
        assert again.attacks[name].metrics["ssim"].mean == first.attacks[name].metrics["ssim"].mean
    assert again.budget_curve.points == first.budget_curve.points
    (folder,) = (tmp_path / "ck").iterdir()
    (folder / "min_norm.npy").write_bytes(b"damaged")
    other = run_audit(dropped[0], replace(cfg, decoder_hidden=32), dataset=digits, progress=False,
                      log=lambda s: None).report
    assert other.resumed_attacks == () and len(list((tmp_path / "ck").iterdir())) == 2
    redo = run_audit(dropped[0], cfg, dataset=digits, progress=False, log=lambda s: None).report
    assert redo.resumed_attacks == ("decoder_mlp",)  # the damaged one ran again
    assert redo.attacks["min_norm"].metrics["ssim"].mean == pytest.approx(
        first.attacks["min_norm"].metrics["ssim"].mean)


def test_budget_curve_sizes_can_be_chosen(dropped, digits):
    cfg = replace(FAST, attacks=("decoder_mlp",), decoder_epochs=3, decoder_hidden=32, curve_sizes=(100, 300))
    curve = run_audit(dropped[0], cfg, dataset=digits, progress=False, log=lambda s: None).report.budget_curve
    sizes = [p.public_train for p in curve.points]
    assert sizes[:2] == [100, 300] and len(sizes) == 3 and sizes[2] > 1000  # the chosen sizes, then all of it
    assert curve.last_doubling_gain == pytest.approx(curve.points[2].test - curve.points[1].test)


def test_budget_curve_family_can_be_chosen_and_the_report_says_when_it_is_not_the_strongest(dropped, digits):
    cfg = replace(FAST, attacks=("decoder_mlp", "decoder_adaptive"), decoder_epochs=4, decoder_hidden=32,
                  curve_sizes=(300,))
    rep = run_audit(dropped[0], cfg, dataset=digits, progress=False, log=lambda s: None).report
    vals = {f: rep.budgets[f"decoder_{f}"].best_val for f in ("mlp", "adaptive")}
    weaker = min(vals, key=vals.get)
    assert rep.budget_curve.family == max(vals, key=vals.get)  # auto: the strongest on held-out data
    chosen = run_audit(dropped[0], replace(cfg, curve_family=weaker), dataset=digits, progress=False,
                       log=lambda s: None).report
    assert chosen.budget_curve.family == weaker
    assert any("--curve-family" in w and "weaker attacker" in w for w in chosen.warnings)
    with pytest.raises(InputError, match="decoder_conv is not among the attacks"):
        run_audit(dropped[0], replace(cfg, curve_family="conv"), dataset=digits, progress=False)
    with pytest.raises(InputError, match="--curve-family must be"):
        run_audit(dropped[0], replace(cfg, curve_family="biggest"), dataset=digits, progress=False)


def test_library_call_audits_your_own_arrays(undefended, digits, tmp_path):
    import daonet

    res = daonet.audit(undefended[0], (digits.x_train, digits.y_train), (digits.x_test, digits.y_test),
                       budget="quick", attacks=("min_norm", "decoder_mlp"), n_test=30, budget_curve=False,
                       out=tmp_path, progress=False, log=lambda s: None)
    s = res.report
    assert s.budget.name == "quick" and not s.is_claim and s.best_attack in ("min_norm", "decoder_mlp")
    assert s.score("min_norm") > s.score("data_mean")
    assert (tmp_path / "report.html").exists()
    with pytest.raises(InputError, match="either dataset"):
        daonet.audit(undefended[0], (digits.x_train, digits.y_train))
    with pytest.raises(InputError, match="unknown audit option"):
        daonet.audit(undefended[0], dataset=digits, telepathy=True)


@pytest.mark.parametrize("schedule", ["plateau", "one-cycle"])
def test_an_interrupted_decoder_continues_where_it_stopped(dropped, digits, tmp_path, schedule):
    """A decoder killed mid-training resumes from its saved state and ends exactly where an uninterrupted
    run ends (same held-out scores every epoch, same weights); a different setting does not reuse it. The
    one-cycle run is killed inside its first restart cycle."""
    import torch

    from daonet.audit.core import Observer, build_pairs, load_pair
    from daonet.audit.decoders import DecoderBudget, fit_decoder

    device, server = load_pair(dropped[0])
    x_pub = digits.x_train[:600]
    budget = DecoderBudget(max_epochs=40, patience=3, hidden=64, batch=64, val_size=100, precision="fp32",
                           schedule=schedule, cycle_epochs=4, restart_epochs=3)
    pairs = build_pairs(device, server, Observer(device, server, None, x_pub.reshape(600, -1).mean(0)), None,
                        x_pub, budget, seed=0, policy_pools=1, torch_device=torch.device("cpu"))
    kw = dict(kind="image", input_shape=tuple(device.input_shape), box=(0.0, 1.0), budget=budget, progress=False)
    whole = fit_decoder("mlp", pairs, **kw)
    assert whole.info["epochs_run"] > 5

    class Killed(Exception):
        pass

    def kill_at_5(epoch: int, _val: float) -> None:
        if epoch == 5:
            raise Killed

    state = tmp_path / "decoder_mlp.partial.pt"
    with pytest.raises(Killed):
        fit_decoder("mlp", pairs, **kw, resume=state, save_every_s=0, on_epoch=kill_at_5)
    assert state.exists()
    seen: list[int] = []
    resumed = fit_decoder("mlp", pairs, **kw, resume=state, on_epoch=lambda e, v: seen.append(e))
    assert seen[0] == 6 and resumed.info["resumed_from_epoch"] == 5
    # the killed process's seconds are counted once: in "seconds" and, for the audit's compute_s, as resumed
    assert 0 < resumed.info["resumed_seconds"] < resumed.info["seconds"]
    assert resumed.info["val_metric_per_epoch"] == whole.info["val_metric_per_epoch"]
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    done = fit_decoder("mlp", pairs, **kw, resume=state, on_epoch=lambda e, v: seen.append(-1))
    assert -1 not in seen and done.info["best_val"] == whole.info["best_val"]  # finished: nothing retrained
    other = fit_decoder("mlp", pairs, **{**kw, "budget": replace(budget, hidden=32)}, resume=state)
    assert "resumed_from_epoch" not in other.info


def test_stacked_min_norm_merges_repeated_rows_into_the_same_least_squares_solution():
    """K observations of one input share outputs (noisy values on re-captures): the merged system (one row per
    output, weight sqrt(count), mean value) has the same minimum-norm least-squares solution as the stacked one."""
    from daonet.audit.attacks import ServerKnowledge, min_norm

    rng = np.random.default_rng(0)
    m, n = 300, 60
    know = ServerKnowledge(rng.standard_normal((m, n)), rng.standard_normal(m), (1, n), None, "signal", 1.0)
    pre = rng.standard_normal((4, n)) @ know.a.T + know.c
    hs = np.stack([np.where((rng.random(pre.shape) > 0.85) & (pre > 0), pre + rng.normal(0, 0.1, pre.shape) * (k % 2),
                            0.0) for k in range(5)])
    stacked = []
    for i in range(hs.shape[1]):
        rows = [np.flatnonzero(hs[k, i]) for k in range(hs.shape[0])]
        s = np.concatenate(rows)
        r = np.concatenate([hs[k, i, rows[k]] for k in range(hs.shape[0])]) - know.c[s]
        stacked.append(np.linalg.lstsq(know.a[s], r, rcond=None)[0])
    np.testing.assert_allclose(min_norm(know, hs, np.zeros(n), clip=False), np.array(stacked), atol=1e-9)


def test_repeated_rows_match_direct_solves_of_their_stacked_equations():
    """The repeated-query measurement solves identical K payloads once and every rMLE problem in one batch: each
    row must still equal solving its K stacked payloads directly (min-norm and rMLE)."""
    from daonet.audit.attacks import ServerKnowledge, min_norm, regularized
    from daonet.audit.metrics import pearson
    from daonet.audit.repeated import Captures, repeated_queries

    rng = np.random.default_rng(1)
    m, n = 120, 24
    know = ServerKnowledge(rng.standard_normal((m, n)), rng.standard_normal(m), (1, n), None, "signal", 1.0)
    x = rng.standard_normal((6, 1, n)).astype(np.float32)

    def observe(xb: np.ndarray, source) -> np.ndarray:
        pre = xb.reshape(len(xb), -1) @ know.a.T + know.c
        keep = np.stack([source.mask(xi.tobytes(), m) for xi in xb]) if hasattr(source, "mask") else None
        keep = keep if keep is not None else source.rng.random(pre.shape) > 0.7
        return np.where(keep & (pre > 0), pre, 0.0)

    class Fresh:
        def __init__(self) -> None:
            self.rng = np.random.default_rng(3)

    class Keyed:
        def mask(self, key: bytes, size: int) -> np.ndarray:
            return np.random.default_rng(list(key[:16])).random(size) > 0.7

    class Mixed(Keyed):  # keyed for inputs 0-2, fresh for the others: identical payloads for some inputs only
        def __init__(self) -> None:
            self.rng = np.random.default_rng(5)

        def mask(self, key: bytes, size: int) -> np.ndarray:
            fresh = self.rng.random(size) > 0.7
            return super().mask(key, size) if np.frombuffer(key, np.float32)[0] in x[:3, 0, 0] else fresh

    captures = [Captures("exact", lambda xx, k, r: np.broadcast_to(xx, (k, *xx.shape)).copy())]
    mu = np.zeros(n)
    res = repeated_queries(observe, know, x, mu, "signal", masks={"fresh": Fresh, "keyed": Keyed, "mixed": Mixed},
                           captures=captures, ks=(1, 4), baseline=np.zeros_like(x), rmle_lambda=0.01,
                           rmle_steps=30)
    for label, factory in (("fresh", Fresh), ("keyed", Keyed), ("mixed", Mixed)):
        source = factory()
        hs = np.stack([observe(x, source) for _ in range(4)])
        for k in (1, 4):
            row = next(r for r in res.rows if r.masks == label and r.k == k)
            mn = min_norm(know, hs[:k] if k > 1 else hs[0], mu)
            rec = regularized(know, hs[:k] if k > 1 else hs[0], mu, 0.01, steps=30, init=mn)
            assert row.min_norm == pytest.approx(pearson(x, mn.reshape(x.shape)).mean(), abs=1e-6)
            assert row.rmle == pytest.approx(pearson(x, rec.reshape(x.shape)).mean(), abs=1e-3)
    keyed4 = next(r for r in res.rows if r.masks == "keyed" and r.k == 4)
    fresh4 = next(r for r in res.rows if r.masks == "fresh" and r.k == 4)
    mixed4 = next(r for r in res.rows if r.masks == "mixed" and r.k == 4)
    assert keyed4.identical == 1.0 and fresh4.identical == 0.0 and mixed4.identical == pytest.approx(0.5)
    assert fresh4.min_norm > next(r for r in res.rows if r.masks == "fresh" and r.k == 1).min_norm


def test_one_cycle_plan_converges_only_after_a_restart_cycle_that_gained_nothing():
    """The one-cycle schedule claims convergence only when a whole further cycle at a fresh learning rate
    failed to raise the best held-out score by more than min_delta; with no restart cycle it never does."""
    import torch

    from daonet.audit.decoders import DecoderBudget, LRPlan

    def run(budget: DecoderBudget, scores: list[float]) -> tuple[list[str | None], list[float]]:
        opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=budget.lr)
        plan, verdicts, lrs = LRPlan(budget, opt, 5), [], []
        for epoch, val in enumerate(scores):
            for _ in range(5):
                lrs.append(opt.param_groups[0]["lr"])
                opt.step()
                plan.after_step()
            verdicts.append(plan.after_epoch(epoch, val))
            if verdicts[-1]:
                break
        return verdicts, lrs

    b = DecoderBudget(schedule="one-cycle", cycle_epochs=4, restart_epochs=2, lr=1e-2, min_delta=1e-3)
    rising = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6005, 0.6009, 0.9]
    verdicts, lrs = run(b, rising)
    # epochs 1-4 first cycle, 5-6 a restart that gained 0.2, 7-8 a restart that gained 0.0009: converged
    assert verdicts[:7] == [None] * 7 and verdicts[7] is not None and verdicts[7].startswith("converged")
    assert max(lrs[:20]) == pytest.approx(1e-2, rel=1e-3) and lrs[19] < 1e-4  # warm-up to lr, anneal to ~0
    assert max(lrs[20:30]) == pytest.approx(3e-3, rel=1e-3)  # the restart peaks at restart_lr x lr
    verdicts, _ = run(b, [0.1 * (i + 1) for i in range(20)])
    assert not any(verdicts)  # still gaining every cycle: never converged (the epoch cap decides)
    verdicts, _ = run(replace(b, restart_epochs=0), [0.5] * 6)
    assert verdicts[3] is not None and not verdicts[3].startswith("converged")
    with pytest.raises(InputError, match="schedule"):
        DecoderBudget(schedule="cosine").validate()


def test_an_audit_split_over_processes_reports_what_one_process_does(dropped, tmp_path):
    """--jobs 2 trains each attacker, then each budget-curve point, in one of two processes, from the same seeds
    and budget, and assembles one report: every score is the one-process audit's."""
    from daonet.audit.parallel import run_audit_parallel, split_attacks

    cfg = replace(FAST, attacks=("min_norm", "rmle", "decoder_mlp", "decoder_conv", "decoder_label", "repeated"),
                  decoder_epochs=4, decoder_hidden=64, rmle_steps=30, n_repeat=8, repeats=(1, 5), budget_curve=True,
                  curve_sizes=(100, 200))
    groups = split_attacks(cfg.attacks, 2)
    assert len(groups) == 2 and groups[0][0] == "decoder_conv" and "repeated" not in sum(groups, ())
    assert sorted(sum(groups, ())) == sorted(a for a in cfg.attacks if a != "repeated")
    one = run_audit(dropped[0], replace(cfg, checkpoint_dir=str(tmp_path / "one")), progress=False,
                    log=lambda s: None).report
    said: list[str] = []
    two = run_audit_parallel(dropped[0], replace(cfg, checkpoint_dir=str(tmp_path / "two")), 2, threads=1,
                             progress=False, log=said.append).report
    assert sum("job 2 of 2" in line for line in said) == 2  # the attacks, then the budget curve's two sizes
    assert two.timing_s["jobs"] == 2 and two.timing_s["wall_s"] >= two.timing_s["total_s"]
    assert any("budget curve of decoder_" in line for line in said)
    assert set(two.resumed_attacks) == set(sum(groups, ()))  # every attack came from a share's checkpoint
    for name, entry in one.attacks.items():
        assert two.attacks[name].metrics[one.metric].mean == pytest.approx(entry.metrics[one.metric].mean,
                                                                             abs=1e-6), name
    assert two.budget_curve is not None and two.repeated is not None
    assert [p.public_train for p in two.budget_curve.points] == [p.public_train for p in one.budget_curve.points]
    assert [p.test for p in two.budget_curve.points] == pytest.approx([p.test for p in one.budget_curve.points])
    with pytest.raises(InputError, match="checkpoint"):
        run_audit_parallel(dropped[0], cfg, 2, progress=False)
