"""Bring your own model: a 1-D ResNet-style ECG classifier, trained in a plain PyTorch loop, made private
with one call, exported, served over HTTP and audited.

The model's first layer is an *overlapping* convolution (kernel 7, stride 2), followed by a BatchNorm and
ReLU, as in most ResNets. ``daonet.split`` folds the BatchNorm into the convolution, moves conv + ReLU onto
the device and drops its outputs at rate ``p`` in training and at inference; the rest stays the user's code.

    python examples/ecg_resnet.py               # ECG5000, 30 epochs, full audit (minutes on a CPU)
    python examples/ecg_resnet.py --small       # a quick run (what `make test` runs)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import daonet
from daonet.audit import AuditConfig, run_audit, write_report
from daonet.data import load_dataset
from daonet.device import Client
from daonet.server.config import ServerConfig
from daonet.server.launch import ServerProcess


class ResBlock1d(nn.Module):
    """Two 3-wide convolutions with a skip connection (stride 2 halves the length)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = nn.Conv1d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.skip = (nn.Sequential(nn.Conv1d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm1d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class ECGResNet(nn.Module):
    """stem (overlapping conv 7/2 + BN + ReLU) -> residual stages -> global average pool -> classes."""

    def __init__(self, n_classes: int, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv1d(1, width, kernel_size=7, stride=2)
        self.stem_bn = nn.BatchNorm1d(width)
        self.stem_act = nn.ReLU()
        self.stages = nn.Sequential(ResBlock1d(width, width), ResBlock1d(width, 2 * width, stride=2))
        self.head = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(x)))
        return self.head(self.stages(x).mean(-1))


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()  # dropping stays on: the server never sees an undropped activation
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i:i + 500])).argmax(1) for i in range(0, len(x), 500)])
    return float((pred.numpy() == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a quick run: few epochs, small audit")
    ap.add_argument("--drop-rate", type=float, default=0.9)
    ap.add_argument("--out", type=Path, default=None, help="where bundles and the audit report go")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.small:
        torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="daonet-ecg-"))
    ds = load_dataset("ecg5000")  # 500 train / 4500 test heartbeats, 1 x 140
    order = np.random.default_rng(0).permutation(len(ds.x_test))  # the test file is sorted by class
    x_test, y_test = ds.x_test[order], ds.y_test[order]
    if args.small:
        x_test, y_test = x_test[:500], y_test[:500]

    # 1. the user's model, made private with one call
    model = ECGResNet(ds.n_classes, width=16 if args.small else 32)
    daonet.split(model, drop_rate=args.drop_rate, example_input=torch.from_numpy(ds.x_train[:8]))
    print(f"device layer: {model.stem.source} -> {model.stem.n_outputs} outputs, dropped at p={args.drop_rate}")

    # 2. the user's own training loop, unchanged
    epochs = 6 if args.small else 30
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(32):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    acc = accuracy(model, x_test, y_test)
    print(f"trained {epochs} epochs: test accuracy {acc:.3f} with dropping on ({len(x_test)} beats)")

    # 3. export: device half (first layer, numpy) and server half (torch.export program)
    dev, srv = daonet.export(model, out / "bundle", classes=ds.classes, model_id="ecg5000-resnet",
                             public_data=ds.x_train)
    print(f"exported {dev} and {srv}")

    # 4. serve it and send real heartbeats through the device client
    n = 50 if args.small else 500
    with ServerProcess(ServerConfig(bundles=[srv], log_level="warning")) as server, Client(server.url, dev) as client:
        preds = client.predict_many(x_test[:n])
    served = float(np.mean([p.index == t for p, t in zip(preds, y_test[:n], strict=True)]))
    cert = preds[0].certificate
    print(f"served {n} beats over HTTP: accuracy {served:.3f}, {np.mean([p.payload_bytes for p in preds]):.0f} "
          f"bytes per request (raw beat: {140 * 4}); beat 0: {cert.k} surviving outputs, revealed energy "
          f"{cert.revealed_energy:.3f}")

    # 5. audit: attack the payloads the device really sends (quick budget: a smoke run, NOT a privacy claim)
    cfg = (AuditConfig(dataset="ecg5000", budget="quick", attacks=("min_norm", "rmle"), n_test=40, rmle_steps=30)
           if args.small else AuditConfig(dataset="ecg5000", budget="full"))
    result = run_audit(out / "bundle", cfg, dataset=ds, progress=False, log=lambda s: None)
    report = result.report
    for name, score in report.scores().items():
        print(f"  audit {name:12s} {report.metric} {score:.3f}")
    print("\n".join(report.headline()))
    _, html = write_report(result, out / "audit")
    print(f"audit report: {html}")


if __name__ == "__main__":
    main()
