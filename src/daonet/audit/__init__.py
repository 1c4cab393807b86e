"""The privacy audit: attack the payloads a real device makes and measure what the server can learn.

See docs/ and ``daonet audit --help``. Attacks are registered in :mod:`daonet.audit.registry`; learned
attackers (trained to convergence) live in :mod:`daonet.audit.decoders`.
"""

from .core import (
    ATTACKS,
    BUDGETS,
    AttackScore,
    AuditConfig,
    AuditResult,
    AuditSummary,
    load_pair,
    run_audit,
    write_report,
)
from .registry import AttackContext, AttackOutcome, available_attacks, create_attack, register_attack

__all__ = ["ATTACKS", "BUDGETS", "AttackContext", "AttackOutcome", "AttackScore", "AuditConfig", "AuditResult",
           "AuditSummary", "available_attacks", "create_attack", "load_pair", "register_attack", "run_audit",
           "write_report"]
