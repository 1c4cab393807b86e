"""Class-balanced cross-entropy (``--class-balance``) and the plan grid's device-pool and class-balance keys."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from daonet.cli import app
from daonet.data import load_dataset
from daonet.errors import InputError
from daonet.studies.plan import Candidate, PlanConfig, candidate_row, grid_candidates
from daonet.train import TrainConfig, class_weights, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_weights_follow_the_class_shares_and_keep_the_loss_scale():
    y = np.array([0] * 90 + [1] * 9 + [2] * 1)
    assert class_weights(y, 3, 0.0) is None
    for balance in (0.3, 0.5, 1.0):
        w = class_weights(y, 3, balance).numpy().astype(np.float64)
        counts = np.bincount(y)
        assert np.isclose((w * counts).sum() / counts.sum(), 1.0)  # the mean weight over the split is 1
        assert w[2] > w[1] > w[0]
        assert np.isclose(w[1] / w[0], (9 / 90) ** -balance, rtol=1e-5)
    w = class_weights(y, 3, 1.0).numpy()
    assert np.allclose(w * np.bincount(y), (w * np.bincount(y))[0])  # 1: every class weighs the same in total
    w = class_weights(np.array([0, 0, 1]), 3, 0.5).numpy()  # class 2 absent: the largest weight present
    assert np.isclose(w[2], w.max()) and np.isfinite(w).all()


def test_training_uses_the_weights():
    ds = load_dataset("digits").subset(300, 100, seed=0)
    base = dict(dataset="digits", model="mlp", drop_rate=0.5, epochs=1, batch_size=64,
                model_kwargs={"hidden": 32, "hidden2": 16})
    plain = train(TrainConfig(**base), ds=ds)
    rare = ds.y_train == 0
    keep = ~rare | (np.cumsum(rare) <= 3)  # three samples of class 0 left: a rare class
    skewed = replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep])
    assert np.bincount(skewed.y_train)[0] == 3
    a = train(TrainConfig(**base), ds=skewed)
    b = train(TrainConfig(**base, class_balance=1.0), ds=skewed)  # same seed: only the loss weights differ
    assert not torch.equal(a.model.first.weight, b.model.first.weight)
    assert plain.config.class_balance == 0.0 and b.config.class_balance == 1.0


def test_out_of_range_balance_is_refused():
    with pytest.raises(InputError, match="class_balance|class-balance"):
        TrainConfig(dataset="digits", class_balance=1.5).validate()
    out = CliRunner().invoke(app, ["train", "--dataset", "digits", "--class-balance", "-0.1"])
    assert out.exit_code != 0 and "--class-balance" in out.output
    with pytest.raises(InputError, match="class_balance"):
        Candidate(1, None, 0.5, 0.0, class_balance=2.0).validate()
    with pytest.raises(InputError, match="device_pool"):
        Candidate(1, None, 0.5, 0.0, device_pool=1).validate()


def test_the_plan_grid_lists_device_pool_and_class_balance():
    cfg = PlanConfig(dataset="ecg5000", model="cnn1d", grid={"device_layers": (2,), "block_width": (32,),
                                                             "device_pool": (0, 2), "class_balance": (0.5,)})
    cands = grid_candidates(cfg)
    assert [(c.device_pool, c.class_balance) for c in cands] == [(0, 0.5), (2, 0.5)]
    assert "pool 2" in cands[1].describe() and "class balance 0.5" in cands[1].describe()
    row = candidate_row(cfg, cands[1])
    assert row.train.device_pool == 2 and row.train.class_balance == 0.5 and row.train.device_layers == 2
    assert candidate_row(cfg, cands[0]).key() != row.key()
