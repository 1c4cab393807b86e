"""The embedded default job: MNIST mlp with dropping, device runtime -> bytes -> server part."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import load_dataset
from .device import DeviceModel, RandomMasks
from .export import export_run
from .server import ServerModel
from .train import TrainConfig, save_run, train

DEFAULT_CACHE = Path(".daonet-cache/demo")
DEMO_CONFIG = TrainConfig(dataset="mnist", model="mlp", drop_rate=0.9, epochs=8, seed=0)


@dataclass
class DemoReport:
    model_id: str
    version: str
    n: int
    accuracy: float
    bytes_per_request: float
    raw_bytes: int
    surviving: dict
    example: str
    trained: bool
    seconds: float
    extra: dict = field(default_factory=dict)

    def render(self) -> str:
        s = self.surviving
        lines = [
            f"[bold]daonet demo[/] — {self.model_id} (version {self.version}), "
            f"{'trained now' if self.trained else 'cached model'}",
            f"  accuracy over {self.n} real MNIST test images: {self.accuracy:.4f}",
            f"  bytes per request: {self.bytes_per_request:.0f} (raw input: {self.raw_bytes} bytes, "
            f"{self.bytes_per_request / self.raw_bytes:.2f}x)",
            f"  surviving outputs per request: mean {s['mean']:.1f}, min {s['min']}, max {s['max']} "
            f"of {s['n_outputs']}",
            f"  what left the device for test image 0: {self.example}",
        ]
        lines += [f"  {k}: {v}" for k, v in self.extra.items()]
        lines.append(f"  total {self.seconds:.1f} s")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def ensure_bundles(cache: Path, retrain: bool = False, progress: bool = True) -> tuple[Path, bool]:
    """Train and export the demo model unless a cached bundle exists. Returns (bundle dir, trained?)."""
    run_dir, bundle = cache / "run", cache / "bundle"
    trained = False
    if retrain or not (run_dir / "model.safetensors").exists():
        result = train(DEMO_CONFIG, progress=progress)
        save_run(result, run_dir)
        trained = True
    if trained or not (bundle / "device" / "manifest.json").exists():
        export_run(run_dir, bundle, model_id="mnist-mlp")
    return bundle, trained


def run_demo(n: int = 1000, cache: Path = DEFAULT_CACHE, retrain: bool = False, seed: int = 0) -> DemoReport:
    t0 = time.perf_counter()
    bundle, trained = ensure_bundles(Path(cache), retrain)
    device = DeviceModel.load(bundle / "device")
    server = ServerModel.load(bundle / "server")
    ds = load_dataset("mnist")
    x, y = ds.x_test[:n], ds.y_test[:n]
    raw = (x * 255).round().astype(np.uint8)  # what a device holds: 8-bit pixels
    payloads = device.encode_many(raw, RandomMasks(seed))
    probs = server.predict_bytes([p.data for p in payloads])
    nnz = np.array([p.nnz for p in payloads])
    return DemoReport(
        model_id=device.model_id, version=device.version, n=len(x),
        accuracy=float((probs.argmax(1) == y).mean()),
        bytes_per_request=float(np.mean([len(p.data) for p in payloads])), raw_bytes=device.raw_input_bytes,
        surviving={"mean": float(nnz.mean()), "min": int(nnz.min()), "max": int(nnz.max()),
                   "n_outputs": device.n_outputs},
        example=payloads[0].describe(), trained=trained, seconds=time.perf_counter() - t0,
    )
