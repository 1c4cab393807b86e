"""The ``daonet`` command line (Typer).

Command modules in :mod:`daonet.commands` define plain functions and never import this module; this is the
one place that names the commands and wires them into the app (no import cycle).
"""

from __future__ import annotations

import sys

import typer

from .commands import audit, bench, demo, export, keys, methods, plan, predict, serve, sweep, train, verify
from .commands.common import console, fail, parse_kwargs
from .errors import DaonetError

__all__ = ["app", "main", "console", "fail", "parse_kwargs"]

app = typer.Typer(
    name="daonet", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Private inference: the first layer runs on the device, dropped activations go to the server.",
)

# the model's life: train, export, serve, predict
app.command("train")(train.train)
app.command("export")(export.export)
app.command("serve")(serve.serve)
app.command("predict")(predict.predict)
app.command("hash-key")(keys.hash_key)
app.command("keygen")(keys.keygen)
app.command("verify")(verify.verify)
app.command("sign-audit")(verify.sign_audit)

# what a curious server learns
audit_app = typer.Typer(
    cls=audit.AuditGroup, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Attack the dropped activations a bundle sends and report what a curious server learns: "
         "`daonet audit BUNDLE --dataset mnist`, or `daonet audit frontier ...` over drop rates.",
)
audit_app.command("bundle")(audit.audit)
audit_app.command("frontier")(audit.frontier)
app.add_typer(audit_app, name="audit")
app.command("audit-methods")(methods.audit_methods)
app.command("plan")(plan.plan)

# studies and benchmarks
app.command("demo")(demo.demo)
app.command("sweep")(sweep.sweep)
app.add_typer(bench.bench_app, name="bench")


def main() -> None:
    """Console entry point: DaonetError -> one red line and exit code 2, never a traceback."""
    try:
        app()
    except DaonetError as exc:
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
if __name__ == "__main__":
    main()
