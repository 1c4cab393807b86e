"""Denial-of-service benchmark: valid traffic while each cheap attack runs, from 1 and from 10 addresses, one run.

    python bench/dos_bench.py --quick        # a few minutes on a loaded 2-core machine
    python bench/dos_bench.py --out reports/dos-bench

The product server (``daonet.server.launch.ChildServer`` running ``product_app`` with the defaults of
``daonet serve``: SHA-256 key hash, body limit from the served model, 10 s header and body timeouts, 1000
connections shared fairly with at most 128 per address, 30 wrong keys per minute per address) serves a small
real model (sklearn digits, trained here in seconds) in its own process with 1 torch thread, under a soft
limit of 1024 file descriptors (it raises its own limit to fit its connection budget).

Valid traffic: 4 clients from 127.0.0.1 sending real payloads with the right key back to back, one new
connection per request; a request counts as answered if it gets a 200 within 2 s. The attackers run in a
separate process (so their CPU is not the valid clients' event loop), spread evenly over 1 or 10 addresses
(127.0.0.2, ...), and re-open whatever the server closes (after 1 s; at once for the wrong-key flood):

- ``idle sockets``: 1100 connections that never send a byte (more than the whole budget);
- ``slow headers``: 200 connections sending a request head one byte per second;
- ``slow bodies``: 300 connections sending a valid head, then the body one byte per second;
- ``held after 413``: 300 connections declaring a 1 MiB body, then trickling it one byte per second after
  the 413;
- ``wrong keys``: 32 connections sending wrong API keys back to back (a new connection whenever one closes).

Reported per scenario and address count: the share of valid requests answered and their p99 latency as a
multiple of the unloaded run's (measured first, in the same run). Targets: >= 90 % answered, p99 <= 3x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
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
WRONG = "dao_wrong-key-0123456789abcdefghij"
VALID_CLIENTS = 4
REQUEST_TIMEOUT = 2.0
PREDICT = "/v1/models/digits-mlp/predict"
ATTACKS = {"idle sockets": 1100, "slow headers": 200, "slow bodies": 300, "held after 413": 300, "wrong keys": 32}
ADDRESS_COUNTS = (1, 10)
TARGET_ANSWERED, TARGET_P99_RATIO = 90.0, 3.0


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
    return server, [p.data for p in device.encode_many(result.dataset.x_test[:200], RandomMasks(0))]


def start_server(bundle: Path) -> Any:
    from daonet.server.config import ServerConfig, hash_api_key
    from daonet.server.launch import ChildServer, _config_spec

    config = ServerConfig(bundles=[bundle], log_level="critical", torch_threads=1,
                          api_key_hashes=[hash_api_key(KEY)]).validate()
    return ChildServer("daonet.server.launch:product_app", _config_spec(config), torch_threads=1,
                       log_level="critical", ready_path="/v1/health",
                       uvicorn_options={**config.uvicorn_options(), "nofile": 1024, "backlog": 2048},
                       name="daonet server").start()


def _request(body: bytes, key: str, keep_alive: bool = False) -> bytes:
    return (f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            f"X-API-Key: {key}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n").encode() + body


# -- valid traffic -----------------------------------------------------------------------------------------------
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


# -- attackers (in their own process) ------------------------------------------------------------------------------
async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event,
                trickle: bool) -> None:
    """Until the server closes or ``stop``: read whatever comes; with ``trickle`` send a byte per second."""
    while not stop.is_set():
        try:
            async with asyncio.timeout(1.0):
                if not await reader.read(65536):
                    return
        except TimeoutError:
            if trickle:
                writer.write(b"\0")
                await writer.drain()


async def _attacker(port: int, kind: str, address: str, body: bytes, stop: asyncio.Event, counts: list[int]) -> None:
    """One attacking connection, re-opened whenever the server closes it. ``counts`` = [opened, closed by server]."""
    while not stop.is_set():
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
            counts[0] += 1
            if kind == "wrong keys":
                bad = _request(body, WRONG, keep_alive=True)
                while not stop.is_set():
                    writer.write(bad)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    if b"connection: close" in head.lower():
                        break
            elif kind == "idle sockets":
                await _hold(reader, writer, stop, trickle=False)
            elif kind == "slow headers":
                for byte in _request(body, KEY):
                    if stop.is_set() or reader.at_eof() or reader._buffer:  # noqa: SLF001 - answered or closed
                        break
                    writer.write(bytes([byte]))
                    await asyncio.sleep(1.0)
            elif kind == "slow bodies":
                writer.write(_request(body, KEY)[:-len(body)])  # the head; then the body a byte a second
                await _hold(reader, writer, stop, trickle=True)
            elif kind == "held after 413":
                writer.write(_request(b"", KEY).replace(b"Content-Length: 0", b"Content-Length: 1048576"))
                await _hold(reader, writer, stop, trickle=True)
            if not stop.is_set():
                counts[1] += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, IndexError, ValueError):
            if not stop.is_set():
                counts[1] += 1
        finally:
            if writer is not None:
                writer.close()
        if not stop.is_set() and kind != "wrong keys":
            await asyncio.sleep(1.0)


def attack_process(port: int, kind: str, addresses: list[str], body: bytes, stop: Any, report: Any) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))

    async def main() -> None:
        done = asyncio.Event()
        counts = [0, 0]
        n = ATTACKS[kind]
        tasks = [asyncio.create_task(_attacker(port, kind, addresses[i % len(addresses)], body, done, counts))
                 for i in range(n)]
        while not stop.is_set():
            await asyncio.sleep(0.1)
        done.set()
        await asyncio.wait(tasks, timeout=3)
        report.put(counts)

    asyncio.run(main())


# -- scenarios ---------------------------------------------------------------------------------------------------
def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_scenario(server: Any, kind: str | None, n_addresses: int, requests: list[bytes], body: bytes,
                 ramp: float, seconds: float) -> dict[str, Any]:
    rss0 = _rss_mb(server.pid)
    proc = stop = report = None
    if kind is not None:
        ctx = mp.get_context("fork")
        stop, report = ctx.Event(), ctx.Queue()
        addresses = [f"127.0.0.{2 + i}" for i in range(n_addresses)]
        proc = ctx.Process(target=attack_process, args=(server.port, kind, addresses, body, stop, report), daemon=True)
        proc.start()
        time.sleep(ramp)
    samples = asyncio.run(valid_traffic(server.port, requests, seconds))
    rss = _rss_mb(server.pid)
    counts = [0, 0]
    if proc is not None:
        stop.set()
        try:
            counts = report.get(timeout=10)
        except Exception:  # noqa: BLE001 - a stuck attacker is killed below
            pass
        proc.join(5)
        if proc.is_alive():
            proc.kill()
        time.sleep(1.0)  # let the server notice the closed sockets before the next scenario
    ok = np.array([s[1] for s in samples])
    lat = np.array([s[0] for s in samples if s[1]]) * 1000
    return {"requests": len(samples), "answered_pct": float(100 * ok.mean()) if ok.size else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "attacker_connections_opened": counts[0], "attacker_connections_closed_by_server": counts[1],
            "server_rss_extra_mb": float(rss - rss0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="reports/dos-bench")
    p.add_argument("--quick", action="store_true", help="2 s of valid traffic after a 2 s ramp per scenario")
    p.add_argument("--seconds", type=float, default=5.0, help="valid traffic measured per scenario")
    p.add_argument("--ramp", type=float, default=3.0, help="seconds of attack before measuring")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.ramp = 2.0, 2.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        bundle, payloads = prepare(Path(tmp))
        server = start_server(bundle)
        try:
            requests = [_request(b, KEY) for b in payloads]
            results["unloaded"] = run_scenario(server, None, 0, requests, payloads[0], 0, args.seconds)
            base = results["unloaded"]["p99_ms"]
            print(f"unloaded: p50 {results['unloaded']['p50_ms']:.1f} ms, p99 {base:.1f} ms", flush=True)
            for kind in ATTACKS:
                for n in ADDRESS_COUNTS:
                    cell = run_scenario(server, kind, n, requests, payloads[0], args.ramp, args.seconds)
                    cell["p99_ratio"] = cell["p99_ms"] / base if cell["p99_ms"] is not None else None
                    results[f"{kind} x{n}"] = cell
                    print(f"{kind:15s} from {n:2d} | {_fmt(cell)}", flush=True)
        finally:
            server.stop()
    lines = ["| attack | from addresses | valid answered | valid p99 (x unloaded) | attacker connections "
             "opened / closed by server | server memory |", "|---|---:|---:|---:|---:|---:|"]
    u = results["unloaded"]
    lines.append(f"| none (unloaded) | — | {u['answered_pct']:.0f} % | {u['p99_ms']:.1f} ms (1.0x) | — | — |")
    for kind in ATTACKS:
        for n in ADDRESS_COUNTS:
            c = results[f"{kind} x{n}"]
            p99 = "—" if c["p99_ms"] is None else f"{c['p99_ms']:.1f} ms ({c['p99_ratio']:.1f}x)"
            lines.append(f"| {kind if n == ADDRESS_COUNTS[0] else ''} | {n} | {c['answered_pct']:.0f} % | {p99} | "
                         f"{c['attacker_connections_opened']} / {c['attacker_connections_closed_by_server']} | "
                         f"+{c['server_rss_extra_mb']:.0f} MiB |")
    table = "\n".join(lines)
    missed = [k for k, c in results.items() if k != "unloaded" and (
        c["answered_pct"] < TARGET_ANSWERED or c["p99_ratio"] is None or c["p99_ratio"] > TARGET_P99_RATIO)]
    command = "python bench/dos_bench.py" + (" --quick" if args.quick else
                                             f" --seconds {args.seconds:g} --ramp {args.ramp:g}")
    report = {"command": command, "results": results, "targets_missed": missed,
              "seconds": time.perf_counter() - t0, "machine": platform.platform(), "cpus": os.cpu_count(),
              "load_average": os.getloadavg()}
    (out / "dos.json").write_text(json.dumps(report, indent=2))
    (out / "dos.md").write_text(table + "\n")
    print(table)
    print(f"targets (>= {TARGET_ANSWERED:.0f} % answered, p99 <= {TARGET_P99_RATIO:g}x): "
          f"{'all met' if not missed else 'missed by ' + ', '.join(missed)}")
    print(f"({report['seconds']:.0f} s; {report['cpus']} CPUs, load average {report['load_average'][0]:.1f})")


def _fmt(cell: dict[str, Any]) -> str:
    p99 = "—" if cell["p99_ms"] is None else f"p99 {cell['p99_ms']:.1f} ms ({cell['p99_ratio']:.1f}x)"
    return (f"{cell['answered_pct']:.0f} % answered | {p99} | attackers opened {cell['attacker_connections_opened']}"
            f", closed by server {cell['attacker_connections_closed_by_server']}")


if __name__ == "__main__":
    main()
