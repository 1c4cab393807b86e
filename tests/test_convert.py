"""``daonet.split`` and ``daonet.export`` on user-defined models: finding the first layer, folding a BatchNorm,
clear refusals, and bundles whose halves reproduce the model exactly (real digits, real server code)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import daonet
from daonet.convert import SplitError, first_layer
from daonet.device import DeviceModel
from daonet.server import ServerModel


class TorchvisionStyle(nn.Module):
    """conv1 -> bn1 -> relu as named attributes (as torchvision's ResNet), the first conv without bias."""

    def __init__(self, act: nn.Module | None = None, padding: int = 0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, stride=1, bias=False, padding=padding)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = act if act is not None else nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        return self.fc(F.adaptive_avg_pool2d(self.layer1(x), 1).flatten(1))


class FunctionalAct(nn.Module):
    def __init__(self, act) -> None:
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(64, 32), nn.Linear(32, 10), act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.flatten(1))))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def digits_xy(digits):
    return torch.from_numpy(digits.x_train[:256]), torch.from_numpy(digits.y_train[:256])


def _with_stats(model: nn.Module, x: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        model(x)  # BatchNorm running statistics that are not the identity
    return model.eval()


def _outputs_without_dropping(model, x):
    layer = first_layer(model)
    saved, layer.drop_rate = layer.drop_rate, 0.0
    try:
        with torch.no_grad():
            return model.eval()(x)
    finally:
        layer.drop_rate = saved


def test_split_named_attributes_folds_batchnorm(digits_xy):
    x, _ = digits_xy
    model = _with_stats(TorchvisionStyle(), x)
    with torch.no_grad():
        reference = model(x)
    out = daonet.split(model, drop_rate=0.5, example_input=x[:8])
    assert out is model and isinstance(model.bn1, nn.Identity)  # folded into the device layer
    layer = first_layer(model)
    assert layer.kind == "conv2d" and layer.in_shape == (1, 8, 8) and layer.drop_rate == 0.5
    assert torch.allclose(_outputs_without_dropping(model, x), reference, atol=1e-5)
    model.train()
    with torch.no_grad():
        h = layer(x)
    assert 0.3 < float((h == 0).float().mean()) < 0.95  # dropping is on in training (on top of ReLU zeros)


def test_split_sequential_with_flatten_and_functional_relu(digits_xy):
    x, _ = digits_xy
    seq = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    daonet.split(seq, drop_rate=0.3, example_input=x[:4])
    assert isinstance(seq[1], daonet.convert.ConvertedFirstLayer) and first_layer(seq).kind == "dense"
    functional = FunctionalAct(F.relu)
    reference = functional(x)
    daonet.split(functional, drop_rate=0.0, example_input=x[:4], quantize_levels=0)
    assert torch.allclose(_outputs_without_dropping(functional, x), reference, atol=1e-6)


@pytest.mark.parametrize(("model", "match"), [
    (lambda: TorchvisionStyle(act=nn.GELU()), r"conv1 \(Conv2d\) \+ bn1 \(BatchNorm2d\) is followed by relu \(GELU\)"),
    (lambda: FunctionalAct(torch.tanh), "outputs changed when fc1 \\(Linear\\) moved onto the device"),
    (lambda: nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 4, 2), nn.ReLU()),
     r"first operation of Sequential is 0 \(BatchNorm2d\).*Move preprocessing out of the model"),
    (lambda: TorchvisionStyle(padding=1), r"conv1 \(Conv2d\) uses padding=\(1, 1\).*Recreate the layer with padding=0"),
    (lambda: nn.Sequential(nn.Conv2d(1, 4, 3, groups=1, dilation=2), nn.ReLU()), "dilation"),
])
def test_split_refuses_with_a_clear_message(digits_xy, model, match):
    x, _ = digits_xy
    with pytest.raises(SplitError, match=match):
        daonet.split(model(), drop_rate=0.5, example_input=x[:4])


