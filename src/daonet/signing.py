"""Ed25519 signatures for bundles: who made a first layer, not just whether it is intact.

Optional everywhere: the device install stays numpy + httpx + safetensors, and ``cryptography`` is imported
only when a key is actually used (``pip install 'daonet[sign]'``, included in the server install).
Key files: ``NAME.key`` (PKCS#8 PEM, mode 0600, the vendor keeps it) and ``NAME.pub`` (SubjectPublicKeyInfo
PEM, shipped to devices and servers). A bundle's signature covers both halves' canonical content digests
(:func:`daonet.bundle.seal_bundle`), so it pins every manifest field and every weight byte.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import BundleError, DaonetError

__all__ = ["generate_keypair", "load_private_key", "load_public_key", "sign", "verify", "key_id"]


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise DaonetError("bundle signatures need the 'cryptography' package, which this install lacks: "
                          "pip install 'daonet[sign]' (or pass no public key / signing key)") from None
    return serialization, ed25519


def generate_keypair(base: str | Path) -> tuple[Path, Path]:
    """Write ``BASE.key`` (private, 0600, refused if it exists) and ``BASE.pub``; returns both paths."""
    serialization, ed25519 = _crypto()
    base = Path(base)
    priv_path, pub_path = base.with_name(base.name + ".key"), base.with_name(base.name + ".pub")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    base.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DaonetError(f"{priv_path} exists; choose another --out (a signing key is never overwritten)") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv_path, pub_path


def load_private_key(path: str | Path) -> Any:
    serialization, ed25519 = _crypto()
    data = _read_key_file(Path(path), "the signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise DaonetError(f"cannot read the signing key {path}: it is not an unencrypted PEM private key; make one "
                          "with `daonet keygen`") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise DaonetError(f"{path} is not an Ed25519 private key; make one with `daonet keygen`")
    return key


def load_public_key(key: str | Path | bytes) -> Any:
    """A public key from a ``.pub`` PEM file, PEM bytes, or the 32 raw bytes."""
    serialization, ed25519 = _crypto()
    if isinstance(key, bytes) and len(key) == 32:
        return ed25519.Ed25519PublicKey.from_public_bytes(key)
    where = "given as PEM text" if isinstance(key, bytes) else str(key)[:200]
    if isinstance(key, bytes):
        data = key
    else:
        data = _read_key_file(Path(key), "the public key")
    try:
        pub = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):  # the library's ASN.1/PEM wording is not ours
        raise DaonetError(f"cannot read the public key {where}: it is not a PEM public key (expected the OUT.pub "
                          "that `daonet keygen` writes, starting '-----BEGIN PUBLIC KEY-----')") from None
    if not isinstance(pub, ed25519.Ed25519PublicKey):
        raise DaonetError(f"the public key {where} is not an Ed25519 key (make key pairs with `daonet keygen`)")
    return pub


def _read_key_file(path: Path, what: str) -> bytes:
    """The bytes of a key file, or a :class:`DaonetError` in daonet's words (never a raw ``[Errno N]``)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        why = "no such file; make a key pair with `daonet keygen --out NAME` (it writes NAME.key and NAME.pub)"
    except IsADirectoryError:
        why = "it is a directory; pass the key file itself"
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
    raise DaonetError(f"cannot read {what} {path}: {why}")


def key_id(public_key: Any) -> str:
    """16 hex characters naming a public key (SHA-256 of its raw bytes)."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(private_key: Any, message: bytes) -> tuple[str, str]:
    """``(signature base64, key_id)``."""
    return base64.b64encode(private_key.sign(message)).decode("ascii"), key_id(private_key.public_key())


def verify(public_keys: Sequence[Any], signature: str | None, signer: str | None, message: bytes,
           where: str) -> None:
    """Raise :class:`BundleError` unless ``signature`` is a valid signature of ``message`` by one of the keys."""
    from cryptography.exceptions import InvalidSignature

    known = ", ".join(key_id(k) for k in public_keys)
    if signature is None:
        raise BundleError(f"{where} is not signed, and a signed bundle is required (trusted keys: {known}); "
                          "export it with `daonet export --sign KEY`")
    for pub in public_keys:
        if key_id(pub) != signer:
            continue
        try:
            pub.verify(base64.b64decode(signature, validate=True), message)
            return
        except (InvalidSignature, ValueError):
            break
    raise BundleError(f"{where} is not signed by a trusted key (signed by {signer!s:.16}, trusted: {known}), or "
                      "was modified after signing; get the bundle from its vendor or re-export and sign it")
