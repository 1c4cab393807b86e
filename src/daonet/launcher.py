"""The ``daonet`` console script: the command line, or one line saying which extra to install.

``pip install daonet`` is the device runtime only (numpy, httpx, safetensors): enough for
``daonet.device`` in an app, not for the command line (Typer) or for training and serving (torch). This
launcher imports nothing beyond the standard library before it knows the command line can load, so a
missing dependency becomes ``pip install 'daonet[EXTRA]'`` instead of an ImportError traceback.
"""

from __future__ import annotations

import sys

__all__ = ["main", "extra_for"]

# top-level module -> the extra that installs it (None: depends on the command, see COMMAND_EXTRA)
MODULE_EXTRA: dict[str, str | None] = {
    "typer": "cli", "click": "cli", "rich": "cli", "PIL": "cli",
    "torch": None, "fastapi": "server", "uvicorn": "server", "prometheus_client": "server", "starlette": "server",
    "sklearn": "train", "skimage": "train", "matplotlib": "train",
    "tenseal": "bench", "ray": "ray", "optuna": "plan",
}
COMMAND_EXTRA = {"serve": "server", "bench": "bench"}  # torch for anything else: train, export, audit, ...


def extra_for(module: str, argv: list[str]) -> str | None:
    """The extra that provides ``module`` for the command in ``argv`` (None: not one of daonet's)."""
    top = module.split(".")[0]
    if top not in MODULE_EXTRA:
        return None
    extra = MODULE_EXTRA[top]
    if extra is None:
        command = next((a for a in argv[1:] if not a.startswith("-")), "")
        extra = COMMAND_EXTRA.get(command, "train")
    return extra


def _missing(exc: ModuleNotFoundError, argv: list[str]) -> None:
    name = exc.name or ""
    extra = extra_for(name, argv)
    if extra is None:
        raise exc
    command = " ".join(a for a in argv[1:3] if not a.startswith("-")) or "--help"
    if extra == "cli":
        message = (f"the daonet command line needs the [cli] extra ({name} is not installed): "
                   "pip install 'daonet[cli]'. This install is the device runtime only "
                   "(from daonet.device import DeviceModel, Client); `daonet train` needs 'daonet[train]', "
                   "`daonet serve` 'daonet[server]'")
    else:
        message = f"`daonet {command}` needs {name}, which is not installed: pip install 'daonet[{extra}]'"
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    """Run the Typer app (``daonet.cli``); a missing optional dependency names its extra."""
    try:
        from .cli import main as cli_main
    except ModuleNotFoundError as exc:
        _missing(exc, sys.argv)
        return
    try:
        cli_main()
    except ModuleNotFoundError as exc:
        _missing(exc, sys.argv)


if __name__ == "__main__":
    main()
