"""The ``daonet`` command line (Typer).

Command modules in :mod:`daonet.commands` define plain functions and never import this module; this is the
one place that names the commands and wires them into the app (no import cycle).
"""

from __future__ import annotations

import logging
import sys

import typer

from .commands import audit, bench, demo, export, keys, plan, predict, serve, sweep, train, verify
from .commands.common import console, fail, parse_kwargs
from .errors import DaonetError

__all__ = ["app", "main", "console", "fail", "parse_kwargs"]

app = typer.Typer(
    name="daonet", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Private inference: the first layer runs on the device, dropped activations go to the server.",
)

@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="show daonet's DEBUG log (e.g. the full torch "
                                         "trace behind a failed export) on stderr")) -> None:
    """Options for every command."""
    if debug:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("daonet").setLevel(logging.DEBUG)


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
app.command("audit")(audit.audit)
app.command("plan")(plan.plan)  # many rows (a search, or a frontier with --grid), each audited

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
