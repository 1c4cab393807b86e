"""The one study pipeline: a row (training config + export options + audit config) -> run, bundle, audit report.

Every study goes through :func:`run_row`: ``daonet plan``'s candidates (searched or on a grid), the seed spread and
the demo's retraining. A row's folder is named by the content address of everything that determines its numbers
(:meth:`Row.key`, the one "same settings" rule); each stage (train, export, audit) is reused when its folder
already holds it, and the audit resumes attack by attack from its checkpoints, so a killed study resumes.
Parallel workers that reach the same row build it once (a file lock per row).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..audit_report import AuditReport, read_report
from ..errors import InputError
from ..manifest import ManifestError, Spec, optional

if TYPE_CHECKING:  # torch-side types: imported only when a row runs
    from ..audit_config import AuditConfig
    from ..data import Dataset
    from ..train import TrainConfig

__all__ = ["ExportOptions", "ExportStage", "Row", "RowData", "RowResult", "TrainRun", "TrainStage",
           "read_train_run", "run_row"]

# settings that change where or how fast a stage runs, never its numbers: outside the content address
_RUNTIME_ONLY = {"data_root", "checkpoint_dir", "torch_device"}


@dataclass(frozen=True, kw_only=True)
class AccuracyDraws(Spec):
    """Test accuracy with dropping active, over several mask draws."""

    mean: float
    std: float = 0.0
    draws: tuple[float, ...] = ()
    dropping: bool = True


@dataclass(frozen=True, kw_only=True)
class SurvivingOutputs(Spec):
    mean: float
    min: float = 0.0
    max: float = 0.0


@dataclass(frozen=True, kw_only=True)
class SentValues(Spec):
    """How concentrated the sent values are (:func:`daonet.nn.defences.sent_concentration`): a model that fools a
    min-max adversary with a few huge values has a large ``top_share`` and ``max_over_rms``."""

    top_share: float
    top_fraction: float = 0.05
    max_over_rms: float = 0.0


@dataclass(frozen=True, kw_only=True)
class ConditionalInformation(Spec):
    """The Gaussian mechanism's bound on what one request carries about its input beyond its class, in nats per
    request on the test split (:func:`daonet.nn.defences.conditional_information`)."""

    nats_mean: float
    nats_median: float = 0.0
    nats_p95: float = 0.0
    nats_max: float = 0.0
    label: str = "true class"
    references: str = ""


@dataclass(frozen=True, kw_only=True)
class TrainRun(Spec):
    """A training run's ``metrics.json``: what ``daonet train`` measured on the full test set."""

    dataset: str
    model: str
    drop_rate: float
    test_accuracy: AccuracyDraws
    surviving_outputs: SurvivingOutputs
    n_outputs: int
    n_train: int = 0
    n_test: int = 0
    train_time_s: float = 0.0
    epochs: int = 0
    device_layers: int = 1
    conditional_information: ConditionalInformation | None = optional()  # models with the Gaussian mechanism
    sent_values: SentValues | None = optional()
    command: str | None = optional()
    torch_threads: int | None = optional()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.test_accuracy.mean


def read_train_run(run_dir: str | Path) -> TrainRun:
    """Read and validate ``RUN_DIR/metrics.json``."""
    path = Path(run_dir) / "metrics.json"
    try:
        return TrainRun.from_json(json.loads(path.read_text()), str(path))
    except FileNotFoundError:
        raise InputError(f"{path} is missing: {run_dir} is not a finished training run; retrain it") from None
    except (ValueError, ManifestError) as exc:
        problem = str(exc).rsplit("; re-export the bundle", 1)[0]
        raise InputError(f"{path} is not a training run's metrics ({problem}); retrain it") from None


@dataclass(frozen=True)
class ExportOptions:
    """How a trained run becomes a bundle (``daonet export`` options that change what the device sends)."""

    model_id: str | None = None  # default: DATASET-MODEL
    value_dtype: str = "float32"
    max_revealed_energy: float | None = None  # the device policy (None: off)

    def validate(self) -> None:
        if self.value_dtype not in ("float32", "float16"):
            raise InputError(f"value dtype must be float32 or float16, got {self.value_dtype!r}")
        t = self.max_revealed_energy
        if t is not None and not 0 <= t <= 1:
            raise InputError(f"max revealed energy must be in [0, 1], got {t}")


