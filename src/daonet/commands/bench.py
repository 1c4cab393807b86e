"""``daonet bench ...``: benchmarks that put daonet next to the alternatives it claims to beat.

``daonet bench encryption --dataset mnist --n 20 --out reports/encryption`` measures plaintext serving,
daonet and homomorphic encryption (TenSEAL CKKS, the optional ``[bench]`` extra) on the same real MNIST
test images in one run, and writes JSON, a markdown table and a log-scale bar chart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import DaonetError
from .common import console, fail

bench_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                        help="Benchmarks: daonet next to the alternatives (plaintext serving, encryption).")


@bench_app.command("encryption")
def encryption(
    dataset: Annotated[str, typer.Option(help="only mnist: the HE baseline follows TenSEAL's MNIST recipe")]
    = "mnist",
    n: Annotated[int, typer.Option(help="test images, the same for every approach (HE takes seconds each)")] = 20,
    out: Annotated[Path, typer.Option(help="directory for encryption_bench.json/.md/.png")]
    = Path("reports/encryption"),
    repeats: Annotated[int, typer.Option(help="timing passes over the images for plaintext and daonet")] = 5,
    bundle: Annotated[Path | None, typer.Option(help="a daonet bundle from `daonet export` (default: the demo's "
                                                     "cached MNIST bundle, trained on first use)")] = None,
    run: Annotated[Path | None, typer.Option(help="the training run the bundle was exported from (default: "
                                                  "`run` beside the bundle)")] = None,
    he_hidden: Annotated[int, typer.Option(help="hidden width of the HE x*x MLP (784-H-10)")] = 128,
    he_epochs: Annotated[int, typer.Option(help="training epochs of the HE model (cached)")] = 2,
    skip_he: Annotated[bool, typer.Option("--skip-he", help="measure plaintext and daonet only")] = False,
    threads: Annotated[int, typer.Option(help="torch threads of each HTTP server")] = 1,
    device_threads: Annotated[int, typer.Option(help="BLAS threads of the device side (1, as on a phone; 0: numpy's "
                                                     "default)")] = 1,
    seed: Annotated[int, typer.Option(help="seed of the device's dropping masks")] = 0,
    rtt_ms: Annotated[float, typer.Option(help="emulated network round trip (ms) added to every plaintext and "
                                               "daonet request; 0: loopback only")] = 0.0,
) -> None:
    """Plaintext vs daonet vs homomorphic encryption on the same MNIST test images, in one run."""
    from rich.console import Console

    from ..bench import encryption as bench

    try:
        bench.check_dataset(dataset)
        if n < 1:
            raise DaonetError(f"--n must be at least 1 test image, got {n}")
        out_dir = bench.check_out_dir(out)  # fail now, not after minutes of measuring
        approaches = tuple(a for a in bench.APPROACHES if not (skip_he and a == "he"))
        he_options: dict[str, Any] = {"hidden": he_hidden, "epochs": he_epochs}
        result = bench.run_encryption_bench(n, dataset, bundle_dir=bundle, run_dir=run, he_options=he_options,
                                            approaches=approaches, repeats=repeats, seed=seed, torch_threads=threads,
                                            device_threads=device_threads or None, rtt_ms=rtt_ms)
        paths = bench.write_report(result, out_dir)
    except DaonetError as exc:
        fail(str(exc))
        return
    stdout = Console()
    stdout.print(bench.render_table(result))
    for line in bench.ratio_lines(result):
        stdout.print(f"  {line}")
    stdout.print(f"  [dim]{result['environment']['noise']}[/]")
    console.print(f"[green]written[/] {paths['json']}, {paths['markdown']}, {paths['chart']}")
