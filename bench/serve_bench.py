"""Serving benchmark: DAO server vs a plaintext baseline on the same stack, on loopback, in one run.

    python bench/serve_bench.py --out reports/serve-bench

For the MNIST mlp (the demo's cached model) and the ECG5000 cnn1d (trained here once, p=0.9, cached
under .daonet-cache/bench):

- DAO: the product server (``daonet.server.app.create_app``) receiving sparse payloads made on the
  device (``DeviceModel.encode_many``, p as trained);
- plaintext: a benchmark-only FastAPI app defined below, same stack (FastAPI + uvicorn + the same
  ``MicroBatcher`` + the same metrics), that receives the raw input (uint8 pixels / float32 samples)
  and runs the whole torch model, first layer included, without dropping. It is not part of the
  product's API.

Each server runs in its own subprocess (one at a time), so the load generator does not share a GIL
with it. The load generator is a minimal HTTP/1.1 keep-alive client on asyncio streams with
pre-built requests (tens of microseconds per request), so on a 2-core machine the server, not the
client, is the bottleneck. Latency is the client-side round trip; throughput is completed requests
per second of wall time at 1, 16 and 64 concurrent connections. Payloads are encoded before the
clock starts; the device's encode cost is reported separately.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# One BLAS thread: a device encodes one input on its own core, and on a small shared machine spinning BLAS
# threads only add noise (set before numpy loads; inherited by the server subprocesses).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from daonet.server.launch import ChildServer  # noqa: E402

CACHE = Path(".daonet-cache/bench")
CONCURRENCY = (1, 16, 64)
ECG_CONFIG = {"dataset": "ecg5000", "model": "cnn1d", "drop_rate": 0.9, "epochs": 30, "seed": 0}


# -- the load generator --------------------------------------------------------------------------------------
_STATUS = re.compile(rb"HTTP/1\.1 (\d{3})")
_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


def build_request(path: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def _top_index(body: bytes) -> int:
    return json.loads(body)["index"]


async def _run_load(port: int, requests: list[bytes], total: int, concurrency: int,
                    answer: Callable[[bytes], Any] = _top_index) -> tuple[list[float], list[Any], float]:
    counter = itertools.count()
    latencies: list[float] = [0.0] * total
    answers: list[Any] = [-1] * total

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (i := next(counter)) < total:
                t0 = time.perf_counter()
                writer.write(requests[i % len(requests)])
                head = await reader.readuntil(b"\r\n\r\n")
                m = _LENGTH.search(head)
                body = await reader.readexactly(int(m.group(1)) if m else 0)
                latencies[i] = time.perf_counter() - t0
                status = int(_STATUS.match(head).group(1))
                if status != 200:
                    raise RuntimeError(f"request {i} answered {status}: {body[:200]!r}")
                answers[i] = answer(body)
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, answers, time.perf_counter() - t0


def scrape_batches(port: int) -> tuple[float, float]:
    """(sum, count) of the server's ``daonet_batch_size`` histogram: requests per forward pass."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    text = data.decode("utf-8", "replace")
    total = sum(float(v) for v in re.findall(r"^daonet_batch_size_sum\{[^}]*\} (\S+)$", text, re.M))
    count = sum(float(v) for v in re.findall(r"^daonet_batch_size_count\{[^}]*\} (\S+)$", text, re.M))
    return total, count


