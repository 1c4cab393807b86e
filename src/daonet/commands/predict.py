"""``daonet predict``: run the first layer here, send only the dropped activations, print the answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ..errors import DaonetError
from .common import fail
from .common import stdout as out


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
    public_key: Annotated[list[Path] | None, typer.Option(
        help="use the device bundle only if this Ed25519 key (OUT.pub from `daonet keygen`) signed it")] = None,
) -> None:
    """Run the first layer here, send only the dropped activations, print the server's prediction."""
    from ..device import Client, DeviceModel

    try:
        device = DeviceModel.load(bundle, public_keys=list(public_key or []))
        client = Client(server, device, api_key=api_key, verify=cacert if cacert is not None else True)
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
