"""daonet vs homomorphic encryption vs plaintext: the same MNIST test images, measured side by side in one run.

Why this exists: the paper's headline claim (docs/design.md, "The idea") is that dropping activation
outputs costs far less than encryption. Users choosing between the two need that measured on their machine,
on the same task, by a command they can rerun (``daonet bench encryption``). Three approaches:

- **plaintext**: the whole model on the server, the raw input (784 uint8 pixels) sent over HTTP on loopback
  (:func:`daonet.bench.plaintext.plaintext_app`, benchmark-only; the speed upper bound, no privacy);
- **daonet**: the device runtime (:class:`daonet.device.Client`) encodes the dropped first-layer activations,
  sends them over HTTP on loopback to the real product server (:func:`daonet.server.app.create_app` under
  :class:`~daonet.server.launch.ChildServer`), at the bundle's trained drop rate;
- **he**: TenSEAL CKKS inference of a 784-H-10 ``x*x`` MLP (:func:`daonet.bench.he.run_he_benchmark`):
  encrypt on the "device", evaluate on the "server", decrypt on the device, in this process, no transport.

The two HTTP servers run in their own processes (spawned, one per approach, both up at once) so that the
device's and the server's memory can be told apart and the server does not share the device's GIL; their
requests are interleaved image by image, so a load spike on this shared machine hits both alike.

Memory, explicitly: on Linux, peak resident memory (``VmHWM``) is reset by writing 5 to
``/proc/PID/clear_refs`` right before an operation, and the peak minus the resident memory at its start is
reported: *additional* memory the operation needed (0 means it fit in memory the process already held).
For the HTTP servers this is read on the server process, from outside, around each request; for the device
on the bench process around each device-side step. HE uses the same method inside one process (he.py).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DaonetError, InputError
from ..measure import PeakMemoryProbe, make_progress, stats
from . import he

if TYPE_CHECKING:
    from ..server.launch import ChildServer

__all__ = ["run_encryption_bench", "write_report", "render_table", "to_markdown", "ratio_lines", "plot",
           "check_out_dir", "check_dataset", "APPROACHES", "SUPPORTED_DATASETS", "SECURE_COMPUTATION", "HE_MISSING"]

APPROACHES = ("plaintext", "daonet", "he")
LABELS = {"plaintext": "plaintext", "daonet": "daonet", "he": "HE (CKKS)"}
SHORT = {"device_serialize": "serialize", "device_encode": "encode", "http_round_trip": "HTTP",
         "encrypt": "encrypt", "server_eval": "server", "decrypt": "decrypt"}
SUPPORTED_DATASETS = ("mnist",)
HE_MISSING = "not installed (pip install 'daonet[bench]')"
WARMUP_REQUESTS = 3
SERVER_START_TIMEOUT_S = 180.0

# Checked on this project's machines (Python 3.11, torch 2.13.0 CPU), in a throwaway venv, without patching.
SECURE_COMPUTATION: dict[str, Any] = {
    "included": False,
    "framework": "CrypTen (secure multi-party computation in PyTorch)",
    "version_checked": "0.4.1, the latest release on PyPI (December 2022)",
    "reason": (
        "CrypTen is not installable from the registries without patching on current PyTorch: "
        "`pip install crypten==0.4.1` fails on its dependency `sklearn` (the deprecated PyPI name that refuses "
        "to build; the package is `scikit-learn`), and its dependency torchvision (latest 0.29.1) requires "
        "torch>=2.14, which would replace the pinned torch 2.13.0; "
        "installed with --no-deps (plus omegaconf, onnx, protobuf) next to torch 2.13.0, `import crypten` "
        "fails with ModuleNotFoundError: No module named 'torch.onnx._internal.registration' "
        "(crypten/nn/onnx_converter.py imports a private torch.onnx module that current PyTorch no longer has). "
        "So no secure-computation baseline is measured here."
    ),
    "how_checked": (
        "pip download --no-deps crypten==0.4.1 (ok: pure-Python wheel); pip download --no-deps sklearn (fails: "
        "'Getting requirements to build wheel did not run successfully'); pip download --no-deps torchvision "
        "(0.29.1: Requires-Dist torch>=2.14.0); python -m venv /tmp/cryptenv with "
        "torch 2.13.0 visible, pip install --no-deps crypten omegaconf onnx protobuf ml_dtypes; "
        "python -c 'import crypten' -> the ModuleNotFoundError above"
    ),
}


# -- small helpers ----------------------------------------------------------------------------------------
def check_out_dir(out: str | Path) -> Path:
    """Create ``out`` and prove it is writable *before* minutes of measuring, not after."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory; pass a directory to write the report into")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"cannot write the report to {out} ({exc.strerror or exc}); pass a writable --out "
                         "directory") from exc
    return out


