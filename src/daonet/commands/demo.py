"""``daonet demo``: the whole path on the shipped default (verify the signed, audited bundle, serve it on
loopback, predict over HTTP, report with its audited numbers, stop the server)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console

DEFAULT_CACHE = Path(".daonet-cache/demo")  # daonet.studies.demo.DEFAULT_CACHE (that module imports torch)


def demo(
    n: Annotated[int, typer.Option(min=1, max=10000, help="MNIST test images to push through")] = 1000,
    cache: Annotated[Path, typer.Option(help="with --retrain: where the fresh model and bundles go")] = DEFAULT_CACHE,
    retrain: Annotated[bool, typer.Option(help="train a fresh model from the default recipe instead of serving the "
                                               "shipped, audited one (its privacy is then unaudited)")] = False,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="device requests in flight at once")] = 16,
) -> None:
    """Serve the shipped, signed, audited MNIST default on loopback, predict real test images over HTTP, and print
    what its audit found (--retrain: a freshly trained, unaudited model instead)."""
    from ..studies.demo import run_demo

    report = run_demo(n=n, cache=cache, retrain=retrain, concurrency=concurrency)
    console.print(report.render())
