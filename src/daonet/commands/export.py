"""``daonet export``: split a trained run into device and server bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console


def export(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `daonet train`")],
    out: Annotated[Path, typer.Option(help="bundle directory; gets device/ and server/")] = Path("bundles/mnist"),
    model_id: Annotated[str | None, typer.Option(help="model id (default: DATASET-MODEL)")] = None,
    value_dtype: Annotated[str, typer.Option(help="wire value type: float32 or float16")] = "float32",
    max_revealed_energy: Annotated[float | None, typer.Option(
        help="device policy: drop further outputs until the revealed energy rho(x) is at most this")] = None,
    sign: Annotated[Path | None, typer.Option(
        help="sign the bundle with this Ed25519 key (NAME.key from `daonet keygen`); devices and servers given "
             "NAME.pub then refuse any bundle it did not sign")] = None,
) -> None:
    """Split a trained run into a device bundle (first layer only) and a server bundle."""
    from ..device import DeviceModel
    from ..exporting import export_run

    dev, srv = export_run(run_dir, out, model_id=model_id, value_dtype=value_dtype,
                          max_revealed_energy=max_revealed_energy, sign_key=sign)
    d = DeviceModel.load(dev)
    signed = f", signed by key {d.manifest.integrity.key_id}" if sign is not None and d.manifest.integrity else ""
    console.print(f"[green]exported[/] {d.model_id} version {d.version}{signed}\n  device: {dev}\n  server: {srv}")