def check_dataset(dataset: str) -> str:
    key = dataset.strip().lower()
    if key not in SUPPORTED_DATASETS:
        raise InputError(
            f"--dataset {dataset!r} is not supported by the encryption benchmark: only 'mnist' is, because the "
            "homomorphic-encryption baseline follows TenSEAL's MNIST recipe (a 784-H-10 square-activation MLP "
            "whose size is fitted to the CKKS slot count); daonet itself serves the other data sets"
        )
    return key


# -- the HTTP servers, each in its own process ----------------------------------------------------------------
def bench_app(kind: str, path: str, model_id: str, torch_threads: int) -> Any:
    """Child side (run by :class:`~daonet.server.launch.ChildServer`): build one app and measure its set-up
    memory, reported back through ``app.state.launch_report``."""
    probe = PeakMemoryProbe()
    with probe.measure("setup"):
        if kind == "daonet":
            from ..server.app import create_app
            from ..server.config import ServerConfig

            app = create_app(ServerConfig(bundles=[Path(path)], host="127.0.0.1", port=0, log_level="warning",
                                          torch_threads=torch_threads))
        else:
            from .plaintext import plaintext_app

            app = plaintext_app(Path(path), model_id)
    app.state.launch_report = {"setup_peak_bytes": probe.get("setup")}
    return app


@contextmanager
def _servers(specs: dict[str, tuple[str, str]], torch_threads: int) -> Iterator[dict[str, ChildServer]]:
    """Start every requested server (in parallel: the imports dominate), yield them ready, stop them all."""
    from ..server.launch import ChildServer

    children: dict[str, ChildServer] = {}
    try:
        for kind, (path, model_id) in specs.items():
            children[kind] = ChildServer(
                "daonet.bench.encryption:bench_app", {"kind": kind, "path": path, "model_id": model_id,
                                                      "torch_threads": torch_threads},
                torch_threads=torch_threads, ready_path="/v1/health", startup_timeout=SERVER_START_TIMEOUT_S,
                name=f"{kind} server").launch()
        for c in children.values():
            try:
                c.wait_ready()
            except RuntimeError as exc:
                raise DaonetError(f"{exc}; the machine may be overloaded, retry") from exc
        yield children
    finally:
        for c in children.values():
            c.stop()


