"""The audit report (``audit.json``) as a typed record, validated once, readable without torch.

``daonet audit`` builds an :class:`AuditReport`; ``audit.json`` is its serialisation (:meth:`AuditReport.to_json`),
and every reader (the HTML report, the CLI, ``daonet verify``, ``daonet plan``, the benchmarks) parses it once with
:func:`read_report` and reads attributes. It lives outside :mod:`daonet.audit` because ``daonet verify`` runs where
only the device side is installed (no torch).

The records use the manifests' machinery (:class:`daonet.manifest.Spec`): declared fields with types, checked on
read, unknown keys kept in ``extra`` so a newer writer's fields survive. ``schema_version`` says which layout a
report has; a report without one is the first layout (the same keys).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError
from .manifest import ManifestError, Spec, optional

__all__ = ["REPORT_SCHEMA_VERSION", "ATTACKER_FAMILIES", "Distribution", "MetricScore", "AttackResult",
           "AttackBudget", "Leakage", "CurvePoint", "BudgetCurve", "BudgetInfo", "AuditedBundle", "AuditReport",
           "read_report"]

REPORT_SCHEMA_VERSION = 1
ATTACKER_FAMILIES = ("mlp", "conv", "adaptive")  # the learned attackers a full audit trains (daonet.audit.decoders)


class ReportError(ManifestError):
    """A report field is missing, has the wrong type, or contradicts another field."""


@dataclass(frozen=True, kw_only=True)
class Distribution(Spec):
    """A per-request quantity over the audited requests."""

    mean: float
    std: float
    min: float
    p5: float
    median: float
    p95: float
    max: float


@dataclass(frozen=True, kw_only=True)
class MetricScore(Spec):
    """One metric of one attack over the audited requests; ``advantage`` is paired over the class prior."""

    mean: float
    std: float
    median: float
    p25: float
    p75: float
    advantage: float | None = optional()
    advantage_se: float | None = optional()


@dataclass(frozen=True, kw_only=True)
class AttackResult(Spec):
    label: str
    metrics: dict[str, MetricScore]


@dataclass(frozen=True, kw_only=True)
class AttackBudget(Spec):
    """How hard one attack tried (decoders: their fit; inversions: steps and the tuned prior weight)."""

    seconds: float | None = optional()
    family: str | None = optional()
    converged: bool | None = optional()
    stopped: str | None = optional()
    best_val: float | None = optional()
    epochs_run: int | None = optional()
    max_epochs: int | None = optional()
    best_epoch: int | None = optional()
    val_metric_per_epoch: tuple[float, ...] = optional(())
    public_train: int | None = optional()
    public_val: int | None = optional()
    precision: str | None = optional()
    masks: str | None = optional()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_learned(self) -> bool:
        return self.family is not None

    @property
    def rmle_lambda(self) -> float | None:
        """The regularized inversion's prior weight, tuned on public data (``lambda`` in the JSON)."""
        v = self.extra.get("lambda")
        return float(v) if v is not None else None


@dataclass(frozen=True, kw_only=True)
class Leakage(Spec):
    """The yardstick: ``attack`` minus the label-only ``floor`` on the same requests, with its standard error."""

    mean: float
    se: float
    attack: str
    floor: str


@dataclass(frozen=True, kw_only=True)
class CurvePoint(Spec):
    public_train: int
    test: float
    best_val: float
    epochs_run: int
    converged: bool
    seconds: float | None = None


