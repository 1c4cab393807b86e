"""Put a finished audit beside the shipped default it audited, and sign the report.

    python scripts/ship_default.py mnist AUDIT_OUT --key daonet-defaults.key

``AUDIT_OUT`` is the ``--out`` folder of ``daonet audit src/daonet/defaults/NAME ...``. The report must be
about exactly the shipped bundle's version; ``report.html`` is re-rendered from ``audit.json`` and the example
arrays (so it shows what this daonet's report shows), ``audit.json.sig`` is written with the signing key, and
``daonet verify`` is run on the result.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from daonet.audit.core import load_examples
from daonet.audit.report import render_audit_html
from daonet.audit_report import read_report
from daonet.defaults import AUDIT_DIR, default_bundle
from daonet.device import DeviceModel
from daonet.verify import REPORT_NAME, sign_report, verify_bundle


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help="mnist or ecg5000")
    ap.add_argument("audit_out", type=Path, help="the --out folder of the finished audit")
    ap.add_argument("--key", type=Path, required=True, help="the project's Ed25519 signing key")
    args = ap.parse_args(argv)
    default = default_bundle(args.dataset)
    summary = read_report(args.audit_out / REPORT_NAME)
    device = DeviceModel.load(default.root / "device")
    if summary.version != device.version:
        sys.exit(f"error: {args.audit_out} audited version {summary.version}, the shipped bundle is {device.version}")
    dest = default.root / AUDIT_DIR
    dest.mkdir(exist_ok=True)
    report = replace(summary, bundle=replace(summary.bundle, path=f"src/daonet/defaults/{default.name}"),
                     config={**summary.config, "checkpoint_dir": None, "data_root": None})  # not this machine's
    report.write(dest / REPORT_NAME)
    examples = load_examples(args.audit_out / "examples.npz")
    (dest / "report.html").write_text(render_audit_html(report, examples))
    shutil.copy(args.audit_out / "examples.npz", dest / "examples.npz")
    sign_report(dest / REPORT_NAME, args.key)
    print("\n".join(verify_bundle(default.root).lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
