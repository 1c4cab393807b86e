"""Fine-tune a pretrained MNIST CNN under dropping: the common way to adopt daonet.

A checkpoint of an ordinary CNN (trained without daonet) is loaded, ``daonet.split`` moves its first
convolution + ReLU onto the device with outputs dropped at ``p``, and a short fine-tuning in a plain loop
recovers the accuracy that dropping costs. Then the usual export, HTTP serving and audit.

    python examples/mnist_finetune.py --checkpoint my_cnn.pt   # your state dict of MnistCNN
    python examples/mnist_finetune.py                          # pretrains one first (no checkpoint given)
    python examples/mnist_finetune.py --small                  # a quick run (what `make test` runs)
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


class MnistCNN(nn.Module):
    """An ordinary small CNN: conv 5x5/2 (overlapping) + ReLU, conv 3x3/2, classifier.

    The first layer is narrow (8 channels, 1152 outputs): an overlapping convolution's privacy certificate is
    computed on the whole sparse system, which costs O(k^2 n) per request on the device."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(),
            nn.Conv2d(8, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Flatten(),
        )
        self.classifier = nn.Linear(32 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((torch.cat([model(b).argmax(1) for b in x.split(1000)]) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="state dict of MnistCNN (default: pretrain one)")
    ap.add_argument("--small", action="store_true", help="a quick run on a subset")
    ap.add_argument("--drop-rate", type=float, default=0.75)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.small:
        torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="daonet-mnist-"))
    ds = load_dataset("mnist")
    if args.small:
        ds = ds.subset(n_train=4000, n_test=1000, seed=0)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    xt, yt = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)

    # 0. the pretrained model (yours, or one trained here the ordinary way, without daonet)
    model = MnistCNN()
    checkpoint = args.checkpoint or out / "pretrained.pt"
    if not checkpoint.exists():
        fit(model, x, y, epochs=2 if args.small else 5, lr=2e-3)
        torch.save(model.state_dict(), checkpoint)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    before = accuracy(model, xt, yt)

    # 1. one call: conv1 + ReLU move to the device, outputs dropped at p (in training and at inference)
    daonet.split(model, drop_rate=args.drop_rate, example_input=x[:8])
    dropped = accuracy(model, xt, yt)

    # 2. fine-tune under dropping in the same plain loop
    fit(model, x, y, epochs=1 if args.small else 3, lr=5e-4)
    after = accuracy(model, xt, yt)
    print(f"test accuracy: pretrained {before:.3f}, split at p={args.drop_rate} {dropped:.3f}, "
          f"fine-tuned {after:.3f}")

    # 3. export (the device takes uint8 pixels) and serve
    dev, srv = daonet.export(model, out / "bundle", classes=ds.classes, model_id="mnist-cnn-finetuned",
                             input_spec={"raw_dtype": "uint8"}, public_data=ds.x_train)
    n = 50 if args.small else 1000
    pixels = np.round(ds.x_test[:n] * 255).astype(np.uint8)
    with ServerProcess(ServerConfig(bundles=[srv], log_level="warning")) as server, Client(server.url, dev) as client:
        preds = client.predict_many(pixels)
    served = float(np.mean([p.index == t for p, t in zip(preds, ds.y_test[:n], strict=True)]))
    print(f"served {n} images over HTTP: accuracy {served:.3f}, "
          f"{np.mean([p.payload_bytes for p in preds]):.0f} bytes per request (raw image: 784)")

    # 4. audit (quick budget: a smoke run, NOT a privacy claim; drop --small for the full audit)
    cfg = (AuditConfig(dataset="mnist", budget="quick", attacks=("min_norm",), n_test=40)
           if args.small else AuditConfig(dataset="mnist", budget="full"))
    result = run_audit(out / "bundle", cfg, dataset=ds, progress=False, log=lambda s: None)
    report = result.report
    for name, score in report.scores().items():
        print(f"  audit {name:12s} {report.metric} {score:.3f}")
    print("\n".join(report.headline()))
    _, html = write_report(result, out / "audit")
    print(f"audit report: {html}")


if __name__ == "__main__":
    main()