@dataclass(frozen=True, kw_only=True)
class BudgetCurve(Spec):
    """One decoder family retrained on growing public sets: does more data still leak more?"""

    family: str
    points: tuple[CurvePoint, ...]
    last_doubling_gain: float | None = None
    epochs: dict[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class BudgetInfo(Spec):
    name: str
    claim: bool
    note: str | None = None
    decoder: dict[str, Any] = field(default_factory=dict)
    torch_device: str = "cpu"


@dataclass(frozen=True, kw_only=True)
class AuditedBundle(Spec):
    """Which bundle was attacked: its identity and the device settings that shape what the server sees."""

    path: str
    model_id: str
    version: str
    kind: str
    input_shape: tuple[int, ...]
    n_outputs: int
    drop_rate: float
    value_dtype: str = "float32"
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    privacy_manifest: dict[str, Any] = field(default_factory=dict)
    linear_first_layer: bool = True
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class AuditReport(Spec):
    """Everything one audit measured, about exactly one bundle version, with the budget it was measured at."""

    bundle: AuditedBundle
    dataset: str
    data_kind: str
    metric: str
    n_test: int
    n_public: int
    budget: BudgetInfo
    accuracy: float
    surviving: Distribution
    attacks: dict[str, AttackResult]
    class_prior: float
    data_mean: float
    all_converged: bool
    schema_version: int = REPORT_SCHEMA_VERSION
    split: str = ""
    policy: dict[str, Any] | None = None
    certificate: dict[str, Any] = field(default_factory=dict)
    skipped_attacks: dict[str, str] = field(default_factory=dict)
    resumed_attacks: tuple[str, ...] = ()
    best_attack: str | None = None
    best: float | None = None
    best_advantage: float | None = None  # over the class prior, paired
    prediction_only: float | None = None
    advantage_over_prediction: float | None = None
    label_only: float | None = None  # the label-only decoder: what the server must learn (the floor)
    leakage: Leakage | None = None
    budget_curve: BudgetCurve | None = None
    warnings: tuple[str, ...] = ()
    repeated: dict[str, Any] | None = None
    policy_cost: tuple[dict[str, Any], ...] | None = None
    budgets: dict[str, AttackBudget] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    timing_s: dict[str, float] = field(default_factory=dict)
    torch_threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def _check(self, where: str) -> None:
        if self.schema_version > REPORT_SCHEMA_VERSION:
            raise ReportError(f"{where}.schema_version: is {self.schema_version}, this daonet reads reports up to "
                              f"version {REPORT_SCHEMA_VERSION}; upgrade daonet")
        if self.metric not in ("ssim", "corr"):
            raise ReportError(f"{where}.metric: {self.metric!r} is not a primary metric (ssim or corr)")
        for name, res in self.attacks.items():
            if self.metric not in res.metrics:
                raise ReportError(f"{where}.attacks.{name}: has no {self.metric} score")
        for name in ("class_prior", "data_mean"):
            if name not in self.attacks:
                raise ReportError(f"{where}.attacks: the {name} baseline is missing")
        if self.best_attack is not None and self.best_attack not in self.attacks:
            raise ReportError(f"{where}.best_attack: {self.best_attack!r} is not among the attacks")
        if not 0 <= self.accuracy <= 1:
            raise ReportError(f"{where}.accuracy: {self.accuracy} is not in [0, 1]")

    # -- what a reader wants first ---------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def is_claim(self) -> bool:
        """False for a quick budget: attackers stopped early, NOT a privacy claim."""
        return self.budget.claim

    def score(self, attack: str, metric: str | None = None) -> float:
        """An attack's mean score on the audited requests (the primary metric unless named)."""
        return self.attacks[attack].metrics[metric or self.metric].mean

    def scores(self) -> dict[str, float]:
        """Every attack's and baseline's mean primary-metric score."""
        return {name: self.score(name) for name in self.attacks}

    @property
    def families_not_run(self) -> tuple[str, ...]:
        """Learned attacker families of the full audit that this report did not run."""
        return tuple(f for f in ATTACKER_FAMILIES if f"decoder_{f}" not in self.attacks)

    @property
    def is_lower_bound(self) -> bool:
        """True when the numbers only bound leakage from below (a learned attacker still improving or not run,
        the budget curve not saturated, a quick budget)."""
        return (not self.is_claim or not self.all_converged or bool(self.families_not_run)
                or any("lower bound" in w for w in self.warnings))

    @property
    def compute_s(self) -> float | None:
        """What the whole audit cost, including attacks finished by earlier processes."""
        return self.timing_s.get("compute_s", self.timing_s.get("total_s"))

    def headline(self) -> list[str]:
        """A few lines a person reads first (``daonet verify``, ``daonet demo``)."""
        lines = [f"audit of {self.model_id} {self.version} on {self.dataset} ({self.budget.name} budget"
                 f"{'' if self.is_claim else ', NOT a privacy claim'}): accuracy {self.accuracy:.3f}, "
                 f"{self.surviving.mean:.1f} surviving outputs per request"]
        if self.best is not None:
            lines.append(f"best attack {self.best_attack}: {self.metric} {self.best:.3f}; class prior "
                         f"{self.class_prior:.3f}" + (f", label-only decoder {self.label_only:.3f}"
                                                      if self.label_only is not None else "")
                         + (f", prediction-only decoder {self.prediction_only:.3f}"
                            if self.prediction_only is not None else ""))
        if self.leakage is not None:
            bound = "at least " if self.is_lower_bound else ""
            lines.append(f"leakage beyond the label: {bound}{self.leakage.mean:+.3f} {self.metric} (best attack "
                         "minus the label-only decoder)")
        elif self.best_advantage is not None:
            lines.append(f"advantage over the class prior: {self.best_advantage:+.3f} {self.metric} (this report "
                         "has no label-only decoder)")
        if self.families_not_run:
            lines.append(f"decoder families not run: {', '.join(self.families_not_run)} (so the best attack is a "
                         "lower bound over them)")
        if self.skipped_attacks:
            lines.append(f"attacks skipped: {', '.join(self.skipped_attacks)}")
        lines += [f"warning: {w}" for w in self.warnings]
        return lines

    # -- reading and writing ---------------------------------------------------------------------------------
    def dumps(self) -> str:
        """``audit.json``'s text."""
        return json.dumps(self.to_json(), indent=2) + "\n"

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.dumps())
        return path

    @classmethod
    def parse(cls, raw: Any, where: str = "audit.json") -> AuditReport:
        """Validate a report's JSON object; a malformed one is a :class:`BundleError` that says to re-run."""
        try:
            return cls.from_json(raw, where)
        except ManifestError as exc:
            problem = str(exc).rsplit("; re-export the bundle", 1)[0]
            raise BundleError(f"{problem}; this is not an audit report this daonet can read: re-run "
                              "`daonet audit`") from None


def read_report(path: str | Path) -> AuditReport:
    """Read and validate an ``audit.json``; a missing, unreadable or foreign file is a :class:`BundleError`."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} does not exist: no audit report; audit the bundle with `daonet audit BUNDLE "
                          f"--dataset D --out {path.parent}`") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is not a readable audit report ({exc}); re-run `daonet audit`") from None
    report = AuditReport.parse(raw, str(path))
    if not math.isfinite(report.accuracy):
        raise BundleError(f"{path}: accuracy is not a finite number; the report is damaged, re-run the audit")
    return report
