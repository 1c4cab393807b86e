"""``daonet.audit(bundle, public_data, test_data)``: the audit as one library call, like Opacus'
``PrivacyEngine.make_private`` hides its machinery. The CLI (``daonet audit``) runs the same engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..data import Dataset, load_dataset
from ..errors import InputError
from .core import AuditConfig, AuditResult, run_audit, write_report


def audit(bundle: str | Path, public_data: tuple[Any, Any] | None = None, test_data: tuple[Any, Any] | None = None,
          *, dataset: str | Dataset | None = None, budget: str = "full", out: str | Path | None = None,
          classes: list[str] | None = None, progress: bool = True, log: Any = print,
          **options: Any) -> AuditResult:
    """Attack what a bundle sends and measure what a curious server learns.

    Args:
        bundle: the ``--out`` folder of ``daonet export`` / ``daonet.export`` (holds device/ and server/).
        public_data: ``(x, y)`` the attacker may hold (same distribution as the users' inputs; never the
            audited inputs). With ``test_data``, instead of ``dataset``.
        test_data: ``(x, y)`` held-out inputs whose payloads are attacked.
        dataset: a data set name or spec (``mnist``, ``ucr:ECG200``, ``npz:PATH``, ...) or a ``Dataset``.
        budget: ``full`` (every learned attacker to convergence: privacy claims) or ``quick`` (seconds; NOT a
            privacy claim).
        out: if given, writes ``audit.json`` and ``report.html`` there.
        **options: any :class:`~daonet.audit.AuditConfig` field (``n_test``, ``attacks``, ``torch_device``, ...).

    Returns:
        The :class:`~daonet.audit.AuditResult`; ``result.report`` is the typed
        :class:`~daonet.audit_report.AuditReport`.

    Raises:
        InputError: neither or both of ``dataset`` and the two arrays, or an unknown option.
    """
    if (dataset is None) == (public_data is None or test_data is None):
        raise InputError("give either dataset=NAME or both public_data=(x, y) and test_data=(x, y)")
    if dataset is None:
        assert public_data is not None and test_data is not None
        ds = Dataset.from_arrays(public_data[0], public_data[1], test_data[0], test_data[1], classes=classes)
        options.setdefault("public_size", 0)  # the caller chose the public data: use all of it
    elif isinstance(dataset, Dataset):
        ds = dataset
    else:
        ds = load_dataset(dataset, options.get("data_root"))
    known = set(AuditConfig.__dataclass_fields__)
    bad = sorted(set(options) - known)
    if bad:
        raise InputError(f"unknown audit option(s) {', '.join(bad)}; see daonet.audit.AuditConfig")
    cfg = replace(AuditConfig(dataset=ds.name, budget=budget), **options)
    result = run_audit(bundle, cfg, dataset=ds, progress=progress, log=log)
    if out is not None:
        write_report(result, out)
    return result
