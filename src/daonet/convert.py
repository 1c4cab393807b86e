"""Bring your own PyTorch model: one call moves its first layer onto the device, one call exports it.

``split(model, drop_rate=p, example_input=x)`` finds the first operation the model runs on its input
(an ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d``, anywhere: in an ``nn.Sequential`` or a named attribute
such as torchvision's ``conv1``), checks that ReLU follows it (a BatchNorm in between is folded into the
layer's weights), and replaces it in place with a :class:`~daonet.nn.LocalizedFirstLayer` that keeps the
weights and drops outputs at rate ``p``. The model then trains in the user's own loop: dropping is active
in training and at inference, as on the device.

``export(model, out_dir, ...)`` writes the same device/server bundles as ``daonet export`` for any
architecture. The device half is the usual first-layer bundle. The server half is the rest of the network
as a **torch.export program** (``server_program.pt2``, listed with its SHA-256 in the manifest, arch name
``torch.export``): the server loads it with ``torch.export.load`` and needs none of the user's code.

See docs/design.md for why the first layer must be followed by ReLU (dropped zeros and ReLU zeros must look
alike) and why padding is refused (the device runtimes compute valid convolutions only).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .bundle import sha256_file
from .errors import DaonetError, InputError
from .exporting import check_classes, check_options, export_model
from .nn import LocalizedFirstLayer, SplitModel
from .preprocess import scaling_from

__all__ = ["split", "export", "first_layer", "SplitError", "ConvertedFirstLayer", "PROGRAM_ARCH", "SERVER_PROGRAM",
           "DEFENCES"]

log = logging.getLogger(__name__)
PROGRAM_ARCH = "torch.export"  # the server manifest's arch name for a server part saved as a program
SERVER_PROGRAM = "server_program.pt2"
FIRST_OPS = (nn.Linear, nn.Conv1d, nn.Conv2d)
DEFENCES = ("quantize_levels", "noise_std")
SHAPE_ONLY = (nn.Flatten, nn.Unflatten, nn.Identity)


class SplitError(DaonetError, ValueError):
    """The model cannot be split as asked (its first op, its activation, or a layer setting)."""


class ConvertedFirstLayer(LocalizedFirstLayer):
    """A :class:`LocalizedFirstLayer` standing in for a user's layer: it takes the input in whatever shape the
    original layer got (e.g. flattened for ``nn.Linear``) and returns what the original layer's ReLU returned."""

    source: str  # the user's layer it replaced, for messages

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x.reshape(x.shape[0], *self.in_shape), mask, noise)


@dataclass
class _Call:
    name: str
    module: nn.Module
    inputs: tuple[Any, ...]
    output: Any


def _describe(name: str, module: nn.Module) -> str:
    return f"{name or '<model>'} ({type(module).__name__})"


def _trace_calls(model: nn.Module, x: torch.Tensor) -> tuple[list[_Call], torch.Tensor]:
    """Run ``x`` through the model and record every leaf module call, in order (forward hooks)."""
    calls: list[_Call] = []
    hooks = []
    for name, mod in model.named_modules():
        if len(list(mod.children())) == 0:
            hooks.append(mod.register_forward_hook(
                lambda m, inp, out, name=name: calls.append(_Call(name, m, inp, out))))
    try:
        out = model(x)
    except Exception as exc:  # the user's forward: any error means the example does not fit
        raise SplitError(f"the model does not run on example_input of shape {tuple(x.shape)} ({type(exc).__name__}: "
                         f"{exc}); pass a batch the model takes, e.g. two real training inputs") from exc
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(out, torch.Tensor):
        raise SplitError(f"the model returns {type(out).__name__}, not a tensor of class scores; daonet serves "
                         "classifiers that return logits (N, n_classes)")
    return calls, out


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _check_conv(name: str, op: Any) -> None:  # an nn.Conv1d/Conv2d (checked by the caller)
    label = _describe(name, op)
    pad = op.padding if isinstance(op.padding, str) else tuple(op.padding)
    if pad not in ("valid",) and any(pad):
        raise SplitError(f"{label} uses padding={op.padding!r}; the device runtimes compute convolutions without "
                         "padding. Recreate the layer with padding=0 (the next layers see a slightly smaller map; "
                         "adaptive pooling absorbs it) and fine-tune after daonet.split")
    if any(d != 1 for d in op.dilation):
        raise SplitError(f"{label} uses dilation={op.dilation}; the device layer supports dilation 1 only")
    if op.groups != 1:
        raise SplitError(f"{label} uses groups={op.groups}; the device layer supports groups=1 only")


