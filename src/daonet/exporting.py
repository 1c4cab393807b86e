"""Split a trained model into a device bundle (first layer, or the localized block) and a server bundle (the rest).

:func:`export_model` writes both halves of a :class:`~daonet.nn.SplitModel` and :func:`export_run` does it for a
``daonet train`` run directory; ``daonet.export`` (:func:`daonet.convert.export`) is the library call for any
split model. All three check their options with :func:`check_options`, one validation path.
"""

from __future__ import annotations

import math
import numbers
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .bundle import content_version, seal_bundle, write_manifest, write_weights
from .data import dataset_label
from .errors import DaonetError, InputError
from .manifest import (
    ArchSpec,
    DeviceManifest,
    DropSpec,
    InputSpec,
    LayerSpec,
    NoiseSpec,
    Normalization,
    PrivacySpec,
    ServerManifest,
    WireSpec,
)
from .nn import SplitModel
from .train import load_run

DEVICE_WEIGHTS = "first_layer.safetensors"
SERVER_WEIGHTS = "server_part.safetensors"
VALUE_DTYPES = ("float32", "float16")
RAW_DTYPES = ("float32", "uint8")


def check_classes(classes: Any) -> list[str]:
    """``classes`` as a list of two or more distinct names, or an :class:`InputError` that says how to pass it."""
    if classes is None:
        raise InputError("classes is missing: pass classes=[...] with one name per model output, in output order "
                         "(e.g. classes=['normal', 'abnormal'])")
    if isinstance(classes, str | bytes) or not hasattr(classes, "__iter__"):
        raise InputError(f"classes must be a list of class names (one per model output), got "
                         f"{type(classes).__name__} {classes!r:.60}")
    names = list(classes)
    if len(names) < 2 or not all(isinstance(c, str) and c for c in names):
        raise InputError(f"classes must hold two or more non-empty strings, one per model output; got {names!r:.120}")
    if len(set(names)) != len(names):
        dup = next(c for c in names if names.count(c) > 1)
        raise InputError(f"classes names {dup!r} twice; every class needs its own name")
    return names


def check_options(*, value_dtype: str = "float32", raw_dtype: str = "float32",
                  max_revealed_energy: float | None = None) -> None:
    """Check the options every export path takes (the library call, a run directory, the CLI).

    Raises:
        InputError: what is wrong and how to fix it (e.g. a ``value_dtype`` the wire lacks).
    """
    if value_dtype not in VALUE_DTYPES:
        raise InputError(f"value_dtype (--value-dtype) must be float32 or float16, got {value_dtype!r}")
    if raw_dtype not in RAW_DTYPES:
        raise InputError(f"raw_dtype must be float32 or uint8 (pixels the model sees /255), got {raw_dtype!r}")
    if max_revealed_energy is not None and not (isinstance(max_revealed_energy, numbers.Real)
                                                and 0.0 <= max_revealed_energy <= 1.0):
        raise InputError(f"max_revealed_energy (--max-revealed-energy) must be in [0, 1] or None, got "
                         f"{max_revealed_energy!r}")


def _normalization_per(mean: list[float] | None, in_shape: tuple[int, ...]) -> Literal["channel", "feature"]:
    """``feature`` when the layer holds one mean per input value (and the input has more values than channels)."""
    return "feature" if mean is not None and len(mean) == math.prod(in_shape) != in_shape[0] else "channel"