def test_split_refuses_transformed_inputs_and_bad_arguments(digits_xy):
    x, _ = digits_xy

    class Scales(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(torch.relu(x.flatten(1) * 2))

    with pytest.raises(SplitError, match="forward\\(\\) changes the input before fc"):
        daonet.split(Scales(), drop_rate=0.5, example_input=x[:4])
    with pytest.raises(SplitError, match="unknown defence"):
        daonet.split(FunctionalAct(F.relu), drop_rate=0.5, example_input=x[:4], adversary=1)
    with pytest.raises(SplitError, match="drop_rate must be in"):
        daonet.split(FunctionalAct(F.relu), drop_rate=1.0, example_input=x[:4])
    with pytest.raises(SplitError, match="does not run on example_input"):
        daonet.split(FunctionalAct(F.relu), drop_rate=0.5, example_input=torch.zeros(2, 3))
    model = daonet.split(FunctionalAct(F.relu), drop_rate=0.5, example_input=x[:4])
    with pytest.raises(SplitError, match="already split"):
        daonet.split(model, drop_rate=0.5, example_input=x[:4])


def test_export_any_architecture_round_trip(digits_xy, tmp_path):
    """Train a few steps in a plain loop, export, load both halves: device bytes -> server probabilities equal
    the model's own output under the same mask, and the server half needs no user code."""
    x, y = digits_xy
    torch.manual_seed(0)
    model = _with_stats(TorchvisionStyle(), x)
    daonet.split(model, drop_rate=0.5, example_input=x[:8])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    classes = [str(i) for i in range(10)]
    dev, srv = daonet.export(model, tmp_path / "mine", classes=classes, public_data=x.numpy())
    device, server = DeviceModel.load(dev), ServerModel.load(srv)
    assert device.model_id == server.model_id == "mine" and device.version == server.version
    assert server.manifest.arch.name == "torch.export"
    assert (srv / "server_program.pt2").exists() and not list(srv.glob("*.safetensors"))
    assert np.allclose(device.public_mean.reshape(-1), x.numpy().reshape(len(x), -1).mean(0), atol=1e-6)
    layer = first_layer(model)
    mask = np.random.default_rng(1).random((6, layer.n_outputs)) > 0.5
    probs = server.predict_bytes([p.data for p in device.encode_many(x[:6].numpy(), mask=mask)])
    with torch.no_grad():
        expected = torch.softmax(model.fc(F.adaptive_avg_pool2d(model.layer1(
            layer(x[:6], mask=torch.from_numpy(mask))), 1).flatten(1)), 1).numpy()
    assert np.abs(probs - expected).max() < 1e-5
    # the server half loads in a fresh process that has never seen TorchvisionStyle
    code = (f"from daonet.server import ServerModel; s = ServerModel.load({str(srv)!r}); "
            "import torch; print(s.rest(torch.zeros(3, *s.output_shape)).shape)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env())
    assert res.returncode == 0 and "torch.Size([3, 10])" in res.stdout, res.stderr


def test_export_checks_its_arguments(digits_xy, tmp_path):
    x, _ = digits_xy
    with pytest.raises(SplitError, match="no LocalizedFirstLayer; convert it with daonet.split"):
        daonet.export(FunctionalAct(F.relu), tmp_path / "a", classes=list("0123456789"))
    model = daonet.split(FunctionalAct(F.relu), drop_rate=0.5, example_input=x[:4], noise_std=0.1)
    with pytest.raises(daonet.errors.InputError, match="names 3 classes"):
        daonet.export(model, tmp_path / "a", classes=["a", "b", "c"], public_data=x)
    with pytest.raises(daonet.errors.InputError, match="noise_std needs public_data"):
        daonet.export(model, tmp_path / "a", classes=list("0123456789"))
    with pytest.raises(daonet.errors.InputError, match="public_data must be finite inputs shaped"):
        daonet.export(model, tmp_path / "a", classes=list("0123456789"), public_data=np.zeros((3, 5)))
    dev, _ = daonet.export(model, tmp_path / "noisy", classes=list("0123456789"), public_data=x,
                           input_spec={"raw_dtype": "uint8"})
    manifest = DeviceModel.load(dev).manifest
    assert manifest.noise is not None and manifest.noise.std > 0 and manifest.input.raw_dtype == "uint8"
    assert manifest.input.shape == (1, 8, 8)  # the example input's shape; the device flattens for Linear


def test_import_daonet_stays_torch_free():
    code = "import sys, daonet, daonet.device; print('torch' in sys.modules, 'split' in daonet.__all__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env())
    assert res.stdout.split() == ["False", "True"], res.stderr
