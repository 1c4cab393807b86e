"""``verify_bundle``: is the bundle you run the one that was audited, and what did the audit find?

A privacy number belongs to one artifact. This checks, without torch, in order: both halves' manifests, that each
version follows from its content and that both halves carry the same version, a valid signature by a trusted
key on both, every weight file's SHA-256, then the audit report beside the bundle (``BUNDLE/audit/audit.json``):
signed by a trusted key too (``audit.json.sig``), written by a full-budget audit, and about exactly this
``model_id`` and version. Anything else is refused with what to do about it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audit_report import AuditReport, read_report
from .bundle import check_pair, load_bundle
from .errors import BundleError
from .manifest import DEVICE_FORMAT, SERVER_FORMAT

__all__ = ["Verification", "verify_bundle", "sign_report", "REPORT_NAME", "SIGNATURE_SUFFIX"]

REPORT_CONTEXT = b"daonet-audit-report-v1"
REPORT_NAME = "audit.json"
SIGNATURE_SUFFIX = ".sig"


@dataclass(frozen=True)
class Verification:
    """A bundle that passed every check, and the audit that belongs to it."""

    root: Path
    model_id: str
    version: str
    key_id: str
    report: Path
    audit: AuditReport

    def lines(self) -> list[str]:
        return [f"verified {self.model_id} version {self.version}: signed by key {self.key_id}, every file intact",
                f"audit report {self.report} (signed by a trusted key) is for exactly this version",
                *self.audit.headline()]


def _report_message(path: Path) -> bytes:
    return REPORT_CONTEXT + hashlib.sha256(path.read_bytes()).digest()


def sign_report(report: str | Path, sign_key: str | Path) -> Path:
    """Sign an ``audit.json`` with an Ed25519 ``.key`` (writes ``audit.json.sig``); returns the signature file."""
    from .signing import load_private_key, sign

    report = Path(report)
    read_report(report)  # refuse to sign something that is not an audit report
    sig, kid = sign(load_private_key(sign_key), _report_message(report))
    out = report.with_name(report.name + SIGNATURE_SUFFIX)
    out.write_text(json.dumps({"signature": sig, "key_id": kid}) + "\n")
    return out


def _check_report_signature(report: Path, keys: Sequence[Any]) -> None:
    from .signing import verify

    sig_path = report.with_name(report.name + SIGNATURE_SUFFIX)
    try:
        raw = json.loads(sig_path.read_text())
        signature, signer = str(raw["signature"]), str(raw["key_id"])
        base64.b64decode(signature, validate=True)
    except FileNotFoundError:
        raise BundleError(f"{sig_path} is missing: the audit report is not signed, so nothing says it is the "
                          "vendor's; sign it with `daonet sign-audit REPORT --key KEY`") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise BundleError(f"{sig_path} is not a daonet report signature; re-sign the report with `daonet "
                          "sign-audit REPORT --key KEY`") from None
    verify(keys, signature, signer, _report_message(report), str(report))


def verify_bundle(bundle: str | Path, *, public_keys: Sequence[Any] | None = None,
                  report: str | Path | None = None) -> Verification:
    """Check a bundle (its root, holding ``device/`` and ``server/``) and its audit report.

    Args:
        bundle: the bundle root.
        public_keys: trusted ``.pub`` files or keys; default: the project's key (the shipped defaults').
        report: the audit report; default: ``BUNDLE/audit/audit.json``.
    Raises:
        BundleError: what failed, and how to fix it.
    """
    from .defaults import AUDIT_DIR, PROJECT_PUBLIC_KEY
    from .signing import load_public_key

    root = Path(bundle)
    if not (root / "device").is_dir() or not (root / "server").is_dir():
        raise BundleError(f"{root} is not a bundle root (it needs device/ and server/); pass the --out directory "
                          "of `daonet export`")
    keys = [k if hasattr(k, "verify") else load_public_key(k) for k in (public_keys or [PROJECT_PUBLIC_KEY])]
    _, device, _ = load_bundle(root / "device", DEVICE_FORMAT, keys)
    _, server, _ = load_bundle(root / "server", SERVER_FORMAT, keys)
    check_pair(device, server)
    report_path = Path(report) if report is not None else root / AUDIT_DIR / REPORT_NAME
    summary = read_report(report_path)
    _check_report_signature(report_path, keys)
    if (summary.model_id, summary.version) != (device.model_id, device.version):
        raise BundleError(f"{report_path} audited {summary.model_id} version {summary.version}, but the bundle is "
                          f"{device.model_id} version {device.version}: this bundle's privacy is unaudited; audit "
                          f"it with `daonet audit {root} --dataset D --out {root / AUDIT_DIR}`")
    if not summary.is_claim:
        raise BundleError(f"{report_path} comes from a {summary.budget.name!r}-budget audit, a smoke test that is "
                          "not a privacy claim; audit the bundle with `--budget full`")
    integrity = device.integrity
    assert integrity is not None and integrity.key_id is not None  # load_bundle checked the signature
    return Verification(root, device.model_id, device.version, integrity.key_id, report_path, summary)
