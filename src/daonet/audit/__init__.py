"""The privacy audit: attack the payloads a real device makes and measure what the server can learn.

See docs/ and ``daonet audit --help``. Attacks are registered in :mod:`daonet.audit.registry`; learned
attackers (trained to convergence) live in :mod:`daonet.audit.decoders`.
"""

import sys
import types
from typing import Any

from ..audit_summary import AttackScore, AuditSummary
from .api import audit
from .core import (
    ATTACKS,
    BUDGETS,
    AuditConfig,
    AuditResult,
    load_pair,
    run_audit,
    write_report,
)
from .registry import AttackContext, AttackOutcome, available_attacks, create_attack, register_attack

__all__ = ["ATTACKS", "audit", "BUDGETS", "AttackContext", "AttackOutcome", "AttackScore", "AuditConfig", "AuditResult",
           "AuditSummary", "available_attacks", "create_attack", "load_pair", "register_attack", "run_audit",
           "write_report"]


class _CallableModule(types.ModuleType):
    """``daonet.audit(bundle, public_data, test_data, ...)``: the package is also the library call."""

    def __call__(self, *args: Any, **kwargs: Any) -> AuditResult:
        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
