"""``daonet plan``: search device head, drop rate and defence for the least leakage beyond the label."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from ..errors import DaonetError, InputError
from ..settings import cli_parameters, from_cli
from ..studies.plan import GRID_SETTINGS, PLAN_ATTACKS, PlanConfig, PlanSpace, parse_grid
from .common import console, fail

__all__ = ["plan", "config_from_cli", "PLAN_ATTACKS"]

# PlanSpace fields whose option reads better in the plural (a range or a list to try)
_SPACE_OPTIONS = {"drop_rate": "drop_rates"}


def _space_parameters() -> list[inspect.Parameter]:
    return [p.replace(name=_SPACE_OPTIONS.get(p.name, p.name)) for p in cli_parameters(PlanSpace)]


def config_from_cli(values: dict[str, Any], grid: list[str] | None) -> PlanConfig:
    """The :class:`PlanConfig` of ``daonet plan``'s option values, validated once."""
    space_values = {field: values.pop(option) for field, option in
                    ((f, _SPACE_OPTIONS.get(f, f)) for f in PlanSpace.__dataclass_fields__) if option in values}
    try:
        space = from_cli(PlanSpace, space_values)
    except InputError as exc:  # name the option as the user typed it
        msg = str(exc)
        for field, option in _SPACE_OPTIONS.items():
            msg = msg.replace(f"--{field.replace('_', '-')} ", f"--{option.replace('_', '-')} ")
        raise InputError(msg) from None
    cfg: PlanConfig = from_cli(PlanConfig, values, space=space, grid=parse_grid(grid) if grid else None)
    cfg.validate()
    return cfg

def plan(*, grid: list[str] | None = None, **settings: Any) -> None:
    """Train, export and audit candidate device heads; keep every trial in a study database; write the Pareto set
    (accuracy vs leakage beyond the label) and export the least-leaking feasible bundle to OUT/chosen."""
    from ..studies.plan import run_plan

    try:
        result = run_plan(config_from_cli(settings, grid), log=lambda s: console.print(s, highlight=False,
                                                                                        markup=False))
    except DaonetError as exc:
        fail(str(exc))
    if not result.claim:
        console.print("[bold yellow]quick budget: attackers stopped early; NOT a privacy claim[/]")
    console.print(f"{len(result.points)} trials, {len(result.pareto)} on the feasible Pareto front")
    for p in result.pareto:
        console.print(f"  trial {p.trial}: {p.candidate.describe()}: accuracy {p.accuracy:.3f}, leakage "
                      f"{'>= ' if p.leakage_lower_bound else ''}{p.leakage:+.3f}, {p.flops:,} FLOPs, "
                      f"{p.bytes_per_request:.0f} B, {p.device_us:.0f} µs", highlight=False, markup=False)
    if result.chosen is None:
        console.print("[yellow]no candidate met the constraints; loosen them or run more trials[/]")
    else:
        console.print(f"[green]chosen[/] trial {result.chosen.trial} -> {result.out / 'chosen'} "
                      f"(plot: {result.out / 'pareto.png'})")


def _signature() -> inspect.Signature:
    """``daonet plan``'s options: every declared :class:`PlanConfig` and :class:`PlanSpace` setting, and the grid."""
    params = cli_parameters(PlanConfig)
    params = [p.replace(default=inspect.Parameter.empty) if p.name == "dataset" else p for p in params]  # required
    grid = inspect.Parameter("grid", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        list[str] | None, typer.Option(help=f"instead of a search, every combination of NAME=V1,V2,... (repeatable; "
                                            f"NAME: {', '.join(GRID_SETTINGS)}; max_revealed_energy and "
                                            "ldp_epsilon: none = off); --trials is ignored")])
    return inspect.Signature([*params, *_space_parameters(), grid], return_annotation=None)


plan.__signature__ = _signature()  # type: ignore[attr-defined]
plan.__annotations__ = {p.name: p.annotation for p in plan.__signature__.parameters.values()}  # type: ignore
