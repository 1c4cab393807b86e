"""MkDocs hook: publish the shipped defaults' signed audit reports under ``results/shipped/`` in the site.

They live inside the package (``src/daonet/defaults/NAME/audit/``), next to the bundle they audit and signed
with it; copying them into ``docs/`` would make a second, unsigned copy that can drift. The site serves the
package's own files instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

DEFAULTS = Path(__file__).resolve().parents[2] / "src" / "daonet" / "defaults"
PUBLISHED = ("report.html", "audit.json", "audit.json.sig")


def on_files(files: Files, config: Any) -> Files:
    """Add ``results/shipped/NAME/{report.html,audit.json,audit.json.sig}`` for every shipped default."""
    for audit in sorted(DEFAULTS.glob("*/audit")):
        for name in PUBLISHED:
            path = audit / name
            if path.is_file():
                files.append(File.generated(config, f"results/shipped/{audit.parent.name}/{name}",
                                            abs_src_path=str(path)))
    return files
