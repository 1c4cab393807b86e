"""``daonet demo``: the whole path on an embedded default (train if needed, export, run, report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli import app, console
from ..demo import DEFAULT_CACHE, run_demo


@app.command()
def demo(
    n: Annotated[int, typer.Option(min=1, max=10000, help="MNIST test images to push through")] = 1000,
    cache: Annotated[Path, typer.Option(help="where the demo model and bundles are cached")] = DEFAULT_CACHE,
    retrain: Annotated[bool, typer.Option(help="ignore the cached model and train again")] = False,
) -> None:
    """Train (if needed) a small MNIST model, export it, and push real test images through it."""
    report = run_demo(n=n, cache=cache, retrain=retrain)
    console.print(report.render())
