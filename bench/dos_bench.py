"""Denial-of-service benchmark: each cheap attack against the old settings and the hardened ones, one run.

    python bench/dos_bench.py --out reports/dos-bench

Two product servers (``daonet.server.launch.ServerProcess``'s app, each in its own process, 1 torch thread)
serve the same small real model (sklearn digits, trained here in seconds):

- **before**: the former code path, switched back on by flags: the API key stored as a PBKDF2 hash
  (200,000 iterations, the former default; ``allow_slow_key_hashes``), a fixed 1 MiB body limit, no
  header/body timeout, no connection cap, no failed-auth limit, uvicorn's 5 s keep-alive;
- **after**: the defaults of ``daonet serve`` (SHA-256 key hash, body limit from the served models, 10 s
  header and body timeouts, at most 1000 connections and 128 per client address, 30 wrong keys per minute
  per address).

Both processes start with a soft limit of 1024 file descriptors, the usual default (the hardened server
raises its own limit to fit ``max_connections``). Valid traffic: 4 clients from 127.0.0.1, each sending
real payloads with the right key back to back, one new connection per request (as an app that sends a
prediction now and then does); a request counts as failed if it does not get a 200 within 2 s. Attackers
connect from 127.0.0.2 (a different client address on loopback) and re-open whatever the server closes:

- ``wrong keys``: 32 connections sending requests with wrong API keys back to back;
- ``idle sockets``: 1100 connections that never send a byte;
- ``slow headers``: 200 connections sending their request head one byte per second;
- ``stalled bodies``: 300 connections sending headers and 1 MiB minus 16 bytes of a 1 MiB body, then nothing.

Per scenario and server, over two rounds in ABBA order (before, after, after, before): the share of valid
requests answered (200 within 2 s), their p50/p99 latency, the server's peak additional memory (VmRSS)
during the attack, and how many attacking connections the server closed (or refused).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

KEY = "dao_bench-valid-key-0123456789abcdef"
VALID_CLIENTS = 4
REQUEST_TIMEOUT = 2.0
SCENARIOS = ("no attack", "wrong keys", "idle sockets", "slow headers", "stalled bodies")
ATTACKER = "127.0.0.2"


def prepare(tmp: Path) -> tuple[Path, list[bytes]]:
    """A small real model (digits, dense 64->256, p=0.5) exported as bundles, and 200 device payloads."""
    import torch

    from daonet.device import DeviceModel, RandomMasks
    from daonet.exporting import export_model
    from daonet.train import TrainConfig, train

    torch.set_num_threads(1)
    result = train(TrainConfig(dataset="digits", model="mlp", drop_rate=0.5, epochs=3,
                               model_kwargs={"hidden": 256, "hidden2": 64}), progress=False)
    _, server = export_model(result.model, tmp / "bundle", model_id="digits-mlp",
                             classes=result.dataset.classes, raw_dtype="uint8")
    device = DeviceModel.load(tmp / "bundle" / "device")
    x = result.dataset.x_test[:200]
    return server, [p.data for p in device.encode_many(x, RandomMasks(0))]


def start_servers(bundle: Path) -> dict[str, Any]:
    from daonet.server.config import ServerConfig, hash_api_key
    from daonet.server.launch import ChildServer, _config_spec

    before = ServerConfig(bundles=[bundle], log_level="critical", torch_threads=1,
                          api_key_hashes=[hash_api_key(KEY, "pbkdf2")], allow_slow_key_hashes=True,
                          max_body_bytes=1 << 20, header_timeout_s=0, body_timeout_s=0, keep_alive_timeout_s=5,
                          max_connections=0,
                          max_connections_per_client=0, auth_failures_per_minute=0)
    after = ServerConfig(bundles=[bundle], log_level="critical", torch_threads=1, api_key_hashes=[hash_api_key(KEY)])
    servers = {}
    for name, config in (("before", before), ("after", after)):
        servers[name] = ChildServer("daonet.server.launch:product_app", _config_spec(config.validate()),
                                    torch_threads=1, log_level="critical", ready_path="/v1/health",
                                    uvicorn_options={**config.uvicorn_options(), "nofile": 1024, "backlog": 2048},
                                    name=f"{name} server").launch()
    for s in servers.values():
        s.wait_ready()
    return servers


def _request(port: int, body: bytes, key: str) -> bytes:
    return (f"POST /v1/models/digits-mlp/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nX-API-Key: {key}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


async def _one_valid(port: int, req: bytes) -> tuple[float, bool]:
    t0 = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.1", 0))
            writer.write(req)
            answer = await reader.read()
        return time.perf_counter() - t0, answer.startswith(b"HTTP/1.1 200")
    except (TimeoutError, OSError):
        return time.perf_counter() - t0, False
    finally:
        if writer is not None:
            writer.close()


async def valid_traffic(port: int, requests: list[bytes], seconds: float) -> list[tuple[float, bool]]:
    out: list[tuple[float, bool]] = []
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        j = i
        while time.monotonic() < deadline:
            out.append(await _one_valid(port, requests[j % len(requests)]))
            j += VALID_CLIENTS

    await asyncio.gather(*(client(i) for i in range(VALID_CLIENTS)))
    return out


async def _attacker(port: int, kind: str, payload: bytes, stop: asyncio.Event, held: list[int]) -> None:
    """One attacking connection, re-opened whenever the server closes it, until ``stop``.

    ``held`` = [open now, opened in all, closed (or refused) by the server]."""
    while not stop.is_set():
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))
            held[0] += 1
            held[1] += 1
            try:
                if kind == "wrong keys":
                    bad = _request(port, payload, "dao_wrong-key-0123456789abcdefgh").replace(
                        b"Connection: close", b"Connection: keep-alive")
                    while not stop.is_set():
                        writer.write(bad)
                        head = await reader.readuntil(b"\r\n\r\n")
                        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                        await reader.readexactly(length)
                        if b"connection: close" in head.lower():
                            break
                elif kind == "idle sockets":
                    await _wait_closed(reader, stop)
                elif kind == "slow headers":
                    head = _request(port, payload, KEY)
                    for byte in head:
                        if stop.is_set() or reader.at_eof():
                            break
                        writer.write(bytes([byte]))
                        await asyncio.sleep(1.0)
                        if reader._buffer or reader.at_eof():  # noqa: SLF001 - the server answered or closed
                            break
                elif kind == "stalled bodies":
                    size = 1 << 20
                    writer.write(f"POST /v1/models/digits-mlp/predict HTTP/1.1\r\nHost: x\r\n"
                                 f"Content-Type: application/octet-stream\r\nX-API-Key: {KEY}\r\n"
                                 f"Content-Length: {size}\r\n\r\n".encode())
                    writer.write(b"\0" * (size - 16))
                    await _wait_closed(reader, stop)
            finally:
                held[0] -= 1
            if not stop.is_set():
                held[2] += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, IndexError, ValueError):
            if not stop.is_set():
                held[2] += 1
        finally:
            if writer is not None:
                writer.close()
        if not stop.is_set():
            await asyncio.sleep(1.0)  # re-open what the server closed


async def _wait_closed(reader: asyncio.StreamReader, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            async with asyncio.timeout(0.5):
                if not await reader.read(65536):
                    return
        except TimeoutError:
            continue


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def scenario(name: str, server: Any, requests: list[bytes], ramp: float, seconds: float) -> dict[str, Any]:
    counts = {"no attack": 0, "wrong keys": 32, "idle sockets": 1100, "slow headers": 200, "stalled bodies": 300}
    stop = asyncio.Event()
    held = [0, 0, 0]
    rss0 = _rss_mb(server.pid)
    peak = [rss0]

    async def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb(server.pid))
            await asyncio.sleep(0.2)

    attackers = [asyncio.create_task(_attacker(server.port, name, requests[0], stop, held))
                 for _ in range(counts[name])]
    watcher = asyncio.create_task(watch())
    await asyncio.sleep(ramp)
    held_at_start = held[0]
    samples = await valid_traffic(server.port, requests, seconds)
    held_at_end = held[0]
    stop.set()
    await asyncio.gather(*attackers, watcher, return_exceptions=True)
    await asyncio.sleep(1.0)  # let the server notice the closed sockets before the next scenario
    return {"samples": samples, "attacker_connections_open": [held_at_start, held_at_end],
            "attacker_closed_by_server": held[2], "server_rss_peak_extra_mb": float(peak[0] - rss0)}


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool the valid requests of both rounds; worst memory and the closed-connection count of each round."""
    samples = [s for r in rounds for s in r["samples"]]
    ok = np.array([s[1] for s in samples])
    lat = np.array([s[0] for s in samples if s[1]]) * 1000  # latency of the answered requests
    return {"requests": len(samples), "failed": int((~ok).sum()), "failed_pct": float(100 * (~ok).mean()),
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "attacker_connections_open": [r["attacker_connections_open"] for r in rounds],
            "attacker_closed_by_server": int(sum(r["attacker_closed_by_server"] for r in rounds)),
            "server_rss_peak_extra_mb": float(max(r["server_rss_peak_extra_mb"] for r in rounds))}


