"""Ray Serve vs the single-process server on this machine, interleaved, in one run.

    python bench/ray_bench.py --out reports/ray-bench

Three hosts of the same app (``daonet.server.app.create_app``), same MNIST mlp bundle (784-800-256-10,
p = 0.9 by default, ~16 surviving outputs as the default operating point sends; trained here once on a 10k
subset and cached: serving cost depends on the architecture and payload size, not on the training), same
batching limits (64 per forward pass, 2 ms wait), one torch thread per process:

- ``single``: ``daonet serve`` in a child process (uvicorn, daonet's MicroBatcher);
- ``ray-1`` / ``ray-2``: ``daonet serve --ray`` with 1 and 2 replicas (``@serve.batch``), two Ray Serve
  applications on one local Ray instance (``num_cpus=2``) behind one Ray HTTP proxy (route prefixes /r1, /r2).

The load generator is serve_bench's (asyncio HTTP/1.1 keep-alive client, pre-built requests). Per round and
concurrency (1, 16, 64 clients) the three hosts run one after the other, the order rotating each round.
CPU per request is the CPU time of the serving processes (the single server's process; for Ray every process
the local instance started: proxy, replicas, controller, raylet, GCS) over the requests they answered, read
from /proc. ``GET /v1/health`` at one client isolates the HTTP path: its p50 difference is what Ray's proxy
adds per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from serve_bench import _run_load, build_request  # noqa: E402  (the same load generator as serve_bench)

CACHE = Path(".daonet-cache/bench")
CONCURRENCY = (1, 16, 64)
MODES = ("single", "ray-1", "ray-2")
MODEL_ID = "mnist-mlp"
DEVICES = 1_000_000  # the paper projection: one request per device per minute


def prepare_model(drop_rate: float) -> tuple[Path, np.ndarray, np.ndarray]:
    """The cached bundle and 1000 MNIST test images as a device holds them (uint8)."""
    from daonet.bundle import bundle_is_current
    from daonet.data import load_dataset
    from daonet.exporting import export_run
    from daonet.train import TrainConfig, save_run, train

    cache = CACHE / f"ray-mnist-p{drop_rate:g}"
    if not (cache / "run" / "model.safetensors").exists():
        import torch

        torch.set_num_threads(1)
        result = train(TrainConfig(dataset="mnist", model="mlp", drop_rate=drop_rate, epochs=1, n_train=10000,
                                   n_test=1000, eval_draws=1), progress=False)
        save_run(result, cache / "run")
    if not bundle_is_current(cache / "bundle"):  # also re-exports a bundle from an older daonet
        export_run(cache / "run", cache / "bundle", model_id=MODEL_ID)
    mnist = load_dataset("mnist")
    return cache / "bundle", (mnist.x_test[:1000] * 255).round().astype(np.uint8), mnist.y_test[:1000]


def build_get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def response_bytes(port: int, request: bytes) -> int:
    """Bytes of one whole HTTP response (status line, headers, body) as it crosses the wire."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.replace(b"Host: 127.0.0.1\r\n", b"Host: 127.0.0.1\r\nConnection: close\r\n", 1))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return len(data)


