"""Typed bundle manifests: ``DeviceManifest`` and ``ServerManifest``, validated once when read.

``daonet export`` builds these objects and writes them as ``manifest.json``; the device runtime, the server,
the privacy policy and the audit read typed attributes, never JSON keys. Everything a manifest promises
(drop rate range, shapes, layer geometry, wire version, file hashes, ...) is checked here, once, with an
error that names the field, what is wrong with it and how to fix it.

Why stdlib dataclasses and not pydantic: the device side imports this module, and a device install is
numpy + httpx + safetensors only (phones, wearables, Pyodide). pydantic-core is a compiled wheel that would
triple that footprint for ~150 lines of parsing. A small annotation-driven parser (:func:`_parse`) gives
the same "declare a field, get it validated" ergonomics.

The JSON layout is a contract with other runtimes (the JavaScript device runtime reads ``manifest.json``):
keys and nesting are unchanged from format version 1. Keys this version does not know are kept in
``extra`` and written back, so a newer writer's fields survive a round trip.

To extend: add a field with a default to the right dataclass (an optional sub-block is
``noise: NoiseSpec | None = optional()``, omitted from the JSON while ``None``), and check it in that
class's ``_check``. Old bundles keep loading because the default applies.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, TypeVar

from .errors import BundleError

__all__ = [
    "MANIFEST", "FORMAT_VERSION", "DEVICE_FORMAT", "SERVER_FORMAT", "LAYER_KINDS",
    "ManifestError", "InputSpec", "Normalization", "QuantizeSpec", "BlockStep", "LayerSpec", "DropSpec", "WireSpec",
    "PrivacySpec", "NoiseSpec", "ArchSpec", "check_ldp_wire", "IntegritySpec", "DeviceManifest", "ServerManifest",
    "read_manifest_json", "optional",
]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DEVICE_FORMAT: Final = "daonet-device-bundle"
SERVER_FORMAT: Final = "daonet-server-bundle"
LAYER_KINDS = ("dense", "conv1d", "conv2d")
IDENTIFIABLE_TOL = 1e-6  # P_jj >= 1 - tol counts as identifiable (the privacy policy's default)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIX = "re-export the bundle with `daonet export`"

S = TypeVar("S", bound="Spec")


class ManifestError(BundleError):
    """A manifest field is missing, has the wrong type, or contradicts another field."""


def optional(default: Any = None) -> Any:
    """A field that is left out of the JSON while it equals ``default`` (for optional, newer blocks)."""
    return field(default=default, metadata={"omit_default": True})


def _fail(where: str, problem: str, fix: str = _FIX) -> typing.NoReturn:
    raise ManifestError(f"{where}: {problem}; {fix}")


# -- the annotation-driven parser -------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or tp is dict:
        return "an object"
    if isinstance(tp, type) and issubclass(tp, Spec):
        return "an object"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
            type(None): "null"}.get(tp, str(tp))


def _parse(tp: Any, value: Any, where: str) -> Any:
    """Convert one JSON value to the annotated type, or raise :class:`ManifestError` naming ``where``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse(arg, value, where)
            except ManifestError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        _fail(where, f"expected {_type_name(tp)}, got {json.dumps(value)[:60]}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            _fail(where, f"{json.dumps(value)[:60]} is not supported (this daonet reads {_type_name(tp)})",
                  "upgrade daonet if the bundle is newer, or " + _FIX)
        return value
    if origin is tuple or origin is list:
        if not isinstance(value, list | tuple):
            _fail(where, f"expected a list, got {json.dumps(value)[:60]}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        items = [_parse(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            _fail(where, f"expected an object, got {json.dumps(value)[:60]}")
        _, vt = typing.get_args(tp)
        return {str(k): _parse(vt, v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Spec):
        return tp.from_json(value, where)
    if tp is bool:
        if not isinstance(value, bool):
            _fail(where, f"expected true/false, got {json.dumps(value)[:60]}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, f"expected an integer, got {json.dumps(value)[:60]}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            _fail(where, f"expected a finite number, got {json.dumps(value)[:60]}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(where, f"expected a string, got {json.dumps(value)[:60]}")
        return value
    raise TypeError(f"manifest field {where} has an unsupported annotation {tp!r}")  # a bug in this module


_NOT_JSON = frozenset({"extra", "raw"})


def _allows_none(tp: Any) -> bool:
    return tp is Any or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                         and type(None) in typing.get_args(tp))


def _dump(value: Any) -> Any:
    if isinstance(value, Spec):
        return value.to_json()
    if isinstance(value, tuple | list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, kw_only=True)
class Spec:
    """Base of every manifest block: ``from_json`` parses and checks, ``to_json`` writes the same layout."""

    _hints: ClassVar[dict[type, dict[str, Any]]] = {}

    @classmethod
    def _fields(cls) -> dict[str, Any]:
        hints = Spec._hints.get(cls)
        if hints is None:
            all_hints = typing.get_type_hints(cls)
            hints = {f.name: all_hints[f.name] for f in dataclasses.fields(cls) if f.name not in _NOT_JSON}
            Spec._hints[cls] = hints
        return hints

    @classmethod
    def from_json(cls: type[S], obj: Any, where: str = "manifest") -> S:
        """Parse a JSON object (a ``dict``); raises :class:`ManifestError` that names the bad field."""
        if not isinstance(obj, dict):
            _fail(where, f"expected an object, got {json.dumps(obj)[:60]}")
        hints = cls._fields()
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in _NOT_JSON:
                continue
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            value = obj.get(f.name)
            if value is None and not required and not _allows_none(hints[f.name]):
                continue  # null for a block that has a default: the default
            if f.name in obj:
                kwargs[f.name] = _parse(hints[f.name], value, f"{where}.{f.name}")
            elif required:
                _fail(where, f"the field {f.name!r} is missing (the manifest is malformed: corrupt, or not "
                      "written by daonet)")
        names = {f.name for f in dataclasses.fields(cls)}
        if "extra" in names:
            kwargs["extra"] = {k: v for k, v in obj.items() if k not in hints}
        if "raw" in names:
            kwargs["raw"] = dict(obj)
        spec = cls(**kwargs)
        spec._check(where)
        return spec

    def _check(self, where: str) -> None:
        """Cross-field checks (overridden per block); field types are already checked."""

    def validated(self: S, where: str = "manifest") -> S:
        """This block as it will be read back: built in code, checked exactly like a loaded file."""
        return type(self).from_json(self.to_json(), where)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in _NOT_JSON:
                continue
            value = getattr(self, f.name)
            if f.metadata.get("omit_default") and value == f.default:
                continue
            out[f.name] = _dump(value)
        out.update(_dump(getattr(self, "extra", None) or {}))
        return out


def _positive_ints(values: tuple[int, ...], where: str, what: str) -> None:
    if any(v < 1 for v in values):
        _fail(where, f"{what} must be positive integers, got {list(values)}")


def _prod(values: tuple[int, ...]) -> int:
    return math.prod(values)


# -- the blocks ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class InputSpec(Spec):
    """The raw input the device takes: ``shape`` (C, ...), held as ``raw_dtype``, values in ``range``."""

    shape: tuple[int, ...]
    dtype: Literal["float32"] = "float32"
    raw_dtype: Literal["float32", "uint8"] = "float32"
    range: tuple[float, float] | None = None

    def _check(self, where: str) -> None:
        if not self.shape:
            _fail(f"{where}.shape", "is empty; an input has at least a channel axis")
        _positive_ints(self.shape, f"{where}.shape", "dimensions")
        if self.range is not None and (len(self.range) != 2 or not self.range[0] < self.range[1]):
            _fail(f"{where}.range", f"must be [low, high] with low < high, got {list(self.range)}")

    @property
    def size(self) -> int:
        return _prod(self.shape)


@dataclass(frozen=True, kw_only=True)
class Normalization(Spec):
    """``(x - mean) / std`` applied to the raw input before the first layer (``None``: 0 and 1).

    ``per`` says what one value covers: ``channel`` (the default, omitted from the JSON) has one mean/std per
    input channel; ``feature`` has one per input value, in C order (a table's columns, fitted on the training
    split: docs/preprocessing.md). Per-feature statistics need a dense first layer: a convolution shares its
    kernel across positions, so the device certificate folds the normalization into it per channel only.
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    per: Literal["channel", "feature"] = optional("channel")

    def _check(self, where: str) -> None:
        if self.std is not None and any(s <= 0 for s in self.std):
            _fail(f"{where}.std", f"must be positive, got {list(self.std)}")

    def check_input(self, shape: tuple[int, ...], kind: str, where: str) -> None:
        """One value per channel (``per: channel``) or per input value (``per: feature``, dense layers only)."""
        count, what = (shape[0], "input channel(s)") if self.per == "channel" else (_prod(shape), "input values")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) != count:
                _fail(f"{where}.{name}", f"has {len(v)} values for {count} {what}")
        if self.per == "feature" and kind != "dense":
            _fail(f"{where}.per", f"is 'feature', but the first layer is {kind}: per-feature normalization needs a "
                  "dense first layer", "export per-channel statistics for a convolution, or use a dense model")


@dataclass(frozen=True, kw_only=True)
class QuantizeSpec(Spec):
    """Surviving values rounded to ``levels`` steps of ``[0, clip]``."""

    levels: int
    clip: float

    def _check(self, where: str) -> None:
        if self.levels < 1:
            _fail(f"{where}.levels", f"must be at least 1, got {self.levels}")
        if self.clip == 0:
            _fail(f"{where}.clip", "must be non-zero")


@dataclass(frozen=True, kw_only=True)
class BlockStep(Spec):
    """One step of ``layer.block`` (docs/device-block-and-noise.md), applied in order after the first layer.

    ``op`` = the first layer's kind (``dense``/``conv1d``/``conv2d``): ``relu(W h + b)`` (``W`` is
    ``(n_out, n_in, *kernel)``, zero ``padding`` each side, cross-correlation like PyTorch) with the tensors
    named ``weight``/``bias``; or ``op`` = ``maxpool``: max over windows of ``size`` (stride = size, floor)
    along every spatial axis.
    """

    op: Literal["dense", "conv1d", "conv2d", "maxpool"]
    n_in: int | None = optional()
    n_out: int | None = optional()
    kernel: tuple[int, ...] = optional(())
    stride: tuple[int, ...] = optional(())
    padding: tuple[int, ...] = optional(())
    activation: Literal["relu"] | None = optional()
    weight: str | None = optional()
    bias: str | None = optional()
    size: int | None = optional()

    def _check(self, where: str) -> None:
        if self.op == "maxpool":
            if self.size is None or self.size < 2:
                _fail(f"{where}.size", f"a maxpool step needs a window of at least 2, got {self.size}")
            return
        for name in ("n_in", "n_out", "weight", "bias", "activation"):
            if getattr(self, name) is None:
                _fail(f"{where}.{name}", f"is missing: a {self.op} step needs it")
        if self.n_in < 1 or self.n_out < 1:  # type: ignore[operator]
            _fail(where, f"n_in/n_out must be positive, got {self.n_in}/{self.n_out}")
        nd = LAYER_KINDS.index(self.op)
        for name in ("kernel", "stride", "padding"):
            v = getattr(self, name)
            if len(v) != nd:
                _fail(f"{where}.{name}", f"a {self.op} step needs {nd} value(s), got {list(v)}")
        _positive_ints(self.kernel + self.stride, where, "kernel and stride")
        if any(p < 0 for p in self.padding):
            _fail(f"{where}.padding", f"must be >= 0, got {list(self.padding)}")

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (int(self.n_out or 0), int(self.n_in or 0), *self.kernel)

    def out_shape(self, in_shape: tuple[int, ...], where: str = "layer.block") -> tuple[int, ...]:
        """Output shape (no batch axis) for an input of ``in_shape``; fails if the step cannot take it."""
        if self.op == "maxpool":
            size = int(self.size or 0)
            if len(in_shape) < 2 or min(in_shape[1:]) < size:
                _fail(where, f"maxpool {size} needs a spatial input at least that large, got {list(in_shape)}")
            return (in_shape[0], *(d // size for d in in_shape[1:]))
        if in_shape[0] != self.n_in or len(in_shape) != len(self.kernel) + 1:
            _fail(f"{where}.n_in", f"a {self.op} step taking {self.n_in} channels cannot follow an output shaped "
                  f"{list(in_shape)}")
        spatial = tuple((d + 2 * p - k) // st + 1 for d, k, st, p in
                        zip(in_shape[1:], self.kernel, self.stride, self.padding, strict=True))
        if spatial and min(spatial) < 1:
            _fail(where, f"kernel {list(self.kernel)} is larger than its input {list(in_shape)}")
        return (int(self.n_out or 0), *spatial)

    def describe(self) -> str:
        if self.op == "maxpool":
            return f"maxpool {self.size}"
        if self.op == "dense":
            return f"dense {self.n_in}->{self.n_out} + ReLU"
        return f"{self.op} {self.n_in}->{self.n_out} kernel {list(self.kernel)} + ReLU"


@dataclass(frozen=True, kw_only=True)
class LayerSpec(Spec):
    """Geometry of the localized first layer (what ``LocalizedFirstLayer.spec()`` writes)."""

    kind: Literal["dense", "conv1d", "conv2d"]
    output_shape: tuple[int, ...]
    n_outputs: int
    in_shape: tuple[int, ...] | None = None
    out_channels: int | None = None
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    activation: Literal["relu"] = "relu"
    quantize: QuantizeSpec | None = None
    # a localized block after the first layer (steps run by daonet.device.block); dropping happens at its output
    first_output_shape: tuple[int, ...] | None = optional()
    block: tuple[BlockStep, ...] | None = optional()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def first_shape(self) -> tuple[int, ...]:
        """The first layer's own output shape (``output_shape`` is what is dropped and sent)."""
        return self.first_output_shape or self.output_shape

    def _check(self, where: str) -> None:
        """Geometry checks for the layouts this daonet knows, a block's step shapes included (its tensors are
        checked by the device runtime); a layer with extra keys (a newer layout) is checked by the code that
        knows those keys."""
        _positive_ints(self.output_shape, f"{where}.output_shape", "dimensions")
        if _prod(self.output_shape) != self.n_outputs:
            _fail(f"{where}.n_outputs", f"is {self.n_outputs}, but output_shape {list(self.output_shape)} has "
                  f"{_prod(self.output_shape)} outputs")
        if self.block and self.first_output_shape is None:
            _fail(f"{where}.first_output_shape", "is missing: a layer with a block needs the first layer's own "
                  "output shape")
        if self.extra:
            return
        first = self.first_shape
        _positive_ints(first, f"{where}.first_output_shape", "dimensions")
        if self.out_channels is not None and self.out_channels != first[0]:
            _fail(f"{where}.out_channels", f"is {self.out_channels}, the first layer's output starts with {first[0]}")
        nd = {"dense": 0, "conv1d": 1, "conv2d": 2}[self.kind]
        for name in ("kernel", "stride"):
            v = getattr(self, name)
            if len(v) != nd:
                _fail(f"{where}.{name}", f"a {self.kind} layer needs {nd} value(s), got {list(v)}")
            _positive_ints(v, f"{where}.{name}", name)
        if len(first) != nd + 1:
            _fail(f"{where}.output_shape", f"a {self.kind} layer has {nd + 1} output axes, got {list(first)}")
        if self.in_shape is not None:
            self.check_input(self.in_shape, f"{where}.in_shape")
        shape = self.first_shape
        for i, step in enumerate(self.block or ()):
            if step.op not in (self.kind, "maxpool") or (step.op == "maxpool" and self.kind == "dense"):
                _fail(f"{where}.block[{i}].op", f"{step.op!r} after a {self.kind!r} first layer is not supported "
                      "(blocks repeat the first layer's kind; maxpool needs a convolution)",
                      "upgrade daonet if the bundle is newer, or " + _FIX)
            shape = step.out_shape(shape, f"{where}.block[{i}]")
        if shape != self.output_shape:
            _fail(f"{where}.output_shape", f"is {list(self.output_shape)}, but the first layer and its block "
                  f"output {list(shape)}")

    def check_input(self, shape: tuple[int, ...], where: str) -> None:
        """Does this geometry turn inputs of ``shape`` into ``output_shape``?"""
        if self.kind == "dense" or self.extra:
            return
        nd = len(self.kernel)
        if len(shape) != nd + 1:
            _fail(where, f"a {self.kind} layer takes inputs with {nd + 1} axes, got {list(shape)}")
        spatial = tuple((s - k) // st + 1 for s, k, st in zip(shape[1:], self.kernel, self.stride, strict=True))
        if spatial != self.first_shape[1:]:
            _fail(where, f"input {list(shape)} with kernel {list(self.kernel)} and stride {list(self.stride)} "
                  f"gives outputs {list(spatial)}, the layer says {list(self.first_shape[1:])}")

    @property
    def patchify(self) -> bool:
        return all(s >= k for s, k in zip(self.stride, self.kernel, strict=True))


@dataclass(frozen=True, kw_only=True)
class DropSpec(Spec):
    """How outputs are dropped: Bernoulli with ``rate`` in [0, 1), survivors not rescaled."""

    rate: float
    policy: Literal["bernoulli"] = "bernoulli"
    rescale: Literal[False] = False

    def _check(self, where: str) -> None:
        if not 0.0 <= self.rate < 1.0:
            _fail(f"{where}.rate", f"must be in [0, 1), got {self.rate}", "train and export with --drop-rate in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class WireSpec(Spec):
    """The wire format payloads use (see :mod:`daonet.wire`)."""

    version: Literal[1, 2] = 1  # 2: values may be negative (gaussian_ldp bundles only)
    value_dtype: Literal["float32", "float16"] | None = optional()


@dataclass(frozen=True, kw_only=True)
class PrivacySpec(Spec):
    """The device's privacy policy (see ``daonet.device.certificate.PrivacyPolicy``)."""

    max_revealed_energy: float | None = None
    forbid_identifiable: bool = optional(True)
    identifiable_tol: float = optional(IDENTIFIABLE_TOL)

    def _check(self, where: str) -> None:
        m = self.max_revealed_energy
        if m is not None and not 0.0 <= m <= 1.0:
            _fail(f"{where}.max_revealed_energy", f"must be in [0, 1] or null, got {m}",
                  "export with --max-revealed-energy in [0, 1]")
        if not 0.0 < self.identifiable_tol < 1.0:
            _fail(f"{where}.identifiable_tol", f"must be in (0, 1), got {self.identifiable_tol}")


LDP_MAX_NOISE_STEPS = 256  # the discrete Gaussian's integer arithmetic stays below 2^53 (daonet.ldp)
LDP_MAX_CLIP_STEPS = 2**16


@dataclass(frozen=True, kw_only=True)
class NoiseSpec(Spec):
    """Noise on what is sent; two kinds.

    ``gaussian`` (``applies_to: surviving``): surviving values become ``max(h + std * e, floor)``, ``e`` ~ N(0, 1);
    ``std`` is absolute (activation units), fixed at training as ``relative_std`` x the RMS of the non-zero
    activations on public data; ``floor`` > 0 keeps sent values non-zero. No formal guarantee.

    ``gaussian_ldp`` (``applies_to: kept``): the Gaussian mechanism with a per-request (epsilon, delta) bound
    (docs/privacy-ldp.md): every kept output, ReLU zeros included, is put on the power-of-two ``grid``, the kept
    vector clipped to L2 norm ``clip_steps`` grid steps (``clip`` = clip_steps x grid), and discrete Gaussian
    noise of ``noise_steps`` steps (``std`` = noise_steps x grid) added; values may be negative (wire version
    2). ``epsilon`` is the accountant's value for ``std / sensitivity`` at ``delta`` (``sensitivity`` = sqrt(2)
    x clip: the vectors are non-negative), for one request.
    """

    std: float
    floor: float | None = optional()
    relative_std: float = 0.0
    kind: Literal["gaussian", "gaussian_ldp"] = "gaussian"
    applies_to: Literal["surviving", "kept"] = "surviving"
    mechanism: Literal["discrete_gaussian"] | None = optional()
    clip: float | None = optional()
    grid: float | None = optional()
    clip_steps: int | None = optional()
    noise_steps: int | None = optional()
    sensitivity: float | None = optional()
    delta: float | None = optional()
    epsilon: float | None = optional()
    accountant: str | None = optional()
    accountant_version: str | None = optional()
    target_epsilon: float | None = optional()
    clip_quantile: float | None = optional()

    LDP_FIELDS: ClassVar[tuple[str, ...]] = ("mechanism", "clip", "grid", "clip_steps", "noise_steps", "sensitivity",
                                             "delta", "epsilon", "accountant", "accountant_version")

    @property
    def ldp(self) -> bool:
        return self.kind == "gaussian_ldp"

    def _check(self, where: str) -> None:
        if not self.ldp:
            if self.floor is None:
                _fail(where, "the field 'floor' is missing (the manifest is malformed: corrupt, or not written by "
                      "daonet)")
            if self.applies_to != "surviving":
                _fail(f"{where}.applies_to", f"is {self.applies_to!r}; noise of kind 'gaussian' applies to "
                      "'surviving' values")
            if self.std < 0 or self.floor <= 0:
                _fail(where, f"noise std {self.std} / floor {self.floor} are invalid (std >= 0, floor > 0)")
            return
        for name in self.LDP_FIELDS:
            if getattr(self, name) is None:
                _fail(f"{where}.{name}", "is missing: noise of kind 'gaussian_ldp' needs it")
        if self.applies_to != "kept":
            _fail(f"{where}.applies_to", f"is {self.applies_to!r}; noise of kind 'gaussian_ldp' applies to every "
                  "'kept' output")
        grid, b, s = float(self.grid or 0), int(self.clip_steps or 0), int(self.noise_steps or 0)
        if not (grid > 0 and math.frexp(grid)[0] == 0.5):
            _fail(f"{where}.grid", f"must be a positive power of two, got {grid}")
        if not 1 <= s <= LDP_MAX_NOISE_STEPS:
            _fail(f"{where}.noise_steps", f"must be in [1, {LDP_MAX_NOISE_STEPS}], got {s}")
        if not 1 <= b <= LDP_MAX_CLIP_STEPS:
            _fail(f"{where}.clip_steps", f"must be in [1, {LDP_MAX_CLIP_STEPS}], got {b}")
        if self.clip != b * grid or self.std != s * grid:
            _fail(where, f"clip {self.clip} / std {self.std} are not clip_steps x grid / noise_steps x grid "
                  f"({b * grid} / {s * grid})")
        if self.sensitivity != math.sqrt(2.0) * (b * grid):
            _fail(f"{where}.sensitivity", f"is {self.sensitivity}, the replace-one sensitivity of clipped "
                  f"non-negative vectors is sqrt(2) x clip = {math.sqrt(2.0) * (b * grid)}")
        if not 0.0 < float(self.delta or 0) < 1.0:
            _fail(f"{where}.delta", f"must be in (0, 1), got {self.delta}")
        if not float(self.epsilon or 0) > 0:
            _fail(f"{where}.epsilon", f"must be > 0, got {self.epsilon}")


@dataclass(frozen=True, kw_only=True)
class ArchSpec(Spec):
    """Enough to rebuild the whole network (``daonet.nn.build_model``); unknown keys are kept verbatim."""

    name: str
    in_shape: tuple[int, ...]
    n_classes: int
    drop_rate: float
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    quantize_levels: int | None = optional()
    extra: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def _check(self, where: str) -> None:
        _positive_ints(self.in_shape, f"{where}.in_shape", "dimensions")
        if self.n_classes < 1:
            _fail(f"{where}.n_classes", f"must be at least 1, got {self.n_classes}")
        if not 0.0 <= self.drop_rate < 1.0:
            _fail(f"{where}.drop_rate", f"must be in [0, 1), got {self.drop_rate}")

    def to_json(self) -> dict[str, Any]:
        """The dict exactly as it was read (the model version hashes it), else as built."""
        return json.loads(json.dumps(self.raw)) if self.raw else super().to_json()

    def as_dict(self) -> dict[str, Any]:
        """The plain dict ``build_model`` takes."""
        return self.to_json()


def _check_files(files: dict[str, str], where: str) -> None:
    if not files:
        _fail(where, "lists no weight files")
    for name, digest in files.items():
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            _fail(f"{where}.{name}", "is not a plain file name inside the bundle")
        if not _SHA256.fullmatch(digest):
            _fail(f"{where}.{name}", f"is not a SHA-256 hex digest: {digest[:20]!r}")


@dataclass(frozen=True, kw_only=True)
class IntegritySpec(Spec):
    """What binds a half to its version (checked by :func:`daonet.bundle.load_bundle`).

    ``pair_digest`` is the SHA-256 of the *other* half's canonical manifest content, so each half alone can
    recompute ``version`` from its own content; ``signature`` (optional) is an Ed25519 signature by the key
    ``key_id`` over both halves' digests (see :mod:`daonet.signing`)."""

    pair_digest: str
    signature: str | None = optional()
    key_id: str | None = optional()

    def _check(self, where: str) -> None:
        if not _SHA256.fullmatch(self.pair_digest):
            _fail(f"{where}.pair_digest", f"is not a SHA-256 hex digest: {self.pair_digest[:20]!r}")
        if (self.signature is None) != (self.key_id is None):
            _fail(where, "has a signature without a key_id or the other way round")


@dataclass(frozen=True, kw_only=True)
class _Identity(Spec):
    """Fields both halves share; ``version`` is a content hash over both halves."""

    model_id: str
    version: str
    files: dict[str, str]
    classes: tuple[str, ...] = ()
    format_version: int = FORMAT_VERSION
    integrity: IntegritySpec | None = optional()

    def _check(self, where: str) -> None:
        if self.format_version != FORMAT_VERSION:
            _fail(f"{where}.format_version", f"is {self.format_version}, this daonet reads version {FORMAT_VERSION}",
                  "upgrade daonet or re-export the bundle")
        if not self.model_id:
            _fail(f"{where}.model_id", "is empty")
        if not self.version or not self.version.isascii() or len(self.version) > 255:
            _fail(f"{where}.version", f"must be a short ASCII string, got {self.version[:40]!r}")
        _check_files(self.files, f"{where}.files")


@dataclass(frozen=True, kw_only=True)
class DeviceManifest(_Identity):
    """``bundle/device/manifest.json``: everything the device runtime needs besides the weights."""

    FORMAT: ClassVar[str] = DEVICE_FORMAT

    input: InputSpec
    layer: LayerSpec
    drop: DropSpec
    normalization: Normalization = field(default_factory=Normalization)
    wire: WireSpec = field(default_factory=WireSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    noise: NoiseSpec | None = optional()
    format: Literal["daonet-device-bundle"] = DEVICE_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def _check(self, where: str) -> None:
        super()._check(where)
        self.layer.check_input(self.input.shape, f"{where}.input.shape")
        if self.layer.in_shape is not None and self.layer.in_shape != self.input.shape:
            _fail(f"{where}.layer.in_shape", f"is {list(self.layer.in_shape)}, input.shape is "
                  f"{list(self.input.shape)}")
        self.normalization.check_input(self.input.shape, self.layer.kind, f"{where}.normalization")
        if self.layer.block and self.privacy.max_revealed_energy is not None:
            _fail(f"{where}.privacy.max_revealed_energy", "is set, but this device bundle runs a non-linear block: "
                  "the revealed energy is defined for a single linear layer only",
                  "re-export without --max-revealed-energy (a block is covered by the audit)")
        if self.noise is not None and self.layer.quantize is not None:
            _fail(f"{where}.noise", "is set together with layer.quantize: noise would undo the rounding", _FIX)
        check_ldp_wire(self.noise, self.wire, self.privacy, self.layer.n_outputs, where)

    @property
    def value_dtype(self) -> str:
        return self.wire.value_dtype or "float32"

    @classmethod
    def load(cls, directory: str | Path) -> DeviceManifest:
        return cls.from_json(read_manifest_json(directory, DEVICE_FORMAT), str(Path(directory) / MANIFEST))


@dataclass(frozen=True, kw_only=True)
class ServerManifest(_Identity):
    """``bundle/server/manifest.json``: the architecture, and the device side the server expects."""

    FORMAT: ClassVar[str] = SERVER_FORMAT

    arch: ArchSpec
    first_layer: LayerSpec
    drop: DropSpec
    device_input: InputSpec | None = None
    wire: WireSpec = field(default_factory=WireSpec)
    format: Literal["daonet-server-bundle"] = SERVER_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def _check(self, where: str) -> None:
        super()._check(where)
        if self.device_input is not None:
            self.first_layer.check_input(self.device_input.shape, f"{where}.device_input.shape")
        if self.classes and len(self.classes) != self.arch.n_classes:
            _fail(f"{where}.classes", f"names {len(self.classes)} classes, the network (arch.n_classes) predicts "
                  f"{self.arch.n_classes}")

    @classmethod
    def load(cls, directory: str | Path) -> ServerManifest:
        return cls.from_json(read_manifest_json(directory, SERVER_FORMAT), str(Path(directory) / MANIFEST))


def check_ldp_wire(noise: NoiseSpec | None, wire: WireSpec, privacy: PrivacySpec | None, n_outputs: int,
                   where: str) -> None:
    """Wire version 2 (signed values) goes with ``gaussian_ldp`` noise and nothing else; that mode sends float32
    values and runs no revealed-energy policy (an input-dependent drop would void the bound)."""
    ldp = noise is not None and noise.ldp
    if wire.version == 2 and not ldp:
        _fail(f"{where}.wire.version", "2 is not supported without noise of kind 'gaussian_ldp' (signed values)",
              "upgrade daonet if the bundle is newer, or " + _FIX)
    if not ldp:
        return
    assert noise is not None
    if wire.version != 2:
        _fail(f"{where}.wire.version", f"is {wire.version}; noise of kind 'gaussian_ldp' sends signed values: wire "
              "version 2")
    if wire.value_dtype not in (None, "float32"):
        _fail(f"{where}.wire.value_dtype", f"is {wire.value_dtype!r}; noise of kind 'gaussian_ldp' sends float32 "
              "values")
    if privacy is not None and privacy.max_revealed_energy is not None:
        _fail(f"{where}.privacy.max_revealed_energy", "is set with noise of kind 'gaussian_ldp': an input-dependent "
              "drop would void the (epsilon, delta) bound", "re-export without --max-revealed-energy")
    if n_outputs * int(noise.clip_steps or 0) ** 2 >= 2**53:
        _fail(f"{where}.noise.clip_steps", f"{noise.clip_steps} with {n_outputs} outputs overflows exact integer "
              "arithmetic (n_outputs x clip_steps^2 must stay below 2^53)")


def read_manifest_json(directory: str | Path, expected_format: str) -> dict[str, Any]:
    """The raw JSON object of ``directory/manifest.json`` after the checks that need no schema (it exists, it
    is JSON, it is the expected half). :meth:`DeviceManifest.load`/:meth:`ServerManifest.load` parse it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"bundle directory {directory} does not exist; create it with `daonet export RUN_DIR`")
    path = directory / MANIFEST
    if not path.exists():
        raise BundleError(f"{path} is missing; is {directory} a daonet bundle? Re-export it with `daonet export`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); the bundle is corrupt, re-export it") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != expected_format:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        hint = ""
        if got in (DEVICE_FORMAT, SERVER_FORMAT):
            hint = f" (this is a {got}; pass the {'device' if expected_format == DEVICE_FORMAT else 'server'}/ "
            hint += "directory instead)"
        raise BundleError(f"{path} is a {got!r} manifest, expected {expected_format!r}{hint}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path} has format version {manifest.get('format_version')}, this daonet reads version "
            f"{FORMAT_VERSION}; upgrade daonet or re-export the bundle"
        )
    return manifest