def _fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``bn(conv(x))`` with the running statistics as one layer: scale the weights, shift the bias."""
    if bn.running_mean is None or bn.running_var is None:
        raise SplitError("a BatchNorm after the first layer without running statistics (track_running_stats="
                         "False) cannot be folded into the device layer")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0.0)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return weight * scale.reshape(shape), bias * scale + shift


def _same_tensor(a: Any, b: Any) -> bool:
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a is b


def split(model: nn.Module, drop_rate: float, example_input: torch.Tensor | np.ndarray, *,
          preprocess: Any = None, **defences: Any) -> nn.Module:
    """Move ``model``'s first layer (+ ReLU) onto the device, with outputs dropped at ``drop_rate``.

    This is ``daonet.split``.

    Args:
        model: a PyTorch classifier whose first operation on the input is ``nn.Linear``, ``nn.Conv1d`` or
            ``nn.Conv2d`` (no padding), followed by ``nn.ReLU`` / ``F.relu`` (a BatchNorm in between is folded).
        drop_rate: probability of dropping each first-layer output, in training and at inference.
        example_input: a small batch of real inputs, shaped as the model takes them (raw inputs when
            ``preprocess`` is given).
        preprocess: the scaling the model's inputs had so far, to move into the device layer: a fitted
            scikit-learn ``StandardScaler``, a ``(mean, std)`` pair or ``{"mean": ..., "std": ...}``, one value per
            input value (dense first layers) or per channel. The split model then takes raw inputs, and so does
            the device (docs/preprocessing.md).
        **defences: ``quantize_levels=L`` (send surviving values on L levels) and ``noise_std=s`` (Gaussian
            noise on surviving values, relative to their RMS; calibrated on ``public_data`` at export).
    Returns:
        The same model object, changed in place: the first layer is now a ``LocalizedFirstLayer`` holding the
        original weights. Train it as before; then :func:`export` it.
    Raises:
        SplitError: the first operation, the activation after it, or a layer setting is not supported; the
            message says which module and what to do.
    """
    if not isinstance(model, nn.Module):
        raise SplitError(f"daonet.split takes a torch.nn.Module, got {type(model).__name__}")
    unknown = sorted(set(defences) - set(DEFENCES))
    if unknown:
        raise SplitError(f"unknown defence(s) {', '.join(unknown)}; daonet.split takes {', '.join(DEFENCES)}")
    if not 0.0 <= float(drop_rate) < 1.0:
        raise SplitError(f"drop_rate must be in [0, 1), got {drop_rate}")
    existing = [n for n, m in model.named_modules() if isinstance(m, LocalizedFirstLayer)]
    if existing:
        raise SplitError(f"the model is already split (its {existing[0] or 'root'} is a LocalizedFirstLayer)")
    x = torch.as_tensor(np.asarray(example_input) if not isinstance(example_input, torch.Tensor) else example_input)
    if not x.is_floating_point():
        x = x.float()
    if x.dim() < 2 or len(x) < 1:
        raise SplitError(f"example_input must be a batch (N, ...) of inputs, got shape {tuple(x.shape)}")
    scaled, mean, std = x, None, None
    if preprocess is not None:
        mean, std = scaling_from(preprocess, tuple(x.shape[1:]))
        shape = x.shape[1:] if len(mean) == x[0].numel() else (-1,) + (1,) * (x.dim() - 2)
        mean_t, std_t = (torch.tensor(v, dtype=x.dtype).reshape(shape) for v in (mean, std))
        scaled = (x - mean_t) / std_t  # what the model took so far; after the split it takes x
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            calls, reference = _trace_calls(model, scaled)
            first_layer = _convert(model, calls, scaled, float(drop_rate), mean, std)
            saved = first_layer.drop_rate
            first_layer.drop_rate = 0.0
            try:
                converted = model(x)
            finally:
                first_layer.drop_rate = saved
    finally:
        model.train(was_training)
    if converted.shape != reference.shape or not torch.allclose(converted, reference, rtol=1e-4, atol=1e-4):
        diff = float((converted - reference).abs().max()) if converted.shape == reference.shape else float("nan")
        raise SplitError(
            f"the model's outputs changed when {first_layer.source} moved onto the device (max difference "
            f"{diff:.3g}): the model does not apply ReLU to that layer's output (directly, or after a BatchNorm), "
            "or it also uses the output before the ReLU (e.g. in a skip connection). "
            "daonet needs Linear/Conv followed by ReLU, because the server must not tell a dropped zero from a "
            "ReLU zero; replace the activation with ReLU and fine-tune")
    if defences.get("quantize_levels"):  # after the check: the defences change the outputs on purpose
        first_layer.set_quantization(int(defences["quantize_levels"]))
    if defences.get("noise_std"):
        first_layer.set_noise(float(defences["noise_std"]))
    return model


def _convert(model: nn.Module, calls: list[_Call], x: torch.Tensor, drop_rate: float,
             mean: list[float] | None = None, std: list[float] | None = None) -> ConvertedFirstLayer:
    if not calls:
        raise SplitError(f"{type(model).__name__} runs no submodules on its input; daonet.split needs a first layer "
                         "nn.Linear, nn.Conv1d or nn.Conv2d")
    lead = 0
    while lead < len(calls) - 1 and isinstance(calls[lead].module, SHAPE_ONLY):
        lead += 1  # nn.Flatten before nn.Linear: a reshape the device layer does itself
    first = calls[lead]
    op = first.module
    if not isinstance(op, FIRST_OPS):
        raise SplitError(f"the first operation of {type(model).__name__} is {_describe(first.name, op)}; daonet.split "
                         "needs nn.Linear, nn.Conv1d or nn.Conv2d followed by ReLU as the first operation. Move "
                         "preprocessing out of the model (the device applies it before daonet), or add such a layer")
    label = _describe(first.name, op)
    if sum(c.module is op for c in calls) > 1:
        raise SplitError(f"{label} is called more than once in forward(); only a layer used once can move to "
                         "the device")
    got = first.inputs[0] if first.inputs else None
    if not isinstance(got, torch.Tensor) or got.numel() != x.numel() or not torch.equal(got.reshape(-1),
                                                                                         x.reshape(-1)):
        raise SplitError(f"forward() changes the input before {label} (it receives "
                         f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}, not the "
                         "example input's values): the device runs only the first layer, so do that "
                         "transformation in your preprocessing and pass its result to the model")
    in_shape = tuple(int(s) for s in x.shape[1:])
    if isinstance(op, nn.Linear):
        if got.dim() != 2:
            raise SplitError(f"{label} is applied to a {got.dim()}-D tensor {tuple(got.shape)} (per position); the "
                             "device layer is a dense layer on the whole (flattened) input")
        kind, out, kernel, stride = "dense", op.out_features, None, None
    else:
        _check_conv(first.name, op)
        nd = 1 if isinstance(op, nn.Conv1d) else 2
        if len(in_shape) != nd + 1:
            raise SplitError(f"{label} needs inputs shaped (N, C, {'L' if nd == 1 else 'H, W'}); example_input is "
                             f"{tuple(x.shape)}")
        kind, out, kernel, stride = f"conv{nd}d", op.out_channels, tuple(op.kernel_size), tuple(op.stride)
    weight = op.weight.detach().clone()
    bias = op.bias.detach().clone() if op.bias is not None else torch.zeros(out)
    chain = [first]
    rest = calls[lead + 1:]
    folded = None
    if rest and isinstance(rest[0].module, nn.modules.batchnorm._BatchNorm) and _same_tensor(rest[0].inputs[0],
                                                                                              first.output):
        bn = rest[0]
        if sum(c.module is bn.module for c in calls) > 1:
            raise SplitError(f"{_describe(bn.name, bn.module)} after {label} is used more than once; it cannot be "
                             "folded into the device layer")
        weight, bias = _fold_batchnorm(weight, bias, bn.module)  # type: ignore[arg-type]  # checked above
        folded, chain, rest = bn, [first, bn], rest[1:]
    after = rest[0] if rest and _same_tensor(rest[0].inputs[0] if rest[0].inputs else None, chain[-1].output) else None
    if after is not None and not isinstance(after.module, nn.ReLU | nn.Identity | nn.Dropout):
        raise SplitError(f"{label}{' + ' + _describe(folded.name, folded.module) if folded else ''} is followed by "
                         f"{_describe(after.name, after.module)}; the device layer's activation is ReLU (a dropped "
                         "zero must look like a ReLU zero). Replace it with nn.ReLU and fine-tune")
    layer = ConvertedFirstLayer(kind, in_shape, out, kernel=kernel, stride=stride, drop_rate=drop_rate, mean=mean,
                                std=std)  # the preprocessing moves in with the weights (checked before any change)
    with torch.no_grad():
        layer.op.weight.copy_(weight.reshape(layer.op.weight.shape))
        layer.bias.copy_(bias)
    layer.to(dtype=op.weight.dtype, device=op.weight.device)
    layer.train(False)  # split() restores the model's mode (and so this layer's) when it is done
    layer.source = label
    _set_module(model, first.name, layer)
    if folded is not None:
        _set_module(model, folded.name, nn.Identity())
    return layer


def first_layer(model: nn.Module) -> LocalizedFirstLayer:
    """The model's one :class:`LocalizedFirstLayer` (what the device runs)."""
    if isinstance(model, SplitModel):
        return model.first
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, LocalizedFirstLayer)]
    if not found:
        raise SplitError("the model has no LocalizedFirstLayer; convert it with daonet.split(model, drop_rate=..., "
                         "example_input=...) first")
    if len(found) > 1:
        raise SplitError(f"the model has {len(found)} LocalizedFirstLayers ({', '.join(n for n, _ in found)}); "
                         "a split model has exactly one")
    return found[0][1]