def export_model(
    model: SplitModel,
    out: str | Path,
    *,
    model_id: str,
    classes: list[str],
    raw_dtype: str = "float32",
    value_dtype: str = "float32",
    privacy: PrivacySpec | dict[str, Any] | None = None,
    extra_device_files: dict[str, np.ndarray] | None = None,
    server_writer: Callable[[Path], tuple[str, str]] | None = None,
    sign_key: str | Path | None = None,
) -> tuple[Path, Path]:
    """Split a model into ``out/device`` (first layer) and ``out/server`` (the rest), replacing both.

    Args:
        model: the trained split model.
        out: the bundle root to write.
        model_id: the id the server serves it under.
        classes: class names, in output order.
        raw_dtype: how the device holds raw inputs (``uint8`` pixels get the range [0, 1]).
        value_dtype: ``float32`` or ``float16`` for the values on the wire.
        privacy: the device policy stored in the manifest (default: no energy bound); a dict is validated.
        extra_device_files: more float32 tensors for the device bundle (e.g. ``public_mean``).
        server_writer: ``server_writer(directory) -> (file name, sha256)`` writes the server part in another
            form than a state dict (``daonet.export`` saves any architecture as a torch.export program).
        sign_key: an Ed25519 ``.key`` file (``daonet keygen``): the bundle is signed, so devices and servers
            given the ``.pub`` refuse any other first layer.
    Returns:
        ``(out/device, out/server)``.
    Raises:
        InputError: bad options (see :func:`check_options`); DaonetError: a policy the model cannot take;
            ManifestError if the model's geometry cannot be described.
    """
    if not isinstance(privacy, PrivacySpec):
        privacy = PrivacySpec.from_json(privacy or {}, "privacy")
    classes = check_classes(classes)
    check_options(value_dtype=value_dtype, raw_dtype=raw_dtype, max_revealed_energy=privacy.max_revealed_energy)
    out = Path(out)
    first = model.first
    arch = dict(model.arch)
    if not first.is_linear and privacy.max_revealed_energy is not None:
        raise DaonetError("--max-revealed-energy needs the paper's single linear first layer: this model runs a "
                          "non-linear device block, which the revealed energy does not describe (it is covered "
                          "by the audit only); export without it")
    noise = first.noise_spec() if (first.noise_std or first.ldp is not None) else None
    wire_version: Literal[1, 2] = 2 if first.ldp is not None else 1  # the Gaussian mechanism sends signed values
    if first.ldp is not None and (value_dtype == "float16" or privacy.max_revealed_energy is not None):
        raise DaonetError("a model with the Gaussian mechanism (ldp_*) exports with float32 values and without "
                          "--max-revealed-energy (an input-dependent drop would void its (epsilon, delta) bound)")
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
        layer = LayerSpec.from_json(first.spec(), "first layer")
        drop = DropSpec(rate=first.drop_rate)
        input_spec = InputSpec(shape=tuple(first.in_shape), raw_dtype="uint8" if raw_dtype == "uint8" else "float32",
                               range=(0.0, 1.0) if raw_dtype == "uint8" else None)
        common: dict[str, Any] = {"model_id": model_id, "version": version, "classes": tuple(classes)}
        mean, std = arch.get("mean"), arch.get("std")
        write_manifest(dev_dir, DeviceManifest(
            **common, files={DEVICE_WEIGHTS: dev_hash}, input=input_spec,
            normalization=Normalization(mean=None if mean is None else tuple(mean),
                                        std=None if std is None else tuple(std),
                                        per=_normalization_per(mean, tuple(first.in_shape))),
            layer=layer, drop=drop, wire=WireSpec(version=wire_version,
                                                  value_dtype="float16" if value_dtype == "float16" else "float32"),
            privacy=privacy, noise=NoiseSpec.from_json(noise, "noise") if noise else None,
        ).validated())
        write_manifest(srv_dir, ServerManifest(
            **common, files={srv_name: srv_hash}, arch=ArchSpec.from_json(arch, "arch"),
            first_layer=layer, drop=drop, device_input=input_spec, wire=WireSpec(version=wire_version),
        ).validated())
        seal_bundle(staging, sign_key)  # version from both halves' content (+ signature)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("device", "server"):  # replace atomically-ish: never leave a half bundle
            target = out / name
            if target.exists():
                shutil.rmtree(target)
            (staging / name).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "device", out / "server"


def export_run(run_dir: str | Path, out: str | Path, *, model_id: str | None = None,
               value_dtype: str = "float32", max_revealed_energy: float | None = None,
               sign_key: str | Path | None = None) -> tuple[Path, Path]:
    """Export a run directory written by ``daonet train`` (see :func:`export_model`).

    Args:
        run_dir: the run directory.
        out: the bundle root to write.
        model_id: default ``DATASET-MODEL``.
        value_dtype: ``float32`` or ``float16`` on the wire.
        max_revealed_energy: the device policy's bound on revealed energy, in [0, 1] (``None``: off).
        sign_key: an Ed25519 ``.key`` file to sign the bundle with (``daonet keygen``).
    Returns:
        ``(out/device, out/server)``.
    Raises:
        DaonetError: not a run directory, or bad options.
    """
    run_dir = Path(run_dir)
    check_options(value_dtype=value_dtype, max_revealed_energy=max_revealed_energy)  # before loading the run
    model, config = load_run(run_dir)
    train_cfg = config.get("train", {})
    mid = model_id or f"{dataset_label(train_cfg.get('dataset', 'data'))}-{train_cfg.get('model', 'model')}"
    mean_path = run_dir / "public_mean.npy"
    extra = {"public_mean": np.load(mean_path)} if mean_path.exists() else None
    return export_model(model, out, model_id=mid, classes=config.get("classes", []),
                        raw_dtype=config.get("raw_dtype", "float32"), value_dtype=value_dtype,
                        privacy=PrivacySpec(max_revealed_energy=max_revealed_energy), extra_device_files=extra,
                        sign_key=sign_key)
