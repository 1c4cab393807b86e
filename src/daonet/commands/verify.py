"""``daonet verify`` (is this the audited artifact?) and ``daonet sign-audit`` (vouch for an audit report).

Both need only the device install plus ``cryptography`` (``pip install 'daonet[cli,sign]'``): no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import DaonetError
from .common import console, fail
from .common import stdout as out


def verify(
    bundle: Annotated[Path, typer.Argument(help="a bundle root (device/ and server/), e.g. a shipped default: "
                                                "src/daonet/defaults/mnist-mlp")],
    public_key: Annotated[list[Path] | None, typer.Option(
        help="trusted signer (NAME.pub); repeat for several; default: the project's key, which signs the "
             "shipped defaults")] = None,
    report: Annotated[Path | None, typer.Option(help="the audit report (default: BUNDLE/audit/audit.json)")] = None,
) -> None:
    """Check signature, version and files of a bundle, and that a signed full audit of exactly this version exists;
    print its headline numbers. Exit code 2 and the reason when any check fails."""
    from ..verify import verify_bundle

    try:
        result = verify_bundle(bundle, public_keys=public_key or None, report=report)
    except DaonetError as exc:
        fail(str(exc))
    for line in result.lines():
        out.print(line, highlight=False, soft_wrap=True)


def sign_audit(
    report: Annotated[Path, typer.Argument(help="an audit.json written by `daonet audit`")],
    key: Annotated[Path, typer.Option(help="the Ed25519 signing key (NAME.key from `daonet keygen`)")],
) -> None:
    """Sign an audit report (writes REPORT.sig), so `daonet verify` accepts it beside the bundle it audited."""
    from ..verify import sign_report

    try:
        sig = sign_report(report, key)
    except DaonetError as exc:
        fail(str(exc))
    console.print(f"[green]signed[/] {report} -> {sig}")
