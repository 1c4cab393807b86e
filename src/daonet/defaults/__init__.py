"""The shipped default bundles: signed by the project's key, each with the audit report of exactly its version.

The privacy numbers of a model belong to that model: the same recipe trained on another machine gives another
model (other weights, other surviving outputs) that nobody has audited. So the defaults are not retrained on the
user's machine: they ship here, as built and audited, and ``daonet verify`` checks that what you run is what was
audited. Layout of one default: ``NAME/device``, ``NAME/server`` (the bundle) and ``NAME/audit/audit.json`` +
``report.html`` (the full audit of that bundle). ``daonet-defaults.pub`` is the public key they are signed with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

__all__ = ["DefaultBundle", "DEFAULTS", "PROJECT_PUBLIC_KEY", "default_bundle", "AUDIT_DIR"]

HERE = Path(__file__).resolve().parent
PROJECT_PUBLIC_KEY = HERE / "daonet-defaults.pub"
AUDIT_DIR = "audit"  # beside device/ and server/: the report of this bundle's version


@dataclass(frozen=True)
class DefaultBundle:
    """One shipped default: its data set, the training recipe it came from, and where it lies."""

    name: str
    dataset: str
    model: str

    @property
    def root(self) -> Path:
        return HERE / self.name

    @property
    def report(self) -> Path:
        return self.root / AUDIT_DIR / "audit.json"


DEFAULTS: dict[str, DefaultBundle] = {
    "mnist": DefaultBundle("mnist-mlp", "mnist", "mlp"),
    "ecg5000": DefaultBundle("ecg5000-cnn1d", "ecg5000", "cnn1d"),
}


def default_bundle(dataset: str) -> DefaultBundle:
    """The shipped default for ``dataset`` (``mnist`` or ``ecg5000``)."""
    try:
        return DEFAULTS[dataset]
    except KeyError:
        raise InputError(f"no shipped default for {dataset!r}; the defaults are {', '.join(DEFAULTS)}") from None
