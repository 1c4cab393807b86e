"""``daonet sweep``: train and evaluate over drop rates; writes a markdown + JSON table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, fail

# the studies import torch: loaded when the command runs, so `daonet --help` works on a torch-free install


def sweep(
    task: Annotated[list[str] | None, typer.Option(help="repeatable; default all tasks (mnist-mlp, ...)")] = None,
    drop_rate: Annotated[list[float] | None, typer.Option(help="repeatable; default 0 .5 .75 .9 .95")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="override each task's epochs")] = None,
    out: Annotated[Path, typer.Option(help="writes sweep.md and sweep.json here")] = Path("reports/sweep"),
) -> None:
    """Accuracy vs drop rate for MNIST (mlp, cnn), Fashion-MNIST (cnn) and ECG5000 (cnn1d)."""
    from ..studies.sweep import DROP_RATES, TASKS, run_sweep, to_markdown

    tasks = task or list(TASKS)
    for t in tasks:
        if t not in TASKS:
            fail(f"unknown task {t!r}; choose from {', '.join(TASKS)}")
    rates = tuple(drop_rate) if drop_rate else DROP_RATES
    for p in rates:
        if not 0 <= p < 1:
            fail(f"--drop-rate must be in [0, 1), got {p}")
    rows = run_sweep(tasks, rates, epochs, out)
    console.print(to_markdown(rows))
    console.print(f"[green]written[/] {out / 'sweep.md'} and {out / 'sweep.json'}")
