#!/usr/bin/env bash
# Regenerates constraints.txt (the exact versions `make setup` installs) from a working .venv.
# pyproject.toml keeps compatible ranges; pin changes go here. torch stays the CPU build 2.13.0.
set -euo pipefail
PY="${1:-.venv/bin/python}"
{
  echo "# Exact versions make setup installs (pip install -c constraints.txt). Regenerate: scripts/lock.sh"
  echo "# torch==2.13.0 is the CPU build on this project's package index; never leave torch unpinned (CUDA builds are GBs)."
  "$PY" -m pip freeze --exclude-editable --all | grep -v -i -E '^(daonet|pip)[=@ ]' | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/'
} > constraints.txt
grep -q '^torch==2.13.0$' constraints.txt || { echo "constraints.txt must pin torch==2.13.0" >&2; exit 1; }
