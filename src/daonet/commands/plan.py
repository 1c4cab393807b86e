"""``daonet plan``: search device head, drop rate and defence for the least leakage beyond the label."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import DaonetError
from .common import console, fail

PLAN_ATTACKS = ("min_norm", "rmle_prior", "decoder_mlp", "decoder_conv", "decoder_adaptive", "decoder_prediction",
                "decoder_label")  # daonet.studies.plan.PLAN_ATTACKS (that module imports torch)


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        fail(f"{what} takes comma-separated numbers, got {text!r}")


def plan(
    dataset: Annotated[str, typer.Option(help="the task's data set (mnist, ecg5000, digits, ucr:NAME, npz:PATH, ...)")],
    model: Annotated[str, typer.Option(help="architecture from the zoo (mlp, cnn, cnn1d)")] = "mlp",
    out: Annotated[Path, typer.Option(help="writes plan.db (the study), pareto.json, pareto.png, chosen/")]
    = Path("reports/plan"),
    trials: Annotated[int, typer.Option(min=1, help="candidates to train and audit in all (a resumed plan counts "
                                                    "the finished ones)")] = 20,
    budget: Annotated[str, typer.Option(help="audit budget per candidate: full (converged attackers: privacy "
                                             "claims) or quick (a smoke test, NOT a privacy claim)")] = "full",
    min_accuracy: Annotated[float, typer.Option(help="accuracy floor (test accuracy with dropping)")] = 0.0,
    max_leakage: Annotated[float | None, typer.Option(help="leakage cap: best attack minus the label-only decoder")]
    = None,
    max_flops: Annotated[float | None, typer.Option(help="device budget: FLOPs per request")] = None,
    max_bytes: Annotated[float | None, typer.Option(help="device budget: payload bytes per request")] = None,
    max_device_us: Annotated[float | None, typer.Option(help="device budget: encode µs per request (measured here)")]
    = None,
    device_layers: Annotated[str, typer.Option(help="device depths to try (1: the paper's first layer)")] = "1,2",
    block_widths: Annotated[str, typer.Option(help="block widths to try (depth >= 2)")] = "8,16,32,64",
    drop_rates: Annotated[str, typer.Option(help="drop-rate range LOW,HIGH")] = "0,0.97",
    adversary_weights: Annotated[str, typer.Option(help="min-max training weights to try")] = "0,2",
    grid: Annotated[list[str] | None, typer.Option(help="instead of a search, every combination of NAME=V1,V2,... "
                                                        "(repeatable; NAME: device_layers, block_width, drop_rate, "
                                                        "adversary_weight, noise_std, quantize_levels, nopeek_weight, "
                                                        "max_revealed_energy (none = off)); --trials is ignored")]
    = None,
    torch_device: Annotated[str, typer.Option(help="where the attackers train: auto (cuda when present), cpu, "
                                                   "cuda[:N]")] = "auto",
    epochs: Annotated[int | None, typer.Option(min=1, help="training epochs (default: the recipe's)")] = None,
    n_train: Annotated[int | None, typer.Option(min=2, help="training subset (quick plans)")] = None,
    n_test: Annotated[int | None, typer.Option(min=2, help="test subset")] = None,
    audit_n_test: Annotated[int | None, typer.Option(min=2, help="audited requests per candidate")] = None,
    attacks: Annotated[str, typer.Option(help="attacks per candidate (must include decoder_label, the floor)")]
    = ",".join(PLAN_ATTACKS),
    storage: Annotated[str | None, typer.Option(help="study database, any SQLAlchemy URL (default: "
                                                     "sqlite:///OUT/plan.db)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="trials in parallel on a local Ray")] = 1,
    ray_address: Annotated[str | None, typer.Option(help="run trials on this Ray cluster ('auto' or host:port)")]
    = None,
    seed: Annotated[int, typer.Option(help="search and training seed")] = 0,
    data_root: Annotated[Path | None, typer.Option(help="local folder with the data set's files")] = None,
) -> None:
    """Train, export and audit candidate device heads; keep every trial in a study database; write the Pareto set
    (accuracy vs leakage beyond the label) and export the least-leaking feasible bundle to OUT/chosen."""
    from ..studies.plan import PlanConfig, PlanSpace, parse_grid, run_plan

    try:
        lo_hi = _floats(drop_rates, "--drop-rates")
        if len(lo_hi) != 2:
            fail(f"--drop-rates takes LOW,HIGH, got {drop_rates!r}")
        space = PlanSpace(device_layers=tuple(int(v) for v in _floats(device_layers, "--device-layers")),
                          block_widths=tuple(int(v) for v in _floats(block_widths, "--block-widths")),
                          drop_rate=(lo_hi[0], lo_hi[1]),
                          adversary_weights=_floats(adversary_weights, "--adversary-weights"))
        cfg = PlanConfig(dataset=dataset, model=model, out=str(out), trials=trials, budget=budget,
                         min_accuracy=min_accuracy, max_leakage=max_leakage, max_flops=max_flops, max_bytes=max_bytes,
                         max_device_us=max_device_us, epochs=epochs, n_train=n_train, n_test=n_test,
                         audit_n_test=audit_n_test, attacks=tuple(a.strip() for a in attacks.split(",") if a.strip()),
                         storage=storage, workers=workers, ray_address=ray_address,
                         seed=seed, data_root=str(data_root) if data_root else None, space=space,
                         grid=parse_grid(grid) if grid else None, torch_device=torch_device)
        result = run_plan(cfg, log=lambda s: console.print(s, highlight=False, markup=False))
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
