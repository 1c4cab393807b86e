"""``daonet demo``: the whole path on an embedded default (train if needed, export, serve on loopback,
predict over HTTP, report, stop the server)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console

DEFAULT_CACHE = Path(".daonet-cache/demo")  # daonet.studies.demo.DEFAULT_CACHE (that module imports torch)


def demo(
    n: Annotated[int, typer.Option(min=1, max=10000, help="MNIST test images to push through")] = 1000,
    cache: Annotated[Path, typer.Option(help="where the demo model and bundles are cached")] = DEFAULT_CACHE,
    retrain: Annotated[bool, typer.Option(help="ignore the cached model and train again")] = False,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="device requests in flight at once")] = 16,
) -> None:
    """Train (if needed) a small MNIST model, serve it on loopback, and predict real test images over HTTP."""
    from ..studies.demo import run_demo

    report = run_demo(n=n, cache=cache, retrain=retrain, concurrency=concurrency)
    console.print(report.render())
