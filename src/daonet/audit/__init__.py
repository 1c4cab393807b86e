"""The privacy audit: attack the payloads a real device makes and measure what the server can learn.

See DESIGN.md ("The privacy audit") and ``daonet audit --help``.
"""

from .core import ATTACKS, AuditConfig, AuditResult, load_pair, run_audit, write_report

__all__ = ["ATTACKS", "AuditConfig", "AuditResult", "load_pair", "run_audit", "write_report"]
