"""``daonet train``: train a split model with dropped activation outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, parse_kwargs


def train(
    dataset: Annotated[str, typer.Option(help="digits, mnist, fashion-mnist, ecg5000, cifar10, or "
                                                    "your own: npz:PATH, csv:DIR[,label=COLUMN], ucr:NAME")] = "mnist",
    model: Annotated[str, typer.Option(help="mlp, cnn or cnn1d (or a registered architecture)")] = "mlp",
    drop_rate: Annotated[float, typer.Option(help="probability of dropping each first-layer output")] = 0.9,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    lr: float = 2e-3,
    seed: int = 0,
    model_opt: Annotated[list[str] | None, typer.Option(help="architecture option KEY=VALUE, repeatable")] = None,
    n_train: Annotated[int | None, typer.Option(help="train on a random subset of this size")] = None,
    n_test: Annotated[int | None, typer.Option(help="evaluate on a random subset of this size")] = None,
    augment: Annotated[bool, typer.Option(help="random +-2 pixel shifts (images)")] = False,
    data_root: Annotated[Path | None, typer.Option(help="local folder with the data set's files")] = None,
    quantize_levels: Annotated[int, typer.Option(min=0, help="defence: send surviving values on N levels "
                                                 "(1 = near-binary); 0 = off")] = 0,
    nopeek_weight: Annotated[float, typer.Option(min=0, help="defence: distance-correlation penalty "
                                                 "between input and transmitted activations")] = 0.0,
    adversary_weight: Annotated[float, typer.Option(min=0, help="defence: min-max training against a jointly "
                                                    "trained inverse network")] = 0.0,
    device_layers: Annotated[int, typer.Option(min=1, max=3, help="layers run on the device before dropping: 1 = "
                                               "the paper's single layer; 2-3 = a localized block (dense layers "
                                               "for mlp, 3-wide convolutions for cnn/cnn1d)")] = 1,
    device_pool: Annotated[int, typer.Option(min=0, help="max-pooling window at the device block's output "
                                             "(cnn/cnn1d); 0 = off")] = 0,
    noise_std: Annotated[float, typer.Option(min=0, help="defence: Gaussian noise on surviving values, as a "
                                             "fraction of their RMS on the training data; 0 = off")] = 0.0,
    adversary: Annotated[str, typer.Option(help="the min-max adversary: mlp (sees h) or adaptive (also log h, the "
                                                "support pattern and the class probabilities: stronger)")] = "mlp",
    adversary_steps: Annotated[int, typer.Option(min=1, help="adversary updates per model update")] = 1,
    normalize: Annotated[str, typer.Option(help="input statistics: channel (one mean/std per channel), feature "
                                           "(per column, fitted on the training split; dense models) or auto "
                                           "(feature for csv:/npz: data with --model mlp)")] = "auto",
    recommended: Annotated[bool, typer.Option(help="use the measured default operating point for this "
                                              "dataset/model (drop rate, defences, epochs; see README)")] = False,
    out: Annotated[Path, typer.Option(help="run directory to write")] = Path("runs/mnist-mlp"),
) -> None:
    """Train a split model with dropped activation outputs; writes model, config and metrics.json."""
    from dataclasses import replace

    from ..train import TrainConfig, recommended_config, save_run
    from ..train import train as run_training

    cfg = TrainConfig(dataset=dataset, model=model, drop_rate=drop_rate, epochs=epochs, batch_size=batch_size,
                      lr=lr, seed=seed, model_kwargs=parse_kwargs(model_opt), n_train=n_train, n_test=n_test,
                      data_root=str(data_root) if data_root else None, augment=augment,
                      quantize_levels=quantize_levels, nopeek_weight=nopeek_weight, adversary_weight=adversary_weight,
                      device_layers=device_layers, device_pool=device_pool, noise_std=noise_std,
                      adversary=adversary, adversary_steps=adversary_steps, normalize=normalize)
    if recommended:
        rec = recommended_config(dataset, model)
        cfg = replace(cfg, drop_rate=rec.drop_rate, epochs=rec.epochs, batch_size=rec.batch_size,
                      adversary_weight=rec.adversary_weight, nopeek_weight=rec.nopeek_weight,
                      quantize_levels=rec.quantize_levels, adversary=rec.adversary,
                      adversary_steps=rec.adversary_steps)
        drop_rate = cfg.drop_rate
        console.print(f"recommended operating point: p={cfg.drop_rate}, adversary weight {cfg.adversary_weight}, "
                      f"{cfg.epochs} epochs")
    result = run_training(cfg, progress=True)
    save_run(result, out)
    m = result.metrics
    acc = m["test_accuracy"]
    console.print(
        f"[green]done[/] test accuracy {acc['mean']:.4f} ± {acc['std']:.4f} (dropping p={drop_rate}), "
        f"surviving outputs {m['surviving_outputs']['mean']:.1f} of {m['n_outputs']}, "
        f"{m['train_time_s']:.1f} s -> {out / 'metrics.json'}"
    )
