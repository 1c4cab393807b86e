"""``daonet audit``: attack a bundle's payloads and report what the server can learn.

Two forms, one option list (:func:`audit`):

* ``daonet audit BUNDLE_DIR --dataset mnist --out reports/mnist`` audits one exported bundle
  (``daonet audit bundle BUNDLE_DIR`` is the same: ``bundle`` is the group's default command).
* ``daonet audit frontier --dataset mnist --model mlp --drop-rates 0,0.5,0.9,0.97 --out reports/frontier``
  trains, exports and audits one model per drop rate (all cached in ``--out``) and draws the frontier.

``daonet.cli`` registers :func:`audit` as ``bundle`` and :data:`frontier` (the same function with the
target fixed) as ``frontier``, under :class:`AuditGroup`.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .common import console, fail, parse_kwargs

FRONTIER = "frontier"


def _floats(text: str, what: str) -> list[float]:
    items = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    try:
        return [float(t) for t in items]
    except ValueError:
        fail(f"{what} takes numbers separated by commas or spaces, got {text!r}")


def _attacks(text: str) -> tuple[str, ...]:
    from ..audit import ATTACKS
    from ..audit.core import DEFAULT_ATTACKS
    from ..audit.registry import ALIASES

    if text.strip() in ("all", ""):
        return DEFAULT_ATTACKS
    items = tuple(t for t in re.split(r"[,\s]+", text.strip()) if t)
    bad = [a for a in items if a not in ATTACKS and a not in ALIASES]
    if bad:
        fail(f"unknown attack(s) {', '.join(bad)}; choose from {', '.join(ATTACKS)} (or 'all')")
    return items


def audit(
    target: Annotated[str, typer.Argument(help="a bundle directory from `daonet export`")],
    dataset: Annotated[str, typer.Option(help="the data set the bundle was trained on (digits, mnist, "
                                              "fashion-mnist, ecg5000, cifar10, npz:PATH, csv:DIR, "
                                              "ucr:NAME)")] = "mnist",
    out: Annotated[Path, typer.Option(help="writes audit.json + report.html (frontier: one folder per rate)")]
    = Path("reports/audit"),
    budget: Annotated[str, typer.Option(help="full: every attacker to convergence on all public data (privacy "
                                             "claims); quick: seconds, for tests/CI, NOT a privacy claim")] = "full",
    n_test: Annotated[int | None, typer.Option(min=2, help="held-out test requests to attack (default: the "
                                                            "budget's)")] = None,
    public_size: Annotated[int | None, typer.Option(min=0, help="attacker's public examples, a split of the "
                                                                "training set (0 = all of it; default: the budget's)")]
    = None,
    decoder_epochs: Annotated[int | None, typer.Option(min=1, help="hard cap on decoder epochs (they stop earlier "
                                                                   "once the held-out score stops improving)")] = None,
    decoder_patience: Annotated[int | None, typer.Option(min=1, help="early-stopping patience in epochs")] = None,
    decoder_hidden: Annotated[int | None, typer.Option(min=8, help="decoder hidden width")] = None,
    decoder_precision: Annotated[str | None, typer.Option(help="decoder training precision: auto (bf16 autocast "
                                                               "on CPUs with native bf16, TF32 on CUDA), fp32, "
                                                               "bf16")] = None,
    rmle_steps: Annotated[int | None, typer.Option(min=10, help="optimizer steps of the regularized inversions")]
    = None,
    torch_device: Annotated[str, typer.Option(help="where attackers train: auto (cuda if present), cpu, cuda")]
    = "auto",
    attacks: Annotated[str, typer.Option(help="comma-separated attack names (see `daonet.audit.available_attacks`) "
                                              "plus 'repeated', or all")] = "all",
    repeats: Annotated[str, typer.Option(help="repeated-query counts K")] = "1,5,20",
    n_repeat: Annotated[int | None, typer.Option(min=1, help="inputs used for the repeated-query attack")] = None,
    policy: Annotated[str, typer.Option(help="device policy: auto (as the manifest says), on, off")] = "auto",
    max_revealed_energy: Annotated[float | None, typer.Option(help="audit with this device policy threshold")]
    = None,
    policy_thresholds: Annotated[str, typer.Option(help="also measure accuracy/leakage at these policy "
                                                        "thresholds, e.g. 0.5,0.3,0.2")] = "",
    seed: int = 0,
    budget_curve: Annotated[bool, typer.Option(help="retrain the strongest decoder on smaller public sets "
                                                    "(the saturation check of a privacy claim)")] = True,
    curve_sizes: Annotated[str, typer.Option(help="public-set sizes of the budget curve, e.g. 2500,10000 "
                                                  "(default: the budget's, plus half of the public data)")] = "",
    curve_family: Annotated[str, typer.Option(help="decoder family the budget curve retrains: auto (the strongest "
                                                   "on held-out data), mlp, conv or adaptive")] = "auto",
    resume: Annotated[bool, typer.Option(help="save every finished attack under OUT/checkpoints and reuse it "
                                              "when the same audit (bundle, data, settings) is run again")]
    = True,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch and numpy's BLAS "
                                                             "(1 is fastest on a busy machine)")] = None,
    data_root: Annotated[Path | None, typer.Option(help="local folder with the data set's files")] = None,
    model: Annotated[str, typer.Option(help="frontier: architecture to train")] = "mlp",
    drop_rates: Annotated[str, typer.Option(help="frontier: drop rates, e.g. '0,0.5,0.9,0.97'")] = "0,0.5,0.9,0.97",
    epochs: Annotated[int | None, typer.Option(min=1, help="frontier: training epochs (default: the sweep's)")]
    = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="frontier: training batch size")] = None,
    model_opt: Annotated[list[str] | None, typer.Option(help="frontier: architecture option KEY=VALUE")] = None,
    reuse: Annotated[bool, typer.Option(help="frontier: reuse cached runs/audits with identical settings")] = True,
) -> None:
    """Attack the dropped activations a bundle sends and report what a curious server learns.

    `daonet audit BUNDLE --dataset mnist --out reports/mnist` audits one bundle;
    `daonet audit frontier --dataset mnist --model mlp --drop-rates 0,0.5,0.9,0.97 --out reports/frontier`
    trains, exports and audits one model per drop rate and draws the accuracy-vs-privacy frontier.
    """
    from dataclasses import replace

    import torch

    from ..audit import AuditConfig, run_audit, write_report

    if threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(threads)  # numpy's BLAS too: the white-box solvers are 15x slower oversubscribed
    cfg = AuditConfig(
        dataset=dataset, budget=budget, n_test=n_test, public_size=public_size, decoder_epochs=decoder_epochs,
        decoder_patience=decoder_patience, decoder_hidden=decoder_hidden,
        decoder_precision=decoder_precision, rmle_steps=rmle_steps,
        torch_device=torch_device, attacks=_attacks(attacks),
        repeats=tuple(int(k) for k in _floats(repeats, "--repeats")), n_repeat=n_repeat, policy=policy,
        max_revealed_energy=max_revealed_energy,
        policy_thresholds=tuple(_floats(policy_thresholds, "--policy-thresholds")) if policy_thresholds else (),
        seed=seed, data_root=str(data_root) if data_root else None,
        checkpoint_dir=str(out / "checkpoints") if resume and target != FRONTIER else None,
        budget_curve=budget_curve,
        curve_sizes=tuple(int(k) for k in _floats(curve_sizes, "--curve-sizes")) if curve_sizes else None,
        curve_family=curve_family,
    )
    cfg.validate()
    if target == FRONTIER:
        from ..audit.frontier import default_train_config, run_frontier

        rates = _floats(drop_rates, "--drop-rates")
        for p in rates:
            if not 0 <= p < 1:
                fail(f"--drop-rates must be in [0, 1), got {p}")
        tcfg = default_train_config(dataset, model)
        tcfg = replace(tcfg, seed=seed, data_root=cfg.data_root,
                       model_kwargs={**tcfg.model_kwargs, **parse_kwargs(model_opt)},
                       epochs=epochs or tcfg.epochs, batch_size=batch_size or tcfg.batch_size)
        rows = run_frontier(dataset, model, rates, out, cfg, train_cfg=tcfg, reuse=reuse,
                            log=lambda s: console.print(s))
        console.print((out / "frontier.md").read_text())
        console.print(f"[green]written[/] {out / 'report.html'}, {out / 'frontier.json'} ({len(rows)} drop rates)")
        return
    bundle = Path(target)
    if not bundle.exists():
        fail(f"bundle {bundle} does not exist; export one with `daonet export RUN_DIR --out {bundle}` "
             "(or run `daonet audit frontier ...`)")
    result = run_audit(bundle, cfg, log=lambda s: console.print(s))
    js, html = write_report(result, out)
    rep = result.report
    metric = rep["metric"]
    for name, entry in rep["attacks"].items():
        mm = entry["metrics"][metric]
        adv = f"{mm['advantage']:+.3f}" if "advantage" in mm else ""
        conv = rep["budgets"].get(name, {}).get("stopped", "")
        console.print(f"  {name:18s} {metric} {mm['mean']:.3f}  {adv:7s} {conv}")
    for line in result.summary.headline()[1:]:  # the first line repeats what the audit logged at its start
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    console.print(f"[green]written[/] {html} and {js}")


def _with_target(fn: Callable[..., None], target: str, doc: str) -> Callable[..., None]:
    """``fn`` with its first argument fixed: the same options (one list to edit), registered as a subcommand."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    params = [p.replace(annotation=hints[p.name]) for p in sig.parameters.values() if p.name != "target"]

    def command(**kwargs: Any) -> None:
        fn(target, **kwargs)

    command.__signature__ = sig.replace(parameters=params, return_annotation=None)  # type: ignore[attr-defined]
    command.__name__ = command.__qualname__ = target
    command.__doc__ = doc
    return command


frontier = _with_target(audit, FRONTIER, """Train, export and audit one model per drop rate; draw the frontier.

    `daonet audit frontier --dataset mnist --model mlp --drop-rates 0,0.5,0.9,0.97 --out reports/frontier`
    (everything is cached in --out; rerunning with identical settings reuses it).
    """)


class AuditGroup(TyperGroup):
    """``daonet audit BUNDLE ...`` runs the hidden default command ``bundle``; named subcommands run as usual."""

    default_command = "bundle"

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's (vendored) click Context
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)
