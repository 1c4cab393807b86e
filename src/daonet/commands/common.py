"""Helpers every command shares: the message console, ``fail`` and ``KEY=VALUE`` option parsing."""

from __future__ import annotations

import json
from typing import Any, NoReturn

import typer
from rich.console import Console

console = Console(stderr=True)  # messages and progress; results go to stdout
stdout = Console()


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` as an error and exit with ``code`` (2: bad usage or input)."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)  # paths and commands stay copyable
    raise typer.Exit(code)


def parse_kwargs(pairs: list[str] | None) -> dict[str, Any]:
    """``--model-opt hidden=1024`` pairs -> {"hidden": 1024} (values parsed as JSON when possible)."""
    out: dict[str, Any] = {}
    for item in pairs or []:
        if "=" not in item:
            fail(f"--model-opt takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