def _fmt(cell: dict[str, Any]) -> str:
    lat = "—" if cell["p50_ms"] is None else f"{cell['p50_ms']:.1f} / {cell['p99_ms']:.0f} ms"
    return (f"{100 - cell['failed_pct']:.0f} % | {lat} | +{cell['server_rss_peak_extra_mb']:.0f} MiB | "
            f"{cell['attacker_closed_by_server']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="reports/dos-bench")
    p.add_argument("--seconds", type=float, default=3.0, help="valid traffic measured per scenario and server")
    p.add_argument("--ramp", type=float, default=2.5, help="seconds of attack before measuring")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))  # the attackers' sockets

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bundle, payloads = prepare(Path(tmp))
        servers = start_servers(bundle)
        try:
            results: dict[str, dict[str, Any]] = {s: {} for s in SCENARIOS}
            for name in SCENARIOS:
                rounds: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
                for which in ("before", "after", "after", "before"):  # ABBA: neither always goes first
                    srv = servers[which]
                    reqs = [_request(srv.port, b, KEY) for b in payloads]
                    rounds[which].append(asyncio.run(scenario(name, srv, reqs, args.ramp, args.seconds)))
                for which in ("before", "after"):
                    results[name][which] = summarize(rounds[which])
                    print(f"{name:15s} {which:6s} | {_fmt(results[name][which])}", flush=True)
        finally:
            for s in servers.values():
                s.stop()
    lines = ["| attack | server | valid requests answered | their p50 / p99 | server memory | attacking connections "
             "closed by the server |", "|---|---|---:|---:|---:|---:|"]
    for name in SCENARIOS:
        for which in ("before", "after"):
            lines.append(f"| {name if which == 'before' else ''} | {which} | {_fmt(results[name][which])} |")
    table = "\n".join(lines)
    report = {"command": "python bench/dos_bench.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
              "results": results, "seconds": time.perf_counter() - t0, "machine": platform.platform(),
              "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    (out / "dos.json").write_text(json.dumps(report, indent=2))
    (out / "dos.md").write_text(table + "\n")
    print(table)
    print(f"({report['seconds']:.0f} s; load average {report['load_average'][0]:.1f})")


if __name__ == "__main__":
    main()
