"""The device runtime: first layer + ReLU + dropping + sparse payload, in numpy only.

This is everything a phone or wearable app runs. It reads only ``bundle/device``: the first layer's
weights and a JSON manifest. No torch, no server weights, no network (see ``client`` for that).
Optional, per manifest: a localized block after the first layer (``layer.block``) and noise on the
surviving values (``noise``); see :mod:`daonet.device.block`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..bundle import DEVICE_FORMAT, ManifestIdentity, load_bundle
from ..errors import BundleError, InputError
from ..manifest import DeviceManifest, NoiseSpec
from ..wire import HEADER, encode
from .block import (
    NOISE_NOTE,
    BlockCertificate,
    BlockStep,
    LdpCertificate,
    add_noise,
    check_tensors,
    ldp_release,
    run_block,
)
from .certificate import Certificate, FirstLayerSystem, PrivacyPolicy, apply_policy, certify
from .masks import MaskSource, RandomMasks

RANGE_TOLERANCE = 1e-6
ACTIVATION_CHUNK = 1024  # rows per pass of a large batch: bounds a device block's float64 windows (~230 MB)
_REAL_DTYPES = frozenset(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64",
                                               "int64", "float16", "float32", "float64"))  # no need to ask numpy
# a block gets the plain "covered by the audit only" form; the Gaussian mechanism its (epsilon, delta)
AnyCertificate = Certificate | BlockCertificate | LdpCertificate
BLOCK_NOTE_REFUSAL = ("non-linear block: covered by the audit only (the first-layer equations, their certificate "
                      "and the white-box attacks on W apply to a single linear layer)")


@dataclass(frozen=True)
class DevicePayload:
    """One request as it leaves the device: the bytes, and (kept locally) what they encode."""

    data: bytes
    nnz: int
    n_outputs: int
    activations: np.ndarray  # the dropped activation vector (flattened); stays on the device
    certificate: Any = field(default=None, repr=False)  # the request's privacy certificate; stays on the device

    def describe(self) -> str:
        idx = np.flatnonzero(self.activations)
        head = ", ".join(f"{i}:{self.activations[i]:.3f}" for i in idx[:6])
        more = f", ... (+{len(idx) - 6})" if len(idx) > 6 else ""
        return f"{len(self.data)} bytes: {self.nnz} of {self.n_outputs} outputs as index:value {{{head}{more}}}"


class DeviceModel(ManifestIdentity[DeviceManifest]):
    """A loaded device bundle. ``encode(x)`` turns a raw input into the bytes that may leave."""

    def __init__(self, manifest: DeviceManifest | dict[str, Any], weight: np.ndarray, bias: np.ndarray,
                 extras: dict[str, np.ndarray] | None = None, bundle_dir: Path | None = None) -> None:
        """Build from a manifest and the first layer's weights (``load`` reads both from a bundle).

        Args:
            manifest: the typed manifest, or its JSON object (validated here, once).
            weight, bias: the first layer's parameters, shapes as the manifest implies.
            extras: further device tensors (``public_mean``, a block's weights).
            bundle_dir: where it was loaded from, if anywhere.
        Raises:
            BundleError: the manifest is invalid or the weights do not match it.
        """
        if not isinstance(manifest, DeviceManifest):
            manifest = DeviceManifest.from_json(manifest, "device manifest")
        self.manifest = manifest
        self.fast_step = True  # False: the reference step for every request (bench/device_step.py compares)
        self.bundle_dir = bundle_dir
        layer = manifest.layer
        self.kind: str = layer.kind
        self.input_shape: tuple[int, ...] = manifest.input.shape
        self.output_shape: tuple[int, ...] = layer.output_shape  # what is dropped and sent
        self.first_output_shape: tuple[int, ...] = layer.first_shape
        self.n_outputs = layer.n_outputs
        self.block: tuple[BlockStep, ...] = layer.block or ()
        self.noise: NoiseSpec | None = manifest.noise
        self.kernel: tuple[int, ...] = layer.kernel
        self.stride: tuple[int, ...] = layer.stride
        self.drop_rate = manifest.drop.rate
        self.value_dtype = manifest.value_dtype
        self.raw_dtype = manifest.input.raw_dtype
        self.value_range = manifest.input.range
        self.quantize = layer.quantize
        norm = manifest.normalization  # per channel, or per input value (``per: feature``, dense layers)
        channels = self.input_shape[0]
        bshape = self.input_shape if norm.per == "feature" else (channels,) + (1,) * (len(self.input_shape) - 1)
        count = int(np.prod(bshape))
        self.mean = np.asarray(norm.mean or [0.0] * count, dtype=np.float32).reshape(bshape)
        self.std = np.asarray(norm.std or [1.0] * count, dtype=np.float32).reshape(bshape)
        self.weight = np.asarray(weight, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.extras = extras or {}
        self.input_size = int(np.prod(self.input_shape))
        self._check_geometry()

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def load(cls, bundle_dir: str | Path, *, public_keys: Sequence[Any] = ()) -> DeviceModel:
        """Load ``bundle/device`` (or a bundle root holding ``device/``).

        Args:
            bundle_dir: the device bundle directory written by ``daonet export``.
            public_keys: the vendor's Ed25519 ``.pub`` files (``daonet keygen``): refuse a bundle they did not
                sign (needs ``cryptography``: ``pip install 'daonet[sign]'``).
        Returns:
            The device model, its manifest validated and its weights checked against their SHA-256.
        Raises:
            BundleError: a missing, tampered, truncated or inconsistent bundle (the message says how to fix it).
        """
        bundle_dir, manifest, tensors = load_bundle(bundle_dir, DEVICE_FORMAT, public_keys)
        assert isinstance(manifest, DeviceManifest)
        if "weight" not in tensors or "bias" not in tensors:
            raise BundleError(f"{bundle_dir} lacks 'weight'/'bias'; re-export the bundle")
        extras = {k: v for k, v in tensors.items() if k not in ("weight", "bias")}
        return cls(manifest, tensors["weight"], tensors["bias"], extras, bundle_dir)

    def _check_geometry(self) -> None:
        out_c = self.first_output_shape[0]
        if self.kind == "dense":
            expected: tuple[int, ...] = (out_c, int(np.prod(self.input_shape)))
        else:  # the manifest guarantees conv1d/conv2d with matching kernel length
            expected = (out_c, self.input_shape[0], *self.kernel)
        if self.weight.shape != expected or self.bias.shape != (out_c,):
            raise BundleError(f"first-layer weight has shape {self.weight.shape}, manifest implies {expected}; "
                              "the bundle is inconsistent, re-export it")
        check_tensors(self.block, self.extras)  # the manifest already checked the block's shapes

    @property
    def is_linear(self) -> bool:
        """True for the paper's single linear layer + ReLU (the algebraic certificate and white-box attacks on
        ``W`` apply); False for a localized block, which only the audit's learned attackers measure."""
        return not self.block

    def describe_block(self) -> str:
        """The device computation in words, e.g. ``"dense 784->800 + ReLU, dense 800->800 + ReLU"``."""
        first = (f"dense {self.weight.shape[1]}->{self.weight.shape[0]} + ReLU" if self.kind == "dense" else
                 f"{self.kind} {self.input_shape[0]}->{self.weight.shape[0]} kernel {list(self.kernel)} "
                 f"stride {list(self.stride)} + ReLU")
        return ", ".join([first, *(step.describe() for step in self.block)])

    @property
    def raw_input_bytes(self) -> int:
        """Bytes of one raw input as the device holds it (uint8 pixels, float32 samples)."""
        return int(np.prod(self.input_shape)) * (1 if self.raw_dtype == "uint8" else 4)

    # -- the computation ------------------------------------------------------------------------
    def validate(self, x: Any) -> np.ndarray:
        """Check and batch an input: returns float32 ``(N, *input_shape)``; raises InputError."""
        try:
            arr = np.asarray(x)
        except Exception as exc:
            raise InputError(f"input cannot be read as an array: {exc}") from exc
        if arr.dtype not in _REAL_DTYPES and (arr.dtype == object or not (np.issubdtype(arr.dtype, np.number))
                                              or np.iscomplexobj(arr)):
            raise InputError(f"input has dtype {arr.dtype}; pass real numbers (float32, or uint8 pixels)")
        shape = self.input_shape
        size = self.input_size
        squeezed = shape[1:] if shape[0] == 1 else None  # single-channel inputs may omit the channel axis
        if arr.shape in (shape, (size,), squeezed):
            arr = arr.reshape((1, *shape))
        elif arr.ndim >= 1 and arr.shape[1:] in (shape, (size,), squeezed):
            arr = arr.reshape((arr.shape[0], *shape))
        else:
            raise InputError(f"input has shape {arr.shape}; this model takes {shape} (or a batch "
                             f"(N, {', '.join(map(str, shape))}), or {size} flat values)")
        if arr.shape[0] == 0:
            raise InputError("input batch is empty")
        pixels = arr.dtype == np.uint8  # scaled to [0, 1]: finite and in range by construction
        if pixels:
            arr = arr.astype(np.float32) / 255.0
        elif np.issubdtype(arr.dtype, np.integer) and self.raw_dtype == "uint8":
            raise InputError(f"integer input of dtype {arr.dtype}: pass uint8 pixels or floats in [0, 1]")
        arr = arr.astype(np.float32, copy=False)
        if not pixels and not np.isfinite(arr).all():
            raise InputError("input contains NaN or inf; clean the signal/image before sending it")
        if self.value_range is not None and not (pixels and self.value_range[0] <= 0 and self.value_range[1] >= 1):
            lo, hi = self.value_range
            if arr.min() < lo - RANGE_TOLERANCE or arr.max() > hi + RANGE_TOLERANCE:
                raise InputError(f"input values span [{arr.min():.3g}, {arr.max():.3g}]; this model expects "
                                 f"[{lo}, {hi}] (scale 8-bit pixels by 1/255 or pass them as uint8)")
        return np.ascontiguousarray(arr)

    def activations(self, x: Any) -> np.ndarray:
        """ReLU outputs before dropping, flattened: ``(N, n_outputs)``."""
        return self._activations(self.validate(x))

    def _activations(self, xb: np.ndarray) -> np.ndarray:
        """:meth:`activations` of an already validated batch (validation is the costly part per request).

        Large batches (an audit's whole public set) run in chunks of :data:`ACTIVATION_CHUNK` rows: a device
        block's float64 windows would otherwise take ~14 GB for 60,000 MNIST images. Every row is computed on
        its own, so chunking changes no bit."""
        chunk = ACTIVATION_CHUNK
        if xb.shape[0] > chunk:
            return np.concatenate([self._activations_rows(xb[i:i + chunk])
                                   for i in range(0, xb.shape[0], chunk)])
        return self._activations_rows(xb)

    def _activations_rows(self, xb: np.ndarray) -> np.ndarray:
        # Normalize in float32, accumulate in float64, round once to float32: the result no longer depends on
        # the BLAS's summation order, so every runtime that follows this recipe (the JavaScript one too)
        # produces the same float32 bits and hence the same payload bytes.
        z = ((xb - self.mean) / self.std).astype(np.float64)
        w, b = self._weight64, self._bias64
        n = z.shape[0]
        if self.kind == "dense":
            out = z.reshape(n, -1) @ w.T + b
        elif self.kind == "conv1d":
            win = sliding_window_view(z, self.kernel[0], axis=2)[:, :, :: self.stride[0]]  # N,C,Lo,k
            out = np.einsum("nclk,ock->nol", win, w, optimize=True) + b[:, None]
        else:
            win = sliding_window_view(z, self.kernel, axis=(2, 3))[:, :, :: self.stride[0], :: self.stride[1]]
            out = np.einsum("nchwij,ocij->nohw", win, w, optimize=True) + b[:, None, None]
        out = out.astype(np.float32)
        h = np.maximum(out, 0.0, dtype=np.float32)
        if self.block:
            h = run_block(h.reshape((n, *self.first_output_shape)), self.block, self._block64)
        h = h.reshape(n, -1)
        if h.shape[1] != self.n_outputs:
            raise BundleError(f"the device layers produced {h.shape[1]} outputs, manifest says {self.n_outputs}")
        if self.quantize:  # same rounding as LocalizedFirstLayer.quantize (a defence: coarse values)
            levels, clip = self.quantize.levels, np.float32(abs(self.quantize.clip) + 1e-6)
            step = clip / np.float32(levels)
            h = (np.round(np.minimum(h, clip) / step) * step).astype(np.float32)
        return h

    def drop(self, x: Any, masks: MaskSource | None = None, *, mask: np.ndarray | None = None) -> np.ndarray:
        """Dropped activation vectors ``(N, n_outputs)``: what the server may see, nothing more.

        Args:
            x: one input or a batch (see :meth:`validate`).
            masks: where the dropping masks come from (default: fresh :class:`RandomMasks`).
            mask: an explicit keep-mask over the outputs (overrides ``masks``; tests and audits).
        Raises:
            InputError: the input has the wrong shape, dtype or range, or contains NaN/inf.
        """
        return self._drop(self.validate(x), masks, mask)

    def _drop(self, xb: np.ndarray, masks: MaskSource | None, mask: np.ndarray | None) -> np.ndarray:
        if self.ldp is not None:
            return self._drop_ldp(xb, masks, mask)
        if self.fast_step and xb.shape[0] == 1 and self.kind == "dense" and not self.block:
            return self._drop_one_dense(xb, masks, mask)
        return self._drop_reference(xb, masks, mask)

    @property
    def ldp(self) -> NoiseSpec | None:
        """The manifest's ``gaussian_ldp`` noise (the Gaussian mechanism with a per-request bound), or None."""
        return self.noise if self.noise is not None and self.noise.ldp else None

    def _drop_ldp(self, xb: np.ndarray, masks: MaskSource | None, mask: np.ndarray | None) -> np.ndarray:
        """The Gaussian mechanism: the input-independent mask, then every kept output clipped on the grid and
        given exact discrete Gaussian noise (:func:`~daonet.device.block.ldp_release`)."""
        spec = self.ldp
        assert spec is not None
        h = self._activations(xb)
        source = masks or RandomMasks()
        if mask is not None:
            keep = np.asarray(mask, dtype=bool).reshape(h.shape)
        elif self.drop_rate > 0:
            keep = np.asarray(source.masks(xb, self.n_outputs, self.drop_rate), dtype=bool).reshape(h.shape)
        else:
            keep = np.ones(h.shape, dtype=bool)
        if not hasattr(source, "ldp_noise"):
            raise InputError(f"this bundle runs the Gaussian mechanism (gaussian_ldp) but the mask source "
                             f"{type(source).__name__} cannot draw its noise; use RandomMasks or KeyedMasks")
        noise = source.ldp_noise(xb, keep, self.n_outputs, self.drop_rate, int(spec.noise_steps or 0))
        return ldp_release(h, keep, noise, spec)

    def _drop_reference(self, xb: np.ndarray, masks: MaskSource | None, mask: np.ndarray | None) -> np.ndarray:
        """The reference device step: every output in float64, then the mask (batches, convolutions, blocks)."""
        h = self._activations(xb)
        if mask is None and self.drop_rate > 0:
            masks = masks or RandomMasks()
            mask = masks.masks(xb, self.n_outputs, self.drop_rate)
        if mask is not None:
            h = np.where(np.asarray(mask, dtype=bool).reshape(h.shape), h, np.float32(0))
        if self.noise is not None:
            source = masks or RandomMasks()
            if not hasattr(source, "noise"):
                raise InputError(f"this bundle adds noise to surviving values but the mask source "
                                 f"{type(source).__name__} cannot draw it; use RandomMasks or KeyedMasks")
            standard = source.noise(xb, h > 0, self.n_outputs, self.drop_rate)
            h = add_noise(h, standard, self.noise)
        return h

    def _drop_one_dense(self, xb: np.ndarray, masks: MaskSource | None, mask: np.ndarray | None) -> np.ndarray:
        """:meth:`_drop_reference` for one input of a dense layer, same bits, a fraction of the work.

        The mask is drawn first (it never depends on the activations, so a seeded source gives the same mask).
        A float32 screen with the normalization folded in and only the input's non-zero values (most pixels are
        0) bounds every output; only kept outputs the screen cannot rule out (value > -bound) are computed with
        the reference recipe (float64 accumulation, one rounding to float32). The bound is the standard
        floating-point error bound of the screen, doubled, so no output that the reference makes positive is
        skipped.
        """
        n_out = self.n_outputs
        if mask is None:
            keep = (np.asarray((masks or RandomMasks()).masks(xb, n_out, self.drop_rate)[0], dtype=bool)
                    if self.drop_rate > 0 else None)
        else:
            keep = np.asarray(mask, dtype=bool).reshape(-1)
        at32, c32, l1, abs_c, m_max = self._screen
        x = xb.reshape(-1)
        nz = np.flatnonzero(x)
        approx = c32 + x[nz] @ at32[nz]
        x_max = float(np.abs(x).max()) if nz.size else 0.0
        bound = (nz.size + 8) * 2.0**-23 * (l1 * (x_max + m_max) + abs_c) + 1e-30
        live = approx > -bound
        rows = np.flatnonzero(live & keep if keep is not None else live)
        h = np.zeros((1, n_out), dtype=np.float32)
        if rows.size:
            z = ((xb - self.mean) / self.std).astype(np.float64).reshape(-1)
            vals = np.maximum((self._weight64[rows] @ z + self._bias64[rows]).astype(np.float32), 0.0,
                              dtype=np.float32)
            if self.quantize:
                levels, clip = self.quantize.levels, np.float32(abs(self.quantize.clip) + 1e-6)
                step = clip / np.float32(levels)
                vals = (np.round(np.minimum(vals, clip) / step) * step).astype(np.float32)
            h[0, rows] = vals
        if self.noise is not None:
            source = masks or RandomMasks()
            if not hasattr(source, "noise"):
                raise InputError(f"this bundle adds noise to surviving values but the mask source "
                                 f"{type(source).__name__} cannot draw it; use RandomMasks or KeyedMasks")
            standard = source.noise(xb, h > 0, n_out, self.drop_rate)
            h = add_noise(h, standard, self.noise)
        return h

    @cached_property
    def _screen(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        """The dense layer with the normalization folded in, for :meth:`_drop_one_dense`'s screen:
        ``A^T`` (float32, one row per input coordinate), ``c`` (float32), and for the error bound the rows'
        L1 norms, ``|c|`` and the largest ``|mean|``."""
        shape = self.input_shape
        std = np.broadcast_to(self.std, shape).reshape(-1).astype(np.float64)
        mean = np.broadcast_to(self.mean, shape).reshape(-1).astype(np.float64)
        a = self._weight64 / std
        c = self._bias64 - a @ mean
        return (np.ascontiguousarray(a.T, dtype=np.float32), c.astype(np.float32), np.abs(a).sum(1), np.abs(c),
                float(np.abs(mean).max()))

    def encode(self, x: Any, masks: MaskSource | None = None, *, mask: np.ndarray | None = None) -> DevicePayload:
        """One input -> the payload that may leave the device (wire format v1, see :mod:`daonet.wire`).

        Args:
            x: one raw input, shaped as the bundle's input (uint8 pixels or floats in the manifest's range).
            masks: where the dropping mask comes from (default: fresh :class:`RandomMasks`).
            mask: an explicit keep-mask over the outputs (overrides ``masks``).
        Returns:
            The payload: ``data`` is the bytes to send; the activations stay on the device.
        Raises:
            InputError: a batch, or a bad shape, dtype, range or NaN/inf.
        """
        xb = self.validate(x)
        if xb.shape[0] != 1:
            raise InputError(f"encode takes one input; got a batch of {xb.shape[0]} (use encode_many)")
        return self._encode_rows(self._drop(xb, masks, mask))[0]

    def encode_many(self, xs: Any, masks: MaskSource | None = None, *,
                    mask: np.ndarray | None = None) -> list[DevicePayload]:
        """Batch form of :meth:`encode`: one payload per input of ``xs`` ``(N, *input_shape)``."""
        return self._encode_rows(self.drop(xs, masks, mask=mask))

    def _encode_rows(self, dropped: np.ndarray) -> list[DevicePayload]:
        return [self._payload(row) for row in dropped]

    def _payload(self, row: np.ndarray, certificate: AnyCertificate | None = None) -> DevicePayload:
        data = encode(row, self.version, self.value_dtype, self.manifest.wire.version)
        # count what is sent (float16 may underflow tiny values to zero; those are not sent): the header's nnz
        return DevicePayload(data, HEADER.unpack_from(data)[6], self.n_outputs, row, certificate)

    @cached_property
    def _weight64(self) -> np.ndarray:
        return self.weight.astype(np.float64)

    @cached_property
    def _bias64(self) -> np.ndarray:
        return self.bias.astype(np.float64)

    @cached_property
    def _block64(self) -> dict[str, np.ndarray]:
        """The block's weights in float64 (same recipe as the first layer: accumulate in float64)."""
        return {name: self.extras[name].astype(np.float64) for step in self.block if step.op != "maxpool"
                for name in (step.weight, step.bias) if name is not None}

    # -- the privacy certificate and policy (see :mod:`daonet.device.certificate`) ----------------
    @cached_property
    def public_mean(self) -> np.ndarray:
        """μ, the public data mean an attacker also knows: the bundle's ``public_mean`` tensor if exported,
        else the per-channel normalization mean broadcast to the input shape. Read-only (a fixed public value)."""
        mu = self.extras.get("public_mean")
        if mu is not None and int(np.asarray(mu).size) == int(np.prod(self.input_shape)):
            out = np.array(mu, dtype=np.float32).reshape(self.input_shape)
        else:
            out = np.broadcast_to(self.mean, self.input_shape).astype(np.float32)
        out.setflags(write=False)
        return out

    @cached_property
    def system(self) -> FirstLayerSystem:
        """The first layer as equations over the raw input (built once, on first use)."""
        if not self.is_linear:
            raise BundleError(f"{BLOCK_NOTE_REFUSAL}; check DeviceModel.is_linear first")
        return FirstLayerSystem(self)

    @cached_property
    def policy(self) -> PrivacyPolicy:
        """The policy stored in the manifest's ``privacy`` block (read once: the manifest is immutable)."""
        return PrivacyPolicy.from_manifest(self.manifest.privacy)

    def _as_sent(self, row: np.ndarray) -> np.ndarray:
        """What the wire will actually carry (float16 can underflow tiny values to zero: those are not sent)."""
        if self.value_dtype == "float16":
            return np.where(row.astype(np.float16) > 0, row, np.float32(0))
        return row

    def certify(self, x: Any, sent: np.ndarray) -> AnyCertificate:
        """Certificate of one input ``x`` and the dropped activation vector that would be sent for it."""
        xb = self.validate(x)
        if xb.shape[0] != 1:
            raise InputError(f"certify takes one input; got a batch of {xb.shape[0]}")
        row = self._as_sent(np.asarray(sent, np.float32).reshape(-1))
        if self.ldp is not None:
            return self._ldp_certificate(row)
        if not self.is_linear:
            return self._block_certificate(row)
        return self._mark_noise(certify(self.system, xb[0], row, self.public_mean))

    def _block_certificate(self, row: np.ndarray, k_before: int | None = None) -> BlockCertificate:
        k = int(np.count_nonzero(row))
        return BlockCertificate(k=k, n=int(np.prod(self.input_shape)), n_outputs=self.n_outputs,
                                block=self.describe_block(), k_before_policy=k if k_before is None else k_before)

    def _ldp_certificate(self, row: np.ndarray) -> LdpCertificate:
        spec = self.ldp
        assert spec is not None
        k = int(np.count_nonzero(row))
        return LdpCertificate(k=k, n=int(np.prod(self.input_shape)), n_outputs=self.n_outputs,
                              epsilon=float(spec.epsilon or 0), delta=float(spec.delta or 0),
                              clip=float(spec.clip or 0), std=spec.std, k_before_policy=k)

    def _mark_noise(self, cert: Certificate) -> Certificate:
        return replace(cert, exact=False, note=NOISE_NOTE) if self.noise is not None else cert

    def encode_certified(self, x: Any, masks: MaskSource | None = None, *, mask: np.ndarray | None = None,
                         policy: PrivacyPolicy | None = None) -> tuple[DevicePayload, AnyCertificate]:
        """Like :meth:`encode`, but enforces the privacy policy and returns the request's certificate, which
        stays on the device.

        Args:
            x, masks, mask: as for :meth:`encode`.
            policy: what the device refuses to send (default: the manifest's ``privacy`` block).
        Returns:
            ``(payload, certificate)``; the payload has the policy's extra drops applied.
        Raises:
            InputError: as for :meth:`encode`, or a revealed-energy policy on a non-linear device block.
        """
        xb = self.validate(x)
        if xb.shape[0] != 1:
            raise InputError(f"encode_certified takes one input; got a batch of {xb.shape[0]}")
        return self._encode_certified(xb, masks, mask, policy)[0]

    def encode_many_certified(self, xs: Any, masks: MaskSource | None = None, *, mask: np.ndarray | None = None,
                              policy: PrivacyPolicy | None = None) -> list[tuple[DevicePayload, AnyCertificate]]:
        """Batch form of :meth:`encode_certified`: random mask, then the policy, then the wire."""
        return self._encode_certified(self.validate(xs), masks, mask, policy)

    def _encode_certified(self, xb: np.ndarray, masks: MaskSource | None, mask: np.ndarray | None,
                          policy: PrivacyPolicy | None) -> list[tuple[DevicePayload, AnyCertificate]]:
        policy = policy if policy is not None else self.policy
        dropped = self._drop(xb, masks, mask)
        out: list[tuple[DevicePayload, AnyCertificate]] = []
        if self.ldp is not None:  # no input-dependent drop: it would void the (epsilon, delta) bound
            if policy.max_revealed_energy is not None:
                raise InputError("a revealed-energy policy cannot be enforced with the Gaussian mechanism "
                                 "(gaussian_ldp): an input-dependent drop would void the (epsilon, delta) bound")
            for row in dropped:
                ldp_cert = self._ldp_certificate(row)
                out.append((self._payload(row, ldp_cert), ldp_cert))
            return out
        if not self.is_linear:
            if policy.max_revealed_energy is not None:
                raise InputError(f"a revealed-energy policy cannot be enforced for this device block: "
                                 f"{BLOCK_NOTE_REFUSAL}")
            for row in dropped:
                sent = self._as_sent(row)
                block_cert = self._block_certificate(sent)
                out.append((self._payload(sent, block_cert), block_cert))
            return out
        mu = self.public_mean
        for x, row in zip(xb, dropped, strict=True):
            sent, cert = apply_policy(self.system, x, self._as_sent(row), policy, mu)
            cert = self._mark_noise(cert)
            out.append((self._payload(sent, cert), cert))
        return out

