"""The re-initialised adversary pool: min-max training against attackers trained towards convergence on a
schedule, the model penalised on the best one's gain over a label-only decoder; and the sent-value concentration
that shows whether a model fooled its adversary with a few huge values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from daonet.cli import app
from daonet.data import load_dataset
from daonet.errors import InputError
from daonet.nn.defences import AdversaryPool, frozen_batchnorm, label_means, sent_concentration
from daonet.studies.pipeline import read_train_run
from daonet.studies.plan import Candidate, PlanConfig, grid_candidates
from daonet.train import Defences, TrainConfig, model_for, save_run, train

SMALL = dict(dataset="digits", model="mlp", drop_rate=0.5, epochs=2, batch_size=64, adversary_weight=2.0,
             adversary_reset=1, adversary_warmup=30, adversary_hidden=32, model_kwargs={"hidden": 32, "hidden2": 16})

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_label_means_are_the_class_means():
    gen = torch.Generator().manual_seed(0)
    target = torch.randn((40, 5), generator=gen)
    y = torch.randint(0, 3, (40,), generator=gen)
    means = label_means(target, y, 4)
    for c in range(3):
        assert torch.allclose(means[c], target[y == c].mean(0), atol=1e-6)
    assert torch.equal(means[3], torch.zeros(5))  # a class never seen: the zero vector, not NaN


def test_gain_is_the_best_members_advantage_over_the_label_decoder():
    gen = torch.Generator().manual_seed(1)
    h, target = torch.randn((8, 6), generator=gen), torch.randn((8, 10), generator=gen)
    probs, y = torch.softmax(torch.randn((8, 3), generator=gen), 1), torch.randint(0, 3, (8,), generator=gen)
    pool = AdversaryPool(6, 10, 16, 3, 3, torch.randn((3, 10), generator=gen))
    assert [adv.kind for adv, _ in pool.members] == ["mlp", "adaptive", "mlp"]
    with torch.no_grad():
        errs = torch.stack([(adv(h, probs if adv.kind == "adaptive" else None) - target).pow(2).mean(1)
                            for adv, _ in pool.members])
        label = (target - pool.label_means[y]).pow(2).mean(1)
        expected = (label - errs.min(0).values).clamp_min(0)
        assert torch.allclose(pool.gain(h, probs, target, y), expected, atol=1e-6)
        free = (0.9 * label - errs.min(0).values).clamp_min(0)  # a 10 % margin: gains below it cost nothing
        assert torch.allclose(pool.gain(h, probs, target, y, margin=0.1), free, atol=1e-6)
        assert bool((free <= expected).all())
    pool.label_means = target.mean(0, keepdim=True).expand(3, -1) * 0 + 1e6  # a useless floor: every gain > 0
    with torch.no_grad():  # the mlp members far off, so the adaptive one (which sees probs) is the best everywhere
        for adv, _ in pool.members:
            if adv.kind == "mlp":
                adv.net[-1].bias.fill_(1e3)
    g = pool.gain(h.requires_grad_(), probs.requires_grad_(), target, y)
    assert bool((g > 0).all())
    g.sum().backward()
    assert h.grad is not None and probs.grad is not None and float(probs.grad.abs().sum()) > 0


def test_reset_reinitialises_and_warmup_lowers_the_pools_error(digits):
    cfg = TrainConfig(**{**SMALL, "adversary_reset": 2})
    cfg.validate()
    model = model_for(cfg, digits)
    defences = Defences.for_training(cfg, model.first, digits)
    assert defences.pool is not None and defences.adversary is None
    x = torch.from_numpy(digits.x_train)
    gen = torch.Generator().manual_seed(0)
    model.first.generator = gen
    model.train()

    def forward(xb):
        h = model.first(xb)
        return h, model.rest(h)

    def pool_error():
        with torch.no_grad():
            h, logits = forward(x[:300])
            target = ((x[:300] - model.first.mean) / model.first.std).flatten(1)
            return [float((adv(h, torch.softmax(logits, 1) if adv.kind == "adaptive" else None) - target).pow(2)
                          .mean()) for adv, _ in defences.pool.members]

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    stats = [(m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in norms]
    first_weights = [p.detach().clone() for p in defences.pool.members[0][0].parameters()]
    with frozen_batchnorm(model):
        before = pool_error()
    defences.start_epoch(0, model, forward, x, gen)  # a reset epoch: fresh members, then the warm-up
    with frozen_batchnorm(model):
        after = pool_error()
    assert all(a < b for a, b in zip(after, before, strict=True)), (before, after)
    assert not all(torch.equal(a, b) for a, b in zip(first_weights, defences.pool.members[0][0].parameters(),
                                                     strict=True))
    for m, (mean, var, momentum) in zip(norms, stats, strict=True):  # the warm-up looked without changing
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var) and m.momentum == momentum
    kept = [p.detach().clone() for p in defences.pool.members[0][0].parameters()]
    defences.start_epoch(1, model, forward, x, gen)  # not a reset epoch: nothing happens
    assert all(torch.equal(a, b) for a, b in zip(kept, defences.pool.members[0][0].parameters(), strict=True))


def test_training_with_the_pool_records_sent_values(digits, tmp_path):
    result = train(TrainConfig(**SMALL), ds=digits)
    run = read_train_run(save_run(result, tmp_path / "run"))
    assert run.sent_values is not None and 0 < run.sent_values.top_share <= 1 and run.sent_values.max_over_rms >= 1
    plain = train(TrainConfig(**{**SMALL, "adversary_weight": 0.0, "adversary_reset": 0}), ds=digits)
    assert not torch.equal(plain.model.first.weight, result.model.first.weight)  # same seed: only the pool differs


def test_sent_concentration_sees_a_few_huge_values(digits):
    model = model_for(TrainConfig(**SMALL), digits)
    x = digits.x_test[:200]
    even = sent_concentration(model.first, x)
    with torch.no_grad():
        model.first.weight[:3] *= 1000.0  # three outputs carry almost all the energy
        model.first.bias[:3] *= 1000.0
    spiky = sent_concentration(model.first, x)
    assert spiky["top_share"] > even["top_share"] and spiky["max_over_rms"] > even["max_over_rms"]
    assert np.isclose(even["top_fraction"], 0.05)


def test_reset_without_a_weight_is_refused():
    with pytest.raises(InputError, match="--adversary-weight"):
        TrainConfig(dataset="digits", adversary_reset=2).validate()
    with pytest.raises(InputError, match="adversary_weight > 0"):
        Candidate(1, None, 0.5, 0.0, adversary_reset=2).validate()
    out = CliRunner().invoke(app, ["train", "--dataset", "digits", "--adversary-reset", "2"])
    assert out.exit_code != 0 and "--adversary-weight" in out.output
    out = CliRunner().invoke(app, ["train", "--dataset", "digits", "--adversary-weight", "1",
                                   "--adversary-pool", "9"])
    assert out.exit_code != 0 and "--adversary-pool" in out.output
    with pytest.raises(InputError, match="--adversary-reset"):
        TrainConfig(dataset="digits", adversary_weight=1.0, adversary_margin=0.1).validate()
    out = CliRunner().invoke(app, ["train", "--dataset", "digits", "--adversary-weight", "1", "--adversary-reset",
                                   "2", "--adversary-margin", "1.5"])
    assert out.exit_code != 0 and "--adversary-margin" in out.output


def test_the_plan_grid_lists_adversary_reset():
    cfg = PlanConfig(dataset="digits", model="mlp", grid={"adversary_weight": (2.0,), "adversary_reset": (0, 3)})
    cands = grid_candidates(cfg)
    assert [c.adversary_reset for c in cands] == [0, 3]
    assert "reset every 3" in cands[1].describe()
    assert json.loads(json.dumps(cands[1].adversary_reset)) == 3


def test_your_own_model_plans_with_the_pool(tmp_path):
    """A user's module through ``daonet.plan``: the pool trains it (the row's config records it) and its
    metrics carry the sent-value concentration."""
    import daonet

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flat, self.fc1, self.fc2 = nn.Flatten(), nn.Linear(64, 32), nn.Linear(32, 10)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(self.flat(x))))

    torch.manual_seed(0)
    result = daonet.plan(Net(), "digits", out=tmp_path / "plan", grid={"adversary_weight": [1.0],
                         "adversary_reset": [2]}, budget="quick", epochs=2, audit_n_test=20,
                         attacks=("min_norm", "decoder_label"), log=None)
    (point,) = result.points
    row = next(p for p in (tmp_path / "plan" / "candidates").iterdir() if p.is_dir())
    assert json.loads((row / "run" / "config.json").read_text())["train"]["adversary_reset"] == 2
    assert read_train_run(row / "run").sent_values is not None
    assert point.candidate.adversary_reset == 2


def test_a_defence_added_to_a_trained_model_starts_from_its_weights(digits, tmp_path):
    """``--init-from RUN``: the new run starts from RUN's weights (with a zero learning rate it keeps them, so the
    load is what is tested), and a run of another architecture is refused, naming what differs."""
    plain = train(TrainConfig(dataset="digits", model="mlp", drop_rate=0.5, epochs=1, batch_size=64,
                              model_kwargs={"hidden": 32, "hidden2": 16}), ds=digits)
    run = tmp_path / "plain"
    save_run(plain, run)
    cfg = TrainConfig(**{**SMALL, "epochs": 1, "lr": 1e-12, "weight_decay": 0.0, "init_from": str(run)})
    tuned = train(cfg, ds=digits)
    for (name, a), (_, b) in zip(plain.model.named_parameters(), tuned.model.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    fresh = train(TrainConfig(**{**SMALL, "epochs": 1, "lr": 1e-12, "weight_decay": 0.0}), ds=digits)
    first = next(iter(plain.model.first.parameters()))
    assert not torch.allclose(next(iter(fresh.model.first.parameters())), first)  # the load is what kept them
    wider = TrainConfig(**{**SMALL, "model_kwargs": {"hidden": 48, "hidden2": 16}, "init_from": str(run)})
    with pytest.raises(InputError, match="another architecture"):
        train(wider, ds=digits)
    with pytest.raises(InputError, match="no model.safetensors"):
        train(TrainConfig(**{**SMALL, "init_from": str(tmp_path)}), ds=digits)
