"""The train/export/sweep commands, run as a user runs them (Typer's runner, real data)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from daonet.cli import app
from daonet.device import DeviceModel

runner = CliRunner()


def test_train_then_export(tmp_path):
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--dataset", "digits", "--model", "mlp", "--drop-rate", "0.5",
                              "--epochs", "2", "--model-opt", "hidden=64", "--out", str(run)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["drop_rate"] == 0.5 and metrics["n_outputs"] == 64
    assert 0.3 < metrics["test_accuracy"]["mean"] <= 1.0  # 2 epochs on digits: far above chance (0.1)
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "bundle"), "--model-id", "dig"])
    assert res.exit_code == 0, res.output
    device = DeviceModel.load(tmp_path / "bundle" / "device")
    assert device.model_id == "dig" and device.version in res.output


def test_train_rejects_bad_arguments(tmp_path):
    res = runner.invoke(app, ["train", "--dataset", "digits", "--drop-rate", "1.5", "--out", str(tmp_path)])
    assert res.exit_code != 0
    assert "drop-rate must be in [0, 1)" in str(res.exception) + res.output
    res = runner.invoke(app, ["train", "--dataset", "digits", "--model-opt", "oops", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output


def test_export_of_missing_run(tmp_path):
    res = runner.invoke(app, ["export", str(tmp_path / "nope")])
    assert res.exit_code != 0
    assert "is missing" in str(res.exception)


def test_sweep_writes_table(tmp_path):
    from daonet.studies import sweep as sweep_mod
    from daonet.train import TrainConfig

    sweep_mod.TASKS["digits-mlp-test"] = TrainConfig(dataset="digits", model="mlp", epochs=1,
                                                     model_kwargs={"hidden": 32})
    try:
        res = runner.invoke(app, ["sweep", "--task", "digits-mlp-test", "--drop-rate", "0", "--drop-rate", "0.9",
                                  "--out", str(tmp_path)])
    finally:
        del sweep_mod.TASKS["digits-mlp-test"]
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["drop_rate"] for r in rows] == [0.0, 0.9]
    assert rows[1]["surviving_mean"] < rows[0]["surviving_mean"]
    assert "| digits-mlp-test | 0.9 |" in (tmp_path / "sweep.md").read_text()