# -- CPU time of the serving processes (from /proc; no extra dependency) ---------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(root: int) -> set[int]:
    parents, found, frontier = _children(), set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def cpu_seconds(pids: set[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a process that ended: its time is lost, which only understates
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    return total


# -- measuring ---------------------------------------------------------------------------------------------------
def measure(ports: dict[str, int], prefixes: dict[str, str], pids: dict[str, Any], payloads: list[bytes],
            labels: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    predict = {m: [build_request(f"{prefixes[m]}/v1/models/{MODEL_ID}/predict", p) for p in payloads] for m in MODES}
    health = {m: [build_get(f"{prefixes[m]}/v1/health")] for m in MODES}
    for m in MODES:  # warm-up: imports, first batches, connection set-up
        asyncio.run(_run_load(ports[m], predict[m], args.warmup, 16))
    idle: dict[str, float] = {}  # CPU the serving processes burn with no request (Ray: its control plane)
    for m in MODES:
        procs, t0 = pids[m](), time.perf_counter()
        cpu0 = cpu_seconds(procs)
        time.sleep(args.idle_seconds)
        idle[m] = (cpu_seconds(procs) - cpu0) / (time.perf_counter() - t0)
    raw = {m: {c: {"lat": [], "rps": [], "cpu": [], "net": [], "ok": []} for c in CONCURRENCY} for m in MODES}
    health_lat: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        order = MODES[r % 3:] + MODES[:r % 3]
        for m in order:
            lat, _, _ = asyncio.run(_run_load(ports[m], health[m], args.health_requests // args.rounds, 1,
                                              answer=lambda body: 0))
            health_lat[m] += lat
        for c in CONCURRENCY:
            total = (args.single_requests if c == 1 else args.requests) // args.rounds
            for m in order:
                procs = pids[m]()
                cpu0 = cpu_seconds(procs)
                lat, answers, wall = asyncio.run(_run_load(ports[m], predict[m], total, c))
                cpu1 = cpu_seconds(procs)
                cell = raw[m][c]
                cell["lat"] += lat
                cell["rps"].append(total / wall)
                cell["cpu"].append((cpu1 - cpu0) / total)
                cell["net"].append(max(cpu1 - cpu0 - idle[m] * wall, 0.0) / total)
                cell["ok"] += [a == labels[i % len(labels)] for i, a in enumerate(answers)]
    out: dict[str, Any] = {}
    for m in MODES:
        out[m] = {"health_p50_ms": float(np.percentile(np.array(health_lat[m]) * 1000, 50)), "idle_cores": idle[m]}
        for c, cell in raw[m].items():
            ms = np.array(cell["lat"]) * 1000
            out[m][str(c)] = {"requests": len(ms), "p50_ms": float(np.percentile(ms, 50)),
                              "p99_ms": float(np.percentile(ms, 99)),
                              "throughput_rps": float(np.median(cell["rps"])), "throughput_rps_rounds": cell["rps"],
                              "cpu_ms_per_request": float(np.median(cell["cpu"]) * 1000),
                              "net_cpu_ms_per_request": float(np.median(cell["net"]) * 1000),
                              "accuracy": float(np.mean(cell["ok"]))}
    return out


# -- report ------------------------------------------------------------------------------------------------------
def to_rows(res: dict[str, Any]) -> list[list[str]]:
    rows = []

    def row(label: str, key: Any, fmt: str, ratio: bool = True) -> None:
        v = [key(res[m]) for m in MODES]
        ratios = [f"{x / v[0]:.2f}" if ratio and v[0] > 0 else "-" for x in v[1:]]
        rows.append([label, *(fmt.format(x) for x in v), *ratios])

    for c in CONCURRENCY:
        row(f"throughput, {c} clients (req/s)", lambda r, c=c: r[str(c)]["throughput_rps"], "{:.0f}")
    for c in CONCURRENCY:
        row(f"latency p50, {c} clients (ms)", lambda r, c=c: r[str(c)]["p50_ms"], "{:.2f}")
        row(f"latency p99, {c} clients (ms)", lambda r, c=c: r[str(c)]["p99_ms"], "{:.2f}")
    for c in CONCURRENCY[1:]:
        row(f"server CPU per request, {c} clients (ms)", lambda r, c=c: r[str(c)]["cpu_ms_per_request"], "{:.2f}")
        row(f"server CPU per request minus idle, {c} clients (ms)",
            lambda r, c=c: r[str(c)]["net_cpu_ms_per_request"], "{:.2f}")
    row("idle CPU of the serving processes (cores)", lambda r: r["idle_cores"], "{:.3f}", ratio=False)
    row("GET /v1/health p50, 1 client (ms)", lambda r: r["health_p50_ms"], "{:.2f}")
    return rows


COLUMNS = ["figure", "single process", "Ray, 1 replica", "Ray, 2 replicas", "Ray 1 / single", "Ray 2 / single"]


def projection(res: dict[str, Any]) -> dict[str, Any]:
    """On paper: what one request per minute from a million devices needs, from this run's figures."""
    rate = DEVICES / 60.0
    out: dict[str, Any] = {"requests_per_s": rate}
    for m in MODES:  # per-request CPU without the idle floor (that is per node, not per request)
        cpu_ms = res[m]["64"]["net_cpu_ms_per_request"]
        out[m] = {"cpu_ms_per_request": cpu_ms, "requests_per_core_s": 1000.0 / cpu_ms,
                  "cores": rate * cpu_ms / 1000.0}
    up, down = res["bytes"]["request"], res["bytes"]["response"]
    out["bytes_per_request"] = up + down
    out["mbit_s_up"] = rate * up * 8 / 1e6
    out["mbit_s_down"] = rate * down * 8 / 1e6
    return out


def to_markdown(res: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in to_rows(res)]
    env, p = res["environment"], res["projection"]
    proxy = res["ray-1"]["health_p50_ms"] - res["single"]["health_p50_ms"]
    lines += [
        "",
        f"Command: `{res['command']}`. {env['cpus']} CPUs shared by the servers and the load generator; load "
        f"average {env['loadavg_start'][0]:.1f} at start, {env['loadavg_end'][0]:.1f} at the end; "
        f"{env['rounds']} interleaved rounds; accuracy of the answers "
        + ", ".join(f"{m} {res[m]['64']['accuracy']:.3f}" for m in MODES) + ".",
        f"Ray's proxy adds {proxy:.2f} ms per request (GET /v1/health p50, Ray 1 replica minus single process).",
        f"Bytes per request: {res['bytes']['request']} up (HTTP request with a {res['bytes']['payload']:.0f}-byte "
        f"mean payload), {res['bytes']['response']} down (JSON answer with headers).",
        f"On paper, {DEVICES:,} devices x 1 request/minute = {p['requests_per_s']:,.0f} requests/s: "
        + "; ".join(f"{m}: {p[m]['requests_per_core_s']:,.0f} requests/s per core -> {p[m]['cores']:.1f} cores"
                    for m in MODES)
        + f"; bandwidth {p['mbit_s_up']:.1f} Mbit/s up, {p['mbit_s_down']:.1f} Mbit/s down (HTTP only).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("reports/ray-bench"))
    p.add_argument("--single-requests", type=int, default=400, help="sequential requests (1 client), all rounds")
    p.add_argument("--requests", type=int, default=1500, help="requests per concurrency level (16, 64), all rounds")
    p.add_argument("--health-requests", type=int, default=400, help="GET /v1/health at 1 client, all rounds")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--idle-seconds", type=float, default=3.0, help="idle CPU measured over this long per host")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--drop-rate", type=float, default=0.9, help="of the benchmark model (sets the payload size)")
    args = p.parse_args(argv)

    from daonet.device import DeviceModel, RandomMasks
    from daonet.server.config import ServerConfig
    from daonet.server.launch import ChildServer
    from daonet.server.ray_serve import RayOptions, RayService, free_port

    load_start = os.getloadavg()
    bundle, x, y = prepare_model(args.drop_rate)
    payloads = [pl.data for pl in DeviceModel.load(bundle / "device").encode_many(x, RandomMasks(0))]
    single = ChildServer("daonet.server.launch:product_app", {
        "bundles": [str(bundle / "server")], "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
        "log_level": "warning"}, torch_threads=1, ready_path="/v1/health", uvicorn_options={"backlog": 256},
        startup_timeout=60, name="single server")
    services: list[RayService] = []
    try:
        single.start()
        port = free_port()
        config = ServerConfig(bundles=[bundle / "server"], port=port, max_batch_size=args.max_batch_size,
                              max_wait_ms=args.max_wait_ms, torch_threads=1, log_level="warning")
        print("starting Ray (num_cpus=2) with two apps: 1 and 2 replicas ...", flush=True)
        for name, n in (("r1", 1), ("r2", 2)):
            services.append(RayService(config, RayOptions(replicas=n, num_cpus=2, replica_cpus=0.5), name=name,
                                       route_prefix=f"/{name}").start())
        ports = {"single": single.port, "ray-1": port, "ray-2": port}
        prefixes = {"single": "", "ray-1": "/r1", "ray-2": "/r2"}
        ray_pids = lambda: descendants(os.getpid()) - {single.pid}  # noqa: E731
        pids = {"single": lambda: {single.pid}, "ray-1": ray_pids, "ray-2": ray_pids}
        print(f"measuring ({args.rounds} interleaved rounds) ...", flush=True)
        res = measure(ports, prefixes, pids, payloads, y, args)
        req = build_request(f"/v1/models/{MODEL_ID}/predict", payloads[0])
        res["bytes"] = {"payload": float(np.mean([len(b) for b in payloads])),
                        "request": len(req) - len(payloads[0]) + int(np.mean([len(b) for b in payloads])),
                        "response": response_bytes(single.port, req)}
    finally:
        for s in reversed(services):
            s.stop()
        single.stop()
    import torch

    res["command"] = "python bench/ray_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    res["environment"] = {"cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                          "rounds": args.rounds, "max_batch_size": args.max_batch_size,
                          "max_wait_ms": args.max_wait_ms, "python": platform.python_version(),
                          "torch": torch.__version__, "ray": __import__("ray").__version__,
                          "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    res["projection"] = projection(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray_bench.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "ray_bench.md").write_text(to_markdown(res))
    print(to_markdown(res))
    print(f"written {args.out / 'ray_bench.json'} and {args.out / 'ray_bench.md'}")


if __name__ == "__main__":
    main()
