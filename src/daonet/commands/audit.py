"""``daonet audit BUNDLE --dataset mnist --out reports/mnist``: attack a bundle's payloads and report what the
server can learn. Frontiers (many rows: drop rates, defences, device heads) are ``daonet plan --grid``, which
audits every row through the same code.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..audit_config import AuditConfig
from ..settings import cli_parameters, from_cli
from .common import console, fail


def audit(target: Path, *, out: Path = Path("reports/audit"), threads: int | None = None, resume: bool = True,
          jobs: int = 1, **settings: Any) -> None:
    """Attack the dropped activations a bundle sends and report what a curious server learns.

    `daonet audit BUNDLE --dataset mnist --out reports/mnist` audits one bundle (every attacker trained from
    scratch to convergence against it; `--budget quick` is a smoke test, NOT a privacy claim). For many rows
    (drop rates, defences, device heads) use `daonet plan --grid`.
    """
    import torch

    from ..audit import run_audit, write_report
    from ..audit.core import check_attacks
    from ..audit.parallel import run_audit_parallel
    from ..errors import DaonetError

    if threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(threads)  # numpy's BLAS too: the white-box solvers are 15x slower oversubscribed
    try:
        cfg = from_cli(AuditConfig, settings, checkpoint_dir=str(out / "checkpoints") if resume else None)
        cfg.validate()
        check_attacks(cfg)
    except DaonetError as exc:
        fail(str(exc))
    if jobs > 1 and not resume:
        fail("--jobs needs the checkpoint folder its processes leave their finished attacks in: drop --no-resume")
    if not Path(target).exists():
        fail(f"bundle {target} does not exist; export one with `daonet export RUN_DIR --out {target}`")
    result = run_audit_parallel(Path(target), cfg, jobs, threads=threads, log=print_line) if jobs > 1 else \
        run_audit(Path(target), cfg, log=print_line)
    js, html = write_report(result, out)
    rep = result.report
    for name, entry in rep.attacks.items():
        mm = entry.metrics[rep.metric]
        adv = f"{mm.advantage:+.3f}" if mm.advantage is not None else ""
        spent = rep.budgets.get(name)
        conv = (spent.stopped or "") if spent is not None else ""
        console.print(f"  {name:18s} {rep.metric} {mm.mean:.3f}  {adv:7s} {conv}", markup=False, highlight=False)
    for line in rep.headline()[1:]:  # the first line repeats what the audit logged at its start
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    console.print(f"[green]written[/] {html} and {js}")


def _signature() -> inspect.Signature:
    """``daonet audit``'s options: the bundle, where to write, and every declared :class:`AuditConfig` setting."""
    kw = inspect.Parameter.KEYWORD_ONLY
    return inspect.Signature([
        inspect.Parameter("target", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          annotation=Annotated[Path, typer.Argument(help="a bundle directory from `daonet export`")]),
        *cli_parameters(AuditConfig),
        inspect.Parameter("out", kw, default=Path("reports/audit"),
                          annotation=Annotated[Path, typer.Option(help="writes audit.json + report.html")]),
        inspect.Parameter("resume", kw, default=True, annotation=Annotated[bool, typer.Option(
            help="save every finished attack under OUT/checkpoints and reuse it when the same audit (bundle, data, "
                 "settings) is run again")]),
        inspect.Parameter("threads", kw, default=None, annotation=Annotated[int | None, typer.Option(
            min=1, help="CPU threads for torch and numpy's BLAS (1 is fastest on a busy machine)")]),
        inspect.Parameter("jobs", kw, default=1, annotation=Annotated[int, typer.Option(
            min=1, help="processes the attackers are spread over (one share each, by cost; the report is "
                        "assembled from their checkpoints); with --threads, threads per process")]),
    ], return_annotation=None)


audit.__signature__ = _signature()  # type: ignore[attr-defined]
audit.__annotations__ = {p.name: p.annotation for p in audit.__signature__.parameters.values()}  # type: ignore


def print_line(line: str) -> None:
    """One line the audit logged, in the terminal: warnings in colour, the rest as written (no markup)."""
    if line.startswith("warning: "):
        console.print(f"[yellow]warning:[/] {escape(line.removeprefix('warning: '))}", soft_wrap=True)
    else:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