# -- measurement ------------------------------------------------------------------------------------------------
def _header_bytes(response: Any) -> tuple[int, int]:
    """HTTP/1.1 framing around the bodies (request line + headers, status line + headers), as sent."""
    req = response.request
    up = len(f"{req.method} {req.url.raw_path.decode()} HTTP/1.1\r\n") + 2
    up += sum(len(k) + len(v) + 4 for k, v in req.headers.raw)
    down = len(f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n") + 2
    down += sum(len(k) + len(v) + 4 for k, v in response.headers.raw)
    return up, down


@dataclass
class _Samples:
    """Per-request measurements of one HTTP approach."""

    latency: list[float]
    device: list[float]
    http: list[float]
    up: list[int]
    down: list[int]
    hdr_up: list[int]
    hdr_down: list[int]
    pred: list[int]
    nnz: list[int]

    @classmethod
    def empty(cls) -> _Samples:
        return cls([], [], [], [], [], [], [], [], [])


def _plaintext_step(http: Any, path: str,
                    rtt_s: float = 0.0) -> Callable[[np.ndarray, PeakMemoryProbe, PeakMemoryProbe, _Samples], None]:
    """One plaintext request: serialize the raw pixels on the device, POST, parse the answer (``rtt_s``: an
    emulated network round trip, slept inside the timed request, as for daonet)."""

    def step(x: np.ndarray, dev: PeakMemoryProbe, srv: PeakMemoryProbe, s: _Samples) -> None:
        with dev.measure("plaintext_device"):
            t0 = time.perf_counter()
            body = np.ascontiguousarray(x).tobytes()
            t_dev = time.perf_counter() - t0
        with srv.measure("server"):
            t1 = time.perf_counter()
            _emulated_round_trip(rtt_s)
            r = http.post(path, content=body, headers={"Content-Type": "application/octet-stream"})
            if r.status_code != 200:
                raise DaonetError(f"the plaintext server answered {r.status_code}: {r.text[:200]}")
            index = int(r.json()["index"])
            t_http = time.perf_counter() - t1
        hu, hd = _header_bytes(r)
        s.latency.append(t_dev + t_http)
        s.device.append(t_dev)
        s.http.append(t_http)
        s.up.append(len(body))
        s.down.append(len(r.content))
        s.hdr_up.append(hu)
        s.hdr_down.append(hd)
        s.pred.append(index)
        s.nnz.append(int(x.size))

    return step


def _daonet_step(client: Any, last: dict[str, Any],
                 rtt_s: float = 0.0) -> Callable[[np.ndarray, PeakMemoryProbe, PeakMemoryProbe, _Samples], None]:
    """One daonet request: first layer + ReLU + dropping + wire encoding on the device, then Client.send."""

    def step(x: np.ndarray, dev: PeakMemoryProbe, srv: PeakMemoryProbe, s: _Samples) -> None:
        with dev.measure("daonet_device"):
            t0 = time.perf_counter()
            payload = client.encode(x)
            t_dev = time.perf_counter() - t0
        with srv.measure("server"):
            t1 = time.perf_counter()
            _emulated_round_trip(rtt_s)
            pred = client.send(payload)
            t_http = time.perf_counter() - t1
        r = last["response"]
        hu, hd = _header_bytes(r)
        s.latency.append(t_dev + t_http)
        s.device.append(t_dev)
        s.http.append(t_http)
        s.up.append(pred.payload_bytes)
        s.down.append(len(r.content))
        s.hdr_up.append(hu)
        s.hdr_down.append(hd)
        s.pred.append(pred.index)
        s.nnz.append(pred.nnz)

    return step


def _emulated_round_trip(rtt_s: float) -> None:
    """A network round trip that loopback lacks, the same for both HTTP approaches: a sleep of ``rtt_s``
    (one request = one round trip on a kept-alive connection; bandwidth is not emulated)."""
    if rtt_s > 0:
        time.sleep(rtt_s)


@contextmanager
def _blas_threads(n: int | None) -> Iterator[str]:
    """Run the device side with ``n`` BLAS threads, as a phone app's single numpy thread would.

    Why: numpy's OpenBLAS splits even the first layer's 784x800 matvec over every core; on a busy shared
    machine waking those threads costs ~10 ms per request (measured here: encode p50 12 ms with 2 OpenBLAS
    threads, 0.2-0.6 ms with 1), which is the machine's scheduling, not the device's computation. Only this
    (device) process is limited: the servers run in their own processes. Needs threadpoolctl (installed with
    scikit-learn, the [train] extra); without it the default thread count is kept and said so.
    """
    if n is None:
        yield "numpy default"
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield "numpy default (threadpoolctl not installed, so BLAS threads could not be limited)"
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield str(n)


def _bundle_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _http_approaches(kinds: list[str], raw: np.ndarray, y: np.ndarray, bundle_dir: Path, run_dir: Path,
                     repeats: int, seed: int, torch_threads: int, device_threads: int | None,
                     progress: bool, rtt_s: float = 0.0) -> dict[str, dict[str, Any]]:
    """Plaintext and/or daonet: both servers up, requests interleaved image by image, ``repeats`` passes."""
    import httpx

    from ..device import Client, DeviceModel, RandomMasks
    from .plaintext import plaintext_path

    model_id = DeviceModel.load(bundle_dir / "device").model_id  # serve the plaintext model under the same id
    specs = {"plaintext": (str(run_dir), model_id), "daonet": (str(bundle_dir / "server"), model_id)}
    dev = PeakMemoryProbe()
    out: dict[str, dict[str, Any]] = {}
    with _servers({k: specs[k] for k in kinds}, torch_threads) as children:
        steps: dict[str, Callable[..., None]] = {}
        probes: dict[str, PeakMemoryProbe] = {}
        closers: list[Callable[[], None]] = []
        device_setup: dict[str, int | None] = {}
        try:
            if "plaintext" in children:
                http = httpx.Client(base_url=children["plaintext"].info["url"], timeout=60.0)
                closers.append(http.close)
                steps["plaintext"] = _plaintext_step(http, plaintext_path(model_id), rtt_s)
                device_setup["plaintext"] = 0  # the device holds nothing but the input
            if "daonet" in children:
                last: dict[str, Any] = {}
                with dev.measure("daonet_setup"):
                    client = Client(children["daonet"].info["url"], bundle_dir / "device", masks=RandomMasks(seed))
                closers.append(client.close)
                # The Client has no public hook for the raw answer; its bytes-down are read from the response.
                client._http.event_hooks["response"].append(lambda r: last.__setitem__("response", r))
                client.check_server()
                steps["daonet"] = _daonet_step(client, last, rtt_s)
                device_setup["daonet"] = dev.get("daonet_setup")
            for k, c in children.items():
                probes[k] = PeakMemoryProbe(c.info["pid"])

            warm = _Samples.empty()
            off = PeakMemoryProbe(None)
            samples = {k: _Samples.empty() for k in steps}
            total = len(raw) * repeats * len(steps)
            with _blas_threads(device_threads) as blas, make_progress(enabled=progress, refresh_per_second=2) as bar:
                for i in range(min(WARMUP_REQUESTS, len(raw))):  # first-request costs: connections, torch init
                    for k in steps:
                        steps[k](raw[i], off, off, warm)
                task = bar.add_task("plaintext + daonet over HTTP", total=total, status="")
                for r in range(repeats):
                    for i in range(len(raw)):
                        # alternate who goes first, so neither always runs right after the other's request
                        order = list(steps) if (r * len(raw) + i) % 2 == 0 else list(steps)[::-1]
                        for k in order:
                            steps[k](raw[i], dev, probes[k], samples[k])
                            bar.update(task, advance=1, status=f"pass {r + 1}/{repeats}")
            for k in steps:
                rss = probes[k].rss()
                out[k] = _summarize_http(k, samples[k], y, len(raw), repeats, dev, probes[k], children[k].info,
                                         device_setup.get(k), rss)
                out[k]["device_blas_threads"] = blas
            if "daonet" in steps:
                d = client.device
                out["daonet"].update({
                    "setup_bytes": _bundle_bytes(bundle_dir / "device"),
                    "setup_what": "device bundle (first-layer weights + manifest), downloaded once",
                    "model_id": d.model_id, "model_version": d.version, "drop_rate": d.drop_rate,
                    "n_outputs": d.n_outputs, "raw_input_bytes": d.raw_input_bytes,
                })
        finally:
            for close in closers:
                close()
    return out


def _summarize_http(kind: str, s: _Samples, y: np.ndarray, n: int, repeats: int, dev: PeakMemoryProbe,
                    srv: PeakMemoryProbe, info: dict[str, Any], device_setup: int | None,
                    server_rss: int | None) -> dict[str, Any]:
    pred = np.asarray(s.pred).reshape(repeats, n)
    correct = pred == y[None, :]
    if kind == "plaintext":
        breakdown = {"device_serialize": stats(s.device), "http_round_trip": stats(s.http)}
        setup_bytes, setup_what = 0, "nothing: the server holds the model, the device sends raw pixels"
        device_peak = dev.get("plaintext_device")
        device_what = "serialize the raw pixels"
    else:
        breakdown = {"device_encode": stats(s.device), "http_round_trip": stats(s.http)}
        setup_bytes, setup_what = 0, ""  # filled in by the caller, which knows the bundle
        device_peak = dev.get("daonet_device")
        device_what = "first layer + ReLU + dropping + wire encoding (numpy)"
    return {
        "available": True,
        "n_images": n,
        "accuracy": float(correct[0].mean()),
        "accuracy_all_passes": float(correct.mean()),
        "predictions": [int(p) for p in pred[0]],
        "latency_s": stats(s.latency),
        "latency_breakdown_s": breakdown,
        "latency_what": "device step + HTTP round trip on loopback (incl. parsing the JSON answer), per request",
        "requests_timed": len(s.latency),
        "bytes_up_per_sample": float(np.mean(s.up)),
        "bytes_down_per_sample": float(np.mean(s.down)),
        "http_header_bytes_up_per_sample": float(np.mean(s.hdr_up)),
        "http_header_bytes_down_per_sample": float(np.mean(s.hdr_down)),
        "nnz_per_sample": float(np.mean(s.nnz)),
        "setup_bytes": setup_bytes,
        "setup_what": setup_what,
        "device_compute_s": stats(s.device),
        "device_compute_what": device_what,
        "memory": {
            "method": PeakMemoryProbe.METHOD,
            "device_peak_bytes": device_peak,
            "device_setup_peak_bytes": device_setup,
            "server_peak_bytes": srv.get("server"),
            "server_setup_peak_bytes": info.get("setup_peak_bytes"),
            "server_process_rss_bytes": server_rss,
            "notes": "device: this (bench) process, per request; server: the server's own process (pid "
                     f"{info.get('pid')}), per request, read from outside; setup: loading the model and building "
                     "the app; server_process_rss: the whole server process (Python, torch, FastAPI, model) at "
                     "the end",
        },
    }


def _he_approach(n: int, ds: Any, progress: bool, options: dict[str, Any]) -> dict[str, Any]:
    """The HE row from :func:`daonet.bench.he.run_he_benchmark`, in the common schema (plus its own details)."""
    if he.ts is None:
        return {"available": False, "reason": HE_MISSING}
    res = he.run_he_benchmark(n, progress=progress, ds=ds, **options)
    samples = res["samples"]
    enc = [s["encrypt_s"] for s in samples]
    ev = [s["server_eval_s"] for s in samples]
    dec = [s["decrypt_s"] for s in samples]
    mem = res["memory"]
    cfg = res["config"]
    return {
        "available": True,
        "n_images": n,
        "accuracy": res["he_accuracy"],
        "predictions": [int(s["he_pred"]) for s in samples],
        "latency_s": stats([a + b + c for a, b, c in zip(enc, ev, dec, strict=True)]),
        "latency_breakdown_s": {"key_generation_one_time": res["keygen_s"], "encrypt": res["encrypt_s"],
                                "server_eval": res["server_eval_s"], "decrypt": res["decrypt_s"]},
        "latency_what": "encrypt + server evaluation + decrypt, per sample, in one process (no transport: moving "
                        "its ciphertexts over loopback would add milliseconds); key generation is one-time",
        "requests_timed": n,
        "bytes_up_per_sample": float(res["bytes_up_per_sample"]),
        "bytes_down_per_sample": float(res["bytes_down_per_sample"]),
        "setup_bytes": res["setup_bytes"],
        "setup_what": "CKKS public context: public, relinearization and Galois (evaluation) keys, sent once",
        "device_compute_s": res["device_compute_s"],
        "device_compute_what": "encrypt + decrypt (CKKS, TenSEAL)",
        "memory": {
            "method": mem["method"],
            "device_peak_bytes": mem["device_peak_bytes"],
            "device_setup_peak_bytes": mem["device_keygen_peak_bytes"],
            "server_peak_bytes": mem["server_peak_bytes"],
            "server_setup_peak_bytes": mem["server_setup_peak_bytes"],
            "server_process_rss_bytes": None,
            "notes": "device and server share the bench process; per-operation peaks (device: encrypt/decrypt, "
                     "server: one evaluation; setup: key generation / loading the evaluation keys)",
        },
        "agreement_with_plaintext_square_model": res["agreement"],
        "plain_square_model_accuracy": res["plain_accuracy"],
        "max_abs_logit_diff": res["max_abs_logit_diff"],
        "model": f"784-{cfg['hidden']}-10 MLP, x*x activation",
        "reference_accuracy": {"value": res["plain_accuracy_full_test"],
                               "source": f"the x*x model in plaintext on all {len(ds.x_test)} test images"},
        "details": res,
    }


def _reference_plaintext(run_dir: Path, ds: Any) -> dict[str, Any]:
    """Accuracy of the plaintext model (dropping off) on the whole test split, in process: context for small N."""
    import torch

    from ..train import load_run

    model, _ = load_run(run_dir)
    model.first.drop_rate = 0.0
    hits = 0
    with torch.inference_mode():
        for i in range(0, len(ds.x_test), 2000):
            logits = model(torch.from_numpy(ds.x_test[i:i + 2000]))
            hits += int((logits.argmax(1).numpy() == ds.y_test[i:i + 2000]).sum())
    return {"value": hits / len(ds.x_test), "source": f"the same model in process on all {len(ds.x_test)} test "
            "images, no dropping"}


def _reference_daonet(run_dir: Path) -> dict[str, Any] | None:
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        acc = metrics["test_accuracy"]
        return {"value": float(acc["mean"]), "source": f"training-time evaluation with dropping on "
                f"{metrics.get('n_test', '?')} test images, mean of {len(acc.get('draws', [])) or '?'} mask draws"}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return float(a / b) if a is not None and b not in (None, 0) else None


def _ratios(approaches: dict[str, dict[str, Any]], raw_bytes: int) -> dict[str, Any]:
    def lat(k: str, q: str) -> float | None:
        a = approaches.get(k, {})
        return a["latency_s"][q] if a.get("available") else None

    out: dict[str, Any] = {}
    for q in ("p50", "p99"):
        out[f"daonet_over_plaintext_latency_{q}"] = _ratio(lat("daonet", q), lat("plaintext", q))
        out[f"he_over_daonet_latency_{q}"] = _ratio(lat("he", q), lat("daonet", q))
        out[f"he_over_plaintext_latency_{q}"] = _ratio(lat("he", q), lat("plaintext", q))
    for direction in ("up", "down"):
        out[f"bytes_{direction}_over_raw_input"] = {
            k: _ratio(a[f"bytes_{direction}_per_sample"], raw_bytes) for k, a in approaches.items() if a["available"]
        }
    out["raw_input_bytes"] = raw_bytes
    return out


# -- the entry point ------------------------------------------------------------------------------------------
def run_encryption_bench(
    n: int = 20,
    dataset: str = "mnist",
    *,
    bundle_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    he_options: dict[str, Any] | None = None,
    approaches: Sequence[str] = APPROACHES,
    repeats: int = 5,
    seed: int = 0,
    torch_threads: int = 1,
    device_threads: int | None = 1,
    progress: bool = True,
    ds: Any | None = None,
    rtt_ms: float = 0.0,
) -> dict[str, Any]:
    """Measure plaintext, daonet and HE on the first ``n`` MNIST test images; returns the JSON-ready result.

    ``bundle_dir``: an exported daonet bundle (``device/`` + ``server/``); default: the demo's cached bundle
    (:func:`daonet.studies.demo.ensure_bundles`, trained on first use). ``run_dir``: the training run it came from
    (the plaintext server runs that run's whole model); default: ``run`` beside the bundle, as the demo lays
    them out. ``he_options``: keyword arguments for :func:`daonet.bench.he.run_he_benchmark` (hidden, epochs,
    n_train, cache_dir, ...). ``repeats``: timing passes over the images for the two cheap approaches (their
    ``accuracy`` is the first pass's; HE runs each image once). ``torch_threads``: each HTTP server's torch
    threads. ``device_threads``: BLAS threads of the device step (1, as on a phone; None: numpy's default).
    ``rtt_ms``: an emulated network round trip added to every plaintext and daonet request (0: loopback only).
    """
    dataset = check_dataset(dataset)
    if not isinstance(n, int | np.integer) or n < 1:
        raise InputError(f"--n must be a positive number of test images, got {n}")
    if repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {repeats}")
    if not (isinstance(rtt_ms, int | float) and 0.0 <= float(rtt_ms) <= 10_000.0):
        raise InputError(f"--rtt-ms must be a round trip in milliseconds in [0, 10000], got {rtt_ms!r}")
    if torch_threads < 1 or (device_threads is not None and device_threads < 1):
        raise InputError(f"thread counts must be at least 1, got torch_threads={torch_threads}, "
                         f"device_threads={device_threads}")
    unknown = [a for a in approaches if a not in APPROACHES]
    if unknown or not approaches:
        raise InputError(f"unknown approach(es) {unknown}; choose from {', '.join(APPROACHES)}")
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    if ds is None:
        from ..data import load_dataset

        ds = load_dataset(dataset)
    if n > len(ds.x_test):
        raise InputError(f"--n {n} is more than the {len(ds.x_test)} test images of {dataset}")
    x = ds.x_test[:n]
    y = np.asarray(ds.y_test[:n], dtype=np.int64)
    raw = (x * 255).round().astype(np.uint8).reshape(n, -1)  # what a device holds: 8-bit pixels
    raw_bytes = int(raw[0].nbytes)

    http_kinds = [a for a in ("plaintext", "daonet") if a in approaches]
    result_approaches: dict[str, dict[str, Any]] = {}
    bundle_info: dict[str, Any] = {}
    if http_kinds:
        trained = False
        if bundle_dir is None:
            from ..studies.demo import DEFAULT_CACHE, ensure_bundles

            bundle, trained = ensure_bundles(DEFAULT_CACHE, progress=progress)
        else:
            bundle = Path(bundle_dir)
        bundle = bundle.parent if bundle.name in ("device", "server") else bundle
        run = Path(run_dir) if run_dir is not None else bundle.parent / "run"
        for p, what in ((bundle / "device" / "manifest.json", "device bundle"),
                        (bundle / "server", "server bundle"), (run / "model.safetensors", "training run")):
            if not p.exists():
                raise InputError(f"{p} is missing: the {what} is needed (pass a bundle made by `daonet export` and "
                                 "the run directory it was exported from)")
        bundle_info = {"bundle_dir": str(bundle), "run_dir": str(run), "trained_now": trained}
        result_approaches.update(_http_approaches(http_kinds, raw, y, bundle, run, repeats, seed, torch_threads,
                                                  device_threads, progress, float(rtt_ms) / 1000.0))
        if "plaintext" in result_approaches:
            result_approaches["plaintext"]["reference_accuracy"] = _reference_plaintext(run, ds)
            result_approaches["plaintext"]["model"] = "the daonet run's whole network on the server, dropping off"
        if "daonet" in result_approaches:
            result_approaches["daonet"]["reference_accuracy"] = _reference_daonet(run)
            d = result_approaches["daonet"]
            d["model"] = f"the same network, first layer ({d['n_outputs']} outputs) on the device, p={d['drop_rate']}"
    if "he" in approaches:
        result_approaches["he"] = _he_approach(n, ds, progress, dict(he_options or {}))
    ordered = {k: result_approaches[k] for k in APPROACHES if k in result_approaches}

    import torch

    return {
        "benchmark": "daonet vs homomorphic encryption vs plaintext",
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "dataset": dataset,
        "n_images": n,
        "images": f"the first {n} images of the MNIST test split (real data), the same for every approach",
        "raw_input_bytes": raw_bytes,
        "raw_input_what": "784 uint8 pixels, as a device holds an MNIST image",
        "repeats": repeats,
        "emulated_rtt_ms": float(rtt_ms),
        "labels": [int(v) for v in y],
        "approaches": ordered,
        "ratios": _ratios(ordered, raw_bytes),
        "secure_computation": SECURE_COMPUTATION,
        "bundle": bundle_info,
        "environment": {
            "cpus": os.cpu_count(), "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg()),
            "server_torch_threads": torch_threads, "device_blas_threads": device_threads,
            "python": platform.python_version(), "torch": torch.__version__,
            "tenseal": getattr(he.ts, "__version__", None) if he.ts is not None else None,
            "platform": platform.platform(),
            "noise": "wall-clock timings on a shared machine: other jobs compete for the same cores, so single "
                     "numbers are noisy; the HTTP approaches are interleaved image by image so that load hits both",
        },
        "seconds": time.perf_counter() - t_start,
    }


# -- the report ------------------------------------------------------------------------------------------------
def _fmt_s(v: float | None) -> str:
    if v is None:
        return "—"
    if v < 1e-3:
        return f"{v * 1e6:.0f} µs"
    if v < 1:
        return f"{v * 1e3:.2f} ms"
    return f"{v:.2f} s"


def _fmt_b(v: float | None) -> str:
    if v is None:
        return "—"
    if v < 1e3:
        return f"{v:.0f} B"
    if v < 1e6:
        return f"{v / 1e3:.1f} kB"
    return f"{v / 1e6:.1f} MB"


def _fmt_x(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.3g}x" if v < 1000 else f"{v:,.0f}x"


def _rows(result: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(column names, [(metric, one cell per approach)]): shared by the rich table and the markdown."""
    aps = result["approaches"]
    raw = result["raw_input_bytes"]
    cols = list(aps)

    def cell(k: str, fn: Callable[[dict[str, Any]], str]) -> str:
        a = aps[k]
        if not a.get("available"):
            return a.get("reason", "n/a") if fn is _first else "—"
        try:
            return fn(a)
        except (KeyError, TypeError):
            return "—"

    def breakdown(a: dict[str, Any]) -> str:
        b = a["latency_breakdown_s"]
        parts = [f"{SHORT.get(name, name)} {_fmt_s(v['p50'] if isinstance(v, dict) else v)}"
                 for name, v in b.items() if name != "key_generation_one_time"]
        text = " + ".join(parts)
        if "key_generation_one_time" in b:
            text += f"; keygen {_fmt_s(b['key_generation_one_time'])} once"
        return text

    def ref(a: dict[str, Any]) -> str:
        r = a.get("reference_accuracy")
        return f"{r['value']:.4f}" if r else "—"

    def mem(key: str) -> Callable[[dict[str, Any]], str]:
        return lambda a: _fmt_b(a["memory"][key])

    n = result["n_images"]
    metrics: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        (f"accuracy on the {n} images", _first),
        ("reference accuracy, full test split", ref),
        ("latency p50 / p99 per sample", lambda a: f"{_fmt_s(a['latency_s']['p50'])} / "
                                                  f"{_fmt_s(a['latency_s']['p99'])}"),
        ("latency breakdown (p50)", breakdown),
        (f"bytes up per sample (raw input {raw} B)", lambda a: f"{_fmt_b(a['bytes_up_per_sample'])} "
                                                           f"({_fmt_x(a['bytes_up_per_sample'] / raw)} raw)"),
        ("bytes down per sample", lambda a: f"{_fmt_b(a['bytes_down_per_sample'])} "
                                            f"({_fmt_x(a['bytes_down_per_sample'] / raw)} raw)"),
        ("one-time set-up bytes", lambda a: _fmt_b(a["setup_bytes"])),
        ("device compute p50 per sample", lambda a: _fmt_s(a["device_compute_s"]["p50"])),
        ("device peak memory per sample / set-up", lambda a: f"{_fmt_b(a['memory']['device_peak_bytes'])} / "
                                                             f"{_fmt_b(a['memory']['device_setup_peak_bytes'])}"),
        ("server peak memory per request / set-up", lambda a: f"{_fmt_b(a['memory']['server_peak_bytes'])} / "
                                                              f"{_fmt_b(a['memory']['server_setup_peak_bytes'])}"),
        ("server process resident memory", mem("server_process_rss_bytes")),
    ]
    return [LABELS[k] for k in cols], [(name, [cell(k, fn) for k in cols]) for name, fn in metrics]


def _first(a: dict[str, Any]) -> str:
    """The accuracy cell (also the one that carries an unavailable approach's reason)."""
    extra = ""
    if "agreement_with_plaintext_square_model" in a:
        extra = f" (same class as the plaintext x*x model: {a['agreement_with_plaintext_square_model']:.0%})"
    return f"{a['accuracy']:.4f}{extra}"


def ratio_lines(result: dict[str, Any]) -> list[str]:
    r = result["ratios"]
    lines = [
        f"daonet / plaintext latency: p50 {_fmt_x(r['daonet_over_plaintext_latency_p50'])}, "
        f"p99 {_fmt_x(r['daonet_over_plaintext_latency_p99'])}",
        f"HE / daonet latency: p50 {_fmt_x(r['he_over_daonet_latency_p50'])}, "
        f"p99 {_fmt_x(r['he_over_daonet_latency_p99'])}",
        "bytes up / raw input: " + ", ".join(f"{LABELS[k]} {_fmt_x(v)}"
                                             for k, v in r["bytes_up_over_raw_input"].items()),
        "bytes down / raw input: " + ", ".join(f"{LABELS[k]} {_fmt_x(v)}"
                                               for k, v in r["bytes_down_over_raw_input"].items()),
    ]
    return lines


def render_table(result: dict[str, Any]) -> Any:
    """A rich Table: metrics as rows, approaches as columns (reads on an 80-120 column terminal)."""
    from rich.table import Table

    cols, rows = _rows(result)
    table = Table(title=f"daonet vs encryption on {result['n_images']} MNIST test images (one run, this machine)")
    table.add_column("metric", style="bold")
    for c in cols:
        table.add_column(c, overflow="fold")
    for name, cells in rows:
        table.add_row(name, *cells)
    return table


def _notes(result: dict[str, Any]) -> list[str]:
    env = result["environment"]
    aps = result["approaches"]
    notes = [
        f"Command: `{result['command']}`; {result['n_images']} images, the HTTP approaches timed over "
        f"{result['repeats']} passes (device side on {env.get('device_blas_threads') or 'default'} BLAS "
        f"thread(s), each server on {env['server_torch_threads']} torch thread(s)), {env['cpus']} CPUs, load "
        f"average {env['loadavg_start'][0]:.1f} at start and {env['loadavg_end'][0]:.1f} at the end. {env['noise']}.",
    ]
    for k, a in aps.items():
        if a.get("available"):
            notes.append(f"{LABELS[k]}: {a.get('model', '')}; latency = {a['latency_what']}; set-up = "
                         f"{a['setup_what']}; device compute = {a['device_compute_what']}.")
    mem = next((a["memory"]["method"] for a in aps.values() if a.get("available")), "")
    if mem:
        notes.append(f"Memory: {mem}. Bytes are bodies; HTTP/1.1 headers add about "
                     + ", ".join(f"{a['http_header_bytes_up_per_sample']:.0f} B up / "
                                 f"{a['http_header_bytes_down_per_sample']:.0f} B down ({LABELS[k]})"
                                 for k, a in aps.items() if "http_header_bytes_up_per_sample" in a) + ".")
    notes.append(f"Secure computation: {result['secure_computation']['reason']}")
    return notes


def to_markdown(result: dict[str, Any]) -> str:
    cols, rows = _rows(result)
    lines = ["| metric | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += ["| " + name + " | " + " | ".join(c.replace("|", "/") for c in cells) + " |" for name, cells in rows]
    lines += ["", *[f"- {line}" for line in ratio_lines(result)]]
    for note in _notes(result):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Bar chart, log scale: latency (p50 bar, p99 tick), bytes up, bytes down, set-up bytes per approach."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aps = result["approaches"]
    names = list(aps)
    colors = {"plaintext": "#7f7f7f", "daonet": "#2a9d8f", "he": "#e76f51"}
    panels = [
        ("latency per sample (p50 bar, p99 tick)", "seconds", lambda a: a["latency_s"]["p50"], _fmt_s),
        ("bytes up per sample", "bytes", lambda a: a["bytes_up_per_sample"], _fmt_b),
        ("bytes down per sample", "bytes", lambda a: a["bytes_down_per_sample"], _fmt_b),
        ("one-time set-up bytes", "bytes", lambda a: a["setup_bytes"], _fmt_b),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(15, 4.6))
    for ax, (title, unit, get, fmt) in zip(axes, panels, strict=True):
        values = [get(aps[k]) if aps[k].get("available") else None for k in names]
        positive = [v for v in values if v]
        lo = min(positive) if positive else 1.0
        floor = lo / 10
        for i, (k, v) in enumerate(zip(names, values, strict=True)):
            if v is None:
                ax.text(i, floor * 1.5, "not\ninstalled", ha="center", va="bottom", fontsize=9, color="#555")
                continue
            ax.bar(i, v if v > 0 else floor, color=colors.get(k, "#444"), alpha=1.0 if v > 0 else 0.15)
            label_at = v if v > 0 else floor
            text = fmt(v) if v > 0 else "0 (none)"
            if title.startswith("latency"):
                p99 = aps[k]["latency_s"]["p99"]
                ax.plot([i - 0.3, i + 0.3], [p99, p99], color="black", lw=1.5)
                label_at, text = max(label_at, p99), f"{text}\np99 {fmt(p99)}"
            ax.text(i, label_at * 1.2, text, ha="center", va="bottom", fontsize=9)
        raw = result["raw_input_bytes"]
        if "bytes" in title and "set-up" not in title:
            ax.axhline(raw, color="#264653", ls="--", lw=1, label=f"raw input ({raw} B)")
            ax.legend(loc="upper left", fontsize=8, frameon=False)
        ax.set_yscale("log")
        top = max(positive + ([aps[k]["latency_s"]["p99"] for k in names if aps[k].get("available")]
                              if title.startswith("latency") else []), default=10.0)
        ax.set_ylim(floor, top * 60)
        ax.set_xticks(range(len(names)), [LABELS[k] for k in names])
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(f"{unit} (log scale)")
        ax.grid(axis="y", which="major", alpha=0.3)
    fig.suptitle(f"daonet vs homomorphic encryption vs plaintext, {result['n_images']} MNIST test images, one run "
                 f"({result['environment']['cpus']} shared CPUs: timings are noisy)", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(result: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``encryption_bench.json`` (all fields), ``.md`` (the table) and ``.png`` (the chart) to ``out``."""
    out = check_out_dir(out)
    paths = {"json": out / "encryption_bench.json", "markdown": out / "encryption_bench.md",
             "chart": out / "encryption_bench.png"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["markdown"].write_text(to_markdown(result))
    plot(result, paths["chart"])
    return paths
