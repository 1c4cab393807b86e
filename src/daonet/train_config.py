"""What a training run is: :class:`TrainConfig`, importable without torch.

``daonet train``'s options are generated from these declarations when the command line is built, and a
device-only install must still be able to print ``daonet --help``, so nothing here imports torch (training
itself, :mod:`daonet.train`, does). Every setting is declared once (:func:`daonet.settings.setting`): its
default, help and bounds; :meth:`TrainConfig.validate` checks them and what no single bound can say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError
from .settings import check_settings, setting

__all__ = ["TrainConfig", "NORMALIZE_MODES", "ADVERSARY_KINDS"]

NORMALIZE_MODES = ("auto", "channel", "feature")
ADVERSARY_KINDS = ("mlp", "adaptive")  # daonet.nn.defences.ADVERSARIES (that module imports torch; a test pins them)


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved verbatim in ``config.json``)."""

    dataset: str = setting("mnist", "digits, mnist, fashion-mnist, ecg5000, cifar10, or your own: npz:PATH, "
                                    "csv:DIR[,label=COLUMN], ucr:NAME")
    model: str = setting("mlp", "mlp, cnn or cnn1d (or a registered architecture)")
    drop_rate: float = setting(0.9, "probability of dropping each first-layer output, in [0, 1)", min=0)
    epochs: int = setting(10, "training epochs", min=1)
    batch_size: int = setting(128, "training batch size", min=1)
    lr: float = setting(2e-3, "peak learning rate (AdamW, one-cycle schedule); > 0", min=0)
    weight_decay: float = setting(1e-4, "AdamW weight decay", min=0)
    seed: int = setting(0, "seed of the initial weights, the batches and the masks")
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # --model-opt KEY=VALUE (free-form: per architecture)
    n_train: int | None = setting(None, "train on a random subset of this size", min=2)
    n_test: int | None = setting(None, "evaluate on a random subset of this size", min=2)
    data_root: str | None = setting(None, "local folder with the data set's files")
    eval_draws: int = setting(5, "mask draws the test accuracy is averaged over", min=1)
    augment: bool = setting(False, "random +-2 pixel shifts (images)")
    # defences beyond plain dropping (they push the privacy-accuracy frontier)
    quantize_levels: int = setting(0, "defence: send surviving values on N levels (1 = near-binary); 0 = off", min=0)
    nopeek_weight: float = setting(0.0, "defence: distance-correlation penalty between input and transmitted "
                                        "activations", min=0)
    adversary_weight: float = setting(0.0, "defence: min-max training against a jointly trained inverse network",
                                      min=0)
    bottleneck_weight: float = setting(0.0, "defence: conditional information bottleneck: penalise the nats one "
                                            "request carries about its input beyond its class (needs the Gaussian "
                                            "mechanism: --model-opt ldp_epsilon=E); 0 = off", min=0)
    # beyond the paper's single localized layer (docs/device-block-and-noise.md)
    device_layers: int = setting(1, "layers run on the device before dropping: 1 = the paper's single layer; 2-3 = "
                                    "a localized block (dense layers for mlp, 3-wide convolutions for cnn/cnn1d)",
                                 min=1, max=3)
    device_pool: int = setting(0, "max-pooling window at the device block's output (cnn/cnn1d); 0 = off", min=0)
    noise_std: float = setting(0.0, "defence: Gaussian noise on surviving values, as a fraction of their RMS on the "
                                    "training data; 0 = off", min=0)
    adversary: str = setting("mlp", "the min-max adversary: mlp (sees h) or adaptive (also log h, the support "
                                    "pattern and the class probabilities: stronger)", choices=ADVERSARY_KINDS)
    adversary_steps: int = setting(1, "adversary updates per model update", min=1)
    adversary_hidden: int = setting(512, "hidden width of the min-max adversary", min=8)
    adversary_reset: int = setting(0, "re-initialise the min-max adversaries every N epochs and train them alone on "
                                      "the frozen model for --adversary-warmup steps (towards convergence); the "
                                      "model is then penalised on the best one's gain over a label-only decoder. "
                                      "0 = one jointly trained adversary", min=0)
    adversary_pool: int = setting(2, "with --adversary-reset: adversaries side by side, kinds alternating mlp, "
                                     "adaptive (the one that also sees the server's probabilities)", min=1, max=4)
    adversary_warmup: int = setting(200, "with --adversary-reset: steps a fresh adversary trains alone", min=0)
    adversary_margin: float = setting(0.0, "with --adversary-reset: the fraction of the label-only decoder's error "
                                           "the attackers may gain before the model pays (0 = any gain)", min=0, max=1)
    class_balance: float = setting(0.0, "weight each class's cross-entropy by (its share of the training split) to "
                                        "the power -B: 0 = plain cross-entropy, 1 = every class counts alike (rare "
                                        "classes a defence would otherwise give up)", min=0, max=1)
    init_from: str | None = setting(None, "start from the weights of this run directory (the same --model and "
                                          "--model-opt): add a defence to a model already trained without it")
    # input statistics: "channel" (one mean/std per channel), "feature" (per input value, fitted on the training
    # split: a table's columns; dense first layers), "auto" (feature for your own csv:/npz: data with a dense
    # first layer, channel otherwise). See docs/preprocessing.md.
    normalize: str = setting("auto", "input statistics: channel (one mean/std per channel), feature (per column, "
                                     "fitted on the training split; dense models) or auto (feature for csv:/npz: "
                                     "data with --model mlp)", choices=NORMALIZE_MODES)

    def validate(self) -> None:
        check_settings(self)  # the declared bounds and choices; below: what no single bound says
        if not 0.0 <= self.drop_rate < 1.0:
            raise InputError(f"--drop-rate must be in [0, 1), got {self.drop_rate}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        if self.device_pool == 1:
            raise InputError(f"--device-pool must be 0 (off) or a window of at least 2, got {self.device_pool}")
        if self.noise_std and self.quantize_levels:
            raise InputError("--noise-std and --quantize-levels cannot be combined (noise undoes the rounding)")
        for key, off in (("device_layers", 1), ("device_pool", 0)):
            given = self.model_kwargs.get(key)
            if given is not None and getattr(self, key) not in (off, given):
                raise InputError(f"--{key.replace('_', '-')} {getattr(self, key)} disagrees with --model-opt "
                                 f"{key}={given}; give it once")
        if self.bottleneck_weight and not any(k in self.model_kwargs for k in ("ldp_epsilon", "ldp_noise_multiplier")):
            raise InputError("--bottleneck-weight bounds what a request carries beyond its class only under the "
                             "Gaussian mechanism's noise: add --model-opt ldp_epsilon=E (e.g. 64)")
        if self.adversary_margin and not self.adversary_reset:
            raise InputError("--adversary-margin applies to the adversary pool: give --adversary-reset N too")
        if self.adversary_reset and not self.adversary_weight:
            raise InputError("--adversary-reset re-initialises min-max adversaries: give --adversary-weight W > 0 too")
        for name in ("nopeek_weight", "adversary_weight", "bottleneck_weight", "noise_std", "weight_decay"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise InputError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
