"""``daonet.plan`` for the user's own torch module (real training, export and quick audits on digits: the guide's
example as written, the study database, the Pareto set, the chosen bundle served over HTTP, one cached row per
distinct model) and the ``daonet plan`` / ``daonet train`` options generated from their declarations."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import daonet
from daonet.cli import app
from daonet.device import Client, DeviceModel
from daonet.errors import InputError
from daonet.server import ServerModel
from daonet.server.config import ServerConfig
from daonet.settings import option_name
from daonet.studies.plan import PlanConfig, PlanSpace
from daonet.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide" / "audit.md"
QUICK = dict(budget="quick", epochs=4, lr=1e-2, audit_n_test=20, attacks=("min_norm", "decoder_mlp", "decoder_label"),
             log=None)


class Net(nn.Module):
    def __init__(self, hidden: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(64, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc1(self.flat(x))))


def _net(seed: int, **kwargs) -> Net:
    torch.manual_seed(seed)
    return Net(**kwargs)


def _complete_trials(db: Path, study: str | None = None) -> int:
    query = ("select count(*) from trials t join studies s on t.study_id = s.study_id where t.state = 'COMPLETE'" +
             (" and s.study_name = ?" if study else ""))
    with sqlite3.connect(db) as con:
        return con.execute(query, (study,) if study else ()).fetchone()[0]


@pytest.fixture(scope="module")
def guide_plan(tmp_path_factory) -> tuple[Path, str]:
    """The guide's "plan your own model" block, run as written in a fresh folder (a user's script)."""
    code = re.search(r"<!-- plan-own-model[^>]*-->\n```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert code, f"{GUIDE} lost its plan-own-model block"
    cwd = tmp_path_factory.mktemp("guide-plan")
    (cwd / "plan_mine.py").write_text(code.group(1))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", NO_COLOR="1")
    res = subprocess.run([sys.executable, "plan_mine.py"], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return cwd / "reports" / "plan-mine", res.stdout


def test_the_guide_plan_writes_the_study_the_pareto_set_and_a_servable_bundle(guide_plan, digits, start_server):
    out, stdout = guide_plan
    assert _complete_trials(out / "plan.db") == 2
    doc = json.loads((out / "pareto.json").read_text())
    assert doc["claim"] is False and "NOT a privacy claim" in doc["note"]
    assert sorted(t["candidate"]["drop_rate"] for t in doc["trials"]) == [0.0, 0.5]
    assert all(t["candidate"]["device_layers"] == 1 and t["label_only"] is not None for t in doc["trials"])
    assert doc["chosen"] in doc["pareto"] and set(doc["pareto"]) <= {t["trial"] for t in doc["trials"]}
    assert (out / "pareto.png").stat().st_size > 0
    plan_json = json.loads((out / "plan.json").read_text())
    assert plan_json["model"] == "own:MyNet" and len(plan_json["own_model"]["fingerprint"]) == 16
    chosen = next(t for t in doc["trials"] if t["trial"] == doc["chosen"])
    assert f"chosen: {chosen['describe']} -> reports/plan-mine/chosen" in stdout
    # the chosen bundle is the user's model: a first layer on the device, the rest a torch.export program
    device = DeviceModel.load(out / "chosen" / "device")
    server = ServerModel.load(out / "chosen" / "server")
    cwd = out.parent.parent  # the script's folder: the paths in pareto.json are relative to it, as out= was
    assert device.version == DeviceModel.load(cwd / chosen["bundle"] / "device").version == server.version
    assert json.loads((out / "chosen" / "server" / "manifest.json").read_text())["arch"]["name"] == "torch.export"
    assert device.drop_rate == chosen["candidate"]["drop_rate"] and device.n_outputs == 64
    assert (out / "chosen" / "audit" / "audit.json").exists()
    live = start_server(ServerConfig(bundles=[out / "chosen" / "server"]))
    with Client(live.url, out / "chosen" / "device") as client:
        preds = client.predict_many(digits.x_test[:100])
    served = np.mean([p.index == y for p, y in zip(preds, digits.y_test[:100], strict=True)])
    assert served > 0.6, served  # 10 classes: chance is 0.1; the trial measured ~0.9 on the whole test set
    assert all(0 < p.payload.nnz <= 64 for p in preds)


def test_each_model_has_its_own_rows_and_the_same_model_reuses_them(tmp_path, one_torch_thread):
    """Two modules of one class that differ only in their initial weights are different models: their rows never
    share a cached folder. The same model again (another study) reuses its row instead of training again."""
    out = tmp_path / "plan"
    grid = {"drop_rate": [0.5]}
    model_a = _net(0)
    before = {k: v.clone() for k, v in model_a.state_dict().items()}
    a = daonet.plan(model_a, "digits", out=out, grid=grid, study_name="a", **QUICK)
    assert isinstance(model_a.fc1, nn.Linear)  # not split, not trained: every candidate trains a copy
    assert all(torch.equal(before[k], v) for k, v in model_a.state_dict().items())
    b = daonet.plan(_net(1), "digits", out=out, grid=grid, study_name="b", **QUICK)
    assert a.points[0].bundle != b.points[0].bundle
    rows = sorted(p.name for p in (out / "candidates").iterdir() if p.is_dir())
    assert len(rows) == 2
    prints = {json.loads((out / "candidates" / r / "run" / "config.json").read_text())["own_model"]["fingerprint"]
              for r in rows}
    assert len(prints) == 2
    stamp = (Path(a.points[0].bundle) / "device" / "manifest.json").stat().st_mtime_ns
    again = daonet.plan(_net(0), "digits", out=out, grid=grid, study_name="a-again", **QUICK)
    assert again.points[0].bundle == a.points[0].bundle and again.points[0].accuracy == a.points[0].accuracy
    assert (Path(a.points[0].bundle) / "device" / "manifest.json").stat().st_mtime_ns == stamp  # not rebuilt
    assert len([p for p in (out / "candidates").iterdir() if p.is_dir()]) == 2
    with pytest.raises(InputError, match="study 'a' .* is a plan of own:Net .* give another out"):
        daonet.plan(_net(1), "digits", out=out, grid=grid, study_name="a", **QUICK)  # b's model in a's study
    assert _complete_trials(out / "plan.db", "a") == 1


class Tanh(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.act = nn.Tanh()
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc1(x.flatten(1))))


def _unseeded() -> Net:
    net = Net()
    with torch.no_grad():
        net.fc1.bias += float(np.random.default_rng().random())  # randomness torch.manual_seed does not fix
    return net


@pytest.mark.parametrize(("model", "kwargs", "message"), [
    ("mlp", {}, "takes a torch.nn.Module .* got str"),
    (lambda: 3, {}, "factory returned int, not a torch.nn.Module"),
    (_unseeded, {}, "different initial weights .* seed it with torch.manual_seed"),
    (Net(classes=5), {}, r"outputs shaped \(8, 5\) .* 10 classes"),
    (Tanh(), {}, "cannot split your model: .*followed by .*Tanh"),
    (Net(), {"example_input": np.zeros((4, 1, 7, 7), np.float32)}, r"example_input is shaped \(4, 1, 7, 7\).*"
                                                                    r"\(1, 8, 8\)"),
    (Net(), {"grid": {"drop_rate": [0.5], "device_layers": [1, 2]}}, "first layer .* zoo architectures only"),
    (Net(), {"grid": {"block_width": [8]}}, "zoo architectures only"),
    (Net(), {"grid": {"hidden": [8]}}, "unknown; a grid lists"),
    (Net(), {"hiden": 8}, "unknown plan setting.*hiden"),
    (Net(), {"min_accuracy": 2.0}, "--min-accuracy must be at most 1"),
    (Net(), {"drop_rates": (0.5, 1.0)}, "drop-rate range"),
    (Net(), {"dataset": 42}, "dataset must be a data set name"),
])
def test_bad_plans_are_refused_before_anything_trains(tmp_path, model, kwargs, message):
    kwargs = {"dataset": "digits", **kwargs}
    with pytest.raises(InputError, match=message):
        daonet.plan(model, out=tmp_path / "p", budget="quick", **kwargs)
    assert not (tmp_path / "p" / "candidates").exists()


def test_an_already_split_model_is_refused(tmp_path, digits):
    model = daonet.split(Net(), 0.5, digits.x_train[:8])
    with pytest.raises(InputError, match="already split .* before daonet.split"):
        daonet.plan(model, "digits", out=tmp_path, budget="quick")
    with pytest.raises(InputError, match="PlanSpace\\(device_layers=\\(1, 2\\)\\).*zoo architectures only"):
        from daonet.studies.plan import run_plan

        run_plan(PlanConfig(dataset="digits", out=str(tmp_path)), model=Net())  # the zoo's default search space


def _declared(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if "setting" in f.metadata and f.metadata["setting"].cli]


def _help(*args: str) -> str:
    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "240", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    return res.output


def test_plan_and_train_options_come_from_the_declarations():
    plan_help = _help("plan")
    for name in _declared(PlanConfig) + [{"drop_rate": "drop_rates"}.get(n, n) for n in _declared(PlanSpace)]:
        assert option_name(name) in plan_help, name
    assert "--grid" in plan_help and "--model-opt" not in plan_help
    for option, bound in (("--trials", "x>=1"), ("--min-accuracy", "0<=x<=1"), ("--n-train", "x>=2"),
                          ("--max-bytes", "x>=0")):
        assert re.search(re.escape(option) + r"\s+<\w+ range> \[" + re.escape(bound) + r"\]", plan_help), option
    assert re.search(r"--dataset .*\[required\]", plan_help)
    train_help = _help("train")
    for name in _declared(TrainConfig):
        assert option_name(name) in train_help, name
    for option, bound in (("--device-layers", "1<=x<=3"), ("--epochs", "x>=1"), ("--adversary-hidden", "x>=8")):
        assert re.search(re.escape(option) + r"\s+<\w+ range> \[" + re.escape(bound) + r"\]", train_help), option
    assert "one of mlp, adaptive" in train_help and "[default: 0.9]" in train_help
    assert "--model-opt" in train_help and "--recommended" in train_help and "--out" in train_help


@pytest.mark.parametrize(("args", "message"), [
    (["plan", "--dataset", "digits", "--min-accuracy", "1.5"], "'--min-accuracy': Input should be less than or equal"),
    (["plan", "--dataset", "digits", "--trials", "0"], "'--trials': Input should be greater than or equal to 1"),
    (["plan", "--dataset", "digits", "--device-layers", "1,5"], "device layers must be among 1, 2, 3"),
    (["plan", "--dataset", "digits", "--drop-rates", "a,b"], "--drop-rates takes comma-separated float"),
    (["plan", "--dataset", "digits", "--budget", "huge"], "--budget must be one of quick, full"),
    (["plan", "--budget", "quick"], "--dataset"),
    (["train", "--dataset", "digits", "--device-layers", "4"], "'--device-layers': Input should be less than"),
    (["train", "--dataset", "digits", "--adversary", "strong"], "--adversary must be one of mlp, adaptive"),
    (["train", "--dataset", "digits", "--normalize", "minmax"], "--normalize must be one of auto"),
    (["train", "--dataset", "digits", "--noise-std", "0.5", "--quantize-levels", "2"], "cannot be combined"),
])
def test_out_of_bounds_options_are_refused(tmp_path, args, message):
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o")], env={"COLUMNS": "240", "NO_COLOR": "1"})
    assert res.exit_code == 2, res.output
    assert message in res.output, res.output
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_declarations_agree_with_the_torch_side():
    from daonet import train as train_mod
    from daonet.nn.defences import ADVERSARIES
    from daonet.train_config import ADVERSARY_KINDS

    assert ADVERSARY_KINDS == ADVERSARIES and train_mod.TrainConfig is TrainConfig
    assert daonet.plan is __import__("daonet.studies.plan", fromlist=["plan"]).plan
    code = ("import sys, daonet, daonet.cli, daonet.train_config, daonet.studies.plan; "
            "assert 'plan' in daonet.__all__; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
