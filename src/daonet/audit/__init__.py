"""The privacy audit: attack the payloads a real device makes and measure what the server can learn.

See docs/ and ``daonet audit --help``. Attacks are registered in :mod:`daonet.audit.registry`; learned
attackers (trained to convergence) live in :mod:`daonet.audit.decoders`.
"""

import inspect
import sys
import types

from ..audit_config import BUDGETS, AuditConfig
from ..audit_report import AttackResult, AuditReport, read_report
from .api import audit
from .core import (
    ATTACKS,
    AuditResult,
    load_pair,
    run_audit,
    write_report,
)
from .registry import AttackContext, AttackOutcome, available_attacks, create_attack, register_attack

__all__ = ["ATTACKS", "audit", "BUDGETS", "AttackContext", "AttackOutcome", "AttackResult", "AuditConfig",
           "AuditResult", "AuditReport", "read_report", "available_attacks", "create_attack", "load_pair",
           "register_attack", "run_audit", "write_report"]


class _AuditPackage(types.ModuleType):
    """``daonet.audit(bundle, public_data, test_data, ...)`` is :func:`daonet.audit.api.audit` itself (not a
    wrapper); the package stays a package, so ``import daonet.audit.core`` and ``daonet.audit.run_audit`` work."""

    __call__ = staticmethod(audit)


sys.modules[__name__].__class__ = _AuditPackage
__signature__ = inspect.signature(audit)  # inspect.signature(daonet.audit): the function's full signature
