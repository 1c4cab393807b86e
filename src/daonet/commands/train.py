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


def _given_on_command_line(ctx: typer.Context | None, names: Any) -> set[str]:
    """The settings among ``names`` the user typed (not defaults): they override a ``--recommended`` recipe."""
    if ctx is None:
        return set()
    return {k for k in names if (src := ctx.get_parameter_source(k)) is not None
            and src.name in ("COMMANDLINE", "ENVIRONMENT")}


def train(*, ctx: typer.Context | None = None, model_opt: list[str] | None = None, recommended: bool = False,
          goal: str = "certificate",
          out: Path = Path("runs/mnist-mlp"), **settings: Any) -> None:
    """Train a split model with dropped activation outputs; writes model, config and metrics.json."""
    from dataclasses import replace

    from ..train import recipe, save_run
    from ..train import train as run_training

    try:
        cfg = from_cli(TrainConfig, settings, model_kwargs=parse_kwargs(model_opt))
        if recommended:  # the recipe's settings, except the options given on the command line (those win)
            settings = recipe(cfg.dataset, cfg.model, goal)
            kwargs = {**settings.pop("model_kwargs"), **cfg.model_kwargs}
            given = _given_on_command_line(ctx, settings)
            cfg = replace(cfg, **{k: v for k, v in settings.items() if k not in given}, model_kwargs=kwargs)
            console.print(f"recommended operating point ({goal}): "
                          + ", ".join(f"{k}={getattr(cfg, k)}" + (" (yours)" if k in given else "")
                                      for k in settings)
                          + "".join(f", {k}={v}" for k, v in kwargs.items()))
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
        inspect.Parameter("ctx", kw, default=None, annotation=typer.Context),
        *cli_parameters(TrainConfig),
        inspect.Parameter("model_opt", kw, default=None, annotation=Annotated[list[str] | None, typer.Option(
            help="architecture option KEY=VALUE, repeatable")]),
        inspect.Parameter("recommended", kw, default=False, annotation=Annotated[bool, typer.Option(
            help="use the measured default operating point for this dataset/model (drop rate, defences, epochs; "
                 "see README); options you give override the recipe's")]),
        inspect.Parameter("goal", kw, default="certificate", annotation=Annotated[str, typer.Option(
            help="with --recommended: certificate (the algebraic per-request certificate; the shipped defaults) or "
                 "least-leakage (the Gaussian mechanism, the conditional bottleneck and the adversary pool; "
                 "measured data sets only)")]),
        inspect.Parameter("out", kw, default=Path("runs/mnist-mlp"),
                          annotation=Annotated[Path, typer.Option(help="run directory to write")]),
    ], return_annotation=None)


train.__signature__ = _signature()  # type: ignore[attr-defined]
train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()}  # type: ignore
