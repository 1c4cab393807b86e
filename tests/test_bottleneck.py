"""The conditional information bottleneck: the Gaussian mechanism's bound on what a request carries beyond its
class, as a training penalty, as a figure in metrics.json and the plan, and its refusals."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from daonet.cli import app
from daonet.data import load_dataset
from daonet.errors import InputError
from daonet.nn.defences import ClassReferences, conditional_information, conditional_nats
from daonet.studies.pipeline import read_train_run
from daonet.studies.plan import PlanConfig, run_plan
from daonet.train import TrainConfig, recommended_config, save_run, train

SMALL = dict(dataset="digits", model="mlp", drop_rate=0.5, epochs=8, batch_size=64)
ARCH = {"hidden": 64, "hidden2": 32, "ldp_epsilon": 8.0}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_nats_are_the_kl_divergence_of_the_two_gaussians():
    """``conditional_nats`` equals KL(N(mean, s^2) || N(keep * ref, s^2)) summed over kept outputs, computed by
    torch.distributions (dropped outputs are not sent: zero in both)."""
    gen = torch.Generator().manual_seed(0)
    keep = torch.rand((6, 3, 5), generator=gen) < 0.6
    mean = torch.randn((6, 3, 5), generator=gen) * keep
    refs = torch.randn((6, 3, 5), generator=gen)
    sigma = 0.7
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean, sigma),
                                           torch.distributions.Normal(refs * keep, sigma))
    expected = (kl * keep).flatten(1).sum(1)
    assert torch.allclose(conditional_nats(mean, keep, sigma, refs), expected, atol=1e-6)


def test_running_references_reach_the_class_means_over_kept_outputs():
    refs = ClassReferences(2, (4,), momentum=0.5)
    mean = torch.tensor([[1.0, 2.0, 0.0, 4.0], [3.0, 2.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    keep = mean != 0
    y = torch.tensor([0, 0, 1])
    for _ in range(30):  # the same batch again and again: the running mean converges to its class means
        refs.update(mean, keep, y)
    assert torch.allclose(refs.refs[0], torch.tensor([2.0, 2.0, 0.0, 4.0]), atol=1e-5)
    assert torch.allclose(refs.refs[1], torch.full((4,), 5.0), atol=1e-5)


@pytest.fixture(scope="module")
def runs():
    """The same digits model, seed and epsilon, trained without and with the bottleneck."""
    ds = load_dataset("digits")
    plain = train(TrainConfig(**SMALL, model_kwargs=ARCH), ds=ds)
    squeezed = train(TrainConfig(**SMALL, model_kwargs=ARCH, bottleneck_weight=1.0), ds=ds)
    return ds, plain, squeezed


def test_the_penalty_lowers_the_bound_it_measures(runs):
    ds, plain, squeezed = runs
    a, b = plain.metrics["conditional_information"], squeezed.metrics["conditional_information"]
    assert 0 < b["nats_mean"] < a["nats_mean"]
    for m in (a, b):
        assert m["nats_median"] <= m["nats_p95"] <= m["nats_max"] and m["label"] == "true class"
    assert squeezed.model.first.noise_spec()["epsilon"] <= 8.0  # the same mechanism: only the objective differs


def test_an_input_independent_device_carries_nothing_beyond_its_class(runs):
    ds, plain, _ = runs
    first = plain.model.first
    saved = first.op.weight.detach().clone()
    try:
        with torch.no_grad():
            first.op.weight.zero_()  # every input gives the same activations: nothing to learn beyond the class
        info = conditional_information(first, ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.n_classes, seed=3)
    finally:
        with torch.no_grad():
            first.op.weight.copy_(saved)
    # what remains is the clip of a random mask's kept vector vs the class mean of those: small next to the model's
    assert info["nats_mean"] < 0.1 * plain.metrics["conditional_information"]["nats_mean"]


def test_metrics_record_the_bound_and_the_run_record_reads_it(runs, tmp_path):
    _, _, squeezed = runs
    run = read_train_run(save_run(squeezed, tmp_path / "run"))
    assert run.conditional_information is not None
    assert run.conditional_information.nats_mean == pytest.approx(squeezed.metrics["conditional_information"]
                                                                  ["nats_mean"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["bottleneck_weight"] == 1.0


def test_the_bottleneck_without_the_gaussian_mechanism_is_refused():
    with pytest.raises(InputError, match="ldp_epsilon"):
        TrainConfig(**SMALL, bottleneck_weight=0.5).validate()
    with pytest.raises(InputError, match="bottleneck"):
        TrainConfig(**SMALL, model_kwargs=ARCH, bottleneck_weight=-1.0).validate()
    with pytest.raises(InputError, match="needs the Gaussian mechanism"):
        PlanConfig(dataset="digits", grid={"bottleneck_weight": (0.0, 0.5)}).validate()
    result = CliRunner().invoke(app, ["train", "--dataset", "digits", "--bottleneck-weight", "0.5"])
    assert result.exit_code != 0 and "ldp_epsilon" in result.output and "Traceback" not in result.output


def test_plan_grid_over_the_bottleneck(tmp_path, digits):
    """A grid over the bottleneck weight at one epsilon: each plan point carries the bound its run measured."""
    out = tmp_path / "plan"
    cfg = PlanConfig(dataset="digits", model="mlp", out=str(out), budget="quick", epochs=2, audit_n_test=20,
                     attacks=("min_norm", "decoder_mlp", "decoder_label"),
                     grid={"ldp_epsilon": (8.0,), "bottleneck_weight": (0.0, 1.0)})
    result = run_plan(cfg, log=lambda _: None)
    by_w = {p.candidate.bottleneck_weight: p for p in result.points}
    assert set(by_w) == {0.0, 1.0} and "bottleneck 1" in by_w[1.0].candidate.describe()
    for p in by_w.values():
        assert p.conditional_nats is not None and p.conditional_nats > 0
    saved = json.loads((out / "pareto.json").read_text())
    assert all(p["conditional_nats"] > 0 for p in saved["trials"])


def test_the_least_leakage_recipe_and_its_refusals():
    cfg = recommended_config("ecg5000", "cnn1d", "least-leakage", model_kwargs={"ldp_delta": 1e-6})
    cfg.validate()  # a recipe that would be refused is no recipe
    assert cfg.bottleneck_weight > 0 and cfg.model_kwargs["ldp_epsilon"] > 0 and cfg.model_kwargs["ldp_delta"] == 1e-6
    assert recommended_config("ecg5000", "cnn1d").bottleneck_weight == 0  # the certificate default is unchanged
    from daonet.data import load_dataset
    from daonet.train import model_for

    first = model_for(cfg, load_dataset("ecg5000")).first  # the recipe builds: a pooled 2-layer head, the mechanism
    assert first.device_layers == 2 and first.device_pool == 4 and first.ldp is not None
    assert first.n_outputs < 1120  # pooling sends fewer values than the single layer's 32 x 35
    mnist = recommended_config("mnist", "cnn", "least-leakage")
    mnist.validate()
    head = model_for(mnist, load_dataset("mnist")).first  # MNIST's: a pooled 3-layer head under the mechanism
    assert head.device_layers == 3 and head.device_pool == 2 and head.ldp is not None and head.n_outputs == 576
    with pytest.raises(InputError, match="daonet plan --dataset mnist"):
        recommended_config("mnist", "mlp", "least-leakage")
    with pytest.raises(InputError, match="--goal must be one of"):
        recommended_config("ecg5000", "cnn1d", "smallest")
    runner = CliRunner()
    for args, said in ((["--dataset", "digits", "--goal", "least-leakage"], "add --recommended"),
                       (["--dataset", "mnist", "--recommended", "--goal", "least-leakage"], "no least-leakage recipe")):
        result = runner.invoke(app, ["train", *args])
        assert result.exit_code != 0 and said in result.output and "Traceback" not in result.output


def test_options_given_with_recommended_override_the_recipe(tmp_path):
    """``--recommended`` fills in the recipe; what the user typed wins (a smoke run of the recipe with
    ``--epochs 1``, another epsilon with ``--model-opt``), and the rest of the recipe stays."""
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--dataset", "ecg5000", "--model", "cnn1d", "--recommended", "--goal",
                                      "least-leakage", "--epochs", "1", "--n-train", "64", "--n-test", "64",
                                      "--adversary-warmup", "5", "--model-opt", "ldp_epsilon=64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "epochs=1 (yours)" in result.output
    cfg = json.loads((out / "config.json").read_text())["train"]
    assert cfg["epochs"] == 1 and cfg["model_kwargs"]["ldp_epsilon"] == 64
    assert cfg["device_pool"] == 4 and cfg["bottleneck_weight"] == 0.02 and cfg["batch_size"] == 32  # the recipe's
