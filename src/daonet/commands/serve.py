"""``daonet serve``, ``daonet predict`` and ``daonet hash-key``: the server and the device over HTTP."""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console

from ..cli import app, console, fail
from ..errors import DaonetError

out = Console()  # results go to stdout, messages to stderr (cli.console)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    bundle_dir: Annotated[list[Path], typer.Argument(help="server bundle directories (bundles/NAME/server); "
                                                          "several serve several models")],
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    api_key_hash: Annotated[list[str] | None, typer.Option(
        help="require an API key: its hash from `daonet hash-key` (repeatable)", envvar="DAONET_API_KEY_HASH")] = None,
    api_key_hash_file: Annotated[Path | None, typer.Option(help="file with one API key hash per line")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM)")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    max_batch_size: Annotated[int, typer.Option(min=1, help="most requests per forward pass")] = 64,
    max_wait_ms: Annotated[float, typer.Option(min=0, help="longest wait to fill a batch (only under load)")] = 2.0,
    max_body_bytes: Annotated[int, typer.Option(min=64, help="larger request bodies get 413")] = 1 << 20,
    torch_threads: Annotated[int | None, typer.Option(min=1, help="torch intra-op threads (default: torch's)")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    web: Annotated[bool, typer.Option("--web", help="also serve the web page at / (the first layer runs in the "
                                                    "browser) and the device bundles at /device-bundles/")] = False,
    ray: Annotated[bool, typer.Option("--ray", help="run on Ray Serve: same API on replicas (docs/ray.md); "
                                      "needs daonet\\[ray]", rich_help_panel="Ray Serve")] = False,
    replicas: Annotated[int, typer.Option(min=1, help="replicas (initial count when autoscaling)",
                                          rich_help_panel="Ray Serve")] = 1,
    ray_address: Annotated[str | None, typer.Option(help="join this Ray cluster ('auto', 'ray://HOST:10001'); "
                                                    "default: a new local instance", rich_help_panel="Ray Serve")
                           ] = None,
    min_replicas: Annotated[int | None, typer.Option(min=0, help="autoscaling: fewest replicas",
                                                     rich_help_panel="Ray Serve")] = None,
    max_replicas: Annotated[int | None, typer.Option(min=1, help="autoscaling: most replicas",
                                                     rich_help_panel="Ray Serve")] = None,
    target_ongoing_requests: Annotated[float | None, typer.Option(
        help="autoscaling: requests in flight per replica to aim for", rich_help_panel="Ray Serve")] = None,
    replica_cpus: Annotated[float, typer.Option(min=0, help="Ray CPUs reserved per replica",
                                                rich_help_panel="Ray Serve")] = 1.0,
) -> None:
    """Serve server bundles over HTTP: predictions from sparse dropped activations, never raw inputs."""
    from ..server.app import serve as run_server
    from ..server.config import ServerConfig

    hashes = list(api_key_hash or [])
    try:
        if api_key_hash_file is not None:
            hashes += ServerConfig.read_hash_file(api_key_hash_file)
        config = ServerConfig(bundles=list(bundle_dir), host=host, port=port, max_body_bytes=max_body_bytes,
                              max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, api_key_hashes=hashes,
                              ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, torch_threads=torch_threads,
                              log_level=log_level, web=web).validate()
    except DaonetError as exc:
        fail(str(exc))
    if not _is_loopback(host):
        if not config.tls:
            console.print("[yellow]warning:[/] listening beyond loopback without TLS: payloads and API keys travel "
                          "in clear text (pass --ssl-certfile/--ssl-keyfile)")
        if not hashes:
            console.print("[yellow]warning:[/] no API key required (pass --api-key-hash from `daonet hash-key`)")
    ray_only = {"--replicas": replicas != 1, "--ray-address": ray_address is not None,
                "--min-replicas": min_replicas is not None, "--max-replicas": max_replicas is not None,
                "--target-ongoing-requests": target_ongoing_requests is not None, "--replica-cpus": replica_cpus != 1.0}
    if not ray and any(ray_only.values()):
        fail(f"{', '.join(k for k, v in ray_only.items() if v)} only apply with --ray")
    if ray:
        _serve_on_ray(config, replicas, ray_address, min_replicas, max_replicas, target_ongoing_requests,
                      replica_cpus)
        return
    run_server(config)


def _serve_on_ray(config: Any, replicas: int, address: str | None, min_replicas: int | None,
                  max_replicas: int | None, target: float | None, replica_cpus: float) -> None:
    try:
        from ..server.ray_serve import RayOptions, serve_on_ray
    except ImportError as exc:
        fail(f"--ray needs Ray Serve: pip install 'daonet[ray]' ({exc})")
    try:
        options = RayOptions(replicas=replicas, address=address, min_replicas=min_replicas, max_replicas=max_replicas,
                             target_ongoing_requests=target, replica_cpus=replica_cpus).validate()
    except DaonetError as exc:
        fail(str(exc))
    serve_on_ray(config, options)