class _Received(nn.Module):
    """Stands in for the first layer on the server: returns the received (dropped) activations."""

    def __init__(self, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.in_shape = in_shape
        self.h: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        assert self.h is not None  # set by _ServerPart.forward
        return self.h


class _ServerPart(nn.Module):
    """The user's network with its first layer replaced by the received activations: ``h -> logits``."""

    def __init__(self, model: nn.Module, received: _Received) -> None:
        super().__init__()
        self.model = model
        self.received = received

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.received.h = h
        try:
            return self.model(h.new_zeros((h.shape[0], *self.received.in_shape)))
        finally:
            self.received.h = None


def server_part(model: nn.Module) -> nn.Module:
    """A copy of the network after the first layer, as a module ``h (N, *output_shape) -> logits``."""
    first = first_layer(model)
    if isinstance(model, SplitModel):
        return copy.deepcopy(model.rest).eval()
    clone = copy.deepcopy(model).eval()
    name = next(n for n, m in clone.named_modules() if isinstance(m, LocalizedFirstLayer))
    received = _Received(first.in_shape)
    if name:
        _set_module(clone, name, received)
    else:
        raise SplitError("the whole model is a LocalizedFirstLayer; there is nothing to run on the server")
    return _ServerPart(clone, received)


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """Mute torch while tracing: a failed ``torch.export`` logs a warning and prints the traced graph (twice),
    which would bury daonet's one-line message. What it printed goes to daonet's DEBUG log; at DEBUG level
    (``daonet --debug``) torch's loggers stay on too."""
    debug = log.isEnabledFor(logging.DEBUG)
    names = [] if debug else [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] == "torch"]
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            yield
    finally:
        for lg, was in zip(loggers, saved, strict=True):
            lg.disabled = was
        if printed.getvalue().strip():
            log.debug("torch printed while tracing:\n%s", printed.getvalue())


