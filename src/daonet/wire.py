"""The sparse payload: the only bytes that ever leave the device (wire formats v1 and v2, numpy only).

Layout, all integers little-endian (simple enough for a few lines of JavaScript ``DataView``)::

    offset  size  field
    0       4     magic  b"DAO1"
    4       1     wire format version (1)
    5       1     index width in bytes: 2 (uint16) or 4 (uint32)
    6       1     value width in bytes: 2 (float16) or 4 (float32)
    7       1     L = length of the model version string (ASCII)
    8       4     n_outputs: size of the first layer's (flattened, C-order) output
    12      4     nnz: number of transmitted non-zero values
    16      L     model version (ASCII, e.g. "3f2a9c0d1e4b5a61")
    16+L    nnz*index_width   indices, strictly increasing, each < n_outputs
    ...     nnz*value_width   values, finite and > 0 (they are ReLU outputs)

Nothing else is sent: no raw input, no mask, no device key. Dropped outputs and ReLU zeros are
both simply absent, so the server cannot tell them apart.

**Version 2** has the same layout; its values are finite and non-zero but may be negative (float32 only): the
``gaussian_ldp`` mode adds noise to every kept output, ReLU zeros included (docs/privacy-ldp.md). A model
speaks one version (``wire.version`` of its manifests) and refuses the other: a v1 reader refuses v2 with
"wire format version 2 is not supported", a v2 model refuses a v1 payload (it would carry no noise).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidPayloadError, MalformedPayloadError, PayloadError

MAGIC = b"DAO1"
WIRE_VERSION = 1
SIGNED_WIRE_VERSION = 2  # values may be negative (gaussian_ldp)
WIRE_VERSIONS = (WIRE_VERSION, SIGNED_WIRE_VERSION)
HEADER = struct.Struct("<4sBBBBII")
_INDEX_DTYPES: dict[int, np.dtype[Any]] = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
_VALUE_DTYPES: dict[int, np.dtype[Any]] = {2: np.dtype("<f2"), 4: np.dtype("<f4")}
VALUE_DTYPE_NAMES = {"float16": 2, "float32": 4}

__all__ = ["SparsePayload", "Frame", "encode", "decode", "read_frame", "MAGIC", "WIRE_VERSION", "SIGNED_WIRE_VERSION"]


@dataclass(frozen=True)
class SparsePayload:
    """Decoded payload: which first-layer outputs survived, and their values."""

    model_version: str
    n_outputs: int
    indices: np.ndarray  # int64, strictly increasing
    values: np.ndarray  # float32, > 0 (v1) or non-zero (v2)
    wire_version: int = WIRE_VERSION

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    def to_dense(self) -> np.ndarray:
        dense = np.zeros(self.n_outputs, dtype=np.float32)
        dense[self.indices] = self.values
        return dense

    def to_json(self) -> dict:
        """The JSON form of the same payload (for debugging with curl)."""
        return {
            "wire_version": self.wire_version,
            "model_version": self.model_version,
            "n_outputs": self.n_outputs,
            "indices": self.indices.tolist(),
            "values": self.values.tolist(),
        }


def encode(activations: np.ndarray, model_version: str, value_dtype: str = "float32",
           wire_version: int = WIRE_VERSION) -> bytes:
    """Sparse-encode one request's dropped activation vector (any shape; flattened C-order). ``wire_version`` 2
    carries signed values (float32 only); zeros are left out in both versions."""
    flat = np.asarray(activations).reshape(-1)
    if value_dtype not in VALUE_DTYPE_NAMES:
        raise PayloadError(f"value dtype {value_dtype!r} is not supported; use 'float32' or 'float16'")
    if wire_version not in WIRE_VERSIONS:
        raise PayloadError(f"wire format version {wire_version} is not supported; use 1 or 2")
    if wire_version == SIGNED_WIRE_VERSION and value_dtype != "float32":
        raise PayloadError("wire format version 2 (signed values) carries float32 values only")
    indices = np.flatnonzero(flat)
    sent = flat[indices]  # NaN, inf and negative values are non-zero: checking the sent ones checks them all
    if not np.isfinite(sent).all():
        raise PayloadError("activations contain NaN/inf; check the input and the first layer's weights")
    if wire_version == WIRE_VERSION and (sent < 0).any():
        raise PayloadError("activations are negative; the payload carries ReLU outputs, which are >= 0")
    vbytes = VALUE_DTYPE_NAMES[value_dtype]
    values = sent.astype(_VALUE_DTYPES[vbytes])
    if vbytes == 2:  # a tiny ReLU output can underflow to 0 in float16: don't send zeros
        keep = values > 0
        indices, values = indices[keep], values[keep]
    version = model_version.encode("ascii")
    if len(version) > 255:
        raise PayloadError("model version is longer than 255 characters")
    n = flat.size
    ibytes = 2 if n <= 0xFFFF else 4
    header = HEADER.pack(MAGIC, wire_version, ibytes, vbytes, len(version), n, indices.size)
    return b"".join([header, version, indices.astype(_INDEX_DTYPES[ibytes]).tobytes(), values.tobytes()])


@dataclass(frozen=True)
class Frame:
    """The header of a payload, checked for framing only (not yet for content)."""

    model_version: str
    index_width: int
    value_width: int
    n_outputs: int
    nnz: int
    offset: int  # where the indices start
    wire_version: int = WIRE_VERSION


def read_frame(data: bytes) -> Frame:
    """Check the framing of a binary payload; raises :class:`MalformedPayloadError` (HTTP 400).

    Separating framing from content lets a server check the model version before judging content.
    """
    if len(data) < HEADER.size:
        raise MalformedPayloadError(f"payload is truncated: {len(data)} bytes, the header alone is {HEADER.size}")
    magic, ver, ibytes, vbytes, vlen, n, nnz = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MalformedPayloadError(f"payload does not start with the magic bytes {MAGIC!r}; is it a daonet "
                                    "payload? (raw inputs are never accepted)")
    if ver not in WIRE_VERSIONS:
        raise MalformedPayloadError(f"wire format version {ver} is not supported; this server speaks 1 and 2")
    if ibytes not in _INDEX_DTYPES:
        raise MalformedPayloadError(f"index width {ibytes} is invalid; it must be 2 or 4 bytes")
    if vbytes not in _VALUE_DTYPES:
        raise MalformedPayloadError(f"value width {vbytes} is invalid; it must be 2 or 4 bytes")
    expected_len = HEADER.size + vlen + nnz * (ibytes + vbytes)
    if len(data) != expected_len:
        what = "truncated" if len(data) < expected_len else "too long"
        raise MalformedPayloadError(f"payload is {what}: {len(data)} bytes, the header announces {expected_len}")
    try:
        version = data[HEADER.size:HEADER.size + vlen].decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedPayloadError("model version in the payload is not ASCII") from exc
    return Frame(version, ibytes, vbytes, n, nnz, HEADER.size + vlen, ver)


def decode(data: bytes, *, expected_outputs: int | None = None, max_nnz: int | None = None,
           frame: Frame | None = None, wire_version: int = WIRE_VERSION) -> SparsePayload:
    """Parse and validate a payload: :class:`MalformedPayloadError` for framing, :class:`InvalidPayloadError`
    for content. Pass ``frame`` when :func:`read_frame` already ran (the server checks the version between).
    ``wire_version``: the one version the model speaks (its manifest's ``wire.version``); the other is refused."""
    f = frame or read_frame(data)
    if f.wire_version != wire_version:
        what = "signed values: a gaussian_ldp device" if f.wire_version == SIGNED_WIRE_VERSION else "no LDP noise"
        raise MalformedPayloadError(f"wire format version {f.wire_version} ({what}) is not supported by this model, "
                                    f"which speaks version {wire_version}; use the model's device bundle")
    n, nnz = f.n_outputs, f.nnz
    if expected_outputs is not None and n != expected_outputs:
        raise InvalidPayloadError(f"payload says the first layer has {n} outputs; this model's has {expected_outputs}")
    if nnz > n:
        raise InvalidPayloadError(f"payload has {nnz} non-zeros but the first layer has only {n} outputs")
    if max_nnz is not None and nnz > max_nnz:
        raise InvalidPayloadError(f"payload has {nnz} non-zeros, more than the limit of {max_nnz}")
    indices = np.frombuffer(data, _INDEX_DTYPES[f.index_width], count=nnz, offset=f.offset).astype(np.int64)
    values = np.frombuffer(data, _VALUE_DTYPES[f.value_width], count=nnz,
                           offset=f.offset + nnz * f.index_width).astype(np.float32)
    return validate_sparse(f.model_version, n, indices, values, signed=wire_version == SIGNED_WIRE_VERSION)


def validate_sparse(model_version: str, n_outputs: int, indices, values, *, signed: bool = False) -> SparsePayload:
    """Check indices/values (shared by the binary and the JSON form); ``signed``: wire version 2."""
    try:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused below
            val = np.asarray(values, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError, OverflowError):  # numpy's text names C types: not for clients
        raise InvalidPayloadError(f"indices must be integers in [0, {n_outputs}) and values finite float32 "
                                  "numbers > 0") from None
    if idx.size != val.size:
        raise InvalidPayloadError(f"{idx.size} indices but {val.size} values; they must pair up")
    if idx.size > n_outputs:
        raise InvalidPayloadError(f"payload has {idx.size} non-zeros but the first layer has only {n_outputs} outputs")
    if idx.size:
        if idx.min() < 0 or idx.max() >= n_outputs:
            bad = int(idx[(idx < 0) | (idx >= n_outputs)][0])
            raise InvalidPayloadError(f"index {bad} is out of range; indices must be in [0, {n_outputs})")
        steps = np.diff(idx)
        if (steps == 0).any():
            dup = int(idx[1:][steps == 0][0])
            raise InvalidPayloadError(f"index {dup} appears more than once; each output may be sent once")
        if (steps < 0).any():
            raise InvalidPayloadError("indices are not in increasing order; sort them (with their values)")
    if not np.isfinite(val).all():
        raise InvalidPayloadError("values contain NaN or inf (or numbers beyond float32's range); ReLU outputs "
                                  "are finite")
    if not signed and (val < 0).any():
        raise InvalidPayloadError("values contain negative numbers; ReLU outputs cannot be negative "
                                  "(every sent value must be > 0)")
    if (val == 0).any():  # also -0.0
        raise InvalidPayloadError(f"values contain 0; every sent value must be {'non-zero' if signed else '> 0'} (a "
                                  "zero output is left out: absent means zero)")
    return SparsePayload(model_version, int(n_outputs), idx, val,
                         SIGNED_WIRE_VERSION if signed else WIRE_VERSION)
