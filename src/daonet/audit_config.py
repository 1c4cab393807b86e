"""What an audit attacks and how hard: :class:`AuditConfig` and the attacker budgets, importable without torch.

The command line builds its ``daonet audit`` options from these declarations at import time, and a device-only
install must still be able to print ``daonet --help``, so nothing here imports torch (the audit's machinery,
:mod:`daonet.audit`, does). Every setting is declared once (:func:`daonet.settings.setting`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .errors import InputError
from .settings import check_settings, setting

if TYPE_CHECKING:
    import torch

__all__ = ["BUDGET_NAMES", "BUDGETS", "BudgetPreset", "DecoderBudget", "DEFAULT_ATTACKS", "NOT_A_CLAIM", "PRECISIONS",
           "AuditConfig"]


@dataclass(frozen=True)
class DecoderBudget:
    """How hard a learned attacker tries; recorded in every report."""

    max_epochs: int = 300  # hard cap
    patience: int = 12  # epochs without a held-out gain of ``min_delta`` before stopping
    hidden: int = 2048
    conv_channels: int = 128  # the transposed-convolution decoder's widest feature map (the next ones halve it)
    batch: int = 512
    lr: float = 1e-3
    val_size: int = 5000  # held-out public examples (at most 10 % of the public set)
    loss: str = "mse+metric"  # or "mse"
    min_delta: float = 5e-4  # a gain smaller than this over ``patience`` epochs counts as converged
    precision: str = "auto"  # auto: TF32 on CUDA, bf16 autocast on CPUs with native bf16; fp32; bf16
    # plateau: halve the learning rate when the held-out score stalls, stop after ``patience`` epochs without a
    # gain; one-cycle: warm up to ``lr`` and anneal over ``cycle_epochs``, then further (shorter, lower) cycles
    # of ``restart_epochs`` from where it ended until one gains no more than ``min_delta`` (0: no such check)
    schedule: str = "plateau"
    cycle_epochs: int = 30
    restart_epochs: int = 10
    restart_lr: float = 0.3  # a restart cycle's peak learning rate, as a share of ``lr``

    def validate(self) -> None:
        if self.max_epochs < 1 or self.patience < 1:
            raise InputError(f"decoder epochs and patience must be >= 1, got {self.max_epochs}, {self.patience}")
        if self.hidden < 8 or self.batch < 2:
            raise InputError(f"decoder hidden width must be >= 8 and batch >= 2, got {self.hidden}, {self.batch}")
        if self.conv_channels < 8:
            raise InputError(f"decoder conv channels must be >= 8, got {self.conv_channels}")
        if self.loss not in ("mse", "mse+metric"):
            raise InputError(f"decoder loss must be 'mse' or 'mse+metric', got {self.loss!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"decoder schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.cycle_epochs < 1 or self.restart_epochs < 0 or not 0 < self.restart_lr <= 1:
            raise InputError(f"decoder one-cycle settings: cycle epochs >= 1, restart epochs >= 0 and restart lr in "
                             f"(0, 1], got {self.cycle_epochs}, {self.restart_epochs}, {self.restart_lr}")
        if self.precision not in PRECISIONS:
            raise InputError(f"decoder precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("plateau", "one-cycle")


BUDGET_NAMES = ("quick", "full")


@dataclass(frozen=True)
class BudgetPreset:
    """How hard every attacker tries. ``quick`` is for tests and CI (seconds; not a privacy claim);
    ``full`` is what privacy numbers are quoted from (all public data, decoders to convergence)."""

    n_test: int
    public_size: int  # 0: the whole training set
    decoder: DecoderBudget
    rmle_steps: int
    rmle_tune_size: int
    curve_sizes: tuple[int, ...]  # public-set sizes of the budget curve (plus half and all of it)
    n_repeat: int
    claim: bool
    budget_curve: bool  # the saturation check: it backs a claim, so the smoke test skips it


BUDGETS: dict[str, BudgetPreset] = {
    "quick": BudgetPreset(n_test=100, public_size=2000,
                          decoder=DecoderBudget(max_epochs=8, patience=2, hidden=256, conv_channels=32, batch=128,
                                                val_size=300),
                          rmle_steps=60, rmle_tune_size=32, curve_sizes=(), n_repeat=12, claim=False,
                          budget_curve=False),
    "full": BudgetPreset(n_test=1000, public_size=0, decoder=DecoderBudget(), rmle_steps=400, rmle_tune_size=128,
                         curve_sizes=(2500, 10000), n_repeat=100, claim=True, budget_curve=True),
}
DEFAULT_ATTACKS = ("min_norm", "rmle", "rmle_prior", "rmle_naive", "decoder_mlp", "decoder_conv", "decoder_adaptive",
                   "decoder_prediction", "decoder_label", "repeated")
NOT_A_CLAIM = ("quick budget: attackers stopped early and made smaller for speed; a lower bound on leakage, NOT a "
               "privacy claim")


ALIASES = {"decoder": "decoder_mlp"}  # old attack names still accepted


@dataclass
class AuditConfig:
    """What is audited and how hard the attackers try (all recorded in the report).

    ``budget`` picks every attacker's budget (:data:`BUDGETS`); any field left ``None`` takes the budget's
    value, a field that is set overrides it (and is recorded). Each field is declared once, with its help and
    bounds (:func:`daonet.settings.setting`): ``daonet audit``'s options are generated from these declarations.
    """

    dataset: str = setting("mnist", "the data set the bundle was trained on (digits, mnist, fashion-mnist, ecg5000, "
                                    "cifar10, npz:PATH, csv:DIR, ucr:NAME)")
    budget: str = setting("full", "full: every attacker to convergence on all public data (privacy claims); quick: "
                                  "a smoke test for tests/CI, NOT a privacy claim", choices=BUDGET_NAMES)
    n_test: int | None = setting(None, "held-out test requests to attack (default: the budget's)", min=2)
    public_size: int | None = setting(None, "attacker's public examples, a split of the training set (0 = all of "
                                            "it; default: the budget's)", min=0)
    decoder_epochs: int | None = setting(None, "hard cap on decoder epochs (they stop earlier once the held-out "
                                               "score stops improving)", min=1)
    decoder_patience: int | None = setting(None, "early-stopping patience in epochs", min=1)
    decoder_hidden: int | None = setting(None, "decoder hidden width", min=8)
    decoder_conv_channels: int | None = setting(None, "the transposed-convolution decoder's widest feature map "
                                                      "(default: the budget's, 128 for full, 32 for quick)", min=8)
    decoder_batch: int | None = setting(None, "decoder batch size", min=1)
    decoder_schedule: str | None = setting(None, "decoder learning-rate schedule: plateau (halve on a stall, stop "
                                                 "after --decoder-patience epochs without a gain) or one-cycle "
                                                 "(warm-up and anneal over --decoder-cycle-epochs, then shorter "
                                                 "restart cycles until one gains nothing); default: the budget's",
                                           choices=SCHEDULES)
    decoder_cycle_epochs: int | None = setting(None, "epochs of the first one-cycle (default: the budget's)", min=1)
    decoder_loss: str | None = setting(None, "decoder training loss (default: the budget's)")
    decoder_precision: str | None = setting(None, "decoder training precision: auto (bf16 autocast on CPUs with "
                                                  "native bf16, TF32 on CUDA), fp32, bf16")
    rmle_steps: int | None = setting(None, "optimizer steps of the regularized inversions", min=10)
    rmle_tune_size: int | None = setting(None, "public examples the inversions tune their prior weight on", min=1)
    budget_curve: bool | None = setting(None, "retrain the strongest decoder on smaller public sets (the saturation "
                                              "check of a privacy claim; default: the budget's, on for full, off "
                                              "for quick)")
    curve_sizes: tuple[int, ...] | None = setting(None, "public-set sizes of the budget curve, e.g. 2500,10000 "
                                                        "(default: the budget's, plus half of the public data)",
                                                  min=20)
    curve_family: str = setting("auto", "decoder family the budget curve retrains: auto (the strongest on held-out "
                                        "data), mlp, conv or adaptive", choices=("auto", "mlp", "conv", "adaptive"))
    attacks: tuple[str, ...] = setting(DEFAULT_ATTACKS, "attack names (see `daonet.audit.available_attacks`) plus "
                                                        "'repeated', or all")
    repeats: tuple[int, ...] = setting((1, 5, 20), "repeated-query counts K", min=1)
    n_repeat: int | None = setting(None, "inputs used for the repeated-query attack", min=1)
    policy: str = setting("auto", "device policy: auto (as the manifest says), on, off", choices=("auto", "on", "off"))
    max_revealed_energy: float | None = setting(None, "audit with this device policy threshold (implies the policy "
                                                      "on)", min=0, max=1)
    policy_thresholds: tuple[float, ...] = setting((), "also measure accuracy/leakage at these policy thresholds, "
                                                       "e.g. 0.5,0.3,0.2", min=0, max=1)
    policy_pools: int = setting(2, "dropped-vector pools for the decoders when a policy is active", min=1)
    n_examples: int = setting(8, "example reconstructions shown in the report", min=0)
    seed: int = setting(0, "seed of the splits, masks and attackers")
    data_root: str | None = setting(None, "local folder with the data set's files")
    torch_device: str = setting("auto", "where attackers train: auto (cuda if present), cpu, cuda[:N]")
    checkpoint_dir: str | None = setting(None, "finished attacks are saved here; a rerun of the same audit resumes",
                                         cli=False)

    def __post_init__(self) -> None:
        if tuple(self.attacks) in (("all",), ()):
            self.attacks = DEFAULT_ATTACKS

    def validate(self) -> None:
        check_settings(self)  # attack names are checked against the registry by daonet.audit.core.check_attacks
        if self.public_size is not None and 0 < self.public_size < 20:
            raise InputError(f"--public-size must be 0 (all) or at least 20, got {self.public_size}")
        if not self.repeats:
            raise InputError("--repeats needs at least one count")
        if self.resolved("budget_curve") and self.curve_family != "auto" and \
                f"decoder_{self.curve_family}" not in {ALIASES.get(a, a) for a in self.attacks}:
            raise InputError(f"--curve-family {self.curve_family}: decoder_{self.curve_family} is not among the "
                             f"attacks; add it to --attacks or use --curve-family auto")
        if self.torch_device not in ("auto", "cpu") and not self.torch_device.startswith("cuda"):
            raise InputError(f"--torch-device must be auto, cpu or cuda[:N], got {self.torch_device!r}")
        self.decoder_budget().validate()

    @property
    def preset(self) -> BudgetPreset:
        return BUDGETS[self.budget]

    def decoder_budget(self) -> DecoderBudget:
        d = self.preset.decoder
        over: dict[str, Any] = {"max_epochs": self.decoder_epochs, "patience": self.decoder_patience,
                                "hidden": self.decoder_hidden, "conv_channels": self.decoder_conv_channels,
                                "batch": self.decoder_batch, "loss": self.decoder_loss,
                                "schedule": self.decoder_schedule, "cycle_epochs": self.decoder_cycle_epochs,
                                "precision": self.decoder_precision}
        return replace(d, **{k: v for k, v in over.items() if v is not None})

    def resolved(self, name: str) -> Any:
        """A field's effective value: the override if set, else the budget's."""
        v = getattr(self, name)
        return getattr(self.preset, name) if v is None else v

    def device(self) -> torch.device:
        import torch

        if self.torch_device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.torch_device)