@dataclass(frozen=True)
class Row:
    """One study row. ``audit`` None: train and export only (no privacy numbers)."""

    train: TrainConfig
    export: ExportOptions = field(default_factory=ExportOptions)
    audit: AuditConfig | None = None

    def validate(self) -> None:
        self.train.validate()
        self.export.validate()
        if self.audit is not None:
            self.audit.validate()

    def key(self) -> str:
        """Content address of the row: every setting that determines its numbers, nothing machine-specific."""
        def settings(obj: Any) -> dict[str, Any] | None:
            return None if obj is None else {k: v for k, v in asdict(obj).items() if k not in _RUNTIME_ONLY}

        what = {"train": settings(self.train), "export": settings(self.export), "audit": settings(self.audit)}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RowResult:
    """A finished row: where its stages are, and what they measured."""

    key: str
    root: Path
    run: TrainRun
    bundle: Path
    report: AuditReport | None
    seconds: float

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def report_path(self) -> Path:
        return self.root / "audit" / "audit.json"


TrainStage = Callable[["Row", Path, "RowData"], None]  # (row, run_dir, data): writes the run directory
ExportStage = Callable[["Row", Path, Path, "RowData"], None]  # (row, run_dir, bundle, data): writes the bundle


def run_row(row: Row, root: str | Path, *, dataset: Dataset | None = None, progress: bool = False,
            log: Callable[[str], None] | None = None, train_stage: TrainStage | None = None,
            export_stage: ExportStage | None = None) -> RowResult:
    """Train, export and audit one row under ``root/<key>`` (each stage reused when already there).

    ``train_stage`` / ``export_stage`` replace the zoo's training and export (a user's own module goes through
    ``daonet.split`` and ``daonet.export``: :func:`daonet.studies.own_model.run_own_row`); the folder, the lock,
    the reuse rule and the audit stay the same."""
    from filelock import FileLock

    row.validate()
    t0 = time.perf_counter()
    where = Path(root) / row.key()
    where.mkdir(parents=True, exist_ok=True)
    data = RowData(row, dataset)
    run_dir, bundle = where / "run", where / "bundle"
    with FileLock(str(where) + ".lock"):  # parallel workers that reach the same row: one builds it
        if not (run_dir / "metrics.json").exists():
            (train_stage or _zoo_train(progress))(row, run_dir, data)
        run = read_train_run(run_dir)
        if not (bundle / "device" / "manifest.json").exists():
            (export_stage or _zoo_export)(row, run_dir, bundle, data)
        report = _audit_stage(row, bundle, where / "audit", data, progress, log)
    return RowResult(where.name, where, run, bundle, report, round(time.perf_counter() - t0, 2))


class RowData:
    """The row's data set, loaded on first use; the audit sees the same subset training saw (``n_train``,
    ``n_test`` of the training config, drawn with its seed)."""

    def __init__(self, row: Row, given: Dataset | None) -> None:
        self.row, self._full = row, given

    def full(self) -> Dataset:
        if self._full is None:
            from ..data import load_dataset

            self._full = load_dataset(self.row.train.dataset, self.row.train.data_root)
        return self._full

    def audited(self) -> Dataset:
        t = self.row.train
        return self.full().subset(t.n_train, t.n_test, seed=t.seed) if t.n_train or t.n_test else self.full()


def _zoo_train(progress: bool) -> TrainStage:
    def stage(row: Row, run_dir: Path, data: RowData) -> None:
        from ..train import save_run, train

        save_run(train(row.train, ds=data.full(), progress=progress), run_dir)

    return stage


def _zoo_export(row: Row, run_dir: Path, bundle: Path, data: RowData) -> None:
    from ..exporting import export_run

    export_run(run_dir, bundle, model_id=row.export.model_id, value_dtype=row.export.value_dtype,
               max_revealed_energy=row.export.max_revealed_energy)


def _audit_stage(row: Row, bundle: Path, audit_dir: Path, data: RowData, progress: bool,
                 log: Callable[[str], None] | None) -> AuditReport | None:
    if row.audit is None:
        return None
    path = audit_dir / "audit.json"
    if not path.exists():
        from dataclasses import replace

        from ..audit.core import run_audit, write_report

        cfg = replace(row.audit, checkpoint_dir=str(audit_dir / "checkpoints"))
        write_report(run_audit(bundle, cfg, dataset=data.audited(), progress=progress, log=log), audit_dir)
    return read_report(path)
