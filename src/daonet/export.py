"""Split a trained run into a device bundle (first layer, or the localized block) and a server bundle (the rest)."""

from __future__ import annotations

import shutil
import sys
import tempfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import (
    DEVICE_FORMAT,
    FORMAT_VERSION,
    SERVER_FORMAT,
    content_version,
    write_manifest,
    write_weights,
)
from .data import dataset_label
from .errors import DaonetError
from .nn import SplitModel
from .train import load_run
from .wire import WIRE_VERSION

DEVICE_WEIGHTS = "first_layer.safetensors"
SERVER_WEIGHTS = "server_part.safetensors"


def export_model(
    model: SplitModel,
    out: str | Path,
    *,
    model_id: str,
    classes: list[str],
    raw_dtype: str = "float32",
    value_dtype: str = "float32",
    privacy: dict[str, Any] | None = None,
    extra_device_files: dict[str, np.ndarray] | None = None,
    server_writer: Callable[[Path], tuple[str, str]] | None = None,
) -> tuple[Path, Path]:
    """Write ``out/device`` and ``out/server``; returns both paths.

    ``server_writer(directory) -> (file name, sha256)`` writes the server part in another form than a state
    dict (``daonet.convert.export`` saves any architecture as a torch.export program this way).
    """
    out = Path(out)
    first = model.first
    arch = dict(model.arch)
    if not first.is_linear and (privacy or {}).get("max_revealed_energy") is not None:
        raise DaonetError("--max-revealed-energy needs the paper's single linear first layer: this model runs a "
                          "non-linear device block, which the revealed energy does not describe (it is covered "
                          "by the audit only); export without it")
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent if out.parent.exists() else None))
    try:
        dev_dir, srv_dir = staging / "device", staging / "server"
        dev_dir.mkdir()
        srv_dir.mkdir()
        dev_tensors = {
            "weight": first.weight.detach().cpu().numpy().astype(np.float32),
            "bias": first.bias.detach().cpu().numpy().astype(np.float32),
        }
        dev_tensors.update({k: v.detach().cpu().numpy().astype(np.float32) for k, v in first.block_tensors().items()})
        if extra_device_files:
            dev_tensors.update({k: np.asarray(v, dtype=np.float32) for k, v in extra_device_files.items()})
        dev_hash = write_weights(dev_dir / DEVICE_WEIGHTS, dev_tensors)
        if server_writer is None:
            srv_tensors = {k: v.detach().cpu().numpy() for k, v in model.rest.state_dict().items()}
            srv_name, srv_hash = SERVER_WEIGHTS, write_weights(srv_dir / SERVER_WEIGHTS, srv_tensors)
        else:
            srv_name, srv_hash = server_writer(srv_dir)
        version = content_version(dev_hash, srv_hash, config=arch)
        spec = first.spec()
        drop = {"policy": "bernoulli", "rate": first.drop_rate, "rescale": False}
        input_spec = {"shape": list(first.in_shape), "dtype": "float32", "raw_dtype": raw_dtype,
                      "range": [0.0, 1.0] if raw_dtype == "uint8" else None}
        common = {"format_version": FORMAT_VERSION, "model_id": model_id, "version": version,
                  "classes": list(classes)}
        write_manifest(dev_dir, {
            **common, "format": DEVICE_FORMAT,
            "input": input_spec,
            "normalization": {"mean": arch.get("mean"), "std": arch.get("std")},
            "layer": spec, "drop": drop,
            "wire": {"version": WIRE_VERSION, "value_dtype": value_dtype},
            "privacy": privacy or {"max_revealed_energy": None},
            **({"noise": first.noise_spec()} if first.noise_std else {}),
            "files": {DEVICE_WEIGHTS: dev_hash},
        })
        write_manifest(srv_dir, {
            **common, "format": SERVER_FORMAT,
            "arch": arch, "first_layer": spec, "drop": drop, "device_input": input_spec,
            "wire": {"version": WIRE_VERSION},
            "files": {srv_name: srv_hash},
        })
        out.mkdir(parents=True, exist_ok=True)
        for name in ("device", "server"):  # replace atomically-ish: never leave a half bundle
            target = out / name
            if target.exists():
                shutil.rmtree(target)
            (staging / name).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "device", out / "server"


def export_run(run_dir: str | Path, out: str | Path, model_id: str | None = None,
               value_dtype: str = "float32", max_revealed_energy: float | None = None) -> tuple[Path, Path]:
    """Export a run directory written by ``daonet train``."""
    run_dir = Path(run_dir)
    model, config = load_run(run_dir)
    train_cfg = config.get("train", {})
    if value_dtype not in ("float32", "float16"):
        raise DaonetError(f"--value-dtype must be float32 or float16, got {value_dtype!r}")
    mid = model_id or f"{dataset_label(train_cfg.get('dataset', 'data'))}-{train_cfg.get('model', 'model')}"
    if max_revealed_energy is not None and not 0.0 <= max_revealed_energy <= 1.0:
        raise DaonetError(f"--max-revealed-energy must be in [0, 1], got {max_revealed_energy}")
    mean_path = run_dir / "public_mean.npy"
    extra = {"public_mean": np.load(mean_path)} if mean_path.exists() else None
    return export_model(model, out, model_id=mid, classes=config.get("classes", []),
                        raw_dtype=config.get("raw_dtype", "float32"), value_dtype=value_dtype,
                        privacy={"max_revealed_energy": max_revealed_energy}, extra_device_files=extra)


class _CallableModule(types.ModuleType):
    """``daonet.export(model, out_dir, ...)``: the module is also the library call (see daonet.convert.export)."""

    def __call__(self, model: Any, out_dir: str | Path, **kwargs: Any) -> tuple[Path, Path]:
        from .convert import export

        return export(model, out_dir, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
