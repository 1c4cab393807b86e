"""The embedded default job: the shipped, signed, audited MNIST bundle, over real HTTP on loopback.

The demo serves the default that ships in :mod:`daonet.defaults` after ``verify_bundle`` checked its signature,
its files and that its audit report is about exactly this version, so the privacy numbers it prints belong to
the model it runs. ``retrain=True`` trains a fresh model instead; its privacy is then unaudited, and it says so.
The demo starts the real server (``daonet.server.app``) on a free loopback port in a background
process (so the server shares no interpreter lock with the clients and the latency it reports is the
server's), runs the device client against it with concurrent requests (so micro-batching is
exercised), prints the report, and shuts the server down cleanly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import load_dataset
from ..defaults import PROJECT_PUBLIC_KEY, default_bundle
from ..device import Client, DeviceModel, RandomMasks
from ..server.config import ServerConfig
from ..server.launch import ServerProcess
from ..train import recommended_config
from ..verify import verify_bundle

DEFAULT_CACHE = Path(".daonet-cache/demo")
DEMO_CONFIG = recommended_config("mnist", "mlp")  # the measured default operating point (see train.RECOMMENDED)


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
    audit: list[str] = field(default_factory=list)  # the shipped bundle's audited headline (empty: unaudited)
    extra: dict = field(default_factory=dict)
    url: str = ""
    concurrency: int = 1
    latency_ms: dict = field(default_factory=dict)  # client-side round trip: p50, p99
    throughput_rps: float = 0.0

    def render(self) -> str:
        s = self.surviving
        origin = ("trained now: its privacy is UNAUDITED (the audited numbers belong to the shipped default; "
                  "audit this one with `daonet audit`)" if self.trained else
                  "the shipped default, signature and audit report verified")
        lines = [
            f"[bold]daonet demo[/] — {self.model_id} (version {self.version}), {origin}",
            f"  accuracy over {self.n} real MNIST test images: {self.accuracy:.4f}",
            f"  bytes per request: {self.bytes_per_request:.0f} (raw input: {self.raw_bytes} bytes, "
            f"{self.bytes_per_request / self.raw_bytes:.2f}x)",
            f"  surviving outputs per request: mean {s['mean']:.1f}, min {s['min']}, max {s['max']} "
            f"of {s['n_outputs']}",
            f"  what left the device for test image 0: {self.example}",
        ]
        if self.url:
            lat = self.latency_ms
            lines.append(f"  over HTTP ({self.url}, {self.concurrency} concurrent requests): latency p50 "
                         f"{lat.get('p50', 0):.1f} ms, p99 {lat.get('p99', 0):.1f} ms, "
                         f"throughput {self.throughput_rps:.0f} requests/s")
        lines += [f"  {k}: {v}" for k, v in self.extra.items()]
        if self.audit:
            lines.append("  what a curious server can learn from this model (its audit report):")
            lines += [f"    {line}" for line in self.audit]
        lines.append(f"  total {self.seconds:.1f} s")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def ensure_bundles(cache: Path, retrain: bool = False, progress: bool = True) -> tuple[Path, bool]:
    """The demo recipe trained and exported through the study pipeline (a row under ``cache``, reused when its
    settings are unchanged). Returns (bundle dir, trained now?)."""
    import shutil

    from .pipeline import ExportOptions, Row, run_row

    row = Row(DEMO_CONFIG, ExportOptions(model_id="mnist-mlp"))
    where = Path(cache) / row.key()
    if retrain and where.exists():
        shutil.rmtree(where)
    trained = not (where / "run" / "metrics.json").exists()
    return run_row(row, cache, progress=progress).bundle, trained


def run_demo(n: int = 1000, cache: Path = DEFAULT_CACHE, retrain: bool = False, seed: int = 0,
             concurrency: int = 16) -> DemoReport:
    """Train/export if needed, serve on loopback, predict ``n`` test images over HTTP, report, stop."""
    t0 = time.perf_counter()
    audit: list[str] = []
    public_keys: list[Path] = []
    if retrain:
        bundle, _ = ensure_bundles(Path(cache), retrain=True)
    else:
        verified = verify_bundle(default_bundle("mnist").root)
        bundle, audit, public_keys = verified.root, verified.audit.headline(), [PROJECT_PUBLIC_KEY]
    ds = load_dataset("mnist")
    x, y = ds.x_test[:n], ds.y_test[:n]
    raw = (x * 255).round().astype(np.uint8)  # what a device holds: 8-bit pixels
    config = ServerConfig(bundles=[bundle / "server"], host="127.0.0.1", port=0, log_level="warning",
                          public_keys=list(public_keys))
    device_model = DeviceModel.load(bundle / "device", public_keys=public_keys)
    with ServerProcess(config) as server, Client(server.url, device_model, masks=RandomMasks(seed)) as client:
        client.check_server()
        payloads = client.encode_many(raw)  # on the device
        t_http = time.perf_counter()
        preds = client.send_many(payloads, concurrency=concurrency)
        wall = time.perf_counter() - t_http
        url = server.url
    device = client.device
    nnz = np.array([p.nnz for p in preds])
    lat = np.array([p.latency_s for p in preds]) * 1000
    return DemoReport(
        model_id=device.model_id, version=device.version, n=len(x),
        accuracy=float((np.array([p.index for p in preds]) == y).mean()),
        bytes_per_request=float(np.mean([p.payload_bytes for p in preds])), raw_bytes=device.raw_input_bytes,
        surviving={"mean": float(nnz.mean()), "min": int(nnz.min()), "max": int(nnz.max()),
                   "n_outputs": device.n_outputs},
        example=payloads[0].describe(), trained=retrain, seconds=time.perf_counter() - t0, audit=audit,
        url=url, concurrency=concurrency,
        latency_ms={"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
        throughput_rps=len(preds) / wall,
    )