def save_program(rest: nn.Module, output_shape: tuple[int, ...], path: Path) -> None:
    """Save ``rest`` (``h -> logits``) as a torch.export program with a dynamic batch axis."""
    example = torch.rand((2, *output_shape))
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        with _quiet_torch_logs():
            program = torch.export.export(rest, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:  # torch raises many types for untraceable code
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        debug = log.isEnabledFor(logging.DEBUG)
        if debug:
            log.debug("torch.export failed on the server part", exc_info=exc)
        raise SplitError(f"torch.export could not trace the server part of the model ({type(exc).__name__}: {msg}); "
                         "daonet saves it as a torch.export program: keep forward() free of data-dependent Python "
                         "control flow after the first layer (the full torch trace: `daonet --debug`, or "
                         "logging.getLogger('daonet').setLevel(logging.DEBUG))") from (exc if debug else None)
    torch.export.save(program, str(path))


def load_program(path: Path) -> nn.Module:
    """Load a server part saved by :func:`save_program` (no user code needed)."""
    try:
        return torch.export.load(str(path)).module()
    except Exception as exc:  # a corrupt archive surfaces as several exception types
        raise DaonetError(f"{path} is not a loadable torch.export program ({type(exc).__name__}: {exc}); "
                          "re-export the bundle with daonet.export") from exc


def _raw_dtype(first: LocalizedFirstLayer, input_spec: dict[str, Any] | None) -> str:
    if input_spec is not None and not isinstance(input_spec, dict):
        raise InputError(f"input_spec must be a dict such as {{'raw_dtype': 'uint8'}}, got {type(input_spec).__name__}")
    spec = dict(input_spec or {})
    unknown = sorted(set(spec) - {"shape", "raw_dtype"})
    if unknown:
        raise InputError(f"input_spec takes shape and raw_dtype; unknown key(s) {', '.join(unknown)}")
    if "shape" in spec and tuple(spec["shape"]) != tuple(first.in_shape):
        raise InputError(f"input_spec shape {tuple(spec['shape'])} differs from the model's input shape "
                         f"{tuple(first.in_shape)} (from example_input at daonet.split)")
    return str(spec.get("raw_dtype", "float32"))


def _with_preprocess(first: LocalizedFirstLayer, preprocess: Any) -> LocalizedFirstLayer:
    """A copy of the device layer that applies ``preprocess`` first (the user's model stays as it is)."""
    if first.has_normalization:
        raise InputError("the model's device layer already normalizes its input (preprocess given to "
                         "daonet.split, or a daonet zoo model); pass preprocess once, to daonet.split or to "
                         "daonet.export")
    mean, std = scaling_from(preprocess, tuple(first.in_shape))
    generator, first.generator = first.generator, None  # a torch.Generator does not deep-copy
    try:
        layer = copy.deepcopy(first)
    finally:
        first.generator = generator
    layer.set_normalization(mean, std)
    return layer


def export(model: nn.Module, out_dir: str | Path, *, classes: Sequence[str] | None = None, model_id: str | None = None,
           input_spec: dict[str, Any] | None = None, public_data: np.ndarray | torch.Tensor | None = None,
           value_dtype: str = "float32", max_revealed_energy: float | None = None,
           sign_key: str | Path | None = None, preprocess: Any = None) -> tuple[Path, Path]:
    """Write ``out_dir/device`` and ``out_dir/server`` for a model converted with :func:`split`.

    This is ``daonet.export``.

    Args:
        model: the trained, split model (any architecture).
        out_dir: bundle directory; gets ``device/`` and ``server/``.
        classes: class names, in the order of the model's outputs (required).
        model_id: the served model's id (default: the folder name of ``out_dir``).
        input_spec: what the device takes: ``{"raw_dtype": "uint8"}`` for images the model sees as pixels/255
            (the device then accepts uint8 arrays and floats in [0, 1]); the shape comes from the model.
        public_data: public inputs from the same distribution (e.g. a few hundred training inputs), raw as the
            device takes them: their mean is the ``mu`` of the device's privacy certificate, and they calibrate
            ``noise_std``. Recommended.
        value_dtype: ``float32`` or ``float16`` values on the wire.
        max_revealed_energy: the device policy's threshold on the revealed energy (see docs/design.md).
        sign_key: an Ed25519 ``.key`` file (``daonet keygen``): devices and servers given its ``.pub`` refuse any
            other first layer.
        preprocess: the scaling the model was trained behind (a fitted scikit-learn ``StandardScaler``, a
            ``(mean, std)`` pair or ``{"mean": ..., "std": ...}``): it goes into the device bundle, so devices
            send raw inputs (docs/preprocessing.md). Not for a model that already normalizes (split's
            ``preprocess``). The model object is not changed.
    Returns:
        The device and server bundle directories.
    Raises:
        InputError: a missing or wrong option (the message says which and how to fix it); SplitError: the model
            was not converted with :func:`split`.
    """
    classes = check_classes(classes)
    first = first_layer(model)
    out_dir = Path(out_dir)
    model_id = model_id or re.sub(r"[^a-z0-9._-]+", "-", out_dir.resolve().name.lower()).strip("-.") or "model"
    raw_dtype = _raw_dtype(first, input_spec)
    check_options(value_dtype=value_dtype, raw_dtype=raw_dtype, max_revealed_energy=max_revealed_energy)
    if preprocess is not None:
        first = _with_preprocess(first, preprocess)
    extra: dict[str, np.ndarray] = {}
    if public_data is not None:
        pub = np.asarray(public_data.detach().cpu() if isinstance(public_data, torch.Tensor) else public_data)
        if pub.dtype == np.uint8:
            pub = pub.astype(np.float32) / 255.0
        pub = pub.astype(np.float32).reshape(len(pub), -1)
        if pub.shape[1] != int(np.prod(first.in_shape)) or len(pub) < 1 or not np.isfinite(pub).all():
            raise InputError(f"public_data must be finite inputs shaped (N, {', '.join(map(str, first.in_shape))}), "
                             f"got {np.shape(public_data)}")
        extra["public_mean"] = pub.mean(0).reshape(first.in_shape)
        if first.noise_std:
            first.calibrate_noise(torch.from_numpy(pub.reshape(len(pub), *first.in_shape)))
    elif first.noise_std:
        raise InputError("noise_std needs public_data at export: it fixes the noise scale from public inputs")
    rest = server_part(model)
    with torch.no_grad():
        logits = rest(torch.zeros((1, *first.output_shape)))
    if logits.dim() != 2 or logits.shape[1] != len(classes):
        raise InputError(f"the model gives outputs shaped {tuple(logits.shape)}; classes names {len(classes)} "
                         f"classes (the model must return logits (N, {len(classes)}))")
    arch = {"name": PROGRAM_ARCH, "in_shape": list(first.in_shape), "n_classes": len(classes),
            "drop_rate": first.drop_rate, "mean": first.mean.reshape(-1).tolist(),
            "std": first.std.reshape(-1).tolist(),
            "kwargs": {"program": SERVER_PROGRAM, "source": type(model).__name__}}
    if first.quantize_levels:
        arch["quantize_levels"] = first.quantize_levels

    def write_server(directory: Path) -> tuple[str, str]:
        save_program(rest, first.output_shape, directory / SERVER_PROGRAM)
        return SERVER_PROGRAM, sha256_file(directory / SERVER_PROGRAM)

    holder = SplitModel.__new__(SplitModel)  # export_model reads .first/.rest/.arch only
    nn.Module.__init__(holder)
    holder.first, holder.rest, holder.arch = first, rest, arch
    return export_model(holder, out_dir, model_id=model_id, classes=list(classes), raw_dtype=raw_dtype,
                        value_dtype=value_dtype, privacy={"max_revealed_energy": max_revealed_energy},
                        extra_device_files=extra or None, server_writer=write_server, sign_key=sign_key)
