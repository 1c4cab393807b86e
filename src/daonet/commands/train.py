"""``daonet train``: train a split model with dropped activation outputs.

Every training option comes from its declaration on :class:`daonet.train_config.TrainConfig` (default, help,
bounds, choices; :func:`daonet.settings.cli_parameters`); only what is not a config field is written here: the
run folder, the free-form architecture options and the recommended operating point.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import DaonetError
from ..settings import cli_parameters, from_cli
from ..train_config import TrainConfig
from .common import console, fail, parse_kwargs


def train(*, model_opt: list[str] | None = None, recommended: bool = False, goal: str = "certificate",
          out: Path = Path("runs/mnist-mlp"), **settings: Any) -> None:
    """Train a split model with dropped activation outputs; writes model, config and metrics.json."""
    from dataclasses import replace

    from ..train import recipe, save_run
    from ..train import train as run_training

    try:
        cfg = from_cli(TrainConfig, settings, model_kwargs=parse_kwargs(model_opt))
        if recommended:
            settings = recipe(cfg.dataset, cfg.model, goal)  # the recipe's settings replace the command line's
            kwargs = {**cfg.model_kwargs, **settings.pop("model_kwargs")}
            cfg = replace(cfg, **settings, model_kwargs=kwargs)
            console.print(f"recommended operating point ({goal}): "
                          + ", ".join(f"{k}={v}" for k, v in {**settings, **kwargs}.items()))
        elif goal != "certificate":
            raise DaonetError("--goal picks which recommended operating point --recommended uses: add --recommended")
        cfg.validate()
    except DaonetError as exc:
        fail(str(exc))
    result = run_training(cfg, progress=True)
    save_run(result, out)
    m = result.metrics
    acc = m["test_accuracy"]
    console.print(
        f"[green]done[/] test accuracy {acc['mean']:.4f} ± {acc['std']:.4f} (dropping p={cfg.drop_rate}), "
        f"surviving outputs {m['surviving_outputs']['mean']:.1f} of {m['n_outputs']}, "
        f"{m['train_time_s']:.1f} s -> {out / 'metrics.json'}"
    )


def _signature() -> inspect.Signature:
    """``daonet train``'s options: every declared :class:`TrainConfig` setting, then the ones that are not fields."""
    kw = inspect.Parameter.KEYWORD_ONLY
    return inspect.Signature([
        *cli_parameters(TrainConfig),
        inspect.Parameter("model_opt", kw, default=None, annotation=Annotated[list[str] | None, typer.Option(
            help="architecture option KEY=VALUE, repeatable")]),
        inspect.Parameter("recommended", kw, default=False, annotation=Annotated[bool, typer.Option(
            help="use the measured default operating point for this dataset/model (drop rate, defences, epochs; "
                 "see README)")]),
        inspect.Parameter("goal", kw, default="certificate", annotation=Annotated[str, typer.Option(
            help="with --recommended: certificate (the algebraic per-request certificate; the shipped defaults) or "
                 "least-leakage (the Gaussian mechanism, the conditional bottleneck and the adversary pool; "
                 "measured data sets only)")]),
        inspect.Parameter("out", kw, default=Path("runs/mnist-mlp"),
                          annotation=Annotated[Path, typer.Option(help="run directory to write")]),
    ], return_annotation=None)


train.__signature__ = _signature()  # type: ignore[attr-defined]
train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()}  # type: ignore