# -- reading inputs ------------------------------------------------------------------------------------------
def _read_png(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if len(shape) != 3:
        raise DaonetError(f"{path}: this model takes signals shaped {shape}, not images; pass .npy or .csv")
    channels, height, width = shape
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise DaonetError(f"{path}: this model takes {channels}-channel images; a PNG holds 1 or 3 (pass .npy)")
    try:
        with Image.open(path) as img:
            if img.size != (width, height):
                raise DaonetError(f"{path} is {img.size[0]}x{img.size[1]} pixels; this model takes {width}x{height}. "
                                  "Resize or crop it first (daonet does not resize: it would change what you send)")
            arr = np.asarray(img.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DaonetError(f"{path} is not a readable image: {exc}") from exc
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)[None]


def _read_csv(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise DaonetError(f"{path}: not a numeric comma-separated file without a header ({exc})") from exc
    size = int(np.prod(shape))
    if table.size == size:  # one input: a row, a column, or one row per channel
        return table.reshape((1, *shape))
    if table.shape[1] == size:  # one input per row
        return table.reshape((table.shape[0], *shape))
    raise DaonetError(f"{path} holds a {table.shape[0]}x{table.shape[1]} table; this model takes inputs of "
                      f"{size} values {shape}: one per row, or one input as {shape[0]} row(s) of {size // shape[0]}")


def read_inputs(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """One file -> ``(N, ...)`` inputs (uint8 for PNG pixels, as stored otherwise); refuses wrong sizes."""
    if not path.is_file():
        raise DaonetError(f"input file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DaonetError(f"{path} is not a readable .npy array: {exc}") from exc
        size = int(np.prod(shape))
        if arr.size == size:
            return arr.reshape((1, *shape))
        return arr
    if suffix == ".png":
        return _read_png(path, shape)
    if suffix == ".csv":
        return _read_csv(path, shape)
    raise DaonetError(f"{path}: unsupported input type {suffix or '(none)'}; pass .npy, .png or .csv")


def _payload_lines(pred: Any, url: str) -> list[str]:
    from ..wire import WIRE_VERSION, read_frame

    data = pred.payload.data
    f = read_frame(data)
    head = data[:64].hex(" ")
    return [
        f"  sent {len(data)} bytes to {url}: wire v{WIRE_VERSION}, {f.nnz} of {f.n_outputs} outputs non-zero "
        f"({'uint16' if f.index_width == 2 else 'uint32'} indices, "
        f"{'float16' if f.value_width == 2 else 'float32'} values), model version {f.model_version}",
        f"  bytes (hex, first {min(64, len(data))} of {len(data)}): {head}{' ...' if len(data) > 64 else ''}",
        f"  decoded: {pred.payload.describe()}",
        "  nothing else was sent: no raw input, no mask, no key",
    ]


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help=".npy, .png (images) or .csv (signals) files")],
    server: Annotated[str, typer.Option(help="server URL, e.g. http://127.0.0.1:8000")] = "http://127.0.0.1:8000",
    bundle: Annotated[Path, typer.Option(help="the device bundle (bundles/NAME/device)")] = Path(
        "bundles/mnist/device"),
    api_key: Annotated[str | None, typer.Option(help="API key (prefer the env var)", envvar="DAONET_API_KEY")] = None,
    cacert: Annotated[Path | None, typer.Option(help="CA certificate to trust (self-signed TLS servers)")] = None,
    show_payload: Annotated[bool, typer.Option(help="print exactly what was sent for each input")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object per input")] = False,
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight at once")] = 8,
) -> None:
    """Run the first layer here, send only the dropped activations, print the server's prediction."""
    from ..device import Client

    try:
        client = Client(server, bundle, api_key=api_key, verify=cacert if cacert is not None else True)
        with client:
            batches = [(p, read_inputs(p, client.device.input_shape)) for p in inputs]
            names, arrays = [], []
            for path, arr in batches:
                xb = client.device.validate(arr)  # clear shape/range errors before anything is sent
                arrays.append(xb)
                names += [str(path)] if len(xb) == 1 else [f"{path}[{i}]" for i in range(len(xb))]
            preds = client.predict_many(np.concatenate(arrays), concurrency=concurrency)
    except DaonetError as exc:
        fail(str(exc))
    url = f"{client.url}{client.predict_path}"
    classes = client.device.classes
    for name, pred in zip(names, preds, strict=True):
        if as_json:
            obj = {"input": name, "label": pred.label, "index": pred.index,
                   "probabilities": [round(float(p), 6) for p in pred.probabilities],
                   "payload_bytes": pred.payload_bytes, "nnz": pred.nnz, "n_outputs": pred.n_outputs}
            if show_payload:
                obj["payload_hex"] = pred.payload.data.hex()
            print(json.dumps(obj))
            continue
        probs = ", ".join(f"{classes[i] if i < len(classes) else i}: {p:.3f}"
                          for i, p in enumerate(pred.probabilities))
        out.print(f"{name}: [bold]{pred.label}[/] (index {pred.index}, p={pred.probabilities[pred.index]:.3f})",
                  highlight=False)
        out.print(f"  probabilities: {probs}", highlight=False)
        if show_payload:
            for line in _payload_lines(pred, url):
                out.print(line, highlight=False, soft_wrap=True)


@app.command("hash-key")
def hash_key(
    stdin: Annotated[bool, typer.Option("--stdin", help="hash a key read from stdin, do not generate one")] = False,
    scheme: Annotated[str | None, typer.Option(help="sha256 (generated keys) or pbkdf2 (chosen keys); "
                                                     "default: sha256 when generating, pbkdf2 for --stdin")] = None,
) -> None:
    """Make an API key hash for `daonet serve --api-key-hash`. The server stores only the hash."""
    from ..server.config import generate_api_key, hash_api_key

    scheme = scheme or ("pbkdf2" if stdin else "sha256")
    key = sys.stdin.readline().rstrip("\r\n") if stdin else generate_api_key()
    try:
        digest = hash_api_key(key, scheme)
    except DaonetError as exc:
        fail(str(exc))
    if not stdin:
        out.print(f"key:  {key}   (give it to the client, e.g. DAONET_API_KEY; it is not stored anywhere)",
                  highlight=False, soft_wrap=True)
    out.print(f"hash: {digest}", highlight=False, soft_wrap=True)
    if not stdin:
        console.print("serve with: daonet serve BUNDLE --api-key-hash 'HASH'  (or DAONET_API_KEY_HASH)")
