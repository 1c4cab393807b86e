"""The typed headline of an audit report (``audit.json``), readable without torch.

``daonet verify`` runs where only the device side is installed, so the summary of a report lives here, apart
from the audit's machinery (:mod:`daonet.audit`, which needs torch). The report is validated once, here;
readers use attributes, never string keys.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BundleError

__all__ = ["AttackScore", "AuditSummary", "read_summary", "ATTACKER_FAMILIES"]

ATTACKER_FAMILIES = ("mlp", "conv", "adaptive")  # the learned attackers a full audit trains (daonet.audit.decoders)


@dataclass(frozen=True)
class AttackScore:
    """One attack's score on the audited requests (primary metric)."""

    name: str
    label: str
    mean: float
    advantage: float | None  # paired mean difference over the class prior (same requests)
    advantage_se: float | None


@dataclass(frozen=True)
class AuditSummary:
    """What a report says: about which bundle, how hard the attackers tried, and what they reached."""

    model_id: str
    version: str
    dataset: str
    metric: str
    budget: str
    is_claim: bool
    accuracy: float
    surviving: float
    best_attack: str | None
    best: float | None
    class_prior: float
    prediction_only: float | None
    best_advantage: float | None  # over the class prior
    advantage_over_prediction: float | None
    label_only: float | None  # the label-only decoder: what the server must learn (the floor)
    leakage: float | None  # best attack minus the label-only decoder, paired on the same requests
    all_converged: bool
    warnings: tuple[str, ...]
    attacks: dict[str, AttackScore]
    skipped: tuple[str, ...] = ()

    @classmethod
    def from_report(cls, rep: dict[str, Any]) -> AuditSummary:
        m = rep["metric"]
        scores = {k: AttackScore(k, v["label"], v["metrics"][m]["mean"], v["metrics"][m].get("advantage"),
                                 v["metrics"][m].get("advantage_se")) for k, v in rep["attacks"].items()}
        budget = rep.get("budget") or {}
        return cls(rep["bundle"]["model_id"], rep["bundle"]["version"], rep["dataset"], m,
                   budget.get("name", "full"), bool(budget.get("claim", False)),
                   float(rep["accuracy"]), float(rep["surviving"]["mean"]), rep.get("best_attack"), rep.get("best"),
                   float(rep["class_prior"]), rep.get("prediction_only"), rep.get("best_advantage"),
                   rep.get("advantage_over_prediction"), rep.get("label_only"),
                   (rep.get("leakage") or {}).get("mean"), bool(rep.get("all_converged", False)),
                   tuple(rep.get("warnings", ())), scores, tuple(rep.get("skipped_attacks") or ()))

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

    def headline(self) -> list[str]:
        """A few lines a person reads first (``daonet verify``, ``daonet demo``)."""
        lines = [f"audit of {self.model_id} {self.version} on {self.dataset} ({self.budget} budget"
                 f"{'' if self.is_claim else ', NOT a privacy claim'}): accuracy {self.accuracy:.3f}, "
                 f"{self.surviving:.1f} surviving outputs per request"]
        if self.best is not None:
            lines.append(f"best attack {self.best_attack}: {self.metric} {self.best:.3f}; class prior "
                         f"{self.class_prior:.3f}" + (f", label-only decoder {self.label_only:.3f}"
                                                      if self.label_only is not None else "")
                         + (f", prediction-only decoder {self.prediction_only:.3f}"
                            if self.prediction_only is not None else ""))
        if self.leakage is not None:
            bound = "at least " if self.is_lower_bound else ""
            lines.append(f"leakage beyond the label: {bound}{self.leakage:+.3f} {self.metric} (best attack minus "
                         "the label-only decoder)")
        elif self.best_advantage is not None:
            lines.append(f"advantage over the class prior: {self.best_advantage:+.3f} {self.metric} (this report "
                         "has no label-only decoder)")
        if self.families_not_run:
            lines.append(f"decoder families not run: {', '.join(self.families_not_run)} (so the best attack is a "
                         "lower bound over them)")
        if self.skipped:
            lines.append(f"attacks skipped: {', '.join(self.skipped)}")
        lines += [f"warning: {w}" for w in self.warnings]
        return lines


def read_summary(path: str | Path) -> AuditSummary:
    """Read and validate an ``audit.json``; a missing, unreadable or foreign file is a :class:`BundleError`."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} does not exist: no audit report; audit the bundle with `daonet audit BUNDLE "
                          f"--dataset D --out {path.parent}`") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is not a readable audit report ({exc}); re-run `daonet audit`") from None
    try:
        summary = AuditSummary.from_report(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{path} is not an audit report written by `daonet audit` (missing or malformed "
                          f"field {exc}); re-run the audit") from None
    for name in ("accuracy", "surviving", "class_prior"):
        if not math.isfinite(getattr(summary, name)):
            raise BundleError(f"{path}: {name} is not a finite number; the report is damaged, re-run the audit")
    return summary