def measure(servers: dict[str, ChildServer], requests: dict[str, list[bytes]], labels: np.ndarray, rounds: int,
            n_single: int, n_conc: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Interleave DAO and plaintext (alternating order each round) so load from other work hits both alike.

    Per mode and concurrency: latencies pooled over rounds (p50/p99), throughput = median over rounds,
    mean batch size from the server's own metrics.
    """
    for mode, server in servers.items():
        asyncio.run(_run_load(server.port, requests[mode], warmup, 16))
    raw: dict[str, dict[int, dict[str, list]]] = {
        m: {c: {"lat": [], "rps": [], "ans": [], "batch": [0.0, 0.0]} for c in CONCURRENCY} for m in servers}
    order = list(servers)
    for r in range(rounds):
        for c in CONCURRENCY:
            for mode in (order if r % 2 == 0 else order[::-1]):
                port = servers[mode].port
                total = (n_single if c == 1 else n_conc) // rounds
                s0, n0 = scrape_batches(port)
                lat, answers, wall = asyncio.run(_run_load(port, requests[mode], total, c))
                s1, n1 = scrape_batches(port)
                cell = raw[mode][c]
                cell["lat"] += lat
                cell["rps"].append(total / wall)
                cell["ans"] += [a == labels[i % len(labels)] for i, a in enumerate(answers)]
                cell["batch"][0] += s1 - s0
                cell["batch"][1] += n1 - n0
    out: dict[str, dict[str, Any]] = {}
    for mode, cells in raw.items():
        out[mode] = {}
        for c, cell in cells.items():
            ms = np.array(cell["lat"]) * 1000
            out[mode][str(c)] = {
                "requests": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                "throughput_rps": float(np.median(cell["rps"])), "throughput_rps_rounds": cell["rps"],
                "mean_batch": cell["batch"][0] / max(cell["batch"][1], 1), "accuracy": float(np.mean(cell["ans"])),
            }
    return out


def start_child(mode: str, path: Path, model_id: str, args: argparse.Namespace) -> ChildServer:
    """One server in its own process (the shared launcher): the product app or the plaintext baseline."""
    if mode == "dao":
        factory, kwargs = "daonet.server.launch:product_app", {
            "bundles": [str(path)], "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
            "log_level": "warning"}
    else:
        factory, kwargs = "daonet.bench.plaintext:plaintext_app", {
            "run_dir": str(path), "model_id": model_id, "max_batch_size": args.max_batch_size,
            "max_wait_ms": args.max_wait_ms, "max_body_bytes": 1 << 20}
    return ChildServer(factory, kwargs, torch_threads=args.torch_threads, ready_path="/v1/health",
                       uvicorn_options={"backlog": 256}, startup_timeout=60, name=f"{mode} server").start()


# -- models and inputs ---------------------------------------------------------------------------------------
def prepare_models(names: list[str], ecg_epochs: int) -> dict[str, dict[str, Any]]:
    """Cached bundles and 1000 test inputs per model (as a device holds them: uint8 pixels, float32 samples)."""
    from daonet.bundle import bundle_is_current
    from daonet.data import load_dataset
    from daonet.exporting import export_run
    from daonet.studies.demo import DEFAULT_CACHE, ensure_bundles
    from daonet.train import TrainConfig, save_run, train

    out: dict[str, dict[str, Any]] = {}
    if "mnist-mlp" in names:
        mnist_bundle, _ = ensure_bundles(DEFAULT_CACHE)
        mnist = load_dataset("mnist")
        out["mnist-mlp"] = {"bundle": mnist_bundle, "run": mnist_bundle.parent / "run",
                            "x": (mnist.x_test[:1000] * 255).round().astype(np.uint8), "y": mnist.y_test[:1000]}
    if "ecg5000-cnn1d" in names:
        ecg_dir = CACHE / "ecg5000-cnn1d"
        if not (ecg_dir / "run" / "model.safetensors").exists():
            save_run(train(TrainConfig(**{**ECG_CONFIG, "epochs": ecg_epochs})), ecg_dir / "run")
        if not bundle_is_current(ecg_dir / "bundle"):
            export_run(ecg_dir / "run", ecg_dir / "bundle", model_id="ecg5000-cnn1d")
        ecg = load_dataset("ecg5000")
        out["ecg5000-cnn1d"] = {"bundle": ecg_dir / "bundle", "run": ecg_dir / "run",
                                "x": ecg.x_test[:1000].astype(np.float32), "y": ecg.y_test[:1000]}
    unknown = set(names) - set(out)
    if unknown:
        raise SystemExit(f"unknown model(s) {sorted(unknown)}; choose from mnist-mlp, ecg5000-cnn1d")
    return out


def device_side(bundle: Path, x: np.ndarray) -> dict[str, Any]:
    """Encode every input on the device (before the clock), and time one encode the way a device runs it."""
    from daonet.device import DeviceModel, RandomMasks

    device = DeviceModel.load(bundle / "device")
    payloads = device.encode_many(x, RandomMasks(0))
    masks = RandomMasks(1)
    times = []
    for xi in x[:200]:
        t0 = time.perf_counter()
        device.encode(xi, masks)
        times.append(time.perf_counter() - t0)
    nnz = np.array([p.nnz for p in payloads])
    return {"device": device, "payloads": [p.data for p in payloads], "encode_us": float(np.median(times) * 1e6),
            "nnz_mean": float(nnz.mean()), "n_outputs": device.n_outputs, "drop_rate": device.drop_rate}


# -- report --------------------------------------------------------------------------------------------------
def to_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per model and figure: DAO, plaintext, DAO/plaintext."""
    rows = []
    for name, r in results["models"].items():
        dao, plain = r["dao"], r["plaintext"]

        def row(label: str, d: float, p: float, fmt: str = "{:.2f}", name: str = name) -> list[str]:
            return [name, label, fmt.format(d), fmt.format(p), f"{d / p:.2f}" if p else "-"]

        rows.append(row("bytes per request (body)", r["bytes_dao"], r["bytes_plain"], "{:.0f}"))
        rows.append(row("latency p50, 1 client (ms)", dao["1"]["p50_ms"], plain["1"]["p50_ms"]))
        rows.append(row("latency p99, 1 client (ms)", dao["1"]["p99_ms"], plain["1"]["p99_ms"]))
        for c in CONCURRENCY:
            k = str(c)
            rows.append(row(f"throughput, {c} clients (req/s)", dao[k]["throughput_rps"], plain[k]["throughput_rps"],
                            "{:.0f}"))
        for c in CONCURRENCY[1:]:
            k = str(c)
            rows.append(row(f"mean batch, {c} clients", dao[k]["mean_batch"], plain[k]["mean_batch"], "{:.1f}"))
        rows.append(row("accuracy over the answers", dao["1"]["accuracy"], plain["1"]["accuracy"], "{:.3f}"))
    return rows


COLUMNS = ["model", "figure", "DAO", "plaintext", "DAO / plaintext"]


def to_markdown(results: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in to_rows(results)]
    env = results["environment"]
    busy = max(env["loadavg_start"][0], env["loadavg_end"][0]) > 0.5
    notes = [
        "",
        f"Command: `{results['command']}`.",
        "Latency: one client, sequential requests, client-side round trip on loopback. Throughput: completed "
        "requests per second with 1, 16 and 64 concurrent keep-alive connections (median of "
        f"{env['rounds']} rounds, DAO and plaintext interleaved). Mean batch: requests per forward pass, from "
        "each server's /metrics.",
        "Bytes: request body (DAO: sparse payload at the trained drop rate; plaintext: the raw input, uint8 pixels "
        "/ float32 samples); HTTP headers add the same ~110 bytes to both. Accuracy: DAO with dropping as trained; "
        "plaintext runs the whole model without dropping.",
        "Device-side encode (first layer + ReLU + dropping + wire encoding, numpy, one input): "
        + ", ".join(f"{k} {v['encode_us']:.0f} µs (mean nnz {v['nnz_mean']:.1f} of {v['n_outputs']}, "
                    f"p={v['drop_rate']})" for k, v in results["models"].items())
        + "; not included in the latencies above.",
        f"Setup: DAO server = the product app (`daonet.server.app`); plaintext = benchmark-only app "
        f"`daonet.bench.plaintext`, "
        f"same FastAPI + uvicorn + MicroBatcher + metrics. Each in its own subprocess, torch threads "
        f"{env['torch_threads']}, max_batch_size {env['max_batch_size']}, max_wait_ms {env['max_wait_ms']}; load "
        f"generator: asyncio HTTP/1.1 client in the parent process. {env['cpus']} CPUs, torch {env['torch']}; load "
        f"average {env['loadavg_start'][0]:.1f} at start, {env['loadavg_end'][0]:.1f} at the end"
        + (" (other work was running: numbers are under load and noisy)." if busy else "."),
    ]
    return "\n".join(lines + notes) + "\n"


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="daonet serving: DAO vs plaintext")
    for i, col in enumerate(COLUMNS):
        table.add_column(col, justify="right" if i >= 2 else "left")
    for r in to_rows(results):
        table.add_row(*r)
    Console(width=120).print(table)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("reports/serve-bench"))
    p.add_argument("--single-requests", type=int, default=1000, help="sequential requests for p50/p99")
    p.add_argument("--requests", type=int, default=3000, help="requests per concurrency level (16, 64)")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3, help="interleaved DAO/plaintext rounds")
    p.add_argument("--ecg-epochs", type=int, default=ECG_CONFIG["epochs"])
    p.add_argument("--torch-threads", type=int, default=1, help="server's torch intra-op threads")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--models", nargs="*", default=["mnist-mlp", "ecg5000-cnn1d"])
    args = p.parse_args(argv)
    load_start = os.getloadavg()
    models = prepare_models(args.models, args.ecg_epochs)
    results: dict[str, Any] = {"command": "python bench/serve_bench.py " + " ".join(sys.argv[1:]), "models": {}}
    for name in args.models:
        m = models[name]
        dev = device_side(m["bundle"], m["x"])
        dao_reqs = [build_request(f"/v1/models/{name}/predict", b) for b in dev["payloads"]]
        plain_reqs = [build_request(f"/plain/{name}/predict", np.ascontiguousarray(x).tobytes()) for x in m["x"]]
        r: dict[str, Any] = {
            "bytes_dao": float(np.mean([len(b) for b in dev["payloads"]])), "bytes_plain": float(m["x"][0].nbytes),
            "encode_us": dev["encode_us"], "nnz_mean": dev["nnz_mean"], "n_outputs": dev["n_outputs"],
            "drop_rate": dev["drop_rate"],
        }
        servers: dict[str, ChildServer] = {}
        try:
            print(f"{name}: starting the DAO and plaintext servers ...", flush=True)
            servers["dao"] = start_child("dao", m["bundle"] / "server", name, args)
            servers["plaintext"] = start_child("plain", m["run"], name, args)
            print(f"{name}: measuring ({args.rounds} interleaved rounds) ...", flush=True)
            r.update(measure(servers, {"dao": dao_reqs, "plaintext": plain_reqs}, m["y"], args.rounds,
                             args.single_requests, args.requests, args.warmup))
        finally:
            for server in servers.values():
                server.stop()
        results["models"][name] = r
    import torch

    results["environment"] = {
        "cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "torch_threads": args.torch_threads, "max_batch_size": args.max_batch_size, "rounds": args.rounds,
        "max_wait_ms": args.max_wait_ms, "python": platform.python_version(), "torch": torch.__version__,
        "platform": platform.platform(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "serve_bench.md").write_text(to_markdown(results))
    print_table(results)
    print(to_markdown(results).split("\n\n", 1)[-1])
    print(f"written {args.out / 'serve_bench.json'} and {args.out / 'serve_bench.md'}")


if __name__ == "__main__":
    main()
