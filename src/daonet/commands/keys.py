"""``daonet hash-key``: make an API key and the hash the server stores."""

from __future__ import annotations

import sys
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
