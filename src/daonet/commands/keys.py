"""``daonet hash-key`` (an API key and the hash the server stores) and ``daonet keygen`` (a bundle signing key)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import DaonetError
from .common import console, fail
from .common import stdout as out


def hash_key(
    stdin: Annotated[bool, typer.Option("--stdin", help="hash a key read from stdin (at least 22 random "
                                                         "characters), do not generate one")] = False,
) -> None:
    """Make a 256-bit API key and its hash for `daonet serve --api-key-hash`. The server stores only the hash."""
    from ..server.config import generate_api_key, hash_api_key

    key = sys.stdin.readline().rstrip("\r\n") if stdin else generate_api_key()
    try:
        digest = hash_api_key(key)
    except DaonetError as exc:
        fail(str(exc))
    if not stdin:
        out.print(f"key:  {key}   (give it to the client, e.g. DAONET_API_KEY; it is not stored anywhere)",
                  highlight=False, soft_wrap=True)
    out.print(f"hash: {digest}", highlight=False, soft_wrap=True)
    if not stdin:
        console.print("serve with: daonet serve BUNDLE --api-key-hash 'HASH'  (or DAONET_API_KEY_HASH)")


def keygen(
    base: Annotated[Path, typer.Option("--out", help="writes OUT.key (private, mode 0600: keep it with whoever "
                                                     "exports bundles) and OUT.pub (for devices and servers)")
                    ] = Path("daonet-signing"),
) -> None:
    """Make an Ed25519 key pair to sign bundles (`daonet export --sign OUT.key`)."""
    from ..signing import generate_keypair, key_id, load_public_key

    try:
        priv, pub = generate_keypair(base)
        kid = key_id(load_public_key(pub))
    except DaonetError as exc:
        fail(str(exc))
    out.print(f"private key: {priv}   (keep it secret: `daonet export RUN --sign {priv}`)", highlight=False,
              soft_wrap=True)
    out.print(f"public key:  {pub}   (key id {kid}: `daonet serve ... --public-key {pub}`, "
              f"`DeviceModel.load(..., public_keys=['{pub}'])`)", highlight=False, soft_wrap=True)
